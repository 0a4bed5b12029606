//! The sending side: per `(collection, origin)` how far the peer has been sent, the one Load
//! in flight, turning loaded chunks into `Batch` + `Complete` frames, acknowledgements, and
//! restarting streams for a repair.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use crate::dot::{ReplicaId, VersionVector};
use crate::policy::Policy;
use crate::version::Version;
use crate::wire::{Ack, Batch, Complete, Restart};

use super::api::Action;
use super::config::SessionConfig;
use super::error::{clip, SyncError};
use super::outbox::{Lane, Outbox};

/// `(collection, origin)`.
type StreamKey = (String, ReplicaId);

/// The sending state of a session.
#[derive(Debug, Default)]
pub(super) struct Tx {
    streams: BTreeMap<StreamKey, OutStream>,
    loading: Option<LoadInFlight>,
    /// Streams that may have something to send (pruned when they do not).
    ready: BTreeSet<StreamKey>,
    /// The stream last loaded, for round-robin between streams.
    cursor: Option<StreamKey>,
    /// A stream waits for dots this node cannot send (they are not its own): a digest round of
    /// that collection at this time tells it whether the peer got them elsewhere.
    dependency_round: Option<(u64, String)>,
}

/// How long a stream waits for a dependency this node cannot send before a digest round asks
/// the peer what it holds.
const DEPENDENCY_ROUND_MS: u64 = 5_000;

/// What has been sent of one origin in one collection.
#[derive(Debug, Default)]
struct OutStream {
    /// Every live version up to this counter has been queued (the next Load starts here).
    sent_through: u64,
    /// The highest `Complete` sent in this session.
    completed: u64,
    /// The highest `Ack` received.
    acked: u64,
    /// Bumped when the stream restarts, so a Load answer from before is dropped.
    epoch: u64,
    /// Set while re-streaming from counter 0 for a repair.
    repair: Option<RepairTx>,
    /// The next version of this stream is stamped beyond what peers accept
    /// (`max_clock_skew_ms` ahead of this node's clock): nothing more is sent before this
    /// node's clock reaches this time (it was stamped while the clock ran fast).
    held_until: u64,
    /// The next version's causal context covers `(origin, counter)` of this collection, which
    /// the peer is not known to hold: nothing more is sent until it is (the peer would refuse
    /// a context covering dots it has not seen).
    waiting_for: Option<(ReplicaId, u64)>,
}

/// A repair re-stream in progress.
#[derive(Debug)]
struct RepairTx {
    /// The first Load covers only counter 1, so the receiver recognises the restart.
    first: bool,
}

/// The Load the driver is working on.
#[derive(Debug)]
struct LoadInFlight {
    key: StreamKey,
    after: u64,
    through: u64,
    epoch: u64,
}

/// The next Load to issue.
struct Plan {
    after: u64,
    through: u64,
    repair: bool,
}

/// True when this node sends versions of `origin` to `peer`: relays send every origin, other
/// nodes their current incarnation and the peer's earlier incarnations (a peer restored from a
/// backup gets back what it wrote after the copy), once the peer's current one is known.
/// Peers refuse the rest.
pub(super) fn sends_origin(cfg: &SessionConfig, peer: PeerIds<'_>, origin: &ReplicaId) -> bool {
    cfg.relay
        || *origin == cfg.replica
        || (origin.node_name() == peer.0 && peer.1.is_some_and(|current| current != origin))
}

/// The peer's node name and, once known, its current incarnation.
pub(super) type PeerIds<'a> = (&'a str, Option<&'a ReplicaId>);

/// How far within the peer's clock skew bound a version must be stamped to be sent: a fifth of
/// `max_clock_skew_ms`, at most a minute. A receiver with a slightly slower clock (or a
/// version relayed from an office stamping just under the bound) then still accepts it.
pub(super) fn skew_margin_ms(max_clock_skew_ms: u64) -> u64 {
    (max_clock_skew_ms / 5).min(60_000)
}

/// Estimated size of a version on the wire.
pub(super) fn version_size(v: &Version) -> usize {
    v.key.len()
        + v.value.as_ref().map_or(0, Vec::len)
        + v.dot.origin.as_str().len()
        + v.context.len() * 24
        + 48
}

/// The [`SendView`] of a session, borrowing only the fields it reads (so the session's other
/// parts stay free to borrow mutably).
macro_rules! send_view {
    ($s:ident) => {
        super::send::SendView::new(
            &$s.cfg,
            $s.now,
            &$s.local,
            &$s.peer_vvs,
            &$s.policy,
            (&$s.peer.node, $s.rx.peer_replica()),
            ($s.role == super::config::Role::Dialer, $s.protocol),
        )
    };
}
pub(super) use send_view;

/// What the sending side reads of the rest of the session.
#[derive(Clone, Copy)]
pub(super) struct SendView<'a> {
    cfg: &'a SessionConfig,
    now: u64,
    /// Our offerable vectors.
    local: &'a BTreeMap<String, VersionVector>,
    /// What the peer is known to hold.
    peer_vvs: &'a BTreeMap<String, VersionVector>,
    policy: &'a Policy,
    peer: PeerIds<'a>,
    /// This side dialed the connection (it sends `_status` up).
    dialer: bool,
    /// The protocol version spoken (3 and up: urgent collections have their own stream).
    protocol: u16,
}

/// Which lanes may take another Load: a lane whose frames are still queued (or whose driver
/// channel is full) waits, the other goes on.
#[derive(Debug, Clone, Copy)]
pub(super) struct Free {
    /// The bulk stream has room and nothing queued.
    pub(super) bulk: bool,
    /// The urgent stream has nothing queued.
    pub(super) urgent: bool,
}

impl<'a> SendView<'a> {
    /// The view of a session with these parts (`dialer`: this side dialed; `protocol`: the
    /// version spoken).
    pub(super) fn new(
        cfg: &'a SessionConfig,
        now: u64,
        local: &'a BTreeMap<String, VersionVector>,
        peer_vvs: &'a BTreeMap<String, VersionVector>,
        policy: &'a Policy,
        peer: PeerIds<'a>,
        (dialer, protocol): (bool, u16),
    ) -> Self {
        Self {
            cfg,
            now,
            local,
            peer_vvs,
            policy,
            peer,
            dialer,
            protocol,
        }
    }

    /// The stream `collection`'s frames travel on: the urgent one for an urgent collection
    /// from protocol 3 on, else the bulk one.
    pub(super) fn lane(&self, collection: &str) -> Lane {
        if self.protocol >= 3 && self.cfg.is_urgent(collection) {
            Lane::Urgent
        } else {
            Lane::Bulk
        }
    }

    fn lane_free(&self, collection: &str, free: Free) -> bool {
        match self.lane(collection) {
            Lane::Bulk => free.bulk,
            Lane::Urgent => free.urgent,
        }
    }

    fn may_send(&self, collection: &str) -> bool {
        self.policy.may_read(self.peer.0, collection)
            && crate::status::sends_on_side(collection, self.dialer)
    }

    fn local(&self, collection: &str, origin: &ReplicaId) -> u64 {
        self.local.get(collection).map_or(0, |vv| vv.get(origin))
    }

    fn peer(&self, collection: &str, origin: &ReplicaId) -> u64 {
        self.peer_vvs.get(collection).map_or(0, |vv| vv.get(origin))
    }
}

impl Tx {
    /// Marks every stream of `collection` ready (creating the missing ones), if the peer may
    /// read it.
    pub(super) fn ready_all(&mut self, view: SendView<'_>, collection: &str) {
        if !view.may_send(collection) {
            return;
        }
        let origins: Vec<ReplicaId> = view
            .local
            .get(collection)
            .map(|vv| vv.iter().map(|(o, _)| o.clone()).collect())
            .unwrap_or_default();
        for origin in origins {
            self.mark_ready(view.cfg, view.peer, collection, origin);
        }
    }

    /// Marks the stream of `origin` in `collection` ready (creating it), if we send `origin`
    /// to `peer`.
    pub(super) fn mark_ready(
        &mut self,
        cfg: &SessionConfig,
        peer: PeerIds<'_>,
        collection: &str,
        origin: ReplicaId,
    ) {
        if !sends_origin(cfg, peer, &origin) {
            return;
        }
        let key = (collection.to_owned(), origin);
        if !self.streams.contains_key(&key) {
            self.streams.insert(key.clone(), OutStream::default());
        }
        self.ready.insert(key);
    }

    /// Issues the next Load into `out` if none is in flight, for a stream whose lane is
    /// `free`.
    pub(super) fn pump(&mut self, view: SendView<'_>, out: &mut Outbox, free: Free) {
        if self.loading.is_some() {
            return;
        }
        let (found, idle) = self.next_load(view, free);
        for k in idle {
            self.ready.remove(&k);
            self.forget_at_rest(&k);
        }
        let Some((key, plan)) = found else {
            return;
        };
        let epoch = self.streams.get(&key).map_or(0, |s| s.epoch);
        out.action(Action::Load {
            collection: key.0.clone(),
            origin: key.1.clone(),
            after: plan.after,
            through: plan.through,
            max_versions: view.cfg.batch_max_versions.max(1),
            max_bytes: view.cfg.batch_max_bytes.max(1),
            repair: plan.repair,
        });
        self.cursor = Some(key.clone());
        self.loading = Some(LoadInFlight {
            key,
            after: plan.after,
            through: plan.through,
            epoch,
        });
    }

    /// The driver's answer to the Load in flight (ignored if it is not for that Load's
    /// stream): queues its `Batch` frames and `Complete` into `out`.
    /// `None` when the answer is not for the Load in flight.
    pub(super) fn on_loaded(
        &mut self,
        view: SendView<'_>,
        out: &mut Outbox,
        (collection, origin): (&str, &ReplicaId),
        versions: Vec<Version>,
        scanned: u64,
    ) -> Option<Result<(), SyncError>> {
        let matches = self
            .loading
            .as_ref()
            .is_some_and(|l| l.key.0 == collection && l.key.1 == *origin);
        if !matches {
            return None;
        }
        let load = self.loading.take()?;
        Some(self.send_loaded(view, out, load, versions, scanned))
    }

    /// Forgets the Load in flight (the session closed).
    pub(super) fn drop_load(&mut self) {
        self.loading = None;
    }

    /// Nothing to send and nothing in flight on the sending side (given whether the bulk
    /// queue is drained).
    pub(super) fn is_idle(&self, view: SendView<'_>, bulk_drained: bool) -> bool {
        self.loading.is_none()
            && bulk_drained
            && self.ready.iter().all(|k| self.plan(view, k).is_none())
    }

    /// Every `Complete` sent for `collection` has been acknowledged.
    pub(super) fn acked(&self, collection: &str) -> bool {
        self.streams
            .iter()
            .filter(|((c, _), _)| c == collection)
            .all(|(_, s)| s.acked >= s.completed)
    }

    /// Restarts every stream of `collection` from counter 0 for a full reconciliation, each
    /// announced by a `Restart` on the bulk stream (protocol 2; protocol 1 drops it and the
    /// receiver infers the restart from the first re-streamed counter).
    pub(super) fn start_repair(&mut self, view: SendView<'_>, out: &mut Outbox, collection: &str) {
        self.ready_all(view, collection);
        for ((c, origin), s) in self.streams.iter_mut() {
            if c == collection {
                s.sent_through = 0;
                s.epoch = s.epoch.wrapping_add(1);
                s.repair = Some(RepairTx { first: true });
                out.restart(
                    view.lane(c),
                    Restart {
                        collection: c.clone(),
                        origin: origin.clone(),
                    },
                );
            }
        }
    }

    /// The peer acknowledged applying what we sent; it may not acknowledge beyond what we
    /// completed, or beyond what it told us it holds (`known`: a stream at rest is
    /// forgotten, see [`Tx::forget_at_rest`]).
    pub(super) fn on_ack(&mut self, a: &Ack, known: u64) -> Result<(), SyncError> {
        let key = (a.collection.clone(), a.origin.clone());
        let sent = self.streams.get(&key).map_or(0, |s| s.completed).max(known);
        if a.through > sent {
            return Err(SyncError::OutOfOrder {
                collection: clip(&key.0),
                origin: clip(key.1.as_str()),
                what: format!("ack through {} beyond completion through {sent}", a.through),
            });
        }
        if let Some(s) = self.streams.get_mut(&key) {
            s.acked = s.acked.max(a.through);
        }
        self.forget_at_rest(&key);
        Ok(())
    }

    /// The streams held (test only: those at rest are forgotten).
    #[cfg(test)]
    pub(super) fn streams_held(&self) -> usize {
        self.streams.len()
    }

    /// Forgets the stream of `key` when it is at rest: not ready, not loading, everything
    /// sent acknowledged, no repair, hold or wait pending. Its state is then what the peer's
    /// vector says (acknowledgements raise it), so a stream made again when its origin grows
    /// starts where this one stopped. A relay keeps a stream per origin per session only
    /// while it has something in flight, not for every origin of the province.
    fn forget_at_rest(&mut self, key: &StreamKey) {
        let busy = self.ready.contains(key) || self.loading.as_ref().is_some_and(|l| l.key == *key);
        let at_rest = self.streams.get(key).is_some_and(|s| {
            s.repair.is_none()
                && s.waiting_for.is_none()
                && s.held_until == 0
                && s.completed <= s.acked
                && s.sent_through <= s.acked
        });
        if at_rest && !busy {
            self.streams.remove(key);
        }
    }

    /// When the pending dependency round is due.
    pub(super) fn dependency_round_at(&self) -> Option<u64> {
        self.dependency_round.as_ref().map(|(at, _)| *at)
    }

    /// The collection whose dependency round is due at `view.now`, if any: while a stream of
    /// it still waits for dots this node cannot send, the next round is scheduled and the
    /// collection returned (to be verified with the peer).
    pub(super) fn due_dependency_round(&mut self, view: SendView<'_>) -> Option<String> {
        let (_, collection) = self.dependency_round.take_if(|(at, _)| view.now >= *at)?;
        // Again every few seconds while a stream of it still waits.
        if !self.waits_for_others(view, &collection) {
            return None;
        }
        let next = view.now.saturating_add(DEPENDENCY_ROUND_MS);
        self.dependency_round = Some((next, collection.clone()));
        Some(collection)
    }

    /// The next ready stream of a free lane with something to send, round-robin after the
    /// last one loaded (`_nodes` first, then urgent collections), and the ready streams found
    /// to have nothing to send.
    fn next_load(
        &self,
        view: SendView<'_>,
        free: Free,
    ) -> (Option<(StreamKey, Plan)>, Vec<StreamKey>) {
        let ready = &self.ready;
        let (after, before) = match &self.cursor {
            Some(k) => (
                ready.range::<StreamKey, _>((Bound::Excluded(k), Bound::Unbounded)),
                ready.range::<StreamKey, _>((Bound::Unbounded, Bound::Included(k))),
            ),
            None => (ready.range::<StreamKey, _>(..), ready.range(..)),
        };
        let wrap = if self.cursor.is_some() { usize::MAX } else { 0 };
        let mut idle = Vec::new();
        // Certificates first: the peer verifies every other version against them.
        let is_nodes = |k: &&StreamKey| k.0 == crate::signing::NODES_COLLECTION;
        let nodes = ready.iter().filter(is_nodes);
        let rest = after.chain(before.take(wrap)).filter(|k| !is_nodes(k));
        // Urgent collections next (a first pass, only when there are any): they overtake bulk
        // catch-up.
        let any_urgent = !view.cfg.urgent.is_empty();
        let is_urgent = move |k: &&StreamKey| any_urgent && view.cfg.is_urgent(&k.0);
        let urgent = rest
            .clone()
            .take(if any_urgent { usize::MAX } else { 0 })
            .filter(is_urgent);
        let bulk = rest.filter(|k| !is_urgent(k));
        for k in nodes.chain(urgent).chain(bulk) {
            if !view.lane_free(&k.0, free) {
                continue; // its lane is busy: it stays ready
            }
            match self.plan(view, k) {
                Some(p) => return (Some((k.clone(), p)), idle),
                // A held stream stays ready: it goes on once the hold ends.
                None if self.held(view, k) => {}
                None => idle.push(k.clone()),
            }
        }
        (None, idle)
    }

    /// True while `key` waits for this node's clock to reach a version's timestamp, or for
    /// the peer to hold what its next version's context covers.
    fn held(&self, view: SendView<'_>, key: &StreamKey) -> bool {
        self.streams.get(key).is_some_and(|s| {
            s.held_until > view.now
                || s.waiting_for
                    .as_ref()
                    .is_some_and(|(o, n)| self.peer_holds(view, &key.0, o) < *n)
        })
    }

    /// Some stream of `collection` waits for dots this node cannot send the peer.
    fn waits_for_others(&self, view: SendView<'_>, collection: &str) -> bool {
        self.streams.iter().any(|((c, _), s)| {
            c == collection
                && s.waiting_for.as_ref().is_some_and(|(o, n)| {
                    !sends_origin(view.cfg, view.peer, o)
                        && self.peer_holds(view, collection, o) < *n
                })
        })
    }

    /// The counter of `origin` the peer holds in `collection` as far as we know: its vector,
    /// raised by its completions and acks, and what we completed to it in this session (it
    /// applies our streams in order).
    fn peer_holds(&self, view: SendView<'_>, collection: &str, origin: &ReplicaId) -> u64 {
        let known = view.peer(collection, origin);
        let sent = self
            .streams
            .get(&(collection.to_owned(), origin.clone()))
            .map_or(0, |s| s.completed);
        known.max(sent)
    }

    /// What to load next for one stream, if anything.
    fn plan(&self, view: SendView<'_>, key: &StreamKey) -> Option<Plan> {
        let (collection, origin) = key;
        let s = self.streams.get(key)?;
        if !view.may_send(collection) || self.held(view, key) {
            return None;
        }
        let target = view.local(collection, origin);
        if let Some(r) = &s.repair {
            if s.sent_through < target {
                let through = if r.first { 1 } else { target };
                return Some(Plan {
                    after: s.sent_through,
                    through,
                    repair: true,
                });
            }
        }
        let known = view.peer(collection, origin);
        let after = s.sent_through.max(known);
        (target > after).then_some(Plan {
            after,
            through: target,
            repair: false,
        })
    }

    /// Turns a Load answer into `Batch` frames and a `Complete`.
    fn send_loaded(
        &mut self,
        view: SendView<'_>,
        out: &mut Outbox,
        load: LoadInFlight,
        versions: Vec<Version>,
        scanned: u64,
    ) -> Result<(), SyncError> {
        let (collection, origin) = &load.key;
        if scanned <= load.after || scanned > load.through {
            return Err(SyncError::Store(format!(
                "Load of {collection}/{origin} ({}, {}] answered through {scanned}",
                load.after, load.through
            )));
        }
        let mut previous = load.after;
        for v in &versions {
            if v.collection != *collection
                || v.dot.origin != *origin
                || v.dot.counter <= previous
                || v.dot.counter > scanned
            {
                return Err(SyncError::Store(format!(
                    "Load of {collection}/{origin} ({previous}, {scanned}] returned {}/{}",
                    clip(&v.collection),
                    v.dot
                )));
            }
            previous = v.dot.counter;
        }
        // A version stamped beyond what peers accept (its node's clock ran fast when it was
        // written) would be refused: send what comes before it and hold the stream there until
        // this node's clock gets within the bound, with a margin.
        let window = view
            .cfg
            .max_clock_skew_ms
            .saturating_sub(skew_margin_ms(view.cfg.max_clock_skew_ms));
        let bound = view.now.saturating_add(window);
        let mut versions = versions;
        let mut scanned = scanned;
        let mut held_until = 0;
        if let Some(at) = versions.iter().position(|v| v.hlc.ms > bound) {
            held_until = versions[at].hlc.ms - window;
            scanned = versions[at].dot.counter - 1;
            versions.truncate(at);
        }
        // A version whose context covers dots the peer is not known to hold would be refused:
        // send what comes before it, then the dots it needs (their stream is marked ready),
        // then it.
        let mut waiting_for = None;
        if let Some((at, need)) = versions
            .iter()
            .enumerate()
            .find_map(|(i, v)| self.missing_dependency(view, collection, v).map(|d| (i, d)))
        {
            scanned = versions[at].dot.counter - 1;
            versions.truncate(at);
            held_until = 0;
            if sends_origin(view.cfg, view.peer, &need.0) {
                self.mark_ready(view.cfg, view.peer, collection, need.0.clone());
            } else if self.dependency_round.is_none() {
                let at = view.now.saturating_add(DEPENDENCY_ROUND_MS);
                self.dependency_round = Some((at, collection.clone()));
            }
            waiting_for = Some(need);
        }
        let target = view.local(collection, origin);
        let Some(stream) = self.streams.get_mut(&load.key) else {
            return Ok(());
        };
        if stream.epoch != load.epoch {
            return Ok(()); // the stream restarted for a repair meanwhile
        }
        stream.held_until = held_until;
        stream.waiting_for = waiting_for;
        self.ready.insert(load.key.clone());
        if scanned <= load.after {
            return Ok(()); // held at its first version: nothing to send yet
        }
        stream.sent_through = scanned;
        stream.completed = stream.completed.max(scanned);
        if let Some(r) = &mut stream.repair {
            r.first = false;
            if scanned >= target {
                stream.repair = None;
            }
        }
        queue_chunk(
            out,
            (view.cfg, view.lane(collection)),
            &load.key,
            versions,
            scanned,
        );
        Ok(())
    }

    /// The first `(origin, counter)` of `v`'s context (other than its own origin, which its
    /// stream sends first) that the peer is not known to hold.
    fn missing_dependency(
        &self,
        view: SendView<'_>,
        collection: &str,
        v: &Version,
    ) -> Option<(ReplicaId, u64)> {
        v.context
            .iter()
            .filter(|(o, _)| **o != v.dot.origin)
            .find(|(o, n)| self.peer_holds(view, collection, o) < *n)
            .map(|(o, n)| (o.clone(), n))
    }
}

/// `versions` cut into batches within the batch limits of `cfg` (count and encoded bytes), in
/// order; none when `versions` is empty.
pub(super) fn split_batches(cfg: &SessionConfig, versions: Vec<Version>) -> Vec<Vec<Version>> {
    let (max_versions, max_bytes) = (cfg.batch_max_versions.max(1), cfg.batch_max_bytes.max(1));
    let mut batches = Vec::new();
    let mut batch: Vec<Version> = Vec::new();
    let mut bytes = 0;
    for v in versions {
        let size = version_size(&v);
        if !batch.is_empty() && (batch.len() >= max_versions || bytes + size > max_bytes) {
            batches.push(std::mem::take(&mut batch));
            bytes = 0;
        }
        bytes += size;
        batch.push(v);
    }
    if !batch.is_empty() {
        batches.push(batch);
    }
    batches
}

/// Queues a loaded chunk of `key`'s stream into `out` on `lane`: `versions` as `Batch` frames
/// within the batch limits of `cfg`, then `Complete { through: scanned }`.
fn queue_chunk(
    out: &mut Outbox,
    (cfg, lane): (&SessionConfig, Lane),
    key: &StreamKey,
    versions: Vec<Version>,
    scanned: u64,
) {
    let (collection, origin) = key;
    for versions in split_batches(cfg, versions) {
        out.batch(
            lane,
            Batch {
                collection: collection.clone(),
                origin: origin.clone(),
                versions,
            },
        );
    }
    out.complete(
        lane,
        Complete {
            collection: collection.clone(),
            origin: origin.clone(),
            through: scanned,
        },
    );
}
