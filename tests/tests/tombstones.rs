//! Tombstone collection end to end: the general office publishes each collection's stable
//! frontier, every node purges the tombstones below it (digests equal again, the tombstones
//! gone from the stores), and an office that was away longer than the TTL and comes back
//! holding a value deleted (and purged) meanwhile rejoins: the key stays deleted everywhere and
//! every digest converges.

#[allow(dead_code)] // not every suite uses every helper
mod common;

use std::time::Duration;

use common::{
    assert_converged, hub_config, office_config, siblings, start_with_lines, try_status,
    wait_connected, wait_for, wait_star_connected, BEIJING, HEFEI, HUB,
};
use officesync_tests::{Cluster, TestNode};

const TIMEOUT: Duration = Duration::from_secs(90);
const COLL: &str = "situation";
/// The general office's tombstone TTL: beijing is kept away longer than this.
const TTL_MS: u64 = 3_000;
const HUB_LINES: &str = "tombstone_ttl_ms = 3000\npurge_interval_ms = 300";
const OFFICE_LINES: &str = "purge_interval_ms = 300";

/// A `/metrics` counter of `node` (0 when absent).
fn counter(node: &TestNode, name: &str) -> u64 {
    let reply = node.api().call("GET", "/metrics", None);
    reply
        .text()
        .lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0)
}

/// The digest of `COLL` on `node`, if it answers.
fn digest(node: &TestNode) -> Option<String> {
    try_status(node).map(|s| s["collections"][COLL]["digest"].to_string())
}

#[test]
fn deleted_keys_are_purged_everywhere_and_an_office_back_from_long_away_does_not_resurrect_them() {
    let cluster = Cluster::new();
    let hub_cfg = hub_config(&cluster);
    let hub = start_with_lines(&hub_cfg, "storage", HUB_LINES);
    let hefei = start_with_lines(
        &office_config(&cluster, HEFEI, hub_cfg.sync_listen),
        "storage",
        OFFICE_LINES,
    );
    let beijing = start_with_lines(
        &office_config(&cluster, BEIJING, hub_cfg.sync_listen),
        "storage",
        OFFICE_LINES,
    );
    wait_star_connected(&hub, &hefei, &beijing, TIMEOUT);
    for i in 0..20 {
        hefei.put(COLL, &format!("k{i}"), format!("value {i}").as_bytes());
    }
    hefei.put(COLL, "doomed", b"the old value");
    assert_converged(&[&hub, &hefei, &beijing], TIMEOUT);

    // beijing goes away holding `doomed`; hefei deletes it and half the rest.
    assert!(beijing.stop().success());
    hefei
        .api()
        .delete(COLL, "doomed")
        .expect("delete acknowledged");
    for i in 0..10 {
        hefei.api().delete(COLL, &format!("k{i}")).expect("delete");
    }
    hub.put(COLL, "written-while-away", b"new");

    // Once beijing has been away longer than the TTL it is left out of the frontier: the
    // general office and hefei purge the tombstones and still agree.
    wait_for(
        "the tombstones to be purged at hub and hefei",
        TIMEOUT,
        || {
            for node in [&hub, &hefei] {
                let held = siblings(node, COLL, "doomed");
                if !held.is_empty() {
                    return Err(format!("{} still holds {held:?}", node.name()));
                }
                let purged = counter(node, "officesync_tombstones_purged_total");
                if purged < 11 {
                    return Err(format!("{} purged {purged} tombstones", node.name()));
                }
            }
            Ok(())
        },
    );
    assert_converged(&[&hub, &hefei], TIMEOUT);
    for node in [&hub, &hefei] {
        let keys = try_status(node).expect("status")["collections"][COLL]["keys"].as_u64();
        assert_eq!(
            keys,
            Some(11),
            "{}: 10 live keys and the new one",
            node.name()
        );
    }
    std::thread::sleep(Duration::from_millis(TTL_MS / 3));

    // beijing returns with the old value: it must rejoin, and nothing may bring it back.
    beijing.restart();
    wait_connected(&[(&beijing, HUB), (&hub, BEIJING)], TIMEOUT);
    wait_for(
        "every digest to converge after beijing's rejoin",
        TIMEOUT,
        || {
            // A digest round repairs what the rejoin dropped and is still live.
            let _ = beijing.cli(&["verify", "--json"]);
            let digests: Vec<Option<String>> =
                [&hub, &hefei, &beijing].iter().map(|n| digest(n)).collect();
            if digests.iter().all(|d| d.is_some() && *d == digests[0]) {
                Ok(())
            } else {
                Err(format!("digests {digests:?}"))
            }
        },
    );
    assert_converged(&[&hub, &hefei, &beijing], TIMEOUT);
    for node in [&hub, &hefei, &beijing] {
        assert!(
            node.get(COLL, "doomed").is_none(),
            "{} resurrected it",
            node.name()
        );
        assert!(siblings(node, COLL, "doomed").is_empty(), "{}", node.name());
        for i in 0..10 {
            assert!(
                node.get(COLL, &format!("k{i}")).is_none(),
                "{}",
                node.name()
            );
        }
        for i in 10..20 {
            assert!(
                node.get(COLL, &format!("k{i}")).is_some(),
                "{}: k{i}",
                node.name()
            );
        }
        assert!(
            node.get(COLL, "written-while-away").is_some(),
            "{}",
            node.name()
        );
    }
    assert!(
        beijing.log().contains("rejoining the collection"),
        "beijing logs its rejoin"
    );
    assert!(counter(&beijing, "officesync_rejoin_dropped_versions_total") >= 1);
}
