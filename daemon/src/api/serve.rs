//! The API's HTTP/1 server loop, bounded against slow and greedy clients: a client must send
//! a request's headers within [`ServeLimits::header_read_timeout`] (slowloris), the whole
//! request — body included — must be answered within [`ServeLimits::request_timeout`] (a 408
//! with a JSON error otherwise), and at most [`ServeLimits::max_connections`] connections are
//! served at once (further ones are closed at once). Shutdown stops accepting, lets requests in
//! flight finish, and gives up on stalled connections after [`SHUTDOWN_GRACE`].

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::Request as HttpRequest;
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

/// Longest the server waits for connections still open at shutdown.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Bounds on what one client may hold of the API server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeLimits {
    /// A request's headers must arrive within this (from the first byte of the request, or
    /// from the end of the previous response on a kept-alive connection).
    pub header_read_timeout: Duration,
    /// A request must be read and answered within this (a 408 otherwise). Longer than any
    /// handler legitimately takes (`/v1/verify` waits at most 20 s).
    pub request_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
    /// Largest value accepted (`storage.max_value_bytes`): a request declaring a longer body
    /// gets its 413 at once, before any of the body is read. `None`: no early check (the
    /// router's own body limit still applies as the body arrives).
    pub max_value_bytes: Option<usize>,
}

impl Default for ServeLimits {
    /// 10 s for headers, 60 s per request, 512 connections.
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            max_connections: 512,
            max_value_bytes: None,
        }
    }
}

impl ServeLimits {
    /// The defaults, with requests declaring a body over `max_value_bytes` refused at once.
    pub fn for_values(max_value_bytes: usize) -> Self {
        Self {
            max_value_bytes: Some(max_value_bytes),
            ..Self::default()
        }
    }
}

/// Serves `app` on `listener` within `limits` until `shutdown` turns true (or its sender is
/// dropped).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ServeLimits,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let app = app.layer(middleware::from_fn_with_state(limits, request_bounds));
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, remote) = tokio::select! {
            biased;
            () = stopped(&mut shutdown) => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    tracing::warn!(error = %e, "API accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%remote, limit = limits.max_connections, "too many API connections; closing this one");
            drop(stream);
            continue;
        };
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout);
        // Handlers see the client's address (the failed-authentication slowdown counts by it).
        let service =
            tower::ServiceExt::map_request(app.clone(), move |mut req: HttpRequest<_>| {
                req.extensions_mut()
                    .insert(axum::extract::ConnectInfo(remote));
                req
            });
        let conn = http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%remote, error = %e, "API connection ended with an error");
            }
            drop(slot);
        });
    }
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("API connections still open after the shutdown grace; dropping them");
    }
    Ok(())
}

/// Resolves once `shutdown` is true or its sender is gone.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    // An error means the sender is gone: nobody can stop us later, so stop now.
    let _ = shutdown.wait_for(|s| *s).await;
}

/// The `server` header of every answer: `officesyncd/VERSION`, by which the CLI tells
/// officesyncd from another program answering at the address it was given.
pub const SERVER_HEADER: &str = concat!("officesyncd/", env!("CARGO_PKG_VERSION"));

/// [`bounded`], and the [`SERVER_HEADER`] on every answer.
async fn request_bounds(State(limits): State<ServeLimits>, req: Request, next: Next) -> Response {
    let mut response = bounded(limits, req, next).await;
    response.headers_mut().insert(
        axum::http::header::SERVER,
        axum::http::HeaderValue::from_static(SERVER_HEADER),
    );
    response
}

/// How long a bundle request (`/v1/bundle/...`) may take: a bundle of up to 256 MiB is read,
/// checked and applied (or made) within one request.
pub const BUNDLE_REQUEST_TIMEOUT: Duration = Duration::from_secs(600);

/// Answers 413 at once when the request declares a body over the value limit (the bundle
/// limit for a bundle route), and 408 when the request (reading its body included) takes
/// longer than the request timeout ([`BUNDLE_REQUEST_TIMEOUT`] for a bundle route).
async fn bounded(limits: ServeLimits, req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let bundle = req.uri().path().starts_with("/v1/bundle/");
    if let (Some(len), Some(max)) = (declared, limits.max_value_bytes) {
        let refused = if bundle {
            (len > crate::bundle::MAX_BUNDLE_BYTES as u64).then(super::bundle::too_large_message)
        } else {
            (len > u64::try_from(max).unwrap_or(u64::MAX)).then(|| {
                format!("value exceeds the limit of {max} bytes (storage.max_value_bytes)")
            })
        };
        if let Some(message) = refused {
            return super::ApiError::PayloadTooLarge(message).into_response();
        }
    }
    let limit = if bundle {
        limits.request_timeout.max(BUNDLE_REQUEST_TIMEOUT)
    } else {
        limits.request_timeout
    };
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(response) => response,
        Err(_) => (
            StatusCode::REQUEST_TIMEOUT,
            Json(serde_json::json!({
                "error": format!("request not completed within {} s", limit.as_secs_f64())
            })),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::Instant;

    use axum::body::Bytes;
    use axum::routing::{get, put};

    use super::*;

    /// Starts the server on a free port with short limits and two connection slots; returns
    /// its address and the stop switch. The clients below use blocking sockets on the test's
    /// thread while the server runs on the runtime's workers.
    fn start(rt: &tokio::runtime::Runtime) -> (std::net::SocketAddr, watch::Sender<bool>) {
        let limits = ServeLimits {
            header_read_timeout: Duration::from_millis(500),
            request_timeout: Duration::from_millis(800),
            max_connections: 2,
            max_value_bytes: Some(16),
        };
        let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app = Router::new()
            .route("/health", get(|| async { "ok" }))
            .route("/echo", put(|body: Bytes| async move { body }))
            .route("/v1/bundle/import", put(|body: Bytes| async move { body }));
        let (stop, stopped) = watch::channel(false);
        rt.spawn(serve(listener, app, limits, stopped));
        (addr, stop)
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime")
    }

    fn connect(addr: std::net::SocketAddr) -> TcpStream {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("read timeout");
        s
    }

    /// Reads until the server closes the connection; `false` if it was still open after 5 s.
    fn read_to_close(stream: &mut TcpStream) -> (String, bool) {
        let mut out = Vec::new();
        // A reset is a close too; only the read timeout means the connection is still open.
        let closed = match stream.read_to_end(&mut out) {
            Ok(_) => true,
            Err(e) => !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
        };
        (String::from_utf8_lossy(&out).into_owned(), closed)
    }

    #[test]
    fn a_request_is_served() {
        let rt = runtime();
        let (addr, _stop) = start(&rt);
        let mut s = connect(addr);
        s.write_all(
            b"PUT /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
        )
        .expect("write");
        let (reply, closed) = read_to_close(&mut s);
        assert!(closed && reply.starts_with("HTTP/1.1 200"), "{reply}");
        assert!(reply.ends_with("hello"), "{reply}");
    }

    #[test]
    fn every_answer_names_officesyncd() {
        let rt = runtime();
        let (addr, _stop) = start(&rt);
        let expected = format!("\r\nserver: {SERVER_HEADER}\r\n");
        for request in [
            "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            // Refused before any handler runs (declares a body over the limit).
            "PUT /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 99\r\nConnection: close\r\n\r\n",
            "GET /no-such-route HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        ] {
            let mut s = connect(addr);
            s.write_all(request.as_bytes()).expect("write");
            let (reply, _) = read_to_close(&mut s);
            assert!(
                reply.to_ascii_lowercase().contains(&expected),
                "{request:?} answered without {expected:?}: {reply}"
            );
        }
        assert!(SERVER_HEADER.starts_with("officesyncd/"));
    }

    #[test]
    fn slow_headers_are_cut_off() {
        let rt = runtime();
        let (addr, _stop) = start(&rt);
        let mut s = connect(addr);
        let start = Instant::now();
        // One header byte every 100 ms, for at most 3 s: never a complete head in time.
        let head = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaa";
        for b in head {
            if s.write_all(&[*b]).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let (reply, closed) = read_to_close(&mut s);
        assert!(closed, "the connection is still open: {reply}");
        assert!(!reply.contains("200 OK"), "{reply}");
        // The server hung up long before the head was done (6.5 s of dribbling).
        assert!(
            start.elapsed() < Duration::from_secs(6),
            "closed only after {:?}",
            start.elapsed()
        );
    }

    #[test]
    fn a_declared_oversize_body_gets_413_before_it_is_sent() {
        let rt = runtime();
        let (addr, _stop) = start(&rt);
        let mut s = connect(addr);
        s.write_all(b"PUT /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 17\r\n\r\n")
            .expect("write");
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).expect("answered without the body");
        let reply = String::from_utf8_lossy(&buf[..n]);
        assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
        assert!(reply.contains("\"error\""), "{reply}");
    }

    #[test]
    fn a_bundle_route_takes_more_than_a_value_but_not_more_than_a_bundle() {
        let rt = runtime();
        let (addr, _stop) = start(&rt);
        let mut s = connect(addr);
        s.write_all(
            b"PUT /v1/bundle/import HTTP/1.1\r\nHost: x\r\nContent-Length: 20\r\nConnection: close\r\n\r\n01234567890123456789",
        )
        .expect("write");
        let (reply, _) = read_to_close(&mut s);
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        let mut s = connect(addr);
        let head = format!(
            "PUT /v1/bundle/import HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            crate::bundle::MAX_BUNDLE_BYTES + 1
        );
        s.write_all(head.as_bytes()).expect("write");
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).expect("answered without the body");
        let reply = String::from_utf8_lossy(&buf[..n]);
        assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
        assert!(reply.contains("a bundle"), "{reply}");
    }

    #[test]
    fn a_stalled_body_gets_408() {
        let rt = runtime();
        let (addr, _stop) = start(&rt);
        let mut s = connect(addr);
        s.write_all(b"PUT /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nonly")
            .expect("write");
        let start = Instant::now();
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).expect("answered within the read timeout");
        let reply = String::from_utf8_lossy(&buf[..n]);
        assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
        assert!(reply.contains("\"error\""), "{reply}");
        assert!(start.elapsed() < Duration::from_secs(3));
    }

    #[test]
    fn connections_beyond_the_limit_are_closed() {
        let rt = runtime();
        let (addr, _stop) = start(&rt);
        // Two idle connections hold both slots (within their header timeout).
        let _a = connect(addr);
        let _b = connect(addr);
        std::thread::sleep(Duration::from_millis(100));
        let mut c = connect(addr);
        let _ = c.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
        let (reply, closed) = read_to_close(&mut c);
        assert!(
            closed && reply.is_empty(),
            "served beyond the limit: {reply}"
        );
        // Once the idle ones are cut off by the header timeout, a new client is served.
        std::thread::sleep(Duration::from_millis(800));
        let mut d = connect(addr);
        d.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .expect("write");
        let (reply, _) = read_to_close(&mut d);
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    }
}
