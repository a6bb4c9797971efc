//! Shared helpers of the end-to-end tests: fixture cases and their
//! builds, and running the `hotsplice` binary in a test environment of its
//! own. Starting and watching processes, temporary directories and running
//! commands with a timeout come from `hotsplice-testsupport`.

#![allow(dead_code, unused_imports)]

pub use hotsplice_testsupport::proc::{euid, pid_exists, require_root, unused_pid};
pub use hotsplice_testsupport::{
    compile_with, run_cmd, temp_dir, CmdOut, Stream, Target, LINE_TIMEOUT,
};
pub use serde_json::Value;
pub use tempfile::TempDir;

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Upper bound for one `hotsplice` command (create builds twice, so be generous).
pub const CMD_TIMEOUT: Duration = Duration::from_secs(300);
/// Upper bound for one `make` of a fixture.
pub const MAKE_TIMEOUT: Duration = Duration::from_secs(300);

/// Parses a command's JSON output.
pub fn parse_json(text: &str) -> Result<Value, serde_json::Error> {
    serde_json::from_str(text)
}

/// Recursive copy of a directory (regular files and directories).
pub fn copy_dir(src: &Path, dst: &Path) {
    fs::create_dir_all(dst).unwrap_or_else(|e| panic!("mkdir {}: {e}", dst.display()));
    for entry in fs::read_dir(src).unwrap_or_else(|e| panic!("read {}: {e}", src.display())) {
        let entry = entry.expect("dir entry");
        let from = entry.path();
        let to = dst.join(entry.file_name());
        if fs::metadata(&from).expect("stat").is_dir() {
            copy_dir(&from, &to);
        } else {
            fs::copy(&from, &to)
                .unwrap_or_else(|e| panic!("copy {} -> {}: {e}", from.display(), to.display()));
        }
    }
}

/// Runs `make` in `dir` and panics with its output on failure.
pub fn make(dir: &Path) {
    let mut cmd = Command::new("make");
    cmd.current_dir(dir);
    // Do not inherit a jobserver or flags from an outer make.
    cmd.env_remove("MAKEFLAGS")
        .env_remove("MFLAGS")
        .env_remove("MAKELEVEL");
    let out = run_cmd(cmd, MAKE_TIMEOUT);
    out.assert_ok(&format!("make in {}", dir.display()));
}

/// Applies a `-p1` unified diff inside `dir` with `patch`.
pub fn apply_diff(dir: &Path, diff: &Path) {
    let mut cmd = Command::new("patch");
    cmd.current_dir(dir)
        .arg("-p1")
        .arg("--batch")
        .arg("-i")
        .arg(diff);
    run_cmd(cmd, Duration::from_secs(60)).assert_ok(&format!("patch -p1 < {}", diff.display()));
}

/// Reads the GNU build-id of an ELF file with `readelf -n` (None if absent
/// or readelf is unavailable).
pub fn elf_build_id(file: &Path) -> Option<String> {
    let out = Command::new("readelf").arg("-n").arg(file).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.trim().strip_prefix("Build ID:"))
        .map(|s| s.trim().to_lowercase())
}

// ---------------------------------------------------------------------------
// Fixture cases
// ---------------------------------------------------------------------------

pub fn fixtures_dir() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
    p.canonicalize()
        .unwrap_or_else(|e| panic!("fixtures dir {}: {e}", p.display()))
}

/// Names of all fixture cases (directories with a case.txt), sorted.
pub fn all_cases() -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(fixtures_dir())
        .expect("read fixtures dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("case.txt").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// One fixture case: tests/fixtures/<name>/{src/, fix.diff, case.txt}.
///
/// case.txt holds `key = value` lines (`#` starts a comment line):
/// run, before, after, after2, after_stream (stdout|stderr), targets,
/// steady, functions, expect_targets.
pub struct Case {
    pub name: String,
    pub dir: PathBuf,
    kv: Vec<(String, String)>,
}

impl Case {
    pub fn load(name: &str) -> Case {
        let dir = fixtures_dir().join(name);
        let text = fs::read_to_string(dir.join("case.txt"))
            .unwrap_or_else(|e| panic!("{name}/case.txt: {e}"));
        let mut kv = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (k, v) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("{name}/case.txt:{}: not `key = value`", i + 1));
            kv.push((k.trim().to_string(), v.trim().to_string()));
        }
        Case {
            name: name.to_string(),
            dir,
            kv,
        }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.kv
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn req(&self, key: &str) -> &str {
        self.get(key)
            .unwrap_or_else(|| panic!("{}/case.txt has no `{key}`", self.name))
    }

    /// Space-separated list value (empty if the key is absent).
    pub fn list(&self, key: &str) -> Vec<String> {
        self.get(key)
            .map(|v| v.split_whitespace().map(str::to_string).collect())
            .unwrap_or_default()
    }

    pub fn before(&self) -> &str {
        self.req("before")
    }

    pub fn after(&self) -> &str {
        self.req("after")
    }

    pub fn after_stream(&self) -> Stream {
        match self.get("after_stream").unwrap_or("stdout") {
            "stdout" => Stream::Stdout,
            "stderr" => Stream::Stderr,
            other => panic!("{}: bad after_stream `{other}`", self.name),
        }
    }

    pub fn run_argv(&self) -> Vec<String> {
        self.list("run")
    }

    pub fn diff(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Copies src/ into a fresh temp dir, optionally applies diffs with
    /// `patch -p1`, and runs `make` there.
    pub fn build_with(&self, diffs: &[&str]) -> Build {
        let tmp = temp_dir(&self.name);
        let dir = tmp.path().join("src");
        copy_dir(&self.dir.join("src"), &dir);
        for d in diffs {
            apply_diff(&dir, &self.diff(d));
        }
        make(&dir);
        Build { _tmp: tmp, dir }
    }

    /// The original build (what running processes come from).
    pub fn build(&self) -> Build {
        self.build_with(&[])
    }
}

/// A built copy of a fixture's src/.
pub struct Build {
    _tmp: TempDir,
    pub dir: PathBuf,
}

impl Build {
    /// Starts `argv` (relative to the build dir) with LD_LIBRARY_PATH set to it.
    pub fn start_argv(&self, argv: &[String]) -> Target {
        assert!(!argv.is_empty(), "empty run command");
        let prog = self.dir.join(&argv[0]);
        let mut cmd = Command::new(&prog);
        cmd.args(&argv[1..])
            .current_dir(&self.dir)
            .env("LD_LIBRARY_PATH", &self.dir);
        Target::spawn(cmd, &argv.join(" "))
    }

    pub fn start(&self, case: &Case) -> Target {
        self.start_argv(&case.run_argv())
    }

    /// Starts the case's program and waits for its unpatched line.
    pub fn start_unpatched(&self, case: &Case) -> Target {
        let mut proc = self.start(case);
        proc.expect_new_line(Stream::Stdout, case.before(), "started");
        proc
    }
}

// ---------------------------------------------------------------------------
// The hotsplice binary
// ---------------------------------------------------------------------------

/// Path of the `hotsplice` binary: Cargo's CARGO_BIN_EXE_hotsplice when the
/// crate defines the bin target, else $HOTSPLICE_BIN at run time.
pub fn hotsplice_bin() -> PathBuf {
    if let Some(p) = option_env!("CARGO_BIN_EXE_hotsplice") {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("HOTSPLICE_BIN") {
        return PathBuf::from(p);
    }
    panic!(
        "no hotsplice binary: the hotsplice-cli crate defines no `hotsplice` bin target \
         (CARGO_BIN_EXE_hotsplice unset) and HOTSPLICE_BIN is not set"
    );
}

fn os_args<I, S>(args: I) -> Vec<OsString>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    args.into_iter()
        .map(|a| a.as_ref().to_os_string())
        .collect()
}

/// The configuration, state and run directories every hotsplice the tests
/// start uses (never the machine's own), with a signing key the
/// configuration trusts.
pub struct TestEnv {
    pub root: PathBuf,
    /// Secret key that signs the test patches.
    pub key: PathBuf,
}

impl TestEnv {
    pub fn apply_to(&self, cmd: &mut Command) {
        cmd.env("HOTSPLICE_CONFIG_DIR", self.root.join("etc"))
            .env("HOTSPLICE_STATE_DIR", self.root.join("state"))
            .env("HOTSPLICE_RUN_DIR", self.root.join("run"));
    }
}

impl TestEnv {
    /// A fresh environment under Cargo's target temp dir.
    pub fn new(tag: &str) -> TestEnv {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "hotsplice-env-{tag}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = fs::remove_dir_all(&root);
        for d in ["etc/keys", "state", "run", "signing"] {
            fs::create_dir_all(root.join(d)).expect("test env dir");
        }
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).expect("chmod env");
        let out = Command::new(hotsplice_bin())
            .args(["keygen", "-o"])
            .arg(root.join("signing"))
            .arg("tests")
            .output()
            .expect("hotsplice keygen");
        assert!(out.status.success(), "keygen: {out:?}");
        fs::copy(
            root.join("signing/tests.pub"),
            root.join("etc/keys/tests.pub"),
        )
        .expect("trust the test key");
        TestEnv {
            key: root.join("signing/tests.key"),
            root,
        }
    }

    /// `hotsplice ARGS...` in this environment.
    pub fn hs<I, S>(&self, args: I) -> CmdOut
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        run_cmd(self.command(args), CMD_TIMEOUT)
    }

    /// `hotsplice user install FILE` in this environment, which must succeed.
    pub fn install(&self, file: &Path) {
        self.hs(["user", "install", file.to_str().unwrap()])
            .assert_ok(&format!("install {}", file.display()));
    }

    /// Records in this environment's journal (operations in flight).
    pub fn journal_len(&self) -> usize {
        fs::read_dir(self.root.join("state/journal"))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// A `hotsplice ARGS...` command in this environment, not started.
    pub fn command<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new(hotsplice_bin());
        cmd.args(os_args(args)).current_dir(std::env::temp_dir());
        self.apply_to(&mut cmd);
        cmd
    }
}

/// The environment shared by the tests of one test binary.
pub fn test_env() -> &'static TestEnv {
    static ENV: std::sync::OnceLock<TestEnv> = std::sync::OnceLock::new();
    ENV.get_or_init(|| TestEnv::new("shared"))
}

/// Runs `hotsplice ARGS...` (cwd: the temp dir) and returns its output.
pub fn hotsplice<I, S>(args: I) -> CmdOut
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    test_env().hs(args)
}

/// Runs `hotsplice ARGS...` as user/group 65534 (nobody) via util-linux setpriv.
pub fn hotsplice_as_nobody<I, S>(cwd: &Path, args: I) -> CmdOut
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(hotsplice_bin())
        .args(os_args(args))
        .current_dir(cwd);
    test_env().apply_to(&mut cmd);
    run_cmd(cmd, CMD_TIMEOUT)
}

/// `hotsplice create --patch DIFF [--target F]... -o OUT --json?` on the
/// case's build dir; returns the printed patch files.
pub fn create_patches(case: &Case, build: &Build, diff: &str, out: &Path) -> Vec<PathBuf> {
    let mut args: Vec<OsString> = vec!["create".into(), "--sign".into()];
    args.push(test_env().key.clone().into_os_string());
    args.push("--patch".into());
    args.push(case.diff(diff).into_os_string());
    for t in case.list("targets") {
        args.push("--target".into());
        args.push(build.dir.join(t).into_os_string());
    }
    args.push("-o".into());
    args.push(out.as_os_str().to_os_string());
    args.push(build.dir.as_os_str().to_os_string());
    let r = hotsplice(&args);
    r.assert_ok(&format!("{}: hotsplice create ({diff})", case.name));
    let files: Vec<PathBuf> = r
        .stdout
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| {
            let p = PathBuf::from(l);
            if p.is_absolute() {
                p
            } else {
                std::env::temp_dir().join(p)
            }
        })
        .collect();
    assert!(
        !files.is_empty(),
        "{}: create printed no patch file\n{}",
        case.name,
        r.describe()
    );
    for f in &files {
        assert!(
            f.is_file(),
            "{}: create printed {} which is not a file\n{}",
            case.name,
            f.display(),
            r.describe()
        );
    }
    files
}

/// What `hotsplice info FILE --json` says about a patch file.
#[derive(Debug, Clone)]
pub struct PatchInfo {
    pub file: PathBuf,
    pub id: String,
    pub target_name: String,
    pub build_id: String,
    pub functions: Vec<String>,
}

pub fn patch_info(file: &Path) -> PatchInfo {
    let r = hotsplice([OsStr::new("info"), file.as_os_str(), OsStr::new("--json")]);
    r.assert_ok("hotsplice info --json");
    let j = parse_json(&r.stdout)
        .unwrap_or_else(|e| panic!("info --json is not JSON ({e})\n{}", r.describe()));
    let id = j
        .get("id")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("info --json: no string `id`\n{}", r.describe()))
        .to_string();
    assert!(
        id.len() == 8
            && id
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()),
        "patch id {id:?} is not 8 lowercase letters/digits"
    );
    let target = j
        .get("target")
        .unwrap_or_else(|| panic!("info --json: no `target`\n{}", r.describe()));
    let target_name = target
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("info --json: no target.name\n{}", r.describe()))
        .to_string();
    let build_id = target
        .get("build_id")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("info --json: no target.build_id\n{}", r.describe()))
        .to_lowercase();
    let functions = j
        .get("functions")
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("info --json: no `functions` array\n{}", r.describe()))
        .iter()
        .map(|f| {
            f.as_str()
                .map(str::to_string)
                .or_else(|| f.get("name").and_then(Value::as_str).map(str::to_string))
                .unwrap_or_else(|| panic!("info --json: odd functions entry {f:?}"))
        })
        .collect();
    PatchInfo {
        file: file.to_path_buf(),
        id,
        target_name,
        build_id,
        functions,
    }
}

/// Checks the infos against case.txt (`expect_targets`, `functions`) and
/// the build-ids of the built files.
pub fn check_infos(case: &Case, build: &Build, infos: &[PatchInfo]) {
    let names: BTreeSet<String> = infos.iter().map(|i| i.target_name.clone()).collect();
    assert_eq!(
        names.len(),
        infos.len(),
        "{}: several patch files for one target: {infos:?}",
        case.name
    );
    let expected = case.list("expect_targets");
    if !expected.is_empty() {
        let want: BTreeSet<String> = expected.into_iter().collect();
        assert_eq!(names, want, "{}: patched targets", case.name);
    }
    let funcs: BTreeSet<&str> = infos
        .iter()
        .flat_map(|i| i.functions.iter().map(String::as_str))
        .collect();
    for f in case.list("functions") {
        assert!(
            funcs.contains(f.as_str()),
            "{}: function {f} missing from the patches' functions {funcs:?}",
            case.name
        );
    }
    for i in infos {
        let file = build.dir.join(&i.target_name);
        if let Some(bid) = elf_build_id(&file) {
            assert_eq!(
                i.build_id, bid,
                "{}: build_id of the patch for {}",
                case.name, i.target_name
            );
        }
    }
    let mut ids: Vec<&str> = infos.iter().map(|i| i.id.as_str()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(
        ids.len(),
        infos.len(),
        "{}: patch ids not unique",
        case.name
    );
}

/// `hotsplice user apply [EXTRA...] --pid PID FILES...`
pub fn apply(pid: u32, extra: &[&str], files: &[PathBuf]) -> CmdOut {
    let mut args: Vec<OsString> = vec!["user".into(), "apply".into()];
    args.extend(extra.iter().map(OsString::from));
    args.push("--pid".into());
    args.push(pid.to_string().into());
    args.extend(files.iter().map(|f| f.as_os_str().to_os_string()));
    hotsplice(&args)
}

/// `hotsplice user undo --pid PID ID`
pub fn undo(pid: u32, id: &str) -> CmdOut {
    let pid = pid.to_string();
    hotsplice(["user", "undo", "--pid", pid.as_str(), id])
}

/// Patch ids that `hotsplice user show --pid PID --json` lists for `pid`.
pub fn shown_ids(pid: u32) -> Vec<String> {
    let p = pid.to_string();
    let r = hotsplice(["user", "show", "--pid", p.as_str(), "--json"]);
    r.assert_ok("hotsplice user show --json");
    let j = parse_json(&r.stdout)
        .unwrap_or_else(|e| panic!("user show --json is not JSON ({e})\n{}", r.describe()));
    let arr = j
        .as_array()
        .unwrap_or_else(|| panic!("user show --json is not an array\n{}", r.describe()));
    let mut ids = Vec::new();
    for entry in arr {
        let epid = entry.get("pid").and_then(|v| match v {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => s.parse().ok(),
            _ => None,
        });
        if epid != Some(u64::from(pid)) {
            continue;
        }
        if let Some(patches) = entry.get("patches").and_then(Value::as_array) {
            for p in patches {
                if let Some(id) = p.get("id").and_then(Value::as_str) {
                    ids.push(id.to_string());
                }
            }
        }
    }
    ids
}

/// Split into identifier-like words (for "does the message name `f`").
pub fn words(s: &str) -> Vec<&str> {
    s.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
        .collect()
}

/// `hotsplice create` of `diff` for a built case, signed with `key` (or not).
pub fn create(
    env: &TestEnv,
    case: &Case,
    build: &Build,
    diff: &str,
    key: Option<&Path>,
    level: u32,
    out: &Path,
) -> PathBuf {
    let mut args: Vec<String> = vec!["create".into()];
    if let Some(k) = key {
        args.push("--sign".into());
        args.push(k.display().to_string());
    }
    args.extend([
        "--level".into(),
        level.to_string(),
        "--patch".into(),
        case.diff(diff).display().to_string(),
        "-o".into(),
        out.display().to_string(),
        build.dir.display().to_string(),
    ]);
    let r = env.hs(&args);
    r.assert_ok("create");
    PathBuf::from(r.stdout.lines().next().expect("a patch path").trim())
}

/// `create` of `diff` as a level-`level` patch signed with the test key,
/// written into `out` (created if need be).
pub fn create_signed(
    env: &TestEnv,
    case: &Case,
    build: &Build,
    diff: &str,
    level: u32,
    out: &Path,
) -> PathBuf {
    fs::create_dir_all(out).unwrap_or_else(|e| panic!("mkdir {}: {e}", out.display()));
    create(env, case, build, diff, Some(&env.key), level, out)
}

/// A fresh environment, case `name` built, and a temporary directory for
/// its patches (root required).
pub fn fresh_case(tag: &str, name: &str) -> (TestEnv, Case, Build, TempDir) {
    require_root();
    let env = TestEnv::new(tag);
    let case = Case::load(name);
    let build = case.build();
    let out = temp_dir(tag);
    (env, case, build, out)
}

/// The patch id `hotsplice info` gives for `file`.
pub fn info_id(env: &TestEnv, file: &Path) -> String {
    let r = env.hs(["info", "--json", file.to_str().unwrap()]);
    r.assert_ok("info");
    let at = r.stdout.find("\"id\": \"").expect("id in info") + 7;
    r.stdout[at..at + 8].to_string()
}
