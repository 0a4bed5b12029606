//! What one session tells the peer table beyond the basics the driver reports: lag each way
//! per collection, catch-up completion, "data as of" (staleness), the newest version held from
//! the peer, versions sent, received and applied, and refusals by reason.
//!
//! Definitions (also in README.md, "Status and metrics"):
//! * **behind** (per collection): versions the peer is known to hold — its handshake vectors,
//!   raised by what it completes — of the origins it sends this node (its own node's, or every
//!   origin when it is a relay), minus what this node has applied.
//! * **caught up**: the session is established and behind is 0 in every collection; the first
//!   such moment of a session is its completed catch-up (`caught_up_at`).
//! * **data as of** (per collection): the last time the peer was heard from while behind was
//!   0 in that collection. Frozen while the peer is away; staleness is now minus this.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::SystemTime;

use officesync_protocol::signing::SignatureFault;
use officesync_protocol::status::STATUS_COLLECTION;
use officesync_protocol::sync::SessionStatus;
use officesync_protocol::{Hlc, ReplicaId, Version, VersionVector};
use tokio::sync::watch;

use super::peers::{PeerStatus, PeerTable};
use crate::policy::PolicyHandle;
use crate::replica::{ApplyReport, DurableState, Replica};
use crate::time::{rfc3339, rfc3339_ms};

/// Largest value bytes read when looking up the newest version of an origin at session start.
const SEED_MAX_BYTES: usize = 64 * 1024;

/// Totals of earlier sessions with the same peer, so the table counts since the daemon started.
#[derive(Debug, Clone, Copy, Default)]
struct Base {
    versions_sent: u64,
    versions_received: u64,
}

/// The observer of one session; the driver feeds it and it writes the peer table.
pub(crate) struct SessionObserver {
    peer: String,
    /// The peer may send versions of every origin (it is a relay).
    peer_relays: bool,
    peers: PeerTable,
    durable: watch::Receiver<Arc<DurableState>>,
    base: Base,
    caught_up: bool,
    /// This node's name and policy: what it may read, and whose versions it accepts, bound
    /// what it can be behind by.
    node: String,
    policy: PolicyHandle,
    /// Per collection, the last "behind" figure and what it was computed from.
    behind_memo: HashMap<String, BehindMemo>,
}

/// A "behind" figure with the vectors and policy it was computed from.
#[derive(Debug)]
struct BehindMemo {
    theirs: VersionVector,
    ours: Option<VersionVector>,
    policy: Arc<officesync_protocol::policy::Policy>,
    behind: u64,
}

impl SessionObserver {
    /// Starts observing a session with `peer` over connection `conn`: records the totals of
    /// earlier sessions and looks up the newest version held from the peer in each collection.
    pub(crate) async fn start(
        peers: &PeerTable,
        replica: &Replica,
        peer: &str,
        peer_relays: bool,
        conn: u64,
        policy: (&str, PolicyHandle),
    ) -> Self {
        let mut base = Base::default();
        peers.update(peer, |p| {
            base = Base {
                versions_sent: p.versions_sent,
                versions_received: p.versions_received,
            };
            p.conn = Some(conn);
        });
        let durable = replica.durable();
        let vvs = durable.borrow().vvs.clone();
        let mut newest: Vec<(String, Hlc)> = Vec::new();
        for (collection, vv) in &vvs {
            for (origin, counter) in vv.iter() {
                if origin.node_name() != peer || counter == 0 {
                    continue;
                }
                // The origin's last write, if it is still live (its HLC is the origin's
                // newest); a superseded one leaves the figure to the next applied version.
                if let Ok((versions, _)) = replica
                    .versions_since(collection, origin, counter - 1, counter, 1, SEED_MAX_BYTES)
                    .await
                {
                    newest.extend(versions.iter().map(|v| (collection.clone(), v.hlc)));
                }
            }
        }
        if !newest.is_empty() {
            peers.update(peer, |p| raise_newest(p, newest));
        }
        Self {
            peer: peer.to_owned(),
            peer_relays,
            peers: peers.clone(),
            durable,
            base,
            caught_up: false,
            node: policy.0.to_owned(),
            policy: policy.1,
            behind_memo: HashMap::new(),
        }
    }

    /// Updates the table from the session's status: lag each way per collection, catch-up,
    /// data as of, versions sent and received. `last_heard`: when the peer was last heard.
    pub(crate) fn report(&mut self, st: &SessionStatus, last_heard: Option<SystemTime>) {
        let ours = Arc::clone(&self.durable.borrow());
        let live = st.established && !st.closed;
        let mut per_collection: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
        for c in &st.collections {
            per_collection.entry(&c.collection).or_default().0 = c.lag_versions;
        }
        let policy = self.policy.current();
        for (collection, theirs) in &st.peer_vvs {
            // Only what this node may read, of origins that may write it, can be owed to it;
            // never status reports, which travel up only.
            if !policy.may_read(&self.node, collection) || collection == STATUS_COLLECTION {
                continue;
            }
            let mine = ours.vvs.get(collection);
            let figure = match self.behind_memo.get(collection) {
                // Neither vector nor the policy moved since the last report (an idle session):
                // at province scale each walk is a thousand origins.
                Some(m)
                    if m.theirs.shares(theirs)
                        && Arc::ptr_eq(&m.policy, &policy)
                        && VersionVector::shares_option(m.ours.as_ref(), mine) =>
                {
                    m.behind
                }
                _ => {
                    // Walked in place: building the allowed vector first cost an allocation
                    // per origin on every look of a busy session.
                    let allowed = theirs
                        .iter()
                        .filter(|(o, _)| policy.may_write(o.node_name(), collection));
                    let figure = behind(allowed, mine, &self.peer, self.peer_relays);
                    self.behind_memo.insert(
                        collection.clone(),
                        BehindMemo {
                            theirs: theirs.clone(),
                            ours: mine.cloned(),
                            policy: policy.clone(),
                            behind: figure,
                        },
                    );
                    figure
                }
            };
            per_collection.entry(collection).or_default().1 = figure;
        }
        let all_in = live && per_collection.values().all(|(_, b)| *b == 0);
        let newly_caught_up = all_in && !self.caught_up;
        if all_in {
            self.caught_up = true;
        }
        let heard = last_heard.map(|t| {
            t.duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        });
        if live {
            if let Some(ms) = heard {
                self.peers.note_vectors(&self.peer, &st.peer_vvs, ms);
            }
        }
        let base = self.base;
        self.peers.update(&self.peer, |p| {
            for (collection, (lag, behind)) in &per_collection {
                let c = p.collection_mut(collection);
                c.lag_versions = *lag;
                c.behind_versions = *behind;
                if let (true, 0, Some(ms)) = (live, *behind, heard) {
                    if c.data_as_of_ms.is_none_or(|t| t < ms) {
                        c.data_as_of_ms = Some(ms);
                        c.data_as_of = Some(rfc3339_ms(ms));
                    }
                }
            }
            p.behind_versions = per_collection
                .values()
                .map(|(_, b)| *b)
                .fold(0, u64::saturating_add);
            p.caught_up = all_in;
            if newly_caught_up {
                p.caught_up_at = Some(rfc3339(SystemTime::now()));
            }
            p.versions_sent = base.versions_sent + st.versions_sent;
            p.versions_received = base.versions_received + st.versions_received;
            p.rejected = p
                .rejected_by_reason
                .values()
                .fold(0, |a, b| a.saturating_add(*b));
        });
    }

    /// The session was established at protocol version `protocol`.
    pub(crate) fn established(&self, protocol: u16) {
        self.peers.update(&self.peer, |p| {
            p.protocol = Some(protocol);
            p.release = None;
        });
    }

    /// The peer said it runs `release`.
    pub(crate) fn release(&self, release: String) {
        self.peers.update(&self.peer, |p| p.release = Some(release));
    }

    /// The session refused `count` versions from the peer for `reason`.
    pub(crate) fn rejected(&self, reason: &str, count: u64) {
        self.peers.update(&self.peer, |p| {
            *p.rejected_by_reason
                .entry(reason_label(reason).to_owned())
                .or_default() += count;
            p.rejected = p
                .rejected_by_reason
                .values()
                .fold(0, |a, b| a.saturating_add(*b));
        });
    }

    /// The newest HLC per collection among `versions` whose origin is the peer, with their
    /// dots, to pass to [`SessionObserver::applied`] once they are applied.
    pub(crate) fn newest_of<'v>(
        &self,
        versions: impl IntoIterator<Item = &'v Version>,
    ) -> Vec<(String, Hlc, String)> {
        let mut newest: HashMap<&str, &Version> = HashMap::new();
        for v in versions
            .into_iter()
            .filter(|v| v.dot.origin.node_name() == self.peer)
        {
            let slot = newest.entry(&v.collection).or_insert(v);
            if v.hlc > slot.hlc {
                *slot = v;
            }
        }
        newest
            .into_values()
            .map(|v| (v.collection.clone(), v.hlc, v.dot.to_string()))
            .collect()
    }

    /// A batch from the peer was applied: counts applied and refused versions and raises the
    /// newest version held from the peer (`newest` from [`SessionObserver::newest_of`]; a
    /// refused version does not count).
    pub(crate) fn applied(&self, report: &ApplyReport, newest: Vec<(String, Hlc, String)>) {
        let newest: Vec<(String, Hlc)> = newest
            .into_iter()
            .filter(|(_, _, dot)| !report.rejected.iter().any(|(d, _)| d == dot))
            .map(|(c, h, _)| (c, h))
            .collect();
        self.peers.update(&self.peer, |p| {
            p.versions_applied += report.applied;
            for (_, reason) in &report.rejected {
                *p.rejected_by_reason
                    .entry(reason_label(reason).to_owned())
                    .or_default() += 1;
            }
            p.rejected = p
                .rejected_by_reason
                .values()
                .fold(0, |a, b| a.saturating_add(*b));
            raise_newest(p, newest);
        });
    }
}

/// Raises each collection's newest version from the peer to the given HLCs.
fn raise_newest(p: &mut PeerStatus, newest: Vec<(String, Hlc)>) {
    for (collection, hlc) in newest {
        let c = p.collection_mut(&collection);
        if c.newest_version_ms.is_none_or(|ms| ms < hlc.ms) {
            c.newest_version_ms = Some(hlc.ms);
            c.newest_version_at = Some(rfc3339_ms(hlc.ms));
        }
    }
}

/// Versions in `theirs` that this node lacks by `ours`, counting only the origins `peer`
/// sends this node: its own node's, or every origin when it relays.
pub(crate) fn behind<'a>(
    theirs: impl IntoIterator<Item = (&'a ReplicaId, u64)>,
    ours: Option<&VersionVector>,
    peer: &str,
    relays: bool,
) -> u64 {
    theirs
        .into_iter()
        .filter(|(o, _)| relays || o.node_name() == peer)
        .map(|(o, n): (&ReplicaId, u64)| n.saturating_sub(ours.map_or(0, |v| v.get(o))))
        .fold(0, u64::saturating_add)
}

/// The metric label of a refusal reason.
pub(crate) fn reason_label(reason: &str) -> &'static str {
    let r = reason.to_ascii_lowercase();
    for fault in [
        SignatureFault::Unsigned,
        SignatureFault::UnknownSigner,
        SignatureFault::Revoked,
        SignatureFault::Invalid,
    ] {
        if r.strip_prefix(fault.label())
            .is_some_and(|rest| rest.starts_with(':'))
        {
            return fault.label();
        }
    }
    if r.contains("not a relay") {
        "relay_rule"
    } else if r.contains("policy") || r.contains("may not write") || r.contains("not allowed") {
        "policy"
    } else if r.contains("ahead of the local clock") {
        "clock_skew"
    } else if r.contains("causal context") {
        "causal_context"
    } else if r.starts_with("incarnation") {
        "incarnation"
    } else if r.starts_with("limit") || r.contains("siblings") {
        "limit"
    } else if r.contains("exceeds the limit") || r.contains("too large") {
        "too_large"
    } else {
        "invalid"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vv(entries: &[(&str, u64)]) -> VersionVector {
        let mut v = VersionVector::default();
        for (o, n) in entries {
            let (node, inc) = o.split_once('@').expect("node@incarnation");
            let id = ReplicaId::new(node, inc.parse().expect("incarnation")).expect("replica id");
            v.raise(&id, *n);
        }
        v
    }

    #[test]
    fn behind_counts_only_what_the_peer_sends() {
        let theirs = vv(&[("hefei@1", 10), ("beijing@1", 5), ("general@1", 3)]);
        let ours = vv(&[("hefei@1", 4), ("beijing@1", 5)]);
        assert_eq!(behind(theirs.iter(), Some(&ours), "hefei", false), 6);
        assert_eq!(behind(theirs.iter(), Some(&ours), "general", false), 3);
        assert_eq!(behind(theirs.iter(), Some(&ours), "general", true), 9);
        assert_eq!(behind(theirs.iter(), None, "hefei", false), 10);
        assert_eq!(behind(ours.iter(), Some(&theirs), "hefei", true), 0);
    }

    #[test]
    fn reasons_get_labels() {
        assert_eq!(
            reason_label("hefei is not a relay: refused versions of x in y"),
            "relay_rule"
        );
        assert_eq!(
            reason_label("timestamp 5.0 is 900000 ms ahead of the local clock (limit 300000 ms)"),
            "clock_skew"
        );
        assert_eq!(
            reason_label("value of 9000000 bytes exceeds the limit"),
            "too_large"
        );
        assert_eq!(reason_label("counter 0 is not a valid dot"), "invalid");
        assert_eq!(
            reason_label("policy: hefei may not write secret: refused versions from hefei"),
            "policy"
        );
    }
}
