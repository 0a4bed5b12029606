//! Heartbeats: periodic probes on the control stream, echoes of the peer's probes, and the
//! round-trip time they measure.
//!
//! Both sides probe every `heartbeat_interval_ms` with `Heartbeat { now_ms, seq }`. The dialer
//! numbers its probes odd and the acceptor even, so a heartbeat with the peer's parity is a
//! probe (echoed with the same `seq`, at most once per half interval) and one with ours is the
//! echo of our probe. From protocol 2 the echo is its own message (`Echo`); the parity rule
//! still tells a protocol-1 peer's echoes apart.

use crate::wire::Heartbeat;

use super::config::Role;
use super::error::SyncError;

/// Heartbeat probes and the round-trip time they measure.
#[derive(Debug, Clone, Default)]
pub(super) struct Heartbeats {
    /// When the next probe is due.
    next_at: u64,
    /// The `seq` of our last probe.
    last_seq: u64,
    /// Our probe awaiting its echo: `(seq, sent at)`.
    outstanding: Option<(u64, u64)>,
    /// The latest round-trip time.
    rtt: Option<u64>,
    /// No echo is sent before this time: at most one per half interval, so a peer flooding
    /// probes gets few answers and cannot grow the control queue.
    next_echo_at: u64,
    /// Probes received since the last echo: past [`MAX_PROBES_PER_ECHO`] the peer is flooding.
    probes_since_echo: u32,
}

/// Most probes a peer may send between two echoes (an honest peer sends one per interval):
/// more is a flood, and closes the session as bad input.
const MAX_PROBES_PER_ECHO: u32 = 64;

impl Heartbeats {
    /// The first probe is due one `interval` after `now` (the session was established).
    pub(super) fn start(&mut self, now: u64, interval: u64) {
        self.next_at = now.saturating_add(interval);
    }

    /// When the next probe is due.
    pub(super) fn next_at(&self) -> u64 {
        self.next_at
    }

    /// The latest round-trip time.
    pub(super) fn rtt(&self) -> Option<u64> {
        self.rtt
    }

    /// The probe to send at `now` (odd `seq` from the dialer, even from the acceptor); the
    /// next is due one `interval` later.
    pub(super) fn probe(&mut self, role: Role, now: u64, interval: u64) -> Heartbeat {
        let first = match role {
            Role::Dialer => 1,
            Role::Acceptor => 2,
        };
        let seq = if self.last_seq == 0 {
            first
        } else {
            self.last_seq.saturating_add(2)
        };
        self.last_seq = seq;
        self.outstanding = Some((seq, now));
        self.next_at = now.saturating_add(interval);
        Heartbeat { now_ms: now, seq }
    }

    /// The echo `h` of one of our probes at `now`: the round trip, when it answers the probe
    /// still outstanding.
    pub(super) fn on_echo(&mut self, now: u64, h: Heartbeat) {
        if let Some((seq, sent)) = self.outstanding {
            if seq == h.seq {
                self.rtt = Some(now.saturating_sub(sent));
                self.outstanding = None;
            }
        }
    }

    /// A peer heartbeat `h` at `now`: the echo to send for a probe, or none (an echo of ours,
    /// told apart by its `seq` parity, gives the round trip). A probe flood is an error.
    pub(super) fn on_heartbeat(
        &mut self,
        role: Role,
        now: u64,
        interval: u64,
        h: Heartbeat,
    ) -> Result<Option<Heartbeat>, SyncError> {
        let our_parity = match role {
            Role::Dialer => 1,
            Role::Acceptor => 0,
        };
        if h.seq % 2 == our_parity {
            self.on_echo(now, h);
            return Ok(None);
        }
        if now < self.next_echo_at {
            // At most one echo per half interval; a flood closes the session.
            self.probes_since_echo += 1;
            if self.probes_since_echo > MAX_PROBES_PER_ECHO {
                return Err(SyncError::LimitExceeded(
                    "heartbeat probes: far more than one per interval",
                ));
            }
            return Ok(None);
        }
        self.probes_since_echo = 0;
        self.next_echo_at = now.saturating_add(interval / 2);
        Ok(Some(Heartbeat {
            now_ms: now,
            seq: h.seq,
        }))
    }
}
