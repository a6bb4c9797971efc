//! Keeping a whole machine patched: signatures, the store, `upgrade` with
//! levels, exclusions, concurrent commands, the daemon for processes
//! started later, and recovery after hotsplice is killed mid-change.
//! Real programs, real ptrace; every test has its own configuration and
//! state directories.

mod common;

use common::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn shown(env: &TestEnv, pid: u32) -> String {
    let r = env.hs(["user", "show", "--pid", &pid.to_string(), "--json"]);
    r.assert_ok("show");
    r.stdout
}

/// A fresh environment, case `name` built, and its fix as a signed level-1
/// patch.
fn prepared(tag: &str, name: &str) -> (TestEnv, Case, Build, TempDir, PathBuf) {
    let (env, case, build, out) = fresh_case(tag, name);
    let file = create_signed(&env, &case, &build, "fix.diff", 1, out.path());
    (env, case, build, out, file)
}

/// `hotsplice user apply --pid PID FILE` in `env`.
fn apply_file(env: &TestEnv, pid: &str, file: &Path) -> CmdOut {
    env.hs(["user", "apply", "--pid", pid, file.to_str().unwrap()])
}

#[test]
fn unsigned_foreign_and_tampered_patches_are_refused() {
    let (env, case, build, out) = fresh_case("trust", "pie_exec");
    let mut proc = build.start_unpatched(&case);
    let pid = proc.pid().to_string();

    let unsigned = create(&env, &case, &build, "fix.diff", None, 1, out.path());
    let r = apply_file(&env, &pid, &unsigned);
    r.assert_failed("unsigned");
    assert!(r.stderr.contains("not signed"), "{}", r.describe());

    let stranger = temp_dir("stranger");
    env.hs(["keygen", "-o", stranger.path().to_str().unwrap(), "mallory"])
        .assert_ok("keygen");
    let foreign = out.path().join("foreign.hsp");
    fs::copy(&unsigned, &foreign).unwrap();
    env.hs([
        "sign",
        stranger.path().join("mallory.key").to_str().unwrap(),
        foreign.to_str().unwrap(),
    ])
    .assert_ok("sign");
    let r = apply_file(&env, &pid, &foreign);
    r.assert_failed("foreign key");
    assert!(r.stderr.contains("not trusted"), "{}", r.describe());

    let tampered = out.path().join("tampered.hsp");
    fs::copy(&unsigned, &tampered).unwrap();
    env.hs([
        "sign",
        env.key.to_str().unwrap(),
        tampered.to_str().unwrap(),
    ])
    .assert_ok("sign");
    let mut bytes = fs::read(&tampered).unwrap();
    let n = bytes.len();
    bytes[n - 5] ^= 0x10; // inside the signature
    fs::write(&tampered, &bytes).unwrap();
    let r = apply_file(&env, &pid, &tampered);
    r.assert_failed("tampered signature");
    assert!(r.stderr.contains("does not verify"), "{}", r.describe());
    let r = env.hs(["user", "install", tampered.to_str().unwrap()]);
    r.assert_failed("install of tampered");

    proc.assert_running_with(Stream::Stdout, case.before(), "refusals leave it unpatched");
    let r = env.hs([
        "user",
        "apply",
        "--allow-unsigned",
        "--pid",
        &pid,
        unsigned.to_str().unwrap(),
    ]);
    r.assert_ok("allow-unsigned");
    assert!(r.stderr.contains("WARNING"), "{}", r.describe());
    proc.expect_new_line(
        Stream::Stdout,
        case.after(),
        "patched with --allow-unsigned",
    );
}

#[test]
fn upgrade_patches_every_process_and_a_higher_level_replaces_the_lower() {
    let (env, case, build, out, l1) = prepared("upgrade", "stacked");
    let mut procs: Vec<Target> = (0..3).map(|_| build.start_unpatched(&case)).collect();
    let l2 = create_signed(&env, &case, &build, "fix2.diff", 2, &out.path().join("l2"));
    let (id1, id2) = (info_id(&env, &l1), info_id(&env, &l2));

    env.install(&l1);
    let plan = env.hs(["-n", "user", "upgrade"]);
    plan.assert_ok("dry run");
    for p in &procs {
        assert!(
            plan.stdout
                .contains(&format!("would apply {id1} to pid {}", p.pid())),
            "{}",
            plan.describe()
        );
    }
    for p in &mut procs {
        p.assert_running_with(Stream::Stdout, case.before(), "dry run changes nothing");
    }
    let r = env.hs(["-y", "user", "upgrade"]);
    r.assert_ok("upgrade to level 1");
    assert!(r.stdout.contains("3 patched"), "{}", r.describe());
    for p in &mut procs {
        p.expect_new_line(Stream::Stdout, case.after(), "level 1");
    }
    let r = env.hs(["-y", "user", "upgrade"]);
    assert!(r.stdout.contains("3 already patched"), "{}", r.describe());

    env.install(&l2);
    let avail = env.hs(["user", "show", "--available"]);
    assert!(avail.stdout.contains(&id2), "{}", avail.describe());
    let r = env.hs(["-y", "user", "upgrade"]);
    r.assert_ok("upgrade to level 2");
    assert!(r.stdout.contains("3 patched"), "{}", r.describe());
    for p in &mut procs {
        let after2 = case.req("after2").to_string();
        p.expect_new_line(Stream::Stdout, &after2, "level 2");
        let s = shown(&env, p.pid());
        assert!(
            s.contains(&id2) && !s.contains(&id1),
            "level 1 must be gone: {s}"
        );
    }
    // The level-1 mapping was unmapped, not leaked.
    for p in &procs {
        let maps = fs::read_to_string(format!("/proc/{}/maps", p.pid())).unwrap();
        assert!(!maps.contains(&format!("hotsplice:{id1}")), "{maps}");
    }
    // Per process: other tests' processes run on this machine too.
    for p in &mut procs {
        let r = env.hs(["user", "remove", "--all", "--pid", &p.pid().to_string()]);
        r.assert_ok("remove all");
        p.expect_new_line(Stream::Stdout, case.before(), "removed");
    }
}

#[test]
fn blacklisted_executable_is_skipped_with_the_reason() {
    let (env, case, build, _out, file) = prepared("blacklist", "pie_exec");
    let mut proc = build.start_unpatched(&case);
    env.install(&file);
    let bl = env.root.join("etc/blacklist.d");
    fs::create_dir_all(&bl).unwrap();
    fs::write(
        bl.join("test.conf"),
        format!(
            "# keep this one alone\n[executables]\n^{}$\n",
            build.dir.join("prog").display()
        ),
    )
    .unwrap();
    // An exclusion file or directory someone else may write is refused (it
    // could hide any process from every fix), naming it and the fix.
    use std::os::unix::fs::PermissionsExt;
    let conf = bl.join("test.conf");
    for (path, mode) in [(&conf, 0o666), (&bl, 0o777)] {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
        let r = env.hs(["-y", "user", "upgrade"]);
        r.assert_failed("upgrade with an exclusion others may write");
        assert!(
            r.stderr.contains(&path.display().to_string()) && r.stderr.contains("chmod go-w"),
            "{}",
            r.describe()
        );
        let back = if path.is_dir() { 0o755 } else { 0o644 };
        fs::set_permissions(path, fs::Permissions::from_mode(back)).unwrap();
    }
    std::os::unix::fs::chown(&conf, Some(65534), None).unwrap();
    let r = env.hs(["-y", "user", "upgrade"]);
    r.assert_failed("upgrade with an exclusion file owned by nobody");
    assert!(r.stderr.contains("uid 65534"), "{}", r.describe());
    std::os::unix::fs::chown(&conf, Some(0), None).unwrap();
    proc.assert_running_with(Stream::Stdout, case.before(), "refusals touch nothing");
    let r = env.hs(["-y", "user", "upgrade"]);
    r.assert_ok("upgrade");
    assert!(
        r.stdout.contains(&format!("skipped pid {}", proc.pid())) && r.stdout.contains("blacklist"),
        "{}",
        r.describe()
    );
    proc.assert_running_with(Stream::Stdout, case.before(), "blacklisted stays unpatched");
}

#[test]
fn concurrent_commands_on_one_process_both_succeed() {
    let (env, case, build, out, a) = prepared("concurrent", "stacked");
    let mut proc = build.start_unpatched(&case);
    let b = create_signed(&env, &case, &build, "fix2.diff", 1, &out.path().join("b"));
    let pid = proc.pid().to_string();
    let spawn = |f: &PathBuf| {
        env.command(["user", "apply", "--pid", &pid, f.to_str().unwrap()])
            .output()
            .expect("run hotsplice")
    };
    let (ra, rb) = std::thread::scope(|s| {
        let ta = s.spawn(|| spawn(&a));
        let tb = s.spawn(|| spawn(&b));
        (ta.join().unwrap(), tb.join().unwrap())
    });
    assert!(ra.status.success(), "{ra:?}");
    assert!(rb.status.success(), "{rb:?}");
    let s = shown(&env, proc.pid());
    assert!(
        s.contains(&info_id(&env, &a)) && s.contains(&info_id(&env, &b)),
        "{s}"
    );
    proc.assert_alive("after concurrent applies");
}

/// A case built, its fix installed (signed) in a fresh environment, and
/// `hotsplice daemon --rescan SECS` started and watching.
struct DaemonCase {
    _env: TestEnv,
    case: Case,
    build: Build,
    _out: TempDir,
    daemon: Target,
}

fn daemon_case(tag: &str, name: &str, rescan: &str) -> DaemonCase {
    let (env, case, build, out, file) = prepared(tag, name);
    env.install(&file);
    let daemon = Target::spawn(
        env.command(["daemon", "--rescan", rescan]),
        "hotsplice daemon",
    );
    assert!(
        daemon.wait_for_new_line_prefix(Stream::Stdout, "hotsplice daemon: watching", LINE_TIMEOUT),
        "daemon did not start\n{}",
        daemon.describe()
    );
    DaemonCase {
        _env: env,
        case,
        build,
        _out: out,
        daemon,
    }
}

/// Waits for the daemon to say it patched `pid`.
fn expect_daemon_patched(daemon: &Target, pid: u32) {
    assert!(
        daemon.wait_for_new_line_prefix(
            Stream::Stdout,
            &format!("patched pid {pid} "),
            LINE_TIMEOUT
        ),
        "{}",
        daemon.describe()
    );
}

#[test]
fn daemon_patches_processes_started_later() {
    let DaemonCase {
        case,
        build,
        mut daemon,
        ..
    } = daemon_case("daemon", "shared_lib", "30");
    // Started after the patch was installed: patched by the daemon alone,
    // and the library it needs is mapped only after exec.
    let started = Instant::now();
    let mut proc = build.start(&case);
    proc.expect_new_line(Stream::Stdout, case.after(), "patched by the daemon");
    let took = started.elapsed();
    expect_daemon_patched(&daemon, proc.pid());
    eprintln!(
        "new process patched within {took:?} of its start (daemon log: {:?})",
        daemon.lines_since(Stream::Stdout, 0)
    );
    daemon.assert_alive("daemon keeps running");
}

#[test]
fn daemon_patches_a_library_loaded_later_with_dlopen() {
    // Rescans every 0.5 s; the exec-time watch lasts 2 s, the library
    // comes 3 s after exec: only a rescan can find it.
    let DaemonCase {
        case,
        build,
        daemon,
        ..
    } = daemon_case("dlopen", "dlopen_lib", "0.5");
    let mut proc = build.start(&case);
    proc.expect_new_line(Stream::Stdout, case.after(), "library patched after dlopen");
    let first = proc.lines_since(Stream::Stdout, 0);
    let unpatched = first.iter().filter(|l| *l == case.before()).count();
    eprintln!("lines before the patch came in: {unpatched}");
    expect_daemon_patched(&daemon, proc.pid());
}

/// Kills a pid on drop (a process the test did not spawn itself).
struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SAFETY: plain syscall.
        unsafe { libc_kill(self.0, 9) };
    }
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

#[test]
fn process_in_another_mount_namespace_is_patched_through_its_own_view() {
    let (env, case, build, _out, file) = prepared("mntns", "new_libc_call");
    // In its own mount namespace, the program's directory is then hidden
    // under an empty tmpfs: only the process's memory and its
    // /proc/PID/map_files still lead to its files.
    let dir = build.dir.display().to_string();
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(format!(
            "cd {dir} && ./prog & sleep 0.3; mount -t tmpfs hidden {dir}; wait"
        ))
        .current_dir(&build.dir);
    let mut shell = Target::spawn(cmd, "unshare sh");
    shell.expect_new_line(Stream::Stdout, case.before(), "started in its namespace");
    let children = fs::read_to_string(format!("/proc/{0}/task/{0}/children", shell.pid()))
        .expect("children of the shell");
    let pid: i32 = children
        .split_whitespace()
        .next()
        .expect("the program")
        .parse()
        .unwrap();
    let _guard = KillOnDrop(pid);
    let ns = |p: &str| fs::read_link(format!("/proc/{p}/ns/mnt")).unwrap();
    assert_ne!(
        ns(&pid.to_string()),
        ns("self"),
        "not in another mount namespace"
    );
    let deadline = Instant::now() + LINE_TIMEOUT;
    while fs::read_dir(format!("/proc/{pid}/root{dir}"))
        .map(|d| d.count())
        .unwrap_or(0)
        != 0
    {
        assert!(
            Instant::now() < deadline,
            "the directory never looked empty from inside"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    apply_file(&env, &pid.to_string(), &file).assert_ok("apply across mount namespaces");
    shell.expect_new_line(Stream::Stdout, case.after(), "patched in its namespace");
}

/// Kill hotsplice (SIGKILL) at each step of an apply and of an undo; the
/// target must keep running with every function either old or new, and the
/// next command must finish or roll back what was in flight.
#[cfg(feature = "fault-injection")]
#[test]
fn killed_hotsplice_leaves_targets_consistent_and_next_command_recovers() {
    use std::os::unix::process::ExitStatusExt;
    require_root();
    let case = Case::load("inline_o2");
    let build = case.build();
    // compute() and compute2() are both replaced: each alone old or new.
    let valid = ["a=8 b=9", "a=10 b=12", "a=10 b=9", "a=8 b=12"];
    let apply_points = [
        "apply:mapped",
        "apply:written",
        "apply:jump#1",
        "apply:jump#2",
        "apply:done",
    ];
    let undo_points = ["undo:restore#1", "undo:restored", "undo:unmapped"];
    for point in apply_points.iter().chain(&undo_points) {
        let env = TestEnv::new("fault");
        let out = temp_dir("fault");
        let file = create_signed(&env, &case, &build, "fix.diff", 1, out.path());
        let id = info_id(&env, &file);
        let mut proc = build.start_unpatched(&case);
        let pid = proc.pid().to_string();
        let is_undo = point.starts_with("undo");
        if is_undo {
            apply_file(&env, &pid, &file).assert_ok("apply before undo");
            proc.expect_new_line(Stream::Stdout, case.after(), "applied");
        }
        let args: Vec<&str> = if is_undo {
            vec!["user", "undo", "--pid", &pid, &id]
        } else {
            vec!["user", "apply", "--pid", &pid, file.to_str().unwrap()]
        };
        let status = env
            .command(&args)
            .env("HOTSPLICE_FAULT", point)
            .status()
            .expect("run hotsplice");
        assert_eq!(
            status.signal(),
            Some(9),
            "{point}: hotsplice was not killed there"
        );
        // The target runs on, every function old or new.
        let mark = proc.mark(Stream::Stdout);
        std::thread::sleep(Duration::from_millis(300));
        proc.assert_alive(point);
        let lines = proc.lines_since(Stream::Stdout, mark);
        assert!(!lines.is_empty(), "{point}: target stopped printing");
        for l in &lines {
            assert!(
                valid.contains(&l.as_str()),
                "{point}: inconsistent output {l:?}"
            );
        }
        let journal = env.root.join("state/journal");
        assert!(
            fs::read_dir(&journal).map(|d| d.count()).unwrap_or(0) > 0
                || *point == "apply:done"
                || *point == "undo:unmapped",
            "{point}: nothing journaled"
        );
        // The next command recovers, then does its own work.
        let r = env.hs(["user", "remove", "--all", "--pid", &pid]);
        r.assert_ok(&format!("{point}: remove after kill"));
        proc.expect_new_line(Stream::Stdout, case.before(), point);
        assert_eq!(
            fs::read_dir(&journal).map(|d| d.count()).unwrap_or(0),
            0,
            "{point}: journal not cleared"
        );
        let maps = fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
        assert!(
            !maps.contains("hotsplice:"),
            "{point}: patch memory left behind\n{maps}"
        );
        assert!(
            !shown(&env, proc.pid()).contains(&id),
            "{point}: still shown"
        );
        // And the process can be patched again.
        apply_file(&env, &pid, &file).assert_ok(&format!("{point}: apply again"));
        proc.expect_new_line(Stream::Stdout, case.after(), point);
    }
}

/// `systemctl stop` sends SIGTERM: the daemon stops at once and cleanly
/// (exit 0), with and without the netlink event stream.
#[test]
fn daemon_stops_cleanly_on_sigterm() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::process::ExitStatusExt;
    require_root();
    let env = TestEnv::new("daemon-term");
    for extra in [&[][..], &["--no-netlink"][..]] {
        let mut args = vec!["daemon", "--rescan", "30"];
        args.extend_from_slice(extra);
        let mut child = env
            .command(&args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start the daemon");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).expect("daemon output");
        assert!(line.contains("watching"), "{extra:?}: {line}");
        let t0 = Instant::now();
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            if t0.elapsed() > Duration::from_secs(5) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{extra:?}: the daemon did not stop within 5 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut rest);
        assert_eq!(
            status.code(),
            Some(0),
            "{extra:?}: {status:?} (signal {:?})",
            status.signal()
        );
        assert!(rest.contains("stopping on SIGTERM"), "{extra:?}: {rest}");
    }
}

/// SIGTERM while apply waits for busy code: the wait ends at once, the
/// process is left unchanged, and hotsplice says why and exits 128+15.
#[test]
fn sigterm_ends_a_wait_for_busy_code() {
    let (env, case, build, _out, file) = prepared("term-busy", "busy_forever_top");
    let mut proc = build.start_unpatched(&case);
    let pid = proc.pid().to_string();
    let mut child = env
        .command([
            "user",
            "apply",
            "--busy-timeout",
            "60",
            "--pid",
            &pid,
            file.to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start hotsplice");
    std::thread::sleep(Duration::from_millis(700));
    assert!(
        child.try_wait().unwrap().is_none(),
        "apply did not wait for the busy code"
    );
    let t0 = Instant::now();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "took {:?}",
        t0.elapsed()
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(143), "{stderr}");
    assert!(
        stderr.contains("stopped waiting for busy code") && stderr.contains("stopped by SIGTERM"),
        "{stderr}"
    );
    proc.assert_running_with(Stream::Stdout, case.before(), "left unchanged");
    assert!(
        !shown(&env, proc.pid()).contains("\"id\""),
        "nothing applied"
    );
    assert_eq!(env.journal_len(), 0, "journal left");
}

/// An undo refused because the code is busy changes nothing and leaves no
/// journal record behind: the next command must not carry it out.
#[test]
fn a_refused_undo_is_not_carried_out_by_the_next_command() {
    let (env, case, build, _out, file) = prepared("refused-undo", "undo_busy");
    let id = info_id(&env, &file);
    let mut proc = build.start_unpatched(&case);
    let pid = proc.pid().to_string();
    apply_file(&env, &pid, &file).assert_ok("apply");
    proc.expect_new_line(Stream::Stdout, case.after(), "patched");
    // The new f() never returns: undo is refused.
    env.hs(["user", "undo", "--busy-timeout", "0.3", "--pid", &pid, &id])
        .assert_failed("undo of code that never leaves the stack");
    assert_eq!(
        env.journal_len(),
        0,
        "the refused undo left a journal record"
    );
    // A command that recovers first: the patch stays.
    env.hs(["user", "remove", "--pid", &pid, "zzzzzzzz"])
        .assert_ok("remove of nothing");
    proc.assert_running_with(Stream::Stdout, case.after(), "still patched");
    assert!(shown(&env, proc.pid()).contains(&id), "still shown");
}
