//! `officesync demo`: a live local deployment in a temporary directory. It makes a CA, issues
//! bundles for a general office (the hub) and two city offices, writes their configs, starts
//! three `officesyncd` on free loopback ports (the offices dial the hub), writes sample
//! situation records at each office, shows each record's arrival at the other offices as it
//! happens and every node's status every few seconds until Ctrl-C (or `--duration`), then
//! stops the daemons cleanly.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use clap::Args;
use officesync_api::{ScanPage, StatusBody, WriteBody};
use officesync_daemon::config::Config;
use officesync_daemon::pki::{self, IssueOptions};

use crate::client::{ApiAddr, Client};
use crate::exit::CliError;
use crate::urlenc;
use crate::Global;
use ureq::http::Method;

/// Run a live local demo node with sample records (Ctrl-C stops it).
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Stop by itself after this many seconds (default: run until Ctrl-C).
    #[arg(long, value_name = "SECS")]
    duration: Option<u64>,
    /// Seconds between status lines.
    #[arg(long, default_value_t = 5, value_name = "SECS")]
    every: u64,
    /// Keep the demo directory (certificates, config, data, logs) after stopping.
    #[arg(long)]
    keep: bool,
}

/// The hub: every office dials it, and it relays between them.
const HUB: &str = "general-office";
/// The city offices.
const OFFICES: &[&str] = &["hefei", "beijing-office"];

/// The demo's sample records: (office that writes it, collection, key, JSON value).
const SAMPLES: &[(&str, &str, &str, &str)] = &[
    (
        "hefei",
        "situation",
        "hefei/grain",
        r#"{"office":"hefei","stock_t":12500}"#,
    ),
    (
        "hefei",
        "situation",
        "hefei/flood-level",
        r#"{"river":"Nanfei","level_m":7.9}"#,
    ),
    (
        "beijing-office",
        "situation",
        "beijing/traffic",
        r#"{"status":"heavy"}"#,
    ),
    (
        "general-office",
        "situation",
        "province/alert",
        r#"{"level":"yellow"}"#,
    ),
    (
        "general-office",
        "documents",
        "2026/notice-17",
        r#"{"title":"Duty roster"}"#,
    ),
];

/// A key written at two offices at once: it ends with two siblings and one winner everywhere.
const CONTESTED: (&str, &str) = ("situation", "province/duty-officer");

/// A daemon started by the demo.
struct DemoNode {
    name: String,
    sync: SocketAddr,
    child: Child,
    client: Client,
    log: PathBuf,
    /// The node's admin token (it serves with staff access, as every node does by default).
    token: String,
}

/// Runs the demo.
pub fn run(args: DemoArgs, _global: &Global) -> Result<(), CliError> {
    let stop = Arc::new(AtomicBool::new(false));
    watch_signals(stop.clone())?;
    let tmp = tempfile::Builder::new()
        .prefix("officesync-demo-")
        .tempdir()
        .map_err(|e| CliError::failure(format!("cannot create a temp dir: {e}")))?;
    let dir = tmp.path().to_path_buf();
    println!("officesync demo in {}", dir.display());
    let ca_dir = dir.join("ca");
    let ca = pki::init_ca(&ca_dir, false).map_err(fail)?;
    println!(
        "  CA created: {} (cluster id {}…)",
        ca_dir.display(),
        &ca.fingerprint[..16]
    );
    let mut nodes = vec![start_node(&dir, &ca_dir, HUB, true, None)?];
    let hub_sync = nodes[0].sync;
    for office in OFFICES {
        match start_node(&dir, &ca_dir, office, false, Some(hub_sync)) {
            Ok(node) => nodes.push(node),
            Err(e) => {
                for node in &mut nodes {
                    stop_node(node);
                }
                return Err(e);
            }
        }
    }
    let result = demo_loop(&args, &mut nodes, &stop);
    for node in &mut nodes {
        stop_node(node);
    }
    if args.keep {
        let kept = tmp.keep();
        println!("demo files kept in {}", kept.display());
    }
    result
}

fn fail(e: impl std::fmt::Display) -> CliError {
    CliError::failure(e.to_string())
}

/// Sets `stop` on SIGINT or SIGTERM, from a small thread of its own.
fn watch_signals(stop: Arc<AtomicBool>) -> Result<(), CliError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::failure(format!("cannot watch signals: {e}")))?;
    std::thread::spawn(move || {
        rt.block_on(async {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut term), Ok(mut int)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) else {
                return;
            };
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
            stop.store(true, Ordering::SeqCst);
        });
    });
    Ok(())
}

fn free_tcp_port() -> Result<SocketAddr, CliError> {
    officesync_daemon::net::free_tcp_port()
        .map(|port| SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
        .map_err(|e| fail(format!("no free loopback TCP port: {e}")))
}

fn free_udp_port() -> Result<SocketAddr, CliError> {
    officesync_daemon::net::free_udp_port()
        .map(|port| SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
        .map_err(|e| fail(format!("no free loopback UDP port: {e}")))
}

/// `officesyncd` beside this executable (as installed, and in cargo's target dir).
fn daemon_path() -> Result<PathBuf, CliError> {
    let exe = std::env::current_exe().map_err(fail)?;
    let path = exe.with_file_name("officesyncd");
    if path.exists() {
        Ok(path)
    } else {
        Err(fail(format!(
            "officesyncd not found beside {} (build it with `cargo build --release --bins`)",
            exe.display()
        )))
    }
}

fn start_node(
    dir: &Path,
    ca_dir: &Path,
    name: &str,
    admin: bool,
    hub: Option<SocketAddr>,
) -> Result<DemoNode, CliError> {
    let node_dir = dir.join(name);
    let tls = node_dir.join("tls");
    let opts = IssueOptions {
        admin,
        ..IssueOptions::default()
    };
    pki::issue(name, ca_dir, &tls, &opts).map_err(fail)?;
    let api = free_tcp_port()?;
    let sync = free_udp_port()?;
    let mut builder = Config::builder(name, node_dir.join("data"), &tls)
        .api_listen(api)
        .sync_listen(sync)
        .admins(vec![HUB.to_owned()]);
    if let Some(hub) = hub {
        builder = builder.peer(HUB, hub.to_string());
    }
    let config = builder.build();
    let config_path = node_dir.join("officesync.toml");
    std::fs::write(&config_path, config.to_toml_string()).map_err(fail)?;
    let log = node_dir.join("officesyncd.log");
    let child = Command::new(daemon_path()?)
        .arg("--config")
        .arg(&config_path)
        .stdin(Stdio::null())
        .stdout(File::create(&log).map_err(fail)?)
        .stderr(File::create(&log).map_err(fail)?)
        .spawn()
        .map_err(|e| fail(format!("cannot start officesyncd: {e}")))?;
    let addr: ApiAddr = api.to_string().parse().map_err(CliError::usage)?;
    let mut node = DemoNode {
        name: name.to_owned(),
        sync,
        child,
        client: Client::new(addr, Duration::from_secs(5)),
        log,
        token: String::new(),
    };
    wait_healthy(&mut node)?;
    // The daemon wrote its first admin token before it served /health.
    let data = node_dir.join("data");
    let token = officesync_daemon::config::read_admin_token(&data)
        .map_err(|e| fail(format!("the admin token in {}: {e}", data.display())))?;
    node.client = Client::new(node.client.addr().clone(), Duration::from_secs(5))
        .with_token(Some(token.clone()));
    node.token = token;
    println!(
        "  {name}: officesyncd pid {} — API http://{api}, QUIC {sync}{}",
        node.child.id(),
        hub.map_or(String::new(), |h| format!(", dials {HUB} at {h}"))
    );
    Ok(node)
}

fn wait_healthy(node: &mut DemoNode) -> Result<(), CliError> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = node.child.try_wait() {
            let log = std::fs::read_to_string(&node.log).unwrap_or_default();
            return Err(fail(format!(
                "officesyncd for {} exited ({status}):\n{log}",
                node.name
            )));
        }
        if let Ok(reply) = node.client.send(Method::GET, "/health", None) {
            if reply.check(None).is_ok() {
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(fail(format!(
        "officesyncd for {} did not become healthy in 20 s",
        node.name
    )))
}

fn put(node: &DemoNode, coll: &str, key: &str, value: &str) -> Result<String, CliError> {
    let path = format!("/v1/collections/{coll}/records/{}", urlenc::encode_key(key));
    let ack: WriteBody = node
        .client
        .send(Method::PUT, &path, Some(value.as_bytes().to_vec()))?
        .check(None)?
        .json()?;
    Ok(ack.version)
}

/// Every live record of `coll` at `node`: key → (version, value).
fn records(node: &DemoNode, coll: &str) -> BTreeMap<String, (String, String)> {
    let mut out = BTreeMap::new();
    let path = format!("/v1/collections/{coll}/records?limit=1000");
    let Ok(page) = node
        .client
        .send(Method::GET, &path, None)
        .and_then(|r| r.check(None)?.json::<ScanPage>())
    else {
        return out;
    };
    for r in page.records {
        let value = r
            .value_base64
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .map(|v| String::from_utf8_lossy(&v).into_owned())
            .unwrap_or_default();
        out.insert(r.key, (r.version, value));
    }
    out
}

fn demo_loop(args: &DemoArgs, nodes: &mut [DemoNode], stop: &AtomicBool) -> Result<(), CliError> {
    println!("\nwriting sample records, each at its own office:");
    let mut written: BTreeMap<(String, String), Instant> = BTreeMap::new();
    for (office, coll, key, value) in SAMPLES {
        let Some(node) = nodes.iter().find(|n| n.name == *office) else {
            continue;
        };
        let version = put(node, coll, key, value)?;
        written.insert((coll.to_string(), key.to_string()), Instant::now());
        println!("  {office}: put {coll} {key} → {version}");
    }
    let (coll, key) = CONTESTED;
    for node in nodes.iter().filter(|n| n.name != HUB) {
        let value = format!(r#"{{"officer":"on duty at {}"}}"#, node.name);
        let version = put(node, coll, key, &value)?;
        println!(
            "  {}: put {coll} {key} → {version} (written at both offices at once)",
            node.name
        );
    }
    written.insert((coll.to_string(), key.to_string()), Instant::now());
    let hub = nodes.first().ok_or_else(|| fail("no demo node"))?;
    println!(
        "\ntry it from another terminal (the general office's API, as its admin user):\n  export OFFICESYNC_API={}\n  export OFFICESYNC_TOKEN={}\n  officesync scan situation\n  officesync get situation {key} --all\n  officesync put situation hefei/grain '{{\"stock_t\":12000}}'\n  officesync status\n\narrivals as they happen, status every {} s; Ctrl-C stops the demo.\n",
        hub.client.addr(),
        hub.token,
        args.every.max(1)
    );
    let colls = ["situation", "documents"];
    let mut seen: BTreeMap<(String, String, String), String> = BTreeMap::new();
    let started = Instant::now();
    let mut next_status = Instant::now() + Duration::from_secs(args.every.max(1));
    while !stop.load(Ordering::SeqCst) {
        if args
            .duration
            .is_some_and(|d| started.elapsed() >= Duration::from_secs(d))
        {
            break;
        }
        for node in nodes.iter() {
            for coll in colls {
                for (key, (version, value)) in records(node, coll) {
                    let slot = (node.name.clone(), coll.to_owned(), key.clone());
                    if seen.get(&slot) == Some(&version) {
                        continue;
                    }
                    let origin = version.split('@').next().unwrap_or("?");
                    if origin != node.name {
                        let after = written
                            .get(&(coll.to_owned(), key.clone()))
                            .map_or(String::new(), |t| {
                                format!(" {} ms after the write", t.elapsed().as_millis())
                            });
                        println!(
                            "  arrived at {:<15} {coll}/{key} = {value} (version {version}{after})",
                            node.name
                        );
                    }
                    seen.insert(slot, version);
                }
            }
        }
        if Instant::now() >= next_status {
            println!();
            for node in nodes.iter_mut() {
                print_status(node);
            }
            println!();
            next_status = Instant::now() + Duration::from_secs(args.every.max(1));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("\nstopping…");
    Ok(())
}

fn print_status(node: &mut DemoNode) {
    if let Ok(Some(status)) = node.child.try_wait() {
        println!(
            "  {}: officesyncd has exited ({status}); log: {}",
            node.name,
            node.log.display()
        );
        return;
    }
    let status: Result<StatusBody, CliError> = node
        .client
        .send(Method::GET, "/v1/status", None)
        .and_then(|r| r.check(None)?.json());
    match status {
        Ok(s) => {
            let colls = s
                .collections
                .iter()
                .map(|(name, c)| {
                    let digest: String = c.digest.chars().take(12).collect();
                    format!("{name}: {} records, digest {digest}", c.records)
                })
                .collect::<Vec<_>>()
                .join("; ");
            let peers = s
                .peers
                .iter()
                .map(|p| {
                    format!(
                        "{} {} lag {}",
                        p.name,
                        if p.connected { "up" } else { "DOWN" },
                        p.lag_versions
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
            println!(
                "  [{:<14}] {colls}; peers: {}",
                s.node,
                if peers.is_empty() {
                    "none".to_owned()
                } else {
                    peers
                }
            );
        }
        Err(e) => println!(
            "  {}: status unavailable: {}",
            node.name,
            e.message.unwrap_or_default()
        ),
    }
}

/// Asks the daemon to stop (SIGTERM) and waits for it; kills it after 15 s.
fn stop_node(node: &mut DemoNode) {
    if let Ok(Some(_)) = node.child.try_wait() {
        return;
    }
    let pid = node.child.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = node.child.try_wait() {
            println!("  {}: officesyncd stopped ({status})", node.name);
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = node.child.kill();
    let _ = node.child.wait();
    println!(
        "  {}: officesyncd did not stop in 15 s and was killed",
        node.name
    );
}
