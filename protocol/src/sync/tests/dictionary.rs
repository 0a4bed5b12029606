//! Compression dictionaries agreed in a session: offered, accepted and agreed; declined when
//! the receiver has no room; a reply to an id never offered refused; older peers never offered.

use std::sync::Arc;

use super::pair::{Pair, Store};
use super::*;
use crate::wire::{DictionaryId, DictionaryOffer, DictionaryReply, MAX_DICTIONARY_COLLECTIONS};

fn dict(collection: &str, seed: u8) -> LocalDictionary {
    let bytes: Vec<u8> = (0..1_000u32)
        .map(|i| (i as u8).wrapping_mul(seed))
        .collect();
    LocalDictionary::new(collection, Arc::from(bytes))
}

fn offer_of(d: &LocalDictionary) -> DictionaryOffer {
    DictionaryOffer {
        collection: d.collection.clone(),
        id: d.id,
        dictionary: d.bytes.to_vec(),
    }
}

fn hub_with_data() -> Store {
    let mut hub = Store::default();
    for c in 1..=5 {
        hub.write("hub", c);
    }
    hub
}

#[test]
fn an_offered_dictionary_is_accepted_then_agreed() {
    let mut p = Pair::new([Store::default(), hub_with_data()], [false, true]);
    let d = dict(COLL, 7);
    p.s[1].handle_dictionaries(vec![d.clone()]);
    p.run();
    assert_eq!(p.store[0].vv, p.store[1].vv, "data still flows");
    assert_eq!(p.kinds.get("dictionary_offer"), Some(&1));
    assert_eq!(p.kinds.get("dictionary_reply"), Some(&1));
    // The spoke keeps the bytes for its readers, the hub may prime its frames.
    let spoke = drain_events(&mut p.s[0]);
    assert!(spoke.iter().any(|e| matches!(e,
        Event::DictionaryAccepted { collection, id, dictionary }
            if collection == COLL && *id == d.id && dictionary[..] == d.bytes[..])));
    assert_eq!(
        p.s[0].held_dictionaries(),
        vec![(COLL.to_owned(), vec![d.id])]
    );
    let hub = drain_events(&mut p.s[1]);
    assert!(hub
        .iter()
        .any(|e| matches!(e, Event::DictionaryAgreed { dictionary } if *dictionary == d)));
    assert_eq!(p.s[1].agreed_dictionaries(), vec![(COLL.to_owned(), d.id)]);
    // Nothing is offered twice, nor agreed in the other direction.
    p.s[1].handle_dictionaries(vec![d.clone()]);
    p.run();
    assert_eq!(p.kinds.get("dictionary_offer"), Some(&1));
    assert!(p.s[0].agreed_dictionaries().is_empty());
}

#[test]
fn the_dictionary_is_kept_before_the_reply_leaves() {
    let mut s = established_acceptor("hefei", false);
    let d = dict(COLL, 3);
    s.handle_frame(StreamKind::Control, offer_of(&d).into(), 3);
    // The event comes with the reply: a driver draining events before frames holds the
    // dictionary before the peer can learn that it may use it.
    let events = drain_events(&mut s);
    assert!(matches!(&events[..], [Event::DictionaryAccepted { id, .. }] if *id == d.id));
    let replies: Vec<DictionaryReply> = drain_tx(&mut s)
        .into_iter()
        .filter_map(|(k, m)| match (k, m.into_v2()) {
            (StreamKind::Control, MessageV2::DictionaryReply(r)) => Some(r),
            _ => None,
        })
        .collect();
    assert_eq!(
        replies,
        vec![DictionaryReply {
            collection: COLL.into(),
            id: d.id,
            accepted: true
        }]
    );
}

#[test]
fn a_receiver_without_room_declines_and_the_sender_goes_on_without() {
    let mut s = established_acceptor("hefei", false);
    for i in 0..MAX_DICTIONARY_COLLECTIONS {
        let d = dict(&format!("c{i}"), i as u8 + 1);
        s.handle_frame(StreamKind::Control, offer_of(&d).into(), 3);
    }
    drain_events(&mut s);
    drain_tx(&mut s);
    let extra = dict("one-too-many", 99);
    s.handle_frame(StreamKind::Control, offer_of(&extra).into(), 4);
    assert!(!s.is_closed());
    assert!(drain_events(&mut s).is_empty(), "nothing to keep");
    let tx = drain_tx(&mut s);
    assert!(matches!(&tx[..], [(StreamKind::Control, m)]
        if matches!(m.clone().into_v2(), MessageV2::DictionaryReply(r) if !r.accepted)));

    // The offering side, declined, agrees nothing.
    let mut p = Pair::new([Store::default(), hub_with_data()], [false, true]);
    let d = dict(COLL, 5);
    p.s[1].handle_dictionaries(vec![d.clone()]);
    p.step(usize::MAX); // the hello
    p.step(usize::MAX); // the hello ack, then the offer
    let declined = DictionaryReply {
        collection: COLL.into(),
        id: d.id,
        accepted: false,
    };
    p.s[1].handle_frame(StreamKind::Control, declined.into(), 10);
    assert!(!p.s[1].is_closed());
    assert!(p.s[1].agreed_dictionaries().is_empty());
    assert!(!drain_events(&mut p.s[1])
        .iter()
        .any(|e| matches!(e, Event::DictionaryAgreed { .. })));
}

#[test]
fn a_reply_for_a_dictionary_never_offered_closes_the_session() {
    let s = established_acceptor("hefei", false);
    let reply = DictionaryReply {
        collection: COLL.into(),
        id: DictionaryId([9; 8]),
        accepted: true,
    };
    assert_eq!(
        refused(s, StreamKind::Control, reply.into()),
        ErrorCode::Malformed
    );
}

#[test]
fn an_offer_whose_id_is_not_its_hash_closes_the_session() {
    let s = established_acceptor("hefei", false);
    let mut o = offer_of(&dict(COLL, 3));
    o.id = DictionaryId([1; 8]);
    assert_eq!(
        refused(s, StreamKind::Control, o.into()),
        ErrorCode::Malformed
    );
}

#[test]
fn a_retrained_dictionary_is_held_too_and_stale_replies_are_ignored() {
    // The receiver holds two dictionaries of a collection for the whole session (a frame
    // primed with the older may still be on its way) and declines a third.
    let mut s = established_acceptor("hefei", false);
    let ds: Vec<_> = (1..=3).map(|i| dict(COLL, i)).collect();
    for d in &ds {
        s.handle_frame(StreamKind::Control, offer_of(d).into(), 3);
    }
    let accepted: Vec<_> = drain_events(&mut s)
        .into_iter()
        .filter_map(|e| match e {
            Event::DictionaryAccepted { id, .. } => Some(id),
            _ => None,
        })
        .collect();
    assert_eq!(accepted, vec![ds[0].id, ds[1].id]);
    let answers: Vec<bool> = drain_tx(&mut s)
        .into_iter()
        .filter_map(|(_, m)| match m.into_v2() {
            MessageV2::DictionaryReply(r) => Some(r.accepted),
            _ => None,
        })
        .collect();
    assert_eq!(answers, vec![true, true, false]);
    assert_eq!(
        s.held_dictionaries(),
        vec![(COLL.to_owned(), vec![ds[0].id, ds[1].id])]
    );
    assert_eq!(MAX_HELD_PER_COLLECTION, 2);

    // The sender retrains before the first answer arrives: that answer agrees nothing.
    let mut p = Pair::new([Store::default(), hub_with_data()], [false, true]);
    p.s[1].handle_dictionaries(vec![ds[0].clone()]);
    p.step(usize::MAX);
    p.step(usize::MAX);
    p.s[1].handle_dictionaries(vec![ds[1].clone()]);
    p.run();
    assert_eq!(p.kinds.get("dictionary_offer"), Some(&2));
    assert_eq!(
        p.s[1].agreed_dictionaries(),
        vec![(COLL.to_owned(), ds[1].id)]
    );
    let agreed: Vec<_> = drain_events(&mut p.s[1])
        .into_iter()
        .filter_map(|e| match e {
            Event::DictionaryAgreed { dictionary } => Some(dictionary.id),
            _ => None,
        })
        .collect();
    assert_eq!(agreed, vec![ds[1].id]);

    // A third, declined: the sender keeps the one agreed, which the peer still holds.
    p.s[1].handle_dictionaries(vec![ds[2].clone()]);
    p.run();
    assert_eq!(p.kinds.get("dictionary_offer"), Some(&3));
    assert_eq!(
        p.s[1].agreed_dictionaries(),
        vec![(COLL.to_owned(), ds[1].id)]
    );
}

#[test]
fn a_protocol_2_peer_is_never_offered_a_dictionary_and_still_syncs() {
    let mut p = Pair::speaking([Store::default(), hub_with_data()], [false, true], 2, 3);
    p.s[1].handle_dictionaries(vec![dict(COLL, 7)]);
    p.run();
    assert_eq!(p.store[0].vv, p.store[1].vv);
    assert_eq!(p.kinds.get("dictionary_offer"), None);
    assert!(p.s[1].agreed_dictionaries().is_empty());
    assert!(!p.s[0].is_closed() && !p.s[1].is_closed());
}

#[test]
fn a_dictionary_of_a_collection_the_peer_may_not_read_is_not_offered() {
    let mut p = Pair::new([Store::default(), hub_with_data()], [false, true]);
    let rule = br#"{"read": ["hub"], "write": ["hub"]}"#;
    let (policy, errors) =
        crate::policy::Policy::from_entries(["hub"], [("collections/secret", &rule[..])]);
    assert!(errors.is_empty(), "{errors:?}");
    p.s[1].handle_policy(Arc::new(policy));
    p.s[1].handle_dictionaries(vec![dict("secret", 7), dict(COLL, 8)]);
    p.run();
    assert_eq!(p.kinds.get("dictionary_offer"), Some(&1));
    assert_eq!(
        p.s[1].agreed_dictionaries(),
        vec![(COLL.to_owned(), dict(COLL, 8).id)]
    );
}
