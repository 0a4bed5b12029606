//! The receiving side: the relay rule, which origins a peer may bring (announced incarnations,
//! bounded origins and collections), continuity of each `(collection, origin)` stream, the
//! checks of each version a hostile sender could abuse (clock skew, causal contexts covering
//! dots this node never saw), buffering batches until their `Complete`, and acknowledging what
//! the store applied.

use std::collections::BTreeMap;

use crate::dot::{ReplicaId, VersionVector};
use crate::policy::{Policy, POLICY_COLLECTION};
use crate::signing::{SignatureCheck, SignatureFault};
use crate::version::Version;
use crate::wire::{Batch, Complete, Restart, MAX_HANDSHAKE_COLLECTIONS, MAX_VECTOR_ENTRIES};

use super::api::{Action, ApplyPart};
use super::config::{PeerIdentity, SessionConfig};
use super::error::{clip, SyncError};
use super::outbox::Outbox;
use super::send::version_size;
use super::{MAX_BUFFERED_BYTES, MAX_BUFFERED_VERSIONS, MAX_INCARNATIONS_PER_NODE, MAX_STREAMS};

/// Most streams merged into one Apply (one store commit).
const MAX_MERGED_PARTS: usize = 64;

/// Most collections a peer may make a session track on the receiving side.
const MAX_COLLECTIONS: usize = 1 << 16;

/// The receiving state of a session.
#[derive(Debug, Default)]
pub(super) struct Rx {
    collections: BTreeMap<String, RxCollection>,
    streams: usize,
    buffered_versions: usize,
    buffered_bytes: usize,
    /// Applies emitted and not yet answered.
    applying: usize,
    /// What this node holds beyond its offerable vectors, as far as the session knows: raised
    /// by every Apply emitted (actions run in order, so it is applied before anything later)
    /// and by the vectors the driver reports after each Apply.
    known: BTreeMap<String, VersionVector>,
    /// For a peer that is not a relay: whether its announced incarnation may bring versions
    /// (decided once, at its first frame: see [`MAX_INCARNATIONS_PER_NODE`]).
    peer_origin_ok: Option<bool>,
    /// The earliest time a stream refused for clock skew would be accepted.
    skew_retry_at: Option<u64>,
    /// The incarnation the peer announced (the `Hello`'s; for the dialer, the first one the
    /// acceptor sends).
    announced: Option<ReplicaId>,
    /// The signature checker's generation at the last look for refusals to retry: only a
    /// newer one can make any due (a look walks every stream, one per origin).
    signer_generation_seen: u64,
}

/// Why a receive stream is refused for the rest of the session. Everything after the refused
/// version is refused too, so the vector never advances past a version that was not applied:
/// the next session resumes just before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// The access policy: the origin's node may not write the collection.
    Policy,
    /// A version stamped more than `max_clock_skew_ms` ahead of this node's clock.
    ClockSkew,
    /// A version whose causal context covers dots this node does not hold.
    Context,
    /// A version whose origin signature was refused; with the checker's generation then (an
    /// unknown signer is worth another try once the checker has learnt a certificate).
    Signature(SignatureFault, u64),
}

impl Refusal {
    /// Why the versions of `origin` in `collection` from `peer_node` are refused.
    fn reason(self, collection: &str, origin: &ReplicaId, peer_node: &str) -> String {
        match self {
            Refusal::Policy => format!(
                "policy: {} may not write {}: refused versions from {}",
                origin.node_name(),
                collection,
                peer_node
            ),
            Refusal::ClockSkew => format!(
                "versions of {} after one stamped ahead of the local clock wait for the \
             next session",
                origin
            ),
            Refusal::Context => format!(
                "versions of {} after one with a causal context beyond what this node \
             holds are refused",
                origin
            ),
            Refusal::Signature(fault, _) => format!(
                "{}: versions of {} after one whose signature was refused wait for the next \
                 session",
                fault.label(),
                origin
            ),
        }
    }
}

/// The receiving state of one collection.
#[derive(Debug, Default)]
struct RxCollection {
    streams: BTreeMap<ReplicaId, InStream>,
    /// Digest rounds armed for this collection: each allows one repair restart per origin.
    arms: u64,
}

/// What has been received of one origin in one collection.
#[derive(Debug, Default)]
struct InStream {
    /// The last `Complete` (initially our handshake vector): batches continue above it.
    completed: u64,
    buffer: Vec<Version>,
    buffer_bytes: usize,
    /// Restarts accepted so far (each consumes one arm).
    restarts: u64,
    /// The collection's arm count at the last restart.
    last_restart_arm: u64,
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
    /// of a repair re-stream: it covers counter 1 and a round is armed. Only protocol 1
    /// infers restarts; from protocol 2 on the sender announces them ([`Restart`]).
    fn may_restart(&self, first: u64, arms: u64, protocol: u16) -> bool {
        protocol < 2 && first == 1 && self.completed >= 1 && self.restarts < arms
    }

    /// A batch of counters `first..=last` continues this stream: after what is buffered, or
    /// after the last `Complete` (or as the restart of a repair re-stream, with `arms` armed).
    fn continue_with(
        &mut self,
        collection: &str,
        origin: &ReplicaId,
        (first, last): (u64, u64),
        arms: u64,
        protocol: u16,
    ) -> Result<(), SyncError> {
        if let Some(prev) = self.buffer.last() {
            if first <= prev.dot.counter {
                return Err(out_of_order(
                    collection,
                    origin,
                    format!("batch starts at {first} after {}", prev.dot.counter),
                ));
            }
        } else if first <= self.completed {
            if !self.may_restart(first, arms, protocol) {
                return Err(out_of_order(
                    collection,
                    origin,
                    format!(
                        "batch {first}..={last} at or below completion through {}",
                        self.completed
                    ),
                ));
            }
            self.restart(arms);
        } else if self.completed == 0 && self.restarts < arms {
            self.repairing = true; // a re-stream that needs no visible restart
        }
        Ok(())
    }
}

/// What the receiving side reads of the rest of the session.
#[derive(Clone, Copy)]
pub(super) struct RecvView<'a> {
    cfg: &'a SessionConfig,
    now: u64,
    peer: &'a PeerIdentity,
    policy: &'a Policy,
    /// Our offerable vectors.
    local: &'a BTreeMap<String, VersionVector>,
    /// Our vectors as sent in the handshake: where the peer's streams start.
    advertised: &'a BTreeMap<String, VersionVector>,
    /// Checks origin signatures (none: versions are taken unsigned, as in protocol tests).
    signatures: Option<&'a dyn SignatureCheck>,
    /// The session's protocol version: from 2 on, a repair restart is announced
    /// ([`Restart`]), never inferred.
    protocol: u16,
}

/// The [`RecvView`] of a session, borrowing only the fields it reads.
macro_rules! recv_view {
    ($s:ident) => {
        super::recv::RecvView::new(
            &$s.cfg,
            $s.now,
            &$s.peer,
            &$s.policy,
            &$s.local,
            &$s.advertised,
            $s.signatures.as_deref(),
            $s.protocol,
        )
    };
}
pub(super) use recv_view;

impl<'a> RecvView<'a> {
    /// The view of a session with these parts (one argument per part the view borrows).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        cfg: &'a SessionConfig,
        now: u64,
        peer: &'a PeerIdentity,
        policy: &'a Policy,
        local: &'a BTreeMap<String, VersionVector>,
        advertised: &'a BTreeMap<String, VersionVector>,
        signatures: Option<&'a dyn SignatureCheck>,
        protocol: u16,
    ) -> Self {
        Self {
            cfg,
            now,
            peer,
            policy,
            local,
            advertised,
            signatures,
            protocol,
        }
    }

    /// The session's configuration.
    pub(super) fn cfg(&self) -> &'a SessionConfig {
        self.cfg
    }

    /// The session's time.
    pub(super) fn now(&self) -> u64 {
        self.now
    }

    /// Our offerable vectors.
    pub(super) fn local(&self) -> &'a BTreeMap<String, VersionVector> {
        self.local
    }

    /// The session's protocol version.
    pub(super) fn protocol(&self) -> u16 {
        self.protocol
    }

    /// Our vector of `collection` as sent in the handshake.
    pub(super) fn advertised(&self, collection: &str) -> Option<&'a VersionVector> {
        self.advertised.get(collection)
    }

    /// The relay rule: versions of `origin` are accepted from this peer (a relay, the peer's
    /// own node, or a past incarnation of this node that the peer sends back after a restore).
    pub(super) fn accepts_origin(&self, origin: &ReplicaId) -> bool {
        self.peer.is_relay || origin.node_name() == self.peer.node || self.own_past(origin)
    }

    /// `origin` is one of this node's earlier incarnations, as it knows them (never the
    /// current one: only this node issues its dots).
    pub(super) fn own_past(&self, origin: &ReplicaId) -> bool {
        *origin != self.cfg.replica && self.cfg.past_replicas.contains(origin)
    }

    /// The access policy: versions of `origin` may be accepted in `collection`. Only a relay
    /// (an admin with an admin certificate) may bring `_policy` versions, and only of admins.
    fn accepts_write(&self, collection: &str, origin: &ReplicaId) -> bool {
        self.policy.may_write(origin.node_name(), collection)
            && (collection != POLICY_COLLECTION || self.peer.is_relay)
    }
}

impl Rx {
    /// The peer announced incarnation `replica` (its `Hello`).
    pub(super) fn announce(&mut self, replica: ReplicaId) {
        self.announced = Some(replica);
    }

    /// The incarnation the peer announced or first brought, if known.
    pub(super) fn peer_replica(&self) -> Option<&ReplicaId> {
        self.announced.as_ref()
    }

    /// Applies emitted and not yet answered.
    pub(super) fn applying(&self) -> usize {
        self.applying
    }

    /// No batch is buffered and no Apply awaits its answer.
    pub(super) fn is_idle(&self) -> bool {
        self.applying == 0 && self.buffered_versions == 0
    }

    /// The driver answered one part of an Apply.
    pub(super) fn applied(&mut self) {
        self.applying = self.applying.saturating_sub(1);
    }

    /// The last `Complete` of `origin` in `collection` and the arm count at its last restart,
    /// when it has a stream.
    pub(super) fn progress(&self, collection: &str, origin: &ReplicaId) -> Option<(u64, u64)> {
        let s = self.collections.get(collection)?.streams.get(origin)?;
        Some((s.completed, s.last_restart_arm))
    }

    /// The counter of `origin` this node holds in `collection`, as far as the session knows.
    fn holds(&self, view: RecvView<'_>, collection: &str, origin: &ReplicaId) -> u64 {
        let offerable = view.local.get(collection).map_or(0, |vv| vv.get(origin));
        let known = self.known.get(collection).map_or(0, |vv| vv.get(origin));
        offerable.max(known)
    }

    /// Why versions of `origin` in `collection` are refused before anything else is looked
    /// at, if they are: a peer that is not a relay brings only the incarnation it announced
    /// (its `Hello`'s, or for the dialer the first one it sends), and only while its node has
    /// fewer than [`MAX_INCARNATIONS_PER_NODE`]; a new origin needs room in the collection's
    /// vector ([`MAX_VECTOR_ENTRIES`]) and a new collection room in the store
    /// ([`MAX_HANDSHAKE_COLLECTIONS`]). Each rule only ever tightens within a session, so a
    /// refused origin stays refused and no gap opens.
    fn origin_refusal(
        &mut self,
        view: RecvView<'_>,
        collection: &str,
        origin: &ReplicaId,
    ) -> Option<String> {
        if !view.peer.is_relay && !view.own_past(origin) {
            let announced = self.announced.get_or_insert_with(|| origin.clone());
            if origin != announced {
                return Some(format!(
                    "incarnation: {origin} is not the incarnation {announced} that {} announced",
                    view.peer.node
                ));
            }
            if !*self
                .peer_origin_ok
                .get_or_insert_with(|| incarnations_ok(view.local, origin))
            {
                return Some(format!(
                    "incarnation: {} already has {MAX_INCARNATIONS_PER_NODE} incarnations; \
                     refused versions of {origin}",
                    view.peer.node
                ));
            }
        }
        if self.holds(view, collection, origin) > 0 {
            return None;
        }
        match view.local.get(collection) {
            None if view.local.len() >= MAX_HANDSHAKE_COLLECTIONS => Some(format!(
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
        self.known
            .entry(collection.to_owned())
            .or_default()
            .merge(vv);
    }

    /// The first version of `b` this node may not take, with why: one stamped beyond the clock
    /// skew bound, or one whose causal context covers dots this node does not hold (a context
    /// may only cover what its origin could have seen; an honest sender sends what a context
    /// covers first). Its own origin's entry is below its counter (checked by validation).
    fn first_unacceptable(
        &self,
        view: RecvView<'_>,
        b: &Batch,
    ) -> Option<(usize, Refusal, String)> {
        let bound = view.now.saturating_add(view.cfg.max_clock_skew_ms);
        let signed = view.signatures.and_then(|check| {
            check.first_bad(&b.versions).map(|r| {
                let refusal = Refusal::Signature(r.fault, check.generation());
                (
                    r.index,
                    refusal,
                    format!("{}: {}", r.fault.label(), r.detail),
                )
            })
        });
        // This node's own past versions, sent back by a peer that is not a relay, must carry
        // this node's signature: nobody else may add to what this node wrote.
        let signed = match view.signatures {
            Some(check) if !view.peer.is_relay && view.own_past(&b.origin) => b
                .versions
                .iter()
                .position(|v| v.signature.is_none())
                .filter(|i| signed.as_ref().is_none_or(|(j, _, _)| i < j))
                .map(|i| {
                    let refusal = Refusal::Signature(SignatureFault::Unsigned, check.generation());
                    let why = format!(
                        "version {} of this node's earlier incarnation carries no signature",
                        b.versions[i].dot
                    );
                    (
                        i,
                        refusal,
                        format!("{}: {why}", SignatureFault::Unsigned.label()),
                    )
                })
                .or(signed),
            _ => signed,
        };
        let limit = signed.as_ref().map_or(b.versions.len(), |(i, _, _)| *i);
        let other = b.versions[..limit].iter().enumerate().find_map(|(i, v)| {
            if v.hlc.ms > bound {
                return Some((
                    i,
                    Refusal::ClockSkew,
                    format!(
                        "version {} is stamped {} ms ahead of the local clock (at most {} ms \
                         allowed); its stream waits",
                        v.dot,
                        v.hlc.ms - view.now,
                        view.cfg.max_clock_skew_ms
                    ),
                ));
            }
            v.context
                .iter()
                .filter(|(o, _)| **o != v.dot.origin)
                .find(|(o, n)| *n > self.holds(view, &b.collection, o))
                .map(|(o, n)| {
                    (
                        i,
                        Refusal::Context,
                        format!(
                            "causal context of {} covers {o}:{n}, beyond the {} this node holds",
                            v.dot,
                            self.holds(view, &b.collection, o)
                        ),
                    )
                })
        });
        other.or(signed)
    }

    /// A stream refused for clock skew waits for the next session: true (once) when this
    /// node's clock, at `now`, would accept the refused version, so the session should close
    /// and the reconnect bring it.
    pub(super) fn skew_retry_due(&mut self, now: u64) -> bool {
        if self.skew_retry_at.is_some_and(|t| now >= t) {
            self.skew_retry_at = None;
            return true;
        }
        false
    }

    /// When [`Rx::skew_retry_due`] turns true.
    pub(super) fn skew_retry_at(&self) -> Option<u64> {
        self.skew_retry_at
    }

    /// Some stream refused earlier in this session would be accepted under the current policy.
    pub(super) fn refused_now_allowed(&self, view: RecvView<'_>) -> bool {
        self.collections.iter().any(|(c, col)| {
            col.streams
                .iter()
                .any(|(o, s)| s.refused == Some(Refusal::Policy) && view.accepts_write(c, o))
        })
    }

    /// A stream refused for an unknown signer may go on: the signature checker has learnt a
    /// certificate since. True once per refusal (the session then reconnects).
    pub(super) fn signer_retry_due(&mut self, view: RecvView<'_>) -> bool {
        let Some(generation) = view.signatures.map(|c| c.generation()) else {
            return false;
        };
        if generation == self.signer_generation_seen {
            return false;
        }
        self.signer_generation_seen = generation;
        let mut due = false;
        for col in self.collections.values_mut() {
            for s in col.streams.values_mut() {
                if let Some(Refusal::Signature(SignatureFault::UnknownSigner, at)) = s.refused {
                    if generation > at {
                        s.refused =
                            Some(Refusal::Signature(SignatureFault::UnknownSigner, u64::MAX));
                        due = true;
                    }
                }
            }
        }
        due
    }

    /// Arms `collection` for one repair restart per origin; returns the new arm count.
    pub(super) fn arm(&mut self, collection: &str) -> Result<u64, SyncError> {
        let col = self.collection(collection)?;
        col.arms += 1;
        Ok(col.arms)
    }

    /// The last `Complete` received for every origin of `collection` that has a stream.
    pub(super) fn completed(&self, collection: &str) -> BTreeMap<ReplicaId, u64> {
        self.collections
            .get(collection)
            .map(|c| {
                c.streams
                    .iter()
                    .map(|(o, s)| (o.clone(), s.completed))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A `Batch` from the peer: refused (counted) or buffered; a refused version completes
    /// what came before it.
    pub(super) fn on_batch(
        &mut self,
        view: RecvView<'_>,
        out: &mut Outbox,
        peer_vvs: &mut BTreeMap<String, VersionVector>,
        b: Batch,
    ) -> Result<(), SyncError> {
        let n = b.versions.len() as u64;
        out.count_received(n);
        if !view.accepts_origin(&b.origin) {
            out.reject(
                format!(
                    "{} is not a relay: refused versions of {} in {}",
                    view.peer.node, b.origin, b.collection
                ),
                n,
            );
            return Ok(());
        }
        if let Some(reason) = self.origin_refusal(view, &b.collection, &b.origin) {
            out.reject(reason, n);
            return Ok(());
        }
        if !view.accepts_write(&b.collection, &b.origin) {
            let (stream, _) = self.stream(view, &b.collection, &b.origin)?;
            stream.refused.get_or_insert(Refusal::Policy);
        }
        let refused = self
            .collections
            .get(&b.collection)
            .and_then(|c| c.streams.get(&b.origin))
            .and_then(|s| s.refused);
        if let Some(refusal) = refused {
            let reason = refusal.reason(&b.collection, &b.origin, &view.peer.node);
            out.reject(reason, n);
            return Ok(());
        }
        let (Some(first), Some(last)) = (b.versions.first(), b.versions.last()) else {
            return Ok(()); // validation refuses empty batches
        };
        let (first, last) = (first.dot.counter, last.dot.counter);
        let size: usize = b.versions.iter().map(version_size).sum();
        if self.buffered_versions + b.versions.len() > MAX_BUFFERED_VERSIONS
            || self.buffered_bytes + size > MAX_BUFFERED_BYTES
        {
            return Err(SyncError::LimitExceeded(
                "versions buffered before their Complete",
            ));
        }
        let cut = self.first_unacceptable(view, &b);
        let Batch {
            collection,
            origin,
            mut versions,
        } = b;
        let (stream, arms) = self.stream(view, &collection, &origin)?;
        stream.continue_with(&collection, &origin, (first, last), arms, view.protocol)?;
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
        self.buffered_versions += kept_versions;
        self.buffered_bytes += kept;
        if let Some((tail, refusal, reason)) = refused {
            // What comes before the refused version is complete: apply it now, and refuse the
            // rest of the stream for this session (the next one resumes at the refused version).
            let through = tail.first().map_or(0, |v| v.dot.counter - 1);
            if has_buffer || through > completed {
                self.finish_stream(out, peer_vvs, collection, origin, through.max(completed));
            }
            if refusal == Refusal::ClockSkew {
                let at = tail
                    .first()
                    .map_or(0, |v| v.hlc.ms.saturating_sub(view.cfg.max_clock_skew_ms));
                self.skew_retry_at = Some(self.skew_retry_at.map_or(at, |t| t.min(at)));
            }
            out.reject(reason, tail.len() as u64);
        }
        Ok(())
    }

    /// Versions the peer re-sent for a leaf repair (protocol 3, already checked to lie in the
    /// agreed leaves): each one this node may take becomes part of a repair Apply, one per
    /// origin, that never moves a vector; the others are dropped and counted. Returns how many
    /// Applies were emitted.
    pub(super) fn on_repair_versions(
        &mut self,
        view: RecvView<'_>,
        out: &mut Outbox,
        collection: &str,
        versions: Vec<Version>,
    ) -> usize {
        out.count_received(versions.len() as u64);
        let mut parts: BTreeMap<ReplicaId, Vec<Version>> = BTreeMap::new();
        let mut refused: Option<(String, u64)> = None;
        for v in versions {
            match self.repair_refusal(view, collection, &v) {
                None => parts.entry(v.dot.origin.clone()).or_default().push(v),
                Some(why) => {
                    let r = refused.get_or_insert((why, 0));
                    r.1 += 1;
                }
            }
        }
        if let Some((why, n)) = refused {
            out.reject(why, n);
        }
        let emitted = parts.len();
        for (origin, versions) in parts {
            self.applying += 1;
            out.action(Action::Apply {
                parts: vec![ApplyPart {
                    collection: collection.to_owned(),
                    origin,
                    versions,
                    through: 0,
                }],
                repair: true,
            });
        }
        emitted
    }

    /// Why a version re-sent for a leaf repair may not be taken, if it may not: the rules of
    /// a stream's versions (the relay rule and announced incarnation, the access policy, the
    /// clock skew bound, a causal context within what this node holds, the origin's
    /// signature) and one of its own: its dot must be one this node's vector already covers,
    /// so a repair never moves a vector nor skips ahead of an origin's stream.
    fn repair_refusal(&self, view: RecvView<'_>, collection: &str, v: &Version) -> Option<String> {
        let origin = &v.dot.origin;
        if !view.accepts_origin(origin) {
            return Some(format!(
                "{} is not a relay: refused repair versions of {origin} in {collection}",
                view.peer.node
            ));
        }
        if !view.peer.is_relay && !view.own_past(origin) && self.announced.as_ref() != Some(origin)
        {
            return Some(format!(
                "incarnation: repair versions of {origin} are not of the incarnation {} announced",
                view.peer.node
            ));
        }
        if !view.accepts_write(collection, origin) {
            return Some(format!(
                "policy: {} may not write {collection}: refused repair versions",
                origin.node_name()
            ));
        }
        if v.dot.counter > self.holds(view, collection, origin) {
            return Some(format!(
                "repair version {} is beyond this node's vector (it comes with the stream)",
                v.dot
            ));
        }
        if v.hlc.ms > view.now.saturating_add(view.cfg.max_clock_skew_ms) {
            return Some(format!(
                "repair version {} is stamped ahead of the local clock",
                v.dot
            ));
        }
        if let Some((o, n)) = v
            .context
            .iter()
            .filter(|(o, _)| **o != *origin)
            .find(|(o, n)| *n > self.holds(view, collection, o))
        {
            return Some(format!(
                "causal context of repair version {} covers {o}:{n}, beyond what this node holds",
                v.dot
            ));
        }
        if let Some(check) = view.signatures {
            if let Some(bad) = check.first_bad(std::slice::from_ref(v)) {
                return Some(format!("{}: {}", bad.fault.label(), bad.detail));
            }
            if !view.peer.is_relay && view.own_past(origin) && v.signature.is_none() {
                return Some(format!(
                    "{}: repair version {} of this node's earlier incarnation carries no signature",
                    SignatureFault::Unsigned.label(),
                    v.dot
                ));
            }
        }
        None
    }

    /// A `Restart` from the peer (protocol 2): its stream of `(collection, origin)` starts
    /// again from counter 1 for a repair, which a digest round must have armed.
    pub(super) fn on_restart(&mut self, view: RecvView<'_>, r: Restart) -> Result<(), SyncError> {
        if !view.accepts_origin(&r.origin)
            || self
                .origin_refusal(view, &r.collection, &r.origin)
                .is_some()
        {
            return Ok(()); // its batches are refused anyway
        }
        let (stream, arms) = self.stream(view, &r.collection, &r.origin)?;
        if !stream.buffer.is_empty() {
            return Err(out_of_order(
                &r.collection,
                &r.origin,
                "restart before the buffered batches were completed".to_owned(),
            ));
        }
        if stream.restarts >= arms {
            return Err(out_of_order(
                &r.collection,
                &r.origin,
                "restart without a digest round that calls for it".to_owned(),
            ));
        }
        stream.restart(arms);
        Ok(())
    }

    /// A `Complete` from the peer: the stream's buffered versions become an Apply.
    pub(super) fn on_complete(
        &mut self,
        view: RecvView<'_>,
        out: &mut Outbox,
        peer_vvs: &mut BTreeMap<String, VersionVector>,
        c: Complete,
    ) -> Result<(), SyncError> {
        if !view.accepts_origin(&c.origin) {
            return Ok(()); // its batches were refused by the relay rule
        }
        // A completion with no batch before it is legitimate (every version it covers was
        // superseded at the sender, and contexts may cover them), so it may raise the vector
        // only for an origin the peer may bring: its own announced incarnation, or anything
        // from a relay, within the limits on origins and collections.
        if self
            .origin_refusal(view, &c.collection, &c.origin)
            .is_some()
        {
            return Ok(()); // its batches are refused
        }
        let (stream, arms) = self.stream(view, &c.collection, &c.origin)?;
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
                if stream.may_restart(c.through, arms, view.protocol) {
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
        self.finish_stream(out, peer_vvs, c.collection, c.origin, c.through);
        Ok(())
    }

    /// Queues `part`: merged into the ordinary Apply at the end of the action queue when there
    /// is one (so streams completed back to back cost the store one commit and one flush), up
    /// to [`MAX_MERGED_PARTS`] parts; a repair part gets an Apply of its own.
    fn push_apply(out: &mut Outbox, part: ApplyPart, repair: bool) {
        if !repair {
            if let Some(Action::Apply {
                parts,
                repair: false,
            }) = out.last_action()
            {
                if parts.len() < MAX_MERGED_PARTS {
                    parts.push(part);
                    return;
                }
            }
        }
        out.action(Action::Apply {
            parts: vec![part],
            repair,
        });
    }

    /// Emits the Apply of a stream's buffered versions with its vector advance to `through`.
    fn finish_stream(
        &mut self,
        out: &mut Outbox,
        peer_vvs: &mut BTreeMap<String, VersionVector>,
        collection: String,
        origin: ReplicaId,
        through: u64,
    ) {
        let Some(stream) = self
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
        self.buffered_versions = self.buffered_versions.saturating_sub(versions.len());
        self.buffered_bytes = self.buffered_bytes.saturating_sub(bytes);
        self.applying += 1;
        peer_vvs
            .entry(collection.clone())
            .or_default()
            .raise(&origin, through);
        self.known
            .entry(collection.clone())
            .or_default()
            .raise(&origin, through);
        Self::push_apply(
            out,
            ApplyPart {
                collection,
                origin,
                versions,
                through,
            },
            repair,
        );
    }

    fn collection(&mut self, collection: &str) -> Result<&mut RxCollection, SyncError> {
        if !self.collections.contains_key(collection) {
            if self.collections.len() >= MAX_COLLECTIONS {
                return Err(SyncError::LimitExceeded("collections"));
            }
            self.collections
                .insert(collection.to_owned(), RxCollection::default());
        }
        self.collections
            .get_mut(collection)
            .ok_or(SyncError::LimitExceeded("collections"))
    }

    /// The stream of `(collection, origin)` (created at our handshake vector) and the
    /// collection's arm count.
    fn stream(
        &mut self,
        view: RecvView<'_>,
        collection: &str,
        origin: &ReplicaId,
    ) -> Result<(&mut InStream, u64), SyncError> {
        let base = view
            .advertised
            .get(collection)
            .map_or(0, |vv| vv.get(origin));
        let full = self.streams >= MAX_STREAMS;
        let col = self.collection(collection)?;
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
            self.streams += 1;
        }
        let stream = self
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;
    use crate::signing::SignatureRefusal;

    /// A checker whose generation the test moves.
    #[derive(Debug, Default)]
    struct Learning(AtomicU64);

    impl SignatureCheck for Learning {
        fn first_bad(&self, _: &[Version]) -> Option<SignatureRefusal> {
            None
        }
        fn generation(&self) -> u64 {
            self.0.load(Ordering::Relaxed)
        }
    }

    #[test]
    fn a_refusal_for_an_unknown_signer_is_retried_once_a_certificate_is_learnt() {
        let origin = ReplicaId::new("wuhu", 1).expect("id");
        let cfg = SessionConfig::new("hefei", ReplicaId::new("hefei", 1).expect("id"), "c");
        let peer = PeerIdentity {
            node: "hub".into(),
            is_relay: true,
        };
        let policy = Policy::default();
        let (local, advertised) = (BTreeMap::new(), BTreeMap::new());
        let check = Learning::default();
        let view = || {
            RecvView::new(
                &cfg,
                0,
                &peer,
                &policy,
                &local,
                &advertised,
                Some(&check),
                3,
            )
        };
        let mut rx = Rx::default();
        let refuse = |rx: &mut Rx, at: u64| {
            let col = rx.collection("situation").expect("collection");
            col.streams.entry(origin.clone()).or_default().refused =
                Some(Refusal::Signature(SignatureFault::UnknownSigner, at));
        };
        refuse(&mut rx, 0);
        assert!(!rx.signer_retry_due(view()), "nothing learnt yet");
        check.0.store(1, Ordering::Relaxed);
        assert!(rx.signer_retry_due(view()), "a certificate was learnt");
        assert!(!rx.signer_retry_due(view()), "once per refusal");
        // Refused again at generation 1: due only when the checker learns more.
        refuse(&mut rx, 1);
        assert!(!rx.signer_retry_due(view()));
        assert!(!rx.signer_retry_due(view()));
        check.0.store(2, Ordering::Relaxed);
        assert!(rx.signer_retry_due(view()));
    }
}
