//! Backoff for peers that send bad input.
//!
//! The rule: every session a peer makes fail with bad input (a frame that does not decode or
//! validate, a protocol violation, a timestamp beyond the skew bound) is one **strike** against
//! the peer's node name (from its certificate). After strike *n* the node refuses connections
//! from that name — accepted or dialed — for `PENALTY_BASE · 2^(n−1)`, at most
//! [`PENALTY_MAX`]: 1 s, 2 s, 4 s, … 5 min. Refused connections are closed with
//! [`ErrorCode::Backoff`] right after the TLS handshake, before any stream is read. A peer
//! with no strike for [`PENALTY_FORGIVE_AFTER`] starts again from zero, so a one-off bug costs
//! a legitimate office one second.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use officesync_protocol::wire::ErrorCode;

/// Refusal after the first strike; doubles with every further one.
pub const PENALTY_BASE: Duration = Duration::from_secs(1);

/// Longest refusal.
pub const PENALTY_MAX: Duration = Duration::from_secs(300);

/// Strikes are forgotten after this long without a new one.
pub const PENALTY_FORGIVE_AFTER: Duration = Duration::from_secs(600);

/// Most peer names tracked (only authenticated peers strike, so this is never reached in a
/// real deployment; past it, forgiven entries are dropped first, then the oldest).
const MAX_TRACKED: usize = 1024;

#[derive(Debug, Clone, Copy)]
struct Entry {
    strikes: u32,
    last: Instant,
    until: Instant,
}

/// The strikes and refusals of every peer, shared by the accept loop, the dialers and the
/// sessions (through [`Misbehavior`]). Clones share the same table.
#[derive(Debug, Clone, Default)]
pub struct Penalties {
    table: Arc<Mutex<HashMap<String, Entry>>>,
}

impl Penalties {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // The table stays consistent even if a holder panicked: entries are plain values.
        self.table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records one strike against `peer` at `now`; returns how long it is now refused.
    pub fn strike_at(&self, peer: &str, now: Instant) -> Duration {
        let mut table = self.lock();
        if table.len() >= MAX_TRACKED && !table.contains_key(peer) {
            table.retain(|_, e| now.duration_since(e.last) < PENALTY_FORGIVE_AFTER);
            if table.len() >= MAX_TRACKED {
                if let Some(oldest) = table
                    .iter()
                    .min_by_key(|(_, e)| e.last)
                    .map(|(k, _)| k.clone())
                {
                    table.remove(&oldest);
                }
            }
        }
        let entry = table.entry(peer.to_owned()).or_insert(Entry {
            strikes: 0,
            last: now,
            until: now,
        });
        if now.duration_since(entry.last) >= PENALTY_FORGIVE_AFTER {
            entry.strikes = 0;
        }
        entry.strikes = entry.strikes.saturating_add(1);
        entry.last = now;
        let ban = ban_for(entry.strikes);
        entry.until = now + ban;
        ban
    }

    /// Records one strike against `peer` now; returns how long it is now refused.
    pub fn strike(&self, peer: &str) -> Duration {
        self.strike_at(peer, Instant::now())
    }

    /// How much longer `peer` is refused at `now` (`None`: not refused).
    pub fn remaining_at(&self, peer: &str, now: Instant) -> Option<Duration> {
        let table = self.lock();
        let entry = table.get(peer)?;
        (entry.until > now).then(|| entry.until - now)
    }

    /// How much longer `peer` is refused now (`None`: not refused).
    pub fn remaining(&self, peer: &str) -> Option<Duration> {
        self.remaining_at(peer, Instant::now())
    }

    /// The strikes `peer` has (not yet forgiven).
    pub fn strikes(&self, peer: &str) -> u32 {
        self.lock().get(peer).map_or(0, |e| {
            if e.last.elapsed() >= PENALTY_FORGIVE_AFTER {
                0
            } else {
                e.strikes
            }
        })
    }
}

/// The refusal after strike `n` (n ≥ 1).
fn ban_for(strikes: u32) -> Duration {
    let doublings = strikes.saturating_sub(1).min(16);
    PENALTY_BASE.saturating_mul(1 << doublings).min(PENALTY_MAX)
}

/// A session's handle to report the peer's bad input: logs it (inside the session's span,
/// which names the peer), and records a strike.
#[derive(Debug, Clone)]
pub struct Misbehavior {
    peer: String,
    penalties: Penalties,
}

impl Misbehavior {
    pub(crate) fn new(peer: &str, penalties: Penalties) -> Self {
        Self {
            peer: peer.to_owned(),
            penalties,
        }
    }

    /// The peer made the session fail with `code` because of `detail`: log it and record a
    /// strike. Returns how long the peer is now refused.
    pub fn report(&self, code: ErrorCode, detail: &str) -> Duration {
        let ban = self.penalties.strike(&self.peer);
        tracing::warn!(
            peer = %self.peer,
            code = code.as_str(),
            error = %detail,
            strikes = self.penalties.strikes(&self.peer),
            refused_for_ms = u64::try_from(ban.as_millis()).unwrap_or(u64::MAX),
            "bad input from peer; closing the connection"
        );
        ban
    }

    /// The shared table (for tests and status).
    pub fn penalties(&self) -> &Penalties {
        &self.penalties
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_grow_cap_and_are_forgiven() {
        let p = Penalties::default();
        let t0 = Instant::now();
        assert_eq!(p.remaining_at("rogue", t0), None);
        assert_eq!(p.strike_at("rogue", t0), Duration::from_secs(1));
        assert_eq!(
            p.remaining_at("rogue", t0 + Duration::from_millis(400)),
            Some(Duration::from_millis(600))
        );
        assert_eq!(p.remaining_at("rogue", t0 + Duration::from_secs(1)), None);
        assert_eq!(p.remaining_at("hefei", t0), None, "other peers unaffected");
        let t1 = t0 + Duration::from_secs(2);
        assert_eq!(p.strike_at("rogue", t1), Duration::from_secs(2));
        assert_eq!(p.strike_at("rogue", t1), Duration::from_secs(4));
        for _ in 0..20 {
            p.strike_at("rogue", t1);
        }
        assert_eq!(p.remaining_at("rogue", t1), Some(PENALTY_MAX));
        // Quiet for the forgiveness period: back to one second.
        let t2 = t1 + PENALTY_FORGIVE_AFTER;
        assert_eq!(p.strike_at("rogue", t2), PENALTY_BASE);
    }

    #[test]
    fn table_is_bounded() {
        let p = Penalties::default();
        let t0 = Instant::now();
        for i in 0..(MAX_TRACKED + 50) {
            p.strike_at(&format!("n{i}"), t0 + Duration::from_millis(i as u64));
        }
        assert!(p.lock().len() <= MAX_TRACKED);
        assert!(p
            .remaining_at(&format!("n{}", MAX_TRACKED + 49), t0)
            .is_some());
    }
}
