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

/// The tests of this file one at a time: the busy loops of the loaded one
/// would otherwise load the others too, and their hammering threads add to
/// its load.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    ONE.lock().unwrap_or_else(|p| p.into_inner())
}

fn patch(case: &Case, build: &Build) -> (TempDir, std::path::PathBuf, String) {
    let out = temp_dir("hot");
    std::fs::set_permissions(out.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let files = create_patches(case, build, "fix.diff", out.path());
    let id = patch_info(&files[0]).id;
    (out, files[0].clone(), id)
}

/// Three rounds of apply and undo of `compute` while four threads hammer
/// it, with `busy_timeout` (`None`: the default, 5 s), on a machine made
/// busy by [`Load`] if `loaded`.
fn hammered_rounds(busy_timeout: Option<&str>, loaded: bool) {
    require_root();
    let _one_at_a_time = serial();
    let case = Case::load("hot_threads");
    let build = case.build();
    let (_out, file, id) = patch(&case, &build);
    let mut proc = build.start(&case);
    proc.expect_new_line(Stream::Stdout, case.before(), "started");
    let pid = proc.pid();
    let load = loaded.then(|| {
        let l = Load::start();
        // Let the hogs fill the run queues.
        std::thread::sleep(Duration::from_millis(200));
        l
    });
    let timeout: Vec<&str> = busy_timeout
        .map(|t| vec!["--busy-timeout", t])
        .unwrap_or_default();
    let p = pid.to_string();
    for round in 0..3 {
        let what = format!("round {round}{}", if loaded { ", loaded" } else { "" });
        // The threads abort on any result but 1 or 2: mixed code kills it.
        let mut args = vec!["--json"];
        args.extend(&timeout);
        let r = apply(pid, &args, std::slice::from_ref(&file));
        r.assert_ok(&format!("{what}: apply"));
        let j = parse_json(&r.stdout).unwrap();
        eprintln!(
            "{what}: apply: attempts {}, led out {}, stopped {} us, times {}",
            j[0]["attempts"], j[0]["lead_out"], j[0]["stopped"], j[0]["times"]
        );
        proc.expect_new_line(Stream::Stdout, case.after(), &what);
        let mut undo = vec!["user", "undo"];
        undo.extend(&timeout);
        undo.extend(["--pid", &p, &id]);
        let r = hotsplice(&undo);
        r.assert_ok(&format!("{what}: undo"));
        eprintln!("{what}: undo: {}", r.stdout.trim());
        proc.expect_new_line(Stream::Stdout, case.before(), &what);
        proc.assert_alive(&what);
    }
    drop(load);
    assert!(hotsplice_testsupport::proc::held_threads(pid as i32).is_empty());
}

#[test]
fn apply_and_undo_of_a_function_four_threads_hammer() {
    hammered_rounds(Some("30"), false);
}

/// Busy-looping processes, two per CPU at nice 0, stopped and reaped on drop.
struct Load(Vec<std::process::Child>);

impl Load {
    fn start() -> Load {
        let n = std::thread::available_parallelism().map_or(2, |n| n.get()) * 2;
        let hogs = (0..n)
            .map(|_| {
                std::process::Command::new("sh")
                    .args(["-c", "while :; do :; done"])
                    .spawn()
                    .expect("start a busy loop")
            })
            .collect();
        Load(hogs)
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// On a machine whose CPUs are all busy, each slice a led-out thread runs
/// alone can take milliseconds of wall time, most of it waiting for a CPU:
/// leading out must still succeed within the default busy timeout (5 s).
#[test]
fn apply_and_undo_of_a_hot_function_on_a_loaded_machine() {
    hammered_rounds(None, true);
}

#[test]
fn a_thread_waiting_inside_for_a_lock_a_stopped_thread_holds_is_refused_cleanly() {
    require_root();
    let _one_at_a_time = serial();
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
