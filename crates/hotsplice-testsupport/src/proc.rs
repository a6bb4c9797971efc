//! What `/proc` says about a process: alive, stopped, traced, its threads.

use std::fs;
use std::path::Path;

/// The fields of `/proc/PID/status` the tests look at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// The state letter: R, S, D, T (stopped), t (tracing stop), Z, ...
    pub state: char,
    /// Pid of the tracer, 0 if none.
    pub tracer_pid: i32,
    pub threads: usize,
}

impl Status {
    /// Stopped by a signal or in a tracing stop.
    pub fn stopped(&self) -> bool {
        matches!(self.state, 'T' | 't')
    }
}

fn parse_status(text: &str) -> Option<Status> {
    let field = |k: &str| text.lines().find_map(|l| l.strip_prefix(k)).map(str::trim);
    Some(Status {
        state: field("State:")?.chars().next()?,
        tracer_pid: field("TracerPid:")?.parse().ok()?,
        threads: field("Threads:")?.parse().ok()?,
    })
}

/// `/proc/PID/status` of a process, or of one thread with `pid/task/tid`.
pub fn status_of(path: &str) -> std::io::Result<Status> {
    let text = fs::read_to_string(format!("/proc/{path}/status"))?;
    parse_status(&text).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("/proc/{path}/status: no State/TracerPid/Threads"),
        )
    })
}

/// `/proc/PID/status`.
pub fn status(pid: i32) -> std::io::Result<Status> {
    status_of(&pid.to_string())
}

/// CPU time (user + system, clock ticks) of `/proc/PATH/stat` (`PID`, or
/// `self`): its fields 14 and 15, counted after the command name.
pub fn cpu_ticks(path: &str) -> std::io::Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{path}/stat"))?;
    let bad = || {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("/proc/{path}/stat: no utime/stime"),
        )
    };
    let after = stat
        .get(stat.rfind(')').ok_or_else(bad)? + 2..)
        .ok_or_else(bad)?;
    let f: Vec<&str> = after.split_whitespace().collect();
    let field = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).ok_or_else(bad);
    Ok(field(11)? + field(12)?)
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`).
pub fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64
}

/// True if a process with this pid exists (a zombie too).
pub fn pid_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// A pid that no process currently has.
pub fn unused_pid() -> u32 {
    let max: u32 = fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(32768);
    (1000..max)
        .rev()
        .find(|p| !pid_exists(*p))
        .expect("no free pid")
}

/// The thread ids of a process, sorted.
pub fn threads(pid: i32) -> std::io::Result<Vec<i32>> {
    let mut v: Vec<i32> = fs::read_dir(format!("/proc/{pid}/task"))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    v.sort_unstable();
    Ok(v)
}

/// Threads of `pid` that are stopped or traced: `(tid, state, tracer)`.
/// Empty for a process that runs free (and for one that is gone).
pub fn held_threads(pid: i32) -> Vec<(i32, char, i32)> {
    let Ok(tids) = threads(pid) else {
        return Vec::new();
    };
    tids.into_iter()
        .filter_map(|tid| {
            let st = status_of(&format!("{pid}/task/{tid}")).ok()?;
            (st.stopped() || st.tracer_pid != 0).then_some((tid, st.state, st.tracer_pid))
        })
        .collect()
}

/// Panics unless `pid` exists, is no zombie, and none of its threads is
/// stopped or traced.
pub fn assert_running(pid: i32, what: &str) {
    let st = status(pid).unwrap_or_else(|e| panic!("{what}: process {pid} is gone: {e}"));
    assert!(
        st.state != 'Z' && st.state != 'X',
        "{what}: process {pid} exited: {st:?}"
    );
    let held = held_threads(pid);
    assert!(
        held.is_empty(),
        "{what}: threads of {pid} stopped or traced (tid, state, tracer): {held:?}"
    );
}

/// Effective uid of this process.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

/// Panics unless this process runs as root (the process tests ptrace their targets).
pub fn require_root() {
    assert_eq!(
        euid(),
        0,
        "these tests must run as root (they ptrace their targets)"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_status_and_threads() {
        let me = std::process::id() as i32;
        let st = status(me).unwrap();
        assert!(!st.stopped(), "{st:?}");
        assert!(st.threads >= 1);
        // This thread is running while it reads its own status.
        assert_eq!(status_of("thread-self").unwrap().state, 'R');
        assert!(threads(me).unwrap().contains(&me));
        assert!(pid_exists(me as u32));
        assert!(!pid_exists(unused_pid()));
    }

    #[test]
    fn parses_status_text() {
        let st = parse_status("Name:\tx\nState:\tt (tracing stop)\nTracerPid:\t42\nThreads:\t3\n");
        assert_eq!(
            st,
            Some(Status {
                state: 't',
                tracer_pid: 42,
                threads: 3
            })
        );
        assert!(st.unwrap().stopped());
    }
}
