//! Fuzzes the sync session state machine with arbitrary sequences of inputs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    officesync_protocol::fuzzing::session_sequence(data);
});
