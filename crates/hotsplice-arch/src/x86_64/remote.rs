//! Self-restoring remote operations: the code and stack layout hotsplice uses
//! to borrow a thread of another process for a system call or a function call.
//!
//! **Invariant:** at every instant of a borrow, the thread's registers are
//! either its own (as ptrace found them, with an interrupted system call
//! already set up to restart) or they point into [`STUB`], with the thread's
//! own registers saved on its own stack by [`Frame`]. The stub performs the
//! operation and then restores every general register, the flags, the stack
//! pointer and the instruction pointer from that frame by itself. So if the
//! tracer vanishes at any moment (SIGKILL, crash), the thread finishes the
//! operation and continues exactly where it was; no breakpoint, single step
//! or pending trap is ever involved.
//!
//! Stack layout below the thread's stack pointer `sp` (nothing at or above
//! `sp - 128`, the red zone, is touched):
//!
//! ```text
//!   sp                                  thread's own stack pointer
//!   sp-128 .. sp                        red zone (untouched)
//!   R+8 .. sp-128   (128 bytes)         scratch for a system call's string argument
//!   R = sp-264                          saved rip       (`ret 256` pops it and adds 256)
//!   F = R-128 .. R                      saved r15 ... rax, rflags (popped in that order)
//!   X = (F - xsave_size) & !63 .. F     XSAVE area of the thread's FPU/SSE/AVX state (calls only)
//! ```

/// The general-purpose register set of a thread as `PTRACE_GETREGS` and
/// `PTRACE_SETREGS` transfer it. Code outside this crate passes it through
/// and reads it only with [`ip`] and [`sp`].
pub use libc::user_regs_struct as Regs;

/// The instruction pointer in `r`.
#[inline]
pub fn ip(r: &Regs) -> u64 {
    r.rip
}

/// The stack pointer in `r`.
#[inline]
pub fn sp(r: &Regs) -> u64 {
    r.rsp
}

/// The ELF note type of the register set that holds the extended FPU/SSE/AVX
/// state (`NT_X86_XSTATE`), for `PTRACE_GETREGSET`/`PTRACE_SETREGSET`:
/// saved around a remote call and put back if the called function crashes.
pub const XSTATE_REGSET: usize = 0x202;

/// Most system-call arguments the stub passes (registers it loads).
pub const MAX_ARGS: usize = 6;

/// Bytes of the red zone below the stack pointer that leaf code may use.
pub const RED_ZONE: u64 = 128;
/// What `ret imm16` adds after popping rip: red zone plus string scratch.
const RET_SKIP: u64 = 256;
/// Bytes of saved registers (15 general registers and rflags) at `F`.
const SAVED_LEN: u64 = 16 * 8;

/// The system call the call path makes after the function returns, so that
/// the tracer can read the result at a syscall stop: `getpid`, which has no
/// effect and is allowed by every seccomp policy we know.
pub const COLLECT_SYSCALL: u64 = 39;

/// Offset of the system-call entry: `syscall`, then the restore sequence.
pub const SYSCALL_ENTRY: u64 = 0;
/// Instruction pointer after the system call of the system-call entry (as a
/// syscall stop reports it).
pub const SYSCALL_RETURN: u64 = 2;
/// Offset of the restore sequence.
const RESTORE: usize = 2;
/// Offset of the call entry.
pub const CALL_ENTRY: u64 = 40;
/// Instruction pointer after the collecting system call of the call entry.
pub const CALL_RETURN: u64 = CALL_ENTRY + 41;

/// The stub. System-call entry (at 0), entered with rsp = `F`, rax = number,
/// arguments in rdi, rsi, rdx, r10, r8, r9:
///
/// ```text
///  0: syscall
///  2: pop r15 .. pop rax (15 pops); popfq; ret 256
/// ```
///
/// Call entry (at [`CALL_ENTRY`]), entered with rsp = `X` (16-byte aligned),
/// rbx = `X`, r12 = function, r14 = `F`, arguments in rdi, rsi, rdx, rcx,
/// r8, r9:
///
/// ```text
///     mov r13, rdx; mov eax, -1; mov edx, eax; xsave64 [rbx]; mov rdx, r13
///     call r12
///     mov rdi, rax; mov eax, -1; mov edx, eax; xrstor64 [rbx]
///     mov eax, 39; syscall          ; the tracer reads rdi at this stop
///     mov rsp, r14; jmp restore
/// ```
pub const STUB: [u8; 128] = stub();

const fn stub() -> [u8; 128] {
    let mut s = [0xccu8; 128];
    let restore: [u8; 38] = [
        0x0f, 0x05, // syscall
        0x41, 0x5f, 0x41, 0x5e, 0x41, 0x5d, 0x41, 0x5c, // pop r15 r14 r13 r12
        0x41, 0x5b, 0x41, 0x5a, 0x41, 0x59, 0x41, 0x58, // pop r11 r10 r9 r8
        0x5d, 0x5f, 0x5e, 0x5a, 0x59, 0x5b, 0x58, // pop rbp rdi rsi rdx rcx rbx rax
        0x9d, // popfq
        0xc2, 0x00, 0x01, // ret 256
        0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc,
    ];
    let call: [u8; 51] = [
        0x49, 0x89, 0xd5, // mov r13, rdx
        0xb8, 0xff, 0xff, 0xff, 0xff, // mov eax, -1
        0x89, 0xc2, // mov edx, eax
        0x48, 0x0f, 0xae, 0x23, // xsave64 [rbx]
        0x4c, 0x89, 0xea, // mov rdx, r13
        0x41, 0xff, 0xd4, // call r12
        0x48, 0x89, 0xc7, // mov rdi, rax
        0xb8, 0xff, 0xff, 0xff, 0xff, // mov eax, -1
        0x89, 0xc2, // mov edx, eax
        0x48, 0x0f, 0xae, 0x2b, // xrstor64 [rbx]
        0xb8, 0x27, 0x00, 0x00, 0x00, // mov eax, 39 (getpid)
        0x0f, 0x05, // syscall            <- CALL_RETURN after this
        0x4c, 0x89, 0xf4, // mov rsp, r14
        0xe9, 0, 0, 0, 0, // jmp rel32 restore (patched below)
        0xcc, 0xcc,
    ];
    let mut i = 0;
    while i < restore.len() {
        s[i] = restore[i];
        i += 1;
    }
    let mut i = 0;
    while i < call.len() {
        s[CALL_ENTRY as usize + i] = call[i];
        i += 1;
    }
    // jmp rel32 right after `mov rsp, r14`: target RESTORE.
    let jmp_at = CALL_RETURN as usize + 3;
    let rel = (RESTORE as i64 - (jmp_at as i64 + 5)) as i32;
    let b = rel.to_le_bytes();
    s[jmp_at + 1] = b[0];
    s[jmp_at + 2] = b[1];
    s[jmp_at + 3] = b[2];
    s[jmp_at + 4] = b[3];
    s
}

/// Linux's system-call restart codes, as an interrupted call leaves them in
/// rax while the thread sits in a ptrace stop.
const ERESTARTSYS: i64 = 512;
const ERESTARTNOINTR: i64 = 513;
const ERESTARTNOHAND: i64 = 514;
const ERESTART_RESTARTBLOCK: i64 = 516;
const NR_RESTART_SYSCALL: u64 = 219;
/// Length of `syscall` (and of `int 0x80`).
const SYSCALL_INSN_LEN: u64 = 2;

/// The registers the thread must get back: `found` with an interrupted
/// system call turned into its restart, as the kernel would do on the way
/// back to user space with no handler to run (rip back onto the `syscall`
/// instruction, rax the call again, or `restart_syscall`), and orig_rax = -1
/// so that the kernel does not do it a second time.
pub fn resumable(found: &Regs) -> Regs {
    let mut r = *found;
    if (r.orig_rax as i64) >= 0 {
        match -(r.rax as i64) {
            ERESTARTSYS | ERESTARTNOINTR | ERESTARTNOHAND => {
                r.rax = r.orig_rax;
                r.rip = r.rip.wrapping_sub(SYSCALL_INSN_LEN);
            }
            ERESTART_RESTARTBLOCK => {
                r.rax = NR_RESTART_SYSCALL;
                r.rip = r.rip.wrapping_sub(SYSCALL_INSN_LEN);
            }
            _ => {}
        }
    }
    r.orig_rax = u64::MAX;
    r
}

/// Whether a thread stopped by an interrupt sits in a system call the
/// kernel will restart by itself, with no handler to run, on the way back to
/// user space: rip back onto the `syscall` instruction, which it executes
/// again (the stop window parks such threads inside their call, see
/// `hotsplice-process`). Not for a call that ended with a result or
/// `EINTR`: that thread's next step is user code.
pub fn restarts_syscall(found: &Regs) -> bool {
    (found.orig_rax as i64) >= 0
        && matches!(
            -(found.rax as i64),
            ERESTARTSYS | ERESTARTNOINTR | ERESTARTNOHAND | ERESTART_RESTARTBLOCK
        )
}

/// Whether a thread stopped by an interrupt goes on in user code with no
/// sign of the interrupt: it was in user code (or in an exception, whose
/// entries leave a negative `orig_rax`), or its system call had just ended
/// with a result. Not for a call to be restarted ([`restarts_syscall`]) nor
/// one the interrupt ended with `EINTR`, which the thread sees once it runs.
pub fn next_is_user_code(found: &Regs) -> bool {
    const EINTR: i64 = 4;
    !in_syscall(found) || !(restarts_syscall(found) || -(found.rax as i64) == EINTR)
}

/// The address of the system-call instruction a thread stopped inside a
/// call executed (`ip` is just past it), which a restart executes again.
pub fn syscall_insn(found: &Regs) -> u64 {
    found.rip.wrapping_sub(SYSCALL_INSN_LEN)
}

/// Where a borrow puts things on the thread's stack (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    /// `F`: the saved registers; the stack pointer for the system-call entry.
    pub saved: u64,
    /// Scratch for a string argument: up to [`SCRATCH_LEN`] bytes.
    pub scratch: u64,
}

/// Bytes available at [`Frame::scratch`].
pub const SCRATCH_LEN: usize = (RET_SKIP - RED_ZONE) as usize;

impl Frame {
    /// The layout for a thread whose stack pointer is `sp`; `None` if `sp`
    /// is too low to hold it.
    pub fn below(sp: u64) -> Option<Frame> {
        let r = sp.checked_sub(8 + RET_SKIP)?;
        let saved = r.checked_sub(SAVED_LEN)?;
        Some(Frame {
            saved,
            scratch: r + 8,
        })
    }

    /// The bytes to write at [`Frame::saved`]: the registers of `back`, in
    /// the order the stub pops them, then its rip.
    pub fn bytes(&self, back: &Regs) -> [u8; (SAVED_LEN + 8) as usize] {
        let words = [
            back.r15,
            back.r14,
            back.r13,
            back.r12,
            back.r11,
            back.r10,
            back.r9,
            back.r8,
            back.rbp,
            back.rdi,
            back.rsi,
            back.rdx,
            back.rcx,
            back.rbx,
            back.rax,
            back.eflags,
            back.rip,
        ];
        let mut out = [0u8; (SAVED_LEN + 8) as usize];
        for (i, w) in words.iter().enumerate() {
            out[i * 8..i * 8 + 8].copy_from_slice(&w.to_le_bytes());
        }
        out
    }

    /// Where the XSAVE area of `size` bytes goes for a call (64-byte aligned,
    /// below the saved registers); also the call's stack pointer.
    pub fn xsave_area(&self, size: u64) -> Option<u64> {
        Some(self.saved.checked_sub(size)? & !63)
    }
}

/// Trap flag and direction flag: cleared for code hotsplice runs.
const TF: u64 = 0x100;
const DF: u64 = 0x400;

/// Registers that enter the stub's system-call entry at `stub` for system
/// call `nr` with `args` (at most 6), the thread's own registers `back`
/// being saved at `frame`.
pub fn syscall_regs(back: &Regs, frame: &Frame, stub: u64, nr: u64, args: &[u64]) -> Regs {
    let mut r = *back;
    r.rip = stub + SYSCALL_ENTRY;
    r.rsp = frame.saved;
    r.rax = nr;
    r.orig_rax = u64::MAX;
    r.eflags &= !(TF | DF);
    let slots = [
        &mut r.rdi, &mut r.rsi, &mut r.rdx, &mut r.r10, &mut r.r8, &mut r.r9,
    ];
    for (slot, &a) in slots.into_iter().zip(args) {
        *slot = a;
    }
    r
}

/// Registers that enter the stub's call entry at `stub` to call `func` with
/// `args` (at most 6), the XSAVE area at `xsave` (from [`Frame::xsave_area`]).
pub fn call_regs(
    back: &Regs,
    frame: &Frame,
    xsave: u64,
    stub: u64,
    func: u64,
    args: &[u64],
) -> Regs {
    let mut r = *back;
    r.rip = stub + CALL_ENTRY;
    r.rsp = xsave;
    r.rbx = xsave;
    r.r12 = func;
    r.r14 = frame.saved;
    r.rax = 0;
    r.orig_rax = u64::MAX;
    r.eflags &= !(TF | DF);
    let slots = [
        &mut r.rdi, &mut r.rsi, &mut r.rdx, &mut r.rcx, &mut r.r8, &mut r.r9,
    ];
    for (slot, &a) in slots.into_iter().zip(args) {
        *slot = a;
    }
    r
}

/// The XSAVE header (64 bytes at offset 512 of the area) must be zero for
/// XRSTOR in standard form; this is its offset and length.
pub const XSAVE_HEADER: (u64, usize) = (512, 64);

/// Size of the XSAVE area for every state component this machine's kernel
/// enabled (CPUID leaf 0xD, sub-leaf 0, EBX), if the CPU and kernel support
/// XSAVE.
pub fn xsave_size() -> Option<u64> {
    if !std::arch::is_x86_feature_detected!("xsave") {
        return None;
    }
    // Leaf 0xD exists when XSAVE is supported, which was checked above.
    let r = std::arch::x86_64::__cpuid_count(0xd, 0);
    let size = u64::from(r.ebx);
    (size >= 576).then_some(size)
}

/// The result of a system call at its exit stop.
pub fn syscall_result(r: &Regs) -> u64 {
    r.rax
}

/// The result of a call at the collecting system call's entry stop (the
/// stub moved it into the first argument register).
pub fn call_result(r: &Regs) -> u64 {
    r.rdi
}

/// The system-call number at a syscall stop.
pub fn syscall_number(r: &Regs) -> u64 {
    r.orig_rax
}

/// Whether a stopped thread was stopped inside a system call (not in user
/// code, nor in an interrupt or exception, whose entries leave a negative
/// `orig_rax`).
pub fn in_syscall(r: &Regs) -> bool {
    (r.orig_rax as i64) >= 0
}

/// A function call that marks, in the target's own memory, when it starts
/// and when it returns, so that whether it ran is known whatever happens to
/// hotsplice: called as `thunk(a0, a1, func, state, before, after)`, it
/// stores `before` at `state`, calls `func(a0, a1)`, stores `after` there
/// and returns. (Used for the registration of a patch's unwind
/// information with libgcc: a registration must never be made twice nor
/// undone when it was not made.)
pub const MARKED_CALL: [u8; 29] = [
    0xf3, 0x0f, 0x1e, 0xfa, // endbr64
    0x53, // push %rbx
    0x41, 0x54, // push %r12
    0x41, 0x55, // push %r13 (the call below starts 16-byte aligned)
    0x48, 0x89, 0xcb, // mov %rcx,%rbx (state)
    0x4d, 0x89, 0xcc, // mov %r9,%r12 (after)
    0x4c, 0x89, 0x03, // mov %r8,(%rbx)
    0xff, 0xd2, // call *%rdx
    0x4c, 0x89, 0x23, // mov %r12,(%rbx)
    0x41, 0x5d, // pop %r13
    0x41, 0x5c, // pop %r12
    0x5b, // pop %rbx
    0xc3, // ret
];

#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::{Decoder, DecoderOptions, Mnemonic};

    fn decode(at: usize, n: usize) -> Vec<Mnemonic> {
        let mut d = Decoder::with_ip(64, &STUB[at..], at as u64, DecoderOptions::NONE);
        (0..n).map(|_| d.decode().mnemonic()).collect()
    }

    #[test]
    fn stub_decodes_as_designed() {
        let m = decode(0, 18);
        assert_eq!(m[0], Mnemonic::Syscall);
        assert!(m[1..16].iter().all(|&x| x == Mnemonic::Pop));
        assert_eq!(m[16], Mnemonic::Popfq);
        assert_eq!(m[17], Mnemonic::Ret);
        let c = decode(CALL_ENTRY as usize, 15);
        use Mnemonic::*;
        assert_eq!(
            c,
            vec![
                Mov, Mov, Mov, Xsave64, Mov, Call, Mov, Mov, Mov, Xrstor64, Mov, Syscall, Mov, Jmp,
                Int3
            ]
        );
        // CALL_RETURN is right after the collecting syscall.
        assert_eq!(
            &STUB[CALL_RETURN as usize - 2..CALL_RETURN as usize],
            &[0x0f, 0x05]
        );
        let mut d = Decoder::with_ip(64, &STUB[CALL_RETURN as usize + 3..], CALL_RETURN + 3, 0);
        let j = d.decode();
        assert_eq!(j.near_branch_target(), RESTORE as u64);
    }

    #[test]
    fn frame_pops_back_to_the_stack_pointer() {
        let sp = 0x7fff_0000_1000u64;
        let f = Frame::below(sp).unwrap();
        // 16 pops (incl. popfq) then ret 256 pops rip and skips 256.
        assert_eq!(f.saved + SAVED_LEN + 8 + RET_SKIP, sp);
        assert!(f.scratch + SCRATCH_LEN as u64 <= sp - RED_ZONE);
        assert!(Frame::below(100).is_none());
        let x = f.xsave_area(1000).unwrap();
        assert_eq!(x % 64, 0);
        assert!(x + 1000 <= f.saved);
    }

    #[test]
    fn interrupted_calls_restart() {
        // SAFETY: plain data.
        let mut r: Regs = unsafe { std::mem::zeroed() };
        r.orig_rax = 0; // read
        r.rax = (-512i64) as u64;
        r.rip = 0x1002;
        let b = resumable(&r);
        assert_eq!((b.rip, b.rax, b.orig_rax), (0x1000, 0, u64::MAX));
        r.orig_rax = 35; // nanosleep
        r.rax = (-516i64) as u64;
        let b = resumable(&r);
        assert_eq!((b.rip, b.rax), (0x1000, 219));
        r.rax = (-4i64) as u64; // EINTR: a real result
        let b = resumable(&r);
        assert_eq!((b.rip, b.rax), (0x1002, (-4i64) as u64));
        r.orig_rax = u64::MAX; // not in a system call
        r.rax = (-512i64) as u64;
        assert_eq!(resumable(&r).rip, 0x1002);
    }

    #[test]
    fn the_marked_call_stores_calls_stores_and_returns() {
        let mut d = Decoder::with_ip(64, &MARKED_CALL, 0, DecoderOptions::NONE);
        let mut m = Vec::new();
        while (d.position()) < MARKED_CALL.len() {
            m.push(d.decode().mnemonic());
        }
        use Mnemonic::*;
        assert_eq!(
            m,
            [Endbr64, Push, Push, Push, Mov, Mov, Mov, Call, Mov, Pop, Pop, Pop, Ret]
        );
    }
}
