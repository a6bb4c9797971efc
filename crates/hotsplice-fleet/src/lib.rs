//! The fleet protocol: what a machine and `hotsplice-server` exchange.
//!
//! - [`report`]: the check-in report a machine sends (kernel, objects in
//!   use, patches applied in each process, what the last run did);
//! - [`feed`]: the per-machine list of patches the server signs, with a
//!   version and an expiry, and the client's checks against rollback,
//!   freeze and mix-and-match ([`feed::accept`], [`feed::check_blob`]);
//! - [`api`]: the paths of hotsplice's own API (`/api/v2/`), its request
//!   and response bodies, and the headers that carry credentials.
//!
//! No networking and no storage here: the server and the client
//! (`hotsplice-agent`'s `fleet` module) both build on these types, so the
//! two cannot disagree. The wire format is described in `docs/fleet.md`.

pub mod api;
pub mod feed;
pub mod report;
pub mod vex;

/// Seconds since the Unix epoch, now.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// SHA-256 of `bytes`, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// A machine UUID as the server hands them out and Uptrack spells them:
/// 36 characters, lowercase hex in groups of 8-4-4-4-12.
pub fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, &c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_digit() || (b'a'..=b'f').contains(&c),
        })
}

/// A new random UUID (version 4) from the kernel's random source.
pub fn new_uuid() -> std::io::Result<String> {
    let mut b = [0u8; 16];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut b)?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    ))
}

/// A new secret (an access key, a machine key or an API key): 32 random
/// bytes, hex. Stored by the server only as [`secret_hash`].
pub fn new_secret() -> std::io::Result<String> {
    let mut b = [0u8; 32];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut b)?;
    Ok(hex::encode(b))
}

/// How the server stores a secret: SHA-256 of it, hex. (The secrets are
/// 256 random bits, so a fast hash is enough; passwords, which people
/// choose, are another matter.)
pub fn secret_hash(secret: &str) -> String {
    sha256_hex(secret.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_well_formed() {
        let u = new_uuid().unwrap();
        assert!(is_uuid(&u), "{u}");
        assert!(!is_uuid(&u.to_uppercase().replace('-', "")));
        assert!(!is_uuid("00086980-47cb-4486-81c0-4fe3299bad9"));
        assert!(is_uuid("00086980-47cb-4486-81c0-4fe3299bad90"));
        assert_ne!(new_secret().unwrap(), new_secret().unwrap());
    }
}
