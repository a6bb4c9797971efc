//! Who may put code into our processes: patch files are signed with Ed25519
//! and verified against public keys the administrator trusts (one `*.pub`
//! file each in the keys directory, `/etc/hotsplice/keys/` by default).
//!
//! ```
//! use hotsplice_trust::*;
//! let key = SecretKey::generate().unwrap();
//! let patch = hotsplice_patch::Patch { meta: hotsplice_patch::PatchMeta::example(), image: vec![0xc3] };
//! let signed = sign_file(&patch.to_bytes(), &key).unwrap();
//! let trusted = vec![key.public()];
//! assert!(verify_file(&signed, &trusted).is_ok());
//! ```

use ed25519_dalek::{Signature as EdSignature, Signer, SigningKey, Verifier, VerifyingKey};
use hotsplice_patch::{FormatError, Patch, PatchFile, Signature};
use sha2::Digest;
use std::path::Path;

pub const ALGORITHM: &str = "ed25519";
const SECRET_TAG: &str = "hotsplice-ed25519-secret";
const PUBLIC_TAG: &str = "hotsplice-ed25519-public";

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not a hotsplice {what} key file")]
    BadKey { path: String, what: &'static str },
    #[error("patch is not signed; sign it with `hotsplice sign KEY FILE` (or pass --allow-unsigned for development)")]
    Unsigned,
    #[error("patch is signed by key {key_id}, which is not trusted here; add its .pub file to {keys_dir}")]
    UnknownKey { key_id: String, keys_dir: String },
    #[error("patch signature by key {key_id} does not verify: the file was changed after signing or is damaged; do not use it")]
    BadSignature { key_id: String },
    #[error("unsupported signature algorithm `{0}`")]
    Algorithm(String),
    #[error("cannot read random bytes for a new key: {0}")]
    Random(std::io::Error),
}

/// A public key and its short fingerprint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    key: VerifyingKey,
    /// Where it was read from, for messages.
    pub origin: String,
}

impl PublicKey {
    /// First 16 hex digits of SHA-256 of the key.
    pub fn id(&self) -> String {
        hex::encode(&sha2::Sha256::digest(self.key.as_bytes())[..8])
    }

    pub fn to_text(&self) -> String {
        format!("{PUBLIC_TAG} {}\n", hex::encode(self.key.as_bytes()))
    }

    pub fn from_text(text: &str, origin: &str) -> Result<PublicKey, TrustError> {
        let bad = || TrustError::BadKey {
            path: origin.into(),
            what: "public",
        };
        let hexed = text
            .lines()
            .find_map(|l| l.strip_prefix(PUBLIC_TAG))
            .ok_or_else(bad)?
            .trim();
        let bytes: [u8; 32] = hex::decode(hexed)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(bad)?;
        Ok(PublicKey {
            key: VerifyingKey::from_bytes(&bytes).map_err(|_| bad())?,
            origin: origin.into(),
        })
    }
}

/// A signing key.
pub struct SecretKey {
    key: SigningKey,
}

impl SecretKey {
    /// A new key from the kernel's random source.
    pub fn generate() -> Result<SecretKey, TrustError> {
        let mut seed = [0u8; 32];
        std::io::Read::read_exact(
            &mut std::fs::File::open("/dev/urandom").map_err(TrustError::Random)?,
            &mut seed,
        )
        .map_err(TrustError::Random)?;
        Ok(SecretKey {
            key: SigningKey::from_bytes(&seed),
        })
    }

    pub fn public(&self) -> PublicKey {
        PublicKey {
            key: self.key.verifying_key(),
            origin: "generated".into(),
        }
    }

    pub fn to_text(&self) -> String {
        format!("{SECRET_TAG} {}\n", hex::encode(self.key.to_bytes()))
    }

    pub fn load(path: &Path) -> Result<SecretKey, TrustError> {
        let text = read(path)?;
        let bad = || TrustError::BadKey {
            path: path.display().to_string(),
            what: "secret",
        };
        let hexed = text
            .lines()
            .find_map(|l| l.strip_prefix(SECRET_TAG))
            .ok_or_else(bad)?
            .trim();
        let bytes: [u8; 32] = hex::decode(hexed)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(bad)?;
        Ok(SecretKey {
            key: SigningKey::from_bytes(&bytes),
        })
    }
}

fn read(path: &Path) -> Result<String, TrustError> {
    std::fs::read_to_string(path).map_err(|source| TrustError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// Write a new key pair as `DIR/NAME.key` (mode 0600) and `DIR/NAME.pub`.
pub fn write_key_pair(dir: &Path, name: &str, key: &SecretKey) -> Result<(), TrustError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |p: &Path| {
        let path = p.display().to_string();
        move |source| TrustError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let secret = dir.join(format!("{name}.key"));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&secret)
        .map_err(io(&secret))?;
    std::io::Write::write_all(&mut f, key.to_text().as_bytes()).map_err(io(&secret))?;
    let public = dir.join(format!("{name}.pub"));
    std::fs::write(&public, key.public().to_text()).map_err(io(&public))?;
    Ok(())
}

/// Every `*.pub` key in `dir` (none if it does not exist).
pub fn trusted_keys(dir: &Path) -> Result<Vec<PublicKey>, TrustError> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(Vec::new());
    };
    let mut keys = Vec::new();
    let mut paths: Vec<_> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "pub"))
        .collect();
    paths.sort();
    for p in paths {
        keys.push(PublicKey::from_text(&read(&p)?, &p.display().to_string())?);
    }
    Ok(keys)
}

/// The file signed by `key` (any previous signature replaced).
pub fn sign_file(bytes: &[u8], key: &SecretKey) -> Result<Vec<u8>, TrustError> {
    let file = PatchFile::parse(bytes)?;
    let sig = key.key.sign(&file.signed_bytes);
    Ok(file.with_signature(&Signature {
        algorithm: ALGORITHM.into(),
        key_id: key.public().id(),
        bytes: sig.to_bytes().to_vec(),
    }))
}

/// Parse a patch file and check its signature against `trusted`.
/// Returns the patch and the key that signed it.
pub fn verify_file(bytes: &[u8], trusted: &[PublicKey]) -> Result<(Patch, PublicKey), TrustError> {
    verify_file_in(bytes, trusted, "the trusted keys directory")
}

/// As [`verify_file`], naming `keys_dir` in messages.
pub fn verify_file_in(
    bytes: &[u8],
    trusted: &[PublicKey],
    keys_dir: &str,
) -> Result<(Patch, PublicKey), TrustError> {
    let file = PatchFile::parse(bytes)?;
    let sig = file.signature.as_ref().ok_or(TrustError::Unsigned)?;
    if sig.algorithm != ALGORITHM {
        return Err(TrustError::Algorithm(sig.algorithm.clone()));
    }
    let key = trusted
        .iter()
        .find(|k| k.id() == sig.key_id)
        .ok_or_else(|| TrustError::UnknownKey {
            key_id: sig.key_id.clone(),
            keys_dir: keys_dir.into(),
        })?;
    let bad = || TrustError::BadSignature {
        key_id: sig.key_id.clone(),
    };
    let bytes: [u8; 64] = sig.bytes.as_slice().try_into().map_err(|_| bad())?;
    key.key
        .verify(&file.signed_bytes, &EdSignature::from_bytes(&bytes))
        .map_err(|_| bad())?;
    Ok((file.patch, key.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hotsplice_patch::PatchMeta;

    fn patch_bytes() -> Vec<u8> {
        Patch {
            meta: PatchMeta::example(),
            image: vec![0xc3; 32],
        }
        .to_bytes()
    }

    #[test]
    fn signed_patch_verifies_with_its_key_only() {
        let a = SecretKey::generate().unwrap();
        let b = SecretKey::generate().unwrap();
        let signed = sign_file(&patch_bytes(), &a).unwrap();
        assert!(verify_file(&signed, &[a.public()]).is_ok());
        assert!(matches!(
            verify_file(&signed, &[b.public()]),
            Err(TrustError::UnknownKey { .. })
        ));
    }

    #[test]
    fn unsigned_and_tampered_are_refused() {
        let a = SecretKey::generate().unwrap();
        assert!(matches!(
            verify_file(&patch_bytes(), &[a.public()]),
            Err(TrustError::Unsigned)
        ));
        let mut signed = sign_file(&patch_bytes(), &a).unwrap();
        let n = signed.len();
        signed[n - 3] ^= 0x40; // inside the signature
        assert!(matches!(
            verify_file(&signed, &[a.public()]),
            Err(TrustError::BadSignature { .. })
        ));
    }

    #[test]
    fn keys_round_trip_through_files() {
        let dir = tempfile::tempdir().unwrap();
        let k = SecretKey::generate().unwrap();
        write_key_pair(dir.path(), "ops", &k).unwrap();
        let loaded = SecretKey::load(&dir.path().join("ops.key")).unwrap();
        assert_eq!(loaded.public().id(), k.public().id());
        let trusted = trusted_keys(dir.path()).unwrap();
        assert_eq!(trusted.len(), 1);
        assert_eq!(trusted[0].id(), k.public().id());
    }
}
