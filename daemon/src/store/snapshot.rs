//! Point-in-time reads of a live store, for online backups: [`Snapshots`] wraps the engine
//! and, while a [`Snapshot`] is open, saves the value every batch is about to overwrite or
//! remove (copy-on-write), so the snapshot reads the store exactly as it was when it began
//! while writes go on.
//!
//! **Why it is consistent.** [`Snapshots::apply`] records the old values of a batch's keys
//! and applies the batch under one lock, and [`Snapshots::begin`] takes the same lock: a
//! snapshot begins between two batches, so it holds every batch applied before (every
//! acknowledged write) and none after. A page read takes the live rows first, then the saved
//! ones: a saved value always wins, and a key saved after the live read was changed after it,
//! so the live read saw the old value. Keys the snapshot has passed are not saved again, and
//! saved values it has passed are dropped, so memory holds only the keys written during the
//! backup that it has not reached yet, within [`MAX_SAVED_BYTES`].

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};

use super::{Rows, Store, StoreError, WriteBatch};

/// Most bytes of old values one snapshot keeps; past it the snapshot fails (the backup stops
/// with an error and can be retried) rather than grow the daemon's memory without bound.
pub const MAX_SAVED_BYTES: usize = 512 << 20;

/// The state shared by the wrapper and its open snapshot.
#[derive(Debug, Default)]
struct Shared {
    /// The open snapshot, if any (one at a time).
    open: Option<Saved>,
    /// Incremented by every begin, so a stale reader never reads another's state.
    epoch: u64,
}

/// The old values saved for the open snapshot.
#[derive(Debug)]
struct Saved {
    epoch: u64,
    /// Keys up to here (inclusive) were read already; `None`: nothing read yet.
    passed: Option<Vec<u8>>,
    /// Key → its value when the snapshot began (`None`: absent then).
    old: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    bytes: usize,
    overflowed: bool,
    /// Every row was read: nothing more is saved.
    finished: bool,
}

impl Saved {
    fn is_passed(&self, key: &[u8]) -> bool {
        self.finished || self.passed.as_deref().is_some_and(|p| key <= p)
    }
}

/// A [`Store`] that can serve point-in-time [`Snapshot`]s of the store it wraps.
#[derive(Clone)]
pub struct Snapshots {
    inner: Arc<dyn Store>,
    shared: Arc<Mutex<Shared>>,
}

impl std::fmt::Debug for Snapshots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshots").finish_non_exhaustive()
    }
}

/// Why a snapshot could not be taken or read.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SnapshotError {
    /// Another snapshot (backup) is open.
    #[error("another backup is running; try again when it has finished")]
    Busy,
    /// The writes made during the snapshot saved more than [`MAX_SAVED_BYTES`].
    #[error("the writes made during the backup changed more than {MAX_SAVED_BYTES} bytes it had not copied yet; retry at a quieter time")]
    Overflow,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Snapshots {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Store>) -> Snapshots {
        Snapshots {
            inner,
            shared: Arc::new(Mutex::new(Shared::default())),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Begins a snapshot: it reads the store as it is now, between two batches.
    pub fn begin(&self) -> Result<Snapshot, SnapshotError> {
        let mut shared = self.lock();
        if shared.open.is_some() {
            return Err(SnapshotError::Busy);
        }
        shared.epoch += 1;
        let epoch = shared.epoch;
        shared.open = Some(Saved {
            epoch,
            passed: None,
            old: BTreeMap::new(),
            bytes: 0,
            overflowed: false,
            finished: false,
        });
        Ok(Snapshot {
            source: self.clone(),
            epoch,
            done: false,
        })
    }
}

impl Store for Snapshots {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(key)
    }
    fn range(&self, start: &[u8], end: Option<&[u8]>, limit: usize) -> Result<Rows, StoreError> {
        self.inner.range(start, end, limit)
    }
    fn apply(&self, batch: WriteBatch) -> Result<(), StoreError> {
        let mut shared = self.lock();
        if let Some(saved) = shared.open.as_mut() {
            if !saved.overflowed {
                for (key, _) in &batch.ops {
                    if saved.is_passed(key) || saved.old.contains_key(key) {
                        continue;
                    }
                    let value = self.inner.get(key)?;
                    saved.bytes += key.len() + value.as_ref().map_or(0, Vec::len);
                    saved.old.insert(key.clone(), value);
                    if saved.bytes > MAX_SAVED_BYTES {
                        saved.overflowed = true;
                        saved.old.clear();
                        break;
                    }
                }
            }
        }
        // Under the lock: no snapshot begins, and no page reads the saved values, halfway.
        self.inner.apply(batch)
    }
    fn sync(&self) -> Result<(), StoreError> {
        self.inner.sync()
    }
    fn size_on_disk(&self) -> u64 {
        self.inner.size_on_disk()
    }
    fn mark_durable(&self, generation: u64) -> Result<(), StoreError> {
        self.inner.mark_durable(generation)
    }
    fn durable_mark(&self) -> Option<u64> {
        self.inner.durable_mark()
    }
    fn unsynced_blob_files(&self) -> u64 {
        self.inner.unsynced_blob_files()
    }
}

/// An open point-in-time view, read in key order a page at a time; closed when dropped.
#[derive(Debug)]
pub struct Snapshot {
    source: Snapshots,
    epoch: u64,
    done: bool,
}

impl Snapshot {
    /// The next rows (at most about `limit`) in key order, as they were when the snapshot
    /// began; empty once every row was read.
    pub fn next_page(&mut self, limit: usize) -> Result<Rows, SnapshotError> {
        // A page of live rows may hold only keys made after the snapshot began: go on.
        loop {
            let rows = self.read_page(limit)?;
            if !rows.is_empty() || self.done {
                return Ok(rows);
            }
        }
    }

    fn read_page(&mut self, limit: usize) -> Result<Rows, SnapshotError> {
        if self.done {
            return Ok(Vec::new());
        }
        let limit = limit.max(1);
        let passed = self.with_saved(|s| Ok(s.passed.clone()))?;
        let start = match &passed {
            None => Vec::new(),
            Some(p) => {
                let mut next = p.clone();
                next.push(0);
                next
            }
        };
        // Live rows first, then the saved values (see the module's doc for why).
        let live = self.source.inner.range(&start, None, limit)?;
        let bound = if live.len() >= limit {
            live.last().map(|(k, _)| k.clone())
        } else {
            None
        };
        let rows = self.with_saved(|saved| {
            let upper = match &bound {
                Some(b) => Bound::Included(b.clone()),
                None => Bound::Unbounded,
            };
            let lower = match &passed {
                Some(p) => Bound::Excluded(p.clone()),
                None => Bound::Unbounded,
            };
            let old: Vec<(Vec<u8>, Option<Vec<u8>>)> = saved
                .old
                .range((lower, upper))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let mut merged: BTreeMap<Vec<u8>, Option<Vec<u8>>> =
                live.into_iter().map(|(k, v)| (k, Some(v))).collect();
            for (k, v) in old {
                merged.insert(k, v);
            }
            match &bound {
                Some(b) => {
                    saved.passed = Some(b.clone());
                    // What the snapshot passed is never read again.
                    let rest = saved.old.split_off(&{
                        let mut after = b.clone();
                        after.push(0);
                        after
                    });
                    let dropped: usize = saved
                        .old
                        .iter()
                        .map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len))
                        .sum();
                    saved.bytes = saved.bytes.saturating_sub(dropped);
                    saved.old = rest;
                }
                None => {
                    saved.finished = true;
                    saved.old.clear();
                    saved.bytes = 0;
                }
            }
            Ok(merged
                .into_iter()
                .filter_map(|(k, v)| v.map(|v| (k, v)))
                .collect::<Rows>())
        })?;
        if bound.is_none() {
            self.done = true;
        }
        Ok(rows)
    }

    fn with_saved<T>(
        &self,
        f: impl FnOnce(&mut Saved) -> Result<T, SnapshotError>,
    ) -> Result<T, SnapshotError> {
        let mut shared = self.source.lock();
        match shared.open.as_mut() {
            Some(saved) if saved.epoch == self.epoch => {
                if saved.overflowed {
                    return Err(SnapshotError::Overflow);
                }
                f(saved)
            }
            _ => Err(SnapshotError::Busy),
        }
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        let mut shared = self.source.lock();
        if shared.open.as_ref().is_some_and(|s| s.epoch == self.epoch) {
            shared.open = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    fn put(store: &Snapshots, pairs: &[(&str, Option<&str>)]) {
        let mut b = WriteBatch::default();
        for (k, v) in pairs {
            match v {
                Some(v) => b.put(k.as_bytes().to_vec(), v.as_bytes().to_vec()),
                None => b.remove(k.as_bytes().to_vec()),
            }
        }
        store.apply(b).expect("apply");
    }

    fn read_all(snap: &mut Snapshot, page: usize) -> Vec<(String, String)> {
        let mut out = Vec::new();
        loop {
            let rows = snap.next_page(page).expect("page");
            if rows.is_empty() {
                return out;
            }
            for (k, v) in rows {
                out.push((
                    String::from_utf8(k).expect("utf8"),
                    String::from_utf8(v).expect("utf8"),
                ));
            }
        }
    }

    #[test]
    fn a_snapshot_reads_the_store_as_it_began_while_writes_go_on() {
        let store = Snapshots::new(Arc::new(MemoryStore::new()));
        let keys: Vec<String> = (0..50).map(|i| format!("k{i:03}")).collect();
        for k in &keys {
            put(&store, &[(k, Some("old"))]);
        }
        let mut snap = store.begin().expect("begin");
        assert!(matches!(store.begin(), Err(SnapshotError::Busy)));
        let mut out = Vec::new();
        let mut round = 0;
        loop {
            // Between pages: overwrite, remove and add keys both ahead and behind.
            round += 1;
            put(
                &store,
                &[
                    (&format!("k{:03}", (round * 7) % 50), Some("new")),
                    (&format!("k{:03}", (round * 13) % 50), None),
                    (&format!("k{:03}x", round % 50), Some("added")),
                ],
            );
            let rows = snap.next_page(3).expect("page");
            if rows.is_empty() {
                break;
            }
            out.extend(rows);
        }
        let got: Vec<(String, String)> = out
            .into_iter()
            .map(|(k, v)| {
                (
                    String::from_utf8(k).expect("utf8"),
                    String::from_utf8(v).expect("utf8"),
                )
            })
            .collect();
        let want: Vec<(String, String)> =
            keys.iter().map(|k| (k.clone(), "old".to_owned())).collect();
        assert_eq!(got, want);
        drop(snap);
        // Closed: the next backup may begin, and sees the writes.
        let mut again = store.begin().expect("begin again");
        let now = read_all(&mut again, 10);
        assert!(now.iter().any(|(_, v)| v == "added"));
        assert!(now.iter().any(|(_, v)| v == "new"));
    }

    #[test]
    fn keys_made_after_the_snapshot_began_never_end_it_early() {
        let store = Snapshots::new(Arc::new(MemoryStore::new()));
        put(&store, &[("a", Some("1")), ("z", Some("2"))]);
        let mut snap = store.begin().expect("begin");
        for i in 0..20 {
            put(&store, &[(&format!("m{i:02}"), Some("new"))]);
        }
        let got = read_all(&mut snap, 3);
        assert_eq!(
            got,
            vec![
                ("a".to_owned(), "1".to_owned()),
                ("z".to_owned(), "2".to_owned())
            ]
        );
    }

    #[test]
    fn an_empty_store_gives_an_empty_snapshot() {
        let store = Snapshots::new(Arc::new(MemoryStore::new()));
        let mut snap = store.begin().expect("begin");
        put(&store, &[("a", Some("1"))]);
        assert!(read_all(&mut snap, 5).is_empty());
    }
}
