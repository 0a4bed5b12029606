//! Workload 3, live propagation: open-loop writes at 100, 1,000 and 10,000 per second at one
//! office, timestamped on arrival at another office through the hub (all three nodes in this
//! process, `sync` durability); latency = arrival at the receiver − the write's send time,
//! on one clock. Arrival is when B's replica publishes the version as applied (readable;
//! another origin's version is offered once applied), seen by a task on B's state watch.
//! Beside it, at the same rates: Redis chained replication (primary → replica → replica,
//! arrival seen as a keyspace notification on the last replica) and a NATS JetStream KV
//! bucket mirrored over a leaf node (arrival seen by a push consumer on the mirror). Values
//! are 256 random bytes, or JSON with [`VALUES_ENV`].

use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use officesync_daemon::config::Durability;
use officesync_daemon::replica::{DurableState, Replica};
use officesync_protocol::ReplicaId;
use serde_json::json;

use crate::replication::{
    failed, pct, progress, shutdown, start_trio, wait_durable, with_server, Kind, Pki, Sizes, COLL,
};
use crate::servers::{self, NatsConn, NatsPair, RedisConn, BUCKET};
use crate::{emit, TableRow};

/// Target from the brief: p99 at 1,000 writes/s.
/// Targets of the performance issue, p99 by rate (writes/s), `sync` at every hop.
const TARGET_P99_MS: [(u64, f64); 3] = [(100, 4.0), (1_000, 4.0), (10_000, 20.0)];
/// Rates of the workload.
const RATES: [u64; 3] = [100, 1_000, 10_000];
/// How long arrivals may trail the last write.
const DRAIN: Duration = Duration::from_secs(10);

/// Latencies of one run.
struct Run {
    written: usize,
    /// Latency of each write that arrived, ms.
    lat: Vec<f64>,
    achieved_rate: f64,
}

/// Writes one key per record index: `live-<run>-<i>`.
fn live_key(run: u64, i: usize) -> String {
    format!("live{run}-{i:09}")
}

/// The index in a `live_key`, if it is one of run `run`.
fn parse_live_key(run: u64, key: &str) -> Option<usize> {
    key.strip_prefix(&format!("live{run}-"))?.parse().ok()
}

/// Calls `send(i)` for `i` in `0..n` at `rate` per second on an absolute schedule (late
/// writes go at once); returns each write's send time.
fn paced(
    rate: u64,
    n: usize,
    mut send: impl FnMut(usize) -> Result<()>,
) -> Result<(Vec<Instant>, f64)> {
    let period = Duration::from_secs_f64(1.0 / rate as f64);
    let begin = Instant::now();
    let mut sent = Vec::with_capacity(n);
    for i in 0..n {
        let due = begin + period.mul_f64(i as f64);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        sent.push(Instant::now());
        send(i)?;
    }
    let secs = begin.elapsed().as_secs_f64().max(1e-9);
    Ok((sent, n as f64 / secs))
}

/// Collects arrivals `(index, at)` of `n` writes until all are in or [`DRAIN`] passed: each
/// write's arrival time, if it arrived.
fn collect_at(arrivals: &mpsc::Receiver<(usize, Instant)>, n: usize) -> Vec<Option<Instant>> {
    let mut at: Vec<Option<Instant>> = vec![None; n];
    let mut got = 0;
    let deadline = Instant::now() + DRAIN;
    while got < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match arrivals.recv_timeout(left) {
            Ok((i, t)) if i < n && at[i].is_none() => {
                at[i] = Some(t);
                got += 1;
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    at
}

/// Milliseconds from `from` to `to`, saturating at zero.
fn ms(from: Instant, to: Instant) -> f64 {
    to.saturating_duration_since(from).as_secs_f64() * 1e3
}

/// The latency of each write that arrived (`at`, by index), from its send time, ms.
fn latencies(at: &[Option<Instant>], sent: &[Instant]) -> Vec<f64> {
    at.iter()
        .zip(sent)
        .filter_map(|(a, s)| a.map(|a| ms(*s, a)))
        .collect()
}

/// Collects arrivals as [`collect_at`] does and pairs them with the send times: the latency
/// of each write that arrived, ms.
fn collect(arrivals: &mpsc::Receiver<(usize, Instant)>, sent: &[Instant]) -> Vec<f64> {
    latencies(&collect_at(arrivals, sent.len()), sent)
}

/// Reads arrivals `(key, at)` of run `run_id` until all `sent.len()` writes are in or
/// [`DRAIN`] passed (other keys ignored), then pairs them with the send times as [`collect`]
/// does: the run's figures.
fn collect_keys(
    rx: &mpsc::Receiver<(String, Instant)>,
    run_id: u64,
    sent: &[Instant],
    achieved_rate: f64,
) -> Run {
    let n = sent.len();
    let (itx, irx) = mpsc::channel();
    let deadline = Instant::now() + DRAIN;
    let mut got = 0;
    while got < n && Instant::now() < deadline {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok((key, at)) => {
                if let Some(i) = parse_live_key(run_id, &key) {
                    got += 1;
                    let _ = itx.send((i, at));
                }
            }
            Err(_) => break,
        }
    }
    drop(itx);
    Run {
        written: n,
        lat: collect(&irx, sent),
        achieved_rate,
    }
}

/// Set to `1`: also time each write's arrival at A and at the hub (durable there), and print
/// where the time of the slowest writes went; `2`: also list the slowest writes with their
/// send times (a stall shows as a run of them). The extra watchers load the nodes, so the main
/// figures of such a run are not comparable with one without.
const HOPS_ENV: &str = "OFFICESYNC_BENCH_LIVE_HOPS";

/// Set to `json`: every system writes about 256 bytes of JSON (which the offices train a
/// compression dictionary for, once the collection holds enough) instead of 256 random bytes
/// (for which they train none).
const VALUES_ENV: &str = "OFFICESYNC_BENCH_LIVE_VALUES";

/// The values of this run's writes: [`VALUES_ENV`], or random.
fn live_values() -> Kind {
    match std::env::var(VALUES_ENV) {
        Ok(v) if v == "json" => Kind::Json,
        _ => Kind::Random,
    }
}

/// How far `state` holds `origin`'s versions of the workload's collection.
fn through(state: &DurableState, origin: &ReplicaId) -> u64 {
    state.vvs.get(COLL).map_or(0, |vv| vv.get(origin))
}

/// A task on `replica`'s durable-state watch that reads `origin`'s new versions of run
/// `run_id` as they become durable, and sends `(index, when)` for each.
fn arrivals(
    replica: &Replica,
    origin: &ReplicaId,
    run_id: u64,
) -> (
    tokio::task::JoinHandle<Result<()>>,
    mpsc::Receiver<(usize, Instant)>,
) {
    let (tx, rx) = mpsc::channel();
    let mut durable = replica.durable();
    let mut after = through(&durable.borrow_and_update(), origin);
    let (r, origin) = (replica.clone(), origin.clone());
    let task = tokio::spawn(async move {
        while durable.changed().await.is_ok() {
            let at = Instant::now();
            let upto = through(&durable.borrow_and_update(), &origin);
            while after < upto {
                let (versions, scanned) = r
                    .versions_since(COLL, &origin, after, upto, 4_096, 8 << 20)
                    .await?;
                for v in versions {
                    if let Some(i) = parse_live_key(run_id, &v.key) {
                        let _ = tx.send((i, at));
                    }
                }
                if scanned <= after {
                    break;
                }
                after = scanned;
            }
        }
        anyhow::Ok(())
    });
    (task, rx)
}

/// Prints, for one rate, each hop's p50 / p99 / max (sent → durable at A → durable at the hub
/// → durable at B) and, for the writes at or above the end-to-end p99, the mean of each hop;
/// with `list_slow`, also the slowest writes with their send times.
fn print_hops(rate: u64, sent: &[Instant], at: [&[Option<Instant>]; 3], list_slow: bool) {
    // Per write that arrived everywhere: its index and [A, hub, B, end to end] in ms.
    let mut rows: Vec<(usize, [f64; 4])> = Vec::new();
    for (i, s) in sent.iter().enumerate() {
        if let (Some(a), Some(h), Some(b)) = (at[0][i], at[1][i], at[2][i]) {
            rows.push((i, [ms(*s, a), ms(a, h), ms(h, b), ms(*s, b)]));
        }
    }
    if rows.is_empty() {
        eprintln!("live hops {rate}/s: no write arrived at every node");
        return;
    }
    let names = [
        "write → durable at A",
        "A → durable at hub",
        "hub → durable at B",
        "end to end",
    ];
    for (h, name) in names.iter().enumerate() {
        let mut v: Vec<f64> = rows.iter().map(|(_, r)| r[h]).collect();
        let (p50, p99) = (pct(&mut v, 0.5), pct(&mut v, 0.99));
        let max = v.last().copied().unwrap_or(f64::NAN);
        eprintln!("live hops {rate}/s: {name}: p50 {p50:.2} / p99 {p99:.2} / max {max:.2} ms");
    }
    let mut ends: Vec<f64> = rows.iter().map(|(_, r)| r[3]).collect();
    let p99 = pct(&mut ends, 0.99);
    let slow: Vec<&[f64; 4]> = rows
        .iter()
        .map(|(_, r)| r)
        .filter(|r| r[3] >= p99)
        .collect();
    let mean = |h: usize| slow.iter().map(|r| r[h]).sum::<f64>() / slow.len() as f64;
    eprintln!(
        "live hops {rate}/s: the {} writes at or over p99 ({p99:.2} ms) spent on average {:.2} / {:.2} / {:.2} ms at A / hub / B",
        slow.len(),
        mean(0),
        mean(1),
        mean(2)
    );
    if list_slow {
        rows.sort_by(|x, y| y.1[3].total_cmp(&x.1[3]));
        for (i, r) in rows.iter().take(40) {
            eprintln!(
                "live slow {rate}/s: #{i} sent at {:.1} ms: {:.2} / {:.2} / {:.2} = {:.2} ms",
                ms(sent[0], sent[*i]),
                r[0],
                r[1],
                r[2],
                r[3]
            );
        }
    }
}

/// Writes per rate.
fn writes_at(s: &Sizes, rate: u64) -> usize {
    let secs = if rate >= 10_000 {
        s.live_secs / 2.0
    } else {
        s.live_secs
    };
    ((rate as f64 * secs) as usize).max(50)
}

/// Runs officesync and both baselines at every rate.
pub(crate) async fn run(pki: &Pki, s: &Sizes, rows: &mut Vec<TableRow>) {
    let values = live_values();
    let mut ours_p99: Vec<(u64, f64)> = Vec::new();
    match officesync(pki, s, values).await {
        Ok(runs) => {
            for (rate, run) in runs {
                let mut lat = run.lat.clone();
                ours_p99.push((rate, pct(&mut lat, 0.99)));
                report(
                    rows,
                    "officesync",
                    "office A → hub → office B (QUIC, mTLS, sync durability)",
                    rate,
                    values,
                    &run,
                    None,
                );
            }
        }
        Err(e) => failed(rows, "live_propagation", "officesync", &e),
    }
    let sizes: Vec<(u64, usize)> = RATES.iter().map(|&r| (r, writes_at(s, r))).collect();
    type Baseline = fn(&std::path::Path, &[(u64, usize)], Kind) -> Result<Vec<(u64, Run)>>;
    let baselines: [(&str, &str, &str, &str, Baseline); 2] = [
        (
            "redis-server",
            "Redis chained replication",
            "Redis",
            "primary → replica → replica (no persistence)",
            redis_chain,
        ),
        (
            "nats-server",
            "NATS KV mirror",
            "NATS",
            "KV bucket → mirror over a leaf node (file storage)",
            nats_mirror,
        ),
    ];
    for (server, case, system, path, measure) in baselines {
        let sizes = sizes.clone();
        let work = move |bin: std::path::PathBuf| measure(&bin, &sizes, values);
        match with_server(rows, "live_propagation", case, server, work).await {
            None => {}
            Some(Ok(runs)) => {
                for (rate, run) in runs {
                    let ours = ours_at(&ours_p99, rate);
                    report(rows, system, path, rate, values, &run, ours);
                }
            }
            Some(Err(e)) => failed(rows, "live_propagation", case, &e),
        }
    }
}

/// officesync's p99 at `rate`, if measured.
fn ours_at(ours: &[(u64, f64)], rate: u64) -> Option<f64> {
    ours.iter().find(|(r, _)| *r == rate).map(|(_, p)| *p)
}

/// Emits one system's figure at one rate, written with `values`; `ours_p99` (for a baseline)
/// is officesync's p99 at the same rate, and the ratio is baseline p99 / officesync p99
/// (> 1: officesync faster).
fn report(
    rows: &mut Vec<TableRow>,
    system: &str,
    path: &str,
    rate: u64,
    values: Kind,
    run: &Run,
    ours_p99: Option<f64>,
) {
    let ours = system == "officesync";
    let values = values.name();
    let mut lat = run.lat.clone();
    let received = lat.len();
    let (p50, p99, p999) = (
        pct(&mut lat, 0.5),
        pct(&mut lat, 0.99),
        pct(&mut lat, 0.999),
    );
    let max = lat.last().copied().unwrap_or(f64::NAN);
    let target = TARGET_P99_MS
        .iter()
        .find(|(r, _)| ours && *r == rate)
        .map(|(_, ms)| *ms);
    let met = target.map(|t| received == run.written && p99 <= t);
    emit(
        rows,
        json!({
            "figure": "live_propagation", "system": system, "path": path,
            "values": values,
            "rate_per_sec": rate, "achieved_rate_per_sec": run.achieved_rate.round(),
            "written": run.written, "received": received,
            "latency_ms": { "p50": p50, "p99": p99, "p999": p999, "max": max },
            "measured": "arrival at the receiver − send time of the write, one clock",
            "target_p99_ms": target, "target_met": met,
            "officesync_p99_ms": ours_p99, "ratio": ours_p99.map(|o| p99 / o),
            "ratio_of": ours_p99.map(|_| "baseline p99 / officesync p99 (> 1: officesync faster)"),
        }),
        TableRow {
            figure: "live_propagation".into(),
            case: format!(
                "{system}: {path}, {rate}/s, {values} values, received {received}/{}",
                run.written
            ),
            result: format!("p50 {p50:.2} / p99 {p99:.2} / p999 {p999:.2} ms"),
            baseline: ours_p99.map_or("-".into(), |o| format!("officesync p99 {o:.2} ms")),
            ratio: ours_p99.map(|o| p99 / o),
            target: target.map_or("-".into(), |t| format!("p99 ≤ {t} ms")),
            met,
        },
    );
}

/// officesync: hub and two offices in this process; writes at A, arrivals at B.
async fn officesync(pki: &Pki, s: &Sizes, values: Kind) -> Result<Vec<(u64, Run)>> {
    let dir = tempfile::tempdir()?;
    let (hub, a, b) = start_trio(pki, dir.path(), Durability::Sync).await?;
    let origin = a.replica().id().clone();
    let ack = a
        .replica()
        .write(COLL, "warmup", Some(b"warmup".to_vec()))
        .await?;
    wait_durable(
        b.replica(),
        &origin,
        ack.dot.counter,
        Duration::from_secs(30),
    )
    .await?;

    let hops = std::env::var(HOPS_ENV).ok();
    let (timed, list_slow) = match hops.as_deref() {
        Some("1") => (true, false),
        Some("2") => (true, true),
        _ => (false, false),
    };
    let mut runs = Vec::new();
    for (run_id, rate) in RATES.into_iter().enumerate() {
        let run_id = run_id as u64;
        let n = writes_at(s, rate);
        progress(format_args!("live_propagation: officesync {rate}/s × {n}"));
        // Receiver: a task on B's durable-state watch reads A's new versions as they land;
        // with per-hop timing, tasks on A's and the hub's too.
        let (watcher, rx) = arrivals(b.replica(), &origin, run_id);
        let hop_watch =
            timed.then(|| [a.replica(), hub.replica()].map(|r| arrivals(r, &origin, run_id)));
        let rt = tokio::runtime::Handle::current();
        let writer = a.replica().clone();
        let sender = std::thread::spawn(move || {
            let mut tasks = Vec::with_capacity(n);
            let out = paced(rate, n, |i| {
                let r = writer.clone();
                let key = live_key(run_id, i);
                let value = values.value(u64::MAX - i as u64);
                tasks.push(rt.spawn(async move { r.write(COLL, &key, Some(value)).await }));
                Ok(())
            });
            (out, tasks)
        });
        let (out, tasks) = tokio::task::spawn_blocking(move || sender.join())
            .await?
            .map_err(|_| anyhow::anyhow!("sender thread panicked"))?;
        let (sent, achieved_rate) = out?;
        for t in tasks {
            t.await??;
        }
        let (at_b, sent) =
            tokio::task::spawn_blocking(move || (collect_at(&rx, sent.len()), sent)).await?;
        let mut watchers = vec![watcher];
        if let Some([(wa, rxa), (wh, rxh)]) = hop_watch {
            watchers.extend([wa, wh]);
            let n = sent.len();
            let (at_a, at_h) =
                tokio::task::spawn_blocking(move || (collect_at(&rxa, n), collect_at(&rxh, n)))
                    .await?;
            print_hops(rate, &sent, [&at_a, &at_h, &at_b], list_slow);
        }
        for w in watchers {
            w.abort();
            let _ = w.await;
        }
        let lat = latencies(&at_b, &sent);
        runs.push((
            rate,
            Run {
                written: n,
                lat,
                achieved_rate,
            },
        ));
    }
    shutdown(vec![a, b, hub]).await?;
    Ok(runs)
}

/// Redis: primary → replica → replica; writes (pipelined `SET`s) at the primary, arrivals
/// as keyspace notifications on the last replica.
fn redis_chain(
    bin: &std::path::Path,
    sizes: &[(u64, usize)],
    values: Kind,
) -> Result<Vec<(u64, Run)>> {
    let primary = servers::redis(bin, None)?;
    let mid = servers::redis(bin, Some(primary.port))?;
    let last = servers::redis(bin, Some(mid.port))?;
    for r in [&mid, &last] {
        servers::redis_wait_synced(r.port, 0, Duration::from_secs(30))?
            .context("redis replica never synced")?;
    }
    RedisConn::connect(last.port)?.cmd(&["CONFIG", "SET", "notify-keyspace-events", "K$"])?;
    let mut sub = RedisConn::connect(last.port)?;
    sub.cmd(&["PSUBSCRIBE", "__keyspace@0__:live*"])?;
    let (tx, rx) = mpsc::channel::<(String, Instant)>();
    std::thread::spawn(move || {
        while let Ok(servers::Resp::Array(Some(items))) = sub.read() {
            let at = Instant::now();
            if let Some(chan) = items.get(2) {
                let key = chan.text().trim_start_matches("__keyspace@0__:").to_owned();
                if tx.send((key, at)).is_err() {
                    break;
                }
            }
        }
    });
    let mut w = RedisConn::connect(primary.port)?;
    // Warm-up: one write seen at the end of the chain.
    w.cmd(&["SET", "live-warmup", "x"])?;
    let warm = rx
        .recv_timeout(Duration::from_secs(10))
        .context("redis warm-up never arrived")?;
    ensure!(warm.0 == "live-warmup", "unexpected key {}", warm.0);
    let mut runs = Vec::new();
    for (run_id, &(rate, n)) in sizes.iter().enumerate() {
        let run_id = run_id as u64;
        progress(format_args!("live_propagation: Redis {rate}/s × {n}"));
        let replies = RedisConn::connect(primary.port)?;
        let mut out = replies.writer_handle()?;
        let drain = std::thread::spawn(move || -> Result<()> {
            let mut replies = replies;
            for _ in 0..n {
                replies.read()?;
            }
            Ok(())
        });
        let (sent, achieved_rate) = paced(rate, n, |i| {
            let value = values.value(u64::MAX - i as u64);
            servers::write_command(&mut out, &[b"SET", live_key(run_id, i).as_bytes(), &value])?;
            std::io::Write::flush(&mut out)?;
            Ok(())
        })?;
        drain
            .join()
            .map_err(|_| anyhow::anyhow!("reply thread panicked"))??;
        runs.push((rate, collect_keys(&rx, run_id, &sent, achieved_rate)));
    }
    Ok(runs)
}

/// NATS: KV puts at the hub server; arrivals through a push consumer on the leaf's mirror.
fn nats_mirror(
    bin: &std::path::Path,
    sizes: &[(u64, usize)],
    values: Kind,
) -> Result<Vec<(u64, Run)>> {
    let pair = NatsPair::start(bin)?;
    pair.create_bucket()?;
    pair.create_mirror()?;
    let mut recv = NatsConn::connect(pair.leaf.port)?;
    let deliver = "bench.deliver";
    recv.subscribe(deliver)?;
    recv.flush()?;
    let consumer = json!({
        "stream_name": format!("KV_{BUCKET}_mirror"),
        "config": { "deliver_subject": deliver, "deliver_policy": "new", "ack_policy": "none",
                    "replay_policy": "instant", "mem_storage": true, "num_replicas": 1 },
    });
    recv.request(
        &format!("$JS.API.CONSUMER.CREATE.KV_{BUCKET}_mirror"),
        consumer.to_string().as_bytes(),
        servers::JS_TIMEOUT,
    )?;
    let (tx, rx) = mpsc::channel::<(String, Instant)>();
    std::thread::spawn(move || {
        while let Ok(m) = recv.next_msg() {
            let at = Instant::now();
            let key = m.subject.rsplit('.').next().unwrap_or_default().to_owned();
            if tx.send((key, at)).is_err() {
                break;
            }
        }
    });
    let mut w = NatsConn::connect(pair.hub.port)?;
    let subject = |k: &str| format!("$KV.{BUCKET}.{k}");
    // Warm-up: retry until the mirror delivers (its consumer on the hub may still be starting).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        w.publish(&subject("live-warmup"), None, b"x")?;
        w.flush()?;
        if let Ok((k, _)) = rx.recv_timeout(Duration::from_millis(500)) {
            if k == "live-warmup" {
                break;
            }
        }
        ensure!(
            Instant::now() < deadline,
            "NATS mirror warm-up never arrived"
        );
    }
    while rx.try_recv().is_ok() {}
    let mut runs = Vec::new();
    for (run_id, &(rate, n)) in sizes.iter().enumerate() {
        let run_id = run_id as u64;
        progress(format_args!("live_propagation: NATS {rate}/s × {n}"));
        let mut out = w.writer_handle()?;
        let (sent, achieved_rate) = paced(rate, n, |i| {
            let value = values.value(u64::MAX - i as u64);
            servers::nats_pub(&mut out, &subject(&live_key(run_id, i)), &value)?;
            std::io::Write::flush(&mut out)?;
            Ok(())
        })?;
        runs.push((rate, collect_keys(&rx, run_id, &sent, achieved_rate)));
    }
    w.round_trip()?;
    drop(pair);
    Ok(runs)
}
