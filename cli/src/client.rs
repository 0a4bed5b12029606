//! The HTTP client of the officesyncd API: the `--api` address (or the one in
//! `--config`) and `--timeout`, one request helper, the translation of transport
//! errors and HTTP statuses into [`CliError`]s with the right exit code, and
//! telling officesyncd from another program that answers at the address.

use std::fmt;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use officesync_api::{ErrorBody, HealthBody};
use serde::de::DeserializeOwned;
use ureq::http::{self, HeaderMap, Method};

use crate::exit::{CliError, Exit};
use crate::output::escape_message;

/// Default `--api`: the daemon's default `[api] listen`.
pub const DEFAULT_API: &str = "127.0.0.1:7480";
/// Port used when `--api` names only a host.
const DEFAULT_PORT: u16 = officesync_daemon::config::DEFAULT_API_PORT;
/// Largest answer read into memory (a scan page, `get --all`): the daemon keeps both within
/// 8 MiB of values (about 11 MiB as base64), plus one record of at most 6 MiB.
const MAX_JSON_BYTES: u64 = 64 << 20;
/// Largest error body read for its message.
const MAX_ERROR_BYTES: u64 = 64 * 1024;
/// Longest error message taken from a body that is not JSON.
const MAX_ERROR_CHARS: usize = 300;
/// How the `server` header of every officesyncd answer starts (`officesyncd/VERSION`).
const DAEMON_SERVER: &str = "officesyncd/";
/// Longest excerpt of a foreign program's answer quoted in a message.
const MAX_EXCERPT_CHARS: usize = 60;

/// Where the daemon's HTTP API listens: `host:port`, parsed from `host:port`,
/// `http://host:port`, `[v6]:port` or a bare host (port 7480).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiAddr {
    /// Host name or IP; an IPv6 address keeps its brackets.
    host: String,
    /// TCP port.
    port: u16,
}

impl ApiAddr {
    /// True when the address is this host's loopback (`127.0.0.0/8`, `::1`, `localhost`).
    pub fn is_loopback(&self) -> bool {
        let host = self.host.trim_start_matches('[').trim_end_matches(']');
        host.eq_ignore_ascii_case("localhost")
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }
}

impl FromStr for ApiAddr {
    type Err = String;

    fn from_str(text: &str) -> Result<ApiAddr, String> {
        let text = text.trim();
        let rest = match text.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
            Some((scheme, _)) => {
                return Err(format!(
                    "{text:?}: the officesyncd API is plain HTTP, not {scheme}:// \
                     (use host:port or http://host:port)"
                ))
            }
            None => text,
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let bad = || {
            format!("{text:?} is not an API address (use host:port or http://host:port, e.g. 127.0.0.1:7480)")
        };
        if rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ', '\t']) {
            return Err(bad());
        }
        let (host, port) = if let Some(inner) = rest.strip_prefix('[') {
            let (v6, tail) = inner.split_once(']').ok_or_else(bad)?;
            if v6.is_empty() {
                return Err(bad());
            }
            let port = match tail {
                "" => None,
                _ => Some(tail.strip_prefix(':').ok_or_else(bad)?),
            };
            (format!("[{v6}]"), port)
        } else {
            match rest.split_once(':') {
                Some((_, port)) if port.contains(':') => {
                    return Err(format!(
                        "{text:?}: write an IPv6 address in brackets, e.g. [::1]:7480"
                    ))
                }
                Some((host, port)) => (host.to_owned(), Some(port)),
                None => (rest.to_owned(), None),
            }
        };
        if host.is_empty() {
            return Err(bad());
        }
        let port = match port {
            None => DEFAULT_PORT,
            Some(port) => match port.parse::<u16>() {
                Ok(port) if port != 0 => port,
                _ => return Err(format!("{text:?}: port must be a number in 1..=65535")),
            },
        };
        Ok(ApiAddr { host, port })
    }
}

impl ApiAddr {
    /// The address to reach a daemon whose `[api] listen` is `listen`: an unspecified IP
    /// (`0.0.0.0`, `[::]`, listening on every interface) is reached on loopback.
    pub fn from_listen(listen: SocketAddr) -> ApiAddr {
        let ip = match listen.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        let host = match ip {
            IpAddr::V4(ip) => ip.to_string(),
            IpAddr::V6(ip) => format!("[{ip}]"),
        };
        ApiAddr {
            host,
            port: listen.port(),
        }
    }
}

/// The API address of the node whose config file is `path` (`--config`): its `[api] listen`,
/// as [`ApiAddr::from_listen`] reaches it. Reads and checks the file alone: never the key or
/// certificates it names, so any user who may read the config can use it.
pub fn api_from_config(path: &Path) -> Result<ApiAddr, CliError> {
    let config = officesync_daemon::config::Config::load_offline(path)
        .map_err(|e| CliError::usage(format!("--config: {e}")))?;
    Ok(ApiAddr::from_listen(config.api.listen))
}

impl fmt::Display for ApiAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// Parses `--timeout`: seconds (`10`, `2.5`) or a number with `ms`, `s` or
/// `m` (`500ms`, `30s`, `2m`); more than zero, at most a day.
pub fn parse_timeout(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, scale) = if let Some(n) = text.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60.0)
    } else {
        (text, 1.0)
    };
    let secs = number
        .trim()
        .parse::<f64>()
        .ok()
        .map(|n| n * scale)
        .filter(|s| s.is_finite() && *s > 0.0 && *s <= 86_400.0)
        .ok_or_else(|| {
            format!("{text:?} is not a timeout (use seconds like 10, or 500ms, 30s, 2m)")
        })?;
    Ok(Duration::from_secs_f64(secs))
}

/// A client of one daemon's API (connections are pooled by the agent).
#[derive(Debug)]
pub struct Client {
    /// The HTTP agent, configured for the API (no proxy, no redirects).
    agent: ureq::Agent,
    /// Where the API listens.
    addr: ApiAddr,
    /// The whole-request timeout, for messages.
    timeout: Duration,
    /// The token sent as `Authorization: Bearer`, if any.
    token: Option<String>,
}

impl Client {
    /// A client of the API at `addr`; each request may take up to `timeout`.
    pub fn new(addr: ApiAddr, timeout: Duration) -> Client {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            // The API is local or on the office LAN: an http_proxy meant for
            // the Internet must not intercept it.
            .proxy(None)
            .max_redirects(0)
            .timeout_global(Some(timeout))
            .user_agent(concat!("officesync/", env!("CARGO_PKG_VERSION")))
            .build()
            .new_agent();
        Client {
            agent,
            addr,
            timeout,
            token: None,
        }
    }

    /// The same client, sending `token` with every request.
    pub fn with_token(mut self, token: Option<String>) -> Client {
        self.token = token;
        self
    }

    /// The API address, for messages.
    pub fn addr(&self) -> &ApiAddr {
        &self.addr
    }

    /// Sends one request; `path` starts with `/` and is already encoded.
    /// Fails only when no HTTP answer came back; any status is a [`Reply`].
    pub fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Reply<'_>, CliError> {
        let what = format!("{method} {path}");
        let mut builder = http::Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr));
        if let Some(token) = &self.token {
            builder = builder.header("authorization", format!("Bearer {token}"));
        }
        let result = match body {
            Some(body) => builder
                .header("content-type", "application/octet-stream")
                .body(body)
                .map(|request| self.agent.run(request)),
            None => builder.body(()).map(|request| self.agent.run(request)),
        };
        let response = result
            .map_err(|e| CliError::usage(format!("cannot build {what} for {}: {e}", self.addr)))?
            .map_err(|e| self.transport_error(&what, &e))?;
        let (parts, body) = response.into_parts();
        Ok(Reply {
            client: self,
            what,
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        })
    }

    /// `None` if the program at the API address is officesyncd, else why it is not: judged
    /// from the `server` header of an answer that made no sense (`server`), and when there is
    /// none (an officesyncd older than that header), from a `GET /health` probe.
    fn not_officesyncd(&self, server: Option<&str>) -> Option<String> {
        match server {
            Some(name) if name.starts_with(DAEMON_SERVER) => None,
            Some(name) => Some(format!("it calls itself {:?}", escape_message(name))),
            None => {
                let probe = match self.send(Method::GET, "/health", None) {
                    Ok(probe) => probe,
                    Err(_) => return Some("no server header, and GET /health failed".to_owned()),
                };
                if let Some(name) = probe.header("server") {
                    if !name.starts_with(DAEMON_SERVER) {
                        return Some(format!("it calls itself {:?}", escape_message(name)));
                    }
                }
                let status = probe.status;
                let healthy = status == 200
                    && probe.bytes().ok().is_some_and(|body| {
                        serde_json::from_slice::<HealthBody>(&body).is_ok_and(|h| h.is_ok())
                    });
                (!healthy).then(|| {
                    format!(
                        "no server header, and GET /health answered HTTP {status}, not \
                         officesyncd's {{\"status\": \"ok\"}}"
                    )
                })
            }
        }
    }

    /// The error for an answer from a program that is not officesyncd: `why` from
    /// [`Client::not_officesyncd`], `answer` what it said to `what`.
    fn foreign(&self, what: &str, why: &str, answer: &str) -> CliError {
        CliError::new(
            Exit::Unreachable,
            format!(
                "{} answered, but it is not officesyncd ({why}; {what} answered {answer}); \
                 check --api / api.listen: --api, OFFICESYNC_API or the config of --config \
                 must name officesyncd's [api] listen address",
                self.addr
            ),
        )
    }

    /// The error for a request that got no (complete) HTTP answer.
    fn transport_error(&self, what: &str, error: &ureq::Error) -> CliError {
        let addr = &self.addr;
        match Exit::for_transport(error) {
            Exit::Unreachable => {
                let detail = match error {
                    ureq::Error::Timeout(_) => {
                        format!("no answer within {:?} (see --timeout)", self.timeout)
                    }
                    other => other.to_string(),
                };
                CliError::new(
                    Exit::Unreachable,
                    format!(
                        "cannot reach officesyncd at {addr}: {detail}; check that officesyncd \
                         is running and that --api or OFFICESYNC_API names its [api] listen address \
                         (or leave them out and pass its config with --config)"
                    ),
                )
            }
            exit => CliError::new(
                exit,
                format!("{what} to officesyncd at {addr} failed: {error}"),
            ),
        }
    }
}

/// An HTTP answer from the daemon, body not read yet.
#[derive(Debug)]
pub struct Reply<'c> {
    /// The client that sent the request.
    client: &'c Client,
    /// `METHOD /path`, for messages.
    what: String,
    /// The HTTP status code.
    pub status: u16,
    /// The response headers.
    headers: HeaderMap,
    /// The unread body.
    body: ureq::Body,
}

impl<'c> Reply<'c> {
    /// The API address the answer came from.
    pub fn addr(&self) -> &ApiAddr {
        &self.client.addr
    }

    /// A response header as text, if present and ASCII.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Passes a 2xx answer through and turns any other into its error.
    ///
    /// `missing` is the message for a 404 on a request naming one record
    /// (exit 1); with `None` a 404 means the daemon lacks the endpoint.
    pub fn check(self, missing: Option<&str>) -> Result<Reply<'c>, CliError> {
        if (200..300).contains(&self.status) {
            Ok(self)
        } else {
            Err(self.into_error(missing))
        }
    }

    /// The error for a non-2xx answer, with the daemon's `error` message.
    pub fn into_error(self, missing: Option<&str>) -> CliError {
        let status = self.status;
        let exit = Exit::for_status(status, missing.is_some());
        if let (Exit::NotFound, Some(message)) = (exit, missing) {
            return CliError::new(exit, message);
        }
        let client = self.client;
        let addr = client.addr.clone();
        let what = self.what.clone();
        let server = self.header("server").map(str::to_owned);
        let (detail, from_daemon) = self.error_detail();
        if !from_daemon {
            if let Some(why) = client.not_officesyncd(server.as_deref()) {
                return client.foreign(
                    &what,
                    &why,
                    &format!("HTTP {status}: {}", excerpt(&detail)),
                );
            }
        }
        let message = match (status, exit) {
            (401, _) if from_daemon => format!(
                "officesyncd at {addr} refused the request: {detail} (HTTP 401; give a user's \
                 token with --token, OFFICESYNC_TOKEN, --token-file or OFFICESYNC_TOKEN_FILE)"
            ),
            (403, _) if from_daemon => format!("forbidden: {detail} (HTTP 403)"),
            (429, _) if from_daemon => format!("officesyncd at {addr}: {detail} (HTTP 429)"),
            // A 404 without a JSON error is a route the daemon does not have.
            (404, _) if !from_daemon => format!(
                "officesyncd at {addr} does not serve {what} (HTTP 404: {detail}); \
                 is it an older version?"
            ),
            (_, Exit::Usage) => format!("{detail} (HTTP {status} from officesyncd)"),
            _ => format!("officesyncd at {addr} failed {what}: {detail} (HTTP {status})"),
        };
        CliError::new(exit, message)
    }

    /// The explanation of an error: the JSON `error` (then `true`: the
    /// daemon's own message), else the start of the body or the status reason;
    /// characters that do not print are escaped (see [`escape_message`]), since
    /// it goes to a terminal.
    fn error_detail(self) -> (String, bool) {
        let (detail, from_daemon) = self.raw_error_detail();
        (escape_message(&detail), from_daemon)
    }

    /// [`Reply::error_detail`] before escaping.
    fn raw_error_detail(self) -> (String, bool) {
        let reason = http::StatusCode::from_u16(self.status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("no reason given")
            .to_owned();
        let mut body = Vec::new();
        if self
            .body
            .into_reader()
            .take(MAX_ERROR_BYTES)
            .read_to_end(&mut body)
            .is_err()
        {
            return (reason, false);
        }
        if let Ok(ErrorBody { error }) = serde_json::from_slice(&body) {
            return (error, true);
        }
        let text = String::from_utf8_lossy(&body);
        let line = text.lines().map(str::trim).find(|l| !l.is_empty());
        let detail = match line {
            Some(line) => line.chars().take(MAX_ERROR_CHARS).collect(),
            None => reason,
        };
        (detail, false)
    }

    /// The whole body (at most 64 MiB).
    pub fn bytes(self) -> Result<Vec<u8>, CliError> {
        let client = self.client;
        let what = self.what;
        self.body
            .into_with_config()
            .limit(MAX_JSON_BYTES)
            .read_to_vec()
            .map_err(|e| client.transport_error(&what, &e))
    }

    /// The whole body, refusing one over `limit` bytes (a bundle).
    pub fn bytes_up_to(self, limit: u64) -> Result<Vec<u8>, CliError> {
        let client = self.client;
        let what = self.what;
        self.body
            .into_with_config()
            .limit(limit)
            .read_to_vec()
            .map_err(|e| client.transport_error(&what, &e))
    }

    /// The body as JSON of type `T` (an `officesync-api` body).
    pub fn json<T: DeserializeOwned>(self) -> Result<T, CliError> {
        let (addr, what) = (self.client.addr.clone(), self.what.clone());
        self.json_or_empty()?.ok_or_else(|| {
            CliError::failure(format!(
                "officesyncd at {addr} answered {what} with an empty body, not JSON"
            ))
        })
    }

    /// The body as JSON of type `T`, `None` if it is empty (a 202 or 204). A body that is not
    /// JSON is an error that says whether the program answering is officesyncd at all; JSON
    /// of another shape, one that says the CLI and the daemon do not speak the same API.
    pub fn json_or_empty<T: DeserializeOwned>(self) -> Result<Option<T>, CliError> {
        let client = self.client;
        let what = self.what.clone();
        let status = self.status;
        let server = self.header("server").map(str::to_owned);
        let body = self.bytes()?;
        if body.is_empty() {
            return Ok(None);
        }
        serde_json::from_slice(&body).map(Some).map_err(|e| {
            let text = String::from_utf8_lossy(&body);
            match client.not_officesyncd(server.as_deref()) {
                Some(why) => {
                    client.foreign(&what, &why, &format!("HTTP {status}: {}", excerpt(&text)))
                }
                None if e.is_data() => CliError::failure(format!(
                    "officesyncd at {} answered {what} with JSON this officesync cannot read \
                     ({e}); are officesync and officesyncd the same version?",
                    client.addr
                )),
                None => CliError::failure(format!(
                    "officesyncd at {} answered {what} with invalid JSON: {e}",
                    client.addr
                )),
            }
        })
    }

    /// The body as a reader, for streaming a value to stdout.
    pub fn into_reader(self) -> impl Read {
        self.body.into_reader()
    }
}

/// The start of `text` on one line, quoted: at most [`MAX_EXCERPT_CHARS`] characters, with
/// `...` when cut, and what does not print escaped (see [`escape_message`]).
fn excerpt(text: &str) -> String {
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.is_empty() {
        return "nothing".to_owned();
    }
    let mut cut: String = line.chars().take(MAX_EXCERPT_CHARS).collect();
    if cut.len() < line.len() {
        cut.push_str("...");
    }
    format!("\"{}\"", escape_message(&cut))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> Result<String, String> {
        text.parse::<ApiAddr>().map(|a| a.to_string())
    }

    #[test]
    fn api_addresses_parse() {
        assert_eq!(addr("127.0.0.1:7480").as_deref(), Ok("127.0.0.1:7480"));
        assert_eq!(
            addr("http://127.0.0.1:9000").as_deref(),
            Ok("127.0.0.1:9000")
        );
        assert_eq!(addr("HTTP://node-a:80/").as_deref(), Ok("node-a:80"));
        assert_eq!(addr("localhost").as_deref(), Ok("localhost:7480"));
        assert_eq!(addr("[::1]:7481").as_deref(), Ok("[::1]:7481"));
        assert_eq!(addr("http://[::1]").as_deref(), Ok("[::1]:7480"));
    }

    #[test]
    fn loopback_addresses_are_told_apart() {
        for local in [
            "127.0.0.1:7480",
            "localhost:7480",
            "[::1]:7480",
            "127.0.0.2:1",
        ] {
            assert!(
                local.parse::<ApiAddr>().expect(local).is_loopback(),
                "{local}"
            );
        }
        for remote in ["10.0.0.5:7480", "gov.example.cn:7480", "[2001:db8::1]:7480"] {
            assert!(
                !remote.parse::<ApiAddr>().expect(remote).is_loopback(),
                "{remote}"
            );
        }
    }

    #[test]
    fn bad_api_addresses_are_refused() {
        for bad in [
            "",
            "https://host:7480",
            "host:0",
            "host:http",
            "host:70000",
            "::1",
            "host:7480/v1",
            "user@host:1",
            "[::1",
            ":7480",
        ] {
            assert!(addr(bad).is_err(), "{bad:?} was accepted");
        }
        let https = addr("https://h:1").expect_err("https refused");
        assert!(https.contains("plain HTTP"), "{https}");
    }

    #[test]
    fn timeouts_parse() {
        assert_eq!(parse_timeout("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_timeout("2.5"), Ok(Duration::from_millis(2500)));
        assert_eq!(parse_timeout("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_timeout("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_timeout("2m"), Ok(Duration::from_secs(120)));
        for bad in ["0", "-1", "ten", "", "NaN", "inf", "2d", "100000"] {
            assert!(parse_timeout(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
