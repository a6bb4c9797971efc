//! Per-thread bookkeeping of a [`super::Tracee`]: what ptrace state each thread is in as far as
//! we know, waiting for a thread, and letting threads that stopped on their own go on.
//!
//! Every path that changes a thread's ptrace state (the window, a borrow, detaching) records it
//! here, so that the next operation, and dropping the `Tracee`, knows which request each thread
//! needs.

use std::collections::HashSet;

use libc::c_int;
use nix::errno::Errno;

use super::window::StoppedThread;
use crate::sys::{self, classify, is_stop_signal, perr, wait_tid, Ev};
use crate::{procfs, Error, Pid, Result};

/// Our view of one traced thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum St {
    /// Running as far as we know (it may sit in a ptrace-stop we have not collected yet).
    Running,
    /// Auto-attached new thread whose initial PTRACE_EVENT_STOP has not been collected.
    AwaitInitial,
    /// In a ptrace-stop we collected.
    Stopped(Stop),
    /// Parked by the stop window inside a system call it restarted: resumed with
    /// `PTRACE_SYSCALL` from the window's interrupt, its syscall-entry stop collected and resumed
    /// the same way, so that it sleeps in the kernel and can run no user instruction before a
    /// syscall-exit stop (or another stop) that waits for us. Only inside a window; ended by
    /// interrupting it again (see `window.rs`).
    Parked,
    /// A ptrace request said ESRCH: it is being killed; it must still be reaped.
    Dying,
    /// Reaped or detached; removed at the next compaction.
    Dead,
}

/// Kind of a collected stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stop {
    /// PTRACE_EVENT_STOP with SIGTRAP: our interrupt (or the initial stop of a new thread).
    /// No trap remains pending.
    Clean,
    /// A clone-event stop (signal 0) or signal-delivery-stop (the signal to re-inject).
    /// An interrupt may still be pending: resuming must "settle" it (see `Tracee::drive`).
    Dirty(c_int),
    /// Group-stop (job control, SIGSTOP etc.): resumed with PTRACE_LISTEN.
    Group,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Thread {
    pub(super) tid: Pid,
    pub(super) st: St,
    /// On a CPU or runnable when the last stop window began (`/proc`'s
    /// state `R`): interrupted after every other thread and resumed before
    /// them, so it sees only the tail of the window.
    pub(super) hot: bool,
}

/// Outcome of driving a thread to a clean stop.
pub(super) enum Drive {
    Clean,
    Group,
    Gone,
}

/// The threads of one traced process and their states.
pub(super) struct Book {
    /// The process (thread-group leader's tid).
    pub(super) pid: Pid,
    pub(super) threads: Vec<Thread>,
    /// The threads of the open stop window, with their registers.
    pub(super) stopped: Vec<StoppedThread>,
    /// Detached, or the process is gone: nothing is traced any more.
    pub(super) finished: bool,
    /// The leader exited (a zombie) while other threads live.
    pub(super) leader_zombie: bool,
    /// How long the last stop took: sending the interrupts, then waiting
    /// for every stop and reading the registers.
    pub(super) last_stop: (std::time::Duration, std::time::Duration),
    /// When the last window's first running thread was interrupted, and
    /// when the last of them was let go again (`None`: no thread was
    /// running when it began, or they are still stopped).
    pub(super) hot_span: (Option<std::time::Instant>, Option<std::time::Instant>),
    /// When the last window's first interrupt was sent.
    pub(super) window_start: std::time::Instant,
    /// How long reading the threads' states before it took.
    pub(super) states_read: std::time::Duration,
    /// Parking in the last window (see `window.rs`).
    pub(super) park: ParkStats,
    /// How many of the window's first stopped threads went through its `early` callback.
    pub(super) early_count: usize,
    /// Indices of the sleeping threads, reused by every window.
    pub(super) scratch: Vec<usize>,
    /// The threads parked by the open window, with the registers they had when checked.
    pub(super) parked: Vec<StoppedThread>,
}

/// What parking sleeping threads in their system calls did in one window.
#[derive(Debug, Clone, Copy, Default)]
pub struct ParkStats {
    /// Threads parked (resumed inside their system call, checked).
    pub parked: usize,
    /// Of those, threads whose call ended during the window: let go at once, stopped again with
    /// the running ones.
    pub woke: usize,
    /// Parking stopped during the window: more than one in eight of the parked threads (and at
    /// least four) woke before its end, so the remaining batches were kept stopped.
    pub gave_up: bool,
    /// Threads taken for sleeping that were in user code at their stop (they woke since their
    /// state was read): let go at once, stopped again with the running ones.
    pub awake: usize,
    /// Sleeping threads that stayed stopped (not in a call the kernel restarts by itself, not in
    /// a clean stop, their batch was not checked clean, or parking had given up).
    pub kept: usize,
    /// The longest a batch of threads was stopped: from its interrupts until it was parked (or
    /// its threads let go), or, at the end, from interrupting parked threads again until they
    /// were let go.
    pub longest_batch: std::time::Duration,
    /// Time spent parking and un-parking (out of any thread's stop).
    pub parking: std::time::Duration,
    /// When the first batch that kept a thread stopped was interrupted.
    pub(super) kept_since: Option<std::time::Instant>,
    /// The longest any thread was kept from running by the last window: the longest batch
    /// stop, that of a thread kept stopped until the window's end, or that of the running
    /// threads.
    pub longest_held: std::time::Duration,
}

impl Book {
    pub(super) fn new(pid: Pid) -> Book {
        Book {
            pid,
            threads: Vec::new(),
            stopped: Vec::new(),
            finished: false,
            leader_zombie: false,
            last_stop: Default::default(),
            hot_span: (None, None),
            window_start: std::time::Instant::now(),
            states_read: std::time::Duration::ZERO,
            park: ParkStats::default(),
            early_count: 0,
            scratch: Vec::new(),
            parked: Vec::new(),
        }
    }

    /// Take out of the book the running threads that `/proc` shows in an uninterruptible sleep
    /// (state `D`), which no interrupt ends (see [`super::Tracee::detach`]).
    pub(super) fn take_uninterruptible(&mut self) -> Vec<Thread> {
        let Some(dir) = procfs::TaskDir::open(self.pid) else {
            return Vec::new();
        };
        let mut asleep = Vec::new();
        self.threads.retain(|t| {
            let d = t.st == St::Running && dir.state(t.tid) == Some('D');
            if d {
                asleep.push(Thread { hot: false, ..*t });
            }
            !d
        });
        asleep
    }

    pub(super) fn check_live(&self) -> Result<()> {
        if self.finished {
            Err(Error::Detached { pid: self.pid })
        } else {
            Ok(())
        }
    }

    /// Mark the whole process as gone and return the error to report.
    pub(super) fn process_gone(&mut self) -> Error {
        self.threads.clear();
        self.stopped.clear();
        self.finished = true;
        Error::ProcessExited { pid: self.pid }
    }

    #[inline]
    fn known(&self, tid: Pid) -> bool {
        self.threads
            .iter()
            .any(|t| t.tid == tid && t.st != St::Dead)
    }

    /// Record a thread created by a traced thread (it starts in a pending initial stop).
    pub(super) fn adopt(&mut self, tid: Pid) {
        if tid > 0 && !self.known(tid) {
            self.threads.push(Thread {
                tid,
                st: St::AwaitInitial,
                hot: false,
            });
        }
    }

    pub(super) fn compact(&mut self) {
        self.threads.retain(|t| t.st != St::Dead);
    }

    /// Wait for a specific thread. The leader is polled (its exit is only reported once all other
    /// threads are reaped, so a blocking wait could hang); `Ok(None)`: the leader is a zombie with
    /// live threads, or the thread is not our child any more.
    pub(super) fn wait_thread(&mut self, tid: Pid) -> Result<Option<c_int>> {
        if tid != self.pid {
            return match wait_tid(tid, 0) {
                Ok(s) => Ok(s),
                Err(Errno::ECHILD) => Ok(None),
                Err(e) => Err(perr("waitpid", tid, e)),
            };
        }
        let mut spins: u32 = 0;
        let mut since: Option<std::time::Instant> = None;
        loop {
            match wait_tid(tid, libc::WNOHANG) {
                Ok(Some(s)) => return Ok(Some(s)),
                Ok(None) => {}
                Err(Errno::ECHILD) => return Ok(None),
                Err(e) => return Err(perr("waitpid", tid, e)),
            }
            spins = spins.wrapping_add(1);
            if spins < 64 {
                std::hint::spin_loop();
                continue;
            }
            if spins & 255 == 0 {
                // Only if the leader has not reported for a long time (never in a healthy window).
                let start = *since.get_or_insert_with(std::time::Instant::now);
                if start.elapsed() > std::time::Duration::from_millis(50) {
                    if self.rescue_leader_wait() {
                        return Ok(None);
                    }
                    since = Some(std::time::Instant::now());
                }
            }
            // sched_yield(2).
            std::thread::yield_now();
        }
    }

    /// Slow path while the leader does not report: reap traced zombie threads we do not know
    /// (they block the leader's exit report), adopt unknown stopped ones, and detect a zombie
    /// leader whose other threads still live. Returns true if the leader is such a zombie.
    fn rescue_leader_wait(&mut self) -> bool {
        let Ok(tids) = procfs::thread_ids(self.pid) else {
            return false;
        };
        let known: HashSet<Pid> = self
            .threads
            .iter()
            .filter(|t| t.st != St::Dead)
            .map(|t| t.tid)
            .collect();
        for &tid in &tids {
            if tid != self.pid && !known.contains(&tid) {
                if let Ok(Some(st)) = wait_tid(tid, libc::WNOHANG) {
                    if classify(st) != Ev::Exited {
                        self.threads.push(Thread {
                            tid,
                            st: St::AwaitInitial,
                            hot: false,
                        });
                    }
                }
            }
        }
        if procfs::thread_state(self.pid, self.pid) != Some('Z') {
            return false;
        }
        let others_alive = tids.iter().any(|&t| {
            t != self.pid
                && !matches!(
                    procfs::thread_state(self.pid, t),
                    Some('Z') | Some('X') | None
                )
        });
        if others_alive {
            self.leader_zombie = true;
            if let Some(l) = self.threads.iter_mut().find(|t| t.tid == self.pid) {
                l.st = St::Dead;
            }
        }
        others_alive
    }

    /// Handle a stop of a thread we did NOT interrupt (outside the window): let it go on.
    pub(super) fn dispatch_outside(&mut self, i: usize, ev: Ev) -> Result<()> {
        let tid = self.threads[i].tid;
        let r = match ev {
            Ev::Exited => {
                self.threads[i].st = St::Dead;
                if tid == self.pid {
                    return Err(self.process_gone());
                }
                return Ok(());
            }
            Ev::Clone => {
                if let Ok(child) = sys::geteventmsg(tid) {
                    self.adopt(child as Pid);
                }
                sys::cont(tid, 0)
            }
            Ev::Signal(s) => sys::cont(tid, s),
            Ev::EventStop(s) if is_stop_signal(s) => sys::listen(tid),
            Ev::EventStop(_) | Ev::Other | Ev::Syscall => sys::cont(tid, 0),
        };
        self.threads[i].st = match r {
            Ok(()) => St::Running,
            Err(Errno::ESRCH) => St::Dying,
            Err(e) => return Err(perr("PTRACE_CONT", tid, e)),
        };
        Ok(())
    }

    /// Collect the initial stops of auto-attached threads and let them run.
    pub(super) fn settle_initial(&mut self) -> Result<()> {
        let mut i = 0;
        while i < self.threads.len() {
            if self.threads[i].st == St::AwaitInitial {
                let tid = self.threads[i].tid;
                match self.wait_thread(tid)? {
                    None => self.threads[i].st = St::Dead,
                    Some(st) => self.dispatch_outside(i, classify(st))?,
                }
            }
            i += 1;
        }
        self.reap_dying()?;
        self.compact();
        Ok(())
    }

    /// Reap threads that vanished under us (ESRCH). Non-leaders first: the leader's exit is
    /// reported only after the others are reaped.
    pub(super) fn reap_dying(&mut self) -> Result<()> {
        let mut leader_dying = false;
        for i in 0..self.threads.len() {
            if self.threads[i].st != St::Dying {
                continue;
            }
            let tid = self.threads[i].tid;
            if tid == self.pid {
                leader_dying = true;
                continue;
            }
            self.reap_one(i)?;
        }
        if leader_dying {
            if let Some(i) = self.threads.iter().position(|t| t.tid == self.pid) {
                self.reap_one(i)?;
            }
        }
        Ok(())
    }

    fn reap_one(&mut self, i: usize) -> Result<()> {
        let tid = self.threads[i].tid;
        for _ in 0..16 {
            match self.wait_thread(tid)? {
                None => {
                    self.threads[i].st = St::Dead;
                    return Ok(());
                }
                Some(st) => {
                    let ev = classify(st);
                    if ev == Ev::Exited {
                        self.threads[i].st = St::Dead;
                        if tid == self.pid {
                            return Err(self.process_gone());
                        }
                        return Ok(());
                    }
                    // Still alive after all: let it go on.
                    self.dispatch_outside(i, ev)?;
                    if self.threads[i].st != St::Dying {
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }

    /// Non-blocking: collect the ptrace-stops threads entered on their own and let them go on
    /// (see [`super::Tracee::service_events`]).
    pub(super) fn service_events(&mut self) -> Result<()> {
        self.check_live()?;
        let mut i = 0;
        while i < self.threads.len() {
            let t = self.threads[i];
            if t.st == St::Running {
                match wait_tid(t.tid, libc::WNOHANG) {
                    Ok(None) => {}
                    Ok(Some(st)) => self.dispatch_outside(i, classify(st))?,
                    Err(Errno::ECHILD) => self.threads[i].st = St::Dead,
                    Err(e) => return Err(perr("waitpid", t.tid, e)),
                }
            }
            i += 1;
        }
        self.settle_initial()
    }

    /// Thread `i` is in a ptrace-stop that may have an interrupt pending behind it. Interrupt it
    /// while stopped (so the pending trap is certain), resume it with `sig`, and wait for the
    /// resulting PTRACE_EVENT_STOP (the kernel reports job-control traps before dequeuing further
    /// signals). With `finish`, the thread is then let go; otherwise it stays in that clean stop.
    pub(super) fn drive(&mut self, i: usize, sig: c_int, finish: bool) -> Result<Drive> {
        let tid = self.threads[i].tid;
        let mut sig = sig;
        for _ in 0..256 {
            if sys::interrupt(tid).is_err() || sys::cont(tid, sig).is_err() {
                self.threads[i].st = St::Dying;
                self.reap_dying()?;
                return Ok(Drive::Gone);
            }
            let st = match self.wait_thread(tid)? {
                Some(st) => st,
                None => {
                    self.threads[i].st = St::Dead;
                    return Ok(Drive::Gone);
                }
            };
            match classify(st) {
                Ev::Exited => {
                    self.threads[i].st = St::Dead;
                    if tid == self.pid {
                        return Err(self.process_gone());
                    }
                    return Ok(Drive::Gone);
                }
                Ev::EventStop(s) if is_stop_signal(s) => {
                    self.threads[i].st = St::Stopped(Stop::Group);
                    if finish {
                        let _ = sys::listen(tid);
                        self.threads[i].st = St::Running;
                    }
                    return Ok(Drive::Group);
                }
                Ev::EventStop(_) => {
                    self.threads[i].st = St::Stopped(Stop::Clean);
                    if finish {
                        self.threads[i].st = match sys::cont(tid, 0) {
                            Ok(()) => St::Running,
                            Err(_) => St::Dying,
                        };
                    }
                    return Ok(Drive::Clean);
                }
                Ev::Clone => {
                    if let Ok(child) = sys::geteventmsg(tid) {
                        self.adopt(child as Pid);
                    }
                    sig = 0;
                }
                Ev::Signal(s) => sig = s,
                Ev::Other | Ev::Syscall => sig = 0,
            }
        }
        Err(Error::Unexpected {
            tid,
            detail: "thread never reached an interrupt stop".into(),
        })
    }
}
