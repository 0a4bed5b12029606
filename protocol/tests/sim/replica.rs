//! The in-memory replica model of one node: sibling sets per key kept with the real merge
//! rules, per-collection vectors, the dot index origin → counter → key of live versions and
//! incremental digests, plus an undo log that plays the part of sled's unflushed writes: a
//! crash rolls back to the last flush.
//!
//! Only durable vectors are offered to peers, but Loads read the applied state. A version
//! removed by a local write that is not durable yet must still be served: otherwise a Load
//! skips it, the peer's vector covers it, and if the write is then lost in a crash the
//! version comes back here but never reaches that peer. The model keeps such versions in a
//! shadow ([`officesync_protocol::shadow`], the rule the daemon uses too) until the next
//! flush ([`Replica::naive_loads`] turns that off, to show the gap).

use std::collections::BTreeMap;

use officesync_protocol::merge::{self, Applied};
use officesync_protocol::shadow::{load_size, Shadow};
use officesync_protocol::tree;
use officesync_protocol::{Digest, Dot, HlcClock, ReplicaId, ValueMeta, Version, VersionVector};

/// One collection at one replica.
#[derive(Debug, Clone, Default)]
pub struct Coll {
    /// Highest counter fully received per origin.
    pub vv: VersionVector,
    /// Sibling sets (live versions, tombstones included), sorted by dot.
    pub keys: BTreeMap<String, Vec<Version>>,
    /// Live versions by origin and counter.
    pub index: BTreeMap<ReplicaId, BTreeMap<u64, String>>,
    /// Incremental digest of the live versions.
    pub digest: Digest,
}

/// What undoes one unflushed change.
#[derive(Debug)]
enum Undo {
    /// Remove the version with this dot from the key's siblings.
    Inserted(String, String, Dot),
    /// Put this version back.
    Removed(String, Version),
    /// Restore the collection's vector.
    Vv(String, VersionVector),
}

/// A node's replica.
#[derive(Debug)]
pub struct Replica {
    /// The current replica id.
    pub id: ReplicaId,
    /// The applied state.
    pub colls: BTreeMap<String, Coll>,
    /// The vectors as of the last flush: what may be offered to peers.
    pub durable_vvs: BTreeMap<String, VersionVector>,
    /// The node's clock.
    pub hlc: HlcClock,
    /// Loads skip versions superseded by unflushed local writes (the gap described above).
    pub naive_loads: bool,
    /// Versions removed by local writes since the last flush.
    shadow: Shadow,
    undo: Vec<Undo>,
}

impl Coll {
    fn add(&mut self, v: Version) {
        self.digest
            .toggle(&v.key, &v.dot, &ValueMeta::of(v.value.as_deref()));
        self.index
            .entry(v.dot.origin.clone())
            .or_default()
            .insert(v.dot.counter, v.key.clone());
    }

    fn forget(&mut self, v: &Version) {
        self.digest
            .toggle(&v.key, &v.dot, &ValueMeta::of(v.value.as_deref()));
        if let Some(m) = self.index.get_mut(&v.dot.origin) {
            m.remove(&v.dot.counter);
            if m.is_empty() {
                self.index.remove(&v.dot.origin);
            }
        }
    }

    /// Every live version, for comparisons.
    pub fn versions(&self) -> impl Iterator<Item = &Version> {
        self.keys.values().flatten()
    }
}

impl Replica {
    /// An empty replica with id `id`.
    pub fn new(id: ReplicaId) -> Self {
        Self {
            id,
            colls: BTreeMap::new(),
            durable_vvs: BTreeMap::new(),
            hlc: HlcClock::new(),
            naive_loads: false,
            shadow: Shadow::new(),
            undo: Vec::new(),
        }
    }

    /// A local write (`None`: a delete) superseding every sibling of `key`.
    pub fn write(&mut self, coll: &str, key: &str, value: Option<Vec<u8>>, now: u64) -> Version {
        let siblings = self
            .colls
            .get(coll)
            .and_then(|c| c.keys.get(key))
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let context = merge::local_context(siblings);
        self.write_with_context(coll, key, value, context, now)
    }

    /// A local write with the given causal context: an empty one makes it a sibling of every
    /// version of `key` (a blind write, as a hostile node floods siblings).
    pub fn write_with_context(
        &mut self,
        coll: &str,
        key: &str,
        value: Option<Vec<u8>>,
        context: VersionVector,
        now: u64,
    ) -> Version {
        let c = self.colls.entry(coll.to_owned()).or_default();
        let counter = c.vv.get(&self.id) + 1;
        let v = Version {
            collection: coll.to_owned(),
            key: key.to_owned(),
            dot: Dot::new(self.id.clone(), counter),
            hlc: self.hlc.tick(now),
            context,
            value,
            author: None,
            signature: None,
        };
        let removed = self.merge_in(coll, v.clone());
        if !self.naive_loads {
            // Every unflushed write is lost together in a crash: one generation.
            self.shadow.add(0, removed);
        }
        self.raise(coll, &self.id.clone(), counter);
        v
    }

    /// The live versions of `origin` with `after < counter <= through`, at most `max` of them
    /// and about `max_bytes`; and how far the scan went.
    pub fn load(
        &self,
        coll: &str,
        origin: &ReplicaId,
        after: u64,
        through: u64,
        max: usize,
        max_bytes: usize,
    ) -> (Vec<Version>, u64) {
        // Live versions from the index, only as far as the limits allow...
        let mut found: Vec<Version> = Vec::new();
        let mut cut = None;
        if let Some((c, idx)) = self
            .colls
            .get(coll)
            .and_then(|c| c.index.get(origin).map(|i| (c, i)))
        {
            let mut bytes = 0;
            for (counter, key) in idx.range(after + 1..=through) {
                let sibs = c.keys.get(key).map(Vec::as_slice).unwrap_or(&[]);
                let Some(v) = sibs
                    .iter()
                    .find(|v| v.dot.counter == *counter && v.dot.origin == *origin)
                else {
                    continue;
                };
                found.push(v.clone());
                bytes += load_size(v);
                if found.len() >= max || bytes >= max_bytes {
                    cut = Some(*counter);
                    break;
                }
            }
        }
        // ...merged with the shadowed ones up to there.
        let scanned = cut.unwrap_or(through);
        self.shadow
            .merge_load(coll, origin, after, found, scanned, max, max_bytes)
    }

    /// Applies a completed batch and raises the vector, atomically.
    pub fn apply(
        &mut self,
        coll: &str,
        origin: &ReplicaId,
        versions: Vec<Version>,
        through: u64,
        repair: bool,
    ) {
        for v in versions {
            let covered = self.colls.get(coll).is_some_and(|c| c.vv.covers(&v.dot));
            if repair || !covered {
                let _ = self.merge_in(coll, v);
            }
        }
        self.raise(coll, origin, through);
    }

    /// The digests of the hash-tree nodes at `level` under `parents`, folded from the
    /// applied state.
    pub fn tree_digests(&self, coll: &str, level: u8, parents: &[u32]) -> Vec<Digest> {
        let leaves = self.colls.get(coll).into_iter().flat_map(|c| {
            c.versions().map(|v| {
                let e = Digest::element(&v.key, &v.dot, &ValueMeta::of(v.value.as_deref()));
                (tree::leaf_of(&v.key), e)
            })
        });
        tree::child_digests(level, parents, leaves)
    }

    /// The current versions of the keys in `leaves`, as a store answers a leaf load.
    pub fn load_leaves(
        &self,
        coll: &str,
        leaves: &[u32],
        after: Option<&(u32, String)>,
        max: usize,
        max_bytes: usize,
    ) -> tree::LeafPage {
        let versions = self.colls.get(coll).into_iter().flat_map(|c| c.versions());
        tree::select_leaves(versions, leaves, after, max, max_bytes)
    }

    /// The digest and vector of the applied state.
    pub fn digest(&self, coll: &str) -> (Digest, VersionVector) {
        self.colls
            .get(coll)
            .map(|c| (c.digest, c.vv.clone()))
            .unwrap_or_default()
    }

    /// Makes everything applied durable; returns the collections whose durable vector grew.
    pub fn flush(&mut self) -> Vec<(String, VersionVector)> {
        let mut touched: Vec<&str> = self
            .undo
            .iter()
            .filter_map(|u| match u {
                Undo::Vv(c, _) => Some(c.as_str()),
                _ => None,
            })
            .collect();
        touched.sort_unstable();
        touched.dedup();
        let mut grown = Vec::new();
        for name in touched {
            let Some(c) = self.colls.get(name) else {
                continue;
            };
            if self.durable_vvs.get(name) != Some(&c.vv) {
                self.durable_vvs.insert(name.to_owned(), c.vv.clone());
                grown.push((name.to_owned(), c.vv.clone()));
            }
        }
        self.undo.clear();
        self.shadow.clear();
        grown
    }

    /// True when something applied is not durable yet.
    pub fn dirty(&self) -> bool {
        !self.undo.is_empty()
    }

    /// A crash: everything since the last flush is lost.
    pub fn crash(&mut self) {
        self.shadow.clear();
        while let Some(u) = self.undo.pop() {
            match u {
                Undo::Inserted(coll, key, dot) => {
                    let Some(c) = self.colls.get_mut(&coll) else {
                        continue;
                    };
                    let Some(sibs) = c.keys.get_mut(&key) else {
                        continue;
                    };
                    if let Some(pos) = sibs.iter().position(|v| v.dot == dot) {
                        let v = sibs.remove(pos);
                        if sibs.is_empty() {
                            c.keys.remove(&key);
                        }
                        c.forget(&v);
                    }
                }
                Undo::Removed(coll, v) => {
                    let c = self.colls.entry(coll).or_default();
                    let sibs = c.keys.entry(v.key.clone()).or_default();
                    let at = sibs.partition_point(|s| s.dot < v.dot);
                    sibs.insert(at, v.clone());
                    c.add(v);
                }
                Undo::Vv(coll, vv) => {
                    if let Some(c) = self.colls.get_mut(&coll) {
                        c.vv = vv;
                    }
                }
            }
        }
    }

    /// Bit rot: `dot` silently disappears from `key` (the vector still covers it), with no undo:
    /// a crash does not bring it back.
    pub fn rot(&mut self, coll: &str, key: &str, dot: &Dot) -> bool {
        let Some(c) = self.colls.get_mut(coll) else {
            return false;
        };
        let Some(sibs) = c.keys.get_mut(key) else {
            return false;
        };
        let Some(pos) = sibs.iter().position(|v| v.dot == *dot) else {
            return false;
        };
        let v = sibs.remove(pos);
        if sibs.is_empty() {
            c.keys.remove(key);
        }
        c.forget(&v);
        true
    }

    /// Merges `v` in; returns the versions it superseded.
    fn merge_in(&mut self, coll: &str, v: Version) -> Vec<Version> {
        let c = self.colls.entry(coll.to_owned()).or_default();
        let key = v.key.clone();
        let dot = v.dot.clone();
        let sibs = c.keys.entry(key.clone()).or_default();
        match merge::apply(sibs, v.clone()) {
            Applied::Duplicate | Applied::Obsolete => {
                if sibs.is_empty() {
                    c.keys.remove(&key);
                }
                Vec::new()
            }
            Applied::Inserted { removed } => {
                for r in &removed {
                    c.forget(r);
                    self.undo.push(Undo::Removed(coll.to_owned(), r.clone()));
                }
                c.add(v);
                self.undo.push(Undo::Inserted(coll.to_owned(), key, dot));
                removed
            }
        }
    }

    fn raise(&mut self, coll: &str, origin: &ReplicaId, counter: u64) {
        let c = self.colls.entry(coll.to_owned()).or_default();
        if c.vv.get(origin) < counter {
            self.undo.push(Undo::Vv(coll.to_owned(), c.vv.clone()));
            c.vv.raise(origin, counter);
        }
    }
}
