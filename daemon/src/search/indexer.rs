//! One collection's indexer: opens its index (or rebuilds it from the store when it is missing,
//! damaged, made with other settings, or behind what the change log keeps), then follows the
//! change log: for each changed key it re-reads the key's winner and indexes it, or removes
//! it when deleted, and commits in batches with the cursor it is complete through.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::extract::document_text;
use super::index::{fingerprint, Payload, Writer};
use super::{Slot, State};
use crate::replica::{Replica, ReplicaError};

/// Changes read from the log at once.
const CHANGES_PAGE: usize = 1000;
/// Records read from the store at once while rebuilding.
const SCAN_PAGE: usize = 500;
/// Least time between two commits while changes keep arriving one by one (bounds the number
/// of small segments; the delay from apply to searchable stays about this).
const MIN_COMMIT_GAP: Duration = Duration::from_millis(100);
/// Longest time changes stay uncommitted while a backlog is worked through.
const MAX_UNCOMMITTED: Duration = Duration::from_millis(250);
/// Wait before trying again after the store or the index failed.
const RETRY: Duration = Duration::from_secs(2);

/// A document to index (`text` present) or remove.
struct Doc {
    key: String,
    version: String,
    text: Option<String>,
}

/// Why the indexer stopped following the log for a while.
enum Interrupt {
    /// Shutdown.
    Stop,
    /// The index must be rebuilt (its cursor expired, or it failed).
    Rebuild(String),
}

/// The indexer of `slot` until `stop`.
pub(super) async fn run(slot: Arc<Slot>, replica: Replica, mut stop: watch::Receiver<bool>) {
    let mut cursors = replica.change_cursor();
    let mut reason = match open(&slot, &replica, &cursors).await {
        Ok((writer, cursor)) => {
            match follow(&slot, &replica, writer, cursor, &mut cursors, &mut stop).await {
                Interrupt::Stop => return,
                Interrupt::Rebuild(why) => why,
            }
        }
        Err(why) => why,
    };
    loop {
        if *stop.borrow() {
            return;
        }
        slot.note_rebuild(&reason);
        let rebuilt = tokio::select! {
            r = rebuild(&slot, &replica, &cursors) => r,
            _ = stopped(&mut stop) => return,
        };
        reason = match rebuilt {
            Ok((writer, cursor)) => {
                tracing::info!(collection = %slot.collection, docs = slot.stats.docs(), "search index rebuilt");
                match follow(&slot, &replica, writer, cursor, &mut cursors, &mut stop).await {
                    Interrupt::Stop => return,
                    Interrupt::Rebuild(why) => why,
                }
            }
            Err(e) => {
                slot.set_state(State::Failed(e.clone()));
                tracing::error!(collection = %slot.collection, error = %e, "cannot rebuild the search index; trying again");
                tokio::select! {
                    _ = tokio::time::sleep(RETRY) => {}
                    _ = stopped(&mut stop) => return,
                }
                e
            }
        };
    }
}

/// Resolves once `stop` is set (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Opens the existing index when it can be used as it is; the reason to rebuild otherwise.
async fn open(
    slot: &Arc<Slot>,
    replica: &Replica,
    cursors: &watch::Receiver<u64>,
) -> Result<(Writer, u64), String> {
    let (dir, print) = (slot.dir.clone(), fingerprint(&slot.pointers));
    let id = replica.id().to_string();
    let opened = tokio::task::spawn_blocking(move || Writer::open(&dir, &print, &id))
        .await
        .map_err(|e| format!("the index could not be opened: {e}"))?;
    match opened {
        Ok((writer, Payload { cursor, .. })) => {
            let durable = *cursors.borrow();
            if cursor > durable {
                return Err(format!(
                    "it is ahead of the store's change log ({cursor} > {durable})"
                ));
            }
            slot.stats.set_cursor(cursor);
            slot.set_state(State::Ready(writer.searchable()));
            slot.stats.set_docs(writer.searchable().docs());
            tracing::info!(collection = %slot.collection, cursor, docs = slot.stats.docs(), "search index opened");
            Ok((writer, cursor))
        }
        Err(why) => Err(why.to_string()),
    }
}

/// Builds the index anew from every live record of the store; returns it committed with the
/// change-log cursor taken before the scan (changes after it are read again from the log).
async fn rebuild(
    slot: &Arc<Slot>,
    replica: &Replica,
    cursors: &watch::Receiver<u64>,
) -> Result<(Writer, u64), String> {
    slot.set_state(State::Rebuilding { indexed: 0 });
    let cursor = *cursors.borrow();
    let dir = slot.dir.clone();
    let mut writer = tokio::task::spawn_blocking(move || Writer::create(&dir))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("cannot create the index: {e}"))?;
    let mut after: Option<String> = None;
    let mut indexed = 0u64;
    loop {
        let page = replica
            .scan(&slot.collection, "", after.as_deref(), SCAN_PAGE)
            .await
            .map_err(|e| format!("cannot read the store: {e}"))?;
        let docs: Vec<Doc> = page
            .records
            .iter()
            .filter_map(|r| {
                let value = r.winner().value.as_deref()?;
                Some(Doc {
                    key: r.key.clone(),
                    version: r.winner().dot.to_string(),
                    text: Some(document_text(value, &slot.pointers)),
                })
            })
            .collect();
        indexed += docs.len() as u64;
        writer = apply(writer, docs).await?;
        slot.set_state(State::Rebuilding { indexed });
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    let writer = commit(writer, payload(slot, replica, cursor)).await?;
    slot.stats.set_cursor(cursor);
    slot.stats.set_docs(writer.searchable().docs());
    slot.set_state(State::Ready(writer.searchable()));
    Ok((writer, cursor))
}

/// Follows the change log from `cursor`, committing in batches, until shutdown or a reason to
/// rebuild.
async fn follow(
    slot: &Arc<Slot>,
    replica: &Replica,
    mut writer: Writer,
    mut cursor: u64,
    cursors: &mut watch::Receiver<u64>,
    stop: &mut watch::Receiver<bool>,
) -> Interrupt {
    let mut dirty = false;
    let mut last_commit = Instant::now();
    loop {
        if *stop.borrow() {
            if dirty {
                if let Err(e) = commit(writer, payload(slot, replica, cursor)).await {
                    tracing::warn!(collection = %slot.collection, error = %e, "last search commit failed; the index catches up at next start");
                }
            }
            return Interrupt::Stop;
        }
        let seen = *cursors.borrow_and_update();
        let page = match replica
            .changes(&slot.collection, cursor, "", CHANGES_PAGE)
            .await
        {
            Ok(page) => page,
            Err(ReplicaError::CursorExpired { .. }) => {
                return Interrupt::Rebuild(format!(
                    "the change log no longer holds its cursor {cursor}"
                ))
            }
            Err(ReplicaError::Closed) => return Interrupt::Stop,
            Err(e) => {
                tracing::warn!(collection = %slot.collection, error = %e, "cannot read the change log; trying again");
                tokio::select! {
                    _ = tokio::time::sleep(RETRY) => continue,
                    _ = stopped(stop) => continue,
                }
            }
        };
        // More to read when the page stopped before the durable cursor seen before it.
        let full = page.next < seen;
        if !page.changes.is_empty() {
            let keys: BTreeSet<String> = page.changes.into_iter().map(|c| c.key).collect();
            let docs = match read_docs(slot, replica, keys).await {
                Ok(docs) => docs,
                Err(ReplicaError::Closed) => return Interrupt::Stop,
                Err(e) => {
                    tracing::warn!(collection = %slot.collection, error = %e, "cannot read changed records; trying again");
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            };
            writer = match apply(writer, docs).await {
                Ok(w) => w,
                Err(e) => return Interrupt::Rebuild(format!("indexing failed: {e}")),
            };
            dirty = true;
        }
        cursor = cursor.max(page.next);
        if full {
            if dirty && last_commit.elapsed() >= MAX_UNCOMMITTED {
                match commit_now(slot, replica, writer, cursor).await {
                    Ok(w) => writer = w,
                    Err(e) => return Interrupt::Rebuild(e),
                }
                dirty = false;
                last_commit = Instant::now();
            }
            continue;
        }
        if dirty {
            let wait = MIN_COMMIT_GAP.saturating_sub(last_commit.elapsed());
            if !wait.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stopped(stop) => {}
                }
                continue;
            }
            match commit_now(slot, replica, writer, cursor).await {
                Ok(w) => writer = w,
                Err(e) => return Interrupt::Rebuild(e),
            }
            dirty = false;
            last_commit = Instant::now();
        }
        slot.stats.set_current_through(seen.max(cursor));
        tokio::select! {
            changed = cursors.changed() => {
                if changed.is_err() {
                    return Interrupt::Stop;
                }
            }
            _ = stopped(stop) => {}
        }
    }
}

/// Commits `writer` through `cursor` and publishes the new state in `slot`.
async fn commit_now(
    slot: &Arc<Slot>,
    replica: &Replica,
    writer: Writer,
    cursor: u64,
) -> Result<Writer, String> {
    let writer = commit(writer, payload(slot, replica, cursor))
        .await
        .map_err(|e| format!("commit failed: {e}"))?;
    slot.stats.set_cursor(cursor);
    slot.stats.set_docs(writer.searchable().docs());
    slot.stats
        .commits
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Ok(writer)
}

/// The payload of a commit through `cursor`.
fn payload(slot: &Slot, replica: &Replica, cursor: u64) -> Payload {
    Payload {
        cursor,
        fingerprint: fingerprint(&slot.pointers),
        replica: replica.id().to_string(),
    }
}

/// The current winner of each of `keys`: its text, or a removal when deleted or absent.
async fn read_docs(
    slot: &Slot,
    replica: &Replica,
    keys: BTreeSet<String>,
) -> Result<Vec<Doc>, ReplicaError> {
    let mut docs = Vec::with_capacity(keys.len());
    for key in keys {
        let read = replica.winner(&slot.collection, &key).await?;
        let doc = match read
            .as_ref()
            .and_then(|r| Some((r, r.winner().value.as_deref()?)))
        {
            Some((r, value)) => Doc {
                version: r.winner().dot.to_string(),
                text: Some(document_text(value, &slot.pointers)),
                key,
            },
            None => Doc {
                key,
                version: String::new(),
                text: None,
            },
        };
        docs.push(doc);
    }
    Ok(docs)
}

/// Hands `docs` to the index writer, off the async workers.
async fn apply(mut writer: Writer, docs: Vec<Doc>) -> Result<Writer, String> {
    tokio::task::spawn_blocking(move || {
        for doc in docs {
            match doc.text {
                Some(text) => writer
                    .upsert(&doc.key, &doc.version, &text)
                    .map_err(|e| e.to_string())?,
                None => writer.remove(&doc.key),
            }
        }
        Ok(writer)
    })
    .await
    .map_err(|e| e.to_string())?
}

/// Commits `writer` with `payload`, off the async workers.
async fn commit(mut writer: Writer, payload: Payload) -> Result<Writer, String> {
    tokio::task::spawn_blocking(move || {
        writer.commit(&payload).map_err(|e| e.to_string())?;
        Ok(writer)
    })
    .await
    .map_err(|e| e.to_string())?
}
