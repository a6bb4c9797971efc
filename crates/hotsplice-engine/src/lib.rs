//! The userspace patch engine: apply a [`hotsplice_patch::Patch`] to a
//! running process, undo it, and read back what is applied.
//!
//! Everything that can be done with the target running is done first
//! (finding the target object by build-id, checking its code, resolving
//! symbols, mapping and relocating the new code). All threads are stopped
//! only to check that none is inside, or will return into, code being
//! replaced, and to write the jumps.
//!
//! ```no_run
//! use hotsplice_engine::{apply, ApplyOptions};
//! let bytes = std::fs::read("fix.hsp").unwrap();
//! let keys = hotsplice_trust::trusted_keys("/etc/hotsplice/keys".as_ref()).unwrap();
//! let patch = hotsplice_trust::verify(&bytes, &keys, "/etc/hotsplice/keys").unwrap();
//! let report = apply(1234, &patch, &ApplyOptions::default()).unwrap();
//! println!("threads stopped for {:?}", report.stopped);
//! ```

mod apply;
pub mod journal;
pub mod objects;
pub mod place;
mod register;
mod safety;
pub use safety::{Lingering, StackCheck};
pub use window::{LeadOut, WindowTimes};
mod stacks;
mod state;
mod undo;
pub mod unwind;
pub use stacks::{stacks, Frame, ProcessStacks, ThreadStack};
mod window;

pub use apply::*;
pub use journal::{InFlight, Journal, Op, Step};
pub use objects::{loaded_objects, LoadedObject};
pub use register::{register_pending, registration_pending, LateOutcome, LateRegistration};
pub use state::{
    applied, find_target, maps_target, processes_mapping, start_time, state, Corrupt, State,
    MAX_RECORDS, MAX_RECORD_BYTES,
};
pub use undo::{recover, undo, Recovery};

use hotsplice_patch::{BuildId, PatchId};
use hotsplice_process::Pid;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Process(#[from] hotsplice_process::Error),
    #[error("process {pid} does not map {target} with build-id {want}{found}; this patch is for another build")]
    WrongBuild {
        pid: Pid,
        target: String,
        want: BuildId,
        found: String,
    },
    #[error("process {pid}: the code of `{function}` at {addr:#x} does not match what the patch expects (byte {offset:#x} differs): the process runs another build, or someone else changed that code; nothing was changed")]
    CodeMismatch {
        pid: Pid,
        function: String,
        addr: u64,
        offset: usize,
    },
    #[error("process {pid}: patch {id} is already applied")]
    AlreadyApplied { pid: Pid, id: PatchId },
    #[error("process {pid}: patch {id} is not applied (applied: {applied})")]
    NotApplied {
        pid: Pid,
        id: PatchId,
        applied: String,
    },
    #[error("process {pid}: patch {id} cannot be undone while patch {over} (applied later) replaces `{function}` again; undo {over} first")]
    Stacked {
        pid: Pid,
        id: PatchId,
        over: PatchId,
        function: String,
    },
    #[error("process {pid}: `{function}` at {addr:#x} was changed by something other than hotsplice; refusing to touch it")]
    ForeignChange {
        pid: Pid,
        function: String,
        addr: u64,
    },
    #[error("process {pid}: symbol `{name}` needed by the patch is not exported by any object the process maps")]
    Unresolved { pid: Pid, name: String },
    #[error("process {pid}: `{name}` at {addr:#x} is out of reach of the patch code at {place:#x} ({detail}); the patch cannot use it directly")]
    OutOfReach {
        pid: Pid,
        name: String,
        addr: u64,
        place: u64,
        detail: String,
    },
    #[error("process {pid}: no free address range of {size} bytes within jump reach of {target}")]
    NoRoom { pid: Pid, size: u64, target: String },
    #[error("process {pid}: code busy: thread {tid} is {frame} `{function}` (still after {waited_ms} ms); the process was left running unchanged; retry later or raise --busy-timeout")]
    Busy {
        pid: Pid,
        tid: Pid,
        function: String,
        frame: &'static str,
        waited_ms: u128,
    },
    /// A thread stayed in an uninterruptible sleep (state `D`) until the busy timeout: no window
    /// was begun, so no thread was held behind it.
    #[error("process {pid}: thread {tid} is in an uninterruptible sleep (state D: waiting for a disk, a network file system, a FUSE server or a vfork child; still after {waited_ms} ms), which no interrupt ends, so stopping the process would hold every other thread until it leaves; the process was left running unchanged; retry when it has left (see `cat /proc/{pid}/task/{tid}/wchan`) or raise --busy-timeout")]
    Uninterruptible { pid: Pid, tid: Pid, waited_ms: u128 },
    #[error("process {pid}: refusing to patch {why}")]
    Refused { pid: Pid, why: String },
    /// A record in the process that hotsplice did not write as it is.
    #[error("{0}")]
    CorruptRecord(Corrupt),
    /// A patch that breaks the rules of the format (checked again before
    /// anything is done, whoever built the [`hotsplice_patch::Patch`]).
    #[error("process {pid}: {error}")]
    InvalidPatch {
        pid: Pid,
        error: hotsplice_patch::FormatError,
    },
    /// Waiting for busy code was stopped by the caller (`stop_waiting`).
    #[error("process {pid}: stopped waiting for busy code (thread {tid} is {frame} `{function}`) because hotsplice was asked to terminate; the process was left running unchanged")]
    StoppedWaiting {
        pid: Pid,
        tid: Pid,
        function: String,
        frame: &'static str,
    },
    /// A sum or size computed from the patch and the process does not fit
    /// the address space (a hostile or damaged patch, record or object).
    #[error("process {pid}: {field} = {value}: {why}; nothing was changed")]
    Overflow {
        pid: Pid,
        field: String,
        value: String,
        why: String,
    },
    /// Writing the jumps failed midway and putting back one already written
    /// failed too: that function now jumps into the patch, so the patch's
    /// code was left mapped (and recorded) rather than unmapped under it.
    #[error("process {pid}: writing the jumps failed ({cause}) and `{function}` at {addr:#x} could not be put back; it runs the patched code, which stays mapped; `hotsplice user undo` takes the patch out")]
    PartlyApplied {
        pid: Pid,
        function: String,
        addr: u64,
        cause: String,
    },
}

pub type Result<T> = std::result::Result<T, EngineError>;

/// `a + b`, or [`EngineError::Overflow`] naming `field` (whose value is `b`)
/// and what it was added to.
pub(crate) fn add(pid: Pid, a: u64, b: u64, field: impl Into<String>, to: &str) -> Result<u64> {
    a.checked_add(b).ok_or_else(|| EngineError::Overflow {
        pid,
        field: field.into(),
        value: format!("{b:#x}"),
        why: format!("{to} ({a:#x}) + it is past the end of the address space"),
    })
}
