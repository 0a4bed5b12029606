//! Why a session closed: every variant maps to the [`ErrorCode`] sent to the peer.

use thiserror::Error;

use crate::wire::{ErrorCode, WireError};

/// Why a session was closed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SyncError {
    /// A frame failed [`Message::validate`](crate::wire::Message::validate).
    #[error("invalid message: {0}")]
    Invalid(#[from] WireError),
    /// The peer speaks no protocol version this build does.
    #[error("peer protocol version {theirs} is not supported (this build speaks {ours})")]
    UnsupportedVersion {
        /// Ours.
        ours: u16,
        /// The peer's.
        theirs: u16,
    },
    /// The peer's cluster id differs from ours.
    #[error("peer is in cluster {theirs:?}, not {ours:?}")]
    WrongCluster {
        /// Ours.
        ours: String,
        /// The peer's (clipped).
        theirs: String,
    },
    /// The node name in the peer's `Hello` is not the one in its certificate.
    #[error("peer certificate names {certificate:?} but its hello says {hello:?}")]
    NodeMismatch {
        /// From the certificate.
        certificate: String,
        /// From the hello (clipped).
        hello: String,
    },
    /// A message the session does not expect now (before the handshake, a second hello...).
    #[error("unexpected {kind} {when}")]
    Unexpected {
        /// The message kind.
        kind: &'static str,
        /// The situation.
        when: &'static str,
    },
    /// A message on the wrong stream.
    #[error("{kind} received on the {stream} stream")]
    WrongStream {
        /// The message kind.
        kind: &'static str,
        /// The stream it came on.
        stream: &'static str,
    },
    /// `HelloAck` chose a compression that was not offered.
    #[error("peer chose compression {0} that was not offered")]
    CompressionNotOffered(&'static str),
    /// Versions, completions or acknowledgements out of counter order.
    #[error("out of order in {collection}/{origin}: {what}")]
    OutOfOrder {
        /// The collection (clipped).
        collection: String,
        /// The origin (clipped).
        origin: String,
        /// What was wrong.
        what: String,
    },
    /// A tree-repair message that answers nothing this side asked or armed (protocol 3).
    #[error("tree repair of {collection}: {what}")]
    Tree {
        /// The collection (clipped).
        collection: String,
        /// What was wrong.
        what: String,
    },
    /// The peer made the session hold more than its bounds.
    #[error("peer exceeded a session limit: {0}")]
    LimitExceeded(&'static str),
    /// Nothing was heard from the peer for too long.
    #[error("idle timeout: nothing heard for {0} ms")]
    IdleTimeout(u64),
    /// The driver broke its contract (a Load answered outside its range...).
    #[error("local store: {0}")]
    Store(String),
    /// The peer sent an error frame.
    #[error("peer closed: {code}: {detail}")]
    Peer {
        /// The peer's code.
        code: ErrorCode,
        /// The peer's detail (clipped).
        detail: String,
    },
    /// The driver closed the session.
    #[error("closed locally: {reason}")]
    Local {
        /// The code to send.
        code: ErrorCode,
        /// Why.
        reason: String,
    },
}

impl SyncError {
    /// The code to close with and send in the `Error` frame.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Invalid(e) => e.code(),
            Self::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
            Self::WrongCluster { .. } => ErrorCode::WrongCluster,
            Self::NodeMismatch { .. } => ErrorCode::NotAuthorized,
            Self::Unexpected { .. }
            | Self::WrongStream { .. }
            | Self::CompressionNotOffered(_)
            | Self::Tree { .. } => ErrorCode::Malformed,
            Self::OutOfOrder { .. } => ErrorCode::OutOfOrder,
            Self::LimitExceeded(_) => ErrorCode::FrameTooLarge,
            Self::IdleTimeout(_) | Self::Store(_) => ErrorCode::Internal,
            Self::Peer { code, .. } | Self::Local { code, .. } => *code,
        }
    }
}

/// `s`, cut for quoting in an error (one rule for the wire and the session).
pub(super) use crate::wire::clip;
