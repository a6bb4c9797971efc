use sha2::{Digest, Sha256};

/// Length of a patch ID (as Ksplice's: 8 lowercase letters and digits).
pub const ID_LEN: usize = 8;

/// A short ID derived from the given inputs: the same inputs give the same
/// ID, so re-creating a patch from the same diff for the same build keeps it.
pub fn stable_id(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    let digest = h.finalize();
    let mut n = u64::from_le_bytes(digest[..8].try_into().unwrap());
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = String::with_capacity(ID_LEN);
    for _ in 0..ID_LEN {
        out.push(ALPHABET[(n % 36) as usize] as char);
        n /= 36;
    }
    out
}

/// Whether `s` has the shape of a patch ID.
pub fn is_valid_id(s: &str) -> bool {
    s.len() == ID_LEN
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_well_formed() {
        let a = stable_id(&[b"diff", b"build"]);
        assert_eq!(a, stable_id(&[b"diff", b"build"]));
        assert_ne!(a, stable_id(&[b"diff2", b"build"]));
        assert!(is_valid_id(&a));
        assert!(!is_valid_id("ABCDEFGH"));
    }
}
