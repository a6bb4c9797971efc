//! Reading what is applied, from the process itself.

use crate::objects::{loaded_objects, LoadedObject};
use crate::{EngineError, Result};
use hotsplice_arch::current as arch;
use hotsplice_patch::{ImageHeader, Patch, IMAGE_PREFIX_LEN};
use hotsplice_process::{self as process, Mapping, Pid};

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

/// Patches applied to `pid`, oldest first, read from the process itself.
pub fn applied(pid: Pid) -> Result<Vec<ImageHeader>> {
    let maps = read_maps(pid)?;
    applied_in(pid, &maps)
}

pub(crate) fn applied_in(pid: Pid, maps: &[Mapping]) -> Result<Vec<ImageHeader>> {
    let candidates: Vec<&Mapping> = maps
        .iter()
        .filter(|m| {
            m.exec
                && !m.write
                && m.inode == 0
                && m.path.as_deref().is_none_or(|p| p.starts_with("[anon:"))
        })
        .collect();
    let prefixes = process::read_memory_many(
        pid,
        &candidates
            .iter()
            .map(|m| (m.start, IMAGE_PREFIX_LEN))
            .collect::<Vec<_>>(),
    );
    let mut wanted = Vec::new();
    for (m, p) in candidates.iter().zip(&prefixes) {
        if let Some(len) = p.as_deref().and_then(ImageHeader::json_len) {
            wanted.push((m.start, IMAGE_PREFIX_LEN + len));
        }
    }
    let mut out: Vec<ImageHeader> = process::read_memory_many(pid, &wanted)
        .into_iter()
        .flatten()
        .filter_map(|b| ImageHeader::decode(&b))
        .collect();
    out.sort_by_key(|h| h.sequence);
    Ok(out)
}

/// The original bytes at `addr`, looking through jumps written by applied
/// patches (each of which saved what it overwrote).
pub(crate) fn original_bytes(addr: u64, current: &[u8], applied: &[ImageHeader]) -> Vec<u8> {
    let mut bytes = current.to_vec();
    for _ in 0..applied.len() {
        let Some(dest) = arch::decode_jump(&bytes, addr) else {
            break;
        };
        let Some(f) = applied
            .iter()
            .flat_map(|h| &h.functions)
            .find(|f| f.addr == addr && f.new_addr == dest && !f.saved.is_empty())
        else {
            break;
        };
        let saved = hex::decode(&f.saved).unwrap_or_default();
        let n = saved.len().min(bytes.len());
        bytes[..n].copy_from_slice(&saved[..n]);
    }
    bytes
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
pub fn maps_target(pid: Pid, build_id: &str) -> bool {
    let Ok(maps) = read_maps(pid) else {
        return false;
    };
    loaded_objects(pid, &maps)
        .map(|objs| objs.iter().any(|o| o.build_id == build_id))
        .unwrap_or(false)
}

/// Processes that map an object with `build_id` (never PID 1 or ourselves).
pub fn processes_mapping(build_id: &str) -> Vec<Pid> {
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
    let after = &stat[stat.rfind(')')? + 2..];
    after.split_whitespace().nth(19)?.parse().ok()
}
