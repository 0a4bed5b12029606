//! The per-connection sync session: a deterministic state machine with no sockets, no clock
//! and no randomness (the `quinn-proto` model).
//!
//! One [`Session`] runs per authenticated connection to a peer. The driver owns the QUIC
//! connection — one bidirectional **control** stream and one unidirectional **bulk** stream in
//! each direction — and the local replica. It feeds the session with `handle_*` calls (each
//! given what it needs, time included) and drains `poll_*` outputs after every call:
//!
//! * [`Session::poll_transmit`]: frames to write, tagged with their [`StreamKind`]. Control
//!   frames (handshake, acks, heartbeats, digests, errors) come out before bulk frames
//!   (batches, completions), so control never waits behind data.
//!   [`Session::poll_transmit_on`] drains one stream only, for a driver whose bulk stream is
//!   blocked by flow control; [`Session::handle_bulk_blocked`] tells the session so, and it
//!   issues no Load until the driver has room again.
//! * [`Session::poll_action`]: work for the local store ([`Action::Load`], [`Action::Apply`],
//!   [`Action::Digest`]). Actions **must be executed in the order they are polled** (one store
//!   writer), and the driver never reorders or merges them: the session already merges the
//!   streams completed back to back into one Apply (one commit). Each is answered with
//!   [`Session::handle_loaded`], [`Session::handle_applied`] (once per part) or
//!   [`Session::handle_local_digest`].
//! * [`Session::poll_event`]: what the driver reports or counts ([`Event`]).
//! * [`Session::poll_timeout`]: when to call [`Session::handle_timeout`].
//!
//! # Protocol
//!
//! **Handshake.** The [`Role::Dialer`] sends `Hello` at creation; the [`Role::Acceptor`]
//! checks it (protocol, cluster id, the node name against the certificate's, validity) and
//! answers `HelloAck`. A refusal, or anything else before the handshake completes, closes the
//! session with an `Error` frame. The dialer sends an immediate heartbeat when it receives
//! `HelloAck`; the acceptor starts sending data only after it has heard a frame from the
//! established dialer, so its bulk frames can never overtake the `HelloAck` (the two streams
//! are not ordered with each other).
//!
//! **Sending** (catch-up and live push are one loop). Per `(collection, origin)` the session
//! tracks `sent_through`, starting at the peer's handshake vector. While the local vector
//! (as given by [`Session::handle_local_vv`]: what this node may offer, i.e. what is durable)
//! is ahead of it — and of what the peer is known to hold — it asks the store for the next
//! chunk with [`Action::Load`]. At most one Load is in flight per session, and the next one is
//! only issued once the bulk queue has been drained by the driver: the driver's stream writes
//! give backpressure. A loaded chunk goes out as `Batch` frame(s) followed by `Complete`.
//!
//! **Urgent collections** ([`SessionConfig::urgent`], with `_nodes` when any is named) are
//! loaded before the others. From protocol 3 on they have their own lane: their frames come
//! out on [`StreamKind::Urgent`] (a second unidirectional stream, which the driver does not
//! throttle), and their Loads are issued whenever the urgent queue is drained, however full
//! the bulk stream is, so they overtake a bulk catch-up. Each `(collection, origin)` stream
//! stays on one lane, so the receiver's order checks hold on each. With a peer of protocol 2
//! they travel as bulk.
//! A node that is not a relay ([`SessionConfig::relay`]) only sends origins of its own node.
//!
//! **Receiving.** A `Batch` is accepted only for an origin of the peer's own node, or from a
//! relay ([`PeerIdentity::is_relay`]); otherwise it is dropped and counted
//! ([`Event::Rejected`]) and its `Complete` is ignored. A peer that is not a relay brings
//! only the incarnation it announced (the `Hello`'s replica id; for the dialer, the first one
//! the acceptor sends), and only while its node has fewer than [`MAX_INCARNATIONS_PER_NODE`];
//! a new origin needs room in its collection's vector and a new collection room in the store
//! ([`MAX_VECTOR_ENTRIES`](crate::wire::MAX_VECTOR_ENTRIES),
//! [`MAX_HANDSHAKE_COLLECTIONS`](crate::wire::MAX_HANDSHAKE_COLLECTIONS)). Batches must
//! continue where the last `Complete` of their `(collection, origin)` left off; on `Complete`
//! the buffered versions and the vector advance become one [`Action::Apply`], so a cut
//! anywhere resumes exactly (the next session starts from the store's vector). Once applied,
//! an `Ack` goes back.
//!
//! **Versions a hostile sender could abuse.** A version stamped more than
//! `max_clock_skew_ms` ahead of `now`, or whose causal context covers a dot (of another
//! origin than its own) beyond what this node holds — its offerable vectors, everything
//! applied since, and the vectors it told the peer in digest rounds — is refused: what came
//! before it is applied through the counter before it, and the rest of that stream is refused
//! for the session ([`Event::Rejected`]), without closing it or blaming the peer (a relay only
//! carries what an origin stamped). A context may only cover what its origin could have seen,
//! so a poisoned one can never make another origin's write vanish. The sender keeps this
//! honest traffic's rule: before a version whose context covers dots the peer is not known to
//! hold, it sends those (a relay) or waits until the peer has them (learned from its acks,
//! completions and digest rounds); it also holds versions stamped within a margin of the
//! peer's skew bound. A stream refused for skew closes the session once the clock would accept
//! it, so the reconnect brings it.
//!
//! **Access policy** ([`Session::handle_policy`], [`crate::policy`]). The session sends a
//! collection only while the peer's node may read it, and accepts a `(collection, origin)`
//! stream only while the origin's node may write it (`_policy` itself only from a relay and
//! of an admin). A refused stream stays refused for the rest of the session, its `Complete`
//! ignored, so the vector never advances past versions that were not applied. A policy change
//! that takes a collection away from the peer, or would now accept a refused stream, closes
//! the session (`NotAuthorized`) so that the next one starts clean; a grant of read access
//! starts streaming the collection's whole history at once.
//!
//! **Heartbeats.** Every `heartbeat_interval_ms` each side sends a probe `Heartbeat { now_ms,
//! seq }`. The dialer numbers its probes odd, the acceptor even; a heartbeat whose `seq` has
//! the peer's parity is a probe and is echoed back unchanged in `seq` (with the echoer's
//! `now_ms`), one with our parity is the echo of our probe and gives the round-trip time.
//! Nothing heard for `idle_timeout_ms` closes the session
//! ([`ErrorCode::Internal`](crate::wire::ErrorCode::Internal), reason
//! "idle timeout").
//!
//! **Repair.** Every `repair_interval_ms`, when the session is idle, the dialer picks one
//! collection (round-robin), asks the store for its digest ([`Action::Digest`]) and sends
//! `DigestRequest { digest, vv }`. The peer takes its own digest the same way and answers
//! `DigestReply { equal }`. When the vectors are equal but the digests differ, the log cannot
//! explain the difference: both sides emit [`Event::DigestMismatch`] and re-stream every live
//! version of the collection from counter 0 with `repair: true` Loads and Applies (the merge
//! rules make re-applying covered dots safe and idempotent). When the vectors differ the log
//! explains it and nothing is done. [`Session::request_verify`] runs a round now (on either
//! side) and reports it with one [`Event::Verified`]: `Equal`, `VectorsDiffer`, or — after a
//! repair and a follow-up round — `Repaired` or `StillDifferent`.
//!
//! The wire has no explicit "restart" marker, so a repair re-stream is recognisable by shape:
//! its first frame for each origin covers exactly counter 1 (a `Batch` starting at counter 1,
//! or `Complete { through: 1 }`), which a normal stream never sends once that origin is past
//! counter 1. Such a frame is accepted as a restart only in a collection for which a digest
//! round has been armed in this session (the requester arms when it sends its request, the
//! replier when it answers "different"), at most once per armed round.
//!
//! **Repair through the hash tree** (protocol 3, [`crate::tree`]). At equal vectors but
//! different digests neither side re-streams at first: the requester descends the tree with
//! [`Action::TreeDigests`] and `TreeRequest`/`TreeReply` (the replier answers only for a
//! collection it found different), level by level into the differing nodes only; at the
//! leaves both sides re-send the current versions of the differing leaves
//! ([`Action::LoadLeaves`], `RepairBatch`), applied with `repair: true` Applies whose parts
//! complete through 0 (every dot is one the vectors already cover: a version that is not is
//! refused, so a repair never moves a vector), and confirm with `RepairApplied`. The follow-up
//! round then reports `Repaired`, or `StillDifferent` and a full reconciliation
//! (`FullRepair`). A session of protocol 2 or 1 keeps the full reconciliation.
//!
//! **Compression dictionaries** (protocol 3, zstd sessions). The driver gives the session
//! this node's per-collection dictionaries ([`Session::handle_dictionaries`]); it offers each
//! to the peer (`DictionaryOffer`, control stream) for the collections the peer may read. The
//! peer holds at most [`MAX_DICTIONARY_COLLECTIONS`](crate::wire::MAX_DICTIONARY_COLLECTIONS)
//! collections' ([`MAX_HELD_PER_COLLECTION`] each, none dropped in the session, so no frame
//! primed with one is ever refused; later offers are declined), tells its driver to keep the
//! bytes ([`Event::DictionaryAccepted`]) and answers `DictionaryReply`; an accepting reply makes it
//! agreed ([`Event::DictionaryAgreed`]), and only then may the driver prime a zstd stream of
//! that collection's frames with it. A reply to an id never offered closes the session.
//!
//! Everything from the peer is validated ([`Message::validate`](crate::wire::Message::validate)
//! plus the session's own rules) and bounded; nothing panics on any input.

mod api;
mod config;
mod dictionary;
mod error;
mod handshake;
mod heartbeat;
mod outbox;
mod recv;
mod repair;
mod send;
mod session;
mod tree;

pub use api::{Action, ApplyPart, CollectionStatus, Event, SessionStatus, VerifyOutcome};
pub use config::{PeerIdentity, Role, SessionConfig, StreamKind};
pub use dictionary::{LocalDictionary, MAX_DICTIONARY_OFFERS, MAX_HELD_PER_COLLECTION};
pub use error::SyncError;
pub use session::Session;
pub use tree::MAX_ARMED_TREES;

#[cfg(test)]
mod tests;

/// Most versions (summed over all origins) buffered from unfinished batches.
pub const MAX_BUFFERED_VERSIONS: usize = 64 * 1024;

/// Most bytes (estimated) buffered from unfinished batches: two maximum-size frames.
pub const MAX_BUFFERED_BYTES: usize = 2 * crate::wire::MAX_FRAME_BYTES;

/// Most `(collection, origin)` streams a peer may make a session track.
pub const MAX_STREAMS: usize = 1 << 20;

/// Most incarnations (replica ids) of one node a node accepts from that node itself: a node
/// gets a new one each time its data dir is wiped or restored, so a node past this is either
/// misbehaving or must be cleaned up by an admin. Versions of further incarnations are refused.
pub const MAX_INCARNATIONS_PER_NODE: usize = 32;

/// Most digest requests from the peer awaiting an answer (a conforming peer has one).
pub const MAX_PENDING_DIGEST_REQUESTS: usize = 16;
