//! Tests of `?history=N` on a record and of the change feed (`/changes`, as a page and as an
//! event stream), driving the router in-process.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

use super::*;
use crate::replica::{Replica, ReplicaOptions};
use crate::store::MemoryStore;

fn app(history: usize) -> (Router, Replica) {
    let mut opts = ReplicaOptions::new("hefei");
    opts.history = history;
    let replica = Replica::open(Arc::new(MemoryStore::new()), opts).expect("open replica");
    (router(ApiState::new(replica.clone())), replica)
}

async fn call(app: &Router, method: Method, uri: &str, body: &[u8]) -> (StatusCode, Value) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .body(Body::from(body.to_vec()))
        .expect("request");
    let resp = app.clone().oneshot(req).await.expect("infallible");
    let status = resp.status();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, json)
}

#[tokio::test]
async fn history_lists_superseded_versions_newest_first_and_says_whose_it_is() {
    let (app, _) = app(2);
    let uri = "/v1/collections/situation/records/hefei%2Fgrain";
    for value in [&b"100t"[..], b"90t", b"80t", b"70t"] {
        assert_eq!(call(&app, Method::PUT, uri, value).await.0, StatusCode::OK);
    }
    assert_eq!(call(&app, Method::DELETE, uri, b"").await.0, StatusCode::OK);
    let (status, body) = call(&app, Method::GET, &format!("{uri}?history=10"), b"").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let versions = body["versions"].as_array().expect("versions");
    // The tombstone (current), then the two superseded versions kept.
    assert_eq!(versions.len(), 3, "{body}");
    assert_eq!(versions[0]["deleted"], true);
    assert_eq!(versions[0]["superseded"], false);
    assert_eq!(versions[1]["value_base64"], "NzB0"); // "70t"
    assert_eq!(versions[2]["value_base64"], "ODB0"); // "80t"
    assert!(versions[1..].iter().all(|v| v["superseded"] == true));
    assert!(versions
        .iter()
        .all(|v| v["author"].is_string() && v["hlc"]["ms"].is_u64()));
    assert_eq!(body["key"], "hefei/grain");
    assert_eq!(body["kept_per_key"], 2);
    assert!(body["note"]
        .as_str()
        .expect("note")
        .contains("this node holds"));
    // The limit, bad values, and other parameters alongside.
    let (_, one) = call(&app, Method::GET, &format!("{uri}?history=1"), b"").await;
    assert_eq!(one["versions"].as_array().map(Vec::len), Some(1));
    for bad in [
        "history=0",
        "history=133",
        "history=x",
        "history=2&all=true",
    ] {
        let (status, body) = call(&app, Method::GET, &format!("{uri}?{bad}"), b"").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }
    let (status, _) = call(
        &app,
        Method::GET,
        "/v1/collections/situation/records/never?history=5",
        b"",
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// An app with change streams bounded by `limits`, told to stop through the returned sender.
fn feed_app(limits: FeedLimits) -> (Router, Replica, tokio::sync::watch::Sender<bool>) {
    let replica =
        Replica::open(Arc::new(MemoryStore::new()), ReplicaOptions::new("hefei")).expect("open");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let state = ApiState::new(replica.clone()).with_feeds(Feeds::new(limits, stopped));
    (router(state), replica, stop)
}

/// Opens an event stream; its status and body (not read yet).
async fn open_stream(app: &Router, uri: &str, last: Option<u64>) -> (StatusCode, Body) {
    let mut req = Request::builder()
        .uri(uri)
        .header("accept", "text/event-stream");
    if let Some(id) = last {
        req = req.header("last-event-id", id.to_string());
    }
    let resp = app
        .clone()
        .oneshot(req.body(Body::empty()).expect("request"))
        .await
        .expect("infallible");
    (resp.status(), resp.into_body())
}

/// One parsed event: `(id, event, data)`, or a comment as `(None, ":", text)`.
type Sse = (Option<u64>, String, String);

/// Reads events from `body` until `stop` says enough or 10 s pass.
async fn read_events(body: &mut Body, stop: impl Fn(&[Sse]) -> bool) -> Vec<Sse> {
    let mut text = String::new();
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while !stop(&events) {
        let frame = tokio::time::timeout_at(deadline, body.frame())
            .await
            .unwrap_or_else(|_| panic!("no more events within 10 s after {events:?}"));
        let Some(frame) = frame else { break };
        let frame = frame.expect("frame");
        if let Some(data) = frame.data_ref() {
            text.push_str(std::str::from_utf8(data).expect("UTF-8"));
        }
        while let Some(at) = text.find("\n\n") {
            let block: String = text.drain(..at + 2).collect();
            let mut e: Sse = (None, String::new(), String::new());
            for line in block.lines().filter(|l| !l.is_empty()) {
                let (field, value) = line.split_once(':').unwrap_or((line, ""));
                let value = value.strip_prefix(' ').unwrap_or(value).to_owned();
                match field {
                    "" => e.1 = ":".into(),
                    "id" => e.0 = value.parse().ok(),
                    "event" => e.1 = value,
                    "data" => e.2 = value,
                    _ => {}
                }
            }
            events.push(e);
        }
    }
    events
}

fn changes_of(events: &[Sse]) -> Vec<Value> {
    events
        .iter()
        .filter(|e| e.1.is_empty() && !e.2.is_empty())
        .map(|e| serde_json::from_str(&e.2).expect("JSON change"))
        .collect()
}

#[tokio::test]
async fn a_page_lists_changes_in_apply_order_with_their_cursor() {
    let (app, replica, _stop) = feed_app(FeedLimits::default());
    for key in ["a/1", "b/1", "a/2"] {
        replica
            .write_as("situation", key, Some(b"v".to_vec()), "li@hefei".into())
            .await
            .expect("write");
    }
    replica
        .write("situation", "a/1", None)
        .await
        .expect("delete");
    let (status, page) = call(&app, Method::GET, "/v1/collections/situation/changes", b"").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let changes = page["changes"].as_array().expect("changes");
    let keys: Vec<&str> = changes
        .iter()
        .map(|c| c["key"].as_str().expect("key"))
        .collect();
    assert_eq!(keys, ["a/1", "b/1", "a/2", "a/1"]);
    assert_eq!(changes[0]["author"], "li@hefei");
    assert_eq!(changes[3]["deleted"], true);
    let cursors: Vec<u64> = changes
        .iter()
        .map(|c| c["cursor"].as_u64().expect("cursor"))
        .collect();
    assert!(cursors.windows(2).all(|w| w[0] < w[1]), "{cursors:?}");
    // Paging with `limit` and `next`, and the prefix filter.
    let (_, first) = call(
        &app,
        Method::GET,
        "/v1/collections/situation/changes?limit=2",
        b"",
    )
    .await;
    let next = first["next"].as_u64().expect("next");
    let (_, rest) = call(
        &app,
        Method::GET,
        &format!("/v1/collections/situation/changes?since={next}"),
        b"",
    )
    .await;
    assert_eq!(rest["changes"].as_array().map(Vec::len), Some(2), "{rest}");
    let (_, only_a) = call(
        &app,
        Method::GET,
        "/v1/collections/situation/changes?prefix=a%2F",
        b"",
    )
    .await;
    assert_eq!(
        only_a["changes"].as_array().map(Vec::len),
        Some(3),
        "{only_a}"
    );
    for bad in ["since=x", "limit=0", "limit=1001", "other=1"] {
        let (status, body) = call(
            &app,
            Method::GET,
            &format!("/v1/collections/situation/changes?{bad}"),
            b"",
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }
}

#[tokio::test]
async fn a_stream_sends_changes_as_events_keeps_alive_and_resumes_from_last_event_id() {
    let limits = FeedLimits {
        keep_alive: std::time::Duration::from_millis(50),
        ..FeedLimits::default()
    };
    let (app, replica, _stop) = feed_app(limits);
    let (status, mut body) = open_stream(&app, "/v1/collections/situation/changes", None).await;
    assert_eq!(status, StatusCode::OK);
    for key in ["k1", "k2"] {
        replica
            .write("situation", key, Some(b"v".to_vec()))
            .await
            .expect("write");
    }
    let events = read_events(&mut body, |e| {
        changes_of(e).len() >= 2 && e.iter().any(|e| e.1 == ":")
    })
    .await;
    let changes = changes_of(&events);
    assert_eq!(changes[0]["key"], "k1");
    let ids: Vec<u64> = events
        .iter()
        .filter(|e| !e.2.is_empty())
        .filter_map(|e| e.0)
        .collect();
    assert_eq!(
        ids,
        vec![
            changes[0]["cursor"].as_u64().expect("c"),
            changes[1]["cursor"].as_u64().expect("c")
        ]
    );
    // Resuming after the first change gives the second one first.
    let first = ids[0];
    let (_, mut again) = open_stream(&app, "/v1/collections/situation/changes", Some(first)).await;
    let events = read_events(&mut again, |e| !changes_of(e).is_empty()).await;
    assert_eq!(changes_of(&events)[0]["key"], "k2");
}

#[tokio::test]
async fn a_client_that_takes_nothing_is_cut_off_after_what_was_queued() {
    let limits = FeedLimits {
        buffer: 4,
        cutoff: std::time::Duration::from_millis(200),
        ..FeedLimits::default()
    };
    let (app, replica, _stop) = feed_app(limits);
    let (_, mut body) = open_stream(&app, "/v1/collections/situation/changes", None).await;
    for i in 0..20 {
        replica
            .write("situation", &format!("k{i:02}"), Some(b"v".to_vec()))
            .await
            .expect("write");
    }
    // Nothing is read meanwhile: the buffer fills and the producer gives up.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let text = {
            let req = Request::builder()
                .uri("/metrics")
                .body(Body::empty())
                .expect("req");
            let resp = app.clone().oneshot(req).await.expect("infallible");
            let bytes = resp.into_body().collect().await.expect("body").to_bytes();
            String::from_utf8(bytes.to_vec()).expect("text")
        };
        if text.contains("officesync_feeds_cutoff_total 1") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no cutoff:\n{text}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let events = read_events(&mut body, |e| e.iter().any(|e| e.1 == "cutoff")).await;
    let changes = changes_of(&events);
    assert_eq!(
        changes.len(),
        4,
        "the buffer, then the final event: {events:?}"
    );
    let end = events.last().expect("final");
    assert_eq!(end.1, "cutoff");
    let end: Value = serde_json::from_str(&end.2).expect("JSON");
    assert_eq!(end["resume_from"], changes[3]["cursor"]);
    assert!(end["reason"].as_str().expect("reason").contains("too slow"));
    // And the stream ends there.
    assert!(body.frame().await.is_none());
}

#[tokio::test]
async fn streams_past_the_cap_get_503_and_a_stopping_daemon_ends_them_with_closing() {
    let limits = FeedLimits {
        max_feeds: 1,
        ..FeedLimits::default()
    };
    let (app, _replica, stop) = feed_app(limits);
    let (status, mut body) = open_stream(&app, "/v1/collections/situation/changes", None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, refused) = open_stream(&app, "/v1/collections/situation/changes", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let refused = refused.collect().await.expect("body").to_bytes();
    let refused: Value = serde_json::from_slice(&refused).expect("JSON error");
    assert!(refused["error"]
        .as_str()
        .expect("error")
        .contains("max_feeds"));
    // A page is not a stream: still served.
    let (status, _) = call(&app, Method::GET, "/v1/collections/situation/changes", b"").await;
    assert_eq!(status, StatusCode::OK);
    stop.send(true).expect("stop");
    let events = read_events(&mut body, |e| e.iter().any(|e| e.1 == "closing")).await;
    let end: Value = serde_json::from_str(&events.last().expect("final").2).expect("JSON");
    assert!(end["reason"].as_str().expect("reason").contains("stopping"));
}
