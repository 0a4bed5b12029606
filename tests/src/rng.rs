//! A tiny seeded random number generator (SplitMix64) for reproducible test schedules.
//!
//! Tests take their seed from [`test_seed`], print it, and can be replayed with
//! `OFFICESYNC_TEST_SEED=<seed>`.

use std::time::{SystemTime, UNIX_EPOCH};

/// Environment variable holding a seed to replay.
pub const SEED_ENV: &str = "OFFICESYNC_TEST_SEED";

/// SplitMix64: small, fast, and good enough to pick delays and keys.
#[derive(Debug, Clone)]
pub struct TestRng {
    state: u64,
}

impl TestRng {
    /// A generator starting from `seed`.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `low..high` (`low` when the range is empty).
    pub fn range(&mut self, low: u64, high: u64) -> u64 {
        if high <= low {
            return low;
        }
        low + self.next_u64() % (high - low)
    }
}

/// The seed from `OFFICESYNC_TEST_SEED`, or a fresh one from the clock; printed on stderr
/// (shown by the test runner when the test fails) with how to replay it.
pub fn test_seed(test: &str) -> u64 {
    let seed = match std::env::var(SEED_ENV) {
        Ok(text) => text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{SEED_ENV}={text:?} is not a u64")),
        Err(_) => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0x5EED, |d| d.as_nanos() as u64),
    };
    eprintln!("{test}: seed {seed} (replay with {SEED_ENV}={seed})");
    seed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence() {
        let mut a = TestRng::new(7);
        let mut b = TestRng::new(7);
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
        for _ in 0..1000 {
            let x = a.range(10, 20);
            assert!((10..20).contains(&x));
        }
        assert_eq!(a.range(5, 5), 5);
    }
}
