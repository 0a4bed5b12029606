//! The accept loop: admits connection attempts within the handshake limits, completes each
//! handshake on its own task and hands authenticated connections over.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use officesync_protocol::wire::ErrorCode;
use quinn::{Connecting, Endpoint, Incoming};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::Instrument;

use super::error::TransportError;
use super::limits::{MAX_CONNECTIONS_PER_PEER, MAX_PENDING_HANDSHAKES, RETRY_ABOVE_PENDING};
use super::tls;
use super::{wait_shutdown, PeerConnection, Role, Shared, HANDSHAKE_TIMEOUT};

/// Counts a handshake in progress for as long as it lives.
struct Pending(Arc<AtomicUsize>);

impl Pending {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count.clone())
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Accepted connections per peer name, each counted until the connection closes.
#[derive(Debug, Clone, Default)]
pub(crate) struct LivePeers(Arc<Mutex<HashMap<String, usize>>>);

impl LivePeers {
    /// Counts one more connection of `name`, unless it already holds
    /// [`MAX_CONNECTIONS_PER_PEER`]; the count drops when `connection` closes.
    fn enter(&self, name: &str, connection: &quinn::Connection) -> bool {
        {
            let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            let n = map.entry(name.to_owned()).or_insert(0);
            if *n >= MAX_CONNECTIONS_PER_PEER {
                return false;
            }
            *n += 1;
        }
        let (live, name, connection) = (self.clone(), name.to_owned(), connection.clone());
        tokio::spawn(async move {
            connection.closed().await;
            let mut map = live.0.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(n) = map.get_mut(&name) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    map.remove(&name);
                }
            }
        });
        true
    }
}

/// Accepts connections until shutdown or until the endpoint closes.
pub(crate) async fn run(
    endpoint: Endpoint,
    tx: mpsc::Sender<PeerConnection>,
    mut shutdown: watch::Receiver<bool>,
    shared: Shared,
) {
    let pending = Arc::new(AtomicUsize::new(0));
    let mut handshakes = JoinSet::new();
    loop {
        let incoming = tokio::select! {
            biased;
            () = wait_shutdown(&mut shutdown) => break,
            // Nobody takes connections any more.
            () = tx.closed() => break,
            Some(_) = handshakes.join_next(), if !handshakes.is_empty() => continue,
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => incoming,
                None => break,
            },
        };
        let Some(incoming) = admit(incoming, &pending, &shared) else {
            continue;
        };
        let remote = incoming.remote_address();
        match incoming.accept() {
            Ok(connecting) => {
                let guard = Pending::new(&pending);
                let span = tracing::info_span!("accept", %remote);
                handshakes.spawn(
                    handshake(connecting, remote, tx.clone(), shared.clone(), guard)
                        .instrument(span),
                );
            }
            Err(e) => {
                shared.counters.handshake_failed();
                tracing::debug!(%remote, error = %e, "connection attempt failed");
            }
        }
    }
    handshakes.shutdown().await;
    tracing::debug!("accept loop stopped");
}

/// Applies the handshake limits to a new attempt: refuse beyond [`MAX_PENDING_HANDSHAKES`];
/// above [`RETRY_ABOVE_PENDING`], make an unvalidated address prove itself with a Retry first.
fn admit(incoming: Incoming, pending: &AtomicUsize, shared: &Shared) -> Option<Incoming> {
    let remote = incoming.remote_address();
    let in_progress = pending.load(Ordering::Relaxed);
    if in_progress >= MAX_PENDING_HANDSHAKES {
        shared.counters.handshake_refused();
        tracing::warn!(%remote, in_progress, "too many handshakes in progress; refusing");
        incoming.refuse();
        return None;
    }
    if in_progress >= RETRY_ABOVE_PENDING && !incoming.remote_address_validated() {
        // An unvalidated address may always be sent a Retry.
        return match incoming.retry() {
            Ok(()) => None,
            Err(e) => Some(e.into_incoming()),
        };
    }
    Some(incoming)
}

/// Completes one handshake and hands the connection over.
async fn handshake(
    connecting: Connecting,
    remote: SocketAddr,
    tx: mpsc::Sender<PeerConnection>,
    shared: Shared,
    pending: Pending,
) {
    let connection = match tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting).await {
        Ok(Ok(connection)) => connection,
        Ok(Err(e)) => {
            shared.counters.handshake_failed();
            let err = TransportError::from_handshake(remote, &e);
            tracing::warn!(error = %err, "incoming handshake failed");
            return;
        }
        Err(_) => {
            shared.counters.handshake_failed();
            tracing::warn!("incoming handshake timed out");
            return;
        }
    };
    let peer = match tls::peer_identity(&connection, remote) {
        Ok(peer) => peer,
        Err(err) => {
            shared.counters.handshake_failed();
            let code = err.code().map_or(0, |c| c.as_u32());
            connection.close(code.into(), b"no usable node identity");
            tracing::warn!(error = %err, "refused incoming connection");
            return;
        }
    };
    if let Some(wait) = shared.penalties.remaining(&peer.name) {
        shared.counters.backoff_refused();
        let secs = wait.as_secs_f64();
        let reason = format!("refused for {secs:.1} s more after repeated bad input");
        connection.close(ErrorCode::Backoff.as_u32().into(), reason.as_bytes());
        tracing::warn!(peer = %peer.name, refused_for_s = secs, "refused connection from peer in backoff");
        return;
    }
    if !shared.live.enter(&peer.name, &connection) {
        shared.counters.backoff_refused();
        connection.close(
            ErrorCode::Backoff.as_u32().into(),
            b"too many connections from this node",
        );
        tracing::warn!(peer = %peer.name, limit = MAX_CONNECTIONS_PER_PEER, "refused connection: too many from this peer");
        return;
    }
    shared.counters.accepted();
    tracing::info!(
        peer = %peer.name,
        conn = connection.stable_id(),
        serial = %peer.serial_hex,
        "accepted"
    );
    let delivered = PeerConnection::new(
        peer,
        Role::Acceptor,
        connection.clone(),
        remote,
        None,
        &shared.penalties,
    );
    // Still counted as pending until the session layer takes it: if the daemon falls behind,
    // new attempts are refused rather than piling up.
    if tx.send(delivered).await.is_err() {
        connection.close(0u32.into(), b"node shutting down");
    }
    drop(pending);
}
