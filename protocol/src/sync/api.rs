//! What a session asks of its driver ([`Action`]), what it reports ([`Event`]) and its
//! observable state ([`SessionStatus`]).

use crate::dot::{ReplicaId, VersionVector};
use crate::version::Version;
use crate::wire::{Compression, DictionaryId, ErrorCode};

use super::dictionary::LocalDictionary;

/// Work for the local store. Execute actions in the order they are polled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Read the live versions of `origin` in `collection` with `after < counter <= through`,
    /// in counter order, at most `max_versions` and about `max_bytes` of values (but at least
    /// one version when there is one), and answer with
    /// [`Session::handle_loaded`](super::Session::handle_loaded), giving the counter the scan
    /// reached: `through` when it was not cut short, else the counter of the last version
    /// returned. `repair` marks a full re-stream (for metrics; the read is the same).
    Load {
        /// The collection.
        collection: String,
        /// The origin whose versions to read.
        origin: ReplicaId,
        /// Exclusive lower bound of counters.
        after: u64,
        /// Inclusive upper bound of counters (never above the local vector).
        through: u64,
        /// Most versions to return.
        max_versions: usize,
        /// About the most value bytes to return.
        max_bytes: usize,
        /// Part of a repair re-stream.
        repair: bool,
    },
    /// For each part in order, apply its `versions` with the merge rules and raise the
    /// vector entry of its `origin` to its `through`, all in one atomic store batch (one
    /// flush: the session merges the streams completed back to back), then answer each part,
    /// in order, with [`Session::handle_applied`](super::Session::handle_applied). Versions
    /// whose dot the vector already covers may be skipped, unless `repair` is set (full
    /// reconciliation: apply them all; the merge rules make that idempotent; a repair Apply
    /// has one part). Received HLC timestamps are the store's to check against
    /// `max_clock_skew`.
    Apply {
        /// The streams' parts, at least one.
        parts: Vec<ApplyPart>,
        /// Apply even versions whose dot the vector covers.
        repair: bool,
    },
    /// Compute the collection's digest and vector (of the same state) and answer with
    /// [`Session::handle_local_digest`](super::Session::handle_local_digest).
    Digest {
        /// The collection.
        collection: String,
    },
    /// Compute the digests of the hash-tree nodes at `level` that are the children of
    /// `parents` (nodes at `level - 1`, strictly increasing), [`FANOUT`](crate::tree::FANOUT)
    /// per parent in order, as [`crate::tree::child_digests`] folds them from the collection's
    /// current versions; answer with
    /// [`Session::handle_tree_digests`](super::Session::handle_tree_digests).
    TreeDigests {
        /// The collection.
        collection: String,
        /// The level of the digests (1 to [`LEVELS`](crate::tree::LEVELS)).
        level: u8,
        /// The parents.
        parents: Vec<u32>,
    },
    /// Read the current versions (every sibling, tombstones included, with values, authors
    /// and signatures) of the keys whose leaf ([`crate::tree::leaf_of`]) is in `leaves`
    /// (strictly increasing), in `(leaf, key)` order, after `after`; at most `max_versions`
    /// and about `max_bytes` of values, but always every sibling of at least one key when
    /// there is one. Answer with
    /// [`Session::handle_leaves_loaded`](super::Session::handle_leaves_loaded), giving the
    /// `(leaf, key)` of the last key returned when the read was cut short, else `None`.
    LoadLeaves {
        /// The collection.
        collection: String,
        /// The leaves.
        leaves: Vec<u32>,
        /// Where to resume: after this `(leaf, key)`.
        after: Option<(u32, String)>,
        /// Most versions to return.
        max_versions: usize,
        /// About the most value bytes to return.
        max_bytes: usize,
    },
}

/// One `(collection, origin)` stream's share of an [`Action::Apply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyPart {
    /// The collection.
    pub collection: String,
    /// The origin of every version.
    pub origin: ReplicaId,
    /// The versions, in counter order (possibly none: only the vector advances).
    pub versions: Vec<Version>,
    /// The counter the origin is complete through.
    pub through: u64,
}

/// What happened, for the driver to log, count or act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The handshake completed.
    Established {
        /// The peer's replica id: from its `Hello` on the acceptor side; the dialer learns it
        /// only if the acceptor's vectors name exactly one replica of the peer's node
        /// (`HelloAck` carries no replica id).
        peer_replica: Option<ReplicaId>,
        /// The compression both sides may use on bulk frames (chosen by the acceptor from the
        /// dialer's offer among those it supports).
        compression: Compression,
        /// The protocol version agreed: the highest both nodes speak.
        protocol: u16,
    },
    /// The peer said what it runs (protocol 2 and up, once per session).
    PeerAbout {
        /// Its release, e.g. `officesyncd 0.2.0 (abc1234)` (clipped).
        release: String,
    },
    /// Versions refused by the relay rule (their origin is not the peer's node and the peer
    /// is not a relay) or by the access policy (their origin may not write the collection).
    Rejected {
        /// Why.
        reason: String,
        /// How many versions were dropped.
        count: u64,
    },
    /// The peer has durably applied `origin` through `through` in `collection`.
    Acked {
        /// The collection.
        collection: String,
        /// The origin.
        origin: ReplicaId,
        /// The counter.
        through: u64,
    },
    /// Equal vectors but different digests: a reconciliation of the collection started (full,
    /// or from protocol 3 on through the hash tree).
    DigestMismatch {
        /// The collection.
        collection: String,
    },
    /// A digest round asked for with [`Session::request_verify`](super::Session::request_verify)
    /// has ended.
    Verified {
        /// The collection.
        collection: String,
        /// What it found.
        outcome: VerifyOutcome,
    },
    /// The peer offered a compression dictionary and this session accepted it (protocol 3):
    /// the driver keeps it, for the rest of the session, for decoding the peer's frames primed
    /// with `id`. Drained before the accepting reply is transmitted, so the driver holds it
    /// before the peer can use it.
    DictionaryAccepted {
        /// The collection it is for.
        collection: String,
        /// Its id (the hash of `dictionary`).
        id: DictionaryId,
        /// Its bytes (validated: at most [`MAX_DICTIONARY_BYTES`](crate::wire::MAX_DICTIONARY_BYTES)).
        dictionary: Vec<u8>,
    },
    /// The peer accepted one of this node's dictionaries (protocol 3): the driver may prime
    /// the zstd streams of the collection's frames with it from now on.
    DictionaryAgreed {
        /// The dictionary.
        dictionary: LocalDictionary,
    },
    /// The session is over; the driver closes the connection with `code`.
    Closed {
        /// Why, as a protocol error code.
        code: ErrorCode,
        /// Human-readable detail.
        reason: String,
    },
}

/// The result of a digest round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VerifyOutcome {
    /// Both replicas hold exactly the same versions.
    Equal,
    /// The vectors differ: replication in flight explains any difference; try again later.
    VectorsDiffer,
    /// The digests differed at equal vectors; after a reconciliation they are equal.
    Repaired,
    /// The digests still differ after a reconciliation (a full one has started).
    StillDifferent,
}

/// A snapshot of the session, for `status` and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionStatus {
    /// The peer's node name (from its certificate).
    pub peer_node: String,
    /// The peer's replica id, when known.
    pub peer_replica: Option<ReplicaId>,
    /// The handshake completed and the session is not closed.
    pub established: bool,
    /// The session is closed.
    pub closed: bool,
    /// What the peer is known to hold per collection: its handshake vectors, raised by its
    /// completions and acknowledgements.
    pub peer_vvs: Vec<(String, VersionVector)>,
    /// Per collection this side sends.
    pub collections: Vec<CollectionStatus>,
    /// When the peer was last heard from (the `now_ms` of that input).
    pub last_heard_ms: u64,
    /// The latest heartbeat round-trip time.
    pub rtt_ms: Option<u64>,
    /// Batches sent.
    pub batches_sent: u64,
    /// Versions sent.
    pub versions_sent: u64,
    /// Batches received.
    pub batches_received: u64,
    /// Versions received (rejected ones included).
    pub versions_received: u64,
    /// Versions refused by the relay rule.
    pub rejected: u64,
    /// Reconciliations started (full or through the hash tree).
    pub repairs: u64,
    /// Descents of the hash tree started by this side (protocol 3).
    pub tree_repairs: u64,
    /// Versions re-sent for the leaves of tree repairs.
    pub repair_versions_sent: u64,
}

/// Replication state of one collection towards the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectionStatus {
    /// The collection.
    pub collection: String,
    /// Versions the peer lacks by our vector: the sum over the origins we send of our counter
    /// minus the counter the peer is known to hold.
    pub lag_versions: u64,
    /// Our vector (what we may offer).
    pub local_vv: VersionVector,
}
