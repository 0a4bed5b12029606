//! The messages of the sync protocol, versioned from day one: [`Message`] has one variant per
//! protocol version, and each version's messages are a closed enum.
//!
//! The bincode layout is the protocol: enum variants are encoded by position, so variants and
//! fields are never reordered or removed. A change of layout is a new protocol version
//! (`Message::V2`, appended), not an edit of `MessageV1`: version 2 changed the batch (its
//! versions carry an author and a signature) and added [`About`]. Version 3 only adds
//! messages (appended to `MessageV2`, sent only in sessions that agreed version 3): the
//! hash-tree repair's [`TreeRequest`], [`TreeReply`], [`RepairBatch`], [`RepairApplied`] and
//! [`FullRepair`]; the compression dictionaries' [`DictionaryOffer`] and
//! [`DictionaryReply`]; and [`BatchComplete`], a batch with its completion in one frame.

use bincode::{Decode, Encode};

use crate::digest::Digest;
use crate::dot::{ReplicaId, VersionVector};
use crate::version::Version;

use super::dictionary::{DictionaryOffer, DictionaryReply};
use super::error::ErrorCode;
use super::v1::BatchV1;

/// A message of some protocol version: the payload of every frame.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum Message {
    /// Protocol version 1.
    V1(MessageV1),
    /// Protocol version 2 ([`PROTOCOL_VERSION`](super::PROTOCOL_VERSION)).
    V2(MessageV2),
}

/// The messages of protocol version 1.
///
/// The handshake ([`Hello`], [`HelloAck`]), acknowledgements, heartbeats, digests and errors
/// travel on the control stream; batches and completions travel on bulk streams, so control
/// traffic never waits behind data. The handshake always travels as version 1, whatever the
/// session then speaks, so that nodes of either version can negotiate.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum MessageV1 {
    /// Opens a session (sent by the dialing node).
    Hello(Hello),
    /// Accepts a session (sent by the accepting node).
    HelloAck(HelloAck),
    /// Versions of one origin in one collection, without authors or signatures.
    Batch(BatchV1),
    /// The sender has sent everything of an origin through a counter.
    Complete(Complete),
    /// The receiver has durably applied an origin through a counter.
    Ack(Ack),
    /// Liveness and round-trip probe.
    Heartbeat(Heartbeat),
    /// Asks the peer to compare a collection digest.
    DigestRequest(DigestRequest),
    /// Answers a [`DigestRequest`].
    DigestReply(DigestReply),
    /// Reports why the sender is about to close the stream or connection.
    Error(ErrorFrame),
}

/// The messages of protocol version 2: version 1's, with batches whose versions carry their
/// author and their origin's signature, and [`About`]. The session works with these; a
/// version-1 session converts at the edge ([`Message::into_v2`], [`MessageV2::at`]).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum MessageV2 {
    /// Opens a session (always sent as version 1).
    Hello(Hello),
    /// Accepts a session (always sent as version 1).
    HelloAck(HelloAck),
    /// Versions of one origin in one collection.
    Batch(Batch),
    /// The sender has sent everything of an origin through a counter.
    Complete(Complete),
    /// The receiver has durably applied an origin through a counter.
    Ack(Ack),
    /// Liveness and round-trip probe.
    Heartbeat(Heartbeat),
    /// Asks the peer to compare a collection digest.
    DigestRequest(DigestRequest),
    /// Answers a [`DigestRequest`].
    DigestReply(DigestReply),
    /// Reports why the sender is about to close the stream or connection.
    Error(ErrorFrame),
    /// What the sender runs (its release), sent once a version-2 session is established.
    About(About),
    /// The acceptor's answer to a dialer that offered version 2 or later: the `HelloAck` with
    /// the acceptor's replica id and cluster id.
    HelloAckV2(HelloAckV2),
    /// The echo of a peer's heartbeat probe (version 1 tells them apart by `seq` parity).
    Echo(Heartbeat),
    /// On the bulk stream: the sender re-streams this `(collection, origin)` from its start
    /// for a repair (version 1 marks a restart implicitly, by a batch or completion at
    /// counter 1 below what was completed).
    Restart(Restart),
    /// Protocol 3: the sender's digests of hash-tree nodes of a collection, for the peer to
    /// compare with its own (a repair descending to the differing leaves).
    TreeRequest(TreeRequest),
    /// Protocol 3: the answer to a [`TreeRequest`]: which of those nodes differ.
    TreeReply(TreeReply),
    /// Protocol 3, on the bulk stream: current versions of the differing leaves, re-sent for a
    /// repair.
    RepairBatch(RepairBatch),
    /// Protocol 3: the sender applied every [`RepairBatch`] of the collection, its last included.
    RepairApplied(RepairApplied),
    /// Protocol 3: the repair of a collection is a full reconciliation (both sides re-stream
    /// it, as protocol 2 does).
    FullRepair(FullRepair),
    /// Protocol 3, on the control stream: a compression dictionary the sender would use for a
    /// collection's data frames once the receiver accepts it.
    DictionaryOffer(DictionaryOffer),
    /// Protocol 3, on the control stream: the answer to a [`DictionaryOffer`].
    DictionaryReply(DictionaryReply),
    /// Protocol 3, on a data stream: a batch and the completion of its stream that follows it
    /// (a live write's two frames in one, saving a frame and a zstd block).
    BatchComplete(BatchComplete),
}

/// A [`Batch`] and, right after it, "complete through `through`" for the same `(collection,
/// origin)` stream (protocol 3): received exactly as the two frames would be.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct BatchComplete {
    /// The batch.
    pub batch: Batch,
    /// The counter through which the batch's origin is then complete.
    pub through: u64,
}

impl BatchComplete {
    /// The completion it carries.
    pub fn complete(&self) -> Complete {
        Complete {
            collection: self.batch.collection.clone(),
            origin: self.batch.origin.clone(),
            through: self.through,
        }
    }
}

/// The sender's digests of the children at `level` of each of `parents` (protocol 3).
///
/// Nodes are those of [`crate::tree`]: `parents` are nodes at `level - 1` in strictly
/// increasing order, and `digests` holds [`FANOUT`](crate::tree::FANOUT) digests per parent, in
/// order. Sent only after a digest round found different digests at equal vectors.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct TreeRequest {
    /// The collection.
    pub collection: String,
    /// The level of the digests (1 to [`LEVELS`](crate::tree::LEVELS)).
    pub level: u8,
    /// The nodes whose children are compared, at most [`MAX_TREE_PARENTS`].
    pub parents: Vec<u32>,
    /// The sender's digests of their children.
    pub digests: Vec<Digest>,
}

/// Most parents in one [`TreeRequest`]: every node of the level above the leaves.
pub const MAX_TREE_PARENTS: usize = 4096;

/// The nodes of a [`TreeRequest`] whose digests differ at the replier (protocol 3). At the
/// leaf level both sides then re-send their versions of the differing leaves.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct TreeReply {
    /// The collection.
    pub collection: String,
    /// The request's level.
    pub level: u8,
    /// The differing children, strictly increasing (each a child of a requested parent).
    pub differing: Vec<u32>,
}

/// Current versions of keys in the differing leaves of a repair (protocol 3): any origins,
/// every dot already covered by the receiver's vector (a repair never moves vectors).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct RepairBatch {
    /// The collection every version belongs to.
    pub collection: String,
    /// The versions (none only in the last batch).
    pub versions: Vec<Version>,
    /// The sender has re-sent every version of the differing leaves.
    pub last: bool,
    /// The exchange ends the sender's descent (else the receiver's): both sides may descend
    /// one collection at once.
    pub requester: bool,
}

/// The sender applied every [`RepairBatch`] of `collection` through the last (protocol 3).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct RepairApplied {
    /// The collection.
    pub collection: String,
    /// The exchange ends the sender's descent (else the receiver's).
    pub requester: bool,
}

/// The repair of `collection` is a full reconciliation: the receiver re-streams it (protocol 3;
/// the requester sends it when a repair through the tree left the digests different).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct FullRepair {
    /// The collection.
    pub collection: String,
}

/// A repair re-stream of one origin in one collection starts (protocol 2).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Restart {
    /// The collection.
    pub collection: String,
    /// The origin whose stream restarts.
    pub origin: ReplicaId,
}

/// The acceptor's answer to a dialer of version 2 or later: version 1's [`HelloAck`] with what
/// version 1 left out, so the dialer knows which incarnation of the acceptor's node to accept
/// and that both are of one cluster.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct HelloAckV2 {
    /// The version-1 fields (protocol agreed, compression, vectors).
    pub ack: HelloAck,
    /// The acceptor's current replica id (its node name plus store incarnation).
    pub replica: ReplicaId,
    /// The acceptor's cluster id.
    pub cluster_id: String,
}

/// What a node runs, for the peer's status and logs.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct About {
    /// The sender's release, e.g. `officesyncd 0.2.0 (abc1234)`; at most
    /// [`MAX_RELEASE_BYTES`] bytes.
    pub release: String,
}

/// Longest [`About::release`], in bytes.
pub const MAX_RELEASE_BYTES: usize = 128;

impl Message {
    /// The protocol version of this message.
    pub fn protocol_version(&self) -> u16 {
        match self {
            Self::V1(_) => 1,
            Self::V2(_) => 2,
        }
    }

    /// A short snake_case name of the message kind, for logs and metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::V1(m) => m.kind(),
            Self::V2(m) => m.kind(),
        }
    }

    /// The message as version 2 (a version-1 batch's versions get no author or signature).
    pub fn into_v2(self) -> MessageV2 {
        match self {
            Self::V2(m) => m,
            Self::V1(m) => match m {
                MessageV1::Hello(h) => MessageV2::Hello(h),
                MessageV1::HelloAck(a) => MessageV2::HelloAck(a),
                MessageV1::Batch(b) => MessageV2::Batch(b.into()),
                MessageV1::Complete(c) => MessageV2::Complete(c),
                MessageV1::Ack(a) => MessageV2::Ack(a),
                MessageV1::Heartbeat(h) => MessageV2::Heartbeat(h),
                MessageV1::DigestRequest(r) => MessageV2::DigestRequest(r),
                MessageV1::DigestReply(r) => MessageV2::DigestReply(r),
                MessageV1::Error(e) => MessageV2::Error(e),
            },
        }
    }

    /// True for an [`ErrorFrame`] of either version.
    pub fn is_error(&self) -> bool {
        matches!(
            self,
            Self::V1(MessageV1::Error(_)) | Self::V2(MessageV2::Error(_))
        )
    }

    /// The collection of a data frame (a batch, completion, restart or repair batch): the one
    /// whose dictionary may prime the zstd stream it starts.
    pub fn collection(&self) -> Option<&str> {
        match self {
            Self::V1(MessageV1::Batch(b)) => Some(&b.collection),
            Self::V1(MessageV1::Complete(c)) | Self::V2(MessageV2::Complete(c)) => {
                Some(&c.collection)
            }
            Self::V2(MessageV2::Batch(b)) => Some(&b.collection),
            Self::V2(MessageV2::BatchComplete(b)) => Some(&b.batch.collection),
            Self::V2(MessageV2::Restart(r)) => Some(&r.collection),
            Self::V2(MessageV2::RepairBatch(b)) => Some(&b.collection),
            _ => None,
        }
    }

    /// True for the messages of bulk streams (batches and completions).
    pub fn is_bulk(&self) -> bool {
        matches!(
            self,
            Self::V1(MessageV1::Batch(_) | MessageV1::Complete(_))
                | Self::V2(
                    MessageV2::Batch(_)
                        | MessageV2::BatchComplete(_)
                        | MessageV2::Complete(_)
                        | MessageV2::Restart(_)
                        | MessageV2::RepairBatch(_)
                )
        )
    }
}

impl MessageV1 {
    /// A short snake_case name of the message kind, for logs and metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Hello(_) => "hello",
            Self::HelloAck(_) => "hello_ack",
            Self::Batch(_) => "batch",
            Self::Complete(_) => "complete",
            Self::Ack(_) => "ack",
            Self::Heartbeat(_) => "heartbeat",
            Self::DigestRequest(_) => "digest_request",
            Self::DigestReply(_) => "digest_reply",
            Self::Error(_) => "error",
        }
    }
}

impl MessageV2 {
    /// A short snake_case name of the message kind, for logs and metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Hello(_) => "hello",
            Self::HelloAck(_) => "hello_ack",
            Self::Batch(_) => "batch",
            Self::Complete(_) => "complete",
            Self::Ack(_) => "ack",
            Self::Heartbeat(_) => "heartbeat",
            Self::DigestRequest(_) => "digest_request",
            Self::DigestReply(_) => "digest_reply",
            Self::Error(_) => "error",
            Self::About(_) => "about",
            Self::HelloAckV2(_) => "hello_ack",
            Self::Echo(_) => "echo",
            Self::Restart(_) => "restart",
            Self::TreeRequest(_) => "tree_request",
            Self::TreeReply(_) => "tree_reply",
            Self::RepairBatch(_) => "repair_batch",
            Self::RepairApplied(_) => "repair_applied",
            Self::FullRepair(_) => "full_repair",
            Self::DictionaryOffer(_) => "dictionary_offer",
            Self::DictionaryReply(_) => "dictionary_reply",
            Self::BatchComplete(_) => "batch_complete",
        }
    }

    /// The message as a session speaking `protocol` sends it: the dialer's `Hello` (and a
    /// version-1 `HelloAck`) always as version 1; anything else as version 2, or converted down
    /// to version 1 (dropping authors, signatures and what [`HelloAckV2`] adds; an echo becomes
    /// a heartbeat). `None` for a message the version cannot carry ([`About`] at version 1,
    /// the tree repair's messages below version 3).
    pub fn at(self, protocol: u16) -> Option<Message> {
        let v1 = match self {
            Self::Hello(h) => return Some(Message::V1(MessageV1::Hello(h))),
            Self::HelloAck(a) => return Some(Message::V1(MessageV1::HelloAck(a))),
            m if m.since() > protocol => return None,
            m if protocol >= 2 => return Some(Message::V2(m)),
            Self::HelloAckV2(a) => MessageV1::HelloAck(a.ack),
            Self::Echo(h) => MessageV1::Heartbeat(h),
            Self::Batch(b) => MessageV1::Batch(b.into()),
            Self::Complete(c) => MessageV1::Complete(c),
            Self::Ack(a) => MessageV1::Ack(a),
            Self::Heartbeat(h) => MessageV1::Heartbeat(h),
            Self::DigestRequest(r) => MessageV1::DigestRequest(r),
            Self::DigestReply(r) => MessageV1::DigestReply(r),
            Self::Error(e) => MessageV1::Error(e),
            Self::About(_)
            | Self::Restart(_)
            | Self::TreeRequest(_)
            | Self::TreeReply(_)
            | Self::RepairBatch(_)
            | Self::RepairApplied(_)
            | Self::FullRepair(_)
            | Self::DictionaryOffer(_)
            | Self::DictionaryReply(_)
            | Self::BatchComplete(_) => return None,
        };
        Some(Message::V1(v1))
    }

    /// The first protocol version that carries this message.
    pub fn since(&self) -> u16 {
        match self {
            Self::TreeRequest(_)
            | Self::TreeReply(_)
            | Self::RepairBatch(_)
            | Self::RepairApplied(_)
            | Self::FullRepair(_)
            | Self::DictionaryOffer(_)
            | Self::DictionaryReply(_)
            | Self::BatchComplete(_) => 3,
            _ => 1,
        }
    }
}

impl From<MessageV1> for Message {
    fn from(m: MessageV1) -> Self {
        Self::V1(m)
    }
}

impl From<MessageV2> for Message {
    fn from(m: MessageV2) -> Self {
        // The handshake travels as version 1 (see `MessageV2::at`).
        match m {
            MessageV2::Hello(h) => Self::V1(MessageV1::Hello(h)),
            MessageV2::HelloAck(a) => Self::V1(MessageV1::HelloAck(a)),
            m => Self::V2(m),
        }
    }
}

macro_rules! into_message {
    ($($ty:ident => $variant:ident),* $(,)?) => {
        $(
            impl From<$ty> for MessageV2 {
                fn from(m: $ty) -> Self {
                    Self::$variant(m)
                }
            }
            impl From<$ty> for Message {
                fn from(m: $ty) -> Self {
                    MessageV2::$variant(m).into()
                }
            }
        )*
    };
}

into_message!(
    Hello => Hello,
    HelloAck => HelloAck,
    Batch => Batch,
    Complete => Complete,
    Ack => Ack,
    Heartbeat => Heartbeat,
    DigestRequest => DigestRequest,
    DigestReply => DigestReply,
    ErrorFrame => Error,
    About => About,
    HelloAckV2 => HelloAckV2,
    Restart => Restart,
    TreeRequest => TreeRequest,
    TreeReply => TreeReply,
    RepairBatch => RepairBatch,
    RepairApplied => RepairApplied,
    FullRepair => FullRepair,
    DictionaryOffer => DictionaryOffer,
    DictionaryReply => DictionaryReply,
    BatchComplete => BatchComplete,
);

/// Payload compression a node can use on bulk frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Encode, Decode)]
pub enum Compression {
    /// Payloads are sent as they are.
    None,
    /// Payloads may be zstd-compressed (frames flagged [`FrameFlags::ZSTD`](super::FrameFlags::ZSTD)).
    Zstd,
}

/// The first message of a session, from the dialing node on the control stream.
///
/// The peer's identity comes from its certificate; `node` must match it and is checked by the
/// session, not trusted.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Hello {
    /// The highest protocol version the sender speaks.
    pub protocol: u16,
    /// The cluster id: lowercase hex of the CA certificate fingerprint.
    pub cluster_id: String,
    /// The sender's node name (as in its certificate).
    pub node: String,
    /// The sender's current replica id (its node name plus store incarnation).
    pub replica: ReplicaId,
    /// The compressions the sender can receive, in order of preference.
    pub compression: Vec<Compression>,
    /// The sender's version vector of every collection it may read, by collection name.
    pub vvs: Vec<(String, VersionVector)>,
}

/// The accepting node's answer to a [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct HelloAck {
    /// The protocol version the session will use (at most the hello's).
    pub protocol: u16,
    /// The compression chosen from the hello's offer ([`Compression::None`] when none fits).
    pub accepted_compression: Compression,
    /// The acceptor's version vector of every collection it may read, by collection name.
    pub vvs: Vec<(String, VersionVector)>,
}

/// Versions of one origin in one collection, in strictly increasing counter order (counters
/// may skip versions the sender holds as superseded).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Batch {
    /// The collection every version belongs to.
    pub collection: String,
    /// The origin of every version.
    pub origin: ReplicaId,
    /// The versions, at least one.
    pub versions: Vec<Version>,
}

/// "Origin `origin` is complete through counter `through` in `collection`": the sender has sent
/// every version of that origin it holds up to `through` (never above its own vector).
/// The receiver applies the preceding batches and raises its vector in one step.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Complete {
    /// The collection.
    pub collection: String,
    /// The origin.
    pub origin: ReplicaId,
    /// The counter through which the origin is complete (at least 1).
    pub through: u64,
}

/// The receiver has durably applied `origin` through `through` in `collection`; the sender may
/// release flow-control credit and will resume after it on reconnect.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Ack {
    /// The collection.
    pub collection: String,
    /// The origin.
    pub origin: ReplicaId,
    /// The counter through which the origin is applied (at least 1).
    pub through: u64,
}

/// A liveness probe; the peer answers with its own heartbeat echoing `seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub struct Heartbeat {
    /// The sender's wall clock, in milliseconds since the Unix epoch (for skew reporting).
    pub now_ms: u64,
    /// A sequence number, to match replies to probes.
    pub seq: u64,
}

/// Asks the peer whether its digest of `collection` equals the sender's at vector `vv`.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct DigestRequest {
    /// The collection.
    pub collection: String,
    /// The sender's collection digest.
    pub digest: Digest,
    /// The sender's version vector of the collection when the digest was taken.
    pub vv: VersionVector,
}

/// The answer to a [`DigestRequest`]: the replier's own digest and vector.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct DigestReply {
    /// The collection.
    pub collection: String,
    /// The replier's collection digest.
    pub digest: Digest,
    /// The replier's version vector of the collection.
    pub vv: VersionVector,
    /// True when the replier's digest equals the requested one.
    pub equal: bool,
}

/// Why the sender is closing the stream or connection; the same code closes it.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct ErrorFrame {
    /// The error code.
    pub code: ErrorCode,
    /// Human-readable detail for logs (at most
    /// [`MAX_ERROR_DETAIL_BYTES`](super::MAX_ERROR_DETAIL_BYTES)).
    pub detail: String,
}
