//! `hotsplice create`: from a source tree and a unified diff, build the
//! tree before and after the fix through a compiler wrapper that gives every
//! function and data object its own section, compare the objects section by
//! section with relocations normalised, and emit one patch per changed ELF
//! target, checked against the target's code (Ksplice's pre/post method).
//!
//! ```no_run
//! use hotsplice_create::{create, CreateRequest};
//! let patches = create(&CreateRequest::new("src".into(), "fix.diff".into(), "out".into())).unwrap();
//! for p in patches { println!("{}", p.path.display()); }
//! ```

mod build;
pub mod diff;
pub mod ehframe;
pub mod emit;
mod graph;
pub mod kernel;
pub mod objfile;
pub mod package;
mod targets;
pub mod wrapper;

use emit::ObjPair;
use hotsplice_elf::LinkedElf;
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("the fix does not apply to {src}: {output}")]
    DiffDoesNotApply { src: String, output: String },
    #[error("building the {stage} tree with `{cmd}` failed (exit {code}); last lines:\n{tail}")]
    BuildFailed {
        stage: &'static str,
        cmd: String,
        code: i32,
        tail: String,
    },
    #[error("the build ran no compile through hotsplice's compiler wrapper; make the build call the compiler as `cc`/`gcc` via $PATH or $(CC)")]
    NoCompiles,
    #[error("{0}")]
    NothingToPatch(String),
    #[error("changing the initial value, size or layout of existing data `{symbol}` ({file}) cannot be done by a live patch; change code instead (e.g. initialise it at first use)")]
    ChangedData { symbol: String, file: String },
    #[error("`{symbol}` is used by the new code but {target} does not define it")]
    MissingSymbol { symbol: String, target: String },
    #[error("function `{function}` is {size} bytes long; a live patch needs at least {need} bytes to write its jump")]
    TooShort {
        function: String,
        size: u64,
        need: usize,
    },
    #[error("the source does not match {target}: function `{function}`: {detail}; build the patch from the exact source, flags and compiler the target was built with")]
    TargetMismatch {
        function: String,
        target: String,
        detail: String,
    },
    #[error("{0}")]
    Target(String),
    #[error("unsupported change: {0}")]
    Unsupported(String),
    #[error("stopped {0}")]
    Stopped(String),
}

/// Take the lock that keeps one `create` at a time in a prepared tree, for
/// the whole run (it is released when the lock drops). While another
/// `create` holds it, say so once (a warning) and wait; a termination
/// request (`stop()` true) ends the wait with [`CreateError::Stopped`].
pub(crate) fn lock_tree(
    path: &Path,
    what: &str,
    stop: fn() -> bool,
) -> Result<hotsplice_store::FileLock, CreateError> {
    let mut said = false;
    loop {
        match hotsplice_store::FileLock::try_acquire(path) {
            Ok(Some(lock)) => return Ok(lock),
            Ok(None) => {}
            Err(e) => return Err(CreateError::Target(e.to_string())),
        }
        if stop() {
            return Err(CreateError::Stopped(format!(
                "while waiting for {what}, which another hotsplice create holds ({}); nothing was built",
                path.display()
            )));
        }
        if !said {
            tracing::warn!(
                "waiting for {what}: another hotsplice create holds {}",
                path.display()
            );
            said = true;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// The default for the requests' `stop_requested`: never.
pub fn never() -> bool {
    false
}

/// The scratch directory of a build: `keep` if given (left in place), else
/// a temporary one, removed when the guard drops.
pub(crate) fn scratch_dir(
    keep: Option<&Path>,
    prefix: &str,
) -> Result<(PathBuf, Option<tempfile::TempDir>), CreateError> {
    if let Some(dir) = keep {
        std::fs::create_dir_all(dir).map_err(io(format!("scratch directory {}", dir.display())))?;
        return Ok((dir.to_path_buf(), None));
    }
    let tmp = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .map_err(io("scratch directory"))?;
    Ok((tmp.path().to_path_buf(), Some(tmp)))
}

/// The last `n` lines of a build's output, for error messages.
pub(crate) fn last_lines(text: &str, n: usize) -> String {
    let tail: Vec<&str> = text.lines().rev().take(n).collect();
    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
}

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> CreateError {
    let what = what.into();
    move |source| CreateError::Io { what, source }
}

/// What to build.
#[derive(Debug, Clone)]
pub struct CreateRequest {
    pub src: PathBuf,
    pub diff: PathBuf,
    pub out_dir: PathBuf,
    /// Build command, run by `sh -c` at the top of the tree.
    pub build: String,
    /// Installed objects the patch is for; empty: the ELF files built in `src`.
    pub targets: Vec<PathBuf>,
    pub description: Option<String>,
    /// Level among patches for the same target (higher replaces lower).
    pub level: u32,
    /// Build in this directory and leave the scratch trees there (for
    /// debugging); `None`: a temporary directory, removed at the end.
    pub keep_work: Option<PathBuf>,
    /// Build from this Debian source package instead of `src`.
    pub package: Option<PackageSpec>,
    /// Build the pre-fix tree here (the fixed path the installed files were
    /// built at) and keep it for further fixes of the same tree.
    pub prepared: Option<PathBuf>,
    /// Asked while waiting for another `create` to be done with a prepared
    /// tree: true ends the wait (e.g. on SIGTERM).
    pub stop_requested: fn() -> bool,
}

/// `create --source-package`: which package, the cache that keeps its
/// prepared tree, and the build command if not the default one.
#[derive(Debug, Clone)]
pub struct PackageSpec {
    pub package: package::SourcePackage,
    pub cache: PathBuf,
    pub build: Option<String>,
}

impl CreateRequest {
    pub fn new(src: PathBuf, diff: PathBuf, out_dir: PathBuf) -> Self {
        CreateRequest {
            src,
            diff,
            out_dir,
            build: "make".into(),
            targets: Vec::new(),
            description: None,
            level: 1,
            keep_work: None,
            package: None,
            prepared: None,
            stop_requested: never,
        }
    }
}

/// One patch file written.
#[derive(Debug, Clone, Serialize)]
pub struct CreatedPatch {
    pub path: PathBuf,
    pub id: String,
    pub target: String,
    pub target_path: PathBuf,
    pub build_id: String,
    pub functions: Vec<String>,
    pub new_symbols: Vec<String>,
}

/// Build the patches. See the crate docs.
pub fn create(req: &CreateRequest) -> Result<Vec<CreatedPatch>, CreateError> {
    let diff_bytes = std::fs::read(&req.diff).map_err(io(format!("fix {}", req.diff.display())))?;
    let (work_path, _guard) = scratch_dir(req.keep_work.as_deref(), "hotsplice-create.")?;
    let diff_abs = req
        .diff
        .canonicalize()
        .map_err(io(format!("fix {}", req.diff.display())))?;
    let scratch = build::Scratch::new(&work_path)?;
    // The tree before the fix, built: the source tree copied and built, or
    // a source package's tree, prepared once and kept.
    // The prepared tree's lock is held until the patches are written.
    let (src, pre_root, pre_log, installed, _tree_lock) = match &req.package {
        Some(p) => {
            let prepared = package::prepare(
                &p.package,
                &p.cache,
                p.build.as_deref(),
                &scratch,
                req.stop_requested,
            )?;
            let targets = if req.targets.is_empty() {
                prepared.installed
            } else {
                req.targets.clone()
            };
            (
                prepared.tree.clone(),
                prepared.tree,
                prepared.log,
                Some(targets),
                Some(prepared.lock),
            )
        }
        None => {
            let src = req
                .src
                .canonicalize()
                .map_err(io(format!("source tree {}", req.src.display())))?;
            let (pre_root, log, lock) = match &req.prepared {
                Some(dir) => {
                    let (root, log, lock) =
                        package::prepare_tree(&src, dir, &req.build, &scratch, req.stop_requested)?;
                    (root, log, Some(lock))
                }
                None => {
                    let pre_root = work_path.join("pre");
                    let log = scratch.build_pre(&src, &pre_root, &req.build)?;
                    (pre_root, log, None)
                }
            };
            (src, pre_root, log, None, lock)
        }
    };
    // A package's build makes more than it installs (tests, tools): its
    // outputs that match no target by build-id are left out, and said why
    // if nothing is left.
    let skipped = std::cell::RefCell::new(Vec::new());
    let installed = installed.map(|files| with_build_ids(&files));
    let pick = |output: &Path| -> Result<Option<PathBuf>, CreateError> {
        match installed.as_deref() {
            Some(files) => match pick_by_build_id(&pre_root.join(output), files) {
                Ok(t) => Ok(Some(t)),
                Err(e) => {
                    tracing::info!(output = %output.display(), "{e}");
                    skipped.borrow_mut().push(e.to_string());
                    Ok(None)
                }
            },
            None => pick_target(&src, output, &req.targets, &pre_root.join(output)).map(Some),
        }
    };
    let graph = graph::Graph::new(&pre_root, &pre_log);
    if graph.compiled.is_empty() {
        return Err(CreateError::NoCompiles);
    }
    let cmp_dir = work_path.join("cmp");
    std::fs::create_dir_all(&cmp_dir).map_err(io("scratch directory"))?;

    // Before building anything of the fix: the targets of the objects the
    // diff touches, their symbols, and the code of those objects' functions.
    let sources = diff_sources(&diff_bytes);
    // C files the diff changes that other compiled files include (glibc's
    // sysdeps wrappers, its strtod template): their includers are compiled
    // again too, instead of building the whole tree after the fix.
    let includers = graph.sources_including(&pre_root, &sources);
    let compiled_sources: Vec<PathBuf> = sources.iter().chain(&includers).cloned().collect();
    let touched: Vec<PathBuf> = graph.objects_of_sources(&compiled_sources);
    let mut loaded: HashMap<PathBuf, targets::Loaded> = HashMap::new();
    let mut pre_objs: HashMap<PathBuf, objfile::ObjFile> = HashMap::new();
    for output in graph.outputs_with(&touched) {
        let Some(target_path) = pick(&output)? else {
            continue;
        };
        let t = targets::Loaded::load(&target_path, &pre_root.join(&output))?;
        for obj in graph.objects_in(&output) {
            if !touched.contains(&obj) {
                continue;
            }
            if !pre_objs.contains_key(&obj) {
                let o = compare_build(&graph, &obj, &cmp_dir, "pre")?;
                pre_objs.insert(obj.clone(), o);
            }
            t.check_objects(&pre_objs[&obj])?;
        }
        loaded.insert(output, t);
    }
    if installed.is_some() && !touched.is_empty() && loaded.is_empty() {
        return Err(CreateError::Target(format!(
            "the fix changes no installed file: {}",
            best_reasons(skipped.borrow().clone())
        )));
    }

    // A fix of compiled sources only needs those compiled again, in a copy
    // of the built tree; anything else (headers, build files) a full build.
    let only_sources = !sources.is_empty()
        && sources
            .iter()
            .all(|s| graph.is_source(s) || (is_c_file(s) && includers_of(&graph, &pre_root, s)));
    if !only_sources && req.package.is_some() {
        // A Debian tree is built at its fixed path with its stamps: a copy
        // built again with `make` builds nothing (or fails).
        let other: Vec<String> = sources
            .iter()
            .filter(|s| {
                !(graph.is_source(s) || (is_c_file(s) && includers_of(&graph, &pre_root, s)))
            })
            .map(|s| s.display().to_string())
            .collect();
        return Err(CreateError::Unsupported(format!(
            "the fix changes {}: not a C file the prepared source package compiles or includes in one it compiles (a header or a build file?); a package's tree is compiled again only object by object, so this fix cannot be built from it",
            if other.is_empty() {
                "nothing".to_string()
            } else {
                other.join(", ")
            }
        )));
    }
    let (post_root, post_graph, candidates) = if only_sources {
        let post = scratch.copy_built(&pre_root, &diff_abs, &src)?;
        let g = graph.rebased(&pre_root, &post);
        (post, g, touched.clone())
    } else {
        let (post, log) = scratch.build_post(&src, &diff_abs, &req.build)?;
        let g = graph::Graph::new(&post, &log);
        (post, g, graph.compiled.keys().cloned().collect())
    };
    let mut changed: HashMap<PathBuf, ObjPair> = HashMap::new();
    for obj_rel in &candidates {
        let Some(source_rel) = graph.compiled.get(obj_rel) else {
            continue;
        };
        if !only_sources {
            // As built: objects that did not change are left alone.
            let pre_path = pre_root.join(obj_rel);
            let post_path = post_root.join(obj_rel);
            if !post_path.exists() {
                continue;
            }
            let pre = objfile::ObjFile::read(&pre_path).map_err(CreateError::Target)?;
            let post = objfile::ObjFile::read(&post_path).map_err(CreateError::Target)?;
            if diff::diff(&pre, &post).is_empty() {
                continue;
            }
        }
        let is_asm = matches!(
            source_rel.extension().and_then(|e| e.to_str()),
            Some("s" | "S")
        );
        if is_asm {
            return Err(CreateError::Unsupported(format!(
                "the fix changes assembly source {}",
                source_rel.display()
            )));
        }
        // Compiled again with a section per function and data object.
        let pre = match pre_objs.remove(obj_rel) {
            Some(o) => o,
            None => compare_build(&graph, obj_rel, &cmp_dir, "pre")?,
        };
        let post = compare_build(&post_graph, obj_rel, &cmp_dir, "post")?;
        let d = diff::diff(&pre, &post);
        if d.is_empty() {
            continue;
        }
        tracing::debug!(object = %obj_rel.display(), changed = d.changed_text.len(), "object changed");
        let (post, d) = match post_graph.records.get(obj_rel) {
            Some(record) => emit_build(record, &cmp_dir, obj_rel, post, d),
            None => (post, d),
        };
        changed.insert(obj_rel.clone(), ObjPair { pre, post, diff: d });
    }
    if changed.is_empty() {
        return Err(CreateError::NothingToPatch(
            "the fix changes no compiled code (comments, headers nobody includes, or build files only?)"
                .into(),
        ));
    }

    // Which linked outputs contain changed objects, and the file each is for.
    let mut plans: Vec<(PathBuf, Vec<PathBuf>)> = Vec::new();
    for output in &graph.finals {
        let objs: Vec<PathBuf> = graph
            .objects_in(output)
            .into_iter()
            .filter(|i| changed.contains_key(i))
            .collect();
        if !objs.is_empty() {
            plans.push((output.clone(), objs));
        }
    }
    if plans.is_empty() {
        return Err(CreateError::NothingToPatch(
            "the changed objects were not linked into any executable or library by the build"
                .into(),
        ));
    }
    std::fs::create_dir_all(&req.out_dir)
        .map_err(io(format!("output directory {}", req.out_dir.display())))?;
    let mut created = Vec::new();
    let mut pairs = changed;
    for (output, objs) in plans {
        let t = match loaded.remove(&output) {
            Some(t) => t,
            None => match pick(&output)? {
                Some(target_path) => targets::Loaded::load(&target_path, &pre_root.join(&output))?,
                None => continue,
            },
        };
        let build_id = t.build_id.clone();
        let target_path = t.path.clone();
        let target = t.target();
        let name = target.name.clone();
        let id = hotsplice_patch::PatchId::stable(&[&diff_bytes, &build_id, name.as_bytes()]);
        let description = req.description.clone().unwrap_or_else(|| {
            format!(
                "{} for {}",
                req.diff
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                name
            )
        });
        // Objects may be linked into several outputs: take them out and back.
        let taken: Vec<(PathBuf, ObjPair)> = objs
            .iter()
            .filter_map(|o| pairs.remove(o).map(|p| (o.clone(), p)))
            .collect();
        let (names, list): (Vec<PathBuf>, Vec<ObjPair>) = taken.into_iter().unzip();
        let result = emit::emit(&list, &target, id.clone(), description);
        // Back under their own names (not zipped with `objs`: an object of
        // `objs` that was not taken would shift every later one).
        for (o, p) in names.into_iter().zip(list) {
            pairs.insert(o, p);
        }
        let mut patch = result?;
        patch.meta.level = req.level;
        // The ID names the contents: two different patch files never share
        // one, and the same contents (the same diff built again for the same
        // target) keep it.
        let id = content_id(&patch);
        patch.meta.id = id.clone();
        let path = req.out_dir.join(format!("{name}-{id}.hsp"));
        std::fs::write(&path, patch.to_bytes())
            .map_err(io(format!("writing {}", path.display())))?;
        created.push(CreatedPatch {
            path,
            id: id.into(),
            target: name,
            target_path,
            build_id: hex::encode(build_id),
            functions: patch
                .meta
                .functions
                .iter()
                .map(|f| f.name.clone())
                .collect(),
            new_symbols: patch.meta.symbols.iter().map(|s| s.name.clone()).collect(),
        });
    }
    if created.is_empty() {
        return Err(CreateError::Target(format!(
            "the fix changes no installed file: {}",
            best_reasons(skipped.into_inner())
        )));
    }
    Ok(created)
}

/// A patch ID from everything the patch carries but its ID: the image, the
/// target, the functions, relocations and symbols, level and description.
pub fn content_id(patch: &hotsplice_patch::Patch) -> hotsplice_patch::PatchId {
    let mut meta = patch.meta.clone();
    meta.id = hotsplice_patch::PatchId::unchecked("");
    let json = serde_json::to_vec(&meta).expect("patch metadata serializes");
    hotsplice_patch::PatchId::stable(&[b"hotsplice-patch-id-v2", &json, &patch.image])
}

/// The code that goes into the patch is compiled once more with every access
/// to data of other objects made through the GOT
/// (`-mno-direct-extern-access`): in an executable the compiler would
/// otherwise read `stderr` and the like PC-relative, relying on a copy the
/// linker made, which the original may not have and a patch cannot add.
/// Sections keep their names, so the comparison's result carries over;
/// whenever it does not line up, the plain post-fix object is used.
fn emit_build(
    record: &wrapper::Record,
    out_dir: &Path,
    obj_rel: &Path,
    post: objfile::ObjFile,
    d: diff::ObjDiff,
) -> (objfile::ObjFile, diff::ObjDiff) {
    let out = out_dir.join(format!(
        "emit-{}.o",
        obj_rel.to_string_lossy().replace('/', "_")
    ));
    if let Some(dir) = out.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let mut flags = wrapper::SECTION_FLAGS.to_vec();
    flags.push("-mno-direct-extern-access");
    if !wrapper::recompile(record, &flags, &out) {
        return (post, d);
    }
    let Ok(emit) = objfile::ObjFile::read(&out) else {
        return (post, d);
    };
    match d.remap(&post, &emit) {
        Some(mapped) => (emit, mapped),
        None => (post, d),
    }
}

/// Object `obj` (relative to `root`) compiled again as the comparison needs
/// it: with `-ffunction-sections -fdata-sections`, beside the build's own.
fn compare_build(
    graph: &graph::Graph,
    obj: &Path,
    out_dir: &Path,
    stage: &str,
) -> Result<objfile::ObjFile, CreateError> {
    let out = out_dir.join(format!(
        "{stage}-{}.o",
        obj.to_string_lossy().replace('/', "_")
    ));
    let ok = graph
        .records
        .get(obj)
        .is_some_and(|r| wrapper::recompile(r, wrapper::SECTION_FLAGS, &out));
    if !ok {
        return Err(CreateError::Target(format!(
            "{}: compiling it again with {} (as the build compiled it) failed; the comparison needs a section per function",
            obj.display(),
            wrapper::SECTION_FLAGS.join(" ")
        )));
    }
    objfile::ObjFile::read(&out).map_err(CreateError::Target)
}

/// Whether `p` names a C source file.
fn is_c_file(p: &Path) -> bool {
    p.extension().is_some_and(|e| e == "c")
}

/// Whether some compiled source includes the C file `s`.
fn includers_of(graph: &graph::Graph, root: &Path, s: &Path) -> bool {
    !graph
        .sources_including(root, std::slice::from_ref(&s.to_path_buf()))
        .is_empty()
}

fn diff_sources(diff: &[u8]) -> Vec<PathBuf> {
    String::from_utf8_lossy(diff)
        .lines()
        .filter_map(|l| l.strip_prefix("+++ "))
        .map(|p| p.split('\t').next().unwrap_or("").trim())
        .filter(|p| *p != "/dev/null")
        .filter_map(|p| p.split_once('/').map(|(_, rest)| PathBuf::from(rest)))
        .collect()
}

/// The reasons outputs matched no target, those naming an installed file of
/// the same name first (they say the most), five at most.
fn best_reasons(mut why: Vec<String>) -> String {
    why.sort();
    why.dedup();
    if why.iter().any(|w| w.contains(" has ")) {
        why.retain(|w| w.contains(" has "));
    }
    why.truncate(5);
    why.join("; ")
}

/// Files with their GNU build-ids, read once.
fn with_build_ids(files: &[PathBuf]) -> Vec<(PathBuf, Option<Vec<u8>>)> {
    files
        .iter()
        .map(|f| {
            let id = std::fs::read(f)
                .ok()
                .and_then(|d| hotsplice_elf::build_id(&d));
            (f.clone(), id)
        })
        .collect()
}

/// Of `files`, the one with the GNU build-id of `built` (a source
/// package's build: it must reproduce the installed file exactly).
fn pick_by_build_id(
    built: &Path,
    files: &[(PathBuf, Option<Vec<u8>>)],
) -> Result<PathBuf, CreateError> {
    let want = std::fs::read(built)
        .ok()
        .and_then(|d| hotsplice_elf::build_id(&d));
    let name = built
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut seen = Vec::new();
    for (f, id) in files {
        let id = id.clone();
        if id.is_some() && id == want {
            return Ok(f.clone());
        }
        let f_name = f.file_name().map(|n| n.to_string_lossy().into_owned());
        if f_name.as_deref() == Some(name.as_str()) {
            seen.push(format!(
                "{} has {}",
                f.display(),
                id.map(hex::encode).unwrap_or_else(|| "no build-id".into())
            ));
        }
    }
    Err(CreateError::Target(format!(
        "no target has the build-id of {} as the package builds it ({}){}; install exactly that version, or pass --target with the files of its .deb",
        built.display(),
        want.map(hex::encode).unwrap_or_else(|| "none".into()),
        if seen.is_empty() {
            String::new()
        } else {
            format!(": {}", seen.join(", "))
        }
    )))
}

/// The installed file a built output corresponds to: the target with its
/// build-id, else the one named like it.
fn pick_target(
    src: &Path,
    output: &Path,
    targets: &[PathBuf],
    built: &Path,
) -> Result<PathBuf, CreateError> {
    if targets.len() > 1 {
        if let Ok(t) = pick_by_build_id(built, &with_build_ids(targets)) {
            return Ok(t);
        }
    }
    let out_name = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if targets.is_empty() {
        let built = src.join(output);
        if !built.is_file() {
            return Err(CreateError::Target(format!(
                "{} is not built in the source tree; build the tree first (it must hold the binaries that run) or pass --target",
                built.display()
            )));
        }
        return Ok(built);
    }
    for t in targets {
        let t_name = t
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if t_name == out_name {
            return Ok(t.clone());
        }
        let soname = std::fs::read(t)
            .ok()
            .and_then(|d| LinkedElf::parse(&d).ok())
            .and_then(|e| e.soname);
        if soname.as_deref() == Some(out_name.as_str())
            || t_name.starts_with(&format!("{out_name}."))
        {
            return Ok(t.clone());
        }
    }
    if targets.len() == 1 {
        return Ok(targets[0].clone());
    }
    Err(CreateError::Target(format!(
        "the fix changes {out_name}, but no --target names it; add --target PATH for it"
    )))
}

#[cfg(test)]
mod id_tests {
    use hotsplice_patch::{Patch, PatchMeta};

    #[test]
    fn patch_ids_follow_the_contents() {
        let p = Patch {
            meta: PatchMeta::example(),
            image: vec![0xc3; 16],
        };
        let mut q = p.clone();
        q.image[3] = 0x90;
        let mut r = p.clone();
        r.meta.id = hotsplice_patch::PatchId::unchecked("zzzz9999");
        assert_ne!(super::content_id(&p), super::content_id(&q));
        assert_eq!(super::content_id(&p), super::content_id(&r));
        assert!(hotsplice_patch::is_valid_id(&super::content_id(&p)));
    }
}
