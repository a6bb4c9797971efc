//! Reading and writing target memory.

use std::fs::File;
use std::os::unix::fs::FileExt;

use std::io::IoSliceMut;

use nix::errno::Errno;
use nix::sys::uio::{process_vm_readv, RemoteIoVec};
use nix::unistd::Pid as NixPid;

use crate::{procfs, Error, Pid, Result};

const IOV_MAX: usize = 1024;

fn mem_err(pid: Pid, addr: u64, len: usize, e: Errno) -> Error {
    match e {
        Errno::ESRCH => Error::NoSuchProcess { pid },
        Errno::EPERM => Error::PermissionDenied {
            pid,
            uid_of_target: procfs::target_uid(pid),
        },
        e => Error::Memory {
            pid,
            addr,
            len,
            detail: format!("{e} ({})", e.desc()),
        },
    }
}

/// Read `len` bytes at `addr` with `process_vm_readv`; a short read is an error.
pub fn read_memory(pid: Pid, addr: u64, len: usize) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let mut done = 0usize;
    while done < len {
        let remote = [RemoteIoVec {
            base: (addr + done as u64) as usize,
            len: len - done,
        }];
        match process_vm_readv(
            NixPid::from_raw(pid),
            &mut [IoSliceMut::new(&mut buf[done..])],
            &remote,
        ) {
            Err(Errno::EINTR) => continue,
            Err(e) if done == 0 => return Err(mem_err(pid, addr, len, e)),
            Err(_) | Ok(0) => break,
            Ok(n) => done += n,
        }
    }
    if done < len {
        return Err(Error::Memory {
            pid,
            addr,
            len,
            detail: format!("short read: only {done} bytes readable"),
        });
    }
    Ok(buf)
}

/// Read many ranges with as few `process_vm_readv` calls as possible (up to 1024 ranges per call).
///
/// Returns one entry per range, in order. A range that is not completely readable yields `None`
/// (a partially readable range is `None`, not a prefix). Zero-length ranges yield `Some(vec![])`.
pub fn read_memory_many(pid: Pid, ranges: &[(u64, usize)]) -> Vec<Option<Vec<u8>>> {
    let mut buf = Vec::new();
    read_memory_into(pid, ranges, &mut buf)
        .into_iter()
        .map(|r| r.map(|(o, l)| buf[o..o + l].to_vec()))
        .collect()
}

/// As [`read_memory_many`], into one caller-owned buffer (reused across calls, so a hot path
/// such as the stop window allocates nothing once it has grown): returns `(offset, len)` in
/// `buf` per range, `None` for a range not completely readable.
pub fn read_memory_into(
    pid: Pid,
    ranges: &[(u64, usize)],
    buf: &mut Vec<u8>,
) -> Vec<Option<(usize, usize)>> {
    let total: usize = ranges.iter().map(|r| r.1).sum();
    buf.clear();
    buf.resize(total, 0);
    let mut offsets = Vec::with_capacity(ranges.len());
    let mut at = 0usize;
    for &(_, l) in ranges {
        offsets.push(at);
        at += l;
    }
    let mut out: Vec<Option<(usize, usize)>> = ranges
        .iter()
        .zip(&offsets)
        .map(|(&(_, l), &o)| Some((o, l)))
        .collect();
    let cap = IOV_MAX.min(ranges.len());
    let mut remote: Vec<RemoteIoVec> = Vec::with_capacity(cap);
    let mut idx = Vec::with_capacity(cap);
    // The local iovecs borrow `buf` for one call only; their vector's allocation is kept.
    let mut spare: Vec<IoSliceMut<'static>> = Vec::with_capacity(cap);
    let mut i = 0;
    while i < ranges.len() {
        remote.clear();
        idx.clear();
        let mut local = recycle(std::mem::take(&mut spare));
        // Ranges i.. lie back to back in `buf` from offsets[i] on.
        let mut rest: &mut [u8] = &mut buf[offsets[i]..];
        let mut j = i;
        while j < ranges.len() && remote.len() < IOV_MAX {
            let (a, l) = ranges[j];
            if l > 0 {
                let (head, tail) = std::mem::take(&mut rest).split_at_mut(l);
                rest = tail;
                local.push(IoSliceMut::new(head));
                remote.push(RemoteIoVec {
                    base: a as usize,
                    len: l,
                });
                idx.push(j);
            }
            j += 1;
        }
        if remote.is_empty() {
            break;
        }
        let r = process_vm_readv(NixPid::from_raw(pid), &mut local, &remote);
        spare = recycle(local);
        let n = match r {
            Err(Errno::EINTR) => continue,
            // The first range of the batch is unreadable: handled below like a short read.
            Err(Errno::EFAULT) => 0,
            Err(_) => {
                // Process gone or permission problem: nothing is readable.
                for o in out[i..].iter_mut() {
                    *o = None;
                }
                return out;
            }
            Ok(n) => n,
        };
        let mut got = n;
        let mut next = j;
        for &k in &idx {
            let l = ranges[k].1;
            if got >= l {
                got -= l;
            } else {
                // First range that was not fully read: it failed (or was partial). Retry after it.
                out[k] = None;
                next = k + 1;
                break;
            }
        }
        i = next;
    }
    out
}

/// An empty vector of slices with another lifetime, keeping `v`'s allocation (collecting a
/// vector's own iterator into a vector of an element of the same size reuses it in place).
fn recycle<'b>(mut v: Vec<IoSliceMut<'_>>) -> Vec<IoSliceMut<'b>> {
    v.clear();
    v.into_iter().map(|_| unreachable!("empty")).collect()
}

/// Writer into target memory through /proc/PID/mem.
///
/// The file stays open; `pwrite` on it uses FOLL_FORCE, so read-only (e.g. `r-xp` text) pages can be
/// written without `mprotect` (private file mappings get a private copy-on-write page).
#[derive(Debug)]
pub struct MemWriter {
    pid: Pid,
    file: File,
}

impl MemWriter {
    /// Open /proc/PID/mem read-write.
    pub fn open(pid: Pid) -> Result<Self> {
        let path = format!("/proc/{pid}/mem");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => Error::NoSuchProcess { pid },
                std::io::ErrorKind::PermissionDenied => Error::PermissionDenied {
                    pid,
                    uid_of_target: procfs::target_uid(pid),
                },
                _ => Error::Io {
                    what: format!("opening {path}"),
                    source: e,
                },
            })?;
        Ok(MemWriter { pid, file })
    }

    /// The target pid.
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// Write all of `bytes` at `addr` (short writes are retried; failure is an error).
    pub fn write(&self, addr: u64, bytes: &[u8]) -> Result<()> {
        crate::fault::point("memory write");
        let mut done = 0;
        while done < bytes.len() {
            match self.file.write_at(&bytes[done..], addr + done as u64) {
                Ok(0) => {
                    return Err(Error::Memory {
                        pid: self.pid,
                        addr,
                        len: bytes.len(),
                        detail: format!("write stopped after {done} bytes"),
                    })
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.err(addr, bytes.len(), e)),
            }
        }
        Ok(())
    }

    /// Read exactly `buf.len()` bytes at `addr`.
    pub fn read(&self, addr: u64, buf: &mut [u8]) -> Result<()> {
        let mut done = 0;
        let len = buf.len();
        while done < len {
            match self.file.read_at(&mut buf[done..], addr + done as u64) {
                Ok(0) => {
                    return Err(Error::Memory {
                        pid: self.pid,
                        addr,
                        len,
                        detail: format!("short read of {done} bytes"),
                    })
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.err(addr, len, e)),
            }
        }
        Ok(())
    }

    fn err(&self, addr: u64, len: usize, e: std::io::Error) -> Error {
        match e.raw_os_error() {
            Some(code) => mem_err(self.pid, addr, len, Errno::from_raw(code)),
            None => Error::Io {
                what: format!("accessing /proc/{}/mem at {addr:#x}", self.pid),
                source: e,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_self() {
        let me = std::process::id() as Pid;
        let data: Vec<u8> = (0..=255u8).collect();
        let a = data.as_ptr() as u64;
        assert_eq!(read_memory(me, a, 256).unwrap(), data);
        assert!(read_memory(me, 8, 16).is_err());
        let mut ranges = vec![(a, 10), (8, 4), (a + 5, 3), (a, 0)];
        for k in 0..2000u64 {
            ranges.push((a + (k % 200), 7));
        }
        let r = read_memory_many(me, &ranges);
        assert_eq!(r[0].as_deref(), Some(&data[..10]));
        assert!(r[1].is_none());
        assert_eq!(r[2].as_deref(), Some(&data[5..8]));
        assert_eq!(r[3].as_deref(), Some(&[][..]));
        for k in 0..2000usize {
            assert_eq!(r[4 + k].as_deref(), Some(&data[k % 200..k % 200 + 7]));
        }
    }
}
