//! The names hotsplice gives patches and finds objects by: [`PatchId`]
//! and [`BuildId`]. Both are stored as plain strings (`serde`
//! transparent), so a value read from a file or a process may be anything
//! until it is checked where it is read (validation names the field); made
//! from text in code ([`std::str::FromStr`]), they are checked at once.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Length of a patch ID (as Ksplice's: 8 lowercase letters and digits).
pub const ID_LEN: usize = 8;

/// Why text is not a [`PatchId`] or a [`BuildId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value} is not a {what}: {why}")]
pub struct IdError {
    pub what: &'static str,
    /// The text, quoted and shortened.
    pub value: String,
    pub why: &'static str,
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $what:literal, $why:literal, $valid:path) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Whether the value has the right shape (always so for one
            /// made by [`std::str::FromStr`]).
            pub fn is_valid(&self) -> bool {
                $valid(&self.0)
            }

            /// A value taken as it is, to be checked where it is used (a
            /// parser naming the field it came from, or a test).
            pub fn unchecked(s: impl Into<String>) -> Self {
                $name(s.into())
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                if $valid(s) {
                    Ok($name(s.to_string()))
                } else {
                    Err(IdError {
                        what: $what,
                        value: crate::validate::quoted(s),
                        why: $why,
                    })
                }
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                s.parse()
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl PartialEq<String> for $name {
            fn eq(&self, other: &String) -> bool {
                &self.0 == other
            }
        }

        impl PartialEq<$name> for String {
            fn eq(&self, other: &$name) -> bool {
                *self == other.0
            }
        }

        impl PartialEq<$name> for str {
            fn eq(&self, other: &$name) -> bool {
                self == other.0
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }
    };
}

id_type!(
    /// A patch's ID: 8 lowercase letters and digits, the same for the same
    /// diff and build ([`PatchId::stable`]).
    PatchId,
    "patch id",
    "a patch id is 8 lowercase letters and digits",
    is_valid_id
);

id_type!(
    /// A GNU build-id in hex, as patches and records carry it (empty for
    /// an object that has none).
    BuildId,
    "build-id",
    "a build-id is an even number of hex digits, at most 128",
    crate::validate::is_build_id
);

impl PatchId {
    /// The ID of the given inputs: the same inputs give the same ID, so
    /// re-creating a patch from the same diff for the same build keeps it.
    pub fn stable(parts: &[&[u8]]) -> PatchId {
        PatchId(stable_id(parts))
    }
}

impl BuildId {
    /// The build-id of these note bytes, in lowercase hex.
    pub fn from_bytes(bytes: &[u8]) -> BuildId {
        BuildId(hex::encode(bytes))
    }
}

/// A short ID derived from the given inputs (see [`PatchId::stable`]).
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
        assert_eq!(PatchId::stable(&[b"diff", b"build"]).as_str(), a);
    }

    #[test]
    fn ids_parse_only_when_well_formed_and_serialize_as_strings() {
        let id: PatchId = "abcd1234".parse().unwrap();
        assert_eq!(id, "abcd1234");
        assert_eq!(serde_json::to_string(&id).unwrap(), r#""abcd1234""#);
        let err = "../../x".parse::<PatchId>().unwrap_err().to_string();
        assert!(err.contains("\"../../x\" is not a patch id"), "{err}");
        assert!("ABCD1234".parse::<PatchId>().is_err());
        let b: BuildId = "00ff".parse().unwrap();
        assert_eq!(b.to_string(), "00ff");
        assert!("abc".parse::<BuildId>().is_err());
        assert!("zz".parse::<BuildId>().is_err());
        assert_eq!(BuildId::from_bytes(&[0xab, 1]), "ab01");
        // Read as stored, checked where used.
        let raw: PatchId = serde_json::from_str(r#""NOT-AN-ID""#).unwrap();
        assert!(!raw.is_valid());
    }
}
