//! What a peer with a valid certificate and bad intent can do with each field it sends, one
//! session at a time: poisoned causal contexts, clock skew, incarnations it never announced,
//! vector inflation, probe floods, and what the handshake tells it.

use std::sync::Arc;

use super::*;
use crate::policy::Policy;
use crate::wire::Heartbeat;

fn batch(origin: &ReplicaId, versions: Vec<Version>) -> Message {
    Batch {
        collection: COLL.into(),
        origin: origin.clone(),
        versions,
    }
    .into()
}

fn complete(origin: &ReplicaId, through: u64) -> Message {
    Complete {
        collection: COLL.into(),
        origin: origin.clone(),
        through,
    }
    .into()
}

fn with_context(mut v: Version, ctx: &[(ReplicaId, u64)]) -> Version {
    v.context = ctx.iter().cloned().collect();
    v
}

/// The hub accepting office `node` (not a relay), holding `local` of [`COLL`].
fn hub_with(node: &str, local: VersionVector) -> Session {
    let mut s = Session::new(
        Role::Acceptor,
        cfg("hub", true),
        peer(node, false),
        vec![(COLL.into(), local)],
        0,
    );
    s.handle_frame(StreamKind::Control, hello(node).into(), 1);
    let hb = Heartbeat { now_ms: 1, seq: 1 };
    s.handle_frame(StreamKind::Control, hb.into(), 2);
    assert!(s.is_established());
    drain_tx(&mut s);
    drain_events(&mut s);
    s
}

/// Office hefei accepting the hub (a relay), holding `local` of [`COLL`].
fn office_accepting_hub(local: VersionVector) -> Session {
    let mut s = Session::new(
        Role::Acceptor,
        cfg("hefei", false),
        peer("hub", true),
        vec![(COLL.into(), local)],
        0,
    );
    s.handle_frame(StreamKind::Control, hello("hub").into(), 1);
    s.handle_frame(
        StreamKind::Control,
        Heartbeat { now_ms: 1, seq: 1 }.into(),
        2,
    );
    drain_tx(&mut s);
    drain_events(&mut s);
    s
}

fn applies(s: &mut Session) -> Vec<(ReplicaId, Vec<u64>, u64)> {
    std::iter::from_fn(|| s.poll_action())
        .flat_map(|a| match a {
            Action::Apply { parts, .. } => parts,
            _ => Vec::new(),
        })
        .map(|p| {
            (
                p.origin,
                p.versions.iter().map(|v| v.dot.counter).collect(),
                p.through,
            )
        })
        .collect()
}

fn rejections(s: &mut Session) -> Vec<(String, u64)> {
    drain_events(s)
        .into_iter()
        .filter_map(|e| match e {
            Event::Rejected { reason, count } => Some((reason, count)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_context_covering_dots_never_seen_cuts_the_stream_before_it() {
    let mut s = hub_with("hefei", VersionVector::new());
    let (hefei, beijing) = (rid("hefei"), rid("beijing-office"));
    let poisoned = with_context(version("hefei", 2), &[(beijing.clone(), u64::MAX)]);
    s.handle_frame(
        StreamKind::Bulk,
        batch(&hefei, vec![version("hefei", 1), poisoned]),
        3,
    );
    s.handle_frame(StreamKind::Bulk, complete(&hefei, 2), 3);
    s.handle_frame(
        StreamKind::Bulk,
        batch(&hefei, vec![version("hefei", 3)]),
        3,
    );
    assert!(
        !s.is_closed(),
        "the session goes on: only that stream is refused"
    );
    // What came before the poisoned version is applied, through the counter before it.
    assert_eq!(applies(&mut s), vec![(hefei, vec![1], 1)]);
    let refused = rejections(&mut s);
    assert!(refused[0].0.contains("causal context"), "{refused:?}");
    assert_eq!(refused.iter().map(|r| r.1).sum::<u64>(), 2);
    assert_eq!(s.status().rejected, 2);
}

#[test]
fn a_context_claiming_more_of_our_own_origin_than_we_issued_is_refused() {
    let hub = rid("hub");
    let mut s = hub_with("hefei", [(hub.clone(), 4)].into_iter().collect());
    let hefei = rid("hefei");
    let claims = with_context(version("hefei", 1), &[(hub, 5)]);
    s.handle_frame(StreamKind::Bulk, batch(&hefei, vec![claims]), 3);
    s.handle_frame(StreamKind::Bulk, complete(&hefei, 1), 3);
    assert!(!s.is_closed());
    assert_eq!(applies(&mut s), vec![]);
    assert!(rejections(&mut s)[0].0.contains("causal context"));
}

#[test]
fn a_context_covering_held_dots_is_accepted() {
    let hub = rid("hub");
    let beijing = rid("beijing-office");
    let local: VersionVector = [(hub.clone(), 4), (beijing.clone(), 3)]
        .into_iter()
        .collect();
    let mut s = hub_with("hefei", local);
    let hefei = rid("hefei");
    let fine = with_context(
        version("hefei", 2),
        &[(hub, 4), (beijing, 3), (hefei.clone(), 1)],
    );
    s.handle_frame(
        StreamKind::Bulk,
        batch(&hefei, vec![version("hefei", 1), fine]),
        3,
    );
    s.handle_frame(StreamKind::Bulk, complete(&hefei, 2), 3);
    assert_eq!(applies(&mut s), vec![(hefei, vec![1, 2], 2)]);
    assert!(rejections(&mut s).is_empty());
}

#[test]
fn a_version_past_the_skew_bound_is_refused_alone_and_retried_later() {
    // The relay forwards an origin's version stamped too far ahead of our clock: that version
    // (and its stream after it) waits; the session and the relay are not punished.
    let mut s = office_accepting_hub(VersionVector::new());
    let skew = cfg("hefei", false).max_clock_skew_ms;
    let other = rid("wuhu");
    let mut ahead = version("wuhu", 2);
    ahead.hlc.ms = 10 + skew + 60_000;
    s.handle_frame(
        StreamKind::Bulk,
        batch(&other, vec![version("wuhu", 1), ahead]),
        10,
    );
    s.handle_frame(StreamKind::Bulk, complete(&other, 2), 10);
    assert!(!s.is_closed());
    assert_eq!(applies(&mut s), vec![(other, vec![1], 1)]);
    let refused = rejections(&mut s);
    assert!(
        refused[0].0.contains("ahead of the local clock"),
        "{refused:?}"
    );
    // Once our clock would accept it, the session closes so the reconnect brings it.
    let retry = s.poll_timeout().expect("a timer");
    assert!(retry <= 10 + 60_000 + 1, "retry at {retry}");
    s.handle_timeout(10 + 60_000 + 1);
    assert_eq!(
        closed_code(&drain_events(&mut s)),
        Some(ErrorCode::Internal)
    );
}

#[test]
fn an_office_brings_only_the_incarnation_it_announced() {
    let mut s = hub_with("hefei", VersionVector::new());
    let other = ReplicaId::new("hefei", 0x0bad).expect("valid");
    let mut v = version("hefei", 1);
    v.dot.origin = other.clone();
    s.handle_frame(StreamKind::Bulk, batch(&other, vec![v]), 3);
    s.handle_frame(StreamKind::Bulk, complete(&other, 1), 3);
    // A bare completion of yet another incarnation inflates nothing either.
    let random = ReplicaId::new("hefei", 0x1234_5678).expect("valid");
    s.handle_frame(StreamKind::Bulk, complete(&random, 1), 3);
    assert!(!s.is_closed());
    assert_eq!(applies(&mut s), vec![]);
    assert!(rejections(&mut s)[0].0.starts_with("incarnation"));
    assert!(s
        .status()
        .peer_vvs
        .iter()
        .all(|(_, vv)| vv.get(&random) == 0));
}

#[test]
fn a_node_past_the_incarnation_limit_brings_no_new_one() {
    let local: VersionVector = (0..MAX_INCARNATIONS_PER_NODE as u32)
        .map(|i| (ReplicaId::new("hefei", 100 + i).expect("valid"), 1))
        .collect();
    let mut s = hub_with("hefei", local);
    let hefei = rid("hefei");
    s.handle_frame(
        StreamKind::Bulk,
        batch(&hefei, vec![version("hefei", 1)]),
        3,
    );
    s.handle_frame(StreamKind::Bulk, complete(&hefei, 1), 3);
    assert_eq!(applies(&mut s), vec![]);
    let refused = rejections(&mut s);
    assert!(refused[0].0.contains("incarnations"), "{refused:?}");
    // One of the known incarnations is still fine.
    let mut known = hub_with(
        "hefei",
        (0..MAX_INCARNATIONS_PER_NODE as u32)
            .map(|i| (ReplicaId::new("hefei", i + 1).expect("valid"), 1))
            .collect(),
    );
    known.handle_frame(
        StreamKind::Bulk,
        batch(&hefei, vec![version("hefei", 2)]),
        3,
    );
    known.handle_frame(StreamKind::Bulk, complete(&hefei, 2), 3);
    assert_eq!(applies(&mut known), vec![(hefei, vec![2], 2)]);
}

#[test]
fn origins_per_collection_are_bounded_even_from_a_relay() {
    let local: VersionVector = (0..crate::wire::MAX_VECTOR_ENTRIES as u32)
        .map(|i| (ReplicaId::new(&format!("n{i}"), 1).expect("valid"), 1))
        .collect();
    let mut s = office_accepting_hub(local);
    let newcomer = rid("newcomer");
    s.handle_frame(
        StreamKind::Bulk,
        batch(&newcomer, vec![version("newcomer", 1)]),
        3,
    );
    s.handle_frame(StreamKind::Bulk, complete(&newcomer, 1), 3);
    assert_eq!(applies(&mut s), vec![]);
    assert!(rejections(&mut s)[0].0.starts_with("limit"));
    // A known origin still flows.
    let n0 = ReplicaId::new("n0", 1).expect("valid");
    let mut v = version("n0", 2);
    v.dot.origin = n0.clone();
    s.handle_frame(StreamKind::Bulk, batch(&n0, vec![v]), 3);
    s.handle_frame(StreamKind::Bulk, complete(&n0, 2), 3);
    assert_eq!(applies(&mut s), vec![(n0, vec![2], 2)]);
}

#[test]
fn probes_get_one_echo_per_half_interval_and_a_flood_closes_the_session() {
    let mut s = hub_with("hefei", VersionVector::new());
    // A probe every 10 ms for a second: 40 extra probes per echo window, within the bound.
    for i in 0..100u64 {
        let probe = Heartbeat {
            now_ms: 0,
            seq: 2 * i + 3,
        };
        s.handle_frame(StreamKind::Control, probe.into(), 3 + i * 10);
    }
    let echoes = drain_tx(&mut s)
        .into_iter()
        .filter(|(_, m)| m.kind() == "echo")
        .count();
    // The handshake's probe was echoed at 2; a 1 s interval allows the next echo at 502.
    assert_eq!(echoes, 1);
    assert!(!s.is_closed());
    // A flood: far more probes than the bound within one window.
    for i in 0..1_000u64 {
        let probe = Heartbeat {
            now_ms: 0,
            seq: 2 * i + 1_001,
        };
        s.handle_frame(StreamKind::Control, probe.into(), 1_100);
    }
    assert_eq!(
        closed_code(&drain_events(&mut s)),
        Some(ErrorCode::FrameTooLarge)
    );
}

#[test]
fn the_handshake_shows_only_collections_the_peer_may_read_or_write() {
    let policy = br#"{"read": ["general-office"], "write": ["general-office"]}"#;
    let (policy, errors) =
        Policy::from_entries(["general-office"], [("collections/secret", &policy[..])]);
    assert!(errors.is_empty(), "{errors:?}");
    let vvs = vec![
        (COLL.to_owned(), [(rid("hub"), 3)].into_iter().collect()),
        ("secret".to_owned(), [(rid("hub"), 9)].into_iter().collect()),
    ];
    let mut dialer = Session::new(
        Role::Dialer,
        cfg("hub", true),
        peer("hefei", false),
        vvs.clone(),
        0,
    );
    dialer.handle_policy(Arc::new(policy.clone()));
    let hello = drain_tx(&mut dialer)
        .into_iter()
        .find_map(|(_, m)| match m.into_v2() {
            MessageV2::Hello(h) => Some(h),
            _ => None,
        })
        .expect("hello");
    assert_eq!(
        hello
            .vvs
            .iter()
            .map(|(c, _)| c.as_str())
            .collect::<Vec<_>>(),
        [COLL]
    );
    let mut acceptor = Session::new(
        Role::Acceptor,
        cfg("hub", true),
        peer("hefei", false),
        vvs,
        0,
    );
    acceptor.handle_policy(Arc::new(policy));
    acceptor.handle_frame(StreamKind::Control, super::hello("hefei").into(), 1);
    let ack = drain_tx(&mut acceptor)
        .into_iter()
        .find_map(|(_, m)| match m.into_v2() {
            MessageV2::HelloAckV2(a) => Some(a.ack),
            _ => None,
        })
        .expect("hello ack");
    assert_eq!(
        ack.vvs.iter().map(|(c, _)| c.as_str()).collect::<Vec<_>>(),
        [COLL]
    );
}

#[test]
fn a_peer_repeating_about_is_reported_once() {
    let mut s = established_acceptor("hefei", false);
    for i in 0..100 {
        let about = crate::wire::About {
            release: format!("officesyncd {i}"),
        };
        s.handle_frame(StreamKind::Control, about.into(), 3 + i);
    }
    let told: Vec<Event> = drain_events(&mut s)
        .into_iter()
        .filter(|e| matches!(e, Event::PeerAbout { .. }))
        .collect();
    assert!(
        matches!(told.as_slice(), [Event::PeerAbout { release }] if release == "officesyncd 0"),
        "{told:?}"
    );
    assert!(!s.is_closed());
}
