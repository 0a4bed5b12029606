//! Per-collection compression dictionaries end to end (protocol 3): each daemon trains one
//! from a collection's values once it holds enough of them, offers it to its peers, and a
//! peer that accepted it decodes the zstd streams primed with it — the first writes after an
//! idle period. A peer of protocol 2 is never offered one and still syncs.

#[allow(dead_code)] // not every suite uses every helper
mod common;

use std::time::Duration;

use common::{assert_converged, hub_config, office_config, peer_entry, try_status, wait_for};
use common::{wait_connected, wait_star_connected, BEIJING, HEFEI, HUB};
use officesync_tests::{Cluster, TestNode};
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(60);
/// Longer than the 5 s after which a quiet data stream ends its zstd stream, so the next
/// write starts a new one (primed with the collection's dictionary when one is agreed).
const QUIET: Duration = Duration::from_secs(7);
const COLL: &str = "situation";
/// Enough records to train a dictionary (at least 32).
const RECORDS: usize = 120;

/// A river gauge report, about 200 bytes of JSON.
fn report(who: &str, i: usize) -> Vec<u8> {
    format!(
        r#"{{"office":"{who}","river":"Nanfei","station":"{who}-{:02}","level_m":{}.{:02},"warning_level_m":12.5,"trend":"{}","reporter":"Zhang Wei","checked":{},"seq":{i}}}"#,
        i % 40,
        8 + i % 9,
        i * 37 % 100,
        ["rising", "falling", "steady"][i % 3],
        i.is_multiple_of(2),
    )
    .into_bytes()
}

fn write_reports(node: &TestNode, who: &str, range: std::ops::Range<usize>) {
    for i in range {
        node.put(COLL, &format!("{who}/{i:05}"), &report(who, i));
    }
}

/// `field` of `node`'s peer entry for `peer` (null when absent).
fn peer_field(node: &TestNode, peer: &str, field: &str) -> Value {
    try_status(node)
        .as_ref()
        .and_then(|s| peer_entry(s, peer))
        .map(|p| p[field].clone())
        .unwrap_or(Value::Null)
}

fn names(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|n| n.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn count(node: &TestNode, peer: &str, field: &str) -> u64 {
    peer_field(node, peer, field).as_u64().unwrap_or(0)
}

/// Waits until `from` has offered its dictionary of [`COLL`] to `to` and `to` accepted it.
fn wait_agreed(from: (&TestNode, &str), to: (&TestNode, &str)) {
    wait_for(
        &format!("{}'s dictionary agreed with {}", from.1, to.1),
        TIMEOUT,
        || {
            let sent = names(&peer_field(from.0, to.1, "dictionaries_sent"));
            let received = names(&peer_field(to.0, from.1, "dictionaries_received"));
            if sent == [COLL] && received == [COLL] {
                Ok(())
            } else {
                Err(format!("sent {sent:?}, received {received:?}"))
            }
        },
    );
}

#[test]
fn two_daemons_agree_dictionaries_and_replicate_with_them() {
    let cluster = Cluster::new();
    let hub_cfg = hub_config(&cluster);
    let hub = cluster.start(&hub_cfg);
    let hefei = cluster.start(&office_config(&cluster, HEFEI, hub_cfg.sync_listen));
    wait_connected(&[(&hefei, HUB), (&hub, HEFEI)], TIMEOUT);
    write_reports(&hub, "hub", 0..RECORDS);
    write_reports(&hefei, "hefei", 0..RECORDS);
    // Each trains a dictionary from its own values and the other accepts it.
    wait_agreed((&hub, HUB), (&hefei, HEFEI));
    wait_agreed((&hefei, HEFEI), (&hub, HUB));
    assert_converged(&[&hub, &hefei], TIMEOUT);

    // After a quiet spell, new writes start new zstd streams, primed with the dictionaries.
    std::thread::sleep(QUIET);
    let before = (
        count(&hefei, HUB, "primed_streams_received"),
        count(&hub, HEFEI, "primed_streams_received"),
    );
    write_reports(&hub, "hub", RECORDS..RECORDS + 10);
    write_reports(&hefei, "hefei", RECORDS..RECORDS + 10);
    assert_converged(&[&hub, &hefei], TIMEOUT);
    wait_for("primed streams decoded both ways", TIMEOUT, || {
        let now = (
            count(&hefei, HUB, "primed_streams_received"),
            count(&hub, HEFEI, "primed_streams_received"),
        );
        if now.0 > before.0 && now.1 > before.1 {
            Ok(())
        } else {
            Err(format!("primed streams received {before:?} then {now:?}"))
        }
    });
    assert!(count(&hub, HEFEI, "primed_streams_sent") > 0);
    assert_eq!(
        common::record_count(&hefei, COLL),
        2 * (RECORDS as u64 + 10)
    );
    for (node, peer) in [(&hub, HEFEI), (&hefei, HUB)] {
        assert_eq!(
            peer_field(node, peer, "bad_input").as_u64(),
            Some(0),
            "{} saw bad input from {peer}",
            node.name()
        );
    }
}

#[test]
fn a_protocol_2_office_gets_no_dictionary_and_still_syncs() {
    let cluster = Cluster::new();
    let hub_cfg = hub_config(&cluster);
    let hub = cluster.start(&hub_cfg);
    // Hefei runs as a node of protocol 2 (the test-only pin); Beijing speaks protocol 3.
    let hefei = cluster.start(&office_config(&cluster, HEFEI, hub_cfg.sync_listen));
    hefei.set_env("OFFICESYNC_MAX_PROTOCOL", Some("2"));
    hefei.stop();
    hefei.restart();
    let beijing = cluster.start(&office_config(&cluster, BEIJING, hub_cfg.sync_listen));
    wait_star_connected(&hub, &hefei, &beijing, TIMEOUT);
    wait_for(
        "the hub's session with hefei at protocol 2",
        TIMEOUT,
        || match peer_field(&hub, HEFEI, "protocol").as_u64() {
            Some(2) => Ok(()),
            other => Err(format!("protocol {other:?}")),
        },
    );
    write_reports(&hub, "hub", 0..RECORDS);
    write_reports(&hefei, "hefei", 0..RECORDS);
    // The hub has a dictionary (Beijing took it), the protocol-2 office was never offered it.
    wait_agreed((&hub, HUB), (&beijing, BEIJING));
    assert_converged(&[&hub, &hefei, &beijing], TIMEOUT);
    std::thread::sleep(QUIET);
    write_reports(&hub, "hub", RECORDS..RECORDS + 10);
    write_reports(&hefei, "hefei", RECORDS..RECORDS + 10);
    assert_converged(&[&hub, &hefei, &beijing], TIMEOUT);
    assert_eq!(
        common::record_count(&hefei, COLL),
        2 * (RECORDS as u64 + 10)
    );
    for (node, peer) in [(&hub, HEFEI), (&hefei, HUB)] {
        for field in ["dictionaries_sent", "dictionaries_received"] {
            assert!(
                names(&peer_field(node, peer, field)).is_empty(),
                "{} {field} with {peer}",
                node.name()
            );
        }
        for field in ["primed_streams_sent", "primed_streams_received"] {
            assert_eq!(
                count(node, peer, field),
                0,
                "{} {field} with {peer}",
                node.name()
            );
        }
        assert_eq!(peer_field(node, peer, "bad_input").as_u64(), Some(0));
    }
    // Beijing decodes the hub's primed streams (the hub's writes after the quiet spell).
    wait_for("a primed stream at beijing", TIMEOUT, || {
        match count(&beijing, HUB, "primed_streams_received") {
            0 => Err("none yet".into()),
            _ => Ok(()),
        }
    });
}
