use crate::{ModInfo, Result};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// One kernel patch hotsplice applied, in the order applied.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AppliedPatch {
    pub id: String,
    pub module: String,
    #[serde(default)]
    pub description: String,
    pub build_id: String,
    pub release: String,
    #[serde(default)]
    pub effective: String,
    /// The file kept for re-application at boot: `ID.hsp`, the signed
    /// patch file, verified again at each boot (records of earlier versions
    /// name the bare module, `ID.ko`, which is not re-applied: it cannot be
    /// verified).
    pub file: String,
}

const RECORD_VERSION: u32 = 1;

#[derive(Debug, Serialize, Deserialize)]
struct Recorded {
    version: u32,
    applied: Vec<AppliedPatch>,
}

/// `STATE_DIR/kernel/applied.json` and the module files it names.
#[derive(Debug, Clone)]
pub struct KernelState {
    dir: PathBuf,
}

impl KernelState {
    pub fn new(dir: PathBuf) -> KernelState {
        KernelState { dir }
    }

    fn index(&self) -> PathBuf {
        self.dir.join("applied.json")
    }

    /// The recorded patches. A record that cannot be read is an error, not
    /// an empty list: the next change would otherwise drop every patch the
    /// boot hook must re-apply.
    pub fn load(&self) -> Result<Vec<AppliedPatch>> {
        use hotsplice_store::StoreError;
        let path = self.index();
        let bytes = match hotsplice_store::read_regular(
            &path,
            "kernel patch record",
            hotsplice_store::MAX_INDEX_FILE,
            hotsplice_store::Links::Refuse,
        ) {
            Ok(b) => b,
            Err(StoreError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Vec::new())
            }
            Err(e) => return Err(e.into()),
        };
        let invalid = |detail: String| {
            StoreError::Invalid {
            path: path.display().to_string(),
            detail: format!(
                "{detail}; `hotsplice kernel list-targets` lists the patch modules the kernel runs: move the file aside and apply their patches again"
            ),
        }
        };
        let r: Recorded = serde_json::from_slice(&bytes)
            .map_err(|e| invalid(format!("not a kernel patch record ({e})")))?;
        if r.version != RECORD_VERSION {
            return Err(invalid(format!(
                "record version {} (this hotsplice writes version {RECORD_VERSION})",
                r.version
            ))
            .into());
        }
        Ok(r.applied)
    }

    fn save(&self, applied: Vec<AppliedPatch>) -> Result<()> {
        let r = Recorded {
            version: RECORD_VERSION,
            applied,
        };
        hotsplice_store::write_atomic(&self.index(), &serde_json::to_vec_pretty(&r).unwrap())?;
        Ok(())
    }

    /// Record `info`, keeping `patch_file` (the signed patch it came from).
    pub fn add(&self, info: &ModInfo, patch_file: &[u8]) -> Result<()> {
        let file = format!("{}.hsp", info.id);
        hotsplice_store::write_atomic(&self.dir.join("modules").join(&file), patch_file)?;
        let mut all = self.load()?;
        all.retain(|p| p.id != info.id);
        all.push(AppliedPatch {
            id: info.id.clone(),
            module: info.module.clone(),
            description: info.description.clone(),
            build_id: info.build_id.clone(),
            release: info.release.clone(),
            effective: info.effective.clone(),
            file,
        });
        self.save(all)
    }

    pub fn remove(&self, id: &str) -> Result<()> {
        let mut all = self.load()?;
        let gone: Vec<AppliedPatch> = all.iter().filter(|p| p.id == id).cloned().collect();
        all.retain(|p| p.id != id);
        self.save(all)?;
        for p in gone {
            let _ = std::fs::remove_file(self.dir.join("modules").join(&p.file));
        }
        Ok(())
    }

    /// The signed patch file kept for `p`, to be verified before use.
    pub fn patch_file(&self, p: &AppliedPatch) -> Result<(String, Vec<u8>)> {
        // Its own signed file, a plain name inside modules/, nothing else.
        let plain = !p.file.contains('/') && p.file == format!("{}.hsp", p.id);
        let path = self.dir.join("modules").join(&p.file);
        let shown = path.display().to_string();
        if !plain {
            return Err(crate::KernelError::Unverifiable {
                id: p.id.clone(),
                why: format!(
                    "its record names {:?}, not the signed patch file {}.hsp (recorded by an earlier hotsplice, or edited); apply the patch again with `hotsplice kernel apply`",
                    p.file, p.id
                ),
            });
        }
        let bytes = hotsplice_store::read_regular(
            &path,
            "recorded kernel patch file",
            hotsplice_store::MAX_PATCH_FILE,
            hotsplice_store::Links::Refuse,
        )
        .map_err(|e| crate::KernelError::Unverifiable {
            id: p.id.clone(),
            why: e.to_string(),
        })?;
        Ok((shown, bytes))
    }
}
