//! Hooks that make every change to a process recoverable: the caller's
//! journal is told each step before it is taken, and (in builds with the
//! `fault-injection` feature, for tests only) named points can kill
//! hotsplice on the spot.

use hotsplice_process::Pid;

/// Which change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Apply,
    Undo,
}

impl Op {
    pub fn name(self) -> &'static str {
        match self {
            Op::Apply => "apply",
            Op::Undo => "undo",
        }
    }
    pub fn from_name(s: &str) -> Option<Op> {
        match s {
            "apply" => Some(Op::Apply),
            "undo" => Some(Op::Undo),
            _ => None,
        }
    }
}

/// The step about to be taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// About to map the patch at the recorded address.
    Mapping,
    /// About to stop the threads and write (or restore) jumps.
    Window,
    /// Jumps are restored; about to unmap the patch.
    Unmapping,
}

impl Step {
    pub fn name(self) -> &'static str {
        match self {
            Step::Mapping => "mapping",
            Step::Window => "window",
            Step::Unmapping => "unmapping",
        }
    }
    pub fn from_name(s: &str) -> Option<Step> {
        match s {
            "mapping" => Some(Step::Mapping),
            "window" => Some(Step::Window),
            "unmapping" => Some(Step::Unmapping),
            _ => None,
        }
    }
}

/// A record of one change in flight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub op: Op,
    pub pid: Pid,
    pub id: String,
    pub map_start: u64,
    pub map_len: u64,
    pub step: Step,
}

/// Where the caller keeps [`Pending`] records. `record` must be durable
/// before it returns.
pub trait Journal: Send + Sync {
    fn record(&self, p: &Pending) -> Result<(), String>;
    fn clear(&self, pid: Pid, id: &str);
}

pub(crate) fn record(j: Option<&dyn Journal>, p: &Pending) -> crate::Result<()> {
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
