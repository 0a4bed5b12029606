//! Tombstone collection: the **stable frontier** of a collection and the records that carry it.
//!
//! A tombstone may be forgotten once every node that may read its collection holds it. The
//! publishing admin (the general office, with `[storage] tombstone_ttl_ms` set) takes, per
//! collection, the pointwise minimum of the version vectors of every reader it knows
//! ([`meet`]), never lower than the frontier it published before ([`VersionVector::merge`]),
//! and writes it into the admin-only system collection [`FRONTIER_COLLECTION`] under the
//! collection's name. Like `_policy` it replicates as data and is signed by its origin, so an
//! office can neither forge nor alter it. A reader it has no session with (behind relays)
//! counts with the meet of a relay's subtree summary that covers it ([`crate::subtree`]), a
//! lower bound of its vector; the record carries the TTL ([`FrontierRecord::ttl_ms`]) that
//! relays judge their readers' freshness with.
//!
//! Every node holding a frontier `F` for collection `c` whose own vector covers `F`
//! ([`covers_all`]):
//! - **purges** each key whose only version is a tombstone with a dot `<= F` (with its
//!   history), taking it out of the digest and the hash tree: every reader does the same, so
//!   digests converge again;
//! - **drops** any received version with a dot `<= F` that it does not hold although its own
//!   vector covers it ([`is_obsolete`]): it held it once and superseded or purged it.
//!
//! **Late return.** A reader not heard from for longer than the TTL is left out of the
//! minimum (it would block every purge). The publisher then owes it a rejoin: it writes
//! [`rejoin_key`]`(node, c)` with the frontier it published while the node was away. The node,
//! when that record reaches it (whatever it holds by then), drops every version of `c` with a
//! dot `<= F` — any of them may be superseded by a tombstone purged meanwhile — and keeps the
//! rest (its own newer writes included). Its vector stays as it is, so what it dropped and is
//! still live comes back by digest repair, which it accepts for dots `<= F` of that rejoin.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::dot::{Dot, ReplicaId, VersionVector};

/// The admin-only system collection of frontiers: key = collection name (a [`FrontierRecord`]),
/// or [`rejoin_key`] for a node owed a rejoin.
pub const FRONTIER_COLLECTION: &str = "_frontier";

/// Key prefix of the rejoin records in [`FRONTIER_COLLECTION`].
pub const REJOIN_PREFIX: &str = "rejoin/";

/// Largest frontier record read (a vector of a few hundred origins fits many times over).
pub const MAX_FRONTIER_BYTES: usize = 256 * 1024;

/// The value of a frontier (or rejoin) record, JSON.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrontierRecord {
    /// Per origin, the counter every counted reader holds.
    pub frontier: VersionVector,
    /// When the publisher computed it (its clock, Unix ms).
    pub computed_ms: u64,
    /// Readers left out as away longer than the TTL (names), for the log and status.
    #[serde(default)]
    pub excluded: Vec<String>,
    /// The publisher's `tombstone_ttl_ms`: relays judge with it which readers below them are
    /// fresh ([`crate::subtree`]). Absent in records of earlier releases.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
}

/// Why a frontier record cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrontierError {
    /// Larger than [`MAX_FRONTIER_BYTES`].
    #[error("frontier record of {0} bytes is larger than {MAX_FRONTIER_BYTES}")]
    TooLarge(usize),
    /// Not the JSON of a [`FrontierRecord`].
    #[error("frontier record is not valid: {0}")]
    Invalid(String),
}

impl FrontierRecord {
    /// The record's JSON.
    pub fn encode(&self) -> Vec<u8> {
        // Invariant: a struct of plain maps, numbers and strings always serialises.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads a record (from a peer: bounded, never panics).
    pub fn decode(bytes: &[u8]) -> Result<Self, FrontierError> {
        if bytes.len() > MAX_FRONTIER_BYTES {
            return Err(FrontierError::TooLarge(bytes.len()));
        }
        serde_json::from_slice(bytes).map_err(|e| FrontierError::Invalid(e.to_string()))
    }
}

/// The key of the rejoin record of `node` for `collection`.
pub fn rejoin_key(node: &str, collection: &str) -> String {
    format!("{REJOIN_PREFIX}{node}/{collection}")
}

/// The node and collection of a rejoin key, if `key` is one.
pub fn parse_rejoin_key(key: &str) -> Option<(&str, &str)> {
    let rest = key.strip_prefix(REJOIN_PREFIX)?;
    let (node, coll) = rest.split_once('/')?;
    (!node.is_empty() && !coll.is_empty()).then_some((node, coll))
}

/// Pointwise minimum of `vvs` (an origin missing from one of them counts 0, so it is left
/// out); `None` for no vector at all.
pub fn meet<'a>(vvs: impl IntoIterator<Item = &'a VersionVector>) -> Option<VersionVector> {
    let mut it = vvs.into_iter();
    let first = it.next()?;
    let mut min: BTreeMap<ReplicaId, u64> = first.iter().map(|(o, n)| (o.clone(), n)).collect();
    for vv in it {
        min.retain(|o, n| {
            *n = (*n).min(vv.get(o));
            *n > 0
        });
    }
    Some(min.into_iter().collect())
}

/// True when `vv` covers every entry of `frontier`.
pub fn covers_all(vv: &VersionVector, frontier: &VersionVector) -> bool {
    frontier.iter().all(|(o, n)| vv.get(o) >= n)
}

/// True when a received version with `dot` is obsolete at a node with vector `vv` and
/// frontier `frontier`: covered by both, and not among the versions `held` of its key (the
/// node held it once, and superseded or purged it).
pub fn is_obsolete(
    frontier: &VersionVector,
    vv: &VersionVector,
    dot: &Dot,
    mut held: impl Iterator<Item = Dot>,
) -> bool {
    frontier.covers(dot) && vv.covers(dot) && !held.any(|d| d == *dot)
}

/// One node that may read a collection, as the publisher knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reader<'a> {
    /// Its node name.
    pub node: &'a str,
    /// Its vector of the collection, when a session told it.
    pub vv: Option<&'a VersionVector>,
    /// When it was last heard from (Unix ms; an open session counts as now).
    pub heard_ms: u64,
}

/// What the publisher does for one collection in one round ([`decide`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// A reader heard from within the TTL has no known vector: no frontier this round.
    Blocked(String),
    /// The frontier (never below the previous one), the readers left out as away longer
    /// than the TTL, and those of them owed a rejoin (the frontier passes what they were
    /// last known to hold).
    Frontier {
        /// The new frontier.
        frontier: VersionVector,
        /// Readers left out.
        excluded: Vec<String>,
        /// Readers left out that must rejoin.
        owed: Vec<String>,
    },
}

/// The publisher's rule for one collection: the pointwise minimum of its own vector `own` and
/// those of `readers`, raised to `previous`; a reader not heard from for more than `ttl_ms`
/// at `now_ms` is left out (owed a rejoin when the frontier passes its last known vector), a
/// reader heard from with no known vector blocks.
pub fn decide(
    own: &VersionVector,
    readers: &[Reader<'_>],
    previous: &VersionVector,
    now_ms: u64,
    ttl_ms: u64,
) -> Decision {
    let mut included = vec![own];
    let mut excluded = Vec::new();
    for r in readers {
        if now_ms.saturating_sub(r.heard_ms) > ttl_ms {
            excluded.push(r);
            continue;
        }
        match r.vv {
            Some(vv) => included.push(vv),
            None => return Decision::Blocked(r.node.to_owned()),
        }
    }
    let mut frontier = meet(included).unwrap_or_default();
    frontier.merge(previous);
    let empty = VersionVector::new();
    let owed = excluded
        .iter()
        .filter(|r| !covers_all(r.vv.unwrap_or(&empty), &frontier))
        .map(|r| r.node.to_owned())
        .collect();
    Decision::Frontier {
        frontier,
        excluded: excluded.iter().map(|r| r.node.to_owned()).collect(),
        owed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rid(s: &str) -> ReplicaId {
        ReplicaId::new(s, 1).expect("valid test name")
    }

    fn vv(entries: &[(&str, u64)]) -> VersionVector {
        entries.iter().map(|(o, n)| (rid(o), *n)).collect()
    }

    #[test]
    fn meet_is_the_pointwise_minimum_and_drops_origins_one_reader_lacks() {
        let a = vv(&[("hefei", 5), ("beijing", 3), ("hub", 9)]);
        let b = vv(&[("hefei", 7), ("beijing", 1)]);
        assert_eq!(meet([&a, &b]), Some(vv(&[("hefei", 5), ("beijing", 1)])));
        assert_eq!(meet([&a]), Some(a.clone()));
        assert_eq!(meet(std::iter::empty()), None);
        assert!(covers_all(&a, &vv(&[("hefei", 5)])));
        assert!(!covers_all(&b, &vv(&[("hub", 1)])));
        assert!(covers_all(&b, &VersionVector::new()));
    }

    #[test]
    fn obsolete_needs_frontier_and_vector_cover_and_not_held() {
        let f = vv(&[("hefei", 5)]);
        let held = vv(&[("hefei", 9)]);
        let d = Dot::new(rid("hefei"), 4);
        assert!(is_obsolete(&f, &held, &d, std::iter::empty()));
        assert!(!is_obsolete(&f, &held, &d, [d.clone()].into_iter()));
        assert!(!is_obsolete(
            &f,
            &held,
            &Dot::new(rid("hefei"), 6),
            std::iter::empty()
        ));
        // A node whose vector does not cover the dot lacks it: it is news, not obsolete.
        assert!(!is_obsolete(
            &f,
            &vv(&[("hefei", 3)]),
            &d,
            std::iter::empty()
        ));
    }

    #[test]
    fn decide_blocks_on_unknown_readers_leaves_out_the_long_away_and_never_goes_down() {
        let own = vv(&[("hefei", 9), ("hub", 4)]);
        let a = vv(&[("hefei", 7), ("hub", 4)]);
        let reader = |node, vv, heard_ms| Reader { node, vv, heard_ms };
        // Everyone heard lately: the minimum.
        let d = decide(
            &own,
            &[reader("a", Some(&a), 990)],
            &VersionVector::new(),
            1000,
            100,
        );
        let expect = Decision::Frontier {
            frontier: a.clone(),
            excluded: vec![],
            owed: vec![],
        };
        assert_eq!(d, expect);
        // A reader heard lately whose vector is unknown holds it back.
        let d = decide(
            &own,
            &[reader("a", Some(&a), 990), reader("b", None, 950)],
            &a,
            1000,
            100,
        );
        assert_eq!(d, Decision::Blocked("b".into()));
        // Away longer than the TTL: left out, and owed a rejoin once the frontier passes it.
        let old = vv(&[("hefei", 3)]);
        let d = decide(
            &own,
            &[reader("a", Some(&a), 990), reader("b", Some(&old), 10)],
            &a,
            1000,
            100,
        );
        let expect = Decision::Frontier {
            frontier: a.clone(),
            excluded: vec!["b".into()],
            owed: vec!["b".into()],
        };
        assert_eq!(d, expect);
        let d = decide(
            &own,
            &[reader("b", None, 10)],
            &VersionVector::new(),
            1000,
            100,
        );
        assert!(matches!(d, Decision::Frontier { ref owed, .. } if owed == &["b".to_owned()]));
        // Left out but holding everything: nothing to rejoin.
        let d = decide(
            &own,
            &[reader("b", Some(&own), 10)],
            &VersionVector::new(),
            1000,
            100,
        );
        assert!(matches!(d, Decision::Frontier { ref owed, .. } if owed.is_empty()));
        // A returning reader with an old vector never lowers the frontier.
        let d = decide(&own, &[reader("b", Some(&old), 999)], &a, 1000, 100);
        assert!(matches!(d, Decision::Frontier { ref frontier, .. } if *frontier == a));
    }

    #[test]
    fn records_round_trip_and_bad_input_is_an_error() {
        let r = FrontierRecord {
            frontier: vv(&[("hefei", 5)]),
            computed_ms: 42,
            excluded: vec!["beijing-office".into()],
            ttl_ms: Some(3_000),
        };
        assert_eq!(FrontierRecord::decode(&r.encode()), Ok(r));
        // A record of an earlier release has no TTL.
        let old = FrontierRecord::decode(br#"{"frontier":{},"computed_ms":1}"#).expect("old");
        assert_eq!(old.ttl_ms, None);
        assert!(FrontierRecord::decode(b"{not json").is_err());
        assert!(FrontierRecord::decode(&vec![b' '; MAX_FRONTIER_BYTES + 1]).is_err());
        assert_eq!(
            parse_rejoin_key(&rejoin_key("hefei", "situation")),
            Some(("hefei", "situation"))
        );
        assert_eq!(parse_rejoin_key("situation"), None);
        assert_eq!(parse_rejoin_key("rejoin/x"), None);
    }
}
