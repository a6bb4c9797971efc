//! A relocatable object (`.o`) as the comparison sees it: sections with their
//! relocations and the symbols defined in each.

use hotsplice_arch::current::{self as arch, ElfReloc};
use object::elf;
use object::read::elf::{ElfFile64, FileHeader as _, Rela as _, SectionHeader as _, Sym as _};
use object::Endianness;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct Reloc {
    pub offset: u64,
    pub kind: ElfReloc,
    pub sym: usize,
    pub addend: i64,
}

#[derive(Debug, Clone)]
pub struct Section {
    pub name: String,
    pub data: Vec<u8>,
    pub size: u64,
    pub align: u64,
    pub alloc: bool,
    pub exec: bool,
    pub write: bool,
    pub merge: bool,
    pub strings: bool,
    pub tls: bool,
    pub nobits: bool,
    pub entsize: u64,
    pub relocs: Vec<Reloc>,
    /// Named symbols defined here, by ascending value.
    pub symbols: Vec<usize>,
}

#[derive(Debug, Clone)]
pub struct Symbol {
    pub name: String,
    pub value: u64,
    pub size: u64,
    pub st_type: u8,
    pub local: bool,
    /// Defining section index; None for undefined or absolute symbols.
    pub section: Option<usize>,
    pub undefined: bool,
}

impl Symbol {
    pub fn is_section(&self) -> bool {
        self.st_type == elf::STT_SECTION
    }
    /// Assembler-local labels (`.LC0`), which stand for a place, not a name.
    pub fn is_label(&self) -> bool {
        self.name.starts_with(".L") || self.name.is_empty()
    }
    pub fn is_func(&self) -> bool {
        self.st_type == elf::STT_FUNC || self.st_type == elf::STT_GNU_IFUNC
    }
}

#[derive(Debug)]
pub struct ObjFile {
    pub path: PathBuf,
    /// The source file name the compiler recorded (`STT_FILE`).
    pub source: Option<String>,
    pub sections: Vec<Section>,
    pub symbols: Vec<Symbol>,
    by_name: HashMap<String, usize>,
}

impl ObjFile {
    pub fn read(path: &Path) -> Result<ObjFile, String> {
        let data = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let file = ElfFile64::<Endianness>::parse(&*data)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if file.elf_header().e_type(file.endian()) != elf::ET_REL {
            return Err(format!("{}: not a relocatable object", path.display()));
        }
        Self::parse(path, &data).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn parse(path: &Path, data: &[u8]) -> Result<ObjFile, object::Error> {
        let file = ElfFile64::<Endianness>::parse(data)?;
        let endian = file.endian();
        let table = file.elf_section_table();
        let mut sections = Vec::with_capacity(table.len());
        for sh in table.iter() {
            let flags = sh.sh_flags(endian);
            let nobits = sh.sh_type(endian) == elf::SHT_NOBITS;
            sections.push(Section {
                name: String::from_utf8_lossy(table.section_name(endian, sh)?).into_owned(),
                data: if nobits {
                    Vec::new()
                } else {
                    sh.data(endian, data).unwrap_or(&[]).to_vec()
                },
                size: sh.sh_size(endian),
                align: sh.sh_addralign(endian).max(1),
                alloc: flags & elf::SHF_ALLOC as u64 != 0,
                exec: flags & elf::SHF_EXECINSTR as u64 != 0,
                write: flags & elf::SHF_WRITE as u64 != 0,
                merge: flags & elf::SHF_MERGE as u64 != 0,
                strings: flags & elf::SHF_STRINGS as u64 != 0,
                tls: flags & elf::SHF_TLS as u64 != 0,
                nobits,
                entsize: sh.sh_entsize(endian),
                relocs: Vec::new(),
                symbols: Vec::new(),
            });
        }
        for sh in table.iter() {
            if sh.sh_type(endian) != elf::SHT_RELA {
                continue;
            }
            let target = sh.sh_info(endian) as usize;
            let Some((relas, _)) = sh.rela(endian, data)? else {
                continue;
            };
            let mut list: Vec<Reloc> = relas
                .iter()
                .map(|r| Reloc {
                    offset: r.r_offset(endian),
                    kind: ElfReloc::from_elf(r.r_type(endian, false)),
                    sym: r.r_sym(endian, false) as usize,
                    addend: r.r_addend(endian),
                })
                .collect();
            list.sort_by_key(|r| r.offset);
            if let Some(s) = sections.get_mut(target) {
                s.relocs = list;
            }
        }
        let symtab = file.elf_symbol_table();
        let mut symbols = Vec::with_capacity(symtab.len());
        let mut source = None;
        for sym in symtab.iter() {
            let name = String::from_utf8_lossy(symtab.symbol_name(endian, sym)?).into_owned();
            let shndx = sym.st_shndx(endian);
            let st_type = sym.st_type();
            if st_type == elf::STT_FILE && source.is_none() {
                source = Some(name.clone());
            }
            let section = if shndx != elf::SHN_UNDEF
                && (shndx as usize) < sections.len()
                && shndx < elf::SHN_LORESERVE
            {
                Some(shndx as usize)
            } else {
                None
            };
            symbols.push(Symbol {
                name,
                value: sym.st_value(endian),
                size: sym.st_size(endian),
                st_type,
                local: sym.st_bind() == elf::STB_LOCAL,
                section,
                undefined: shndx == elf::SHN_UNDEF,
            });
        }
        let mut by_name = HashMap::new();
        for (i, s) in symbols.iter().enumerate() {
            if s.is_section() || s.is_label() || s.st_type == elf::STT_FILE {
                continue;
            }
            if let Some(sec) = s.section {
                sections[sec].symbols.push(i);
                by_name.insert(s.name.clone(), i);
            }
        }
        for sec in &mut sections {
            sec.symbols.sort_by_key(|&i| symbols[i].value);
        }
        Ok(ObjFile {
            path: path.to_path_buf(),
            source,
            sections,
            symbols,
            by_name,
        })
    }

    /// Index of the section called `name`.
    pub fn section_named(&self, name: &str) -> Option<usize> {
        self.sections.iter().position(|s| s.name == name)
    }

    /// The defined symbol called `name`.
    pub fn symbol_named(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    /// The named symbol of `sec` that covers offset `t`, if any.
    pub fn symbol_at(&self, sec: usize, t: i64) -> Option<usize> {
        let s = &self.sections[sec];
        let mut best = None;
        for &i in &s.symbols {
            let sym = &self.symbols[i];
            let v = sym.value as i64;
            if v <= t && (t < v + sym.size.max(1) as i64) {
                best = Some(i);
            }
        }
        best
    }

    /// Like [`ObjFile::symbol_at`], but of several symbols at the place,
    /// one whose name is not numbered per build (see [`numbered_base`]):
    /// `queue_map_btf_ids` rather than the `__BTF_ID__…__316264` at the
    /// same address.
    pub fn stable_symbol_at(&self, sec: usize, t: i64) -> Option<usize> {
        let s = &self.sections[sec];
        let covers = |i: usize| {
            let sym = &self.symbols[i];
            let v = sym.value as i64;
            v <= t && t < v + sym.size.max(1) as i64
        };
        s.symbols
            .iter()
            .copied()
            .rev()
            .find(|&i| covers(i) && numbered_base(&self.symbols[i].name).is_none())
            .or_else(|| self.symbol_at(sec, t))
    }

    /// The function symbol a text section was made for.
    pub fn function_of(&self, sec: usize) -> Option<usize> {
        self.sections[sec]
            .symbols
            .iter()
            .copied()
            .find(|&i| self.symbols[i].is_func() && self.symbols[i].value == 0)
    }
}

/// Where a relocation points, described so that the same reference in two
/// builds compares equal.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Ref {
    /// A named symbol (plus offset from it).
    Named { name: String, delta: i64 },
    /// A symbol defined elsewhere.
    Undefined { name: String },
    /// An item of a mergeable section (string or constant), by content.
    Merged { content: Vec<u8>, delta: i64 },
    /// A place in a section without symbols (e.g. a jump table), by name.
    Anonymous { section: String, offset: i64 },
    /// Absolute or otherwise unresolvable.
    Other,
}

/// A relocation resolved to a section: `(section, offset of the symbol in
/// it)`; the address is `section + sym_offset + addend`.
pub struct Located {
    pub section: usize,
    pub sym_offset: u64,
    /// The offset in `section` the instruction actually refers to.
    pub referenced: i64,
}

impl ObjFile {
    /// Compiler-made read-only data with a numbered local name (`CSWTCH.12`,
    /// `__func__.3`, `descriptor.7`): the number changes from build to
    /// build, the bytes are what counts, and a copy is as good as the
    /// original.
    pub fn is_numbered_const(&self, sym: usize) -> bool {
        let s = &self.symbols[sym];
        let Some(sec) = s.section else { return false };
        let sec = &self.sections[sec];
        s.local
            && !sec.exec
            && !sec.write
            && s.name.rsplit_once('.').is_some_and(|(base, n)| {
                !base.is_empty() && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())
            })
    }

    /// For a relocation in section `in_sec`: which section and where.
    pub fn locate(&self, in_sec: usize, r: &Reloc) -> Option<Located> {
        let sym = &self.symbols[r.sym];
        let section = sym.section?;
        let sym_offset = if sym.is_section() { 0 } else { sym.value };
        let adjust = if r.kind.is_pc_relative() && self.sections[in_sec].exec {
            arch::pc_field_to_insn_end(&self.sections[in_sec].data, r.offset as usize).unwrap_or(4)
        } else if r.kind.is_pc_relative() {
            4
        } else {
            0
        };
        Some(Located {
            section,
            sym_offset,
            referenced: sym_offset as i64 + r.addend + adjust,
        })
    }

    /// A build-independent description of what `r` (in `in_sec`) refers to.
    pub fn describe(&self, in_sec: usize, r: &Reloc) -> Ref {
        let sym = &self.symbols[r.sym];
        if sym.undefined {
            return Ref::Undefined {
                name: sym.name.clone(),
            };
        }
        if !sym.is_section() && !sym.is_label() && !self.is_numbered_const(r.sym) {
            return Ref::Named {
                name: stable_name(&sym.name),
                delta: r.addend,
            };
        }
        let Some(loc) = self.locate(in_sec, r) else {
            return Ref::Other;
        };
        let sec = &self.sections[loc.section];
        if sec.merge {
            let (start, content) = merged_item(sec, loc.referenced);
            return Ref::Merged {
                content,
                delta: loc.sym_offset as i64 + r.addend - start,
            };
        }
        if let Some(i) = self.stable_symbol_at(loc.section, loc.referenced) {
            let s = &self.symbols[i];
            if self.is_numbered_const(i) {
                let (bytes, refs) = normalized(self, loc.section);
                let refs: Vec<String> = refs.iter().map(|r| format!("{r:?}")).collect();
                let mut content = bytes;
                content.extend_from_slice(refs.join(";").as_bytes());
                return Ref::Merged {
                    content,
                    delta: loc.sym_offset as i64 + r.addend - s.value as i64,
                };
            }
            return Ref::Named {
                name: stable_name(&s.name),
                delta: loc.sym_offset as i64 + r.addend - s.value as i64,
            };
        }
        Ref::Anonymous {
            section: sec.name.clone(),
            offset: loc.sym_offset as i64 + r.addend,
        }
    }
}

/// Names that macros number per build with `__COUNTER__` and `__LINE__`,
/// without the number: `__BTF_ID__struct__bpf_queue_stack__316264` (a
/// `.BTF_ids` slot, which the link fills with the type's BTF id: the name
/// without the number says what it will hold) and `__UNIQUE_ID_ddebug326.14`
/// (a dynamic-debug descriptor: compared by which call site uses it).
pub fn numbered_base(name: &str) -> Option<&str> {
    if let Some(rest) = name.strip_prefix("__BTF_ID__") {
        let base = name.trim_end_matches(|c: char| c.is_ascii_digit());
        return (base.len() < name.len() && base.ends_with("__") && rest.len() > 2).then_some(base);
    }
    if name.starts_with("__UNIQUE_ID_") {
        let base = name.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.');
        return (base.len() < name.len()).then_some(base);
    }
    None
}

/// `name` as two builds can compare it (see [`numbered_base`]).
fn stable_name(name: &str) -> String {
    numbered_base(name).unwrap_or(name).to_string()
}

/// The item of a mergeable section that contains offset `t`: its start and
/// bytes (a NUL-terminated string, or one `entsize` constant).
pub fn merged_item(sec: &Section, t: i64) -> (i64, Vec<u8>) {
    let len = sec.data.len() as i64;
    let t = t.clamp(0, len.max(1) - 1);
    if sec.strings {
        let mut start = t as usize;
        while start > 0 && sec.data[start - 1] != 0 {
            start -= 1;
        }
        let mut end = t as usize;
        while end < sec.data.len() && sec.data[end] != 0 {
            end += 1;
        }
        let end = (end + 1).min(sec.data.len());
        (start as i64, sec.data[start..end].to_vec())
    } else {
        let e = sec.entsize.max(1) as i64;
        let start = t / e * e;
        let end = (start + e).min(len);
        (start, sec.data[start as usize..end as usize].to_vec())
    }
}

/// Section contents with relocation fields zeroed, and what each relocation
/// refers to: equal for two builds exactly when the code is the same.
pub fn normalized(obj: &ObjFile, sec: usize) -> (Vec<u8>, Vec<(u64, ElfReloc, Ref)>) {
    let s = &obj.sections[sec];
    let mut bytes = if s.nobits {
        vec![0; s.size as usize]
    } else {
        s.data.clone()
    };
    let mut refs = Vec::with_capacity(s.relocs.len());
    for r in &s.relocs {
        let start = r.offset as usize;
        let end = (start + r.kind.field_size()).min(bytes.len());
        if start < end {
            bytes[start..end].fill(0);
        }
        refs.push((r.offset, r.kind, obj.describe(sec, r)));
    }
    (bytes, refs)
}

/// Test helper: `src` compiled by `cc -O1 -ffunction-sections
/// -fdata-sections -c` into `dir/NAME.o`, read.
#[cfg(test)]
pub(crate) fn compiled(dir: &Path, name: &str, src: &str) -> ObjFile {
    let c = dir.join(format!("{name}.c"));
    std::fs::write(&c, src).unwrap();
    let obj = c.with_extension("o");
    let st = std::process::Command::new("cc")
        .args(["-O1", "-ffunction-sections", "-fdata-sections", "-c", "-o"])
        .arg(&obj)
        .arg(&c)
        .status()
        .unwrap();
    assert!(st.success(), "cc {}", c.display());
    ObjFile::read(&obj).unwrap()
}
