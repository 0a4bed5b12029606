//! Workload 2, partition heal: a hub and an office (both in this process) hold the same N
//! records; the office goes offline, both sides write while apart until they diverge by
//! 0.1 %, 1 % and 10 % of the records (40 % of the changed keys only at the hub, 40 % only at
//! the office, 20 % at both: contested, kept as siblings), then the office reconnects through
//! a counting UDP proxy. Figures: bytes on the wire (both directions, UDP payloads: QUIC,
//! TLS, handshake and acks included) and time until both digests are equal, against the
//! bytes that actually differ (key + value of every version one side lacks).

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use officesync_daemon::config::Durability;
use officesync_daemon::replica::Replica;
use officesync_tests::fault_proxy::{Direction, FaultProxy};
use serde_json::json;

use crate::replication::{
    filled_hub, progress, rec_key, shutdown, start, wait_digest, Kind, Pki, Sizes, COLL, OFFICE_A,
};
use crate::{emit, TableRow};

/// Divergence levels.
const LEVELS: [f64; 3] = [0.001, 0.01, 0.1];
/// Concurrent writers per side while apart.
const WRITERS: usize = 32;

/// Runs the three levels on one hub–office pair.
pub(crate) async fn run(pki: &Pki, s: &Sizes, rows: &mut Vec<TableRow>) -> Result<()> {
    let n = s.heal_records;
    let dir = tempfile::tempdir()?;
    progress(format_args!(
        "partition_heal: hub with {n} records, office catching up"
    ));
    let (hub, _, _) = filled_hub(pki, dir.path(), n, Kind::Random).await?;
    let office_dir = dir.path().join("office");
    let proxy = FaultProxy::start(hub.sync_addr(), 7);
    let mut office = start(
        pki,
        OFFICE_A,
        &office_dir,
        Some(proxy.listen_addr()),
        Durability::Sync,
    )
    .await?;
    converge(hub.replica(), office.replica(), s.catch_up_timeout).await?;
    let mut proxies = vec![proxy];

    for (level, frac) in LEVELS.into_iter().enumerate() {
        let changed = ((n as f64 * frac).round() as usize).max(10);
        office.shutdown().await?;
        // Apart: the office runs without dialing the hub.
        let alone = start(pki, OFFICE_A, &office_dir, None, Durability::Sync).await?;
        let hub_only = changed * 2 / 5;
        let office_only = changed * 2 / 5;
        let both = changed - hub_only - office_only;
        let key_at = |j: usize| (j * (n / changed).max(1) + level) % n;
        let seed = |side: u64, j: usize| (level as u64 + 1) << 40 | side << 32 | j as u64;
        let hub_keys: Vec<usize> = (0..hub_only)
            .chain(hub_only + office_only..changed)
            .map(key_at)
            .collect();
        let office_keys: Vec<usize> = (hub_only..changed).map(key_at).collect();
        write_all(hub.replica(), &hub_keys, |j| seed(1, j)).await?;
        write_all(alone.replica(), &office_keys, |j| seed(2, j)).await?;
        // Every written version is one the other side lacks: 16 B key + its value.
        let differing: usize = (0..hub_keys.len())
            .map(|j| 16 + Kind::Random.value(seed(1, j)).len())
            .chain((0..office_keys.len()).map(|j| 16 + Kind::Random.value(seed(2, j)).len()))
            .sum();
        alone.shutdown().await?;
        progress(format_args!(
            "partition_heal: {:.1} % apart ({hub_only} hub-only, {office_only} office-only, {both} contested); healing",
            frac * 100.0
        ));
        let heal_proxy = FaultProxy::start(hub.sync_addr(), 11 + level as u64);
        office = start(
            pki,
            OFFICE_A,
            &office_dir,
            Some(heal_proxy.listen_addr()),
            Durability::Sync,
        )
        .await?;
        let t0 = Instant::now();
        let done = converge(hub.replica(), office.replica(), s.catch_up_timeout).await?;
        let secs = done.duration_since(t0).as_secs_f64();
        // Let the last acks and heartbeats of the heal pass, then count.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let up = heal_proxy.counters(Direction::ToUpstream).forwarded_bytes;
        let down = heal_proxy.counters(Direction::FromUpstream).forwarded_bytes;
        let wire = up + down;
        let ratio = wire as f64 / differing as f64;
        emit(
            rows,
            json!({
                "figure": "partition_heal", "records": n, "divergence": frac,
                "changed_keys": changed, "hub_only": hub_only, "office_only": office_only,
                "contested": both, "differing_bytes": differing,
                "differing_bytes_note": "key + value of every version the other side lacks (contested keys: both versions)",
                "wire_bytes": wire, "wire_bytes_to_hub": up, "wire_bytes_to_office": down,
                "wire_source": "UDP payloads through a proxy, both directions, from reconnect to equal digests + 300 ms (QUIC, TLS handshake, acks included)",
                "secs_until_digests_match": secs, "ratio": ratio,
                "ratio_of": "wire bytes / differing bytes",
            }),
            TableRow {
                figure: "partition_heal".into(),
                case: format!(
                    "{n} records, {:.1} % apart ({changed} keys, {both} contested)",
                    frac * 100.0
                ),
                result: format!(
                    "{} on the wire, converged in {secs:.2} s",
                    bytes(wire as f64)
                ),
                baseline: format!("{} differ", bytes(differing as f64)),
                ratio: Some(ratio),
                target: "-".into(),
                met: None,
            },
        );
        // The office keeps this link until the next level takes it offline.
        proxies.push(heal_proxy);
    }
    shutdown(vec![office, hub]).await?;
    drop(proxies);
    Ok(())
}

/// Writes new random values to `keys` (value seed `seed(j)` for the j-th) with
/// [`WRITERS`] concurrent writers, then makes them durable.
async fn write_all(r: &Replica, keys: &[usize], seed: impl Fn(usize) -> u64) -> Result<()> {
    let jobs: Vec<(String, Vec<u8>)> = keys
        .iter()
        .enumerate()
        .map(|(j, &k)| (rec_key(k), Kind::Random.value(seed(j))))
        .collect();
    let jobs = std::sync::Arc::new(jobs);
    let mut set = tokio::task::JoinSet::new();
    for w in 0..WRITERS {
        let (r, jobs) = (r.clone(), jobs.clone());
        set.spawn(async move {
            for (key, value) in jobs.iter().skip(w).step_by(WRITERS) {
                r.write(COLL, key, Some(value.clone())).await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(t) = set.join_next().await {
        t??;
    }
    r.sync().await?;
    Ok(())
}

/// Waits until the office's digest equals the hub's (both may still move); returns when.
async fn converge(hub: &Replica, office: &Replica, timeout: Duration) -> Result<Instant> {
    let deadline = Instant::now() + timeout;
    loop {
        let target = hub.collection(COLL).await?.digest;
        let left = deadline.saturating_duration_since(Instant::now());
        ensure!(
            !left.is_zero(),
            "hub and office did not converge within {timeout:?}"
        );
        if let Some(at) = wait_digest(office, &target, left.min(Duration::from_millis(200))).await?
        {
            if hub.collection(COLL).await?.digest == target {
                return Ok(at);
            }
        }
    }
}

/// `n` bytes in kB or MB.
fn bytes(n: f64) -> String {
    if n >= 1e6 {
        format!("{:.2} MB", n / 1e6)
    } else {
        format!("{:.1} kB", n / 1e3)
    }
}
