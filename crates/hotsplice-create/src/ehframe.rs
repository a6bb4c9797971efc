//! The unwind information of the code a patch carries: the `.eh_frame`
//! entries of chosen text sections of one object — each FDE with the CIE it
//! uses — copied into one block, with the relocations inside them (the
//! FDE's start address, a personality routine, a language-specific data
//! area), so that the engine relocates them with the code and unwinders
//! can walk through the patch's frames.

use crate::objfile::{ObjFile, Reloc};
use std::collections::HashMap;

/// The entries of some text sections of an object.
pub struct Extract {
    /// CIEs and FDEs, without a terminator.
    pub bytes: Vec<u8>,
    /// The relocations of the object's `.eh_frame` inside the copied
    /// entries, at their offsets in `bytes`.
    pub relocs: Vec<Reloc>,
    /// The object's `.eh_frame` section (what the relocations are in).
    pub section: usize,
}

fn word(data: &[u8], at: usize) -> Option<u32> {
    data.get(at..at.checked_add(4)?)
        .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
}

/// The FDEs of the text sections `wanted` says yes to, with their CIEs;
/// `None` when the object has no `.eh_frame` or no FDE for them (code
/// built without unwind tables). An `.eh_frame` that is not what an
/// assembler writes is an error naming the object.
pub fn extract(obj: &ObjFile, wanted: impl Fn(usize) -> bool) -> Result<Option<Extract>, String> {
    let Some(section) = obj.section_named(".eh_frame") else {
        return Ok(None);
    };
    let sec = &obj.sections[section];
    let data = &sec.data;
    let bad = |at: usize, what: &str| {
        format!("{}: .eh_frame entry at {at:#x}: {what}", obj.path.display())
    };
    let relocs_in = |from: usize, to: usize| {
        sec.relocs
            .iter()
            .filter(move |r| (from as u64..to as u64).contains(&r.offset))
    };
    let mut out = Vec::new();
    let mut relocs = Vec::new();
    // CIE offset in the object → offset in `out`.
    let mut copied: HashMap<usize, usize> = HashMap::new();
    let mut at = 0usize;
    while at < data.len() {
        let len = word(data, at).ok_or_else(|| bad(at, "truncated length"))?;
        if len == 0 {
            break;
        }
        if len == u32::MAX {
            return Err(bad(at, "64-bit entries are not supported"));
        }
        let end = at
            .checked_add(4 + len as usize)
            .filter(|&e| e <= data.len())
            .ok_or_else(|| bad(at, "runs past the section"))?;
        let id = word(data, at + 4).ok_or_else(|| bad(at, "truncated"))?;
        if id != 0 {
            let cie = (at + 4)
                .checked_sub(id as usize)
                .ok_or_else(|| bad(at, "CIE pointer before the section"))?;
            let target = relocs_in(at + 8, at + 12)
                .next()
                .and_then(|r| obj.symbols.get(r.sym))
                .and_then(|s| s.section);
            if target.is_some_and(&wanted) {
                let new_cie = match copied.get(&cie) {
                    Some(&c) => c,
                    None => {
                        let clen = word(data, cie).ok_or_else(|| bad(cie, "truncated CIE"))?;
                        let cend = cie
                            .checked_add(4 + clen as usize)
                            .filter(|&e| e <= data.len() && clen != u32::MAX && clen >= 4)
                            .ok_or_else(|| bad(cie, "CIE runs past the section"))?;
                        if word(data, cie + 4) != Some(0) {
                            return Err(bad(at, "its CIE pointer does not lead to a CIE"));
                        }
                        let c = out.len();
                        copy(&mut out, &mut relocs, data, cie, cend, relocs_in(cie, cend));
                        copied.insert(cie, c);
                        c
                    }
                };
                let f = out.len();
                copy(&mut out, &mut relocs, data, at, end, relocs_in(at, end));
                let pointer = (f + 4 - new_cie) as u32;
                out[f + 4..f + 8].copy_from_slice(&pointer.to_le_bytes());
            }
        }
        at = end;
    }
    if out.is_empty() {
        return Ok(None);
    }
    Ok(Some(Extract {
        bytes: out,
        relocs,
        section,
    }))
}

/// Append entry `[from, to)` of `data` and its relocations `rs`.
fn copy<'r>(
    out: &mut Vec<u8>,
    relocs: &mut Vec<Reloc>,
    data: &[u8],
    from: usize,
    to: usize,
    rs: impl Iterator<Item = &'r Reloc>,
) {
    let base = out.len() as u64;
    out.extend_from_slice(&data[from..to]);
    for r in rs {
        let mut r = r.clone();
        r.offset = r.offset - from as u64 + base;
        relocs.push(r);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An object of two functions, compiled with `cc` here.
    fn object(dir: &std::path::Path) -> ObjFile {
        crate::objfile::compiled(
            dir,
            "two",
            "int g(int);\nint a(int x) { return g(x) + 1; }\nint b(int x) { return g(x) * 2; }\n",
        )
    }

    #[test]
    fn the_fde_of_one_function_comes_with_its_cie_and_relocation() {
        let dir = std::env::temp_dir().join(format!("hs-ehframe-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let obj = object(&dir);
        let a = obj.section_named(".text.a").unwrap();
        let b = obj.section_named(".text.b").unwrap();
        let x = extract(&obj, |s| s == a).unwrap().expect("an FDE for a()");
        // One CIE, then one FDE pointing back at it.
        let clen = word(&x.bytes, 0).unwrap() as usize;
        assert_eq!(word(&x.bytes, 4), Some(0));
        let f = 4 + clen;
        let flen = word(&x.bytes, f).unwrap() as usize;
        assert_eq!(f + 4 + flen, x.bytes.len(), "exactly one FDE");
        assert_eq!(word(&x.bytes, f + 4), Some((f + 4) as u32));
        // Its start address is relocated against a()'s section.
        let r = x
            .relocs
            .iter()
            .find(|r| r.offset == (f + 8) as u64)
            .unwrap();
        assert_eq!(obj.symbols[r.sym].section, Some(a));
        let mut block = x.bytes.clone();
        block.extend_from_slice(&[0; 4]);
        hotsplice_patch::check_eh_frame(&block).unwrap();
        // Both functions: one CIE, two FDEs.
        let y = extract(&obj, |s| s == a || s == b).unwrap().unwrap();
        assert_eq!(y.relocs.len(), 2);
        assert!(extract(&obj, |_| false).unwrap().is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
