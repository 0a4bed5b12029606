//! Helpers shared by the CLI's integration tests.

use std::io::Write;
use std::process::{Command, Output, Stdio};

/// What the CLI probes for a node config (`/etc/officesync/officesync.toml` unless set): none
/// here, so the host running the tests never looks like a node to `ca init`.
pub const NO_NODE_CONFIG: (&str, &str) = (
    "OFFICESYNC_NODE_CONFIG_PROBE",
    "/nonexistent/officesync-test/officesync.toml",
);

/// Runs `officesync` with `args`, `stdin` as its input, extra `env`, and no inherited API
/// address, node config or proxy. A command that exits without reading all of `stdin` is fine.
pub fn run_with(args: &[&str], stdin: &[u8], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_officesync"));
    command
        .args(args)
        .env_remove("OFFICESYNC_API")
        .env_remove("OFFICESYNC_CONFIG")
        .env(NO_NODE_CONFIG.0, NO_NODE_CONFIG.1)
        .env_remove("http_proxy")
        .env_remove("HTTP_PROXY")
        .env_remove("ALL_PROXY")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = command.spawn().expect("spawn officesync");
    let mut input = child.stdin.take().expect("stdin");
    match input.write_all(stdin) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => panic!("write stdin: {e}"),
        _ => {}
    }
    drop(input);
    child.wait_with_output().expect("officesync output")
}
