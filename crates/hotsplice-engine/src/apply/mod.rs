//! Apply a patch to a process (optionally replacing a lower level), by
//! job: [`inspect`] reads the process and refuses what cannot be applied,
//! [`map`] makes room for the patch, [`plan`] computes (without I/O) what
//! goes where, [`install`] writes the code and its record, and the commit
//! (the stop window) writes the jumps.

mod inspect;
mod install;
mod map;
mod plan;

use crate::journal::{fault, in_flight, record, Journal, Op, Step};
pub use crate::register::Registration;
use crate::safety::{Lingering, StackCheck};
use crate::state::refuse_special;
use crate::undo::unmap_retired;
use crate::window::{stop_and_write, LeadOut, Outcome, Unreachable, WindowTimes};
use crate::{EngineError, Result};
use hotsplice_patch::{ObjectKind, Patch, PatchId};
use hotsplice_process::{Pid, Tracee};
use hotsplice_trust::Verified;
use inspect::Found;
use plan::{Layout, Plan};
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;

/// How apply and undo behave.
#[derive(Clone)]
pub struct ApplyOptions {
    /// How long to keep retrying while code is busy.
    pub busy_timeout: Duration,
    /// Where each step is recorded before it is taken.
    pub journal: Option<Arc<dyn Journal>>,
    /// Asked while waiting for busy code: `true` stops the wait at once
    /// (the process is left unchanged), e.g. on a termination request.
    pub stop_waiting: Option<fn() -> bool>,
    /// How the busy check reads stacks.
    pub stack_walk: StackWalk,
    /// Apply even while threads are inside a replaced function: those
    /// finish their call in the old code, every new call takes the new
    /// (kernel livepatch's per-task precedent). A thread within the bytes
    /// the jump overwrites still makes the code busy; undo stays strict.
    pub let_running_finish: bool,
    /// When libgcc_s is mapped but no thread is fit to make its
    /// registration call: apply anyway, the unwind information registered
    /// by the next command that finds a fit thread
    /// ([`Registration::Deferred`]), instead of refusing.
    pub unwind_later: bool,
}

/// How the busy check finds the frames of a stopped thread.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum StackWalk {
    /// Walk each stack with the unwind tables (`.eh_frame`) of the objects
    /// it runs, through signal frames; a thread whose walk cannot finish
    /// is scanned conservatively instead.
    #[default]
    Exact,
    /// Scan every word of every stack conservatively (a stale value costs
    /// a retry, never a crash): the behaviour before exact walks.
    Scan,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        ApplyOptions {
            busy_timeout: Duration::from_secs(5),
            journal: None,
            stop_waiting: None,
            stack_walk: StackWalk::Exact,
            let_running_finish: false,
            unwind_later: false,
        }
    }
}

impl std::fmt::Debug for ApplyOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApplyOptions")
            .field("busy_timeout", &self.busy_timeout)
            .field("journal", &self.journal.is_some())
            .finish()
    }
}

/// What one apply or undo did.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub pid: Pid,
    pub id: PatchId,
    pub target: String,
    /// Threads in the process during the final stop.
    pub threads: usize,
    /// Stop windows needed (more than one when code was busy).
    pub attempts: u32,
    /// The successful window, from its first interrupt to the last
    /// stopped thread let go: no thread ran user code in replaced code
    /// meanwhile. Sleeping threads parked in their system calls are
    /// stopped only for their batch (`times.batch_us`); `times.held_us` is
    /// the longest any one thread was kept from running
    /// (docs/busy-check.md).
    #[serde(serialize_with = "micros")]
    pub stopped: Duration,
    /// Of that, how long the threads that were running (on a CPU or
    /// runnable) when the window began stayed stopped: they are stopped
    /// after every other thread and let go before them. `None` when every
    /// thread was asleep. A sleeping thread kept stopped (not parked) that
    /// wakes during the window is held until it is let go, up to
    /// `stopped`.
    #[serde(serialize_with = "micros_opt", skip_serializing_if = "Option::is_none")]
    pub stopped_running: Option<Duration>,
    pub functions: usize,
    /// The lower-level patch this one replaced, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replaced: Option<PatchId>,
    /// The change was made, but something after it was not: the mapping of
    /// the patch taken out (undo, or the level replaced) could not be
    /// unmapped. Its record is retired (no longer listed as applied) and
    /// its journal record kept, so the next command unmaps it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
    /// How the stacks were checked in the window that made the change.
    pub stacks: StackCheck,
    /// Threads led out of busy code (run alone, the others stopped) before
    /// the change; that time is part of `stopped` for the other threads.
    pub lead_out: LeadOut,
    /// Where the time of the window that made the change went.
    pub times: WindowTimes,
    /// Threads that were inside replaced functions and finish that call in
    /// the old code (`let_running_finish`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub still_in_old: Vec<Lingering>,
    /// Apply: what became of the patch's unwind information in the
    /// program's own unwinder.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unwind: Option<Registration>,
    /// Apply: the thread borrowed for libgcc's registration call, and how
    /// long that one thread was stopped for it (µs; before the stop
    /// window, the other threads running on).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unwind_call: Option<UnwindCall>,
}

/// The thread that made libgcc's registration call.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct UnwindCall {
    pub tid: Pid,
    #[serde(serialize_with = "micros")]
    pub stopped: Duration,
}

fn micros<S: serde::Serializer>(d: &Duration, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_u128(d.as_micros())
}

fn micros_opt<S: serde::Serializer>(
    d: &Option<Duration>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_u128(d.as_micros()),
        None => s.serialize_none(),
    }
}

/// Apply `patch` to process `pid`. Only a patch that passed the trust
/// policy ([`hotsplice_trust::Verified`]) gets in.
pub fn apply(pid: Pid, patch: &Verified<Patch>, opts: &ApplyOptions) -> Result<Report> {
    apply_replacing(pid, patch, None, opts)
}

/// Apply `patch`, and in the same stop window take out the applied patch
/// `replace` (a lower level for the same target): every function ends up
/// either as before or as the new patch has it, never a mix of levels.
pub fn apply_replacing(
    pid: Pid,
    patch: &Verified<Patch>,
    replace: Option<&PatchId>,
    opts: &ApplyOptions,
) -> Result<Report> {
    let patch: &Patch = patch.get();
    refuse_special(pid)?;
    // Whoever built the patch: what parsing checks holds here too.
    patch
        .validate()
        .map_err(|error| EngineError::InvalidPatch { pid, error })?;
    let meta = &patch.meta;
    if meta.target.kind == ObjectKind::Kernel {
        return Err(EngineError::Refused {
            pid,
            why: format!(
                "with kernel patch {}: use `hotsplice kernel apply`",
                meta.id
            ),
        });
    }
    let found = inspect::inspect(pid, patch, replace)?;
    let layout = Layout::of(pid, meta)?;
    let journal = opts.journal.as_deref();

    let mut tracee = Tracee::seize(pid)?;
    let (mapped, unreachable) = map::map(
        pid,
        &mut tracee,
        meta,
        &found.target,
        &found.maps,
        &layout,
        &found.ifuncs,
        journal,
    )?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut unwind = None;
    let mut registration = crate::register::Registered {
        what: Registration::None,
        call: None,
        deferred: None,
    };
    let outcome = match plan::plan(
        pid,
        patch,
        &found,
        &layout,
        &mapped,
        now,
        opts.let_running_finish,
    )
    .and_then(|plan| Ok((install::install(pid, &plan)?, plan)))
    {
        Ok((mem, plan)) => {
            unwind = plan.unwind;
            // Before any jump leads into the code: the program's unwinder
            // must know its frames from the first call on.
            let reg = crate::register::register(
                pid,
                &mut tracee,
                &found.objects,
                &found.maps,
                plan.unwind.as_ref(),
                opts.unwind_later,
            );
            fault("apply:registered");
            match reg {
                Ok(r) => {
                    registration = r;
                    commit(pid, &mut tracee, &mem, &found, &plan, opts, unreachable)
                }
                Err(e) => Outcome::Unchanged(e, unreachable),
            }
        }
        Err(e) => Outcome::Unchanged(e, unreachable),
    };
    let old = found.old.as_ref();
    match outcome {
        Outcome::Committed(w) => {
            fault("apply:done");
            drop(tracee);
            if let Some(j) = journal {
                j.clear(pid, &meta.id);
            }
            // The old level is out and its record retired: unmapping it
            // is what is left (see `Report::warning`).
            let warning = old.and_then(|o| unmap_retired(pid, o, journal));
            let warning = match (&registration.deferred, warning) {
                (Some(why), w) => Some(
                    [
                        w,
                        Some(format!(
                            "the patch's unwind information is not registered yet ({why}): until a later `hotsplice user` command or daemon pass registers it, a C++ exception, backtrace() or pthread_cancel through a patched function does not see its frames"
                        )),
                    ]
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>()
                    .join("; "),
                ),
                (None, w) => w,
            };
            Ok(Report {
                pid,
                id: meta.id.clone(),
                target: found.target.path.clone(),
                threads: w.threads,
                attempts: w.attempts,
                stopped: w.stopped,
                stopped_running: w.stopped_running,
                functions: meta.functions.len(),
                replaced: old.map(|o| o.patch_id.clone()),
                warning,
                stacks: w.stacks,
                lead_out: w.lead_out,
                times: w.times,
                still_in_old: w.lingering,
                unwind: Some(registration.what),
                unwind_call: registration
                    .call
                    .map(|(tid, stopped)| UnwindCall { tid, stopped }),
            })
        }
        // A jump into the new code is in and could not be taken out: the
        // code stays mapped, and the journal record stays for the next
        // command's recovery to finish the rollback.
        Outcome::PartlyApplied(e) => {
            let _ = tracee.detach();
            Err(e)
        }
        Outcome::Unchanged(e, unreachable) => {
            let gone = map::unmap(&mut tracee, &mapped, &layout, unwind.as_ref(), unreachable);
            let _ = tracee.detach();
            if let Some(j) = journal {
                if gone {
                    j.clear(pid, &meta.id);
                } else {
                    // Retired and still registered (a call into libgcc
                    // did not finish): the next command's recovery
                    // deregisters and unmaps it, as after an undo.
                    let span = (mapped.place, layout.total);
                    let p = in_flight(Op::Undo, pid, &meta.id, span, Step::Unmapping);
                    if let Err(e) = j.record(&p) {
                        tracing::warn!(pid, "cannot record the mapping left behind: {e}");
                    }
                }
                // The level it was to replace stays as it is: no recovery
                // may finish taking it out.
                if let Some(o) = old {
                    j.clear(pid, &o.patch_id);
                }
            }
            Err(e)
        }
    }
}

/// The stop window of an apply: write the plan's jumps (and take out the
/// old level, whose undo is journaled first). `unreachable` comes back
/// only if the process is left unchanged.
fn commit(
    pid: Pid,
    tracee: &mut Tracee,
    mem: &hotsplice_process::MemWriter,
    found: &Found,
    plan: &Plan,
    opts: &ApplyOptions,
    unreachable: Unreachable,
) -> Outcome<Unreachable> {
    if let Some(old) = &found.old {
        // The old level is taken out by this same window.
        let span = (old.map_start, old.map_len);
        let pending = in_flight(Op::Undo, pid, &old.patch_id, span, Step::Window);
        if let Err(e) = record(opts.journal.as_deref(), &pending) {
            return Outcome::Unchanged(e, unreachable);
        }
    }
    stop_and_write(
        pid,
        tracee,
        mem,
        &found.maps,
        Some(&found.objects),
        &plan.ranges,
        opts,
        &plan.writes,
        "apply:jump",
        unreachable,
    )
}
