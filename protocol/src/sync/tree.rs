//! The hash-tree repair of protocol 3: a digest round that finds different digests at equal
//! vectors descends the tree of [`crate::tree`] instead of re-streaming the collection.
//!
//! The requester (whose round it was) asks its store for the digests of the root's children
//! ([`Action::TreeDigests`]) and sends them (`TreeRequest`); the replier, armed by its
//! "different" answer, takes its own and answers which differ (`TreeReply`). The requester
//! goes on with the children of the differing nodes, level by level. At the leaves both sides
//! re-send the current versions of the differing leaves (the replier once the requester's
//! first batch shows that its reply arrived; `RepairBatch`, read with
//! [`Action::LoadLeaves`], the last one marked), apply the peer's with the repair merge
//! (never moving a vector: every dot is one the vectors cover) and confirm with
//! `RepairApplied`. Then the requester runs its follow-up round; if the digests still differ
//! it asks for a full reconciliation (`FullRepair`), as protocol 2 does at once.
//!
//! Everything the peer sends is checked against what this side asked or answered: a tree
//! message for a collection not armed, a reply naming nodes that were not asked, a version
//! outside the agreed leaves, more requests than a descent needs — each closes the session.

use std::collections::{BTreeMap, VecDeque};

use crate::digest::Digest;
use crate::tree::{self, FANOUT, LEVELS};
use crate::version::Version;
use crate::wire::{RepairApplied, RepairBatch, TreeReply, TreeRequest};

use super::api::Action;
use super::config::SessionConfig;
use super::error::{clip, SyncError};
use super::outbox::Outbox;

/// Most collections the peer's rounds may hold armed for a descent at once (an honest peer
/// runs one round at a time).
pub const MAX_ARMED_TREES: usize = 16;

/// Most `TreeRequest`s one armed collection answers: a descent needs one per level.
const MAX_TREE_REQUESTS: u32 = 2 * LEVELS as u32;

/// The tree-repair state of a session.
#[derive(Debug, Default)]
pub(super) struct TreeRepair {
    /// The descent of this side's round, if any.
    descent: Option<Descent>,
    /// Collections the peer's rounds found different at equal vectors (this side answered so):
    /// the peer may descend them.
    armed: BTreeMap<String, Armed>,
    /// Who each pending [`Action::TreeDigests`] is for, in order: `(collection, level, ours)`
    /// where `ours` marks this side's descent (else an answer to the peer's request).
    waiters: VecDeque<(String, u8, bool)>,
    /// Per exchange, this side's versions of the differing leaves being re-sent.
    sends: BTreeMap<Exchange, LeafSend>,
    /// The exchange whose [`Action::LoadLeaves`] is in flight.
    loading: Option<Exchange>,
    /// Per exchange, the peer's versions of the differing leaves being received.
    recvs: BTreeMap<Exchange, LeafRecv>,
    /// Collections of this side's descents that have ended, for their follow-up rounds.
    finished: Vec<String>,
    /// Descents started by this side.
    descents: u64,
    /// Versions re-sent for leaf repairs.
    versions_sent: u64,
}

/// A leaf exchange: its collection, and whether it ends this side's descent (else the
/// peer's). Both sides may descend the same collection at once; their exchanges stay apart.
type Exchange = (String, bool);

/// This side's descent.
#[derive(Debug)]
struct Descent {
    collection: String,
    /// The level being compared.
    level: u8,
    /// Nodes at `level - 1` whose children are compared.
    parents: Vec<u32>,
    /// Sent to the peer, awaiting its `TreeReply` (else awaiting our store).
    asked: bool,
    /// The leaves are being exchanged.
    exchanging: bool,
}

/// A collection armed by the peer's round.
#[derive(Debug, Default)]
struct Armed {
    /// Requests answered or pending.
    requests: u32,
    /// The request awaiting our store's digests.
    pending: Option<TreeRequest>,
}

/// This side's share of a leaf exchange.
#[derive(Debug)]
struct LeafSend {
    leaves: Vec<u32>,
    /// Sending may start: at once for this side's descent; for the peer's, once its first
    /// batch arrived (which it sends after our `TreeReply` reached it: the streams are not
    /// ordered with each other, so a batch sent at once could overtake the reply).
    started: bool,
    /// Where the next load starts (`None`: at the first leaf).
    after: Option<(u32, String)>,
    /// The last batch is queued.
    done: bool,
    /// The peer confirmed it applied everything (`RepairApplied`).
    confirmed: bool,
}

/// The peer's share of a leaf exchange.
#[derive(Debug)]
struct LeafRecv {
    /// The agreed leaves, strictly increasing.
    leaves: Vec<u32>,
    /// Its last batch arrived.
    last: bool,
    /// Applies emitted and not yet answered.
    applying: usize,
    /// `RepairApplied` was sent.
    confirmed: bool,
}

impl TreeRepair {
    /// Descents started by this side.
    pub(super) fn descents(&self) -> u64 {
        self.descents
    }

    /// Versions re-sent for leaf repairs.
    pub(super) fn versions_sent(&self) -> u64 {
        self.versions_sent
    }

    /// The collections whose descents ended since the last call (their follow-ups are due).
    pub(super) fn take_finished(&mut self) -> Vec<String> {
        std::mem::take(&mut self.finished)
    }

    /// This side's round found `collection` different at equal vectors: the descent starts
    /// with the digests of the root's children.
    pub(super) fn start_descent(&mut self, out: &mut Outbox, collection: &str) {
        self.descents += 1;
        self.descent = Some(Descent {
            collection: collection.to_owned(),
            level: 1,
            parents: vec![0],
            asked: false,
            exchanging: false,
        });
        self.ask_store(out, collection, 1, vec![0], true);
    }

    /// This side answered the peer's round on `collection` "different" at equal vectors: the
    /// peer may descend it.
    pub(super) fn arm(&mut self, collection: &str) -> Result<(), SyncError> {
        if !self.armed.contains_key(collection) && self.armed.len() >= MAX_ARMED_TREES {
            return Err(SyncError::LimitExceeded(
                "collections armed for a tree repair",
            ));
        }
        self.armed.insert(collection.to_owned(), Armed::default());
        Ok(())
    }

    /// The peer asks for a full reconciliation of `collection` instead: allowed only where
    /// this side armed it.
    pub(super) fn on_full_repair(&mut self, collection: &str) -> Result<(), SyncError> {
        if self.armed.remove(collection).is_none() {
            return Err(unexpected(
                collection,
                "full repair of a collection not found different",
            ));
        }
        Ok(())
    }

    /// The peer's `TreeRequest`: our digests of the same nodes are asked of the store.
    pub(super) fn on_request(&mut self, out: &mut Outbox, r: TreeRequest) -> Result<(), SyncError> {
        let exchanging = self.sends.contains_key(&(r.collection.clone(), false));
        let Some(armed) = self.armed.get_mut(&r.collection) else {
            return Err(unexpected(
                &r.collection,
                "tree request for a collection not found different",
            ));
        };
        if armed.pending.is_some() || exchanging {
            return Err(unexpected(
                &r.collection,
                "tree request while the last one is answered",
            ));
        }
        armed.requests += 1;
        if armed.requests > MAX_TREE_REQUESTS {
            return Err(SyncError::LimitExceeded("tree requests of one repair"));
        }
        let (collection, level, parents) = (r.collection.clone(), r.level, r.parents.clone());
        armed.pending = Some(r);
        self.ask_store(out, &collection, level, parents, false);
        Ok(())
    }

    /// The store's digests of the children at `level` of `parents`: sent to the peer (our
    /// descent) or compared with the peer's (its request: at the leaves, the exchange of the
    /// differing ones starts).
    pub(super) fn on_digests(
        &mut self,
        out: &mut Outbox,
        (collection, level): (&str, u8),
        parents: &[u32],
        digests: Vec<Digest>,
    ) -> Result<(), SyncError> {
        let Some(pos) = self
            .waiters
            .iter()
            .position(|(c, l, _)| c == collection && *l == level)
        else {
            return Ok(());
        };
        let Some((_, _, ours)) = self.waiters.remove(pos) else {
            return Ok(());
        };
        if digests.len() != parents.len() * FANOUT as usize {
            return Err(SyncError::Store(format!(
                "tree digests of {collection}: {} for {} parents",
                digests.len(),
                parents.len()
            )));
        }
        if ours {
            let Some(d) = self.descent.as_mut().filter(|d| {
                d.collection == collection && d.level == level && !d.asked && d.parents == parents
            }) else {
                return Ok(());
            };
            d.asked = true;
            out.control(
                TreeRequest {
                    collection: collection.to_owned(),
                    level,
                    parents: parents.to_vec(),
                    digests,
                }
                .into(),
            );
            return Ok(());
        }
        let Some(req) = self
            .armed
            .get_mut(collection)
            .and_then(|a| a.pending.take())
            .filter(|r| r.level == level && r.parents == parents)
        else {
            return Ok(());
        };
        let differing = tree::differing_children(parents, &digests, &req.digests);
        let at_leaves = level == LEVELS;
        let nothing = differing.is_empty();
        out.control(
            TreeReply {
                collection: collection.to_owned(),
                level,
                differing: differing.clone(),
            }
            .into(),
        );
        if nothing {
            self.armed.remove(collection);
        } else if at_leaves {
            self.start_exchange((collection.to_owned(), false), differing);
        }
        Ok(())
    }

    /// The peer's `TreeReply` to our request: the next level is asked of the store, or the
    /// leaves are exchanged, or (nothing differs) the descent ends.
    pub(super) fn on_reply(&mut self, out: &mut Outbox, r: TreeReply) -> Result<(), SyncError> {
        let Some(d) = self
            .descent
            .as_mut()
            .filter(|d| d.collection == r.collection && d.asked && !d.exchanging)
        else {
            return Err(unexpected(&r.collection, "tree reply to no request"));
        };
        if r.level != d.level
            || r.differing
                .iter()
                .any(|n| d.parents.binary_search(&(n / FANOUT)).is_err())
        {
            return Err(unexpected(
                &r.collection,
                "tree reply naming nodes not asked",
            ));
        }
        if r.differing.is_empty() {
            let c = r.collection;
            self.descent = None;
            self.finished.push(c);
            return Ok(());
        }
        if d.level == LEVELS {
            d.exchanging = true;
            self.start_exchange((r.collection, true), r.differing);
            return Ok(());
        }
        d.level += 1;
        d.parents = r.differing.clone();
        d.asked = false;
        let level = d.level;
        self.ask_store(out, &r.collection, level, r.differing, true);
        Ok(())
    }

    /// Issues the next leaf load into `out` when none is in flight and the bulk stream has
    /// room (`room`).
    pub(super) fn pump(&mut self, cfg: &SessionConfig, out: &mut Outbox, room: bool) {
        if !room || self.loading.is_some() {
            return;
        }
        let Some((key, send)) = self.sends.iter().find(|(_, s)| s.started && !s.done) else {
            return;
        };
        out.action(Action::LoadLeaves {
            collection: key.0.clone(),
            leaves: send.leaves.clone(),
            after: send.after.clone(),
            max_versions: cfg.batch_max_versions.max(1),
            max_bytes: cfg.batch_max_bytes.max(1),
        });
        self.loading = Some(key.clone());
    }

    /// The leaves the load in flight of `collection` reads, when it is in flight (versions of
    /// other leaves in its answer break the driver's contract).
    pub(super) fn loading_leaves(&self, collection: &str) -> Option<&[u32]> {
        let key = self.loading.as_ref().filter(|k| k.0 == collection)?;
        self.sends.get(key).map(|s| s.leaves.as_slice())
    }

    /// The driver's answer to the leaf load in flight, with the versions the peer may take
    /// (the session filtered them): queued as `RepairBatch` frames; the last one when `next`
    /// is `None`. Returns false when the answer is for no load in flight.
    pub(super) fn on_loaded(
        &mut self,
        cfg: &SessionConfig,
        out: &mut Outbox,
        collection: &str,
        versions: Vec<Version>,
        next: Option<(u32, String)>,
    ) -> bool {
        let Some(key) = self.loading.take_if(|k| k.0 == collection) else {
            return false;
        };
        let requester = key.1;
        let Some(send) = self.sends.get_mut(&key) else {
            return false;
        };
        let last = next.is_none();
        send.after = next;
        send.done = last;
        self.versions_sent += versions.len() as u64;
        let mut batches = super::send::split_batches(cfg, versions);
        if batches.is_empty() && last {
            batches.push(Vec::new());
        }
        let count = batches.len();
        for (i, versions) in batches.into_iter().enumerate() {
            out.repair_batch(RepairBatch {
                collection: collection.to_owned(),
                versions,
                last: last && i + 1 == count,
                requester,
            });
        }
        true
    }

    /// The peer's `RepairBatch`: allowed while its share of an exchange is open, and only of
    /// keys in the agreed leaves. Returns the versions for the session to check and apply,
    /// and the exchange they belong to (for [`TreeRepair::applying`]).
    pub(super) fn on_batch(
        &mut self,
        b: RepairBatch,
    ) -> Result<(Vec<Version>, (String, bool)), SyncError> {
        let key = (b.collection.clone(), !b.requester);
        let Some(recv) = self.recvs.get_mut(&key).filter(|r| !r.last) else {
            return Err(unexpected(
                &b.collection,
                "repair versions without an exchange of leaves",
            ));
        };
        if let Some(v) = b
            .versions
            .iter()
            .find(|v| recv.leaves.binary_search(&tree::leaf_of(&v.key)).is_err())
        {
            return Err(unexpected(
                &b.collection,
                &format!(
                    "repair version of {} outside the differing leaves",
                    clip(&v.key)
                ),
            ));
        }
        recv.last = b.last;
        if let Some(send) = self.sends.get_mut(&key) {
            send.started = true;
        }
        Ok((b.versions, key))
    }

    /// `parts` repair applies were emitted for a batch of exchange `key`; once its last batch
    /// is in and nothing is pending, `RepairApplied` goes out.
    pub(super) fn applying(&mut self, out: &mut Outbox, key: &(String, bool), parts: usize) {
        if let Some(r) = self.recvs.get_mut(key) {
            r.applying += parts;
        }
        self.check_applied(out, key);
    }

    /// One repair apply of `collection` was answered. True when it was one of a leaf exchange.
    pub(super) fn applied(&mut self, out: &mut Outbox, collection: &str) -> bool {
        let Some((key, r)) = self
            .recvs
            .iter_mut()
            .find(|(k, r)| k.0 == collection && r.applying > 0)
        else {
            return false;
        };
        r.applying -= 1;
        let key = key.clone();
        self.check_applied(out, &key);
        true
    }

    /// The peer's `RepairApplied`: our share of the exchange is done.
    pub(super) fn on_peer_applied(&mut self, r: RepairApplied) -> Result<(), SyncError> {
        let key = (r.collection.clone(), !r.requester);
        let Some(send) = self.sends.get_mut(&key).filter(|s| s.done && !s.confirmed) else {
            return Err(unexpected(
                &r.collection,
                "repair confirmation of nothing sent",
            ));
        };
        send.confirmed = true;
        self.check_done(&key);
        Ok(())
    }

    /// Starts exchange `key` of `leaves` in both directions.
    fn start_exchange(&mut self, key: Exchange, leaves: Vec<u32>) {
        self.sends.insert(
            key.clone(),
            LeafSend {
                leaves: leaves.clone(),
                started: key.1,
                after: None,
                done: false,
                confirmed: false,
            },
        );
        self.recvs.insert(
            key,
            LeafRecv {
                leaves,
                last: false,
                applying: 0,
                confirmed: false,
            },
        );
    }

    /// Sends `RepairApplied` once the peer's last batch of exchange `key` is in and applied.
    fn check_applied(&mut self, out: &mut Outbox, key: &Exchange) {
        let Some(r) = self
            .recvs
            .get_mut(key)
            .filter(|r| r.last && r.applying == 0 && !r.confirmed)
        else {
            return;
        };
        r.confirmed = true;
        out.control(
            RepairApplied {
                collection: key.0.clone(),
                requester: key.1,
            }
            .into(),
        );
        self.check_done(key);
    }

    /// Ends exchange `key` once both shares are confirmed.
    fn check_done(&mut self, key: &Exchange) {
        let sent = self.sends.get(key).is_some_and(|s| s.confirmed);
        let received = self.recvs.get(key).is_some_and(|r| r.confirmed);
        if !(sent && received) {
            return;
        }
        self.sends.remove(key);
        self.recvs.remove(key);
        let (collection, ours) = key;
        if !ours {
            self.armed.remove(collection);
        } else if self
            .descent
            .as_ref()
            .is_some_and(|d| d.collection == *collection && d.exchanging)
        {
            self.descent = None;
            self.finished.push(collection.clone());
        }
    }

    fn ask_store(
        &mut self,
        out: &mut Outbox,
        collection: &str,
        level: u8,
        parents: Vec<u32>,
        ours: bool,
    ) {
        self.waiters.push_back((collection.to_owned(), level, ours));
        out.action(Action::TreeDigests {
            collection: collection.to_owned(),
            level,
            parents,
        });
    }
}

fn unexpected(collection: &str, what: &str) -> SyncError {
    SyncError::Tree {
        collection: clip(collection),
        what: what.to_owned(),
    }
}
