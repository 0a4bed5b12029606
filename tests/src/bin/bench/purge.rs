//! Figure group `purge`: the store after deleting 90 % of N records (1,000,000; `--quick`:
//! 20,000; `--records N` overrides), before and after the tombstones are purged below the
//! stable frontier, in one replica on sled in this process. Size is given three ways: the
//! bytes of every stored row (keys and values: what the data takes), the rows, and sled's
//! size on disk (its log files; sled reclaims freed space lazily, so this lags); with the
//! collection's keys and versions and the purge's time (steps of 1,000 records, as the node
//! runs it).

use std::time::Instant;

use anyhow::{ensure, Result};
use officesync_daemon::replica::{CommitMode, Replica, ReplicaOptions};
use officesync_daemon::store::{SledStore, Store};
use serde_json::json;

use crate::{emit, TableRow};

const COLL: &str = "situation";
/// Concurrent writers filling the store.
const WRITERS: usize = 64;
/// Value bytes per record.
const VALUE_BYTES: usize = 256;
/// Records one purge step goes through (`frontier::PURGE_STEP_KEYS`).
const STEP: usize = 1000;

/// Every stored row's count and bytes (keys and values).
fn logical(r: &Replica) -> Result<(u64, u64)> {
    let store = r.store();
    let (mut rows, mut bytes) = (0u64, 0u64);
    let mut start = Vec::new();
    loop {
        let page = store.range(&start, None, 10_000)?;
        for (k, v) in &page {
            rows += 1;
            bytes += (k.len() + v.len()) as u64;
        }
        match page.last() {
            Some((k, _)) if page.len() == 10_000 => {
                start = k.clone();
                start.push(0);
            }
            _ => return Ok((rows, bytes)),
        }
    }
}

/// A snapshot of the store's size.
async fn size(r: &Replica) -> Result<serde_json::Value> {
    let (rows, bytes) = logical(r)?;
    let meta = r.collection(COLL).await?;
    Ok(json!({
        "row_bytes": bytes, "rows": rows, "disk_bytes": r.store().size_on_disk(),
        "keys": meta.keys, "versions": meta.versions, "records": meta.records,
    }))
}

fn mib(v: &serde_json::Value, field: &str) -> f64 {
    v[field].as_u64().unwrap_or(0) as f64 / (1024.0 * 1024.0)
}

/// Runs the group.
pub(crate) async fn run(
    quick: bool,
    records: Option<usize>,
    rows: &mut Vec<TableRow>,
) -> Result<()> {
    let n = records.unwrap_or(if quick { 20_000 } else { 1_000_000 });
    let dir = tempfile::tempdir()?;
    let open = || -> Result<Replica> {
        let store = std::sync::Arc::new(SledStore::open(dir.path())?);
        let mut opts = ReplicaOptions::new("general-office");
        opts.commit = CommitMode::Periodic(std::time::Duration::from_millis(200));
        Ok(Replica::open(store, opts)?)
    };
    let r = open()?;
    crate::replication::progress(format_args!("purge: writing {n} records, deleting 90 %"));
    for deleting in [false, true] {
        let mut tasks = tokio::task::JoinSet::new();
        for w in 0..WRITERS {
            let r = r.clone();
            tasks.spawn(async move {
                for i in (w..n).step_by(WRITERS) {
                    if deleting && i % 10 == 0 {
                        continue; // one record in ten stays
                    }
                    let value = (!deleting).then(|| vec![(i % 251) as u8; VALUE_BYTES]);
                    r.write(COLL, &format!("k{i:08}"), value).await?;
                }
                anyhow::Ok(())
            });
        }
        while let Some(t) = tasks.join_next().await {
            t??;
        }
    }
    r.sync().await?;
    let before = size(&r).await?;
    crate::replication::progress(format_args!("purge: purging below the frontier"));
    let frontier = r.collection(COLL).await?.vv;
    let start = Instant::now();
    let (mut after, mut purged) = (None, 0u64);
    loop {
        let step = r.purge_step(COLL, frontier.clone(), after, STEP).await?;
        purged += step.removed;
        match step.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    r.sync().await?;
    let purge_secs = start.elapsed().as_secs_f64();
    let deleted = (n - n.div_ceil(10)) as u64;
    ensure!(purged == deleted, "purged {purged} tombstones of {deleted}");
    let purged_size = size(&r).await?;
    r.close().await?;
    drop(r);
    // Reopened: sled has had the chance to reclaim the freed segments.
    let r = open()?;
    let reopened = size(&r).await?;
    r.close().await?;

    emit(
        rows,
        json!({
            "figure": "purge", "records": n, "deleted": deleted, "value_bytes": VALUE_BYTES,
            "before": before, "after": purged_size, "after_reopen": reopened,
            "purge_secs": purge_secs, "purged_per_sec": purged as f64 / purge_secs.max(1e-9),
        }),
        TableRow {
            figure: "purge".into(),
            case: format!("{n} records of {VALUE_BYTES} B, 90 % deleted, history 10"),
            result: format!(
                "rows {:.1} MiB -> {:.1} MiB ({} -> {} rows); on disk {:.1} MiB -> {:.1} MiB \
                 ({:.1} MiB reopened); purge {purge_secs:.1} s",
                mib(&before, "row_bytes"),
                mib(&purged_size, "row_bytes"),
                before["rows"],
                purged_size["rows"],
                mib(&before, "disk_bytes"),
                mib(&purged_size, "disk_bytes"),
                mib(&reopened, "disk_bytes"),
            ),
            baseline: "before the purge".into(),
            ratio: Some(
                before["row_bytes"].as_f64().unwrap_or(0.0)
                    / purged_size["row_bytes"].as_f64().unwrap_or(1.0).max(1.0),
            ),
            target: "-".into(),
            met: None,
        },
    );
    Ok(())
}
