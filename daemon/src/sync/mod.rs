//! Replication service: turns each authenticated QUIC connection from the [`transport`]
//! into a running [`Session`](officesync_protocol::sync::Session) driven against the local
//! [`Replica`], keeps the peer table for status, and runs on-demand verification.
//!
//! [`transport`]: crate::transport

mod dictionary;
mod driver;
mod limit;
mod observe;
pub mod peers;
pub mod pin;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use officesync_protocol::sync::VerifyOutcome;
use officesync_protocol::{ReplicaId, VersionVector};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;

use crate::config::Config;
use crate::replica::Replica;
use crate::transport::{PeerConnection, Transport};
use peers::PeerTable;

/// How long `verify` waits for every peer and collection to answer.
pub const VERIFY_TIMEOUT: Duration = Duration::from_secs(20);

/// One line of a verification report.
pub use officesync_api::VerifyReport;

fn outcome_name(o: VerifyOutcome) -> &'static str {
    match o {
        VerifyOutcome::Equal => "equal",
        VerifyOutcome::VectorsDiffer => "vectors_differ",
        VerifyOutcome::Repaired => "repaired",
        VerifyOutcome::StillDifferent => "still_different",
    }
}

/// Commands the service sends to a running session.
pub(crate) enum Command {
    /// Compare every collection with the peer now; answer with one report per collection.
    Verify {
        collections: Vec<String>,
        reply: oneshot::Sender<Vec<VerifyReport>>,
    },
}

/// Settings every session of this node shares.
#[derive(Debug, Clone)]
pub(crate) struct SyncSettings {
    pub node: String,
    pub cluster_id: String,
    pub admins: Vec<String>,
    pub max_value_bytes: usize,
    pub heartbeat_interval_ms: u64,
    pub is_admin: bool,
    /// `[[sync.limit]]`: the bandwidth limits of bulk data, per peer and local time.
    pub schedule: Arc<crate::config::bandwidth::Schedule>,
    /// `sync.urgent`: collections that bypass the limits and overtake bulk catch-up.
    pub urgent: Vec<String>,
    /// `sync.max_clock_skew_ms`: a version stamped further ahead is refused (alone).
    pub max_clock_skew_ms: u64,
    /// The access policy in force (what peers may read, whose versions are accepted, who is
    /// revoked).
    pub policy: crate::policy::PolicyHandle,
    /// Verifies the origin signatures of received versions.
    pub keyring: Arc<crate::signing::Keyring>,
    /// This node's compression dictionaries (one per collection), offered to peers.
    pub dictionaries: watch::Receiver<dictionary::Published>,
}

/// Handles of the sessions running now, by connection id, and what is known of peers whose
/// session ended (their last version vectors), so their lag keeps growing while they are away.
#[derive(Default)]
pub(crate) struct Registry {
    sessions: Mutex<HashMap<u64, (String, mpsc::Sender<Command>)>>,
    next: AtomicU64,
    last_known: Mutex<HashMap<String, Vec<(String, VersionVector)>>>,
}

impl Registry {
    fn add(&self, peer: &str, tx: mpsc::Sender<Command>) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, (peer.to_owned(), tx));
        id
    }

    fn remove(&self, id: u64) {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }

    /// True while another session with `peer` than `id` is running.
    fn other_session(&self, peer: &str, id: u64) -> bool {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|(other, (name, _))| *other != id && name == peer)
    }

    fn remember(&self, peer: &str, vvs: Vec<(String, VersionVector)>) {
        if !vvs.is_empty() {
            self.last_known
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(peer.to_owned(), vvs);
        }
    }

    /// Peers with no running session and their last known vectors.
    fn away(&self) -> Vec<(String, Vec<(String, VersionVector)>)> {
        let running: Vec<String> = self
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|(n, _)| n.clone())
            .collect();
        self.last_known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(n, _)| !running.contains(n))
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect()
    }

    fn all(&self) -> Vec<(String, mpsc::Sender<Command>)> {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }
}

/// The running replication service.
pub struct SyncService {
    transport: Arc<Transport>,
    registry: Arc<Registry>,
    replica: Replica,
    tasks: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl SyncService {
    /// Starts dialing the configured peers and accepting connections; every authenticated
    /// connection gets a session. Stops when `shutdown` turns true.
    pub fn start(
        config: &Config,
        transport: Transport,
        replica: Replica,
        peers: PeerTable,
        policy: crate::policy::PolicyHandle,
        keyring: Arc<crate::signing::Keyring>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let (dicts_tx, dictionaries) = watch::channel(dictionary::Published::default());
        tokio::spawn(dictionary::train_loop(
            replica.clone(),
            dicts_tx,
            shutdown.clone(),
        ));
        let settings = Arc::new(SyncSettings {
            node: config.node.name.clone(),
            cluster_id: transport.cluster_id().to_owned(),
            admins: config.cluster.admins.clone(),
            max_value_bytes: config.storage.max_value_bytes,
            heartbeat_interval_ms: config.sync.heartbeat_interval_ms,
            schedule: Arc::new(config.sync.schedule()),
            urgent: config.sync.urgent.clone(),
            max_clock_skew_ms: config.sync.max_clock_skew_ms,
            is_admin: config.cluster.admins.contains(&config.node.name)
                && transport.identity().admin_cert,
            policy,
            keyring,
            dictionaries,
        });
        for p in &config.sync.peers {
            peers.set(peers::PeerStatus {
                name: p.name.clone(),
                ..Default::default()
            });
        }
        let registry = Arc::new(Registry::default());
        let transport = Arc::new(transport);
        let dialled = config
            .sync
            .peers
            .iter()
            .filter(|p| p.name != config.node.name)
            .count() as u64;
        peers.set_dialled(dialled == 0);
        if dialled > 0 {
            tokio::spawn(mark_dialled(
                transport.clone(),
                peers.clone(),
                dialled,
                shutdown.clone(),
            ));
        }
        tokio::spawn(lag_of_absent_peers(
            registry.clone(),
            replica.clone(),
            peers.clone(),
            settings.policy.clone(),
            settings.is_admin,
            shutdown.clone(),
        ));
        let mut incoming = transport.start(config.sync.peers.clone(), shutdown.clone());
        let tasks = {
            let (registry, replica) = (registry.clone(), replica.clone());
            tokio::spawn(async move {
                let mut sessions = JoinSet::new();
                while let Some(conn) = incoming.recv().await {
                    sessions.spawn(run_connection(
                        conn,
                        settings.clone(),
                        replica.clone(),
                        peers.clone(),
                        registry.clone(),
                        shutdown.clone(),
                    ));
                    while sessions.try_join_next().is_some() {}
                }
                while sessions.join_next().await.is_some() {}
            })
        };
        Self {
            transport,
            registry,
            replica,
            tasks: Mutex::new(Some(tasks)),
        }
    }

    /// The QUIC address this node listens on.
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.transport.local_addr()
    }

    /// Compares every collection with every connected peer now (repairing divergence the log
    /// cannot explain) and reports per peer and collection.
    pub async fn verify(&self) -> Vec<VerifyReport> {
        // Not `_status`: it differs between nodes by design (reports travel up only).
        let collections: Vec<String> = match self.replica.collections().await {
            Ok(c) => c
                .into_iter()
                .map(|c| c.name)
                .filter(|c| c != officesync_protocol::status::STATUS_COLLECTION)
                .collect(),
            Err(_) => return Vec::new(),
        };
        let mut waits = Vec::new();
        for (peer, tx) in self.registry.all() {
            let (reply, rx) = oneshot::channel();
            let cmd = Command::Verify {
                collections: collections.clone(),
                reply,
            };
            if tx.send(cmd).await.is_ok() {
                waits.push((peer, rx));
            }
        }
        let mut out = Vec::new();
        for (peer, rx) in waits {
            match tokio::time::timeout(VERIFY_TIMEOUT, rx).await {
                Ok(Ok(reports)) => out.extend(reports),
                _ => out.extend(collections.iter().map(|c| VerifyReport {
                    peer: peer.clone(),
                    collection: c.clone(),
                    outcome: "timeout".into(),
                })),
            }
        }
        out.sort_by(|a, b| (&a.peer, &a.collection).cmp(&(&b.peer, &b.collection)));
        out
    }

    /// Waits for the sessions to end (after shutdown) and closes the endpoint.
    pub async fn close(&self) {
        let tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(tasks) = tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), tasks).await;
        }
        self.transport.close().await;
    }
}

async fn run_connection(
    conn: PeerConnection,
    settings: Arc<SyncSettings>,
    replica: Replica,
    peers: PeerTable,
    registry: Arc<Registry>,
    shutdown: watch::Receiver<bool>,
) {
    let (cmd_tx, cmd_rx) = mpsc::channel(4);
    let name = conn.peer.name.clone();
    let id = registry.add(&name, cmd_tx);
    let span = tracing::info_span!("peer", peer = %name, conn = conn.connection.stable_id());
    let (outcome, peer_vvs) = {
        use tracing::Instrument;
        driver::drive(conn, &settings, &replica, &peers, cmd_rx, shutdown)
            .instrument(span.clone())
            .await
    };
    registry.remember(&name, peer_vvs);
    registry.remove(id);
    if !registry.other_session(&name, id) {
        peers.update(&name, |p| {
            p.connected = false;
            p.silent_ms = None;
        });
    }
    let _enter = span.enter();
    tracing::info!(reason = %outcome, "session ended");
}

/// Per collection this node holds, the versions a peer with vectors `peer` lacks: every
/// origin's for a relay, only this node's own otherwise (what a session would send it).
pub(crate) fn lag_by_collection(
    ours: &std::collections::BTreeMap<String, VersionVector>,
    peer: &[(String, VersionVector)],
    me: &ReplicaId,
    relay: bool,
) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for (coll, vv) in ours {
        let theirs = peer.iter().find(|(c, _)| c == coll).map(|(_, v)| v);
        let mut total = 0;
        for (origin, n) in vv.iter() {
            if relay || origin == me {
                total = u64::saturating_add(
                    total,
                    n.saturating_sub(theirs.map_or(0, |t| t.get(origin))),
                );
            }
        }
        out.push((coll.clone(), total));
    }
    out
}

/// Marks the peer table's peers as dialled (for `/ready`) once the dialers have finished as
/// many attempts, successful or not, as there are peers to dial.
async fn mark_dialled(
    transport: Arc<Transport>,
    peers: PeerTable,
    dialled: u64,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let stats = transport.stats();
        if stats.connections_dialed + stats.dials_failed >= dialled {
            peers.set_dialled(true);
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {},
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

/// How often the lag of absent peers is recomputed when this node's vectors do not move (a
/// peer that just went away is picked up within this).
const ABSENT_LAG_EVERY: Duration = Duration::from_secs(5);

/// Keeps the lag of peers without a session current, from their last known vectors.
async fn lag_of_absent_peers(
    registry: Arc<Registry>,
    replica: Replica,
    peers: PeerTable,
    policy: crate::policy::PolicyHandle,
    relay: bool,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut durable = replica.durable();
    loop {
        tokio::select! {
            changed = durable.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(ABSENT_LAG_EVERY) => {},
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let ours = durable.borrow_and_update().vvs.clone();
        let policy = policy.current();
        for (name, vvs) in registry.away() {
            // Only what the peer may read is owed to it.
            let readable = ours
                .iter()
                .filter(|(c, _)| policy.may_read(&name, c))
                .map(|(c, v)| (c.clone(), v.clone()))
                .collect();
            let per_collection = lag_by_collection(&readable, &vvs, replica.id(), relay);
            peers.update(&name, |p| {
                if !p.connected {
                    p.lag_versions = per_collection
                        .iter()
                        .map(|(_, n)| *n)
                        .fold(0, u64::saturating_add);
                    for (collection, n) in &per_collection {
                        p.collection_mut(collection).lag_versions = *n;
                    }
                }
            });
        }
    }
}
