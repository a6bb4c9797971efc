//! Apply, undo and show.

use crate::objects::{exports_of, loaded_objects, LoadedObject};
use crate::place::find_place;
use crate::safety::{find_busy, needs_fresh_maps, stack_spans, Ranges};
use crate::{EngineError, Result};
use hotsplice_arch::current as arch;
use hotsplice_arch::FieldKind;
use hotsplice_patch::{
    round_up, AppliedFunction, ImageHeader, ObjectKind, Patch, RelocTarget, IMAGE_PREFIX_LEN, PAGE,
};
use hotsplice_process::{self as process, Mapping, MemWriter, Pid, Tracee};
use serde::Serialize;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How apply and undo behave.
#[derive(Debug, Clone)]
pub struct ApplyOptions {
    /// How long to keep retrying while code is busy.
    pub busy_timeout: Duration,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        ApplyOptions {
            busy_timeout: Duration::from_secs(5),
        }
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
}

fn micros<S: serde::Serializer>(d: &Duration, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_u128(d.as_micros())
}

fn refuse_special(pid: Pid) -> Result<()> {
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

fn read_maps(pid: Pid) -> Result<Vec<Mapping>> {
    let mut maps = process::read_maps(pid)?;
    maps.sort_by_key(|m| m.start);
    Ok(maps)
}

/// Patches applied to `pid`, oldest first, read from the process itself.
pub fn applied(pid: Pid) -> Result<Vec<ImageHeader>> {
    let maps = read_maps(pid)?;
    applied_in(pid, &maps)
}

fn applied_in(pid: Pid, maps: &[Mapping]) -> Result<Vec<ImageHeader>> {
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
fn original_bytes(addr: u64, current: &[u8], applied: &[ImageHeader]) -> Vec<u8> {
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

/// Apply `patch` to process `pid`.
pub fn apply(pid: Pid, patch: &Patch, opts: &ApplyOptions) -> Result<Report> {
    refuse_special(pid)?;
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

    // Check the running code against what the patch expects.
    let bias = target.bias;
    let code = process::read_memory_many(
        pid,
        &meta
            .functions
            .iter()
            .map(|f| (bias + f.vaddr, f.size as usize))
            .collect::<Vec<_>>(),
    );
    let mut saved = Vec::with_capacity(meta.functions.len());
    for (f, current) in meta.functions.iter().zip(&code) {
        let addr = bias + f.vaddr;
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
        let original = original_bytes(addr, current, &applied);
        let expected = hex::decode(&f.expected).unwrap_or_default();
        let mask = hex::decode(&f.mask).unwrap_or_default();
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
        saved.push(current[..arch::JUMP_LEN.min(current.len())].to_vec());
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
    for r in &meta.relocations {
        if let RelocTarget::ObjectIfunc { vaddr } = r.target {
            ifuncs.push(bias + vaddr);
        }
    }
    ifuncs.sort_unstable();
    ifuncs.dedup();

    // Room for the header, then the image.
    let header_room = round_up(
        (IMAGE_PREFIX_LEN
            + 512
            + meta
                .functions
                .iter()
                .map(|f| 160 + f.name.len())
                .sum::<usize>()
            + meta.target.name.len()
            + meta.description.len()
            + meta.target.build_id.len()) as u64,
        PAGE,
    );
    let total = header_room + meta.mapped_size();
    let low = meta.target.kind == ObjectKind::Fixed;

    let mut tracee = Tracee::seize(pid)?;
    let mut resolved_ifuncs = HashMap::new();
    let mut place = 0u64;
    tracee.with_thread(|t| {
        for &f in &ifuncs {
            resolved_ifuncs.insert(f, t.call(f, &[])?);
        }
        let mut maps_now = maps.clone();
        for attempt in 0..3 {
            let Some(a) = find_place(&maps_now, target.start, target.end, total, low) else {
                return Ok(());
            };
            let code_len = header_room + meta.data_offset;
            let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE;
            match t.mmap(a, code_len, libc::PROT_READ | libc::PROT_EXEC, flags) {
                Ok(_) => {}
                Err(process::Error::RemoteSyscallFailed { errno, .. })
                    if errno == libc::EEXIST && attempt < 2 =>
                {
                    maps_now = process::read_maps(pid)?;
                    continue;
                }
                Err(e) => return Err(e),
            }
            let data_len = meta.mapped_size() - meta.data_offset;
            if data_len > 0 {
                let rw = libc::PROT_READ | libc::PROT_WRITE;
                if let Err(e) = t.mmap(a + code_len, data_len, rw, flags) {
                    let _ = t.munmap(a, code_len);
                    return Err(e);
                }
            }
            let _ = t.name_mapping(a, total, &format!("hotsplice:{}", meta.id));
            place = a;
            return Ok(());
        }
        Ok(())
    })?;
    if place == 0 {
        return Err(EngineError::NoRoom {
            pid,
            size: total,
            target: target.path.clone(),
        });
    }
    let result = install(
        pid,
        patch,
        opts,
        &mut tracee,
        &target,
        &maps,
        &applied,
        &dynamic,
        &resolved_ifuncs,
        place,
        header_room,
        &saved,
    );
    match result {
        Ok(r) => Ok(r),
        Err(e) => {
            let _ = tracee.with_thread(|t| t.munmap(place, total));
            let _ = tracee.detach();
            Err(e)
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn install(
    pid: Pid,
    patch: &Patch,
    opts: &ApplyOptions,
    tracee: &mut Tracee,
    target: &LoadedObject,
    maps: &[Mapping],
    applied: &[ImageHeader],
    dynamic: &HashMap<String, (u64, bool)>,
    ifuncs: &HashMap<u64, u64>,
    place: u64,
    header_room: u64,
    saved: &[Vec<u8>],
) -> Result<Report> {
    let meta = &patch.meta;
    let bias = target.bias;
    let base = place + header_room;
    let mut image = patch.image.clone();
    image.resize((meta.data_offset + meta.data_size) as usize, 0);
    for r in &meta.relocations {
        let (sym, name) = match &r.target {
            RelocTarget::Image { offset } => (base + offset, format!("patch+{offset:#x}")),
            RelocTarget::Object { vaddr } => {
                (bias + vaddr, format!("{}+{vaddr:#x}", meta.target.name))
            }
            RelocTarget::ObjectIfunc { vaddr } => (
                ifuncs[&(bias + vaddr)],
                format!("ifunc {}+{vaddr:#x}", meta.target.name),
            ),
            RelocTarget::Dynamic { name } => {
                let (v, ifunc) = dynamic[name];
                (if ifunc { ifuncs[&v] } else { v }, name.clone())
            }
            RelocTarget::Absolute { value } => (*value, format!("{value:#x}")),
        };
        let kind = FieldKind::from_name(&r.kind).expect("validated kind");
        let at = base + r.offset;
        kind.write(&mut image, r.offset as usize, at, sym, r.addend)
            .map_err(|e| EngineError::OutOfReach {
                pid,
                name,
                addr: sym,
                place: at,
                detail: e.to_string(),
            })?;
    }

    let mut functions = Vec::with_capacity(meta.functions.len());
    let mut jumps = Vec::new();
    for (f, saved) in meta.functions.iter().zip(saved) {
        let addr = bias + f.vaddr;
        let new_addr = base + f.replacement;
        if f.jump {
            let jump = arch::encode_jump(addr, new_addr).ok_or_else(|| EngineError::NoRoom {
                pid,
                size: meta.mapped_size(),
                target: target.path.clone(),
            })?;
            jumps.push((addr, jump, saved.clone()));
        }
        functions.push(AppliedFunction {
            name: f.name.clone(),
            addr,
            size: f.size,
            new_addr,
            saved: if f.jump {
                hex::encode(saved)
            } else {
                String::new()
            },
        });
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
        sequence: applied.iter().map(|h| h.sequence).max().unwrap_or(0) + 1,
        tool: concat!("hotsplice ", env!("CARGO_PKG_VERSION")).into(),
        map_start: place,
        map_len: header_room + meta.mapped_size(),
        code_start: base,
        code_len: meta.code_size,
        functions,
    };
    let encoded = header.encode();
    if encoded.len() as u64 > header_room {
        return Err(EngineError::Refused {
            pid,
            why: "patch header does not fit its reserved room (a bug)".into(),
        });
    }
    let mem = MemWriter::open(pid)?;
    mem.write(base, &image[..meta.code_size as usize])?;
    if meta.data_size > 0 {
        mem.write(base + meta.data_offset, &image[meta.data_offset as usize..])?;
    }
    mem.write(place, &encoded)?;

    let ranges = Ranges::new(
        meta.functions
            .iter()
            .map(|f| (bias + f.vaddr, bias + f.vaddr + f.size, f.name.clone())),
    );
    let checks: Vec<(u64, usize)> = jumps.iter().map(|j| (j.0, j.2.len())).collect();
    let (threads, attempts, stopped) = stop_and_write(
        pid,
        tracee,
        &mem,
        maps,
        &ranges,
        opts,
        &checks,
        &jumps
            .iter()
            .map(|(a, j, s)| (*a, j.to_vec(), s.clone()))
            .collect::<Vec<_>>(),
        true,
    )?;
    Ok(Report {
        pid,
        id: meta.id.clone(),
        target: target.path.clone(),
        threads,
        attempts,
        stopped,
        functions: meta.functions.len(),
    })
}

/// The stop window, retried while busy: stop all threads, check them, check
/// that the bytes to overwrite are still what they were, write, resume.
/// `writes` are `(addr, new bytes, expected current bytes)`. On success the
/// threads are detached (`detach`) or left seized and running.
#[allow(clippy::too_many_arguments)]
fn stop_and_write(
    pid: Pid,
    tracee: &mut Tracee,
    mem: &MemWriter,
    maps: &[Mapping],
    ranges: &Ranges,
    opts: &ApplyOptions,
    checks: &[(u64, usize)],
    writes: &[(u64, Vec<u8>, Vec<u8>)],
    detach: bool,
) -> Result<(usize, u32, Duration)> {
    let started = Instant::now();
    let deadline = started + opts.busy_timeout;
    let mut backoff = Duration::from_millis(5);
    let mut maps = maps.to_vec();
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let t0 = Instant::now();
        let window = tracee.stop_all()?;
        let threads = window.threads();
        let mut spans = stack_spans(threads, &maps);
        if needs_fresh_maps(&spans) {
            maps = read_maps(pid)?;
            spans = stack_spans(threads, &maps);
        }
        let stacks = process::read_memory_many(pid, &spans);
        if let Some(busy) = find_busy(threads, &stacks, ranges) {
            window.resume()?;
            if Instant::now() >= deadline {
                return Err(EngineError::Busy {
                    pid,
                    tid: busy.tid,
                    function: busy.function,
                    frame: busy.frame,
                    waited_ms: started.elapsed().as_millis(),
                });
            }
            // While seized, a thread that gets a signal or starts a thread
            // waits for us: collect such stops while we wait.
            let until =
                Instant::now() + backoff.min(deadline.saturating_duration_since(Instant::now()));
            while Instant::now() < until {
                tracee.service_events()?;
                std::thread::sleep(
                    Duration::from_millis(2).min(until.saturating_duration_since(Instant::now())),
                );
            }
            backoff = (backoff * 2).min(Duration::from_millis(200));
            continue;
        }
        let now = process::read_memory_many(pid, checks);
        for ((addr, _, expect), cur) in writes.iter().zip(&now) {
            if cur.as_deref() != Some(expect.as_slice()) {
                window.resume()?;
                return Err(EngineError::ForeignChange {
                    pid,
                    function: ranges_name(ranges, *addr),
                    addr: *addr,
                });
            }
        }
        let mut done = 0;
        let mut failure = None;
        for (addr, bytes, _) in writes {
            match mem.write(*addr, bytes) {
                Ok(()) => done += 1,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = failure {
            // Back to fully old before anything runs.
            for (addr, _, old) in writes[..done].iter().rev() {
                let _ = mem.write(*addr, old);
            }
            window.resume()?;
            return Err(e.into());
        }
        let n = threads.len();
        if detach {
            window.detach_all()?;
        } else {
            window.resume()?;
        }
        return Ok((n, attempts, t0.elapsed()));
    }
}

fn ranges_name(_ranges: &Ranges, addr: u64) -> String {
    format!("code at {addr:#x}")
}

/// Undo patch `id` in process `pid`: restore the original entries (after
/// the same safety check, against the patch's own code), then unmap it.
pub fn undo(pid: Pid, id: &str, opts: &ApplyOptions) -> Result<Report> {
    refuse_special(pid)?;
    let maps = read_maps(pid)?;
    let applied = applied_in(pid, &maps)?;
    let Some(h) = applied.iter().find(|h| h.patch_id == id) else {
        return Err(EngineError::NotApplied {
            pid,
            id: id.into(),
            applied: if applied.is_empty() {
                "none".into()
            } else {
                applied
                    .iter()
                    .map(|h| h.patch_id.clone())
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        });
    };
    let jumped: Vec<&AppliedFunction> =
        h.functions.iter().filter(|f| !f.saved.is_empty()).collect();
    let current = process::read_memory_many(
        pid,
        &jumped
            .iter()
            .map(|f| (f.addr, arch::JUMP_LEN))
            .collect::<Vec<_>>(),
    );
    let mut writes = Vec::new();
    for (f, cur) in jumped.iter().zip(&current) {
        let cur = cur.clone().unwrap_or_default();
        let ours = arch::encode_jump(f.addr, f.new_addr).map(|j| j.to_vec());
        if Some(&cur) != ours.as_ref() {
            let over = applied.iter().find(|o| {
                o.sequence > h.sequence && o.functions.iter().any(|of| of.addr == f.addr)
            });
            return Err(match over {
                Some(o) => EngineError::Stacked {
                    pid,
                    id: id.into(),
                    over: o.patch_id.clone(),
                    function: f.name.clone(),
                },
                None => EngineError::ForeignChange {
                    pid,
                    function: f.name.clone(),
                    addr: f.addr,
                },
            });
        }
        writes.push((f.addr, hex::decode(&f.saved).unwrap_or_default(), cur));
    }
    let ranges = Ranges::new([(
        h.code_start,
        h.code_start + h.code_len,
        format!("code of patch {id}"),
    )]);
    let checks: Vec<(u64, usize)> = writes.iter().map(|w| (w.0, w.2.len())).collect();
    let mut tracee = Tracee::seize(pid)?;
    let mem = MemWriter::open(pid)?;
    let (threads, attempts, stopped) = stop_and_write(
        pid,
        &mut tracee,
        &mem,
        &maps,
        &ranges,
        opts,
        &checks,
        &writes,
        false,
    )?;
    let (start, len) = (h.map_start, h.map_len);
    tracee.with_thread(|t| t.munmap(start, len))?;
    tracee.detach()?;
    Ok(Report {
        pid,
        id: id.into(),
        target: h.target_name.clone(),
        threads,
        attempts,
        stopped,
        functions: h.functions.len(),
    })
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
