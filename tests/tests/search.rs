//! Full-text search end to end with the real binaries: Chinese and English documents written at
//! the general office become searchable at an office (API and `officesync search`), a delete
//! drops a document from the results and an overwrite is found by its new words only; a
//! collection the node (or the user) may not read cannot be searched; after `kill -9` and a
//! restart the results are the same; a deleted, damaged or re-configured index is rebuilt from
//! the store; malformed queries are 400s naming the problem.

#[allow(dead_code)] // every suite uses part of the shared helpers
mod common;

use std::time::{Duration, Instant};

use common::{hub_config, office_config, wait_connected, wait_for, HEFEI, HUB};
use officesync_tests::http::encode;
use officesync_tests::{Cluster, OutputExt, TestConfig, TestNode};
use serde_json::Value;

/// Sessions come up within a few dial attempts.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Replication and indexing of a few records on a busy 2-core machine.
const INDEX_TIMEOUT: Duration = Duration::from_secs(60);

/// `config` with `[search] collections = [..]` (and the extra `lines` of that section).
fn with_search(mut config: TestConfig, collections: &[&str], lines: &str) -> TestConfig {
    let list: Vec<String> = collections.iter().map(|c| format!("{c:?}")).collect();
    config.extra_toml = format!("[search]\ncollections = [{}]\n{lines}", list.join(", "));
    config
}

/// `GET /v1/collections/{c}/search?q=..&limit=100` at `node`.
fn search(node: &TestNode, collection: &str, q: &str) -> officesync_tests::HttpReply {
    node.api().call(
        "GET",
        &format!(
            "/v1/collections/{}/search?q={}&limit=100",
            encode(collection, false),
            encode(q, false)
        ),
        None,
    )
}

/// The hits' `(key, version, snippet)` for `q`, or why there are none yet.
fn hits(
    node: &TestNode,
    collection: &str,
    q: &str,
) -> Result<Vec<(String, String, String)>, String> {
    let reply = search(node, collection, q);
    if reply.status != 200 {
        return Err(format!("HTTP {}: {}", reply.status, reply.text()));
    }
    let body = reply.json();
    let hits = body["hits"].as_array().expect("hits");
    assert_eq!(body["total"].as_u64(), Some(hits.len() as u64), "{body}");
    Ok(hits
        .iter()
        .map(|h| {
            let text = |f: &str| h[f].as_str().expect(f).to_owned();
            (text("key"), text("version"), text("snippet"))
        })
        .collect())
}

/// The sorted keys found for `q`.
fn keys(node: &TestNode, collection: &str, q: &str) -> Result<Vec<String>, String> {
    let mut keys: Vec<String> = hits(node, collection, q)?
        .into_iter()
        .map(|h| h.0)
        .collect();
    keys.sort();
    Ok(keys)
}

/// Waits until `q` finds exactly `want` in `collection` at `node`; returns how long it took.
fn wait_keys(node: &TestNode, collection: &str, q: &str, want: &[&str]) -> Duration {
    wait_for(
        &format!("{} to find {want:?} for {q:?}", node.name()),
        INDEX_TIMEOUT,
        || match keys(node, collection, q) {
            Ok(found) if found == want => Ok(()),
            Ok(found) => Err(format!("found {found:?}")),
            Err(e) => Err(e),
        },
    )
}

/// The documents of the suite: Chinese, English, mixed, JSON and plain text.
const DOCS: [(&str, &str); 4] = [
    (
        "notice/1",
        r#"{"title":"关于做好防汛抗旱工作的通知","body":"各地要加强值班值守，确保安全度汛。"}"#,
    ),
    (
        "notice/2",
        r#"{"title":"Flood warning for the Huai river","body":"Water levels are rising; evacuate low-lying areas."}"#,
    ),
    (
        "notice/3",
        "粮食收购进度报告 grain purchase progress report",
    ),
    (
        "notice/4",
        r#"{"title":"水利工程 dam inspection","tags":["水库","reservoir"],"level_m":7.5}"#,
    ),
];

/// What each query finds in [`DOCS`].
const QUERIES: [(&str, &[&str]); 7] = [
    ("防汛", &["notice/1"]),
    ("值班", &["notice/1"]),
    ("flood", &["notice/2"]),
    ("RIVER rising", &["notice/2"]),
    ("粮食", &["notice/3"]),
    ("水库 OR grain", &["notice/3", "notice/4"]),
    ("reservoir", &["notice/4"]),
];

fn write_docs(node: &TestNode) {
    for (key, value) in DOCS {
        node.put("documents", key, value.as_bytes());
    }
}

/// Every query of [`QUERIES`] with its hits (keys, versions, snippets), once all are found.
fn wait_all_queries(node: &TestNode) -> Vec<Vec<(String, String, String)>> {
    QUERIES
        .iter()
        .map(|(q, want)| {
            wait_keys(node, "documents", q, want);
            hits(node, "documents", q).expect("searchable")
        })
        .collect()
}

#[test]
fn documents_from_the_general_office_are_searchable_at_an_office_and_follow_deletes_and_overwrites()
{
    let cluster = Cluster::new();
    let hub_cfg = with_search(hub_config(&cluster), &["documents"], "");
    let hub = cluster.start(&hub_cfg);
    let hefei = cluster.start(&with_search(
        office_config(&cluster, HEFEI, hub_cfg.sync_listen),
        &["documents"],
        "",
    ));
    wait_connected(&[(&hefei, HUB), (&hub, HEFEI)], CONNECT_TIMEOUT);

    let start = Instant::now();
    write_docs(&hub);
    for (q, want) in QUERIES {
        wait_keys(&hefei, "documents", q, want);
    }
    eprintln!(
        "all written documents searchable at hefei {:?} after the writes",
        start.elapsed()
    );
    // The general office indexes its own writes too.
    wait_keys(&hub, "documents", "防汛", &["notice/1"]);

    // Snippets mark the matched words; the version is the record's.
    let found = hits(&hefei, "documents", "防汛").expect("search");
    assert!(found[0].2.contains("<mark>防汛</mark>"), "{found:?}");
    let record = hefei.get("documents", "notice/1").expect("replicated");
    assert_eq!(found[0].1, record.version);

    // The CLI: JSON and the text form.
    let out = hefei.cli(&["--json", "search", "documents", "flood"]);
    out.expect_success("search --json");
    let body: Value = serde_json::from_str(&out.stdout_text()).expect("search --json is JSON");
    assert_eq!(body["hits"][0]["key"], "notice/2", "{body}");
    assert_eq!(body["total"], 1);
    let out = hefei.cli(&["search", "documents", "防汛", "--limit", "5"]);
    out.expect_success("search");
    let text = out.stdout_text();
    assert!(text.starts_with("notice/1\t"), "{text}");
    assert!(text.contains("[防汛]"), "{text}");
    assert_eq!(text.lines().count(), 1, "{text}");

    // The browse page's search box: the same hits, ranked, linking to their records.
    let page = hefei.api().call(
        "GET",
        &format!("/browse/documents?q={}", encode("防汛", false)),
        None,
    );
    assert_eq!(page.status, 200, "{}", page.text());
    let html = page.text();
    assert!(html.contains("id=\"fulltext\""), "{html}");
    assert!(
        html.contains("class=\"hit\" data-key=\"notice/1\"")
            && html.contains("<mark>防汛</mark>")
            && html.contains("/browse/documents/record?key=notice%2F1"),
        "{html}"
    );
    let bad = hefei
        .api()
        .call("GET", "/browse/documents?q=%22unclosed", None);
    assert_eq!(bad.status, 400, "{}", bad.text());
    assert!(bad.text().contains("id=\"error\""), "{}", bad.text());

    // A delete at the general office drops the document at the office.
    assert!(hub.api().delete("documents", "notice/2").is_some());
    wait_keys(&hefei, "documents", "flood", &[]);

    // An overwrite is found by its new words and no longer by its old ones.
    hub.put(
        "documents",
        "notice/3",
        "水库调度方案 reservoir operation schedule".as_bytes(),
    );
    wait_keys(&hefei, "documents", "调度", &["notice/3"]);
    assert_eq!(keys(&hefei, "documents", "粮食"), Ok(vec![]));
    assert_eq!(keys(&hefei, "documents", "grain"), Ok(vec![]));
    assert_eq!(
        keys(&hefei, "documents", "reservoir"),
        Ok(vec!["notice/3".to_owned(), "notice/4".to_owned()])
    );
}

#[test]
fn a_collection_the_node_or_the_user_may_not_read_cannot_be_searched() {
    let cluster = Cluster::new();
    let hub_cfg = with_search(hub_config(&cluster), &["documents", "secret"], "");
    let hub = cluster.start(&hub_cfg);
    let hefei = cluster.start(&with_search(
        office_config(&cluster, HEFEI, hub_cfg.sync_listen),
        &["documents", "secret"],
        "",
    ));
    wait_connected(&[(&hefei, HUB), (&hub, HEFEI)], CONNECT_TIMEOUT);
    hub.cli(&["policy", "set", "secret", "--read", HUB, "--write", HUB])
        .expect_success("policy set");
    wait_for("hefei to receive the policy", INDEX_TIMEOUT, || match hefei
        .get("_policy", "collections/secret")
    {
        Some(_) => Ok(()),
        None => Err("not yet".into()),
    });
    hub.put("secret", "plan", "防汛 secret plan".as_bytes());
    hub.put("documents", "open", "防汛 open notice".as_bytes());
    wait_keys(&hub, "secret", "防汛", &["plan"]);
    wait_keys(&hefei, "documents", "防汛", &["open"]);

    let reply = search(&hefei, "secret", "防汛");
    assert_eq!(reply.status, 403, "{}", reply.text());
    assert!(reply.text().contains("may not read"), "{}", reply.text());
    let out = hefei.cli(&["search", "secret", "防汛"]);
    out.expect_code(6, "search of a collection the node may not read");

    // A user limited to other collections may not search this one either.
    let add = hefei.cli(&[
        "user",
        "add",
        "clerk",
        "--role",
        "reader",
        "--collections",
        "situation",
    ]);
    add.expect_success("user add");
    let clerk = hefei
        .api()
        .with_token(Some(add.stdout_text().trim().to_owned()));
    let reply = clerk.call("GET", "/v1/collections/documents/search?q=x", None);
    assert_eq!(reply.status, 403, "{}", reply.text());
    // Nor see the index in the status.
    let status = clerk.call("GET", "/v1/status", None).json();
    assert!(status.get("search").is_none(), "{status}");
    let status = hefei.status();
    assert_eq!(status["search"]["documents"]["state"], "ready", "{status}");
}

#[test]
fn after_kill_9_and_a_restart_the_results_are_the_same() {
    let cluster = Cluster::new();
    let config = with_search(cluster.config(HEFEI), &["documents"], "");
    let node = cluster.start(&config);
    write_docs(&node);
    let before = wait_all_queries(&node);

    // Changes acknowledged just before the kill: the index may not have committed them.
    node.put(
        "documents",
        "late/1",
        "防汛物资清单 supplies list".as_bytes(),
    );
    assert!(node.api().delete("documents", "notice/2").is_some());
    node.kill9();
    node.restart();

    wait_keys(&node, "documents", "防汛", &["late/1", "notice/1"]);
    wait_keys(&node, "documents", "flood", &[]);
    let after: Vec<_> = QUERIES
        .iter()
        .map(|(q, _)| hits(&node, "documents", q).expect("searchable"))
        .collect();
    for ((q, _), (was, is)) in QUERIES.iter().zip(before.iter().zip(&after)) {
        match *q {
            "防汛" => assert_eq!(is.len(), 2, "{is:?}"),
            "flood" | "RIVER rising" => assert!(is.is_empty(), "{q}: {is:?}"),
            _ => assert_eq!(was, is, "{q}"),
        }
    }
    // Once more, with nothing pending: identical.
    let again: Vec<_> = QUERIES
        .iter()
        .map(|(q, _)| hits(&node, "documents", q).expect("searchable"))
        .collect();
    node.kill9();
    node.restart();
    for ((q, _), was) in QUERIES.iter().zip(&again) {
        wait_for(
            &format!("{q:?} answered after restart"),
            INDEX_TIMEOUT,
            || hits(&node, "documents", q).map(drop),
        );
        assert_eq!(
            &hits(&node, "documents", q).expect("searchable"),
            was,
            "{q}"
        );
    }
    assert!(
        !node.log().contains("rebuilding the search index"),
        "a kill -9 made the index unusable:\n{}",
        node.log()
    );
}

#[test]
fn a_deleted_damaged_or_reconfigured_index_is_rebuilt_from_the_store() {
    let cluster = Cluster::new();
    let config = with_search(cluster.config(HEFEI), &["documents"], "");
    let node = cluster.start(&config);
    write_docs(&node);
    let before = wait_all_queries(&node);
    let index_dir = config.data_dir.join("search").join("documents");
    assert!(
        index_dir.join("meta.json").exists(),
        "{}",
        index_dir.display()
    );

    // Deleted while the daemon is stopped.
    node.stop();
    std::fs::remove_dir_all(config.data_dir.join("search")).expect("remove the index");
    node.restart();
    assert_eq!(wait_all_queries(&node), before);
    assert!(
        node.log().contains("building the search index"),
        "{}",
        node.log()
    );

    // Damaged: the daemon starts all the same, says so, and rebuilds.
    node.stop();
    std::fs::write(index_dir.join("meta.json"), b"{ damaged").expect("damage the index");
    node.restart();
    assert_eq!(wait_all_queries(&node), before);
    assert!(
        node.current_log().contains("rebuilding the search index"),
        "{}",
        node.current_log()
    );
    assert_eq!(node.status()["search"]["documents"]["rebuilds"], 1);

    // Other settings (only the titles): rebuilt, and the body's words are no longer found.
    node.stop();
    let titles = with_search(
        config.clone(),
        &["documents"],
        "[search.fields]\ndocuments = [\"/title\"]\n",
    );
    titles.write();
    node.restart();
    wait_keys(&node, "documents", "防汛", &["notice/1"]);
    wait_keys(&node, "documents", "值班", &[]);
    wait_keys(&node, "documents", "reservoir", &[]);
    assert!(
        node.current_log().contains("settings changed"),
        "{}",
        node.current_log()
    );
}

#[test]
fn malformed_queries_and_unindexed_collections_are_refused_with_the_reason() {
    let cluster = Cluster::new();
    let node = cluster.start(&with_search(cluster.config(HEFEI), &["documents"], ""));
    write_docs(&node);
    wait_keys(&node, "documents", "防汛", &["notice/1"]);
    let api = node.api();
    for (path, needle) in [
        ("/v1/collections/documents/search", "missing q"),
        ("/v1/collections/documents/search?q=", "q is empty"),
        (
            "/v1/collections/documents/search?q=%22unclosed",
            "invalid q",
        ),
        ("/v1/collections/documents/search?q=title:x", "invalid q"),
        (
            "/v1/collections/documents/search?q=x&limit=0",
            "invalid limit",
        ),
        (
            "/v1/collections/documents/search?q=x&limit=101",
            "invalid limit",
        ),
        (
            "/v1/collections/documents/search?q=x&sort=1",
            "unknown query parameter",
        ),
    ] {
        let reply = api.call("GET", path, None);
        assert_eq!(reply.status, 400, "{path}: {}", reply.text());
        let error = reply.json()["error"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(error.contains(needle), "{path}: {error}");
    }
    let reply = api.call("GET", "/v1/collections/situation/search?q=x", None);
    assert_eq!(reply.status, 404, "{}", reply.text());
    assert!(reply.text().contains("not searchable"), "{}", reply.text());

    let out = node.cli(&["search", "documents", "\"unclosed"]);
    out.expect_code(2, "a malformed query");
    assert!(
        out.stderr_text().contains("invalid q"),
        "{}",
        out.describe()
    );
    // A query that only has punctuation finds nothing, and is no error.
    assert_eq!(keys(&node, "documents", "，。"), Ok(vec![]));
}
