//! Repair: periodic and on-demand digest rounds per collection, and the full reconciliation
//! they start when equal vectors hide different contents.
//!
//! A round: the requester (when idle) asks its store for the digest ([`Action::Digest`]),
//! arms its receiving side for the collection and sends `DigestRequest`. The replier asks its
//! store the same way and answers `DigestReply { equal }`; when its vector equals the
//! requested one but the digest does not, it arms its receiving side and re-streams the
//! collection. The requester reaches the same verdict from the reply and re-streams too. It
//! then waits until its re-stream is acknowledged and the peer's has reached the compared
//! vector (or a fallback delay passed), and runs a follow-up round to report `Repaired` or
//! `StillDifferent`.
//!
//! From protocol 3 on a mismatch at equal vectors re-streams nothing at first: the requester
//! descends the hash tree with the replier ([`super::tree`]) and they exchange the versions of
//! the differing leaves only; the follow-up round runs once that exchange is confirmed both
//! ways. A follow-up that still finds the digests different starts a full reconciliation
//! (`FullRepair` tells the replier to re-stream too).

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;

use crate::digest::Digest;
use crate::dot::{ReplicaId, VersionVector};
use crate::wire::{DigestReply, DigestRequest};

use super::api::{Action, Event, VerifyOutcome};
use super::config::{Role, SessionConfig};
use super::error::SyncError;
use super::outbox::Outbox;
use super::recv::{RecvView, Rx};
use super::send::Tx;
use super::MAX_PENDING_DIGEST_REQUESTS;

/// The repair state of a session.
#[derive(Debug, Default)]
pub(super) struct Repair {
    /// When the next periodic round is due.
    next_due: u64,
    /// The collection of the last periodic round (round-robin).
    cursor: Option<String>,
    /// The round this side started, if any (one at a time).
    round: Option<Round>,
    /// Collections to verify on demand.
    verify_queue: VecDeque<String>,
    /// Rounds to run once a reconciliation has settled.
    followups: BTreeMap<String, Followup>,
    /// Who each pending [`Action::Digest`] is for, in order.
    waiters: VecDeque<(String, Purpose)>,
    /// The peer's requests awaiting our digest.
    incoming: BTreeMap<String, DigestRequest>,
    /// Per collection, reconciliations in a row and until when periodic rounds skip it.
    hold: BTreeMap<String, (u32, u64)>,
    /// Reconciliations started.
    started: u64,
    /// This side's round whose mismatch is being repaired through the hash tree: what its
    /// follow-up needs once the tree repair ends.
    tree_round: Option<(String, Sent, bool)>,
}

/// What the requester does after the peer's `DigestReply`.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Nothing (equal, vectors differ, or not an answer to our round).
    Nothing,
    /// Re-stream the collection for a full reconciliation.
    Restart(String),
    /// Descend the collection's hash tree (protocol 3).
    Descend(String),
}

/// What the replier does after answering the peer's `DigestRequest`.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Answered {
    /// Nothing: the digests are equal or the vectors differ.
    Nothing,
    /// Re-stream the collection for a full reconciliation (protocol 1 and 2).
    Restart,
    /// Let the peer descend the collection's hash tree (protocol 3).
    Arm,
}

/// Longest periodic back-off after reconciliations that did not help, in repair intervals.
const MAX_BACKOFF: u64 = 64;

/// Who a pending [`Action::Digest`] is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Purpose {
    /// A round this side started.
    Round,
    /// An answer to the peer's request.
    Reply,
}

#[derive(Debug)]
struct Round {
    collection: String,
    on_demand: bool,
    followup: bool,
    sent: Option<Sent>,
}

/// What a round compared with, and the receiving side's state when it was armed.
#[derive(Debug, Clone)]
struct Sent {
    vv: VersionVector,
    arm: u64,
    completed_at_arm: BTreeMap<ReplicaId, u64>,
}

#[derive(Debug)]
struct Followup {
    sent: Sent,
    deadline: u64,
    on_demand: bool,
    /// After a tree repair, whose end was confirmed both ways: ready at once.
    tree: bool,
}

/// What the repair rounds read of the rest of the session.
#[derive(Clone, Copy)]
pub(super) struct RepairView<'a> {
    role: Role,
    recv: RecvView<'a>,
    tx: &'a Tx,
    rx: &'a Rx,
    may_send: &'a dyn Fn(&str) -> bool,
}

impl<'a> RepairView<'a> {
    /// The view of a session with these parts; `may_send` tells whether the peer may read a
    /// collection.
    pub(super) fn new(
        role: Role,
        recv: RecvView<'a>,
        tx: &'a Tx,
        rx: &'a Rx,
        may_send: &'a dyn Fn(&str) -> bool,
    ) -> Self {
        Self {
            role,
            recv,
            tx,
            rx,
            may_send,
        }
    }

    fn cfg(&self) -> &SessionConfig {
        self.recv.cfg()
    }

    fn now(&self) -> u64 {
        self.recv.now()
    }
}

impl Repair {
    /// The session was established at `now`: the first periodic round is due one interval on.
    pub(super) fn start(&mut self, now: u64, interval: u64) {
        self.next_due = now.saturating_add(interval);
    }

    /// Full reconciliations started.
    pub(super) fn started(&self) -> u64 {
        self.started
    }

    /// A round this side started is under way (or its tree repair).
    pub(super) fn in_round(&self) -> bool {
        self.round.is_some() || self.tree_round.is_some()
    }

    /// The tree repair of this side's round on `collection` has ended: its follow-up round
    /// runs as soon as the session is idle.
    pub(super) fn tree_finished(&mut self, collection: &str, now: u64) {
        let Some((c, sent, on_demand)) = self.tree_round.take_if(|(c, _, _)| c == collection)
        else {
            return;
        };
        self.followups.insert(
            c,
            Followup {
                sent,
                deadline: now,
                on_demand,
                tree: true,
            },
        );
    }

    /// Queues an on-demand round of `collection` (once).
    pub(super) fn queue_verify(&mut self, collection: &str) {
        if !self.verify_queue.iter().any(|c| c == collection) {
            self.verify_queue.push_back(collection.to_owned());
        }
    }

    /// Who the Digest of `collection` answered was for (the first pending one).
    pub(super) fn take_waiter(&mut self, collection: &str) -> Option<Purpose> {
        let pos = self.waiters.iter().position(|(c, _)| c == collection)?;
        self.waiters.remove(pos).map(|(_, p)| p)
    }

    /// The earliest time a round may start or a follow-up fall back, when that is what the
    /// session waits for.
    /// (The session checks it is established and idle.)
    pub(super) fn deadline(&self, view: RepairView<'_>) -> Option<u64> {
        if self.in_round() {
            return None;
        }
        let periodic = (view.role == Role::Dialer && view.cfg().repair_interval_ms > 0)
            .then_some(self.next_due);
        // A follow-up falls back on its deadline only once our re-stream is acknowledged
        // (until then an acknowledgement, not time, is what moves it).
        let fallback = self
            .followups
            .iter()
            .filter(|(c, _)| view.tx.acked(c))
            .map(|(_, f)| f.deadline)
            .min();
        match (periodic, fallback) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Starts a round if the session is idle and one is wanted: a settled follow-up first,
    /// then on-demand requests, then the periodic round-robin (dialer only).
    /// (The session checks it is idle.)
    pub(super) fn maybe_start_round(&mut self, view: RepairView<'_>, out: &mut Outbox) {
        if self.in_round() {
            return;
        }
        let ready = self
            .followups
            .iter()
            .find(|(c, f)| Self::followup_ready(view, c, f))
            .map(|(c, _)| c.clone());
        let (collection, on_demand, followup) = if let Some(c) = ready {
            let on_demand = self.followups.remove(&c).is_some_and(|f| f.on_demand);
            (c, on_demand, true)
        } else if let Some(c) = self.verify_queue.pop_front() {
            (c, true, false)
        } else if view.role == Role::Dialer
            && view.cfg().repair_interval_ms > 0
            && view.now() >= self.next_due
        {
            self.next_due = view.now().saturating_add(view.cfg().repair_interval_ms);
            let Some(c) = self.next_periodic_collection(view) else {
                return;
            };
            self.cursor = Some(c.clone());
            (c, false, false)
        } else {
            return;
        };
        self.waiters.push_back((collection.clone(), Purpose::Round));
        out.action(Action::Digest {
            collection: collection.clone(),
        });
        self.round = Some(Round {
            collection,
            on_demand,
            followup,
            sent: None,
        });
    }

    /// The peer's `DigestRequest`: what it tells of its vector is learnt, and our digest is
    /// asked of the store.
    pub(super) fn on_digest_request(
        &mut self,
        out: &mut Outbox,
        peer_vvs: &mut BTreeMap<String, VersionVector>,
        r: DigestRequest,
    ) -> Result<(), SyncError> {
        peer_vvs
            .entry(r.collection.clone())
            .or_default()
            .merge(&r.vv);
        let again = self.incoming.contains_key(&r.collection);
        if !again && self.incoming.len() >= MAX_PENDING_DIGEST_REQUESTS {
            return Err(SyncError::LimitExceeded(
                "digest requests awaiting an answer",
            ));
        }
        let collection = r.collection.clone();
        self.incoming.insert(collection.clone(), r);
        if !again {
            self.waiters.push_back((collection.clone(), Purpose::Reply));
            out.action(Action::Digest { collection });
        }
        Ok(())
    }

    /// The peer's `DigestReply`: the verdict of our round — whether to restart the
    /// collection's streams for a full reconciliation or descend its hash tree.
    pub(super) fn on_digest_reply(
        &mut self,
        view: RepairView<'_>,
        out: &mut Outbox,
        peer_vvs: &mut BTreeMap<String, VersionVector>,
        r: DigestReply,
    ) -> Verdict {
        peer_vvs
            .entry(r.collection.clone())
            .or_default()
            .merge(&r.vv);
        let matches = self
            .round
            .as_ref()
            .is_some_and(|x| x.collection == r.collection && x.sent.is_some());
        if !matches {
            return Verdict::Nothing; // not an answer to our round: ignore
        }
        let Some(Round {
            on_demand,
            followup,
            sent: Some(sent),
            ..
        }) = self.round.take()
        else {
            return Verdict::Nothing;
        };
        let round = (on_demand, followup);
        let mut restart = Verdict::Nothing;
        let outcome = if r.equal {
            self.hold.remove(&r.collection);
            if round.1 {
                VerifyOutcome::Repaired
            } else {
                VerifyOutcome::Equal
            }
        } else if r.vv != sent.vv {
            VerifyOutcome::VectorsDiffer
        } else {
            self.begin((view.cfg(), view.now()), out, &r.collection);
            if view.recv.protocol() >= 3 && !round.1 {
                // Through the tree first; the follow-up runs when its exchange is confirmed.
                self.tree_round = Some((r.collection.clone(), sent, round.0));
                return Verdict::Descend(r.collection);
            }
            restart = Verdict::Restart(r.collection.clone());
            if round.1 {
                VerifyOutcome::StillDifferent
            } else {
                let deadline = view.now().saturating_add(
                    view.cfg()
                        .repair_interval_ms
                        .max(view.cfg().idle_timeout_ms)
                        .max(1),
                );
                self.followups.insert(
                    r.collection,
                    Followup {
                        sent,
                        deadline,
                        on_demand: round.0,
                        tree: false,
                    },
                );
                return restart;
            }
        };
        if round.0 {
            out.event(Event::Verified {
                collection: r.collection,
                outcome,
            });
        }
        restart
    }

    /// Our digest for our round: arms the receiving side and sends `DigestRequest`.
    pub(super) fn send_digest_request(
        &mut self,
        rx: &mut Rx,
        out: &mut Outbox,
        collection: &str,
        digest: Digest,
        vv: VersionVector,
    ) -> Result<(), SyncError> {
        let waiting = self
            .round
            .as_ref()
            .is_some_and(|r| r.collection == collection && r.sent.is_none());
        if !waiting {
            return Ok(());
        }
        let arm = rx.arm(collection)?;
        let completed_at_arm = rx.completed(collection);
        if let Some(round) = &mut self.round {
            round.sent = Some(Sent {
                vv: vv.clone(),
                arm,
                completed_at_arm,
            });
        }
        out.control(
            DigestRequest {
                collection: collection.to_owned(),
                digest,
                vv,
            }
            .into(),
        );
        Ok(())
    }

    /// Our digest for the peer's request: answers `DigestReply`; on equal vectors but
    /// different digests arms the receiving side and starts a reconciliation: full (the
    /// caller restarts the collection's streams) or, from protocol 3 on, through the tree
    /// (the caller arms it for the peer's descent).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn reply_digest(
        &mut self,
        (cfg, now): (&SessionConfig, u64),
        rx: &mut Rx,
        out: &mut Outbox,
        collection: &str,
        digest: Digest,
        vv: VersionVector,
        protocol: u16,
    ) -> Result<Answered, SyncError> {
        let Some(req) = self.incoming.remove(collection) else {
            return Ok(Answered::Nothing);
        };
        let equal = digest == req.digest;
        let mismatch = !equal && vv == req.vv;
        out.control(
            DigestReply {
                collection: collection.to_owned(),
                digest,
                vv,
                equal,
            }
            .into(),
        );
        if !mismatch {
            return Ok(Answered::Nothing);
        }
        // Armed for a restart in any case: from protocol 3 on the requester may still ask
        // for a full reconciliation (`FullRepair`).
        rx.arm(collection)?;
        self.begin((cfg, now), out, collection);
        Ok(if protocol >= 3 {
            Answered::Arm
        } else {
            Answered::Restart
        })
    }

    /// A full reconciliation of `collection` starts (the caller restarts its streams).
    fn begin(&mut self, (cfg, now): (&SessionConfig, u64), out: &mut Outbox, collection: &str) {
        self.started += 1;
        // Periodic rounds back off a collection that keeps needing repair (a divergence the
        // rules cannot mend must not re-stream it every interval).
        let interval = cfg.repair_interval_ms.max(1);
        let (in_row, until) = self.hold.entry(collection.to_owned()).or_insert((0, 0));
        *in_row = in_row.saturating_add(1);
        let factor = 1u64 << (*in_row - 1).min(6);
        *until = now.saturating_add(interval.saturating_mul(factor.min(MAX_BACKOFF)));
        out.event(Event::DigestMismatch {
            collection: collection.to_owned(),
        });
    }

    /// A follow-up may run: our re-stream is acknowledged and the peer's has reached the
    /// compared vector for every origin it sends us, or the fallback delay has passed.
    fn followup_ready(view: RepairView<'_>, collection: &str, f: &Followup) -> bool {
        if f.tree {
            return true;
        }
        if !view.tx.acked(collection) {
            return false;
        }
        if view.now() >= f.deadline {
            return true;
        }
        let base = view.recv.advertised(collection);
        f.sent.vv.iter().all(|(origin, target)| {
            if !view.recv.accepts_origin(origin) {
                return true;
            }
            let initial = base.map_or(0, |vv| vv.get(origin));
            let stream = view.rx.progress(collection, origin);
            let completed = stream.map_or(initial, |(completed, _)| completed);
            let natural = f
                .sent
                .completed_at_arm
                .get(origin)
                .copied()
                .unwrap_or(initial)
                == 0;
            let restarted = natural || stream.is_some_and(|(_, arm)| arm >= f.sent.arm);
            restarted && completed >= target
        })
    }

    /// The collection after the last periodic one, wrapping around, skipping those held back.
    fn next_periodic_collection(&self, view: RepairView<'_>) -> Option<String> {
        // `_status` differs between the two sides by design (reports travel up only): no
        // digest round could make it equal.
        let eligible = |c: &&String| {
            (view.may_send)(c)
                && c.as_str() != crate::status::STATUS_COLLECTION
                && self
                    .hold
                    .get(*c)
                    .is_none_or(|(_, until)| *until <= view.now())
        };
        let local = view.recv.local();
        let mut candidates = local.keys().filter(eligible);
        match &self.cursor {
            Some(cur) => local
                .range::<String, _>((Bound::Excluded(cur), Bound::Unbounded))
                .map(|(c, _)| c)
                .find(eligible)
                .or_else(|| candidates.next())
                .cloned(),
            None => candidates.next().cloned(),
        }
    }
}
