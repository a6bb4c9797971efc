//! The stop window: every thread interrupted in batches, sleeping ones first, collected, its
//! registers read; a clean batch of sleeping threads parked in its system calls
//! ([`Tracee::stop_all_then`]); ended by resuming or detaching all of them, the ones that were
//! running first, the parked ones last ([`StopWindow`]).
//!
//! This is the hot path hotsplice's pause time is measured on: no `/proc` read, no allocation
//! per thread, and no system call per thread beyond interrupt, wait, read registers and resume
//! — and, for a parked thread, its two `PTRACE_SYSCALL`s, the check of its entry stop, and the
//! interrupt, wait and resume that end parking (each thread's state is read from `/proc` just
//! before the first interrupt, every thread still running).

use hotsplice_arch::current::remote::{self as regs, Regs};
use nix::errno::Errno;

use super::state::{Book, ParkStats, St, Stop};
use super::Tracee;
use crate::procfs::{self, SchedStat};
use crate::sys::{self, classify, is_stop_signal, perr, wait_tid, Ev, SyscallStop};
use crate::{Error, MemWriter, Pid, Result};

/// A thread stopped inside the stop window, with its registers.
#[derive(Clone, Copy)]
pub struct StoppedThread {
    /// Thread id.
    pub tid: Pid,
    /// Its general-purpose registers at the stop.
    pub regs: Regs,
}

impl std::fmt::Debug for StoppedThread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoppedThread")
            .field("tid", &self.tid)
            .field("ip", &format_args!("{:#x}", regs::ip(&self.regs)))
            .field("sp", &format_args!("{:#x}", regs::sp(&self.regs)))
            .finish()
    }
}

impl Tracee {
    /// THE STOP WINDOW START: interrupt every sleeping thread back-to-back and collect each
    /// one's stop with its registers, then the same for the threads that were on a CPU or
    /// runnable (`/proc`'s state `R`, read just before), whose stops arrive at once: a running
    /// thread is stopped for the window's tail only, and [`StopWindow::resume`] /
    /// [`StopWindow::detach_all`] let it go before the others ([`Tracee::last_running_stop`]).
    /// Threads created meanwhile are included; exited threads are dropped; if the whole process
    /// exits the result is [`Error::ProcessExited`]. On any error, threads that were stopped are
    /// resumed. A thread found in an uninterruptible sleep (state `D`: a read from a slow disk or
    /// a hung NFS server, a `vfork` parent) is [`Error::Uninterruptible`], with no thread stopped:
    /// no interrupt ends such a sleep, and the window would hold every other thread for as long
    /// as it lasts.
    pub fn stop_all(&mut self) -> Result<StopWindow<'_>> {
        self.stop_all_then(&mut |_| false)
    }

    /// [`Tracee::stop_all`], every thread stopped first in batches of [`PARK_BATCH`] — the
    /// sleeping ones (not on a CPU when their states were read), then the running ones — each
    /// batch handed to `early` (with the registers) as soon as it is collected, the others still
    /// running: work on the batch's stacks there (they do not change while the threads are
    /// stopped) is off the running threads' stop. A thread of a batch found in user code
    /// ([`crate::next_is_user_code`]: it is running after all) is let go as soon as its stop is
    /// collected, and stopped again with the other running ones at the end: `early` does not
    /// see it then. Every thread given to `early` that stays stopped comes first in
    /// [`StopWindow::threads`], in the same order ([`StopWindow::early_count`] of them). `early`
    /// must make no ptrace request.
    ///
    /// When `early` returns true (it found the batch's threads may stay as they are until the
    /// window ends), the threads of the batch that sit in a system call the kernel restarts by
    /// itself are *parked*: resumed with `PTRACE_SYSCALL`, they execute the `syscall`
    /// instruction again, stop at its entry, are resumed the same way and sleep on in the kernel.
    /// A parked thread can run no user instruction before a syscall-exit stop that waits for us:
    /// it is not stopped, yet it cannot touch what the window changes. One whose call ends during
    /// the window is let go at once (between batches) and stopped again with the running threads;
    /// the window's end interrupts the others again and lets them go (or detaches them). So a
    /// sleeping thread is stopped only for its own batch, not for the whole window. Parked
    /// threads are not in [`StopWindow::threads`] ([`StopWindow::park`] counts them). Should
    /// hotsplice vanish meanwhile, the kernel detaches them, and they return from their call
    /// normally.
    pub fn stop_all_then(
        &mut self,
        early: &mut dyn FnMut(&[StoppedThread]) -> bool,
    ) -> Result<StopWindow<'_>> {
        // Before the first interrupt, so that no thread waits for it, and
        // before reading the threads' states, which a loaded machine would
        // otherwise make slow.
        let boost = sys::boost();
        // Which threads are on a CPU or about to be: they are stopped
        // last and let go first. Read before the window (no `/proc` read
        // happens while threads are stopped; about 10 µs a thread, with
        // every thread running); a thread that changed since only sees
        // more of the window than it needed to.
        let pid = self.book.pid;
        let t0 = std::time::Instant::now();
        let dir = procfs::TaskDir::open(pid);
        let mut asleep: Vec<Pid> = Vec::new();
        for t in &mut self.book.threads {
            let state = match (&dir, t.st) {
                (Some(d), St::Running) => d.state(t.tid),
                _ => None,
            };
            t.hot = state == Some('R');
            if state == Some('D') {
                asleep.push(t.tid);
            }
        }
        // Most such sleeps last microseconds (a lock in the kernel, a page
        // read in, a thread's exit): looked at again a few times before the
        // window is given up. Before any interrupt: nothing to let go. (A
        // thread that enters such a sleep after this still holds the window
        // until it leaves it.)
        if let Some(d) = &dir {
            for _ in 0..UNINTERRUPTIBLE_LOOKS {
                if asleep.is_empty() {
                    break;
                }
                std::thread::sleep(UNINTERRUPTIBLE_PAUSE);
                asleep.retain(|&tid| d.state(tid) == Some('D'));
            }
        }
        self.book.states_read = t0.elapsed();
        if let Some(&tid) = asleep.first() {
            return Err(Error::Uninterruptible { pid, tid });
        }
        self.book.collect(true, early)?;
        Ok(StopWindow {
            tracee: self,
            done: false,
            sched: Vec::new(),
            _boost: boost,
        })
    }
}

/// A thread found in an uninterruptible sleep before a window is looked at again this many
/// times, this far apart, before the window is given up ([`Error::Uninterruptible`]).
const UNINTERRUPTIBLE_LOOKS: usize = 5;
const UNINTERRUPTIBLE_PAUSE: std::time::Duration = std::time::Duration::from_millis(1);

/// Sleeping threads are stopped, checked and parked this many at a time: a sleeping thread is
/// stopped for about its batch (some 25 µs a thread), not for the whole window.
pub const PARK_BATCH: usize = 32;

/// Parking gives up once this many parked threads woke during the window, if they are more
/// than one in [`GIVE_UP_SHARE`] of those parked (one early waker proves nothing).
const GIVE_UP_WOKE: usize = 4;
const GIVE_UP_SHARE: usize = 8;

/// Whether parking stops, `woke` of the `parked` threads having woken during the window. Idle
/// sleepers (a thread pool waiting for work, timers of seconds) wake rarely within a window of
/// milliseconds; busy workers (a 10 ms sleep each) wake at a rate that soon makes up a good share
/// of those parked.
fn gives_up(woke: usize, parked: usize) -> bool {
    woke >= GIVE_UP_WOKE && woke * GIVE_UP_SHARE > parked
}

/// How many times the leader's stop is looked for, without blocking, at the end of each batch
/// until it is found (it is interrupted with the first). A zombie leader never reports before
/// the other threads are reaped: waiting for it there could wait forever, so a leader not found
/// so is collected after every other thread.
const LEADER_POLLS: u32 = 2;

impl Tracee {
    /// How long the threads that were running when the last window began
    /// stayed stopped: from the first one's interrupt to the last one let
    /// go (they are stopped last and let go first). `None` when no thread
    /// was running then, or the window has not ended.
    pub fn last_running_stop(&self) -> Option<std::time::Duration> {
        match self.book.hot_span {
            (Some(a), Some(b)) => Some(b.saturating_duration_since(a)),
            _ => None,
        }
    }

    /// What parking sleeping threads did in the last window, once it ended (see
    /// [`Tracee::stop_all_then`]).
    pub fn last_park(&self) -> ParkStats {
        self.book.park
    }
}

impl Book {
    /// Interrupt every running thread, then collect each one's stop (with its registers into
    /// `stopped` if `read_regs`); on an error the threads stopped so far are resumed. The
    /// sleeping ones go first, in batches, each handed to `early` and parked if it says so (see
    /// [`Tracee::stop_all_then`]; only with `read_regs`).
    pub(super) fn collect(
        &mut self,
        read_regs: bool,
        early: &mut dyn FnMut(&[StoppedThread]) -> bool,
    ) -> Result<()> {
        self.check_live()?;
        self.stopped.clear();
        self.hot_span = (None, None);
        self.park = ParkStats::default();
        self.parked.clear();
        self.early_count = 0;
        self.window_start = std::time::Instant::now();
        // Every thread batch by batch, the sleeping ones first, while the
        // others run; those found in user code were let go again (`hot`):
        // now they are stopped, and their stops arrive at once. A running
        // thread is stopped for its batch and for the window's tail.
        let (interrupt, wait, waited) = self.collect_batches(read_regs, early);
        self.early_count = self.stopped.len();
        let t2e = std::time::Instant::now();
        if waited.is_ok() {
            if self.threads.iter().any(|t| t.hot && t.st == St::Running) {
                self.hot_span.0 = Some(t2e);
            }
            self.interrupt_hot();
        }
        let t3 = std::time::Instant::now();
        let waited = waited.and_then(|()| self.collect_wait(read_regs));
        self.last_stop = (interrupt + (t3 - t2e), wait + t3.elapsed());
        if let Err(e) = waited {
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

    /// The batches of [`Book::collect`]: returns the time spent interrupting and collecting,
    /// and whether every stop was collected.
    fn collect_batches(
        &mut self,
        read_regs: bool,
        early: &mut dyn FnMut(&[StoppedThread]) -> bool,
    ) -> (std::time::Duration, std::time::Duration, Result<()>) {
        let mut order = std::mem::take(&mut self.scratch);
        order.clear();
        let pid = self.pid;
        // Sleeping threads first; then those `/proc` showed running, which
        // mostly sleep again by now (a server's workers): found in user
        // code at their stop, a thread is let go at once and stopped again
        // with the others that are (`hot`), at the end.
        let mut cold = 0;
        for hot in [false, true] {
            order.extend(
                self.threads
                    .iter()
                    .enumerate()
                    .filter(|(_, t)| t.st == St::Running && t.hot == hot && t.tid != pid)
                    .map(|(i, _)| i),
            );
            if !hot {
                cold = order.len();
            }
        }
        let n = order.len();
        // The leader with the first batch (see `LEADER_POLLS`).
        let leader = (!self.leader_zombie)
            .then(|| {
                self.threads
                    .iter()
                    .position(|t| t.tid == pid && t.st == St::Running)
            })
            .flatten();
        // Until the first batch interrupts it, the leader counts as one the
        // tail interrupts: should the batches end before (parking given up
        // with no sleeping thread left), the tail still stops it, and no
        // wait is left for a stop nobody asked for.
        if let Some(li) = leader {
            self.threads[li].hot = true;
        }
        let mut bounds: Vec<(usize, usize)> = Vec::with_capacity(n / PARK_BATCH + 3);
        for (from, to) in [(0, cold), (cold, n)] {
            let mut lo = from;
            while lo < to {
                let hi = (lo + PARK_BATCH).min(to);
                bounds.push((lo, hi));
                lo = hi;
            }
        }
        if bounds.is_empty() && leader.is_some() {
            bounds.push((n, n));
        }
        // Index in `threads` of each thread of the batch in `stopped`.
        let mut idx: Vec<usize> = Vec::with_capacity(PARK_BATCH + 1);
        let (mut interrupt, mut wait) = Default::default();
        let mut waited = Ok(());
        let mut leader_pending = false;
        for (b, &(lo, hi)) in bounds.iter().enumerate() {
            // Parking pays only while parked threads stay asleep: once
            // more than one in eight of them woke during the window (a
            // server's busy workers; see `gives_up`), they would all come
            // back to be stopped with the running ones, each parked thread
            // costs the target's CPU three more switches than a plain stop,
            // and the window only grows. Then the rest of the sleeping
            // threads is stopped at once, as a window without parking does
            // (batches cost a round trip each), the running ones are left
            // to the tail, and woken threads wait for the end.
            let parking = !gives_up(self.park.woke, self.park.parked);
            let hi = if parking {
                hi
            } else if lo < cold && !self.park.gave_up {
                cold
            } else {
                break;
            };
            self.park.gave_up |= !parking;
            let chunk = &order[lo..hi];
            // Interrupted with the first batch; its stop is looked for,
            // without waiting, after each batch (see `LEADER_POLLS`).
            let first = leader.filter(|_| b == 0);
            let t0 = std::time::Instant::now();
            for &i in chunk {
                // ESRCH (thread dying) is resolved by the wait.
                let _ = sys::interrupt(self.threads[i].tid);
            }
            if let Some(li) = first {
                let _ = sys::interrupt(pid);
                leader_pending = true;
                // Interrupted now: the tail must not interrupt it again
                // should its stop come late (a second interrupt would
                // leave a trap pending behind the first stop).
                self.threads[li].hot = false;
            }
            let t1 = std::time::Instant::now();
            let start = self.stopped.len();
            idx.clear();
            for &i in chunk {
                waited = self.collect_one(i, read_regs);
                if waited.is_err() {
                    break;
                }
                if self.stopped.len() > start + idx.len() {
                    idx.push(i);
                    self.let_go_if_awake(&mut idx);
                }
            }
            if let (Ok(()), Some(li), true) = (&waited, leader, leader_pending) {
                waited = self.try_collect_leader(li, read_regs);
                if waited.is_err() {
                    break;
                }
                leader_pending = self.threads[li].st == St::Running;
                if self.stopped.len() > start + idx.len() {
                    idx.push(li);
                    self.let_go_if_awake(&mut idx);
                }
            }
            interrupt += t1 - t0;
            wait += t1.elapsed();
            if waited.is_err() {
                break;
            }
            let mut parked = 0;
            let park = early(&self.stopped[start..]) && parking;
            if read_regs {
                let tp = std::time::Instant::now();
                match self.park_from(start, &idx, park) {
                    Ok(p) => parked = p,
                    Err(e) => {
                        waited = Err(e);
                        break;
                    }
                }
                self.park.longest_batch = self.park.longest_batch.max(t0.elapsed());
                if parking && self.park.parked + parked > 0 {
                    if let Err(e) = self.release_woken(None) {
                        waited = Err(e);
                        break;
                    }
                }
                self.park.parking += tp.elapsed();
            }
            let kept = self.stopped.len() - start;
            self.park.parked += parked;
            self.park.kept += kept;
            if kept > 0 {
                self.park.kept_since.get_or_insert(t0);
            }
        }
        self.scratch = order;
        (interrupt, wait, waited)
    }

    /// The leader's stop, if it arrives within [`LEADER_POLLS`] looks; else it stays to be
    /// collected after every other thread.
    fn try_collect_leader(&mut self, li: usize, read_regs: bool) -> Result<()> {
        for _ in 0..LEADER_POLLS {
            match wait_tid(self.pid, libc::WNOHANG) {
                Ok(Some(st)) => {
                    self.record(li, st, read_regs)?;
                    return Ok(());
                }
                Ok(None) => std::hint::spin_loop(),
                Err(Errno::ECHILD) => {
                    self.threads[li].st = St::Dead;
                    return Ok(());
                }
                Err(e) => return Err(perr("waitpid", self.pid, e)),
            }
        }
        Ok(())
    }

    /// The thread just collected (the last of `stopped`, its index in `threads` the last of
    /// `idx`): if it sits in a clean stop and its next step is user code anyway
    /// ([`crate::next_is_user_code`]: it is running, or woke since its state was read), let it
    /// go at once, to be stopped again with the running ones (`hot`), and drop it from both.
    fn let_go_if_awake(&mut self, idx: &mut Vec<usize>) {
        let (Some(&i), Some(&t)) = (idx.last(), self.stopped.last()) else {
            return;
        };
        if self.threads[i].st != St::Stopped(Stop::Clean) || !regs::next_is_user_code(&t.regs) {
            return;
        }
        self.threads[i].st = match sys::cont(t.tid, 0) {
            Ok(()) => {
                self.threads[i].hot = true;
                self.park.awake += 1;
                St::Running
            }
            Err(Errno::ESRCH) => St::Dying,
            // Still stopped: it stays so.
            Err(_) => return,
        };
        idx.pop();
        self.stopped.pop();
    }

    /// With `park`, park the threads of the batch `stopped[start..]` (their indices in
    /// `threads`: `idx`) that sit in a clean stop inside a system call the kernel restarts (see
    /// [`Tracee::stop_all_then`]) and drop them from `stopped`; a thread that stops otherwise on
    /// the way stays stopped, with the registers it had (it ran no user instruction). Returns
    /// how many were parked.
    fn park_from(&mut self, start: usize, idx: &[usize], park: bool) -> Result<usize> {
        if !park {
            return Ok(0);
        }
        for (k, &i) in idx.iter().enumerate() {
            let t = self.stopped[start + k];
            if self.threads[i].st != St::Stopped(Stop::Clean) || !regs::restarts_syscall(&t.regs) {
                continue;
            }
            self.threads[i].st = match sys::syscall_resume(t.tid, 0) {
                Ok(()) => St::Parked,
                Err(Errno::ESRCH) => St::Dying,
                Err(_) => continue,
            };
        }
        let mut parked = 0;
        for (k, &i) in idx.iter().enumerate() {
            if self.threads[i].st != St::Parked {
                continue;
            }
            let tid = self.threads[i].tid;
            let Some(st) = self.wait_thread(tid)? else {
                self.threads[i].st = St::Dead;
                continue;
            };
            self.threads[i].st = match classify(st) {
                Ev::Syscall => {
                    // The restarted call's entry, at the instruction it was in: anything else
                    // would mean it ran code, and its check no longer holds.
                    let at = self.stopped[start + k].regs;
                    match sys::syscall_info(tid) {
                        Ok(SyscallStop::Entry { ip, .. }) if ip == regs::ip(&at) => {}
                        Ok(other) => {
                            self.threads[i].st = St::Stopped(Stop::Dirty(0));
                            return Err(Error::Unexpected {
                                tid,
                                detail: format!(
                                    "parking: expected the restarted system call's entry at \
                                     {:#x}, got {other:?}",
                                    regs::ip(&at)
                                ),
                            });
                        }
                        Err(Errno::ESRCH) => {
                            self.threads[i].st = St::Dying;
                            continue;
                        }
                        Err(e) => {
                            self.threads[i].st = St::Stopped(Stop::Dirty(0));
                            return Err(perr("PTRACE_GET_SYSCALL_INFO", tid, e));
                        }
                    }
                    match sys::syscall_resume(tid, 0) {
                        Ok(()) => {
                            parked += 1;
                            self.parked.push(self.stopped[start + k]);
                            St::Parked
                        }
                        Err(Errno::ESRCH) => St::Dying,
                        // Still at the entry: it stays stopped there.
                        Err(_) => St::Stopped(Stop::Dirty(0)),
                    }
                }
                Ev::Exited => {
                    self.threads[i].st = St::Dead;
                    if tid == self.pid {
                        return Err(self.process_gone());
                    }
                    continue;
                }
                Ev::Signal(s) => St::Stopped(Stop::Dirty(s)),
                Ev::EventStop(s) if is_stop_signal(s) => St::Stopped(Stop::Group),
                Ev::EventStop(_) => St::Stopped(Stop::Clean),
                Ev::Clone => {
                    if let Ok(child) = sys::geteventmsg(tid) {
                        self.adopt(child as Pid);
                    }
                    St::Stopped(Stop::Dirty(0))
                }
                Ev::Other => St::Stopped(Stop::Dirty(0)),
            };
        }
        // Only the stopped ones stay listed, in order.
        let mut w = start;
        for (k, &i) in idx.iter().enumerate() {
            if matches!(self.threads[i].st, St::Stopped(_)) {
                self.stopped[w] = self.stopped[start + k];
                w += 1;
            }
        }
        self.stopped.truncate(w);
        Ok(parked)
    }

    /// Parked threads whose system call ended wait in a syscall-exit stop (or another stop): let
    /// each go on at once. Inside the window (`detach` `None`) they run again, as running threads
    /// (stopped with those); at its end they are let go (`Some(false)`) or detached
    /// (`Some(true)`). Looks only at what is waiting (`waitid` without collecting), and stops at
    /// the first event that is not a parked thread's (it is collected where it belongs).
    fn release_woken(&mut self, detach: Option<bool>) -> Result<()> {
        while let Some(tid) = sys::peek_event() {
            let Some(i) = self
                .threads
                .iter()
                .position(|t| t.tid == tid && t.st == St::Parked)
            else {
                break;
            };
            let st = match wait_tid(tid, libc::WNOHANG) {
                Ok(Some(st)) => st,
                Ok(None) => break,
                Err(Errno::ECHILD) => {
                    self.threads[i].st = St::Dead;
                    continue;
                }
                Err(e) => return Err(perr("waitpid", tid, e)),
            };
            let ev = classify(st);
            if detach == Some(true) && ev != Ev::Exited {
                let sig = if let Ev::Signal(s) = ev { s } else { 0 };
                self.threads[i].st = match sys::detach(tid, sig) {
                    Ok(()) => St::Dead,
                    Err(_) => St::Dying,
                };
            } else {
                // PTRACE_CONT (no interrupt is pending: none was sent since it was parked).
                self.dispatch_outside(i, ev)?;
                self.threads[i].hot = true;
                self.parked.retain(|t| t.tid != tid);
            }
            self.park.woke += 1;
        }
        Ok(())
    }

    /// End parking: interrupt every parked thread (batch by batch: each is stopped only for its
    /// batch) and detach it, or let it go seized (`detach` false: a stop that may have our
    /// interrupt pending behind it is left `Dirty`, for [`Book::release`] to settle).
    fn unpark(&mut self, detach: bool) -> Result<()> {
        let t0 = std::time::Instant::now();
        let mut parked = std::mem::take(&mut self.scratch);
        parked.clear();
        parked.extend(
            self.threads
                .iter()
                .enumerate()
                .filter(|(_, t)| t.st == St::Parked)
                .map(|(i, _)| i),
        );
        let mut result = Ok(());
        'batches: for chunk in parked.chunks(PARK_BATCH) {
            let tb = std::time::Instant::now();
            for &i in chunk {
                // ESRCH (thread dying) is resolved by the wait.
                let _ = sys::interrupt(self.threads[i].tid);
            }
            for &i in chunk {
                let tid = self.threads[i].tid;
                let st = match self.wait_thread(tid) {
                    Ok(Some(st)) => st,
                    Ok(None) => {
                        self.threads[i].st = St::Dead;
                        continue;
                    }
                    Err(e) => {
                        result = Err(e);
                        break 'batches;
                    }
                };
                let stop = match classify(st) {
                    Ev::Exited => {
                        self.threads[i].st = St::Dead;
                        continue;
                    }
                    Ev::Signal(s) => Stop::Dirty(s),
                    Ev::EventStop(s) if is_stop_signal(s) => Stop::Group,
                    Ev::EventStop(_) => Stop::Clean,
                    Ev::Clone => {
                        if let Ok(child) = sys::geteventmsg(tid) {
                            self.adopt(child as Pid);
                        }
                        Stop::Dirty(0)
                    }
                    // Its call's exit (the interrupt ended it, to be restarted, or it had just
                    // ended): an interrupt may be pending behind it.
                    Ev::Syscall | Ev::Other => Stop::Dirty(0),
                };
                let r = match (detach, stop) {
                    (true, Stop::Dirty(sig)) => sys::detach(tid, sig),
                    (true, _) => sys::detach(tid, 0),
                    (false, Stop::Clean) => sys::cont(tid, 0),
                    (false, Stop::Group) => sys::listen(tid),
                    (false, Stop::Dirty(_)) => {
                        self.threads[i].st = St::Stopped(stop);
                        continue;
                    }
                };
                self.threads[i].st = match r {
                    Ok(()) if detach => St::Dead,
                    Ok(()) => St::Running,
                    Err(Errno::ESRCH) => St::Dying,
                    Err(e) => {
                        self.threads[i].st = St::Stopped(stop);
                        result = Err(perr(
                            if detach {
                                "PTRACE_DETACH"
                            } else {
                                "PTRACE_CONT"
                            },
                            tid,
                            e,
                        ));
                        continue;
                    }
                };
            }
            self.park.longest_batch = self.park.longest_batch.max(tb.elapsed());
        }
        self.scratch = parked;
        self.park.parking += t0.elapsed();
        result
    }

    /// Interrupt every thread let run again by the batches (`hot`, running) for the tail.
    fn interrupt_hot(&self) {
        for t in &self.threads {
            if t.st == St::Running && t.hot {
                // ESRCH (thread dying) is resolved by the wait.
                let _ = sys::interrupt(t.tid);
            }
        }
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
            self.record(i, st, read_regs)?;
        }
    }

    /// Record the stop `st` collected for thread `i` in the window (with its registers pushed
    /// onto `stopped` if `read_regs`). The thread's state says whether a stop is still to come
    /// (`Dying`: killed while stopped; a new thread whose id could not be read).
    fn record(&mut self, i: usize, st: libc::c_int, read_regs: bool) -> Result<()> {
        let tid = self.threads[i].tid;
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
                        return Ok(());
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
                Ok(())
            }
            // Killed while stopped: reap it.
            Err(Errno::ESRCH) => {
                self.threads[i].st = St::Dying;
                Ok(())
            }
            Err(e) => Err(perr("PTRACE_GETREGS", tid, e)),
        }
    }

    /// End a window: resume (stay seized) or detach every stopped thread.
    pub(super) fn release(&mut self, detach: bool) -> Result<()> {
        let mut first_err: Option<Error> = None;
        // The threads that were running first (they were stopped last),
        // then the others.
        for pass_hot in [true, false] {
            if !pass_hot {
                if self.hot_span.0.is_some() {
                    self.hot_span.1 = Some(std::time::Instant::now());
                }
                // Parked threads whose call ended wait for us: before the stopped ones.
                if let Err(e) = self.release_woken(Some(detach)) {
                    first_err.get_or_insert(e);
                }
                // Threads kept stopped for the window (busy workers, once parking gave up): the
                // parked ones are let go before them. Un-parking needs each parked thread to get
                // the target's CPU once, to report its stop: with the kept ones let go first,
                // it would wait behind all of them (busy workers woken together), and hold the
                // parked threads that woke meanwhile.
                let kept = self
                    .threads
                    .iter()
                    .any(|t| !t.hot && matches!(t.st, St::Stopped(_)));
                if kept && self.threads.iter().any(|t| t.st == St::Parked) {
                    if let Err(e) = self.unpark(detach) {
                        first_err.get_or_insert(e);
                    }
                }
            }
            for t in self.threads.iter_mut().filter(|t| t.hot == pass_hot) {
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
                            // Settled below.
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
        }
        self.stopped.clear();
        self.parked.clear();
        // Parked threads last (unless some were kept, above): each interrupted again and let
        // go, stopped for its batch only.
        let end = std::time::Instant::now();
        if let Err(e) = self.unpark(detach) {
            first_err.get_or_insert(e);
        }
        // The longest any thread was held (see `ParkStats::longest_held`).
        let kept = self
            .park
            .kept_since
            .map(|t| end.saturating_duration_since(t));
        let hot = match self.hot_span {
            (Some(a), Some(b)) => Some(b.saturating_duration_since(a)),
            _ => None,
        };
        self.park.longest_held = self
            .park
            .longest_batch
            .max(kept.unwrap_or_default())
            .max(hot.unwrap_or_default());
        // Left in a clone event, a signal-delivery-stop or (un-parked) a syscall stop.
        let dirty = self
            .threads
            .iter()
            .any(|t| matches!(t.st, St::Stopped(Stop::Dirty(_))));
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
}

/// What [`StopWindow::run_alone`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunAlone {
    /// The threads ran and are stopped again (their new registers in the
    /// window).
    Stopped,
    /// The window's threads changed: end the window.
    Changed,
}

/// What one slice of [`StopWindow::run_alone`] took: the wall time from
/// letting the thread go to having it stopped again, and of that, as the
/// kernel accounted it for the thread (`/proc/PID/task/TID/schedstat`),
/// the time it ran on a CPU and the time it was runnable but waited for a
/// CPU (on a loaded machine, most of a slice). `None` when the kernel does
/// not say (no schedstat).
#[derive(Debug, Clone, Copy, Default)]
pub struct Slice {
    /// From PTRACE_CONT to the stop collected.
    pub wall: std::time::Duration,
    /// Time the thread spent on a CPU meanwhile.
    pub ran: Option<std::time::Duration>,
    /// Time the thread spent runnable, waiting for a CPU, meanwhile.
    pub waited: Option<std::time::Duration>,
}

/// How long a slice may wait, beyond its length, for each thread let go
/// to have been put on a CPU; and how often it looks, at most.
const ARRIVAL_WAIT: std::time::Duration = std::time::Duration::from_millis(20);
const ARRIVAL_POLL: std::time::Duration = std::time::Duration::from_millis(1);

/// At most this many schedstat files are kept open by a window.
const SCHED_FILES: usize = 16;

/// Let the thread run for about `d`: sleeping frees our CPU for it, and the
/// timer brings us back (spinning, or yielding to it, would hold it off or
/// hand it our CPU for a whole scheduler slice).
fn let_run(d: std::time::Duration) {
    std::thread::sleep(d);
}

/// The stop window: every traced thread is stopped. End it with [`StopWindow::resume`] or
/// [`StopWindow::detach_all`]; dropping it resumes all threads (also on panic).
pub struct StopWindow<'a> {
    tracee: &'a mut Tracee,
    done: bool,
    /// The schedstat of threads run alone (opened on their first slice).
    sched: Vec<(Pid, Option<SchedStat>)>,
    /// Our thread's priority, raised for the window (dropped after the
    /// threads are let go: `Drop` releases first).
    _boost: sys::Boost,
}

impl std::fmt::Debug for StopWindow<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StopWindow")
            .field("pid", &self.tracee.book.pid)
            .field("threads", &self.tracee.book.stopped)
            .finish()
    }
}

impl StopWindow<'_> {
    /// The stopped threads and their registers.
    pub fn threads(&self) -> &[StoppedThread] {
        &self.tracee.book.stopped
    }

    /// The target pid.
    pub fn pid(&self) -> Pid {
        self.tracee.book.pid
    }

    /// How long reading every thread's state took, just before the window
    /// (the threads running).
    pub fn states_read(&self) -> std::time::Duration {
        self.tracee.book.states_read
    }

    /// How many threads were found running (stopped last, let go first).
    pub fn running(&self) -> usize {
        self.tracee.book.threads.iter().filter(|t| t.hot).count()
    }

    /// When the window's first thread was interrupted.
    pub fn started(&self) -> std::time::Instant {
        self.tracee.book.window_start
    }

    /// How many of the first [`StopWindow::threads`] went through the `early` callback of
    /// [`Tracee::stop_all_then`] (the sleeping threads not parked).
    pub fn early_count(&self) -> usize {
        self.tracee.book.early_count
    }

    /// The threads parked in their system calls (see [`Tracee::stop_all_then`]), with the
    /// registers they had when their batch was checked: they have run no user instruction since.
    pub fn parked_threads(&self) -> &[StoppedThread] {
        &self.tracee.book.parked
    }

    /// What parking did so far in this window (see [`Tracee::stop_all_then`]).
    pub fn park(&self) -> ParkStats {
        self.tracee.book.park
    }

    /// How long stopping took: sending every interrupt, then collecting
    /// every stop with its registers.
    pub fn stop_times(&self) -> (std::time::Duration, std::time::Duration) {
        self.tracee.book.last_stop
    }

    /// Writer on /proc/PID/mem (opened on first use).
    pub fn mem(&mut self) -> Result<&MemWriter> {
        self.tracee.mem()
    }

    /// Let the threads `tids` alone run for about `slice`, every other
    /// thread staying stopped, then stop them again and read their
    /// registers (for leading threads out of code about to be replaced).
    /// Only threads in a clean stop (our interrupt) are let go; what they
    /// do meanwhile is their own business — no register is changed, no
    /// breakpoint or single step is used, so hotsplice vanishing at any
    /// point leaves them running correctly. Running several at once lets
    /// their waits for a CPU overlap on a loaded machine.
    ///
    /// Returns [`RunAlone::Stopped`] with, in `slices` (one per tid, in
    /// order), what each slice took — the new registers are in
    /// [`StopWindow::threads`] — or [`RunAlone::Changed`] when the window
    /// no longer holds exactly the threads it held (one exited, started a
    /// thread, or was not in a clean stop): the caller should end the
    /// window then.
    pub fn run_alone(
        &mut self,
        tids: &[Pid],
        slice: std::time::Duration,
        slices: &mut Vec<Slice>,
    ) -> Result<RunAlone> {
        slices.clear();
        let book = &mut self.tracee.book;
        // (index in `threads`, index in `stopped`) of each, all checked
        // before any is let go.
        let mut at: Vec<(usize, usize)> = Vec::with_capacity(tids.len());
        for &tid in tids {
            let Some(i) = book.threads.iter().position(|t| t.tid == tid) else {
                return Ok(RunAlone::Changed);
            };
            if book.threads[i].st != St::Stopped(Stop::Clean) {
                return Ok(RunAlone::Changed);
            }
            let Some(slot) = book.stopped.iter().position(|t| t.tid == tid) else {
                return Ok(RunAlone::Changed);
            };
            at.push((i, slot));
        }
        for &tid in tids {
            if !self.sched.iter().any(|(t, _)| *t == tid) {
                if self.sched.len() >= SCHED_FILES {
                    self.sched.remove(0);
                }
                self.sched.push((tid, SchedStat::open(book.pid, tid)));
            }
        }
        let sched = |tid: Pid| {
            self.sched
                .iter()
                .find(|(t, _)| *t == tid)
                .and_then(|(_, s)| s.as_ref())
        };
        let at_start: Vec<Option<(u64, u64, u64)>> = tids
            .iter()
            .map(|&t| sched(t).and_then(SchedStat::read))
            .collect();
        let before = book.threads.len();
        let t0 = std::time::Instant::now();
        let mut changed = false;
        let mut let_go = 0;
        for &(i, _) in &at {
            let tid = book.threads[i].tid;
            match sys::cont(tid, 0) {
                Ok(()) => book.threads[i].st = St::Running,
                Err(Errno::ESRCH) => {
                    book.threads[i].st = St::Dying;
                    changed = true;
                    break;
                }
                Err(e) => {
                    // Those let go are stopped again by the next collect
                    // (dropping the window resumes the others).
                    return Err(perr("PTRACE_CONT", tid, e));
                }
            }
            let_go += 1;
        }
        if !changed {
            let_run(slice);
            // On a loaded machine a thread let go may not have had a CPU
            // yet: interrupted now, it would stop where it was, a round
            // for nothing. Give each one, within a bound, the time to be
            // put on a CPU once (the kernel counts those).
            // It has to get a CPU to enter its stop anyway, so waiting
            // for that first costs little more and makes the round count.
            let until = t0 + slice + ARRIVAL_WAIT;
            let mut poll = slice;
            while std::time::Instant::now() < until
                && tids.iter().zip(&at_start).any(|(&t, s)| {
                    s.zip(sched(t).and_then(SchedStat::read))
                        .is_some_and(|(a, b)| b.2 == a.2)
                })
            {
                let_run(poll);
                poll = (poll * 2).min(ARRIVAL_POLL);
            }
        }
        for &(i, _) in &at[..let_go] {
            // ESRCH (exiting) is resolved by the wait.
            let _ = sys::interrupt(book.threads[i].tid);
        }
        for &(i, slot) in &at[..let_go] {
            let had = book.stopped.len();
            book.collect_one(i, true)?;
            if book.stopped.len() != had + 1 {
                changed = true;
                continue;
            }
            let fresh = book.stopped.pop().expect("just pushed");
            book.stopped[slot] = fresh;
        }
        let wall = t0.elapsed();
        if changed || book.threads.len() != before {
            return Ok(RunAlone::Changed);
        }
        for (&tid, start) in tids.iter().zip(&at_start) {
            let delta = start
                .zip(sched(tid).and_then(SchedStat::read))
                .map(|(a, b)| {
                    let ns = std::time::Duration::from_nanos;
                    (ns(b.0.saturating_sub(a.0)), ns(b.1.saturating_sub(a.1)))
                });
            slices.push(Slice {
                wall,
                ran: delta.map(|d| d.0),
                waited: delta.map(|d| d.1),
            });
        }
        Ok(RunAlone::Stopped)
    }

    /// Let every thread run again but stay seized (PTRACE_CONT, re-injecting recorded signals).
    pub fn resume(mut self) -> Result<()> {
        self.done = true;
        self.tracee.book.release(false)
    }

    /// End the window and the tracing: PTRACE_DETACH every thread (re-injecting recorded signals).
    /// The `Tracee` is finished afterwards: further operations on it return [`Error::Detached`]
    /// and dropping it does nothing.
    pub fn detach_all(mut self) -> Result<()> {
        self.done = true;
        self.tracee.book.release(true)?;
        self.tracee.book.finished = true;
        Ok(())
    }
}

impl Drop for StopWindow<'_> {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.tracee.book.release(false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::gives_up;

    #[test]
    fn parking_gives_up_on_a_share_of_wakers_not_on_one() {
        // Idle sleepers: nobody, or one early waker in many, woke.
        assert!(!gives_up(0, 1000));
        assert!(!gives_up(3, 3));
        assert!(!gives_up(20, 999));
        // Busy workers: more than one in eight of those parked woke.
        assert!(gives_up(4, 31));
        assert!(!gives_up(4, 32));
        assert!(gives_up(32, 192));
    }
}
