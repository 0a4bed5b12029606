//! Baseline servers for the comparisons: `redis-server` and `nats-server` processes started on
//! free loopback ports in temp dirs (killed on drop), found on `PATH` (or `/usr/sbin`), never
//! installed; minimal clients speaking RESP and the NATS text protocol over a `TcpStream`;
//! and `/proc` readings (RSS, peak RSS, CPU time) of any process.

use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

/// Where to look for a server binary besides `PATH` (Debian puts nats-server in /usr/sbin).
const EXTRA_DIRS: [&str; 3] = ["/usr/sbin", "/usr/local/sbin", "/usr/local/bin"];

/// How long a server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// The path of server binary `name`, or why it is unavailable.
pub(crate) fn find_binary(name: &str) -> std::result::Result<PathBuf, String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(EXTRA_DIRS.iter().map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| format!("{name} not found on PATH (Debian package `{name}`)"))
}

/// A free loopback TCP port (bound and released; a race with other programs is unlikely).
pub(crate) fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A running server process on a loopback port, with its working dir; killed on drop.
pub(crate) struct Server {
    child: Child,
    /// Its client port on 127.0.0.1.
    pub(crate) port: u16,
    /// Its working directory (data, logs).
    pub(crate) dir: tempfile::TempDir,
}

impl Server {
    /// Spawns `bin` with `args` in a fresh temp dir (`args_for` gets that dir), output to
    /// `server.log` there, and waits until `port` accepts connections.
    pub(crate) fn spawn(
        name: &str,
        bin: &Path,
        port: u16,
        args_for: impl FnOnce(&Path) -> Result<Vec<String>>,
    ) -> Result<Server> {
        let dir = tempfile::tempdir()?;
        let args = args_for(dir.path())?;
        let log = std::fs::File::create(dir.path().join("server.log"))?;
        let child = Command::new(bin)
            .args(&args)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;
        let mut server = Server { child, port, dir };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(server);
            }
            if let Some(status) = server.child.try_wait()? {
                bail!("{name} exited ({status}) at start: {}", server.log_tail());
            }
            ensure!(
                Instant::now() < deadline,
                "{name} not listening on {port} within {START_TIMEOUT:?}: {}",
                server.log_tail()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last lines of the server's log.
    pub(crate) fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(5)..].join(" | ")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Already exited: nothing to kill; the reap below still collects it.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A process's memory and CPU from `/proc`.
pub(crate) mod procfs {
    /// A `kB` field of `/proc/PID/status` in MiB (`VmRSS`, `VmHWM`).
    fn status_mib(pid: u32, field: &str) -> Option<f64> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find(|l| l.starts_with(field))?;
        let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb / 1024.0)
    }

    /// Resident memory now, MiB.
    pub(crate) fn rss_mib(pid: u32) -> Option<f64> {
        status_mib(pid, "VmRSS:")
    }

    /// Resident anonymous memory now (the process's own heap, stacks and buffers, without
    /// the pages of its executable and libraries that every process of the binary shares),
    /// MiB.
    pub(crate) fn anon_mib(pid: u32) -> Option<f64> {
        status_mib(pid, "RssAnon:")
    }

    /// Peak resident memory since start (or the last reset), MiB.
    pub(crate) fn peak_rss_mib(pid: u32) -> Option<f64> {
        status_mib(pid, "VmHWM:")
    }

    /// User + system CPU seconds so far (clock ticks of 1/100 s, Linux's fixed USER_HZ).
    pub(crate) fn cpu_secs(pid: u32) -> Option<f64> {
        stat_cpu_secs(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
    }

    /// User + system CPU seconds so far of the threads of `pid` named `comm` (Linux keeps 15
    /// bytes of a thread's name), e.g. the store writer's.
    pub(crate) fn thread_cpu_secs(pid: u32, comm: &str) -> Option<f64> {
        let mut total = None;
        for task in std::fs::read_dir(format!("/proc/{pid}/task"))
            .ok()?
            .flatten()
        {
            let name = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if name.trim_end() != comm {
                continue;
            }
            // A thread gone since the listing is skipped; one whose line does not parse makes
            // the figure unreadable rather than too low.
            if let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) {
                *total.get_or_insert(0.0) += stat_cpu_secs(&stat)?;
            }
        }
        total
    }

    /// utime + stime of a `/proc/…/stat` line, seconds.
    fn stat_cpu_secs(stat: &str) -> Option<f64> {
        // Fields after the command name (which may hold spaces) start after the last ')'.
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after ')'.
        let utime: f64 = fields.get(11)?.parse().ok()?;
        let stime: f64 = fields.get(12)?.parse().ok()?;
        Some((utime + stime) / 100.0)
    }

    /// The whole machine's busy and total CPU time so far, in clock ticks (`/proc/stat`'s
    /// `cpu` line; idle and I/O wait are not busy).
    pub(crate) fn cpu_times() -> Option<(u64, u64)> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let line = stat.lines().find(|l| l.starts_with("cpu "))?;
        let ticks: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(|t| t.parse().ok())
            .collect::<Option<_>>()?;
        let total: u64 = ticks.iter().sum();
        let idle = ticks.get(3)? + ticks.get(4)?;
        Some((total - idle, total))
    }
}

// ---------------------------------------------------------------------------------------
// Redis

/// Starts `redis-server` on a free port without persistence (no RDB saves, no AOF), with
/// diskless replication that starts at once; `replica_of` makes it a replica of that port.
pub(crate) fn redis(bin: &Path, replica_of: Option<u16>) -> Result<Server> {
    let port = free_port()?;
    Server::spawn("redis-server", bin, port, |dir| {
        let mut args: Vec<String> = [
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--dir",
            &dir.display().to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
            "--daemonize",
            "no",
            "--repl-diskless-sync",
            "yes",
            "--repl-diskless-sync-delay",
            "0",
            "--client-output-buffer-limit",
            "replica 0 0 0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some(primary) = replica_of {
            args.extend([
                "--replicaof".into(),
                "127.0.0.1".into(),
                primary.to_string(),
            ]);
        }
        Ok(args)
    })
}

/// A RESP reply.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Resp {
    /// `+OK`.
    Simple(String),
    /// `:N`.
    Int(i64),
    /// `$N` (None for `$-1`).
    Bulk(Option<Vec<u8>>),
    /// `*N` (None for `*-1`).
    Array(Option<Vec<Resp>>),
}

impl Resp {
    /// The reply as text (simple or bulk string).
    pub(crate) fn text(&self) -> String {
        match self {
            Resp::Simple(s) => s.clone(),
            Resp::Bulk(Some(b)) => String::from_utf8_lossy(b).into_owned(),
            Resp::Int(n) => n.to_string(),
            other => format!("{other:?}"),
        }
    }
}

/// A blocking RESP connection (buffered writes: call [`RedisConn::flush`] after pipelining).
pub(crate) struct RedisConn {
    reader: BufReader<TcpStream>,
    writer: BufWriter<TcpStream>,
}

impl RedisConn {
    /// Connects to 127.0.0.1:`port`.
    pub(crate) fn connect(port: u16) -> Result<RedisConn> {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_nodelay(true)?;
        Ok(RedisConn {
            reader: BufReader::with_capacity(1 << 16, stream.try_clone()?),
            writer: BufWriter::with_capacity(1 << 16, stream),
        })
    }

    /// Splits off a second handle on the same socket for writing (pipelining from another
    /// thread while this one reads replies).
    pub(crate) fn writer_handle(&self) -> Result<BufWriter<TcpStream>> {
        Ok(BufWriter::with_capacity(
            1 << 16,
            self.writer.get_ref().try_clone()?,
        ))
    }

    /// Queues one command.
    pub(crate) fn send(&mut self, args: &[&[u8]]) -> Result<()> {
        write_command(&mut self.writer, args)
    }

    /// Sends the queued commands.
    pub(crate) fn flush(&mut self) -> Result<()> {
        Ok(self.writer.flush()?)
    }

    /// Reads one reply; an error reply is an `Err`.
    pub(crate) fn read(&mut self) -> Result<Resp> {
        read_resp(&mut self.reader)
    }

    /// Sends one command and reads its reply.
    pub(crate) fn cmd(&mut self, args: &[&str]) -> Result<Resp> {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        self.send(&args)?;
        self.flush()?;
        self.read()
    }

    /// `INFO section` as `field → value`.
    pub(crate) fn info(&mut self, section: &str) -> Result<Vec<(String, String)>> {
        let text = self.cmd(&["INFO", section])?.text();
        Ok(text
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
            .collect())
    }
}

/// Writes one RESP command (array of bulk strings).
pub(crate) fn write_command(w: &mut impl Write, args: &[&[u8]]) -> Result<()> {
    write!(w, "*{}\r\n", args.len())?;
    for a in args {
        write!(w, "${}\r\n", a.len())?;
        w.write_all(a)?;
        w.write_all(b"\r\n")?;
    }
    Ok(())
}

/// Reads one RESP value.
fn read_resp(r: &mut impl BufRead) -> Result<Resp> {
    let mut line = String::new();
    ensure!(r.read_line(&mut line)? > 0, "redis closed the connection");
    let line = line.trim_end_matches("\r\n");
    let (kind, rest) = line.split_at(1.min(line.len()));
    Ok(match kind {
        "+" => Resp::Simple(rest.to_owned()),
        "-" => bail!("redis error: {rest}"),
        ":" => Resp::Int(rest.parse()?),
        "$" => {
            let n: i64 = rest.parse()?;
            if n < 0 {
                Resp::Bulk(None)
            } else {
                let mut buf = vec![0; n as usize + 2];
                r.read_exact(&mut buf)?;
                buf.truncate(n as usize);
                Resp::Bulk(Some(buf))
            }
        }
        "*" => {
            let n: i64 = rest.parse()?;
            if n < 0 {
                Resp::Array(None)
            } else {
                let mut items = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    items.push(read_resp(r)?);
                }
                Resp::Array(Some(items))
            }
        }
        _ => bail!("bad RESP line {line:?}"),
    })
}

/// Writes `n` records (`key(i)`, `value(i)`) to redis at `port` with pipelined `SET`s.
pub(crate) fn redis_fill(
    port: u16,
    n: usize,
    key: impl Fn(usize) -> String,
    value: impl Fn(usize) -> Vec<u8>,
) -> Result<()> {
    let mut c = RedisConn::connect(port)?;
    const WINDOW: usize = 1_000;
    let mut i = 0;
    while i < n {
        let end = (i + WINDOW).min(n);
        for j in i..end {
            c.send(&[b"SET", key(j).as_bytes(), &value(j)])?;
        }
        c.flush()?;
        for _ in i..end {
            c.read()?;
        }
        i = end;
    }
    Ok(())
}

/// Waits until the replica at `port` has finished its sync with the primary and holds
/// `keys` keys. Returns when that was seen (`None`: not within `timeout`).
pub(crate) fn redis_wait_synced(
    port: u16,
    keys: i64,
    timeout: Duration,
) -> Result<Option<Instant>> {
    let deadline = Instant::now() + timeout;
    let mut c = RedisConn::connect(port)?;
    loop {
        let info = c.info("replication")?;
        let field = |k: &str| info.iter().find(|(f, _)| f == k).map(|(_, v)| v.as_str());
        if field("master_link_status") == Some("up")
            && field("master_sync_in_progress") == Some("0")
        {
            if let Resp::Int(n) = c.cmd(&["DBSIZE"])? {
                if n >= keys {
                    return Ok(Some(Instant::now()));
                }
            }
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

// ---------------------------------------------------------------------------------------
// NATS

/// Starts `nats-server` with JetStream (file storage in its dir, JetStream `domain`), on a free
/// client port; with `leaf_listen` it accepts leaf nodes there, with `leaf_remote` it connects
/// as a leaf node to that port.
pub(crate) fn nats(
    bin: &Path,
    domain: &str,
    leaf_listen: Option<u16>,
    leaf_remote: Option<u16>,
) -> Result<Server> {
    let port = free_port()?;
    let domain = domain.to_owned();
    Server::spawn("nats-server", bin, port, |dir| {
        let mut conf = format!(
            "listen: 127.0.0.1:{port}\nserver_name: {domain}\nmax_payload: 8MB\n\
             jetstream {{\n  store_dir: \"{}\"\n  domain: {domain}\n  max_memory_store: 1GB\n  max_file_store: 64GB\n}}\n",
            dir.join("js").display()
        );
        if let Some(p) = leaf_listen {
            conf.push_str(&format!("leafnodes {{\n  listen: 127.0.0.1:{p}\n}}\n"));
        }
        if let Some(p) = leaf_remote {
            conf.push_str(&format!(
                "leafnodes {{\n  remotes: [ {{ url: \"nats-leaf://127.0.0.1:{p}\" }} ]\n}}\n"
            ));
        }
        let path = dir.join("nats.conf");
        std::fs::write(&path, conf)?;
        Ok(vec!["-c".into(), path.display().to_string()])
    })
}

/// One message delivered to a subscription.
#[derive(Debug)]
pub(crate) struct NatsMsg {
    /// Its subject.
    pub(crate) subject: String,
    /// Its payload (headers stripped).
    pub(crate) payload: Vec<u8>,
    /// Its headers block, if any (`NATS/1.0 503` for "no responders").
    pub(crate) headers: Option<String>,
}

/// A blocking NATS connection (text protocol, headers on, no TLS).
pub(crate) struct NatsConn {
    reader: BufReader<TcpStream>,
    writer: BufWriter<TcpStream>,
    next_sid: u64,
    inbox: String,
    next_req: u64,
}

impl NatsConn {
    /// Connects to 127.0.0.1:`port` and completes the CONNECT / PING / PONG handshake.
    pub(crate) fn connect(port: u16) -> Result<NatsConn> {
        let stream = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port)))?;
        stream.set_nodelay(true)?;
        let mut c = NatsConn {
            reader: BufReader::with_capacity(1 << 16, stream.try_clone()?),
            writer: BufWriter::with_capacity(1 << 16, stream),
            next_sid: 1,
            inbox: format!("_INBOX.bench{port}x{}", std::process::id()),
            next_req: 0,
        };
        let mut info = String::new();
        c.reader.read_line(&mut info)?;
        ensure!(
            info.starts_with("INFO"),
            "nats: expected INFO, got {info:?}"
        );
        c.writer.write_all(
            b"CONNECT {\"verbose\":false,\"pedantic\":false,\"headers\":true,\"no_responders\":true,\"lang\":\"bench\",\"version\":\"0\"}\r\nPING\r\n",
        )?;
        c.writer.flush()?;
        loop {
            let mut line = String::new();
            ensure!(c.reader.read_line(&mut line)? > 0, "nats closed at connect");
            if line.starts_with("PONG") {
                break;
            }
            ensure!(!line.starts_with("-ERR"), "nats: {line}");
        }
        let inbox_sub = format!("{}.*", c.inbox);
        c.subscribe(&inbox_sub)?;
        c.flush()?;
        Ok(c)
    }

    /// Subscribes to `subject`; returns the subscription id.
    pub(crate) fn subscribe(&mut self, subject: &str) -> Result<u64> {
        let sid = self.next_sid;
        self.next_sid += 1;
        write!(self.writer, "SUB {subject} {sid}\r\n")?;
        Ok(sid)
    }

    /// Queues a publish of `payload` on `subject` (reply to `reply` if given).
    pub(crate) fn publish(
        &mut self,
        subject: &str,
        reply: Option<&str>,
        payload: &[u8],
    ) -> Result<()> {
        match reply {
            Some(r) => write!(self.writer, "PUB {subject} {r} {}\r\n", payload.len())?,
            None => write!(self.writer, "PUB {subject} {}\r\n", payload.len())?,
        }
        self.writer.write_all(payload)?;
        self.writer.write_all(b"\r\n")?;
        Ok(())
    }

    /// Sends what is queued.
    pub(crate) fn flush(&mut self) -> Result<()> {
        Ok(self.writer.flush()?)
    }

    /// Sends PING and reads until PONG (messages in between are dropped): the server has
    /// processed everything sent before.
    pub(crate) fn round_trip(&mut self) -> Result<()> {
        self.writer.write_all(b"PING\r\n")?;
        self.flush()?;
        loop {
            match self.next_event()? {
                Event::Pong => return Ok(()),
                Event::Msg(_) => {}
            }
        }
    }

    /// The next message delivered to any subscription (answers server PINGs on the way).
    pub(crate) fn next_msg(&mut self) -> Result<NatsMsg> {
        loop {
            if let Event::Msg(m) = self.next_event()? {
                return Ok(m);
            }
        }
    }

    fn next_event(&mut self) -> Result<Event> {
        loop {
            let mut line = String::new();
            ensure!(
                self.reader.read_line(&mut line)? > 0,
                "nats closed the connection"
            );
            let line = line.trim_end();
            let mut parts = line.split_whitespace();
            match parts.next() {
                Some("PING") => {
                    self.writer.write_all(b"PONG\r\n")?;
                    self.writer.flush()?;
                }
                Some("PONG") => return Ok(Event::Pong),
                Some("+OK") | Some("INFO") => {}
                Some("-ERR") => bail!("nats: {line}"),
                Some("MSG") => {
                    let f: Vec<&str> = parts.collect();
                    let subject = f.first().context("MSG without subject")?.to_string();
                    let len: usize = f.last().context("MSG without size")?.parse()?;
                    let mut buf = vec![0; len + 2];
                    self.reader.read_exact(&mut buf)?;
                    buf.truncate(len);
                    return Ok(Event::Msg(NatsMsg {
                        subject,
                        payload: buf,
                        headers: None,
                    }));
                }
                Some("HMSG") => {
                    let f: Vec<&str> = parts.collect();
                    ensure!(f.len() >= 4, "bad HMSG {line:?}");
                    let subject = f[0].to_string();
                    let total: usize = f[f.len() - 1].parse()?;
                    let hdr: usize = f[f.len() - 2].parse()?;
                    let mut buf = vec![0; total + 2];
                    self.reader.read_exact(&mut buf)?;
                    buf.truncate(total);
                    let payload = buf.split_off(hdr.min(total));
                    return Ok(Event::Msg(NatsMsg {
                        subject,
                        payload,
                        headers: Some(String::from_utf8_lossy(&buf).into_owned()),
                    }));
                }
                _ => bail!("nats: unexpected line {line:?}"),
            }
        }
    }

    /// Sends `payload` to `subject` and waits for the reply (JSON expected), at most
    /// `timeout`; a "no responders" status is an error.
    pub(crate) fn request(
        &mut self,
        subject: &str,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<Value> {
        self.next_req += 1;
        let reply = format!("{}.{}", self.inbox, self.next_req);
        self.publish(subject, Some(&reply), payload)?;
        self.flush()?;
        let stream = self.reader.get_ref().try_clone()?;
        stream.set_read_timeout(Some(timeout))?;
        let result = loop {
            let m = match self.next_msg() {
                Ok(m) => m,
                Err(e) => break Err(e.context(format!("nats request {subject}"))),
            };
            if m.subject != reply {
                continue;
            }
            if let Some(h) = &m.headers {
                if h.starts_with("NATS/1.0 503") {
                    break Err(anyhow::anyhow!("nats request {subject}: no responders"));
                }
            }
            break serde_json::from_slice::<Value>(&m.payload)
                .with_context(|| format!("nats reply to {subject}"));
        };
        stream.set_read_timeout(None)?;
        let v = result?;
        if let Some(err) = v.get("error") {
            bail!("nats request {subject}: {err}");
        }
        Ok(v)
    }

    /// Splits off a raw writer on the same socket (publishing from another thread).
    pub(crate) fn writer_handle(&self) -> Result<BufWriter<TcpStream>> {
        Ok(BufWriter::with_capacity(
            1 << 16,
            self.writer.get_ref().try_clone()?,
        ))
    }
}

enum Event {
    Pong,
    Msg(NatsMsg),
}

/// Writes one `PUB` to a raw writer (see [`NatsConn::writer_handle`]).
pub(crate) fn nats_pub(w: &mut impl Write, subject: &str, payload: &[u8]) -> Result<()> {
    write!(w, "PUB {subject} {}\r\n", payload.len())?;
    w.write_all(payload)?;
    w.write_all(b"\r\n")?;
    Ok(())
}

/// Request timeout for JetStream API calls.
pub(crate) const JS_TIMEOUT: Duration = Duration::from_secs(10);

/// A hub server (domain `hub`, accepting leaf nodes) and a leaf server (domain `leaf`) that
/// connects to it, with the leaf link confirmed up.
pub(crate) struct NatsPair {
    /// The server holding the source bucket.
    pub(crate) hub: Server,
    /// The leaf server holding the mirror.
    pub(crate) leaf: Server,
}

/// KV bucket name used by every NATS baseline.
pub(crate) const BUCKET: &str = "bench";

impl NatsPair {
    /// Starts both servers and waits until the leaf reaches the hub's JetStream API.
    pub(crate) fn start(bin: &Path) -> Result<NatsPair> {
        let leaf_port = free_port()?;
        let hub = nats(bin, "hub", Some(leaf_port), None)?;
        let leaf = nats(bin, "leaf", None, Some(leaf_port))?;
        let mut c = NatsConn::connect(leaf.port)?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match c.request("$JS.hub.API.INFO", b"", Duration::from_secs(1)) {
                Ok(_) => break,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => return Err(e.context("leaf node never reached the hub")),
            }
        }
        Ok(NatsPair { hub, leaf })
    }

    /// Creates the KV bucket (a stream `KV_bench`, file storage, one value per key) on the hub.
    pub(crate) fn create_bucket(&self) -> Result<()> {
        let mut c = NatsConn::connect(self.hub.port)?;
        let cfg = serde_json::json!({
            "name": format!("KV_{BUCKET}"), "subjects": [format!("$KV.{BUCKET}.>")],
            "retention": "limits", "max_msgs_per_subject": 1, "discard": "new",
            "storage": "file", "num_replicas": 1, "allow_rollup_hdrs": true,
            "deny_delete": true, "allow_direct": true, "max_msg_size": -1,
        });
        c.request(
            &format!("$JS.API.STREAM.CREATE.KV_{BUCKET}"),
            cfg.to_string().as_bytes(),
            JS_TIMEOUT,
        )?;
        Ok(())
    }

    /// Creates the mirror of the bucket on the leaf (file storage), sourced over the leaf
    /// node through the hub's JetStream domain.
    pub(crate) fn create_mirror(&self) -> Result<()> {
        let mut c = NatsConn::connect(self.leaf.port)?;
        let cfg = serde_json::json!({
            "name": format!("KV_{BUCKET}_mirror"), "storage": "file", "num_replicas": 1,
            "retention": "limits", "max_msgs_per_subject": 1, "discard": "old",
            "mirror": { "name": format!("KV_{BUCKET}"),
                        "external": { "api": "$JS.hub.API", "deliver": "" } },
        });
        c.request(
            &format!("$JS.API.STREAM.CREATE.KV_{BUCKET}_mirror"),
            cfg.to_string().as_bytes(),
            JS_TIMEOUT,
        )?;
        Ok(())
    }
}

/// Messages stored in `stream` on the server at `port` (its local domain).
pub(crate) fn stream_messages(c: &mut NatsConn, stream: &str) -> Result<u64> {
    let info = c.request(&format!("$JS.API.STREAM.INFO.{stream}"), b"", JS_TIMEOUT)?;
    info["state"]["messages"]
        .as_u64()
        .with_context(|| format!("no state.messages in {info}"))
}

/// Publishes `n` KV puts (`$KV.bench.<key(i)>`) to the hub, pipelined without acks, then
/// waits until the bucket holds them all.
pub(crate) fn nats_fill(
    port: u16,
    n: usize,
    key: impl Fn(usize) -> String,
    value: impl Fn(usize) -> Vec<u8>,
    timeout: Duration,
) -> Result<()> {
    let mut c = NatsConn::connect(port)?;
    for i in 0..n {
        c.publish(&format!("$KV.{BUCKET}.{}", key(i)), None, &value(i))?;
        if i % 10_000 == 9_999 {
            c.round_trip()?;
        }
    }
    c.round_trip()?;
    let deadline = Instant::now() + timeout;
    loop {
        let got = stream_messages(&mut c, &format!("KV_{BUCKET}"))?;
        if got >= n as u64 {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "NATS bucket holds {got} of {n} records after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
