//! Tests of the hash tree the replica keeps: its leaves fold to the collection digest through
//! writes, overwrites, siblings and deletes; leaf loads return whole keys in order; a store
//! from before the tree gets it built at open, and one whose records do not match its digest
//! is refused; lost keys leave a consistent, smaller tree.

use std::sync::Arc;

use officesync_protocol::tree::{leaf_of, nodes_at, FANOUT};
use officesync_protocol::{Digest, ReplicaId, Version};

use super::*;
use crate::store::{MemoryStore, WriteBatch};

fn open(store: &Arc<MemoryStore>) -> Result<Replica, ReplicaError> {
    let store: Arc<dyn Store> = store.clone();
    Replica::open(store, ReplicaOptions::new("hefei"))
}

/// Every leaf digest of `situation`, folded from the level-3 nodes' children.
async fn leaves(r: &Replica) -> Vec<Digest> {
    let parents: Vec<u32> = (0..nodes_at(3)).collect();
    r.tree_digests("situation", 4, parents).await.expect("tree")
}

async fn assert_folds(r: &Replica) {
    let root = r.collection("situation").await.expect("meta").digest;
    let level1 = r.tree_digests("situation", 1, vec![0]).await.expect("tree");
    assert_eq!(level1.len(), FANOUT as usize);
    let mut folded = Digest::default();
    level1.iter().for_each(|d| folded.xor(d));
    assert_eq!(folded, root, "the tree folds to the collection digest");
    let mut all = Digest::default();
    leaves(r).await.iter().for_each(|d| all.xor(d));
    assert_eq!(all, root);
}

/// An unsigned version of `situation` holding `value`, with no causal context (HLC 1,000 +
/// `counter` ms).
fn remote(origin: &ReplicaId, counter: u64, key: &str, value: &[u8]) -> Version {
    super::tests::remote_plain(origin, counter, key, Some(value))
}

#[tokio::test]
async fn the_tree_follows_writes_siblings_and_deletes() {
    let store = Arc::new(MemoryStore::new());
    let r = open(&store).expect("open");
    for i in 0..200 {
        r.write("situation", &format!("k{i}"), Some(vec![i as u8; 20]))
            .await
            .expect("write");
    }
    assert_folds(&r).await;
    for i in 0..50 {
        r.write("situation", &format!("k{i}"), None)
            .await
            .expect("delete");
    }
    // A sibling from another office.
    let other = ReplicaId::new("wuhu", 7).expect("valid");
    r.apply_remote(
        vec![remote(&other, 1, "k120", b"from wuhu")],
        vec![("situation".into(), other.clone(), 1)],
    )
    .await
    .expect("apply");
    assert_folds(&r).await;

    // A leaf load returns every sibling of each key of the leaf, keys whole.
    let leaf = leaf_of("k120");
    let (versions, next) = r
        .leaf_versions("situation", vec![leaf], None, 1_000, 1 << 20)
        .await
        .expect("leaves");
    assert_eq!(next, None);
    let of_k120: Vec<&Version> = versions.iter().filter(|v| v.key == "k120").collect();
    assert_eq!(of_k120.len(), 2, "both siblings");
    assert!(versions.iter().all(|v| leaf_of(&v.key) == leaf));
    // Paged one key at a time, in (leaf, key) order, it returns the same.
    let all: Vec<u32> = (0..200).map(|i| leaf_of(&format!("k{i}"))).collect();
    let mut wanted: Vec<u32> = all.clone();
    wanted.sort_unstable();
    wanted.dedup();
    let mut paged = Vec::new();
    let mut after = None;
    for _ in 0..1_000 {
        let (vs, next) = r
            .leaf_versions("situation", wanted.clone(), after, 1, 1 << 20)
            .await
            .expect("page");
        paged.extend(vs);
        match next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    let keys: Vec<(u32, String)> = paged
        .iter()
        .map(|v| (leaf_of(&v.key), v.key.clone()))
        .collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted, "in (leaf, key) order");
    assert_eq!(paged.len(), 201, "every current version once");
    r.close().await.expect("close");
}

#[tokio::test]
async fn a_store_from_before_the_tree_gets_it_at_open_and_lost_keys_keep_it_consistent() {
    let store = Arc::new(MemoryStore::new());
    let r = open(&store).expect("open");
    for i in 0..300 {
        r.write("situation", &format!("k{i}"), Some(vec![1; 10]))
            .await
            .expect("write");
    }
    let before = leaves(&r).await;
    r.close().await.expect("close");
    // Take the tree away, as a store of an earlier build holds none.
    let mut batch = WriteBatch::default();
    for (k, _) in store.range(b"", None, usize::MAX).expect("rows") {
        if matches!(k.first(), Some(&keys::TREE) | Some(&keys::LEAF)) || k == keys::meta("tree") {
            batch.remove(k);
        }
    }
    store.apply(batch).expect("strip");
    let r = open(&store).expect("reopen builds the tree");
    assert_eq!(leaves(&r).await, before, "rebuilt as it was kept");
    let (vs, _) = r
        .leaf_versions("situation", vec![leaf_of("k7")], None, 100, 1 << 20)
        .await
        .expect("leaf index rebuilt");
    assert!(vs.iter().any(|v| v.key == "k7"));
    r.close().await.expect("close");

    // Lost keys: the digest, the counts and the tree lose them together.
    let lost: Vec<String> = vec!["k3".into(), "k200".into()];
    assert_eq!(
        lose_keys(store.as_ref(), "situation", &lost).expect("lose"),
        2
    );
    let r = open(&store).expect("reopen");
    assert_folds(&r).await;
    let meta = r.collection("situation").await.expect("meta");
    assert_eq!(meta.records, 298);
    assert_eq!(meta.vv.get(r.id()), 300, "the vector still covers them");
    assert!(r.get("situation", "k3").await.expect("get").is_none());
    r.close().await.expect("close");

    // A store whose records do not hash to its digest is refused, never opened with a tree
    // that would hide the difference.
    let mut batch = WriteBatch::default();
    for (k, _) in store.range(b"", None, usize::MAX).expect("rows") {
        if matches!(k.first(), Some(&keys::TREE) | Some(&keys::LEAF)) || k == keys::meta("tree") {
            batch.remove(k);
        }
    }
    batch.remove(keys::record("situation", "k5"));
    store.apply(batch).expect("damage");
    match open(&store) {
        Err(ReplicaError::Corrupt { what, .. }) => assert!(what.contains("situation"), "{what}"),
        other => panic!("a damaged store opened: {other:?}"),
    }
}
