//! Replica ids, dots `(origin, counter)` and per-collection version vectors.
//!
//! Both are cheap to copy: a replica id is a shared string and a vector shares its entries
//! until one side changes them. At a thousand nodes a system collection's vector has an origin
//! per node, and sessions, offers and the writer pass those vectors around per arrival.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::names::{validate_node_name, NameError};

/// The origin of a dot: a node name plus the incarnation chosen when its store was created,
/// written `name@incarnation` (`hefei@1f3a9c02`). A wiped node comes back as a new id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Encode, Decode)]
pub struct ReplicaId(Arc<str>);

impl Serialize for ReplicaId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ReplicaId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(|s| Self(s.into()))
    }
}

/// Why a replica id or dot could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ParseDotError {
    /// The text is not `name@incarnation`.
    #[error("invalid replica id {0:?}: expected name@incarnation")]
    ReplicaId(String),
    /// The node name part is invalid.
    #[error(transparent)]
    Name(#[from] NameError),
    /// The text is not `origin:counter`.
    #[error("invalid version {0:?}: expected origin:counter")]
    Dot(String),
}

impl ReplicaId {
    /// Builds the id of incarnation `incarnation` of node `node`.
    pub fn new(node: &str, incarnation: u32) -> Result<Self, ParseDotError> {
        validate_node_name(node)?;
        Ok(Self(format!("{node}@{incarnation:08x}").into()))
    }

    /// The node name part (`hefei` in `hefei@1f3a9c02`).
    pub fn node_name(&self) -> &str {
        self.0.split_once('@').map_or(&self.0, |(n, _)| n)
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for ReplicaId {
    type Err = ParseDotError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, inc) = s
            .split_once('@')
            .ok_or_else(|| ParseDotError::ReplicaId(s.to_owned()))?;
        validate_node_name(name)?;
        if inc.len() != 8
            || !inc
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        {
            return Err(ParseDotError::ReplicaId(s.to_owned()));
        }
        Ok(Self(s.into()))
    }
}

impl fmt::Display for ReplicaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One write of one key: the replica that made it and that replica's write counter
/// in the collection (counters start at 1 and have no gaps per collection).
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Encode, Decode,
)]
pub struct Dot {
    /// The replica that made the write.
    pub origin: ReplicaId,
    /// Its counter in this collection.
    pub counter: u64,
}

impl Dot {
    /// Builds a dot.
    pub fn new(origin: ReplicaId, counter: u64) -> Self {
        Self { origin, counter }
    }
}

impl fmt::Display for Dot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.origin, self.counter)
    }
}

impl FromStr for Dot {
    type Err = ParseDotError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (origin, counter) = s
            .rsplit_once(':')
            .ok_or_else(|| ParseDotError::Dot(s.to_owned()))?;
        let counter = counter
            .parse()
            .map_err(|_| ParseDotError::Dot(s.to_owned()))?;
        Ok(Self::new(origin.parse()?, counter))
    }
}

/// Per origin, the highest counter covered. As a collection's vector it is what a node has
/// fully received; as a version's causal context it is the set of dots that version supersedes.
///
/// A clone shares the entries (copy on write), and equal clones compare in constant time.
#[derive(Debug, Clone, Default, PartialEq, Eq, Encode, Decode)]
pub struct VersionVector(Arc<BTreeMap<ReplicaId, u64>>);

impl Serialize for VersionVector {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for VersionVector {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        BTreeMap::deserialize(d).map(|m| Self(Arc::new(m)))
    }
}

impl VersionVector {
    /// An empty vector.
    pub fn new() -> Self {
        Self::default()
    }

    /// The counter covered for `origin` (0 when none).
    pub fn get(&self, origin: &ReplicaId) -> u64 {
        self.0.get(origin).copied().unwrap_or(0)
    }

    /// True when `dot` is covered: `dot.counter <= self[dot.origin]`.
    pub fn covers(&self, dot: &Dot) -> bool {
        dot.counter <= self.get(&dot.origin)
    }

    /// Raises the entry of `origin` to `counter` if it is lower.
    pub fn raise(&mut self, origin: &ReplicaId, counter: u64) {
        if counter > self.get(origin) {
            Arc::make_mut(&mut self.0).insert(origin.clone(), counter);
        }
    }

    /// Raises to cover `dot`.
    pub fn add_dot(&mut self, dot: &Dot) {
        self.raise(&dot.origin, dot.counter);
    }

    /// Pointwise maximum with `other`.
    pub fn merge(&mut self, other: &VersionVector) {
        self.merge_grown(other, |_| {});
    }

    /// Pointwise maximum with `other`, calling `grown` with each origin it raised. Costs one
    /// walk of both vectors in origin order, and copies nothing when `other` adds nothing.
    /// When `other` covers this vector entirely (the usual case: a session's copy of the
    /// node's vector, given the node's newer one) the result shares `other`'s entries rather
    /// than copying them, so the sessions of a relay do not each hold a copy of every origin.
    pub fn merge_grown(&mut self, other: &VersionVector, mut grown: impl FnMut(&ReplicaId)) {
        if Arc::ptr_eq(&self.0, &other.0) || other.0.is_empty() {
            return;
        }
        if self.0.is_empty() {
            self.0 = other.0.clone();
            other.0.keys().for_each(&mut grown);
            return;
        }
        let mut raised: Vec<(&ReplicaId, u64)> = Vec::new();
        // Entries of this vector that `other` has at the same counter or higher.
        let mut covered = 0;
        let mut mine = self.0.iter().peekable();
        for (o, &n) in other.0.iter() {
            while mine.next_if(|(m, _)| *m < o).is_some() {}
            let have = match mine.peek() {
                Some((m, &c)) if *m == o => c,
                _ => 0,
            };
            if have > 0 && n >= have {
                covered += 1;
            }
            if n > have {
                raised.push((o, n));
            }
        }
        if raised.is_empty() {
            return;
        }
        if covered == self.0.len() {
            // Every entry of this vector is in `other`, as high or higher: share its entries.
            raised.iter().for_each(|(o, _)| grown(o));
            self.0 = other.0.clone();
            return;
        }
        let map = Arc::make_mut(&mut self.0);
        for (o, n) in raised {
            map.insert(o.clone(), n);
            grown(o);
        }
    }

    /// True when both are clones of one vector, unchanged since (so they are equal): a
    /// constant-time check for "nothing moved".
    pub fn shares(&self, other: &VersionVector) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// True when both are absent, or both are clones of one unchanged vector
    /// ([`Self::shares`]).
    pub fn shares_option(a: Option<&VersionVector>, b: Option<&VersionVector>) -> bool {
        match (a, b) {
            (Some(a), Some(b)) => a.shares(b),
            (None, None) => true,
            _ => false,
        }
    }

    /// Every `(origin, counter)` entry in origin order.
    pub fn iter(&self) -> impl Iterator<Item = (&ReplicaId, u64)> {
        self.0.iter().map(|(o, c)| (o, *c))
    }

    /// Number of origins.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when no origin is covered.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Sum of counters: the number of versions a gapless vector covers (saturating: a
    /// peer's counters may be as large as it likes).
    pub fn total(&self) -> u64 {
        self.0.values().fold(0, |a, b| a.saturating_add(*b))
    }
}

impl FromIterator<(ReplicaId, u64)> for VersionVector {
    fn from_iter<I: IntoIterator<Item = (ReplicaId, u64)>>(iter: I) -> Self {
        let mut map = BTreeMap::new();
        for (o, c) in iter {
            if c > 0 {
                let slot = map.entry(o).or_insert(0);
                *slot = c.max(*slot);
            }
        }
        Self(Arc::new(map))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rid(s: &str) -> ReplicaId {
        ReplicaId::new(s, 7).expect("valid test name")
    }

    #[test]
    fn replica_id_round_trip() {
        let r = rid("hefei");
        assert_eq!(r.as_str(), "hefei@00000007");
        assert_eq!(r.node_name(), "hefei");
        assert_eq!(r.as_str().parse::<ReplicaId>(), Ok(r));
        assert!("hefei".parse::<ReplicaId>().is_err());
        assert!("Hefei@00000007".parse::<ReplicaId>().is_err());
        assert!("hefei@7".parse::<ReplicaId>().is_err());
    }

    #[test]
    fn dot_round_trip() {
        let d = Dot::new(rid("general-office"), 42);
        assert_eq!(d.to_string(), "general-office@00000007:42");
        assert_eq!(d.to_string().parse::<Dot>(), Ok(d));
        assert!("general-office@00000007".parse::<Dot>().is_err());
        assert!("general-office@00000007:x".parse::<Dot>().is_err());
    }

    #[test]
    fn vector_covers_and_merges() {
        let (a, b) = (rid("a"), rid("b"));
        let mut v = VersionVector::new();
        v.raise(&a, 3);
        assert!(v.covers(&Dot::new(a.clone(), 3)));
        assert!(!v.covers(&Dot::new(a.clone(), 4)));
        assert!(!v.covers(&Dot::new(b.clone(), 1)));
        v.raise(&a, 2);
        assert_eq!(v.get(&a), 3);
        let w: VersionVector = [(b.clone(), 5)].into_iter().collect();
        v.merge(&w);
        assert_eq!((v.get(&a), v.get(&b), v.total()), (3, 5, 8));
    }

    #[test]
    fn merge_grown_matches_a_pointwise_maximum_and_names_what_grew() {
        // Every pair of small vectors over four origins: merge_grown agrees with the
        // entry-by-entry maximum, names exactly the origins it raised, and leaves `other`
        // untouched even when the result shares its entries.
        let ids: Vec<ReplicaId> = ["a", "b", "c", "d"].iter().map(|n| rid(n)).collect();
        let vector = |code: u32| -> VersionVector {
            ids.iter()
                .enumerate()
                .map(|(i, o)| (o.clone(), u64::from((code >> (2 * i)) & 3)))
                .collect()
        };
        for x in 0..256 {
            for y in 0..256 {
                let (mut v, w) = (vector(x), vector(y));
                let before = v.clone();
                let mut grown = Vec::new();
                v.merge_grown(&w, |o| grown.push(o.clone()));
                for o in &ids {
                    assert_eq!(v.get(o), before.get(o).max(w.get(o)), "{x} {y} {o}");
                    assert_eq!(grown.contains(o), w.get(o) > before.get(o), "{x} {y} {o}");
                }
                // A vector that `w` covers takes `w`'s entries rather than a copy of them.
                let covered = ids.iter().all(|o| before.get(o) <= w.get(o));
                assert_eq!(v.shares(&w), covered && !grown.is_empty(), "{x} {y} shares");
                assert_eq!(w, vector(y));
                assert_eq!(before, vector(x));
                assert!(v.iter().all(|(_, n)| n > 0));
            }
        }
    }
}
