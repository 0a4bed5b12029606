//! Tests of the HTTP API, driving the router in-process with `tower::ServiceExt::oneshot`.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use axum::Router;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use http_body_util::BodyExt;
use officesync_protocol::{Dot, Hlc, ReplicaId, Version, VersionVector};
use serde_json::Value;
use tower::ServiceExt;

use super::*;
use crate::replica::{now_ms, Replica, ReplicaOptions};
use crate::store::MemoryStore;

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("no header {name}"))
            .to_str()
            .expect("ASCII header")
    }

    /// Asserts a JSON error with `status` and returns its message.
    fn error(&self, status: StatusCode) -> String {
        assert_eq!(
            self.status,
            status,
            "body: {}",
            String::from_utf8_lossy(&self.body)
        );
        assert_eq!(self.header("content-type"), "application/json");
        let v = self.json();
        v["error"].as_str().expect("error message").to_owned()
    }
}

fn memory_replica(opts: ReplicaOptions) -> Replica {
    Replica::open(Arc::new(MemoryStore::new()), opts).expect("open replica")
}

fn open(opts: ReplicaOptions) -> (Router, Replica) {
    let replica = memory_replica(opts);
    (router(ApiState::new(replica.clone())), replica)
}

/// A `general-office` app whose peer status comes from the returned (empty) table.
fn app_with_peers() -> (Router, PeerTable) {
    let replica = memory_replica(ReplicaOptions::new("general-office"));
    let table = PeerTable::new();
    let app = router(ApiState::new(replica).with_peers(Arc::new(table.clone())));
    (app, table)
}

fn app() -> (Router, Replica) {
    open(ReplicaOptions::new("hefei"))
}

async fn send(app: &Router, method: Method, uri: &str, body: impl Into<Body>) -> Reply {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .body(body.into())
        .expect("request");
    let resp = app.clone().oneshot(req).await.expect("infallible");
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes()
        .to_vec();
    Reply {
        status,
        headers,
        body,
    }
}

async fn get(app: &Router, uri: &str) -> Reply {
    send(app, Method::GET, uri, Body::empty()).await
}

async fn put(app: &Router, uri: &str, body: impl Into<Body>) -> Reply {
    send(app, Method::PUT, uri, body).await
}

async fn delete(app: &Router, uri: &str) -> Reply {
    send(app, Method::DELETE, uri, Body::empty()).await
}

async fn versions_held(replica: &Replica) -> u64 {
    replica
        .collections()
        .await
        .expect("collections")
        .iter()
        .map(|c| c.meta.versions)
        .sum()
}

/// A version from another office, concurrent with everything held here.
fn concurrent(key: &str, ms_ahead: u64, value: Option<&[u8]>) -> Version {
    let origin = ReplicaId::new("wuhu", 1).expect("valid id");
    Version {
        collection: "situation".into(),
        key: key.into(),
        dot: Dot::new(origin, 1),
        hlc: Hlc {
            ms: now_ms() + ms_ahead,
            logical: 0,
        },
        context: VersionVector::new(),
        value: value.map(<[u8]>::to_vec),
        author: None,
        signature: None,
    }
}

#[tokio::test]
async fn put_get_round_trip_with_binary_value() {
    let (app, replica) = app();
    let value: Vec<u8> = (0..=255u8).chain([0, 0xff, 0x80]).collect();
    let r = put(
        &app,
        "/v1/collections/situation/records/grain",
        value.clone(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let ack = r.json();
    let version = ack["version"].as_str().expect("version").to_owned();
    assert_eq!(version, format!("{}:1", replica.id()));
    assert!(ack["hlc"]["ms"].as_u64().expect("hlc.ms") > 0);
    assert!(ack["hlc"]["logical"].is_u64());

    let r = get(&app, "/v1/collections/situation/records/grain").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, value);
    assert_eq!(r.header("content-type"), "application/octet-stream");
    assert_eq!(r.header(VERSION_HEADER), version);
    assert_eq!(r.header(SIBLINGS_HEADER), "1");
    let hlc = format!("{}.{}", ack["hlc"]["ms"], ack["hlc"]["logical"]);
    assert_eq!(r.header(HLC_HEADER), hlc);

    // Overwrite, and an empty value is a value.
    let r = put(
        &app,
        "/v1/collections/situation/records/grain",
        Body::empty(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["version"], format!("{}:2", replica.id()));
    let r = get(&app, "/v1/collections/situation/records/grain").await;
    assert_eq!((r.status, r.body.len()), (StatusCode::OK, 0));
    assert_eq!(r.header(SIBLINGS_HEADER), "1");

    // HEAD answers like GET without a body.
    let r = send(
        &app,
        Method::HEAD,
        "/v1/collections/situation/records/grain",
        Body::empty(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.is_empty());
}

#[tokio::test]
async fn keys_with_slashes_and_percent_encoding() {
    let (app, _replica) = app();
    let cases = [
        ("hefei/grain", "hefei/grain"),
        ("hefei%2Frice", "hefei/rice"),
        ("a%20b/c%2fd", "a b/c/d"),
        ("%E5%90%88%E8%82%A5/%E7%B2%AE", "合肥/粮"),
        ("plus+sign", "plus+sign"),
        ("/leading", "/leading"),
        ("trailing/", "trailing/"),
        ("100%25", "100%"),
    ];
    for (i, (raw, key)) in cases.iter().enumerate() {
        let body = format!("v{i}");
        let r = put(
            &app,
            &format!("/v1/collections/situation/records/{raw}"),
            body.clone(),
        )
        .await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "{raw}: {}",
            String::from_utf8_lossy(&r.body)
        );
        // Read back under the fully encoded form of the decoded key.
        let encoded: String = key
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        let r = get(
            &app,
            &format!("/v1/collections/situation/records/{encoded}"),
        )
        .await;
        assert_eq!(
            (r.status, r.body),
            (StatusCode::OK, body.into_bytes()),
            "{key}"
        );
    }
    // The scan lists the decoded keys.
    let r = get(&app, "/v1/collections/situation/records").await;
    assert_eq!(r.status, StatusCode::OK);
    let listed: Vec<String> = r.json()["records"]
        .as_array()
        .expect("records")
        .iter()
        .map(|rec| rec["key"].as_str().expect("key").to_owned())
        .collect();
    let mut expected: Vec<String> = cases.iter().map(|(_, k)| (*k).to_owned()).collect();
    expected.sort();
    assert_eq!(listed, expected);
}

#[tokio::test]
async fn malformed_keys_are_refused() {
    let (app, replica) = app();
    for raw in ["bad%zz", "bad%", "bad%4", "%FF", "%E5%90", "%C0%AF"] {
        let uri = format!("/v1/collections/situation/records/{raw}");
        let msg = put(&app, &uri, "x").await.error(StatusCode::BAD_REQUEST);
        assert!(msg.contains("key"), "{raw}: {msg}");
        get(&app, &uri).await.error(StatusCode::BAD_REQUEST);
        delete(&app, &uri).await.error(StatusCode::BAD_REQUEST);
    }
    assert_eq!(versions_held(&replica).await, 0);
}

#[tokio::test]
async fn siblings_are_counted_and_listed() {
    let (app, replica) = app();
    let r = put(&app, "/v1/collections/situation/records/k", "local").await;
    assert_eq!(r.status, StatusCode::OK);
    let local_version = r.json()["version"].as_str().expect("version").to_owned();
    // A concurrent write from wuhu with a later clock wins.
    let remote = concurrent("k", 1000, Some(b"remote"));
    replica
        .apply_remote(vec![remote.clone()], vec![])
        .await
        .expect("apply");

    let r = get(&app, "/v1/collections/situation/records/k").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, b"remote");
    assert_eq!(r.header(SIBLINGS_HEADER), "2");
    assert_eq!(r.header(VERSION_HEADER), remote.dot.to_string());

    let r = get(&app, "/v1/collections/situation/records/k?all=true").await;
    assert_eq!(r.status, StatusCode::OK);
    let v = r.json();
    assert_reads_back::<officesync_api::SiblingsBody>(&v);
    let sibs = v["siblings"].as_array().expect("siblings");
    assert_eq!(sibs.len(), 2);
    assert_eq!(sibs[0]["version"], remote.dot.to_string());
    assert_eq!(sibs[0]["value_base64"], BASE64.encode(b"remote"));
    assert_eq!(sibs[0]["deleted"], false);
    assert_eq!(sibs[1]["version"], local_version);
    assert_eq!(sibs[1]["value_base64"], BASE64.encode(b"local"));
    assert!(sibs[1]["hlc"]["ms"].is_u64());

    // A scan reports the sibling count too.
    let r = get(&app, "/v1/collections/situation/records").await;
    assert_reads_back::<officesync_api::ScanPage>(&r.json());
    assert_eq!(r.json()["records"][0]["siblings"], 2);

    // A local write supersedes both.
    put(&app, "/v1/collections/situation/records/k", "merged").await;
    let r = get(&app, "/v1/collections/situation/records/k").await;
    assert_eq!(
        (r.body.as_slice(), r.header(SIBLINGS_HEADER)),
        (&b"merged"[..], "1")
    );
}

#[tokio::test]
async fn delete_then_get() {
    let (app, replica) = app();
    let uri = "/v1/collections/situation/records/hefei/grain";
    put(&app, uri, "100t").await;
    let r = delete(&app, uri).await;
    assert_eq!(r.status, StatusCode::OK);
    let tomb = r.json();
    assert_eq!(tomb["version"], format!("{}:2", replica.id()));
    assert!(tomb["hlc"]["ms"].is_u64());

    let msg = get(&app, uri).await.error(StatusCode::NOT_FOUND);
    assert!(msg.contains("deleted"), "{msg}");
    let r = get(&app, &format!("{uri}?all=true")).await;
    assert_eq!(r.status, StatusCode::OK);
    let v = r.json();
    assert_eq!(v["siblings"].as_array().expect("siblings").len(), 1);
    assert_eq!(v["siblings"][0]["deleted"], true);
    assert_eq!(v["siblings"][0]["value_base64"], Value::Null);
    assert_eq!(v["siblings"][0]["version"], tomb["version"]);
    assert_eq!(r.header(SIBLINGS_HEADER), "1");

    // Nothing live left: a second delete is a 404 and writes nothing.
    let before = versions_held(&replica).await;
    let local = replica
        .stats()
        .local_writes
        .load(std::sync::atomic::Ordering::Relaxed);
    delete(&app, uri).await.error(StatusCode::NOT_FOUND);
    assert_eq!(versions_held(&replica).await, before);
    assert_eq!(
        replica
            .stats()
            .local_writes
            .load(std::sync::atomic::Ordering::Relaxed),
        local
    );
    // So is deleting a key never written; ?all on it is a 404 too.
    delete(&app, "/v1/collections/situation/records/never")
        .await
        .error(StatusCode::NOT_FOUND);
    get(&app, "/v1/collections/situation/records/never?all=true")
        .await
        .error(StatusCode::NOT_FOUND);
    get(&app, "/v1/collections/nosuch/records/never")
        .await
        .error(StatusCode::NOT_FOUND);
    assert_eq!(versions_held(&replica).await, before);
    // The deleted key is not listed.
    let r = get(&app, "/v1/collections/situation/records").await;
    assert_eq!(r.json()["records"], Value::Array(vec![]));
}

#[tokio::test]
async fn delete_resolves_a_live_sibling_behind_a_tombstone() {
    let (app, replica) = app();
    let uri = "/v1/collections/situation/records/k";
    put(&app, uri, "local").await;
    // wuhu deleted the key concurrently, with a later clock: the tombstone wins.
    replica
        .apply_remote(vec![concurrent("k", 1000, None)], vec![])
        .await
        .expect("apply");
    get(&app, uri).await.error(StatusCode::NOT_FOUND);
    let r = get(&app, &format!("{uri}?all=true")).await;
    let v = r.json();
    assert_eq!(v["siblings"][0]["deleted"], true);
    assert_eq!(v["siblings"][1]["deleted"], false);
    // The live loser is still there to delete.
    let r = delete(&app, uri).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = get(&app, &format!("{uri}?all=true")).await;
    assert_eq!(r.json()["siblings"].as_array().expect("siblings").len(), 1);
}

#[tokio::test]
async fn scan_pages_with_prefix_after_and_limit() {
    let (app, _replica) = app();
    for i in 0..25 {
        let r = put(
            &app,
            &format!("/v1/collections/letters/records/hefei/{i:02}"),
            format!("v{i}"),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK);
    }
    for key in ["beijing/01", "hefeix", "a"] {
        put(
            &app,
            &format!("/v1/collections/letters/records/{key}"),
            "other",
        )
        .await;
    }
    delete(&app, "/v1/collections/letters/records/hefei/07").await;
    put(&app, "/v1/collections/letters/records/hefei/07", "again").await;
    delete(&app, "/v1/collections/letters/records/hefei/13").await;

    // Page through hefei/ 10 at a time.
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut uri = "/v1/collections/letters/records?prefix=hefei%2F&limit=10".to_owned();
        if let Some(a) = &after {
            uri.push_str(&format!("&after={}", a.replace('/', "%2F")));
        }
        let r = get(&app, &uri).await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "{}",
            String::from_utf8_lossy(&r.body)
        );
        let v = r.json();
        for rec in v["records"].as_array().expect("records") {
            let key = rec["key"].as_str().expect("key").to_owned();
            let value = BASE64
                .decode(rec["value_base64"].as_str().expect("value"))
                .expect("base64");
            let expect = if key == "hefei/07" {
                "again".to_owned()
            } else {
                format!("v{}", &key[6..].trim_start_matches('0'))
            };
            let expect = if expect == "v" {
                "v0".to_owned()
            } else {
                expect
            };
            assert_eq!(String::from_utf8(value).expect("utf8"), expect, "{key}");
            assert_eq!(rec["siblings"], 1);
            assert!(rec["version"].as_str().expect("version").contains(':'));
            seen.push(key);
        }
        pages += 1;
        match &v["next"] {
            Value::Null => break,
            Value::String(n) => after = Some(n.clone()),
            other => panic!("next is {other}"),
        }
        assert!(pages < 10, "paging does not end");
    }
    let expected: Vec<String> = (0..25)
        .filter(|i| *i != 13)
        .map(|i| format!("hefei/{i:02}"))
        .collect();
    assert_eq!(seen, expected);
    assert_eq!(pages, 3);

    // Default limit is 100; no prefix lists everything live in key order.
    let r = get(&app, "/v1/collections/letters/records").await;
    let v = r.json();
    let keys: Vec<&str> = v["records"]
        .as_array()
        .expect("records")
        .iter()
        .map(|r| r["key"].as_str().expect("key"))
        .collect();
    assert_eq!(keys.len(), 27);
    assert_eq!(keys[0], "a");
    assert_eq!(keys[1], "beijing/01");
    assert_eq!(keys[26], "hefeix");
    assert_eq!(v["next"], Value::Null);

    // after alone, and the biggest limit.
    let r = get(
        &app,
        "/v1/collections/letters/records?after=hefei%2F20&limit=1000",
    )
    .await;
    let v = r.json();
    let keys: Vec<&str> = v["records"]
        .as_array()
        .expect("records")
        .iter()
        .map(|r| r["key"].as_str().expect("key"))
        .collect();
    assert_eq!(
        keys,
        ["hefei/21", "hefei/22", "hefei/23", "hefei/24", "hefeix"]
    );
    // An unknown collection scans empty.
    let r = get(&app, "/v1/collections/nosuch/records?limit=1").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json(), serde_json::json!({"records": [], "next": null}));
}

#[tokio::test]
async fn bad_input_is_refused_with_json_and_nothing_written() {
    let (app, replica) = open(ReplicaOptions {
        max_value_bytes: 64,
        ..ReplicaOptions::new("hefei")
    });
    let long_key = "k".repeat(1025);
    let ok_key = "k".repeat(1024);
    let cases: Vec<(Method, String, Vec<u8>, StatusCode)> = vec![
        (
            Method::PUT,
            "/v1/collections/Bad!/records/k".into(),
            b"v".to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::PUT,
            "/v1/collections/Situation/records/k".into(),
            b"v".to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::PUT,
            "/v1/collections/a%2Fb/records/k".into(),
            b"v".to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::GET,
            "/v1/collections/Bad!/records/k".into(),
            vec![],
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::GET,
            "/v1/collections/Bad!/records".into(),
            vec![],
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::PUT,
            "/v1/collections/situation/records/".into(),
            b"v".to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::GET,
            "/v1/collections/situation/records/".into(),
            vec![],
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::DELETE,
            "/v1/collections/situation/records/".into(),
            vec![],
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::PUT,
            format!("/v1/collections/situation/records/{long_key}"),
            b"v".to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::PUT,
            "/v1/collections/situation/records/big".into(),
            vec![7; 65],
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            Method::PUT,
            "/v1/collections/situation/records/big".into(),
            vec![7; 100_000],
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            Method::PUT,
            "/v1/collections/situation/records/k?all=true".into(),
            b"v".to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::PUT,
            "/v1/collections/situation/records/k?x".into(),
            b"v".to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::DELETE,
            "/v1/collections/situation/records/k?force=1".into(),
            vec![],
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::GET,
            "/v1/collections/situation/records/k?all=maybe".into(),
            vec![],
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::GET,
            "/v1/collections/situation/records/k?al=true".into(),
            vec![],
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::GET,
            "/v1/collections/situation/records/k?all=true&all=true".into(),
            vec![],
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::GET,
            "/v1/collections/situation/records?limit=0".into(),
            vec![],
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::GET,
            "/v1/collections/situation/records?limit=abc".into(),
            vec![],
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::GET,
            "/v1/collections/situation/records?limit=5000".into(),
            vec![],
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::GET,
            "/v1/collections/situation/records?limit=-1".into(),
            vec![],
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::GET,
            "/v1/collections/situation/records?limit=".into(),
            vec![],
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::GET,
            "/v1/collections/situation/records?limit=99999999999999999999999".into(),
            vec![],
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::GET,
            "/v1/collections/situation/records?sort=desc".into(),
            vec![],
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::GET,
            "/v1/collections/situation/records?prefix=%zz".into(),
            vec![],
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::GET,
            "/v1/collections/situation/records?prefix=%FF".into(),
            vec![],
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::GET,
            format!("/v1/collections/situation/records?prefix={long_key}"),
            vec![],
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::GET,
            "/v1/status?verbose=1".into(),
            vec![],
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::GET,
            "/v1/collections?x=1".into(),
            vec![],
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::GET,
            "/v1/nothing".into(),
            vec![],
            StatusCode::NOT_FOUND,
        ),
        (
            Method::GET,
            "/index.html".into(),
            vec![],
            StatusCode::NOT_FOUND,
        ),
        (
            Method::GET,
            "/v1/collections/situation".into(),
            vec![],
            StatusCode::NOT_FOUND,
        ),
        (
            Method::POST,
            "/v1/collections/situation/records/k".into(),
            b"v".to_vec(),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            Method::PUT,
            "/v1/collections/situation/records".into(),
            b"v".to_vec(),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            Method::DELETE,
            "/health".into(),
            vec![],
            StatusCode::METHOD_NOT_ALLOWED,
        ),
    ];
    for (method, uri, body, status) in cases {
        let r = send(&app, method.clone(), &uri, body).await;
        let msg = r.error(status);
        assert!(!msg.is_empty(), "{method} {uri}");
    }
    assert_eq!(versions_held(&replica).await, 0, "nothing was written");
    assert!(replica.collections().await.expect("collections").is_empty());

    // The limits themselves are fine.
    let r = put(
        &app,
        &format!("/v1/collections/situation/records/{ok_key}"),
        vec![7; 64],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = get(&app, "/v1/collections/situation/records?limit=1000").await;
    assert_eq!(r.status, StatusCode::OK);
    let msg = put(&app, "/v1/collections/situation/records/big", vec![7; 65])
        .await
        .error(StatusCode::PAYLOAD_TOO_LARGE);
    assert!(msg.contains("64"), "{msg}");
}

/// `answer` read as the `officesync-api` type `T` (as the CLI reads it) and written again is
/// `answer`: no field is lost or renamed on the way.
fn assert_reads_back<T: serde::de::DeserializeOwned + serde::Serialize>(answer: &Value) {
    let typed: T = serde_json::from_value(answer.clone())
        .unwrap_or_else(|e| panic!("not a {} ({e}): {answer}", std::any::type_name::<T>()));
    assert_eq!(&serde_json::to_value(&typed).expect("serialises"), answer);
}

#[tokio::test]
async fn collections_status_and_health() {
    let (app, replica) = app();
    put(&app, "/v1/collections/situation/records/a", "1").await;
    put(&app, "/v1/collections/situation/records/b", "2").await;
    delete(&app, "/v1/collections/situation/records/b").await;
    put(&app, "/v1/collections/letters/records/x", "3").await;

    let r = get(&app, "/health").await;
    assert_eq!(
        (r.status, r.json()),
        (StatusCode::OK, serde_json::json!({"status": "ok"}))
    );

    let r = get(&app, "/v1/collections").await;
    assert_eq!(r.status, StatusCode::OK);
    let v = r.json();
    assert_reads_back::<officesync_api::CollectionsBody>(&v);
    let colls = v["collections"].as_array().expect("collections");
    assert_eq!(colls.len(), 2);
    let situation = colls
        .iter()
        .find(|c| c["name"] == "situation")
        .expect("situation");
    assert_eq!(
        (
            situation["records"].as_u64(),
            situation["keys"].as_u64(),
            situation["versions"].as_u64()
        ),
        (Some(1), Some(2), Some(2))
    );
    assert_eq!(situation["digest"].as_str().expect("digest").len(), 64);

    let r = get(&app, "/v1/status").await;
    assert_eq!(r.status, StatusCode::OK);
    let s = r.json();
    assert_reads_back::<officesync_api::StatusBody>(&s);
    assert_eq!(s["node"], "hefei");
    assert_eq!(s["replica"], replica.id().to_string());
    assert!(s["uptime_secs"].is_u64());
    assert_eq!(s["vv"]["situation"][replica.id().as_str()], 3);
    assert_eq!(s["vv"]["letters"][replica.id().as_str()], 1);
    assert_eq!(s["collections"]["situation"]["records"], 1);
    assert_eq!(s["collections"]["situation"]["digest"], situation["digest"]);
    assert_ne!(s["collections"]["letters"]["digest"], situation["digest"]);
    assert_eq!(s["peers"], Value::Array(vec![]));
    assert_eq!(s["store"]["size_bytes"], 0);
    assert_eq!(s["store"]["blob_files"], 0);
    assert_eq!(s["writes"]["local"], 4);
}

#[tokio::test]
async fn peers_come_from_the_peer_table() {
    let (app, table) = app_with_peers();
    let seen = UNIX_EPOCH + Duration::from_millis(1_714_552_200_123);
    table.update("hefei", |p| {
        p.connected = true;
        p.last_seen = Some(rfc3339(seen));
        p.lag_versions = 3;
        p.bytes_sent = 100;
        p.bytes_received = 50;
    });
    table.set(PeerStatus {
        name: "beijing-office".into(),
        ..PeerStatus::default()
    });
    let s = get(&app, "/v1/status").await.json();
    assert_reads_back::<officesync_api::StatusBody>(&s);
    let peers = s["peers"].as_array().expect("peers");
    let names: Vec<&str> = peers.iter().filter_map(|p| p["name"].as_str()).collect();
    assert_eq!(names, ["beijing-office", "hefei"]);
    let (beijing, hefei) = (&peers[0], &peers[1]);
    for (p, connected, last_seen, lag, sent, received) in [
        (beijing, false, Value::Null, 0, 0, 0),
        (hefei, true, "2024-05-01T08:30:00.123Z".into(), 3, 100, 50),
    ] {
        assert_eq!(p["connected"], connected, "{p}");
        assert_eq!(p["last_seen"], last_seen, "{p}");
        assert_eq!(p["lag_versions"], lag, "{p}");
        assert_eq!(p["bytes_sent"], sent, "{p}");
        assert_eq!(p["bytes_received"], received, "{p}");
        assert_eq!(p["address"], Value::Null, "{p}");
        assert_eq!(p["rtt_ms"], Value::Null, "{p}");
        assert_eq!(p["rejected"], 0, "{p}");
        assert_eq!(p["behind_versions"], 0, "{p}");
        assert_eq!(p["collections"], serde_json::json!([]), "{p}");
    }
    // The table stamps when the session came up and when the lag began.
    assert!(hefei["connected_since"].is_string(), "{hefei}");
    assert!(hefei["lag_since"].is_string(), "{hefei}");
    assert_eq!(beijing["lag_since"], Value::Null);
    assert_eq!(beijing["connected_since"], Value::Null);
    let m = String::from_utf8(get(&app, "/metrics").await.body).expect("utf8");
    assert!(
        m.contains("officesync_peer_lag_versions{peer=\"hefei\"} 3\n"),
        "{m}"
    );
    assert!(m.contains("officesync_peers_connected 1\n"), "{m}");
    table.remove("hefei");
    let s = get(&app, "/v1/status").await.json();
    assert_eq!(s["peers"].as_array().expect("peers").len(), 1);
}

#[test]
fn rfc3339_formats_utc() {
    assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    assert_eq!(
        rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
        "2000-02-29T00:00:00.000Z"
    );
    assert_eq!(
        rfc3339(UNIX_EPOCH + Duration::from_secs(4_102_444_799)),
        "2099-12-31T23:59:59.000Z"
    );
    assert_eq!(
        rfc3339(UNIX_EPOCH - Duration::from_secs(10)),
        "1970-01-01T00:00:00.000Z"
    );
}

#[tokio::test]
async fn metrics_are_prometheus_text() {
    let (app, _replica) = app();
    put(&app, "/v1/collections/situation/records/a", "1").await;
    put(&app, "/v1/collections/documents/records/p", "{}").await;
    get(&app, "/v1/collections/situation/records/a").await;
    get(&app, "/v1/collections/situation/records/nope").await;
    get(&app, "/nowhere").await;
    let r = get(&app, "/metrics").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r
        .header("content-type")
        .starts_with("text/plain; version=0.0.4"));
    let text = String::from_utf8(r.body).expect("utf8");

    let mut families = std::collections::HashMap::new();
    let mut samples = std::collections::HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect("HELP name text");
            assert!(!help.is_empty());
            assert!(name.starts_with("officesync_"), "{line}");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            assert!(
                families.insert(name.to_owned(), kind.to_owned()).is_none(),
                "duplicate {name}"
            );
            continue;
        }
        assert!(!line.starts_with('#') && !line.is_empty(), "{line:?}");
        let (series, value) = line.rsplit_once(' ').expect("name value");
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let name = match series.split_once('{') {
            Some((name, labels)) => {
                let labels = labels.strip_suffix('}').expect("closing brace");
                for pair in split_labels(labels) {
                    let (k, v) = pair.split_once('=').expect("label=value");
                    assert!(
                        k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                        "{line}"
                    );
                    assert!(
                        v.starts_with('"') && v.ends_with('"') && v.len() >= 2,
                        "{line}"
                    );
                }
                name
            }
            None => series,
        };
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{line}"
        );
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| families.get(*f).is_some_and(|k| k == "histogram"))
            })
            .unwrap_or(name);
        assert!(
            families.contains_key(family),
            "sample before its TYPE: {line}"
        );
        samples.insert(series.to_owned(), value);
    }
    for name in [
        "officesync_collection_records",
        "officesync_collection_keys",
        "officesync_collection_versions",
        "officesync_store_size_bytes",
        "officesync_local_writes_total",
        "officesync_remote_applied_total",
        "officesync_remote_rejected_total",
        "officesync_syncs_total",
        "officesync_synced_writes_total",
        "officesync_http_requests_total",
        "officesync_http_request_duration_seconds",
    ] {
        assert!(families.contains_key(name), "missing {name}");
    }
    assert_eq!(
        samples["officesync_collection_records{collection=\"situation\"}"],
        1.0
    );
    assert_eq!(
        samples["officesync_collection_records{collection=\"documents\"}"],
        1.0
    );
    assert_eq!(samples["officesync_local_writes_total"], 2.0);
    assert!(samples["officesync_syncs_total"] >= 1.0);
    let route = "/v1/collections/{c}/records/{*key}";
    assert_eq!(
        samples[&format!(
            "officesync_http_requests_total{{route=\"{route}\",method=\"PUT\",status=\"2xx\"}}"
        )],
        2.0
    );
    assert_eq!(
        samples[&format!(
            "officesync_http_requests_total{{route=\"{route}\",method=\"GET\",status=\"2xx\"}}"
        )],
        1.0
    );
    assert_eq!(
        samples[&format!(
            "officesync_http_requests_total{{route=\"{route}\",method=\"GET\",status=\"4xx\"}}"
        )],
        1.0
    );
    assert_eq!(
        samples
            ["officesync_http_requests_total{route=\"unmatched\",method=\"GET\",status=\"4xx\"}"],
        1.0
    );
    assert_eq!(
        samples[&format!("officesync_http_request_duration_seconds_count{{route=\"{route}\"}}")],
        4.0
    );
    assert_eq!(
        samples[&format!(
            "officesync_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}}"
        )],
        4.0
    );
}

/// Splits `a="x",b="y"` at the commas between labels (not inside quoted values).
fn split_labels(labels: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in labels.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(&labels[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&labels[start..]);
    out
}

#[tokio::test]
async fn closed_replica_answers_503() {
    let (app, replica) = app();
    replica.close().await.expect("close");
    let msg = put(&app, "/v1/collections/situation/records/k", "v")
        .await
        .error(StatusCode::SERVICE_UNAVAILABLE);
    assert!(msg.contains("shutting down"), "{msg}");
}

/// Sends one raw HTTP/1.1 request to `addr` and returns the whole answer as text.
fn raw_http(addr: std::net::SocketAddr, request: Vec<u8>) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    // The server may answer and close before reading an oversized body.
    let _ = stream.write_all(&request);
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn served_over_tcp() {
    let (app, _replica) = open(ReplicaOptions {
        max_value_bytes: 1024,
        ..ReplicaOptions::new("hefei")
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let put = b"PUT /v1/collections/situation/records/hefei%2Fgrain%20100 HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nConnection: close\r\n\r\n100t".to_vec();
    let answer = tokio::task::spawn_blocking(move || raw_http(addr, put))
        .await
        .expect("join");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let get = b"GET /v1/collections/situation/records/hefei/grain%20100 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec();
    let answer = tokio::task::spawn_blocking(move || raw_http(addr, get))
        .await
        .expect("join");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("\r\n\r\n100t"), "{answer}");
    assert!(answer.contains("officesync-siblings: 1\r\n"), "{answer}");

    // A declared length over the limit is refused with JSON before the body is read.
    let mut big = b"PUT /v1/collections/situation/records/big HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\nConnection: close\r\n\r\n".to_vec();
    big.extend_from_slice(&[b'x'; 4096]);
    let answer = tokio::task::spawn_blocking(move || raw_http(addr, big))
        .await
        .expect("join");
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("{\"error\":"), "{answer}");
    server.abort();
}

#[test]
fn peer_table_tracks_since_when() {
    let table = PeerTable::new();
    table.update("hefei", |p| p.connected = true);
    let p = table.get("hefei").expect("hefei");
    assert!(p.connected_since.is_some() && p.disconnected_since.is_none());
    assert!(p.lag_since.is_none() && p.behind_since.is_none());
    table.update("hefei", |p| {
        p.lag_versions = 4;
        p.behind_versions = 2;
        p.caught_up = true;
    });
    let lagging = table.get("hefei").expect("hefei");
    assert!(lagging.lag_since.is_some() && lagging.behind_since.is_some());
    // The start of the lag stays put while it lasts.
    std::thread::sleep(Duration::from_millis(5));
    table.update("hefei", |p| p.lag_versions = 9);
    assert_eq!(
        table.get("hefei").expect("hefei").lag_since,
        lagging.lag_since
    );
    table.update("hefei", |p| {
        p.connected = false;
        p.lag_versions = 0;
    });
    let p = table.get("hefei").expect("hefei");
    assert!(p.connected_since.is_none() && p.disconnected_since.is_some());
    assert!(!p.caught_up, "a peer away is not caught up");
    assert!(p.lag_since.is_none());
    assert!(!table.update_existing("nobody", |p| p.lag_versions = 1));
    assert!(table.get("nobody").is_none());
}

#[tokio::test]
async fn staleness_is_computed_when_read() {
    let (app, table) = app_with_peers();
    let as_of = now_ms() - 60_000;
    table.update("hefei", |p| {
        let c = p.collection_mut("situation");
        c.data_as_of_ms = Some(as_of);
        c.data_as_of = Some(rfc3339_ms(as_of));
        c.behind_versions = 2;
        p.behind_versions = 2;
    });
    let s = get(&app, "/v1/status").await.json();
    let c = &s["peers"][0]["collections"][0];
    assert_eq!(c["collection"], "situation");
    let staleness = c["staleness_ms"].as_u64().expect("staleness_ms");
    assert!((60_000..120_000).contains(&staleness), "{c}");
    assert_eq!(c["data_as_of"], rfc3339_ms(as_of));
    let m = String::from_utf8(get(&app, "/metrics").await.body).expect("utf8");
    let line = m
        .lines()
        .find(|l| {
            l.starts_with(
                "officesync_peer_staleness_seconds{peer=\"hefei\",collection=\"situation\"} ",
            )
        })
        .unwrap_or_else(|| panic!("no staleness sample in {m}"));
    let secs: f64 = line
        .rsplit_once(' ')
        .expect("value")
        .1
        .parse()
        .expect("number");
    assert!((60.0..120.0).contains(&secs), "{line}");
    assert!(
        m.contains("officesync_peer_behind_versions{peer=\"hefei\"} 2\n"),
        "{m}"
    );
    assert!(m.contains("officesync_peer_collection_behind_versions{peer=\"hefei\",collection=\"situation\"} 2\n"), "{m}");
}

#[tokio::test]
async fn ready_waits_for_dialling_and_an_open_store() {
    let (app, replica) = app();
    let r = get(&app, "/ready").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["ready"], true);

    let table = PeerTable::new();
    table.set_dialled(false);
    let app2 = router(ApiState::new(replica.clone()).with_peers(Arc::new(table.clone())));
    let msg = get(&app2, "/ready")
        .await
        .error(StatusCode::SERVICE_UNAVAILABLE);
    assert!(msg.contains("dialled"), "{msg}");
    table.set_dialled(true);
    assert_eq!(get(&app2, "/ready").await.status, StatusCode::OK);

    replica.close().await.expect("close");
    let r = get(&app, "/ready").await;
    let msg = r.error(StatusCode::SERVICE_UNAVAILABLE);
    assert!(msg.contains("store"), "{msg}");
    assert_eq!(r.json()["store"], "unavailable");
    // Liveness does not depend on the store.
    assert_eq!(get(&app, "/health").await.status, StatusCode::OK);
}

#[tokio::test]
async fn status_page_is_html_that_refreshes() {
    let (app, table) = app_with_peers();
    put(&app, "/v1/collections/situation/records/a", "1").await;
    table.update("hefei", |p| {
        p.connected = true;
        p.lag_versions = 1;
    });
    let r = get(&app, "/").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-type"), "text/html; charset=utf-8");
    let html = String::from_utf8(r.body).expect("utf8");
    assert!(
        html.contains("<meta http-equiv=\"refresh\" content=\"5\">"),
        "{html}"
    );
    assert!(
        html.contains("<span id=\"node\">general-office</span>"),
        "{html}"
    );
    assert!(
        html.contains("id=\"peer-hefei\" data-peer=\"hefei\""),
        "{html}"
    );
    assert!(html.contains("data-connected=\"yes\""), "{html}");
    assert!(html.contains("<tr class=\"collection\" data-collection=\"situation\"><td class=\"name\">situation</td><td class=\"records\">1</td>"), "{html}");
    get(&app, "/?x=1").await.error(StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn policy_writes_need_an_admin_and_a_valid_entry() {
    use crate::api::Access;
    use crate::policy::PolicyHandle;
    use officesync_protocol::policy::Policy;

    let replica = memory_replica(ReplicaOptions::new("general-office"));
    let (policy, _) = Policy::from_entries(
        ["general-office"],
        [(
            "collections/secret",
            br#"{"read": ["hefei"], "write": ["hefei"]}"#.as_slice(),
        )],
    );
    let fixed = PolicyHandle::fixed(policy);
    // An office: may not write _policy, may not read or write `secret`; other collections open.
    let office = router(ApiState::new(replica.clone()).with_access(Access::new(
        "beijing",
        false,
        fixed.clone(),
    )));
    let entry = "/v1/collections/_policy/records/default";
    put(&office, entry, r#"{"read":["*"]}"#)
        .await
        .error(StatusCode::FORBIDDEN);
    put(&office, "/v1/collections/secret/records/k", "v")
        .await
        .error(StatusCode::FORBIDDEN);
    get(&office, "/v1/collections/secret/records/k")
        .await
        .error(StatusCode::FORBIDDEN);
    get(&office, "/v1/collections/secret/records")
        .await
        .error(StatusCode::FORBIDDEN);
    delete(&office, "/v1/collections/secret/records/k")
        .await
        .error(StatusCode::FORBIDDEN);
    assert_eq!(
        put(&office, "/v1/collections/news/records/k", "v")
            .await
            .status,
        StatusCode::OK
    );
    // The admin: valid entries only, and nothing written for an invalid one.
    let admin = router(ApiState::new(replica.clone()).with_access(Access::new(
        "general-office",
        true,
        fixed,
    )));
    put(&admin, entry, "{nope")
        .await
        .error(StatusCode::BAD_REQUEST);
    put(&admin, "/v1/collections/_policy/records/bogus", "{}")
        .await
        .error(StatusCode::BAD_REQUEST);
    assert!(replica
        .get("_policy", "default")
        .await
        .expect("get")
        .is_none());
    let ok = put(
        &admin,
        entry,
        r#"{"read": ["*"], "write": ["general-office"]}"#,
    )
    .await;
    assert_eq!(
        ok.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&ok.body)
    );
    assert_eq!(
        delete(&admin, entry).await.status,
        StatusCode::OK,
        "an admin deletes entries"
    );
}

#[tokio::test]
async fn refusals_are_counted_by_reason_with_escaped_labels() {
    let (app, table) = app_with_peers();
    table.update("odd\"peer\\", |p| {
        p.rejected_by_reason.insert("relay_rule".into(), 2);
        p.rejected_by_reason.insert("clock_skew".into(), 1);
        p.rejected = 3;
        p.versions_received = 10;
        p.versions_applied = 7;
        p.rtt_ms = Some(25);
    });
    let m = String::from_utf8(get(&app, "/metrics").await.body).expect("utf8");
    for line in [
        "officesync_peer_versions_rejected_total{peer=\"odd\\\"peer\\\\\",reason=\"clock_skew\"} 1\n",
        "officesync_peer_versions_rejected_total{peer=\"odd\\\"peer\\\\\",reason=\"relay_rule\"} 2\n",
        "officesync_peer_versions_received_total{peer=\"odd\\\"peer\\\\\"} 10\n",
        "officesync_peer_versions_applied_total{peer=\"odd\\\"peer\\\\\"} 7\n",
        "officesync_peer_rtt_seconds{peer=\"odd\\\"peer\\\\\"} 0.025\n",
        "# TYPE officesync_peer_versions_rejected_total counter\n",
    ] {
        assert!(m.contains(line), "missing {line:?} in:\n{m}");
    }
    let s = get(&app, "/v1/status").await.json();
    assert_eq!(
        s["peers"][0]["rejected_by_reason"],
        serde_json::json!({"clock_skew": 1, "relay_rule": 2})
    );
    // The page escapes the name.
    let html = String::from_utf8(get(&app, "/").await.body).expect("utf8");
    assert!(html.contains("data-peer=\"odd&quot;peer\\\""), "{html}");
}
