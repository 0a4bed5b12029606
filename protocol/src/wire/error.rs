//! Why a frame or message was refused, and the numeric codes a stream or connection is closed
//! with.

use std::fmt;

use bincode::de::Decoder;
use bincode::enc::Encoder;
use bincode::error::{AllowedEnumVariants, DecodeError, EncodeError};
use bincode::{Decode, Encode};
use thiserror::Error;

use crate::names::NameError;

/// Numeric error codes, sent in [`ErrorFrame`](super::ErrorFrame)s and used as QUIC
/// application close and stream reset codes. The numbers are part of the protocol: never
/// renumber, only append.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The bytes are not a well-formed frame or message, or the message breaks a protocol rule
    /// (invalid name, counter 0, batch of the wrong origin...).
    Malformed = 1,
    /// A frame, decoded message or value is larger than the limits allow.
    FrameTooLarge = 2,
    /// The peer speaks a protocol version this build does not.
    UnsupportedVersion = 3,
    /// The peer belongs to another cluster (its CA fingerprint differs).
    WrongCluster = 4,
    /// The peer may not do what it asked (read a collection, write a version of that origin).
    NotAuthorized = 5,
    /// The peer's node is revoked by `_policy`.
    Revoked = 6,
    /// A timestamp is further ahead of the receiver's clock than `max_clock_skew`.
    ClockSkew = 7,
    /// Versions or acknowledgements arrived out of counter order.
    OutOfOrder = 8,
    /// The sender hit a bug or a local failure (storage, encoding); not the peer's fault.
    Internal = 9,
    /// The peer sent bad input repeatedly and is refused for a while (growing backoff).
    Backoff = 10,
}

impl ErrorCode {
    /// Every code, in numeric order.
    pub const ALL: [ErrorCode; 10] = [
        Self::Malformed,
        Self::FrameTooLarge,
        Self::UnsupportedVersion,
        Self::WrongCluster,
        Self::NotAuthorized,
        Self::Revoked,
        Self::ClockSkew,
        Self::OutOfOrder,
        Self::Internal,
        Self::Backoff,
    ];

    /// The code for a number received from a peer (`None` for a code this build does not know).
    pub fn from_u32(code: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_u32() == code)
    }

    /// The number sent on the wire.
    pub fn as_u32(self) -> u32 {
        self as u32
    }

    /// A short snake_case name, for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::FrameTooLarge => "frame_too_large",
            Self::UnsupportedVersion => "unsupported_version",
            Self::WrongCluster => "wrong_cluster",
            Self::NotAuthorized => "not_authorized",
            Self::Revoked => "revoked",
            Self::ClockSkew => "clock_skew",
            Self::OutOfOrder => "out_of_order",
            Self::Internal => "internal",
            Self::Backoff => "backoff",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<ErrorCode> for u32 {
    fn from(code: ErrorCode) -> u32 {
        code.as_u32()
    }
}

// Encoded as its protocol number, not as the variant index the derive would use.
impl Encode for ErrorCode {
    fn encode<E: Encoder>(&self, encoder: &mut E) -> Result<(), EncodeError> {
        self.as_u32().encode(encoder)
    }
}

impl<Context> Decode<Context> for ErrorCode {
    fn decode<D: Decoder<Context = Context>>(decoder: &mut D) -> Result<Self, DecodeError> {
        const ALLOWED: AllowedEnumVariants = AllowedEnumVariants::Range { min: 1, max: 10 };
        let found = u32::decode(decoder)?;
        Self::from_u32(found).ok_or(DecodeError::UnexpectedVariant {
            type_name: "ErrorCode",
            allowed: &ALLOWED,
            found,
        })
    }
}
bincode::impl_borrow_decode!(ErrorCode);

/// Why a frame or message from a peer was refused (or, for [`WireError::Encode`] and
/// oversize messages, could not be sent). Every variant maps to the [`ErrorCode`] to close the
/// stream with via [`WireError::code`]. Strings taken from the peer are clipped so an error is
/// always small enough to log.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WireError {
    /// A frame declares (or a message would need) a payload longer than the limit.
    #[error("frame payload of {len} bytes exceeds the limit of {limit} bytes")]
    FrameTooLarge {
        /// The declared or needed payload length.
        len: u64,
        /// The limit in force.
        limit: usize,
    },
    /// A frame header sets flag bits this build does not know.
    #[error("frame flags {flags:#04x} set unknown bits")]
    UnknownFlags {
        /// The flags byte received.
        flags: u8,
    },
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame ({buffered} bytes of it received)")]
    TruncatedFrame {
        /// Bytes of the unfinished frame (header included) that were received.
        buffered: usize,
    },
    /// The message is of a protocol version this build does not speak.
    #[error("protocol version {version} is not supported (this build speaks 1)")]
    UnsupportedVersion {
        /// The version the peer used.
        version: u32,
    },
    /// The payload ended before the message did.
    #[error("payload ends before the message does")]
    Truncated,
    /// Bytes were left in the payload after the message.
    #[error("{count} trailing bytes after the message")]
    TrailingBytes {
        /// How many bytes were left.
        count: usize,
    },
    /// An enum tag that names no variant (an unknown message kind, compression or error code).
    #[error("unknown tag {found} for {type_name}")]
    UnknownTag {
        /// The type being decoded.
        type_name: &'static str,
        /// The tag received.
        found: u32,
    },
    /// Decoding would claim more memory than [`MAX_DECODED_BYTES`](super::MAX_DECODED_BYTES).
    #[error("message would decode to more than {limit} bytes")]
    DecodeLimit {
        /// The limit in force.
        limit: usize,
    },
    /// The payload is not a valid encoding for another reason (invalid UTF-8, bool or integer).
    #[error("malformed message: {reason}")]
    Malformed {
        /// What bincode refused.
        reason: String,
    },
    /// The message could not be encoded (a bug on the sending side).
    #[error("could not encode message: {reason}")]
    Encode {
        /// What bincode refused.
        reason: String,
    },
    /// A node name, collection name or key is invalid.
    #[error(transparent)]
    InvalidName(#[from] NameError),
    /// A replica id is not `name@incarnation`.
    #[error("invalid replica id {0:?}")]
    InvalidReplicaId(String),
    /// The cluster id is not the lowercase hex of the CA fingerprint.
    #[error("invalid cluster id {0:?}: expected lowercase hex")]
    InvalidClusterId(String),
    /// A [`Hello`](super::Hello)'s replica id belongs to another node than the one it names.
    #[error("replica id {replica:?} does not belong to node {node:?}")]
    ReplicaNodeMismatch {
        /// The node named in the hello.
        node: String,
        /// The replica id sent with it.
        replica: String,
    },
    /// A counter (of a dot, a vector entry or a completion) is 0; counters start at 1.
    #[error("counter 0 for origin {origin:?}: counters start at 1")]
    ZeroCounter {
        /// The origin the counter belongs to.
        origin: String,
    },
    /// A batch carries no versions (a bare completion is sent as `Complete`).
    #[error("batch carries no versions")]
    EmptyBatch,
    /// A batch holds a version of another origin than the batch's.
    #[error("batch of origin {expected:?} holds a version of {found:?}")]
    WrongOrigin {
        /// The batch's origin.
        expected: String,
        /// The version's origin.
        found: String,
    },
    /// A batch holds a version of another collection than the batch's.
    #[error("batch of collection {expected:?} holds a version of {found:?}")]
    WrongCollection {
        /// The batch's collection.
        expected: String,
        /// The version's collection.
        found: String,
    },
    /// A batch's counters are not strictly increasing.
    #[error("version counter {counter} follows {previous} in a batch")]
    OutOfOrder {
        /// The counter of the version before.
        previous: u64,
        /// The counter that is not above it.
        counter: u64,
    },
    /// A version's author is malformed or names another node than its origin's.
    #[error("version author {author:?}: {detail}")]
    BadAuthor {
        /// The author, clipped.
        author: String,
        /// What is wrong with it.
        detail: String,
    },
    /// A version's signature is longer than any signature scheme makes.
    #[error("version signature of {len} bytes is too long")]
    BadSignatureLength {
        /// Its length.
        len: usize,
    },
    /// A version's causal context covers its own dot.
    #[error("version {dot} supersedes itself")]
    SelfSuperseding {
        /// The version's dot, as `origin:counter`.
        dot: String,
    },
    /// A value is larger than the configured value limit.
    #[error("value of {len} bytes exceeds the limit of {limit} bytes")]
    ValueTooLarge {
        /// The value's length.
        len: usize,
        /// The limit in force.
        limit: usize,
    },
    /// A collection appears twice in a list of version vectors.
    #[error("collection {0:?} listed twice")]
    DuplicateCollection(String),
    /// A version's timestamp is further ahead of the receiver's clock than the allowed skew.
    #[error("version {dot} has a timestamp {ahead_ms} ms ahead of this node's clock (at most {max_skew_ms} ms allowed)")]
    ClockSkew {
        /// The version's dot, as `origin:counter`.
        dot: String,
        /// How far ahead of the receiver's clock the timestamp is.
        ahead_ms: u64,
        /// The allowed skew.
        max_skew_ms: u64,
    },
    /// A version vector or causal context names more origins than
    /// [`MAX_VECTOR_ENTRIES`](super::MAX_VECTOR_ENTRIES).
    #[error("a version vector of {len} origins exceeds the limit of {limit}")]
    VectorTooLong {
        /// How many origins it names.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// A handshake lists more collections than
    /// [`MAX_HANDSHAKE_COLLECTIONS`](super::MAX_HANDSHAKE_COLLECTIONS).
    #[error("{len} collections in a handshake exceed the limit of {limit}")]
    TooManyCollections {
        /// How many it lists.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// A hash-tree message names a level, node or number of digests outside the tree.
    #[error("malformed tree message: {0}")]
    BadTree(String),
    /// A dictionary offer's size is out of bounds or its id is not the hash of its bytes.
    #[error("malformed dictionary offer: {0}")]
    BadDictionary(String),
    /// An error frame's detail is longer than
    /// [`MAX_ERROR_DETAIL_BYTES`](super::MAX_ERROR_DETAIL_BYTES).
    #[error("error detail of {len} bytes is too long")]
    DetailTooLong {
        /// The detail's length.
        len: usize,
    },
}

impl WireError {
    /// The code to close the stream or connection with, or to send in an
    /// [`ErrorFrame`](super::ErrorFrame).
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::FrameTooLarge { .. }
            | Self::DecodeLimit { .. }
            | Self::ValueTooLarge { .. }
            | Self::VectorTooLong { .. }
            | Self::TooManyCollections { .. } => ErrorCode::FrameTooLarge,
            Self::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
            Self::OutOfOrder { .. } => ErrorCode::OutOfOrder,
            Self::ClockSkew { .. } => ErrorCode::ClockSkew,
            Self::Encode { .. } => ErrorCode::Internal,
            Self::UnknownFlags { .. }
            | Self::TruncatedFrame { .. }
            | Self::Truncated
            | Self::TrailingBytes { .. }
            | Self::UnknownTag { .. }
            | Self::Malformed { .. }
            | Self::InvalidName(_)
            | Self::InvalidReplicaId(_)
            | Self::InvalidClusterId(_)
            | Self::ReplicaNodeMismatch { .. }
            | Self::ZeroCounter { .. }
            | Self::EmptyBatch
            | Self::WrongOrigin { .. }
            | Self::WrongCollection { .. }
            | Self::SelfSuperseding { .. }
            | Self::BadTree(_)
            | Self::BadDictionary(_)
            | Self::BadAuthor { .. }
            | Self::BadSignatureLength { .. }
            | Self::DuplicateCollection(_)
            | Self::DetailTooLong { .. } => ErrorCode::Malformed,
        }
    }

    /// Translates a bincode decoding error (`limit` is the decode limit that was in force).
    pub(crate) fn from_decode(err: DecodeError, limit: usize) -> Self {
        match err {
            DecodeError::UnexpectedEnd { .. } => Self::Truncated,
            DecodeError::LimitExceeded => Self::DecodeLimit { limit },
            DecodeError::UnexpectedVariant {
                type_name, found, ..
            } => Self::UnknownTag { type_name, found },
            other => Self::Malformed {
                reason: clip(&other.to_string()),
            },
        }
    }

    /// Translates a bincode encoding error.
    pub(crate) fn from_encode(err: &EncodeError) -> Self {
        Self::Encode {
            reason: clip(&err.to_string()),
        }
    }
}

/// Longest peer-chosen string quoted in an error, in bytes.
const CLIP_BYTES: usize = 96;

/// `s`, cut to at most [`CLIP_BYTES`] (on a character boundary) with `…` when cut.
pub(crate) fn clip(s: &str) -> String {
    if s.len() <= CLIP_BYTES {
        return s.to_owned();
    }
    let mut end = CLIP_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", s.get(..end).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_stable() {
        for (i, code) in ErrorCode::ALL.into_iter().enumerate() {
            assert_eq!(code.as_u32() as usize, i + 1);
            assert_eq!(ErrorCode::from_u32(code.as_u32()), Some(code));
        }
        assert_eq!(ErrorCode::from_u32(0), None);
        assert_eq!(ErrorCode::from_u32(11), None);
        assert_eq!(ErrorCode::Internal.as_u32(), 9);
        assert_eq!(ErrorCode::Backoff.as_u32(), 10);
        assert_eq!(ErrorCode::OutOfOrder.to_string(), "out_of_order");
    }

    #[test]
    fn clip_is_bounded_and_char_safe() {
        assert_eq!(clip("short"), "short");
        let long = "é".repeat(100);
        let c = clip(&long);
        assert!(c.len() <= CLIP_BYTES + '…'.len_utf8());
        assert!(c.ends_with('…'));
    }
}
