//! The system interface of this crate: ptrace(2) requests and waitpid(2), allocation-free.
//!
//! Every ptrace request goes through one function here and is one fault-injection point
//! ([`crate::fault`]), in the order the callers make them. nix's typed calls are used wherever
//! nix covers the request; the few raw `libc` calls that remain live in this module only, each
//! with the reason nix cannot do it and why the call is sound:
//!
//! * `waitpid`: nix's `WaitStatus` cannot represent a stop with a real-time signal
//!   (`SIGRTMIN`...), and its `waitpid` fails with `EINVAL` *after* the kernel consumed the
//!   event, which would lose the stop; the raw status is classified by [`classify`].
//! * `PTRACE_CONT`/`PTRACE_SYSCALL`/`PTRACE_DETACH` re-injecting a real-time signal (nix's
//!   `Signal` has none); every other signal goes through nix.
//! * `PTRACE_LISTEN`, `PTRACE_GET_SYSCALL_INFO` and `PTRACE_GETREGSET`/`PTRACE_SETREGSET` of the
//!   extended FPU state: nix 0.29 has no call for them.
//! * `atexit` (fault-injection builds only).

use hotsplice_arch::current::remote::{Regs, XSTATE_REGSET};
use libc::{c_int, c_long, c_uint, c_void};
use nix::errno::Errno;
use nix::sys::ptrace::{self, Options};
use nix::sys::signal::Signal;
use nix::unistd::Pid as NixPid;

use crate::{Error, Pid};

pub(crate) const PTRACE_EVENT_CLONE: c_int = 3;
pub(crate) const PTRACE_EVENT_STOP: c_int = 128;

#[inline]
fn npid(tid: Pid) -> NixPid {
    NixPid::from_raw(tid)
}

/// `sig` as nix sees it: `Some(None)` for no signal, `Some(Some(s))` for a signal nix knows,
/// `None` for one it cannot name (real-time signals), which must go through [`raw`].
#[inline]
fn typed(sig: c_int) -> Option<Option<Signal>> {
    if sig == 0 {
        Some(None)
    } else {
        Signal::try_from(sig).ok().map(Some)
    }
}

/// A raw ptrace request with integer arguments; `Err(errno)` on -1. Not a fault point by itself
/// (its callers are).
#[inline]
fn raw(req: c_uint, tid: Pid, addr: usize, data: usize) -> Result<c_long, Errno> {
    // SAFETY: every request passed here (PTRACE_CONT, PTRACE_SYSCALL, PTRACE_DETACH,
    // PTRACE_LISTEN with integer `addr`/`data`; PTRACE_GET_SYSCALL_INFO, PTRACE_GETREGSET and
    // PTRACE_SETREGSET with `data` pointing to a live buffer or iovec of the size given in
    // `addr` or the iovec) only reads or writes memory the caller lent for this call.
    let r = unsafe { libc::ptrace(req, tid, addr as *mut c_void, data as *mut c_void) };
    if r == -1 {
        Err(Errno::last())
    } else {
        Ok(r)
    }
}

pub(crate) fn perr(op: &'static str, tid: Pid, errno: Errno) -> Error {
    Error::Ptrace { op, tid, errno }
}

/// `PTRACE_SEIZE` with `PTRACE_O_TRACESYSGOOD`, and with `PTRACE_O_TRACECLONE` if `clones`.
#[inline]
pub(crate) fn seize(tid: Pid, clones: bool) -> Result<(), Errno> {
    crate::fault::point("ptrace");
    let mut o = Options::PTRACE_O_TRACESYSGOOD;
    if clones {
        o |= Options::PTRACE_O_TRACECLONE;
    }
    ptrace::seize(npid(tid), o)
}

#[inline]
pub(crate) fn interrupt(tid: Pid) -> Result<(), Errno> {
    crate::fault::point("ptrace");
    ptrace::interrupt(npid(tid))
}

#[inline]
pub(crate) fn cont(tid: Pid, sig: c_int) -> Result<(), Errno> {
    crate::fault::point("ptrace");
    match typed(sig) {
        Some(s) => ptrace::cont(npid(tid), s),
        None => raw(libc::PTRACE_CONT, tid, 0, sig as usize).map(drop),
    }
}

#[inline]
pub(crate) fn detach(tid: Pid, sig: c_int) -> Result<(), Errno> {
    crate::fault::point("ptrace");
    match typed(sig) {
        Some(s) => ptrace::detach(npid(tid), s),
        None => raw(libc::PTRACE_DETACH, tid, 0, sig as usize).map(drop),
    }
}

#[inline]
pub(crate) fn listen(tid: Pid) -> Result<(), Errno> {
    crate::fault::point("ptrace");
    raw(libc::PTRACE_LISTEN, tid, 0, 0).map(drop)
}

/// Resume until the next syscall-entry or syscall-exit stop (or signal), delivering `sig`.
#[inline]
pub(crate) fn syscall_resume(tid: Pid, sig: c_int) -> Result<(), Errno> {
    crate::fault::point("ptrace");
    match typed(sig) {
        Some(s) => ptrace::syscall(npid(tid), s),
        None => raw(libc::PTRACE_SYSCALL, tid, 0, sig as usize).map(drop),
    }
}

const PTRACE_GET_SYSCALL_INFO: c_uint = 0x420e;
const PTRACE_SYSCALL_INFO_ENTRY: u8 = 1;
const PTRACE_SYSCALL_INFO_EXIT: u8 = 2;

/// What `PTRACE_GET_SYSCALL_INFO` says about a syscall stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SyscallStop {
    /// Syscall-entry stop: instruction pointer (after the system-call instruction), number,
    /// first argument.
    Entry { ip: u64, nr: u64, arg0: u64 },
    /// Syscall-exit stop: instruction pointer and the raw return value.
    Exit { ip: u64, value: u64 },
    /// Not a syscall stop (or a seccomp stop).
    Other,
}

pub(crate) fn syscall_info(tid: Pid) -> Result<SyscallStop, Errno> {
    crate::fault::point("ptrace");
    // struct ptrace_syscall_info (the same on every architecture): u8 op, pad, u32 arch,
    // u64 ip, u64 sp, then the entry (nr, args[6]) or exit (rval, is_error) union.
    let mut buf = [0u64; 12];
    raw(
        PTRACE_GET_SYSCALL_INFO,
        tid,
        std::mem::size_of_val(&buf),
        buf.as_mut_ptr() as usize,
    )?;
    let op = buf[0].to_le_bytes()[0];
    Ok(match op {
        PTRACE_SYSCALL_INFO_ENTRY => SyscallStop::Entry {
            ip: buf[1],
            nr: buf[3],
            arg0: buf[4],
        },
        PTRACE_SYSCALL_INFO_EXIT => SyscallStop::Exit {
            ip: buf[1],
            value: buf[3],
        },
        _ => SyscallStop::Other,
    })
}

#[inline]
pub(crate) fn getregs(tid: Pid) -> Result<Regs, Errno> {
    crate::fault::point("ptrace");
    ptrace::getregs(npid(tid))
}

#[inline]
pub(crate) fn setregs(tid: Pid, r: &Regs) -> Result<(), Errno> {
    crate::fault::point("ptrace");
    ptrace::setregs(npid(tid), *r)
}

pub(crate) fn geteventmsg(tid: Pid) -> Result<u64, Errno> {
    crate::fault::point("ptrace");
    ptrace::getevent(npid(tid)).map(|v| v as u64)
}

/// Save the extended FPU state (the architecture's XSAVE register set); `None` if unsupported.
pub(crate) fn get_xstate(tid: Pid) -> Option<Vec<u8>> {
    crate::fault::point("ptrace");
    let mut buf = vec![0u8; 64 * 1024];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // The kernel writes at most `iov_len` bytes into `buf` and shrinks `iov_len` to what it wrote.
    raw(
        libc::PTRACE_GETREGSET,
        tid,
        XSTATE_REGSET,
        &mut iov as *mut _ as usize,
    )
    .ok()?;
    buf.truncate(iov.iov_len);
    Some(buf)
}

pub(crate) fn set_xstate(tid: Pid, buf: &[u8]) -> Result<(), Errno> {
    crate::fault::point("ptrace");
    // The kernel only reads through this iovec.
    let iov = libc::iovec {
        iov_base: buf.as_ptr() as *mut c_void,
        iov_len: buf.len(),
    };
    raw(
        libc::PTRACE_SETREGSET,
        tid,
        XSTATE_REGSET,
        &iov as *const _ as usize,
    )
    .map(drop)
}

/// waitpid(tid, __WALL | extra), retrying EINTR. `Ok(None)` only with WNOHANG and nothing ready.
/// Raw: see the module docs (real-time signal stops).
#[inline]
pub(crate) fn wait_tid(tid: Pid, extra: c_int) -> Result<Option<c_int>, Errno> {
    loop {
        let mut st: c_int = 0;
        // SAFETY: `st` is a live, writable c_int for the duration of the call; waitpid writes
        // nothing else.
        let r = unsafe { libc::waitpid(tid, &mut st, libc::__WALL | extra) };
        if r == tid {
            return Ok(Some(st));
        }
        if r == 0 {
            return Ok(None);
        }
        let e = Errno::last();
        if e != Errno::EINTR {
            return Err(e);
        }
    }
}

/// The thread id of some child or tracee of ours with a stop or exit waiting to be collected,
/// without collecting it (`waitid` with `WNOWAIT`): `None` when none is waiting. Only this
/// thread's own children and tracees (`__WNOTHREAD`): another thread of ours may trace another
/// process, whose events are not this window's. Raw: nix's
/// `waitid` turns the event into a `WaitStatus`, which cannot represent a real-time signal stop;
/// only the id is wanted here.
pub(crate) fn peek_event() -> Option<Pid> {
    // SAFETY: all-zero is a valid `siginfo_t` (plain integers); waitid writes only into it, and
    // with WNOHANG leaves `si_pid` zero when nothing is waiting.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `info` is live and writable for the call.
        let r = unsafe {
            libc::waitid(
                libc::P_ALL,
                0,
                &mut info,
                libc::WEXITED
                    | libc::WSTOPPED
                    | libc::WNOHANG
                    | libc::WNOWAIT
                    | libc::__WALL
                    | libc::__WNOTHREAD,
            )
        };
        if r == 0 {
            break;
        }
        if Errno::last() != Errno::EINTR {
            return None;
        }
    }
    // SAFETY: waitid filled `info` for a child event (or left it zeroed); `si_pid` reads the
    // union member every such event sets.
    let pid = unsafe { info.si_pid() };
    (pid > 0).then_some(pid)
}

/// What a wait status means for a traced thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ev {
    /// Thread is gone (exited or killed).
    Exited,
    /// PTRACE_EVENT_STOP with this signal (SIGTRAP: interrupt / new-thread stop; stop signals: group-stop).
    EventStop(c_int),
    /// PTRACE_EVENT_CLONE (new thread id via GETEVENTMSG).
    Clone,
    /// Signal-delivery-stop with this signal.
    Signal(c_int),
    /// Syscall-entry or syscall-exit stop (only while a borrowed thread runs a remote operation
    /// with `PTRACE_SYSCALL`; seized with `PTRACE_O_TRACESYSGOOD`).
    Syscall,
    /// Some other ptrace event (not enabled by us).
    Other,
}

#[inline]
pub(crate) fn classify(st: c_int) -> Ev {
    if libc::WIFSTOPPED(st) {
        let sig = libc::WSTOPSIG(st);
        match (st >> 16) & 0xffff {
            0 if sig == libc::SIGTRAP | 0x80 => Ev::Syscall,
            0 => Ev::Signal(sig),
            PTRACE_EVENT_STOP => Ev::EventStop(sig),
            PTRACE_EVENT_CLONE => Ev::Clone,
            _ => Ev::Other,
        }
    } else {
        Ev::Exited
    }
}

#[inline]
pub(crate) fn is_stop_signal(sig: c_int) -> bool {
    matches!(
        sig,
        libc::SIGSTOP | libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU
    )
}

pub(crate) fn gettid() -> Pid {
    nix::unistd::gettid().as_raw()
}

/// The nice value the tracing thread takes during a stop window.
const BOOST_NICE: c_int = -20;

/// The calling thread's (only its: `PRIO_PROCESS` with a thread id) nice
/// value raised to [`BOOST_NICE`] while this lives, the old one restored
/// on drop. On a loaded machine each of the window's waits (for a stop,
/// the end of a slice) is otherwise followed by a wait for a CPU of its
/// own while the target's threads stay stopped. Never touches the target.
/// Without the privilege (`EPERM`), nothing changes.
#[derive(Debug)]
pub(crate) struct Boost {
    tid: Pid,
    old: Option<c_int>,
}

pub(crate) fn boost() -> Boost {
    let tid = gettid();
    let who = tid as libc::id_t;
    Errno::clear();
    // SAFETY: getpriority reads a scheduling attribute of our own thread;
    // -1 is a valid result, told from an error by errno (cleared above).
    let old = unsafe { libc::getpriority(libc::PRIO_PROCESS, who) };
    if (old == -1 && Errno::last_raw() != 0) || old <= BOOST_NICE {
        return Boost { tid, old: None };
    }
    // SAFETY: as above; sets our own thread's nice value.
    let set = unsafe { libc::setpriority(libc::PRIO_PROCESS, who, BOOST_NICE) };
    Boost {
        tid,
        old: (set == 0).then_some(old),
    }
}

impl Drop for Boost {
    fn drop(&mut self) {
        if let Some(old) = self.old {
            // SAFETY: puts back our own thread's nice value (raising it
            // needs no privilege).
            unsafe { libc::setpriority(libc::PRIO_PROCESS, self.tid as libc::id_t, old) };
        }
    }
}

/// Run `f` when the process exits normally (fault-injection builds: report the point count).
#[cfg(feature = "fault-injection")]
pub(crate) fn at_exit(f: extern "C" fn()) {
    // SAFETY: `f` is a plain `extern "C"` function with no arguments that lives for the whole
    // program; atexit only stores it. The result (nonzero only when out of memory) is ignored:
    // the count file is then not written, which the tests report.
    unsafe { libc::atexit(f) };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nice_of(tid: Pid) -> c_int {
        // SAFETY: reads a thread's nice value.
        unsafe { libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t) }
    }

    #[test]
    fn boost_raises_only_this_thread_only_while_it_lives() {
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let other = std::thread::spawn(move || {
            tx.send(gettid()).unwrap();
            done_rx.recv().unwrap();
        });
        let other_tid = rx.recv().unwrap();
        let before = nice_of(gettid());
        {
            let b = boost();
            // SAFETY: geteuid cannot fail.
            let root = unsafe { libc::geteuid() } == 0;
            if root && before > BOOST_NICE {
                assert_eq!(nice_of(gettid()), BOOST_NICE, "{b:?}");
            }
            assert_eq!(nice_of(other_tid), before, "another thread was changed");
        }
        assert_eq!(nice_of(gettid()), before);
        done_tx.send(()).unwrap();
        other.join().unwrap();
    }
}
