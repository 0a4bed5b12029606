//! Bad HTTP input against a real daemon, over raw TCP: malformed requests, hostile headers and
//! bodies, invalid names, keys and paging parameters, slow clients. Every one gets a 4xx (a
//! JSON error body when the request reached the API) or a closed connection; nothing is
//! written and the daemon stays healthy.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use officesync_tests::Cluster;

/// Sends `request` on a fresh connection and returns what came back before the daemon closed
/// it (or 20 s passed). With `token`, the request carries it (after its `Host: x` header), so
/// the bad input reaches the checks behind authentication.
fn raw(addr: SocketAddr, token: Option<&str>, request: &[u8]) -> String {
    let request = match token {
        Some(token) => {
            let host = b"\r\nHost: x\r\n";
            match request.windows(host.len()).position(|w| w == host) {
                Some(at) => {
                    let mut with = request[..at + host.len()].to_vec();
                    with.extend_from_slice(format!("Authorization: Bearer {token}\r\n").as_bytes());
                    with.extend_from_slice(&request[at + host.len()..]);
                    with
                }
                None => request.to_vec(),
            }
        }
        None => request.to_vec(),
    };
    let mut s = TcpStream::connect(addr).expect("connect to the API");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("read timeout");
    // The daemon may answer (and close) before it has read everything: ignore write errors.
    let _ = s.write_all(&request);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn status_of(reply: &str) -> u16 {
    reply
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

fn put(path: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "PUT {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").into_bytes()
}

#[test]
fn every_bad_api_input_is_refused_and_writes_nothing() {
    let cluster = Cluster::new();
    let node = cluster.start_node("hefei");
    let addr = node.api_addr();
    let token = node.api().token().map(str::to_owned);
    let big_header = format!(
        "GET /health HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(512 * 1024)
    );
    let long_uri = get(&format!(
        "/v1/collections/situation/records/{}",
        "k".repeat(70_000)
    ));
    let mut chunked_over_limit = b"PUT /v1/collections/situation/records/big HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..5 {
        chunked_over_limit.extend_from_slice(b"100000\r\n");
        chunked_over_limit.extend(std::iter::repeat_n(b'v', 0x10_0000));
        chunked_over_limit.extend_from_slice(b"\r\n");
    }
    chunked_over_limit.extend_from_slice(b"0\r\n\r\n");
    // (name, request, expected status, whether the API itself answered: a JSON error body)
    let cases: Vec<(&str, Vec<u8>, u16, bool)> = vec![
        ("garbage request line", b"GARBAGE\r\n\r\n".to_vec(), 400, false),
        ("binary junk", vec![0xff, 0x00, 0x13, 0x37, b'\r', b'\n', b'\r', b'\n'], 400, false),
        ("header without a colon", b"GET /health HTTP/1.1\r\nHost x\r\n\r\n".to_vec(), 400, false),
        ("512 KiB header", big_header.into_bytes(), 431, false),
        ("70 kB key in the URI", long_uri, 414, false),
        (
            "non-numeric Content-Length",
            b"PUT /v1/collections/situation/records/k HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\nv".to_vec(),
            400,
            false,
        ),
        (
            "conflicting Content-Lengths",
            b"PUT /v1/collections/situation/records/k HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nvv".to_vec(),
            400,
            false,
        ),
        (
            "malformed chunk size",
            b"PUT /v1/collections/situation/records/k HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nv\r\n0\r\n\r\n".to_vec(),
            400,
            true,
        ),
        ("chunked body over the value limit", chunked_over_limit, 413, true),
        ("declared body over the value limit", put_head_only(5 << 20), 413, true),
        ("invalid collection name", put("/v1/collections/Bad!/records/k", b"v"), 400, true),
        ("collection name too long", put(&format!("/v1/collections/{}/records/k", "c".repeat(65)), b"v"), 400, true),
        ("collection path traversal", put("/v1/collections/..%2F..%2Fetc/records/k", b"v"), 400, true),
        ("empty key", put("/v1/collections/situation/records/", b"v"), 400, true),
        ("key of 1025 bytes", put(&format!("/v1/collections/situation/records/{}", "k".repeat(1025)), b"v"), 400, true),
        ("key not UTF-8", put("/v1/collections/situation/records/%ff%fe", b"v"), 400, true),
        ("broken percent-encoding", put("/v1/collections/situation/records/a%zz", b"v"), 400, true),
        ("limit 0", get("/v1/collections/situation/records?limit=0"), 400, true),
        ("limit 1001", get("/v1/collections/situation/records?limit=1001"), 400, true),
        ("limit not a number", get("/v1/collections/situation/records?limit=ten"), 400, true),
        ("all=maybe", get("/v1/collections/situation/records/k?all=maybe"), 400, true),
        ("unknown path", get("/v2/everything"), 404, true),
        (
            "wrong method",
            b"PATCH /v1/collections/situation/records/k HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n".to_vec(),
            405,
            true,
        ),
    ];
    let mut failures = Vec::new();
    for (name, request, expected, json) in cases {
        let reply = raw(addr, token.as_deref(), &request);
        let code = status_of(&reply);
        let body_ok = !json || reply.contains("\"error\"");
        // A request hyper cannot even parse may also just be closed without an answer.
        let closed_ok = !json && reply.is_empty();
        if !((code == expected && body_ok) || closed_ok) {
            failures.push(format!(
                "{name}: expected {expected}, got {:?}",
                reply.chars().take(300).collect::<String>()
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");

    // A client dribbling its headers is cut off by the header read timeout (10 s).
    let mut slow = TcpStream::connect(addr).expect("connect");
    slow.set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let start = Instant::now();
    let mut closed = false;
    for b in b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: "
        .iter()
        .cycle()
    {
        if slow.write_all(&[*b]).is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 64];
        match slow.read(&mut buf) {
            Ok(_) => {
                // An answer (a 408) or the end of the stream: the daemon is done with us.
                closed = true;
                break;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => {
                closed = true;
                break;
            }
        }
        if start.elapsed() > Duration::from_secs(20) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        closed,
        "a slowloris client was still connected after {:?}",
        start.elapsed()
    );
    assert!(
        start.elapsed() < Duration::from_secs(15),
        "cut off only after {:?}",
        start.elapsed()
    );

    // Nothing was written, and the daemon still serves.
    let status = node.status();
    let records: u64 = status["collections"]
        .as_object()
        .map(|m| m.values().filter_map(|c| c["records"].as_u64()).sum())
        .unwrap_or(0);
    let written: Vec<&String> = status["collections"]
        .as_object()
        .map(|m| m.keys().filter(|k| !k.starts_with('_')).collect())
        .unwrap_or_default();
    assert!(
        written.is_empty(),
        "collections written: {written:?} ({records} records)"
    );
    let health = raw(addr, None, &get("/health"));
    assert_eq!(status_of(&health), 200, "{health}");
}

/// A PUT declaring a body of `len` bytes and sending none of it.
fn put_head_only(len: usize) -> Vec<u8> {
    format!(
        "PUT /v1/collections/situation/records/big HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {len}\r\n\r\n"
    )
    .into_bytes()
}
