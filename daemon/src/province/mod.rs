//! The province view's node side: this node publishes its status report in `_status` (every
//! `status.report_interval_ms`, and at once, at most once a second, when a connection comes up
//! or goes down; a report that would say nothing new is skipped, up to
//! `status.unchanged_report_ms`: every relay up the tree and the general office store and
//! sync each report, so an idle province's reports are most of its idle work), notes when
//! other nodes' reports arrive here, keeps each peer's lag history for the status page, and
//! reads the reports it holds for `/v1/cluster` and `/cluster`. An admin relay's report also
//! carries its summary of the readers below it ([`subtree`]), which the general office
//! computes tombstone frontiers with.

pub mod history;
pub mod report;
pub mod subtree;
pub mod view;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use officesync_api::{PeerStatus, StatusReport};
use officesync_protocol::status::STATUS_COLLECTION;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::policy::PolicyHandle;
use crate::replica::{DurableState, Replica, ReplicaError};
use crate::sync::peers::PeerTable;
use crate::time::unix_ms_now;
use history::LagHistory;
use report::{build_report, encode, BadInputWatch, ReportInputs};
use view::HeldReport;

/// How often the reporter looks at the peer table (lag history) and at which reports arrived
/// while the store moves; a still node's reporter wakes only when a report is due, a link
/// changes ([`PeerTable::links`]) or the store moves.
/// (A second: reports are at least [`MIN_REPORT_GAP`] apart anyway, and the lag history keeps
/// a bucket a minute.)
const POLL: Duration = Duration::from_secs(1);
/// Least time between two reports, however often connections change.
pub const MIN_REPORT_GAP: Duration = Duration::from_secs(1);
/// Most reports read for one view (the vector of `_status` is bounded far below this anyway).
const MAX_HELD_REPORTS: usize = 20_000;

/// The province state of this node, shared by its reporter task and the API.
#[derive(Debug)]
pub struct Province {
    node: String,
    dials: Vec<String>,
    interval_ms: u64,
    unchanged_ms: u64,
    started: Instant,
    /// When each node's newest report arrived here (this node's clock, Unix ms).
    arrived: Mutex<HashMap<String, u64>>,
    history: Mutex<LagHistory>,
    latest: Mutex<Option<StatusReport>>,
    /// `Some` for an admin relay (an admin that dials a parent): its reports carry a subtree
    /// summary, judged under this policy.
    relay: Option<PolicyHandle>,
}

/// Locks `m`, taking over a lock poisoned by a panicked holder (the data is plain values).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Province {
    /// The province state of the node `config` describes.
    pub fn new(config: &Config) -> Self {
        Self {
            node: config.node.name.clone(),
            dials: config.sync.peers.iter().map(|p| p.name.clone()).collect(),
            interval_ms: config.status.report_interval_ms,
            unchanged_ms: config.status.unchanged_ms(),
            started: Instant::now(),
            arrived: Mutex::default(),
            history: Mutex::default(),
            latest: Mutex::default(),
            relay: None,
        }
    }

    /// Makes this node's reports carry a subtree summary ([`subtree`]) when it is an admin
    /// (`is_admin`: named in `[cluster] admins` with an admin certificate) that dials a parent;
    /// the general office's own report has no reader above it.
    pub fn relaying(mut self, is_admin: bool, policy: PolicyHandle) -> Self {
        self.relay = (is_admin && !self.dials.is_empty()).then_some(policy);
        self
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The lag history of `peer` (minutes ago, largest lag), oldest first.
    pub fn lag_series(&self, peer: &str, now_ms: u64) -> Vec<(u64, u64)> {
        lock(&self.history).series(peer, now_ms)
    }

    /// This node's last published report.
    pub fn latest(&self) -> Option<StatusReport> {
        lock(&self.latest).clone()
    }

    /// Every report this node holds, with when it arrived, and its own live one. A report
    /// held since before this daemon started counts as arrived when it was made (or now, if
    /// its maker's clock is ahead).
    pub async fn held_reports(
        &self,
        replica: &Replica,
        now_ms: u64,
    ) -> Result<Vec<HeldReport>, ReplicaError> {
        let mut held = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = replica
                .scan(STATUS_COLLECTION, "", after.as_deref(), 1000)
                .await?;
            for r in &page.records {
                if r.key == self.node {
                    continue; // its live report is added below
                }
                let Some(value) = &r.sibling.value else {
                    continue;
                };
                let Ok(mut report) = serde_json::from_slice::<StatusReport>(value) else {
                    tracing::debug!(node = %r.key, "unreadable status report");
                    continue;
                };
                // Receivers hold a report to its key, so the key names the node.
                report.node = r.key.clone();
                let arrived = lock(&self.arrived).get(&r.key).copied();
                held.push(HeldReport {
                    report,
                    received_ms: arrived.unwrap_or(r.sibling.hlc.ms.min(now_ms)),
                });
            }
            match page.next {
                Some(next) if held.len() < MAX_HELD_REPORTS => after = Some(next),
                _ => break,
            }
        }
        if let Some(own) = self.latest() {
            held.push(HeldReport {
                report: own,
                received_ms: now_ms,
            });
        }
        Ok(held)
    }

    /// Starts the reporter: it runs until `stop` turns true.
    pub fn spawn(
        self: &Arc<Self>,
        replica: Replica,
        peers: PeerTable,
        stop: watch::Receiver<bool>,
    ) -> JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move { this.run(replica, peers, stop).await })
    }

    async fn run(&self, replica: Replica, peers: PeerTable, mut stop: watch::Receiver<bool>) {
        let mut durable = replica.durable();
        let mut counters: HashMap<String, u64> = HashMap::new();
        self.note_arrivals(&durable.borrow_and_update(), &mut counters, None);
        let mut bad = BadInputWatch::default();
        let mut connected: Option<BTreeSet<String>> = None;
        let mut last_report: Option<Instant> = None;
        // The last report written, and when: the next one is skipped if it says the same.
        let mut written: Option<(StatusReport, Instant)> = None;
        let unchanged = Duration::from_millis(self.unchanged_ms);
        let mut due = Instant::now();
        let interval = Duration::from_millis(self.interval_ms);
        let mut links = peers.links();
        // While the store moves, look every POLL; once a look finds it still, sleep until the
        // next report is due, a link changes or the store moves again.
        let mut moving = true;
        let mut first = true;
        loop {
            let wake = if std::mem::take(&mut first) {
                Instant::now()
            } else if moving {
                Instant::now() + POLL
            } else {
                due.max(Instant::now() + POLL)
            };
            let mut moved = false;
            tokio::select! {
                _ = tokio::time::sleep_until(wake.into()) => {}
                changed = links.changed() => if changed.is_err() { break },
                changed = durable.changed(), if !moving => {
                    if changed.is_err() {
                        break;
                    }
                    moved = true;
                }
                _ = stop.changed() => {}
            }
            if *stop.borrow() || stop.has_changed().is_err() {
                break;
            }
            links.borrow_and_update();
            let now_ms = unix_ms_now();
            // Only when the applied state moved: `_status` has an origin a node below.
            moved |= durable.has_changed().unwrap_or(false);
            moving = moved;
            if moved {
                self.note_arrivals(&durable.borrow_and_update(), &mut counters, Some(now_ms));
            }
            let snapshot = with_staleness(peers.snapshot(), now_ms);
            bad.handle_peers(&snapshot, now_ms);
            {
                let mut history = lock(&self.history);
                for p in &snapshot {
                    history.record(
                        &p.name,
                        p.lag_versions.saturating_add(p.behind_versions),
                        now_ms,
                    );
                }
            }
            let up: BTreeSet<String> = snapshot
                .iter()
                .filter(|p| p.connected && p.silent_ms.is_none())
                .map(|p| p.name.clone())
                .collect();
            if connected.as_ref().is_some_and(|c| c != &up) {
                due = due.min(Instant::now());
            }
            connected = Some(up);
            let now = Instant::now();
            if now >= due && last_report.is_none_or(|t| now.duration_since(t) >= MIN_REPORT_GAP) {
                let report = self
                    .build(&replica, &peers, &snapshot, bad.last().cloned(), now_ms)
                    .await;
                let quiet = written.as_ref().is_some_and(|(old, at)| {
                    now.duration_since(*at) < unchanged && report::says_the_same(old, &report)
                });
                if quiet {
                    *lock(&self.latest) = Some(report);
                } else if self.write(&replica, &report).await {
                    written = Some((report, now));
                }
                last_report = Some(now);
                due = now + interval;
            }
        }
    }

    /// Notes the reports that arrived since the last look: a node's report is new when the
    /// counter of one of its origins in `_status` rose (a node writes only its own key).
    /// `now_ms` `None`: only learn the counters (at start).
    fn note_arrivals(
        &self,
        durable: &DurableState,
        counters: &mut HashMap<String, u64>,
        now_ms: Option<u64>,
    ) {
        let Some(vv) = durable.vvs.get(STATUS_COLLECTION) else {
            return;
        };
        let mut arrived = lock(&self.arrived);
        for (origin, counter) in vv.iter() {
            let before = counters.get(origin.as_str()).copied();
            if before == Some(counter) {
                continue;
            }
            counters.insert(origin.as_str().to_owned(), counter);
            if let (Some(now), true) = (now_ms, before.is_none_or(|b| b < counter)) {
                arrived.insert(origin.node_name().to_owned(), now);
            }
        }
    }

    /// This node's report now.
    async fn build(
        &self,
        replica: &Replica,
        peers_table: &PeerTable,
        peers: &[PeerStatus],
        last_bad_input: Option<officesync_api::BadInput>,
        now_ms: u64,
    ) -> StatusReport {
        let store = replica.store().clone();
        let store_bytes = tokio::task::spawn_blocking(move || store.size_on_disk())
            .await
            .unwrap_or(0);
        let subtree = match &self.relay {
            Some(policy) => {
                let policy = policy.current();
                subtree::build(
                    &self.node,
                    &self.dials,
                    replica,
                    (peers_table, peers),
                    &policy,
                    now_ms,
                )
                .await
                .unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "cannot summarise the readers below this relay");
                    Default::default()
                })
            }
            None => Default::default(),
        };
        let inputs = ReportInputs {
            node: &self.node,
            dials: &self.dials,
            interval_ms: self.interval_ms,
            unchanged_ms: self.unchanged_ms,
            uptime_secs: self.started.elapsed().as_secs(),
            store_bytes,
            last_bad_input,
            now_ms,
            subtree,
        };
        build_report(&inputs, peers)
    }

    /// Writes `report` to `_status`; false when it could not (logged: the next one will do).
    async fn write(&self, replica: &Replica, report: &StatusReport) -> bool {
        match replica
            .write(STATUS_COLLECTION, &self.node, Some(encode(report)))
            .await
        {
            Ok(_) => {
                *lock(&self.latest) = Some(report.clone());
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot publish this node's status report");
                false
            }
        }
    }
}

/// `peers` with each collection's staleness computed for `now_ms`.
fn with_staleness(mut peers: Vec<PeerStatus>, now_ms: u64) -> Vec<PeerStatus> {
    for p in &mut peers {
        for c in &mut p.collections {
            c.staleness_ms = c.data_as_of_ms.map(|t| now_ms.saturating_sub(t));
        }
    }
    peers
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::replica::ReplicaOptions;
    use crate::store::MemoryStore;

    #[tokio::test]
    async fn an_unreadable_report_is_skipped_and_a_report_names_the_node_of_its_key() {
        let config = Config::builder("general-office", "/d", "/t").build();
        let province = Province::new(&config);
        let replica = Replica::open(
            Arc::new(MemoryStore::new()),
            ReplicaOptions::new("general-office"),
        )
        .expect("open");
        // An office's garbage, and a report that claims to be another node's.
        replica
            .write(STATUS_COLLECTION, "town-1", Some(b"{not json".to_vec()))
            .await
            .expect("write");
        let claims = StatusReport {
            node: "town-9".into(),
            ..StatusReport::default()
        };
        replica
            .write(STATUS_COLLECTION, "town-2", Some(encode(&claims)))
            .await
            .expect("write");
        let held = province
            .held_reports(&replica, unix_ms_now())
            .await
            .expect("held");
        let nodes: Vec<&str> = held.iter().map(|h| h.report.node.as_str()).collect();
        assert_eq!(nodes, ["town-2"], "{held:?}");
    }
}
