//! Staff access over every route: no token, a wrong token, and a reader, writer and admin
//! token, driven in-process; plus Basic credentials, rotation and removal, and the slowdown of
//! repeated failures.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use axum::Router;
use base64::Engine as _;
use http_body_util::BodyExt;
use tower::ServiceExt;

use super::*;
use crate::auth::{Role, Users};
use crate::policy::PolicyHandle;
use crate::replica::{Replica, ReplicaOptions};
use crate::store::MemoryStore;

/// An admin node `gov` with token authentication; its users' tokens by role.
struct Fixture {
    app: Router,
    users: Users,
    admin: String,
    writer: String,
    reader: String,
    _dir: tempfile::TempDir,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let (users, _) = Users::open(dir.path(), 1).expect("users");
    let admin = crate::config::read_admin_token(dir.path()).expect("admin.token");
    let writer = users
        .add("wang", Role::Writer, Some(vec!["situation".into()]), 1)
        .expect("writer");
    let reader = users
        .add("li", Role::Reader, Some(vec!["situation".into()]), 1)
        .expect("reader");
    let replica =
        Replica::open(Arc::new(MemoryStore::new()), ReplicaOptions::new("gov")).expect("replica");
    let access = Access::new("gov", true, PolicyHandle::fixed(Default::default()));
    let log = crate::audit::AuditLog::open(&dir.path().join("audit"), Default::default())
        .expect("audit log");
    let state = ApiState::new(replica)
        .with_access(access)
        .with_gate(Gate::tokens(users.clone()))
        .with_journal(Journal::start(log).expect("journal"));
    Fixture {
        app: router(state),
        users,
        admin,
        writer,
        reader,
        _dir: dir,
    }
}

async fn call(
    app: &Router,
    method: Method,
    uri: &str,
    auth: Option<&str>,
    body: &str,
) -> (StatusCode, String) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(auth) = auth {
        req = req.header("authorization", auth);
    }
    let req = req.body(Body::from(body.to_owned())).expect("request");
    let resp = app.clone().oneshot(req).await.expect("infallible");
    let status = resp.status();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// One route and what each credential gets.
struct Case {
    method: Method,
    uri: &'static str,
    body: &'static str,
    /// Expected for: reader, writer, admin.
    expect: [u16; 3],
}

fn case(method: Method, uri: &'static str, body: &'static str, expect: [u16; 3]) -> Case {
    Case {
        method,
        uri,
        body,
        expect,
    }
}

#[tokio::test]
async fn every_route_checks_the_token_and_the_role() {
    let f = fixture();
    // A record to read.
    let (s, body) = call(
        &f.app,
        Method::PUT,
        "/v1/collections/situation/records/seed",
        Some(&bearer(&f.admin)),
        "x",
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let cases = [
        case(Method::GET, "/v1/status", "", [200, 200, 200]),
        case(Method::GET, "/v1/collections", "", [200, 200, 200]),
        case(Method::GET, "/v1/whoami", "", [200, 200, 200]),
        case(Method::GET, "/metrics", "", [200, 200, 200]),
        case(Method::GET, "/v1/openapi.json", "", [200, 200, 200]),
        case(Method::GET, "/", "", [200, 200, 200]),
        case(
            Method::GET,
            "/v1/collections/situation/records/seed",
            "",
            [200, 200, 200],
        ),
        case(
            Method::GET,
            "/v1/collections/situation/records/seed?all=true",
            "",
            [200, 200, 200],
        ),
        case(
            Method::GET,
            "/v1/collections/situation/records",
            "",
            [200, 200, 200],
        ),
        case(
            Method::GET,
            "/v1/collections/situation/records?where=/a=1",
            "",
            [200, 200, 200],
        ),
        case(
            Method::GET,
            "/v1/collections/documents/records?where=/a=1",
            "",
            [403, 403, 200],
        ),
        case(
            Method::GET,
            "/v1/collections/situation/conflicts",
            "",
            [200, 200, 200],
        ),
        case(
            Method::GET,
            "/v1/collections/documents/conflicts",
            "",
            [403, 403, 200],
        ),
        case(
            Method::GET,
            "/v1/collections/documents/records/seed",
            "",
            [403, 403, 404],
        ),
        case(
            Method::GET,
            "/v1/collections/documents/records",
            "",
            [403, 403, 200],
        ),
        case(
            Method::PUT,
            "/v1/collections/situation/records/k",
            "v",
            [403, 200, 200],
        ),
        case(
            Method::PUT,
            "/v1/collections/documents/records/k",
            "v",
            [403, 403, 200],
        ),
        case(
            Method::DELETE,
            "/v1/collections/situation/records/seed",
            "",
            [403, 200, 404],
        ),
        case(
            Method::PUT,
            "/v1/collections/_policy/records/revoked/x",
            "{}",
            [403, 403, 200],
        ),
        case(Method::POST, "/v1/verify", "", [403, 403, 404]),
        case(Method::GET, "/v1/users", "", [403, 403, 200]),
        case(
            Method::POST,
            "/v1/users",
            r#"{"name":"zhao","role":"reader"}"#,
            [403, 403, 200],
        ),
        case(Method::POST, "/v1/users/zhao/token", "", [403, 403, 200]),
        case(Method::DELETE, "/v1/users/zhao", "", [403, 403, 200]),
        case(Method::GET, "/v1/audit", "", [403, 403, 200]),
        case(Method::GET, "/v1/audit?limit=5", "", [403, 403, 200]),
        case(Method::GET, "/v1/audit/verify", "", [403, 403, 200]),
        // This node runs without its key here: the bundle routes answer an admin 404.
        case(Method::GET, "/v1/backup", "", [403, 403, 404]),
        case(Method::GET, "/v1/cluster", "", [403, 403, 200]),
        case(Method::GET, "/cluster", "", [403, 403, 200]),
        case(Method::GET, "/v1/bundle/want", "", [403, 403, 404]),
        case(Method::POST, "/v1/bundle/export", "{}", [403, 403, 404]),
        case(Method::POST, "/v1/bundle/import", "x", [403, 403, 404]),
        case(Method::GET, "/v1/no-such-route", "", [404, 404, 404]),
    ];
    for c in &cases {
        for auth in [
            None,
            Some(bearer("ost_wrong")),
            Some("Digest abc".to_owned()),
        ] {
            let (s, body) = call(&f.app, c.method.clone(), c.uri, auth.as_deref(), c.body).await;
            assert_eq!(
                s,
                StatusCode::UNAUTHORIZED,
                "{} {} with {auth:?}: {body}",
                c.method,
                c.uri
            );
            let v: serde_json::Value = serde_json::from_str(&body).expect("JSON error");
            assert!(v["error"].is_string(), "{body}");
        }
        for (i, token) in [&f.reader, &f.writer, &f.admin].into_iter().enumerate() {
            let (s, body) = call(
                &f.app,
                c.method.clone(),
                c.uri,
                Some(&bearer(token)),
                c.body,
            )
            .await;
            assert_eq!(
                s.as_u16(),
                c.expect[i],
                "{} {} as {}: {body}",
                c.method,
                c.uri,
                ["reader", "writer", "admin"][i]
            );
            if s == StatusCode::FORBIDDEN {
                let v: serde_json::Value = serde_json::from_str(&body).expect("JSON error");
                assert!(
                    v["error"].as_str().is_some_and(|e| e.contains("may not")),
                    "{body}"
                );
            }
        }
    }
    // Probes need no token.
    for uri in ["/health", "/ready"] {
        let (s, body) = call(&f.app, Method::GET, uri, None, "").await;
        assert!(
            s == StatusCode::OK || s == StatusCode::SERVICE_UNAVAILABLE,
            "{uri}: {s} {body}"
        );
    }
}

#[tokio::test]
async fn forbidden_writes_change_nothing() {
    let f = fixture();
    let uri = "/v1/collections/situation/records/k";
    let (s, _) = call(&f.app, Method::PUT, uri, Some(&bearer(&f.reader)), "reader").await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = call(&f.app, Method::PUT, uri, None, "nobody").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = call(&f.app, Method::GET, uri, Some(&bearer(&f.admin)), "").await;
    assert_eq!(s, StatusCode::NOT_FOUND, "a refused write was stored");
}

#[tokio::test]
async fn basic_credentials_open_the_status_page() {
    let f = fixture();
    let basic = |user: &str, token: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{token}"))
        )
    };
    let (s, body) = call(&f.app, Method::GET, "/", Some(&basic("li", &f.reader)), "").await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert!(
        body.contains("li"),
        "the page does not say who is signed in"
    );
    let (s, _) = call(
        &f.app,
        Method::GET,
        "/",
        Some(&basic("wang", &f.reader)),
        "",
    )
    .await;
    assert_eq!(
        s,
        StatusCode::UNAUTHORIZED,
        "a token under another user's name"
    );
    let req = Request::builder()
        .uri("/")
        .body(Body::empty())
        .expect("request");
    let resp = f.app.clone().oneshot(req).await.expect("infallible");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let challenge = resp
        .headers()
        .get("www-authenticate")
        .expect("a Basic challenge");
    assert!(challenge
        .to_str()
        .expect("ASCII")
        .starts_with("Basic realm="));
}

#[tokio::test]
async fn rotation_and_removal_take_effect_at_once() {
    let f = fixture();
    let status = "/v1/status";
    let (s, body) = call(
        &f.app,
        Method::POST,
        "/v1/users/li/token",
        Some(&bearer(&f.admin)),
        "",
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let new = v["token"].as_str().expect("token").to_owned();
    let (s, _) = call(&f.app, Method::GET, status, Some(&bearer(&f.reader)), "").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "the old token still works");
    let (s, _) = call(&f.app, Method::GET, status, Some(&bearer(&new)), "").await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = call(
        &f.app,
        Method::DELETE,
        "/v1/users/li",
        Some(&bearer(&f.admin)),
        "",
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = call(&f.app, Method::GET, status, Some(&bearer(&new)), "").await;
    assert_eq!(
        s,
        StatusCode::UNAUTHORIZED,
        "a removed user's token still works"
    );
    // The listing never shows a token or its hash.
    let (_, list) = call(
        &f.app,
        Method::GET,
        "/v1/users",
        Some(&bearer(&f.admin)),
        "",
    )
    .await;
    assert!(
        !list.contains(&f.writer) && !list.contains("sha256"),
        "{list}"
    );
    assert_eq!(f.users.list().len(), 2);
}

#[tokio::test]
async fn repeated_failures_get_429_with_retry_after() {
    let f = fixture();
    for _ in 0..crate::auth::MAX_FAILURES {
        let (s, _) = call(
            &f.app,
            Method::GET,
            "/v1/status",
            Some("Bearer ost_guess"),
            "",
        )
        .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
    }
    let req = Request::builder()
        .uri("/v1/status")
        .header("authorization", bearer(&f.admin))
        .body(Body::empty())
        .expect("request");
    let resp = f.app.clone().oneshot(req).await.expect("infallible");
    assert_eq!(
        resp.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "even a right token waits"
    );
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .expect("ASCII")
        .parse()
        .expect("seconds");
    assert!((1..=60).contains(&retry), "{retry}");
}

#[tokio::test]
async fn auth_none_lets_everyone_in_as_admin() {
    let replica =
        Replica::open(Arc::new(MemoryStore::new()), ReplicaOptions::new("gov")).expect("replica");
    let app = router(ApiState::new(replica));
    let (s, body) = call(&app, Method::GET, "/v1/whoami", None, "").await;
    assert_eq!(s, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(v["auth"], "none");
    assert_eq!(v["role"], "admin");
    let (s, _) = call(
        &app,
        Method::PUT,
        "/v1/collections/situation/records/k",
        None,
        "v",
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = call(&app, Method::GET, "/v1/users", None, "").await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "no users without token auth");
}

#[tokio::test]
async fn the_audit_log_records_who_changed_what_and_catches_tampering() {
    let f = fixture();
    let admin = bearer(&f.admin);
    let (s, body) = call(
        &f.app,
        Method::PUT,
        "/v1/collections/situation/records/river",
        Some(&bearer(&f.writer)),
        "7.5",
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let (s, _) = call(
        &f.app,
        Method::DELETE,
        "/v1/collections/situation/records/river",
        Some(&bearer(&f.writer)),
        "",
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = call(
        &f.app,
        Method::PUT,
        "/v1/collections/_policy/records/default",
        Some(&admin),
        r#"{"read":["*"],"write":["*"]}"#,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = call(
        &f.app,
        Method::POST,
        "/v1/users",
        Some(&admin),
        r#"{"name":"zhao","role":"reader"}"#,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = call(
        &f.app,
        Method::GET,
        "/v1/status",
        Some("Bearer ost_guess"),
        "",
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // The refusal is appended without waiting: give the appender a moment.
    let mut entries = Vec::new();
    for _ in 0..100 {
        let (s, body) = call(&f.app, Method::GET, "/v1/audit", Some(&admin), "").await;
        assert_eq!(s, StatusCode::OK, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        entries = v["entries"].as_array().expect("entries").clone();
        if entries.iter().any(|e| e["kind"] == "auth_refused") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let kinds: Vec<(String, String)> = entries
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap_or("").to_owned(),
                e["actor"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    for wanted in [
        ("write", "wang@gov"),
        ("delete", "wang@gov"),
        ("policy", "admin@gov"),
        ("user_add", "admin@gov"),
    ] {
        assert!(
            kinds.iter().any(|(k, a)| k == wanted.0 && a == wanted.1),
            "no {wanted:?} in {kinds:?}"
        );
    }
    assert!(kinds.iter().any(|(k, _)| k == "auth_refused"), "{kinds:?}");
    let (s, body) = call(&f.app, Method::GET, "/v1/audit/verify", Some(&admin), "").await;
    assert_eq!(s, StatusCode::OK, "{body}");
    // Flip one byte of a stored entry: verify names it.
    let segment = f
        ._dir
        .path()
        .join("audit")
        .join(crate::audit::segment_name(1));
    let mut bytes = std::fs::read(&segment).expect("segment");
    let at = bytes.iter().position(|&b| b == b'w').expect("a 'w' (wang)");
    bytes[at] = b'x';
    std::fs::write(&segment, &bytes).expect("tamper");
    let (s, body) = call(&f.app, Method::GET, "/v1/audit/verify", Some(&admin), "").await;
    assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert!(
        body.contains("000001.log") && body.contains("damaged"),
        "{body}"
    );
}

#[tokio::test]
async fn a_user_sees_only_its_collections_in_status_and_listings() {
    let f = fixture();
    let admin = bearer(&f.admin);
    for coll in ["situation", "documents"] {
        let uri = format!("/v1/collections/{coll}/records/k");
        let (s, _) = call(&f.app, Method::PUT, &uri, Some(&admin), "v").await;
        assert_eq!(s, StatusCode::OK);
    }
    for uri in ["/v1/status", "/v1/collections"] {
        let (s, body) = call(&f.app, Method::GET, uri, Some(&bearer(&f.reader)), "").await;
        assert_eq!(s, StatusCode::OK, "{body}");
        assert!(
            body.contains("situation") && !body.contains("documents"),
            "{uri}: {body}"
        );
        let (_, body) = call(&f.app, Method::GET, uri, Some(&admin), "").await;
        assert!(body.contains("documents"), "{uri}: {body}");
    }
}
