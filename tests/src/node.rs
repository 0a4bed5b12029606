//! One `officesyncd` process under test: start it and wait until healthy, run the CLI and
//! HTTP requests against it, stop it with SIGTERM or SIGKILL, restart it on the same config,
//! and kill it on drop.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::bins;
use crate::http::{ApiClient, Record, WriteAck};
use crate::process::{
    self, officesync_command, run_bounded, strip_ansi, wait_child, OutputExt as _, CLI_TIMEOUT,
};

/// How long a daemon may take to answer `GET /health` after it is spawned.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Environment variable overriding [`START_TIMEOUT`], in seconds (the province benchmark
/// starts a thousand daemons on one machine, where a start can take longer).
pub const START_TIMEOUT_ENV: &str = "OFFICESYNC_TEST_START_TIMEOUT_SECS";

/// [`START_TIMEOUT`], or what [`START_TIMEOUT_ENV`] says.
pub fn start_timeout() -> Duration {
    std::env::var(START_TIMEOUT_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(START_TIMEOUT, Duration::from_secs)
}
/// How long a daemon may take to exit after SIGTERM.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// How often the harness polls while waiting.
const POLL: Duration = Duration::from_millis(20);

/// What is needed to run one daemon: its name, config file, API address and log file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonSpec {
    /// Node name (for messages).
    pub name: String,
    /// The TOML config passed as `officesyncd --config`.
    pub config_path: PathBuf,
    /// The `[api] listen` address in that config.
    pub api_addr: SocketAddr,
    /// File receiving the daemon's stdout and stderr (appended across restarts).
    pub log_path: PathBuf,
}

/// Why a daemon did not become healthy.
#[derive(Debug)]
pub struct StartFailure {
    /// The daemon's exit status; `None` when it never answered `/health` within
    /// [`START_TIMEOUT`] and was killed.
    pub status: Option<ExitStatus>,
    /// What it logged in this run (ANSI colours stripped).
    pub log: String,
}

impl fmt::Display for StartFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.status {
            Some(status) => write!(f, "officesyncd exited during start-up ({status})")?,
            None => write!(
                f,
                "officesyncd did not answer GET /health within {:?} (killed it)",
                start_timeout()
            )?,
        }
        write!(f, "\n--- officesyncd log ---\n{}", self.log)
    }
}

impl std::error::Error for StartFailure {}

/// The mutable part of a node: the process of the current run.
#[derive(Debug)]
struct Running {
    /// The daemon process, `None` once it has exited and been reaped.
    child: Option<Child>,
    /// Length of the log file when the current run started.
    log_offset: u64,
    /// Client of the current run (a fresh connection pool per run).
    api: ApiClient,
}

/// A daemon under test. All methods take `&self`, so a node can be shared with writer
/// threads; dropping it kills a still-running daemon.
#[derive(Debug)]
pub struct TestNode {
    spec: DaemonSpec,
    state: Mutex<Running>,
    /// Extra environment variables for the daemon's next runs (see [`TestNode::set_env`]).
    env: Mutex<Vec<(String, String)>>,
    /// Keeps the directory holding the config, data and log alive as long as the node.
    _keep: Option<Arc<dyn Send + Sync + fmt::Debug>>,
}

impl TestNode {
    /// Spawns `officesyncd --config` for `spec` and waits until `GET /health` answers;
    /// panics with the daemon's log if it exits or is not healthy within [`START_TIMEOUT`].
    pub fn start(spec: DaemonSpec) -> TestNode {
        TestNode::try_start(spec).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`TestNode::start`], but returns the failure (exit status and log) instead of
    /// panicking, for tests of refused start-ups.
    pub fn try_start(spec: DaemonSpec) -> Result<TestNode, StartFailure> {
        let running = spawn(&spec, &[])?;
        Ok(TestNode {
            spec,
            state: Mutex::new(running),
            env: Mutex::new(Vec::new()),
            _keep: None,
        })
    }

    /// Keeps `guard` (typically the temp dir holding this node's files) alive until the
    /// node is dropped.
    pub fn keep_alive(mut self, guard: Arc<dyn Send + Sync + fmt::Debug>) -> TestNode {
        self._keep = Some(guard);
        self
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// What this node runs.
    pub fn spec(&self) -> &DaemonSpec {
        &self.spec
    }

    /// The API address.
    pub fn api_addr(&self) -> SocketAddr {
        self.spec.api_addr
    }

    /// The config file.
    pub fn config_path(&self) -> &Path {
        &self.spec.config_path
    }

    /// A client of the current run's API.
    pub fn api(&self) -> ApiClient {
        self.lock().api.clone()
    }

    /// The daemon's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        let mut state = self.lock();
        reap(&mut state);
        state.child.as_ref().map(Child::id)
    }

    /// True while the daemon process is alive.
    pub fn is_running(&self) -> bool {
        self.pid().is_some()
    }

    /// The whole log (every run), ANSI colours stripped.
    pub fn log(&self) -> String {
        read_log(&self.spec.log_path, 0)
    }

    /// The log of the current (or last) run only, ANSI colours stripped.
    pub fn current_log(&self) -> String {
        let offset = self.lock().log_offset;
        read_log(&self.spec.log_path, offset)
    }

    /// Runs the `officesync` CLI with `args` against this node (`OFFICESYNC_API` set to its
    /// API address, `OFFICESYNC_TOKEN` to its admin token), bounded by [`CLI_TIMEOUT`].
    pub fn cli<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Output {
        run_bounded(self.cli_command(args), None, CLI_TIMEOUT)
    }

    /// Like [`TestNode::cli`], feeding `stdin` to the CLI.
    pub fn cli_stdin<S: AsRef<std::ffi::OsStr>>(&self, args: &[S], stdin: &[u8]) -> Output {
        run_bounded(self.cli_command(args), Some(stdin), CLI_TIMEOUT)
    }

    /// The `Command` [`TestNode::cli`] runs, for tests that need to adjust it.
    pub fn cli_command<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Command {
        let mut cmd = officesync_command(args);
        cmd.env("OFFICESYNC_API", self.spec.api_addr.to_string());
        if let Some(token) = self.api().token() {
            cmd.env("OFFICESYNC_TOKEN", token);
        }
        cmd
    }

    /// `PUT` through the HTTP API; panics unless acknowledged.
    pub fn put(&self, collection: &str, key: &str, value: &[u8]) -> WriteAck {
        self.api().put(collection, key, value)
    }

    /// `GET` through the HTTP API; `None` when absent or deleted.
    pub fn get(&self, collection: &str, key: &str) -> Option<Record> {
        self.api().get(collection, key)
    }

    /// `GET /v1/status`.
    pub fn status(&self) -> Value {
        self.api().status()
    }

    /// Sends SIGTERM (with the `kill` command). Panics if the daemon is not running.
    pub fn sigterm(&self) {
        let pid = self
            .pid()
            .unwrap_or_else(|| panic!("sigterm: {} is not running", self.spec.name));
        let mut kill = Command::new("kill");
        kill.args(["-TERM", &pid.to_string()]);
        run_bounded(kill, None, CLI_TIMEOUT).expect_success("kill -TERM");
    }

    /// Waits up to `timeout` for the daemon to exit and returns its status; panics with the
    /// log (after SIGKILL) if it does not.
    pub fn wait_exit(&self, timeout: Duration) -> ExitStatus {
        let mut state = self.lock();
        let Some(mut child) = state.child.take() else {
            panic!("wait_exit: {} is not running", self.spec.name);
        };
        let status = wait_child(&mut child, timeout);
        drop(state);
        status.unwrap_or_else(|| {
            panic!(
                "{} did not exit within {timeout:?} (killed it with SIGKILL)\n--- log ---\n{}",
                self.spec.name,
                self.current_log()
            )
        })
    }

    /// SIGTERM, then waits up to [`STOP_TIMEOUT`] for the exit; returns the exit status.
    pub fn stop(&self) -> ExitStatus {
        self.sigterm();
        self.wait_exit(STOP_TIMEOUT)
    }

    /// Kills the daemon with SIGKILL (no chance to flush anything) and reaps it. Panics if
    /// it is not running.
    pub fn kill9(&self) {
        let mut state = self.lock();
        let Some(mut child) = state.child.take() else {
            panic!("kill9: {} is not running", self.spec.name);
        };
        // std's Child::kill sends SIGKILL on Unix.
        let _ = child.kill();
        if wait_child(&mut child, STOP_TIMEOUT).is_none() {
            panic!("{} survived SIGKILL for {STOP_TIMEOUT:?}", self.spec.name);
        }
    }

    /// Starts the daemon again on the same config (stopping it first with SIGTERM if it is
    /// running) and waits until it is healthy; panics with the log on failure.
    pub fn restart(&self) {
        self.try_restart()
            .unwrap_or_else(|e| panic!("restart: {e}"));
    }

    /// Like [`TestNode::restart`], returning a failed start instead of panicking.
    pub fn try_restart(&self) -> Result<(), StartFailure> {
        if self.is_running() {
            let status = self.stop();
            assert!(
                status.success(),
                "{} exited with {status} on SIGTERM\n--- log ---\n{}",
                self.spec.name,
                self.current_log()
            );
        }
        let env = self.env.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let running = spawn(&self.spec, &env)?;
        *self.lock() = running;
        Ok(())
    }

    /// Sets (`Some`) or removes (`None`) an environment variable of the daemon from its next
    /// (re)start on, e.g. the test-only `OFFICESYNC_CLOCK_OFFSET_MS`.
    pub fn set_env(&self, key: &str, value: Option<&str>) {
        let mut env = self.env.lock().unwrap_or_else(|p| p.into_inner());
        env.retain(|(k, _)| k != key);
        if let Some(value) = value {
            env.push((key.to_owned(), value.to_owned()));
        }
    }

    fn lock(&self) -> MutexGuard<'_, Running> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        let mut state = self.lock();
        if let Some(mut child) = state.child.take() {
            let _ = child.kill();
            let _ = wait_child(&mut child, STOP_TIMEOUT);
        }
    }
}

/// Reaps the child if it has exited.
fn reap(state: &mut Running) {
    if let Some(child) = state.child.as_mut() {
        if !matches!(child.try_wait(), Ok(None)) {
            state.child = None;
        }
    }
}

/// Spawns the daemon and waits for health, exit or the start timeout.
/// The admin token the daemon of `config` wrote at first start (`DATA_DIR/admin.token`), or
/// `None` when it serves without authentication or the config names no readable data dir.
pub fn admin_token(config: &Path) -> Option<String> {
    let text = std::fs::read_to_string(config).ok()?;
    let parsed = officesync_daemon::config::Config::from_toml_str(&text, config).ok()?;
    officesync_daemon::config::read_admin_token(&parsed.node.data_dir).ok()
}

fn spawn(spec: &DaemonSpec, env: &[(String, String)]) -> Result<Running, StartFailure> {
    let log_offset = std::fs::metadata(&spec.log_path).map_or(0, |m| m.len());
    let log = open_log(&spec.log_path);
    let err = log
        .try_clone()
        .unwrap_or_else(|e| panic!("cannot clone {}: {e}", spec.log_path.display()));
    let mut cmd = Command::new(bins::officesyncd_path());
    cmd.arg("--config")
        .arg(&spec.config_path)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        .env_remove("OFFICESYNC_API")
        .env(
            "RUST_LOG",
            std::env::var("OFFICESYNC_TEST_RUST_LOG").unwrap_or_else(|_| "info".to_owned()),
        )
        .envs(env.iter().map(|(k, v)| (k, v)));
    let line = process::command_line(&cmd);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {line}: {e}"));
    let api = ApiClient::new(spec.api_addr);
    let deadline = Instant::now() + start_timeout();
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                return Err(StartFailure {
                    status: Some(status),
                    log: read_log(&spec.log_path, log_offset),
                })
            }
            Ok(None) => {}
            Err(e) => panic!("cannot wait for {line}: {e}"),
        }
        if api.healthy() {
            let api = api.with_token(admin_token(&spec.config_path));
            return Ok(Running {
                child: Some(child),
                log_offset,
                api,
            });
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = wait_child(&mut child, STOP_TIMEOUT);
            return Err(StartFailure {
                status: None,
                log: read_log(&spec.log_path, log_offset),
            });
        }
        thread::sleep(POLL);
    }
}

fn open_log(path: &Path) -> File {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("cannot open log {}: {e}", path.display()))
}

/// The log from byte `offset` on, ANSI colours stripped ("" when it does not exist).
fn read_log(path: &Path, offset: u64) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    let start = usize::try_from(offset)
        .unwrap_or(usize::MAX)
        .min(bytes.len());
    strip_ansi(&String::from_utf8_lossy(&bytes[start..]))
}
