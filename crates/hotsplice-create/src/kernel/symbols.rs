//! What the target kernel knows about its symbols: which are exported to
//! modules (`Module.symvers`), and all of them in order (`System.map` or
//! `/proc/kallsyms`), which gives the position livepatch needs when two
//! local symbols share a name.

use crate::{io, CreateError};
use std::collections::{HashMap, HashSet};
use std::path::Path;

#[derive(Debug, Clone)]
pub struct KSym {
    pub addr: u64,
    /// `None` for vmlinux.
    pub module: Option<String>,
    /// What kind of section it is in.
    pub class: Class,
}

/// The kind of section a symbol is in: addresses are compared only
/// within one kind (text, data, read-only data and `.bss` lie far apart).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Text,
    Data,
    ReadOnly,
    Bss,
    Other,
}

impl Class {
    /// From a `System.map`/kallsyms type letter.
    fn of_letter(c: char) -> Class {
        match c.to_ascii_lowercase() {
            't' | 'w' => Class::Text,
            'd' | 'g' => Class::Data,
            'r' | 'n' => Class::ReadOnly,
            'b' | 's' => Class::Bss,
            _ => Class::Other,
        }
    }
}

/// A symbol of the object being patched (to tell same-named symbols of the
/// kernel apart).
#[derive(Debug, Clone)]
pub struct Neighbour {
    pub name: String,
    pub class: Class,
}

/// The symbols of a module's `.ko` that the kernel's module kallsyms keeps
/// (defined, named, in an allocated section that is not `__init`), in
/// symbol-table order: what livepatch counts positions in.
fn module_symtab(path: &Path) -> Result<Vec<String>, CreateError> {
    use object::{Object, ObjectSection, ObjectSymbol};
    let data = std::fs::read(path).map_err(io(format!("module {}", path.display())))?;
    let f = object::File::parse(&*data).map_err(|e| {
        CreateError::Target(format!(
            "{}: not a module ELF file ({e}); compressed modules are not read",
            path.display()
        ))
    })?;
    let mut out = Vec::new();
    for sym in f.symbols() {
        let object::SymbolSection::Section(si) = sym.section() else {
            continue;
        };
        let Ok(name) = sym.name() else { continue };
        if name.is_empty() || sym.kind() == object::SymbolKind::Section {
            continue;
        }
        let Ok(sec) = f.section_by_index(si) else {
            continue;
        };
        let object::SectionFlags::Elf { sh_flags } = sec.flags() else {
            continue;
        };
        let sname = sec.name().unwrap_or("");
        if sh_flags & u64::from(object::elf::SHF_ALLOC) == 0 || sname.starts_with(".init") {
            continue;
        }
        out.push(name.to_string());
    }
    Ok(out)
}

#[derive(Debug, Default)]
pub struct KernelSymbols {
    /// Symbols exported by vmlinux.
    exported: HashSet<String>,
    /// Symbols exported by modules, with the module's name.
    module_exports: HashMap<String, String>,
    all: Vec<KSym>,
    by_name: HashMap<String, Vec<usize>>,
    /// Module name -> its `.ko` in the target's modules directory.
    module_files: HashMap<String, std::path::PathBuf>,
    module_symtabs: std::cell::RefCell<HashMap<String, std::rc::Rc<Vec<String>>>>,
}

impl KernelSymbols {
    pub fn load(symvers: &Path, map: Option<&Path>) -> Result<KernelSymbols, CreateError> {
        let mut k = KernelSymbols::default();
        let text = std::fs::read_to_string(symvers)
            .map_err(io(format!("Module.symvers {}", symvers.display())))?;
        for l in text.lines() {
            let mut f = l.split('\t').skip(1);
            let (Some(name), Some(owner)) = (f.next(), f.next()) else {
                continue;
            };
            if owner == "vmlinux" {
                k.exported.insert(name.to_string());
            } else {
                // `sound/core/snd-pcm`: module `snd_pcm`, as the kernel
                // names it.
                let module = owner.rsplit('/').next().unwrap_or(owner).replace('-', "_");
                k.module_exports.insert(name.to_string(), module);
            }
        }
        if let Some(map) = map {
            let text = std::fs::read_to_string(map)
                .map_err(io(format!("symbol map {}", map.display())))?;
            for l in text.lines() {
                let mut f = l.split_whitespace();
                let (Some(addr), Some(ty), Some(name)) = (f.next(), f.next(), f.next()) else {
                    continue;
                };
                let module = f
                    .next()
                    .map(|m| m.trim_start_matches('[').trim_end_matches(']').to_string());
                k.by_name
                    .entry(name.to_string())
                    .or_default()
                    .push(k.all.len());
                k.all.push(KSym {
                    addr: u64::from_str_radix(addr, 16).unwrap_or(0),
                    module,
                    class: Class::of_letter(ty.chars().next().unwrap_or('?')),
                });
            }
        }
        Ok(k)
    }

    /// Read module positions from the `.ko` files under `dir` (the
    /// target's `/lib/modules/<release>`), which is what the kernel
    /// resolves livepatch symbols against, loaded or not.
    pub fn with_modules(mut self, dir: &Path) -> Result<KernelSymbols, CreateError> {
        fn walk(d: &Path, out: &mut HashMap<String, std::path::PathBuf>) {
            for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, out);
                } else if let Some(n) = p.file_name().and_then(|n| n.to_str()) {
                    if let Some(m) = n.strip_suffix(".ko") {
                        out.insert(m.replace('-', "_"), p.clone());
                    }
                }
            }
        }
        if !dir.is_dir() {
            return Err(CreateError::Target(format!(
                "modules directory {} does not exist (give the target's /lib/modules/<release> with --modules)",
                dir.display()
            )));
        }
        walk(dir, &mut self.module_files);
        Ok(self)
    }

    fn module_symbols(
        &self,
        module: &str,
    ) -> Result<Option<std::rc::Rc<Vec<String>>>, CreateError> {
        if let Some(v) = self.module_symtabs.borrow().get(module) {
            return Ok(Some(v.clone()));
        }
        let Some(path) = self.module_files.get(module) else {
            return Ok(None);
        };
        let v = std::rc::Rc::new(module_symtab(path)?);
        self.module_symtabs
            .borrow_mut()
            .insert(module.to_string(), v.clone());
        Ok(Some(v))
    }

    /// Exported by vmlinux: the module loader resolves it.
    pub fn exported(&self, name: &str) -> bool {
        self.exported.contains(name)
    }

    /// The module that exports `name`, if one does. Such references are
    /// made livepatch relocations, so that the patch does not depend on
    /// the module (and loads before it).
    pub fn exported_by_module(&self, name: &str) -> Option<&str> {
        self.module_exports.get(name).map(String::as_str)
    }

    pub fn has_map(&self) -> bool {
        !self.all.is_empty()
    }

    fn candidates(&self, name: &str, module: Option<&str>) -> Vec<&KSym> {
        self.by_name
            .get(name)
            .map(|v| {
                v.iter()
                    .map(|&i| &self.all[i])
                    .filter(|s| s.module.as_deref() == module)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Which object defines `name` (vmlinux preferred), if the map says.
    pub fn owner_of(&self, name: &str) -> Option<Option<String>> {
        let v = self.by_name.get(name)?;
        if v.iter().any(|&i| self.all[i].module.is_none()) {
            return Some(None);
        }
        v.first().map(|&i| self.all[i].module.clone())
    }

    /// The livepatch position of `name` in `module` (0: unique). When
    /// several local symbols share the name, the one among the symbols of
    /// the patched object file (`neighbours`) is meant: for a module, in
    /// its `.ko`'s symbol table, where each object file's symbols lie
    /// together; for vmlinux, the nearest by address to a uniquely named
    /// symbol of the file in the same kind of section.
    pub fn position(
        &self,
        name: &str,
        module: Option<&str>,
        neighbours: &[Neighbour],
    ) -> Result<u64, CreateError> {
        if let Some(m) = module {
            if let Some(tab) = self.module_symbols(m)? {
                return position_in_symtab(&tab, name, m, neighbours);
            }
        }
        if !self.has_map() {
            return Ok(0);
        }
        let c = self.candidates(name, module);
        if c.len() <= 1 {
            return Ok(0);
        }
        let ambiguous = || {
            CreateError::Unsupported(format!(
                "`{name}` is defined {} times in {} and nothing tells which one the patch means",
                c.len(),
                module.unwrap_or("vmlinux")
            ))
        };
        let class = c[0].class;
        if c.iter().any(|s| s.class != class) {
            return Err(ambiguous());
        }
        let anchors: Vec<u64> = neighbours
            .iter()
            .filter(|n| n.class == class)
            .filter_map(|n| {
                let v = self.candidates(&n.name, module);
                (v.len() == 1 && v[0].class == class).then(|| v[0].addr)
            })
            .collect();
        if anchors.is_empty() {
            return Err(ambiguous());
        }
        let dist = |s: &KSym| {
            anchors
                .iter()
                .map(|a| a.abs_diff(s.addr))
                .min()
                .unwrap_or(u64::MAX)
        };
        let best = c
            .iter()
            .enumerate()
            .min_by_key(|(_, s)| dist(s))
            .map(|(i, _)| i)
            .unwrap_or(0);
        Ok(best as u64 + 1)
    }
}

/// The position of `name` in a module's kept symbols `tab`: the candidate
/// whose stretch of the table holds the most symbols of the patched file.
fn position_in_symtab(
    tab: &[String],
    name: &str,
    module: &str,
    neighbours: &[Neighbour],
) -> Result<u64, CreateError> {
    let c: Vec<usize> = tab
        .iter()
        .enumerate()
        .filter(|(_, n)| *n == name)
        .map(|(i, _)| i)
        .collect();
    match c.len() {
        0 => {
            return Err(CreateError::MissingSymbol {
                symbol: name.to_string(),
                target: format!("module {module}"),
            })
        }
        1 => return Ok(0),
        _ => {}
    }
    let ours: HashSet<&str> = neighbours
        .iter()
        .map(|n| n.name.as_str())
        .filter(|n| *n != name)
        .collect();
    let w = neighbours.len().max(1);
    let score = |i: usize| {
        tab[i.saturating_sub(w)..(i + w + 1).min(tab.len())]
            .iter()
            .filter(|n| ours.contains(n.as_str()))
            .count()
    };
    let scores: Vec<usize> = c.iter().map(|&i| score(i)).collect();
    let best = *scores.iter().max().unwrap_or(&0);
    if best == 0 || scores.iter().filter(|&&s| s == best).count() > 1 {
        return Err(CreateError::Unsupported(format!(
            "`{name}` is defined {} times in module {module} and its symbol table does not tell which one the patch means",
            c.len()
        )));
    }
    let at = scores.iter().position(|&s| s == best).unwrap_or(0);
    Ok(at as u64 + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn syms(map: &str) -> KernelSymbols {
        let dir = tempfile::tempdir().unwrap();
        let symvers = dir.path().join("Module.symvers");
        std::fs::write(
            &symvers,
            "0x1\tprintk\tvmlinux\tEXPORT_SYMBOL\t\n0x2\tsnd_pcm_new\tsound/core/snd-pcm\tEXPORT_SYMBOL\t\n",
        )
        .unwrap();
        let m = dir.path().join("System.map");
        std::fs::write(&m, map).unwrap();
        KernelSymbols::load(&symvers, Some(&m)).unwrap()
    }

    const MAP: &str = "\
ffffffff81000100 t show_a
ffffffff81000200 t helper
ffffffff81000300 T first_file_global
ffffffff81500100 t helper
ffffffff81500200 T second_file_global
ffffffffc0000100 t helper\t[ext4]
";

    #[test]
    fn unique_local_has_position_zero() {
        assert_eq!(syms(MAP).position("show_a", None, &[]).unwrap(), 0);
    }

    fn n(names: &[(&str, Class)]) -> Vec<Neighbour> {
        names
            .iter()
            .map(|(name, class)| Neighbour {
                name: name.to_string(),
                class: *class,
            })
            .collect()
    }

    #[test]
    fn same_named_locals_are_told_apart_by_their_neighbours() {
        let k = syms(MAP);
        let second = n(&[("second_file_global", Class::Text)]);
        let first = n(&[("first_file_global", Class::Text)]);
        assert_eq!(k.position("helper", None, &second).unwrap(), 2);
        assert_eq!(k.position("helper", None, &first).unwrap(), 1);
        // The module's own symbol is counted in the module only.
        assert_eq!(k.position("helper", Some("ext4"), &[]).unwrap(), 0);
        assert!(k.position("helper", None, &[]).is_err());
        assert!(k.exported("printk") && !k.exported("helper"));
        assert!(!k.exported("snd_pcm_new"));
        assert_eq!(k.exported_by_module("snd_pcm_new"), Some("snd_pcm"));
        assert_eq!(k.owner_of("helper"), Some(None));
    }

    #[test]
    fn bss_symbols_are_placed_by_bss_neighbours_only() {
        // Two `__key.12` in .bss; the file's function lies right next to
        // the wrong one's address, its .bss neighbour next to the right one.
        let k = syms(
            "ffffffff81000100 t show_a\n\
             ffffffff81000110 b __key.12\n\
             ffffffff82000100 b __key.12\n\
             ffffffff82000108 b file_counter\n",
        );
        let ours = n(&[("show_a", Class::Text), ("file_counter", Class::Bss)]);
        assert_eq!(k.position("__key.12", None, &ours).unwrap(), 2);
        let text_only = n(&[("show_a", Class::Text)]);
        assert!(k.position("__key.12", None, &text_only).is_err());
    }

    #[test]
    fn module_positions_come_from_the_module_symbol_table() {
        let tab: Vec<String> = [
            "a_init", "__key.12", "a_helper", "a_table", // a.o
            "b_show", "b_state", "__key.12", "b_other", // b.o
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let b = n(&[
            ("b_show", Class::Text),
            ("b_state", Class::Data),
            ("__key.12", Class::Bss),
            ("b_other", Class::Text),
        ]);
        assert_eq!(position_in_symtab(&tab, "__key.12", "m", &b).unwrap(), 2);
        let a = n(&[("a_init", Class::Text), ("a_helper", Class::Text)]);
        assert_eq!(position_in_symtab(&tab, "__key.12", "m", &a).unwrap(), 1);
        assert_eq!(position_in_symtab(&tab, "b_show", "m", &a).unwrap(), 0);
        assert!(position_in_symtab(&tab, "gone", "m", &a).is_err());
        assert!(position_in_symtab(&tab, "__key.12", "m", &[]).is_err());
    }
}
