//! `hotsplice create --kernel`: a livepatch module for the kernel's own
//! livepatch engine, from a kernel source tree and a fix. The changed
//! objects are built before and after the fix with function and data
//! sections in the source tree (prepared once with the target's
//! configuration), compared with the same object diff as userspace, and
//! the changed functions are linked into a module built against the
//! target's headers; references the module loader cannot resolve (local
//! and unexported symbols) become livepatch relocations.

mod emit;
mod klp;
mod symbols;
mod tree;

use crate::diff;
use crate::objfile::ObjFile;
use crate::{io, CreateError};
use hotsplice_patch::{Function, ObjectKind, Patch, PatchMeta, Target, PAGE};
use std::path::PathBuf;
use std::process::Command;

pub use symbols::KernelSymbols;

/// What to build a kernel patch from.
#[derive(Debug, Clone)]
pub struct KernelRequest {
    /// Kernel source tree of the running kernel's version.
    pub src: PathBuf,
    pub diff: PathBuf,
    /// The running kernel's configuration.
    pub config: PathBuf,
    /// The headers/build directory of the target kernel (for the module
    /// build and its `Module.symvers`).
    pub kdir: PathBuf,
    /// `System.map` or `/proc/kallsyms` of the target kernel.
    pub system_map: Option<PathBuf>,
    /// The target's modules (`/lib/modules/<release>`): positions of
    /// module symbols are read from their `.ko` files.
    pub modules: Option<PathBuf>,
    /// GNU build-id (hex) and release of the target kernel.
    pub build_id: String,
    pub release: String,
    /// Release reported once applied (default: `<release>.hs-<id>`).
    pub effective: Option<String>,
    pub description: Option<String>,
    pub out_dir: PathBuf,
    /// Build in this directory and leave the scratch files there (for
    /// debugging); `None`: a temporary directory, removed at the end.
    pub keep_work: Option<PathBuf>,
    /// Asked while waiting for another `create --kernel` in the same tree:
    /// true ends the wait (e.g. on SIGTERM).
    pub stop_requested: fn() -> bool,
}

/// What was written.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CreatedKernelPatch {
    pub path: PathBuf,
    pub module_path: PathBuf,
    pub id: String,
    pub module: String,
    pub functions: Vec<String>,
    /// Of `functions`, those without an ftrace entry call, redirected by a
    /// jump written at their entry with the machine stopped.
    pub direct: Vec<String>,
    /// `__init`/`__exit` functions left as they are: only a `__LINE__`
    /// they use moved.
    pub skipped: Vec<String>,
    /// The patched objects (`vmlinux` or a module's name), in order.
    pub objects: Vec<String>,
    pub livepatch_relocations: usize,
}

/// A kernel patch file around a built livepatch module.
pub fn kernel_patch(
    ko: &[u8],
    id: &str,
    description: &str,
    build_id: &str,
    release: &str,
    functions: Vec<String>,
) -> Patch {
    let size = (ko.len() as u64).max(1);
    Patch {
        // Taken as they are: `Patch::validate` checks them, as for any patch.
        meta: PatchMeta {
            id: hotsplice_patch::PatchId::unchecked(id),
            description: description.into(),
            level: 1,
            cves: hotsplice_patch::cves_in(description),
            tool: concat!("hotsplice ", env!("CARGO_PKG_VERSION")).into(),
            target: Target {
                name: format!("vmlinux {release}"),
                build_id: hotsplice_patch::BuildId::unchecked(build_id),
                kind: ObjectKind::Kernel,
            },
            code_size: size,
            data_offset: hotsplice_patch::round_up(size, PAGE),
            data_size: 0,
            functions: functions.into_iter().map(Function::kernel).collect(),
            relocations: vec![],
            symbols: vec![],
            eh_frame: None,
        },
        image: ko.to_vec(),
    }
}

fn c_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_ascii_graphic() || c == ' ' => out.push(c),
            _ => out.push('?'),
        }
    }
    out.push('"');
    out
}

/// Build the kernel patch.
pub fn create_kernel(req: &KernelRequest) -> Result<CreatedKernelPatch, CreateError> {
    let diff_text =
        std::fs::read_to_string(&req.diff).map_err(io(format!("fix {}", req.diff.display())))?;
    let diff_abs = req
        .diff
        .canonicalize()
        .map_err(io(format!("fix {}", req.diff.display())))?;
    let files = tree::changed_files(&diff_text);
    if files.is_empty() {
        return Err(CreateError::NothingToPatch("the diff names no file".into()));
    }
    for f in &files {
        match f.extension().and_then(|e| e.to_str()) {
            Some("c") => {}
            Some("S") | Some("s") => {
                return Err(CreateError::Unsupported(format!(
                    "the fix changes assembly file {}",
                    f.display()
                )))
            }
            _ => {
                return Err(CreateError::Unsupported(format!(
                    "the fix changes {}, not a C file; kernel patches from header or build changes are not supported",
                    f.display()
                )))
            }
        }
    }
    // One run at a time in a tree, preparing included.
    let _lock = crate::lock_tree(
        &req.src.join(".hotsplice.lock"),
        &format!("the kernel tree {}", req.src.display()),
        req.stop_requested,
    )?;
    let tree = tree::Tree::prepare(&req.src, &req.config)?;
    // Which object each file is compiled into and linked into, asked of
    // kbuild before anything is built: a file this configuration does not
    // build, or builds without ftrace, is refused at once. A file that
    // another `#include`s is compared in its includer's object.
    let of_file = files
        .iter()
        .map(|f| tree.unit(f))
        .collect::<Result<Vec<_>, _>>()?;
    let mut units: Vec<tree::Unit> = Vec::new();
    for u in &of_file {
        if !units.contains(u) {
            units.push(u.clone());
        }
    }
    let (work, _guard) = crate::scratch_dir(req.keep_work.as_deref(), "hotsplice-kcreate.")?;
    let obj_at = |stage: &str, u: &tree::Unit| work.join(stage).join(&u.source).with_extension("o");
    for u in &units {
        tree.compile(u, &obj_at("pre", u))?;
    }
    tree.apply_fix(&diff_abs, &files)?;
    let post = units
        .iter()
        .try_for_each(|u| tree.compile(u, &obj_at("post", u)).map(|_| ()));
    // The tree goes back to the original whatever happened.
    tree.restore()?;
    post?;

    let mut objs = Vec::new();
    for u in units {
        let pre = ObjFile::read(&obj_at("pre", &u)).map_err(CreateError::Target)?;
        let postf = ObjFile::read(&obj_at("post", &u)).map_err(CreateError::Target)?;
        let d = diff::diff(&pre, &postf);
        if d.is_empty() {
            continue;
        }
        // `__LINE__` in the object may come from any changed file it
        // includes.
        let lines = files
            .iter()
            .zip(&of_file)
            .filter(|(_, fu)| **fu == u)
            .map(|(f, _)| tree::LineMap::of(&diff_text, f))
            .collect();
        objs.push(emit::KObj {
            owner: u.owner,
            rel: u.source,
            pre,
            post: postf,
            diff: d,
            lines,
        });
    }
    if objs.is_empty() {
        return Err(CreateError::NothingToPatch(
            "the fix changes no compiled code".into(),
        ));
    }
    let syms = KernelSymbols::load(&req.kdir.join("Module.symvers"), req.system_map.as_deref())?;
    let syms = match &req.modules {
        Some(dir) => syms.with_modules(dir)?,
        None => syms,
    };
    let emitted = emit::emit(&objs, &syms)?;
    if emitted.funcs.is_empty() {
        return Err(CreateError::NothingToPatch(
            "no changed function exists out of line in the kernel".into(),
        ));
    }

    let id = hotsplice_patch::stable_id(&[diff_text.as_bytes(), req.build_id.as_bytes()]);
    let module = format!("hs_{id}");
    let effective = req
        .effective
        .clone()
        .unwrap_or_else(|| format!("{}.hs-{id}", req.release));
    let description = req.description.clone().unwrap_or_else(|| {
        format!(
            "{} for {}",
            req.diff
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            req.release
        )
    });
    let mdir = work.join("module");
    std::fs::create_dir_all(&mdir).map_err(io("module directory"))?;
    std::fs::write(mdir.join("hs_funcs.o_shipped"), &emitted.object)
        .map_err(io("writing the patch object"))?;
    // modpost reads every object's kbuild command file.
    std::fs::write(
        mdir.join(".hs_funcs.o.cmd"),
        format!(
            "cmd_{}/hs_funcs.o := cat hs_funcs.o_shipped > hs_funcs.o\n",
            mdir.display()
        ),
    )
    .map_err(io("writing the object's command file"))?;
    std::fs::write(
        mdir.join("Kbuild"),
        format!("obj-m := {module}.o\n{module}-y := livepatch.o hs_funcs.o\n"),
    )
    .map_err(io("writing Kbuild"))?;
    std::fs::write(
        mdir.join("livepatch.c"),
        livepatch_c(
            &emitted.funcs,
            &emitted.direct,
            &id,
            &description,
            &req.build_id,
            &req.release,
            &effective,
        ),
    )
    .map_err(io("writing livepatch.c"))?;
    tree::run_stage(
        Command::new("make")
            .arg("-C")
            .arg(&req.kdir)
            .arg(format!("M={}", mdir.display()))
            .arg("modules"),
        "livepatch module",
        &format!("make -C {} M=... modules", req.kdir.display()),
    )?;
    let built =
        std::fs::read(mdir.join(format!("{module}.ko"))).map_err(io("reading the built module"))?;
    // Livepatch relocations in tables are placed by the offsets in our
    // object: the module's table must be ours alone.
    for table in ["__jump_table"] {
        if emitted.klp.iter().any(|r| r.section == table) {
            let size = |elf: &[u8]| {
                use object::{Object, ObjectSection};
                object::File::parse(elf)
                    .ok()
                    .and_then(|f| f.section_by_name(table).map(|s| s.size()))
            };
            if size(&built) != size(&emitted.object) {
                return Err(CreateError::Target(format!(
                    "the built livepatch module's {table} is not the patch object's alone; \
                     its livepatch relocations cannot be placed"
                )));
            }
        }
    }
    let ko = klp::add_klp(&built, &emitted.klp)?;
    std::fs::create_dir_all(&req.out_dir).map_err(io("output directory"))?;
    let module_path = req.out_dir.join(format!("{module}.ko"));
    std::fs::write(&module_path, &ko).map_err(io("writing the module"))?;
    let functions: Vec<String> = emitted.funcs.iter().map(|f| f.old_name.clone()).collect();
    let mut objects: Vec<String> = Vec::new();
    for f in &emitted.funcs {
        let o = f.owner.clone().unwrap_or_else(|| "vmlinux".into());
        if !objects.contains(&o) {
            objects.push(o);
        }
    }
    let patch = kernel_patch(
        &ko,
        &id,
        &description,
        &req.build_id,
        &req.release,
        functions.clone(),
    );
    let path = req.out_dir.join(format!("vmlinux-{id}.hsp"));
    std::fs::write(&path, patch.to_bytes()).map_err(io("writing the patch"))?;
    Ok(CreatedKernelPatch {
        path,
        module_path,
        id,
        module,
        functions,
        direct: emitted
            .funcs
            .iter()
            .filter(|f| f.direct)
            .map(|f| f.old_name.clone())
            .collect(),
        skipped: emitted.skipped,
        objects,
        livepatch_relocations: emitted.klp.len(),
    })
}

/// The direct redirection code of a livepatch module (after
/// `#define HS_NDIRECT`).
const DIRECT_C: &str = include_str!("direct.c");

fn livepatch_c(
    funcs: &[emit::KFunc],
    directs: &[emit::DirectFunc],
    id: &str,
    description: &str,
    build_id: &str,
    release: &str,
    effective: &str,
) -> String {
    let mut c = String::from(
        "// SPDX-License-Identifier: GPL-2.0\n// Generated by hotsplice create --kernel.\n\
         #include <linux/module.h>\n#include <linux/kernel.h>\n#include <linux/livepatch.h>\n\n",
    );
    let direct = directs.len();
    if direct > 0 {
        c.push_str(&format!("#define HS_NDIRECT {direct}\n"));
        for (i, d) in directs.iter().enumerate() {
            c.push_str(&format!(
                "/* __hs_direct[{i}]: {} ({} bytes) */\n",
                d.name.replace("*/", "* /"),
                d.size
            ));
        }
        c.push_str(DIRECT_C);
    }
    let mut owners: Vec<Option<String>> = Vec::new();
    // Direct functions are vmlinux's: its object carries the callbacks
    // that redirect them, with no `klp_func` of theirs.
    if direct > 0 {
        owners.push(None);
    }
    for f in funcs.iter().filter(|f| !f.direct) {
        c.push_str(&format!("void {}(void);\n", f.new_symbol));
        if !owners.contains(&f.owner) {
            owners.push(f.owner.clone());
        }
    }
    for (i, o) in owners.iter().enumerate() {
        c.push_str(&format!("\nstatic struct klp_func hs_funcs_{i}[] = {{\n"));
        for f in funcs.iter().filter(|f| &f.owner == o && !f.direct) {
            c.push_str(&format!(
                "\t{{ .old_name = {}, .new_func = {}, .old_sympos = {} }},\n",
                c_string(&f.old_name),
                f.new_symbol,
                f.sympos
            ));
        }
        c.push_str("\t{ }\n};\n");
    }
    c.push_str("\nstatic struct klp_object hs_objs[] = {\n");
    for (i, o) in owners.iter().enumerate() {
        let name = o
            .as_ref()
            .map(|m| c_string(m))
            .unwrap_or_else(|| "NULL".into());
        let callbacks = if o.is_none() && direct > 0 {
            ", .callbacks = { .pre_patch = hs_direct_apply, .post_unpatch = hs_direct_undo }"
        } else {
            ""
        };
        c.push_str(&format!(
            "\t{{ .name = {name}, .funcs = hs_funcs_{i}{callbacks} }},\n"
        ));
    }
    c.push_str("\t{ }\n};\n\n");
    c.push_str(
        "static struct klp_patch hs_patch = {\n\t.mod = THIS_MODULE,\n\t.objs = hs_objs,\n};\n\n\
         static int __init hs_init(void)\n{\n\treturn klp_enable_patch(&hs_patch);\n}\n\n\
         static void __exit hs_exit(void)\n{\n}\n\n\
         module_init(hs_init);\nmodule_exit(hs_exit);\nMODULE_LICENSE(\"GPL\");\n\
         MODULE_INFO(livepatch, \"Y\");\n",
    );
    c.push_str(&format!("MODULE_DESCRIPTION({});\n", c_string(description)));
    c.push_str(&format!("MODULE_INFO(hotsplice_id, {});\n", c_string(id)));
    c.push_str(&format!(
        "MODULE_INFO(hotsplice_build_id, {});\n",
        c_string(build_id)
    ));
    c.push_str(&format!(
        "MODULE_INFO(hotsplice_release, {});\n",
        c_string(release)
    ));
    c.push_str(&format!(
        "MODULE_INFO(hotsplice_effective, {});\n",
        c_string(effective)
    ));
    c
}
