//! Metadata and image of a patch file, framed with a correct header and
//! checksum so that every input reaches the metadata checks. Input: a
//! little-endian u16 metadata length, the metadata, then the image.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let meta_len = (u16::from_le_bytes([data[0], data[1]]) as usize).min(data.len() - 2);
    let (meta, image) = data[2..].split_at(meta_len);
    hotsplice_fuzz::parse_patch_file(&hotsplice_fuzz::patch_file(meta, image, &[]));
});
