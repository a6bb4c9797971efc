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

/// The stack walk of the busy check on tables and stacks from the input.
pub mod unwind {
    use arbitrary::Arbitrary;
    use hotsplice_arch::current::dwarf;
    use hotsplice_engine::unwind::{Memory, ObjectCode, TableCache, Unwinder};
    pub use hotsplice_engine::unwind::{Stop, Tables};
    use std::cell::Cell;

    /// Where the section is taken to lie (its base for pc-relative
    /// pointers).
    pub const EH_FRAME_AT: u64 = 0x10_0000;
    /// Where built FDEs start, and the code the walk begins in.
    pub const CODE_AT: u64 = 0x40_0000;
    /// Where the stack from the input lies.
    pub const STACK_AT: u64 = 0x7fff_0000;

    /// Frames a walk reports at most: the instruction pointer and up to
    /// 512 return addresses (the walker's bound).
    pub const MAX_WALK: usize = 513;
    /// Memory reads a walk makes at most: per frame, the CFA and every
    /// register's rule, each an expression of at most 64 reads, or one.
    pub const MAX_READS: usize = MAX_WALK * (dwarf::REGS + 1) * 65;

    /// The registers and stack of a thread to walk.
    #[derive(Arbitrary, Debug)]
    pub struct WalkInput {
        pub pc: u16,
        pub sp: u16,
        pub regs: [u64; 4],
        pub stack: Vec<u8>,
        /// Words outside the stack read as a function of their address
        /// (else unreadable): lets rules wander over "memory".
        pub everywhere: Option<u64>,
    }

    /// A function's usual entry rules: CFA = rsp + 8, the return address
    /// at CFA - 8 (with a data alignment of -8).
    const ENTRY: [u8; 5] = [0x0c, 0x07, 0x08, 0x90, 0x01];

    /// One CIE (augmentation `zR`, absolute 8-byte pointers, return
    /// address in column 16) with the usual entry rules then `cie` as its
    /// initial instructions, and one FDE for `len` bytes at [`CODE_AT`]
    /// with `fde`'s; a terminator.
    pub fn eh_frame(cie: &[u8], fde: &[u8], len: u64, data_align: i8) -> Vec<u8> {
        let mut c = vec![0, 0, 0, 0, 1, b'z', b'R', 0, 1];
        c.push(data_align as u8 & 0x7f);
        c.extend_from_slice(&[dwarf::RA as u8, 1, 0]);
        c.extend_from_slice(&ENTRY);
        c.extend_from_slice(cie);
        let mut out = Vec::new();
        out.extend_from_slice(&(c.len() as u32).to_le_bytes());
        out.extend_from_slice(&c);
        let pointer = out.len() as u32 + 4;
        let mut f = pointer.to_le_bytes().to_vec();
        f.extend_from_slice(&CODE_AT.to_le_bytes());
        f.extend_from_slice(&len.max(1).to_le_bytes());
        f.push(0);
        f.extend_from_slice(fde);
        out.extend_from_slice(&(f.len() as u32).to_le_bytes());
        out.extend_from_slice(&f);
        out.extend_from_slice(&[0; 4]);
        out
    }

    struct Stack<'a> {
        bytes: &'a [u8],
        code_len: u64,
        everywhere: Option<u64>,
        reads: Cell<usize>,
    }

    impl Memory for Stack<'_> {
        fn word(&self, addr: u64) -> Option<u64> {
            self.reads.set(self.reads.get() + 1);
            if let Some(off) = addr.checked_sub(STACK_AT) {
                let off = usize::try_from(off).ok()?;
                if let Some(w) = self.bytes.get(off..off.checked_add(8)?) {
                    let w = u64::from_le_bytes(w.try_into().ok()?);
                    // Small words are return addresses into the code the
                    // FDEs cover: what lets a walk go many frames deep.
                    return Some(if w < 0x1_0000 {
                        CODE_AT + w % self.code_len
                    } else {
                        w
                    });
                }
            }
            self.everywhere.map(|seed| addr.rotate_left(17) ^ seed)
        }
    }

    /// Walk `w` over `tables` (one object covering every address), from
    /// and (small stack words) into the `code_len` bytes at [`CODE_AT`]:
    /// the walk ends within its bounds, and what it reports is consistent.
    pub fn check_walk(tables: Tables, w: &WalkInput, code_len: u64) {
        let code_len = code_len.max(1);
        let pc = CODE_AT + w.pc as u64 % code_len;
        let mut cache = TableCache::default();
        let mut tables = Some(tables);
        let object = ObjectCode {
            start: 0,
            end: u64::MAX,
            bias: 0,
            name: "fuzzed",
            key: "fuzzed".into(),
        };
        let mut unwinder = Unwinder::new([object], &mut cache, |_| {
            tables
                .take()
                .ok_or_else(|| hotsplice_engine::unwind::NoTables("loaded twice".into()))
        });
        let mut regs = [None; dwarf::REGS];
        for (i, v) in w.regs.iter().enumerate() {
            regs[i] = Some(*v);
        }
        regs[dwarf::SP as usize] = Some(STACK_AT + w.sp as u64 % (w.stack.len() as u64 + 1));
        regs[6] = Some(STACK_AT.wrapping_add(w.regs[3] % 4096));
        regs[dwarf::RA as usize] = Some(pc);
        let mem = Stack {
            bytes: &w.stack,
            code_len,
            everywhere: w.everywhere,
            reads: Cell::new(0),
        };
        // Twice: the second walk runs from the rules cached by the first
        // and must say the same.
        let mut first = Vec::new();
        let stop = unwinder.walk(&regs, &mem, &mut first);
        let mut again = Vec::new();
        let stop2 = unwinder.walk(&regs, &mem, &mut again);
        assert_eq!(stop, stop2, "the cached rules walk differently");
        assert_eq!(first, again, "the cached rules walk differently");
        assert!(
            !first.is_empty() && first.len() <= MAX_WALK,
            "{} frames",
            first.len()
        );
        assert_eq!(first[0], (pc, true));
        assert!(
            mem.reads.get() <= 2 * MAX_READS,
            "{} memory reads",
            mem.reads.get()
        );
        if stop == Stop::TooDeep {
            assert_eq!(first.len(), MAX_WALK);
        }
        // Where it stopped can be said.
        let _ = stop.to_string();
    }
}
