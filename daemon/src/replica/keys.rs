//! The replica's key layout inside a [`Store`](crate::store::Store).
//!
//! - `M` + name: node metadata (format, replica id).
//! - `C` + collection: the collection's [`CollectionMeta`](super::CollectionMeta).
//! - `K` + len + collection + key: the key's sibling set.
//! - `B` + len + collection + len + origin + block: dot index of live versions, one row per
//!   [`DOTS_PER_BLOCK`] counters of an origin (see [`super::dots`]).
//! - `D` + len + collection + len + origin + counter: the dot index as builds before blocks
//!   kept it, one row a dot; moved into blocks when the replica opens.
//! - `V` + len + collection + len + origin + counter + chunk: pieces of large values.
//! - `I` + len + collection + len + pointer + encoded value + key: a secondary index entry
//!   (empty value) for the winner of `key`, whose JSON value holds at the declared `pointer`
//!   the scalar encoded as [`officesync_protocol::index_order`] says (see [`super::index`]).
//! - `F` + len + collection + cursor: the change log (see [`super::changes`]).
//! - `H` + len + collection + key: the key's history, the versions superseded here (see
//!   [`super::history`]); a superseded large value keeps its `V` chunks while it is in it.
//! - `T` + len + collection + leaf: the digest of one leaf of the collection's hash tree
//!   (32 bytes; no row for an empty leaf; see [`super::tree`]).
//! - `L` + len + collection + leaf: the leaf index, the keys of one non-empty leaf (see
//!   [`super::tree::encode_keys`]).
//!
//! Lengths are one byte (collection names ≤ 65 bytes, replica ids ≤ 72 bytes); counters and
//! chunk numbers are big-endian so they sort numerically.

use officesync_protocol::{Dot, ReplicaId};

pub(crate) const META: u8 = b'M';
pub(crate) const COLLECTION: u8 = b'C';
pub(crate) const KEY: u8 = b'K';
pub(crate) const DOT: u8 = b'D';
pub(crate) const DOT_BLOCK: u8 = b'B';

/// Counters of one origin indexed by one dot-index row.
pub(crate) const DOTS_PER_BLOCK: u64 = 64;
pub(crate) const CHUNK: u8 = b'V';
pub(crate) const INDEX: u8 = b'I';
pub(crate) const CHANGE: u8 = b'F';
pub(crate) const HISTORY: u8 = b'H';
pub(crate) const TREE: u8 = b'T';
pub(crate) const LEAF: u8 = b'L';

pub(crate) fn meta(name: &str) -> Vec<u8> {
    let mut k = vec![META];
    k.extend_from_slice(name.as_bytes());
    k
}

pub(crate) fn collection(coll: &str) -> Vec<u8> {
    let mut k = vec![COLLECTION];
    k.extend_from_slice(coll.as_bytes());
    k
}

fn with_coll(tag: u8, coll: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + coll.len() + 32);
    k.push(tag);
    k.push(coll.len() as u8);
    k.extend_from_slice(coll.as_bytes());
    k
}

/// Prefix of every sibling-set key of `coll`.
pub(crate) fn record_prefix(coll: &str) -> Vec<u8> {
    with_coll(KEY, coll)
}

pub(crate) fn record(coll: &str, key: &str) -> Vec<u8> {
    let mut k = record_prefix(coll);
    k.extend_from_slice(key.as_bytes());
    k
}

/// The history record of `key` in `coll`.
pub(crate) fn history(coll: &str, key: &str) -> Vec<u8> {
    let mut k = with_coll(HISTORY, coll);
    k.extend_from_slice(key.as_bytes());
    k
}

/// Prefix of the old layout's dot index of `origin` in `coll` (tests write that layout).
#[cfg(test)]
pub(crate) fn dot_origin_prefix(coll: &str, origin: &ReplicaId) -> Vec<u8> {
    let mut k = with_coll(DOT, coll);
    k.push(origin.as_str().len() as u8);
    k.extend_from_slice(origin.as_str().as_bytes());
    k
}

/// The old layout's per-dot key (tests write that layout).
#[cfg(test)]
pub(crate) fn dot(coll: &str, dot: &Dot) -> Vec<u8> {
    let mut k = dot_origin_prefix(coll, &dot.origin);
    k.extend_from_slice(&dot.counter.to_be_bytes());
    k
}

/// The dot-index row holding `counter` of `origin` in `coll`.
pub(crate) fn dot_block(coll: &str, origin: &ReplicaId, counter: u64) -> Vec<u8> {
    let mut k = with_coll(DOT_BLOCK, coll);
    k.push(origin.as_str().len() as u8);
    k.extend_from_slice(origin.as_str().as_bytes());
    k.extend_from_slice(&(counter / DOTS_PER_BLOCK).to_be_bytes());
    k
}

/// The dot-index row a per-dot key of the old layout (`D`) moves into.
pub(crate) fn dot_block_of_old_key(k: &[u8]) -> Option<(Vec<u8>, u64)> {
    let counter = counter_of_dot_key(k)?;
    let middle = k.get(1..k.len() - 8)?;
    let mut block = Vec::with_capacity(k.len());
    block.push(DOT_BLOCK);
    block.extend_from_slice(middle);
    block.extend_from_slice(&(counter / DOTS_PER_BLOCK).to_be_bytes());
    Some((block, counter))
}

/// Prefix of every entry of the index on `pointer` (at most 255 bytes) of `coll`.
pub(crate) fn index_prefix(coll: &str, pointer: &str) -> Vec<u8> {
    let mut k = with_coll(INDEX, coll);
    k.push(pointer.len() as u8);
    k.extend_from_slice(pointer.as_bytes());
    k
}

/// Prefix of every leaf row of the hash tree of `coll`.
pub(crate) fn tree_prefix(coll: &str) -> Vec<u8> {
    with_coll(TREE, coll)
}

/// The row of leaf `leaf` of the hash tree of `coll`.
pub(crate) fn tree_leaf(coll: &str, leaf: u32) -> Vec<u8> {
    let mut k = tree_prefix(coll);
    k.extend_from_slice(&leaf.to_be_bytes());
    k
}

/// The leaf at the end of the key of a tree row or a leaf-index row.
pub(crate) fn leaf_of_tree_key(k: &[u8]) -> Option<u32> {
    let at = k.len().checked_sub(4)?;
    Some(u32::from_be_bytes(k[at..].try_into().ok()?))
}

/// Prefix of every leaf-index row of `coll`.
pub(crate) fn leaf_index_prefix(coll: &str) -> Vec<u8> {
    with_coll(LEAF, coll)
}

/// The leaf-index row of leaf `leaf` of `coll`: the keys of the leaf (see
/// [`super::tree::encode_keys`]).
pub(crate) fn leaf_keys(coll: &str, leaf: u32) -> Vec<u8> {
    let mut k = leaf_index_prefix(coll);
    k.extend_from_slice(&leaf.to_be_bytes());
    k
}

/// Prefix of every chunk of the value of `dot`.
pub(crate) fn chunk_prefix(coll: &str, d: &Dot) -> Vec<u8> {
    let mut k = with_coll(CHUNK, coll);
    k.push(d.origin.as_str().len() as u8);
    k.extend_from_slice(d.origin.as_str().as_bytes());
    k.extend_from_slice(&d.counter.to_be_bytes());
    k
}

pub(crate) fn chunk(coll: &str, d: &Dot, index: u32) -> Vec<u8> {
    let mut k = chunk_prefix(coll, d);
    k.extend_from_slice(&index.to_be_bytes());
    k
}

/// Prefix of `coll`'s change log.
pub(crate) fn change_prefix(coll: &str) -> Vec<u8> {
    with_coll(CHANGE, coll)
}

/// The change-log entry of `coll` at `cursor`.
pub(crate) fn change(coll: &str, cursor: u64) -> Vec<u8> {
    let mut k = change_prefix(coll);
    k.extend_from_slice(&cursor.to_be_bytes());
    k
}

/// The cursor at the end of a change-log key.
pub(crate) fn cursor_of_change_key(k: &[u8]) -> Option<u64> {
    counter_of_dot_key(k)
}

/// The counter at the end of a per-dot key of the old layout, or the block number at the end
/// of a dot-index row's key.
pub(crate) fn counter_of_dot_key(k: &[u8]) -> Option<u64> {
    let at = k.len().checked_sub(8)?;
    Some(u64::from_be_bytes(k[at..].try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_keys_sort_by_counter_and_parse_back() {
        let r = ReplicaId::new("hefei", 1).expect("valid");
        let a = dot("situation", &Dot::new(r.clone(), 2));
        let b = dot("situation", &Dot::new(r.clone(), 10));
        assert!(a < b);
        assert!(a.starts_with(&dot_origin_prefix("situation", &r)));
        assert_eq!(counter_of_dot_key(&b), Some(10));
        // Counters 0..63 share a row, 64 starts the next; rows sort by block number.
        let (b0, b63, b64) = (
            dot_block("situation", &r, 0),
            dot_block("situation", &r, 63),
            dot_block("situation", &r, 64),
        );
        assert_eq!(b0, b63);
        assert!(b63 < b64);
        assert_eq!(
            dot_block_of_old_key(&b),
            Some((dot_block("situation", &r, 10), 10))
        );
        // A collection that is a prefix of another never shares key space.
        assert!(!record("ab", "c").starts_with(&record_prefix("a")));
        assert!(!index_prefix("a", "/bc").starts_with(&index_prefix("a", "/b")));
    }
}
