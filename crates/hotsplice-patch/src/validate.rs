//! What every patch must be, whoever made or signed it.
//!
//! `hotsplice create` only writes patches that keep these rules; a reader
//! checks them again on every patch it parses ([`crate::PatchFile::parse`]
//! calls [`Patch::validate`]), signed or not, so a parsed [`Patch`] can be
//! applied without trusting its metadata: every offset is inside the image,
//! every size is consistent, every sum fits.

use crate::{
    checked_round_up, is_valid_id, FormatError, Function, ObjectKind, Patch, RelocTarget, PAGE,
};
use hotsplice_arch::current as arch;
use std::fmt::Display;

/// Largest metadata a patch file may carry.
pub const MAX_META_LEN: usize = 64 << 20;
/// Largest image, once mapped (code, data and `.bss`, rounded to pages); a
/// patch must also fit within `jmp rel32` reach of its target.
pub const MAX_MAPPED_SIZE: u64 = 1 << 30;
/// Largest field of a signature block.
pub const MAX_SIGNATURE_FIELD: usize = 64 << 10;
/// Most functions one patch may replace.
pub const MAX_FUNCTIONS: usize = 10_000;
/// Most relocations one patch may carry.
pub const MAX_RELOCATIONS: usize = 1 << 20;
/// Most new symbols one patch may list.
pub const MAX_SYMBOLS: usize = 1 << 20;
/// Longest name (function, symbol, source file, target).
pub const MAX_NAME_LEN: usize = 4096;
/// Longest build-id, in hex digits.
pub const MAX_BUILD_ID_LEN: usize = 128;
/// Highest link-time address a patch may name: the load bias is added to
/// it, and that sum must fit.
pub const MAX_ADDRESS: u64 = i64::MAX as u64;
/// Largest record (magic, length and JSON) `apply` leaves in a process; a
/// reader refuses a longer one without reading it.
pub const MAX_IMAGE_HEADER_LEN: usize = 1 << 20;

/// `s` quoted for a message: escaped, and cut after 64 characters.
pub(crate) fn quoted(s: &str) -> String {
    let mut short: String = s.chars().take(64).collect();
    if short.len() < s.len() {
        short.push('…');
    }
    format!("{short:?}")
}

/// What is wrong with `s` as a name, if anything: names end up in messages
/// and tables printed to terminals.
pub(crate) fn name_problem(s: &str, may_be_empty: bool) -> Option<String> {
    if s.is_empty() && !may_be_empty {
        Some("a name may not be empty".into())
    } else if s.len() > MAX_NAME_LEN {
        Some(format!(
            "a name is at most {MAX_NAME_LEN} bytes, this one has {}",
            s.len()
        ))
    } else if s.chars().any(char::is_control) {
        Some("a name may not contain control characters".into())
    } else {
        None
    }
}

/// Whether `s` is a build-id as patches and records carry it.
pub(crate) fn is_build_id(s: &str) -> bool {
    s.len() <= MAX_BUILD_ID_LEN
        && s.len().is_multiple_of(2)
        && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn is_hex_of_len(s: &str, bytes: u64) -> bool {
    s.len() as u64 == bytes.saturating_mul(2) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

struct Refuse<'a> {
    id: &'a str,
}

impl Refuse<'_> {
    fn field(
        &self,
        field: impl Into<String>,
        value: impl Display,
        why: impl Into<String>,
    ) -> FormatError {
        FormatError::InvalidField {
            id: if is_valid_id(self.id) {
                self.id.to_string()
            } else {
                quoted(self.id)
            },
            field: field.into(),
            value: value.to_string(),
            why: why.into(),
        }
    }
}

/// Largest unwind information a patch may carry.
pub const MAX_EH_FRAME: u64 = 16 << 20;

/// The structure of `.eh_frame` entries as a patch carries them: 4-byte
/// lengths (no 64-bit entries), each entry inside the bytes, each FDE's CIE
/// pointer leading back to a CIE among them, and a zero terminator as the
/// last 4 bytes. (The rules inside the entries are the unwinders' business:
/// hotsplice's own walker and libgcc's read them as untrusted.)
pub fn check_eh_frame(bytes: &[u8]) -> Result<(), String> {
    if bytes.len() as u64 > MAX_EH_FRAME {
        return Err(format!(
            "{} bytes of unwind information, more than {MAX_EH_FRAME}",
            bytes.len()
        ));
    }
    let word = |at: usize| {
        bytes
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
    };
    let mut cies = Vec::new();
    let mut at = 0usize;
    loop {
        let Some(len) = word(at) else {
            return Err(format!("entry at {at:#x}: truncated (no zero terminator)"));
        };
        if len == 0 {
            if at + 4 != bytes.len() {
                return Err(format!(
                    "the zero terminator at {at:#x} is not the last 4 bytes"
                ));
            }
            return Ok(());
        }
        if len == u32::MAX {
            return Err(format!("entry at {at:#x}: 64-bit entries are not carried"));
        }
        let end = at
            .checked_add(4 + len as usize)
            .filter(|&e| e <= bytes.len())
            .ok_or_else(|| format!("entry at {at:#x}: length {len} runs past the end"))?;
        if len < 4 {
            return Err(format!("entry at {at:#x}: length {len} is too short"));
        }
        let id = word(at + 4).unwrap_or(0);
        if id == 0 {
            cies.push(at);
        } else {
            let cie = (at + 4).checked_sub(id as usize);
            if !cie.is_some_and(|c| cies.contains(&c)) {
                return Err(format!(
                    "FDE at {at:#x}: its CIE pointer {id:#x} does not lead to a CIE before it"
                ));
            }
        }
        at = end;
    }
}

impl Patch {
    /// Internal consistency: every offset inside the image, every size
    /// consistent, every count and size within the limits of this module.
    /// Refusals name the patch, the field, its value and why.
    pub fn validate(&self) -> Result<(), FormatError> {
        let m = &self.meta;
        let r = Refuse { id: &m.id };
        if !is_valid_id(&m.id) {
            return Err(r.field(
                "id",
                quoted(&m.id),
                "a patch id is 8 lowercase letters and digits",
            ));
        }
        if let Some(why) = name_problem(&m.target.name, false) {
            return Err(r.field("target.name", quoted(&m.target.name), why));
        }
        if !is_build_id(&m.target.build_id) {
            return Err(r.field(
                "target.build_id",
                quoted(&m.target.build_id),
                format!("a build-id is an even number of hex digits, at most {MAX_BUILD_ID_LEN}"),
            ));
        }

        if m.cves.len() > crate::file::MAX_CVES {
            return Err(r.field(
                "cves",
                m.cves.len().to_string(),
                format!("at most {} CVEs per patch", crate::file::MAX_CVES),
            ));
        }
        if let Some(bad) = m.cves.iter().find(|c| !crate::file::is_cve_id(c)) {
            return Err(r.field("cves", quoted(bad), "a CVE id is CVE-YYYY-NNNN"));
        }

        // Layout: [0, code_size) code | [data_offset, +data_size) data.
        if !m.data_offset.is_multiple_of(PAGE) {
            return Err(r.field(
                "data_offset",
                format!("{:#x}", m.data_offset),
                format!("the data must start on a page ({PAGE} bytes)"),
            ));
        }
        if m.data_offset < m.code_size {
            return Err(r.field(
                "data_offset",
                format!("{:#x}", m.data_offset),
                format!(
                    "the data must start after the code (code_size {:#x})",
                    m.code_size
                ),
            ));
        }
        let total = m
            .data_offset
            .checked_add(m.data_size)
            .filter(|&t| checked_round_up(t, PAGE).is_some_and(|t| t <= MAX_MAPPED_SIZE))
            .ok_or_else(|| {
                r.field(
                    "data_size",
                    m.data_size,
                    format!(
                        "data_offset ({:#x}) + data_size, rounded to pages, must be at most {MAX_MAPPED_SIZE} bytes",
                        m.data_offset
                    ),
                )
            })?;
        let image_len = self.image.len() as u64;
        if image_len > total {
            return Err(r.field(
                "image length",
                image_len,
                format!("the image is larger than its layout (data_offset + data_size = {total})"),
            ));
        }
        if image_len < m.code_size {
            return Err(r.field(
                "image length",
                image_len,
                format!(
                    "the image is shorter than its code (code_size {})",
                    m.code_size
                ),
            ));
        }

        if let Some(eh) = &m.eh_frame {
            let end = eh.offset.checked_add(eh.size).filter(|&e| e <= m.code_size);
            let Some(end) = end else {
                return Err(r.field(
                    "eh_frame.size",
                    eh.size,
                    format!(
                        "the unwind information at offset {:#x} must lie in the code [0, {:#x})",
                        eh.offset, m.code_size
                    ),
                ));
            };
            if m.target.kind == ObjectKind::Kernel {
                return Err(r.field(
                    "eh_frame",
                    "present",
                    "a kernel patch's module carries its own unwind tables",
                ));
            }
            // Inside the code, which the image holds: checked above.
            let bytes = &self.image[eh.offset as usize..end as usize];
            if let Err(why) = check_eh_frame(bytes) {
                return Err(r.field("eh_frame", format!("{:#x}", eh.offset), why));
            }
            for (i, rel) in m.relocations.iter().enumerate() {
                let rend = rel.offset.saturating_add(rel.kind.size() as u64);
                // The terminator is what tells every unwinder where the
                // entries end: nothing may write over it.
                if rel.offset < end && rend > end - 4 {
                    return Err(r.field(
                        format!("relocations[{i}].offset"),
                        format!("{:#x}", rel.offset),
                        "it writes over the terminator of the unwind information",
                    ));
                }
            }
        }

        // Counts.
        for (field, n, max) in [
            ("functions", m.functions.len(), MAX_FUNCTIONS),
            ("relocations", m.relocations.len(), MAX_RELOCATIONS),
            ("symbols", m.symbols.len(), MAX_SYMBOLS),
        ] {
            if n > max {
                return Err(r.field(
                    format!("number of {field}"),
                    n,
                    format!("a patch has at most {max} {field}"),
                ));
            }
        }
        if m.target.kind != ObjectKind::Kernel {
            let room = m.header_room();
            if room > MAX_IMAGE_HEADER_LEN as u64 {
                return Err(r.field(
                    "functions",
                    format!("{} functions", m.functions.len()),
                    format!(
                        "their names, the description and the target take {room} bytes in the record left in each process, more than {MAX_IMAGE_HEADER_LEN}; split the patch"
                    ),
                ));
            }
        }

        // Replaced functions.
        let mut spans = Vec::with_capacity(m.functions.len());
        for (i, f) in m.functions.iter().enumerate() {
            if let Some(why) = name_problem(&f.name, false) {
                return Err(r.field(format!("functions[{i}].name"), quoted(&f.name), why));
            }
            let field = |name: &str| format!("functions[{i}] ({}).{name}", quoted(&f.name));
            if let Some(file) = &f.file {
                if let Some(why) = name_problem(file, true) {
                    return Err(r.field(field("file"), quoted(file), why));
                }
            }
            let end = f
                .vaddr
                .checked_add(f.size)
                .filter(|&e| e <= MAX_ADDRESS)
                .ok_or_else(|| {
                    r.field(
                        field("size"),
                        f.size,
                        format!(
                            "vaddr {:#x} + size is past the highest address a patch may name ({MAX_ADDRESS:#x})",
                            f.vaddr
                        ),
                    )
                })?;
            if f.jump && f.size < arch::JUMP_LEN as u64 {
                return Err(r.field(
                    field("size"),
                    f.size,
                    format!(
                        "a function entered through a jump must be at least {} bytes, the jump's length",
                        arch::JUMP_LEN
                    ),
                ));
            }
            for (name, text) in [("expected", &f.expected), ("mask", &f.mask)] {
                if !is_hex_of_len(text, f.size) {
                    return Err(r.field(
                        field(name),
                        format!("{} characters", text.len()),
                        format!(
                            "must be the function's {} bytes in hex ({} hex digits)",
                            f.size,
                            f.size.saturating_mul(2)
                        ),
                    ));
                }
            }
            if f.replacement >= m.code_size {
                return Err(r.field(
                    field("replacement"),
                    format!("{:#x}", f.replacement),
                    format!(
                        "the new code must be inside the code (code_size {:#x})",
                        m.code_size
                    ),
                ));
            }
            if f.size > 0 {
                spans.push((f.vaddr, end, i));
            }
        }
        spans.sort_unstable();
        for w in spans.windows(2) {
            let ((_, prev_end, p), (start, _, i)) = (w[0], w[1]);
            if start < prev_end {
                return Err(r.field(
                    format!("functions[{i}] ({}).vaddr", quoted(&m.functions[i].name)),
                    format!("{start:#x}"),
                    format!(
                        "it overlaps functions[{p}] ({}), which ends at {prev_end:#x}",
                        quoted(&m.functions[p].name)
                    ),
                ));
            }
        }

        // Relocations: each field inside the code or the data.
        for (i, rel) in m.relocations.iter().enumerate() {
            let field = |name: &str| format!("relocations[{i}].{name}");
            let kind = rel.kind;
            let end = rel.offset.checked_add(kind.size() as u64);
            let in_code = end.is_some_and(|e| e <= m.code_size);
            let in_data = rel.offset >= m.data_offset && end.is_some_and(|e| e <= total);
            if !in_code && !in_data {
                return Err(r.field(
                    field("offset"),
                    format!("{:#x}", rel.offset),
                    format!(
                        "its {}-byte field must lie in the code [0, {:#x}) or the data [{:#x}, {total:#x})",
                        kind.size(),
                        m.code_size,
                        m.data_offset
                    ),
                ));
            }
            match &rel.target {
                RelocTarget::Image { offset } if *offset > total => {
                    return Err(r.field(
                        field("target.offset"),
                        format!("{offset:#x}"),
                        format!("the target must be inside the image (at most {total:#x})"),
                    ));
                }
                RelocTarget::Object { vaddr } | RelocTarget::ObjectIfunc { vaddr }
                    if *vaddr > MAX_ADDRESS =>
                {
                    return Err(r.field(
                        field("target.vaddr"),
                        format!("{vaddr:#x}"),
                        format!("past the highest address a patch may name ({MAX_ADDRESS:#x})"),
                    ));
                }
                RelocTarget::Dynamic { name } => {
                    if let Some(why) = name_problem(name, false) {
                        return Err(r.field(field("target.name"), quoted(name), why));
                    }
                }
                _ => {}
            }
        }

        // New symbols (listed for people): inside the image.
        for (i, s) in m.symbols.iter().enumerate() {
            if let Some(why) = name_problem(&s.name, true) {
                return Err(r.field(format!("symbols[{i}].name"), quoted(&s.name), why));
            }
            if s.offset > total || s.offset.checked_add(s.size).is_none() {
                return Err(r.field(
                    format!("symbols[{i}] ({}).offset", quoted(&s.name)),
                    format!("{:#x}", s.offset),
                    format!(
                        "a symbol must be inside the image (at most {total:#x}), size {}",
                        s.size
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The original code replaced function `f` must have and the mask of
    /// the bytes compared (`expected` and `mask` decoded), each exactly
    /// `f.size` bytes, or the refusal naming the field.
    pub fn expected_and_mask(&self, f: &Function) -> Result<(Vec<u8>, Vec<u8>), FormatError> {
        let r = Refuse { id: &self.meta.id };
        let decode = |name: &str, text: &str| {
            hex::decode(text)
                .ok()
                .filter(|b| b.len() as u64 == f.size)
                .ok_or_else(|| {
                    r.field(
                        format!("functions ({}).{name}", quoted(&f.name)),
                        format!("{} characters", text.len()),
                        format!("must be the function's {} bytes in hex", f.size),
                    )
                })
        };
        Ok((decode("expected", &f.expected)?, decode("mask", &f.mask)?))
    }
}

#[cfg(test)]
mod tests {
    use crate::*;

    /// A valid userspace patch: one replaced function, a call through a
    /// dynamic symbol, a pointer in the data.
    fn valid() -> Patch {
        let mut meta = PatchMeta::example();
        meta.code_size = 0x40;
        meta.data_offset = PAGE;
        meta.data_size = 0x10;
        meta.functions = vec![Function {
            name: "compute".into(),
            file: Some("compute.c".into()),
            vaddr: 0x1130,
            size: 16,
            expected: "55".repeat(16),
            mask: "ff".repeat(16),
            replacement: 0,
            jump: true,
        }];
        meta.relocations = vec![
            Relocation {
                offset: 1,
                kind: FieldKind::Pc32,
                target: RelocTarget::Dynamic {
                    name: "strtol".into(),
                },
                addend: -4,
            },
            Relocation {
                offset: PAGE,
                kind: FieldKind::Abs64,
                target: RelocTarget::Image { offset: 0x20 },
                addend: 0,
            },
        ];
        meta.symbols = vec![NewSymbol {
            name: "helper".into(),
            offset: 0x20,
            size: 0x10,
            kind: "function".into(),
        }];
        Patch {
            meta,
            image: vec![0xcc; PAGE as usize + 0x10],
        }
    }

    /// `p` is refused, by validation and by parsing its file, with a message
    /// naming the patch, the field, the value and what to do.
    fn refused(p: &Patch, field: &str, value: &str) -> String {
        let err = p.validate().expect_err("validation must refuse");
        let msg = err.to_string();
        for part in [
            "patch abcd1234",
            field,
            value,
            "rebuild the patch with `hotsplice create`",
        ] {
            assert!(msg.contains(part), "{part:?} missing from: {msg}");
        }
        let parsed = Patch::from_bytes(&p.to_bytes()).expect_err("parsing must refuse");
        assert_eq!(parsed.to_string(), msg);
        msg
    }

    #[test]
    fn valid_patch_passes_and_round_trips() {
        let p = valid();
        p.validate().unwrap();
        assert_eq!(Patch::from_bytes(&p.to_bytes()).unwrap(), p);
    }

    #[test]
    fn jumped_function_shorter_than_a_jump_is_refused() {
        let mut p = valid();
        let f = &mut p.meta.functions[0];
        f.size = 1;
        f.expected = "c3".into();
        f.mask = "ff".into();
        let msg = refused(&p, "functions[0] (\"compute\").size", "= 1");
        assert!(msg.contains("5 bytes"), "{msg}");
        // A part only reached from its parent (no jump) may be that short.
        p.meta.functions[0].jump = false;
        p.validate().unwrap();
    }

    #[test]
    fn relocation_offset_near_u64_max_is_refused() {
        let mut p = valid();
        p.meta.relocations[0].offset = u64::MAX - 2;
        refused(&p, "relocations[0].offset", "0xfffffffffffffffd");
    }

    #[test]
    fn relocation_between_code_and_data_is_refused() {
        let mut p = valid();
        p.meta.relocations[0].offset = 0x100;
        refused(&p, "relocations[0].offset", "0x100");
    }

    #[test]
    fn relocation_field_past_the_end_is_refused() {
        let mut p = valid();
        p.meta.relocations[1].offset = PAGE + 0xc;
        refused(&p, "relocations[1].offset", "0x100c");
        let mut p = valid();
        p.meta.relocations[0].offset = 0x3e;
        refused(&p, "relocations[0].offset", "0x3e");
    }

    #[test]
    fn relocation_target_outside_the_image_is_refused() {
        let mut p = valid();
        p.meta.relocations[1].target = RelocTarget::Image { offset: u64::MAX };
        refused(&p, "relocations[1].target.offset", "0xffffffffffffffff");
        let mut p = valid();
        p.meta.relocations[1].target = RelocTarget::Object { vaddr: u64::MAX };
        refused(&p, "relocations[1].target.vaddr", "0xffffffffffffffff");
        let mut p = valid();
        p.meta.relocations[1].target = RelocTarget::ObjectIfunc { vaddr: 1 << 63 };
        refused(&p, "relocations[1].target.vaddr", "0x8000000000000000");
    }

    #[test]
    fn unknown_relocation_kind_is_refused() {
        let json = serde_json::to_string(&valid().meta).unwrap();
        assert!(json.contains(r#""kind":"pc32""#), "{json}");
        let bad = json.replacen(r#""kind":"pc32""#, r#""kind":"got32""#, 1);
        let err = serde_json::from_str::<PatchMeta>(&bad)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unknown relocation kind \"\\\"got32\\\"\""),
            "{err}"
        );
        assert!(err.contains("abs64, abs32, abs32s, pc32, pc64"), "{err}");
    }

    #[test]
    fn data_size_u64_max_is_refused() {
        let mut p = valid();
        p.meta.data_size = u64::MAX;
        refused(&p, "data_size", "18446744073709551615");
        // Sums that fit but round up past the end of the address space.
        let mut p = valid();
        p.meta.data_size = u64::MAX - PAGE;
        refused(&p, "data_size", &(u64::MAX - PAGE).to_string());
    }

    #[test]
    fn oversized_layout_is_refused() {
        let mut p = valid();
        p.meta.data_size = 2 << 30;
        refused(&p, "data_size", &(2u64 << 30).to_string());
    }

    #[test]
    fn inconsistent_layout_is_refused() {
        let mut p = valid();
        p.meta.data_offset = PAGE + 8;
        refused(&p, "data_offset", "0x1008");
        let mut p = valid();
        p.meta.code_size = PAGE + 1;
        refused(&p, "data_offset", "0x1000");
        let mut p = valid();
        p.image.resize(PAGE as usize + 0x11, 0);
        refused(&p, "image length", "4113");
        let mut p = valid();
        p.image.truncate(0x3f);
        refused(&p, "image length", "63");
    }

    #[test]
    fn function_past_the_address_space_is_refused() {
        let mut p = valid();
        p.meta.functions[0].vaddr = u64::MAX - 4;
        refused(&p, "functions[0] (\"compute\").size", "= 16");
    }

    #[test]
    fn expected_and_mask_must_be_the_function_in_hex() {
        let mut p = valid();
        p.meta.functions[0].expected = "55".repeat(15);
        refused(&p, "functions[0] (\"compute\").expected", "30 characters");
        let mut p = valid();
        p.meta.functions[0].mask = "zz".repeat(16);
        refused(&p, "functions[0] (\"compute\").mask", "32 characters");
    }

    #[test]
    fn replacement_outside_the_code_is_refused() {
        let mut p = valid();
        p.meta.functions[0].replacement = 0x40;
        refused(&p, "functions[0] (\"compute\").replacement", "0x40");
    }

    #[test]
    fn overlapping_functions_are_refused() {
        let mut p = valid();
        let mut g = p.meta.functions[0].clone();
        g.name = "other".into();
        g.vaddr += 8;
        p.meta.functions.push(g);
        refused(&p, "functions[1] (\"other\").vaddr", "0x1138");
    }

    #[test]
    fn bad_names_and_ids_are_refused() {
        let mut p = valid();
        p.meta.functions[0].name = "comp\x1b[2Jute".into();
        refused(&p, "functions[0].name", "\"comp\\u{1b}[2Jute\"");
        let mut p = valid();
        p.meta.functions[0].name = String::new();
        refused(&p, "functions[0].name", "\"\"");
        let mut p = valid();
        p.meta.relocations[0].target = RelocTarget::Dynamic {
            name: "x".repeat(MAX_NAME_LEN + 1),
        };
        refused(&p, "relocations[0].target.name", "xxxx");
        let mut p = valid();
        p.meta.target.build_id = crate::BuildId::unchecked("xyz");
        refused(&p, "target.build_id", "\"xyz\"");
        let mut p = valid();
        p.meta.id = crate::PatchId::unchecked("NOT-AN-ID");
        let msg = p.validate().unwrap_err().to_string();
        assert!(msg.contains("patch \"NOT-AN-ID\": id"), "{msg}");
    }

    #[test]
    fn too_many_functions_are_refused() {
        let mut p = valid();
        let f = p.meta.functions[0].clone();
        p.meta.functions = (0..=MAX_FUNCTIONS as u64)
            .map(|i| Function {
                vaddr: 0x1000 + 16 * i,
                ..f.clone()
            })
            .collect();
        refused(&p, "number of functions", "10001");
    }

    #[test]
    fn record_too_large_for_a_process_is_refused() {
        let mut p = valid();
        let f = p.meta.functions[0].clone();
        p.meta.functions = (0..5000u64)
            .map(|i| Function {
                name: format!("{i:0>100}"),
                vaddr: 0x1000 + 16 * i,
                ..f.clone()
            })
            .collect();
        refused(&p, "functions", "5000 functions");
    }

    #[test]
    fn symbol_outside_the_image_is_refused() {
        let mut p = valid();
        p.meta.symbols[0].offset = u64::MAX;
        refused(&p, "symbols[0] (\"helper\").offset", "0xffffffffffffffff");
    }

    #[test]
    fn kernel_patches_stay_valid() {
        let mut p = valid();
        p.meta.target.kind = ObjectKind::Kernel;
        p.meta.relocations.clear();
        p.meta.symbols.clear();
        p.meta.data_size = 0;
        p.image.truncate(0x40);
        p.meta.functions = ["a", "b"].map(Function::kernel).to_vec();
        p.validate().unwrap();
    }

    #[test]
    fn oversized_lengths_in_the_file_header_are_refused() {
        let mut b = valid().to_bytes();
        b[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        let msg = Patch::from_bytes(&b).unwrap_err().to_string();
        assert!(msg.contains("metadata is 4294967295 bytes"), "{msg}");
        let mut b = valid().to_bytes();
        b[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        let msg = Patch::from_bytes(&b).unwrap_err().to_string();
        assert!(msg.contains("image is 18446744073709551615 bytes"), "{msg}");
    }

    #[test]
    fn oversized_signature_field_is_refused() {
        let mut b = valid().to_bytes();
        b.extend_from_slice(SIG_MAGIC);
        b.extend_from_slice(&u32::MAX.to_le_bytes());
        let msg = PatchFile::parse(&b).unwrap_err().to_string();
        assert!(
            msg.contains("signature algorithm is 4294967295 bytes"),
            "{msg}"
        );
    }

    /// A CIE (8 bytes of body) and an FDE pointing back at it, then the
    /// terminator.
    fn eh_frame_block() -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&12u32.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&[1, b'z', b'R', 0, 1, 0x78, 0x10, 0]);
        let fde = b.len();
        b.extend_from_slice(&12u32.to_le_bytes());
        b.extend_from_slice(&((fde + 4) as u32).to_le_bytes());
        b.extend_from_slice(&[0; 8]);
        b.extend_from_slice(&[0; 4]);
        b
    }

    #[test]
    fn unwind_information_must_be_whole_entries_ending_with_the_terminator() {
        let good = eh_frame_block();
        check_eh_frame(&good).unwrap();
        let msg = check_eh_frame(&good[..good.len() - 4]).unwrap_err();
        assert!(msg.contains("no zero terminator"), "{msg}");
        let mut bad_cie = good.clone();
        bad_cie[20..24].copy_from_slice(&4u32.to_le_bytes());
        let msg = check_eh_frame(&bad_cie).unwrap_err();
        assert!(msg.contains("does not lead to a CIE"), "{msg}");
        let mut long = good.clone();
        long[16..20].copy_from_slice(&1000u32.to_le_bytes());
        assert!(check_eh_frame(&long).unwrap_err().contains("runs past"));
        let mut trailing = good.clone();
        trailing.extend_from_slice(&[0; 4]);
        assert!(check_eh_frame(&trailing)
            .unwrap_err()
            .contains("not the last 4 bytes"));
    }

    #[test]
    fn unwind_information_lies_in_the_code_and_no_relocation_writes_its_terminator() {
        let mut p = valid();
        let block = eh_frame_block();
        p.image[0x10..0x10 + block.len()].copy_from_slice(&block);
        p.meta.eh_frame = Some(crate::EhFrame {
            offset: 0x10,
            size: block.len() as u64,
        });
        p.validate().unwrap();
        let mut q = p.clone();
        q.meta.eh_frame = Some(crate::EhFrame {
            offset: 0x30,
            size: block.len() as u64,
        });
        let msg = q.validate().unwrap_err().to_string();
        assert!(msg.contains("eh_frame.size"), "{msg}");
        let mut q = p.clone();
        q.meta.relocations[0].offset = 0x10 + block.len() as u64 - 4;
        q.meta.relocations[0].kind = FieldKind::Abs32;
        let msg = q.validate().unwrap_err().to_string();
        assert!(msg.contains("terminator"), "{msg}");
    }
}
