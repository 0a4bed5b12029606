//! The hash-tree repair of protocol 3: a pair repairs a few differences among many with
//! traffic in proportion to them; a protocol-2 peer gets the full reconciliation; tree
//! messages a hostile peer could send out of turn are refused.

use super::pair::{Pair, Store};
use super::*;
use crate::tree::{leaf_of, node_of_leaf, FANOUT, LEVELS};
use crate::wire::{
    DigestRequest, FullRepair, RepairApplied, RepairBatch, TreeReply, TreeRequest, MAX_TREE_PARENTS,
};

/// `n` versions of each of the hub and the spoke, with keys `origin/counter`.
fn both_wrote(n: u64) -> Store {
    let mut s = Store::default();
    for c in 1..=n {
        s.write("hub", c);
        s.write("spoke", c);
    }
    s
}

/// The spoke lost 5 of the hub's versions and the hub 5 of the spoke's: ten differences
/// behind equal vectors. Returns the spoke's and the hub's stores.
fn ten_lost(n: u64) -> [Store; 2] {
    let full = both_wrote(n);
    let (mut spoke, mut hub) = (full.clone(), full);
    for i in 0..5 {
        spoke.versions.remove(&Dot::new(rid("hub"), 7 + i * 331));
        hub.versions.remove(&Dot::new(rid("spoke"), 11 + i * 397));
    }
    [spoke, hub]
}

/// Verifies the collection from the spoke until it reports, on a pair that has settled;
/// returns the bytes both sides sent for it and the outcome.
fn verify(p: &mut Pair) -> (usize, Vec<Event>) {
    p.run();
    drain_events(&mut p.s[0]);
    let before = p.sent[0] + p.sent[1];
    p.kinds.clear();
    p.s[0].request_verify(COLL);
    p.run();
    (p.sent[0] + p.sent[1] - before, drain_events(&mut p.s[0]))
}

fn repaired(events: &[Event]) -> bool {
    events.contains(&Event::Verified {
        collection: COLL.into(),
        outcome: VerifyOutcome::Repaired,
    })
}

#[test]
fn ten_differences_among_thousands_cost_about_the_difference() {
    let n = 2_000;
    let mut tree = Pair::speaking(ten_lost(n), [false, true], PROTOCOL_VERSION, 512);
    let (tree_bytes, events) = verify(&mut tree);
    assert!(repaired(&events), "{events:?}");
    assert_eq!(tree.store[0].versions, tree.store[1].versions);
    assert_eq!(tree.store[0].digest(), tree.store[1].digest());
    assert!(tree.kinds.contains_key("tree_request"), "{:?}", tree.kinds);
    assert!(!tree.kinds.contains_key("restart"), "{:?}", tree.kinds);
    let sent: u64 = tree.s.iter().map(|s| s.status().repair_versions_sent).sum();
    assert!(
        (10..=40).contains(&sent),
        "versions of the differing leaves only: {sent}"
    );
    assert_eq!(tree.s[0].status().tree_repairs, 1);
    // No vector moved, nothing was applied twice but the lost versions.
    assert_eq!(tree.store[0].vv, tree.store[1].vv);

    // The same divergence with a node of protocol 2: both re-stream everything.
    let mut full = Pair::speaking(ten_lost(n), [false, true], 2, 512);
    let (full_bytes, events) = verify(&mut full);
    assert!(repaired(&events), "{events:?}");
    assert!(full.kinds.contains_key("restart"), "{:?}", full.kinds);
    assert!(!full.kinds.contains_key("tree_request"), "{:?}", full.kinds);
    assert_eq!(full.store[0].versions, full.store[1].versions);
    assert!(
        tree_bytes * 20 < full_bytes,
        "tree repair {tree_bytes} B against full reconciliation {full_bytes} B"
    );
}

#[test]
fn both_sides_descending_one_collection_at_once_converge() {
    let mut p = Pair::speaking(ten_lost(300), [false, true], PROTOCOL_VERSION, 64);
    p.run();
    p.s[0].request_verify(COLL);
    p.s[1].request_verify(COLL);
    p.run();
    assert_eq!(p.store[0].versions, p.store[1].versions);
    assert!(!p.s[0].is_closed() && !p.s[1].is_closed());
    for s in &mut p.s {
        let events = drain_events(s);
        assert!(
            events.iter().any(|e| matches!(e, Event::Verified { .. })),
            "{events:?}"
        );
    }
}

#[test]
fn a_divergence_the_tree_cannot_see_gets_a_full_reconciliation() {
    // The spoke's store answers tree digests equal to the hub's whatever it holds (a damaged
    // tree): the descent finds nothing, the follow-up round still differs, and the full
    // reconciliation repairs it.
    let [spoke, hub] = ten_lost(200);
    let mut p = Pair::speaking([spoke, hub.clone()], [false, true], PROTOCOL_VERSION, 64);
    p.run();
    p.s[0].request_verify(COLL);
    for _ in 0..100_000 {
        let mut moved = false;
        while let Some(a) = p.s[0].poll_action() {
            moved = true;
            match a {
                Action::TreeDigests {
                    collection,
                    level,
                    parents,
                } => {
                    let leaves = hub.versions.values().map(|v| {
                        let e = Digest::element(&v.key, &v.dot, &ValueMeta::of(v.value.as_deref()));
                        (leaf_of(&v.key), e)
                    });
                    let digests = crate::tree::child_digests(level, &parents, leaves);
                    p.s[0].handle_tree_digests(&collection, level, &parents, digests);
                }
                a => p.store[0].run(&mut p.s[0], a),
            }
        }
        if !p.step(usize::MAX) && !moved {
            break;
        }
    }
    let events = drain_events(&mut p.s[0]);
    assert!(
        events.contains(&Event::Verified {
            collection: COLL.into(),
            outcome: VerifyOutcome::StillDifferent
        }),
        "{events:?}"
    );
    assert!(p.kinds.contains_key("full_repair"), "{:?}", p.kinds);
    assert_eq!(p.store[0].versions, p.store[1].versions);
}

/// An acceptor of protocol 3 that answered a peer's digest round "different" at equal
/// (empty) vectors: armed for the peer's descent.
fn armed_acceptor() -> Session {
    let mut s = established_acceptor("spoke", false);
    s.handle_frame(
        StreamKind::Control,
        DigestRequest {
            collection: COLL.into(),
            digest: Digest([9; 32]),
            vv: VersionVector::new(),
        }
        .into(),
        3,
    );
    assert_eq!(
        s.poll_action(),
        Some(Action::Digest {
            collection: COLL.into()
        })
    );
    s.handle_local_digest(COLL, Digest::default(), VersionVector::new());
    drain_tx(&mut s);
    drain_events(&mut s);
    s
}

/// Sends a tree request of `level` under `parents` with digests unlike any store's, answers
/// the store action with empty digests and returns the reply's differing nodes.
fn descend(s: &mut Session, level: u8, parents: Vec<u32>) -> Vec<u32> {
    let digests = vec![Digest([1; 32]); parents.len() * FANOUT as usize];
    s.handle_frame(
        StreamKind::Control,
        TreeRequest {
            collection: COLL.into(),
            level,
            parents: parents.clone(),
            digests,
        }
        .into(),
        4,
    );
    let Some(Action::TreeDigests { parents: p, .. }) = s.poll_action() else {
        panic!("no tree digests asked");
    };
    assert_eq!(p, parents);
    let empty = vec![Digest::default(); parents.len() * FANOUT as usize];
    s.handle_tree_digests(COLL, level, &parents, empty);
    drain_tx(s)
        .into_iter()
        .find_map(|(_, m)| match m.into_v2() {
            MessageV2::TreeReply(r) => Some(r.differing),
            _ => None,
        })
        .expect("a tree reply")
}

/// An armed acceptor that has descended with the peer to the leaf of key `k1`: the leaf
/// exchange is open.
fn exchanging_acceptor() -> Session {
    let mut s = armed_acceptor();
    let leaf = leaf_of("k1");
    let mut parents = vec![0];
    for level in 1..=LEVELS {
        let differing = descend(&mut s, level, parents);
        assert_eq!(differing.len(), FANOUT as usize, "every child differs");
        parents = vec![node_of_leaf(leaf, level)];
    }
    s
}

#[test]
fn tree_messages_out_of_turn_are_refused() {
    let request = || TreeRequest {
        collection: COLL.into(),
        level: 1,
        parents: vec![0],
        digests: vec![Digest::default(); FANOUT as usize],
    };
    // Nothing armed: every tree message is out of turn.
    let out_of_turn: Vec<(StreamKind, Message)> = vec![
        (StreamKind::Control, request().into()),
        (
            StreamKind::Control,
            TreeReply {
                collection: COLL.into(),
                level: 1,
                differing: vec![3],
            }
            .into(),
        ),
        (
            StreamKind::Bulk,
            RepairBatch {
                collection: COLL.into(),
                versions: vec![version("spoke", 1)],
                last: true,
                requester: true,
            }
            .into(),
        ),
        (
            StreamKind::Control,
            RepairApplied {
                collection: COLL.into(),
                requester: false,
            }
            .into(),
        ),
        (
            StreamKind::Control,
            FullRepair {
                collection: COLL.into(),
            }
            .into(),
        ),
    ];
    for (stream, m) in out_of_turn {
        let kind = m.kind();
        let code = refused(established_acceptor("spoke", false), stream, m);
        assert_eq!(code, ErrorCode::Malformed, "{kind}");
    }
    // Malformed tree messages, even when armed.
    let malformed: Vec<Message> = vec![
        TreeRequest {
            level: 0,
            ..request()
        }
        .into(),
        TreeRequest {
            level: LEVELS + 1,
            ..request()
        }
        .into(),
        TreeRequest {
            digests: vec![Digest::default(); 3],
            ..request()
        }
        .into(),
        TreeRequest {
            level: 2,
            parents: vec![5, 5],
            digests: vec![Digest::default(); 2 * FANOUT as usize],
            ..request()
        }
        .into(),
        TreeRequest {
            level: 2,
            parents: vec![16],
            ..request()
        }
        .into(),
        TreeRequest {
            level: 4,
            parents: (0..MAX_TREE_PARENTS as u32 + 1).collect(),
            digests: vec![Digest::default(); (MAX_TREE_PARENTS + 1) * FANOUT as usize],
            ..request()
        }
        .into(),
        TreeRequest {
            parents: vec![],
            digests: vec![],
            ..request()
        }
        .into(),
        RepairBatch {
            collection: COLL.into(),
            versions: vec![],
            last: false,
            requester: true,
        }
        .into(),
    ];
    for m in malformed {
        let code = refused(armed_acceptor(), StreamKind::Control, m.clone());
        assert_eq!(code, ErrorCode::Malformed, "{m:?}");
    }
    // A session of protocol 2 takes no tree message at all.
    let mut old = acceptor("spoke", false);
    old.handle_frame(
        StreamKind::Control,
        Hello {
            protocol: 2,
            ..hello("spoke")
        }
        .into(),
        1,
    );
    old.handle_frame(
        StreamKind::Control,
        crate::wire::Heartbeat { now_ms: 1, seq: 1 }.into(),
        2,
    );
    drain_tx(&mut old);
    drain_events(&mut old);
    assert_eq!(
        refused(old, StreamKind::Control, request().into()),
        ErrorCode::Malformed
    );
}

#[test]
fn a_descent_is_bounded_and_checked_at_every_step() {
    // More requests than a descent needs.
    let mut s = armed_acceptor();
    for _ in 0..2 * LEVELS {
        descend(&mut s, 1, vec![0]);
    }
    let code = refused(
        s,
        StreamKind::Control,
        TreeRequest {
            collection: COLL.into(),
            level: 1,
            parents: vec![0],
            digests: vec![Digest::default(); FANOUT as usize],
        }
        .into(),
    );
    assert_eq!(code, ErrorCode::FrameTooLarge);

    // A repair version outside the agreed leaves.
    let mut outside = version("spoke", 1);
    outside.key = (0..)
        .map(|i| format!("x{i}"))
        .find(|k| leaf_of(k) != leaf_of("k1"))
        .expect("a key of another leaf");
    let batch = |v: Version| RepairBatch {
        collection: COLL.into(),
        versions: vec![v],
        last: false,
        requester: true,
    };
    let code = refused(
        exchanging_acceptor(),
        StreamKind::Bulk,
        batch(outside).into(),
    );
    assert_eq!(code, ErrorCode::Malformed);

    // In the agreed leaf but beyond this node's vector: dropped and counted, not applied.
    let mut s = exchanging_acceptor();
    s.handle_frame(StreamKind::Bulk, batch(version("spoke", 1)).into(), 6);
    assert!(!s.is_closed());
    assert_eq!(s.status().rejected, 1);
    assert!(
        std::iter::from_fn(|| s.poll_action()).all(|a| !matches!(a, Action::Apply { .. })),
        "nothing applied"
    );

    // Arming is bounded: a peer cannot make the session hold descents of many collections.
    let mut s = established_acceptor("spoke", false);
    for i in 0..=MAX_ARMED_TREES {
        let collection = format!("c{i}");
        s.handle_frame(
            StreamKind::Control,
            DigestRequest {
                collection: collection.clone(),
                digest: Digest([9; 32]),
                vv: VersionVector::new(),
            }
            .into(),
            3,
        );
        while let Some(a) = s.poll_action() {
            if let Action::Digest { collection } = a {
                s.handle_local_digest(&collection, Digest::default(), VersionVector::new());
            }
        }
    }
    assert_eq!(
        closed_code(&drain_events(&mut s)),
        Some(ErrorCode::FrameTooLarge)
    );
}
