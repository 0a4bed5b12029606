//! The sans-IO core of the fault proxy: the seeded fate of each datagram and the release
//! schedule (delay, jitter, duplication, reordering). No sockets and no clock: every input
//! is given `now`, every output is drained with `poll_*`.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::mem;
use std::time::{Duration, Instant};

use crate::rng::TestRng;

/// How long a datagram picked for reordering waits for a successor to overtake it; when
/// none comes in time it is released anyway, this much later than its normal release time.
pub const REORDER_HOLD: Duration = Duration::from_millis(20);

/// At most this many datagrams of one direction are held back for reordering at once; a
/// datagram picked for reordering beyond that is sent in order (and not counted).
const MAX_HELD: usize = 8;

/// One direction of the link, as an index into per-direction arrays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Link {
    /// Client → proxy → upstream.
    ToUpstream,
    /// Upstream → proxy → client.
    FromUpstream,
}

impl Link {
    /// Both directions, in index order.
    pub(crate) const ALL: [Link; 2] = [Link::ToUpstream, Link::FromUpstream];

    /// 0 for [`Link::ToUpstream`], 1 for [`Link::FromUpstream`].
    pub(crate) fn index(self) -> usize {
        match self {
            Link::ToUpstream => 0,
            Link::FromUpstream => 1,
        }
    }
}

/// The faults applied to one direction of the link. [`LinkFaults::CLEAN`] (the default)
/// forwards everything at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkFaults {
    /// Drop every datagram silently: the link is cut. Datagrams already delayed in the
    /// proxy are dropped too when their release time comes while the cut lasts.
    pub cut: bool,
    /// Fixed delay added to every datagram.
    pub delay: Duration,
    /// Extra delay drawn uniformly from `0..=jitter` for each datagram. As with netem,
    /// jitter alone can let a datagram overtake an earlier one; such overtakes are not
    /// counted as `reordered`.
    pub jitter: Duration,
    /// Probability (0..=1) that a datagram is dropped.
    pub loss: f64,
    /// Probability (0..=1) that a datagram is sent twice (the copy gets its own jitter).
    pub duplicate: f64,
    /// Probability (0..=1) that a datagram is held back until the next datagram of the same
    /// direction has been released, or for at most [`REORDER_HOLD`] more.
    pub reorder: f64,
}

impl LinkFaults {
    /// No faults at all.
    pub const CLEAN: LinkFaults = LinkFaults {
        cut: false,
        delay: Duration::ZERO,
        jitter: Duration::ZERO,
        loss: 0.0,
        duplicate: 0.0,
        reorder: 0.0,
    };
}

impl Default for LinkFaults {
    fn default() -> Self {
        Self::CLEAN
    }
}

/// Why a datagram was dropped on arrival.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DropCause {
    /// The direction was cut.
    Cut,
    /// The random loss picked it.
    Loss,
}

/// The fate of one datagram.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Decision {
    /// Dropped, and why; `None` when it is to be forwarded.
    pub(crate) drop: Option<DropCause>,
    /// Send a second copy.
    pub(crate) duplicate: bool,
    /// Hold it back so that a later datagram overtakes it.
    pub(crate) reorder: bool,
    /// Delay of the datagram (base plus jitter).
    pub(crate) delay: Duration,
    /// Delay of the copy, when duplicated.
    pub(crate) duplicate_delay: Duration,
}

/// Decides the fate of each datagram of one direction from a seeded generator.
///
/// Every call draws the same number of random values whatever the faults in force, so the
/// fate of the k-th datagram depends only on the seed, the direction, k and the faults in
/// force for it — not on timing, and not on traffic in the other direction.
#[derive(Debug, Clone)]
pub(crate) struct Decider {
    rng: TestRng,
}

impl Decider {
    /// The decider of `link` for the proxy seeded with `seed`; the two directions draw from
    /// independent streams.
    pub(crate) fn for_link(seed: u64, link: Link) -> Self {
        let mut root = TestRng::new(seed);
        let streams = [root.next_u64(), root.next_u64()];
        Self {
            rng: TestRng::new(streams[link.index()]),
        }
    }

    /// The fate of the next datagram under `faults`.
    pub(crate) fn decide(&mut self, faults: &LinkFaults) -> Decision {
        let loss = self.unit();
        let duplicate = self.unit();
        let reorder = self.unit();
        let delay = faults.delay.saturating_add(self.jitter(faults.jitter));
        let duplicate_delay = faults.delay.saturating_add(self.jitter(faults.jitter));
        let drop = if faults.cut {
            Some(DropCause::Cut)
        } else if loss < faults.loss {
            Some(DropCause::Loss)
        } else {
            None
        };
        Decision {
            drop,
            duplicate: duplicate < faults.duplicate,
            reorder: reorder < faults.reorder,
            delay,
            duplicate_delay,
        }
    }

    /// Uniform in `[0, 1)`: `p = 0` never fires, `p = 1` always does.
    fn unit(&mut self) -> f64 {
        (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `0..=max`, at nanosecond resolution; always one draw.
    fn jitter(&mut self, max: Duration) -> Duration {
        let max = u64::try_from(max.as_nanos())
            .unwrap_or(u64::MAX)
            .min(u64::MAX - 1);
        Duration::from_nanos(self.rng.range(0, max + 1))
    }
}

/// A datagram waiting for its release time; ordered by `(at, seq)` so that datagrams due
/// at the same instant leave in the order they were scheduled.
#[derive(Debug)]
struct Queued<P> {
    at: Instant,
    seq: u64,
    link: Link,
    payload: P,
}

impl<P> PartialEq for Queued<P> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl<P> Eq for Queued<P> {}

impl<P> PartialOrd for Queued<P> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<P> Ord for Queued<P> {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// A datagram held back for reordering.
#[derive(Debug)]
struct Held<P> {
    /// Its normal release time.
    at: Instant,
    /// When it is released even if nothing overtook it.
    deadline: Instant,
    payload: P,
}

/// The release schedule of the datagrams in the proxy, both directions.
#[derive(Debug)]
pub(crate) struct Schedule<P> {
    queue: BinaryHeap<Reverse<Queued<P>>>,
    held: [Vec<Held<P>>; 2],
    next_seq: u64,
}

impl<P: Clone> Schedule<P> {
    /// An empty schedule.
    pub(crate) fn new() -> Self {
        Self {
            queue: BinaryHeap::new(),
            held: [Vec::new(), Vec::new()],
            next_seq: 0,
        }
    }

    /// Datagrams waiting, held ones included.
    pub(crate) fn len(&self) -> usize {
        self.queue.len() + self.held.iter().map(Vec::len).sum::<usize>()
    }

    /// Schedules `payload`, which arrived at `now` on `link` and was given `decision`.
    /// Returns true when it was held back for reordering.
    pub(crate) fn handle_datagram(
        &mut self,
        now: Instant,
        link: Link,
        decision: &Decision,
        payload: P,
    ) -> bool {
        if decision.drop.is_some() {
            return false;
        }
        let at = now + decision.delay;
        let copy = decision
            .duplicate
            .then(|| (now + decision.duplicate_delay, payload.clone()));
        let held = &mut self.held[link.index()];
        if decision.reorder && held.len() < MAX_HELD {
            held.push(Held {
                at,
                deadline: at + REORDER_HOLD,
                payload,
            });
            if let Some((at, payload)) = copy {
                held.push(Held {
                    at,
                    deadline: at + REORDER_HOLD,
                    payload,
                });
            }
            return true;
        }
        self.enqueue(at, link, payload);
        if let Some((copy_at, copy)) = copy {
            self.enqueue(copy_at, link, copy);
        }
        // This datagram has overtaken the held ones: they leave right after it.
        for held in mem::take(&mut self.held[link.index()]) {
            self.enqueue(held.at.max(at), link, held.payload);
        }
        false
    }

    /// When the next datagram is due (or a held one must be released), if any.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        let queued = self.queue.peek().map(|Reverse(q)| q.at);
        let held = self.held.iter().flatten().map(|h| h.deadline).min();
        match (queued, held) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The next datagram due at `now`, with its direction.
    pub(crate) fn poll_due(&mut self, now: Instant) -> Option<(Link, P)> {
        self.release_expired(now);
        match self.queue.peek() {
            Some(Reverse(next)) if next.at <= now => {}
            _ => return None,
        }
        self.queue
            .pop()
            .map(|Reverse(queued)| (queued.link, queued.payload))
    }

    /// Queues the held datagrams whose hold ran out by `now`.
    fn release_expired(&mut self, now: Instant) {
        for link in Link::ALL {
            let held = mem::take(&mut self.held[link.index()]);
            let (expired, kept): (Vec<_>, Vec<_>) =
                held.into_iter().partition(|h| h.deadline <= now);
            self.held[link.index()] = kept;
            for held in expired {
                self.enqueue(held.deadline, link, held.payload);
            }
        }
    }

    fn enqueue(&mut self, at: Instant, link: Link, payload: P) {
        self.next_seq += 1;
        self.queue.push(Reverse(Queued {
            at,
            seq: self.next_seq,
            link,
            payload,
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn faults(loss: f64, duplicate: f64, reorder: f64) -> LinkFaults {
        LinkFaults {
            loss,
            duplicate,
            reorder,
            ..LinkFaults::CLEAN
        }
    }

    fn pass() -> Decision {
        Decider::for_link(1, Link::ToUpstream).decide(&LinkFaults::CLEAN)
    }

    fn drain(schedule: &mut Schedule<u32>, now: Instant) -> Vec<u32> {
        std::iter::from_fn(|| schedule.poll_due(now).map(|(_, p)| p)).collect()
    }

    #[test]
    fn same_seed_same_fates() {
        let f = faults(0.3, 0.2, 0.1);
        let mut a = Decider::for_link(42, Link::ToUpstream);
        let mut b = Decider::for_link(42, Link::ToUpstream);
        let mut other = Decider::for_link(42, Link::FromUpstream);
        let fa: Vec<_> = (0..1000).map(|_| a.decide(&f)).collect();
        let fb: Vec<_> = (0..1000).map(|_| b.decide(&f)).collect();
        let fo: Vec<_> = (0..1000).map(|_| other.decide(&f)).collect();
        assert_eq!(fa, fb);
        assert_ne!(fa, fo, "directions draw from independent streams");
    }

    #[test]
    fn fates_do_not_depend_on_other_faults() {
        let mut a = Decider::for_link(7, Link::ToUpstream);
        let mut b = Decider::for_link(7, Link::ToUpstream);
        for i in 0..500 {
            let plain = a.decide(&faults(0.5, 0.0, 0.0));
            let busy = b.decide(&LinkFaults {
                jitter: Duration::from_millis(i % 7),
                ..faults(0.5, 0.5, 0.5)
            });
            assert_eq!(plain.drop, busy.drop, "datagram {i}");
        }
    }

    #[test]
    fn probabilities_zero_and_one_are_exact() {
        let mut d = Decider::for_link(3, Link::FromUpstream);
        for _ in 0..1000 {
            assert_eq!(d.decide(&faults(0.0, 0.0, 0.0)).drop, None);
            let all = d.decide(&faults(1.0, 1.0, 1.0));
            assert_eq!(all.drop, Some(DropCause::Loss));
            assert!(all.duplicate && all.reorder);
        }
        let cut = LinkFaults {
            cut: true,
            ..LinkFaults::CLEAN
        };
        assert_eq!(d.decide(&cut).drop, Some(DropCause::Cut));
    }

    #[test]
    fn delay_is_base_plus_bounded_jitter() {
        let mut d = Decider::for_link(9, Link::ToUpstream);
        let f = LinkFaults {
            delay: Duration::from_millis(50),
            jitter: Duration::from_millis(10),
            ..LinkFaults::CLEAN
        };
        for _ in 0..1000 {
            let fate = d.decide(&f);
            for delay in [fate.delay, fate.duplicate_delay] {
                assert!(delay >= Duration::from_millis(50) && delay <= Duration::from_millis(60));
            }
        }
    }

    #[test]
    fn equal_delays_keep_order_and_wait() {
        let now = Instant::now();
        let mut schedule = Schedule::new();
        let fate = Decision {
            delay: Duration::from_millis(5),
            ..pass()
        };
        for p in 0..10 {
            assert!(!schedule.handle_datagram(now, Link::ToUpstream, &fate, p));
        }
        assert_eq!(
            schedule.poll_timeout(),
            Some(now + Duration::from_millis(5))
        );
        assert!(drain(&mut schedule, now).is_empty());
        assert_eq!(
            drain(&mut schedule, now + Duration::from_millis(5)),
            (0..10).collect::<Vec<_>>()
        );
        assert_eq!(schedule.poll_timeout(), None);
    }

    #[test]
    fn held_datagram_leaves_after_its_successor() {
        let now = Instant::now();
        let mut schedule = Schedule::new();
        let hold = Decision {
            reorder: true,
            ..pass()
        };
        assert!(schedule.handle_datagram(now, Link::ToUpstream, &hold, 1));
        // The other direction does not release it.
        schedule.handle_datagram(now, Link::FromUpstream, &pass(), 100);
        assert_eq!(drain(&mut schedule, now), vec![100]);
        schedule.handle_datagram(now, Link::ToUpstream, &pass(), 2);
        assert_eq!(drain(&mut schedule, now), vec![2, 1]);
    }

    #[test]
    fn held_datagram_is_released_after_the_hold() {
        let now = Instant::now();
        let mut schedule = Schedule::new();
        let hold = Decision {
            reorder: true,
            duplicate: true,
            ..pass()
        };
        schedule.handle_datagram(now, Link::FromUpstream, &hold, 7);
        assert_eq!(schedule.len(), 2);
        assert_eq!(schedule.poll_timeout(), Some(now + REORDER_HOLD));
        assert!(drain(&mut schedule, now).is_empty());
        assert_eq!(drain(&mut schedule, now + REORDER_HOLD), vec![7, 7]);
        assert_eq!(schedule.len(), 0);
    }

    #[test]
    fn dropped_datagrams_are_not_scheduled() {
        let now = Instant::now();
        let mut schedule = Schedule::new();
        let lost = Decision {
            drop: Some(DropCause::Loss),
            ..pass()
        };
        schedule.handle_datagram(now, Link::ToUpstream, &lost, 1);
        assert_eq!(schedule.len(), 0);
        assert_eq!(schedule.poll_timeout(), None);
    }
}
