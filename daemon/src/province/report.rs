//! This node's status report ([`StatusReport`]): built from the peer table, the config and the
//! store's size, and the watch that notices new bad input from peers between two looks.

use std::collections::{BTreeMap, HashMap};

use officesync_api::{
    BadInput, PeerStatus, ReportCollection, ReportPeer, StatusReport, SubtreeSummary,
};
use officesync_protocol::status::{MAX_STATUS_VALUE_BYTES, STATUS_COLLECTION};

use crate::time::parse_rfc3339_ms;

/// Most peers a report lists (a general office without relays may have many offices).
pub const MAX_REPORT_PEERS: usize = 1024;
/// Most collections listed per peer.
const MAX_REPORT_COLLECTIONS: usize = 32;

/// What a report is made of, besides the peer table.
#[derive(Debug, Clone)]
pub struct ReportInputs<'a> {
    /// This node.
    pub node: &'a str,
    /// The peers it dials (`sync.peers`), in config order: the first is its parent.
    pub dials: &'a [String],
    /// `status.report_interval_ms`.
    pub interval_ms: u64,
    /// `status.unchanged_report_ms` as in force (never below the interval).
    pub unchanged_ms: u64,
    /// Seconds since the daemon started.
    pub uptime_secs: u64,
    /// The store's size on disk.
    pub store_bytes: u64,
    /// The last bad input met, if any.
    pub last_bad_input: Option<BadInput>,
    /// Now, Unix ms.
    pub now_ms: u64,
    /// An admin relay's summary of the readers below it ([`super::subtree`]); empty for a leaf.
    pub subtree: BTreeMap<String, SubtreeSummary>,
}

/// The report of `inputs` and `peers` (a peer-table snapshot with staleness computed).
pub fn build_report(inputs: &ReportInputs<'_>, peers: &[PeerStatus]) -> StatusReport {
    let mut listed: Vec<ReportPeer> = Vec::new();
    // The peers it dials first (its way up), then the others in name order.
    let dialled = |name: &str| inputs.dials.iter().any(|d| d == name);
    for name in inputs.dials {
        let entry = match peers.iter().find(|p| &p.name == name) {
            Some(p) => report_peer(p, true),
            None => ReportPeer {
                name: name.clone(),
                dials: true,
                ..ReportPeer::default()
            },
        };
        listed.push(entry);
    }
    listed.extend(
        peers
            .iter()
            .filter(|p| !dialled(&p.name))
            .take(MAX_REPORT_PEERS.saturating_sub(listed.len()))
            .map(|p| report_peer(p, false)),
    );
    let mut report = StatusReport {
        node: inputs.node.to_owned(),
        parent: inputs.dials.first().cloned(),
        generated_ms: inputs.now_ms,
        interval_ms: inputs.interval_ms,
        unchanged_ms: inputs.unchanged_ms,
        release: crate::RELEASE.to_owned(),
        uptime_secs: inputs.uptime_secs,
        store_bytes: inputs.store_bytes,
        peers: listed,
        refused_versions: peers
            .iter()
            .map(|p| p.rejected)
            .fold(0, u64::saturating_add),
        last_bad_input: inputs.last_bad_input.clone(),
        subtree: inputs.subtree.clone(),
    };
    // A report must stay within what receivers accept: shed per-collection detail if not,
    // then the subtree summaries covering the most names (the general office waits on those
    // readers instead).
    if encode(&report).len() > MAX_STATUS_VALUE_BYTES {
        for p in &mut report.peers {
            p.collections.clear();
        }
    }
    while encode(&report).len() > MAX_STATUS_VALUE_BYTES {
        let Some(widest) = report
            .subtree
            .iter()
            .max_by_key(|(_, s)| s.covers.len() + s.meet.len())
            .map(|(c, _)| c.clone())
        else {
            break;
        };
        report.subtree.remove(&widest);
        tracing::debug!(collection = %widest, "subtree summary left out: the report is too large");
    }
    report
}

/// The report as stored in `_status`: compact JSON.
pub fn encode(report: &StatusReport) -> Vec<u8> {
    // Serialising a struct of strings and numbers into memory cannot fail.
    serde_json::to_vec(report).unwrap_or_default()
}

/// Staleness below this reads as "current" when two reports are compared ([`says_the_same`]):
/// an idle peer's data-as-of time moves with every heartbeat.
pub const CURRENT_STALENESS_MS: u64 = 10_000;

/// True when `new` tells an admin nothing that `old` did not: the same parent, peers, links,
/// lags and since-when, bad input and refusals, subtree names and meets, the same staleness
/// where either is above [`CURRENT_STALENESS_MS`], and a store size within a tenth. Its time,
/// uptime and when subtree readers were heard do not count.
pub fn says_the_same(old: &StatusReport, new: &StatusReport) -> bool {
    let same_size =
        old.store_bytes.abs_diff(new.store_bytes) <= old.store_bytes.max(new.store_bytes) / 10;
    same_size && comparable(old) == comparable(new)
}

/// `r` without what moves on its own while nothing happens (see [`says_the_same`]).
fn comparable(r: &StatusReport) -> StatusReport {
    let current = |s: Option<u64>| s.map(|s| if s < CURRENT_STALENESS_MS { 0 } else { s });
    let mut r = r.clone();
    r.generated_ms = 0;
    r.uptime_secs = 0;
    r.store_bytes = 0;
    // A relay's summaries: when each reader was heard moves with every report; the names
    // and the meets are what is news (the general office counts a reader current while the
    // view does not count it silent).
    for summary in r.subtree.values_mut() {
        for at in summary.covers.values_mut() {
            *at = 0;
        }
    }
    for p in &mut r.peers {
        p.staleness_ms = current(p.staleness_ms);
        for c in &mut p.collections {
            c.staleness_ms = current(c.staleness_ms);
        }
    }
    r
}

/// One peer of the report.
fn report_peer(p: &PeerStatus, dials: bool) -> ReportPeer {
    let since = [p.lag_since.as_deref(), p.behind_since.as_deref()]
        .into_iter()
        .flatten()
        .filter_map(parse_rfc3339_ms)
        .min();
    let collections: Vec<ReportCollection> = p
        .collections
        .iter()
        .filter(|c| c.collection != STATUS_COLLECTION)
        .take(MAX_REPORT_COLLECTIONS)
        .map(|c| ReportCollection {
            collection: c.collection.clone(),
            lag_versions: c.lag_versions,
            behind_versions: c.behind_versions,
            staleness_ms: c.staleness_ms,
        })
        .collect();
    ReportPeer {
        name: p.name.clone(),
        dials,
        // A session whose peer went quiet is as good as down for the province view.
        connected: p.connected && p.silent_ms.is_none(),
        lag_versions: p.lag_versions,
        behind_versions: p.behind_versions,
        lagging_since_ms: since,
        staleness_ms: collections.iter().filter_map(|c| c.staleness_ms).max(),
        collections,
    }
}

/// Notices new bad input from peers: sessions closed for bad input, refused versions.
#[derive(Debug, Default)]
pub struct BadInputWatch {
    seen: HashMap<String, (u64, u64)>,
    last: Option<BadInput>,
}

impl BadInputWatch {
    /// Looks at `peers` at `now_ms`: a peer whose bad-input or refusal count grew since the
    /// last look becomes the last bad input.
    pub fn handle_peers(&mut self, peers: &[PeerStatus], now_ms: u64) {
        for p in peers {
            let now = (p.bad_input, p.rejected);
            let before = self.seen.insert(p.name.clone(), now).unwrap_or((0, 0));
            if now.0 > before.0 {
                self.last = Some(BadInput {
                    at_ms: Some(now_ms),
                    peer: p.name.clone(),
                    what: p
                        .last_bad_input
                        .clone()
                        .unwrap_or_else(|| "bad input".to_owned()),
                });
            } else if now.1 > before.1 {
                let reasons: Vec<String> = p
                    .rejected_by_reason
                    .iter()
                    .map(|(r, n)| format!("{r} {n}"))
                    .collect();
                self.last = Some(BadInput {
                    at_ms: Some(now_ms),
                    peer: p.name.clone(),
                    what: format!(
                        "refused {} versions ({})",
                        now.1 - before.1,
                        reasons.join(", ")
                    ),
                });
            }
        }
    }

    /// The last bad input noticed.
    pub fn last(&self) -> Option<&BadInput> {
        self.last.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use officesync_api::PeerCollectionStatus;

    /// The inputs of a report by `node` dialing `dials`, 5 s after its start at 50 s, every
    /// 10 s and at least every minute, with nothing else to tell.
    fn inputs<'a>(node: &'a str, dials: &'a [String]) -> ReportInputs<'a> {
        ReportInputs {
            node,
            dials,
            interval_ms: 10_000,
            unchanged_ms: 60_000,
            uptime_secs: 5,
            store_bytes: 0,
            last_bad_input: None,
            now_ms: 50_000,
            subtree: BTreeMap::new(),
        }
    }

    fn peer(name: &str, connected: bool) -> PeerStatus {
        PeerStatus {
            name: name.into(),
            connected,
            lag_versions: 2,
            lag_since: Some(crate::time::rfc3339_ms(1_000)),
            collections: vec![
                PeerCollectionStatus {
                    collection: "situation".into(),
                    lag_versions: 2,
                    staleness_ms: Some(4_000),
                    ..PeerCollectionStatus::default()
                },
                PeerCollectionStatus {
                    collection: STATUS_COLLECTION.into(),
                    staleness_ms: Some(99_000),
                    ..PeerCollectionStatus::default()
                },
            ],
            ..PeerStatus::default()
        }
    }

    #[test]
    fn a_report_names_the_parent_first_and_every_peer() {
        let dials = vec!["county-a".to_owned(), "city-a".to_owned()];
        let inputs = ReportInputs {
            store_bytes: 1234,
            ..inputs("t1", &dials)
        };
        let report = build_report(&inputs, &[peer("county-a", true), peer("t9", false)]);
        assert_eq!(report.parent.as_deref(), Some("county-a"));
        let names: Vec<(&str, bool, bool)> = report
            .peers
            .iter()
            .map(|p| (p.name.as_str(), p.dials, p.connected))
            .collect();
        assert_eq!(
            names,
            [
                ("county-a", true, true),
                ("city-a", true, false),
                ("t9", false, false)
            ]
        );
        let up = &report.peers[0];
        assert_eq!(up.lagging_since_ms, Some(1_000));
        assert_eq!(up.staleness_ms, Some(4_000), "_status is not data");
        assert_eq!(up.collections.len(), 1);
        let back: StatusReport = serde_json::from_slice(&encode(&report)).expect("json");
        assert_eq!(back, report);
    }

    #[test]
    fn a_report_that_says_nothing_new_is_told_apart_from_one_that_does() {
        let dials = vec!["county-a".to_owned()];
        let inputs = ReportInputs {
            store_bytes: 100_000,
            ..inputs("t1", &dials)
        };
        let first = build_report(&inputs, &[peer("county-a", true)]);
        // Later, a little larger, data a few seconds old: nothing new.
        let mut idle = peer("county-a", true);
        idle.collections[0].staleness_ms = Some(9_000);
        let later = ReportInputs {
            uptime_secs: 65,
            store_bytes: 104_000,
            now_ms: 110_000,
            ..inputs.clone()
        };
        let second = build_report(&later, std::slice::from_ref(&idle));
        assert_ne!(first, second);
        assert!(says_the_same(&first, &second));
        // Each of these is news.
        let mut stale = idle.clone();
        stale.collections[0].staleness_ms = Some(12_000);
        let mut lagging = idle.clone();
        lagging.lag_versions = 3;
        let down = peer("county-a", false);
        for p in [stale, lagging, down] {
            assert!(
                !says_the_same(&first, &build_report(&later, std::slice::from_ref(&p))),
                "{p:?}"
            );
        }
        let grown = ReportInputs {
            store_bytes: 120_000,
            ..later.clone()
        };
        assert!(!says_the_same(
            &first,
            &build_report(&grown, &[idle.clone()])
        ));
        let bad = ReportInputs {
            last_bad_input: Some(BadInput {
                at_ms: Some(100_000),
                peer: "county-a".into(),
                what: "frame: too large".into(),
            }),
            ..later.clone()
        };
        assert!(!says_the_same(
            &first,
            &build_report(&bad, std::slice::from_ref(&idle))
        ));
        // A relay's summary: when its readers were heard moves on its own; names and meets
        // are news.
        let summary = |heard: u64, counter: u64, names: &[&str]| {
            BTreeMap::from([(
                "situation".to_owned(),
                SubtreeSummary {
                    meet: BTreeMap::from([("t9@0000000a".to_owned(), counter)]),
                    covers: names.iter().map(|n| ((*n).to_owned(), heard)).collect(),
                },
            )])
        };
        let relay = |subtree| {
            build_report(
                &ReportInputs {
                    subtree,
                    ..later.clone()
                },
                std::slice::from_ref(&idle),
            )
        };
        let base = relay(summary(100_000, 4, &["t1", "t9"]));
        assert!(says_the_same(
            &base,
            &relay(summary(160_000, 4, &["t1", "t9"]))
        ));
        assert!(!says_the_same(
            &base,
            &relay(summary(100_000, 5, &["t1", "t9"]))
        ));
        assert!(!says_the_same(&base, &relay(summary(100_000, 4, &["t1"]))));
    }

    #[test]
    fn an_oversized_report_sheds_the_widest_subtree_summaries_to_fit() {
        let covers: BTreeMap<String, u64> = (0..1024)
            .map(|i| (format!("town-{i:04}"), 1_800_000_000_000 + i))
            .collect();
        let meet = BTreeMap::from([("county-a@0000000a".to_owned(), 42)]);
        let subtree: BTreeMap<String, SubtreeSummary> = (0..12)
            .map(|c| {
                let covers = covers.iter().take(1000 + c).map(|(n, t)| (n.clone(), *t));
                (
                    format!("coll-{c:02}"),
                    SubtreeSummary {
                        meet: meet.clone(),
                        covers: covers.collect(),
                    },
                )
            })
            .collect();
        let dials = vec!["city-a".to_owned()];
        let inputs = ReportInputs {
            unchanged_ms: 10_000,
            store_bytes: 1,
            subtree: subtree.clone(),
            ..inputs("county-a", &dials)
        };
        let report = build_report(&inputs, &[peer("city-a", true)]);
        let size = encode(&report).len();
        assert!(size <= MAX_STATUS_VALUE_BYTES, "{size}");
        assert!(!report.subtree.is_empty() && report.subtree.len() < subtree.len());
        // The narrowest are kept.
        assert!(report.subtree.contains_key("coll-00"));
        assert!(!report.subtree.contains_key("coll-11"));
        let small = build_report(
            &ReportInputs {
                subtree: subtree.into_iter().take(2).collect(),
                ..inputs
            },
            &[peer("city-a", true)],
        );
        assert_eq!(small.subtree.len(), 2);
        assert_eq!(
            small.peers[0].collections.len(),
            1,
            "detail kept when it fits"
        );
    }

    #[test]
    fn new_bad_input_and_refusals_are_noticed_once() {
        let mut watch = BadInputWatch::default();
        let mut p = peer("hefei", true);
        watch.handle_peers(std::slice::from_ref(&p), 1);
        assert_eq!(watch.last(), None);
        p.rejected = 3;
        p.rejected_by_reason.insert("invalid".into(), 3);
        watch.handle_peers(std::slice::from_ref(&p), 2);
        let last = watch.last().expect("noticed").clone();
        assert_eq!((last.at_ms, last.peer.as_str()), (Some(2), "hefei"));
        assert!(
            last.what.contains("refused 3 versions (invalid 3)"),
            "{last:?}"
        );
        watch.handle_peers(std::slice::from_ref(&p), 3);
        assert_eq!(watch.last().and_then(|b| b.at_ms), Some(2));
        p.bad_input = 1;
        p.last_bad_input = Some("frame: too large".into());
        watch.handle_peers(std::slice::from_ref(&p), 4);
        assert_eq!(
            watch.last().map(|b| b.what.as_str()),
            Some("frame: too large")
        );
    }
}
