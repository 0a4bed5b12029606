//! `officesync demo`: a live local deployment in a temporary directory. It makes a CA, issues
//! the general office's certificate bundle, writes its config, starts `officesyncd` on free
//! loopback ports, writes sample situation records and shows the node's status until Ctrl-C
//! (or `--duration`), then stops the daemon cleanly.

use std::fs::File;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use officesync_daemon::config::Config;
use officesync_daemon::pki::{self, IssueOptions};
use serde_json::Value;

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

/// The demo's sample records: (collection, key, JSON value).
const SAMPLES: &[(&str, &str, &str)] = &[
    (
        "situation",
        "hefei/grain",
        r#"{"office":"hefei","stock_t":12500,"status":"normal"}"#,
    ),
    (
        "situation",
        "hefei/flood-level",
        r#"{"office":"hefei","river":"Nanfei","level_m":7.9}"#,
    ),
    (
        "situation",
        "wuhu/flood-level",
        r#"{"office":"wuhu","river":"Yangtze","level_m":10.2}"#,
    ),
    (
        "situation",
        "general-office/alert",
        r#"{"level":"yellow","issued_by":"general-office"}"#,
    ),
    (
        "documents",
        "2026/notice-17",
        r#"{"title":"Flood season duty roster","pages":3}"#,
    ),
];

/// A daemon started by the demo.
struct DemoNode {
    name: String,
    child: Child,
    client: Client,
    log: PathBuf,
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
    let mut nodes = vec![start_node(&dir, &ca_dir, "general-office", true)?];
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
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| fail(format!("no free loopback TCP port: {e}")))
}

fn free_udp_port() -> Result<SocketAddr, CliError> {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
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

fn start_node(dir: &Path, ca_dir: &Path, name: &str, admin: bool) -> Result<DemoNode, CliError> {
    let node_dir = dir.join(name);
    let tls = node_dir.join("tls");
    let opts = IssueOptions {
        admin,
        ..IssueOptions::default()
    };
    pki::issue(name, ca_dir, &tls, &opts).map_err(fail)?;
    let api = free_tcp_port()?;
    let config = Config::builder(name, node_dir.join("data"), &tls)
        .api_listen(api)
        .sync_listen(free_udp_port()?)
        .admins(vec!["general-office".to_owned()])
        .build();
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
        child,
        client: Client::new(addr, Duration::from_secs(5)),
        log,
    };
    wait_healthy(&mut node)?;
    println!(
        "  {name}: officesyncd pid {} — API http://{api}, config {}",
        node.child.id(),
        config_path.display()
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

fn demo_loop(args: &DemoArgs, nodes: &mut [DemoNode], stop: &AtomicBool) -> Result<(), CliError> {
    let node = nodes.first().ok_or_else(|| fail("no demo node"))?;
    println!("\nwriting sample records at {}:", node.name);
    for (coll, key, value) in SAMPLES {
        let path = format!("/v1/collections/{coll}/records/{}", urlenc::encode_key(key));
        let ack = node
            .client
            .send(Method::PUT, &path, Some(value.as_bytes().to_vec()))?
            .check(None)?
            .json()?;
        println!(
            "  put {coll} {key} → {}",
            ack["version"].as_str().unwrap_or("?")
        );
    }
    println!(
        "\ntry it from another terminal:\n  export OFFICESYNC_API={}\n  officesync scan situation\n  officesync get situation hefei/grain\n  officesync put situation hefei/grain '{{\"stock_t\":12000}}'\n  officesync status\n\nCtrl-C stops the demo.\n",
        node.client.addr()
    );
    let started = Instant::now();
    let mut next_status = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        if args
            .duration
            .is_some_and(|d| started.elapsed() >= Duration::from_secs(d))
        {
            break;
        }
        if Instant::now() >= next_status {
            for node in nodes.iter_mut() {
                print_status(node);
            }
            next_status = Instant::now() + Duration::from_secs(args.every.max(1));
        }
        std::thread::sleep(Duration::from_millis(100));
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
    let status: Result<Value, CliError> = node
        .client
        .send(Method::GET, "/v1/status", None)
        .and_then(|r| r.check(None)?.json());
    match status {
        Ok(s) => {
            let colls = s["collections"].as_object().map_or(String::new(), |m| {
                m.iter()
                    .map(|(name, c)| {
                        let digest = c["digest"].as_str().unwrap_or("");
                        format!(
                            "{name}: {} records, digest {}",
                            c["records"],
                            &digest[..digest.len().min(12)]
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            });
            println!(
                "  [{}] {} — {colls}",
                s["node"].as_str().unwrap_or("?"),
                s["replica"].as_str().unwrap_or("?")
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
