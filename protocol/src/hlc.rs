//! Hybrid logical clock: timestamps that follow wall time but never go backwards,
//! and the bounded-skew check on timestamps received from peers.

use std::fmt;

use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// An HLC timestamp: wall milliseconds since the Unix epoch plus a logical counter.
/// Ordered by `ms`, then `logical`.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    Encode,
    Decode,
)]
pub struct Hlc {
    /// Wall-clock part, in milliseconds since the Unix epoch.
    pub ms: u64,
    /// Logical part, to order events within one millisecond.
    pub logical: u32,
}

impl fmt::Display for Hlc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.ms, self.logical)
    }
}

/// A received timestamp too far ahead of the local clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("timestamp {remote} is {ahead_ms} ms ahead of the local clock (limit {max_skew_ms} ms)")]
pub struct ClockSkewError {
    /// The rejected timestamp.
    pub remote: Hlc,
    /// How far ahead of the local wall clock it was.
    pub ahead_ms: u64,
    /// The configured bound.
    pub max_skew_ms: u64,
}

/// How far ahead of its own wall clock a received timestamp may move this clock. A version
/// stamped further ahead (yet within the skew bound) is accepted but only pulls the clock this
/// far: a fast office, or a hostile one stamping just under the bound, cannot drag every
/// node's later writes into a future that nodes with a stricter bound refuse. Causal order
/// does not depend on it (a write supersedes what it saw through its causal context).
pub const MAX_ABSORB_AHEAD_MS: u64 = 1_000;

/// The clock of one replica. Sans-IO: every call is given the wall time.
#[derive(Debug, Clone, Default)]
pub struct HlcClock {
    last: Hlc,
}

impl HlcClock {
    /// A clock that has issued nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// A clock that resumes after `last` (restored from the store).
    pub fn resume(last: Hlc) -> Self {
        Self { last }
    }

    /// The last timestamp issued or observed.
    pub fn last(&self) -> Hlc {
        self.last
    }

    /// Issues a timestamp for a local event at wall time `now_ms`, greater than any before.
    pub fn tick(&mut self, now_ms: u64) -> Hlc {
        self.last = if now_ms > self.last.ms {
            Hlc {
                ms: now_ms,
                logical: 0,
            }
        } else {
            successor(self.last)
        };
        self.last
    }

    /// Checks a remote timestamp against the skew bound and, if accepted, moves the clock
    /// past it so later local events order after it, but never further than
    /// [`MAX_ABSORB_AHEAD_MS`] ahead of `now_ms`.
    pub fn observe(
        &mut self,
        remote: Hlc,
        now_ms: u64,
        max_skew_ms: u64,
    ) -> Result<(), ClockSkewError> {
        check_skew(remote, now_ms, max_skew_ms)?;
        let ceiling = Hlc {
            ms: now_ms.saturating_add(MAX_ABSORB_AHEAD_MS),
            logical: 0,
        };
        let absorbed = remote.min(ceiling);
        if absorbed > self.last {
            self.last = absorbed;
        }
        Ok(())
    }
}

/// Rejects `remote` when it is more than `max_skew_ms` ahead of `now_ms`.
pub fn check_skew(remote: Hlc, now_ms: u64, max_skew_ms: u64) -> Result<(), ClockSkewError> {
    let ahead_ms = remote.ms.saturating_sub(now_ms);
    if ahead_ms > max_skew_ms {
        Err(ClockSkewError {
            remote,
            ahead_ms,
            max_skew_ms,
        })
    } else {
        Ok(())
    }
}

fn successor(t: Hlc) -> Hlc {
    match t.logical.checked_add(1) {
        Some(logical) => Hlc { ms: t.ms, logical },
        None => Hlc {
            ms: t.ms + 1,
            logical: 0,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_is_monotonic_when_wall_clock_goes_back() {
        let mut c = HlcClock::new();
        let a = c.tick(1000);
        let b = c.tick(900);
        let d = c.tick(1000);
        let e = c.tick(1001);
        assert!(a < b && b < d && d < e);
        assert_eq!(
            e,
            Hlc {
                ms: 1001,
                logical: 0
            }
        );
    }

    #[test]
    fn observe_moves_clock_forward_within_bound() {
        let mut c = HlcClock::new();
        c.tick(1000);
        let near = Hlc {
            ms: 1500,
            logical: 3,
        };
        c.observe(near, 1000, 10_000).expect("within bound");
        assert!(c.tick(1000) > near);
    }

    #[test]
    fn a_stamp_far_ahead_pulls_the_clock_only_a_little() {
        let mut c = HlcClock::new();
        let far = Hlc {
            ms: 9_000,
            logical: 3,
        };
        c.observe(far, 1000, 10_000).expect("within bound");
        let next = c.tick(1000);
        assert!(next < far, "{next} follows the stamp");
        assert!(next.ms <= 1000 + MAX_ABSORB_AHEAD_MS);
        assert!(
            next > Hlc {
                ms: 1000,
                logical: 0
            }
        );
    }

    #[test]
    fn observe_rejects_far_future() {
        let mut c = HlcClock::new();
        let err = c
            .observe(
                Hlc {
                    ms: 400_001,
                    logical: 0,
                },
                100_000,
                300_000,
            )
            .expect_err("too far ahead");
        assert_eq!(err.ahead_ms, 300_001);
        assert_eq!(c.last(), Hlc::default());
        assert!(check_skew(
            Hlc {
                ms: 400_000,
                logical: 9
            },
            100_000,
            300_000
        )
        .is_ok());
    }

    #[test]
    fn logical_overflow_carries_into_ms() {
        let mut c = HlcClock::resume(Hlc {
            ms: 10,
            logical: u32::MAX,
        });
        assert_eq!(c.tick(5), Hlc { ms: 11, logical: 0 });
    }
}
