//! The cost of the province view's status reports at 1,000 nodes:
//! * the size of real reports (built by the daemon's own report builder from synthetic peer
//!   tables of a township, a county relay, a city and the general office), as JSON and as a
//!   signed version in a `Batch` + `Complete` frame pair (uncompressed);
//! * the wire bytes one report costs on a link, measured: a hub and an office (separate
//!   `officesyncd` processes, the office dialing through the counting UDP proxy), the same
//!   window once with the office reporting every second and once every hour; the difference in
//!   UDP payload bytes both ways (QUIC, framing, zstd, the ack) over the difference in reports
//!   the hub applied;
//! * from those, bytes per node per hour on the general office's links at the default
//!   interval (10 s): reports travel up only, so each node's reach the general office once
//!   and go no further;
//! * the general office's memory for 1,000 reports held: an `officesyncd` whose store holds
//!   1,000 reports (999 synthetic ones written into its data dir before it starts) against one
//!   with an empty store, resident memory after both served `/v1/cluster` and `/cluster`; and
//!   the time those take at 1,000 nodes.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use officesync_daemon::api::{PeerCollectionStatus, PeerStatus};
use officesync_daemon::config::{Config, Durability};
use officesync_daemon::province::report::{build_report, encode, ReportInputs};
use officesync_daemon::replica::{CommitMode, Replica, ReplicaOptions};
use officesync_daemon::signing::NodeSigner;
use officesync_daemon::store::SledStore;
use officesync_protocol::status::STATUS_COLLECTION;
use officesync_protocol::wire::{encode_frame, Batch, Complete, FrameFlags, Message, MessageV2};
use officesync_protocol::{Dot, Hlc, ReplicaId, Version, VersionVector};
use officesync_tests::fault_proxy::{Direction, FaultProxy};
use officesync_tests::{ApiClient, DaemonSpec, TestNode};
use serde_json::{json, Value};

use crate::replication::{progress, Pki, HUB};
use crate::servers::procfs;
use crate::{emit, TableRow};

/// The default `status.report_interval_ms`.
const DEFAULT_INTERVAL_S: f64 = 10.0;
/// Nodes of the province.
const NODES: usize = 1000;

/// A peer of a synthetic peer table, caught up, with three collections.
fn peer(name: &str, now_ms: u64) -> PeerStatus {
    PeerStatus {
        name: name.to_owned(),
        connected: true,
        last_seen: Some(officesync_daemon::time::rfc3339_ms(now_ms - 900)),
        bytes_sent: 123_456,
        bytes_received: 654_321,
        rejected: 0,
        collections: ["_nodes", "documents", "situation"]
            .into_iter()
            .map(|c| PeerCollectionStatus {
                collection: c.to_owned(),
                data_as_of_ms: Some(now_ms - 1_200),
                staleness_ms: Some(1_200),
                ..PeerCollectionStatus::default()
            })
            .collect(),
        ..PeerStatus::default()
    }
}

/// The report of `node` dialing `parent`, with `children` offices below it.
fn report_of(node: &str, parent: Option<&str>, children: &[String], now_ms: u64) -> Vec<u8> {
    let dials: Vec<String> = parent.iter().map(|p| (*p).to_owned()).collect();
    let mut peers: Vec<PeerStatus> = dials.iter().map(|p| peer(p, now_ms)).collect();
    peers.extend(children.iter().map(|c| peer(c, now_ms)));
    let inputs = ReportInputs {
        node,
        dials: &dials,
        interval_ms: 10_000,
        unchanged_ms: 60_000,
        uptime_secs: 86_400,
        store_bytes: 512 * 1024 * 1024,
        last_bad_input: None,
        now_ms,
        subtree: Default::default(),
    };
    encode(&build_report(&inputs, &peers))
}

/// The frames one report travels in: a `Batch` of its signed version and the `Complete`.
fn frame_bytes(signer: &NodeSigner, node: &str, value: Vec<u8>) -> Result<usize> {
    let origin = ReplicaId::new(node, 7)?;
    let mut context = VersionVector::new();
    context.raise(&origin, 41); // it supersedes the node's previous report
    let mut v = Version {
        collection: STATUS_COLLECTION.into(),
        key: node.into(),
        dot: Dot::new(origin.clone(), 42),
        hlc: Hlc {
            ms: 1_780_000_000_000,
            logical: 0,
        },
        context,
        value: Some(value),
        author: Some(node.into()),
        signature: None,
    };
    v.signature = Some(signer.sign(&v.collection, &v.key, &v.header(), v.author.as_deref()));
    let batch = Message::V2(MessageV2::Batch(Batch {
        collection: STATUS_COLLECTION.into(),
        origin: origin.clone(),
        versions: vec![v],
    }));
    let complete = Message::V2(MessageV2::Complete(Complete {
        collection: STATUS_COLLECTION.into(),
        origin,
        through: 42,
    }));
    Ok(encode_frame(&batch, FrameFlags::NONE)?.len()
        + encode_frame(&complete, FrameFlags::NONE)?.len())
}

/// Starts `officesyncd` for `name` in `dir` reporting every `interval_ms`, dialing `dial`.
fn spawn(
    pki: &Pki,
    name: &str,
    dir: &Path,
    dial: Option<SocketAddr>,
    interval_ms: u64,
) -> Result<(TestNode, SocketAddr)> {
    let tls = pki.bundle(name)?;
    std::fs::create_dir_all(dir)?;
    let api = SocketAddr::from(([127, 0, 0, 1], crate::servers::free_port()?));
    let sync = SocketAddr::from(([127, 0, 0, 1], officesync_tests::process::free_udp_port()));
    let mut builder = Config::builder(name, dir.join("data"), tls)
        .api_listen(api)
        .sync_listen(sync)
        .admins([HUB])
        .durability(Durability::Sync)
        .report_interval_ms(interval_ms);
    if let Some(addr) = dial {
        builder = builder.peer(HUB, addr.to_string());
    }
    let config = builder.build();
    config
        .validate()
        .with_context(|| format!("config of {name}"))?;
    let config_path = dir.join("officesync.toml");
    std::fs::write(&config_path, config.to_toml_string())?;
    let spec = DaemonSpec {
        name: name.to_owned(),
        config_path,
        api_addr: api,
        log_path: dir.join("officesyncd.log"),
    };
    let node = TestNode::try_start(spec)
        .map_err(|e| anyhow::anyhow!("starting officesyncd {name}: {e}"))?;
    Ok((node, sync))
}

/// `GET path` of a daemon, its JSON body when it is JSON (else null) and its length.
async fn get(api: &ApiClient, path: &str) -> Result<(Value, usize)> {
    let (api, path) = (api.clone(), path.to_owned());
    tokio::task::spawn_blocking(move || {
        let reply = api.request("GET", &path, None)?;
        ensure!(reply.status == 200, "{path}: HTTP {}", reply.status);
        let value = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
        Ok((value, reply.body.len()))
    })
    .await?
}

/// `writes.remote_applied` of a daemon.
async fn remote_applied(api: &ApiClient) -> Result<u64> {
    let (status, _) = get(api, "/v1/status").await?;
    status["writes"]["remote_applied"]
        .as_u64()
        .context("no writes.remote_applied in /v1/status")
}

/// UDP payload bytes through `proxy`, both ways.
fn proxy_bytes(proxy: &FaultProxy) -> u64 {
    proxy.counters(Direction::ToUpstream).forwarded_bytes
        + proxy.counters(Direction::FromUpstream).forwarded_bytes
}

/// What one measured window saw.
struct LinkRun {
    /// UDP payload bytes on the office's link, both ways.
    bytes: u64,
    /// Reports the hub applied.
    reports: u64,
    /// The office's last report as the hub holds it, bytes of JSON.
    report_bytes: usize,
}

/// Over `window`, the office (holding three collections, like a township) reporting every
/// `interval_ms` and writing nothing else.
async fn link_run(pki: &Pki, dir: &Path, interval_ms: u64, window: Duration) -> Result<LinkRun> {
    let (hub, hub_sync) = spawn(pki, HUB, &dir.join("hub"), None, 3_600_000)?;
    let proxy = FaultProxy::start(hub_sync, 7);
    let (office, _) = spawn(
        pki,
        "hefei",
        &dir.join("hefei"),
        Some(proxy.listen_addr()),
        interval_ms,
    )?;
    for collection in ["situation", "documents"] {
        let api = office.api();
        tokio::task::spawn_blocking(move || api.try_put(collection, "hefei/grain", b"{}"))
            .await??;
    }
    // Connected, certificates and records in, and a report with every collection.
    let started = Instant::now();
    while remote_applied(&hub.api()).await? < 4 {
        ensure!(
            started.elapsed() < Duration::from_secs(60),
            "the office never connected"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (bytes0, applied0) = (proxy_bytes(&proxy), remote_applied(&hub.api()).await?);
    tokio::time::sleep(window).await;
    let (bytes1, applied1) = (proxy_bytes(&proxy), remote_applied(&hub.api()).await?);
    let (_, report_bytes) = get(&hub.api(), "/v1/collections/_status/records/hefei").await?;
    Ok(LinkRun {
        bytes: bytes1 - bytes0,
        reports: applied1 - applied0,
        report_bytes,
    })
}

/// The nodes of a province of `n` (the general office, 16 cities, counties of up to 9
/// townships, round-robin over the cities) but the general office: `(name, parent, children)`.
fn province_plan(n: usize) -> Vec<(String, String, Vec<String>)> {
    let cities: Vec<String> = (0..16).map(|c| format!("city-{c:02}")).collect();
    let mut below: Vec<(String, String, Vec<String>)> = Vec::new();
    let mut counties_of: Vec<Vec<String>> = vec![Vec::new(); cities.len()];
    let mut left = n.saturating_sub(1 + cities.len());
    let mut k = 0;
    while left > 0 {
        let city = k % cities.len();
        let county = format!("{}-county-{}", cities[city], k / cities.len());
        let towns: Vec<String> = (0..9.min(left - 1))
            .map(|t| format!("{county}-town-{t}"))
            .collect();
        left -= 1 + towns.len();
        for t in &towns {
            below.push((t.clone(), county.clone(), Vec::new()));
        }
        below.push((county.clone(), cities[city].clone(), towns));
        counties_of[city].push(county);
        k += 1;
    }
    let mut plan: Vec<(String, String, Vec<String>)> = cities
        .iter()
        .zip(counties_of)
        .map(|(c, kids)| (c.clone(), HUB.to_owned(), kids))
        .collect();
    plan.extend(below);
    plan
}

/// Writes the reports of a province of `n` nodes but the general office into a new store in
/// `data`, as node `HUB` would hold them.
async fn fill_reports(data: &Path, n: usize, now_ms: u64) -> Result<()> {
    let store = SledStore::open(data)?;
    let mut opts = ReplicaOptions::new(HUB);
    opts.commit = CommitMode::Periodic(Duration::from_millis(100));
    let replica = Replica::open(Arc::new(store), opts)?;
    let plan = province_plan(n);
    ensure!(
        plan.len() + 1 == n,
        "planned {} reports for {n} nodes",
        plan.len()
    );
    for (name, parent, kids) in &plan {
        let value = report_of(name, Some(parent), kids, now_ms);
        replica.write(STATUS_COLLECTION, name, Some(value)).await?;
    }
    replica.close().await?;
    Ok(())
}

/// Resident memory (MiB) of a general office holding `reports` after it served `/v1/cluster`
/// and `/cluster`, with the nodes listed, the page's bytes and the view's time (ms).
async fn hub_memory(pki: &Pki, dir: &Path, reports: usize) -> Result<(f64, usize, usize, f64)> {
    let now_ms = officesync_daemon::time::unix_ms_now();
    if reports > 1 {
        fill_reports(&dir.join("data"), reports, now_ms).await?;
    }
    let (hub, _) = spawn(pki, HUB, dir, None, 10_000)?;
    let pid = hub.pid().context("hub pid")?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let start = Instant::now();
    let (view, _) = get(&hub.api(), "/v1/cluster").await?;
    let view_ms = start.elapsed().as_secs_f64() * 1e3;
    let (_, page_bytes) = get(&hub.api(), "/cluster").await?;
    // Twice more each: whatever the first answers left in caches is counted.
    for path in ["/v1/cluster", "/cluster", "/v1/cluster", "/cluster"] {
        get(&hub.api(), path).await?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss = procfs::rss_mib(pid).context("hub RSS")?;
    let listed = view["nodes"].as_array().map_or(0, Vec::len);
    Ok((rss, listed, page_bytes, view_ms))
}

/// Runs the group.
pub(crate) async fn run(pki: &Pki, quick: bool, rows: &mut Vec<TableRow>) -> Result<()> {
    let now_ms = officesync_daemon::time::unix_ms_now();
    let towns: Vec<String> = (0..9).map(|t| format!("county-a-town-{t}")).collect();
    let cities: Vec<String> = (0..16).map(|c| format!("city-{c:02}")).collect();
    let signer = {
        let tls = pki.bundle("county-a-town-0")?;
        NodeSigner::load(&tls.join("node.pem"), &tls.join("node.key"))?
    };
    let mut township_frames = 0;
    for (case, node, parent, kids) in [
        (
            "township (1 peer)",
            "county-a-town-0",
            Some("county-a"),
            Vec::new(),
        ),
        (
            "county relay (1 + 9 peers)",
            "county-a",
            Some("city-00"),
            towns.clone(),
        ),
        ("general office (16 peers)", HUB, None, cities.clone()),
    ] {
        let json_bytes = report_of(node, parent, &kids, now_ms);
        let frames = frame_bytes(&signer, node, json_bytes.clone())?;
        if node == "county-a-town-0" {
            township_frames = frames;
        }
        emit(
            rows,
            json!({ "figure": "status_report_bytes", "case": case,
                    "json_bytes": json_bytes.len(), "frame_bytes_uncompressed": frames }),
            TableRow {
                figure: "status report size".into(),
                case: case.into(),
                result: format!("{} B JSON, {frames} B in frames", json_bytes.len()),
                baseline: "-".into(),
                ratio: None,
                target: "-".into(),
                met: None,
            },
        );
    }

    let window = Duration::from_secs(if quick { 4 } else { 20 });
    let dir = tempfile::tempdir()?;
    progress(format_args!(
        "province: link bytes, reports every second for {window:?}"
    ));
    let fast = link_run(pki, &dir.path().join("fast"), 1_000, window).await?;
    progress(format_args!(
        "province: link bytes, reports every hour for {window:?}"
    ));
    let slow = link_run(pki, &dir.path().join("slow"), 3_600_000, window).await?;
    ensure!(
        fast.reports > slow.reports,
        "no more reports at 1 s than at 1 h ({} vs {})",
        fast.reports,
        slow.reports
    );
    let per_report =
        fast.bytes.saturating_sub(slow.bytes) as f64 / (fast.reports - slow.reports) as f64;
    let per_hour = per_report * 3600.0 / DEFAULT_INTERVAL_S;
    emit(
        rows,
        json!({ "figure": "status_report_wire_bytes",
                "case": "measured, office with 1 peer and 3 collections",
                "bytes_per_report": per_report, "report_json_bytes": fast.report_bytes,
                "window_s": window.as_secs(),
                "reports_fast": fast.reports, "reports_slow": slow.reports,
                "link_bytes_fast": fast.bytes, "link_bytes_slow": slow.bytes,
                "township_frame_bytes_uncompressed": township_frames }),
        TableRow {
            figure: "status report on the wire".into(),
            case: format!(
                "one report of {} B JSON, UDP payload both ways (ack included)",
                fast.report_bytes
            ),
            result: format!("{per_report:.0} B"),
            baseline: format!("{township_frames} B township frames uncompressed"),
            ratio: Some(per_report / township_frames as f64),
            target: "-".into(),
            met: None,
        },
    );
    // Reports travel up only: the general office forwards none, so its links carry each
    // node's reports once, in.
    emit(
        rows,
        json!({ "figure": "status_bytes_per_node_hour", "case": "general office links, in",
                "interval_s": DEFAULT_INTERVAL_S, "bytes": per_hour,
                "province_bytes_per_hour": per_hour * NODES as f64,
                "province_bytes_per_second": per_hour * NODES as f64 / 3600.0 }),
        TableRow {
            figure: "reports at the general office".into(),
            case: format!("per node per hour (10 s interval); all {NODES} nodes"),
            result: format!(
                "{:.0} KiB/node/h; {:.1} MiB/h ({:.1} KiB/s) for {NODES}",
                per_hour / 1024.0,
                per_hour * NODES as f64 / 1024.0 / 1024.0,
                per_hour * NODES as f64 / 1024.0 / 3600.0
            ),
            baseline: "-".into(),
            ratio: None,
            target: "-".into(),
            met: None,
        },
    );

    progress(format_args!(
        "province: general office memory, empty and with {NODES} reports"
    ));
    let (empty_rss, _, _, _) = hub_memory(pki, &dir.path().join("empty"), 1).await?;
    let (full_rss, listed, page_bytes, view_ms) =
        hub_memory(pki, &dir.path().join("full"), NODES).await?;
    ensure!(
        listed == NODES,
        "the view listed {listed} nodes, not {NODES}"
    );
    emit(
        rows,
        json!({ "figure": "status_hub_memory", "case": "1000 reports held",
                "rss_mib_empty": empty_rss, "rss_mib_with_reports": full_rss,
                "delta_mib": full_rss - empty_rss, "cluster_view_ms": view_ms,
                "cluster_page_bytes": page_bytes, "nodes_listed": listed }),
        TableRow {
            figure: "general office memory".into(),
            case: format!("{NODES} reports held, after /v1/cluster and /cluster"),
            result: format!(
                "{full_rss:.1} MiB RSS (+{:.1} MiB); view {view_ms:.0} ms, page {} KiB",
                full_rss - empty_rss,
                page_bytes / 1024
            ),
            baseline: format!("{empty_rss:.1} MiB with no report"),
            ratio: Some(full_rss / empty_rss),
            target: "-".into(),
            met: None,
        },
    );
    Ok(())
}
