//! Unwind information for the code hotsplice maps: `create` carries the
//! `.eh_frame` entries of the changed functions, apply relocates them with
//! the code, registers them with libgcc_s (so the program's own unwinder —
//! `backtrace()`, `pthread_cancel`, C++ exceptions — walks through the
//! patched functions) and hotsplice's own walks use them (so a thread with
//! frames in patch code is walked exactly, not scanned); undo deregisters
//! them before the code goes.

mod common;

use common::*;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

fn patch_for(case: &Case, build: &Build, diff: &str, tag: &str) -> (TempDir, std::path::PathBuf) {
    let out = temp_dir(tag);
    std::fs::set_permissions(out.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let files = create_patches(case, build, diff, out.path());
    let file = files[0].clone();
    (out, file)
}

fn json_of(r: &CmdOut) -> Value {
    parse_json(&r.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", r.describe()))
}

/// The patch file's metadata, as `hotsplice info --json` shows it.
fn info_json(file: &std::path::Path) -> Value {
    let r = hotsplice(["info", "--json", file.to_str().unwrap()]);
    r.assert_ok("info");
    json_of(&r)
}

fn apply_json(pid: u32, file: &std::path::Path) -> Value {
    let r = apply(
        pid,
        &["--json", "--busy-timeout", "30"],
        &[file.to_path_buf()],
    );
    r.assert_ok("apply");
    json_of(&r)
}

/// Undo the patch `j` (apply's JSON) reports applied in `pid`.
fn undo_applied(pid: u32, j: &Value, what: &str) {
    let id = j[0]["id"].as_str().expect("apply's JSON names the patch");
    undo(pid, id).assert_ok(what);
}

#[test]
fn backtrace_and_pthread_cancel_walk_through_patched_functions() {
    require_root();
    let case = Case::load("unwind_through");
    let build = case.build();
    let (_out, file) = patch_for(&case, &build, "fix.diff", "unwind-through");
    let info = info_json(&file);
    assert!(
        info["eh_frame_size"].as_u64().is_some_and(|n| n > 4),
        "the patch carries no unwind information: {info}"
    );
    let mut proc = build.start(&case);
    proc.expect_new_line(Stream::Stdout, case.before(), "started");
    let pid = proc.pid();

    let j = apply_json(pid, &file);
    assert_eq!(j[0]["unwind"], "registered", "{j}");
    // backtrace() called inside the patched f() still finds its caller
    // (without the patch's FDEs it stops at f(): "result=-2 caller lost").
    proc.expect_new_line(Stream::Stdout, case.after(), "patched");

    // The worker is cancelled while it waits inside the patched f_wait():
    // the forced unwind runs through f_wait()'s frame to the cleanup
    // handler its caller pushed (without the FDE it ends at f_wait() and
    // the thread exits without running it).
    proc.expect_line_caused_by(
        Stream::Stdout,
        "cancelled: cleanup ran",
        "cancelled",
        || std::fs::write(build.dir.join("cancel"), b"").unwrap(),
    );
    proc.expect_new_line(Stream::Stdout, case.after(), "after the cancel");

    undo_applied(pid, &j, "undo");
    proc.expect_new_line(Stream::Stdout, case.before(), "undone");
    // backtrace() after the undo walks libgcc's registered objects again:
    // a registration left behind would point into unmapped memory.
    std::thread::sleep(Duration::from_millis(200));
    proc.expect_new_line(Stream::Stdout, case.before(), "still running");
    proc.assert_alive("after undo");
}

#[test]
fn a_cxx_exception_thrown_through_a_patched_function_is_caught() {
    require_root();
    let case = Case::load("cxx_throw");
    let build = case.build();
    let (_out, file) = patch_for(&case, &build, "fix.diff", "cxx-throw");
    let mut proc = build.start(&case);
    proc.expect_new_line(Stream::Stdout, case.before(), "started");
    let pid = proc.pid();
    // Twice: each apply registers a new mapping, each undo deregisters it.
    for round in 0..2 {
        let what = format!("round {round}");
        let j = apply_json(pid, &file);
        assert_eq!(j[0]["unwind"], "registered", "{what}: {j}");
        // Without the patch's FDE the throw finds none for the new f():
        // std::terminate, and the process is gone.
        proc.expect_new_line(Stream::Stdout, case.after(), &what);
        std::thread::sleep(Duration::from_millis(100));
        proc.expect_new_line(Stream::Stdout, case.after(), &what);
        proc.assert_alive(&what);
        undo_applied(pid, &j, &what);
        // Every throw searches the registered objects first: one left
        // behind in unmapped memory would crash the next one.
        proc.expect_new_line(Stream::Stdout, case.before(), &what);
        std::thread::sleep(Duration::from_millis(100));
        proc.expect_new_line(Stream::Stdout, case.before(), &what);
        proc.assert_alive(&what);
    }
}

#[test]
fn a_thread_inside_patch_code_is_walked_through_the_patch_frames() {
    require_root();
    let case = Case::load("patch_frames");
    let build = case.build();
    let (_out_f, file_f) = patch_for(&case, &build, "fix.diff", "frames-f");
    let (_out_g, file_g) = patch_for(&case, &build, "fix2.diff", "frames-g");
    let mut proc = build.start(&case);
    proc.expect_new_line(Stream::Stdout, case.before(), "started");
    let pid = proc.pid();

    // f() sleeps inside for 2 s of every 2.3 s: apply waits for the gap.
    let jf = apply_json(pid, &file_f);
    let id_f = jf[0]["id"].as_str().unwrap().to_string();
    // Now the worker enters the new f() and sleeps in the patch's code.
    proc.expect_new_line(Stream::Stdout, "in f 2", "in the new f");
    let jg = apply_json(pid, &file_g);
    let id_g = jg[0]["id"].as_str().unwrap().to_string();
    let r = hotsplice([
        "-v",
        "user",
        "undo",
        "--busy-timeout",
        "5",
        "--pid",
        &pid.to_string(),
        &id_g,
    ]);
    r.assert_ok("undo g");
    // The worker's stack: libc's sleep, the first patch's f(), worker(),
    // start_thread(): walked exactly with the patch's FDE; without it the
    // walk stops in the patch's code and the thread is scanned.
    assert!(
        r.stdout
            .contains("stacks: 2 walked exactly, 0 scanned conservatively"),
        "{}",
        r.describe()
    );
    // The walk shows the patch's frame (`user stacks`).
    let s = hotsplice(["user", "stacks", "--json", "--pid", &pid.to_string()]);
    s.assert_ok("stacks");
    let text = s.stdout.clone();
    assert!(
        text.contains(&format!("patch {id_f}")),
        "no frame in the patch's code: {}",
        s.describe()
    );
    // And undo of the patch the worker sleeps in waits for the gap.
    let r = hotsplice([
        "user",
        "undo",
        "--busy-timeout",
        "30",
        "--pid",
        &pid.to_string(),
        &id_f,
    ]);
    r.assert_ok("undo f");
    std::thread::sleep(Duration::from_millis(300));
    proc.assert_alive("after both undos");
    assert!(shown_ids(pid).is_empty());
}

/// handler_thread started with `argv`, once it printed `first`, its main
/// thread is parked in the handler and its worker said its thread id:
/// (target, worker's tid).
fn start_handler_thread(build: &Build, argv: &[&str], first: &str) -> (Target, u64) {
    let argv: Vec<String> = argv.iter().map(|a| a.to_string()).collect();
    let mut proc = build.start_argv(&argv);
    proc.expect_new_line(Stream::Stdout, first, "started");
    assert!(proc.wait_for_new_line_prefix(Stream::Stdout, "parked in the handler", LINE_TIMEOUT));
    let i = proc
        .wait_match(Stream::Stdout, 0, LINE_TIMEOUT, |l| {
            l.starts_with("worker tid=")
        })
        .unwrap_or_else(|| panic!("no worker tid: {}", proc.describe()));
    let tid = proc.lines_since(Stream::Stdout, i)[0]["worker tid=".len()..]
        .parse()
        .unwrap();
    (proc, tid)
}

#[test]
fn the_registration_passes_over_a_thread_parked_in_a_signal_handler() {
    require_root();
    let case = Case::load("handler_thread");
    let build = case.build();
    let (_out, file) = patch_for(&case, &build, "fix.diff", "handler-thread");
    // Every round throws through f(): once the patch runs, only a
    // registered FDE keeps the program alive.
    std::fs::write(build.dir.join("throw"), b"").unwrap();
    let (mut proc, worker) = start_handler_thread(&build, &["./prog"], "result=1,-1");
    let pid = proc.pid();

    // The main thread (tried first) waits in sigsuspend, a waiting system
    // call, but inside a handler: the worker makes libgcc's call.
    let j = apply_json(pid, &file);
    assert_eq!(j[0]["unwind"], "registered", "{j}");
    assert_eq!(j[0]["unwind_call"]["tid"], worker, "{j}");
    assert!(j[0]["unwind_call"]["stopped"].as_u64().is_some(), "{j}");
    proc.expect_new_line(Stream::Stdout, "result=2,-1", "patched, throwing");

    // The handler returns into the code it interrupted: the target lives
    // on, on the patched code.
    proc.expect_line_caused_by(Stream::Stdout, "handler returned", "released", || unsafe {
        libc::kill(pid as i32, libc::SIGUSR2);
    });
    proc.expect_new_line(Stream::Stdout, "result=2,-1", "after the handler");
    proc.assert_alive("after the handler returned");
    undo_applied(pid, &j, "undo");
    proc.expect_new_line(Stream::Stdout, "result=1,-1", "undone");
    proc.assert_alive("after undo");
}

#[test]
fn with_no_thread_fit_for_the_call_apply_refuses_or_registers_later() {
    require_root();
    let case = Case::load("handler_thread");
    let build = case.build();
    let (_out, file) = patch_for(&case, &build, "fix.diff", "handler-spin");
    let (mut proc, worker) = start_handler_thread(&build, &["./prog", "spin"], "result=1,0");
    let pid = proc.pid();

    // The worker never waits in a system call and the main thread is in a
    // handler: by default, refused, naming why and the way out.
    let r = apply(pid, &["--busy-timeout", "30"], std::slice::from_ref(&file));
    r.assert_failed("apply without a thread fit for the call");
    assert!(
        r.stderr.contains("no thread of the process was fit")
            && r.stderr
                .contains(&format!("thread {pid} inside a signal handler"))
            && r.stderr.contains(&format!("thread {worker} "))
            && r.stderr.contains("--register-unwind-later"),
        "{}",
        r.describe()
    );
    assert!(shown_ids(pid).is_empty(), "a refused apply left a patch");
    proc.expect_new_line(Stream::Stdout, "result=1,0", "unchanged");

    // Told so, apply goes ahead and says the registration waits.
    let r = apply(
        pid,
        &["--json", "--busy-timeout", "30", "--register-unwind-later"],
        std::slice::from_ref(&file),
    );
    r.assert_ok("apply --register-unwind-later");
    let j = json_of(&r);
    assert_eq!(j[0]["unwind"], "deferred", "{j}");
    assert!(
        j[0]["warning"]
            .as_str()
            .is_some_and(|w| w.contains("not registered yet")),
        "{j}"
    );
    proc.expect_new_line(Stream::Stdout, "result=2,0", "patched");

    // While no thread is fit, `show` says it is not registered yet.
    let s = hotsplice(["user", "show", "--json", "--pid", &pid.to_string()]);
    s.assert_ok("show while spinning");
    let v = json_of(&s);
    assert_eq!(v[0]["unwind_registered"][0]["result"], "not-yet", "{v}");

    // The worker rests between calls: the next command registers.
    std::fs::write(build.dir.join("rest"), b"").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let s = hotsplice(["user", "show", "--json", "--pid", &pid.to_string()]);
    s.assert_ok("show");
    let v = json_of(&s);
    assert_eq!(v[0]["unwind_registered"][0]["result"], "registered", "{v}");
    assert_eq!(v[0]["unwind_registered"][0]["tid"], worker, "{v}");
    // Registered once: the next show has nothing left to do.
    let s = hotsplice(["user", "show", "--json", "--pid", &pid.to_string()]);
    assert!(
        json_of(&s)[0].get("unwind_registered").is_none(),
        "{}",
        s.describe()
    );

    // Now a throw through the patched f() is caught.
    std::fs::write(build.dir.join("throw"), b"").unwrap();
    proc.expect_new_line(Stream::Stdout, "result=2,-1", "throwing");
    proc.assert_alive("throwing through the patched f()");
    undo_applied(pid, &j, "undo");
    proc.expect_new_line(Stream::Stdout, "result=1,-1", "undone");
    proc.assert_alive("after undo");
}

#[test]
fn libgcc_loaded_after_the_apply_gets_the_patch_registered_by_the_next_command() {
    require_root();
    let case = Case::load("late_libgcc");
    let build = case.build();
    let (_out, file) = patch_for(&case, &build, "fix.diff", "late-libgcc");
    let mut proc = build.start(&case);
    proc.expect_new_line(Stream::Stdout, case.before(), "started");
    let pid = proc.pid();

    let j = apply_json(pid, &file);
    assert_eq!(j[0]["unwind"], "no-libgcc", "{j}");
    proc.expect_new_line(Stream::Stdout, case.after(), "patched");

    // The program loads libgcc_s; the next hotsplice command registers.
    proc.expect_line_caused_by(Stream::Stdout, "loaded libgcc_s", "loaded", || {
        std::fs::write(build.dir.join("load"), b"").unwrap()
    });
    let s = hotsplice(["user", "show", "--json", "--pid", &pid.to_string()]);
    s.assert_ok("show");
    let v = json_of(&s);
    assert_eq!(v[0]["unwind_registered"][0]["result"], "registered", "{v}");

    // backtrace() inside the patched f() finds its caller (unregistered,
    // it stops at f(): "caller lost").
    let mark = proc.mark(Stream::Stderr);
    std::fs::write(build.dir.join("trace"), b"").unwrap();
    let i = proc
        .wait_match(Stream::Stderr, mark, LINE_TIMEOUT, |l| {
            l.starts_with("caller ")
        })
        .unwrap_or_else(|| panic!("no traced line: {}", proc.describe()));
    assert_eq!(
        proc.lines_since(Stream::Stderr, i)[0],
        "caller found",
        "{}",
        proc.describe()
    );
    // Undo deregisters what the late registration made: a registration
    // left behind would point into unmapped memory at the next backtrace().
    undo_applied(pid, &j, "undo");
    proc.expect_new_line(Stream::Stdout, case.before(), "undone");
    proc.expect_new_line(Stream::Stderr, "caller found", "undone, tracing");
    std::thread::sleep(Duration::from_millis(200));
    proc.expect_new_line(Stream::Stdout, case.before(), "still running");
    proc.assert_alive("after undo");
}

#[test]
fn the_daemon_pass_registers_late_too() {
    let (env, case, build, out) = fresh_case("late-daemon", "late_libgcc");
    std::fs::set_permissions(out.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let file = create_signed(&env, &case, &build, "fix.diff", 1, &out.path().join("l1"));
    env.install(&file);
    let mut proc = build.start(&case);
    proc.expect_new_line(Stream::Stdout, case.before(), "started");
    let pid = proc.pid();

    // The daemon patches the process (no libgcc_s yet).
    env.hs(["daemon", "--once", "--no-netlink"])
        .assert_ok("daemon: apply");
    proc.expect_new_line(Stream::Stdout, case.after(), "patched by the daemon");

    proc.expect_line_caused_by(Stream::Stdout, "loaded libgcc_s", "loaded", || {
        std::fs::write(build.dir.join("load"), b"").unwrap()
    });
    // Its next pass has nothing to apply, but registers.
    env.hs(["daemon", "--once", "--no-netlink"])
        .assert_ok("daemon: next pass");
    let mark = proc.mark(Stream::Stderr);
    std::fs::write(build.dir.join("trace"), b"").unwrap();
    let i = proc
        .wait_match(Stream::Stderr, mark, LINE_TIMEOUT, |l| {
            l.starts_with("caller ")
        })
        .unwrap_or_else(|| panic!("no traced line: {}", proc.describe()));
    assert_eq!(
        proc.lines_since(Stream::Stderr, i)[0],
        "caller found",
        "{}",
        proc.describe()
    );
    env.hs(["user", "remove", "--all", "--pid", &pid.to_string()])
        .assert_ok("remove");
    proc.expect_new_line(Stream::Stdout, case.before(), "removed");
    proc.expect_new_line(Stream::Stderr, "caller found", "removed, tracing");
    proc.assert_alive("after remove");
}
