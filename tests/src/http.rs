//! A small blocking client of one daemon's HTTP API (DESIGN.md, "HTTP API"), for tests.
//!
//! [`ApiClient::request`] returns any HTTP status as a [`HttpReply`]; the typed helpers
//! (`put`, `get`, `delete`, `scan`, `status`) panic on anything unexpected, except the
//! `try_*` forms, which return an error instead (for writes racing a kill -9).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context as _};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde_json::Value;
use ureq::http::{self, HeaderMap};

/// Whole-request timeout of the test client.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest response body read (values are at most 64 MiB in any config).
const MAX_BODY: u64 = 80 << 20;

/// A client of the API at one address. Cheap to clone (the connection pool is shared).
#[derive(Debug, Clone)]
pub struct ApiClient {
    agent: ureq::Agent,
    addr: SocketAddr,
    /// The token sent as `Authorization: Bearer`, if any.
    token: Option<String>,
}

/// A complete HTTP answer.
#[derive(Debug, Clone)]
pub struct HttpReply {
    /// HTTP status code.
    pub status: u16,
    /// Response headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Vec<u8>,
}

impl HttpReply {
    /// A header as text, if present and ASCII.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body parsed as JSON; panics (showing the body) if it is not.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "HTTP {} body is not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The body as lossy UTF-8.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// The acknowledgement of a put or delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteAck {
    /// The new version, `origin:counter`.
    pub version: String,
    /// The version's HLC, as the daemon sent it.
    pub hlc: Value,
}

/// A record's winner, as `GET /v1/collections/{c}/records/{key}` returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The winner's raw value.
    pub value: Vec<u8>,
    /// The `officesync-version` header.
    pub version: String,
    /// The `officesync-siblings` header.
    pub siblings: u64,
}

/// One record of a scan page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanEntry {
    /// The key.
    pub key: String,
    /// The winner's version.
    pub version: String,
    /// Number of siblings.
    pub siblings: u64,
    /// The winner's value (`None` for a tombstone).
    pub value: Option<Vec<u8>>,
}

/// `origin:counter` split at its last colon into the origin and the counter.
pub fn split_version(version: &str) -> (&str, u64) {
    let (origin, counter) = version
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("version {version:?} is not origin:counter"));
    let counter = counter
        .parse()
        .unwrap_or_else(|_| panic!("version {version:?} has no numeric counter"));
    (origin, counter)
}

impl ApiClient {
    /// A client of the API at `addr`, with its own connection pool, no proxy and
    /// [`HTTP_TIMEOUT`] per request.
    pub fn new(addr: SocketAddr) -> Self {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .proxy(None)
            .max_redirects(0)
            .timeout_global(Some(HTTP_TIMEOUT))
            .build()
            .new_agent();
        Self {
            agent,
            addr,
            token: None,
        }
    }

    /// The same client, sending `token` with every request (`None`: no token).
    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token;
        self
    }

    /// The token this client sends, if any.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// The API address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sends one request; `path` starts with `/` and is already percent-encoded. Any HTTP
    /// status is `Ok`; `Err` only when no complete answer came back.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<HttpReply, ureq::Error> {
        let mut builder = http::Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr));
        if let Some(token) = &self.token {
            builder = builder.header("authorization", format!("Bearer {token}"));
        }
        let response = match body {
            Some(body) => self.agent.run(
                builder
                    .header("content-type", "application/octet-stream")
                    .body(body.to_vec())?,
            ),
            None => self.agent.run(builder.body(())?),
        }?;
        let (parts, body) = response.into_parts();
        let body = body.into_with_config().limit(MAX_BODY).read_to_vec()?;
        Ok(HttpReply {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        })
    }

    /// Like [`ApiClient::request`], panicking on a transport error.
    pub fn call(&self, method: &str, path: &str, body: Option<&[u8]>) -> HttpReply {
        self.request(method, path, body)
            .unwrap_or_else(|e| panic!("{method} {path} to {} failed: {e}", self.addr))
    }

    /// True when `GET /health` answers 200 right now.
    pub fn healthy(&self) -> bool {
        self.request("GET", "/health", None)
            .is_ok_and(|r| r.status == 200)
    }

    /// `PUT` a value; `Err` on a transport error or any status but 200.
    pub fn try_put(&self, collection: &str, key: &str, value: &[u8]) -> anyhow::Result<WriteAck> {
        let path = record_path(collection, key);
        let reply = self
            .request("PUT", &path, Some(value))
            .with_context(|| format!("PUT {path}"))?;
        write_ack(&path, &reply)
    }

    /// `PUT` a value; panics unless acknowledged.
    pub fn put(&self, collection: &str, key: &str, value: &[u8]) -> WriteAck {
        self.try_put(collection, key, value)
            .unwrap_or_else(|e| panic!("put to {}: {e:#}", self.addr))
    }

    /// `GET` a record's winner; `Ok(None)` on 404, `Err` on a transport error or another
    /// status.
    pub fn try_get(&self, collection: &str, key: &str) -> anyhow::Result<Option<Record>> {
        let path = record_path(collection, key);
        let reply = self
            .request("GET", &path, None)
            .with_context(|| format!("GET {path}"))?;
        match reply.status {
            200 => {}
            404 => return Ok(None),
            s => bail!("GET {path}: HTTP {s}: {}", reply.text()),
        }
        let version = reply
            .header("officesync-version")
            .with_context(|| format!("GET {path}: no officesync-version header"))?
            .to_owned();
        let siblings = reply
            .header("officesync-siblings")
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("GET {path}: no numeric officesync-siblings header"))?;
        Ok(Some(Record {
            value: reply.body,
            version,
            siblings,
        }))
    }

    /// `GET` a record's winner; `None` on 404, panics on anything else unexpected.
    pub fn get(&self, collection: &str, key: &str) -> Option<Record> {
        self.try_get(collection, key)
            .unwrap_or_else(|e| panic!("get from {}: {e:#}", self.addr))
    }

    /// `DELETE` a record; `None` on 404 (nothing live to delete), panics on other failures.
    pub fn delete(&self, collection: &str, key: &str) -> Option<WriteAck> {
        let path = record_path(collection, key);
        let reply = self.call("DELETE", &path, None);
        if reply.status == 404 {
            return None;
        }
        Some(write_ack(&path, &reply).unwrap_or_else(|e| panic!("{e:#}")))
    }

    /// Every live record of `collection` whose key starts with `prefix`, following `next`
    /// pages to the end.
    pub fn scan(&self, collection: &str, prefix: &str) -> Vec<ScanEntry> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        for _ in 0..100_000 {
            let mut path = format!(
                "/v1/collections/{}/records?limit=1000&prefix={}",
                encode(collection, false),
                encode(prefix, false)
            );
            if let Some(after) = &after {
                path.push_str(&format!("&after={}", encode(after, false)));
            }
            let reply = self.call("GET", &path, None);
            assert_eq!(reply.status, 200, "GET {path}: {}", reply.text());
            let page = reply.json();
            let records = page["records"]
                .as_array()
                .unwrap_or_else(|| panic!("GET {path}: no records array: {page}"));
            for r in records {
                out.push(scan_entry(r));
            }
            match page["next"].as_str() {
                Some(next) if after.as_deref() != Some(next) => after = Some(next.to_owned()),
                Some(next) => panic!("GET {path}: next {next:?} repeats the previous page"),
                None => return out,
            }
        }
        panic!("scan of {collection} did not end after 100000 pages");
    }

    /// `GET /v1/status` as JSON; panics unless 200.
    pub fn status(&self) -> Value {
        let reply = self.call("GET", "/v1/status", None);
        assert_eq!(reply.status, 200, "GET /v1/status: {}", reply.text());
        reply.json()
    }
}

/// The acknowledgement in a put or delete answer.
fn write_ack(path: &str, reply: &HttpReply) -> anyhow::Result<WriteAck> {
    if reply.status != 200 {
        bail!("{path}: HTTP {}: {}", reply.status, reply.text());
    }
    let json: Value = serde_json::from_slice(&reply.body)
        .with_context(|| format!("{path}: answer is not JSON: {}", reply.text()))?;
    let version = json["version"]
        .as_str()
        .with_context(|| format!("{path}: answer has no version: {json}"))?
        .to_owned();
    Ok(WriteAck {
        version,
        hlc: json["hlc"].clone(),
    })
}

/// One scan record from its JSON.
fn scan_entry(r: &Value) -> ScanEntry {
    let text = |name: &str| {
        r[name]
            .as_str()
            .unwrap_or_else(|| panic!("scan record without {name}: {r}"))
            .to_owned()
    };
    ScanEntry {
        key: text("key"),
        version: text("version"),
        siblings: r["siblings"].as_u64().unwrap_or(0),
        value: r["value_base64"].as_str().map(|b| {
            BASE64
                .decode(b)
                .unwrap_or_else(|e| panic!("scan record value is not base64 ({e}): {r}"))
        }),
    }
}

/// `/v1/collections/{c}/records/{key}` with both percent-encoded (the key keeps its `/`).
pub fn record_path(collection: &str, key: &str) -> String {
    format!(
        "/v1/collections/{}/records/{}",
        encode(collection, false),
        encode(key, true)
    )
}

/// Percent-encodes everything but unreserved characters (and `/` when `keep_slash`).
pub fn encode(text: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || (keep_slash && b == b'/') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_encoded() {
        assert_eq!(
            record_path("situation", "hefei/grain 1%"),
            "/v1/collections/situation/records/hefei/grain%201%25"
        );
        assert_eq!(encode("a/b", false), "a%2Fb");
    }

    #[test]
    fn versions_split() {
        assert_eq!(split_version("hefei@b23043a6:106"), ("hefei@b23043a6", 106));
    }
}
