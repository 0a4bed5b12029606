//! A rolling upgrade caught halfway: nodes of this release (wire protocol 3) and nodes pinned
//! to the previous release's protocol 1 (`OFFICESYNC_MAX_PROTOCOL=1`, the test-only pin; no
//! earlier release is tagged in git to build from) sync in both directions and converge with
//! equal digests, whichever side the general office is on; `officesync status` and `peers`
//! show each peer's release and protocol.
//!
//! Every node runs `[sync] accept_unsigned = true`, as CHANGELOG.md says a cluster must while
//! it upgrades from 0.1.0 (protocol 1 carries no signatures).

#[allow(dead_code)] // not every suite uses every helper
mod common;

use std::time::Duration;

use common::{assert_converged, hub_config, office_config, start_with_lines, wait_star_connected};
use common::{BEIJING, HEFEI};
use officesync_tests::{Cluster, OutputExt, TestConfig, TestNode};

const PIN: &str = "OFFICESYNC_MAX_PROTOCOL";
const TIMEOUT: Duration = Duration::from_secs(60);

/// Starts `config` with unsigned versions accepted; pinned to protocol 1 when `old`.
fn start(config: &TestConfig, old: bool) -> TestNode {
    let node = start_with_lines(config, "sync", "accept_unsigned = true");
    if old {
        node.set_env(PIN, Some("1"));
        node.stop();
        node.restart();
    }
    node
}

/// The `protocol` and `release` `node` reports for `peer`.
fn peer_versions(node: &TestNode, peer: &str) -> (u64, Option<String>) {
    let status = node.status();
    let p = common::peer_entry(&status, peer)
        .unwrap_or_else(|| panic!("{} has no peer {peer}: {status}", node.name()));
    (
        p["protocol"].as_u64().expect("protocol"),
        p["release"].as_str().map(str::to_owned),
    )
}

/// A hub and two offices, `old` saying which run protocol 1; writes at every node, then
/// convergence and the versions each side reports.
fn mixed(hub_old: bool, hefei_old: bool, beijing_old: bool) {
    let cluster = Cluster::new();
    let hub_cfg = hub_config(&cluster);
    let hub = start(&hub_cfg, hub_old);
    let hefei = start(
        &office_config(&cluster, HEFEI, hub_cfg.sync_listen),
        hefei_old,
    );
    let beijing = start(
        &office_config(&cluster, BEIJING, hub_cfg.sync_listen),
        beijing_old,
    );
    wait_star_connected(&hub, &hefei, &beijing, TIMEOUT);
    for (node, who) in [(&hub, "hub"), (&hefei, "hefei"), (&beijing, "beijing")] {
        for i in 0..20 {
            node.put(
                "situation",
                &format!("{who}/{i}"),
                format!("{who} {i}").as_bytes(),
            );
        }
        node.api().delete("situation", &format!("{who}/0"));
    }
    // A key written at both ends of an old-new link: siblings, the same on every node.
    hefei.put("situation", "shared", b"from hefei");
    beijing.put("situation", "shared", b"from beijing");
    assert_converged(&[&hub, &hefei, &beijing], TIMEOUT);
    for node in [&hub, &hefei, &beijing] {
        assert_eq!(
            common::record_count(node, "situation"),
            3 * 19 + 1,
            "{}",
            node.name()
        );
    }

    let expect = |old: bool| -> u64 {
        if old {
            1
        } else {
            officesync_protocol::wire::PROTOCOL_VERSION.into()
        }
    };
    for (office, old) in [(HEFEI, hefei_old), (BEIJING, beijing_old)] {
        let (protocol, release) = peer_versions(&hub, office);
        assert_eq!(protocol, expect(old || hub_old), "hub's view of {office}");
        match (old || hub_old, release) {
            (true, r) => assert_eq!(r, None, "protocol 1 does not tell the release"),
            (false, Some(r)) => assert!(
                r.starts_with(&format!(
                    "officesyncd {} (commit ",
                    env!("CARGO_PKG_VERSION")
                )),
                "{r}"
            ),
            (false, None) => panic!("a protocol 3 peer did not tell its release"),
        }
    }
    let status = hub.cli(&["status"]);
    status.expect_success("status");
    let text = status.stdout_text();
    for (office, old) in [(HEFEI, hefei_old), (BEIJING, beijing_old)] {
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{office}: ")) && l.contains("protocol"))
            .unwrap_or_else(|| panic!("status names no release of {office}:\n{text}"));
        assert!(
            line.ends_with(&format!("protocol {}", expect(old || hub_old))),
            "{line}"
        );
    }
}

#[test]
fn an_office_of_the_previous_protocol_syncs_both_ways_through_a_new_general_office() {
    mixed(false, true, false);
}

#[test]
fn new_offices_sync_both_ways_through_a_general_office_of_the_previous_protocol() {
    mixed(true, false, false);
}
