//! The sync protocol on the wire: versioned messages, their framing on QUIC streams, bounded
//! sans-IO decoding and semantic validation of everything a peer sends.
//!
//! A stream carries a sequence of frames. Each frame is
//!
//! ```text
//! +----------------------+-----------+---------------------------+
//! | payload length (u32, | flags (u8)| payload (length bytes)    |
//! | big-endian)          |           |                           |
//! +----------------------+-----------+---------------------------+
//! ```
//!
//! where the payload is the bincode (standard configuration) of a [`Message`], zstd-compressed
//! when [`FrameFlags::ZSTD`] is set (or continuing a zstd stream, [`FrameFlags::ZSTD_STREAM`],
//! possibly primed with an agreed dictionary, [`FrameFlags::ZSTD_DICT`]). The codec only carries the flag: the daemon compresses
//! before [`encode_raw_frame`] and decompresses (bounded by [`MAX_FRAME_BYTES`]) before
//! [`decode_message`].
//!
//! Decoding a peer's bytes is three steps, each of which refuses hostile input with a
//! [`WireError`] whose [`WireError::code`] is the [`ErrorCode`] to close the stream with:
//! [`FrameDecoder`] cuts frames out of the byte stream, [`decode_message`] turns a payload into a
//! [`Message`], and [`Message::validate`] checks names, counters, ordering and sizes.

mod dictionary;
mod error;
mod frame;
mod message;
mod v1;
mod validate;

pub use dictionary::{
    DictionaryId, DictionaryOffer, DictionaryReply, DICTIONARY_ID_LEN, MAX_DICTIONARY_BYTES,
    MAX_DICTIONARY_COLLECTIONS,
};
pub(crate) use error::clip;
pub use error::{ErrorCode, WireError};
pub use frame::{
    decode_message, encode_frame, encode_message, encode_raw_frame, Frame, FrameDecoder,
    FrameFlags, FRAME_HEADER_LEN,
};
pub use message::{
    About, Ack, Batch, BatchComplete, Complete, Compression, DigestReply, DigestRequest,
    ErrorFrame, FullRepair, Heartbeat, Hello, HelloAck, HelloAckV2, Message, MessageV1, MessageV2,
    RepairApplied, RepairBatch, Restart, TreeReply, TreeRequest, MAX_RELEASE_BYTES,
    MAX_TREE_PARENTS,
};
pub use v1::{BatchV1, VersionV1};
pub use validate::{
    validate_cluster_id, MAX_CLUSTER_ID_LEN, MAX_ERROR_DETAIL_BYTES, MAX_HANDSHAKE_COLLECTIONS,
    MAX_VECTOR_ENTRIES,
};

/// The highest protocol version this build speaks; sent in [`Hello::protocol`]. A session
/// speaks the highest version both nodes do (the acceptor's [`HelloAck::protocol`]).
///
/// Version 3 adds the hash-tree repair (its messages travel as [`Message::V2`] variants), and
/// its senders may open a second unidirectional stream, the urgent stream, for the batches and
/// completions of urgent collections (every `(collection, origin)` stream stays on one QUIC
/// stream, so the receiver's order checks are unchanged). It also agrees per-collection
/// compression dictionaries ([`DictionaryOffer`], [`DictionaryReply`], [`FrameFlags::ZSTD_DICT`]).
pub const PROTOCOL_VERSION: u16 = 3;

/// The oldest protocol version this build still speaks (with nodes of the previous release).
pub const MIN_PROTOCOL_VERSION: u16 = 1;

/// Largest frame payload, in bytes, that is sent or accepted (after decompression too).
///
/// Values are at most [`DEFAULT_MAX_VALUE_BYTES`] (4 MiB) by default, so a [`Batch`] frame
/// always has room for one version with a maximum-size value plus its key, causal context and
/// framing overhead. Senders split batches so that each frame stays under this limit.
pub const MAX_FRAME_BYTES: usize = 8 << 20;

/// Largest value, in bytes, accepted by default (the configurable record value limit).
pub const DEFAULT_MAX_VALUE_BYTES: usize = 4 << 20;

/// The memory bincode may claim while decoding one payload (its size limit).
///
/// bincode counts the in-memory size of what it decodes (`size_of` of every container
/// element up front, 8 bytes for every varint `u64`), which for a batch of many tiny versions is
/// several times the encoded size: the densest valid batch filling a [`MAX_FRAME_BYTES`]
/// payload claims about 6 times its length. Eight times [`MAX_FRAME_BYTES`] lets it decode while
/// still bounding what a hostile length prefix inside a payload can make the receiver allocate.
pub const MAX_DECODED_BYTES: usize = 8 * MAX_FRAME_BYTES;

/// The QUIC ALPN protocol id of officesync sessions.
pub const ALPN: &[u8] = b"officesync/1";
