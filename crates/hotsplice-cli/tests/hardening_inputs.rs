//! Data from disk is untrusted, and nothing a local user controls steers
//! root's hotsplice: the store verifies every patch on use whatever its
//! index says, index entries are validated, files and directories get
//! explicit modes, directories others may write are refused, only bounded
//! regular files are read as patches or keys, `info` checks signatures,
//! terminal output escapes control characters, a closed or full standard
//! output ends the command cleanly, the journal cleans up after itself, and
//! an exited process is called that. Real commands, real processes.

mod common;

use common::*;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Bad input must be refused at once: far below this.
const QUICK: Duration = Duration::from_secs(30);

/// One build of `pie_exec` and an unsigned patch for it, shared by the
/// tests (each signs its own copy with its own environment's key).
struct Shared {
    case: Case,
    build: Build,
    _out: TempDir,
    unsigned: PathBuf,
}

fn shared() -> &'static Shared {
    static S: OnceLock<Shared> = OnceLock::new();
    S.get_or_init(|| {
        let env = TestEnv::new("hardening-create");
        let case = Case::load("pie_exec");
        let build = case.build();
        let out = temp_dir("hardening");
        let unsigned = create(&env, &build, &case, None, out.path());
        Shared {
            case,
            build,
            _out: out,
            unsigned,
        }
    })
}

/// `hotsplice create` of the case's fix, unsigned, with a description.
fn create(
    env: &TestEnv,
    build: &Build,
    case: &Case,
    description: Option<&str>,
    out: &Path,
) -> PathBuf {
    let mut args: Vec<String> = vec![
        "create".into(),
        "--patch".into(),
        case.diff("fix.diff").display().to_string(),
        "-o".into(),
        out.display().to_string(),
    ];
    if let Some(d) = description {
        args.push("--description".into());
        args.push(d.into());
    }
    args.push(build.dir.display().to_string());
    let r = env.hs(&args);
    r.assert_ok("create");
    PathBuf::from(r.stdout.lines().next().expect("a patch path").trim())
}

/// A copy of the shared patch signed with `env`'s key, in its own directory.
fn signed(env: &TestEnv, tag: &str) -> (TempDir, PathBuf) {
    let dir = temp_dir(tag);
    let file = dir.path().join("signed.hsp");
    fs::copy(&shared().unsigned, &file).unwrap();
    env.hs([OsStr::new("sign"), env.key.as_os_str(), file.as_os_str()])
        .assert_ok("sign");
    (dir, file)
}

fn info_json(env: &TestEnv, file: &Path) -> Value {
    let r = env.hs([OsStr::new("info"), OsStr::new("--json"), file.as_os_str()]);
    r.assert_ok("info --json");
    parse_json(&r.stdout).unwrap_or_else(|e| panic!("info --json: {e}\n{}", r.describe()))
}

fn id_of(env: &TestEnv, file: &Path) -> String {
    info_json(env, file)
        .get("id")
        .and_then(Value::as_str)
        .expect("id")
        .to_string()
}

fn mode(p: &Path) -> u32 {
    fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .mode()
        & 0o7777
}

/// `hotsplice ARGS` in `env` with a bound on its address space (so that a
/// hotsplice that reads an endless file fails instead of exhausting the
/// machine's memory) and a short timeout (so one that blocks fails the
/// test instead of hanging it).
fn hs_bounded<I, S>(env: &TestEnv, args: I) -> CmdOut
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = env.command(args);
    // SAFETY: setrlimit is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 4 << 30,
                rlim_max: 4 << 30,
            };
            libc::setrlimit(libc::RLIMIT_AS, &lim);
            Ok(())
        });
    }
    run_cmd(cmd, QUICK)
}

fn mkfifo(p: &Path) {
    let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo on a path we own.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0, "mkfifo");
}

#[test]
fn store_entry_without_a_key_gets_no_pass_without_allow_unsigned() {
    require_root();
    let env = TestEnv::new("h-unsigned");
    let s = shared();
    let mut proc = s.build.start(&s.case);
    proc.expect_new_line(Stream::Stdout, s.case.before(), "started");
    let pid = proc.pid().to_string();
    // In the store with an empty key id (the index records no signer).
    env.hs([
        OsStr::new("user"),
        OsStr::new("install"),
        OsStr::new("--allow-unsigned"),
        s.unsigned.as_os_str(),
    ])
    .assert_ok("install --allow-unsigned");
    let index = fs::read_to_string(env.root.join("state/store.json")).unwrap();
    assert!(index.contains("\"key_id\": \"\""), "{index}");

    let r = env.hs(["-y", "user", "upgrade", "--pid", &pid]);
    r.assert_failed("upgrade of an unsigned installed patch");
    assert!(r.stderr.contains("not signed"), "{}", r.describe());
    proc.assert_running_with(Stream::Stdout, s.case.before(), "upgrade refused it");

    let r = env.hs(["daemon", "--once", "--no-netlink"]);
    r.assert_failed("daemon with an unsigned installed patch");
    assert!(r.stderr.contains("not signed"), "{}", r.describe());
    proc.assert_running_with(Stream::Stdout, s.case.before(), "the daemon refused it");

    // Only the explicit flag lets it through, loudly.
    let r = env.hs(["-y", "user", "upgrade", "--allow-unsigned", "--pid", &pid]);
    r.assert_ok("upgrade --allow-unsigned");
    assert!(r.stderr.contains("WARNING"), "{}", r.describe());
    proc.expect_new_line(Stream::Stdout, s.case.after(), "patched with the flag");
    env.hs(["user", "remove", "--all", "--pid", &pid])
        .assert_ok("remove");
}

#[test]
fn index_entry_naming_a_path_is_refused_and_nothing_outside_is_deleted() {
    require_root();
    let env = TestEnv::new("h-index");
    let (_dir, file) = signed(&env, "h-index");
    let id = id_of(&env, &file);
    env.hs([OsStr::new("user"), OsStr::new("install"), file.as_os_str()])
        .assert_ok("install");
    // STATE/patches/../../x is ENV/x.
    let victim = env.root.join("x");
    fs::write(&victim, "precious").unwrap();
    let index_path = env.root.join("state/store.json");
    let index = fs::read_to_string(&index_path).unwrap();
    let named = format!("\"{id}.hsp\"");
    assert!(index.contains(&named), "{index}");
    fs::write(&index_path, index.replace(&named, "\"../../x\"")).unwrap();

    let r = env.hs(["user", "show", "--available"]);
    r.assert_ok("show --available");
    assert!(
        r.stdout.contains("no patches installed")
            && r.stderr.contains(&index_path.display().to_string())
            && r.stderr.contains("../../x")
            && r.stderr.contains("entry 0"),
        "the bad entry must be reported, with the index and the entry, and not used\n{}",
        r.describe()
    );
    let r = env.hs(["-y", "user", "upgrade", "--pid", "1"]);
    assert!(
        r.stdout.contains("no patches installed"),
        "{}",
        r.describe()
    );

    let r = env.hs(["user", "uninstall", &id]);
    assert_eq!(
        fs::read_to_string(&victim).ok().as_deref(),
        Some("precious"),
        "uninstall deleted a file outside the store\n{}",
        r.describe()
    );
    r.assert_ok("uninstall drops the bad entry");
    assert!(r.stdout.contains("no file deleted"), "{}", r.describe());
    let r = env.hs(["user", "show", "--available"]);
    assert!(r.stderr.trim().is_empty(), "{}", r.describe());
}

#[test]
fn files_and_directories_get_explicit_modes_under_umask_000() {
    require_root();
    let env = TestEnv::new("h-umask");
    let s = shared();
    let (_dir, file) = signed(&env, "h-umask");
    let id = id_of(&env, &file);
    // hotsplice creates these itself.
    fs::remove_dir(env.root.join("state")).unwrap();
    fs::remove_dir(env.root.join("run")).unwrap();
    let umask0 = |args: &[&OsStr]| {
        let mut cmd = env.command(args);
        // SAFETY: umask is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                libc::umask(0);
                Ok(())
            });
        }
        run_cmd(cmd, CMD_TIMEOUT)
    };
    let keys = env.root.join("newkeys");
    umask0(&[
        OsStr::new("keygen"),
        OsStr::new("-o"),
        keys.as_os_str(),
        OsStr::new("ops"),
    ])
    .assert_ok("keygen");
    assert_eq!(mode(&keys), 0o700, "key directory");
    assert_eq!(mode(&keys.join("ops.key")), 0o600, "secret key");
    assert_eq!(mode(&keys.join("ops.pub")), 0o644, "public key");

    umask0(&[OsStr::new("user"), OsStr::new("install"), file.as_os_str()]).assert_ok("install");
    let state = env.root.join("state");
    assert_eq!(mode(&state), 0o700, "state directory");
    assert_eq!(mode(&state.join("patches")), 0o700, "patches directory");
    assert_eq!(mode(&state.join("store.json")), 0o600, "store index");
    assert_eq!(
        mode(&state.join(format!("patches/{id}.hsp"))),
        0o600,
        "patch"
    );
    assert_eq!(mode(&state.join(".store.lock")), 0o600, "store lock");

    let mut proc = s.build.start(&s.case);
    proc.expect_new_line(Stream::Stdout, s.case.before(), "started");
    let pid = proc.pid().to_string();
    umask0(&[
        OsStr::new("user"),
        OsStr::new("apply"),
        OsStr::new("--pid"),
        OsStr::new(&pid),
        file.as_os_str(),
    ])
    .assert_ok("apply");
    proc.expect_new_line(Stream::Stdout, s.case.after(), "patched");
    assert_eq!(mode(&state.join("journal")), 0o700, "journal directory");
    assert_eq!(mode(&env.root.join("run")), 0o700, "run directory");
    assert_eq!(
        mode(&env.root.join(format!("run/pid-{pid}.lock"))),
        0o600,
        "lock"
    );
    let sign_copy = env.root.join("copy.hsp");
    fs::copy(&s.unsigned, &sign_copy).unwrap();
    fs::set_permissions(&sign_copy, fs::Permissions::from_mode(0o640)).unwrap();
    umask0(&[
        OsStr::new("sign"),
        env.key.as_os_str(),
        sign_copy.as_os_str(),
    ])
    .assert_ok("sign");
    assert_eq!(mode(&sign_copy), 0o640, "sign keeps the file's mode");
    env.hs(["user", "remove", "--all", "--pid", &pid])
        .assert_ok("remove");
}

#[test]
fn state_and_keys_directories_others_may_write_are_refused() {
    require_root();
    let env = TestEnv::new("h-perms");
    let (_dir, file) = signed(&env, "h-perms");
    env.hs([OsStr::new("user"), OsStr::new("install"), file.as_os_str()])
        .assert_ok("install");
    let state = env.root.join("state");
    let state_s = state.display().to_string();

    fs::set_permissions(&state, fs::Permissions::from_mode(0o770)).unwrap();
    for args in [
        vec!["user", "show", "--available"],
        vec!["-y", "user", "upgrade", "--pid", "1"],
        vec!["daemon", "--once", "--no-netlink"],
    ] {
        let r = env.hs(&args);
        r.assert_failed(&format!("{args:?} with a group-writable state directory"));
        assert!(
            r.stderr.contains(&state_s)
                && r.stderr.contains("0770")
                && r.stderr.contains(&format!("chmod go-w {state_s}")),
            "the message must name the directory, its mode and the fix\n{}",
            r.describe()
        );
    }
    fs::set_permissions(&state, fs::Permissions::from_mode(0o755)).unwrap();
    env.hs(["user", "show", "--available"])
        .assert_ok("a private state directory is used again");

    // Owned by someone else than the caller (root).
    std::os::unix::fs::chown(&state, Some(65534), None).unwrap();
    let r = env.hs(["user", "show", "--available"]);
    r.assert_failed("state directory owned by nobody");
    assert!(
        r.stderr.contains("uid 65534") && r.stderr.contains(&format!("chown root {state_s}")),
        "{}",
        r.describe()
    );
    std::os::unix::fs::chown(&state, Some(0), None).unwrap();

    // Whoever may write the configuration (or its directory) decides where
    // root's hotsplice takes patches from.
    let etc = env.root.join("etc");
    let conf = etc.join("hotsplice.conf");
    fs::write(&conf, "[settings]\nautoinstall = false\n").unwrap();
    for (path, open_mode) in [(&conf, 0o664), (&etc, 0o777)] {
        let before = mode(path);
        fs::set_permissions(path, fs::Permissions::from_mode(open_mode)).unwrap();
        let r = env.hs(["user", "show", "--available"]);
        r.assert_failed("a configuration others may write");
        assert!(
            r.stderr.contains(&path.display().to_string())
                && r.stderr.contains(&format!("chmod go-w {}", path.display())),
            "{}",
            r.describe()
        );
        fs::set_permissions(path, fs::Permissions::from_mode(before)).unwrap();
    }
    std::os::unix::fs::chown(&conf, Some(65534), None).unwrap();
    let r = env.hs(["user", "show", "--available"]);
    r.assert_failed("a configuration file owned by nobody");
    assert!(r.stderr.contains("uid 65534"), "{}", r.describe());
    fs::remove_file(&conf).unwrap();
    env.hs(["user", "show", "--available"])
        .assert_ok("no configuration file: the defaults");

    // Anyone who may write the trusted keys may make hotsplice trust theirs.
    let keys = env.root.join("etc/keys");
    fs::set_permissions(&keys, fs::Permissions::from_mode(0o777)).unwrap();
    let r = env.hs([OsStr::new("user"), OsStr::new("install"), file.as_os_str()]);
    r.assert_failed("install with a world-writable keys directory");
    assert!(
        r.stderr.contains(&keys.display().to_string()) && r.stderr.contains("0777"),
        "{}",
        r.describe()
    );
    fs::set_permissions(&keys, fs::Permissions::from_mode(0o755)).unwrap();
    let key = keys.join("tests.pub");
    fs::set_permissions(&key, fs::Permissions::from_mode(0o666)).unwrap();
    let r = env.hs([OsStr::new("user"), OsStr::new("install"), file.as_os_str()]);
    r.assert_failed("install with a world-writable trusted key");
    assert!(
        r.stderr.contains(&key.display().to_string()) && r.stderr.contains("chmod go-w"),
        "{}",
        r.describe()
    );
}

#[test]
fn fifos_devices_directories_and_huge_files_are_refused_quickly() {
    require_root();
    let env = TestEnv::new("h-inputs");
    let (dir, file) = signed(&env, "h-inputs");
    let fifo = dir.path().join("fifo.hsp");
    mkfifo(&fifo);
    let subdir = dir.path().join("adir.hsp");
    fs::create_dir(&subdir).unwrap();
    let huge = dir.path().join("huge.hsp");
    fs::File::create(&huge).unwrap().set_len(300 << 20).unwrap();
    let zero = PathBuf::from("/dev/zero");
    let cases = [
        (&fifo, "FIFO"),
        (&zero, "character device"),
        (&subdir, "directory"),
        (&huge, "256 MiB"),
    ];
    for (path, says) in cases {
        for args in [
            vec![OsStr::new("info"), path.as_os_str()],
            vec![OsStr::new("user"), OsStr::new("install"), path.as_os_str()],
            vec![OsStr::new("sign"), env.key.as_os_str(), path.as_os_str()],
        ] {
            let started = Instant::now();
            let r = hs_bounded(&env, &args);
            r.assert_failed(&format!("{args:?}"));
            assert!(
                r.stderr.contains(&path.display().to_string()) && r.stderr.contains(says),
                "the message must name the file and what it is ({says})\n{}",
                r.describe()
            );
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{}",
                r.describe()
            );
        }
    }

    // The same as signing keys...
    let huge_key = dir.path().join("huge.key");
    fs::File::create(&huge_key)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    let key_fifo = dir.path().join("fifo.key");
    mkfifo(&key_fifo);
    for (key, says) in [
        (&key_fifo, "FIFO"),
        (&zero, "character device"),
        (&subdir, "directory"),
        (&huge_key, "4 KiB"),
    ] {
        let r = hs_bounded(
            &env,
            [OsStr::new("sign"), key.as_os_str(), file.as_os_str()],
        );
        r.assert_failed(&format!("sign with key {}", key.display()));
        assert!(
            r.stderr.contains(&key.display().to_string()) && r.stderr.contains(says),
            "{}",
            r.describe()
        );
    }
    // ...and as trusted keys.
    let keys = env.root.join("etc/keys");
    for (name, says) in [("fifo.pub", "FIFO"), ("zero.pub", "character device")] {
        let p = keys.join(name);
        if name == "fifo.pub" {
            mkfifo(&p);
        } else {
            std::os::unix::fs::symlink("/dev/zero", &p).unwrap();
        }
        let r = hs_bounded(
            &env,
            [OsStr::new("user"), OsStr::new("install"), file.as_os_str()],
        );
        r.assert_failed(&format!("install with keys/{name}"));
        assert!(
            r.stderr.contains(&p.display().to_string()) && r.stderr.contains(says),
            "{}",
            r.describe()
        );
        fs::remove_file(&p).unwrap();
    }
    hs_bounded(
        &env,
        [OsStr::new("user"), OsStr::new("install"), file.as_os_str()],
    )
    .assert_ok("install once the keys are sane");
}

/// Run `hotsplice ARGS` with `stdout` as its standard output; exit status
/// and standard error.
fn with_stdout(
    env: &TestEnv,
    args: &[&OsStr],
    stdout: Stdio,
) -> (std::process::ExitStatus, String) {
    let child = env
        .command(args)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .expect("run hotsplice");
    let pid = child.id();
    let deadline = Instant::now() + QUICK;
    let waiter = std::thread::spawn(move || child.wait_with_output());
    while !waiter.is_finished() {
        if Instant::now() > deadline {
            // SAFETY: plain syscall on our child.
            unsafe { libc::kill(pid as i32, 9) };
            panic!("hotsplice {args:?} did not finish");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = waiter.join().unwrap().unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn closed_stdout_ends_output_quietly_and_a_full_disk_is_an_error() {
    require_root();
    let env = TestEnv::new("h-pipe");
    let (_dir, file) = signed(&env, "h-pipe");
    for args in [
        vec![OsStr::new("info"), file.as_os_str()],
        vec![OsStr::new("info"), OsStr::new("--json"), file.as_os_str()],
        vec![
            OsStr::new("user"),
            OsStr::new("show"),
            OsStr::new("--available"),
        ],
    ] {
        // `| head -1` where head has already gone: every write is EPIPE.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let (status, stderr) = with_stdout(&env, &args, Stdio::from(writer));
        assert_eq!(
            status.code(),
            Some(0),
            "{args:?} to a closed pipe: {status:?}\n{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(stderr.trim().is_empty(), "output ends quietly: {stderr}");

        // And a real `| head -1`: the first line arrives, the rest goes.
        let (reader, writer) = std::io::pipe().unwrap();
        let mut cmd = env.command(&args);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(writer)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(cmd);
        let mut first = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(reader), &mut first).unwrap();
        assert!(!first.is_empty(), "{args:?}: no first line");
        let out = child.wait().unwrap();
        assert_eq!(out.code(), Some(0), "{args:?} | head -1: {out:?}");

        let full = fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let (status, stderr) = with_stdout(&env, &args, Stdio::from(full));
        assert_eq!(
            status.code(),
            Some(1),
            "{args:?} > /dev/full: {status:?}\n{stderr}"
        );
        assert!(
            stderr.contains("No space left on device") && stderr.contains("standard output"),
            "{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn info_tells_trusted_unknown_key_bad_and_unsigned_apart() {
    require_root();
    let env = TestEnv::new("h-info");
    let (dir, file) = signed(&env, "h-info");
    let trusted_id = info_json(&env, &file)
        .get("key_id")
        .and_then(Value::as_str)
        .expect("key id")
        .to_string();

    let stranger = dir.path().join("stranger");
    env.hs([
        OsStr::new("keygen"),
        OsStr::new("-o"),
        stranger.as_os_str(),
        OsStr::new("mallory"),
    ])
    .assert_ok("keygen");
    let foreign = dir.path().join("foreign.hsp");
    fs::copy(&shared().unsigned, &foreign).unwrap();
    let r = env.hs([
        OsStr::new("sign"),
        stranger.join("mallory.key").as_os_str(),
        foreign.as_os_str(),
    ]);
    r.assert_ok("sign with mallory");
    let mallory_id = info_json(&env, &foreign)
        .get("key_id")
        .and_then(Value::as_str)
        .expect("key id")
        .to_string();

    // Forged: the signature block names the trusted key, the bytes are wrong.
    let forged = dir.path().join("forged.hsp");
    let mut bytes = fs::read(&file).unwrap();
    let n = bytes.len();
    bytes[n - 5] ^= 0x10;
    fs::write(&forged, &bytes).unwrap();

    let phrases = [
        "signed by a trusted key",
        "signed by an unknown key",
        "bad signature",
        "unsigned",
    ];
    for (f, says, json) in [
        (
            &file,
            format!("signed by a trusted key {trusted_id}"),
            "trusted",
        ),
        (
            &foreign,
            format!("signed by an unknown key {mallory_id}"),
            "unknown-key",
        ),
        (&forged, "bad signature".to_string(), "bad"),
        (&shared().unsigned, "unsigned".to_string(), "unsigned"),
    ] {
        let r = env.hs([OsStr::new("info"), f.as_os_str()]);
        r.assert_ok("info");
        let line = r
            .stdout
            .lines()
            .find(|l| l.starts_with("signature:"))
            .unwrap_or_else(|| panic!("no signature line\n{}", r.describe()));
        assert!(line.contains(&says), "{}: {line}", f.display());
        let others = phrases.iter().filter(|p| line.contains(*p)).count();
        assert_eq!(others, 1, "exactly one verdict: {line}");
        assert!(!r.stdout.contains("signed: yes"), "{}", r.describe());
        let j = info_json(&env, f);
        assert_eq!(
            j.get("signature").and_then(Value::as_str),
            Some(json),
            "{}",
            f.display()
        );
    }
}

#[test]
fn control_characters_from_patches_and_processes_are_escaped() {
    require_root();
    let env = TestEnv::new("h-escape");
    let s = shared();
    let out = temp_dir("h-escape");
    let nasty = "CVE-1 \x1b[2J\x1b]0;owned\x07 done\nfake: line";
    let file = create(&env, &s.build, &s.case, Some(nasty), out.path());
    env.hs([OsStr::new("sign"), env.key.as_os_str(), file.as_os_str()])
        .assert_ok("sign");

    let r = env.hs([OsStr::new("info"), file.as_os_str()]);
    r.assert_ok("info");
    assert!(
        !r.stdout.contains('\x1b') && !r.stdout.contains('\x07'),
        "{:?}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("CVE-1 \\x1b[2J\\x1b]0;owned\\x07 done\\x0afake: line"),
        "{:?}",
        r.stdout
    );
    assert!(
        !r.stdout.lines().any(|l| l.starts_with("fake:")),
        "{:?}",
        r.stdout
    );
    // JSON keeps the text, escaped the JSON way.
    let j = info_json(&env, &file);
    assert_eq!(j.get("description").and_then(Value::as_str), Some(nasty));

    env.hs([OsStr::new("user"), OsStr::new("install"), file.as_os_str()])
        .assert_ok("install");
    let r = env.hs(["user", "show", "--available"]);
    r.assert_ok("show --available");
    assert!(
        !r.stdout.contains('\x1b') && r.stdout.contains("\\x1b[2J"),
        "{:?}",
        r.stdout
    );

    // A process whose name carries an escape sequence.
    let odd = out.path().join("p\x1b[7mx");
    fs::copy(s.build.dir.join("prog"), &odd).unwrap();
    let mut cmd = Command::new(&odd);
    cmd.current_dir(&s.build.dir);
    let mut proc = Target::spawn(cmd, "oddly named prog");
    proc.expect_new_line(Stream::Stdout, s.case.before(), "started");
    let pid = proc.pid().to_string();
    let r = env.hs([
        OsStr::new("user"),
        OsStr::new("apply"),
        OsStr::new("--pid"),
        OsStr::new(&pid),
        file.as_os_str(),
    ]);
    r.assert_ok("apply");
    assert!(
        !r.stdout.contains('\x1b') && r.stdout.contains("(p\\x1b[7mx)"),
        "{:?}",
        r.stdout
    );
    let r = env.hs(["user", "show", "--pid", &pid]);
    r.assert_ok("show");
    assert!(
        !r.stdout.contains('\x1b') && r.stdout.contains("p\\x1b[7mx"),
        "{:?}",
        r.stdout
    );
    env.hs(["user", "remove", "--all", "--pid", &pid])
        .assert_ok("remove");
}

#[test]
fn a_zombie_is_reported_as_exited_not_as_another_build() {
    require_root();
    let env = TestEnv::new("h-zombie");
    let (_dir, file) = signed(&env, "h-zombie");
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let state = stat[stat.rfind(')').unwrap() + 1..]
            .trim_start()
            .chars()
            .next();
        if state == Some('Z') {
            break;
        }
        assert!(Instant::now() < deadline, "no zombie: {stat}");
        std::thread::sleep(Duration::from_millis(10));
    }
    let r = env.hs([
        OsStr::new("user"),
        OsStr::new("apply"),
        OsStr::new("--pid"),
        OsStr::new(&pid.to_string()),
        file.as_os_str(),
    ]);
    r.assert_failed("apply to a zombie");
    assert!(
        r.stderr.contains("zombie")
            && r.stderr.contains("exited")
            && !r.stderr.contains("another build"),
        "{}",
        r.describe()
    );
    let r = env.hs(["user", "undo", "--pid", &pid.to_string(), "aaaaaaaa"]);
    r.assert_failed("undo in a zombie");
    assert!(r.stderr.contains("zombie"), "{}", r.describe());
    child.wait().unwrap();
}

#[test]
fn journal_leftovers_are_removed_and_a_bad_record_is_set_aside_once() {
    require_root();
    let env = TestEnv::new("h-journal");
    let journal = env.root.join("state/journal");
    fs::create_dir_all(&journal).unwrap();
    let bad = journal.join("12345-aaaaaaaa.json");
    fs::write(&bad, b"{ torn").unwrap();
    // A temporary file of a writer long gone.
    let tmp = journal.join(".12345-aaaaaaaa.json.tmp.999999999.0");
    fs::write(&tmp, b"{").unwrap();

    let r = env.hs(["-y", "user", "upgrade"]);
    r.assert_ok("upgrade");
    assert!(
        r.stderr.contains(&bad.display().to_string()) && r.stderr.contains("moved aside"),
        "the unreadable record must be reported by name\n{}",
        r.describe()
    );
    assert!(!bad.exists(), "still read by every command");
    assert!(journal.join("12345-aaaaaaaa.json.bad").exists());
    assert!(!tmp.exists(), "temporary file of a dead writer left behind");

    let r = env.hs(["-y", "user", "upgrade"]);
    r.assert_ok("upgrade again");
    assert!(
        !r.stderr.contains("12345-aaaaaaaa"),
        "reported once only\n{}",
        r.describe()
    );
}
