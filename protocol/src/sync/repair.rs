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

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;

use crate::digest::Digest;
use crate::dot::{ReplicaId, VersionVector};
use crate::wire::{DigestReply, DigestRequest};

use super::api::{Action, Event, VerifyOutcome};
use super::config::Role;
use super::error::SyncError;
use super::recv::recv_view;
use super::session::{Phase, Session};
use super::MAX_PENDING_DIGEST_REQUESTS;

/// The repair state of a session.
#[derive(Debug, Default)]
pub(super) struct Repair {
    /// When the next periodic round is due.
    pub(super) next_due: u64,
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
    /// Full reconciliations started.
    pub(super) started: u64,
}

/// Longest periodic back-off after reconciliations that did not help, in repair intervals.
const MAX_BACKOFF: u64 = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    Round,
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
}

impl Session {
    /// Runs a digest round of `collection` with this peer as soon as the session is idle
    /// (`officesync verify`). It ends with one [`Event::Verified`]: at once when the digests
    /// are equal or the vectors differ; after a full reconciliation
    /// ([`Event::DigestMismatch`]) and a follow-up round when they differ at equal vectors.
    /// Periodic rounds report only mismatches.
    pub fn request_verify(&mut self, collection: &str) {
        if self.phase == Phase::Closed {
            return;
        }
        if !self.repair.verify_queue.iter().any(|c| c == collection) {
            self.repair.verify_queue.push_back(collection.to_owned());
        }
        self.drive();
    }

    /// The driver's answer to [`Action::Digest`]: the collection's digest and the vector of
    /// the same state.
    pub fn handle_local_digest(&mut self, collection: &str, digest: Digest, vv: VersionVector) {
        if self.phase == Phase::Closed {
            return;
        }
        let waiters = &mut self.repair.waiters;
        let Some(pos) = waiters.iter().position(|(c, _)| c == collection) else {
            return;
        };
        let Some((_, purpose)) = waiters.remove(pos) else {
            return;
        };
        // The peer learns this vector: what it covers may appear in contexts sent to us.
        self.rx.note_held(collection, &vv);
        let result = match purpose {
            Purpose::Round => self.send_digest_request(collection, digest, vv),
            Purpose::Reply => self.reply_digest(collection, digest, vv),
        };
        if let Err(e) = result {
            self.fail(e);
        }
        self.drive();
    }

    /// The earliest time a round may start or a follow-up fall back, when that is what the
    /// session waits for.
    pub(super) fn repair_deadline(&self) -> Option<u64> {
        if self.phase != Phase::Established
            || !self.peer_confirmed
            || self.repair.round.is_some()
            || !self.is_idle()
        {
            return None;
        }
        let periodic = (self.role == Role::Dialer && self.cfg.repair_interval_ms > 0)
            .then_some(self.repair.next_due);
        // A follow-up falls back on its deadline only once our re-stream is acknowledged
        // (until then an acknowledgement, not time, is what moves it).
        let fallback = self
            .repair
            .followups
            .iter()
            .filter(|(c, _)| self.tx.acked(c))
            .map(|(_, f)| f.deadline)
            .min();
        match (periodic, fallback) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Starts a round if the session is idle and one is wanted: a settled follow-up first,
    /// then on-demand requests, then the periodic round-robin (dialer only).
    pub(super) fn maybe_start_round(&mut self) -> Result<(), SyncError> {
        if self.repair.round.is_some() || !self.is_idle() {
            return Ok(());
        }
        let ready = self
            .repair
            .followups
            .iter()
            .find(|(c, f)| self.followup_ready(c, f))
            .map(|(c, _)| c.clone());
        let (collection, on_demand, followup) = if let Some(c) = ready {
            let on_demand = self
                .repair
                .followups
                .remove(&c)
                .is_some_and(|f| f.on_demand);
            (c, on_demand, true)
        } else if let Some(c) = self.repair.verify_queue.pop_front() {
            (c, true, false)
        } else if self.role == Role::Dialer
            && self.cfg.repair_interval_ms > 0
            && self.now >= self.repair.next_due
        {
            self.repair.next_due = self.now.saturating_add(self.cfg.repair_interval_ms);
            let Some(c) = self.next_periodic_collection() else {
                return Ok(());
            };
            self.repair.cursor = Some(c.clone());
            (c, false, false)
        } else {
            return Ok(());
        };
        self.repair
            .waiters
            .push_back((collection.clone(), Purpose::Round));
        self.out.action(Action::Digest {
            collection: collection.clone(),
        });
        self.repair.round = Some(Round {
            collection,
            on_demand,
            followup,
            sent: None,
        });
        Ok(())
    }

    pub(super) fn on_digest_request(&mut self, r: DigestRequest) -> Result<(), SyncError> {
        self.peer_vvs
            .entry(r.collection.clone())
            .or_default()
            .merge(&r.vv);
        let again = self.repair.incoming.contains_key(&r.collection);
        if !again && self.repair.incoming.len() >= MAX_PENDING_DIGEST_REQUESTS {
            return Err(SyncError::LimitExceeded(
                "digest requests awaiting an answer",
            ));
        }
        let collection = r.collection.clone();
        self.repair.incoming.insert(collection.clone(), r);
        if !again {
            self.repair
                .waiters
                .push_back((collection.clone(), Purpose::Reply));
            self.out.action(Action::Digest { collection });
        }
        Ok(())
    }

    pub(super) fn on_digest_reply(&mut self, r: DigestReply) -> Result<(), SyncError> {
        self.peer_vvs
            .entry(r.collection.clone())
            .or_default()
            .merge(&r.vv);
        let matches = self
            .repair
            .round
            .as_ref()
            .is_some_and(|x| x.collection == r.collection && x.sent.is_some());
        if !matches {
            return Ok(()); // not an answer to our round: ignore
        }
        let Some(round) = self.repair.round.take() else {
            return Ok(());
        };
        let Some(sent) = round.sent else {
            return Ok(());
        };
        let outcome = if r.equal {
            self.repair.hold.remove(&r.collection);
            if round.followup {
                VerifyOutcome::Repaired
            } else {
                VerifyOutcome::Equal
            }
        } else if r.vv != sent.vv {
            VerifyOutcome::VectorsDiffer
        } else {
            self.begin_repair(&r.collection);
            if round.followup {
                VerifyOutcome::StillDifferent
            } else {
                let deadline = self.now.saturating_add(
                    self.cfg
                        .repair_interval_ms
                        .max(self.cfg.idle_timeout_ms)
                        .max(1),
                );
                self.repair.followups.insert(
                    r.collection,
                    Followup {
                        sent,
                        deadline,
                        on_demand: round.on_demand,
                    },
                );
                return Ok(());
            }
        };
        if round.on_demand {
            self.out.event(Event::Verified {
                collection: r.collection,
                outcome,
            });
        }
        Ok(())
    }

    fn send_digest_request(
        &mut self,
        collection: &str,
        digest: Digest,
        vv: VersionVector,
    ) -> Result<(), SyncError> {
        let waiting = self
            .repair
            .round
            .as_ref()
            .is_some_and(|r| r.collection == collection && r.sent.is_none());
        if !waiting {
            return Ok(());
        }
        let arm = self.rx.arm(collection)?;
        let completed_at_arm = self.rx.completed(collection);
        if let Some(round) = &mut self.repair.round {
            round.sent = Some(Sent {
                vv: vv.clone(),
                arm,
                completed_at_arm,
            });
        }
        self.out.control(
            DigestRequest {
                collection: collection.to_owned(),
                digest,
                vv,
            }
            .into(),
        );
        Ok(())
    }

    fn reply_digest(
        &mut self,
        collection: &str,
        digest: Digest,
        vv: VersionVector,
    ) -> Result<(), SyncError> {
        let Some(req) = self.repair.incoming.remove(collection) else {
            return Ok(());
        };
        let equal = digest == req.digest;
        let mismatch = !equal && vv == req.vv;
        self.out.control(
            DigestReply {
                collection: collection.to_owned(),
                digest,
                vv,
                equal,
            }
            .into(),
        );
        if mismatch {
            self.rx.arm(collection)?;
            self.begin_repair(collection);
        }
        Ok(())
    }

    fn begin_repair(&mut self, collection: &str) {
        self.repair.started += 1;
        // Periodic rounds back off a collection that keeps needing repair (a divergence the
        // rules cannot mend must not re-stream it every interval).
        let interval = self.cfg.repair_interval_ms.max(1);
        let (in_row, until) = self
            .repair
            .hold
            .entry(collection.to_owned())
            .or_insert((0, 0));
        *in_row = in_row.saturating_add(1);
        let factor = 1u64 << (*in_row - 1).min(6);
        *until = self
            .now
            .saturating_add(interval.saturating_mul(factor.min(MAX_BACKOFF)));
        self.out.event(Event::DigestMismatch {
            collection: collection.to_owned(),
        });
        self.start_tx_repair(collection);
    }

    /// A follow-up may run: our re-stream is acknowledged and the peer's has reached the
    /// compared vector for every origin it sends us, or the fallback delay has passed.
    fn followup_ready(&self, collection: &str, f: &Followup) -> bool {
        if !self.tx.acked(collection) {
            return false;
        }
        if self.now >= f.deadline {
            return true;
        }
        let view = recv_view!(self);
        let base = self.advertised.get(collection);
        f.sent.vv.iter().all(|(origin, target)| {
            if !view.accepts_origin(origin) {
                return true;
            }
            let initial = base.map_or(0, |vv| vv.get(origin));
            let stream = self.rx.progress(collection, origin);
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
    fn next_periodic_collection(&self) -> Option<String> {
        let eligible = |c: &&String| {
            self.may_send(c)
                && self
                    .repair
                    .hold
                    .get(*c)
                    .is_none_or(|(_, until)| *until <= self.now)
        };
        let mut candidates = self.local.keys().filter(eligible);
        match &self.repair.cursor {
            Some(cur) => self
                .local
                .range::<String, _>((Bound::Excluded(cur), Bound::Unbounded))
                .map(|(c, _)| c)
                .find(eligible)
                .or_else(|| candidates.next())
                .cloned(),
            None => candidates.next().cloned(),
        }
    }
}
