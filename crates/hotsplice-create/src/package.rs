//! `create --source-package NAME=VERSION`: the pre-fix tree of a Debian
//! source package, prepared once and kept. The source of exactly that
//! version comes from `apt-get source` through a private apt configuration
//! (the machine's `deb` lines as `deb-src`, lists under the cache: the
//! machine's own sources are not touched); `dpkg-source -x` applies
//! `debian/patches`; the tree is built where Debian's build daemons build
//! it (`/build/reproducible-path/SOURCE-UPSTREAM`), with `dpkg-buildflags`'
//! flags (the package's `DEB_BUILD_MAINT_OPTIONS` included) and
//! `SOURCE_DATE_EPOCH` from `debian/changelog`, so that what it links has
//! the build-ids of the files Debian ships. The build's records stay in the
//! cache next to the tree's name, so a later fix for the same package
//! compiles only the objects its diff touches.

use crate::build::Scratch;
use crate::wrapper::{self, Record};
use crate::{io, CreateError};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where source packages are built unless `HOTSPLICE_BUILD_ROOT` says.
pub const BUILD_ROOT: &str = "/build/reproducible-path";

/// A source package at one version.
#[derive(Debug, Clone)]
pub struct SourcePackage {
    pub name: String,
    pub version: String,
}

impl SourcePackage {
    /// `NAME=VERSION`.
    pub fn parse(spec: &str) -> Result<SourcePackage, CreateError> {
        let ok = |s: &str, extra: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c) || extra.contains(c))
        };
        match spec.split_once('=') {
            Some((n, v)) if ok(n, "") && ok(v, ":~") && !n.starts_with('-') => Ok(SourcePackage {
                name: n.into(),
                version: v.into(),
            }),
            _ => Err(CreateError::Target(format!(
                "--source-package {spec:?}: expected NAME=VERSION as apt names them, e.g. openssl=3.0.20-1~deb12u2"
            ))),
        }
    }

    /// The version without epoch and Debian revision (`3.0.20`).
    pub fn upstream(&self) -> &str {
        let v = self
            .version
            .split_once(':')
            .map_or(self.version.as_str(), |(_, v)| v);
        v.rsplit_once('-').map_or(v, |(u, _)| u)
    }

    /// Version as a file name part (`:` is not welcome everywhere).
    fn file_version(&self) -> String {
        self.version.replace(':', "%3a")
    }
}

/// A prepared pre-fix tree: where it is and what its build did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Prepared {
    pub tree: PathBuf,
    pub build: String,
    pub records: PathBuf,
}

/// What `create` needs of a prepared tree.
pub struct PreparedTree {
    pub tree: PathBuf,
    pub log: Vec<Record>,
    /// ELF files of the machine's installed binary packages of this source.
    pub installed: Vec<PathBuf>,
    /// Held for the rest of the run: no other `create` prepares (removes,
    /// rebuilds) the tree while this one reads it.
    pub lock: hotsplice_store::FileLock,
}

/// The lock of a prepared tree: a file beside it (`.NAME.hotsplice-lock`),
/// so that every cache and every `create` building at that path shares it.
fn tree_lock(tree: &Path, stop: fn() -> bool) -> Result<hotsplice_store::FileLock, CreateError> {
    let name = tree
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let lock = tree.with_file_name(format!(".{name}.hotsplice-lock"));
    crate::lock_tree(
        &lock,
        &format!("the prepared tree {}", tree.display()),
        stop,
    )
}

/// Forget a prepared tree before removing it: its record goes first, so a
/// run killed while the tree is half removed or half rebuilt leaves no
/// record that would vouch for it.
fn forget(record: &Path) -> Result<(), CreateError> {
    match std::fs::remove_file(record) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(format!("removing {}", record.display()))(e)),
    }
}

fn write_record(path: &Path, bytes: &[u8]) -> Result<(), CreateError> {
    hotsplice_store::write_atomic(path, bytes).map_err(|e| CreateError::Target(e.to_string()))
}

fn run(cmd: &mut Command, what: &str) -> Result<String, CreateError> {
    let out = cmd.output().map_err(io(format!("running {what}")))?;
    if !out.status.success() {
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        return Err(CreateError::BuildFailed {
            stage: "source package",
            cmd: what.into(),
            code: out.status.code().unwrap_or(-1),
            tail: crate::last_lines(&text, 15),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The private apt configuration: `deb-src` for every `deb` the machine
/// uses, lists in `dir`.
fn apt_options(dir: &Path) -> Result<Vec<String>, CreateError> {
    let etc = dir.join("etc");
    let parts = etc.join("sources.list.d");
    let lists = dir.join("lists");
    for d in [
        &parts,
        &lists.join("partial"),
        &dir.join("cache/archives/partial"),
    ] {
        std::fs::create_dir_all(d).map_err(io(format!("{}", d.display())))?;
    }
    let list = etc.join("sources.list");
    std::fs::write(&list, source_lines()?.join("\n") + "\n")
        .map_err(io(format!("{}", list.display())))?;
    Ok(vec![
        format!("-oDir::Etc::SourceList={}", list.display()),
        format!("-oDir::Etc::SourceParts={}", parts.display()),
        format!("-oDir::State::Lists={}", lists.display()),
        format!("-oDir::Cache={}", dir.join("cache").display()),
        "-oDebug::NoLocking=1".into(),
        "-oAPT::Sandbox::User=root".into(),
    ])
}

/// The `deb-src` lines apt fetches sources from: those of the file that
/// `HOTSPLICE_APT_SOURCES` names (a private mirror, a local repository;
/// a file only its owner, root or the caller, may write), else the
/// machine's `deb` sources mirrored.
fn source_lines() -> Result<Vec<String>, CreateError> {
    let Some(file) = std::env::var_os("HOTSPLICE_APT_SOURCES") else {
        return Ok(deb_src_lines());
    };
    let file = PathBuf::from(file);
    let bytes = hotsplice_store::read_trusted(&file, "apt sources file", 1 << 20)
        .map_err(|e| CreateError::Target(format!("HOTSPLICE_APT_SOURCES: {e}")))?;
    let lines: Vec<String> = String::from_utf8_lossy(&bytes)
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("deb-src "))
        .map(String::from)
        .collect();
    if lines.is_empty() {
        return Err(CreateError::Target(format!(
            "HOTSPLICE_APT_SOURCES {}: no `deb-src` line; write one-line sources such as \
             `deb-src http://deb.debian.org/debian bookworm main`",
            file.display()
        )));
    }
    Ok(lines)
}

/// `deb-src` lines for the machine's `deb` sources (one-line and deb822).
fn deb_src_lines() -> Vec<String> {
    let mut out = Vec::new();
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(d) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = d.flatten().map(|e| e.path()).collect();
        more.sort();
        files.extend(more);
    }
    for f in files {
        let Ok(text) = std::fs::read_to_string(&f) else {
            continue;
        };
        let deb822 = f.extension().is_some_and(|e| e == "sources");
        if deb822 || f.extension().is_some_and(|e| e == "list") {
            out.extend(deb_src_of(&text, deb822));
        }
    }
    out.sort();
    out.dedup();
    out
}

/// `deb-src` lines for the `deb` sources of one sources file: deb822
/// stanzas (`.sources`) or one-line entries (`.list`).
fn deb_src_of(text: &str, deb822: bool) -> Vec<String> {
    let mut out = Vec::new();
    if !deb822 {
        for l in text.lines() {
            if let Some(rest) = l.trim().strip_prefix("deb ") {
                out.push(format!("deb-src {}", rest.trim()));
            }
        }
        return out;
    }
    for stanza in text.split("\n\n") {
        let field = |k: &str| {
            stanza
                .lines()
                .find_map(|l| l.strip_prefix(k).and_then(|r| r.strip_prefix(':')))
                .map(|v| v.trim().to_string())
        };
        let (Some(types), Some(uris), Some(suites)) =
            (field("Types"), field("URIs"), field("Suites"))
        else {
            continue;
        };
        if !types.split_whitespace().any(|t| t == "deb") {
            continue;
        }
        let comps = field("Components").unwrap_or_default();
        for u in uris.split_whitespace() {
            for s in suites.split_whitespace() {
                out.push(format!("deb-src {u} {s} {comps}"));
            }
        }
    }
    out
}

/// The build that makes the installed files: for a few packages the one
/// flavour that does (OpenSSL's `build_shared`), else `debian/rules
/// build-arch`; always with Debian's flags and date.
pub fn default_build(name: &str) -> String {
    let flavour = match (name, default_profiles(name)) {
        ("openssl", _) => "{ [ -d build_shared ] || debian/rules override_dh_auto_configure; } && ${MAKE:-make} -C build_shared -j\"$(nproc)\" build_sw".to_string(),
        ("glibc", Some(p)) => format!("DEB_BUILD_PROFILES='{p}' debian/rules build_libc"),
        _ => "debian/rules build-arch".to_string(),
    };
    format!(
        "set -e; export SOURCE_DATE_EPOCH=\"$(dpkg-parsechangelog -STimestamp)\"; \
         export DEB_BUILD_MAINT_OPTIONS=\"$(make -s -f debian/rules --eval 'hotsplice-print: ; @echo $$DEB_BUILD_MAINT_OPTIONS' hotsplice-print)\"; \
         export DEB_BUILD_OPTIONS=\"nocheck parallel=$(nproc)\"; \
         eval \"$(dpkg-buildflags --export=sh)\"; {flavour}"
    )
}

/// The build profiles the default build of `name` uses: glibc's libc pass
/// is built without its 32-bit and x32 flavours (`nobiarch`), which need
/// `g++-12-multilib`. dpkg-checkbuilddeps is asked with the same profiles.
fn default_profiles(name: &str) -> Option<&'static str> {
    match name {
        "glibc" => Some("nobiarch"),
        _ => None,
    }
}

/// Prepares (or finds prepared) the pre-fix tree of `pkg`.
pub fn prepare(
    pkg: &SourcePackage,
    cache: &Path,
    build: Option<&str>,
    scratch: &Scratch,
    stop: fn() -> bool,
) -> Result<PreparedTree, CreateError> {
    let dir = cache
        .join("user")
        .join(format!("{}_{}", pkg.name, pkg.file_version()));
    std::fs::create_dir_all(&dir).map_err(io(format!("cache {}", dir.display())))?;
    let root = std::env::var_os("HOTSPLICE_BUILD_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(BUILD_ROOT));
    let tree = root.join(format!("{}-{}", pkg.name, pkg.upstream()));
    std::fs::create_dir_all(&root).map_err(io(format!("{}", root.display())))?;
    let lock = tree_lock(&tree, stop)?;
    let given_build = build;
    let build = build
        .map(str::to_string)
        .unwrap_or_else(|| default_build(&pkg.name));
    let meta = dir.join("prepared.json");
    let installed = installed_files(&pkg.name);
    if let Some(p) = std::fs::read(&meta)
        .ok()
        .and_then(|b| serde_json::from_slice::<Prepared>(&b).ok())
    {
        if p.tree == tree && p.build == build && tree.is_dir() {
            let log = wrapper::read_log(&p.records)
                .map_err(io("reading the prepared build's records"))?;
            if !log.is_empty() {
                return Ok(PreparedTree {
                    tree,
                    log,
                    installed,
                    lock,
                });
            }
        }
    }

    let dl = dir.join("source");
    std::fs::create_dir_all(&dl).map_err(io(format!("{}", dl.display())))?;
    let dsc = dl.join(format!(
        "{}_{}.dsc",
        pkg.name,
        pkg.version
            .split_once(':')
            .map_or(pkg.version.as_str(), |(_, v)| v)
    ));
    if !dsc.is_file() {
        let apt_dir = cache.join("apt");
        let opts = apt_options(&apt_dir)?;
        run(
            Command::new("apt-get").args(&opts).args(["-qq", "update"]),
            "apt-get update (deb-src lists in the cache)",
        )?;
        run(
            Command::new("apt-get")
                .args(&opts)
                .args(["-qq", "source", "--download-only"])
                .arg(format!("{}={}", pkg.name, pkg.version))
                .current_dir(&dl),
            &format!("apt-get source {}={}", pkg.name, pkg.version),
        )?;
    }
    // A tree there from before is ours only if it says so.
    let marker = tree.join(".hotsplice-prepared");
    forget(&meta)?;
    if tree.exists() {
        if !marker.exists() {
            return Err(CreateError::Target(format!(
                "{} exists and was not made by hotsplice; move it away (the build must happen at exactly this path)",
                tree.display()
            )));
        }
        std::fs::remove_dir_all(&tree).map_err(io(format!("removing {}", tree.display())))?;
    }
    run(
        Command::new("dpkg-source").arg("-x").arg(&dsc).arg(&tree),
        &format!("dpkg-source -x {}", dsc.display()),
    )?;
    std::fs::write(
        &marker,
        "extracted and built by hotsplice create --source-package\n",
    )
    .map_err(io(format!("{}", marker.display())))?;
    let mut check = Command::new("dpkg-checkbuilddeps");
    check.current_dir(&tree);
    if let (Some(p), None) = (default_profiles(&pkg.name), given_build) {
        check.arg(format!("-P{p}"));
    }
    let unmet = check
        .output()
        .map_err(io("running dpkg-checkbuilddeps (install dpkg-dev)"))?;
    if !unmet.status.success() {
        return Err(CreateError::Target(format!(
            "{} cannot be built here: {}; install them (e.g. apt-get build-dep {}, with deb-src enabled)",
            pkg.name,
            String::from_utf8_lossy(&unmet.stderr).trim(),
            pkg.name
        )));
    }
    let log = scratch.build_in(&tree, &build)?;
    let records = dir.join("pre-fix.records");
    let mut text = String::new();
    for r in &log {
        text.push_str(&serde_json::to_string(r).expect("records serialize"));
        text.push('\n');
    }
    std::fs::write(&records, text).map_err(io(format!("{}", records.display())))?;
    let p = Prepared {
        tree: tree.clone(),
        build,
        records,
    };
    write_record(&meta, &serde_json::to_vec_pretty(&p).expect("serializes"))?;
    Ok(PreparedTree {
        tree,
        log,
        installed,
        lock,
    })
}

/// What `create --prepared DIR` keeps in DIR: where the tree came from, how
/// it was built, what the build did.
#[derive(Debug, Serialize, Deserialize)]
struct PreparedHere {
    src: PathBuf,
    build: String,
    records: Vec<Record>,
}

/// The name of that file in DIR.
pub const PREPARED_FILE: &str = ".hotsplice-prepared.json";

/// `create --prepared DIR` for any source tree: `src` copied to `dir` (a
/// fixed path: the one the installed files were built at, so that paths
/// compiled into them are the same) and built there once; later calls
/// with the same `src` and build command reuse it.
pub fn prepare_tree(
    src: &Path,
    dir: &Path,
    build: &str,
    scratch: &Scratch,
    stop: fn() -> bool,
) -> Result<(PathBuf, Vec<Record>, hotsplice_store::FileLock), CreateError> {
    let dir = &std::path::absolute(dir).map_err(io(format!("{}", dir.display())))?;
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent).map_err(io(format!("{}", parent.display())))?;
    }
    let lock = tree_lock(dir, stop)?;
    let meta = dir.join(PREPARED_FILE);
    if let Some(p) = std::fs::read(&meta)
        .ok()
        .and_then(|b| serde_json::from_slice::<PreparedHere>(&b).ok())
    {
        if p.src == src && p.build == build && !p.records.is_empty() {
            return Ok((dir.to_path_buf(), p.records, lock));
        }
    }
    if dir.exists() {
        if !meta.exists() {
            return Err(CreateError::Target(format!(
                "{} exists and was not prepared by hotsplice; name a new directory (or one an earlier create --prepared made)",
                dir.display()
            )));
        }
        forget(&meta)?;
        std::fs::remove_dir_all(dir).map_err(io(format!("removing {}", dir.display())))?;
    }
    let records = scratch.build_pre(src, dir, build)?;
    let p = PreparedHere {
        src: src.to_path_buf(),
        build: build.to_string(),
        records,
    };
    write_record(&meta, &serde_json::to_vec(&p).expect("serializes"))?;
    Ok((dir.to_path_buf(), p.records, lock))
}

/// ELF files of the installed binary packages built from source `name`.
fn installed_files(name: &str) -> Vec<PathBuf> {
    let Ok(out) = Command::new("dpkg-query")
        .args([
            "-W",
            "-f",
            "${binary:Package} ${source:Package} ${db:Status-Status}\\n",
        ])
        .output()
    else {
        return Vec::new();
    };
    let mut files = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() != 3 || f[1] != name || f[2] != "installed" {
            continue;
        }
        let Ok(list) = Command::new("dpkg").arg("-L").arg(f[0]).output() else {
            continue;
        };
        for p in String::from_utf8_lossy(&list.stdout).lines() {
            let p = PathBuf::from(p);
            let elf = std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_file())
                && wrapper::is_object_file(&p);
            if elf {
                files.push(p);
            }
        }
    }
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glibc_builds_its_libc_pass_without_biarch() {
        // The same string as before the profiles had a name: a tree prepared
        // by an earlier version stays valid.
        assert!(default_build("glibc")
            .ends_with("DEB_BUILD_PROFILES='nobiarch' debian/rules build_libc"));
        assert_eq!(default_profiles("glibc"), Some("nobiarch"));
        assert_eq!(default_profiles("openssl"), None);
    }

    #[test]
    fn source_package_specs() {
        let p = SourcePackage::parse("openssl=3.0.20-1~deb12u2").unwrap();
        assert_eq!((p.name.as_str(), p.upstream()), ("openssl", "3.0.20"));
        let g = SourcePackage::parse("glibc=2.36-9+deb12u14").unwrap();
        assert_eq!(g.upstream(), "2.36");
        assert_eq!(SourcePackage::parse("x=1:2.0-3").unwrap().upstream(), "2.0");
        for bad in ["openssl", "=1", "a=", "a/b=1", "a=1 2", "-o=1"] {
            assert!(SourcePackage::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn deb_src_lines_mirror_the_deb_sources() {
        let deb822 = "Types: deb\n# comment\nURIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\nComponents: main\nSigned-By: /k.gpg\n\nTypes: deb-src\nURIs: http://x\nSuites: y\nComponents: main\n";
        assert_eq!(
            deb_src_of(deb822, true),
            vec![
                "deb-src http://deb.debian.org/debian bookworm main",
                "deb-src http://deb.debian.org/debian bookworm-updates main"
            ]
        );
        let list = "deb http://a/debian bookworm main contrib\n# deb http://b x y\ndeb-src http://c z main\n";
        assert_eq!(
            deb_src_of(list, false),
            vec!["deb-src http://a/debian bookworm main contrib"]
        );
    }
}
