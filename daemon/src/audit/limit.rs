//! The rate limit on refused-authentication entries, so a flood of bad tokens cannot fill the
//! disk. No I/O and no clock: the caller passes `now_ms`.
//!
//! Time is cut into fixed windows (`window_ms`, a minute by default, aligned on multiples of
//! it). In each window at most `per_addr` refusals per client address and `global` in all are
//! recorded one by one; the rest are counted. When a later window starts, the counts of the
//! finished one come out of [`RefusalLimiter::poll_summaries`] as one [`Suppressed`] per address
//! (at most `max_tracked` addresses, the rest added up in one more). So a window writes at most
//! `global + max_tracked + 1` entries however many requests are refused.

use std::collections::{BTreeMap, HashMap};

use crate::time::rfc3339_ms;

use super::entry::{Kind, Record};

/// The limits of a [`RefusalLimiter`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefusalLimits {
    /// Refusals recorded one by one per client address per window.
    pub per_addr: u32,
    /// Refusals recorded one by one in all per window.
    pub global: u32,
    /// The window length in milliseconds (at least 1).
    pub window_ms: u64,
    /// Addresses whose suppressed refusals get a summary of their own per window.
    pub max_tracked: usize,
}

impl Default for RefusalLimits {
    fn default() -> Self {
        RefusalLimits {
            per_addr: 5,
            global: 60,
            window_ms: 60_000,
            max_tracked: 64,
        }
    }
}

/// Refusals not recorded one by one in a window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Suppressed {
    /// The client address, `None` for the addresses past `max_tracked` together.
    pub addr: Option<String>,
    /// How many refusals were not recorded.
    pub count: u64,
    /// Start of the window, Unix milliseconds.
    pub window_start_ms: u64,
    /// End of the window (exclusive), Unix milliseconds.
    pub window_end_ms: u64,
}

impl Suppressed {
    /// The `auth_suppressed` entry for this summary: actor the address (`*` for the others).
    pub fn to_record(&self) -> Record {
        let (actor, from) = match &self.addr {
            Some(addr) => (addr.clone(), addr.clone()),
            None => ("*".to_owned(), "other addresses".to_owned()),
        };
        let detail = format!(
            "suppressed {} refused authentications from {from} between {} and {}",
            self.count,
            rfc3339_ms(self.window_start_ms),
            rfc3339_ms(self.window_end_ms)
        );
        Record::new(Kind::AuthSuppressed, actor).detail(detail)
    }
}

/// Decides which refused authentications are recorded and counts the others.
#[derive(Debug)]
pub struct RefusalLimiter {
    limits: RefusalLimits,
    /// The current window's index (`now_ms / window_ms`).
    window: u64,
    recorded: HashMap<String, u32>,
    recorded_total: u32,
    suppressed: BTreeMap<String, u64>,
    suppressed_other: u64,
    pending: Vec<Suppressed>,
}

impl RefusalLimiter {
    /// A limiter with nothing counted yet.
    pub fn new(limits: RefusalLimits) -> Self {
        RefusalLimiter {
            limits,
            window: 0,
            recorded: HashMap::new(),
            recorded_total: 0,
            suppressed: BTreeMap::new(),
            suppressed_other: 0,
            pending: Vec::new(),
        }
    }

    /// A refusal from `addr` at `now_ms`: `true` if it is to be recorded, `false` if it was
    /// counted instead.
    pub fn handle_refused(&mut self, addr: &str, now_ms: u64) -> bool {
        self.advance(now_ms);
        let mine = self.recorded.get(addr).copied().unwrap_or(0);
        if mine < self.limits.per_addr && self.recorded_total < self.limits.global {
            self.recorded.insert(addr.to_owned(), mine + 1);
            self.recorded_total += 1;
            return true;
        }
        if let Some(count) = self.suppressed.get_mut(addr) {
            *count += 1;
        } else if self.suppressed.len() < self.limits.max_tracked {
            self.suppressed.insert(addr.to_owned(), 1);
        } else {
            self.suppressed_other += 1;
        }
        false
    }

    /// Summaries of windows that have ended by `now_ms`, oldest first, each given once.
    pub fn poll_summaries(&mut self, now_ms: u64) -> Vec<Suppressed> {
        self.advance(now_ms);
        std::mem::take(&mut self.pending)
    }

    /// Summaries of everything counted so far, the current window included (at shutdown). The
    /// current window's limits keep applying.
    pub fn drain(&mut self) -> Vec<Suppressed> {
        self.close_window();
        std::mem::take(&mut self.pending)
    }

    /// Starts the window `now_ms` falls in if it is later than the current one; a clock gone
    /// backwards stays in the current window.
    fn advance(&mut self, now_ms: u64) {
        let window = now_ms / self.limits.window_ms.max(1);
        if window > self.window {
            self.close_window();
            self.window = window;
            self.recorded.clear();
            self.recorded_total = 0;
        }
    }

    /// Moves the current window's suppressed counts to the pending summaries.
    fn close_window(&mut self) {
        let start = self.window.saturating_mul(self.limits.window_ms.max(1));
        let end = start.saturating_add(self.limits.window_ms.max(1));
        let summary = |addr, count| Suppressed {
            addr,
            count,
            window_start_ms: start,
            window_end_ms: end,
        };
        for (addr, count) in std::mem::take(&mut self.suppressed) {
            self.pending.push(summary(Some(addr), count));
        }
        if self.suppressed_other > 0 {
            self.pending.push(summary(None, self.suppressed_other));
            self.suppressed_other = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> RefusalLimits {
        RefusalLimits {
            per_addr: 2,
            global: 3,
            window_ms: 1000,
            max_tracked: 2,
        }
    }

    #[test]
    fn per_address_then_global_cap() {
        let mut l = RefusalLimiter::new(limits());
        assert!(l.handle_refused("a", 10_000));
        assert!(l.handle_refused("a", 10_001));
        assert!(!l.handle_refused("a", 10_002), "per-address cap");
        assert!(l.handle_refused("b", 10_003));
        assert!(!l.handle_refused("c", 10_004), "global cap");
        assert!(l.poll_summaries(10_999).is_empty(), "window not over");
        let s = l.poll_summaries(11_000);
        assert_eq!(
            s,
            vec![
                Suppressed {
                    addr: Some("a".into()),
                    count: 1,
                    window_start_ms: 10_000,
                    window_end_ms: 11_000
                },
                Suppressed {
                    addr: Some("c".into()),
                    count: 1,
                    window_start_ms: 10_000,
                    window_end_ms: 11_000
                },
            ]
        );
        assert!(l.poll_summaries(11_500).is_empty(), "given once");
        assert!(l.handle_refused("a", 11_001), "new window, new allowance");
    }

    #[test]
    fn untracked_addresses_are_summed_and_clock_going_back_stays() {
        let mut l = RefusalLimiter::new(limits());
        assert!(l.handle_refused("x", 5_000));
        assert!(l.handle_refused("x", 5_001));
        assert!(!l.handle_refused("x", 5_002));
        assert!(
            l.handle_refused("p", 4_000),
            "clock back: same window, third of global"
        );
        for addr in ["q", "r", "s", "t"] {
            assert!(
                !l.handle_refused(addr, 4_000),
                "clock back: same window, cap holds"
            );
        }
        let s = l.poll_summaries(6_000);
        assert_eq!(s.len(), 3);
        assert_eq!(s[2].addr, None);
        assert_eq!(s[2].count, 3);
        assert_eq!(s.iter().map(|s| s.count).sum::<u64>(), 5);
        assert!(s[2]
            .to_record()
            .detail
            .unwrap_or_default()
            .contains("from other addresses"));
    }

    #[test]
    fn a_flood_is_bounded_and_drain_flushes_the_current_window() {
        let mut l = RefusalLimiter::new(limits());
        let recorded = (0..10_000u64)
            .filter(|i| l.handle_refused(&format!("10.0.{}.{}", i / 256, i % 256), 7_000))
            .count();
        assert_eq!(recorded, 3);
        let s = l.drain();
        assert_eq!(s.len(), 3);
        assert_eq!(s.iter().map(|s| s.count).sum::<u64>(), 9_997);
        assert!(
            !l.handle_refused("new", 7_500),
            "limits still apply after drain"
        );
        assert!(l.drain().len() == 1);
    }
}
