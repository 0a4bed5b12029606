//! Figure group `feed`: the change feed of one `officesyncd` process. Figures: latency from a
//! local write's PUT being sent to its event arriving on an open event stream (one write at a
//! time, at a steady rate, `sync` durability: a change is served once durable), p50/p99/max;
//! and the daemon's resident memory with 1,000 idle event streams open against none, with the
//! time one write then takes to reach all of them.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use officesync_daemon::config::{Config, Durability};
use officesync_tests::sse::{SseRequest, SseStream};
use officesync_tests::{ApiClient, DaemonSpec, TestNode};
use serde_json::json;

use crate::replication::{daemon_binary, pct, progress, Pki, COLL, HUB};
use crate::servers::procfs;
use crate::{emit, TableRow};

/// Target of issue 16: p99 from local apply to the SSE event.
const TARGET_P99_MS: f64 = 5.0;
/// Time between two writes of the latency run (a steady 50 writes/s).
const INTERVAL: Duration = Duration::from_millis(20);
/// Longest an event may take to arrive.
const ARRIVAL_TIMEOUT: Duration = Duration::from_secs(30);

/// Writes of the latency run and idle watchers of the memory run.
fn sizes(quick: bool) -> (usize, usize) {
    if quick {
        (50, 50)
    } else {
        (1_000, 1_000)
    }
}

/// Runs the group on one fresh node.
pub(crate) async fn run(pki: &Pki, quick: bool, rows: &mut Vec<TableRow>) -> Result<()> {
    let (writes, watchers) = sizes(quick);
    let dir = tempfile::tempdir()?;
    let node = spawn(pki, &dir.path().join("node"), watchers + 10)?;
    let pid = node.pid().context("officesyncd not running")?;
    let (api, addr) = (node.api(), node.api_addr());
    let lat = tokio::task::spawn_blocking(move || latency(&api, addr, writes)).await??;
    let mut lat = lat;
    let (p50, p99) = (pct(&mut lat, 0.5), pct(&mut lat, 0.99));
    let max = lat.last().copied().unwrap_or(f64::NAN);
    let met = p99 <= TARGET_P99_MS;
    emit(
        rows,
        json!({
            "figure": "feed_latency", "writes": writes, "samples": lat.len(),
            "latency_ms": { "p50": p50, "p99": p99, "max": max },
            "measured": format!("PUT sent → its SSE event read by a client on loopback, one write every {} ms", INTERVAL.as_millis()),
            "durability": "sync (a change is served once durable)",
            "target_p99_ms": TARGET_P99_MS, "target_met": met,
        }),
        TableRow {
            figure: "feed_latency".into(),
            case: format!(
                "{writes} writes at {} /s, one watcher",
                1000 / INTERVAL.as_millis()
            ),
            result: format!("p50 {p50:.2} / p99 {p99:.2} / max {max:.2} ms"),
            baseline: "-".into(),
            ratio: None,
            target: format!("p99 ≤ {TARGET_P99_MS} ms"),
            met: Some(met),
        },
    );
    progress(format_args!("feed: opening {watchers} idle watchers"));
    let (api, addr) = (node.api(), node.api_addr());
    let mem = tokio::task::spawn_blocking(move || memory(&api, addr, pid, watchers)).await??;
    emit(
        rows,
        json!({
            "figure": "feed_watchers", "watchers": watchers,
            "rss_mib": { "none": mem.rss_none, "idle_watchers": mem.rss_open },
            "kib_per_watcher": mem.kib_per_watcher,
            "one_write_to_all_watchers_ms": mem.fan_out_ms,
        }),
        TableRow {
            figure: "feed_watchers".into(),
            case: format!("{watchers} idle event streams"),
            result: format!(
                "RSS {:.1} → {:.1} MiB ({:.1} KiB per watcher); one write reaches all in {:.0} ms",
                mem.rss_none, mem.rss_open, mem.kib_per_watcher, mem.fan_out_ms
            ),
            baseline: "-".into(),
            ratio: None,
            target: "-".into(),
            met: None,
        },
    );
    node.stop();
    Ok(())
}

/// Starts a standalone node serving up to `max_feeds` streams.
fn spawn(pki: &Pki, dir: &std::path::Path, max_feeds: usize) -> Result<TestNode> {
    daemon_binary()?;
    let tls = pki.bundle(HUB)?;
    std::fs::create_dir_all(dir)?;
    let api = SocketAddr::from(([127, 0, 0, 1], crate::servers::free_port()?));
    let config = Config::builder(HUB, dir.join("data"), tls)
        .api_listen(api)
        .sync_listen(SocketAddr::from((
            [127, 0, 0, 1],
            officesync_tests::process::free_udp_port(),
        )))
        .admins([HUB])
        .durability(Durability::Sync)
        .max_feeds(max_feeds)
        .build();
    let config_path = dir.join("officesync.toml");
    std::fs::write(&config_path, config.to_toml_string())?;
    let spec = DaemonSpec {
        name: HUB.to_owned(),
        config_path,
        api_addr: api,
        log_path: dir.join("officesyncd.log"),
    };
    TestNode::try_start(spec).map_err(|e| anyhow::anyhow!("starting officesyncd: {e}"))
}

fn open(api: &ApiClient, addr: SocketAddr) -> Result<SseStream> {
    let req = SseRequest {
        path: format!("/v1/collections/{COLL}/changes"),
        token: api.token().map(str::to_owned),
        ..SseRequest::default()
    };
    let s = SseStream::open(addr, &req)?;
    ensure!(s.status == 200, "feed: HTTP {}: {}", s.status, s.body);
    Ok(s)
}

/// Waits on `s` for the change of `key`; the other changes are skipped.
fn wait_key(s: &SseStream, key: &str) -> Result<()> {
    let deadline = Instant::now() + ARRIVAL_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let e = s.next_event(left)?;
        if !e.data.is_empty() && e.json()["key"] == key {
            return Ok(());
        }
    }
}

/// `writes` writes, one every [`INTERVAL`]; per write, ms from sending its PUT to its event.
fn latency(api: &ApiClient, addr: SocketAddr, writes: usize) -> Result<Vec<f64>> {
    let s = open(api, addr)?;
    // Warm-up: the first write creates the collection.
    api.try_put(COLL, "feed-warmup", b"warm")?;
    wait_key(&s, "feed-warmup")?;
    let mut lat = Vec::with_capacity(writes);
    let value = vec![b'v'; 256];
    let mut next = Instant::now();
    for i in 0..writes {
        next += INTERVAL;
        let key = format!("feed-{i:06}");
        let sent = Instant::now();
        api.try_put(COLL, &key, &value)?;
        wait_key(&s, &key)?;
        lat.push(sent.elapsed().as_secs_f64() * 1e3);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    Ok(lat)
}

struct Memory {
    rss_none: f64,
    rss_open: f64,
    kib_per_watcher: f64,
    fan_out_ms: f64,
}

/// RSS with no stream open, then with `watchers` idle streams; then one write to all.
fn memory(api: &ApiClient, addr: SocketAddr, pid: u32, watchers: usize) -> Result<Memory> {
    std::thread::sleep(Duration::from_secs(1));
    let rss_none = procfs::rss_mib(pid).context("RSS")?;
    let mut open_streams = Vec::with_capacity(watchers);
    for _ in 0..watchers {
        open_streams.push(open(api, addr)?);
    }
    std::thread::sleep(Duration::from_secs(2));
    let rss_open = procfs::rss_mib(pid).context("RSS")?;
    let sent = Instant::now();
    api.try_put(COLL, "feed-to-all", b"all")?;
    for s in &open_streams {
        wait_key(s, "feed-to-all")?;
    }
    let fan_out_ms = sent.elapsed().as_secs_f64() * 1e3;
    Ok(Memory {
        rss_none,
        rss_open,
        kib_per_watcher: (rss_open - rss_none) * 1024.0 / watchers as f64,
        fan_out_ms,
    })
}
