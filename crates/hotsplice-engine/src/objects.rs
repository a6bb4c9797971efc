//! The ELF objects a process has mapped, identified by build-id read from
//! the process's own memory (so a file replaced or deleted on disk after an
//! upgrade is still recognised), and the symbols they export.

use crate::{EngineError, Result};
use hotsplice_elf::Export;
use hotsplice_patch::BuildId;
use hotsplice_process::{self as process, Mapping, Pid};
use object::elf::{
    FileHeader64, ProgramHeader64, ELFCLASS64, ELFDATA2LSB, ELFMAG, PT_LOAD, PT_NOTE,
};
use object::{pod, LittleEndian as LE};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// An executable or library mapped by a process.
#[derive(Debug, Clone, Serialize)]
pub struct LoadedObject {
    /// Path as the process's maps show it (may end in " (deleted)").
    pub path: String,
    /// Address range of all its mappings.
    pub start: u64,
    pub end: u64,
    /// Load bias: run-time address minus link-time address.
    pub bias: u64,
    /// GNU build-id, hex; empty when the object has none.
    pub build_id: BuildId,
    /// Start and end of the mapping at file offset 0 (for map_files).
    #[serde(skip)]
    pub first_map: (u64, u64),
    #[serde(skip)]
    pub inode: (String, u64),
}

const EHDR_LEN: usize = std::mem::size_of::<FileHeader64<LE>>();
const PHDR_LEN: usize = std::mem::size_of::<ProgramHeader64<LE>>();

/// The ELF header at the start of `bytes`, if it is one of a 64-bit
/// little-endian object (read out of a process: any bytes at all).
fn elf_header(bytes: &[u8]) -> Option<&FileHeader64<LE>> {
    let (h, _) = pod::from_bytes::<FileHeader64<LE>>(bytes).ok()?;
    let id = &h.e_ident;
    (id.magic == ELFMAG && id.class == ELFCLASS64 && id.data == ELFDATA2LSB).then_some(h)
}

/// The objects `pid` maps, from its memory: three batched reads in all.
pub fn loaded_objects(pid: Pid, maps: &[Mapping]) -> Result<Vec<LoadedObject>> {
    struct Group {
        path: String,
        start: u64,
        end: u64,
        first: (u64, u64),
        inode: (String, u64),
    }
    // Group file mappings by file.
    let mut groups: Vec<Group> = Vec::new();
    let mut index: HashMap<(String, u64, String), usize> = HashMap::new();
    for m in maps {
        let Some(path) = &m.path else { continue };
        if m.inode == 0 || path.starts_with('[') {
            continue;
        }
        let key = (m.dev.clone(), m.inode, path.clone());
        match index.get(&key) {
            Some(&i) => {
                let g = &mut groups[i];
                g.start = g.start.min(m.start);
                g.end = g.end.max(m.end);
                if m.offset == 0 && g.first.0 == 0 {
                    g.first = (m.start, m.end);
                }
            }
            None => {
                index.insert(key, groups.len());
                let first = if m.offset == 0 {
                    (m.start, m.end)
                } else {
                    (0, 0)
                };
                groups.push(Group {
                    path: path.clone(),
                    start: m.start,
                    end: m.end,
                    first,
                    inode: (m.dev.clone(), m.inode),
                });
            }
        }
    }
    groups.retain(|g| g.first.0 != 0);
    let headers = process::read_memory_many(
        pid,
        &groups
            .iter()
            .map(|g| (g.first.0, EHDR_LEN))
            .collect::<Vec<_>>(),
    );
    if !groups.is_empty() && headers.iter().all(|h| h.is_none()) {
        // Nothing readable at all: permission or a dead process.
        process::read_memory(pid, groups[0].first.0, EHDR_LEN).map_err(EngineError::Process)?;
    }
    let mut elfs = Vec::new();
    let mut phdr_ranges = Vec::new();
    for (g, h) in groups.iter().zip(&headers) {
        let Some(h) = h.as_deref().and_then(elf_header) else {
            continue;
        };
        let phoff = h.e_phoff.get(LE);
        let phnum = usize::from(h.e_phnum.get(LE));
        if phnum == 0 || phnum > 64 {
            continue;
        }
        // Read out of the process: any value at all.
        let Some(at) = g.first.0.checked_add(phoff) else {
            continue;
        };
        elfs.push(g);
        phdr_ranges.push((at, phnum * PHDR_LEN));
    }
    let phdrs = process::read_memory_many(pid, &phdr_ranges);
    let mut partial = Vec::new();
    let mut note_ranges = Vec::new();
    for (g, ph) in elfs.iter().zip(&phdrs) {
        let Some(ph) = ph else { continue };
        let Ok((ph, _)) = pod::slice_from_bytes::<ProgramHeader64<LE>>(ph, ph.len() / PHDR_LEN)
        else {
            continue;
        };
        let mut first_load = None;
        let mut notes = Vec::new();
        for p in ph {
            let p_type = p.p_type.get(LE);
            let p_offset = p.p_offset.get(LE);
            let p_vaddr = p.p_vaddr.get(LE);
            let p_memsz = p.p_memsz.get(LE);
            if p_type == PT_LOAD && first_load.is_none() && p_offset == 0 {
                first_load = Some(p_vaddr);
            }
            if p_type == PT_NOTE && p_memsz < 4096 {
                notes.push((p_vaddr, p_memsz as usize));
            }
        }
        let Some(vaddr0) = first_load else { continue };
        let bias = g.first.0.wrapping_sub(vaddr0 & !0xfff);
        let first = note_ranges.len();
        for (v, len) in notes {
            note_ranges.push((bias.wrapping_add(v), len));
        }
        partial.push((g, bias, first..note_ranges.len()));
    }
    let notes = process::read_memory_many(pid, &note_ranges);
    let mut out = Vec::new();
    for (g, bias, range) in partial {
        let build_id = notes[range]
            .iter()
            .flatten()
            .find_map(|n| hotsplice_elf::build_id_from_notes(n))
            .map(|b| BuildId::from_bytes(&b))
            .unwrap_or_default();
        out.push(LoadedObject {
            path: g.path.clone(),
            start: g.start,
            end: g.end,
            bias,
            build_id,
            first_map: g.first,
            inode: g.inode.clone(),
        });
    }
    Ok(out)
}

type ExportMap = Arc<HashMap<String, Export>>;

fn cache() -> &'static Mutex<HashMap<(String, u64), ExportMap>> {
    static CACHE: OnceLock<Mutex<HashMap<(String, u64), ExportMap>>> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// Symbols `obj` exports, read from the mapped file (through
/// `/proc/PID/map_files`, which works for deleted files and other mount
/// namespaces); cached per file.
pub fn exports_of(pid: Pid, obj: &LoadedObject) -> Option<ExportMap> {
    if let Some(e) = cache().lock().unwrap().get(&obj.inode) {
        return Some(e.clone());
    }
    let via_map_files = format!(
        "/proc/{pid}/map_files/{:x}-{:x}",
        obj.first_map.0, obj.first_map.1
    );
    let plain = obj.path.trim_end_matches(" (deleted)");
    let via_root = format!("/proc/{pid}/root{plain}");
    let data = read_bounded(&via_map_files).or_else(|| read_bounded(&via_root))?;
    let exports = Arc::new(hotsplice_elf::exports(&data).ok()?);
    cache()
        .lock()
        .unwrap()
        .insert(obj.inode.clone(), exports.clone());
    Some(exports)
}

/// The largest object file whose exports are read (any process may map
/// any file; this keeps one from making hotsplice read gigabytes).
const MAX_OBJECT_FILE: u64 = 1 << 30;

/// A regular file of at most [`MAX_OBJECT_FILE`] bytes.
fn read_bounded(path: &str) -> Option<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    // Non-blocking, so that a FIFO put in place of a library cannot hang us.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    let meta = f.metadata().ok()?;
    if !meta.is_file() || meta.len() > MAX_OBJECT_FILE {
        return None;
    }
    let mut data = Vec::with_capacity(meta.len() as usize);
    f.take(MAX_OBJECT_FILE).read_to_end(&mut data).ok()?;
    Some(data)
}
