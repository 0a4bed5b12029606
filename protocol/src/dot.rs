//! Replica ids, dots `(origin, counter)` and per-collection version vectors.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::names::{validate_node_name, NameError};

/// The origin of a dot: a node name plus the incarnation chosen when its store was created,
/// written `name@incarnation` (`hefei@1f3a9c02`). A wiped node comes back as a new id.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Encode, Decode,
)]
#[serde(transparent)]
pub struct ReplicaId(String);

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
        Ok(Self(format!("{node}@{incarnation:08x}")))
    }

    /// The node name part (`hefei` in `hefei@1f3a9c02`).
    pub fn node_name(&self) -> &str {
        self.0.split_once('@').map_or(self.0.as_str(), |(n, _)| n)
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
        Ok(Self(s.to_owned()))
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
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
#[serde(transparent)]
pub struct VersionVector(BTreeMap<ReplicaId, u64>);

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
        if counter == 0 {
            return;
        }
        match self.0.get_mut(origin) {
            Some(c) => *c = (*c).max(counter),
            None => {
                self.0.insert(origin.clone(), counter);
            }
        }
    }

    /// Raises to cover `dot`.
    pub fn add_dot(&mut self, dot: &Dot) {
        self.raise(&dot.origin, dot.counter);
    }

    /// Pointwise maximum with `other`.
    pub fn merge(&mut self, other: &VersionVector) {
        for (o, c) in &other.0 {
            self.raise(o, *c);
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
        let mut vv = Self::new();
        for (o, c) in iter {
            vv.raise(&o, c);
        }
        vv
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
}
