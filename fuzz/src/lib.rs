//! What the fuzz targets check besides "never panics": what the engine
//! relies on of everything the parsers accept.

use hotsplice_arch::{current as arch, FieldError};
use hotsplice_patch::{
    AppliedRecord, ObjectKind, Patch, PatchFile, FORMAT_VERSION, MAGIC, MAX_ADDRESS,
    MAX_IMAGE_HEADER_LEN, MAX_MAPPED_SIZE,
};
use sha2::{Digest, Sha256};

/// A patch file around `meta` and `image`, with a correct checksum (so the
/// fuzzer reaches the metadata checks).
pub fn patch_file(meta: &[u8], image: &[u8], tail: &[u8]) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(meta);
    h.update(image);
    let mut out = Vec::with_capacity(56 + meta.len() + image.len() + tail.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&(meta.len() as u32).to_le_bytes());
    out.extend_from_slice(&(image.len() as u64).to_le_bytes());
    out.extend_from_slice(&h.finalize());
    out.extend_from_slice(meta);
    out.extend_from_slice(image);
    out.extend_from_slice(tail);
    out
}

/// Parse `bytes` as a patch file; whatever is accepted is checked.
pub fn parse_patch_file(bytes: &[u8]) {
    if let Ok(f) = PatchFile::parse(bytes) {
        assert!(f.signed_bytes.len() <= bytes.len());
        check_patch(&f.patch);
    }
}

/// What every parsed patch is, and what applying it does with it.
pub fn check_patch(p: &Patch) {
    p.validate().expect("a parsed patch is valid");
    let m = &p.meta;
    let total = m.data_offset.checked_add(m.data_size).expect("layout sums");
    assert!(m.code_size <= m.data_offset);
    assert!(m.mapped_size() <= MAX_MAPPED_SIZE);
    assert!((m.code_size..=total).contains(&(p.image.len() as u64)));
    if m.target.kind != ObjectKind::Kernel {
        assert!(m.header_room() <= MAX_IMAGE_HEADER_LEN as u64);
    }
    for f in &m.functions {
        let (expected, mask) = p.expected_and_mask(f).expect("expected and mask decode");
        assert_eq!(expected.len() as u64, f.size);
        assert_eq!(mask.len() as u64, f.size);
        assert!(f.replacement < m.code_size);
        assert!(f
            .vaddr
            .checked_add(f.size)
            .is_some_and(|e| e <= MAX_ADDRESS));
        assert!(!f.jump || f.size >= arch::JUMP_LEN as u64);
    }
    // Relocate as apply does: every field lies inside the image.
    if total <= 1 << 20 {
        let mut image = p.image.clone();
        image.resize(total as usize, 0);
        let base = 0x7000_0000_0000u64;
        for r in &m.relocations {
            let kind = r.kind;
            let end = r.offset + kind.size() as u64;
            assert!(end <= m.code_size || (r.offset >= m.data_offset && end <= total));
            match kind.write(
                &mut image,
                r.offset as usize,
                base + r.offset,
                base + 0x1000,
                r.addend,
            ) {
                Ok(()) | Err(FieldError::Overflow { .. }) => {}
                Err(e) => panic!("relocation outside the image: {e}"),
            }
        }
    }
    let again = Patch::from_bytes(&p.to_bytes()).expect("a written patch parses again");
    assert_eq!(&again, p);
}

/// Decode `bytes` as a record read from a process, as is and framed by a
/// magic and length; whatever is accepted is checked.
pub fn decode_header(bytes: &[u8]) {
    if let Ok(h) = AppliedRecord::decode(bytes) {
        check_header(&h, AppliedRecord::record_len(bytes).expect("record length"));
    }
    if bytes.len() <= MAX_IMAGE_HEADER_LEN - 20 {
        let mut framed = hotsplice_patch::IMAGE_MAGIC.to_vec();
        framed.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        framed.extend_from_slice(bytes);
        if let Ok(h) = AppliedRecord::decode(&framed) {
            check_header(&h, framed.len());
        }
    }
}

/// What every decoded record is, and what undo relies on.
pub fn check_header(h: &AppliedRecord, record_len: usize) {
    h.validate(record_len).expect("a decoded record is valid");
    let map_end = h.map_start.checked_add(h.map_len).expect("mapping sums");
    assert!(h.code_start >= h.map_start + record_len as u64);
    assert!(h
        .code_start
        .checked_add(h.code_len)
        .is_some_and(|e| e <= map_end));
    for f in &h.functions {
        assert!(h.code_contains(f.new_addr));
        assert!(f.addr.checked_add(f.size).is_some());
        if f.jumped() {
            assert_eq!(
                f.saved_bytes().expect("saved bytes decode").len(),
                arch::JUMP_LEN
            );
            assert!(f.size >= arch::JUMP_LEN as u64);
        }
    }
    let encoded = h.encode();
    if encoded.len() <= record_len {
        assert_eq!(AppliedRecord::decode(&encoded).as_ref(), Ok(h));
    }
}
