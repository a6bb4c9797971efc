//! Running system calls and function calls inside a borrowed, stopped target thread.
//!
//! Every operation is *safe to abandon*: see [`hotsplice_arch::current::remote`]. The thread is
//! sent into a stub that performs the operation and restores the thread's own registers from its
//! own stack by itself; hotsplice only watches it with `PTRACE_SYSCALL` to read the result at a
//! syscall stop, then (fast path) puts the registers back itself. If hotsplice dies at any
//! instant, the kernel detaches the thread and it finishes the stub and carries on exactly
//! where it was. Signals that arrive meanwhile are delivered at once (a handler runs on the
//! thread's stack below the stub's frame and returns into the stub), so nothing waits in
//! hotsplice's memory for re-injection.

use std::time::{Duration, Instant};

use hotsplice_arch::current::remote::{self as stub, Frame, Regs};
use nix::errno::Errno;

use crate::sys::{self, classify, perr, wait_tid, Ev, SyscallStop};
use crate::{procfs, Error, MemWriter, Pid, Result};

/// How long a remote operation may take before hotsplice stops waiting for it (the thread then
/// finishes it on its own).
const OP_TIMEOUT: Duration = Duration::from_secs(10);

/// A stopped thread borrowed from a [`crate::Tracee`] (see [`crate::Tracee::with_thread`]).
///
/// Between operations and when the borrow ends the thread has its own registers, with a system
/// call it was interrupted in set up to restart; during an operation it runs hotsplice's stub.
pub struct RemoteThread<'a> {
    pid: Pid,
    tid: Pid,
    /// The registers as ptrace found them.
    found: Regs,
    /// The registers the thread gets back ([`stub::resumable`] of `found`).
    back: Regs,
    stub: &'a mut Option<u64>,
    mem: &'a Option<MemWriter>,
    /// Threads created during a remote call (the caller adopts them).
    pub(crate) children: Vec<Pid>,
    /// The thread died under us.
    pub(crate) dead: bool,
    /// An operation did not finish in time: the thread runs on its own inside the stub.
    abandoned: bool,
    finished: bool,
}

impl std::fmt::Debug for RemoteThread<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteThread")
            .field("pid", &self.pid)
            .field("tid", &self.tid)
            .finish()
    }
}

/// Which entry of the stub an operation uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Syscall,
    Call,
}

impl<'a> RemoteThread<'a> {
    pub(crate) fn new(
        pid: Pid,
        tid: Pid,
        found: Regs,
        stub: &'a mut Option<u64>,
        mem: &'a Option<MemWriter>,
    ) -> Self {
        RemoteThread {
            pid,
            tid,
            found,
            back: stub::resumable(&found),
            stub,
            mem,
            children: Vec::new(),
            dead: false,
            abandoned: false,
            finished: false,
        }
    }

    /// The borrowed thread's id.
    pub fn tid(&self) -> Pid {
        self.tid
    }

    /// The target process id.
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// The thread's registers as ptrace found them when it was borrowed.
    pub fn regs(&self) -> &Regs {
        &self.found
    }

    fn mem(&self) -> Result<&MemWriter> {
        self.mem.as_ref().ok_or(Error::PermissionDenied {
            pid: self.pid,
            uid_of_target: procfs::target_uid(self.pid),
        })
    }

    /// Write bytes into the target (through /proc/PID/mem, so also into read-only pages).
    pub fn write_memory(&self, addr: u64, bytes: &[u8]) -> Result<()> {
        self.mem()?.write(addr, bytes)
    }

    fn check(&self) -> Result<()> {
        if self.dead || self.finished {
            Err(Error::ProcessExited { pid: self.pid })
        } else if self.abandoned {
            Err(Error::Unexpected {
                tid: self.tid,
                detail: "an earlier remote operation did not finish; the thread was left to finish it on its own".into(),
            })
        } else {
            Ok(())
        }
    }

    fn gone(&mut self) -> Error {
        self.dead = true;
        Error::ProcessExited { pid: self.pid }
    }

    fn esrch<T>(&mut self, r: std::result::Result<T, Errno>, op: &'static str) -> Result<T> {
        match r {
            Ok(v) => Ok(v),
            Err(Errno::ESRCH) => {
                // Killed while stopped: reap it.
                let _ = wait_tid(self.tid, 0);
                Err(self.gone())
            }
            Err(e) => Err(perr(op, self.tid, e)),
        }
    }

    fn setregs(&mut self, r: &Regs) -> Result<()> {
        let r = sys::setregs(self.tid, r);
        self.esrch(r, "PTRACE_SETREGS")
    }

    fn getregs(&mut self) -> Result<Regs> {
        let r = sys::getregs(self.tid);
        self.esrch(r, "PTRACE_GETREGS")
    }

    fn resume(&mut self, sig: libc::c_int) -> Result<()> {
        let r = sys::syscall_resume(self.tid, sig);
        self.esrch(r, "PTRACE_SYSCALL")
    }

    /// Wait for the thread's next stop, until `deadline`.
    fn wait(&mut self, deadline: Instant) -> Result<Option<Ev>> {
        let mut spins = 0u32;
        loop {
            match wait_tid(self.tid, libc::WNOHANG) {
                Ok(Some(st)) => {
                    let ev = classify(st);
                    return match ev {
                        Ev::Exited => Err(self.gone()),
                        _ => Ok(Some(ev)),
                    };
                }
                Ok(None) => {}
                Err(Errno::ECHILD) => return Err(self.gone()),
                Err(e) => return Err(perr("waitpid", self.tid, e)),
            }
            spins = spins.wrapping_add(1);
            if spins < 2000 {
                std::hint::spin_loop();
                continue;
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_micros(50));
        }
    }

    /// The stub's address in the target (found or installed once per Tracee).
    fn stub(&mut self) -> Result<u64> {
        if let Some(s) = *self.stub {
            return Ok(s);
        }
        let s = crate::site::stub_site(self.pid, self.mem.as_ref())?;
        *self.stub = Some(s);
        Ok(s)
    }

    fn frame(&self) -> Result<Frame> {
        Frame::below(stub::sp(&self.back)).ok_or_else(|| Error::Unexpected {
            tid: self.tid,
            detail: format!(
                "stack pointer {:#x} too low for a remote operation",
                stub::sp(&self.back)
            ),
        })
    }

    /// Send the thread into the stub at `stub_at` with `regs` (its own registers already saved
    /// at the frame), follow it to the stop at `collect`, and put its registers back. Returns
    /// the raw result.
    fn operate(&mut self, regs: &Regs, kind: Kind, stub_at: u64, collect: u64) -> Result<u64> {
        let xstate = match kind {
            Kind::Call => sys::get_xstate(self.tid),
            Kind::Syscall => None,
        };
        self.setregs(regs)?;
        self.resume(0)?;
        let deadline = Instant::now() + OP_TIMEOUT;
        let mut result = None;
        loop {
            let Some(ev) = self.wait(deadline)? else {
                // The thread is inside the stub (or in a signal handler called from it) and
                // restores itself when done: leave it alone.
                self.abandoned = true;
                return Err(Error::Unexpected {
                    tid: self.tid,
                    detail: format!(
                        "remote operation did not finish within {}s; the thread was left to finish it and carry on by itself",
                        OP_TIMEOUT.as_secs()
                    ),
                });
            };
            match ev {
                Ev::Syscall => {
                    let info = sys::syscall_info(self.tid);
                    let info = self.esrch(info, "PTRACE_GET_SYSCALL_INFO")?;
                    match info {
                        SyscallStop::Exit { ip, value } if ip == collect => {
                            if kind == Kind::Syscall {
                                result = Some(value);
                            }
                            if result.is_some() {
                                break;
                            }
                        }
                        SyscallStop::Entry { ip, nr, arg0 }
                            if ip == collect
                                && kind == Kind::Call
                                && nr == stub::COLLECT_SYSCALL =>
                        {
                            result = Some(arg0);
                        }
                        _ => {}
                    }
                    self.resume(0)?;
                }
                Ev::Signal(sig) => {
                    if kind == Kind::Call && is_fault(sig) {
                        let cur = self.getregs()?;
                        if !(stub_at..stub_at + stub::STUB.len() as u64).contains(&stub::ip(&cur)) {
                            // The called function crashed: suppress the signal, put the
                            // thread back.
                            if let Some(x) = &xstate {
                                let _ = sys::set_xstate(self.tid, x);
                            }
                            let back = self.back;
                            self.setregs(&back)?;
                            return Err(Error::Unexpected {
                                tid: self.tid,
                                detail: format!(
                                    "remote call crashed with signal {sig} at instruction pointer {:#x}; the thread was put back as it was",
                                    stub::ip(&cur)
                                ),
                            });
                        }
                    }
                    // Delivered now; a handler returns into the stub.
                    self.resume(sig)?;
                }
                Ev::Clone => {
                    if let Ok(c) = sys::geteventmsg(self.tid) {
                        self.children.push(c as Pid);
                    }
                    self.resume(0)?;
                }
                Ev::EventStop(_) | Ev::Other => self.resume(0)?,
                Ev::Exited => return Err(self.gone()),
            }
        }
        // At the exit stop of the stub's system call: back to its own registers (what the stub
        // would do itself a few instructions later).
        let back = self.back;
        self.setregs(&back)?;
        result.ok_or_else(|| Error::Unexpected {
            tid: self.tid,
            detail: "remote operation ended without a result".into(),
        })
    }

    /// Run one system call in the target thread and return its result.
    ///
    /// At most 6 arguments, in the architecture's system-call argument registers
    /// ([`stub::syscall_regs`]). A result in -4095..=-1 is returned as
    /// [`Error::RemoteSyscallFailed`]. The thread's registers are its own again afterwards.
    pub fn syscall(&mut self, nr: i64, args: &[u64]) -> Result<u64> {
        self.check()?;
        if args.len() > stub::MAX_ARGS {
            return Err(Error::Unexpected {
                tid: self.tid,
                detail: format!(
                    "{}: more than 6 arguments",
                    hotsplice_arch::current::syscalls::describe(nr)
                ),
            });
        }
        let s = self.stub()?;
        let frame = self.frame()?;
        self.mem()?.write(frame.saved, &frame.bytes(&self.back))?;
        let regs = stub::syscall_regs(&self.back, &frame, s, nr as u64, args);
        let value = self.operate(&regs, Kind::Syscall, s, s + stub::SYSCALL_RETURN)?;
        let v = value as i64;
        if (-4095..0).contains(&v) {
            return Err(Error::RemoteSyscallFailed {
                nr,
                errno: (-v) as i32,
            });
        }
        Ok(value)
    }

    /// Call the function at `func` in the target with up to 6 integer args (passed as the
    /// architecture's calling convention does, [`stub::call_regs`]) and return its integer result.
    ///
    /// The stub saves the thread's extended FPU state on its stack, calls the function on the
    /// thread's stack below that, restores the state, and makes a system call at whose entry stop
    /// hotsplice reads the result. A crash inside the function is an error and
    /// the thread is put back as it was. The function must not block for long.
    pub fn call(&mut self, func: u64, args: &[u64]) -> Result<u64> {
        self.check()?;
        if args.len() > stub::MAX_ARGS {
            return Err(Error::Unexpected {
                tid: self.tid,
                detail: "call: more than 6 arguments".into(),
            });
        }
        let size = stub::xsave_size().ok_or_else(|| Error::Unexpected {
            tid: self.tid,
            detail: "remote calls need XSAVE, which this CPU or kernel does not offer".into(),
        })?;
        let s = self.stub()?;
        let frame = self.frame()?;
        let x = frame.xsave_area(size).ok_or_else(|| Error::Unexpected {
            tid: self.tid,
            detail: "stack pointer too low for a remote call".into(),
        })?;
        let mem = self.mem()?;
        let (off, len) = stub::XSAVE_HEADER;
        mem.write(x + off, &vec![0u8; len])?;
        mem.write(frame.saved, &frame.bytes(&self.back))?;
        let regs = stub::call_regs(&self.back, &frame, x, s, func, args);
        self.operate(&regs, Kind::Call, s, s + stub::CALL_RETURN)
    }

    /// Anonymous `mmap(addr, len, prot, flags, -1, 0)` in the target; returns the address.
    /// With `MAP_FIXED_NOREPLACE` in `flags`, a result different from `addr` is an error.
    pub fn mmap(&mut self, addr: u64, len: u64, prot: i32, flags: i32) -> Result<u64> {
        let r = self.syscall(
            libc::SYS_mmap,
            &[addr, len, prot as u64, flags as u32 as u64, u64::MAX, 0],
        )?;
        if flags & libc::MAP_FIXED_NOREPLACE != 0 && r != addr {
            let _ = self.munmap(r, len);
            return Err(Error::Unexpected {
                tid: self.tid,
                detail: format!(
                    "kernel ignored MAP_FIXED_NOREPLACE: mapped at {r:#x} instead of {addr:#x}"
                ),
            });
        }
        Ok(r)
    }

    /// `munmap(addr, len)` in the target.
    pub fn munmap(&mut self, addr: u64, len: u64) -> Result<()> {
        self.syscall(libc::SYS_munmap, &[addr, len]).map(drop)
    }

    /// `mprotect(addr, len, prot)` in the target.
    pub fn mprotect(&mut self, addr: u64, len: u64, prot: i32) -> Result<()> {
        self.syscall(libc::SYS_mprotect, &[addr, len, prot as u64])
            .map(drop)
    }

    /// Name an anonymous mapping (`prctl(PR_SET_VMA, PR_SET_VMA_ANON_NAME, ...)`), shown as
    /// `[anon:NAME]` in /proc/PID/maps. Best effort: `Ok(false)` if the kernel does not support it.
    /// The name (at most 79 printable ASCII characters, none of `[ ] \ $` and backquote) is written
    /// into the scratch part of the stub's frame on the thread's stack.
    pub fn name_mapping(&mut self, addr: u64, len: u64, name: &str) -> Result<bool> {
        self.check()?;
        if name.len() >= 80
            || name.len() >= stub::SCRATCH_LEN
            || !name
                .bytes()
                .all(|b| (0x20..0x7f).contains(&b) && !b"[]\\$`".contains(&b))
        {
            return Err(Error::Unexpected {
                tid: self.tid,
                detail: format!(
                    "invalid mapping name {name:?} (max 79 printable chars, no [ ] \\ $ `)"
                ),
            });
        }
        let mut bytes = name.as_bytes().to_vec();
        bytes.push(0);
        let frame = self.frame()?;
        self.mem()?.write(frame.scratch, &bytes)?;
        let r = self.syscall(
            libc::SYS_prctl,
            &[
                libc::PR_SET_VMA as u64,
                libc::PR_SET_VMA_ANON_NAME as u64,
                addr,
                len,
                frame.scratch,
            ],
        );
        match r {
            Ok(_) => Ok(true),
            Err(Error::RemoteSyscallFailed { errno, .. }) if errno == libc::EINVAL => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Let the thread continue from where it was.
    pub(crate) fn finish(&mut self) -> Result<()> {
        if self.finished || self.dead || self.abandoned {
            self.finished = true;
            return Ok(());
        }
        self.finished = true;
        let r = sys::cont(self.tid, 0);
        self.esrch(r, "PTRACE_CONT")
    }
}

fn is_fault(sig: libc::c_int) -> bool {
    matches!(
        sig,
        libc::SIGSEGV | libc::SIGBUS | libc::SIGILL | libc::SIGFPE | libc::SIGTRAP | libc::SIGABRT
    )
}

impl Drop for RemoteThread<'_> {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}
