//! Node status: `/v1/status`, `/v1/collections`, `/health`, and the peer status that the
//! replication layer reports through [`PeerStatusSource`].

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::UNIX_EPOCH;

use axum::extract::State;
use axum::http::Uri;
use axum::Json;
use officesync_api::{
    CertificateStatus, CollectionState, CollectionSummary, CollectionsBody, HealthBody, ReadyBody,
    StatusBody, StoreStatus, WriteStats,
};
use officesync_protocol::status::STATUS_COLLECTION;
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::params::parse_query;
use super::{wire_hlc, wire_vv, ApiState};
use crate::config::Config;
use crate::pki::{self, PkiError};
use crate::replica::ReplicaStats;
use crate::sync::peers::{PeerStatus, PeerTable};
use crate::time::{rfc3339, unix_ms_now};
use crate::transport::StatsHandle;

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

/// The `certificate` object of `/v1/status` for `cert` at `now_unix` (seconds).
fn certificate_status(cert: &NodeCertificate, now_unix: i64) -> CertificateStatus {
    let not_after = UNIX_EPOCH + std::time::Duration::from_secs(cert.not_after_unix.max(0) as u64);
    CertificateStatus {
        serial: cert.serial.clone(),
        not_after: rfc3339(not_after),
        not_after_unix: cert.not_after_unix,
        expires_in_secs: cert.not_after_unix - now_unix,
    }
}

/// Where the API reads peer status from: the replication layer's [`PeerTable`], usually. The
/// API only takes snapshots.
pub trait PeerStatusSource: Send + Sync + 'static {
    /// A snapshot of every known peer, in name order.
    fn peers(&self) -> Vec<PeerStatus>;

    /// True once every configured peer has been dialled at least once (for `/ready`).
    fn peers_dialled(&self) -> bool {
        true
    }
}

impl PeerStatusSource for PeerTable {
    fn peers(&self) -> Vec<PeerStatus> {
        self.snapshot()
    }

    fn peers_dialled(&self) -> bool {
        self.dialled()
    }
}

/// `peers`, each disconnected one with the transport's last dial or handshake error of it.
fn with_dial_errors(
    mut peers: Vec<PeerStatus>,
    transport: Option<&StatsHandle>,
) -> Vec<PeerStatus> {
    let Some(transport) = transport else {
        return peers;
    };
    for p in peers.iter_mut().filter(|p| !p.connected) {
        if let Some((at, error)) = transport.dial_error(&p.name) {
            p.last_error = Some(error);
            p.last_error_at = Some(crate::time::rfc3339_ms(at));
        }
    }
    peers
}

/// True for the collections that status listings leave out: `_status` differs between nodes
/// by design (an office holds only its own report, an admin every report it relays) and
/// changes every report interval; `/v1/cluster` is its view.
pub(crate) fn listed(collection: &str) -> bool {
    collection != STATUS_COLLECTION
}

/// A snapshot of `source` with each collection's `staleness_ms` computed for `now_ms`
/// (`_status` left out, see [`listed`]).
pub(crate) fn peers_at(source: &dyn PeerStatusSource, now_ms: u64) -> Vec<PeerStatus> {
    let mut peers = source.peers();
    for p in &mut peers {
        p.collections.retain(|c| listed(&c.collection));
        for c in &mut p.collections {
            c.staleness_ms = c.data_as_of_ms.map(|t| now_ms.saturating_sub(t));
        }
    }
    peers
}

/// The `writes` object of `/v1/status`: `s`'s counters now.
fn write_stats(s: &ReplicaStats) -> WriteStats {
    WriteStats {
        local: s.local_writes.load(Ordering::Relaxed),
        remote_applied: s.remote_applied.load(Ordering::Relaxed),
        remote_rejected: s.remote_rejected.load(Ordering::Relaxed),
        local_refused: s.local_refused.load(Ordering::Relaxed),
        syncs: s.syncs.load(Ordering::Relaxed),
        synced_writes: s.synced_writes.load(Ordering::Relaxed),
    }
}

/// `GET /v1/status`.
pub(crate) async fn status(
    State(state): State<ApiState>,
    who: super::gate::Who,
    uri: Uri,
) -> Result<Json<StatusBody>, ApiError> {
    parse_query(uri.query(), &[])?;
    let replica = &state.replica;
    let infos = replica.collections().await?;
    let mut vv = BTreeMap::new();
    let mut collections = BTreeMap::new();
    // A user sees the collections it may read (their names, counts and digests), no others.
    for info in infos
        .into_iter()
        .filter(|i| who.0.may_read(&i.name) && listed(&i.name))
    {
        let m = info.meta;
        collections.insert(
            info.name.clone(),
            CollectionState {
                records: m.records,
                keys: m.keys,
                versions: m.versions,
                digest: m.digest.to_hex(),
                max_hlc: wire_hlc(m.max_hlc),
                indexes: replica.indexes().pointers(&info.name),
            },
        );
        vv.insert(info.name, wire_vv(&m.vv));
    }
    let store = store_status(&state).await?;
    let cert = state.certificate.clone();
    Ok(Json(StatusBody {
        node: replica.node().to_owned(),
        replica: replica.id().to_string(),
        cluster_id: cert.as_ref().map(|c| c.cluster_id.clone()),
        certificate: cert
            .as_ref()
            .map(|c| certificate_status(c, crate::pki::unix_now())),
        uptime_secs: state.started.elapsed().as_secs(),
        max_value_bytes: replica.max_value_bytes() as u64,
        vv,
        collections,
        peers: with_dial_errors(
            peers_at(state.peers.as_ref(), unix_ms_now()),
            state.transport.as_ref(),
        )
        .into_iter()
        .map(|mut p| {
            p.collections.retain(|c| who.0.may_read(&c.collection));
            p
        })
        .collect(),
        store,
        writes: write_stats(replica.stats()),
        transport: state.transport.as_ref().map(StatsHandle::snapshot),
        search: state.search.as_ref().map_or_else(Default::default, |s| {
            let mut indexes = s.status();
            indexes.retain(|c, _| who.0.may_read(c));
            indexes
        }),
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

/// `GET /v1/collections`: lists only the collections the user may read.
pub(crate) async fn collections(
    State(state): State<ApiState>,
    who: super::gate::Who,
    uri: Uri,
) -> Result<Json<CollectionsBody>, ApiError> {
    parse_query(uri.query(), &[])?;
    let collections = state
        .replica
        .collections()
        .await?
        .into_iter()
        .filter(|info| who.0.may_read(&info.name) && listed(&info.name))
        .map(|info| CollectionSummary {
            name: info.name,
            records: info.meta.records,
            keys: info.meta.keys,
            versions: info.meta.versions,
            digest: info.meta.digest.to_hex(),
            max_hlc: wire_hlc(info.meta.max_hlc),
            vv: wire_vv(&info.meta.vv),
        })
        .collect();
    Ok(Json(CollectionsBody { collections }))
}

/// `GET /health`: the daemon is up and serving.
pub(crate) async fn health() -> Json<HealthBody> {
    Json(HealthBody::ok())
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
        store: if store.is_ok() { "open" } else { "unavailable" }.to_owned(),
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
