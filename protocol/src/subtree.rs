//! Subtree summaries: what an admin relay vouches for about the readers below it, so that the
//! general office can compute a collection's stable frontier ([`crate::frontier`]) for readers
//! it has no session with (a township behind a county and a city relay).
//!
//! A relay's summary of a collection is the pointwise minimum ([`meet`]) of its own vector and
//! those of the readers below it that were heard within the TTL, with the names it covers and
//! when each was last heard ([`summarize`]). A reader with a session to the relay counts with
//! the vector the session learnt; a reader further down counts through the summary of the child
//! relay it sits under, whose meet joins the relay's and whose names join its own. Each vector
//! is a lower bound of what its node holds (vectors only rise), so the meet is a lower bound of
//! every covered reader's vector.
//!
//! The general office, for a reader whose vector it does not know, takes the meet of the
//! narrowest fresh summary that covers it ([`choose_cover`]) as that reader's vector: a lower
//! bound, so the frontier stays safe.
//!
//! The meet carries only origins whose counter is above the frontier the relay holds: the
//! frontier never goes down and [`crate::frontier::decide`] raises its result to the previous
//! one, so an origin left out (read as 0) changes nothing.

use std::collections::BTreeMap;

use crate::dot::{ReplicaId, VersionVector};
use crate::frontier::meet;
use crate::names::validate_node_name;

/// Most reader names one collection's summary covers; a relay with more below it leaves the
/// collection out of its summary rather than cut the list (the general office then waits on
/// those readers as before).
pub const MAX_COVERED: usize = 1024;

/// Before a relay knows the TTL (no `_frontier` record yet), a child's report counts while it
/// is at most this many of the child's report intervals old.
pub const STALE_REPORT_INTERVALS: u64 = 3;

/// One collection's summary: a lower bound of the vector of every covered reader.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Pointwise minimum of the covered readers' vectors and the relay's own (origins above
    /// the relay's frontier only).
    pub meet: VersionVector,
    /// Per covered reader, when it was last heard (Unix ms, the relay's clock).
    pub covers: BTreeMap<String, u64>,
}

impl Summary {
    /// The summary of a report's fields (from a peer: entries that are not a replica id or a
    /// node name are dropped, which only lowers the meet or narrows the cover); `None` when it
    /// covers more than [`MAX_COVERED`] names.
    pub fn from_parts<'a>(
        meet: impl IntoIterator<Item = (&'a str, u64)>,
        covers: impl IntoIterator<Item = (&'a str, u64)>,
    ) -> Option<Self> {
        let mut named = BTreeMap::new();
        for (n, t) in covers {
            if validate_node_name(n).is_ok() {
                named.insert(n.to_owned(), t);
                if named.len() > MAX_COVERED {
                    return None;
                }
            }
        }
        let meet = meet
            .into_iter()
            .filter(|(_, c)| *c > 0)
            .filter_map(|(o, c)| Some((o.parse::<ReplicaId>().ok()?, c)))
            .collect();
        Some(Self {
            meet,
            covers: named,
        })
    }
}

/// A reader with a session to the relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectReader<'a> {
    /// Its node name.
    pub node: &'a str,
    /// Its vector of the collection, as the session learnt it.
    pub vv: &'a VersionVector,
    /// When it was last heard (Unix ms; an open session counts as now).
    pub heard_ms: u64,
}

/// A child relay's summary, from the status report the relay holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildSummary<'a> {
    /// When the child made its report (Unix ms, its clock).
    pub generated_ms: u64,
    /// The child's report interval (ms).
    pub interval_ms: u64,
    /// Its summary of the collection.
    pub summary: &'a Summary,
}

/// What a relay summarises one collection from ([`summarize`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SummaryInputs<'a> {
    /// The relay's name (it covers itself).
    pub node: &'a str,
    /// The relay's own vector of the collection.
    pub own: &'a VersionVector,
    /// The frontier the relay holds for the collection (empty when none).
    pub frontier: &'a VersionVector,
    /// Readers of the collection with a session to the relay from below.
    pub direct: &'a [DirectReader<'a>],
    /// Summaries of the collection by the admin relays directly below.
    pub children: &'a [ChildSummary<'a>],
    /// Now (Unix ms).
    pub now_ms: u64,
    /// The TTL of the frontier records the relay holds, when it holds one.
    pub ttl_ms: Option<u64>,
}

/// A relay's summary of one collection (see the module doc): readers and child names heard
/// longer than the TTL ago are left out, as are child reports older than the TTL (or, with no
/// TTL known, than [`STALE_REPORT_INTERVALS`] of their interval); `None` when it would cover
/// more than [`MAX_COVERED`] names.
pub fn summarize(inputs: &SummaryInputs<'_>) -> Option<Summary> {
    let now = inputs.now_ms;
    let fresh = |heard: u64| inputs.ttl_ms.is_none_or(|t| now.saturating_sub(heard) <= t);
    let mut vvs = vec![inputs.own];
    let mut covers: BTreeMap<String, u64> = BTreeMap::new();
    let mut cover = |n: &str, t: u64| {
        let at = covers.entry(n.to_owned()).or_insert(t);
        *at = (*at).max(t);
    };
    cover(inputs.node, now);
    for d in inputs.direct.iter().filter(|d| fresh(d.heard_ms)) {
        vvs.push(d.vv);
        cover(d.node, d.heard_ms);
    }
    for c in inputs.children {
        let max_age = inputs
            .ttl_ms
            .unwrap_or(c.interval_ms.saturating_mul(STALE_REPORT_INTERVALS));
        if now.saturating_sub(c.generated_ms) > max_age {
            continue;
        }
        vvs.push(&c.summary.meet);
        for (n, t) in c.summary.covers.iter().filter(|(_, t)| fresh(**t)) {
            cover(n, *t);
        }
    }
    if covers.len() > MAX_COVERED {
        return None;
    }
    let meet = meet(vvs)
        .unwrap_or_default()
        .iter()
        .filter(|(o, n)| *n > inputs.frontier.get(o))
        .map(|(o, n)| (o.clone(), n))
        .collect();
    Some(Summary { meet, covers })
}

/// A summary as the general office holds it: from an admin's status report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offered<'a> {
    /// The admin that reported it.
    pub reporter: &'a str,
    /// When its report was made (Unix ms, its clock).
    pub generated_ms: u64,
    /// Its summary of the collection.
    pub summary: &'a Summary,
}

/// The vector that stands for `reader` (a lower bound of its own): the meet of the narrowest
/// (fewest names) of `offered` whose report was made within `ttl_ms` of `now_ms` and which
/// covers `reader` heard within `ttl_ms`; ties go to the newest report, then the reporter's
/// name. `None` when no summary does.
pub fn choose_cover<'a>(
    reader: &str,
    offered: &[Offered<'a>],
    now_ms: u64,
    ttl_ms: u64,
) -> Option<&'a VersionVector> {
    let fresh = |t: u64| now_ms.saturating_sub(t) <= ttl_ms;
    offered
        .iter()
        .filter(|o| fresh(o.generated_ms))
        .filter(|o| o.summary.covers.get(reader).is_some_and(|t| fresh(*t)))
        .min_by(|a, b| {
            a.summary
                .covers
                .len()
                .cmp(&b.summary.covers.len())
                .then(b.generated_ms.cmp(&a.generated_ms))
                .then(a.reporter.cmp(b.reporter))
        })
        .map(|o| &o.summary.meet)
}

#[cfg(test)]
mod tests;
