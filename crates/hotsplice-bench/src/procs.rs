//! Processes the benchmarks start. Every one is a
//! [`hotsplice_testsupport::Target`]: killed (SIGKILL) and reaped when
//! dropped, also while unwinding from a panic; each also gets
//! PR_SET_PDEATHSIG so it dies if the harness is killed (all are started
//! and dropped by the main thread).

use anyhow::{bail, Result};
use hotsplice_testsupport::{Options, Output, Target};
use std::path::Path;
use std::process::Command;

fn start(cmd: Command, name: &str, opts: Options) -> Result<Target> {
    Ok(Target::start(cmd, name, opts)?)
}

/// A target driven by line commands on stdin, answering on stdout (read by
/// a helper thread so that every answer can be waited for with a timeout);
/// its stderr is the harness's.
pub fn driven(exe: &Path, args: &[String], name: &str) -> Result<Target> {
    let mut cmd = Command::new(exe);
    cmd.args(args);
    let opts = Options {
        stdin: true,
        stdout: Output::Lines,
        stderr: Output::Inherit,
        die_with_parent: true,
    };
    start(cmd, name, opts)
}

/// A process that reads nothing and whose stdout is not looked at (its
/// stderr is the harness's).
pub fn quiet(cmd: Command, name: &str) -> Result<Target> {
    let opts = Options {
        stdin: false,
        stdout: Output::Null,
        stderr: Output::Inherit,
        die_with_parent: true,
    };
    start(cmd, name, opts)
}

/// A process whose stdout is read line by line (its stderr is discarded).
pub fn watched(cmd: Command, name: &str) -> Result<Target> {
    let opts = Options {
        stdin: false,
        stdout: Output::Lines,
        stderr: Output::Null,
        die_with_parent: true,
    };
    start(cmd, name, opts)
}

/// Keeps the calling thread (and so the processes and threads it starts)
/// off one CPU until dropped, then restores its affinity.
pub struct AvoidCpu {
    old: libc::cpu_set_t,
}

impl AvoidCpu {
    /// The CPU to leave to a target's spinner: the highest one this thread
    /// may run on, if it may run on at least two.
    pub fn pick() -> Option<usize> {
        let set = current_affinity().ok()?;
        let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
            // SAFETY: `set` is a valid cpu_set_t and `c` is below CPU_SETSIZE.
            .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
            .collect();
        (cpus.len() >= 2).then(|| cpus[cpus.len() - 1])
    }

    pub fn new(cpu: usize) -> Result<AvoidCpu> {
        let old = current_affinity()?;
        let mut set = old;
        // SAFETY: `set` is a valid cpu_set_t and `cpu` is below CPU_SETSIZE (from `pick`).
        unsafe { libc::CPU_CLR(cpu, &mut set) };
        // SAFETY: valid pointer and size; 0 is the calling thread.
        let r = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) };
        if r != 0 {
            bail!("sched_setaffinity: {}", std::io::Error::last_os_error());
        }
        Ok(AvoidCpu { old })
    }
}

impl Drop for AvoidCpu {
    fn drop(&mut self) {
        // SAFETY: valid pointer and size; 0 is the calling thread.
        unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&self.old), &self.old) };
    }
}

fn current_affinity() -> Result<libc::cpu_set_t> {
    // SAFETY: cpu_set_t is plain data; all zeroes is an empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer and size; 0 is the calling thread.
    let r = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) };
    if r != 0 {
        bail!("sched_getaffinity: {}", std::io::Error::last_os_error());
    }
    Ok(set)
}
