//! A started process whose output is collected line by line, killed and
//! reaped when dropped.

use crate::cmd::cmdline_of;
use std::fmt::{self, Write as _};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// How long the panicking waits (`expect_*`) wait for an expected line.
pub const LINE_TIMEOUT: Duration = Duration::from_secs(10);

/// One of a target's output streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// What becomes of one output stream of a target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// Piped and collected line by line (one reader thread).
    Lines,
    /// The harness's own stream.
    Inherit,
    /// Discarded.
    Null,
}

/// How a target is started.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Pipe its standard input (for [`Target::send`] / [`Target::ask`]);
    /// otherwise it reads /dev/null.
    pub stdin: bool,
    pub stdout: Output,
    pub stderr: Output,
    /// SIGKILL it when the thread that started it ends (PR_SET_PDEATHSIG),
    /// so it cannot outlive a harness that is killed. Only for targets
    /// started and dropped by the same thread (the main thread of a
    /// benchmark): test threads end while shared fixtures still run.
    pub die_with_parent: bool,
}

impl Default for Options {
    /// stdin closed, stdout and stderr collected.
    fn default() -> Options {
        Options {
            stdin: false,
            stdout: Output::Lines,
            stderr: Output::Lines,
            die_with_parent: false,
        }
    }
}

/// A failed wait or exchange with a target; its text names the target and
/// ends with what it printed last.
pub struct Error(String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

#[derive(Default)]
struct LinesInner {
    lines: Vec<String>,
    eof: bool,
}

/// The lines of one stream so far, filled by a reader thread.
#[derive(Default)]
struct Lines {
    inner: Mutex<LinesInner>,
    cv: Condvar,
}

fn spawn_reader<R: Read + Send + 'static>(r: R, buf: Arc<Lines>) {
    thread::spawn(move || {
        let mut reader = BufReader::new(r);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    while matches!(line.last(), Some(b'\n' | b'\r')) {
                        line.pop();
                    }
                    let s = String::from_utf8_lossy(&line).into_owned();
                    buf.inner.lock().unwrap().lines.push(s);
                    buf.cv.notify_all();
                }
            }
        }
        buf.inner.lock().unwrap().eof = true;
        buf.cv.notify_all();
    });
}

fn stdio(o: Output) -> Stdio {
    match o {
        Output::Lines => Stdio::piped(),
        Output::Inherit => Stdio::inherit(),
        Output::Null => Stdio::null(),
    }
}

/// A running process. Dropping it kills (SIGKILL) and reaps it, also when
/// a test panics.
///
/// Collected output can be read two ways: by position (`mark`, then wait
/// for a line printed after the mark: the `*_line*` methods), or as a
/// sequence on stdout (`line`, `wait_for`, `ask`: each consumes lines up to
/// the one it returns; the consumed lines are [`seen`](Target::seen)).
pub struct Target {
    child: Child,
    pid: u32,
    name: String,
    stdin: Option<ChildStdin>,
    out: Arc<Lines>,
    err: Arc<Lines>,
    /// Stdout lines consumed by the sequential reads.
    cursor: usize,
}

impl Target {
    /// Starts `cmd` with stdin closed and both output streams collected;
    /// panics if it cannot be started.
    pub fn spawn(cmd: Command, name: &str) -> Target {
        Target::start(cmd, name, Options::default()).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts `exe ARGS...` with stdin piped and both output streams
    /// collected; panics if it cannot be started.
    pub fn exe(exe: &std::path::Path, args: &[&str]) -> Target {
        let mut cmd = Command::new(exe);
        cmd.args(args);
        let opts = Options {
            stdin: true,
            ..Options::default()
        };
        let name = exe.file_name().unwrap_or_default().to_string_lossy();
        Target::start(cmd, &name, opts).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts `cmd` as `opts` say (its stdio settings are replaced).
    pub fn start(mut cmd: Command, name: &str, opts: Options) -> Result<Target, Error> {
        cmd.stdin(if opts.stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(stdio(opts.stdout))
        .stderr(stdio(opts.stderr));
        if opts.die_with_parent {
            // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| Error(format!("cannot start `{}`: {e}", cmdline_of(&cmd))))?;
        let out = Arc::new(Lines::default());
        let err = Arc::new(Lines::default());
        for (pipe, buf) in [
            (
                child
                    .stdout
                    .take()
                    .map(|p| Box::new(p) as Box<dyn Read + Send>),
                &out,
            ),
            (
                child
                    .stderr
                    .take()
                    .map(|p| Box::new(p) as Box<dyn Read + Send>),
                &err,
            ),
        ] {
            match pipe {
                Some(p) => spawn_reader(p, buf.clone()),
                None => buf.inner.lock().unwrap().eof = true,
            }
        }
        Ok(Target {
            pid: child.id(),
            stdin: child.stdin.take(),
            child,
            name: name.to_string(),
            out,
            err,
            cursor: 0,
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The pid as the kernel's `pid_t`.
    pub fn pid_i32(&self) -> i32 {
        self.pid as i32
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn buf(&self, s: Stream) -> &Lines {
        match s {
            Stream::Stdout => &self.out,
            Stream::Stderr => &self.err,
        }
    }

    // -- by position ------------------------------------------------------

    /// Number of lines seen so far on `s`: lines printed later have an index >= mark.
    pub fn mark(&self, s: Stream) -> usize {
        self.buf(s).inner.lock().unwrap().lines.len()
    }

    /// Lines printed on `s` at or after `mark`.
    pub fn lines_since(&self, s: Stream, mark: usize) -> Vec<String> {
        let g = self.buf(s).inner.lock().unwrap();
        g.lines.get(mark..).map(|l| l.to_vec()).unwrap_or_default()
    }

    /// Waits until a line printed on `s` at or after `mark` satisfies
    /// `pred`; its index, or None at the timeout or the end of the stream.
    pub fn wait_match(
        &self,
        s: Stream,
        mark: usize,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Option<usize> {
        let deadline = Instant::now() + timeout;
        let buf = self.buf(s);
        let mut g = buf.inner.lock().unwrap();
        let mut from = mark;
        loop {
            if let Some(i) = g.lines.iter().skip(from).position(|l| pred(l)) {
                return Some(from + i);
            }
            from = from.max(g.lines.len());
            let now = Instant::now();
            if g.eof || now >= deadline {
                return None;
            }
            g = buf.cv.wait_timeout(g, deadline - now).unwrap().0;
        }
    }

    /// Waits until a line printed at or after `mark` equals `text`; returns
    /// the index of that line.
    pub fn wait_for_line_index(
        &self,
        s: Stream,
        mark: usize,
        text: &str,
        timeout: Duration,
    ) -> Option<usize> {
        self.wait_match(s, mark, timeout, |l| l == text)
    }

    /// True once a line printed at or after `mark` equals `text`.
    pub fn wait_for_line(&self, s: Stream, mark: usize, text: &str, timeout: Duration) -> bool {
        self.wait_for_line_index(s, mark, text, timeout).is_some()
    }

    /// True once a line starting with `prefix` was printed (at any time).
    pub fn wait_for_new_line_prefix(&self, s: Stream, prefix: &str, timeout: Duration) -> bool {
        self.wait_match(s, 0, timeout, |l| l.starts_with(prefix))
            .is_some()
    }

    /// True once a line printed from now on equals `text`.
    pub fn wait_for_new_line(&self, s: Stream, text: &str, timeout: Duration) -> bool {
        let m = self.mark(s);
        self.wait_for_line(s, m, text, timeout)
    }

    /// Like `wait_for_line`, panicking with context after [`LINE_TIMEOUT`].
    pub fn expect_line(&mut self, s: Stream, mark: usize, text: &str, what: &str) -> usize {
        match self.wait_for_line_index(s, mark, text, LINE_TIMEOUT) {
            Some(i) => i,
            None => panic!(
                "{what}: `{}` did not print {text:?} on {s:?} within {LINE_TIMEOUT:?}\n{}",
                self.name,
                self.describe()
            ),
        }
    }

    /// `cause` (a signal, a control file the target polls), then the line `text` it makes the
    /// target print, panicking with context after [`LINE_TIMEOUT`]. The mark is taken before
    /// `cause`: a line printed once could otherwise come before `expect_new_line` took its mark.
    pub fn expect_line_caused_by(
        &mut self,
        s: Stream,
        text: &str,
        what: &str,
        cause: impl FnOnce(),
    ) -> usize {
        let m = self.mark(s);
        cause();
        self.expect_line(s, m, text, what)
    }

    /// Like `wait_for_new_line`, panicking with context after [`LINE_TIMEOUT`].
    pub fn expect_new_line(&mut self, s: Stream, text: &str, what: &str) -> usize {
        let m = self.mark(s);
        self.expect_line(s, m, text, what)
    }

    // -- as a sequence on stdout ------------------------------------------

    /// Consumes stdout lines until one satisfies `pred`, and returns it.
    pub fn next_matching(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Result<String, Error> {
        match self.wait_match(Stream::Stdout, self.cursor, timeout, pred) {
            Some(i) => {
                self.cursor = i + 1;
                Ok(self.out.inner.lock().unwrap().lines[i].clone())
            }
            None => {
                // Nothing matched: everything that came is consumed.
                self.cursor = self.mark(Stream::Stdout);
                let why = if self.out.inner.lock().unwrap().eof {
                    let st = self.child.try_wait().ok().flatten();
                    format!("output closed (exit status {st:?})")
                } else {
                    format!("no expected answer within {timeout:?}")
                };
                Err(Error(format!("{}: {why}\n{}", self.name, self.describe())))
            }
        }
    }

    /// The next line on stdout.
    pub fn line(&mut self, timeout: Duration) -> Result<String, Error> {
        self.next_matching(timeout, |_| true)
    }

    /// Consumes stdout lines until one satisfies `pred`; panics (with the
    /// last lines) on timeout or end of output.
    pub fn wait_for(&mut self, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        self.next_matching(timeout, pred)
            .unwrap_or_else(|e| panic!("waiting for output: {e}"))
    }

    /// Like `wait_for`; `None` on timeout or end of output.
    pub fn try_wait_for(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Option<String> {
        self.next_matching(timeout, pred).ok()
    }

    /// Consumes the stdout lines already printed.
    pub fn drain(&mut self) {
        self.cursor = self.mark(Stream::Stdout);
    }

    /// The stdout lines consumed so far.
    pub fn seen(&self) -> Vec<String> {
        self.out.inner.lock().unwrap().lines[..self.cursor].to_vec()
    }

    /// Consumed stdout lines containing `pat`.
    pub fn seen_containing(&self, pat: &str) -> Vec<String> {
        let g = self.out.inner.lock().unwrap();
        g.lines[..self.cursor]
            .iter()
            .filter(|l| l.contains(pat))
            .cloned()
            .collect()
    }

    /// Writes `s` to the target's stdin.
    pub fn try_send(&mut self, s: &str) -> Result<(), Error> {
        let name = &self.name;
        let w = self
            .stdin
            .as_mut()
            .ok_or_else(|| Error(format!("{name}: stdin is not piped")))?;
        w.write_all(s.as_bytes())
            .and_then(|_| w.flush())
            .map_err(|e| Error(format!("{name}: writing {s:?} to its stdin: {e}")))
    }

    /// `try_send`, panicking on failure.
    pub fn send(&mut self, s: &str) {
        self.try_send(s).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Sends one command line and returns the next line of stdout.
    pub fn ask(&mut self, cmd: &str, timeout: Duration) -> Result<String, Error> {
        self.try_send(&format!("{cmd}\n"))?;
        self.line(timeout)
    }

    // -- the process ------------------------------------------------------

    /// True while the process has not exited (it may still be stopped: use
    /// `expect_new_line` or [`crate::proc::assert_running`] to check it runs).
    pub fn is_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Fails if the process has exited.
    pub fn check_alive(&mut self) -> Result<(), Error> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            st => Err(Error(format!(
                "`{}` (pid {}) is gone: {st:?}\n{}",
                self.name,
                self.pid,
                self.describe()
            ))),
        }
    }

    pub fn assert_alive(&mut self, what: &str) {
        if let Err(e) = self.check_alive() {
            panic!("{what}: {e}");
        }
    }

    /// Alive, and still printing `text` (a fresh line) on `s`.
    pub fn assert_running_with(&mut self, s: Stream, text: &str, what: &str) {
        self.assert_alive(what);
        self.expect_new_line(s, text, what);
    }

    /// Sends SIGKILL (the process is reaped by [`wait`](Target::wait) or on drop).
    pub fn kill(&mut self) -> std::io::Result<()> {
        self.child.kill()
    }

    /// Waits for the process to exit and reaps it.
    pub fn wait(&mut self) -> std::io::Result<ExitStatus> {
        self.child.wait()
    }

    /// Last lines of both streams and the process's state, for failure messages.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        for (label, st) in [("stdout", Stream::Stdout), ("stderr", Stream::Stderr)] {
            let g = self.buf(st).inner.lock().unwrap();
            let n = g.lines.len();
            let _ = writeln!(s, "--- {} {label}: {n} lines, last ones ---", self.name);
            for l in &g.lines[n.saturating_sub(8)..] {
                let _ = writeln!(s, "{l}");
            }
        }
        if let Ok(st) = std::fs::read_to_string(format!("/proc/{}/status", self.pid)) {
            for l in st.lines() {
                if l.starts_with("State:") || l.starts_with("TracerPid:") {
                    let _ = writeln!(s, "{l}");
                }
            }
        }
        s
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut c = Command::new("sh");
        c.args(["-c", script]);
        c
    }

    #[test]
    fn lines_by_position_and_in_sequence() {
        let mut t = Target::spawn(sh("echo a; echo b >&2; echo c; echo d"), "sh");
        assert!(t.wait_for_line(Stream::Stdout, 0, "d", LINE_TIMEOUT));
        assert_eq!(t.lines_since(Stream::Stdout, 1), ["c", "d"]);
        assert_eq!(
            t.wait_for_line_index(Stream::Stderr, 0, "b", LINE_TIMEOUT),
            Some(0)
        );
        assert_eq!(t.line(LINE_TIMEOUT).unwrap(), "a");
        assert_eq!(t.wait_for(LINE_TIMEOUT, |l| l == "d"), "d");
        assert_eq!(t.seen_containing("c"), ["c"]);
        let e = t.line(LINE_TIMEOUT).unwrap_err().to_string();
        assert!(e.contains("output closed"), "{e}");
    }

    #[test]
    fn ask_answers_and_drop_kills_and_reaps() {
        let opts = Options {
            stdin: true,
            ..Options::default()
        };
        let mut t = Target::start(sh("while read l; do echo got $l; done"), "echo", opts).unwrap();
        assert_eq!(t.ask("x", LINE_TIMEOUT).unwrap(), "got x");
        let pid = t.pid();
        t.assert_alive("echo loop");
        drop(t);
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    }

    #[test]
    fn timeout_is_an_error_naming_the_target() {
        let mut t = Target::spawn(sh("echo hi; sleep 100"), "sleeper");
        let e = t
            .next_matching(Duration::from_millis(100), |l| l == "never")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("sleeper: no expected answer"), "{e}");
        assert!(e.contains("hi"), "{e}");
    }
}
