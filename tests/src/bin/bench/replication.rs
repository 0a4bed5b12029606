//! Shared pieces of the replication workloads: the nodes (in this process through the daemon
//! library, or as `officesyncd` processes), the records they write (16-byte keys; random,
//! 4 KiB random or JSON values), waiting for convergence, percentiles, and the dispatcher
//! that runs each workload module with its sizes (`--quick` or full).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use officesync_daemon::config::{Config, Durability};
use officesync_daemon::node::Node;
use officesync_daemon::pki::{self, init_ca, issue, IssueOptions};
use officesync_daemon::replica::{CollectionMeta, Replica};
use officesync_protocol::{Digest, ReplicaId};
use officesync_tests::{ApiClient, DaemonSpec, TestNode, TestRng};
use serde_json::{json, Value};

use crate::{emit, Args, TableRow};

/// The hub's node name (issued as an admin, so it relays).
pub(crate) const HUB: &str = "general-office";
/// Office names.
pub(crate) const OFFICE_A: &str = "hefei";
/// The second office.
pub(crate) const OFFICE_B: &str = "wuhu";
/// The collection every figure writes.
pub(crate) const COLL: &str = "situation";
/// Concurrent writers filling a hub.
const FILL_WRITERS: usize = 64;

/// Sizes of the replication workloads (`--quick` or full).
pub(crate) struct Sizes {
    /// Records of the bulk catch-up with 256 B values.
    pub(crate) bulk_records: usize,
    /// Records of the bulk catch-up with 4 KiB values.
    pub(crate) bulk_records_4k: usize,
    /// Records both nodes hold before a partition.
    pub(crate) heal_records: usize,
    /// Records both nodes hold when 10 of them are lost at the office and repaired.
    pub(crate) repair_records: usize,
    /// Seconds of paced writes per live-propagation rate (10,000/s runs half as long).
    pub(crate) live_secs: f64,
    /// Office counts of the fan-out figure.
    pub(crate) fanout_offices: Vec<usize>,
    /// Writes per fan-out office count.
    pub(crate) fanout_writes: usize,
    /// Seconds of each probe of the sustained-throughput search.
    pub(crate) sustain_probe_secs: f64,
    /// Seconds of the confirming run at the highest rate found (0: no confirming run).
    pub(crate) sustain_confirm_secs: f64,
    /// Highest rate the sustained search tries.
    pub(crate) sustain_max_rate: u64,
    /// Records of the wire-efficiency catch-up.
    pub(crate) wire_records: usize,
    /// Live single writes (and burst writes) of the wire-efficiency figure.
    pub(crate) wire_live: usize,
    /// Writes of the wire-efficiency figure each after a quiet spell (a new zstd stream each).
    pub(crate) wire_after_idle: usize,
    /// Longest any catch-up may take.
    pub(crate) catch_up_timeout: Duration,
}

impl Sizes {
    fn new(quick: bool) -> Sizes {
        if quick {
            Sizes {
                bulk_records: 10_000,
                bulk_records_4k: 1_000,
                heal_records: 4_000,
                repair_records: 20_000,
                live_secs: 1.0,
                fanout_offices: vec![2, 4],
                fanout_writes: 10,
                sustain_probe_secs: 1.0,
                sustain_confirm_secs: 0.0,
                sustain_max_rate: 2_000,
                wire_records: 5_000,
                wire_live: 100,
                wire_after_idle: 3,
                catch_up_timeout: Duration::from_secs(60),
            }
        } else {
            Sizes {
                bulk_records: 1_000_000,
                bulk_records_4k: 100_000,
                heal_records: 1_000_000,
                repair_records: 1_000_000,
                live_secs: 10.0,
                fanout_offices: vec![2, 8, 32],
                fanout_writes: 100,
                sustain_probe_secs: 5.0,
                sustain_confirm_secs: 60.0,
                sustain_max_rate: 64_000,
                wire_records: 20_000,
                wire_live: 1_000,
                wire_after_idle: 10,
                catch_up_timeout: Duration::from_secs(900),
            }
        }
    }
}

/// Runs every replication workload `args` asks for; one that fails prints an error line and
/// row instead of stopping the others.
pub(crate) async fn run(args: &Args, rows: &mut Vec<TableRow>) {
    let mut s = Sizes::new(args.quick);
    if let Some(n) = args.records {
        s.bulk_records = n;
        s.bulk_records_4k = (n / 10).max(10);
        s.heal_records = n;
        s.repair_records = n;
    }
    let pki = match Pki::new() {
        Ok(p) => p,
        Err(e) => {
            failed(rows, "replication", "CA setup", &e);
            return;
        }
    };
    if args.wants("bulk_catch_up") {
        crate::catch_up::run(&pki, &s, rows).await;
    }
    if args.wants("partition_heal") {
        if let Err(e) = crate::heal::run(&pki, &s, rows).await {
            failed(rows, "partition_heal", "hub ↔ office", &e);
        }
    }
    if args.wants("live_propagation") {
        crate::live::run(&pki, &s, rows).await;
    }
    if args.wants("fan_out") {
        if let Err(e) = crate::fanout::run(&pki, &s, rows).await {
            failed(rows, "fan_out", "hub → offices", &e);
        }
    }
    if args.wants("sustained") {
        crate::sustained::run(&pki, &s, rows).await;
    }
    if args.wants("repair") {
        if let Err(e) = crate::repair::run(&pki, &s, rows).await {
            failed(rows, "repair", "hub ↔ office", &e);
        }
    }
    if args.wants("wire_efficiency") {
        for kind in [Kind::Random, Kind::Json] {
            if let Err(e) = crate::wire::run(&pki, &s, kind, rows).await {
                failed(rows, "wire_efficiency", kind.name(), &e);
            }
        }
    }
}

/// Emits an error line and row for a workload (or baseline) that failed.
pub(crate) fn failed(rows: &mut Vec<TableRow>, figure: &str, case: &str, e: &anyhow::Error) {
    emit(
        rows,
        json!({ "figure": figure, "case": case, "error": format!("{e:#}") }),
        TableRow {
            figure: figure.into(),
            case: case.into(),
            result: format!("error: {e:#}"),
            baseline: "-".into(),
            ratio: None,
            target: "-".into(),
            met: Some(false),
        },
    );
}

/// Emits a line and row saying a baseline was skipped, and why.
pub(crate) fn skipped(rows: &mut Vec<TableRow>, figure: &str, case: &str, why: &str) {
    emit(
        rows,
        json!({ "figure": figure, "case": case, "skipped": true, "why": why }),
        TableRow {
            figure: figure.into(),
            case: case.into(),
            result: format!("skipped: {why}"),
            baseline: "-".into(),
            ratio: None,
            target: "-".into(),
            met: None,
        },
    );
}

// ---------------------------------------------------------------------------------------
// Data

/// The kind of values written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// 256 random bytes (incompressible).
    Random,
    /// 4 KiB random bytes.
    Random4k,
    /// About 256 bytes of realistic JSON (a river gauge report) with varying numbers.
    Json,
}

impl Kind {
    /// Its name in figures.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Random => "random",
            Kind::Random4k => "random 4 KiB",
            Kind::Json => "json",
        }
    }

    /// The value of record `i`: the same bytes every time it is asked for.
    pub(crate) fn value(self, i: u64) -> Vec<u8> {
        match self {
            Kind::Random => random_value(i, crate::VALUE_BYTES),
            Kind::Random4k => random_value(i, 4_096),
            Kind::Json => json_value(i),
        }
    }
}

/// 16-byte key of record `i`.
pub(crate) fn rec_key(i: usize) -> String {
    format!("k{i:015}")
}

fn random_value(i: u64, len: usize) -> Vec<u8> {
    let mut rng = TestRng::new(i ^ 0xA5A5_5A5A_0F0F_F0F0);
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        v.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    v.truncate(len);
    v
}

fn json_value(i: u64) -> Vec<u8> {
    const SITES: [(&str, &str, &str); 8] = [
        ("hefei", "Nanfei", "Hefei"),
        ("wuhu", "Qingyi", "Wuhu"),
        ("anqing", "Yangtze", "Anqing"),
        ("bengbu", "Huai", "Bengbu"),
        ("huainan", "Huai", "Huainan"),
        ("huangshan", "Xin'an", "Tunxi"),
        ("luan", "Pi", "Luan"),
        ("chuzhou", "Chu", "Chuzhou"),
    ];
    const REPORTERS: [&str; 8] = [
        "Zhang Wei",
        "Wang Fang",
        "Li Na",
        "Liu Yang",
        "Chen Jing",
        "Yang Min",
        "Zhao Lei",
        "Huang Xiuying",
    ];
    const TRENDS: [&str; 3] = ["rising", "falling", "steady"];
    let mut r = TestRng::new(i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x1234_5678);
    let (office, river, station) = SITES[r.range(0, 8) as usize];
    let level = r.range(150, 1_800) as f64 / 100.0;
    let warning = r.range(80, 200) as f64 / 10.0;
    let flow = r.range(100, 90_000) as f64 / 10.0;
    let rain = r.range(0, 1_500) as f64 / 10.0;
    let change = (r.range(0, 300) as f64 - 150.0) / 100.0;
    let text = format!(
        concat!(
            r#"{{"office":"{}","river":"{}","station":"{}-{:02}","level_m":{:.2},"#,
            r#""change_24h_m":{:.2},"warning_level_m":{:.1},"flow_m3s":{:.1},"trend":"{}","#,
            r#""rain_24h_mm":{:.1},"#,
            r#""updated":"2026-11-{:02}T{:02}:{:02}:00Z","reporter":"{}","checked":{},"seq":{}}}"#
        ),
        office,
        river,
        station,
        r.range(1, 40),
        level,
        change,
        warning,
        flow,
        TRENDS[r.range(0, 3) as usize],
        rain,
        r.range(1, 31),
        r.range(0, 24),
        r.range(0, 60),
        REPORTERS[r.range(0, 8) as usize],
        r.range(0, 2) == 1,
        i,
    );
    text.into_bytes()
}

// ---------------------------------------------------------------------------------------
// Nodes

/// A deployment CA and the node bundles issued from it, in a temp dir.
pub(crate) struct Pki {
    root: tempfile::TempDir,
}

impl Pki {
    /// A fresh CA in a temp dir.
    pub(crate) fn new() -> Result<Self> {
        let root = tempfile::tempdir()?;
        init_ca(&root.path().join("ca"), false).context("officesync ca init")?;
        Ok(Self { root })
    }

    /// The bundle of `name` (issued on first use; the hub's and relays' (`relay-…`) as
    /// admins).
    pub(crate) fn bundle(&self, name: &str) -> Result<PathBuf> {
        let out = self.root.path().join("tls").join(name);
        if !out.join(pki::NODE_CERT_FILE).exists() {
            let opts = IssueOptions {
                admin: name == HUB || name.starts_with("relay-"),
                ..IssueOptions::default()
            };
            issue(name, &self.root.path().join("ca"), &out, &opts)
                .with_context(|| format!("officesync ca issue {name}"))?;
        }
        Ok(out)
    }
}

/// Starts node `name` on loopback (ephemeral ports) with its data in `data`; it dials the
/// hub at `dial` when given.
pub(crate) async fn start(
    pki: &Pki,
    name: &str,
    data: &Path,
    dial: Option<SocketAddr>,
    durability: Durability,
) -> Result<Node> {
    let tls = pki.bundle(name)?;
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let mut builder = Config::builder(name, data, tls)
        .api_listen(loopback)
        .sync_listen(loopback)
        .admins([HUB])
        .durability(durability);
    if let Some(addr) = dial {
        builder = builder.peer(HUB, addr.to_string());
    }
    let config = builder.build();
    config
        .validate()
        .with_context(|| format!("config of {name}"))?;
    Node::start(&config)
        .await
        .with_context(|| format!("starting node {name}"))
}

/// A hub in `dir/hub` and offices A (`dir/a`) and B (`dir/b`) dialing it, all with
/// `durability`.
pub(crate) async fn start_trio(
    pki: &Pki,
    dir: &Path,
    durability: Durability,
) -> Result<(Node, Node, Node)> {
    let hub = start(pki, HUB, &dir.join("hub"), None, durability).await?;
    let dial = Some(hub.sync_addr());
    let a = start(pki, OFFICE_A, &dir.join("a"), dial, durability).await?;
    let b = start(pki, OFFICE_B, &dir.join("b"), dial, durability).await?;
    Ok((hub, a, b))
}

/// Runs `work` on a blocking thread with the path of the installed server binary `server`
/// (a baseline); when it is not installed, emits a skipped row for `figure`/`case` and
/// returns `None`.
pub(crate) async fn with_server<T: Send + 'static>(
    rows: &mut Vec<TableRow>,
    figure: &str,
    case: &str,
    server: &str,
    work: impl FnOnce(PathBuf) -> Result<T> + Send + 'static,
) -> Option<Result<T>> {
    match crate::servers::find_binary(server) {
        Err(why) => {
            skipped(rows, figure, case, &why);
            None
        }
        Ok(bin) => Some(
            tokio::task::spawn_blocking(move || work(bin))
                .await
                .with_context(|| format!("{server} task"))
                .and_then(|r| r),
        ),
    }
}

/// Shuts nodes down in order (offices before the hub), reporting the first error.
pub(crate) async fn shutdown(nodes: Vec<Node>) -> Result<()> {
    let mut first = Ok(());
    for node in nodes {
        let name = node.replica().node().to_owned();
        if let Err(e) = node.shutdown().await {
            if first.is_ok() {
                first = Err(anyhow::Error::new(e).context(format!("shutting down {name}")));
            }
        }
    }
    first
}

/// A hub (periodic durability, for speed) in `dir/hub` holding `n` records of `kind`, its
/// collection state, and the seconds the fill took.
pub(crate) async fn filled_hub(
    pki: &Pki,
    dir: &Path,
    n: usize,
    kind: Kind,
) -> Result<(Node, CollectionMeta, f64)> {
    filled_hub_at(pki, &dir.join("hub"), n, kind).await
}

/// [`filled_hub`] with its data dir at `data`.
pub(crate) async fn filled_hub_at(
    pki: &Pki,
    data: &Path,
    n: usize,
    kind: Kind,
) -> Result<(Node, CollectionMeta, f64)> {
    let hub = start(pki, HUB, data, None, Durability::Periodic).await?;
    let fill_start = Instant::now();
    fill(hub.replica(), n, kind).await?;
    let fill_secs = fill_start.elapsed().as_secs_f64();
    let target = hub.replica().collection(COLL).await?;
    Ok((hub, target, fill_secs))
}

/// Writes records `0..n` of `kind` to `COLL` at `replica` with [`FILL_WRITERS`] concurrent
/// writers, then makes them durable (so replication offers them).
pub(crate) async fn fill(replica: &Replica, n: usize, kind: Kind) -> Result<()> {
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..FILL_WRITERS {
        let r = replica.clone();
        tasks.spawn(async move {
            for i in (w..n).step_by(FILL_WRITERS) {
                r.write(COLL, &rec_key(i), Some(kind.value(i as u64)))
                    .await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(t) = tasks.join_next().await {
        t??;
    }
    replica.sync().await?;
    Ok(())
}

/// Waits until `replica`'s digest of `COLL` equals `target`, checking every few ms; returns
/// when it did (`None`: not within `timeout`).
pub(crate) async fn wait_digest(
    replica: &Replica,
    target: &Digest,
    timeout: Duration,
) -> Result<Option<Instant>> {
    poll_until(timeout, Duration::from_millis(2), || async move {
        Ok(replica.collection(COLL).await?.digest == *target)
    })
    .await
}

/// Checks `reached` every `every` until it holds; returns when it did (`None`: not within
/// `timeout`).
pub(crate) async fn poll_until<F, Fut>(
    timeout: Duration,
    every: Duration,
    mut reached: F,
) -> Result<Option<Instant>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if reached().await? {
            return Ok(Some(Instant::now()));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(every).await;
    }
}

/// Waits until `replica` durably holds `origin`'s versions of `COLL` through `counter`.
pub(crate) async fn wait_durable(
    replica: &Replica,
    origin: &ReplicaId,
    counter: u64,
    timeout: Duration,
) -> Result<()> {
    let mut durable = replica.durable();
    let reached = |s: &officesync_daemon::replica::DurableState| {
        s.vvs.get(COLL).is_some_and(|vv| vv.get(origin) >= counter)
    };
    tokio::time::timeout(timeout, durable.wait_for(|s| reached(s)))
        .await
        .with_context(|| {
            format!(
                "{} did not receive {origin}:{counter} within {timeout:?}",
                replica.node()
            )
        })?
        .context("store closed")?;
    Ok(())
}

/// A progress line on stderr (stdout carries only the figures).
pub(crate) fn progress(what: std::fmt::Arguments<'_>) {
    eprintln!("bench: {what}");
}

/// The value at fraction `p` of sorted `v` (nearest rank).
pub(crate) fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let at = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[at.min(v.len() - 1)]
}

/// The value at fraction `p` of unsorted latencies `v` (sorted here), NaN when empty.
pub(crate) fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    percentile(v, p)
}

/// The built `officesyncd` (next to this benchmark), or why it is missing.
pub(crate) fn daemon_binary() -> Result<PathBuf> {
    std::panic::catch_unwind(officesync_tests::bins::officesyncd_path).map_err(|_| {
        anyhow::anyhow!(
            "officesyncd is not built next to the benchmark (run `cargo build --release --bins` first)"
        )
    })
}

/// Starts `officesyncd` for node `name` as its own process (data, config and log in `dir`),
/// dialing the hub at `dial` when given; killed on drop.
pub(crate) fn spawn_daemon(
    pki: &Pki,
    name: &str,
    dir: &Path,
    dial: Option<SocketAddr>,
    durability: Durability,
) -> Result<TestNode> {
    spawn_daemon_via(pki, name, dir, dial.map(|a| (HUB, a)), &[HUB], durability)
}

/// [`spawn_daemon`] with the peer to dial named (`(name, address)`) and the admin nodes
/// (relays) listed.
pub(crate) fn spawn_daemon_via(
    pki: &Pki,
    name: &str,
    dir: &Path,
    dial: Option<(&str, SocketAddr)>,
    admins: &[&str],
    durability: Durability,
) -> Result<TestNode> {
    daemon_binary()?;
    let tls = pki.bundle(name)?;
    std::fs::create_dir_all(dir)?;
    let api = SocketAddr::from(([127, 0, 0, 1], crate::servers::free_port()?));
    let mut builder = Config::builder(name, dir.join("data"), tls)
        .api_listen(api)
        .sync_listen(SocketAddr::from((
            [127, 0, 0, 1],
            officesync_tests::process::free_udp_port(),
        )))
        .admins(admins.iter().copied())
        .durability(durability);
    if let Some((peer, addr)) = dial {
        builder = builder.peer(peer, addr.to_string());
    }
    let config = builder.build();
    let config_path = dir.join("officesync.toml");
    std::fs::write(&config_path, config.to_toml_string())?;
    let spec = DaemonSpec {
        name: name.to_owned(),
        config_path,
        api_addr: api,
        log_path: dir.join("officesyncd.log"),
    };
    TestNode::try_start(spec).map_err(|e| anyhow::anyhow!("starting officesyncd {name}: {e}"))
}

/// The sync (UDP) address a spawned daemon listens on, from its config.
pub(crate) fn daemon_sync_addr(node: &TestNode) -> Result<SocketAddr> {
    let config = Config::load_offline(node.config_path())?;
    Ok(config.sync.listen)
}

/// `GET /v1/status` of a daemon process.
pub(crate) async fn api_status(api: &ApiClient) -> Result<Value> {
    let api = api.clone();
    tokio::task::spawn_blocking(move || {
        let reply = api.request("GET", "/v1/status", None)?;
        ensure!(reply.status == 200, "/v1/status: HTTP {}", reply.status);
        Ok(serde_json::from_slice::<Value>(&reply.body)?)
    })
    .await?
}

/// Waits until the daemon behind `api` reports digest `target` for `COLL`; returns when it
/// did (`None`: not within `timeout`).
pub(crate) async fn wait_api_digest(
    api: &ApiClient,
    target: &Digest,
    timeout: Duration,
) -> Result<Option<Instant>> {
    let hex = &target.to_hex();
    poll_until(timeout, Duration::from_millis(10), || async move {
        let status = api_status(api).await?;
        Ok(status["collections"][COLL]["digest"].as_str() == Some(hex.as_str()))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_have_the_advertised_sizes() {
        assert_eq!(rec_key(123).len(), 16);
        assert_eq!(Kind::Random.value(7).len(), 256);
        assert_eq!(Kind::Random.value(7), Kind::Random.value(7));
        let lens: Vec<usize> = (0..1000).map(|i| Kind::Json.value(i).len()).collect();
        let mean = lens.iter().sum::<usize>() as f64 / lens.len() as f64;
        assert!((230.0..280.0).contains(&mean), "mean JSON length {mean}");
        for i in 0..100 {
            serde_json::from_slice::<Value>(&Kind::Json.value(i)).expect("valid JSON");
        }
    }
}
