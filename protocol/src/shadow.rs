//! Shadow versions: versions superseded by local writes that are not durable yet, which a
//! Load must still serve.
//!
//! Only durable vectors are offered to peers, but a Load reads the applied state. A load skips
//! superseded versions (their superseder goes out in its own origin's stream) while its
//! "complete through" still covers them. If a crash then loses the superseding write, the old
//! version comes back in the store but the peer's vector already covers it: the peer would lack
//! it for good. So until the flush that makes the superseding write durable, the versions it
//! superseded stay in a [`Shadow`] and every Load answer merges them back in
//! ([`Shadow::merge_load`]), within the Load's limits.

use std::collections::BTreeMap;

use crate::dot::{Dot, ReplicaId};
use crate::version::Version;

/// The bytes a version counts for against a Load's `max_bytes`: its value and its key.
pub fn load_size(v: &Version) -> usize {
    v.value.as_ref().map_or(0, Vec::len) + v.key.len()
}

/// Versions superseded by local writes that are not durable yet, each tagged with the
/// generation (group of writes) that superseded it. Sans-IO: the caller says when a
/// generation becomes durable ([`Shadow::forget_through`]) or everything unflushed is lost
/// ([`Shadow::clear`]).
#[derive(Debug, Clone, Default)]
pub struct Shadow {
    /// Per collection, by dot: the superseding generation and the version.
    versions: BTreeMap<String, BTreeMap<Dot, (u64, Version)>>,
}

impl Shadow {
    /// An empty shadow.
    pub fn new() -> Self {
        Self::default()
    }

    /// Keeps `superseded`, superseded by the writes of `generation`.
    pub fn add(&mut self, generation: u64, superseded: impl IntoIterator<Item = Version>) {
        for v in superseded {
            self.versions
                .entry(v.collection.clone())
                .or_default()
                .insert(v.dot.clone(), (generation, v));
        }
    }

    /// Forgets what the generations up to `generation` superseded: those writes are durable.
    pub fn forget_through(&mut self, generation: u64) {
        for c in self.versions.values_mut() {
            c.retain(|_, (g, _)| *g > generation);
        }
        self.versions.retain(|_, c| !c.is_empty());
    }

    /// Forgets everything: every write is durable (a flush), or every unflushed write is lost
    /// (a crash), which brings the superseded versions back.
    pub fn clear(&mut self) {
        self.versions.clear();
    }

    /// Number of versions kept.
    pub fn len(&self) -> usize {
        self.versions.values().map(BTreeMap::len).sum()
    }

    /// True when nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.versions.is_empty()
    }

    /// Kept versions of `origin` in `collection` with `after < counter <= through`, in counter
    /// order.
    pub fn select<'a>(
        &'a self,
        collection: &str,
        origin: &ReplicaId,
        after: u64,
        through: u64,
    ) -> impl Iterator<Item = &'a Version> + 'a {
        let range = (through > after).then(|| {
            Dot::new(origin.clone(), after.saturating_add(1))..=Dot::new(origin.clone(), through)
        });
        self.versions
            .get(collection)
            .into_iter()
            .zip(range)
            .flat_map(|(c, r)| c.range(r))
            .map(|(_, (_, v))| v)
    }

    /// Completes the answer to a Load of `origin` in `collection` after `after`: `loaded`
    /// (live versions in counter order) covered every counter up to `scanned`. Adds the kept
    /// versions of that range not already loaded and keeps the Load's limits: at most
    /// `max_versions` and about `max_bytes` ([`load_size`]), at least one version. When the
    /// kept versions push it past a limit, the answer is cut after the version that reaches
    /// it and `scanned` becomes that version's counter. Returns the versions in counter order
    /// and the counter scanned.
    #[allow(clippy::too_many_arguments)]
    pub fn merge_load(
        &self,
        collection: &str,
        origin: &ReplicaId,
        after: u64,
        loaded: Vec<Version>,
        scanned: u64,
        max_versions: usize,
        max_bytes: usize,
    ) -> (Vec<Version>, u64) {
        let shadowed: Vec<Version> = self
            .select(collection, origin, after, scanned)
            .filter(|v| !loaded.iter().any(|x| x.dot == v.dot))
            .cloned()
            .collect();
        if shadowed.is_empty() {
            return (loaded, scanned);
        }
        let mut all = loaded;
        all.extend(shadowed);
        all.sort_by_key(|v| v.dot.counter);
        let mut out = Vec::with_capacity(all.len().min(max_versions.max(1)));
        let mut bytes = 0;
        let last = all.len();
        for (i, v) in all.into_iter().enumerate() {
            bytes += load_size(&v);
            let counter = v.dot.counter;
            out.push(v);
            if i + 1 < last && (out.len() >= max_versions || bytes >= max_bytes) {
                return (out, counter);
            }
        }
        (out, scanned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hlc::Hlc;
    use crate::VersionVector;

    fn rid(s: &str) -> ReplicaId {
        ReplicaId::new(s, 1).expect("a valid node name")
    }

    fn v(coll: &str, origin: &str, counter: u64, value: &[u8]) -> Version {
        Version {
            collection: coll.into(),
            key: format!("k{counter}"),
            dot: Dot::new(rid(origin), counter),
            hlc: Hlc::default(),
            context: VersionVector::new(),
            value: Some(value.to_vec()),
            author: None,
            signature: None,
        }
    }

    fn counters(vs: &[Version]) -> Vec<u64> {
        vs.iter().map(|v| v.dot.counter).collect()
    }

    #[test]
    fn select_is_by_collection_origin_and_range() {
        let mut s = Shadow::new();
        s.add(
            1,
            [
                v("a", "x", 2, b""),
                v("a", "x", 5, b""),
                v("a", "y", 3, b""),
            ],
        );
        s.add(1, [v("b", "x", 3, b"")]);
        let got: Vec<u64> = s
            .select("a", &rid("x"), 1, 5)
            .map(|v| v.dot.counter)
            .collect();
        assert_eq!(got, [2, 5]);
        assert_eq!(s.select("a", &rid("x"), 2, 4).count(), 0);
        assert_eq!(s.select("a", &rid("x"), 5, 5).count(), 0);
        assert_eq!(s.select("c", &rid("x"), 0, 9).count(), 0);
        assert_eq!(s.len(), 4);
    }

    #[test]
    fn forget_through_keeps_later_generations() {
        let mut s = Shadow::new();
        s.add(1, [v("a", "x", 1, b"")]);
        s.add(2, [v("a", "x", 2, b"")]);
        s.forget_through(1);
        assert_eq!(s.len(), 1);
        s.forget_through(2);
        assert!(s.is_empty());
        s.add(3, [v("a", "x", 3, b"")]);
        s.clear();
        assert!(s.is_empty());
    }

    #[test]
    fn merge_load_without_shadow_is_the_load() {
        let s = Shadow::new();
        let loaded = vec![v("a", "x", 2, b"")];
        let (out, scanned) = s.merge_load("a", &rid("x"), 0, loaded.clone(), 7, 1, 1);
        assert_eq!((out, scanned), (loaded, 7));
    }

    #[test]
    fn merge_load_adds_shadowed_in_order_without_duplicates() {
        let mut s = Shadow::new();
        s.add(
            1,
            [
                v("a", "x", 1, b""),
                v("a", "x", 3, b""),
                v("a", "x", 9, b""),
            ],
        );
        let loaded = vec![v("a", "x", 2, b""), v("a", "x", 3, b"")];
        let (out, scanned) = s.merge_load("a", &rid("x"), 0, loaded, 5, 100, 1 << 20);
        assert_eq!((counters(&out), scanned), (vec![1, 2, 3], 5));
    }

    #[test]
    fn merge_load_keeps_the_limits() {
        let mut s = Shadow::new();
        s.add(1, [v("a", "x", 1, b""), v("a", "x", 3, b"")]);
        let loaded = vec![v("a", "x", 2, b""), v("a", "x", 4, b"")];
        let (out, scanned) = s.merge_load("a", &rid("x"), 0, loaded.clone(), 6, 2, 1 << 20);
        assert_eq!((counters(&out), scanned), (vec![1, 2], 2));
        // Bytes: each version counts its key ("kN", 2 bytes) and value.
        let (out, scanned) = s.merge_load("a", &rid("x"), 0, loaded.clone(), 6, 100, 5);
        assert_eq!((counters(&out), scanned), (vec![1, 2, 3], 3));
        // At least one version, even past the byte limit.
        let (out, scanned) = s.merge_load("a", &rid("x"), 0, loaded, 6, 100, 0);
        assert_eq!((counters(&out), scanned), (vec![1], 1));
    }
}
