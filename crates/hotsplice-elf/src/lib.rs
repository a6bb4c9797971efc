//! What hotsplice needs to know about linked ELF objects (executables and
//! shared libraries): identity (GNU build-id), symbols with the source file
//! each local symbol came from, the TLS segment, the GOT entries the dynamic
//! loader fills for thread-local variables, and the symbols an object
//! exports to others.
//!
//! ```no_run
//! let data = std::fs::read("/bin/true").unwrap();
//! let elf = hotsplice_elf::LinkedElf::parse(&data).unwrap();
//! println!("{}", hex::encode(elf.build_id.unwrap_or_default()));
//! ```

use hotsplice_arch::current as arch;
use object::elf;
use object::read::elf::{
    Dyn as _, ElfFile64, FileHeader as _, ProgramHeader as _, Rela as _, SectionHeader as _,
    Sym as _,
};
use object::{Endianness, Object as _};

#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    #[error("not a 64-bit ELF file: {0}")]
    Parse(String),
    #[error("symbol `{name}`{} not found in {object}", file.as_ref().map(|f| format!(" (from {f})")).unwrap_or_default())]
    NotFound {
        name: String,
        file: Option<String>,
        object: String,
    },
    #[error("symbol `{name}` is ambiguous in {object}: {count} local symbols share the name and no source file tells them apart")]
    Ambiguous {
        name: String,
        count: usize,
        object: String,
    },
}

fn perr(e: object::Error) -> ElfError {
    ElfError::Parse(e.to_string())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SymKind {
    Func,
    Object,
    Tls,
    Ifunc,
    Other,
}

/// A symbol of a linked object.
#[derive(Debug, Clone)]
pub struct Sym {
    pub name: String,
    pub value: u64,
    pub size: u64,
    pub kind: SymKind,
    pub local: bool,
    pub defined: bool,
    /// For local symbols: the `STT_FILE` entry that precedes them.
    pub file: Option<String>,
}

/// A GOT entry the dynamic loader fills for TLS access.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsGot {
    /// First word of a (module id, offset) pair; `symbol` None for the
    /// module's own local-dynamic pair.
    ModuleId { got: u64, symbol: Option<String> },
    /// A thread-pointer offset (initial-exec access).
    TpOffset { got: u64, symbol: String },
    /// The thread-pointer offset of the object's own variable at `offset`
    /// in its TLS block, relocated without a symbol: what the linker makes
    /// of an initial-exec access to a local or hidden variable (glibc's
    /// `__libc_errno`).
    OwnTpOffset { got: u64, offset: u64 },
}

/// A linked executable or shared library.
#[derive(Debug, Clone)]
pub struct LinkedElf {
    pub build_id: Option<Vec<u8>>,
    /// ET_EXEC: loaded at its link-time addresses.
    pub fixed: bool,
    /// An executable (PIE or not), as opposed to a shared library.
    pub executable: bool,
    pub soname: Option<String>,
    /// From `.symtab`; empty when the file is stripped (see `has_symtab`).
    pub symbols: Vec<Sym>,
    /// The file has a `.symtab` (a stripped one has only `.dynsym`).
    pub has_symtab: bool,
    /// `.gnu_debuglink`: the name of the separate debug file.
    pub debuglink: Option<String>,
    /// `(p_vaddr, p_memsz, p_align)` of PT_TLS.
    pub tls: Option<(u64, u64, u64)>,
    pub tls_got: Vec<TlsGot>,
    /// Loadable segments: `(vaddr, file offset, filesz, memsz)`.
    pub segments: Vec<(u64, u64, u64, u64)>,
}

impl LinkedElf {
    pub fn parse(data: &[u8]) -> Result<LinkedElf, ElfError> {
        let file = ElfFile64::<Endianness>::parse(data).map_err(perr)?;
        let endian = file.endian();
        let header = file.elf_header();
        let fixed = header.e_type(endian) == elf::ET_EXEC;
        let build_id = file.build_id().map_err(perr)?.map(|b| b.to_vec());

        let mut tls = None;
        let mut segments = Vec::new();
        for ph in file.elf_program_headers() {
            match ph.p_type(endian) {
                elf::PT_TLS => {
                    tls = Some((
                        ph.p_vaddr(endian),
                        ph.p_memsz(endian),
                        ph.p_align(endian).max(1),
                    ))
                }
                elf::PT_LOAD => segments.push((
                    ph.p_vaddr(endian),
                    ph.p_offset(endian),
                    ph.p_filesz(endian),
                    ph.p_memsz(endian),
                )),
                _ => {}
            }
        }

        let symbols = read_symbols(file.elf_symbol_table(), endian, true)?;
        let has_symtab = !file.elf_symbol_table().is_empty();
        let debuglink = file
            .gnu_debuglink()
            .ok()
            .flatten()
            .map(|(name, _crc)| String::from_utf8_lossy(name).into_owned());

        let sections = file.elf_section_table();
        let dynsyms = file.elf_dynamic_symbol_table();
        let dyn_name = |index: u32| -> Option<String> {
            if index == 0 {
                return None;
            }
            let sym = dynsyms.symbol(object::SymbolIndex(index as usize)).ok()?;
            let name = dynsyms.symbol_name(endian, sym).ok()?;
            Some(String::from_utf8_lossy(name).into_owned())
        };
        let mut tls_got = Vec::new();
        let mut soname = None;
        let mut pie = false;
        for section in sections.iter() {
            if section.sh_type(endian) == elf::SHT_RELA {
                let Ok(Some((relas, _))) = section.rela(endian, data) else {
                    continue;
                };
                for rela in relas {
                    let r_type = rela.r_type(endian, false);
                    let sym = rela.r_sym(endian, false);
                    let got = rela.r_offset(endian);
                    match r_type {
                        arch::R_DTPMOD64 => tls_got.push(TlsGot::ModuleId {
                            got,
                            symbol: dyn_name(sym),
                        }),
                        arch::R_TPOFF64 => match dyn_name(sym) {
                            Some(symbol) => tls_got.push(TlsGot::TpOffset { got, symbol }),
                            None => tls_got.push(TlsGot::OwnTpOffset {
                                got,
                                offset: rela.r_addend(endian) as u64,
                            }),
                        },
                        _ => {}
                    }
                }
            }
            if section.sh_type(endian) == elf::SHT_DYNAMIC {
                if let Ok(Some((dyns, link))) = section.dynamic(endian, data) {
                    let strings = sections.strings(endian, data, link).ok();
                    for d in dyns {
                        if d.tag32(endian) == Some(elf::DT_FLAGS_1)
                            && d.d_val(endian) & elf::DF_1_PIE as u64 != 0
                        {
                            pie = true;
                        }
                        if d.tag32(endian) == Some(elf::DT_SONAME) {
                            if let Some(s) =
                                strings.as_ref().and_then(|st| d.string(endian, *st).ok())
                            {
                                soname = Some(String::from_utf8_lossy(s).into_owned());
                            }
                        }
                    }
                }
            }
        }

        Ok(LinkedElf {
            build_id,
            fixed,
            executable: fixed || pie,
            soname,
            symbols,
            has_symtab,
            debuglink,
            tls,
            tls_got,
            segments,
        })
    }

    /// The defined symbol `name`; for a local symbol, `file` (the source file
    /// name as the compiler recorded it) picks among same-named statics.
    /// Globals win over locals when no file is given.
    pub fn lookup(&self, name: &str, file: Option<&str>, object: &str) -> Result<&Sym, ElfError> {
        let candidates: Vec<&Sym> = self
            .symbols
            .iter()
            .filter(|s| s.defined && s.name == name)
            .collect();
        if let Some(f) = file {
            let same_file: Vec<&Sym> = candidates
                .iter()
                .copied()
                .filter(|s| s.local && s.file.as_deref().is_some_and(|sf| same_source(sf, f)))
                .collect();
            if same_file.len() == 1 {
                return Ok(same_file[0]);
            }
        }
        if let Some(g) = candidates.iter().find(|s| !s.local) {
            return Ok(g);
        }
        if let Some(g) = self.former_global(name) {
            return Ok(g);
        }
        match candidates.len() {
            0 => Err(ElfError::NotFound {
                name: name.into(),
                file: file.map(Into::into),
                object: object.into(),
            }),
            1 => Ok(candidates[0]),
            n => Err(ElfError::Ambiguous {
                name: name.into(),
                count: n,
                object: object.into(),
            }),
        }
    }

    /// The symbol `name` that was global in the objects linked and was made
    /// local by a version script (`local: *;`): the linker lists such
    /// symbols after an unnamed `STT_FILE`. A global name is unique in a
    /// link, so at most one such symbol answers to it.
    pub fn former_global(&self, name: &str) -> Option<&Sym> {
        let mut hits = self.symbols.iter().filter(|s| {
            s.defined
                && s.local
                && s.name == name
                && !matches!(s.file.as_deref(), Some(f) if !f.is_empty())
        });
        let first = hits.next()?;
        hits.next().is_none().then_some(first)
    }

    /// Bytes at link-time address `vaddr` as stored in the file.
    pub fn read_vaddr<'a>(&self, data: &'a [u8], vaddr: u64, len: u64) -> Option<&'a [u8]> {
        for &(seg_vaddr, off, filesz, _) in &self.segments {
            if vaddr >= seg_vaddr && vaddr + len <= seg_vaddr + filesz {
                let start = (off + vaddr - seg_vaddr) as usize;
                return data.get(start..start + len as usize);
            }
        }
        None
    }

    /// Offset from the thread pointer of a TLS symbol of an executable
    /// (x86_64 TLS variant II: the executable's block ends at the TP).
    pub fn exec_tpoff(&self, sym: &Sym) -> Option<i64> {
        let (_, memsz, align) = self.tls?;
        let block = memsz.div_ceil(align) * align;
        Some(sym.value as i64 - block as i64)
    }

    /// Lowest link-time address of a loadable segment.
    pub fn first_vaddr(&self) -> u64 {
        self.segments.iter().map(|s| s.0).min().unwrap_or(0) & !0xfff
    }
}

/// The defined symbols of `.dynsym` (what a stripped file still names),
/// as globals without source files.
pub fn dynamic_symbols(data: &[u8]) -> Result<Vec<Sym>, ElfError> {
    let file = ElfFile64::<Endianness>::parse(data).map_err(perr)?;
    let mut syms = read_symbols(file.elf_dynamic_symbol_table(), file.endian(), false)?;
    syms.retain(|s| s.defined);
    Ok(syms)
}

/// `a` and `b` name the same source file (one may carry directories).
pub fn same_source(a: &str, b: &str) -> bool {
    a == b || a.rsplit('/').next() == b.rsplit('/').next()
}

fn read_symbols(
    table: &object::read::elf::SymbolTable<'_, elf::FileHeader64<Endianness>>,
    endian: Endianness,
    with_files: bool,
) -> Result<Vec<Sym>, ElfError> {
    let mut out = Vec::with_capacity(table.len());
    let mut file: Option<String> = None;
    for sym in table.iter() {
        let name =
            String::from_utf8_lossy(table.symbol_name(endian, sym).map_err(perr)?).into_owned();
        let st_type = sym.st_type();
        if st_type == elf::STT_FILE {
            file = Some(name);
            continue;
        }
        if st_type == elf::STT_SECTION || name.is_empty() {
            continue;
        }
        let local = sym.st_bind() == elf::STB_LOCAL;
        let kind = match st_type {
            elf::STT_FUNC => SymKind::Func,
            elf::STT_OBJECT | elf::STT_COMMON => SymKind::Object,
            elf::STT_TLS => SymKind::Tls,
            elf::STT_GNU_IFUNC => SymKind::Ifunc,
            _ => SymKind::Other,
        };
        out.push(Sym {
            // Linked .symtab names may carry a version (`printf@GLIBC_2.2.5`).
            name: name.split('@').next().unwrap_or("").to_string(),
            value: sym.st_value(endian),
            size: sym.st_size(endian),
            kind,
            local,
            defined: sym.st_shndx(endian) != elf::SHN_UNDEF,
            file: if local && with_files {
                file.clone()
            } else {
                None
            },
        });
    }
    Ok(out)
}

/// A symbol one object exports to the others (`.dynsym`, default version).
#[derive(Debug, Clone)]
pub struct Export {
    pub value: u64,
    pub ifunc: bool,
    pub tls: bool,
}

/// Defined, exported symbols of an object, by name; hidden (non-default)
/// versions are left out so `memcpy` means `memcpy@@GLIBC_2.14`.
pub fn exports(data: &[u8]) -> Result<std::collections::HashMap<String, Export>, ElfError> {
    let file = ElfFile64::<Endianness>::parse(data).map_err(perr)?;
    let endian = file.endian();
    let table = file.elf_dynamic_symbol_table();
    let versions = file
        .elf_section_table()
        .versions(endian, data)
        .ok()
        .flatten();
    let mut out = std::collections::HashMap::new();
    for (index, sym) in table.enumerate() {
        if sym.st_shndx(endian) == elf::SHN_UNDEF || sym.st_bind() == elf::STB_LOCAL {
            continue;
        }
        if let Some(v) = &versions {
            if v.version_index(endian, index).is_hidden() {
                continue;
            }
        }
        let Ok(name) = table.symbol_name(endian, sym) else {
            continue;
        };
        let name = String::from_utf8_lossy(name).into_owned();
        let export = Export {
            value: sym.st_value(endian),
            ifunc: sym.st_type() == elf::STT_GNU_IFUNC,
            tls: sym.st_type() == elf::STT_TLS,
        };
        // A strong definition wins over a weak one.
        let strong = sym.st_bind() == elf::STB_GLOBAL;
        if strong || !out.contains_key(&name) {
            out.insert(name, export);
        }
    }
    Ok(out)
}

/// GNU build-id of an ELF file, if it has one.
pub fn build_id(data: &[u8]) -> Option<Vec<u8>> {
    let file = object::File::parse(data).ok()?;
    file.build_id().ok().flatten().map(|b| b.to_vec())
}

/// Parse a GNU build-id from a PT_NOTE segment's bytes.
pub fn build_id_from_notes(notes: &[u8]) -> Option<Vec<u8>> {
    let mut pos = 0usize;
    while pos + 12 <= notes.len() {
        let namesz = u32::from_le_bytes(notes[pos..pos + 4].try_into().ok()?) as usize;
        let descsz = u32::from_le_bytes(notes[pos + 4..pos + 8].try_into().ok()?) as usize;
        let ntype = u32::from_le_bytes(notes[pos + 8..pos + 12].try_into().ok()?);
        let name_start = pos + 12;
        let desc_start = name_start + namesz.div_ceil(4) * 4;
        let next = desc_start + descsz.div_ceil(4) * 4;
        if ntype == elf::NT_GNU_BUILD_ID
            && notes.get(name_start..name_start + namesz) == Some(b"GNU\0")
        {
            return notes
                .get(desc_start..desc_start + descsz)
                .map(|d| d.to_vec());
        }
        pos = next;
    }
    None
}
