//! Tests of the `transport` module: real endpoints on loopback with certificates made in
//! temporary directories.

#![allow(clippy::unwrap_used)] // Tests fail loudly on unexpected errors.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use officesync_protocol::wire::{
    encode_message, encode_raw_frame, ErrorCode, ErrorFrame, FrameFlags, Heartbeat, Message,
    MessageV1, WireError, FRAME_HEADER_LEN, MAX_FRAME_BYTES,
};
use tempfile::TempDir;
use tokio::sync::{mpsc, watch};
use tokio::time::timeout;

use super::dial::{dial_once, Backoff};
use super::*;
use crate::config::Config;
use crate::pki::{self, IssueOptions};

/// Generous bound for things that happen in milliseconds on loopback.
const SOON: Duration = Duration::from_secs(10);
/// How long to watch for something that must not happen.
const QUIET: Duration = Duration::from_millis(1500);

/// A deployment: one CA in a temporary directory, and the bundles issued from it.
struct Deployment {
    dir: TempDir,
}

impl Deployment {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        pki::init_ca(&dir.path().join("ca"), false).unwrap();
        Self { dir }
    }

    fn ca_dir(&self) -> PathBuf {
        self.dir.path().join("ca")
    }

    fn fingerprint(&self) -> String {
        let pem = fs::read_to_string(self.ca_dir().join(pki::CA_CERT_FILE)).unwrap();
        pki::ca_fingerprint(&pem).unwrap()
    }

    /// Issues `name` and returns its bundle directory.
    fn issue(&self, name: &str, admin: bool) -> PathBuf {
        let out = self.dir.path().join(name);
        let opts = IssueOptions {
            admin,
            ..IssueOptions::default()
        };
        pki::issue(name, &self.ca_dir(), &out, &opts).unwrap();
        out
    }

    /// A config for `name` listening on an ephemeral loopback port, dialing `peers`.
    fn config(&self, name: &str, admin: bool, peers: &[(&str, SocketAddr)]) -> Config {
        let bundle = self.issue(name, admin);
        config_for(name, &bundle, "127.0.0.1:0".parse().unwrap(), peers)
    }
}

fn config_for(
    name: &str,
    bundle: &Path,
    listen: SocketAddr,
    peers: &[(&str, SocketAddr)],
) -> Config {
    let mut b = Config::builder(name, bundle.join("data"), bundle).sync_listen(listen);
    for (peer, addr) in peers {
        b = b.peer(*peer, addr.to_string());
    }
    b.build()
}

/// A started transport with its shutdown switch and connection channel.
struct Running {
    transport: Transport,
    stop: watch::Sender<bool>,
    rx: mpsc::Receiver<PeerConnection>,
}

impl Running {
    fn start(config: &Config) -> Self {
        let transport = Transport::bind(config).unwrap();
        let (stop, shutdown) = watch::channel(false);
        let rx = transport.start(config.sync.peers.clone(), shutdown);
        Self {
            transport,
            stop,
            rx,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.transport.local_addr()
    }

    async fn next(&mut self) -> PeerConnection {
        timeout(SOON, self.rx.recv())
            .await
            .expect("no connection in time")
            .expect("channel closed")
    }

    /// Asserts that no connection is delivered for a while.
    async fn expect_none(&mut self) {
        if let Ok(Some(pc)) = timeout(QUIET, self.rx.recv()).await {
            panic!(
                "unexpected connection from {:?} ({:?})",
                pc.peer.name, pc.role
            );
        }
    }

    async fn stop(self) {
        self.stop.send_replace(true);
        self.transport.close().await;
    }
}

/// Polls `f` until it holds or [`SOON`] passes.
async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + SOON;
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn heartbeat(seq: u64) -> Message {
    Message::V1(MessageV1::Heartbeat(Heartbeat { now_ms: 1, seq }))
}

fn big_message() -> Message {
    Message::V1(MessageV1::Error(ErrorFrame {
        code: ErrorCode::Internal,
        detail: "the grain report from hefei; ".repeat(100),
    }))
}

#[tokio::test]
async fn two_nodes_connect_and_frames_round_trip() {
    let dep = Deployment::new();
    let mut hub = Running::start(&dep.config("general-office", true, &[]));
    let mut spoke = Running::start(&dep.config("hefei", false, &[("general-office", hub.addr())]));

    assert_eq!(hub.transport.cluster_id(), dep.fingerprint());
    assert_eq!(spoke.transport.cluster_id(), dep.fingerprint());
    assert_eq!(spoke.transport.identity().name, "hefei");

    let at_spoke = spoke.next().await;
    let at_hub = hub.next().await;
    assert_eq!(at_spoke.role, Role::Dialer);
    assert_eq!(at_spoke.peer.name, "general-office");
    assert!(at_spoke.peer.admin_cert);
    assert!(at_spoke.closed_notify.is_some());
    assert_eq!(at_spoke.remote, hub.addr());
    assert_eq!(at_hub.role, Role::Acceptor);
    assert_eq!(at_hub.peer.name, "hefei");
    assert!(!at_hub.peer.admin_cert);
    assert!(at_hub.closed_notify.is_none());
    assert_eq!(at_hub.peer.serial_hex.len(), 32);

    // Spoke → hub on a bidirectional stream, then hub → spoke on its other half.
    let (send, recv) = at_spoke.connection.open_bi().await.unwrap();
    let mut s_send = FramedSend::new(send).with_counters(at_spoke.counters.clone());
    let mut s_recv = FramedRecv::new(recv).with_counters(at_spoke.counters.clone());
    let n1 = s_send.send(&heartbeat(7), false).await.unwrap();
    let n2 = s_send.send(&big_message(), false).await.unwrap();
    let n3 = s_send.send(&big_message(), true).await.unwrap();
    assert!(n3 < n2 / 4, "zstd did not help: {n3} vs {n2}");
    // Small payloads go through the stream's zstd stream: a few bytes of block header at most.
    let n4 = s_send.send(&heartbeat(8), true).await.unwrap();
    assert!(n4 <= n1 + 8, "{n4} vs {n1}");
    s_send.finish().unwrap();
    assert_eq!(at_spoke.counters.bytes_sent(), (n1 + n2 + n3 + n4) as u64);

    let (send, recv) = timeout(SOON, at_hub.connection.accept_bi())
        .await
        .unwrap()
        .unwrap();
    let mut h_send = FramedSend::new(send);
    let mut h_recv = FramedRecv::new(recv).with_counters(at_hub.counters.clone());
    assert_eq!(h_recv.recv().await.unwrap(), Some(heartbeat(7)));
    assert_eq!(h_recv.recv().await.unwrap(), Some(big_message()));
    assert_eq!(h_recv.recv().await.unwrap(), Some(big_message()));
    assert_eq!(h_recv.recv().await.unwrap(), Some(heartbeat(8)));
    assert_eq!(h_recv.recv().await.unwrap(), None);
    assert_eq!(at_hub.counters.bytes_received(), (n1 + n2 + n3 + n4) as u64);

    let m1 = h_send.send(&big_message(), true).await.unwrap();
    let m2 = h_send.send(&heartbeat(9), false).await.unwrap();
    h_send.finish().unwrap();
    assert_eq!(h_send.counters().bytes_sent(), (m1 + m2) as u64);
    assert_eq!(s_recv.recv().await.unwrap(), Some(big_message()));
    assert_eq!(s_recv.recv().await.unwrap(), Some(heartbeat(9)));
    assert_eq!(s_recv.recv().await.unwrap(), None);
    assert_eq!(at_spoke.counters.bytes_received(), (m1 + m2) as u64);

    assert_eq!(spoke.transport.stats().connections_dialed, 1);
    assert_eq!(hub.transport.stats().connections_accepted, 1);
    spoke.stop().await;
    hub.stop().await;
}

#[tokio::test]
async fn certificate_from_another_ca_is_refused_both_ways() {
    let ours = Deployment::new();
    let theirs = Deployment::new();
    let mut hub = Running::start(&ours.config("general-office", false, &[]));
    // Same name, other CA: dialing in and being dialed are both refused.
    let mut rogue =
        Running::start(&theirs.config("hefei", false, &[("general-office", hub.addr())]));
    let mut dialing_out =
        Running::start(&ours.config("beijing-office", false, &[("hefei", rogue.addr())]));

    eventually("refused handshakes", || {
        hub.transport.stats().handshakes_failed >= 1
            && rogue.transport.stats().dials_failed >= 1
            && dialing_out.transport.stats().dials_failed >= 1
    })
    .await;
    tokio::join!(
        hub.expect_none(),
        rogue.expect_none(),
        dialing_out.expect_none()
    );

    // The dialer's error names the cause.
    let peer = PeerConfig {
        name: "general-office".into(),
        addr: hub.addr().to_string(),
    };
    let err = dial_once(&rogue.transport.endpoint, &peer, 0)
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::UntrustedPeer { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("presented a certificate not issued by this deployment's CA"),
        "{err}"
    );

    hub.stop().await;
    rogue.stop().await;
    dialing_out.stop().await;
}

#[tokio::test]
async fn dialer_learns_that_the_peer_refused_its_certificate() {
    let ours = Deployment::new();
    let theirs = Deployment::new();
    let hub = Running::start(&ours.config("general-office", false, &[]));
    // A node of another CA that nevertheless trusts ours: its own handshake completes, and only
    // the hub's refusal (after the client's Finished) tells it otherwise.
    let bundle = theirs.issue("hefei", false);
    let mut ca_pem = fs::read_to_string(bundle.join(pki::CA_CERT_FILE)).unwrap();
    ca_pem.push_str(&fs::read_to_string(ours.ca_dir().join(pki::CA_CERT_FILE)).unwrap());
    fs::write(bundle.join(pki::CA_CERT_FILE), ca_pem).unwrap();
    let config = config_for("hefei", &bundle, "127.0.0.1:0".parse().unwrap(), &[]);
    let rogue = Transport::bind(&config).unwrap();

    let peer = PeerConfig {
        name: "general-office".into(),
        addr: hub.addr().to_string(),
    };
    let err = dial_once(&rogue.endpoint, &peer, 0).await.unwrap_err();
    assert!(
        matches!(err, TransportError::RejectedByPeer { .. }),
        "{err}"
    );
    // Every deployment's CA has the same name: the hub finds its own CA as the issuer and
    // the signature check fails.
    assert!(err.to_string().contains("decrypt_error"), "{err}");

    rogue.close().await;
    hub.stop().await;
}

#[tokio::test]
async fn dialed_peer_with_another_name_is_refused() {
    let dep = Deployment::new();
    let mut hub = Running::start(&dep.config("general-office", false, &[]));
    dep.issue("hefei", false);
    // "hefei" is a real node of this deployment, but it is not the one at that address.
    let mut spoke = Running::start(&dep.config("beijing-office", false, &[("hefei", hub.addr())]));

    eventually("a failed dial", || {
        spoke.transport.stats().dials_failed >= 1
    })
    .await;
    tokio::join!(spoke.expect_none(), hub.expect_none());

    let peer = PeerConfig {
        name: "hefei".into(),
        addr: hub.addr().to_string(),
    };
    let err = dial_once(&spoke.transport.endpoint, &peer, 0)
        .await
        .unwrap_err();
    match &err {
        TransportError::WrongPeer { expected, .. } => assert_eq!(expected, "hefei"),
        other => panic!("expected WrongPeer, got {other}"),
    }
    assert_eq!(err.code(), Some(ErrorCode::NotAuthorized));

    spoke.stop().await;
    hub.stop().await;
}

#[tokio::test]
async fn dialer_reconnects_after_the_acceptor_restarts() {
    let dep = Deployment::new();
    let hub_config = dep.config("general-office", false, &[]);
    let mut hub = Running::start(&hub_config);
    let hub_addr = hub.addr();
    let mut spoke = Running::start(&dep.config("hefei", false, &[("general-office", hub_addr)]));

    let first = spoke.next().await;
    // The endpoint keeps its socket while any of its connections is held.
    drop(hub.next().await);
    hub.stop().await;
    timeout(SOON, first.connection.closed()).await.unwrap();

    // Restart on the same port (the old socket may take a moment to be released).
    let restarted_config = config_for(
        "general-office",
        hub_config.tls.cert.parent().unwrap(),
        hub_addr,
        &[],
    );
    let deadline = tokio::time::Instant::now() + SOON;
    let transport = loop {
        match Transport::bind(&restarted_config) {
            Ok(t) => break t,
            Err(e) => {
                assert!(tokio::time::Instant::now() < deadline, "cannot rebind: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let (stop, shutdown) = watch::channel(false);
    let rx = transport.start(Vec::new(), shutdown);
    let mut hub = Running {
        transport,
        stop,
        rx,
    };

    let started = tokio::time::Instant::now();
    let second = timeout(Duration::from_secs(20), spoke.rx.recv())
        .await
        .expect("no reconnect in time")
        .unwrap();
    assert_eq!(second.peer.name, "general-office");
    assert_eq!(second.role, Role::Dialer);
    assert_ne!(second.connection.stable_id(), first.connection.stable_id());
    assert_eq!(hub.next().await.peer.name, "hefei");
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(spoke.transport.stats().connections_dialed, 2);

    // Giving the session up makes the dialer close the connection and dial again.
    drop(second.closed_notify);
    timeout(SOON, second.connection.closed()).await.unwrap();
    let third = spoke.next().await;
    assert_eq!(third.peer.name, "general-office");

    spoke.stop().await;
    hub.stop().await;
}

#[tokio::test]
async fn oversize_and_malformed_frames_are_refused_without_panic() {
    let dep = Deployment::new();
    let mut hub = Running::start(&dep.config("general-office", false, &[]));
    let mut spoke = Running::start(&dep.config("hefei", false, &[("general-office", hub.addr())]));
    let at_spoke = spoke.next().await;
    let at_hub = hub.next().await;

    // A header declaring one byte more than the limit.
    let mut send = at_spoke.connection.open_uni().await.unwrap();
    let mut header = [0u8; FRAME_HEADER_LEN];
    header[..4].copy_from_slice(&(MAX_FRAME_BYTES as u32 + 1).to_be_bytes());
    send.write_all(&header).await.unwrap();
    send.write_all(&[0u8; 100]).await.unwrap();
    let recv = timeout(SOON, at_hub.connection.accept_uni())
        .await
        .unwrap()
        .unwrap();
    let mut framed = FramedRecv::new(recv);
    let err = framed.recv().await.unwrap_err();
    assert!(
        matches!(err, TransportError::Decode(WireError::FrameTooLarge { .. })),
        "{err}"
    );
    assert_eq!(err.code(), Some(ErrorCode::FrameTooLarge));
    assert!(matches!(framed.recv().await, Err(TransportError::Closed)));
    // The sender is told why its stream was stopped.
    let stopped = timeout(SOON, send.stopped()).await.unwrap().unwrap();
    assert_eq!(
        stopped,
        Some(VarInt::from_u32(ErrorCode::FrameTooLarge.as_u32()))
    );

    // A zstd bomb: a small frame that inflates past the limit.
    let bomb = zstd::bulk::compress(&vec![0u8; MAX_FRAME_BYTES + 1], 3).unwrap();
    assert!(bomb.len() < 4096);
    let err = send_raw_and_recv(&at_spoke, &at_hub, FrameFlags::ZSTD, &bomb, None).await;
    assert_eq!(err.code(), Some(ErrorCode::FrameTooLarge), "{err}");

    // A compressed message within the frame limit but over a control stream's limit.
    let payload = encode_message(&big_message()).unwrap();
    let packed = zstd::bulk::compress(&payload, 3).unwrap();
    let err = send_raw_and_recv(&at_spoke, &at_hub, FrameFlags::ZSTD, &packed, Some(1024)).await;
    assert_eq!(err.code(), Some(ErrorCode::FrameTooLarge), "{err}");

    // Garbage flagged as zstd.
    let err = send_raw_and_recv(
        &at_spoke,
        &at_hub,
        FrameFlags::ZSTD,
        b"not zstd at all",
        None,
    )
    .await;
    assert!(matches!(err, TransportError::Decompress { .. }), "{err}");
    assert_eq!(err.code(), Some(ErrorCode::Malformed));

    // Garbage that is not a message.
    let err = send_raw_and_recv(&at_spoke, &at_hub, FrameFlags::NONE, &[0xff; 32], None).await;
    assert!(matches!(err, TransportError::Decode(_)), "{err}");

    // A stream cut inside a frame.
    let mut send = at_spoke.connection.open_uni().await.unwrap();
    let frame = encode_raw_frame(FrameFlags::NONE, &payload).unwrap();
    send.write_all(&frame[..frame.len() / 2]).await.unwrap();
    send.finish().unwrap();
    let recv = timeout(SOON, at_hub.connection.accept_uni())
        .await
        .unwrap()
        .unwrap();
    let err = FramedRecv::new(recv).recv().await.unwrap_err();
    assert!(
        matches!(
            err,
            TransportError::Decode(WireError::TruncatedFrame { .. })
        ),
        "{err}"
    );

    // The connection survives all of it.
    let mut send = FramedSend::new(at_spoke.connection.open_uni().await.unwrap());
    send.send(&heartbeat(1), false).await.unwrap();
    let recv = timeout(SOON, at_hub.connection.accept_uni())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        FramedRecv::new(recv).recv().await.unwrap(),
        Some(heartbeat(1))
    );

    // A message too large to frame is refused before anything is sent.
    let huge = Message::V1(MessageV1::Error(ErrorFrame {
        code: ErrorCode::Internal,
        detail: "x".repeat(MAX_FRAME_BYTES + 1),
    }));
    let err = send.send(&huge, true).await.unwrap_err();
    assert!(matches!(err, TransportError::Encode(_)), "{err}");

    spoke.stop().await;
    hub.stop().await;
}

/// Sends one raw frame on a new stream and returns the receiver's error.
async fn send_raw_and_recv(
    from: &PeerConnection,
    to: &PeerConnection,
    flags: FrameFlags,
    payload: &[u8],
    limit: Option<usize>,
) -> TransportError {
    let mut send = from.connection.open_uni().await.unwrap();
    send.write_all(&encode_raw_frame(flags, payload).unwrap())
        .await
        .unwrap();
    send.finish().unwrap();
    let recv = timeout(SOON, to.connection.accept_uni())
        .await
        .unwrap()
        .unwrap();
    let mut framed = FramedRecv::new(recv);
    if let Some(limit) = limit {
        framed = framed.with_limit(limit);
    }
    framed.recv().await.unwrap_err()
}

#[test]
fn decompression_is_bounded() {
    let data = vec![7u8; 100_000];
    let packed = zstd::bulk::compress(&data, 3).unwrap();
    assert_eq!(framed::decompress(&packed, 100_000).unwrap(), data);
    let err = framed::decompress(&packed, 99_999).unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::FrameTooLarge));

    // Without a declared content size the output cap still holds.
    let mut streamed = Vec::new();
    let mut enc = zstd::stream::write::Encoder::new(&mut streamed, 3).unwrap();
    std::io::Write::write_all(&mut enc, &data).unwrap();
    enc.finish().unwrap();
    assert_eq!(
        zstd::zstd_safe::get_frame_content_size(&streamed).unwrap(),
        None
    );
    let err = framed::decompress(&streamed, 50_000).unwrap_err();
    assert!(
        matches!(
            err,
            TransportError::Decode(WireError::FrameTooLarge { limit: 50_000, .. })
        ),
        "{err}"
    );
    assert_eq!(framed::decompress(&streamed, 100_000).unwrap(), data);
}

#[tokio::test]
async fn shutdown_stops_dialers_and_accept_loop_promptly() {
    let dep = Deployment::new();
    let mut hub = Running::start(&dep.config("general-office", false, &[]));
    // One reachable peer and one that never answers (a closed loopback port).
    let silent: SocketAddr = {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.local_addr().unwrap()
    };
    dep.issue("beijing-office", false);
    let mut spoke = Running::start(&dep.config(
        "hefei",
        false,
        &[("general-office", hub.addr()), ("beijing-office", silent)],
    ));
    let connected = spoke.next().await;
    let _at_hub = hub.next().await;

    spoke.stop.send_replace(true);
    hub.stop.send_replace(true);
    // Every task drops its sender when it stops, which ends the channels.
    let started = tokio::time::Instant::now();
    assert!(timeout(Duration::from_secs(2), spoke.rx.recv())
        .await
        .unwrap()
        .is_none());
    assert!(timeout(Duration::from_secs(2), hub.rx.recv())
        .await
        .unwrap()
        .is_none());
    assert!(started.elapsed() < Duration::from_secs(2));

    // Connections handed over stay usable until the endpoint closes.
    assert!(connected.connection.close_reason().is_none());
    spoke.transport.close().await;
    assert!(connected.connection.close_reason().is_some());
    hub.transport.close().await;
}

#[tokio::test]
async fn bind_reports_configuration_mistakes() {
    let dep = Deployment::new();
    let bundle = dep.issue("hefei", false);

    let wrong_name = config_for("wuhan", &bundle, "127.0.0.1:0".parse().unwrap(), &[]);
    let err = Transport::bind(&wrong_name).unwrap_err();
    assert!(err.to_string().contains("node.name is \"wuhan\""), "{err}");

    let taken = Transport::bind(&config_for(
        "hefei",
        &bundle,
        "127.0.0.1:0".parse().unwrap(),
        &[],
    ))
    .unwrap();
    let again = config_for("hefei", &bundle, taken.local_addr(), &[]);
    let err = Transport::bind(&again).unwrap_err();
    assert!(matches!(err, TransportError::Bind { .. }), "{err}");
    assert!(err.to_string().contains("sync.listen"), "{err}");

    // A node certificate from another CA than ca.pem.
    let other = Deployment::new();
    let foreign = other.issue("hefei", false);
    fs::copy(
        dep.ca_dir().join(pki::CA_CERT_FILE),
        foreign.join(pki::CA_CERT_FILE),
    )
    .unwrap();
    let err = Transport::bind(&config_for(
        "hefei",
        &foreign,
        "127.0.0.1:0".parse().unwrap(),
        &[],
    ))
    .unwrap_err();
    assert!(matches!(err, TransportError::Credentials { .. }), "{err}");

    let mut missing = config_for("hefei", &bundle, "127.0.0.1:0".parse().unwrap(), &[]);
    missing.tls.key = bundle.join("nope.key");
    let err = Transport::bind(&missing).unwrap_err();
    assert!(err.to_string().contains("nope.key"), "{err}");

    taken.close().await;
}

#[test]
fn backoff_doubles_with_bounded_jitter_and_resets() {
    let mut b = Backoff::new(42);
    let mut base = BACKOFF_INITIAL;
    for _ in 0..12 {
        let d = b.next_delay();
        assert!(
            d >= base.mul_f64(1.0 - BACKOFF_JITTER),
            "{d:?} below {base:?}"
        );
        assert!(
            d <= base.mul_f64(1.0 + BACKOFF_JITTER),
            "{d:?} above {base:?}"
        );
        base = (base * 2).min(BACKOFF_MAX);
    }
    assert_eq!(base, BACKOFF_MAX);
    b.reset();
    assert!(b.next_delay() <= BACKOFF_INITIAL.mul_f64(1.0 + BACKOFF_JITTER));

    // The jitter actually varies.
    let mut c = Backoff::new(7);
    let delays: Vec<Duration> = (0..8)
        .map(|_| {
            c.reset();
            c.next_delay()
        })
        .collect();
    assert!(delays.windows(2).any(|w| w[0] != w[1]));
}

/// Opens once, for the stalled clients' certificate step to go on.
#[derive(Debug, Default)]
struct Gate {
    open: std::sync::Mutex<bool>,
    opened: std::sync::Condvar,
}

impl Gate {
    /// Blocks until the gate opens or `max` passes.
    fn wait(&self, max: Duration) {
        let open = self.open.lock().unwrap();
        let _still_closed = self.opened.wait_timeout_while(open, max, |open| !*open);
    }

    fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.opened.notify_all();
    }
}

/// A client certificate step that never finishes: blocks until the gate opens (or a minute
/// passes), then offers no certificate.
#[derive(Debug)]
struct StallCertificate(Arc<Gate>);

impl rustls::client::ResolvesClientCert for StallCertificate {
    fn resolve(
        &self,
        _hints: &[&[u8]],
        _schemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        self.0.wait(Duration::from_secs(60));
        None
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Dials `server` from address `from` on its own thread (the stalled certificate step blocks
/// it) and stalls the handshake at the client certificate until `gate` opens.
fn stalled_client(
    ca: &Path,
    from: std::net::IpAddr,
    server: SocketAddr,
    gate: &Arc<Gate>,
) -> std::thread::JoinHandle<()> {
    let mut roots = rustls::RootCertStore::empty();
    for der in pki::load_cert_ders(ca).unwrap() {
        roots.add(der.into()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_cert_resolver(Arc::new(StallCertificate(gate.clone())));
    tls.alpn_protocols = vec![officesync_protocol::wire::ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let config = quinn::ClientConfig::new(Arc::new(quic));
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut endpoint = quinn::Endpoint::client(SocketAddr::new(from, 0)).unwrap();
            endpoint.set_default_client_config(config);
            let connecting = endpoint.connect(server, "general-office").unwrap();
            // Whatever the outcome, the thread ends; the test asserts on the server's side.
            let _outcome = timeout(Duration::from_secs(20), connecting).await;
            endpoint.close(0u32.into(), b"done");
        });
    })
}

#[tokio::test]
async fn every_new_address_proves_itself_with_a_retry_first() {
    let dep = Deployment::new();
    let mut hub = Running::start(&dep.config("general-office", false, &[]));
    let mut spoke = Running::start(&dep.config("hefei", false, &[("general-office", hub.addr())]));
    // The dialer answers the Retry by itself and connects.
    let _at_spoke = spoke.next().await;
    let _at_hub = hub.next().await;
    let stats = hub.transport.stats();
    assert!(stats.retries_sent >= 1, "{stats:?}");
    assert_eq!(stats.connections_accepted, 1, "{stats:?}");
    spoke.stop().await;
    hub.stop().await;
}

#[tokio::test]
async fn a_handshake_stalled_before_the_certificate_is_dropped_early() {
    let dep = Deployment::new();
    let mut hub = Running::start(&dep.config("general-office", false, &[]));
    let gate = Arc::new(Gate::default());
    let ca = dep.ca_dir().join(pki::CA_CERT_FILE);
    let client = stalled_client(&ca, [127, 0, 0, 2].into(), hub.addr(), &gate);
    eventually("the stalled handshake to hold a slot", || {
        hub.transport.shared.slots.in_progress() == 1
    })
    .await;
    // Dropped at UNAUTHENTICATED_TIMEOUT, well before the later-stage HANDSHAKE_TIMEOUT.
    let bound = UNAUTHENTICATED_TIMEOUT + Duration::from_secs(4);
    assert!(bound < HANDSHAKE_TIMEOUT);
    let deadline = tokio::time::Instant::now() + bound;
    while hub.transport.stats().handshakes_timed_out == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "stalled handshake still pending after {bound:?}: {:?}",
            hub.transport.stats()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eventually("the slot to be free again", || {
        hub.transport.shared.slots.in_progress() == 0
    })
    .await;
    gate.open();
    tokio::task::spawn_blocking(move || client.join().unwrap())
        .await
        .unwrap();
    hub.expect_none().await;
    hub.stop().await;
}

#[tokio::test]
async fn one_address_stalling_handshakes_does_not_lock_out_the_others() {
    let dep = Deployment::new();
    let mut hub = Running::start(&dep.config("general-office", false, &[]));
    let gate = Arc::new(Gate::default());
    let ca = dep.ca_dir().join(pki::CA_CERT_FILE);
    let flooder: std::net::IpAddr = [127, 0, 0, 2].into();
    let mut clients: Vec<_> = (0..MAX_HANDSHAKES_PER_ADDRESS)
        .map(|_| stalled_client(&ca, flooder, hub.addr(), &gate))
        .collect();
    eventually("the flooding address to hold its share", || {
        hub.transport.shared.slots.in_progress() == MAX_HANDSHAKES_PER_ADDRESS
    })
    .await;
    // Beyond its share, the same address is refused (before any TLS work)...
    clients.extend((0..2).map(|_| stalled_client(&ca, flooder, hub.addr(), &gate)));
    eventually("the extra attempts to be refused", || {
        hub.transport.stats().handshakes_refused_per_address == 2
    })
    .await;
    assert_eq!(
        hub.transport.shared.slots.in_progress(),
        MAX_HANDSHAKES_PER_ADDRESS
    );
    // ...while an office from another address connects meanwhile.
    let mut spoke = Running::start(&dep.config("hefei", false, &[("general-office", hub.addr())]));
    let at_hub = hub.next().await;
    assert_eq!(at_hub.peer.name, "hefei");
    let _at_spoke = spoke.next().await;
    let stats = hub.transport.stats();
    assert_eq!(stats.handshakes_refused_busy, 0, "{stats:?}");
    assert_eq!(stats.handshakes_refused, 2, "{stats:?}");

    gate.open();
    tokio::task::spawn_blocking(move || {
        for client in clients {
            client.join().unwrap();
        }
    })
    .await
    .unwrap();
    spoke.stop().await;
    hub.stop().await;
}

#[test]
fn incompressible_collections_skip_zstd_for_a_doubling_while_and_a_compressible_payload_ends_it() {
    use super::framed::IncompressibleBackoff;
    let mut b = IncompressibleBackoff::default();
    let tries = |b: &mut IncompressibleBackoff, c: &str, n: usize| {
        (0..n).filter(|_| b.should_try(Some(c))).count()
    };
    // Compressible payloads never skip.
    assert!(b.should_try(Some("docs")));
    b.observed(Some("docs"), 1 << 20, 300 << 10);
    assert_eq!(tries(&mut b, "docs", 10), 10);
    // Each incompressible payload doubles the skip: 1, 2, 4, 8, 16, 16.
    for skip in [1, 2, 4, 8, 16, 16] {
        assert!(b.should_try(Some("images")), "tried after {skip} skips");
        b.observed(Some("images"), 1 << 20, (1 << 20) + 40);
        assert_eq!(tries(&mut b, "images", skip), 0, "skip {skip}");
    }
    // A saving under 1/32 still counts as incompressible.
    assert!(b.should_try(Some("images")));
    b.observed(Some("images"), 1 << 20, (1 << 20) - 1000);
    assert!(!b.should_try(Some("images")));
    // Another collection on the same stream is not held back by it.
    assert!(b.should_try(Some("docs")));
    // One that compresses ends the backoff.
    let left = tries(&mut b, "images", 32);
    assert!(left > 0);
    b.observed(Some("images"), 1 << 20, 400 << 10);
    assert_eq!(tries(&mut b, "images", 5), 5);
    // A message of no collection is always tried and changes nothing.
    b.observed(None, 1 << 20, 1 << 20);
    assert!(b.should_try(None));
}
