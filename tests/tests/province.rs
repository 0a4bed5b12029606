//! The province view end to end: a 4-tier deployment of nine real daemons on loopback (the
//! general office, two cities, two county relays, four townships), every node publishing a
//! status report each second; reports travel up only (a city holds its subtree's). One
//! township's link is cut with the UDP fault proxy: the general
//! office's `/v1/cluster` and `officesync cluster --behind` show that township, and only it,
//! as silent with the time of its last report, `/cluster` draws it in the silent colour (a
//! headless Chromium screenshot, skipped when Chromium is missing), and after the heal it is
//! fresh again. Two more tests hold staff, and an office with a valid certificate, to the
//! rules of `_status`.

#[allow(dead_code)] // every suite uses part of the shared helpers
mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{chromium, start_with_lines, wait_for, HUB};
use officesync_protocol::{Dot, Hlc, ReplicaId, Version, VersionVector};
use officesync_tests::fault_proxy::{Direction, FaultProxy};
use officesync_tests::http::record_path;
use officesync_tests::rogue::{one_version_stream, Rogue};
use officesync_tests::{run_bounded, Cluster, TestConfig, TestNode};
use serde_json::Value;

/// Every relay (and the general office) is an admin: it relays for the tier below.
const ADMINS: [&str; 5] = [HUB, "city-a", "city-b", "county-a", "county-b"];
/// The township whose link is cut.
const CUT: &str = "town-4";
/// Reports every second, heartbeats every second: a cut shows within seconds.
const STATUS_TOML: &str = "[status]\nreport_interval_ms = 1000\n";
/// Nine daemons come up and report on a busy 2-core machine.
const SETTLE: Duration = Duration::from_secs(60);
/// What the issue asks: the general office sees the cut township as silent within 30 s.
const SEE_SILENT: Duration = Duration::from_secs(30);
/// A redial after the heal waits out the dial backoff (up to 30 s).
const HEAL: Duration = Duration::from_secs(60);
/// One headless Chromium run.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(60);

/// The deployment: nodes in start order, the proxy in front of county-b for the cut township.
struct Province {
    nodes: Vec<TestNode>,
    proxy: FaultProxy,
    // Last, so that the nodes are killed before their temp dir goes.
    cluster: Cluster,
}

impl Province {
    fn node(&self, name: &str) -> &TestNode {
        self.nodes
            .iter()
            .find(|n| n.name() == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }
}

/// A config for `name` dialing `parent` at `addr`, with the relays as admins.
fn config(cluster: &Cluster, name: &str, parent: Option<(&str, String)>) -> TestConfig {
    let admin = ADMINS.contains(&name);
    cluster.issue(name, admin);
    let mut config = cluster.config(name);
    config.admins = ADMINS.iter().map(|a| (*a).to_owned()).collect();
    if let Some((parent, addr)) = parent {
        config.peers = vec![(parent.to_owned(), addr)];
    }
    config.extra_toml = STATUS_TOML.to_owned();
    config
}

fn start(config: &TestConfig) -> TestNode {
    start_with_lines(config, "sync", "heartbeat_interval_ms = 1000")
}

/// Starts the nine nodes, tier by tier; town-4 dials county-b through a fault proxy.
fn province() -> Province {
    let cluster = Cluster::new();
    let mut nodes = Vec::new();
    let hub = config(&cluster, HUB, None);
    nodes.push(start(&hub));
    let tiers: [(&str, &str); 4] = [
        ("city-a", HUB),
        ("city-b", HUB),
        ("county-a", "city-a"),
        ("county-b", "city-b"),
    ];
    let mut addrs = vec![(HUB.to_owned(), hub.sync_listen)];
    for (name, parent) in tiers {
        let addr = addrs
            .iter()
            .find(|(n, _)| n == parent)
            .map(|(_, a)| *a)
            .expect("parent started first");
        let cfg = config(&cluster, name, Some((parent, addr.to_string())));
        nodes.push(start(&cfg));
        addrs.push((name.to_owned(), cfg.sync_listen));
    }
    let county = |name: &str| {
        addrs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
            .expect("county started")
    };
    let proxy = FaultProxy::start(county("county-b"), 19);
    for (town, parent, addr) in [
        ("town-1", "county-a", county("county-a")),
        ("town-2", "county-a", county("county-a")),
        ("town-3", "county-b", county("county-b")),
        (CUT, "county-b", proxy.listen_addr()),
    ] {
        nodes.push(start(&config(
            &cluster,
            town,
            Some((parent, addr.to_string())),
        )));
    }
    Province {
        nodes,
        proxy,
        cluster,
    }
}

/// `GET /v1/cluster` of `node` (`behind`: only what is not fresh).
fn cluster_view(node: &TestNode, behind: bool) -> Result<Value, String> {
    let path = if behind {
        "/v1/cluster?behind=true"
    } else {
        "/v1/cluster"
    };
    let reply = node
        .api()
        .request("GET", path, None)
        .map_err(|e| e.to_string())?;
    if reply.status != 200 {
        return Err(format!("{path}: {} {}", reply.status, reply.text()));
    }
    Ok(reply.json())
}

/// `(name, state)` of every node in `view`.
fn states(view: &Value) -> Vec<(String, String)> {
    view["nodes"]
        .as_array()
        .map(|nodes| {
            nodes
                .iter()
                .map(|n| {
                    (
                        n["name"].as_str().unwrap_or("?").to_owned(),
                        n["state"].as_str().unwrap_or("?").to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Ok when every one of the nine nodes is in `view`, `expected` ones in their state and every
/// other fresh.
fn check_states(view: &Value, expected: &[(&str, &str)]) -> Result<(), String> {
    let got = states(view);
    let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
    let mut want: Vec<&str> = ADMINS.to_vec();
    want.extend(["town-1", "town-2", "town-3", CUT]);
    let missing: Vec<&&str> = want.iter().filter(|w| !names.contains(w)).collect();
    if !missing.is_empty() || got.len() != want.len() {
        return Err(format!("missing {missing:?} in {got:?}"));
    }
    for (name, state) in &got {
        let expect = expected
            .iter()
            .find(|(n, _)| n == name)
            .map_or("fresh", |(_, s)| *s);
        if state != expect {
            return Err(format!("{name} is {state}, not {expect}: {got:?}"));
        }
    }
    Ok(())
}

/// The node entry of `name` in `view`.
fn entry<'a>(view: &'a Value, name: &str) -> &'a Value {
    view["nodes"]
        .as_array()
        .and_then(|n| n.iter().find(|n| n["name"] == name))
        .unwrap_or_else(|| panic!("{name} missing from {view}"))
}

#[test]
fn the_general_office_sees_a_cut_township_as_silent_and_then_fresh_again() {
    let began = Instant::now();
    let p = province();
    let hub = p.node(HUB);
    let took = wait_for("every node's report at the general office", SETTLE, || {
        check_states(&cluster_view(hub, false)?, &[])
    });
    eprintln!("all nine fresh at the general office after {took:?}");

    // The tree: each node under the peer it dials.
    let view = cluster_view(hub, false).expect("view");
    for (name, parent, depth) in [
        (HUB, None, 0),
        ("city-b", Some(HUB), 1),
        ("county-b", Some("city-b"), 2),
        (CUT, Some("county-b"), 3),
    ] {
        let e = entry(&view, name);
        assert_eq!(e["parent"].as_str(), parent, "{e}");
        assert_eq!(e["depth"], depth, "{e}");
        assert_eq!(e["connected"], true, "{e}");
        assert_eq!(e["silent"], false, "{e}");
        assert!(
            e["version"]
                .as_str()
                .is_some_and(|v| v.starts_with("officesyncd ")),
            "{e}"
        );
        assert!(e["last_report"].is_string(), "{e}");
    }

    // Reports travel up only: a city holds those of its own subtree, none from above or
    // beside it; the general office holds them all.
    assert_eq!(
        status_keys(p.node("city-a")),
        ["city-a", "county-a", "town-1", "town-2"]
    );
    assert_eq!(status_keys(hub).len(), 9);

    // Idle, a node skips reports that would say nothing new (`unchanged_report_ms`, 60 s by
    // default): the cut township's last report stops changing although it reports every
    // second; the cut below is still seen at once, by its parent's changed report.
    let generated = |view: &Value| entry(view, CUT)["report_generated_at"].to_string();
    let mut last = generated(&cluster_view(hub, false).expect("view"));
    let mut same_since = Instant::now();
    let took = wait_for(
        "the cut township's report to stay unchanged for 5 intervals",
        SETTLE,
        || {
            let now = generated(&cluster_view(hub, false)?);
            if now != last {
                last = now;
                same_since = Instant::now();
            }
            (same_since.elapsed() >= Duration::from_secs(5))
                .then_some(())
                .ok_or_else(|| format!("report made at {last}"))
        },
    );
    eprintln!("{CUT}'s report unchanged for 5 s, {took:?} after the check began");

    p.proxy.cut(Direction::Both);
    let cut_at = Instant::now();
    let took = wait_for(
        "the general office to see the cut township silent",
        SEE_SILENT,
        || check_states(&cluster_view(hub, false)?, &[(CUT, "silent")]),
    );
    eprintln!("{CUT} silent at the general office {took:?} after the cut");
    let view = cluster_view(hub, true).expect("behind view");
    let silent = entry(&view, CUT);
    assert_eq!(silent["silent"], true, "{silent}");
    assert_eq!(silent["connected"], false, "{silent}");
    assert!(silent["last_report"].is_string(), "{silent}");
    let age = silent["last_report_age_ms"].as_u64().expect("age");
    assert!(
        silent["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("last report ") && r.ends_with(" ago")),
        "{silent}"
    );
    assert!(age >= 3_000, "silent with a report {age} ms old: {silent}");
    // --behind keeps the silent township and its ancestors for context, nothing else.
    let names: Vec<String> = states(&view).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, [HUB, "city-b", "county-b", CUT], "{view}");

    let out = hub.cli(&["cluster", "--behind"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let flagged: Vec<&str> = text
        .lines()
        .filter(|l| {
            ["SILENT", "BEHIND", "REFUSING"]
                .iter()
                .any(|s| l.contains(s))
        })
        .collect();
    assert_eq!(flagged.len(), 1, "{text}");
    assert!(
        flagged[0]
            .trim_start()
            .starts_with(&format!("{CUT}  SILENT: last report ")),
        "{text}"
    );
    assert!(
        flagged[0].contains("(last report at 20"),
        "the time: {text}"
    );
    assert!(
        text.contains(": 8 fresh, 0 behind, 0 refusing, 1 silent"),
        "{text}"
    );
    eprintln!("officesync cluster --behind at the general office:\n{text}");
    let json = hub.cli(&["--json", "cluster", "--behind"]);
    let json: Value = serde_json::from_slice(&json.stdout).expect("cluster --json");
    let not_fresh: Vec<(String, String)> = states(&json)
        .into_iter()
        .filter(|(_, s)| s != "fresh")
        .collect();
    assert_eq!(not_fresh, [(CUT.to_owned(), "silent".to_owned())]);

    screenshot_shows_silent(hub, p.cluster.dir());

    p.proxy.heal();
    let took = wait_for("the cut township to be fresh again", HEAL, || {
        check_states(&cluster_view(hub, false)?, &[])
    });
    eprintln!(
        "{CUT} fresh again {took:?} after the heal ({:?} after the cut; whole test {:?})",
        cut_at.elapsed(),
        began.elapsed()
    );
}

/// The keys of the `_status` records `node` holds.
fn status_keys(node: &TestNode) -> Vec<String> {
    let page: Value = node
        .api()
        .call("GET", "/v1/collections/_status/records?limit=1000", None)
        .json();
    page["records"]
        .as_array()
        .map(|r| {
            r.iter()
                .filter_map(|r| r["key"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Loads `/cluster` of `hub` in headless Chromium, signed in as its admin: a screenshot
/// (kept in `dir`, and copied to `/tmp/cluster.png` to look at) and the DOM, in which the cut
/// township is drawn in the silent colour and no other node is.
fn screenshot_shows_silent(hub: &TestNode, dir: &Path) {
    let Some(browser) = chromium() else {
        eprintln!("skipping the screenshot: chromium is not installed (Debian package `chromium`)");
        return;
    };
    let token = hub.api().token().expect("admin token").to_owned();
    let url = format!("http://admin:{token}@{}/cluster", hub.api_addr());
    let run = |extra: &[String]| {
        let profile = tempfile::tempdir().expect("profile dir");
        let mut cmd = Command::new(browser);
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            "--hide-scrollbars",
        ])
        .args(extra)
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(&url)
        .env("HOME", profile.path());
        let out = run_bounded(cmd, None, BROWSER_TIMEOUT);
        assert!(
            out.status.success(),
            "chromium failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        out
    };
    let png = dir.join("cluster.png");
    run(&[
        format!("--screenshot={}", png.display()),
        "--window-size=1000,700".to_owned(),
    ]);
    let bytes = std::fs::read(&png).expect("the screenshot");
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert!(
        bytes.len() > 5_000,
        "a blank screenshot? {} bytes",
        bytes.len()
    );
    match std::fs::copy(&png, "/tmp/cluster.png") {
        Ok(_) => eprintln!(
            "screenshot of /cluster: {} and /tmp/cluster.png",
            png.display()
        ),
        Err(e) => eprintln!(
            "screenshot of /cluster: {} (cannot copy to /tmp: {e})",
            png.display()
        ),
    }

    let dom = String::from_utf8_lossy(&run(&["--dump-dom".to_owned()]).stdout).into_owned();
    assert!(!dom.contains("<script"), "no JavaScript: {dom}");
    let start = dom
        .find(&format!("data-node=\"{CUT}\" data-state=\"silent\""))
        .unwrap_or_else(|| panic!("{CUT} not drawn silent: {dom}"));
    let group = &dom[start..];
    let group = &group[..group.find("</g>").unwrap_or(group.len())];
    assert!(
        group.contains("fill=\"#d62728\""),
        "{CUT} not in the silent colour: {group}"
    );
    assert!(
        group.contains("last report "),
        "no time in the hover text: {group}"
    );
    assert_eq!(
        dom.matches("data-state=\"silent\"").count(),
        2,
        "the township and the legend's key, nothing else: {dom}"
    );
    assert_eq!(dom.matches("fill=\"#d62728\"").count(), 2, "{dom}");
}

#[test]
fn staff_may_neither_read_nor_write_status_reports() {
    let cluster = Cluster::new();
    // An admin node: only admins may read `_status` (offices send theirs up, never down).
    cluster.issue("hefei", true);
    let node = cluster.start(&{
        let mut c = cluster.config("hefei");
        c.admins = vec!["hefei".to_owned()];
        c.extra_toml = STATUS_TOML.to_owned();
        c
    });
    let admin = node.api();
    let path = record_path("_status", "hefei");
    wait_for("hefei's own report", SETTLE, || {
        let reply = admin
            .request("GET", &path, None)
            .map_err(|e| e.to_string())?;
        (reply.status == 200)
            .then_some(())
            .ok_or_else(|| format!("{} {}", reply.status, reply.text()))
    });
    let report: Value = admin.call("GET", &path, None).json();
    assert_eq!(report["node"], "hefei", "{report}");
    assert_eq!(report["interval_ms"], 1000, "{report}");
    // Not even an admin user writes it: only officesyncd does.
    let put = admin.call("PUT", &path, Some(b"{}"));
    assert_eq!(put.status, 403, "{}", put.text());
    for role in ["reader", "writer"] {
        let added = admin.call(
            "POST",
            "/v1/users",
            Some(format!(r#"{{"name": "li-{role}", "role": "{role}"}}"#).as_bytes()),
        );
        assert_eq!(added.status, 200, "{}", added.text());
        let token = added.json()["token"].as_str().expect("token").to_owned();
        let staff = admin.clone().with_token(Some(token));
        for (method, target) in [
            ("GET", path.as_str()),
            ("GET", "/v1/cluster"),
            ("GET", "/cluster"),
        ] {
            let reply = staff.call(method, target, None);
            assert_eq!(
                reply.status,
                403,
                "{role} {method} {target}: {}",
                reply.text()
            );
        }
        let put = staff.call("PUT", &path, Some(b"{}"));
        assert_eq!(put.status, 403, "{role} PUT: {}", put.text());
        let scan = staff.call("GET", "/v1/collections/_status/records", None);
        assert_eq!(scan.status, 403, "{role} scan: {}", scan.text());
    }
    // The admin sees the node itself in the province view.
    let view: Value = admin.call("GET", "/v1/cluster", None).json();
    assert_eq!(states(&view), [("hefei".to_owned(), "fresh".to_owned())]);
}

/// A `_status` version of `origin` at `counter` with key `key` (a report about `key`).
fn status_version(origin: &ReplicaId, counter: u64, key: &str) -> Version {
    Version {
        collection: "_status".into(),
        key: key.into(),
        dot: Dot::new(origin.clone(), counter),
        hlc: Hlc {
            ms: officesync_daemon::time::unix_ms_now(),
            logical: 0,
        },
        context: VersionVector::new(),
        value: Some(
            format!(r#"{{"node":"{key}","generated_ms":0,"interval_ms":1000}}"#).into_bytes(),
        ),
        author: Some(origin.node_name().to_owned()),
        signature: None,
    }
}

/// The general office's count of versions from `peer` refused for `reason`.
fn refused(hub: &TestNode, peer: &str, reason: &str) -> u64 {
    common::peer_entry(&hub.status(), peer)
        .and_then(|p| p["rejected_by_reason"][reason].as_u64())
        .unwrap_or(0)
}

#[test]
fn an_office_publishes_only_its_own_status_report() {
    let cluster = Cluster::new();
    cluster.issue(HUB, true);
    let mut hub_cfg = cluster.config(HUB);
    hub_cfg.admins = vec![HUB.to_owned()];
    let hub = cluster.start(&hub_cfg);
    // hefei, with a valid office certificate, speaks for itself through the rogue peer.
    let bundle = cluster.issue("hefei", false);
    let hefei = ReplicaId::new("hefei", 0x5eed).expect("id");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let session = |version: Version, what: &str, done: &mut dyn FnMut() -> Result<(), String>| {
        rt.block_on(async {
            let mut rogue = Rogue::connect(&bundle, hub_cfg.sync_listen, HUB)
                .await
                .expect("hefei's certificate is valid");
            rogue
                .hello("hefei", &hefei, Vec::new())
                .await
                .expect("hello");
            // Counter 1 is hefei's certificate in `_nodes`, published by `hello`.
            for m in one_version_stream(version) {
                rogue.send_message(&m).await.expect("send");
            }
            wait_for(what, SETTLE, done);
            rogue.shutdown().await;
        });
    };
    // A report about beijing-office, signed by hefei itself: refused and counted.
    session(
        status_version(&hefei, 2, "beijing-office"),
        "the general office to refuse hefei's report about beijing-office",
        &mut || match refused(&hub, "hefei", "signature") {
            0 => Err(format!("{}", hub.status()["peers"])),
            _ => Ok(()),
        },
    );
    let admin = hub.api();
    let stored = admin.call("GET", &record_path("_status", "beijing-office"), None);
    assert_eq!(
        stored.status,
        404,
        "the forged report was stored: {}",
        stored.text()
    );
    // The same office's report about itself is taken.
    session(
        status_version(&hefei, 2, "hefei"),
        "the general office to hold hefei's own report",
        &mut || {
            let reply = admin.call("GET", &record_path("_status", "hefei"), None);
            (reply.status == 200)
                .then_some(())
                .ok_or_else(|| format!("{} {}", reply.status, reply.text()))
        },
    );
    let view: Value = admin.call("GET", "/v1/cluster", None).json();
    let names: Vec<String> = states(&view).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, [HUB, "hefei"], "{view}");
}
