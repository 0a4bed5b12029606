//! The lag history of each peer over the last hour, kept in memory for the status page's
//! sparklines: per peer, one bucket a minute holding the largest lag (each way, summed) seen
//! in that minute.

use std::collections::{BTreeMap, VecDeque};

/// Minutes kept per peer.
pub const HISTORY_MINUTES: usize = 60;

/// Most peers tracked; a peer beyond it is not drawn (the peer table itself is bounded by the
/// transport's connection limits, so this is only a backstop).
const MAX_PEERS: usize = 4096;

/// Per peer, the largest lag of each of the last [`HISTORY_MINUTES`] minutes.
#[derive(Debug, Default)]
pub struct LagHistory {
    peers: BTreeMap<String, VecDeque<(u64, u64)>>,
}

impl LagHistory {
    /// Records that `peer` lagged by `lag` versions at `now_ms`.
    pub fn record(&mut self, peer: &str, lag: u64, now_ms: u64) {
        let minute = now_ms / 60_000;
        if !self.peers.contains_key(peer) && self.peers.len() >= MAX_PEERS {
            return;
        }
        let ring = self.peers.entry(peer.to_owned()).or_default();
        match ring.back_mut() {
            Some((m, max)) if *m == minute => *max = (*max).max(lag),
            _ => ring.push_back((minute, lag)),
        }
        while ring
            .front()
            .is_some_and(|(m, _)| *m + HISTORY_MINUTES as u64 <= minute)
        {
            ring.pop_front();
        }
    }

    /// The buckets of `peer` within the hour before `now_ms`, oldest first, as
    /// `(minutes ago, largest lag)`.
    pub fn series(&self, peer: &str, now_ms: u64) -> Vec<(u64, u64)> {
        let minute = now_ms / 60_000;
        self.peers
            .get(peer)
            .map(|ring| {
                ring.iter()
                    .filter(|(m, _)| *m + (HISTORY_MINUTES as u64) > minute)
                    .map(|(m, lag)| (minute.saturating_sub(*m), *lag))
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_largest_lag_of_each_minute_for_an_hour() {
        let mut h = LagHistory::default();
        let t0 = 1_700_000_000_000 / 60_000 * 60_000;
        h.record("hefei", 3, t0);
        h.record("hefei", 9, t0 + 10_000);
        h.record("hefei", 1, t0 + 20_000);
        h.record("hefei", 4, t0 + 60_000);
        assert_eq!(h.series("hefei", t0 + 60_000), vec![(1, 9), (0, 4)]);
        assert_eq!(h.series("beijing", t0), vec![]);
        for minute in 2..=70 {
            h.record("hefei", minute, t0 + minute * 60_000);
        }
        let series = h.series("hefei", t0 + 70 * 60_000);
        assert_eq!(series.len(), HISTORY_MINUTES);
        assert_eq!(series.first(), Some(&(59, 11)));
        assert_eq!(series.last(), Some(&(0, 70)));
    }
}
