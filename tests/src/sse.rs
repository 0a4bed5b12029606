//! A minimal client of the change feed's event stream (`GET /v1/collections/{c}/changes` with
//! `Accept: text/event-stream`) over a raw HTTP/1.1 connection: events arrive on a channel
//! from a reader thread, the connection can be dropped at will (a client that goes away), and
//! its receive buffer can be made small (a client too slow to keep up).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// One event of the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// Its `id` (a change's cursor), if it had one.
    pub id: Option<u64>,
    /// Its `event` name (empty for a change).
    pub event: String,
    /// Its data (empty for the start event, which carries only the start cursor as its id).
    pub data: String,
    /// When the reader thread had read it whole.
    pub received: std::time::Instant,
}

impl SseEvent {
    /// The data as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data)
            .unwrap_or_else(|e| panic!("event data is not JSON ({e}): {:?}", self.data))
    }
}

/// What the reader thread hands over.
#[derive(Debug)]
pub enum SseItem {
    /// An event.
    Event(SseEvent),
    /// A keep-alive comment.
    Comment(String),
    /// The stream ended (with why).
    Closed(String),
}

/// An open stream: the answer's status and, for a 200, its events.
pub struct SseStream {
    /// The HTTP status.
    pub status: u16,
    /// For a status other than 200: the body.
    pub body: String,
    socket: TcpStream,
    items: mpsc::Receiver<SseItem>,
    /// Set while paused: the sender the reader thread will get.
    pending: Option<mpsc::Sender<SseItem>>,
}

/// How to open a stream.
#[derive(Debug, Clone, Default)]
pub struct SseRequest {
    /// The path and query, encoded (`/v1/collections/situation/changes?prefix=a`).
    pub path: String,
    /// The bearer token.
    pub token: Option<String>,
    /// The `Last-Event-ID` header.
    pub last_event_id: Option<u64>,
    /// A small socket receive buffer (bytes), set before connecting: a slow reader.
    pub recv_buffer: Option<u32>,
    /// Do not read the stream until [`SseStream::start_reading`] is called.
    pub paused: bool,
}

impl SseStream {
    /// Connects to `addr` and sends `req`; reads the answer's head (and an error body).
    pub fn open(addr: SocketAddr, req: &SseRequest) -> Result<SseStream> {
        let socket = connect(addr, req.recv_buffer)?;
        socket.set_read_timeout(Some(Duration::from_secs(60)))?;
        let mut head = format!(
            "GET {} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\nConnection: close\r\n",
            req.path
        );
        if let Some(token) = &req.token {
            head.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        if let Some(id) = req.last_event_id {
            head.push_str(&format!("Last-Event-ID: {id}\r\n"));
        }
        head.push_str("\r\n");
        (&socket).write_all(head.as_bytes())?;
        let (tx, items) = mpsc::channel();
        let mut stream = SseStream {
            status: 0,
            body: String::new(),
            socket,
            items,
            pending: None,
        };
        if req.paused {
            // Nothing is read until asked: the status is not known yet.
            stream.pending = Some(tx);
            return Ok(stream);
        }
        stream.pending = Some(tx);
        stream.start_reading()?;
        Ok(stream)
    }

    /// Starts reading (at once unless opened paused): waits for the answer's head and sets
    /// [`SseStream::status`] (and [`SseStream::body`] for an error).
    pub fn start_reading(&mut self) -> Result<()> {
        let Some(tx) = self.pending.take() else {
            return Ok(());
        };
        let (head_tx, head_rx) = mpsc::channel();
        let socket = self.socket.try_clone()?;
        thread::spawn(move || read_all(socket, &head_tx, &tx));
        let (status, body) = head_rx
            .recv_timeout(Duration::from_secs(60))
            .context("no answer head within 60 s")?;
        self.status = status;
        self.body = body;
        Ok(())
    }

    /// The next item within `timeout` (`None`: nothing came).
    pub fn next_item(&self, timeout: Duration) -> Option<SseItem> {
        self.items.recv_timeout(timeout).ok()
    }

    /// The next event (keep-alive comments skipped) within `timeout`; an error when the
    /// stream closed or nothing came.
    pub fn next_event(&self, timeout: Duration) -> Result<SseEvent> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.items.recv_timeout(left) {
                Ok(SseItem::Event(e)) => return Ok(e),
                Ok(SseItem::Comment(_)) => continue,
                Ok(SseItem::Closed(why)) => bail!("the stream closed: {why}"),
                Err(_) => bail!("no event within {timeout:?}"),
            }
        }
    }

    /// Drops the connection (a client that goes away).
    pub fn drop_connection(&self) {
        let _ = self.socket.shutdown(Shutdown::Both);
    }
}

impl Drop for SseStream {
    fn drop(&mut self) {
        self.drop_connection();
    }
}

/// Reads the head (handed to `head`), then the events of a 200 (handed to `items`).
fn read_all(socket: TcpStream, head: &mpsc::Sender<(u16, String)>, items: &mpsc::Sender<SseItem>) {
    let mut reader = BufReader::new(socket);
    let (status, chunked) = match read_head(&mut reader) {
        Ok(h) => h,
        Err(e) => {
            let _ = head.send((0, e.to_string()));
            let _ = items.send(SseItem::Closed(e.to_string()));
            return;
        }
    };
    let mut body = BufReader::new(Chunked {
        inner: reader,
        chunked,
        left: 0,
    });
    if status != 200 {
        let mut text = String::new();
        let _ = body.read_to_string(&mut text);
        let _ = head.send((status, text));
        let _ = items.send(SseItem::Closed(format!("HTTP {status}")));
        return;
    }
    let _ = head.send((status, String::new()));
    let why = read_events(&mut body, items);
    let _ = items.send(SseItem::Closed(why));
}

fn read_events(body: &mut impl BufRead, items: &mpsc::Sender<SseItem>) -> String {
    let blank = || SseEvent {
        id: None,
        event: String::new(),
        data: String::new(),
        received: std::time::Instant::now(),
    };
    let mut event = blank();
    let mut has_fields = false;
    loop {
        let mut line = String::new();
        match body.read_line(&mut line) {
            Ok(0) => return "end of stream".into(),
            Ok(_) => {}
            Err(e) => return e.to_string(),
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            if has_fields {
                let mut done = std::mem::replace(&mut event, blank());
                done.received = std::time::Instant::now();
                if items.send(SseItem::Event(done)).is_err() {
                    return "nobody listens".into();
                }
            }
            has_fields = false;
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "" => {
                let _ = items.send(SseItem::Comment(value.to_owned()));
            }
            "id" => {
                event.id = value.parse().ok();
                has_fields = true;
            }
            "event" => {
                event.event = value.to_owned();
                has_fields = true;
            }
            "data" => {
                if !event.data.is_empty() {
                    event.data.push('\n');
                }
                event.data.push_str(value);
                has_fields = true;
            }
            _ => {}
        }
    }
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

/// The status and whether the body is chunked.
fn read_head(reader: &mut impl BufRead) -> io::Result<(u16, bool)> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no HTTP status line"))?;
    let mut chunked = false;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(bad("the head ended early"));
        }
        let line = line.trim_end();
        if line.is_empty() {
            return Ok((status, chunked));
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("transfer-encoding") && value.contains("chunked") {
                chunked = true;
            }
        }
    }
}

/// A chunked body (or the rest of the connection when not chunked).
struct Chunked {
    inner: BufReader<TcpStream>,
    chunked: bool,
    left: usize,
}

impl Read for Chunked {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if !self.chunked {
            return self.inner.read(buf);
        }
        if self.left == 0 {
            let mut line = String::new();
            if self.inner.read_line(&mut line)? == 0 {
                return Ok(0);
            }
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| bad("bad chunk size"))?;
            if size == 0 {
                return Ok(0);
            }
            self.left = size;
        }
        let want = buf.len().min(self.left);
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Ok(0);
        }
        self.left -= n;
        if self.left == 0 {
            let mut crlf = String::new();
            self.inner.read_line(&mut crlf)?;
        }
        Ok(n)
    }
}

/// Connects, with a small receive buffer when asked.
fn connect(addr: SocketAddr, recv_buffer: Option<u32>) -> Result<TcpStream> {
    let Some(size) = recv_buffer else {
        return Ok(TcpStream::connect_timeout(&addr, Duration::from_secs(10))?);
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    let stream = rt.block_on(async {
        let socket = match addr {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        socket.set_recv_buffer_size(size)?;
        socket.connect(addr).await?.into_std()
    })?;
    stream.set_nonblocking(false)?;
    Ok(stream)
}
