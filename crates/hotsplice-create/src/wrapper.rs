//! The build wrapper. `hotsplice create` puts links named like the C
//! compiler (`cc`, `gcc`, ...), the archiver (`ar`), the linker (`ld`) and
//! `objcopy` to the hotsplice binary first on `PATH`; when invoked under
//! such a name with `HOTSPLICE_WRAP_LOG` set, the binary records what was
//! compiled, linked, archived or copied, and runs the real tool with the
//! arguments unchanged, so the build makes exactly the files it makes
//! without hotsplice (and the same GNU build-id). The comparison compiles
//! the objects that changed once more with `-ffunction-sections
//! -fdata-sections` (see [`recompile`]). A one-step `cc -o prog main.c` is
//! also compiled to a side object, since the comparison needs objects.
//!
//! Inputs are known by their contents (an ELF or `ar` header), not by their
//! names: glibc links `.os` files, libtool `.lo`/`.la` neighbours.

use serde::{Deserialize, Serialize};
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Names the wrapper answers to as the compiler driver.
pub const CC_NAMES: &[&str] = &[
    "cc",
    "gcc",
    "c99",
    "x86_64-linux-gnu-gcc",
    "gcc-12",
    "x86_64-linux-gnu-gcc-12",
];
/// Names it answers to as the archiver.
pub const AR_NAMES: &[&str] = &["ar", "x86_64-linux-gnu-ar", "gcc-ar", "gcc-ar-12"];
/// Names it answers to as the linker (a link the compiler driver runs is
/// recorded by the driver, not again here).
pub const LD_NAMES: &[&str] = &[
    "ld",
    "ld.bfd",
    "x86_64-linux-gnu-ld",
    "x86_64-linux-gnu-ld.bfd",
];
/// Names it answers to as `objcopy`.
pub const OBJCOPY_NAMES: &[&str] = &["objcopy", "x86_64-linux-gnu-objcopy"];
/// Every name the wrapper answers to.
pub const WRAPPED_NAMES: &[&[&str]] = &[CC_NAMES, AR_NAMES, LD_NAMES, OBJCOPY_NAMES];
pub const ENV_LOG: &str = "HOTSPLICE_WRAP_LOG";
/// Set for everything the compiler driver runs, so that its own `ld`
/// (through collect2) is not recorded a second time.
pub const ENV_NESTED: &str = "HOTSPLICE_WRAP_NESTED";
pub const ENV_ORIG_PATH: &str = "HOTSPLICE_ORIG_PATH";
pub const ENV_TREE: &str = "HOTSPLICE_TREE_ROOT";
/// Flags added when a changed object is compiled again for the comparison
/// (each function and data object in a section of its own).
pub const SECTION_FLAGS: &[&str] = &["-ffunction-sections", "-fdata-sections"];
/// Directory (inside the tree) for side objects of one-step builds.
pub const SIDE_DIR: &str = ".hotsplice-side";

/// One line of the wrapper log.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Record {
    Compile {
        source: PathBuf,
        object: PathBuf,
        /// How to run this compile again: directory, compiler, arguments.
        #[serde(default)]
        cwd: PathBuf,
        #[serde(default)]
        compiler: PathBuf,
        #[serde(default)]
        argv: Vec<String>,
    },
    Link {
        output: PathBuf,
        inputs: Vec<PathBuf>,
    },
    /// `ar`: members added to (or replaced in) an archive; the calls for one
    /// archive add up. Thin archives (`ar T`) the same.
    Archive {
        output: PathBuf,
        members: Vec<PathBuf>,
    },
    /// `objcopy IN OUT`: `output` is `input` with symbols or sections edited.
    Copy { input: PathBuf, output: PathBuf },
}

impl Record {
    /// The same record for a copy of the tree at `from` placed at `to`: paths
    /// under `from`, also inside arguments (`-I/from/include`), moved.
    pub fn rebased(&self, from: &Path, to: &Path) -> Record {
        let f = from.to_string_lossy().into_owned();
        let t = to.to_string_lossy().into_owned();
        let path = |p: &Path| match p.strip_prefix(from) {
            Ok(rest) => to.join(rest),
            Err(_) => p.to_path_buf(),
        };
        match self {
            Record::Compile {
                source,
                object,
                cwd,
                compiler,
                argv,
            } => Record::Compile {
                source: path(source),
                object: path(object),
                cwd: path(cwd),
                compiler: compiler.clone(),
                argv: argv.iter().map(|a| a.replace(&f, &t)).collect(),
            },
            other => other.clone(),
        }
    }
}

/// Whether `path` is an ELF file or an `ar` archive (regular or thin), by
/// its first bytes.
pub fn is_object_file(path: &Path) -> bool {
    let mut magic = [0u8; 8];
    let Ok(mut f) = std::fs::File::open(path) else {
        return false;
    };
    let Ok(n) = std::io::Read::read(&mut f, &mut magic) else {
        return false;
    };
    let m = &magic[..n];
    m.starts_with(b"\x7fELF") || m == b"!<arch>\n" || m == b"!<thin>\n"
}

/// Whether this process was started as the compiler wrapper.
pub fn invoked_as_wrapper(argv0: &str) -> bool {
    let name = Path::new(argv0)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("");
    WRAPPED_NAMES.iter().any(|n| n.contains(&name)) && std::env::var_os(ENV_LOG).is_some()
}

const VALUE_OPTS: &[&str] = &[
    "-o",
    "-I",
    "-D",
    "-U",
    "-include",
    "-imacros",
    "-isystem",
    "-idirafter",
    "-iquote",
    "-iprefix",
    "-x",
    "-MF",
    "-MT",
    "-MQ",
    "-L",
    "-l",
    "-Xlinker",
    "-Xassembler",
    "-Xpreprocessor",
    "-T",
    "-u",
    "-z",
    "-e",
    "--param",
    "-aux-info",
    "-dumpdir",
    "-dumpbase",
];
const SOURCE_EXT: &[&str] = &["c", "i", "cc", "cpp", "cxx", "C", "s", "S"];
const LINK_ONLY_FLAGS: &[&str] = &["-shared", "-static", "-pie", "-no-pie", "-rdynamic", "-s"];

fn ext(p: &str) -> &str {
    Path::new(p)
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
}

/// `-lNAME` as the linker finds it in the `-L` directories (shared before
/// static unless linking statically), if it does.
fn find_library(cwd: &Path, dirs: &[String], name: &str, static_only: bool) -> Option<PathBuf> {
    let names = if let Some(exact) = name.strip_prefix(':') {
        vec![exact.to_string()]
    } else if static_only {
        vec![format!("lib{name}.a")]
    } else {
        vec![format!("lib{name}.so"), format!("lib{name}.a")]
    };
    dirs.iter()
        .flat_map(|d| names.iter().map(move |n| cwd.join(d).join(n)))
        .find(|p| is_object_file(p))
}

/// Run as the wrapper: record, then exec the real tool unchanged.
pub fn wrapper_main(argv0: &str, args: Vec<String>) -> ! {
    let name = Path::new(argv0)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("cc")
        .to_string();
    let real = find_real(&name).unwrap_or_else(|| {
        eprintln!("hotsplice wrapper: cannot find the real `{name}` on the original PATH");
        std::process::exit(127)
    });
    let cwd = std::env::current_dir().unwrap_or_default();
    let nested = std::env::var_os(ENV_NESTED).is_some();
    let records = if nested {
        Vec::new()
    } else if AR_NAMES.contains(&name.as_str()) {
        ar_records(&cwd, &args)
    } else if LD_NAMES.contains(&name.as_str()) {
        ld_records(&cwd, &args)
    } else if OBJCOPY_NAMES.contains(&name.as_str()) {
        objcopy_records(&cwd, &args)
    } else {
        cc_records(&cwd, &real, &args)
    };
    write_records(&records);
    let err = Command::new(&real).args(&args).env(ENV_NESTED, "1").exec();
    eprintln!("hotsplice wrapper: cannot run {}: {err}", real.display());
    std::process::exit(127)
}

fn write_records(records: &[Record]) {
    if records.is_empty() {
        return;
    }
    let Some(log) = std::env::var_os(ENV_LOG) else {
        return;
    };
    let mut text = String::new();
    for r in records {
        text.push_str(&serde_json::to_string(r).unwrap());
        text.push('\n');
    }
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .and_then(|mut f| f.write_all(text.as_bytes()));
    if let Err(e) = written {
        eprintln!("hotsplice wrapper: cannot write the build log: {e}");
        std::process::exit(1);
    }
}

/// `ar OP[MODS] [RELPOS] [COUNT] ARCHIVE MEMBER...`: members added by the
/// `r` and `q` operations.
fn ar_records(cwd: &Path, args: &[String]) -> Vec<Record> {
    let mut i = 0;
    let mut op = String::new();
    while i < args.len() {
        let a = &args[i];
        if a == "--plugin" || a == "--output" {
            i += 2;
        } else if a.starts_with("--") || a.starts_with('@') {
            i += 1;
        } else if op.is_empty() || (a.starts_with('-') && a.len() > 1) {
            op.push_str(a.trim_start_matches('-'));
            i += 1;
        } else {
            break;
        }
    }
    let (key, mods): (Vec<char>, Vec<char>) = op.chars().partition(|c| "dmpqrstx".contains(*c));
    if !key.iter().any(|c| matches!(c, 'r' | 'q')) {
        return Vec::new();
    }
    // Modifiers that take an argument before the archive.
    i += mods
        .iter()
        .filter(|c| matches!(c, 'a' | 'b' | 'i' | 'N'))
        .count();
    let Some(archive) = args.get(i) else {
        return Vec::new();
    };
    let members = args[i + 1..]
        .iter()
        .map(|m| cwd.join(m))
        .filter(|p| is_object_file(p))
        .collect();
    vec![Record::Archive {
        output: cwd.join(archive),
        members,
    }]
}

/// `ld [-r] -o OUT INPUT...` run by the build itself (`ld -r` to combine
/// objects, say).
fn ld_records(cwd: &Path, args: &[String]) -> Vec<Record> {
    let mut output = None;
    let mut inputs = Vec::new();
    let mut lib_dirs = Vec::new();
    let mut libs = Vec::new();
    let mut static_only = false;
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        match a.as_str() {
            "-o" | "--output" => {
                output = args.get(i + 1).cloned();
                i += 2;
                continue;
            }
            "-L" => lib_dirs.extend(args.get(i + 1).cloned()),
            "-l" => libs.extend(args.get(i + 1).map(|l| (l.clone(), static_only))),
            "-static" | "-Bstatic" | "-dn" | "-non_shared" => static_only = true,
            "-Bdynamic" | "-dy" | "-call_shared" => static_only = false,
            _ => {}
        }
        if let Some(o) = a.strip_prefix("--output=") {
            output = Some(o.to_string());
        } else if let Some(o) = a.strip_prefix("-o").filter(|o| !o.is_empty()) {
            output = Some(o.to_string());
        } else if let Some(d) = a.strip_prefix("-L").filter(|d| !d.is_empty()) {
            lib_dirs.push(d.to_string());
        } else if let Some(l) = a.strip_prefix("-l").filter(|l| !l.is_empty()) {
            libs.push((l.to_string(), static_only));
        } else if !a.starts_with('-') && is_object_file(&cwd.join(a)) {
            inputs.push(cwd.join(a));
        }
        i += 1;
    }
    for (l, st) in libs {
        inputs.extend(find_library(cwd, &lib_dirs, &l, st));
    }
    let output = cwd.join(output.unwrap_or_else(|| "a.out".into()));
    inputs.retain(|p| *p != output);
    vec![Record::Link { output, inputs }]
}

/// objcopy's options that take their value as the next argument.
const OBJCOPY_VALUE_OPTS: &[&str] = &[
    "-I",
    "-O",
    "-B",
    "-F",
    "-j",
    "-R",
    "-K",
    "-N",
    "-G",
    "-L",
    "-W",
    "-b",
    "-i",
    "--input-target",
    "--output-target",
    "--target",
    "--binary-architecture",
    "--only-section",
    "--remove-section",
    "--keep-symbol",
    "--strip-symbol",
    "--keep-global-symbol",
    "--localize-symbol",
    "--weaken-symbol",
    "--add-section",
    "--redefine-sym",
    "--redefine-syms",
    "--rename-section",
    "--set-section-flags",
    "--add-symbol",
    "--keep-symbols",
    "--strip-symbols",
    "--localize-symbols",
    "--globalize-symbol",
    "--globalize-symbols",
    "--keep-global-symbols",
    "--weaken-symbols",
    "--add-gnu-debuglink",
    "--update-section",
    "--dump-section",
    "--set-section-alignment",
    "--remove-relocations",
    "--interleave",
    "--byte",
    "--interleave-width",
    "--gap-fill",
    "--pad-to",
    "--set-start",
    "--change-start",
    "--adjust-start",
    "--change-addresses",
    "--adjust-vma",
    "--change-section-address",
    "--adjust-section-vma",
    "--change-section-lma",
    "--change-section-vma",
    "--prefix-symbols",
    "--prefix-sections",
    "--prefix-alloc-sections",
    "--heap",
    "--stack",
    "--subsystem",
    "--image-base",
    "--file-alignment",
    "--section-alignment",
    "--compress-debug-sections",
    "--elf-stt-common",
    "--strip-unneeded-symbol",
    "--strip-unneeded-symbols",
    "--keep-section",
];

/// `objcopy [OPTION]... IN [OUT]`: OUT is IN edited; in place records nothing.
fn objcopy_records(cwd: &Path, args: &[String]) -> Vec<Record> {
    let mut positional = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        if OBJCOPY_VALUE_OPTS.contains(&a.as_str()) {
            i += 2;
            continue;
        }
        if !a.starts_with('-') {
            positional.push(a.clone());
        }
        i += 1;
    }
    match positional.as_slice() {
        [input, output] if is_object_file(&cwd.join(input)) => vec![Record::Copy {
            input: cwd.join(input),
            output: cwd.join(output),
        }],
        _ => Vec::new(),
    }
}

/// The compiler driver: compiles (`-c`) and links.
fn cc_records(cwd: &Path, real: &Path, args: &[String]) -> Vec<Record> {
    let mut sources = Vec::new();
    let mut objects = Vec::new();
    let mut lib_dirs = Vec::new();
    let mut libs = Vec::new();
    let mut static_only = false;
    let mut output: Option<String> = None;
    let mut compile_only = false;
    let mut no_output = false;
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        if VALUE_OPTS.contains(&a.as_str()) {
            let v = args.get(i + 1).cloned();
            match a.as_str() {
                "-o" => output = v,
                "-L" => lib_dirs.extend(v),
                "-l" => libs.extend(v.map(|l| (l, static_only))),
                _ => {}
            }
            i += 2;
            continue;
        }
        match a.as_str() {
            "-c" => compile_only = true,
            "-E" | "-S" | "-M" | "-MM" | "-v" | "--version" | "-dumpversion" | "-dumpmachine" => {
                no_output = true
            }
            "-static" | "-Wl,-Bstatic" => static_only = true,
            "-Wl,-Bdynamic" => static_only = false,
            _ if a.starts_with("-L") => lib_dirs.push(a[2..].to_string()),
            _ if a.starts_with("-l") => libs.push((a[2..].to_string(), static_only)),
            _ if a.starts_with('-') => {}
            _ if SOURCE_EXT.contains(&ext(a)) => sources.push(a.clone()),
            _ if is_object_file(&cwd.join(a)) => objects.push(a.clone()),
            _ => {}
        }
        i += 1;
    }

    let mut records = Vec::new();
    if no_output {
        return records;
    }
    if compile_only {
        for src in &sources {
            let object = match (&output, sources.len()) {
                (Some(o), 1) => cwd.join(o),
                _ => cwd.join(Path::new(src).with_extension("o").file_name().unwrap()),
            };
            // How to compile this source alone: the other sources left out.
            let argv = args
                .iter()
                .filter(|a| *a == src || !sources.contains(a))
                .cloned()
                .collect();
            records.push(Record::Compile {
                source: cwd.join(src),
                object,
                cwd: cwd.to_path_buf(),
                compiler: real.to_path_buf(),
                argv,
            });
        }
        return records;
    }
    let out = cwd.join(output.clone().unwrap_or_else(|| "a.out".into()));
    let mut inputs: Vec<PathBuf> = objects.iter().map(|o| cwd.join(o)).collect();
    for src in &sources {
        let side = side_object(cwd, src, &out);
        let argv = side_args(args, src, &side);
        if let Err(code) = compile_side(real, &argv, &side) {
            std::process::exit(code);
        }
        records.push(Record::Compile {
            source: cwd.join(src),
            object: side.clone(),
            cwd: cwd.to_path_buf(),
            compiler: real.to_path_buf(),
            argv,
        });
        inputs.push(side);
    }
    for (l, st) in libs {
        inputs.extend(find_library(cwd, &lib_dirs, &l, st));
    }
    inputs.retain(|p| *p != out);
    records.push(Record::Link {
        output: out,
        inputs,
    });
    records
}

fn find_real(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os(ENV_ORIG_PATH)?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn side_object(cwd: &Path, src: &str, out: &Path) -> PathBuf {
    use sha2::Digest;
    let root = std::env::var_os(ENV_TREE)
        .map(PathBuf::from)
        .unwrap_or_default();
    let rel = |p: &Path| {
        p.strip_prefix(&root)
            .unwrap_or(p)
            .to_string_lossy()
            .into_owned()
    };
    let mut h = sha2::Sha256::new();
    h.update(rel(cwd));
    h.update([0]);
    h.update(src);
    h.update([0]);
    h.update(rel(out));
    let name = format!("{}.o", hex::encode(&h.finalize()[..8]));
    root.join(SIDE_DIR).join(name)
}

/// Arguments that compile `src` alone to `side`, dropping link options.
fn side_args(args: &[String], src: &str, side: &Path) -> Vec<String> {
    let mut keep = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        let takes_value = VALUE_OPTS.contains(&a.as_str());
        let drop_with_value = matches!(
            a.as_str(),
            "-o" | "-L" | "-l" | "-Xlinker" | "-T" | "-u" | "-z" | "-e"
        );
        if drop_with_value {
            i += 2;
            continue;
        }
        if takes_value {
            keep.push(a.clone());
            if let Some(v) = args.get(i + 1) {
                keep.push(v.clone());
            }
            i += 2;
            continue;
        }
        let positional = !a.starts_with('-');
        let linkish = a.starts_with("-l")
            || a.starts_with("-L")
            || a.starts_with("-Wl,")
            || LINK_ONLY_FLAGS.contains(&a.as_str());
        if !positional && !linkish {
            keep.push(a.clone());
        }
        i += 1;
    }
    keep.extend([
        "-c".into(),
        src.into(),
        "-o".into(),
        side.to_string_lossy().into_owned(),
    ]);
    keep
}

fn compile_side(real: &Path, argv: &[String], side: &Path) -> Result<(), i32> {
    if let Some(dir) = side.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let status = Command::new(real).args(argv).status();
    match status {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(s.code().unwrap_or(1)),
        Err(_) => Err(127),
    }
}

/// Compile an object again with `extra` flags, to `out`: the same command
/// the build ran, with the output replaced.
pub fn recompile(record: &Record, extra: &[&str], out: &Path) -> bool {
    let Record::Compile {
        cwd,
        compiler,
        argv,
        ..
    } = record
    else {
        return false;
    };
    if argv.is_empty() || compiler.as_os_str().is_empty() {
        return false;
    }
    let mut args = Vec::with_capacity(argv.len() + extra.len() + 2);
    let mut i = 0;
    while i < argv.len() {
        if argv[i] == "-o" {
            i += 2;
            continue;
        }
        // Dependency files would be rewritten: leave them alone.
        if matches!(argv[i].as_str(), "-MF" | "-MT" | "-MQ") {
            i += 2;
            continue;
        }
        if matches!(argv[i].as_str(), "-MD" | "-MMD" | "-MP") {
            i += 1;
            continue;
        }
        args.push(argv[i].clone());
        i += 1;
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    Command::new(compiler)
        .args(&args)
        .arg("-o")
        .arg(out)
        .current_dir(cwd)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Read a wrapper log.
pub fn read_log(path: &Path) -> std::io::Result<Vec<Record>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e),
    };
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A temporary directory with `a.os` (an ELF file, by its header),
    /// `b.o` (not one) and an archive `c.a`.
    fn tree() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        std::fs::copy("/proc/self/exe", t.path().join("a.os")).unwrap();
        std::fs::write(t.path().join("b.o"), "text").unwrap();
        std::fs::write(t.path().join("c.a"), "!<thin>\nrest").unwrap();
        t
    }

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn ar_records_members_added_by_r_and_q() {
        let t = tree();
        let d = t.path();
        for cmd in [
            "rcs lib.a a.os b.o",
            "-rcT lib.a a.os",
            "crsD lib.a a.os",
            "qc lib.a a.os",
        ] {
            match ar_records(d, &args(cmd)).as_slice() {
                [Record::Archive { output, members }] => {
                    assert_eq!(*output, d.join("lib.a"), "{cmd}");
                    assert_eq!(*members, vec![d.join("a.os")], "{cmd}");
                }
                other => panic!("{cmd}: {other:?}"),
            }
        }
        // With a position argument before the archive.
        let r = ar_records(d, &args("rb c.os lib.a a.os"));
        assert!(matches!(&r[..], [Record::Archive { output, .. }] if *output == d.join("lib.a")));
        assert!(ar_records(d, &args("t lib.a")).is_empty());
        assert!(ar_records(d, &args("x lib.a a.os")).is_empty());
    }

    #[test]
    fn ld_and_objcopy_records_know_objects_by_header() {
        let t = tree();
        let d = t.path();
        match ld_records(d, &args("-r -o out.os a.os b.o c.a -L. -lmissing")).as_slice() {
            [Record::Link { output, inputs }] => {
                assert_eq!(*output, d.join("out.os"));
                assert_eq!(*inputs, vec![d.join("a.os"), d.join("c.a")]);
            }
            other => panic!("{other:?}"),
        }
        match objcopy_records(d, &args("--localize-hidden -N sym a.os copy.os")).as_slice() {
            [Record::Copy { input, output }] => {
                assert_eq!(*input, d.join("a.os"));
                assert_eq!(*output, d.join("copy.os"));
            }
            other => panic!("{other:?}"),
        }
        assert!(objcopy_records(d, &args("--strip-debug a.os")).is_empty());
    }

    #[test]
    fn compiles_keep_their_flags_and_links_find_objects_by_header() {
        let t = tree();
        let d = t.path();
        let cc = Path::new("/usr/bin/cc");
        match cc_records(d, cc, &args("-O2 -c x.c y.c")).as_slice() {
            [Record::Compile {
                argv: ax,
                object: ox,
                ..
            }, Record::Compile { argv: ay, .. }] => {
                assert_eq!(*ax, args("-O2 -c x.c"));
                assert_eq!(*ay, args("-O2 -c y.c"));
                assert_eq!(*ox, d.join("x.o"));
            }
            other => panic!("{other:?}"),
        }
        let r = cc_records(d, cc, &args("-shared -o lib.so a.os b.o -L. -lx"));
        assert!(
            matches!(&r[..], [Record::Link { inputs, .. }] if *inputs == vec![d.join("a.os")]),
            "{r:?}"
        );
    }
}
