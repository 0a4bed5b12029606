//! The change log: every version this node applies (local or received), in apply order,
//! each under a cursor that is never reused, kept in the same atomic batch as the version.
//!
//! A group of writes stores its entries of one collection as a few chunks (one store row
//! each, at most [`CHUNK_BYTES`]), keyed by the last cursor they hold, so a catch-up of a
//! million versions adds a few thousand rows rather than a million.
//!
//! Cursors count across all collections. A reader is only ever shown changes that are
//! durable, so a crash can never take back a cursor a reader has seen; the log keeps the
//! last [`super::ReplicaOptions::changes_kept`] cursors and trims older entries in small
//! steps on the writer thread.

use std::collections::VecDeque;
use std::sync::Mutex;

use bincode::{Decode, Encode};
use officesync_protocol::{codec, Dot, Hlc, VersionHeader};

use super::encoding::encode;
use super::keys;
use super::ReplicaError;
use crate::store::{Store, WriteBatch};

/// Change-log rows (chunks) of one collection removed per trimming step.
const TRIM_STEP: usize = 1024;

/// Bytes of entries (estimated) above which a chunk is closed: well below sled's large-value
/// threshold.
const CHUNK_BYTES: usize = 32 << 10;

/// Chunks read per store range while paging.
const READ_ROWS: usize = 16;

/// Cursors between two trimming steps.
pub(crate) const TRIM_EVERY: u64 = 4096;

/// Entries a page of changes examines at most (with a prefix, most may not match).
pub const CHANGES_MAX_EXAMINED: usize = 10_000;

/// Cursors a restored copy skips, so that no cursor a reader saw before the restore is ever
/// used again for another change.
pub(crate) const RESTORE_CURSOR_GAP: u64 = 1 << 32;

/// One entry of a collection's change log: a version this node applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Where this change sits in the node's apply order; resume after it with `since`.
    pub cursor: u64,
    /// The record's key.
    pub key: String,
    /// The version applied.
    pub version: Dot,
    /// Its author (`USER@NODE` or `NODE`), when recorded.
    pub author: Option<String>,
    /// Its hybrid logical clock.
    pub hlc: Hlc,
    /// True for a delete (a tombstone).
    pub deleted: bool,
}

/// A page of changes and the cursor to resume from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangePage {
    /// The changes, in apply order.
    pub changes: Vec<Change>,
    /// Pass as `since` to read on: the last cursor this page covered.
    pub next: u64,
}

/// One change as stored under its cursor.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
struct StoredChange {
    key: String,
    dot: Dot,
    author: Option<String>,
    hlc: Hlc,
    deleted: bool,
}

/// Entries of one collection stored as one row, with their cursors.
type Chunk<'a> = Vec<(u64, &'a StoredChange)>;

/// The change-log entries a group of writes adds, in order; cursors are given at commit.
#[derive(Debug, Default)]
pub(crate) struct ChangeEdits {
    entries: Vec<(String, StoredChange)>,
}

impl ChangeEdits {
    /// Records that `header` (of `coll`/`key`, by `author`) was applied.
    pub(crate) fn push(
        &mut self,
        coll: &str,
        key: &str,
        header: &VersionHeader,
        author: Option<&str>,
    ) {
        self.entries.push((
            coll.to_owned(),
            StoredChange {
                key: key.to_owned(),
                dot: header.dot.clone(),
                author: author.map(str::to_owned),
                hlc: header.hlc,
                deleted: header.value.is_tombstone(),
            },
        ));
    }

    /// How many entries the group adds.
    pub(crate) fn len(&self) -> u64 {
        self.entries.len() as u64
    }

    /// Queues the entries after cursor `last` (but those at or below `floor`, trimmed at once),
    /// in chunks per collection, and the new last cursor; returns it.
    pub(crate) fn write(
        &self,
        last: u64,
        floor: u64,
        batch: &mut WriteBatch,
    ) -> Result<u64, ReplicaError> {
        // Per collection, the open chunk and its estimated bytes.
        let mut open: std::collections::BTreeMap<&str, (Chunk<'_>, usize)> =
            std::collections::BTreeMap::new();
        let put = |batch: &mut WriteBatch, coll: &str, chunk: &[(u64, &StoredChange)]| {
            if let Some((end, _)) = chunk.last() {
                batch.put(keys::change(coll, *end), encode(&chunk.to_vec())?);
            }
            Ok::<(), ReplicaError>(())
        };
        let mut cursor = last;
        for (coll, change) in &self.entries {
            cursor += 1;
            if cursor <= floor {
                continue;
            }
            let (chunk, bytes) = open.entry(coll.as_str()).or_default();
            chunk.push((cursor, change));
            *bytes += change.key.len() + change.author.as_ref().map_or(0, String::len) + 48;
            if *bytes >= CHUNK_BYTES {
                put(batch, coll, chunk)?;
                chunk.clear();
                *bytes = 0;
            }
        }
        for (coll, (chunk, _)) in &open {
            put(batch, coll, chunk)?;
        }
        if cursor != last {
            batch.put(keys::meta(LAST_KEY), cursor.to_be_bytes().to_vec());
        }
        Ok(cursor)
    }
}

/// Metadata key of the last cursor given.
const LAST_KEY: &str = "change_cursor";
/// Metadata key of the log's floor: entries at or below it are gone (or going).
const FLOOR_KEY: &str = "change_floor";

/// The log's persisted position: the last cursor given and the floor below which entries
/// are trimmed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct LogState {
    /// Last cursor given.
    pub last: u64,
    /// Cursors at or below this are no longer served.
    pub floor: u64,
}

fn read_u64(store: &dyn Store, name: &str) -> Result<u64, ReplicaError> {
    match store.get(&keys::meta(name))? {
        None => Ok(0),
        Some(raw) => Ok(u64::from_be_bytes(raw.as_slice().try_into().map_err(
            |_| ReplicaError::Corrupt {
                what: format!("change log {name}"),
                detail: "not 8 bytes".into(),
            },
        )?)),
    }
}

/// The log's state as the store holds it.
pub(crate) fn load_state(store: &dyn Store) -> Result<LogState, ReplicaError> {
    Ok(LogState {
        last: read_u64(store, LAST_KEY)?,
        floor: read_u64(store, FLOOR_KEY)?,
    })
}

/// For a restored copy: skips [`RESTORE_CURSOR_GAP`] cursors and serves nothing older, so a
/// reader that resumes from a cursor of before the restore is told to start over.
pub(crate) fn skip_after_restore(
    store: &dyn Store,
    batch: &mut WriteBatch,
) -> Result<(), ReplicaError> {
    let state = load_state(store)?;
    let next = state.last.saturating_add(RESTORE_CURSOR_GAP);
    batch.put(keys::meta(LAST_KEY), next.to_be_bytes().to_vec());
    batch.put(keys::meta(FLOOR_KEY), next.to_be_bytes().to_vec());
    Ok(())
}

/// One trimming step, run when the last cursor crosses a multiple of [`TRIM_EVERY`]: raises
/// the floor to keep `kept` cursors and removes up to [`TRIM_STEP`] chunks wholly at or below
/// it from each collection (what is left goes in later steps; reads skip it meanwhile).
pub(crate) fn trim(
    store: &dyn Store,
    collections: impl Iterator<Item = String>,
    state: &mut LogState,
    kept: u64,
    batch: &mut WriteBatch,
) -> Result<(), ReplicaError> {
    let floor = state.last.saturating_sub(kept).max(state.floor);
    if floor == 0 {
        return Ok(());
    }
    for coll in collections {
        let start = keys::change_prefix(&coll);
        let end = keys::change(&coll, floor + 1);
        for (k, _) in store.range(&start, Some(&end), TRIM_STEP)? {
            batch.remove(k);
        }
    }
    if floor != state.floor {
        state.floor = floor;
        batch.put(keys::meta(FLOOR_KEY), floor.to_be_bytes().to_vec());
    }
    Ok(())
}

/// Reads the changes of `coll` after `since` up to the durable cursor `durable`, whose key
/// starts with `prefix`: at most `limit` of them and [`CHANGES_MAX_EXAMINED`] entries.
pub(crate) fn read(
    store: &dyn Store,
    coll: &str,
    since: u64,
    prefix: &str,
    limit: usize,
    durable: u64,
) -> Result<ChangePage, ReplicaError> {
    let floor = read_u64(store, FLOOR_KEY)?;
    if since != 0 && since < floor {
        return Err(ReplicaError::CursorExpired {
            collection: coll.to_owned(),
            since,
            oldest: floor,
        });
    }
    let from = since.max(floor);
    let mut page = ChangePage {
        changes: Vec::new(),
        next: from,
    };
    if from >= durable || limit == 0 {
        return Ok(page);
    }
    // A chunk is keyed by its last cursor: the first one at or past `from + 1` holds it.
    let end = keys::change(coll, durable + 1);
    let mut start = keys::change(coll, from + 1);
    let mut examined = 0;
    loop {
        let rows = store.range(&start, Some(&end), READ_ROWS)?;
        let exhausted = rows.len() < READ_ROWS;
        for (k, v) in &rows {
            let at = keys::cursor_of_change_key(k).ok_or_else(|| ReplicaError::Corrupt {
                what: format!("change log of {coll}"),
                detail: "a key without a cursor".into(),
            })?;
            let chunk: Vec<(u64, StoredChange)> =
                codec::decode(v).map_err(|e| ReplicaError::Corrupt {
                    what: format!("changes up to {at} of {coll}"),
                    detail: e.to_string(),
                })?;
            for (cursor, c) in chunk.into_iter().filter(|(cursor, _)| *cursor > from) {
                page.next = cursor;
                examined += 1;
                if c.key.starts_with(prefix) {
                    page.changes.push(Change {
                        cursor,
                        key: c.key,
                        version: c.dot,
                        author: c.author,
                        hlc: c.hlc,
                        deleted: c.deleted,
                    });
                }
                if page.changes.len() == limit || examined >= CHANGES_MAX_EXAMINED {
                    return Ok(page);
                }
            }
        }
        match rows.last() {
            Some((k, _)) if !exhausted => {
                start = k.clone();
                start.push(0);
            }
            // Every entry up to the durable cursor was examined: the page covers it all.
            _ => {
                page.next = durable;
                return Ok(page);
            }
        }
    }
}

/// Publishes the last durable cursor: the writer records each committed group's last cursor,
/// and a sync that covers the group makes it visible to readers.
#[derive(Debug)]
pub(crate) struct CursorCell {
    pending: Mutex<VecDeque<(u64, u64)>>,
    pub(crate) published: tokio::sync::watch::Sender<u64>,
}

impl Default for CursorCell {
    fn default() -> Self {
        Self {
            pending: Mutex::new(VecDeque::new()),
            published: tokio::sync::watch::Sender::new(0),
        }
    }
}

impl CursorCell {
    /// Starts from the cursor the store recovered (all of it durable).
    pub(crate) fn init(&self, last: u64) {
        self.published.send_replace(last);
    }

    /// Records that group `generation` ends at cursor `last`.
    pub(crate) fn committed(&self, generation: u64, last: u64) {
        let mut p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let newest = p.back().map_or(*self.published.borrow(), |b| b.1);
        if last > newest {
            p.push_back((generation, last));
        }
    }

    /// Publishes the last cursor of the groups up to `generation`, now durable.
    pub(crate) fn durable_through(&self, generation: u64) {
        let mut p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let mut last = None;
        while let Some(&(g, c)) = p.front() {
            if g > generation {
                break;
            }
            last = Some(c);
            p.pop_front();
        }
        drop(p);
        if let Some(c) = last {
            self.published.send_if_modified(|cur| {
                let newer = c > *cur;
                if newer {
                    *cur = c;
                }
                newer
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use officesync_protocol::{Version, VersionVector};

    use super::*;
    use crate::replica::{now_ms, CommitMode, Replica, ReplicaOptions};
    use crate::store::{MemoryStore, SledStore};

    fn keys_of(page: &ChangePage) -> Vec<&str> {
        page.changes.iter().map(|c| c.key.as_str()).collect()
    }

    #[tokio::test]
    async fn local_and_received_versions_are_listed_once_in_apply_order() {
        let r = Replica::open(Arc::new(MemoryStore::new()), ReplicaOptions::new("hefei"))
            .expect("open");
        r.write("situation", "a/1", Some(b"x".to_vec()))
            .await
            .expect("write");
        r.write("other", "a/1", Some(b"y".to_vec()))
            .await
            .expect("write");
        r.write("situation", "b/1", Some(b"z".to_vec()))
            .await
            .expect("write");
        let origin = officesync_protocol::ReplicaId::new("wuhu", 7).expect("id");
        let v = Version {
            collection: "situation".into(),
            key: "a/2".into(),
            dot: officesync_protocol::Dot::new(origin, 1),
            hlc: Hlc {
                ms: now_ms(),
                logical: 0,
            },
            context: VersionVector::default(),
            value: None,
            author: Some("wuhu".into()),
            signature: None,
        };
        let first = r
            .apply_remote(vec![v.clone()], Vec::new())
            .await
            .expect("apply");
        assert_eq!(first.applied, 1);
        // The same version again changes nothing, so the log gains nothing.
        let again = r.apply_remote(vec![v], Vec::new()).await.expect("apply");
        assert_eq!(again.applied, 0);
        r.write("situation", "a/1", None).await.expect("delete");

        let all = r.changes("situation", 0, "", 100).await.expect("changes");
        assert_eq!(keys_of(&all), ["a/1", "b/1", "a/2", "a/1"]);
        let cursors: Vec<u64> = all.changes.iter().map(|c| c.cursor).collect();
        // Cursors count across collections: the write to `other` took cursor 2.
        assert_eq!(cursors, [1, 3, 4, 5]);
        assert_eq!(all.next, 5);
        assert!(all.changes[2].deleted && all.changes[3].deleted);
        assert_eq!(all.changes[2].author.as_deref(), Some("wuhu"));

        // A prefix filter, and paging that resumes exactly where a page ended.
        let a = r.changes("situation", 0, "a/", 100).await.expect("prefix");
        assert_eq!(keys_of(&a), ["a/1", "a/2", "a/1"]);
        let p1 = r.changes("situation", 0, "", 2).await.expect("page");
        assert_eq!(keys_of(&p1), ["a/1", "b/1"]);
        let p2 = r.changes("situation", p1.next, "", 2).await.expect("page");
        assert_eq!(keys_of(&p2), ["a/2", "a/1"]);
        let p3 = r.changes("situation", p2.next, "", 2).await.expect("page");
        assert!(p3.changes.is_empty());
        assert_eq!(p3.next, 5);
        let other = r.changes("other", 0, "", 100).await.expect("other");
        assert_eq!(other.changes.len(), 1);
        assert_eq!(other.changes[0].cursor, 2);
    }

    #[tokio::test]
    async fn a_large_group_spans_chunks_and_pages_resume_inside_them() {
        let r = Replica::open(Arc::new(MemoryStore::new()), ReplicaOptions::new("hefei"))
            .expect("open");
        let origin = officesync_protocol::ReplicaId::new("wuhu", 7).expect("id");
        let long = "x".repeat(500);
        let versions: Vec<Version> = (1..=600u64)
            .map(|n| Version {
                collection: "situation".into(),
                key: format!("{}/{long}/{n:04}", if n % 3 == 0 { "a" } else { "b" }),
                dot: officesync_protocol::Dot::new(origin.clone(), n),
                hlc: Hlc {
                    ms: now_ms(),
                    logical: 0,
                },
                context: VersionVector::default(),
                value: Some(vec![1]),
                author: None,
                signature: None,
            })
            .collect();
        let report = r.apply_remote(versions, Vec::new()).await.expect("apply");
        assert_eq!(report.applied, 600);
        // One group of 600 entries of about 550 bytes: about ten chunks.
        let mut seen = Vec::new();
        let mut since = 0;
        loop {
            let page = r.changes("situation", since, "", 7).await.expect("page");
            if page.changes.is_empty() {
                assert_eq!(page.next, 600);
                break;
            }
            seen.extend(page.changes.iter().map(|c| c.cursor));
            since = page.next;
        }
        assert_eq!(seen, (1..=600).collect::<Vec<u64>>());
        let a = r.changes("situation", 0, "a/", 1000).await.expect("prefix");
        assert_eq!(a.changes.len(), 200);
        assert!(a.changes.iter().all(|c| c.cursor % 3 == 0));
    }

    #[tokio::test]
    async fn a_change_is_shown_only_once_durable() {
        let opts = ReplicaOptions {
            commit: CommitMode::Periodic(Duration::from_secs(3600)),
            ..ReplicaOptions::new("hefei")
        };
        let r = Replica::open(Arc::new(MemoryStore::new()), opts).expect("open");
        let mut cursor = r.change_cursor();
        r.write("situation", "k", Some(b"v".to_vec()))
            .await
            .expect("write");
        // Acknowledged but not flushed: a crash could still take its cursor back.
        let page = r.changes("situation", 0, "", 10).await.expect("changes");
        assert!(page.changes.is_empty());
        assert_eq!(*cursor.borrow_and_update(), 0);
        r.sync().await.expect("sync");
        assert!(cursor.has_changed().expect("open"));
        assert_eq!(*cursor.borrow_and_update(), 1);
        let page = r.changes("situation", 0, "", 10).await.expect("changes");
        assert_eq!(keys_of(&page), ["k"]);
    }

    #[tokio::test]
    async fn cursors_survive_a_restart_and_are_never_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let open = || {
            let store = SledStore::open(dir.path()).expect("sled");
            Replica::open(Arc::new(store), ReplicaOptions::new("hefei")).expect("replica")
        };
        let r = open();
        for k in ["a", "b"] {
            r.write("situation", k, Some(b"1".to_vec()))
                .await
                .expect("write");
        }
        let before = r.changes("situation", 0, "", 10).await.expect("changes");
        r.close().await.expect("close");
        drop(r);
        let r = open();
        assert_eq!(*r.change_cursor().borrow(), 2);
        let after = r.changes("situation", 0, "", 10).await.expect("changes");
        assert_eq!(before, after);
        r.write("situation", "c", Some(b"1".to_vec()))
            .await
            .expect("write");
        let on = r
            .changes("situation", after.next, "", 10)
            .await
            .expect("on");
        assert_eq!(keys_of(&on), ["c"]);
        assert_eq!(on.changes[0].cursor, 3);
        r.close().await.expect("close");
        drop(r);

        // A restored copy skips cursors: one seen before the restore is refused, not reused.
        let store = SledStore::open(dir.path()).expect("sled");
        crate::replica::start_new_incarnation(&store, "hefei").expect("new incarnation");
        drop(store);
        let r = open();
        match r.changes("situation", 2, "", 10).await {
            Err(crate::replica::ReplicaError::CursorExpired { since: 2, .. }) => {}
            other => panic!("expected an expired cursor, got {other:?}"),
        }
        r.write("situation", "d", Some(b"1".to_vec()))
            .await
            .expect("write");
        let fresh = r.changes("situation", 0, "", 10).await.expect("from 0");
        assert_eq!(keys_of(&fresh), ["d"]);
        assert_eq!(fresh.changes[0].cursor, 3 + RESTORE_CURSOR_GAP + 1);
        r.close().await.expect("close");
    }

    #[tokio::test]
    async fn the_log_keeps_the_last_cursors_and_expires_older_ones() {
        let opts = ReplicaOptions {
            changes_kept: 100,
            ..ReplicaOptions::new("hefei")
        };
        let store = Arc::new(MemoryStore::new());
        let r = Replica::open(store.clone(), opts).expect("open");
        let total = TRIM_EVERY + 10;
        let mut writes = tokio::task::JoinSet::new();
        for i in 0..total {
            let r = r.clone();
            writes
                .spawn(async move { r.write("situation", &format!("k{i}"), Some(vec![1])).await });
        }
        while let Some(w) = writes.join_next().await {
            w.expect("task").expect("write");
        }
        // The group that crossed cursor TRIM_EVERY raised the floor to keep the last 100
        // cursors and removed what is below it.
        let floor = match r.changes("situation", 1, "", 10).await {
            Err(crate::replica::ReplicaError::CursorExpired { oldest, .. }) => oldest,
            other => panic!("expected an expired cursor, got {other:?}"),
        };
        assert!((TRIM_EVERY - 100..=total - 100).contains(&floor), "{floor}");
        let from_start = r.changes("situation", 0, "", 1).await.expect("from 0");
        assert_eq!(from_start.changes[0].cursor, floor + 1);
        let all = r
            .changes("situation", 0, "", usize::MAX)
            .await
            .expect("all");
        assert_eq!(all.changes.len() as u64, total - floor);
        assert_eq!(all.next, total);
        // Every chunk wholly at or below the floor is gone from the store.
        let prefix = keys::change_prefix("situation");
        let end = crate::store::prefix_end(&prefix);
        let rows = store
            .range(&prefix, end.as_deref(), usize::MAX)
            .expect("range");
        let first = rows
            .first()
            .and_then(|(k, _)| keys::cursor_of_change_key(k));
        assert!(first.is_some_and(|c| c > floor), "{first:?} <= {floor}");
    }
}
