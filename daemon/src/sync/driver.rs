//! The driver of one session: the quinn-side loop that feeds a sans-IO
//! [`Session`] with frames, local durable progress and timers, executes its actions against
//! the replica, writes its frames (control and bulk on separate streams, so control never
//! waits behind bulk), and reports its state to the peer table.

use std::time::{Duration, Instant, SystemTime};

use officesync_protocol::sync::{
    Action, Event, PeerIdentity, Role, Session, SessionConfig, StreamKind,
};
use officesync_protocol::wire::{Compression, ErrorCode, Message, MessageV1};
use tokio::sync::{mpsc, oneshot, watch};

use super::{outcome_name, Command, SyncSettings, VerifyReport};
use crate::api::{rfc3339, PeerTable};
use crate::replica::{now_ms, Replica};
use crate::transport::{self, FramedRecv, FramedSend, PeerConnection, TrafficCounters};

/// Largest value the wire can carry in one frame (see `config::MAX_VALUE_BYTES_LIMIT`).
const WIRE_VALUE_BOUND: usize = crate::config::MAX_VALUE_BYTES_LIMIT;

/// Frames from the peer waiting for the session (bounded: backpressure to the peer).
const INPUT_QUEUE: usize = 16;
/// Bulk frames waiting for the bulk stream writer (bounded: backpressure to loads).
const BULK_QUEUE: usize = 4;
/// Control frames waiting for the control stream writer: past this the peer is not reading.
const CONTROL_QUEUE: usize = 1024;
/// How often the peer table is refreshed from the session.
const STATUS_EVERY: Duration = Duration::from_millis(250);
/// How long to wait for the peer to open its control stream.
const OPEN_TIMEOUT: Duration = Duration::from_secs(15);

enum Input {
    Frame(StreamKind, Message),
    Ended(StreamKind, String),
    /// The peer sent a frame that does not decode or validate: close with this code.
    Invalid(StreamKind, ErrorCode, String),
}

/// A verification in progress.
struct PendingVerify {
    waiting: Vec<String>,
    reports: Vec<VerifyReport>,
    reply: oneshot::Sender<Vec<VerifyReport>>,
}

/// Runs one session until it closes, the connection drops or the node shuts down; returns
/// why it ended and the peer's version vectors as last known.
pub(crate) async fn drive(
    conn: PeerConnection,
    settings: &SyncSettings,
    replica: &Replica,
    peers: &PeerTable,
    mut commands: mpsc::Receiver<Command>,
    mut shutdown: watch::Receiver<bool>,
) -> (String, Vec<(String, officesync_protocol::VersionVector)>) {
    let PeerConnection {
        peer,
        role,
        connection,
        remote,
        counters,
        closed_notify,
        misbehavior,
    } = conn;
    // Dropped when this function returns: tells a dialer to redial.
    let _closed_notify = closed_notify;
    let is_relay = settings.admins.contains(&peer.name) && peer.admin_cert;
    let mut cfg = SessionConfig::new(&settings.node, replica.id().clone(), &settings.cluster_id);
    // The session checks values against what the wire can carry; values above this node's own
    // limit are refused one by one (and counted) by the replica, so the stream moves past them.
    cfg.max_value_bytes = settings.max_value_bytes.max(WIRE_VALUE_BOUND);
    cfg.heartbeat_interval_ms = settings.heartbeat_interval_ms;
    cfg.idle_timeout_ms = (settings.heartbeat_interval_ms * 6).max(10_000);
    cfg.relay = settings.is_admin;
    cfg.max_clock_skew_ms = settings.max_clock_skew_ms;
    let mut durable = replica.durable();
    let local_vvs: Vec<_> = durable
        .borrow_and_update()
        .vvs
        .iter()
        .map(|(c, v)| (c.clone(), v.clone()))
        .collect();
    let role = match role {
        transport::Role::Dialer => Role::Dialer,
        transport::Role::Acceptor => Role::Acceptor,
    };
    let identity = PeerIdentity {
        node: peer.name.clone(),
        is_relay,
    };
    // A node revoked by `_policy` is refused at once, before anything is exchanged.
    let mut policy_rx = settings.policy.subscribe();
    let policy = policy_rx.borrow_and_update().clone();
    if policy.is_revoked(&peer.name, Some(&peer.serial_hex)) {
        tracing::warn!(%remote, serial = %peer.serial_hex, "refused a node revoked by _policy");
        connection.close(ErrorCode::Revoked.as_u32().into(), b"revoked by _policy");
        return ("the peer is revoked by _policy".into(), Vec::new());
    }
    peers.update(&peer.name, |p| {
        p.cert_serial = Some(peer.serial_hex.clone())
    });
    let mut session = Session::new(role, cfg, identity, local_vvs, now_ms());
    session.handle_policy(policy);
    let mut policy_live = true;
    // Traffic counters are per connection; the table keeps totals since the daemon started.
    let mut base = (0, 0);
    peers.update(&peer.name, |p| base = (p.bytes_sent, p.bytes_received));
    tracing::info!(%remote, ?role, relay = is_relay, "session starting");
    // Lag each way, catch-up, staleness and refusals by reason, for status and metrics.
    let mut observer = super::observe::SessionObserver::start(
        peers,
        replica,
        &peer.name,
        is_relay,
        connection.stable_id() as u64,
        (&settings.node, settings.policy.clone()),
    )
    .await;

    // Control stream: the dialer opens it (its Hello goes first), the acceptor accepts it.
    let opened = match role {
        Role::Dialer => connection.open_bi().await,
        Role::Acceptor => match tokio::time::timeout(OPEN_TIMEOUT, connection.accept_bi()).await {
            Ok(r) => r,
            Err(_) => return ("peer opened no control stream".into(), Vec::new()),
        },
    };
    let (ctrl_send, ctrl_recv) = match opened {
        Ok(s) => s,
        Err(e) => return (format!("cannot open the control stream: {e}"), Vec::new()),
    };
    let (input_tx, mut inputs) = mpsc::channel(INPUT_QUEUE);
    let limit = officesync_protocol::wire::MAX_FRAME_BYTES;
    let readers = [
        tokio::spawn(read_frames(
            FramedRecv::new(ctrl_recv)
                .with_limit(limit)
                .with_counters(counters.clone()),
            StreamKind::Control,
            input_tx.clone(),
            settings.max_value_bytes,
        )),
        tokio::spawn(accept_bulk(
            connection.clone(),
            counters.clone(),
            input_tx,
            settings.max_value_bytes,
        )),
    ];
    let (ctrl_tx, ctrl_rx) = mpsc::channel(CONTROL_QUEUE);
    let (bulk_tx, bulk_rx) = mpsc::channel(BULK_QUEUE);
    let compress = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers = [
        tokio::spawn(write_control(
            FramedSend::new(ctrl_send).with_counters(counters.clone()),
            ctrl_rx,
        )),
        tokio::spawn(write_bulk(
            connection.clone(),
            counters.clone(),
            bulk_rx,
            compress.clone(),
        )),
    ];

    let mut bulk_pending: Option<Message> = None;
    let mut held_load: Option<Action> = None;
    let mut deferred: std::collections::VecDeque<Action> = std::collections::VecDeque::new();
    let mut verifying: Vec<PendingVerify> = Vec::new();
    let mut last_heard = None::<SystemTime>;
    let mut next_status = Instant::now();
    let mut bad = BadInput::default();
    let mut close_code = 0u32;
    let why = loop {
        // Outputs: control first, then bulk as far as the bulk queue takes it. Control frames
        // are few and small; a backlog past the bound means the peer does not read its
        // control stream (a heartbeat flood, say): its bad input.
        while let Some(msg) = session.poll_transmit_on(StreamKind::Control) {
            if let Err(mpsc::error::TrySendError::Full(_)) = ctrl_tx.try_send(msg) {
                bad.frame_fault = true;
                session.close(
                    ErrorCode::FrameTooLarge,
                    "control frames backed up: the peer does not read its control stream",
                );
            }
        }
        loop {
            if bulk_pending.is_none() {
                bulk_pending = session.poll_transmit_on(StreamKind::Bulk);
            }
            let Some(msg) = bulk_pending.take() else {
                break;
            };
            match bulk_tx.try_send(msg) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(msg)) => {
                    bulk_pending = Some(msg);
                    break;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => break,
            }
        }
        // Actions: loads wait while bulk is backed up; applies and digests never wait.
        if bulk_pending.is_none() {
            if let Some(load) = held_load.take() {
                run_action(&mut session, replica, load).await;
                continue;
            }
        }
        if let Some(action) = deferred.pop_front().or_else(|| session.poll_action()) {
            match action {
                Action::Load { .. } if bulk_pending.is_some() => held_load = Some(action),
                Action::Apply { repair: false, .. } => {
                    // Take in the frames already received, so that every batch waiting is
                    // applied in one store commit (one flush) instead of one flush each.
                    while let Ok(input) = inputs.try_recv() {
                        feed(&mut session, input, &mut last_heard, &mut bad);
                    }
                    let mut applies = vec![action];
                    while let Some(next) = session.poll_action() {
                        if matches!(next, Action::Apply { repair: false, .. }) {
                            applies.push(next);
                        } else {
                            deferred.push_back(next);
                            break;
                        }
                    }
                    apply_batches(&mut session, replica, applies, false, &observer).await;
                }
                repair @ Action::Apply { repair: true, .. } => {
                    apply_batches(&mut session, replica, vec![repair], true, &observer).await;
                }
                other => run_action(&mut session, replica, other).await,
            }
            continue;
        }
        while let Some(event) = session.poll_event() {
            match event {
                Event::Established {
                    compression,
                    peer_replica,
                } => {
                    compress.store(
                        compression == Compression::Zstd,
                        std::sync::atomic::Ordering::Relaxed,
                    );
                    tracing::info!(?compression, peer_replica = ?peer_replica, "session established");
                }
                Event::Rejected { reason, count } => {
                    observer.rejected(&reason, count);
                    tracing::warn!(%reason, count, "rejected versions from peer");
                }
                Event::DigestMismatch { collection } => {
                    tracing::warn!(%collection, "digests differ with equal vectors; reconciling");
                }
                Event::Verified {
                    collection,
                    outcome,
                } => {
                    for v in &mut verifying {
                        if let Some(at) = v.waiting.iter().position(|c| *c == collection) {
                            v.waiting.remove(at);
                            v.reports.push(VerifyReport {
                                peer: peer.name.clone(),
                                collection: collection.clone(),
                                outcome: outcome_name(outcome).into(),
                            });
                            break;
                        }
                    }
                }
                Event::Acked { .. } => {}
                Event::Closed { code, reason } => {
                    close_code = code.as_u32();
                    if bad.take_frame_fault() {
                        bad.report(&misbehavior, peers, &peer.name, code, &reason);
                    }
                    tracing::info!(?code, %reason, "session closed");
                }
            }
        }
        let mut i = 0;
        while i < verifying.len() {
            if verifying[i].waiting.is_empty() {
                let v = verifying.swap_remove(i);
                let _ = v.reply.send(v.reports);
            } else {
                i += 1;
            }
        }
        if Instant::now() >= next_status {
            report_status(peers, &session, &counters, base, remote, last_heard);
            observer.report(&session.status(), last_heard);
            next_status = Instant::now() + STATUS_EVERY;
        }
        if session.is_closed() {
            break "session closed".to_owned();
        }
        let deadline = session
            .poll_timeout()
            .map(|t| Instant::now() + Duration::from_millis(t.saturating_sub(now_ms())))
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600))
            .min(next_status);
        tokio::select! {
            input = inputs.recv() => match input {
                Some(input) => feed(&mut session, input, &mut last_heard, &mut bad),
                None => session.close(ErrorCode::Internal, "streams ended"),
            },
            changed = durable.changed() => {
                if changed.is_err() {
                    break "the store closed".to_owned();
                }
                let state = durable.borrow_and_update().clone();
                for (collection, vv) in &state.vvs {
                    session.handle_local_vv(collection, vv.clone());
                }
            },
            changed = policy_rx.changed(), if policy_live => {
                if changed.is_err() {
                    policy_live = false;
                } else {
                    let policy = policy_rx.borrow_and_update().clone();
                    if policy.is_revoked(&peer.name, Some(&peer.serial_hex)) {
                        tracing::warn!(serial = %peer.serial_hex, "closing: the peer was revoked by _policy");
                        session.close(ErrorCode::Revoked, "revoked by _policy");
                    } else {
                        session.handle_policy(policy);
                    }
                }
            },
            permit = bulk_tx.reserve(), if bulk_pending.is_some() => {
                if let (Ok(permit), Some(msg)) = (permit, bulk_pending.take()) {
                    permit.send(msg);
                }
            },
            cmd = commands.recv() => {
                if let Some(Command::Verify { collections, reply }) = cmd {
                    for c in &collections {
                        session.request_verify(c);
                    }
                    verifying.push(PendingVerify { waiting: collections, reports: Vec::new(), reply });
                }
            },
            _ = tokio::time::sleep_until(deadline.into()) => session.handle_timeout(now_ms()),
            _ = shutdown.wait_for(|s| *s) => {
                session.close(ErrorCode::Internal, "node shutting down");
                while let Some(msg) = session.poll_transmit_on(StreamKind::Control) {
                    let _ = ctrl_tx.try_send(msg);
                }
                break "node shutting down".to_owned();
            },
            closed = connection.closed() => break format!("connection closed: {closed}"),
        }
    };
    drop(ctrl_tx);
    // Give the control writer a moment to flush a final error frame.
    let _ = tokio::time::timeout(Duration::from_millis(300), async {
        for w in writers {
            let _ = w.await;
        }
    })
    .await;
    for r in readers {
        r.abort();
    }
    connection.close(close_code.into(), why.as_bytes());
    report_status(peers, &session, &counters, base, remote, last_heard);
    observer.report(&session.status(), last_heard);
    (why, session.status().peer_vvs)
}

/// Bad input from the peer, reported when the session's `Closed` event is drained.
#[derive(Default)]
struct BadInput {
    /// The last input from the peer made the session fail.
    frame_fault: bool,
}

impl BadInput {
    fn take_frame_fault(&mut self) -> bool {
        std::mem::take(&mut self.frame_fault)
    }

    /// Logs the closure (naming the peer), strikes the peer for backoff and counts it in the
    /// peer's status.
    fn report(
        &self,
        misbehavior: &transport::Misbehavior,
        peers: &PeerTable,
        peer: &str,
        code: ErrorCode,
        reason: &str,
    ) {
        misbehavior.report(code, reason);
        peers.update(peer, |p| {
            p.bad_input += 1;
            p.last_bad_input = Some(format!("{code}: {reason}"));
        });
    }
}

/// Hands one input from the peer to the session.
fn feed(
    session: &mut Session,
    input: Input,
    last_heard: &mut Option<SystemTime>,
    bad: &mut BadInput,
) {
    match input {
        Input::Frame(stream, msg) => {
            *last_heard = Some(SystemTime::now());
            tracing::debug!(?stream, kind = msg.kind(), "frame received");
            let peer_closing = matches!(msg, Message::V1(MessageV1::Error(_)));
            let was_closed = session.is_closed();
            session.handle_frame(stream, msg, now_ms());
            // A frame (other than the peer's own error frame) that made the session fail is
            // the peer's bad input; it is reported when the Closed event is drained.
            if !was_closed && session.is_closed() && !peer_closing {
                bad.frame_fault = true;
            }
        }
        Input::Invalid(stream, code, why) => {
            if !session.is_closed() {
                bad.frame_fault = true;
                session.close(code, &format!("{stream:?} stream: {why}"));
            }
        }
        Input::Ended(stream, why) => {
            session.close(
                ErrorCode::Internal,
                &format!("{stream:?} stream ended: {why}"),
            );
        }
    }
}

/// Applies several received batches, each with its vector advance, in one atomic store
/// commit, then tells the session about each in order.
/// `repair`: merge even versions the vectors cover (a full reconciliation).
async fn apply_batches(
    session: &mut Session,
    replica: &Replica,
    applies: Vec<Action>,
    repair: bool,
    observer: &super::observe::SessionObserver,
) {
    let mut versions = Vec::new();
    let mut complete = Vec::new();
    for a in applies {
        if let Action::Apply {
            collection,
            origin,
            versions: v,
            through,
            ..
        } = a
        {
            versions.extend(v);
            complete.push((collection, origin, through));
        }
    }
    let newest = observer.newest_of(&versions);
    let applied = if repair {
        // Two commits: the merge may not skip covered dots, the vector advance is ordinary.
        match replica.apply_repair(versions).await {
            Ok(r) => replica
                .apply_remote(Vec::new(), complete.clone())
                .await
                .map(|mut c| {
                    c.applied += r.applied;
                    c.rejected.extend(r.rejected);
                    c
                }),
            Err(e) => Err(e),
        }
    } else {
        replica.apply_remote(versions, complete.clone()).await
    };
    let report = match applied {
        Ok(r) => r,
        Err(e) => {
            let reason = format!("cannot apply received versions: {e}");
            tracing::error!(%reason, "closing session");
            session.close(ErrorCode::Internal, &reason);
            return;
        }
    };
    observer.applied(&report, newest);
    if !report.rejected.is_empty() {
        tracing::warn!(
            rejected = report.rejected.len(),
            first = ?report.rejected.first(),
            "refused versions from peer"
        );
    }
    tracing::debug!(
        batches = complete.len(),
        applied = report.applied,
        "applied batches"
    );
    let mut vvs = std::collections::HashMap::new();
    for (collection, origin, through) in complete {
        if !vvs.contains_key(&collection) {
            match replica.collection(&collection).await {
                Ok(meta) => {
                    vvs.insert(collection.clone(), meta.vv);
                }
                Err(e) => {
                    session.close(
                        ErrorCode::Internal,
                        &format!("cannot read collection state: {e}"),
                    );
                    return;
                }
            }
        }
        if let Some(vv) = vvs.get(&collection) {
            session.handle_applied(&collection, &origin, through, vv.clone());
        }
    }
}

async fn run_action(session: &mut Session, replica: &Replica, action: Action) {
    let failed = match action {
        Action::Load {
            collection,
            origin,
            after,
            through,
            max_versions,
            max_bytes,
            ..
        } => {
            match replica
                .versions_since(
                    &collection,
                    &origin,
                    after,
                    through,
                    max_versions,
                    max_bytes,
                )
                .await
            {
                Ok((versions, scanned)) => {
                    session.handle_loaded(&collection, &origin, versions, scanned);
                    None
                }
                Err(e) => Some(format!("cannot read versions to send: {e}")),
            }
        }
        // Applies go through `apply_batches`.
        Action::Apply { .. } => None,
        Action::Digest { collection } => match replica.collection(&collection).await {
            Ok(meta) => {
                session.handle_local_digest(&collection, meta.digest, meta.vv);
                None
            }
            Err(e) => Some(format!("cannot read the digest: {e}")),
        },
    };
    if let Some(reason) = failed {
        tracing::error!(%reason, "closing session");
        session.close(ErrorCode::Internal, &reason);
    }
}

fn report_status(
    peers: &PeerTable,
    session: &Session,
    counters: &TrafficCounters,
    base: (u64, u64),
    remote: std::net::SocketAddr,
    last_heard: Option<SystemTime>,
) {
    let st = session.status();
    peers.update(&st.peer_node, |p| {
        p.connected = st.established && !st.closed;
        if let Some(t) = last_heard {
            p.last_seen = Some(rfc3339(t));
        }
        p.lag_versions = st
            .collections
            .iter()
            .map(|c| c.lag_versions)
            .fold(0, u64::saturating_add);
        p.bytes_sent = base.0 + counters.bytes_sent();
        p.bytes_received = base.1 + counters.bytes_received();
        p.address = Some(remote.to_string());
        p.rtt_ms = st.rtt_ms;
        p.rejected = st.rejected;
    });
}

/// Reads, decodes and validates the peer's frames against this node's value limit. Bad input
/// ends the stream as [`Input::Invalid`] with its code.
async fn read_frames(
    mut recv: FramedRecv,
    stream: StreamKind,
    tx: mpsc::Sender<Input>,
    max_value_bytes: usize,
) {
    loop {
        let ended = match recv.recv().await {
            // Values above this node's own limit are refused one by one (and counted) when
            // applied, so a peer configured with a larger limit cannot wedge the stream.
            // Timestamps are the session's to check: a version stamped too far ahead is
            // refused alone, never the relay that carried it.
            Ok(Some(msg)) => match msg.validate(max_value_bytes.max(WIRE_VALUE_BOUND)) {
                Ok(()) => {
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

async fn accept_bulk(
    connection: quinn::Connection,
    counters: TrafficCounters,
    tx: mpsc::Sender<Input>,
    max_value_bytes: usize,
) {
    match connection.accept_uni().await {
        Ok(stream) => {
            let recv = FramedRecv::new(stream)
                .with_limit(officesync_protocol::wire::MAX_FRAME_BYTES)
                .with_counters(counters);
            read_frames(recv, StreamKind::Bulk, tx, max_value_bytes).await;
        }
        Err(e) => {
            let _ = tx.send(Input::Ended(StreamKind::Bulk, e.to_string())).await;
        }
    }
}

async fn write_control(mut send: FramedSend, mut rx: mpsc::Receiver<Message>) {
    while let Some(msg) = rx.recv().await {
        if let Err(e) = send.send(&msg, false).await {
            tracing::debug!(error = %e, "control stream write failed");
            return;
        }
    }
    let _ = send.finish();
}

async fn write_bulk(
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
