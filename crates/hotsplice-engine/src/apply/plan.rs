//! What an apply writes where, computed from the patch, what was found in
//! the process and the place chosen for the new code: no I/O, so that all
//! of it is decided (and checked) before anything is written.

use super::inspect::Found;
use super::map::Mapped;
use crate::safety::Ranges;
use crate::state::saved_bytes;
use crate::undo::{removal_writes, retirement};
use crate::window::Write;
use crate::{add, EngineError, Result};
use hotsplice_arch::current as arch;
use hotsplice_patch::{
    AppliedFunction, AppliedRecord, Patch, PatchMeta, RelocTarget, UnwindRecord, PAGE,
};
use hotsplice_process::Pid;
use std::collections::HashMap;

/// Sizes of a patch's mapping: `[record room | code (r-x) | data (rw-)]`.
pub(crate) struct Layout {
    /// Bytes reserved for the record, in front of the image (pages).
    pub header_room: u64,
    /// The read+execute part: record room and the image up to its data.
    pub code_len: u64,
    /// The whole mapping.
    pub total: u64,
    /// With unwind information: the page after the image that holds
    /// libgcc's registration object and the state word (offset from the
    /// mapping's start).
    pub unwind_page: Option<u64>,
}

/// Bytes at the end of the record's room kept for the registration thunk.
pub(crate) const THUNK_ROOM: u64 = 64;
/// Offset of the state word in the unwind page (libgcc's object before it).
const STATE_AT: u64 = 256;

impl Layout {
    /// (Validation bounds these: the record always fits what `state`
    /// reads; the sums are checked all the same.)
    pub(crate) fn of(pid: Pid, meta: &PatchMeta) -> Result<Layout> {
        let header_room = meta.header_room();
        let room = "the record's room";
        let code_len = add(pid, header_room, meta.data_offset, "data_offset", room)?;
        let total = add(pid, header_room, meta.mapped_size(), "mapped size", room)?;
        let (total, unwind_page) = match meta.eh_frame {
            Some(_) => (
                add(pid, total, PAGE, "mapped size", "the unwind page")?,
                Some(total),
            ),
            None => (total, None),
        };
        Ok(Layout {
            header_room,
            code_len,
            total,
            unwind_page,
        })
    }
}

/// Everything an apply writes: the image and record (installed with the
/// process running), then the window's writes, checked against `ranges`.
pub(crate) struct Plan {
    /// Where the image starts (after the record room).
    pub base: u64,
    /// The relocated image, sized to its layout.
    image: Vec<u8>,
    code_size: usize,
    data_offset: usize,
    /// The record, encoded, and where it goes (the mapping's start).
    pub record: Vec<u8>,
    pub record_at: u64,
    /// The registration thunk and where it goes, with unwind information.
    pub thunk: Option<(u64, &'static [u8])>,
    /// The unwind information as the record has it.
    pub unwind: Option<UnwindRecord>,
    /// The jumps, the old level's entries put back, its record retired.
    pub writes: Vec<Write>,
    /// What no thread may be in while they are written.
    pub ranges: Ranges,
}

impl Plan {
    /// The image's code and (if any) its data, each with its address.
    pub(crate) fn image_writes(&self) -> impl Iterator<Item = (u64, &[u8])> {
        let code = (self.base, &self.image[..self.code_size]);
        let data = (self.data_offset < self.image.len()).then(|| {
            (
                self.base + self.data_offset as u64,
                &self.image[self.data_offset..],
            )
        });
        std::iter::once(code).chain(data)
    }
}

/// The plan for applying `patch` as `found` in the mapping `mapped`, at
/// Unix time `now`.
pub(crate) fn plan(
    pid: Pid,
    patch: &Patch,
    found: &Found,
    layout: &Layout,
    mapped: &Mapped,
    now: u64,
    running_may_finish: bool,
) -> Result<Plan> {
    let meta = &patch.meta;
    let bias = found.target.bias;
    let old = found.old.as_ref();
    let place = mapped.place;
    let base = add(pid, place, layout.header_room, "record room", "the mapping")?;
    let image = relocated(pid, patch, base, bias, &found.dynamic, &mapped.ifuncs)?;

    let mut functions = Vec::with_capacity(meta.functions.len());
    let mut writes = Vec::new();
    let mut ranges: Vec<(u64, u64, String, bool)> = Vec::new();
    for (f, current) in meta.functions.iter().zip(&found.entries) {
        // Checked when the code was read (`inspect`); the replacement is
        // inside the code, which is inside the mapping.
        let addr = bias + f.vaddr;
        let new_addr = base + f.replacement;
        ranges.push((addr, addr + f.size, f.name.clone(), true));
        // What the jump overwrites and must put back on undo: the
        // original entry, even where the level being replaced jumped.
        let saved =
            match old.and_then(|o| o.functions.iter().find(|of| of.addr == addr && of.jumped())) {
                Some(of) => saved_bytes(pid, old.map_or(0, |o| o.map_start), of)?,
                None => current.clone(),
            };
        if f.jump {
            let jump = arch::encode_jump(addr, new_addr).ok_or_else(|| EngineError::NoRoom {
                pid,
                size: meta.mapped_size(),
                target: found.target.path.clone(),
            })?;
            writes.push(Write {
                addr,
                new: jump.to_vec(),
                expect: current.clone(),
                name: f.name.clone(),
            });
        }
        functions.push(AppliedFunction {
            name: f.name.clone(),
            addr,
            size: f.size,
            new_addr,
            saved: f.jump.then_some(saved),
        });
    }
    if let Some(old) = old {
        // Entries the old level replaced that the new one leaves alone
        // go back to the original; threads must not be in its code.
        let keep: Vec<u64> = writes.iter().map(|w| w.addr).collect();
        for w in removal_writes(pid, old, &found.applied, &found.old_entries, false)? {
            if !keep.contains(&w.addr) {
                writes.push(w);
            }
        }
        // Last: in only when every jump is.
        writes.push(retirement(old));
        ranges.push((
            old.code_start,
            old.code_end(),
            format!("code of patch {}", old.patch_id),
            false,
        ));
    }
    let unwind = match (meta.eh_frame, layout.unwind_page) {
        (Some(eh), Some(page)) => Some(UnwindRecord {
            eh_frame: base + eh.offset,
            eh_frame_len: eh.size,
            thunk: place + layout.header_room - THUNK_ROOM,
            object: place + page,
            state: place + page + STATE_AT,
        }),
        _ => None,
    };
    let header = AppliedRecord {
        patch_id: meta.id.clone(),
        description: meta.description.clone(),
        target_name: meta.target.name.clone(),
        target_build_id: meta.target.build_id.clone(),
        target_bias: bias,
        applied_at: now,
        sequence: next_sequence(pid, &found.applied)?,
        tool: concat!("hotsplice ", env!("CARGO_PKG_VERSION")).into(),
        map_start: place,
        map_len: layout.total,
        code_start: base,
        code_len: meta.code_size,
        functions,
        running_may_finish,
        unwind,
    };
    let record = header.encode();
    if record.len() as u64 > layout.header_room - THUNK_ROOM {
        return Err(EngineError::Refused {
            pid,
            why: "patch header does not fit its reserved room (a bug)".into(),
        });
    }
    Ok(Plan {
        base,
        // `relocated` sized it to data_offset + data_size, which fit.
        code_size: meta.code_size as usize,
        data_offset: if meta.data_size > 0 {
            meta.data_offset as usize
        } else {
            image.len()
        },
        image,
        record,
        record_at: place,
        thunk: unwind.map(|u| (u.thunk, &arch::remote::MARKED_CALL[..])),
        unwind,
        writes,
        ranges: {
            let r = Ranges::new(ranges);
            if running_may_finish {
                // Only the replaced functions: the old level's code is
                // unmapped, no thread may stay in it.
                r.let_running_finish(arch::JUMP_LEN as u64)
            } else {
                r
            }
        },
    })
}

/// The stacking order of a new record: one more than the highest applied.
fn next_sequence(pid: Pid, applied: &[AppliedRecord]) -> Result<u64> {
    let top = applied.iter().map(|h| h.sequence).max().unwrap_or(0);
    add(
        pid,
        top,
        1,
        "sequence",
        "the highest sequence applied in the process",
    )
}

/// The patch's image, sized to its layout, with every relocation filled in
/// for code at `base` and the target at load bias `bias`; `dynamic` holds
/// the symbols of other objects (address, whether an IFUNC), `ifuncs` what
/// each IFUNC resolver returned.
fn relocated(
    pid: Pid,
    patch: &Patch,
    base: u64,
    bias: u64,
    dynamic: &HashMap<String, (u64, bool)>,
    ifuncs: &HashMap<u64, u64>,
) -> Result<Vec<u8>> {
    let meta = &patch.meta;
    let end = add(
        pid,
        meta.data_offset,
        meta.data_size,
        "data_size",
        "data_offset",
    )?;
    let len = usize::try_from(end).map_err(|_| EngineError::Overflow {
        pid,
        field: "data_size".into(),
        value: meta.data_size.to_string(),
        why: "the image does not fit this machine's memory".into(),
    })?;
    let mut image = patch.image.clone();
    image.resize(len, 0);
    for (i, r) in meta.relocations.iter().enumerate() {
        let field = |name: &str| format!("relocations[{i}].{name}");
        let (sym, name) = match &r.target {
            RelocTarget::Image { offset } => (
                add(pid, base, *offset, field("target.offset"), "the patch code")?,
                format!("patch+{offset:#x}"),
            ),
            RelocTarget::Object { vaddr } => (
                add(
                    pid,
                    bias,
                    *vaddr,
                    field("target.vaddr"),
                    "the target's load bias",
                )?,
                format!("{}+{vaddr:#x}", meta.target.name),
            ),
            RelocTarget::ObjectIfunc { vaddr } => {
                let at = add(
                    pid,
                    bias,
                    *vaddr,
                    field("target.vaddr"),
                    "the target's load bias",
                )?;
                (
                    resolved(pid, ifuncs, at, &field("target.vaddr"))?,
                    format!("ifunc {}+{vaddr:#x}", meta.target.name),
                )
            }
            RelocTarget::Dynamic { name } => {
                let &(v, ifunc) = dynamic.get(name).ok_or_else(|| EngineError::Unresolved {
                    pid,
                    name: name.clone(),
                })?;
                let v = if ifunc {
                    resolved(pid, ifuncs, v, &field("target.name"))?
                } else {
                    v
                };
                (v, name.clone())
            }
            RelocTarget::Absolute { value } => (*value, format!("{value:#x}")),
        };
        let kind = r.kind;
        let at = add(pid, base, r.offset, field("offset"), "the patch code")?;
        let offset = usize::try_from(r.offset).unwrap_or(usize::MAX);
        kind.write(&mut image, offset, at, sym, r.addend)
            .map_err(|e| EngineError::OutOfReach {
                pid,
                name,
                addr: sym,
                place: at,
                detail: e.to_string(),
            })?;
    }
    Ok(image)
}

/// What the IFUNC resolver at `at` returned (every one was called).
fn resolved(pid: Pid, ifuncs: &HashMap<u64, u64>, at: u64, field: &str) -> Result<u64> {
    ifuncs
        .get(&at)
        .copied()
        .ok_or_else(|| EngineError::Refused {
            pid,
            why: format!("{field}: the IFUNC resolver at {at:#x} was not called (a bug)"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::LoadedObject;
    use hotsplice_patch::{Function, Relocation, MAX_ADDRESS};

    fn patch(relocations: Vec<Relocation>) -> Patch {
        let mut meta = PatchMeta::example();
        meta.code_size = 0x10;
        meta.relocations = relocations;
        Patch {
            meta,
            image: vec![0; 0x10],
        }
    }

    fn reloc(offset: u64, target: RelocTarget) -> Relocation {
        Relocation {
            offset,
            kind: hotsplice_patch::FieldKind::Abs64,
            target,
            addend: 0,
        }
    }

    fn overflow_field(r: Result<Vec<u8>>) -> String {
        match r {
            Err(EngineError::Overflow { field, value, .. }) => format!("{field} = {value}"),
            other => panic!("not an overflow: {:?}", other.map(|_| ())),
        }
    }

    #[test]
    fn relocation_against_a_bias_near_u64_max_is_an_overflow() {
        let p = patch(vec![reloc(0, RelocTarget::Object { vaddr: MAX_ADDRESS })]);
        let (d, f) = (HashMap::new(), HashMap::new());
        let r = relocated(7, &p, 0x7000_0000_0000, u64::MAX - 0x10, &d, &f);
        assert_eq!(
            overflow_field(r),
            format!("relocations[0].target.vaddr = {MAX_ADDRESS:#x}")
        );
        let p = patch(vec![reloc(0, RelocTarget::ObjectIfunc { vaddr: 0x1000 })]);
        let r = relocated(7, &p, 0x7000_0000_0000, u64::MAX - 0x10, &d, &f);
        assert_eq!(overflow_field(r), "relocations[0].target.vaddr = 0x1000");
    }

    #[test]
    fn relocation_offset_near_u64_max_is_an_overflow_not_a_panic() {
        // Validation refuses this patch; the engine does not rely on it.
        let p = patch(vec![reloc(
            u64::MAX - 2,
            RelocTarget::Absolute { value: 1 },
        )]);
        let (d, f) = (HashMap::new(), HashMap::new());
        let r = relocated(7, &p, 0x1000, 0, &d, &f);
        assert_eq!(
            overflow_field(r),
            "relocations[0].offset = 0xfffffffffffffffd"
        );
        let p = patch(vec![reloc(0, RelocTarget::Image { offset: u64::MAX })]);
        let r = relocated(7, &p, 0x1000, 0, &d, &f);
        assert_eq!(
            overflow_field(r),
            "relocations[0].target.offset = 0xffffffffffffffff"
        );
    }

    #[test]
    fn data_size_u64_max_is_an_overflow_not_a_panic() {
        let mut p = patch(vec![]);
        p.meta.data_size = u64::MAX;
        let (d, f) = (HashMap::new(), HashMap::new());
        let r = relocated(7, &p, 0x1000, 0, &d, &f);
        assert_eq!(overflow_field(r), "data_size = 0xffffffffffffffff");
    }

    #[test]
    fn a_record_with_the_last_sequence_is_an_overflow() {
        let h = AppliedRecord {
            patch_id: hotsplice_patch::PatchId::unchecked("abcd1234"),
            description: String::new(),
            target_name: "prog".into(),
            target_build_id: hotsplice_patch::BuildId::unchecked("ab"),
            target_bias: 0,
            applied_at: 0,
            sequence: u64::MAX,
            tool: "t".into(),
            map_start: 0x7000_0000_0000,
            map_len: 0x2000,
            code_start: 0x7000_0000_1000,
            code_len: 0x10,
            functions: vec![],
            running_may_finish: false,
            unwind: None,
        };
        assert_eq!(next_sequence(7, &[]).unwrap(), 1);
        let err = next_sequence(7, &[h]).unwrap_err();
        assert!(matches!(err, EngineError::Overflow { .. }), "{err}");
    }

    fn found(bias: u64, entries: Vec<Vec<u8>>) -> Found {
        Found {
            maps: vec![],
            target: LoadedObject {
                path: "/prog".into(),
                start: bias,
                end: bias + 0x10000,
                bias,
                build_id: hotsplice_patch::BuildId::unchecked("00"),
                first_map: (bias, bias + 0x1000),
                inode: ("00:00".into(), 1),
            },
            applied: vec![],
            old: None,
            entries,
            old_entries: vec![],
            dynamic: HashMap::new(),
            ifuncs: vec![],
            objects: Vec::new(),
        }
    }

    #[test]
    fn the_plan_jumps_to_the_relocated_code_and_records_what_it_overwrote() {
        let mut p = patch(vec![reloc(8, RelocTarget::Image { offset: 4 })]);
        p.meta.functions = vec![Function {
            name: "compute".into(),
            file: None,
            vaddr: 0x1130,
            size: 16,
            expected: "55".repeat(16),
            mask: "ff".repeat(16),
            replacement: 0,
            jump: true,
        }];
        let bias = 0x5555_0000_0000;
        let entry = vec![0xf3, 0x0f, 0x1e, 0xfa, 0x55];
        let f = found(bias, vec![entry.clone()]);
        let layout = Layout::of(7, &p.meta).unwrap();
        let mapped = Mapped {
            place: 0x5555_1000_0000,
            ifuncs: HashMap::new(),
        };
        let plan = plan(7, &p, &f, &layout, &mapped, 42, false).unwrap();
        assert_eq!(plan.base, mapped.place + layout.header_room);
        let images: Vec<(u64, &[u8])> = plan.image_writes().collect();
        assert_eq!(images.len(), 1, "no data");
        assert_eq!(images[0].0, plan.base);
        let field = u64::from_le_bytes(images[0].1[8..16].try_into().unwrap());
        assert_eq!(field, plan.base + 4);
        assert_eq!(plan.writes.len(), 1);
        let w = &plan.writes[0];
        assert_eq!((w.addr, &w.expect), (bias + 0x1130, &entry));
        assert_eq!(arch::decode_jump(&w.new, w.addr), Some(plan.base));
        let h = AppliedRecord::decode(&plan.record).unwrap();
        assert_eq!(h.functions[0].saved, Some(entry));
        assert_eq!((h.map_start, h.map_len), (mapped.place, layout.total));
        assert_eq!((h.applied_at, h.sequence), (42, 1));
    }
}
