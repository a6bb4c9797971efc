//! The agent: where things are, the configuration, the trust policy, the
//! journal, the per-process lock and recovery — what every operation on
//! this machine needs.

use crate::error::{About as _, AgentError, Result};
use crate::event::{Event, Sink};
use hotsplice_engine::{self as engine, ApplyOptions, Journal};
use hotsplice_store::{Blacklist, Config, Entry, FileLock, InFlight, Links, Paths, Store};
use hotsplice_trust::{Signer, Verified};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// How the caller wants the agent to behave.
#[derive(Clone)]
pub struct AgentOptions {
    /// Where events go.
    pub events: Sink,
    /// Asked between operations and while waiting for busy code: `true`
    /// (e.g. after SIGTERM) finishes the operation in flight and starts no
    /// new one.
    pub stop_requested: fn() -> bool,
}

impl Default for AgentOptions {
    fn default() -> Self {
        AgentOptions {
            events: Arc::new(|_| {}),
            stop_requested: || false,
        }
    }
}

/// hotsplice on this machine.
pub struct Agent {
    pub paths: Paths,
    pub config: Config,
    journal: Arc<DiskJournal>,
    pub(crate) events: Sink,
    stop_requested: fn() -> bool,
}

/// The engine's journal, kept in the state directory.
struct DiskJournal(hotsplice_store::Journal);

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

impl Agent {
    /// The agent for the locations of `Paths::from_env()` (the machine's,
    /// or a test's private ones).
    pub fn new(opts: AgentOptions) -> Result<Agent> {
        Agent::with_paths(Paths::from_env(), opts)
    }

    pub fn with_paths(paths: Paths, opts: AgentOptions) -> Result<Agent> {
        let config = Config::load(&paths)?;
        let journal = Arc::new(DiskJournal(hotsplice_store::Journal::open(&paths)));
        Ok(Agent {
            paths,
            config,
            journal,
            events: opts.events,
            stop_requested: opts.stop_requested,
        })
    }

    pub(crate) fn emit(&self, e: Event) {
        (self.events)(e)
    }

    pub(crate) fn warn(&self, message: String) {
        self.emit(Event::Warning { message })
    }

    /// Whether the caller asked to stop (no new operation starts).
    pub fn stop_requested(&self) -> bool {
        (self.stop_requested)()
    }

    pub(crate) fn stop_requested_fn(&self) -> fn() -> bool {
        self.stop_requested
    }

    /// Apply/undo options: the configured busy timeout unless given, the
    /// journal, and the caller's stop request ending a wait at once.
    pub fn options(&self, busy_timeout: Option<f64>) -> ApplyOptions {
        let secs = busy_timeout.unwrap_or(self.config.settings.busy_timeout);
        ApplyOptions {
            busy_timeout: Duration::from_secs_f64(secs.max(0.0)),
            journal: Some(self.journal.clone()),
            stop_waiting: Some(self.stop_requested),
            // `HOTSPLICE_STACK_WALK=scan`: the conservative scan alone (to
            // compare, or to work around a bad unwind table).
            stack_walk: match std::env::var("HOTSPLICE_STACK_WALK").as_deref() {
                Ok("scan") => hotsplice_engine::StackWalk::Scan,
                _ => hotsplice_engine::StackWalk::Exact,
            },
            let_running_finish: false,
            unwind_later: false,
        }
    }

    pub fn blacklist(&self) -> Result<Blacklist> {
        Ok(Blacklist::load(&self.paths)?)
    }

    /// Parse a patch file and check its signature against the trusted keys.
    /// The trust policy, in one place: a patch is used only if signed by a
    /// trusted key and the signature verifies, whatever any index says;
    /// `allow_unsigned` (the explicit `--allow-unsigned`) lets a patch with
    /// no signature at all through, with an [`Event::UnsignedAllowed`]. A
    /// bad signature or an unknown key is refused even then.
    pub fn verified(&self, bytes: &[u8], what: &str, allow_unsigned: bool) -> Result<Verified> {
        let keys_dir = self.paths.keys_dir();
        let trusted = hotsplice_trust::trusted_keys(&keys_dir)?;
        let shown = keys_dir.display().to_string();
        let v = if allow_unsigned {
            hotsplice_trust::accept_unsigned(bytes, &trusted, &shown)
        } else {
            hotsplice_trust::verify(bytes, &trusted, &shown)
        }
        .about(|| what.to_string())?;
        if *v.signer() == Signer::UnsignedAllowed {
            self.emit(Event::UnsignedAllowed { what: what.into() });
        }
        Ok(v)
    }

    /// The bytes of a patch file named by the caller: a regular file
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

    /// A patch file, read and verified.
    pub fn read_verified(&self, path: &Path, allow_unsigned: bool) -> Result<Verified> {
        let bytes = self.read_patch_file(path)?;
        self.verified(&bytes, &format!("patch {}", path.display()), allow_unsigned)
    }

    /// The store; each index entry that is not valid is ignored, with a
    /// warning (see `hotsplice_store::Rejected`).
    pub fn store(&self) -> Result<Store> {
        let store = Store::open(&self.paths)?;
        for r in store.rejected()? {
            self.warn(r.to_string());
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
            return Err(AgentError::Request(format!(
                "{what}: the file is patch {} level {} for build-id {}, but the store's index says {} level {} for {}; \
                 uninstall it and install the patch again",
                m.id, m.level, m.target.build_id, e.id, e.level, e.target.build_id
            )));
        }
        Ok(patch)
    }

    /// Only one hotsplice works on a process at a time. The run directory
    /// holding the locks must be ours alone. Waits for another hotsplice
    /// working on the same process.
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
    pub fn interrupted(&self) -> Vec<InFlight> {
        let Ok(scan) = hotsplice_store::Journal::open(&self.paths).scan() else {
            return Vec::new();
        };
        scan.records.into_iter().filter(is_live).collect()
    }

    /// Finish or roll back what an interrupted hotsplice left in flight
    /// (each told as an [`Event`]).
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
            self.warn(bad.to_string());
        }
        for e in scan.records {
            if !is_live(&e) {
                let _ = journal.clear(e.pid, &e.id);
                continue;
            }
            let _lock = self.lock_process(e.pid)?;
            match engine::recover(&e, &self.options(None)) {
                Ok(r) => {
                    self.emit(Event::Recovered {
                        op: e.op,
                        id: e.id.clone(),
                        pid: e.pid,
                        result: format!("{r:?}"),
                    });
                    let _ = journal.clear(e.pid, &e.id);
                }
                Err(err) => self.emit(Event::RecoveryPending {
                    op: e.op,
                    id: e.id.clone(),
                    pid: e.pid,
                    why: crate::error::chain(&err),
                }),
            }
        }
        Ok(())
    }
}

/// Whether a journal record is about a process that still runs (same pid
/// and start time, so not a reused pid).
fn is_live(e: &InFlight) -> bool {
    engine::start_time(e.pid) == Some(e.start_time)
}

/// The process's command name, or `?`.
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
            printable(&comm(pid))
        )),
        Some('X') => Some(format!("process {pid} has exited; there is nothing to patch")),
        _ => None,
    }
}

/// The process's executable, or the empty string.
pub fn exe(pid: i32) -> String {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

/// `s` with control characters escaped (`\n` as `\u{a}`), for names a
/// process chose that go into messages.
pub fn printable(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_unicode().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}
