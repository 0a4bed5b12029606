//! The session itself: its state, dispatch of peer frames, the idle timeout, closing, and the
//! `poll_*` outputs. It composes the sub-states of the sibling modules, each with its own
//! methods and private fields: [`Tx`] (sending), [`Rx`] (receiving), [`Repair`] (digest
//! rounds), [`Heartbeats`], the [`Outbox`] of outputs, and the handshake checks. They read the
//! rest of the session through borrowed views (`SendView`, `RecvView`, `RepairView`).

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::digest::Digest;
use crate::dot::{ReplicaId, VersionVector};
use crate::policy::Policy;
use crate::signing::SignatureCheck;
use crate::version::Version;
use crate::wire::{
    About, Ack, Compression, DigestReply, ErrorCode, ErrorFrame, FullRepair, Hello, HelloAck,
    HelloAckV2, Message, MessageV2, MAX_ERROR_DETAIL_BYTES,
};

use super::api::{Action, CollectionStatus, Event, SessionStatus};
use super::config::{PeerIdentity, Role, SessionConfig, StreamKind};
use super::dictionary::{Dictionaries, LocalDictionary};
use super::error::{clip, SyncError};
use super::handshake;
use super::heartbeat::Heartbeats;
use super::outbox::Outbox;
use super::recv::{recv_view, Rx};
use super::repair::{Answered, Purpose, Repair, RepairView, Verdict};
use super::send::{send_view, sends_origin, Free, Tx};
use super::tree::TreeRepair;

/// One sync session with one peer over one connection. See the [module docs](super) for the
/// protocol and the driver contract.
#[derive(Debug)]
pub struct Session {
    role: Role,
    cfg: SessionConfig,
    peer: PeerIdentity,
    /// The access policy in force: what the peer may read, whose versions we accept.
    policy: Arc<Policy>,
    phase: Phase,
    /// The latest `now_ms` given to any input.
    now: u64,
    last_heard: u64,
    compression: Compression,
    /// The protocol version spoken: the highest offered until the handshake agrees one.
    protocol: u16,
    /// The peer's `About` was heard (it is reported once per session).
    peer_about: bool,
    /// The acceptor has heard the established dialer, so its bulk frames cannot overtake
    /// `HelloAck` (always true for the dialer).
    peer_confirmed: bool,
    /// Our vectors: what we may offer (the driver's durable state).
    local: BTreeMap<String, VersionVector>,
    /// Our vectors as sent in the handshake: where the peer's streams to us start.
    advertised: BTreeMap<String, VersionVector>,
    /// What the peer is known to hold: its handshake vectors raised by its completions and
    /// acknowledgements.
    peer_vvs: BTreeMap<String, VersionVector>,
    tx: Tx,
    rx: Rx,
    repair: Repair,
    /// The hash-tree repairs (protocol 3).
    tree: TreeRepair,
    hb: Heartbeats,
    out: Outbox,
    /// The driver has no room for more bulk frames (its stream is held by flow control): no
    /// Load is issued until it has.
    bulk_blocked: bool,
    /// Checks the origin signatures of received versions.
    signatures: Option<Arc<dyn SignatureCheck>>,
    /// The compression dictionaries agreed with the peer (protocol 3).
    dicts: Dictionaries,
    /// Per collection, the lag [`Session::status`] last computed and from what: an idle
    /// session's status is read every few seconds, and at province scale each walk is a
    /// thousand origins.
    lag_memo: std::cell::RefCell<BTreeMap<String, LagMemo>>,
}

/// A lag figure with the vectors (and peer incarnation) it was computed from.
#[derive(Debug)]
struct LagMemo {
    local: VersionVector,
    peer: Option<VersionVector>,
    peer_replica: Option<ReplicaId>,
    lag: u64,
}

/// Where the session is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Handshake,
    Established,
    Closed,
}

impl Session {
    /// A new session of `role` with `peer` (identified by its certificate). `local_vvs` are
    /// the local replica's vectors this node may offer — the durable ones, never above what
    /// the store has applied: they go into the handshake, and the peer streams from them. The
    /// dialer's `Hello` is queued at once.
    pub fn new(
        role: Role,
        cfg: SessionConfig,
        peer: PeerIdentity,
        local_vvs: Vec<(String, VersionVector)>,
        now_ms: u64,
    ) -> Self {
        let mut local: BTreeMap<String, VersionVector> = BTreeMap::new();
        for (c, vv) in local_vvs {
            local.entry(c).or_default().merge(&vv);
        }
        let max_protocol = cfg.max_protocol;
        let mut s = Self {
            role,
            cfg,
            peer,
            policy: Arc::new(Policy::default()),
            phase: Phase::Handshake,
            now: now_ms,
            last_heard: now_ms,
            compression: Compression::None,
            protocol: max_protocol,
            peer_about: false,
            peer_confirmed: role == Role::Dialer,
            local,
            advertised: BTreeMap::new(),
            peer_vvs: BTreeMap::new(),
            tx: Tx::default(),
            rx: Rx::default(),
            repair: Repair::default(),
            tree: TreeRepair::default(),
            hb: Heartbeats::default(),
            out: Outbox::default(),
            bulk_blocked: false,
            signatures: None,
            dicts: Dictionaries::default(),
            lag_memo: Default::default(),
        };
        if role == Role::Dialer {
            let vvs = s.advertise();
            s.out.control(handshake::hello(&s.cfg, vvs).into());
        }
        s
    }

    /// Checks every received version's origin signature with `check` from now on: a refused
    /// version is never applied, and its stream waits for the next session.
    pub fn set_signature_check(&mut self, check: Arc<dyn SignatureCheck>) {
        self.signatures = Some(check);
    }

    /// A frame `msg` received on `stream` at `now_ms`. Any violation closes the session:
    /// [`Event::Closed`] plus an `Error` frame queued on the control stream.
    pub fn handle_frame(&mut self, stream: StreamKind, msg: Message, now_ms: u64) {
        if self.phase == Phase::Closed {
            return;
        }
        self.now = self.now.max(now_ms);
        self.last_heard = self.now;
        if let Err(e) = self.on_frame(stream, msg) {
            self.fail(e);
        }
        self.drive();
    }

    /// This node's compression dictionaries, one per collection (replacing the earlier set):
    /// in a zstd session of protocol 3, each is offered to the peer if it may read the
    /// collection and has not been offered this one yet.
    pub fn handle_dictionaries(&mut self, dicts: Vec<LocalDictionary>) {
        if self.phase == Phase::Closed {
            return;
        }
        self.dicts.set_local(dicts);
        self.drive();
    }

    /// The dictionaries the peer accepted, by collection: what frames may be primed with.
    pub fn agreed_dictionaries(&self) -> Vec<(String, crate::wire::DictionaryId)> {
        self.dicts
            .agreed()
            .iter()
            .map(|(c, id)| (c.clone(), *id))
            .collect()
    }

    /// The peer's dictionaries this session holds, by collection (newest last).
    pub fn held_dictionaries(&self) -> Vec<(String, Vec<crate::wire::DictionaryId>)> {
        self.dicts
            .held()
            .iter()
            .map(|(c, ids)| (c.clone(), ids.clone()))
            .collect()
    }

    /// The local replica's vector of `collection` grew (a local write or applied relayed
    /// data became offerable). Give the vector this node may offer peers: in the daemon, the
    /// durable one, so a crash can never make it reuse a dot a peer holds.
    pub fn handle_local_vv(&mut self, collection: &str, vv: VersionVector) {
        if self.phase == Phase::Closed {
            return;
        }
        self.raise_local(collection, &vv);
        self.drive();
    }

    /// The driver's room for bulk frames: `blocked` while its bulk stream takes no more (QUIC
    /// flow control). Loads wait while it is blocked, so reading the store never runs ahead of
    /// the link; everything else (applies, digests, control frames) goes on.
    pub fn handle_bulk_blocked(&mut self, blocked: bool) {
        if self.phase == Phase::Closed || self.bulk_blocked == blocked {
            return;
        }
        self.bulk_blocked = blocked;
        self.drive();
    }

    /// Time passed: sends due heartbeats, closes an idle session, starts due digest rounds.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        if self.phase == Phase::Closed {
            return;
        }
        self.now = self.now.max(now_ms);
        if self.cfg.idle_timeout_ms > 0
            && self.now >= self.last_heard.saturating_add(self.cfg.idle_timeout_ms)
        {
            self.fail(SyncError::IdleTimeout(self.cfg.idle_timeout_ms));
            return;
        }
        if self.phase == Phase::Established
            && self.cfg.heartbeat_interval_ms > 0
            && self.now >= self.hb.next_at()
        {
            self.send_probe();
        }
        if self.rx.signer_retry_due(recv_view!(self)) {
            self.fail(SyncError::Local {
                code: ErrorCode::Internal,
                reason: "reconnecting: the certificate of a refused version's signer has arrived"
                    .into(),
            });
            return;
        }
        if self.rx.skew_retry_due(self.now) {
            self.fail(SyncError::Local {
                code: ErrorCode::Internal,
                reason: "reconnecting: a version refused for clock skew is now within the bound"
                    .into(),
            });
        }
        let view = send_view!(self);
        if let Some(collection) = self.tx.due_dependency_round(view) {
            self.request_verify(&collection);
        }
        self.drive();
    }

    /// Closes the session from the driver's side (shutdown, revocation...): queues an `Error`
    /// frame with `code` and emits [`Event::Closed`].
    pub fn close(&mut self, code: crate::wire::ErrorCode, reason: &str) {
        self.fail(SyncError::Local {
            code,
            reason: reason.to_owned(),
        });
    }

    /// The next frame to send: control frames first, then urgent, then bulk; in order per
    /// stream.
    pub fn poll_transmit(&mut self) -> Option<(StreamKind, Message)> {
        for kind in [StreamKind::Control, StreamKind::Urgent, StreamKind::Bulk] {
            if let Some(m) = self.poll_transmit_on(kind) {
                return Some((kind, m));
            }
        }
        None
    }

    /// The next frame for `stream` only (for a driver whose other stream is blocked), in the
    /// protocol version the session speaks.
    pub fn poll_transmit_on(&mut self, stream: StreamKind) -> Option<Message> {
        loop {
            let m = match stream {
                StreamKind::Control => self.out.pop_control()?,
                // From protocol 3 on, a batch and the completion queued right after it go as
                // one frame.
                StreamKind::Bulk => {
                    let m = self.out.pop_bulk(self.protocol >= 3)?;
                    self.drive();
                    m
                }
                StreamKind::Urgent => {
                    let m = self.out.pop_urgent(self.protocol >= 3)?;
                    self.drive();
                    m
                }
            };
            // A message the version cannot carry (`About` at version 1) is not sent.
            if let Some(m) = m.into_v2().at(self.protocol) {
                return Some(m);
            }
        }
    }

    /// The protocol version the session speaks (before the handshake completes: the highest
    /// this node offers).
    pub fn protocol(&self) -> u16 {
        self.protocol
    }

    /// The next store action. Execute them in this order.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.out.pop_action()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.out.pop_event()
    }

    /// When [`Session::handle_timeout`] should next be called (`None` once closed).
    pub fn poll_timeout(&self) -> Option<u64> {
        if self.phase == Phase::Closed {
            return None;
        }
        let mut t: Option<u64> = None;
        let mut at = |x: u64| t = Some(t.map_or(x, |t| t.min(x)));
        if self.cfg.idle_timeout_ms > 0 {
            at(self.last_heard.saturating_add(self.cfg.idle_timeout_ms));
        }
        if self.phase == Phase::Established && self.cfg.heartbeat_interval_ms > 0 {
            at(self.hb.next_at());
        }
        if let Some(r) = self.repair_deadline() {
            at(r);
        }
        if let Some(r) = self.rx.skew_retry_at() {
            at(r);
        }
        if let Some(r) = self.tx.dependency_round_at() {
            at(r);
        }
        t
    }

    /// The sending streams the session holds (test only).
    #[cfg(test)]
    pub(crate) fn send_streams_held(&self) -> usize {
        self.tx.streams_held()
    }

    /// The observable state of the session.
    pub fn status(&self) -> SessionStatus {
        let collections = self
            .local
            .iter()
            .filter(|(c, _)| self.may_send(c))
            .map(|(c, vv)| {
                let peer = self.peer_vvs.get(c);
                let peer_replica = self.rx.peer_replica();
                let mut memo = self.lag_memo.borrow_mut();
                let lag_versions = match memo.get(c) {
                    Some(m)
                        if m.local.shares(vv)
                            && m.peer_replica.as_ref() == peer_replica
                            && VersionVector::shares_option(m.peer.as_ref(), peer) =>
                    {
                        m.lag
                    }
                    _ => {
                        let lag = vv
                            .iter()
                            .filter(|(o, _)| {
                                sends_origin(&self.cfg, (&self.peer.node, peer_replica), o)
                            })
                            .map(|(o, n)| n.saturating_sub(peer.map_or(0, |p| p.get(o))))
                            .fold(0u64, u64::saturating_add);
                        memo.insert(
                            c.clone(),
                            LagMemo {
                                local: vv.clone(),
                                peer: peer.cloned(),
                                peer_replica: peer_replica.cloned(),
                                lag,
                            },
                        );
                        lag
                    }
                };
                CollectionStatus {
                    collection: c.clone(),
                    lag_versions,
                    local_vv: vv.clone(),
                }
            })
            .collect();
        let mut status = SessionStatus {
            peer_node: self.peer.node.clone(),
            peer_replica: self.rx.peer_replica().cloned(),
            established: self.phase == Phase::Established,
            closed: self.phase == Phase::Closed,
            peer_vvs: self
                .peer_vvs
                .iter()
                .map(|(c, v)| (c.clone(), v.clone()))
                .collect(),
            collections,
            last_heard_ms: self.last_heard,
            rtt_ms: self.hb.rtt(),
            batches_sent: 0,
            versions_sent: 0,
            batches_received: 0,
            versions_received: 0,
            rejected: 0,
            repairs: self.repair.started(),
            tree_repairs: self.tree.descents(),
            repair_versions_sent: self.tree.versions_sent(),
        };
        self.out.report(&mut status);
        status
    }

    /// True once the session is over (an error, a peer's error frame, an idle timeout or
    /// [`Session::close`]).
    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// True while the handshake has completed and the session is not closed.
    pub fn is_established(&self) -> bool {
        self.phase == Phase::Established
    }

    /// Applies emitted and not yet answered: a driver may stop reading the bulk stream while
    /// this is high, which backpressures the peer through QUIC flow control.
    pub fn applies_in_flight(&self) -> usize {
        self.rx.applying()
    }

    /// Whether this node may send `collection` to the peer: the policy lets the peer's node
    /// read it, and for `_status` this side dialed (reports travel up only).
    pub fn may_send(&self, collection: &str) -> bool {
        sends(&self.policy, &self.peer.node, self.role, collection)
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
            let (was, now) = (
                sends(&old, &self.peer.node, self.role, &c),
                self.may_send(&c),
            );
            if was && !now {
                // Before the handshake completes nothing was sent: the new policy just applies.
                lost_read |= self.phase == Phase::Established;
            } else if !was && now && self.phase == Phase::Established {
                self.ready_all(&c);
            }
        }
        if lost_read || self.rx.refused_now_allowed(recv_view!(self)) {
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
        let view = send_view!(self);
        let key = (collection, origin);
        let Some(sent) = self
            .tx
            .on_loaded(view, &mut self.out, key, versions, scanned_through)
        else {
            return;
        };
        if let Err(e) = sent {
            self.fail(e);
        }
        self.drive();
    }

    /// Merges `vv` into our vector of `collection`; origins that grew get a stream (if we send
    /// them) marked ready.
    fn raise_local(&mut self, collection: &str, vv: &VersionVector) {
        if !self.local.contains_key(collection) {
            self.local
                .insert(collection.to_owned(), VersionVector::new());
        }
        let Some(cur) = self.local.get_mut(collection) else {
            return;
        };
        let mut grown: Vec<ReplicaId> = Vec::new();
        cur.merge_grown(vv, |o| grown.push(o.clone()));
        if self.phase == Phase::Established && self.may_send(collection) {
            for origin in grown {
                let peer = (self.peer.node.as_str(), self.rx.peer_replica());
                self.tx.mark_ready(&self.cfg, peer, collection, origin);
            }
        }
    }

    /// Marks every stream of `collection` ready (creating the missing ones).
    fn ready_all(&mut self, collection: &str) {
        let view = send_view!(self);
        self.tx.ready_all(view, collection);
    }

    /// Issues the next Load if none is in flight, for a stream whose lane has drained its
    /// queue (the bulk lane also needs room in the driver).
    fn pump_loads(&mut self) {
        let free = Free {
            bulk: !self.bulk_blocked && self.out.bulk_drained(),
            // Only an urgent stream makes a second lane.
            urgent: self.protocol >= 3 && !self.cfg.urgent.is_empty() && self.out.urgent_drained(),
        };
        if self.phase != Phase::Established || !self.peer_confirmed || !(free.bulk || free.urgent) {
            return;
        }
        let view = send_view!(self);
        self.tx.pump(view, &mut self.out, free);
    }

    /// Nothing to send and nothing in flight on the sending side.
    fn tx_idle(&self) -> bool {
        let drained = self.out.bulk_drained() && self.out.urgent_drained();
        self.tx.is_idle(send_view!(self), drained)
    }

    /// Restarts every stream of `collection` from counter 0 for a full reconciliation.
    fn start_tx_repair(&mut self, collection: &str) {
        let view = send_view!(self);
        self.tx.start_repair(view, &mut self.out, collection);
    }

    /// The peer acknowledged applying what we sent.
    fn on_ack(&mut self, a: Ack) -> Result<(), SyncError> {
        let known = self
            .peer_vvs
            .get(&a.collection)
            .map_or(0, |vv| vv.get(&a.origin));
        self.tx.on_ack(&a, known)?;
        let key = (a.collection, a.origin);
        if let Some(vv) = self.peer_vvs.get_mut(&key.0) {
            vv.raise(&key.1, a.through);
        } else {
            let mut vv = VersionVector::new();
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
        self.rx.applied();
        if through == 0 && self.tree.applied(&mut self.out, collection) {
            // A leaf repair's Apply: no vector moved, nothing to acknowledge.
            self.drive();
            return;
        }
        // Not offerable as a whole (see above), but held: contexts may cover it.
        self.rx.note_held(collection, &vv);
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

    /// Runs a digest round of `collection` with this peer as soon as the session is idle
    /// (`officesync verify`). It ends with one [`Event::Verified`]: at once when the digests
    /// are equal or the vectors differ; after a full reconciliation
    /// ([`Event::DigestMismatch`]) and a follow-up round when they differ at equal vectors.
    /// Periodic rounds report only mismatches.
    pub fn request_verify(&mut self, collection: &str) {
        if self.phase == Phase::Closed {
            return;
        }
        self.repair.queue_verify(collection);
        self.drive();
    }

    /// The driver's answer to [`Action::Digest`]: the collection's digest and the vector of
    /// the same state.
    pub fn handle_local_digest(&mut self, collection: &str, digest: Digest, vv: VersionVector) {
        if self.phase == Phase::Closed {
            return;
        }
        let Some(purpose) = self.repair.take_waiter(collection) else {
            return;
        };
        // The peer learns this vector: what it covers may appear in contexts sent to us.
        self.rx.note_held(collection, &vv);
        let (rx, out) = (&mut self.rx, &mut self.out);
        let result = match purpose {
            Purpose::Round => self
                .repair
                .send_digest_request(rx, out, collection, digest, vv),
            Purpose::Reply => {
                let at = (&self.cfg, self.now);
                match self
                    .repair
                    .reply_digest(at, rx, out, collection, digest, vv, self.protocol)
                {
                    Ok(Answered::Restart) => {
                        self.start_tx_repair(collection);
                        Ok(())
                    }
                    Ok(Answered::Arm) => self.tree.arm(collection),
                    Ok(Answered::Nothing) => Ok(()),
                    Err(e) => Err(e),
                }
            }
        };
        if let Err(e) = result {
            self.fail(e);
        }
        self.drive();
    }

    /// The earliest time a round may start or a follow-up fall back, when that is what the
    /// session waits for.
    fn repair_deadline(&self) -> Option<u64> {
        if self.phase != Phase::Established
            || !self.peer_confirmed
            || self.repair.in_round()
            || !self.is_idle()
        {
            return None;
        }
        let may_send = |c: &str| self.may_send(c);
        let view = RepairView::new(self.role, recv_view!(self), &self.tx, &self.rx, &may_send);
        self.repair.deadline(view)
    }

    /// Starts a repair round if the session is idle and one is wanted.
    fn maybe_start_round(&mut self) {
        if self.repair.in_round() || !self.is_idle() {
            return;
        }
        let (policy, peer, role) = (&self.policy, &self.peer.node, self.role);
        let may_send = |c: &str| sends(policy, peer, role, c);
        let view = RepairView::new(self.role, recv_view!(self), &self.tx, &self.rx, &may_send);
        self.repair.maybe_start_round(view, &mut self.out);
    }

    /// The peer's `DigestReply`.
    fn on_digest_reply(&mut self, r: DigestReply) {
        let (policy, peer, role) = (&self.policy, &self.peer.node, self.role);
        let may_send = |c: &str| sends(policy, peer, role, c);
        let view = RepairView::new(self.role, recv_view!(self), &self.tx, &self.rx, &may_send);
        let verdict = self
            .repair
            .on_digest_reply(view, &mut self.out, &mut self.peer_vvs, r);
        match verdict {
            Verdict::Nothing => {}
            Verdict::Restart(collection) => {
                if self.protocol >= 3 {
                    // The replier re-streams only when told (it waits for a descent).
                    self.out.control(
                        FullRepair {
                            collection: collection.clone(),
                        }
                        .into(),
                    );
                }
                self.start_tx_repair(&collection);
            }
            Verdict::Descend(collection) => self.tree.start_descent(&mut self.out, &collection),
        }
    }

    /// The driver's answer to [`Action::TreeDigests`]: the digests of the children at
    /// `level` of `parents`, [`FANOUT`](crate::tree::FANOUT) per parent in order. An answer of
    /// the wrong length closes the session ([`SyncError::Store`]).
    pub fn handle_tree_digests(
        &mut self,
        collection: &str,
        level: u8,
        parents: &[u32],
        digests: Vec<Digest>,
    ) {
        if self.phase == Phase::Closed {
            return;
        }
        if let Err(e) = self
            .tree
            .on_digests(&mut self.out, (collection, level), parents, digests)
        {
            self.fail(e);
        }
        self.drive();
    }

    /// The driver's answer to [`Action::LoadLeaves`]: the versions read and, when the read was
    /// cut short, the `(leaf, key)` to resume after. Versions the peer may not take from this
    /// node (collections it may not read, origins this node does not send, dots the peer is
    /// not known to hold) are left out here. An answer outside the Load's leaves or collection
    /// closes the session ([`SyncError::Store`]).
    pub fn handle_leaves_loaded(
        &mut self,
        collection: &str,
        versions: Vec<Version>,
        next: Option<(u32, String)>,
    ) {
        if self.phase == Phase::Closed {
            return;
        }
        let Some(leaves) = self.tree.loading_leaves(collection) else {
            return;
        };
        if let Some(v) = versions.iter().find(|v| {
            v.collection != collection
                || leaves.binary_search(&crate::tree::leaf_of(&v.key)).is_err()
        }) {
            let e = SyncError::Store(format!(
                "leaf load of {collection} returned {}/{}",
                clip(&v.collection),
                clip(&v.key)
            ));
            self.fail(e);
            return;
        }
        let may_send = self.may_send(collection);
        let peer = (self.peer.node.as_str(), self.rx.peer_replica());
        let held = self.peer_vvs.get(collection);
        let versions: Vec<Version> = versions
            .into_iter()
            .filter(|v| {
                may_send
                    && sends_origin(&self.cfg, peer, &v.dot.origin)
                    && held.is_some_and(|vv| vv.covers(&v.dot))
            })
            .collect();
        self.tree
            .on_loaded(&self.cfg, &mut self.out, collection, versions, next);
        self.drive();
    }

    /// Our vectors for the handshake: only of collections the peer may read or write, so a
    /// peer learns nothing (not even the name) of the others. What the peer streams to us
    /// starts from these ([`Session::advertised`]); it starts from 0 in the others.
    fn handshake_vvs(&self) -> BTreeMap<String, VersionVector> {
        self.local
            .iter()
            .filter(|(c, _)| {
                self.policy.may_read(&self.peer.node, c)
                    || self.policy.may_write(&self.peer.node, c)
            })
            .map(|(c, v)| (c.clone(), v.clone()))
            .collect()
    }

    /// Advertises our vectors as of now: what goes into `Hello` or `HelloAck`.
    fn advertise(&mut self) -> Vec<(String, VersionVector)> {
        self.advertised = self.handshake_vvs();
        self.advertised
            .iter()
            .map(|(c, v)| (c.clone(), v.clone()))
            .collect()
    }

    /// The dialer's `Hello`, still queued, carries the vectors the current policy lets the
    /// peer see (the driver gives the policy right after [`Session::new`]).
    fn refresh_hello(&mut self) {
        if self.phase != Phase::Handshake || self.role != Role::Dialer {
            return;
        }
        let vvs = self.advertise();
        if let Some(h) = self.out.queued_hello() {
            h.vvs = vvs;
        }
    }

    fn on_frame(&mut self, stream: StreamKind, msg: Message) -> Result<(), SyncError> {
        msg.validate(self.cfg.max_value_bytes)?;
        let m = msg.into_v2();
        if let MessageV2::Error(e) = &m {
            return Err(SyncError::Peer {
                code: e.code,
                detail: clip(&e.detail),
            });
        }
        let data = matches!(
            &m,
            MessageV2::Batch(_)
                | MessageV2::BatchComplete(_)
                | MessageV2::Complete(_)
                | MessageV2::Restart(_)
        );
        // Tree repair's versions go on the bulk stream only.
        let repair = matches!(&m, MessageV2::RepairBatch(_));
        let fits = match stream {
            StreamKind::Control => !data && !repair,
            StreamKind::Bulk => data || repair,
            // Only sessions of protocol 3 and up have an urgent stream.
            StreamKind::Urgent => data && self.protocol >= 3,
        };
        if !fits {
            return Err(SyncError::WrongStream {
                kind: m.kind(),
                stream: match stream {
                    StreamKind::Control => "control",
                    StreamKind::Bulk => "bulk",
                    StreamKind::Urgent => "urgent",
                },
            });
        }
        match self.phase {
            Phase::Closed => Ok(()),
            Phase::Handshake => match (self.role, m) {
                (Role::Acceptor, MessageV2::Hello(h)) => self.on_hello(h),
                (Role::Dialer, MessageV2::HelloAck(a)) => self.on_hello_ack(a),
                (Role::Dialer, MessageV2::HelloAckV2(a)) => self.on_hello_ack_v2(a),
                (_, m) => Err(SyncError::Unexpected {
                    kind: m.kind(),
                    when: "before the handshake completed",
                }),
            },
            Phase::Established => {
                self.peer_confirmed = true;
                if m.since() > self.protocol {
                    return Err(SyncError::Unexpected {
                        kind: m.kind(),
                        when: "in a session of an earlier protocol version",
                    });
                }
                match m {
                    MessageV2::Batch(b) => {
                        let view = recv_view!(self);
                        self.rx.on_batch(view, &mut self.out, &mut self.peer_vvs, b)
                    }
                    MessageV2::Complete(c) => {
                        let view = recv_view!(self);
                        self.rx
                            .on_complete(view, &mut self.out, &mut self.peer_vvs, c)
                    }
                    MessageV2::BatchComplete(bc) => {
                        // Exactly as the batch and then the completion.
                        let c = bc.complete();
                        let view = recv_view!(self);
                        self.rx
                            .on_batch(view, &mut self.out, &mut self.peer_vvs, bc.batch)?;
                        let view = recv_view!(self);
                        self.rx
                            .on_complete(view, &mut self.out, &mut self.peer_vvs, c)
                    }
                    MessageV2::Restart(r) => {
                        let view = recv_view!(self);
                        self.rx.on_restart(view, r)
                    }
                    MessageV2::Ack(a) => self.on_ack(a),
                    MessageV2::Heartbeat(h) => {
                        let interval = self.cfg.heartbeat_interval_ms;
                        if let Some(echo) =
                            self.hb.on_heartbeat(self.role, self.now, interval, h)?
                        {
                            self.out.control(MessageV2::Echo(echo).into());
                        }
                        Ok(())
                    }
                    MessageV2::Echo(h) => {
                        self.hb.on_echo(self.now, h);
                        Ok(())
                    }
                    MessageV2::DigestRequest(r) => {
                        self.repair
                            .on_digest_request(&mut self.out, &mut self.peer_vvs, r)
                    }
                    MessageV2::DigestReply(r) => {
                        self.on_digest_reply(r);
                        Ok(())
                    }
                    MessageV2::TreeRequest(r) => self.tree.on_request(&mut self.out, r),
                    MessageV2::TreeReply(r) => self.tree.on_reply(&mut self.out, r),
                    MessageV2::RepairBatch(b) => {
                        let (versions, key) = self.tree.on_batch(b)?;
                        let view = recv_view!(self);
                        let parts =
                            self.rx
                                .on_repair_versions(view, &mut self.out, &key.0, versions);
                        self.tree.applying(&mut self.out, &key, parts);
                        Ok(())
                    }
                    MessageV2::RepairApplied(r) => self.tree.on_peer_applied(r),
                    MessageV2::FullRepair(r) => {
                        self.tree.on_full_repair(&r.collection)?;
                        self.start_tx_repair(&r.collection);
                        Ok(())
                    }
                    MessageV2::DictionaryOffer(o) => {
                        self.dicts.on_offer(&mut self.out, o);
                        Ok(())
                    }
                    MessageV2::DictionaryReply(r) => self.dicts.on_reply(&mut self.out, r),
                    MessageV2::About(a) => {
                        // Once per session: a peer repeating it gets no more events (each
                        // would be a line in the log).
                        if !std::mem::replace(&mut self.peer_about, true) {
                            self.out.event(Event::PeerAbout {
                                release: clip(&a.release),
                            });
                        }
                        Ok(())
                    }
                    m @ (MessageV2::Hello(_)
                    | MessageV2::HelloAck(_)
                    | MessageV2::HelloAckV2(_)
                    | MessageV2::Error(_)) => Err(SyncError::Unexpected {
                        kind: m.kind(),
                        when: "after the handshake",
                    }),
                }
            }
        }
    }

    /// The acceptor checks the dialer's `Hello` and answers `HelloAck`.
    fn on_hello(&mut self, h: Hello) -> Result<(), SyncError> {
        (self.protocol, self.compression) = handshake::check_hello(&self.cfg, &self.peer, &h)?;
        self.rx.announce(h.replica);
        self.peer_vvs = h.vvs.into_iter().collect();
        let ack = HelloAck {
            protocol: self.protocol,
            accepted_compression: self.compression,
            vvs: self.advertise(),
        };
        if self.protocol >= 2 {
            // A dialer of version 2 also learns which incarnation of this node to accept.
            let v2 = HelloAckV2 {
                ack,
                replica: self.cfg.replica.clone(),
                cluster_id: self.cfg.cluster_id.clone(),
            };
            self.out.control(v2.into());
        } else {
            self.out.control(ack.into());
        }
        self.establish();
        Ok(())
    }

    /// The dialer checks the acceptor's `HelloAck`.
    fn on_hello_ack(&mut self, a: HelloAck) -> Result<(), SyncError> {
        handshake::check_hello_ack(&self.cfg, &a)?;
        self.protocol = a.protocol;
        self.compression = a.accepted_compression;
        self.peer_vvs = a.vvs.into_iter().collect();
        self.establish();
        // Tells the acceptor its HelloAck arrived, so its bulk frames may follow.
        self.send_probe();
        Ok(())
    }

    /// The dialer checks a version-2 `HelloAck`: the version agreed is 2 or later, the
    /// acceptor is of this cluster, and the incarnation it names is of the certificate's node;
    /// that incarnation is the only one of its node it may bring.
    fn on_hello_ack_v2(&mut self, a: HelloAckV2) -> Result<(), SyncError> {
        if a.ack.protocol < 2 {
            return Err(SyncError::UnsupportedVersion {
                ours: self.cfg.max_protocol,
                theirs: a.ack.protocol,
            });
        }
        if a.cluster_id != self.cfg.cluster_id {
            return Err(SyncError::WrongCluster {
                ours: self.cfg.cluster_id.clone(),
                theirs: clip(&a.cluster_id),
            });
        }
        if a.replica.node_name() != self.peer.node {
            return Err(SyncError::NodeMismatch {
                certificate: self.peer.node.clone(),
                hello: clip(a.replica.as_str()),
            });
        }
        self.rx.announce(a.replica);
        self.on_hello_ack(a.ack)
    }

    /// The handshake completed: start heartbeats, the sending loop and the repair timer.
    fn establish(&mut self) {
        self.phase = Phase::Established;
        self.hb.start(self.now, self.cfg.heartbeat_interval_ms);
        self.repair.start(self.now, self.cfg.repair_interval_ms);
        let collections: Vec<String> = self.local.keys().cloned().collect();
        for c in &collections {
            self.ready_all(c);
        }
        self.out.event(Event::Established {
            peer_replica: self.rx.peer_replica().cloned(),
            compression: self.compression,
            protocol: self.protocol,
        });
        if self.protocol >= 2 {
            let release = self.cfg.release.clone();
            self.out.control(About { release }.into());
        }
    }

    /// Sends a heartbeat probe.
    fn send_probe(&mut self) {
        let probe = self
            .hb
            .probe(self.role, self.now, self.cfg.heartbeat_interval_ms);
        self.out.control(probe.into());
    }

    /// Closes the session with `err`: drops everything queued, queues an `Error` frame (unless
    /// the peer closed first) and emits [`Event::Closed`].
    fn fail(&mut self, err: SyncError) {
        if self.phase == Phase::Closed {
            return;
        }
        let code = err.code();
        let mut reason = err.to_string();
        if reason.len() > MAX_ERROR_DETAIL_BYTES {
            let mut end = MAX_ERROR_DETAIL_BYTES;
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            reason.truncate(end);
        }
        self.out.drop_queued();
        self.tx.drop_load();
        if !matches!(err, SyncError::Peer { .. }) {
            self.out.control(
                ErrorFrame {
                    code,
                    detail: reason.clone(),
                }
                .into(),
            );
        }
        self.out.event(Event::Closed { code, reason });
        self.phase = Phase::Closed;
    }

    /// Moves the sending loop and the repair rounds forward after any input.
    fn drive(&mut self) {
        if self.phase != Phase::Established {
            return;
        }
        if self.protocol >= 3 && self.compression == Compression::Zstd {
            let (policy, peer, role) = (&self.policy, self.peer.node.as_str(), self.role);
            self.dicts
                .offer(&mut self.out, |c| sends(policy, peer, role, c));
        }
        if !self.peer_confirmed {
            return;
        }
        self.pump_loads();
        let room = !self.bulk_blocked && self.out.bulk_drained();
        self.tree.pump(&self.cfg, &mut self.out, room);
        for collection in self.tree.take_finished() {
            self.repair.tree_finished(&collection, self.now);
        }
        self.maybe_start_round();
    }

    /// Nothing in flight in either direction: no Load, no queued bulk frame, nothing left to
    /// send, no buffered batch, no Apply awaiting its answer.
    fn is_idle(&self) -> bool {
        self.tx_idle() && self.rx.is_idle()
    }
}

/// Whether a session of `role` sends `collection` to `peer` under `policy`: the peer may read
/// it, and `_status` goes up only (from the dialer).
fn sends(policy: &Policy, peer: &str, role: Role, collection: &str) -> bool {
    policy.may_read(peer, collection)
        && crate::status::sends_on_side(collection, role == Role::Dialer)
}
