//! What a session is configured with: the local node, the peer's authenticated identity, the
//! session's role and the streams it talks on.

use crate::dot::ReplicaId;
use crate::wire::{Compression, DEFAULT_MAX_VALUE_BYTES};

/// The local side of a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionConfig {
    /// This node's name (as in its certificate).
    pub node: String,
    /// This node's current replica id.
    pub replica: ReplicaId,
    /// The cluster id: lowercase hex of the CA certificate fingerprint.
    pub cluster_id: String,
    /// Largest value accepted from the peer, in bytes.
    pub max_value_bytes: usize,
    /// Most versions asked of one [`Action::Load`](super::Action::Load) and put in one batch.
    pub batch_max_versions: usize,
    /// About the most value bytes asked of one Load and put in one batch.
    pub batch_max_bytes: usize,
    /// Interval between heartbeat probes, in milliseconds (0: no probes).
    pub heartbeat_interval_ms: u64,
    /// Silence after which the session closes, in milliseconds (0: never).
    pub idle_timeout_ms: u64,
    /// Interval between periodic digest rounds, in milliseconds (0: only on demand).
    pub repair_interval_ms: u64,
    /// The compressions this node can receive, in order of preference.
    pub compression: Vec<Compression>,
    /// This node is a relay (an admin named in `[cluster] admins`): it forwards versions of
    /// every origin. A node that is not only sends versions of its own node's origins, since
    /// peers would refuse the others.
    pub relay: bool,
    /// Peers refuse versions stamped more than this many milliseconds ahead of their clock
    /// (`sync.max_clock_skew_ms`): such a version, and its origin's stream after it, is held
    /// back until this node's own clock comes within this bound of it.
    pub max_clock_skew_ms: u64,
    /// The highest protocol version to speak (normally
    /// [`PROTOCOL_VERSION`](crate::wire::PROTOCOL_VERSION); lower only to stand in for a
    /// node of an older release).
    pub max_protocol: u16,
    /// What this node runs (`officesyncd 0.2.0 (commit)`), told to peers of protocol 2 and up.
    pub release: String,
    /// This node's earlier incarnations (before restores from backups): peers that are not
    /// relays may send their versions back.
    pub past_replicas: Vec<ReplicaId>,
    /// Urgent collections (`sync.urgent`): their streams are loaded before the others, and
    /// from protocol 3 on travel on the urgent stream ([`StreamKind::Urgent`]), which the
    /// driver does not throttle, so they overtake a bulk catch-up. `_nodes` travels with them
    /// when any is named (the certificates verify what they carry).
    pub urgent: Vec<String>,
}

impl SessionConfig {
    /// The defaults for node `node` with replica id `replica` in cluster `cluster_id`:
    /// 4 MiB values, batches of at most 512 versions and 1 MiB, a heartbeat every 5 s,
    /// 30 s idle timeout, a digest round every 5 min, zstd preferred, not a relay, 5 min of
    /// clock skew, the newest protocol, no release named, no earlier incarnation, no urgent
    /// collection.
    pub fn new(node: &str, replica: ReplicaId, cluster_id: &str) -> Self {
        Self {
            node: node.to_owned(),
            replica,
            cluster_id: cluster_id.to_owned(),
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
            batch_max_versions: 512,
            batch_max_bytes: 1 << 20,
            heartbeat_interval_ms: 5_000,
            idle_timeout_ms: 30_000,
            repair_interval_ms: 300_000,
            compression: vec![Compression::Zstd, Compression::None],
            relay: false,
            max_clock_skew_ms: 300_000,
            max_protocol: crate::wire::PROTOCOL_VERSION,
            release: String::new(),
            past_replicas: Vec::new(),
            urgent: Vec::new(),
        }
    }
}

/// Who the peer is, from its certificate: never from anything it says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The node name in the peer's certificate.
    pub node: String,
    /// The peer is an admin named in `[cluster] admins`, so it may relay others' versions.
    pub is_relay: bool,
}

/// Which side of the connection this session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Opened the connection; sends `Hello` and runs the periodic digest rounds.
    Dialer,
    /// Accepted the connection; answers `HelloAck`.
    Acceptor,
}

/// The stream a frame travels on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamKind {
    /// The bidirectional control stream: handshake, acks, heartbeats, digests, errors.
    Control,
    /// The unidirectional bulk stream of each direction: batches and completions.
    Bulk,
    /// The unidirectional urgent stream of each direction (protocol 3 and up): batches and
    /// completions of the urgent collections, which overtake the bulk stream's.
    Urgent,
}

impl SessionConfig {
    /// True when `collection`'s streams are urgent: named in [`SessionConfig::urgent`], or
    /// `_nodes` when any collection is.
    pub fn is_urgent(&self, collection: &str) -> bool {
        self.urgent.iter().any(|c| c == collection)
            || (!self.urgent.is_empty() && collection == crate::signing::NODES_COLLECTION)
    }
}
