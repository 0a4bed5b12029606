//! The accept loop: validates every new address with a QUIC Retry, admits connection attempts
//! within the handshake limits (per source address and altogether), completes each handshake
//! on its own task under a short deadline until the peer is authenticated, and hands
//! authenticated connections over.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use officesync_protocol::wire::ErrorCode;
use quinn::{Connecting, Endpoint, Incoming};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::Instrument;

use super::error::TransportError;
use super::limits::{Refusal, Slot, MAX_CONNECTIONS_PER_PEER};
use super::tls;
use super::{
    wait_shutdown, PeerConnection, Role, Shared, HANDSHAKE_TIMEOUT, UNAUTHENTICATED_TIMEOUT,
};

/// Refusals are logged at most this often (with the number since the last line), so a flood
/// does not flood the log too; every refusal is counted in the stats.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

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
    let mut handshakes = JoinSet::new();
    let mut refusals = RefusalLog::default();
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
        let Some((incoming, slot)) = admit(incoming, &shared, &mut refusals) else {
            continue;
        };
        let remote = incoming.remote_address();
        let span = tracing::info_span!("accept", %remote);
        // quinn drives the handshake in a task spawned within the current span: the client
        // certificate verifier's log lines (`tls::ExplainingClientVerifier`) name the address.
        match span.in_scope(|| incoming.accept()) {
            Ok(connecting) => {
                handshakes.spawn(
                    handshake(connecting, remote, tx.clone(), shared.clone(), slot)
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

/// Applies the handshake limits to a new attempt, before any TLS work: an address that has not
/// proven it receives our packets is sent a Retry (stateless; a quinn client answers it with
/// the token, and comes back validated); a validated one gets a [`Slot`] unless its address
/// or the whole table is at its limit, in which case it is refused.
fn admit(
    incoming: Incoming,
    shared: &Shared,
    refusals: &mut RefusalLog,
) -> Option<(Incoming, Slot)> {
    if !incoming.remote_address_validated() {
        match incoming.retry() {
            Ok(()) => shared.counters.retry_sent(),
            // quinn allows a Retry for every unvalidated address; should it not, the attempt
            // is dropped unanswered rather than given TLS work.
            Err(e) => e.into_incoming().ignore(),
        }
        return None;
    }
    let remote = incoming.remote_address();
    match shared.slots.take(remote.ip()) {
        Ok(slot) => Some((incoming, slot)),
        Err(why) => {
            shared.counters.handshake_refused(why);
            refusals.record(why, remote, shared.slots.in_progress());
            incoming.refuse();
            None
        }
    }
}

/// Rate-limited warnings about refused attempts.
#[derive(Debug, Default)]
struct RefusalLog {
    last: Option<Instant>,
    unlogged: u64,
}

impl RefusalLog {
    /// Logs this refusal, unless one was logged less than [`REFUSAL_LOG_EVERY`] ago.
    fn record(&mut self, why: Refusal, remote: SocketAddr, in_progress: usize) {
        self.unlogged += 1;
        if self.last.is_some_and(|t| t.elapsed() < REFUSAL_LOG_EVERY) {
            tracing::debug!(%remote, ?why, in_progress, "refused a connection attempt");
            return;
        }
        let refused = std::mem::take(&mut self.unlogged);
        self.last = Some(Instant::now());
        match why {
            Refusal::PerAddress => tracing::warn!(
                %remote,
                in_progress,
                refused,
                "too many handshakes in progress from this address; refusing its new attempts"
            ),
            Refusal::Busy => tracing::warn!(
                %remote,
                in_progress,
                refused,
                "too many handshakes in progress; refusing new attempts"
            ),
        }
    }
}

/// Completes one handshake and hands the connection over; `slot` counts it until then.
async fn handshake(
    connecting: Connecting,
    remote: SocketAddr,
    tx: mpsc::Sender<PeerConnection>,
    shared: Shared,
    slot: Slot,
) {
    // Until its certificate is verified the peer is nobody: it gets a short deadline. Dropping
    // `connecting` closes the connection.
    let connection = match tokio::time::timeout(UNAUTHENTICATED_TIMEOUT, connecting).await {
        Ok(Ok(connection)) => connection,
        Ok(Err(e)) => {
            shared.counters.handshake_failed();
            let err = TransportError::from_handshake(remote, &e);
            tracing::warn!(error = %err, "incoming handshake failed");
            return;
        }
        Err(_) => {
            shared.counters.handshake_timed_out();
            tracing::warn!(
                timeout_ms = UNAUTHENTICATED_TIMEOUT.as_millis() as u64,
                "incoming handshake not authenticated in time; dropped"
            );
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
    tls::close_at_expiry(&connection, &delivered.peer, &shared.counters);
    // Still holding its slot until the session layer takes it: if the daemon falls behind,
    // new attempts are refused rather than piling up, and this one gives up after a while.
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, tx.send(delivered)).await {
        Ok(Ok(())) => {}
        Ok(Err(_)) => connection.close(0u32.into(), b"node shutting down"),
        Err(_) => {
            connection.close(0u32.into(), b"node busy; try again");
            tracing::warn!("the session layer did not take the connection in time; closed it");
        }
    }
    drop(slot);
}
