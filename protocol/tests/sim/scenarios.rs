//! Scripted scenarios on small worlds: what the random runs only hit by chance.

use officesync_protocol::sync::VerifyOutcome;

use super::world::{NodeSpec, Params, World};

fn spec(name: &str, relay: bool) -> NodeSpec {
    NodeSpec {
        name: name.to_owned(),
        relay,
    }
}

/// A scripted world of `nodes` and `links`: no random writes or faults, no automatic flush,
/// batches of 16 versions, digest repair every `repair_ms` (0: never).
fn scripted(nodes: Vec<NodeSpec>, links: Vec<(usize, usize)>, repair_ms: u64) -> Params {
    Params {
        nodes,
        links,
        writes: 0,
        active_ms: 0,
        crashes: 0,
        drops: 0,
        partitions: 0,
        rots: 0,
        batch_max_versions: 16,
        batch_max_bytes: 1 << 16,
        repair_ms,
        auto_flush: false,
        hostile: None,
        attacks: 0,
    }
}

/// A local write supersedes a durable version and is lost in a crash before its flush. With
/// loads that skip superseded versions (`Replica::naive_loads`), the
/// Load right after the flush skips the durable version yet completes past it, so after the
/// crash the peer can never get it from the log: only a digest round repairs it. With the
/// shadow index the log alone converges.
#[test]
fn a_superseding_write_lost_in_a_crash() {
    for naive in [true, false] {
        let params = scripted(
            vec![spec("general-office", true), spec("hefei", false)],
            vec![(1, 0)],
            0,
        );
        let mut w = World::new(7, params);
        w.nodes[0].replica.naive_loads = naive;
        w.run_until(3_000);
        assert_eq!(w.established(), 1);
        let y = w.write_key(0, "situation", "k", Some(b"y".to_vec()));
        w.flush_node(0); // y is durable and offered: a Load is queued...
        w.write_key(0, "situation", "k", Some(b"x".to_vec())); // ...but x supersedes y first
        let t = w.now + 2_000;
        w.run_until(t);
        w.flush_node(1); // hefei durably holds the hub's origin through y's counter
        w.crash_node(0); // x was never flushed: lost, and y is live again at the hub
        let t = w.now + 20_000;
        w.run_until(t);
        w.flush_node(0);
        w.flush_node(1);
        let has_y = |w: &World| {
            w.nodes[1]
                .replica
                .colls
                .get("situation")
                .is_some_and(|c| c.versions().any(|v| v.dot == y.dot))
        };
        assert_eq!(w.established(), 1, "reconnected");
        assert_eq!(has_y(&w), !naive, "naive loads: {naive}");
        assert_eq!(w.converged(), !naive);
        if naive {
            w.verify_all();
            let t = w.now + 10_000;
            w.run_until(t);
            w.flush_node(1);
            assert!(has_y(&w) && w.converged(), "repair brings y back");
            assert!(w
                .stats
                .verified
                .iter()
                .any(|(_, o)| *o == VerifyOutcome::Repaired));
        }
    }
}

/// The hub's own version rotted at the hub cannot come back: spokes are not relays, so
/// none may send it (a limit of the relay rule). Periodic repair finds the mismatch and
/// re-streams, in vain, but backs off instead of re-streaming every interval.
#[test]
fn an_unrepairable_rot_backs_off() {
    let params = scripted(
        vec![
            spec("general-office", true),
            spec("hefei", false),
            spec("anqing", false),
        ],
        vec![(1, 0), (2, 0)],
        1_000,
    );
    let mut w = World::new(11, params);
    w.run_until(2_000);
    let v = w.write_key(0, "letters", "circular", Some(b"v".to_vec()));
    w.write_key(1, "letters", "hefei/1", Some(b"h".to_vec()));
    for _ in 0..6 {
        for n in 0..3 {
            w.flush_node(n);
        }
        let t = w.now + 500;
        w.run_until(t);
    }
    assert!(w.converged());
    assert!(w.rot_version(0, "letters", "circular", &v.dot));
    w.run_until(124_000);
    assert!(
        !w.converged(),
        "no spoke may give the hub its own version back"
    );
    println!(
        "unrepairable rot: {} mismatch events in 120 s",
        w.stats.mismatches
    );
    // Two links, one round a second: without the back-off this is ~480 (measured 477).
    assert!(
        w.stats.mismatches > 0 && w.stats.mismatches <= 60,
        "{}",
        w.stats.mismatches
    );
    assert!(
        w.stats.protocol_errors.is_empty(),
        "{:?}",
        w.stats.protocol_errors
    );
}

/// Access policy on a three-tier tree (office-c reaches the hub only through a second relay):
/// a restricted collection reaches exactly the nodes that may read it, over two hops, and
/// versions of an origin that may not write it (written before it knew the policy) reach
/// nobody; the open collection converges everywhere.
#[test]
fn a_restricted_collection_reaches_only_its_readers_over_two_hops() {
    use officesync_protocol::policy::Policy;
    let params = Params {
        batch_max_versions: 4,
        ..scripted(
            vec![
                spec("general-office", true),
                spec("relay-2", true),
                spec("office-a", false),
                spec("office-b", false),
                spec("office-c", false),
            ],
            vec![(1, 0), (2, 0), (3, 0), (4, 1)],
            0,
        )
    };
    let mut w = World::new(23, params);
    let (policy, errors) = Policy::from_entries(
        ["general-office", "relay-2"],
        [(
            "collections/secret",
            br#"{"read": ["office-a", "office-c"], "write": ["office-a"]}"#.as_slice(),
        )],
    );
    assert!(errors.is_empty());
    w.policy = Some(std::sync::Arc::new(policy));
    w.run_until(3_000);
    assert_eq!(w.established(), 4);
    let mut allowed = Vec::new();
    for i in 0..10 {
        allowed.push(
            w.write_key(2, "secret", &format!("a/{i}"), Some(b"a".to_vec()))
                .dot,
        );
    }
    let refused: Vec<_> = (0..10)
        .map(|i| {
            w.write_key(3, "secret", &format!("b/{i}"), Some(b"b".to_vec()))
                .dot
        })
        .collect();
    for n in 0..5 {
        w.write_key(n, "situation", &format!("n{n}"), Some(b"open".to_vec()));
    }
    for _ in 0..8 {
        for n in 0..5 {
            w.flush_node(n);
        }
        let t = w.now + 1_000;
        w.run_until(t);
    }
    let holds = |w: &World, n: usize, dot: &officesync_protocol::Dot| {
        w.nodes[n]
            .replica
            .colls
            .get("secret")
            .is_some_and(|c| c.versions().any(|v| v.dot == *dot))
    };
    for dot in &allowed {
        for n in [0, 1, 2, 4] {
            assert!(holds(&w, n, dot), "node {n} lacks {dot}");
        }
        assert!(!holds(&w, 3, dot), "office-b may not read secret");
    }
    for dot in &refused {
        for n in [0, 1, 2, 4] {
            assert!(
                !holds(&w, n, dot),
                "node {n} accepted an unauthorized {dot}"
            );
        }
    }
    let digest = |n: usize, c: &str| w.nodes[n].replica.digest(c);
    for n in 1..5 {
        assert_eq!(digest(n, "situation"), digest(0, "situation"), "node {n}");
    }
    for n in [1, 2, 4] {
        assert_eq!(digest(n, "secret"), digest(0, "secret"), "node {n}");
    }
    assert!(
        w.stats.protocol_errors.is_empty(),
        "{:?}",
        w.stats.protocol_errors
    );
}

/// Dependencies first when the dependency is not this node's to send: office-a holds
/// office-b's version that the relay lacks when their session starts, then writes over it. Its
/// version waits for the relay to hold office-b's dot; the relay gets it from office-b later,
/// which nothing in the session tells office-a (the relay has nothing of office-b to send it),
/// so the waiting stream asks with a digest round of that collection a few seconds later.
#[test]
fn a_dependency_the_relay_gets_later_is_learned_by_a_digest_round() {
    let params = scripted(
        vec![
            spec("general-office", true),
            spec("office-a", false),
            spec("office-b", false),
        ],
        vec![(1, 0), (2, 0), (2, 1)],
        0,
    );
    let mut w = World::new(5, params);
    w.links[1].down_until = 10_000; // office-b reaches the relay only at 10 s
    w.run_until(3_000);
    let b = w.write_key(2, "letters", "k", Some(b"b".to_vec()));
    w.flush_node(2);
    let t = w.now + 2_000;
    w.run_until(t);
    w.flush_node(1);
    let holds = |w: &World, n: usize, dot: &officesync_protocol::Dot| {
        w.nodes[n]
            .replica
            .colls
            .get("letters")
            .is_some_and(|c| c.versions().any(|v| v.dot == *dot))
    };
    assert!(holds(&w, 1, &b.dot) && !holds(&w, 0, &b.dot));
    // A new session of office-a and the relay: office-a's vector covers b, the relay's not.
    let id = w.links[0].conn.expect("office-a is connected to the relay");
    w.teardown(id);
    let t = w.now + 2_000;
    w.run_until(t);
    let a = w.write_key(1, "letters", "k", Some(b"a".to_vec()));
    for _ in 0..60 {
        for n in 0..3 {
            w.flush_node(n);
        }
        let t = w.now + 1_000;
        w.run_until(t);
    }
    assert_eq!(w.established(), 3);
    assert!(
        holds(&w, 2, &a.dot),
        "office-b has office-a's write directly"
    );
    // office-a's stream waited for b, which it cannot send: it asked the relay with a digest
    // round of that collection, learned the relay holds b, and sent its write.
    assert!(
        holds(&w, 0, &a.dot),
        "a digest round of the waiting collection tells office-a the relay holds b"
    );
}
