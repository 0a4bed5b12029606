//! The QUIC limits of every officesync connection, chosen for a handful of offices on slow,
//! lossy, high-latency WAN links (a hub with tens of peers at most), and the quinn
//! configurations built from them.

use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{IdleTimeout, TransportConfig, VarInt};

/// Bidirectional streams a peer may have open at once: one control stream plus a few bulk
/// streams. A session needs no more; a peer opening more is held by flow control, not served.
pub const MAX_BIDI_STREAMS: u32 = 4;

/// Unidirectional streams a peer may have open at once (bulk catch-up and live push).
pub const MAX_UNI_STREAMS: u32 = 4;

/// Receive window of one stream: 8 MiB, a full [`MAX_FRAME_BYTES`] frame in flight, and enough
/// to keep a 100 Mbit/s link with 600 ms round trips (satellite, overseas offices) busy on one
/// stream.
///
/// [`MAX_FRAME_BYTES`]: officesync_protocol::wire::MAX_FRAME_BYTES
pub const STREAM_RECEIVE_WINDOW: u32 = 8 << 20;

/// Receive window of a whole connection: 16 MiB, two bulk streams at full window. It bounds
/// what one peer can make us buffer.
pub const CONNECTION_RECEIVE_WINDOW: u32 = 16 << 20;

/// Unacknowledged bytes we keep in flight to one peer: 16 MiB, matching its receive window.
pub const SEND_WINDOW: u64 = 16 << 20;

/// A PING on an otherwise idle connection every 5 s keeps NAT bindings of offices behind NAT
/// open (typical UDP NAT timeouts are 30 s or more) and detects dead links early.
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(5);

/// A connection with no packet from the peer for 30 s (six missed keep-alives) is dead; the
/// dialer then redials. This also bounds a handshake that never completes.
pub const MAX_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Incoming connections in progress at once on the accepting side (handshaking, or
/// authenticated and waiting for the session layer to take them); further connection attempts
/// are refused (the dialer backs off and retries). Legitimate peers are few, so this only bites
/// under a flood or when the daemon stops taking connections.
pub const MAX_PENDING_HANDSHAKES: usize = 32;

/// Accepted connections one node name (one certificate) may hold at once. A real office holds
/// one, two while a dropped link is replaced; a peer opening more is refused, so one
/// authenticated peer cannot multiply its flow-control windows (16 MiB each) without bound.
pub const MAX_CONNECTIONS_PER_PEER: usize = 4;

/// Above this many handshakes in progress, a new attempt from an address that has not proven
/// it can receive our packets is answered with a QUIC Retry (address validation) before any
/// TLS work is done. Below it, no Retry: a Retry costs a round trip, which on a 600 ms link is
/// noticeable and buys nothing when nobody is flooding us.
pub const RETRY_ABOVE_PENDING: usize = 8;

/// Connection attempts quinn itself keeps queued before refusing them (a backstop behind
/// [`MAX_PENDING_HANDSHAKES`], which the accept loop enforces).
const MAX_INCOMING: usize = 64;

/// Bytes quinn buffers for one not yet accepted connection attempt. Without 0-RTT the client
/// only sends handshake packets, a few kilobytes with a certificate chain.
const INCOMING_BUFFER: u64 = 64 << 10;

/// Bytes quinn buffers for all not yet accepted connection attempts together.
const INCOMING_BUFFER_TOTAL: u64 = 4 << 20;

/// The transport parameters used in both directions.
///
/// Path MTU discovery stays at quinn's default (on, probing up from 1200 bytes), so links with
/// a small MTU (VPNs, PPPoE) still work and larger ones are used fully; congestion control is
/// quinn's default (CUBIC).
pub(crate) fn transport_config() -> Arc<TransportConfig> {
    let mut t = TransportConfig::default();
    t.max_concurrent_bidi_streams(VarInt::from_u32(MAX_BIDI_STREAMS))
        .max_concurrent_uni_streams(VarInt::from_u32(MAX_UNI_STREAMS))
        .stream_receive_window(VarInt::from_u32(STREAM_RECEIVE_WINDOW))
        .receive_window(VarInt::from_u32(CONNECTION_RECEIVE_WINDOW))
        .send_window(SEND_WINDOW)
        .keep_alive_interval(Some(KEEP_ALIVE_INTERVAL))
        // 30 s is far below the 2^62 ms limit of an idle timeout.
        .max_idle_timeout(IdleTimeout::try_from(MAX_IDLE_TIMEOUT).ok())
        // No datagrams: everything the protocol sends is reliable and framed on streams.
        .datagram_receive_buffer_size(None);
    Arc::new(t)
}

/// The accepting side: our TLS server config plus the limits on connection attempts.
pub(crate) fn server_config(crypto: Arc<QuicServerConfig>) -> quinn::ServerConfig {
    let mut server = quinn::ServerConfig::with_crypto(crypto);
    server
        .transport_config(transport_config())
        .max_incoming(MAX_INCOMING)
        .incoming_buffer_size(INCOMING_BUFFER)
        .incoming_buffer_size_total(INCOMING_BUFFER_TOTAL)
        // Offices behind NAT may be rebound to a new port mid-connection; keep the connection.
        .migration(true);
    server
}

/// The dialing side: our TLS client config and the same limits.
pub(crate) fn client_config(crypto: Arc<QuicClientConfig>) -> quinn::ClientConfig {
    let mut client = quinn::ClientConfig::new(crypto);
    client.transport_config(transport_config());
    client
}
