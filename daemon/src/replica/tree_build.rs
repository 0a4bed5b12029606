//! Hash trees built after the fact: a bulk apply into an empty collection (a new office
//! catching up) writes no tree rows, and the writer builds the collection's tree when it is
//! idle, in steps, from a scan of the records.
//!
//! The build goes through the leaves in passes: leaves below `built_below` are kept by every
//! write as usual; a pass over `[built_below, hi)` scans the records in key order, holding
//! the keys and leaf digests it found in memory, then writes the leaf-index rows sorted (so
//! sled appends rather than inserts at random) and, in a last batch, the leaf digests with
//! the new `built_below` (a marker row per collection). A write during a pass updates the
//! pass's state when the scan has passed its key, and nothing when the scan will still read
//! it. A crash loses at most the pass under way: the marker says where to resume, and
//! leaf-index rows written by that pass are rewritten by the next (a key that leaves the
//! collection always loses its row, so no row outlives its record).

use std::collections::{BTreeMap, BTreeSet};

use officesync_protocol::tree::{self, LEAVES};
use officesync_protocol::Digest;
use tokio::sync::oneshot;

use super::encoding::decode_siblings;
use super::keys;
use super::ReplicaError;
use crate::store::{prefix_end, Store, WriteBatch};

/// Fewest versions in one received batch into an empty collection that start a build
/// instead of keeping the tree with every write.
pub(crate) const BULK_MIN: usize = 64;

/// Records scanned per build step.
#[cfg(not(test))]
const SCAN_STEP: usize = 4096;
#[cfg(test)]
const SCAN_STEP: usize = 64;

/// Leaf-index rows written per build step.
#[cfg(not(test))]
const FLUSH_STEP: usize = 4096;
#[cfg(test)]
const FLUSH_STEP: usize = 100;

/// Keys a pass aims to hold in memory (about 70 bytes each); a pass that finds more than
/// twice as many (the collection grew under it) starts again over fewer leaves.
#[cfg(not(test))]
const PASS_KEYS: u64 = 262_144;
#[cfg(test)]
const PASS_KEYS: u64 = 512;

/// Prefix of the marker rows, one per collection whose tree is being built.
const MARKER: &str = "tree_build/";

fn marker(coll: &str) -> Vec<u8> {
    keys::meta(&format!("{MARKER}{coll}"))
}

/// Where a write to a key lands while its collection's tree is being built.
pub(crate) enum Region<'a> {
    /// Its leaf is built: the write keeps the tree rows as usual.
    Kept,
    /// The pass under way covers it: the write changes the pass's state (and, once the pass
    /// writes its rows, the key's leaf-index row).
    Pass(&'a mut Pass),
    /// A later pass (or this one's scan, still ahead of it) reads it from the records.
    Later,
}

/// The pass under way over the leaves `[built_below, hi)` of one collection.
pub(crate) struct Pass {
    hi: u32,
    /// The last record key the scan read (`None`: none yet).
    scanned: Option<String>,
    /// The scan is done: the pass writes its rows.
    flushing: bool,
    /// The keys found whose leaf-index rows are still to be written, by `(leaf, key)`.
    keys: BTreeSet<(u32, String)>,
    /// The digest of each non-empty leaf of the pass.
    digests: BTreeMap<u32, Digest>,
}

impl Pass {
    fn covers(&self, key: &str) -> bool {
        self.flushing || self.scanned.as_deref().is_some_and(|s| key <= s)
    }

    /// A version of `key` in `leaf` enters or leaves the collection.
    pub(crate) fn toggle(&mut self, leaf: u32, element: &Digest) {
        self.digests.entry(leaf).or_default().xor(element);
    }

    /// `key` gets its first version: its row, now when the pass is writing rows, else with
    /// the others.
    pub(crate) fn new_key(&mut self, coll: &str, leaf: u32, key: &str, batch: &mut WriteBatch) {
        if self.flushing {
            batch.put(keys::leaf_entry(coll, leaf, key), Vec::new());
        } else {
            self.keys.insert((leaf, key.to_owned()));
        }
    }

    /// `key` leaves the collection (its row is removed by the caller).
    pub(crate) fn drop_key(&mut self, leaf: u32, key: &str) {
        self.keys.remove(&(leaf, key.to_owned()));
    }
}

/// The build of one collection's tree.
struct Build {
    /// Leaves below this one are built.
    built_below: u32,
    pass: Option<Pass>,
    /// When the build started (or resumed).
    since: std::time::Instant,
    /// Repair reads waiting for the tree.
    waiters: Vec<oneshot::Sender<Result<(), ReplicaError>>>,
}

/// Every collection whose tree is being built; owned by the writer thread (and moved into
/// each group while it is applied).
#[derive(Default)]
pub(crate) struct Builds {
    colls: BTreeMap<String, Build>,
    /// Builds started by the group being applied (forgotten if its commit fails).
    started: Vec<String>,
}

/// What one build step did.
pub(crate) enum Step {
    /// Nothing to build.
    Idle,
    /// Work done, more to do.
    Progress,
    /// The tree of this collection is built, this long after the build started: answer its
    /// waiting reads ([`Built::answer`]).
    Built(Built),
}

impl Builds {
    /// The builds the store's marker rows record (resumed after a restart, each from the
    /// start of the pass that was under way).
    pub(crate) fn load(store: &dyn Store) -> Result<Self, ReplicaError> {
        let prefix = keys::meta(MARKER);
        let rows = store.range(&prefix, prefix_end(&prefix).as_deref(), usize::MAX)?;
        let mut colls = BTreeMap::new();
        for (k, v) in rows {
            let coll = String::from_utf8(k[prefix.len()..].to_vec()).ok();
            let below = <[u8; 4]>::try_from(v.as_slice())
                .ok()
                .map(u32::from_be_bytes);
            let (Some(coll), Some(built_below)) = (coll, below) else {
                return Err(ReplicaError::Corrupt {
                    what: "tree build marker".into(),
                    detail: format!("{} bytes of value", v.len()),
                });
            };
            colls.insert(
                coll,
                Build {
                    built_below: built_below.min(LEAVES),
                    pass: None,
                    since: std::time::Instant::now(),
                    waiters: Vec::new(),
                },
            );
        }
        Ok(Self {
            colls,
            started: Vec::new(),
        })
    }

    /// Collections whose trees are being built.
    pub(crate) fn len(&self) -> usize {
        self.colls.len()
    }

    /// Whether `coll`'s tree is being built.
    pub(crate) fn contains(&self, coll: &str) -> bool {
        self.colls.contains_key(coll)
    }

    /// Whether a repair read waits for a tree.
    pub(crate) fn urgent(&self) -> bool {
        self.colls.values().any(|b| !b.waiters.is_empty())
    }

    /// Where a write to `key` (in `leaf`) of `coll` lands.
    pub(crate) fn region(&mut self, coll: &str, leaf: u32, key: &str) -> Region<'_> {
        let Some(b) = self.colls.get_mut(coll) else {
            return Region::Kept;
        };
        if leaf < b.built_below {
            return Region::Kept;
        }
        match &mut b.pass {
            Some(p) if leaf < p.hi && p.covers(key) => Region::Pass(p),
            _ => Region::Later,
        }
    }

    /// Starts building `coll`'s tree (empty now: it has no key): its marker goes into
    /// `batch`, and from here on its writes leave the tree alone.
    pub(crate) fn start(&mut self, coll: &str, batch: &mut WriteBatch) {
        if self.colls.contains_key(coll) {
            return;
        }
        batch.put(marker(coll), 0u32.to_be_bytes().to_vec());
        self.colls.insert(
            coll.to_owned(),
            Build {
                built_below: 0,
                pass: None,
                since: std::time::Instant::now(),
                waiters: Vec::new(),
            },
        );
        self.started.push(coll.to_owned());
    }

    /// `reply` when `coll`'s tree is built (now, when it is not being built).
    pub(crate) fn wait(&mut self, coll: &str, reply: oneshot::Sender<Result<(), ReplicaError>>) {
        match self.colls.get_mut(coll) {
            Some(b) => b.waiters.push(reply),
            None => drop(reply.send(Ok(()))),
        }
    }

    /// The group that went with these builds was committed.
    pub(crate) fn committed(&mut self) {
        self.started.clear();
    }

    /// The group's commit failed: the builds it started are forgotten, and every pass under
    /// way starts again (it may hold the group's changes).
    pub(crate) fn failed(&mut self) {
        for coll in self.started.drain(..) {
            if let Some(b) = self.colls.remove(&coll) {
                answer(b.waiters, || Ok(()));
            }
        }
        self.colls.values_mut().for_each(|b| b.pass = None);
    }

    /// A step failed: passes start again, and the waiting reads get the error.
    pub(crate) fn step_failed(&mut self, e: &ReplicaError) {
        for b in self.colls.values_mut() {
            b.pass = None;
            answer(
                std::mem::take(&mut b.waiters),
                || Err(e.for_another_write()),
            );
        }
    }

    /// One step of one build (a collection with waiting reads first): starts a pass, scans
    /// [`SCAN_STEP`] records, or writes [`FLUSH_STEP`] rows or the pass's last batch.
    /// `keys_of` gives a collection's key count (to size a pass).
    pub(crate) fn step(
        &mut self,
        store: &dyn Store,
        keys_of: impl Fn(&str) -> u64,
    ) -> Result<Step, ReplicaError> {
        let next = self
            .colls
            .iter()
            .find(|(_, b)| !b.waiters.is_empty())
            .or_else(|| self.colls.iter().next())
            .map(|(c, _)| c.clone());
        let Some(coll) = next else {
            return Ok(Step::Idle);
        };
        let Some(b) = self.colls.get_mut(&coll) else {
            return Ok(Step::Idle);
        };
        let lo = b.built_below;
        let Some(pass) = &mut b.pass else {
            let keys = keys_of(&coll).max(1);
            let span = (u64::from(LEAVES) * PASS_KEYS / keys).clamp(1, u64::from(LEAVES)) as u32;
            b.pass = Some(Pass {
                hi: lo.saturating_add(span).min(LEAVES),
                scanned: None,
                flushing: false,
                keys: BTreeSet::new(),
                digests: BTreeMap::new(),
            });
            return Ok(Step::Progress);
        };
        if !pass.flushing {
            scan(store, &coll, lo, pass)?;
            if pass.keys.len() as u64 > 2 * PASS_KEYS && pass.hi > lo + 1 {
                // The collection grew under the pass: start again over fewer leaves.
                b.pass = None;
            }
            return Ok(Step::Progress);
        }
        let mut batch = WriteBatch::default();
        if !pass.keys.is_empty() {
            while batch.ops.len() < FLUSH_STEP {
                let Some((leaf, key)) = pass.keys.pop_first() else {
                    break;
                };
                batch.put(keys::leaf_entry(&coll, leaf, &key), Vec::new());
            }
            store.apply(batch)?;
            return Ok(Step::Progress);
        }
        // The pass's last batch: its leaves' digests and the new mark.
        for (leaf, _) in super::tree::leaf_rows(store, &coll, lo..pass.hi)? {
            batch.remove(keys::tree_leaf(&coll, leaf));
        }
        for (leaf, d) in std::mem::take(&mut pass.digests) {
            if !d.is_zero() {
                batch.put(keys::tree_leaf(&coll, leaf), d.0.to_vec());
            }
        }
        let hi = pass.hi;
        if hi >= LEAVES {
            batch.remove(marker(&coll));
        } else {
            batch.put(marker(&coll), hi.to_be_bytes().to_vec());
        }
        store.apply(batch)?;
        b.built_below = hi;
        b.pass = None;
        if hi < LEAVES {
            return Ok(Step::Progress);
        }
        let took = b.since.elapsed();
        let waiters = self
            .colls
            .remove(&coll)
            .map(|b| b.waiters)
            .unwrap_or_default();
        Ok(Step::Built(Built {
            collection: coll,
            took,
            waiters,
        }))
    }
}

/// A tree just built.
pub(crate) struct Built {
    pub(crate) collection: String,
    pub(crate) took: std::time::Duration,
    waiters: Vec<oneshot::Sender<Result<(), ReplicaError>>>,
}

impl Built {
    /// Lets the reads waiting for the tree go on.
    pub(crate) fn answer(self) {
        answer(self.waiters, || Ok(()));
    }
}

fn answer(
    waiters: Vec<oneshot::Sender<Result<(), ReplicaError>>>,
    outcome: impl Fn() -> Result<(), ReplicaError>,
) {
    for w in waiters {
        let _ = w.send(outcome());
    }
}

/// Reads the next [`SCAN_STEP`] records of `coll` after the pass's last, taking the keys and
/// versions of those in the pass's leaves `[lo, hi)`.
fn scan(store: &dyn Store, coll: &str, lo: u32, pass: &mut Pass) -> Result<(), ReplicaError> {
    let prefix = keys::record_prefix(coll);
    let end = prefix_end(&prefix);
    let start = match &pass.scanned {
        Some(k) => {
            let mut s = keys::record(coll, k);
            s.push(0);
            s
        }
        None => prefix.clone(),
    };
    let rows = store.range(&start, end.as_deref(), SCAN_STEP)?;
    for (k, raw) in &rows {
        let key = std::str::from_utf8(&k[prefix.len()..]).map_err(|_| ReplicaError::Corrupt {
            what: format!("{coll} record key"),
            detail: "not UTF-8".into(),
        })?;
        let leaf = tree::leaf_of(key);
        if leaf < lo || leaf >= pass.hi {
            continue;
        }
        for s in decode_siblings(raw, &format!("{coll}/{key}"))? {
            pass.toggle(leaf, &Digest::element(key, &s.header.dot, &s.header.value));
        }
        pass.keys.insert((leaf, key.to_owned()));
    }
    if let Some((k, _)) = rows.last() {
        let key =
            String::from_utf8(k[prefix.len()..].to_vec()).map_err(|_| ReplicaError::Corrupt {
                what: format!("{coll} record key"),
                detail: "not UTF-8".into(),
            })?;
        pass.scanned = Some(key);
    }
    if rows.len() < SCAN_STEP {
        pass.flushing = true;
    }
    Ok(())
}

/// The digests of every leaf row of `coll`, folded (checked against the collection digest
/// when a build ends).
pub(crate) fn folded(store: &dyn Store, coll: &str) -> Result<Digest, ReplicaError> {
    let mut d = Digest::default();
    for (_, leaf) in super::tree::leaf_rows(store, coll, 0..LEAVES)? {
        d.xor(&leaf);
    }
    Ok(d)
}
