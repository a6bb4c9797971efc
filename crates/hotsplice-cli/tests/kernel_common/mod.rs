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

/// Run fetch.sh once per test binary (it is idempotent and takes seconds
/// when cached) and return the kernel it fetched.
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
        let cache = match std::env::var_os("HOTSPLICE_CACHE") {
            Some(c) => PathBuf::from(c).join("kernel"),
            None => repo_root().join(".cache/kernel"),
        };
        let kver = std::fs::read_to_string(cache.join("KVER"))
            .expect("KVER written by fetch.sh")
            .trim()
            .to_string();
        Kernel { kver, cache }
    })
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
    let mut cmd = Command::new(script("mkinitrd.sh"));
    cmd.arg(out).arg(format!(
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
pub fn boot(initrd: &Path, disk: Option<&Path>, append: &str, log: &Path) -> Boot {
    let mut cmd = Command::new(script("boot.sh"));
    cmd.arg("-t")
        .arg("400")
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
        panic!(
            "boot.sh failed ({}):\n--- stderr\n{}\n--- serial log\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            log_text
        );
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
    Boot {
        log: log_text,
        lines,
        took,
    }
}
