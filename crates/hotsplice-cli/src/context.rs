//! What every command needs: where things are, the configuration, trusted
//! keys, the journal, and the per-process lock.

use crate::output::esc;
use anyhow::{bail, Context as _, Result};
use hotsplice_engine::{self as engine, ApplyOptions, Journal};
use hotsplice_store::{Blacklist, Config, Entry, FileLock, InFlight, Links, Paths, Store};
use hotsplice_trust::{Signer, Verified};
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
    fn record(&self, r: &InFlight) -> Result<(), String> {
        self.0.record(r).map_err(|e| e.to_string())
    }

    fn clear(&self, pid: i32, id: &hotsplice_patch::PatchId) {
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
            // SIGTERM & co. end a wait for busy code at once.
            stop_waiting: Some(|| crate::terminate::requested().is_some()),
        }
    }

    pub fn blacklist(&self) -> Result<Blacklist> {
        Ok(Blacklist::load(&self.paths)?)
    }

    /// Parse a patch file and check its signature against the trusted keys.
    /// The trust policy, in one place: a patch is used only if signed by a
    /// trusted key and the signature verifies, whatever any index says;
    /// `allow_unsigned` (the explicit `--allow-unsigned`) lets a patch with
    /// no signature at all through, loudly. A bad signature or an unknown
    /// key is refused even then.
    pub fn verified(&self, bytes: &[u8], what: &str, allow_unsigned: bool) -> Result<Verified> {
        let keys_dir = self.paths.keys_dir();
        let trusted = hotsplice_trust::trusted_keys(&keys_dir)?;
        let shown = keys_dir.display().to_string();
        let v = if allow_unsigned {
            hotsplice_trust::accept_unsigned(bytes, &trusted, &shown)
        } else {
            hotsplice_trust::verify(bytes, &trusted, &shown)
        }
        .with_context(|| what.to_string())?;
        if *v.signer() == Signer::UnsignedAllowed {
            errln!(
                "hotsplice: WARNING: --allow-unsigned: using {what}, whose origin is NOT verified; \
                 never do this outside development"
            );
        }
        Ok(v)
    }

    /// The bytes of a patch file named on the command line: a regular file
    /// (links followed) of at most 256 MiB; a FIFO, device or directory is
    /// refused at once.
    pub fn read_patch_file(&self, path: &Path) -> Result<Vec<u8>> {
        Ok(hotsplice_store::read_regular(
            path,
            "patch file",
            hotsplice_store::MAX_PATCH_FILE,
            Links::Follow,
        )?)
    }

    pub fn read_verified(&self, path: &Path, allow_unsigned: bool) -> Result<Verified> {
        let bytes = self.read_patch_file(path)?;
        self.verified(&bytes, &format!("patch {}", path.display()), allow_unsigned)
    }

    /// The store, with a warning for each index entry that is not valid
    /// (those are ignored: see `hotsplice_store::Rejected`).
    pub fn store(&self) -> Result<Store> {
        let store = Store::open(&self.paths)?;
        for r in store.rejected()? {
            errln!("hotsplice: warning: {}", esc(&r.to_string()));
        }
        Ok(store)
    }

    /// An installed patch, read from the store and verified now, as every
    /// time it is used: the index's record of who signed it counts for
    /// nothing (an entry without a key gets no pass), and the patch must be
    /// the one the entry describes.
    pub fn installed(&self, store: &Store, e: &Entry, allow_unsigned: bool) -> Result<Verified> {
        let bytes = store.read_patch(e)?;
        let what = format!(
            "installed patch {} ({})",
            e.id,
            store.patch_path(e).display()
        );
        let patch = self.verified(&bytes, &what, allow_unsigned)?;
        let m = &patch.meta;
        if m.id != e.id || m.target.build_id != e.target.build_id || m.level != e.level {
            bail!(
                "{what}: the file is patch {} level {} for build-id {}, but the store's index says {} level {} for {}; \
                 uninstall it and install the patch again",
                m.id,
                m.level,
                m.target.build_id,
                e.id,
                e.level,
                e.target.build_id
            );
        }
        Ok(patch)
    }

    /// Only one hotsplice works on a process at a time. The run directory
    /// holding the locks must be ours alone.
    pub fn lock_process(&self, pid: i32) -> Result<FileLock> {
        hotsplice_store::create_private_dir_all(&self.paths.run_dir)?;
        hotsplice_store::check_dir(&self.paths.run_dir, "run directory")?;
        Ok(FileLock::acquire(
            &self.paths.run_dir.join(format!("pid-{pid}.lock")),
        )?)
    }

    /// Operations an interrupted hotsplice left in flight in live processes
    /// (the next command that changes patches finishes or rolls them back).
    /// Read-only: for `show`, which must not report as applied what only
    /// half happened.
    pub fn interrupted(&self) -> Vec<hotsplice_store::InFlight> {
        let Ok(scan) = hotsplice_store::Journal::open(&self.paths).scan() else {
            return Vec::new();
        };
        scan.records.into_iter().filter(is_live).collect()
    }

    /// Finish or roll back what an interrupted hotsplice left in flight.
    pub fn recover(&self) -> Result<()> {
        let journal = hotsplice_store::Journal::open(&self.paths);
        let scan = match journal.scan() {
            Ok(s) => s,
            // A journal someone else may write is not taken orders from.
            Err(e @ hotsplice_store::StoreError::Insecure { .. }) => return Err(e.into()),
            // No state directory we can read: nothing of ours is in flight.
            Err(_) => return Ok(()),
        };
        for bad in &scan.set_aside {
            errln!("hotsplice: warning: {bad}");
        }
        for e in scan.records {
            if !is_live(&e) {
                let _ = journal.clear(e.pid, &e.id);
                continue;
            }
            let _lock = self.lock_process(e.pid)?;
            match engine::recover(&e, &self.options(None)) {
                Ok(r) => {
                    if !self.quiet {
                        errln!(
                            "hotsplice: recovered an interrupted {} of {} in pid {}: {:?}",
                            e.op,
                            e.id,
                            e.pid,
                            r
                        );
                    }
                    let _ = journal.clear(e.pid, &e.id);
                }
                Err(err) => errln!(
                    "hotsplice: warning: cannot yet recover the interrupted {} of {} in pid {}: {err}; will retry",
                    e.op,
                    e.id,
                    e.pid
                ),
            }
        }
        Ok(())
    }
}

/// Whether a journal record is about a process that still runs (same pid
/// and start time, so not a reused pid).
fn is_live(e: &hotsplice_store::InFlight) -> bool {
    engine::start_time(e.pid) == Some(e.start_time)
}

pub fn comm(pid: i32) -> String {
    hotsplice_process::process_name(pid).unwrap_or_else(|| "?".into())
}

/// Why there is nothing to patch in `pid` when it has exited: a zombie
/// (exited, not yet collected by its parent), dead, or no such process.
pub fn exited(pid: i32) -> Option<String> {
    let stat = match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Some(format!("there is no process {pid}"))
        }
        Err(_) => return None,
    };
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].trim_start().chars().next());
    match state {
        Some('Z') => Some(format!(
            "process {pid} ({}) has exited: it is a zombie its parent has not collected yet; there is nothing to patch",
            esc(&comm(pid))
        )),
        Some('X') => Some(format!("process {pid} has exited; there is nothing to patch")),
        _ => None,
    }
}

pub fn exe(pid: i32) -> String {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}
