//! Patches built field by field from the input, with the numbers where
//! the checks are (page multiples, the ends of `u64` and `i64`, sizes
//! around a jump) and `expected`/`mask` as long as `size` says when the
//! input asks for it: what random bytes rarely reach through JSON. Every
//! patch validation accepts must be one the engine can apply, and parsing
//! its file must agree with validation.
#![no_main]

use arbitrary::Arbitrary;
use hotsplice_patch::*;

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Num {
    Small(u8),
    Pages(u8),
    PagesPlus(u8, u8),
    FromTop(u8),
    AroundI64Max(i8),
    Any(u64),
}

impl Num {
    fn get(self) -> u64 {
        match self {
            Num::Small(n) => n as u64,
            Num::Pages(n) => n as u64 * PAGE,
            Num::PagesPlus(n, k) => n as u64 * PAGE + k as u64,
            Num::FromTop(n) => u64::MAX - n as u64,
            Num::AroundI64Max(d) => (i64::MAX as u64).wrapping_add(d as i64 as u64),
            Num::Any(v) => v,
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Func {
    vaddr: Num,
    size: Num,
    replacement: Num,
    jump: bool,
    hex_matches_size: bool,
}

#[derive(Arbitrary, Debug)]
struct Reloc {
    offset: Num,
    kind: u8,
    target: u8,
    value: Num,
    addend: i64,
}

#[derive(Arbitrary, Debug)]
struct Input {
    kind: u8,
    code_size: Num,
    data_offset: Num,
    data_size: Num,
    image_len: u16,
    functions: Vec<Func>,
    relocations: Vec<Reloc>,
    symbols: Vec<(Num, Num)>,
}

fn build(input: &Input) -> Patch {
    let mut meta = PatchMeta::example();
    meta.target.kind = match input.kind % 3 {
        0 => ObjectKind::Relocatable,
        1 => ObjectKind::Fixed,
        _ => ObjectKind::Kernel,
    };
    meta.code_size = input.code_size.get();
    meta.data_offset = input.data_offset.get();
    meta.data_size = input.data_size.get();
    meta.functions = input
        .functions
        .iter()
        .take(16)
        .enumerate()
        .map(|(i, f)| {
            let size = f.size.get();
            let n = if f.hex_matches_size && size <= 256 {
                size as usize
            } else {
                1
            };
            Function {
                name: format!("f{i}"),
                file: None,
                vaddr: f.vaddr.get(),
                size,
                expected: "c3".repeat(n),
                mask: "ff".repeat(n),
                replacement: f.replacement.get(),
                jump: f.jump,
            }
        })
        .collect();
    meta.relocations = input
        .relocations
        .iter()
        .take(16)
        .map(|r| Relocation {
            offset: r.offset.get(),
            kind: FieldKind::ALL[r.kind as usize % FieldKind::ALL.len()],
            target: match r.target % 5 {
                0 => RelocTarget::Image {
                    offset: r.value.get(),
                },
                1 => RelocTarget::Object {
                    vaddr: r.value.get(),
                },
                2 => RelocTarget::ObjectIfunc {
                    vaddr: r.value.get(),
                },
                3 => RelocTarget::Dynamic {
                    name: "strtol".into(),
                },
                _ => RelocTarget::Absolute {
                    value: r.value.get(),
                },
            },
            addend: r.addend,
        })
        .collect();
    meta.symbols = input
        .symbols
        .iter()
        .take(16)
        .map(|(offset, size)| NewSymbol {
            name: "s".into(),
            offset: offset.get(),
            size: size.get(),
            kind: "data".into(),
        })
        .collect();
    Patch {
        meta,
        image: vec![0xcc; input.image_len as usize],
    }
}

libfuzzer_sys::fuzz_target!(|input: Input| {
    let patch = build(&input);
    let valid = patch.validate();
    let parsed = Patch::from_bytes(&patch.to_bytes());
    assert_eq!(
        valid.as_ref().map_err(ToString::to_string).err(),
        parsed.as_ref().map_err(ToString::to_string).err(),
        "validation and parsing disagree"
    );
    if valid.is_ok() {
        hotsplice_fuzz::check_patch(&patch);
    }
});
