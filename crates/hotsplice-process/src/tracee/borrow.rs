//! Borrowing one thread for remote operations: [`Tracee::with_thread`] (a thread of a seized
//! process) and [`with_main_thread`] (the main thread traced alone, the others never stop).
//!
//! A borrow is held by a guard ([`Lease`], [`SoloTrace`]) whose `Drop` gives the thread back —
//! lets it continue with its own registers and puts the bookkeeping right, or detaches it — so
//! every early return, error and panic inside the borrower's closure leaves the target running
//! and the tracer's state true.

use hotsplice_arch::current::remote::Regs;
use nix::errno::Errno;

use super::state::{Book, Drive, St, Stop};
use super::Tracee;
use crate::sys::{self, classify, is_stop_signal, perr, wait_tid, Ev};
use crate::{Error, MemWriter, Pid, RemoteThread, Result};

impl Tracee {
    /// Borrow one thread (the leader if possible): interrupt it, wait, run `f`, restore its
    /// registers exactly and let it continue. For remote syscalls/calls outside the stop window.
    ///
    /// The thread is given back on every path: when `f` returns (`Ok` or `Err`) and when it
    /// panics, the thread continues from where it was and the `Tracee` stays usable (a guard
    /// restores its bookkeeping).
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
        self.book.check_live()?;
        self.book.service_events()?;
        let (i, regs) = self.book.borrow(want)?;
        let tid = self.book.threads[i].tid;
        let pid = self.book.pid;
        if self.mem.is_none() {
            self.mem = MemWriter::open(pid).ok();
        }
        let mut lease = Lease {
            rt: RemoteThread::new(pid, tid, regs, &mut self.stub, &self.mem),
            book: &mut self.book,
            ended: false,
        };
        let r = f(&mut lease.rt);
        let back = lease.end();
        let v = r?;
        back?;
        Ok(v)
    }
}

/// A thread of a [`Tracee`] lent out as a [`RemoteThread`]. Ending it — [`Lease::end`], or
/// dropping it on an early return or a panic — lets the thread continue from where it was,
/// adopts the threads it created meanwhile, records its state (running, or dead), and collects
/// the initial stops of new threads.
struct Lease<'t> {
    rt: RemoteThread<'t>,
    book: &'t mut Book,
    ended: bool,
}

impl Lease<'_> {
    /// Give the thread back; the first error of continuing it and of settling new threads. If
    /// the thread was the leader and died, the process is gone ([`Error::ProcessExited`]).
    fn end(&mut self) -> Result<()> {
        if self.ended {
            return Ok(());
        }
        self.ended = true;
        let tid = self.rt.tid();
        let fin = self.rt.finish();
        let dead = self.rt.dead;
        for c in std::mem::take(&mut self.rt.children) {
            self.book.adopt(c);
        }
        if let Some(t) = self.book.threads.iter_mut().find(|t| t.tid == tid) {
            t.st = if dead { St::Dead } else { St::Running };
        }
        if dead && tid == self.book.pid {
            return Err(self.book.process_gone());
        }
        let settled = self.book.settle_initial();
        fin.and(settled)
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.end() {
            tracing::debug!(tid = self.rt.tid(), error = %e, "giving back a borrowed thread failed");
        }
    }
}

impl Book {
    /// Interrupt one thread and bring it into a clean stop; returns its index and registers.
    fn borrow(&mut self, want: Option<Pid>) -> Result<(usize, Regs)> {
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
}

/// The main thread of a process, seized alone by [`with_main_thread`]. Dropping it detaches the
/// thread: it must be in a ptrace-stop for that, so it is interrupted, collected and detached,
/// re-injecting a signal that arrived meanwhile.
struct SoloTrace {
    tid: Pid,
}

impl SoloTrace {
    /// `PTRACE_SEIZE` the thread `tid` of process `pid` alone (no `PTRACE_O_TRACECLONE`).
    fn seize(pid: Pid, tid: Pid) -> Result<SoloTrace> {
        match sys::seize(tid, false) {
            Ok(()) => Ok(SoloTrace { tid }),
            Err(Errno::ESRCH) => Err(Error::NoSuchProcess { pid }),
            Err(Errno::EPERM) => Err(Error::PermissionDenied {
                pid,
                uid_of_target: None,
            }),
            Err(e) => Err(perr("PTRACE_SEIZE", tid, e)),
        }
    }

    /// Interrupt the thread and wait for the interrupt's stop, delivering any signal that
    /// arrives first.
    fn stop(&self, pid: Pid) -> Result<()> {
        let tid = self.tid;
        sys::interrupt(tid).map_err(|e| perr("PTRACE_INTERRUPT", tid, e))?;
        loop {
            let st = wait_tid(tid, 0)
                .map_err(|e| perr("waitpid", tid, e))?
                .ok_or(Error::ProcessExited { pid })?;
            match classify(st) {
                Ev::Exited => return Err(Error::ProcessExited { pid }),
                Ev::Signal(s) => {
                    sys::cont(tid, s).map_err(|e| perr("PTRACE_CONT", tid, e))?;
                }
                Ev::EventStop(s) if is_stop_signal(s) => {
                    let _ = sys::listen(tid);
                    return Err(Error::Unexpected {
                        tid,
                        detail: "the process is stopped by job control (SIGSTOP/SIGTSTP); send it SIGCONT and retry".into(),
                    });
                }
                _ => return Ok(()),
            }
        }
    }
}

impl Drop for SoloTrace {
    fn drop(&mut self) {
        let tid = self.tid;
        let _ = sys::interrupt(tid);
        if let Ok(Some(st)) = wait_tid(tid, 0) {
            match classify(st) {
                Ev::Exited => {}
                Ev::Signal(s) => {
                    let _ = sys::detach(tid, s);
                }
                _ => {
                    let _ = sys::detach(tid, 0);
                }
            }
        }
    }
}

/// Run `f` on the main thread of `pid`, tracing that thread alone: the other
/// threads never stop. For work after the stop window that only needs a
/// system call in the process (unmapping code no thread can reach any more).
///
/// The thread is detached again on every path, also when `f` panics.
pub fn with_main_thread<R>(
    pid: Pid,
    f: impl FnOnce(&mut RemoteThread<'_>) -> Result<R>,
) -> Result<R> {
    let tid = pid;
    // Declared first, dropped last: detaches after the remote thread below was let go.
    let solo = SoloTrace::seize(pid, tid)?;
    solo.stop(pid)?;
    let regs = match sys::getregs(tid) {
        Ok(regs) => regs,
        Err(e) => {
            let _ = sys::cont(tid, 0);
            return Err(perr("PTRACE_GETREGS", tid, e));
        }
    };
    let mem = MemWriter::open(pid).ok();
    let mut stub = None;
    // Dropping `rt` (also on a panic in `f`) lets the thread continue; then `solo` detaches it.
    let mut rt = RemoteThread::new(pid, tid, regs, &mut stub, &mem);
    let r = f(&mut rt);
    let fin = rt.finish();
    drop(rt);
    let v = r?;
    fin?;
    drop(solo);
    Ok(v)
}

#[cfg(test)]
mod tests {
    use std::panic::{catch_unwind, AssertUnwindSafe};
    use std::process::{Child, Command};
    use std::time::{Duration, Instant};

    use super::*;

    /// A child that only sleeps, killed and reaped when dropped.
    struct Sleeper(Child);

    impl Sleeper {
        fn start() -> Sleeper {
            let c = Command::new("sleep")
                .arg("60")
                .spawn()
                .expect("start sleep");
            let s = Sleeper(c);
            // Wait until it runs `sleep` itself (not the forked test binary any more).
            let deadline = Instant::now() + Duration::from_secs(5);
            while crate::process_name(s.pid()).as_deref() != Some("sleep") {
                assert!(Instant::now() < deadline, "sleep did not start");
                std::thread::sleep(Duration::from_millis(5));
            }
            s
        }

        fn pid(&self) -> Pid {
            self.0.id() as Pid
        }

        /// `State:` and `TracerPid:` of /proc/PID/status.
        fn status(&self) -> (String, String) {
            let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
            let field = |k: &str| {
                s.lines()
                    .find_map(|l| l.strip_prefix(k))
                    .map(|v| v.trim().to_string())
                    .unwrap_or_default()
            };
            (field("State:"), field("TracerPid:"))
        }

        /// Not traced, and running or sleeping (not in a tracing or job-control stop).
        fn assert_free(&self) {
            let (state, tracer) = self.status();
            assert_eq!(tracer, "0", "still traced");
            assert!(
                state.starts_with('S') || state.starts_with('R'),
                "state {state}"
            );
        }
    }

    impl Drop for Sleeper {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn getpid(rt: &mut RemoteThread<'_>) -> Result<u64> {
        rt.syscall(libc::SYS_getpid, &[])
    }

    #[test]
    fn panic_in_with_thread_gives_the_thread_back() {
        let child = Sleeper::start();
        let pid = child.pid();
        let mut tr = Tracee::seize(pid).unwrap();
        let r = catch_unwind(AssertUnwindSafe(|| {
            tr.with_thread(|rt| -> Result<()> {
                getpid(rt)?;
                panic!("borrower panics");
            })
        }));
        assert!(r.is_err());
        // The thread runs (still seized) and the bookkeeping says so: it can be borrowed again,
        // stopped in a window, and detached.
        let (state, tracer) = child.status();
        assert_ne!(tracer, "0");
        assert!(!state.starts_with('t'), "state {state}");
        assert_eq!(tr.thread_count(), 1);
        assert_eq!(tr.with_thread(getpid).unwrap(), pid as u64);
        let w = tr.stop_all().unwrap();
        assert_eq!(w.threads().len(), 1);
        w.resume().unwrap();
        // An early error return gives the thread back too.
        let e = tr.with_thread(|_| -> Result<()> { Err(Error::Detached { pid }) });
        assert!(matches!(e, Err(Error::Detached { .. })));
        assert_eq!(tr.with_thread(getpid).unwrap(), pid as u64);
        drop(tr);
        child.assert_free();
    }

    #[test]
    fn panic_in_with_main_thread_detaches() {
        let child = Sleeper::start();
        let pid = child.pid();
        let r = catch_unwind(|| {
            with_main_thread(pid, |rt| -> Result<()> {
                getpid(rt)?;
                panic!("borrower panics");
            })
        });
        assert!(r.is_err());
        child.assert_free();
        assert_eq!(with_main_thread(pid, getpid).unwrap(), pid as u64);
        child.assert_free();
    }
}
