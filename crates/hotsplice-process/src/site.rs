//! Where the self-restoring stub of remote operations lives in a target.
//!
//! The stub ([`hotsplice_arch::current::remote::STUB`]) is placed in the
//! slack at the end of an executable segment: the bytes of the last page of
//! a private, file-backed `r-x` mapping that lie past the segment's end
//! (`p_vaddr + p_filesz` of its `PT_LOAD`). They are mapped, executable and
//! part of no code, so no thread of the program ever runs there. The write
//! goes through `/proc/PID/mem`, which gives the process a private copy of
//! that page; the file is never touched. The stub is the same bytes every
//! time and stays in place, so a thread left inside it by a tracer that died
//! can always finish, and the next run reuses it.

use hotsplice_arch::current::remote::STUB;
use object::elf;
use object::read::elf::{FileHeader, ProgramHeader};
use object::Endianness;

use crate::procfs::{self, Mapping};
use crate::{Error, MemWriter, Pid, Result};

const PAGE: u64 = 4096;

/// Find or install the stub in `pid`; returns its address.
pub(crate) fn stub_site(pid: Pid, mem: Option<&MemWriter>) -> Result<u64> {
    let mem = mem.ok_or(Error::PermissionDenied {
        pid,
        uid_of_target: procfs::target_uid(pid),
    })?;
    let maps = procfs::read_maps(pid)?;
    let mut tried = 0;
    for m in maps
        .iter()
        .filter(|m| m.exec && m.read && !m.shared && m.inode != 0)
    {
        tried += 1;
        let Some(at) = slack(pid, &maps, m, mem) else {
            continue;
        };
        let mut cur = [0u8; STUB.len()];
        if mem.read(at, &mut cur).is_err() {
            continue;
        }
        if cur == STUB {
            return Ok(at);
        }
        if cur.iter().any(|&b| b != 0) {
            continue;
        }
        if mem.write(at, &STUB).is_err() {
            continue;
        }
        if mem.read(at, &mut cur).is_ok() && cur == STUB {
            tracing::debug!(pid, at, path = ?m.path, "remote-call stub installed");
            return Ok(at);
        }
    }
    Err(Error::Unexpected {
        tid: pid,
        detail: format!(
            "no room for hotsplice's {}-byte remote-call stub after the executable segment of any of the {tried} file-backed code mappings",
            STUB.len()
        ),
    })
}

/// The first 64-byte-aligned address after the executable segment that `m`
/// maps, if at least the stub's length is left before the mapping ends.
fn slack(pid: Pid, maps: &[Mapping], m: &Mapping, mem: &MemWriter) -> Option<u64> {
    let head = maps
        .iter()
        .find(|h| h.inode == m.inode && h.dev == m.dev && h.offset == 0 && h.read)?;
    let len = head.len().min(PAGE) as usize;
    let mut data = vec![0u8; len];
    if crate::read_memory(pid, head.start, len)
        .map(|d| data.copy_from_slice(&d))
        .is_err()
    {
        mem.read(head.start, &mut data).ok()?;
    }
    let header = elf::FileHeader64::<Endianness>::parse(&*data).ok()?;
    let endian = header.endian().ok()?;
    for ph in header.program_headers(endian, &*data).ok()? {
        if ph.p_type(endian) != elf::PT_LOAD || ph.p_flags(endian) & elf::PF_X == 0 {
            continue;
        }
        let (vaddr, offset, filesz) =
            (ph.p_vaddr(endian), ph.p_offset(endian), ph.p_filesz(endian));
        if offset & !(PAGE - 1) != m.offset {
            continue;
        }
        let bias = m.start.checked_sub(vaddr & !(PAGE - 1))?;
        let end = bias.checked_add(vaddr)?.checked_add(filesz)?;
        let at = end.checked_add(63)? & !63;
        if end >= m.start && at.checked_add(STUB.len() as u64)? <= m.end {
            return Some(at);
        }
    }
    None
}
