//! The deployment under chaos: the general office (hub, admin), a second relay (`relay2`,
//! admin) dialing the hub, offices `office-a` and `office-b` dialing the hub and `office-c`
//! reaching the hub only through `relay2` (a two-hop path). Every link goes through its own
//! [`FaultProxy`]; `office-b` keeps its data on a [`PowerFs`] when FUSE works here.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use serde_json::Value;

use crate::fault_proxy::FaultProxy;
use crate::powerfs::PowerFs;
use crate::{ApiClient, Cluster, TestConfig, TestNode};

/// The hub's name.
pub const HUB: &str = "general-office";
/// The second relay's name.
pub const RELAY: &str = "relay2";
/// Heartbeat interval of every node; the session idle timeout is `max(6 x this, 10 s)`.
pub const HEARTBEAT_MS: u64 = 1_000;
/// The sessions' idle timeout that follows from [`HEARTBEAT_MS`].
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// The collection every client writes.
pub const COLLECTION: &str = "chaos";

/// One link: `from` dials `to` through `proxy`.
#[derive(Debug)]
pub struct Link {
    /// The dialing node.
    pub from: String,
    /// The dialed node.
    pub to: String,
    /// The proxy in between.
    pub proxy: FaultProxy,
}

/// One node of the world.
#[derive(Debug)]
pub struct WorldNode {
    /// The running daemon.
    pub node: TestNode,
    /// Its config.
    pub config: TestConfig,
    /// Clients hold it shared for each operation; the nemesis takes it exclusively to quiesce
    /// the node's clients (wipe, checkpoints).
    pub gate: Arc<RwLock<()>>,
    /// True when its data dir is on the power-loss filesystem.
    pub on_powerfs: bool,
}

impl WorldNode {
    /// A client of its API (the address never changes across restarts).
    pub fn api(&self) -> ApiClient {
        self.node.api()
    }

    /// `GET /v1/status`, or `None` while it does not answer.
    pub fn status(&self) -> Option<Value> {
        let reply = self.api().request("GET", "/v1/status", None).ok()?;
        (reply.status == 200).then(|| reply.json())
    }
}

/// Everything the run owns, dropped in field order: daemons first, then proxies, then the
/// power-loss filesystem, then the temp dir.
#[derive(Debug)]
pub struct World {
    /// The nodes, hub first.
    pub nodes: Vec<WorldNode>,
    /// The links.
    pub links: Vec<Link>,
    /// The power-loss filesystem, when mounted.
    pub powerfs: Option<PowerFs>,
    /// Why there is no power-loss filesystem, when there is none.
    pub powerfs_skipped: Option<String>,
    /// The temp dir with the CA, configs, data and logs.
    pub cluster: Cluster,
}

/// `config` as TOML with the chaos tuning (fast heartbeats) in its `[sync]` section.
fn write_config(config: &TestConfig) -> anyhow::Result<()> {
    config.write();
    let toml = config.to_toml();
    let tuned = toml.replacen(
        "[sync]\n",
        &format!("[sync]\nheartbeat_interval_ms = {HEARTBEAT_MS}\n"),
        1,
    );
    anyhow::ensure!(tuned != toml, "no [sync] section in the config");
    std::fs::write(config.config_path(), tuned).context("write the tuned config")
}

impl World {
    /// Sets up the CA, configs, proxies and (when `power_loss`) the power-loss filesystem, and
    /// starts every daemon.
    ///
    /// `office_b_durability` is `office-b`'s `storage.durability` (`"periodic"` flushes every
    /// 15 s).
    pub fn start(seed: u64, power_loss: bool, office_b_durability: &str) -> anyhow::Result<World> {
        let cluster = Cluster::new();
        let admins = vec![HUB.to_owned(), RELAY.to_owned()];
        cluster.issue(HUB, true);
        cluster.issue(RELAY, true);
        let mut hub = cluster.config(HUB);
        hub.admins = admins.clone();
        let mut relay = cluster.config(RELAY);
        relay.admins = admins.clone();
        let mut links = Vec::new();
        let mut link = |from: &str, to: &TestConfig, salt: u64| {
            let proxy = FaultProxy::start(to.sync_listen, seed ^ salt);
            let addr = proxy.listen_addr();
            links.push(Link {
                from: from.to_owned(),
                to: to.name.clone(),
                proxy,
            });
            addr
        };
        relay.peers = vec![(HUB.to_owned(), link(RELAY, &hub, 1).to_string())];
        let mut offices = Vec::new();
        for (i, (name, via)) in [("office-a", &hub), ("office-b", &hub), ("office-c", &relay)]
            .into_iter()
            .enumerate()
        {
            let mut config = cluster.config(name);
            config.admins = admins.clone();
            config.peers = vec![(via.name.clone(), link(name, via, 2 + i as u64).to_string())];
            offices.push(config);
        }
        let (powerfs, powerfs_skipped) = if power_loss {
            match PowerFs::mount(&cluster.dir().join("powerfs")) {
                Ok(fs) => (Some(fs), None),
                Err(e) => (None, Some(format!("{e:#}"))),
            }
        } else {
            (None, Some("power-loss mode not requested".to_owned()))
        };
        if let Some(fs) = &powerfs {
            offices[1].data_dir = fs.mountpoint().join("office-b-data");
        }
        offices[1].durability = office_b_durability.to_owned();
        if office_b_durability == "periodic" {
            offices[1].flush_interval_ms = Some(15_000);
        }
        let mut nodes = Vec::new();
        for config in [hub, relay].into_iter().chain(offices) {
            write_config(&config)?;
            let node = TestNode::try_start(config.spec())
                .map_err(|e| anyhow::anyhow!("{} did not start: {e}", config.name))?;
            let on_powerfs = powerfs
                .as_ref()
                .is_some_and(|fs| config.data_dir.starts_with(fs.mountpoint()));
            nodes.push(WorldNode {
                node,
                config,
                gate: Arc::new(RwLock::new(())),
                on_powerfs,
            });
        }
        Ok(World {
            nodes,
            links,
            powerfs,
            powerfs_skipped,
            cluster,
        })
    }

    /// The node called `name`.
    pub fn node(&self, name: &str) -> Option<&WorldNode> {
        self.nodes.iter().find(|n| n.config.name == name)
    }

    /// Where the run's logs go.
    pub fn log_dir(&self) -> PathBuf {
        self.cluster.dir().to_path_buf()
    }

    /// Links on the path from `name` to the hub (one hop, or two for `office-c`).
    pub fn path_to_hub(&self, name: &str) -> Vec<&Link> {
        let mut out = Vec::new();
        let mut at = name.to_owned();
        for _ in 0..4 {
            match self.links.iter().find(|l| l.from == at) {
                Some(l) => {
                    at = l.to.clone();
                    out.push(l);
                }
                None => break,
            }
        }
        out
    }
}
