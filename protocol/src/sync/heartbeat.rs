//! Heartbeats: periodic probes on the control stream, echoes of the peer's probes, and the
//! round-trip time they measure.
//!
//! Both sides probe every `heartbeat_interval_ms` with `Heartbeat { now_ms, seq }`. The dialer
//! numbers its probes odd and the acceptor even, so a heartbeat with the peer's parity is a
//! probe (echoed with the same `seq`, at most once per half interval) and one with ours is the
//! echo of our probe.

use crate::wire::Heartbeat;

use super::config::Role;
use super::error::SyncError;
use super::session::Session;

/// Heartbeat probes and the round-trip time they measure.
#[derive(Debug, Clone, Default)]
pub(super) struct Heartbeats {
    /// When the next probe is due.
    pub(super) next_at: u64,
    /// The `seq` of our last probe.
    last_seq: u64,
    /// Our probe awaiting its echo: `(seq, sent at)`.
    outstanding: Option<(u64, u64)>,
    /// The latest round-trip time.
    pub(super) rtt: Option<u64>,
    /// No echo is sent before this time: at most one per half interval, so a peer flooding
    /// probes gets few answers and cannot grow the control queue.
    next_echo_at: u64,
    /// Probes received since the last echo: past [`MAX_PROBES_PER_ECHO`] the peer is flooding.
    probes_since_echo: u32,
}

/// Most probes a peer may send between two echoes (an honest peer sends one per interval):
/// more is a flood, and closes the session as bad input.
pub(super) const MAX_PROBES_PER_ECHO: u32 = 64;

impl Session {
    /// Sends a heartbeat probe (odd `seq` from the dialer, even from the acceptor).
    pub(super) fn send_probe(&mut self) {
        let first = match self.role {
            Role::Dialer => 1,
            Role::Acceptor => 2,
        };
        let seq = if self.hb.last_seq == 0 {
            first
        } else {
            self.hb.last_seq.saturating_add(2)
        };
        self.hb.last_seq = seq;
        self.hb.outstanding = Some((seq, self.now));
        self.hb.next_at = self.now.saturating_add(self.cfg.heartbeat_interval_ms);
        self.control_q.push_back(
            Heartbeat {
                now_ms: self.now,
                seq,
            }
            .into(),
        );
    }

    /// A peer heartbeat: echo a probe, or measure the round trip from an echo. A probe flood
    /// closes the session.
    pub(super) fn on_heartbeat(&mut self, h: Heartbeat) -> Result<(), SyncError> {
        let our_parity = match self.role {
            Role::Dialer => 1,
            Role::Acceptor => 0,
        };
        if h.seq % 2 == our_parity {
            if let Some((seq, sent)) = self.hb.outstanding {
                if seq == h.seq {
                    self.hb.rtt = Some(self.now.saturating_sub(sent));
                    self.hb.outstanding = None;
                }
            }
        } else {
            if self.now < self.hb.next_echo_at {
                // At most one echo per half interval; a flood closes the session.
                self.hb.probes_since_echo += 1;
                if self.hb.probes_since_echo > MAX_PROBES_PER_ECHO {
                    return Err(SyncError::LimitExceeded(
                        "heartbeat probes: far more than one per interval",
                    ));
                }
                return Ok(());
            }
            self.hb.probes_since_echo = 0;
            self.hb.next_echo_at = self.now.saturating_add(self.cfg.heartbeat_interval_ms / 2);
            self.control_q.push_back(
                Heartbeat {
                    now_ms: self.now,
                    seq: h.seq,
                }
                .into(),
            );
        }
        Ok(())
    }
}
