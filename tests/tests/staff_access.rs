//! Staff access against real daemons: a refused sign-in through the CLI is one line and exit 5,
//! tokens never reach the log, a damaged audit chain stops the daemon at start (naming the
//! entry), `auth = "none"` serves everyone with a warning in the log, and an author written at
//! one office arrives with the version at the others.

#[allow(dead_code)] // every suite uses part of the shared helpers
mod common;

use std::time::Duration;

use common::{hub_config, office_config, wait_for};
use officesync_tests::{Cluster, OutputExt};

#[test]
fn a_refused_sign_in_is_one_line_and_exit_5_and_tokens_stay_out_of_the_log() {
    let cluster = Cluster::new();
    let node = cluster.start_node("hefei");
    let admin = node.api().token().expect("admin token").to_owned();
    let add = node.cli(&[
        "user",
        "add",
        "li",
        "--role",
        "reader",
        "--collections",
        "situation",
    ]);
    add.expect_success("user add");
    let li = add.stdout_text().trim().to_owned();
    assert!(li.starts_with("ost_"), "user add printed {li:?}");

    let mut wrong = node.cli_command(&["status"]);
    wrong.env("OFFICESYNC_TOKEN", "ost_wrong");
    let out = officesync_tests::run_bounded(wrong, None, officesync_tests::process::CLI_TIMEOUT);
    out.expect_code(5, "a wrong token");
    let said = out.stderr_text();
    assert_eq!(said.lines().count(), 1, "not one line: {said}");
    assert!(said.contains("invalid token"), "{said}");

    let mut none = node.cli_command(&["status"]);
    none.env_remove("OFFICESYNC_TOKEN");
    let out = officesync_tests::run_bounded(none, None, officesync_tests::process::CLI_TIMEOUT);
    out.expect_code(5, "no token");
    assert!(
        out.stderr_text().contains("authentication required"),
        "{}",
        out.stderr_text()
    );

    let mut reader = node.cli_command(&["put", "situation", "k", "v"]);
    reader.env("OFFICESYNC_TOKEN", &li);
    let out = officesync_tests::run_bounded(reader, None, officesync_tests::process::CLI_TIMEOUT);
    out.expect_code(6, "a reader's put");

    // Neither token, nor the wrong one, is in the log, the user list or the status.
    let log = node.log();
    for secret in [&admin, &li, &"ost_wrong".to_owned()] {
        assert!(!log.contains(secret.as_str()), "a token in the log");
    }
    let list = node.cli(&["user", "list", "--json"]).stdout_text();
    let status = node.cli(&["status", "--json"]).stdout_text();
    for secret in [&admin, &li] {
        assert!(!list.contains(secret.as_str()) && !status.contains(secret.as_str()));
    }
    // What was refused is in the audit log, with the reader's refused put nowhere as a write.
    let audit = node.cli(&["audit", "--json"]).stdout_text();
    assert!(audit.contains("\"kind\": \"auth_refused\""), "{audit}");
    assert!(audit.contains("\"kind\": \"user_add\""), "{audit}");
    assert!(!audit.contains("\"actor\": \"li@hefei\""), "{audit}");
}

#[test]
fn a_damaged_audit_chain_stops_the_daemon_naming_the_entry() {
    let cluster = Cluster::new();
    let config = cluster.config("hefei");
    let node = cluster.start(&config);
    node.api().put("situation", "a", b"1");
    node.api().put("situation", "b", b"2");
    node.cli(&["audit", "verify"])
        .expect_success("verify of an intact log");
    node.stop();
    let segment = config.data_dir.join("audit/000001.log");
    let mut bytes = std::fs::read(&segment).expect("segment");
    // Flip one byte inside the second entry's actor.
    let second = bytes.iter().position(|&b| b == b'\n').expect("two entries") + 1;
    let at = second
        + bytes[second..]
            .windows(9)
            .position(|w| w == b"\"actor\":\"")
            .expect("an actor")
        + 9;
    bytes[at] ^= 0x01;
    std::fs::write(&segment, &bytes).expect("tamper");
    // Offline verify names it.
    let out = node.cli(&[
        "audit",
        "verify",
        "--dir",
        config.data_dir.join("audit").to_str().expect("UTF-8"),
    ]);
    out.expect_code(4, "verify of a damaged log");
    assert!(
        out.stderr_text().contains("000001.log entry 2"),
        "{}",
        out.stderr_text()
    );
    // And the daemon refuses to start over it, naming it.
    let failure = cluster
        .try_start(&config)
        .expect_err("a start over a damaged audit log");
    assert!(
        failure.log.contains("audit log damaged") && failure.log.contains("000001.log entry 2"),
        "{failure}"
    );
}

#[test]
fn auth_none_serves_everyone_and_warns() {
    let cluster = Cluster::new();
    let mut config = cluster.config("hefei");
    config.api_auth = Some("none".to_owned());
    let node = cluster.start(&config);
    assert!(node.api().token().is_none(), "no admin token is written");
    let anonymous = officesync_tests::ApiClient::new(node.api_addr());
    let reply = anonymous.call("PUT", "/v1/collections/situation/records/k", Some(b"v"));
    assert_eq!(reply.status, 200, "{}", reply.text());
    let who = anonymous.call("GET", "/v1/whoami", None).json();
    assert_eq!(who["auth"], "none");
    assert!(
        node.log()
            .contains("api.auth = \"none\": anyone who reaches the API is an admin"),
        "no warning in the log:\n{}",
        node.log()
    );
}

#[test]
fn the_author_arrives_at_the_other_offices_with_the_version() {
    let cluster = Cluster::new();
    let hub_cfg = hub_config(&cluster);
    let hub = cluster.start(&hub_cfg);
    let hefei = cluster.start(&office_config(&cluster, "hefei", hub_cfg.sync_listen));
    let add = hefei.cli(&[
        "user",
        "add",
        "li",
        "--role",
        "writer",
        "--collections",
        "situation",
    ]);
    add.expect_success("user add");
    let li = add.stdout_text().trim().to_owned();
    let mut put = hefei.cli_command(&["put", "situation", "hefei/grain", "12500"]);
    put.env("OFFICESYNC_TOKEN", &li);
    officesync_tests::run_bounded(put, None, officesync_tests::process::CLI_TIMEOUT)
        .expect_success("li's put");
    // A system write (no user) carries the node alone.
    hefei.api().put("situation", "hefei/admin-note", b"x");
    let mut authors = Vec::new();
    wait_for(
        "the versions at the general office",
        Duration::from_secs(60),
        || {
            let reply = hub.api().call(
                "GET",
                "/v1/collections/situation/records/hefei/grain?all=true",
                None,
            );
            if reply.status != 200 {
                return Err(format!("HTTP {}", reply.status));
            }
            authors = reply.json()["siblings"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|s| s["author"].as_str().unwrap_or("-").to_owned())
                .collect();
            Ok(())
        },
    );
    assert_eq!(authors, ["li@hefei"]);
    let shown = hub
        .cli(&["get", "situation", "hefei/grain", "--all"])
        .stdout_text();
    assert!(shown.contains("  author:  li@hefei\n"), "{shown}");
    // The admin's write through the harness's token: admin@hefei.
    wait_for(
        "the admin's write at the general office",
        Duration::from_secs(60),
        || {
            let reply = hub.api().call(
                "GET",
                "/v1/collections/situation/records/hefei/admin-note?all=true",
                None,
            );
            (reply.status == 200 && reply.json()["siblings"][0]["author"] == "admin@hefei")
                .then_some(())
                .ok_or_else(|| reply.text())
        },
    );
    // Both sides agree on the wire: protocol 3, and each knows what the other runs.
    let status = hub.api().status();
    let peer = &status["peers"][0];
    assert_eq!(peer["protocol"], 3, "{peer}");
    assert!(
        peer["release"]
            .as_str()
            .is_some_and(|r| r.starts_with("officesyncd ")),
        "{peer}"
    );
}
