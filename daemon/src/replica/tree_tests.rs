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

/// Every hash-tree and leaf-index row of the store, in key order.
fn tree_rows(store: &MemoryStore) -> Vec<(Vec<u8>, Vec<u8>)> {
    store
        .range(b"", None, usize::MAX)
        .expect("rows")
        .into_iter()
        .filter(|(k, _)| matches!(k.first(), Some(&keys::TREE) | Some(&keys::LEAF)))
        .collect()
}

/// The tree rows a build from scratch makes of the records of `store` (on a copy).
fn rows_built_from_scratch(store: &MemoryStore) -> Vec<(Vec<u8>, Vec<u8>)> {
    let copy = MemoryStore::new();
    let mut batch = WriteBatch::default();
    for (k, v) in store.range(b"", None, usize::MAX).expect("rows") {
        let tree_row = matches!(k.first(), Some(&keys::TREE) | Some(&keys::LEAF));
        if !tree_row && k != keys::meta("tree") && !k.starts_with(&keys::meta("tree_build/")) {
            batch.put(k, v);
        }
    }
    copy.apply(batch).expect("copy");
    super::tree::build(&copy).expect("build");
    tree_rows(&copy)
}

fn bulk(origin: &ReplicaId, n: u64) -> Vec<Version> {
    (1..=n)
        .map(|i| remote(origin, i, &format!("k{i}"), format!("v{i}").as_bytes()))
        .collect()
}

/// A store holding `n` keys of `situation` written here (`k0`, `k1`, ...), its replica
/// closed; with its tree rows.
async fn closed_store(n: usize) -> (Arc<MemoryStore>, Vec<(Vec<u8>, Vec<u8>)>) {
    let store = Arc::new(MemoryStore::new());
    let r = open(&store).expect("open");
    for i in 0..n {
        r.write("situation", &format!("k{i}"), Some(vec![2; 10]))
            .await
            .expect("write");
    }
    r.close().await.expect("close");
    let rows = tree_rows(&store);
    (store, rows)
}

/// A bulk apply of `n` versions into the empty `coll`, then 300 writes (local writes,
/// deletes, versions of another office, some new keys) while its tree is built; then a repair
/// read, which waits for the tree, and finds it folding to the collection digest.
async fn bulk_then_writes(r: &Replica, hub: &ReplicaId, coll: &str, n: u64) {
    let mut versions = bulk(hub, n);
    versions.iter_mut().for_each(|v| v.collection = coll.into());
    r.apply_remote(versions, vec![(coll.into(), hub.clone(), n)])
        .await
        .expect("bulk apply");
    let other = ReplicaId::new("anqing", 2).expect("valid");
    let base = r.collection(coll).await.expect("meta").vv.get(&other);
    for i in 0..300u64 {
        let key = format!("k{}", (i * 37) % (n + 200) + 1);
        let done = match i % 3 {
            0 => r.write(coll, &key, Some(vec![i as u8; 8])).await.map(drop),
            1 => r.write(coll, &key, None).await.map(drop),
            _ => {
                let counter = base + i / 3 + 1;
                let mut v = remote(&other, counter, &key, b"from anqing");
                v.collection = coll.into();
                r.apply_remote(vec![v], vec![(coll.into(), other.clone(), counter)])
                    .await
                    .map(drop)
            }
        };
        done.expect("write during the build");
        if i % 20 == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(3)).await;
        }
    }
    let level1 = r.tree_digests(coll, 1, vec![0]).await.expect("tree");
    let mut folded = Digest::default();
    level1.iter().for_each(|d| folded.xor(d));
    assert_eq!(folded, r.collection(coll).await.expect("meta").digest);
}

#[tokio::test]
async fn a_bulk_apply_builds_the_tree_afterwards_through_concurrent_writes() {
    let store = Arc::new(MemoryStore::new());
    let r = open(&store).expect("open");
    let hub = ReplicaId::new("hub", 3).expect("valid");
    // A small first batch keeps the tree write by write.
    r.apply_remote(bulk(&hub, 10), vec![("situation".into(), hub.clone(), 10)])
        .await
        .expect("small apply");
    r.apply_remote(
        bulk(&ReplicaId::new("wuhu", 1).expect("valid"), 100)
            .into_iter()
            .map(|mut v| {
                v.collection = "alerts".into();
                v
            })
            .collect(),
        Vec::new(),
    )
    .await
    .expect("bulk into another collection");
    r.tree_digests("alerts", 1, vec![0]).await.expect("built");
    assert_eq!(
        r.stats().trees_built.load(Ordering::Relaxed),
        1,
        "alerts only"
    );

    // Into an empty collection, a bulk apply leaves the tree to be built; writes of every
    // kind go on while it is. 3,000 keys outgrow the pass that takes keys as they come (the
    // tests' passes aim at 512), so scanning passes build it; 400 keys stay in that pass.
    bulk_then_writes(&r, &hub, "roads", 3_000).await;
    bulk_then_writes(&r, &hub, "bridges", 400).await;
    assert_eq!(r.stats().trees_built.load(Ordering::Relaxed), 3);
    assert_eq!(r.stats().trees_building.load(Ordering::Relaxed), 0);
    r.close().await.expect("close");
    assert_eq!(
        tree_rows(&store),
        rows_built_from_scratch(&store),
        "the same rows as a build from the records"
    );
}

#[tokio::test]
async fn a_build_cut_short_resumes_from_its_marker_after_a_restart() {
    let (store, whole) = closed_store(2_000).await;
    // As a crash mid-build leaves it: leaves below 30,000 built, a pass under way that wrote
    // some leaf-index rows above (one of them naming a key that has since gone), no digest
    // row above.
    let cut = 30_000u32;
    let mut batch = WriteBatch::default();
    let mut kept_above = 0;
    for (k, _) in &whole {
        let leaf = keys::leaf_of_tree_key(k).expect("leaf");
        if leaf >= cut && !(k[0] == keys::LEAF && leaf < 40_000) {
            batch.remove(k.clone());
        } else if leaf >= cut {
            if kept_above == 0 {
                let raw = super::tree::encode_keys(["gone-since"]);
                batch.put(k.clone(), raw);
            }
            kept_above += 1;
        }
    }
    assert!(kept_above > 0, "some rows of the interrupted pass stay");
    batch.put(
        keys::meta("tree_build/situation"),
        cut.to_be_bytes().to_vec(),
    );
    store.apply(batch).expect("cut");
    assert_ne!(tree_rows(&store), whole);

    // Keys lost while stopped mid-build: kept consistent (below the cut) or left to the build.
    let lost: Vec<String> = (0..2_000).step_by(97).map(|i| format!("k{i}")).collect();
    lose_keys(store.as_ref(), "situation", &lost).expect("lose");

    let r = open(&store).expect("reopen");
    assert_eq!(r.stats().trees_building.load(Ordering::Relaxed), 1);
    // A key written while the build resumes lands in a built leaf, the pass or a later one.
    for i in 0..50 {
        r.write("situation", &format!("late{i}"), Some(vec![3; 4]))
            .await
            .expect("write");
    }
    assert_folds(&r).await;
    assert_eq!(r.stats().trees_building.load(Ordering::Relaxed), 0);
    r.close().await.expect("close");
    assert!(store
        .get(&keys::meta("tree_build/situation"))
        .expect("get")
        .is_none());
    assert_eq!(tree_rows(&store), rows_built_from_scratch(&store));
}

#[tokio::test]
async fn a_store_with_a_leaf_index_row_per_key_gets_one_row_per_leaf_at_open() {
    let (store, kept) = closed_store(500).await;
    // As the first tree format kept it: one empty row per key, under its leaf.
    let mut batch = WriteBatch::default();
    for (k, raw) in &kept {
        if k[0] != keys::LEAF {
            continue;
        }
        batch.remove(k.clone());
        let leaf = keys::leaf_of_tree_key(k).expect("leaf");
        for key in super::tree::decode_keys(raw, "situation", leaf).expect("keys") {
            let mut row = k.clone();
            row.extend_from_slice(key.as_bytes());
            batch.put(row, Vec::new());
        }
    }
    batch.put(keys::meta("tree"), vec![1]);
    store.apply(batch).expect("old format");
    assert_ne!(tree_rows(&store), kept);
    let r = open(&store).expect("reopen rebuilds");
    assert_folds(&r).await;
    r.close().await.expect("close");
    assert_eq!(tree_rows(&store), kept);
}

#[test]
fn leaf_index_rows_round_trip_and_refuse_damage() {
    let keys = ["a", "bé", &"x".repeat(1024)];
    let raw = super::tree::encode_keys(keys);
    let back = super::tree::decode_keys(&raw, "c", 7).expect("decode");
    assert_eq!(back, keys);
    assert!(super::tree::decode_keys(&[], "c", 7)
        .expect("empty")
        .is_empty());
    for bad in [&raw[..1], &raw[..raw.len() - 1], &[0, 2, 0xff, 0xfe][..]] {
        assert!(matches!(
            super::tree::decode_keys(bad, "c", 7),
            Err(ReplicaError::Corrupt { .. })
        ));
    }
}

#[tokio::test]
async fn a_tree_whose_keys_are_in_memory_is_written_when_the_replica_closes() {
    let store = Arc::new(MemoryStore::new());
    let r = open(&store).expect("open");
    let hub = ReplicaId::new("hub", 3).expect("valid");
    r.apply_remote(
        bulk(&hub, 300),
        vec![("situation".into(), hub.clone(), 300)],
    )
    .await
    .expect("bulk apply");
    r.close().await.expect("close");
    assert!(
        store
            .get(&keys::meta("tree_build/situation"))
            .expect("get")
            .is_none(),
        "built at close, not left to a scan at the next start"
    );
    assert!(!tree_rows(&store).is_empty());
    assert_eq!(tree_rows(&store), rows_built_from_scratch(&store));
}
