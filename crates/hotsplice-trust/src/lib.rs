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

use ed25519_dalek::{Signature as EdSignature, Signer as _, SigningKey, Verifier, VerifyingKey};
use hotsplice_patch::{FormatError, Patch, PatchFile, Signature};
use hotsplice_store::{check_dir, check_owner_and_mode, Links};
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
    /// A key file or the keys directory that cannot be used: not a regular
    /// file, too large, or writable by someone else.
    #[error(transparent)]
    File(#[from] hotsplice_store::StoreError),
}

/// Largest key file read (public or secret): a key is one line of text.
pub const MAX_KEY_FILE: u64 = 4 << 10;

/// The 32 key bytes of a key file: the hex after `tag` on its line.
fn key_bytes(text: &str, tag: &str) -> Option<[u8; 32]> {
    let hexed = text.lines().find_map(|l| l.strip_prefix(tag))?.trim();
    hex::decode(hexed).ok()?.try_into().ok()
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

    /// Check a signature made by [`SecretKey::sign_detached`] with the same
    /// `context`.
    pub fn verify_detached(&self, context: &str, message: &[u8], signature: &[u8]) -> bool {
        let Ok(sig) = EdSignature::from_slice(signature) else {
            return false;
        };
        self.key
            .verify_strict(&detached_message(context, message), &sig)
            .is_ok()
    }

    pub fn from_text(text: &str, origin: &str) -> Result<PublicKey, TrustError> {
        let bad = || TrustError::BadKey {
            path: origin.into(),
            what: "public",
        };
        let bytes = key_bytes(text, PUBLIC_TAG).ok_or_else(bad)?;
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

    /// A signature over `message` that only verifies for the same
    /// `context` (a fixed name of what is signed, e.g. `"hotsplice-feed-v1"`),
    /// so a signature made for one kind of document can never pass for
    /// another (nor for a patch file).
    pub fn sign_detached(&self, context: &str, message: &[u8]) -> Vec<u8> {
        self.key
            .sign(&detached_message(context, message))
            .to_bytes()
            .to_vec()
    }

    /// A key from its text form ([`SecretKey::to_text`]); `origin` names
    /// where it came from, for errors.
    pub fn from_text(text: &str, origin: &str) -> Result<SecretKey, TrustError> {
        let bytes = key_bytes(text, SECRET_TAG).ok_or_else(|| TrustError::BadKey {
            path: origin.into(),
            what: "secret",
        })?;
        Ok(SecretKey {
            key: SigningKey::from_bytes(&bytes),
        })
    }

    pub fn load(path: &Path) -> Result<SecretKey, TrustError> {
        let text = read(path, false)?;
        let bad = || TrustError::BadKey {
            path: path.display().to_string(),
            what: "secret",
        };
        let bytes = key_bytes(&text, SECRET_TAG).ok_or_else(bad)?;
        Ok(SecretKey {
            key: SigningKey::from_bytes(&bytes),
        })
    }
}

/// What a detached signature covers: a prefix no patch file starts with,
/// the context, a NUL, then the message.
fn detached_message(context: &str, message: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(24 + context.len() + message.len());
    m.extend_from_slice(b"hotsplice-detached\0");
    m.extend_from_slice(context.as_bytes());
    m.push(0);
    m.extend_from_slice(message);
    m
}

/// A key file's text: a regular file of at most [`MAX_KEY_FILE`] bytes
/// (links are followed, the opened file is checked). With `trusted`, the
/// file must also be one nobody else may write (see
/// [`hotsplice_store::check_owner_and_mode`]).
fn read(path: &Path, trusted: bool) -> Result<String, TrustError> {
    let (file, meta) =
        hotsplice_store::open_regular(path, "key file", MAX_KEY_FILE, Links::Follow)?;
    if trusted {
        check_owner_and_mode(path, &meta, "trusted key file")?;
    }
    let bytes = hotsplice_store::read_bounded(&file, path, "key file", MAX_KEY_FILE)?;
    String::from_utf8(bytes).map_err(|_| TrustError::BadKey {
        path: path.display().to_string(),
        what: "(text)",
    })
}

/// Write a new key pair as `DIR/NAME.key` (mode 0600, never replacing a
/// file) and `DIR/NAME.pub` (mode 0644), modes set whatever the umask;
/// `DIR` is created (mode 0700) if missing.
pub fn write_key_pair(dir: &Path, name: &str, key: &SecretKey) -> Result<(), TrustError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let io = |p: &Path| {
        let path = p.display().to_string();
        move |source| TrustError::Io { path, source }
    };
    hotsplice_store::create_private_dir_all(dir)?;
    let secret = dir.join(format!("{name}.key"));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(hotsplice_store::PRIVATE_FILE_MODE)
        .open(&secret)
        .map_err(io(&secret))?;
    f.set_permissions(std::fs::Permissions::from_mode(
        hotsplice_store::PRIVATE_FILE_MODE,
    ))
    .map_err(io(&secret))?;
    std::io::Write::write_all(&mut f, key.to_text().as_bytes()).map_err(io(&secret))?;
    f.sync_all().map_err(io(&secret))?;
    let public = dir.join(format!("{name}.pub"));
    hotsplice_store::write_atomic_mode(
        &public,
        key.public().to_text().as_bytes(),
        hotsplice_store::PUBLIC_FILE_MODE,
    )?;
    Ok(())
}

/// Every `*.pub` key in `dir` (none if it does not exist). The directory
/// and each key must be writable by nobody but their owner, root or the
/// caller (else anyone could make hotsplice trust their key): such a
/// directory or key is an error naming the `chmod`/`chown` that fixes it.
/// Each key is a regular file of at most [`MAX_KEY_FILE`] bytes.
pub fn trusted_keys(dir: &Path) -> Result<Vec<PublicKey>, TrustError> {
    if !check_dir(dir, "trusted keys directory")? {
        return Ok(Vec::new());
    }
    let entries = std::fs::read_dir(dir).map_err(|source| TrustError::Io {
        path: dir.display().to_string(),
        source,
    })?;
    let mut keys = Vec::new();
    let mut paths: Vec<_> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "pub"))
        .collect();
    paths.sort();
    for p in paths {
        keys.push(PublicKey::from_text(
            &read(&p, true)?,
            &p.display().to_string(),
        )?);
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

/// What a patch file's signature says, checked against the trusted keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignatureStatus {
    /// Signed by this trusted key, and the signature verifies.
    Trusted(PublicKey),
    /// Signed by a key that is not trusted here (so not checked).
    UnknownKey { key_id: String },
    /// Claims a trusted key (or an unknown algorithm) but does not verify.
    Bad { key_id: String, reason: String },
    /// No signature block.
    Unsigned,
}

impl SignatureStatus {
    /// `trusted`, `unknown-key`, `bad` or `unsigned` (for `--json`).
    pub fn name(&self) -> &'static str {
        match self {
            SignatureStatus::Trusted(_) => "trusted",
            SignatureStatus::UnknownKey { .. } => "unknown-key",
            SignatureStatus::Bad { .. } => "bad",
            SignatureStatus::Unsigned => "unsigned",
        }
    }

    /// The key the signature names, if any.
    pub fn key_id(&self) -> Option<String> {
        match self {
            SignatureStatus::Trusted(k) => Some(k.id()),
            SignatureStatus::UnknownKey { key_id } | SignatureStatus::Bad { key_id, .. } => {
                Some(key_id.clone())
            }
            SignatureStatus::Unsigned => None,
        }
    }
}

/// Check the signature of a parsed patch file against `trusted`.
pub fn signature_status(file: &PatchFile, trusted: &[PublicKey]) -> SignatureStatus {
    let Some(sig) = file.signature.as_ref() else {
        return SignatureStatus::Unsigned;
    };
    if sig.algorithm != ALGORITHM {
        return SignatureStatus::Bad {
            key_id: sig.key_id.clone(),
            reason: format!("unsupported signature algorithm `{}`", sig.algorithm),
        };
    }
    let Some(key) = trusted.iter().find(|k| k.id() == sig.key_id) else {
        return SignatureStatus::UnknownKey {
            key_id: sig.key_id.clone(),
        };
    };
    let bad = |reason: &str| SignatureStatus::Bad {
        key_id: sig.key_id.clone(),
        reason: reason.into(),
    };
    let Ok(bytes) = <[u8; 64]>::try_from(sig.bytes.as_slice()) else {
        return bad("the signature is not 64 bytes");
    };
    match key
        .key
        .verify(&file.signed_bytes, &EdSignature::from_bytes(&bytes))
    {
        Ok(()) => SignatureStatus::Trusted(key.clone()),
        Err(_) => bad("the file was changed after signing, or is damaged"),
    }
}

/// As [`verify_file`], naming `keys_dir` in messages.
pub fn verify_file_in(
    bytes: &[u8],
    trusted: &[PublicKey],
    keys_dir: &str,
) -> Result<(Patch, PublicKey), TrustError> {
    let v = verify(bytes, trusted, keys_dir)?;
    let Signer::Key(key) = v.signer else {
        unreachable!("verify returns only signed patches")
    };
    Ok((v.value, *key))
}

/// Who vouches for a [`Verified`] patch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signer {
    /// A trusted key, whose signature verified.
    Key(Box<PublicKey>),
    /// Nobody: the file carries no signature and the caller allowed that
    /// explicitly ([`accept_unsigned`], the loud `--allow-unsigned`).
    UnsignedAllowed,
}

impl Signer {
    /// The key's fingerprint, or the empty string for an allowed unsigned patch.
    pub fn key_id(&self) -> String {
        match self {
            Signer::Key(k) => k.id(),
            Signer::UnsignedAllowed => String::new(),
        }
    }
}

/// A patch that passed the trust policy: parsed (so valid) and signed by a
/// trusted key whose signature verified, or explicitly accepted unsigned.
///
/// Only this crate makes one ([`verify`], [`accept_unsigned`]); the engine
/// and the kernel client take nothing else, so no code path can put an
/// unchecked patch into a process or the kernel. It keeps the file's bytes
/// (what was verified), for records that must be verified again later
/// (the kernel's boot hook).
#[derive(Debug, Clone)]
pub struct Verified<T = Patch> {
    value: T,
    file: Vec<u8>,
    signer: Signer,
}

impl<T> Verified<T> {
    /// Who vouches for it.
    pub fn signer(&self) -> &Signer {
        &self.signer
    }

    /// The patch file, byte for byte as verified.
    pub fn file(&self) -> &[u8] {
        &self.file
    }

    /// The verified value.
    pub fn get(&self) -> &T {
        &self.value
    }
}

impl<T> std::ops::Deref for Verified<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

/// Parse a patch file and check its signature against `trusted` (naming
/// `keys_dir` in messages): the patch, if signed by a trusted key and the
/// signature verifies; otherwise why not.
pub fn verify(
    bytes: &[u8],
    trusted: &[PublicKey],
    keys_dir: &str,
) -> Result<Verified<Patch>, TrustError> {
    let file = PatchFile::parse(bytes)?;
    match signature_status(&file, trusted) {
        SignatureStatus::Trusted(key) => Ok(Verified {
            value: file.patch,
            file: bytes.to_vec(),
            signer: Signer::Key(Box::new(key)),
        }),
        SignatureStatus::Unsigned => Err(TrustError::Unsigned),
        SignatureStatus::UnknownKey { key_id } => Err(TrustError::UnknownKey {
            key_id,
            keys_dir: keys_dir.into(),
        }),
        SignatureStatus::Bad { key_id, .. } => {
            let sig = file.signature.as_ref().expect("a bad signature exists");
            if sig.algorithm != ALGORITHM {
                Err(TrustError::Algorithm(sig.algorithm.clone()))
            } else {
                Err(TrustError::BadSignature { key_id })
            }
        }
    }
}

/// A patch file with no signature at all, accepted because the caller
/// explicitly allowed it (`--allow-unsigned`, tests, benchmarks): it is
/// still parsed and validated. A file that carries a signature is checked
/// as by [`verify`] instead: a bad signature or an unknown key is refused
/// even here.
pub fn accept_unsigned(
    bytes: &[u8],
    trusted: &[PublicKey],
    keys_dir: &str,
) -> Result<Verified<Patch>, TrustError> {
    let file = PatchFile::parse(bytes)?;
    if file.signature.is_some() {
        return verify(bytes, trusted, keys_dir);
    }
    Ok(Verified {
        value: file.patch,
        file: bytes.to_vec(),
        signer: Signer::UnsignedAllowed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detached_signatures_are_bound_to_their_context_and_message() {
        let k = SecretKey::generate().unwrap();
        let sig = k.sign_detached("feed", b"list");
        assert!(k.public().verify_detached("feed", b"list", &sig));
        assert!(!k.public().verify_detached("other", b"list", &sig));
        assert!(!k.public().verify_detached("feed", b"lisT", &sig));
        assert!(!k.public().verify_detached("feed", b"list", &sig[1..]));
        let k2 = SecretKey::from_text(&k.to_text(), "test").unwrap();
        assert_eq!(k2.public(), k.public());
    }
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
        let tmp = tempfile::tempdir().unwrap();
        // Created by write_key_pair, so private whatever the umask of the
        // moment (another test sets it to 0).
        let dir = tmp.path().join("keys");
        let k = SecretKey::generate().unwrap();
        write_key_pair(&dir, "ops", &k).unwrap();
        let loaded = SecretKey::load(&dir.join("ops.key")).unwrap();
        assert_eq!(loaded.public().id(), k.public().id());
        let trusted = trusted_keys(&dir).unwrap();
        assert_eq!(trusted.len(), 1);
        assert_eq!(trusted[0].id(), k.public().id());
    }

    #[test]
    fn status_names_each_case() {
        let a = SecretKey::generate().unwrap();
        let b = SecretKey::generate().unwrap();
        let status = |bytes: &[u8]| {
            signature_status(&PatchFile::parse(bytes).unwrap(), &[a.public()]).name()
        };
        assert_eq!(status(&patch_bytes()), "unsigned");
        assert_eq!(status(&sign_file(&patch_bytes(), &a).unwrap()), "trusted");
        assert_eq!(
            status(&sign_file(&patch_bytes(), &b).unwrap()),
            "unknown-key"
        );
        let mut forged = sign_file(&patch_bytes(), &a).unwrap();
        let n = forged.len();
        forged[n - 3] ^= 0x40;
        assert_eq!(status(&forged), "bad");
    }

    #[test]
    fn key_files_have_explicit_modes_and_bounded_reads() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("new");
        // SAFETY: umask only changes this process's file creation mask.
        let old = unsafe { libc_umask(0) };
        let r = write_key_pair(&keys, "ops", &SecretKey::generate().unwrap());
        unsafe { libc_umask(old) };
        r.unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&keys), 0o700);
        assert_eq!(mode(&keys.join("ops.key")), 0o600);
        assert_eq!(mode(&keys.join("ops.pub")), 0o644);
        // A trusted key anyone may rewrite is refused, naming the fix.
        std::fs::set_permissions(keys.join("ops.pub"), std::fs::Permissions::from_mode(0o666))
            .unwrap();
        let e = trusted_keys(&keys).unwrap_err().to_string();
        assert!(e.contains("ops.pub") && e.contains("chmod go-w"), "{e}");
        // Not a regular file, or too large.
        assert!(SecretKey::load(Path::new("/dev/zero"))
            .err()
            .unwrap()
            .to_string()
            .contains("character device"));
        let big = dir.path().join("big.key");
        std::fs::File::create(&big)
            .unwrap()
            .set_len(1 << 30)
            .unwrap();
        assert!(SecretKey::load(&big)
            .err()
            .unwrap()
            .to_string()
            .contains("4 KiB"));
    }

    extern "C" {
        #[link_name = "umask"]
        fn libc_umask(mask: u32) -> u32;
    }
}
