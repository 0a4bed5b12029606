//! Workload `bandwidth`: a general office with a `[[sync.limit]]` of 2 Mbit/s for every peer
//! (always in force) and `urgent = ["alerts"]` sends a catch-up of random 256-byte records to
//! an office dialing it through a counting UDP proxy (both nodes in this process, `sync`
//! durability). Figures: the throttled catch-up (records, time, records/s), the rate on the
//! wire over a steady window (from a second after the catch-up starts to a second before it
//! ends: UDP payloads from the general office, QUIC included) against the limit (target:
//! within ±10 %), and the latency of writes to `alerts` made every 250 ms during the catch-up
//! (write at the general office to durable at the office) against the catch-up's remaining
//! time at each write.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use officesync_daemon::config::{Config, Durability};
use officesync_daemon::node::Node;
use officesync_protocol::dot::Dot;
use officesync_tests::fault_proxy::{Direction, FaultProxy};
use serde_json::json;

use crate::replication::{
    fill, pct, progress, shutdown, wait_digest, Kind, Pki, COLL, HUB, OFFICE_A,
};
use crate::{emit, TableRow};

/// The limit in force.
const LIMIT: &str = "2 Mbit/s";
/// The same in bytes per second.
const LIMIT_BYTES: f64 = 250_000.0;
/// The urgent collection.
const URGENT: &str = "alerts";
/// Interval between urgent writes.
const URGENT_EVERY: Duration = Duration::from_millis(250);
/// Target: the wire rate within this fraction of the limit.
const RATE_TOLERANCE: f64 = 0.10;

/// Starts `name` in `data` (`sync` durability): the general office with the limit and the
/// urgent collection, or an office dialing `dial`.
async fn start(pki: &Pki, name: &str, data: &Path, dial: Option<String>) -> Result<Node> {
    let loopback = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let mut builder = Config::builder(name, data, pki.bundle(name)?)
        .api_listen(loopback)
        .sync_listen(loopback)
        .admins([HUB])
        .durability(Durability::Sync)
        .urgent(&[URGENT]);
    builder = match dial {
        Some(addr) => builder.peer(HUB, addr),
        None => builder.limit(&["*"], LIMIT, None),
    };
    let config = builder.build();
    config
        .validate()
        .with_context(|| format!("config of {name}"))?;
    Node::start(&config)
        .await
        .with_context(|| format!("starting {name}"))
}

/// A task that returns when `office` durably holds `dot` of the urgent collection (`None`:
/// not within a minute).
fn arrival(office: &Node, dot: Dot) -> tokio::task::JoinHandle<Option<Instant>> {
    let mut durable = office.replica().durable();
    tokio::spawn(async move {
        let held = |s: &officesync_daemon::replica::DurableState| {
            s.vvs
                .get(URGENT)
                .is_some_and(|vv| vv.get(&dot.origin) >= dot.counter)
        };
        tokio::time::timeout(Duration::from_secs(60), durable.wait_for(|s| held(s)))
            .await
            .ok()?
            .ok()?;
        Some(Instant::now())
    })
}

/// Runs the workload: a short catch-up with `quick`, about 30 s otherwise.
pub(crate) async fn run(pki: &Pki, quick: bool, rows: &mut Vec<TableRow>) -> Result<()> {
    // About 330 bytes a version on the wire: 4 s of catch-up (quick) or 30 s.
    let records = if quick { 3_000 } else { 22_000 };
    let dir = tempfile::tempdir()?;
    progress(format_args!(
        "bandwidth: general office with {records} records, limit {LIMIT}"
    ));
    let hub = start(pki, HUB, &dir.path().join("hub"), None).await?;
    fill(hub.replica(), records, Kind::Random).await?;
    let target = hub.replica().collection(COLL).await?;
    let proxy = FaultProxy::start(hub.sync_addr(), 17);
    let wire = || proxy.counters(Direction::FromUpstream).forwarded_bytes;
    let office = start(
        pki,
        OFFICE_A,
        &dir.path().join("office"),
        Some(proxy.listen_addr().to_string()),
    )
    .await?;
    let began = Instant::now();

    // Urgent writes every URGENT_EVERY until the catch-up is done, each timed to its arrival
    // by a task watching the office's durable vectors.
    let mut urgent: Vec<(Instant, tokio::task::JoinHandle<Option<Instant>>)> = Vec::new();
    let mut samples: Vec<(Instant, u64)> = Vec::new();
    let mut done = None;
    let deadline = began + Duration::from_secs(if quick { 120 } else { 600 });
    let mut next = began + Duration::from_secs(1);
    while Instant::now() < deadline {
        samples.push((Instant::now(), wire()));
        let caught_up = office.replica().collection(COLL).await?.digest == target.digest;
        if caught_up {
            done = Some(Instant::now());
            break;
        }
        if Instant::now() >= next {
            let key = format!("flood/{}", urgent.len());
            let ack = hub
                .replica()
                .write(URGENT, &key, Some(b"{\"level_m\":27.4}".to_vec()))
                .await?;
            urgent.push((Instant::now(), arrival(&office, ack.dot)));
            next += URGENT_EVERY;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let done = done.context("the throttled catch-up did not complete")?;
    let secs = done.duration_since(began).as_secs_f64();

    let mut lat = Vec::new();
    let mut remaining = Vec::new();
    for (written, task) in urgent {
        let arrived = task
            .await
            .context("arrival task")?
            .context("an urgent write never arrived")?;
        lat.push(arrived.duration_since(written).as_secs_f64() * 1000.0);
        remaining.push(done.saturating_duration_since(written).as_secs_f64() * 1000.0);
    }
    ensure!(
        wait_digest(office.replica(), &target.digest, Duration::from_secs(5))
            .await?
            .is_some(),
        "the office lost the catch-up"
    );

    // The steady window: a second after the start to a second before the end.
    let (from, to) = (
        began + Duration::from_secs(1),
        done - Duration::from_secs(1),
    );
    let inside: Vec<&(Instant, u64)> = samples
        .iter()
        .filter(|(t, _)| *t >= from && *t <= to)
        .collect();
    let rate = match (inside.first(), inside.last()) {
        (Some((t1, b1)), Some((t2, b2))) if t2 > t1 => {
            (b2 - b1) as f64 / t2.duration_since(*t1).as_secs_f64()
        }
        _ => f64::NAN,
    };
    let off = rate / LIMIT_BYTES - 1.0;
    let met = off.abs() <= RATE_TOLERANCE;
    emit(
        rows,
        json!({
            "figure": "bandwidth_catch_up", "records": records, "limit": LIMIT,
            "secs": secs, "records_per_sec": records as f64 / secs,
        }),
        TableRow {
            figure: "bandwidth_catch_up".into(),
            case: format!("{records} random 256 B records, limit {LIMIT}"),
            result: format!("{secs:.1} s, {:.0} records/s", records as f64 / secs),
            baseline: "-".into(),
            ratio: None,
            target: "-".into(),
            met: None,
        },
    );
    emit(
        rows,
        json!({
            "figure": "bandwidth_wire_rate", "limit_bytes_per_sec": LIMIT_BYTES,
            "wire_bytes_per_sec": rate, "off_by": off, "target": "within ±10 % of the limit",
            "target_met": met,
            "wire_source": "UDP payloads from the general office through a proxy, a steady window from 1 s after the start to 1 s before the end",
        }),
        TableRow {
            figure: "bandwidth_wire_rate".into(),
            case: format!("limit {LIMIT}, steady window"),
            result: format!("{:.0} B/s ({:+.1} %)", rate, off * 100.0),
            baseline: format!("{LIMIT_BYTES:.0} B/s"),
            ratio: Some(rate / LIMIT_BYTES),
            target: "±10 %".into(),
            met: Some(met),
        },
    );
    let mean_remaining = remaining.iter().sum::<f64>() / remaining.len().max(1) as f64;
    let mut lat_ms = lat;
    let (p50, p99) = (pct(&mut lat_ms, 0.5), pct(&mut lat_ms, 0.99));
    emit(
        rows,
        json!({
            "figure": "bandwidth_urgent_latency", "writes": lat_ms.len(), "p50_ms": p50,
            "p99_ms": p99, "catch_up_remaining_mean_ms": mean_remaining,
            "measured": "write at the general office to durable at the office, during the throttled catch-up",
        }),
        TableRow {
            figure: "bandwidth_urgent_latency".into(),
            case: format!("{} writes to {URGENT} during the catch-up", lat_ms.len()),
            result: format!("p50 {p50:.1} ms, p99 {p99:.1} ms"),
            baseline: format!("catch-up remaining {:.1} s (mean)", mean_remaining / 1000.0),
            ratio: Some(p99 / mean_remaining),
            target: "-".into(),
            met: None,
        },
    );
    shutdown(vec![office, hub]).await?;
    drop(proxy);
    Ok(())
}
