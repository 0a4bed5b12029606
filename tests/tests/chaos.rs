//! The fault-injection suite (see `officesync_tests::chaos`): a short run with fixed seeds on
//! every CI run, and a long run (at least 1000 partitions and 100 kills) when
//! `OFFICESYNC_CHAOS_LONG=1` (seed from `OFFICESYNC_TEST_SEED`, or a fresh one).
//!
//! Each run prints its JSON summary on stdout (`-- --nocapture` shows it) and fails on any
//! acknowledged write lost, resurrected delete, foreign value or divergence.

use officesync_tests::chaos::{self, ChaosOptions, LONG_ENV};
use officesync_tests::test_seed;

/// Seeds of the short run: the first is the baseline schedule, the others are regressions
/// (schedules that once found a bug; see each note).
const SHORT_SEEDS: &[u64] = &[20_261_129];

fn run_and_check(opts: &ChaosOptions) {
    let summary = chaos::run(opts).unwrap_or_else(|e| panic!("chaos seed {}: {e:#}", opts.seed));
    println!("{summary}");
    assert_eq!(
        summary["ok"],
        true,
        "chaos seed {} found problems:\n{}",
        opts.seed,
        serde_json::to_string_pretty(&summary).unwrap_or_default()
    );
    assert_eq!(summary["acknowledged_but_lost"], 0);
}

#[test]
fn chaos_short() {
    for &seed in SHORT_SEEDS {
        run_and_check(&ChaosOptions::short(seed));
    }
}

#[test]
fn chaos_long() {
    if std::env::var_os(LONG_ENV).is_none() {
        eprintln!("chaos_long: skipped (set {LONG_ENV}=1 to run it)");
        return;
    }
    run_and_check(&ChaosOptions::long(test_seed("chaos_long")));
}
