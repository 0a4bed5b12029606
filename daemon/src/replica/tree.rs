//! The hash tree of each collection's key space ([`officesync_protocol::tree`]) as the store
//! keeps it: one row per non-empty leaf holding its digest (the XOR of its current versions'
//! digests, kept by the writer in the same batch as the records and the collection digest),
//! and a leaf index (one row per non-empty leaf listing its keys), so that a repair reads only
//! the differing leaves. A row per leaf rather than per key keeps the store's item count, and
//! sled's memory, close to the records' own.
//!
//! Inner nodes are folded from the leaf rows on demand (a level-1 request reads at most
//! [`LEAVES`] rows of 32 bytes). Stores from before the tree get it built when the replica
//! opens, from a scan of every record; a record that cannot be read, or a tree that does not
//! fold to the collection digest, refuses the open (it is never started with an empty tree).

use std::collections::{BTreeMap, HashMap};

use officesync_protocol::tree::{self, LEAVES};
use officesync_protocol::{Digest, Dot, ValueMeta, Version};

use super::encoding::decode_siblings;
use super::keys;
use super::read::load_value;
use super::tree_build::{Builds, Region};
use super::ReplicaError;
use crate::store::{prefix_end, Store, WriteBatch};

/// Rows read per store range call.
const SCAN_BATCH: usize = 1024;

/// The marker row of a store whose trees are built (its value: the tree format).
const TREE_MARK: &str = "tree";

/// The tree format this build keeps: [`tree::LEAF_BITS`] bits of SHA-256 of the key, and a
/// leaf index of one row per leaf (format 1 had one row per key; it is rebuilt at open).
const TREE_FORMAT: u8 = 2;

/// Rows removed or written per batch while building the tree of an existing store.
const BUILD_BATCH: usize = 4096;

/// A leaf's keys as its leaf-index row holds them: each key's length (2 bytes, big-endian)
/// and bytes, in key order.
pub(crate) fn encode_keys<'k>(keys: impl IntoIterator<Item = &'k str>) -> Vec<u8> {
    let mut out = Vec::new();
    for k in keys {
        out.extend_from_slice(&(k.len() as u16).to_be_bytes());
        out.extend_from_slice(k.as_bytes());
    }
    out
}

/// The keys of a leaf-index row ([`encode_keys`]).
pub(crate) fn decode_keys(raw: &[u8], coll: &str, leaf: u32) -> Result<Vec<String>, ReplicaError> {
    let corrupt = |detail: &str| ReplicaError::Corrupt {
        what: format!("{coll} leaf index {leaf}"),
        detail: detail.to_owned(),
    };
    let mut keys = Vec::new();
    let mut rest = raw;
    while !rest.is_empty() {
        let (len, tail) = rest
            .split_at_checked(2)
            .ok_or_else(|| corrupt("a cut length"))?;
        let len = u16::from_be_bytes([len[0], len[1]]) as usize;
        let (key, tail) = tail
            .split_at_checked(len)
            .ok_or_else(|| corrupt("a cut key"))?;
        let key = std::str::from_utf8(key).map_err(|_| corrupt("a key that is not UTF-8"))?;
        keys.push(key.to_owned());
        rest = tail;
    }
    Ok(keys)
}

/// The tree changes of one group of writes: per `(collection, leaf)` the digest to XOR into
/// the leaf's row, and the keys that join or leave the leaf's leaf-index row. Collections
/// whose trees are being built route their changes through `builds` ([`super::tree_build`]).
#[derive(Default)]
pub(crate) struct TreeEdits {
    leaves: HashMap<(String, u32), Digest>,
    /// Per `(collection, leaf)`, keys that join (`true`) or leave it, in order.
    keys: HashMap<(String, u32), Vec<(String, bool)>>,
    /// The builds under way, moved here by the writer for the group.
    pub(crate) builds: Builds,
}

impl TreeEdits {
    /// Edits routed through `builds`.
    pub(crate) fn with(builds: Builds) -> Self {
        Self {
            builds,
            ..Self::default()
        }
    }

    /// Version `(key, dot, value)` of `coll` enters or leaves the collection's current set.
    pub(crate) fn toggle(&mut self, coll: &str, key: &str, dot: &Dot, value: &ValueMeta) -> Digest {
        let e = Digest::element(key, dot, value);
        let leaf = tree::leaf_of(key);
        match self.builds.region(coll, leaf, key) {
            Region::Kept => self
                .leaves
                .entry((coll.to_owned(), leaf))
                .or_default()
                .xor(&e),
            Region::Pass(pass) => pass.toggle(leaf, &e),
            Region::Later => {}
        }
        e
    }

    /// `key` gets its first version in `coll`: it joins its leaf's row.
    pub(crate) fn new_key(&mut self, coll: &str, key: &str) {
        self.key_change(coll, key, true);
    }

    /// `key` leaves `coll` (its last version is forgotten): it leaves its leaf's row.
    pub(crate) fn drop_key(&mut self, coll: &str, key: &str) {
        self.key_change(coll, key, false);
    }

    fn key_change(&mut self, coll: &str, key: &str, joins: bool) {
        let leaf = tree::leaf_of(key);
        match self.builds.region(coll, leaf, key) {
            Region::Pass(pass) if !pass.wrote(leaf) => pass.key_change(leaf, key, joins),
            Region::Later => {}
            _ => self
                .keys
                .entry((coll.to_owned(), leaf))
                .or_default()
                .push((key.to_owned(), joins)),
        }
    }

    /// Queues the changed leaf rows into `batch` (read from `cache` or `store`, XOR-ed,
    /// written; a leaf back at zero loses its row). `cache` then holds what the batch writes:
    /// the caller clears it if the batch is not applied.
    pub(crate) fn write(
        &mut self,
        store: &dyn Store,
        cache: &mut LeafCache,
        batch: &mut WriteBatch,
    ) -> Result<(), ReplicaError> {
        if cache.leaves.len() + self.leaves.len() > CACHED_LEAVES {
            cache.leaves.clear();
        }
        for ((coll, leaf), delta) in self.leaves.drain() {
            if delta.is_zero() {
                continue;
            }
            let k = keys::tree_leaf(&coll, leaf);
            let slot = (coll, leaf);
            let mut d = match cache.leaves.get(&slot) {
                Some(d) => *d,
                None => match store.get(&k)? {
                    None => Digest::default(),
                    Some(raw) => decode_digest(&raw, &slot.0, leaf)?,
                },
            };
            d.xor(&delta);
            if d.is_zero() {
                batch.remove(k);
            } else {
                batch.put(k, d.0.to_vec());
            }
            cache.leaves.insert(slot, d);
        }
        for ((coll, leaf), changes) in self.keys.drain() {
            let k = keys::leaf_keys(&coll, leaf);
            let mut held: std::collections::BTreeSet<String> = match store.get(&k)? {
                None => Default::default(),
                Some(raw) => decode_keys(&raw, &coll, leaf)?.into_iter().collect(),
            };
            for (key, joins) in changes {
                match joins {
                    true => held.insert(key),
                    false => held.remove(&key),
                };
            }
            if held.is_empty() {
                batch.remove(k);
            } else {
                batch.put(k, encode_keys(held.iter().map(String::as_str)));
            }
        }
        Ok(())
    }
}

/// Leaf digests the writer (their only writer) committed lately, so that the next groups
/// change them without reading the store.
#[derive(Default)]
pub(crate) struct LeafCache {
    leaves: HashMap<(String, u32), Digest>,
}

impl LeafCache {
    /// Forgets everything (a group's commit failed after it was filled).
    pub(crate) fn clear(&mut self) {
        self.leaves.clear();
    }
}

/// Leaf digests the writer keeps cached: every leaf of two collections.
const CACHED_LEAVES: usize = 2 * LEAVES as usize;

fn decode_digest(raw: &[u8], coll: &str, leaf: u32) -> Result<Digest, ReplicaError> {
    let bytes: [u8; 32] = raw.try_into().map_err(|_| ReplicaError::Corrupt {
        what: format!("{coll} tree leaf {leaf}"),
        detail: format!("{} bytes, not 32", raw.len()),
    })?;
    Ok(Digest(bytes))
}

/// The leaf digests of `coll` in `range` (non-zero ones), in leaf order.
pub(super) fn leaf_rows(
    store: &dyn Store,
    coll: &str,
    range: std::ops::Range<u32>,
) -> Result<Vec<(u32, Digest)>, ReplicaError> {
    let mut out = Vec::new();
    let mut start = keys::tree_leaf(coll, range.start);
    let end = match range.end {
        e if e >= LEAVES => prefix_end(&keys::tree_prefix(coll)),
        e => Some(keys::tree_leaf(coll, e)),
    };
    loop {
        let rows = store.range(&start, end.as_deref(), SCAN_BATCH)?;
        for (k, raw) in &rows {
            let leaf = keys::leaf_of_tree_key(k).ok_or_else(|| ReplicaError::Corrupt {
                what: format!("{coll} tree"),
                detail: "short leaf key".into(),
            })?;
            out.push((leaf, decode_digest(raw, coll, leaf)?));
        }
        match rows.last() {
            Some((k, _)) if rows.len() == SCAN_BATCH => {
                start = k.clone();
                start.push(0);
            }
            _ => return Ok(out),
        }
    }
}

/// The digests of the children at `level` of `parents` (see
/// [`officesync_protocol::tree::child_digests`]), from the leaf rows under each parent.
pub(crate) fn child_digests(
    store: &dyn Store,
    coll: &str,
    level: u8,
    parents: &[u32],
) -> Result<Vec<Digest>, ReplicaError> {
    let mut leaves = Vec::new();
    if level >= 1 {
        for p in parents {
            leaves.extend(leaf_rows(store, coll, tree::leaves_under(level - 1, *p))?);
        }
    }
    Ok(tree::child_digests(level, parents, leaves))
}

/// The current versions of the keys of `coll` in `leaves` (strictly increasing), in
/// `(leaf, key)` order after `after`: whole keys until `max_versions` versions or about
/// `max_bytes` of values; and where to resume when some are left.
pub(crate) fn load_leaves(
    store: &dyn Store,
    coll: &str,
    leaves: &[u32],
    after: Option<&(u32, String)>,
    max_versions: usize,
    max_bytes: usize,
) -> Result<tree::LeafPage, ReplicaError> {
    let mut out = Vec::new();
    let mut bytes = 0usize;
    let mut last: Option<(u32, String)> = None;
    let first = after.map_or(0, |(l, _)| *l);
    for &leaf in leaves.iter().filter(|l| **l >= first) {
        let Some(raw) = store.get(&keys::leaf_keys(coll, leaf))? else {
            continue;
        };
        for key in decode_keys(&raw, coll, leaf)? {
            if let Some((l, k)) = after {
                if *l == leaf && key <= *k {
                    continue;
                }
            }
            if last.is_some() && (out.len() >= max_versions || bytes >= max_bytes) {
                return Ok((out, last));
            }
            let Some(raw) = store.get(&keys::record(coll, &key))? else {
                continue;
            };
            for s in decode_siblings(&raw, &format!("{coll}/{key}"))? {
                let value = load_value(store, coll, &s)?;
                bytes += value.as_ref().map_or(0, Vec::len);
                out.push(Version {
                    collection: coll.to_owned(),
                    key: key.clone(),
                    dot: s.header.dot,
                    hlc: s.header.hlc,
                    context: s.header.context,
                    value,
                    author: s.author,
                    signature: s.signature,
                });
            }
            last = Some((leaf, key));
        }
    }
    Ok((out, None))
}

/// Builds the tree and leaf index of every collection of a store from before them, from a
/// scan of every record; returns the keys indexed (0 when the store had them already).
/// A record that cannot be read, or a tree that does not fold to its collection's digest,
/// refuses the store.
pub(crate) fn build(store: &dyn Store) -> Result<u64, ReplicaError> {
    if store.get(&keys::meta(TREE_MARK))?.as_deref() == Some(&[TREE_FORMAT][..]) {
        return Ok(0);
    }
    // Rows of an earlier format or an interrupted build go; the trees are written whole.
    super::tree_build::forget_markers(store)?;
    let mut indexed = 0;
    for info in super::read::collections(store)? {
        remove_prefix(store, &keys::tree_prefix(&info.name))?;
        remove_prefix(store, &keys::leaf_index_prefix(&info.name))?;
        indexed += build_collection(store, &info.name, &info.meta.digest)?;
    }
    let mut batch = WriteBatch::default();
    batch.put(keys::meta(TREE_MARK), vec![TREE_FORMAT]);
    store.apply(batch)?;
    store.sync()?;
    Ok(indexed)
}

/// Removes every row under `prefix`, in batches.
pub(super) fn remove_prefix(store: &dyn Store, prefix: &[u8]) -> Result<(), ReplicaError> {
    remove_range(store, prefix, prefix_end(prefix).as_deref())
}

/// Removes every row from `start` up to `end` (excluded; `None`: the end of the store), in
/// batches.
pub(super) fn remove_range(
    store: &dyn Store,
    start: &[u8],
    end: Option<&[u8]>,
) -> Result<(), ReplicaError> {
    loop {
        let rows = store.range(start, end, BUILD_BATCH)?;
        if rows.is_empty() {
            return Ok(());
        }
        let mut batch = WriteBatch::default();
        rows.into_iter().for_each(|(k, _)| batch.remove(k));
        store.apply(batch)?;
    }
}

/// The key of a record row, from the bytes after its collection's record prefix.
pub(super) fn record_key<'k>(coll: &str, bytes: &'k [u8]) -> Result<&'k str, ReplicaError> {
    std::str::from_utf8(bytes).map_err(|_| ReplicaError::Corrupt {
        what: format!("{coll} record key"),
        detail: "not UTF-8".into(),
    })
}

/// What the stored record `raw` of `key` adds to its leaf's digest: the XOR of its versions'
/// elements.
pub(super) fn record_digest(coll: &str, key: &str, raw: &[u8]) -> Result<Digest, ReplicaError> {
    let mut d = Digest::default();
    for s in decode_siblings(raw, &format!("{coll}/{key}"))? {
        d.xor(&Digest::element(key, &s.header.dot, &s.header.value));
    }
    Ok(d)
}

fn build_collection(store: &dyn Store, coll: &str, digest: &Digest) -> Result<u64, ReplicaError> {
    let mut leaves: BTreeMap<u32, Digest> = BTreeMap::new();
    let mut keys_of: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    let mut keys_seen = 0u64;
    let prefix = keys::record_prefix(coll);
    let end = prefix_end(&prefix);
    let mut start = prefix.clone();
    loop {
        let rows = store.range(&start, end.as_deref(), SCAN_BATCH)?;
        for (k, raw) in &rows {
            let key = record_key(coll, &k[prefix.len()..])?;
            let leaf = tree::leaf_of(key);
            leaves
                .entry(leaf)
                .or_default()
                .xor(&record_digest(coll, key, raw)?);
            // Records come in key order, so each leaf's list is sorted.
            keys_of.entry(leaf).or_default().push(key.to_owned());
            keys_seen += 1;
        }
        match rows.last() {
            Some((k, _)) if rows.len() == SCAN_BATCH => {
                start = k.clone();
                start.push(0);
            }
            _ => break,
        }
    }
    let mut folded = Digest::default();
    leaves.values().for_each(|d| folded.xor(d));
    if folded != *digest {
        return Err(ReplicaError::Corrupt {
            what: format!("collection {coll}"),
            detail: format!(
                "its records hash to {folded}, its stored digest is {digest}: the store is \
                 inconsistent"
            ),
        });
    }
    let mut batch = WriteBatch::default();
    for (leaf, list) in keys_of {
        batch.put(
            keys::leaf_keys(coll, leaf),
            encode_keys(list.iter().map(String::as_str)),
        );
        if batch.ops.len() >= BUILD_BATCH {
            store.apply(std::mem::take(&mut batch))?;
        }
    }
    for (leaf, d) in leaves.into_iter().filter(|(_, d)| !d.is_zero()) {
        batch.put(keys::tree_leaf(coll, leaf), d.0.to_vec());
    }
    store.apply(batch)?;
    Ok(keys_seen)
}

/// Makes the stopped store `store` lose every version of `keys` in `coll`, as damaged
/// storage would, keeping the collection's digest, counts and tree consistent with what
/// remains and its vector unchanged: only a digest round notices. For tests and the
/// benchmark, which need replicas that differ behind equal vectors; never on an open replica
/// (its writer caches the collection state). Returns the versions lost.
pub fn lose_keys(store: &dyn Store, coll: &str, lost_keys: &[String]) -> Result<u64, ReplicaError> {
    let mut meta = super::encoding::load_meta(store, coll)?;
    let mut batch = WriteBatch::default();
    let mut edits = TreeEdits::with(Builds::load(store)?);
    let mut lost = 0;
    for key in lost_keys {
        let Some(raw) = store.get(&keys::record(coll, key))? else {
            continue;
        };
        let siblings = decode_siblings(&raw, &format!("{coll}/{key}"))?;
        let live = officesync_protocol::merge::winner(&siblings)
            .is_some_and(|w| !w.header.value.is_tombstone());
        for s in &siblings {
            let e = edits.toggle(coll, key, &s.header.dot, &s.header.value);
            meta.digest.xor(&e);
            meta.versions = meta.versions.saturating_sub(1);
            lost += 1;
        }
        meta.keys = meta.keys.saturating_sub(1);
        if live {
            meta.records = meta.records.saturating_sub(1);
        }
        batch.remove(keys::record(coll, key));
        edits.drop_key(coll, key);
    }
    edits.write(store, &mut LeafCache::default(), &mut batch)?;
    batch.put(keys::collection(coll), super::encoding::encode(&meta)?);
    store.apply(batch)?;
    store.sync()?;
    Ok(lost)
}
