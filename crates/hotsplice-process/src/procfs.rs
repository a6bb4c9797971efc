//! Helpers reading /proc.

use crate::{Error, Pid, Result};

/// One line of /proc/PID/maps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// `r` permission.
    pub read: bool,
    /// `w` permission.
    pub write: bool,
    /// `x` permission.
    pub exec: bool,
    /// `s` (shared) rather than `p` (private).
    pub shared: bool,
    /// File offset.
    pub offset: u64,
    /// Device as printed ("fd:01").
    pub dev: String,
    /// Inode (0 for anonymous).
    pub inode: u64,
    /// Path text as printed; `None` for anonymous mappings. Keeps `[stack]`, `[vdso]`,
    /// `/x (deleted)` etc. verbatim.
    pub path: Option<String>,
}

impl Mapping {
    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.end - self.start
    }
    /// True if the mapping has zero length (never for real mappings).
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
    /// True if `addr` lies inside.
    pub fn contains(&self, addr: u64) -> bool {
        addr >= self.start && addr < self.end
    }
}

fn io_err(pid: Pid, what: String, e: std::io::Error) -> Error {
    match e.kind() {
        std::io::ErrorKind::NotFound => Error::NoSuchProcess { pid },
        std::io::ErrorKind::PermissionDenied => Error::PermissionDenied {
            pid,
            uid_of_target: target_uid(pid),
        },
        _ => {
            if e.raw_os_error() == Some(libc::ESRCH) {
                Error::NoSuchProcess { pid }
            } else {
                Error::Io { what, source: e }
            }
        }
    }
}

fn read_proc(pid: Pid, file: &str) -> Result<String> {
    let path = format!("/proc/{pid}/{file}");
    std::fs::read_to_string(&path).map_err(|e| io_err(pid, format!("reading {path}"), e))
}

/// Parse one maps line; `None` if malformed.
pub fn parse_maps_line(line: &str) -> Option<Mapping> {
    let mut rest = line;
    let mut field = || {
        let s = rest.trim_start_matches(' ');
        let end = s.find(' ').unwrap_or(s.len());
        let (f, r) = s.split_at(end);
        rest = r;
        f
    };
    let range = field();
    let perms = field();
    let offset = field();
    let dev = field();
    let inode = field();
    let path = rest.trim_start_matches(' ');
    let (s, e) = range.split_once('-')?;
    let p = perms.as_bytes();
    if p.len() < 4 {
        return None;
    }
    Some(Mapping {
        start: u64::from_str_radix(s, 16).ok()?,
        end: u64::from_str_radix(e, 16).ok()?,
        read: p[0] == b'r',
        write: p[1] == b'w',
        exec: p[2] == b'x',
        shared: p[3] == b's',
        offset: u64::from_str_radix(offset, 16).ok()?,
        dev: dev.to_string(),
        inode: inode.parse().ok()?,
        path: if path.is_empty() {
            None
        } else {
            Some(path.to_string())
        },
    })
}

/// All mappings of `pid`, in address order (from /proc/PID/maps).
pub fn read_maps(pid: Pid) -> Result<Vec<Mapping>> {
    let text = read_proc(pid, "maps")?;
    let mut out = Vec::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        match parse_maps_line(line) {
            Some(m) => out.push(m),
            None => {
                return Err(Error::Unexpected {
                    tid: pid,
                    detail: format!("malformed /proc/{pid}/maps line: {line:?}"),
                })
            }
        }
    }
    Ok(out)
}

/// Thread ids of `pid` (entries of /proc/PID/task).
pub fn thread_ids(pid: Pid) -> Result<Vec<Pid>> {
    let path = format!("/proc/{pid}/task");
    let rd = std::fs::read_dir(&path).map_err(|e| io_err(pid, format!("listing {path}"), e))?;
    let mut out = Vec::new();
    for ent in rd {
        let ent = ent.map_err(|e| io_err(pid, format!("listing {path}"), e))?;
        if let Some(tid) = ent.file_name().to_str().and_then(|s| s.parse::<Pid>().ok()) {
            out.push(tid);
        }
    }
    Ok(out)
}

/// The `comm` of a process (or thread id), without trailing newline; `None` if unreadable.
pub fn process_name(pid: Pid) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim_end_matches('\n').to_string())
}

fn status_field(text: &str, key: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
}

/// TracerPid of `pid` (a thread id of the tracer), `None` if not traced.
pub fn tracer_pid(pid: Pid) -> Result<Option<Pid>> {
    tracer_of(pid, pid)
}

/// TracerPid of thread `tid` of process `pid`.
pub(crate) fn tracer_of(pid: Pid, tid: Pid) -> Result<Option<Pid>> {
    let text = if tid == pid {
        read_proc(pid, "status")?
    } else {
        read_proc(pid, &format!("task/{tid}/status"))?
    };
    let v = status_field(&text, "TracerPid:")
        .and_then(|v| v.parse::<Pid>().ok())
        .ok_or_else(|| Error::Unexpected {
            tid,
            detail: "no TracerPid in /proc status".into(),
        })?;
    Ok(if v == 0 { None } else { Some(v) })
}

/// Real uid of the target, if readable.
pub(crate) fn target_uid(pid: Pid) -> Option<u32> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status_field(&text, "Uid:")?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Scheduler state letter of thread `tid` of `pid` ('R', 'S', 'Z', 't', ...).
pub(crate) fn thread_state(pid: Pid, tid: Pid) -> Option<char> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
    let after = &text[text.rfind(')')? + 1..];
    after.trim_start().chars().next()
}

/// All numeric entries of /proc (process ids visible to us).
pub fn all_pids() -> Vec<Pid> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<Pid>().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lines() {
        let m = parse_maps_line("7f00-7f10 r-xp 00001000 fd:01 1234     /usr/lib/x y (deleted)")
            .unwrap();
        assert_eq!(
            (m.start, m.end, m.read, m.write, m.exec, m.shared),
            (0x7f00, 0x7f10, true, false, true, false)
        );
        assert_eq!(m.offset, 0x1000);
        assert_eq!(m.dev, "fd:01");
        assert_eq!(m.inode, 1234);
        assert_eq!(m.path.as_deref(), Some("/usr/lib/x y (deleted)"));
        let a = parse_maps_line("1000-2000 rw-s 00000000 00:00 0 ").unwrap();
        assert!(a.shared && a.path.is_none());
        let v = parse_maps_line(
            "ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]",
        )
        .unwrap();
        assert_eq!(v.path.as_deref(), Some("[vsyscall]"));
    }

    #[test]
    fn self_info() {
        let me = std::process::id() as Pid;
        assert!(read_maps(me)
            .unwrap()
            .iter()
            .any(|m| m.path.as_deref() == Some("[stack]")));
        assert!(thread_ids(me).unwrap().contains(&me));
        assert!(all_pids().contains(&me));
        assert!(process_name(me).is_some());
        assert!(matches!(
            read_maps(0x7fff_fff0),
            Err(Error::NoSuchProcess { .. })
        ));
    }
}

/// `/proc/PID/task`, opened once, to read many threads' states cheaply
/// (`openat` relative to it, one `read` into a stack buffer, `close`: no
/// allocation, no path walk through `/proc/PID`).
pub(crate) struct TaskDir {
    dir: std::fs::File,
}

impl TaskDir {
    pub(crate) fn open(pid: Pid) -> Option<TaskDir> {
        std::fs::File::open(format!("/proc/{pid}/task"))
            .ok()
            .map(|dir| TaskDir { dir })
    }

    /// Scheduler state letter of thread `tid` ('R', 'S', ...), as
    /// [`thread_state`].
    pub(crate) fn state(&self, tid: Pid) -> Option<char> {
        use std::os::fd::AsRawFd;
        // "TID/stat\0" without allocating.
        let mut path = [0u8; 32];
        let mut w = std::io::Cursor::new(&mut path[..]);
        std::io::Write::write_fmt(&mut w, format_args!("{tid}/stat\0")).ok()?;
        // SAFETY: `path` holds a NUL-terminated string (written above, the
        // rest zero); the dirfd is open for the call.
        let fd = unsafe {
            libc::openat(
                self.dir.as_raw_fd(),
                path.as_ptr().cast(),
                libc::O_RDONLY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return None;
        }
        let mut buf = [0u8; 512];
        // SAFETY: `buf` is writable for its length; `fd` is ours.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        // SAFETY: `fd` is ours and closed once.
        unsafe { libc::close(fd) };
        let text = buf.get(..usize::try_from(n).ok()?)?;
        state_of_stat(text)
    }
}

/// The state letter after the `(comm)` of a `stat` line.
fn state_of_stat(text: &[u8]) -> Option<char> {
    let close = text.iter().rposition(|&b| b == b')')?;
    text[close + 1..]
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .map(|&b| b as char)
}

/// A thread's scheduler accounting, `/proc/PID/task/TID/schedstat`: the
/// time it spent on a CPU and the time it spent runnable, waiting for one
/// (both in ns, since it started). Opened once, read with `pread`, so a
/// read in the stop window costs one system call and no allocation. Exact
/// once the thread is stopped (the kernel brings both up to date when a
/// thread leaves its CPU).
#[derive(Debug)]
pub(crate) struct SchedStat {
    file: std::fs::File,
}

impl SchedStat {
    pub(crate) fn open(pid: Pid, tid: Pid) -> Option<SchedStat> {
        std::fs::File::open(format!("/proc/{pid}/task/{tid}/schedstat"))
            .ok()
            .map(|file| SchedStat { file })
    }

    /// (on a CPU, waiting for one; both ns, times it was put on a CPU);
    /// `None` when unreadable or malformed.
    pub(crate) fn read(&self) -> Option<(u64, u64, u64)> {
        use std::os::unix::fs::FileExt;
        let mut buf = [0u8; 96];
        let n = self.file.read_at(&mut buf, 0).ok()?;
        parse_schedstat(&buf[..n])
    }
}

/// `RUN WAIT SLICES\n` (three decimal numbers), as the kernel prints it.
fn parse_schedstat(text: &[u8]) -> Option<(u64, u64, u64)> {
    let text = std::str::from_utf8(text).ok()?;
    let mut it = text.split_ascii_whitespace();
    let ran = it.next()?.parse().ok()?;
    let waited = it.next()?.parse().ok()?;
    let runs = it.next()?.parse().ok()?;
    Some((ran, waited, runs))
}

#[cfg(test)]
mod schedstat_tests {
    use super::*;

    #[test]
    fn reads_thread_states_through_the_task_directory() {
        let pid = std::process::id() as Pid;
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        let dir = TaskDir::open(pid).unwrap();
        // This thread is running while it reads.
        assert_eq!(dir.state(tid), Some('R'));
        assert_eq!(dir.state(tid), thread_state(pid, tid));
        assert_eq!(dir.state(i32::MAX), None);
        // A command name with a ')' and spaces in it.
        assert_eq!(state_of_stat(b"12 (a) b (c)) S 1 2"), Some('S'));
        assert_eq!(state_of_stat(b"12 (a"), None);
    }

    #[test]
    fn parses_what_the_kernel_prints_and_refuses_the_rest() {
        assert_eq!(
            parse_schedstat(b"112918 176242 2\n"),
            Some((112918, 176242, 2))
        );
        assert_eq!(parse_schedstat(b"112918\n"), None);
        assert_eq!(parse_schedstat(b"112918 176242\n"), None);
        assert_eq!(parse_schedstat(b"x 1 2\n"), None);
        assert_eq!(parse_schedstat(b""), None);
        assert_eq!(parse_schedstat(&[0xff, b' ', b'1']), None);
        let me = SchedStat::open(std::process::id() as Pid, crate::sys::gettid()).unwrap();
        let (a, _, _) = me.read().unwrap();
        let mut x = 0u64;
        for i in 0..3_000_000u64 {
            x = std::hint::black_box(x.wrapping_add(i));
        }
        std::thread::yield_now();
        let (b, _, _) = me.read().unwrap();
        assert!(b > a, "time on a CPU did not grow: {a} -> {b}");
    }
}
