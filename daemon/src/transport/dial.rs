//! The dialer of one configured peer: resolve, connect, check who answered, hand the
//! connection over, wait for it to end, back off, and again until shutdown.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use officesync_protocol::wire::ErrorCode;
use quinn::{ConnectError, Connection, Endpoint, VarInt};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::Instrument;

use super::error::TransportError;
use super::tls::{self, PeerCertificate};
use super::{wait_shutdown, PeerConnection, Role, Shared, HANDSHAKE_TIMEOUT};
use crate::config::PeerConfig;

/// First pause after a failed dial or a lost connection.
pub const BACKOFF_INITIAL: Duration = Duration::from_millis(500);

/// Longest pause between dials (before jitter).
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Jitter applied to every pause, as a fraction either way (±25 %), so offices that lost the
/// hub together do not redial it in lockstep.
pub const BACKOFF_JITTER: f64 = 0.25;

/// A connection that lasted this long counts as a success: the next pause starts again from
/// [`BACKOFF_INITIAL`]. A peer that accepts and then drops us at once keeps backing off.
pub const STABLE_AFTER: Duration = Duration::from_secs(10);

/// Longest wait for DNS.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Jittered exponential backoff with its own small PRNG (xorshift64*), seeded by the caller.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    next: Duration,
    state: u64,
}

impl Backoff {
    /// A backoff at [`BACKOFF_INITIAL`]; `seed` may be anything (0 included).
    pub(crate) fn new(seed: u64) -> Self {
        Self {
            next: BACKOFF_INITIAL,
            state: splitmix64(seed) | 1,
        }
    }

    /// The next pause: the current base with ±[`BACKOFF_JITTER`], then the base doubles up to
    /// [`BACKOFF_MAX`].
    pub(crate) fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (base * 2).min(BACKOFF_MAX);
        // A uniform value in [0, 1) from the top 53 bits.
        let unit = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        base.mul_f64(1.0 - BACKOFF_JITTER + 2.0 * BACKOFF_JITTER * unit)
    }

    /// Starts again from [`BACKOFF_INITIAL`].
    pub(crate) fn reset(&mut self) {
        self.next = BACKOFF_INITIAL;
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn splitmix64(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A seed from the clock and the peer's name, so dialers of different peers (and nodes) differ.
fn seed_for(name: &str) -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    // FNV-1a of the name.
    let name_hash = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    (nanos as u64) ^ name_hash
}

/// Dials `peer` until shutdown (or until the endpoint closes or nobody takes connections).
pub(crate) async fn run(
    endpoint: Endpoint,
    peer: PeerConfig,
    tx: mpsc::Sender<PeerConnection>,
    mut shutdown: watch::Receiver<bool>,
    shared: Shared,
) {
    let span = tracing::info_span!("dialer", peer = %peer.name, addr = %peer.addr);
    async move {
        let mut backoff = Backoff::new(seed_for(&peer.name));
        let mut attempt: usize = 0;
        let mut last_error: Option<String> = None;
        loop {
            // A peer in backoff after bad input is not dialed until its refusal ends.
            if let Some(wait) = shared.penalties.remaining(&peer.name) {
                tracing::info!(
                    wait_ms = wait.as_millis() as u64,
                    "peer in backoff after bad input; waiting before dialing"
                );
                tokio::select! {
                    biased;
                    () = wait_shutdown(&mut shutdown) => return,
                    () = tokio::time::sleep(wait) => {}
                }
            }
            let outcome = tokio::select! {
                biased;
                () = wait_shutdown(&mut shutdown) => return,
                r = dial_once(&endpoint, &peer, attempt) => r,
            };
            attempt = attempt.wrapping_add(1);
            match outcome {
                Ok((connection, identity, remote)) => {
                    last_error = None;
                    shared.counters.dial_succeeded(&peer.name);
                    let started = Instant::now();
                    if !deliver(connection, identity, remote, &tx, &mut shutdown, &shared).await {
                        return;
                    }
                    if started.elapsed() >= STABLE_AFTER {
                        backoff.reset();
                    }
                }
                Err(TransportError::Closed) => {
                    tracing::debug!("endpoint closed; dialer stops");
                    return;
                }
                Err(e) => {
                    let text = e.to_string();
                    shared.counters.dial_failed(&peer.name, &text);
                    if last_error.as_deref() == Some(text.as_str()) {
                        tracing::debug!(error = %text, attempt, "dial failed again");
                    } else {
                        tracing::warn!(error = %text, "dial failed; retrying with backoff");
                    }
                    last_error = Some(text);
                }
            }
            let delay = backoff.next_delay();
            tracing::debug!(
                delay_ms = delay.as_millis() as u64,
                "redialing after a pause"
            );
            tokio::select! {
                biased;
                () = wait_shutdown(&mut shutdown) => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }
    .instrument(span)
    .await;
}

/// Hands a dialed connection over and waits until it ends (closed by either side, or the
/// session gives it up). False when the dialer must stop (shutdown or nobody listening).
async fn deliver(
    connection: Connection,
    peer: PeerCertificate,
    remote: SocketAddr,
    tx: &mpsc::Sender<PeerConnection>,
    shutdown: &mut watch::Receiver<bool>,
    shared: &Shared,
) -> bool {
    tracing::info!(%remote, conn = connection.stable_id(), serial = %peer.serial_hex, "connected");
    let peer_name = peer.name.clone();
    tls::close_at_expiry(&connection, &peer, &shared.counters);
    let (notify_tx, mut notify_rx) = oneshot::channel();
    let delivered = PeerConnection::new(
        peer,
        Role::Dialer,
        connection.clone(),
        remote,
        Some(notify_tx),
        &shared.penalties,
    );
    let sent = tokio::select! {
        biased;
        () = wait_shutdown(shutdown) => false,
        r = tx.send(delivered) => r.is_ok(),
    };
    if !sent {
        connection.close(VarInt::from_u32(0), b"node shutting down");
        return false;
    }
    tokio::select! {
        biased;
        // The session owns the connection now; the endpoint's close ends it.
        () = wait_shutdown(shutdown) => return false,
        reason = connection.closed() => {
            tracing::info!(%remote, reason = %reason, "connection closed");
        }
        _ = &mut notify_rx => {
            if connection.close_reason().is_none() {
                connection.close(VarInt::from_u32(0), b"session ended");
            }
            tracing::info!(%remote, "session ended; connection closed");
        }
    }
    // A peer that refuses this node once the handshake is done (revoked by its `_policy`, in
    // backoff) closes a connection that counted as dialed: that is why the peer is down.
    if let Some(refusal) = connection
        .close_reason()
        .and_then(|reason| TransportError::refused_by_peer(remote, &reason))
    {
        shared
            .counters
            .dial_failed(&peer_name, &refusal.to_string());
    }
    true
}

/// One attempt: resolve, connect, wait until the peer confirmed the handshake, check its name.
pub(super) async fn dial_once(
    endpoint: &Endpoint,
    peer: &PeerConfig,
    attempt: usize,
) -> Result<(Connection, PeerCertificate, SocketAddr), TransportError> {
    let local_v4 = endpoint
        .local_addr()
        .map_err(|_| TransportError::Closed)?
        .is_ipv4();
    let addrs = resolve(peer, local_v4).await?;
    let remote = addrs[attempt % addrs.len()];
    let connecting = endpoint.connect(remote, &peer.name).map_err(|e| match e {
        ConnectError::EndpointStopping => TransportError::Closed,
        other => TransportError::Connect {
            peer: peer.name.clone(),
            remote,
            detail: other.to_string(),
        },
    })?;
    let connection = match tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting).await {
        Err(_) => {
            return Err(TransportError::Handshake {
                remote,
                detail: format!(
                    "no answer within {} s (is the peer running and UDP reachable?)",
                    HANDSHAKE_TIMEOUT.as_secs()
                ),
            })
        }
        Ok(Err(e)) => {
            return Err(name_mismatch(
                TransportError::from_handshake(remote, &e),
                peer,
            ))
        }
        Ok(Ok(connection)) => connection,
    };
    confirmed(&connection, remote).await?;
    let refuse = |err: TransportError| {
        let code = err.code().unwrap_or(ErrorCode::NotAuthorized);
        connection.close(VarInt::from_u32(code.as_u32()), b"unexpected peer identity");
        err
    };
    let identity = tls::peer_identity(&connection, remote).map_err(refuse)?;
    if identity.name != peer.name {
        return Err(refuse(TransportError::WrongPeer {
            remote,
            expected: peer.name.clone(),
            detail: format!("its certificate names {:?}", identity.name),
        }));
    }
    Ok((connection, identity, remote))
}

/// Our verifier refuses a server whose certificate is not for the configured name: report it
/// as the wrong peer rather than as a bad certificate.
fn name_mismatch(err: TransportError, peer: &PeerConfig) -> TransportError {
    match err {
        TransportError::BadPeerCertificate { remote, detail }
            if detail.contains("not valid for name") =>
        {
            TransportError::WrongPeer {
                remote,
                expected: peer.name.clone(),
                detail,
            }
        }
        other => other,
    }
}

/// Waits until the server confirmed the handshake (QUIC HANDSHAKE_DONE). The client finishes
/// its side of the TLS handshake before the server has checked the client's certificate, so
/// only the confirmation shows that the peer accepted us.
async fn confirmed(connection: &Connection, remote: SocketAddr) -> Result<(), TransportError> {
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(reason) = connection.close_reason() {
            return Err(TransportError::from_handshake(remote, &reason));
        }
        if connection.stats().frame_rx.handshake_done > 0 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            connection.close(VarInt::from_u32(0), b"handshake not confirmed");
            return Err(TransportError::Handshake {
                remote,
                detail: "the peer never confirmed the handshake".to_owned(),
            });
        }
        tokio::select! {
            _ = connection.closed() => {}
            () = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// The addresses of `peer.addr` this endpoint can reach (IPv4 only from an IPv4 socket).
async fn resolve(peer: &PeerConfig, local_v4: bool) -> Result<Vec<SocketAddr>, TransportError> {
    let err = |detail: String| TransportError::Resolve {
        peer: peer.name.clone(),
        addr: peer.addr.clone(),
        detail,
    };
    let found = tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host(peer.addr.as_str()))
        .await
        .map_err(|_| err(format!("no answer within {} s", RESOLVE_TIMEOUT.as_secs())))?
        .map_err(|e| err(e.to_string()))?;
    let addrs: Vec<SocketAddr> = found.filter(|a| !local_v4 || a.is_ipv4()).collect();
    if addrs.is_empty() {
        return Err(err(
            "no IPv4 address (sync.listen is IPv4; listen on [::] to dial IPv6)".to_owned(),
        ));
    }
    Ok(addrs)
}
