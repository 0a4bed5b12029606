//! The driver of one session, shaped like quinn's `ConnectionDriver`: one loop around a
//! sans-IO [`Session`] that moves its frames to and from the QUIC streams (through bounded
//! channels and the byte-moving tasks of [`io`]), runs its store actions against the replica
//! ([`store`]), reports its events, and feeds it time, durable local progress, policy changes
//! and verify commands. The session decides; the driver only moves bytes and waits.

mod io;
mod store;

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use officesync_protocol::sync::{Event, PeerIdentity, Role, Session, SessionConfig, StreamKind};
use officesync_protocol::wire::{Compression, ErrorCode, Message};
use officesync_protocol::VersionVector;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;

use super::limit::{approx_bytes, rate_now, LimitGauges, Limiter};
use super::observe::SessionObserver;
use super::peers::PeerTable;
use super::{outcome_name, Command, SyncSettings, VerifyReport};
use crate::replica::{now_ms, DurableState, Replica};
use crate::time::rfc3339;
use crate::transport::{
    self, FramedRecv, FramedSend, PeerConnection, RecvDictionaries, SendDictionaries,
    TrafficCounters,
};
use io::Input;
use officesync_protocol::policy::Policy;

/// Frames from the peer waiting for the session, per channel (control, data; bounded:
/// backpressure to the peer).
const INPUT_QUEUE: usize = 16;
/// While a store action runs, the session's timer is looked at no more often than this.
const MIN_LIVE_TICK: Duration = Duration::from_millis(100);
/// Bulk frames waiting for the bulk stream writer (bounded: backpressure to loads).
const BULK_QUEUE: usize = 4;
/// Urgent frames waiting for the urgent stream writer (bounded: backpressure to urgent loads).
const URGENT_QUEUE: usize = 4;
/// Control frames waiting for the control stream writer: past this the peer is not reading.
const CONTROL_QUEUE: usize = 1024;
/// How often the peer table is refreshed from the session.
const STATUS_EVERY: Duration = Duration::from_millis(250);
/// How often an idle session (no byte moved since the last look) looks at the peer table: a
/// thousand idle sessions on one machine each waking four times a second add up.
const IDLE_STATUS_EVERY: Duration = Duration::from_secs(2);
/// How long to wait for the peer to open its control stream.
const OPEN_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the writers get to flush a final error frame when the session ends.
const FLUSH_TIMEOUT: Duration = Duration::from_millis(300);
/// How long the readers get to end once the connection is closed.
const JOIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SessionEnd {
    /// The peer is revoked by `_policy`: refused before anything was exchanged.
    Revoked,
    /// The acceptor waited in vain for the peer's control stream.
    NoControlStream,
    /// The control stream could not be opened.
    ControlStream(String),
    /// The session closed itself: an error (ours or the peer's), an idle timeout, a policy
    /// change.
    Closed {
        /// The code the connection closes with.
        code: ErrorCode,
        /// Why.
        reason: String,
    },
    /// The local store closed.
    StoreClosed,
    /// The node is shutting down.
    Shutdown,
    /// The QUIC connection closed under the session.
    ConnectionClosed(String),
}

impl fmt::Display for SessionEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Revoked => f.write_str("the peer is revoked by _policy"),
            Self::NoControlStream => f.write_str("peer opened no control stream"),
            Self::ControlStream(e) => write!(f, "cannot open the control stream: {e}"),
            Self::Closed { code, reason } => write!(f, "session closed ({code}): {reason}"),
            Self::StoreClosed => f.write_str("the store closed"),
            Self::Shutdown => f.write_str("node shutting down"),
            Self::ConnectionClosed(e) => write!(f, "connection closed: {e}"),
        }
    }
}

/// What woke the driver up.
enum Wake {
    /// A frame (or the end of the streams) from the peer.
    Input(Option<Input>),
    /// The durable state changed (`false`: the store closed).
    Durable(bool),
    /// The policy changed (`false`: its source is gone).
    Policy(bool),
    /// This node's dictionaries changed (`false`: their source is gone).
    Dictionaries(bool),
    /// The bulk (or urgent) channel has room again.
    BulkRoom,
    /// A command from the node (`None`: no more commands).
    Command(Option<Command>),
    /// The session's timer.
    Timer,
    /// The node is shutting down.
    Shutdown,
    /// The QUIC connection closed.
    ConnectionClosed(String),
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
) -> (SessionEnd, Vec<(String, VersionVector)>) {
    let mut driver = match Driver::start(conn, settings, replica, peers).await {
        Ok(d) => d,
        Err(end) => return (end, Vec::new()),
    };
    let end = driver.run(&mut commands, &mut shutdown).await;
    driver.finish(end).await
}

/// One session's driver: the session and everything that connects it to the world.
struct Driver<'a> {
    session: Session,
    replica: &'a Replica,
    peers: &'a PeerTable,
    peer: transport::PeerCertificate,
    connection: quinn::Connection,
    misbehavior: transport::Misbehavior,
    /// Dropped when the driver is: tells a dialer to redial.
    _closed_notify: Option<oneshot::Sender<()>>,
    /// The byte-moving tasks and the bounded channels to them.
    io: Io,
    durable: watch::Receiver<Arc<DurableState>>,
    /// The offers the session was last given (from `durable`).
    offered: Arc<DurableState>,
    policy_rx: watch::Receiver<Arc<Policy>>,
    policy_live: bool,
    /// This node's compression dictionaries (`false` once their source is gone).
    dicts_rx: (watch::Receiver<super::dictionary::Published>, bool),
    /// The node still sends commands (verify).
    commands_live: bool,
    observer: SessionObserver,
    verifying: Vec<PendingVerify>,
    report: StatusReport,
    /// The last input from the peer made the session fail: its bad input, reported (and
    /// struck) when the `Closed` event is drained.
    frame_fault: bool,
    closed: Option<(ErrorCode, String)>,
    /// The bandwidth limits of the node and this session's bulk queue gauge.
    limits: (Arc<crate::config::bandwidth::Schedule>, Arc<LimitGauges>),
}

/// What the peer table is refreshed with.
struct StatusReport {
    counters: TrafficCounters,
    /// Totals of earlier sessions (the table counts since the daemon started).
    base: (u64, u64),
    /// Primed zstd streams of earlier sessions (sent, received).
    primed_base: (u64, u64),
    remote: std::net::SocketAddr,
    last_heard: Option<SystemTime>,
    next: Instant,
    /// When the table was last refreshed, and the bytes sent and received then.
    last: Option<(Instant, u64, u64)>,
    /// Silence past this long (two heartbeat intervals) is reported as `silent_ms`.
    silent_after_ms: u64,
}

impl<'a> Driver<'a> {
    /// Checks the peer against the policy, builds its session and opens the streams.
    async fn start(
        conn: PeerConnection,
        settings: &SyncSettings,
        replica: &'a Replica,
        peers: &'a PeerTable,
    ) -> Result<Driver<'a>, SessionEnd> {
        let PeerConnection {
            peer,
            role,
            connection,
            remote,
            counters,
            closed_notify,
            misbehavior,
        } = conn;
        let is_relay = settings.admins.contains(&peer.name) && peer.admin_cert;
        let mut policy_rx = settings.policy.subscribe();
        let policy = policy_rx.borrow_and_update().clone();
        if policy.is_revoked(&peer.name, Some(&peer.serial_hex)) {
            tracing::warn!(%remote, serial = %peer.serial_hex, "refused a node revoked by _policy");
            connection.close(ErrorCode::Revoked.as_u32().into(), b"revoked by _policy");
            return Err(SessionEnd::Revoked);
        }
        peers.update(&peer.name, |p| {
            p.cert_serial = Some(peer.serial_hex.clone())
        });
        let mut durable = replica.durable();
        let offered = durable.borrow_and_update().clone();
        let mut session = new_session(settings, replica, &peer, is_relay, role, &offered);
        session.handle_policy(policy);
        let mut dicts_rx = settings.dictionaries.clone();
        session.handle_dictionaries(dicts_rx.borrow_and_update().to_vec());
        let (mut base, mut primed_base) = ((0, 0), (0, 0));
        peers.update(&peer.name, |p| {
            base = (p.bytes_sent, p.bytes_received);
            primed_base = (p.primed_streams_sent, p.primed_streams_received);
        });
        tracing::info!(%remote, ?role, relay = is_relay, "session starting");
        let observer = SessionObserver::start(
            peers,
            replica,
            &peer.name,
            is_relay,
            connection.stable_id() as u64,
            (&settings.node, settings.policy.clone()),
        )
        .await;
        let control = open_control(&connection, role).await?;
        let gauges = Arc::new(LimitGauges::default());
        let limiter = Limiter::new(settings.schedule.clone(), &peer.name, gauges.clone());
        let io = Io::spawn(
            control,
            &connection,
            &counters,
            (
                settings.max_value_bytes,
                io::Ahead::new(settings.keyring.clone(), &peer.name, is_relay),
            ),
            limiter,
        );
        Ok(Driver {
            session,
            replica,
            peers,
            peer,
            connection,
            misbehavior,
            _closed_notify: closed_notify,
            io,
            durable,
            offered,
            policy_rx,
            policy_live: true,
            dicts_rx: (dicts_rx, true),
            commands_live: true,
            observer,
            verifying: Vec::new(),
            report: StatusReport {
                counters,
                base,
                primed_base,
                remote,
                last_heard: None,
                next: Instant::now(),
                last: None,
                silent_after_ms: settings.heartbeat_interval_ms.saturating_mul(2),
            },
            frame_fault: false,
            closed: None,
            limits: (settings.schedule.clone(), gauges),
        })
    }

    /// The loop: outputs first, then one store action, then events and status; when there is
    /// nothing to do, wait for the next input.
    async fn run(
        &mut self,
        commands: &mut mpsc::Receiver<Command>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> SessionEnd {
        loop {
            self.drive_transmit();
            if self.drive_action().await {
                continue;
            }
            self.drive_events();
            self.drive_status();
            if self.session.is_closed() {
                let (code, reason) = self
                    .closed
                    .clone()
                    .unwrap_or((ErrorCode::Internal, "closed without a reason".to_owned()));
                return SessionEnd::Closed { code, reason };
            }
            if let Some(end) = self.wait(commands, shutdown).await {
                return end;
            }
        }
    }

    /// Control frames into their (bounded) channel, then urgent and bulk frames while their
    /// channels have room; the session learns whether the bulk one has, and issues no bulk
    /// Load while it has not. Control frames are few and small; a backlog past the bound means
    /// the peer does not read its control stream: its bad input.
    fn drive_transmit(&mut self) {
        // Events first: a dictionary the session accepted is kept before its reply leaves, so
        // the peer can never use it before the readers hold it.
        self.drive_events();
        while let Some(msg) = self.session.poll_transmit_on(StreamKind::Control) {
            let sent = self.io.ctrl_tx.try_send(Box::new(msg));
            if let Err(mpsc::error::TrySendError::Full(_)) = sent {
                self.frame_fault = true;
                self.session.close(
                    ErrorCode::FrameTooLarge,
                    "control frames backed up: the peer does not read its control stream",
                );
            }
        }
        while self.io.urgent_tx.capacity() > 0 {
            let Some(msg) = self.session.poll_transmit_on(StreamKind::Urgent) else {
                break;
            };
            // Room was checked just above, and this driver is the only sender.
            if self.io.urgent_tx.try_send(Box::new(msg)).is_err() {
                break;
            }
        }
        while self.io.bulk_tx.capacity() > 0 {
            let Some(msg) = self.session.poll_transmit_on(StreamKind::Bulk) else {
                break;
            };
            let bytes = approx_bytes(&msg);
            // Room was checked just above, and this driver is the only sender.
            if self.io.bulk_tx.try_send(Box::new(msg)).is_err() {
                break;
            }
            self.limits.1.queue(bytes);
        }
        self.session
            .handle_bulk_blocked(self.io.bulk_tx.capacity() == 0);
    }

    /// Takes in the frames already received (so the session sees every completed stream and
    /// merges their Applies), then runs the next store action, in the session's order. While
    /// the store works, the session stays live: the peer's control frames (heartbeats, echoes,
    /// acknowledgements) are handed to it and its timer runs, so a slow store (a busy disk, a
    /// starved machine) is not mistaken for a dead link on either side. The peer's data waits
    /// in its bounded channel meanwhile, which keeps the backpressure on it. Returns whether
    /// an action ran.
    async fn drive_action(&mut self) -> bool {
        self.take_inputs();
        let Some(action) = self.session.poll_action() else {
            return false;
        };
        let newest = store::newest(&action, &self.observer);
        let run = store::run(self.replica, action);
        tokio::pin!(run);
        let mut control_open = true;
        let done = loop {
            let tick = self.session_deadline().max(Instant::now() + MIN_LIVE_TICK);
            tokio::select! {
                done = &mut run => break done,
                input = self.io.control_in.recv(), if control_open => {
                    match input {
                        Some(input) => self.feed(input),
                        None => {
                            control_open = false;
                            self.session.close(ErrorCode::Internal, "streams ended");
                        }
                    }
                    self.drive_transmit();
                }
                _ = tokio::time::sleep_until(tick.into()) => {
                    self.session.handle_timeout(now_ms());
                    self.drive_transmit();
                }
            }
        };
        store::answer(&mut self.session, &self.observer, done, newest);
        true
    }

    /// Hands the session every frame already received, control frames first.
    fn take_inputs(&mut self) {
        while let Ok(input) = self.io.control_in.try_recv() {
            self.feed(input);
        }
        while let Ok(input) = self.io.data_in.try_recv() {
            self.feed(input);
        }
    }

    /// When the session's timer is due next (an hour ahead if it has none).
    fn session_deadline(&self) -> Instant {
        self.session
            .poll_timeout()
            .map(|t| Instant::now() + Duration::from_millis(t.saturating_sub(now_ms())))
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600))
    }

    /// Reports and acts on the session's events.
    fn drive_events(&mut self) {
        while let Some(event) = self.session.poll_event() {
            match event {
                Event::Established {
                    compression,
                    peer_replica,
                    protocol,
                } => {
                    self.io
                        .compress
                        .store(compression == Compression::Zstd, Ordering::Relaxed);
                    // From protocol 2 on, a peer takes the end of a zstd stream on its own.
                    self.io.release_idle.store(protocol >= 2, Ordering::Relaxed);
                    self.io.protocol.send_replace(protocol);
                    self.observer.established(protocol);
                    tracing::info!(?compression, peer_replica = ?peer_replica, protocol, "session established");
                }
                Event::PeerAbout { release } => {
                    tracing::info!(%release, "peer release");
                    self.observer.release(release);
                }
                Event::Rejected { reason, count } => {
                    self.observer.rejected(&reason, count);
                    tracing::warn!(%reason, count, "rejected versions from peer");
                }
                Event::DigestMismatch { collection } => {
                    tracing::warn!(%collection, "digests differ with equal vectors; reconciling");
                }
                Event::Verified {
                    collection,
                    outcome,
                } => self.verified(collection, outcome_name(outcome)),
                Event::Acked { .. } => {}
                Event::DictionaryAccepted {
                    collection,
                    id,
                    dictionary,
                } => {
                    tracing::debug!(%collection, %id, bytes = dictionary.len(), "peer's dictionary accepted");
                    self.io.recv_dicts.insert(id, dictionary);
                }
                Event::DictionaryAgreed { dictionary } => {
                    tracing::debug!(collection = %dictionary.collection, id = %dictionary.id, "dictionary agreed");
                    self.io.send_dicts.agree(
                        &dictionary.collection,
                        dictionary.id,
                        dictionary.bytes,
                    );
                }
                Event::Closed { code, reason } => self.session_closed(code, reason),
            }
        }
    }

    /// A verify round of `collection` ended: completes the verifications waiting for it.
    fn verified(&mut self, collection: String, outcome: &str) {
        for v in &mut self.verifying {
            if let Some(at) = v.waiting.iter().position(|c| *c == collection) {
                v.waiting.remove(at);
                v.reports.push(VerifyReport {
                    peer: self.peer.name.clone(),
                    collection: collection.clone(),
                    outcome: outcome.into(),
                });
                break;
            }
        }
        let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.verifying)
            .into_iter()
            .partition(|v| v.waiting.is_empty());
        self.verifying = waiting;
        for v in done {
            let _ = v.reply.send(v.reports);
        }
    }

    /// The session closed: a failure caused by the peer's input is logged, struck for backoff
    /// and counted in the peer's status.
    fn session_closed(&mut self, code: ErrorCode, reason: String) {
        if std::mem::take(&mut self.frame_fault) {
            self.misbehavior.report(code, &reason);
            self.peers.update(&self.peer.name, |p| {
                p.bad_input += 1;
                p.last_bad_input = Some(format!("{code}: {reason}"));
            });
        }
        tracing::info!(?code, %reason, "session closed");
        self.closed = Some((code, reason));
    }

    /// Refreshes the peer table every [`STATUS_EVERY`] while bytes move on the session, and
    /// every [`IDLE_STATUS_EVERY`] while none do. An idle session looks only that often too:
    /// any other wake (input, a local change, a command) brings the next look within
    /// [`STATUS_EVERY`], so the bytes that activity moves (counted by the stream tasks a
    /// little later) still reach the table promptly.
    fn drive_status(&mut self) {
        let now = Instant::now();
        if now < self.report.next {
            return;
        }
        let moved = (
            self.report.counters.bytes_sent(),
            self.report.counters.bytes_received(),
        );
        let (idle, due) = match self.report.last {
            Some((at, sent, received)) => {
                let idle = (sent, received) == moved;
                (idle, !idle || now >= at + IDLE_STATUS_EVERY)
            }
            None => (false, true),
        };
        self.report.next = now
            + if idle {
                IDLE_STATUS_EVERY
            } else {
                STATUS_EVERY
            };
        if due {
            self.report_status();
            self.report.last = Some((now, moved.0, moved.1));
        }
    }

    /// Something happened on the session: look at the peer table within [`STATUS_EVERY`].
    fn activity(&mut self) {
        self.report.next = self.report.next.min(Instant::now() + STATUS_EVERY);
    }

    fn report_status(&mut self) {
        let st = self.session.status();
        let r = &self.report;
        let quiet = now_ms().saturating_sub(st.last_heard_ms);
        self.peers.update(&st.peer_node, |p| {
            p.connected = st.established && !st.closed;
            p.silent_ms = (p.connected && quiet > r.silent_after_ms).then_some(quiet);
            if let Some(t) = r.last_heard {
                p.last_seen = Some(rfc3339(t));
            }
            p.lag_versions = st
                .collections
                .iter()
                .map(|c| c.lag_versions)
                .fold(0, u64::saturating_add);
            p.bytes_sent = r.base.0 + r.counters.bytes_sent();
            p.bytes_received = r.base.1 + r.counters.bytes_received();
            p.address = Some(r.remote.to_string());
            p.rtt_ms = st.rtt_ms;
            p.rejected = st.rejected;
        });
        let sent: Vec<String> = self
            .session
            .agreed_dictionaries()
            .into_iter()
            .map(|(c, _)| c)
            .collect();
        let received: Vec<String> = self
            .session
            .held_dictionaries()
            .into_iter()
            .map(|(c, _)| c)
            .collect();
        self.peers.update(&st.peer_node, |p| {
            p.dictionaries_sent = sent;
            p.dictionaries_received = received;
            p.primed_streams_sent = r.primed_base.0 + r.counters.primed_sent();
            p.primed_streams_received = r.primed_base.1 + r.counters.primed_received();
        });
        let rate = rate_now(&self.limits.0, &st.peer_node);
        let queued = if st.closed { 0 } else { self.limits.1.queued() };
        self.peers.update(&st.peer_node, |p| {
            p.limit = rate.map(|r| r.to_string());
            p.limit_bytes_per_sec = rate.map(|r| r.bytes_per_sec());
            p.queued_bytes = queued;
        });
        self.observer.report(&st, r.last_heard);
    }

    /// Waits for the next input, local change, command or timer and hands it to the session;
    /// returns why the session ends when it does.
    async fn wait(
        &mut self,
        commands: &mut mpsc::Receiver<Command>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Option<SessionEnd> {
        let deadline = self.session_deadline().min(self.report.next);
        let wake = tokio::select! {
            input = self.io.control_in.recv() => Wake::Input(input),
            input = self.io.data_in.recv() => Wake::Input(input),
            changed = self.durable.changed() => Wake::Durable(changed.is_ok()),
            changed = self.policy_rx.changed(), if self.policy_live => Wake::Policy(changed.is_ok()),
            changed = self.dicts_rx.0.changed(), if self.dicts_rx.1 => Wake::Dictionaries(changed.is_ok()),
            _ = self.io.bulk_tx.reserve(), if self.io.bulk_tx.capacity() == 0 => Wake::BulkRoom,
            _ = self.io.urgent_tx.reserve(), if self.io.urgent_tx.capacity() == 0 => Wake::BulkRoom,
            cmd = commands.recv(), if self.commands_live => Wake::Command(cmd),
            _ = tokio::time::sleep_until(deadline.into()) => Wake::Timer,
            _ = shutdown.wait_for(|s| *s) => Wake::Shutdown,
            closed = self.connection.closed() => Wake::ConnectionClosed(closed.to_string()),
        };
        if !matches!(wake, Wake::Timer) {
            self.activity();
        }
        match wake {
            Wake::Input(Some(input)) => self.feed(input),
            Wake::Input(None) => self.session.close(ErrorCode::Internal, "streams ended"),
            Wake::Durable(false) => return Some(SessionEnd::StoreClosed),
            Wake::Durable(true) => {
                // Only the collections whose offer moved: at province scale a system
                // collection's vector has an origin per node, and every status report that a
                // relay applies wakes all of its sessions.
                let state = self.durable.borrow_and_update().clone();
                for (collection, vv) in &state.vvs {
                    if self.offered.vvs.get(collection) != Some(vv) {
                        self.session.handle_local_vv(collection, vv.clone());
                    }
                }
                self.offered = state;
            }
            Wake::Policy(live) => self.policy_changed(live),
            Wake::Dictionaries(false) => self.dicts_rx.1 = false,
            Wake::Dictionaries(true) => {
                let dicts = self.dicts_rx.0.borrow_and_update().to_vec();
                self.session.handle_dictionaries(dicts);
            }
            Wake::BulkRoom => {}
            Wake::Command(Some(Command::Verify { collections, reply })) => {
                for c in &collections {
                    self.session.request_verify(c);
                }
                self.verifying.push(PendingVerify {
                    waiting: collections,
                    reports: Vec::new(),
                    reply,
                });
            }
            Wake::Command(None) => self.commands_live = false,
            Wake::Timer => self.session.handle_timeout(now_ms()),
            Wake::Shutdown => {
                self.session
                    .close(ErrorCode::Internal, "node shutting down");
                self.drive_transmit();
                return Some(SessionEnd::Shutdown);
            }
            Wake::ConnectionClosed(e) => return Some(SessionEnd::ConnectionClosed(e)),
        }
        None
    }

    /// The policy changed (or its source is gone, `live` false): a revoked peer is closed,
    /// otherwise the session applies the new policy.
    fn policy_changed(&mut self, live: bool) {
        if !live {
            self.policy_live = false;
            return;
        }
        let policy = self.policy_rx.borrow_and_update().clone();
        if policy.is_revoked(&self.peer.name, Some(&self.peer.serial_hex)) {
            tracing::warn!(serial = %self.peer.serial_hex, "closing: the peer was revoked by _policy");
            self.session.close(ErrorCode::Revoked, "revoked by _policy");
        } else {
            self.session.handle_policy(policy);
        }
    }

    /// Hands one input from the peer to the session.
    fn feed(&mut self, input: Input) {
        match input {
            Input::Frame(stream, msg) => {
                self.report.last_heard = Some(SystemTime::now());
                tracing::debug!(?stream, kind = msg.kind(), "frame received");
                let peer_closing = msg.is_error();
                let was_closed = self.session.is_closed();
                self.session.handle_frame(stream, *msg, now_ms());
                // A frame (other than the peer's own error frame) that made the session fail
                // is the peer's bad input; it is reported when the Closed event is drained.
                if !was_closed && self.session.is_closed() && !peer_closing {
                    self.frame_fault = true;
                }
            }
            Input::Invalid(stream, code, why) => {
                if !self.session.is_closed() {
                    self.frame_fault = true;
                    self.session
                        .close(code, &format!("{stream:?} stream: {why}"));
                }
            }
            Input::Ended(stream, why) => {
                self.session.close(
                    ErrorCode::Internal,
                    &format!("{stream:?} stream ended: {why}"),
                );
            }
        }
    }

    /// Ends the session: lets the writers flush a final error frame, closes the connection,
    /// joins the readers (they end with it) and reports the final state.
    async fn finish(mut self, end: SessionEnd) -> (SessionEnd, Vec<(String, VersionVector)>) {
        // The session's last frames (an error frame) go out before the streams close.
        self.drive_transmit();
        self.drive_events();
        // Dropping the senders lets the writers flush (a final error frame) and finish.
        self.io.ctrl_tx = mpsc::channel(1).0;
        self.io.bulk_tx = mpsc::channel(1).0;
        self.io.urgent_tx = mpsc::channel(1).0;
        join_all(&mut self.io.writers, FLUSH_TIMEOUT).await;
        let code = match &end {
            SessionEnd::Closed { code, .. } => code.as_u32(),
            _ => 0,
        };
        self.connection
            .close(code.into(), end.to_string().as_bytes());
        join_all(&mut self.io.readers, JOIN_TIMEOUT).await;
        self.report_status();
        (end, self.session.status().peer_vvs)
    }
}

/// The byte-moving tasks of a session and the channels to them.
struct Io {
    /// Frames from the peer's control stream.
    control_in: mpsc::Receiver<Input>,
    /// Frames from the peer's data (bulk and urgent) streams.
    data_in: mpsc::Receiver<Input>,
    ctrl_tx: mpsc::Sender<Box<Message>>,
    bulk_tx: mpsc::Sender<Box<Message>>,
    /// Frames of urgent collections (protocol 3): their own stream, never throttled.
    urgent_tx: mpsc::Sender<Box<Message>>,
    /// The protocol agreed (0 until then): a peer's second data stream is read from 3 on.
    protocol: watch::Sender<u16>,
    readers: JoinSet<()>,
    writers: JoinSet<()>,
    compress: Arc<AtomicBool>,
    /// The bulk writer may end its zstd stream when idle (the peer speaks protocol 2).
    release_idle: Arc<AtomicBool>,
    /// The peer's dictionaries the session accepted: the readers decode with them.
    recv_dicts: RecvDictionaries,
    /// This node's dictionaries the peer accepted: the writers prime new zstd streams with
    /// them.
    send_dicts: SendDictionaries,
}

impl Io {
    /// Spawns a reader per receive stream and a writer per send stream, with bounded channels;
    /// the bulk writer is paced by `limiter`.
    fn spawn(
        (ctrl_send, ctrl_recv): (quinn::SendStream, quinn::RecvStream),
        connection: &quinn::Connection,
        counters: &TrafficCounters,
        (max_value_bytes, ahead): (usize, io::Ahead),
        limiter: Limiter,
    ) -> Io {
        let (control_tx, control_in) = mpsc::channel(INPUT_QUEUE);
        let (data_tx, data_in) = mpsc::channel(INPUT_QUEUE);
        let mut readers = JoinSet::new();
        let limit = officesync_protocol::wire::MAX_FRAME_BYTES;
        readers.spawn(io::read_frames(
            FramedRecv::new(ctrl_recv)
                .with_limit(limit)
                .with_counters(counters.clone()),
            StreamKind::Control,
            control_tx,
            (max_value_bytes, None),
        ));
        let (protocol_tx, protocol_rx) = watch::channel(0);
        let (recv_dicts, send_dicts) = (RecvDictionaries::new(), SendDictionaries::new());
        readers.spawn(io::accept_bulk(
            connection.clone(),
            (counters.clone(), recv_dicts.clone()),
            data_tx,
            (max_value_bytes, Some(ahead)),
            protocol_rx,
        ));
        let (ctrl_tx, ctrl_rx) = mpsc::channel(CONTROL_QUEUE);
        let (bulk_tx, bulk_rx) = mpsc::channel(BULK_QUEUE);
        let (urgent_tx, urgent_rx) = mpsc::channel(URGENT_QUEUE);
        let compress = Arc::new(AtomicBool::new(false));
        let release_idle = Arc::new(AtomicBool::new(false));
        let mut writers = JoinSet::new();
        writers.spawn(io::write_control(
            FramedSend::new(ctrl_send).with_counters(counters.clone()),
            ctrl_rx,
        ));
        writers.spawn(io::write_bulk(
            connection.clone(),
            (counters.clone(), send_dicts.clone()),
            bulk_rx,
            (compress.clone(), release_idle.clone()),
            Some(limiter),
        ));
        writers.spawn(io::write_bulk(
            connection.clone(),
            (counters.clone(), send_dicts.clone()),
            urgent_rx,
            (compress.clone(), release_idle.clone()),
            None,
        ));
        Io {
            control_in,
            data_in,
            ctrl_tx,
            bulk_tx,
            urgent_tx,
            protocol: protocol_tx,
            readers,
            writers,
            compress,
            release_idle,
            recv_dicts,
            send_dicts,
        }
    }
}

/// Waits for every task of `set` for at most `limit`; aborts what is left after it.
async fn join_all(set: &mut JoinSet<()>, limit: Duration) {
    let joined = tokio::time::timeout(limit, async { while set.join_next().await.is_some() {} });
    if joined.await.is_err() {
        set.abort_all();
        while set.join_next().await.is_some() {}
    }
}

/// The session of a new connection with `peer`, configured from the node's settings and
/// starting from the durable vectors.
fn new_session(
    settings: &SyncSettings,
    replica: &Replica,
    peer: &transport::PeerCertificate,
    is_relay: bool,
    role: Role,
    offered: &DurableState,
) -> Session {
    let mut cfg = SessionConfig::new(&settings.node, replica.id().clone(), &settings.cluster_id);
    // The session checks values against what the wire can carry; values above this node's own
    // limit are refused one by one (and counted) by the replica, so the stream moves past them.
    cfg.max_value_bytes = settings.max_value_bytes.max(io::WIRE_VALUE_BOUND);
    cfg.heartbeat_interval_ms = settings.heartbeat_interval_ms;
    cfg.idle_timeout_ms = (settings.heartbeat_interval_ms * 6).max(10_000);
    cfg.relay = settings.is_admin;
    cfg.max_clock_skew_ms = settings.max_clock_skew_ms;
    cfg.release = crate::RELEASE.to_owned();
    cfg.past_replicas = replica.past_replicas().to_vec();
    cfg.urgent = settings.urgent.clone();
    if let Some(max) = super::pin::pinned_max_protocol() {
        cfg.max_protocol = max;
    }
    let local_vvs: Vec<_> = offered
        .vvs
        .iter()
        .map(|(c, v)| (c.clone(), v.clone()))
        .collect();
    let identity = PeerIdentity {
        node: peer.name.clone(),
        is_relay,
    };
    // The peer's own certificate verifies its versions even before its `_nodes` entry arrives.
    if let Err(e) = settings.keyring.learn(&peer.der) {
        tracing::warn!(peer = %peer.name, error = %e, "cannot take the peer's certificate");
    }
    let mut session = Session::new(role, cfg, identity, local_vvs, now_ms());
    session.set_signature_check(settings.keyring.clone());
    session
}

/// Opens (dialer) or accepts (acceptor) the control stream.
async fn open_control(
    connection: &quinn::Connection,
    role: Role,
) -> Result<(quinn::SendStream, quinn::RecvStream), SessionEnd> {
    let opened = match role {
        Role::Dialer => connection.open_bi().await,
        Role::Acceptor => tokio::time::timeout(OPEN_TIMEOUT, connection.accept_bi())
            .await
            .map_err(|_| SessionEnd::NoControlStream)?,
    };
    opened.map_err(|e| SessionEnd::ControlStream(e.to_string()))
}
