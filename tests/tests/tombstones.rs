//! Tombstone collection end to end: the general office publishes each collection's stable
//! frontier, every node purges the tombstones below it (digests equal again, the tombstones
//! gone from the stores), and an office that was away longer than the TTL and comes back
//! holding a value deleted (and purged) meanwhile rejoins: the key stays deleted everywhere and
//! every digest converges. In a four-tier province (general office, city relay, county relay,
//! township) the general office has no session with the township: it counts it (and the
//! county) through the relays' subtree summaries, and a delete at the township is purged at
//! every tier.

#[allow(dead_code)] // not every suite uses every helper
mod common;

use std::time::Duration;

use common::{
    assert_converged, hub_config, office_config, siblings, start_with_lines, try_status,
    wait_connected, wait_for, wait_star_connected, BEIJING, HEFEI, HUB,
};
use officesync_tests::{Cluster, TestConfig, TestNode};
use serde_json::Value;

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

/// The relays of the four-tier test: every one an admin.
const TIER_ADMINS: [&str; 3] = [HUB, "city", "county"];
/// The four-tier test's TTL: long, so that no reader is ever left out as away (a purge then
/// proves the general office counted the township and the county through the summaries).
const TIER_HUB_LINES: &str = "tombstone_ttl_ms = 60000\npurge_interval_ms = 300";

/// `name` dialing `parent` (its `sync.listen`) in the four-tier test.
fn tier_config(cluster: &Cluster, name: &str, parent: Option<(&str, &TestConfig)>) -> TestConfig {
    cluster.issue(name, TIER_ADMINS.contains(&name));
    let mut config = cluster.config(name);
    config.admins = TIER_ADMINS.iter().map(|a| (*a).to_owned()).collect();
    if let Some((parent, cfg)) = parent {
        config.peers = vec![(parent.to_owned(), cfg.sync_listen.to_string())];
    }
    config.extra_toml = "[status]\nreport_interval_ms = 500\n".to_owned();
    config
}

/// The JSON value `node` holds at `collection`/`key`, if any.
fn json_at(node: &TestNode, collection: &str, key: &str) -> Option<Value> {
    let record = node.get(collection, key)?;
    serde_json::from_slice(&record.value).ok()
}

#[test]
fn a_delete_behind_a_relay_is_purged_at_every_tier() {
    let cluster = Cluster::new();
    let hub_cfg = tier_config(&cluster, HUB, None);
    let hub = start_with_lines(&hub_cfg, "storage", TIER_HUB_LINES);
    let city_cfg = tier_config(&cluster, "city", Some((HUB, &hub_cfg)));
    let city = start_with_lines(&city_cfg, "storage", OFFICE_LINES);
    let county_cfg = tier_config(&cluster, "county", Some(("city", &city_cfg)));
    let county = start_with_lines(&county_cfg, "storage", OFFICE_LINES);
    let town_cfg = tier_config(&cluster, "town", Some(("county", &county_cfg)));
    let town = start_with_lines(&town_cfg, "storage", OFFICE_LINES);
    wait_connected(
        &[
            (&city, HUB),
            (&hub, "city"),
            (&county, "city"),
            (&city, "county"),
            (&town, "county"),
            (&county, "town"),
        ],
        TIMEOUT,
    );
    let all = [&hub, &city, &county, &town];
    for i in 0..10 {
        town.put(COLL, &format!("k{i}"), format!("value {i}").as_bytes());
    }
    town.put(COLL, "doomed", b"the old value");
    town.api()
        .delete(COLL, "doomed")
        .expect("delete acknowledged");
    for i in 0..5 {
        town.api().delete(COLL, &format!("k{i}")).expect("delete");
    }

    wait_for("the tombstones to be purged at every tier", TIMEOUT, || {
        for node in all {
            let held = siblings(node, COLL, "doomed");
            if !held.is_empty() {
                return Err(format!("{} still holds {held:?}", node.name()));
            }
            let purged = counter(node, "officesync_tombstones_purged_total");
            if purged < 6 {
                return Err(format!("{} purged {purged} tombstones", node.name()));
            }
        }
        Ok(())
    });
    wait_for("the digests to agree at every tier", TIMEOUT, || {
        let digests: Vec<Option<String>> = all.iter().map(|n| digest(n)).collect();
        if digests.iter().all(|d| d.is_some() && *d == digests[0]) {
            Ok(())
        } else {
            Err(format!("digests {digests:?}"))
        }
    });
    for node in all {
        let keys = try_status(node).expect("status")["collections"][COLL]["keys"].as_u64();
        assert_eq!(keys, Some(5), "{}: the 5 live keys", node.name());
        for i in 5..10 {
            assert!(
                node.get(COLL, &format!("k{i}")).is_some(),
                "{}: k{i}",
                node.name()
            );
        }
    }
    // No reader was left out as away: the township and the county counted through the relays.
    let record = json_at(&hub, "_frontier", COLL).expect("a frontier record");
    assert_eq!(record["excluded"], serde_json::json!([]), "{record}");
    assert_eq!(record["ttl_ms"], 60_000, "{record}");
    let report = json_at(&hub, "_status", "county").expect("the county's report");
    let covers = &report["subtree"][COLL]["covers"];
    assert!(
        covers.get("county").is_some() && covers.get("town").is_some(),
        "{report}"
    );
    // One debug figure: the county's report with and without its summary.
    let mut bare = report.clone();
    bare.as_object_mut().expect("object").remove("subtree");
    eprintln!(
        "county report: {} bytes, {} without its subtree summary",
        serde_json::to_vec(&report).map_or(0, |v| v.len()),
        serde_json::to_vec(&bare).map_or(0, |v| v.len())
    );
    let leaf = json_at(&hub, "_status", "town").expect("the township's report");
    assert!(leaf.get("subtree").is_none(), "a leaf sends none: {leaf}");
}
