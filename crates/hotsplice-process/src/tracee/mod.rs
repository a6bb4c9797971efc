//! [`Tracee`]: every thread of a process seized, stopped together in a [`StopWindow`], or one
//! thread borrowed for remote operations.
//!
//! * `seize` — attaching: `PTRACE_SEIZE` of every thread, thread discovery.
//! * `window` — [`Tracee::stop_all`] and the [`StopWindow`].
//! * `borrow` — [`Tracee::with_thread`] and [`with_main_thread`]: one thread lent out as a
//!   [`crate::RemoteThread`], given back by a guard on every path (early return, error, panic).
//! * `state` — the per-thread bookkeeping the others keep right.

use std::marker::PhantomData;

use crate::{MemWriter, Pid, Result};

mod borrow;
mod seize;
mod state;
mod window;

pub use borrow::with_main_thread;
pub use state::ParkStats;
use state::{Book, St};
pub use window::{RunAlone, Slice, StopWindow, StoppedThread, PARK_BATCH};

/// All threads of a process, seized with `PTRACE_SEIZE` (option `PTRACE_O_TRACECLONE`, so threads
/// created later are traced from birth).
///
/// Seizing stops nothing. However, while seized, a thread that creates a thread or receives a
/// signal blocks in a ptrace-stop until this `Tracee` collects it (in [`Tracee::stop_all`],
/// [`Tracee::with_thread`], [`Tracee::service_events`] or [`Tracee::detach`]); keep the time between
/// `seize` and `detach` short, or call `service_events` periodically.
///
/// ptrace ties a tracee to the *thread* that attached, so a `Tracee` is neither `Send` nor `Sync`:
/// use it from the thread that created it.
///
/// Dropping a `Tracee` detaches (ignoring errors), so a target is never left stopped or traced.
///
/// Limitations: `execve` in the target and a thread-group leader that exits with `pthread_exit`
/// while other threads live are handled only on a best-effort basis.
pub struct Tracee {
    book: Book,
    /// Address of the remote-operation stub in the target, once found or installed.
    stub: Option<u64>,
    mem: Option<MemWriter>,
    _not_send: PhantomData<*const ()>,
}

impl std::fmt::Debug for Tracee {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracee")
            .field("pid", &self.book.pid)
            .field("threads", &self.book.threads.len())
            .field("finished", &self.book.finished)
            .finish()
    }
}

impl Tracee {
    /// The target's pid (thread-group id).
    pub fn pid(&self) -> Pid {
        self.book.pid
    }

    /// Number of threads currently known (traced).
    pub fn thread_count(&self) -> usize {
        self.book
            .threads
            .iter()
            .filter(|t| t.st != St::Dead)
            .count()
    }

    /// Thread ids currently known (traced).
    pub fn tids(&self) -> Vec<Pid> {
        self.book
            .threads
            .iter()
            .filter(|t| t.st != St::Dead)
            .map(|t| t.tid)
            .collect()
    }

    /// A lazily opened writer on /proc/PID/mem (shared with remote calls).
    pub fn mem(&mut self) -> Result<&MemWriter> {
        if self.mem.is_none() {
            self.mem = Some(MemWriter::open(self.book.pid)?);
        }
        Ok(self.mem.as_ref().expect("just opened"))
    }

    /// Non-blocking: collect any ptrace-stops that threads entered on their own (thread creation,
    /// signal delivery) and let those threads continue, re-injecting signals. Call this now and
    /// then if the target stays seized for long outside a stop window.
    pub fn service_events(&mut self) -> Result<()> {
        self.book.service_events()
    }

    /// Detach all threads (stopping each briefly, as ptrace requires) and re-inject any signal
    /// that arrived meanwhile. `Drop` does the same, ignoring errors.
    pub fn detach(mut self) -> Result<()> {
        self.detach_inner()
    }

    fn detach_inner(&mut self) -> Result<()> {
        if self.book.finished {
            return Ok(());
        }
        // A thread in an uninterruptible sleep (state `D`: a vfork parent, a read from a hung
        // NFS server) stops for its interrupt only when it leaves that sleep. The others are
        // detached first, so that none of them waits stopped with it; then it is waited for
        // alone (it sleeps on meanwhile, and goes on as soon as it is detached).
        let asleep = self.book.take_uninterruptible();
        let first = self
            .book
            .collect(false, &mut |_| false)
            .and_then(|()| self.book.release(true));
        if asleep.is_empty() || !self.book.threads.is_empty() {
            // Nothing waits, or the first pass could not finish: the threads taken out go back
            // to the book, for its next detach (or the kernel's, when we exit).
            self.book.threads.extend(asleep);
            return first;
        }
        self.book.finished = false;
        self.book.threads = asleep;
        let second = self
            .book
            .collect(false, &mut |_| false)
            .and_then(|()| self.book.release(true));
        first.and(second)
    }
}

impl Drop for Tracee {
    fn drop(&mut self) {
        if !self.book.finished {
            if let Err(e) = self.detach_inner() {
                tracing::debug!(pid = self.book.pid, error = %e, "detach on drop failed");
            }
        }
    }
}
