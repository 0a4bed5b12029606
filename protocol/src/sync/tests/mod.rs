//! Unit tests of the session: single sessions fed frames by hand ([`frames`]) and pairs of
//! sessions over a tiny in-memory store ([`pair`]); the urgent lane ([`lanes`]); compression
//! dictionaries ([`dictionary`]).

mod dictionary;
mod frames;
mod hostile;
mod lanes;
mod pair;
mod tree;

use super::*;
use crate::digest::Digest;
use crate::dot::{Dot, ReplicaId, VersionVector};
use crate::hlc::Hlc;
use crate::version::{ValueMeta, Version};
use crate::wire::{
    Batch, Complete, Compression, ErrorCode, Hello, HelloAck, HelloAckV2, Message, MessageV2,
    PROTOCOL_VERSION,
};

pub(super) const CLUSTER: &str = "abcdef0123";
pub(super) const COLL: &str = "situation";

pub(super) fn rid(node: &str) -> ReplicaId {
    ReplicaId::new(node, 1).expect("valid test name")
}

pub(super) fn cfg(node: &str, relay: bool) -> SessionConfig {
    SessionConfig {
        batch_max_versions: 3,
        heartbeat_interval_ms: 1_000,
        idle_timeout_ms: 10_000,
        repair_interval_ms: 0,
        relay,
        release: "officesyncd test".into(),
        ..SessionConfig::new(node, rid(node), CLUSTER)
    }
}

pub(super) fn peer(node: &str, is_relay: bool) -> PeerIdentity {
    PeerIdentity {
        node: node.to_owned(),
        is_relay,
    }
}

pub(super) fn version(origin: &str, counter: u64) -> Version {
    Version {
        collection: COLL.into(),
        key: format!("k{counter}"),
        dot: Dot::new(rid(origin), counter),
        hlc: Hlc {
            ms: counter,
            logical: 0,
        },
        context: VersionVector::new(),
        value: Some(format!("{origin}-{counter}").into_bytes()),
        author: None,
        signature: None,
    }
}

pub(super) fn drain_events(s: &mut Session) -> Vec<Event> {
    std::iter::from_fn(|| s.poll_event()).collect()
}

pub(super) fn drain_tx(s: &mut Session) -> Vec<(StreamKind, Message)> {
    std::iter::from_fn(|| s.poll_transmit()).collect()
}

pub(super) fn closed_code(events: &[Event]) -> Option<ErrorCode> {
    events.iter().find_map(|e| match e {
        Event::Closed { code, .. } => Some(*code),
        _ => None,
    })
}

/// The `Error` frame the session queued, if any.
pub(super) fn error_frame(s: &mut Session) -> Option<ErrorCode> {
    drain_tx(s).into_iter().find_map(|(k, m)| match m {
        m if k == StreamKind::Control => match m.into_v2() {
            MessageV2::Error(e) => Some(e.code),
            _ => None,
        },
        _ => None,
    })
}

pub(super) fn hello(node: &str) -> Hello {
    Hello {
        protocol: PROTOCOL_VERSION,
        cluster_id: CLUSTER.into(),
        node: node.into(),
        replica: rid(node),
        compression: vec![Compression::Zstd],
        vvs: vec![],
    }
}

pub(super) fn acceptor(peer_node: &str, peer_relay: bool) -> Session {
    Session::new(
        Role::Acceptor,
        cfg("hub", true),
        peer(peer_node, peer_relay),
        vec![],
        0,
    )
}

/// An acceptor that has accepted `node`'s hello and heard from it since.
pub(super) fn established_acceptor(node: &str, peer_relay: bool) -> Session {
    let mut s = acceptor(node, peer_relay);
    s.handle_frame(StreamKind::Control, hello(node).into(), 1);
    let hb = crate::wire::Heartbeat { now_ms: 1, seq: 1 };
    s.handle_frame(StreamKind::Control, hb.into(), 2);
    assert!(s.is_established());
    drain_tx(&mut s);
    drain_events(&mut s);
    s
}

pub(super) fn refused(mut s: Session, stream: StreamKind, msg: Message) -> ErrorCode {
    s.handle_frame(stream, msg, 5);
    let code = closed_code(&drain_events(&mut s)).expect("session closed");
    assert!(s.is_closed());
    assert_eq!(error_frame(&mut s), Some(code), "error frame queued");
    assert_eq!(s.poll_timeout(), None);
    code
}
