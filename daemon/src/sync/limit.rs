//! Bandwidth limits on the bulk stream of one peer: which `[[sync.limit]]` rate is in force at
//! the node's local time, a token bucket pacing the bulk writer at that rate, and the gauges
//! (rate in force, bulk bytes queued) that status and metrics show.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{Datelike, Timelike};
use officesync_protocol::wire::{BatchComplete, Message, MessageV1, MessageV2};

use crate::config::bandwidth::{Rate, Schedule};

/// The bulk writer hands the stream at most this many bytes at a time while a limit is in
/// force, so the stream never bursts far past the rate (and an urgent stream's frames never
/// wait behind much of it in the connection).
pub(crate) const PACE_CHUNK: usize = 8 << 10;

/// How often the limit in force is looked up again (windows open and close as time passes).
const RECHECK: Duration = Duration::from_secs(1);

/// The bucket holds at most this much time's worth of bytes: the largest burst at the rate.
const BURST: Duration = Duration::from_millis(50);

/// QUIC's own bytes on top of the stream's (packet header, AEAD tag, stream frame header:
/// about 40 bytes per 1,400-byte packet), charged with each write so the rate holds on the
/// wire: 3 %.
const WIRE_OVERHEAD_PERCENT: u64 = 3;

/// What status and metrics read of one session's bulk queue: updated by the driver and the
/// bulk writer, read when the peer table is refreshed.
#[derive(Debug, Default)]
pub(crate) struct LimitGauges {
    /// Bulk bytes handed to the writer and not yet on the stream (frames estimated by
    /// [`approx_bytes`]).
    queued: AtomicU64,
}

impl LimitGauges {
    /// Bulk bytes queued for the stream.
    pub(crate) fn queued(&self) -> u64 {
        self.queued.load(Ordering::Relaxed)
    }

    /// A frame of about `bytes` joined the queue.
    pub(crate) fn queue(&self, bytes: u64) {
        self.queued.fetch_add(bytes, Ordering::Relaxed);
    }

    /// A frame of about `bytes` left it (written).
    pub(crate) fn dequeue(&self, bytes: u64) {
        let _ = self
            .queued
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |q| {
                Some(q.saturating_sub(bytes))
            });
    }
}

/// About how many bytes `msg` takes before compression: values, keys and contexts of a batch,
/// a few dozen bytes for anything else. Used for the queued-bytes gauge only.
pub(crate) fn approx_bytes(msg: &Message) -> u64 {
    const SMALL: u64 = 64;
    let versions = |n: usize, bytes: usize| (n as u64) * 48 + bytes as u64;
    match msg {
        Message::V2(
            MessageV2::Batch(b) | MessageV2::BatchComplete(BatchComplete { batch: b, .. }),
        ) => versions(
            b.versions.len(),
            b.versions
                .iter()
                .map(|v| v.key.len() + v.value.as_ref().map_or(0, Vec::len) + v.context.len() * 24)
                .sum(),
        ),
        Message::V1(MessageV1::Batch(b)) => versions(
            b.versions.len(),
            b.versions
                .iter()
                .map(|v| v.key.len() + v.value.as_ref().map_or(0, Vec::len) + v.context.len() * 24)
                .sum(),
        ),
        _ => SMALL,
    }
}

/// The node's local time as (weekday, 0 = Monday; minute after midnight), from `TZ` or
/// `/etc/localtime`.
pub(crate) fn local_now() -> (usize, u16) {
    let now = chrono::Local::now();
    let minute = now.hour() * 60 + now.minute();
    (
        now.weekday().num_days_from_monday() as usize,
        u16::try_from(minute).unwrap_or(0),
    )
}

/// The rate in force now for `peer` under `schedule` (`None`: no limit).
pub(crate) fn rate_now(schedule: &Schedule, peer: &str) -> Option<Rate> {
    if schedule.is_empty() {
        return None;
    }
    let (day, minute) = local_now();
    schedule.rate_at(peer, day, minute)
}

/// A token bucket: bytes that may go now, refilled at the rate as time passes, holding at
/// most [`BURST`]'s worth.
#[derive(Debug)]
struct Bucket {
    /// Bytes that may go now (negative: owed, to be waited for).
    tokens: f64,
    refilled: Instant,
}

impl Bucket {
    fn new(now: Instant) -> Self {
        Self {
            tokens: 0.0,
            refilled: now,
        }
    }

    /// Charges `bytes` (plus QUIC's overhead) at `rate` at time `now`; returns how long to
    /// wait before they go.
    fn charge(&mut self, rate: Rate, now: Instant, bytes: usize) -> Duration {
        let per_sec = rate.bytes_per_sec() as f64;
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        self.tokens = (self.tokens + elapsed * per_sec).min(per_sec * BURST.as_secs_f64());
        let bytes = bytes as u64;
        self.tokens -= (bytes + bytes * WIRE_OVERHEAD_PERCENT / 100) as f64;
        if self.tokens < 0.0 {
            Duration::from_secs_f64(-self.tokens / per_sec)
        } else {
            Duration::ZERO
        }
    }
}

/// Paces one peer's bulk stream at the rate in force.
#[derive(Debug)]
pub(crate) struct Limiter {
    schedule: Arc<Schedule>,
    peer: String,
    gauges: Arc<LimitGauges>,
    rate: Option<Rate>,
    checked: Option<Instant>,
    bucket: Bucket,
}

impl Limiter {
    /// Paces the bulk stream to `peer` by `schedule`, reporting into `gauges`.
    pub(crate) fn new(schedule: Arc<Schedule>, peer: &str, gauges: Arc<LimitGauges>) -> Self {
        let now = Instant::now();
        let mut l = Self {
            schedule,
            peer: peer.to_owned(),
            gauges,
            rate: None,
            checked: None,
            bucket: Bucket::new(now),
        };
        l.recheck(now);
        l
    }

    /// The gauges this limiter reports into.
    pub(crate) fn gauges(&self) -> &Arc<LimitGauges> {
        &self.gauges
    }

    /// True while a limit is in force (the writer then writes in [`PACE_CHUNK`]s).
    pub(crate) fn limited(&mut self) -> bool {
        self.recheck(Instant::now());
        self.rate.is_some()
    }

    /// Looks up the rate in force again once per [`RECHECK`].
    fn recheck(&mut self, now: Instant) {
        if self
            .checked
            .is_some_and(|t| now.saturating_duration_since(t) < RECHECK)
        {
            return;
        }
        self.checked = Some(now);
        let rate = rate_now(&self.schedule, &self.peer);
        if rate != self.rate {
            tracing::info!(
                limit = %rate.map_or("none".to_owned(), |r| r.to_string()),
                "bulk bandwidth limit in force"
            );
            self.rate = rate;
            self.bucket = Bucket::new(now);
        }
    }

    /// Waits until `bytes` more may go on the stream at the rate in force (at once when
    /// none is).
    pub(crate) async fn pace(&mut self, bytes: usize) {
        let now = Instant::now();
        self.recheck(now);
        let Some(rate) = self.rate else {
            return;
        };
        let wait = self.bucket.charge(rate, now, bytes);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // Tests fail loudly on unexpected errors.

    use super::*;
    use crate::config::bandwidth::{parse_rate, schedule, LimitConfig};

    fn always(rate: &str) -> Arc<Schedule> {
        Arc::new(
            schedule(&[LimitConfig {
                peers: vec!["*".into()],
                rate: rate.into(),
                when: None,
            }])
            .unwrap(),
        )
    }

    #[test]
    fn the_bucket_paces_at_the_rate() {
        let rate = parse_rate("800 kbit/s").unwrap();
        let t0 = Instant::now();
        let mut now = t0;
        let mut bucket = Bucket::new(now);
        for _ in 0..100 {
            now += bucket.charge(rate, now, 10_000);
        }
        // 1 MB (plus 3 % for QUIC) at 100 kB/s: 10.3 s, whatever the writer's pace.
        let took = now.duration_since(t0).as_secs_f64();
        assert!((took - 10.3).abs() < 0.01, "took {took} s");
        // Idle time builds up at most BURST's worth of credit.
        now += Duration::from_secs(60);
        // (5,000 B of credit; 4,000 B cost 4,120.)
        assert_eq!(bucket.charge(rate, now, 4_000), Duration::ZERO);
        let wait = bucket.charge(rate, now, 5_000).as_secs_f64();
        assert!((wait - 0.0427).abs() < 0.0001, "waits {wait} s");
    }

    #[test]
    fn a_limiter_without_a_limit_in_force_is_not_limited() {
        let gauges = Arc::new(LimitGauges::default());
        assert!(!Limiter::new(Arc::new(Schedule::default()), "hefei", gauges.clone()).limited());
        // An entry for another peer does not apply either.
        let other = Arc::new(
            schedule(&[LimitConfig {
                peers: vec!["wuhu".into()],
                rate: "1 Mbit/s".into(),
                when: None,
            }])
            .unwrap(),
        );
        assert!(!Limiter::new(other.clone(), "hefei", gauges.clone()).limited());
        assert!(Limiter::new(other, "wuhu", gauges.clone()).limited());
        assert!(Limiter::new(always("2 Mbit/s"), "hefei", gauges).limited());
    }

    #[test]
    fn queued_bytes_never_go_negative() {
        let g = LimitGauges::default();
        g.queue(100);
        g.dequeue(60);
        assert_eq!(g.queued(), 40);
        g.dequeue(60);
        assert_eq!(g.queued(), 0);
    }
}
