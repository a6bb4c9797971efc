//! Hooks that make every change to a process recoverable: the caller's
//! journal is told each step before it is taken, and (in builds with the
//! `fault-injection` feature, for tests only) named points can kill
//! hotsplice on the spot.

use hotsplice_patch::PatchId;
pub use hotsplice_patch::{InFlight, Op, Step};
use hotsplice_process::Pid;

/// Where the caller keeps [`InFlight`] records. `record` must be durable
/// before it returns.
pub trait Journal: Send + Sync {
    fn record(&self, r: &InFlight) -> Result<(), String>;
    fn clear(&self, pid: Pid, id: &PatchId);
}

/// The record of `op` on patch `id` in `pid`, at `step`, with the
/// process's start time (so that a reused pid is not taken for it).
pub(crate) fn in_flight(
    op: Op,
    pid: Pid,
    id: &PatchId,
    (map_start, map_len): (u64, u64),
    step: Step,
) -> InFlight {
    InFlight {
        op,
        pid,
        start_time: crate::state::start_time(pid).unwrap_or(0),
        id: id.clone(),
        map_start,
        map_len,
        step,
    }
}

pub(crate) fn record(j: Option<&dyn Journal>, p: &InFlight) -> crate::Result<()> {
    if let Some(j) = j {
        j.record(p).map_err(|e| crate::EngineError::Refused {
            pid: p.pid,
            why: format!("cannot write the journal ({e}); nothing was changed"),
        })?;
    }
    Ok(())
}

/// A named fault-injection point: with the `fault-injection` feature and
/// `HOTSPLICE_FAULT=point[#n]` in the environment, hotsplice kills itself
/// with SIGKILL the n-th time (default first) it reaches `point`.
#[cfg(feature = "fault-injection")]
pub fn fault(point: &str) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static HITS: AtomicUsize = AtomicUsize::new(0);
    let Ok(spec) = std::env::var("HOTSPLICE_FAULT") else {
        return;
    };
    let (name, nth) = match spec.split_once('#') {
        Some((n, k)) => (n.to_string(), k.parse().unwrap_or(1)),
        None => (spec.clone(), 1),
    };
    if name == point && HITS.fetch_add(1, Ordering::SeqCst) + 1 == nth {
        // SAFETY: plain syscall; this is the point of the function.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
}

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn fault(_point: &str) {}
