//! The byte-moving tasks of a session: one reader per receive stream (decoding and validating
//! frames) and one writer per send stream. They only move frames between the QUIC streams and
//! the driver's bounded channels; every decision is the session's.

use officesync_protocol::sync::StreamKind;
use std::sync::Arc;

use officesync_protocol::wire::{ErrorCode, Message, MessageV2};
use tokio::sync::mpsc;

use crate::signing::Keyring;
use crate::transport::{FramedRecv, FramedSend, TrafficCounters};

/// Largest value the wire can carry in one frame (see `config::MAX_VALUE_BYTES_LIMIT`).
pub(super) const WIRE_VALUE_BOUND: usize = crate::config::MAX_VALUE_BYTES_LIMIT;

/// What a reader hands the driver.
pub(super) enum Input {
    /// A decoded, validated frame.
    Frame(StreamKind, Message),
    /// The stream ended (finished by the peer, or the connection went away).
    Ended(StreamKind, String),
    /// The peer sent a frame that does not decode or validate: close with this code.
    Invalid(StreamKind, ErrorCode, String),
}

/// Reads, decodes and validates the peer's frames against this node's value limit. Values
/// above this node's own limit (but within the wire's) pass, to be refused one by one when
/// applied, so a peer configured with a larger limit cannot wedge the stream. Timestamps are
/// the session's to check. Bad input ends the stream as [`Input::Invalid`] with its code.
pub(super) async fn read_frames(
    mut recv: FramedRecv,
    stream: StreamKind,
    tx: mpsc::Sender<Input>,
    (max_value_bytes, keyring): (usize, Option<Arc<Keyring>>),
) {
    loop {
        let ended = match recv.recv().await {
            Ok(Some(msg)) => match msg.validate(max_value_bytes.max(WIRE_VALUE_BOUND)) {
                Ok(()) => {
                    // Verify a batch's signatures here, while the session may be waiting for
                    // the store: it checks again and finds them verified. The outcome is the
                    // session's to act on.
                    if let (Some(keyring), Message::V2(MessageV2::Batch(b))) = (&keyring, &msg) {
                        let _ = keyring.check(&b.versions);
                    }
                    if tx.send(Input::Frame(stream, msg)).await.is_err() {
                        return;
                    }
                    continue;
                }
                Err(e) => Input::Invalid(stream, e.code(), format!("invalid {}: {e}", msg.kind())),
            },
            Ok(None) => Input::Ended(stream, "finished by the peer".to_owned()),
            Err(e) => match e.code() {
                Some(code) => Input::Invalid(stream, code, e.to_string()),
                None => Input::Ended(stream, e.to_string()),
            },
        };
        let _ = tx.send(ended).await;
        return;
    }
}

/// Accepts the peer's bulk stream and reads it.
pub(super) async fn accept_bulk(
    connection: quinn::Connection,
    counters: TrafficCounters,
    tx: mpsc::Sender<Input>,
    limits: (usize, Option<Arc<Keyring>>),
) {
    match connection.accept_uni().await {
        Ok(stream) => {
            let recv = FramedRecv::new(stream)
                .with_limit(officesync_protocol::wire::MAX_FRAME_BYTES)
                .with_counters(counters);
            read_frames(recv, StreamKind::Bulk, tx, limits).await;
        }
        Err(e) => {
            let _ = tx.send(Input::Ended(StreamKind::Bulk, e.to_string())).await;
        }
    }
}

/// Writes control frames until the channel closes, then finishes the stream and waits until
/// the peer has it all (the driver bounds the wait): closing the connection earlier would
/// drop a final error frame.
pub(super) async fn write_control(mut send: FramedSend, mut rx: mpsc::Receiver<Message>) {
    while let Some(msg) = rx.recv().await {
        if let Err(e) = send.send(&msg, false).await {
            tracing::debug!(error = %e, "control stream write failed");
            return;
        }
    }
    if send.finish().is_ok() {
        let _ = send.into_inner().stopped().await;
    }
}

/// Opens the bulk stream on the first frame and writes bulk frames (zstd when `compress` is
/// set) until the channel closes, then finishes the stream.
pub(super) async fn write_bulk(
    connection: quinn::Connection,
    counters: TrafficCounters,
    mut rx: mpsc::Receiver<Message>,
    compress: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    let mut send: Option<FramedSend> = None;
    while let Some(msg) = rx.recv().await {
        if send.is_none() {
            match connection.open_uni().await {
                Ok(s) => send = Some(FramedSend::new(s).with_counters(counters.clone())),
                Err(e) => {
                    tracing::debug!(error = %e, "cannot open the bulk stream");
                    return;
                }
            }
        }
        let Some(s) = send.as_mut() else { return };
        let z = compress.load(std::sync::atomic::Ordering::Relaxed);
        if let Err(e) = s.send(&msg, z).await {
            tracing::warn!(error = %e, "bulk stream write failed; the session will restart");
            return;
        }
    }
    if let Some(mut s) = send {
        let _ = s.finish();
    }
}
