//! Fuzzes what a QUIC receive stream's bytes go through: framing, zstd (one-shot and
//! streaming) decompression and message decoding.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    officesync_daemon::transport::fuzz_recv(data);
});
