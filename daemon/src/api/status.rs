//! Node status: `/v1/status`, `/v1/collections`, `/health`, and the peer status that the
//! replication layer reports through [`PeerStatusSource`].

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
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
use crate::replica::ReplicaStats;

/// What `/v1/status` reports about one peer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    /// The peer's node name (from its certificate).
    pub name: String,
    /// True while a session with the peer is open.
    pub connected: bool,
    /// When the peer was last heard from, RFC 3339 in UTC (see [`rfc3339`]); null if never.
    pub last_seen: Option<String>,
    /// Versions this node holds that the peer has not acknowledged yet (summed over the
    /// collections the peer may read); 0 when in step.
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
    /// Versions from this peer refused (relay rule, clock skew, invalid).
    #[serde(default)]
    pub rejected: u64,
    /// Sessions closed because the peer sent bad input (undecodable or invalid frames,
    /// protocol violations, timestamps beyond the skew bound) since this daemon started.
    #[serde(default)]
    pub bad_input: u64,
    /// The error code name and detail of the last such closure; null if none.
    #[serde(default)]
    pub last_bad_input: Option<String>,
}

/// Where the API reads peer status from. The replication layer implements it (or feeds a
/// [`PeerTable`]); the API only takes snapshots.
pub trait PeerStatusSource: Send + Sync + 'static {
    /// A snapshot of every known peer, in name order.
    fn peers(&self) -> Vec<PeerStatus>;
}

/// A shared, cloneable table of peer status, keyed by peer name: the replication layer keeps
/// a clone and updates it, the API reads it.
#[derive(Debug, Clone, Default)]
pub struct PeerTable {
    inner: Arc<RwLock<BTreeMap<String, PeerStatus>>>,
}

impl PeerTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Inserts or replaces the status of `status.name`.
    pub fn set(&self, status: PeerStatus) {
        let mut map = self.inner.write().unwrap_or_else(|p| p.into_inner());
        map.insert(status.name.clone(), status);
    }

    /// Edits the status of `name` in place, starting from a disconnected, never-seen entry
    /// if the peer is not known yet.
    pub fn update(&self, name: &str, edit: impl FnOnce(&mut PeerStatus)) {
        let mut map = self.inner.write().unwrap_or_else(|p| p.into_inner());
        let entry = map.entry(name.to_owned()).or_insert_with(|| PeerStatus {
            name: name.to_owned(),
            ..PeerStatus::default()
        });
        edit(entry);
        // The key stays the peer's name whatever `edit` did.
        entry.name = name.to_owned();
    }

    /// Forgets `name`.
    pub fn remove(&self, name: &str) {
        let mut map = self.inner.write().unwrap_or_else(|p| p.into_inner());
        map.remove(name);
    }
}

impl PeerStatusSource for PeerTable {
    fn peers(&self) -> Vec<PeerStatus> {
        let map = self.inner.read().unwrap_or_else(|p| p.into_inner());
        map.values().cloned().collect()
    }
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
    syncs: u64,
    synced_writes: u64,
}

impl From<&ReplicaStats> for WriteStats {
    fn from(s: &ReplicaStats) -> Self {
        Self {
            local: s.local_writes.load(Ordering::Relaxed),
            remote_applied: s.remote_applied.load(Ordering::Relaxed),
            remote_rejected: s.remote_rejected.load(Ordering::Relaxed),
            syncs: s.syncs.load(Ordering::Relaxed),
            synced_writes: s.synced_writes.load(Ordering::Relaxed),
        }
    }
}

#[derive(Debug, Serialize)]
pub(crate) struct StatusBody {
    node: String,
    replica: String,
    uptime_secs: u64,
    max_value_bytes: usize,
    vv: BTreeMap<String, VersionVector>,
    collections: BTreeMap<String, CollectionState>,
    peers: Vec<PeerStatus>,
    store: StoreStatus,
    writes: WriteStats,
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
    Ok(Json(StatusBody {
        node: replica.node().to_owned(),
        replica: replica.id().to_string(),
        uptime_secs: state.started.elapsed().as_secs(),
        max_value_bytes: replica.max_value_bytes(),
        vv,
        collections,
        peers: state.peers.peers(),
        store,
        writes: replica.stats().into(),
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
