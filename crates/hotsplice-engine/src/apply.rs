//! Apply a patch to a process (optionally replacing a lower level).

use crate::journal::{fault, record, Journal, Op, Pending, Step};
use crate::objects::{exports_of, loaded_objects, LoadedObject};
use crate::place::find_place;
use crate::safety::Ranges;
use crate::state::{
    applied_in, find_target, original_bytes, read_maps, refuse_special, saved_bytes,
};
use crate::undo::{removal_writes, retirement, unmap_retired};
use crate::window::{stop_and_write, Outcome, Unreachable, Write};
use crate::{add, EngineError, Result};
use hotsplice_arch::current as arch;
use hotsplice_arch::FieldKind;
use hotsplice_patch::{AppliedFunction, ImageHeader, ObjectKind, Patch, RelocTarget};
use hotsplice_process::{self as process, Mapping, MemWriter, Pid, Tracee};
use hotsplice_trust::Verified;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// How apply and undo behave.
#[derive(Clone)]
pub struct ApplyOptions {
    /// How long to keep retrying while code is busy.
    pub busy_timeout: Duration,
    /// Where each step is recorded before it is taken.
    pub journal: Option<Arc<dyn Journal>>,
    /// Asked while waiting for busy code: `true` stops the wait at once
    /// (the process is left unchanged), e.g. on a termination request.
    pub stop_waiting: Option<fn() -> bool>,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        ApplyOptions {
            busy_timeout: Duration::from_secs(5),
            journal: None,
            stop_waiting: None,
        }
    }
}

impl std::fmt::Debug for ApplyOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApplyOptions")
            .field("busy_timeout", &self.busy_timeout)
            .field("journal", &self.journal.is_some())
            .finish()
    }
}

/// What one apply or undo did.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub pid: Pid,
    pub id: String,
    pub target: String,
    /// Threads in the process during the final stop.
    pub threads: usize,
    /// Stop windows needed (more than one when code was busy).
    pub attempts: u32,
    /// How long all threads were stopped in the successful window.
    #[serde(serialize_with = "micros")]
    pub stopped: Duration,
    pub functions: usize,
    /// The lower-level patch this one replaced, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replaced: Option<String>,
    /// The change was made, but something after it was not: the mapping of
    /// the patch taken out (undo, or the level replaced) could not be
    /// unmapped. Its record is retired (no longer listed as applied) and
    /// its journal record kept, so the next command unmaps it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

fn micros<S: serde::Serializer>(d: &Duration, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_u128(d.as_micros())
}

/// Apply `patch` to process `pid`. Only a patch that passed the trust
/// policy ([`hotsplice_trust::Verified`]) gets in.
pub fn apply(pid: Pid, patch: &Verified<Patch>, opts: &ApplyOptions) -> Result<Report> {
    apply_replacing(pid, patch, None, opts)
}

/// Apply `patch`, and in the same stop window take out the applied patch
/// `replace` (a lower level for the same target): every function ends up
/// either as before or as the new patch has it, never a mix of levels.
pub fn apply_replacing(
    pid: Pid,
    patch: &Verified<Patch>,
    replace: Option<&str>,
    opts: &ApplyOptions,
) -> Result<Report> {
    let patch: &Patch = patch.get();
    refuse_special(pid)?;
    // Whoever built the patch: what parsing checks holds here too.
    patch
        .validate()
        .map_err(|error| EngineError::InvalidPatch { pid, error })?;
    let meta = &patch.meta;
    if meta.target.kind == ObjectKind::Kernel {
        return Err(EngineError::Refused {
            pid,
            why: format!(
                "with kernel patch {}: use `hotsplice kernel apply`",
                meta.id
            ),
        });
    }
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
                .find(|h| h.patch_id == id)
                .cloned()
                .ok_or_else(|| EngineError::NotApplied {
                    pid,
                    id: id.into(),
                    applied: applied
                        .iter()
                        .map(|h| h.patch_id.clone())
                        .collect::<Vec<_>>()
                        .join(", "),
                })?,
        ),
        None => None,
    };

    // Check the running code against what the patch expects.
    let bias = target.bias;
    let addrs = meta
        .functions
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let field = format!("functions[{i}] ({}).vaddr", f.name);
            let addr = add(pid, bias, f.vaddr, field, "the target's load bias")?;
            add(
                pid,
                addr,
                f.size,
                format!("functions[{i}] ({}).size", f.name),
                "its address",
            )?;
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
    let mut current_entries = Vec::with_capacity(meta.functions.len());
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
        let original = original_bytes(pid, addr, current, &applied)?;
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
        current_entries.push(current[..arch::JUMP_LEN.min(current.len())].to_vec());
    }

    // Symbols from other objects, in load order.
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

    // Room for the header, then the image.
    // (Validation bounds it: the record always fits what `state` reads.)
    let header_room = meta.header_room();
    let total = add(
        pid,
        header_room,
        meta.mapped_size(),
        "mapped size",
        "the record's room",
    )?;
    let low = meta.target.kind == ObjectKind::Fixed;
    let journal = opts.journal.as_deref();

    let mut tracee = Tracee::seize(pid)?;
    let mut resolved_ifuncs = HashMap::new();
    let mut place = 0u64;
    let mut maps_now = maps.clone();
    for attempt in 0..3 {
        let Some(a) = find_place(&maps_now, target.start, target.end, total, low) else {
            break;
        };
        record(
            journal,
            &Pending {
                op: Op::Apply,
                pid,
                id: meta.id.clone(),
                map_start: a,
                map_len: total,
                step: Step::Mapping,
            },
        )?;
        let mapped = tracee.with_thread(|t| {
            for &f in &ifuncs {
                if let std::collections::hash_map::Entry::Vacant(slot) = resolved_ifuncs.entry(f) {
                    slot.insert(t.call(f, &[])?);
                }
            }
            // Sums checked below the room `total` (and `a + total`) fit.
            let code_len = header_room + meta.data_offset;
            let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE;
            t.mmap(a, code_len, libc::PROT_READ | libc::PROT_EXEC, flags)?;
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
                place = a;
                break;
            }
            Err(process::Error::RemoteSyscallFailed { errno, .. })
                if errno == libc::EEXIST && attempt < 2 =>
            {
                maps_now = read_maps(pid)?;
            }
            Err(e) => {
                if let Some(j) = journal {
                    j.clear(pid, &meta.id);
                }
                return Err(e.into());
            }
        }
    }
    if place == 0 {
        if let Some(j) = journal {
            j.clear(pid, &meta.id);
        }
        return Err(EngineError::NoRoom {
            pid,
            size: total,
            target: target.path.clone(),
        });
    }
    fault("apply:mapped");
    let ctx = Install {
        pid,
        patch,
        opts,
        target: &target,
        maps: &maps,
        applied: &applied,
        old: old.as_ref(),
        dynamic: &dynamic,
        ifuncs: &resolved_ifuncs,
        place,
        header_room,
        current_entries: &current_entries,
    };
    match ctx.run(&mut tracee, Unreachable::fresh_mapping()) {
        Outcome::Committed(w) => {
            fault("apply:done");
            drop(tracee);
            if let Some(j) = journal {
                j.clear(pid, &meta.id);
            }
            // The old level is out and its record retired: unmapping it
            // is what is left (see `Report::warning`).
            let warning = old.as_ref().and_then(|o| unmap_retired(pid, o, journal));
            Ok(Report {
                pid,
                id: meta.id.clone(),
                target: target.path.clone(),
                threads: w.threads,
                attempts: w.attempts,
                stopped: w.stopped,
                functions: meta.functions.len(),
                replaced: old.map(|o| o.patch_id),
                warning,
            })
        }
        // A jump into the new code is in and could not be taken out: the
        // code stays mapped, and the journal record stays for the next
        // command's recovery to finish the rollback.
        Outcome::PartlyApplied(e) => {
            let _ = tracee.detach();
            Err(e)
        }
        Outcome::Unchanged(e, unreachable) => {
            unmap_new(&mut tracee, place, total, unreachable);
            let _ = tracee.detach();
            if let Some(j) = journal {
                j.clear(pid, &meta.id);
                // The level it was to replace stays as it is: no recovery
                // may finish taking it out.
                if let Some(o) = &old {
                    j.clear(pid, &o.patch_id);
                }
            }
            Err(e)
        }
    }
}

/// Unmap the new code of a failed apply: only with the proof that no jump
/// leads into it. A failure leaves an unused mapping, not a broken process.
fn unmap_new(tracee: &mut Tracee, place: u64, total: u64, _: Unreachable) {
    if let Err(e) = tracee.with_thread(|t| t.munmap(place, total)) {
        tracing::warn!(place, total, "cannot unmap the code of a failed apply: {e}");
    }
}

struct Install<'a> {
    pid: Pid,
    patch: &'a Patch,
    opts: &'a ApplyOptions,
    target: &'a LoadedObject,
    maps: &'a [Mapping],
    applied: &'a [ImageHeader],
    old: Option<&'a ImageHeader>,
    dynamic: &'a HashMap<String, (u64, bool)>,
    ifuncs: &'a HashMap<u64, u64>,
    place: u64,
    header_room: u64,
    current_entries: &'a [Vec<u8>],
}

impl Install<'_> {
    /// Everything before the window, then the window; `unreachable`
    /// comes back unless the window wrote a jump that stays.
    fn run(&self, tracee: &mut Tracee, unreachable: Unreachable) -> Outcome<Unreachable> {
        let (mem, writes, ranges) = match self.prepare() {
            Ok(prepared) => prepared,
            Err(e) => return Outcome::Unchanged(e, unreachable),
        };
        stop_and_write(
            self.pid,
            tracee,
            &mem,
            self.maps,
            &ranges,
            self.opts,
            &writes,
            "apply:jump",
            unreachable,
        )
    }

    /// Relocate and write the new code and its record, record the step in
    /// the journal: everything before the window.
    fn prepare(&self) -> Result<(MemWriter, Vec<Write>, Ranges)> {
        let pid = self.pid;
        let meta = &self.patch.meta;
        let bias = self.target.bias;
        let base = add(
            pid,
            self.place,
            self.header_room,
            "record room",
            "the mapping",
        )?;
        let image = relocated(pid, self.patch, base, bias, self.dynamic, self.ifuncs)?;

        let mut functions = Vec::with_capacity(meta.functions.len());
        let mut writes = Vec::new();
        let mut ranges: Vec<(u64, u64, String, bool)> = Vec::new();
        for (f, current) in meta.functions.iter().zip(self.current_entries) {
            // Checked before the code was read.
            let addr = bias + f.vaddr;
            let new_addr = base + f.replacement;
            ranges.push((addr, addr + f.size, f.name.clone(), true));
            // What the jump overwrites and must put back on undo: the
            // original entry, even where the level being replaced jumped.
            let saved = match self.old.and_then(|o| {
                o.functions
                    .iter()
                    .find(|of| of.addr == addr && !of.saved.is_empty())
            }) {
                Some(of) => saved_bytes(pid, self.old.map_or(0, |o| o.map_start), of)?,
                None => current.clone(),
            };
            if f.jump {
                let jump =
                    arch::encode_jump(addr, new_addr).ok_or_else(|| EngineError::NoRoom {
                        pid,
                        size: meta.mapped_size(),
                        target: self.target.path.clone(),
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
                saved: if f.jump {
                    hex::encode(&saved)
                } else {
                    String::new()
                },
            });
        }
        if let Some(old) = self.old {
            // Entries the old level replaced that the new one leaves alone
            // go back to the original; threads must not be in its code.
            let keep: Vec<u64> = writes.iter().map(|w| w.addr).collect();
            let current = process::read_memory_many(
                pid,
                &old.functions
                    .iter()
                    .filter(|f| !f.saved.is_empty())
                    .map(|f| (f.addr, arch::JUMP_LEN))
                    .collect::<Vec<_>>(),
            );
            for w in removal_writes(pid, old, self.applied, &current, false)? {
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
        let header = ImageHeader {
            patch_id: meta.id.clone(),
            description: meta.description.clone(),
            target_name: meta.target.name.clone(),
            target_build_id: meta.target.build_id.clone(),
            target_bias: bias,
            applied_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            sequence: next_sequence(pid, self.applied)?,
            tool: concat!("hotsplice ", env!("CARGO_PKG_VERSION")).into(),
            map_start: self.place,
            map_len: self.header_room + meta.mapped_size(),
            code_start: base,
            code_len: meta.code_size,
            functions,
        };
        let encoded = header.encode();
        if encoded.len() as u64 > self.header_room {
            return Err(EngineError::Refused {
                pid,
                why: "patch header does not fit its reserved room (a bug)".into(),
            });
        }
        let mem = MemWriter::open(pid)?;
        // `relocated` sized the image to data_offset + data_size.
        mem.write(base, &image[..meta.code_size as usize])?;
        if meta.data_size > 0 {
            mem.write(base + meta.data_offset, &image[meta.data_offset as usize..])?;
        }
        mem.write(self.place, &encoded)?;
        fault("apply:written");
        if let Some(old) = self.old {
            // The old level is taken out by this same window.
            record(
                self.opts.journal.as_deref(),
                &Pending {
                    op: Op::Undo,
                    pid,
                    id: old.patch_id.clone(),
                    map_start: old.map_start,
                    map_len: old.map_len,
                    step: Step::Window,
                },
            )?;
        }
        Ok((mem, writes, Ranges::new(ranges)))
    }
}

/// The stacking order of a new record: one more than the highest applied.
fn next_sequence(pid: Pid, applied: &[ImageHeader]) -> Result<u64> {
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
        let kind = FieldKind::from_name(&r.kind).ok_or_else(|| EngineError::InvalidPatch {
            pid,
            error: hotsplice_patch::FormatError::Invalid(format!(
                "{} = {:?}: not a relocation kind",
                field("kind"),
                r.kind
            )),
        })?;
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
    use hotsplice_patch::{PatchMeta, Relocation, MAX_ADDRESS};

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
            kind: "abs64".into(),
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
        let h = ImageHeader {
            patch_id: "abcd1234".into(),
            description: String::new(),
            target_name: "prog".into(),
            target_build_id: "ab".into(),
            target_bias: 0,
            applied_at: 0,
            sequence: u64::MAX,
            tool: "t".into(),
            map_start: 0x7000_0000_0000,
            map_len: 0x2000,
            code_start: 0x7000_0000_1000,
            code_len: 0x10,
            functions: vec![],
        };
        assert_eq!(next_sequence(7, &[]).unwrap(), 1);
        let err = next_sequence(7, &[h]).unwrap_err();
        assert!(matches!(err, EngineError::Overflow { .. }), "{err}");
    }
}
