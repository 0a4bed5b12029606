//! What office applications use, end to end with the real binaries: `scan --where` and its
//! errors, and conflicts made across a partition (the UDP fault proxy cuts hefei's link),
//! listed with `officesync conflicts` at both offices, resolved with `officesync resolve
//! --keep` at one, and gone everywhere after convergence, with the resolver as the author.

#[allow(dead_code)] // every suite uses part of the shared helpers
mod common;

use std::time::Duration;

use common::{
    assert_converged, is_connected, siblings, wait_connected, wait_for, Star, HEFEI, HUB,
};
use officesync_tests::fault_proxy::Direction;
use officesync_tests::{test_seed, Cluster, OutputExt, TestNode};
use serde_json::Value;

/// Sessions come up within a few dial attempts.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Small data sets converge within this on a busy 2-core machine.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(60);

/// The keys `officesync scan COLL --where ..` prints with `--json`, in order.
fn scan_where(node: &TestNode, collection: &str, exprs: &[&str]) -> Vec<String> {
    let mut args = vec!["--json", "scan", collection];
    for e in exprs {
        args.extend(["--where", e]);
    }
    let out = node.cli(&args);
    out.expect_success("scan --where");
    let page: Value = serde_json::from_str(&out.stdout_text()).expect("scan --json is JSON");
    page["records"]
        .as_array()
        .expect("records")
        .iter()
        .map(|r| r["key"].as_str().expect("key").to_owned())
        .collect()
}

/// `scan --where` with every operator, repeated expressions, values that are not JSON and a
/// malformed expression (exit 2, the daemon's message naming the problem).
#[test]
fn scan_where_filters_by_json_fields_from_the_cli() {
    let cluster = Cluster::new();
    let node = cluster.start_node(HEFEI);
    for (key, value) in [
        ("chao", r#"{"river":"Chao","level_m":4}"#),
        ("huai", r#"{"river":"Huai","level_m":9.2}"#),
        ("nanfei", r#"{"river":"Nanfei","level_m":7.5}"#),
        ("notes", "level_m >= 100, not JSON"),
        ("pi", r#"{"river":"Pi","gauge":{"level_m":7.5}}"#),
    ] {
        node.put("situation", key, value.as_bytes());
    }
    assert_eq!(
        scan_where(&node, "situation", &["/level_m>=7.5"]),
        ["huai", "nanfei"]
    );
    assert_eq!(scan_where(&node, "situation", &["/level_m>7.5"]), ["huai"]);
    assert_eq!(scan_where(&node, "situation", &["/level_m<7.5"]), ["chao"]);
    assert_eq!(
        scan_where(&node, "situation", &["/level_m<=7.5"]),
        ["chao", "nanfei"]
    );
    assert_eq!(
        scan_where(&node, "situation", &["/river=\"Nanfei\""]),
        ["nanfei"]
    );
    assert_eq!(
        scan_where(&node, "situation", &["/level_m!=7.5"]),
        ["chao", "huai"]
    );
    assert_eq!(scan_where(&node, "situation", &["/river~\"ha\""]), ["chao"]);
    assert_eq!(
        scan_where(&node, "situation", &["/gauge/level_m=7.50"]),
        ["pi"]
    );
    assert_eq!(
        scan_where(&node, "situation", &["/river~\"a\"", "/level_m>5"]),
        ["huai", "nanfei"]
    );
    let out = node.cli(&["scan", "situation", "--where", "/river=Nanfei"]);
    out.expect_code(2, "a malformed where is a usage error");
    assert!(out.stderr_text().contains("not JSON"), "{}", out.describe());
}

/// The keys `officesync conflicts COLL --json` lists at `node`.
fn conflict_keys(node: &TestNode, collection: &str) -> Vec<Value> {
    let out = node.cli(&["--json", "conflicts", collection]);
    out.expect_success("conflicts");
    let answer: Value = serde_json::from_str(&out.stdout_text()).expect("conflicts --json");
    answer["conflicts"].as_array().expect("conflicts").clone()
}

/// Two offices write one key while hefei's link is cut; after the heal both list the conflict;
/// `resolve --keep` at hefei supersedes both siblings everywhere, with the resolver as author.
#[test]
fn conflicts_across_a_partition_are_listed_resolved_and_gone_everywhere() {
    let seed = test_seed("conflicts_across_a_partition_are_listed_resolved_and_gone_everywhere");
    let star = Star::with_cut_link(seed, CONNECT_TIMEOUT);
    let (hub, hefei, beijing, proxy) = (&star.hub, &star.hefei, &star.beijing, star.proxy());
    let all = star.all();
    hefei.put("situation", "calm", b"{\"level_m\":1}");
    assert_converged(&all, CONVERGE_TIMEOUT);
    for node in all {
        assert!(
            conflict_keys(node, "situation").is_empty(),
            "{}",
            node.name()
        );
    }

    proxy.cut(Direction::Both);
    wait_for("hefei to notice the cut", Duration::from_secs(45), || {
        if is_connected(hefei, HUB) || is_connected(hub, HEFEI) {
            Err("still connected".into())
        } else {
            Ok(())
        }
    });
    let at_hefei = hefei.put("situation", "dam/3", b"{\"gate\":\"open\"}");
    let at_beijing = beijing.put("situation", "dam/3", b"{\"gate\":\"closed\"}");
    assert!(
        conflict_keys(hefei, "situation").is_empty(),
        "no conflict before the heal"
    );

    proxy.heal();
    wait_connected(&[(hefei, HUB), (hub, HEFEI)], Duration::from_secs(60));
    assert_converged(&all, CONVERGE_TIMEOUT);
    for node in [hefei, beijing, hub] {
        let listed = conflict_keys(node, "situation");
        assert_eq!(listed.len(), 1, "{}: {listed:?}", node.name());
        assert_eq!(listed[0]["key"], "dam/3");
        let mut versions: Vec<&str> = listed[0]["siblings"]
            .as_array()
            .expect("siblings")
            .iter()
            .map(|s| s["version"].as_str().expect("version"))
            .collect();
        versions.sort_unstable();
        let mut want = [at_hefei.version.as_str(), at_beijing.version.as_str()];
        want.sort_unstable();
        assert_eq!(versions, want, "{}", node.name());
    }
    // The text form names the key and its two siblings.
    let text = hefei.cli(&["conflicts", "situation"]);
    text.expect_success("conflicts");
    assert!(
        text.stdout_text().starts_with("dam/3\t2 siblings\n"),
        "{}",
        text.describe()
    );

    // Keep beijing's value, at hefei.
    let out = hefei.cli(&[
        "--json",
        "resolve",
        "situation",
        "dam/3",
        "--keep",
        &at_beijing.version,
    ]);
    out.expect_success("resolve --keep");
    let ack: Value = serde_json::from_str(&out.stdout_text()).expect("resolve --json");
    let resolved = ack["version"].as_str().expect("version").to_owned();
    assert!(
        resolved.starts_with("hefei@"),
        "written at hefei: {resolved}"
    );
    let author = siblings(hefei, "situation", "dam/3")[0]["author"]
        .as_str()
        .expect("the resolver is recorded")
        .to_owned();
    assert!(author.ends_with("@hefei"), "{author}");

    for node in all {
        wait_for(
            &format!("dam/3 resolved on {}", node.name()),
            CONVERGE_TIMEOUT,
            || {
                let sibs = siblings(node, "situation", "dam/3");
                match sibs.as_slice() {
                    [only] if only["version"] == resolved.as_str() => Ok(()),
                    _ => Err(format!("siblings {sibs:?}")),
                }
            },
        );
    }
    assert_converged(&all, CONVERGE_TIMEOUT);
    for node in all {
        let sibs = siblings(node, "situation", "dam/3");
        assert_eq!(sibs.len(), 1, "{}: {sibs:?}", node.name());
        assert_eq!(sibs[0]["author"].as_str(), Some(author.as_str()));
        let value = node.get("situation", "dam/3").expect("live").value;
        assert_eq!(value, b"{\"gate\":\"closed\"}", "{}", node.name());
        assert!(
            conflict_keys(node, "situation").is_empty(),
            "{}: conflicts left",
            node.name()
        );
    }
    // Nothing left to resolve: a second resolve is refused and writes nothing.
    let again = hefei.cli(&["resolve", "situation", "dam/3", "--value", "x"]);
    again.expect_code(4, "resolving a key with one version");
    assert_eq!(
        siblings(hefei, "situation", "dam/3")[0]["version"],
        resolved.as_str()
    );
}
