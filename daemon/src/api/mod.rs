//! The local HTTP API of `officesyncd`: records, scans, collections, status, health and
//! Prometheus metrics, served by axum over one [`Replica`].
//!
//! Routes (see DESIGN.md, "HTTP API"):
//!
//! | method | path | answer |
//! |---|---|---|
//! | `PUT` | `/v1/collections/{c}/records/{key}` | `{"version", "hlc"}` |
//! | `GET` | `/v1/collections/{c}/records/{key}` | the winner's raw bytes, or `?all=true`: `{"siblings": [..]}` |
//! | `DELETE` | `/v1/collections/{c}/records/{key}` | `{"version", "hlc"}` of the tombstone |
//! | `GET` | `/v1/collections/{c}/records?prefix=&after=&limit=&where=` | `{"records": [..], "next"}` |
//! | `GET` | `/v1/collections/{c}/conflicts?prefix=&after=&limit=` | `{"conflicts": [{"key", "siblings"}], "next"}` |
//! | `GET` | `/v1/collections/{c}/changes?since=&prefix=&limit=` | `{"changes": [..], "next"}`, or with `Accept: text/event-stream` a live stream of them |
//! | `GET` | `/v1/collections/{c}/search?q=&limit=` | `{"hits": [{"key", "version", "score", "snippet"}], "total"}` |
//! | `GET` | `/v1/collections` | `{"collections": [..]}` |
//! | `GET` | `/v1/status` | node, replica, vv, collections, peers, store, writes |
//! | `GET` | `/health` | `{"status": "ok"}` (liveness) |
//! | `GET` | `/ready` | 200 `{"ready": true, ..}` once the store answers and every configured peer was dialled, else 503 |
//! | `GET` | `/metrics` | Prometheus text format 0.0.4 |
//! | `GET` | `/v1/openapi.json` | the OpenAPI 3.0 description of every route here (`openapi.json`) |
//! | `GET` | `/` | the read-only HTML status page (refreshes itself) |
//! | `GET` | `/browse`, `/browse/{c}?prefix=&where=`, `/browse/{c}/record?key=` | the read-only HTML browse pages for staff |
//! | `GET` | `/v1/cluster?behind=` | the province view `{"node", "generated_at", "nodes": [..]}` (admin) |
//! | `GET` | `/cluster?behind=` | the province drawn as a tree, server-rendered SVG (admin) |
//! | `GET` | `/v1/bundle/want` | this node's vectors, `{"node", "replica", "vvs"}` (admin) |
//! | `POST` | `/v1/bundle/export` | `{"collections", "for", "want"}` in, the bundle's bytes out (admin, at an admin node) |
//! | `POST` | `/v1/bundle/import` | the bundle's bytes in, `{"exporter", "versions", "applied", ..}` out (admin) |
//!
//! The key is the rest of the path after `/records/`, percent-decoded strictly (so it may
//! contain `/`). Every 4xx and 5xx answer is JSON `{"error": "..."}` ([`ApiError`]).

mod access;
mod backup;
mod browse;
mod bundle;
mod cluster;
mod error;
mod feed;
mod gate;
mod journal;
mod metrics;
mod openapi;
mod params;
mod records;
mod search;
mod serve;
mod status;
mod svg;
mod users;
pub(crate) mod web;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use axum::{middleware, Router};

use crate::replica::Replica;

pub use crate::sync::peers::{PeerCollectionStatus, PeerStatus, PeerTable};
pub use crate::time::{
    civil_from_days, human_bytes, human_duration, parse_rfc3339_ms, rfc3339, rfc3339_ms,
};
pub use access::Access;
pub use bundle::{BUNDLE_CONTENT_TYPE, BUNDLE_VERSIONS_HEADER};
pub use error::ApiError;
pub use feed::{
    FeedLimits, Feeds, DEFAULT_CHANGES_LIMIT, DEFAULT_FEED_CUTOFF, FEED_BUFFER, FEED_KEEP_ALIVE,
    MAX_CHANGES_LIMIT,
};
pub use gate::Gate;
pub use journal::Journal;
pub use metrics::CONTENT_TYPE_0_0_4;
pub use openapi::OPENAPI_JSON;
pub use records::{
    DEFAULT_SCAN_LIMIT, HLC_HEADER, MAX_SCAN_LIMIT, SIBLINGS_HEADER, VERSION_HEADER,
};
pub use serve::{serve, ServeLimits, SHUTDOWN_GRACE as SERVE_SHUTDOWN_GRACE};
pub use status::{NodeCertificate, PeerStatusSource};

use metrics::HttpMetrics;

/// Everything the handlers share: the replica, the start time, the peer status source and
/// the HTTP request counters. Cheap to clone.
#[derive(Clone)]
pub struct ApiState {
    replica: Replica,
    started: Instant,
    peers: Arc<dyn PeerStatusSource>,
    /// The transport's connection and handshake counts, when replication runs.
    transport: Option<crate::transport::StatsHandle>,
    /// This node's certificate and cluster id, when they could be read.
    certificate: Option<NodeCertificate>,
    verifier: Option<Arc<dyn Verifier>>,
    http: Arc<HttpMetrics>,
    access: Access,
    gate: Gate,
    journal: Option<Journal>,
    bundles: Option<Arc<crate::bundle::Bundles>>,
    /// The province view: status reports, arrival times, lag history.
    province: Option<Arc<crate::province::Province>>,
    /// The stable frontiers this node holds (tombstone collection), for metrics.
    frontiers: Option<Arc<crate::frontier::FrontierState>>,
    backups: Option<crate::backup::BackupSource>,
    /// The change streams open and their bounds.
    feeds: Arc<Feeds>,
    /// Full-text search of the collections in `[search]`.
    search: Option<Arc<crate::search::Search>>,
}

/// Runs `officesync verify`: compares collection digests with peers now.
pub trait Verifier: Send + Sync + 'static {
    /// One report per peer and collection.
    fn verify(&self) -> futures_boxed::BoxFuture<Vec<crate::sync::VerifyReport>>;
}

pub use officesync_api::VerifyResults;

/// `hlc` as the API writes it.
pub(crate) fn wire_hlc(hlc: officesync_protocol::Hlc) -> officesync_api::Hlc {
    officesync_api::Hlc {
        ms: hlc.ms,
        logical: hlc.logical,
    }
}

/// `vv` as the API writes it: origin → counter.
pub(crate) fn wire_vv(vv: &officesync_protocol::VersionVector) -> officesync_api::VersionVector {
    vv.iter()
        .map(|(origin, counter)| (origin.as_str().to_owned(), counter))
        .collect()
}

/// A boxed future, for [`Verifier`] (kept local to avoid a futures dependency).
pub mod futures_boxed {
    /// A pinned, boxed, sendable future.
    pub type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;
}

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiState")
            .field("replica", &self.replica)
            .field("started", &self.started)
            .finish_non_exhaustive()
    }
}

impl ApiState {
    /// State serving `replica`, started now, with no peers (an empty [`PeerTable`]).
    pub fn new(replica: Replica) -> Self {
        let access = Access::new(
            replica.node(),
            false,
            crate::policy::PolicyHandle::fixed(Default::default()),
        );
        Self {
            replica,
            started: Instant::now(),
            peers: Arc::new(PeerTable::new()),
            transport: None,
            certificate: None,
            verifier: None,
            http: Arc::new(HttpMetrics::new()),
            access,
            gate: Gate::Open,
            journal: None,
            bundles: None,
            province: None,
            frontiers: None,
            backups: None,
            feeds: Arc::new(Feeds::default()),
            search: None,
        }
    }

    /// Serves change streams with `feeds` (the default: 1000 at most, never told to stop).
    pub fn with_feeds(mut self, feeds: Feeds) -> Self {
        self.feeds = Arc::new(feeds);
        self
    }

    /// Records writes, deletes, policy and user changes and refused authentications in
    /// `journal` (the node's audit log).
    pub fn with_journal(mut self, journal: Journal) -> Self {
        self.journal = Some(journal);
        self
    }

    /// Authenticates requests with `gate` (the default, [`Gate::Open`], lets everyone in as
    /// an admin: `auth = "none"`).
    pub fn with_gate(mut self, gate: Gate) -> Self {
        self.gate = gate;
        self
    }

    /// Records a refused authentication from `addr` in the audit log (rate-limited there).
    pub(crate) fn audit_refused(&self, addr: std::net::IpAddr, path: &str, why: &str) {
        if let Some(journal) = &self.journal {
            journal.refused(&addr.to_string(), &format!("{path}: {why}"));
        }
    }

    /// Records `record` in the audit log and waits until it is durable. The change it records
    /// is already made, so a failure is logged, not answered.
    pub(crate) async fn audit(&self, record: crate::audit::Record) {
        if let Some(journal) = &self.journal {
            if let Err(e) = journal.record(record).await {
                tracing::error!(error = %e, "a change was made but could not be recorded in the audit log");
            }
        }
    }

    /// Enforces `access` (the node's policy) on record reads and writes; without it every
    /// collection but `_policy` is open.
    pub fn with_access(mut self, access: Access) -> Self {
        self.access = access;
        self
    }

    /// Reports peers from `source` (the replication layer's [`PeerTable`], usually) in
    /// `/v1/status` and `/metrics`.
    pub fn with_peers(mut self, source: Arc<dyn PeerStatusSource>) -> Self {
        self.peers = source;
        self
    }

    /// Reports the counts of `transport` in `/v1/status`.
    pub fn with_transport(mut self, transport: crate::transport::StatsHandle) -> Self {
        self.transport = Some(transport);
        self
    }

    /// Reports the certificate and cluster id of `config`'s `[tls]` files in `/v1/status`
    /// and `/metrics` (none, with a warning, if they cannot be read).
    pub fn with_certificate_of(mut self, config: &crate::config::Config) -> Self {
        match NodeCertificate::read(config) {
            Ok(cert) => self.certificate = Some(cert),
            Err(e) => tracing::warn!(error = %e, "cannot read this node's certificate for status"),
        }
        self
    }

    /// Serves the offline-bundle routes with `bundles` (without it they answer 404).
    pub fn with_bundles(mut self, bundles: Arc<crate::bundle::Bundles>) -> Self {
        self.bundles = Some(bundles);
        self
    }

    /// Reports the ages of the stable frontiers in `/metrics`.
    pub fn with_frontiers(mut self, frontiers: Arc<crate::frontier::FrontierState>) -> Self {
        self.frontiers = Some(frontiers);
        self
    }

    /// Serves `/v1/cluster` and `/cluster` from `province`, and draws the peers' lag history
    /// on the status page (without it the province view holds no node).
    pub fn with_province(mut self, province: Arc<crate::province::Province>) -> Self {
        self.province = Some(province);
        self
    }

    /// Serves `GET /v1/backup` from `backups` (without it the route answers 404).
    pub fn with_backups(mut self, backups: crate::backup::BackupSource) -> Self {
        self.backups = Some(backups);
        self
    }

    /// Serves `GET /v1/collections/{c}/search` from `search` (without it every collection
    /// answers 404 there), and reports its indexes in `/v1/status` and `/metrics`.
    pub fn with_search(mut self, search: Arc<crate::search::Search>) -> Self {
        self.search = Some(search);
        self
    }

    /// Serves `POST /v1/verify` with `verifier` (without one it answers 404).
    pub fn with_verifier(mut self, verifier: Arc<dyn Verifier>) -> Self {
        self.verifier = Some(verifier);
        self
    }

    /// The replica served.
    pub fn replica(&self) -> &Replica {
        &self.replica
    }
}

/// Extra body bytes accepted by the body limit beyond `max_value_bytes`, so that a value just
/// over the limit is measured and refused by the replica's own check (with its exact length).
const BODY_LIMIT_MARGIN: usize = 1;

/// The body limit of the bundle routes: a bundle, or an export request with a want.
const BUNDLE_BODY_LIMIT: usize = crate::bundle::MAX_BUNDLE_BYTES;

/// The API's router with every route of DESIGN.md, JSON errors for unknown paths and methods,
/// a body limit of the replica's `max_value_bytes` (plus a margin) and request metrics.
pub fn router(state: ApiState) -> Router {
    let body_limit = state
        .replica
        .max_value_bytes()
        .saturating_add(BODY_LIMIT_MARGIN);
    Router::new()
        .route(
            "/v1/collections/{c}/records/{*key}",
            get(records::get_record)
                .put(records::put_record)
                .delete(records::delete_record),
        )
        // `{*key}` never matches an empty rest; route it anyway so an empty key is a 400.
        .route(
            "/v1/collections/{c}/records/",
            get(records::get_record)
                .put(records::put_record)
                .delete(records::delete_record),
        )
        .route("/v1/collections/{c}/records", get(records::scan))
        .route("/v1/collections/{c}/conflicts", get(records::conflicts))
        .route("/v1/collections/{c}/changes", get(feed::changes))
        .route("/v1/collections/{c}/search", get(search::search))
        .route("/v1/collections", get(status::collections))
        .route("/v1/status", get(status::status))
        .route("/v1/verify", axum::routing::post(verify))
        .route("/v1/whoami", get(users::whoami))
        .route("/v1/users", get(users::list).post(users::add))
        .route("/v1/users/{name}", axum::routing::delete(users::remove))
        .route("/v1/users/{name}/token", axum::routing::post(users::rotate))
        .route("/v1/audit", get(journal::list))
        .route("/v1/audit/verify", get(journal::verify))
        .route("/v1/bundle/want", get(bundle::want))
        // A bundle is larger than a value: these two take up to MAX_BUNDLE_BYTES.
        .route(
            "/v1/bundle/export",
            axum::routing::post(bundle::export).layer(DefaultBodyLimit::max(BUNDLE_BODY_LIMIT)),
        )
        .route(
            "/v1/bundle/import",
            axum::routing::post(bundle::import).layer(DefaultBodyLimit::max(BUNDLE_BODY_LIMIT)),
        )
        .route("/v1/backup", get(backup::download))
        .route("/health", get(status::health))
        .route("/ready", get(status::ready))
        .route("/", get(web::page))
        .route("/browse", get(browse::collections))
        .route("/browse/{c}", get(browse::collection))
        .route("/browse/{c}/record", get(browse::record))
        .route("/v1/cluster", get(cluster::cluster))
        .route("/cluster", get(cluster::page))
        .route("/metrics", get(metrics::metrics))
        .route("/v1/openapi.json", get(openapi::openapi))
        .method_not_allowed_fallback(error::method_not_allowed)
        .fallback(error::not_found)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            gate::authenticate,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            metrics::track,
        ))
        .with_state(state)
}

#[cfg(test)]
mod feed_tests;
#[cfg(test)]
mod gate_tests;
#[cfg(test)]
mod query_tests;
#[cfg(test)]
mod tests;

/// `POST /v1/verify`: `{"results": [{"peer", "collection", "outcome"}]}`.
async fn verify(
    axum::extract::State(state): axum::extract::State<ApiState>,
    who: gate::Who,
) -> Result<axum::Json<VerifyResults>, ApiError> {
    who.require_admin("run verify")?;
    match &state.verifier {
        Some(v) => Ok(axum::Json(VerifyResults {
            results: v.verify().await,
        })),
        None => Err(ApiError::NotFound(
            "verify needs replication, which is not running".into(),
        )),
    }
}
