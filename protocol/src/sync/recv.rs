//! The receiving side: the relay rule, which origins a peer may bring (announced incarnations,
//! bounded origins and collections), continuity of each `(collection, origin)` stream, the
//! checks of each version a hostile sender could abuse (clock skew, causal contexts covering
//! dots this node never saw), buffering batches until their `Complete`, and acknowledging what
//! the store applied.

use std::collections::BTreeMap;

use crate::dot::{ReplicaId, VersionVector};
use crate::policy::POLICY_COLLECTION;
use crate::version::Version;
use crate::wire::{Ack, Batch, Complete, ErrorCode, MAX_HANDSHAKE_COLLECTIONS, MAX_VECTOR_ENTRIES};

use super::api::{Action, ApplyPart};
use super::error::{clip, SyncError};
use super::send::version_size;
use super::session::{Phase, Session};
use super::{MAX_BUFFERED_BYTES, MAX_BUFFERED_VERSIONS, MAX_INCARNATIONS_PER_NODE, MAX_STREAMS};

/// Most streams merged into one Apply (one store commit).
const MAX_MERGED_PARTS: usize = 64;

/// Most collections a peer may make a session track on the receiving side.
const MAX_COLLECTIONS: usize = 1 << 16;

/// The receiving state of a session.
#[derive(Debug, Default)]
pub(super) struct Rx {
    pub(super) collections: BTreeMap<String, RxCollection>,
    streams: usize,
    pub(super) buffered_versions: usize,
    buffered_bytes: usize,
    /// Applies emitted and not yet answered.
    pub(super) applying: usize,
    /// What this node holds beyond its offerable vectors, as far as the session knows: raised
    /// by every Apply emitted (actions run in order, so it is applied before anything later)
    /// and by the vectors the driver reports after each Apply.
    known: BTreeMap<String, VersionVector>,
    /// For a peer that is not a relay: whether its announced incarnation may bring versions
    /// (decided once, at its first frame: see [`MAX_INCARNATIONS_PER_NODE`]).
    peer_origin_ok: Option<bool>,
    /// The earliest time a stream refused for clock skew would be accepted.
    skew_retry_at: Option<u64>,
}

/// Why a receive stream is refused for the rest of the session. Everything after the refused
/// version is refused too, so the vector never advances past a version that was not applied:
/// the next session resumes just before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    /// The access policy: the origin's node may not write the collection.
    Policy,
    /// A version stamped more than `max_clock_skew_ms` ahead of this node's clock.
    ClockSkew,
    /// A version whose causal context covers dots this node does not hold.
    Context,
}

/// The receiving state of one collection.
#[derive(Debug, Default)]
pub(super) struct RxCollection {
    pub(super) streams: BTreeMap<ReplicaId, InStream>,
    /// Digest rounds armed for this collection: each allows one repair restart per origin.
    pub(super) arms: u64,
}

/// What has been received of one origin in one collection.
#[derive(Debug, Default)]
pub(super) struct InStream {
    /// The last `Complete` (initially our handshake vector): batches continue above it.
    pub(super) completed: u64,
    buffer: Vec<Version>,
    buffer_bytes: usize,
    /// Restarts accepted so far (each consumes one arm).
    restarts: u64,
    /// The collection's arm count at the last restart.
    pub(super) last_restart_arm: u64,
    /// Applies of this stream carry `repair: true` (a re-stream may hold covered dots).
    repairing: bool,
    /// A version was refused (see [`Refusal`]): everything else of this stream is refused for
    /// the rest of the session (applying later batches would leave a gap behind the completion
    /// marker).
    refused: Option<Refusal>,
}

impl InStream {
    fn restart(&mut self, arms: u64) {
        self.completed = 0;
        self.restarts += 1;
        self.last_restart_arm = arms;
        self.repairing = true;
    }

    /// Whether a frame starting at counter `first` (with nothing buffered) may be the restart
    /// of a repair re-stream: it covers counter 1 and a round is armed.
    fn may_restart(&self, first: u64, arms: u64) -> bool {
        first == 1 && self.completed >= 1 && self.restarts < arms
    }
}

impl Session {
    /// The driver's answer to one part of an [`Action::Apply`]: `origin` is applied through
    /// `through` in `collection`, and `vv` is the collection's vector after it. Queues the
    /// `Ack`.
    ///
    /// Only `origin` through `through` becomes offerable to the peer (it was durable at the
    /// sender, so relaying it at once can never make this node reuse a dot). The rest of `vv`
    /// is not: it may hold this node's own writes that are not durable yet, which reach
    /// the session through [`Session::handle_local_vv`] once they are.
    pub fn handle_applied(
        &mut self,
        collection: &str,
        origin: &ReplicaId,
        through: u64,
        vv: VersionVector,
    ) {
        if self.phase == Phase::Closed {
            return;
        }
        self.rx.applying = self.rx.applying.saturating_sub(1);
        // Not offerable as a whole (see above), but held: contexts may cover it.
        self.note_held(collection, &vv);
        self.raise_local(
            collection,
            &[(origin.clone(), through)].into_iter().collect(),
        );
        if through >= 1 {
            self.out.control(
                Ack {
                    collection: collection.to_owned(),
                    origin: origin.clone(),
                    through,
                }
                .into(),
            );
        }
        self.drive();
    }

    /// The relay rule: versions of `origin` are accepted from this peer.
    pub(super) fn accepts_origin(&self, origin: &ReplicaId) -> bool {
        self.peer.is_relay || origin.node_name() == self.peer.node
    }

    /// The counter of `origin` this node holds in `collection`, as far as the session knows.
    pub(super) fn holds(&self, collection: &str, origin: &ReplicaId) -> u64 {
        let offerable = self.local.get(collection).map_or(0, |vv| vv.get(origin));
        let known = self.rx.known.get(collection).map_or(0, |vv| vv.get(origin));
        offerable.max(known)
    }

    /// Why versions of `origin` in `collection` are refused before anything else is looked
    /// at, if they are: a peer that is not a relay brings only the incarnation it announced
    /// (its `Hello`'s, or for the dialer the first one it sends), and only while its node has
    /// fewer than [`MAX_INCARNATIONS_PER_NODE`]; a new origin needs room in the collection's
    /// vector ([`MAX_VECTOR_ENTRIES`]) and a new collection room in the store
    /// ([`MAX_HANDSHAKE_COLLECTIONS`]). Each rule only ever tightens within a session, so a
    /// refused origin stays refused and no gap opens.
    fn origin_refusal(&mut self, collection: &str, origin: &ReplicaId) -> Option<String> {
        if !self.peer.is_relay {
            let announced = self.peer_replica.get_or_insert_with(|| origin.clone());
            if origin != announced {
                return Some(format!(
                    "incarnation: {origin} is not the incarnation {announced} that {} announced",
                    self.peer.node
                ));
            }
            if !*self
                .rx
                .peer_origin_ok
                .get_or_insert_with(|| incarnations_ok(&self.local, origin))
            {
                return Some(format!(
                    "incarnation: {} already has {MAX_INCARNATIONS_PER_NODE} incarnations; \
                     refused versions of {origin}",
                    self.peer.node
                ));
            }
        }
        if self.holds(collection, origin) > 0 {
            return None;
        }
        match self.local.get(collection) {
            None if self.local.len() >= MAX_HANDSHAKE_COLLECTIONS => Some(format!(
                "limit: this node holds {MAX_HANDSHAKE_COLLECTIONS} collections; refused \
                 {collection} from {origin}"
            )),
            Some(vv) if vv.len() >= MAX_VECTOR_ENTRIES => Some(format!(
                "limit: {collection} already has {MAX_VECTOR_ENTRIES} origins; refused {origin}"
            )),
            _ => None,
        }
    }

    /// This node holds `vv` of `collection` (the peer may learn it): contexts may cover it.
    pub(super) fn note_held(&mut self, collection: &str, vv: &VersionVector) {
        self.rx
            .known
            .entry(collection.to_owned())
            .or_default()
            .merge(vv);
    }

    /// The first version of `b` this node may not take, with why: one stamped beyond the clock
    /// skew bound, or one whose causal context covers dots this node does not hold (a context
    /// may only cover what its origin could have seen; an honest sender sends what a context
    /// covers first). Its own origin's entry is below its counter (checked by validation).
    fn first_unacceptable(&self, b: &Batch) -> Option<(usize, Refusal, String)> {
        let bound = self.now.saturating_add(self.cfg.max_clock_skew_ms);
        b.versions.iter().enumerate().find_map(|(i, v)| {
            if v.hlc.ms > bound {
                return Some((
                    i,
                    Refusal::ClockSkew,
                    format!(
                        "version {} is stamped {} ms ahead of the local clock (at most {} ms \
                         allowed); its stream waits",
                        v.dot,
                        v.hlc.ms - self.now,
                        self.cfg.max_clock_skew_ms
                    ),
                ));
            }
            v.context
                .iter()
                .filter(|(o, _)| **o != v.dot.origin)
                .find(|(o, n)| *n > self.holds(&b.collection, o))
                .map(|(o, n)| {
                    (
                        i,
                        Refusal::Context,
                        format!(
                            "causal context of {} covers {o}:{n}, beyond the {} this node holds",
                            v.dot,
                            self.holds(&b.collection, o)
                        ),
                    )
                })
        })
    }

    /// A stream refused for clock skew waits for the next session; this closes the session
    /// once this node's clock would accept the refused version, so the reconnect brings it.
    pub(super) fn skew_retry_due(&mut self) {
        if self.rx.skew_retry_at.is_some_and(|t| self.now >= t) {
            self.rx.skew_retry_at = None;
            self.fail(SyncError::Local {
                code: ErrorCode::Internal,
                reason: "reconnecting: a version refused for clock skew is now within the bound"
                    .into(),
            });
        }
    }

    /// When [`Session::skew_retry_due`] should run.
    pub(super) fn skew_retry_at(&self) -> Option<u64> {
        self.rx.skew_retry_at
    }
    /// The access policy: versions of `origin` may be accepted in `collection`. Only a relay
    /// (an admin with an admin certificate) may bring `_policy` versions, and only of admins.
    pub(super) fn accepts_write(&self, collection: &str, origin: &ReplicaId) -> bool {
        self.policy.may_write(origin.node_name(), collection)
            && (collection != POLICY_COLLECTION || self.peer.is_relay)
    }

    /// Some stream refused earlier in this session would be accepted under the current policy.
    pub(super) fn rx_refused_now_allowed(&self) -> bool {
        self.rx.collections.iter().any(|(c, col)| {
            col.streams
                .iter()
                .any(|(o, s)| s.refused == Some(Refusal::Policy) && self.accepts_write(c, o))
        })
    }

    /// Arms `collection` for one repair restart per origin; returns the new arm count.
    pub(super) fn arm_rx(&mut self, collection: &str) -> Result<u64, SyncError> {
        let col = self.rx_collection(collection)?;
        col.arms += 1;
        Ok(col.arms)
    }

    /// The last `Complete` received for every origin of `collection` that has a stream.
    pub(super) fn rx_completed(&self, collection: &str) -> BTreeMap<ReplicaId, u64> {
        self.rx
            .collections
            .get(collection)
            .map(|c| {
                c.streams
                    .iter()
                    .map(|(o, s)| (o.clone(), s.completed))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub(super) fn on_batch(&mut self, b: Batch) -> Result<(), SyncError> {
        let n = b.versions.len() as u64;
        self.out.count_received(n);
        if !self.accepts_origin(&b.origin) {
            self.out.reject(
                format!(
                    "{} is not a relay: refused versions of {} in {}",
                    self.peer.node, b.origin, b.collection
                ),
                n,
            );
            return Ok(());
        }
        if let Some(reason) = self.origin_refusal(&b.collection, &b.origin) {
            self.out.reject(reason, n);
            return Ok(());
        }
        if !self.accepts_write(&b.collection, &b.origin) {
            let (stream, _) = self.rx_stream(&b.collection, &b.origin)?;
            stream.refused.get_or_insert(Refusal::Policy);
        }
        let refused = self
            .rx
            .collections
            .get(&b.collection)
            .and_then(|c| c.streams.get(&b.origin))
            .and_then(|s| s.refused);
        if let Some(refusal) = refused {
            let reason = match refusal {
                Refusal::Policy => format!(
                    "policy: {} may not write {}: refused versions from {}",
                    b.origin.node_name(),
                    b.collection,
                    self.peer.node
                ),
                Refusal::ClockSkew => format!(
                    "versions of {} after one stamped ahead of the local clock wait for the \
                     next session",
                    b.origin
                ),
                Refusal::Context => format!(
                    "versions of {} after one with a causal context beyond what this node \
                     holds are refused",
                    b.origin
                ),
            };
            self.out.reject(reason, n);
            return Ok(());
        }
        let (Some(first), Some(last)) = (b.versions.first(), b.versions.last()) else {
            return Ok(()); // validation refuses empty batches
        };
        let (first, last) = (first.dot.counter, last.dot.counter);
        let size: usize = b.versions.iter().map(version_size).sum();
        if self.rx.buffered_versions + b.versions.len() > MAX_BUFFERED_VERSIONS
            || self.rx.buffered_bytes + size > MAX_BUFFERED_BYTES
        {
            return Err(SyncError::LimitExceeded(
                "versions buffered before their Complete",
            ));
        }
        let cut = self.first_unacceptable(&b);
        let Batch {
            collection,
            origin,
            mut versions,
        } = b;
        let (stream, arms) = self.rx_stream(&collection, &origin)?;
        if let Some(prev) = stream.buffer.last() {
            if first <= prev.dot.counter {
                return Err(out_of_order(
                    &collection,
                    &origin,
                    format!("batch starts at {first} after {}", prev.dot.counter),
                ));
            }
        } else if first <= stream.completed {
            if !stream.may_restart(first, arms) {
                return Err(out_of_order(
                    &collection,
                    &origin,
                    format!(
                        "batch {first}..={last} at or below completion through {}",
                        stream.completed
                    ),
                ));
            }
            stream.restart(arms);
        } else if stream.completed == 0 && stream.restarts < arms {
            stream.repairing = true; // a re-stream that needs no visible restart
        }
        let refused = cut.map(|(at, refusal, reason)| (versions.split_off(at), refusal, reason));
        let kept_versions = versions.len();
        let kept: usize = versions.iter().map(version_size).sum();
        stream.buffer.extend(versions);
        stream.buffer_bytes += kept;
        let has_buffer = !stream.buffer.is_empty();
        let completed = stream.completed;
        if let Some((_, refusal, _)) = &refused {
            stream.refused = Some(*refusal);
        }
        self.rx.buffered_versions += kept_versions;
        self.rx.buffered_bytes += kept;
        if let Some((tail, refusal, reason)) = refused {
            // What comes before the refused version is complete: apply it now, and refuse the
            // rest of the stream for this session (the next one resumes at the refused version).
            let through = tail.first().map_or(0, |v| v.dot.counter - 1);
            if has_buffer || through > completed {
                self.finish_stream(collection, origin, through.max(completed));
            }
            if refusal == Refusal::ClockSkew {
                let at = tail
                    .first()
                    .map_or(0, |v| v.hlc.ms.saturating_sub(self.cfg.max_clock_skew_ms));
                self.rx.skew_retry_at = Some(self.rx.skew_retry_at.map_or(at, |t| t.min(at)));
            }
            self.out.reject(reason, tail.len() as u64);
        }
        Ok(())
    }

    pub(super) fn on_complete(&mut self, c: Complete) -> Result<(), SyncError> {
        if !self.accepts_origin(&c.origin) {
            return Ok(()); // its batches were refused by the relay rule
        }
        // A completion with no batch before it is legitimate (every version it covers was
        // superseded at the sender, and contexts may cover them), so it may raise the vector
        // only for an origin the peer may bring: its own announced incarnation, or anything
        // from a relay, within the limits on origins and collections.
        if self.origin_refusal(&c.collection, &c.origin).is_some() {
            return Ok(()); // its batches are refused
        }
        let (stream, arms) = self.rx_stream(&c.collection, &c.origin)?;
        if stream.refused.is_some() {
            return Ok(()); // its batches were refused
        }
        match stream.buffer.last().map(|v| v.dot.counter) {
            Some(last) if c.through < last => {
                return Err(SyncError::OutOfOrder {
                    collection: clip(&c.collection),
                    origin: clip(c.origin.as_str()),
                    what: format!("complete through {} below its batch's {last}", c.through),
                });
            }
            Some(_) => {}
            None if c.through <= stream.completed => {
                if stream.may_restart(c.through, arms) {
                    stream.restart(arms);
                } else if c.through == stream.completed {
                    return Ok(()); // a repeat: nothing new
                } else {
                    return Err(SyncError::OutOfOrder {
                        collection: clip(&c.collection),
                        origin: clip(c.origin.as_str()),
                        what: format!(
                            "complete through {} after completion through {}",
                            c.through, stream.completed
                        ),
                    });
                }
            }
            None => {
                if stream.completed == 0 && stream.restarts < arms {
                    stream.repairing = true;
                }
            }
        }
        self.finish_stream(c.collection, c.origin, c.through);
        Ok(())
    }

    /// Queues `part`: merged into the ordinary Apply at the end of the action queue when there
    /// is one (so streams completed back to back cost the store one commit and one flush), up
    /// to [`MAX_MERGED_PARTS`] parts; a repair part gets an Apply of its own.
    fn push_apply(&mut self, part: ApplyPart, repair: bool) {
        if !repair {
            if let Some(Action::Apply {
                parts,
                repair: false,
            }) = self.out.last_action()
            {
                if parts.len() < MAX_MERGED_PARTS {
                    parts.push(part);
                    return;
                }
            }
        }
        self.out.action(Action::Apply {
            parts: vec![part],
            repair,
        });
    }

    /// Emits the Apply of a stream's buffered versions with its vector advance to `through`.
    fn finish_stream(&mut self, collection: String, origin: ReplicaId, through: u64) {
        let Some(stream) = self
            .rx
            .collections
            .get_mut(&collection)
            .and_then(|c| c.streams.get_mut(&origin))
        else {
            return;
        };
        let versions = std::mem::take(&mut stream.buffer);
        let bytes = std::mem::take(&mut stream.buffer_bytes);
        stream.completed = through;
        let repair = stream.repairing;
        self.rx.buffered_versions = self.rx.buffered_versions.saturating_sub(versions.len());
        self.rx.buffered_bytes = self.rx.buffered_bytes.saturating_sub(bytes);
        self.rx.applying += 1;
        self.peer_vvs
            .entry(collection.clone())
            .or_default()
            .raise(&origin, through);
        self.rx
            .known
            .entry(collection.clone())
            .or_default()
            .raise(&origin, through);
        self.push_apply(
            ApplyPart {
                collection,
                origin,
                versions,
                through,
            },
            repair,
        );
    }

    fn rx_collection(&mut self, collection: &str) -> Result<&mut RxCollection, SyncError> {
        if !self.rx.collections.contains_key(collection) {
            if self.rx.collections.len() >= MAX_COLLECTIONS {
                return Err(SyncError::LimitExceeded("collections"));
            }
            self.rx
                .collections
                .insert(collection.to_owned(), RxCollection::default());
        }
        self.rx
            .collections
            .get_mut(collection)
            .ok_or(SyncError::LimitExceeded("collections"))
    }

    /// The stream of `(collection, origin)` (created at our handshake vector) and the
    /// collection's arm count.
    fn rx_stream(
        &mut self,
        collection: &str,
        origin: &ReplicaId,
    ) -> Result<(&mut InStream, u64), SyncError> {
        let base = self
            .advertised
            .get(collection)
            .map_or(0, |vv| vv.get(origin));
        let full = self.rx.streams >= MAX_STREAMS;
        let col = self.rx_collection(collection)?;
        let arms = col.arms;
        let mut created = false;
        if !col.streams.contains_key(origin) {
            if full {
                return Err(SyncError::LimitExceeded("streams"));
            }
            col.streams.insert(
                origin.clone(),
                InStream {
                    completed: base,
                    ..InStream::default()
                },
            );
            created = true;
        }
        if created {
            self.rx.streams += 1;
        }
        let stream = self
            .rx
            .collections
            .get_mut(collection)
            .and_then(|c| c.streams.get_mut(origin))
            .ok_or(SyncError::LimitExceeded("streams"))?;
        Ok((stream, arms))
    }
}

fn out_of_order(collection: &str, origin: &ReplicaId, what: String) -> SyncError {
    SyncError::OutOfOrder {
        collection: clip(collection),
        origin: clip(origin.as_str()),
        what,
    }
}

/// Whether `origin` may bring versions: its node has fewer than [`MAX_INCARNATIONS_PER_NODE`]
/// incarnations in `local`, or `origin` is one of them.
fn incarnations_ok(local: &BTreeMap<String, VersionVector>, origin: &ReplicaId) -> bool {
    let mut seen: Vec<&ReplicaId> = Vec::new();
    for vv in local.values() {
        for (o, _) in vv.iter() {
            if o == origin {
                return true;
            }
            if o.node_name() == origin.node_name() && !seen.contains(&o) {
                seen.push(o);
            }
        }
    }
    seen.len() < MAX_INCARNATIONS_PER_NODE
}
