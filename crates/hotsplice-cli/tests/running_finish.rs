//! Functions that never return (a worker's `for (;;)`): refused by
//! default, as in Ksplice; with `--let-running-finish` the running
//! instance finishes in the old code — here: never — while every new call
//! takes the new code, `user show` names the thread still in the old code,
//! and undo stays strict.

mod common;

use common::*;
use std::os::unix::fs::PermissionsExt;

#[test]
fn a_never_returning_loop_keeps_the_old_code_while_new_calls_take_the_new() {
    require_root();
    let case = Case::load("forever_loop");
    let build = case.build();
    let out = temp_dir("forever");
    std::fs::set_permissions(out.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let files = create_patches(&case, &build, "fix.diff", out.path());
    let id = patch_info(&files[0]).id;
    let mut proc = build.start(&case);
    proc.expect_new_line(Stream::Stdout, case.before(), "started");
    let pid = proc.pid();

    // Strict by default: worker 1 is inside serve() for good.
    let r = apply(pid, &["--busy-timeout", "0.3"], &files);
    r.assert_failed("apply without --let-running-finish");
    assert!(r.stderr.contains("`serve`"), "{}", r.describe());

    let r = apply(pid, &["--let-running-finish", "--json"], &files);
    r.assert_ok("apply --let-running-finish");
    let j = parse_json(&r.stdout).unwrap();
    let still = j[0]["still_in_old"].as_array().cloned().unwrap_or_default();
    assert_eq!(still.len(), 1, "{}", r.stdout);
    assert_eq!(still[0]["function"], "serve");
    let worker = still[0]["tid"].as_i64().unwrap();
    assert_ne!(worker, pid as i64, "the worker, not the main thread");

    // `show` names it while it stays.
    let p = pid.to_string();
    let r = hotsplice(["user", "show", "--pid", &p, "--json"]);
    r.assert_ok("show");
    let j = parse_json(&r.stdout).unwrap();
    assert_eq!(j[0]["patches"][0]["id"], id.as_str());
    assert_eq!(j[0]["still_in_old"][0]["tid"], worker, "{}", r.stdout);
    let r = hotsplice(["user", "show", "--pid", &p]);
    assert!(
        r.stdout
            .contains(&format!("thread {worker} still runs the old `serve`")),
        "{}",
        r.describe()
    );

    // The running instance stays old; a new call takes the new code.
    proc.expect_new_line(Stream::Stdout, case.before(), "worker 1 still old");
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(proc.pid_i32(), libc::SIGUSR1) };
    proc.expect_new_line(Stream::Stdout, case.after(), "worker 2 runs the new code");
    proc.expect_new_line(Stream::Stdout, case.before(), "worker 1 still old after");

    // Undo stays strict: worker 2 never leaves the patch's code.
    let r = hotsplice(["user", "undo", "--busy-timeout", "0.3", "--pid", &p, &id]);
    r.assert_failed("undo while a thread runs the patch's code");
    assert!(r.stderr.contains("code busy"), "{}", r.describe());
    proc.assert_alive("after the refused undo");
    assert_eq!(shown_ids(pid), vec![id]);
}
