//! The kernel source tree: prepared once with the target's configuration
//! (cached: a marker records which configuration), then single objects
//! compiled with function and data sections before and after the fix.
//! kbuild's `prepare` runs once, when the tree is prepared; the single-object
//! builds after it skip it (`make -o prepare`). Every compiled object is kept
//! beside the tree with the exact inputs it was built from (kbuild's
//! commands, the contents of every file the compiler read), and is reused
//! only while all of them are byte for byte the same.

use crate::{io, CreateError};
use sha2::Digest;
use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Tree {
    pub src: PathBuf,
}

const MARKER: &str = ".hotsplice-prepared";
/// Pristine copies of files the fix changes, while it is applied; if a run
/// dies with the fix applied, the next run puts them back first.
const BACKUP: &str = ".hotsplice-backup";
const KCFLAGS: &str = "KCFLAGS=-ffunction-sections -fdata-sections";
/// Objects compiled before, with their inputs (see [`Tree::compile`]).
const OBJECTS: &str = ".hotsplice-objects";
/// Kept objects per compiled file (the unfixed one and a few fixed ones).
const KEEP_PER_UNIT: usize = 6;

/// Run a build step; on failure, the error carries its last output lines.
pub(super) fn run_stage(
    cmd: &mut Command,
    stage: &'static str,
    what: &str,
) -> Result<(), CreateError> {
    let out = cmd.output().map_err(io(format!("running {what}")))?;
    if !out.status.success() {
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        return Err(CreateError::BuildFailed {
            stage,
            cmd: what.into(),
            code: out.status.code().unwrap_or(-1),
            tail: crate::last_lines(&text, 20),
        });
    }
    Ok(())
}

fn run(cmd: &mut Command, what: &str) -> Result<(), CreateError> {
    run_stage(cmd, "kernel", what)
}

fn jobs() -> String {
    format!(
        "-j{}",
        std::thread::available_parallelism().map_or(2, |n| n.get())
    )
}

impl Tree {
    /// Configure and prepare `src` for `config` unless already done.
    pub fn prepare(src: &Path, config: &Path) -> Result<Tree, CreateError> {
        let src = src
            .canonicalize()
            .map_err(io(format!("kernel source {}", src.display())))?;
        if !src.join("Makefile").is_file() || !src.join("kernel").is_dir() {
            return Err(CreateError::Target(format!(
                "{} is not a kernel source tree",
                src.display()
            )));
        }
        let cfg = std::fs::read(config).map_err(io(format!("config {}", config.display())))?;
        let stamp = hex::encode(sha2::Sha256::digest(&cfg));
        let tree = Tree { src: src.clone() };
        tree.restore()?;
        // Prepared before with this configuration, and still agreeing with
        // it (a tool installed since, e.g. `pahole`, changes what
        // olddefconfig keeps: then it is prepared again).
        if std::fs::read_to_string(src.join(MARKER)).ok().as_deref() == Some(stamp.as_str())
            && tree.check_config(&cfg).is_ok()
        {
            return Ok(tree);
        }
        // Objects built under another configuration or by other tools are
        // never reused.
        let _ = std::fs::remove_file(src.join(MARKER));
        match std::fs::remove_dir_all(src.join(OBJECTS)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io("removing the kept objects")(e))
            }
            _ => {}
        }
        std::fs::write(src.join(".config"), &cfg).map_err(io("writing .config"))?;
        // Distribution key paths do not exist in a source package.
        run(
            Command::new(src.join("scripts/config"))
                .current_dir(&src)
                .args(["--file", ".config"])
                .args(["--set-str", "SYSTEM_TRUSTED_KEYS", ""])
                .args(["--set-str", "SYSTEM_REVOCATION_KEYS", ""])
                .args(["--set-str", "MODULE_SIG_KEY", "certs/signing_key.pem"]),
            "scripts/config",
        )?;
        run(
            Command::new("make").current_dir(&src).arg("olddefconfig"),
            "make olddefconfig",
        )?;
        run(
            Command::new("make")
                .current_dir(&src)
                .arg(jobs())
                .arg("modules_prepare"),
            "make modules_prepare",
        )?;
        tree.check_config(&cfg)?;
        std::fs::write(src.join(MARKER), stamp).map_err(io("writing the prepare marker"))?;
        Ok(Tree { src })
    }

    /// The prepared `.config` must say what the target's says: `make
    /// olddefconfig` silently drops options whose tools are missing on this
    /// machine (`CONFIG_DEBUG_INFO_BTF_MODULES` without `pahole`), and code
    /// compiled under another configuration is not the target's code.
    /// Options that only describe the compiler and linker are not compared,
    /// nor the key paths `prepare` sets.
    fn check_config(&self, target: &[u8]) -> Result<(), CreateError> {
        let prepared =
            std::fs::read(self.src.join(".config")).map_err(io("reading the prepared .config"))?;
        let diffs = config_differences(
            &String::from_utf8_lossy(target),
            &String::from_utf8_lossy(&prepared),
        );
        if diffs.is_empty() {
            return Ok(());
        }
        let shown: Vec<String> = diffs.iter().take(20).cloned().collect();
        Err(CreateError::Unsupported(format!(
            "the prepared kernel tree's configuration differs from the target's in {} option(s): {}{}; \
             install what the configuration needs on this machine (e.g. `pahole`, package dwarves, for BTF) \
             and run again",
            diffs.len(),
            shown.join(", "),
            if diffs.len() > shown.len() { ", …" } else { "" }
        )))
    }
}

/// `CONFIG_X` values of a `.config` (`is not set` lines as `n`).
fn config_values(text: &str) -> std::collections::BTreeMap<String, String> {
    let mut m = std::collections::BTreeMap::new();
    for l in text.lines() {
        if let Some(rest) = l.strip_prefix("# CONFIG_") {
            if let Some(name) = rest.strip_suffix(" is not set") {
                m.insert(name.to_string(), "n".to_string());
            }
        } else if let Some(rest) = l.strip_prefix("CONFIG_") {
            if let Some((k, v)) = rest.split_once('=') {
                m.insert(k.to_string(), v.to_string());
            }
        }
    }
    m
}

/// Options that describe the toolchain rather than the kernel, or that
/// `prepare` sets itself.
fn toolchain_option(name: &str) -> bool {
    const PREFIXES: [&str; 8] = [
        "CC_",
        "AS_",
        "LD_",
        "GCC_",
        "CLANG_",
        "RUSTC_",
        "PAHOLE_",
        "TOOLS_SUPPORT_",
    ];
    PREFIXES.iter().any(|p| name.starts_with(p))
        || name.contains("_HAS_")
        || matches!(
            name,
            "SYSTEM_TRUSTED_KEYS"
                | "SYSTEM_REVOCATION_KEYS"
                | "MODULE_SIG_KEY"
                | "LLD_VERSION"
                | "BUILD_SALT"
                // Whether `modules_install` signs modules: no code changes.
                | "MODULE_SIG_ALL"
        )
}

/// `NAME=target (prepared: value)` for each option the two configurations
/// disagree on, missing ones counting as `n`.
pub fn config_differences(target: &str, prepared: &str) -> Vec<String> {
    let t = config_values(target);
    let p = config_values(prepared);
    let n = "n".to_string();
    let mut names: Vec<&String> = t.keys().chain(p.keys()).collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .filter(|k| !toolchain_option(k))
        .filter_map(|k| {
            let a = t.get(k).unwrap_or(&n);
            let b = p.get(k).unwrap_or(&n);
            (a != b).then(|| format!("CONFIG_{k}={a} (prepared: {b})"))
        })
        .collect()
}

impl Tree {
    /// `make` in the prepared tree: kbuild's `prepare` ran when the tree
    /// was prepared (its marker says so) and is not walked again (`-o
    /// prepare`: about half of a single-object build's time otherwise).
    fn make(&self) -> Command {
        let mut c = Command::new("make");
        c.current_dir(&self.src).args(["-o", "prepare"]);
        c
    }

    /// Compile the unit's source (a `.c` path in the tree) to its object
    /// with function and data sections; writes a copy of the object to
    /// `out`. An object compiled before from exactly the same inputs — the
    /// commands kbuild would run now ([`Unit::recipe`]) and the contents of
    /// the source and of every header it read (kbuild's dependency list),
    /// the configuration and objtool — is copied instead of compiled again.
    /// Returns whether it was.
    pub fn compile(&self, unit: &Unit, out: &Path) -> Result<bool, CreateError> {
        let rel = &unit.source;
        let obj = rel.with_extension("o");
        if let Some(d) = out.parent() {
            std::fs::create_dir_all(d).map_err(io("object directory"))?;
        }
        let kept = self.kept_dir(&obj);
        if let Some(hit) = kept_object(&self.src, &kept, &unit.recipe) {
            std::fs::copy(&hit, out).map_err(io(format!("copying {}", hit.display())))?;
            tracing::debug!(object = %obj.display(), "reused the object compiled from the same inputs");
            return Ok(true);
        }
        let _ = std::fs::remove_file(self.src.join(&obj));
        run(
            self.make().arg(KCFLAGS).arg(&obj),
            &format!("make {}", obj.display()),
        )?;
        std::fs::copy(self.src.join(&obj), out)
            .map_err(io(format!("copying {}", obj.display())))?;
        // Keeping it is an optimisation: a failure only costs a compile.
        if let Err(e) = self.keep_object(&obj, &kept, &unit.recipe) {
            tracing::warn!(object = %obj.display(), "not kept for reuse: {e}");
        }
        Ok(false)
    }

    fn kept_dir(&self, obj: &Path) -> PathBuf {
        self.src
            .join(OBJECTS)
            .join(obj.to_string_lossy().replace('/', "%"))
    }

    /// Keep the object just built, with the inputs kbuild recorded for it.
    fn keep_object(&self, obj: &Path, kept: &Path, recipe: &str) -> std::io::Result<()> {
        let o = obj.to_string_lossy();
        let dir = obj.parent().unwrap_or(Path::new(""));
        let name = obj.file_name().unwrap_or_default().to_string_lossy();
        let cmd = std::fs::read_to_string(self.src.join(dir).join(format!(".{name}.cmd")))?;
        let deps = object_inputs(&cmd, &o).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "no dependency list in its .cmd file",
            )
        })?;
        let mut sums = std::collections::HashMap::new();
        let key = inputs_key(&self.src, recipe, &deps, &mut sums).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::NotFound, "an input vanished")
        })?;
        std::fs::create_dir_all(kept)?;
        let tmp = kept.join(format!(".{key}.tmp"));
        std::fs::copy(self.src.join(obj), &tmp)?;
        std::fs::rename(&tmp, kept.join(format!("{key}.o")))?;
        std::fs::write(&tmp, deps.join("\n"))?;
        std::fs::rename(&tmp, kept.join(format!("{key}.inputs")))?;
        // The oldest beyond KEEP_PER_UNIT go.
        let mut all: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(kept)?
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "inputs"))
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect();
        all.sort();
        all.reverse();
        for (_, p) in all.into_iter().skip(KEEP_PER_UNIT) {
            let _ = std::fs::remove_file(p.with_extension("o"));
            let _ = std::fs::remove_file(&p);
        }
        Ok(())
    }

    /// Apply the fix in the tree, keeping pristine copies of `files`.
    pub fn apply_fix(&self, diff: &Path, files: &[PathBuf]) -> Result<(), CreateError> {
        let backup = self.src.join(BACKUP);
        for f in files {
            let to = backup.join(f);
            if let Some(d) = to.parent() {
                std::fs::create_dir_all(d).map_err(io("backup directory"))?;
            }
            if self.src.join(f).exists() {
                std::fs::copy(self.src.join(f), &to)
                    .map_err(io(format!("backing up {}", f.display())))?;
            }
        }
        match crate::build::patch_tree(&self.src, diff, &self.src) {
            Err(e @ CreateError::DiffDoesNotApply { .. }) => {
                self.restore()?;
                return Err(e);
            }
            r => r?,
        }
        Ok(())
    }

    /// Put back the pristine copies, if any (and keep the objects built
    /// from the fixed files from looking newer than the sources).
    pub fn restore(&self) -> Result<(), CreateError> {
        let backup = self.src.join(BACKUP);
        if !backup.exists() {
            return Ok(());
        }
        fn walk(dir: &Path, base: &Path, out: &mut Vec<PathBuf>) {
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, base, out);
                } else if let Ok(rel) = p.strip_prefix(base) {
                    out.push(rel.to_path_buf());
                }
            }
        }
        let mut files = Vec::new();
        walk(&backup, &backup, &mut files);
        for f in files {
            std::fs::copy(backup.join(&f), self.src.join(&f))
                .map_err(io(format!("restoring {}", f.display())))?;
        }
        std::fs::remove_dir_all(&backup).map_err(io("removing the backup"))?;
        Ok(())
    }

    /// What kbuild compiles for a changed source file `rel`: the object
    /// file (`rel` itself, or the `.c` file that `#include`s it, such as
    /// kernel/sched/build_utility.c for kernel/sched/psi.c) and the object
    /// it is linked into. A file compiled without ftrace's entry calls
    /// (lib/ removes them for all its files) is accepted: its changed
    /// functions are redirected directly (see `emit`), not by ftrace.
    pub fn unit(&self, rel: &Path) -> Result<Unit, CreateError> {
        match self.owner(rel) {
            Ok((owner, recipe)) => Ok(Unit {
                source: rel.to_path_buf(),
                owner,
                recipe,
            }),
            Err(NotBuilt(why)) => {
                // kernel/sched/psi.c is built, but inside build_utility.o,
                // which `#include`s it: compare that object, which is what
                // kbuild compiles.
                match includer_of(&self.src, rel) {
                    Some(inc) => self.unit(&inc).map_err(|e| match e {
                        CreateError::Unsupported(m) => CreateError::Unsupported(format!(
                            "{} (#included by {}): {m}",
                            rel.display(),
                            inc.display()
                        )),
                        e => e,
                    }),
                    None => Err(CreateError::Unsupported(format!(
                        "{}: {why}",
                        rel.display()
                    ))),
                }
            }
            Err(Failed(e)) => Err(e),
        }
    }

    /// Which object a source file is linked into: `None` for vmlinux, or
    /// the module's name (as the kernel names it, `KBUILD_MODNAME`). Asked of
    /// kbuild itself, without building: `make -n` prints the command
    /// that would compile the object, with the module name kbuild gives it
    /// and a probe in the object's own `CFLAGS_<obj>` that says whether
    /// the directory's kbuild lists put the object into `real-obj-y` (or
    /// `lib-y`: vmlinux), `real-obj-m` (a module) or neither (not built
    /// with this configuration). This follows every form kbuild knows —
    /// `mmu-$(CONFIG_MMU)` lists pulled into `obj-y`, composite objects,
    /// objects listed in a parent directory's Makefile — because it is
    /// kbuild's own answer.
    /// Also returns what kbuild would run to build the object, as `make -n`
    /// printed it without the probe: the key of the kept objects.
    fn owner(&self, rel: &Path) -> Result<(Option<String>, String), OwnerError> {
        let obj = rel.with_extension("o");
        let obj_s = obj.to_string_lossy().into_owned();
        let probe = "-DHS_OWNER_$(if $(filter $(basename $@).o,$(real-obj-y)),y,\
$(if $(filter $(basename $@).o,$(lib-y)),y,$(if $(filter $(basename $@).o,$(real-obj-m)),m,n)))";
        // kbuild names the per-object variable by the path below the
        // directory whose Makefile lists it: try every suffix of the path.
        let comps: Vec<String> = obj
            .iter()
            .map(|c| c.to_string_lossy().into_owned())
            .collect();
        let mut cmd = self.make();
        cmd.arg("-n").arg(KCFLAGS).arg(&obj_s);
        for i in 0..comps.len() {
            cmd.arg(format!("CFLAGS_{}={probe}", comps[i..].join("/")));
        }
        let what = format!("make -n {obj_s}");
        let out = cmd
            .output()
            .map_err(|e| Failed(io(format!("running {what}"))(e)))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() && stderr.contains("No rule to make target") {
            return Err(NotBuilt(format!(
                "{obj_s} is not built with this configuration (kbuild has no rule for it)"
            )));
        }
        if !out.status.success() {
            return Err(Failed(CreateError::BuildFailed {
                stage: "kernel",
                cmd: what,
                code: out.status.code().unwrap_or(-1),
                tail: crate::last_lines(&format!("{text}{stderr}"), 20),
            }));
        }
        let recipe = ["y", "m", "n"].iter().fold(text.to_string(), |t, s| {
            t.replace(&format!(" -DHS_OWNER_{s}"), "")
        });
        let owner = owner_from_make(&text, &obj_s).map_err(|why| {
            if why.contains("neither obj-y nor obj-m") {
                NotBuilt(why)
            } else {
                Failed(CreateError::Unsupported(format!(
                    "{}: {why}",
                    rel.display()
                )))
            }
        })?;
        Ok((owner, recipe))
    }
}

/// The files an object was compiled from, from its kbuild command file
/// (`.NAME.o.cmd`): the source, every header of `deps_…` (not the
/// `$(wildcard include/config/…)` markers: the configuration is
/// `include/config/auto.conf`, which is added) and objtool when the object
/// depends on it. Paths as kbuild wrote them, relative to the tree. `None`
/// when the file has no dependency list for `obj`.
fn object_inputs(cmd: &str, obj: &str) -> Option<Vec<String>> {
    let mut out = vec!["include/config/auto.conf".to_string()];
    let source = format!("source_{obj} := ");
    out.push(
        cmd.lines()
            .find_map(|l| l.strip_prefix(&source))?
            .trim()
            .to_string(),
    );
    let start = format!("deps_{obj} := \\");
    let mut lines = cmd.lines().skip_while(|l| l.trim_end() != start);
    lines.next()?;
    for l in lines {
        let item = l.trim().trim_end_matches('\\').trim();
        if !item.is_empty() && !item.starts_with("$(wildcard ") {
            out.push(item.to_string());
        }
        if !l.trim_end().ends_with('\\') {
            break;
        }
    }
    if cmd.contains("$(wildcard ./tools/objtool/objtool)") {
        out.push("tools/objtool/objtool".to_string());
    }
    out.sort();
    out.dedup();
    Some(out)
}

/// SHA-256 over `recipe` and the name and contents of every input; `None`
/// if one cannot be read. `sums` keeps the file sums of one lookup.
fn inputs_key(
    src: &Path,
    recipe: &str,
    inputs: &[String],
    sums: &mut std::collections::HashMap<String, [u8; 32]>,
) -> Option<String> {
    let mut h = sha2::Sha256::new();
    h.update(recipe.as_bytes());
    for f in inputs {
        let sum = match sums.get(f) {
            Some(s) => *s,
            None => {
                let s: [u8; 32] = sha2::Sha256::digest(std::fs::read(src.join(f)).ok()?).into();
                sums.insert(f.clone(), s);
                s
            }
        };
        h.update([0]);
        h.update(f.as_bytes());
        h.update([0]);
        h.update(sum);
    }
    Some(hex::encode(h.finalize()))
}

/// A kept object (in `kept`) whose recorded inputs, read now, and recipe
/// give its key again.
fn kept_object(src: &Path, kept: &Path, recipe: &str) -> Option<PathBuf> {
    let mut sums = std::collections::HashMap::new();
    std::fs::read_dir(kept).ok()?.flatten().find_map(|e| {
        let p = e.path();
        let key = p.file_stem()?.to_str()?.to_string();
        if p.extension()? != "inputs" {
            return None;
        }
        let inputs: Vec<String> = std::fs::read_to_string(&p)
            .ok()?
            .lines()
            .map(str::to_string)
            .collect();
        let obj = p.with_extension("o");
        (inputs_key(src, recipe, &inputs, &mut sums)? == key && obj.is_file()).then_some(obj)
    })
}

/// What kbuild compiles for a changed file (see [`Tree::unit`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Unit {
    /// The `.c` file compiled to the object that holds the changed code.
    pub source: PathBuf,
    /// `None`: vmlinux; else the module.
    pub owner: Option<String>,
    /// The commands kbuild runs to compile it (`make -n`'s output).
    pub recipe: String,
}

enum OwnerError {
    /// Not compiled on its own (it may be `#include`d).
    NotBuilt(String),
    Failed(CreateError),
}
use OwnerError::{Failed, NotBuilt};

/// A `.c` file in the same directory as `rel` that `#include`s it (kbuild
/// then compiles `rel` only as part of that file).
fn includer_of(src: &Path, rel: &Path) -> Option<PathBuf> {
    let name = rel.file_name()?.to_str()?;
    let dir = rel.parent().unwrap_or(Path::new(""));
    let mut found: Vec<PathBuf> = std::fs::read_dir(src.join(dir))
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "c") && p.file_name() != rel.file_name())
        .filter(|p| {
            std::fs::read_to_string(p)
                .is_ok_and(|text| crate::graph::c_includes(&text).iter().any(|n| n == name))
        })
        .filter_map(|p| p.file_name().map(|f| dir.join(f)))
        .collect();
    found.sort();
    found.into_iter().next()
}

/// The owner of `obj` from the commands `make -n obj` printed (see
/// [`Tree::owner`]).
fn owner_from_make(text: &str, obj: &str) -> Result<Option<String>, String> {
    let needle = format!(" -c -o {obj} ");
    let Some(line) = text.lines().find(|l| l.contains(&needle)) else {
        return Err(format!(
            "kbuild has no rule compiling {obj} with this configuration (its directory is not built)"
        ));
    };
    let words: Vec<&str> = line.split_whitespace().collect();
    let state = words
        .iter()
        .find_map(|w| w.strip_prefix("-DHS_OWNER_"))
        .unwrap_or("n");
    match state {
        "y" => Ok(None),
        "m" => {
            let name = words
                .iter()
                .find_map(|w| w.strip_prefix("-DKBUILD_MODNAME="))
                .map(|v| v.trim_matches(|c| c == '\'' || c == '"').to_string())
                .ok_or_else(|| format!("kbuild gives no module name for {obj}"))?;
            if name.contains(':') || name.is_empty() {
                return Err(format!(
                    "{obj} is linked into several modules ({name}); a patch for it is not supported"
                ));
            }
            Ok(Some(name))
        }
        _ => Err(format!(
            "{obj} is not built with this configuration (kbuild lists it in neither obj-y nor obj-m)"
        )),
    }
}

/// Source files a unified diff changes (the `+++ b/...` lines).
pub fn changed_files(diff: &str) -> Vec<PathBuf> {
    diff.lines()
        .filter_map(|l| l.strip_prefix("+++ "))
        .map(|l| l.split('\t').next().unwrap_or(l).trim())
        .filter(|p| *p != "/dev/null")
        .map(|p| PathBuf::from(p.split_once('/').map(|x| x.1).unwrap_or(p)))
        .collect()
}

/// Where the lines of one file's unfixed version are in its fixed version,
/// from the fix's hunks (`None` for a line the fix removes).
#[derive(Debug, Clone, Default)]
pub struct LineMap {
    hunks: Vec<Hunk>,
}

/// One hunk: (old start, old length, new start, new length, kept lines as
/// (old, new)).
type Hunk = (u32, u32, u32, u32, Vec<(u32, u32)>);

impl LineMap {
    /// The map for `file` (a path in the tree) from a unified diff.
    pub fn of(diff: &str, file: &Path) -> LineMap {
        let mut m = LineMap::default();
        let mut in_file = false;
        let (mut old, mut new) = (0u32, 0u32);
        for l in diff.lines() {
            if let Some(p) = l.strip_prefix("+++ ") {
                in_file = changed_files(&format!("+++ {p}"))
                    .first()
                    .map(PathBuf::as_path)
                    == Some(file);
                continue;
            }
            if l.starts_with("--- ") {
                continue;
            }
            if !in_file {
                continue;
            }
            if let Some(h) = l.strip_prefix("@@ -") {
                let parse = |r: &str| -> (u32, u32) {
                    let (a, b) = r.split_once(',').unwrap_or((r, "1"));
                    (a.parse().unwrap_or(0), b.parse().unwrap_or(0))
                };
                let mut it = h.split_whitespace();
                let (os, ol) = parse(it.next().unwrap_or("0"));
                let (ns, nl) = parse(it.next().unwrap_or("+0").trim_start_matches('+'));
                // An empty range names the line before it.
                let os = if ol == 0 { os + 1 } else { os };
                let ns = if nl == 0 { ns + 1 } else { ns };
                m.hunks.push((os, ol, ns, nl, Vec::new()));
                (old, new) = (os, ns);
                continue;
            }
            let Some(h) = m.hunks.last_mut() else {
                continue;
            };
            match l.as_bytes().first() {
                Some(b' ') | None => {
                    h.4.push((old, new));
                    old += 1;
                    new += 1;
                }
                Some(b'-') => old += 1,
                Some(b'+') => new += 1,
                _ => {}
            }
        }
        m
    }

    /// Line `l` of the unfixed file in the fixed one.
    pub fn map(&self, l: u32) -> Option<u32> {
        let mut shift: i64 = 0;
        for (os, ol, ns, nl, kept) in &self.hunks {
            if l < *os {
                break;
            }
            if l < os + ol {
                return kept.iter().find(|k| k.0 == l).map(|k| k.1);
            }
            shift = (ns + nl) as i64 - (os + ol) as i64;
        }
        u32::try_from(l as i64 + shift).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// kbuild's command file of a compiled object, in the shape fixdep
    /// writes it.
    const CMD: &str = "cmd_net/x/y.o := gcc -Wp,-MMD,net/x/.y.o.d -c -o net/x/y.o net/x/y.c\n\n\
source_net/x/y.o := net/x/y.c\n\n\
deps_net/x/y.o := \\\n\
    $(wildcard include/config/FOO) \\\n\
  include/linux/a.h \\\n\
    $(wildcard include/config/BAR) \\\n\
  net/x/b.h \\\n\
  include/linux/a.h \\\n\n\
net/x/y.o: $(deps_net/x/y.o)\n\n\
$(deps_net/x/y.o):\n\n\
net/x/y.o: $(wildcard ./tools/objtool/objtool)\n";

    #[test]
    fn an_objects_inputs_are_its_source_headers_configuration_and_objtool() {
        assert_eq!(
            object_inputs(CMD, "net/x/y.o").unwrap(),
            [
                "include/config/auto.conf",
                "include/linux/a.h",
                "net/x/b.h",
                "net/x/y.c",
                "tools/objtool/objtool"
            ]
        );
        assert_eq!(object_inputs(CMD, "net/x/z.o"), None);
    }

    /// A kept object is reused only while the recipe and every input are
    /// the same, byte for byte (not by time stamps: a file put back with
    /// other contents and the same size and time is a new input).
    #[test]
    fn a_kept_object_is_reused_only_with_the_same_inputs() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path();
        for (f, text) in [
            ("include/config/auto.conf", "CONFIG_FOO=y\n"),
            ("include/linux/a.h", "int a;\n"),
            ("net/x/b.h", "int b;\n"),
            ("net/x/y.c", "int y;\n"),
            ("tools/objtool/objtool", "objtool\n"),
            ("net/x/.y.o.cmd", CMD),
            ("net/x/y.o", "object 1"),
        ] {
            std::fs::create_dir_all(src.join(f).parent().unwrap()).unwrap();
            std::fs::write(src.join(f), text).unwrap();
        }
        let tree = Tree {
            src: src.to_path_buf(),
        };
        let obj = Path::new("net/x/y.o");
        let kept = tree.kept_dir(obj);
        assert_eq!(kept_object(src, &kept, "recipe"), None);
        tree.keep_object(obj, &kept, "recipe").unwrap();
        let hit = kept_object(src, &kept, "recipe").expect("kept");
        assert_eq!(std::fs::read(&hit).unwrap(), b"object 1");
        // Another command, or any input changed: not reused.
        assert_eq!(kept_object(src, &kept, "recipe -O3"), None);
        for f in [
            "include/config/auto.conf",
            "net/x/b.h",
            "net/x/y.c",
            "tools/objtool/objtool",
        ] {
            let p = src.join(f);
            let before = std::fs::read(&p).unwrap();
            let mtime = std::fs::metadata(&p).unwrap().modified().unwrap();
            let mut changed = before.clone();
            changed[0] ^= 1;
            std::fs::write(&p, &changed).unwrap();
            std::fs::File::options()
                .write(true)
                .open(&p)
                .unwrap()
                .set_modified(mtime)
                .unwrap();
            assert_eq!(kept_object(src, &kept, "recipe"), None, "{f} changed");
            std::fs::remove_file(&p).unwrap();
            assert_eq!(kept_object(src, &kept, "recipe"), None, "{f} missing");
            std::fs::write(&p, &before).unwrap();
            assert!(kept_object(src, &kept, "recipe").is_some(), "{f} back");
        }
        // The fixed version is kept beside the unfixed one; each is found
        // by its own inputs.
        std::fs::write(src.join("net/x/y.c"), "int y = 1;\n").unwrap();
        std::fs::write(src.join("net/x/y.o"), "object 2").unwrap();
        tree.keep_object(obj, &kept, "recipe").unwrap();
        let hit = kept_object(src, &kept, "recipe").unwrap();
        assert_eq!(std::fs::read(&hit).unwrap(), b"object 2");
        std::fs::write(src.join("net/x/y.c"), "int y;\n").unwrap();
        let hit = kept_object(src, &kept, "recipe").unwrap();
        assert_eq!(std::fs::read(&hit).unwrap(), b"object 1");
    }

    #[test]
    fn lines_are_followed_through_the_hunks() {
        let d = "--- a/x.c\n+++ b/x.c\n@@ -10,4 +10,6 @@ f\n a\n-b\n+c\n+d\n+e\n x\n y\n\
--- a/z.c\n+++ b/z.c\n@@ -1,1 +1,2 @@\n q\n+r\n";
        let m = LineMap::of(d, Path::new("x.c"));
        assert_eq!(m.map(5), Some(5));
        assert_eq!(m.map(10), Some(10));
        assert_eq!(m.map(11), None);
        assert_eq!(m.map(12), Some(14));
        assert_eq!(m.map(13), Some(15));
        assert_eq!(m.map(100), Some(102));
        assert_eq!(LineMap::of(d, Path::new("z.c")).map(7), Some(8));
        assert_eq!(LineMap::of(d, Path::new("w.c")).map(7), Some(7));
    }

    #[test]
    fn configuration_drift_is_found_but_not_the_toolchain() {
        let target = "CONFIG_A=y\nCONFIG_DEBUG_INFO_BTF_MODULES=y\nCONFIG_CC_VERSION_TEXT=\"gcc-12\"\nCONFIG_GCC_VERSION=120200\n# CONFIG_B is not set\n";
        let prepared = "CONFIG_A=y\nCONFIG_CC_VERSION_TEXT=\"gcc\"\nCONFIG_GCC_VERSION=120201\nCONFIG_AS_HAS_X=y\n";
        assert_eq!(
            config_differences(target, prepared),
            vec!["CONFIG_DEBUG_INFO_BTF_MODULES=y (prepared: n)".to_string()]
        );
        assert!(config_differences(target, target).is_empty());
    }

    #[test]
    fn an_included_c_file_is_found_by_its_includer() {
        let dir = std::env::temp_dir().join(format!("hs-includer-{}", std::process::id()));
        let sched = dir.join("kernel/sched");
        std::fs::create_dir_all(&sched).unwrap();
        std::fs::write(sched.join("psi.c"), "int psi;\n").unwrap();
        std::fs::write(sched.join("core.c"), "#include \"sched.h\"\n").unwrap();
        std::fs::write(
            sched.join("build_utility.c"),
            "#include \"sched.h\"\n#ifdef CONFIG_PSI\n# include \"psi.c\"\n#endif\n",
        )
        .unwrap();
        assert_eq!(
            includer_of(&dir, Path::new("kernel/sched/psi.c")),
            Some(PathBuf::from("kernel/sched/build_utility.c"))
        );
        assert_eq!(includer_of(&dir, Path::new("kernel/sched/core.c")), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_owner_is_read_from_kbuilds_command() {
        let m = "make -f ./scripts/Makefile.build obj=sound/usb\n  gcc -Wp,-MMD -DHS_OWNER_m -pg -mrecord-mcount -mfentry -DMODULE -DKBUILD_BASENAME='\"mixer\"' -DKBUILD_MODNAME='\"snd_usb_audio\"' -c -o sound/usb/mixer.o sound/usb/mixer.c\n";
        assert_eq!(
            owner_from_make(m, "sound/usb/mixer.o"),
            Ok(Some("snd_usb_audio".into()))
        );
        let y = "gcc -DHS_OWNER_y -DKBUILD_MODFILE='\"mm/rmap\"' -DKBUILD_MODNAME='\"rmap\"' -c -o mm/rmap.o mm/rmap.c\n";
        assert_eq!(owner_from_make(y, "mm/rmap.o"), Ok(None));
        let n = "gcc -DHS_OWNER_n -DKBUILD_MODNAME='\"nommu\"' -c -o mm/nommu.o mm/nommu.c\n";
        assert!(owner_from_make(n, "mm/nommu.o")
            .unwrap_err()
            .contains("not built with this configuration"));
        assert!(owner_from_make("", "fs/ntfs/super.o").is_err());
        let two = "gcc -DHS_OWNER_m -DKBUILD_MODNAME='\"a:b\"' -c -o x/y.o x/y.c\n";
        assert!(owner_from_make(two, "x/y.o")
            .unwrap_err()
            .contains("several"));
    }
}
