//! The signed feed: the list of patches meant for one machine.
//!
//! The server makes a [`FeedList`] for each machine at each check-in (the
//! patches of its group's channel that fit its kernel build and the
//! build-ids it reported; nothing when the machine is not `allowed`),
//! signs it with its feed key ([`SignedFeed::sign`]) and sends it back.
//! The client opens it with the key it pinned at registration
//! ([`SignedFeed::open`]) and then [`accept`]s it against what it accepted
//! before, which gives the properties The Update Framework names:
//!
//! - **rollback**: a list with a lower `version` than the last accepted one
//!   is refused, so an old list (with patches since withdrawn, or without
//!   a fix since published) cannot be replayed;
//! - **freeze**: a list past its `expires_at` is refused, so a server (or
//!   someone in the middle) cannot hold a machine on a stale list forever;
//! - **mix and match**: every patch file must match the size and SHA-256
//!   the list gives ([`check_blob`]) *and* carry a valid signature of a
//!   publisher key the machine trusts, checked again on every use;
//! - **another machine's list**: a list names the machine it was made for
//!   (or `*` for a channel's list a mirror copies), and a client refuses a
//!   list made for another UUID.
//!
//! Why not TUF itself (`tough`): TUF describes a static repository whose
//! targets are the same for every client, with four roles' metadata files
//! fetched separately. A hotsplice feed is computed per machine (its
//! authorization, group, kernel and objects decide what it gets) and
//! returned in the check-in answer, so a snapshot/timestamp layer over a
//! static tree does not fit; the three checks above are what TUF's roles
//! buy a client here, and the patches are signed by publishers whose keys
//! the server does not hold.

use crate::sha256_hex;
use hotsplice_trust::{PublicKey, SecretKey};
use serde::{Deserialize, Serialize};

/// Format of [`FeedList`] written by this build.
pub const FEED_FORMAT: u32 = 1;
/// What a feed signature is bound to (see `SecretKey::sign_detached`).
pub const FEED_CONTEXT: &str = "hotsplice-feed-v1";
/// A list for every machine of a channel (a mirror's copy).
pub const ANY_MACHINE: &str = "*";
/// At most this many patches in one list, and this many bytes of JSON.
pub const MAX_FEED_PATCHES: usize = 10_000;
pub const MAX_FEED_BYTES: usize = 8 << 20;
/// Largest patch file a feed may list (the server refuses bigger uploads).
pub const MAX_PATCH_BYTES: u64 = 64 << 20;

/// What a patch is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum PatchKind {
    Kernel,
    User,
}

/// One patch of a list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct FeedEntry {
    /// SHA-256 of the patch file, hex: also its name on the server
    /// (`GET /api/v2/patches/SHA256`).
    pub sha256: String,
    /// Size of the file in bytes.
    pub size: u64,
    /// The patch ID (8 lowercase letters and digits).
    pub id: String,
    pub kind: PatchKind,
    /// The object it fixes: its name, for people, and its build-id.
    pub target_name: String,
    pub build_id: String,
    pub level: u32,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub cves: Vec<String>,
}

/// The list, as signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct FeedList {
    /// [`FEED_FORMAT`].
    pub format: u32,
    /// The UUID of the machine it is for, or [`ANY_MACHINE`].
    pub machine: String,
    /// The channel it was taken from.
    pub channel: String,
    /// Grows whenever anything that decides a list changes on the server
    /// (a publish, a promotion, an authorization, a group's channel); never
    /// goes down.
    pub version: u64,
    /// Seconds since the epoch.
    pub issued_at: u64,
    pub expires_at: u64,
    /// The machine's authorization when the list was made (`allowed`,
    /// `denied`, `pending`); the list is empty unless `allowed`.
    pub authorization: String,
    pub patches: Vec<FeedEntry>,
}

/// A list and its signature. `signed` is the exact JSON text that was
/// signed, so the client verifies bytes, not a re-serialization.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SignedFeed {
    pub signed: String,
    /// [`PublicKey::id`] of the feed key.
    pub key_id: String,
    /// Ed25519 signature, hex.
    pub signature: String,
}

/// What the client remembers of the last list it accepted
/// (`STATE/fleet/feed-state.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FeedState {
    pub version: u64,
    pub expires_at: u64,
    /// SHA-256 of the accepted list's `signed` text.
    pub sha256: String,
}

/// Why a list or a patch file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FeedError {
    #[error("the feed is signed by key {got}, not by the server's feed key {want} pinned at registration; if the server's key was replaced on purpose, register again")]
    WrongKey { want: String, got: String },
    #[error("the feed's signature does not verify: it was altered, or not made by the server's feed key")]
    BadSignature,
    #[error("the feed is not a valid list: {0}")]
    Malformed(String),
    #[error("the feed is version {got}, older than version {last} accepted before: a replayed list (rollback), refused")]
    Rollback { got: u64, last: u64 },
    #[error("the feed expired at {expires_at} (now {now}): a stale list (freeze), refused; the server must sign a fresh one")]
    Expired { expires_at: u64, now: u64 },
    #[error("the feed is for machine {got}, not this one ({want}), refused")]
    OtherMachine { want: String, got: String },
    #[error("patch {id}: the file is {got_size} bytes with SHA-256 {got}, but the signed feed says {want_size} bytes with SHA-256 {want}: refused (mix and match)")]
    BlobMismatch {
        id: String,
        want: String,
        got: String,
        want_size: u64,
        got_size: u64,
    },
}

impl SignedFeed {
    /// Serialize and sign `list` with the feed key.
    pub fn sign(list: &FeedList, key: &SecretKey) -> SignedFeed {
        let signed = serde_json::to_string(list).expect("a feed list serializes");
        let sig = key.sign_detached(FEED_CONTEXT, signed.as_bytes());
        SignedFeed {
            signed,
            key_id: key.public().id(),
            signature: hex::encode(sig),
        }
    }

    /// Check the signature against the pinned feed key, then parse and
    /// bound the list. Says nothing yet about freshness: see [`accept`].
    pub fn open(&self, feed_key: &PublicKey) -> Result<FeedList, FeedError> {
        if self.key_id != feed_key.id() {
            return Err(FeedError::WrongKey {
                want: feed_key.id(),
                got: self.key_id.clone(),
            });
        }
        if self.signed.len() > MAX_FEED_BYTES {
            return Err(FeedError::Malformed(format!(
                "{} bytes, more than {MAX_FEED_BYTES}",
                self.signed.len()
            )));
        }
        let sig = hex::decode(&self.signature).map_err(|_| FeedError::BadSignature)?;
        if !feed_key.verify_detached(FEED_CONTEXT, self.signed.as_bytes(), &sig) {
            return Err(FeedError::BadSignature);
        }
        let list: FeedList =
            serde_json::from_str(&self.signed).map_err(|e| FeedError::Malformed(e.to_string()))?;
        list.check()?;
        Ok(list)
    }

    /// SHA-256 of the signed text.
    pub fn sha256(&self) -> String {
        sha256_hex(self.signed.as_bytes())
    }
}

impl FeedList {
    fn check(&self) -> Result<(), FeedError> {
        let m = |s: String| Err(FeedError::Malformed(s));
        if self.format != FEED_FORMAT {
            return m(format!(
                "format {} (this client reads {FEED_FORMAT})",
                self.format
            ));
        }
        if self.patches.len() > MAX_FEED_PATCHES {
            return m(format!("{} patches listed", self.patches.len()));
        }
        for p in &self.patches {
            if p.sha256.len() != 64 || !p.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return m(format!("patch {:?}: sha256 {:?}", p.id, p.sha256));
            }
            if !hotsplice_patch::is_valid_id(&p.id) {
                return m(format!("patch ID {:?}", p.id));
            }
            if p.size == 0 || p.size > MAX_PATCH_BYTES {
                return m(format!("patch {}: size {}", p.id, p.size));
            }
        }
        Ok(())
    }
}

/// Whether the client may act on `list`: made for `machine`, not expired
/// at `now`, and not older than `last`. The caller then stores
/// [`FeedState`] for it.
pub fn accept(
    list: &FeedList,
    machine: &str,
    last: Option<&FeedState>,
    now: u64,
) -> Result<(), FeedError> {
    if list.machine != machine && list.machine != ANY_MACHINE {
        return Err(FeedError::OtherMachine {
            want: machine.into(),
            got: list.machine.clone(),
        });
    }
    if now >= list.expires_at {
        return Err(FeedError::Expired {
            expires_at: list.expires_at,
            now,
        });
    }
    if let Some(l) = last {
        if list.version < l.version {
            return Err(FeedError::Rollback {
                got: list.version,
                last: l.version,
            });
        }
    }
    Ok(())
}

/// A downloaded patch file is the one the list names.
pub fn check_blob(entry: &FeedEntry, bytes: &[u8]) -> Result<(), FeedError> {
    let got = sha256_hex(bytes);
    if got != entry.sha256.to_ascii_lowercase() || bytes.len() as u64 != entry.size {
        return Err(FeedError::BlobMismatch {
            id: entry.id.clone(),
            want: entry.sha256.clone(),
            got,
            want_size: entry.size,
            got_size: bytes.len() as u64,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: &str = "00086980-47cb-4486-81c0-4fe3299bad90";

    fn list(version: u64, expires_at: u64) -> FeedList {
        FeedList {
            format: FEED_FORMAT,
            machine: ME.into(),
            channel: "stable".into(),
            version,
            issued_at: 100,
            expires_at,
            authorization: "allowed".into(),
            patches: vec![FeedEntry {
                sha256: sha256_hex(b"patch"),
                size: 5,
                id: "abcd1234".into(),
                kind: PatchKind::User,
                target_name: "libc.so.6".into(),
                build_id: "ab".into(),
                level: 1,
                description: String::new(),
                cves: vec![],
            }],
        }
    }

    #[test]
    fn signed_list_opens_only_with_the_feed_key_and_unaltered() {
        let k = SecretKey::generate().unwrap();
        let s = SignedFeed::sign(&list(3, 1000), &k);
        assert_eq!(s.open(&k.public()).unwrap(), list(3, 1000));
        let other = SecretKey::generate().unwrap();
        assert!(matches!(
            s.open(&other.public()),
            Err(FeedError::WrongKey { .. })
        ));
        let mut t = s.clone();
        t.signed = t.signed.replace("\"version\":3", "\"version\":4");
        assert_eq!(t.open(&k.public()), Err(FeedError::BadSignature));
    }

    #[test]
    fn rollback_freeze_and_other_machines_are_refused() {
        let last = FeedState {
            version: 5,
            expires_at: 1000,
            sha256: String::new(),
        };
        assert!(accept(&list(5, 1000), ME, Some(&last), 500).is_ok());
        assert!(accept(&list(6, 1000), ME, Some(&last), 500).is_ok());
        assert_eq!(
            accept(&list(4, 1000), ME, Some(&last), 500),
            Err(FeedError::Rollback { got: 4, last: 5 })
        );
        assert!(matches!(
            accept(&list(6, 1000), ME, Some(&last), 1000),
            Err(FeedError::Expired { .. })
        ));
        let mut l = list(6, 1000);
        l.machine = "11111111-47cb-4486-81c0-4fe3299bad90".into();
        assert!(matches!(
            accept(&l, ME, None, 1),
            Err(FeedError::OtherMachine { .. })
        ));
        l.machine = ANY_MACHINE.into();
        assert!(accept(&l, ME, None, 1).is_ok());
    }

    #[test]
    fn blobs_must_match_the_list() {
        let l = list(1, 10);
        assert!(check_blob(&l.patches[0], b"patch").is_ok());
        assert!(matches!(
            check_blob(&l.patches[0], b"patcH"),
            Err(FeedError::BlobMismatch { .. })
        ));
    }
}
