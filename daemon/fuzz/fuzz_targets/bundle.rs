//! Fuzzes what an offline bundle's bytes go through before any signature is checked: the frame,
//! the JSON header and the zstd-compressed bincode body, within bounds.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    officesync_daemon::bundle::fuzz_bundle(data);
});
