//! Node status: `/v1/status`, `/v1/collections`, `/health`, and the peer status that the
//! replication layer reports through [`PeerStatusSource`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::Uri;
use axum::Json;
use officesync_protocol::{Hlc, VersionVector};
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::params::parse_query;
use super::ApiState;
use crate::config::Config;
use crate::pki::{self, PkiError};
use crate::replica::ReplicaStats;
use crate::transport::{StatsHandle, TransportStats};

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
    /// When the peer was last heard from, RFC 3339 in UTC (see [`rfc3339`]); null if never.
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

/// This node's own certificate: the cluster id (the fingerprint of the CA that issued it) and
/// when it expires, read from the `[tls]` files at start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeCertificate {
    /// SHA-256 of the CA certificate (`tls.ca`), lowercase hex: the cluster id `ca init` printed.
    pub cluster_id: String,
    /// Serial number of this node's certificate (`tls.cert`), lowercase hex.
    pub serial: String,
    /// Last second of its validity (X.509 `notAfter`), unix seconds.
    pub not_after_unix: i64,
}

impl NodeCertificate {
    /// Reads the cluster id and the certificate's serial and expiry from `config`'s `[tls]`
    /// files.
    pub fn read(config: &Config) -> Result<NodeCertificate, PkiError> {
        let ca = pki::ca_fingerprint(&pki::read_pem_file(&config.tls.ca)?)?;
        let id = pki::load_identity(&config.tls.cert)?;
        Ok(NodeCertificate {
            cluster_id: ca,
            serial: id.serial_hex,
            not_after_unix: id.not_after,
        })
    }
}

/// The `certificate` object of `/v1/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct CertificateStatus {
    serial: String,
    /// `notAfter` as RFC 3339.
    not_after: String,
    not_after_unix: i64,
    /// Seconds from now until it expires; negative once expired.
    expires_in_secs: i64,
}

impl CertificateStatus {
    /// The status of `cert` at `now_unix` (seconds).
    fn at(cert: &NodeCertificate, now_unix: i64) -> Self {
        let not_after =
            UNIX_EPOCH + std::time::Duration::from_secs(cert.not_after_unix.max(0) as u64);
        CertificateStatus {
            serial: cert.serial.clone(),
            not_after: rfc3339(not_after),
            not_after_unix: cert.not_after_unix,
            expires_in_secs: cert.not_after_unix - now_unix,
        }
    }
}

/// Where the API reads peer status from. The replication layer implements it (or feeds a
/// [`PeerTable`]); the API only takes snapshots.
pub trait PeerStatusSource: Send + Sync + 'static {
    /// A snapshot of every known peer, in name order.
    fn peers(&self) -> Vec<PeerStatus>;

    /// True once every configured peer has been dialled at least once (for `/ready`).
    fn peers_dialled(&self) -> bool {
        true
    }

    /// The transport's connection and handshake counts, if there is a transport.
    fn transport(&self) -> Option<TransportStats> {
        None
    }

    /// This node's certificate and cluster id, if known.
    fn certificate(&self) -> Option<NodeCertificate> {
        None
    }
}

/// A shared, cloneable table of peer status, keyed by peer name: the replication layer keeps
/// a clone and updates it, the API reads it.
#[derive(Debug, Clone)]
pub struct PeerTable {
    inner: Arc<RwLock<BTreeMap<String, PeerStatus>>>,
    dialled: Arc<AtomicBool>,
    transport: Option<StatsHandle>,
    certificate: Option<NodeCertificate>,
}

impl Default for PeerTable {
    fn default() -> Self {
        Self {
            inner: Arc::default(),
            dialled: Arc::new(AtomicBool::new(true)),
            transport: None,
            certificate: None,
        }
    }
}

impl PeerTable {
    /// An empty table (with nothing to dial, so [`PeerStatusSource::peers_dialled`] holds).
    pub fn new() -> Self {
        Self::default()
    }

    /// Reports the counts of `transport` in [`PeerStatusSource::transport`].
    pub fn with_transport(mut self, transport: StatsHandle) -> Self {
        self.transport = Some(transport);
        self
    }

    /// Reports the certificate and cluster id of `config`'s `[tls]` files in
    /// [`PeerStatusSource::certificate`] (none, with a warning, if they cannot be read).
    pub fn with_certificate_of(mut self, config: &Config) -> Self {
        match NodeCertificate::read(config) {
            Ok(cert) => self.certificate = Some(cert),
            Err(e) => tracing::warn!(error = %e, "cannot read this node's certificate for status"),
        }
        self
    }

    /// Sets what [`PeerStatusSource::peers_dialled`] answers.
    pub fn set_dialled(&self, dialled: bool) {
        self.dialled.store(dialled, Ordering::Relaxed);
    }

    /// Inserts or replaces the status of `status.name`.
    pub fn set(&self, status: PeerStatus) {
        let mut map = self.inner.write().unwrap_or_else(|p| p.into_inner());
        map.insert(status.name.clone(), status);
    }

    /// Edits the status of `name` in place, starting from a disconnected, never-seen entry
    /// if the peer is not known yet. Keeps the `*_since` fields in step with what `edit`
    /// changed: `lag_since` and `behind_since` mark when a lag became non-zero,
    /// `connected_since` and `disconnected_since` when the session came up or went down.
    pub fn update(&self, name: &str, edit: impl FnOnce(&mut PeerStatus)) {
        let mut map = self.inner.write().unwrap_or_else(|p| p.into_inner());
        let entry = map.entry(name.to_owned()).or_insert_with(|| PeerStatus {
            name: name.to_owned(),
            ..PeerStatus::default()
        });
        edit_tracked(entry, edit, SystemTime::now());
        // The key stays the peer's name whatever `edit` did.
        entry.name = name.to_owned();
    }

    /// Like [`PeerTable::update`], but only for a peer already in the table; false if absent.
    pub fn update_existing(&self, name: &str, edit: impl FnOnce(&mut PeerStatus)) -> bool {
        let mut map = self.inner.write().unwrap_or_else(|p| p.into_inner());
        match map.get_mut(name) {
            Some(entry) => {
                edit_tracked(entry, edit, SystemTime::now());
                entry.name = name.to_owned();
                true
            }
            None => false,
        }
    }

    /// A copy of the status of `name`, if known.
    pub fn get(&self, name: &str) -> Option<PeerStatus> {
        let map = self.inner.read().unwrap_or_else(|p| p.into_inner());
        map.get(name).cloned()
    }

    /// Forgets `name`.
    pub fn remove(&self, name: &str) {
        let mut map = self.inner.write().unwrap_or_else(|p| p.into_inner());
        map.remove(name);
    }
}

/// Applies `edit` to `entry` and updates the `*_since` fields for what it changed, at `now`.
fn edit_tracked(entry: &mut PeerStatus, edit: impl FnOnce(&mut PeerStatus), now: SystemTime) {
    let was_connected = entry.connected;
    edit(entry);
    let stamp = || Some(rfc3339(now));
    match (was_connected, entry.connected) {
        (false, true) => {
            entry.connected_since = stamp();
            entry.disconnected_since = None;
        }
        (true, false) => {
            entry.connected_since = None;
            entry.disconnected_since = stamp();
            entry.caught_up = false;
        }
        _ => {}
    }
    if entry.lag_versions == 0 {
        entry.lag_since = None;
    } else if entry.lag_since.is_none() {
        entry.lag_since = stamp();
    }
    if entry.behind_versions == 0 {
        entry.behind_since = None;
    } else if entry.behind_since.is_none() {
        entry.behind_since = stamp();
    }
}

impl PeerStatusSource for PeerTable {
    fn peers(&self) -> Vec<PeerStatus> {
        let map = self.inner.read().unwrap_or_else(|p| p.into_inner());
        map.values().cloned().collect()
    }

    fn peers_dialled(&self) -> bool {
        self.dialled.load(Ordering::Relaxed)
    }

    fn transport(&self) -> Option<TransportStats> {
        self.transport.as_ref().map(StatsHandle::snapshot)
    }

    fn certificate(&self) -> Option<NodeCertificate> {
        self.certificate.clone()
    }
}

/// A snapshot of `source` with each collection's `staleness_ms` computed for `now_ms`.
pub(crate) fn peers_at(source: &dyn PeerStatusSource, now_ms: u64) -> Vec<PeerStatus> {
    let mut peers = source.peers();
    for p in &mut peers {
        for c in &mut p.collections {
            c.staleness_ms = c.data_as_of_ms.map(|t| now_ms.saturating_sub(t));
        }
    }
    peers
}

/// Milliseconds since the Unix epoch now (0 before it).
pub(crate) fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Formats `t` as RFC 3339 in UTC with milliseconds (`2024-05-01T08:30:00.123Z`); times
/// before the Unix epoch are given as the epoch.
pub fn rfc3339(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// Formats Unix milliseconds `ms` like [`rfc3339`].
pub fn rfc3339_ms(ms: u64) -> String {
    rfc3339(UNIX_EPOCH + std::time::Duration::from_millis(ms))
}

/// Whole seconds as `1d 2h 3m 4s`, leaving out leading zero units.
pub fn human_duration(secs: u64) -> String {
    let parts = [
        (secs / 86_400, "d"),
        (secs / 3600 % 24, "h"),
        (secs / 60 % 60, "m"),
        (secs % 60, "s"),
    ];
    let start = parts.iter().position(|(n, _)| *n > 0).unwrap_or(3);
    parts[start..]
        .iter()
        .map(|(n, unit)| format!("{n}{unit}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Bytes in binary units: `512 B`, `1.5 KiB`, `3.2 MiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut size = bytes as f64 / 1024.0;
    let mut unit = 0;
    while size >= 1024.0 && unit + 1 < UNITS.len() {
        size /= 1024.0;
        unit += 1;
    }
    format!("{size:.1} {}", UNITS[unit])
}

/// Proleptic Gregorian `(year, month, day)` of `days` after 1970-01-01, negative days before
/// it (Howard Hinnant's algorithm).
pub fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[derive(Debug, Serialize)]
pub(crate) struct CollectionSummary {
    name: String,
    records: u64,
    keys: u64,
    versions: u64,
    digest: String,
    max_hlc: Hlc,
    vv: VersionVector,
}

#[derive(Debug, Serialize)]
pub(crate) struct CollectionsBody {
    collections: Vec<CollectionSummary>,
}

#[derive(Debug, Serialize)]
pub(crate) struct CollectionState {
    records: u64,
    keys: u64,
    versions: u64,
    digest: String,
    max_hlc: Hlc,
}

#[derive(Debug, Serialize)]
pub(crate) struct StoreStatus {
    pub(crate) size_bytes: u64,
    pub(crate) blob_files: u64,
}

#[derive(Debug, Serialize)]
pub(crate) struct WriteStats {
    local: u64,
    remote_applied: u64,
    remote_rejected: u64,
    local_refused: u64,
    syncs: u64,
    synced_writes: u64,
}

impl From<&ReplicaStats> for WriteStats {
    fn from(s: &ReplicaStats) -> Self {
        Self {
            local: s.local_writes.load(Ordering::Relaxed),
            remote_applied: s.remote_applied.load(Ordering::Relaxed),
            remote_rejected: s.remote_rejected.load(Ordering::Relaxed),
            local_refused: s.local_refused.load(Ordering::Relaxed),
            syncs: s.syncs.load(Ordering::Relaxed),
            synced_writes: s.synced_writes.load(Ordering::Relaxed),
        }
    }
}

#[derive(Debug, Serialize)]
pub(crate) struct StatusBody {
    node: String,
    replica: String,
    /// The cluster id (CA fingerprint); null when the certificate is not known.
    cluster_id: Option<String>,
    /// This node's certificate: serial and expiry; null when not known.
    certificate: Option<CertificateStatus>,
    uptime_secs: u64,
    max_value_bytes: usize,
    vv: BTreeMap<String, VersionVector>,
    collections: BTreeMap<String, CollectionState>,
    peers: Vec<PeerStatus>,
    store: StoreStatus,
    writes: WriteStats,
    #[serde(skip_serializing_if = "Option::is_none")]
    transport: Option<TransportStats>,
}

/// `GET /v1/status`.
pub(crate) async fn status(
    State(state): State<ApiState>,
    uri: Uri,
) -> Result<Json<StatusBody>, ApiError> {
    parse_query(uri.query(), &[])?;
    let replica = &state.replica;
    let infos = replica.collections().await?;
    let mut vv = BTreeMap::new();
    let mut collections = BTreeMap::new();
    for info in infos {
        let m = info.meta;
        collections.insert(
            info.name.clone(),
            CollectionState {
                records: m.records,
                keys: m.keys,
                versions: m.versions,
                digest: m.digest.to_hex(),
                max_hlc: m.max_hlc,
            },
        );
        vv.insert(info.name, m.vv);
    }
    let store = store_status(&state).await?;
    let cert = state.peers.certificate();
    Ok(Json(StatusBody {
        node: replica.node().to_owned(),
        replica: replica.id().to_string(),
        cluster_id: cert.as_ref().map(|c| c.cluster_id.clone()),
        certificate: cert
            .as_ref()
            .map(|c| CertificateStatus::at(c, crate::pki::unix_now())),
        uptime_secs: state.started.elapsed().as_secs(),
        max_value_bytes: replica.max_value_bytes(),
        vv,
        collections,
        peers: peers_at(state.peers.as_ref(), unix_ms_now()),
        store,
        writes: replica.stats().into(),
        transport: state.peers.transport(),
    }))
}

/// Store size and blob files, read on the blocking pool (sled walks its files for these).
pub(crate) async fn store_status(state: &ApiState) -> Result<StoreStatus, ApiError> {
    let store = state.replica.store().clone();
    tokio::task::spawn_blocking(move || StoreStatus {
        size_bytes: store.size_on_disk(),
        blob_files: store.unsynced_blob_files(),
    })
    .await
    .map_err(|e| ApiError::Internal(format!("cannot read the store's size: {e}")))
}

/// `GET /v1/collections`.
pub(crate) async fn collections(
    State(state): State<ApiState>,
    uri: Uri,
) -> Result<Json<CollectionsBody>, ApiError> {
    parse_query(uri.query(), &[])?;
    let collections = state
        .replica
        .collections()
        .await?
        .into_iter()
        .map(|info| CollectionSummary {
            name: info.name,
            records: info.meta.records,
            keys: info.meta.keys,
            versions: info.meta.versions,
            digest: info.meta.digest.to_hex(),
            max_hlc: info.meta.max_hlc,
            vv: info.meta.vv,
        })
        .collect();
    Ok(Json(CollectionsBody { collections }))
}

#[derive(Debug, Serialize)]
pub(crate) struct HealthBody {
    status: &'static str,
}

/// `GET /health`: the daemon is up and serving.
pub(crate) async fn health() -> Json<HealthBody> {
    Json(HealthBody { status: "ok" })
}

#[derive(Debug, Serialize)]
pub(crate) struct ReadyBody {
    ready: bool,
    store: &'static str,
    peers_dialled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// `GET /ready`: 200 once the store answers reads and every configured peer has been dialled
/// at least once; 503 (with the same JSON and an `error`) before that or once the store is
/// closed.
pub(crate) async fn ready(State(state): State<ApiState>, uri: Uri) -> axum::response::Response {
    use axum::response::IntoResponse;
    if let Err(e) = parse_query(uri.query(), &[]) {
        return e.into_response();
    }
    let store = match state.replica.is_open() {
        true => state.replica.collections().await.map(|_| ()),
        false => Err(crate::replica::ReplicaError::Closed),
    };
    let peers_dialled = state.peers.peers_dialled();
    let error = match (&store, peers_dialled) {
        (Err(e), _) => Some(format!("the store does not answer: {e}")),
        (Ok(_), false) => Some("not every configured peer has been dialled yet".to_owned()),
        (Ok(_), true) => None,
    };
    let body = ReadyBody {
        ready: error.is_none(),
        store: if store.is_ok() { "open" } else { "unavailable" },
        peers_dialled,
        error,
    };
    let code = if body.ready {
        axum::http::StatusCode::OK
    } else {
        axum::http::StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}
