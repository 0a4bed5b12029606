//! The receiving side: the relay rule, continuity of each `(collection, origin)` stream,
//! buffering batches until their `Complete`, and acknowledging what the store applied.

use std::collections::BTreeMap;

use crate::dot::{ReplicaId, VersionVector};
use crate::policy::POLICY_COLLECTION;
use crate::version::Version;
use crate::wire::{Ack, Batch, Complete};

use super::api::{Action, Event};
use super::error::{clip, SyncError};
use super::send::version_size;
use super::session::{Phase, Session};
use super::{MAX_BUFFERED_BYTES, MAX_BUFFERED_VERSIONS, MAX_STREAMS};

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
    /// A batch was refused by the access policy: everything else of this stream is refused
    /// for the rest of the session (applying later batches would leave a gap behind the
    /// completion marker).
    refused: bool,
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
    /// The driver's answer to [`Action::Apply`]: `origin` is applied through `through` in
    /// `collection`, and `vv` is the collection's vector after it. Queues the `Ack`.
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
        let _ = vv; // see above: not offerable as a whole
        self.raise_local(
            collection,
            &[(origin.clone(), through)].into_iter().collect(),
        );
        if through >= 1 {
            self.control_q.push_back(
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
                .any(|(o, s)| s.refused && self.accepts_write(c, o))
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
        self.stats.batches_received += 1;
        self.stats.versions_received += n;
        if !self.accepts_origin(&b.origin) {
            self.stats.rejected += n;
            self.events.push_back(Event::Rejected {
                reason: format!(
                    "{} is not a relay: refused versions of {} in {}",
                    self.peer.node, b.origin, b.collection
                ),
                count: n,
            });
            return Ok(());
        }
        if !self.accepts_write(&b.collection, &b.origin) {
            let (stream, _) = self.rx_stream(&b.collection, &b.origin)?;
            stream.refused = true;
        }
        if self
            .rx
            .collections
            .get(&b.collection)
            .and_then(|c| c.streams.get(&b.origin))
            .is_some_and(|s| s.refused)
        {
            self.stats.rejected += n;
            self.events.push_back(Event::Rejected {
                reason: format!(
                    "policy: {} may not write {}: refused versions from {}",
                    b.origin.node_name(),
                    b.collection,
                    self.peer.node
                ),
                count: n,
            });
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
        let (stream, arms) = self.rx_stream(&b.collection, &b.origin)?;
        if let Some(prev) = stream.buffer.last() {
            if first <= prev.dot.counter {
                return Err(out_of_order(
                    &b,
                    format!("batch starts at {first} after {}", prev.dot.counter),
                ));
            }
        } else if first <= stream.completed {
            if !stream.may_restart(first, arms) {
                return Err(out_of_order(
                    &b,
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
        stream.buffer.extend(b.versions);
        stream.buffer_bytes += size;
        self.rx.buffered_versions += n as usize;
        self.rx.buffered_bytes += size;
        Ok(())
    }

    pub(super) fn on_complete(&mut self, c: Complete) -> Result<(), SyncError> {
        if !self.accepts_origin(&c.origin) {
            return Ok(()); // its batches were refused by the relay rule
        }
        let (stream, arms) = self.rx_stream(&c.collection, &c.origin)?;
        if stream.refused {
            return Ok(()); // its batches were refused by the policy
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
        let versions = std::mem::take(&mut stream.buffer);
        let bytes = std::mem::take(&mut stream.buffer_bytes);
        stream.completed = c.through;
        let repair = stream.repairing;
        self.rx.buffered_versions = self.rx.buffered_versions.saturating_sub(versions.len());
        self.rx.buffered_bytes = self.rx.buffered_bytes.saturating_sub(bytes);
        self.rx.applying += 1;
        self.peer_vvs
            .entry(c.collection.clone())
            .or_default()
            .raise(&c.origin, c.through);
        self.actions.push_back(Action::Apply {
            collection: c.collection,
            origin: c.origin,
            versions,
            through: c.through,
            repair,
        });
        Ok(())
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

fn out_of_order(b: &Batch, what: String) -> SyncError {
    SyncError::OutOfOrder {
        collection: clip(&b.collection),
        origin: clip(b.origin.as_str()),
        what,
    }
}
