//! What `/v1/status` reports about each peer: connection, lag each way, traffic, refusals
//! and per-collection staleness.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What `/v1/status` reports about one peer.
///
/// Lag is counted in versions, each way: `lag_versions` is how far the **peer is behind this
/// node** (versions this node may send it that it has not acknowledged yet), `behind_versions`
/// how far **this node is behind the peer** (versions the peer was last known to hold, of the
/// origins it sends this node, that this node has not applied). While a peer is away its
/// `lag_versions` keeps growing with new writes here; its `behind_versions` stays what it was
/// at the last contact (nobody can know what it wrote since): `disconnected_since` and the
/// per-collection `data_as_of` say how old that knowledge is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    /// The peer's node name (from its certificate).
    pub name: String,
    /// True while a session with the peer is open.
    pub connected: bool,
    /// When the peer was last heard from, RFC 3339 in UTC; null if never.
    pub last_seen: Option<String>,
    /// Versions this node holds that the peer has not acknowledged yet (summed over the
    /// collections the peer may read): how far the peer is behind this node; 0 when in step.
    pub lag_versions: u64,
    /// Bytes sent to the peer since this daemon started.
    pub bytes_sent: u64,
    /// Bytes received from the peer since this daemon started.
    pub bytes_received: u64,
    /// The peer's address of the current (or last) connection.
    #[serde(default)]
    pub address: Option<String>,
    /// Round-trip time measured by heartbeats, in milliseconds.
    #[serde(default)]
    pub rtt_ms: Option<u64>,
    /// Versions from this peer refused since this daemon started (relay rule, clock skew,
    /// too large, invalid); `rejected_by_reason` splits them.
    #[serde(default)]
    pub rejected: u64,
    /// Serial number (lowercase hex) of the certificate the peer presented on its current (or
    /// last) connection: what `officesync policy revoke-node NODE --serial` takes.
    #[serde(default)]
    pub cert_serial: Option<String>,
    /// The QUIC connection id of the current (or last) session, as in the logs' `conn` field.
    #[serde(default)]
    pub conn: Option<u64>,
    /// The sync protocol version of the current (or last) session.
    #[serde(default)]
    pub protocol: Option<u16>,
    /// What the peer runs (`officesyncd 0.1.0 (commit)`), as it said in the current (or last)
    /// session; null for a peer of protocol 1, which does not say.
    #[serde(default)]
    pub release: Option<String>,
    /// When the current session was established (RFC 3339); null while disconnected.
    #[serde(default)]
    pub connected_since: Option<String>,
    /// When the last session ended (RFC 3339); null while connected or never connected.
    #[serde(default)]
    pub disconnected_since: Option<String>,
    /// Since when `lag_versions` has been above 0 (RFC 3339): the peer has been behind this
    /// node since then. Null when it is 0.
    #[serde(default)]
    pub lag_since: Option<String>,
    /// Versions the peer was last known to hold (of the origins it sends this node: its own,
    /// or every origin for a relay) that this node has not applied yet: how far this node is
    /// behind the peer, as of the last contact. 0 when in step.
    #[serde(default)]
    pub behind_versions: u64,
    /// Since when `behind_versions` has been above 0 (RFC 3339); null when it is 0.
    #[serde(default)]
    pub behind_since: Option<String>,
    /// True while the current session has received and applied everything the peer held when
    /// it started (its catch-up is complete) and nothing more is known to be missing.
    #[serde(default)]
    pub caught_up: bool,
    /// When the last catch-up from the peer completed (RFC 3339); null if none has yet.
    #[serde(default)]
    pub caught_up_at: Option<String>,
    /// Versions sent to the peer since this daemon started.
    #[serde(default)]
    pub versions_sent: u64,
    /// Versions received from the peer since this daemon started (rejected ones included).
    #[serde(default)]
    pub versions_received: u64,
    /// Versions received from the peer that became part of this replica (new siblings).
    #[serde(default)]
    pub versions_applied: u64,
    /// `rejected` by reason: `relay_rule`, `policy`, `clock_skew`, `too_large`, `invalid`.
    #[serde(default)]
    pub rejected_by_reason: BTreeMap<String, u64>,
    /// Per collection shared with the peer: lag each way and staleness.
    #[serde(default)]
    pub collections: Vec<PeerCollectionStatus>,
    /// Sessions closed because the peer sent bad input (undecodable or invalid frames,
    /// protocol violations, timestamps beyond the skew bound) since this daemon started.
    #[serde(default)]
    pub bad_input: u64,
    /// The error code name and detail of the last such closure; null if none.
    #[serde(default)]
    pub last_bad_input: Option<String>,
    /// While connected: how long (ms) nothing has been heard from the peer, once that is more
    /// than two heartbeat intervals: a cut link shows here within seconds, while the session
    /// itself only closes (`connected` false) after six silent intervals (at least 10 s).
    /// Null otherwise.
    #[serde(default)]
    pub silent_ms: Option<u64>,
    /// While disconnected from a peer this node dials: why the last dial or handshake failed
    /// (unreachable, refused, a certificate of another CA...); null otherwise.
    #[serde(default)]
    pub last_error: Option<String>,
    /// When that error happened, RFC 3339 in UTC.
    #[serde(default)]
    pub last_error_at: Option<String>,
    /// The bandwidth limit (`[[sync.limit]]`) in force for bulk data sent to the peer, like
    /// `"2 Mbit/s"`, as of the current (or last) session; null when none is.
    #[serde(default)]
    pub limit: Option<String>,
    /// The same limit in bytes per second; null when none is.
    #[serde(default)]
    pub limit_bytes_per_sec: Option<u64>,
    /// Bulk bytes queued for the peer's bulk stream (waiting for the limit or the link),
    /// estimated before compression; 0 while disconnected.
    #[serde(default)]
    pub queued_bytes: u64,
    /// Collections whose compression dictionary (this node's, trained from their values) the
    /// peer accepted in the current (or last) session: the zstd streams of their frames to it
    /// may start primed with it (protocol 3). Empty for peers of protocol 1 or 2.
    #[serde(default)]
    pub dictionaries_sent: Vec<String>,
    /// Collections whose dictionary (the peer's) this node accepted in the current (or last)
    /// session, to decode the peer's frames with.
    #[serde(default)]
    pub dictionaries_received: Vec<String>,
    /// zstd streams to the peer that started primed with a dictionary, since this daemon
    /// started (a stream starts with the first write after 5 s of quiet).
    #[serde(default)]
    pub primed_streams_sent: u64,
    /// zstd streams from the peer that started primed with a dictionary, since this daemon
    /// started.
    #[serde(default)]
    pub primed_streams_received: u64,
}

/// Replication state of one collection between this node and one peer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerCollectionStatus {
    /// The collection.
    pub collection: String,
    /// Versions of the collection the peer lacks from this node (see [`PeerStatus`]).
    pub lag_versions: u64,
    /// Versions of the collection this node lacks from the peer, as of the last contact.
    pub behind_versions: u64,
    /// Wall time (Unix ms, from its HLC) of the newest version this node holds whose origin is
    /// the peer; null when none is known.
    #[serde(default)]
    pub newest_version_ms: Option<u64>,
    /// `newest_version_ms` as RFC 3339.
    #[serde(default)]
    pub newest_version_at: Option<String>,
    /// "Data as of" (Unix ms): the last moment this node was known to hold everything the
    /// peer held of the collection — the last time the peer was heard from while its catch-up
    /// was complete and nothing from it was pending. Frozen while the link is down. Null until
    /// a first catch-up completes.
    #[serde(default)]
    pub data_as_of_ms: Option<u64>,
    /// `data_as_of_ms` as RFC 3339.
    #[serde(default)]
    pub data_as_of: Option<String>,
    /// Now minus `data_as_of_ms`, in milliseconds, when the status was read: how stale this
    /// node's copy of the peer's data may be. Null when `data_as_of_ms` is.
    #[serde(default)]
    pub staleness_ms: Option<u64>,
}

impl PeerStatus {
    /// The entry for `collection`, created (empty) if absent; kept in name order.
    pub fn collection_mut(&mut self, collection: &str) -> &mut PeerCollectionStatus {
        let at = match self
            .collections
            .binary_search_by(|c| c.collection.as_str().cmp(collection))
        {
            Ok(at) => at,
            Err(at) => {
                self.collections.insert(
                    at,
                    PeerCollectionStatus {
                        collection: collection.to_owned(),
                        ..PeerCollectionStatus::default()
                    },
                );
                at
            }
        };
        &mut self.collections[at]
    }
}
