//! Workload 4, fan-out: one hub and 2, 8 and 32 office processes (`officesyncd` each); a write
//! at the hub (HTTP API) must reach every office. Figures: p99 (and p50, max) from the write's
//! send time until each office's API returns it (each office polled every
//! [`POLL`]); hub CPU while writing and RSS; hub memory per idle session (hub RSS with the
//! offices connected and idle, minus its RSS alone, per office).

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use officesync_daemon::config::Durability;
use officesync_tests::{ApiClient, TestNode};
use serde_json::json;

use crate::replication::{daemon_sync_addr, pct, progress, spawn_daemon, Pki, Sizes, COLL, HUB};
use crate::servers::procfs;
use crate::{emit, TableRow};

/// How often each office is polled for the write.
const POLL: Duration = Duration::from_millis(5);
/// Target from the brief: p99 with 32 offices.
const TARGET_P99_MS: f64 = 100.0;
/// Longest a write may take to reach every office.
const ARRIVAL_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs every office count on one hub, adding offices as the count grows.
pub(crate) async fn run(pki: &Pki, s: &Sizes, rows: &mut Vec<TableRow>) -> Result<()> {
    let counts = s.fanout_offices.clone();
    let writes = s.fanout_writes;
    // Issue every bundle before any clock starts.
    let max = counts.iter().copied().max().unwrap_or(0);
    for i in 0..max {
        pki.bundle(&office_name(i))?;
    }
    pki.bundle(HUB)?;
    let dir = tempfile::tempdir()?;
    let hub = spawn_daemon(pki, HUB, &dir.path().join("hub"), None, Durability::Sync)?;
    let hub_addr = daemon_sync_addr(&hub)?;
    let hub_pid = hub.pid().context("hub not running")?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_alone = procfs::rss_mib(hub_pid).context("hub RSS")?;
    let mut offices: Vec<TestNode> = Vec::new();
    for count in counts {
        progress(format_args!("fan_out: starting offices up to {count}"));
        while offices.len() < count {
            let name = office_name(offices.len());
            offices.push(spawn_daemon(
                pki,
                &name,
                &dir.path().join(&name),
                Some(hub_addr),
                Durability::Sync,
            )?);
        }
        let apis: Vec<ApiClient> = offices.iter().map(TestNode::api).collect();
        let hub_api = hub.api();
        let result = tokio::task::spawn_blocking(move || {
            measure(&hub_api, &apis, hub_pid, count, writes, rss_alone)
        })
        .await??;
        let mut lat = result.lat;
        let (p50, p99) = (pct(&mut lat, 0.5), pct(&mut lat, 0.99));
        let max_ms = lat.last().copied().unwrap_or(f64::NAN);
        let target = (count == 32).then_some(TARGET_P99_MS);
        let met = target.map(|t| p99 <= t);
        emit(
            rows,
            json!({
                "figure": "fan_out", "offices": count, "writes": writes, "samples": lat.len(),
                "latency_ms": { "p50": p50, "p99": p99, "max": max_ms },
                "measured": format!("hub API PUT send time → office API GET returns it, offices polled every {} ms", POLL.as_millis()),
                "hub_cpu_percent_of_one_core": result.cpu_percent,
                "hub_rss_mib": result.rss, "hub_rss_alone_mib": rss_alone,
                "hub_mib_per_idle_session": result.per_session,
                "durability": "sync everywhere", "target_p99_ms": target, "target_met": met,
            }),
            TableRow {
                figure: "fan_out".into(),
                case: format!("hub → {count} office processes, {writes} writes"),
                result: format!(
                    "p50 {p50:.1} / p99 {p99:.1} ms; hub CPU {:.0} %, RSS {:.0} MiB, {:.2} MiB per idle session",
                    result.cpu_percent, result.rss, result.per_session
                ),
                baseline: "-".into(),
                ratio: None,
                target: target.map_or("-".into(), |t| format!("p99 ≤ {t} ms")),
                met,
            },
        );
    }
    drop(offices);
    hub.stop();
    Ok(())
}

fn office_name(i: usize) -> String {
    format!("office-{i:02}")
}

struct Measured {
    lat: Vec<f64>,
    cpu_percent: f64,
    rss: f64,
    per_session: f64,
}

/// Waits for every office to be connected (a warm-up write reaches all), measures idle
/// memory, then `writes` writes one at a time.
fn measure(
    hub: &ApiClient,
    offices: &[ApiClient],
    hub_pid: u32,
    count: usize,
    writes: usize,
    rss_alone: f64,
) -> Result<Measured> {
    let warm = format!("fan{count}-warmup");
    hub.try_put(COLL, &warm, b"warm")?;
    wait_all(offices, &warm, Instant::now())?;
    std::thread::sleep(Duration::from_millis(1_000));
    let idle_rss = procfs::rss_mib(hub_pid).context("hub RSS")?;
    let per_session = (idle_rss - rss_alone) / count as f64;
    let cpu0 = procfs::cpu_secs(hub_pid).context("hub CPU")?;
    let wall0 = Instant::now();
    let mut lat = Vec::with_capacity(writes * count);
    for w in 0..writes {
        let key = format!("fan{count}-{w:06}");
        let value = crate::replication::Kind::Json.value(w as u64);
        let sent = Instant::now();
        hub.try_put(COLL, &key, &value)?;
        lat.extend(wait_all(offices, &key, sent)?);
    }
    let cpu = procfs::cpu_secs(hub_pid).context("hub CPU")? - cpu0;
    let wall = wall0.elapsed().as_secs_f64();
    let rss = procfs::rss_mib(hub_pid).context("hub RSS")?;
    Ok(Measured {
        lat,
        cpu_percent: cpu / wall * 100.0,
        rss,
        per_session,
    })
}

/// Polls every office (one thread each) until it returns `key`; latencies from `sent`, ms.
fn wait_all(offices: &[ApiClient], key: &str, sent: Instant) -> Result<Vec<f64>> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = offices
            .iter()
            .map(|api| {
                scope.spawn(move || -> Result<f64> {
                    let deadline = sent + ARRIVAL_TIMEOUT;
                    loop {
                        if api.try_get(COLL, key)?.is_some() {
                            return Ok(sent.elapsed().as_secs_f64() * 1e3);
                        }
                        ensure!(
                            Instant::now() < deadline,
                            "{key} never reached {}",
                            api.addr()
                        );
                        std::thread::sleep(POLL);
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().map_err(|_| anyhow::anyhow!("poller panicked"))?)
            .collect()
    })
}
