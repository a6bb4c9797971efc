//! What an apply reads of the process before changing anything: the
//! target object, the patches applied, the running code (checked against
//! what the patch expects) and the symbols of other objects.

use crate::objects::{exports_of, loaded_objects, LoadedObject};
use crate::state::{applied_in, find_target, original_bytes, read_maps};
use crate::undo::jumped_entries;
use crate::{add, EngineError, Result};
use hotsplice_arch::current as arch;
use hotsplice_patch::{AppliedRecord, ObjectKind, Patch, PatchId, RelocTarget};
use hotsplice_process::{self as process, Mapping, Pid};
use std::collections::HashMap;

/// The process as an apply found it.
pub(crate) struct Found {
    /// Sorted by address.
    pub maps: Vec<Mapping>,
    pub target: LoadedObject,
    /// Patches applied, oldest first.
    pub applied: Vec<AppliedRecord>,
    /// The applied patch to take out in the same window, if any.
    pub old: Option<AppliedRecord>,
    /// The first bytes (at most a jump's length) of each function the patch
    /// replaces, as they are now, in the patch's order.
    pub entries: Vec<Vec<u8>>,
    /// The first bytes of each function `old` jumps from, in its order.
    pub old_entries: Vec<Option<Vec<u8>>>,
    /// The objects the process maps (for the window's unwind tables).
    pub objects: Vec<LoadedObject>,
    /// Symbols of other objects by name: address, and whether an IFUNC.
    pub dynamic: HashMap<String, (u64, bool)>,
    /// IFUNC resolvers to call in the process (addresses, sorted).
    pub ifuncs: Vec<u64>,
}

/// Read what applying `patch` to `pid` (taking out `replace`) needs, and
/// refuse what cannot be applied: no target of the patch's build, a patch
/// already applied, a `replace` that is not, running code that is not what
/// the patch expects, a symbol no object exports.
pub(crate) fn inspect(pid: Pid, patch: &Patch, replace: Option<&PatchId>) -> Result<Found> {
    let meta = &patch.meta;
    let maps = read_maps(pid)?;
    let objects = loaded_objects(pid, &maps)?;
    let target = find_target(pid, patch, &objects)?;
    if meta.target.kind == ObjectKind::Fixed && target.bias != 0 {
        return Err(EngineError::Refused {
            pid,
            why: format!("{}: a non-PIE executable loaded at an offset", target.path),
        });
    }
    let applied = applied_in(pid, &maps)?;
    if applied.iter().any(|h| h.patch_id == meta.id) {
        return Err(EngineError::AlreadyApplied {
            pid,
            id: meta.id.clone(),
        });
    }
    let old = match replace {
        Some(id) => Some(
            applied
                .iter()
                .find(|h| h.patch_id == *id)
                .cloned()
                .ok_or_else(|| EngineError::NotApplied {
                    pid,
                    id: id.clone(),
                    applied: applied
                        .iter()
                        .map(|h| h.patch_id.clone())
                        .collect::<Vec<_>>()
                        .join(", "),
                })?,
        ),
        None => None,
    };
    let entries = check_code(pid, patch, target.bias, &applied)?;
    let old_entries = match &old {
        Some(o) => jumped_entries(pid, o),
        None => Vec::new(),
    };
    let (dynamic, ifuncs) = symbols(pid, patch, target.bias, &objects)?;
    Ok(Found {
        maps,
        target,
        applied,
        old,
        entries,
        old_entries,
        dynamic,
        ifuncs,
        objects,
    })
}

/// Check the running code against what the patch expects (looking through
/// the jumps of applied patches); returns each function's first bytes.
fn check_code(
    pid: Pid,
    patch: &Patch,
    bias: u64,
    applied: &[AppliedRecord],
) -> Result<Vec<Vec<u8>>> {
    let meta = &patch.meta;
    let addrs = meta
        .functions
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let field = format!("functions[{i}] ({}).vaddr", f.name);
            let addr = add(pid, bias, f.vaddr, field, "the target's load bias")?;
            let field = format!("functions[{i}] ({}).size", f.name);
            add(pid, addr, f.size, field, "its address")?;
            Ok(addr)
        })
        .collect::<Result<Vec<u64>>>()?;
    let code = process::read_memory_many(
        pid,
        &meta
            .functions
            .iter()
            .zip(&addrs)
            .map(|(f, &addr)| (addr, f.size as usize))
            .collect::<Vec<_>>(),
    );
    let mut entries = Vec::with_capacity(meta.functions.len());
    for ((f, current), &addr) in meta.functions.iter().zip(&code).zip(&addrs) {
        let Some(current) = current else {
            return Err(process::read_memory(pid, addr, f.size as usize)
                .map(|_| EngineError::CodeMismatch {
                    pid,
                    function: f.name.clone(),
                    addr,
                    offset: 0,
                })
                .unwrap_or_else(EngineError::Process));
        };
        let original = original_bytes(pid, addr, current, applied)?;
        let (expected, mask) = patch
            .expected_and_mask(f)
            .map_err(|error| EngineError::InvalidPatch { pid, error })?;
        if let Some(offset) =
            (0..expected.len()).find(|&i| mask[i] != 0 && original.get(i) != Some(&expected[i]))
        {
            return Err(EngineError::CodeMismatch {
                pid,
                function: f.name.clone(),
                addr,
                offset,
            });
        }
        entries.push(current[..arch::JUMP_LEN.min(current.len())].to_vec());
    }
    Ok(entries)
}

type Symbols = (HashMap<String, (u64, bool)>, Vec<u64>);

/// Symbols from other objects, in load order, and the IFUNC resolvers to
/// call.
fn symbols(pid: Pid, patch: &Patch, bias: u64, objects: &[LoadedObject]) -> Result<Symbols> {
    let meta = &patch.meta;
    let mut dynamic: HashMap<String, (u64, bool)> = HashMap::new();
    for r in &meta.relocations {
        if let RelocTarget::Dynamic { name } = &r.target {
            if dynamic.contains_key(name) {
                continue;
            }
            let found = objects.iter().find_map(|o| {
                let e = exports_of(pid, o)?;
                let x = e.get(name)?;
                (!x.tls).then(|| (o.bias.wrapping_add(x.value), x.ifunc))
            });
            let v = found.ok_or_else(|| EngineError::Unresolved {
                pid,
                name: name.clone(),
            })?;
            dynamic.insert(name.clone(), v);
        }
    }
    let mut ifuncs: Vec<u64> = dynamic.values().filter(|v| v.1).map(|v| v.0).collect();
    for (i, r) in meta.relocations.iter().enumerate() {
        if let RelocTarget::ObjectIfunc { vaddr } = r.target {
            let field = format!("relocations[{i}].target.vaddr");
            ifuncs.push(add(pid, bias, vaddr, field, "the target's load bias")?);
        }
    }
    ifuncs.sort_unstable();
    ifuncs.dedup();
    Ok((dynamic, ifuncs))
}
