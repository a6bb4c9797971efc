//! Threads in signal handlers: a handler that runs on an alternate signal
//! stack has the frames it interrupted on the thread's normal stack. The
//! busy check must see them, or undo unmaps code a thread returns into.

mod common;

use common::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

#[test]
fn undo_waits_for_a_thread_whose_handler_runs_on_an_alternate_stack() {
    require_root();
    let case = Case::load("altstack_undo");
    let build = case.build();
    let mut proc = build.start(&case);
    proc.expect_new_line(Stream::Stdout, case.before(), "started");
    let out = temp_dir("altstack");
    fs::set_permissions(out.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let files = create_patches(&case, &build, "fix.diff", out.path());
    let id = patch_info(&files[0]).id;
    let pid = proc.pid().to_string();
    // Half of the time the worker sits in its handler on the alternate
    // stack with f() below on its normal stack; each undo below must wait
    // for a moment it is outside f(), or the process dies when the handler
    // returns into unmapped code.
    for round in 0..6 {
        let what = format!("round {round}");
        let r = hotsplice([
            "user",
            "apply",
            "--busy-timeout",
            "30",
            "--pid",
            &pid,
            files[0].to_str().unwrap(),
        ]);
        r.assert_ok(&format!("{what}: apply"));
        proc.expect_new_line(Stream::Stdout, case.after(), &what);
        // result=2 shows right after f() returned; f() is called again
        // 200 ms later and then sits in the handler for 200 ms: undo in
        // the middle of that.
        std::thread::sleep(Duration::from_millis(260 + 10 * round));
        let r = hotsplice(["user", "undo", "--busy-timeout", "30", "--pid", &pid, &id]);
        r.assert_ok(&format!("{what}: undo"));
        eprintln!("{what}: {}", r.stdout.trim());
        // Longer than a handler's run: a return into unmapped code would
        // have killed it by now.
        std::thread::sleep(Duration::from_millis(500));
        proc.assert_alive(&what);
        proc.expect_new_line(Stream::Stdout, case.before(), &what);
        assert!(shown_ids(proc.pid()).is_empty(), "{what}: still shown");
    }
}
