//! Replica tests on the in-memory and sled stores.

use std::sync::Arc;

use officesync_protocol::{Dot, Hlc, ReplicaId, Version, VersionVector};

use super::*;
use crate::store::{MemoryStore, SledStore, WriteBatch};

fn memory(node: &str) -> Replica {
    Replica::open(Arc::new(MemoryStore::new()), ReplicaOptions::new(node)).expect("open")
}

fn sled_at(dir: &std::path::Path, node: &str) -> Replica {
    let store = SledStore::open(dir).expect("open sled");
    Replica::open(Arc::new(store), ReplicaOptions::new(node)).expect("open replica")
}

async fn meta(r: &Replica, coll: &str) -> CollectionMeta {
    r.collections()
        .await
        .expect("collections")
        .into_iter()
        .find(|c| c.name == coll)
        .map(|c| c.meta)
        .unwrap_or_default()
}

/// A version of `situation` from `origin` at `counter`, with HLC `ms`, causal context `ctx`
/// and `value` (`None`: a tombstone), unsigned.
pub(super) fn remote(
    origin: &ReplicaId,
    counter: u64,
    key: &str,
    ms: u64,
    ctx: VersionVector,
    value: Option<&[u8]>,
) -> Version {
    Version {
        collection: "situation".into(),
        key: key.into(),
        dot: Dot::new(origin.clone(), counter),
        hlc: Hlc { ms, logical: 0 },
        context: ctx,
        value: value.map(<[u8]>::to_vec),
        author: None,
        signature: None,
    }
}

/// [`remote`] with no causal context, stamped 1,000 + `counter` ms (the purge and tree tests).
pub(super) fn remote_plain(
    origin: &ReplicaId,
    counter: u64,
    key: &str,
    value: Option<&[u8]>,
) -> Version {
    remote(
        origin,
        counter,
        key,
        1_000 + counter,
        VersionVector::new(),
        value,
    )
}

#[tokio::test]
async fn write_read_overwrite_delete() {
    let r = memory("hefei");
    let a = r
        .write("situation", "hefei/grain", Some(b"100t".to_vec()))
        .await
        .expect("write");
    assert_eq!(a.dot.counter, 1);
    assert_eq!(a.dot.origin, *r.id());
    let rec = r
        .get("situation", "hefei/grain")
        .await
        .expect("get")
        .expect("present");
    assert_eq!(rec.winner().value.as_deref(), Some(&b"100t"[..]));
    let b = r
        .write("situation", "hefei/grain", Some(b"90t".to_vec()))
        .await
        .expect("write");
    assert!(b.hlc > a.hlc);
    let rec = r
        .get("situation", "hefei/grain")
        .await
        .expect("get")
        .expect("present");
    assert_eq!(
        rec.siblings.len(),
        1,
        "a local write supersedes what the node holds"
    );
    assert_eq!(rec.winner().dot, b.dot);
    let m = meta(&r, "situation").await;
    assert_eq!(
        (m.keys, m.records, m.versions, m.vv.get(r.id())),
        (1, 1, 1, 2)
    );
    r.write("situation", "hefei/grain", None)
        .await
        .expect("delete");
    let rec = r
        .get("situation", "hefei/grain")
        .await
        .expect("get")
        .expect("tombstone kept");
    assert!(rec.is_deleted());
    let m = meta(&r, "situation").await;
    assert_eq!((m.keys, m.records, m.versions), (1, 0, 1));
    assert!(r.get("situation", "nothing").await.expect("get").is_none());
}

#[tokio::test]
async fn invalid_input_writes_nothing() {
    let store = Arc::new(MemoryStore::new());
    let mut opts = ReplicaOptions::new("hefei");
    opts.max_value_bytes = 10;
    let r = Replica::open(store, opts).expect("open");
    assert!(matches!(
        r.write("Bad!", "k", Some(vec![])).await,
        Err(ReplicaError::Name(_))
    ));
    assert!(matches!(
        r.write("c", "", Some(vec![])).await,
        Err(ReplicaError::Name(_))
    ));
    let long = "k".repeat(1025);
    assert!(matches!(
        r.write("c", &long, Some(vec![])).await,
        Err(ReplicaError::Name(_))
    ));
    assert!(matches!(
        r.write("c", "k", Some(vec![0; 11])).await,
        Err(ReplicaError::ValueTooLarge { len: 11, max: 10 })
    ));
    assert!(r.collections().await.expect("collections").is_empty());
}

#[tokio::test]
async fn concurrent_versions_are_siblings_with_one_winner_everywhere() {
    let a = memory("hefei");
    let b = memory("wuhu");
    let wa = a
        .write("situation", "k", Some(b"from hefei".to_vec()))
        .await
        .expect("write");
    let wb = b
        .write("situation", "k", Some(b"from wuhu".to_vec()))
        .await
        .expect("write");
    let va = a
        .get("situation", "k")
        .await
        .expect("get")
        .expect("present");
    let vb = b
        .get("situation", "k")
        .await
        .expect("get")
        .expect("present");
    let to_version = |w: &WriteAck, v: &[u8]| {
        let mut version = remote(
            &w.dot.origin,
            w.dot.counter,
            "k",
            w.hlc.ms,
            VersionVector::new(),
            Some(v),
        );
        // A system write: its author is its node.
        version.author = Some(w.dot.origin.node_name().to_owned());
        version
    };
    a.apply_remote(vec![to_version(&wb, b"from wuhu")], vec![])
        .await
        .expect("apply");
    b.apply_remote(vec![to_version(&wa, b"from hefei")], vec![])
        .await
        .expect("apply");
    let ra = a
        .get("situation", "k")
        .await
        .expect("get")
        .expect("present");
    let rb = b
        .get("situation", "k")
        .await
        .expect("get")
        .expect("present");
    assert_eq!(ra.siblings.len(), 2);
    assert_eq!(ra, rb, "same siblings, same winner first");
    assert_eq!(
        meta(&a, "situation").await.digest,
        meta(&b, "situation").await.digest
    );
    assert_ne!(va, ra);
    drop(vb);
    // A later write at either node supersedes both siblings.
    a.write("situation", "k", Some(b"settled".to_vec()))
        .await
        .expect("write");
    assert_eq!(
        a.get("situation", "k")
            .await
            .expect("get")
            .expect("present")
            .siblings
            .len(),
        1
    );
}

#[tokio::test]
async fn digest_depends_on_versions_not_order() {
    let o = ReplicaId::new("hefei", 1).expect("valid");
    let p = ReplicaId::new("wuhu", 2).expect("valid");
    let mut ctx = VersionVector::new();
    ctx.raise(&o, 1);
    let versions = vec![
        remote(&o, 1, "a", 10, VersionVector::new(), Some(b"1")),
        remote(&o, 2, "b", 11, VersionVector::new(), Some(b"2")),
        remote(&p, 1, "a", 12, ctx, Some(b"3")),
        remote(&p, 2, "c", 13, VersionVector::new(), None),
    ];
    let x = memory("x");
    let y = memory("y");
    x.apply_remote(
        versions.clone(),
        vec![("situation".to_owned(), o.clone(), 2)],
    )
    .await
    .expect("apply");
    // Another order; a context may only cover what is held (p:1's covers o:1), so p:1 comes
    // after o:1, with the vector advance that says so.
    for (v, complete) in [
        (&versions[3], vec![]),
        (&versions[1], vec![]),
        (&versions[0], vec![]),
        (&versions[2], vec![("situation".to_owned(), o.clone(), 2)]),
    ] {
        y.apply_remote(vec![v.clone()], complete)
            .await
            .expect("apply");
    }
    // Applying again is idempotent.
    let again = y
        .apply_remote(versions.clone(), vec![])
        .await
        .expect("apply");
    assert_eq!((again.applied, again.ignored), (0, 4));
    let (mx, my) = (meta(&x, "situation").await, meta(&y, "situation").await);
    assert_eq!(mx.digest, my.digest);
    assert_eq!((mx.keys, mx.records, mx.versions), (3, 2, 3));
    let z = memory("z");
    z.apply_remote(
        versions[..3].to_vec(),
        vec![("situation".to_owned(), o.clone(), 2)],
    )
    .await
    .expect("apply");
    assert_ne!(meta(&z, "situation").await.digest, mx.digest);
    let changed = Version {
        value: Some(b"other".to_vec()),
        ..versions[3].clone()
    };
    z.apply_remote(vec![changed], vec![]).await.expect("apply");
    assert_ne!(meta(&z, "situation").await.digest, mx.digest);
}

#[tokio::test]
async fn remote_versions_are_checked() {
    let r = memory("hefei");
    let o = ReplicaId::new("wuhu", 1).expect("valid");
    let far = now_ms() + 10 * 60 * 1000;
    let report = r
        .apply_remote(
            vec![
                remote(&o, 1, "k", far, VersionVector::new(), Some(b"x")),
                remote(&o, 0, "k", 1, VersionVector::new(), Some(b"x")),
                Version {
                    collection: "Bad".into(),
                    ..remote(&o, 2, "k", 1, VersionVector::new(), None)
                },
            ],
            vec![],
        )
        .await
        .expect("apply");
    assert_eq!(report.rejected.len(), 3);
    assert_eq!(report.applied, 0);
    assert!(r.get("situation", "k").await.expect("get").is_none());
    assert_eq!(r.stats().remote_rejected.load(Ordering::Relaxed), 3);
}

#[tokio::test]
async fn complete_through_raises_the_vector_and_skips_covered_dots() {
    let r = memory("hefei");
    let o = ReplicaId::new("wuhu", 1).expect("valid");
    r.apply_remote(
        vec![remote(&o, 1, "k", 5, VersionVector::new(), Some(b"x"))],
        vec![("situation".into(), o.clone(), 3)],
    )
    .await
    .expect("apply");
    assert_eq!(meta(&r, "situation").await.vv.get(&o), 3);
    let late = r
        .apply_remote(
            vec![remote(&o, 2, "j", 6, VersionVector::new(), Some(b"y"))],
            vec![],
        )
        .await
        .expect("apply");
    assert_eq!((late.applied, late.ignored), (0, 1));
}

#[tokio::test]
async fn scan_pages_skip_deleted_records() {
    let r = memory("hefei");
    for i in 0..25 {
        r.write("docs", &format!("k{i:02}"), Some(vec![i]))
            .await
            .expect("write");
    }
    r.write("docs", "k03", None).await.expect("delete");
    r.write("docs", "other", Some(vec![1]))
        .await
        .expect("write");
    let mut keys = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = r
            .scan("docs", "k", after.as_deref(), 10)
            .await
            .expect("scan");
        assert!(page.records.len() <= 10);
        keys.extend(page.records.iter().map(|rec| rec.key.clone()));
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert_eq!(keys.len(), 24);
    assert!(!keys.contains(&"k03".to_string()) && !keys.contains(&"other".to_string()));
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted);
}

#[tokio::test]
async fn sled_restart_keeps_every_acknowledged_write_and_identity() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (id, acks) = {
        let r = sled_at(dir.path(), "hefei");
        let mut acks = Vec::new();
        for i in 0..50u32 {
            let v = format!("value {i}").into_bytes();
            acks.push(
                r.write("situation", &format!("k{i}"), Some(v))
                    .await
                    .expect("write"),
            );
        }
        r.write("situation", "k7", None).await.expect("delete");
        let id = r.id().clone();
        r.close().await.expect("close");
        drop(r);
        (id, acks)
    };
    let r = sled_at(dir.path(), "hefei");
    assert_eq!(r.id(), &id);
    for (i, ack) in acks.iter().enumerate() {
        let rec = r
            .get("situation", &format!("k{i}"))
            .await
            .expect("get")
            .expect("kept");
        if i == 7 {
            assert!(rec.is_deleted());
        } else {
            assert_eq!(rec.winner().dot, ack.dot);
            assert_eq!(rec.winner().value, Some(format!("value {i}").into_bytes()));
        }
    }
    // The counter continues: no dot is reused after a restart.
    let next = r
        .write("situation", "k0", Some(vec![1]))
        .await
        .expect("write");
    assert_eq!(next.dot.counter, 52);
    assert!(next.hlc > acks[49].hlc);
    r.close().await.expect("close");
    drop(r);
    let err = SledStore::open(dir.path())
        .map(|s| Replica::open(Arc::new(s), ReplicaOptions::new("wuhu")));
    assert!(matches!(err, Ok(Err(ReplicaError::WrongNode { .. }))));
}

#[tokio::test]
async fn large_values_are_chunked_and_never_become_sled_blobs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = sled_at(dir.path(), "hefei");
    let big: Vec<u8> = (0..4 * 1024 * 1024u32)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    for i in 0..6 {
        r.write("documents", &format!("scan-{i}"), Some(big.clone()))
            .await
            .expect("write");
    }
    r.write("documents", "scan-0", Some(b"small".to_vec()))
        .await
        .expect("overwrite");
    let rec = r
        .get("documents", "scan-1")
        .await
        .expect("get")
        .expect("present");
    assert_eq!(rec.winner().value.as_deref(), Some(&big[..]));
    assert_eq!(r.store().unsynced_blob_files(), 0, "sled wrote blob files");
    // The superseded large value's chunks are gone.
    let m = meta(&r, "documents").await;
    assert_eq!(m.versions, 6);
    r.close().await.expect("close");
    drop(r);
    let r = sled_at(dir.path(), "hefei");
    let rec = r
        .get("documents", "scan-5")
        .await
        .expect("get")
        .expect("present");
    assert_eq!(rec.winner().value.as_deref(), Some(&big[..]));
    assert_eq!(r.store().unsynced_blob_files(), 0);
}

#[tokio::test]
async fn store_with_records_but_no_identity_is_refused() {
    let store = Arc::new(MemoryStore::new());
    let mut b = WriteBatch::default();
    b.put(b"Kjunk".to_vec(), b"x".to_vec());
    store.apply(b).expect("apply");
    let err = Replica::open(store, ReplicaOptions::new("hefei")).expect_err("must refuse");
    assert!(matches!(err, ReplicaError::Corrupt { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_sync_writers_share_flushes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = sled_at(dir.path(), "hefei");
    let mut tasks = Vec::new();
    for w in 0..64 {
        let r = r.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..10 {
                r.write("bench", &format!("w{w}-{i}"), Some(vec![0; 100]))
                    .await
                    .expect("write");
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let syncs = r.stats().syncs.load(Ordering::Relaxed);
    let writes = r.stats().synced_writes.load(Ordering::Relaxed);
    assert_eq!(writes, 640);
    assert!(
        syncs < writes,
        "group commit: {syncs} syncs for {writes} writes"
    );
    assert_eq!(meta(&r, "bench").await.records, 640);
}

#[tokio::test]
async fn periodic_mode_acknowledges_and_flushes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut opts = ReplicaOptions::new("hefei");
    opts.commit = CommitMode::Periodic(std::time::Duration::from_millis(20));
    let r =
        Replica::open(Arc::new(SledStore::open(dir.path()).expect("open")), opts).expect("open");
    let syncs = || r.stats().syncs.load(Ordering::Relaxed);
    r.write("c", "k", Some(b"v".to_vec())).await.expect("write");
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let first = syncs();
    assert!(first >= 1);
    // Idle: no sync without a write.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert_eq!(syncs(), first);
    // A write after the idle spell wakes the flusher again.
    r.write("c", "k2", Some(b"v".to_vec()))
        .await
        .expect("write");
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert!(syncs() > first, "the write after an idle spell was synced");
    r.close().await.expect("close");
    drop(r);
    let r = sled_at(dir.path(), "hefei");
    assert!(r.get("c", "k").await.expect("get").is_some());
    assert!(r.get("c", "k2").await.expect("get").is_some());
}

#[tokio::test]
async fn versions_since_streams_live_versions_in_counter_order() {
    let r = memory("hefei");
    for i in 0..10u8 {
        r.write("situation", &format!("k{}", i % 4), Some(vec![i]))
            .await
            .expect("write");
    }
    let me = r.id().clone();
    // k0..k3 were last written by counters 7..=10; 1..=6 are superseded.
    let (all, through) = r
        .versions_since("situation", &me, 0, 10, 100, 1 << 20)
        .await
        .expect("scan");
    assert_eq!(through, 10);
    let counters: Vec<u64> = all.iter().map(|v| v.dot.counter).collect();
    assert_eq!(counters, vec![7, 8, 9, 10]);
    assert_eq!(all[0].value, Some(vec![6]));
    assert_eq!(all[0].key, "k2");
    // Limits stop the scan early and say how far it got.
    let (two, through) = r
        .versions_since("situation", &me, 0, 10, 2, 1 << 20)
        .await
        .expect("scan");
    assert_eq!((two.len(), through), (2, 8));
    let (rest, through) = r
        .versions_since("situation", &me, 8, 10, 100, 1 << 20)
        .await
        .expect("scan");
    assert_eq!(
        rest.iter().map(|v| v.dot.counter).collect::<Vec<_>>(),
        vec![9, 10]
    );
    assert_eq!(through, 10);
    // Nothing above the range; an unknown origin has nothing.
    let (none, through) = r
        .versions_since("situation", &me, 10, 10, 100, 1 << 20)
        .await
        .expect("scan");
    assert!(none.is_empty() && through == 10);
    let other = ReplicaId::new("wuhu", 1).expect("valid");
    let (none, _) = r
        .versions_since("situation", &other, 0, 5, 100, 1 << 20)
        .await
        .expect("scan");
    assert!(none.is_empty());
    // A replica applying what was streamed converges to the same digest.
    let copy = memory("copy");
    copy.apply_remote(all, vec![("situation".into(), me.clone(), 10)])
        .await
        .expect("apply");
    assert_eq!(
        meta(&copy, "situation").await.digest,
        meta(&r, "situation").await.digest
    );
    assert_eq!(meta(&copy, "situation").await.vv.get(&me), 10);
}

#[tokio::test]
async fn durable_state_is_published_after_syncs_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = sled_at(dir.path(), "hefei");
    let mut durable = r.durable();
    r.write("situation", "k", Some(b"v".to_vec()))
        .await
        .expect("write");
    durable.changed().await.expect("published");
    let state = durable.borrow_and_update().clone();
    assert_eq!(state.vvs.get("situation").map(|vv| vv.get(r.id())), Some(1));
    assert!(state.generation >= 1);
}

#[tokio::test]
async fn repair_applies_versions_the_vector_covers() {
    let r = memory("hefei");
    let o = ReplicaId::new("wuhu", 1).expect("valid");
    // The vector says everything through 5 arrived, but the version itself is missing.
    r.apply_remote(vec![], vec![("situation".into(), o.clone(), 5)])
        .await
        .expect("apply");
    let v = remote(&o, 3, "lost", 5, VersionVector::new(), Some(b"x"));
    let normal = r
        .apply_remote(vec![v.clone()], vec![])
        .await
        .expect("apply");
    assert_eq!((normal.applied, normal.ignored), (0, 1));
    let repaired = r.apply_repair(vec![v.clone()]).await.expect("repair");
    assert_eq!(repaired.applied, 1);
    assert!(r.get("situation", "lost").await.expect("get").is_some());
    let again = r.apply_repair(vec![v]).await.expect("repair");
    assert_eq!((again.applied, again.ignored), (0, 1));
}

#[tokio::test]
async fn own_writes_are_offered_once_durable_relayed_ones_once_applied() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut opts = ReplicaOptions::new("hub");
    // A flush interval far longer than the test: nothing is flushed unless asked.
    opts.commit = CommitMode::Periodic(std::time::Duration::from_secs(3600));
    let r =
        Replica::open(Arc::new(SledStore::open(dir.path()).expect("open")), opts).expect("open");
    let offer = r.durable();
    r.write("situation", "own", Some(b"v".to_vec()))
        .await
        .expect("write");
    let o = ReplicaId::new("wuhu", 1).expect("valid");
    r.apply_remote(
        vec![remote(
            &o,
            1,
            "relayed",
            5,
            VersionVector::new(),
            Some(b"x"),
        )],
        vec![("situation".into(), o.clone(), 1)],
    )
    .await
    .expect("apply");
    let state = offer.borrow().clone();
    let vv = state.vvs.get("situation").cloned().unwrap_or_default();
    assert_eq!(vv.get(&o), 1, "relayed versions are offered once applied");
    assert_eq!(vv.get(r.id()), 0, "own writes wait for a flush");
    r.sync().await.expect("sync");
    let vv = offer
        .borrow()
        .vvs
        .get("situation")
        .cloned()
        .unwrap_or_default();
    assert_eq!(vv.get(r.id()), 1);
}

#[tokio::test]
async fn versions_superseded_by_unflushed_writes_are_still_offered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut opts = ReplicaOptions::new("hefei");
    opts.commit = CommitMode::Periodic(std::time::Duration::from_secs(3600));
    let r =
        Replica::open(Arc::new(SledStore::open(dir.path()).expect("open")), opts).expect("open");
    let me = r.id().clone();
    let big = vec![7u8; 20_000];
    r.write("situation", "k", Some(b"old".to_vec()))
        .await
        .expect("write");
    r.write("situation", "doc", Some(big.clone()))
        .await
        .expect("write");
    r.sync().await.expect("sync");
    r.write("situation", "k", Some(b"new".to_vec()))
        .await
        .expect("overwrite");
    r.write("situation", "doc", None).await.expect("delete");
    // Not flushed yet: a crash could lose the new writes, so the old versions are still sent.
    let (vs, _) = r
        .versions_since("situation", &me, 0, 4, 100, 1 << 20)
        .await
        .expect("load");
    let counters: Vec<u64> = vs.iter().map(|v| v.dot.counter).collect();
    assert_eq!(counters, vec![1, 2, 3, 4]);
    assert_eq!(vs[1].value.as_deref(), Some(&big[..]));
    r.sync().await.expect("sync");
    let (vs, _) = r
        .versions_since("situation", &me, 0, 4, 100, 1 << 20)
        .await
        .expect("load");
    assert_eq!(
        vs.iter().map(|v| v.dot.counter).collect::<Vec<_>>(),
        vec![3, 4]
    );
}

#[tokio::test]
async fn every_local_version_is_signed_even_one_its_own_group_superseded() {
    use crate::pki::KeyType;
    use crate::signing::tests::Pki;
    use officesync_protocol::policy::Policy;

    let pki = Pki::new();
    let signer = Arc::new(pki.signer("hefei", KeyType::Ed25519));
    let ring = pki.keyring(Policy::default());
    ring.learn(signer.cert_der()).expect("learn");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut opts = ReplicaOptions::new("hefei");
    // Nothing becomes durable, so every superseded version is still offered (and checked).
    opts.commit = CommitMode::Periodic(std::time::Duration::from_secs(3600));
    opts.signer = Some(signer);
    let r =
        Replica::open(Arc::new(SledStore::open(dir.path()).expect("open")), opts).expect("open");
    // Many concurrent writes to few keys: groups large enough to sign on two threads, and
    // writes superseded within the group that made them.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..256u32 {
        let r = r.clone();
        tasks.spawn(async move {
            r.write(
                "situation",
                &format!("k{}", i % 8),
                Some(i.to_be_bytes().to_vec()),
            )
            .await
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("task").expect("write");
    }
    let me = r.id().clone();
    let (vs, _) = r
        .versions_since("situation", &me, 0, 256, 1_000, 1 << 20)
        .await
        .expect("load");
    assert_eq!(vs.len(), 256, "every version is offered until durable");
    assert!(
        vs.iter().all(|v| v.signature.is_some()),
        "unsigned versions"
    );
    assert_eq!(ring.check(&vs), None, "every signature verifies");
    assert!(
        r.stats().syncs.load(std::sync::atomic::Ordering::Relaxed) == 0,
        "nothing was synced, so superseded versions came from the groups themselves"
    );
}

#[tokio::test]
async fn a_local_write_the_merge_would_drop_is_an_error_not_an_ack() {
    // A sibling whose context claims this node's future dots (as a poisoned context would):
    // planted straight in the store, past every check that keeps it out.
    let store = Arc::new(MemoryStore::new());
    let r = Replica::open(store.clone(), ReplicaOptions::new("hefei")).expect("open");
    let rogue = ReplicaId::new("rogue-office", 9).expect("valid");
    let poisoned = encoding::StoredSibling {
        header: officesync_protocol::VersionHeader {
            dot: Dot::new(rogue, 1),
            hlc: Hlc { ms: 5, logical: 0 },
            context: [(r.id().clone(), u64::MAX)].into_iter().collect(),
            value: officesync_protocol::ValueMeta::of(Some(b"x")),
        },
        body: encoding::Body::Inline(b"x".to_vec()),
        author: None,
        signature: None,
    };
    let mut batch = WriteBatch::default();
    batch.put(
        keys::record("situation", "k"),
        officesync_protocol::codec::encode(&vec![poisoned]).expect("encode"),
    );
    store.apply(batch).expect("plant");
    let err = r
        .write("situation", "k", Some(b"honest".to_vec()))
        .await
        .expect_err("refused, not acknowledged");
    assert!(matches!(err, ReplicaError::WriteSuperseded { .. }), "{err}");
    assert_eq!(r.stats().local_refused.load(Ordering::Relaxed), 1);
    // Nothing was written: the counter was not spent and other keys still take writes.
    let ok = r
        .write("situation", "other", Some(b"fine".to_vec()))
        .await
        .expect("write");
    assert_eq!(ok.dot.counter, 1);
}

#[tokio::test]
async fn received_contexts_must_cover_only_held_dots() {
    let r = memory("hefei");
    let o = ReplicaId::new("wuhu", 1).expect("valid");
    let p = ReplicaId::new("beijing-office", 1).expect("valid");
    let covers_p5: VersionVector = [(p.clone(), 5)].into_iter().collect();
    // p:5 is not held: the whole request is refused, nothing applied, vector unchanged.
    let err = r
        .apply_remote(
            vec![
                remote(&o, 1, "a", 1, VersionVector::new(), Some(b"1")),
                remote(&o, 2, "k", 2, covers_p5.clone(), Some(b"2")),
            ],
            vec![("situation".into(), o.clone(), 2)],
        )
        .await
        .expect_err("refused");
    assert!(matches!(err, ReplicaError::CausalContext { .. }), "{err}");
    assert_eq!(meta(&r, "situation").await.vv.get(&o), 0);
    assert!(r.get("situation", "a").await.expect("get").is_none());
    // More of this node's own origin than it issued: refused too.
    let own: VersionVector = [(r.id().clone(), 1)].into_iter().collect();
    let err = r
        .apply_remote(
            vec![remote(&o, 1, "k", 2, own, Some(b"2"))],
            vec![("situation".into(), o.clone(), 1)],
        )
        .await
        .expect_err("refused");
    assert!(matches!(err, ReplicaError::CausalContext { .. }), "{err}");
    // Once p:5 is held (here: completed in the same request), the same version is fine.
    let report = r
        .apply_remote(
            vec![
                remote(&p, 5, "k", 1, VersionVector::new(), Some(b"p")),
                remote(&o, 1, "k", 2, covers_p5, Some(b"o")),
            ],
            vec![
                ("situation".into(), p.clone(), 5),
                ("situation".into(), o.clone(), 1),
            ],
        )
        .await
        .expect("apply");
    assert_eq!(report.applied, 2);
    let rec = r
        .get("situation", "k")
        .await
        .expect("get")
        .expect("present");
    assert_eq!(rec.siblings.len(), 1, "o:1 superseded p:5");
}

#[tokio::test]
async fn siblings_per_key_are_capped() {
    let r = memory("hefei");
    let origin = |i: usize| ReplicaId::new(&format!("office-{i}"), 1).expect("valid");
    let n = writer::MAX_SIBLINGS + 5;
    let versions: Vec<Version> = (0..n)
        .map(|i| remote(&origin(i), 1, "k", 10, VersionVector::new(), Some(b"v")))
        .collect();
    let complete = (0..n)
        .map(|i| ("situation".to_owned(), origin(i), 1))
        .collect();
    let report = r.apply_remote(versions, complete).await.expect("apply");
    assert_eq!(report.applied, writer::MAX_SIBLINGS as u64);
    assert_eq!(report.rejected.len(), 5);
    assert!(
        report.rejected[0].1.contains("siblings"),
        "{:?}",
        report.rejected
    );
    let rec = r
        .get("situation", "k")
        .await
        .expect("get")
        .expect("present");
    assert_eq!(rec.siblings.len(), writer::MAX_SIBLINGS);
    // A local write replaces them all.
    r.write("situation", "k", Some(b"one".to_vec()))
        .await
        .expect("write");
    let rec = r
        .get("situation", "k")
        .await
        .expect("get")
        .expect("present");
    assert_eq!(rec.siblings.len(), 1);
}

#[tokio::test]
async fn a_sibling_record_stays_below_the_large_value_threshold() {
    // Two concurrent versions, each with a context of 850 long-named origins: together they
    // would make a record past MAX_RECORD_BYTES, so the second is refused.
    let r = memory("hefei");
    let named = |i: usize| ReplicaId::new(&format!("{i:0>50}"), 1).expect("valid");
    let ctx: VersionVector = (0..850).map(|i| (named(i), 1)).collect();
    let mut complete: Vec<(String, ReplicaId, u64)> = (0..850)
        .map(|i| ("situation".to_owned(), named(i), 1))
        .collect();
    let (a, b) = (named(900), named(901));
    complete.push(("situation".into(), a.clone(), 1));
    complete.push(("situation".into(), b.clone(), 1));
    let report = r
        .apply_remote(
            vec![
                remote(&a, 1, "k", 10, ctx.clone(), Some(b"a")),
                remote(&b, 1, "k", 11, ctx, Some(b"b")),
            ],
            complete,
        )
        .await
        .expect("apply");
    assert_eq!(report.applied, 1);
    assert_eq!(report.rejected.len(), 1);
    assert!(
        report.rejected[0].1.contains("bytes"),
        "{:?}",
        report.rejected
    );
}

#[tokio::test]
async fn a_format_1_store_is_read_as_it_is_and_marked_format_2() {
    let store = Arc::new(MemoryStore::new());
    let r = Replica::open(store.clone(), ReplicaOptions::new("hefei")).expect("open");
    r.write("situation", "new", Some(b"now".to_vec()))
        .await
        .expect("write");
    r.close().await.expect("close");
    drop(r);
    // What a build of format 1 left: a sibling record without author or signature (the same
    // bincode as a header and a body), under the format byte 1, and the store marked 1.
    let origin = ReplicaId::new("wuhu", 3).expect("valid");
    let header = officesync_protocol::VersionHeader {
        dot: Dot::new(origin, 1),
        hlc: Hlc { ms: 5, logical: 0 },
        context: VersionVector::new(),
        value: officesync_protocol::ValueMeta::of(Some(b"legacy")),
    };
    let mut old = officesync_protocol::codec::encode(&vec![(
        header,
        encoding::Body::Inline(b"legacy".to_vec()),
    )])
    .expect("encode");
    old[0] = 1;
    let mut batch = WriteBatch::default();
    batch.put(keys::record("situation", "old"), old);
    batch.put(keys::meta("format"), vec![1]);
    store.apply(batch).expect("plant");

    let r = Replica::open(store.clone(), ReplicaOptions::new("hefei")).expect("reopen");
    assert_eq!(
        store.get(&keys::meta("format")).expect("get").as_deref(),
        Some(&[officesync_protocol::codec::FORMAT_VERSION][..]),
        "the store is marked with the format it now holds"
    );
    let old = r
        .get("situation", "old")
        .await
        .expect("read")
        .expect("held");
    assert_eq!(old.winner().value.as_deref(), Some(&b"legacy"[..]));
    assert_eq!(old.winner().author, None);
    let new = r
        .get("situation", "new")
        .await
        .expect("read")
        .expect("held");
    assert_eq!(new.winner().author.as_deref(), Some("hefei"));
    // A write over the old record supersedes it, in the new format.
    r.write_as("situation", "old", Some(b"v2".to_vec()), "li@hefei".into())
        .await
        .expect("write");
    let rec = r
        .get("situation", "old")
        .await
        .expect("read")
        .expect("held");
    assert_eq!(rec.siblings.len(), 1);
    assert_eq!(rec.winner().author.as_deref(), Some("li@hefei"));
}

#[test]
fn the_sibling_record_bound_counts_the_author_and_signature_a_version_brings() {
    let named = |i: usize| ReplicaId::new(&format!("{i:0>50}"), 1).expect("valid");
    let mut held = encoding::StoredSibling {
        header: officesync_protocol::VersionHeader {
            dot: Dot::new(named(100_000), 1),
            hlc: Hlc { ms: 1, logical: 0 },
            context: VersionVector::new(),
            value: officesync_protocol::ValueMeta::of(Some(b"x")),
        },
        body: encoding::Body::Inline(b"x".to_vec()),
        author: None,
        signature: None,
    };
    let mut bare = remote(&named(100_001), 1, "k", 2, VersionVector::new(), Some(b"y"));
    let header = bare.header();
    let base = officesync_protocol::codec::encode(&header)
        .expect("encode")
        .len()
        + 1
        + 16;
    // Grow the held sibling until the new version fits only without 256 bytes of author and
    // signature.
    let mut i = 0;
    while officesync_protocol::codec::encode(&held)
        .expect("encode")
        .len()
        + base
        + 256
        <= writer::MAX_RECORD_BYTES
    {
        held.header.context.raise(&named(i), 1);
        i += 1;
    }
    let siblings = vec![held];
    assert_eq!(writer::room_for(&siblings, &header, &bare), Ok(()));
    bare.author = Some(format!("{}@{}", "u".repeat(64), "0".repeat(50)));
    bare.signature = Some(vec![7; 128]);
    let err = writer::room_for(&siblings, &header, &bare).expect_err("past the bound");
    assert!(err.contains("bytes"), "{err}");
}

#[tokio::test]
async fn a_whole_apply_is_refused_whole_naming_the_version() {
    let r = memory("hefei");
    let origin = |i: usize| ReplicaId::new(&format!("office-{i}"), 1).expect("valid");
    let complete = |n: usize| -> Vec<(String, ReplicaId, u64)> {
        (0..n)
            .map(|i| ("situation".to_owned(), origin(i), 1))
            .collect()
    };
    // One sibling too many: the replication path applies the rest, a whole apply nothing.
    let n = writer::MAX_SIBLINGS + 1;
    let versions: Vec<Version> = (0..n)
        .map(|i| remote(&origin(i), 1, "k", 10, VersionVector::new(), Some(b"v")))
        .collect();
    let e = r
        .apply_whole(versions.clone(), complete(n))
        .await
        .expect_err("refused");
    let ReplicaError::Refused {
        key, dot, reason, ..
    } = &e
    else {
        panic!("{e:?}");
    };
    assert_eq!(
        (key.as_str(), dot.clone()),
        ("k", format!("{}:1", origin(n - 1)))
    );
    assert!(reason.contains("siblings"), "{reason}");
    // Not even an empty state of the collection was written.
    assert!(r.collections().await.expect("collections").is_empty());
    // A version far ahead of the clock.
    let ahead = remote(
        &origin(0),
        1,
        "k",
        now_ms() + 86_400_000,
        VersionVector::new(),
        None,
    );
    let e = r
        .apply_whole(vec![ahead], complete(1))
        .await
        .expect_err("refused");
    assert!(matches!(e, ReplicaError::Refused { .. }), "{e:?}");
    // Within the limits, a whole apply is an apply, and a second one changes nothing.
    let fits: Vec<Version> = versions[..writer::MAX_SIBLINGS].to_vec();
    let report = r
        .apply_whole(fits.clone(), complete(writer::MAX_SIBLINGS))
        .await
        .expect("apply");
    assert_eq!(report.applied, writer::MAX_SIBLINGS as u64);
    let before = meta(&r, "situation").await;
    let again = r
        .apply_whole(fits, complete(writer::MAX_SIBLINGS))
        .await
        .expect("again");
    assert_eq!(again.applied, 0);
    assert_eq!(meta(&r, "situation").await, before);
}

/// Every live version of `origin` in `situation`, paged `page` at a time.
async fn all_versions(r: &Replica, origin: &ReplicaId, through: u64, page: usize) -> Vec<u64> {
    let mut counters = Vec::new();
    let mut after = 0;
    while after < through {
        let (vs, scanned) = r
            .versions_since("situation", origin, after, through, page, 1 << 30)
            .await
            .expect("load");
        assert!(scanned > after, "no progress after {after}");
        counters.extend(vs.iter().map(|v| v.dot.counter));
        after = scanned;
    }
    counters
}

#[tokio::test]
async fn the_dot_index_pages_across_rows_and_forgets_superseded_dots() {
    let r = memory("hefei");
    let me = r.id().clone();
    // 300 keys, then 100 of them again: counters 1..=400, of which 1..=100 are superseded.
    for i in 0..300 {
        r.write("situation", &format!("k{i}"), Some(vec![1]))
            .await
            .expect("write");
    }
    for i in 0..100 {
        r.write("situation", &format!("k{i}"), Some(vec![2]))
            .await
            .expect("write");
    }
    let want: Vec<u64> = (101..=400).collect();
    for page in [1, 7, 64, 65, 1000] {
        assert_eq!(all_versions(&r, &me, 400, page).await, want, "page {page}");
    }
    // A window inside one row and one across a row boundary.
    let (vs, _) = r
        .versions_since("situation", &me, 120, 130, 100, 1 << 30)
        .await
        .expect("load");
    assert_eq!(
        vs.iter().map(|v| v.dot.counter).collect::<Vec<_>>(),
        (121..=130).collect::<Vec<_>>()
    );
    let (vs, _) = r
        .versions_since("situation", &me, 190, 200, 100, 1 << 30)
        .await
        .expect("load");
    assert_eq!(
        vs.iter().map(|v| v.dot.counter).collect::<Vec<_>>(),
        (191..=200).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_per_dot_index_of_an_older_build_moves_into_rows_at_open() {
    let store: Arc<dyn crate::store::Store> = Arc::new(MemoryStore::new());
    let r = Replica::open(store.clone(), ReplicaOptions::new("hefei")).expect("open");
    let me = r.id().clone();
    for i in 0..150 {
        r.write("situation", &format!("k{i}"), Some(vec![1]))
            .await
            .expect("write");
    }
    r.write("situation", "k0", None).await.expect("delete");
    let before = all_versions(&r, &me, 151, 1000).await;
    assert_eq!(before.len(), 150);
    r.close().await.expect("close");
    drop(r);
    // Rewrite the index as older builds kept it: one row a dot.
    let rows = store
        .range(&[keys::DOT_BLOCK], Some(&[keys::DOT_BLOCK + 1]), usize::MAX)
        .expect("rows");
    assert!(rows.len() >= 3, "150 dots span three rows");
    let mut batch = WriteBatch::default();
    for (k, row) in rows {
        let block = keys::counter_of_dot_key(&k).expect("block");
        for (offset, key) in dots::decode_row(&row).expect("row") {
            let counter = dots::counter_at(block, offset);
            batch.put(
                keys::dot("situation", &Dot::new(me.clone(), counter)),
                key.into_bytes(),
            );
        }
        batch.remove(k);
    }
    store.apply(batch).expect("apply");

    let r = Replica::open(store.clone(), ReplicaOptions::new("hefei")).expect("reopen");
    assert_eq!(all_versions(&r, &me, 151, 1000).await, before);
    let left = store
        .range(&[keys::DOT], Some(&[keys::DOT + 1]), usize::MAX)
        .expect("old rows");
    assert!(left.is_empty(), "old per-dot rows are gone");
    // And the index goes on: a new write is found, a superseded one is not.
    r.write("situation", "k1", Some(vec![3]))
        .await
        .expect("write");
    let after = all_versions(&r, &me, 152, 1000).await;
    assert!(after.contains(&152) && !after.contains(&2), "{after:?}");
}

/// The offers replication sees: own writes only once synced, other origins' at once; a sync
/// with nothing new, and a group that changes nothing offerable, publish nothing.
#[test]
fn offers_hold_back_own_writes_until_synced_and_idle_syncs_publish_nothing() {
    let own = ReplicaId::new("hefei", 1).expect("valid name");
    let other = ReplicaId::new("wuhu", 2).expect("valid name");
    let vv = |o: u64, t: u64| -> VersionVector {
        [(own.clone(), o), (other.clone(), t)].into_iter().collect()
    };
    let cell = DurableCell::default();
    let mut rx = cell.published.subscribe();
    let mut recovered = DurableState::default();
    recovered.vvs.insert("situation".into(), vv(3, 5));
    cell.init(own.clone(), recovered);
    assert_eq!(rx.borrow_and_update().vvs["situation"], vv(3, 5));

    // A group applies own write 4 and wuhu's 6: wuhu's is offered at once, ours is not.
    cell.applied(2, [("situation".to_owned(), vv(4, 6))].into_iter());
    assert!(rx.has_changed().expect("sender alive"));
    assert_eq!(rx.borrow_and_update().vvs["situation"], vv(3, 6));
    let synced = cell.snapshot();
    assert_eq!(synced, vec![("situation".to_owned(), 4)]);
    cell.publish(synced);
    assert_eq!(rx.borrow_and_update().vvs["situation"], vv(4, 6));

    // Idle: another sync of the same state publishes nothing.
    cell.publish(cell.snapshot());
    assert!(!rx.has_changed().expect("sender alive"));

    // A new collection of only our own writes offers nothing of ours until synced.
    cell.applied(3, [("letters".to_owned(), vv(2, 0))].into_iter());
    assert_eq!(
        rx.borrow_and_update().vvs["letters"],
        VersionVector::new(),
        "own writes of a new collection are held back"
    );
    cell.publish(cell.snapshot());
    assert_eq!(rx.borrow_and_update().vvs["letters"], vv(2, 0));
}
