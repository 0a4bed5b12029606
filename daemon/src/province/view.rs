//! The province view: every node's state from the reports this node holds and their arrival
//! times, drawn into a tree (each node under the peer it dials first).
//!
//! Rules, in order (the first that holds is the node's state):
//! * **silent**: its last report arrived here more than three of its report intervals plus
//!   [`SILENT_GRACE_MS`] ago (or none did, for a node its parent lists); while its parent,
//!   itself not silent, says their link is up, its reports may be that much later than its
//!   `unchanged_ms` (it skips reports that would say nothing new). Arrival times are
//!   this node's clock, so an office whose clock is off (up to `max_clock_skew_ms`, far more
//!   than an interval) is not mistaken for silent; a report relayed late is still judged by
//!   when it arrived, and a relay only ever forwards the newest report of each node.
//! * **refusing**: it met bad input (a peer's session closed for it, or refused versions)
//!   within [`REFUSING_WINDOW_MS`] before its last report.
//! * **behind**: it reports its link to its parent down, its copy of its parent's data older
//!   than [`BEHIND_AFTER_MS`], or a lag either way for longer than that.
//! * **fresh** otherwise.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use officesync_api::{ClusterBody, ClusterNode, ReportPeer, StatusReport};

use crate::time::{human_duration, rfc3339_ms};

/// Extra time on top of three report intervals before a node counts as silent: relays and a
/// busy store may delay a report by a second or two.
pub const SILENT_GRACE_MS: u64 = 5_000;
/// A node is behind when its data from its parent is older than this, or when it or its
/// parent has lagged for this long.
pub const BEHIND_AFTER_MS: u64 = 30_000;
/// A node met bad input this recently (before its last report) is refusing.
pub const REFUSING_WINDOW_MS: u64 = 10 * 60_000;

/// A report held here, with when it arrived (this node's clock, Unix ms).
#[derive(Debug, Clone)]
pub struct HeldReport {
    /// The report.
    pub report: StatusReport,
    /// When it arrived here.
    pub received_ms: u64,
}

/// Longest report interval (or unchanged interval) a report is judged by: a day, whatever a
/// node claims.
const MAX_JUDGED_INTERVAL_MS: u64 = 24 * 3_600_000;

/// How long after its last report a node reporting every `interval_ms` counts as silent.
pub fn silent_after_ms(interval_ms: u64) -> u64 {
    interval_ms
        .clamp(1, MAX_JUDGED_INTERVAL_MS)
        .saturating_mul(3)
        .saturating_add(SILENT_GRACE_MS)
}

/// How long after its last report the node of `r` counts as silent: [`silent_after_ms`] of
/// its interval, or, while its parent vouches for its link (`vouched`), its
/// `unchanged_ms` plus two intervals and [`SILENT_GRACE_MS`] when that is longer.
pub fn silent_after_report_ms(r: &StatusReport, vouched: bool) -> u64 {
    let strict = silent_after_ms(r.interval_ms);
    if !vouched {
        return strict;
    }
    let interval = r.interval_ms.clamp(1, MAX_JUDGED_INTERVAL_MS);
    r.unchanged_ms
        .min(MAX_JUDGED_INTERVAL_MS)
        .saturating_add(interval.saturating_mul(2))
        .saturating_add(SILENT_GRACE_MS)
        .max(strict)
}

/// Deepest chain of parents followed when judging silence (a cycle stops there).
const MAX_VOUCH_DEPTH: usize = 64;

/// Whether `name` (held in `reports`) is silent at `now_ms`; memoised in `memo`. Its parent
/// vouches for it when the parent's report lists it as connected and the parent is not
/// silent itself.
fn is_silent(
    name: &str,
    reports: &BTreeMap<String, HeldReport>,
    memo: &mut HashMap<String, bool>,
    now_ms: u64,
    depth: usize,
) -> bool {
    if let Some(s) = memo.get(name) {
        return *s;
    }
    let Some(h) = reports.get(name) else {
        return true;
    };
    let age = now_ms.saturating_sub(h.received_ms);
    let silent = age > silent_after_ms(h.report.interval_ms) && {
        let vouched = depth < MAX_VOUCH_DEPTH
            && h.report.parent.as_ref().is_some_and(|p| {
                reports.get(p).is_some_and(|ph| {
                    ph.report
                        .peers
                        .iter()
                        .any(|x| x.name == name && x.connected)
                }) && !is_silent(p, reports, memo, now_ms, depth + 1)
            });
        age > silent_after_report_ms(&h.report, vouched)
    };
    // Only a complete answer is kept: one cut short by the depth limit may differ.
    if depth == 0 || !silent {
        memo.insert(name.to_owned(), silent);
    }
    silent
}

/// The view of `observer` (its own live report in `held`, arrived now) at `now_ms`: every
/// node in tree order.
pub fn cluster_view(observer: &str, held: Vec<HeldReport>, now_ms: u64) -> ClusterBody {
    let mut reports: BTreeMap<String, HeldReport> = BTreeMap::new();
    for h in held {
        reports.insert(h.report.node.clone(), h);
    }
    // Offices their parents list but that never reported (here): silent, with no time.
    let mut unreported: BTreeMap<String, String> = BTreeMap::new();
    for h in reports.values() {
        for p in h.report.peers.iter().filter(|p| !p.dials) {
            if !reports.contains_key(&p.name) {
                unreported
                    .entry(p.name.clone())
                    .or_insert_with(|| h.report.node.clone());
            }
        }
    }
    let mut nodes: BTreeMap<String, ClusterNode> = BTreeMap::new();
    let mut memo = HashMap::new();
    for (name, h) in &reports {
        let silent = is_silent(name, &reports, &mut memo, now_ms, 0);
        let parent_report = h
            .report
            .parent
            .as_ref()
            .and_then(|p| reports.get(p))
            .map(|p| &p.report);
        nodes.insert(name.clone(), node_of(h, parent_report, silent, now_ms));
    }
    for (name, parent) in unreported {
        nodes.insert(
            name.clone(),
            ClusterNode {
                name: name.clone(),
                parent: Some(parent),
                silent: true,
                state: "silent".to_owned(),
                reason: "no report received".to_owned(),
                ..ClusterNode::default()
            },
        );
    }
    let nodes = tree_order(nodes);
    let mut counts: BTreeMap<String, u64> = officesync_api::NODE_STATES
        .iter()
        .map(|s| ((*s).to_owned(), 0))
        .collect();
    for n in &nodes {
        *counts.entry(n.state.clone()).or_default() += 1;
    }
    ClusterBody {
        node: observer.to_owned(),
        generated_at: rfc3339_ms(now_ms),
        counts,
        nodes,
    }
}

/// The state of one reporting node (`silent` as [`is_silent`] judged it).
fn node_of(
    h: &HeldReport,
    parent: Option<&StatusReport>,
    silent: bool,
    now_ms: u64,
) -> ClusterNode {
    let r = &h.report;
    let age = now_ms.saturating_sub(h.received_ms);
    let up: Option<&ReportPeer> = r
        .parent
        .as_ref()
        .and_then(|p| r.peers.iter().find(|x| &x.name == p));
    // The parent's word on the link, when it has one: it is the side that relays upward.
    let parent_says = parent.and_then(|p| p.peers.iter().find(|x| x.name == r.node));
    let link_up = match (&r.parent, parent_says, up) {
        (None, _, _) => true,
        (Some(_), Some(p), _) => p.connected,
        (Some(_), None, Some(u)) => u.connected,
        (Some(_), None, None) => false,
    };
    let lag = up.map_or(0, |u| u.lag_versions.saturating_add(u.behind_versions));
    let staleness = up.and_then(|u| u.staleness_ms);
    let refusing = r
        .last_bad_input
        .as_ref()
        .and_then(|b| b.at_ms)
        .is_some_and(|at| r.generated_ms.saturating_sub(at) <= REFUSING_WINDOW_MS);
    let lagging_for = up
        .and_then(|u| u.lagging_since_ms)
        .map(|since| r.generated_ms.saturating_sub(since));
    let (state, reason) = if silent {
        (
            "silent",
            format!("last report {} ago", human_duration(age / 1000)),
        )
    } else if refusing {
        let b = r.last_bad_input.as_ref();
        (
            "refusing",
            format!(
                "bad input from {}: {}",
                b.map_or("", |b| b.peer.as_str()),
                b.map_or("", |b| b.what.as_str())
            ),
        )
    } else if let (Some(parent), false) = (&r.parent, up.is_some_and(|u| u.connected)) {
        ("behind", format!("not connected to {parent}"))
    } else if staleness.is_some_and(|s| s > BEHIND_AFTER_MS) {
        (
            "behind",
            format!(
                "data from its parent {} old",
                human_duration(staleness.unwrap_or(0) / 1000)
            ),
        )
    } else if lag > 0 && lagging_for.is_some_and(|f| f > BEHIND_AFTER_MS) {
        (
            "behind",
            format!(
                "{lag} versions behind for {}",
                human_duration(lagging_for.unwrap_or(0) / 1000)
            ),
        )
    } else {
        ("fresh", String::new())
    };
    ClusterNode {
        name: r.node.clone(),
        parent: r.parent.clone(),
        depth: 0,
        connected: link_up && !silent,
        last_report: Some(rfc3339_ms(h.received_ms)),
        last_report_age_ms: Some(age),
        report_generated_at: Some(rfc3339_ms(r.generated_ms)),
        lag_versions: lag,
        staleness_ms: staleness,
        version: r.release.clone(),
        silent,
        state: state.to_owned(),
        reason,
        uptime_secs: r.uptime_secs,
        store_bytes: r.store_bytes,
        refused_versions: r.refused_versions,
        last_bad_input: r.last_bad_input.clone(),
        report_interval_ms: r.interval_ms,
        peers: r.peers.clone(),
    }
}

/// `nodes` in tree order (each after its parent, children by name), with depths; a node whose
/// parent is unknown (or in a cycle) starts a tree of its own.
fn tree_order(mut nodes: BTreeMap<String, ClusterNode>) -> Vec<ClusterNode> {
    let mut children: HashMap<String, Vec<String>> = HashMap::new();
    let mut roots: Vec<String> = Vec::new();
    for (name, n) in &nodes {
        match n.parent.as_ref().filter(|p| nodes.contains_key(*p)) {
            Some(p) => children.entry(p.clone()).or_default().push(name.clone()),
            None => roots.push(name.clone()),
        }
    }
    let mut out = Vec::with_capacity(nodes.len());
    let mut placed: BTreeSet<String> = BTreeSet::new();
    let mut visit = |root: String, out: &mut Vec<ClusterNode>, nodes: &mut BTreeMap<_, _>| {
        let mut stack = vec![(root, 0u32)];
        while let Some((name, depth)) = stack.pop() {
            if !placed.insert(name.clone()) {
                continue;
            }
            let Some(mut n): Option<ClusterNode> = nodes.remove(&name) else {
                continue;
            };
            n.depth = depth;
            out.push(n);
            if let Some(kids) = children.get(&name) {
                // Children are in name order (from the BTreeMap); the stack reverses them.
                for k in kids.iter().rev() {
                    stack.push((k.clone(), depth + 1));
                }
            }
        }
    };
    for root in roots {
        visit(root, &mut out, &mut nodes);
    }
    // What is left sits in a cycle of parents: each starts a tree of its own.
    while let Some(name) = nodes.keys().next().cloned() {
        visit(name, &mut out, &mut nodes);
    }
    out
}

/// Only the nodes that are not fresh, with their ancestors (for where they are); the
/// ancestors stay as they are, fresh ones included.
pub fn not_fresh(nodes: Vec<ClusterNode>) -> Vec<ClusterNode> {
    let mut keep = vec![false; nodes.len()];
    // In tree order, a node's ancestors are the nearest earlier nodes one level up each.
    let mut path: Vec<usize> = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        path.truncate(n.depth as usize);
        if n.state != "fresh" {
            keep[i] = true;
            for a in &path {
                keep[*a] = true;
            }
        }
        path.push(i);
    }
    nodes
        .into_iter()
        .zip(keep)
        .filter_map(|(n, k)| k.then_some(n))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use officesync_api::BadInput;

    const NOW: u64 = 1_700_000_100_000;

    fn report(node: &str, parent: Option<&str>, children: &[&str]) -> StatusReport {
        let mut peers = Vec::new();
        if let Some(p) = parent {
            peers.push(ReportPeer {
                name: p.into(),
                dials: true,
                connected: true,
                staleness_ms: Some(1_000),
                ..ReportPeer::default()
            });
        }
        for c in children {
            peers.push(ReportPeer {
                name: (*c).into(),
                connected: true,
                ..ReportPeer::default()
            });
        }
        StatusReport {
            node: node.into(),
            parent: parent.map(Into::into),
            generated_ms: NOW - 1_000,
            interval_ms: 1_000,
            release: "officesyncd 0.1.0".into(),
            peers,
            ..StatusReport::default()
        }
    }

    fn held(r: StatusReport, age_ms: u64) -> HeldReport {
        HeldReport {
            report: r,
            received_ms: NOW - age_ms,
        }
    }

    fn province() -> Vec<HeldReport> {
        vec![
            held(report("hub", None, &["city"]), 0),
            held(report("city", Some("hub"), &["t1", "t2", "t3"]), 500),
            held(report("t2", Some("city"), &[]), 700),
            held(report("t1", Some("city"), &[]), 700),
        ]
    }

    #[test]
    fn nodes_come_in_tree_order_with_their_states() {
        let mut reports = province();
        // t2 went quiet 20 s ago; t3 never reported; the city says t2 is down.
        reports[2].received_ms = NOW - 20_000;
        if let Some(p) = reports[1].report.peers.iter_mut().find(|p| p.name == "t2") {
            p.connected = false;
        }
        let view = cluster_view("hub", reports, NOW);
        let got: Vec<(&str, u32, &str, bool)> = view
            .nodes
            .iter()
            .map(|n| (n.name.as_str(), n.depth, n.state.as_str(), n.connected))
            .collect();
        assert_eq!(
            got,
            [
                ("hub", 0, "fresh", true),
                ("city", 1, "fresh", true),
                ("t1", 2, "fresh", true),
                ("t2", 2, "silent", false),
                ("t3", 2, "silent", false),
            ]
        );
        assert_eq!(view.counts.get("silent"), Some(&2));
        assert_eq!(view.counts.get("fresh"), Some(&3));
        let t2 = &view.nodes[3];
        assert!(t2.silent);
        assert_eq!(t2.reason, "last report 20s ago");
        assert_eq!(t2.last_report_age_ms, Some(20_000));
        assert_eq!(view.nodes[4].reason, "no report received");
        assert_eq!(view.nodes[4].last_report, None);
    }

    #[test]
    fn silence_is_judged_by_the_report_interval_of_each_node() {
        assert_eq!(silent_after_ms(1_000), 8_000);
        assert_eq!(silent_after_ms(10_000), 35_000);
        let mut reports = province();
        reports[3].received_ms = NOW - 7_900;
        let view = cluster_view("hub", reports, NOW);
        let t1 = view.nodes.iter().find(|n| n.name == "t1").expect("t1");
        assert!(!t1.silent, "{t1:?}");
        assert_eq!(t1.state, "fresh");
    }

    #[test]
    fn a_node_that_skips_unchanged_reports_is_silent_only_when_its_parent_stops_vouching() {
        let quiet = |mut h: HeldReport| {
            h.report.unchanged_ms = 60_000;
            h
        };
        // t1's and the city's last reports are 40 s old: they said nothing new since.
        let mut reports: Vec<HeldReport> = province().into_iter().map(quiet).collect();
        reports[1].received_ms = NOW - 40_000;
        reports[3].received_ms = NOW - 40_000;
        let states = |reports: Vec<HeldReport>| -> Vec<(String, String)> {
            cluster_view("hub", reports, NOW)
                .nodes
                .into_iter()
                .filter(|n| n.name != "t3")
                .map(|n| (n.name, n.state))
                .collect()
        };
        let fresh = |n: &str| (n.to_owned(), "fresh".to_owned());
        let silent = |n: &str| (n.to_owned(), "silent".to_owned());
        assert_eq!(
            states(reports.clone()),
            [fresh("hub"), fresh("city"), fresh("t1"), fresh("t2")]
        );
        // The city says t1's link is down: t1 is judged by its interval again.
        let mut down = reports.clone();
        if let Some(p) = down[1].report.peers.iter_mut().find(|p| p.name == "t1") {
            p.connected = false;
        }
        assert_eq!(
            states(down),
            [fresh("hub"), fresh("city"), silent("t1"), fresh("t2")]
        );
        // The hub no longer vouches for the city: the city is silent, and so is t1, whose
        // parent's word no longer counts; t2 reported lately and stays fresh.
        let mut cut = reports.clone();
        cut[0].report.peers[0].connected = false;
        assert_eq!(
            states(cut),
            [fresh("hub"), silent("city"), silent("t1"), fresh("t2")]
        );
        // Past its unchanged interval plus two intervals and the grace, even a vouched node
        // is silent.
        let mut late = reports;
        late[3].received_ms = NOW - 67_001;
        assert_eq!(
            states(late),
            [fresh("hub"), fresh("city"), silent("t1"), fresh("t2")]
        );
        let r = StatusReport {
            interval_ms: 10_000,
            unchanged_ms: 60_000,
            ..StatusReport::default()
        };
        assert_eq!(silent_after_report_ms(&r, false), 35_000);
        assert_eq!(silent_after_report_ms(&r, true), 85_000);
        // A node claiming it may stay quiet for ever is judged by a day at most.
        let claims = StatusReport {
            unchanged_ms: u64::MAX,
            ..r
        };
        assert_eq!(
            silent_after_report_ms(&claims, true),
            24 * 3_600_000 + 20_000 + SILENT_GRACE_MS
        );
    }

    #[test]
    fn behind_and_refusing_are_told_apart_from_silent() {
        let mut reports = province();
        // t1: its data from the city is 45 s old; t2: refused a version 2 s before reporting.
        reports[3].report.peers[0].staleness_ms = Some(45_000);
        reports[2].report.last_bad_input = Some(BadInput {
            at_ms: Some(NOW - 3_000),
            peer: "city".into(),
            what: "refused 1 versions (invalid 1)".into(),
        });
        let view = cluster_view("hub", reports, NOW);
        let state = |name: &str| {
            let n = view.nodes.iter().find(|n| n.name == name).expect("listed");
            (n.state.clone(), n.reason.clone())
        };
        assert_eq!(
            state("t1"),
            ("behind".into(), "data from its parent 45s old".into())
        );
        assert_eq!(state("t2").0, "refusing");
        assert!(
            state("t2").1.contains("refused 1 versions"),
            "{:?}",
            state("t2")
        );
        let mut disconnected = province();
        disconnected[3].report.peers[0].connected = false;
        let view = cluster_view("hub", disconnected, NOW);
        let t1 = view.nodes.iter().find(|n| n.name == "t1").expect("t1");
        assert_eq!(
            (t1.state.as_str(), t1.reason.as_str()),
            ("behind", "not connected to city")
        );
    }

    #[test]
    fn the_filter_keeps_what_is_not_fresh_and_its_ancestors() {
        let mut reports = province();
        reports[2].received_ms = NOW - 60_000;
        let view = cluster_view("hub", reports, NOW);
        let names: Vec<String> = not_fresh(view.nodes).into_iter().map(|n| n.name).collect();
        assert_eq!(names, ["hub", "city", "t2", "t3"]);
        let all_fresh = cluster_view("hub", vec![held(report("hub", None, &[]), 0)], NOW);
        assert!(not_fresh(all_fresh.nodes).is_empty());
    }

    #[test]
    fn a_cycle_of_parents_does_not_hide_or_repeat_nodes() {
        let reports = vec![
            held(report("a", Some("b"), &[]), 0),
            held(report("b", Some("a"), &[]), 0),
            held(report("c", Some("gone"), &[]), 0),
        ];
        let view = cluster_view("a", reports, NOW);
        let names: BTreeSet<&str> = view.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(view.nodes.len(), 3);
        assert_eq!(names, BTreeSet::from(["a", "b", "c"]));
    }
}
