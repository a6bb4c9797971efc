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
    std::fs::write(build.dir.join("cancel"), b"").unwrap();
    proc.expect_new_line(Stream::Stdout, "cancelled: cleanup ran", "cancelled");
    proc.expect_new_line(Stream::Stdout, case.after(), "after the cancel");

    let id = j[0]["id"].as_str().unwrap().to_string();
    undo(pid, &id).assert_ok("undo");
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
        let id = j[0]["id"].as_str().unwrap().to_string();
        undo(pid, &id).assert_ok(&what);
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
