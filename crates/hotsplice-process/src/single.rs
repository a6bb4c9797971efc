//! Borrowing one thread without tracing the rest of the process.

use crate::sys::{self, classify, perr, wait_tid, Ev};
use crate::{Error, MemWriter, Pid, RemoteThread, Result};
use nix::errno::Errno;

/// Run `f` on the main thread of `pid`, tracing that thread alone: the other
/// threads never stop. For work after the stop window that only needs a
/// system call in the process (unmapping code no thread can reach any more).
pub fn with_main_thread<R>(
    pid: Pid,
    f: impl FnOnce(&mut RemoteThread<'_>) -> Result<R>,
) -> Result<R> {
    let tid = pid;
    if let Err(e) = sys::ptrace(
        libc::PTRACE_SEIZE,
        tid,
        0,
        libc::PTRACE_O_TRACESYSGOOD as usize,
    ) {
        return Err(match e {
            Errno::ESRCH => Error::NoSuchProcess { pid },
            Errno::EPERM => Error::PermissionDenied {
                pid,
                uid_of_target: None,
            },
            e => perr("PTRACE_SEIZE", tid, e),
        });
    }
    let stopped = stop(tid, pid);
    let r = match stopped {
        Ok(()) => match sys::getregs(tid) {
            Ok(regs) => {
                let mem = MemWriter::open(pid).ok();
                let mut stub = None;
                let mut rt = RemoteThread::new(pid, tid, regs, &mut stub, &mem);
                let r = f(&mut rt);
                let fin = rt.finish();
                drop(rt);
                r.and_then(|v| fin.map(|_| v))
            }
            Err(e) => {
                let _ = sys::cont(tid, 0);
                Err(perr("PTRACE_GETREGS", tid, e))
            }
        },
        Err(e) => Err(e),
    };
    // Detach: it must be in a ptrace-stop for that.
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
    r
}

/// Interrupt `tid` and wait for the interrupt's stop, delivering any signal
/// that arrives first.
fn stop(tid: Pid, pid: Pid) -> Result<()> {
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
            Ev::EventStop(s) if sys::is_stop_signal(s) => {
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
