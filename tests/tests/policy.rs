//! Access policy end to end on real daemons: `_policy` written only at the admin node and
//! validated, a restricted collection that never reaches an office (not in its store, not in
//! the bytes it received) until a late grant brings its whole history, an observer office,
//! an unauthorized writer refused at the hub, and revocation before and during a session.

#[allow(dead_code)] // every suite uses part of the shared helpers
mod common;

use std::path::Path;
use std::time::Duration;

use common::{
    assert_converged, is_connected, peer_entry, record_count, wait_connected, wait_for, Star,
    BEIJING, HEFEI, HUB,
};
use officesync_tests::http::record_path;
use officesync_tests::{test_seed, Cluster, OutputExt, TestNode, TestRng};
use serde_json::Value;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs `officesync ARGS` against `node`, expecting success; returns stdout.
fn cli_ok(node: &TestNode, args: &[&str]) -> String {
    let out = node.cli(args);
    out.expect_success(&format!("officesync {}", args.join(" ")));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// HTTP status of `method path` at `node`.
fn status_of(node: &TestNode, method: &str, path: &str, body: Option<&[u8]>) -> u16 {
    node.api().call(method, path, body).status
}

/// Waits until `node` holds the `_policy` entry `key` with a value containing `needle`.
fn wait_policy(node: &TestNode, key: &str, needle: &str) {
    wait_for(
        &format!("{} to receive _policy {key}", node.name()),
        CONVERGE_TIMEOUT,
        || match node.get("_policy", key) {
            Some(r) if String::from_utf8_lossy(&r.value).contains(needle) => Ok(()),
            other => Err(format!("{:?}", other.map(|r| r.value))),
        },
    );
}

/// Waits until `node` holds `collection`/`key` (live).
fn wait_holds(node: &TestNode, collection: &str, key: &str) {
    wait_for(
        &format!("{} to hold {collection}/{key}", node.name()),
        CONVERGE_TIMEOUT,
        || {
            node.get(collection, key)
                .map(drop)
                .ok_or_else(|| "not yet".to_owned())
        },
    );
}

/// Waits until `node` has no session with `peer` (closed within 15 s); returns how long.
fn wait_disconnected(node: &TestNode, peer: &str) -> Duration {
    wait_for(
        &format!("{}'s session with {peer} to close", node.name()),
        Duration::from_secs(15),
        || {
            if is_connected(node, peer) {
                Err("still connected".to_owned())
            } else {
                Ok(())
            }
        },
    )
}

/// True when any file under `dir` contains `needle`.
fn dir_contains(dir: &Path, needle: &[u8]) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|e| {
        let p = e.path();
        if p.is_dir() {
            dir_contains(&p, needle)
        } else {
            std::fs::read(&p)
                .map(|bytes| bytes.windows(needle.len()).any(|w| w == needle))
                .unwrap_or(false)
        }
    })
}

/// `Ok` when `node`'s entry for `peer` shows `(behind_versions, lag_versions)` = `want`.
fn behind_and_lag(node: &TestNode, peer: &str, want: (u64, u64)) -> Result<(), String> {
    let status = node.status();
    let entry = peer_entry(&status, peer).ok_or("no peer entry")?;
    let got = (
        entry["behind_versions"].as_u64().unwrap_or(u64::MAX),
        entry["lag_versions"].as_u64().unwrap_or(u64::MAX),
    );
    if got == want {
        Ok(())
    } else {
        Err(format!("(behind, lag) = {got:?}"))
    }
}

fn bytes_received_from(node: &TestNode, peer: &str) -> u64 {
    peer_entry(&node.status(), peer)
        .and_then(|p| p["bytes_received"].as_u64())
        .unwrap_or(0)
}

#[test]
fn policy_is_written_only_at_an_admin_and_only_when_valid() {
    let star = Star::start(CONNECT_TIMEOUT);
    let path = record_path("_policy", "collections/situation");
    // An office may not write _policy, even through its own API.
    let body = br#"{"read": ["*"], "write": ["*"]}"#;
    assert_eq!(status_of(&star.hefei, "PUT", &path, Some(body)), 403);
    // Invalid entries get a 400 at the admin node and change nothing.
    for (key, value) in [
        ("collections/situation", "not json".as_bytes()),
        (
            "collections/situation",
            br#"{"read": ["Bad Name"]}"#.as_slice(),
        ),
        (
            "collections/situation",
            br#"{"read": [], "owner": "x"}"#.as_slice(),
        ),
        ("collections/_policy", br#"{"read": ["*"]}"#.as_slice()),
        ("who-knows", br#"{}"#.as_slice()),
        ("revoked/hefei", br#"{"serials": ["not hex"]}"#.as_slice()),
    ] {
        let reply = star
            .hub
            .api()
            .call("PUT", &record_path("_policy", key), Some(value));
        assert_eq!(reply.status, 400, "{key}: {}", reply.text());
        assert!(reply.json()["error"].as_str().is_some());
    }
    assert_eq!(record_count(&star.hub, "_policy"), 0, "nothing was written");
    // The CLI writes valid entries and shows them.
    cli_ok(&star.hub, &["policy", "grant", "situation", HEFEI, "write"]);
    let shown: Value = serde_json::from_str(&cli_ok(&star.hub, &["--json", "policy", "show"]))
        .expect("policy show --json is JSON");
    assert_eq!(shown["collections"]["situation"]["write"][0], "*");
    cli_ok(
        &star.hub,
        &["policy", "set", "situation", "--read", "*", "--write", HUB],
    );
    cli_ok(&star.hub, &["policy", "grant", "situation", HEFEI, "write"]);
    let shown: Value = serde_json::from_str(&cli_ok(&star.hub, &["--json", "policy", "show"]))
        .expect("policy show --json is JSON");
    assert_eq!(
        shown["collections"]["situation"]["write"],
        serde_json::json!([HUB, HEFEI])
    );
    cli_ok(
        &star.hub,
        &["policy", "revoke-grant", "situation", HEFEI, "write"],
    );
    let text = cli_ok(&star.hub, &["policy", "show"]);
    assert!(text.contains("situation"), "{text}");
    // The policy replicates to the offices, which enforce it on their own API.
    wait_policy(&star.beijing, "collections/situation", HUB);
    let reply = star
        .hefei
        .api()
        .call("PUT", &record_path("situation", "k"), Some(b"v"));
    assert_eq!(reply.status, 403, "{}", reply.text());
    // A node falsely listed as an admin in its own config still cannot write _policy: its
    // certificate is not an admin certificate.
    let other = Cluster::new();
    let mut claims = other.config("shanghai");
    claims.admins = vec!["shanghai".to_owned()];
    let shanghai = other.start(&claims);
    let out = shanghai.cli(&["policy", "grant", "situation", "shanghai", "write"]);
    // 6: forbidden (HTTP 403).
    assert_eq!(
        out.status.code(),
        Some(6),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(status_of(&shanghai, "PUT", &path, Some(body)), 403);
}

#[test]
fn restricted_collection_never_reaches_an_office_until_a_late_grant() {
    let star = Star::start(CONNECT_TIMEOUT);
    cli_ok(
        &star.hub,
        &["policy", "set", "secret", "--read", HEFEI, "--write", HEFEI],
    );
    wait_policy(&star.hefei, "collections/secret", HEFEI);
    wait_policy(&star.beijing, "collections/secret", HEFEI);
    let before = bytes_received_from(&star.beijing, HUB);
    // 48 incompressible values of 16 KiB, each carrying a marker that must never reach
    // beijing's disk.
    let mut rng = TestRng::new(test_seed("restricted_collection"));
    let marker = format!("SECRET-MARKER-{:016x}", rng.next_u64());
    let payload = 48 * 16 * 1024;
    for i in 0..48 {
        let mut value = marker.clone().into_bytes();
        while value.len() < 16 * 1024 {
            value.extend_from_slice(&rng.next_u64().to_le_bytes());
        }
        star.hefei.put("secret", &format!("file/{i}"), &value);
    }
    // An open collection written after it: once beijing has it, the secret had its chance.
    star.hefei.put("situation", "after-secret", b"done");
    wait_holds(&star.beijing, "situation", "after-secret");
    // The hub (an admin) holds it; beijing holds nothing of it and may not read it.
    wait_for(
        "the hub to hold the secret",
        CONVERGE_TIMEOUT,
        || match record_count(&star.hub, "secret") {
            48 => Ok(()),
            n => Err(format!("{n} records")),
        },
    );
    assert_eq!(record_count(&star.beijing, "secret"), 0);
    let path = record_path("secret", "file/0");
    assert_eq!(status_of(&star.beijing, "GET", &path, None), 403);
    assert_eq!(
        status_of(&star.beijing, "PUT", &path, Some(b"mine")),
        403,
        "beijing may not write it either"
    );
    let received = bytes_received_from(&star.beijing, HUB) - before;
    assert!(
        received < payload as u64 / 4,
        "beijing received {received} bytes from the hub, against a {payload}-byte secret"
    );
    let data_dir = star
        .beijing
        .config_path()
        .parent()
        .expect("the config is in the node's dir")
        .join("data");
    assert!(data_dir.exists(), "{}", data_dir.display());
    assert!(
        !dir_contains(&data_dir, marker.as_bytes()),
        "the secret marker is in beijing's store"
    );

    // What beijing may not read is not counted as owed to it, either way.
    wait_for(
        "beijing to be caught up with the hub",
        CONVERGE_TIMEOUT,
        || behind_and_lag(&star.beijing, HUB, (0, 0)),
    );
    wait_for("the hub to owe beijing nothing", CONVERGE_TIMEOUT, || {
        behind_and_lag(&star.hub, BEIJING, (0, 0))
    });

    // A late grant: beijing receives the whole history.
    cli_ok(&star.hub, &["policy", "grant", "secret", BEIJING, "read"]);
    wait_for(
        "beijing to receive the secret's history",
        CONVERGE_TIMEOUT,
        || match record_count(&star.beijing, "secret") {
            48 => Ok(()),
            n => Err(format!("{n} records")),
        },
    );
    assert_eq!(status_of(&star.beijing, "GET", &path, None), 200);
    assert_converged(&star.all(), CONVERGE_TIMEOUT);
}

#[test]
fn observer_office_reads_everything_and_writes_nothing() {
    let star = Star::start(CONNECT_TIMEOUT);
    cli_ok(
        &star.hub,
        &[
            "policy",
            "set-default",
            "--read",
            "*",
            "--write",
            &format!("{HUB},{HEFEI}"),
        ],
    );
    wait_policy(&star.beijing, "default", HEFEI);
    star.hefei.put("situation", "flood/level", b"3.2 m");
    wait_holds(&star.beijing, "situation", "flood/level");
    let reply =
        star.beijing
            .api()
            .call("PUT", &record_path("situation", "flood/level"), Some(b"0"));
    assert_eq!(reply.status, 403, "{}", reply.text());
    assert!(reply.json()["error"]
        .as_str()
        .unwrap_or("")
        .contains("may not write"));
    let reply = star
        .beijing
        .api()
        .call("DELETE", &record_path("situation", "flood/level"), None);
    assert_eq!(reply.status, 403);
    let out = star.beijing.cli(&["put", "situation", "x", "y"]);
    // 6: forbidden (HTTP 403).
    assert_eq!(out.status.code(), Some(6));
    assert_converged(&star.all(), CONVERGE_TIMEOUT);
}

#[test]
fn writes_of_an_office_that_may_not_write_are_refused_at_the_hub() {
    let star = Star::start(CONNECT_TIMEOUT);
    // beijing is cut off (restarted with no peer to dial) and writes while it does not know
    // the policy yet; then it comes back.
    let config = star.beijing.config_path().to_owned();
    let original = std::fs::read_to_string(&config).expect("read beijing's config");
    let isolated: Vec<&str> = original
        .lines()
        .map(|l| {
            if l.starts_with("peers = ") {
                "peers = []"
            } else {
                l
            }
        })
        .collect();
    std::fs::write(&config, isolated.join("\n")).expect("write the isolated config");
    star.beijing.restart();
    cli_ok(
        &star.hub,
        &[
            "policy",
            "set",
            "situation",
            "--read",
            "*",
            "--write",
            &format!("{HUB},{HEFEI}"),
        ],
    );
    for i in 0..20 {
        star.beijing
            .put("situation", &format!("beijing/{i}"), b"unauthorized");
    }
    star.hefei.put("situation", "hefei/ok", b"authorized");
    std::fs::write(&config, original).expect("restore beijing's config");
    star.beijing.restart();
    // beijing reconnects: the hub refuses its versions and relays nothing of them.
    wait_connected(
        &[(&star.beijing, HUB), (&star.hub, BEIJING)],
        CONNECT_TIMEOUT,
    );
    wait_policy(&star.beijing, "collections/situation", HEFEI);
    wait_for(
        "the hub to count the refused versions",
        CONVERGE_TIMEOUT,
        || {
            let rejected = peer_entry(&star.hub.status(), BEIJING)
                .and_then(|p| p["rejected"].as_u64())
                .unwrap_or(0);
            if rejected >= 20 {
                Ok(())
            } else {
                Err(format!("rejected {rejected}"))
            }
        },
    );
    wait_holds(&star.beijing, "situation", "hefei/ok");
    for node in [&star.hub, &star.hefei] {
        for i in 0..20 {
            assert!(
                node.get("situation", &format!("beijing/{i}")).is_none(),
                "{} holds beijing/{i}",
                node.name()
            );
        }
    }
    // Refused versions are not counted as what the hub lacks.
    wait_for(
        "the hub to be caught up with beijing",
        CONVERGE_TIMEOUT,
        || {
            let status = star.hub.status();
            let behind = peer_entry(&status, BEIJING).map(|p| p["behind_versions"].clone());
            if behind == Some(Value::from(0)) {
                Ok(())
            } else {
                Err(format!("behind {behind:?}"))
            }
        },
    );
    // And beijing's API now refuses further writes.
    let reply =
        star.beijing
            .api()
            .call("PUT", &record_path("situation", "beijing/late"), Some(b"x"));
    assert_eq!(reply.status, 403);
    assert!(star.hub.is_running() && star.hefei.is_running());
}

#[test]
fn revoked_node_is_refused_during_and_before_a_session() {
    let star = Star::start(CONNECT_TIMEOUT);
    star.beijing.put("situation", "beijing/before", b"fine");
    wait_holds(&star.hub, "situation", "beijing/before");
    // During a session: the open session closes within seconds of the policy arriving.
    cli_ok(
        &star.hub,
        &[
            "policy",
            "revoke-node",
            BEIJING,
            "--reason",
            "certificate lost",
        ],
    );
    let took = wait_disconnected(&star.hub, BEIJING);
    eprintln!("session closed {took:?} after the revocation");
    // Before a session: it stays refused at the handshake while it keeps redialing. When the
    // revocation reached beijing before the session closed, beijing refuses the write itself.
    let reply = star.beijing.api().call(
        "PUT",
        &record_path("situation", "beijing/after"),
        Some(b"revoked"),
    );
    let accepted = match reply.status {
        200..=299 => true,
        403 => false,
        other => panic!("PUT at beijing: HTTP {other}"),
    };
    eprintln!("beijing accepted its own write after the revocation: {accepted}");
    std::thread::sleep(Duration::from_secs(3));
    assert!(!is_connected(&star.hub, BEIJING));
    assert!(star.hub.get("situation", "beijing/after").is_none());
    let log = star.hub.log();
    assert!(
        log.contains("refused a node revoked by _policy"),
        "no handshake refusal in the hub's log"
    );
    // A restarted revoked node is refused too.
    star.beijing.restart();
    std::thread::sleep(Duration::from_secs(3));
    assert!(!is_connected(&star.hub, BEIJING));
    // hefei is unaffected.
    star.hefei.put("situation", "hefei/still", b"ok");
    wait_holds(&star.hub, "situation", "hefei/still");
    // Lifting the revocation lets it back in, with what it wrote meanwhile.
    cli_ok(&star.hub, &["policy", "unrevoke-node", BEIJING]);
    wait_connected(&[(&star.hub, BEIJING)], CONNECT_TIMEOUT);
    assert_converged(&star.all(), CONVERGE_TIMEOUT);
    if accepted {
        assert!(star.hefei.get("situation", "beijing/after").is_some());
    }
}

#[test]
fn revoking_one_certificate_lets_a_reissued_one_in() {
    let star = Star::start(CONNECT_TIMEOUT);
    let serial = peer_entry(&star.hub.status(), BEIJING)
        .and_then(|p| p["cert_serial"].as_str().map(str::to_owned))
        .expect("the hub reports beijing's certificate serial");
    cli_ok(
        &star.hub,
        &["policy", "revoke-node", BEIJING, "--serial", &serial],
    );
    wait_disconnected(&star.hub, BEIJING);
    // A new certificate for the same office (the bundle dir is <tmp>/bundles/NAME, the CA
    // <tmp>/ca, as the harness lays them out).
    let config = std::fs::read_to_string(star.beijing.config_path()).expect("config");
    let cert = config
        .lines()
        .find_map(|l| l.strip_prefix("cert = "))
        .map(|v| v.trim_matches('"').to_owned())
        .expect("cert path in config");
    let bundle = Path::new(&cert).parent().expect("bundle dir").to_owned();
    let ca = bundle.join("../../ca");
    let out = star.beijing.cli(&[
        "ca".as_ref(),
        "issue".as_ref(),
        BEIJING.as_ref(),
        "--ca-dir".as_ref(),
        ca.as_os_str(),
        "--out".as_ref(),
        bundle.as_os_str(),
        "--force".as_ref(),
    ]);
    out.expect_success("officesync ca issue --force");
    star.beijing.restart();
    wait_connected(&[(&star.hub, BEIJING)], CONNECT_TIMEOUT);
    let now = peer_entry(&star.hub.status(), BEIJING)
        .and_then(|p| p["cert_serial"].as_str().map(str::to_owned))
        .expect("serial");
    assert_ne!(now, serial, "a new certificate");
    // And it writes again: a serial revocation does not stop the node's name.
    star.beijing.put("situation", "beijing/reissued", b"back");
    wait_holds(&star.hub, "situation", "beijing/reissued");
}
