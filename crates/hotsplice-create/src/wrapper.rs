//! The compiler wrapper. `hotsplice create` puts links named like the C
//! compiler (`cc`, `gcc`, ...) to the hotsplice binary first on `PATH`; when
//! invoked under such a name with `HOTSPLICE_WRAP_LOG` set, the binary
//! records what was compiled and linked, adds `-ffunction-sections
//! -fdata-sections` (so each function and object gets its own section), and
//! runs the real compiler. A one-step `cc -o prog main.c` is also compiled to
//! a side object, since the comparison needs objects.

use serde::{Deserialize, Serialize};
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Names the wrapper answers to.
pub const WRAPPED_NAMES: &[&str] = &[
    "cc",
    "gcc",
    "c99",
    "x86_64-linux-gnu-gcc",
    "gcc-12",
    "x86_64-linux-gnu-gcc-12",
];
pub const ENV_LOG: &str = "HOTSPLICE_WRAP_LOG";
pub const ENV_ORIG_PATH: &str = "HOTSPLICE_ORIG_PATH";
pub const ENV_TREE: &str = "HOTSPLICE_TREE_ROOT";
/// Flags added to every compile.
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
}

/// Whether this process was started as the compiler wrapper.
pub fn invoked_as_wrapper(argv0: &str) -> bool {
    let name = Path::new(argv0)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("");
    WRAPPED_NAMES.contains(&name) && std::env::var_os(ENV_LOG).is_some()
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

fn is_object_input(p: &str) -> bool {
    matches!(ext(p), "o" | "a") || p.contains(".so")
}

/// Run as the wrapper: record, add flags, exec the real compiler.
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

    let mut sources = Vec::new();
    let mut objects = Vec::new();
    let mut output: Option<String> = None;
    let mut compile_only = false;
    let mut no_output = false;
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        if VALUE_OPTS.contains(&a.as_str()) {
            if a == "-o" {
                output = args.get(i + 1).cloned();
            }
            i += 2;
            continue;
        }
        match a.as_str() {
            "-c" => compile_only = true,
            "-E" | "-S" | "-M" | "-MM" | "-v" | "--version" | "-dumpversion" | "-dumpmachine" => {
                no_output = true
            }
            _ if a.starts_with('-') => {}
            _ if SOURCE_EXT.contains(&ext(a)) => sources.push(a.clone()),
            _ if is_object_input(a) => objects.push(a.clone()),
            _ => {}
        }
        i += 1;
    }

    let mut full_args = args.clone();
    let mut records = Vec::new();
    if !no_output && !sources.is_empty() {
        full_args.extend(SECTION_FLAGS.iter().map(|s| s.to_string()));
    }
    if !no_output && compile_only {
        for src in &sources {
            let object = match (&output, sources.len()) {
                (Some(o), 1) => cwd.join(o),
                _ => cwd.join(Path::new(src).with_extension("o").file_name().unwrap()),
            };
            records.push(Record::Compile {
                source: cwd.join(src),
                object,
                cwd: cwd.clone(),
                compiler: real.clone(),
                argv: if sources.len() == 1 {
                    full_args.clone()
                } else {
                    Vec::new()
                },
            });
        }
    } else if !no_output {
        let out = cwd.join(output.clone().unwrap_or_else(|| "a.out".into()));
        let mut inputs: Vec<PathBuf> = objects.iter().map(|o| cwd.join(o)).collect();
        for src in &sources {
            let side = side_object(&cwd, src, &out);
            let argv = side_args(&args, src, &side);
            if let Err(code) = compile_side(&real, &argv, &side) {
                std::process::exit(code);
            }
            records.push(Record::Compile {
                source: cwd.join(src),
                object: side.clone(),
                cwd: cwd.clone(),
                compiler: real.clone(),
                argv,
            });
            inputs.push(side);
        }
        records.push(Record::Link {
            output: out,
            inputs,
        });
    }
    if !records.is_empty() {
        if let Some(log) = std::env::var_os(ENV_LOG) {
            let mut text = String::new();
            for r in &records {
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
    }
    let err = Command::new(&real).args(&full_args).exec();
    eprintln!("hotsplice wrapper: cannot run {}: {err}", real.display());
    std::process::exit(127)
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
    keep.extend(SECTION_FLAGS.iter().map(|s| s.to_string()));
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
