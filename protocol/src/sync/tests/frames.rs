//! One session fed frames by hand: handshake refusals and negotiation, the relay rule,
//! stream continuity, acknowledgements, the idle timeout and driver contract violations.

use super::*;

#[test]
fn handshake_refuses_wrong_cluster_name_mismatch_and_version() {
    let wrong_cluster = Hello {
        cluster_id: "ffff".into(),
        ..hello("hefei")
    };
    let code = refused(
        acceptor("hefei", false),
        StreamKind::Control,
        wrong_cluster.into(),
    );
    assert_eq!(code, ErrorCode::WrongCluster);

    // The certificate says hefei; the hello claims (validly) to be anqing.
    let code = refused(
        acceptor("hefei", false),
        StreamKind::Control,
        hello("anqing").into(),
    );
    assert_eq!(code, ErrorCode::NotAuthorized);

    let v0 = Hello {
        protocol: 0,
        ..hello("hefei")
    };
    let code = refused(acceptor("hefei", false), StreamKind::Control, v0.into());
    assert_eq!(code, ErrorCode::UnsupportedVersion);

    // A dialer offered this build's protocol; an acceptor answering a later one is refused.
    let dialer = Session::new(
        Role::Dialer,
        cfg("hefei", false),
        peer("hub", true),
        vec![],
        0,
    );
    let ack = HelloAck {
        protocol: PROTOCOL_VERSION + 1,
        accepted_compression: Compression::None,
        vvs: vec![],
    };
    let code = refused(dialer, StreamKind::Control, ack.into());
    assert_eq!(code, ErrorCode::UnsupportedVersion);

    // Invalid messages (a replica id of another node) are refused by validation.
    let bad = Hello {
        replica: rid("anqing"),
        ..hello("hefei")
    };
    let code = refused(acceptor("hefei", false), StreamKind::Control, bad.into());
    assert_eq!(code, ErrorCode::Malformed);
}

#[test]
fn nothing_but_the_handshake_before_it_completes() {
    let early = Complete {
        collection: COLL.into(),
        origin: rid("hefei"),
        through: 1,
    };
    let code = refused(acceptor("hefei", false), StreamKind::Bulk, early.into());
    assert_eq!(code, ErrorCode::Malformed);
    let code = refused(
        acceptor("hefei", false),
        StreamKind::Bulk,
        hello("hefei").into(),
    );
    assert_eq!(code, ErrorCode::Malformed, "hello on the bulk stream");
}

#[test]
fn handshake_negotiates_and_acceptor_waits_for_the_dialer_before_sending_data() {
    let vv: VersionVector = [(rid("hub"), 2)].into_iter().collect();
    let mut acc = Session::new(
        Role::Acceptor,
        cfg("hub", true),
        peer("hefei", false),
        vec![(COLL.into(), vv)],
        0,
    );
    let mut dial = Session::new(
        Role::Dialer,
        cfg("hefei", false),
        peer("hub", true),
        vec![],
        0,
    );
    let (k, m) = dial.poll_transmit().expect("hello");
    assert_eq!(k, StreamKind::Control);
    acc.handle_frame(k, m, 1);
    assert!(acc.is_established());
    assert!(matches!(
        drain_events(&mut acc).as_slice(),
        [Event::Established { peer_replica: Some(r), compression: Compression::Zstd, protocol: PROTOCOL_VERSION }] if *r == rid("hefei")
    ));
    // Data is due but must not overtake the HelloAck: no Load until the dialer is heard.
    assert_eq!(acc.poll_action(), None);
    let (k, ack) = acc.poll_transmit().expect("hello ack");
    dial.handle_frame(k, ack, 2);
    assert!(dial.is_established());
    // At protocol 2 the dialer first says what it runs, then probes.
    let (k, about) = dial.poll_transmit().expect("about");
    assert_eq!(about.kind(), "about");
    assert_eq!(about.protocol_version(), 2);
    let (k2, probe) = dial.poll_transmit().expect("first heartbeat");
    assert_eq!(probe.kind(), "heartbeat");
    acc.handle_frame(k, about, 3);
    assert!(matches!(
        drain_events(&mut acc).as_slice(),
        [Event::PeerAbout { release }] if release == "officesyncd test"
    ));
    acc.handle_frame(k2, probe, 3);
    assert!(matches!(
        acc.poll_action(),
        Some(Action::Load {
            after: 0,
            through: 2,
            ..
        })
    ));
    // The acceptor echoed the probe; the dialer measures the round trip.
    let (k, about) = acc.poll_transmit().expect("the acceptor's about");
    assert_eq!(about.kind(), "about");
    let (k2, echo) = acc.poll_transmit().expect("echo");
    dial.handle_frame(k, about, 10);
    let k = k2;
    dial.handle_frame(k, echo, 10);
    assert_eq!(dial.status().rtt_ms, Some(8));
}

#[test]
fn relay_rule_drops_foreign_versions_and_their_complete() {
    let mut s = established_acceptor("hefei", false);
    let foreign = Batch {
        collection: COLL.into(),
        origin: rid("anqing"),
        versions: vec![version("anqing", 1)],
    };
    s.handle_frame(StreamKind::Bulk, foreign.into(), 3);
    let complete = Complete {
        collection: COLL.into(),
        origin: rid("anqing"),
        through: 1,
    };
    s.handle_frame(StreamKind::Bulk, complete.into(), 3);
    assert!(!s.is_closed());
    assert_eq!(s.poll_action(), None, "nothing applied");
    assert!(matches!(
        drain_events(&mut s).as_slice(),
        [Event::Rejected { count: 1, .. }]
    ));
    assert_eq!(s.status().rejected, 1);

    // Its own versions are accepted; a relay's foreign ones too.
    let own = Batch {
        collection: COLL.into(),
        origin: rid("hefei"),
        versions: vec![version("hefei", 1)],
    };
    s.handle_frame(StreamKind::Bulk, own.into(), 4);
    let mut r = established_acceptor("hefei", true);
    let relayed = Batch {
        collection: COLL.into(),
        origin: rid("anqing"),
        versions: vec![version("anqing", 1)],
    };
    r.handle_frame(StreamKind::Bulk, relayed.into(), 4);
    assert!(!s.is_closed() && !r.is_closed());
    assert_eq!(r.status().rejected, 0);
}

/// A batch of hefei's versions with these counters.
fn hefei_batch(counters: &[u64]) -> Message {
    Batch {
        collection: COLL.into(),
        origin: rid("hefei"),
        versions: counters.iter().map(|c| version("hefei", *c)).collect(),
    }
    .into()
}

/// Hefei's stream complete through `through`.
fn hefei_complete(through: u64) -> Message {
    Complete {
        collection: COLL.into(),
        origin: rid("hefei"),
        through,
    }
    .into()
}

#[test]
fn out_of_order_completes_and_batches_close_the_session() {
    let (batch, complete) = (hefei_batch, hefei_complete);
    let mut s = established_acceptor("hefei", false);
    s.handle_frame(StreamKind::Bulk, batch(&[1, 2]), 3);
    s.handle_frame(StreamKind::Bulk, complete(4), 3);
    assert!(matches!(
        s.poll_action(),
        Some(Action::Apply { repair: false, ref parts }) if parts.len() == 1 && parts[0].through == 4 && parts[0].versions.len() == 2
    ));
    s.handle_frame(StreamKind::Bulk, complete(4), 3); // a repeat is harmless
    assert!(!s.is_closed());
    let code = refused(s, StreamKind::Bulk, complete(3));
    assert_eq!(code, ErrorCode::OutOfOrder);

    let mut s = established_acceptor("hefei", false);
    s.handle_frame(StreamKind::Bulk, batch(&[1, 2]), 3);
    s.handle_frame(StreamKind::Bulk, complete(2), 3);
    assert_eq!(
        refused(s, StreamKind::Bulk, batch(&[2, 3])),
        ErrorCode::OutOfOrder
    );

    let mut s = established_acceptor("hefei", false);
    s.handle_frame(StreamKind::Bulk, batch(&[3, 4]), 3);
    assert_eq!(
        refused(s, StreamKind::Bulk, complete(3)),
        ErrorCode::OutOfOrder
    );

    // A restart shape (counter 1 again) without an armed digest round is out of order too.
    let mut s = established_acceptor("hefei", false);
    s.handle_frame(StreamKind::Bulk, batch(&[1, 2]), 3);
    s.handle_frame(StreamKind::Bulk, complete(2), 3);
    assert_eq!(
        refused(s, StreamKind::Bulk, batch(&[1])),
        ErrorCode::OutOfOrder
    );
}

#[test]
fn acks_beyond_what_was_sent_are_refused() {
    let mut s = established_acceptor("hefei", false);
    let ack = crate::wire::Ack {
        collection: COLL.into(),
        origin: rid("hub"),
        through: 1,
    };
    s.handle_frame(StreamKind::Control, ack.into(), 3);
    assert_eq!(
        closed_code(&drain_events(&mut s)),
        Some(ErrorCode::OutOfOrder)
    );
}

#[test]
fn idle_timeout_closes() {
    let mut s = established_acceptor("hefei", false);
    let mut t = 2;
    while let Some(next) = s.poll_timeout() {
        assert!(next >= t, "deadlines never go back");
        t = next;
        s.handle_timeout(t);
        drain_tx(&mut s);
    }
    assert_eq!(t, 2 + 10_000);
    let events = drain_events(&mut s);
    assert_eq!(closed_code(&events), Some(ErrorCode::Internal));
}

#[test]
fn a_load_answer_outside_its_range_closes_with_internal() {
    let vv: VersionVector = [(rid("hub"), 5)].into_iter().collect();
    let mut s = Session::new(
        Role::Dialer,
        cfg("hub", true),
        peer("hefei", false),
        vec![(COLL.into(), vv)],
        0,
    );
    let ack = HelloAck {
        protocol: PROTOCOL_VERSION,
        accepted_compression: Compression::None,
        vvs: vec![],
    };
    s.handle_frame(StreamKind::Control, ack.into(), 1);
    let Some(Action::Load { through, .. }) = s.poll_action() else {
        panic!("expected a load");
    };
    s.handle_loaded(COLL, &rid("hub"), vec![version("hub", 9)], through);
    assert_eq!(
        closed_code(&drain_events(&mut s)),
        Some(ErrorCode::Internal)
    );
}

/// Delivers every frame queued at `from` to `to` (at time `now`); returns them.
fn deliver(from: &mut Session, to: &mut Session, now: u64) -> Vec<Message> {
    let mut seen = Vec::new();
    while let Some((k, m)) = from.poll_transmit() {
        seen.push(m.clone());
        to.handle_frame(k, m, now);
    }
    seen
}

/// A dialer `hefei` speaking at most `dialer_max` and a current hub: the handshake, then
/// the hub's version written by `li@hub` on the wire. Returns the protocol agreed, every
/// frame the hub sent before the batch, and the batch as it went out.
fn authored_batch(dialer_max: u16) -> (u16, Vec<Message>, Message) {
    let cfg_dial = SessionConfig {
        max_protocol: dialer_max,
        ..cfg("hefei", false)
    };
    let mut dial = Session::new(Role::Dialer, cfg_dial, peer("hub", true), vec![], 0);
    let mut acc = Session::new(
        Role::Acceptor,
        cfg("hub", true),
        peer("hefei", false),
        vec![(COLL.to_owned(), [(rid("hub"), 1)].into_iter().collect())],
        0,
    );
    let hello = deliver(&mut dial, &mut acc, 1);
    assert!(hello.iter().all(|m| m.protocol_version() == 1), "{hello:?}");
    let mut answered = deliver(&mut acc, &mut dial, 2);
    deliver(&mut dial, &mut acc, 3);
    assert!(dial.is_established() && acc.is_established());
    assert_eq!(dial.protocol(), acc.protocol());
    let Some(Action::Load { origin, .. }) = acc.poll_action() else {
        panic!("no load");
    };
    let mut v = Version {
        dot: Dot::new(origin.clone(), 1),
        ..version("hub", 1)
    };
    v.author = Some("li@hub".into());
    acc.handle_loaded(COLL, &origin, vec![v], 1);
    let mut batch = None;
    for (_, m) in drain_tx(&mut acc) {
        if matches!(m.kind(), "batch" | "batch_complete") {
            batch = Some(m);
        } else {
            answered.push(m);
        }
    }
    (acc.protocol(), answered, batch.expect("a batch"))
}

#[test]
fn a_node_of_the_previous_release_speaks_protocol_1_and_authors_stay_behind() {
    let (protocol, answered, batch) = authored_batch(1);
    assert_eq!(protocol, 1);
    // Everything the hub sends is version 1, and it says nothing of its release.
    assert!(answered
        .iter()
        .all(|m| m.protocol_version() == 1 && m.kind() != "about"));
    assert_eq!(batch.protocol_version(), 1);
    let MessageV2::Batch(b) = batch.into_v2() else {
        panic!("not a batch");
    };
    assert_eq!(
        b.versions[0].author, None,
        "protocol 1 cannot carry the author"
    );
}

#[test]
fn two_current_nodes_speak_the_newest_protocol_and_carry_authors() {
    let (protocol, answered, batch) = authored_batch(PROTOCOL_VERSION);
    assert_eq!(protocol, PROTOCOL_VERSION);
    assert!(answered.iter().any(|m| m.kind() == "about"));
    // Version 3 kept version 2's message layout; the batch goes with its completion.
    assert_eq!(batch.protocol_version(), 2);
    let MessageV2::BatchComplete(bc) = batch.into_v2() else {
        panic!("not a batch with its completion");
    };
    assert_eq!(bc.through, 1);
    let b = bc.batch;
    assert_eq!(b.versions[0].author.as_deref(), Some("li@hub"));
}

#[test]
fn a_version_2_hello_ack_names_the_acceptors_incarnation_and_is_checked() {
    let mut dial = Session::new(
        Role::Dialer,
        cfg("hefei", false),
        peer("hub", true),
        vec![],
        0,
    );
    let mut acc = Session::new(
        Role::Acceptor,
        cfg("hub", true),
        peer("hefei", false),
        vec![],
        0,
    );
    deliver(&mut dial, &mut acc, 1);
    let answered = deliver(&mut acc, &mut dial, 2);
    assert_eq!(
        answered[0].protocol_version(),
        2,
        "a V2 dialer gets a V2 HelloAck"
    );
    assert!(matches!(
        drain_events(&mut dial).as_slice(),
        [Event::Established { peer_replica: Some(r), protocol: PROTOCOL_VERSION, .. }, ..] if *r == rid("hub")
    ));
    // A V2 HelloAck naming another node's incarnation, or another cluster, is refused.
    let ack = |replica: &str, cluster: &str| HelloAckV2 {
        ack: HelloAck {
            protocol: 2,
            accepted_compression: Compression::None,
            vvs: vec![],
        },
        replica: rid(replica),
        cluster_id: cluster.into(),
    };
    let fresh = || {
        Session::new(
            Role::Dialer,
            cfg("hefei", false),
            peer("hub", true),
            vec![],
            0,
        )
    };
    let code = refused(fresh(), StreamKind::Control, ack("anqing", CLUSTER).into());
    assert_eq!(code, ErrorCode::NotAuthorized);
    let code = refused(fresh(), StreamKind::Control, ack("hub", "ffff").into());
    assert_eq!(code, ErrorCode::WrongCluster);
    // The dialer's first probe (sent once it is established) gets an `Echo` at version 2.
    let sent = deliver(&mut dial, &mut acc, 3);
    assert!(sent.iter().any(|m| m.kind() == "heartbeat"), "{sent:?}");
    let echo = drain_tx(&mut acc)
        .into_iter()
        .map(|(_, m)| m)
        .find(|m| m.kind() == "echo" || m.kind() == "heartbeat")
        .expect("an echo");
    assert_eq!((echo.kind(), echo.protocol_version()), ("echo", 2));
}

#[test]
fn at_protocol_2_a_restart_is_announced_and_never_inferred() {
    let (batch, complete) = (hefei_batch, hefei_complete);
    let restart = || -> Message {
        crate::wire::Restart {
            collection: COLL.into(),
            origin: rid("hefei"),
        }
        .into()
    };
    // Without a digest round armed, an announced restart is out of order.
    let mut s = established_acceptor("hefei", false);
    assert!(s.protocol() >= 2);
    s.handle_frame(StreamKind::Bulk, batch(&[1, 2]), 3);
    s.handle_frame(StreamKind::Bulk, complete(2), 3);
    assert_eq!(
        refused(s, StreamKind::Bulk, restart()),
        ErrorCode::OutOfOrder
    );

    // A restart on the control stream is on the wrong stream.
    let s = established_acceptor("hefei", false);
    assert_eq!(
        refused(s, StreamKind::Control, restart()),
        ErrorCode::Malformed
    );

    // A restart cannot be dropped into the middle of buffered batches.
    let mut s = established_acceptor("hefei", false);
    s.handle_frame(StreamKind::Bulk, batch(&[1, 2]), 3);
    assert_eq!(
        refused(s, StreamKind::Bulk, restart()),
        ErrorCode::OutOfOrder
    );

    // A restart message is never sent at protocol 1 (the receiver infers it there).
    let m: crate::wire::MessageV2 = crate::wire::Restart {
        collection: COLL.into(),
        origin: rid("hefei"),
    }
    .into();
    assert!(m.clone().at(1).is_none());
    assert!(m.at(2).is_some());
}
