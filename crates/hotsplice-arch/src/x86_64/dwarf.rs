//! The x86-64 side of DWARF call-frame information (System V psABI,
//! "DWARF Register Number Mapping"): which DWARF register is which, and
//! the registers a walk starts from.

use super::remote::Regs;

/// DWARF registers a walk tracks: rax, rdx, rcx, rbx, rsi, rdi, rbp, rsp,
/// r8–r15, and the return address column (16).
pub const REGS: usize = 17;
/// The stack pointer's DWARF number.
pub const SP: u16 = 7;
/// The return-address column (the instruction pointer of the caller).
pub const RA: u16 = 16;

/// Whether the ABI has the callee keep register `r` (rbx, rbp, r12–r15,
/// and rsp): a rule-less callee-saved register has the same value in the
/// caller; any other rule-less register is unknown there.
pub fn callee_saved(r: u16) -> bool {
    matches!(r, 3 | 6 | 7 | 12..=15)
}

/// The registers of a stopped thread, by DWARF number; the return-address
/// column holds the instruction pointer (the frame's own pc).
pub fn initial(r: &Regs) -> [Option<u64>; REGS] {
    [
        Some(r.rax),
        Some(r.rdx),
        Some(r.rcx),
        Some(r.rbx),
        Some(r.rsi),
        Some(r.rdi),
        Some(r.rbp),
        Some(r.rsp),
        Some(r.r8),
        Some(r.r9),
        Some(r.r10),
        Some(r.r11),
        Some(r.r12),
        Some(r.r13),
        Some(r.r14),
        Some(r.r15),
        Some(r.rip),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbering_follows_the_psabi() {
        // SAFETY: user_regs_struct is plain integers; all zero is valid.
        let mut r: Regs = unsafe { std::mem::zeroed() };
        r.rsp = 0x7000;
        r.rip = 0x1234;
        r.rbx = 3;
        r.r12 = 12;
        let d = initial(&r);
        assert_eq!(d[SP as usize], Some(0x7000));
        assert_eq!(d[RA as usize], Some(0x1234));
        assert_eq!(d[3], Some(3));
        assert_eq!(d[12], Some(12));
        assert!(callee_saved(SP) && callee_saved(6) && !callee_saved(0));
    }
}
