//! Running processes with a deadline, reading their output, and picking free loopback ports.
//!
//! Every wait in the harness goes through [`run_bounded`] or [`wait_until`], so a hung
//! binary fails the test with what it printed instead of hanging the suite.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::bins;

/// How long a CLI invocation may take before the test fails.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `cmd` to completion, feeding it `stdin` (or `/dev/null`), and collects its output.
///
/// Panics, after killing it, if it is still running after `timeout`; the panic message
/// holds the command line and whatever it printed.
pub fn run_bounded(mut cmd: Command, stdin: Option<&[u8]>, timeout: Duration) -> Output {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let line = command_line(&cmd);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {line}: {e}"));
    let feeder = match (stdin, child.stdin.take()) {
        (Some(bytes), Some(mut pipe)) => {
            let bytes = bytes.to_vec();
            Some(thread::spawn(move || {
                // The child may exit without reading everything: a broken pipe is its choice.
                let _ = pipe.write_all(&bytes);
            }))
        }
        _ => None,
    };
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let status = wait_child(&mut child, timeout);
    if let Some(feeder) = feeder {
        let _ = feeder.join();
    }
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    match status {
        Some(status) => Output {
            status,
            stdout,
            stderr,
        },
        None => panic!(
            "{line} did not finish within {timeout:?}; killed it.\n--- stdout ---\n{}\n--- stderr ---\n{}",
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        ),
    }
}

/// Reads a pipe to its end on a thread.
fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut bytes);
        }
        bytes
    })
}

/// Waits up to `timeout` for `child` to exit; kills (SIGKILL) and reaps it and returns `None`
/// when it does not.
pub fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            Ok(None) => thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("cannot wait for process {}: {e}", child.id()),
        }
    }
}

/// Polls `check` every `every` until it returns true or `timeout` passes; returns whether it
/// succeeded.
pub fn wait_until(timeout: Duration, every: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(every);
    }
}

/// A printable form of a command line, for messages.
pub fn command_line(cmd: &Command) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    parts.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    parts.join(" ")
}

/// A `Command` for the `officesync` CLI with a clean environment (no `OFFICESYNC_API`,
/// `OFFICESYNC_CONFIG` or token variables, no proxy variables inherited from the developer's shell).
pub fn officesync_command<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(bins::officesync_path());
    cmd.args(args)
        .env_remove("OFFICESYNC_API")
        .env_remove("OFFICESYNC_CONFIG")
        .env_remove("OFFICESYNC_TOKEN")
        .env_remove("OFFICESYNC_TOKEN_FILE")
        .env_remove("http_proxy")
        .env_remove("HTTP_PROXY")
        .env_remove("all_proxy")
        .env_remove("ALL_PROXY");
    cmd
}

/// Runs the `officesync` CLI with `args` (offline commands such as `ca init`, or with an
/// explicit `--api`), bounded by [`CLI_TIMEOUT`].
pub fn officesync<S: AsRef<OsStr>>(args: &[S]) -> Output {
    run_bounded(officesync_command(args), None, CLI_TIMEOUT)
}

/// Convenience accessors and assertions on a finished process's [`Output`].
pub trait OutputExt {
    /// The exit code; `None` when killed by a signal.
    fn code(&self) -> Option<i32>;
    /// stdout as (lossy) UTF-8.
    fn stdout_text(&self) -> String;
    /// stderr as (lossy) UTF-8.
    fn stderr_text(&self) -> String;
    /// Status, stdout and stderr, for failure messages.
    fn describe(&self) -> String;
    /// Panics, naming `what` and showing the output, unless the exit code is `code`.
    fn expect_code(&self, code: i32, what: &str) -> &Self;
    /// Panics unless the process exited 0.
    fn expect_success(&self, what: &str) -> &Self {
        self.expect_code(0, what)
    }
}

impl OutputExt for Output {
    fn code(&self) -> Option<i32> {
        self.status.code()
    }

    fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    fn describe(&self) -> String {
        format!(
            "{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status,
            self.stdout_text(),
            self.stderr_text()
        )
    }

    fn expect_code(&self, code: i32, what: &str) -> &Self {
        assert_eq!(
            self.code(),
            Some(code),
            "{what}: expected exit {code}, got {}",
            self.describe()
        );
        self
    }
}

/// A loopback TCP port that was free a moment ago (bound to `127.0.0.1:0`, then released),
/// never one this process handed out before.
pub fn free_tcp_port() -> u16 {
    officesync_daemon::net::free_tcp_port().expect("a free TCP port on 127.0.0.1")
}

/// A loopback UDP port that was free a moment ago, never one this process handed out before.
pub fn free_udp_port() -> u16 {
    officesync_daemon::net::free_udp_port().expect("a free UDP port on 127.0.0.1")
}

/// `127.0.0.1:port`.
pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// `text` without ANSI escape sequences (the daemon colours its log even into a file).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            // Parameters and intermediates, then one final byte in '@'..='~'.
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_colours() {
        assert_eq!(
            strip_ansi("\u{1b}[2m2026\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m node stopped"),
            "2026  INFO node stopped"
        );
        assert_eq!(strip_ansi("plain"), "plain");
    }

    #[test]
    fn ports_are_not_reused() {
        let a = free_tcp_port();
        let b = free_tcp_port();
        assert_ne!(a, b);
        assert_ne!(free_udp_port(), free_udp_port());
    }

    #[test]
    fn bounded_run_collects_output_and_stdin() {
        let out = run_bounded(Command::new("cat"), Some(b"\x00\xffabc"), CLI_TIMEOUT);
        out.expect_success("cat");
        assert_eq!(out.stdout, b"\x00\xffabc");
    }

    #[test]
    #[should_panic(expected = "did not finish")]
    fn bounded_run_kills_hung_process() {
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        run_bounded(cmd, None, Duration::from_millis(200));
    }
}
