//! What the session hands the driver: frames per stream, store actions and events, in the order
//! they were queued, and the counters reported by [`Session::status`](super::Session::status).

use std::collections::VecDeque;

use crate::wire::{
    Batch, BatchComplete, Complete, Hello, Message, MessageV1, MessageV2, RepairBatch, Restart,
};

use super::api::{Action, Event, SessionStatus};

/// Which send stream a `(collection, origin)` stream's frames travel on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Lane {
    /// The bulk stream (throttled by the driver).
    Bulk,
    /// The urgent stream (protocol 3 and up, urgent collections).
    Urgent,
}

/// The session's outputs awaiting their `poll_*` calls, and its counters.
#[derive(Debug, Default)]
pub(super) struct Outbox {
    control: VecDeque<Message>,
    bulk: VecDeque<Message>,
    /// Frames of the urgent stream (protocol 3): urgent collections' batches and completions.
    urgent: VecDeque<Message>,
    actions: VecDeque<Action>,
    events: VecDeque<Event>,
    stats: Stats,
}

/// Counters reported by [`Session::status`](super::Session::status).
#[derive(Debug, Clone, Default)]
struct Stats {
    batches_sent: u64,
    versions_sent: u64,
    batches_received: u64,
    versions_received: u64,
    rejected: u64,
}

impl Outbox {
    /// Queues `m` on the control stream.
    pub(super) fn control(&mut self, m: Message) {
        self.control.push_back(m);
    }

    /// Queues `b` on the stream `lane` (bulk or urgent), counted as sent.
    pub(super) fn batch(&mut self, lane: Lane, b: Batch) {
        self.stats.batches_sent += 1;
        self.stats.versions_sent += b.versions.len() as u64;
        self.lane(lane).push_back(b.into());
    }

    /// Queues `c` on the stream `lane`.
    pub(super) fn complete(&mut self, lane: Lane, c: Complete) {
        self.lane(lane).push_back(c.into());
    }

    /// Queues `b` on the bulk stream (protocol 3).
    pub(super) fn repair_batch(&mut self, b: RepairBatch) {
        self.bulk.push_back(b.into());
    }

    /// Queues `r` on the stream `lane` (dropped when the session speaks protocol 1).
    pub(super) fn restart(&mut self, lane: Lane, r: Restart) {
        self.lane(lane).push_back(r.into());
    }

    fn lane(&mut self, lane: Lane) -> &mut VecDeque<Message> {
        match lane {
            Lane::Bulk => &mut self.bulk,
            Lane::Urgent => &mut self.urgent,
        }
    }

    /// Queues a store action.
    pub(super) fn action(&mut self, a: Action) {
        self.actions.push_back(a);
    }

    /// The last action queued, to merge into.
    pub(super) fn last_action(&mut self) -> Option<&mut Action> {
        self.actions.back_mut()
    }

    /// Queues an event.
    pub(super) fn event(&mut self, e: Event) {
        self.events.push_back(e);
    }

    /// Counts a received batch of `versions` versions.
    pub(super) fn count_received(&mut self, versions: u64) {
        self.stats.batches_received += 1;
        self.stats.versions_received += versions;
    }

    /// Counts `count` versions refused with `reason`, and reports them.
    pub(super) fn reject(&mut self, reason: String, count: u64) {
        self.stats.rejected += count;
        self.events.push_back(Event::Rejected { reason, count });
    }

    /// The next control frame.
    pub(super) fn pop_control(&mut self) -> Option<Message> {
        self.control.pop_front()
    }

    /// The next bulk frame.
    pub(super) fn pop_bulk(&mut self, merge: bool) -> Option<Message> {
        pop_merged(&mut self.bulk, merge)
    }

    /// The next urgent frame (with `merge`, as [`Outbox::pop_bulk`]).
    pub(super) fn pop_urgent(&mut self, merge: bool) -> Option<Message> {
        pop_merged(&mut self.urgent, merge)
    }

    /// The next action.
    pub(super) fn pop_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The next event.
    pub(super) fn pop_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// No bulk frame is queued.
    pub(super) fn bulk_drained(&self) -> bool {
        self.bulk.is_empty()
    }

    /// No urgent frame is queued.
    pub(super) fn urgent_drained(&self) -> bool {
        self.urgent.is_empty()
    }

    /// The dialer's `Hello`, while it is still queued.
    pub(super) fn queued_hello(&mut self) -> Option<&mut Hello> {
        self.control.iter_mut().find_map(|m| match m {
            Message::V1(MessageV1::Hello(h)) => Some(h),
            _ => None,
        })
    }

    /// Drops every frame and action queued (the session closes); events stay.
    pub(super) fn drop_queued(&mut self) {
        self.control.clear();
        self.bulk.clear();
        self.urgent.clear();
        self.actions.clear();
    }

    /// Fills in the counters of `status`.
    pub(super) fn report(&self, status: &mut SessionStatus) {
        status.batches_sent = self.stats.batches_sent;
        status.versions_sent = self.stats.versions_sent;
        status.batches_received = self.stats.batches_received;
        status.versions_received = self.stats.versions_received;
        status.rejected = self.stats.rejected;
    }
}

/// The next frame of `queue`; with `merge`, a batch followed by the completion of the same
/// `(collection, origin)` stream comes out as one [`BatchComplete`] (protocol 3).
fn pop_merged(queue: &mut VecDeque<Message>, merge: bool) -> Option<Message> {
    let m = queue.pop_front()?;
    if !merge {
        return Some(m);
    }
    match m {
        Message::V2(MessageV2::Batch(batch)) => {
            let through = match queue.front() {
                Some(Message::V2(MessageV2::Complete(c)))
                    if c.collection == batch.collection && c.origin == batch.origin =>
                {
                    c.through
                }
                _ => return Some(Message::V2(MessageV2::Batch(batch))),
            };
            queue.pop_front();
            Some(BatchComplete { batch, through }.into())
        }
        other => Some(other),
    }
}
