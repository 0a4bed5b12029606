//! The urgent lane: urgent collections' streams are loaded first and, from protocol 3 on, go
//! out on their own stream however full the bulk stream is; with a peer of protocol 2 they
//! travel first in line on the bulk stream.

use super::*;

const URGENT: &str = "alerts";

/// A version of the hub in `collection`.
fn hub_version(collection: &str, counter: u64) -> Version {
    Version {
        collection: collection.into(),
        ..version("hub", counter)
    }
}

/// The hub (a relay, `alerts` urgent) holding ten versions of its own in `situation` and in
/// `alerts`, established with hefei speaking `protocol`.
fn hub(protocol: u16) -> Session {
    let mut c = cfg("hub", true);
    c.urgent = vec![URGENT.into()];
    let mut vv = VersionVector::new();
    vv.raise(&rid("hub"), 10);
    let mut s = Session::new(
        Role::Acceptor,
        c,
        peer("hefei", false),
        vec![(COLL.into(), vv.clone()), (URGENT.into(), vv)],
        0,
    );
    let h = Hello {
        protocol,
        ..hello("hefei")
    };
    s.handle_frame(StreamKind::Control, h.into(), 1);
    let hb = crate::wire::Heartbeat { now_ms: 1, seq: 1 };
    s.handle_frame(StreamKind::Control, hb.into(), 2);
    assert!(s.is_established());
    assert_eq!(s.protocol(), protocol);
    drain_events(&mut s);
    while s.poll_transmit_on(StreamKind::Control).is_some() {}
    s
}

/// Answers the Load in flight, if any, with its first versions (batch limit 3); returns its
/// collection.
fn answer(s: &mut Session) -> Option<String> {
    let Some(Action::Load {
        collection,
        origin,
        after,
        through,
        max_versions,
        ..
    }) = s.poll_action()
    else {
        return None;
    };
    let last = through.min(after + max_versions as u64);
    let versions = (after + 1..=last)
        .map(|n| hub_version(&collection, n))
        .collect();
    s.handle_loaded(&collection, &origin, versions, last);
    Some(collection)
}

/// The collections of the data messages queued on `stream` (a batch with its completion in
/// one frame counts as both).
fn drain_data(s: &mut Session, stream: StreamKind) -> Vec<String> {
    std::iter::from_fn(|| s.poll_transmit_on(stream))
        .flat_map(|m| match m.into_v2() {
            MessageV2::Batch(b) => vec![b.collection],
            MessageV2::Complete(c) => vec![c.collection],
            MessageV2::BatchComplete(b) => vec![b.batch.collection.clone(), b.batch.collection],
            other => panic!("a {} on a data stream", other.kind()),
        })
        .collect()
}

#[test]
fn urgent_collections_overtake_a_blocked_bulk_stream_from_protocol_3() {
    let mut s = hub(3);
    // The bulk stream is full (a throttled catch-up): only the urgent lane moves.
    s.handle_bulk_blocked(true);
    let mut loaded = Vec::new();
    let mut urgent = Vec::new();
    for _ in 0..20 {
        match answer(&mut s) {
            Some(c) => loaded.push(c),
            None => break,
        }
        urgent.extend(drain_data(&mut s, StreamKind::Urgent));
    }
    assert_eq!(loaded, vec![URGENT; 4], "10 versions in chunks of 3");
    assert!(
        urgent.iter().all(|c| c == URGENT) && urgent.len() == 8,
        "{urgent:?}"
    );
    assert_eq!(drain_data(&mut s, StreamKind::Bulk), Vec::<String>::new());

    // The bulk stream has room again: the bulk collection goes, on the bulk stream.
    s.handle_bulk_blocked(false);
    assert_eq!(answer(&mut s).as_deref(), Some(COLL));
    assert_eq!(drain_data(&mut s, StreamKind::Bulk), vec![COLL, COLL]);
    assert_eq!(drain_data(&mut s, StreamKind::Urgent), Vec::<String>::new());
}

#[test]
fn with_a_peer_of_protocol_2_urgent_collections_go_first_on_the_bulk_stream() {
    let mut s = hub(2);
    assert_eq!(answer(&mut s).as_deref(), Some(URGENT), "urgent first");
    // Without room on the bulk stream nothing more is loaded, urgent or not.
    s.handle_bulk_blocked(true);
    assert_eq!(drain_data(&mut s, StreamKind::Urgent), Vec::<String>::new());
    assert_eq!(drain_data(&mut s, StreamKind::Bulk), vec![URGENT, URGENT]);
    assert_eq!(answer(&mut s), None);
}

#[test]
fn only_sessions_of_protocol_3_take_data_on_the_urgent_stream() {
    let batch = |c: &str| -> Message {
        Batch {
            collection: c.into(),
            origin: rid("hefei"),
            versions: vec![Version {
                collection: c.into(),
                ..version("hefei", 1)
            }],
        }
        .into()
    };
    // Protocol 3: a batch on the urgent stream is taken like one on the bulk stream.
    let mut s = established_acceptor("hefei", false);
    s.handle_frame(StreamKind::Urgent, batch(URGENT), 3);
    assert!(!s.is_closed(), "{:?}", drain_events(&mut s));
    // Control frames never go there.
    let hb = crate::wire::Heartbeat { now_ms: 3, seq: 2 };
    let wrong = refused(
        established_acceptor("hefei", false),
        StreamKind::Urgent,
        hb.into(),
    );
    // Protocol 2 has no urgent stream.
    let mut old = acceptor("hefei", false);
    let h = Hello {
        protocol: 2,
        ..hello("hefei")
    };
    old.handle_frame(StreamKind::Control, h.into(), 1);
    let hb = crate::wire::Heartbeat { now_ms: 1, seq: 1 };
    old.handle_frame(StreamKind::Control, hb.into(), 2);
    assert_eq!(refused(old, StreamKind::Urgent, batch(URGENT)), wrong);
}
