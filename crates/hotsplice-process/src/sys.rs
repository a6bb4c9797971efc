//! Thin, allocation-free wrappers over ptrace(2) and waitpid(2).

use libc::{c_int, c_uint, c_void};
use nix::errno::Errno;

use crate::{Error, Pid};

pub(crate) const PTRACE_EVENT_CLONE: c_int = 3;
pub(crate) const PTRACE_EVENT_STOP: c_int = 128;
pub(crate) const NT_X86_XSTATE: usize = 0x202;

/// Raw ptrace; `Err(errno)` on -1.
#[inline]
pub(crate) fn ptrace(
    req: c_uint,
    tid: Pid,
    addr: usize,
    data: usize,
) -> Result<libc::c_long, Errno> {
    crate::fault::point("ptrace");
    // SAFETY: all requests used by this crate take integer or valid pointer arguments supplied by callers.
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

#[inline]
pub(crate) fn interrupt(tid: Pid) -> Result<(), Errno> {
    ptrace(libc::PTRACE_INTERRUPT, tid, 0, 0).map(drop)
}

#[inline]
pub(crate) fn cont(tid: Pid, sig: c_int) -> Result<(), Errno> {
    ptrace(libc::PTRACE_CONT, tid, 0, sig as usize).map(drop)
}

#[inline]
pub(crate) fn detach(tid: Pid, sig: c_int) -> Result<(), Errno> {
    ptrace(libc::PTRACE_DETACH, tid, 0, sig as usize).map(drop)
}

#[inline]
pub(crate) fn listen(tid: Pid) -> Result<(), Errno> {
    ptrace(libc::PTRACE_LISTEN, tid, 0, 0).map(drop)
}

/// Resume until the next syscall-entry or syscall-exit stop (or signal), delivering `sig`.
#[inline]
pub(crate) fn syscall_resume(tid: Pid, sig: c_int) -> Result<(), Errno> {
    ptrace(libc::PTRACE_SYSCALL, tid, 0, sig as usize).map(drop)
}

const PTRACE_GET_SYSCALL_INFO: c_uint = 0x420e;
const PTRACE_SYSCALL_INFO_ENTRY: u8 = 1;
const PTRACE_SYSCALL_INFO_EXIT: u8 = 2;

/// What `PTRACE_GET_SYSCALL_INFO` says about a syscall stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SyscallStop {
    /// Syscall-entry stop: instruction pointer (after the `syscall` instruction), number, first
    /// argument.
    Entry { ip: u64, nr: u64, arg0: u64 },
    /// Syscall-exit stop: instruction pointer and the raw return value.
    Exit { ip: u64, value: u64 },
    /// Not a syscall stop (or a seccomp stop).
    Other,
}

pub(crate) fn syscall_info(tid: Pid) -> Result<SyscallStop, Errno> {
    // struct ptrace_syscall_info: u8 op, pad, u32 arch, u64 ip, u64 sp, then the entry
    // (nr, args[6]) or exit (rval, is_error) union.
    let mut buf = [0u64; 12];
    ptrace(
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
pub(crate) fn getregs(tid: Pid) -> Result<libc::user_regs_struct, Errno> {
    // SAFETY: user_regs_struct is plain old data; all-zero is valid.
    let mut r: libc::user_regs_struct = unsafe { std::mem::zeroed() };
    ptrace(libc::PTRACE_GETREGS, tid, 0, &mut r as *mut _ as usize)?;
    Ok(r)
}

#[inline]
pub(crate) fn setregs(tid: Pid, r: &libc::user_regs_struct) -> Result<(), Errno> {
    ptrace(libc::PTRACE_SETREGS, tid, 0, r as *const _ as usize).map(drop)
}

pub(crate) fn geteventmsg(tid: Pid) -> Result<u64, Errno> {
    let mut v: libc::c_ulong = 0;
    ptrace(libc::PTRACE_GETEVENTMSG, tid, 0, &mut v as *mut _ as usize)?;
    Ok(v as u64)
}

/// Save the extended FPU state (XSAVE area); `None` if unsupported.
pub(crate) fn get_xstate(tid: Pid) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    ptrace(
        libc::PTRACE_GETREGSET,
        tid,
        NT_X86_XSTATE,
        &mut iov as *mut _ as usize,
    )
    .ok()?;
    buf.truncate(iov.iov_len);
    Some(buf)
}

pub(crate) fn set_xstate(tid: Pid, buf: &[u8]) -> Result<(), Errno> {
    let iov = libc::iovec {
        iov_base: buf.as_ptr() as *mut c_void,
        iov_len: buf.len(),
    };
    ptrace(
        libc::PTRACE_SETREGSET,
        tid,
        NT_X86_XSTATE,
        &iov as *const _ as usize,
    )
    .map(drop)
}

/// waitpid(tid, __WALL | extra), retrying EINTR. `Ok(None)` only with WNOHANG and nothing ready.
#[inline]
pub(crate) fn wait_tid(tid: Pid, extra: c_int) -> Result<Option<c_int>, Errno> {
    loop {
        let mut st: c_int = 0;
        // SAFETY: plain syscall with a valid out-pointer.
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
    // SAFETY: trivial syscall.
    unsafe { libc::gettid() }
}
