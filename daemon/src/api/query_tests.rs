//! Tests of `where` on the scan and of the conflicts listing, driving the router in-process.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use officesync_protocol::{Dot, Hlc, ReplicaId, Version, VersionVector};
use serde_json::Value;
use tower::ServiceExt;

use super::*;
use crate::replica::{now_ms, Replica, ReplicaOptions};
use crate::store::MemoryStore;

fn app() -> (Router, Replica) {
    let replica = Replica::open(Arc::new(MemoryStore::new()), ReplicaOptions::new("hefei"))
        .expect("open replica");
    (router(ApiState::new(replica.clone())), replica)
}

/// `uri` with the characters a URI may not hold raw (`"`, `<`, `>`) percent-encoded.
fn encoded(uri: &str) -> String {
    uri.replace('"', "%22")
        .replace('<', "%3C")
        .replace('>', "%3E")
}

async fn call(app: &Router, method: &str, uri: &str, body: &str) -> (StatusCode, Value) {
    let req = Request::builder()
        .method(method)
        .uri(encoded(uri))
        .body(Body::from(body.to_owned()))
        .expect("request");
    let resp = app.clone().oneshot(req).await.expect("infallible");
    let status = resp.status();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    let json = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&bytes)));
    (status, json)
}

/// The keys of one scan page with `query` (already percent-encoded where needed).
async fn keys(app: &Router, query: &str) -> Vec<String> {
    let (status, page) = call(
        app,
        "GET",
        &format!("/v1/collections/rivers/records?{query}"),
        "",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{query}: {page}");
    assert_eq!(page["next"], Value::Null, "{query}: one page");
    page["records"]
        .as_array()
        .expect("records")
        .iter()
        .map(|r| r["key"].as_str().expect("key").to_owned())
        .collect()
}

#[tokio::test]
async fn where_expressions_filter_the_scan_with_every_operator() {
    let (app, _replica) = app();
    for (key, value) in [
        ("nanfei", r#"{"river":"Nanfei","level_m":7.5}"#),
        ("huai", r#"{"river":"Huai","level_m":9}"#),
        ("pi", r#"{"river":"Pi","level_m":3.25}"#),
        ("note", "level_m=8 (not JSON)"),
        ("nolevel", r#"{"river":"Chao"}"#),
    ] {
        let (s, body) = call(
            &app,
            "PUT",
            &format!("/v1/collections/rivers/records/{key}"),
            value,
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{body}");
    }
    assert_eq!(keys(&app, "where=/level_m>=7.5").await, ["huai", "nanfei"]);
    assert_eq!(keys(&app, "where=/level_m>7.5").await, ["huai"]);
    assert_eq!(keys(&app, "where=/level_m<7.5").await, ["pi"]);
    assert_eq!(keys(&app, "where=/level_m<=7.50").await, ["nanfei", "pi"]);
    assert_eq!(keys(&app, "where=/level_m=9.0").await, ["huai"]);
    assert_eq!(keys(&app, "where=/level_m!=9").await, ["nanfei", "pi"]);
    assert_eq!(keys(&app, "where=/river=%22Nanfei%22").await, ["nanfei"]);
    assert_eq!(
        keys(&app, "where=/river~%22a%22").await,
        ["huai", "nanfei", "nolevel"]
    );
    // Repeated: all must hold; with a prefix too.
    assert_eq!(
        keys(&app, "where=/river~%22a%22&where=/level_m%3E=7.5").await,
        ["huai", "nanfei"]
    );
    assert_eq!(
        keys(&app, "prefix=n&where=/river~%22a%22").await,
        ["nanfei", "nolevel"]
    );
    // A limit counts matches.
    let (_, page) = call(
        &app,
        "GET",
        "/v1/collections/rivers/records?where=/level_m>0&limit=1",
        "",
    )
    .await;
    assert_eq!(page["records"][0]["key"], "huai");
    assert_eq!(page["next"], "huai");
}

#[tokio::test]
async fn a_malformed_where_is_a_400_naming_the_problem() {
    let (app, _replica) = app();
    for (query, names) in [
        ("where=/river=Nanfei", "not JSON"),
        ("where=river=1", "JSON pointer"),
        ("where=/river", "no operator"),
        ("where=/river!1", "operator"),
        ("where=/river~5", "JSON string"),
        ("where=%FF", "UTF-8"),
    ] {
        let (s, body) = call(
            &app,
            "GET",
            &format!("/v1/collections/rivers/records?{query}"),
            "",
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{query}: {body}");
        let error = body["error"].as_str().expect("error");
        assert!(error.contains(names), "{query}: {error}");
    }
    let many = vec!["where=/a=1"; officesync_protocol::query::MAX_EXPRS + 1].join("&");
    let (s, _) = call(
        &app,
        "GET",
        &format!("/v1/collections/rivers/records?{many}"),
        "",
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
}

fn concurrent(origin: &str, key: &str, value: &[u8]) -> Version {
    Version {
        collection: "situation".into(),
        key: key.into(),
        dot: Dot::new(ReplicaId::new(origin, 1).expect("valid id"), 1),
        hlc: Hlc {
            ms: now_ms() - 1000,
            logical: 0,
        },
        context: VersionVector::new(),
        value: Some(value.to_vec()),
        author: None,
        signature: None,
    }
}

#[tokio::test]
async fn conflicts_list_keys_with_siblings_and_a_write_resolves_them() {
    let (app, replica) = app();
    for key in ["a", "b", "c"] {
        let (s, _) = call(
            &app,
            "PUT",
            &format!("/v1/collections/situation/records/{key}"),
            "1",
        )
        .await;
        assert_eq!(s, StatusCode::OK);
    }
    replica
        .apply_remote(vec![concurrent("wuhu", "b", b"2")], Vec::new())
        .await
        .expect("apply");
    let (s, page) = call(&app, "GET", "/v1/collections/situation/conflicts", "").await;
    assert_eq!(s, StatusCode::OK, "{page}");
    let conflicts = page["conflicts"].as_array().expect("conflicts");
    assert_eq!(conflicts.len(), 1, "{page}");
    assert_eq!(conflicts[0]["key"], "b");
    let siblings = conflicts[0]["siblings"].as_array().expect("siblings");
    assert_eq!(siblings.len(), 2);
    for s in siblings {
        assert_eq!(s["value_base64"], Value::Null, "no values: {s}");
        assert_eq!(s["value_bytes"], 1);
    }
    assert_eq!(page["next"], Value::Null);
    // A write at this node supersedes both siblings.
    let (s, _) = call(&app, "PUT", "/v1/collections/situation/records/b", "2").await;
    assert_eq!(s, StatusCode::OK);
    let (_, page) = call(&app, "GET", "/v1/collections/situation/conflicts", "").await;
    assert_eq!(page["conflicts"], Value::Array(Vec::new()), "{page}");
    // Bad paging is refused.
    let (s, _) = call(
        &app,
        "GET",
        "/v1/collections/situation/conflicts?limit=0",
        "",
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = call(
        &app,
        "GET",
        "/v1/collections/situation/conflicts?where=/a=1",
        "",
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = call(&app, "GET", "/v1/collections/Bad!/conflicts", "").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
}
