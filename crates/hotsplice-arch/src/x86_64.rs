//! x86_64: the one place that knows opcodes and `R_X86_64_*` numbers.

use crate::FieldKind;
use iced_x86::{Decoder, DecoderOptions};

pub mod dwarf;
pub mod remote;
pub mod sigframe;
pub mod syscalls;

/// Bytes of the jump written over an old function entry (`jmp rel32`).
pub const JUMP_LEN: usize = 5;
/// Bytes of an indirect-jump stub (`jmp *slot(%rip)`), padded with `int3`.
pub const STUB_LEN: usize = 8;
/// Offset of the 32-bit displacement inside a stub.
pub const STUB_FIELD: usize = 2;
/// Addend for a PC-relative field that ends its instruction.
pub const PC_FIELD_ADDEND: i64 = -4;
/// The `syscall` instruction.
pub const SYSCALL_INSN: [u8; 2] = [0x0f, 0x05];
/// Dynamic relocation types the loader applies to GOT entries.
pub const R_DTPMOD64: u32 = 16;
pub const R_DTPOFF64: u32 = 17;
pub const R_TPOFF64: u32 = 18;

/// Largest distance a `jmp rel32` reaches.
pub const JUMP_REACH: i64 = i32::MAX as i64;

/// `jmp rel32` placed at `from` that lands on `to`, if in reach.
pub fn encode_jump(from: u64, to: u64) -> Option<[u8; JUMP_LEN]> {
    let rel = (to as i128) - (from as i128 + JUMP_LEN as i128);
    let rel = i32::try_from(rel).ok()?;
    let mut out = [0xe9, 0, 0, 0, 0];
    out[1..].copy_from_slice(&rel.to_le_bytes());
    Some(out)
}

/// The destination of a `jmp rel32` at `from`, if `bytes` start with one.
pub fn decode_jump(bytes: &[u8], from: u64) -> Option<u64> {
    if bytes.len() < JUMP_LEN || bytes[0] != 0xe9 {
        return None;
    }
    let rel = i32::from_le_bytes(bytes[1..5].try_into().ok()?);
    Some((from as i64 + JUMP_LEN as i64 + rel as i64) as u64)
}

/// An indirect jump through a pointer slot; the displacement at
/// [`STUB_FIELD`] is filled by a [`FieldKind::Pc32`] relocation.
pub fn stub_template() -> [u8; STUB_LEN] {
    [0xff, 0x25, 0, 0, 0, 0, 0xcc, 0xcc]
}

/// Padding byte for code areas (`int3`).
pub const CODE_FILL: u8 = 0xcc;

/// What an `R_X86_64_*` relocation in a relocatable object means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElfReloc {
    None,
    Abs64,
    Abs32,
    Abs32S,
    Pc32,
    Pc64,
    Plt32,
    /// Reference to a GOT slot; `relax` is how many bytes before the field
    /// the linker may rewrite when it relaxes the access (0, 2 or 3).
    GotPcRel {
        relax: u8,
    },
    TpOff32,
    GotTpOff,
    TlsGd,
    TlsLd,
    DtpOff32,
    DtpOff64,
    Other(u32),
}

impl ElfReloc {
    pub fn from_elf(r_type: u32) -> Self {
        match r_type {
            0 => ElfReloc::None,
            1 => ElfReloc::Abs64,
            2 => ElfReloc::Pc32,
            4 => ElfReloc::Plt32,
            9 => ElfReloc::GotPcRel { relax: 0 },
            10 => ElfReloc::Abs32,
            11 => ElfReloc::Abs32S,
            17 => ElfReloc::DtpOff64,
            19 => ElfReloc::TlsGd,
            20 => ElfReloc::TlsLd,
            21 => ElfReloc::DtpOff32,
            22 => ElfReloc::GotTpOff,
            23 => ElfReloc::TpOff32,
            24 => ElfReloc::Pc64,
            41 => ElfReloc::GotPcRel { relax: 2 },
            42 => ElfReloc::GotPcRel { relax: 3 },
            other => ElfReloc::Other(other),
        }
    }

    /// The `R_X86_64_*` number.
    pub fn to_elf(self) -> u32 {
        match self {
            ElfReloc::None => 0,
            ElfReloc::Abs64 => 1,
            ElfReloc::Pc32 => 2,
            ElfReloc::Plt32 => 4,
            ElfReloc::GotPcRel { relax: 0 } => 9,
            ElfReloc::GotPcRel { relax: 2 } => 41,
            ElfReloc::GotPcRel { .. } => 42,
            ElfReloc::Abs32 => 10,
            ElfReloc::Abs32S => 11,
            ElfReloc::DtpOff64 => 17,
            ElfReloc::TlsGd => 19,
            ElfReloc::TlsLd => 20,
            ElfReloc::DtpOff32 => 21,
            ElfReloc::GotTpOff => 22,
            ElfReloc::TpOff32 => 23,
            ElfReloc::Pc64 => 24,
            ElfReloc::Other(n) => n,
        }
    }

    /// Size of the relocated field.
    pub fn field_size(self) -> usize {
        match self {
            ElfReloc::Abs64 | ElfReloc::Pc64 | ElfReloc::DtpOff64 => 8,
            ElfReloc::None => 0,
            _ => 4,
        }
    }

    /// Whether the field is computed relative to its own address.
    pub fn is_pc_relative(self) -> bool {
        matches!(
            self,
            ElfReloc::Pc32
                | ElfReloc::Pc64
                | ElfReloc::Plt32
                | ElfReloc::GotPcRel { .. }
                | ElfReloc::GotTpOff
                | ElfReloc::TlsGd
                | ElfReloc::TlsLd
        )
    }

    /// The bytes, relative to the relocation offset, that a linker may have
    /// written: the field itself plus whatever relaxation rewrites around it.
    /// Comparing original object code with linked code ignores these bytes.
    pub fn linker_written(self) -> (i64, i64) {
        match self {
            ElfReloc::None => (0, 0),
            ElfReloc::GotPcRel { relax } => (-(relax as i64), 4),
            // IE -> LE turns `mov x@gottpoff(%rip),%r` into `mov $x@tpoff,%r`.
            ElfReloc::GotTpOff => (-3, 4),
            // GD -> IE/LE rewrites the whole 16-byte lea+call sequence.
            ElfReloc::TlsGd => (-4, 12),
            // LD -> LE rewrites the 12-byte lea+call sequence.
            ElfReloc::TlsLd => (-3, 9),
            other => (0, other.field_size() as i64),
        }
    }

    /// The plain field kind for relocations that need no GOT, PLT or TLS help.
    pub fn plain_field(self) -> Option<FieldKind> {
        Some(match self {
            ElfReloc::Abs64 => FieldKind::Abs64,
            ElfReloc::Abs32 => FieldKind::Abs32,
            ElfReloc::Abs32S => FieldKind::Abs32S,
            ElfReloc::Pc32 | ElfReloc::Plt32 => FieldKind::Pc32,
            ElfReloc::Pc64 => FieldKind::Pc64,
            _ => return None,
        })
    }
}

/// For a PC-relative field at `field_offset` inside `code` (a whole function
/// starting at offset 0), the distance from the field to the end of its
/// instruction: the CPU adds the displacement to the *next* instruction's
/// address, so the referenced address is `S + A + this`.
pub fn pc_field_to_insn_end(code: &[u8], field_offset: usize) -> Option<i64> {
    let mut decoder = Decoder::with_ip(64, code, 0, DecoderOptions::NONE);
    while decoder.can_decode() {
        let insn = decoder.decode();
        let start = insn.ip() as usize;
        let end = insn.next_ip() as usize;
        if field_offset >= start && field_offset < end {
            if insn.is_invalid() {
                return None;
            }
            return Some((end - field_offset) as i64);
        }
        if start > field_offset {
            return None;
        }
    }
    None
}

/// Length of the instructions that start the function, up to at least
/// `min` bytes; `None` if the bytes do not decode.
pub fn instructions_cover(code: &[u8], min: usize) -> Option<usize> {
    let mut decoder = Decoder::with_ip(64, code, 0, DecoderOptions::NONE);
    let mut len = 0usize;
    while len < min {
        if !decoder.can_decode() {
            return None;
        }
        let insn = decoder.decode();
        if insn.is_invalid() {
            return None;
        }
        len = insn.next_ip() as usize;
    }
    Some(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jump_round_trips_both_directions() {
        for (from, to) in [(0x1000u64, 0x9000u64), (0x9000, 0x1000)] {
            let j = encode_jump(from, to).unwrap();
            assert_eq!(decode_jump(&j, from), Some(to));
        }
    }

    #[test]
    fn jump_out_of_reach_is_none() {
        assert!(encode_jump(0, 1 << 33).is_none());
    }

    #[test]
    fn field_end_found_for_lea_and_cmp_with_immediate() {
        // lea 0x0(%rip),%rsi ; cmpb $0x0,0x0(%rip)
        let code = [0x48, 0x8d, 0x35, 0, 0, 0, 0, 0x80, 0x3d, 0, 0, 0, 0, 0x00];
        assert_eq!(pc_field_to_insn_end(&code, 3), Some(4));
        assert_eq!(pc_field_to_insn_end(&code, 9), Some(5));
    }

    #[test]
    fn gotpcrelx_masks_opcode_bytes() {
        assert_eq!(ElfReloc::from_elf(42).linker_written(), (-3, 4));
        assert_eq!(ElfReloc::from_elf(2).linker_written(), (0, 4));
    }
}
