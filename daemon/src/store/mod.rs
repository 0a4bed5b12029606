//! The storage seam: an ordered key-value store with atomic batches and a durable sync.
//! sled is one implementation ([`SledStore`]); [`MemoryStore`] serves tests; [`SealedStore`]
//! wraps either to encrypt every value at rest. Everything above this trait (the replica's
//! record layout, merge and digests) is engine-independent.

mod gate;
mod memory;
pub mod sealed;
mod sled;
pub mod snapshot;

pub use self::memory::MemoryStore;
pub use self::sealed::{Keyring, SealError, SealedStore};
pub use self::sled::{SledStore, MARK_FILE, SLED_DIR};
pub use self::snapshot::{Snapshot, SnapshotError, Snapshots};

use std::sync::Arc;

use thiserror::Error;

/// Errors from a store.
#[derive(Debug, Clone, Error)]
pub enum StoreError {
    /// Another process holds the data directory.
    #[error("data dir {0} is in use by another officesyncd (lock held on its LOCK file); stop that process or use another data_dir")]
    Locked(String),
    /// The store is damaged; it is never reopened empty over it.
    #[error("store at {path} is corrupt: {detail}; officesyncd will not start over it (restore the data dir from a backup, or move it aside so the node rejoins as a new incarnation)")]
    Corrupt {
        /// The store's path.
        path: String,
        /// What was found.
        detail: String,
    },
    /// An I/O error from the engine or the filesystem.
    #[error("store I/O error: {0}")]
    Io(String),
}

/// One atomic group of inserts and removals.
#[derive(Debug, Default, Clone)]
pub struct WriteBatch {
    /// `(key, Some(value))` inserts, `(key, None)` removes, applied in order.
    pub ops: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

impl WriteBatch {
    /// Queues an insert.
    pub fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.ops.push((key, Some(value)));
    }

    /// Queues a removal.
    pub fn remove(&mut self, key: Vec<u8>) {
        self.ops.push((key, None));
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// Key-value pairs returned by [`Store::range`].
pub type Rows = Vec<(Vec<u8>, Vec<u8>)>;

/// An ordered byte-key store. Implementations are synchronous and thread-safe; callers keep
/// them off async worker threads, but for a point read of a few keys (microseconds).
pub trait Store: Send + Sync + 'static {
    /// Reads one key.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Up to `limit` entries with `start <= key < end` (no end: to the last key), in key order.
    fn range(&self, start: &[u8], end: Option<&[u8]>, limit: usize) -> Result<Rows, StoreError>;
    /// Applies a batch atomically: after a crash either all of it or none of it is visible.
    fn apply(&self, batch: WriteBatch) -> Result<(), StoreError>;
    /// Makes everything applied so far durable on disk.
    fn sync(&self) -> Result<(), StoreError>;
    /// Bytes the store occupies on disk (0 in memory).
    fn size_on_disk(&self) -> u64;
    /// Records that every change up to `generation` is durable; called after each successful
    /// [`Store::sync`]. Kept outside the engine so that an engine that silently loses the end
    /// of its log on open is caught (see [`Store::durable_mark`]). Default: not kept.
    fn mark_durable(&self, _generation: u64) -> Result<(), StoreError> {
        Ok(())
    }
    /// The highest generation recorded durable before this open, when the store keeps one.
    fn durable_mark(&self) -> Option<u64> {
        None
    }
    /// Files the engine keeps outside its fsynced log (sled blobs); must stay 0.
    fn unsynced_blob_files(&self) -> u64 {
        0
    }
}

/// A shared store is a store (so a [`SealedStore`] can wrap an `Arc<dyn Store>`).
impl<T: Store + ?Sized> Store for Arc<T> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        (**self).get(key)
    }
    fn range(&self, start: &[u8], end: Option<&[u8]>, limit: usize) -> Result<Rows, StoreError> {
        (**self).range(start, end, limit)
    }
    fn apply(&self, batch: WriteBatch) -> Result<(), StoreError> {
        (**self).apply(batch)
    }
    fn sync(&self) -> Result<(), StoreError> {
        (**self).sync()
    }
    fn size_on_disk(&self) -> u64 {
        (**self).size_on_disk()
    }
    fn mark_durable(&self, generation: u64) -> Result<(), StoreError> {
        (**self).mark_durable(generation)
    }
    fn durable_mark(&self) -> Option<u64> {
        (**self).durable_mark()
    }
    fn unsynced_blob_files(&self) -> u64 {
        (**self).unsynced_blob_files()
    }
}

/// The smallest key strictly greater than every key starting with `prefix` (None: no bound).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
pub(crate) mod contract {
    //! One test body run against every implementation.
    use super::*;

    /// The common contract: batches, removals, reads and bounded ranges.
    pub fn exercise(store: &dyn Store) {
        let mut b = WriteBatch::default();
        b.put(b"a/1".to_vec(), b"one".to_vec());
        b.put(b"a/2".to_vec(), b"two".to_vec());
        b.put(b"b/1".to_vec(), b"three".to_vec());
        b.remove(b"a/2".to_vec());
        store.apply(b).expect("apply");
        store.sync().expect("sync");
        assert_eq!(store.get(b"a/1").expect("get"), Some(b"one".to_vec()));
        assert_eq!(store.get(b"a/2").expect("get"), None);
        let end = prefix_end(b"a/");
        let rows = store.range(b"a/", end.as_deref(), 10).expect("range");
        assert_eq!(rows, vec![(b"a/1".to_vec(), b"one".to_vec())]);
        let all = store.range(b"", None, 10).expect("range");
        assert_eq!(all.len(), 2);
        assert_eq!(store.range(b"", None, 1).expect("range").len(), 1);
        assert_eq!(store.unsynced_blob_files(), 0);
    }

    #[test]
    fn prefix_end_bounds() {
        assert_eq!(prefix_end(b"a"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
    }
}
