//! Files on disk, carefully: crash-safe writes with explicit modes (never
//! the umask's), directories created private, checks that a directory
//! nobody else may write to really is one, and bounded reads that accept
//! only regular files (a FIFO, a device or a directory is refused at once,
//! never read until it blocks forever or fills memory).

use crate::{io_err, Result, StoreError};
use std::fs::{File, Metadata};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Mode of the directories hotsplice creates for its state, journal, locks.
pub const PRIVATE_DIR_MODE: u32 = 0o700;
/// Mode of the state and journal files (and locks) hotsplice writes.
pub const PRIVATE_FILE_MODE: u32 = 0o600;
/// Mode of a public key file.
pub const PUBLIC_FILE_MODE: u32 = 0o644;

/// Largest patch file read (given on the command line or from the store).
pub const MAX_PATCH_FILE: u64 = 256 << 20;
/// Largest store index (`store.json`) read.
pub const MAX_INDEX_FILE: u64 = 16 << 20;
/// Largest journal record read.
pub const MAX_JOURNAL_RECORD: u64 = 64 << 10;
/// Largest configuration or exclusion file read.
pub const MAX_CONFIG_FILE: u64 = 1 << 20;

/// Whether to open the last component of a path if it is a symbolic link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Links {
    /// Follow it (a path a person named on the command line, or a file an
    /// administrator may link into the configuration directory).
    Follow,
    /// Refuse it (hotsplice's own state files: it never writes links).
    Refuse,
}

/// Replace `path` with `bytes`, mode 0600, so that a crash leaves either the
/// old or the new content, never a mix: temporary file, fsync, rename, fsync
/// directory. Missing parent directories are created with mode 0700.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_mode(path, bytes, PRIVATE_FILE_MODE)
}

/// As [`write_atomic`], with the file's mode given (set explicitly, whatever
/// the umask).
pub fn write_atomic_mode(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    create_private_dir_all(dir)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(
        ".{name}{TMP_MARK}{}.{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)
            .map_err(io_err(&tmp))?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(io_err(&tmp))?;
        f.write_all(bytes).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, path).map_err(io_err(path))
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
        return written;
    }
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// What temporary files of [`write_atomic`] have in their names, followed by
/// the writer's process id: `.NAME.tmp.PID.N`.
pub(crate) const TMP_MARK: &str = ".tmp.";

/// The process id of the writer of a temporary file of [`write_atomic`].
pub(crate) fn temp_writer(file_name: &str) -> Option<i32> {
    if !file_name.starts_with('.') {
        return None;
    }
    let rest = &file_name[file_name.rfind(TMP_MARK)? + TMP_MARK.len()..];
    rest.split('.').next()?.parse().ok()
}

/// Create `dir` and any missing parents with mode 0700 (set explicitly,
/// whatever the umask). Existing directories are left as they are.
pub fn create_private_dir_all(dir: &Path) -> Result<()> {
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        create_private_dir_all(parent)?;
    }
    match std::fs::DirBuilder::new()
        .mode(PRIVATE_DIR_MODE)
        .create(dir)
    {
        Ok(()) => std::fs::set_permissions(dir, std::fs::Permissions::from_mode(PRIVATE_DIR_MODE))
            .map_err(io_err(dir)),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(io_err(dir)(e)),
    }
}

/// The effective user id of this process.
pub fn euid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// Whether `meta` (a directory or file) is safe to take orders from: not
/// writable by group or others, and owned by the caller or by root (by
/// root alone when the caller is root). `what` names it in the error, e.g.
/// "state directory".
pub fn check_owner_and_mode(path: &Path, meta: &Metadata, what: &'static str) -> Result<()> {
    let mode = meta.mode() & 0o7777;
    let owner = meta.uid();
    let me = euid();
    let owner_ok = owner == 0 || (me != 0 && owner == me);
    let writable = match (mode & 0o020 != 0, mode & 0o002 != 0) {
        (true, true) => Some("group and others"),
        (true, false) => Some("its group"),
        (false, true) => Some("others"),
        (false, false) => None,
    };
    if owner_ok && writable.is_none() {
        return Ok(());
    }
    let shown = path.display().to_string();
    let mut problems = Vec::new();
    let mut fixes = Vec::new();
    if !owner_ok {
        problems.push(format!("owned by uid {owner}, not by {}", who(me)));
        fixes.push(format!(
            "chown {} {}",
            if me == 0 {
                "root".into()
            } else {
                me.to_string()
            },
            quote(&shown)
        ));
    }
    if let Some(w) = writable {
        problems.push(format!("writable by {w}"));
        fixes.push(format!("chmod go-w {}", quote(&shown)));
    }
    Err(StoreError::Insecure {
        path: shown,
        what,
        problem: problems.join(" and "),
        mode,
        owner,
        fix: fixes.join(" && "),
    })
}

fn who(uid: u32) -> String {
    if uid == 0 {
        "root".into()
    } else {
        format!("uid {uid} (you) or root")
    }
}

fn quote(s: &str) -> String {
    if s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/._-+,:@".contains(&b))
    {
        s.into()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Check a directory hotsplice keeps state in (or takes trusted keys from)
/// before using it: see [`check_owner_and_mode`]. Returns false when it does
/// not exist (yet); a path that is not a directory is an error.
pub fn check_dir(dir: &Path, what: &'static str) -> Result<bool> {
    let meta = match std::fs::metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io_err(dir)(e)),
    };
    if !meta.is_dir() {
        return Err(StoreError::NotRegular {
            path: dir.display().to_string(),
            what,
            kind: kind_of(&meta),
            expected: "directory",
        });
    }
    check_owner_and_mode(dir, &meta, what)?;
    Ok(true)
}

/// What kind of file `meta` describes, for messages.
pub fn kind_of(meta: &Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_file() {
        "regular file"
    } else if t.is_dir() {
        "directory"
    } else if t.is_symlink() {
        "symbolic link"
    } else if t.is_fifo() {
        "FIFO (named pipe)"
    } else if t.is_socket() {
        "socket"
    } else if t.is_char_device() {
        "character device"
    } else if t.is_block_device() {
        "block device"
    } else {
        "special file"
    }
}

/// Open `path` for reading if it is a regular file of at most `limit`
/// bytes. Opened without blocking (a FIFO does not wait for a writer) and,
/// with [`Links::Refuse`], without following a link; the checks are made
/// on the opened descriptor, so the file cannot be swapped in between.
/// `what` names the file in errors ("patch file", "key file", ...).
pub fn open_regular(
    path: &Path,
    what: &'static str,
    limit: u64,
    links: Links,
) -> Result<(File, Metadata)> {
    let mut flags = libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY;
    if links == Links::Refuse {
        flags |= libc::O_NOFOLLOW;
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) && links == Links::Refuse {
                StoreError::NotRegular {
                    path: path.display().to_string(),
                    what,
                    kind: "symbolic link",
                    expected: "regular file (hotsplice does not follow links here)",
                }
            } else {
                io_err(path)(e)
            }
        })?;
    let meta = file.metadata().map_err(io_err(path))?;
    if !meta.is_file() {
        return Err(StoreError::NotRegular {
            path: path.display().to_string(),
            what,
            kind: kind_of(&meta),
            expected: "regular file",
        });
    }
    if meta.len() > limit {
        return Err(StoreError::TooLarge {
            path: path.display().to_string(),
            what,
            size: meta.len(),
            limit,
        });
    }
    // Regular files never block; reads of the rest are ordinary.
    {
        use nix::fcntl::{fcntl, FcntlArg, OFlag};
        if let Ok(fl) = fcntl(file.as_raw_fd(), FcntlArg::F_GETFL) {
            let fl = OFlag::from_bits_truncate(fl) - OFlag::O_NONBLOCK;
            let _ = fcntl(file.as_raw_fd(), FcntlArg::F_SETFL(fl));
        }
    }
    Ok((file, meta))
}

/// Read all of an open file, refusing it when it grew past `limit` since it
/// was checked.
pub fn read_bounded(file: &File, path: &Path, what: &'static str, limit: u64) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    Read::take(file, limit.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(io_err(path))?;
    if out.len() as u64 > limit {
        return Err(StoreError::TooLarge {
            path: path.display().to_string(),
            what,
            size: out.len() as u64,
            limit,
        });
    }
    Ok(out)
}

/// The bytes of a file hotsplice takes orders from (its configuration, its
/// exclusions): a regular file of at most `limit` bytes that nobody but its
/// owner (root, or the caller) may write, checked on the opened descriptor
/// (see [`check_owner_and_mode`]); links are followed, and the file they
/// reach is the one checked.
pub fn read_trusted(path: &Path, what: &'static str, limit: u64) -> Result<Vec<u8>> {
    let (file, meta) = open_regular(path, what, limit, Links::Follow)?;
    check_owner_and_mode(path, &meta, what)?;
    read_bounded(&file, path, what, limit)
}

/// [`open_regular`] and [`read_bounded`] together: the bytes of a regular
/// file of at most `limit` bytes.
pub fn read_regular(path: &Path, what: &'static str, limit: u64, links: Links) -> Result<Vec<u8>> {
    let (file, _) = open_regular(path, what, limit, links)?;
    read_bounded(&file, path, what, limit)
}

/// An exclusive advisory lock on a file, released on drop.
pub struct FileLock {
    _file: nix::fcntl::Flock<File>,
    pub path: PathBuf,
}

impl FileLock {
    /// Wait for and take the lock. The lock file is created with mode 0600
    /// (missing directories 0700); a link or anything but a regular file in
    /// its place is refused.
    pub fn acquire(path: &Path) -> Result<FileLock> {
        let mut file = Self::open(path)?;
        let locked = loop {
            match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive) {
                Ok(l) => break l,
                Err((f, nix::errno::Errno::EINTR)) => file = f,
                Err((_, e)) => return Err(io_err(path)(e.into())),
            }
        };
        Ok(FileLock {
            _file: locked,
            path: path.to_path_buf(),
        })
    }

    /// Take the lock if nobody holds it; `None` if somebody does. The same
    /// file checks as [`FileLock::acquire`].
    pub fn try_acquire(path: &Path) -> Result<Option<FileLock>> {
        let mut file = Self::open(path)?;
        loop {
            match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
                Ok(l) => {
                    return Ok(Some(FileLock {
                        _file: l,
                        path: path.to_path_buf(),
                    }))
                }
                Err((f, nix::errno::Errno::EINTR)) => file = f,
                Err((_, nix::errno::Errno::EWOULDBLOCK)) => return Ok(None),
                Err((_, e)) => return Err(io_err(path)(e.into())),
            }
        }
    }

    fn open(path: &Path) -> Result<File> {
        if let Some(dir) = path.parent() {
            create_private_dir_all(dir)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(PRIVATE_FILE_MODE)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)
            .map_err(io_err(path))?;
        let meta = file.metadata().map_err(io_err(path))?;
        if !meta.is_file() {
            return Err(StoreError::NotRegular {
                path: path.display().to_string(),
                what: "lock file",
                kind: kind_of(&meta),
                expected: "regular file",
            });
        }
        Ok(file)
    }
}

/// Human size: `256 MiB`, `4 KiB`, `12345 bytes`.
pub(crate) fn human(n: u64) -> String {
    for (unit, shift) in [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)] {
        if n >= 1 << shift && n & ((1 << shift) - 1) == 0 {
            return format!("{} {unit}", n >> shift);
        }
        if n >= 1 << shift {
            return format!("{:.1} {unit}", n as f64 / (1u64 << shift) as f64);
        }
    }
    format!("{n} bytes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn writes_have_explicit_modes_whatever_the_umask() {
        let d = tempfile::tempdir().unwrap();
        // SAFETY: umask only changes this process's file creation mask.
        let old = unsafe { libc::umask(0) };
        let f = d.path().join("a/b/state.json");
        write_atomic(&f, b"{}").unwrap();
        write_atomic_mode(&d.path().join("k.pub"), b"k", PUBLIC_FILE_MODE).unwrap();
        let lock = FileLock::acquire(&d.path().join("run/x.lock")).unwrap();
        unsafe { libc::umask(old) };
        assert_eq!(mode(&f), 0o600);
        assert_eq!(mode(&d.path().join("a")), 0o700);
        assert_eq!(mode(&d.path().join("a/b")), 0o700);
        assert_eq!(mode(&d.path().join("k.pub")), 0o644);
        assert_eq!(mode(&lock.path), 0o600);
        assert_eq!(mode(&d.path().join("run")), 0o700);
        // No temporary file left behind.
        assert_eq!(std::fs::read_dir(d.path().join("a/b")).unwrap().count(), 1);
    }

    #[test]
    fn a_held_lock_is_not_taken_twice() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("tree.lock");
        let held = FileLock::try_acquire(&p).unwrap().expect("free at first");
        // flock locks belong to the open file: a second open is refused
        // while the first is held, even in the same process.
        assert!(FileLock::try_acquire(&p).unwrap().is_none());
        drop(held);
        assert!(FileLock::try_acquire(&p).unwrap().is_some());
        std::os::unix::fs::symlink(&p, d.path().join("link.lock")).unwrap();
        assert!(FileLock::try_acquire(&d.path().join("link.lock")).is_err());
    }

    #[test]
    fn only_bounded_regular_files_are_read() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo on a path we own.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = read_regular(&fifo, "patch file", 10, Links::Follow).unwrap_err();
        assert!(e.to_string().contains("FIFO"), "{e}");
        let e = read_regular(Path::new("/dev/zero"), "patch file", 10, Links::Follow).unwrap_err();
        assert!(e.to_string().contains("character device"), "{e}");
        let e = read_regular(d.path(), "patch file", 10, Links::Follow).unwrap_err();
        assert!(e.to_string().contains("directory"), "{e}");
        let big = d.path().join("big");
        File::create(&big).unwrap().set_len(11).unwrap();
        let e = read_regular(&big, "patch file", 10, Links::Follow).unwrap_err();
        assert!(matches!(e, StoreError::TooLarge { .. }), "{e}");
        let small = d.path().join("small");
        std::fs::write(&small, b"0123456789").unwrap();
        assert_eq!(
            read_regular(&small, "patch file", 10, Links::Refuse)
                .unwrap()
                .len(),
            10
        );
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&small, &link).unwrap();
        assert!(read_regular(&link, "patch file", 10, Links::Follow).is_ok());
        let e = read_regular(&link, "patch file", 10, Links::Refuse).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
    }

    #[test]
    fn writable_directories_are_refused_with_the_fix() {
        let d = tempfile::tempdir().unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(check_dir(d.path(), "state directory").unwrap());
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o770)).unwrap();
        let e = check_dir(d.path(), "state directory")
            .unwrap_err()
            .to_string();
        assert!(e.contains("0770") && e.contains("chmod go-w"), "{e}");
        assert!(!check_dir(&d.path().join("none"), "state directory").unwrap());
    }

    #[test]
    fn temp_writer_is_parsed() {
        assert_eq!(temp_writer(".1-abc.json.tmp.123.4"), Some(123));
        assert_eq!(temp_writer(".x.tmp.55"), Some(55));
        assert_eq!(temp_writer("1-abc.json"), None);
        assert_eq!(human(256 << 20), "256 MiB");
        assert_eq!(human(4096), "4 KiB");
        assert_eq!(human(100), "100 bytes");
    }
}
