//! `GET /v1/status` and `GET /v1/collections`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Hlc, PeerStatus};

/// A version vector as the API writes it: per origin (`name@incarnation`), the highest
/// counter covered.
pub type VersionVector = BTreeMap<String, u64>;

/// The answer to `GET /v1/status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusBody {
    /// This node's name.
    pub node: String,
    /// This node's replica id, `name@incarnation`.
    #[serde(default)]
    pub replica: String,
    /// The cluster id (CA fingerprint); null when the certificate is not known.
    pub cluster_id: Option<String>,
    /// This node's certificate: serial and expiry; null when not known.
    pub certificate: Option<CertificateStatus>,
    /// Seconds since the daemon started.
    #[serde(default)]
    pub uptime_secs: u64,
    /// Largest value a record may hold (`storage.max_value_bytes`).
    #[serde(default)]
    pub max_value_bytes: u64,
    /// Each collection's version vector.
    pub vv: BTreeMap<String, VersionVector>,
    /// Each collection's counts and digest.
    pub collections: BTreeMap<String, CollectionState>,
    /// Every known peer, in name order.
    pub peers: Vec<PeerStatus>,
    /// The store's size on disk.
    #[serde(default)]
    pub store: StoreStatus,
    /// Write counters since the daemon started.
    #[serde(default)]
    pub writes: WriteStats,
    /// Each searchable collection's index (`[search]`); absent when search is off.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub search: BTreeMap<String, crate::SearchIndexStatus>,
    /// Transport-wide counts; absent when replication does not run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport: Option<TransportStats>,
}

/// The `certificate` object of `/v1/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateStatus {
    /// Serial number of this node's certificate, lowercase hex.
    pub serial: String,
    /// `notAfter` as RFC 3339.
    pub not_after: String,
    /// `notAfter` as unix seconds.
    pub not_after_unix: i64,
    /// Seconds from now until it expires; negative once expired.
    pub expires_in_secs: i64,
}

/// One collection in `/v1/status` (keyed by its name there).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectionState {
    /// Live records (keys whose winner is not a tombstone).
    pub records: u64,
    /// Keys, deleted ones included.
    pub keys: u64,
    /// Versions held (siblings of every key).
    pub versions: u64,
    /// The collection's digest, hex: equal on two nodes exactly when they hold the same versions.
    pub digest: String,
    /// The newest HLC stamp of the collection.
    pub max_hlc: Hlc,
    /// The JSON pointers of its secondary indexes (`[indexes]`), all built: the daemon builds
    /// a newly declared index before it serves. Absent when there is none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub indexes: Vec<String>,
}

/// One collection in `/v1/collections`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectionSummary {
    /// The collection's name.
    pub name: String,
    /// Live records (keys whose winner is not a tombstone).
    pub records: u64,
    /// Keys, deleted ones included.
    pub keys: u64,
    /// Versions held (siblings of every key).
    pub versions: u64,
    /// The collection's digest, hex.
    pub digest: String,
    /// The newest HLC stamp of the collection.
    pub max_hlc: Hlc,
    /// The collection's version vector.
    pub vv: VersionVector,
}

/// The answer to `GET /v1/collections`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectionsBody {
    /// Every collection, in name order.
    pub collections: Vec<CollectionSummary>,
}

/// The `store` object of `/v1/status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreStatus {
    /// Bytes the store takes on disk.
    pub size_bytes: u64,
    /// Files the engine keeps outside its fsynced log (sled blobs); must stay 0.
    pub blob_files: u64,
}

/// The `writes` object of `/v1/status`: counters since the daemon started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteStats {
    /// Local writes acknowledged.
    pub local: u64,
    /// Received versions applied.
    pub remote_applied: u64,
    /// Received versions rejected (clock skew, invalid, siblings past the limit).
    pub remote_rejected: u64,
    /// Local writes refused because the merge would have dropped them.
    pub local_refused: u64,
    /// Durable syncs performed.
    pub syncs: u64,
    /// Writes acknowledged by those syncs (their ratio is the group-commit size).
    pub synced_writes: u64,
}

/// Transport-wide counts, for metrics and status (`transport` in `GET /v1/status`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TransportStats {
    /// Connections this node dialed that were authenticated and handed over.
    pub connections_dialed: u64,
    /// Connections this node accepted that were authenticated and handed over.
    pub connections_accepted: u64,
    /// Dial attempts that failed (unreachable, refused, wrong certificate or name).
    pub dials_failed: u64,
    /// Incoming handshakes that failed (bad certificate, timeout, protocol error).
    pub handshakes_failed: u64,
    /// Of [`handshakes_failed`](Self::handshakes_failed): dropped because the peer was not
    /// authenticated in time.
    pub handshakes_timed_out: u64,
    /// Incoming connection attempts refused before any TLS work, for either reason below.
    pub handshakes_refused: u64,
    /// Of [`handshakes_refused`](Self::handshakes_refused): the source address already had
    /// the most handshakes one address may have in progress.
    pub handshakes_refused_per_address: u64,
    /// Of [`handshakes_refused`](Self::handshakes_refused): the most pending handshakes were
    /// in progress altogether.
    pub handshakes_refused_busy: u64,
    /// Incoming connection attempts answered with a QUIC Retry, to validate their address
    /// before any TLS work (every new attempt gets one; quinn clients answer it themselves).
    pub retries_sent: u64,
    /// Authenticated connections refused because the peer is in backoff after bad input or
    /// already holds the most connections one peer may hold.
    pub backoff_refused: u64,
    /// Connections closed because the peer's certificate expired while they were open.
    pub certificates_expired: u64,
}
