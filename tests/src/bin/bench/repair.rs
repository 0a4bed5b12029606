//! Workload `repair`: a hub and an office (`officesyncd` processes) hold the same N records
//! behind equal vectors, but the office has lost 10 of them (its store made to forget them,
//! as damaged storage would: only a digest round notices). `officesync verify`'s API call at
//! the office repairs it through a counting UDP proxy, twice: with both nodes pinned to
//! protocol 2 (the full reconciliation: both sides re-stream the collection) and at protocol
//! 3 (the hash-tree descent and the differing leaves only). Figures: bytes on the wire (both
//! directions, UDP payloads) and time from the verify request until the office's digest
//! equals the hub's, against the bytes that differ.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use officesync_daemon::config::Durability;
use officesync_daemon::replica::lose_keys;
use officesync_daemon::store::SledStore;
use officesync_protocol::Digest;
use officesync_tests::fault_proxy::{Direction, FaultProxy};
use officesync_tests::{ApiClient, TestNode};
use serde_json::json;

use crate::replication::{
    api_status, daemon_sync_addr, filled_hub_at, progress, rec_key, shutdown, spawn_daemon, start,
    wait_api_digest, wait_digest, Kind, Pki, Sizes, COLL, HUB, OFFICE_A,
};
use crate::{emit, TableRow};

/// Keys the office loses before each repair.
const LOST: usize = 10;

/// The test-only protocol pin of `officesyncd`.
const PIN: &str = "OFFICESYNC_MAX_PROTOCOL";

/// One repair's figures.
struct Repaired {
    wire: u64,
    secs: f64,
    /// What the verify request answered.
    verify: String,
}

/// Fills a hub, lets the office catch up, then repairs 10 lost records both ways.
pub(crate) async fn run(pki: &Pki, s: &Sizes, rows: &mut Vec<TableRow>) -> Result<()> {
    let n = s.repair_records;
    let dir = tempfile::tempdir()?;
    let (hub_dir, office_dir) = (dir.path().join("hub"), dir.path().join("office"));
    progress(format_args!(
        "repair: hub with {n} records, office catching up"
    ));
    let (hub, target, _) = filled_hub_at(pki, &hub_dir.join("data"), n, Kind::Random).await?;
    let office = start(
        pki,
        OFFICE_A,
        &office_dir.join("data"),
        Some(hub.sync_addr()),
        Durability::Periodic,
    )
    .await?;
    ensure!(
        wait_digest(office.replica(), &target.digest, s.catch_up_timeout)
            .await?
            .is_some(),
        "the office did not catch up within {:?}",
        s.catch_up_timeout
    );
    office.replica().sync().await?;
    shutdown(vec![office, hub]).await?;

    let mut results = Vec::new();
    for (round, (mode, pin)) in [
        ("full reconciliation (protocol 2)", Some("2")),
        ("hash tree (protocol 3)", None),
    ]
    .into_iter()
    .enumerate()
    {
        let lost: Vec<String> = (0..LOST)
            .map(|j| rec_key((j * (n / LOST).max(1) + 3 + round * 5) % n))
            .collect();
        forget(&office_dir.join("data"), &lost)?;
        progress(format_args!("repair: office lost {LOST} records; {mode}"));
        let dirs = (hub_dir.as_path(), office_dir.as_path());
        let r = repair(pki, dirs, pin, &target.digest, s).await?;
        // Every lost version is one the office lacks: its 16 B key and 256 B value.
        let differing = LOST * (16 + Kind::Random.value(0).len());
        emit(
            rows,
            json!({
                "figure": "repair", "records": n, "lost": LOST, "mode": mode,
                "wire_bytes": r.wire, "differing_bytes": differing,
                "secs_until_digests_match": r.secs, "verify": r.verify,
                "ratio": r.wire as f64 / differing as f64, "ratio_of": "wire bytes / differing bytes",
                "wire_source": "UDP payloads through a proxy, both directions, from the verify request to equal digests + 300 ms",
            }),
            TableRow {
                figure: "repair".into(),
                case: format!("{n} records, {LOST} lost at the office: {mode}"),
                result: format!(
                    "{} on the wire, converged in {:.2} s",
                    bytes(r.wire as f64),
                    r.secs
                ),
                baseline: format!("{} differ", bytes(differing as f64)),
                ratio: Some(r.wire as f64 / differing as f64),
                target: "-".into(),
                met: None,
            },
        );
        results.push(r);
    }
    if let [full, tree] = results.as_slice() {
        let share = tree.wire as f64 / full.wire.max(1) as f64;
        emit(
            rows,
            json!({
                "figure": "repair_tree_vs_full", "records": n, "lost": LOST,
                "tree_wire_bytes": tree.wire, "full_wire_bytes": full.wire,
                "tree_secs": tree.secs, "full_secs": full.secs, "bytes_share": share,
            }),
            TableRow {
                figure: "repair_tree_vs_full".into(),
                case: format!("{n} records, {LOST} lost"),
                result: format!(
                    "{} and {:.2} s through the tree",
                    bytes(tree.wire as f64),
                    tree.secs
                ),
                baseline: format!("{} and {:.2} s in full", bytes(full.wire as f64), full.secs),
                ratio: Some(share),
                target: "≤ 5 % of the bytes, faster".into(),
                met: Some(share <= 0.05 && tree.secs < full.secs),
            },
        );
    }
    Ok(())
}

/// Makes the stopped office's store lose `keys`.
fn forget(data: &Path, keys: &[String]) -> Result<()> {
    let store = SledStore::open(data).context("opening the office's store")?;
    let lost = lose_keys(&store, COLL, keys)?;
    ensure!(
        lost as usize >= keys.len(),
        "lost {lost} versions of {keys:?}"
    );
    Ok(())
}

/// Starts both nodes as processes (pinned to protocol `pin` when given), the office dialing
/// through a counting proxy, and runs `verify` at the office until the digests are equal.
async fn repair(
    pki: &Pki,
    (hub_dir, office_dir): (&Path, &Path),
    pin: Option<&str>,
    target: &Digest,
    s: &Sizes,
) -> Result<Repaired> {
    let hub = spawn_pinned(pki, HUB, hub_dir, None, pin)?;
    let proxy = FaultProxy::start(daemon_sync_addr(&hub)?, 17);
    let office = spawn_pinned(pki, OFFICE_A, office_dir, Some(proxy.listen_addr()), pin)?;
    wait_connected(&office.api(), Duration::from_secs(60)).await?;
    let before = wire(&proxy);
    let t0 = Instant::now();
    let api = office.api();
    let verify = tokio::task::spawn_blocking(move || api.request("POST", "/v1/verify", None));
    let done = wait_api_digest(&office.api(), target, s.catch_up_timeout)
        .await?
        .context("the office's digest never equalled the hub's")?;
    let secs = done.duration_since(t0).as_secs_f64();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let wire = wire(&proxy) - before;
    // The request may give up first (the client's timeout, the daemon's 20 s per peer): the
    // digests, not its answer, say when the repair is done.
    let verify = match verify.await? {
        Ok(reply) => format!("HTTP {}", reply.status),
        Err(e) => format!("no answer: {e}"),
    };
    for node in [&office, &hub] {
        node.stop();
    }
    Ok(Repaired { wire, secs, verify })
}

/// UDP payload bytes the proxy forwarded both ways.
fn wire(proxy: &FaultProxy) -> u64 {
    proxy.counters(Direction::ToUpstream).forwarded_bytes
        + proxy.counters(Direction::FromUpstream).forwarded_bytes
}

/// [`spawn_daemon`], restarted with the protocol pin when given.
fn spawn_pinned(
    pki: &Pki,
    name: &str,
    dir: &Path,
    dial: Option<std::net::SocketAddr>,
    pin: Option<&str>,
) -> Result<TestNode> {
    let node = spawn_daemon(pki, name, dir, dial, Durability::Periodic)?;
    if let Some(version) = pin {
        node.set_env(PIN, Some(version));
        node.stop();
        node.try_restart()
            .map_err(|e| anyhow::anyhow!("restarting {name} pinned to protocol {version}: {e}"))?;
    }
    Ok(node)
}

/// Waits until the office reports its hub session connected.
async fn wait_connected(api: &ApiClient, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let status = api_status(api).await?;
        let up = status["peers"].as_array().is_some_and(|peers| {
            peers
                .iter()
                .any(|p| p["name"] == HUB && p["connected"] == true)
        });
        if up {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("the office did not connect to the hub within {timeout:?}")
}

/// `n` bytes in kB or MB.
fn bytes(n: f64) -> String {
    if n >= 1e6 {
        format!("{:.2} MB", n / 1e6)
    } else {
        format!("{:.1} kB", n / 1e3)
    }
}
