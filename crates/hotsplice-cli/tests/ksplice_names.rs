//! The names Ksplice users type: `ksplice [-y|-n|-q|-v] {kernel|user|all}
//! SUBCOMMAND` and `uptrack-*`, as links to the `hotsplice` binary (the
//! package makes the same links). The userspace commands run on a real
//! process built from a fixture; the kernel ones on this machine's kernel
//! (read-only: nothing is applied to the host kernel).

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A directory with `ksplice` and `uptrack-*` links to the binary.
fn links() -> (TempDir, PathBuf) {
    let dir = temp_dir("names");
    for n in [
        "ksplice",
        "uptrack-upgrade",
        "uptrack-install",
        "uptrack-remove",
        "uptrack-show",
        "uptrack-uname",
    ] {
        std::os::unix::fs::symlink(hotsplice_bin(), dir.path().join(n)).expect("symlink");
    }
    let p = dir.path().to_path_buf();
    (dir, p)
}

/// `NAME ARGS...` (a link in `dir`) in the test environment `env`.
fn run(env: &TestEnv, dir: &Path, name: &str, args: &[&str]) -> CmdOut {
    let mut cmd = Command::new(dir.join(name));
    cmd.args(args).current_dir(std::env::temp_dir());
    env.apply_to(&mut cmd);
    run_cmd(cmd, CMD_TIMEOUT)
}

fn uname_r() -> String {
    let out = Command::new("uname").arg("-r").output().expect("uname -r");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn ksplice_user_commands_patch_and_unpatch_a_running_process() {
    let (env, case, build, out) = fresh_case("ksplice-user", "pie_exec");
    let (_links, dir) = links();
    let file = create_signed(&env, &case, &build, "fix.diff", 1, out.path());
    let id = info_id(&env, &file);
    let mut proc = build.start_unpatched(&case);
    let pid = proc.pid().to_string();
    let pid_eq = format!("--pid={pid}");

    // list-targets: the process's executable and its pid.
    let r = run(&env, &dir, "ksplice", &["user", "list-targets"]);
    r.assert_ok("ksplice user list-targets");
    assert!(
        r.stdout.lines().any(|l| l
            .split_whitespace()
            .last()
            .is_some_and(|p| p.split(',').any(|p| p == pid))),
        "list-targets names pid {pid}:\n{}",
        r.describe()
    );

    // apply FILE: every process mapping the target, as Ksplice does.
    let r = run(
        &env,
        &dir,
        "ksplice",
        &["-y", "user", "apply", file.to_str().unwrap()],
    );
    r.assert_ok("ksplice -y user apply FILE");
    proc.expect_new_line(Stream::Stdout, case.after(), "ksplice user apply");

    // show --pid=P names the patch.
    let r = run(&env, &dir, "ksplice", &["user", "show", &pid_eq]);
    r.assert_ok("ksplice user show --pid=P");
    assert!(r.stdout.contains(&id), "show lists {id}:\n{}", r.describe());

    // undo --pid=P ID: back to the old code.
    let r = run(&env, &dir, "ksplice", &["user", "undo", &pid_eq, &id]);
    r.assert_ok("ksplice user undo --pid=P ID");
    proc.expect_new_line(Stream::Stdout, case.before(), "ksplice user undo");
    assert!(
        shown_ids_in(&env, &pid).is_empty(),
        "nothing applied after undo"
    );

    // upgrade: -n says what it would do and changes nothing; -y does it.
    env.install(&file);
    let r = run(&env, &dir, "ksplice", &["-n", "user", "upgrade"]);
    r.assert_ok("ksplice -n user upgrade");
    assert!(
        r.stdout.contains(&format!("would apply {id} to pid {pid}")),
        "{}",
        r.describe()
    );
    proc.assert_running_with(Stream::Stdout, case.before(), "-n changes nothing");
    let r = run(&env, &dir, "ksplice", &["-y", "user", "upgrade"]);
    r.assert_ok("ksplice -y user upgrade");
    proc.expect_new_line(Stream::Stdout, case.after(), "ksplice -y user upgrade");

    // remove --all --pid=P
    let r = run(
        &env,
        &dir,
        "ksplice",
        &["-q", "user", "remove", "--all", &pid_eq],
    );
    r.assert_ok("ksplice user remove --all --pid=P");
    proc.expect_new_line(Stream::Stdout, case.before(), "ksplice user remove");
    assert!(
        shown_ids_in(&env, &pid).is_empty(),
        "nothing applied after remove"
    );
}

fn shown_ids_in(env: &TestEnv, pid: &str) -> Vec<String> {
    let r = env.hs(["user", "show", "--pid", pid, "--json"]);
    r.assert_ok("show --json");
    let v = parse_json(&r.stdout).expect("show --json is JSON");
    v.as_array()
        .into_iter()
        .flatten()
        .flat_map(|e| e["patches"].as_array().cloned().unwrap_or_default())
        .filter_map(|p| p["id"].as_str().map(String::from))
        .collect()
}

#[test]
fn ksplice_speaks_its_own_name_and_kernel_commands_answer() {
    let env = TestEnv::new("ksplice-names");
    let (_links, dir) = links();
    let r = run(&env, &dir, "ksplice", &["--help"]);
    r.assert_ok("ksplice --help");
    assert!(r.stdout.contains("Usage: ksplice"), "{}", r.describe());
    let r = run(&env, &dir, "ksplice", &["frobnicate"]);
    assert_eq!(r.status.code(), Some(2), "usage error: {}", r.describe());
    assert!(r.stderr.contains("ksplice"), "{}", r.describe());

    // The effective release, with uname's own -r/-v/-n (not the global flags).
    let rel = uname_r();
    let r = run(&env, &dir, "ksplice", &["kernel", "uname", "-r"]);
    r.assert_ok("ksplice kernel uname -r");
    assert_eq!(r.stdout.trim(), rel);
    let r = run(
        &env,
        &dir,
        "ksplice",
        &["-q", "kernel", "uname", "-n", "-r"],
    );
    r.assert_ok("ksplice -q kernel uname -n -r");
    assert!(r.stdout.trim().ends_with(&rel), "{}", r.describe());
    let r = run(&env, &dir, "uptrack-uname", &["-r"]);
    r.assert_ok("uptrack-uname -r");
    assert_eq!(r.stdout.trim(), rel);

    let r = run(&env, &dir, "ksplice", &["kernel", "list-targets"]);
    r.assert_ok("ksplice kernel list-targets");
    assert!(r.stdout.contains(&rel), "{}", r.describe());

    // Nothing applied, nothing in an empty feed.
    let feed = temp_dir("feed");
    let r = run(&env, &dir, "uptrack-show", &[]);
    r.assert_ok("uptrack-show");
    assert!(r.stdout.contains("Installed updates:"), "{}", r.describe());
    assert!(
        r.stdout
            .contains(&format!("Effective kernel version is {rel}")),
        "{}",
        r.describe()
    );
    let from = feed.path().to_str().unwrap();
    let r = run(
        &env,
        &dir,
        "ksplice",
        &["kernel", "show", "--available", "--from", from],
    );
    r.assert_ok("ksplice kernel show --available");
    assert!(r.stdout.contains("Available updates:"), "{}", r.describe());
    let r = run(
        &env,
        &dir,
        "ksplice",
        &["-y", "kernel", "upgrade", "--from", from],
    );
    r.assert_ok("ksplice -y kernel upgrade");
    assert!(r.stdout.contains("Nothing to be done"), "{}", r.describe());
    let r = run(&env, &dir, "uptrack-upgrade", &["-n"]);
    r.assert_ok("uptrack-upgrade -n");
    assert!(r.stdout.contains("Available updates:"), "{}", r.describe());
    let r = run(&env, &dir, "uptrack-show", &["--count"]);
    r.assert_ok("uptrack-show --count");
    assert_eq!(r.stdout.trim(), "0");
    let r = run(&env, &dir, "uptrack-remove", &[]);
    r.assert_failed("uptrack-remove with nothing named");
    assert!(r.stderr.contains("--all"), "{}", r.describe());
    let r = run(&env, &dir, "uptrack-install", &["nosuchid"]);
    r.assert_failed("uptrack-install of an unknown id");
    assert!(r.stderr.contains("uptrack-install"), "{}", r.describe());
}
