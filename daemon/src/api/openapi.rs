//! `GET /v1/openapi.json`: the OpenAPI 3.0 description of this API, kept in `openapi.json`
//! beside this file and built into the daemon at compile time.

use axum::http::header::CONTENT_TYPE;
use axum::http::Uri;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::params::parse_query;

/// The OpenAPI document, as served.
pub const OPENAPI_JSON: &str = include_str!("openapi.json");

/// `GET /v1/openapi.json`: [`OPENAPI_JSON`], to any authenticated user.
pub(crate) async fn openapi(uri: Uri) -> Result<Response, ApiError> {
    parse_query(uri.query(), &[])?;
    Ok(([(CONTENT_TYPE, "application/json")], OPENAPI_JSON).into_response())
}

/// Every path the router serves, in OpenAPI form (`{*key}` → `{key}`), read from its source.
#[cfg(test)]
pub(crate) fn served_paths() -> std::collections::BTreeSet<String> {
    tests::served_routes(tests::ROUTER_SOURCE)
        .into_iter()
        .map(|(path, _)| path)
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Arc;

    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use http_body_util::BodyExt;
    use serde_json::Value;
    use tower::ServiceExt;

    use super::*;
    use crate::api::{router, ApiState};
    use crate::replica::{Replica, ReplicaOptions};
    use crate::store::MemoryStore;

    /// The router's source: the list of routes is read from the `.route(..)` calls of
    /// [`router`], so a route added there without a description fails these tests.
    pub(super) const ROUTER_SOURCE: &str = include_str!("mod.rs");

    const METHODS: [&str; 5] = ["get", "put", "post", "delete", "patch"];

    /// Every `(path, method)` the router serves, paths in OpenAPI form (`{*key}` → `{key}`).
    pub(super) fn served_routes(source: &str) -> BTreeSet<(String, String)> {
        let body = source
            .split_once("pub fn router(")
            .expect("mod.rs defines router")
            .1;
        let body = body
            .split_once(".method_not_allowed_fallback")
            .expect("router ends with its fallbacks")
            .0;
        let mut out = BTreeSet::new();
        for chunk in body.split(".route(").skip(1) {
            let path = chunk
                .split('"')
                .nth(1)
                .unwrap_or_else(|| panic!("a route without a literal path: {chunk}"));
            let path = path.replace("{*", "{");
            let mut found = false;
            for method in METHODS {
                let call = format!("{method}(");
                let served = chunk.match_indices(&call).any(|(at, _)| {
                    at == 0
                        || !chunk[..at]
                            .chars()
                            .next_back()
                            .is_some_and(|c| c.is_alphanumeric() || c == '_')
                });
                if served {
                    out.insert((path.clone(), method.to_owned()));
                    found = true;
                }
            }
            assert!(found, "route {path} with no method handler found: {chunk}");
        }
        out
    }

    fn document() -> Value {
        serde_json::from_str(OPENAPI_JSON).expect("openapi.json is JSON")
    }

    fn documented(doc: &Value) -> BTreeSet<(String, String)> {
        let mut out = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for method in METHODS {
                if item.get(method).is_some() {
                    out.insert((path.clone(), method.to_owned()));
                }
            }
        }
        out
    }

    #[test]
    fn the_route_reader_finds_every_kind_of_route() {
        let source = r#"
            pub fn router(state: ApiState) -> Router {
                Router::new()
                    .route("/a/{*key}", get(h::get_a).put(h::put_a))
                    .route("/b", axum::routing::post(h::b).layer(DefaultBodyLimit::max(1)))
                    .route("/c/{name}", axum::routing::delete(h::remove_c))
                    .method_not_allowed_fallback(x)
            }"#;
        let want: BTreeSet<(String, String)> = [
            ("/a/{key}", "get"),
            ("/a/{key}", "put"),
            ("/b", "post"),
            ("/c/{name}", "delete"),
        ]
        .into_iter()
        .map(|(p, m)| (p.to_owned(), m.to_owned()))
        .collect();
        assert_eq!(served_routes(source), want);
    }

    #[test]
    fn every_route_the_router_serves_is_documented_and_nothing_else() {
        let served = served_routes(ROUTER_SOURCE);
        assert!(served.len() >= 25, "found only {served:?}");
        let documented = documented(&document());
        let missing: Vec<_> = served.difference(&documented).collect();
        assert!(
            missing.is_empty(),
            "served but not in openapi.json: {missing:?}"
        );
        let extra: Vec<_> = documented.difference(&served).collect();
        assert!(
            extra.is_empty(),
            "in openapi.json but not served: {extra:?}"
        );
    }

    /// The OpenAPI 3.0 fields every document must have, checked here so the build does not
    /// depend on a validator being installed (the `openapi` suite of `officesync-tests` runs
    /// `openapi-spec-validator` when it is).
    #[test]
    fn the_document_has_the_required_openapi_3_0_fields() {
        let doc = document();
        let version = doc["openapi"].as_str().expect("openapi");
        assert!(version.starts_with("3.0."), "{version}");
        assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
        let shared = &doc["components"]["parameters"];
        for (path, item) in doc["paths"].as_object().expect("paths") {
            assert!(path.starts_with('/'), "{path}");
            for method in METHODS {
                let Some(op) = item.get(method) else { continue };
                let responses = op["responses"].as_object().expect("responses");
                assert!(!responses.is_empty(), "{method} {path}: no responses");
                for (code, r) in responses {
                    let r = match r["$ref"].as_str() {
                        Some(name) => {
                            let name = name.rsplit('/').next().expect("ref");
                            &doc["components"]["responses"][name]
                        }
                        None => r,
                    };
                    assert!(r["description"].is_string(), "{method} {path} {code}");
                }
                let params: Vec<&Value> = op["parameters"]
                    .as_array()
                    .map(|ps| {
                        ps.iter()
                            .map(|p| match p["$ref"].as_str() {
                                Some(r) => &shared[r.rsplit('/').next().expect("ref")],
                                None => p,
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                for p in &params {
                    assert!(p["name"].is_string() && p["in"].is_string(), "{path}: {p}");
                    if p["in"] == "path" {
                        assert_eq!(p["required"], true, "{path}: {p}");
                    }
                }
                // Every `{name}` of the template is a declared path parameter.
                for name in path.split('{').skip(1).filter_map(|s| s.split_once('}')) {
                    assert!(
                        params
                            .iter()
                            .any(|p| p["in"] == "path" && p["name"] == name.0),
                        "{method} {path}: no path parameter {}",
                        name.0
                    );
                }
            }
        }
    }

    #[tokio::test]
    async fn the_document_is_served() {
        let replica = Replica::open(Arc::new(MemoryStore::new()), ReplicaOptions::new("hefei"))
            .expect("replica");
        let app = router(ApiState::new(replica));
        let req = Request::get("/v1/openapi.json")
            .body(Body::empty())
            .expect("request");
        let resp = app.oneshot(req).await.expect("infallible");
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()[CONTENT_TYPE], "application/json");
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(&bytes[..], OPENAPI_JSON.as_bytes());
    }
}
