//! The Grafana dashboard `deploy/grafana/officesync-dashboard.json`: every PromQL expression in
//! it names only metrics a running officesyncd exports (read from a real node's `/metrics`),
//! and `promtool check rules` accepts every one (each written as a recording rule; skipped
//! with a message when promtool, Debian's `prometheus` package, is missing).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use officesync_tests::Cluster;
use serde_json::Value;

/// The dashboard file.
fn dashboard_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("deploy/grafana/officesync-dashboard.json")
}

/// Every `expr` string anywhere in `v`.
fn exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr", Value::String(e)) => out.push(e.clone()),
                    _ => exprs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| exprs(i, out)),
        _ => {}
    }
}

/// The `officesync_*` metric names in `expr`.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("officesync_") {
        let tail = &rest[at..];
        let len = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..len].to_owned());
        rest = &tail[len..];
    }
    names
}

/// Every series name a node exports: each family of `# TYPE`, histograms with their
/// `_bucket`, `_sum` and `_count`.
fn exported(metrics: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in metrics.lines() {
        let mut words = line.split_whitespace();
        if let (Some("#"), Some("TYPE"), Some(name), Some(kind)) =
            (words.next(), words.next(), words.next(), words.next())
        {
            names.insert(name.to_owned());
            if kind == "histogram" {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
        }
    }
    names
}

/// `exprs` as a Prometheus rules file, one recording rule each (JSON strings are YAML).
fn rules_file(exprs: &[String]) -> String {
    let mut out = String::from("groups:\n  - name: officesync-dashboard\n    rules:\n");
    for (i, e) in exprs.iter().enumerate() {
        out.push_str(&format!(
            "      - record: officesync_dashboard:expr_{i}\n        expr: {}\n",
            serde_json::to_string(e).expect("a JSON string")
        ));
    }
    out
}

/// `promtool check rules` on `text`: `None` when promtool is not installed, else whether it
/// accepted the file, and what it said.
fn promtool_check_rules(dir: &Path, name: &str, text: &str) -> Option<(bool, String)> {
    let file = dir.join(name);
    std::fs::write(&file, text).expect("write the rules file");
    let out = match Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(&file)
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            eprintln!("skipping promtool: {e} (install Debian's prometheus package for it)");
            return None;
        }
    };
    Some((
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ))
}

#[test]
fn every_dashboard_query_names_exported_metrics_and_promtool_accepts_it() {
    let text = std::fs::read_to_string(dashboard_path()).expect("the dashboard file");
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    assert!(dashboard["title"].is_string() && dashboard["panels"].is_array());
    let mut all = Vec::new();
    exprs(&dashboard["panels"], &mut all);
    assert!(all.len() >= 10, "only {} queries", all.len());

    // What a node exports, from a real one.
    let cluster = Cluster::new();
    let node = cluster.start_node("hefei");
    let reply = node.api().call("GET", "/metrics", None);
    assert_eq!(reply.status, 200);
    let exported = exported(&reply.text());
    for name in [
        "officesync_peer_lag_versions",
        "officesync_peer_staleness_seconds",
        "officesync_peer_versions_rejected_total",
        "officesync_peer_bad_input_total",
        "officesync_http_request_duration_seconds_bucket",
    ] {
        assert!(exported.contains(name), "{name} not exported: {exported:?}");
        assert!(
            all.iter()
                .any(|e| metric_names(e).iter().any(|n| n == name)),
            "no panel shows {name}"
        );
    }
    for e in &all {
        let names = metric_names(e);
        assert!(!names.is_empty(), "{e} names no officesync metric");
        for n in names {
            assert!(
                exported.contains(&n),
                "{e}: {n} is not exported by officesyncd"
            );
        }
    }

    let Some((ok, said)) =
        promtool_check_rules(cluster.dir(), "dashboard.rules.yml", &rules_file(&all))
    else {
        return;
    };
    assert!(ok, "promtool refused a dashboard query: {said}");
    // The check bites: a query with a syntax error is refused.
    let broken = rules_file(&["rate(officesync_uptime_seconds[5m]".to_owned()]);
    let (ok, said) =
        promtool_check_rules(cluster.dir(), "broken.rules.yml", &broken).expect("promtool ran");
    assert!(!ok, "promtool accepted a broken query: {said}");
}

#[test]
fn metric_names_are_found_in_expressions() {
    assert_eq!(
        metric_names("sum(rate(officesync_a_total{x=\"y\"}[5m])) / officesync_b"),
        ["officesync_a_total", "officesync_b"]
    );
}
