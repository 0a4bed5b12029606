//! Secondary indexes end to end with the real binaries: an office with `[indexes]` answers
//! every `where` operator with the same records as the general office without indexes, for
//! writes made at either office (replicated writes are indexed where they arrive), values
//! that are not JSON and deleted keys included; a malformed expression is a 400; restarts
//! with a changed declaration drop and build indexes (said in the log and in status), after
//! which queries still answer right.

#[allow(dead_code)] // every suite uses part of the shared helpers
mod common;

use std::time::Duration;

use common::{assert_converged, hub_config, office_config, HEFEI};
use officesync_tests::http::encode;
use officesync_tests::{Cluster, TestConfig, TestNode};

/// Small data sets converge within this on a busy 2-core machine.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(90);

/// Every operator, types mixed, several expressions, a prefix.
const QUERIES: &[(&str, &[&str])] = &[
    ("", &["/level_m=7.5"]),
    ("", &["/level_m=7.50"]),
    ("", &["/level_m!=7.5"]),
    ("", &["/level_m<7.5"]),
    ("", &["/level_m<=7.5"]),
    ("", &["/level_m>7.5"]),
    ("", &["/level_m>=4", "/level_m<9.2"]),
    ("", &["/river=\"Huai\""]),
    ("", &["/river>=\"Huai\""]),
    ("", &["/river~\"a\""]),
    ("", &["/river=\"Huai\"", "/level_m>5"]),
    ("", &["/river=null"]),
    ("", &["/river=true"]),
    ("", &["/level_m<\"z\""]),
    ("hefei/", &["/level_m>=0"]),
    ("", &["/gauge/level_m=7.5"]),
];

/// The keys of every page of a `where` query through the API, `limit` a page, following
/// `next`; the indexed order may differ from key order, so they are sorted.
fn query(node: &TestNode, prefix: &str, exprs: &[&str], limit: usize) -> Vec<String> {
    let mut keys = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..1000 {
        let mut path = format!(
            "/v1/collections/situation/records?limit={limit}&prefix={}",
            encode(prefix, false)
        );
        for e in exprs {
            path.push_str(&format!("&where={}", encode(e, false)));
        }
        if let Some(a) = &after {
            path.push_str(&format!("&after={}", encode(a, false)));
        }
        let reply = node.api().call("GET", &path, None);
        assert_eq!(reply.status, 200, "{path}: {}", reply.text());
        let page = reply.json();
        for r in page["records"].as_array().expect("records") {
            keys.push(r["key"].as_str().expect("key").to_owned());
        }
        match page["next"].as_str() {
            Some(n) => after = Some(n.to_owned()),
            None => {
                keys.sort();
                return keys;
            }
        }
    }
    panic!("{exprs:?}: the pages never end");
}

/// `config` with `[indexes] situation = pointers`.
fn with_indexes(config: &TestConfig, pointers: &[&str]) -> TestConfig {
    let mut config = config.clone();
    let list: Vec<String> = pointers.iter().map(|p| format!("{p:?}")).collect();
    config.extra_toml = format!("[indexes]\nsituation = [{}]\n", list.join(", "));
    config
}

/// The indexes `/v1/status` lists for `situation`.
fn status_indexes(node: &TestNode) -> Vec<String> {
    let status = node.status();
    status["collections"]["situation"]["indexes"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|p| p.as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The value of counter `name` in `/metrics`.
fn metric(node: &TestNode, name: &str) -> u64 {
    let text = node.api().call("GET", "/metrics", None).text();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0)
}

/// Checks every query of [`QUERIES`] at `indexed` against `plain`, with several page sizes.
fn assert_same_answers(indexed: &TestNode, plain: &TestNode) {
    for (prefix, exprs) in QUERIES {
        let want = query(plain, prefix, exprs, 100);
        for limit in [1, 2, 100] {
            assert_eq!(
                query(indexed, prefix, exprs, limit),
                want,
                "{exprs:?} (prefix {prefix:?}, limit {limit})"
            );
        }
    }
}

#[test]
fn indexed_queries_answer_as_scans_through_replication_and_rebuilds() {
    let cluster = Cluster::new();
    let hub_cfg = hub_config(&cluster);
    let hub = cluster.start(&hub_cfg);
    let hefei_cfg = with_indexes(
        &office_config(&cluster, HEFEI, hub_cfg.sync_listen),
        &["/river", "/level_m"],
    );
    let hefei = cluster.start(&hefei_cfg);
    // Half written at each office: the hub's arrive at hefei by replication.
    let records = [
        ("chao", r#"{"river":"Chao","level_m":4}"#),
        ("huai", r#"{"river":"Huai","level_m":9.2}"#),
        ("huai-2", r#"{"river":"Huai","level_m":7.50}"#),
        ("nanfei", r#"{"river":"Nanfei","level_m":7.5}"#),
        ("notes", "level_m >= 100, not JSON"),
        ("pi", r#"{"river":"Pi","gauge":{"level_m":7.5}}"#),
        ("nulls", r#"{"river":null,"level_m":"high"}"#),
        ("flag", r#"{"river":true,"level_m":[7.5]}"#),
        ("gone", r#"{"river":"Huai","level_m":8}"#),
        ("moved", r#"{"river":"Huai","level_m":1}"#),
    ];
    for (i, (key, value)) in records.iter().enumerate() {
        let (node, key) = if i % 2 == 0 {
            (&hub, format!("hub/{key}"))
        } else {
            (&hefei, format!("hefei/{key}"))
        };
        node.put("situation", &key, value.as_bytes());
    }
    hub.api().delete("situation", "hub/gone");
    hefei.put(
        "situation",
        "hefei/moved",
        br#"{"river":"Chao","level_m":2}"#,
    );
    assert_converged(&[&hub, &hefei], CONVERGE_TIMEOUT);
    assert_eq!(status_indexes(&hefei), ["/river", "/level_m"]);
    assert!(status_indexes(&hub).is_empty());

    assert_eq!(
        query(&hefei, "", &["/level_m>=7.5"], 100),
        ["hefei/huai", "hefei/nanfei", "hub/huai-2"]
    );
    assert_eq!(
        query(&hefei, "", &["/river=\"Huai\""], 1),
        ["hefei/huai", "hub/huai-2"]
    );
    let used = metric(&hefei, "officesync_indexed_scans_total");
    assert_same_answers(&hefei, &hub);
    assert!(
        metric(&hefei, "officesync_indexed_scans_total") > used,
        "the office answered from its indexes"
    );

    // A malformed expression is a 400 that names the problem, index or not.
    for node in [&hefei, &hub] {
        let reply = node.api().call(
            "GET",
            &format!(
                "/v1/collections/situation/records?where={}",
                encode("/river=Huai", false)
            ),
            None,
        );
        assert_eq!(reply.status, 400);
        let error = reply.json()["error"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(error.contains("not JSON"), "{error}");
    }

    // Restart with another declaration: /river dropped, /gauge/level_m built.
    hefei.stop();
    let changed = with_indexes(&hefei_cfg, &["/level_m", "/gauge/level_m"]);
    changed.write();
    hefei.restart();
    let log = hefei.current_log();
    assert!(
        log.contains("dropped the index no longer declared"),
        "the drop is logged: {log}"
    );
    assert!(
        log.contains("built the indexes newly declared"),
        "the build is logged: {log}"
    );
    assert_eq!(status_indexes(&hefei), ["/level_m", "/gauge/level_m"]);
    assert_same_answers(&hefei, &hub);

    // Writes after the rebuild are indexed as they arrive, from either office.
    hub.put(
        "situation",
        "hub/late",
        br#"{"river":"Huai","level_m":7.5}"#,
    );
    hefei.put(
        "situation",
        "hefei/nanfei",
        br#"{"river":"Nanfei","level_m":1}"#,
    );
    assert_converged(&[&hub, &hefei], CONVERGE_TIMEOUT);
    assert_same_answers(&hefei, &hub);
    assert_eq!(
        query(&hefei, "", &["/level_m=7.5"], 1),
        ["hub/huai-2", "hub/late"]
    );
}
