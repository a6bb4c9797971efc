use crate::fsutil::MAX_INDEX_FILE;
use crate::{
    check_dir, create_private_dir_all, read_regular, write_atomic, FileLock, Links, Paths, Result,
    StoreError, MAX_PATCH_FILE,
};
use hotsplice_patch::{Patch, Target};
use serde::{Deserialize, Serialize};
use sha2::Digest;
use std::path::PathBuf;

/// Store format written by this build; older formats are read and upgraded
/// on the next write.
pub const STORE_VERSION: u32 = 1;

/// One installed patch.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Entry {
    pub id: hotsplice_patch::PatchId,
    pub target: Target,
    /// Ordering among patches for the same target: a higher level replaces
    /// a lower one in each process.
    #[serde(default = "one")]
    pub level: u32,
    #[serde(default)]
    pub description: String,
    /// File name inside the store's `patches/` directory.
    pub file: String,
    /// SHA-256 of the file as installed.
    pub sha256: String,
    /// Key that signed it (empty when installed with --allow-unsigned).
    #[serde(default)]
    pub key_id: String,
    #[serde(default)]
    pub installed_at: u64,
}

fn one() -> u32 {
    1
}

#[derive(Debug)]
struct Index {
    patches: Vec<Entry>,
    /// Entries that failed validation, kept as they were.
    rejected: Vec<Rejected>,
}

#[derive(Serialize)]
struct IndexOut {
    version: u32,
    patches: Vec<serde_json::Value>,
}

/// An index entry that is not valid, so never used: not listed, not
/// applied, and no file it names is read or deleted. (Bad entries are
/// *skipped*, with this report, rather than making the whole store
/// unusable: the valid ones keep every process patched.) It stays in the
/// index as it was until someone removes it: `hotsplice user uninstall ID`
/// drops it (deleting no file) when its `id` is a valid patch ID, else it
/// is edited out of the index by hand.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    /// The index file.
    pub index: PathBuf,
    /// Position in its `patches` array, from 0.
    pub position: usize,
    /// The entry, as compact JSON.
    pub entry: String,
    /// Its `id` field, when it is a valid patch ID.
    pub id: Option<String>,
    /// What is wrong with it.
    pub reason: String,
    raw: serde_json::Value,
}

impl std::fmt::Display for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: entry {} ({}) is not valid: {}; it is ignored (nothing it names is read or deleted): ",
            self.index.display(),
            self.position,
            self.entry,
            self.reason
        )?;
        match &self.id {
            Some(id) => write!(
                f,
                "remove it with `hotsplice user uninstall {id}` and install the patch again"
            ),
            None => write!(f, "remove it from {} by hand", self.index.display()),
        }
    }
}

/// Why an index entry is not valid, or None.
fn invalid(e: &Entry) -> Option<String> {
    let hex = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if !hotsplice_patch::is_valid_id(&e.id) {
        return Some(format!(
            "id {:?} is not a patch ID ({} lowercase letters and digits)",
            e.id,
            hotsplice_patch::ID_LEN
        ));
    }
    // A plain name inside `patches/`: exactly what `install` writes, so
    // never a path (`/`, `..`) nor another entry's file.
    if e.file != file_name(&e.id) {
        return Some(format!(
            "file {:?} is not the store's file name for patch {} ({:?})",
            e.file,
            e.id,
            file_name(&e.id)
        ));
    }
    if e.sha256.len() != 64 || !hex(&e.sha256) {
        return Some(format!(
            "sha256 {:?} is not 64 lowercase hex digits",
            e.sha256
        ));
    }
    let b = &e.target.build_id;
    if b.is_empty() || b.len() > 128 || b.len() & 1 != 0 || !hex(b) {
        return Some(format!("target build-id {b:?} is not lowercase hex"));
    }
    if e.key_id.len() > 64 || !hex(&e.key_id) {
        return Some(format!("key id {:?} is not hex", e.key_id));
    }
    None
}

fn file_name(id: &str) -> String {
    format!("{id}.hsp")
}

/// The installed patches (`STATE_DIR/store.json` and `STATE_DIR/patches/`).
///
/// Nothing read from the index is trusted: every entry is validated when
/// the index is read (see [`Rejected`]), the state directory and
/// `patches/` must not be writable by anyone else (see
/// [`crate::check_dir`]), files are read only if regular and at most
/// [`MAX_PATCH_FILE`] bytes, and whoever uses a patch read from here checks
/// its signature again: the index's `key_id` is for people only.
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// The store of `paths`; refused when its directory is writable by
    /// others (see [`crate::check_dir`]).
    pub fn open(paths: &Paths) -> Result<Store> {
        let s = Store {
            dir: paths.state_dir.clone(),
        };
        s.check()?;
        Ok(s)
    }

    fn index_path(&self) -> PathBuf {
        self.dir.join("store.json")
    }

    fn patches_dir(&self) -> PathBuf {
        self.dir.join("patches")
    }

    /// The state directory and `patches/` may be written by us alone.
    fn check(&self) -> Result<()> {
        check_dir(&self.dir, "state directory")?;
        check_dir(&self.patches_dir(), "store directory")?;
        Ok(())
    }

    pub fn patch_path(&self, e: &Entry) -> PathBuf {
        self.patches_dir().join(&e.file)
    }

    fn lock(&self) -> Result<FileLock> {
        create_private_dir_all(&self.dir)?;
        self.check()?;
        FileLock::acquire(&self.dir.join(".store.lock"))
    }

    fn read_index(&self) -> Result<Index> {
        self.check()?;
        let path = self.index_path();
        let text = match read_regular(&path, "store index", MAX_INDEX_FILE, Links::Refuse) {
            Ok(t) => t,
            Err(StoreError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Index {
                    patches: vec![],
                    rejected: vec![],
                })
            }
            Err(e) => return Err(e),
        };
        let bad = |detail: String| StoreError::Invalid {
            path: path.display().to_string(),
            detail,
        };
        let raw: serde_json::Value =
            serde_json::from_slice(&text).map_err(|e| bad(e.to_string()))?;
        let version = raw.get("version").and_then(|v| v.as_u64()).unwrap_or(0);
        if version > STORE_VERSION as u64 {
            return Err(StoreError::TooNew {
                path: path.display().to_string(),
                found: version.min(u32::MAX as u64) as u32,
                supported: STORE_VERSION,
            });
        }
        let items = match raw.get("patches") {
            None | Some(serde_json::Value::Null) => Vec::new(),
            Some(serde_json::Value::Array(a)) => a.clone(),
            Some(_) => return Err(bad("`patches` is not a list; restore the index from a backup or remove it and install the patches again".into())),
        };
        let mut index = Index {
            patches: vec![],
            rejected: vec![],
        };
        for (position, item) in items.into_iter().enumerate() {
            let reason = match serde_json::from_value::<Entry>(item.clone()) {
                Err(e) => Some(e.to_string()),
                Ok(e) => match invalid(&e) {
                    Some(r) => Some(r),
                    None if index.patches.iter().any(|p| p.id == e.id) => {
                        Some(format!("patch {} is listed twice", e.id))
                    }
                    None => {
                        index.patches.push(e);
                        None
                    }
                },
            };
            if let Some(reason) = reason {
                let id = item
                    .get("id")
                    .and_then(|v| v.as_str())
                    .filter(|s| hotsplice_patch::is_valid_id(s))
                    .map(str::to_string);
                index.rejected.push(Rejected {
                    index: path.clone(),
                    position,
                    entry: serde_json::to_string(&item).unwrap_or_default(),
                    id,
                    reason,
                    raw: item,
                });
            }
        }
        Ok(index)
    }

    fn write_index(&self, index: &Index) -> Result<()> {
        let mut patches: Vec<serde_json::Value> = index
            .patches
            .iter()
            .map(|e| serde_json::to_value(e).expect("entry serializes"))
            .collect();
        patches.extend(index.rejected.iter().map(|r| r.raw.clone()));
        let out = IndexOut {
            version: STORE_VERSION,
            patches,
        };
        let bytes = serde_json::to_vec_pretty(&out).expect("index serializes");
        write_atomic(&self.index_path(), &bytes)
    }

    /// Every installed patch, in installation order (valid entries only:
    /// see [`Store::rejected`]).
    pub fn list(&self) -> Result<Vec<Entry>> {
        Ok(self.read_index()?.patches)
    }

    /// The index entries that are not valid and so are ignored, for the
    /// caller to report.
    pub fn rejected(&self) -> Result<Vec<Rejected>> {
        Ok(self.read_index()?.rejected)
    }

    pub fn get(&self, id: &str) -> Result<Entry> {
        self.list()?
            .into_iter()
            .find(|e| e.id == id)
            .ok_or_else(|| StoreError::NotInstalled(id.into()))
    }

    /// Read an installed patch's file, checking it is what was installed
    /// (a regular file, not a link, of the size and SHA-256 recorded). The
    /// signature is not checked here: the caller verifies it every time.
    pub fn read_patch(&self, e: &Entry) -> Result<Vec<u8>> {
        if let Some(reason) = invalid(e) {
            return Err(StoreError::Invalid {
                path: self.index_path().display().to_string(),
                detail: format!("entry for {:?}: {reason}", e.id),
            });
        }
        self.check()?;
        let path = self.patch_path(e);
        let bytes = read_regular(&path, "patch file", MAX_PATCH_FILE, Links::Refuse)?;
        if hex::encode(sha2::Sha256::digest(&bytes)) != e.sha256 {
            return Err(StoreError::Invalid {
                path: path.display().to_string(),
                detail: "changed since it was installed; install it again".into(),
            });
        }
        Ok(bytes)
    }

    /// Add a (verified) patch file. Installing the same ID again replaces it.
    pub fn install(&self, bytes: &[u8], patch: &Patch, key_id: &str) -> Result<Entry> {
        let _lock = self.lock()?;
        let file = file_name(&patch.meta.id);
        let entry = Entry {
            id: patch.meta.id.clone(),
            target: patch.meta.target.clone(),
            level: patch.meta.level,
            description: patch.meta.description.clone(),
            file: file.clone(),
            sha256: hex::encode(sha2::Sha256::digest(bytes)),
            key_id: key_id.into(),
            installed_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        };
        if let Some(reason) = invalid(&entry) {
            return Err(StoreError::Invalid {
                path: "patch".into(),
                detail: format!("cannot be installed: {reason}"),
            });
        }
        // The file first, then the index that names it: a crash in between
        // leaves an unreferenced file, never a reference to a missing one.
        create_private_dir_all(&self.patches_dir())?;
        self.check()?;
        write_atomic(&self.patches_dir().join(&file), bytes)?;
        let mut index = self.read_index()?;
        index.patches.retain(|e| e.id != entry.id);
        index
            .rejected
            .retain(|r| r.id.as_deref() != Some(&entry.id));
        index.patches.push(entry.clone());
        self.write_index(&index)?;
        Ok(entry)
    }

    /// Drop a patch from the store (it stays applied where it is applied).
    /// A rejected entry with this ID is dropped from the index too, and no
    /// file it names is touched: then `Ok(None)`.
    pub fn uninstall(&self, id: &str) -> Result<Option<Entry>> {
        let _lock = self.lock()?;
        let mut index = self.read_index()?;
        let before = index.rejected.len();
        index.rejected.retain(|r| r.id.as_deref() != Some(id));
        let dropped_rejected = index.rejected.len() != before;
        let Some(pos) = index.patches.iter().position(|e| e.id == id) else {
            if dropped_rejected {
                self.write_index(&index)?;
                return Ok(None);
            }
            return Err(StoreError::NotInstalled(id.into()));
        };
        let e = index.patches.remove(pos);
        self.write_index(&index)?;
        // `e.file` was validated: a plain name inside `patches/`.
        let _ = std::fs::remove_file(self.patch_path(&e));
        Ok(Some(e))
    }

    /// For each target build, the installed patch of the highest level
    /// (the most recently installed among equals).
    pub fn current_levels(&self) -> Result<Vec<Entry>> {
        let mut best: Vec<Entry> = Vec::new();
        for e in self.list()? {
            match best
                .iter_mut()
                .find(|b| b.target.build_id == e.target.build_id)
            {
                Some(b) if e.level >= b.level => *b = e,
                Some(_) => {}
                None => best.push(e),
            }
        }
        Ok(best)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hotsplice_patch::PatchMeta;

    fn patch(id: &str, level: u32) -> (Vec<u8>, Patch) {
        let mut meta = PatchMeta::example();
        meta.id = hotsplice_patch::PatchId::unchecked(id);
        meta.level = level;
        let p = Patch {
            meta,
            image: vec![0xc3],
        };
        (p.to_bytes(), p)
    }

    const KEY: &str = "0123456789abcdef";

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths {
            config_dir: dir.path().join("etc"),
            state_dir: dir.path().join("state"),
            run_dir: dir.path().join("run"),
        };
        let s = Store::open(&paths).unwrap();
        (dir, s)
    }

    #[test]
    fn install_list_levels_uninstall() {
        let (_d, s) = store();
        let (b1, p1) = patch("aaaaaaa1", 1);
        let (b2, p2) = patch("aaaaaaa2", 2);
        s.install(&b1, &p1, KEY).unwrap();
        s.install(&b2, &p2, KEY).unwrap();
        assert_eq!(s.list().unwrap().len(), 2);
        assert_eq!(s.current_levels().unwrap()[0].id, "aaaaaaa2");
        let e = s.get("aaaaaaa1").unwrap();
        assert_eq!(s.read_patch(&e).unwrap(), b1);
        s.uninstall("aaaaaaa2").unwrap();
        assert_eq!(s.current_levels().unwrap()[0].id, "aaaaaaa1");
    }

    #[test]
    fn index_from_an_older_writer_is_read_and_a_newer_refused() {
        let (_d, s) = store();
        std::fs::create_dir_all(&s.dir).unwrap();
        // An index as the first release wrote it: no level, no key, no time.
        let old = r#"{"version":1,"patches":[{"id":"bbbbbbb1","target":{"name":"prog","build_id":"ab","kind":"relocatable"},"file":"bbbbbbb1.hsp","sha256":"0000000000000000000000000000000000000000000000000000000000000000"}]}"#;
        std::fs::write(s.index_path(), old).unwrap();
        let l = s.list().unwrap();
        assert_eq!(l[0].level, 1);
        std::fs::write(s.index_path(), r#"{"version":99}"#).unwrap();
        assert!(matches!(s.list(), Err(StoreError::TooNew { .. })));
    }

    #[test]
    fn damaged_installed_file_is_detected() {
        let (_d, s) = store();
        let (b1, p1) = patch("ccccccc1", 1);
        let e = s.install(&b1, &p1, KEY).unwrap();
        std::fs::write(s.patch_path(&e), b"junk").unwrap();
        assert!(s.read_patch(&e).is_err());
    }

    #[test]
    fn hostile_entries_are_skipped_reported_and_never_acted_on() {
        let (d, s) = store();
        let (b1, p1) = patch("ddddddd1", 1);
        s.install(&b1, &p1, KEY).unwrap();
        let outside = d.path().join("x");
        std::fs::write(&outside, b"keep me").unwrap();
        let mut index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(s.index_path()).unwrap()).unwrap();
        let good = index["patches"][0].clone();
        let mut traversal = good.clone();
        traversal["id"] = "ddddddd2".into();
        traversal["file"] = "../../x".into();
        let mut bad_id = good.clone();
        bad_id["id"] = "../../x".into();
        let arr = index["patches"].as_array_mut().unwrap();
        arr.push(traversal);
        arr.push(bad_id);
        arr.push(serde_json::json!({"id": 7}));
        std::fs::write(s.index_path(), serde_json::to_vec(&index).unwrap()).unwrap();

        let listed: Vec<String> = s.list().unwrap().into_iter().map(|e| e.id.into()).collect();
        assert_eq!(listed, vec!["ddddddd1"]);
        let rejected = s.rejected().unwrap();
        assert_eq!(rejected.len(), 3, "{rejected:?}");
        let msg = rejected[0].to_string();
        assert!(
            msg.contains("store.json") && msg.contains("entry 1") && msg.contains("../../x"),
            "{msg}"
        );
        assert_eq!(rejected[0].id.as_deref(), Some("ddddddd2"));
        assert_eq!(rejected[1].id, None);
        // Uninstalling the bad entry drops it and deletes nothing.
        assert_eq!(s.uninstall("ddddddd2").unwrap(), None);
        assert_eq!(std::fs::read(&outside).unwrap(), b"keep me");
        assert_eq!(s.rejected().unwrap().len(), 2);
        // Rewriting the index keeps the others as they were.
        s.uninstall("ddddddd1").unwrap();
        assert!(s.list().unwrap().is_empty());
        assert_eq!(s.rejected().unwrap().len(), 2);
        assert!(matches!(
            s.uninstall("ddddddd1"),
            Err(StoreError::NotInstalled(_))
        ));
    }

    #[test]
    fn a_writable_state_directory_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let (_d, s) = store();
        let (b1, p1) = patch("eeeeeee1", 1);
        s.install(&b1, &p1, KEY).unwrap();
        std::fs::set_permissions(&s.dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = s.list().unwrap_err().to_string();
        assert!(
            e.contains(&s.dir.display().to_string()) && e.contains("0777") && e.contains("chmod"),
            "{e}"
        );
    }

    #[test]
    fn created_files_are_private_whatever_the_umask() {
        use std::os::unix::fs::PermissionsExt;
        let (_d, s) = store();
        // SAFETY: umask only changes this process's file creation mask.
        let old = unsafe { libc::umask(0) };
        let (b1, p1) = patch("fffffff1", 1);
        let e = s.install(&b1, &p1, KEY);
        unsafe { libc::umask(old) };
        let e = e.unwrap();
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&s.dir), 0o700);
        assert_eq!(mode(&s.patches_dir()), 0o700);
        assert_eq!(mode(&s.index_path()), 0o600);
        assert_eq!(mode(&s.patch_path(&e)), 0o600);
    }
}
