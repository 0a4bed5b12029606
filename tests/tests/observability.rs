//! Observability end to end: `/v1/status`, `/metrics` (parsed with a real Prometheus
//! text-format parser, and checked by `promtool check metrics` when it is installed), `/ready`
//! and the `officesync status` table, against a real three-office cluster in which one office
//! is cut off: the hub sees that office's lag and staleness grow while the other office stays
//! in step, and both return to zero (lag) or near it (staleness) once the link heals.

#[allow(dead_code)] // every suite uses part of the shared helpers
mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{assert_converged, peer_entry, try_status, wait_for, Star, BEIJING, HEFEI, HUB};
use officesync_tests::fault_proxy::Direction;
use officesync_tests::{test_seed, TestNode};
use serde_json::Value;

/// Sessions come up within a few dial attempts.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);
/// Generous bound for anything that happens "soon" on a busy 2-core machine.
const TIMEOUT: Duration = Duration::from_secs(90);
/// The collection written.
const COLL: &str = "situation";
/// Writes made at beijing while hefei is cut off.
const WRITES_WHILE_CUT: u64 = 25;
/// Staleness the hub must report for the cut office before the link heals (above the 1 s
/// heartbeat that keeps a live peer's "data as of" current).
const STALE_WHILE_CUT_MS: u64 = 4_000;

/// `GET /metrics` on `node` as text.
fn metrics_text(node: &TestNode) -> String {
    let reply = node.api().call("GET", "/metrics", None);
    assert_eq!(reply.status, 200, "GET /metrics on {}", node.name());
    assert!(
        reply
            .header("content-type")
            .is_some_and(|t| t.starts_with("text/plain; version=0.0.4")),
        "content type {:?}",
        reply.header("content-type")
    );
    reply.text()
}

/// Series key: `name{a="x",b="y"}` with labels sorted.
fn series(name: &str, labels: &[(&str, &str)]) -> String {
    let mut labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    labels.sort();
    format!("{name}{{{}}}", labels.join(","))
}

/// Parses an exposition with `prometheus-parse` and checks what that lax parser does not:
/// every family has HELP and TYPE before its samples, every histogram has cumulative
/// buckets ending in `+Inf` equal to its `_count`. Returns counters and gauges by series.
fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .expect("a Prometheus text exposition");
    let mut typed = BTreeMap::new();
    let mut helped = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(
                typed.insert(name.to_owned(), kind.to_owned()).is_none(),
                "two TYPE lines for {name}"
            );
        } else if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split_once(' ').expect("HELP name text").0;
            assert!(
                helped.insert(name.to_owned(), ()).is_none(),
                "two HELP for {name}"
            );
        } else if !line.is_empty() {
            let name = line.split(['{', ' ']).next().expect("sample name");
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| {
                    name.strip_suffix(s)
                        .filter(|f| typed.get(*f).is_some_and(|k| k == "histogram"))
                })
                .unwrap_or(name);
            assert!(typed.contains_key(family), "sample before its TYPE: {line}");
            assert!(helped.contains_key(family), "sample without HELP: {line}");
        }
    }
    let mut out = BTreeMap::new();
    for s in &scrape.samples {
        let family = ["_sum", "_count"]
            .iter()
            .find_map(|x| {
                s.metric
                    .strip_suffix(x)
                    .filter(|f| typed.get(*f).is_some_and(|k| k == "histogram"))
            })
            .unwrap_or(&s.metric);
        assert!(scrape.docs.contains_key(family), "{} has no HELP", s.metric);
        let mut labels: Vec<(String, String)> = s
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        labels.sort();
        let pairs: Vec<(&str, &str)> = labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        match &s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => {
                out.insert(series(&s.metric, &pairs), *v);
            }
            prometheus_parse::Value::Histogram(buckets) => {
                assert!(!buckets.is_empty(), "{} without buckets", s.metric);
                assert!(
                    buckets
                        .windows(2)
                        .all(|w| w[0].less_than < w[1].less_than && w[0].count <= w[1].count),
                    "{} buckets not cumulative: {buckets:?}",
                    s.metric
                );
                let last = buckets.last().expect("checked above");
                assert!(last.less_than.is_infinite(), "{} lacks +Inf", s.metric);
                let count = text
                    .lines()
                    .find(|l| {
                        l.starts_with(&format!("{}_count", s.metric))
                            && pairs.iter().all(|(k, v)| l.contains(&format!("{k}={v:?}")))
                    })
                    .and_then(|l| l.rsplit_once(' '))
                    .and_then(|(_, v)| v.parse::<f64>().ok())
                    .unwrap_or_else(|| panic!("{} has no _count", s.metric));
                assert_eq!(last.count, count, "{} +Inf bucket vs _count", s.metric);
            }
            prometheus_parse::Value::Summary(_) => panic!("no summaries are exported"),
        }
    }
    out
}

/// Runs `promtool check metrics` on `text` when promtool is installed (Debian `prometheus`).
fn promtool_check(text: &str) {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            eprintln!("promtool not run ({e}): install Debian's prometheus package for it");
            return;
        }
    };
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool output");
    assert!(
        out.status.success(),
        "promtool check metrics failed: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The hub's view of `peer` in `status`, and of its `COLL` entry.
fn views<'a>(status: &'a Value, peer: &str) -> Option<(&'a Value, &'a Value)> {
    let p = peer_entry(status, peer)?;
    let c = p["collections"]
        .as_array()?
        .iter()
        .find(|c| c["collection"] == COLL)?;
    Some((p, c))
}

/// The `officesync status` text of `node`.
fn cli_status(node: &TestNode) -> String {
    let out = node.cli(&["status"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

#[test]
fn a_cut_office_shows_growing_lag_and_staleness_until_the_link_heals() {
    let seed = test_seed("a_cut_office_shows_growing_lag_and_staleness_until_the_link_heals");
    let star = Star::with_cut_link(seed, CONNECT_TIMEOUT);
    for node in star.all() {
        let ready = node.api().call("GET", "/ready", None);
        assert_eq!(ready.status, 200, "{}: {}", node.name(), ready.text());
        assert_eq!(ready.json()["ready"], true);
    }

    // Every office writes once, so the hub holds a version from each and finishes a catch-up.
    for node in star.all() {
        node.api()
            .put(COLL, &format!("{}/hello", node.name()), b"1");
    }
    assert_converged(&star.all(), TIMEOUT);
    wait_for("the hub to see hefei in step", TIMEOUT, || {
        let s = try_status(&star.hub).ok_or("no status")?;
        let (p, c) = views(&s, HEFEI).ok_or_else(|| format!("no {COLL} view: {s}"))?;
        let ok = p["lag_versions"] == 0
            && p["behind_versions"] == 0
            && p["caught_up"] == true
            && p["caught_up_at"].is_string()
            && c["data_as_of"].is_string()
            && c["newest_version_at"].is_string();
        ok.then_some(()).ok_or_else(|| format!("hefei: {p}"))
    });
    let before = try_status(&star.hub).expect("status");
    let (p, c) = views(&before, HEFEI).expect("hefei view");
    assert!(p["address"].is_string() && p["conn"].is_u64(), "{p}");
    assert!(p["versions_received"].as_u64() >= Some(1), "{p}");
    assert!(p["versions_applied"].as_u64() >= Some(1), "{p}");
    let newest_before = c["newest_version_ms"].as_u64().expect("newest_version_ms");

    // Cut hefei off; beijing keeps writing.
    star.proxy().cut(Direction::Both);
    // Within a few missed heartbeats (1 s apart here) the hub shows hefei silent, still
    // connected: the session itself only times out after six.
    wait_for("the hub to show hefei silent", TIMEOUT, || {
        let s = try_status(&star.hub).ok_or("no status")?;
        let p = peer_entry(&s, HEFEI).ok_or("no hefei")?.clone();
        let silent = p["connected"] == true && p["silent_ms"].as_u64() >= Some(2_000);
        silent.then_some(()).ok_or_else(|| p.to_string())
    });
    let peers = star.hub.cli(&["peers"]);
    let table = String::from_utf8_lossy(&peers.stdout);
    assert!(table.contains("SILENT for"), "officesync peers:\n{table}");
    for i in 0..WRITES_WHILE_CUT {
        star.beijing
            .api()
            .put(COLL, &format!("{BEIJING}/while-cut/{i:03}"), b"{}");
    }
    // The hub knows hefei lacks every one of them, since when, and that its copy of hefei's
    // data grows stale; beijing is in step.
    wait_for("the hub to report hefei behind and stale", TIMEOUT, || {
        let s = try_status(&star.hub).ok_or("no status")?;
        let (p, c) = views(&s, HEFEI).ok_or("no hefei view")?;
        let (b, _) = views(&s, BEIJING).ok_or("no beijing view")?;
        let stale = c["staleness_ms"].as_u64().unwrap_or(0);
        // The cut office, on its side, sees its copy of the hub's data age the same way.
        let at_hefei = try_status(&star.hefei).ok_or("no status at hefei")?;
        let (_, hub_view) = views(&at_hefei, HUB).ok_or("no hub view at hefei")?;
        let stale_at_hefei = hub_view["staleness_ms"].as_u64().unwrap_or(0);
        let ok = stale_at_hefei >= STALE_WHILE_CUT_MS
            && p["lag_versions"].as_u64() >= Some(WRITES_WHILE_CUT)
            && c["lag_versions"].as_u64() >= Some(WRITES_WHILE_CUT)
            && p["lag_since"].is_string()
            && stale >= STALE_WHILE_CUT_MS
            && b["lag_versions"] == 0;
        ok.then_some(())
            .ok_or_else(|| format!("hefei: {p}\nbeijing: {b}\nhub seen from hefei: {hub_view}"))
    });
    let text = metrics_text(&star.hub);
    promtool_check(&text);
    let m = parse_metrics(&text);
    let hefei = [("peer", HEFEI)];
    let hefei_coll = [("peer", HEFEI), ("collection", COLL)];
    assert!(
        m[&series("officesync_peer_lag_versions", &hefei)] >= WRITES_WHILE_CUT as f64,
        "{text}"
    );
    assert!(
        m[&series("officesync_peer_collection_lag_versions", &hefei_coll)]
            >= WRITES_WHILE_CUT as f64
    );
    let stale_cut = m[&series("officesync_peer_staleness_seconds", &hefei_coll)];
    assert!(
        stale_cut >= STALE_WHILE_CUT_MS as f64 / 1000.0,
        "{stale_cut}"
    );
    assert!(m.contains_key(&series(
        "officesync_peer_lag_since_timestamp_seconds",
        &hefei
    )));
    assert_eq!(
        m[&series("officesync_peer_lag_versions", &[("peer", BEIJING)])],
        0.0
    );
    assert!(m[&series("officesync_peer_sent_bytes_total", &[("peer", BEIJING)])] > 0.0);
    assert!(
        m[&series(
            "officesync_peer_versions_applied_total",
            &[("peer", BEIJING)]
        )] >= 1.0
    );
    // Staleness keeps growing while the link stays down.
    wait_for("staleness to keep growing", TIMEOUT, || {
        let m = parse_metrics(&metrics_text(&star.hub));
        let now = m[&series("officesync_peer_staleness_seconds", &hefei_coll)];
        (now >= stale_cut + 1.0)
            .then_some(())
            .ok_or_else(|| format!("{now} after {stale_cut}"))
    });
    // The operator's table names the office that is behind, by how much and since when.
    let table = cli_status(&star.hub);
    let row = table
        .lines()
        .find(|l| l.trim_start().starts_with(HEFEI) && l.contains(" ago"))
        .unwrap_or_else(|| panic!("no hefei row in:\n{table}"));
    assert!(
        row.contains(&WRITES_WHILE_CUT.to_string()) || row.contains("NO"),
        "{table}"
    );
    eprintln!("officesync status on the hub while hefei is cut off:\n{table}");

    // Heal: hefei catches up; lag returns to zero and the hub's copy is fresh again.
    star.proxy().heal();
    assert_converged(&star.all(), TIMEOUT);
    wait_for("the hub to report hefei back in step", TIMEOUT, || {
        let s = try_status(&star.hub).ok_or("no status")?;
        let (p, c) = views(&s, HEFEI).ok_or("no hefei view")?;
        let stale = c["staleness_ms"].as_u64().unwrap_or(u64::MAX);
        let ok = p["connected"] == true
            && p["lag_versions"] == 0
            && c["lag_versions"] == 0
            && p["behind_versions"] == 0
            && p["lag_since"].is_null()
            && p["caught_up"] == true
            && stale < STALE_WHILE_CUT_MS;
        ok.then_some(()).ok_or_else(|| format!("hefei: {p}"))
    });
    wait_for("the metrics to show hefei back in step", TIMEOUT, || {
        let text = metrics_text(&star.hub);
        let m = parse_metrics(&text);
        let lag = m[&series("officesync_peer_lag_versions", &hefei)];
        let stale = m[&series("officesync_peer_staleness_seconds", &hefei_coll)];
        let up = m[&series("officesync_peer_connected", &hefei)];
        let caught_up = m[&series("officesync_peer_catch_up_complete", &hefei)];
        (lag == 0.0 && up == 1.0 && caught_up == 1.0 && stale < stale_cut)
            .then_some(())
            .ok_or_else(|| format!("lag {lag} stale {stale} up {up} caught up {caught_up}"))
    });
    promtool_check(&metrics_text(&star.hub));

    // The newest version the hub holds from hefei did not move (hefei wrote nothing), and
    // hefei itself sees the hub's data as fresh, with the relayed writes applied.
    let after = try_status(&star.hub).expect("status");
    let (_, c) = views(&after, HEFEI).expect("hefei view");
    assert_eq!(c["newest_version_ms"].as_u64(), Some(newest_before));
    let s = try_status(&star.hefei).expect("hefei status");
    let (p, _) = views(&s, HUB).expect("hub view at hefei");
    assert!(
        p["versions_applied"].as_u64() >= Some(WRITES_WHILE_CUT),
        "{p}"
    );
    assert_eq!(p["behind_versions"], 0, "{p}");

    // Logs: one span per peer session naming the peer and the connection; lifecycle at info,
    // and no line per record written or relayed.
    let log = star.hub.log();
    assert!(
        log.lines()
            .any(|l| l.contains(&format!("peer{{peer={HEFEI} conn="))
                && l.contains("session established")),
        "no session span for hefei in the hub's log:\n{log}"
    );
    for node in star.all() {
        let log = node.log();
        assert!(
            !log.contains("while-cut"),
            "{} logs records:\n{log}",
            node.name()
        );
    }

    // The same with `--log-format json` (here through OFFICESYNC_LOG_FORMAT): one JSON object
    // per line, the session's lines carrying its span with the peer and the connection id.
    star.hefei.set_env("OFFICESYNC_LOG_FORMAT", Some("json"));
    star.hefei.restart();
    common::wait_connected(&[(&star.hefei, HUB), (&star.hub, HEFEI)], TIMEOUT);
    wait_for("a JSON session line at hefei", TIMEOUT, || {
        let log = star.hefei.current_log();
        let lines: Vec<Value> = log
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).map_err(|e| format!("not JSON ({e}): {l}")))
            .collect::<Result<_, _>>()?;
        let established = lines.iter().any(|l| {
            l["fields"]["message"] == "session established"
                && l["span"]["name"] == "peer"
                && l["span"]["peer"] == HUB
                && l["span"]["conn"].is_u64()
        });
        established
            .then_some(())
            .ok_or_else(|| format!("no session span yet:\n{log}"))
    });
}

#[test]
fn ready_waits_for_the_first_dial_and_health_does_not() {
    let cluster = officesync_tests::Cluster::new();
    // An office whose hub does not exist: it is alive at once, ready once the dial failed.
    let unreachable = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    let addr = unreachable.local_addr().expect("addr");
    let office = cluster.start(&common::office_config(&cluster, HEFEI, addr));
    assert_eq!(office.api().call("GET", "/health", None).status, 200);
    let took = wait_for("the office to be ready", TIMEOUT, || {
        let r = office.api().call("GET", "/ready", None);
        let body = r.json();
        match r.status {
            200 => {
                assert_eq!(body["ready"], true);
                assert_eq!(body["store"], "open");
                Ok(())
            }
            503 => {
                assert!(body["error"].is_string(), "{body}");
                Err(body.to_string())
            }
            other => panic!("GET /ready answered {other}: {body}"),
        }
    });
    eprintln!("ready {took:?} after start with an unreachable hub");
    let s = office.status();
    let p = peer_entry(&s, HUB).expect("the configured hub is listed");
    assert_eq!(p["connected"], false);
    drop(unreachable);
}
