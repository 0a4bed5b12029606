//! The hash tree of a collection's key space that a protocol-3 repair descends: a fixed tree of
//! [`LEVELS`] levels below the root, [`FANOUT`] children per node, over [`LEAVES`] leaf buckets
//! chosen by the first bits of the SHA-256 of the key.
//!
//! A node's digest is the XOR of the [`Digest::element`]s of the current versions whose key
//! falls under it, so the root is the collection digest and each node is the XOR of its
//! children. A store keeps (or computes) the leaf digests; [`child_digests`] folds them up.
//! Node `i` at level `l` (the root is node 0 at level 0) has the children `16 i .. 16 i + 15`
//! at level `l + 1`; the leaves are the nodes of level [`LEVELS`].

use crate::digest::Digest;
use crate::version::Version;

/// Levels below the root: the leaves are at this level.
pub const LEVELS: u8 = 4;

/// Children of every inner node.
pub const FANOUT: u32 = 16;

/// Bits of the key hash that name a leaf (4 per level).
pub const LEAF_BITS: u32 = 16;

/// Leaf buckets of every collection.
pub const LEAVES: u32 = 1 << LEAF_BITS;

/// The leaf bucket of `key`: the first [`LEAF_BITS`] bits of its SHA-256.
pub fn leaf_of(key: &str) -> u32 {
    let h = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
    let b = h.as_ref();
    u32::from(b[0]) << 8 | u32::from(b[1])
}

/// Nodes at `level` (1 at the root, [`LEAVES`] at [`LEVELS`]); 0 past the leaves.
pub fn nodes_at(level: u8) -> u32 {
    if level > LEVELS {
        return 0;
    }
    1 << (4 * u32::from(level))
}

/// The node at `level` above leaf `leaf`.
pub fn node_of_leaf(leaf: u32, level: u8) -> u32 {
    let level = level.min(LEVELS);
    leaf >> (4 * u32::from(LEVELS - level))
}

/// The leaves under node `node` of `level`: `start..end`.
pub fn leaves_under(level: u8, node: u32) -> std::ops::Range<u32> {
    let level = level.min(LEVELS);
    let shift = 4 * u32::from(LEVELS - level);
    (node << shift)..((node + 1) << shift)
}

/// The digests of the children at `level` (1..=[`LEVELS`]) of each of `parents` (nodes at
/// `level - 1`, in increasing order), [`FANOUT`] per parent in order, folded from `leaves`:
/// the non-zero leaf digests, in any order (leaves under no parent are ignored).
pub fn child_digests(
    level: u8,
    parents: &[u32],
    leaves: impl IntoIterator<Item = (u32, Digest)>,
) -> Vec<Digest> {
    let mut out = vec![Digest::default(); parents.len() * FANOUT as usize];
    if level == 0 || level > LEVELS {
        return out;
    }
    for (leaf, d) in leaves {
        let parent = node_of_leaf(leaf, level - 1);
        let Ok(at) = parents.binary_search(&parent) else {
            continue;
        };
        let child = node_of_leaf(leaf, level) - parent * FANOUT;
        if let Some(slot) = out.get_mut(at * FANOUT as usize + child as usize) {
            slot.xor(&d);
        }
    }
    out
}

/// The children at `level` of `parents` whose digests differ between `ours` and `theirs`
/// (both as [`child_digests`] lays them out), in increasing order.
pub fn differing_children(parents: &[u32], ours: &[Digest], theirs: &[Digest]) -> Vec<u32> {
    let mut out = Vec::new();
    for (i, parent) in parents.iter().enumerate() {
        for c in 0..FANOUT as usize {
            let at = i * FANOUT as usize + c;
            if ours.get(at) != theirs.get(at) {
                out.push(parent * FANOUT + c as u32);
            }
        }
    }
    out
}

/// Where a leaf load stops and the next resumes: after this `(leaf, key)`.
pub type LeafPosition = (u32, String);

/// One page of a leaf load: the versions, and where to resume when some are left.
pub type LeafPage = (Vec<Version>, Option<LeafPosition>);

/// The reference answer to a leaf load over versions held in memory (test stores and the
/// simulation use it; the daemon reads its leaf index instead): the versions of the keys whose
/// leaf is in `leaves` (strictly increasing), in `(leaf, key)` order after `after`, whole keys
/// at a time until `max_versions` versions or about `max_bytes` of values are taken; and the
/// `(leaf, key)` to resume after when some are left.
pub fn select_leaves<'a>(
    versions: impl IntoIterator<Item = &'a Version>,
    leaves: &[u32],
    after: Option<&(u32, String)>,
    max_versions: usize,
    max_bytes: usize,
) -> LeafPage {
    let mut keyed: Vec<((u32, &str), &Version)> = versions
        .into_iter()
        .map(|v| ((leaf_of(&v.key), v.key.as_str()), v))
        .filter(|((leaf, _), _)| leaves.binary_search(leaf).is_ok())
        .filter(|((leaf, key), _)| after.is_none_or(|(l, k)| (*leaf, *key) > (*l, k.as_str())))
        .collect();
    keyed.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.dot.cmp(&b.1.dot)));
    let mut out = Vec::new();
    let mut bytes = 0;
    let mut last: Option<(u32, &str)> = None;
    for (at, v) in keyed {
        if last != Some(at) && (out.len() >= max_versions || bytes >= max_bytes) && last.is_some() {
            return (out, last.map(|(l, k)| (l, k.to_owned())));
        }
        last = Some(at);
        bytes += v.value.as_ref().map_or(0, Vec::len);
        out.push(v.clone());
    }
    (out, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dot::{Dot, ReplicaId};
    use crate::version::ValueMeta;

    #[test]
    fn children_fold_to_their_parent_and_the_root_is_the_collection_digest() {
        let r = ReplicaId::new("a", 1).expect("valid");
        let mut root = Digest::default();
        let mut leaves: std::collections::BTreeMap<u32, Digest> = Default::default();
        for i in 0..500u64 {
            let key = format!("k{i}");
            let e = Digest::element(&key, &Dot::new(r.clone(), i + 1), &ValueMeta::Tombstone);
            root.xor(&e);
            leaves.entry(leaf_of(&key)).or_default().xor(&e);
        }
        let level1 = child_digests(1, &[0], leaves.iter().map(|(l, d)| (*l, *d)));
        assert_eq!(level1.len(), 16);
        let mut folded = Digest::default();
        level1.iter().for_each(|d| folded.xor(d));
        assert_eq!(folded, root);
        // Every node equals the XOR of its children, down to the leaves.
        let level3: Vec<u32> = (0..nodes_at(3)).collect();
        let at4 = child_digests(4, &level3, leaves.iter().map(|(l, d)| (*l, *d)));
        for (leaf, d) in &leaves {
            assert_eq!(at4[*leaf as usize], *d);
        }
        assert_eq!(leaves_under(1, 3), 3 * 4096..4 * 4096);
        assert_eq!(node_of_leaf(0xabcd, 2), 0xab);
        assert_eq!(nodes_at(LEVELS), LEAVES);
        let mut other = level1.clone();
        other[5] = Digest([1; 32]);
        assert_eq!(differing_children(&[0], &level1, &other), vec![5]);
    }
}
