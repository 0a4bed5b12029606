//! Replays the committed corpus of the `framed_recv` fuzz target (`daemon/fuzz/corpus/`) on
//! stable, and the seeds it started from: frames as `FramedSend` writes them (plain, one-shot
//! zstd, and a run of streaming-zstd frames sharing one compressor), so the decompressors are
//! exercised from valid input outward.

mod corpus;

use std::path::PathBuf;

use officesync_daemon::transport::{fuzz_recv, fuzz_stream_parts};
use officesync_protocol::wire::{encode_message, encode_raw_frame, Batch, FrameFlags, Message};
use officesync_protocol::{Dot, Hlc, ReplicaId, Version, VersionVector};

fn corpus_dir() -> PathBuf {
    corpus::dir("framed_recv")
}

#[test]
fn framed_recv_corpus() {
    corpus::replay(&corpus_dir(), 5, fuzz_recv);
}

fn batch(n: u64) -> Message {
    let origin = ReplicaId::new("hefei", 3).expect("valid");
    Batch {
        collection: "situation".into(),
        origin: origin.clone(),
        versions: (1..=n)
            .map(|c| Version {
                collection: "situation".into(),
                key: format!("hefei/grain-{c}"),
                dot: Dot::new(origin.clone(), c),
                hlc: Hlc { ms: c, logical: 0 },
                context: VersionVector::new(),
                value: Some(format!("{{\"stock_t\":{}}}", c * 100).into_bytes()),
                author: None,
                signature: None,
            })
            .collect(),
    }
    .into()
}

/// The seeds; set `OFFICESYNC_WRITE_SEEDS=1` to (re)write them into the corpus directory.
#[test]
fn framed_recv_seeds() {
    let payloads: Vec<Vec<u8>> = [1, 3, 8]
        .into_iter()
        .map(|n| encode_message(&batch(n)).expect("encodes"))
        .collect();
    let mut seeds: Vec<Vec<u8>> = Vec::new();
    let mut plain = vec![63u8];
    for p in &payloads {
        plain.extend(encode_raw_frame(FrameFlags::NONE, p).expect("frame"));
    }
    seeds.push(plain);
    let mut oneshot = vec![255u8];
    for p in &payloads {
        let packed = zstd::bulk::compress(p, 3).expect("compress");
        oneshot.extend(encode_raw_frame(FrameFlags::ZSTD, &packed).expect("frame"));
    }
    seeds.push(oneshot);
    let mut streamed = vec![7u8];
    for part in fuzz_stream_parts(&payloads).expect("compress") {
        streamed.extend(encode_raw_frame(FrameFlags::ZSTD_STREAM, &part).expect("frame"));
    }
    seeds.push(streamed);
    // A bomb: 8 MiB + 1 of zeros compressed into a few hundred bytes.
    let bomb = zstd::bulk::compress(&vec![0u8; (8 << 20) + 1], 3).expect("compress");
    let mut bomb_frame = vec![255u8];
    bomb_frame.extend(encode_raw_frame(FrameFlags::ZSTD, &bomb).expect("frame"));
    seeds.push(bomb_frame);
    let mut both = vec![255u8];
    both.extend(
        encode_raw_frame(
            FrameFlags::from_bits(FrameFlags::ZSTD.bits() | FrameFlags::ZSTD_STREAM.bits())
                .expect("known bits"),
            b"x",
        )
        .expect("frame"),
    );
    seeds.push(both);
    corpus::run_seeds(&corpus_dir(), &seeds, fuzz_recv);
}
