//! The messages of the sync protocol, versioned from day one: [`Message`] has one variant per
//! protocol version, and each version's messages are a closed enum.
//!
//! The bincode layout is the protocol: enum variants are encoded by position, so variants and
//! fields are never reordered or removed. A change of layout is a new protocol version
//! (`Message::V2`, appended), not an edit of `MessageV1`.

use bincode::{Decode, Encode};

use crate::digest::Digest;
use crate::dot::{ReplicaId, VersionVector};
use crate::version::Version;

use super::error::ErrorCode;

/// A message of some protocol version: the payload of every frame.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum Message {
    /// Protocol version 1 ([`PROTOCOL_VERSION`](super::PROTOCOL_VERSION)).
    V1(MessageV1),
}

/// The messages of protocol version 1.
///
/// The handshake ([`Hello`], [`HelloAck`]), acknowledgements, heartbeats, digests and errors
/// travel on the control stream; batches and completions travel on bulk streams, so control
/// traffic never waits behind data.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum MessageV1 {
    /// Opens a session (sent by the dialing node).
    Hello(Hello),
    /// Accepts a session (sent by the accepting node).
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
}

impl Message {
    /// The protocol version of this message.
    pub fn protocol_version(&self) -> u16 {
        match self {
            Self::V1(_) => 1,
        }
    }

    /// A short snake_case name of the message kind, for logs and metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::V1(m) => m.kind(),
        }
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

impl From<MessageV1> for Message {
    fn from(m: MessageV1) -> Self {
        Self::V1(m)
    }
}

macro_rules! into_message {
    ($($ty:ident => $variant:ident),* $(,)?) => {
        $(
            impl From<$ty> for MessageV1 {
                fn from(m: $ty) -> Self {
                    Self::$variant(m)
                }
            }
            impl From<$ty> for Message {
                fn from(m: $ty) -> Self {
                    Self::V1(MessageV1::$variant(m))
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
