//! The replica: versioned records of every collection on top of a [`Store`], with the merge
//! rules, dot index, version vectors and digests kept in step in one atomic batch per write.
//!
//! All mutations go through one writer thread (see [`writer`]), which gives group commit for
//! free: it drains every queued write, applies each as its own batch, syncs once and then
//! acknowledges them all. Reads run on the blocking pool straight against the store.

mod changes;
mod dots;
mod encoding;
mod history;
mod index;
mod keys;
mod read;
mod tree;
mod tree_build;
mod writer;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bincode::{Decode, Encode};
use officesync_protocol::names::{self, NameError};
use officesync_protocol::query::Filter;
use officesync_protocol::{Digest, Dot, Hlc, ReplicaId, Version, VersionHeader, VersionVector};
use serde::Serialize;
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};

use crate::store::{Store, StoreError};

pub use changes::{Change, ChangePage, CHANGES_MAX_EXAMINED};
pub use history::{HistoryEntry, HistoryRead, DEFAULT_HISTORY, MAX_HISTORY, MAX_HISTORY_READ};
pub use index::{
    IndexCatalog, CURSOR_MARK, MAX_CURSOR_BYTES, MAX_INDEXES_PER_COLLECTION,
    MAX_INDEX_POINTER_BYTES,
};
pub use read::{
    ConflictsPage, SiblingRead, SiblingsRead, WinnerRead, SCAN_FILTER_BYTES, SCAN_MAX_EXAMINED,
    SCAN_PAGE_BYTES, SIBLING_VALUES_BUDGET,
};
pub use tree::lose_keys;
pub use writer::{ApplyReport, PurgeStep};

/// Values longer than this are stored in chunks rather than inside the sibling record.
pub const INLINE_VALUE_MAX: usize = 1024;
/// Size of one stored chunk of a large value.
pub const CHUNK_SIZE: usize = 8 * 1024;

/// Errors from the replica.
#[derive(Debug, Error)]
pub enum ReplicaError {
    /// A collection name or key was invalid.
    #[error(transparent)]
    Name(#[from] NameError),
    /// A value exceeded the configured maximum.
    #[error("value of {len} bytes exceeds the limit of {max} bytes (storage.max_value_bytes)")]
    ValueTooLarge {
        /// The value's length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored record could not be decoded.
    #[error("stored record {what} is unreadable: {detail}")]
    Corrupt {
        /// Which record.
        what: String,
        /// Why.
        detail: String,
    },
    /// The data dir belongs to another node.
    #[error("data dir belongs to node {found:?}, but this node is {expected:?} (fix node.data_dir or node.name)")]
    WrongNode {
        /// Name found in the store.
        found: String,
        /// Name configured.
        expected: String,
    },
    /// A local write that the merge rules would drop: a version held here already covers
    /// the new dot. It cannot happen while every stored context covers only dots this node
    /// holds; it is refused (and counted) rather than acknowledged and lost.
    #[error("write of {collection}/{key} refused: the version it would become ({dot}) is already superseded here (a corrupt causal context)")]
    WriteSuperseded {
        /// The collection.
        collection: String,
        /// The key.
        key: String,
        /// The dot the write would have had.
        dot: String,
    },
    /// Received versions whose causal context covers dots this node does not hold (after
    /// the whole batch): nothing of the batch is applied.
    #[error("version {dot} covers {covers} in its causal context, beyond what this node holds")]
    CausalContext {
        /// The version's dot.
        dot: String,
        /// The first entry of its context this node does not hold, as `origin:counter`.
        covers: String,
    },
    /// A collection past the limit of collections one node holds.
    #[error("this node already holds {limit} collections; refused new collection {collection}")]
    TooManyCollections {
        /// The collection refused.
        collection: String,
        /// The limit.
        limit: usize,
    },
    /// A version of an all-or-nothing apply (an offline bundle) that this node would refuse
    /// (clock skew, size, too many siblings): nothing of the request is applied.
    #[error("{collection}/{key} version {dot} is refused: {reason}")]
    Refused {
        /// Its collection.
        collection: String,
        /// Its key.
        key: String,
        /// Its dot.
        dot: String,
        /// Why.
        reason: String,
    },
    /// An `[indexes]` declaration that cannot be used.
    #[error("{0}")]
    BadIndex(String),
    /// An `after` cursor of an index that the query cannot resume.
    #[error("{0}")]
    BadCursor(String),
    /// A change-feed cursor older than what the change log keeps.
    #[error("cursor {since} of {collection} is older than the change log keeps (it starts after {oldest}); start again from 0")]
    CursorExpired {
        /// The collection.
        collection: String,
        /// The cursor asked for.
        since: u64,
        /// Cursors at or below this are no longer served.
        oldest: u64,
    },
    /// The replica is shutting down.
    #[error("the store is shutting down")]
    Closed,
}

impl ReplicaError {
    /// The same failure for another write of a group whose commit or sync failed: store and
    /// corruption errors keep their kind, anything else is reported as a store error.
    pub(crate) fn for_another_write(&self) -> ReplicaError {
        match self {
            Self::Store(e) => Self::Store(e.clone()),
            Self::Corrupt { what, detail } => Self::Corrupt {
                what: what.clone(),
                detail: detail.clone(),
            },
            other => Self::Store(StoreError::Io(other.to_string())),
        }
    }
}

/// When writes become durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitMode {
    /// Flush (and fsync) before acknowledging; concurrent writers share one flush.
    Sync,
    /// Acknowledge once applied; flush every given interval.
    Periodic(Duration),
}

/// How to open a replica.
#[derive(Debug, Clone)]
pub struct ReplicaOptions {
    /// This node's name.
    pub node: String,
    /// Durability of acknowledged writes.
    pub commit: CommitMode,
    /// Largest value accepted, in bytes.
    pub max_value_bytes: usize,
    /// Largest tolerated lead of a received HLC over the local clock.
    pub max_clock_skew_ms: u64,
    /// Signs the versions this node originates (none: they go unsigned, as in unit tests).
    pub signer: Option<Arc<crate::signing::NodeSigner>>,
    /// Secondary indexes: per collection, the JSON pointers indexed (`[indexes]`).
    pub indexes: std::collections::BTreeMap<String, Vec<String>>,
    /// Cursors the change log keeps (older entries are trimmed).
    pub changes_kept: u64,
    /// Superseded versions kept per key (`[storage] history`; 0: none).
    pub history: usize,
}

/// Cursors the change log keeps by default.
pub const DEFAULT_CHANGES_KEPT: u64 = 1_000_000;

impl ReplicaOptions {
    /// Defaults for node `node`: sync durability, 4 MiB values, 5 minutes of skew.
    pub fn new(node: &str) -> Self {
        Self {
            node: node.to_owned(),
            commit: CommitMode::Sync,
            max_value_bytes: 4 << 20,
            max_clock_skew_ms: 300_000,
            signer: None,
            indexes: std::collections::BTreeMap::new(),
            changes_kept: DEFAULT_CHANGES_KEPT,
            history: DEFAULT_HISTORY,
        }
    }
}

/// Per-collection state, persisted with every write.
#[derive(Debug, Clone, Default, PartialEq, Eq, Encode, Decode)]
pub struct CollectionMeta {
    /// Per origin, the highest counter fully received (own writes included).
    pub vv: VersionVector,
    /// Order-independent hash of every current version.
    pub digest: Digest,
    /// Keys with at least one version (tombstones included).
    pub keys: u64,
    /// Keys whose winner is not a tombstone.
    pub records: u64,
    /// Current versions (siblings and tombstones included).
    pub versions: u64,
    /// Highest HLC held.
    pub max_hlc: Hlc,
}

/// A collection and its state.
#[derive(Debug, Clone)]
pub struct CollectionInfo {
    /// The collection's name.
    pub name: String,
    /// Its state.
    pub meta: CollectionMeta,
}

/// The acknowledgement of a local write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WriteAck {
    /// The new version's dot.
    pub dot: Dot,
    /// Its timestamp.
    pub hlc: Hlc,
}

/// One sibling of a key as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sibling {
    /// Its dot.
    pub dot: Dot,
    /// Its timestamp.
    pub hlc: Hlc,
    /// The value, `None` for a tombstone.
    pub value: Option<Vec<u8>>,
    /// Who wrote it (`USER@NODE`, or `NODE` for a system write); `None` for versions from
    /// before authors existed or received over protocol version 1.
    pub author: Option<String>,
}

/// A key with every current sibling, the winner first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The key.
    pub key: String,
    /// Siblings, winner first, the rest in dot order. Never empty.
    pub siblings: Vec<Sibling>,
}

impl Record {
    /// The winning sibling.
    pub fn winner(&self) -> &Sibling {
        // Invariant: a Record is only built from a non-empty sibling set.
        &self.siblings[0]
    }

    /// True when the winner is a tombstone.
    pub fn is_deleted(&self) -> bool {
        self.winner().value.is_none()
    }
}

/// A page of a scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanPage {
    /// Live records (winner not a tombstone), in key order: each winner with its value.
    pub records: Vec<WinnerRead>,
    /// The key to pass as `after` for the next page, when there is one.
    pub next: Option<String>,
}

/// Counters kept by the replica for status and metrics.
#[derive(Debug, Default)]
pub struct ReplicaStats {
    /// Local writes acknowledged.
    pub local_writes: AtomicU64,
    /// Received versions applied.
    pub remote_applied: AtomicU64,
    /// Received versions rejected (clock skew, invalid, siblings past the limit).
    pub remote_rejected: AtomicU64,
    /// Local writes refused because the merge would have dropped them.
    pub local_refused: AtomicU64,
    /// Durable syncs performed.
    pub syncs: AtomicU64,
    /// Writes acknowledged by those syncs (their ratio is the group-commit size).
    pub synced_writes: AtomicU64,
    /// Writes applied and waiting for the next sync.
    pub pending_sync_writes: AtomicU64,
    /// Generation of the last group of writes applied to the store.
    pub committed_generation: AtomicU64,
    /// Scan pages with `where` answered from a secondary index.
    pub indexed_scans: AtomicU64,
    /// Scan pages with `where` answered by reading every record of the range.
    pub full_scans: AtomicU64,
    /// Keys forgotten because their only version was a tombstone below the stable frontier.
    pub tombstones_purged: AtomicU64,
    /// Received versions dropped as obsolete: below the frontier, covered by this node's
    /// vector and not held (held once and superseded or purged here).
    pub obsolete_dropped: AtomicU64,
    /// Versions dropped by rejoins (this node was left out of a frontier while away).
    pub rejoin_dropped: AtomicU64,
    /// What is applied, and what of it is durable (published to replication).
    pub(crate) durable: DurableCell,
    /// Wakes the periodic flusher when a group is committed.
    pub(crate) flush_signal: writer::FlushSignal,
    /// Versions superseded by local writes that are not durable yet.
    pub(crate) shadow: Shadow,
    /// The last durable change-log cursor.
    pub(crate) cursor: changes::CursorCell,
    /// Collections whose hash trees the writer is building ([`tree_build`]): repair reads of
    /// those wait for it.
    pub trees_building: AtomicU64,
    /// Hash trees built after bulk applies.
    pub trees_built: AtomicU64,
}

/// Versions superseded by local writes that are not yet durable, which Loads still serve:
/// the rule is [`officesync_protocol::shadow::Shadow`]; this shares it between the writer
/// (which adds and forgets) and readers.
#[derive(Debug, Default)]
pub(crate) struct Shadow {
    inner: Mutex<officesync_protocol::shadow::Shadow>,
}

impl Shadow {
    /// Keeps `versions`, superseded by the group of writes `generation`.
    pub(crate) fn add(&self, generation: u64, versions: Vec<Version>) {
        if versions.is_empty() {
            return;
        }
        self.lock().add(generation, versions);
    }

    /// Forgets what groups up to `generation` superseded: those writes are durable now.
    pub(crate) fn forget_through(&self, generation: u64) {
        self.lock().forget_through(generation);
    }

    /// Completes a Load answer with the shadowed versions, within its limits (see
    /// [`officesync_protocol::shadow::Shadow::merge_load`]).
    #[allow(clippy::too_many_arguments)]
    fn merge_load(
        &self,
        collection: &str,
        origin: &ReplicaId,
        after: u64,
        loaded: Vec<Version>,
        scanned: u64,
        max_versions: usize,
        max_bytes: usize,
    ) -> (Vec<Version>, u64) {
        self.lock().merge_load(
            collection,
            origin,
            after,
            loaded,
            scanned,
            max_versions,
            max_bytes,
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, officesync_protocol::shadow::Shadow> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Stops the periodic flusher when dropped (the replica closes or goes away).
#[derive(Debug)]
struct StopFlusher(Arc<ReplicaStats>);

impl Drop for StopFlusher {
    fn drop(&mut self) {
        self.0.flush_signal.stop();
    }
}

/// What replication may offer peers, per collection: this node's own writes once they are
/// durable (so a crash can never make it reuse a dot a peer already holds), and other
/// origins' versions once applied (they are durable at their origin, which sends them again
/// if this node loses them), so a relay forwards without waiting for its own flush.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DurableState {
    /// Generation of the last group of writes applied.
    pub generation: u64,
    /// Per collection, the version vector that may be offered.
    pub vvs: std::collections::BTreeMap<String, VersionVector>,
}

/// The applied state (updated by the writer), how far this node's own writes are durable
/// (updated after syncs), and the offerable state computed from both and published.
///
/// Only what changed is recomputed: a group of writes touches the offers of its own
/// collections, a sync those whose own counter it made durable, and an idle node (a periodic
/// flush with nothing new) does no work here at all. At a thousand nodes a system collection's
/// vector has a thousand origins, so rebuilding every offer per flush was most of a node's
/// idle CPU.
#[derive(Debug)]
pub(crate) struct DurableCell {
    state: Mutex<CellState>,
    pub(crate) published: tokio::sync::watch::Sender<Arc<DurableState>>,
}

#[derive(Debug, Default)]
struct CellState {
    own: Option<ReplicaId>,
    applied: DurableState,
    durable_own: std::collections::BTreeMap<String, u64>,
    /// The offers as last computed (what `published` holds, once `own` is known).
    offers: DurableState,
}

/// Per collection, this node's own counter in the applied vector: what a sync that starts now
/// makes durable.
pub(crate) type OwnApplied = Vec<(String, u64)>;

impl Default for DurableCell {
    fn default() -> Self {
        Self {
            state: Mutex::new(CellState::default()),
            published: tokio::sync::watch::Sender::new(Arc::new(DurableState::default())),
        }
    }
}

impl DurableCell {
    fn lock(&self) -> std::sync::MutexGuard<'_, CellState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts from what the store recovered, all of it durable.
    pub(crate) fn init(&self, own: ReplicaId, recovered: DurableState) {
        let mut st = self.lock();
        st.durable_own = recovered
            .vvs
            .iter()
            .map(|(c, vv)| (c.clone(), vv.get(&own)))
            .collect();
        st.own = Some(own);
        st.applied = recovered;
        let all: Vec<String> = st.applied.vvs.keys().cloned().collect();
        Self::update_offers(&mut st, &all);
        self.send(&st);
    }

    /// Records collection vectors applied by the writer and publishes what became offerable.
    pub(crate) fn applied(
        &self,
        generation: u64,
        vvs: impl Iterator<Item = (String, VersionVector)>,
    ) {
        let mut st = self.lock();
        st.applied.generation = generation;
        let mut touched = Vec::new();
        for (coll, vv) in vvs {
            st.applied.vvs.insert(coll.clone(), vv);
            touched.push(coll);
        }
        if Self::update_offers(&mut st, &touched) {
            self.send(&st);
        }
    }

    /// This node's own applied counters now; a sync that starts after this call covers them.
    pub(crate) fn snapshot(&self) -> OwnApplied {
        let st = self.lock();
        let Some(own) = &st.own else {
            return Vec::new();
        };
        st.applied
            .vvs
            .iter()
            .map(|(coll, vv)| (coll.clone(), vv.get(own)))
            .collect()
    }

    /// Records that a completed sync covers `synced` (from [`Self::snapshot`]), and publishes
    /// when that made more of this node's own writes offerable.
    pub(crate) fn publish(&self, synced: OwnApplied) {
        let mut st = self.lock();
        let mut raised = Vec::new();
        for (coll, n) in synced {
            let slot = st.durable_own.entry(coll.clone()).or_default();
            if n > *slot {
                *slot = n;
                raised.push(coll);
            }
        }
        if Self::update_offers(&mut st, &raised) {
            self.send(&st);
        }
    }

    /// Recomputes the offers of `colls`; true when one of them changed.
    fn update_offers(st: &mut CellState, colls: &[String]) -> bool {
        let Some(own) = st.own.clone() else {
            return false;
        };
        let mut changed = false;
        for coll in colls {
            let Some(vv) = st.applied.vvs.get(coll) else {
                continue;
            };
            let durable = st.durable_own.get(coll).copied().unwrap_or(0);
            let applied_own = vv.get(&own);
            let offer = if applied_own <= durable {
                vv.clone()
            } else {
                let mut offer: VersionVector = vv
                    .iter()
                    .filter(|(o, _)| **o != own)
                    .map(|(o, n)| (o.clone(), n))
                    .collect();
                if durable > 0 {
                    offer.raise(&own, durable);
                }
                offer
            };
            if st.offers.vvs.get(coll) != Some(&offer) {
                st.offers.vvs.insert(coll.clone(), offer);
                changed = true;
            }
        }
        st.offers.generation = st.applied.generation;
        changed
    }

    fn send(&self, st: &CellState) {
        if st.own.is_none() {
            return;
        }
        let next = st.offers.clone();
        self.published.send_if_modified(|cur| {
            if cur.vvs != next.vvs {
                *cur = Arc::new(next);
                true
            } else {
                false
            }
        });
    }
}

/// Store reads a point read may make on the calling task: the sibling record (a value in
/// chunks is read on the blocking pool).
const INLINE_READS: u32 = 1;

/// Value bytes up to which received versions are hashed on the calling task; larger batches
/// hash on the blocking pool (a runtime worker never stalls for more than about a millisecond).
const INLINE_HASH_MAX: usize = 256 << 10;

/// Pairs each received version with its header, hashing its value here rather than on the
/// single writer thread, which is the bottleneck of a catch-up.
async fn with_headers(
    versions: Vec<Version>,
) -> Result<Vec<(Version, VersionHeader)>, ReplicaError> {
    fn pair(versions: Vec<Version>) -> Vec<(Version, VersionHeader)> {
        versions
            .into_iter()
            .map(|v| {
                let h = v.header();
                (v, h)
            })
            .collect()
    }
    let bytes: usize = versions
        .iter()
        .map(|v| v.value.as_ref().map_or(0, Vec::len))
        .sum();
    if bytes <= INLINE_HASH_MAX {
        Ok(pair(versions))
    } else {
        tokio::task::spawn_blocking(move || pair(versions))
            .await
            .map_err(|_| ReplicaError::Closed)
    }
}

/// A write made at this node.
pub(crate) struct LocalWrite {
    pub collection: String,
    pub key: String,
    /// The value, `None` for a delete.
    pub value: Option<Vec<u8>>,
    /// `USER@NODE`, or `NODE` for a system write.
    pub author: String,
}

pub(crate) enum Request {
    Local {
        write: LocalWrite,
        reply: oneshot::Sender<Result<WriteAck, ReplicaError>>,
    },
    Remote {
        /// Each version with its header (value hashed before it reaches the writer thread).
        versions: Vec<(Version, VersionHeader)>,
        complete: Vec<(String, ReplicaId, u64)>,
        repair: bool,
        /// All or nothing: refused whole when any version would be refused.
        whole: bool,
        reply: oneshot::Sender<Result<ApplyReport, ReplicaError>>,
    },
    Sync {
        reply: oneshot::Sender<Result<(), ReplicaError>>,
    },
    /// Answered once `collection`'s hash tree is built (at once when it is not being built).
    TreeReady {
        collection: String,
        reply: oneshot::Sender<Result<(), ReplicaError>>,
    },
    /// One step of a purge (`rejoin: None`) or of a rejoin answering that record.
    Purge {
        collection: String,
        frontier: VersionVector,
        rejoin: Option<String>,
        after: Option<String>,
        max_keys: usize,
        reply: oneshot::Sender<Result<PurgeStep, ReplicaError>>,
    },
    Shutdown {
        reply: oneshot::Sender<Result<(), ReplicaError>>,
    },
}

struct Inner {
    store: Arc<dyn Store>,
    id: ReplicaId,
    /// This node's earlier incarnations (restores from backups).
    past: Vec<ReplicaId>,
    node: String,
    max_value_bytes: usize,
    history: usize,
    requests: mpsc::Sender<Request>,
    stats: Arc<ReplicaStats>,
    indexes: Arc<IndexCatalog>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    stop_flusher: Mutex<Option<StopFlusher>>,
}

/// Makes the node of the (stopped) store `store` a new incarnation, as a restore from a
/// backup must (a fresh id unlike every known incarnation of the node; the old one kept in
/// the `past_replicas` list). Returns the old and the new replica id.
pub fn start_new_incarnation(
    store: &dyn Store,
    node: &str,
) -> Result<(ReplicaId, ReplicaId), ReplicaError> {
    names::validate_node_name(node)?;
    encoding::start_new_incarnation(store, node)
}

/// A cloneable handle on the replica.
#[derive(Clone)]
pub struct Replica {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica")
            .field("id", &self.inner.id)
            .finish()
    }
}

/// Environment variable, for tests only, that shifts this daemon's wall clock by a signed
/// number of milliseconds (the chaos suite starts a node hours off with it).
pub const CLOCK_OFFSET_ENV: &str = "OFFICESYNC_CLOCK_OFFSET_MS";

/// Wall-clock milliseconds since the Unix epoch (shifted by [`CLOCK_OFFSET_ENV`] when set).
pub fn now_ms() -> u64 {
    static OFFSET_MS: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    let offset = *OFFSET_MS.get_or_init(|| {
        std::env::var(CLOCK_OFFSET_ENV)
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    });
    let wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    wall.saturating_add_signed(offset)
}

impl Replica {
    /// Opens the replica on `store`, creating its identity on first use, and starts the writer
    /// (and, in periodic mode, the flusher) thread.
    pub fn open(store: Arc<dyn Store>, opts: ReplicaOptions) -> Result<Self, ReplicaError> {
        names::validate_node_name(&opts.node)?;
        let generation = encoding::check_durable_mark(store.as_ref())?;
        let id = encoding::load_or_create_identity(store.as_ref(), &opts.node)?;
        let past = encoding::past_replicas(store.as_ref())?;
        let moved = dots::migrate_per_dot_index(store.as_ref())?;
        if moved > 0 {
            tracing::info!(
                entries = moved,
                "moved the dot index into rows of {} dots",
                keys::DOTS_PER_BLOCK
            );
        }
        let built = tree::build(store.as_ref())?;
        if built > 0 {
            tracing::info!(
                keys = built,
                "built the hash trees of the collections for repair"
            );
        }
        let indexes = Arc::new(IndexCatalog::new(&opts.indexes)?);
        index::prepare(store.as_ref(), &indexes)?;
        // Whatever the store recovered is made durable now, so it may be offered to peers.
        store.sync()?;
        let stats = Arc::new(ReplicaStats::default());
        let recovered = DurableState {
            generation,
            vvs: read::collections(store.as_ref())?
                .into_iter()
                .map(|c| (c.name, c.meta.vv))
                .collect(),
        };
        stats.durable.init(id.clone(), recovered);
        stats.cursor.init(changes::load_state(store.as_ref())?.last);
        stats
            .committed_generation
            .store(generation, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(4096);
        let mut threads = Vec::new();
        let w = writer::Writer::new(
            store.clone(),
            id.clone(),
            &opts,
            stats.clone(),
            indexes.clone(),
        )?;
        threads.push(
            std::thread::Builder::new()
                .name("officesync-writer".into())
                .spawn(move || w.run(rx))
                .map_err(|e| StoreError::Io(format!("cannot start writer thread: {e}")))?,
        );
        let mut stop_flusher = None;
        if let CommitMode::Periodic(every) = opts.commit {
            stop_flusher = Some(StopFlusher(stats.clone()));
            let (store, stats) = (store.clone(), stats.clone());
            threads.push(
                std::thread::Builder::new()
                    .name("officesync-flusher".into())
                    .spawn(move || writer::periodic_flusher(store.as_ref(), &stats, every))
                    .map_err(|e| StoreError::Io(format!("cannot start flusher thread: {e}")))?,
            );
        }
        Ok(Self {
            inner: Arc::new(Inner {
                store,
                id,
                past,
                node: opts.node,
                max_value_bytes: opts.max_value_bytes,
                history: opts.history,
                requests: tx,
                stats,
                indexes,
                threads: Mutex::new(threads),
                stop_flusher: Mutex::new(stop_flusher),
            }),
        })
    }

    /// This replica's id (`name@incarnation`).
    pub fn id(&self) -> &ReplicaId {
        &self.inner.id
    }

    /// This node's earlier incarnations, before each restore from a backup.
    pub fn past_replicas(&self) -> &[ReplicaId] {
        &self.inner.past
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.inner.node
    }

    /// The configured value limit.
    pub fn max_value_bytes(&self) -> usize {
        self.inner.max_value_bytes
    }

    /// Superseded versions kept per key (`[storage] history`).
    pub fn history_kept(&self) -> usize {
        self.inner.history
    }

    /// Counters for status and metrics.
    pub fn stats(&self) -> &ReplicaStats {
        &self.inner.stats
    }

    /// The declared secondary indexes (all built: the replica builds them when it opens).
    pub fn indexes(&self) -> &IndexCatalog {
        &self.inner.indexes
    }

    /// The underlying store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// False once the writer has stopped ([`Replica::close`], or a failure): writes fail.
    pub fn is_open(&self) -> bool {
        !self.inner.requests.is_closed()
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, ReplicaError>>) -> Request,
    ) -> Result<T, ReplicaError> {
        let (reply, rx) = oneshot::channel();
        self.inner
            .requests
            .send(make(reply))
            .await
            .map_err(|_| ReplicaError::Closed)?;
        rx.await.map_err(|_| ReplicaError::Closed)?
    }

    /// Writes `value` (`None`: a tombstone) to `key`, superseding every version held.
    /// Returns once the write is applied and, in sync mode, durable. A system write: its author
    /// is this node.
    pub async fn write(
        &self,
        collection: &str,
        key: &str,
        value: Option<Vec<u8>>,
    ) -> Result<WriteAck, ReplicaError> {
        let author = self.node().to_owned();
        self.write_as(collection, key, value, author).await
    }

    /// [`Replica::write`] by `author` (`USER@NODE`): the author is stored and replicated
    /// with the version.
    pub async fn write_as(
        &self,
        collection: &str,
        key: &str,
        value: Option<Vec<u8>>,
        author: String,
    ) -> Result<WriteAck, ReplicaError> {
        names::validate_collection_name(collection)?;
        names::validate_key(key)?;
        if let Some(v) = &value {
            if v.len() > self.inner.max_value_bytes {
                return Err(ReplicaError::ValueTooLarge {
                    len: v.len(),
                    max: self.inner.max_value_bytes,
                });
            }
        }
        let write = LocalWrite {
            collection: collection.to_owned(),
            key: key.to_owned(),
            value,
            author,
        };
        let ack = self.call(|reply| Request::Local { write, reply }).await?;
        self.inner
            .stats
            .local_writes
            .fetch_add(1, Ordering::Relaxed);
        Ok(ack)
    }

    /// Applies versions received from a peer and, in the same batch as the last of them,
    /// raises the vector of each `(collection, origin)` in `complete` to the given counter.
    pub async fn apply_remote(
        &self,
        versions: Vec<Version>,
        complete: Vec<(String, ReplicaId, u64)>,
    ) -> Result<ApplyReport, ReplicaError> {
        self.remote(versions, complete, (false, false)).await
    }

    /// [`Replica::apply_remote`], all or nothing (an offline bundle): when any version would be
    /// refused (its clock, size or sibling room), nothing is applied and the error names it.
    pub async fn apply_whole(
        &self,
        versions: Vec<Version>,
        complete: Vec<(String, ReplicaId, u64)>,
    ) -> Result<ApplyReport, ReplicaError> {
        self.remote(versions, complete, (false, true)).await
    }

    /// Applies versions during a full reconciliation: even dots the version vector covers are
    /// merged (a diverged replica may have lost them); the merge rules keep this idempotent.
    pub async fn apply_repair(&self, versions: Vec<Version>) -> Result<ApplyReport, ReplicaError> {
        self.remote(versions, Vec::new(), (true, false)).await
    }

    /// Hands received versions to the writer: `repair` merges even covered dots, `whole`
    /// applies all or nothing.
    async fn remote(
        &self,
        versions: Vec<Version>,
        complete: Vec<(String, ReplicaId, u64)>,
        (repair, whole): (bool, bool),
    ) -> Result<ApplyReport, ReplicaError> {
        let versions = with_headers(versions).await?;
        self.call(|reply| Request::Remote {
            versions,
            complete,
            repair,
            whole,
            reply,
        })
        .await
    }

    /// Live versions of `origin` in `collection` with `after < counter <= through`, in counter
    /// order, at most `max_versions` and about `max_bytes` of values; with the counter the scan
    /// covered (`through` unless a limit stopped it early).
    pub async fn versions_since(
        &self,
        collection: &str,
        origin: &ReplicaId,
        after: u64,
        through: u64,
        max_versions: usize,
        max_bytes: usize,
    ) -> Result<(Vec<Version>, u64), ReplicaError> {
        names::validate_collection_name(collection)?;
        let store = self.inner.store.clone();
        let (c, o) = (collection.to_owned(), origin.clone());
        let (versions, scanned) = blocking(move || {
            read::versions_since(
                store.as_ref(),
                &c,
                &o,
                after,
                through,
                max_versions,
                max_bytes,
            )
        })
        .await?;
        Ok(self.inner.stats.shadow.merge_load(
            collection,
            origin,
            after,
            versions,
            scanned,
            max_versions,
            max_bytes,
        ))
    }

    /// The digests of the hash-tree nodes of `collection` at `level` that are the children of
    /// `parents` ([`officesync_protocol::tree::child_digests`]), from the applied state.
    pub async fn tree_digests(
        &self,
        collection: &str,
        level: u8,
        parents: Vec<u32>,
    ) -> Result<Vec<Digest>, ReplicaError> {
        names::validate_collection_name(collection)?;
        self.tree_ready(collection).await?;
        let (store, c) = (self.inner.store.clone(), collection.to_owned());
        blocking(move || tree::child_digests(store.as_ref(), &c, level, &parents)).await
    }

    /// Returns once `collection`'s hash tree is built: at once unless a bulk apply left it to
    /// be built ([`tree_build`]).
    async fn tree_ready(&self, collection: &str) -> Result<(), ReplicaError> {
        if self.inner.stats.trees_building.load(Ordering::Acquire) == 0 {
            return Ok(());
        }
        let collection = collection.to_owned();
        self.call(|reply| Request::TreeReady { collection, reply })
            .await
    }

    /// The current versions of the keys of `collection` in the leaf buckets `leaves`
    /// (strictly increasing), in `(leaf, key)` order after `after`: whole keys, until
    /// `max_versions` versions or about `max_bytes` of values; with where to resume when
    /// some are left.
    pub async fn leaf_versions(
        &self,
        collection: &str,
        leaves: Vec<u32>,
        after: Option<(u32, String)>,
        max_versions: usize,
        max_bytes: usize,
    ) -> Result<officesync_protocol::tree::LeafPage, ReplicaError> {
        names::validate_collection_name(collection)?;
        self.tree_ready(collection).await?;
        let (store, c) = (self.inner.store.clone(), collection.to_owned());
        blocking(move || {
            tree::load_leaves(
                store.as_ref(),
                &c,
                &leaves,
                after.as_ref(),
                max_versions,
                max_bytes,
            )
        })
        .await
    }

    /// One purge step of `collection` below the stable `frontier` (see
    /// [`officesync_protocol::frontier`]): of at most `max_keys` records after `after`, each
    /// key whose only version is a tombstone the frontier covers is forgotten, in one atomic
    /// batch; the frontier is kept for dropping obsolete received versions. Continue from
    /// `next` until it is `None`.
    pub async fn purge_step(
        &self,
        collection: &str,
        frontier: VersionVector,
        after: Option<String>,
        max_keys: usize,
    ) -> Result<PurgeStep, ReplicaError> {
        self.purge_request(collection, frontier, None, after, max_keys)
            .await
    }

    /// One rejoin step of `collection`, answering rejoin record `record` (this node was left
    /// out of `frontier` while away): every version the frontier covers is dropped, the rest
    /// kept; the vector stays, and repair brings back what is still live elsewhere. The last
    /// step (`next` is `None`) marks the rejoin done ([`Replica::rejoin_done`]).
    pub async fn rejoin_step(
        &self,
        collection: &str,
        frontier: VersionVector,
        record: String,
        after: Option<String>,
        max_keys: usize,
    ) -> Result<PurgeStep, ReplicaError> {
        self.purge_request(collection, frontier, Some(record), after, max_keys)
            .await
    }

    /// A purge (`rejoin` `None`) or rejoin step, for the writer.
    async fn purge_request(
        &self,
        collection: &str,
        frontier: VersionVector,
        rejoin: Option<String>,
        after: Option<String>,
        max_keys: usize,
    ) -> Result<PurgeStep, ReplicaError> {
        names::validate_collection_name(collection)?;
        let collection = collection.to_owned();
        self.call(|reply| Request::Purge {
            collection,
            frontier,
            rejoin,
            after,
            max_keys,
            reply,
        })
        .await
    }

    /// The rejoin record (its version) the last finished rejoin of `collection` answered.
    pub async fn rejoin_done(&self, collection: &str) -> Result<Option<String>, ReplicaError> {
        names::validate_collection_name(collection)?;
        let (store, c) = (self.inner.store.clone(), collection.to_owned());
        blocking(move || {
            Ok(writer::rejoin_mark(store.as_ref(), &c)?
                .filter(|m| m.done)
                .map(|m| m.record))
        })
        .await
    }

    /// Watches what replication may offer peers (see [`DurableState`]).
    pub fn durable(&self) -> tokio::sync::watch::Receiver<Arc<DurableState>> {
        self.inner.stats.durable.published.subscribe()
    }

    /// Makes every applied write durable now.
    pub async fn sync(&self) -> Result<(), ReplicaError> {
        self.call(|reply| Request::Sync { reply }).await
    }

    /// Reads every sibling of `key` with every value, or `None` when the key was never
    /// written. Loads as many values as the key has siblings: serve clients with
    /// [`Replica::winner`] and [`Replica::siblings`], which are bounded.
    pub async fn get(&self, collection: &str, key: &str) -> Result<Option<Record>, ReplicaError> {
        self.read_key(collection, key, read::record).await
    }

    /// Reads the winner of `key` with its value and the number of siblings (their values
    /// are not loaded), or `None` when the key was never written.
    pub async fn winner(
        &self,
        collection: &str,
        key: &str,
    ) -> Result<Option<WinnerRead>, ReplicaError> {
        self.read_key(collection, key, read::winner).await
    }

    /// Lists every sibling of `key`, winner first, loading values in that order while their
    /// total stays within `max_bytes` (see [`SiblingsRead`]); `None` when never written.
    pub async fn siblings(
        &self,
        collection: &str,
        key: &str,
        max_bytes: usize,
    ) -> Result<Option<SiblingsRead>, ReplicaError> {
        self.read_key(collection, key, move |s, c, k| {
            read::siblings(s, c, k, max_bytes)
        })
        .await
    }

    /// Up to `limit` versions of `key` this node holds, newest first: its current siblings
    /// and the versions superseded here that its history keeps (see [`HistoryRead`]), values
    /// loaded while their total stays within `max_bytes`; `None` when the key was never
    /// written here.
    pub async fn history(
        &self,
        collection: &str,
        key: &str,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Option<HistoryRead>, ReplicaError> {
        let (store, c, k) = (
            self.inner.store.clone(),
            collection.to_owned(),
            key.to_owned(),
        );
        names::validate_collection_name(collection)?;
        names::validate_key(key)?;
        blocking(move || history::history(store.as_ref(), &c, &k, limit, max_bytes)).await
    }

    /// Reads the current sibling `dot` of `key` with its value; `None` when the key has no
    /// such sibling.
    pub async fn sibling(
        &self,
        collection: &str,
        key: &str,
        dot: &Dot,
    ) -> Result<Option<Sibling>, ReplicaError> {
        let dot = dot.clone();
        self.read_key(collection, key, move |s, c, k| read::sibling(s, c, k, &dot))
            .await
    }

    /// A point read: on the calling task while it needs at most [`INLINE_READS`] store reads
    /// (a record whose values are inline: microseconds), else again on the blocking pool.
    async fn read_key<T: Send + 'static>(
        &self,
        collection: &str,
        key: &str,
        read: impl Fn(&dyn Store, &str, &str) -> Result<T, ReplicaError> + Send + Sync + 'static,
    ) -> Result<T, ReplicaError> {
        names::validate_collection_name(collection)?;
        names::validate_key(key)?;
        let budgeted = read::Budgeted::new(self.inner.store.clone(), INLINE_READS);
        let inline = read(&budgeted, collection, key);
        if !budgeted.exhausted() {
            return inline;
        }
        let (store, c, k) = (
            self.inner.store.clone(),
            collection.to_owned(),
            key.to_owned(),
        );
        blocking(move || read(store.as_ref(), &c, &k)).await
    }

    /// Up to `limit` live records of `collection` whose key starts with `prefix` and sorts
    /// after `after`, each winner with its value; the page ends earlier, with a `next`
    /// cursor, past [`SCAN_PAGE_BYTES`] of values or [`SCAN_MAX_EXAMINED`] rows examined.
    pub async fn scan(
        &self,
        collection: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<ScanPage, ReplicaError> {
        self.scan_where(collection, prefix, after, limit, Filter::default())
            .await
    }

    /// [`Replica::scan`] of the records whose winner's value matches `filter` (every `where`
    /// expression holds); with a filter the page also ends, with a `next` cursor, once it
    /// has loaded [`SCAN_FILTER_BYTES`] of values to test.
    ///
    /// When a declared index can answer an expression (`=`, `<`, `<=`, `>`, `>=` on its
    /// pointer), its entries give the candidates: with an equality the page is in key order
    /// as without an index; with a range only, it is in the order of the indexed value, then
    /// the key, and `next` is a cursor starting with [`CURSOR_MARK`] (pass it back as
    /// `after`). Followed to the end, the pages hold the same records either way.
    pub async fn scan_where(
        &self,
        collection: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        filter: Filter,
    ) -> Result<ScanPage, ReplicaError> {
        names::validate_collection_name(collection)?;
        if let Some(plan) = index::plan(&self.inner.indexes, collection, &filter, after)? {
            self.inner
                .stats
                .indexed_scans
                .fetch_add(1, Ordering::Relaxed);
            let store = self.inner.store.clone();
            let (c, p) = (collection.to_owned(), prefix.to_owned());
            let budget = read::ScanBudget::new(limit);
            return blocking(move || {
                read::scan_index(store.as_ref(), &c, &plan, &p, budget, &filter)
            })
            .await;
        }
        if !filter.is_empty() {
            self.inner.stats.full_scans.fetch_add(1, Ordering::Relaxed);
        }
        self.paged(
            collection,
            prefix,
            after,
            limit,
            move |s, c, p, a, budget| read::scan(s, c, p, a, budget, &filter),
        )
        .await
    }

    /// Up to `limit` keys of `collection` (starting with `prefix`, after `after`) with two or
    /// more siblings, each sibling listed without its value; the page ends earlier, with a
    /// `next` cursor, past [`SCAN_MAX_EXAMINED`] rows examined.
    pub async fn conflicts(
        &self,
        collection: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<ConflictsPage, ReplicaError> {
        self.paged(collection, prefix, after, limit, read::conflicts)
            .await
    }

    /// Runs one page of a walk over `collection`'s keys (starting with `prefix`, after
    /// `after`, at most `limit` results) on the blocking pool.
    async fn paged<T: Send + 'static>(
        &self,
        collection: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        walk: impl FnOnce(
                &dyn Store,
                &str,
                &str,
                Option<&str>,
                read::ScanBudget,
            ) -> Result<T, ReplicaError>
            + Send
            + 'static,
    ) -> Result<T, ReplicaError> {
        names::validate_collection_name(collection)?;
        let store = self.inner.store.clone();
        let (c, p, a) = (
            collection.to_owned(),
            prefix.to_owned(),
            after.map(str::to_owned),
        );
        let budget = read::ScanBudget::new(limit);
        blocking(move || walk(store.as_ref(), &c, &p, a.as_deref(), budget)).await
    }

    /// Changes of `collection` after cursor `since` whose key starts with `prefix`, in this
    /// node's apply order: at most `limit`, and only durable ones (a cursor once served is never
    /// used again). `since = 0` starts at the oldest change kept; a cursor older than that is
    /// [`ReplicaError::CursorExpired`]. Resume from the page's `next`.
    pub async fn changes(
        &self,
        collection: &str,
        since: u64,
        prefix: &str,
        limit: usize,
    ) -> Result<ChangePage, ReplicaError> {
        names::validate_collection_name(collection)?;
        let durable = *self.inner.stats.cursor.published.borrow();
        let store = self.inner.store.clone();
        let (c, p) = (collection.to_owned(), prefix.to_owned());
        blocking(move || changes::read(store.as_ref(), &c, since, &p, limit, durable)).await
    }

    /// The last durable change-log cursor (of every collection); it wakes its receiver on
    /// each new one.
    pub fn change_cursor(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.stats.cursor.published.subscribe()
    }

    /// One collection's state (empty if it holds nothing yet).
    pub async fn collection(&self, collection: &str) -> Result<CollectionMeta, ReplicaError> {
        names::validate_collection_name(collection)?;
        let (store, c) = (self.inner.store.clone(), collection.to_owned());
        blocking(move || encoding::load_meta(store.as_ref(), &c)).await
    }

    /// Every collection this node holds, with its state.
    pub async fn collections(&self) -> Result<Vec<CollectionInfo>, ReplicaError> {
        let store = self.inner.store.clone();
        blocking(move || read::collections(store.as_ref())).await
    }

    /// Stops the writer after the queued writes, syncs the store and joins the threads.
    /// Every handle gets [`ReplicaError::Closed`] afterwards.
    pub async fn close(&self) -> Result<(), ReplicaError> {
        let synced = self.call(|reply| Request::Shutdown { reply }).await;
        self.inner
            .stop_flusher
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let threads =
            std::mem::take(&mut *self.inner.threads.lock().unwrap_or_else(|p| p.into_inner()));
        // Join off the async workers.
        tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await
        .map_err(|_| ReplicaError::Closed)?;
        synced
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ReplicaError> + Send + 'static,
) -> Result<T, ReplicaError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| ReplicaError::Closed)?
}

#[cfg(test)]
mod index_tests;
#[cfg(test)]
mod purge_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tree_tests;
