//! Protocol messages on QUIC streams: [`FramedSend`] frames (and optionally zstd-compresses)
//! messages onto a send stream, [`FramedRecv`] cuts, decompresses and decodes them from a receive
//! stream with every size bounded, and [`TrafficCounters`] counts the bytes both move.
//!
//! Compression and decompression run inline on the calling task: at most one
//! [`MAX_FRAME_BYTES`] payload at zstd level 3, a few milliseconds of CPU.
//!
//! Large payloads (catch-up batches) are compressed one by one ([`FrameFlags::ZSTD`]); after a
//! collection's large payload does not compress, its next ones skip zstd for a while
//! ([`IncompressibleBackoff`]). Small ones (live pushes: one write and its completion) go
//! through one zstd stream per QUIC stream, flushed after each frame
//! ([`FrameFlags::ZSTD_STREAM`]): each frame is compressed against the last
//! [`STREAM_WINDOW_LOG`] bits' worth of earlier frames, so the repeated collection, origin and
//! JSON field names of consecutive writes cost a few bytes instead of being sent whole every
//! time. Its state is allocated on the first such frame.
//!
//! When the session agreed a dictionary for the collection of the frame that starts a zstd
//! stream (protocol 3, [`SendDictionaries`]), the stream is primed with it
//! ([`FrameFlags::ZSTD_DICT`], the dictionary's id ahead of the compressed bytes): the first
//! writes after an idle period compress as well as later ones. The reader decodes only with a
//! dictionary its session accepted ([`RecvDictionaries`]); any other id is refused.

use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use officesync_protocol::wire::{
    decode_message, encode_frame, encode_message, encode_raw_frame, DictionaryId, ErrorCode, Frame,
    FrameDecoder, FrameFlags, Message, WireError, DICTIONARY_ID_LEN, MAX_FRAME_BYTES,
};
use quinn::{RecvStream, SendStream, VarInt};

use super::dictionary::{RecvDictionaries, SendDictionaries};
use super::error::TransportError;

/// Kept for compatibility: payloads shorter than this were never compressed on their own
/// (zstd's frame overhead eats the gain); they now go through the stream's zstd stream.
pub const COMPRESS_MIN_BYTES: usize = 256;

/// zstd level for payloads: fast, and most of the gain on JSON values.
pub const ZSTD_LEVEL: i32 = 3;

/// Most bytes taken from a stream per read.
const READ_CHUNK: usize = 64 << 10;

/// Payloads shorter than this go through the stream's zstd stream (when compressing);
/// longer ones are compressed on their own.
pub const STREAM_MAX_BYTES: usize = 16 << 10;

/// A zstd stream that is not primed with a dictionary and has carried fewer payload bytes
/// than this ends, and a primed one starts, when a frame of a collection with an agreed
/// dictionary comes.
pub const RESTART_UNPRIMED_BELOW: usize = 4 << 10;

/// Window of the per-stream zstd stream: 2^17 = 128 KiB of history (hundreds of writes),
/// about 1.3 MB of compressor (with the tables below) and 0.2 MiB of decompressor state per
/// stream.
pub const STREAM_WINDOW_LOG: u32 = 17;

/// Match-finder tables of the per-stream zstd stream, log2 of their entries: what zstd itself
/// picks at [`ZSTD_LEVEL`] for 128 KiB of input. Level 3's defaults (17 and 16) are sized for
/// a 2 MiB window and would hold 384 KiB more per compressor; a relay opens one for every
/// township whose session starts, all at once when a province starts.
const STREAM_HASH_LOG: u32 = 16;
/// See [`STREAM_HASH_LOG`].
const STREAM_CHAIN_LOG: u32 = 15;

/// A large payload counts as incompressible when zstd saves less than 1/this of it.
const INCOMPRESSIBLE_SAVING: usize = 32;

/// Most large payloads of a collection sent as they are, without trying zstd, after its
/// payloads came out incompressible again and again.
const MAX_SKIPPED: u32 = 16;

/// Large payloads of a collection whose values do not compress (images, archives, ciphertext)
/// are not compressed again and again: after each incompressible one, the next 1, 2, 4, …
/// [`MAX_SKIPPED`] go as they are, and one that compresses ends the backoff. Per collection,
/// since one bulk stream interleaves the batches of several.
#[derive(Debug, Default)]
pub(crate) struct IncompressibleBackoff {
    /// Collection → (large payloads still to send as they are, the next skip after a miss).
    skips: std::collections::HashMap<String, (u32, u32)>,
}

impl IncompressibleBackoff {
    /// Whether to try zstd on the next large payload of `collection` (always for a message
    /// of no collection).
    pub(crate) fn should_try(&mut self, collection: Option<&str>) -> bool {
        let Some((left, _)) = collection.and_then(|c| self.skips.get_mut(c)) else {
            return true;
        };
        if *left == 0 {
            return true;
        }
        *left -= 1;
        false
    }

    /// zstd made `packed` bytes of a large payload of `plain` bytes of `collection`.
    pub(crate) fn observed(&mut self, collection: Option<&str>, plain: usize, packed: usize) {
        let Some(c) = collection else { return };
        if packed + plain / INCOMPRESSIBLE_SAVING < plain {
            self.skips.remove(c);
            return;
        }
        let (left, next) = self.skips.entry(c.to_owned()).or_insert((0, 1));
        *left = *next;
        *next = (*next * 2).min(MAX_SKIPPED);
    }
}

/// Largest zstd window (2^23 = 8 MiB, one [`MAX_FRAME_BYTES`] payload) a peer's compressed
/// payload may ask the decoder to allocate. Level 3 on our payloads uses at most 2^21.
const ZSTD_WINDOW_LOG_MAX: u32 = 23;

/// Byte counters shared by the framed streams of one peer (or anything else that wants them).
/// Clones count into the same totals.
#[derive(Debug, Clone, Default)]
pub struct TrafficCounters {
    sent: Arc<AtomicU64>,
    received: Arc<AtomicU64>,
    /// zstd streams started primed with a dictionary: (sent, received).
    primed: Arc<(AtomicU64, AtomicU64)>,
}

impl TrafficCounters {
    /// Fresh counters at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes written to streams (frame headers included, after compression).
    pub fn bytes_sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Bytes read from streams (as received, before decompression).
    pub fn bytes_received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// zstd streams this side started primed with a dictionary ([`FrameFlags::ZSTD_DICT`]).
    pub fn primed_sent(&self) -> u64 {
        self.primed.0.load(Ordering::Relaxed)
    }

    /// zstd streams the peer started primed with a dictionary, decoded.
    pub fn primed_received(&self) -> u64 {
        self.primed.1.load(Ordering::Relaxed)
    }

    fn add_sent(&self, n: usize) {
        self.sent
            .fetch_add(u64::try_from(n).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    fn add_received(&self, n: usize) {
        self.received
            .fetch_add(u64::try_from(n).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
}

/// Sends [`Message`]s as frames on a QUIC send stream.
#[derive(Debug)]
pub struct FramedSend {
    stream: SendStream,
    counters: TrafficCounters,
    /// The stream's zstd compressor, created on the first small compressed frame.
    zstream: Option<StreamEncoder>,
    /// The dictionaries the peer accepted, to prime a new zstd stream with.
    dicts: Option<SendDictionaries>,
    /// The running zstd stream was primed with a dictionary, and the payload bytes it carried.
    zstream_use: (bool, usize),
    /// Collections whose large payloads lately did not compress.
    incompressible: IncompressibleBackoff,
}

/// The compressor of a stream's zstd stream.
struct StreamEncoder(zstd::stream::raw::Encoder<'static>);

impl std::fmt::Debug for StreamEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StreamEncoder")
    }
}

/// The decompressor of a stream's zstd stream.
struct StreamDecoder(zstd::stream::raw::Decoder<'static>);

impl std::fmt::Debug for StreamDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StreamDecoder")
    }
}

impl FramedSend {
    /// Frames messages onto `stream`, counting into fresh [`TrafficCounters`].
    pub fn new(stream: SendStream) -> Self {
        Self {
            stream,
            counters: TrafficCounters::new(),
            zstream: None,
            dicts: None,
            zstream_use: (false, 0),
            incompressible: IncompressibleBackoff::default(),
        }
    }

    /// Counts into `counters` (e.g. the peer's) instead.
    pub fn with_counters(mut self, counters: TrafficCounters) -> Self {
        self.counters = counters;
        self
    }

    /// Primes each new zstd stream with the dictionary agreed for the collection of its first
    /// frame, if any (only dictionaries the peer accepted may be in `dicts`).
    pub fn with_dictionaries(mut self, dicts: SendDictionaries) -> Self {
        self.dicts = Some(dicts);
        self
    }

    /// The counters this stream counts into.
    pub fn counters(&self) -> &TrafficCounters {
        &self.counters
    }

    /// Sends one message as one frame and returns the bytes written (header included).
    ///
    /// With `compress`, a payload shorter than [`STREAM_MAX_BYTES`] goes through the stream's
    /// zstd stream ([`FrameFlags::ZSTD_STREAM`]); a longer one is zstd-compressed on its own
    /// (level [`ZSTD_LEVEL`], flag [`FrameFlags::ZSTD`]) when that makes it smaller, otherwise
    /// it goes as it is (and the collection's next few go as they are without trying). A
    /// message whose payload exceeds [`MAX_FRAME_BYTES`] is refused with
    /// [`TransportError::Encode`] before anything is written. Waits for flow-control credit,
    /// which is the backpressure of a slow peer. Not cancel-safe (nor is a half-written
    /// frame): the stream is only usable if every call runs to completion.
    pub async fn send(&mut self, msg: &Message, compress: bool) -> Result<usize, TransportError> {
        let frame = self.encode(msg, compress)?;
        self.write_encoded(&frame).await?;
        Ok(frame.len())
    }

    /// The frame [`FramedSend::send`] would write for `msg` (preceded by the end of the
    /// running zstd stream when a primed one replaces it), to be written (possibly in parts,
    /// e.g. paced) with [`FramedSend::write_encoded`], in order and before any other frame:
    /// with `compress` it advances the stream's zstd stream.
    pub fn encode(&mut self, msg: &Message, compress: bool) -> Result<Vec<u8>, TransportError> {
        if !compress {
            return encode_frame(msg, FrameFlags::NONE).map_err(TransportError::Encode);
        }
        let payload = encode_message(msg).map_err(TransportError::Encode)?;
        if payload.len() < STREAM_MAX_BYTES {
            let dict = self
                .dicts
                .as_ref()
                .zip(msg.collection())
                .and_then(|(d, c)| d.get(c));
            let (out, primed) =
                small_frames(&mut self.zstream, &mut self.zstream_use, dict, &payload)?;
            if primed {
                self.counters.primed.0.fetch_add(1, Ordering::Relaxed);
            }
            return Ok(out);
        }
        let collection = msg.collection();
        // Compressed only when zstd is tried (see `IncompressibleBackoff`) and makes it smaller.
        let mut packed = None;
        if self.incompressible.should_try(collection) {
            let p = zstd::bulk::compress(&payload, ZSTD_LEVEL).map_err(|e| {
                TransportError::Compress {
                    detail: e.to_string(),
                }
            })?;
            self.incompressible
                .observed(collection, payload.len(), p.len());
            packed = Some(p).filter(|p| p.len() < payload.len());
        }
        match &packed {
            Some(p) => encode_raw_frame(FrameFlags::ZSTD, p),
            None => encode_raw_frame(FrameFlags::NONE, &payload),
        }
        .map_err(TransportError::Encode)
    }

    /// Writes (part of) a frame made by [`FramedSend::encode`], counting it as sent. Waits
    /// for flow-control credit.
    pub async fn write_encoded(&mut self, bytes: &[u8]) -> Result<(), TransportError> {
        self.stream.write_all(bytes).await?;
        self.counters.add_sent(bytes.len());
        Ok(())
    }

    /// True while this stream keeps a zstd compressor (it sent a compressed frame since the
    /// last [`FramedSend::end_compression`]).
    pub fn holds_compressor(&self) -> bool {
        self.zstream.is_some()
    }

    /// Ends the stream's zstd stream and frees its compressor: sends the end of the zstd frame
    /// as a [`FrameFlags::ZSTD_STREAM`] frame that decodes to nothing (a reader of protocol 2
    /// or later drops its decompressor on it). The next compressed frame starts a new zstd
    /// stream. Does nothing without a compressor.
    pub async fn end_compression(&mut self) -> Result<(), TransportError> {
        let Some(mut enc) = self.zstream.take() else {
            return Ok(());
        };
        let end = enc.end()?;
        let frame =
            encode_raw_frame(FrameFlags::ZSTD_STREAM, &end).map_err(TransportError::Encode)?;
        self.stream.write_all(&frame).await?;
        self.counters.add_sent(frame.len());
        Ok(())
    }

    /// Ends the stream gracefully once everything written is delivered.
    pub fn finish(&mut self) -> Result<(), TransportError> {
        self.stream.finish().map_err(|_| TransportError::Closed)
    }

    /// Abandons the stream, telling the peer why with `code`.
    pub fn reset(&mut self, code: ErrorCode) {
        // Already finished or reset: nothing left to abandon.
        let _ = self.stream.reset(VarInt::from_u32(code.as_u32()));
    }

    /// The underlying stream.
    pub fn stream_mut(&mut self) -> &mut SendStream {
        &mut self.stream
    }

    /// Gives back the underlying stream.
    pub fn into_inner(self) -> SendStream {
        self.stream
    }
}

/// The frames of a small `payload` through the zstd stream `zstream` (`used`: whether it was
/// primed, and the payload bytes it carried), and whether a primed stream started. A new
/// stream is primed with `dict` (the agreed dictionary of the payload's collection) when
/// given; a young stream that is not primed gives way to one that is — its end frame first
/// — as it has little history to lose (it began, say, with a status report just before a
/// burst of writes).
fn small_frames(
    zstream: &mut Option<StreamEncoder>,
    used: &mut (bool, usize),
    dict: Option<(DictionaryId, Arc<[u8]>)>,
    payload: &[u8],
) -> Result<(Vec<u8>, bool), TransportError> {
    let mut out = Vec::new();
    let dict = match dict {
        Some(d) if zstream.is_none() => Some(d),
        Some(d) if !used.0 && used.1 < RESTART_UNPRIMED_BELOW => {
            if let Some(mut enc) = zstream.take() {
                let end = enc.end()?;
                out = encode_raw_frame(FrameFlags::ZSTD_STREAM, &end)
                    .map_err(TransportError::Encode)?;
            }
            Some(d)
        }
        _ => None,
    };
    let primed = zstream.is_none() && dict.is_some();
    if zstream.is_none() {
        *used = (primed, 0);
    }
    used.1 = used.1.saturating_add(payload.len());
    out.extend_from_slice(&stream_frame(zstream, dict, payload)?);
    Ok((out, primed))
}

/// The [`FrameFlags::ZSTD_STREAM`] frame of `payload`, continuing `zstream` or starting it
/// (primed with `dict` when given: [`FrameFlags::ZSTD_DICT`], the id ahead of the zstd bytes).
fn stream_frame(
    zstream: &mut Option<StreamEncoder>,
    dict: Option<(DictionaryId, Arc<[u8]>)>,
    payload: &[u8],
) -> Result<Vec<u8>, TransportError> {
    let dict = dict.filter(|_| zstream.is_none());
    let (flags, mut packed) = match dict {
        Some((id, bytes)) => {
            *zstream = Some(StreamEncoder::with_dictionary(&bytes)?);
            (
                FrameFlags::ZSTD_STREAM.with(FrameFlags::ZSTD_DICT),
                id.0.to_vec(),
            )
        }
        None => (FrameFlags::ZSTD_STREAM, Vec::new()),
    };
    let enc = match zstream {
        Some(enc) => enc,
        none => none.insert(StreamEncoder::new()?),
    };
    packed.extend_from_slice(&enc.compress(payload)?);
    encode_raw_frame(flags, &packed).map_err(TransportError::Encode)
}

/// Receives [`Message`]s from a QUIC receive stream, every size bounded.
///
/// A frame longer than the limit is refused as soon as its header arrives, before its payload
/// is buffered; a compressed payload is refused as soon as it decompresses past the limit. On
/// any invalid input the stream is stopped with the matching [`ErrorCode`] and every later
/// call returns [`TransportError::Closed`]. Messages are decoded but not validated: call
/// [`Message::validate`] with the configured value limit.
#[derive(Debug)]
pub struct FramedRecv {
    stream: RecvStream,
    decoder: FrameDecoder,
    counters: TrafficCounters,
    failed: bool,
    /// The stream's zstd decompressor, created on the first [`FrameFlags::ZSTD_STREAM`] frame.
    zstream: Option<StreamDecoder>,
    /// The dictionaries the session accepted from the peer (none: a primed frame is refused).
    dicts: RecvDictionaries,
}

impl FramedRecv {
    /// Reads frames of up to [`MAX_FRAME_BYTES`] from `stream`, counting into fresh
    /// [`TrafficCounters`].
    pub fn new(stream: RecvStream) -> Self {
        Self {
            stream,
            decoder: FrameDecoder::with_limit(MAX_FRAME_BYTES),
            counters: TrafficCounters::new(),
            failed: false,
            zstream: None,
            dicts: RecvDictionaries::new(),
        }
    }

    /// Decodes frames primed with the dictionaries in `dicts` (those the session accepted).
    pub fn with_dictionaries(mut self, dicts: RecvDictionaries) -> Self {
        self.dicts = dicts;
        self
    }

    /// Accepts payloads of at most `limit` bytes (compressed or not; capped at
    /// [`MAX_FRAME_BYTES`]), e.g. a small limit on a control stream.
    pub fn with_limit(mut self, limit: usize) -> Self {
        self.decoder = FrameDecoder::with_limit(limit);
        self
    }

    /// Counts into `counters` (e.g. the peer's) instead.
    pub fn with_counters(mut self, counters: TrafficCounters) -> Self {
        self.counters = counters;
        self
    }

    /// The counters this stream counts into.
    pub fn counters(&self) -> &TrafficCounters {
        &self.counters
    }

    /// The payload limit in force.
    pub fn limit(&self) -> usize {
        self.decoder.limit()
    }

    /// The next message; `Ok(None)` when the peer finished the stream cleanly between frames.
    pub async fn recv(&mut self) -> Result<Option<Message>, TransportError> {
        loop {
            if self.failed {
                return Err(TransportError::Closed);
            }
            match self.decoder.poll_frame() {
                Ok(Some(frame)) => {
                    let limit = self.decoder.limit();
                    if frame.flags.is_zstd_dict() {
                        self.counters.primed.1.fetch_add(1, Ordering::Relaxed);
                    }
                    match decode(frame, limit, &mut self.zstream, &self.dicts) {
                        Ok(Some(msg)) => return Ok(Some(msg)),
                        // The end of the peer's zstd stream: its decompressor is gone.
                        Ok(None) => continue,
                        Err(e) => return Err(self.fail(e)),
                    }
                }
                Ok(None) => {}
                Err(e) => return Err(self.fail(e.into())),
            }
            match self.stream.read_chunk(READ_CHUNK, true).await {
                Ok(Some(chunk)) => {
                    self.counters.add_received(chunk.bytes.len());
                    self.decoder.push(&chunk.bytes);
                }
                Ok(None) => {
                    return match self.decoder.finish() {
                        Ok(()) => Ok(None),
                        Err(e) => Err(self.fail(e.into())),
                    };
                }
                Err(e) => {
                    self.failed = true;
                    return Err(e.into());
                }
            }
        }
    }

    /// Stops the stream with the error's code and poisons this reader.
    fn fail(&mut self, err: TransportError) -> TransportError {
        self.failed = true;
        if let Some(code) = err.code() {
            // Already stopped or finished: the peer has nothing more to send anyway.
            let _ = self.stream.stop(VarInt::from_u32(code.as_u32()));
        }
        err
    }

    /// The underlying stream.
    pub fn stream_mut(&mut self) -> &mut RecvStream {
        &mut self.stream
    }

    /// Gives back the underlying stream (bytes buffered in the decoder are lost).
    pub fn into_inner(self) -> RecvStream {
        self.stream
    }
}

/// Decompresses (if flagged) and decodes one frame's payload; `zstream` is the stream's zstd
/// stream decompressor (created when first needed, primed with one of `dicts` when the frame
/// says so).
fn decode(
    frame: Frame,
    limit: usize,
    zstream: &mut Option<StreamDecoder>,
    dicts: &RecvDictionaries,
) -> Result<Option<Message>, TransportError> {
    let refuse = |detail: String| TransportError::Decompress { detail };
    if frame.flags.is_zstd_dict() && !frame.flags.is_zstd_stream() {
        return Err(refuse("a dictionary flag without zstd-stream".into()));
    }
    if frame.flags.is_zstd_stream() {
        if frame.flags.is_zstd() {
            return Err(refuse("frame flags both zstd and zstd-stream".into()));
        }
        let mut data = &frame.payload[..];
        if frame.flags.is_zstd_dict() {
            if zstream.is_some() {
                return Err(refuse(
                    "a dictionary frame inside a running zstd stream".into(),
                ));
            }
            let Some((id, rest)) = data.split_first_chunk::<DICTIONARY_ID_LEN>() else {
                return Err(refuse("a dictionary frame shorter than its id".into()));
            };
            let id = DictionaryId(*id);
            let Some(dict) = dicts.get(&id) else {
                return Err(refuse(format!("unknown dictionary {id}")));
            };
            *zstream = Some(StreamDecoder::with_dictionary(&dict)?);
            data = rest;
        }
        if zstream.is_none() {
            *zstream = Some(StreamDecoder::new()?);
        }
        let payload = match zstream.as_mut() {
            Some(dec) => dec.decompress(data, limit)?,
            None => Vec::new(), // set just above
        };
        if payload.is_empty() {
            // The peer ended its zstd stream (it went idle): free the decompressor; the next
            // frame starts a new stream.
            *zstream = None;
            return Ok(None);
        }
        Ok(Some(decode_message(&payload)?))
    } else if frame.flags.is_zstd() {
        let payload = decompress(&frame.payload, limit)?;
        Ok(Some(decode_message(&payload)?))
    } else {
        Ok(Some(decode_message(&frame.payload)?))
    }
}

impl StreamEncoder {
    fn new() -> Result<Self, TransportError> {
        Self::with_dictionary(&[])
    }

    /// A stream primed with `dict` (none when empty).
    fn with_dictionary(dict: &[u8]) -> Result<Self, TransportError> {
        let err = |e: std::io::Error| TransportError::Compress {
            detail: e.to_string(),
        };
        let mut enc = zstd::stream::raw::Encoder::with_dictionary(ZSTD_LEVEL, dict).map_err(err)?;
        for parameter in Self::parameters() {
            enc.set_parameter(parameter).map_err(err)?;
        }
        Ok(Self(enc))
    }

    /// The zstd parameters of every stream, on top of [`ZSTD_LEVEL`].
    fn parameters() -> [zstd::stream::raw::CParameter; 5] {
        use zstd::stream::raw::CParameter;
        [
            // The frame names its dictionary itself (ahead of the zstd bytes).
            CParameter::DictIdFlag(false),
            CParameter::WindowLog(STREAM_WINDOW_LOG),
            CParameter::HashLog(STREAM_HASH_LOG),
            CParameter::ChainLog(STREAM_CHAIN_LOG),
            // No checksum or size per flush: the frame never ends, and QUIC already checks
            // bytes.
            CParameter::ChecksumFlag(false),
        ]
    }

    /// Compresses `payload` as the next part of the stream and flushes it, so the returned
    /// bytes decode completely once every earlier part has been decoded.
    fn compress(&mut self, payload: &[u8]) -> Result<Vec<u8>, TransportError> {
        use zstd::stream::raw::{InBuffer, Operation, OutBuffer};
        let err = |e: std::io::Error| TransportError::Compress {
            detail: e.to_string(),
        };
        let mut out: Vec<u8> = Vec::with_capacity(payload.len() + payload.len() / 8 + 64);
        let mut input = InBuffer::around(payload);
        loop {
            if out.capacity() - out.len() < 64 {
                out.reserve(payload.len() / 4 + 256);
            }
            let pos = out.len();
            let mut output = OutBuffer::around_pos(&mut out, pos);
            if input.pos() < payload.len() {
                self.0.run(&mut input, &mut output).map_err(err)?;
            } else if self.0.flush(&mut output).map_err(err)? == 0 {
                break;
            }
        }
        Ok(out)
    }
}

impl StreamEncoder {
    /// Ends the zstd frame: the bytes that close it (no more input).
    fn end(&mut self) -> Result<Vec<u8>, TransportError> {
        use zstd::stream::raw::{Operation, OutBuffer};
        let err = |e: std::io::Error| TransportError::Compress {
            detail: e.to_string(),
        };
        let mut out: Vec<u8> = Vec::with_capacity(64);
        loop {
            let pos = out.len();
            out.reserve(64);
            let mut output = OutBuffer::around_pos(&mut out, pos);
            if self.0.finish(&mut output, true).map_err(err)? == 0 {
                break;
            }
        }
        Ok(out)
    }
}

impl StreamDecoder {
    fn new() -> Result<Self, TransportError> {
        Self::with_dictionary(&[])
    }

    /// A decoder primed with `dict` (none when empty); a malformed dictionary is refused.
    fn with_dictionary(dict: &[u8]) -> Result<Self, TransportError> {
        let bad = |e: std::io::Error| TransportError::Decompress {
            detail: e.to_string(),
        };
        let mut dec = zstd::stream::raw::Decoder::with_dictionary(dict).map_err(bad)?;
        // A peer's stream may not ask for more history than ours uses.
        dec.set_parameter(zstd::stream::raw::DParameter::WindowLogMax(
            STREAM_WINDOW_LOG,
        ))
        .map_err(bad)?;
        Ok(Self(dec))
    }

    /// Decodes the next part of the stream, refusing one that would exceed `limit` bytes.
    fn decompress(&mut self, data: &[u8], limit: usize) -> Result<Vec<u8>, TransportError> {
        use zstd::stream::raw::{InBuffer, Operation, OutBuffer};
        let bad = |e: std::io::Error| TransportError::Decompress {
            detail: e.to_string(),
        };
        let cap = limit.saturating_add(1);
        let mut out: Vec<u8> = Vec::with_capacity(data.len().saturating_mul(4).clamp(256, cap));
        let mut input = InBuffer::around(data);
        loop {
            if out.len() == out.capacity() {
                if out.len() >= cap {
                    return Err(TransportError::Decode(WireError::FrameTooLarge {
                        len: u64::try_from(out.len()).unwrap_or(u64::MAX),
                        limit,
                    }));
                }
                let grow = out.len().max(256).min(cap - out.len());
                out.reserve_exact(grow);
            }
            let pos = out.len();
            let mut output = OutBuffer::around_pos(&mut out, pos);
            self.0.run(&mut input, &mut output).map_err(bad)?;
            // `output` borrows `out` only up to here (it has no destructor).
            let full = output.pos() == output.capacity();
            // Done when every input byte is consumed and the decoder had room to spare: a
            // flushed part leaves nothing buffered inside.
            if input.pos() == data.len() && !full {
                break;
            }
        }
        if out.len() > limit {
            return Err(TransportError::Decode(WireError::FrameTooLarge {
                len: u64::try_from(out.len()).unwrap_or(u64::MAX),
                limit,
            }));
        }
        Ok(out)
    }
}

/// Decompresses a zstd payload, refusing one that would exceed `limit` bytes. Memory is bounded
/// by `limit` plus a window of at most 2^[`ZSTD_WINDOW_LOG_MAX`] bytes, whatever the payload
/// claims; the output grows only as bytes are actually produced.
pub(super) fn decompress(data: &[u8], limit: usize) -> Result<Vec<u8>, TransportError> {
    let bad = |e: std::io::Error| TransportError::Decompress {
        detail: e.to_string(),
    };
    let too_large = |len: u64| TransportError::Decode(WireError::FrameTooLarge { len, limit });
    let limit64 = u64::try_from(limit).unwrap_or(u64::MAX);
    // The declared size is only a hint (a peer may lie), but a declared excess is refused early.
    let declared = zstd::zstd_safe::get_frame_content_size(data).ok().flatten();
    if let Some(n) = declared.filter(|&n| n > limit64) {
        return Err(too_large(n));
    }
    let mut decoder = zstd::stream::read::Decoder::with_buffer(data).map_err(bad)?;
    decoder.window_log_max(ZSTD_WINDOW_LOG_MAX).map_err(bad)?;
    let hint = declared.map_or(0, |n| usize::try_from(n).unwrap_or(0));
    let mut out = Vec::with_capacity(hint.min(limit));
    decoder
        .take(limit64.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(bad)?;
    if out.len() > limit {
        return Err(too_large(u64::try_from(out.len()).unwrap_or(u64::MAX)));
    }
    Ok(out)
}

/// Fuzz entry point (used by `daemon/fuzz` and its corpus replay test): cuts `data` into frames
/// as one receive stream would, then decompresses (either zstd mode, with the stream's state)
/// and decodes each, checking that nothing decodes past [`MAX_FRAME_BYTES`] and that every
/// refusal carries an error code. Panics only when an invariant breaks.
#[doc(hidden)]
pub fn fuzz_recv(data: &[u8]) {
    let mut decoder = FrameDecoder::with_limit(MAX_FRAME_BYTES);
    let mut zstream = None;
    let dicts = RecvDictionaries::new();
    // Chunk by the first byte, so frames straddle reads at every offset.
    let Some((&head, rest)) = data.split_first() else {
        return;
    };
    for piece in rest.chunks(usize::from(head) + 1) {
        decoder.push(piece);
        loop {
            match decoder.poll_frame() {
                Ok(Some(frame)) => match decode(frame, MAX_FRAME_BYTES, &mut zstream, &dicts) {
                    Ok(None) => assert!(zstream.is_none(), "an ended zstd stream kept"),
                    Ok(Some(msg)) => {
                        let payload = encode_message(&msg).expect("a decoded message re-encodes");
                        assert!(payload.len() <= MAX_FRAME_BYTES);
                        let _ = msg.validate(MAX_FRAME_BYTES);
                    }
                    Err(e) => assert!(e.code().is_some(), "refusal without a code: {e}"),
                },
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
}

/// Fuzz seed helper (used by the corpus replay test): compresses `payloads` as successive
/// `ZSTD_STREAM` frame payloads sharing one compressor, exactly as [`FramedSend`] does.
#[doc(hidden)]
pub fn fuzz_stream_parts(payloads: &[Vec<u8>]) -> Result<Vec<Vec<u8>>, TransportError> {
    let mut enc = StreamEncoder::new()?;
    payloads.iter().map(|p| enc.compress(p)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn none() -> RecvDictionaries {
        RecvDictionaries::new()
    }

    /// Bytes a zstd context holds after compressing a few small payloads as one stream
    /// flushed after each, with `parameters` on top of [`ZSTD_LEVEL`].
    fn compressor_bytes(parameters: &[zstd::stream::raw::CParameter]) -> usize {
        use zstd::zstd_safe::{CCtx, InBuffer, OutBuffer};
        let mut cctx = CCtx::create();
        cctx.set_parameter(zstd::stream::raw::CParameter::CompressionLevel(ZSTD_LEVEL))
            .expect("level");
        for p in parameters {
            cctx.set_parameter(*p).expect("parameter");
        }
        let mut out = vec![0u8; 4096];
        for i in 0..8u32 {
            let payload = format!("{{\"office\":\"hefei\",\"seq\":{i},\"note\":\"all clear\"}}");
            let mut input = InBuffer::around(payload.as_bytes());
            let mut output = OutBuffer::around(&mut out[..]);
            cctx.compress_stream2(
                &mut output,
                &mut input,
                zstd::zstd_safe::zstd_sys::ZSTD_EndDirective::ZSTD_e_flush,
            )
            .expect("compress");
        }
        cctx.sizeof()
    }

    #[test]
    fn a_stream_compressor_is_sized_for_its_window() {
        use zstd::stream::raw::CParameter;
        let ours = compressor_bytes(&StreamEncoder::parameters());
        // The level's own tables with the same window: what the stream held before.
        let level_tables = compressor_bytes(&[CParameter::WindowLog(STREAM_WINDOW_LOG)]);
        assert!(
            ours + (300 << 10) < level_tables,
            "ours {ours} B, the level's tables {level_tables} B"
        );
    }

    #[test]
    fn an_ended_stream_frees_both_sides_and_a_new_one_follows() {
        let mut zstream = None;
        let frame_of = |packed: Vec<u8>| Frame {
            flags: FrameFlags::ZSTD_STREAM,
            payload: packed,
        };
        let msg = |seq: u64| -> Message {
            officesync_protocol::wire::Heartbeat { now_ms: 7, seq }.into()
        };
        let mut enc = StreamEncoder::new().expect("encoder");
        for seq in 0..3 {
            let packed = enc
                .compress(&encode_message(&msg(seq)).expect("encode"))
                .expect("zstd");
            let got =
                decode(frame_of(packed), MAX_FRAME_BYTES, &mut zstream, &none()).expect("decode");
            assert_eq!(got, Some(msg(seq)));
        }
        assert!(zstream.is_some());
        // The sender goes idle: the end of its zstd frame decodes to nothing and frees the
        // reader's decompressor.
        let end = enc.end().expect("end");
        assert!(!end.is_empty());
        let got =
            decode(frame_of(end), MAX_FRAME_BYTES, &mut zstream, &none()).expect("decode end");
        assert_eq!(got, None);
        assert!(zstream.is_none());
        // A new compressor's first frame decodes with a new decompressor.
        let mut enc = StreamEncoder::new().expect("encoder");
        let packed = enc
            .compress(&encode_message(&msg(9)).expect("encode"))
            .expect("zstd");
        let got = decode(frame_of(packed), MAX_FRAME_BYTES, &mut zstream, &none()).expect("decode");
        assert_eq!(got, Some(msg(9)));
    }

    #[test]
    fn stream_parts_round_trip_and_shrink_with_history() {
        let mut enc = StreamEncoder::new().expect("encoder");
        let mut dec = StreamDecoder::new().expect("decoder");
        let mut sizes = Vec::new();
        for i in 0..50u32 {
            let payload = format!(
                r#"{{"office":"hefei","river":"Nanfei","level_m":{}.{:02},"trend":"rising","seq":{i}}}"#,
                10 + i % 7,
                i * 13 % 100
            )
            .into_bytes();
            let packed = enc.compress(&payload).expect("compress");
            sizes.push(packed.len());
            let back = dec.decompress(&packed, 1 << 20).expect("decompress");
            assert_eq!(back, payload);
        }
        assert!(sizes[49] * 2 < sizes[0], "history does not help: {sizes:?}");
        // Empty and incompressible parts keep the stream in step too.
        for payload in [
            Vec::new(),
            (0..5_000u32).map(|i| (i * 7919 % 251) as u8).collect(),
        ] {
            let packed = enc.compress(&payload).expect("compress");
            assert_eq!(
                dec.decompress(&packed, 1 << 20).expect("decompress"),
                payload
            );
        }
    }

    /// A live write of a JSON value as the session sends it: a batch of one version.
    fn json_write(i: u32) -> Message {
        use officesync_protocol::{Dot, Hlc, ReplicaId, Version, VersionVector};
        let origin = ReplicaId::new("general-office", 1).expect("replica id");
        let value = format!(
            r#"{{"office":"hefei","river":"Nanfei","station":"Hefei-{:02}","level_m":{}.{:02},"trend":"rising","reporter":"Zhang Wei","seq":{i}}}"#,
            i % 40,
            10 + i % 7,
            i * 13 % 100
        );
        officesync_protocol::wire::Batch {
            collection: "situation".into(),
            origin: origin.clone(),
            versions: vec![Version {
                collection: "situation".into(),
                key: format!("k{i:015}"),
                dot: Dot::new(origin, u64::from(i) + 1),
                hlc: Hlc {
                    ms: 1_700_000_000_000 + u64::from(i),
                    logical: 0,
                },
                context: VersionVector::new(),
                value: Some(value.into_bytes()),
                author: Some("general-office".into()),
                signature: None,
            }],
        }
        .into()
    }

    fn trained() -> (DictionaryId, Arc<[u8]>) {
        let samples: Vec<Vec<u8>> = (1_000..3_000)
            .map(|i| match json_write(i) {
                Message::V2(officesync_protocol::wire::MessageV2::Batch(mut b)) => {
                    b.versions.remove(0).value.unwrap_or_default()
                }
                _ => Vec::new(),
            })
            .collect();
        let dict = super::super::dictionary::train(&samples).expect("trained");
        (DictionaryId::of(&dict), dict.into())
    }

    /// Cuts `frame` (header and payload) into a [`Frame`].
    fn cut(frame: &[u8]) -> Frame {
        let mut d = FrameDecoder::new();
        d.push(frame);
        d.poll_frame().expect("valid").expect("complete")
    }

    #[test]
    fn a_primed_stream_decodes_with_the_accepted_dictionary_and_is_smaller() {
        let (id, dict) = trained();
        let payload = |i| encode_message(&json_write(i)).expect("encode");
        // Without a dictionary: the first write after idle compresses with no context.
        let plain = stream_frame(&mut None, None, &payload(0)).expect("frame");
        let mut enc = None;
        let primed = stream_frame(&mut enc, Some((id, dict.clone())), &payload(0)).expect("frame");
        let f = cut(&primed);
        assert!(f.flags.is_zstd_stream() && f.flags.is_zstd_dict());
        assert_eq!(f.payload[..DICTIONARY_ID_LEN], id.0);
        assert!(
            primed.len() + 40 < plain.len(),
            "primed {} vs plain {}",
            primed.len(),
            plain.len()
        );
        let accepted = RecvDictionaries::new();
        accepted.insert(id, dict.to_vec());
        let mut zstream = None;
        let got = decode(f, MAX_FRAME_BYTES, &mut zstream, &accepted).expect("decode");
        assert_eq!(got, Some(json_write(0)));
        // The stream goes on without naming the dictionary again.
        for i in 1..5 {
            let next = cut(&stream_frame(&mut enc, None, &payload(i)).expect("frame"));
            assert!(!next.flags.is_zstd_dict());
            let got = decode(next, MAX_FRAME_BYTES, &mut zstream, &accepted).expect("decode");
            assert_eq!(got, Some(json_write(i)));
        }
    }

    #[test]
    fn a_frame_primed_with_a_dictionary_not_accepted_is_refused() {
        let (id, dict) = trained();
        let primed = stream_frame(&mut None, Some((id, dict)), &[1, 2, 3]).expect("frame");
        let other = RecvDictionaries::new();
        other.insert(DictionaryId([7; 8]), vec![7; 100]);
        for held in [RecvDictionaries::new(), other] {
            let e = decode(cut(&primed), MAX_FRAME_BYTES, &mut None, &held).expect_err("refused");
            assert!(e.to_string().contains("unknown dictionary"), "{e}");
            assert_eq!(e.code(), Some(ErrorCode::Malformed));
        }
    }

    #[test]
    fn dictionary_flags_out_of_place_are_refused() {
        let (id, dict) = trained();
        let accepted = RecvDictionaries::new();
        accepted.insert(id, dict.to_vec());
        // Inside a running stream.
        let mut zstream = None;
        let first = stream_frame(&mut None, None, &[1]).expect("frame");
        decode(cut(&first), MAX_FRAME_BYTES, &mut zstream, &accepted).ok();
        let primed = stream_frame(&mut None, Some((id, dict)), &[1]).expect("frame");
        assert!(decode(cut(&primed), MAX_FRAME_BYTES, &mut zstream, &accepted).is_err());
        // Without the stream flag, or shorter than the id.
        for (flags, payload) in [
            (FrameFlags::ZSTD_DICT, id.0.to_vec()),
            (FrameFlags::ZSTD.with(FrameFlags::ZSTD_DICT), id.0.to_vec()),
            (
                FrameFlags::ZSTD_STREAM.with(FrameFlags::ZSTD_DICT),
                vec![1, 2],
            ),
        ] {
            let frame = Frame { flags, payload };
            let e = decode(frame, MAX_FRAME_BYTES, &mut None, &accepted).expect_err("refused");
            assert_eq!(e.code(), Some(ErrorCode::Malformed));
        }
    }

    #[test]
    fn a_malformed_dictionary_is_an_error_not_a_panic() {
        // zstd's dictionary magic, then garbage where its entropy tables belong.
        let mut bad = vec![0x37, 0xa4, 0x30, 0xec, 1, 0, 0, 0];
        bad.extend((0..600u32).map(|i| (i * 7919 % 251) as u8));
        let id = DictionaryId::of(&bad);
        let held = RecvDictionaries::new();
        held.insert(id, bad);
        let mut payload = id.0.to_vec();
        payload.extend_from_slice(&[0x28, 0xb5, 0x2f, 0xfd, 0, 0x58, 1, 2, 3, 4]);
        let frame = Frame {
            flags: FrameFlags::ZSTD_STREAM.with(FrameFlags::ZSTD_DICT),
            payload,
        };
        let e = decode(frame, MAX_FRAME_BYTES, &mut None, &held).expect_err("refused");
        assert_eq!(e.code(), Some(ErrorCode::Malformed));
    }

    /// Every frame in `bytes`.
    fn cut_all(bytes: &[u8]) -> Vec<Frame> {
        let mut d = FrameDecoder::new();
        d.push(bytes);
        std::iter::from_fn(|| d.poll_frame().expect("valid")).collect()
    }

    #[test]
    fn a_young_unprimed_stream_gives_way_to_a_primed_one() {
        let (id, dict) = trained();
        let accepted = RecvDictionaries::new();
        accepted.insert(id, dict.to_vec());
        let (mut enc, mut used, mut dec) = (None, (false, 0), None);
        let receive = |bytes: &[u8], dec: &mut Option<StreamDecoder>| -> Vec<Message> {
            cut_all(bytes)
                .into_iter()
                .filter_map(|f| decode(f, MAX_FRAME_BYTES, dec, &accepted).expect("decode"))
                .collect()
        };
        let status: Message = officesync_protocol::wire::Heartbeat { now_ms: 1, seq: 1 }.into();
        let payload = |m: &Message| encode_message(m).expect("encode");
        // A frame of a collection without a dictionary starts a plain stream...
        let (out, primed) = small_frames(&mut enc, &mut used, None, &payload(&status)).expect("f");
        assert!(!primed);
        assert_eq!(receive(&out, &mut dec), vec![status.clone()]);
        // ... which ends when a write of a collection with one follows: a primed one starts.
        let d = Some((id, dict.clone()));
        let (out, primed) =
            small_frames(&mut enc, &mut used, d, &payload(&json_write(1))).expect("frames");
        assert!(primed);
        let frames = cut_all(&out);
        assert_eq!(
            frames.len(),
            2,
            "the end of the plain stream, then the primed frame"
        );
        assert!(frames[1].flags.is_zstd_dict());
        assert_eq!(receive(&out, &mut dec), vec![json_write(1)]);
        // The primed stream goes on, whatever comes.
        for m in [status.clone(), json_write(2)] {
            let d = Some((id, dict.clone()));
            let (out, primed) = small_frames(&mut enc, &mut used, d, &payload(&m)).expect("f");
            assert!(!primed && cut_all(&out).len() == 1);
            assert_eq!(receive(&out, &mut dec), vec![m]);
        }
        // A plain stream that carried enough keeps going.
        let (mut enc, mut used, mut dec) = (None, (false, 0), None);
        while used.1 < RESTART_UNPRIMED_BELOW {
            let (out, _) =
                small_frames(&mut enc, &mut used, None, &payload(&json_write(3))).expect("frames");
            receive(&out, &mut dec);
        }
        let d = Some((id, dict.clone()));
        let (out, primed) =
            small_frames(&mut enc, &mut used, d, &payload(&json_write(4))).expect("frames");
        assert!(!primed && cut_all(&out).len() == 1);
        assert_eq!(receive(&out, &mut dec), vec![json_write(4)]);
    }

    #[test]
    fn without_an_agreed_dictionary_frames_are_plain_for_any_reader() {
        // A sender whose peer accepted nothing starts plain streams, which a reader holding no
        // dictionary (a peer of protocol 2) decodes.
        let mut enc = None;
        let mut zstream = None;
        for i in 0..3 {
            let payload = encode_message(&json_write(i)).expect("encode");
            let f = cut(&stream_frame(&mut enc, None, &payload).expect("frame"));
            assert_eq!(f.flags, FrameFlags::ZSTD_STREAM);
            let got = decode(f, MAX_FRAME_BYTES, &mut zstream, &none()).expect("decode");
            assert_eq!(got, Some(json_write(i)));
        }
    }

    #[test]
    fn stream_part_over_the_limit_is_refused() {
        let mut enc = StreamEncoder::new().expect("encoder");
        let mut dec = StreamDecoder::new().expect("decoder");
        let packed = enc.compress(&vec![7u8; 10_000]).expect("compress");
        assert!(matches!(
            dec.decompress(&packed, 1_000),
            Err(TransportError::Decode(WireError::FrameTooLarge { .. }))
        ));
    }

    #[test]
    fn garbage_stream_part_is_an_error_not_a_panic() {
        let mut dec = StreamDecoder::new().expect("decoder");
        assert!(dec
            .decompress(&[0xde, 0xad, 0xbe, 0xef, 1, 2, 3], 1 << 20)
            .is_err());
    }
}
