//! The cost of staff access on the local API: requests per second over real HTTP on loopback
//! (keep-alive clients on threads) against one node's API served without authentication
//! (`auth = "none"`) and with tokens (every request authenticated, every write also recorded
//! durably in the audit log).

use std::sync::Arc;
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use officesync_daemon::api::{self, ApiState, Gate, Journal, ServeLimits};
use officesync_daemon::audit::{AuditLog, AuditOptions};
use officesync_daemon::auth::{Role, Users};
use officesync_daemon::replica::{CommitMode, Replica, ReplicaOptions};
use officesync_daemon::store::SledStore;
use serde_json::json;

use crate::replication::progress;
use crate::{emit, TableRow};

/// Concurrent HTTP clients.
const CLIENTS: usize = 8;
/// Keys read back.
const KEYS: usize = 100;

/// One served API and the token to use with it (`None`: no authentication).
struct Served {
    addr: std::net::SocketAddr,
    token: Option<String>,
    stop: tokio::sync::watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

async fn serve(with_auth: bool) -> Result<Served> {
    let dir = tempfile::tempdir()?;
    let store = SledStore::open(&dir.path().join("store"))?;
    let mut opts = ReplicaOptions::new("bench");
    opts.commit = CommitMode::Periodic(std::time::Duration::from_millis(100));
    let replica = Replica::open(Arc::new(store), opts)?;
    for i in 0..KEYS {
        replica
            .write("bench", &format!("k{i:03}"), Some(vec![b'x'; 256]))
            .await?;
    }
    let mut state = ApiState::new(replica);
    let mut token = None;
    if with_auth {
        let (users, _) = Users::open(dir.path(), 0)?;
        token = Some(users.add("bench", Role::Writer, None, 0)?);
        let log = AuditLog::open(&dir.path().join("audit"), AuditOptions::default())?;
        state = state
            .with_gate(Gate::tokens(users))
            .with_journal(Journal::start(log)?);
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let app = api::router(state);
    tokio::spawn(api::serve(listener, app, ServeLimits::default(), stopped));
    Ok(Served {
        addr,
        token,
        stop,
        _dir: dir,
    })
}

/// `requests` requests (`PUT` when `write`, else `GET`) spread over [`CLIENTS`] threads;
/// returns requests/s.
fn load(served: &Served, requests: usize, write: bool) -> Result<f64> {
    let per = requests / CLIENTS;
    let start = Instant::now();
    let threads: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let addr = served.addr;
            let token = served.token.clone();
            std::thread::spawn(move || -> Result<()> {
                let agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .proxy(None)
                    .build()
                    .new_agent();
                for i in 0..per {
                    let url = format!(
                        "http://{addr}/v1/collections/bench/records/k{:03}",
                        (c * per + i) % KEYS
                    );
                    let status = if write {
                        let mut req = agent.put(&url);
                        if let Some(t) = &token {
                            req = req.header("authorization", &format!("Bearer {t}"));
                        }
                        req.send(&b"y".repeat(256)[..])?.status()
                    } else {
                        let mut req = agent.get(&url);
                        if let Some(t) = &token {
                            req = req.header("authorization", &format!("Bearer {t}"));
                        }
                        let mut resp = req.call()?;
                        let _ = resp.body_mut().read_to_vec()?;
                        resp.status()
                    };
                    ensure!(status == 200, "{url}: HTTP {status}");
                }
                Ok(())
            })
        })
        .collect();
    for t in threads {
        t.join()
            .map_err(|_| anyhow::anyhow!("a client thread panicked"))?
            .context("API load")?;
    }
    Ok((per * CLIENTS) as f64 / start.elapsed().as_secs_f64())
}

/// The `api_auth` figures: reads and writes per second with and without authentication.
pub(crate) async fn run(quick: bool, rows: &mut Vec<TableRow>) -> Result<()> {
    let (reads, writes) = if quick { (2_000, 400) } else { (40_000, 8_000) };
    progress(format_args!(
        "api_auth: {reads} reads, {writes} writes, {CLIENTS} clients"
    ));
    let open = serve(false).await?;
    let tokens = serve(true).await?;
    for (what, requests, write) in [("GET", reads, false), ("PUT", writes, true)] {
        let (o, t) = {
            let (open, tokens) = (&open, &tokens);
            tokio::task::block_in_place(|| -> Result<(f64, f64)> {
                // Warm both up, then measure.
                load(open, requests / 10, write)?;
                load(tokens, requests / 10, write)?;
                Ok((load(open, requests, write)?, load(tokens, requests, write)?))
            })?
        };
        let ratio = t / o;
        emit(
            rows,
            json!({
                "figure": "api_auth", "request": what, "clients": CLIENTS, "requests": requests,
                "with_token_per_sec": t.round(), "auth_none_per_sec": o.round(), "ratio": ratio,
                "note": if write { "with token: authenticated and recorded in the audit log" } else { "with token: authenticated" },
            }),
            TableRow {
                figure: "api_auth".into(),
                case: format!("{what}, {CLIENTS} clients, {requests} requests"),
                result: format!("{t:.0} req/s with a token"),
                baseline: format!("{o:.0} req/s with auth = none"),
                ratio: Some(ratio),
                target: "-".into(),
                met: None,
            },
        );
    }
    let _ = open.stop.send(true);
    let _ = tokens.stop.send(true);
    Ok(())
}
