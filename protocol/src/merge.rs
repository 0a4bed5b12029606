//! The merge rules for the sibling set of one key.
//!
//! A version `v` supersedes a dot `d` when `v.context` covers `d`. Contexts are transitive:
//! a local write's context is the union of the dots and contexts of every sibling it replaces,
//! so whatever a superseded version superseded stays superseded. The sibling set is therefore
//! always the set of maximal versions received, whatever the order they arrived in.

use crate::dot::{Dot, VersionVector};
use crate::version::Causal;

/// What applying a version to a sibling set did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied<T> {
    /// The same dot is already a sibling: nothing changed.
    Duplicate,
    /// A sibling already supersedes it: nothing changed.
    Obsolete,
    /// It became a sibling; `removed` are the siblings it superseded.
    Inserted {
        /// The versions it superseded, now gone.
        removed: Vec<T>,
    },
}

/// The causal context of a new local write over `siblings`: it supersedes all of them.
pub fn local_context<T: Causal>(siblings: &[T]) -> VersionVector {
    let mut ctx = VersionVector::new();
    for s in siblings {
        ctx.merge(s.context());
        ctx.add_dot(s.dot());
    }
    ctx
}

/// Whether a version with `dot` would change nothing in `siblings`: `Duplicate` when it is
/// held, `Obsolete` when a sibling supersedes it; `None` when [`apply`] would insert it.
pub fn held_or_superseded<T: Causal>(siblings: &[T], dot: &Dot) -> Option<Applied<T>> {
    if siblings.iter().any(|s| s.dot() == dot) {
        Some(Applied::Duplicate)
    } else if siblings.iter().any(|s| s.context().covers(dot)) {
        Some(Applied::Obsolete)
    } else {
        None
    }
}

/// Applies `v` (local or received) to `siblings`: ignored when present or superseded, otherwise
/// inserted, dropping every sibling it supersedes. Siblings stay sorted by dot.
pub fn apply<T: Causal>(siblings: &mut Vec<T>, v: T) -> Applied<T> {
    if let Some(not_new) = held_or_superseded(siblings, v.dot()) {
        return not_new;
    }
    let mut removed = Vec::new();
    let mut kept = Vec::with_capacity(siblings.len() + 1);
    for s in siblings.drain(..) {
        if v.context().covers(s.dot()) {
            removed.push(s);
        } else {
            kept.push(s);
        }
    }
    let at = kept.partition_point(|s| s.dot() < v.dot());
    kept.insert(at, v);
    *siblings = kept;
    Applied::Inserted { removed }
}

/// The deterministic winner: highest HLC, ties broken by the higher origin id.
pub fn winner<T: Causal>(siblings: &[T]) -> Option<&T> {
    siblings
        .iter()
        .max_by(|a, b| (a.hlc(), &a.dot().origin).cmp(&(b.hlc(), &b.dot().origin)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dot::{Dot, ReplicaId};
    use crate::hlc::Hlc;
    use crate::version::{ValueMeta, VersionHeader};

    fn rid(n: &str) -> ReplicaId {
        ReplicaId::new(n, 1).expect("valid test name")
    }

    fn v(origin: &str, counter: u64, ms: u64, ctx: &[(&str, u64)]) -> VersionHeader {
        VersionHeader {
            dot: Dot::new(rid(origin), counter),
            hlc: Hlc { ms, logical: 0 },
            context: ctx.iter().map(|(o, c)| (rid(o), *c)).collect(),
            value: ValueMeta::of(Some(b"x")),
        }
    }

    #[test]
    fn concurrent_writes_become_siblings_and_a_later_write_supersedes_both() {
        let mut s = Vec::new();
        assert!(matches!(
            apply(&mut s, v("a", 1, 10, &[])),
            Applied::Inserted { .. }
        ));
        assert!(matches!(
            apply(&mut s, v("b", 1, 20, &[])),
            Applied::Inserted { .. }
        ));
        assert_eq!(s.len(), 2);
        assert_eq!(winner(&s).map(|w| w.dot.origin.node_name()), Some("b"));
        let ctx = local_context(&s);
        let w = VersionHeader {
            context: ctx,
            ..v("a", 2, 5, &[])
        };
        match apply(&mut s, w) {
            Applied::Inserted { removed } => assert_eq!(removed.len(), 2),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn duplicates_and_obsolete_versions_change_nothing() {
        let mut s = vec![v("a", 3, 10, &[("a", 2), ("b", 1)])];
        assert_eq!(
            apply(&mut s, v("a", 3, 10, &[("a", 2), ("b", 1)])),
            Applied::Duplicate
        );
        assert_eq!(apply(&mut s, v("a", 1, 1, &[])), Applied::Obsolete);
        assert_eq!(apply(&mut s, v("b", 1, 99, &[])), Applied::Obsolete);
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn winner_ties_break_by_origin() {
        let s = vec![v("a", 1, 10, &[]), v("c", 1, 10, &[]), v("b", 1, 10, &[])];
        assert_eq!(winner(&s).map(|w| w.dot.origin.node_name()), Some("c"));
        assert!(winner::<VersionHeader>(&[]).is_none());
    }
}
