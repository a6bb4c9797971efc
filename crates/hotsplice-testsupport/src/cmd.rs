//! Running a command to completion, with a timeout.

use std::io::Read;
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// Result of a finished command.
pub struct CmdOut {
    pub cmdline: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl CmdOut {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    pub fn describe(&self) -> String {
        format!(
            "command: {}\nstatus: {}\nelapsed: {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.cmdline, self.status, self.elapsed, self.stdout, self.stderr
        )
    }

    /// Panics (with the full output) unless the command exited 0.
    pub fn assert_ok(&self, what: &str) -> &Self {
        assert!(self.success(), "{what} failed\n{}", self.describe());
        self
    }

    /// Panics unless the command failed with a non-empty message on stderr.
    pub fn assert_failed(&self, what: &str) -> &Self {
        assert!(
            !self.success(),
            "{what} was expected to fail but exited 0\n{}",
            self.describe()
        );
        assert!(
            self.status.code().is_some(),
            "{what} must fail with an exit code, not die of a signal\n{}",
            self.describe()
        );
        assert!(
            !self.stderr.trim().is_empty(),
            "{what} failed without a message on stderr\n{}",
            self.describe()
        );
        self
    }

    pub fn stderr_lower(&self) -> String {
        self.stderr.to_lowercase()
    }
}

/// The program and its arguments, for messages.
pub fn cmdline_of(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd` to completion with stdin closed and both outputs captured.
/// Panics if it does not finish within `timeout` (after killing it).
pub fn run_cmd(mut cmd: Command, timeout: Duration) -> CmdOut {
    let cmdline = cmdline_of(&cmd);
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run `{cmdline}`: {e}"));
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let t_out = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let t_err = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let deadline = start + timeout;
    let status = loop {
        match child.try_wait().expect("try_wait") {
            Some(st) => break st,
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                let o = t_out.join().unwrap_or_default();
                let e = t_err.join().unwrap_or_default();
                panic!(
                    "`{cmdline}` did not finish within {timeout:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                    String::from_utf8_lossy(&o),
                    String::from_utf8_lossy(&e)
                );
            }
            None => thread::sleep(Duration::from_millis(10)),
        }
    };
    let elapsed = start.elapsed();
    let stdout = String::from_utf8_lossy(&t_out.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&t_err.join().unwrap_or_default()).into_owned();
    CmdOut {
        cmdline,
        status,
        stdout,
        stderr,
        elapsed,
    }
}
