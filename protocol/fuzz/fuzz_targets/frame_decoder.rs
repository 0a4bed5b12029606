//! Fuzzes the frame decoder, message decoding and validation with arbitrary stream bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    officesync_protocol::fuzzing::frame_decoder(data);
});
