//! Reading what is applied, from the process itself.

use crate::objects::{loaded_objects, LoadedObject};
use crate::{EngineError, Result};
use hotsplice_arch::current as arch;
use hotsplice_patch::{
    AppliedFunction, AppliedRecord, BuildId, Patch, PatchId, RecordError, IMAGE_MAGIC,
    IMAGE_PREFIX_LEN, RETIRED_MAGIC,
};
use hotsplice_process::{self as process, Mapping, Pid};
use serde::Serialize;

pub(crate) fn refuse_special(pid: Pid) -> Result<()> {
    if pid == 1 {
        return Err(EngineError::Refused {
            pid,
            why: "PID 1 (init): stopping it can hang the machine".into(),
        });
    }
    if pid as u32 == std::process::id() {
        return Err(EngineError::Refused {
            pid,
            why: "hotsplice itself".into(),
        });
    }
    Ok(())
}

pub(crate) fn read_maps(pid: Pid) -> Result<Vec<Mapping>> {
    let mut maps = process::read_maps(pid)?;
    maps.sort_by_key(|m| m.start);
    Ok(maps)
}

/// A record found at the start of a mapping of a process that is not what
/// hotsplice writes there, or that does not fit the mapping it was found
/// in: written by the process itself (any user can forge one in their own
/// processes) or damaged by it. It is reported, never acted upon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Corrupt {
    pub pid: Pid,
    /// Start of the mapping the record was found at.
    pub map_start: u64,
    /// The patch id the record names, if it names a well-formed one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch_id: Option<PatchId>,
    /// What is wrong with it.
    pub why: String,
}

impl std::fmt::Display for Corrupt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "process {}: forged or corrupt patch record at {:#x}{}: {}; hotsplice will not act on it",
            self.pid,
            self.map_start,
            self.patch_id
                .as_ref()
                .map(|id| format!(" (naming patch {id})"))
                .unwrap_or_default(),
            self.why
        )
    }
}

/// What a process says is applied to it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct State {
    /// Well-formed records, oldest first.
    pub patches: Vec<AppliedRecord>,
    /// Forged or damaged records, by address.
    pub corrupt: Vec<Corrupt>,
}

/// Most records read from one process; a process that has more forged
/// them, and the rest are reported unread.
pub const MAX_RECORDS: usize = 256;
/// Most record bytes read from one process (all its records together).
pub const MAX_RECORD_BYTES: usize = 16 << 20;

/// Patches applied to `pid`, oldest first, read from the process itself.
/// Records that are forged or damaged are left out: [`state`] lists them.
pub fn applied(pid: Pid) -> Result<Vec<AppliedRecord>> {
    Ok(state(pid)?.patches)
}

/// Everything the records in `pid` say: the patches applied, and the
/// records that are forged or damaged.
pub fn state(pid: Pid) -> Result<State> {
    let maps = read_maps(pid)?;
    state_in(pid, &maps)
}

pub(crate) fn applied_in(pid: Pid, maps: &[Mapping]) -> Result<Vec<AppliedRecord>> {
    Ok(state_in(pid, maps)?.patches)
}

/// Whether `m` may be a patch mapping: what `apply` maps is anonymous,
/// executable and not writable.
fn may_hold_record(m: &Mapping) -> bool {
    m.exec && !m.write && m.inode == 0 && m.path.as_deref().is_none_or(|p| p.starts_with("[anon:"))
}

/// The records of `pid`, from `maps` (sorted by address). Everything read
/// is bounded by the mapping it is read from and by [`MAX_RECORDS`] and
/// [`MAX_RECORD_BYTES`]; every record is checked against the mappings.
pub(crate) fn state_in(pid: Pid, maps: &[Mapping]) -> Result<State> {
    let candidates: Vec<&Mapping> = maps.iter().filter(|m| may_hold_record(m)).collect();
    let prefixes = process::read_memory_many(
        pid,
        &candidates
            .iter()
            .map(|m| (m.start, IMAGE_PREFIX_LEN.min(m.len() as usize)))
            .collect::<Vec<_>>(),
    );
    let mut st = State::default();
    let corrupt = |map_start: u64, patch_id: Option<PatchId>, why: String| Corrupt {
        pid,
        map_start,
        patch_id,
        why,
    };
    let mut found = 0usize;
    let mut budget = MAX_RECORD_BYTES;
    for (m, prefix) in candidates.iter().zip(&prefixes) {
        let Some(prefix) = prefix.as_deref() else {
            continue;
        };
        let len = match AppliedRecord::record_len(prefix) {
            Ok(len) => len,
            Err(RecordError::NoMagic) => continue,
            Err(e) => {
                st.corrupt
                    .push(corrupt(m.start, None, format!("the record {e}")));
                continue;
            }
        };
        found += 1;
        if found > MAX_RECORDS {
            st.corrupt.push(corrupt(
                m.start,
                None,
                format!(
                    "not read, nor any record after it: the process has more than {MAX_RECORDS} records"
                ),
            ));
            break;
        }
        if len as u64 > m.len() {
            st.corrupt.push(corrupt(
                m.start,
                None,
                format!(
                    "the record claims {len} bytes, more than its mapping's {} bytes",
                    m.len()
                ),
            ));
            continue;
        }
        if len > budget {
            st.corrupt.push(corrupt(
                m.start,
                None,
                format!(
                    "not read: the process's records take more than {MAX_RECORD_BYTES} bytes in all"
                ),
            ));
            continue;
        }
        budget -= len;
        let bytes = match process::read_memory(pid, m.start, len) {
            Ok(b) => b,
            Err(e) => {
                st.corrupt
                    .push(corrupt(m.start, None, format!("unreadable: {e}")));
                continue;
            }
        };
        let h = match AppliedRecord::parse(&bytes) {
            Ok(h) => h,
            Err(e) => {
                let id = AppliedRecord::claimed_id(&bytes);
                st.corrupt
                    .push(corrupt(m.start, id, format!("the record {e}")));
                continue;
            }
        };
        let id = h.patch_id.is_valid().then(|| h.patch_id.clone());
        if let Err(e) = h.validate(len) {
            st.corrupt
                .push(corrupt(m.start, id, format!("the record {e}")));
            continue;
        }
        if let Err(why) = fits_process(&h, m, maps) {
            st.corrupt.push(corrupt(m.start, id, why));
            continue;
        }
        st.patches.push(h);
    }
    // One record per patch: a second with the same id is not ours.
    let mut seen = std::collections::HashSet::new();
    let mut good = Vec::with_capacity(st.patches.len());
    for h in std::mem::take(&mut st.patches) {
        if seen.insert(h.patch_id.clone()) {
            good.push(h);
        } else {
            st.corrupt.push(corrupt(
                h.map_start,
                Some(h.patch_id.clone()),
                format!(
                    "patch {} is recorded by another mapping already",
                    h.patch_id
                ),
            ));
        }
    }
    good.sort_by_key(|h| h.sequence);
    st.patches = good;
    st.corrupt.sort_by_key(|c| c.map_start);
    Ok(st)
}

/// The retired record of patch `id` at `map_start` (see
/// [`hotsplice_patch::RETIRED_MAGIC`]), if that is what the mapping there
/// holds: a patch taken out whose mapping is still there. Checked as a live
/// record is, so that only what hotsplice mapped is ever unmapped.
pub(crate) fn retired_in(
    pid: Pid,
    maps: &[Mapping],
    map_start: u64,
    id: &PatchId,
) -> Option<AppliedRecord> {
    let m = maps
        .iter()
        .find(|m| m.start == map_start && may_hold_record(m))?;
    let prefix = process::read_memory(pid, m.start, IMAGE_PREFIX_LEN.min(m.len() as usize)).ok()?;
    if prefix.get(..RETIRED_MAGIC.len())? != RETIRED_MAGIC {
        return None;
    }
    let mut live = prefix.clone();
    live[..IMAGE_MAGIC.len()].copy_from_slice(IMAGE_MAGIC);
    let len = AppliedRecord::record_len(&live).ok()?;
    if len as u64 > m.len() {
        return None;
    }
    let mut bytes = process::read_memory(pid, m.start, len).ok()?;
    bytes[..IMAGE_MAGIC.len()].copy_from_slice(IMAGE_MAGIC);
    let h = AppliedRecord::decode(&bytes).ok()?;
    (h.patch_id == *id && fits_process(&h, m, maps).is_ok()).then_some(h)
}

/// Whether `[start, end)` is covered by consecutive mappings of `maps`
/// (sorted) that all satisfy `ok`.
fn covered(maps: &[Mapping], start: u64, end: u64, ok: impl Fn(&Mapping) -> bool) -> bool {
    let mut at = start;
    let first = maps.partition_point(|m| m.end <= start);
    for m in &maps[first..] {
        if at >= end {
            break;
        }
        if m.start > at || !ok(m) {
            return false;
        }
        at = m.end;
    }
    at >= end
}

/// Checks of a (self-consistent) record against the mapping it was found
/// at and the process's other mappings: what `apply` wrote always passes.
fn fits_process(
    h: &AppliedRecord,
    m: &Mapping,
    maps: &[Mapping],
) -> std::result::Result<(), String> {
    // The record sits at the start of the read+execute part of what apply
    // mapped; the rest of map_len is its data, mapped right after.
    // (The mapping may be longer than map_len: the kernel merges an
    // anonymous neighbour of the same protection into it.)
    let map_end = h.map_start.saturating_add(h.map_len);
    if h.map_start != m.start {
        return Err(format!(
            "map_start {:#x}, map_len {:#x} do not match the mapping it was found in ({:#x}-{:#x})",
            h.map_start, h.map_len, m.start, m.end
        ));
    }
    if !covered(maps, m.end.min(map_end), map_end, |n| n.inode == 0) {
        return Err(format!(
            "map_start {:#x}, map_len {:#x} reach past the mappings that follow {:#x}-{:#x}",
            h.map_start, h.map_len, m.start, m.end
        ));
    }
    if h.code_start.saturating_add(h.code_len) > m.end {
        return Err(format!(
            "its code {:#x}+{:#x} is not inside the executable mapping {:#x}-{:#x}",
            h.code_start, h.code_len, m.start, m.end
        ));
    }
    for f in &h.functions {
        let end = f.addr.saturating_add(f.size.max(1));
        if !covered(maps, f.addr, end, |n| n.exec) {
            return Err(format!(
                "function {:?} at {:#x}..{end:#x} is not inside an executable mapping of the process (or its object was unloaded since)",
                f.name, f.addr
            ));
        }
    }
    Ok(())
}

/// The bytes the jump over `f` (in the record at `map_start`) overwrote.
pub(crate) fn saved_bytes(pid: Pid, map_start: u64, f: &AppliedFunction) -> Result<Vec<u8>> {
    f.saved_bytes().map(<[u8]>::to_vec).map_err(|e| {
        EngineError::CorruptRecord(Corrupt {
            pid,
            map_start,
            patch_id: None,
            why: format!("the record {e}"),
        })
    })
}

/// The original bytes at `addr`, looking through jumps written by applied
/// patches (each of which saved what it overwrote).
pub(crate) fn original_bytes(
    pid: Pid,
    addr: u64,
    current: &[u8],
    applied: &[AppliedRecord],
) -> Result<Vec<u8>> {
    let mut bytes = current.to_vec();
    for _ in 0..applied.len() {
        let Some(dest) = arch::decode_jump(&bytes, addr) else {
            break;
        };
        let Some((h, f)) = applied.iter().find_map(|h| {
            h.functions
                .iter()
                .find(|f| f.addr == addr && f.new_addr == dest && f.jumped())
                .map(|f| (h, f))
        }) else {
            break;
        };
        let saved = saved_bytes(pid, h.map_start, f)?;
        let n = saved.len().min(bytes.len());
        bytes[..n].copy_from_slice(&saved[..n]);
    }
    Ok(bytes)
}

/// The object of `pid` with the patch's build-id.
pub fn find_target(pid: Pid, patch: &Patch, objects: &[LoadedObject]) -> Result<LoadedObject> {
    let want = &patch.meta.target.build_id;
    if let Some(o) = objects.iter().find(|o| &o.build_id == want) {
        return Ok(o.clone());
    }
    let same_name: Vec<String> = objects
        .iter()
        .filter(|o| {
            let base = o.path.trim_end_matches(" (deleted)");
            base.rsplit('/').next() == Some(patch.meta.target.name.as_str())
        })
        .map(|o| format!("{} has build-id {}", o.path, o.build_id))
        .collect();
    Err(EngineError::WrongBuild {
        pid,
        target: patch.meta.target.name.clone(),
        want: want.clone(),
        found: if same_name.is_empty() {
            String::new()
        } else {
            format!(" ({})", same_name.join("; "))
        },
    })
}

/// Whether `pid` maps the object a patch is for.
pub fn maps_target(pid: Pid, build_id: &BuildId) -> bool {
    let Ok(maps) = read_maps(pid) else {
        return false;
    };
    loaded_objects(pid, &maps)
        .map(|objs| objs.iter().any(|o| o.build_id == *build_id))
        .unwrap_or(false)
}

/// Processes that map an object with `build_id` (never PID 1 or ourselves).
pub fn processes_mapping(build_id: &BuildId) -> Vec<Pid> {
    let me = std::process::id() as Pid;
    process::all_pids()
        .into_iter()
        .filter(|&p| p != 1 && p != me)
        .filter(|&p| maps_target(p, build_id))
        .collect()
}

/// When the process started (clock ticks since boot, `/proc/PID/stat`
/// field 22): with the pid, it names one process even if pids are reused.
pub fn start_time(pid: Pid) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.get(stat.rfind(')')?.checked_add(2)?..)?;
    after.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::undo::removal_writes;

    const PAGES: u64 = 4;

    /// Somewhere in this test binary's code, at least 16 bytes long.
    #[inline(never)]
    fn victim(x: u64) -> u64 {
        std::hint::black_box(x).wrapping_mul(31).rotate_left(7) ^ 0x5a5a
    }

    /// An anonymous read+execute mapping of this process holding the
    /// record `edit` makes of a well-formed one; returns the record as
    /// written and the mapping's start.
    fn mapped(edit: impl FnOnce(&mut AppliedRecord)) -> (AppliedRecord, u64) {
        let len = (PAGES * 4096) as usize;
        // SAFETY: a fresh private anonymous mapping, owned by the test, with
        // an inaccessible page on each side so that the kernel does not
        // merge it with the mappings of other tests.
        let at = unsafe {
            let guarded = libc::mmap(
                std::ptr::null_mut(),
                len + 2 * 4096,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            assert_ne!(guarded, libc::MAP_FAILED);
            let at = guarded.cast::<u8>().add(4096).cast();
            assert_eq!(
                libc::mprotect(at, len, libc::PROT_READ | libc::PROT_WRITE),
                0
            );
            at
        };
        let start = at as u64;
        let addr = victim as *const () as u64;
        let mut h = AppliedRecord {
            patch_id: hotsplice_patch::PatchId::unchecked("abcd1234"),
            description: String::new(),
            target_name: "test".into(),
            target_build_id: hotsplice_patch::BuildId::unchecked("ab"),
            target_bias: 0,
            applied_at: 0,
            sequence: 1,
            tool: "t".into(),
            map_start: start,
            map_len: PAGES * 4096,
            code_start: start + 4096,
            code_len: 64,
            functions: vec![AppliedFunction {
                name: "victim".into(),
                addr,
                size: 16,
                new_addr: start + 4096,
                saved: Some(vec![0xf3, 0x0f, 0x1e, 0xfa, 0x55]),
            }],
            running_may_finish: false,
            unwind: None,
        };
        edit(&mut h);
        let bytes = h.encode();
        // SAFETY: `bytes` fits the first pages of the mapping made above.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), at.cast(), bytes.len().min(len));
            assert_eq!(
                libc::mprotect(at, len, libc::PROT_READ | libc::PROT_EXEC),
                0
            );
        }
        (h, start)
    }

    fn state_at(start: u64) -> (Option<AppliedRecord>, Option<Corrupt>) {
        let me = std::process::id() as Pid;
        let st = state(me).unwrap();
        (
            st.patches.into_iter().find(|h| h.map_start == start),
            st.corrupt.into_iter().find(|c| c.map_start == start),
        )
    }

    fn corrupt_at(start: u64) -> Corrupt {
        match state_at(start) {
            (None, Some(c)) => c,
            other => panic!("the record at {start:#x} is not reported corrupt: {other:?}"),
        }
    }

    #[test]
    fn a_well_formed_record_is_read() {
        let (h, start) = mapped(|_| {});
        assert_eq!(state_at(start), (Some(h), None));
    }

    #[test]
    fn a_four_gib_length_is_refused_without_reading() {
        let (_, start) = mapped(|h| h.patch_id = hotsplice_patch::PatchId::unchecked("fourgib1"));
        // SAFETY: the first page of the test's own mapping.
        unsafe {
            libc::mprotect(start as *mut _, 4096, libc::PROT_READ | libc::PROT_WRITE);
            *((start + 16) as *mut u32) = u32::MAX - 20;
            libc::mprotect(start as *mut _, 4096, libc::PROT_READ | libc::PROT_EXEC);
        }
        let t = std::time::Instant::now();
        let c = corrupt_at(start);
        assert!(c.why.contains("4294967295 bytes"), "{c}");
        assert!(t.elapsed() < std::time::Duration::from_secs(2));
        // A length that fits the limit but not the mapping.
        // SAFETY: as above.
        unsafe {
            libc::mprotect(start as *mut _, 4096, libc::PROT_READ | libc::PROT_WRITE);
            *((start + 16) as *mut u32) = (PAGES * 4096) as u32;
            libc::mprotect(start as *mut _, 4096, libc::PROT_READ | libc::PROT_EXEC);
        }
        let c = corrupt_at(start);
        assert!(c.why.contains("more than its mapping"), "{c}");
    }

    /// Overwrite `from` (in the record's first page) with `to`.
    fn poke(start: u64, from: &[u8], to: &[u8]) {
        assert_eq!(from.len(), to.len());
        // SAFETY: the first page of the test's own mapping.
        unsafe {
            let page = std::slice::from_raw_parts(start as *const u8, 4096);
            let at = page.windows(from.len()).position(|w| w == from).unwrap();
            libc::mprotect(start as *mut _, 4096, libc::PROT_READ | libc::PROT_WRITE);
            std::ptr::copy_nonoverlapping(to.as_ptr(), (start as *mut u8).add(at), to.len());
            libc::mprotect(start as *mut _, 4096, libc::PROT_READ | libc::PROT_EXEC);
        }
    }

    #[test]
    fn undecodable_or_short_saved_bytes_are_corrupt() {
        let (_, start) = mapped(|h| h.patch_id = hotsplice_patch::PatchId::unchecked("badhex12"));
        // Same length: JSON whitespace after the string.
        poke(start, b"\"f30f1efa55\"", b"\"zz\"        ");
        let c = corrupt_at(start);
        assert!(
            c.why
                .contains("saved = \"zz\": the saved bytes are not hex"),
            "{c}"
        );
        assert_eq!(c.patch_id.as_deref(), Some("badhex12"), "{c}");
        for saved in [vec![0x90], vec![0xf3, 0x0f, 0x1e, 0xfa, 0x55, 0x90]] {
            let (_, start) = mapped(|h| h.functions[0].saved = Some(saved.clone()));
            let c = corrupt_at(start);
            assert!(c.why.contains(".saved"), "{saved:?}: {c}");
            assert!(c.to_string().contains("forged or corrupt"), "{c}");
        }
    }

    #[test]
    fn addresses_outside_the_mappings_are_corrupt() {
        let (_, start) = mapped(|h| h.functions[0].addr = 0x1000);
        let c = corrupt_at(start);
        assert!(c.why.contains("not inside an executable mapping"), "{c}");
        assert_eq!(c.patch_id.as_deref(), Some("abcd1234"));
        // Data, not code.
        let data = Box::leak(Box::new([0u8; 64]));
        let (_, start) = mapped(|h| h.functions[0].addr = data.as_ptr() as u64);
        let c = corrupt_at(start);
        assert!(c.why.contains("not inside an executable mapping"), "{c}");
    }

    #[test]
    fn a_record_that_does_not_match_its_mapping_is_corrupt() {
        let (_, start) = mapped(|h| h.map_len = 1 << 40);
        let c = corrupt_at(start);
        assert!(c.why.contains("map_len 0x10000000000"), "{c}");
        let (_, start) = mapped(|h| h.map_len = 4096);
        let c = corrupt_at(start);
        assert!(c.why.contains("code_len"), "{c}");
        let (_, start) = mapped(|h| h.map_start -= 4096);
        let c = corrupt_at(start);
        assert!(c.why.contains("do not match the mapping"), "{c}");
    }

    #[test]
    fn a_second_record_of_one_patch_is_corrupt() {
        let (h, a) = mapped(|h| h.patch_id = hotsplice_patch::PatchId::unchecked("twice123"));
        let (_, b) = mapped(|h| h.patch_id = hotsplice_patch::PatchId::unchecked("twice123"));
        let first = a.min(b);
        let second = a.max(b);
        assert_eq!(state_at(first).0.map(|g| g.patch_id), Some(h.patch_id));
        assert!(corrupt_at(second).why.contains("another mapping"));
    }

    #[test]
    fn a_retired_record_is_not_listed_but_found_for_unmapping() {
        let (h, start) = mapped(|h| h.patch_id = hotsplice_patch::PatchId::unchecked("retired1"));
        // SAFETY: the first page of the test's own mapping.
        unsafe {
            libc::mprotect(start as *mut _, 4096, libc::PROT_READ | libc::PROT_WRITE);
            std::ptr::copy_nonoverlapping(RETIRED_MAGIC.as_ptr(), start as *mut u8, 16);
            libc::mprotect(start as *mut _, 4096, libc::PROT_READ | libc::PROT_EXEC);
        }
        assert_eq!(state_at(start), (None, None));
        let me = std::process::id() as Pid;
        let maps = read_maps(me).unwrap();
        assert_eq!(
            retired_in(me, &maps, start, &PatchId::unchecked("retired1")),
            Some(h)
        );
        assert_eq!(
            retired_in(me, &maps, start, &PatchId::unchecked("other123")),
            None
        );
        // A live record is not retired.
        let (_, live) = mapped(|h| h.patch_id = hotsplice_patch::PatchId::unchecked("notyet12"));
        let maps = read_maps(me).unwrap();
        assert_eq!(
            retired_in(me, &maps, live, &PatchId::unchecked("notyet12")),
            None
        );
    }

    #[test]
    fn undo_and_original_bytes_refuse_bad_saved_bytes() {
        let (mut h, _) = mapped(|_| {});
        h.functions[0].new_addr = h.functions[0].addr + 4096;
        h.functions[0].saved = Some(vec![0x90]);
        let f = &h.functions[0];
        let jump = arch::encode_jump(f.addr, f.new_addr).unwrap().to_vec();
        let err = original_bytes(1234, f.addr, &jump, std::slice::from_ref(&h)).unwrap_err();
        assert!(err.to_string().contains("exactly 5 bytes"), "{err}");
        let Err(err) = removal_writes(1234, &h, &[], &[Some(jump)], false) else {
            panic!("undo would write a short entry");
        };
        assert!(matches!(err, EngineError::CorruptRecord(_)), "{err}");
        assert!(err.to_string().contains("exactly 5 bytes"), "{err}");
        // An entry that cannot be read is refused, never taken as not ours.
        let Err(err) = removal_writes(1234, &h, &[], &[None], true) else {
            panic!("recovery would skip an unreadable entry");
        };
        assert!(err.to_string().contains("cannot be read"), "{err}");
    }
}
