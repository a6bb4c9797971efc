//! Helpers of the kernel tests: fetch the Debian 12 kernel (scripts/kernel/
//! fetch.sh), build modules against its headers, make an initramfs, boot it
//! under QEMU (TCG) and read the `HSTEST key=value` lines of its serial log.
//!
//! Set `HOTSPLICE_SKIP_KERNEL_TESTS=1` to skip these tests (they download
//! ~230 MB once and boot QEMU); otherwise any failure is a test failure.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Root of the repository (crates/hotsplice-cli/../..).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repo root")
}

pub fn script(name: &str) -> PathBuf {
    repo_root().join("scripts/kernel").join(name)
}

/// `Some(reason)` when the kernel tests are to be skipped.
pub fn skip_reason() -> Option<String> {
    match std::env::var("HOTSPLICE_SKIP_KERNEL_TESTS") {
        Ok(v) if v == "1" => Some(
            "HOTSPLICE_SKIP_KERNEL_TESTS=1: skipping the QEMU kernel test \
             (needs apt access to the Debian 12 archive and qemu-system-x86)"
                .to_string(),
        ),
        _ => None,
    }
}

/// Run a command, panic with its output if it fails; returns the output and
/// the wall time it took.
pub fn run(cmd: &mut Command, what: &str) -> (Output, Duration) {
    let t0 = Instant::now();
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}"));
    let took = t0.elapsed();
    if !out.status.success() {
        panic!(
            "{what} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    (out, took)
}

/// The prepared kernel: release string and the cache directory.
pub struct Kernel {
    pub kver: String,
    pub cache: PathBuf,
}

/// The Debian kernel build the kernel tests run on: served by the archive
/// (a fresh machine fetches the same kernel as a warm one) and the base of
/// the corpus (tests/kernel/corpus), so one cache serves both.
pub const PINNED: &str = "6.1.176-1";

/// Pin every kernel script and [`kernel`] to [`PINNED`] unless
/// `HOTSPLICE_KERNEL_VERSION` names another build. Call first in `main`,
/// before any thread starts.
pub fn pin() {
    if std::env::var_os("HOTSPLICE_KERNEL_VERSION").is_none() {
        std::env::set_var("HOTSPLICE_KERNEL_VERSION", PINNED);
    }
}

/// Run fetch.sh once per test binary (it is idempotent and takes seconds
/// when cached) and return the kernel it fetched: Debian's current one, or
/// the build `HOTSPLICE_KERNEL_VERSION` pins (which fetch.sh, probe.sh,
/// mkinitrd.sh and boot.sh all read).
pub fn kernel() -> &'static Kernel {
    static K: OnceLock<Kernel> = OnceLock::new();
    K.get_or_init(|| {
        let (out, took) = run(&mut Command::new(script("fetch.sh")), "fetch.sh");
        eprintln!(
            "kernel test: fetch.sh took {:.1}s: {} | {}",
            took.as_secs_f64(),
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        // fetch.sh PKGVER (HOTSPLICE_KERNEL_VERSION) fetches a pinned
        // build into kernel-<upstream version>.
        let dir = match std::env::var("HOTSPLICE_KERNEL_VERSION") {
            Ok(v) if !v.is_empty() => format!("kernel-{}", v.split('-').next().unwrap_or(&v)),
            _ => "kernel".to_string(),
        };
        let cache = match std::env::var_os("HOTSPLICE_CACHE") {
            Some(c) => PathBuf::from(c).join(dir),
            None => repo_root().join(".cache").join(dir),
        };
        let kver = std::fs::read_to_string(cache.join("KVER"))
            .expect("KVER written by fetch.sh")
            .trim()
            .to_string();
        Kernel { kver, cache }
    })
}

impl Kernel {
    /// A path fetch.sh recorded in `env.sh` (`KDIR`, `KSRC`, ...).
    pub fn env_path(&self, key: &str) -> PathBuf {
        let env = std::fs::read_to_string(self.cache.join("env.sh")).expect("env.sh");
        env.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .map(|v| PathBuf::from(v.trim_matches('"')))
            .unwrap_or_else(|| panic!("{key} in env.sh"))
    }

    /// The kernel's configuration.
    pub fn config(&self) -> PathBuf {
        self.cache.join(format!("root/boot/config-{}", self.kver))
    }
}

/// Build the module in `src` (a kbuild directory) into `out`; returns the .ko files.
pub fn build_module(src: &Path, out: &Path) -> Vec<PathBuf> {
    // one kbuild at a time: builds share the headers tree
    static BUILD: Mutex<()> = Mutex::new(());
    let _g = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let (o, took) = run(
        Command::new(script("build-module.sh")).arg(src).arg(out),
        "build-module.sh",
    );
    eprintln!(
        "kernel test: module build of {} took {:.1}s",
        src.display(),
        took.as_secs_f64()
    );
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter(|l| l.ends_with(".ko"))
        .map(PathBuf::from)
        .collect()
}

/// Build an initramfs at `out` with the default init, the default modules
/// (virtio, ext4), the scenario scripts of tests/kernel/scenarios at /tests
/// and the `extra` (source, destination-in-guest) files.
pub fn make_initrd(out: &Path, extra: &[(&Path, &str)]) {
    make_initrd_with(out, "virtio_pci virtio_blk ext4", extra)
}

/// Like [`make_initrd`], with the modules `mods` (names, with their
/// dependencies) in the image for init to load.
pub fn make_initrd_with(out: &Path, mods: &str, extra: &[(&Path, &str)]) {
    let mut cmd = Command::new(script("mkinitrd.sh"));
    cmd.arg("-m").arg(mods).arg(out).arg(format!(
        "{}:/tests",
        repo_root().join("tests/kernel/scenarios").display()
    ));
    for (src, dest) in extra {
        cmd.arg(format!("{}:{}", src.display(), dest));
    }
    run(&mut cmd, "mkinitrd.sh");
}

/// Create an empty ext4 state disk.
pub fn make_disk(img: &Path) {
    run(
        Command::new(script("mkdisk.sh")).arg(img).arg("32"),
        "mkdisk.sh",
    );
}

/// What one boot printed.
pub struct Boot {
    /// The whole serial log.
    pub log: String,
    /// The `HSTEST ` lines, prefix removed.
    pub lines: Vec<String>,
    pub took: Duration,
}

impl Boot {
    /// The value of the first `HSTEST key=value` line for `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        let prefix = format!("{key}=");
        self.lines
            .iter()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
    }

    /// Like `get`, but panics with the serial log if the key is missing.
    pub fn value(&self, key: &str) -> &str {
        match self.get(key) {
            Some(v) => v,
            None => panic!("no `HSTEST {key}=` line in the serial log:\n{}", self.log),
        }
    }

    pub fn has_line(&self, line: &str) -> bool {
        self.lines.iter().any(|l| l == line)
    }
}

/// Boot the initramfs (with the optional disk) and the scenarios `hstest`
/// (comma-separated names of tests/kernel/scenarios/*.sh) plus extra
/// kernel command-line words; the serial log is written to `log`.
///
/// A boot whose kernel panicked before the guest's init started (before
/// any `HSTEST` line: nothing of the test ran) is tried once more: under
/// TCG on a loaded host, early boot can fail on timing alone (boot.sh
/// passes `no_timer_check` against the best-known case). Any other
/// failure, and a second early panic, fail the test.
pub fn boot(initrd: &Path, disk: Option<&Path>, append: &str, log: &Path) -> Boot {
    match try_boot(initrd, disk, append, log) {
        Ok(b) => b,
        Err(f) if f.panicked_before_init() => {
            eprintln!(
                "kernel test: the guest kernel panicked before its init started; booting once more:\n{}",
                f.panic_lines()
            );
            let _ = std::fs::copy(log, log.with_extension("log.first-try"));
            try_boot(initrd, disk, append, log).unwrap_or_else(|f| panic!("{}", f.message()))
        }
        Err(f) => panic!("{}", f.message()),
    }
}

/// A boot.sh run that failed.
pub struct BootFailure {
    pub status: std::process::ExitStatus,
    pub stderr: String,
    /// The serial log, `\r` removed.
    pub log: String,
}

impl BootFailure {
    /// The kernel panicked, and the guest's init printed nothing yet.
    pub fn panicked_before_init(&self) -> bool {
        self.log.contains("Kernel panic") && !self.log.lines().any(|l| l.starts_with("HSTEST "))
    }

    fn panic_lines(&self) -> String {
        let lines: Vec<&str> = self.log.lines().collect();
        let at = lines
            .iter()
            .position(|l| l.contains("Kernel panic"))
            .unwrap_or(lines.len());
        lines[at.saturating_sub(5)..(at + 1).min(lines.len())].join("\n")
    }

    fn message(&self) -> String {
        format!(
            "boot.sh failed ({}):\n--- stderr\n{}\n--- serial log\n{}",
            self.status, self.stderr, self.log
        )
    }
}

fn try_boot(
    initrd: &Path,
    disk: Option<&Path>,
    append: &str,
    log: &Path,
) -> Result<Boot, BootFailure> {
    // HOTSPLICE_BOOT_TIMEOUT: seconds until boot.sh kills QEMU (default
    // 400; a test that does more in one boot sets more in its `main`).
    let timeout = std::env::var("HOTSPLICE_BOOT_TIMEOUT").unwrap_or_else(|_| "400".into());
    let mut cmd = Command::new(script("boot.sh"));
    cmd.arg("-t")
        .arg(timeout)
        .arg("-l")
        .arg(log)
        .arg("-a")
        .arg(append);
    if let Some(d) = disk {
        cmd.arg("-d").arg(d);
    }
    cmd.arg(initrd);
    let t0 = Instant::now();
    let out = cmd.output().expect("run boot.sh");
    let took = t0.elapsed();
    let log_text = std::fs::read(log)
        .map(|b| String::from_utf8_lossy(&b).replace('\r', ""))
        .unwrap_or_default();
    if !out.status.success() {
        return Err(BootFailure {
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            log: log_text,
        });
    }
    eprintln!(
        "kernel test: boot ({append}) to poweroff took {:.1}s",
        took.as_secs_f64()
    );
    let lines = log_text
        .lines()
        .filter_map(|l| l.strip_prefix("HSTEST "))
        .map(str::to_string)
        .collect();
    Ok(Boot {
        log: log_text,
        lines,
        took,
    })
}

impl Boot {
    /// Every value of `HSTEST key=value` lines for `key`, in order (for
    /// multi-line command output printed as `KEY-out=LINE`).
    pub fn values(&self, key: &str) -> Vec<&str> {
        let prefix = format!("{key}=");
        self.lines
            .iter()
            .filter_map(|l| l.strip_prefix(prefix.as_str()))
            .collect()
    }

    /// The output of a command a scenario ran with `hsrun KEY ...`: its
    /// `KEY-out=` lines joined with newlines.
    pub fn output(&self, key: &str) -> String {
        self.values(&format!("{key}-out")).join("\n")
    }

    /// The exit status of a command a scenario ran with `hsrun KEY ...`.
    pub fn status(&self, key: &str) -> i32 {
        self.value(&format!("{key}-rc"))
            .parse()
            .unwrap_or_else(|_| panic!("bad exit status for {key}:\n{}", self.log))
    }
}

/// Facts of the guest kernel recorded by scripts/kernel/probe.sh (one boot
/// the first time, cached in .cache/kernel/probe).
pub struct Probe {
    pub build_id: String,
    pub release: String,
    pub kallsyms: PathBuf,
    pub dir: PathBuf,
}

pub fn probe() -> &'static Probe {
    static P: OnceLock<Probe> = OnceLock::new();
    P.get_or_init(|| {
        kernel();
        let (out, took) = run(&mut Command::new(script("probe.sh")), "probe.sh");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let get = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{k}=")))
                .unwrap_or_else(|| panic!("probe.sh printed no {k}=:\n{text}"))
                .to_string()
        };
        eprintln!(
            "kernel test: probe.sh took {:.1}s: {}",
            took.as_secs_f64(),
            text.trim().replace('\n', " | ")
        );
        let dir = PathBuf::from(get("probe-dir"));
        Probe {
            build_id: get("build-id"),
            release: get("release"),
            kallsyms: dir.join("kallsyms"),
            dir,
        }
    })
}

/// The statically linked hotsplice for the guest (scripts/kernel/build-static.sh),
/// or the binary named by `HOTSPLICE_KERNEL_TEST_HOTSPLICE` (it must be static:
/// the guest has no libc).
pub fn static_hotsplice() -> &'static PathBuf {
    static B: OnceLock<PathBuf> = OnceLock::new();
    B.get_or_init(|| {
        if let Some(p) = std::env::var_os("HOTSPLICE_KERNEL_TEST_HOTSPLICE") {
            eprintln!("kernel test: guest hotsplice from HOTSPLICE_KERNEL_TEST_HOTSPLICE");
            return PathBuf::from(p);
        }
        let (out, took) = run(
            &mut Command::new(script("build-static.sh")),
            "build-static.sh",
        );
        eprintln!(
            "kernel test: build-static.sh took {:.1}s",
            took.as_secs_f64()
        );
        let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        assert!(p.is_file(), "build-static.sh printed {}", p.display());
        p
    })
}

/// The hotsplice binary of this build, for host-side steps (keygen, wrap).
pub fn host_hotsplice() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_hotsplice"))
}

/// `hotsplice create --kernel --json --patch PATCH -o OUT` for the fetched
/// and probed kernel: its configuration, headers, modules, kallsyms,
/// build-id, release and source tree. Callers may add options (`--sign`).
pub fn create_kernel_command(patch: &Path, out: &Path) -> Command {
    let k = kernel();
    let probe = probe();
    let mut c = Command::new(host_hotsplice());
    c.args(["create", "--kernel", "--json", "--patch"])
        .arg(patch)
        .arg("--config")
        .arg(k.config())
        .arg("--kdir")
        .arg(k.env_path("KDIR"))
        .arg("--modules")
        .arg(k.env_path("MODDIR"))
        .arg("--system-map")
        .arg(&probe.kallsyms)
        .args(["--build-id", &probe.build_id, "--release", &probe.release])
        .arg("-o")
        .arg(out)
        .arg(k.env_path("KSRC"));
    c
}

/// Build a test livepatch (tests/kernel/livepatches/NAME) for the probed
/// kernel into `out`; returns its one .ko.
pub fn build_livepatch(src: &Path, out: &Path) -> PathBuf {
    probe();
    static BUILD: Mutex<()> = Mutex::new(());
    let _g = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let (o, took) = run(
        Command::new(script("build-livepatch.sh")).arg(src).arg(out),
        "build-livepatch.sh",
    );
    eprintln!(
        "kernel test: livepatch build of {} took {:.1}s",
        src.display(),
        took.as_secs_f64()
    );
    let kos: Vec<PathBuf> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter(|l| l.ends_with(".ko"))
        .map(PathBuf::from)
        .collect();
    assert_eq!(kos.len(), 1, "one module from {}: {kos:?}", src.display());
    kos.into_iter().next().unwrap()
}

/// `hotsplice keygen -o DIR NAME`: returns (NAME.key, NAME.pub).
pub fn keygen(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    run(
        Command::new(host_hotsplice())
            .arg("keygen")
            .arg("-o")
            .arg(dir)
            .arg(name),
        "hotsplice keygen",
    );
    (
        dir.join(format!("{name}.key")),
        dir.join(format!("{name}.pub")),
    )
}

/// `hotsplice kernel wrap KO -o DIR --sign KEY`: returns the .hsp path it printed.
pub fn wrap(ko: &Path, dir: &Path, key: &Path) -> PathBuf {
    let (o, _) = run(
        Command::new(host_hotsplice())
            .args(["kernel", "wrap"])
            .arg(ko)
            .arg("-o")
            .arg(dir)
            .arg("--sign")
            .arg(key),
        "hotsplice kernel wrap",
    );
    let p = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
    assert!(p.is_file(), "wrap printed {}", p.display());
    p
}

/// `(transition ms, total ms)` of an apply/undo line such as
/// `applied ID (MOD): transition 2.3 ms, 230.4 ms in all; ...`.
pub fn transition_times(line: &str) -> Option<(f64, f64)> {
    let rest = line.split("transition ").nth(1)?;
    let (t, rest) = rest.split_once(" ms, ")?;
    let (all, _) = rest.split_once(" ms in all")?;
    Some((t.parse().ok()?, all.parse().ok()?))
}
