//! Repair that costs the difference: a general office and an office hold the same records
//! behind equal vectors, but each lost a few of them (their stores made to forget them, as
//! damaged storage would: only a digest round notices). `officesync verify` at the office
//! repairs both sides through the hash tree (protocol 3), and the bytes that cross the link
//! are a small share of what a full reconciliation re-sends (the collection's values).

#[allow(dead_code)] // not every suite uses every helper
mod common;

use std::time::Duration;

use common::{assert_converged, hub_config, office_config, wait_connected, wait_for, HUB};
use officesync_daemon::replica::lose_keys;
use officesync_daemon::store::SledStore;
use officesync_tests::fault_proxy::{Direction, FaultProxy};
use officesync_tests::{Cluster, TestConfig, TestNode, TestRng};
use serde_json::Value;

const HEFEI: &str = "hefei";
const COLL: &str = "situation";
const TIMEOUT: Duration = Duration::from_secs(60);
/// Records written at the general office, and at the office.
const AT_HUB: usize = 600;
const AT_OFFICE: usize = 150;
/// Bytes of every value.
const VALUE: usize = 2_000;

/// An incompressible value (links compress with zstd), different for every record.
fn value(who: &str, i: usize) -> Vec<u8> {
    let mut rng = TestRng::new(who.len() as u64 * 1_000_003 + i as u64);
    let mut v = format!("{who} {i} ").into_bytes();
    while v.len() < VALUE {
        v.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    v.truncate(VALUE);
    v
}

/// Stops `node`, makes its store lose `keys` of `COLL`, starts it again.
fn lose(node: &TestNode, config: &TestConfig, keys: &[String]) {
    let exit = node.stop();
    assert!(exit.success(), "{} stopped: {exit}", node.name());
    let store = SledStore::open(&config.data_dir).expect("open the stopped node's store");
    let lost = lose_keys(&store, COLL, keys).expect("lose keys");
    assert_eq!(lost as usize, keys.len(), "one version each");
    drop(store);
    node.restart();
}

fn digest(node: &TestNode) -> Value {
    node.status()["collections"][COLL]["digest"].clone()
}

fn wire(proxy: &FaultProxy) -> u64 {
    proxy.counters(Direction::ToUpstream).forwarded_bytes
        + proxy.counters(Direction::FromUpstream).forwarded_bytes
}

#[test]
fn verify_repairs_lost_records_with_a_small_share_of_a_full_reconciliation() {
    let cluster = Cluster::new();
    let hub_cfg = hub_config(&cluster);
    let hub = cluster.start(&hub_cfg);
    let proxy = FaultProxy::start(hub_cfg.sync_listen, 5);
    let hefei_cfg = office_config(&cluster, HEFEI, proxy.listen_addr());
    let hefei = cluster.start(&hefei_cfg);
    wait_connected(&[(&hefei, HUB), (&hub, HEFEI)], TIMEOUT);
    for i in 0..AT_HUB {
        hub.put(COLL, &format!("hub/{i:05}"), &value("hub", i));
    }
    for i in 0..AT_OFFICE {
        hefei.put(COLL, &format!("hefei/{i:05}"), &value("hefei", i));
    }
    assert_converged(&[&hub, &hefei], TIMEOUT);

    // Each side loses five of the other's records: the vectors still cover them.
    let hub_lost: Vec<String> = (0..5)
        .map(|i| format!("hefei/{:05}", 17 + i * 23))
        .collect();
    let hefei_lost: Vec<String> = (0..5).map(|i| format!("hub/{:05}", 29 + i * 113)).collect();
    lose(&hub, &hub_cfg, &hub_lost);
    lose(&hefei, &hefei_cfg, &hefei_lost);
    wait_connected(&[(&hefei, HUB), (&hub, HEFEI)], TIMEOUT);
    assert_ne!(digest(&hub), digest(&hefei), "the stores differ");
    assert_eq!(
        hub.status()["vv"][COLL],
        hefei.status()["vv"][COLL],
        "behind equal vectors"
    );
    for key in &hefei_lost {
        assert!(hefei.get(COLL, key).is_none(), "{key} lost at hefei");
    }

    let before = wire(&proxy);
    let out = hefei.cli(&["verify", "--json"]);
    assert!(out.status.success(), "verify: {out:?}");
    let reports: Value = serde_json::from_slice(&out.stdout).expect("verify --json is JSON");
    let situation = reports["results"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["collection"] == COLL))
        .unwrap_or_else(|| panic!("no report of {COLL}: {reports}"));
    assert_eq!(situation["outcome"], "repaired", "{reports}");
    assert_converged(&[&hub, &hefei], TIMEOUT);
    // The acknowledgements and heartbeats of the repair pass.
    std::thread::sleep(Duration::from_millis(500));
    let repair_bytes = wire(&proxy) - before;

    for key in hefei_lost.iter().chain(&hub_lost) {
        for node in [&hub, &hefei] {
            wait_for(&format!("{key} back at {}", node.name()), TIMEOUT, || {
                node.get(COLL, key)
                    .map(|_| ())
                    .ok_or_else(|| "absent".to_owned())
            });
        }
    }
    // A full reconciliation re-sends every value of the collection (both sides re-stream
    // what they originate or relay): the repair must cost a small share of that.
    let full = ((AT_HUB + AT_OFFICE) * VALUE) as u64;
    eprintln!("repair: {repair_bytes} bytes on the wire; the collection's values: {full} bytes");
    assert!(
        repair_bytes * 10 < full,
        "the repair moved {repair_bytes} bytes; a full reconciliation re-sends at least {full}"
    );
}
