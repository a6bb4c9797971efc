//! Shared helpers of the end-to-end tests: fixture cases, temporary build
//! directories, target processes whose output is watched line by line, and
//! running the `hotsplice` binary with a timeout.
//!
//! Standard library only (the crate has no dev-dependencies): a small
//! temporary-directory type and a small JSON reader live here.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long to wait for an expected output line.
pub const LINE_TIMEOUT: Duration = Duration::from_secs(10);
/// Upper bound for one `hotsplice` command (create builds twice, so be generous).
pub const CMD_TIMEOUT: Duration = Duration::from_secs(300);
/// Upper bound for one `make` of a fixture.
pub const MAKE_TIMEOUT: Duration = Duration::from_secs(300);

// ---------------------------------------------------------------------------
// Temporary directories
// ---------------------------------------------------------------------------

/// A directory under the system temp dir, removed on drop (kept when the
/// environment variable `HOTSPLICE_KEEP_TMP` is set, for debugging).
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let base = std::env::temp_dir();
        loop {
            let n = COUNTER.fetch_add(1, Ordering::SeqCst);
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            let path = base.join(format!(
                "hotsplice-test-{tag}-{}-{n}-{nanos:x}",
                std::process::id()
            ));
            match fs::create_dir(&path) {
                Ok(()) => {
                    // World-traversable: the "not root" test runs hotsplice as
                    // `nobody`, which must be able to read the patch files.
                    fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
                        .expect("chmod temp dir");
                    return TempDir { path };
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => panic!("cannot create temp dir {}: {e}", path.display()),
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("HOTSPLICE_KEEP_TMP").is_some() {
            eprintln!("keeping {}", self.path.display());
            return;
        }
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// Recursive copy of a directory (regular files and directories).
pub fn copy_dir(src: &Path, dst: &Path) {
    fs::create_dir_all(dst).unwrap_or_else(|e| panic!("mkdir {}: {e}", dst.display()));
    for entry in fs::read_dir(src).unwrap_or_else(|e| panic!("read {}: {e}", src.display())) {
        let entry = entry.expect("dir entry");
        let from = entry.path();
        let to = dst.join(entry.file_name());
        if fs::metadata(&from).expect("stat").is_dir() {
            copy_dir(&from, &to);
        } else {
            fs::copy(&from, &to)
                .unwrap_or_else(|e| panic!("copy {} -> {}: {e}", from.display(), to.display()));
        }
    }
}

// ---------------------------------------------------------------------------
// Running commands
// ---------------------------------------------------------------------------

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

fn cmdline_of(cmd: &Command) -> String {
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

/// Runs `make` in `dir` and panics with its output on failure.
pub fn make(dir: &Path) {
    let mut cmd = Command::new("make");
    cmd.current_dir(dir);
    // Do not inherit a jobserver or flags from an outer make.
    cmd.env_remove("MAKEFLAGS")
        .env_remove("MFLAGS")
        .env_remove("MAKELEVEL");
    let out = run_cmd(cmd, MAKE_TIMEOUT);
    out.assert_ok(&format!("make in {}", dir.display()));
}

/// Applies a `-p1` unified diff inside `dir` with `patch`.
pub fn apply_diff(dir: &Path, diff: &Path) {
    let mut cmd = Command::new("patch");
    cmd.current_dir(dir)
        .arg("-p1")
        .arg("--batch")
        .arg("-i")
        .arg(diff);
    run_cmd(cmd, Duration::from_secs(60)).assert_ok(&format!("patch -p1 < {}", diff.display()));
}

/// Effective uid of this test process (from /proc, no libc needed).
pub fn euid() -> u32 {
    let status = fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|rest| rest.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("Uid line")
}

/// The end-to-end tests attach to processes with ptrace: they need root.
pub fn require_root() {
    assert_eq!(
        euid(),
        0,
        "the hotsplice end-to-end tests must run as root (they ptrace their targets)"
    );
}

/// Reads the GNU build-id of an ELF file with `readelf -n` (None if absent
/// or readelf is unavailable).
pub fn elf_build_id(file: &Path) -> Option<String> {
    let out = Command::new("readelf").arg("-n").arg(file).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.trim().strip_prefix("Build ID:"))
        .map(|s| s.trim().to_lowercase())
}

/// True if a process with this pid exists.
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

// ---------------------------------------------------------------------------
// Fixture cases
// ---------------------------------------------------------------------------

pub fn fixtures_dir() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
    p.canonicalize()
        .unwrap_or_else(|e| panic!("fixtures dir {}: {e}", p.display()))
}

/// Names of all fixture cases (directories with a case.txt), sorted.
pub fn all_cases() -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(fixtures_dir())
        .expect("read fixtures dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("case.txt").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// One fixture case: tests/fixtures/<name>/{src/, fix.diff, case.txt}.
///
/// case.txt holds `key = value` lines (`#` starts a comment line):
/// run, before, after, after2, after_stream (stdout|stderr), targets,
/// steady, functions, expect_targets.
pub struct Case {
    pub name: String,
    pub dir: PathBuf,
    kv: Vec<(String, String)>,
}

impl Case {
    pub fn load(name: &str) -> Case {
        let dir = fixtures_dir().join(name);
        let text = fs::read_to_string(dir.join("case.txt"))
            .unwrap_or_else(|e| panic!("{name}/case.txt: {e}"));
        let mut kv = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (k, v) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("{name}/case.txt:{}: not `key = value`", i + 1));
            kv.push((k.trim().to_string(), v.trim().to_string()));
        }
        Case {
            name: name.to_string(),
            dir,
            kv,
        }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.kv
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn req(&self, key: &str) -> &str {
        self.get(key)
            .unwrap_or_else(|| panic!("{}/case.txt has no `{key}`", self.name))
    }

    /// Space-separated list value (empty if the key is absent).
    pub fn list(&self, key: &str) -> Vec<String> {
        self.get(key)
            .map(|v| v.split_whitespace().map(str::to_string).collect())
            .unwrap_or_default()
    }

    pub fn before(&self) -> &str {
        self.req("before")
    }

    pub fn after(&self) -> &str {
        self.req("after")
    }

    pub fn after_stream(&self) -> Stream {
        match self.get("after_stream").unwrap_or("stdout") {
            "stdout" => Stream::Stdout,
            "stderr" => Stream::Stderr,
            other => panic!("{}: bad after_stream `{other}`", self.name),
        }
    }

    pub fn run_argv(&self) -> Vec<String> {
        self.list("run")
    }

    pub fn diff(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Copies src/ into a fresh temp dir, optionally applies diffs with
    /// `patch -p1`, and runs `make` there.
    pub fn build_with(&self, diffs: &[&str]) -> Build {
        let tmp = TempDir::new(&self.name);
        let dir = tmp.path().join("src");
        copy_dir(&self.dir.join("src"), &dir);
        for d in diffs {
            apply_diff(&dir, &self.diff(d));
        }
        make(&dir);
        Build { _tmp: tmp, dir }
    }

    /// The original build (what running processes come from).
    pub fn build(&self) -> Build {
        self.build_with(&[])
    }
}

/// A built copy of a fixture's src/.
pub struct Build {
    _tmp: TempDir,
    pub dir: PathBuf,
}

impl Build {
    /// Starts `argv` (relative to the build dir) with LD_LIBRARY_PATH set to it.
    pub fn start_argv(&self, argv: &[String]) -> Proc {
        assert!(!argv.is_empty(), "empty run command");
        let prog = self.dir.join(&argv[0]);
        let mut cmd = Command::new(&prog);
        cmd.args(&argv[1..])
            .current_dir(&self.dir)
            .env("LD_LIBRARY_PATH", &self.dir);
        Proc::spawn(cmd, &argv.join(" "))
    }

    pub fn start(&self, case: &Case) -> Proc {
        self.start_argv(&case.run_argv())
    }
}

// ---------------------------------------------------------------------------
// Watched processes
// ---------------------------------------------------------------------------

#[derive(Default)]
struct LinesInner {
    lines: Vec<String>,
    eof: bool,
}

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

/// A running process whose stdout and stderr are collected line by line.
/// Dropping it kills and reaps the process (also when a test panics).
pub struct Proc {
    child: Child,
    pid: u32,
    name: String,
    out: Arc<Lines>,
    err: Arc<Lines>,
}

impl Proc {
    pub fn spawn(mut cmd: Command, name: &str) -> Proc {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `{}`: {e}", cmdline_of(&cmd)));
        let out = Arc::new(Lines::default());
        let err = Arc::new(Lines::default());
        let so: ChildStdout = child.stdout.take().expect("stdout");
        let se: ChildStderr = child.stderr.take().expect("stderr");
        spawn_reader(so, out.clone());
        spawn_reader(se, err.clone());
        Proc {
            pid: child.id(),
            child,
            name: name.to_string(),
            out,
            err,
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    fn buf(&self, s: Stream) -> &Lines {
        match s {
            Stream::Stdout => &self.out,
            Stream::Stderr => &self.err,
        }
    }

    /// Number of lines seen so far on `s`: lines printed later have an index >= mark.
    pub fn mark(&self, s: Stream) -> usize {
        self.buf(s).inner.lock().unwrap().lines.len()
    }

    /// Lines printed on `s` at or after `mark`.
    pub fn lines_since(&self, s: Stream, mark: usize) -> Vec<String> {
        let g = self.buf(s).inner.lock().unwrap();
        g.lines.get(mark..).map(|l| l.to_vec()).unwrap_or_default()
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
        let deadline = Instant::now() + timeout;
        let buf = self.buf(s);
        let mut g = buf.inner.lock().unwrap();
        let mut from = mark;
        loop {
            if let Some(i) = g.lines.iter().skip(from).position(|l| l == text) {
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

    /// True once a line printed at or after `mark` equals `text`.
    pub fn wait_for_line(&self, s: Stream, mark: usize, text: &str, timeout: Duration) -> bool {
        self.wait_for_line_index(s, mark, text, timeout).is_some()
    }

    /// True once a line printed from now on equals `text`.
    /// Waits for a line starting with `prefix`, printed at any time.
    pub fn wait_for_new_line_prefix(&self, s: Stream, prefix: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.lines_since(s, 0).iter().any(|l| l.starts_with(prefix)) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn wait_for_new_line(&self, s: Stream, text: &str, timeout: Duration) -> bool {
        let m = self.mark(s);
        self.wait_for_line(s, m, text, timeout)
    }

    /// Like `wait_for_line`, panicking with context on timeout.
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

    /// Like `wait_for_new_line`, panicking with context on timeout.
    pub fn expect_new_line(&mut self, s: Stream, text: &str, what: &str) -> usize {
        let m = self.mark(s);
        self.expect_line(s, m, text, what)
    }

    /// True while the process has not exited (it may still be stopped: use
    /// `expect_new_line` to check it is really running).
    pub fn is_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn assert_alive(&mut self, what: &str) {
        let alive = self.is_alive();
        assert!(
            alive,
            "{what}: `{}` (pid {}) is gone: {:?}\n{}",
            self.name,
            self.pid,
            self.child.try_wait(),
            self.describe()
        );
    }

    /// Alive, and still printing `text` (a fresh line) on `s`.
    pub fn assert_running_with(&mut self, s: Stream, text: &str, what: &str) {
        self.assert_alive(what);
        self.expect_new_line(s, text, what);
    }

    /// Last lines of both streams, for failure messages.
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
        if let Ok(st) = fs::read_to_string(format!("/proc/{}/status", self.pid)) {
            for l in st.lines() {
                if l.starts_with("State:") || l.starts_with("TracerPid:") {
                    let _ = writeln!(s, "{l}");
                }
            }
        }
        s
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------
// The hotsplice binary
// ---------------------------------------------------------------------------

/// Path of the `hotsplice` binary: Cargo's CARGO_BIN_EXE_hotsplice when the
/// crate defines the bin target, else $HOTSPLICE_BIN at run time.
pub fn hotsplice_bin() -> PathBuf {
    if let Some(p) = option_env!("CARGO_BIN_EXE_hotsplice") {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("HOTSPLICE_BIN") {
        return PathBuf::from(p);
    }
    panic!(
        "no hotsplice binary: the hotsplice-cli crate defines no `hotsplice` bin target \
         (CARGO_BIN_EXE_hotsplice unset) and HOTSPLICE_BIN is not set"
    );
}

fn os_args<I, S>(args: I) -> Vec<OsString>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    args.into_iter()
        .map(|a| a.as_ref().to_os_string())
        .collect()
}

/// The configuration, state and run directories every hotsplice the tests
/// start uses (never the machine's own), with a signing key the
/// configuration trusts.
pub struct TestEnv {
    pub root: PathBuf,
    /// Secret key that signs the test patches.
    pub key: PathBuf,
}

impl TestEnv {
    pub fn apply_to(&self, cmd: &mut Command) {
        cmd.env("HOTSPLICE_CONFIG_DIR", self.root.join("etc"))
            .env("HOTSPLICE_STATE_DIR", self.root.join("state"))
            .env("HOTSPLICE_RUN_DIR", self.root.join("run"));
    }
}

impl TestEnv {
    /// A fresh environment under Cargo's target temp dir.
    pub fn new(tag: &str) -> TestEnv {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "hotsplice-env-{tag}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = fs::remove_dir_all(&root);
        for d in ["etc/keys", "state", "run", "signing"] {
            fs::create_dir_all(root.join(d)).expect("test env dir");
        }
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).expect("chmod env");
        let out = Command::new(hotsplice_bin())
            .args(["keygen", "-o"])
            .arg(root.join("signing"))
            .arg("tests")
            .output()
            .expect("hotsplice keygen");
        assert!(out.status.success(), "keygen: {out:?}");
        fs::copy(
            root.join("signing/tests.pub"),
            root.join("etc/keys/tests.pub"),
        )
        .expect("trust the test key");
        TestEnv {
            key: root.join("signing/tests.key"),
            root,
        }
    }

    /// `hotsplice ARGS...` in this environment.
    pub fn hs<I, S>(&self, args: I) -> CmdOut
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new(hotsplice_bin());
        cmd.args(os_args(args)).current_dir(std::env::temp_dir());
        self.apply_to(&mut cmd);
        run_cmd(cmd, CMD_TIMEOUT)
    }

    /// Records in this environment's journal (operations in flight).
    pub fn journal_len(&self) -> usize {
        fs::read_dir(self.root.join("state/journal"))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// A `hotsplice ARGS...` command in this environment, not started.
    pub fn command<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new(hotsplice_bin());
        cmd.args(os_args(args)).current_dir(std::env::temp_dir());
        self.apply_to(&mut cmd);
        cmd
    }
}

/// The environment shared by the tests of one test binary.
pub fn test_env() -> &'static TestEnv {
    static ENV: std::sync::OnceLock<TestEnv> = std::sync::OnceLock::new();
    ENV.get_or_init(|| TestEnv::new("shared"))
}

/// Runs `hotsplice ARGS...` (cwd: the temp dir) and returns its output.
pub fn hotsplice<I, S>(args: I) -> CmdOut
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(hotsplice_bin());
    cmd.args(os_args(args)).current_dir(std::env::temp_dir());
    test_env().apply_to(&mut cmd);
    run_cmd(cmd, CMD_TIMEOUT)
}

/// Runs `hotsplice ARGS...` as user/group 65534 (nobody) via util-linux setpriv.
pub fn hotsplice_as_nobody<I, S>(cwd: &Path, args: I) -> CmdOut
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(hotsplice_bin())
        .args(os_args(args))
        .current_dir(cwd);
    test_env().apply_to(&mut cmd);
    run_cmd(cmd, CMD_TIMEOUT)
}

/// `hotsplice create --patch DIFF [--target F]... -o OUT --json?` on the
/// case's build dir; returns the printed patch files.
pub fn create_patches(case: &Case, build: &Build, diff: &str, out: &Path) -> Vec<PathBuf> {
    let mut args: Vec<OsString> = vec!["create".into(), "--sign".into()];
    args.push(test_env().key.clone().into_os_string());
    args.push("--patch".into());
    args.push(case.diff(diff).into_os_string());
    for t in case.list("targets") {
        args.push("--target".into());
        args.push(build.dir.join(t).into_os_string());
    }
    args.push("-o".into());
    args.push(out.as_os_str().to_os_string());
    args.push(build.dir.as_os_str().to_os_string());
    let r = hotsplice(&args);
    r.assert_ok(&format!("{}: hotsplice create ({diff})", case.name));
    let files: Vec<PathBuf> = r
        .stdout
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| {
            let p = PathBuf::from(l);
            if p.is_absolute() {
                p
            } else {
                std::env::temp_dir().join(p)
            }
        })
        .collect();
    assert!(
        !files.is_empty(),
        "{}: create printed no patch file\n{}",
        case.name,
        r.describe()
    );
    for f in &files {
        assert!(
            f.is_file(),
            "{}: create printed {} which is not a file\n{}",
            case.name,
            f.display(),
            r.describe()
        );
    }
    files
}

/// What `hotsplice info FILE --json` says about a patch file.
#[derive(Debug, Clone)]
pub struct PatchInfo {
    pub file: PathBuf,
    pub id: String,
    pub target_name: String,
    pub build_id: String,
    pub functions: Vec<String>,
}

pub fn patch_info(file: &Path) -> PatchInfo {
    let r = hotsplice([OsStr::new("info"), file.as_os_str(), OsStr::new("--json")]);
    r.assert_ok("hotsplice info --json");
    let j = Json::parse(&r.stdout)
        .unwrap_or_else(|e| panic!("info --json is not JSON ({e})\n{}", r.describe()));
    let id = j
        .get("id")
        .and_then(Json::as_str)
        .unwrap_or_else(|| panic!("info --json: no string `id`\n{}", r.describe()))
        .to_string();
    assert!(
        id.len() == 8
            && id
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()),
        "patch id {id:?} is not 8 lowercase letters/digits"
    );
    let target = j
        .get("target")
        .unwrap_or_else(|| panic!("info --json: no `target`\n{}", r.describe()));
    let target_name = target
        .get("name")
        .and_then(Json::as_str)
        .unwrap_or_else(|| panic!("info --json: no target.name\n{}", r.describe()))
        .to_string();
    let build_id = target
        .get("build_id")
        .and_then(Json::as_str)
        .unwrap_or_else(|| panic!("info --json: no target.build_id\n{}", r.describe()))
        .to_lowercase();
    let functions = j
        .get("functions")
        .and_then(Json::as_array)
        .unwrap_or_else(|| panic!("info --json: no `functions` array\n{}", r.describe()))
        .iter()
        .map(|f| {
            f.as_str()
                .map(str::to_string)
                .or_else(|| f.get("name").and_then(Json::as_str).map(str::to_string))
                .unwrap_or_else(|| panic!("info --json: odd functions entry {f:?}"))
        })
        .collect();
    PatchInfo {
        file: file.to_path_buf(),
        id,
        target_name,
        build_id,
        functions,
    }
}

/// Checks the infos against case.txt (`expect_targets`, `functions`) and
/// the build-ids of the built files.
pub fn check_infos(case: &Case, build: &Build, infos: &[PatchInfo]) {
    let names: BTreeSet<String> = infos.iter().map(|i| i.target_name.clone()).collect();
    assert_eq!(
        names.len(),
        infos.len(),
        "{}: several patch files for one target: {infos:?}",
        case.name
    );
    let expected = case.list("expect_targets");
    if !expected.is_empty() {
        let want: BTreeSet<String> = expected.into_iter().collect();
        assert_eq!(names, want, "{}: patched targets", case.name);
    }
    let funcs: BTreeSet<&str> = infos
        .iter()
        .flat_map(|i| i.functions.iter().map(String::as_str))
        .collect();
    for f in case.list("functions") {
        assert!(
            funcs.contains(f.as_str()),
            "{}: function {f} missing from the patches' functions {funcs:?}",
            case.name
        );
    }
    for i in infos {
        let file = build.dir.join(&i.target_name);
        if let Some(bid) = elf_build_id(&file) {
            assert_eq!(
                i.build_id, bid,
                "{}: build_id of the patch for {}",
                case.name, i.target_name
            );
        }
    }
    let mut ids: Vec<&str> = infos.iter().map(|i| i.id.as_str()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(
        ids.len(),
        infos.len(),
        "{}: patch ids not unique",
        case.name
    );
}

/// `hotsplice user apply [EXTRA...] --pid PID FILES...`
pub fn apply(pid: u32, extra: &[&str], files: &[PathBuf]) -> CmdOut {
    let mut args: Vec<OsString> = vec!["user".into(), "apply".into()];
    args.extend(extra.iter().map(OsString::from));
    args.push("--pid".into());
    args.push(pid.to_string().into());
    args.extend(files.iter().map(|f| f.as_os_str().to_os_string()));
    hotsplice(&args)
}

/// `hotsplice user undo --pid PID ID`
pub fn undo(pid: u32, id: &str) -> CmdOut {
    let pid = pid.to_string();
    hotsplice(["user", "undo", "--pid", pid.as_str(), id])
}

/// Patch ids that `hotsplice user show --pid PID --json` lists for `pid`.
pub fn shown_ids(pid: u32) -> Vec<String> {
    let p = pid.to_string();
    let r = hotsplice(["user", "show", "--pid", p.as_str(), "--json"]);
    r.assert_ok("hotsplice user show --json");
    let j = Json::parse(&r.stdout)
        .unwrap_or_else(|e| panic!("user show --json is not JSON ({e})\n{}", r.describe()));
    let arr = j
        .as_array()
        .unwrap_or_else(|| panic!("user show --json is not an array\n{}", r.describe()));
    let mut ids = Vec::new();
    for entry in arr {
        let epid = entry.get("pid").and_then(|v| match v {
            Json::Num(n) => Some(*n as u64),
            Json::Str(s) => s.parse().ok(),
            _ => None,
        });
        if epid != Some(u64::from(pid)) {
            continue;
        }
        if let Some(patches) = entry.get("patches").and_then(Json::as_array) {
            for p in patches {
                if let Some(id) = p.get("id").and_then(Json::as_str) {
                    ids.push(id.to_string());
                }
            }
        }
    }
    ids
}

/// Split into identifier-like words (for "does the message name `f`").
pub fn words(s: &str) -> Vec<&str> {
    s.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
        .collect()
}

// ---------------------------------------------------------------------------
// A small JSON reader
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

impl Json {
    pub fn parse(text: &str) -> Result<Json, String> {
        let mut p = JsonParser {
            s: text.as_bytes(),
            i: 0,
        };
        let v = p.value()?;
        p.ws();
        if p.i != p.s.len() {
            return Err(format!("trailing characters at byte {}", p.i));
        }
        Ok(v)
    }

    pub fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Obj(m) => m.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Json::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Json]> {
        match self {
            Json::Arr(a) => Some(a),
            _ => None,
        }
    }
}

struct JsonParser<'a> {
    s: &'a [u8],
    i: usize,
}

impl JsonParser<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && matches!(self.s[self.i], b' ' | b'\t' | b'\n' | b'\r') {
            self.i += 1;
        }
    }

    fn err<T>(&self, what: &str) -> Result<T, String> {
        Err(format!("{what} at byte {}", self.i))
    }

    fn lit(&mut self, word: &str, v: Json) -> Result<Json, String> {
        if self.s[self.i..].starts_with(word.as_bytes()) {
            self.i += word.len();
            Ok(v)
        } else {
            self.err("bad literal")
        }
    }

    fn value(&mut self) -> Result<Json, String> {
        self.ws();
        match self.s.get(self.i) {
            None => self.err("unexpected end"),
            Some(b'n') => self.lit("null", Json::Null),
            Some(b't') => self.lit("true", Json::Bool(true)),
            Some(b'f') => self.lit("false", Json::Bool(false)),
            Some(b'"') => self.string().map(Json::Str),
            Some(b'[') => {
                self.i += 1;
                let mut v = Vec::new();
                self.ws();
                if self.s.get(self.i) == Some(&b']') {
                    self.i += 1;
                    return Ok(Json::Arr(v));
                }
                loop {
                    v.push(self.value()?);
                    self.ws();
                    match self.s.get(self.i) {
                        Some(b',') => self.i += 1,
                        Some(b']') => {
                            self.i += 1;
                            return Ok(Json::Arr(v));
                        }
                        _ => return self.err("expected , or ]"),
                    }
                }
            }
            Some(b'{') => {
                self.i += 1;
                let mut m = Vec::new();
                self.ws();
                if self.s.get(self.i) == Some(&b'}') {
                    self.i += 1;
                    return Ok(Json::Obj(m));
                }
                loop {
                    self.ws();
                    if self.s.get(self.i) != Some(&b'"') {
                        return self.err("expected key");
                    }
                    let k = self.string()?;
                    self.ws();
                    if self.s.get(self.i) != Some(&b':') {
                        return self.err("expected :");
                    }
                    self.i += 1;
                    let v = self.value()?;
                    m.push((k, v));
                    self.ws();
                    match self.s.get(self.i) {
                        Some(b',') => self.i += 1,
                        Some(b'}') => {
                            self.i += 1;
                            return Ok(Json::Obj(m));
                        }
                        _ => return self.err("expected , or }"),
                    }
                }
            }
            Some(_) => {
                let start = self.i;
                while self.i < self.s.len()
                    && matches!(
                        self.s[self.i],
                        b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'
                    )
                {
                    self.i += 1;
                }
                let t = std::str::from_utf8(&self.s[start..self.i]).unwrap_or("");
                match t.parse::<f64>() {
                    Ok(n) if !t.is_empty() => Ok(Json::Num(n)),
                    _ => self.err("bad value"),
                }
            }
        }
    }

    fn hex4(&mut self) -> Result<u32, String> {
        let h = self
            .s
            .get(self.i..self.i + 4)
            .and_then(|b| std::str::from_utf8(b).ok())
            .and_then(|t| u32::from_str_radix(t, 16).ok());
        match h {
            Some(v) => {
                self.i += 4;
                Ok(v)
            }
            None => self.err("bad \\u escape"),
        }
    }

    fn string(&mut self) -> Result<String, String> {
        self.i += 1; // opening quote
        let mut out: Vec<u8> = Vec::new();
        loop {
            let Some(&c) = self.s.get(self.i) else {
                return self.err("unterminated string");
            };
            self.i += 1;
            match c {
                b'"' => return String::from_utf8(out).or_else(|_| self.err("bad UTF-8")),
                b'\\' => {
                    let Some(&e) = self.s.get(self.i) else {
                        return self.err("bad escape");
                    };
                    self.i += 1;
                    let ch = match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let mut cp = self.hex4()?;
                            if (0xD800..0xDC00).contains(&cp)
                                && self.s[self.i..].starts_with(b"\\u")
                            {
                                self.i += 2;
                                let lo = self.hex4()?;
                                cp = 0x10000
                                    + ((cp - 0xD800) << 10)
                                    + (lo.wrapping_sub(0xDC00) & 0x3ff);
                            }
                            char::from_u32(cp).unwrap_or('\u{fffd}')
                        }
                        _ => return self.err("bad escape"),
                    };
                    let mut b = [0u8; 4];
                    out.extend_from_slice(ch.encode_utf8(&mut b).as_bytes());
                }
                _ => out.push(c),
            }
        }
    }
}

/// `hotsplice create` of `diff` for a built case, signed with `key` (or not).
pub fn create(
    env: &TestEnv,
    case: &Case,
    build: &Build,
    diff: &str,
    key: Option<&Path>,
    level: u32,
    out: &Path,
) -> PathBuf {
    let mut args: Vec<String> = vec!["create".into()];
    if let Some(k) = key {
        args.push("--sign".into());
        args.push(k.display().to_string());
    }
    args.extend([
        "--level".into(),
        level.to_string(),
        "--patch".into(),
        case.diff(diff).display().to_string(),
        "-o".into(),
        out.display().to_string(),
        build.dir.display().to_string(),
    ]);
    let r = env.hs(&args);
    r.assert_ok("create");
    PathBuf::from(r.stdout.lines().next().expect("a patch path").trim())
}

/// The patch id `hotsplice info` gives for `file`.
pub fn info_id(env: &TestEnv, file: &Path) -> String {
    let r = env.hs(["info", "--json", file.to_str().unwrap()]);
    r.assert_ok("info");
    let at = r.stdout.find("\"id\": \"").expect("id in info") + 7;
    r.stdout[at..at + 8].to_string()
}

/// A temporary output directory others may read (patches are read by root's tests).
pub fn outdir(tag: &str) -> TempDir {
    let d = TempDir::new(tag);
    fs::set_permissions(d.path(), fs::Permissions::from_mode(0o755)).unwrap();
    d
}
