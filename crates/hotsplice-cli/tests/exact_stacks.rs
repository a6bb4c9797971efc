//! Exact stacks: the busy check walks each thread's stack with the unwind
//! tables, so a stale return address in an unused stack slot no longer
//! makes a program unpatchable; where a walk cannot finish (a frame
//! without unwind information) that thread is scanned conservatively,
//! which `-v` reports, and which still refuses a busy function.

mod common;

use common::*;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

fn patch_for(case: &Case, build: &Build, tag: &str) -> (TempDir, std::path::PathBuf, String) {
    let out = temp_dir(tag);
    std::fs::set_permissions(out.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let files = create_patches(case, build, "fix.diff", out.path());
    let id = patch_info(&files[0]).id;
    let file = files[0].clone();
    (out, file, id)
}

fn json_of(r: &CmdOut) -> Value {
    parse_json(&r.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", r.describe()))
}

#[test]
fn a_stale_return_address_in_a_live_frame_does_not_make_the_code_busy() {
    require_root();
    let case = Case::load("stale_return");
    let build = case.build();
    let mut proc = build.start(&case);
    proc.expect_new_line(Stream::Stdout, case.before(), "started");
    let (_out, file, id) = patch_for(&case, &build, "stale");
    let pid = proc.pid();

    // (The conservative scan sees the stale word as a frame in compute():
    // the engine before exact walks refused this program for good; the
    // scan with leading out gets there only when the thread, run alone,
    // happens to overwrite the word.)
    // The exact walk applies it at the first try, and undoes it.
    let r = apply(pid, &["--json", "--busy-timeout", "5"], &[file]);
    r.assert_ok("apply");
    let j = json_of(&r);
    assert_eq!(j[0]["attempts"], 1, "{}", r.describe());
    assert_eq!(j[0]["stacks"]["exact"], 1, "{}", r.describe());
    assert_eq!(j[0]["stacks"]["scanned"], 0, "{}", r.describe());
    // Nothing was busy, so no thread was led out.
    assert_eq!(j[0]["lead_out"]["threads"], 0, "{}", r.describe());
    proc.expect_new_line(Stream::Stdout, case.after(), "patched");
    undo(pid, &id).assert_ok("undo");
    proc.expect_new_line(Stream::Stdout, case.before(), "undone");
    proc.assert_alive("after undo");
}

#[test]
fn a_frame_without_unwind_information_falls_back_to_a_scan_and_says_so() {
    require_root();
    let case = Case::load("nocfi_frame");
    let build = case.build();
    let (_out, file, id) = patch_for(&case, &build, "nocfi");

    // The parked thread's walk stops in the assembly function: that thread
    // is scanned, nothing of compute() is on its stack, the apply goes on.
    let mut proc = build.start(&case);
    proc.expect_new_line(Stream::Stdout, case.before(), "started");
    let pid = proc.pid().to_string();
    let r = hotsplice(["-v", "user", "apply", "--pid", &pid, file.to_str().unwrap()]);
    r.assert_ok("apply");
    assert!(
        r.stdout
            .contains("1 walked exactly, 1 scanned conservatively")
            && r.stdout.contains("no unwind information")
            && r.stdout.contains("its stack was scanned"),
        "{}",
        r.describe()
    );
    proc.expect_new_line(Stream::Stdout, case.after(), "patched");
    undo(proc.pid(), &id).assert_ok("undo");
    drop(proc);

    // Now compute() itself is below the frame without unwind information:
    // the scan finds it, and the patch is refused, the process unchanged.
    let mut proc = build.start_argv(&["./prog".into(), "below".into()]);
    proc.expect_new_line(Stream::Stdout, case.before(), "started below");
    let r = apply(proc.pid(), &["--busy-timeout", "0.3"], &[file]);
    r.assert_failed("apply with compute() below the frame without CFI");
    assert!(
        r.stderr.contains("code busy") && r.stderr.contains("compute"),
        "{}",
        r.describe()
    );
    std::thread::sleep(Duration::from_millis(100));
    proc.expect_new_line(Stream::Stdout, case.before(), "unchanged");
    proc.assert_alive("after the refusal");
    assert!(shown_ids(proc.pid()).is_empty());
}

/// A program whose main thread sits in a signal handler on an alternate
/// stack, interrupted inside `inner()` (called by `middle()`), while a
/// second thread sleeps.
const SIGNALLED: &str = r#"
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
static void handler(int s) { (void)s; for (;;) pause(); }
__attribute__((noinline)) int inner(int n) { volatile int x = n; while (x) { } return x; }
__attribute__((noinline)) int middle(int n) { return inner(n) + 1; }
static void *worker(void *a) { (void)a; for (;;) sleep(1); return 0; }
int main(void) {
    stack_t ss = { .ss_sp = malloc(1 << 16), .ss_size = 1 << 16 };
    sigaltstack(&ss, 0);
    struct sigaction sa = { .sa_handler = handler, .sa_flags = SA_ONSTACK };
    sigaction(SIGUSR1, &sa, 0);
    pthread_t t;
    pthread_create(&t, 0, worker, 0);
    printf("ready\n");
    fflush(stdout);
    return middle(1);
}
"#;

/// The link-time address range of `name` in `exe` (from `nm -S`).
fn symbol_range(exe: &std::path::Path, name: &str) -> (u64, u64) {
    let out = std::process::Command::new("nm")
        .arg("-S")
        .arg(exe)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for line in text.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        if w.len() == 4 && w[3] == name {
            let start = u64::from_str_radix(w[0], 16).unwrap();
            let size = u64::from_str_radix(w[1], 16).unwrap();
            return (start, start + size);
        }
    }
    panic!("{name} not in {}", exe.display());
}

#[test]
fn walks_go_through_a_signal_frame_from_an_alternate_stack() {
    require_root();
    let dir = temp_dir("signalled");
    let exe = compile_with(
        dir.path(),
        "signalled",
        SIGNALLED,
        &["-O1", "-g", "-pthread"],
    );
    let mut proc = Target::exe(&exe, &[]);
    proc.expect_new_line(Stream::Stdout, "ready", "started");
    // Into inner()'s loop, then into the handler.
    std::thread::sleep(Duration::from_millis(100));
    // SAFETY: sending a signal to our own child.
    unsafe { libc::kill(proc.pid_i32(), libc::SIGUSR1) };
    std::thread::sleep(Duration::from_millis(100));
    let pid = proc.pid().to_string();
    let r = hotsplice(["user", "stacks", "--pid", &pid, "--json"]);
    r.assert_ok("stacks");
    let j = json_of(&r);
    let threads = j[0]["threads"].as_array().unwrap();
    assert_eq!(threads.len(), 2, "{}", r.stdout);
    for t in threads {
        assert_eq!(t["exact"], true, "{}", r.stdout);
    }
    // The main thread: the handler, then (past the signal frame, on the
    // normal stack) inner() exactly where it was interrupted, middle(),
    // main().
    let main = threads
        .iter()
        .find(|t| t["tid"] == proc.pid())
        .expect("main thread");
    let in_exe: Vec<u64> = main["frames"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["object"].as_str() == Some(exe.to_str().unwrap()))
        .map(|f| f["vaddr"].as_u64().unwrap())
        .collect();
    let within = |name: &str, v: u64| {
        let (a, b) = symbol_range(&exe, name);
        a <= v && v <= b
    };
    let names: Vec<&str> = in_exe
        .iter()
        .map(|&v| {
            ["handler", "inner", "middle", "main"]
                .into_iter()
                .find(|n| within(n, v))
                .unwrap_or("?")
        })
        .collect();
    let at = |n: &str| names.iter().position(|x| *x == n);
    assert!(
        at("handler") < at("inner") && at("inner") < at("middle") && at("middle") < at("main"),
        "frames in the program: {names:?}\n{}",
        r.stdout
    );
    assert!(at("handler").is_some(), "{names:?}");
    proc.assert_alive("after the walk");
}

/// One apply of the `threads` fixture's patch through the CLI (`--json`):
/// every one of `threads` counted, the patched worker prints the new line
/// and each line of `steady` keeps coming. Returns the report.
fn apply_threads_patch(
    proc: &mut Target,
    case: &Case,
    file: &std::path::Path,
    threads: u64,
    steady: &[String],
    what: &str,
) -> Value {
    let r = apply(proc.pid(), &["--json"], &[file.to_path_buf()]);
    r.assert_ok("apply");
    let j = json_of(&r);
    assert_eq!(
        j[0]["threads"],
        threads,
        "every thread counted, parked or stopped: {}",
        r.describe()
    );
    let mark = proc.mark(Stream::Stdout);
    proc.expect_line(Stream::Stdout, mark, case.after(), "patched");
    for s in steady {
        proc.expect_line(Stream::Stdout, mark, s, what);
    }
    j
}

/// Four workers that sleep 20 ms between lines (`usleep`) and the main
/// thread in `pthread_join`: the window parks each one in its system call
/// once its batch is checked, and every report says so; each thread goes on
/// as it should — the patched worker with the new line, the others
/// unchanged — after apply and after undo, with no stray stop left.
#[test]
fn sleeping_threads_are_parked_in_their_calls_and_run_on() {
    require_root();
    let case = Case::load("threads");
    let build = case.build();
    let (_out, file, id) = patch_for(&case, &build, "parked");
    let mut proc = build.start(&case);
    proc.expect_new_line(Stream::Stdout, case.before(), "started");
    let pid = proc.pid();
    let mut parked = 0;
    let steady = case.list("steady");
    for _ in 0..3 {
        let j = apply_threads_patch(&mut proc, &case, &file, 5, &steady, "unpatched worker");
        parked += j[0]["times"]["parked"].as_u64().unwrap();
        undo(pid, &id).assert_ok("undo");
        let mark = proc.mark(Stream::Stdout);
        proc.expect_line(Stream::Stdout, mark, case.before(), "undone");
    }
    // A worker may be between two calls at its stop (then it is stopped
    // with the running ones): over three applies most are parked.
    assert!(parked >= 9, "only {parked} threads parked in 3 applies");
    let held = hotsplice_testsupport::proc::held_threads(pid as i32);
    assert!(held.is_empty(), "threads left stopped: {held:?}");
    proc.assert_alive("after three applies and undos");
}

#[test]
fn kept_and_parked_threads_of_one_window_all_run_on() {
    require_root();
    // Threads in usleep are parked; threads in epoll_wait (an interrupted
    // call returns EINTR) stay stopped for the window. The window's end
    // then lets the parked ones go first, the kept ones after them.
    let case = Case::load("threads");
    let build = case.build();
    let (_out, file, id) = patch_for(&case, &build, "kept-parked");
    let mut proc = build.start_argv(&["./prog".to_string(), "waiters".to_string()]);
    proc.expect_new_line(Stream::Stdout, case.before(), "started");
    let pid = proc.pid();
    let mut steady = case.list("steady");
    steady.extend(["e=1".to_string(), "f=1".to_string()]);
    let (mut parked, mut kept, mut both) = (0, 0, 0);
    for _ in 0..4 {
        let j = apply_threads_patch(&mut proc, &case, &file, 7, &steady, "a worker after apply");
        let (p, k) = (
            j[0]["times"]["parked"].as_u64().unwrap(),
            j[0]["times"]["kept"].as_u64().unwrap(),
        );
        parked += p;
        kept += k;
        both += u32::from(p > 0 && k > 0);
        undo(pid, &id).assert_ok("undo");
        let mark = proc.mark(Stream::Stdout);
        proc.expect_line(Stream::Stdout, mark, case.before(), "undone");
        for s in &steady {
            proc.expect_line(Stream::Stdout, mark, s, "a worker after undo");
        }
    }
    // A thread may be between two calls at its stop (then it is stopped
    // with the running ones): over four applies, most windows hold both.
    assert!(
        parked >= 8 && kept >= 4 && both >= 2,
        "parked {parked}, kept {kept}, windows with both {both}, in 4 applies"
    );
    let held = hotsplice_testsupport::proc::held_threads(pid as i32);
    assert!(held.is_empty(), "threads left stopped: {held:?}");
    proc.assert_alive("after four applies and undos");
}

/// A thread waiting for a vfork child (`./prog vfork`: 3 s at a time) is in
/// an uninterruptible sleep, which no interrupt ends: a window begun then
/// held every other thread until the child exited (seconds; with a hung
/// NFS server, for good). Now no window begins while a thread is in state
/// D: apply waits with the process running, and refuses at its busy
/// timeout naming the thread; detaching takes the others first, so they
/// never wait with it. Given long enough, the apply lands between two
/// such sleeps.
#[test]
fn a_thread_in_an_uninterruptible_sleep_holds_no_other_thread() {
    require_root();
    let case = Case::load("threads");
    let build = case.build();
    let (_out, file, id) = patch_for(&case, &build, "vfork");
    let mut proc = build.start_argv(&["./prog".to_string(), "vfork".to_string()]);
    proc.expect_new_line(Stream::Stdout, case.before(), "started");
    let pid = proc.pid();
    let in_d = || {
        hotsplice_testsupport::proc::threads(pid as i32)
            .unwrap_or_default()
            .into_iter()
            .find(|&tid| {
                hotsplice_testsupport::proc::status_of(&format!("{pid}/task/{tid}"))
                    .is_ok_and(|s| s.state == 'D')
            })
    };
    // Right after the thread began to wait: its child has about 3 s left.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let tid = loop {
        if let Some(t) = in_d() {
            break t;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no thread of the fixture entered state D"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    let r = apply(pid, &["--busy-timeout", "0.5"], std::slice::from_ref(&file));
    r.assert_failed("apply while a thread is in state D");
    assert!(
        r.stderr.contains("uninterruptible sleep")
            && r.stderr.contains(&format!("thread {tid} "))
            && r.stderr.contains("left running unchanged"),
        "{}",
        r.describe()
    );
    let held = hotsplice_testsupport::proc::held_threads(pid as i32);
    assert!(held.is_empty(), "threads left stopped: {held:?}");
    let mark = proc.mark(Stream::Stdout);
    for s in case
        .list("steady")
        .iter()
        .chain([&case.before().to_string()])
    {
        proc.expect_line(Stream::Stdout, mark, s, "a worker after the refusal");
    }
    // The apply waits, the process running, for a moment with no thread
    // in state D (the thread's 1 s sleep between two children).
    let steady = case.list("steady");
    apply_threads_patch(&mut proc, &case, &file, 6, &steady, "a worker after apply");
    undo(pid, &id).assert_ok("undo");
    let mark = proc.mark(Stream::Stdout);
    proc.expect_line(Stream::Stdout, mark, case.before(), "undone");
    proc.expect_line(Stream::Stdout, mark, "v=1", "the vfork thread after undo");
    let held = hotsplice_testsupport::proc::held_threads(pid as i32);
    assert!(held.is_empty(), "threads left stopped: {held:?}");
    proc.assert_alive("after apply and undo");
}
