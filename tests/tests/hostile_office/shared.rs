//! What every hostile-office test needs: a hub with two honest offices, the attacker's bundle,
//! the honest checks made after each attack, and the attacked node's resident memory.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use officesync_tests::{Cluster, TestNode};

use crate::common::{assert_converged, hub_config, office_config, wait_connected};

/// How long any one wait may take.
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// An honest write made at an honest office must reach the others within this.
pub const HONEST_WRITE_WITHIN: Duration = Duration::from_secs(10);

/// The hub, two honest offices dialing it (`hefei`, `beijing-office`) and the attacker's
/// certificate bundle (`rogue-office`, an ordinary office), connected and converged.
pub struct Scene {
    /// The temporary deployment (CA, bundles, data dirs).
    pub cluster: Cluster,
    /// The general office (the relay).
    pub hub: TestNode,
    /// An honest office.
    pub hefei: TestNode,
    /// Another honest office.
    pub beijing: TestNode,
    /// The hub's QUIC address.
    pub hub_addr: SocketAddr,
    /// The attacker's bundle directory (an office certificate named `rogue-office`).
    pub rogue_bundle: std::path::PathBuf,
    /// Keys the honest offices wrote and had acknowledged: `(collection, key, value)`.
    pub acknowledged: Vec<(String, String, Vec<u8>)>,
}

impl Scene {
    /// Starts the hub and both offices and has each office write one acknowledged record.
    pub fn start() -> Scene {
        Scene::start_tuned("")
    }

    /// Like [`Scene::start`], with `hefei_sync` (TOML lines) added to hefei's `[sync]`.
    pub fn start_tuned(hefei_sync: &str) -> Scene {
        let cluster = Cluster::new();
        let hub_cfg = hub_config(&cluster);
        let hub_addr = hub_cfg.sync_listen;
        let hub = cluster.start(&hub_cfg);
        let hefei_cfg = office_config(&cluster, "hefei", hub_addr);
        let hefei = if hefei_sync.is_empty() {
            cluster.start(&hefei_cfg)
        } else {
            crate::common::start_with_lines(&hefei_cfg, "sync", hefei_sync)
        };
        let beijing = cluster.start(&office_config(&cluster, "beijing-office", hub_addr));
        wait_connected(&[(&hub, "hefei"), (&hub, "beijing-office")], TIMEOUT);
        let rogue_bundle = cluster.issue("rogue-office", false);
        let mut scene = Scene {
            cluster,
            hub,
            hefei,
            beijing,
            hub_addr,
            rogue_bundle,
            acknowledged: Vec::new(),
        };
        scene.honest_put("hefei", "situation", "hefei/start", b"1");
        scene.honest_put("beijing-office", "situation", "beijing/start", b"1");
        assert_converged(&[&scene.hub, &scene.hefei, &scene.beijing], TIMEOUT);
        scene
    }

    /// The honest node named `name`.
    pub fn node(&self, name: &str) -> &TestNode {
        match name {
            "hefei" => &self.hefei,
            "beijing-office" => &self.beijing,
            _ => &self.hub,
        }
    }

    /// An acknowledged write at honest node `at`, remembered for [`Scene::assert_intact`].
    pub fn honest_put(&mut self, at: &str, collection: &str, key: &str, value: &[u8]) {
        self.node(at).put(collection, key, value);
        // A later write of the same key replaces what is expected of it.
        self.acknowledged
            .retain(|(c, k, _)| (c.as_str(), k.as_str()) != (collection, key));
        self.acknowledged
            .push((collection.to_owned(), key.to_owned(), value.to_vec()));
    }

    /// After an attack: every acknowledged honest write is readable (as written) at the hub
    /// and both offices, and a new write at each office reaches the other office within
    /// [`HONEST_WRITE_WITHIN`].
    pub fn assert_intact(&mut self, tag: &str) {
        for (from, to) in [("hefei", "beijing-office"), ("beijing-office", "hefei")] {
            let key = format!("{tag}/after/{from}");
            self.honest_put(from, "situation", &key, b"after the attack");
            let start = Instant::now();
            loop {
                if self.node(to).get("situation", &key).is_some() {
                    break;
                }
                assert!(
                    start.elapsed() < HONEST_WRITE_WITHIN,
                    "{tag}: a write at {from} did not reach {to} within {HONEST_WRITE_WITHIN:?}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        for node in [&self.hub, &self.hefei, &self.beijing] {
            for (collection, key, value) in &self.acknowledged {
                let deadline = Instant::now() + TIMEOUT;
                loop {
                    match node.get(collection, key) {
                        Some(r) if r.value == *value => break,
                        other => assert!(
                            Instant::now() < deadline,
                            "{tag}: {} lost acknowledged {collection}/{key}: {other:?}",
                            node.name()
                        ),
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }

    /// The hub's resident memory in MiB, printed with `what` so the figures reach the log.
    pub fn hub_rss_mib(&self, what: &str) -> f64 {
        let mib = self.hub.pid().and_then(rss_mib).unwrap_or(f64::NAN);
        eprintln!("hub RSS {what}: {mib:.1} MiB");
        mib
    }
}

/// The resident memory of process `pid` in MiB (`VmRSS` of `/proc/PID/status`).
pub fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// A tokio runtime for the rogue peer.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}
