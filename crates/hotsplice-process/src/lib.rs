//! Control of a running Linux x86-64 process for live patching.
//!
//! * /proc helpers: [`read_maps`], [`thread_ids`], [`process_name`], [`tracer_pid`], [`all_pids`].
//! * Memory: [`read_memory`], [`read_memory_many`] (process_vm_readv) and [`MemWriter`]
//!   (/proc/PID/mem, writes through page protections).
//! * Threads: [`Tracee`] seizes every thread without stopping it; [`Tracee::stop_all`] opens the
//!   short [`StopWindow`] in which all threads are stopped; [`Tracee::with_thread`] borrows one
//!   thread as a [`RemoteThread`] to run syscalls or call functions inside the target;
//!   [`with_main_thread`] borrows the main thread of a process not otherwise traced.
//! * Registers are the architecture's [`Regs`], read through [`ip`] and [`sp`]; which register
//!   holds what in a remote operation is `hotsplice-arch`'s business.
//! * All raw system calls are in one module (`sys`), with nix's typed calls wherever nix has
//!   them.
//!
//! ptrace semantics relied upon (all with PTRACE_SEIZE):
//! * PTRACE_INTERRUPT sets a pending "trap stop"; *any* ptrace-stop the thread enters clears it,
//!   but an interrupt sent to an already stopped thread stays pending and fires after resuming.
//!   Threads found in a clone-event or signal-delivery-stop are therefore "settled" when resumed
//!   (interrupt while stopped, continue with the signal, collect the one resulting event-stop).
//!   PTRACE_DETACH clears pending traps, so detaching needs no settling.
//! * Job-control traps are taken before further signals are dequeued, so that settling is
//!   deterministic.
//! * A thread-group leader's exit is reported only after every other thread is reaped; the leader
//!   is waited for last (and polled) so a dying process cannot hang us.

#![warn(missing_docs)]

mod error;
mod fault;
mod mem;
mod procfs;
mod remote;
mod site;
mod sys;
mod tracee;

pub use error::{Error, Result};
pub use mem::{read_memory, read_memory_into, read_memory_many, MemWriter};
pub use procfs::{all_pids, process_name, read_maps, thread_ids, tracer_pid, Mapping};
pub use remote::RemoteThread;
pub use tracee::{
    with_main_thread, ParkStats, RunAlone, Slice, StopWindow, StoppedThread, Tracee, PARK_BATCH,
};

/// Process / thread id.
pub type Pid = i32;

/// A thread's general-purpose register set as PTRACE_GETREGS / PTRACE_SETREGS transfer it
/// (on x86-64 `libc::user_regs_struct`), defined by `hotsplice-arch`.
pub use hotsplice_arch::current::remote::Regs;

/// The instruction pointer and the stack pointer of a register set (from `hotsplice-arch`,
/// which alone names registers).
pub use hotsplice_arch::current::remote::{ip, next_is_user_code, sp, syscall_insn};
