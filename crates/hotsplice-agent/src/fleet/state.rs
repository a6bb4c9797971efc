//! The fleet client's files under `STATE/fleet/`, each written crash-safely
//! and read back as untrusted input: a regular file (no link), bounded,
//! parsed strictly.

use super::FleetError;
use crate::error::{AgentError, Result};
use hotsplice_fleet::feed::FeedState;
use hotsplice_fleet::report::RunReport;
use hotsplice_store::{Links, Paths, StoreError, PRIVATE_FILE_MODE, PUBLIC_FILE_MODE};
use hotsplice_trust::PublicKey;
use serde::{Deserialize, Serialize};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

/// The largest state file read (the feed list's bound, and some).
const MAX_STATE_FILE: u64 = (hotsplice_fleet::feed::MAX_FEED_BYTES as u64) + (64 << 10);

/// `STATE/fleet/server.json`: where the machine is registered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    /// Server URLs, tried in order.
    pub servers: Vec<String>,
    /// The pinned feed public key (`hotsplice-ed25519-public HEX`).
    pub feed_key: String,
    pub group: String,
    /// The UUID the server registered (the same as `fleet/uuid`).
    pub uuid: String,
    /// Seconds since the epoch.
    pub registered_at: u64,
}

impl ServerFile {
    pub fn public_key(&self) -> Result<PublicKey> {
        Ok(PublicKey::from_text(
            &self.feed_key,
            "the pinned feed key (fleet/server.json)",
        )?)
    }
}

/// A patch the machine took from a list (`fleet/from-fleet.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct FromFleet {
    pub id: String,
    pub sha256: String,
    pub kind: hotsplice_fleet::feed::PatchKind,
}

/// The fleet client's files.
#[derive(Debug, Clone)]
pub struct FleetPaths {
    pub dir: PathBuf,
}

impl FleetPaths {
    pub fn new(paths: &Paths) -> FleetPaths {
        FleetPaths {
            dir: paths.state_dir.join("fleet"),
        }
    }
    pub fn uuid(&self) -> PathBuf {
        self.dir.join("uuid")
    }
    pub fn server(&self) -> PathBuf {
        self.dir.join("server.json")
    }
    pub fn machine_key(&self) -> PathBuf {
        self.dir.join("machine.key")
    }
    pub fn feed_state(&self) -> PathBuf {
        self.dir.join("feed-state.json")
    }
    pub fn feed(&self) -> PathBuf {
        self.dir.join("feed.json")
    }
    pub fn patches(&self) -> PathBuf {
        self.dir.join("patches")
    }
    pub fn patch(&self, sha256: &str) -> PathBuf {
        self.patches()
            .join(format!("{}.hsp", sha256.to_ascii_lowercase()))
    }
    pub fn last_run(&self) -> PathBuf {
        self.dir.join("last-run.json")
    }

    /// Patches this machine installed or applied because a list named them
    /// (so that it removes them, and only them, once no list does).
    pub fn from_fleet(&self) -> PathBuf {
        self.dir.join("from-fleet.json")
    }

    /// The bytes of a state file, `None` when it does not exist.
    fn read(&self, path: &Path, what: &'static str, limit: u64) -> Result<Option<Vec<u8>>> {
        match hotsplice_store::read_regular(path, what, limit, Links::Refuse) {
            Ok(b) => Ok(Some(b)),
            Err(StoreError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    fn read_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &Path,
        what: &'static str,
    ) -> Result<Option<T>> {
        let Some(b) = self.read(path, what, MAX_STATE_FILE)? else {
            return Ok(None);
        };
        serde_json::from_slice(&b).map(Some).map_err(|e| {
            AgentError::Store(StoreError::Invalid {
                path: path.display().to_string(),
                detail: format!("{e}; remove it (or register again) to start afresh"),
            })
        })
    }

    fn write_json<T: Serialize>(&self, path: &Path, v: &T, mode: u32) -> Result<()> {
        let text = serde_json::to_string_pretty(v).expect("state serializes");
        hotsplice_store::write_atomic_mode(path, format!("{text}\n").as_bytes(), mode)?;
        Ok(())
    }

    /// The machine's UUID, if it has one.
    pub fn read_uuid(&self) -> Result<Option<String>> {
        let p = self.uuid();
        let Some(b) = self.read(&p, "UUID file", 4096)? else {
            return Ok(None);
        };
        let s = String::from_utf8_lossy(&b).trim().to_string();
        if !hotsplice_fleet::is_uuid(&s) {
            return Err(AgentError::Store(StoreError::Invalid {
                path: p.display().to_string(),
                detail: format!(
                    "{:?} is not a UUID; remove the file to get a new one",
                    crate::machine::printable(&s)
                ),
            }));
        }
        Ok(Some(s))
    }

    /// The machine's UUID, made (and kept) on first use.
    pub fn uuid_or_new(&self) -> Result<String> {
        if let Some(u) = self.read_uuid()? {
            return Ok(u);
        }
        let u = hotsplice_fleet::new_uuid().map_err(|e| AgentError::io("/dev/urandom", e))?;
        self.write_uuid(&u)?;
        Ok(u)
    }

    pub fn write_uuid(&self, uuid: &str) -> Result<()> {
        hotsplice_store::create_private_dir_all(&self.dir)?;
        hotsplice_store::write_atomic_mode(
            &self.uuid(),
            format!("{uuid}\n").as_bytes(),
            PUBLIC_FILE_MODE,
        )?;
        Ok(())
    }

    pub fn read_server(&self) -> Result<Option<ServerFile>> {
        let s: Option<ServerFile> = self.read_json(&self.server(), "server file")?;
        if let Some(s) = &s {
            if !hotsplice_fleet::is_uuid(&s.uuid) || s.servers.is_empty() {
                return Err(AgentError::Store(StoreError::Invalid {
                    path: self.server().display().to_string(),
                    detail: "no server or no valid UUID; register again".into(),
                }));
            }
        }
        Ok(s)
    }

    pub fn write_server(&self, s: &ServerFile) -> Result<()> {
        self.write_json(&self.server(), s, PUBLIC_FILE_MODE)
    }

    /// The registration, or [`FleetError::NotRegistered`].
    pub fn registration(&self) -> Result<ServerFile> {
        self.read_server()?
            .ok_or_else(|| AgentError::from(FleetError::NotRegistered))
    }

    /// The machine key; refused when others may read it.
    pub fn read_machine_key(&self) -> Result<String> {
        let p = self.machine_key();
        let (file, meta) = hotsplice_store::open_regular(&p, "machine key", 4096, Links::Refuse)
            .map_err(|e| match e {
                StoreError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                    AgentError::from(FleetError::NotRegistered)
                }
                e => e.into(),
            })?;
        if meta.mode() & 0o077 != 0 {
            return Err(AgentError::Request(format!(
                "{}: the machine key may be read by others (mode {:04o}): run `chmod 600 {}`, \
                 and register again if someone else may have read it",
                p.display(),
                meta.mode() & 0o7777,
                p.display()
            )));
        }
        let b = hotsplice_store::read_bounded(&file, &p, "machine key", 4096)?;
        let k = String::from_utf8_lossy(&b).trim().to_string();
        if k.is_empty() || !k.bytes().all(|c| c.is_ascii_graphic()) {
            return Err(AgentError::Store(StoreError::Invalid {
                path: p.display().to_string(),
                detail: "not a machine key; register again".into(),
            }));
        }
        Ok(k)
    }

    pub fn write_machine_key(&self, key: &str) -> Result<()> {
        if key.is_empty() || key.len() > 1024 || !key.bytes().all(|c| c.is_ascii_graphic()) {
            return Err(AgentError::Request(
                "the server sent a machine key that is not printable text".into(),
            ));
        }
        hotsplice_store::write_atomic_mode(
            &self.machine_key(),
            format!("{key}\n").as_bytes(),
            PRIVATE_FILE_MODE,
        )?;
        Ok(())
    }

    pub fn read_feed_state(&self) -> Result<Option<FeedState>> {
        self.read_json(&self.feed_state(), "feed state file")
    }

    pub fn write_feed_state(&self, s: &FeedState) -> Result<()> {
        self.write_json(&self.feed_state(), s, PRIVATE_FILE_MODE)
    }

    pub fn write_feed(&self, f: &hotsplice_fleet::feed::SignedFeed) -> Result<()> {
        self.write_json(&self.feed(), f, PRIVATE_FILE_MODE)
    }

    /// Forget the last accepted list (a new server or key).
    pub fn forget_feed(&self) -> Result<()> {
        for p in [self.feed_state(), self.feed()] {
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(AgentError::io(p.display(), e)),
            }
        }
        Ok(())
    }

    pub fn read_from_fleet(&self) -> Result<Vec<FromFleet>> {
        Ok(self
            .read_json(&self.from_fleet(), "fleet patches file")?
            .unwrap_or_default())
    }

    pub fn write_from_fleet(&self, v: &[FromFleet]) -> Result<()> {
        self.write_json(&self.from_fleet(), &v, PRIVATE_FILE_MODE)
    }

    pub fn read_last_run(&self) -> Result<Option<RunReport>> {
        self.read_json(&self.last_run(), "last run file")
    }

    pub fn write_last_run(&self, r: &RunReport) -> Result<()> {
        self.write_json(&self.last_run(), r, PRIVATE_FILE_MODE)
    }

    /// A downloaded patch file, if present.
    pub fn read_patch(&self, sha256: &str, limit: u64) -> Result<Option<Vec<u8>>> {
        self.read(&self.patch(sha256), "patch file", limit)
    }

    /// Keep a downloaded patch file (checked by the caller first).
    pub fn write_patch(&self, sha256: &str, bytes: &[u8]) -> Result<PathBuf> {
        let p = self.patch(sha256);
        hotsplice_store::write_atomic_mode(&p, bytes, PRIVATE_FILE_MODE)?;
        Ok(p)
    }

    /// Remove downloaded patch files the accepted list no longer names
    /// (withdrawn patches are not re-applied at boot from here), and
    /// temporary files a killed download left.
    pub fn prune_patches(&self, keep: &[String]) -> Vec<PathBuf> {
        let mut removed = Vec::new();
        let Ok(rd) = std::fs::read_dir(self.patches()) else {
            return removed;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let listed = name
                .strip_suffix(".hsp")
                .is_some_and(|s| keep.iter().any(|k| k.eq_ignore_ascii_case(s)));
            if !listed && std::fs::remove_file(e.path()).is_ok() {
                removed.push(e.path());
            }
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn fp() -> (tempfile::TempDir, FleetPaths) {
        let t = tempfile::tempdir().unwrap();
        let paths = Paths {
            config_dir: t.path().join("etc"),
            state_dir: t.path().join("state"),
            run_dir: t.path().join("run"),
        };
        (t, FleetPaths::new(&paths))
    }

    #[test]
    fn uuid_is_made_once_and_kept() {
        let (_t, f) = fp();
        assert_eq!(f.read_uuid().unwrap(), None);
        let u = f.uuid_or_new().unwrap();
        assert!(hotsplice_fleet::is_uuid(&u));
        assert_eq!(f.uuid_or_new().unwrap(), u);
        std::fs::write(f.uuid(), "not-a-uuid\n").unwrap();
        assert!(f.read_uuid().is_err());
        // A link in its place is refused, not followed.
        std::fs::remove_file(f.uuid()).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", f.uuid()).unwrap();
        assert!(f.read_uuid().is_err());
    }

    #[test]
    fn machine_key_is_private() {
        let (_t, f) = fp();
        assert!(matches!(
            f.read_machine_key(),
            Err(AgentError::Fleet(FleetError::NotRegistered))
        ));
        f.write_machine_key("s3cret").unwrap();
        let mode = std::fs::metadata(f.machine_key()).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(f.read_machine_key().unwrap(), "s3cret");
        std::fs::set_permissions(f.machine_key(), std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = f.read_machine_key().unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
        assert!(f.write_machine_key("two\nlines").is_err());
    }

    #[test]
    fn feed_state_round_trips_and_bad_files_are_named() {
        let (_t, f) = fp();
        assert_eq!(f.read_feed_state().unwrap(), None);
        let s = FeedState {
            version: 7,
            expires_at: 100,
            sha256: "ab".repeat(32),
        };
        f.write_feed_state(&s).unwrap();
        assert_eq!(f.read_feed_state().unwrap(), Some(s));
        std::fs::write(f.feed_state(), "{\"version\": \"x\"}").unwrap();
        let e = crate::error::chain(&f.read_feed_state().unwrap_err());
        assert!(e.contains("feed-state.json"), "{e}");
        f.forget_feed().unwrap();
        assert_eq!(f.read_feed_state().unwrap(), None);
        // Too large to be ours: refused before parsing.
        std::fs::write(f.feed_state(), vec![b' '; MAX_STATE_FILE as usize + 1]).unwrap();
        assert!(f.read_feed_state().is_err());
    }

    #[test]
    fn server_file_and_pruning() {
        let (_t, f) = fp();
        assert!(matches!(
            f.registration(),
            Err(AgentError::Fleet(FleetError::NotRegistered))
        ));
        let key = hotsplice_trust::SecretKey::generate().unwrap();
        let s = ServerFile {
            servers: vec!["https://a".into()],
            feed_key: key.public().to_text(),
            group: "default".into(),
            uuid: hotsplice_fleet::new_uuid().unwrap(),
            registered_at: 1,
        };
        f.write_server(&s).unwrap();
        assert_eq!(f.registration().unwrap(), s);
        assert_eq!(s.public_key().unwrap().id(), key.public().id());
        let a = "aa".repeat(32);
        let b = "bb".repeat(32);
        f.write_patch(&a, b"A").unwrap();
        f.write_patch(&b, b"B").unwrap();
        std::fs::write(f.patches().join(".x.hsp.tmp.1.0"), "half").unwrap();
        let removed = f.prune_patches(std::slice::from_ref(&a));
        assert_eq!(removed.len(), 2, "{removed:?}");
        assert_eq!(f.read_patch(&a, 10).unwrap().as_deref(), Some(&b"A"[..]));
        assert_eq!(f.read_patch(&b, 10).unwrap(), None);
    }
}
