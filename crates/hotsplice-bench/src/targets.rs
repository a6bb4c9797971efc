//! The C targets the benchmarks patch: their sources (`fixtures/NAME/`,
//! built into the binary), the one-line fix for each, and how they are
//! built (with `make`) and turned into a patch file (with `hotsplice
//! create`).

use anyhow::{bail, ensure, Context, Result};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Shared by all targets: two objects, `-O2`, like a real build.
const MAKEFILE: &str = include_str!("../fixtures/Makefile");

/// One C program and the fix the benchmarks apply to it.
pub struct Program {
    pub name: &'static str,
    main_c: &'static str,
    work_c: &'static str,
    work_h: &'static str,
    /// The line of work.c the fix replaces, and its replacement.
    old_line: &'static str,
    new_line: &'static str,
}

/// The `Program` NAME, its sources `fixtures/NAME/{main.c,work.c,work.h}`,
/// and its fix: OLD, a line of work.c, becomes NEW.
macro_rules! program {
    ($name:literal, $old:expr, $new:expr) => {
        Program {
            name: $name,
            main_c: include_str!(concat!("../fixtures/", $name, "/main.c")),
            work_c: include_str!(concat!("../fixtures/", $name, "/work.c")),
            work_h: include_str!(concat!("../fixtures/", $name, "/work.h")),
            old_line: $old,
            new_line: $new,
        }
    };
}

/// Stop-time target: `prog N` runs N threads (main included). One spins on
/// clock_gettime(CLOCK_MONOTONIC) and keeps the largest gap between two
/// readings, calling compute() every 1024 readings; N-2 block in
/// pthread_cond_wait; main blocks reading commands on stdin:
/// `r` resets the max gap (answers `ok` once the spinner has done it),
/// `g` answers `<max gap ns> <last compute() result> <pauses> <paused ns>
/// <max late ns>` (pauses: gaps of 50 µs or more, and their sum; late: how
/// much later than asked an active thread's 10 ms sleep ended, at most,
/// which a thread held stopped when its sleep ends shows) once the spinner has
/// gone round at least 2048 more times (so the gap of a stop that just
/// ended, and a compute() call after it, are included).
pub const STOPPER: Program = program!(
    "stopper",
    "\treturn s + 1;\t\t/* version 1 */",
    "\treturn s + 2;\t\t/* version 2 */"
);

/// compute(7) before and after the fix.
pub const STOPPER_BEFORE: i64 = 64;
pub const STOPPER_AFTER: i64 = 65;

/// Many-process target: `prog FILE INDEX` maps FILE (shared) and stores
/// answer(input) into the INDEX-th int of it, every 20 ms. Single-threaded.
/// (Shared memory rather than a file per process: 200 processes renaming
/// files at once spend their time blocked in the file system.)
pub const FLIPPER: Program = program!(
    "flipper",
    "\treturn n * 10 + 1;\t/* version 1 */",
    "\treturn n * 10 + 2;\t/* version 2 */"
);

pub const FLIPPER_BEFORE: i32 = 41;
pub const FLIPPER_AFTER: i32 = 42;

/// Call-cost target: on `m ITERS` it calls work(arg) ITERS times in a tight
/// loop (arg is volatile, work() is noinline in another object, so neither
/// the call nor its argument can be hoisted) and answers
/// `<ns per iteration> <work(arg)> <checksum>`.
pub const CALLER: Program = program!(
    "caller",
    "\treturn x * 3 + 1;\t/* version 1 */",
    "\treturn x * 3 + 2;\t/* version 2 */"
);

pub const CALLER_BEFORE: i64 = 16;
pub const CALLER_AFTER: i64 = 17;

/// A built program and its patch.
pub struct Built {
    pub exe: PathBuf,
    pub patch_file: PathBuf,
    pub patch: hotsplice_trust::Verified,
    pub id: String,
}

/// A unified diff of `old` to `new` (same number of lines) as one hunk
/// covering the whole file, for `patch -p1`.
fn whole_file_diff(file: &str, old: &str, new: &str) -> String {
    let o: Vec<&str> = old.lines().collect();
    let n: Vec<&str> = new.lines().collect();
    assert_eq!(o.len(), n.len(), "fix must not add or remove lines");
    let mut out = format!(
        "--- a/{file}\n+++ b/{file}\n@@ -1,{} +1,{} @@\n",
        o.len(),
        n.len()
    );
    for (a, b) in o.iter().zip(&n) {
        if a == b {
            out.push_str(&format!(" {a}\n"));
        } else {
            out.push_str(&format!("-{a}\n+{b}\n"));
        }
    }
    out
}

/// Writes `prog`'s sources to `root/NAME/src`, builds them with `make`
/// and creates the patch with `hotsplice create`.
pub fn build(root: &Path, prog: &Program, hotsplice: &Path) -> Result<Built> {
    let base = root.join(prog.name);
    let src = base.join("src");
    let out = base.join("patches");
    fs::create_dir_all(&src)?;
    fs::create_dir_all(&out)?;
    fs::write(src.join("Makefile"), MAKEFILE)?;
    fs::write(src.join("main.c"), prog.main_c)?;
    fs::write(src.join("work.c"), prog.work_c)?;
    fs::write(src.join("work.h"), prog.work_h)?;
    let fixed = prog.work_c.replace(prog.old_line, prog.new_line);
    ensure!(fixed != prog.work_c, "{}: fix line not found", prog.name);
    let diff = base.join("fix.diff");
    fs::write(&diff, whole_file_diff("work.c", prog.work_c, &fixed))?;

    let make = Command::new("make")
        .arg("-s")
        .current_dir(&src)
        .output()
        .context("running make")?;
    if !make.status.success() {
        bail!(
            "{}: make failed:\n{}{}",
            prog.name,
            String::from_utf8_lossy(&make.stdout),
            String::from_utf8_lossy(&make.stderr)
        );
    }
    let create = Command::new(hotsplice)
        .arg("create")
        .arg("--patch")
        .arg(&diff)
        .arg("--description")
        .arg(format!("hotsplice-bench {}", prog.name))
        .arg("-o")
        .arg(&out)
        .arg(&src)
        .output()
        .with_context(|| format!("running {}", hotsplice.display()))?;
    let stdout = String::from_utf8_lossy(&create.stdout);
    if !create.status.success() {
        bail!(
            "{}: hotsplice create failed:\n{}{}",
            prog.name,
            stdout,
            String::from_utf8_lossy(&create.stderr)
        );
    }
    let printed: Vec<&str> = stdout
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    ensure!(
        printed.len() == 1,
        "{}: expected one patch file from hotsplice create, got: {stdout}",
        prog.name
    );
    let mut patch_file = PathBuf::from(printed[0]);
    if !patch_file.is_absolute() {
        patch_file = out.join(patch_file.file_name().unwrap_or_default());
    }
    let bytes =
        fs::read(&patch_file).with_context(|| format!("reading {}", patch_file.display()))?;
    // The bench calls the engine directly, with its own unsigned patch.
    let patch = hotsplice_trust::accept_unsigned(&bytes, &[], "no keys directory")
        .with_context(|| format!("parsing {}", patch_file.display()))?;
    ensure!(
        patch.meta.functions.len() == 1,
        "{}: the patch replaces {} functions, expected 1",
        prog.name,
        patch.meta.functions.len()
    );
    let id = patch.meta.id.to_string();
    Ok(Built {
        exe: src.join("prog"),
        patch_file,
        patch,
        id,
    })
}

/// Configuration, state and run directories of their own under `env`, with
/// `built`'s patch installed: the environment to run hotsplice in.
pub fn private_store(
    hotsplice: &Path,
    built: &Built,
    env: &Path,
) -> Result<[(&'static str, PathBuf); 3]> {
    let vars = [
        ("HOTSPLICE_CONFIG_DIR", env.join("etc")),
        ("HOTSPLICE_STATE_DIR", env.join("state")),
        ("HOTSPLICE_RUN_DIR", env.join("run")),
    ];
    // The store takes signed patches only: a key of its own, trusted
    // there, and a signed copy of the patch.
    let keys = env.join("etc/keys");
    let signing = env.join("signing");
    std::fs::create_dir_all(&keys)?;
    std::fs::create_dir_all(&signing)?;
    let signed = signing.join("patch.hsp");
    std::fs::copy(&built.patch_file, &signed)?;
    let steps: [Vec<std::ffi::OsString>; 3] = [
        vec![
            "keygen".into(),
            "-o".into(),
            signing.clone().into(),
            "bench".into(),
        ],
        vec![
            "sign".into(),
            signing.join("bench.key").into(),
            signed.clone().into(),
        ],
        vec!["user".into(), "install".into(), signed.into()],
    ];
    for (i, args) in steps.iter().enumerate() {
        if i == 1 {
            std::fs::copy(signing.join("bench.pub"), keys.join("bench.pub"))?;
        }
        let out = Command::new(hotsplice)
            .args(args)
            .envs(vars.iter().map(|(k, v)| (k, v)))
            .output()?;
        ensure!(
            out.status.success(),
            "hotsplice {:?}: {}",
            args,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(vars)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_marks_only_the_changed_line() {
        let d = whole_file_diff("w.c", "a\nb\nc\n", "a\nB\nc\n");
        assert_eq!(d, "--- a/w.c\n+++ b/w.c\n@@ -1,3 +1,3 @@\n a\n-b\n+B\n c\n");
    }

    #[test]
    fn every_fix_line_is_present() {
        for p in [&STOPPER, &FLIPPER, &CALLER] {
            assert!(p.work_c.contains(p.old_line), "{}", p.name);
        }
    }
}
