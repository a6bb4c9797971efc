//! The changed functions of kernel objects, turned into one relocatable
//! object for the livepatch module, plus the livepatch relocations that
//! must replace references the module loader cannot resolve.

use super::symbols::{Class, KernelSymbols, Neighbour};
use crate::diff::ObjDiff;
use crate::objfile::{ObjFile, Reloc};
use crate::CreateError;
use hotsplice_arch::current::ElfReloc;
use object::write::{Object, Relocation, SectionId, Symbol, SymbolId, SymbolSection};
use object::{
    elf, RelocationFlags, SectionFlags, SectionKind, SymbolFlags, SymbolKind, SymbolScope,
};
use std::collections::HashMap;
use std::path::PathBuf;

/// One changed kernel object file.
pub struct KObj {
    pub rel: PathBuf,
    /// `None`: vmlinux; else the module.
    pub owner: Option<String>,
    pub pre: ObjFile,
    pub post: ObjFile,
    pub diff: ObjDiff,
    /// The fix's line maps of the source files compiled into this object.
    pub lines: Vec<super::tree::LineMap>,
}

/// A relocation for livepatch to apply (`.klp.rela.<sec_obj>.<section>`,
/// symbol `.klp.sym.<sym_obj>.<sym>,<pos>`).
#[derive(Debug, Clone)]
pub struct KlpRel {
    pub section: String,
    /// The object whose arrival applies the relocation: `vmlinux` (when the
    /// module is loaded) for symbols of vmlinux, else the patched module
    /// (the kernel refuses vmlinux symbols in a module's section, and
    /// applies only the sections of the patch's own objects).
    pub sec_obj: String,
    pub offset: u64,
    pub r_type: u32,
    pub sym_obj: String,
    pub sym: String,
    pub pos: u64,
    pub addend: i64,
}

/// A function the module replaces.
#[derive(Debug, Clone)]
pub struct KFunc {
    pub owner: Option<String>,
    pub old_name: String,
    pub new_symbol: String,
    pub sympos: u64,
    /// Without ftrace's entry call: redirected by a jump written at its
    /// entry (an entry of `__hs_direct`), not by a `klp_func`.
    pub direct: bool,
}

/// What the module's direct redirections table (`__hs_direct`, in
/// `.data.hs_direct`) holds per function, besides the two addresses the
/// kernel relocates: the running function's size and the bytes its entry
/// must hold (from the unfixed build, where no relocation touches them).
#[derive(Debug, Clone)]
pub struct DirectFunc {
    pub name: String,
    pub size: u64,
    pub expect: [u8; JMP_LEN],
}

/// Length of the `jmp rel32` written at a direct function's entry.
pub const JMP_LEN: usize = 5;
/// Bytes per entry of `__hs_direct`: old address, new address, size,
/// expected bytes (8, padded), saved bytes (8): `struct hs_direct` of the
/// generated livepatch.c.
pub const DIRECT_ENTRY: usize = 40;
/// Kernel symbols the direct redirection code needs that vmlinux does not
/// export, reached through livepatch relocations in `__hs_ksyms` (slot i
/// holds the address of `DIRECT_KSYMS[i]`).
pub const DIRECT_KSYMS: &[&str] = &[
    "text_mutex",
    "stack_trace_save_tsk_reliable",
    "text_poke_kgdb",
    "stop_machine_cpuslocked",
    "idle_task",
    "task_curr",
];

pub struct Emitted {
    pub object: Vec<u8>,
    pub klp: Vec<KlpRel>,
    pub funcs: Vec<KFunc>,
    /// The direct functions, in `__hs_direct` order.
    pub direct: Vec<DirectFunc>,
    /// `__init`/`__exit` functions left as they are: only `__LINE__` moved.
    pub skipped: Vec<String>,
}

/// Tables whose entries make the kernel rewrite the code they point at
/// (alternatives, static calls, retpolines, return thunks, jump labels,
/// paravirt, ftrace): such a site in the first bytes of a function would
/// make what runs differ from the object.
const RUNTIME_PATCHED: &[&str] = &[
    ".altinstructions",
    "__jump_table",
    ".static_call_sites",
    ".retpoline_sites",
    ".return_sites",
    ".call_sites",
    ".parainstructions",
    ".ibt_endbr_seal",
    "__mcount_loc",
    "__patchable_function_entries",
];

/// Whether the running (pre build's) function in section `p` can be
/// redirected by a jump written over its first bytes, and what those bytes
/// must be. Refused: a function outside ordinary `.text` (`noinstr`, entry,
/// kprobes and idle code run where a stopped machine cannot be assumed or
/// must not be touched), one shorter than the jump, one whose first bytes
/// hold a relocation or a site the kernel rewrites, one with a `.cold` part
/// (a second range a task could be in), and functions of modules.
fn direct_func(k: &KObj, p: usize, name: &str) -> Result<DirectFunc, CreateError> {
    let pre = &k.pre;
    let sec = &pre.sections[p];
    let refuse = |why: String| {
        Err(CreateError::Unsupported(format!(
            "{}: `{name}` has no ftrace entry call (`notrace`, or flags its Makefile removes) \
             and cannot be redirected directly: {why}",
            k.rel.display()
        )))
    };
    if let Some(m) = &k.owner {
        return refuse(format!(
            "it is in module {m}; direct redirection is done for vmlinux only"
        ));
    }
    if !sec.name.starts_with(".text.") {
        return refuse(format!(
            "it is in section {}, not ordinary .text (noinstr, entry and other code NMIs, \
             exceptions or a stopped machine itself run is never rewritten)",
            sec.name
        ));
    }
    let size = pre.function_of(p).map(|f| pre.symbols[f].size).unwrap_or(0);
    if size < JMP_LEN as u64 || sec.data.len() < JMP_LEN {
        return refuse(format!(
            "it is {size} bytes long, shorter than the {JMP_LEN}-byte jump"
        ));
    }
    if let Some(r) = sec.relocs.iter().find(|r| r.offset < JMP_LEN as u64) {
        return refuse(format!(
            "its first {JMP_LEN} bytes hold a relocation (to `{}`), so what runs there is not \
             known from the object",
            pre.symbols[r.sym].name
        ));
    }
    for ts in &pre.sections {
        if !RUNTIME_PATCHED.contains(&ts.name.as_str()) {
            continue;
        }
        for r in &ts.relocs {
            // A table entry names its site as symbol + addend (`.long 1b - .`
            // and the like), whatever the relocation's kind.
            let sym = &pre.symbols[r.sym];
            if sym.section == Some(p) {
                let at = if sym.is_section() {
                    0
                } else {
                    sym.value as i64
                } + r.addend;
                if (0..JMP_LEN as i64).contains(&at) {
                    return refuse(format!(
                        "its first {JMP_LEN} bytes are a site the kernel rewrites at run time ({})",
                        ts.name
                    ));
                }
            }
        }
    }
    let cold = format!("{name}.cold");
    if sec
        .relocs
        .iter()
        .any(|r| pre.symbols[r.sym].name.starts_with(&cold))
    {
        return refuse(format!(
            "it has a cold part (`{cold}`), a second range of code a task could be in"
        ));
    }
    let mut expect = [0u8; JMP_LEN];
    expect.copy_from_slice(&sec.data[..JMP_LEN]);
    Ok(DirectFunc {
        name: name.to_string(),
        size,
        expect,
    })
}

/// Tables whose entries point at code, entry size, and whether entries
/// for carried code are copied (true) or make the patch unsupported.
const TABLES: &[(&str, usize, bool)] = &[
    ("__ex_table", 12, true),
    ("__bug_table", 12, true),
    (".orc_unwind_ip", 4, true),
    (".return_sites", 4, true),
    (".retpoline_sites", 4, true),
    (".call_sites", 4, true),
    // Static keys: entries are copied, their keys resolved like any
    // reference (keys in vmlinux by an ordinary or a vmlinux livepatch
    // relocation, applied before the module's jump labels are set up).
    ("__jump_table", 16, true),
    // Alternatives: the module loader applies them (module_finalize)
    // after relocating; replacements come with their section.
    (".altinstructions", 12, true),
];

enum Tgt {
    Sec(usize, u64),
    Undef(String),
    Klp {
        obj: String,
        name: String,
        pos: u64,
        delta: i64,
    },
}

/// Dynamic-debug descriptors (`pr_debug`, `dev_dbg`, …:
/// `__UNIQUE_ID_ddebug…`, `descriptor.N`).
fn is_dyndbg(section: &str) -> bool {
    section == "__dyndbg"
}

/// The flags of `WARN_ONCE`, `printk_once`, `pr_*_once` (`__already_done.N`,
/// all in `.data.once`): the carried code gets its own copies, new ones
/// included. Their only effect is that a message the running kernel has
/// printed already may print once more, from the patched code.
fn is_once_flags(section: &str) -> bool {
    section == ".data.once"
}

/// Whether a changed function's section differs only in the line numbers
/// the fix moved (`__LINE__` of an assertion's message: 32-bit immediates
/// equal to a line of the unfixed file in the pre build and to where that
/// line went in the post build), with the same length, the same references
/// and the same jump tables: the code behaves the same (an `__init`
/// function ran the same; another one needs no replacement).
fn only_lines_moved(k: &KObj, s: usize) -> bool {
    let Some(&p) = k.diff.pre_of.get(&s) else {
        return false;
    };
    let (a, ra) = crate::objfile::normalized(&k.pre, p);
    let (b, rb) = crate::objfile::normalized(&k.post, s);
    // No byte changed: the change is elsewhere (a jump table).
    if a.len() != b.len() || ra != rb || a == b {
        return false;
    }
    if !crate::diff::anonymous_deps_same(&k.pre, &k.post, s, &mut HashMap::new()) {
        return false;
    }
    let word = |v: &[u8], j: usize| u32::from_le_bytes([v[j], v[j + 1], v[j + 2], v[j + 3]]);
    let mut i = 0;
    while i < a.len() {
        if a[i] == b[i] {
            i += 1;
            continue;
        }
        let moved = (i.saturating_sub(3)..=i).find(|&j| {
            j + 4 <= a.len() && {
                let (x, y) = (word(&a, j), word(&b, j));
                x != y && k.lines.iter().any(|m| m.map(x) == Some(y))
            }
        });
        match moved {
            Some(j) => i = j + 4,
            None => return false,
        }
    }
    true
}

/// The functions of post section `s` (an `.init.text`, which holds all of
/// a file's `__init` functions) whose bytes differ from the pre build's,
/// relocated fields masked: those a skip leaves as they are.
fn functions_differing(k: &KObj, s: usize) -> Vec<String> {
    let Some(&p) = k.diff.pre_of.get(&s) else {
        return Vec::new();
    };
    let (a, _) = crate::objfile::normalized(&k.pre, p);
    let (b, _) = crate::objfile::normalized(&k.post, s);
    let mut out: Vec<(u64, String)> = Vec::new();
    for f in k.post.sections[s]
        .symbols
        .iter()
        .map(|&i| &k.post.symbols[i])
    {
        let (lo, hi) = (f.value as usize, (f.value + f.size) as usize);
        if !f.is_func() || hi > a.len() || hi > b.len() || a[lo..hi] == b[lo..hi] {
            continue;
        }
        // One name per function: `module_init`'s alias `init_module` (and
        // `cleanup_module`) gives way to the function's own name.
        let alias = matches!(f.name.as_str(), "init_module" | "cleanup_module");
        match out.iter_mut().find(|(v, _)| *v == f.value) {
            Some(seen) if !alias => seen.1 = f.name.clone(),
            Some(_) => {}
            None => out.push((f.value, f.name.clone())),
        }
    }
    out.into_iter().map(|(_, n)| n).collect()
}

/// Whether the running (pre build's) function in section `p` starts with
/// ftrace's entry call (`call __fentry__`, after an `endbr64` with IBT),
/// where the kernel's livepatch redirects it.
fn has_ftrace_entry(obj: &ObjFile, p: usize) -> bool {
    obj.sections[p]
        .relocs
        .iter()
        .any(|r| r.offset < 16 && obj.symbols[r.sym].name == "__fentry__")
}

/// The name of a carried section in the patch object: unique per changed
/// file, except descriptors, which the module loader registers only from
/// `__dyndbg`.
fn emitted_name(section: &str, index: usize) -> String {
    if is_dyndbg(section) {
        section.to_string()
    } else {
        format!("{section}.hs{index}")
    }
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

struct PerObj<'a> {
    k: &'a KObj,
    syms: &'a KernelSymbols,
    included: Vec<usize>,
    is_inc: HashMap<usize, ()>,
}

impl<'a> PerObj<'a> {
    fn include(&mut self, s: usize) {
        if self.is_inc.insert(s, ()).is_none() {
            self.included.push(s);
        }
    }

    /// The named symbols of the patched file (unfixed build), with the
    /// kind of section each is in.
    fn neighbours(&self) -> Vec<Neighbour> {
        let pre = &self.k.pre;
        pre.symbols
            .iter()
            .filter(|s| !s.is_label() && !s.is_section() && !s.undefined)
            .filter_map(|s| {
                let sec = &pre.sections[s.section?];
                let class = if !sec.alloc {
                    return None;
                } else if sec.exec {
                    Class::Text
                } else if sec.nobits {
                    Class::Bss
                } else if sec.write {
                    Class::Data
                } else {
                    Class::ReadOnly
                };
                Some(Neighbour {
                    name: s.name.clone(),
                    class,
                })
            })
            .collect()
    }

    fn klp(&self, name: &str, owner: Option<&str>, delta: i64) -> Result<Tgt, CreateError> {
        let pos = self.syms.position(name, owner, &self.neighbours())?;
        Ok(Tgt::Klp {
            obj: owner.unwrap_or("vmlinux").to_string(),
            name: name.to_string(),
            pos,
            delta,
        })
    }

    fn resolve(&mut self, sec: usize, r: &Reloc) -> Result<Tgt, CreateError> {
        let post = &self.k.post;
        let sym = &post.symbols[r.sym];
        if sym.undefined {
            if self.syms.exported(&sym.name) {
                return Ok(Tgt::Undef(sym.name.clone()));
            }
            // Exported by a module: a livepatch relocation too, so that the
            // patch does not need that module loaded.
            if let Some(m) = self.syms.exported_by_module(&sym.name) {
                let m = m.to_string();
                return self.klp(&sym.name, Some(&m), 0);
            }
            // Defined elsewhere in the kernel: in this module if the map
            // says so, else vmlinux.
            let owner = match self.syms.owner_of(&sym.name) {
                Some(known) => known,
                // Not in the map: a global of the object being patched.
                None => self.k.owner.clone(),
            };
            return self.klp(&sym.name, owner.as_deref(), 0);
        }
        let loc = post.locate(sec, r).ok_or_else(|| {
            CreateError::Unsupported(format!(
                "{}: relocation to an absolute symbol `{}`",
                self.k.rel.display(),
                sym.name
            ))
        })?;
        let t = loc.section;
        let s = &post.sections[t];
        if self.is_inc.contains_key(&t) {
            return Ok(Tgt::Sec(t, loc.sym_offset));
        }
        let numbered = post
            .symbol_at(t, loc.referenced)
            .is_some_and(|i| post.is_numbered_const(i));
        if s.merge || s.symbols.is_empty() || numbered || self.k.diff.new_sections.contains(&t) {
            self.include(t);
            return Ok(Tgt::Sec(t, loc.sym_offset));
        }
        if s.exec && self.k.diff.changed_text.contains(&t) {
            self.include(t);
            return Ok(Tgt::Sec(t, loc.sym_offset));
        }
        // Dynamic-debug descriptors are per call site: the carried code
        // gets its own (the object's descriptors, registered under the
        // patch module's name), with their static keys.
        if is_dyndbg(&s.name) || is_once_flags(&s.name) {
            self.include(t);
            return Ok(Tgt::Sec(t, loc.sym_offset));
        }
        if let Some((_, name)) = self.k.diff.changed_data.iter().find(|(d, _)| *d == t) {
            return Err(CreateError::ChangedData {
                symbol: name.clone(),
                file: self.k.rel.display().to_string(),
            });
        }
        let anchor = post
            .stable_symbol_at(t, loc.referenced)
            .or_else(|| s.symbols.first().copied())
            .expect("section has symbols");
        let a = &post.symbols[anchor];
        let delta = loc.sym_offset as i64 - a.value as i64;
        if !a.local && self.syms.exported(&a.name) && delta == 0 {
            return Ok(Tgt::Undef(a.name.clone()));
        }
        // A name numbered per build is the running kernel's (the pre
        // build's) at the same place.
        let name = match crate::objfile::numbered_base(&a.name) {
            Some(base) => self.pre_name_like(t, a.value, base).ok_or_else(|| {
                CreateError::Unsupported(format!(
                    "{}: `{}` has a build-numbered name and no counterpart in the unfixed build",
                    self.k.rel.display(),
                    a.name
                ))
            })?,
            None => a.name.clone(),
        };
        self.klp(&name, self.k.owner.as_deref(), delta)
    }

    /// The pre build's symbol with numbered base `base` at `value` of the
    /// pre section paired with post section `t`.
    fn pre_name_like(&self, t: usize, value: u64, base: &str) -> Option<String> {
        let pre = &self.k.pre;
        let ps = *self.k.diff.pre_of.get(&t)?;
        pre.sections[ps]
            .symbols
            .iter()
            .map(|&i| &pre.symbols[i])
            .find(|s| s.value == value && crate::objfile::numbered_base(&s.name) == Some(base))
            .map(|s| s.name.clone())
    }
}

/// A static key of carried code must be reachable when the patch module's
/// jump labels are set up, at its load: in the patch itself (a carried
/// dynamic-debug descriptor), exported by vmlinux, or a vmlinux symbol (a
/// livepatch relocation applied at load). Keys of modules are resolved
/// only when the module arrives, too late: refused, naming both.
fn jump_key_supported(k: &KObj, table: usize, start: usize, t: &Tgt) -> Result<(), CreateError> {
    let Tgt::Klp { obj, name, .. } = t else {
        return Ok(());
    };
    if obj == "vmlinux" {
        return Ok(());
    }
    let func = k.post.sections[table]
        .relocs
        .iter()
        .find(|r| r.offset as usize == start)
        .and_then(|r| k.post.locate(table, r))
        .and_then(|l| k.post.function_of(l.section))
        .map(|f| k.post.symbols[f].name.clone())
        .unwrap_or_else(|| "?".into());
    Err(CreateError::Unsupported(format!(
        "{}: changed function `{func}` uses static key `{name}` of module {obj} (a static branch or an \
         inlined tracepoint); the patch module's jump labels are set up when it loads, before livepatch \
         can resolve symbols of {obj}",
        k.rel.display()
    )))
}

/// Build the object and the livepatch relocations for all changed files.
pub fn emit(objs: &[KObj], syms: &KernelSymbols) -> Result<Emitted, CreateError> {
    let mut out = Object::new(
        object::BinaryFormat::Elf,
        object::Architecture::X86_64,
        object::Endianness::Little,
    );
    let mut klp = Vec::new();
    let mut funcs = Vec::new();
    let mut skipped = Vec::new();
    // (function, carried section, old function's target)
    let mut directs: Vec<(DirectFunc, SectionId, Tgt)> = Vec::new();
    let mut undef: HashMap<String, SymbolId> = HashMap::new();
    let mut tables: HashMap<&'static str, SectionId> = HashMap::new();

    for (index, k) in objs.iter().enumerate() {
        // Changed data refuses the patch (the old code would keep the old
        // values), except dynamic-debug descriptors: their line numbers
        // move with every line the fix adds or removes above them, and
        // they are metadata of their call sites only (carried with the
        // changed code that uses them); once flags (see `is_once_flags`);
        // and read-only constants the
        // compiler numbers (`__func__.54`): a fix that drops a function's
        // last `__func__` renumbers the rest, so same-named ones differ,
        // yet nothing writes them, the running code keeps its own and
        // carried code gets a copy by content.
        if let Some((_, name)) = k.diff.changed_data.iter().find(|(s, _)| {
            let sec = &k.post.sections[*s];
            let numbered =
                !sec.symbols.is_empty() && sec.symbols.iter().all(|&i| k.post.is_numbered_const(i));
            !is_dyndbg(&sec.name) && !is_once_flags(&sec.name) && !numbered
        }) {
            return Err(CreateError::ChangedData {
                symbol: name.clone(),
                file: k.rel.display().to_string(),
            });
        }
        let mut p = PerObj {
            k,
            syms,
            included: Vec::new(),
            is_inc: HashMap::new(),
        };
        let mut changed = Vec::new();
        for &s in &k.diff.changed_text {
            let name = &k.post.sections[s].name;
            let init_or_exit = name.starts_with(".init") || name.starts_with(".exit");
            // Only `__LINE__` moved in `__init`/`__exit` code: it behaves
            // the same and stays. Elsewhere such a function is replaced by
            // its equivalent: skipping it there could hide a real change of
            // a constant that happens to equal a line the fix moved.
            if init_or_exit && only_lines_moved(k, s) {
                skipped.extend(functions_differing(k, s));
                continue;
            }
            if init_or_exit {
                return Err(CreateError::Unsupported(format!(
                    "{}: the fix changes __init/__exit code ({name}), which has run already and cannot be live patched",
                    k.rel.display()
                )));
            }
            p.include(s);
            changed.push(s);
        }
        // Close over what the carried code needs; resolve as we go. Table
        // entries that point into carried code come along, and what they
        // need (a static key's descriptor) in turn.
        let mut resolved: Vec<(usize, Reloc, Tgt)> = Vec::new();
        // (table, post section, entry start)
        let mut table_entries: Vec<(&'static str, usize, usize)> = Vec::new();
        let mut next = 0;
        loop {
            while next < p.included.len() {
                let sec = p.included[next];
                next += 1;
                for r in k.post.sections[sec].relocs.clone() {
                    if r.kind == ElfReloc::None {
                        continue;
                    }
                    let t = p.resolve(sec, &r)?;
                    resolved.push((sec, r, t));
                }
            }
            for &(table, size, copy) in TABLES {
                let Some(ts) = k.post.section_named(table) else {
                    continue;
                };
                let relocs = k.post.sections[ts].relocs.clone();
                for r in &relocs {
                    let start = r.offset as usize;
                    if !start.is_multiple_of(size)
                        || table_entries.iter().any(|e| e.1 == ts && e.2 == start)
                    {
                        continue;
                    }
                    let Some(loc) = k.post.locate(ts, r) else {
                        continue;
                    };
                    if !p.is_inc.contains_key(&loc.section) || !k.post.sections[loc.section].exec {
                        continue;
                    }
                    if !copy {
                        return Err(CreateError::Unsupported(format!(
                            "{}: changed code uses {table} (alternatives), which this version cannot carry",
                            k.rel.display()
                        )));
                    }
                    table_entries.push((table, ts, start));
                    for r in relocs.iter().filter(|r| {
                        (r.offset as usize) >= start && (r.offset as usize) < start + size
                    }) {
                        let t = p.resolve(ts, r)?;
                        if table == "__jump_table" && r.offset as usize == start + 8 {
                            jump_key_supported(k, ts, start, &t)?;
                        }
                        resolved.push((ts, r.clone(), t));
                    }
                }
            }
            if next == p.included.len() {
                break;
            }
        }

        // Emit the carried sections.
        let mut ids: HashMap<usize, SectionId> = HashMap::new();
        for &s in &p.included {
            let sec = &k.post.sections[s];
            let name = emitted_name(&sec.name, index);
            let kind = if sec.exec {
                SectionKind::Text
            } else if sec.nobits {
                SectionKind::UninitializedData
            } else if sec.write {
                SectionKind::Data
            } else {
                SectionKind::ReadOnlyData
            };
            let id = out.add_section(Vec::new(), name.into_bytes(), kind);
            if sec.nobits {
                out.append_section_bss(id, sec.size, sec.align);
            } else {
                out.set_section_data(id, sec.data.clone(), sec.align);
            }
            let mut sh_flags = elf::SHF_ALLOC as u64;
            if sec.exec {
                sh_flags |= elf::SHF_EXECINSTR as u64;
            }
            if sec.write {
                sh_flags |= elf::SHF_WRITE as u64;
            }
            if sec.merge {
                sh_flags |= elf::SHF_MERGE as u64;
            }
            if sec.strings {
                sh_flags |= elf::SHF_STRINGS as u64;
            }
            out.section_mut(id).flags = SectionFlags::Elf { sh_flags };
            ids.insert(s, id);
        }
        // Table entries, renumbered into our own tables.
        let mut entry_at: HashMap<(usize, usize), u64> = HashMap::new();
        for &(table, ts, start) in &table_entries {
            let size = TABLES.iter().find(|t| t.0 == table).unwrap().1;
            let id = *tables.entry(table).or_insert_with(|| {
                let kind = if table == ".orc_unwind_ip" || table.starts_with('.') {
                    SectionKind::ReadOnlyData
                } else {
                    SectionKind::Data
                };
                out.add_section(Vec::new(), table.as_bytes().to_vec(), kind)
            });
            let data = &k.post.sections[ts].data[start..start + size];
            let at = out.append_section_data(id, data, if size == 16 { 8 } else { 4 });
            entry_at.insert((ts, start), at);
            if table == ".orc_unwind_ip" {
                // The parallel table: entry i of .orc_unwind goes with ip i.
                if let Some(u) = k.post.section_named(".orc_unwind") {
                    let i = start / 4;
                    let uid = *tables.entry(".orc_unwind").or_insert_with(|| {
                        out.add_section(
                            Vec::new(),
                            b".orc_unwind".to_vec(),
                            SectionKind::ReadOnlyData,
                        )
                    });
                    let d = &k.post.sections[u].data;
                    if d.len() >= (i + 1) * 6 {
                        out.append_section_data(uid, &d[i * 6..i * 6 + 6], 2);
                    }
                }
            }
        }
        for (table, id) in &tables {
            // Jump entries are sorted and marked in place at load.
            let write = if *table == "__jump_table" {
                elf::SHF_WRITE as u64
            } else {
                0
            };
            out.section_mut(*id).flags = SectionFlags::Elf {
                sh_flags: elf::SHF_ALLOC as u64 | write,
            };
        }

        // The replacements' entry symbols.
        for &s in &changed {
            let Some(f) = k.post.function_of(s) else {
                continue;
            };
            let fsym = &k.post.symbols[f];
            if fsym.name.ends_with(".cold") {
                continue;
            }
            let Some(&pre_sec) = k.diff.pre_of.get(&s) else {
                continue;
            };
            let direct = !has_ftrace_entry(&k.pre, pre_sec);
            let new_symbol = format!("__hs_new_{index}_{}", sanitize(&fsym.name));
            out.add_symbol(Symbol {
                name: new_symbol.clone().into_bytes(),
                value: 0,
                size: fsym.size,
                kind: SymbolKind::Text,
                scope: SymbolScope::Linkage,
                weak: false,
                section: SymbolSection::Section(ids[&s]),
                flags: SymbolFlags::None,
            });
            let sympos = syms.position(&fsym.name, k.owner.as_deref(), &p.neighbours())?;
            if direct {
                let d = direct_func(k, pre_sec, &fsym.name)?;
                let pre_sym = k.pre.function_of(pre_sec).map(|f| &k.pre.symbols[f]);
                let old = if pre_sym.is_some_and(|s| !s.local) && syms.exported(&fsym.name) {
                    Tgt::Undef(fsym.name.clone())
                } else {
                    p.klp(&fsym.name, None, 0)?
                };
                directs.push((d, ids[&s], old));
            }
            funcs.push(KFunc {
                owner: k.owner.clone(),
                old_name: fsym.name.clone(),
                new_symbol,
                sympos,
                direct,
            });
        }

        // Relocations: ordinary ones into the object, the rest for livepatch.
        for (sec, r, t) in resolved {
            let (place_id, place_off, place_name) = match ids.get(&sec) {
                Some(&id) => (
                    id,
                    r.offset,
                    emitted_name(&k.post.sections[sec].name, index),
                ),
                None => {
                    // A table entry.
                    let table = k.post.sections[sec].name.clone();
                    let size = TABLES.iter().find(|x| x.0 == table).unwrap().1;
                    let start = r.offset as usize / size * size;
                    let Some(&at) = entry_at.get(&(sec, start)) else {
                        continue;
                    };
                    let id = tables[TABLES.iter().find(|x| x.0 == table).unwrap().0];
                    (id, at + (r.offset - start as u64), table)
                }
            };
            let r_type = r.kind.to_elf();
            match t {
                Tgt::Sec(s, off) => {
                    let sym = out.section_symbol(ids[&s]);
                    add_reloc(
                        &mut out,
                        place_id,
                        place_off,
                        sym,
                        r.addend + off as i64,
                        r_type,
                    )?;
                }
                Tgt::Undef(name) => {
                    let sym = undef_symbol(&mut out, &mut undef, name);
                    add_reloc(&mut out, place_id, place_off, sym, r.addend, r_type)?;
                }
                Tgt::Klp {
                    obj,
                    name,
                    pos,
                    delta,
                } => klp.push(KlpRel {
                    sec_obj: if obj == "vmlinux" {
                        obj.clone()
                    } else {
                        k.owner.clone().unwrap_or_else(|| obj.clone())
                    },
                    section: place_name,
                    offset: place_off,
                    r_type,
                    sym_obj: obj,
                    sym: name,
                    pos,
                    addend: r.addend + delta,
                }),
            }
        }
    }
    if !directs.is_empty() && funcs.iter().any(|f| !f.direct) {
        let name = |d: bool| {
            funcs
                .iter()
                .filter(|f| f.direct == d)
                .map(|f| format!("`{}`", f.old_name))
                .collect::<Vec<_>>()
                .join(", ")
        };
        return Err(CreateError::Unsupported(format!(
            "the fix changes functions without an ftrace entry call ({}), which are switched for \
             every task at one instant, together with functions the kernel's livepatch switches \
             task by task ({}); mixing the two could let a task run new code against old, so such \
             a fix is not supported",
            name(true),
            name(false)
        )));
    }
    let direct = emit_direct(&mut out, &mut klp, &mut undef, directs, syms)?;
    let object = out
        .write()
        .map_err(|e| CreateError::Target(format!("writing the patch object: {e}")))?;
    Ok(Emitted {
        object,
        klp,
        funcs,
        direct,
        skipped,
    })
}

/// The patch object's undefined symbol `name` (one per name).
fn undef_symbol(out: &mut Object, undef: &mut HashMap<String, SymbolId>, name: String) -> SymbolId {
    *undef.entry(name.clone()).or_insert_with(|| {
        out.add_symbol(Symbol {
            name: name.into_bytes(),
            value: 0,
            size: 0,
            kind: SymbolKind::Unknown,
            scope: SymbolScope::Linkage,
            weak: false,
            section: SymbolSection::Undefined,
            flags: SymbolFlags::None,
        })
    })
}

fn add_reloc(
    out: &mut Object,
    section: SectionId,
    offset: u64,
    symbol: SymbolId,
    addend: i64,
    r_type: u32,
) -> Result<(), CreateError> {
    out.add_relocation(
        section,
        Relocation {
            offset,
            symbol,
            addend,
            flags: RelocationFlags::Elf { r_type },
        },
    )
    .map_err(|e| CreateError::Target(e.to_string()))
}

/// The direct redirections table `__hs_direct` and the kernel symbols its
/// code needs, `__hs_ksyms` (both empty of entries when nothing is direct,
/// and then not emitted).
fn emit_direct(
    out: &mut Object,
    klp: &mut Vec<KlpRel>,
    undef: &mut HashMap<String, SymbolId>,
    directs: Vec<(DirectFunc, SectionId, Tgt)>,
    syms: &KernelSymbols,
) -> Result<Vec<DirectFunc>, CreateError> {
    if directs.is_empty() {
        return Ok(Vec::new());
    }
    const R_X86_64_64: u32 = elf::R_X86_64_64;
    let table = ".data.hs_direct";
    let tid = out.add_section(Vec::new(), table.as_bytes().to_vec(), SectionKind::Data);
    let mut data = Vec::new();
    for (d, _, _) in &directs {
        data.extend_from_slice(&[0; 16]);
        data.extend_from_slice(&d.size.to_le_bytes());
        let mut e = [0u8; 8];
        e[..JMP_LEN].copy_from_slice(&d.expect);
        data.extend_from_slice(&e);
        data.extend_from_slice(&[0; 8]);
    }
    out.set_section_data(tid, data, 8);
    let mut result = Vec::new();
    for (i, (d, new_sec, old)) in directs.into_iter().enumerate() {
        let at = (i * DIRECT_ENTRY) as u64;
        match old {
            Tgt::Undef(name) => {
                let sym = undef_symbol(out, undef, name);
                add_reloc(out, tid, at, sym, 0, R_X86_64_64)?;
            }
            Tgt::Klp {
                obj,
                name,
                pos,
                delta,
            } => klp.push(KlpRel {
                section: table.into(),
                sec_obj: "vmlinux".into(),
                offset: at,
                r_type: R_X86_64_64,
                sym_obj: obj,
                sym: name,
                pos,
                addend: delta,
            }),
            Tgt::Sec(..) => unreachable!("an old function is never carried"),
        }
        let sym = out.section_symbol(new_sec);
        add_reloc(out, tid, at + 8, sym, 0, R_X86_64_64)?;
        result.push(d);
    }
    out.add_symbol(Symbol {
        name: b"__hs_direct".to_vec(),
        value: 0,
        size: (result.len() * DIRECT_ENTRY) as u64,
        kind: SymbolKind::Data,
        scope: SymbolScope::Linkage,
        weak: false,
        section: SymbolSection::Section(tid),
        flags: SymbolFlags::None,
    });
    let ks = ".data.hs_ksyms";
    let kid = out.add_section(Vec::new(), ks.as_bytes().to_vec(), SectionKind::Data);
    out.set_section_data(kid, vec![0; DIRECT_KSYMS.len() * 8], 8);
    for (i, name) in DIRECT_KSYMS.iter().enumerate() {
        klp.push(KlpRel {
            section: ks.into(),
            sec_obj: "vmlinux".into(),
            offset: (i * 8) as u64,
            r_type: R_X86_64_64,
            sym_obj: "vmlinux".into(),
            sym: name.to_string(),
            pos: syms.position(name, None, &[])?,
            addend: 0,
        });
    }
    out.add_symbol(Symbol {
        name: b"__hs_ksyms".to_vec(),
        value: 0,
        size: (DIRECT_KSYMS.len() * 8) as u64,
        kind: SymbolKind::Data,
        scope: SymbolScope::Linkage,
        weak: false,
        section: SymbolSection::Section(kid),
        flags: SymbolFlags::None,
    });
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// A kernel object compiled from `src` with function sections, as one
    /// side of a fix (both sides the same: only `direct_func` is asked).
    fn kobj(src: &str, owner: Option<&str>) -> (tempfile::TempDir, KObj) {
        let t = tempfile::tempdir().unwrap();
        let c = t.path().join("f.c");
        let o = t.path().join("f.o");
        std::fs::write(&c, src).unwrap();
        let st = Command::new("cc")
            .args(["-c", "-O2", "-ffunction-sections", "-fno-pic", "-o"])
            .arg(&o)
            .arg(&c)
            .status()
            .expect("cc");
        assert!(st.success());
        let pre = ObjFile::read(&o).unwrap();
        let post = ObjFile::read(&o).unwrap();
        let diff = crate::diff::diff(&pre, &post);
        let k = KObj {
            rel: "lib/f.c".into(),
            owner: owner.map(str::to_string),
            pre,
            post,
            diff,
            lines: Vec::new(),
        };
        (t, k)
    }

    fn ask(k: &KObj, name: &str) -> Result<DirectFunc, String> {
        let f = k
            .pre
            .symbols
            .iter()
            .position(|s| s.name == name && s.is_func())
            .unwrap_or_else(|| panic!("no {name}"));
        let sec = k.pre.symbols[f].section.unwrap();
        direct_func(k, sec, name).map_err(|e| e.to_string())
    }

    const SRC: &str = r#"
        __attribute__((section(".noinstr.text"))) int in_noinstr(int *p, int n)
        { int s = 0; for (int i = 0; i < n; i++) s += p[i] * i; return s; }
        int tiny(void) { return 0; }
        extern int other(int);
        int jumps_first(int x) { return other(x); }
        int ordinary(int *p, int n)
        { int s = 0; for (int i = 0; i < n; i++) s += p[i] * i; return s; }
        int branch_first(int x)
        {
            asm goto("1: .byte 0x0f,0x1f,0x44,0x00,0x00\n\t"
                     ".pushsection __jump_table, \"aw\"\n\t"
                     ".long 1b - ., %l[l] - .\n\t.quad 0\n\t.popsection" : : : : l);
            return x * 7 + 3;
        l:
            return 0;
        }
    "#;

    #[test]
    fn direct_redirection_takes_an_ordinary_function_with_its_entry_bytes() {
        let (_t, k) = kobj(SRC, None);
        let d = ask(&k, "ordinary").expect("ordinary .text function");
        let sec = &k.pre.sections[k
            .pre
            .symbols
            .iter()
            .find(|s| s.name == "ordinary")
            .unwrap()
            .section
            .unwrap()];
        assert_eq!(d.expect[..], sec.data[..JMP_LEN]);
        assert!(d.size >= JMP_LEN as u64);
    }

    #[test]
    fn direct_redirection_refuses_what_it_cannot_rewrite_safely() {
        let (_t, k) = kobj(SRC, None);
        let e = ask(&k, "in_noinstr").unwrap_err();
        assert!(
            e.contains("section .noinstr.text, not ordinary .text"),
            "{e}"
        );
        let e = ask(&k, "tiny").unwrap_err();
        assert!(e.contains("shorter than the 5-byte jump"), "{e}");
        let e = ask(&k, "jumps_first").unwrap_err();
        assert!(
            e.contains("first 5 bytes hold a relocation (to `other`)"),
            "{e}"
        );
        // A static branch (its jump label's nop) at the entry.
        let e = ask(&k, "branch_first").unwrap_err();
        assert!(
            e.contains("a site the kernel rewrites at run time (__jump_table)"),
            "{e}"
        );
        let (_t, m) = kobj(SRC, Some("xt_foo"));
        let e = ask(&m, "ordinary").unwrap_err();
        assert!(e.contains("in module xt_foo"), "{e}");
    }
}
