//! The record `apply` leaves at the start of a patch mapping, as read out
//! of a process that may have written anything there.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    hotsplice_fuzz::decode_header(data);
});
