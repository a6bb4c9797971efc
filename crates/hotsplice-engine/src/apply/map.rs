//! Mapping the room for a patch in the process (a remote `mmap` within
//! reach of the target), calling the IFUNC resolvers it needs on the way,
//! and unmapping it when the apply fails before any jump leads into it.

use super::plan::Layout;
use crate::journal::{fault, in_flight, record, Journal, Op, Step};
use crate::objects::LoadedObject;
use crate::place::find_place;
use crate::state::read_maps;
use crate::window::Unreachable;
use crate::{EngineError, Result};
use hotsplice_patch::{ObjectKind, PatchMeta};
use hotsplice_process::{self as process, Mapping, Pid, Tracee};
use std::collections::HashMap;

/// The patch's mapping, empty yet.
pub(crate) struct Mapped {
    pub place: u64,
    /// What each IFUNC resolver returned, by resolver address.
    pub ifuncs: HashMap<u64, u64>,
}

/// Choose a place near `target`, record it in the journal, map it (code
/// read+execute, data read+write), calling the resolvers `ifuncs` first.
/// A place taken meanwhile is retried (twice). On failure nothing is
/// mapped and the journal record is cleared.
#[allow(clippy::too_many_arguments)]
pub(crate) fn map(
    pid: Pid,
    tracee: &mut Tracee,
    meta: &PatchMeta,
    target: &LoadedObject,
    maps: &[Mapping],
    layout: &Layout,
    ifuncs: &[u64],
    journal: Option<&dyn Journal>,
) -> Result<(Mapped, Unreachable)> {
    let low = meta.target.kind == ObjectKind::Fixed;
    let total = layout.total;
    let mut resolved = HashMap::new();
    let mut maps_now = maps.to_vec();
    let clear = || {
        if let Some(j) = journal {
            j.clear(pid, &meta.id);
        }
    };
    for attempt in 0..3 {
        let Some(a) = find_place(&maps_now, target.start, target.end, total, low) else {
            break;
        };
        let mapping = in_flight(Op::Apply, pid, &meta.id, (a, total), Step::Mapping);
        record(journal, &mapping)?;
        let mapped = tracee.with_thread(|t| {
            for &f in ifuncs {
                if let std::collections::hash_map::Entry::Vacant(slot) = resolved.entry(f) {
                    slot.insert(t.call(f, &[])?);
                }
            }
            let code_len = layout.code_len;
            let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE;
            t.mmap(a, code_len, libc::PROT_READ | libc::PROT_EXEC, flags)?;
            // `find_place` keeps `a + total` inside the address space.
            let data_len = total - code_len;
            if data_len > 0 {
                let rw = libc::PROT_READ | libc::PROT_WRITE;
                if let Err(e) = t.mmap(a + code_len, data_len, rw, flags) {
                    let _ = t.munmap(a, code_len);
                    return Err(e);
                }
            }
            let _ = t.name_mapping(a, total, &format!("hotsplice:{}", meta.id));
            Ok(())
        });
        match mapped {
            Ok(()) => {
                fault("apply:mapped");
                let mapped = Mapped {
                    place: a,
                    ifuncs: resolved,
                };
                return Ok((mapped, Unreachable::fresh_mapping()));
            }
            Err(process::Error::RemoteSyscallFailed { errno, .. })
                if errno == libc::EEXIST && attempt < 2 =>
            {
                maps_now = match read_maps(pid) {
                    Ok(m) => m,
                    Err(e) => {
                        clear();
                        return Err(e);
                    }
                };
            }
            Err(e) => {
                clear();
                return Err(e.into());
            }
        }
    }
    clear();
    Err(EngineError::NoRoom {
        pid,
        size: total,
        target: target.path.clone(),
    })
}

/// Unmap the new code of a failed apply: only with the proof that no jump
/// leads into it, and once libgcc no longer knows its unwind information
/// (`unwind`, if the record was written). A failure leaves an unused
/// mapping, not a broken process. Returns `false` when the mapping stays
/// because libgcc may still point into it: its record is then retired (no
/// longer listed as applied), and the caller's journal keeps it for the
/// next command to unmap.
pub(crate) fn unmap(
    tracee: &mut Tracee,
    mapped: &Mapped,
    layout: &Layout,
    unwind: Option<&hotsplice_patch::UnwindRecord>,
    _: Unreachable,
) -> bool {
    let (place, total) = (mapped.place, layout.total);
    let pid = tracee.pid();
    if let Err(why) = crate::register::release(pid, unwind, Some(tracee)) {
        tracing::warn!(
            place,
            total,
            "the code of a failed apply stays mapped: {why}"
        );
        if let Err(e) = process::MemWriter::open(pid)
            .and_then(|m| m.write(place, hotsplice_patch::RETIRED_MAGIC))
        {
            tracing::warn!(place, "cannot retire the record of a failed apply: {e}");
        }
        return false;
    }
    if let Err(e) = tracee.with_thread(|t| t.munmap(place, total)) {
        tracing::warn!(place, total, "cannot unmap the code of a failed apply: {e}");
    }
    true
}
