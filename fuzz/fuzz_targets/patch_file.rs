//! A whole patch file, as read from disk.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    hotsplice_fuzz::parse_patch_file(data);
});
