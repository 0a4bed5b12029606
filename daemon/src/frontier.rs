//! Tombstone collection at this node (the rules: [`officesync_protocol::frontier`]). Every
//! `[storage] purge_interval_ms`:
//!
//! - **publish** (the general office: an admin that dials no peer, with
//!   `[storage] tombstone_ttl_ms` set): for each data collection, the pointwise minimum of its
//!   own vector and the vectors of every node that may read it (from `_nodes`), as its
//!   sessions learnt them ([`crate::sync::peers::KnownVectors`]). A reader no session told it
//!   about (a township behind relays) stands by the meet of the narrowest fresh subtree
//!   summary that covers it, from an admin relay's status report
//!   ([`crate::province::subtree`], rules in [`officesync_protocol::subtree`]): a lower bound
//!   of its vector. A reader with neither blocks that collection's frontier for the round,
//!   unless it has not been heard from (session, or status report in `_status`, or since this
//!   daemon started) for longer than the TTL: then it is left out, and if the frontier passes
//!   what it was last known to hold, it is owed a rejoin record. The frontier never goes down;
//!   it is written only when it moves (or carries no TTL yet: records say `ttl_ms`, which
//!   relays judge the freshness of their summaries with).
//! - **apply** (every node): answers a rejoin record addressed to it that it has not answered
//!   yet (logged as a warning: this node was away too long), then purges, in steps of
//!   [`PURGE_STEP_KEYS`] records, every collection whose frontier its own vector covers.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use officesync_api::StatusReport;
use officesync_protocol::frontier::{
    covers_all, decide, parse_rejoin_key, rejoin_key, Decision, FrontierRecord, Reader,
    FRONTIER_COLLECTION,
};
use officesync_protocol::names::is_system_collection;
use officesync_protocol::signing::NODES_COLLECTION;
use officesync_protocol::status::STATUS_COLLECTION;
use officesync_protocol::subtree::{choose_cover, Offered, Summary};
use officesync_protocol::VersionVector;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::policy::PolicyHandle;
use crate::province::subtree::{summaries_of, trusted_reporter};
use crate::province::view::cluster_view;
use crate::province::Province;
use crate::replica::{Replica, ReplicaError, WinnerRead};
use crate::sync::peers::PeerTable;
use crate::time::unix_ms_now;

/// Records one purge or rejoin step goes through (one writer request, one atomic batch).
pub const PURGE_STEP_KEYS: usize = 1000;

/// Records read per page of `_frontier` and `_nodes`.
const PAGE: usize = 1000;

/// What this node knows of the frontiers, for status and metrics.
#[derive(Debug, Default)]
pub struct FrontierState {
    /// Per collection: when the frontier it holds was computed (publisher's clock, Unix ms).
    computed: Mutex<BTreeMap<String, u64>>,
}

impl FrontierState {
    /// Per collection, the age of the frontier this node holds at `now_ms` (ms).
    pub fn ages(&self, now_ms: u64) -> Vec<(String, u64)> {
        self.computed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(c, t)| (c.clone(), now_ms.saturating_sub(*t)))
            .collect()
    }
}

/// The tombstone collector of one node.
struct Collector {
    node: String,
    replica: Replica,
    peers: PeerTable,
    policy: PolicyHandle,
    /// `Some(ttl)`: this node publishes frontiers.
    publish_ttl_ms: Option<u64>,
    started_ms: u64,
    state: Arc<FrontierState>,
    /// Per collection, the frontier whose purge went through every record.
    purged: HashMap<String, VersionVector>,
    /// This node's province view: which nodes it does not count silent.
    province: Option<Arc<Province>>,
}

/// Starts the collector of the node `config` describes (`is_admin`: its certificate and
/// config make it an admin); it ends when `stopped` turns true.
pub fn spawn(
    config: &Config,
    is_admin: bool,
    replica: Replica,
    peers: PeerTable,
    policy: PolicyHandle,
    province: Arc<Province>,
    mut stopped: watch::Receiver<bool>,
) -> (Arc<FrontierState>, JoinHandle<()>) {
    let publish_ttl_ms = config
        .storage
        .tombstone_ttl_ms
        .filter(|_| is_admin && config.sync.peers.is_empty());
    if config.storage.tombstone_ttl_ms.is_some() && publish_ttl_ms.is_none() {
        tracing::warn!(
            "storage.tombstone_ttl_ms is set, but only the general office (an admin that dials \
             no peer) publishes frontiers; this node only applies them"
        );
    }
    let state = Arc::new(FrontierState::default());
    let mut collector = Collector {
        node: config.node.name.clone(),
        replica,
        peers,
        policy,
        publish_ttl_ms,
        started_ms: unix_ms_now(),
        state: state.clone(),
        purged: HashMap::new(),
        province: Some(province),
    };
    let every = Duration::from_millis(config.storage.purge_interval_ms);
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stopped.changed() => {}
            }
            if *stopped.borrow() || !collector.replica.is_open() {
                return;
            }
            if let Some(ttl) = collector.publish_ttl_ms {
                if let Err(e) = collector.publish(ttl).await {
                    tracing::warn!(error = %e, "cannot publish the stable frontiers");
                }
            }
            if let Err(e) = collector.apply(&stopped).await {
                tracing::warn!(error = %e, "cannot apply the stable frontiers");
            }
        }
    });
    (state, task)
}

/// Every live record of `collection` (winners with values), page by page.
async fn all_records(replica: &Replica, collection: &str) -> Result<Vec<WinnerRead>, ReplicaError> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = replica.scan(collection, "", after.as_deref(), PAGE).await?;
        out.extend(page.records);
        match page.next {
            Some(next) => after = Some(next),
            None => return Ok(out),
        }
    }
}

/// The frontier record held at `key` of `_frontier`, if any and readable.
pub(crate) async fn record_at(
    replica: &Replica,
    key: &str,
) -> Result<Option<FrontierRecord>, ReplicaError> {
    Ok(replica
        .winner(FRONTIER_COLLECTION, key)
        .await?
        .and_then(|w| w.sibling.value)
        .and_then(|v| FrontierRecord::decode(&v).ok()))
}

impl Collector {
    /// Computes and writes the frontier of every data collection (see the module doc).
    async fn publish(&mut self, ttl_ms: u64) -> Result<(), ReplicaError> {
        let now = unix_ms_now();
        let policy = self.policy.current();
        let nodes: BTreeSet<String> = all_records(&self.replica, NODES_COLLECTION)
            .await?
            .into_iter()
            .filter_map(|r| r.key.split('/').next().map(str::to_owned))
            .filter(|n| *n != self.node)
            .collect();
        let known = self.peers.known_vectors();
        // Nodes the province view does not count silent: heard now, as their reports may be
        // skipped while unchanged (`status.unchanged_report_ms`) with their parents vouching.
        let live: BTreeSet<String> = match &self.province {
            Some(province) => {
                let held = province.held_reports(&self.replica, now).await?;
                cluster_view(&self.node, held, now)
                    .nodes
                    .into_iter()
                    .filter(|n| !n.silent && n.last_report.is_some())
                    .map(|n| n.name)
                    .collect()
            }
            None => BTreeSet::new(),
        };
        // Last sign of life of each node: an open session, the last one, its status report
        // (now, while the view does not count it silent), or this start. And the subtree
        // summaries in the admins' reports.
        let mut heard: BTreeMap<&str, u64> = BTreeMap::new();
        let mut summaries: Vec<(&str, u64, BTreeMap<String, Summary>)> = Vec::new();
        for n in &nodes {
            let mut t = self.started_ms;
            if let Some(k) = known.get(n) {
                t = t.max(k.heard_ms);
            }
            if self.peers.get(n).is_some_and(|p| p.connected) || live.contains(n) {
                t = now; // a session is open, or its reports are current
            }
            if let Some(w) = self.replica.winner(STATUS_COLLECTION, n).await? {
                t = t.max(w.sibling.hlc.ms);
                // Only an admin's report is believed about others (an office's is not read).
                let report = w
                    .sibling
                    .value
                    .filter(|_| trusted_reporter(&policy, n))
                    .and_then(|v| serde_json::from_slice::<StatusReport>(&v).ok());
                if let Some(report) = report {
                    // A report the view counts current is as good as one made now, and so
                    // are the names it covers that the view counts current.
                    let mut of = summaries_of(&report);
                    for summary in of.values_mut() {
                        for (name, at) in summary.covers.iter_mut() {
                            if live.contains(name) {
                                *at = now;
                            }
                        }
                    }
                    let made = if live.contains(n) {
                        now
                    } else {
                        report.generated_ms
                    };
                    summaries.push((n, made, of));
                }
            }
            heard.insert(n, t);
        }
        for info in self.replica.collections().await? {
            let c = info.name.as_str();
            if is_system_collection(c) {
                continue;
            }
            let offered: Vec<Offered<'_>> = summaries
                .iter()
                .filter_map(|(n, generated_ms, s)| {
                    Some(Offered {
                        reporter: n,
                        generated_ms: *generated_ms,
                        summary: s.get(c)?,
                    })
                })
                .collect();
            // A reader no session of ours knows stands by the narrowest fresh summary of a
            // relay above it (a lower bound of its vector).
            let readers: Vec<Reader<'_>> = nodes
                .iter()
                .filter(|n| policy.may_read(n, c))
                .map(|n| Reader {
                    node: n,
                    vv: known
                        .get(n.as_str())
                        .and_then(|k| k.vvs.get(c))
                        .or_else(|| choose_cover(n, &offered, now, ttl_ms)),
                    heard_ms: heard.get(n.as_str()).copied().unwrap_or(0),
                })
                .collect();
            let previous = record_at(&self.replica, c).await?.unwrap_or_default();
            let (frontier, excluded, owed) = match decide(
                &info.meta.vv,
                &readers,
                &previous.frontier,
                now,
                ttl_ms,
            ) {
                Decision::Blocked(n) => {
                    tracing::debug!(collection = c, node = %n, "frontier waits for a reader's vector");
                    continue;
                }
                Decision::Frontier {
                    frontier,
                    excluded,
                    owed,
                } => (frontier, excluded, owed),
            };
            if frontier != previous.frontier
                || excluded != previous.excluded
                || previous.ttl_ms != Some(ttl_ms)
            {
                let record = FrontierRecord {
                    frontier: frontier.clone(),
                    computed_ms: now,
                    excluded: excluded.clone(),
                    ttl_ms: Some(ttl_ms),
                };
                self.replica
                    .write(FRONTIER_COLLECTION, c, Some(record.encode()))
                    .await?;
                tracing::debug!(collection = c, ?excluded, "published the stable frontier");
            }
            for n in &owed {
                let key = rejoin_key(n, c);
                let owed = record_at(&self.replica, &key).await?;
                if owed.is_none_or(|r| r.frontier != frontier) {
                    let record = FrontierRecord {
                        frontier: frontier.clone(),
                        computed_ms: now,
                        excluded: Vec::new(),
                        ttl_ms: Some(ttl_ms),
                    };
                    self.replica
                        .write(FRONTIER_COLLECTION, &key, Some(record.encode()))
                        .await?;
                    tracing::warn!(
                        collection = c,
                        node = %n,
                        away_ms = now.saturating_sub(heard.get(n.as_str()).copied().unwrap_or(0)),
                        "a reader away longer than storage.tombstone_ttl_ms is left out of the \
                         frontier; it must rejoin this collection when it returns"
                    );
                }
            }
        }
        Ok(())
    }

    /// Answers this node's rejoin records, then purges below every frontier its vectors cover.
    async fn apply(&mut self, stopped: &watch::Receiver<bool>) -> Result<(), ReplicaError> {
        let mut frontiers = Vec::new();
        let mut rejoins = Vec::new();
        for r in all_records(&self.replica, FRONTIER_COLLECTION).await? {
            let Some(record) = r
                .sibling
                .value
                .as_deref()
                .and_then(|v| FrontierRecord::decode(v).ok())
            else {
                continue;
            };
            let rejoin = parse_rejoin_key(&r.key).map(|(n, c)| (n == self.node, c.to_owned()));
            match rejoin {
                Some((true, c)) => rejoins.push((c, record, r.sibling.dot.to_string())),
                Some((false, _)) => {}
                None => frontiers.push((r.key, record)),
            }
        }
        for (c, record, version) in rejoins {
            if self.replica.rejoin_done(&c).await?.as_deref() == Some(version.as_str()) {
                continue;
            }
            tracing::warn!(
                collection = %c,
                record = %version,
                "this node was away longer than the general office's tombstone TTL and was \
                 left out of the stable frontier: rejoining the collection (versions the \
                 frontier covers are dropped and come back from the peers by repair; this \
                 node's newer writes are kept)"
            );
            let mut after = None;
            let mut dropped = 0;
            loop {
                let step = self
                    .replica
                    .rejoin_step(
                        &c,
                        record.frontier.clone(),
                        version.clone(),
                        after,
                        PURGE_STEP_KEYS,
                    )
                    .await?;
                dropped += step.removed;
                match step.next {
                    Some(next) if !*stopped.borrow() => after = Some(next),
                    Some(_) => return Ok(()),
                    None => break,
                }
            }
            self.purged.remove(&c);
            tracing::warn!(collection = %c, dropped, "rejoin done");
        }
        for (c, record) in frontiers {
            self.state
                .computed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(c.clone(), record.computed_ms);
            if self.purged.get(&c) == Some(&record.frontier) {
                continue;
            }
            let held = self.replica.collection(&c).await?.vv;
            if !covers_all(&held, &record.frontier) {
                tracing::debug!(collection = %c, "behind the stable frontier: no purge yet");
                continue;
            }
            let mut after = None;
            let mut purged = 0;
            loop {
                let step = self
                    .replica
                    .purge_step(&c, record.frontier.clone(), after, PURGE_STEP_KEYS)
                    .await?;
                purged += step.removed;
                match step.next {
                    Some(next) if !*stopped.borrow() => after = Some(next),
                    Some(_) => return Ok(()),
                    None => break,
                }
            }
            self.purged.insert(c.clone(), record.frontier);
            if purged > 0 {
                tracing::info!(collection = %c, purged, "purged tombstones below the stable frontier");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use officesync_api::SubtreeSummary;
    use officesync_protocol::policy::Policy;

    use super::*;
    use crate::province::report::encode;
    use crate::replica::ReplicaOptions;
    use crate::store::MemoryStore;

    const TTL: u64 = 60_000;

    /// A report of `node` at `now` with a summary of `situation` covering `covers`.
    fn report(node: &str, meet: &VersionVector, covers: &[&str], now: u64) -> Vec<u8> {
        let summary = SubtreeSummary {
            meet: meet.iter().map(|(o, n)| (o.to_string(), n)).collect(),
            covers: covers.iter().map(|n| ((*n).to_owned(), now)).collect(),
        };
        encode(&StatusReport {
            node: node.into(),
            generated_ms: now,
            interval_ms: 1_000,
            subtree: BTreeMap::from([("situation".to_owned(), summary)]),
            ..StatusReport::default()
        })
    }

    #[tokio::test]
    async fn the_general_office_believes_an_admins_summary_and_not_an_offices() {
        let replica = Replica::open(
            Arc::new(MemoryStore::new()),
            ReplicaOptions::new("general-office"),
        )
        .expect("open");
        replica
            .write("situation", "k", Some(b"v".to_vec()))
            .await
            .expect("write");
        let own = replica.collection("situation").await.expect("meta").vv;
        for n in ["county", "office", "town"] {
            replica
                .write(
                    NODES_COLLECTION,
                    &format!("{n}/key"),
                    Some(b"cert".to_vec()),
                )
                .await
                .expect("write");
        }
        let now = unix_ms_now();
        // The county relay vouches for itself; an office (not an admin) for itself and a
        // township: not believed, so the frontier waits.
        for (n, covers) in [("county", &["county"][..]), ("office", &["office", "town"])] {
            replica
                .write(STATUS_COLLECTION, n, Some(report(n, &own, covers, now)))
                .await
                .expect("write");
        }
        let mut collector = Collector {
            node: "general-office".into(),
            replica: replica.clone(),
            peers: PeerTable::new(),
            policy: PolicyHandle::fixed(Policy::open(["general-office", "county"])),
            publish_ttl_ms: Some(TTL),
            started_ms: now,
            state: Arc::default(),
            purged: HashMap::new(),
            province: None,
        };
        collector.publish(TTL).await.expect("publish");
        assert_eq!(record_at(&replica, "situation").await.expect("read"), None);
        // The county relay (an admin) covers all three: the frontier moves, with the TTL.
        replica
            .write(
                STATUS_COLLECTION,
                "county",
                Some(report("county", &own, &["county", "office", "town"], now)),
            )
            .await
            .expect("write");
        collector.publish(TTL).await.expect("publish");
        let record = record_at(&replica, "situation")
            .await
            .expect("read")
            .expect("a frontier");
        assert_eq!(record.frontier, own);
        assert_eq!((record.excluded, record.ttl_ms), (vec![], Some(TTL)));
    }
}
