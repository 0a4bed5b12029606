//! Fuzz targets for the decoders and the session state machine that read network bytes, shared
//! by the cargo-fuzz targets in `protocol/fuzz/` and the stable corpus replay test
//! (`protocol/tests/fuzz_corpus.rs`). Each target panics only when an invariant breaks.
//!
//! * [`frame_decoder`]: arbitrary bytes cut by a [`FrameDecoder`] in arbitrary chunks, every
//!   frame decoded with [`decode_message`] and validated; a message that decodes must survive an
//!   encode/decode round trip, and the decoder never holds more than its limit.
//! * [`session_sequence`]: a [`Session`] fed an arbitrary sequence of inputs (raw payloads,
//!   well-formed but hostile messages, timers, store answers, local vector changes, verify
//!   requests, closes), checking that it never panics, that every frame it emits is valid and
//!   fits in a frame, that a non-relay's versions are never applied for another origin nor for
//!   more than one incarnation (the one it announced, when known), that no applied version has
//!   a causal context covering a dot (of another origin) beyond what the session was told this
//!   node holds, that loads never reach past what this node may offer, and that its outputs
//!   stay bounded. Its messages are often hostile in the ways a node with a valid certificate
//!   can be: contexts naming the session's own replica, the peer's or random incarnations with
//!   counters up to `u64::MAX`, vectors and contexts up to and past
//!   [`MAX_VECTOR_ENTRIES`](crate::wire::MAX_VECTOR_ENTRIES) entries, bare completions of random
//!   incarnations, far-future stamps.

use std::collections::{BTreeMap, VecDeque};

use crate::digest::Digest;
use crate::dot::{Dot, ReplicaId, VersionVector};
use crate::hlc::Hlc;
use crate::sync::{
    Action, ApplyPart, Event, PeerIdentity, Role, Session, SessionConfig, StreamKind,
};
use crate::version::Version;
use crate::wire::{
    decode_message, encode_message, Ack, Batch, Complete, Compression, DigestReply, DigestRequest,
    ErrorCode, ErrorFrame, FrameDecoder, Heartbeat, Hello, HelloAck, Message, MessageV1, WireError,
    FRAME_HEADER_LEN, MAX_FRAME_BYTES, MAX_VECTOR_ENTRIES,
};

/// Frame payload limits [`frame_decoder`] picks from (the first input byte chooses).
const LIMITS: [usize; 4] = [0, 64, 4096, MAX_FRAME_BYTES];

/// Runs the frame decoder target on `data`.
pub fn frame_decoder(data: &[u8]) {
    let Some((&head, rest)) = data.split_first() else {
        return;
    };
    let limit = LIMITS[usize::from(head & 3)];
    // Chunk sizes 1..=32 bytes, so frames straddle pushes at every offset.
    let chunk = usize::from(head >> 3) + 1;
    let mut decoder = FrameDecoder::with_limit(limit);
    let mut poisoned: Option<WireError> = None;
    for piece in rest.chunks(chunk) {
        decoder.push(piece);
        assert!(
            decoder.buffered() <= limit + FRAME_HEADER_LEN,
            "decoder holds {} bytes over a limit of {limit}",
            decoder.buffered()
        );
        loop {
            match decoder.poll_frame() {
                Ok(Some(frame)) => {
                    assert!(poisoned.is_none(), "a frame after the decoder failed");
                    assert!(frame.payload.len() <= limit);
                    check_payload(&frame.payload);
                }
                Ok(None) => break,
                Err(e) => {
                    if let Some(first) = &poisoned {
                        assert_eq!(first, &e, "a poisoned decoder changed its error");
                    }
                    let _ = e.code();
                    poisoned = Some(e);
                    break;
                }
            }
        }
    }
    let _ = decoder.finish().map_err(|e| e.code());
    // The same bytes as one payload, and as a persisted record.
    check_payload(rest);
    let _ = crate::codec::decode::<Version>(rest);
}

/// Decodes one payload; a message that decodes must validate or be refused with a code, and
/// must survive a round trip through its encoding.
fn check_payload(payload: &[u8]) {
    match decode_message(payload) {
        Ok(msg) => {
            let _ = msg.validate(MAX_VALUE_BYTES).map_err(|e| e.code());
            let again = encode_message(&msg).expect("a decoded message re-encodes");
            assert_eq!(
                decode_message(&again).as_ref(),
                Ok(&msg),
                "round trip changed the message"
            );
        }
        Err(e) => {
            let _ = e.code();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The session target.

/// This node, the peer (as its certificate names it) and a third node.
const LOCAL: &str = "general-office";
const PEER: &str = "hefei";
const OTHER: &str = "beijing";
const CLUSTER: &str = "c0ffee";
const COLLECTIONS: [&str; 3] = ["situation", "docs", "_policy"];
/// A small value limit, so oversize values are cheap to make.
const MAX_VALUE_BYTES: usize = 48;
/// Most outputs one input may produce.
const MAX_OUTPUTS_PER_STEP: usize = 4096;
/// Most steps of one run (bounds the run time whatever the input length).
const MAX_STEPS: usize = 2048;

/// Reads fuzz bytes as small choices; runs out as zeros.
struct Bytes<'a> {
    data: &'a [u8],
}

impl Bytes<'_> {
    fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
    fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    fn u64(&mut self) -> u64 {
        (0..8).fold(0, |acc, _| (acc << 8) | u64::from(self.u8()))
    }
    fn bool(&mut self) -> bool {
        self.u8() & 1 == 1
    }
    fn take(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.data.len());
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        head
    }
    /// A counter: mostly small, sometimes 0 or huge.
    fn counter(&mut self) -> u64 {
        match self.u8() {
            0..=239 => u64::from(self.u8() % 12),
            240..=247 => u64::from(self.u16()),
            248..=251 => u64::MAX - u64::from(self.u8() % 4),
            _ => self.u64(),
        }
    }
    /// A version's timestamp in ms: mostly within the session's clock skew bound (the
    /// harness's clock starts at 1 000 s), sometimes far ahead of it, up to `u64::MAX`.
    fn stamp(&mut self) -> u64 {
        match self.u8() {
            0..=223 => u64::from(self.u16()) * 32,
            224..=239 => 1_000_000 + 300_000 + u64::from(self.u16()),
            _ => self.u64(),
        }
    }
    fn pick<'s>(&mut self, of: &[&'s str]) -> &'s str {
        of[usize::from(self.u8()) % of.len()]
    }
    fn node(&mut self) -> &'static str {
        self.pick(&[PEER, PEER, LOCAL, OTHER, "Bad_Name"])
    }
    fn replica(&mut self) -> ReplicaId {
        let node = self.node();
        let inc = match self.u8() {
            // A random incarnation (of the peer's node: one it never announced).
            n @ 252..=255 => self.u32().wrapping_add(u32::from(n)),
            n => u32::from(n % 3),
        };
        ReplicaId::new(node, inc)
            .or_else(|_| format!("{node}@xyz").parse())
            .unwrap_or_else(|_| replica(PEER, 0))
    }
    fn collection(&mut self) -> String {
        match self.u8() % 8 {
            7 => "Bad Name".into(),
            n => COLLECTIONS[usize::from(n) % COLLECTIONS.len()].into(),
        }
    }
    fn vv(&mut self) -> VersionVector {
        let mut vv = VersionVector::new();
        match self.u8() {
            n @ 252..=255 => {
                // Up to and past the limit: one entry short of it, at it, one and two past.
                many_entries(&mut vv, MAX_VECTOR_ENTRIES - 1 + usize::from(n - 252));
                for r in [replica(LOCAL, 1), replica(PEER, 1)] {
                    if self.bool() {
                        vv.raise(&r, self.counter());
                    }
                }
            }
            n => {
                for _ in 0..n % 3 {
                    let r = self.replica();
                    let c = self.counter();
                    vv.raise(&r, c);
                }
            }
        }
        vv
    }
    fn vvs(&mut self) -> Vec<(String, VersionVector)> {
        (0..self.u8() % 3)
            .map(|_| (self.collection(), self.vv()))
            .collect()
    }
    fn compression(&mut self) -> Compression {
        if self.bool() {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

fn replica(node: &str, inc: u32) -> ReplicaId {
    // The fixed names are valid node names.
    ReplicaId::new(node, inc).expect("valid fixed node name")
}

/// Raises `vv` to `n` entries (incarnations of a third node, counter 1 each).
fn many_entries(vv: &mut VersionVector, n: usize) {
    for i in vv.len()..n {
        vv.raise(&replica(OTHER, 1_000 + i as u32), 1);
    }
}

/// Adds what a hostile sender puts in a context: entries for the session's own replica, the
/// peer's, a third node's or a random incarnation, with counters up to `u64::MAX` (rarely,
/// entries past the limit).
fn hostile_context(context: &mut VersionVector, b: &mut Bytes<'_>) {
    let n = b.u8();
    if n == 255 {
        many_entries(context, MAX_VECTOR_ENTRIES + 1);
        return;
    }
    for _ in 0..=n % 4 {
        let o = match b.u8() % 4 {
            0 => replica(LOCAL, 1),
            1 => replica(PEER, 1),
            2 => replica(OTHER, 0),
            _ => b.replica(),
        };
        // Of its own origin too: valid below the version's counter, refused by validation
        // at or above it.
        context.raise(&o, b.counter());
    }
}

fn version(collection: &str, origin: &ReplicaId, counter: u64, b: &mut Bytes<'_>) -> Version {
    let mut context = VersionVector::new();
    if b.bool() {
        context.raise(origin, counter.saturating_sub(1));
    }
    match b.u8() {
        0 => context.raise(origin, counter), // supersedes itself: invalid
        240..=255 => hostile_context(&mut context, b),
        _ => {}
    }
    let value = match b.u8() % 8 {
        0 => None,
        7 => Some(vec![0xab; MAX_VALUE_BYTES + 1]),
        n => Some(vec![n; usize::from(n) * 3]),
    };
    let key = match b.u8() % 16 {
        0 => String::new(),
        1 => "k".repeat(1025),
        n => format!("k{n}"),
    };
    Version {
        collection: collection.to_owned(),
        key,
        dot: Dot::new(origin.clone(), counter),
        hlc: Hlc {
            ms: b.stamp(),
            logical: u32::from(b.u8()),
        },
        context,
        value,
        // From the counter, not from more input bytes, so the corpus's seeds keep meaning
        // what they meant before authors existed.
        author: match counter % 3 {
            0 => None,
            1 => Some(origin.node_name().to_owned()),
            _ => Some(format!("staff@{}", origin.node_name())),
        },
        signature: None,
    }
}

/// A message built from the fuzz bytes: well-formed enough to pass decoding, often valid,
/// often hostile (wrong cluster, wrong node, gaps, regressions, oversize values).
fn message(b: &mut Bytes<'_>) -> Message {
    match b.u8() % 9 {
        0 => Hello {
            protocol: if b.u8() < 240 { 1 } else { b.u16() },
            cluster_id: if b.u8() < 240 {
                CLUSTER.into()
            } else {
                "beef".into()
            },
            node: b.node().into(),
            replica: if b.u8() < 200 {
                replica(PEER, 1)
            } else {
                b.replica()
            },
            compression: (0..b.u8() % 3).map(|_| b.compression()).collect(),
            vvs: b.vvs(),
        }
        .into(),
        1 => HelloAck {
            protocol: if b.u8() < 240 { 1 } else { b.u16() },
            accepted_compression: b.compression(),
            vvs: b.vvs(),
        }
        .into(),
        2 => {
            let collection = b.collection();
            let origin = b.replica();
            let mut counter = b.counter();
            let n = usize::from(b.u8() % 4);
            let mut versions = Vec::with_capacity(n);
            for _ in 0..n {
                versions.push(version(&collection, &origin, counter, b));
                counter = counter.saturating_add(u64::from(b.u8() % 3));
            }
            Batch {
                collection,
                origin,
                versions,
            }
            .into()
        }
        3 => Complete {
            collection: b.collection(),
            origin: b.replica(),
            through: b.counter(),
        }
        .into(),
        4 => Ack {
            collection: b.collection(),
            origin: b.replica(),
            through: b.counter(),
        }
        .into(),
        5 => Heartbeat {
            now_ms: b.u64(),
            seq: u64::from(b.u8()),
        }
        .into(),
        6 => DigestRequest {
            collection: b.collection(),
            digest: Digest([b.u8(); 32]),
            vv: b.vv(),
        }
        .into(),
        7 => DigestReply {
            collection: b.collection(),
            digest: Digest([b.u8(); 32]),
            vv: b.vv(),
            equal: b.bool(),
        }
        .into(),
        _ => ErrorFrame {
            code: ErrorCode::ALL[usize::from(b.u8()) % ErrorCode::ALL.len()],
            detail: "x".repeat(usize::from(b.u8())),
        }
        .into(),
    }
}

/// The stream a message belongs on.
fn stream_of(msg: &Message) -> StreamKind {
    if msg.is_bulk() {
        StreamKind::Bulk
    } else {
        StreamKind::Control
    }
}

/// The test's view of the session and of the store behind it.
struct Harness {
    session: Session,
    peer_is_relay: bool,
    local_relay: bool,
    /// What this node may offer (every vector given to the session, merged).
    offerable: BTreeMap<String, VersionVector>,
    /// What the session was told this node holds: `offerable`, every vector answered to an
    /// Apply, and every Apply it emitted (actions run in order).
    held: BTreeMap<String, VersionVector>,
    /// The incarnation a non-relay peer announced, from [`Event::Established`].
    announced: Option<ReplicaId>,
    /// The origin of the first Apply from a non-relay peer: the only one it may bring.
    incarnation: Option<ReplicaId>,
    /// What the session did so far.
    outcome: SessionOutcome,
    /// Actions polled and not yet answered, in order.
    actions: VecDeque<Action>,
    now: u64,
    /// The session was closed and everything it queued was drained.
    drained_closed: bool,
}

impl Harness {
    fn new(b: &mut Bytes<'_>) -> Self {
        let flags = b.u8();
        let role = if flags & 1 == 0 {
            Role::Acceptor
        } else {
            Role::Dialer
        };
        let mut cfg = SessionConfig::new(LOCAL, replica(LOCAL, 1), CLUSTER);
        cfg.past_replicas = vec![replica(LOCAL, 0)];
        cfg.max_value_bytes = MAX_VALUE_BYTES;
        cfg.batch_max_versions = 3;
        cfg.batch_max_bytes = 64;
        cfg.heartbeat_interval_ms = 1_000;
        cfg.idle_timeout_ms = if flags & 8 == 0 { 30_000 } else { 0 };
        cfg.repair_interval_ms = if flags & 16 == 0 { 5_000 } else { 0 };
        cfg.relay = flags & 2 != 0;
        let local_relay = cfg.relay;
        let peer_is_relay = flags & 4 != 0;
        let peer = PeerIdentity {
            node: PEER.into(),
            is_relay: peer_is_relay,
        };
        let mut offerable: BTreeMap<String, VersionVector> = BTreeMap::new();
        let mut local = Vec::new();
        for _ in 0..b.u8() % 3 {
            let c = COLLECTIONS[usize::from(b.u8()) % COLLECTIONS.len()].to_owned();
            let mut vv = VersionVector::new();
            vv.raise(&replica(LOCAL, 1), u64::from(b.u8() % 8));
            vv.raise(&replica(OTHER, 0), u64::from(b.u8() % 8));
            offerable.entry(c.clone()).or_default().merge(&vv);
            local.push((c, vv));
        }
        let now = 1_000_000;
        Self {
            session: Session::new(role, cfg, peer, local, now),
            peer_is_relay,
            local_relay,
            held: offerable.clone(),
            offerable,
            announced: None,
            incarnation: None,
            outcome: SessionOutcome::default(),
            actions: VecDeque::new(),
            now,
            drained_closed: false,
        }
    }

    fn step(&mut self, b: &mut Bytes<'_>) {
        let closed_before = self.drained_closed;
        match b.u8() % 10 {
            0 => {
                let len = usize::from(b.u8());
                let payload = b.take(len).to_vec();
                if let Ok(msg) = decode_message(&payload) {
                    let stream = if b.bool() {
                        StreamKind::Bulk
                    } else {
                        StreamKind::Control
                    };
                    self.session.handle_frame(stream, msg, self.now);
                }
            }
            1..=3 => {
                let msg = message(b);
                let mut stream = stream_of(&msg);
                if b.u8() == 0 {
                    stream = match stream {
                        StreamKind::Bulk | StreamKind::Urgent => StreamKind::Control,
                        StreamKind::Control => StreamKind::Bulk,
                    };
                }
                self.session.handle_frame(stream, msg, self.now);
            }
            4 => {
                self.now = self.now.saturating_add(u64::from(b.u16()) * 8);
                self.session.handle_timeout(self.now);
            }
            5 | 6 => self.answer(b),
            7 => {
                // Driver inputs name collections the replica holds: always valid names.
                let c = b.pick(&COLLECTIONS).to_owned();
                let mut vv = VersionVector::new();
                let origin = if b.bool() {
                    replica(LOCAL, 1)
                } else {
                    replica(OTHER, 0)
                };
                vv.raise(&origin, b.counter().min(1 << 20));
                self.offerable.entry(c.clone()).or_default().merge(&vv);
                self.held.entry(c.clone()).or_default().merge(&vv);
                self.session.handle_local_vv(&c, vv);
            }
            8 => {
                let c = b.pick(&COLLECTIONS).to_owned();
                self.session.request_verify(&c);
            }
            _ => {
                if b.u8() < 16 {
                    let code = ErrorCode::ALL[usize::from(b.u8()) % ErrorCode::ALL.len()];
                    self.session.close(code, "fuzz close");
                }
            }
        }
        let produced = self.drain();
        if closed_before {
            assert_eq!(produced, 0, "a closed session produced output");
        }
    }

    /// Answers the oldest action as a well-behaved store would (or, rarely, wrongly).
    fn answer(&mut self, b: &mut Bytes<'_>) {
        let Some(action) = self.actions.pop_front() else {
            return;
        };
        match action {
            Action::Load {
                collection,
                origin,
                after,
                through,
                max_versions,
                ..
            } => {
                let room = through.saturating_sub(after);
                let want = u64::from(b.u8() % 4) + 1;
                let n = want.min(room).min(max_versions as u64);
                let versions: Vec<Version> = (1..=n)
                    .map(|i| {
                        let mut v = version(&collection, &origin, after + i, b);
                        v.value = Some(vec![1; 8]);
                        v.key = format!("k{}", after + i);
                        v.context = VersionVector::new();
                        v
                    })
                    .collect();
                let scanned = if n == room { through } else { after + n };
                if b.u8() == 0 {
                    // A driver that breaks its contract: the session must survive it.
                    self.session
                        .handle_loaded(&collection, &origin, versions, after);
                } else {
                    self.session
                        .handle_loaded(&collection, &origin, versions, scanned);
                }
            }
            Action::Apply { parts, .. } => {
                for ApplyPart {
                    collection,
                    origin,
                    through,
                    ..
                } in parts
                {
                    let vv = self.offerable.entry(collection.clone()).or_default();
                    vv.raise(&origin, through);
                    let vv = vv.clone();
                    self.held.entry(collection.clone()).or_default().merge(&vv);
                    self.session
                        .handle_applied(&collection, &origin, through, vv);
                }
            }
            Action::Digest { collection } => {
                let vv = self.offerable.get(&collection).cloned().unwrap_or_default();
                let digest = Digest([b.u8() % 2; 32]);
                self.session.handle_local_digest(&collection, digest, vv);
            }
            Action::TreeDigests {
                collection,
                level,
                parents,
            } => {
                let n = parents.len() * crate::tree::FANOUT as usize;
                let digests = (0..n).map(|_| Digest([b.u8() % 2; 32])).collect();
                self.session
                    .handle_tree_digests(&collection, level, &parents, digests);
            }
            Action::LoadLeaves { collection, .. } => {
                self.session
                    .handle_leaves_loaded(&collection, Vec::new(), None);
            }
        }
    }

    /// Drains every output, checking each; returns how many there were.
    fn drain(&mut self) -> usize {
        let mut produced = 0;
        while let Some((_, msg)) = self.session.poll_transmit() {
            produced += 1;
            assert!(produced <= MAX_OUTPUTS_PER_STEP, "unbounded frames");
            encode_message(&msg).expect("every emitted frame fits in a frame");
            if let Err(e) = msg.validate(MAX_VALUE_BYTES) {
                panic!("the session emitted an invalid {}: {e}", msg.kind());
            }
            if let Message::V1(MessageV1::Batch(batch)) = &msg {
                assert!(
                    self.local_relay
                        || batch.origin.node_name() == LOCAL
                        || batch.origin.node_name() == PEER,
                    "a non-relay sent versions of {}",
                    batch.origin
                );
            }
        }
        while let Some(action) = self.session.poll_action() {
            produced += 1;
            assert!(produced <= MAX_OUTPUTS_PER_STEP, "unbounded actions");
            self.check_action(&action);
            self.actions.push_back(action);
        }
        while let Some(event) = self.session.poll_event() {
            produced += 1;
            assert!(produced <= MAX_OUTPUTS_PER_STEP, "unbounded events");
            match event {
                Event::Rejected { count, reason } => {
                    assert!(count > 0);
                    self.outcome.rejected.push(reason);
                }
                Event::Established { peer_replica, .. } => self.announced = peer_replica,
                Event::Closed { reason, .. } => self.outcome.closed = Some(reason),
                _ => {}
            }
        }
        if self.session.is_closed() {
            assert_eq!(self.session.poll_timeout(), None);
            self.actions.clear();
            self.drained_closed = true;
        }
        produced
    }

    fn check_action(&mut self, action: &Action) {
        match action {
            Action::Apply { parts, repair } => {
                assert!(!parts.is_empty(), "an Apply without parts");
                assert!(!*repair || parts.len() == 1, "a merged repair Apply");
                for part in parts {
                    self.check_part(part);
                }
            }
            Action::Load {
                collection,
                origin,
                after,
                through,
                ..
            } => {
                assert!(after < through, "an empty load");
                let may = self
                    .offerable
                    .get(collection)
                    .map_or(0, |vv| vv.get(origin));
                assert!(
                    *through <= may,
                    "load of {origin} through {through} beyond the offerable {may}"
                );
                assert!(
                    self.local_relay || origin.node_name() == LOCAL || origin.node_name() == PEER
                );
            }
            Action::Digest { .. } | Action::TreeDigests { .. } | Action::LoadLeaves { .. } => {}
        }
    }

    /// Checks one part of an Apply: the relay and incarnation rules, every version of the
    /// part's stream under its completion, and no context beyond what this node holds.
    fn check_part(&mut self, part: &ApplyPart) {
        let ApplyPart {
            collection,
            origin,
            versions,
            through,
        } = part;
        // A peer may send back this node's own earlier incarnations (never its current one).
        let own_past = *origin == replica(LOCAL, 0);
        assert!(
            self.peer_is_relay || origin.node_name() == PEER || own_past,
            "applied versions of {origin} from non-relay {PEER}"
        );
        if !self.peer_is_relay && !own_past {
            let first = self.incarnation.get_or_insert_with(|| origin.clone());
            assert_eq!(first, origin, "a non-relay brought two incarnations");
            if let Some(announced) = &self.announced {
                assert_eq!(
                    announced, origin,
                    "a non-relay brought one it never announced"
                );
            }
        }
        let held = self.held.entry(collection.clone()).or_default();
        // A leaf repair's part completes through 0: its versions must be held already.
        let bound = if *through == 0 {
            held.get(origin)
        } else {
            *through
        };
        for v in versions {
            assert_eq!(&v.dot.origin, origin);
            assert_eq!(&v.collection, collection);
            assert!(v.dot.counter <= bound, "version above its completion");
            assert!(v.value.as_ref().is_none_or(|x| x.len() <= MAX_VALUE_BYTES));
            if let Some((o, n)) = v
                .context
                .iter()
                .find(|(o, n)| *o != origin && *n > held.get(o))
            {
                panic!(
                    "applied {} whose context covers {o}:{n}, beyond the {} held",
                    v.dot,
                    held.get(o)
                );
            }
        }
        held.raise(origin, *through);
        self.outcome.applied += versions.len();
    }
}

/// What one run of the session target did, for tests that check a seed reaches its aim.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionOutcome {
    /// The reason of every [`Event::Rejected`], in order.
    pub rejected: Vec<String>,
    /// Versions in the Applies the session emitted.
    pub applied: usize,
    /// Why the session closed, if it did.
    pub closed: Option<String>,
}

/// Runs the session target on `data`.
pub fn session_sequence(data: &[u8]) {
    let _ = session_run(data);
}

/// Runs the session target on `data` and reports what the session did.
pub fn session_run(data: &[u8]) -> SessionOutcome {
    let mut b = Bytes { data };
    let mut h = Harness::new(&mut b);
    h.drain();
    let mut steps = 0;
    while !b.is_empty() && steps < MAX_STEPS {
        h.step(&mut b);
        steps += 1;
    }
    let _ = h.session.status();
    h.outcome
}
