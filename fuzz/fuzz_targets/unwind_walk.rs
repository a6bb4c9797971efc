//! The busy check's stack walk on untrusted tables: `.eh_frame` bytes (as
//! read from a target's files, or from a patch record in its memory) and
//! stack memory, both from the input. The walk must end — without a
//! panic, within its frame bound and a bounded number of memory reads —
//! whatever the tables say (rules that loop, expressions that never
//! finish, frames that do not move).
#![no_main]

use arbitrary::Arbitrary;
use hotsplice_fuzz::unwind::{check_walk, Tables, WalkInput};

#[derive(Arbitrary, Debug)]
enum Eh {
    /// The section as given.
    Raw(Vec<u8>),
    /// One well-formed CIE and FDE around instructions from the input
    /// (what random bytes rarely reach).
    Built {
        cie: Vec<u8>,
        fde: Vec<u8>,
        len: u16,
        data_align: i8,
    },
    /// An ELF image whose `.eh_frame` is read as from an object file.
    Elf(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
struct Input {
    eh: Eh,
    walk: WalkInput,
}

libfuzzer_sys::fuzz_target!(|input: Input| {
    let mut code_len = 0x1_0000;
    let tables = match input.eh {
        Eh::Raw(bytes) => Tables::from_eh_frame(bytes, hotsplice_fuzz::unwind::EH_FRAME_AT),
        Eh::Built {
            cie,
            fde,
            len,
            data_align,
        } => {
            code_len = len.max(1) as u64;
            Tables::from_eh_frame(
                hotsplice_fuzz::unwind::eh_frame(&cie, &fde, code_len, data_align),
                hotsplice_fuzz::unwind::EH_FRAME_AT,
            )
        }
        Eh::Elf(image) => match Tables::parse(image.as_slice()) {
            Ok(t) => t,
            Err(_) => return,
        },
    };
    check_walk(tables, &input.walk, code_len);
});
