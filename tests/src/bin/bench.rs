//! officesync benchmark: prints one JSON line per figure, each beside baselines measured in
//! the same run on the same machine (raw sled, a raw QUIC stream, Redis and NATS JetStream
//! when their servers are installed; skipped with a reason otherwise), then a markdown table
//! that says which targets are met. Not a test: nothing here asserts timings. `--quick` runs
//! small sizes in seconds (CI uses it so the program never rots).
//!
//! Figure groups: `local` (write and read throughput of one replica against raw sled, here),
//! `api` (the local API's requests/s with and without staff access, in [`api`]),
//! `query` (`where` queries on 1,000,000 JSON records with and without a secondary index, in
//! [`query`]),
//! `purge` (the store after deleting 90 % of 1,000,000 records, before and after the
//! tombstones are purged, in [`purge`]),
//! `signing` (signing and verifying versions, and signed local writes, in [`signing`]),
//! `encryption` (store, local write and catch-up rates with and without encryption at rest,
//! in [`encryption`]), `province` (the status reports' bytes and the general office's memory
//! at 1,000 nodes, in [`province`]), `feed` (change-feed latency and the memory of 1,000
//! watchers, in [`feed`]), `search` (full-text indexing, apply-to-searchable delay, query
//! latency and index size over 100,000 documents, in [`search`]),
//! then the replication workloads, one module each: [`catch_up`], [`heal`], [`live`],
//! [`fanout`], [`sustained`], [`wire`], [`repair`] (10 lost records repaired in full and
//! through the hash tree); shared node helpers in [`replication`], baseline
//! servers and their clients in [`servers`]. `bandwidth` (a throttled catch-up: its rate
//! on the wire against the limit, and urgent writes overtaking it, in [`bandwidth`]).
//! `scale` (a four-tier tree of 1,025 daemons, in
//! [`scale`]) runs only when `--only` names it.

#[path = "bench/api.rs"]
mod api;
#[path = "bench/bandwidth.rs"]
mod bandwidth;
#[path = "bench/catch_up.rs"]
mod catch_up;
#[path = "bench/encryption.rs"]
mod encryption;
#[path = "bench/fanout.rs"]
mod fanout;
#[path = "bench/feed.rs"]
mod feed;
#[path = "bench/heal.rs"]
mod heal;
#[path = "bench/live.rs"]
mod live;
#[path = "bench/province.rs"]
mod province;
#[path = "bench/purge.rs"]
mod purge;
#[path = "bench/query.rs"]
mod query;
#[path = "bench/repair.rs"]
mod repair;
#[path = "bench/replication.rs"]
mod replication;
#[path = "bench/scale.rs"]
mod scale;
#[path = "bench/search.rs"]
mod search;
#[path = "bench/servers.rs"]
mod servers;
#[path = "bench/signing.rs"]
mod signing;
#[path = "bench/sustained.rs"]
mod sustained;
#[path = "bench/wire.rs"]
mod wire;

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use officesync_daemon::replica::{CommitMode, Replica, ReplicaOptions};
use officesync_daemon::store::SledStore;
use serde_json::json;

const VALUE_BYTES: usize = 256;
/// Target of the performance issue: 64 writers with `sync`, as a ratio of raw sled.
const TARGET_SYNC_WRITES: f64 = 0.7;
/// Target of the performance issue: 64 writers with `periodic`, as a ratio of raw sled.
const TARGET_PERIODIC_WRITES: f64 = 0.8;
/// Target of the performance issue: the replica read path against raw sled gets.
const TARGET_READS: f64 = 0.5;

struct Sizes {
    sync_ops: usize,
    periodic_ops: usize,
    read_ops: usize,
}

fn key(writer: usize, i: usize) -> String {
    // 16-byte keys.
    format!("w{writer:03}-{i:011}")
}

fn value(i: usize) -> Vec<u8> {
    (0..VALUE_BYTES)
        .map(|j| ((i * 31 + j * 7) % 251) as u8)
        .collect()
}

/// A raw sled database in a new temporary directory (kept alive by the returned handle), with
/// background flushing off: it writes to disk only on `flush()`.
pub(crate) fn unflushed_sled() -> Result<(tempfile::TempDir, sled::Db)> {
    let dir = tempfile::tempdir()?;
    let db = sled::Config::new()
        .path(dir.path())
        .flush_every_ms(None)
        .open()?;
    Ok((dir, db))
}

/// Raw sled: `ops` inserts in batches of `batch`, each batch followed by `flush()` when
/// `flush_each` (otherwise one flush at the end). Returns ops/s.
fn raw_sled_writes(ops: usize, batch: usize, flush_each: bool) -> Result<f64> {
    let (_dir, db) = unflushed_sled()?;
    let start = Instant::now();
    let mut i = 0;
    while i < ops {
        for _ in 0..batch.min(ops - i) {
            db.insert(key(0, i).as_bytes(), value(i))?;
            i += 1;
        }
        if flush_each {
            db.flush()?;
        }
    }
    db.flush()?;
    Ok(ops as f64 / start.elapsed().as_secs_f64())
}

/// Raw sled: `ops` inserts, `per_batch` to one atomic `apply_batch` (as the replica commits a
/// group), one flush at the end. Returns ops/s. sled 0.34 rolls its log buffer twice per batch
/// (each roll a `pwrite` and a `sync_file_range` on its I/O threads), so a batch costs more
/// than its inserts: this was the floor of a replica that commits `per_batch` writes at a time,
/// until the store took sled's batch only for groups over 64 KiB (smaller ones go through a
/// write-ahead record and plain inserts).
fn raw_sled_batches(ops: usize, per_batch: usize) -> Result<f64> {
    let (_dir, db) = unflushed_sled()?;
    let start = Instant::now();
    let mut i = 0;
    while i < ops {
        let mut batch = sled::Batch::default();
        for _ in 0..per_batch.max(1).min(ops - i) {
            batch.insert(key(0, i).as_bytes(), value(i));
            i += 1;
        }
        db.apply_batch(batch)?;
    }
    db.flush()?;
    Ok(ops as f64 / start.elapsed().as_secs_f64())
}

fn raw_sled_reads(ops: usize) -> Result<f64> {
    let dir = tempfile::tempdir()?;
    let db = sled::Config::new().path(dir.path()).open()?;
    let n = 10_000.min(ops);
    for i in 0..n {
        db.insert(key(0, i).as_bytes(), value(i))?;
    }
    let start = Instant::now();
    let mut found = 0usize;
    for i in 0..ops {
        found += usize::from(db.get(key(0, i % n).as_bytes())?.is_some());
    }
    anyhow::ensure!(found == ops, "raw sled lost keys");
    Ok(ops as f64 / start.elapsed().as_secs_f64())
}

struct WriteRun {
    ops_per_sec: f64,
    /// Writes per fsync (sync mode).
    mean_group: f64,
    /// Writes per store commit (one atomic group each).
    per_commit: f64,
}

async fn replica_writes(mode: CommitMode, writers: usize, ops: usize) -> Result<WriteRun> {
    let dir = tempfile::tempdir()?;
    let store = SledStore::open(dir.path())?;
    let mut opts = ReplicaOptions::new("bench");
    opts.commit = mode;
    let r = Replica::open(Arc::new(store), opts)?;
    let per = ops / writers;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let r = r.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..per {
                r.write("bench", &key(w, i), Some(value(i))).await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let secs = start.elapsed().as_secs_f64();
    let stats = r.stats();
    let syncs = stats
        .syncs
        .load(std::sync::atomic::Ordering::Relaxed)
        .max(1);
    let synced = stats
        .synced_writes
        .load(std::sync::atomic::Ordering::Relaxed);
    let commits = stats
        .committed_generation
        .load(std::sync::atomic::Ordering::Relaxed)
        .max(1);
    r.close().await?;
    Ok(WriteRun {
        ops_per_sec: (per * writers) as f64 / secs,
        mean_group: synced as f64 / syncs as f64,
        per_commit: (per * writers) as f64 / commits as f64,
    })
}

async fn replica_reads(ops: usize) -> Result<f64> {
    let dir = tempfile::tempdir()?;
    let r = Replica::open(Arc::new(SledStore::open(dir.path())?), {
        let mut o = ReplicaOptions::new("bench");
        o.commit = CommitMode::Periodic(std::time::Duration::from_millis(100));
        o
    })?;
    let n = 10_000.min(ops);
    for i in 0..n {
        r.write("bench", &key(0, i), Some(value(i))).await?;
    }
    let readers = 8;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..readers {
        let r = r.clone();
        tasks.push(tokio::spawn(async move {
            for i in (t..ops).step_by(readers) {
                r.get("bench", &key(0, i % n))
                    .await?
                    .context("key missing")?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let rate = ops as f64 / start.elapsed().as_secs_f64();
    r.close().await?;
    Ok(rate)
}

/// One row of the final markdown table.
pub(crate) struct TableRow {
    figure: String,
    case: String,
    result: String,
    baseline: String,
    ratio: Option<f64>,
    target: String,
    /// `None` when the row has no target.
    met: Option<bool>,
}

/// Prints `line` as one JSON line and keeps `row` for the table.
pub(crate) fn emit(rows: &mut Vec<TableRow>, line: serde_json::Value, row: TableRow) {
    println!("{line}");
    rows.push(row);
}

fn print_table(rows: &[TableRow]) {
    println!("| figure | case | result | baseline | ratio | target | met |");
    println!("|---|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            r.figure,
            r.case,
            r.result,
            r.baseline,
            r.ratio.map_or("-".to_string(), |x| format!("{x:.2}")),
            r.target,
            match r.met {
                None => "-",
                Some(true) => "yes",
                Some(false) => "**no**",
            },
        );
    }
}

/// Figure groups `--only` can pick.
const GROUPS: [&str; 18] = [
    "local",
    "api",
    "query",
    "purge",
    "signing",
    "encryption",
    "province",
    "feed",
    "search",
    "bulk_catch_up",
    "partition_heal",
    "live_propagation",
    "fan_out",
    "sustained",
    "wire_efficiency",
    "bandwidth",
    "repair",
    "scale",
];

/// Command line: `[--quick] [--only GROUP[,GROUP...]] [--records N]`.
struct Args {
    quick: bool,
    only: Option<Vec<String>>,
    /// Overrides the record count of the bulk catch-up (256 B values; a tenth with 4 KiB
    /// values), of the partition heal, of the repair and of the query group.
    records: Option<usize>,
}

impl Args {
    fn parse() -> Result<Self> {
        let mut args = Args {
            quick: false,
            only: None,
            records: None,
        };
        let mut it = std::env::args().skip(1);
        while let Some(a) = it.next() {
            match a.as_str() {
                "--quick" => args.quick = true,
                "--only" => {
                    let list = it.next().context("--only needs a list of figure groups")?;
                    let groups: Vec<String> = list.split(',').map(str::to_owned).collect();
                    for g in &groups {
                        anyhow::ensure!(
                            GROUPS.contains(&g.as_str()),
                            "unknown figure group {g:?} (known: {})",
                            GROUPS.join(", ")
                        );
                    }
                    args.only = Some(groups);
                }
                "--records" => {
                    let n = it.next().context("--records needs a number")?;
                    let n: usize = n
                        .parse()
                        .ok()
                        .filter(|&n| n >= 10)
                        .with_context(|| format!("--records {n:?}: a number ≥ 10"))?;
                    args.records = Some(n);
                }
                "-h" | "--help" => {
                    println!(
                        "usage: officesync-bench [--quick] [--only GROUP[,GROUP...]] [--records N]\n\
                         groups: {}",
                        GROUPS.join(", ")
                    );
                    std::process::exit(0);
                }
                other => anyhow::bail!("unknown argument {other:?} (try --help)"),
            }
        }
        Ok(args)
    }

    /// True when figure group `group` runs.
    fn wants(&self, group: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|only| only.iter().any(|g| g == group))
    }
}

/// The daemon's allocator, for the groups that run replicas in this process.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let args = match Args::parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("officesync-bench: {e}");
            std::process::exit(2);
        }
    };
    if std::env::var_os("RUST_LOG").is_some() {
        // The nodes this process runs log to stderr, filtered by RUST_LOG (off without it).
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let mut rows = Vec::new();
    if args.wants("local") {
        local_figures(args.quick, &mut rows).await?;
    }
    if args.wants("api") {
        api::run(args.quick, &mut rows).await?;
    }
    if args.wants("query") {
        if let Err(e) = query::run(args.quick, args.records, &mut rows).await {
            replication::failed(&mut rows, "query", "-", &e);
        }
    }
    if args.wants("purge") {
        if let Err(e) = purge::run(args.quick, args.records, &mut rows).await {
            replication::failed(&mut rows, "purge", "90 % deleted, purged", &e);
        }
    }
    if args.wants("signing") {
        signing::run(args.quick, &mut rows).await?;
    }
    if args.wants("encryption") {
        encryption::run(args.quick, &mut rows).await?;
    }
    if args.wants("province") {
        let pki = replication::Pki::new()?;
        if let Err(e) = province::run(&pki, args.quick, &mut rows).await {
            replication::failed(&mut rows, "province", "-", &e);
        }
    }
    if args.wants("feed") {
        let pki = replication::Pki::new()?;
        if let Err(e) = feed::run(&pki, args.quick, &mut rows).await {
            replication::failed(&mut rows, "feed", "-", &e);
        }
    }
    if args.wants("search") {
        if let Err(e) = search::run(args.quick, &mut rows).await {
            replication::failed(&mut rows, "search", "-", &e);
        }
    }
    replication::run(&args, &mut rows).await;
    if args.wants("bandwidth") {
        let pki = replication::Pki::new()?;
        if let Err(e) = bandwidth::run(&pki, args.quick, &mut rows).await {
            replication::failed(&mut rows, "bandwidth", "-", &e);
        }
    }
    // Only on request: a thousand daemons take this machine for several minutes.
    if args
        .only
        .as_ref()
        .is_some_and(|g| g.iter().any(|g| g == "scale"))
    {
        if let Err(e) = scale::run(args.quick, &mut rows).await {
            replication::failed(&mut rows, "scale", "-", &e);
        }
    }
    println!();
    print_table(&rows);
    Ok(())
}

/// Local write and read figures against raw sled.
async fn local_figures(quick: bool, rows: &mut Vec<TableRow>) -> Result<()> {
    let s = if quick {
        Sizes {
            sync_ops: 640,
            periodic_ops: 6_400,
            read_ops: 20_000,
        }
    } else {
        Sizes {
            sync_ops: 12_800,
            periodic_ops: 128_000,
            read_ops: 400_000,
        }
    };
    for writers in [1usize, 64] {
        let ops = if writers == 1 {
            s.sync_ops / 8
        } else {
            s.sync_ops
        };
        let run = replica_writes(CommitMode::Sync, writers, ops).await?;
        // Baseline: raw sled inserts flushed in the batch sizes our group commit achieved.
        let batch = run.mean_group.round().max(1.0) as usize;
        let base = raw_sled_writes(ops, batch, true)?;
        let ratio = run.ops_per_sec / base;
        let target = (writers == 64).then_some(TARGET_SYNC_WRITES);
        emit(
            rows,
            json!({
                "figure": "local_write", "durability": "sync", "writers": writers, "ops": ops,
                "ops_per_sec": run.ops_per_sec.round(), "mean_group_commit": run.mean_group,
                "baseline": format!("raw sled insert + flush every {batch}"),
                "baseline_ops_per_sec": base.round(), "ratio": run.ops_per_sec / base,
                "target_ratio": target,
                "target_met": target.map(|t| ratio >= t),
            }),
            TableRow {
                figure: "local_write".into(),
                case: format!("sync, {writers} writers, {ops} ops"),
                result: format!("{:.0} ops/s", run.ops_per_sec),
                baseline: format!("{base:.0} ops/s (raw sled insert + flush every {batch})"),
                ratio: Some(ratio),
                target: target.map_or("-".into(), |t| format!("ratio ≥ {t}")),
                met: target.map(|t| ratio >= t),
            },
        );
    }
    for writers in [1usize, 64] {
        let ops = s.periodic_ops;
        let run = replica_writes(
            CommitMode::Periodic(std::time::Duration::from_millis(100)),
            writers,
            ops,
        )
        .await?;
        let base = raw_sled_writes(ops, ops, false)?;
        // The same writes as raw sled batches of the size the replica committed: what sled
        // itself costs per atomic commit, apart from the replica's work.
        let per_commit = run.per_commit.round().max(1.0) as usize;
        let batched = raw_sled_batches(ops, per_commit)?;
        let ratio = run.ops_per_sec / base;
        let target = (writers == 64).then_some(TARGET_PERIODIC_WRITES);
        emit(
            rows,
            json!({
                "figure": "local_write", "durability": "periodic", "writers": writers, "ops": ops,
                "ops_per_sec": run.ops_per_sec.round(),
                "baseline": "raw sled insert, one flush at the end",
                "baseline_ops_per_sec": base.round(), "ratio": run.ops_per_sec / base,
                "writes_per_commit": run.per_commit,
                "raw_sled_batches_ops_per_sec": batched.round(),
                "target_ratio": target,
                "target_met": target.map(|t| ratio >= t),
            }),
            TableRow {
                figure: "local_write".into(),
                case: format!(
                    "periodic, {writers} writers, {ops} ops ({:.1} writes per commit)",
                    run.per_commit
                ),
                result: format!("{:.0} ops/s", run.ops_per_sec),
                baseline: format!(
                    "{base:.0} ops/s (raw sled insert, one flush); {batched:.0} ops/s (raw sled, one apply_batch per {per_commit})"
                ),
                ratio: Some(ratio),
                target: target.map_or("-".into(), |t| format!("ratio ≥ {t}")),
                met: target.map(|t| ratio >= t),
            },
        );
    }
    let reads = replica_reads(s.read_ops).await?;
    let base = raw_sled_reads(s.read_ops)?;
    emit(
        rows,
        json!({
            "figure": "local_read", "readers": 8, "ops": s.read_ops, "ops_per_sec": reads.round(),
            "baseline": "raw sled get, one thread", "baseline_ops_per_sec": base.round(),
            "ratio": reads / base, "target_ratio": TARGET_READS,
            "target_met": reads / base >= TARGET_READS,
        }),
        TableRow {
            figure: "local_read".into(),
            case: format!("8 readers, {} ops", s.read_ops),
            result: format!("{reads:.0} ops/s"),
            baseline: format!("{base:.0} ops/s (raw sled get, one thread)"),
            ratio: Some(reads / base),
            target: format!("ratio ≥ {TARGET_READS}"),
            met: Some(reads / base >= TARGET_READS),
        },
    );
    Ok(())
}
