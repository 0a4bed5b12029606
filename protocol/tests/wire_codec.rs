//! Tests of the wire layer: message round trips through frames, reassembly across arbitrary
//! splits, frame and decode limits, malformed input (never a panic) and semantic validation.

use std::collections::{BTreeMap, BTreeSet};

use officesync_protocol::names::NameError;
use officesync_protocol::wire::{
    decode_message, encode_frame, encode_message, encode_raw_frame, About, Ack, Batch,
    BatchComplete, Complete, Compression, DictionaryId, DictionaryOffer, DictionaryReply,
    DigestReply, DigestRequest, ErrorCode, ErrorFrame, Frame, FrameDecoder, FrameFlags, FullRepair,
    Heartbeat, Hello, HelloAck, HelloAckV2, Message, MessageV1, MessageV2, RepairApplied,
    RepairBatch, TreeReply, TreeRequest, WireError, DEFAULT_MAX_VALUE_BYTES, FRAME_HEADER_LEN,
    MAX_ERROR_DETAIL_BYTES, MAX_FRAME_BYTES, PROTOCOL_VERSION,
};
use officesync_protocol::{Digest, Dot, Hlc, ReplicaId, Version, VersionVector};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

// ---------------------------------------------------------------------------------------------
// Strategies: every generated message is valid, so round trips also check `validate` accepts.

fn node_name() -> impl Strategy<Value = String> {
    "[a-z0-9][a-z0-9-]{0,15}"
}

fn replica_of(node: String) -> impl Strategy<Value = ReplicaId> {
    any::<u32>().prop_map(move |inc| ReplicaId::new(&node, inc).expect("valid node name"))
}

fn replica() -> impl Strategy<Value = ReplicaId> {
    node_name().prop_flat_map(replica_of)
}

fn collection() -> impl Strategy<Value = String> {
    "_?[a-z0-9][a-z0-9_.-]{0,20}"
}

fn vv() -> impl Strategy<Value = VersionVector> {
    prop::collection::vec((replica(), 1..=u64::MAX), 0..4).prop_map(|e| e.into_iter().collect())
}

fn vvs() -> impl Strategy<Value = Vec<(String, VersionVector)>> {
    prop::collection::btree_map(collection(), vv(), 0..4).prop_map(|m| m.into_iter().collect())
}

fn hlc() -> impl Strategy<Value = Hlc> {
    (any::<u64>(), any::<u32>()).prop_map(|(ms, logical)| Hlc { ms, logical })
}

/// A version of `origin` at `counter` whose context never covers its own dot.
fn version(coll: String, origin: ReplicaId, counter: u64) -> impl Strategy<Value = Version> {
    let own_below = 0..counter;
    (
        "\\PC{1,40}",
        hlc(),
        vv(),
        own_below,
        prop::option::of(prop::collection::vec(any::<u8>(), 0..64)),
    )
        .prop_map(move |(key, hlc, others, own, value)| {
            let mut context: VersionVector = others
                .iter()
                .filter(|(o, _)| **o != origin)
                .map(|(o, c)| (o.clone(), c))
                .collect();
            context.raise(&origin, own);
            Version {
                collection: coll.clone(),
                key,
                dot: Dot::new(origin.clone(), counter),
                hlc,
                context,
                value,
                author: None,
                signature: None,
            }
        })
}

fn batch() -> impl Strategy<Value = Batch> {
    (
        collection(),
        replica(),
        prop::collection::btree_set(1..=u64::MAX, 1..6),
    )
        .prop_flat_map(|(coll, origin, counters)| {
            let versions: Vec<_> = counters
                .into_iter()
                .map(|c| version(coll.clone(), origin.clone(), c))
                .collect();
            (Just(coll.clone()), Just(origin.clone()), versions)
        })
        .prop_map(|(collection, origin, versions)| Batch {
            collection,
            origin,
            versions,
        })
}

fn hello() -> impl Strategy<Value = Hello> {
    node_name()
        .prop_flat_map(|node| (Just(node.clone()), replica_of(node)))
        .prop_flat_map(|(node, replica)| {
            (
                any::<u16>().prop_map(|p| p.max(1)),
                "[0-9a-f]{64}",
                Just(node),
                Just(replica),
                prop::collection::vec(compression(), 0..3),
                vvs(),
            )
        })
        .prop_map(
            |(protocol, cluster_id, node, replica, compression, vvs)| Hello {
                protocol,
                cluster_id,
                node,
                replica,
                compression,
                vvs,
            },
        )
}

fn compression() -> impl Strategy<Value = Compression> {
    prop_oneof![Just(Compression::None), Just(Compression::Zstd)]
}

fn error_code() -> impl Strategy<Value = ErrorCode> {
    prop::sample::select(ErrorCode::ALL.to_vec())
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        hello().prop_map(Message::from),
        (any::<u16>(), compression(), vvs()).prop_map(|(p, c, vvs)| HelloAck {
            protocol: p.max(1),
            accepted_compression: c,
            vvs
        }
        .into()),
        batch().prop_map(Message::from),
        (collection(), replica(), 1..=u64::MAX).prop_map(|(collection, origin, through)| {
            Complete {
                collection,
                origin,
                through,
            }
            .into()
        }),
        (collection(), replica(), 1..=u64::MAX).prop_map(|(collection, origin, through)| {
            Ack {
                collection,
                origin,
                through,
            }
            .into()
        }),
        (any::<u64>(), any::<u64>()).prop_map(|(now_ms, seq)| Heartbeat { now_ms, seq }.into()),
        (collection(), any::<[u8; 32]>(), vv()).prop_map(|(collection, d, vv)| DigestRequest {
            collection,
            digest: Digest(d),
            vv
        }
        .into()),
        (collection(), any::<[u8; 32]>(), vv(), any::<bool>()).prop_map(
            |(collection, d, vv, equal)| DigestReply {
                collection,
                digest: Digest(d),
                vv,
                equal
            }
            .into()
        ),
        (error_code(), "\\PC{0,50}").prop_map(|(code, detail)| ErrorFrame { code, detail }.into()),
    ]
}

// ---------------------------------------------------------------------------------------------
// Helpers.

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        // Cargo runs tests in the package root: keep regressions in protocol/proptest-regressions.
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/wire_codec.txt",
        ))),
        ..ProptestConfig::with_cases(cases)
    }
}

/// Every frame ready in `d`, or the first error.
fn drain(d: &mut FrameDecoder) -> Result<Vec<Frame>, WireError> {
    let mut out = Vec::new();
    while let Some(f) = d.poll_frame()? {
        out.push(f);
    }
    Ok(out)
}

fn rid(name: &str) -> ReplicaId {
    ReplicaId::new(name, 1).expect("valid test name")
}

fn ver(origin: &ReplicaId, counter: u64) -> Version {
    Version {
        collection: "situation".into(),
        key: "hefei/grain".into(),
        dot: Dot::new(origin.clone(), counter),
        hlc: Hlc { ms: 5, logical: 0 },
        context: VersionVector::new(),
        value: Some(b"{}".to_vec()),
        author: None,
        signature: None,
    }
}

fn batch_of(versions: Vec<Version>) -> Batch {
    Batch {
        collection: "situation".into(),
        origin: rid("hefei"),
        versions,
    }
}

fn check(msg: impl Into<Message>) -> Result<(), WireError> {
    msg.into().validate(DEFAULT_MAX_VALUE_BYTES)
}

fn bin<T: bincode::Encode>(value: T) -> Vec<u8> {
    bincode::encode_to_vec(value, bincode::config::standard()).expect("encodes")
}

/// A value decoded from bytes, bypassing the validation its constructors do.
fn unchecked<T: bincode::Decode<()>>(bytes: &[u8]) -> T {
    bincode::decode_from_slice(bytes, bincode::config::standard())
        .expect("decodes")
        .0
}

fn sample_messages() -> Vec<Message> {
    let r = rid("hefei");
    let vvs = vec![(
        "situation".to_string(),
        [(r.clone(), 3)].into_iter().collect(),
    )];
    vec![
        Hello {
            protocol: PROTOCOL_VERSION,
            cluster_id: "ab".repeat(32),
            node: "hefei".into(),
            replica: r.clone(),
            compression: vec![Compression::Zstd, Compression::None],
            vvs: vvs.clone(),
        }
        .into(),
        HelloAck {
            protocol: 1,
            accepted_compression: Compression::Zstd,
            vvs,
        }
        .into(),
        batch_of(vec![ver(&r, 1), ver(&r, 3)]).into(),
        Complete {
            collection: "situation".into(),
            origin: r.clone(),
            through: 3,
        }
        .into(),
        Ack {
            collection: "situation".into(),
            origin: r.clone(),
            through: 3,
        }
        .into(),
        Heartbeat { now_ms: 1, seq: 2 }.into(),
        DigestRequest {
            collection: "_policy".into(),
            digest: Digest([7; 32]),
            vv: VersionVector::new(),
        }
        .into(),
        DigestReply {
            collection: "_policy".into(),
            digest: Digest([8; 32]),
            vv: VersionVector::new(),
            equal: false,
        }
        .into(),
        ErrorFrame {
            code: ErrorCode::Revoked,
            detail: "node hefei is revoked".into(),
        }
        .into(),
        About {
            release: "officesyncd 0.1.0".into(),
        }
        .into(),
        MessageV2::Echo(Heartbeat { now_ms: 9, seq: 4 }).into(),
        HelloAckV2 {
            ack: HelloAck {
                protocol: PROTOCOL_VERSION,
                accepted_compression: Compression::Zstd,
                vvs: vec![],
            },
            replica: rid("general-office"),
            cluster_id: "ab".repeat(32),
        }
        .into(),
        TreeRequest {
            collection: "situation".into(),
            level: 2,
            parents: vec![3, 9],
            digests: vec![Digest([5; 32]); 32],
        }
        .into(),
        TreeReply {
            collection: "situation".into(),
            level: 2,
            differing: vec![48, 151],
        }
        .into(),
        RepairBatch {
            collection: "situation".into(),
            versions: vec![ver(&r, 3), ver(&rid("wuhu"), 1)],
            last: true,
            requester: false,
        }
        .into(),
        RepairApplied {
            collection: "situation".into(),
            requester: true,
        }
        .into(),
        FullRepair {
            collection: "situation".into(),
        }
        .into(),
        DictionaryOffer {
            collection: "situation".into(),
            id: DictionaryId::of(b"a dictionary"),
            dictionary: b"a dictionary".to_vec(),
        }
        .into(),
        DictionaryReply {
            collection: "situation".into(),
            id: DictionaryId::of(b"a dictionary"),
            accepted: true,
        }
        .into(),
        BatchComplete {
            batch: batch_of(vec![ver(&r, 1), ver(&r, 3)]),
            through: 4,
        }
        .into(),
    ]
}

// ---------------------------------------------------------------------------------------------
// Round trips and reassembly.

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn every_message_round_trips_through_a_frame(msg in message(), zstd in any::<bool>()) {
        prop_assert_eq!(msg.validate(DEFAULT_MAX_VALUE_BYTES), Ok(()));
        let flags = if zstd { FrameFlags::ZSTD } else { FrameFlags::NONE };
        let frame = encode_frame(&msg, flags).expect("encodes");
        let payload = encode_message(&msg).expect("encodes");
        prop_assert_eq!(&frame[FRAME_HEADER_LEN..], &payload[..]);
        prop_assert_eq!(encode_raw_frame(flags, &payload).expect("frames"), frame.clone());

        let mut d = FrameDecoder::new();
        d.push(&frame);
        let frames = drain(&mut d).expect("valid frame");
        prop_assert_eq!(frames.len(), 1);
        prop_assert_eq!(frames[0].flags, flags);
        prop_assert_eq!(decode_message(&frames[0].payload).expect("decodes"), msg);
        prop_assert_eq!(d.finish(), Ok(()));
    }

    #[test]
    fn frames_split_anywhere_reassemble_exactly(
        frames in prop::collection::vec(
            (any::<bool>(), prop::collection::vec(any::<u8>(), 0..300)), 1..6),
        msgs in prop::collection::vec(message(), 0..3),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..20),
    ) {
        let mut expected: Vec<Frame> = frames
            .into_iter()
            .map(|(z, payload)| Frame {
                flags: if z { FrameFlags::ZSTD } else { FrameFlags::NONE },
                payload,
            })
            .collect();
        for m in &msgs {
            expected.push(Frame { flags: FrameFlags::NONE, payload: encode_message(m).expect("encodes") });
        }
        let mut stream = Vec::new();
        for f in &expected {
            stream.extend(encode_raw_frame(f.flags, &f.payload).expect("frames"));
        }
        // The largest frame is exactly at the limit.
        let limit = expected.iter().map(|f| f.payload.len()).max().unwrap_or(0);
        let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
        cuts.push(stream.len());
        cuts.sort_unstable();

        let mut d = FrameDecoder::with_limit(limit);
        let mut got = Vec::new();
        let mut at = 0;
        for cut in cuts {
            d.push(&stream[at..cut]);
            at = cut;
            prop_assert!(d.buffered() <= limit + FRAME_HEADER_LEN);
            got.extend(drain(&mut d).expect("valid frames"));
        }
        prop_assert_eq!(d.finish(), Ok(()));
        prop_assert_eq!(&got, &expected);
        let decoded: Vec<Message> = got[got.len() - msgs.len()..]
            .iter()
            .map(|f| decode_message(&f.payload).expect("decodes"))
            .collect();
        prop_assert_eq!(decoded, msgs);
    }

    #[test]
    fn every_proper_prefix_of_a_payload_is_truncated(msg in message()) {
        let payload = encode_message(&msg).expect("encodes");
        for end in 0..payload.len() {
            prop_assert_eq!(decode_message(&payload[..end]), Err(WireError::Truncated));
        }
    }

    #[test]
    fn trailing_bytes_are_refused(msg in message(), extra in prop::collection::vec(any::<u8>(), 1..16)) {
        let mut payload = encode_message(&msg).expect("encodes");
        payload.extend_from_slice(&extra);
        prop_assert_eq!(decode_message(&payload), Err(WireError::TrailingBytes { count: extra.len() }));
    }
}

#[test]
fn sample_of_every_variant_round_trips_and_validates() {
    let msgs = sample_messages();
    let kinds: BTreeSet<&str> = msgs.iter().map(Message::kind).collect();
    assert_eq!(kinds.len(), 19, "a sample of every kind");
    let mut stream = Vec::new();
    for m in &msgs {
        assert_eq!(m.validate(DEFAULT_MAX_VALUE_BYTES), Ok(()), "{}", m.kind());
        // The dialer's hello always travels as version 1, so nodes of either version negotiate;
        // the acceptor answers in the version agreed.
        let v1_form = matches!(m, Message::V1(MessageV1::Hello(_) | MessageV1::HelloAck(_)));
        // Version 3 only added messages to version 2's layout: its frames are version-2 messages.
        let expected = if v1_form { 1 } else { 2 };
        assert_eq!(m.protocol_version(), expected, "{}", m.kind());
        stream.extend(encode_frame(m, FrameFlags::NONE).expect("encodes"));
    }
    // All frames in one push.
    let mut d = FrameDecoder::new();
    d.push(&stream);
    let got: Vec<Message> = drain(&mut d)
        .expect("valid frames")
        .iter()
        .map(|f| decode_message(&f.payload).expect("decodes"))
        .collect();
    assert_eq!(got, msgs);
    assert_eq!(d.poll_frame(), Ok(None));
    assert_eq!(d.buffered(), 0);
}

#[test]
fn layout_is_the_documented_one() {
    let msg: Message = Heartbeat { now_ms: 1, seq: 2 }.into();
    // Length 4 (big-endian), flags, then V2 = 1, Heartbeat = 5, varint 1, varint 2.
    assert_eq!(
        encode_frame(&msg, FrameFlags::NONE).expect("encodes"),
        [0, 0, 0, 4, 0, 1, 5, 1, 2]
    );
    // The same heartbeat as version 1 sends it: V1 = 0.
    let v1 = msg.into_v2().at(1).expect("a heartbeat fits version 1");
    assert_eq!(
        encode_frame(&v1, FrameFlags::NONE).expect("encodes"),
        [0, 0, 0, 4, 0, 0, 5, 1, 2]
    );
    let err: Message = ErrorFrame {
        code: ErrorCode::Internal,
        detail: String::new(),
    }
    .into();
    // Error codes travel as their protocol numbers.
    assert_eq!(encode_message(&err).expect("encodes"), [1, 8, 9, 0]);
}

// ---------------------------------------------------------------------------------------------
// Limits.

#[test]
fn huge_declared_length_fails_at_once_without_buffering() {
    let mut d = FrameDecoder::new();
    d.push(&[0xff, 0xff, 0xff, 0xff, 0x00]);
    let err = d.poll_frame().expect_err("4 GiB frame");
    assert_eq!(
        err,
        WireError::FrameTooLarge {
            len: u64::from(u32::MAX),
            limit: MAX_FRAME_BYTES
        }
    );
    assert_eq!(err.code(), ErrorCode::FrameTooLarge);
    assert_eq!(d.buffered(), 0);
    // Poisoned: more input is discarded and the error sticks.
    d.push(&[0u8; 4096]);
    assert_eq!(d.buffered(), 0);
    assert_eq!(d.poll_frame(), Err(err.clone()));
    assert_eq!(d.finish(), Err(err));
}

#[test]
fn declared_length_is_checked_against_the_decoder_limit() {
    let limit = 1000;
    let over = encode_raw_frame(FrameFlags::NONE, &[1; 1001]).expect("frames");
    let mut d = FrameDecoder::with_limit(limit);
    d.push(&over[..FRAME_HEADER_LEN]);
    assert_eq!(
        d.poll_frame(),
        Err(WireError::FrameTooLarge { len: 1001, limit })
    );
    // Exactly the limit is fine; frames before a bad one are still delivered.
    let ok = encode_raw_frame(FrameFlags::NONE, &[2; 1000]).expect("frames");
    let mut d = FrameDecoder::with_limit(limit);
    d.push(&[ok.clone(), over].concat());
    assert_eq!(
        d.poll_frame().expect("first ok").map(|f| f.payload.len()),
        Some(1000)
    );
    assert!(matches!(
        d.poll_frame(),
        Err(WireError::FrameTooLarge { .. })
    ));
    assert_eq!(
        FrameDecoder::with_limit(usize::MAX).limit(),
        MAX_FRAME_BYTES
    );
}

#[test]
fn oversize_messages_and_payloads_are_refused() {
    let r = rid("hefei");
    let mut v = ver(&r, 1);
    v.value = Some(vec![0; MAX_FRAME_BYTES]);
    let msg: Message = batch_of(vec![v]).into();
    let too_large = |e: WireError| {
        matches!(
            e,
            WireError::FrameTooLarge {
                limit: MAX_FRAME_BYTES,
                ..
            }
        )
    };
    assert!(too_large(
        encode_frame(&msg, FrameFlags::NONE).expect_err("too large")
    ));
    assert!(too_large(encode_message(&msg).expect_err("too large")));
    let big = vec![0; MAX_FRAME_BYTES + 1];
    assert!(too_large(
        encode_raw_frame(FrameFlags::NONE, &big).expect_err("too large")
    ));
    assert!(too_large(decode_message(&big).expect_err("too large")));
    // An empty frame is a frame, but not a message.
    let mut d = FrameDecoder::new();
    d.push(&[0, 0, 0, 0, 0]);
    let f = d.poll_frame().expect("valid").expect("complete");
    assert_eq!(decode_message(&f.payload), Err(WireError::Truncated));
}

#[test]
fn a_maximum_value_fits_in_a_frame() {
    let r = rid("hefei");
    let mut v = ver(&r, 7);
    v.key = "k".repeat(1024);
    v.value = Some(vec![0xab; DEFAULT_MAX_VALUE_BYTES]);
    v.context = (0..200)
        .map(|i| (ReplicaId::new(&format!("office-{i}"), i).expect("valid"), 9))
        .collect();
    let msg: Message = batch_of(vec![v]).into();
    let frame = encode_frame(&msg, FrameFlags::NONE).expect("fits");
    let mut d = FrameDecoder::new();
    d.push(&frame);
    let f = d.poll_frame().expect("valid").expect("complete");
    let back = decode_message(&f.payload).expect("decodes");
    assert_eq!(back.validate(DEFAULT_MAX_VALUE_BYTES), Ok(()));
    assert_eq!(back, msg);
}

#[test]
fn a_full_frame_of_tiny_versions_decodes_within_the_decode_limit() {
    // The densest valid batch: one-byte names and keys, tombstones, no context. bincode's
    // decode limit counts in-memory sizes, several times the encoded size here.
    let r = ReplicaId::new("a", 0).expect("valid");
    let tiny = |c: u64| Version {
        collection: "c".into(),
        key: "k".into(),
        dot: Dot::new(r.clone(), c),
        hlc: Hlc::default(),
        context: VersionVector::new(),
        value: None,
        author: None,
        signature: None,
    };
    // Counters above 65535 take 5 bytes; most of a full frame's do.
    let n = MAX_FRAME_BYTES / bin(tiny(1 << 16)).len();
    let versions: Vec<Version> = (1..=n as u64).map(tiny).collect();
    let mut msg = Batch {
        collection: "c".into(),
        origin: r,
        versions,
    };
    while encode_message(&msg.clone().into()).is_err() {
        msg.versions.truncate(msg.versions.len() * 99 / 100);
    }
    let payload = encode_message(&msg.clone().into()).expect("fits");
    assert!(
        payload.len() > MAX_FRAME_BYTES * 9 / 10,
        "{} bytes",
        payload.len()
    );
    assert_eq!(decode_message(&payload).expect("decodes"), msg.into());
}

// ---------------------------------------------------------------------------------------------
// Malformed input.

#[test]
fn unknown_flag_bits_are_refused() {
    for flags in [0x02u8, 0x04, 0x80, 0xff, 0x03] {
        let mut d = FrameDecoder::new();
        d.push(&[0, 0, 0, 1, flags, 0]);
        let err = d.poll_frame().expect_err("unknown flag");
        assert_eq!(err, WireError::UnknownFlags { flags });
        assert_eq!(err.code(), ErrorCode::Malformed);
        assert!(FrameFlags::from_bits(flags).is_err());
    }
    let zstd = FrameFlags::from_bits(1).expect("known");
    assert!(zstd.is_zstd() && !FrameFlags::NONE.is_zstd());
    assert_eq!(zstd.bits(), 1);
}

#[test]
fn unknown_tags_are_refused() {
    // A message of a later protocol version: outer tag 2 is V3.
    let err = decode_message(&[2, 5, 1, 2]).expect_err("V3");
    assert_eq!(err, WireError::UnsupportedVersion { version: 3 });
    assert_eq!(
        decode_message(&[1, 21, 1, 2]),
        Err(WireError::UnknownTag {
            type_name: "MessageV2",
            found: 21
        })
    );
    assert_eq!(err.code(), ErrorCode::UnsupportedVersion);
    // A V1 message kind that does not exist.
    assert_eq!(
        decode_message(&[0, 9, 1, 2]),
        Err(WireError::UnknownTag {
            type_name: "MessageV1",
            found: 9
        })
    );
    // An unknown compression inside a hello.
    let hello = [
        vec![0, 0],
        bin(1u16),
        bin("ab"),
        bin("hefei"),
        bin(rid("hefei")),
        vec![1, 7],
        bin(Vec::<(String, VersionVector)>::new()),
    ]
    .concat();
    assert_eq!(
        decode_message(&hello),
        Err(WireError::UnknownTag {
            type_name: "Compression",
            found: 7
        })
    );
    // Error codes outside 1..=10.
    for code in [0u32, 11, 1000] {
        let err =
            decode_message(&[vec![0, 8], bin(code), bin("x")].concat()).expect_err("bad code");
        assert_eq!(
            err,
            WireError::UnknownTag {
                type_name: "ErrorCode",
                found: code
            }
        );
        assert_eq!(err.code(), ErrorCode::Malformed);
    }
}

#[test]
fn invalid_encodings_are_malformed() {
    // A bool that is neither 0 nor 1 in a digest reply.
    let reply = [
        vec![0, 7],
        bin("c"),
        vec![0; 32],
        bin(VersionVector::new()),
        vec![2],
    ]
    .concat();
    assert!(matches!(
        decode_message(&reply),
        Err(WireError::Malformed { .. })
    ));
    // Invalid UTF-8 in a detail string.
    let err = [vec![0, 8], bin(1u32), vec![2, 0xff, 0xfe]].concat();
    assert!(matches!(
        decode_message(&err),
        Err(WireError::Malformed { .. })
    ));
    // A container length far beyond the payload must not be allocated.
    let huge = [
        vec![0, 0],
        bin(1u16),
        vec![0xfd],
        u64::MAX.to_le_bytes().to_vec(),
    ]
    .concat();
    assert!(decode_message(&huge).is_err());
    let many = [
        vec![0, 2],
        bin("c"),
        bin(rid("a")),
        vec![0xfc],
        (1u32 << 30).to_le_bytes().to_vec(),
    ]
    .concat();
    assert!(matches!(
        decode_message(&many),
        Err(WireError::DecodeLimit { .. })
    ));
}

#[test]
fn stream_ending_inside_a_frame_is_truncated() {
    let frame = encode_frame(&sample_messages()[0], FrameFlags::NONE).expect("encodes");
    for end in [1, FRAME_HEADER_LEN, frame.len() - 1] {
        let mut d = FrameDecoder::new();
        d.push(&frame[..end]);
        assert_eq!(d.poll_frame(), Ok(None));
        let err = d.finish().expect_err("truncated");
        assert_eq!(err, WireError::TruncatedFrame { buffered: end });
        assert_eq!(err.code(), ErrorCode::Malformed);
    }
}

proptest! {
    #![proptest_config(config(4096))]

    #[test]
    fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..600), v1 in any::<bool>()) {
        let payload = if v1 { [&[0u8][..], &bytes].concat() } else { bytes.clone() };
        if let Ok(m) = decode_message(&payload) {
            let _ = m.validate(DEFAULT_MAX_VALUE_BYTES);
        }
        let mut d = FrameDecoder::with_limit(256);
        d.push(&bytes);
        while let Ok(Some(f)) = d.poll_frame() {
            if let Ok(m) = decode_message(&f.payload) {
                let _ = m.validate(DEFAULT_MAX_VALUE_BYTES);
            }
        }
        prop_assert!(d.buffered() <= 256 + FRAME_HEADER_LEN);
        let _ = d.finish();
    }

    #[test]
    fn mutated_messages_never_panic(
        msg in message(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let mut payload = encode_message(&msg).expect("encodes");
        for (at, byte) in edits {
            let i = at.index(payload.len());
            payload[i] = byte;
        }
        if let Ok(m) = decode_message(&payload) {
            let _ = m.validate(DEFAULT_MAX_VALUE_BYTES);
            let _ = encode_message(&m);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Validation.

#[test]
fn batches_must_be_of_one_origin_and_collection_in_counter_order() {
    let r = rid("hefei");
    assert_eq!(
        check(batch_of(vec![ver(&r, 1), ver(&r, 2), ver(&r, 9)])),
        Ok(())
    );

    let err = check(batch_of(vec![ver(&r, 3), ver(&r, 2)])).expect_err("out of order");
    assert_eq!(
        err,
        WireError::OutOfOrder {
            previous: 3,
            counter: 2
        }
    );
    assert_eq!(err.code(), ErrorCode::OutOfOrder);
    assert_eq!(
        check(batch_of(vec![ver(&r, 2), ver(&r, 2)])),
        Err(WireError::OutOfOrder {
            previous: 2,
            counter: 2
        })
    );

    let other = rid("anqing");
    let err = check(batch_of(vec![ver(&r, 1), ver(&other, 2)])).expect_err("wrong origin");
    assert!(matches!(err, WireError::WrongOrigin { .. }), "{err}");
    assert_eq!(err.code(), ErrorCode::Malformed);

    let mut v = ver(&r, 2);
    v.collection = "documents".into();
    assert!(matches!(
        check(batch_of(vec![ver(&r, 1), v])),
        Err(WireError::WrongCollection { .. })
    ));
    assert_eq!(check(batch_of(vec![])), Err(WireError::EmptyBatch));
}

#[test]
fn counters_start_at_one() {
    let r = rid("hefei");
    assert!(matches!(
        check(batch_of(vec![ver(&r, 0)])),
        Err(WireError::ZeroCounter { .. })
    ));
    let complete = Complete {
        collection: "situation".into(),
        origin: r.clone(),
        through: 0,
    };
    assert!(matches!(
        check(complete),
        Err(WireError::ZeroCounter { .. })
    ));
    let ack = Ack {
        collection: "situation".into(),
        origin: r.clone(),
        through: 0,
    };
    assert!(matches!(check(ack), Err(WireError::ZeroCounter { .. })));
    // A vector entry of 0 can only arrive from the wire.
    let zero: VersionVector = unchecked(&bin(BTreeMap::from([(r.clone(), 0u64)])));
    let req = DigestRequest {
        collection: "situation".into(),
        digest: Digest::default(),
        vv: zero.clone(),
    };
    assert!(matches!(check(req), Err(WireError::ZeroCounter { .. })));
    let mut v = ver(&r, 5);
    v.context = zero;
    assert!(matches!(
        check(batch_of(vec![v])),
        Err(WireError::ZeroCounter { .. })
    ));
}

#[test]
fn names_keys_and_replica_ids_are_checked() {
    let r = rid("hefei");
    let bad_coll = Complete {
        collection: "Situation".into(),
        origin: r.clone(),
        through: 1,
    };
    assert_eq!(
        check(bad_coll),
        Err(WireError::InvalidName(NameError::Collection(
            "Situation".into()
        )))
    );
    let mut b = batch_of(vec![ver(&r, 1)]);
    b.collection = "a/b".into();
    b.versions[0].collection = "a/b".into();
    assert!(matches!(
        check(b),
        Err(WireError::InvalidName(NameError::Collection(_)))
    ));

    let mut v = ver(&r, 1);
    v.key = String::new();
    assert_eq!(
        check(batch_of(vec![v.clone()])),
        Err(WireError::InvalidName(NameError::Key(0)))
    );
    v.key = "k".repeat(1025);
    assert_eq!(
        check(batch_of(vec![v])),
        Err(WireError::InvalidName(NameError::Key(1025)))
    );

    // Replica ids decode from any string; validation refuses invalid ones.
    let bogus: ReplicaId = unchecked(&bin("Not A Replica"));
    let ack = Ack {
        collection: "situation".into(),
        origin: bogus.clone(),
        through: 1,
    };
    assert_eq!(
        check(ack),
        Err(WireError::InvalidReplicaId("Not A Replica".into()))
    );
    let vv: VersionVector = unchecked(&bin(BTreeMap::from([(bogus, 1u64)])));
    let reply = DigestReply {
        collection: "c".into(),
        digest: Digest::default(),
        vv,
        equal: true,
    };
    assert!(matches!(check(reply), Err(WireError::InvalidReplicaId(_))));

    // A hostile name is clipped in the error.
    let long: ReplicaId = unchecked(&bin("x".repeat(100_000)));
    let err = check(Ack {
        collection: "c".into(),
        origin: long,
        through: 1,
    })
    .expect_err("bad id");
    assert!(
        err.to_string().len() < 300,
        "{} bytes",
        err.to_string().len()
    );
    let long_coll = Complete {
        collection: "y".repeat(100_000),
        origin: r,
        through: 1,
    };
    assert!(check(long_coll).expect_err("bad name").to_string().len() < 400);
}

#[test]
fn hello_identity_is_checked() {
    let Message::V1(MessageV1::Hello(good)) = sample_messages().remove(0) else {
        panic!("first sample is a hello");
    };
    assert_eq!(good.validate(), Ok(()));

    let mut h = good.clone();
    h.node = "Hefei".into();
    assert!(matches!(
        h.validate(),
        Err(WireError::InvalidName(NameError::Node(_)))
    ));
    let mut h = good.clone();
    h.node = "anqing".into();
    assert!(matches!(
        h.validate(),
        Err(WireError::ReplicaNodeMismatch { .. })
    ));
    for bad in ["", "AB", "xyz", &"a".repeat(129)] {
        let mut h = good.clone();
        h.cluster_id = bad.to_string();
        assert!(
            matches!(h.validate(), Err(WireError::InvalidClusterId(_))),
            "{bad:?}"
        );
    }
    let mut h = good.clone();
    h.protocol = 0;
    assert_eq!(
        h.validate(),
        Err(WireError::UnsupportedVersion { version: 0 })
    );
    let mut h = good.clone();
    h.vvs.push(h.vvs[0].clone());
    assert_eq!(
        h.validate(),
        Err(WireError::DuplicateCollection("situation".into()))
    );
    let ack = HelloAck {
        protocol: 1,
        accepted_compression: Compression::None,
        vvs: h.vvs,
    };
    assert!(matches!(check(ack), Err(WireError::DuplicateCollection(_))));
}

#[test]
fn values_contexts_and_details_are_bounded() {
    let r = rid("hefei");
    let mut v = ver(&r, 4);
    v.value = Some(vec![0; 11]);
    let msg: Message = batch_of(vec![v.clone()]).into();
    assert_eq!(msg.validate(11), Ok(()));
    let err = msg.validate(10).expect_err("value too large");
    assert_eq!(err, WireError::ValueTooLarge { len: 11, limit: 10 });
    assert_eq!(err.code(), ErrorCode::FrameTooLarge);

    v.context = [(r.clone(), 3), (rid("anqing"), 8)].into_iter().collect();
    assert_eq!(check(batch_of(vec![v.clone()])), Ok(()));
    v.context.raise(&r, 4);
    assert!(matches!(
        check(batch_of(vec![v])),
        Err(WireError::SelfSuperseding { .. })
    ));

    let detail = "d".repeat(MAX_ERROR_DETAIL_BYTES);
    assert_eq!(
        check(ErrorFrame {
            code: ErrorCode::Internal,
            detail: detail.clone()
        }),
        Ok(())
    );
    assert_eq!(
        check(ErrorFrame {
            code: ErrorCode::Internal,
            detail: detail + "d"
        }),
        Err(WireError::DetailTooLong {
            len: MAX_ERROR_DETAIL_BYTES + 1
        })
    );
}

#[test]
fn an_author_must_be_of_the_origins_node_and_a_signature_bounded() {
    let r = rid("hefei");
    let with = |author: Option<&str>, signature: Option<Vec<u8>>| {
        let mut v = ver(&r, 1);
        v.author = author.map(str::to_owned);
        v.signature = signature;
        check(batch_of(vec![v]))
    };
    assert_eq!(with(Some("li@hefei"), Some(vec![1; 64])), Ok(()));
    assert_eq!(with(Some("hefei"), None), Ok(()));
    assert_eq!(with(None, None), Ok(()));
    // A relay cannot make another office's staff the author.
    for bad in [
        "li@anqing",
        "anqing",
        "Li@hefei",
        "li@",
        "@hefei",
        "",
        "a b@hefei",
    ] {
        let err = with(Some(bad), None).expect_err(bad);
        assert!(matches!(err, WireError::BadAuthor { .. }), "{bad}: {err}");
        assert_eq!(err.code(), ErrorCode::Malformed);
    }
    let long = format!("{}@hefei", "u".repeat(65));
    assert!(matches!(
        with(Some(&long), None),
        Err(WireError::BadAuthor { .. })
    ));
    assert!(matches!(
        with(None, Some(vec![0; 129])),
        Err(WireError::BadSignatureLength { len: 129 })
    ));
}

#[test]
fn a_version_2_batch_round_trips_and_converts_down_without_author() {
    let r = rid("hefei");
    let mut v = ver(&r, 1);
    v.author = Some("li@hefei".into());
    v.signature = Some(vec![7; 64]);
    let m: Message = batch_of(vec![v.clone()]).into();
    assert_eq!(m.protocol_version(), 2);
    let bytes = encode_message(&m).expect("encode");
    let back = decode_message(&bytes).expect("decode");
    assert_eq!(back, m);
    // Down to version 1 and back up: the author and signature are gone, the rest stays.
    let v1 = back.into_v2().at(1).expect("a batch fits version 1");
    assert_eq!(v1.protocol_version(), 1);
    let bytes = encode_message(&v1).expect("encode v1");
    let MessageV2::Batch(up) = decode_message(&bytes).expect("decode v1").into_v2() else {
        panic!("not a batch");
    };
    v.author = None;
    v.signature = None;
    assert_eq!(up.versions, vec![v]);
    // The handshake always travels as version 1; About never does.
    let about: Message = About {
        release: "officesyncd 0.1.0".into(),
    }
    .into();
    assert_eq!(about.clone().into_v2().at(1), None);
    assert_eq!(about.into_v2().at(2).map(|m| m.protocol_version()), Some(2));
}
