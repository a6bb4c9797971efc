//! Running system calls and function calls inside a borrowed, stopped target thread.

use libc::c_int;
use nix::errno::Errno;

use crate::sys::{self, classify, perr, wait_tid, Ev};
use crate::{procfs, Error, MemWriter, Pid, Result};

const TF: u64 = 0x100;
const DF: u64 = 0x400;
/// Size of the x86-64 red zone below rsp that leaf functions may use.
const RED_ZONE: u64 = 128;

/// A stopped thread borrowed from a [`crate::Tracee`] (see [`crate::Tracee::with_thread`]).
///
/// Its original registers are restored after every remote operation and when the borrow ends,
/// so a thread interrupted inside a blocking syscall (read, nanosleep, ...) restarts it correctly.
pub struct RemoteThread<'a> {
    pid: Pid,
    tid: Pid,
    saved: libc::user_regs_struct,
    gadget: &'a mut Option<u64>,
    mem: &'a Option<MemWriter>,
    /// Signals that arrived during our operations, re-injected when the borrow ends.
    deferred: Vec<c_int>,
    /// Threads created during a remote call (the caller adopts them).
    pub(crate) children: Vec<Pid>,
    /// The thread is in a signal-delivery-stop (so PTRACE_CONT can inject a signal).
    in_signal_stop: bool,
    /// The thread died under us.
    pub(crate) dead: bool,
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

fn set_args(r: &mut libc::user_regs_struct, args: &[u64], syscall: bool) {
    let mut slots: [&mut u64; 6] = if syscall {
        [
            &mut r.rdi, &mut r.rsi, &mut r.rdx, &mut r.r10, &mut r.r8, &mut r.r9,
        ]
    } else {
        [
            &mut r.rdi, &mut r.rsi, &mut r.rdx, &mut r.rcx, &mut r.r8, &mut r.r9,
        ]
    };
    for (slot, &a) in slots.iter_mut().zip(args) {
        **slot = a;
    }
}

impl<'a> RemoteThread<'a> {
    pub(crate) fn new(
        pid: Pid,
        tid: Pid,
        saved: libc::user_regs_struct,
        gadget: &'a mut Option<u64>,
        mem: &'a Option<MemWriter>,
    ) -> Self {
        RemoteThread {
            pid,
            tid,
            saved,
            gadget,
            mem,
            deferred: Vec::new(),
            children: Vec::new(),
            in_signal_stop: false,
            dead: false,
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

    /// The thread's original registers (restored after every operation).
    pub fn regs(&self) -> &libc::user_regs_struct {
        &self.saved
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
        } else {
            Ok(())
        }
    }

    fn gone(&mut self) -> Error {
        self.dead = true;
        Error::ProcessExited { pid: self.pid }
    }

    fn setregs(&mut self, r: &libc::user_regs_struct) -> Result<()> {
        match sys::setregs(self.tid, r) {
            Ok(()) => Ok(()),
            Err(Errno::ESRCH) => {
                // Killed while stopped: reap it.
                let _ = wait_tid(self.tid, 0);
                Err(self.gone())
            }
            Err(e) => Err(perr("PTRACE_SETREGS", self.tid, e)),
        }
    }

    fn getregs(&mut self) -> Result<libc::user_regs_struct> {
        match sys::getregs(self.tid) {
            Ok(r) => Ok(r),
            Err(Errno::ESRCH) => {
                let _ = wait_tid(self.tid, 0);
                Err(self.gone())
            }
            Err(e) => Err(perr("PTRACE_GETREGS", self.tid, e)),
        }
    }

    fn resume(&mut self, step: bool) -> Result<()> {
        let r = if step {
            sys::singlestep(self.tid, 0)
        } else {
            sys::cont(self.tid, 0)
        };
        match r {
            Ok(()) => Ok(()),
            Err(Errno::ESRCH) => {
                let _ = wait_tid(self.tid, 0);
                Err(self.gone())
            }
            Err(e) => Err(perr(
                if step {
                    "PTRACE_SINGLESTEP"
                } else {
                    "PTRACE_CONT"
                },
                self.tid,
                e,
            )),
        }
    }

    fn wait(&mut self) -> Result<Ev> {
        match wait_tid(self.tid, 0) {
            Ok(Some(st)) => {
                let ev = classify(st);
                match ev {
                    Ev::Exited => Err(self.gone()),
                    Ev::Clone => {
                        if let Ok(c) = sys::geteventmsg(self.tid) {
                            self.children.push(c as Pid);
                        }
                        Ok(ev)
                    }
                    _ => Ok(ev),
                }
            }
            Ok(None) | Err(Errno::ECHILD) => Err(self.gone()),
            Err(e) => Err(perr("waitpid", self.tid, e)),
        }
    }

    /// Address of a `syscall` instruction (0f 05) in an executable mapping: the vDSO if possible,
    /// else any readable executable mapping. Cached in the Tracee.
    fn gadget(&mut self) -> Result<u64> {
        if let Some(g) = *self.gadget {
            return Ok(g);
        }
        let maps = procfs::read_maps(self.pid)?;
        let vdso = maps.iter().filter(|m| m.path.as_deref() == Some("[vdso]"));
        let others = maps
            .iter()
            .filter(|m| m.exec && m.read && m.path.as_deref() != Some("[vdso]"));
        for m in vdso.chain(others) {
            let len = m.len().min(4 << 20) as usize;
            let data = match crate::read_memory(self.pid, m.start, len) {
                Ok(d) => d,
                Err(_) => {
                    let mut d = vec![0u8; len];
                    match self.mem.as_ref().map(|w| w.read(m.start, &mut d)) {
                        Some(Ok(())) => d,
                        _ => continue,
                    }
                }
            };
            if let Some(off) = data.windows(2).position(|w| w == [0x0f, 0x05]) {
                let g = m.start + off as u64;
                *self.gadget = Some(g);
                return Ok(g);
            }
        }
        Err(Error::Unexpected {
            tid: self.tid,
            detail: "no `syscall` instruction found in any executable mapping of the target".into(),
        })
    }

    /// Run one system call in the target thread and return its result (`rax`).
    ///
    /// rip is pointed at a `syscall` instruction, `orig_rax` is set to -1 so the kernel's
    /// syscall-restart logic leaves our registers alone, args go in rdi, rsi, rdx, r10, r8, r9; the
    /// thread is single-stepped over the instruction. A result in -4095..=-1 is returned as
    /// [`Error::RemoteSyscallFailed`]. Registers are restored afterwards.
    pub fn syscall(&mut self, nr: i64, args: &[u64]) -> Result<u64> {
        self.check()?;
        if args.len() > 6 {
            return Err(Error::Unexpected {
                tid: self.tid,
                detail: format!("syscall {nr}: more than 6 arguments"),
            });
        }
        let g = self.gadget()?;
        let mut r = self.saved;
        r.rip = g;
        r.rax = nr as u64;
        r.orig_rax = u64::MAX;
        r.eflags &= !TF;
        set_args(&mut r, args, true);
        self.setregs(&r)?;
        let mut result = None;
        for _ in 0..1000 {
            self.resume(true)?;
            match self.wait()? {
                Ev::Signal(libc::SIGTRAP) => {
                    self.in_signal_stop = true;
                    let cur = self.getregs()?;
                    if cur.rip == g + 2 {
                        result = Some(cur.rax);
                        break;
                    }
                    if cur.rip != g {
                        self.deferred.push(libc::SIGTRAP);
                        break;
                    }
                }
                Ev::Signal(s) => {
                    // A signal arrived before our instruction ran: deliver it later.
                    self.in_signal_stop = true;
                    self.deferred.push(s);
                }
                _ => self.in_signal_stop = false,
            }
        }
        let saved = self.saved;
        self.setregs(&saved)?;
        let rax = result.ok_or_else(|| Error::Unexpected {
            tid: self.tid,
            detail: format!("single-stepping syscall {nr} at {g:#x} did not complete"),
        })?;
        let v = rax as i64;
        if (-4095..0).contains(&v) {
            return Err(Error::RemoteSyscallFailed {
                nr,
                errno: (-v) as i32,
            });
        }
        Ok(rax)
    }

    /// Call the function at `func` in the target with up to 6 integer args (rdi, rsi, rdx, rcx,
    /// r8, r9) and return `rax`.
    ///
    /// The stack pointer is moved 1 KiB below the thread's rsp (16-byte aligned) and a return
    /// address of 0 is pushed; the return then faults at rip 0, which ends the call (that SIGSEGV
    /// is suppressed). Any other crash is an error. General and extended (FPU/SSE/AVX) registers
    /// are restored afterwards. The function must not block forever.
    pub fn call(&mut self, func: u64, args: &[u64]) -> Result<u64> {
        self.check()?;
        if args.len() > 6 {
            return Err(Error::Unexpected {
                tid: self.tid,
                detail: "call: more than 6 arguments".into(),
            });
        }
        let xstate = sys::get_xstate(self.tid);
        let sp = ((self.saved.rsp - 1024) & !0xf) - 8;
        self.mem()?.write(sp, &0u64.to_le_bytes())?;
        let mut r = self.saved;
        r.rsp = sp;
        r.rip = func;
        r.rax = 0;
        r.orig_rax = u64::MAX;
        r.eflags &= !(TF | DF);
        set_args(&mut r, args, false);
        self.setregs(&r)?;
        let outcome: Result<u64> = loop {
            self.resume(false)?;
            match self.wait() {
                Err(e) => return Err(e),
                Ok(Ev::Signal(
                    sig @ (libc::SIGSEGV
                    | libc::SIGBUS
                    | libc::SIGILL
                    | libc::SIGFPE
                    | libc::SIGTRAP
                    | libc::SIGABRT),
                )) => {
                    self.in_signal_stop = true;
                    let cur = self.getregs()?;
                    if sig == libc::SIGSEGV && cur.rip == 0 {
                        break Ok(cur.rax);
                    }
                    break Err(Error::Unexpected {
                        tid: self.tid,
                        detail: format!(
                            "remote call of {func:#x} crashed with signal {sig} at rip {:#x}; target state restored",
                            cur.rip
                        ),
                    });
                }
                Ok(Ev::Signal(s)) => {
                    self.in_signal_stop = true;
                    self.deferred.push(s);
                }
                Ok(_) => self.in_signal_stop = false,
            }
        };
        if let Some(x) = &xstate {
            let _ = sys::set_xstate(self.tid, x);
        }
        let saved = self.saved;
        self.setregs(&saved)?;
        outcome
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
    /// on the thread's stack below the red zone.
    pub fn name_mapping(&mut self, addr: u64, len: u64, name: &str) -> Result<bool> {
        self.check()?;
        if name.len() >= 80
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
        let str_addr = (self.saved.rsp - RED_ZONE - 256 - bytes.len() as u64) & !0xf;
        let mut scratch = None;
        let str_addr = if self.mem()?.write(str_addr, &bytes).is_ok() {
            str_addr
        } else {
            let page = self.mmap(
                0,
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            )?;
            scratch = Some(page);
            self.mem()?.write(page, &bytes)?;
            page
        };
        let r = self.syscall(
            libc::SYS_prctl,
            &[
                libc::PR_SET_VMA as u64,
                libc::PR_SET_VMA_ANON_NAME as u64,
                addr,
                len,
                str_addr,
            ],
        );
        if let Some(p) = scratch {
            let _ = self.munmap(p, 4096);
        }
        match r {
            Ok(_) => Ok(true),
            Err(Error::RemoteSyscallFailed { errno, .. }) if errno == libc::EINVAL => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Restore the original registers and let the thread continue, delivering deferred signals.
    pub(crate) fn finish(&mut self) -> Result<()> {
        if self.finished || self.dead {
            self.finished = true;
            return Ok(());
        }
        self.finished = true;
        let saved = self.saved;
        self.setregs(&saved)?;
        let (inject, rest) = if self.in_signal_stop && !self.deferred.is_empty() {
            (self.deferred[0], &self.deferred[1..])
        } else {
            (0, &self.deferred[..])
        };
        for &s in rest {
            // SAFETY: plain syscall.
            unsafe { libc::syscall(libc::SYS_tgkill, self.pid, self.tid, s) };
        }
        match sys::cont(self.tid, inject) {
            Ok(()) => Ok(()),
            Err(Errno::ESRCH) => {
                let _ = wait_tid(self.tid, 0);
                Err(self.gone())
            }
            Err(e) => Err(perr("PTRACE_CONT", self.tid, e)),
        }
    }
}

impl Drop for RemoteThread<'_> {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}
