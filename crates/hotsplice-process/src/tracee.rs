//! Seizing all threads of a process, the stop window, and detaching.

use std::collections::HashSet;
use std::marker::PhantomData;

use libc::c_int;
use nix::errno::Errno;

use crate::remote::RemoteThread;
use crate::sys::{self, classify, is_stop_signal, perr, wait_tid, Ev};
use crate::{procfs, Error, MemWriter, Pid, Result};

/// Our view of one traced thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    /// Running as far as we know (it may sit in a ptrace-stop we have not collected yet).
    Running,
    /// Auto-attached new thread whose initial PTRACE_EVENT_STOP has not been collected.
    AwaitInitial,
    /// In a ptrace-stop we collected.
    Stopped(Stop),
    /// A ptrace request said ESRCH: it is being killed; it must still be reaped.
    Dying,
    /// Reaped or detached; removed at the next compaction.
    Dead,
}

/// Kind of a collected stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
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
struct Thread {
    tid: Pid,
    st: St,
}

/// Outcome of driving a thread to a clean stop.
enum Drive {
    Clean,
    Group,
    Gone,
}

/// A thread stopped inside the stop window, with its registers.
#[derive(Clone, Copy)]
pub struct StoppedThread {
    /// Thread id.
    pub tid: Pid,
    /// Its general-purpose registers at the stop.
    pub regs: libc::user_regs_struct,
}

impl std::fmt::Debug for StoppedThread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoppedThread")
            .field("tid", &self.tid)
            .field("rip", &format_args!("{:#x}", self.regs.rip))
            .field("rsp", &format_args!("{:#x}", self.regs.rsp))
            .finish()
    }
}

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
    pid: Pid,
    threads: Vec<Thread>,
    stopped: Vec<StoppedThread>,
    stub: Option<u64>,
    mem: Option<MemWriter>,
    finished: bool,
    leader_zombie: bool,
    _not_send: PhantomData<*const ()>,
}

impl std::fmt::Debug for Tracee {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracee")
            .field("pid", &self.pid)
            .field("threads", &self.threads.len())
            .field("finished", &self.finished)
            .finish()
    }
}

impl Tracee {
    /// Seize every thread of `pid` without stopping it.
    ///
    /// Fails with [`Error::NoSuchProcess`], [`Error::AlreadyTraced`] (naming the tracer) or
    /// [`Error::PermissionDenied`]. Re-reads /proc/PID/task until no unseized thread remains.
    pub fn seize(pid: Pid) -> Result<Tracee> {
        if pid <= 0 || std::fs::metadata(format!("/proc/{pid}/task")).is_err() {
            return Err(Error::NoSuchProcess { pid });
        }
        if let Some(t) = procfs::tracer_pid(pid)? {
            return Err(Error::AlreadyTraced {
                pid,
                tracer_pid: t,
                tracer_name: procfs::process_name(t),
            });
        }
        let me = sys::gettid();
        let mut tr = Tracee {
            pid,
            threads: Vec::new(),
            stopped: Vec::new(),
            stub: None,
            mem: None,
            finished: false,
            leader_zombie: false,
            _not_send: PhantomData,
        };
        let mut seen: HashSet<Pid> = HashSet::new();
        loop {
            let tids = match procfs::thread_ids(pid) {
                Ok(t) => t,
                Err(Error::NoSuchProcess { .. }) if tr.threads.is_empty() => {
                    return Err(Error::NoSuchProcess { pid })
                }
                Err(Error::NoSuchProcess { .. }) => return Err(tr.process_gone()),
                Err(e) => return Err(e),
            };
            let mut new = false;
            // Seize the leader first so that an EPERM on it is reported as such.
            let mut tids = tids;
            if let Some(p) = tids.iter().position(|&t| t == pid) {
                tids.swap(0, p);
            }
            for tid in tids {
                if !seen.insert(tid) {
                    continue;
                }
                new = true;
                match sys::ptrace(
                    libc::PTRACE_SEIZE,
                    tid,
                    0,
                    (libc::PTRACE_O_TRACECLONE | libc::PTRACE_O_TRACESYSGOOD) as usize,
                ) {
                    Ok(_) => tr.threads.push(Thread {
                        tid,
                        st: St::Running,
                    }),
                    Err(Errno::ESRCH) => {
                        if tid == pid && tr.threads.is_empty() {
                            return Err(Error::NoSuchProcess { pid });
                        }
                    }
                    Err(Errno::EPERM) => match procfs::tracer_of(pid, tid) {
                        // Auto-attached because its creator was already seized by us.
                        Ok(Some(t)) if t == me => tr.threads.push(Thread {
                            tid,
                            st: St::AwaitInitial,
                        }),
                        Ok(Some(t)) => {
                            return Err(Error::AlreadyTraced {
                                pid,
                                tracer_pid: t,
                                tracer_name: procfs::process_name(t),
                            })
                        }
                        Ok(None) => match procfs::thread_state(pid, tid) {
                            Some('Z') | Some('X') | None => {
                                if tid == pid {
                                    tr.leader_zombie = true;
                                }
                            }
                            Some(_) => {
                                return Err(Error::PermissionDenied {
                                    pid,
                                    uid_of_target: procfs::target_uid(pid),
                                })
                            }
                        },
                        Err(_) => {}
                    },
                    Err(e) => return Err(perr("PTRACE_SEIZE", tid, e)),
                }
            }
            if !new {
                break;
            }
        }
        if tr.threads.is_empty() {
            tr.finished = true;
            return Err(Error::NoSuchProcess { pid });
        }
        tracing::debug!(pid, threads = tr.threads.len(), "seized");
        tr.settle_initial()?;
        tr.service_events()?;
        Ok(tr)
    }

    /// The target's pid (thread-group id).
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// Number of threads currently known (traced).
    pub fn thread_count(&self) -> usize {
        self.threads.iter().filter(|t| t.st != St::Dead).count()
    }

    /// Thread ids currently known (traced).
    pub fn tids(&self) -> Vec<Pid> {
        self.threads
            .iter()
            .filter(|t| t.st != St::Dead)
            .map(|t| t.tid)
            .collect()
    }

    /// A lazily opened writer on /proc/PID/mem (shared with remote calls).
    pub fn mem(&mut self) -> Result<&MemWriter> {
        if self.mem.is_none() {
            self.mem = Some(MemWriter::open(self.pid)?);
        }
        Ok(self.mem.as_ref().expect("just opened"))
    }

    fn check_live(&self) -> Result<()> {
        if self.finished {
            Err(Error::Detached { pid: self.pid })
        } else {
            Ok(())
        }
    }

    /// Mark the whole process as gone and return the error to report.
    fn process_gone(&mut self) -> Error {
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
    fn adopt(&mut self, tid: Pid) {
        if tid > 0 && !self.known(tid) {
            self.threads.push(Thread {
                tid,
                st: St::AwaitInitial,
            });
        }
    }

    fn compact(&mut self) {
        self.threads.retain(|t| t.st != St::Dead);
    }

    /// Wait for a specific thread. The leader is polled (its exit is only reported once all other
    /// threads are reaped, so a blocking wait could hang); `Ok(None)`: the leader is a zombie with
    /// live threads, or the thread is not our child any more.
    fn wait_thread(&mut self, tid: Pid) -> Result<Option<c_int>> {
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
            // SAFETY: trivial syscall.
            unsafe { libc::sched_yield() };
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
    fn dispatch_outside(&mut self, i: usize, ev: Ev) -> Result<()> {
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
    fn settle_initial(&mut self) -> Result<()> {
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
    fn reap_dying(&mut self) -> Result<()> {
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

    /// Non-blocking: collect any ptrace-stops that threads entered on their own (thread creation,
    /// signal delivery) and let those threads continue, re-injecting signals. Call this now and
    /// then if the target stays seized for long outside a stop window.
    pub fn service_events(&mut self) -> Result<()> {
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

    /// THE STOP WINDOW START: interrupt every thread back-to-back, then wait for each and read its
    /// registers. Threads created meanwhile are included; exited threads are dropped; if the whole
    /// process exits the result is [`Error::ProcessExited`]. On any error, threads that were
    /// stopped are resumed.
    pub fn stop_all(&mut self) -> Result<StopWindow<'_>> {
        self.collect(true)?;
        Ok(StopWindow {
            tracee: self,
            done: false,
        })
    }

    fn collect(&mut self, read_regs: bool) -> Result<()> {
        self.check_live()?;
        self.stopped.clear();
        for t in &self.threads {
            if t.st == St::Running {
                // ESRCH (thread dying) is resolved by the wait below.
                let _ = sys::interrupt(t.tid);
            }
        }
        if let Err(e) = self.collect_wait(read_regs) {
            if !self.finished {
                let _ = self.release(false);
            }
            return Err(e);
        }
        if self.leader_zombie
            && self
                .threads
                .iter()
                .all(|t| t.st == St::Dead || t.tid == self.pid)
        {
            // Every thread is gone; the zombie leader can now be reaped.
            let _ = wait_tid(self.pid, 0);
            return Err(self.process_gone());
        }
        self.compact();
        Ok(())
    }

    fn collect_wait(&mut self, read_regs: bool) -> Result<()> {
        let mut i = 0;
        let mut leader_left = true;
        loop {
            while i < self.threads.len() {
                if self.threads[i].tid != self.pid {
                    self.collect_one(i, read_regs)?;
                }
                i += 1;
            }
            if leader_left {
                leader_left = false;
                if let Some(li) = self.threads.iter().position(|t| t.tid == self.pid) {
                    self.collect_one(li, read_regs)?;
                }
                continue;
            }
            return Ok(());
        }
    }

    /// Wait for one thread's stop in the window and classify it. Hot path: no allocation except
    /// the push onto `stopped`.
    fn collect_one(&mut self, i: usize, read_regs: bool) -> Result<()> {
        let tid = self.threads[i].tid;
        loop {
            if !matches!(
                self.threads[i].st,
                St::Running | St::AwaitInitial | St::Dying
            ) {
                return Ok(());
            }
            let st = match self.wait_thread(tid)? {
                Some(st) => st,
                None => {
                    self.threads[i].st = St::Dead;
                    return Ok(());
                }
            };
            let stop = match classify(st) {
                Ev::Exited => {
                    self.threads[i].st = St::Dead;
                    if tid == self.pid {
                        return Err(self.process_gone());
                    }
                    return Ok(());
                }
                Ev::EventStop(s) if is_stop_signal(s) => Stop::Group,
                Ev::EventStop(_) => Stop::Clean,
                Ev::Clone => {
                    match sys::geteventmsg(tid) {
                        Ok(child) => self.adopt(child as Pid),
                        Err(_) => {
                            self.threads[i].st = St::Dying;
                            continue;
                        }
                    }
                    Stop::Dirty(0)
                }
                Ev::Signal(s) => Stop::Dirty(s),
                Ev::Other | Ev::Syscall => Stop::Dirty(0),
            };
            self.threads[i].st = St::Stopped(stop);
            if !read_regs {
                return Ok(());
            }
            match sys::getregs(tid) {
                Ok(regs) => {
                    self.stopped.push(StoppedThread { tid, regs });
                    return Ok(());
                }
                // Killed while stopped: reap it.
                Err(Errno::ESRCH) => self.threads[i].st = St::Dying,
                Err(e) => return Err(perr("PTRACE_GETREGS", tid, e)),
            }
        }
    }

    /// End a window: resume (stay seized) or detach every stopped thread.
    fn release(&mut self, detach: bool) -> Result<()> {
        let mut first_err: Option<Error> = None;
        let mut dirty = false;
        for t in self.threads.iter_mut() {
            let r = match t.st {
                St::Stopped(Stop::Clean) => {
                    if detach {
                        sys::detach(t.tid, 0)
                    } else {
                        sys::cont(t.tid, 0)
                    }
                }
                St::Stopped(Stop::Group) => {
                    if detach {
                        sys::detach(t.tid, 0)
                    } else {
                        sys::listen(t.tid)
                    }
                }
                St::Stopped(Stop::Dirty(sig)) => {
                    if detach {
                        sys::detach(t.tid, sig)
                    } else {
                        dirty = true;
                        continue;
                    }
                }
                _ => continue,
            };
            match r {
                Ok(()) => t.st = if detach { St::Dead } else { St::Running },
                Err(Errno::ESRCH) => t.st = St::Dying,
                Err(e) => {
                    first_err.get_or_insert(perr(
                        if detach {
                            "PTRACE_DETACH"
                        } else {
                            "PTRACE_CONT"
                        },
                        t.tid,
                        e,
                    ));
                }
            }
        }
        self.stopped.clear();
        let mut result = Ok(());
        if dirty {
            // Rare: threads stopped in a clone event or signal-delivery-stop. Deliver their signal
            // and consume the interrupt that may still be pending, so no stray stop remains.
            let mut i = 0;
            while i < self.threads.len() {
                if let St::Stopped(Stop::Dirty(sig)) = self.threads[i].st {
                    match self.drive(i, sig, true) {
                        Ok(_) => {}
                        Err(e) => {
                            result = Err(e);
                            break;
                        }
                    }
                }
                i += 1;
            }
        }
        if self.finished {
            return result;
        }
        let r2 = self.settle_initial_any(detach);
        if detach && !self.finished {
            // Anything still listed could not be detached; it is stopped or gone.
            self.threads.clear();
            self.finished = true;
        }
        result?;
        r2?;
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn settle_initial_any(&mut self, detach: bool) -> Result<()> {
        if detach {
            // New threads adopted during a failed window: stop and detach them too.
            let mut i = 0;
            while i < self.threads.len() {
                if self.threads[i].st == St::AwaitInitial {
                    let tid = self.threads[i].tid;
                    if let Some(st) = self.wait_thread(tid)? {
                        if classify(st) != Ev::Exited {
                            let _ = sys::detach(tid, 0);
                        }
                    }
                    self.threads[i].st = St::Dead;
                }
                i += 1;
            }
            self.reap_dying()?;
            self.compact();
            Ok(())
        } else {
            self.settle_initial()
        }
    }

    /// Thread `i` is in a ptrace-stop that may have an interrupt pending behind it. Interrupt it
    /// while stopped (so the pending trap is certain), resume it with `sig`, and wait for the
    /// resulting PTRACE_EVENT_STOP (the kernel reports job-control traps before dequeuing further
    /// signals). With `finish`, the thread is then let go; otherwise it stays in that clean stop.
    fn drive(&mut self, i: usize, sig: c_int, finish: bool) -> Result<Drive> {
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

    /// Borrow one thread (the leader if possible): interrupt it, wait, run `f`, restore its
    /// registers exactly and let it continue. For remote syscalls/calls outside the stop window.
    pub fn with_thread<R>(
        &mut self,
        f: impl FnOnce(&mut RemoteThread<'_>) -> Result<R>,
    ) -> Result<R> {
        self.with_thread_inner(None, f)
    }

    /// Like [`Tracee::with_thread`], but borrows the thread `tid`.
    pub fn with_specific_thread<R>(
        &mut self,
        tid: Pid,
        f: impl FnOnce(&mut RemoteThread<'_>) -> Result<R>,
    ) -> Result<R> {
        self.with_thread_inner(Some(tid), f)
    }

    fn with_thread_inner<R>(
        &mut self,
        want: Option<Pid>,
        f: impl FnOnce(&mut RemoteThread<'_>) -> Result<R>,
    ) -> Result<R> {
        self.check_live()?;
        self.service_events()?;
        let (i, regs) = self.borrow(want)?;
        let tid = self.threads[i].tid;
        if self.mem.is_none() {
            self.mem = MemWriter::open(self.pid).ok();
        }
        let mut rt = RemoteThread::new(self.pid, tid, regs, &mut self.stub, &self.mem);
        let r = f(&mut rt);
        let fin = rt.finish();
        let children = std::mem::take(&mut rt.children);
        let dead = rt.dead;
        drop(rt);
        for c in children {
            self.adopt(c);
        }
        if let Some(j) = self.threads.iter().position(|t| t.tid == tid) {
            self.threads[j].st = if dead { St::Dead } else { St::Running };
        }
        if dead && tid == self.pid {
            let e = self.process_gone();
            return r.and(Err(e));
        }
        let s = self.settle_initial();
        let v = r?;
        fin?;
        s?;
        Ok(v)
    }

    /// Interrupt one thread and bring it into a clean stop; returns its index and registers.
    fn borrow(&mut self, want: Option<Pid>) -> Result<(usize, libc::user_regs_struct)> {
        loop {
            let i = match want {
                Some(w) => self
                    .threads
                    .iter()
                    .position(|t| t.tid == w && t.st == St::Running)
                    .ok_or_else(|| Error::Unexpected {
                        tid: w,
                        detail: format!("not a live traced thread of process {}", self.pid),
                    })?,
                None => match self
                    .threads
                    .iter()
                    .position(|t| t.tid == self.pid && t.st == St::Running)
                    .or_else(|| self.threads.iter().position(|t| t.st == St::Running))
                {
                    Some(i) => i,
                    None => return Err(self.process_gone()),
                },
            };
            let tid = self.threads[i].tid;
            let _ = sys::interrupt(tid);
            let outcome = match self.wait_thread(tid)? {
                None => {
                    self.threads[i].st = St::Dead;
                    Drive::Gone
                }
                Some(st) => match classify(st) {
                    Ev::Exited => {
                        self.threads[i].st = St::Dead;
                        if tid == self.pid {
                            return Err(self.process_gone());
                        }
                        Drive::Gone
                    }
                    Ev::EventStop(s) if is_stop_signal(s) => Drive::Group,
                    Ev::EventStop(_) => Drive::Clean,
                    Ev::Clone => {
                        if let Ok(child) = sys::geteventmsg(tid) {
                            self.adopt(child as Pid);
                        }
                        self.drive(i, 0, false)?
                    }
                    Ev::Signal(s) => self.drive(i, s, false)?,
                    Ev::Other | Ev::Syscall => self.drive(i, 0, false)?,
                },
            };
            match outcome {
                Drive::Clean => match sys::getregs(tid) {
                    Ok(regs) => {
                        self.threads[i].st = St::Stopped(Stop::Clean);
                        return Ok((i, regs));
                    }
                    Err(Errno::ESRCH) => {
                        self.threads[i].st = St::Dying;
                        self.reap_dying()?;
                    }
                    Err(e) => {
                        let _ = sys::cont(tid, 0);
                        return Err(perr("PTRACE_GETREGS", tid, e));
                    }
                },
                Drive::Group => {
                    let _ = sys::listen(tid);
                    self.threads[i].st = St::Running;
                    return Err(Error::Unexpected {
                        tid,
                        detail: "the process is stopped by job control (SIGSTOP/SIGTSTP); send it SIGCONT and retry"
                            .into(),
                    });
                }
                Drive::Gone => {}
            }
            self.compact();
            if let Some(w) = want {
                return Err(Error::Unexpected {
                    tid: w,
                    detail: "thread exited".into(),
                });
            }
        }
    }

    /// Detach all threads (stopping each briefly, as ptrace requires) and re-inject any signal
    /// that arrived meanwhile. `Drop` does the same, ignoring errors.
    pub fn detach(mut self) -> Result<()> {
        self.detach_inner()
    }

    fn detach_inner(&mut self) -> Result<()> {
        if self.finished {
            return Ok(());
        }
        self.collect(false)?;
        self.release(true)
    }
}

impl Drop for Tracee {
    fn drop(&mut self) {
        if !self.finished {
            if let Err(e) = self.detach_inner() {
                tracing::debug!(pid = self.pid, error = %e, "detach on drop failed");
            }
        }
    }
}

/// The stop window: every traced thread is stopped. End it with [`StopWindow::resume`] or
/// [`StopWindow::detach_all`]; dropping it resumes all threads (also on panic).
pub struct StopWindow<'a> {
    tracee: &'a mut Tracee,
    done: bool,
}

impl std::fmt::Debug for StopWindow<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StopWindow")
            .field("pid", &self.tracee.pid)
            .field("threads", &self.tracee.stopped)
            .finish()
    }
}

impl StopWindow<'_> {
    /// The stopped threads and their registers.
    pub fn threads(&self) -> &[StoppedThread] {
        &self.tracee.stopped
    }

    /// The target pid.
    pub fn pid(&self) -> Pid {
        self.tracee.pid
    }

    /// Writer on /proc/PID/mem (opened on first use).
    pub fn mem(&mut self) -> Result<&MemWriter> {
        self.tracee.mem()
    }

    /// Let every thread run again but stay seized (PTRACE_CONT, re-injecting recorded signals).
    pub fn resume(mut self) -> Result<()> {
        self.done = true;
        self.tracee.release(false)
    }

    /// End the window and the tracing: PTRACE_DETACH every thread (re-injecting recorded signals).
    /// The `Tracee` is finished afterwards: further operations on it return [`Error::Detached`]
    /// and dropping it does nothing.
    pub fn detach_all(mut self) -> Result<()> {
        self.done = true;
        self.tracee.release(true)?;
        self.tracee.finished = true;
        Ok(())
    }
}

impl Drop for StopWindow<'_> {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.tracee.release(false);
        }
    }
}
