//! Per-key history: the versions of a key this node held and that were superseded here
//! (values and tombstones, each with its dot, HLC, author and signature), kept under the `H`
//! prefix, at most `[storage] history` per key, the oldest trimmed first.
//!
//! History is what this node holds: a version superseded at another office before this node
//! received it never reaches this node, so it is in no history here.
//!
//! **Cost.** The writer adds to a key's history only when a version supersedes another: a
//! write of a new key, or a catch-up of versions this node never held, changes nothing here.
//! A superseding write costs one more read and write of the key's history record, in the
//! same atomic batch as the write itself.
//!
//! **Size.** One record a key holds its whole history (oldest first). A small value lives
//! inside it as in a sibling record; a large value keeps its chunks (`V`, written when it
//! was current), which are deleted only when the version is trimmed from the history. The
//! record never exceeds [`MAX_RECORD_BYTES`]: past it the oldest versions are trimmed even
//! when fewer than `history` are kept (only versions with very large causal contexts or
//! authors come near it: a small value is at most [`INLINE_VALUE_MAX`](super::INLINE_VALUE_MAX)).

use std::collections::HashMap;

use officesync_protocol::codec;

use super::encoding::{decode_siblings, encode, Body, StoredSibling};
use super::keys;
use super::read::{load_value, sibling_read, stored};
use super::writer::MAX_RECORD_BYTES;
use super::{ReplicaError, SiblingRead};
use crate::store::{Store, WriteBatch};

/// Default `[storage] history`: superseded versions kept per key.
pub const DEFAULT_HISTORY: usize = crate::config::DEFAULT_HISTORY;
/// Largest `[storage] history`.
pub const MAX_HISTORY: usize = crate::config::MAX_HISTORY;
/// Most versions one history read lists (current siblings and superseded ones).
pub const MAX_HISTORY_READ: usize = MAX_HISTORY + super::writer::MAX_SIBLINGS;

/// One version of a key as listed by a history read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    /// The version (its value loaded within the read's budget).
    pub version: SiblingRead,
    /// False for a current sibling, true for a version superseded here.
    pub superseded: bool,
}

/// A key's versions, newest first: the current siblings and the superseded versions this node
/// kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryRead {
    /// The key.
    pub key: String,
    /// Newest first (highest HLC, ties by origin), at most the limit asked.
    pub versions: Vec<HistoryEntry>,
}

/// The superseded versions of one group of writes, per key in the order they were
/// superseded, added to the keys' history records when the group commits.
#[derive(Default)]
pub(crate) struct HistoryEdits {
    /// Versions kept per key (`[storage] history`); 0: none, chunks deleted at once.
    keep: usize,
    pending: HashMap<(String, String), Vec<StoredSibling>>,
}

impl HistoryEdits {
    /// Edits keeping `keep` versions per key.
    pub(crate) fn new(keep: usize) -> Self {
        Self {
            keep,
            pending: HashMap::new(),
        }
    }

    /// `old`, a version of `coll`/`key`, was superseded: into the history, or (history off)
    /// its chunks go.
    pub(crate) fn supersede(
        &mut self,
        coll: &str,
        key: &str,
        old: StoredSibling,
        batch: &mut WriteBatch,
    ) {
        if self.keep == 0 {
            delete_chunks(coll, &old, batch);
            return;
        }
        self.pending
            .entry((coll.to_owned(), key.to_owned()))
            .or_default()
            .push(old);
    }

    /// Versions of the group still without a signature (signed at commit): gives each the
    /// signature `signature_of` finds for its collection, key and dot.
    pub(crate) fn sign(
        &mut self,
        signature_of: impl Fn(&str, &str, &officesync_protocol::Dot) -> Option<Vec<u8>>,
    ) {
        for ((coll, key), versions) in self.pending.iter_mut() {
            for v in versions.iter_mut().filter(|v| v.signature.is_none()) {
                v.signature = signature_of(coll, key, &v.header.dot);
            }
        }
    }

    /// Adds the pending versions to each key's history record in `batch`, trimming the
    /// oldest past `keep` versions or [`MAX_RECORD_BYTES`] (their chunks deleted too).
    pub(crate) fn write(
        &mut self,
        store: &dyn Store,
        batch: &mut WriteBatch,
    ) -> Result<(), ReplicaError> {
        for ((coll, key), added) in self.pending.drain() {
            let record = keys::history(&coll, &key);
            let mut kept = match store.get(&record)? {
                None => Vec::new(),
                Some(raw) => decode_siblings(&raw, &format!("history of {coll}/{key}"))?,
            };
            kept.extend(added);
            let sizes: Vec<usize> = kept
                .iter()
                .map(|s| codec::encoded_len(s).unwrap_or(usize::MAX))
                .collect();
            let mut total = sizes.iter().fold(16usize, |a, b| a.saturating_add(*b));
            let mut drop = 0;
            while drop < kept.len() && (kept.len() - drop > self.keep || total > MAX_RECORD_BYTES) {
                total = total.saturating_sub(sizes[drop]);
                drop += 1;
            }
            for old in kept.drain(..drop) {
                delete_chunks(&coll, &old, batch);
            }
            if kept.is_empty() {
                batch.remove(record);
            } else {
                batch.put(record, encode(&kept)?);
            }
        }
        Ok(())
    }
}

fn delete_chunks(coll: &str, old: &StoredSibling, batch: &mut WriteBatch) {
    if let Body::Chunked { chunks } = old.body {
        for i in 0..chunks {
            batch.remove(keys::chunk(coll, &old.header.dot, i));
        }
    }
}

/// The superseded versions of `key` this node keeps, oldest first.
pub(crate) fn superseded(
    store: &dyn Store,
    coll: &str,
    key: &str,
) -> Result<Vec<StoredSibling>, ReplicaError> {
    match store.get(&keys::history(coll, key))? {
        None => Ok(Vec::new()),
        Some(raw) => decode_siblings(&raw, &format!("history of {coll}/{key}")),
    }
}

/// Up to `limit` versions of `key`, newest first: its current siblings and the superseded
/// versions kept here, values loaded in that order while their total stays within
/// `max_bytes` (later ones listed without their value); `None` when the key was never
/// written here.
pub(crate) fn history(
    store: &dyn Store,
    coll: &str,
    key: &str,
    limit: usize,
    max_bytes: usize,
) -> Result<Option<HistoryRead>, ReplicaError> {
    let current = stored(store, coll, key)?;
    let old = superseded(store, coll, key)?;
    if current.is_none() && old.is_empty() {
        return Ok(None);
    }
    let mut all: Vec<(StoredSibling, bool)> = current
        .unwrap_or_default()
        .into_iter()
        .map(|s| (s, false))
        .chain(old.into_iter().map(|s| (s, true)))
        .collect();
    // Newest first, with the winner's order (HLC, then origin).
    all.sort_by(|(a, _), (b, _)| {
        (b.header.hlc, &b.header.dot.origin).cmp(&(a.header.hlc, &a.header.dot.origin))
    });
    all.truncate(limit);
    let mut used: u64 = 0;
    let mut full = false;
    let mut versions = Vec::with_capacity(all.len());
    for (s, superseded) in all {
        let mut read = sibling_read(&s);
        if let Some(n) = read.len {
            full = full || used.saturating_add(n) > max_bytes as u64;
            if !full {
                used += n;
                read.value = load_value(store, coll, &s)?;
            }
        }
        versions.push(HistoryEntry {
            version: read,
            superseded,
        });
    }
    Ok(Some(HistoryRead {
        key: key.to_owned(),
        versions,
    }))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::{Replica, ReplicaOptions};
    use super::*;
    use crate::store::{prefix_end, MemoryStore};

    fn replica(history: usize) -> Replica {
        let mut opts = ReplicaOptions::new("hefei");
        opts.history = history;
        Replica::open(Arc::new(MemoryStore::new()), opts).expect("open")
    }

    /// Store rows whose key starts with `tag`.
    fn rows(r: &Replica, tag: u8) -> usize {
        let prefix = [tag];
        let end = prefix_end(&prefix);
        r.store()
            .range(&prefix, end.as_deref(), usize::MAX)
            .expect("range")
            .len()
    }

    async fn read(r: &Replica, key: &str, limit: usize) -> HistoryRead {
        r.history("situation", key, limit, 8 << 20)
            .await
            .expect("history")
            .expect("written")
    }

    fn values(h: &HistoryRead) -> Vec<(Option<&[u8]>, bool)> {
        h.versions
            .iter()
            .map(|e| (e.version.value.as_deref(), e.superseded))
            .collect()
    }

    #[tokio::test]
    async fn superseded_values_and_tombstones_are_kept_newest_first_with_author_and_hlc() {
        let r = replica(10);
        let a = r
            .write_as("situation", "k", Some(b"1".to_vec()), "li@hefei".into())
            .await
            .expect("write");
        r.write_as("situation", "k", None, "wang@hefei".into())
            .await
            .expect("delete");
        let c = r
            .write_as("situation", "k", Some(b"3".to_vec()), "li@hefei".into())
            .await
            .expect("write");
        let h = read(&r, "k", 10).await;
        assert_eq!(
            values(&h),
            vec![
                (Some(&b"3"[..]), false),
                (None, true),
                (Some(&b"1"[..]), true)
            ]
        );
        let first = &h.versions[2].version;
        assert_eq!((first.dot.clone(), first.hlc), (a.dot, a.hlc));
        assert_eq!(first.author.as_deref(), Some("li@hefei"));
        assert!(h.versions[1].version.is_deleted());
        assert_eq!(h.versions[1].version.author.as_deref(), Some("wang@hefei"));
        assert_eq!(h.versions[0].version.dot, c.dot);
        // The limit counts every version listed, newest first.
        assert_eq!(read(&r, "k", 2).await.versions.len(), 2);
        // History changes nothing the replica reports of the key.
        let rec = r.get("situation", "k").await.expect("get").expect("held");
        assert_eq!(rec.siblings.len(), 1);
        assert!(r
            .history("situation", "never", 10, 1 << 20)
            .await
            .expect("read")
            .is_none());
    }

    #[tokio::test]
    async fn the_oldest_are_trimmed_past_the_limit_and_zero_keeps_none() {
        let r = replica(3);
        for i in 0..6u8 {
            r.write("situation", "k", Some(vec![i]))
                .await
                .expect("write");
        }
        let h = read(&r, "k", 100).await;
        let got: Vec<_> = h.versions.iter().map(|e| e.version.value.clone()).collect();
        assert_eq!(
            got,
            vec![Some(vec![5]), Some(vec![4]), Some(vec![3]), Some(vec![2])]
        );

        let off = replica(0);
        for i in 0..3u8 {
            off.write("situation", "k", Some(vec![i]))
                .await
                .expect("write");
        }
        assert_eq!(read(&off, "k", 100).await.versions.len(), 1);
        assert_eq!(rows(&off, keys::HISTORY), 0);
    }

    #[tokio::test]
    async fn writes_that_supersede_nothing_write_no_history() {
        let r = replica(10);
        for i in 0..50 {
            r.write("situation", &format!("k{i}"), Some(b"v".to_vec()))
                .await
                .expect("write");
        }
        assert_eq!(rows(&r, keys::HISTORY), 0);
        r.write("situation", "k0", Some(b"w".to_vec()))
            .await
            .expect("overwrite");
        assert_eq!(rows(&r, keys::HISTORY), 1);
    }

    #[tokio::test]
    async fn large_values_keep_their_chunks_while_in_history_and_lose_them_when_trimmed() {
        let big = |b: u8| vec![b; 3 * super::super::CHUNK_SIZE + 5];
        let r = replica(2);
        for i in 0..4u8 {
            r.write("situation", "big", Some(big(i)))
                .await
                .expect("write");
        }
        let h = read(&r, "big", 10).await;
        let got: Vec<_> = h.versions.iter().map(|e| e.version.value.clone()).collect();
        assert_eq!(got, vec![Some(big(3)), Some(big(2)), Some(big(1))]);
        // Four chunks a value: the current one and the two kept; the oldest's chunks are gone.
        assert_eq!(rows(&r, keys::CHUNK), 3 * 4);
        // The value budget leaves the later values out, listed with their length.
        let h = r
            .history("situation", "big", 10, big(0).len())
            .await
            .expect("read")
            .expect("held");
        assert!(h.versions[0].version.value.is_some());
        assert!(h.versions[1].version.is_omitted());

        let off = replica(0);
        for i in 0..3u8 {
            off.write("situation", "big", Some(big(i)))
                .await
                .expect("write");
        }
        assert_eq!(rows(&off, keys::CHUNK), 4);
    }

    #[tokio::test]
    async fn concurrent_siblings_superseded_by_one_write_all_go_into_history() {
        use officesync_protocol::{Dot, Hlc, ReplicaId, Version, VersionVector};
        let r = replica(10);
        let other = ReplicaId::new("beijing", 7).expect("id");
        r.write("situation", "k", Some(b"here".to_vec()))
            .await
            .expect("write");
        let now = super::super::now_ms();
        let theirs = Version {
            collection: "situation".into(),
            key: "k".into(),
            dot: Dot::new(other.clone(), 1),
            hlc: Hlc {
                ms: now,
                logical: 0,
            },
            context: VersionVector::new(),
            value: Some(b"there".to_vec()),
            author: Some("zhao@beijing".into()),
            signature: None,
        };
        r.apply_remote(vec![theirs], vec![("situation".into(), other, 1)])
            .await
            .expect("apply");
        assert_eq!(read(&r, "k", 10).await.versions.len(), 2);
        r.write("situation", "k", Some(b"both".to_vec()))
            .await
            .expect("resolve");
        let h = read(&r, "k", 10).await;
        assert_eq!(h.versions.len(), 3);
        assert_eq!(h.versions.iter().filter(|e| e.superseded).count(), 2);
        assert!(h
            .versions
            .iter()
            .any(|e| e.version.author.as_deref() == Some("zhao@beijing")));
    }

    #[tokio::test]
    async fn versions_superseded_within_their_own_group_are_kept_signed() {
        use crate::pki::KeyType;
        use crate::signing::tests::Pki;

        let pki = Pki::new();
        let mut opts = ReplicaOptions::new("hefei");
        opts.signer = Some(Arc::new(pki.signer("hefei", KeyType::Ed25519)));
        opts.history = 100;
        opts.commit = super::super::CommitMode::Periodic(std::time::Duration::from_secs(3600));
        let r = Replica::open(Arc::new(MemoryStore::new()), opts).expect("open");
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..64u32 {
            let r = r.clone();
            tasks.spawn(async move {
                r.write(
                    "situation",
                    &format!("k{}", i % 4),
                    Some(i.to_be_bytes().to_vec()),
                )
                .await
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.expect("task").expect("write");
        }
        let mut kept = 0;
        for k in 0..4 {
            let old = superseded(r.store().as_ref(), "situation", &format!("k{k}")).expect("read");
            kept += old.len();
            assert!(
                old.iter().all(|s| s.signature.is_some()),
                "an unsigned version in history"
            );
        }
        assert_eq!(kept, 60);
    }
}
