//! Signal frames the kernel leaves on a stack, as far as the busy check
//! needs them: where the interrupted code's stack is.
//!
//! A handler that runs on an alternate signal stack (`sigaltstack` and
//! `SA_ONSTACK`) has the frames it interrupted on another stack, whose
//! return addresses a scan of the alternate stack alone never sees. The
//! kernel's frame on the alternate stack holds a `ucontext`: `uc_stack`
//! (the alternate stack's `ss_sp`, `ss_flags`, `ss_size`, which contain the
//! handler's stack pointer) and then `uc_mcontext`, whose `rsp` is the
//! interrupted stack pointer. [`interrupted_stacks`] finds those frames by
//! that signature among the words of a stack.

/// Words from `uc_stack.ss_sp` to `uc_mcontext.rsp`: `ss_sp` is at offset
/// 16 of the `ucontext`, the `sigcontext` at 40, its `rsp` (16th field) at
/// 40 + 15 * 8 = 160.
const SS_SP_TO_RSP: usize = (160 - 16) / 8;
/// Words from `ss_sp` to `ss_size` (`ss_flags` is an int, padded).
const SS_SP_TO_SIZE: usize = 2;
/// The smallest alternate stack the kernel accepts (MINSIGSTKSZ) and a
/// generous upper bound.
const SS_SIZE: std::ops::RangeInclusive<u64> = 2048..=(1 << 32);
/// `SS_ONSTACK | SS_DISABLE | SS_AUTODISARM`: every bit `ss_flags` may have.
const SS_FLAGS: u64 = 1 | 2 | (1 << 31);

/// If word `i` of `stack` (the live part of a stack, 8-byte little-endian
/// words read from `sp` upwards) starts the `uc_stack` of a signal frame
/// that contains `sp`: the stack pointer that frame saved, where the code
/// its handler interrupted had its stack. Meant to be asked for every word
/// during a scan that reads them anyway (the busy check), so that the
/// stack is walked once. Over-approximates (a stale frame still matches),
/// which only makes the busy check scan more.
#[inline]
pub fn interrupted_at(stack: &[u8], i: usize, sp: u64) -> Option<u64> {
    let word = |i: usize| u64::from_le_bytes(stack[i * 8..i * 8 + 8].try_into().unwrap());
    if (i + SS_SP_TO_RSP + 1) * 8 > stack.len() {
        return None;
    }
    let ss_sp = word(i);
    if ss_sp > sp {
        return None;
    }
    let size = word(i + SS_SP_TO_SIZE);
    if !SS_SIZE.contains(&size) || sp - ss_sp >= size {
        return None;
    }
    if word(i + 1) & 0xffff_ffff & !SS_FLAGS != 0 {
        return None;
    }
    Some(word(i + SS_SP_TO_RSP))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_interrupted_stack_pointer() {
        // A ucontext at word 4 of the scanned stack: uc_flags, uc_link,
        // ss_sp, ss_flags, ss_size, then r8 .. rcx (15 words), rsp, rip.
        let alt = 0x7000_0000u64;
        let sp = alt + 0x3000;
        let mut w = vec![0u64; 4];
        w.extend([1, 0, alt, 1, 0x10000]);
        w.extend([0xaa; 15]);
        w.extend([0x7fff_1234_5678, 0x5555_0000_1000]);
        w.extend([0; 8]);
        let bytes: Vec<u8> = w.iter().flat_map(|x| x.to_le_bytes()).collect();
        let all = |sp| {
            (0..w.len())
                .filter_map(|i| interrupted_at(&bytes, i, sp))
                .collect::<Vec<_>>()
        };
        assert_eq!(all(sp), vec![0x7fff_1234_5678]);
        // Not the stack this thread runs on: no frame.
        assert!(all(alt + 0x20000).is_empty());
    }
}
