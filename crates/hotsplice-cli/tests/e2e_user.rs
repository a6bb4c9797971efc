//! End-to-end tests of `hotsplice user ...` on real processes built from the
//! fixtures in tests/fixtures/ (see common/mod.rs for the case format).
//!
//! Every test builds its fixture in its own temp dir, starts the program,
//! patches it with the hotsplice binary and watches its output flip. They
//! need root (ptrace), cc, make and patch; the not-root test also needs
//! util-linux's setpriv.

mod common;

use common::*;
use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// How long to keep watching output to check that something does NOT happen.
const QUIET_WINDOW: Duration = Duration::from_millis(500);

/// A started fixture: its case, build, running process, and created patches.
struct Running {
    case: Case,
    build: Build,
    proc: Target,
    out: TempDir,
}

impl Running {
    /// Builds the case, starts it and waits for its `before` line.
    fn start(name: &str) -> Running {
        require_root();
        let case = Case::load(name);
        let build = case.build();
        let mut proc = build.start(&case);
        let before = case.before().to_string();
        proc.expect_line(Stream::Stdout, 0, &before, "unpatched program");
        Running {
            case,
            build,
            proc,
            out: temp_dir("patches"),
        }
    }

    fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// `hotsplice create` for `diff` (into its own subdirectory of the
    /// output dir), then `hotsplice info` on each file; checks the infos.
    fn create(&self, diff: &str) -> Vec<PatchInfo> {
        let dir = self.out.path().join(diff.replace('.', "_"));
        fs::create_dir_all(&dir).expect("mkdir patch dir");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod");
        let files = create_patches(&self.case, &self.build, diff, &dir);
        let infos: Vec<PatchInfo> = files.iter().map(|f| patch_info(f)).collect();
        check_infos(&self.case, &self.build, &infos);
        infos
    }

    fn files(infos: &[PatchInfo]) -> Vec<PathBuf> {
        infos.iter().map(|i| i.file.clone()).collect()
    }

    /// Checks that no line equal to `text` appeared on `s` since `mark`,
    /// watching for a while longer first.
    fn assert_never(&self, s: Stream, mark: usize, text: &str, what: &str) {
        thread::sleep(QUIET_WINDOW);
        let lines = self.proc.lines_since(s, mark);
        assert!(
            !lines.iter().any(|l| l == text),
            "{what}: {text:?} was printed\n{}",
            self.proc.describe()
        );
    }

    /// Checks that every line on stdout since `mark` equals `text` (after
    /// watching for a while and seeing at least one fresh line).
    fn assert_only(&mut self, mark: usize, text: &str, what: &str) {
        self.proc.expect_new_line(Stream::Stdout, text, what);
        thread::sleep(QUIET_WINDOW);
        let lines = self.proc.lines_since(Stream::Stdout, mark);
        let odd: Vec<&String> = lines.iter().filter(|l| *l != text).collect();
        assert!(
            odd.is_empty(),
            "{what}: expected only {text:?}, also got {odd:?}\n{}",
            self.proc.describe()
        );
    }
}

fn assert_shown(pid: u32, ids: &[&str], what: &str) {
    let shown = shown_ids(pid);
    for id in ids {
        assert!(
            shown.iter().any(|s| s == id),
            "{what}: `user show` does not list patch {id} for pid {pid}: {shown:?}"
        );
    }
}

fn assert_not_shown(pid: u32, ids: &[&str], what: &str) {
    let shown = shown_ids(pid);
    for id in ids {
        assert!(
            !shown.iter().any(|s| s == id),
            "{what}: `user show` still lists patch {id} for pid {pid}: {shown:?}"
        );
    }
}

/// The generic test: create, apply, see the output flip, show, undo, see
/// it flip back.
fn flip(name: &str) {
    let mut r = Running::start(name);
    let pid = r.pid();
    let infos = r.create("fix.diff");
    let ids: Vec<&str> = infos.iter().map(|i| i.id.as_str()).collect();
    let stream = r.case.after_stream();
    let after = r.case.after().to_string();
    let before = r.case.before().to_string();

    let mark = r.proc.mark(stream);
    apply(pid, &[], &Running::files(&infos)).assert_ok(&format!("{name}: user apply"));
    let at = r.proc.expect_line(stream, mark, &after, "patched program");

    // Other threads' lines must go on unchanged (threads case).
    let steady = r.case.list("steady");
    if !steady.is_empty() {
        for s in &steady {
            r.proc
                .expect_line(Stream::Stdout, at, s, "unpatched thread");
        }
        thread::sleep(QUIET_WINDOW);
        let odd: Vec<String> = r
            .proc
            .lines_since(Stream::Stdout, at)
            .into_iter()
            .filter(|l| *l != after && !steady.contains(l))
            .collect();
        assert!(
            odd.is_empty(),
            "{name}: unexpected lines once patched: {odd:?}"
        );
    }

    assert_shown(pid, &ids, name);
    r.proc.assert_alive("patched program");

    for id in ids.iter().rev() {
        undo(pid, id).assert_ok(&format!("{name}: user undo {id}"));
    }
    r.proc
        .expect_new_line(Stream::Stdout, &before, "after undoing every patch");
    assert_not_shown(pid, &ids, name);
    r.proc.assert_alive("after undo");
}

// ---------------------------------------------------------------------------
// One generic flip test per fixture
// ---------------------------------------------------------------------------

#[test]
fn patch_function_in_pie_executable() {
    flip("pie_exec");
}

#[test]
fn patch_function_in_non_pie_executable() {
    flip("nonpie_exec");
}

#[test]
fn patch_function_in_shared_library() {
    flip("shared_lib");
}

#[test]
fn patch_reaches_symbols_a_version_script_made_local() {
    flip("version_script_lib");
}

#[test]
fn one_diff_patches_executable_and_shared_library() {
    flip("exec_and_lib");
}

#[test]
fn patch_adds_new_static_function() {
    flip("new_function");
}

#[test]
fn patch_adds_new_global_and_static_local_variables() {
    flip("new_global_and_static_local");
}

#[test]
fn patch_calls_existing_static_function_of_the_right_file() {
    flip("call_static_function");
}

#[test]
fn patch_reads_original_rodata() {
    flip("original_rodata");
}

#[test]
fn patch_calls_libc_function_not_imported_by_original() {
    flip("new_libc_call");
}

#[test]
fn patch_writes_to_stderr() {
    flip("use_stderr");
}

#[test]
fn patch_reads_thread_local_of_executable() {
    flip("tls_exec");
}

#[test]
fn patch_reads_thread_local_of_shared_library() {
    flip("tls_lib");
}

/// glibc's errno: a hidden initial-exec `__thread` variable whose GOT entry
/// is relocated without a symbol.
#[test]
fn patch_reads_hidden_initial_exec_thread_local_of_shared_library() {
    flip("tls_ie_lib");
}

/// glibc's stdio functions: unwind information naming the library's own
/// hidden copy of libgcc's C personality routine.
#[test]
fn patch_function_whose_unwind_info_names_the_library_own_personality_routine() {
    flip("personality_lib");
}

#[test]
fn patch_calls_ifunc_symbols() {
    flip("ifunc");
}

#[test]
fn patch_change_in_inlined_helper_at_o2() {
    flip("inline_o2");
}

#[test]
fn patch_one_function_of_multithreaded_process() {
    flip("threads");
}

#[test]
fn patch_process_that_keeps_spawning_threads() {
    flip("spawner");
}

// ---------------------------------------------------------------------------
// Busy functions
// ---------------------------------------------------------------------------

#[test]
fn apply_waits_for_busy_function_to_return() {
    let mut r = Running::start("busy_returns");
    let pid = r.pid();
    let infos = r.create("fix.diff");
    let before = r.case.before().to_string();
    let after = r.case.after().to_string();
    // f() is entered ~200 ms after each line and sleeps ~1.5 s: 400 ms after
    // a fresh line, f() has at least ~1 s left on the stack.
    r.proc
        .expect_new_line(Stream::Stdout, &before, "unpatched program");
    thread::sleep(Duration::from_millis(400));
    let mark = r.proc.mark(Stream::Stdout);
    let res = apply(pid, &["--busy-timeout", "10"], &Running::files(&infos));
    res.assert_ok("user apply --busy-timeout 10 on a busy f()");
    // Not a timing assertion: the report says the code was found busy and
    // the apply went in on a later stop window.
    assert!(
        res.stdout.contains("tries: code was busy"),
        "apply did not report having waited for f() to return\n{}",
        res.describe()
    );
    r.proc
        .expect_line(Stream::Stdout, mark, &after, "patched program");
    undo(pid, &infos[0].id).assert_ok("undo");
    r.proc
        .expect_new_line(Stream::Stdout, &before, "after undo");
}

/// The patch changes f() (always busy) and g() (printed): apply must refuse
/// as a whole and leave g() alone.
fn apply_refuses_busy(name: &str) {
    let mut r = Running::start(name);
    let pid = r.pid();
    let infos = r.create("fix.diff");
    let before = r.case.before().to_string();
    let after = r.case.after().to_string();
    let mark = r.proc.mark(Stream::Stdout);
    let res = apply(pid, &["--busy-timeout", "1"], &Running::files(&infos));
    res.assert_failed("user apply on a process that never leaves f()");
    assert!(
        res.stderr_lower().contains("busy"),
        "the message should say the function is busy\n{}",
        res.describe()
    );
    assert!(
        words(&res.stderr).contains(&"f"),
        "the message should name the busy function f\n{}",
        res.describe()
    );
    r.proc
        .assert_running_with(Stream::Stdout, &before, "after the refused apply");
    r.assert_never(Stream::Stdout, mark, &after, "refused apply");
    let ids: Vec<&str> = infos.iter().map(|i| i.id.as_str()).collect();
    assert_not_shown(pid, &ids, name);
}

#[test]
fn apply_refuses_function_blocked_forever_in_caller_frame() {
    apply_refuses_busy("busy_forever_caller");
}

#[test]
fn apply_refuses_function_spinning_forever_in_top_frame() {
    apply_refuses_busy("busy_forever_top");
}

#[test]
fn undo_refuses_while_new_code_is_on_the_stack() {
    let mut r = Running::start("undo_busy");
    let pid = r.pid();
    let infos = r.create("fix.diff");
    let after = r.case.after().to_string();
    let mark = r.proc.mark(Stream::Stdout);
    apply(pid, &[], &Running::files(&infos)).assert_ok("user apply");
    r.proc
        .expect_line(Stream::Stdout, mark, &after, "patched program");
    // The new f() never returns: its code stays on the stack.
    let res = undo(pid, &infos[0].id);
    res.assert_failed("user undo while the new f() runs forever");
    assert!(
        res.stderr_lower().contains("busy"),
        "the message should say the function is busy\n{}",
        res.describe()
    );
    let mark = r.proc.mark(Stream::Stdout);
    r.assert_only(mark, &after, "after the refused undo");
    r.proc.assert_alive("after the refused undo");
    assert_shown(pid, &[infos[0].id.as_str()], "after the refused undo");
}

// ---------------------------------------------------------------------------
// Stacked patches
// ---------------------------------------------------------------------------

#[test]
fn stacked_patches_on_one_function() {
    let mut r = Running::start("stacked");
    let pid = r.pid();
    let before = r.case.before().to_string();
    let after = r.case.after().to_string();
    let after2 = r.case.req("after2").to_string();
    let first = r.create("fix.diff");
    let second = r.create("fix2.diff");
    let (id1, id2) = (first[0].id.clone(), second[0].id.clone());
    assert_ne!(id1, id2, "two different patches got the same id");

    let m = r.proc.mark(Stream::Stdout);
    apply(pid, &[], &Running::files(&first)).assert_ok("apply fix.diff");
    r.proc.expect_line(Stream::Stdout, m, &after, "first patch");
    let m = r.proc.mark(Stream::Stdout);
    apply(pid, &[], &Running::files(&second)).assert_ok("apply fix2.diff on top");
    r.proc
        .expect_line(Stream::Stdout, m, &after2, "second patch");
    assert_shown(pid, &[&id1, &id2], "both applied");

    // Undoing the first one while the second is applied: refusing and
    // working are both fine, but the output must stay `after2`.
    let m = r.proc.mark(Stream::Stdout);
    let res = undo(pid, &id1);
    r.assert_only(m, &after2, "after undo of the first (lower) patch");
    if res.success() {
        assert_shown(pid, &[&id2], "first undone");
        assert_not_shown(pid, &[&id1], "first undone");
        undo(pid, &id2).assert_ok("undo the second patch");
        r.proc
            .expect_new_line(Stream::Stdout, &before, "both undone");
    } else {
        res.assert_failed("undo of the lower patch");
        assert_shown(pid, &[&id1, &id2], "refused undo of the first");
        undo(pid, &id2).assert_ok("undo the second patch");
        let m = r.proc.mark(Stream::Stdout);
        r.assert_only(m, &after, "second undone, first still applied");
        undo(pid, &id1).assert_ok("undo the first patch");
        r.proc
            .expect_new_line(Stream::Stdout, &before, "both undone");
    }
    assert_not_shown(pid, &[&id1, &id2], "both undone");
    r.proc.assert_alive("after undoing both");
}

#[test]
fn remove_all_restores_executable_and_library() {
    let mut r = Running::start("exec_and_lib");
    let pid = r.pid();
    let infos = r.create("fix.diff");
    let before = r.case.before().to_string();
    let after = r.case.after().to_string();
    let m = r.proc.mark(Stream::Stdout);
    apply(pid, &[], &Running::files(&infos)).assert_ok("user apply");
    r.proc
        .expect_line(Stream::Stdout, m, &after, "patched program");
    let p = pid.to_string();
    hotsplice(["user", "remove", "--all", "--pid", p.as_str()]).assert_ok("user remove --all");
    r.proc
        .expect_new_line(Stream::Stdout, &before, "after remove --all");
    let ids: Vec<&str> = infos.iter().map(|i| i.id.as_str()).collect();
    assert_not_shown(pid, &ids, "after remove --all");
}

#[test]
fn list_targets_and_show_give_json() {
    let r = Running::start("pie_exec");
    let infos = r.create("fix.diff");
    apply(r.pid(), &[], &Running::files(&infos)).assert_ok("user apply");
    let res = hotsplice(["user", "list-targets", "--json"]);
    res.assert_ok("user list-targets --json");
    parse_json(&res.stdout).unwrap_or_else(|e| panic!("not JSON: {e}\n{}", res.describe()));
    // show without --pid lists every patched process, this one included.
    let res = hotsplice(["user", "show", "--json"]);
    res.assert_ok("user show --json");
    let j = parse_json(&res.stdout).unwrap_or_else(|e| panic!("not JSON: {e}\n{}", res.describe()));
    assert!(j.as_array().is_some(), "user show --json: not an array");
    assert!(
        res.stdout.contains(&infos[0].id),
        "user show --json does not mention {}\n{}",
        infos[0].id,
        res.describe()
    );
}

// ---------------------------------------------------------------------------
// Errors: the target must survive, unpatched
// ---------------------------------------------------------------------------

/// After a failed apply: still alive, still printing `before`, never `after`.
fn assert_unharmed(r: &mut Running, mark: usize, what: &str) {
    let before = r.case.before().to_string();
    let after = r.case.after().to_string();
    r.proc.assert_running_with(Stream::Stdout, &before, what);
    r.assert_never(Stream::Stdout, mark, &after, what);
}

#[test]
fn apply_to_missing_pid_fails() {
    let r = Running::start("pie_exec");
    let infos = r.create("fix.diff");
    let pid = unused_pid();
    let res = apply(pid, &[], &Running::files(&infos));
    res.assert_failed("user apply --pid <no such process>");
    assert!(
        res.stderr.contains(&pid.to_string()),
        "the message should name pid {pid}\n{}",
        res.describe()
    );
}

const TRACER_C: &str = r#"
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ptrace.h>
#include <sys/types.h>
#include <sys/wait.h>

/* Seizes the pid given as argument and keeps it running, forwarding signals. */
int main(int argc, char **argv)
{
	pid_t pid;

	if (argc != 2)
		return 2;
	pid = (pid_t)atoi(argv[1]);
	if (ptrace(PTRACE_SEIZE, pid, 0, 0) != 0) {
		perror("PTRACE_SEIZE");
		return 1;
	}
	printf("seized\n");
	fflush(stdout);
	for (;;) {
		int st;
		pid_t w = waitpid(pid, &st, __WALL);

		if (w < 0) {
			if (errno == EINTR)
				continue;
			return 0;
		}
		if (WIFEXITED(st) || WIFSIGNALED(st))
			return 0;
		if (WIFSTOPPED(st)) {
			if ((st >> 16) == PTRACE_EVENT_STOP)
				ptrace(PTRACE_LISTEN, pid, 0, 0);
			else
				ptrace(PTRACE_CONT, pid, 0, WSTOPSIG(st));
		}
	}
}
"#;

#[test]
fn apply_to_already_traced_process_fails() {
    let mut r = Running::start("pie_exec");
    let infos = r.create("fix.diff");
    let tdir = temp_dir("tracer");
    let bin = compile_with(tdir.path(), "hs_tracer", TRACER_C, &["-O1"]);
    let mut tcmd = Command::new(&bin);
    tcmd.arg(r.pid().to_string());
    // Declared after `r`: dropped (killed, so the target is detached) first.
    let mut tracer = Target::spawn(tcmd, "hs_tracer");
    tracer.expect_line(Stream::Stdout, 0, "seized", "tracer attach");
    let tracer_pid = tracer.pid();

    let mark = r.proc.mark(Stream::Stdout);
    let res = apply(r.pid(), &[], &Running::files(&infos));
    res.assert_failed("user apply on a process traced by another tracer");
    assert!(
        res.stderr.contains(&tracer_pid.to_string()) || res.stderr.contains("hs_tracer"),
        "the message should name the tracer (pid {tracer_pid}, hs_tracer)\n{}",
        res.describe()
    );
    assert_unharmed(&mut r, mark, "traced target after the refused apply");
    tracer.assert_alive("tracer");
    drop(tracer);
}

#[test]
fn apply_with_wrong_build_id_fails() {
    // A patch made for pie_exec's prog, applied to nonpie_exec's prog (same
    // file name, other build).
    // (`patch_case` owns the patch files: keep it until the end.)
    let patch_case = Running::start("pie_exec");
    let infos = patch_case.create("fix.diff");
    let mut r = Running::start("nonpie_exec");
    let mark = r.proc.mark(Stream::Stdout);
    let res = apply(r.pid(), &[], &Running::files(&infos));
    res.assert_failed("user apply with a patch for another build");
    assert!(
        res.stderr_lower().contains("build"),
        "the message should mention the build-id mismatch\n{}",
        res.describe()
    );
    assert_unharmed(&mut r, mark, "target after a wrong-build-id apply");
    drop(patch_case);
}

#[test]
fn apply_to_process_without_the_target_fails() {
    let r = Running::start("pie_exec");
    let infos = r.create("fix.diff");
    let mut cmd = Command::new("sleep");
    cmd.arg("1000");
    let mut sleeper = Target::spawn(cmd, "sleep");
    thread::sleep(Duration::from_millis(100));
    let res = apply(sleeper.pid(), &[], &Running::files(&infos));
    res.assert_failed("user apply of prog's patch to `sleep`");
    sleeper.assert_alive("sleep after the refused apply");
}

fn damaged_patch_fails(damage: impl Fn(&mut Vec<u8>), what: &str) {
    let mut r = Running::start("pie_exec");
    let infos = r.create("fix.diff");
    let mut bytes = fs::read(&infos[0].file).expect("read patch");
    assert!(bytes.len() >= 16, "patch file suspiciously small");
    damage(&mut bytes);
    let bad = r.out.path().join("damaged.patch");
    fs::write(&bad, &bytes).expect("write damaged patch");
    let mark = r.proc.mark(Stream::Stdout);
    let res = apply(r.pid(), &[], &[bad]);
    res.assert_failed(&format!("user apply of a {what} patch file"));
    assert_unharmed(&mut r, mark, &format!("target after a {what} patch file"));
    assert!(
        shown_ids(r.pid()).is_empty(),
        "{what}: something is shown as applied"
    );
}

#[test]
fn apply_corrupted_patch_file_fails() {
    damaged_patch_fails(
        |b| {
            let i = b.len() / 2;
            b[i] ^= 0xff;
        },
        "corrupted",
    );
}

#[test]
fn apply_truncated_patch_file_fails() {
    damaged_patch_fails(|b| b.truncate(b.len() / 2), "truncated");
}

#[test]
fn apply_as_non_root_fails_with_permission_error() {
    let mut r = Running::start("pie_exec");
    let infos = r.create("fix.diff");
    // Let `nobody` read the patch files (the failure must be about ptrace).
    for i in &infos {
        fs::set_permissions(&i.file, fs::Permissions::from_mode(0o644)).expect("chmod");
    }
    let mark = r.proc.mark(Stream::Stdout);
    let mut args: Vec<OsString> = vec![
        "user".into(),
        "apply".into(),
        "--pid".into(),
        r.pid().to_string().into(),
    ];
    args.extend(infos.iter().map(|i| i.file.clone().into_os_string()));
    let cwd: &Path = r.out.path();
    let res = hotsplice_as_nobody(cwd, &args);
    res.assert_failed("user apply as nobody");
    let msg = res.stderr_lower();
    assert!(
        msg.contains("permission") || msg.contains("not permitted") || msg.contains("root"),
        "the message should be about permissions\n{}",
        res.describe()
    );
    assert_unharmed(&mut r, mark, "root target after apply as nobody");
}

// ---------------------------------------------------------------------------
// What create refuses, and targets whose file is gone
// ---------------------------------------------------------------------------

/// `hotsplice create` on a case whose fix cannot be live patched: it must
/// fail naming the reason, and write no patch.
fn refused_by_create(name: &str) {
    require_root();
    let case = Case::load(name);
    let build = case.build();
    let out = temp_dir("refused");
    let r = hotsplice([
        OsString::from("create"),
        "--patch".into(),
        case.diff("fix.diff").into_os_string(),
        "-o".into(),
        out.path().as_os_str().to_os_string(),
        build.dir.as_os_str().to_os_string(),
    ]);
    r.assert_failed(&format!("{name}: create"));
    let why = case.req("refuse");
    assert!(
        r.stderr.contains(why),
        "{name}: expected `{why}` in\n{}",
        r.describe()
    );
    let written = fs::read_dir(out.path()).map(|d| d.count()).unwrap_or(0);
    assert_eq!(
        written, 0,
        "{name}: a patch was written despite the refusal"
    );
}

#[test]
fn create_refuses_changed_initial_value_of_existing_data() {
    refused_by_create("refuse_data");
}

#[test]
fn create_refuses_function_too_short_for_a_jump() {
    refused_by_create("refuse_short");
}

/// After a package upgrade the file a process runs may be gone or replaced:
/// the target is found by the build-id in the process's memory.
#[test]
fn patch_process_whose_executable_was_deleted_on_disk() {
    let mut r = Running::start("pie_exec");
    let infos = r.create("fix.diff");
    fs::remove_file(r.build.dir.join("prog")).expect("delete the running executable");
    let pid = r.pid();
    let mark = r.proc.mark(Stream::Stdout);
    apply(pid, &[], &Running::files(&infos)).assert_ok("apply to a deleted executable");
    let after = r.case.after().to_string();
    r.proc.expect_line(Stream::Stdout, mark, &after, "patched");
    let targets = hotsplice(["user", "list-targets", "--json"]);
    targets.assert_ok("list-targets");
    assert!(
        targets.stdout.contains("prog (deleted)") && targets.stdout.contains(&infos[0].build_id),
        "{}",
        targets.describe()
    );
}

// ---------------------------------------------------------------------------
// Stripped targets, linked as distributions link them
// ---------------------------------------------------------------------------

/// The `stripped_lib` fixture built, and its library "installed" stripped
/// (`strip --strip-all`, as packages ship it) into `installed/`.
struct Installed {
    case: Case,
    build: Build,
    dir: TempDir,
    lib: PathBuf,
    /// Where tests put debug files (`HOTSPLICE_DEBUG_DIRS`).
    debug: PathBuf,
    /// Where the builds create runs log each link of the library.
    build_log: PathBuf,
}

/// Builds `stripped_lib` and installs its library stripped. `make_extra`
/// goes into the installed build's flags (`-gdwarf-4`: the same code, other
/// debug information, so another build-id than the pre-fix build's).
fn install_stripped(make_extra: &str) -> Installed {
    require_root();
    let case = Case::load("stripped_lib");
    let build = case.build();
    let dir = temp_dir("installed");
    let inst = dir.path().join("installed");
    let debug = dir.path().join("debug");
    fs::create_dir_all(&inst).expect("mkdir installed");
    fs::create_dir_all(&debug).expect("mkdir debug");
    let from = if make_extra.is_empty() {
        build.dir.clone()
    } else {
        let other = dir.path().join("other");
        copy_dir(&case.dir.join("src"), &other);
        let mut cmd = Command::new("make");
        cmd.current_dir(&other)
            .arg(format!("EXTRA={make_extra}"))
            .arg("libfix.so.1")
            .env_remove("MAKEFLAGS")
            .env_remove("MAKELEVEL");
        run_cmd(cmd, MAKE_TIMEOUT).assert_ok("make the installed build");
        other
    };
    let lib = inst.join("libfix.so.1");
    let mut strip = Command::new("strip");
    strip
        .arg("--strip-all")
        .arg("-o")
        .arg(&lib)
        .arg(from.join("libfix.so.1"));
    run_cmd(strip, Duration::from_secs(60)).assert_ok("strip");
    let syms = Command::new("readelf")
        .arg("-S")
        .arg(&lib)
        .output()
        .expect("readelf");
    assert!(
        !String::from_utf8_lossy(&syms.stdout).contains(".symtab"),
        "the installed library still has a .symtab"
    );
    let build_log = dir.path().join("build.log");
    Installed {
        case,
        build,
        lib,
        debug,
        dir,
        build_log,
    }
}

impl Installed {
    /// The unstripped library of the installed build (for debug files).
    fn unstripped(&self) -> PathBuf {
        let other = self.dir.path().join("other/libfix.so.1");
        if other.exists() {
            other
        } else {
            self.build.dir.join("libfix.so.1")
        }
    }

    /// `hotsplice create --target LIB` for the fix, debug files looked
    /// for in `self.debug` only.
    fn create(&self, out: &Path) -> CmdOut {
        self.create_with(out, &[])
    }

    fn create_with(&self, out: &Path, extra: &[OsString]) -> CmdOut {
        run_cmd(self.create_cmd(out, extra), CMD_TIMEOUT)
    }

    fn create_cmd(&self, out: &Path, extra: &[OsString]) -> Command {
        let mut cmd = test_env().command([
            OsString::from("create"),
            "--sign".into(),
            test_env().key.clone().into_os_string(),
            "--patch".into(),
            self.case.diff("fix.diff").into_os_string(),
            "--target".into(),
            self.lib.clone().into_os_string(),
            "-o".into(),
            out.as_os_str().to_os_string(),
        ]);
        cmd.args(extra).arg(&self.build.dir);
        cmd.env("HOTSPLICE_DEBUG_DIRS", &self.debug);
        cmd.env("FIX_BUILD_LOG", &self.build_log);
        cmd
    }

    /// How many times create's builds linked the library.
    fn links(&self) -> usize {
        fs::read_to_string(&self.build_log)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    }

    /// Starts prog on the installed library.
    fn start(&self) -> Target {
        let mut cmd = Command::new(self.build.dir.join("prog"));
        cmd.current_dir(&self.build.dir)
            .env("LD_LIBRARY_PATH", self.lib.parent().unwrap());
        let mut t = Target::spawn(cmd, "prog (installed libfix)");
        t.expect_line(Stream::Stdout, 0, self.case.before(), "unpatched");
        t
    }

    /// Creates the patch, applies it to prog running on the installed
    /// library, sees the fix work, undoes it.
    fn patch_and_flip(&self) {
        self.patch_and_flip_with(&[]);
    }

    fn patch_and_flip_with(&self, extra: &[OsString]) {
        let out = temp_dir("patches");
        self.flip(
            &self.create_with(out.path(), extra),
            "create for the stripped library",
        );
    }

    /// The patch `created` printed: for the installed file, applied to prog
    /// running on it, the fix seen working, undone.
    fn flip(&self, created: &CmdOut, what: &str) {
        created.assert_ok(what);
        let file = PathBuf::from(created.stdout.lines().next().expect("a patch file").trim());
        let info = patch_info(&file);
        assert_eq!(
            Some(info.build_id.clone()),
            elf_build_id(&self.lib),
            "the patch is for the installed file"
        );
        assert_eq!(info.functions, self.case.list("functions"), "{what}");
        let mut proc = self.start();
        let pid = proc.pid();
        let mark = proc.mark(Stream::Stdout);
        apply(pid, &[], std::slice::from_ref(&file)).assert_ok("apply");
        proc.expect_line(Stream::Stdout, mark, self.case.after(), "patched");
        undo(pid, &info.id).assert_ok("undo");
        proc.expect_new_line(Stream::Stdout, self.case.before(), "undone");
        proc.assert_alive("after undo");
    }
}

/// Built again in the pre-fix tree, the library has the installed file's
/// build-id: that build's symbol table names the installed code, also the
/// functions and data the version script made local, which the patch
/// reaches by address. The changed object went into the library through
/// `ar T`, and its neighbours through `ld -r`, `objcopy` and `ar`.
#[test]
fn patch_stripped_library_with_symbols_of_the_identical_pre_fix_build() {
    let inst = install_stripped("");
    inst.patch_and_flip();
}

/// Another build (other debug information, same code): its symbols come
/// from the separate debug file found by build-id under the debug
/// directory, or by `.gnu_debuglink` next to the library.
#[test]
fn patch_stripped_library_with_symbols_from_its_debug_file() {
    let inst = install_stripped("-gdwarf-4");
    assert_ne!(
        elf_build_id(&inst.lib),
        elf_build_id(&inst.build.dir.join("libfix.so.1")),
        "the installed build must differ from the pre-fix build"
    );
    let id = elf_build_id(&inst.lib).expect("build-id");
    let by_id = inst.debug.join(".build-id").join(&id[..2]);
    fs::create_dir_all(&by_id).expect("mkdir .build-id");
    let mut keep = Command::new("objcopy");
    keep.arg("--only-keep-debug")
        .arg(inst.unstripped())
        .arg(by_id.join(format!("{}.debug", &id[2..])));
    run_cmd(keep, Duration::from_secs(60)).assert_ok("objcopy --only-keep-debug");
    inst.patch_and_flip();

    // The same, found through the debuglink instead.
    fs::remove_dir_all(inst.debug.join(".build-id")).expect("rm .build-id");
    let dbg = inst.lib.with_file_name("libfix.so.1.debug");
    let mut keep = Command::new("objcopy");
    keep.arg("--only-keep-debug")
        .arg(inst.unstripped())
        .arg(&dbg);
    run_cmd(keep, Duration::from_secs(60)).assert_ok("objcopy --only-keep-debug");
    let mut link = Command::new("objcopy");
    link.arg(format!("--add-gnu-debuglink={}", dbg.display()))
        .arg(&inst.lib)
        .current_dir(inst.lib.parent().unwrap());
    run_cmd(link, Duration::from_secs(60)).assert_ok("objcopy --add-gnu-debuglink");
    inst.patch_and_flip();
}

/// `--prepared DIR`: the pre-fix tree is built in DIR once and kept; the
/// next create for the same tree reuses it instead of building again. The
/// fix changes a file that the compiled one includes (as glibc's sysdeps
/// wrappers do): only the includer is compiled again, the tree is never
/// built a second time.
#[test]
fn patch_stripped_library_from_a_kept_prepared_tree() {
    let inst = install_stripped("");
    let dir = inst.dir.path().join("prepared/libfix");
    let arg = [OsString::from("--prepared"), dir.clone().into_os_string()];
    inst.patch_and_flip_with(&arg);
    assert_eq!(
        inst.links(),
        1,
        "create built the library more than once (the pre-fix tree only): {:?}",
        fs::read_to_string(&inst.build_log)
    );
    let meta = dir.join(".hotsplice-prepared.json");
    let first = fs::metadata(&meta)
        .expect("the prepared tree's record")
        .modified()
        .unwrap();
    let built = fs::metadata(dir.join("libfix.so.1"))
        .unwrap()
        .modified()
        .unwrap();
    inst.patch_and_flip_with(&arg);
    assert_eq!(inst.links(), 1, "a further fix built the library again");
    assert_eq!(
        fs::metadata(&meta).unwrap().modified().unwrap(),
        first,
        "prepared again"
    );
    assert_eq!(
        fs::metadata(dir.join("libfix.so.1"))
            .unwrap()
            .modified()
            .unwrap(),
        built,
        "the kept tree was built again"
    );
    // A directory hotsplice did not prepare is not taken over.
    let other = inst.dir.path().join("someone-elses");
    fs::create_dir_all(&other).unwrap();
    let out = temp_dir("refused");
    let r = inst.create_with(
        out.path(),
        &[OsString::from("--prepared"), other.into_os_string()],
    );
    r.assert_failed("create --prepared into a foreign directory");
    assert!(
        r.stderr.contains("was not prepared by hotsplice"),
        "{}",
        r.describe()
    );
}

/// `create --source-package NAME=VERSION` end to end, on a source package
/// of the `stripped_lib` fixture served by a local apt repository (a flat
/// `file:` repository named by `HOTSPLICE_APT_SOURCES`): `apt-get source`
/// through the private apt configuration, `dpkg-source -x` at the build
/// root, `dpkg-checkbuilddeps`, the default build (`debian/rules
/// build-arch` with Debian's flags and date), the stripped installed
/// library targeted by its build-id, the fix applied to a running process
/// and undone; a further fix reuses the kept tree without building it again.
#[test]
fn patch_stripped_library_from_a_debian_source_package() {
    let inst = install_stripped("");
    let work = inst.dir.path().join("srcpkg");
    let tree = work.join("hsdemo-1.0");
    copy_dir(&inst.case.dir.join("src"), &tree);
    let deb = tree.join("debian");
    fs::create_dir_all(deb.join("source")).unwrap();
    fs::write(deb.join("source/format"), "3.0 (native)\n").unwrap();
    fs::write(
        deb.join("control"),
        "Source: hsdemo\nSection: libs\nPriority: optional\n\
         Maintainer: hotsplice tests <tests@example.invalid>\nStandards-Version: 4.6.2\n\
         Build-Depends: make\n\nPackage: libhsdemo1\nArchitecture: any\n\
         Description: hotsplice test library\n A library for hotsplice's tests.\n",
    )
    .unwrap();
    fs::write(
        deb.join("changelog"),
        "hsdemo (1.0) unstable; urgency=medium\n\n  * Test package.\n\n \
         -- hotsplice tests <tests@example.invalid>  Tue, 01 Dec 2026 00:00:00 +0000\n",
    )
    .unwrap();
    fs::write(
        deb.join("rules"),
        "#!/usr/bin/make -f\nbuild build-arch:\n\t$(MAKE) libfix.so.1 prog\nbuild-indep:\n\
         binary binary-arch binary-indep: build\nclean:\n\t$(MAKE) clean\n\
         .PHONY: build build-arch build-indep binary binary-arch binary-indep clean\n",
    )
    .unwrap();
    fs::set_permissions(deb.join("rules"), fs::Permissions::from_mode(0o755)).unwrap();
    let repo = work.join("repo");
    fs::create_dir_all(&repo).unwrap();
    let mut build = Command::new("dpkg-source");
    build.arg("-b").arg(&tree).current_dir(&repo);
    run_cmd(build, Duration::from_secs(60)).assert_ok("dpkg-source -b");
    let mut scan = Command::new("dpkg-scansources");
    scan.args([".", "/dev/null"]).current_dir(&repo);
    let index = run_cmd(scan, Duration::from_secs(60));
    index.assert_ok("dpkg-scansources");
    fs::write(repo.join("Sources"), &index.stdout).unwrap();
    fs::remove_dir_all(&tree).unwrap();
    let sources = work.join("sources.list");
    fs::write(
        &sources,
        format!("deb-src [trusted=yes] file:{} ./\n", repo.display()),
    )
    .unwrap();
    let root = work.join("build-root");
    let cache = work.join("cache");
    let create = |out: &Path| {
        let mut cmd = test_env().command([
            OsString::from("create"),
            "--sign".into(),
            test_env().key.clone().into_os_string(),
            "--source-package".into(),
            "hsdemo=1.0".into(),
            "--patch".into(),
            inst.case.diff("fix.diff").into_os_string(),
            "--target".into(),
            inst.lib.clone().into_os_string(),
            "-o".into(),
            out.as_os_str().to_os_string(),
        ]);
        cmd.env("HOTSPLICE_APT_SOURCES", &sources)
            .env("HOTSPLICE_BUILD_ROOT", &root)
            .env("HOTSPLICE_CACHE", &cache)
            .env("FIX_BUILD_LOG", &inst.build_log);
        run_cmd(cmd, CMD_TIMEOUT)
    };
    // A sources file others may write is not taken orders from.
    fs::set_permissions(&sources, fs::Permissions::from_mode(0o666)).unwrap();
    let refused = temp_dir("refused");
    let r = create(refused.path());
    r.assert_failed("create with a world-writable HOTSPLICE_APT_SOURCES");
    assert!(
        r.stderr.contains("HOTSPLICE_APT_SOURCES") && r.stderr.contains("sources.list"),
        "{}",
        r.describe()
    );
    fs::set_permissions(&sources, fs::Permissions::from_mode(0o644)).unwrap();
    for round in ["first", "further"] {
        let out = temp_dir("patches");
        inst.flip(
            &create(out.path()),
            &format!("{round} create --source-package"),
        );
        // The tree was built once, at the build root, from the package.
        assert_eq!(inst.links(), 1, "{round}: the library was built again");
        assert!(root.join("hsdemo-1.0/.hotsplice-prepared").exists());
        assert!(root.join("hsdemo-1.0/debian/rules").exists());
    }
}

/// A prepared tree another `create` is using (here: its lock held by the
/// test) is waited for, and said so; SIGTERM ends the wait at once,
/// exit 128 + 15, nothing built. Once the other is done, create goes on.
#[test]
fn create_waits_for_a_prepared_tree_in_use_and_sigterm_ends_the_wait() {
    use std::io::{BufRead, BufReader};
    let inst = install_stripped("");
    let parent = inst.dir.path().join("prepared");
    fs::create_dir_all(&parent).unwrap();
    let dir = parent.join("libfix");
    let lock = parent.join(".libfix.hotsplice-lock");
    // flock locks belong to an open file: this one conflicts with create's
    // as another process's would.
    let holder = fs::File::create(&lock).unwrap();
    // SAFETY: flock on a descriptor we own.
    assert_eq!(
        unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&holder), libc::LOCK_EX) },
        0
    );
    let out = temp_dir("waiting");
    let arg = [OsString::from("--prepared"), dir.clone().into_os_string()];
    let mut cmd = inst.create_cmd(out.path(), &arg);
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    let mut create = ChildGuard(cmd.spawn().expect("spawn create"));
    let (tx, rx) = std::sync::mpsc::channel();
    let err = create.0.stderr.take().unwrap();
    thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    let waiting = loop {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(l) => {
                let hit = l.contains("waiting for the prepared tree");
                seen.push(l);
                if hit {
                    break true;
                }
            }
            Err(_) => break false,
        }
    };
    assert!(waiting, "create did not say it waits: {seen:?}");
    // Still waiting a moment later: nothing was built meanwhile.
    thread::sleep(Duration::from_millis(300));
    assert!(
        create.0.try_wait().unwrap().is_none(),
        "create ended: {seen:?}"
    );
    assert!(!dir.exists(), "create built into the locked tree");
    // SAFETY: kill on our own child.
    assert_eq!(
        unsafe { libc::kill(create.0.id() as i32, libc::SIGTERM) },
        0
    );
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = create.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "create ignored SIGTERM while waiting: {seen:?}"
        );
        thread::sleep(Duration::from_millis(20));
    };
    while let Ok(l) = rx.recv_timeout(Duration::from_secs(2)) {
        seen.push(l);
    }
    assert_eq!(status.code(), Some(128 + 15), "{seen:?}");
    assert!(
        seen.iter()
            .any(|l| l.contains("stopped while waiting for the prepared tree")),
        "{seen:?}"
    );
    assert!(!dir.exists(), "create built after SIGTERM");
    assert_eq!(fs::read_dir(out.path()).map(|d| d.count()).unwrap_or(0), 0);
    // The other one is done: create takes the lock and builds.
    drop(holder);
    inst.patch_and_flip_with(&arg);
    assert!(dir.join(".hotsplice-prepared.json").exists());
}

/// Kills and reaps a child when dropped (a failed assertion included).
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Another build and no debug file: only `.dynsym` is left, which does not
/// name the changed function; create says so instead of guessing.
#[test]
fn create_refuses_stripped_library_without_symbols() {
    let inst = install_stripped("-gdwarf-4");
    let out = temp_dir("refused");
    let r = inst.create(out.path());
    r.assert_failed("create without symbols");
    assert!(
        r.stderr.contains("is stripped and no symbols were found")
            && r.stderr.contains("fix_fits")
            && r.stderr.contains(".debug"),
        "{}",
        r.describe()
    );
    assert_eq!(fs::read_dir(out.path()).map(|d| d.count()).unwrap_or(1), 0);
}
