//! The installed files a patch is for, with the symbols to find their
//! functions by. Distributions strip what they install; the symbols then
//! come, in this order, from the pre-fix build when it has the target's
//! GNU build-id (it *is* the target, with symbols), from a separate debug
//! file found by build-id or `.gnu_debuglink` (`/usr/lib/debug`, the
//! `-dbg`/`-dbgsym` packages), or from `.dynsym` (exported names only).

use crate::emit::{check_code, TargetElf};
use crate::objfile::ObjFile;
use crate::{io, CreateError};
use hotsplice_elf::{LinkedElf, SymKind};
use std::path::{Path, PathBuf};

/// Directories searched for debug files (colon-separated), instead of
/// `/usr/lib/debug`.
pub const ENV_DEBUG_DIRS: &str = "HOTSPLICE_DEBUG_DIRS";

/// Where a target's symbols came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SymbolSource {
    /// Its own `.symtab`.
    Own,
    /// The pre-fix build of it, same build-id.
    PreBuild(PathBuf),
    /// A separate debug file with the same build-id.
    DebugFile(PathBuf),
    /// Only `.dynsym`; the text says what else was looked for.
    Dynsym(String),
}

/// An installed target, read, with its symbols.
pub struct Loaded {
    pub path: PathBuf,
    pub name: String,
    pub data: Vec<u8>,
    pub elf: LinkedElf,
    pub build_id: Vec<u8>,
    pub symbols_from: SymbolSource,
}

fn debug_dirs() -> Vec<PathBuf> {
    match std::env::var_os(ENV_DEBUG_DIRS) {
        Some(v) => std::env::split_paths(&v).collect(),
        None => vec![PathBuf::from("/usr/lib/debug")],
    }
}

/// A file with `build_id` and a `.symtab`, parsed, if `path` is one.
fn symbols_file(path: &Path, build_id: &[u8]) -> Option<LinkedElf> {
    let data = std::fs::read(path).ok()?;
    let elf = LinkedElf::parse(&data).ok()?;
    (elf.build_id.as_deref() == Some(build_id) && elf.has_symtab).then_some(elf)
}

impl Loaded {
    /// Reads the target at `path`; `pre_output` is the pre-fix build's file
    /// for it.
    pub fn load(path: &Path, pre_output: &Path) -> Result<Loaded, CreateError> {
        let data = std::fs::read(path).map_err(io(format!("target {}", path.display())))?;
        let mut elf = LinkedElf::parse(&data)
            .map_err(|e| CreateError::Target(format!("target {}: {e}", path.display())))?;
        let Some(build_id) = elf.build_id.clone() else {
            return Err(CreateError::Target(format!(
                "{} has no GNU build-id note; relink it with -Wl,--build-id",
                path.display()
            )));
        };
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let symbols_from = if elf.has_symtab {
            SymbolSource::Own
        } else {
            let (from, syms) = stripped_symbols(path, &data, &elf, &build_id, pre_output)?;
            elf.symbols = syms;
            from
        };
        tracing::info!(target = %path.display(), symbols = ?symbols_from, "target read");
        Ok(Loaded {
            path: path.to_path_buf(),
            name,
            data,
            elf,
            build_id,
            symbols_from,
        })
    }

    pub fn target(&self) -> TargetElf<'_> {
        TargetElf {
            name: self.name.clone(),
            elf: &self.elf,
            data: &self.data,
            exported_only: match &self.symbols_from {
                SymbolSource::Dynsym(looked) => Some(looked.clone()),
                _ => None,
            },
        }
    }

    /// Checks, before the fix is built, that the functions of `obj` (the
    /// pre-fix build of an object the diff touches) are the target's code.
    pub fn check_objects(&self, obj: &ObjFile) -> Result<(), CreateError> {
        let target = self.target();
        let mut functions = 0;
        let mut found = 0;
        for (i, sec) in obj.sections.iter().enumerate() {
            if !sec.exec || sec.size == 0 {
                continue;
            }
            let Some(f) = obj.function_of(i) else {
                continue;
            };
            functions += 1;
            let name = &obj.symbols[f].name;
            let Ok(ts) = self.elf.lookup(name, obj.source.as_deref(), &self.name) else {
                continue;
            };
            if !matches!(ts.kind, SymKind::Func | SymKind::Ifunc) {
                continue;
            }
            found += 1;
            check_code(sec, &target, ts, name)?;
        }
        if let (SymbolSource::Dynsym(looked), true) = (&self.symbols_from, found == 0) {
            if functions > 0 {
                return Err(CreateError::Target(format!(
                    "the target {} is stripped and no symbols were found for the functions of {} ({looked}); install its debug symbols (the -dbg/-dbgsym package) or build exactly what was installed",
                    self.path.display(),
                    obj.source.as_deref().unwrap_or("the changed object")
                )));
            }
        }
        Ok(())
    }
}

/// The symbols of a stripped target, and where they came from.
fn stripped_symbols(
    path: &Path,
    data: &[u8],
    elf: &LinkedElf,
    build_id: &[u8],
    pre_output: &Path,
) -> Result<(SymbolSource, Vec<hotsplice_elf::Sym>), CreateError> {
    let hexid = hex::encode(build_id);
    if let Some(pre) = symbols_file(pre_output, build_id) {
        return Ok((
            SymbolSource::PreBuild(pre_output.to_path_buf()),
            pre.symbols,
        ));
    }
    let mut candidates = Vec::new();
    let dirs = debug_dirs();
    if hexid.len() > 2 {
        for d in &dirs {
            candidates.push(
                d.join(".build-id")
                    .join(&hexid[..2])
                    .join(format!("{}.debug", &hexid[2..])),
            );
        }
    }
    if let Some(link) = &elf.debuglink {
        let dir = path.parent().unwrap_or(Path::new("/"));
        let abs_dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
        candidates.push(dir.join(link));
        candidates.push(dir.join(".debug").join(link));
        for d in &dirs {
            candidates.push(
                d.join(abs_dir.strip_prefix("/").unwrap_or(&abs_dir))
                    .join(link),
            );
        }
    }
    for c in &candidates {
        if let Some(dbg) = symbols_file(c, build_id) {
            return Ok((SymbolSource::DebugFile(c.clone()), dbg.symbols));
        }
    }
    let pre_id = std::fs::read(pre_output)
        .ok()
        .and_then(|d| hotsplice_elf::build_id(&d))
        .map(hex::encode);
    let looked = format!(
        "the pre-fix build {} {}; no debug file with build-id {hexid} at {}; only .dynsym is left",
        pre_output.display(),
        match pre_id {
            Some(p) => format!("has build-id {p}, not the target's"),
            None => "was not built".into(),
        },
        candidates
            .iter()
            .map(|c| c.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let dynsyms = hotsplice_elf::dynamic_symbols(data)
        .map_err(|e| CreateError::Target(format!("target {}: {e}", path.display())))?;
    if !dynsyms
        .iter()
        .any(|s| matches!(s.kind, SymKind::Func | SymKind::Ifunc))
    {
        return Err(CreateError::Target(format!(
            "the target {} is stripped and no symbols were found ({looked}, and it exports no function)",
            path.display()
        )));
    }
    Ok((SymbolSource::Dynsym(looked), dynsyms))
}
