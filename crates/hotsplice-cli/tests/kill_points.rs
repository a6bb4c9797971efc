//! hotsplice killed at every ptrace request and every write into the target
//! that it makes, one run per point: SIGKILL (nothing runs after it) and
//! SIGTERM (hotsplice must finish or roll back, then exit). For `user apply`,
//! `user undo`, level replacement by `user upgrade` and the daemon, on a
//! single-threaded target and on one whose three other threads call the
//! patched functions all the time.
//!
//! At every point: the target lives, no thread of it is left stopped or
//! traced, every function is fully old or fully new (the target aborts on
//! any other result, and its output is checked), `user show` agrees with
//! what runs, and the next command leaves nothing behind (journal empty, no
//! patch mapping, no stray executable mapping).
//!
//! Kill points are counted by the `fault-injection` build of
//! hotsplice-process (`HOTSPLICE_KILL_AT`, see its `fault.rs`).
#![cfg(feature = "fault-injection")]

mod common;

use common::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// No run of these scenarios makes more ptrace calls than this.
const MAX_POINTS: u64 = 600;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Apply,
    Undo,
    /// `-y user upgrade --pid P`: level 2 replaces level 1 in one window.
    Replace,
    /// `daemon --once`: the daemon's scan patches the target from the store.
    Daemon,
    /// `user show --pid P` registering the unwind information of a patch
    /// applied before the target loaded libgcc_s (a fresh target each run,
    /// which then calls backtrace() through the patched function all the
    /// time).
    LateRegister,
}

struct Scenario {
    env: TestEnv,
    case: Case,
    proc: Target,
    l1: PathBuf,
    l2: Option<PathBuf>,
    id1: String,
    id2: String,
    _build: Build,
    _out: TempDir,
    baseline_exec_anon: usize,
}

/// The case's fix for `level` (fix.diff, fix2.diff, ...) as a signed patch
/// of that level, in its own directory under `out`.
fn create_level(env: &TestEnv, case: &Case, build: &Build, level: u32, out: &Path) -> PathBuf {
    let diff = match level {
        1 => "fix.diff".to_string(),
        n => format!("fix{n}.diff"),
    };
    let dir = out.join(format!("l{level}"));
    fs::create_dir_all(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    create_signed(env, case, build, &diff, level, &dir)
}

/// Anonymous executable mappings that are not hotsplice patches.
fn exec_anon(pid: u32) -> usize {
    fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap()
        .lines()
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() >= 5
                && f[1].contains('x')
                && f[4] == "0"
                && f.get(5)
                    .is_none_or(|p| p.starts_with("[anon:") && !p.contains("hotsplice"))
        })
        .count()
}

impl Scenario {
    fn new(tag: &str, case: &str) -> Scenario {
        let (env, case, build, out) = fresh_case(tag, case);
        fs::set_permissions(out.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let l1 = create_level(&env, &case, &build, 1, out.path());
        let l2 = case
            .get("after2")
            .map(|_| create_level(&env, &case, &build, 2, out.path()));
        let id1 = info_id(&env, &l1);
        let id2 = l2.as_ref().map(|f| info_id(&env, f)).unwrap_or_default();
        let proc = build.start_unpatched(&case);
        let baseline_exec_anon = exec_anon(proc.pid());
        Scenario {
            env,
            case,
            proc,
            l1,
            l2,
            id1,
            id2,
            _build: build,
            _out: out,
            baseline_exec_anon,
        }
    }

    fn pid(&self) -> String {
        self.proc.pid().to_string()
    }

    fn install(&mut self, file: &Path) {
        self.env.install(file);
    }

    fn journal_len(&self) -> usize {
        self.env.journal_len()
    }

    /// The patch ids `user show` lists for the target, and its whole output.
    fn shown(&self) -> (Vec<String>, String) {
        let r = self.env.hs(["user", "show", "--pid", &self.pid()]);
        r.assert_ok("show");
        let ids = [&self.id1, &self.id2]
            .into_iter()
            .filter(|id| !id.is_empty() && r.stdout.contains(id.as_str()))
            .cloned()
            .collect();
        (ids, r.stdout + &r.stderr)
    }

    /// The state the scenario's command starts from.
    fn prepare(&mut self, op: Op) {
        let pid = self.pid();
        match op {
            Op::Apply => {}
            Op::Undo | Op::Replace => {
                self.env
                    .hs(["user", "apply", "--pid", &pid, self.l1.to_str().unwrap()])
                    .assert_ok("apply level 1 first");
                let after = self.case.after().to_string();
                self.proc
                    .expect_new_line(Stream::Stdout, &after, "level 1 applied");
            }
            Op::Daemon => {}
            Op::LateRegister => {
                // A fresh target: libgcc_s, once loaded, stays.
                let dir = self._build.dir.clone();
                for f in ["load", "trace"] {
                    let _ = fs::remove_file(dir.join(f));
                }
                self.proc = self._build.start_unpatched(&self.case);
                self.baseline_exec_anon = exec_anon(self.proc.pid());
                let pid = self.pid();
                let r = self.env.hs([
                    "user",
                    "apply",
                    "--json",
                    "--pid",
                    &pid,
                    self.l1.to_str().unwrap(),
                ]);
                r.assert_ok("apply before libgcc_s is loaded");
                assert!(r.stdout.contains("\"no-libgcc\""), "{}", r.describe());
                let after = self.case.after().to_string();
                self.proc.expect_new_line(Stream::Stdout, &after, "applied");
                self.proc.expect_line_caused_by(
                    Stream::Stdout,
                    "loaded libgcc_s",
                    "libgcc_s loaded",
                    || fs::write(dir.join("load"), b"").unwrap(),
                );
                self.proc.expect_line_caused_by(
                    Stream::Stderr,
                    "caller lost",
                    "tracing, unregistered",
                    || fs::write(dir.join("trace"), b"").unwrap(),
                );
            }
        }
    }

    fn command(&self, op: Op) -> Vec<String> {
        let pid = self.pid();
        let v: Vec<&str> = match op {
            Op::Apply => vec!["user", "apply", "--pid", &pid, self.l1.to_str().unwrap()],
            Op::Undo => vec!["user", "undo", "--pid", &pid, &self.id1],
            Op::Replace => vec!["-y", "user", "upgrade", "--pid", &pid],
            Op::Daemon => vec!["daemon", "--once", "--no-netlink"],
            Op::LateRegister => vec!["user", "show", "--pid", &pid],
        };
        v.into_iter().map(String::from).collect()
    }

    /// Lines the target may print while `op` is in any state.
    fn valid(&self, op: Op) -> Vec<String> {
        let (b, a1, a2) = (
            self.case.before(),
            self.case.after(),
            self.case.get("after2").unwrap_or_default(),
        );
        if !b.contains(' ') {
            // One value per line: no mixed state to spell out.
            let mut v = vec![b.to_string(), a1.to_string()];
            if op == Op::Replace {
                v.push(a2.to_string());
            }
            return v;
        }
        let [ba, bb] = halves(b);
        let mut firsts = vec![ba.to_string()];
        let mut seconds = vec![bb.to_string()];
        let [x, y] = halves(a1);
        firsts.push(x.into());
        seconds.push(y.into());
        if op == Op::Replace {
            let [x, y] = halves(a2);
            firsts.push(x.into());
            seconds.push(y.into());
        }
        let mut v = Vec::new();
        for f in &firsts {
            for s in &seconds {
                v.push(format!("{f} {s}"));
            }
        }
        v
    }

    /// What the command leads to when it runs to the end.
    fn done_line(&self, op: Op) -> String {
        match op {
            Op::Apply | Op::Daemon | Op::LateRegister => self.case.after().into(),
            Op::Undo => self.case.before().into(),
            Op::Replace => self.case.req("after2").into(),
        }
    }

    /// The patch `user show` must list for each whole state of the output.
    fn expected_ids(&self, line: &str) -> Option<Vec<String>> {
        if line == self.case.before() {
            Some(vec![])
        } else if line == self.case.after() {
            Some(vec![self.id1.clone()])
        } else if Some(line) == self.case.get("after2") {
            Some(vec![self.id2.clone()])
        } else {
            None
        }
    }

    fn state_name(&self, line: &str) -> &'static str {
        if line == self.case.before() {
            "old"
        } else if line == self.case.after() {
            "new"
        } else if Some(line) == self.case.get("after2") {
            "level 2"
        } else {
            "mixed"
        }
    }

    /// The target runs on: alive, no thread stopped or traced, printing only
    /// valid lines. Returns the last line.
    fn check_target(&mut self, what: &str, valid: &[String]) -> String {
        self.proc.assert_alive(what);
        let pid = self.proc.pid();
        let held = hotsplice_testsupport::proc::held_threads(pid as i32);
        assert!(
            held.is_empty(),
            "{what}: threads left stopped or traced (tid, state, tracer): {held:?}"
        );
        let mark = self.proc.mark(Stream::Stdout);
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.proc.lines_since(Stream::Stdout, mark).len() < 3 {
            assert!(
                Instant::now() < deadline,
                "{what}: target stopped printing\n{}",
                self.proc.describe()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let lines = self.proc.lines_since(Stream::Stdout, mark);
        for l in &lines {
            assert!(
                valid.contains(l),
                "{what}: inconsistent output {l:?}\n{}",
                self.proc.describe()
            );
        }
        lines.last().cloned().unwrap()
    }

    /// After a run of the late registration: the target's own unwinder
    /// (`backtrace()` through the patched function, reported on stderr)
    /// sees the patch's frames or does not, the same on every line until
    /// the next command: never a registration half made, or one still
    /// being made after hotsplice has exited. A termination request must
    /// let `user show` finish its registration.
    fn registration_settled(&mut self, what: &str, signal: &str) -> &'static str {
        let mark = self.proc.mark(Stream::Stderr);
        let deadline = Instant::now() + Duration::from_secs(5);
        let lines = loop {
            let l = self.proc.lines_since(Stream::Stderr, mark);
            if l.len() >= 3 {
                break l;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: target stopped tracing\n{}",
                self.proc.describe()
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(
            lines.iter().all(|l| *l == lines[0])
                && (lines[0] == "caller found" || lines[0] == "caller lost"),
            "{what}: the registration changed after hotsplice exited: {lines:?}\n{}",
            self.proc.describe()
        );
        if signal != "KILL" {
            assert_eq!(
                lines[0],
                "caller found",
                "{what}: SIG{signal} left the registration undone\n{}",
                self.proc.describe()
            );
        }
        if lines[0] == "caller found" {
            " registered"
        } else {
            " unregistered"
        }
    }

    /// `user show` agrees with what runs: an interrupted operation is
    /// reported as such; otherwise the listed patch is the one running.
    fn check_show(&self, what: &str, line: &str) {
        let (ids, text) = self.shown();
        if self.journal_len() > 0 {
            assert!(
                text.contains("interrupted"),
                "{what}: show does not report the interrupted operation:\n{text}"
            );
            return;
        }
        let want = self.expected_ids(line).unwrap_or_else(|| {
            panic!("{what}: functions of different states ({line}) with nothing interrupted")
        });
        assert_eq!(
            ids, want,
            "{what}: show lists {ids:?} while the target prints {line:?}:\n{text}"
        );
    }

    /// The next command recovers and leaves nothing behind; the target is
    /// back to the original.
    fn recover(&mut self, what: &str) {
        let pid = self.pid();
        // Generous: on a loaded machine leading `hot_threads` out of the
        // patch's code can take many windows.
        let r = self.env.hs([
            "user",
            "remove",
            "--all",
            "--busy-timeout",
            "60",
            "--pid",
            &pid,
        ]);
        r.assert_ok(&format!("{what}: remove after the kill"));
        let before = self.case.before().to_string();
        self.proc.expect_new_line(Stream::Stdout, &before, what);
        assert_eq!(self.journal_len(), 0, "{what}: journal not cleared");
        let maps = fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
        assert!(
            !maps.contains("hotsplice:"),
            "{what}: patch memory left behind\n{maps}"
        );
        assert_eq!(
            exec_anon(self.proc.pid()),
            self.baseline_exec_anon,
            "{what}: a stray executable mapping is left\n{maps}"
        );
    }

    /// Run the scenario's command once per kill point, until a run reaches
    /// no point any more. Returns the number of points.
    fn every_point(&mut self, op: Op, signal: &str) -> u64 {
        let valid = self.valid(op);
        let fired = self.env.root.join("fired");
        let mut outcomes: Vec<String> = Vec::new();
        for k in 1..=MAX_POINTS {
            self.prepare(op);
            let _ = fs::remove_file(&fired);
            let mut cmd = self.env.command(self.command(op));
            cmd.env("HOTSPLICE_KILL_AT", k.to_string())
                .env("HOTSPLICE_KILL_SIGNAL", signal)
                .env("HOTSPLICE_KILL_FIRED", &fired);
            let out = run_cmd(cmd, Duration::from_secs(60));
            let point = fs::read_to_string(&fired).ok();
            let what = format!(
                "{op:?}, SIG{signal} at point {k} ({})",
                point.as_deref().unwrap_or("not reached").trim()
            );
            if point.is_none() {
                // Past the last point: the command ran to the end.
                out.assert_ok(&what);
                let line = self.check_target(&what, &valid);
                assert_eq!(line, self.done_line(op), "{what}: did not take effect");
                self.check_show(&what, &line);
                self.recover(&what);
                eprintln!(
                    "{} {op:?} SIG{signal}, outcome at each kill point: {}",
                    self.case.name,
                    ranges(&outcomes)
                );
                return k - 1;
            }
            if signal == "KILL" {
                assert_eq!(
                    out.status.signal(),
                    Some(9),
                    "{what}: not killed\n{}",
                    out.describe()
                );
            } else {
                // Finished, or (when it met busy code after the signal)
                // gave up the wait and left the process as it was; then
                // exited.
                if !out.success() {
                    assert!(
                        out.status.code() == Some(143)
                            && out.stderr.contains("stopped waiting for busy code"),
                        "{what}: {}",
                        out.describe()
                    );
                }
                assert_eq!(self.journal_len(), 0, "{what}: left an operation in flight");
            }
            let line = self.check_target(&what, &valid);
            if signal != "KILL" {
                assert!(
                    self.expected_ids(&line).is_some(),
                    "{what}: half done: {line}"
                );
            }
            let registered = if op == Op::LateRegister {
                self.registration_settled(&what, signal)
            } else {
                ""
            };
            outcomes.push(format!(
                "{}{registered}{}",
                self.state_name(&line),
                if self.journal_len() > 0 {
                    " (interrupted)"
                } else {
                    ""
                }
            ));
            self.check_show(&what, &line);
            self.recover(&what);
        }
        panic!("{op:?}: more than {MAX_POINTS} kill points");
    }
}

/// "1-4 old, 5 new (interrupted), ..." from one outcome per point.
fn ranges(outcomes: &[String]) -> String {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < outcomes.len() {
        let mut j = i;
        while j + 1 < outcomes.len() && outcomes[j + 1] == outcomes[i] {
            j += 1;
        }
        parts.push(if i == j {
            format!("{} {}", i + 1, outcomes[i])
        } else {
            format!("{}-{} {}", i + 1, j + 1, outcomes[i])
        });
        i = j + 1;
    }
    parts.join(", ")
}

fn halves(line: &str) -> [&str; 2] {
    let (a, b) = line.split_once(' ').expect("two values on the line");
    [a, b]
}

fn run(case: &str, op: Op, signal: &str) {
    let mut s = Scenario::new(&format!("kill-{op:?}-{signal}").to_lowercase(), case);
    match op {
        Op::Apply | Op::Undo | Op::LateRegister => {}
        // The daemon applies level 1 from the store.
        Op::Daemon => s.install(&s.l1.clone()),
        // Level 1 is applied by hand before each run; upgrade replaces it
        // with level 2 from the store.
        Op::Replace => {
            let l2 = s.l2.clone().expect("a case with fix2.diff");
            s.install(&s.l1.clone());
            s.install(&l2);
        }
    }
    let n = s.every_point(op, signal);
    eprintln!("{case} {op:?} SIG{signal}: {n} kill points, target consistent at each");
    assert!(
        n > 5,
        "{op:?}: only {n} kill points: the counter is not wired"
    );
}

#[test]
fn apply_single_thread_sigkill() {
    run("inline_o2", Op::Apply, "KILL");
}

#[test]
fn apply_single_thread_sigterm() {
    run("inline_o2", Op::Apply, "TERM");
}

#[test]
fn apply_busy_threads_sigkill() {
    run("spin_threads", Op::Apply, "KILL");
}

#[test]
fn apply_busy_threads_sigterm() {
    run("spin_threads", Op::Apply, "TERM");
}

// Four threads inside the patched function most of the time: the windows
// lead them out, together (`run_alone`), so kill points fall there too.
#[test]
fn apply_hot_threads_led_out_sigkill() {
    run("hot_threads", Op::Apply, "KILL");
}

#[test]
fn apply_hot_threads_led_out_sigterm() {
    run("hot_threads", Op::Apply, "TERM");
}

#[test]
fn undo_hot_threads_led_out_sigkill() {
    run("hot_threads", Op::Undo, "KILL");
}

// A C++ target (libgcc_s mapped): apply registers the patch's unwind
// information by a remote call, undo and recovery deregister it before
// unmapping; the target throws through the patched function all the time,
// so a registration left pointing at unmapped memory, or one made twice,
// crashes it.
#[test]
fn apply_registering_unwind_info_sigkill() {
    run("cxx_throw", Op::Apply, "KILL");
}

#[test]
fn undo_deregistering_unwind_info_sigkill() {
    run("cxx_throw", Op::Undo, "KILL");
}

#[test]
fn level_replacement_unwind_info_sigkill() {
    run("cxx_throw", Op::Replace, "KILL");
}

// The late registration (libgcc_s loaded after the apply) by `user show`:
// the target calls backtrace() through the patched function all the time,
// and the recovery's undo must deregister exactly what was registered.
#[test]
fn late_unwind_registration_sigkill() {
    run("late_libgcc", Op::LateRegister, "KILL");
}

// The same under SIGTERM: `user show` finishes the registration it has
// started (or never starts it) and exits; no thread is left stopped.
#[test]
fn late_unwind_registration_sigterm() {
    run("late_libgcc", Op::LateRegister, "TERM");
}

#[test]
fn undo_single_thread_sigkill() {
    run("inline_o2", Op::Undo, "KILL");
}

#[test]
fn undo_single_thread_sigterm() {
    run("inline_o2", Op::Undo, "TERM");
}

#[test]
fn undo_busy_threads_sigkill() {
    run("spin_threads", Op::Undo, "KILL");
}

#[test]
fn undo_busy_threads_sigterm() {
    run("spin_threads", Op::Undo, "TERM");
}

#[test]
fn level_replacement_busy_threads_sigkill() {
    run("spin_threads", Op::Replace, "KILL");
}

#[test]
fn level_replacement_busy_threads_sigterm() {
    run("spin_threads", Op::Replace, "TERM");
}

#[test]
fn daemon_busy_threads_sigkill() {
    run("spin_threads", Op::Daemon, "KILL");
}

#[test]
fn daemon_busy_threads_sigterm() {
    run("spin_threads", Op::Daemon, "TERM");
}

/// SIGTERM during an upgrade of several processes: the operations in flight
/// finish, no new one starts, and hotsplice says so and exits 128+15.
#[test]
fn sigterm_during_upgrade_finishes_in_flight_and_starts_nothing_new() {
    let (env, case, build, out) = fresh_case("term-upgrade", "inline_o2");
    fs::set_permissions(out.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let l1 = create_level(&env, &case, &build, 1, out.path());
    env.install(&l1);
    let mut procs: Vec<Target> = (0..4).map(|_| build.start_unpatched(&case)).collect();
    let mut cmd = env.command(["-y", "user", "upgrade"]);
    cmd.env("HOTSPLICE_KILL_AT", "3")
        .env("HOTSPLICE_KILL_SIGNAL", "TERM");
    let r = run_cmd(cmd, Duration::from_secs(60));
    assert_eq!(r.status.code(), Some(143), "{}", r.describe());
    assert!(
        r.stderr.contains("stopped by SIGTERM") && r.stderr.contains("left as they were"),
        "{}",
        r.describe()
    );
    let (mut patched, mut untouched) = (0, 0);
    for p in &mut procs {
        p.assert_alive("after the upgrade");
        let mark = p.mark(Stream::Stdout);
        std::thread::sleep(Duration::from_millis(150));
        let lines = p.lines_since(Stream::Stdout, mark);
        let last = lines.last().expect("still printing").clone();
        assert!(
            lines.iter().all(|l| *l == last),
            "a process changed state after hotsplice exited: {lines:?}"
        );
        if last == case.after() {
            patched += 1;
        } else {
            assert_eq!(last, case.before(), "half patched");
            untouched += 1;
        }
    }
    assert!(
        patched >= 1 && untouched >= 1,
        "{patched} patched, {untouched} untouched"
    );
    assert_eq!(env.journal_len(), 0, "journal left");
}
