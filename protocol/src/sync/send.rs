//! The sending side: per `(collection, origin)` how far the peer has been sent, the one Load
//! in flight, turning loaded chunks into `Batch` + `Complete` frames, acknowledgements, and
//! restarting streams for a repair.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use std::sync::Arc;

use crate::dot::{ReplicaId, VersionVector};
use crate::policy::Policy;
use crate::version::Version;
use crate::wire::{Ack, Batch, Complete, ErrorCode};

use super::api::{Action, Event};
use super::config::SessionConfig;
use super::error::{clip, SyncError};
use super::session::{Phase, Session};

/// `(collection, origin)`.
pub(super) type StreamKey = (String, ReplicaId);

/// The sending state of a session.
#[derive(Debug, Default)]
pub(super) struct Tx {
    pub(super) streams: BTreeMap<StreamKey, OutStream>,
    pub(super) loading: Option<LoadInFlight>,
    /// Streams that may have something to send (pruned when they do not).
    ready: BTreeSet<StreamKey>,
    /// The stream last loaded, for round-robin between streams.
    cursor: Option<StreamKey>,
    /// A stream waits for dots this node cannot send (they are not its own): a digest round of
    /// that collection at this time tells it whether the peer got them elsewhere.
    pub(super) dependency_round: Option<(u64, String)>,
}

/// How long a stream waits for a dependency this node cannot send before a digest round asks
/// the peer what it holds.
pub(super) const DEPENDENCY_ROUND_MS: u64 = 5_000;

/// What has been sent of one origin in one collection.
#[derive(Debug, Default)]
pub(super) struct OutStream {
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
pub(super) struct LoadInFlight {
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

/// True when this node sends versions of `origin`: relays send every origin, other nodes only
/// their current incarnation (peers refuse the rest).
pub(super) fn sends_origin(cfg: &SessionConfig, origin: &ReplicaId) -> bool {
    cfg.relay || *origin == cfg.replica
}

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

impl Session {
    /// Whether this node may send `collection` to the peer: the policy lets the peer's node
    /// read it.
    pub fn may_send(&self, collection: &str) -> bool {
        self.policy.may_read(&self.peer.node, collection)
    }

    /// The access policy changed (see [`Policy`]). Collections the peer may now read start
    /// streaming their whole history above the peer's vector. If the peer may no longer read a
    /// collection, or versions refused earlier in this session are now allowed, the session
    /// closes ([`ErrorCode::NotAuthorized`]) dropping everything queued: the reconnect starts
    /// clean under the new policy.
    pub fn handle_policy(&mut self, policy: Arc<Policy>) {
        if self.phase == Phase::Closed {
            return;
        }
        let old = std::mem::replace(&mut self.policy, policy);
        self.refresh_hello();
        let collections: Vec<String> = self.local.keys().cloned().collect();
        let mut lost_read = false;
        for c in collections {
            let (was, now) = (old.may_read(&self.peer.node, &c), self.may_send(&c));
            if was && !now {
                // Before the handshake completes nothing was sent: the new policy just applies.
                lost_read |= self.phase == Phase::Established;
            } else if !was && now && self.phase == Phase::Established {
                self.ready_all(&c);
            }
        }
        if lost_read || self.rx_refused_now_allowed() {
            self.close(
                ErrorCode::NotAuthorized,
                "access policy changed: reconnecting under the new policy",
            );
            return;
        }
        self.drive();
    }

    /// The driver's answer to [`Action::Load`]: `versions` of `origin` in `collection` in
    /// counter order, the scan having covered every counter up to `scanned_through` (the
    /// Load's `through` unless cut short by its limits, in which case at least one version is
    /// returned). An answer that breaks this contract closes the session ([`SyncError::Store`]).
    pub fn handle_loaded(
        &mut self,
        collection: &str,
        origin: &ReplicaId,
        versions: Vec<Version>,
        scanned_through: u64,
    ) {
        if self.phase == Phase::Closed {
            return;
        }
        let matches = self
            .tx
            .loading
            .as_ref()
            .is_some_and(|l| l.key.0 == collection && l.key.1 == *origin);
        if !matches {
            return;
        }
        if let Some(load) = self.tx.loading.take() {
            if let Err(e) = self.send_loaded(load, versions, scanned_through) {
                self.fail(e);
            }
        }
        self.drive();
    }

    /// Merges `vv` into our vector of `collection`; origins that grew get a stream (if we send
    /// them) marked ready.
    pub(super) fn raise_local(&mut self, collection: &str, vv: &VersionVector) {
        if !self.local.contains_key(collection) {
            self.local
                .insert(collection.to_owned(), VersionVector::new());
        }
        let Some(cur) = self.local.get_mut(collection) else {
            return;
        };
        let grown: Vec<ReplicaId> = vv
            .iter()
            .filter(|(o, n)| *n > cur.get(o))
            .map(|(o, _)| o.clone())
            .collect();
        cur.merge(vv);
        if self.phase == Phase::Established && self.may_send(collection) {
            for origin in grown {
                self.mark_ready(collection, origin);
            }
        }
    }

    /// Marks every stream of `collection` ready (creating the missing ones).
    pub(super) fn ready_all(&mut self, collection: &str) {
        if !self.may_send(collection) {
            return;
        }
        let origins: Vec<ReplicaId> = self
            .local
            .get(collection)
            .map(|vv| vv.iter().map(|(o, _)| o.clone()).collect())
            .unwrap_or_default();
        for origin in origins {
            self.mark_ready(collection, origin);
        }
    }

    fn mark_ready(&mut self, collection: &str, origin: ReplicaId) {
        if !sends_origin(&self.cfg, &origin) {
            return;
        }
        let key = (collection.to_owned(), origin);
        if !self.tx.streams.contains_key(&key) {
            self.tx.streams.insert(key.clone(), OutStream::default());
        }
        self.tx.ready.insert(key);
    }

    /// Issues the next Load if none is in flight and the bulk queue is drained.
    pub(super) fn pump_loads(&mut self) {
        if self.phase != Phase::Established
            || !self.peer_confirmed
            || self.tx.loading.is_some()
            || self.bulk_blocked
            || !self.out.bulk_drained()
        {
            return;
        }
        let (found, idle) = self.next_load();
        for k in idle {
            self.tx.ready.remove(&k);
        }
        let Some((key, plan)) = found else {
            return;
        };
        let epoch = self.tx.streams.get(&key).map_or(0, |s| s.epoch);
        self.out.action(Action::Load {
            collection: key.0.clone(),
            origin: key.1.clone(),
            after: plan.after,
            through: plan.through,
            max_versions: self.cfg.batch_max_versions.max(1),
            max_bytes: self.cfg.batch_max_bytes.max(1),
            repair: plan.repair,
        });
        self.tx.cursor = Some(key.clone());
        self.tx.loading = Some(LoadInFlight {
            key,
            after: plan.after,
            through: plan.through,
            epoch,
        });
    }

    /// Nothing to send and nothing in flight on the sending side.
    pub(super) fn tx_idle(&self) -> bool {
        self.tx.loading.is_none()
            && self.out.bulk_drained()
            && self.tx.ready.iter().all(|k| self.plan(k).is_none())
    }

    /// Every `Complete` sent for `collection` has been acknowledged.
    pub(super) fn tx_acked(&self, collection: &str) -> bool {
        self.tx
            .streams
            .iter()
            .filter(|((c, _), _)| c == collection)
            .all(|(_, s)| s.acked >= s.completed)
    }

    /// Restarts every stream of `collection` from counter 0 for a full reconciliation.
    pub(super) fn start_tx_repair(&mut self, collection: &str) {
        self.ready_all(collection);
        for ((c, _), s) in self.tx.streams.iter_mut() {
            if c == collection {
                s.sent_through = 0;
                s.epoch = s.epoch.wrapping_add(1);
                s.repair = Some(RepairTx { first: true });
            }
        }
    }

    /// The peer acknowledged applying what we sent.
    pub(super) fn on_ack(&mut self, a: Ack) -> Result<(), SyncError> {
        let key = (a.collection, a.origin);
        let sent = self.tx.streams.get(&key).map_or(0, |s| s.completed);
        if a.through > sent {
            return Err(SyncError::OutOfOrder {
                collection: clip(&key.0),
                origin: clip(key.1.as_str()),
                what: format!("ack through {} beyond completion through {sent}", a.through),
            });
        }
        if let Some(s) = self.tx.streams.get_mut(&key) {
            s.acked = s.acked.max(a.through);
        }
        if let Some(vv) = self.peer_vvs.get_mut(&key.0) {
            vv.raise(&key.1, a.through);
        } else {
            let mut vv = crate::dot::VersionVector::new();
            vv.raise(&key.1, a.through);
            self.peer_vvs.insert(key.0.clone(), vv);
        }
        self.out.event(Event::Acked {
            collection: key.0,
            origin: key.1,
            through: a.through,
        });
        Ok(())
    }

    /// The next ready stream with something to send, round-robin after the last one loaded,
    /// and the ready streams found to have nothing to send.
    fn next_load(&self) -> (Option<(StreamKey, Plan)>, Vec<StreamKey>) {
        let ready = &self.tx.ready;
        let (after, before) = match &self.tx.cursor {
            Some(k) => (
                ready.range::<StreamKey, _>((Bound::Excluded(k), Bound::Unbounded)),
                ready.range::<StreamKey, _>((Bound::Unbounded, Bound::Included(k))),
            ),
            None => (ready.range::<StreamKey, _>(..), ready.range(..)),
        };
        let wrap = if self.tx.cursor.is_some() {
            usize::MAX
        } else {
            0
        };
        let mut idle = Vec::new();
        for k in after.chain(before.take(wrap)) {
            match self.plan(k) {
                Some(p) => return (Some((k.clone(), p)), idle),
                // A held stream stays ready: it goes on once the hold ends.
                None if self.held(k) => {}
                None => idle.push(k.clone()),
            }
        }
        (None, idle)
    }

    /// True while `key` waits for this node's clock to reach a version's timestamp, or for
    /// the peer to hold what its next version's context covers.
    fn held(&self, key: &StreamKey) -> bool {
        self.tx.streams.get(key).is_some_and(|s| {
            s.held_until > self.now
                || s.waiting_for
                    .as_ref()
                    .is_some_and(|(o, n)| self.peer_holds(&key.0, o) < *n)
        })
    }

    /// Some stream of `collection` waits for dots this node cannot send the peer.
    pub(super) fn waits_for_others(&self, collection: &str) -> bool {
        self.tx.streams.iter().any(|((c, _), s)| {
            c == collection
                && s.waiting_for.as_ref().is_some_and(|(o, n)| {
                    !sends_origin(&self.cfg, o) && self.peer_holds(collection, o) < *n
                })
        })
    }

    /// The counter of `origin` the peer holds in `collection` as far as we know: its vector,
    /// raised by its completions and acks, and what we completed to it in this session (it
    /// applies our streams in order).
    fn peer_holds(&self, collection: &str, origin: &ReplicaId) -> u64 {
        let known = self.peer_vvs.get(collection).map_or(0, |vv| vv.get(origin));
        let sent = self
            .tx
            .streams
            .get(&(collection.to_owned(), origin.clone()))
            .map_or(0, |s| s.completed);
        known.max(sent)
    }

    /// What to load next for one stream, if anything.
    fn plan(&self, key: &StreamKey) -> Option<Plan> {
        let (collection, origin) = key;
        let s = self.tx.streams.get(key)?;
        if !self.may_send(collection) || self.held(key) {
            return None;
        }
        let target = self.local.get(collection).map_or(0, |vv| vv.get(origin));
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
        let known = self.peer_vvs.get(collection).map_or(0, |vv| vv.get(origin));
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
        let window = self
            .cfg
            .max_clock_skew_ms
            .saturating_sub(skew_margin_ms(self.cfg.max_clock_skew_ms));
        let bound = self.now.saturating_add(window);
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
            .find_map(|(i, v)| self.missing_dependency(collection, v).map(|d| (i, d)))
        {
            scanned = versions[at].dot.counter - 1;
            versions.truncate(at);
            held_until = 0;
            if sends_origin(&self.cfg, &need.0) {
                self.mark_ready(collection, need.0.clone());
            } else if self.tx.dependency_round.is_none() {
                let at = self.now.saturating_add(DEPENDENCY_ROUND_MS);
                self.tx.dependency_round = Some((at, collection.clone()));
            }
            waiting_for = Some(need);
        }
        let target = self.local.get(collection).map_or(0, |vv| vv.get(origin));
        let Some(stream) = self.tx.streams.get_mut(&load.key) else {
            return Ok(());
        };
        if stream.epoch != load.epoch {
            return Ok(()); // the stream restarted for a repair meanwhile
        }
        stream.held_until = held_until;
        stream.waiting_for = waiting_for;
        self.tx.ready.insert(load.key.clone());
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
        let (max_versions, max_bytes) = (
            self.cfg.batch_max_versions.max(1),
            self.cfg.batch_max_bytes.max(1),
        );
        let mut batch: Vec<Version> = Vec::new();
        let mut bytes = 0;
        for v in versions {
            let size = version_size(&v);
            if !batch.is_empty() && (batch.len() >= max_versions || bytes + size > max_bytes) {
                self.out.batch(Batch {
                    collection: collection.clone(),
                    origin: origin.clone(),
                    versions: std::mem::take(&mut batch),
                });
                bytes = 0;
            }
            bytes += size;
            batch.push(v);
        }
        if !batch.is_empty() {
            self.out.batch(Batch {
                collection: collection.clone(),
                origin: origin.clone(),
                versions: batch,
            });
        }
        self.out.complete(Complete {
            collection: collection.clone(),
            origin: origin.clone(),
            through: scanned,
        });
        Ok(())
    }

    /// The first `(origin, counter)` of `v`'s context (other than its own origin, which its
    /// stream sends first) that the peer is not known to hold.
    fn missing_dependency(&self, collection: &str, v: &Version) -> Option<(ReplicaId, u64)> {
        v.context
            .iter()
            .filter(|(o, _)| **o != v.dot.origin)
            .find(|(o, n)| self.peer_holds(collection, o) < *n)
            .map(|(o, n)| (o.clone(), n))
    }
}
