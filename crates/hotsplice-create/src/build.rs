//! Scratch copies of the tree, the fix applied to one, and both built
//! through the compiler wrapper.

use crate::wrapper::{self, Record};
use crate::{io, CreateError};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

/// The scratch area of one `create`: the wrapper links and the trees.
pub struct Scratch {
    bin: PathBuf,
    work: PathBuf,
}

impl Scratch {
    pub fn new(work: &Path) -> Result<Scratch, CreateError> {
        let bin = work.join("bin");
        std::fs::create_dir_all(&bin).map_err(io("wrapper directory"))?;
        let exe = std::env::current_exe().map_err(io("locating the hotsplice binary"))?;
        for name in wrapper::WRAPPED_NAMES.iter().flat_map(|n| n.iter()) {
            std::os::unix::fs::symlink(&exe, bin.join(name)).map_err(io("wrapper link"))?;
        }
        Ok(Scratch {
            bin,
            work: work.to_path_buf(),
        })
    }

    /// Copies `src` to `tree` and builds it there, as it is; what the build
    /// compiled, linked, archived and copied.
    pub fn build_pre(
        &self,
        src: &Path,
        tree: &Path,
        cmd: &str,
    ) -> Result<Vec<Record>, CreateError> {
        copy_tree(src, tree)?;
        self.build_in(tree, cmd)
    }

    /// Builds `tree` (already in place) through the wrapper.
    pub fn build_in(&self, tree: &Path, cmd: &str) -> Result<Vec<Record>, CreateError> {
        build_tree("pre-fix", tree, &self.bin, &self.work, cmd)
    }

    /// Copies `src` to `work/post`, applies the fix and builds it all.
    pub fn build_post(
        &self,
        src: &Path,
        diff: &Path,
        cmd: &str,
    ) -> Result<(PathBuf, Vec<Record>), CreateError> {
        let post = self.work.join("post");
        copy_tree(src, &post)?;
        apply_diff(&post, diff, src)?;
        let log = build_tree("post-fix", &post, &self.bin, &self.work, cmd)?;
        Ok((post, log))
    }

    /// Copies the built tree `pre` to `work/post` as it is, objects and
    /// all, and applies the fix: only the objects the fix touches need
    /// compiling.
    /// The copy is made of hard links where the file system allows (a
    /// source package's tree is hundreds of megabytes): nothing writes into
    /// it but `patch`, which writes each file it changes anew.
    pub fn copy_built(&self, pre: &Path, diff: &Path, src: &Path) -> Result<PathBuf, CreateError> {
        let post = self.work.join("post");
        let linked = Command::new("cp")
            .arg("-al")
            .arg(pre)
            .arg(&post)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !linked {
            let _ = std::fs::remove_dir_all(&post);
            cp_a(pre, &post)?;
        }
        patch_tree(&post, diff, src)?;
        Ok(post)
    }
}

fn cp_a(src: &Path, dst: &Path) -> Result<(), CreateError> {
    let status = Command::new("cp")
        .arg("-a")
        .arg(src)
        .arg(dst)
        .status()
        .map_err(io("running cp"))?;
    if !status.success() {
        return Err(CreateError::Target(format!(
            "copying {} to {} failed",
            src.display(),
            dst.display()
        )));
    }
    Ok(())
}

fn copy_tree(src: &Path, dst: &Path) -> Result<(), CreateError> {
    cp_a(src, dst)?;
    // Everything must really be compiled again: sources newer than objects.
    let now = SystemTime::now();
    let old = SystemTime::UNIX_EPOCH + Duration::from_secs(86400);
    let _ = std::fs::remove_dir_all(dst.join(wrapper::SIDE_DIR));
    touch_all(dst, now, old);
    Ok(())
}

fn touch_all(dir: &Path, now: SystemTime, old: SystemTime) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(ft) = entry.file_type() else { continue };
        let path = entry.path();
        if ft.is_dir() {
            touch_all(&path, now, old);
        } else if ft.is_file() {
            let is_elf = std::fs::File::open(&path)
                .and_then(|mut f| {
                    let mut m = [0u8; 4];
                    std::io::Read::read_exact(&mut f, &mut m).map(|_| m)
                })
                .map(|m| &m == b"\x7fELF")
                .unwrap_or(false);
            if let Ok(f) = std::fs::File::open(&path) {
                let _ = f.set_modified(if is_elf { old } else { now });
            }
        }
    }
}

/// Applies the `-p1` diff `diff` in `tree` with GNU patch (no backups);
/// a diff that does not apply is an error about `src`.
pub(crate) fn patch_tree(tree: &Path, diff: &Path, src: &Path) -> Result<(), CreateError> {
    let out = Command::new("patch")
        .args([
            "-p1",
            "--batch",
            "--forward",
            "--no-backup-if-mismatch",
            "-i",
        ])
        .arg(diff)
        .current_dir(tree)
        .output()
        .map_err(io("running patch (install GNU patch)"))?;
    if !out.status.success() {
        return Err(CreateError::DiffDoesNotApply {
            src: src.display().to_string(),
            output: String::from_utf8_lossy(&out.stdout).trim().to_string(),
        });
    }
    Ok(())
}

fn apply_diff(tree: &Path, diff: &Path, src: &Path) -> Result<(), CreateError> {
    patch_tree(tree, diff, src)?;
    // The files patch touched are newer than everything: fine for make.
    let now = SystemTime::now() + Duration::from_secs(2);
    let old = SystemTime::UNIX_EPOCH + Duration::from_secs(86400);
    touch_all(tree, now, old);
    Ok(())
}

fn build_tree(
    stage: &'static str,
    tree: &Path,
    bin: &Path,
    work: &Path,
    cmd: &str,
) -> Result<Vec<Record>, CreateError> {
    let log = work.join(format!("{stage}.log"));
    let out_log = work.join(format!("{stage}.out"));
    let orig_path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![bin.to_path_buf()];
    paths.extend(std::env::split_paths(&orig_path));
    let path = std::env::join_paths(paths).unwrap_or(orig_path.clone());
    let out_file = std::fs::File::create(&out_log).map_err(io("build log"))?;
    let err_file = out_file.try_clone().map_err(io("build log"))?;
    let status = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .current_dir(tree)
        .env("PATH", path)
        .env(wrapper::ENV_ORIG_PATH, &orig_path)
        .env(wrapper::ENV_LOG, &log)
        .env(wrapper::ENV_TREE, tree)
        .stdout(out_file)
        .stderr(err_file)
        .status()
        .map_err(io(format!("running `{cmd}`")))?;
    if !status.success() {
        let text = std::fs::read_to_string(&out_log).unwrap_or_default();
        return Err(CreateError::BuildFailed {
            stage,
            cmd: cmd.into(),
            code: status.code().unwrap_or(-1),
            tail: crate::last_lines(&text, 15),
        });
    }
    let records = wrapper::read_log(&log).map_err(io("reading the wrapper log"))?;
    Ok(records
        .into_iter()
        .filter(|r| match r {
            Record::Compile { object, .. } => is_elf_in(tree, object),
            Record::Link { output, .. } | Record::Copy { output, .. } => is_elf_in(tree, output),
            Record::Archive { output, .. } => is_file_in(tree, output, wrapper::is_object_file),
        })
        .collect())
}

/// Whether `path` is a regular ELF file inside `tree` (configure's
/// `conftest.c -c -o /dev/null`, temporary files outside the tree and
/// outputs deleted since are records of no use, and not read).
fn is_elf_in(tree: &Path, path: &Path) -> bool {
    is_file_in(tree, path, |real| {
        let mut magic = [0u8; 4];
        std::fs::File::open(real)
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
            .is_ok()
            && magic == *b"\x7fELF"
    })
}

/// Whether `path` is a regular file inside `tree` that passes `kind`.
fn is_file_in(tree: &Path, path: &Path, kind: impl Fn(&Path) -> bool) -> bool {
    let (Ok(tree), Ok(real)) = (tree.canonicalize(), path.canonicalize()) else {
        return false;
    };
    if !real.starts_with(&tree) {
        return false;
    }
    let Ok(meta) = std::fs::symlink_metadata(&real) else {
        return false;
    };
    meta.file_type().is_file() && kind(&real)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_fixed_copy_leaves_the_built_tree_alone() {
        let t = tempfile::tempdir().unwrap();
        let pre = t.path().join("built");
        std::fs::create_dir_all(&pre).unwrap();
        std::fs::write(pre.join("a.c"), "int a(void) { return 1; }\n").unwrap();
        std::fs::write(pre.join("a.o"), "object").unwrap();
        let diff = t.path().join("fix.diff");
        std::fs::write(
            &diff,
            "--- a/a.c\n+++ b/a.c\n@@ -1 +1 @@\n-int a(void) { return 1; }\n+int a(void) { return 2; }\n",
        )
        .unwrap();
        let work = t.path().join("work");
        std::fs::create_dir_all(&work).unwrap();
        let scratch = super::Scratch::new(&work).unwrap();
        let post = scratch.copy_built(&pre, &diff, &pre).unwrap();
        assert!(std::fs::read_to_string(post.join("a.c"))
            .unwrap()
            .contains("return 2"));
        assert!(std::fs::read_to_string(pre.join("a.c"))
            .unwrap()
            .contains("return 1"));
        assert_eq!(std::fs::read_to_string(post.join("a.o")).unwrap(), "object");
    }

    #[test]
    fn only_elf_files_inside_the_tree_are_build_records() {
        let t = tempfile::tempdir().unwrap();
        let elf = t.path().join("a.o");
        std::fs::copy("/proc/self/exe", &elf).unwrap();
        let text = t.path().join("b.o");
        std::fs::write(&text, "not an object").unwrap();
        assert!(super::is_elf_in(t.path(), &elf));
        assert!(!super::is_elf_in(t.path(), &text));
        assert!(!super::is_elf_in(
            t.path(),
            std::path::Path::new("/dev/null")
        ));
        assert!(!super::is_elf_in(t.path(), &t.path().join("gone.o")));
        let other = tempfile::tempdir().unwrap();
        assert!(!super::is_elf_in(other.path(), &elf));
    }
}
