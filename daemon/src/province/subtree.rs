//! An admin relay's subtree summary for its status report (the rules:
//! [`officesync_protocol::subtree`]): per data collection, the meet of its own vector, the
//! vectors its sessions learnt of the readers that dial it, and the summaries in the status
//! reports of the admin relays among them, which it holds (reports travel up). The general
//! office reads these summaries from admins' reports only ([`trusted_reporter`]).

use std::collections::BTreeMap;

use officesync_api::{PeerStatus, StatusReport, SubtreeSummary};
use officesync_protocol::frontier::FrontierRecord;
use officesync_protocol::names::is_system_collection;
use officesync_protocol::policy::{Policy, POLICY_COLLECTION};
use officesync_protocol::status::STATUS_COLLECTION;
use officesync_protocol::subtree::{summarize, ChildSummary, DirectReader, Summary, SummaryInputs};
use officesync_protocol::VersionVector;

use crate::frontier::record_at;
use crate::replica::{Replica, ReplicaError};
use crate::sync::peers::PeerTable;

/// True when `node`'s status report may be believed about others: it is an admin that may
/// write `_policy` (named in `[cluster] admins`, not revoked), the check `_policy` versions
/// are held to. An office's report is only about itself.
pub fn trusted_reporter(policy: &Policy, node: &str) -> bool {
    policy.may_write(node, POLICY_COLLECTION)
}

/// The summaries in a report, per collection (fields a peer got wrong are dropped; an
/// oversized cover is left out).
pub fn summaries_of(report: &StatusReport) -> BTreeMap<String, Summary> {
    report
        .subtree
        .iter()
        .filter_map(|(c, s)| Some((c.clone(), from_wire(s)?)))
        .collect()
}

/// The status report `node` published, as this node holds it (unreadable: none).
async fn held_report(replica: &Replica, node: &str) -> Result<Option<StatusReport>, ReplicaError> {
    Ok(replica
        .winner(STATUS_COLLECTION, node)
        .await?
        .and_then(|w| w.sibling.value)
        .and_then(|v| serde_json::from_slice::<StatusReport>(&v).ok()))
}

/// This relay's summary of every data collection (empty when no peer dials it: a leaf), from
/// `snapshot`, the reporter's copy of the peer table, and the vectors `peers` learnt.
pub async fn build(
    node: &str,
    dials: &[String],
    replica: &Replica,
    (peers, snapshot): (&PeerTable, &[PeerStatus]),
    policy: &Policy,
    now_ms: u64,
) -> Result<BTreeMap<String, SubtreeSummary>, ReplicaError> {
    let below: Vec<(&str, bool)> = snapshot
        .iter()
        .filter(|p| p.name != node && !dials.contains(&p.name))
        .map(|p| (p.name.as_str(), p.connected))
        .collect();
    if below.is_empty() {
        return Ok(BTreeMap::new());
    }
    let known = peers.known_vectors();
    let mut children: Vec<(u64, u64, BTreeMap<String, Summary>)> = Vec::new();
    for (b, connected) in below.iter().filter(|(b, _)| trusted_reporter(policy, b)) {
        if let Some(report) = held_report(replica, b).await? {
            let mut s = summaries_of(&report);
            if s.is_empty() {
                continue;
            }
            let mut generated_ms = report.generated_ms;
            if *connected {
                // A child with a session here re-sends its report as soon as it says something
                // new (it skips unchanged ones, `status.unchanged_report_ms`): its summary is
                // as good as made now, and its readers heard as much later.
                let age = now_ms.saturating_sub(generated_ms);
                for summary in s.values_mut() {
                    for at in summary.covers.values_mut() {
                        *at = at.saturating_add(age).min(now_ms);
                    }
                }
                generated_ms = now_ms;
            }
            children.push((generated_ms, report.interval_ms, s));
        }
    }
    let mut held: Vec<(String, VersionVector, FrontierRecord)> = Vec::new();
    for info in replica.collections().await? {
        if is_system_collection(&info.name) {
            continue;
        }
        let record = record_at(replica, &info.name).await?.unwrap_or_default();
        held.push((info.name, info.meta.vv, record));
    }
    // The TTL of the newest frontier record held, if any says it.
    let ttl_ms = held
        .iter()
        .filter_map(|(_, _, r)| Some((r.computed_ms, r.ttl_ms?)))
        .max()
        .map(|(_, t)| t);
    let mut out = BTreeMap::new();
    for (c, own, record) in &held {
        let direct: Vec<DirectReader<'_>> = below
            .iter()
            .filter(|(b, _)| policy.may_read(b, c))
            .filter_map(|(b, connected)| {
                let k = known.get(*b)?;
                Some(DirectReader {
                    node: b,
                    vv: k.vvs.get(c)?,
                    heard_ms: if *connected { now_ms } else { k.heard_ms },
                })
            })
            .collect();
        let kids: Vec<ChildSummary<'_>> = children
            .iter()
            .filter_map(|(generated_ms, interval_ms, s)| {
                Some(ChildSummary {
                    generated_ms: *generated_ms,
                    interval_ms: *interval_ms,
                    summary: s.get(c)?,
                })
            })
            .collect();
        let inputs = SummaryInputs {
            node,
            own,
            frontier: &record.frontier,
            direct: &direct,
            children: &kids,
            now_ms,
            ttl_ms,
        };
        match summarize(&inputs) {
            Some(s) => {
                out.insert(c.clone(), to_wire(&s));
            }
            None => tracing::debug!(
                collection = %c,
                "too many readers below to summarise: the general office waits on them"
            ),
        }
    }
    Ok(out)
}

/// A summary as a report carries it.
pub fn to_wire(s: &Summary) -> SubtreeSummary {
    SubtreeSummary {
        meet: s.meet.iter().map(|(o, n)| (o.to_string(), n)).collect(),
        covers: s.covers.clone(),
    }
}

/// A summary from a report (see [`Summary::from_parts`]).
pub fn from_wire(s: &SubtreeSummary) -> Option<Summary> {
    Summary::from_parts(
        s.meet.iter().map(|(o, n)| (o.as_str(), *n)),
        s.covers.iter().map(|(n, t)| (n.as_str(), *t)),
    )
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::province::report::encode;
    use crate::replica::ReplicaOptions;
    use crate::store::MemoryStore;

    const NOW: u64 = 1_800_000_000_000;

    fn replica(node: &str) -> Replica {
        Replica::open(Arc::new(MemoryStore::new()), ReplicaOptions::new(node)).expect("open")
    }

    fn report(node: &str, subtree: BTreeMap<String, SubtreeSummary>) -> Vec<u8> {
        encode(&StatusReport {
            node: node.into(),
            generated_ms: NOW - 100,
            interval_ms: 1_000,
            subtree,
            ..StatusReport::default()
        })
    }

    #[tokio::test]
    async fn a_relay_joins_its_sessions_and_its_admin_childrens_summaries_only() {
        let city = replica("city");
        city.write("situation", "k", Some(b"v".to_vec()))
            .await
            .expect("write");
        let own = city.collection("situation").await.expect("meta").vv;
        let origin = own.iter().next().expect("one origin").0.to_string();
        let peers = PeerTable::new();
        for (name, connected) in [("hub", true), ("county", true), ("office", false)] {
            peers.set(PeerStatus {
                name: name.into(),
                connected,
                ..PeerStatus::default()
            });
        }
        peers.note_vectors("county", &[("situation".into(), own.clone())], NOW - 10);
        peers.note_vectors("hub", &[("situation".into(), VersionVector::new())], NOW);
        // The county is an admin: its summary counts. The office is not: its claim is ignored.
        let below = |who: &str| {
            BTreeMap::from([(
                "situation".to_owned(),
                SubtreeSummary {
                    meet: BTreeMap::from([(origin.clone(), 1)]),
                    covers: BTreeMap::from([(who.to_owned(), NOW - 50)]),
                },
            )])
        };
        for (n, who) in [("county", "town-1"), ("office", "town-9")] {
            city.write(STATUS_COLLECTION, n, Some(report(n, below(who))))
                .await
                .expect("write");
        }
        let policy = Policy::open(["hub", "city", "county"]);
        let dials = vec!["hub".to_owned()];
        // The city's summary with the peer table `table`.
        let city_summary = |table: &PeerTable| {
            let (table, snapshot) = (table.clone(), table.snapshot());
            let (city, dials, policy) = (&city, &dials, &policy);
            async move {
                build("city", dials, city, (&table, &snapshot), policy, NOW)
                    .await
                    .expect("built")
            }
        };
        let built = city_summary(&peers).await;
        let s = built.get("situation").expect("a summary");
        assert_eq!(
            s.covers.keys().map(String::as_str).collect::<Vec<_>>(),
            ["city", "county", "town-1"],
            "not the hub above it, not the office's claim: {s:?}"
        );
        assert_eq!(s.covers["county"], NOW, "an open session counts as now");
        assert_eq!(
            s.covers["town-1"], NOW,
            "a child with a session here re-sends what changes: its report counts as current"
        );
        assert_eq!(s.meet, BTreeMap::from([(origin, 1)]));
        // Without the session, the child's report is as old as it is.
        peers.update("county", |p| p.connected = false);
        let built = city_summary(&peers).await;
        assert_eq!(built["situation"].covers["town-1"], NOW - 50);
        // A leaf (no peer dials it) sends none.
        let leaf = PeerTable::new();
        leaf.set(PeerStatus {
            name: "hub".into(),
            connected: true,
            ..PeerStatus::default()
        });
        let built = city_summary(&leaf).await;
        assert!(built.is_empty());
        assert!(trusted_reporter(&policy, "county") && !trusted_reporter(&policy, "office"));
    }
}
