//! What every command needs: where things are, the configuration, trusted
//! keys, the journal, and the per-process lock.

use anyhow::{Context as _, Result};
use hotsplice_engine::{self as engine, ApplyOptions, Journal, Op, Pending, Step};
use hotsplice_patch::Patch;
use hotsplice_store::{Blacklist, Config, FileLock, InFlight, Paths};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub struct Ctx {
    pub quiet: bool,
    pub verbose: u8,
    pub yes: bool,
    pub dry_run: bool,
    pub paths: Paths,
    pub config: Config,
    journal: Arc<DiskJournal>,
}

/// The engine's journal, kept in the state directory.
pub struct DiskJournal(hotsplice_store::Journal);

impl Journal for DiskJournal {
    fn record(&self, p: &Pending) -> Result<(), String> {
        self.0
            .record(&InFlight {
                op: p.op.name().into(),
                pid: p.pid,
                start_time: engine::start_time(p.pid).unwrap_or(0),
                id: p.id.clone(),
                map_start: p.map_start,
                map_len: p.map_len,
                step: p.step.name().into(),
            })
            .map_err(|e| e.to_string())
    }

    fn clear(&self, pid: i32, id: &str) {
        if let Err(e) = self.0.clear(pid, id) {
            tracing::warn!("cannot clear journal record of {id} in {pid}: {e}");
        }
    }
}

impl Ctx {
    pub fn new(quiet: bool, verbose: u8, yes: bool, dry_run: bool) -> Result<Ctx> {
        let paths = Paths::from_env();
        let config = Config::load(&paths)?;
        let journal = Arc::new(DiskJournal(hotsplice_store::Journal::open(&paths)));
        Ok(Ctx {
            quiet,
            verbose,
            yes,
            dry_run,
            paths,
            config,
            journal,
        })
    }

    pub fn options(&self, busy_timeout: Option<f64>) -> ApplyOptions {
        let secs = busy_timeout.unwrap_or(self.config.settings.busy_timeout);
        ApplyOptions {
            busy_timeout: Duration::from_secs_f64(secs.max(0.0)),
            journal: Some(self.journal.clone()),
        }
    }

    pub fn blacklist(&self) -> Result<Blacklist> {
        Ok(Blacklist::load(&self.paths)?)
    }

    /// Parse a patch file and check its signature against the trusted keys.
    pub fn verified(
        &self,
        bytes: &[u8],
        what: &str,
        allow_unsigned: bool,
    ) -> Result<(Patch, String)> {
        if allow_unsigned {
            let file =
                hotsplice_patch::PatchFile::parse(bytes).with_context(|| what.to_string())?;
            if file.signature.is_none() {
                eprintln!(
                    "hotsplice: WARNING: --allow-unsigned: using {what}, whose origin is NOT verified; \
                     never do this outside development"
                );
                return Ok((file.patch, String::new()));
            }
        }
        let keys_dir = self.paths.keys_dir();
        let trusted = hotsplice_trust::trusted_keys(&keys_dir)?;
        let (patch, key) =
            hotsplice_trust::verify_file_in(bytes, &trusted, &keys_dir.display().to_string())
                .with_context(|| what.to_string())?;
        Ok((patch, key.id()))
    }

    pub fn read_verified(
        &self,
        path: &Path,
        allow_unsigned: bool,
    ) -> Result<(Vec<u8>, Patch, String)> {
        let bytes =
            std::fs::read(path).with_context(|| format!("reading patch {}", path.display()))?;
        let (patch, key) =
            self.verified(&bytes, &format!("patch {}", path.display()), allow_unsigned)?;
        Ok((bytes, patch, key))
    }

    /// Only one hotsplice works on a process at a time.
    pub fn lock_process(&self, pid: i32) -> Result<FileLock> {
        Ok(FileLock::acquire(
            &self.paths.run_dir.join(format!("pid-{pid}.lock")),
        )?)
    }

    /// Finish or roll back what an interrupted hotsplice left in flight.
    pub fn recover(&self) -> Result<()> {
        let journal = hotsplice_store::Journal::open(&self.paths);
        let pending = match journal.pending() {
            Ok(p) => p,
            // No state directory we can read: nothing of ours is in flight.
            Err(_) => return Ok(()),
        };
        for e in pending {
            let stale = engine::start_time(e.pid).is_none_or(|t| t != e.start_time);
            let (Some(op), Some(step)) = (Op::from_name(&e.op), Step::from_name(&e.step)) else {
                let _ = journal.clear(e.pid, &e.id);
                continue;
            };
            if stale {
                let _ = journal.clear(e.pid, &e.id);
                continue;
            }
            let _lock = self.lock_process(e.pid)?;
            let p = Pending {
                op,
                pid: e.pid,
                id: e.id.clone(),
                map_start: e.map_start,
                map_len: e.map_len,
                step,
            };
            match engine::recover(&p, &self.options(None)) {
                Ok(r) => {
                    if !self.quiet {
                        eprintln!(
                            "hotsplice: recovered an interrupted {} of {} in pid {}: {:?}",
                            e.op, e.id, e.pid, r
                        );
                    }
                    let _ = journal.clear(e.pid, &e.id);
                }
                Err(err) => eprintln!(
                    "hotsplice: warning: cannot yet recover the interrupted {} of {} in pid {}: {err}; will retry",
                    e.op, e.id, e.pid
                ),
            }
        }
        Ok(())
    }
}

pub fn comm(pid: i32) -> String {
    hotsplice_process::process_name(pid).unwrap_or_else(|| "?".into())
}

pub fn exe(pid: i32) -> String {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}
