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
