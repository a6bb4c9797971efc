//! Processes the benchmarks start. Every one is owned by a guard that kills
//! (SIGKILL) and reaps it when dropped, also while unwinding from a panic;
//! each also gets PR_SET_PDEATHSIG so it dies if the harness is killed.

use anyhow::{anyhow, bail, Context, Result};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::Duration;

/// A started process, killed and reaped on drop.
pub struct Proc {
    child: Child,
}

impl Proc {
    /// Starts `cmd` with PR_SET_PDEATHSIG(SIGKILL).
    pub fn spawn(mut cmd: Command) -> Result<Proc> {
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {:?}", cmd.get_program()))?;
        Ok(Proc { child })
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The piped standard output, once.
    pub fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.stdout.take()
    }

    /// Fails if the process has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        match self.child.try_wait()? {
            None => Ok(()),
            Some(st) => bail!("process {} exited: {st}", self.child.id()),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A target driven by line commands on stdin, answering on stdout (read by
/// a helper thread so that every answer can be waited for with a timeout).
pub struct Target {
    // Declared first: dropped (killed) before the pipes close.
    proc: Proc,
    stdin: ChildStdin,
    lines: Receiver<std::io::Result<String>>,
    name: String,
}

impl Target {
    pub fn spawn(exe: &Path, args: &[String], name: &str) -> Result<Target> {
        let mut cmd = Command::new(exe);
        cmd.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut proc = Proc::spawn(cmd)?;
        let stdin = proc.child.stdin.take().expect("piped stdin");
        let stdout = proc.child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Target {
            proc,
            stdin,
            lines,
            name: name.into(),
        })
    }

    pub fn pid(&self) -> i32 {
        self.proc.pid()
    }

    /// The next line the target prints.
    pub fn line(&mut self, timeout: Duration) -> Result<String> {
        match self.lines.recv_timeout(timeout) {
            Ok(Ok(l)) => Ok(l),
            Ok(Err(e)) => Err(anyhow!("{}: reading its output: {e}", self.name)),
            Err(RecvTimeoutError::Timeout) => {
                bail!("{}: no answer within {timeout:?}", self.name)
            }
            Err(RecvTimeoutError::Disconnected) => {
                let st = self.proc.child.try_wait().ok().flatten();
                bail!("{}: output closed (exit status {st:?})", self.name)
            }
        }
    }

    /// Sends one command line and waits for the one-line answer.
    pub fn ask(&mut self, cmd: &str, timeout: Duration) -> Result<String> {
        writeln!(self.stdin, "{cmd}")
            .and_then(|_| self.stdin.flush())
            .with_context(|| format!("{}: sending {cmd:?}", self.name))?;
        self.line(timeout)
    }
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
