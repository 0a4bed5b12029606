//! Hash trees built after the fact: a bulk apply into an empty collection (a new office
//! catching up) writes no tree rows, and the writer builds the collection's tree when it is
//! idle, in steps, from a scan of the records.
//!
//! A build started by a bulk apply into an empty collection takes the keys and leaf digests as
//! they are applied, in memory (about 90 bytes a key, up to twice [`PASS_KEYS`]), and only
//! writes its rows once idle. Otherwise, and after a restart,
//! the build goes through the leaves in passes: leaves below `built_below` are kept by every
//! write as usual; a pass over `[built_below, hi)` first removes any leaf-index row at or
//! above `built_below` (left by a pass a crash cut short), scans the records in key order,
//! holding the keys and leaf digests it found in memory, then writes the leaf-index rows in
//! leaf order and, in a last batch, the leaf digests with the new `built_below` (a marker row
//! per collection). A write during a pass updates the pass's state when the scan has passed
//! its key, and nothing when the scan will still read it; once the pass wrote a leaf's row,
//! the write changes that row as usual. A crash loses at most the pass under way: the marker
//! says where to resume.

use std::collections::{BTreeMap, BTreeSet};

use officesync_protocol::tree::{self, LEAVES};
use officesync_protocol::Digest;
use tokio::sync::oneshot;

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
const PASS_KEYS: u64 = 1 << 20;
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
    /// Leaves below this one have their leaf-index rows written (while `flushing`).
    written_below: u32,
    /// Started at an empty collection, it takes keys as they come: while the writer is busy
    /// (a catch-up under way), its rows wait.
    collecting: bool,
    /// The keys found whose leaf-index rows are still to be written, by leaf.
    keys: BTreeMap<u32, BTreeSet<String>>,
    /// The keys in `keys`.
    count: usize,
    /// The digest of each non-empty leaf of the pass.
    digests: BTreeMap<u32, Digest>,
}

impl Pass {
    /// A pass over the leaves `[lo, hi)`, with nothing found yet. A `collecting` pass has no
    /// record to scan (its collection was empty): it takes the keys as they come.
    fn new(lo: u32, hi: u32, collecting: bool) -> Self {
        Self {
            hi,
            scanned: None,
            flushing: collecting,
            written_below: lo,
            collecting,
            keys: BTreeMap::new(),
            count: 0,
            digests: BTreeMap::new(),
        }
    }

    fn covers(&self, key: &str) -> bool {
        self.flushing || self.scanned.as_deref().is_some_and(|s| key <= s)
    }

    /// A version of `key` in `leaf` enters or leaves the collection.
    pub(crate) fn toggle(&mut self, leaf: u32, element: &Digest) {
        self.digests.entry(leaf).or_default().xor(element);
    }

    /// Whether the pass wrote `leaf`'s leaf-index row: writes change the row itself.
    pub(crate) fn wrote(&self, leaf: u32) -> bool {
        self.flushing && leaf < self.written_below
    }

    /// `key` joins (its first version) or leaves (its last is forgotten) the pass's keys.
    pub(crate) fn key_change(&mut self, leaf: u32, key: &str, joins: bool) {
        if joins {
            if self.keys.entry(leaf).or_default().insert(key.to_owned()) {
                self.count += 1;
            }
        } else if let Some(set) = self.keys.get_mut(&leaf) {
            if set.remove(key) {
                self.count -= 1;
            }
            if set.is_empty() {
                self.keys.remove(&leaf);
            }
        }
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

/// Which builds a step may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Which {
    /// Any (the writer is idle, or a repair read waits).
    Any,
    /// Not the passes that take keys as they come (the writer is busy: a catch-up may be
    /// under way, and their rows wait for it).
    Busy,
    /// Only those passes (the daemon stops: their keys are in memory, and would otherwise be
    /// found again by scanning every record).
    Collecting,
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
        // With no record to scan, one pass over every leaf takes the keys as they come; it
        // gives way to scanning passes if the collection outgrows it.
        self.colls.insert(
            coll.to_owned(),
            Build {
                built_below: 0,
                pass: Some(Pass::new(0, LEAVES, true)),
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

    /// The group that went with these builds was committed. A pass holding more than twice
    /// the keys it aims at gives way to passes over fewer leaves.
    pub(crate) fn committed(&mut self) {
        self.started.clear();
        for b in self.colls.values_mut() {
            if b.pass
                .as_ref()
                .is_some_and(|p| p.count as u64 > 2 * PASS_KEYS)
            {
                b.pass = None;
            }
        }
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

    /// One step of one build of those `which` names (a collection with waiting reads first):
    /// starts a pass, scans [`SCAN_STEP`] records, or writes [`FLUSH_STEP`] rows or the pass's
    /// last batch. `keys_of` gives a collection's key count (to size a pass).
    pub(crate) fn step(
        &mut self,
        store: &dyn Store,
        which: Which,
        keys_of: impl Fn(&str) -> u64,
    ) -> Result<Step, ReplicaError> {
        let takes = |b: &Build| {
            let collecting = b.pass.as_ref().is_some_and(|p| p.collecting);
            match which {
                Which::Any => true,
                Which::Busy => !collecting,
                Which::Collecting => collecting,
            }
        };
        let next = self
            .colls
            .iter()
            .find(|(_, b)| takes(b) && !b.waiters.is_empty())
            .or_else(|| self.colls.iter().find(|(_, b)| takes(b)))
            .map(|(c, _)| c.clone());
        let Some(coll) = next else {
            return Ok(Step::Idle);
        };
        let Some(b) = self.colls.get_mut(&coll) else {
            return Ok(Step::Idle);
        };
        let lo = b.built_below;
        let Some(pass) = &mut b.pass else {
            // Rows at or above `lo` are left by a pass a crash (or a failed commit) cut short.
            let end = prefix_end(&keys::leaf_index_prefix(&coll));
            super::tree::remove_range(store, &keys::leaf_keys(&coll, lo), end.as_deref())?;
            let keys = keys_of(&coll).max(1);
            let span = (u64::from(LEAVES) * PASS_KEYS / keys).clamp(1, u64::from(LEAVES)) as u32;
            b.pass = Some(Pass::new(lo, lo.saturating_add(span).min(LEAVES), false));
            return Ok(Step::Progress);
        };
        if !pass.flushing {
            scan(store, &coll, lo, pass)?;
            if pass.count as u64 > 2 * PASS_KEYS && pass.hi > lo + 1 {
                // The collection grew under the pass: start again over fewer leaves.
                b.pass = None;
            }
            return Ok(Step::Progress);
        }
        let mut batch = WriteBatch::default();
        if !pass.keys.is_empty() {
            // Whole leaves, in leaf order, about FLUSH_STEP keys.
            let mut written = 0;
            while written < FLUSH_STEP {
                let Some((leaf, list)) = pass.keys.pop_first() else {
                    break;
                };
                pass.count -= list.len();
                written += list.len();
                batch.put(
                    keys::leaf_keys(&coll, leaf),
                    super::tree::encode_keys(list.iter().map(String::as_str)),
                );
                pass.written_below = leaf + 1;
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
    let mut last = None;
    for (k, raw) in &rows {
        let key = super::tree::record_key(coll, &k[prefix.len()..])?;
        last = Some(key);
        let leaf = tree::leaf_of(key);
        if leaf < lo || leaf >= pass.hi {
            continue;
        }
        pass.toggle(leaf, &super::tree::record_digest(coll, key, raw)?);
        pass.key_change(leaf, key, true);
    }
    if let Some(key) = last {
        pass.scanned = Some(key.to_owned());
    }
    if rows.len() < SCAN_STEP {
        pass.flushing = true;
    }
    Ok(())
}

/// Removes every build marker of a store whose trees are rebuilt whole at open.
pub(crate) fn forget_markers(store: &dyn Store) -> Result<(), ReplicaError> {
    super::tree::remove_prefix(store, &keys::meta(MARKER))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replica::tree::{decode_keys, TreeEdits};
    use crate::store::MemoryStore;

    /// A key of the same leaf as `key`, other than it.
    fn neighbour(key: &str) -> String {
        let leaf = tree::leaf_of(key);
        (0..)
            .map(|i| format!("n{i}"))
            .find(|k| tree::leaf_of(k) == leaf)
            .expect("a key of every leaf")
    }

    fn row(store: &MemoryStore, leaf: u32) -> Vec<String> {
        store
            .get(&keys::leaf_keys("c", leaf))
            .expect("get")
            .map(|raw| decode_keys(&raw, "c", leaf).expect("keys"))
            .unwrap_or_default()
    }

    #[test]
    fn keys_that_join_or_leave_while_a_pass_writes_its_rows_land_in_them() {
        let store = MemoryStore::new();
        let (a, b) = ("alpha", "beta");
        let (la, lb) = (tree::leaf_of(a), tree::leaf_of(b));
        let first = la.min(lb);
        let mut builds = Builds::default();
        builds.colls.insert(
            "c".into(),
            Build {
                built_below: 0,
                pass: Some(Pass {
                    hi: LEAVES,
                    scanned: None,
                    flushing: true,
                    written_below: 0,
                    collecting: false,
                    keys: [(la, [a.to_owned()].into()), (lb, [b.to_owned()].into())].into(),
                    count: 2,
                    digests: BTreeMap::new(),
                }),
                since: std::time::Instant::now(),
                waiters: Vec::new(),
            },
        );
        // One step writes both leaves' rows (the test's FLUSH_STEP is larger than 2).
        assert!(matches!(
            builds.step(&store, Which::Any, |_| 2).expect("step"),
            Step::Progress
        ));
        assert_eq!(row(&store, first), [if first == la { a } else { b }]);
        // A key joining a written leaf goes into its row; one leaving it goes out of it.
        let mut edits = TreeEdits::with(builds);
        let joins = neighbour(a);
        edits.new_key("c", &joins);
        edits.drop_key("c", b);
        let mut batch = WriteBatch::default();
        edits
            .write(&store, &mut Default::default(), &mut batch)
            .expect("edits");
        store.apply(batch).expect("apply");
        let mut builds = std::mem::take(&mut edits.builds);
        let mut want = vec![a.to_owned(), joins.clone()];
        want.sort();
        assert_eq!(row(&store, la), want);
        assert!(row(&store, lb).is_empty());
        // The pass ends; its rows are as the edits left them.
        let mut built = false;
        for _ in 0..10 {
            if let Step::Built(b) = builds.step(&store, Which::Any, |_| 2).expect("step") {
                b.answer();
                built = true;
                break;
            }
        }
        assert!(built);
        assert_eq!(row(&store, la), want);
        assert!(store.get(&marker("c")).expect("get").is_none());
    }

    #[test]
    fn a_pass_removes_rows_a_cut_pass_left_above_the_built_leaves() {
        let store = MemoryStore::new();
        let mut batch = WriteBatch::default();
        batch.put(
            keys::leaf_keys("c", 9),
            super::super::tree::encode_keys(["gone"]),
        );
        batch.put(marker("c"), 5u32.to_be_bytes().to_vec());
        store.apply(batch).expect("apply");
        let mut builds = Builds::load(&store).expect("load");
        assert!(builds.contains("c"));
        let mut steps = 0;
        while !matches!(
            builds.step(&store, Which::Any, |_| 0).expect("step"),
            Step::Built(_)
        ) {
            steps += 1;
            assert!(
                steps < 10,
                "a collection without records builds in a few steps"
            );
        }
        assert!(row(&store, 9).is_empty(), "the stale row is gone");
        assert!(!builds.contains("c"));
    }
}
