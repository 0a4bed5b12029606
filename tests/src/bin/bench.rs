//! officesync benchmark: prints one JSON line per figure, each beside a raw sled baseline
//! measured in the same run, then a markdown summary table. Not a test: nothing here asserts
//! timings. `--quick` runs small sizes in seconds (CI uses it so the program never rots).

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use officesync_daemon::replica::{CommitMode, Replica, ReplicaOptions};
use officesync_daemon::store::SledStore;
use serde_json::json;

const VALUE_BYTES: usize = 256;

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

/// Raw sled: `ops` inserts in batches of `batch`, each batch followed by `flush()` when
/// `flush_each` (otherwise one flush at the end). Returns ops/s.
fn raw_sled_writes(ops: usize, batch: usize, flush_each: bool) -> Result<f64> {
    let dir = tempfile::tempdir()?;
    let db = sled::Config::new()
        .path(dir.path())
        .flush_every_ms(None)
        .open()?;
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
    mean_group: f64,
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
    r.close().await?;
    Ok(WriteRun {
        ops_per_sec: (per * writers) as f64 / secs,
        mean_group: synced as f64 / syncs as f64,
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

fn emit(rows: &mut Vec<serde_json::Value>, row: serde_json::Value) {
    println!("{row}");
    rows.push(row);
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
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
    let mut rows = Vec::new();
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
        emit(
            &mut rows,
            json!({
                "figure": "local_write", "durability": "sync", "writers": writers, "ops": ops,
                "ops_per_sec": run.ops_per_sec.round(), "mean_group_commit": run.mean_group,
                "baseline": format!("raw sled insert + flush every {batch}"),
                "baseline_ops_per_sec": base.round(), "ratio": run.ops_per_sec / base,
                "target_ratio": if writers == 64 { json!(0.5) } else { json!(null) },
            }),
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
        emit(
            &mut rows,
            json!({
                "figure": "local_write", "durability": "periodic", "writers": writers, "ops": ops,
                "ops_per_sec": run.ops_per_sec.round(),
                "baseline": "raw sled insert, one flush at the end",
                "baseline_ops_per_sec": base.round(), "ratio": run.ops_per_sec / base,
                "target_ratio": if writers == 64 { json!(0.7) } else { json!(null) },
            }),
        );
    }
    let reads = replica_reads(s.read_ops).await?;
    let base = raw_sled_reads(s.read_ops)?;
    emit(
        &mut rows,
        json!({
            "figure": "local_read", "readers": 8, "ops": s.read_ops, "ops_per_sec": reads.round(),
            "baseline": "raw sled get, one thread", "baseline_ops_per_sec": base.round(),
            "ratio": reads / base,
        }),
    );
    println!();
    println!("| figure | durability | writers | ops/s | baseline ops/s | ratio | target |");
    println!("|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {} | {} | {:.2} | {} |",
            r["figure"].as_str().unwrap_or(""),
            r["durability"].as_str().unwrap_or("-"),
            r.get("writers")
                .or(r.get("readers"))
                .map_or(String::new(), |v| v.to_string()),
            r["ops_per_sec"],
            r["baseline_ops_per_sec"],
            r["ratio"].as_f64().unwrap_or(0.0),
            r.get("target_ratio")
                .filter(|v| !v.is_null())
                .map_or("-".to_string(), |v| format!("≥ {v}")),
        );
    }
    Ok(())
}
