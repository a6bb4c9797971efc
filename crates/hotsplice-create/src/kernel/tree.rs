//! The kernel source tree: prepared once with the target's configuration
//! (cached: a marker records which configuration), then single objects
//! compiled with function and data sections before and after the fix.

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
    /// Compile `rel` (a `.c` path in the tree) to its object with function
    /// and data sections; returns a copy of the object at `out`.
    pub fn compile(&self, rel: &Path, out: &Path) -> Result<(), CreateError> {
        let obj = rel.with_extension("o");
        let _ = std::fs::remove_file(self.src.join(&obj));
        run(
            Command::new("make")
                .current_dir(&self.src)
                .arg(KCFLAGS)
                .arg(&obj),
            &format!("make {}", obj.display()),
        )?;
        if let Some(d) = out.parent() {
            std::fs::create_dir_all(d).map_err(io("object directory"))?;
        }
        std::fs::copy(self.src.join(&obj), out)
            .map_err(io(format!("copying {}", obj.display())))?;
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

    /// Which object a source file is linked into: `None` for vmlinux, or
    /// the module's name, read from the directory's kbuild Makefile and the
    /// configuration.
    pub fn owner(&self, rel: &Path) -> Result<Option<String>, CreateError> {
        let dir = rel.parent().unwrap_or(Path::new(""));
        let obj = rel
            .with_extension("o")
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let makefile = std::fs::read_to_string(self.src.join(dir).join("Makefile"))
            .or_else(|_| std::fs::read_to_string(self.src.join(dir).join("Kbuild")))
            .map_err(io(format!("kbuild Makefile of {}", dir.display())))?;
        let config = std::fs::read_to_string(self.src.join(".config")).unwrap_or_default();
        let value = |opt: &str| -> String {
            let key = format!("{opt}=");
            config
                .lines()
                .find_map(|l| l.strip_prefix(&key))
                .unwrap_or("n")
                .to_string()
        };
        // Join continuation lines, then split into `lhs op rhs`.
        let joined = makefile.replace("\\\n", " ");
        let mut assignments = Vec::new();
        for line in joined.lines() {
            let line = line.split('#').next().unwrap_or("");
            for op in [":=", "+=", "="] {
                if let Some((l, r)) = line.split_once(op) {
                    assignments.push((
                        l.trim().to_string(),
                        r.split_whitespace().map(String::from).collect::<Vec<_>>(),
                    ));
                    break;
                }
            }
        }
        let mut wanted = obj.clone();
        for _ in 0..4 {
            for (lhs, rhs) in &assignments {
                if !rhs.contains(&wanted) {
                    continue;
                }
                if let Some(cfg) = lhs.strip_prefix("obj-") {
                    let v = if cfg == "y" {
                        "y".to_string()
                    } else if let Some(o) = cfg.strip_prefix("$(").and_then(|c| c.strip_suffix(')'))
                    {
                        value(o)
                    } else {
                        "n".to_string()
                    };
                    return match v.as_str() {
                        "y" => Ok(None),
                        // The kernel's name of a module (KBUILD_MODNAME):
                        // `snd-usb-audio.o` is module `snd_usb_audio`.
                        "m" => Ok(Some(wanted.trim_end_matches(".o").replace('-', "_"))),
                        _ => Err(CreateError::Unsupported(format!(
                            "{} is not built with this configuration ({lhs} is off)",
                            rel.display()
                        ))),
                    };
                }
                // `name-y += file.o`: the file is part of composite `name`.
                if let Some((composite, _)) = lhs.rsplit_once('-') {
                    wanted = format!("{composite}.o");
                }
            }
        }
        Err(CreateError::Unsupported(format!(
            "cannot tell from {}/Makefile which object {} is linked into",
            dir.display(),
            rel.display()
        )))
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn modules_are_named_as_the_kernel_names_them() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("sound/usb");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("Makefile"),
            "snd-usb-audio-y := card.o \\\n\tmixer.o\nobj-$(CONFIG_SND_USB_AUDIO) += snd-usb-audio.o\n",
        )
        .unwrap();
        std::fs::write(t.path().join(".config"), "CONFIG_SND_USB_AUDIO=m\n").unwrap();
        let tree = Tree {
            src: t.path().to_path_buf(),
        };
        assert_eq!(
            tree.owner(Path::new("sound/usb/mixer.c")).unwrap(),
            Some("snd_usb_audio".to_string())
        );
        std::fs::write(t.path().join(".config"), "CONFIG_SND_USB_AUDIO=y\n").unwrap();
        assert_eq!(tree.owner(Path::new("sound/usb/card.c")).unwrap(), None);
    }
}
