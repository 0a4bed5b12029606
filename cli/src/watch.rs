//! `watch COLL`: follows a collection's change feed (`GET /v1/collections/{c}/changes` as
//! server-sent events) and prints one line per change until Ctrl-C.
//!
//! The stream is read over a plain HTTP/1.1 connection with a read timeout: the daemon sends a
//! keep-alive comment every 15 s, so a connection silent for [`IDLE_TIMEOUT`] is dead. A
//! dropped connection, a daemon that stops (`closing`) or a cut-off for a slow reader
//! (`cutoff`) is followed by a reconnect that resumes after the last change received
//! (`Last-Event-ID`): no change is missed or printed twice.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use clap::Args;
use officesync_api::{ChangeBody, ErrorBody, FeedEnd};

use crate::client::ApiAddr;
use crate::exit::{CliError, Exit};
use crate::output;
use crate::urlenc::encode_component;
use crate::Global;

/// A stream with nothing, not even a keep-alive comment, for this long is dead.
const IDLE_TIMEOUT: Duration = Duration::from_secs(45);
/// Longest wait between two reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Longest response head or error body read.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Longest SSE line accepted (a change with the longest key is far below).
const MAX_LINE_BYTES: usize = 1 << 20;

/// `watch COLL [--prefix P] [--since CURSOR]`.
#[derive(Debug, Args)]
#[command(
    after_help = "Each line is CURSOR, KEY, VERSION, AUTHOR and put or deleted, tab \
                        separated; with --json one JSON object per line. Without --since it \
                        prints the changes made from now on. It reconnects by itself after a \
                        dropped connection or a daemon restart, resuming after the last change \
                        printed. Ctrl-C stops it."
)]
pub struct WatchArgs {
    /// Collection name.
    pub collection: String,
    /// Only keys starting with this prefix.
    #[arg(long, value_name = "P")]
    pub prefix: Option<String>,
    /// Start after this cursor (as printed before): every change since is printed first.
    #[arg(long, value_name = "CURSOR")]
    pub since: Option<u64>,
}

/// Why one connection ended.
enum Ended {
    /// The daemon ended the stream with a final event: resume from `resume_from`.
    Final { event: String, end: FeedEnd },
    /// The connection dropped or went silent.
    Dropped(String),
}

/// `watch`: connects, prints, reconnects, until Ctrl-C (or a refusal: bad collection, no
/// access, a cursor the log no longer keeps).
pub fn run(args: WatchArgs, global: &Global) -> Result<(), CliError> {
    if args.collection.is_empty() {
        return Err(CliError::usage("the collection name must not be empty"));
    }
    let addr = global.api_addr()?;
    let token = global.token_for(&addr)?;
    let mut path = format!(
        "/v1/collections/{}/changes",
        encode_component(&args.collection)
    );
    let mut query = Vec::new();
    if let Some(prefix) = &args.prefix {
        query.push(format!("prefix={}", encode_component(prefix)));
    }
    if let Some(since) = args.since {
        query.push(format!("since={since}"));
    }
    if !query.is_empty() {
        path = format!("{path}?{}", query.join("&"));
    }
    let mut stdout = io::stdout().lock();
    let mut last: Option<u64> = None;
    let mut connected_once = false;
    let mut backoff = Duration::from_millis(250);
    loop {
        let opened = open(&addr, &path, token.as_deref(), last, global.timeout);
        let reader = match opened {
            Ok(reader) => reader,
            Err(Refusal::Fatal(e)) => return Err(e),
            Err(Refusal::Retry(why)) if !connected_once => {
                return Err(CliError::new(
                    Exit::Unreachable,
                    format!("cannot follow the changes at officesyncd {addr}: {why}"),
                ))
            }
            Err(Refusal::Retry(why)) => {
                eprintln!("watch: {why}; retrying in {backoff:?}");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        connected_once = true;
        backoff = Duration::from_millis(250);
        match follow(reader, &mut last, global.json, &mut stdout)? {
            Ended::Final { event, end } if event == officesync_api::FEED_FORBIDDEN_EVENT => {
                return Err(CliError::new(
                    Exit::Forbidden,
                    format!(
                        "the daemon ended the feed: {} (the last change shown has cursor {})",
                        end.reason, end.resume_from
                    ),
                ));
            }
            Ended::Final { event, end } => {
                eprintln!(
                    "watch: the daemon ended the feed ({event}: {}); resuming after {}",
                    end.reason, end.resume_from
                );
                last = Some(end.resume_from);
                if event != officesync_api::FEED_CUTOFF_EVENT {
                    std::thread::sleep(backoff);
                }
            }
            Ended::Dropped(why) => {
                eprintln!("watch: connection lost ({why}); reconnecting");
                std::thread::sleep(backoff);
            }
        }
    }
}

/// Why a connection could not be opened.
enum Refusal {
    /// Try again later: unreachable, or all feeds busy (503).
    Retry(String),
    /// Stop: the daemon refused the request itself.
    Fatal(CliError),
}

/// Opens the stream; `last` (the last cursor received) goes as `Last-Event-ID`.
fn open(
    addr: &ApiAddr,
    path: &str,
    token: Option<&str>,
    last: Option<u64>,
    connect_timeout: Duration,
) -> Result<BufReader<Body>, Refusal> {
    let target = addr.to_string();
    let socket = target
        .to_socket_addrs()
        .map_err(|e| Refusal::Retry(e.to_string()))?
        .next()
        .ok_or_else(|| Refusal::Retry(format!("{target} resolves to no address")))?;
    let mut stream = TcpStream::connect_timeout(&socket, connect_timeout)
        .map_err(|e| Refusal::Retry(e.to_string()))?;
    let setup = stream
        .set_read_timeout(Some(IDLE_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(connect_timeout)));
    setup.map_err(|e| Refusal::Retry(e.to_string()))?;
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {target}\r\nAccept: text/event-stream\r\n\
         User-Agent: officesync/{}\r\n",
        env!("CARGO_PKG_VERSION")
    );
    if let Some(token) = token {
        request.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    if let Some(last) = last {
        request.push_str(&format!("Last-Event-ID: {last}\r\n"));
    }
    request.push_str("Connection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|e| Refusal::Retry(e.to_string()))?;
    let mut reader = BufReader::new(stream);
    let head = read_head(&mut reader).map_err(|e| Refusal::Retry(e.to_string()))?;
    let body = Body::new(reader, head.chunked, head.length);
    let mut body = BufReader::new(body);
    if head.status == 200 {
        return Ok(body);
    }
    let mut text = Vec::new();
    let _ = (&mut body)
        .take(MAX_HEAD_BYTES as u64)
        .read_to_end(&mut text);
    let message = serde_json::from_slice::<ErrorBody>(&text)
        .map(|e| e.error)
        .unwrap_or_else(|_| String::from_utf8_lossy(&text).trim().to_owned());
    let message = format!(
        "officesyncd at {addr} answered {}: {}",
        head.status,
        output::escape_message(&message)
    );
    match head.status {
        503 => Err(Refusal::Retry(message)),
        status => Err(Refusal::Fatal(CliError::new(
            Exit::for_status(status, false),
            message,
        ))),
    }
}

/// The parts of a response head the stream needs.
struct Head {
    status: u16,
    chunked: bool,
    length: Option<u64>,
}

fn bad_data(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// Reads one CRLF- (or LF-) terminated line of at most `max` bytes, without its end; `None`
/// at the end of the stream.
fn read_line(reader: &mut impl BufRead, max: usize) -> io::Result<Option<String>> {
    let mut line = Vec::new();
    let n = reader.take(max as u64 + 1).read_until(b'\n', &mut line)?;
    if n == 0 {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') {
        return Err(bad_data(if line.len() > max {
            "line too long"
        } else {
            "stream ended inside a line"
        }));
    }
    line.pop();
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    String::from_utf8(line)
        .map(Some)
        .map_err(|_| bad_data("not UTF-8"))
}

fn read_head(reader: &mut impl BufRead) -> io::Result<Head> {
    let status_line = read_line(reader, MAX_HEAD_BYTES)?
        .ok_or_else(|| bad_data("the connection closed before an answer"))?;
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .filter(|_| status_line.starts_with("HTTP/1."))
        .ok_or_else(|| bad_data(format!("not an HTTP answer: {status_line:?}")))?;
    let (mut chunked, mut length) = (false, None);
    loop {
        let line = read_line(reader, MAX_HEAD_BYTES)?
            .ok_or_else(|| bad_data("the connection closed inside the answer's head"))?;
        if line.is_empty() {
            break;
        }
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("content-length") {
            length = value.parse().ok();
        }
    }
    Ok(Head {
        status,
        chunked,
        length,
    })
}

/// A response body: chunked, of a known length, or up to the end of the connection.
struct Body {
    inner: BufReader<TcpStream>,
    chunked: bool,
    /// Bytes left in the current chunk, or of the whole body when not chunked.
    left: Option<u64>,
    done: bool,
}

impl Body {
    fn new(inner: BufReader<TcpStream>, chunked: bool, length: Option<u64>) -> Body {
        Body {
            inner,
            chunked,
            left: if chunked { Some(0) } else { length },
            done: false,
        }
    }
}

impl Read for Body {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        if self.chunked && self.left == Some(0) {
            let line = read_line(&mut self.inner, 1024)?
                .ok_or_else(|| bad_data("the stream ended inside a chunk"))?;
            let size = u64::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| bad_data(format!("bad chunk size {line:?}")))?;
            if size == 0 {
                self.done = true;
                return Ok(0);
            }
            self.left = Some(size);
        }
        let want = match self.left {
            Some(left) => buf.len().min(usize::try_from(left).unwrap_or(usize::MAX)),
            None => buf.len(),
        };
        if want == 0 {
            self.done = true;
            return Ok(0);
        }
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            self.done = true;
            return if self.left.is_some() && self.chunked {
                Err(bad_data("the stream ended inside a chunk"))
            } else {
                Ok(0)
            };
        }
        if let Some(left) = &mut self.left {
            *left -= n as u64;
            if *left == 0 && self.chunked {
                // Each chunk ends with CRLF.
                let end = read_line(&mut self.inner, 2)?;
                if end.as_deref() != Some("") {
                    return Err(bad_data("a chunk does not end with CRLF"));
                }
            }
        }
        Ok(n)
    }
}

/// Prints every change of one connection; `last` follows the id of each event.
fn follow(
    mut reader: impl BufRead,
    last: &mut Option<u64>,
    json: bool,
    out: &mut impl Write,
) -> Result<Ended, CliError> {
    let mut event = String::new();
    let mut data = String::new();
    let mut id: Option<u64> = None;
    loop {
        let line = match read_line(&mut reader, MAX_LINE_BYTES) {
            Ok(Some(line)) => line,
            Ok(None) => return Ok(Ended::Dropped("the daemon closed the connection".into())),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(Ended::Dropped(format!(
                    "nothing received for {IDLE_TIMEOUT:?}"
                )))
            }
            Err(e) => return Ok(Ended::Dropped(e.to_string())),
        };
        if !line.is_empty() {
            let (field, value) = line.split_once(':').unwrap_or((&line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "" => {} // a comment (keep-alive)
                "event" => event = value.to_owned(),
                "data" => {
                    if !data.is_empty() {
                        data.push('\n');
                    }
                    data.push_str(value);
                }
                "id" => id = value.parse().ok(),
                _ => {}
            }
            continue;
        }
        // A blank line dispatches the event.
        if let Some(id) = id.take() {
            *last = Some(id);
        }
        let (name, body) = (std::mem::take(&mut event), std::mem::take(&mut data));
        if body.is_empty() {
            continue;
        }
        if name == officesync_api::FEED_CUTOFF_EVENT
            || name == officesync_api::FEED_CLOSING_EVENT
            || name == officesync_api::FEED_FORBIDDEN_EVENT
        {
            let end: FeedEnd = serde_json::from_str(&body).map_err(|e| {
                CliError::failure(format!("the daemon's final {name} event is not JSON: {e}"))
            })?;
            return Ok(Ended::Final { event: name, end });
        }
        let change: ChangeBody = serde_json::from_str(&body)
            .map_err(|e| CliError::failure(format!("a change event is not JSON: {e}")))?;
        let line = if json {
            serde_json::to_string(&change)
                .map_err(|e| CliError::failure(format!("cannot print a change: {e}")))?
        } else {
            render(&change)
        };
        if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
            // The reader of stdout went away (a closed pipe): stop quietly.
            return Err(CliError::quiet(Exit::Success));
        }
    }
}

/// One change as a text line: `CURSOR KEY VERSION AUTHOR put|deleted`, tab separated.
fn render(c: &ChangeBody) -> String {
    format!(
        "{}\t{}\t{}\t{}\t{}",
        c.cursor,
        output::escape_text(&c.key),
        output::escape_text(&c.version),
        c.author.as_deref().map_or("-".into(), output::escape_text),
        if c.deleted { "deleted" } else { "put" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &str =
        "id: 4\n\n: keep-alive\n\nid: 5\ndata: {\"key\":\"a\",\"version\":\"h@1:2\",\
        \"author\":\"li@h\",\"hlc\":{\"ms\":1,\"logical\":0},\"deleted\":false,\"cursor\":5}\n\n\
        event: cutoff\ndata: {\"reason\":\"slow\",\"resume_from\":5}\n\n";

    #[test]
    fn changes_print_one_line_each_and_the_final_event_ends_the_connection() {
        let mut out = Vec::new();
        let mut last = None;
        let ended = follow(STREAM.as_bytes(), &mut last, false, &mut out).expect("follows");
        assert_eq!(
            String::from_utf8(out).expect("text"),
            "5\ta\th@1:2\tli@h\tput\n"
        );
        assert_eq!(last, Some(5));
        match ended {
            Ended::Final { event, end } => {
                assert_eq!(event, "cutoff");
                assert_eq!(end.resume_from, 5);
            }
            Ended::Dropped(why) => panic!("dropped: {why}"),
        }
        // An id without data (the stream's start) still moves the resume point.
        let mut last = None;
        let ended = follow("id: 9\n\n".as_bytes(), &mut last, true, &mut Vec::new()).expect("ok");
        assert!(matches!(ended, Ended::Dropped(_)));
        assert_eq!(last, Some(9));
    }
}
