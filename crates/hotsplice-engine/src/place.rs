//! Where a patch goes in the target's address space: a free range within
//! `jmp rel32` reach of the object it patches (and below 2 GiB for non-PIE
//! executables, whose code may use 32-bit absolute addresses).

use hotsplice_process::Mapping;

const PAGE: u64 = 4096;
/// Keep this much clear on both sides of the new mapping.
const GUARD: u64 = PAGE;
/// Lowest address user mappings may use (vm.mmap_min_addr's default).
const MIN_ADDR: u64 = 0x10000;
/// Room left above the heap so `brk` can still grow.
const HEAP_ROOM: u64 = 256 << 20;
/// How far a rel32 reaches, with some slack.
const REACH: u64 = (1 << 31) - (16 << 20);

/// A start address for `size` bytes such that every byte of `[obj_start,
/// obj_end)` and of the new range are within rel32 reach of each other.
pub fn find_place(
    maps: &[Mapping],
    obj_start: u64,
    obj_end: u64,
    size: u64,
    low: bool,
) -> Option<u64> {
    // Sizes come from patches: one that overflows has no place.
    let size = size.div_ceil(PAGE).checked_mul(PAGE)?;
    let lo = obj_end.saturating_sub(REACH).max(MIN_ADDR);
    let mut hi = obj_start.saturating_add(REACH); // new range must end below this
    if low {
        hi = hi.min(1 << 31);
    }
    let mut sorted: Vec<&Mapping> = maps.iter().collect();
    sorted.sort_by_key(|m| m.start);
    let mut best: Option<(u64, u64)> = None; // (distance, addr)
    let mut prev_end = 0u64;
    let mut prev_heap = false;
    let consider =
        |gap_start: u64, gap_end: u64, after_heap: bool, best: &mut Option<(u64, u64)>| {
            let mut a_lo = gap_start.saturating_add(GUARD).max(lo);
            if after_heap {
                a_lo = a_lo.saturating_add(HEAP_ROOM);
            }
            let a_hi = gap_end.saturating_sub(GUARD).min(hi);
            if a_hi < a_lo || a_hi - a_lo < size {
                return;
            }
            // Closest placement to the object inside this gap.
            let addr = if a_hi <= obj_start {
                (a_hi - size) & !(PAGE - 1)
            } else {
                match a_lo.div_ceil(PAGE).checked_mul(PAGE) {
                    Some(a) => a,
                    None => return,
                }
            };
            let Some(end) = addr.checked_add(size) else {
                return;
            };
            if addr < a_lo || end > a_hi {
                return;
            }
            let dist = if end <= obj_start {
                obj_start - addr
            } else {
                addr.saturating_sub(obj_end)
            };
            if best.is_none_or(|(d, _)| dist < d) {
                *best = Some((dist, addr));
            }
        };
    for m in &sorted {
        if m.start > prev_end {
            consider(prev_end, m.start, prev_heap, &mut best);
        }
        prev_end = prev_end.max(m.end);
        prev_heap = m.path.as_deref() == Some("[heap]");
    }
    consider(prev_end, 0x7fff_ffff_f000, prev_heap, &mut best);
    best.map(|(_, a)| a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(start: u64, end: u64, path: Option<&str>) -> Mapping {
        Mapping {
            start,
            end,
            read: true,
            write: false,
            exec: false,
            shared: false,
            offset: 0,
            dev: "00:00".into(),
            inode: 0,
            path: path.map(Into::into),
        }
    }

    #[test]
    fn places_close_to_a_pie_executable_without_overlap() {
        let maps = vec![
            m(0x5555_0000_0000, 0x5555_0001_0000, Some("/prog")),
            m(0x5555_0002_0000, 0x5555_0003_0000, Some("[heap]")),
            m(0x7fff_0000_0000, 0x7fff_0001_0000, Some("/lib")),
        ];
        let a = find_place(&maps, 0x5555_0000_0000, 0x5555_0001_0000, 0x3000, false).unwrap();
        for mm in &maps {
            assert!(
                a + 0x3000 <= mm.start || a >= mm.end,
                "{a:#x} overlaps {mm:?}"
            );
        }
        assert!(a.abs_diff(0x5555_0000_0000) < 1 << 20, "{a:#x}");
    }

    #[test]
    fn non_pie_goes_below_2g() {
        let maps = vec![
            m(0x400000, 0x401000, Some("/prog")),
            m(0x402000, 0x403000, Some("[heap]")),
        ];
        let a = find_place(&maps, 0x400000, 0x401000, 0x2000, true).unwrap();
        assert!(a + 0x2000 <= 1 << 31);
        assert!(a >= MIN_ADDR);
    }

    #[test]
    fn sizes_near_u64_max_have_no_place() {
        let maps = vec![m(0x5555_0000_0000, 0x5555_0001_0000, Some("/prog"))];
        for size in [u64::MAX, u64::MAX - PAGE, 1 << 63] {
            assert_eq!(
                find_place(&maps, 0x5555_0000_0000, 0x5555_0001_0000, size, false),
                None
            );
        }
        // An object at the top of the address space.
        let top = !(PAGE - 1);
        assert_eq!(find_place(&[], top - PAGE, top, PAGE, false), None);
    }

    #[test]
    fn no_room_is_none() {
        let maps = vec![m(MIN_ADDR, 0x7fff_ffff_f000, Some("/big"))];
        assert!(find_place(&maps, MIN_ADDR, 0x7fff_ffff_f000, 0x1000, false).is_none());
    }
}
