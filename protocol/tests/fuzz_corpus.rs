//! Replays the committed fuzz corpora (`protocol/fuzz/corpus/<target>/`, crash reproducers
//! included) through the fuzz targets on stable, so every input fuzzing ever found interesting
//! stays a regression test.

use std::fs;
use std::path::PathBuf;

use officesync_protocol::fuzzing;
use officesync_protocol::wire::{
    encode_frame, encode_raw_frame, Ack, Batch, Complete, Compression, FrameFlags, Heartbeat,
    Hello, HelloAck, Message,
};
use officesync_protocol::{Dot, Hlc, ReplicaId, Version, VersionVector};

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|entry| entry.expect("readable corpus entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let bytes = fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, bytes)
        })
        .collect()
}

fn replay(target: &str, run: fn(&[u8])) -> usize {
    let inputs = corpus(target);
    for (path, bytes) in &inputs {
        let outcome = std::panic::catch_unwind(|| run(bytes));
        assert!(outcome.is_ok(), "{target} fails on {}", path.display());
    }
    inputs.len()
}

#[test]
fn frame_decoder_corpus() {
    let n = replay("frame_decoder", fuzzing::frame_decoder);
    assert!(n >= 10, "the frame_decoder corpus has only {n} inputs");
}

#[test]
fn session_sequence_corpus() {
    let n = replay("session_sequence", fuzzing::session_sequence);
    assert!(n >= 10, "the session_sequence corpus has only {n} inputs");
}

/// Valid frames of every message kind, each as a decoder input (chunking byte first): the
/// seeds the frame_decoder corpus started from. Set `OFFICESYNC_WRITE_SEEDS=1` to (re)write
/// them into the corpus directory.
#[test]
fn frame_seeds() {
    let r = ReplicaId::new("hefei", 7).expect("valid");
    let mut vv = VersionVector::new();
    vv.raise(&r, 3);
    let version = Version {
        collection: "situation".into(),
        key: "hefei/grain".into(),
        dot: Dot::new(r.clone(), 4),
        hlc: Hlc { ms: 17, logical: 2 },
        context: vv.clone(),
        value: Some(b"{\"t\":1}".to_vec()),
        author: None,
        signature: None,
    };
    let messages: Vec<Message> = vec![
        Hello {
            protocol: 1,
            cluster_id: "c0ffee".into(),
            node: "hefei".into(),
            replica: r.clone(),
            compression: vec![Compression::Zstd, Compression::None],
            vvs: vec![("situation".into(), vv.clone())],
        }
        .into(),
        HelloAck {
            protocol: 1,
            accepted_compression: Compression::Zstd,
            vvs: vec![("situation".into(), vv.clone())],
        }
        .into(),
        Batch {
            collection: "situation".into(),
            origin: r.clone(),
            versions: vec![version],
        }
        .into(),
        Complete {
            collection: "situation".into(),
            origin: r.clone(),
            through: 4,
        }
        .into(),
        Ack {
            collection: "situation".into(),
            origin: r,
            through: 4,
        }
        .into(),
        Heartbeat { now_ms: 5, seq: 1 }.into(),
    ];
    let mut seeds = Vec::new();
    let mut all = vec![0xfb_u8];
    for (i, m) in messages.iter().enumerate() {
        let frame = encode_frame(m, FrameFlags::NONE).expect("small message");
        all.extend_from_slice(&frame);
        let mut seed = vec![3 | ((i as u8) << 3)];
        seed.extend_from_slice(&frame);
        seeds.push(seed);
    }
    seeds.push(all);
    let mut zstd_flagged = vec![0x03];
    zstd_flagged.extend(encode_raw_frame(FrameFlags::ZSTD, b"not zstd").expect("small"));
    seeds.push(zstd_flagged);
    for seed in &seeds {
        fuzzing::frame_decoder(seed);
    }
    if std::env::var_os("OFFICESYNC_WRITE_SEEDS").is_some() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/frame_decoder");
        fs::create_dir_all(&dir).expect("corpus dir");
        for (i, seed) in seeds.iter().enumerate() {
            fs::write(dir.join(format!("seed-{i:02}")), seed).expect("write seed");
        }
    }
}

/// Writes inputs that the session target reads back as a chosen scenario, byte for byte as
/// `fuzzing::session_run` consumes them (`Bytes` in `src/fuzzing.rs`): the hostile seeds of
/// its corpus. Each scenario's outcome is checked, so a change of the input format that breaks
/// a seed fails here instead of silently turning it into noise.
struct Seed(Vec<u8>);

/// Collection bytes: `situation`.
const SITUATION: u8 = 0;
/// Node bytes (`Bytes::node`): the peer, this node, a third node.
const PEER: u8 = 0;
const LOCAL: u8 = 2;
const OTHER: u8 = 3;
/// Hostile context entry kinds (`hostile_context`): this session's replica, the peer's, a
/// third node's.
const CTX_LOCAL: u8 = 0;
const CTX_PEER: u8 = 1;
const CTX_OTHER: u8 = 2;

/// A counter's bytes (`Bytes::counter`).
#[derive(Clone, Copy)]
enum Counter {
    Small(u8),
    Max,
}

impl Counter {
    fn bytes(self) -> Vec<u8> {
        match self {
            Counter::Small(n) => vec![0, n],
            Counter::Max => vec![248, 0],
        }
    }
}

/// A version's bytes (`version`): its context (none, an entry of its own origin's previous
/// counter, or hostile entries), a value, a key and a stamp.
#[derive(Clone)]
struct V {
    previous: bool,
    hostile: Vec<(u8, Counter)>,
    many: bool,
    future: bool,
    key: u8,
}

impl V {
    fn plain(key: u8) -> Self {
        Self {
            previous: true,
            hostile: Vec::new(),
            many: false,
            future: false,
            key,
        }
    }

    fn covering(key: u8, entries: &[(u8, Counter)]) -> Self {
        Self {
            hostile: entries.to_vec(),
            ..Self::plain(key)
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let mut b = vec![u8::from(self.previous)];
        if self.many {
            b.extend([240, 255]);
        } else if self.hostile.is_empty() {
            b.push(1);
        } else {
            b.extend([240, (self.hostile.len() - 1) as u8]);
            for (kind, c) in &self.hostile {
                b.push(*kind);
                b.extend(c.bytes());
            }
        }
        b.extend([1, self.key]); // a 3-byte value, key "k<key>"
        if self.future {
            b.extend([224, 0x10, 0x27]); // 10 s past the bound
        } else {
            b.extend([0, 0x10, 0x27]); // 320 s: within it
        }
        b.push(0); // logical
        b
    }
}

impl Seed {
    /// An acceptor (of a relay peer or not) holding `local`: `(collection, counter of its own
    /// replica, counter of a third node)` per collection.
    fn acceptor(peer_relay: bool, local: &[(u8, u8, u8)]) -> Self {
        let mut b = vec![if peer_relay { 4 } else { 0 }, local.len() as u8];
        for &(c, own, other) in local {
            b.extend([c, own, other]);
        }
        Self(b)
    }

    /// The peer's Hello (replica `hefei@00000001`), its vector of `situation` naming this
    /// node's replica at `local_through` and `many` more origins (`Bytes::vv` selector 252..).
    fn hello(mut self, local_through: u8, many: Option<u8>) -> Self {
        self.0.extend([1, 0, 0, 0, PEER, 0, 0]);
        match many {
            Some(sel) => self.0.extend([1, SITUATION, sel, 0, 0]),
            None => self.0.extend([1, SITUATION, 1, LOCAL, 1, 0, local_through]),
        }
        self.0.push(1); // on its own stream
        self
    }

    /// A Batch of `situation` from `node`'s incarnation (`None`: a random one) from `first`.
    fn batch(mut self, node: u8, incarnation: Option<u8>, first: u8, versions: &[V]) -> Self {
        self.0.extend([1, 2, SITUATION, node]);
        self.incarnation(incarnation);
        self.0.extend(Counter::Small(first).bytes());
        self.0.push(versions.len() as u8);
        for v in versions {
            self.0.extend(v.bytes());
            self.0.push(1); // the next counter follows
        }
        self.0.push(1);
        self
    }

    /// A Complete of `situation` for `node`'s incarnation through `through`.
    fn complete(mut self, node: u8, incarnation: Option<u8>, through: Counter) -> Self {
        self.0.extend([1, 3, SITUATION, node]);
        self.incarnation(incarnation);
        self.0.extend(through.bytes());
        self.0.push(1);
        self
    }

    fn incarnation(&mut self, incarnation: Option<u8>) {
        match incarnation {
            Some(n) => self.0.push(n),
            None => self.0.extend([252, 0x5e, 0xed, 0xba, 0xd0]),
        }
    }

    /// A heartbeat probe from the dialer (odd `seq`).
    fn probe(mut self, seq: u8) -> Self {
        self.0.extend([1, 5, 0, 0, 0, 0, 0, 0, 0, 1, seq | 1, 1]);
        self
    }

    /// Time passes by `ms` (a multiple of 8).
    fn wait(mut self, ms: u32) -> Self {
        let units = (ms / 8) as u16;
        self.0.push(4);
        self.0.extend(units.to_le_bytes());
        self
    }

    /// The store answers the oldest action (an Apply: no more bytes).
    fn answer(mut self) -> Self {
        self.0.push(5);
        self
    }
}

/// Some refusal of the run names `what`.
fn rejected(o: &fuzzing::SessionOutcome, what: &str) -> bool {
    o.rejected.iter().any(|r| r.contains(what))
}

/// Hostile scenarios of the session target and what each must do. Set
/// `OFFICESYNC_WRITE_SEEDS=1` to (re)write them into the corpus directory.
#[test]
fn session_hostile_seeds() {
    let three = [V::plain(2), V::plain(3), V::plain(4)];
    let poisoned = |entries: &[(u8, Counter)]| {
        let mut vs = three.to_vec();
        vs[1] = V::covering(3, entries);
        vs
    };
    type Check = Box<dyn Fn(&fuzzing::SessionOutcome) -> bool>;
    let mut seeds: Vec<(&str, Seed, Check)> = Vec::new();
    let honest =
        |o: &fuzzing::SessionOutcome| o.applied == 3 && o.rejected.is_empty() && o.closed.is_none();
    seeds.push((
        "honest",
        Seed::acceptor(false, &[])
            .hello(0, None)
            .batch(PEER, Some(1), 1, &three)
            .complete(PEER, Some(1), Counter::Small(3))
            .answer(),
        Box::new(honest),
    ));
    for (name, entry) in [
        ("poison-other-max", (CTX_OTHER, Counter::Max)),
        ("poison-other-future", (CTX_OTHER, Counter::Small(9))),
        ("poison-local-beyond-issued", (CTX_LOCAL, Counter::Small(9))),
    ] {
        seeds.push((
            name,
            Seed::acceptor(false, &[(SITUATION, 3, 2)])
                .hello(3, None)
                .batch(PEER, Some(1), 1, &poisoned(&[entry]))
                .complete(PEER, Some(1), Counter::Small(3))
                .answer()
                .batch(PEER, Some(1), 4, &[V::plain(5)]),
            // Counter 1 applied, the poisoned 2 and the rest of the stream refused.
            Box::new(|o| o.applied == 1 && o.rejected.len() == 2 && rejected(o, "causal context")),
        ));
    }
    seeds.push((
        "relay-poison-peer-max",
        Seed::acceptor(true, &[])
            .hello(0, None)
            .batch(OTHER, Some(0), 1, &poisoned(&[(CTX_PEER, Counter::Max)]))
            .complete(OTHER, Some(0), Counter::Small(3))
            .answer(),
        Box::new(|o| o.applied == 1 && rejected(o, "causal context")),
    ));
    seeds.push((
        "own-origin-entry-at-counter",
        Seed::acceptor(false, &[]).hello(0, None).batch(
            PEER,
            Some(1),
            1,
            &poisoned(&[(CTX_PEER, Counter::Small(2))]),
        ),
        Box::new(|o| o.closed.is_some() && o.applied == 0),
    ));
    seeds.push((
        "context-within-held",
        Seed::acceptor(false, &[(SITUATION, 3, 2)])
            .hello(3, None)
            .batch(
                PEER,
                Some(1),
                1,
                &poisoned(&[
                    (CTX_LOCAL, Counter::Small(3)),
                    (CTX_OTHER, Counter::Small(0)),
                ]),
            )
            .complete(PEER, Some(1), Counter::Small(3))
            .answer(),
        Box::new(honest),
    ));
    seeds.push((
        "relay-context-needs-applied-first",
        Seed::acceptor(true, &[])
            .hello(0, None)
            .batch(PEER, Some(1), 1, &three)
            .complete(PEER, Some(1), Counter::Small(3))
            .batch(
                OTHER,
                Some(0),
                1,
                &[V::covering(2, &[(CTX_PEER, Counter::Small(3))])],
            )
            .complete(OTHER, Some(0), Counter::Small(1))
            .answer()
            .answer(),
        Box::new(|o| o.applied == 4 && o.rejected.is_empty()),
    ));
    seeds.push((
        "future-stamp-then-retry",
        Seed::acceptor(false, &[])
            .hello(0, None)
            .batch(
                PEER,
                Some(1),
                1,
                &[
                    V::plain(2),
                    V {
                        future: true,
                        ..V::plain(3)
                    },
                    V::plain(4),
                ],
            )
            .complete(PEER, Some(1), Counter::Small(3))
            .answer()
            .wait(8_000)
            .wait(4_000),
        Box::new(|o| {
            o.applied == 1
                && rejected(o, "ahead of the local clock")
                && o.closed
                    .as_deref()
                    .is_some_and(|r| r.contains("clock skew"))
        }),
    ));
    seeds.push((
        "unannounced-incarnation",
        Seed::acceptor(false, &[])
            .hello(0, None)
            .batch(PEER, None, 1, &three)
            .complete(PEER, None, Counter::Max)
            .complete(PEER, None, Counter::Small(7))
            .batch(PEER, Some(1), 1, &three)
            .complete(PEER, Some(1), Counter::Small(3)),
        Box::new(|o| o.applied == 3 && rejected(o, "incarnation")),
    ));
    seeds.push((
        "other-node-bare-complete",
        Seed::acceptor(false, &[])
            .hello(0, None)
            .complete(OTHER, Some(0), Counter::Max)
            .complete(OTHER, None, Counter::Small(5))
            .batch(OTHER, Some(0), 1, &three),
        Box::new(|o| o.applied == 0 && rejected(o, "is not a relay")),
    ));
    for (name, sel, closes) in [
        ("hello-vector-below-limit", 252, false),
        ("hello-vector-at-limit", 253, false),
        ("hello-vector-past-limit", 254, true),
    ] {
        seeds.push((
            name,
            Seed::acceptor(false, &[]).hello(0, Some(sel)),
            Box::new(move |o| o.closed.is_some() == closes),
        ));
    }
    seeds.push((
        "context-past-limit",
        Seed::acceptor(false, &[]).hello(0, None).batch(
            PEER,
            Some(1),
            1,
            &[V {
                many: true,
                ..V::plain(2)
            }],
        ),
        Box::new(|o| o.closed.is_some() && o.applied == 0),
    ));
    let mut flood = Seed::acceptor(false, &[]).hello(0, None);
    for i in 0..80 {
        flood = flood.probe(i);
    }
    seeds.push((
        "probe-flood",
        flood,
        Box::new(|o| o.closed.as_deref().is_some_and(|r| r.contains("heartbeat"))),
    ));
    for (name, seed, check) in &seeds {
        let outcome = fuzzing::session_run(&seed.0);
        assert!(check(&outcome), "seed {name}: {outcome:?}");
    }
    if std::env::var_os("OFFICESYNC_WRITE_SEEDS").is_some() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/session_sequence");
        for (name, seed, _) in &seeds {
            fs::write(dir.join(format!("seed-hostile-{name}")), &seed.0).expect("write seed");
        }
    }
}
