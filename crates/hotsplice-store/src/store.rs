use crate::{io_err, write_atomic, FileLock, Paths, Result, StoreError};
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
    pub id: String,
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

#[derive(Debug, Serialize, Deserialize)]
struct Index {
    version: u32,
    #[serde(default)]
    patches: Vec<Entry>,
}

/// The installed patches (`STATE_DIR/store.json` and `STATE_DIR/patches/`).
pub struct Store {
    dir: PathBuf,
}

impl Store {
    pub fn open(paths: &Paths) -> Result<Store> {
        Ok(Store {
            dir: paths.state_dir.clone(),
        })
    }

    fn index_path(&self) -> PathBuf {
        self.dir.join("store.json")
    }

    pub fn patch_path(&self, e: &Entry) -> PathBuf {
        self.dir.join("patches").join(&e.file)
    }

    fn lock(&self) -> Result<FileLock> {
        FileLock::acquire(&self.dir.join(".store.lock"))
    }

    fn read_index(&self) -> Result<Index> {
        let path = self.index_path();
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Index {
                    version: STORE_VERSION,
                    patches: vec![],
                })
            }
            Err(e) => return Err(io_err(&path)(e)),
        };
        let raw: serde_json::Value =
            serde_json::from_slice(&text).map_err(|e| StoreError::Invalid {
                path: path.display().to_string(),
                detail: e.to_string(),
            })?;
        let version = raw.get("version").and_then(|v| v.as_u64()).unwrap_or(0) as u32;
        if version > STORE_VERSION {
            return Err(StoreError::TooNew {
                path: path.display().to_string(),
                found: version,
                supported: STORE_VERSION,
            });
        }
        let mut index: Index = serde_json::from_value(raw).map_err(|e| StoreError::Invalid {
            path: path.display().to_string(),
            detail: e.to_string(),
        })?;
        index.version = STORE_VERSION;
        Ok(index)
    }

    fn write_index(&self, index: &Index) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(index).expect("index serializes");
        write_atomic(&self.index_path(), &bytes)
    }

    /// Every installed patch, in installation order.
    pub fn list(&self) -> Result<Vec<Entry>> {
        Ok(self.read_index()?.patches)
    }

    pub fn get(&self, id: &str) -> Result<Entry> {
        self.list()?
            .into_iter()
            .find(|e| e.id == id)
            .ok_or_else(|| StoreError::NotInstalled(id.into()))
    }

    /// Read an installed patch's file, checking it is what was installed.
    pub fn read_patch(&self, e: &Entry) -> Result<Vec<u8>> {
        let path = self.patch_path(e);
        let bytes = std::fs::read(&path).map_err(io_err(&path))?;
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
        let file = format!("{}.hsp", patch.meta.id);
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
        // The file first, then the index that names it: a crash in between
        // leaves an unreferenced file, never a reference to a missing one.
        write_atomic(&self.dir.join("patches").join(&file), bytes)?;
        let mut index = self.read_index()?;
        index.patches.retain(|e| e.id != entry.id);
        index.patches.push(entry.clone());
        self.write_index(&index)?;
        Ok(entry)
    }

    /// Drop a patch from the store (it stays applied where it is applied).
    pub fn uninstall(&self, id: &str) -> Result<Entry> {
        let _lock = self.lock()?;
        let mut index = self.read_index()?;
        let pos = index
            .patches
            .iter()
            .position(|e| e.id == id)
            .ok_or_else(|| StoreError::NotInstalled(id.into()))?;
        let e = index.patches.remove(pos);
        self.write_index(&index)?;
        let _ = std::fs::remove_file(self.patch_path(&e));
        Ok(e)
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
        meta.id = id.into();
        meta.level = level;
        let p = Patch {
            meta,
            image: vec![0xc3],
        };
        (p.to_bytes(), p)
    }

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
        s.install(&b1, &p1, "k").unwrap();
        s.install(&b2, &p2, "k").unwrap();
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
        let old = r#"{"version":1,"patches":[{"id":"bbbbbbb1","target":{"name":"prog","build_id":"ab","kind":"relocatable"},"file":"bbbbbbb1.hsp","sha256":"00"}]}"#;
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
        let e = s.install(&b1, &p1, "k").unwrap();
        std::fs::write(s.patch_path(&e), b"junk").unwrap();
        assert!(s.read_patch(&e).is_err());
    }
}
