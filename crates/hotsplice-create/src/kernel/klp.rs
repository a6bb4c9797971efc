//! Adding livepatch relocation sections (`.klp.rela.<obj>.<section>`) and
//! livepatch symbols (`.klp.sym.<obj>.<name>,<pos>`, `SHN_LIVEPATCH`) to a
//! built module, as `Documentation/livepatch/module-elf-format.rst`
//! describes: the module loader leaves them alone and livepatch applies
//! them once the symbols' objects are present.

use super::emit::KlpRel;
use crate::CreateError;
use std::collections::BTreeMap;

const SHN_LIVEPATCH: u16 = 0xff20;
const SHF_RELA_LIVEPATCH: u64 = 0x0010_0000;
const SHF_ALLOC: u64 = 0x2;
const SHF_INFO_LINK: u64 = 0x40;
const SHT_RELA: u32 = 4;
const SHT_SYMTAB: u32 = 2;
const EHDR: usize = 64;
const SHDR: usize = 64;
const SYM: usize = 24;

#[derive(Clone)]
struct Shdr {
    name: u32,
    ty: u32,
    flags: u64,
    addr: u64,
    offset: u64,
    size: u64,
    link: u32,
    info: u32,
    align: u64,
    entsize: u64,
}

fn rd<const N: usize>(b: &[u8], o: usize) -> [u8; N] {
    b[o..o + N].try_into().unwrap()
}

fn bad(s: &str) -> CreateError {
    CreateError::Target(format!("built livepatch module: {s}"))
}

/// Add `rels` to the module `ko`.
pub fn add_klp(ko: &[u8], rels: &[KlpRel]) -> Result<Vec<u8>, CreateError> {
    if rels.is_empty() {
        return Ok(ko.to_vec());
    }
    if ko.len() < EHDR || &ko[..4] != b"\x7fELF" || ko[4] != 2 {
        return Err(bad("not an ELF64 file"));
    }
    let shoff = u64::from_le_bytes(rd(ko, 0x28)) as usize;
    let shnum = u16::from_le_bytes(rd(ko, 0x3c)) as usize;
    let shstrndx = u16::from_le_bytes(rd(ko, 0x3e)) as usize;
    let mut sh: Vec<Shdr> = (0..shnum)
        .map(|i| {
            let o = shoff + i * SHDR;
            Shdr {
                name: u32::from_le_bytes(rd(ko, o)),
                ty: u32::from_le_bytes(rd(ko, o + 4)),
                flags: u64::from_le_bytes(rd(ko, o + 8)),
                addr: u64::from_le_bytes(rd(ko, o + 16)),
                offset: u64::from_le_bytes(rd(ko, o + 24)),
                size: u64::from_le_bytes(rd(ko, o + 32)),
                link: u32::from_le_bytes(rd(ko, o + 40)),
                info: u32::from_le_bytes(rd(ko, o + 44)),
                align: u64::from_le_bytes(rd(ko, o + 48)),
                entsize: u64::from_le_bytes(rd(ko, o + 56)),
            }
        })
        .collect();
    let data = |s: &Shdr| ko[s.offset as usize..(s.offset + s.size) as usize].to_vec();
    let mut shstr = data(&sh[shstrndx]);
    let name_of = |shstr: &[u8], off: u32| -> String {
        let o = off as usize;
        let end = shstr[o..].iter().position(|&c| c == 0).unwrap_or(0) + o;
        String::from_utf8_lossy(&shstr[o..end]).into_owned()
    };
    let symtab_idx = sh
        .iter()
        .position(|s| s.ty == SHT_SYMTAB)
        .ok_or_else(|| bad("no symbol table"))?;
    let strtab_idx = sh[symtab_idx].link as usize;
    let mut symtab = data(&sh[symtab_idx]);
    let mut strtab = data(&sh[strtab_idx]);

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
        let mut e = [0u8; SYM];
        e[0..4].copy_from_slice(&st_name.to_le_bytes());
        e[4] = 0x10; // STB_GLOBAL, STT_NOTYPE
        e[6..8].copy_from_slice(&SHN_LIVEPATCH.to_le_bytes());
        symtab.extend_from_slice(&e);
        sym_index.insert(name, idx);
    }

    // One relocation section per (symbol object, target section).
    let mut groups: BTreeMap<(String, String), Vec<&KlpRel>> = BTreeMap::new();
    for r in rels {
        groups
            .entry((r.sym_obj.clone(), r.section.clone()))
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
            .position(|s| name_of(&shstr, s.name) == *section)
            .ok_or_else(|| bad(&format!("section {section} missing after linking")))?;
        let mut rela = Vec::with_capacity(list.len() * 24);
        for r in list {
            let name = format!(".klp.sym.{}.{},{}", r.sym_obj, r.sym, r.pos);
            let info = ((sym_index[&name] as u64) << 32) | r.r_type as u64;
            rela.extend_from_slice(&r.offset.to_le_bytes());
            rela.extend_from_slice(&info.to_le_bytes());
            rela.extend_from_slice(&r.addend.to_le_bytes());
        }
        let rela_name = format!(".klp.rela.{obj}.{}", section.trim_start_matches('.'));
        let name = shstr.len() as u32;
        shstr.extend_from_slice(rela_name.as_bytes());
        shstr.push(0);
        let offset = append(&mut out, &rela, 8);
        sh.push(Shdr {
            name,
            ty: SHT_RELA,
            flags: SHF_ALLOC | SHF_INFO_LINK | SHF_RELA_LIVEPATCH,
            addr: 0,
            offset,
            size: rela.len() as u64,
            link: symtab_idx as u32,
            info: target as u32,
            align: 8,
            entsize: 24,
        });
    }
    // The grown tables move to the end of the file.
    let symtab_off = append(&mut out, &symtab, 8);
    sh[symtab_idx].offset = symtab_off;
    sh[symtab_idx].size = symtab.len() as u64;
    let strtab_off = append(&mut out, &strtab, 1);
    sh[strtab_idx].offset = strtab_off;
    sh[strtab_idx].size = strtab.len() as u64;
    let shstr_off = append(&mut out, &shstr, 1);
    sh[shstrndx].offset = shstr_off;
    sh[shstrndx].size = shstr.len() as u64;
    let new_shoff = append(&mut out, &[], 8);
    for s in &sh {
        for v in [s.name.to_le_bytes().to_vec(), s.ty.to_le_bytes().to_vec()] {
            out.extend_from_slice(&v);
        }
        out.extend_from_slice(&s.flags.to_le_bytes());
        out.extend_from_slice(&s.addr.to_le_bytes());
        out.extend_from_slice(&s.offset.to_le_bytes());
        out.extend_from_slice(&s.size.to_le_bytes());
        out.extend_from_slice(&s.link.to_le_bytes());
        out.extend_from_slice(&s.info.to_le_bytes());
        out.extend_from_slice(&s.align.to_le_bytes());
        out.extend_from_slice(&s.entsize.to_le_bytes());
    }
    out[0x28..0x30].copy_from_slice(&(new_shoff).to_le_bytes());
    out[0x3c..0x3e].copy_from_slice(&(sh.len() as u16).to_le_bytes());
    Ok(out)
}
