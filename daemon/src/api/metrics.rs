//! Prometheus metrics in the text exposition format 0.0.4, written by hand: replica and
//! collection gauges and counters, peer status, and per-route HTTP request counts and latency
//! histograms collected by the [`track`] middleware in atomic counters.

use std::fmt::{Display, Write as _};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::params::parse_query;
use super::status::{peers_at, store_status};
use super::ApiState;
use crate::replica::CollectionInfo;
use crate::sync::peers::PeerStatus;
use crate::time::{parse_rfc3339_ms, unix_ms_now};
use officesync_api::StoreStatus;

/// Content type of the text exposition format.
pub const CONTENT_TYPE_0_0_4: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Route labels: the router's path templates (every one it serves: a unit test reads the
/// router), and `unmatched` for everything else.
const ROUTES: [&str; 29] = [
    "/v1/collections/{c}/records/{*key}",
    "/v1/collections/{c}/records",
    "/v1/collections",
    "/v1/status",
    "/health",
    "/metrics",
    "/ready",
    "/",
    "/v1/verify",
    "/v1/cluster",
    "/cluster",
    "/v1/collections/{c}/conflicts",
    "/v1/collections/{c}/changes",
    "/v1/collections/{c}/search",
    "/v1/whoami",
    "/v1/users",
    "/v1/users/{name}",
    "/v1/users/{name}/token",
    "/v1/audit",
    "/v1/audit/verify",
    "/v1/bundle/want",
    "/v1/bundle/export",
    "/v1/bundle/import",
    "/v1/backup",
    "/browse",
    "/browse/{c}",
    "/browse/{c}/record",
    "/v1/openapi.json",
    "unmatched",
];
const UNMATCHED: usize = ROUTES.len() - 1;
/// Method labels.
const METHODS: [&str; 6] = ["GET", "HEAD", "PUT", "DELETE", "POST", "other"];
/// Status class labels.
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 13] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// HTTP request counters: by route, method and status class, and a latency histogram by route.
#[derive(Debug)]
pub(crate) struct HttpMetrics {
    /// `ROUTES × METHODS × CLASSES` request counts.
    requests: Vec<AtomicU64>,
    /// `ROUTES × (BUCKETS + 1)` non-cumulative bucket counts; the extra one is above the last.
    buckets: Vec<AtomicU64>,
    /// Per route, total latency in nanoseconds.
    sum_nanos: Vec<AtomicU64>,
}

impl HttpMetrics {
    pub(crate) fn new() -> Self {
        let zeros = |n: usize| (0..n).map(|_| AtomicU64::new(0)).collect();
        Self {
            requests: zeros(ROUTES.len() * METHODS.len() * CLASSES.len()),
            buckets: zeros(ROUTES.len() * (BUCKETS.len() + 1)),
            sum_nanos: zeros(ROUTES.len()),
        }
    }

    fn observe(&self, route: usize, method: usize, status: StatusCode, elapsed: Duration) {
        let class = usize::from(status.as_u16() / 100).clamp(1, CLASSES.len()) - 1;
        bump(
            &self.requests,
            (route * METHODS.len() + method) * CLASSES.len() + class,
            1,
        );
        let secs = elapsed.as_secs_f64();
        let bucket = BUCKETS
            .iter()
            .position(|le| secs <= *le)
            .unwrap_or(BUCKETS.len());
        bump(&self.buckets, route * (BUCKETS.len() + 1) + bucket, 1);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        bump(&self.sum_nanos, route, nanos);
    }

    fn load(counters: &[AtomicU64], at: usize) -> u64 {
        counters.get(at).map_or(0, |c| c.load(Ordering::Relaxed))
    }
}

fn bump(counters: &[AtomicU64], at: usize, by: u64) {
    if let Some(c) = counters.get(at) {
        c.fetch_add(by, Ordering::Relaxed);
    }
}

/// The route label of a request path, mirroring the router's matching.
fn route_of(path: &str) -> usize {
    ROUTES[..UNMATCHED]
        .iter()
        .position(|template| template_matches(template, path))
        .unwrap_or(UNMATCHED)
}

/// Whether `path` is one the router serves under `template`: `{x}` is one non-empty segment,
/// `{*x}` the rest of the path (possibly empty), anything else itself.
fn template_matches(template: &str, path: &str) -> bool {
    let mut want = template.split('/');
    let mut have = path.split('/');
    loop {
        match (want.next(), have.next()) {
            (None, None) => return true,
            (Some(w), Some(_)) if w.starts_with("{*") => return true,
            (Some(w), Some(h)) if w.starts_with('{') => {
                if h.is_empty() {
                    return false;
                }
            }
            (Some(w), Some(h)) if w == h => {}
            _ => return false,
        }
    }
}

fn method_of(method: &Method) -> usize {
    METHODS
        .iter()
        .position(|m| *m == method.as_str())
        .unwrap_or(METHODS.len() - 1)
}

/// Middleware counting every request by route, method and status class, and timing it.
pub(crate) async fn track(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    let route = route_of(req.uri().path());
    let method = method_of(req.method());
    let start = Instant::now();
    let response = next.run(req).await;
    state
        .http
        .observe(route, method, response.status(), start.elapsed());
    response
}

/// `GET /metrics`.
pub(crate) async fn metrics(State(state): State<ApiState>, uri: Uri) -> Result<Response, ApiError> {
    parse_query(uri.query(), &[])?;
    let collections = state.replica.collections().await?;
    let store = store_status(&state).await?;
    let peers = peers_at(state.peers.as_ref(), unix_ms_now());
    let text = render(&state, &collections, &store, &peers);
    Ok(([(CONTENT_TYPE, CONTENT_TYPE_0_0_4)], text).into_response())
}

/// Builds an exposition: one `# HELP` and `# TYPE` per family, then its samples.
struct Exposition {
    out: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape_label(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }

    fn single(&mut self, name: &str, kind: &str, help: &str, value: impl Display) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }
}

/// Escapes a label value: backslash, double quote and newline.
pub(crate) fn escape_label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

fn render(
    state: &ApiState,
    collections: &[CollectionInfo],
    store: &StoreStatus,
    peers: &[PeerStatus],
) -> String {
    let mut x = Exposition {
        out: String::with_capacity(8 * 1024),
    };
    let replica = &state.replica;
    x.family("officesync_info", "gauge", "This node; always 1.");
    x.sample(
        "officesync_info",
        &[("node", replica.node()), ("replica", replica.id().as_str())],
        1,
    );
    if let Some(cert) = state.certificate.clone() {
        x.family(
            "officesync_certificate_expiry_timestamp_seconds",
            "gauge",
            "When this node's certificate expires (notAfter), unix seconds; renew it before.",
        );
        x.sample(
            "officesync_certificate_expiry_timestamp_seconds",
            &[("serial", &cert.serial), ("cluster_id", &cert.cluster_id)],
            cert.not_after_unix,
        );
    }
    x.single(
        "officesync_uptime_seconds",
        "gauge",
        "Seconds since the API started.",
        state.started.elapsed().as_secs(),
    );

    render_collections(&mut x, collections, store);
    if let Some(search) = &state.search {
        render_search(&mut x, &search.status());
    }
    render_writes(&mut x, replica.stats());
    if let Some(frontiers) = &state.frontiers {
        let ages = frontiers.ages(crate::time::unix_ms_now());
        x.family(
            "officesync_frontier_age_seconds",
            "gauge",
            "Per collection: how long ago the stable frontier this node holds was computed (it moves when every reader has caught up).",
        );
        for (c, age) in &ages {
            x.sample(
                "officesync_frontier_age_seconds",
                &[("collection", c)],
                secs(*age),
            );
        }
    }
    x.single(
        "officesync_peers_connected",
        "gauge",
        "Peers with an open session.",
        peers.iter().filter(|p| p.connected).count(),
    );
    render_peers(&mut x, peers);
    render_feeds(&mut x, &state.feeds);
    render_http(&mut x, &state.http);
    x.out
}

/// Per collection: records, keys, versions; and the store's size and unsynced blob files.
fn render_collections(x: &mut Exposition, collections: &[CollectionInfo], store: &StoreStatus) {
    type Field = fn(&CollectionInfo) -> u64;
    let per_collection: [(&str, &str, Field); 3] = [
        (
            "officesync_collection_records",
            "Keys whose winner is not a tombstone.",
            |c| c.meta.records,
        ),
        (
            "officesync_collection_keys",
            "Keys with at least one version, tombstones included.",
            |c| c.meta.keys,
        ),
        (
            "officesync_collection_versions",
            "Current versions, siblings and tombstones included.",
            |c| c.meta.versions,
        ),
    ];
    for (name, help, field) in per_collection {
        x.family(name, "gauge", help);
        for c in collections {
            x.sample(name, &[("collection", &c.name)], field(c));
        }
    }

    x.single(
        "officesync_store_size_bytes",
        "gauge",
        "Bytes the store occupies on disk.",
        store.size_bytes,
    );
    x.single(
        "officesync_store_unsynced_blob_files",
        "gauge",
        "Files the engine keeps outside its fsynced log; must stay 0.",
        store.blob_files,
    );
}

/// The change streams: open now, opened, cut off (client too slow), refused (all open).
fn render_feeds(x: &mut Exposition, feeds: &super::Feeds) {
    x.single(
        "officesync_feeds_open",
        "gauge",
        "Change feeds (event streams of /changes) open now.",
        feeds.open(),
    );
    x.single(
        "officesync_feeds_max",
        "gauge",
        "Change feeds this node serves at once at most (api.max_feeds).",
        feeds.limits().max_feeds,
    );
    x.single(
        "officesync_feeds_opened_total",
        "counter",
        "Change feeds opened.",
        feeds.opened(),
    );
    x.single(
        "officesync_feeds_cutoff_total",
        "counter",
        "Change feeds ended because their client was too slow to keep up.",
        feeds.cutoffs(),
    );
    x.single(
        "officesync_feeds_refused_total",
        "counter",
        "Change feeds refused with 503 because api.max_feeds were open.",
        feeds.refused(),
    );
}

/// Per searchable collection: documents, lag behind the change log, rebuilds, commits, size.
fn render_search(
    x: &mut Exposition,
    indexes: &std::collections::BTreeMap<String, officesync_api::SearchIndexStatus>,
) {
    type Field = fn(&officesync_api::SearchIndexStatus) -> u64;
    let families: [(&str, &str, &str, Field); 6] = [
        (
            "officesync_search_documents",
            "gauge",
            "Records in the collection's search index, as of its last commit.",
            |s| s.docs,
        ),
        (
            "officesync_search_lag_changes",
            "gauge",
            "Changes applied at this node since the search index was last up to date.",
            |s| s.lag_changes,
        ),
        (
            "officesync_search_ready",
            "gauge",
            "1 while the search index answers queries, 0 while it is opened or rebuilt.",
            |s| u64::from(s.state == "ready"),
        ),
        (
            "officesync_search_rebuilds_total",
            "counter",
            "Rebuilds of the search index from the store (missing, damaged, settings changed, cursor expired).",
            |s| s.rebuilds,
        ),
        (
            "officesync_search_commits_total",
            "counter",
            "Commits of the search index.",
            |s| s.commits,
        ),
        (
            "officesync_search_index_bytes",
            "gauge",
            "Bytes the search index occupies on disk.",
            |s| s.disk_bytes,
        ),
    ];
    for (name, kind, help, field) in families {
        x.family(name, kind, help);
        for (collection, status) in indexes {
            x.sample(name, &[("collection", collection)], field(status));
        }
    }
}

/// The replica's write counters.
fn render_writes(x: &mut Exposition, stats: &crate::replica::ReplicaStats) {
    let counters = [
        (
            "officesync_local_writes_total",
            "Local writes acknowledged.",
            &stats.local_writes,
        ),
        (
            "officesync_remote_applied_total",
            "Versions received from peers and applied.",
            &stats.remote_applied,
        ),
        (
            "officesync_remote_rejected_total",
            "Versions received from peers and rejected (clock skew, invalid, siblings past the limit).",
            &stats.remote_rejected,
        ),
        (
            "officesync_local_writes_refused_total",
            "Local writes refused because the merge would have dropped them.",
            &stats.local_refused,
        ),
        (
            "officesync_syncs_total",
            "Durable syncs of the store.",
            &stats.syncs,
        ),
        (
            "officesync_indexed_scans_total",
            "Scan pages with where expressions answered from a secondary index.",
            &stats.indexed_scans,
        ),
        (
            "officesync_full_scans_total",
            "Scan pages with where expressions answered by reading every record of the range.",
            &stats.full_scans,
        ),
        (
            "officesync_synced_writes_total",
            "Writes made durable by those syncs.",
            &stats.synced_writes,
        ),
        (
            "officesync_tombstones_purged_total",
            "Keys forgotten because their only version was a tombstone below the stable frontier.",
            &stats.tombstones_purged,
        ),
        (
            "officesync_obsolete_versions_dropped_total",
            "Received versions dropped as obsolete: below the stable frontier, covered by this node's vector and not held.",
            &stats.obsolete_dropped,
        ),
        (
            "officesync_trees_built_total",
            "Repair hash trees built after bulk catch-ups.",
            &stats.trees_built,
        ),
        (
            "officesync_rejoin_dropped_versions_total",
            "Versions dropped by rejoins after this node was left out of a stable frontier while away.",
            &stats.rejoin_dropped,
        ),
    ];
    for (name, help, counter) in counters {
        x.single(name, "counter", help, counter.load(Ordering::Relaxed));
    }
    x.single(
        "officesync_trees_building",
        "gauge",
        "Collections whose repair hash trees are being built after a bulk catch-up.",
        stats.trees_building.load(Ordering::Relaxed),
    );
}

/// Seconds (with milliseconds) of `ms`.
fn secs(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

fn render_peers(x: &mut Exposition, peers: &[PeerStatus]) {
    type PeerField = fn(&PeerStatus) -> Option<f64>;
    let per_peer: [(&str, &str, &str, PeerField); 16] = [
        (
            "officesync_peer_connected",
            "gauge",
            "1 while a session with the peer is open.",
            |p| Some(f64::from(u8::from(p.connected))),
        ),
        (
            "officesync_peer_lag_versions",
            "gauge",
            "Versions this node holds that the peer has not acknowledged: how far the peer is behind this node.",
            |p| Some(p.lag_versions as f64),
        ),
        (
            "officesync_peer_behind_versions",
            "gauge",
            "Versions the peer was last known to hold that this node has not applied: how far this node is behind the peer (catch-up remaining).",
            |p| Some(p.behind_versions as f64),
        ),
        (
            "officesync_peer_catch_up_complete",
            "gauge",
            "1 while the session with the peer has finished its catch-up and nothing from the peer is pending.",
            |p| Some(f64::from(u8::from(p.caught_up))),
        ),
        (
            "officesync_peer_last_seen_timestamp_seconds",
            "gauge",
            "When the peer was last heard from (Unix time).",
            |p| p.last_seen.as_deref().and_then(parse_rfc3339_ms).map(secs),
        ),
        (
            "officesync_peer_rtt_seconds",
            "gauge",
            "Latest heartbeat round-trip time to the peer.",
            |p| p.rtt_ms.map(secs),
        ),
        (
            "officesync_peer_sent_bytes_total",
            "counter",
            "Bytes sent to the peer.",
            |p| Some(p.bytes_sent as f64),
        ),
        (
            "officesync_peer_received_bytes_total",
            "counter",
            "Bytes received from the peer.",
            |p| Some(p.bytes_received as f64),
        ),
        (
            "officesync_peer_versions_sent_total",
            "counter",
            "Versions sent to the peer.",
            |p| Some(p.versions_sent as f64),
        ),
        (
            "officesync_peer_versions_received_total",
            "counter",
            "Versions received from the peer, rejected ones included.",
            |p| Some(p.versions_received as f64),
        ),
        (
            "officesync_peer_versions_applied_total",
            "counter",
            "Versions received from the peer that became part of this replica.",
            |p| Some(p.versions_applied as f64),
        ),
        (
            "officesync_peer_lag_since_timestamp_seconds",
            "gauge",
            "Since when the peer has been behind this node (Unix time); absent when it is not.",
            |p| p.lag_since.as_deref().and_then(parse_rfc3339_ms).map(secs),
        ),
        (
            "officesync_peer_bad_input_total",
            "counter",
            "Sessions with the peer closed because it sent bad input (undecodable or invalid frames, protocol violations).",
            |p| Some(p.bad_input as f64),
        ),
        (
            "officesync_peer_caught_up_timestamp_seconds",
            "gauge",
            "When the last catch-up from the peer completed (Unix time).",
            |p| p.caught_up_at.as_deref().and_then(parse_rfc3339_ms).map(secs),
        ),
        (
            "officesync_peer_limit_bytes_per_second",
            "gauge",
            "The bandwidth limit ([[sync.limit]]) in force for bulk data sent to the peer; absent when none is.",
            |p| p.limit_bytes_per_sec.map(|b| b as f64),
        ),
        (
            "officesync_peer_bulk_queued_bytes",
            "gauge",
            "Bulk bytes queued for the peer's bulk stream, waiting for the limit or the link.",
            |p| Some(p.queued_bytes as f64),
        ),
    ];
    for (name, kind, help, field) in per_peer {
        x.family(name, kind, help);
        for p in peers {
            if let Some(v) = field(p) {
                x.sample(name, &[("peer", &p.name)], v);
            }
        }
    }

    render_rejections(x, peers);
    render_peer_collections(x, peers);
}

/// Versions refused from each peer, by reason.
fn render_rejections(x: &mut Exposition, peers: &[PeerStatus]) {
    let name = "officesync_peer_versions_rejected_total";
    x.family(
        name,
        "counter",
        "Versions from the peer refused, by reason (relay_rule, policy, clock_skew, too_large, invalid).",
    );
    for p in peers {
        for (reason, n) in &p.rejected_by_reason {
            x.sample(name, &[("peer", &p.name), ("reason", reason)], n);
        }
    }
}

/// Per peer and collection: lag each way, staleness, data as of, newest version.
fn render_peer_collections(x: &mut Exposition, peers: &[PeerStatus]) {
    type CollField = fn(&crate::sync::peers::PeerCollectionStatus) -> Option<f64>;
    let per_collection: [(&str, &str, CollField); 5] = [
        (
            "officesync_peer_collection_lag_versions",
            "Versions of the collection the peer lacks from this node.",
            |c| Some(c.lag_versions as f64),
        ),
        (
            "officesync_peer_collection_behind_versions",
            "Versions of the collection this node lacks from the peer, as of the last contact.",
            |c| Some(c.behind_versions as f64),
        ),
        (
            "officesync_peer_staleness_seconds",
            "Seconds since this node was last known to hold everything the peer held of the collection (now minus data as of); absent before a first catch-up.",
            |c| c.staleness_ms.map(secs),
        ),
        (
            "officesync_peer_data_as_of_timestamp_seconds",
            "The last moment this node was known to hold everything the peer held of the collection (Unix time).",
            |c| c.data_as_of_ms.map(secs),
        ),
        (
            "officesync_peer_newest_version_timestamp_seconds",
            "Wall time of the newest version this node holds whose origin is the peer (Unix time, from its HLC).",
            |c| c.newest_version_ms.map(secs),
        ),
    ];
    for (name, help, field) in per_collection {
        x.family(name, "gauge", help);
        for p in peers {
            for c in &p.collections {
                if let Some(v) = field(c) {
                    x.sample(name, &[("peer", &p.name), ("collection", &c.collection)], v);
                }
            }
        }
    }
}

fn render_http(x: &mut Exposition, http: &HttpMetrics) {
    let name = "officesync_http_requests_total";
    x.family(
        name,
        "counter",
        "HTTP requests answered, by route, method and status class.",
    );
    for (r, route) in ROUTES.iter().enumerate() {
        for (m, method) in METHODS.iter().enumerate() {
            for (c, class) in CLASSES.iter().enumerate() {
                let n =
                    HttpMetrics::load(&http.requests, (r * METHODS.len() + m) * CLASSES.len() + c);
                if n > 0 {
                    x.sample(
                        name,
                        &[("route", route), ("method", method), ("status", class)],
                        n,
                    );
                }
            }
        }
    }

    let name = "officesync_http_request_duration_seconds";
    x.family(name, "histogram", "Time to answer HTTP requests, by route.");
    for (r, route) in ROUTES.iter().enumerate() {
        let base = r * (BUCKETS.len() + 1);
        let count: u64 = (0..=BUCKETS.len())
            .map(|b| HttpMetrics::load(&http.buckets, base + b))
            .sum();
        if count == 0 {
            continue;
        }
        let mut cumulative = 0;
        for (b, le) in BUCKETS.iter().enumerate() {
            cumulative += HttpMetrics::load(&http.buckets, base + b);
            let le = le.to_string();
            x.sample(
                &format!("{name}_bucket"),
                &[("route", route), ("le", &le)],
                cumulative,
            );
        }
        x.sample(
            &format!("{name}_bucket"),
            &[("route", route), ("le", "+Inf")],
            count,
        );
        let sum = HttpMetrics::load(&http.sum_nanos, r) as f64 / 1e9;
        x.sample(&format!("{name}_sum"), &[("route", route)], sum);
        x.sample(&format!("{name}_count"), &[("route", route)], count);
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn every_route_the_router_serves_has_its_label() {
        let labels: std::collections::BTreeSet<String> = ROUTES[..UNMATCHED]
            .iter()
            .map(|r| r.replace("{*", "{"))
            .collect();
        let served = crate::api::openapi::served_paths();
        // `/v1/collections/{c}/records/` is the empty key of `records/{*key}`.
        for path in served.iter().filter(|p| !p.ends_with('/') || *p == "/") {
            assert!(labels.contains(path), "{path} has no route label");
        }
        for label in &labels {
            assert!(served.contains(label), "{label} is not a route");
        }
        assert_eq!(ROUTES[route_of("/v1/collections/c/search")], ROUTES[13]);
        assert_eq!(
            ROUTES[route_of("/v1/users/ann/token")],
            "/v1/users/{name}/token"
        );
        assert_eq!(ROUTES[route_of("/browse/c/record")], "/browse/{c}/record");
        assert_eq!(route_of("/browse//record"), UNMATCHED);
    }

    #[test]
    fn routes_classify_like_the_router() {
        assert_eq!(ROUTES[route_of("/v1/collections/c/records/a/b")], ROUTES[0]);
        assert_eq!(ROUTES[route_of("/v1/collections/c/records/")], ROUTES[0]);
        assert_eq!(ROUTES[route_of("/v1/collections/c/records")], ROUTES[1]);
        assert_eq!(ROUTES[route_of("/v1/collections")], ROUTES[2]);
        assert_eq!(ROUTES[route_of("/v1/status")], ROUTES[3]);
        assert_eq!(ROUTES[route_of("/health")], ROUTES[4]);
        assert_eq!(ROUTES[route_of("/metrics")], ROUTES[5]);
        assert_eq!(ROUTES[route_of("/ready")], "/ready");
        assert_eq!(ROUTES[route_of("/v1/cluster")], "/v1/cluster");
        assert_eq!(ROUTES[route_of("/cluster")], "/cluster");
        assert_eq!(ROUTES[route_of("/")], "/");
        assert_eq!(ROUTES[route_of("/v1/verify")], "/v1/verify");
        for other in [
            "/index.html",
            "/v1/collections/",
            "/v1/collections//records",
            "/v1/collections/c",
            "/x",
        ] {
            assert_eq!(route_of(other), UNMATCHED, "{other}");
        }
    }

    #[test]
    fn rfc3339_parses_back() {
        for ms in [0, 1_714_552_200_123, 951_782_400_000, 4_102_444_799_999] {
            assert_eq!(parse_rfc3339_ms(&super::super::rfc3339_ms(ms)), Some(ms));
        }
        assert_eq!(
            parse_rfc3339_ms("2024-05-01T08:30:00Z"),
            Some(1_714_552_200_000)
        );
        for bad in [
            "",
            "2024-05-01",
            "2024-13-01T00:00:00Z",
            "x-y-zT1:2:3Z",
            "2024-05-01T08:30:00",
        ] {
            assert_eq!(parse_rfc3339_ms(bad), None, "{bad}");
        }
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn histogram_counts_land_in_buckets() {
        let m = HttpMetrics::new();
        m.observe(4, 0, StatusCode::OK, Duration::from_micros(700));
        m.observe(4, 0, StatusCode::NOT_FOUND, Duration::from_secs(60));
        let mut x = Exposition { out: String::new() };
        render_http(&mut x, &m);
        let text = x.out;
        assert!(text.contains(
            "officesync_http_requests_total{route=\"/health\",method=\"GET\",status=\"2xx\"} 1"
        ));
        assert!(text.contains(
            "officesync_http_request_duration_seconds_bucket{route=\"/health\",le=\"0.0005\"} 0"
        ));
        assert!(text.contains(
            "officesync_http_request_duration_seconds_bucket{route=\"/health\",le=\"0.001\"} 1"
        ));
        assert!(text.contains(
            "officesync_http_request_duration_seconds_bucket{route=\"/health\",le=\"5\"} 1"
        ));
        assert!(text.contains(
            "officesync_http_request_duration_seconds_bucket{route=\"/health\",le=\"+Inf\"} 2"
        ));
        assert!(
            text.contains("officesync_http_request_duration_seconds_count{route=\"/health\"} 2")
        );
    }
}
