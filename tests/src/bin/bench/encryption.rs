//! The cost of encryption at rest, measured with and without it in the same run: the store
//! alone (batched puts, gets, scans of sled with and without the sealing wrapper), local
//! writes through the replica (256 B values, and 64 KiB values the store chunks), and a bulk
//! catch-up of an empty office from a hub (both in this process) with the office's store
//! encrypted or not. Each figure prints the encrypted rate over the plain one as its ratio.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use officesync_daemon::config::{Config, Durability};
use officesync_daemon::node::Node;
use officesync_daemon::replica::{CommitMode, Replica, ReplicaOptions};
use officesync_daemon::storage_key::StorageKey;
use officesync_daemon::store::{Keyring, SealedStore, SledStore, Store, WriteBatch};
use serde_json::json;

use crate::replication::{failed, filled_hub, progress, wait_digest, Kind, Pki, HUB, OFFICE_A};
use crate::{emit, key, value, TableRow};

/// Values per store batch.
const BATCH: usize = 64;

/// Sizes of the encryption figures.
struct EncSizes {
    store_ops: usize,
    writes: usize,
    large_writes: usize,
    catch_up: usize,
}

impl EncSizes {
    fn new(quick: bool) -> EncSizes {
        if quick {
            EncSizes {
                store_ops: 20_000,
                writes: 6_400,
                large_writes: 256,
                catch_up: 5_000,
            }
        } else {
            EncSizes {
                store_ops: 400_000,
                writes: 128_000,
                large_writes: 2_000,
                catch_up: 200_000,
            }
        }
    }
}

/// A new key in `dir`, its file and its keyring.
fn new_key(dir: &Path) -> Result<(std::path::PathBuf, Keyring)> {
    let path = dir.join("storage.key");
    let key = StorageKey::generate()?;
    key.write_new(&path, false)?;
    Ok((path.clone(), Keyring::new(&key, path)))
}

/// A sled store in a new temp dir, sealed when `sealed`.
fn store(sealed: bool) -> Result<(tempfile::TempDir, Arc<dyn Store>)> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let sled = SledStore::open(&data)?;
    let store: Arc<dyn Store> = if sealed {
        let (_, ring) = new_key(dir.path())?;
        Arc::new(SealedStore::open(sled, ring, &data)?)
    } else {
        Arc::new(sled)
    };
    Ok((dir, store))
}

/// Rates of one store: puts/s, gets/s and scanned rows/s.
struct StoreRates {
    put: f64,
    get: f64,
    scan: f64,
}

fn store_rates(sealed: bool, ops: usize) -> Result<StoreRates> {
    let (_dir, store) = store(sealed)?;
    let start = Instant::now();
    for first in (0..ops).step_by(BATCH) {
        let mut batch = WriteBatch::default();
        for i in first..(first + BATCH).min(ops) {
            batch.put(key(0, i).into_bytes(), value(i));
        }
        store.apply(batch)?;
    }
    store.sync()?;
    let put = ops as f64 / start.elapsed().as_secs_f64();
    let start = Instant::now();
    for i in 0..ops {
        let k = key(0, (i * 7919) % ops);
        ensure!(store.get(k.as_bytes())?.is_some(), "{k} missing");
    }
    let get = ops as f64 / start.elapsed().as_secs_f64();
    let start = Instant::now();
    let mut from = Vec::new();
    let mut rows = 0;
    loop {
        let page = store.range(&from, None, 1_000)?;
        rows += page.len();
        match page.last() {
            Some((last, _)) if page.len() == 1_000 => {
                from = last.clone();
                from.push(0);
            }
            _ => break,
        }
    }
    ensure!(rows == ops, "scanned {rows} of {ops}");
    let scan = rows as f64 / start.elapsed().as_secs_f64();
    Ok(StoreRates { put, get, scan })
}

/// Replica writes/s (periodic durability, 64 writers) of `ops` values of `len` bytes.
async fn replica_writes(sealed: bool, ops: usize, len: usize) -> Result<f64> {
    let (_dir, store) = store(sealed)?;
    let mut opts = ReplicaOptions::new("bench");
    opts.commit = CommitMode::Periodic(Duration::from_millis(100));
    let r = Replica::open(store, opts)?;
    let writers = 64.min(ops);
    let per = ops / writers;
    let body: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (r, body) = (r.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..per {
                r.write("bench", &key(w, i), Some(body.clone())).await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    r.sync().await?;
    let rate = (per * writers) as f64 / start.elapsed().as_secs_f64();
    r.close().await?;
    Ok(rate)
}

/// Records/s of an empty office (encrypted when `sealed`) catching up `n` records from a hub.
async fn catch_up(pki: &Pki, n: usize, sealed: bool) -> Result<f64> {
    let dir = tempfile::tempdir()?;
    let (hub, target, _) = filled_hub(pki, dir.path(), n, Kind::Random).await?;
    let mut builder = Config::builder(OFFICE_A, dir.path().join("office"), pki.bundle(OFFICE_A)?)
        .api_listen(([127, 0, 0, 1], 0).into())
        .sync_listen(([127, 0, 0, 1], 0).into())
        .admins([HUB])
        .durability(Durability::Sync)
        .peer(HUB, hub.sync_addr().to_string());
    if sealed {
        let (file, _) = new_key(dir.path())?;
        builder = builder.encryption_key_file(file);
    }
    let config = builder.build();
    config.validate().context("office config")?;
    let start = Instant::now();
    let office = Node::start(&config).await.context("starting the office")?;
    let reached = wait_digest(office.replica(), &target.digest, Duration::from_secs(900)).await?;
    let secs = reached
        .context("the office did not catch up")?
        .duration_since(start);
    office.shutdown().await?;
    hub.shutdown().await?;
    Ok(n as f64 / secs.as_secs_f64())
}

/// Emits one figure: `sealed` and `plain` rates of `unit`.
fn figure(rows: &mut Vec<TableRow>, name: &str, case: &str, unit: &str, sealed: f64, plain: f64) {
    let ratio = sealed / plain;
    emit(
        rows,
        json!({
            "figure": name, "case": case, "encrypted_per_sec": sealed.round(),
            "plain_per_sec": plain.round(), "ratio": ratio,
            "note": "AES-256-GCM, every value sealed with its store key as AAD",
        }),
        TableRow {
            figure: name.into(),
            case: case.into(),
            result: format!("{sealed:.0} {unit}/s encrypted"),
            baseline: format!("{plain:.0} {unit}/s in clear"),
            ratio: Some(ratio),
            target: "-".into(),
            met: None,
        },
    );
}

/// Runs `f` for plain then sealed, twice, keeping the better of each (the machine is shared).
async fn best_of_two<F, Fut>(mut f: F) -> Result<(f64, f64)>
where
    F: FnMut(bool) -> Fut,
    Fut: Future<Output = Result<f64>>,
{
    let (mut plain, mut sealed) = (0f64, 0f64);
    for _ in 0..2 {
        plain = plain.max(f(false).await?);
        sealed = sealed.max(f(true).await?);
    }
    Ok((sealed, plain))
}

/// The `encryption` figures.
pub(crate) async fn run(quick: bool, rows: &mut Vec<TableRow>) -> Result<()> {
    let s = EncSizes::new(quick);
    progress(format_args!(
        "encryption: store {} ops, replica {} writes, catch-up {} records",
        s.store_ops, s.writes, s.catch_up
    ));
    let ops = s.store_ops;
    let (plain, sealed) = tokio::task::block_in_place(|| -> Result<_> {
        let best = |a: StoreRates, b: StoreRates| StoreRates {
            put: a.put.max(b.put),
            get: a.get.max(b.get),
            scan: a.scan.max(b.scan),
        };
        let (plain, sealed) = (store_rates(false, ops)?, store_rates(true, ops)?);
        let plain = best(plain, store_rates(false, ops)?);
        let sealed = best(sealed, store_rates(true, ops)?);
        Ok((plain, sealed))
    })?;
    let case = |what: &str| format!("store {what}, {ops} × 256 B, sled");
    figure(
        rows,
        "encryption_store",
        &case("put (batches of 64)"),
        "puts",
        sealed.put,
        plain.put,
    );
    figure(
        rows,
        "encryption_store",
        &case("get"),
        "gets",
        sealed.get,
        plain.get,
    );
    figure(
        rows,
        "encryption_store",
        &case("scan"),
        "rows",
        sealed.scan,
        plain.scan,
    );

    let (sealed, plain) = best_of_two(|on| replica_writes(on, s.writes, 256)).await?;
    let case = format!("local write, periodic, 64 writers, {} × 256 B", s.writes);
    figure(
        rows,
        "encryption_local_write",
        &case,
        "writes",
        sealed,
        plain,
    );
    let (sealed, plain) = best_of_two(|on| replica_writes(on, s.large_writes, 64 * 1024)).await?;
    let case = format!(
        "local write, periodic, 64 writers, {} × 64 KiB (8 KiB chunks)",
        s.large_writes
    );
    figure(
        rows,
        "encryption_local_write",
        &case,
        "writes",
        sealed,
        plain,
    );

    let pki = Pki::new()?;
    let n = s.catch_up;
    let case = format!("bulk catch-up, {n} × 256 B, empty office (sync) ← hub, in process");
    match async {
        let plain = catch_up(&pki, n, false).await?;
        let sealed = catch_up(&pki, n, true).await?;
        anyhow::Ok((sealed, plain))
    }
    .await
    {
        Ok((sealed, plain)) => figure(rows, "encryption_catch_up", &case, "records", sealed, plain),
        Err(e) => failed(rows, "encryption_catch_up", &case, &e),
    }
    Ok(())
}
