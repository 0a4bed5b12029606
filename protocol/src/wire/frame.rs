//! Frames on a stream (length, flags, payload), the sans-IO incremental [`FrameDecoder`] and
//! the bounded bincode encoding of [`Message`]s into payloads.

use std::collections::VecDeque;
use std::mem;

use bincode::enc::write::SizeWriter;

use super::error::WireError;
use super::message::Message;
use super::{MAX_DECODED_BYTES, MAX_FRAME_BYTES};

/// Bytes of the frame header: a big-endian `u32` payload length and a flags byte.
pub const FRAME_HEADER_LEN: usize = 5;

/// The flags byte of a frame. Unknown bits are refused, so a later build can give them a
/// meaning without an older one misreading the payload.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct FrameFlags(u8);

impl FrameFlags {
    /// No flag: the payload is the bincode of a message.
    pub const NONE: Self = Self(0);
    /// Bit 0: the payload is zstd-compressed bincode.
    pub const ZSTD: Self = Self(1);
    /// Bit 3: the payload continues the zstd stream of this QUIC stream (one flushed block
    /// run; its bytes decode only after every earlier such frame of the stream, in order).
    pub const ZSTD_STREAM: Self = Self(8);
    /// Bit 4, only with [`FrameFlags::ZSTD_STREAM`] (protocol 3): the payload starts a new zstd
    /// stream primed with the dictionary whose [`DictionaryId`](super::DictionaryId) are the
    /// payload's first [`DICTIONARY_ID_LEN`](super::DICTIONARY_ID_LEN) bytes. Sent only to a
    /// peer that accepted that dictionary.
    pub const ZSTD_DICT: Self = Self(16);
    /// Every bit this build knows.
    pub const KNOWN_BITS: u8 = Self::ZSTD.0 | Self::ZSTD_STREAM.0 | Self::ZSTD_DICT.0;

    /// Flags from a received byte; [`WireError::UnknownFlags`] when an unknown bit is set.
    pub fn from_bits(bits: u8) -> Result<Self, WireError> {
        if bits & !Self::KNOWN_BITS == 0 {
            Ok(Self(bits))
        } else {
            Err(WireError::UnknownFlags { flags: bits })
        }
    }

    /// The byte sent on the wire.
    pub fn bits(self) -> u8 {
        self.0
    }

    /// True when the payload is zstd-compressed.
    pub fn is_zstd(self) -> bool {
        self.0 & Self::ZSTD.0 != 0
    }

    /// True when the payload continues the stream's zstd stream ([`FrameFlags::ZSTD_STREAM`]).
    pub fn is_zstd_stream(self) -> bool {
        self.0 & Self::ZSTD_STREAM.0 != 0
    }

    /// True when the payload starts a zstd stream primed with a dictionary
    /// ([`FrameFlags::ZSTD_DICT`]).
    pub fn is_zstd_dict(self) -> bool {
        self.0 & Self::ZSTD_DICT.0 != 0
    }

    /// These flags and `other`'s.
    pub fn with(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }
}

/// One frame cut out of a stream: its flags and its payload, still compressed if
/// [`FrameFlags::is_zstd`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The frame's flags.
    pub flags: FrameFlags,
    /// The payload bytes.
    pub payload: Vec<u8>,
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_DECODED_BYTES>()
}

fn too_large(len: usize, limit: usize) -> WireError {
    WireError::FrameTooLarge {
        len: u64::try_from(len).unwrap_or(u64::MAX),
        limit,
    }
}

/// The header of a frame with a payload of `len` bytes.
fn header(flags: FrameFlags, len: usize) -> Result<[u8; FRAME_HEADER_LEN], WireError> {
    let len32 = match u32::try_from(len) {
        Ok(n) if len <= MAX_FRAME_BYTES => n,
        _ => return Err(too_large(len, MAX_FRAME_BYTES)),
    };
    let mut h = [0u8; FRAME_HEADER_LEN];
    h[..4].copy_from_slice(&len32.to_be_bytes());
    h[4] = flags.bits();
    Ok(h)
}

/// Appends the header (if `flags` is given) and the bincode of `msg` to an empty buffer,
/// measuring first so an oversize message is refused before anything is allocated for it.
fn encode_with(msg: &Message, flags: Option<FrameFlags>) -> Result<Vec<u8>, WireError> {
    let mut size = SizeWriter::default();
    bincode::encode_into_writer(msg, &mut size, config())
        .map_err(|e| WireError::from_encode(&e))?;
    let len = size.bytes_written;
    let head = header(flags.unwrap_or_default(), len)?;
    let mut out = Vec::with_capacity(len + FRAME_HEADER_LEN);
    if flags.is_some() {
        out.extend_from_slice(&head);
    }
    bincode::encode_into_std_write(msg, &mut out, config())
        .map_err(|e| WireError::from_encode(&e))?;
    Ok(out)
}

/// Encodes `msg` as a frame payload (uncompressed bincode), refusing one longer than
/// [`MAX_FRAME_BYTES`]. Use it with [`encode_raw_frame`] to send a compressed payload.
pub fn encode_message(msg: &Message) -> Result<Vec<u8>, WireError> {
    encode_with(msg, None)
}

/// Encodes `msg` as one complete frame (header and uncompressed payload), refusing a payload
/// longer than [`MAX_FRAME_BYTES`].
///
/// `flags` is written as given and describes the payload: this function never compresses, so
/// pass [`FrameFlags::NONE`]. To send a compressed frame, compress [`encode_message`]'s output
/// and frame it with [`encode_raw_frame`] and [`FrameFlags::ZSTD`].
pub fn encode_frame(msg: &Message, flags: FrameFlags) -> Result<Vec<u8>, WireError> {
    encode_with(msg, Some(flags))
}

/// Frames an already encoded (and possibly compressed) payload, refusing one longer than
/// [`MAX_FRAME_BYTES`].
pub fn encode_raw_frame(flags: FrameFlags, payload: &[u8]) -> Result<Vec<u8>, WireError> {
    let head = header(flags, payload.len())?;
    let mut out = Vec::with_capacity(FRAME_HEADER_LEN + payload.len());
    out.extend_from_slice(&head);
    out.extend_from_slice(payload);
    Ok(out)
}

/// How many message layouts this build decodes (`MessageV1`, `MessageV2`): protocol 3 added
/// its messages to `MessageV2`, so its frames are `MessageV2` too.
const MESSAGE_VERSIONS: u32 = 2;

/// Decodes a frame payload (already decompressed, if it was) into a message.
///
/// Refuses a payload longer than [`MAX_FRAME_BYTES`], a message of a protocol version this build
/// does not speak, one that would claim more than [`MAX_DECODED_BYTES`] of memory while decoding,
/// malformed or truncated bytes, and trailing bytes after the message. It does not check the
/// message's content: call [`Message::validate`] next.
pub fn decode_message(payload: &[u8]) -> Result<Message, WireError> {
    if payload.len() > MAX_FRAME_BYTES {
        return Err(too_large(payload.len(), MAX_FRAME_BYTES));
    }
    let decode_err = |e| WireError::from_decode(e, MAX_DECODED_BYTES);
    // The outer tag is the protocol version minus one; report a newer version as such rather
    // than as an unknown tag.
    let (tag, _): (u32, usize) =
        bincode::decode_from_slice(payload, config()).map_err(decode_err)?;
    if tag >= MESSAGE_VERSIONS {
        return Err(WireError::UnsupportedVersion {
            version: tag.saturating_add(1),
        });
    }
    let (msg, used) = bincode::decode_from_slice(payload, config()).map_err(decode_err)?;
    if used != payload.len() {
        return Err(WireError::TrailingBytes {
            count: payload.len() - used,
        });
    }
    Ok(msg)
}

/// Cuts frames out of the bytes of one stream, sans-IO: the driver feeds whatever it read with
/// [`push`](Self::push) and drains complete frames with [`poll_frame`](Self::poll_frame).
///
/// A frame's declared length is checked against the limit as soon as its header is complete,
/// before any of its payload is buffered, and the payload buffer grows with the bytes that
/// actually arrive (never past the declared length). The unfinished frame therefore never holds
/// more than `limit` + [`FRAME_HEADER_LEN`] bytes. Complete frames wait in a queue until polled,
/// so a driver that drains after every push holds at most one read's worth of them.
///
/// After an error the decoder is poisoned: frames completed before the bad header are still
/// returned, then every poll returns the error and further input is discarded. The stream
/// should be closed with [`WireError::code`].
#[derive(Debug)]
pub struct FrameDecoder {
    limit: usize,
    state: State,
    ready: VecDeque<Frame>,
}

#[derive(Debug)]
enum State {
    Header {
        buf: [u8; FRAME_HEADER_LEN],
        filled: usize,
    },
    Payload {
        flags: FrameFlags,
        len: usize,
        buf: Vec<u8>,
    },
    Failed(WireError),
}

impl State {
    const EMPTY_HEADER: Self = Self::Header {
        buf: [0; FRAME_HEADER_LEN],
        filled: 0,
    };
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameDecoder {
    /// A decoder accepting payloads up to [`MAX_FRAME_BYTES`].
    pub fn new() -> Self {
        Self::with_limit(MAX_FRAME_BYTES)
    }

    /// A decoder accepting payloads up to `limit` bytes (at most [`MAX_FRAME_BYTES`]; a larger
    /// limit is lowered to it), e.g. a small limit for a control stream.
    pub fn with_limit(limit: usize) -> Self {
        Self {
            limit: limit.min(MAX_FRAME_BYTES),
            state: State::EMPTY_HEADER,
            ready: VecDeque::new(),
        }
    }

    /// The payload limit in force.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes of the unfinished frame held (header included); at most
    /// `limit` + [`FRAME_HEADER_LEN`].
    pub fn buffered(&self) -> usize {
        match &self.state {
            State::Header { filled, .. } => *filled,
            State::Payload { buf, .. } => FRAME_HEADER_LEN + buf.len(),
            State::Failed(_) => 0,
        }
    }

    /// Feeds bytes read from the stream. Never fails: errors are reported by
    /// [`poll_frame`](Self::poll_frame).
    pub fn push(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match &mut self.state {
                State::Failed(_) => return,
                State::Header { buf, filled } => {
                    let take = (FRAME_HEADER_LEN - *filled).min(bytes.len());
                    buf[*filled..*filled + take].copy_from_slice(&bytes[..take]);
                    *filled += take;
                    bytes = &bytes[take..];
                    if *filled == FRAME_HEADER_LEN {
                        let head = *buf;
                        self.start_frame(head);
                    }
                }
                State::Payload { flags, len, buf } => {
                    let take = (*len - buf.len()).min(bytes.len());
                    if buf.capacity() - buf.len() < take {
                        // Grow geometrically for amortised copies, but never past the frame.
                        let target = (buf.len() + take)
                            .max(buf.capacity().saturating_mul(2))
                            .min(*len);
                        buf.reserve_exact(target - buf.len());
                    }
                    buf.extend_from_slice(&bytes[..take]);
                    bytes = &bytes[take..];
                    if buf.len() == *len {
                        let frame = Frame {
                            flags: *flags,
                            payload: mem::take(buf),
                        };
                        self.ready.push_back(frame);
                        self.state = State::EMPTY_HEADER;
                    }
                }
            }
        }
    }

    /// Checks a complete header and moves to its payload (or completes an empty frame).
    fn start_frame(&mut self, head: [u8; FRAME_HEADER_LEN]) {
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        if len > self.limit {
            self.state = State::Failed(too_large(len, self.limit));
            return;
        }
        let flags = match FrameFlags::from_bits(head[4]) {
            Ok(flags) => flags,
            Err(e) => {
                self.state = State::Failed(e);
                return;
            }
        };
        if len == 0 {
            self.ready.push_back(Frame {
                flags,
                payload: Vec::new(),
            });
            self.state = State::EMPTY_HEADER;
        } else {
            self.state = State::Payload {
                flags,
                len,
                buf: Vec::new(),
            };
        }
    }

    /// The next complete frame, `Ok(None)` when more bytes are needed, or the error that
    /// poisoned the decoder (once the frames completed before it are drained).
    pub fn poll_frame(&mut self) -> Result<Option<Frame>, WireError> {
        if let Some(frame) = self.ready.pop_front() {
            return Ok(Some(frame));
        }
        match &self.state {
            State::Failed(e) => Err(e.clone()),
            _ => Ok(None),
        }
    }

    /// Call when the stream has ended: an error if it ended inside a frame or the decoder is
    /// poisoned. Frames still queued are not affected; drain them with
    /// [`poll_frame`](Self::poll_frame).
    pub fn finish(&self) -> Result<(), WireError> {
        match &self.state {
            State::Failed(e) => Err(e.clone()),
            _ if self.buffered() > 0 => Err(WireError::TruncatedFrame {
                buffered: self.buffered(),
            }),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capacity(d: &FrameDecoder) -> usize {
        match &d.state {
            State::Payload { buf, .. } => buf.capacity(),
            _ => 0,
        }
    }

    #[test]
    fn payload_buffer_never_exceeds_declared_length() {
        let payload = vec![7u8; 10_000];
        let frame = encode_raw_frame(FrameFlags::NONE, &payload).expect("small frame");
        let mut d = FrameDecoder::with_limit(10_000);
        for chunk in frame.chunks(333) {
            d.push(chunk);
            assert!(capacity(&d) <= 10_000);
            assert!(d.buffered() <= 10_000 + FRAME_HEADER_LEN);
        }
        let got = d.poll_frame().expect("valid").expect("complete");
        assert_eq!(got.payload, payload);
        assert_eq!(d.poll_frame(), Ok(None));
    }

    #[test]
    fn huge_declared_length_allocates_nothing() {
        let mut d = FrameDecoder::new();
        d.push(&[0xff, 0xff, 0xff, 0xff, 0x00, 1, 2, 3]);
        assert_eq!(capacity(&d), 0);
        assert_eq!(d.buffered(), 0);
        assert!(matches!(
            d.poll_frame(),
            Err(WireError::FrameTooLarge { .. })
        ));
    }
}
