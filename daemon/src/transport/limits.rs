//! The QUIC limits of every officesync connection, chosen for a handful of offices on slow,
//! lossy, high-latency WAN links (a hub with tens of peers at most), the quinn configurations
//! built from them, and the table of incoming connections in progress that enforces the
//! handshake limits.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
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

/// Incoming connections in progress at once from one source address (one IPv4 address, or one
/// IPv6 /64). A real office has one handshake in progress at a time; beyond this many, that
/// address's new attempts are refused while other addresses are still served, so one host
/// stalling its handshakes cannot take the whole [`MAX_PENDING_HANDSHAKES`] table. Every
/// address is validated with a QUIC Retry first, so a host cannot spend another's share by
/// spoofing its address.
pub const MAX_HANDSHAKES_PER_ADDRESS: usize = 4;

/// Accepted connections one node name (one certificate) may hold at once. A real office holds
/// one, two while a dropped link is replaced; a peer opening more is refused, so one
/// authenticated peer cannot multiply its flow-control windows (16 MiB each) without bound.
pub const MAX_CONNECTIONS_PER_PEER: usize = 4;

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

/// Why an incoming connection attempt was refused before any TLS work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Its source address already has [`MAX_HANDSHAKES_PER_ADDRESS`] in progress.
    PerAddress,
    /// [`MAX_PENDING_HANDSHAKES`] are in progress altogether.
    Busy,
}

/// The incoming connections in progress, altogether and per source address. Clones share the
/// same table; a [`Slot`] counts one connection until it is dropped.
#[derive(Debug, Clone, Default)]
pub(crate) struct HandshakeSlots(Arc<Mutex<SlotTable>>);

impl HandshakeSlots {
    /// Takes a slot for a connection attempt from `ip`, or says why not.
    pub(crate) fn take(&self, ip: IpAddr) -> Result<Slot, Refusal> {
        let key = address_key(ip);
        self.lock().take(key)?;
        Ok(Slot {
            slots: self.clone(),
            key,
        })
    }

    /// Connections in progress altogether.
    pub(crate) fn in_progress(&self) -> usize {
        self.lock().total
    }

    fn lock(&self) -> MutexGuard<'_, SlotTable> {
        // The counts stay consistent even if a holder panicked: each update is one statement.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One incoming connection in progress, counted in its [`HandshakeSlots`] until dropped.
#[derive(Debug)]
pub(crate) struct Slot {
    slots: HandshakeSlots,
    key: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.lock().release(self.key);
    }
}

/// The counts behind [`HandshakeSlots`]: at most [`MAX_PENDING_HANDSHAKES`] entries in
/// `per_address`, since every entry holds at least one slot.
#[derive(Debug, Default)]
struct SlotTable {
    total: usize,
    per_address: HashMap<IpAddr, usize>,
}

impl SlotTable {
    /// Counts one more attempt from `key` (an [`address_key`]) unless a limit forbids it.
    fn take(&mut self, key: IpAddr) -> Result<(), Refusal> {
        let from_key = self.per_address.get(&key).copied().unwrap_or(0);
        if from_key >= MAX_HANDSHAKES_PER_ADDRESS {
            return Err(Refusal::PerAddress);
        }
        if self.total >= MAX_PENDING_HANDSHAKES {
            return Err(Refusal::Busy);
        }
        self.total += 1;
        self.per_address.insert(key, from_key + 1);
        Ok(())
    }

    /// Forgets one attempt from `key`.
    fn release(&mut self, key: IpAddr) {
        self.total = self.total.saturating_sub(1);
        if let Some(n) = self.per_address.get_mut(&key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_address.remove(&key);
            }
        }
    }
}

/// The source a limit applies to: an IPv4 address (also when written IPv4-mapped), or the /64
/// of an IPv6 address, since one IPv6 host usually holds a whole /64.
fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(prefix))
            }
        },
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests fail loudly on unexpected errors.
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn v4(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
    }

    #[test]
    fn one_address_cannot_take_more_than_its_share() {
        let slots = HandshakeSlots::default();
        let held: Vec<Slot> = (0..MAX_HANDSHAKES_PER_ADDRESS)
            .map(|_| slots.take(v4(2)).unwrap())
            .collect();
        assert_eq!(slots.take(v4(2)).unwrap_err(), Refusal::PerAddress);
        // Everybody else is still served.
        let other = slots.take(v4(1)).unwrap();
        assert_eq!(slots.in_progress(), MAX_HANDSHAKES_PER_ADDRESS + 1);
        // A finished handshake gives its address's slot back.
        drop(held);
        drop(other);
        assert_eq!(slots.in_progress(), 0);
        assert!(slots.lock().per_address.is_empty());
        let _again = slots.take(v4(2)).unwrap();
    }

    #[test]
    fn the_table_is_bounded_across_addresses() {
        let slots = HandshakeSlots::default();
        let mut held = Vec::new();
        let mut last = 1u8;
        while held.len() < MAX_PENDING_HANDSHAKES {
            last += 1;
            for _ in 0..MAX_HANDSHAKES_PER_ADDRESS {
                if held.len() < MAX_PENDING_HANDSHAKES {
                    held.push(slots.take(v4(last)).unwrap());
                }
            }
        }
        assert_eq!(slots.take(v4(1)).unwrap_err(), Refusal::Busy);
        // An address at its own limit hears about its own limit first.
        assert_eq!(slots.take(v4(2)).unwrap_err(), Refusal::PerAddress);
        held.pop();
        let _fits = slots.take(v4(1)).unwrap();
        assert!(slots.lock().per_address.len() <= MAX_PENDING_HANDSHAKES);
    }

    #[test]
    fn ipv6_hosts_share_their_64_and_mapped_ipv4_is_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::7".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(address_key(a), address_key(b));
        assert_ne!(address_key(a), address_key(c));
        let mapped: IpAddr = "::ffff:127.0.0.2".parse().unwrap();
        assert_eq!(address_key(mapped), v4(2));

        let slots = HandshakeSlots::default();
        let _held: Vec<Slot> = (0..MAX_HANDSHAKES_PER_ADDRESS)
            .map(|_| slots.take(a).unwrap())
            .collect();
        assert_eq!(slots.take(b).unwrap_err(), Refusal::PerAddress);
        assert!(slots.take(c).is_ok());
        let _v4: Vec<Slot> = (0..MAX_HANDSHAKES_PER_ADDRESS)
            .map(|_| slots.take(v4(2)).unwrap())
            .collect();
        assert_eq!(slots.take(mapped).unwrap_err(), Refusal::PerAddress);
    }
}
