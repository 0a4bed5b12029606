//! Helpers for the replication suites: a hub-and-spokes deployment (the general office and
//! the city offices that dial it), bounded waits that panic with what they saw, and the
//! convergence check every replication test ends with.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use officesync_tests::http::record_path;
use officesync_tests::{Cluster, TestConfig, TestNode};
use serde_json::Value;

/// The hub's node name.
pub const HUB: &str = "general-office";

/// How often the waits poll.
pub const POLL: Duration = Duration::from_millis(200);

/// A config for the general office: issued as an admin and listed as the admin (relay).
pub fn hub_config(cluster: &Cluster) -> TestConfig {
    cluster.issue(HUB, true);
    let mut config = cluster.config(HUB);
    config.admins = vec![HUB.to_owned()];
    config
}

/// A config for office `name` dialing the general office at `hub_addr` (its `sync.listen`,
/// or a fault proxy in front of it), with the general office as the admin.
pub fn office_config(cluster: &Cluster, name: &str, hub_addr: SocketAddr) -> TestConfig {
    let mut config = cluster.config(name);
    config.peers = vec![(HUB.to_owned(), hub_addr.to_string())];
    config.admins = vec![HUB.to_owned()];
    config
}

/// Writes `config` with `lines` (TOML keys) added to its `[section]` (`sync`, `storage`)
/// and starts the daemon. `TestConfig` has no field for that tuning, and a second table of
/// the same name in `extra_toml` would be invalid TOML.
///
/// The node does not keep the cluster's temp dir alive: keep the `Cluster` in scope longer.
pub fn start_with_lines(config: &TestConfig, section: &str, lines: &str) -> TestNode {
    config.write();
    let toml = config.to_toml();
    let header = format!("[{section}]\n");
    let tuned = toml.replacen(&header, &format!("{header}{lines}\n"), 1);
    assert_ne!(tuned, toml, "no [{section}] section in:\n{toml}");
    std::fs::write(config.config_path(), tuned).expect("write the tuned config");
    TestNode::start(config.spec())
}

/// Polls `check` every [`POLL`] until it holds; panics naming `what` (and the last `detail`
/// it produced) after `timeout`. Returns how long it took.
pub fn wait_for(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<(), String>,
) -> Duration {
    let start = Instant::now();
    loop {
        let last = match check() {
            Ok(()) => return start.elapsed(),
            Err(detail) => detail,
        };
        if start.elapsed() >= timeout {
            panic!("timed out after {timeout:?} waiting for {what}: {last}");
        }
        thread::sleep(POLL);
    }
}

/// `GET /v1/status`, or `None` while the node does not answer (stopped, restarting).
pub fn try_status(node: &TestNode) -> Option<Value> {
    let reply = node.api().request("GET", "/v1/status", None).ok()?;
    (reply.status == 200).then(|| reply.json())
}

/// The peer entry for `peer` in `status`, if listed.
pub fn peer_entry<'a>(status: &'a Value, peer: &str) -> Option<&'a Value> {
    status["peers"]
        .as_array()?
        .iter()
        .find(|p| p["name"].as_str() == Some(peer))
}

/// True when `node`'s status lists `peer` as connected.
pub fn is_connected(node: &TestNode, peer: &str) -> bool {
    try_status(node)
        .as_ref()
        .and_then(|s| peer_entry(s, peer))
        .is_some_and(|p| p["connected"] == Value::Bool(true))
}

/// Waits until every node lists every other of `pairs` as connected.
pub fn wait_connected(pairs: &[(&TestNode, &str)], timeout: Duration) {
    wait_for("sessions to be established", timeout, || {
        let down: Vec<String> = pairs
            .iter()
            .filter(|(node, peer)| !is_connected(node, peer))
            .map(|(node, peer)| format!("{} -> {peer}", node.name()))
            .collect();
        if down.is_empty() {
            Ok(())
        } else {
            Err(format!("not connected: {down:?}"))
        }
    });
}

/// Waits until the general office and both offices of a star list each other as connected.
pub fn wait_star_connected(
    hub: &TestNode,
    hefei: &TestNode,
    beijing: &TestNode,
    timeout: Duration,
) {
    wait_connected(
        &[(hefei, HUB), (beijing, HUB), (hub, HEFEI), (hub, BEIJING)],
        timeout,
    );
}

/// Per collection: its digest, record count and version vector.
type ReplicaState = BTreeMap<String, (Value, Value, Value)>;

/// What convergence compares per node: each collection's digest, record count and vv.
fn replica_state(status: &Value) -> ReplicaState {
    let mut out = BTreeMap::new();
    if let Some(collections) = status["collections"].as_object() {
        for (name, c) in collections {
            out.insert(
                name.clone(),
                (
                    c["digest"].clone(),
                    c["records"].clone(),
                    status["vv"][name].clone(),
                ),
            );
        }
    }
    out
}

/// Polls until every node reports the same collections with equal digests and equal version
/// vectors, then asserts it (panics with every node's state after `timeout`).
pub fn assert_converged(nodes: &[&TestNode], timeout: Duration) {
    assert!(!nodes.is_empty(), "assert_converged needs nodes");
    let start = Instant::now();
    loop {
        let states: Vec<Option<ReplicaState>> = nodes
            .iter()
            .map(|n| try_status(n).map(|s| replica_state(&s)))
            .collect();
        let equal = states.iter().all(Option::is_some)
            && states.windows(2).all(|w| w[0] == w[1])
            && states[0].as_ref().is_some_and(|s| !s.is_empty());
        if equal {
            let first = states[0].as_ref().expect("checked above");
            for (node, state) in nodes.iter().zip(&states) {
                assert_eq!(
                    state.as_ref(),
                    Some(first),
                    "{} differs from {}",
                    node.name(),
                    nodes[0].name()
                );
            }
            eprintln!(
                "converged after {:?}: {}",
                start.elapsed(),
                first
                    .iter()
                    .map(|(c, (_, records, _))| format!("{c}={records}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
            return;
        }
        if start.elapsed() >= timeout {
            let mut report = String::new();
            for (node, state) in nodes.iter().zip(&states) {
                report.push_str(&format!("\n{}:", node.name()));
                match state {
                    None => report.push_str(" no status"),
                    Some(state) => {
                        for (c, (digest, records, vv)) in state {
                            report.push_str(&format!(
                                "\n  {c}: records={records} digest={digest} vv={vv}"
                            ));
                        }
                    }
                }
                if let Some(status) = try_status(node) {
                    report.push_str(&format!("\n  peers={}", status["peers"]));
                }
            }
            panic!("not converged after {timeout:?}:{report}");
        }
        thread::sleep(POLL);
    }
}

/// Every sibling of `key` (`?all=true`), tombstones included; empty when never written.
pub fn siblings(node: &TestNode, collection: &str, key: &str) -> Vec<Value> {
    let path = format!("{}?all=true", record_path(collection, key));
    let reply = node.api().call("GET", &path, None);
    match reply.status {
        404 => Vec::new(),
        200 => reply.json()["siblings"]
            .as_array()
            .unwrap_or_else(|| panic!("GET {path} on {}: no siblings array", node.name()))
            .clone(),
        s => panic!("GET {path} on {}: HTTP {s}: {}", node.name(), reply.text()),
    }
}

/// The number of live records of `collection` that `node`'s status reports (0 if absent).
pub fn record_count(node: &TestNode, collection: &str) -> u64 {
    try_status(node)
        .and_then(|s| s["collections"][collection]["records"].as_u64())
        .unwrap_or(0)
}

/// A city office's node name in [`Star`].
#[allow(dead_code)] // not every suite uses every helper
pub const HEFEI: &str = "hefei";
/// The other city office's node name in [`Star`].
#[allow(dead_code)]
pub const BEIJING: &str = "beijing-office";

/// A hub and two offices that dial it (the offices have no link to each other). With a
/// cut-able link, hefei dials through a fault proxy and every node runs a 1 s heartbeat (dead
/// sessions are given up after 10 s). Built once every session is up.
#[allow(dead_code)]
pub struct Star {
    /// The general office.
    pub hub: TestNode,
    /// The office behind the fault proxy, with a cut-able link.
    pub hefei: TestNode,
    /// The office with a direct link.
    pub beijing: TestNode,
    /// The proxy on hefei's link (only with [`Star::with_cut_link`]).
    pub proxy: Option<officesync_tests::fault_proxy::FaultProxy>,
    // Last, so that the nodes are killed before their temp dir goes.
    _cluster: Cluster,
}

#[allow(dead_code)]
impl Star {
    /// Three nodes on direct links, within `timeout` of being connected.
    pub fn start(timeout: Duration) -> Star {
        Star::build(None, timeout)
    }

    /// Three nodes; hefei dials through a fault proxy seeded with `seed`.
    pub fn with_cut_link(seed: u64, timeout: Duration) -> Star {
        Star::build(Some(seed), timeout)
    }

    fn build(proxy_seed: Option<u64>, timeout: Duration) -> Star {
        use officesync_tests::fault_proxy::FaultProxy;
        let tuning = "heartbeat_interval_ms = 1000";
        let cluster = Cluster::new();
        let hub_cfg = hub_config(&cluster);
        let start = |cfg: &TestConfig| match proxy_seed {
            Some(_) => start_with_lines(cfg, "sync", tuning),
            None => cluster.start(cfg),
        };
        let hub = start(&hub_cfg);
        let proxy = proxy_seed.map(|seed| FaultProxy::start(hub_cfg.sync_listen, seed));
        let hefei_dials = proxy
            .as_ref()
            .map_or(hub_cfg.sync_listen, FaultProxy::listen_addr);
        let hefei = start(&office_config(&cluster, HEFEI, hefei_dials));
        let beijing = start(&office_config(&cluster, BEIJING, hub_cfg.sync_listen));
        wait_star_connected(&hub, &hefei, &beijing, timeout);
        Star {
            hub,
            hefei,
            beijing,
            proxy,
            _cluster: cluster,
        }
    }

    /// The three nodes.
    pub fn all(&self) -> [&TestNode; 3] {
        [&self.hub, &self.hefei, &self.beijing]
    }

    /// The proxy on hefei's link (only with [`Star::with_cut_link`]).
    pub fn proxy(&self) -> &officesync_tests::fault_proxy::FaultProxy {
        self.proxy.as_ref().expect("built with a cut-able link")
    }
}

/// The Chromium binary on `PATH`, if any (suites that drive a browser skip without it).
pub fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser"].into_iter().find(|name| {
        std::process::Command::new(name)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// The text of an HTML fragment as a browser shows it, roughly: tags dropped (each one a
/// space), runs of whitespace made one space.
pub fn visible_text(html: &str) -> String {
    let mut text = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' => {
                in_tag = false;
                text.push(' ');
            }
            c if !in_tag => text.push(c),
            _ => {}
        }
    }
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The value of attribute `name` in the HTML start tag `tag`.
pub fn attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let start = tag.find(&format!(" {name}=\""))? + name.len() + 3;
    let len = tag[start..].find('"')?;
    Some(&tag[start..start + len])
}
