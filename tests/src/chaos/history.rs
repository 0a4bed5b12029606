//! The operation history (Jepsen style) and the concurrent clients that make it: each client
//! writes unique keys, deletes some of its own acknowledged keys and writes a few contested
//! keys, through one node's HTTP API, logging every operation when invoked and when it
//! completes as acknowledged, failed (definitely not applied) or unknown.

use std::fs::File;
use std::io::{BufWriter, Write as _};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::http::record_path;
use crate::{ApiClient, TestRng};

use super::world::COLLECTION;

/// Contested keys every client writes now and then.
pub const HOT_KEYS: u64 = 4;

/// What an operation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Still running.
    Invoked,
    /// Acknowledged (HTTP 200).
    Ok,
    /// Definitely not applied (refused connection, 4xx).
    Failed,
    /// May or may not have been applied (timeout, reset, 5xx).
    Unknown,
}

impl Outcome {
    /// Its name in the logs and the summary.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Invoked => "invoked",
            Outcome::Ok => "acknowledged",
            Outcome::Failed => "failed",
            Outcome::Unknown => "unknown",
        }
    }
}

/// One client operation.
#[derive(Debug, Clone)]
pub struct Op {
    /// Position in the history.
    pub id: u64,
    /// The node whose API served it.
    pub node: String,
    /// `true` for a delete, `false` for a put.
    pub delete: bool,
    /// The key.
    pub key: String,
    /// The value put (unique over the run), `None` for a delete.
    pub value: Option<String>,
    /// Milliseconds since the run started, at invocation and completion.
    pub invoked_ms: u64,
    /// See `invoked_ms`.
    pub completed_ms: u64,
    /// The outcome.
    pub outcome: Outcome,
    /// The acknowledged version, `origin:counter`.
    pub version: Option<String>,
}

/// The shared history and its log file.
#[derive(Debug)]
pub struct History {
    start: Instant,
    ops: Mutex<Vec<Op>>,
    log: Mutex<BufWriter<File>>,
}

impl History {
    /// An empty history logging to `path` (JSON lines).
    pub fn new(path: &Path, start: Instant) -> anyhow::Result<History> {
        Ok(History {
            start,
            ops: Mutex::new(Vec::new()),
            log: Mutex::new(BufWriter::new(File::create(path)?)),
        })
    }

    fn ops(&self) -> MutexGuard<'_, Vec<Op>> {
        self.ops.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn log(&self, op: &Op) {
        let line = json!({
            "t_ms": if op.outcome == Outcome::Invoked { op.invoked_ms } else { op.completed_ms },
            "op": op.id, "node": op.node, "f": if op.delete { "delete" } else { "put" },
            "key": op.key, "value": op.value, "type": op.outcome.name(), "version": op.version,
        });
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        // The log is for people reading a failure; the in-memory history is what is checked.
        let _ = writeln!(log, "{line}");
    }

    /// Records an invocation and returns its id.
    fn invoke(&self, node: &str, delete: bool, key: &str, value: Option<String>) -> u64 {
        let mut ops = self.ops();
        let op = Op {
            id: ops.len() as u64,
            node: node.to_owned(),
            delete,
            key: key.to_owned(),
            value,
            invoked_ms: self.now_ms(),
            completed_ms: 0,
            outcome: Outcome::Invoked,
            version: None,
        };
        self.log(&op);
        ops.push(op);
        ops.len() as u64 - 1
    }

    /// Records the completion of operation `id`.
    fn complete(&self, id: u64, outcome: Outcome, version: Option<String>) {
        let mut ops = self.ops();
        if let Some(op) = ops.get_mut(id as usize) {
            op.completed_ms = self.now_ms();
            op.outcome = outcome;
            op.version = version;
            let op = op.clone();
            drop(ops);
            self.log(&op);
        }
    }

    /// A copy of every operation so far.
    pub fn snapshot(&self) -> Vec<Op> {
        self.ops().clone()
    }

    /// Flushes the log file.
    pub fn flush(&self) {
        let _ = self.log.lock().unwrap_or_else(|p| p.into_inner()).flush();
    }
}

/// One client: a thread issuing operations against one node until told to stop.
#[derive(Debug)]
pub struct Client {
    handle: JoinHandle<()>,
}

/// What a client needs.
#[derive(Debug, Clone)]
pub struct ClientSpec {
    /// Its name (part of its keys).
    pub name: String,
    /// The node it talks to.
    pub node: String,
    /// That node's API.
    pub api: ApiClient,
    /// That node's gate (held shared per operation).
    pub gate: Arc<RwLock<()>>,
    /// Its random seed.
    pub seed: u64,
    /// Pause between operations.
    pub pause: Duration,
    /// Hard cap on its operations.
    pub max_ops: u64,
}

impl Client {
    /// Starts the client thread; it stops when `stop` is set or after `max_ops`.
    pub fn start(spec: ClientSpec, history: Arc<History>, stop: Arc<AtomicBool>) -> Client {
        let handle = thread::spawn(move || run(spec, &history, &stop));
        Client { handle }
    }

    /// Waits for the thread to end.
    pub fn join(self) {
        let _ = self.handle.join();
    }
}

fn run(spec: ClientSpec, history: &History, stop: &AtomicBool) {
    let mut rng = TestRng::new(spec.seed);
    let mut live: Vec<String> = Vec::new();
    for seq in 0..spec.max_ops {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let roll = rng.range(0, 100);
        let (delete, key) = if roll < 10 && !live.is_empty() {
            let at = rng.range(0, live.len() as u64) as usize;
            (true, live.swap_remove(at))
        } else if roll < 30 {
            (false, format!("hot/{}", rng.range(0, HOT_KEYS)))
        } else {
            (false, format!("u/{}/{seq}", spec.name))
        };
        let value = (!delete).then(|| format!("{}#{seq}", spec.name));
        {
            let _open = spec.gate.read().unwrap_or_else(|p| p.into_inner());
            let id = history.invoke(&spec.node, delete, &key, value.clone());
            let path = record_path(COLLECTION, &key);
            let reply = if delete {
                spec.api.request("DELETE", &path, None)
            } else {
                spec.api
                    .request("PUT", &path, value.as_deref().map(str::as_bytes))
            };
            let (outcome, version) = classify(reply);
            history.complete(id, outcome, version);
            if outcome == Outcome::Ok && !delete && key.starts_with("u/") {
                live.push(key);
            }
        }
        thread::sleep(spec.pause);
    }
}

/// Sorts an HTTP result into an outcome.
fn classify(reply: Result<crate::HttpReply, ureq::Error>) -> (Outcome, Option<String>) {
    match reply {
        Ok(r) if r.status == 200 => {
            let version = serde_json::from_slice::<serde_json::Value>(&r.body)
                .ok()
                .and_then(|v| v["version"].as_str().map(str::to_owned));
            (Outcome::Ok, version)
        }
        Ok(r) if (400..500).contains(&r.status) => (Outcome::Failed, None),
        Ok(_) => (Outcome::Unknown, None),
        Err(e) if refused(&e) => (Outcome::Failed, None),
        Err(_) => (Outcome::Unknown, None),
    }
}

/// True when the connection was refused: nothing reached the daemon.
fn refused(e: &ureq::Error) -> bool {
    match e {
        ureq::Error::Io(io) => io.kind() == std::io::ErrorKind::ConnectionRefused,
        other => other.to_string().contains("Connection refused"),
    }
}
