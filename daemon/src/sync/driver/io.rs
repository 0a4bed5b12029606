//! The byte-moving tasks of a session: one reader per receive stream (decoding and validating
//! frames) and one writer per send stream. They only move frames between the QUIC streams and
//! the driver's bounded channels; every decision is the session's.

use officesync_protocol::sync::StreamKind;
use std::collections::HashSet;
use std::sync::Arc;

use officesync_protocol::wire::{Batch, ErrorCode, Message, MessageV2};
use officesync_protocol::ReplicaId;
use tokio::sync::{mpsc, watch};

use crate::signing::Keyring;
use crate::sync::limit::{approx_bytes, Limiter, PACE_CHUNK};
use crate::transport::{
    FramedRecv, FramedSend, RecvDictionaries, SendDictionaries, TrafficCounters,
};

/// Largest value the wire can carry in one frame (see `config::MAX_VALUE_BYTES_LIMIT`).
pub(super) const WIRE_VALUE_BOUND: usize = crate::config::MAX_VALUE_BYTES_LIMIT;

/// The frames waiting for one stream writer. Boxed: tokio's bounded channel allocates its
/// slots 32 at a time whatever its bound, and a `Message` is over 100 bytes, so every idle
/// session held about 4 KiB per channel in empty slots (a relay holds hundreds of sessions).
pub(super) type Frames = mpsc::Receiver<Box<Message>>;

/// What a reader hands the driver.
pub(super) enum Input {
    /// A decoded, validated frame (boxed, like the writers' frames: see [`Frames`]).
    Frame(StreamKind, Box<Message>),
    /// The stream ended (finished by the peer, or the connection went away).
    Ended(StreamKind, String),
    /// The peer sent a frame that does not decode or validate: close with this code.
    Invalid(StreamKind, ErrorCode, String),
}

/// Verifies the signatures of the peer's batches ahead of the session (which may be waiting
/// for the store meanwhile): the session checks each batch again and finds the work done.
/// Only what the session would verify itself is verified here, so a hostile peer gains no
/// work it could not get from the session: versions of the peer's own node, or of any node
/// from a relay, and nothing more of a stream after its first refusal (the session refuses
/// the rest of that stream for the session without looking at it).
#[derive(Clone)]
pub(super) struct Ahead {
    keyring: Arc<Keyring>,
    peer: String,
    relay: bool,
    refused: HashSet<(String, ReplicaId)>,
}

impl Ahead {
    /// Verification ahead for a session with node `peer` (`relay`: an admin that relays).
    pub(super) fn new(keyring: Arc<Keyring>, peer: &str, relay: bool) -> Self {
        Self {
            keyring,
            peer: peer.to_owned(),
            relay,
            refused: HashSet::new(),
        }
    }

    /// Verifies `b` unless the session would refuse it without looking.
    pub(super) fn batch(&mut self, b: &Batch) {
        if !self.relay && b.origin.node_name() != self.peer {
            return; // the relay rule refuses it first
        }
        let stream = (b.collection.clone(), b.origin.clone());
        if self.refused.contains(&stream) {
            return;
        }
        if self.keyring.check(&b.versions).is_some() {
            self.refused.insert(stream);
        }
    }
}

/// Reads, decodes and validates the peer's frames against this node's value limit. Values
/// above this node's own limit (but within the wire's) pass, to be refused one by one when
/// applied, so a peer configured with a larger limit cannot wedge the stream. Timestamps are
/// the session's to check. Bad input ends the stream as [`Input::Invalid`] with its code.
pub(super) async fn read_frames(
    mut recv: FramedRecv,
    stream: StreamKind,
    tx: mpsc::Sender<Input>,
    (max_value_bytes, mut ahead): (usize, Option<Ahead>),
) {
    loop {
        let ended = match recv.recv().await {
            Ok(Some(msg)) => match msg.validate(max_value_bytes.max(WIRE_VALUE_BOUND)) {
                Ok(()) => {
                    if let Some(ahead) = &mut ahead {
                        match &msg {
                            Message::V2(MessageV2::Batch(b)) => ahead.batch(b),
                            Message::V2(MessageV2::BatchComplete(bc)) => ahead.batch(&bc.batch),
                            _ => {}
                        }
                    }
                    if tx.send(Input::Frame(stream, Box::new(msg))).await.is_err() {
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

/// Accepts the peer's unidirectional streams and reads them: its bulk stream and, in a
/// session of protocol 3 and up, its urgent stream. Both are read alike, as
/// [`StreamKind::Bulk`]: the sender keeps each `(collection, origin)` stream on one of them,
/// and the session checks each one's order whichever QUIC stream it came on. A second stream
/// is read only once `protocol` (the version agreed, 0 until the handshake completes) says 3
/// or more; from a peer of an older protocol it is its bad input. A third is never accepted.
pub(super) async fn accept_bulk(
    connection: quinn::Connection,
    (counters, dicts): (TrafficCounters, RecvDictionaries),
    tx: mpsc::Sender<Input>,
    (max_value_bytes, ahead): (usize, Option<Ahead>),
    mut protocol: watch::Receiver<u16>,
) {
    let recv = |stream| {
        FramedRecv::new(stream)
            .with_limit(officesync_protocol::wire::MAX_FRAME_BYTES)
            .with_counters(counters.clone())
            .with_dictionaries(dicts.clone())
    };
    let first = match connection.accept_uni().await {
        Ok(stream) => stream,
        Err(e) => {
            let _ = tx.send(Input::Ended(StreamKind::Bulk, e.to_string())).await;
            return;
        }
    };
    let second = async {
        let Ok(stream) = connection.accept_uni().await else {
            return; // the connection closed: the first stream's reader says so
        };
        match protocol.wait_for(|p| *p != 0).await.map(|p| *p) {
            Ok(3..) => {}
            Ok(_) => {
                let why = "a second data stream from a peer of protocol 2 or older".to_owned();
                let _ = tx
                    .send(Input::Invalid(StreamKind::Bulk, ErrorCode::Malformed, why))
                    .await;
                return;
            }
            Err(_) => return, // the session ended
        }
        read_frames(
            recv(stream),
            StreamKind::Bulk,
            tx.clone(),
            (max_value_bytes, ahead.clone()),
        )
        .await;
    };
    let first = read_frames(
        recv(first),
        StreamKind::Bulk,
        tx.clone(),
        (max_value_bytes, ahead.clone()),
    );
    tokio::join!(first, second);
}

/// Writes control frames until the channel closes, then finishes the stream and waits until
/// the peer has it all (the driver bounds the wait): closing the connection earlier would
/// drop a final error frame.
pub(super) async fn write_control(mut send: FramedSend, mut rx: Frames) {
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

/// How long the bulk stream stays quiet before its zstd stream ends and the compressor (about
/// 1.3 MB) is freed; the next frame starts a new one.
const BULK_IDLE: std::time::Duration = std::time::Duration::from_secs(5);

/// Opens a data stream (bulk or urgent) on the first frame and writes its frames (zstd when
/// `compress` is set; a new zstd stream primed with the dictionary agreed for its first frame's
/// collection, if `dicts` has one) until the channel closes, then finishes the stream. With `release_idle`
/// set, a stream quiet for [`BULK_IDLE`] ends its zstd stream, so an idle session holds no
/// compressor. With a `limiter` (the bulk stream), frames go out paced at the rate in force,
/// in [`PACE_CHUNK`]s, and leave its queued-bytes gauge as they are written.
pub(super) async fn write_bulk(
    connection: quinn::Connection,
    (counters, dicts): (TrafficCounters, SendDictionaries),
    mut rx: Frames,
    (compress, release_idle): (
        std::sync::Arc<std::sync::atomic::AtomicBool>,
        std::sync::Arc<std::sync::atomic::AtomicBool>,
    ),
    mut limiter: Option<Limiter>,
) {
    let mut send: Option<FramedSend> = None;
    loop {
        let next = match send.as_ref().is_some_and(FramedSend::holds_compressor) {
            true => match tokio::time::timeout(BULK_IDLE, rx.recv()).await {
                Ok(next) => next,
                Err(_) => {
                    let ends = release_idle.load(std::sync::atomic::Ordering::Relaxed);
                    if let Some(s) = send.as_mut().filter(|_| ends) {
                        if let Err(e) = s.end_compression().await {
                            tracing::warn!(error = %e, "bulk stream write failed; the session will restart");
                            return;
                        }
                    }
                    continue;
                }
            },
            false => rx.recv().await,
        };
        let Some(msg) = next else { break };
        if send.is_none() {
            match connection.open_uni().await {
                Ok(s) => {
                    let s = FramedSend::new(s)
                        .with_counters(counters.clone())
                        .with_dictionaries(dicts.clone());
                    send = Some(s);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "cannot open the bulk stream");
                    return;
                }
            }
        }
        let Some(s) = send.as_mut() else { return };
        let z = compress.load(std::sync::atomic::Ordering::Relaxed);
        if let Err(e) = write_paced(s, &msg, z, limiter.as_mut()).await {
            tracing::warn!(error = %e, "bulk stream write failed; the session will restart");
            return;
        }
    }
    if let Some(mut s) = send {
        let _ = s.finish();
    }
}

/// Writes `msg` as one frame, paced by `limiter` when it has a limit in force; takes the
/// frame off the limiter's queued-bytes gauge once written.
async fn write_paced(
    s: &mut FramedSend,
    msg: &Message,
    compress: bool,
    limiter: Option<&mut Limiter>,
) -> Result<(), crate::transport::TransportError> {
    let Some(limiter) = limiter else {
        return s.send(msg, compress).await.map(|_| ());
    };
    let frame = s.encode(msg, compress)?;
    if limiter.limited() {
        for part in frame.chunks(PACE_CHUNK) {
            limiter.pace(part.len()).await;
            s.write_encoded(part).await?;
        }
    } else {
        s.write_encoded(&frame).await?;
    }
    limiter.gauges().dequeue(approx_bytes(msg));
    Ok(())
}

#[cfg(test)]
mod tests {
    use officesync_protocol::policy::Policy;

    use super::*;
    use crate::pki::KeyType;
    use crate::signing::tests::{batch, Pki};

    fn of(versions: Vec<officesync_protocol::Version>) -> Batch {
        Batch {
            collection: versions[0].collection.clone(),
            origin: versions[0].dot.origin.clone(),
            versions,
        }
    }

    #[test]
    fn ahead_verifies_only_what_the_session_would() {
        let pki = Pki::new();
        let hefei = pki.signer("hefei", KeyType::Ed25519);
        let keyring = Arc::new(pki.keyring(Policy::default()));
        keyring.learn(hefei.cert_der()).expect("learn");

        // An office that is not a relay bringing hefei's versions: the relay rule refuses
        // them, so nothing is verified.
        let mut from_gov = Ahead::new(keyring.clone(), "gov", false);
        from_gov.batch(&of(batch(&hefei, "hefei", 4)));
        assert_eq!(keyring.verified_len(), 0);

        // hefei itself: a refused batch stops its stream; another stream goes on.
        let mut from_hefei = Ahead::new(keyring.clone(), "hefei", false);
        let mut bad = batch(&hefei, "hefei", 4);
        bad[0].value = Some(b"forged".to_vec());
        from_hefei.batch(&of(bad));
        assert_eq!(keyring.verified_len(), 0);
        let mut later = batch(&hefei, "hefei", 8);
        later.drain(..4);
        from_hefei.batch(&of(later));
        assert_eq!(
            keyring.verified_len(),
            0,
            "a refused stream is not verified ahead"
        );
        let mut other = batch(&hefei, "hefei", 3);
        for v in &mut other {
            v.collection = "documents".into();
            v.signature = None;
        }
        let other: Vec<_> = other
            .into_iter()
            .map(|v| crate::signing::tests::signed(&hefei, v))
            .collect();
        from_hefei.batch(&of(other));
        assert_eq!(keyring.verified_len(), 3);

        // A relay brings any origin.
        let mut from_relay = Ahead::new(keyring.clone(), "gov", true);
        from_relay.batch(&of(batch(&hefei, "hefei", 5)));
        assert_eq!(keyring.verified_len(), 8);
    }
}
