//! The single writer thread: local writes, received versions and syncs, applied one atomic
//! batch each, with one durable sync per drained group (group commit).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use officesync_protocol::hlc::check_skew;
use officesync_protocol::merge::{self, Applied};
use officesync_protocol::names;
use officesync_protocol::{codec, HlcClock, ReplicaId, Version, VersionHeader};
use tokio::sync::mpsc;

use super::changes::{self, ChangeEdits, LogState};
use super::dots::{DotEdits, RowCache};
use super::encoding::{decode_siblings, encode, load_meta, Body, StoredSibling};
use super::history::HistoryEdits;
use super::index::{IndexCatalog, IndexEdits};
use super::keys;
use super::tree::{LeafCache, TreeEdits};
use super::tree_build::{self, Builds, Step, Which};
use super::{
    now_ms, CollectionMeta, CommitMode, LocalWrite, ReplicaError, ReplicaOptions, ReplicaStats,
    Request, WriteAck, CHUNK_SIZE, INLINE_VALUE_MAX,
};
use crate::store::{Store, StoreError, WriteBatch};

#[path = "purge.rs"]
mod purge;

pub use purge::PurgeStep;
pub(crate) use purge::{rejoin_mark, RejoinMark};

/// Most requests drained into one group commit.
const MAX_GROUP: usize = 1024;

/// How long the writer waits without a request before it takes a step of a tree build.
#[cfg(not(test))]
const BUILD_IDLE: Duration = Duration::from_millis(200);
#[cfg(test)]
const BUILD_IDLE: Duration = Duration::from_millis(2);

/// A tree build takes a step at least this often, however busy the writer.
#[cfg(not(test))]
const BUILD_EVERY: Duration = Duration::from_secs(1);
#[cfg(test)]
const BUILD_EVERY: Duration = Duration::from_millis(10);

/// How long tree builds wait after a step failed.
const BUILD_RETRY: Duration = Duration::from_secs(1);

/// Most siblings one key may hold: concurrent writes of that many replicas. A received
/// version that would add one more is refused and counted (a local write replaces them all).
pub const MAX_SIBLINGS: usize = 32;

/// Largest encoded sibling record accepted from a peer: well below sled's large-value
/// threshold (about 128 KiB), so no record ever becomes an unsynced blob file.
pub const MAX_RECORD_BYTES: usize = 96 * 1024;

/// What applying a batch of received versions did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// Versions that became siblings.
    pub applied: u64,
    /// Versions already held or already superseded.
    pub ignored: u64,
    /// Versions refused (invalid, too large, or too far in the future), with the reason.
    pub rejected: Vec<(String, String)>,
}

/// The writer's state.
pub(crate) struct Writer {
    store: Arc<dyn Store>,
    id: ReplicaId,
    clock: HlcClock,
    metas: HashMap<String, CollectionMeta>,
    commit: CommitMode,
    max_value_bytes: usize,
    max_clock_skew_ms: u64,
    stats: Arc<ReplicaStats>,
    generation: u64,
    /// Signs every version this node originates (none: unsigned, for tests).
    signer: Option<Arc<crate::signing::NodeSigner>>,
    /// Dot-index rows committed lately.
    dot_rows: RowCache,
    /// Leaf digests of the hash trees committed lately.
    leaf_cache: LeafCache,
    /// The declared secondary indexes, kept with each record.
    indexes: Arc<IndexCatalog>,
    /// The change log's last cursor and floor.
    log: LogState,
    /// Cursors the change log keeps.
    changes_kept: u64,
    /// Superseded versions kept per key (`[storage] history`).
    history: usize,
    /// Per collection, the stable frontier applied here (see [`purge`]).
    frontiers: HashMap<String, officesync_protocol::VersionVector>,
    /// Per collection, the last rejoin (see [`purge`]).
    rejoins: HashMap<String, RejoinMark>,
    /// The hash trees being built ([`tree_build`]); moved into each group while it is applied.
    builds: Builds,
    /// When the last request was served (builds step when the writer is idle).
    last_request: Instant,
    /// When a build takes a step however busy the writer is.
    build_due: Instant,
    /// No build step before this (set after a failed step).
    build_hold: Instant,
    /// Runs the writer's waits for a request with a deadline (made on first use).
    timer: Option<tokio::runtime::Runtime>,
}

enum Reply {
    Write(
        tokio::sync::oneshot::Sender<Result<WriteAck, ReplicaError>>,
        Result<WriteAck, ReplicaError>,
    ),
    Apply(
        tokio::sync::oneshot::Sender<Result<super::ApplyReport, ReplicaError>>,
        Result<ApplyReport, ReplicaError>,
    ),
    Unit(tokio::sync::oneshot::Sender<Result<(), ReplicaError>>),
    Purge(
        tokio::sync::oneshot::Sender<Result<PurgeStep, ReplicaError>>,
        Result<PurgeStep, ReplicaError>,
    ),
}

/// The writes of one drained group of requests: applied to the store as one atomic batch.
/// Sibling sets and collection states touched by the group are kept here so later requests
/// in the same group see earlier ones, and are written once at the end.
#[derive(Default)]
struct Group {
    batch: WriteBatch,
    siblings: HashMap<(String, String), Vec<StoredSibling>>,
    metas: HashMap<String, CollectionMeta>,
    writes: u64,
    /// Versions superseded by this group's local writes (see [`super::Shadow`]).
    superseded: Vec<Version>,
    /// This group's local versions still to sign: each dot with its signed message.
    unsigned: Vec<Unsigned>,
    /// The rows of the dot index this group changes.
    dots: DotEdits,
    /// The secondary-index entries this group changes.
    index: IndexEdits,
    /// The change-log entries of the versions this group applies.
    changes: ChangeEdits,
    /// The versions this group supersedes, for the keys' history.
    history: HistoryEdits,
    /// The leaf digests and leaf-index rows this group changes.
    tree: TreeEdits,
}

/// A local version of the group awaiting its signature: where it is, and the bytes to sign.
struct Unsigned {
    collection: String,
    key: String,
    dot: officesync_protocol::Dot,
    message: Vec<u8>,
}

/// Fewest unsigned versions in a group for which signing is split over two threads.
const PARALLEL_SIGNING_MIN: usize = 16;

impl Writer {
    pub(crate) fn new(
        store: Arc<dyn Store>,
        id: ReplicaId,
        opts: &ReplicaOptions,
        stats: Arc<ReplicaStats>,
        indexes: Arc<IndexCatalog>,
    ) -> Result<Self, ReplicaError> {
        let mut metas = HashMap::new();
        let store_ref = store.as_ref();
        let log = changes::load_state(store_ref)?;
        let (frontiers, rejoins) = purge::load(store_ref)?;
        let builds = Builds::load(store_ref)?;
        let mut last = officesync_protocol::Hlc::default();
        for info in super::read::collections(store.as_ref())? {
            last = last.max(info.meta.max_hlc);
            metas.insert(info.name, info.meta);
        }
        let writer = Self {
            store,
            id,
            clock: HlcClock::resume(last),
            metas,
            commit: opts.commit,
            max_value_bytes: opts.max_value_bytes,
            max_clock_skew_ms: opts.max_clock_skew_ms,
            generation: stats.committed_generation.load(Ordering::Relaxed),
            stats,
            signer: opts.signer.clone(),
            dot_rows: RowCache::default(),
            leaf_cache: LeafCache::default(),
            indexes,
            log,
            changes_kept: opts.changes_kept.max(1),
            history: opts.history,
            frontiers,
            rejoins,
            builds,
            last_request: Instant::now(),
            build_due: Instant::now(),
            build_hold: Instant::now(),
            timer: None,
        };
        writer.publish_builds();
        Ok(writer)
    }

    /// Serves requests until shutdown or until every handle is gone.
    ///
    /// Durable syncs run on a second thread so the next group is applied while the previous
    /// one is being flushed; each sync acknowledges every group applied before it started.
    pub(crate) fn run(mut self, mut rx: mpsc::Receiver<Request>) {
        let (to_syncer, syncer_rx) = std::sync::mpsc::channel::<Vec<Reply>>();
        let syncer = {
            let (store, stats) = (self.store.clone(), self.stats.clone());
            std::thread::Builder::new()
                .name("officesync-syncer".into())
                .spawn(move || syncer(store.as_ref(), &stats, syncer_rx))
        };
        let syncer = match syncer {
            Ok(handle) => Some(handle),
            Err(e) => {
                tracing::error!(error = %e, "cannot start the syncer thread; syncing inline");
                None
            }
        };
        let mut shutdown = None;
        while let Some(first) = self.next_request(&mut rx) {
            let mut replies = Vec::new();
            let mut next = Some(first);
            let mut group = Group {
                history: HistoryEdits::new(self.history),
                tree: TreeEdits::with(std::mem::take(&mut self.builds)),
                ..Group::default()
            };
            while let Some(req) = next.take() {
                match req {
                    Request::Local { write, reply } => {
                        let r = self.local_write(&mut group, write);
                        replies.push(Reply::Write(reply, r));
                    }
                    Request::Remote {
                        versions,
                        complete,
                        repair,
                        whole,
                        reply,
                    } => {
                        let r = match whole {
                            true => self.apply_whole(&mut group, versions, complete),
                            false => self.apply_remote(&mut group, versions, complete, repair),
                        };
                        replies.push(Reply::Apply(reply, r));
                    }
                    Request::Purge {
                        collection,
                        frontier,
                        rejoin,
                        after,
                        max_keys,
                        reply,
                    } => {
                        let r = match rejoin {
                            None => self.purge_step(
                                &mut group,
                                &collection,
                                &frontier,
                                after.as_deref(),
                                max_keys,
                            ),
                            Some(record) => self.rejoin_step(
                                &mut group,
                                &collection,
                                &frontier,
                                &record,
                                after.as_deref(),
                                max_keys,
                            ),
                        };
                        replies.push(Reply::Purge(reply, r));
                    }
                    Request::Sync { reply } => replies.push(Reply::Unit(reply)),
                    Request::TreeReady { collection, reply } => {
                        group.tree.builds.wait(&collection, reply);
                    }
                    Request::Shutdown { reply } => {
                        shutdown = Some(reply);
                        break;
                    }
                }
                if replies.len() < MAX_GROUP {
                    next = rx.try_recv().ok();
                }
            }
            let writes = group.writes;
            let committed = self.commit_group(group);
            if committed.is_err() {
                answer(&mut replies, committed);
            } else if self.commit == CommitMode::Sync
                || replies.iter().any(|r| matches!(r, Reply::Unit(_)))
            {
                self.stats
                    .pending_sync_writes
                    .fetch_add(writes, Ordering::Relaxed);
                let unsent = match syncer {
                    Some(_) => to_syncer.send(replies).err().map(|e| e.0),
                    None => Some(replies),
                };
                if let Some(mut replies) = unsent {
                    // No syncer thread: sync here.
                    let outcome = sync_store(self.store.as_ref(), &self.stats);
                    answer(&mut replies, outcome);
                }
            } else {
                answer(&mut replies, Ok::<(), ReplicaError>(()));
            }
            self.last_request = Instant::now();
            if shutdown.is_some() {
                break;
            }
        }
        // Trees whose keys are only in memory are written now (a scan of every record would
        // find them again at the next start).
        while self.build_step(Which::Collecting) {}
        // Let the syncer drain and make everything durable before answering shutdown.
        drop(to_syncer);
        if let Some(handle) = syncer {
            let _ = handle.join();
        }
        let last = sync_store(self.store.as_ref(), &self.stats);
        if let Some(reply) = shutdown {
            let _ = reply.send(last.map_err(ReplicaError::Store));
        }
    }

    /// Signs the group's local versions (on two threads when there are many) and puts each
    /// signature in its sibling record and in any copy of it the group superseded.
    fn sign_group(&self, g: &mut Group) {
        let Some(signer) = &self.signer else {
            return;
        };
        let unsigned = std::mem::take(&mut g.unsigned);
        if unsigned.is_empty() {
            return;
        }
        let sign_all = |part: &[Unsigned]| -> Vec<Vec<u8>> {
            part.iter()
                .map(|u| signer.sign_message(&u.message))
                .collect()
        };
        let signatures = if unsigned.len() >= PARALLEL_SIGNING_MIN {
            let (first, second) = unsigned.split_at(unsigned.len() / 2);
            std::thread::scope(|scope| {
                let other = std::thread::Builder::new()
                    .name("officesync-signer".into())
                    .spawn_scoped(scope, || sign_all(second));
                let mut sigs = sign_all(first);
                match other.map(|h| h.join()) {
                    Ok(Ok(rest)) => sigs.extend(rest),
                    // No second thread (or it died): sign the rest here.
                    _ => sigs.extend(sign_all(second)),
                }
                sigs
            })
        } else {
            sign_all(&unsigned)
        };
        // Each signature goes to the version it signs: same collection, key and dot.
        let signed: HashMap<(&str, &str, &officesync_protocol::Dot), Vec<u8>> = unsigned
            .iter()
            .map(|u| (u.collection.as_str(), u.key.as_str(), &u.dot))
            .zip(signatures)
            .collect();
        for ((coll, key), siblings) in g.siblings.iter_mut() {
            for s in siblings.iter_mut().filter(|s| s.signature.is_none()) {
                if let Some(sig) = signed.get(&(coll.as_str(), key.as_str(), &s.header.dot)) {
                    s.signature = Some(sig.clone());
                }
            }
        }
        for v in g.superseded.iter_mut().filter(|v| v.signature.is_none()) {
            if let Some(sig) = signed.get(&(v.collection.as_str(), v.key.as_str(), &v.dot)) {
                v.signature = Some(sig.clone());
            }
        }
        g.history
            .sign(|coll, key, dot| signed.get(&(coll, key, dot)).cloned());
    }

    fn commit_group(&mut self, mut g: Group) -> Result<(), ReplicaError> {
        self.sign_group(&mut g);
        let mut log = self.log;
        let mut write_back = || -> Result<(), ReplicaError> {
            for ((coll, key), siblings) in &g.siblings {
                if siblings.is_empty() {
                    // A purged key, or a new one whose only version was refused: no record.
                    g.batch.remove(keys::record(coll, key));
                } else {
                    g.batch.put(keys::record(coll, key), encode(siblings)?);
                }
            }
            for (coll, meta) in &g.metas {
                g.batch.put(keys::collection(coll), encode(meta)?);
            }
            g.dots.write(&mut g.batch)?;
            if !self.indexes.is_empty() {
                g.index.write(
                    &self.indexes,
                    self.store.as_ref(),
                    &g.siblings,
                    &mut g.batch,
                );
            }
            log.last = self.log.last + g.changes.len();
            if log.last / changes::TRIM_EVERY != self.log.last / changes::TRIM_EVERY {
                changes::trim(
                    self.store.as_ref(),
                    // Each collection once: those new in this group, and the known ones.
                    self.metas
                        .keys()
                        .chain(g.metas.keys().filter(|c| !self.metas.contains_key(*c)))
                        .cloned(),
                    &mut log,
                    self.changes_kept,
                    &mut g.batch,
                )?;
            }
            g.changes.write(self.log.last, log.floor, &mut g.batch)?;
            g.history.write(self.store.as_ref(), &mut g.batch)?;
            g.tree
                .write(self.store.as_ref(), &mut self.leaf_cache, &mut g.batch)?;
            if !g.batch.is_empty() {
                g.batch.put(
                    keys::meta("generation"),
                    (self.generation + 1).to_be_bytes().to_vec(),
                );
                self.store.apply(std::mem::take(&mut g.batch))?;
                self.generation += 1;
            }
            Ok(())
        };
        let outcome = write_back();
        self.builds = std::mem::take(&mut g.tree.builds);
        match &outcome {
            Ok(()) => self.builds.committed(),
            Err(_) => self.builds.failed(),
        }
        self.publish_builds();
        match outcome {
            Ok(()) => {
                self.log = log;
                self.stats.cursor.committed(self.generation, log.last);
                self.dot_rows.committed(std::mem::take(&mut g.dots));
                self.stats
                    .shadow
                    .add(self.generation, std::mem::take(&mut g.superseded));
                self.stats.durable.applied(
                    self.generation,
                    g.metas.iter().map(|(c, m)| (c.clone(), m.vv.clone())),
                );
                self.metas.extend(g.metas);
                self.stats
                    .committed_generation
                    .store(self.generation, Ordering::Release);
                if self.commit != CommitMode::Sync {
                    self.stats.flush_signal.dirty();
                }
                Ok(())
            }
            Err(e) => {
                self.leaf_cache.clear();
                tracing::error!(error = %e, "store write failed; failing the writes of this group");
                Err(e)
            }
        }
    }

    /// A bulk apply: each collection of `versions` that has no key yet gets its tree built
    /// once the writer is idle, rather than kept version by version ([`tree_build`]).
    fn start_builds(
        &mut self,
        g: &mut Group,
        versions: &[(Version, VersionHeader)],
    ) -> Result<(), ReplicaError> {
        let mut seen: Option<&str> = None;
        for (v, _) in versions {
            let coll = v.collection.as_str();
            if seen == Some(coll) || g.tree.builds.contains(coll) {
                continue;
            }
            seen = Some(coll);
            if names::validate_collection_name(coll).is_err() {
                continue; // refused on its own
            }
            if self.meta(g, coll)?.keys == 0 {
                tracing::info!(
                    collection = coll,
                    versions = versions.len(),
                    "bulk apply into an empty collection: its hash tree is built once the \
                     writer is idle"
                );
                g.tree.builds.start(coll, &mut g.batch);
            }
        }
        Ok(())
    }

    /// The next request. While a hash tree is being built, the writer takes build steps when
    /// no request came for [`BUILD_IDLE`], when a repair read waits for the tree, and at
    /// least every [`BUILD_EVERY`].
    fn next_request(&mut self, rx: &mut mpsc::Receiver<Request>) -> Option<Request> {
        use tokio::sync::mpsc::error::TryRecvError;
        loop {
            if self.builds.len() == 0 {
                return rx.blocking_recv();
            }
            let now = Instant::now();
            if now >= self.build_hold && now >= self.build_due {
                self.build_step(Which::Busy);
                continue;
            }
            match rx.try_recv() {
                Ok(r) => return Some(r),
                Err(TryRecvError::Disconnected) => return None,
                Err(TryRecvError::Empty) => {}
            }
            let idle_at = (self.last_request + BUILD_IDLE).max(self.build_hold);
            if now >= self.build_hold && (self.builds.urgent() || now >= idle_at) {
                self.build_step(Which::Any);
                continue;
            }
            let wake = idle_at.min(self.build_due.max(self.build_hold));
            let timer = match &mut self.timer {
                Some(t) => t,
                None => match tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()
                {
                    Ok(t) => self.timer.insert(t),
                    Err(e) => {
                        tracing::warn!(error = %e, "no timer for the writer; building now");
                        self.build_step(Which::Any);
                        continue;
                    }
                },
            };
            let wait = wake.saturating_duration_since(now);
            if let Ok(r) = timer.block_on(async { tokio::time::timeout(wait, rx.recv()).await }) {
                return r;
            }
        }
    }

    /// Tells readers how many trees are being built (their repair reads wait while any is).
    fn publish_builds(&self) {
        self.stats
            .trees_building
            .store(self.builds.len() as u64, Ordering::Release);
    }

    /// One step of a tree build of those `which` names ([`Builds::step`]); a built tree is
    /// checked against its collection's digest. Returns whether there was anything to do.
    fn build_step(&mut self, which: Which) -> bool {
        let metas = &self.metas;
        let step = self.builds.step(self.store.as_ref(), which, |c| {
            metas.get(c).map_or(0, |m| m.keys)
        });
        let now = Instant::now();
        self.build_due = now + BUILD_EVERY;
        match step {
            Ok(Step::Built(built)) => {
                self.stats.trees_built.fetch_add(1, Ordering::Relaxed);
                let coll = built.collection.as_str();
                let keys = metas.get(coll).map_or(0, |m| m.keys);
                match tree_build::folded(self.store.as_ref(), coll) {
                    Ok(d) if metas.get(coll).is_some_and(|m| m.digest == d) => {
                        tracing::info!(
                            collection = coll,
                            keys,
                            seconds = built.took.as_secs_f64(),
                            "hash tree built"
                        );
                    }
                    Ok(d) => tracing::error!(
                        collection = coll,
                        tree = %d,
                        "the hash tree built does not fold to the collection digest; repairs \
                         of this collection will send more than the difference"
                    ),
                    Err(e) => {
                        tracing::warn!(collection = coll, error = %e, "cannot check the tree built")
                    }
                }
                self.publish_builds();
                built.answer();
            }
            Ok(Step::Idle) => return false,
            Ok(Step::Progress) => {}
            Err(e) => {
                tracing::warn!(error = %e, "a hash tree build step failed; retrying in a second");
                self.builds.step_failed(&e);
                self.build_hold = now + BUILD_RETRY;
                return false;
            }
        }
        self.publish_builds();
        true
    }

    /// The group's copy of a collection's state, taken from the cache or the store.
    fn meta<'g>(
        &self,
        g: &'g mut Group,
        coll: &str,
    ) -> Result<&'g mut CollectionMeta, ReplicaError> {
        if !g.metas.contains_key(coll) {
            let meta = match self.metas.get(coll) {
                Some(m) => m.clone(),
                None => load_meta(self.store.as_ref(), coll)?,
            };
            g.metas.insert(coll.to_owned(), meta);
        }
        // Invariant: inserted just above when missing.
        g.metas.get_mut(coll).ok_or(ReplicaError::Closed)
    }

    /// Takes a key's sibling set out of the group, or reads it from the store.
    fn take_siblings(
        &self,
        g: &mut Group,
        coll: &str,
        key: &str,
    ) -> Result<Vec<StoredSibling>, ReplicaError> {
        if let Some(s) = g.siblings.remove(&(coll.to_owned(), key.to_owned())) {
            return Ok(s);
        }
        let stored = match self.store.get(&keys::record(coll, key))? {
            None => Vec::new(),
            Some(raw) => decode_siblings(&raw, &format!("{coll}/{key}"))?,
        };
        g.index
            .note_before(&self.indexes, self.store.as_ref(), coll, key, &stored);
        Ok(stored)
    }

    /// A copy of a key's sibling set as the group sees it.
    fn held_siblings(
        &self,
        g: &Group,
        coll: &str,
        key: &str,
    ) -> Result<Vec<StoredSibling>, ReplicaError> {
        if let Some(s) = g.siblings.get(&(coll.to_owned(), key.to_owned())) {
            return Ok(s.clone());
        }
        match self.store.get(&keys::record(coll, key))? {
            None => Ok(Vec::new()),
            Some(raw) => decode_siblings(&raw, &format!("{coll}/{key}")),
        }
    }

    /// Loads into the group the dot-index rows a merge changes: that of the new `dot` and
    /// those of the siblings it supersedes. On failure, puts `siblings` back into the group.
    fn load_dot_rows(
        &mut self,
        g: &mut Group,
        coll: &str,
        key: &str,
        dot: &officesync_protocol::Dot,
        siblings: Vec<StoredSibling>,
        superseded: impl Fn(&StoredSibling) -> bool,
    ) -> Result<Vec<StoredSibling>, ReplicaError> {
        let (store, cache) = (self.store.as_ref(), &mut self.dot_rows);
        let loaded = g.dots.load(cache, store, coll, dot).and_then(|()| {
            siblings
                .iter()
                .filter(|s| superseded(s))
                .try_for_each(|s| g.dots.load(cache, store, coll, &s.header.dot))
        });
        match loaded {
            Ok(()) => Ok(siblings),
            Err(e) => {
                g.siblings
                    .insert((coll.to_owned(), key.to_owned()), siblings);
                Err(e)
            }
        }
    }

    fn local_write(&mut self, g: &mut Group, write: LocalWrite) -> Result<WriteAck, ReplicaError> {
        let LocalWrite {
            collection,
            key,
            value,
            author,
        } = write;
        let (coll, key) = (collection.as_str(), key.as_str());
        // The fallible reads and checks come first, so an error leaves the group as it was.
        self.check_collection_room(g, coll)?;
        let next = self.meta(g, coll)?.vv.get(&self.id) + 1;
        let dot = officesync_protocol::Dot::new(self.id.clone(), next);
        let siblings = self.take_siblings(g, coll, key)?;
        if siblings.iter().any(|s| s.header.context.covers(&dot)) {
            g.siblings
                .insert((coll.to_owned(), key.to_owned()), siblings);
            self.stats.local_refused.fetch_add(1, Ordering::Relaxed);
            return Err(ReplicaError::WriteSuperseded {
                collection: coll.to_owned(),
                key: key.to_owned(),
                dot: dot.to_string(),
            });
        }
        // A local write supersedes every sibling it read.
        let siblings = self.load_dot_rows(g, coll, key, &dot, siblings, |_| true)?;
        let hlc = self.clock.tick(now_ms());
        let mut meta = std::mem::take(self.meta(g, coll)?);
        meta.vv.add_dot(&dot);
        let version = Version {
            collection: coll.to_owned(),
            key: key.to_owned(),
            dot: dot.clone(),
            hlc,
            context: merge::local_context(&siblings),
            value,
            author: Some(author),
            signature: None,
        };
        let header = version.header();
        if let Some(v) = version
            .value
            .as_ref()
            .filter(|v| v.len() > INLINE_VALUE_MAX)
        {
            g.index.note_chunked(&self.indexes, coll, key, &dot, v);
        }
        if self.signer.is_some() {
            // Signed with the rest of the group before it is committed.
            let message = officesync_protocol::signing::signed_message_of(
                coll,
                key,
                &header,
                version.author.as_deref(),
            );
            g.unsigned.push(Unsigned {
                collection: coll.to_owned(),
                key: key.to_owned(),
                dot: dot.clone(),
                message,
            });
        }
        // Until this write is durable, peers may still need what it supersedes.
        for s in &siblings {
            if let Ok(value) = super::read::load_value(self.store.as_ref(), coll, s) {
                g.superseded.push(Version {
                    collection: coll.to_owned(),
                    key: key.to_owned(),
                    dot: s.header.dot.clone(),
                    hlc: s.header.hlc,
                    context: s.header.context.clone(),
                    value,
                    author: s.author.clone(),
                    signature: s.signature.clone(),
                });
            }
        }
        // Checked above: nothing held covers the new dot, so the merge inserts it.
        let (_, siblings) = merge_version(&mut meta, siblings, version, header, g);
        g.metas.insert(coll.to_owned(), meta);
        g.siblings
            .insert((coll.to_owned(), key.to_owned()), siblings);
        g.writes += 1;
        Ok(WriteAck { dot, hlc })
    }

    fn apply_remote(
        &mut self,
        g: &mut Group,
        versions: Vec<(Version, VersionHeader)>,
        complete: Vec<(String, ReplicaId, u64)>,
        repair: bool,
    ) -> Result<ApplyReport, ReplicaError> {
        self.check_contexts(g, &versions, &complete)?;
        if !repair && versions.len() >= tree_build::BULK_MIN {
            self.start_builds(g, &versions)?;
        }
        let mut report = ApplyReport::default();
        let now = now_ms();
        for (v, header) in versions {
            if let Err(reason) = self.check_remote(&v, now) {
                self.stats.remote_rejected.fetch_add(1, Ordering::Relaxed);
                report.rejected.push((v.dot.to_string(), reason));
                continue;
            }
            if !repair && self.meta(g, &v.collection)?.vv.covers(&v.dot) {
                report.ignored += 1;
                continue;
            }
            let (coll, key) = (v.collection.clone(), v.key.clone());
            let siblings = self.take_siblings(g, &coll, &key)?;
            let vv = &self.meta(g, &coll)?.vv;
            if self.is_obsolete(&coll, vv, &v.dot, &siblings) {
                // Held once and superseded or purged here: it must not come back.
                g.siblings.insert((coll, key), siblings);
                self.stats.obsolete_dropped.fetch_add(1, Ordering::Relaxed);
                report.ignored += 1;
                continue;
            }
            if let Err(reason) = room_for(&siblings, &header, &v) {
                g.siblings.insert((coll, key), siblings);
                self.stats.remote_rejected.fetch_add(1, Ordering::Relaxed);
                report.rejected.push((v.dot.to_string(), reason));
                continue;
            }
            let siblings = self.load_dot_rows(g, &coll, &key, &header.dot, siblings, |s| {
                header.context.covers(&s.header.dot)
            })?;
            if let Some(value) = v.value.as_ref().filter(|v| v.len() > INLINE_VALUE_MAX) {
                g.index
                    .note_chunked(&self.indexes, &coll, &key, &header.dot, value);
            }
            let mut meta = std::mem::take(self.meta(g, &coll)?);
            let (applied, siblings) = merge_version(&mut meta, siblings, v, header, g);
            if applied {
                report.applied += 1;
            } else {
                report.ignored += 1;
            }
            g.metas.insert(coll.clone(), meta);
            g.siblings.insert((coll, key), siblings);
        }
        for (coll, origin, counter) in complete {
            names::validate_collection_name(&coll)?;
            self.meta(g, &coll)?.vv.raise(&origin, counter);
        }
        g.writes += 1;
        self.stats
            .remote_applied
            .fetch_add(report.applied, Ordering::Relaxed);
        Ok(report)
    }

    /// Refuses a new collection past [`MAX_HANDSHAKE_COLLECTIONS`] (a handshake lists every
    /// collection's vector, and its size is bounded).
    ///
    /// [`MAX_HANDSHAKE_COLLECTIONS`]: officesync_protocol::wire::MAX_HANDSHAKE_COLLECTIONS
    fn check_collection_room(&self, g: &Group, coll: &str) -> Result<(), ReplicaError> {
        use officesync_protocol::wire::MAX_HANDSHAKE_COLLECTIONS as LIMIT;
        let known = self.metas.contains_key(coll) || g.metas.contains_key(coll);
        let held = self.metas.len()
            + g.metas
                .keys()
                .filter(|c| !self.metas.contains_key(*c))
                .count();
        if !known && held >= LIMIT {
            return Err(ReplicaError::TooManyCollections {
                collection: coll.to_owned(),
                limit: LIMIT,
            });
        }
        Ok(())
    }

    /// The last line of defence against a poisoned causal context (the sync session checks
    /// first): every context entry of every version must be held once the request's vector
    /// advances are applied, and none may claim more of this node's own origin than it issued.
    /// A request that breaks this is refused whole, before anything changes.
    fn check_contexts(
        &mut self,
        g: &mut Group,
        versions: &[(Version, VersionHeader)],
        complete: &[(String, ReplicaId, u64)],
    ) -> Result<(), ReplicaError> {
        let mut after: HashMap<&str, officesync_protocol::VersionVector> = HashMap::new();
        for (v, _) in versions {
            if names::validate_collection_name(&v.collection).is_err() {
                continue; // refused on its own below
            }
            if !after.contains_key(v.collection.as_str()) {
                self.check_collection_room(g, &v.collection)?;
                let mut vv = self.meta(g, &v.collection)?.vv.clone();
                for (c, origin, through) in complete {
                    if *c == v.collection {
                        vv.raise(origin, *through);
                    }
                }
                after.insert(&v.collection, vv);
            }
            let Some(vv) = after.get(v.collection.as_str()) else {
                continue;
            };
            // Its own origin's entry is below its counter (checked on receipt); any other,
            // this node's own included, must be held.
            let bad = v
                .context
                .iter()
                .find(|(o, n)| *o != &v.dot.origin && *n > vv.get(o));
            if let Some((o, n)) = bad {
                return Err(ReplicaError::CausalContext {
                    dot: v.dot.to_string(),
                    covers: format!("{o}:{n}"),
                });
            }
        }
        Ok(())
    }

    /// An all-or-nothing apply: every version is checked first ([`Writer::check_whole`], then
    /// the causal contexts); a refusal leaves the group as it was (not even an empty state of a
    /// collection the request named is written).
    fn apply_whole(
        &mut self,
        g: &mut Group,
        versions: Vec<(Version, VersionHeader)>,
        complete: Vec<(String, ReplicaId, u64)>,
    ) -> Result<ApplyReport, ReplicaError> {
        let loaded: std::collections::HashSet<String> = g.metas.keys().cloned().collect();
        let checked = self
            .check_whole(g, &versions)
            .and_then(|()| self.check_contexts(g, &versions, &complete));
        if let Err(e) = checked {
            // Only states loaded (unchanged) by the checks are in the group: drop them.
            g.metas.retain(|c, _| loaded.contains(c));
            return Err(e);
        }
        self.apply_remote(g, versions, complete, false)
    }

    /// For an all-or-nothing apply: finds the first version [`Writer::apply_remote`] would
    /// refuse (its names, clock or size, or no room among its key's siblings, counting the
    /// versions before it), before anything changes. Its causal contexts are checked by
    /// `apply_remote` itself, which refuses the request whole.
    fn check_whole(
        &mut self,
        g: &mut Group,
        versions: &[(Version, VersionHeader)],
    ) -> Result<(), ReplicaError> {
        let now = now_ms();
        let mut scratch: HashMap<(String, String), Vec<StoredSibling>> = HashMap::new();
        for (v, header) in versions {
            let refused = |reason: String| ReplicaError::Refused {
                collection: v.collection.clone(),
                key: v.key.clone(),
                dot: v.dot.to_string(),
                reason,
            };
            self.check_received(v, now).map_err(refused)?;
            if self.meta(g, &v.collection)?.vv.covers(&v.dot) {
                continue;
            }
            let slot = (v.collection.clone(), v.key.clone());
            let siblings = match scratch.entry(slot) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    let held = self.held_siblings(g, &v.collection, &v.key)?;
                    e.insert(held)
                }
            };
            room_for(siblings, header, v).map_err(refused)?;
            merge::apply(siblings, stored(v, header.clone()));
        }
        Ok(())
    }

    fn check_remote(&mut self, v: &Version, now: u64) -> Result<(), String> {
        self.check_received(v, now)?;
        self.clock
            .observe(v.hlc, now, self.max_clock_skew_ms)
            .map_err(|e| e.to_string())
    }

    /// The checks of a received version that need nothing but the version and the clock.
    fn check_received(&self, v: &Version, now: u64) -> Result<(), String> {
        names::validate_collection_name(&v.collection).map_err(|e| e.to_string())?;
        names::validate_key(&v.key).map_err(|e| e.to_string())?;
        if v.dot.counter == 0 {
            return Err("counter 0 is not a valid dot".into());
        }
        if let Some(val) = &v.value {
            if val.len() > self.max_value_bytes {
                return Err(format!("value of {} bytes exceeds the limit", val.len()));
            }
        }
        check_skew(v.hlc, now, self.max_clock_skew_ms).map_err(|e| e.to_string())
    }
}

/// Syncs the store once for every batch of groups queued since the last sync, then
/// acknowledges them all.
fn syncer(store: &dyn Store, stats: &ReplicaStats, rx: std::sync::mpsc::Receiver<Vec<Reply>>) {
    while let Ok(first) = rx.recv() {
        let mut replies = first;
        while let Ok(more) = rx.try_recv() {
            replies.extend(more);
        }
        let outcome = sync_store(store, stats);
        answer(&mut replies, outcome);
    }
}

/// One durable sync; counts the writes it made durable.
fn sync_store(store: &dyn Store, stats: &ReplicaStats) -> Result<(), StoreError> {
    // Writes applied before this point are covered by the sync below.
    let writes = stats.pending_sync_writes.swap(0, Ordering::Relaxed);
    let generation = stats.committed_generation.load(Ordering::Acquire);
    let applied = stats.durable.snapshot();
    match store.sync() {
        Ok(()) => {
            if let Err(e) = store.mark_durable(generation) {
                tracing::warn!(error = %e, "cannot record the durable generation");
            }
            stats.shadow.forget_through(generation);
            stats.cursor.durable_through(generation);
            stats.durable.publish(applied);
            stats.syncs.fetch_add(1, Ordering::Relaxed);
            stats.synced_writes.fetch_add(writes, Ordering::Relaxed);
            Ok(())
        }
        Err(e) => {
            tracing::error!(error = %e, "store sync failed; failing the writes it covered");
            Err(e)
        }
    }
}

fn answer<E: Into<ReplicaError>>(replies: &mut Vec<Reply>, outcome: Result<(), E>) {
    let outcome = outcome.map_err(Into::into);
    let fail = |e: &ReplicaError| e.for_another_write();
    for r in replies.drain(..) {
        match (r, &outcome) {
            (Reply::Write(tx, res), Ok(())) => drop(tx.send(res)),
            (Reply::Write(tx, _), Err(e)) => drop(tx.send(Err(fail(e)))),
            (Reply::Apply(tx, res), Ok(())) => drop(tx.send(res)),
            (Reply::Apply(tx, _), Err(e)) => drop(tx.send(Err(fail(e)))),
            (Reply::Unit(tx), Ok(())) => drop(tx.send(Ok(()))),
            (Reply::Unit(tx), Err(e)) => drop(tx.send(Err(fail(e)))),
            (Reply::Purge(tx, res), Ok(())) => drop(tx.send(res)),
            (Reply::Purge(tx, _), Err(e)) => drop(tx.send(Err(fail(e)))),
        }
    }
}

/// Merges one version (with its `header`, [`Version::header`]) into `siblings`: queues its
/// chunks and indexes its dot (whose dot-index rows [`Writer::load_dot_rows`] loaded), drops
/// what it supersedes (with their index entries; into the key's history, or with their
/// chunks when history is off) and
/// updates the counts and digest. Returns whether it became a sibling, and the new sibling
/// set.
fn merge_version(
    meta: &mut CollectionMeta,
    mut siblings: Vec<StoredSibling>,
    v: Version,
    header: VersionHeader,
    g: &mut Group,
) -> (bool, Vec<StoredSibling>) {
    let (batch, dots) = (&mut g.batch, &mut g.dots);
    // A duplicate or an obsolete version changes nothing.
    if merge::held_or_superseded(&siblings, &header.dot).is_some() {
        return (false, siblings);
    }
    g.changes
        .push(&v.collection, &v.key, &header, v.author.as_deref());
    let Version {
        collection,
        key,
        value,
        author,
        signature,
        ..
    } = v;
    let (coll, key) = (collection.as_str(), key.as_str());
    let was_empty = siblings.is_empty();
    let was_live = merge::winner(&siblings).is_some_and(|w| !w.header.value.is_tombstone());
    // Counted and indexed before the header moves into the record.
    let element = g.tree.toggle(coll, key, &header.dot, &header.value);
    meta.digest.xor(&element);
    if was_empty {
        g.tree.new_key(coll, key);
    }
    meta.max_hlc = meta.max_hlc.max(header.hlc);
    dots.insert(coll, &header.dot, key);
    // The value moves into the record (inline) or into its chunks: never copied whole.
    let body = match value {
        None => Body::None,
        Some(bytes) if bytes.len() <= INLINE_VALUE_MAX => Body::Inline(bytes),
        Some(bytes) => {
            let pieces = bytes.chunks(CHUNK_SIZE);
            let chunks = pieces.len() as u32;
            for (i, piece) in pieces.enumerate() {
                batch.put(keys::chunk(coll, &header.dot, i as u32), piece.to_vec());
            }
            Body::Chunked { chunks }
        }
    };
    let sibling = StoredSibling {
        header,
        body,
        author,
        signature,
    };
    if let Applied::Inserted { removed } = merge::apply(&mut siblings, sibling) {
        for old in removed {
            let element = g.tree.toggle(coll, key, &old.header.dot, &old.header.value);
            meta.digest.xor(&element);
            meta.versions -= 1;
            dots.remove(coll, &old.header.dot);
            g.history.supersede(coll, key, old, batch);
        }
    }
    meta.versions += 1;
    let is_live = merge::winner(&siblings).is_some_and(|w| !w.header.value.is_tombstone());
    if was_empty {
        meta.keys += 1;
    }
    match (was_live, is_live) {
        (false, true) => meta.records += 1,
        (true, false) => meta.records -= 1,
        _ => {}
    }
    (true, siblings)
}

/// The sibling record of `v` (with its `header`): its value inline when small, else as chunks.
fn stored(v: &Version, header: VersionHeader) -> StoredSibling {
    let body = match &v.value {
        None => Body::None,
        Some(bytes) if bytes.len() <= INLINE_VALUE_MAX => Body::Inline(bytes.clone()),
        Some(bytes) => Body::Chunked {
            chunks: bytes.chunks(CHUNK_SIZE).len() as u32,
        },
    };
    StoredSibling {
        header,
        body,
        author: v.author.clone(),
        signature: v.signature.clone(),
    }
}

/// Whether a received version may join `siblings`: refused when the key would hold more than
/// [`MAX_SIBLINGS`] siblings or an encoded record above [`MAX_RECORD_BYTES`]. Versions it
/// supersedes leave room; a duplicate or an obsolete version changes nothing and passes.
pub(super) fn room_for(
    siblings: &[StoredSibling],
    header: &VersionHeader,
    v: &Version,
) -> Result<(), String> {
    let kept: Vec<&StoredSibling> = siblings
        .iter()
        .filter(|s| !header.context.covers(&s.header.dot))
        .collect();
    if siblings.iter().any(|s| s.header.dot == header.dot)
        || kept.iter().any(|s| s.header.context.covers(&header.dot))
    {
        return Ok(());
    }
    if kept.len() >= MAX_SIBLINGS {
        return Err(format!(
            "{}/{} already has {MAX_SIBLINGS} siblings: the limit of siblings per key",
            v.collection, v.key
        ));
    }
    let inline = v.value.as_ref().filter(|b| b.len() <= INLINE_VALUE_MAX);
    // The header, the inline value, the author and the signature it brings, and framing.
    let new_bytes = codec::encoded_len(header).unwrap_or(usize::MAX)
        + inline.map_or(0, Vec::len)
        + v.author.as_ref().map_or(0, String::len)
        + v.signature.as_ref().map_or(0, Vec::len)
        + 16;
    let held: usize = kept
        .iter()
        .map(|s| codec::encoded_len(*s).unwrap_or(usize::MAX))
        .fold(0, usize::saturating_add);
    if held.saturating_add(new_bytes) > MAX_RECORD_BYTES {
        return Err(format!(
            "{}/{} would hold a record of {} bytes with its siblings: the limit of siblings \
             per key is {MAX_RECORD_BYTES} bytes",
            v.collection,
            v.key,
            held.saturating_add(new_bytes)
        ));
    }
    Ok(())
}

/// In periodic mode: syncs the store after a group of writes is committed, at most once per
/// `every` (a sync starts at least `every` after the one before), until told to stop. A group
/// committed when the last sync started `every` or longer ago is synced at once: a quiet
/// office's write is durable, and offered to its peers, without waiting out an interval,
/// while a busy one still syncs once an interval. An idle node's flusher sleeps without a
/// timer: at a thousand nodes on one machine, ten empty wakeups a second each were a quarter
/// of an idle township's CPU.
pub(crate) fn periodic_flusher(store: &dyn Store, stats: &ReplicaStats, every: Duration) {
    let signal = &stats.flush_signal;
    let mut synced: Option<u64> = None;
    // As if a sync had just run: the first interval after opening counts as a busy one.
    let mut last = Instant::now();
    while signal.wait_dirty() && signal.wait_until(last + every) {
        let generation = stats.committed_generation.load(Ordering::Acquire);
        if synced == Some(generation) && stats.pending_sync_writes.load(Ordering::Relaxed) == 0 {
            continue;
        }
        last = Instant::now();
        // Failures are logged inside and retried an interval later; writes were acknowledged
        // already in this mode.
        if sync_store(store, stats).is_ok() {
            synced = Some(generation);
        } else {
            signal.dirty();
        }
    }
}

/// Wakes the periodic flusher ([`periodic_flusher`]): when a group of writes is committed,
/// and to stop it.
#[derive(Debug, Default)]
pub(crate) struct FlushSignal {
    state: std::sync::Mutex<FlushState>,
    cv: std::sync::Condvar,
}

#[derive(Debug, Default)]
struct FlushState {
    /// A group was committed since the flusher last started an interval's sync.
    dirty: bool,
    stop: bool,
}

impl FlushSignal {
    fn lock(&self) -> std::sync::MutexGuard<'_, FlushState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A group of writes was committed: the flusher syncs within an interval.
    pub(crate) fn dirty(&self) {
        let mut s = self.lock();
        if !s.dirty {
            s.dirty = true;
            drop(s);
            self.cv.notify_one();
        }
    }

    /// Stops the flusher (after the sync it may be in).
    pub(crate) fn stop(&self) {
        self.lock().stop = true;
        self.cv.notify_all();
    }

    /// Waits until a group was committed (true) or the flusher is stopped (false).
    fn wait_dirty(&self) -> bool {
        let mut s = self.lock();
        while !s.dirty && !s.stop {
            s = self.cv.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        !s.stop
    }

    /// Waits until `deadline` (true; at once when it has passed), or until stopped (false);
    /// groups committed from here on wait for the next sync.
    fn wait_until(&self, deadline: Instant) -> bool {
        let mut s = self.lock();
        loop {
            if s.stop {
                return false;
            }
            let now = Instant::now();
            if now >= deadline {
                s.dirty = false;
                return true;
            }
            s = self
                .cv
                .wait_timeout(s, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

#[cfg(test)]
mod flush_signal_tests {
    use super::FlushSignal;
    use std::time::{Duration, Instant};

    #[test]
    fn a_passed_deadline_lets_the_flusher_sync_at_once() {
        let signal = FlushSignal::default();
        signal.dirty();
        assert!(signal.wait_dirty());
        // The last sync started longer than an interval ago: no wait, and the committed group
        // is taken by this sync.
        assert!(signal.wait_until(Instant::now() - Duration::from_secs(1)));
        assert!(!signal.lock().dirty);
    }

    #[test]
    fn a_stopped_flusher_does_not_wait_out_its_interval() {
        let signal = FlushSignal::default();
        signal.dirty();
        signal.stop();
        assert!(!signal.wait_until(Instant::now() + Duration::from_secs(3600)));
        assert!(!signal.wait_dirty());
    }
}
