//! Adding livepatch relocation sections (`.klp.rela.<obj>.<section>`) and
//! livepatch symbols (`.klp.sym.<obj>.<name>,<pos>`, `SHN_LIVEPATCH`) to a
//! built module, as `Documentation/livepatch/module-elf-format.rst`
//! describes: the module loader leaves them alone and livepatch applies
//! them once the symbols' objects are present.

use super::emit::KlpRel;
use crate::CreateError;
use object::elf::{
    FileHeader64, Rela64, SectionHeader64, Sym64, ELFCLASS64, ELFDATA2LSB, ELFMAG, SHF_ALLOC,
    SHF_INFO_LINK, SHT_RELA, SHT_SYMTAB, STB_GLOBAL, STT_NOTYPE,
};
use object::{pod, LittleEndian as LE, I64, U16, U32, U64};
use std::collections::BTreeMap;

// Livepatch's own ELF values, which `object::elf` does not define
// (include/uapi/linux/elf.h).
/// Section index of a livepatch symbol.
const SHN_LIVEPATCH: u16 = 0xff20;
/// Flag of a livepatch relocation section.
const SHF_RELA_LIVEPATCH: u64 = 0x0010_0000;
const EHDR: usize = std::mem::size_of::<FileHeader64<LE>>();

fn bad(s: &str) -> CreateError {
    CreateError::Target(format!("built livepatch module: {s}"))
}

/// Add `rels` to the module `ko`.
pub fn add_klp(ko: &[u8], rels: &[KlpRel]) -> Result<Vec<u8>, CreateError> {
    if rels.is_empty() {
        return Ok(ko.to_vec());
    }
    let ehdr = pod::from_bytes::<FileHeader64<LE>>(ko)
        .ok()
        .map(|(h, _)| *h)
        .filter(|h| {
            let id = &h.e_ident;
            id.magic == ELFMAG && id.class == ELFCLASS64 && id.data == ELFDATA2LSB
        })
        .ok_or_else(|| bad("not a little-endian ELF64 file"))?;
    let shoff = ehdr.e_shoff.get(LE) as usize;
    let shnum = usize::from(ehdr.e_shnum.get(LE));
    let shstrndx = usize::from(ehdr.e_shstrndx.get(LE));
    let mut sh: Vec<SectionHeader64<LE>> = ko
        .get(shoff..)
        .and_then(|t| pod::slice_from_bytes::<SectionHeader64<LE>>(t, shnum).ok())
        .ok_or_else(|| bad("section headers outside the file"))?
        .0
        .to_vec();
    let data = |s: &SectionHeader64<LE>| -> Result<Vec<u8>, CreateError> {
        let at = s.sh_offset.get(LE) as usize;
        at.checked_add(s.sh_size.get(LE) as usize)
            .and_then(|end| ko.get(at..end))
            .map(<[u8]>::to_vec)
            .ok_or_else(|| bad("a section lies outside the file"))
    };
    let mut shstr = data(sh.get(shstrndx).ok_or_else(|| bad("no section names"))?)?;
    let name_of = |shstr: &[u8], off: u32| -> String {
        let tail = shstr.get(off as usize..).unwrap_or_default();
        let end = tail.iter().position(|&c| c == 0).unwrap_or(tail.len());
        String::from_utf8_lossy(&tail[..end]).into_owned()
    };
    let symtab_idx = sh
        .iter()
        .position(|s| s.sh_type.get(LE) == SHT_SYMTAB)
        .ok_or_else(|| bad("no symbol table"))?;
    let strtab_idx = sh[symtab_idx].sh_link.get(LE) as usize;
    let mut symtab = data(&sh[symtab_idx])?;
    let mut strtab = data(sh.get(strtab_idx).ok_or_else(|| bad("no symbol names"))?)?;
    const SYM: usize = std::mem::size_of::<Sym64<LE>>();

    // One livepatch symbol per distinct (object, name, position).
    let mut sym_index: BTreeMap<String, u32> = BTreeMap::new();
    for r in rels {
        let name = format!(".klp.sym.{}.{},{}", r.sym_obj, r.sym, r.pos);
        if sym_index.contains_key(&name) {
            continue;
        }
        let idx = (symtab.len() / SYM) as u32;
        let st_name = strtab.len() as u32;
        strtab.extend_from_slice(name.as_bytes());
        strtab.push(0);
        let sym = Sym64::<LE> {
            st_name: U32::new(LE, st_name),
            st_info: (STB_GLOBAL << 4) | STT_NOTYPE,
            st_other: 0,
            st_shndx: U16::new(LE, SHN_LIVEPATCH),
            st_value: U64::new(LE, 0),
            st_size: U64::new(LE, 0),
        };
        symtab.extend_from_slice(pod::bytes_of(&sym));
        sym_index.insert(name, idx);
    }

    // One relocation section per (applying object, target section).
    let mut groups: BTreeMap<(String, String), Vec<&KlpRel>> = BTreeMap::new();
    for r in rels {
        groups
            .entry((r.sec_obj.clone(), r.section.clone()))
            .or_default()
            .push(r);
    }
    let mut out = ko.to_vec();
    let append = |out: &mut Vec<u8>, bytes: &[u8], align: usize| -> u64 {
        while !out.len().is_multiple_of(align) {
            out.push(0);
        }
        let at = out.len() as u64;
        out.extend_from_slice(bytes);
        at
    };
    for ((obj, section), list) in &groups {
        let target = sh
            .iter()
            .position(|s| name_of(&shstr, s.sh_name.get(LE)) == *section)
            .ok_or_else(|| bad(&format!("section {section} missing after linking")))?;
        let entsize = std::mem::size_of::<Rela64<LE>>();
        let mut rela = Vec::with_capacity(list.len() * entsize);
        for r in list {
            let name = format!(".klp.sym.{}.{},{}", r.sym_obj, r.sym, r.pos);
            let info = ((sym_index[&name] as u64) << 32) | r.r_type as u64;
            let entry = Rela64::<LE> {
                r_offset: U64::new(LE, r.offset),
                r_info: U64::new(LE, info),
                r_addend: I64::new(LE, r.addend),
            };
            rela.extend_from_slice(pod::bytes_of(&entry));
        }
        let rela_name = format!(".klp.rela.{obj}.{}", section.trim_start_matches('.'));
        let name = shstr.len() as u32;
        shstr.extend_from_slice(rela_name.as_bytes());
        shstr.push(0);
        let offset = append(&mut out, &rela, 8);
        sh.push(SectionHeader64 {
            sh_name: U32::new(LE, name),
            sh_type: U32::new(LE, SHT_RELA),
            sh_flags: U64::new(
                LE,
                u64::from(SHF_ALLOC | SHF_INFO_LINK) | SHF_RELA_LIVEPATCH,
            ),
            sh_addr: U64::new(LE, 0),
            sh_offset: U64::new(LE, offset),
            sh_size: U64::new(LE, rela.len() as u64),
            sh_link: U32::new(LE, symtab_idx as u32),
            sh_info: U32::new(LE, target as u32),
            sh_addralign: U64::new(LE, 8),
            sh_entsize: U64::new(LE, entsize as u64),
        });
    }
    // The grown tables move to the end of the file.
    for (idx, bytes, align) in [
        (symtab_idx, &symtab, 8),
        (strtab_idx, &strtab, 1),
        (shstrndx, &shstr, 1),
    ] {
        let at = append(&mut out, bytes, align);
        sh[idx].sh_offset = U64::new(LE, at);
        sh[idx].sh_size = U64::new(LE, bytes.len() as u64);
    }
    let new_shoff = append(&mut out, &[], 8);
    for s in &sh {
        out.extend_from_slice(pod::bytes_of(s));
    }
    let mut ehdr = ehdr;
    ehdr.e_shoff = U64::new(LE, new_shoff);
    ehdr.e_shnum = U16::new(LE, sh.len() as u16);
    out[..EHDR].copy_from_slice(pod::bytes_of(&ehdr));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use object::{Object, ObjectSection, ObjectSymbol};

    #[test]
    fn livepatch_symbols_and_relocation_sections_are_added() {
        let mut o = object::write::Object::new(
            object::BinaryFormat::Elf,
            object::Architecture::X86_64,
            object::Endianness::Little,
        );
        let text = o.section_id(object::write::StandardSection::Text);
        o.append_section_data(text, &[0x90; 16], 16);
        let ko = o.write().unwrap();
        let rel = KlpRel {
            section: ".text".into(),
            offset: 4,
            r_type: 2,
            sec_obj: "vmlinux".into(),
            sym_obj: "vmlinux".into(),
            sym: "helper".into(),
            pos: 1,
            addend: -4,
        };
        let out = add_klp(&ko, &[rel]).unwrap();
        let f = object::read::elf::ElfFile64::<LE>::parse(&*out).unwrap();
        let sym = f
            .symbols()
            .find(|s| s.name() == Ok(".klp.sym.vmlinux.helper,1"))
            .expect("livepatch symbol");
        let raw = sym.elf_symbol();
        assert_eq!(raw.st_shndx.get(LE), SHN_LIVEPATCH);
        let sec = f
            .section_by_name(".klp.rela.vmlinux.text")
            .expect("livepatch relocation section");
        let object::SectionFlags::Elf { sh_flags } = sec.flags() else {
            panic!("not ELF flags");
        };
        assert_ne!(sh_flags & SHF_RELA_LIVEPATCH, 0);
        let (entries, _) = pod::slice_from_bytes::<Rela64<LE>>(sec.data().unwrap(), 1).unwrap();
        assert_eq!(entries[0].r_offset.get(LE), 4);
        assert_eq!(entries[0].r_addend.get(LE), -4);
        assert_eq!(entries[0].r_info.get(LE) & 0xffff_ffff, 2);
        assert!(add_klp(
            b"not an elf file at all, just some bytes.........................",
            &[KlpRel {
                section: ".text".into(),
                offset: 0,
                r_type: 2,
                sec_obj: "vmlinux".into(),
                sym_obj: "vmlinux".into(),
                sym: "x".into(),
                pos: 0,
                addend: 0,
            }]
        )
        .is_err());
    }
}
