//! Typed errors of the process-control layer.

use crate::Pid;

/// Everything that can go wrong while inspecting or controlling a target process.
///
/// Messages name the pid/tid/address involved and, where possible, what the user can do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The pid does not name a running process.
    #[error(
        "no process with pid {pid} exists (check the pid; the process may already have exited)"
    )]
    NoSuchProcess {
        /// The pid that was asked for.
        pid: Pid,
    },
    /// The process died while we were working on it (nothing is left traced).
    #[error("process {pid} exited while hotsplice was operating on it; nothing was patched or left stopped")]
    ProcessExited {
        /// The process that exited.
        pid: Pid,
    },
    /// The kernel refused ptrace / memory access.
    #[error(
        "permission denied to control process {pid} (owned by uid {}); run as root or with CAP_SYS_PTRACE \
         (and check /proc/sys/kernel/yama/ptrace_scope)",
        show_uid(.uid_of_target)
    )]
    PermissionDenied {
        /// The target process.
        pid: Pid,
        /// Real uid of the target, if it could be read.
        uid_of_target: Option<u32>,
    },
    /// Another tracer (debugger, strace, ...) is attached.
    #[error(
        "process {pid} is already traced by pid {tracer_pid} ({}); detach the debugger (pid {tracer_pid}, {}) and retry",
        show_name(.tracer_name), show_name(.tracer_name)
    )]
    AlreadyTraced {
        /// The target process.
        pid: Pid,
        /// Thread id of the tracer (TracerPid in /proc/PID/status).
        tracer_pid: Pid,
        /// `comm` of the tracer, if readable.
        tracer_name: Option<String>,
    },
    /// An I/O error on /proc or another file.
    #[error("{what}: {source}")]
    Io {
        /// What we were doing, e.g. "reading /proc/42/maps".
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A ptrace (or waitpid) request failed unexpectedly.
    #[error("ptrace {op} on thread {tid} failed: {errno} ({})", .errno.desc())]
    Ptrace {
        /// The request, e.g. "PTRACE_GETREGS".
        op: &'static str,
        /// The thread the request was made on.
        tid: Pid,
        /// The errno returned.
        errno: nix::errno::Errno,
    },
    /// A system call executed inside the target returned an error.
    #[error("{} executed inside the target failed: {}", hotsplice_arch::current::syscalls::describe(*.nr), errno_name(*.errno))]
    RemoteSyscallFailed {
        /// Syscall number.
        nr: i64,
        /// Positive errno value.
        errno: i32,
    },
    /// Reading or writing target memory failed or was short.
    #[error("cannot access {len} bytes at {addr:#x} in process {pid}: {detail}")]
    Memory {
        /// Target process.
        pid: Pid,
        /// Start address.
        addr: u64,
        /// Requested length.
        len: usize,
        /// What happened (errno text or "short read of N bytes").
        detail: String,
    },
    /// The tracee was already detached (e.g. after [`crate::StopWindow::detach_all`]).
    #[error("process {pid} is no longer traced by this Tracee (it was detached); seize it again")]
    Detached {
        /// Target process.
        pid: Pid,
    },
    /// A thread is in an uninterruptible sleep (`/proc`'s state `D`), which no interrupt ends:
    /// a stop window would hold every other thread until it left. Nothing was stopped; retry
    /// once it has left.
    #[error(
        "thread {tid} of process {pid} is in an uninterruptible sleep (state D: waiting for a disk, \
         a network file system, a FUSE server or a vfork child), which no interrupt ends; no thread \
         was stopped"
    )]
    Uninterruptible {
        /// The target process.
        pid: Pid,
        /// The thread found in state `D`.
        tid: Pid,
    },
    /// The target did something we did not expect.
    #[error("unexpected state of thread {tid}: {detail}")]
    Unexpected {
        /// Thread concerned.
        tid: Pid,
        /// Description.
        detail: String,
    },
}

fn show_uid(uid: &Option<u32>) -> String {
    uid.map_or_else(|| "unknown".to_string(), |u| u.to_string())
}

fn show_name(name: &Option<String>) -> String {
    name.clone().unwrap_or_else(|| "unknown name".to_string())
}

fn errno_name(e: i32) -> String {
    let en = nix::errno::Errno::from_raw(e);
    format!("{en} ({})", en.desc())
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, Error>;
