//! The QUIC transport between offices: one endpoint per node that both accepts and dials,
//! mutual TLS against the deployment CA, a dialer per configured peer that reconnects forever
//! with jittered backoff, and framed message streams.
//!
//! Every connection handed to the rest of the daemon ([`PeerConnection`]) is authenticated:
//! the peer's certificate chains to `ca.pem`, and its node name ([`PeerCertificate`]) was read
//! from that certificate. A dialed peer must also be the node configured for that address.
//! What the peer may do (revocation, read and write rights) is decided by the session layer
//! on top, from `_policy`.
//!
//! ```text
//! Transport::bind ──► Endpoint (sync.listen, UDP)
//! Transport::start ─┬─► accept loop ── handshake task per attempt ──┐
//!                   └─► dialer per peer ── dial, confirm, check name ┴─► mpsc<PeerConnection>
//! ```

mod accept;
mod dial;
mod dictionary;
mod error;
mod framed;
mod limits;
mod penalty;
mod tls;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quinn::{Endpoint, VarInt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::config::{Config, PeerConfig};

pub use dial::{BACKOFF_INITIAL, BACKOFF_JITTER, BACKOFF_MAX, STABLE_AFTER};
pub use dictionary::{
    train as train_dictionary, RecvDictionaries, SendDictionaries, MAX_TRAINING_BYTES,
    MIN_TRAINING_SAMPLES,
};
pub use error::TransportError;
#[doc(hidden)]
pub use framed::{fuzz_recv, fuzz_stream_parts};
pub use framed::{FramedRecv, FramedSend, TrafficCounters, COMPRESS_MIN_BYTES, ZSTD_LEVEL};
pub use limits::{
    CONNECTION_RECEIVE_WINDOW, KEEP_ALIVE_INTERVAL, MAX_BIDI_STREAMS, MAX_CONNECTIONS_PER_PEER,
    MAX_HANDSHAKES_PER_ADDRESS, MAX_IDLE_TIMEOUT, MAX_PENDING_HANDSHAKES, MAX_UNI_STREAMS,
    SEND_WINDOW, STREAM_RECEIVE_WINDOW,
};
pub use penalty::{Misbehavior, Penalties, PENALTY_BASE, PENALTY_FORGIVE_AFTER, PENALTY_MAX};
pub use tls::PeerCertificate;

/// Longest a handshake may take on the dialing side, and longest an authenticated incoming
/// connection may wait for the session layer to take it (several round trips on the slowest
/// links, with retransmissions).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest an incoming handshake may take from its (address-validated) first packet until the
/// peer's certificate is verified. Until then the peer is nobody, so it gets little: one
/// round trip plus one retransmission on a 600 ms link. A peer that stalls its certificate
/// step loses its slot after this, and an honest office that ran out of time redials.
pub const UNAUTHENTICATED_TIMEOUT: Duration = Duration::from_secs(3);

/// Longest [`Transport::close`] waits for connections to finish closing.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

/// Authenticated connections waiting for the session layer before dialers and handshakes wait.
const CHANNEL_CAPACITY: usize = 16;

/// Which side opened a connection: the session's own [`Role`] (the dialer sends `Hello`).
pub use officesync_protocol::sync::Role;

/// An authenticated connection to a peer, either direction.
#[derive(Debug)]
pub struct PeerConnection {
    /// Who the peer is, from its verified certificate.
    pub peer: PeerCertificate,
    /// Whether this node dialed or accepted the connection.
    pub role: Role,
    /// The QUIC connection; open streams on it, close it with an
    /// [`ErrorCode`](officesync_protocol::wire::ErrorCode) when the session fails.
    pub connection: quinn::Connection,
    /// The peer's UDP address.
    pub remote: SocketAddr,
    /// Byte counters for the framed streams of this connection
    /// ([`FramedSend::with_counters`], [`FramedRecv::with_counters`]).
    pub counters: TrafficCounters,
    /// For dialed connections: send `()` on it, or drop it, when the session is over. The dialer
    /// then closes the connection (if still open) and redials after a backoff pause. Keep it
    /// alive as long as the session runs. The dialer also redials on its own once the
    /// connection closes. `None` for accepted connections.
    pub closed_notify: Option<oneshot::Sender<()>>,
    /// Report the peer's bad input here: it is logged and counts toward the peer's backoff.
    pub misbehavior: Misbehavior,
}

impl PeerConnection {
    fn new(
        peer: PeerCertificate,
        role: Role,
        connection: quinn::Connection,
        remote: SocketAddr,
        closed_notify: Option<oneshot::Sender<()>>,
        penalties: &Penalties,
    ) -> Self {
        Self {
            misbehavior: Misbehavior::new(&peer.name, penalties.clone()),
            peer,
            role,
            connection,
            remote,
            counters: TrafficCounters::new(),
            closed_notify,
        }
    }
}

/// Transport-wide counts, for metrics and status (`transport` in `GET /v1/status`).
pub use officesync_api::TransportStats;

/// Live counters behind [`TransportStats`].
#[derive(Debug, Default)]
struct Counters {
    dialed: AtomicU64,
    accepted: AtomicU64,
    dials_failed: AtomicU64,
    handshakes_failed: AtomicU64,
    handshakes_timed_out: AtomicU64,
    refused_per_address: AtomicU64,
    refused_busy: AtomicU64,
    retries_sent: AtomicU64,
    backoff_refused: AtomicU64,
    certificates_expired: AtomicU64,
    /// Per peer this node dials: the last dial or handshake error and when (unix ms), until
    /// a dial succeeds.
    dial_errors: std::sync::Mutex<std::collections::BTreeMap<String, (u64, String)>>,
}

/// Adds one to a counter.
fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    fn accepted(&self) {
        bump(&self.accepted);
    }
    /// A dial of `peer` failed with `error`: counted, and kept as its last error.
    fn dial_failed(&self, peer: &str, error: &str) {
        bump(&self.dials_failed);
        let now = crate::time::unix_ms_now();
        let mut text = error.to_owned();
        if text.len() > MAX_DIAL_ERROR_BYTES {
            let mut end = MAX_DIAL_ERROR_BYTES;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
        }
        let mut errors = self
            .dial_errors
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        errors.insert(peer.to_owned(), (now, text));
    }
    /// A dial of `peer` succeeded: its last error is forgotten.
    fn dial_succeeded(&self, peer: &str) {
        bump(&self.dialed);
        let mut errors = self
            .dial_errors
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        errors.remove(peer);
    }
    fn handshake_failed(&self) {
        bump(&self.handshakes_failed);
    }
    fn handshake_timed_out(&self) {
        bump(&self.handshakes_failed);
        bump(&self.handshakes_timed_out);
    }
    fn handshake_refused(&self, why: limits::Refusal) {
        bump(match why {
            limits::Refusal::PerAddress => &self.refused_per_address,
            limits::Refusal::Busy => &self.refused_busy,
        });
    }
    fn retry_sent(&self) {
        bump(&self.retries_sent);
    }
    fn backoff_refused(&self) {
        bump(&self.backoff_refused);
    }
    fn certificate_expired(&self) {
        bump(&self.certificates_expired);
    }
    fn snapshot(&self) -> TransportStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let per_address = get(&self.refused_per_address);
        let busy = get(&self.refused_busy);
        TransportStats {
            connections_dialed: get(&self.dialed),
            connections_accepted: get(&self.accepted),
            dials_failed: get(&self.dials_failed),
            handshakes_failed: get(&self.handshakes_failed),
            handshakes_timed_out: get(&self.handshakes_timed_out),
            handshakes_refused: per_address + busy,
            handshakes_refused_per_address: per_address,
            handshakes_refused_busy: busy,
            retries_sent: get(&self.retries_sent),
            backoff_refused: get(&self.backoff_refused),
            certificates_expired: get(&self.certificates_expired),
        }
    }
}

/// A cloneable handle on a transport's counts, for readers that outlive or do not own the
/// [`Transport`] (the HTTP API's status).
#[derive(Debug, Clone)]
pub struct StatsHandle(Arc<Counters>);

impl StatsHandle {
    /// The counts now.
    pub fn snapshot(&self) -> TransportStats {
        self.0.snapshot()
    }

    /// The last dial or handshake error of `peer` and when (unix ms), while its dials fail.
    pub fn dial_error(&self, peer: &str) -> Option<(u64, String)> {
        let errors = self
            .0
            .dial_errors
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        errors.get(peer).cloned()
    }
}

/// Longest dial error kept for status, in bytes.
const MAX_DIAL_ERROR_BYTES: usize = 1024;

/// State the transport's tasks share.
#[derive(Debug, Clone, Default)]
struct Shared {
    counters: Arc<Counters>,
    penalties: Penalties,
    live: accept::LivePeers,
    slots: limits::HandshakeSlots,
}

/// This node's QUIC endpoint: bound at [`Transport::bind`], running after
/// [`Transport::start`], stopped by the shutdown signal and [`Transport::close`].
#[derive(Debug)]
pub struct Transport {
    endpoint: Endpoint,
    local_addr: SocketAddr,
    cluster_id: String,
    identity: PeerCertificate,
    shared: Shared,
    started: AtomicBool,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Transport {
    /// Loads the `[tls]` bundle, builds the TLS and QUIC configurations and binds the UDP
    /// socket of `sync.listen`. Must be called inside a tokio runtime.
    ///
    /// Fails when the bundle is unreadable, the node certificate is not issued by the CA or
    /// not valid now, `node.name` is not the name in the certificate, or the address is taken.
    pub fn bind(config: &Config) -> Result<Transport, TransportError> {
        let setup = tls::load(&config.tls)?;
        if setup.identity.name != config.node.name {
            return Err(TransportError::TlsConfig {
                detail: format!(
                    "node.name is {:?} but {} is issued to {:?} (fix: set node.name to the name in the certificate, or install that node's bundle)",
                    config.node.name,
                    config.tls.cert.display(),
                    setup.identity.name
                ),
            });
        }
        let addr = config.sync.listen;
        let bind_err = |source| TransportError::Bind { addr, source };
        let mut endpoint =
            Endpoint::server(limits::server_config(setup.server), addr).map_err(bind_err)?;
        endpoint.set_default_client_config(limits::client_config(setup.client));
        let local_addr = endpoint.local_addr().map_err(bind_err)?;
        tracing::info!(
            %local_addr,
            node = %setup.identity.name,
            cluster = %setup.cluster_id,
            "sync endpoint listening"
        );
        Ok(Transport {
            endpoint,
            local_addr,
            cluster_id: setup.cluster_id,
            identity: setup.identity,
            shared: Shared::default(),
            started: AtomicBool::new(false),
            tasks: Mutex::new(Vec::new()),
        })
    }

    /// The bound UDP address (the real port when `sync.listen` asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The cluster id: lowercase hex SHA-256 of the CA certificate.
    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    /// This node's own identity, from its certificate.
    pub fn identity(&self) -> &PeerCertificate {
        &self.identity
    }

    /// The peers' strikes and refusals (see [`Penalties`]).
    pub fn penalties(&self) -> &Penalties {
        &self.shared.penalties
    }

    /// Connection and handshake counts so far.
    pub fn stats(&self) -> TransportStats {
        self.shared.counters.snapshot()
    }

    /// A handle that reads [`Transport::stats`] without holding the transport.
    pub fn stats_handle(&self) -> StatsHandle {
        StatsHandle(self.shared.counters.clone())
    }

    /// Starts the accept loop and one dialer per entry of `peers`; every authenticated
    /// connection (either direction) is delivered on the returned channel.
    ///
    /// Everything stops when `shutdown` becomes true (or its sender is dropped); the channel
    /// then ends once the tasks are gone. A peer named like this node is skipped. Call once:
    /// a second call returns a channel that is already closed.
    pub fn start(
        &self,
        peers: Vec<PeerConfig>,
        shutdown: watch::Receiver<bool>,
    ) -> mpsc::Receiver<PeerConnection> {
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        if self.started.swap(true, Ordering::SeqCst) {
            tracing::warn!("transport already started; ignoring a second start");
            return rx;
        }
        let mut handles = Vec::with_capacity(peers.len() + 1);
        handles.push(tokio::spawn(accept::run(
            self.endpoint.clone(),
            tx.clone(),
            shutdown.clone(),
            self.shared.clone(),
        )));
        for peer in peers {
            if peer.name == self.identity.name {
                tracing::warn!(peer = %peer.name, "sync.peers lists this node itself; not dialing it");
                continue;
            }
            handles.push(tokio::spawn(dial::run(
                self.endpoint.clone(),
                peer,
                tx.clone(),
                shutdown.clone(),
                self.shared.clone(),
            )));
        }
        self.tasks_lock().extend(handles);
        rx
    }

    /// Closes every connection (telling each peer), stops the tasks and waits at most
    /// [`CLOSE_TIMEOUT`] for the closed connections to drain.
    pub async fn close(&self) {
        self.endpoint
            .close(VarInt::from_u32(0), b"node shutting down");
        let handles = std::mem::take(&mut *self.tasks_lock());
        for handle in handles {
            handle.abort();
            // A task that was aborted or panicked has nothing left to clean up.
            let _ = handle.await;
        }
        if tokio::time::timeout(CLOSE_TIMEOUT, self.endpoint.wait_idle())
            .await
            .is_err()
        {
            // Closed connections linger for three probe timeouts (RFC 9000 §10.2) to absorb
            // the peer's last packets; nothing is lost by not waiting for all of them.
            tracing::debug!("connections still draining at close");
        }
    }

    fn tasks_lock(&self) -> std::sync::MutexGuard<'_, Vec<JoinHandle<()>>> {
        // The list stays valid even if a holder panicked.
        self.tasks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for Transport {
    fn drop(&mut self) {
        for handle in self.tasks_lock().drain(..) {
            handle.abort();
        }
    }
}

/// Resolves once `shutdown` is true or its sender is gone.
async fn wait_shutdown(shutdown: &mut watch::Receiver<bool>) {
    // An error means the sender was dropped: nobody can ever start us again, so stop too.
    let _ = shutdown.wait_for(|&stop| stop).await;
}

#[cfg(test)]
mod tests;
