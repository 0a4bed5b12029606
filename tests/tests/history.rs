//! Per-key history end to end with the real binaries: superseded versions (tombstones
//! included, with author and HLC) are listed at every office that held them, after
//! replication, by `GET ..?history=N` and `officesync history`; and history is what each node
//! holds: an office that was down while a version came and went never lists it.

#[allow(dead_code)] // every suite uses part of the shared helpers
mod common;

use std::time::Duration;

use common::{assert_converged, wait_connected, wait_for, Star, BEIJING, HEFEI, HUB};
use officesync_tests::http::record_path;
use officesync_tests::{OutputExt, TestNode};
use serde_json::Value;

/// Sessions come up within a few dial attempts.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Small data sets converge within this on a busy 2-core machine.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(60);

/// `(version, superseded, deleted, author)` of every version `?history=50` lists at `node`.
fn history(node: &TestNode, key: &str) -> Vec<(String, bool, bool, String)> {
    try_history(node, key).unwrap_or_else(|| panic!("{key} is not held at {}", node.name()))
}

/// [`history`], `None` while the key was never written at `node` (404).
fn try_history(node: &TestNode, key: &str) -> Option<Vec<(String, bool, bool, String)>> {
    let path = format!("{}?history=50", record_path("situation", key));
    let reply = node.api().call("GET", &path, None);
    if reply.status == 404 {
        return None;
    }
    assert_eq!(reply.status, 200, "{}: {}", node.name(), reply.text());
    let body = reply.json();
    assert!(
        body["note"]
            .as_str()
            .is_some_and(|n| n.contains("this node holds")),
        "{body}"
    );
    let versions = body["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .map(|v| {
            (
                v["version"].as_str().expect("version").to_owned(),
                v["superseded"].as_bool().expect("superseded"),
                v["deleted"].as_bool().expect("deleted"),
                v["author"].as_str().unwrap_or("-").to_owned(),
            )
        })
        .collect();
    Some(versions)
}

/// The version every node holds for `key` as winner, once they all agree on `version`.
fn wait_winner(nodes: &[&TestNode], key: &str, version: &str) {
    wait_for(
        &format!("{key} at {version} everywhere"),
        CONVERGE_TIMEOUT,
        || {
            for node in nodes {
                let got = try_history(node, key).and_then(|h| h.first().map(|v| v.0.clone()));
                if got.as_deref() != Some(version) {
                    return Err(format!("{} has {got:?}", node.name()));
                }
            }
            Ok(())
        },
    );
}

/// Three offices take turns writing one key (a value, a delete, a value again), each waiting
/// until every office holds the previous version: every office then lists the same history,
/// newest first, the tombstone included, each version with its author.
#[test]
fn history_is_listed_at_every_office_that_held_the_versions() {
    let star = Star::start(CONNECT_TIMEOUT);
    let all = star.all();
    let first = star.hefei.put("situation", "hefei/grain", b"100t");
    wait_winner(&all, "hefei/grain", &first.version);
    let deleted = star
        .beijing
        .api()
        .delete("situation", "hefei/grain")
        .expect("a live record to delete");
    wait_winner(&all, "hefei/grain", &deleted.version);
    let last = star.hub.put("situation", "hefei/grain", b"80t");
    wait_winner(&all, "hefei/grain", &last.version);
    assert_converged(&all, CONVERGE_TIMEOUT);

    let expected: Vec<(String, bool, bool)> = vec![
        (last.version.clone(), false, false),
        (deleted.version.clone(), true, true),
        (first.version.clone(), true, false),
    ];
    for node in all {
        let got = history(node, "hefei/grain");
        let shape: Vec<(String, bool, bool)> =
            got.iter().map(|(v, s, d, _)| (v.clone(), *s, *d)).collect();
        assert_eq!(shape, expected, "history at {}", node.name());
        // The author is whoever wrote at which office, replicated with the version.
        assert!(got[0].3.ends_with(&format!("@{HUB}")), "{got:?}");
        assert!(got[1].3.ends_with(&format!("@{BEIJING}")), "{got:?}");
        assert!(got[2].3.ends_with(&format!("@{HEFEI}")), "{got:?}");
    }

    // The CLI: one line per version, newest first; the note on stderr.
    let out = star
        .beijing
        .cli(&["history", "situation", "hefei/grain", "--limit", "2"]);
    out.expect_success("history");
    let text = out.stdout_text();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{}", out.describe());
    assert!(
        lines[0].starts_with(&format!("{}\t", last.version)),
        "{text}"
    );
    assert!(lines[0].contains("\tcurrent\t80t"), "{text}");
    assert!(lines[1].contains("\tsuperseded\tdeleted"), "{text}");
    assert!(
        out.stderr_text().contains("what this node holds"),
        "{}",
        out.describe()
    );
    let json = star
        .beijing
        .cli(&["--json", "history", "situation", "hefei/grain"]);
    json.expect_success("history --json");
    let body: Value = serde_json::from_str(&json.stdout_text()).expect("history --json is JSON");
    assert_eq!(body["versions"].as_array().map(Vec::len), Some(3), "{body}");
    assert_eq!(body["kept_per_key"], 10, "{body}");
    // A key never written here: exit 1, as `get`.
    star.beijing
        .cli(&["history", "situation", "never"])
        .expect_code(1, "history of a key never written");
}

/// beijing is down while hefei writes a key twice: the hub holds both versions (its history
/// lists the first), but beijing catches up with the current version only, so its history
/// lists just that one.
#[test]
fn history_is_what_each_node_holds() {
    let star = Star::start(CONNECT_TIMEOUT);
    let (hub, hefei, beijing) = (&star.hub, &star.hefei, &star.beijing);
    assert!(beijing.stop().success(), "beijing stops cleanly");
    let first = hefei.put("situation", "notice", b"draft");
    wait_winner(&[hub], "notice", &first.version);
    let second = hefei.put("situation", "notice", b"final");
    wait_winner(&[hub], "notice", &second.version);
    beijing.restart();
    wait_connected(&[(beijing, HUB), (hub, BEIJING)], CONNECT_TIMEOUT);
    assert_converged(&star.all(), CONVERGE_TIMEOUT);
    let versions = |node: &TestNode| -> Vec<String> {
        history(node, "notice").into_iter().map(|v| v.0).collect()
    };
    assert_eq!(
        versions(hub),
        [second.version.clone(), first.version.clone()]
    );
    assert_eq!(
        versions(hefei),
        [second.version.clone(), first.version.clone()]
    );
    assert_eq!(versions(beijing), std::slice::from_ref(&second.version));
}
