//! Replays the committed corpus of the `bundle` fuzz target (`daemon/fuzz/corpus/bundle/`) on
//! stable, and the seeds it starts from: an unsigned bundle as an export writes it, and
//! variants cut short, with a lying body length and with a zstd bomb for a body.

mod corpus;

use std::path::PathBuf;

use officesync_api::{BundleCollection, BundleInfo};
use officesync_daemon::bundle::{fuzz_bundle, fuzz_seed, Body, Part, Stream};
use officesync_protocol::{Dot, Hlc, ReplicaId, Version, VersionVector};

fn corpus_dir() -> PathBuf {
    corpus::dir("bundle")
}

fn seeds() -> Vec<Vec<u8>> {
    let origin = ReplicaId::new("general-office", 7).expect("valid");
    let versions: Vec<Version> = (1..=3)
        .map(|c| Version {
            collection: "situation".into(),
            key: format!("river/{c}"),
            dot: Dot::new(origin.clone(), c),
            hlc: Hlc { ms: c, logical: 0 },
            context: VersionVector::new(),
            value: Some(format!("{{\"level_m\":{c}}}").into_bytes()),
            author: Some("li@general-office".into()),
            signature: Some(vec![1; 73]),
        })
        .collect();
    let body = Body {
        parts: vec![Part {
            collection: "situation".into(),
            streams: vec![Stream {
                origin,
                after: 0,
                through: 3,
                versions,
            }],
        }],
    };
    let mut info = BundleInfo {
        exporter: "general-office".into(),
        exporter_certificate: "00".into(),
        created_ms: 1,
        for_node: Some("hefei".into()),
        incremental: false,
        versions: 3,
        body_bytes: 0,
        collections: vec![BundleCollection {
            name: "situation".into(),
            versions: 3,
            origins: 1,
        }],
    };
    let whole = fuzz_seed(&mut info, &body);
    let cut = whole[..whole.len() / 2].to_vec();
    let mut lying = whole.clone();
    lying.truncate(whole.len() - 73);
    lying.extend_from_slice(&[0xff; 80]);
    info.body_bytes = 1 << 40;
    let bomb_body = zstd::bulk::compress(&vec![0u8; 8 << 20], 3).expect("compress");
    let mut bomb = officesync_daemon::bundle::frame::unsigned(&info, &bomb_body).expect("frame");
    bomb.extend_from_slice(&[0; 73]);
    vec![whole, cut, lying, bomb]
}

#[test]
fn bundle_seeds_and_corpus() {
    let seeds = seeds();
    corpus::run_seeds(&corpus_dir(), &seeds, fuzz_bundle);
    corpus::replay(&corpus_dir(), seeds.len(), fuzz_bundle);
}

#[test]
fn the_intact_seed_decodes_all_its_versions() {
    // The seed is worth fuzzing from: it gets past the frame and the body.
    let whole = &seeds()[0];
    let frame = officesync_daemon::bundle::frame::parse(whole, 4 << 20).expect("a bundle");
    assert_eq!(frame.info.versions, 3);
    assert_eq!(frame.signature.len(), 73);
}
