//! Hot functions: four threads call the patched function in a tight loop,
//! inside it most of the time, so with every thread stopped at once one of
//! them nearly always is. Each busy thread is led out alone (run in short
//! slices while the others stay stopped) until none is inside; a thread
//! that cannot come out — it waits inside for a lock a stopped thread
//! holds — gets everything resumed, and the patch is refused cleanly.

mod common;

use common::*;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

fn patch(case: &Case, build: &Build) -> (TempDir, std::path::PathBuf, String) {
    let out = temp_dir("hot");
    std::fs::set_permissions(out.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let files = create_patches(case, build, "fix.diff", out.path());
    let id = patch_info(&files[0]).id;
    (out, files[0].clone(), id)
}

#[test]
fn apply_and_undo_of_a_function_four_threads_hammer() {
    require_root();
    let case = Case::load("hot_threads");
    let build = case.build();
    let (_out, file, id) = patch(&case, &build);
    let mut proc = build.start(&case);
    proc.expect_new_line(Stream::Stdout, case.before(), "started");
    let pid = proc.pid();
    for round in 0..3 {
        let what = format!("round {round}");
        // The threads abort on any result but 1 or 2: mixed code kills it.
        let r = apply(
            pid,
            &["--json", "--busy-timeout", "30"],
            std::slice::from_ref(&file),
        );
        r.assert_ok(&format!("{what}: apply"));
        let j = parse_json(&r.stdout).unwrap();
        eprintln!(
            "{what}: apply: attempts {}, led out {}, stopped {} us",
            j[0]["attempts"], j[0]["lead_out"], j[0]["stopped"]
        );
        proc.expect_new_line(Stream::Stdout, case.after(), &what);
        let p = pid.to_string();
        let r = hotsplice(["user", "undo", "--busy-timeout", "30", "--pid", &p, &id]);
        r.assert_ok(&format!("{what}: undo"));
        eprintln!("{what}: undo: {}", r.stdout.trim());
        proc.expect_new_line(Stream::Stdout, case.before(), &what);
        proc.assert_alive(&what);
    }
    assert!(hotsplice_testsupport::proc::held_threads(pid as i32).is_empty());
}

#[test]
fn a_thread_waiting_inside_for_a_lock_a_stopped_thread_holds_is_refused_cleanly() {
    require_root();
    let case = Case::load("hot_threads");
    let build = case.build();
    let (_out, file, _id) = patch(&case, &build);
    let mut proc = build.start_argv(&["./prog".into(), "locked".into()]);
    proc.expect_new_line(Stream::Stdout, case.before(), "started");
    let pid = proc.pid();
    let r = apply(pid, &["--busy-timeout", "1"], &[file]);
    r.assert_failed("apply with a thread stuck inside");
    assert!(
        r.stderr.contains("code busy") && r.stderr.contains("`compute`"),
        "{}",
        r.describe()
    );
    // Nothing left stopped or traced, nothing changed.
    assert!(
        hotsplice_testsupport::proc::held_threads(pid as i32).is_empty(),
        "threads left held"
    );
    std::thread::sleep(Duration::from_millis(100));
    proc.expect_new_line(Stream::Stdout, case.before(), "unchanged");
    proc.assert_alive("after the refusal");
    assert!(shown_ids(pid).is_empty());
}
