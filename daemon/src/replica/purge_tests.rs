//! Tests of tombstone collection in the replica: purge steps below a frontier keep the digest,
//! tree and counts equal to a replica that never held the tombstones; versions below the
//! frontier that are not held are dropped as obsolete; a rejoin drops what its frontier
//! covers, keeps newer own writes, and lets repair bring the rest back.

use std::sync::Arc;

use officesync_protocol::{Digest, ReplicaId, VersionVector};

use super::*;
use crate::store::MemoryStore;

const C: &str = "situation";

fn open(node: &str) -> (Arc<MemoryStore>, Replica) {
    let store = Arc::new(MemoryStore::new());
    let dyn_store: Arc<dyn Store> = store.clone();
    let r = Replica::open(dyn_store, ReplicaOptions::new(node)).expect("open");
    (store, r)
}

use super::tests::remote_plain as remote;

/// Every stored row of `coll` with `tag` (`K` records, `H` histories, `L` leaf entries).
fn rows(store: &MemoryStore, tag: u8) -> usize {
    let mut prefix = vec![tag, C.len() as u8];
    prefix.extend_from_slice(C.as_bytes());
    let end = crate::store::prefix_end(&prefix);
    store
        .range(&prefix, end.as_deref(), usize::MAX)
        .expect("range")
        .len()
}

/// The collection digest folded from the hash tree's level 1 equals the stored digest.
async fn assert_tree_folds(r: &Replica) {
    let root = r.collection(C).await.expect("meta").digest;
    let mut folded = Digest::default();
    for d in r.tree_digests(C, 1, vec![0]).await.expect("tree") {
        folded.xor(&d);
    }
    assert_eq!(folded, root, "the tree folds to the collection digest");
}

/// Purges `coll` below `frontier` in steps of `step` keys; the keys purged.
async fn purge_all(r: &Replica, frontier: &VersionVector, step: usize) -> u64 {
    let (mut after, mut purged) = (None, 0);
    loop {
        let s = r
            .purge_step(C, frontier.clone(), after, step)
            .await
            .expect("purge step");
        purged += s.removed;
        match s.next {
            Some(next) => after = Some(next),
            None => return purged,
        }
    }
}

#[tokio::test]
async fn purge_forgets_tombstones_below_the_frontier_and_matches_a_replica_without_them() {
    let (store, a) = open("hefei");
    for i in 0..10 {
        a.write(C, &format!("k{i}"), Some(vec![i as u8; 2000]))
            .await
            .expect("write");
    }
    for i in 0..5 {
        a.write(C, &format!("k{i}"), None).await.expect("delete");
    }
    // A concurrent live sibling keeps k4's tombstone (it is not the key's only version).
    let x = ReplicaId::new("beijing-office", 1).expect("id");
    a.apply_remote(vec![remote(&x, 1, "k4", Some(b"concurrent"))], vec![])
        .await
        .expect("apply");
    let before = a.collection(C).await.expect("meta");
    assert_eq!((before.keys, before.versions), (10, 11));
    assert!(
        rows(&store, b'H') >= 5,
        "deletes keep the superseded values"
    );

    // A frontier through the first two tombstones (counters 11, 12) purges just those.
    let me = a.id().clone();
    let partial: VersionVector = [(me.clone(), 12)].into_iter().collect();
    assert_eq!(purge_all(&a, &partial, 3).await, 2);
    assert!(a.get(C, "k0").await.expect("get").is_none());
    assert!(
        a.get(C, "k2").await.expect("get").is_some(),
        "above the frontier"
    );

    // The whole vector: every tombstone that is its key's only version goes, in steps of 2.
    let full = a.collection(C).await.expect("meta").vv;
    assert_eq!(
        purge_all(&a, &full, 2).await,
        2,
        "k2 and k3; k4 has a live sibling"
    );
    assert_eq!(a.stats().tombstones_purged.load(Ordering::Relaxed), 4);
    let after = a.collection(C).await.expect("meta");
    assert_eq!(after.vv, before.vv, "purging never moves the vector");
    assert_eq!((after.keys, after.versions, after.records), (6, 7, 5));
    assert_eq!(rows(&store, b'K'), 6);
    assert_eq!(
        rows(&store, b'L'),
        6,
        "the purged keys leave the leaf index"
    );
    assert_eq!(rows(&store, b'H'), 1, "only k4's history stays");
    assert_eq!(
        rows(&store, b'V'),
        6,
        "the purged keys' old values lose their chunks"
    );
    assert_tree_folds(&a).await;

    // A replica that only ever received the versions left has the same digest.
    let (_, b) = open("wuhu");
    let mut live = Vec::new();
    for origin in [me, x] {
        let (v, _) = a
            .versions_since(C, &origin, 0, 100, 1000, 1 << 24)
            .await
            .expect("load");
        live.extend(v);
    }
    b.apply_remote(live, vec![]).await.expect("apply");
    let other = b.collection(C).await.expect("meta");
    assert_eq!(
        other.digest, after.digest,
        "digests converge after the purge"
    );
    assert_eq!(other.keys, after.keys);
    assert_eq!(other.versions, after.versions);

    // The same frontier again purges nothing; the store survives a reopen consistent.
    assert_eq!(purge_all(&a, &full, 100).await, 0);
    a.close().await.expect("close");
    let dyn_store: Arc<dyn Store> = store.clone();
    let reopened = Replica::open(dyn_store, ReplicaOptions::new("hefei")).expect("reopen");
    assert_eq!(reopened.collection(C).await.expect("meta"), after);
}

#[tokio::test]
async fn versions_below_the_frontier_that_are_not_held_are_dropped_as_obsolete() {
    let (store, a) = open("hefei");
    let x = ReplicaId::new("beijing-office", 1).expect("id");
    let old = remote(&x, 1, "k", Some(b"old"));
    a.apply_remote(vec![old.clone()], vec![(C.into(), x.clone(), 1)])
        .await
        .expect("apply");
    a.write(C, "k", None).await.expect("delete");
    let vv = a.collection(C).await.expect("meta").vv;
    assert_eq!(purge_all(&a, &vv, 10).await, 1);
    let digest = a.collection(C).await.expect("meta").digest;

    // A repair (or any apply) bringing the old value back: dropped, counted, key stays gone.
    let report = a.apply_repair(vec![old.clone()]).await.expect("repair");
    assert_eq!((report.applied, report.ignored), (0, 1));
    assert_eq!(a.stats().obsolete_dropped.load(Ordering::Relaxed), 1);
    assert!(
        a.get(C, "k").await.expect("get").is_none(),
        "never resurrected"
    );
    assert_eq!(a.collection(C).await.expect("meta").digest, digest);

    // The frontier applied survives a restart: the rule holds before the next purge round.
    a.close().await.expect("close");
    let dyn_store: Arc<dyn Store> = store.clone();
    let a = Replica::open(dyn_store, ReplicaOptions::new("hefei")).expect("reopen");
    let report = a.apply_repair(vec![old.clone()]).await.expect("repair");
    assert_eq!(
        (report.applied, report.ignored),
        (0, 1),
        "dropped after a restart too"
    );
    assert!(a.get(C, "k").await.expect("get").is_none());

    // A version above the frontier is news, below it with the vector not covering it too
    // (a node behind the frontier is still catching up).
    let report = a
        .apply_remote(vec![remote(&x, 2, "k2", Some(b"new"))], vec![])
        .await
        .expect("apply");
    assert_eq!(report.applied, 1);
    let (_, behind) = open("wuhu");
    behind
        .purge_step(C, vv.clone(), None, 10)
        .await
        .expect("frontier noted");
    let report = behind.apply_remote(vec![old], vec![]).await.expect("apply");
    assert_eq!(report.applied, 1, "not covered by its vector: not obsolete");
}

#[tokio::test]
async fn a_rejoin_drops_what_the_frontier_covers_keeps_newer_own_writes_and_repair_refills() {
    let (store, b) = open("beijing-office");
    let hub = ReplicaId::new("general-office", 1).expect("id");
    // Held from before the absence: a value written elsewhere (deleted and purged meanwhile).
    b.apply_remote(
        vec![remote(&hub, 1, "old", Some(b"stale"))],
        vec![(C.into(), hub.clone(), 1)],
    )
    .await
    .expect("apply");
    let m1 = b
        .write(C, "m1", Some(b"seen by all".to_vec()))
        .await
        .expect("w");
    let m2 = b
        .write(C, "m2", Some(b"seen by none".to_vec()))
        .await
        .expect("w");
    let (mine, _) = b
        .versions_since(C, b.id(), 0, 10, 10, 1 << 20)
        .await
        .expect("load");
    let vv_before = b.collection(C).await.expect("meta").vv;
    // The frontier of the absence: the hub's delete (counter 2) and this node's first write.
    let frontier: VersionVector = [(hub.clone(), 2), (m1.dot.origin.clone(), m1.dot.counter)]
        .into_iter()
        .collect();
    let step = b
        .rejoin_step(C, frontier.clone(), "general-office@1:9".into(), None, 1)
        .await
        .expect("rejoin");
    assert!(step.next.is_some(), "one key per step");
    assert_eq!(b.rejoin_done(C).await.expect("mark"), None, "not done yet");
    let mut after = step.next;
    let mut dropped = step.removed;
    while let Some(a) = after {
        let s = b
            .rejoin_step(C, frontier.clone(), "general-office@1:9".into(), Some(a), 1)
            .await
            .expect("rejoin");
        dropped += s.removed;
        after = s.next;
    }
    assert_eq!(dropped, 2);
    assert_eq!(
        b.rejoin_done(C).await.expect("mark").as_deref(),
        Some("general-office@1:9")
    );
    assert!(
        b.get(C, "old").await.expect("get").is_none(),
        "the stale value is gone"
    );
    assert!(b.get(C, "m1").await.expect("get").is_none());
    assert_eq!(
        b.get(C, "m2")
            .await
            .expect("get")
            .expect("kept")
            .winner()
            .dot,
        m2.dot,
        "a write the frontier does not cover is kept"
    );
    let meta = b.collection(C).await.expect("meta");
    assert_eq!(meta.vv, vv_before, "the vector stays");
    assert_eq!((meta.keys, meta.records, meta.versions), (1, 1, 1));
    assert_eq!(rows(&store, b'K'), 1);
    assert_tree_folds(&b).await;

    // The frontier is applied too; repair brings back m1 (still live at the hub) although
    // the frontier covers it: below the rejoin's frontier repair is let through.
    b.purge_step(C, frontier, None, 10).await.expect("purge");
    let back = mine
        .into_iter()
        .find(|v| v.dot == m1.dot)
        .expect("m1 loaded");
    let report = b.apply_repair(vec![back]).await.expect("repair");
    assert_eq!(report.applied, 1);
    assert!(b.get(C, "m1").await.expect("get").is_some());
}
