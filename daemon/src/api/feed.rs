//! The change feed: `GET /v1/collections/{c}/changes`, a JSON page of the changes of a
//! collection in this node's apply order, or, with `Accept: text/event-stream`, a live stream
//! of them as server-sent events (each event's `id` is its cursor).
//!
//! **Bounds.** A stream reads the change log a page at a time into a buffer of
//! [`FEED_BUFFER`] events that its client drains: a client that takes no event for
//! `[api] feed_cutoff_ms` while changes wait is too slow to keep up, and its stream ends with a
//! final `cutoff` event naming the cursor to resume from, so a stalled client never holds more
//! than that buffer. At most `[api] max_feeds` streams are open at once (503 past it). An idle
//! stream gets a keep-alive comment every [`FEED_KEEP_ALIVE`]. When the daemon stops, every
//! stream ends with a `closing` event naming the cursor to resume from.
//!
//! **Access.** A stream checks its reader's access again whenever the users or the policy
//! change, before it sends anything more: a reader that lost access (user removed, token
//! replaced, role or collections changed, node policy) gets a final `forbidden` event.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::State;
use axum::http::header::ACCEPT;
use axum::http::{HeaderMap, Uri};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use officesync_api::{
    ChangeBody, ChangesPage, FeedEnd, FEED_CLOSING_EVENT, FEED_CUTOFF_EVENT, FEED_FORBIDDEN_EVENT,
};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};

use super::access::Access;
use super::error::ApiError;
use super::gate::{Gate, Who};
use super::params::{changes_target, parse_query};
use super::{wire_hlc, ApiState};
use crate::replica::{Change, ChangePage, Replica, ReplicaError};

/// Interval of the keep-alive comment of an idle stream.
pub const FEED_KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Events one stream buffers for its client at most.
pub const FEED_BUFFER: usize = 128;
/// Changes one stream reads from the log at a time.
const FEED_PAGE: usize = 64;
/// Default `[api] feed_cutoff_ms`.
pub const DEFAULT_FEED_CUTOFF: Duration = Duration::from_secs(30);
/// Changes in a JSON page without `limit`.
pub const DEFAULT_CHANGES_LIMIT: usize = 100;
/// Largest `limit` of a JSON page.
pub const MAX_CHANGES_LIMIT: usize = 1000;

/// The bounds of the change streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedLimits {
    /// Streams open at once at most.
    pub max_feeds: usize,
    /// How long a client may take no event while changes wait before it is cut off.
    pub cutoff: Duration,
    /// Interval of the keep-alive comment.
    pub keep_alive: Duration,
    /// Events buffered per stream.
    pub buffer: usize,
}

impl FeedLimits {
    /// `max_feeds` streams cut off after `cutoff`, with the default keep-alive and buffer.
    pub fn new(max_feeds: usize, cutoff: Duration) -> Self {
        Self {
            max_feeds,
            cutoff,
            keep_alive: FEED_KEEP_ALIVE,
            buffer: FEED_BUFFER,
        }
    }
}

impl Default for FeedLimits {
    fn default() -> Self {
        Self::new(crate::config::DEFAULT_MAX_FEEDS, DEFAULT_FEED_CUTOFF)
    }
}

/// The open change streams: their slots, counters, and the daemon's stop signal.
#[derive(Debug)]
pub struct Feeds {
    limits: FeedLimits,
    slots: Arc<Semaphore>,
    /// Streams ended because their client was too slow.
    cutoffs: AtomicU64,
    /// Streams refused because `max_feeds` were open.
    refused: AtomicU64,
    /// Streams opened since start.
    opened: AtomicU64,
    stopped: watch::Receiver<bool>,
}

impl Feeds {
    /// Streams within `limits` that end when `stopped` turns true (or its sender goes).
    pub fn new(limits: FeedLimits, stopped: watch::Receiver<bool>) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(limits.max_feeds)),
            limits,
            cutoffs: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            opened: AtomicU64::new(0),
            stopped,
        }
    }

    /// Streams open now.
    pub fn open(&self) -> usize {
        self.limits
            .max_feeds
            .saturating_sub(self.slots.available_permits())
    }

    /// Streams cut off (client too slow) since start.
    pub fn cutoffs(&self) -> u64 {
        self.cutoffs.load(Ordering::Relaxed)
    }

    /// Streams refused (all `max_feeds` open) since start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Streams opened since start.
    pub fn opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    /// The configured bounds.
    pub fn limits(&self) -> FeedLimits {
        self.limits
    }
}

impl Default for Feeds {
    fn default() -> Self {
        // Never stopped: for states built without a daemon (tests, tools).
        let (tx, rx) = watch::channel(false);
        std::mem::forget(tx);
        Self::new(FeedLimits::default(), rx)
    }
}

/// `c` as the API writes it.
fn change_body(c: &Change) -> ChangeBody {
    ChangeBody {
        key: c.key.clone(),
        version: c.version.to_string(),
        author: c.author.clone(),
        hlc: wire_hlc(c.hlc),
        deleted: c.deleted,
        cursor: c.cursor,
    }
}

/// A cursor parameter or header: a non-negative integer.
fn parse_cursor(what: &str, raw: &str) -> Result<u64, ApiError> {
    raw.trim().parse().map_err(|_| {
        ApiError::BadRequest(format!(
            "invalid {what} {raw:?}: use a cursor as a change feed gave it (a number)"
        ))
    })
}

/// True when the client asks for an event stream.
fn wants_stream(headers: &HeaderMap) -> bool {
    headers
        .get_all(ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            t.split(';')
                .next()
                .is_some_and(|m| m.trim().eq_ignore_ascii_case("text/event-stream"))
        })
}

/// A change read that may find its cursor expired: 410 Gone, saying to start again from 0.
async fn read_changes(
    replica: &Replica,
    collection: &str,
    since: u64,
    prefix: &str,
    limit: usize,
) -> Result<ChangePage, ApiError> {
    replica
        .changes(collection, since, prefix, limit)
        .await
        .map_err(|e| match e {
            ReplicaError::CursorExpired { .. } => ApiError::Gone(format!(
                "{e}: read the collection again and follow the changes from since=0"
            )),
            e => ApiError::Replica(e),
        })
}

/// `GET /v1/collections/{c}/changes?since=&prefix=&limit=`.
///
/// As JSON: `{"changes": [..], "next"}`, up to `limit` (default 100, at most 1000) changes of
/// the collection with a cursor above `since` (default 0: from the start of the log) whose key
/// starts with `prefix`, in this node's apply order; `next` is the `since` of the following
/// page. A `since` older than the log keeps: 410.
///
/// With `Accept: text/event-stream`: the same changes as a stream that stays open, one event
/// each (`id` = cursor, data = the change as JSON), from `Last-Event-ID` (else `since`, else
/// the newest change now: only what comes next); see the module doc for its bounds and final
/// events. Same access as reading the collection.
pub(crate) async fn changes(
    State(state): State<ApiState>,
    who: Who,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let collection = changes_target(uri.path())?;
    let query = parse_query(uri.query(), &["since", "prefix", "limit"])?;
    let prefix = query.get("prefix").cloned().unwrap_or_default();
    let since = query
        .get("since")
        .map(|raw| parse_cursor("since", raw))
        .transpose()?;
    let stream = wants_stream(&headers);
    let limit = match query.get("limit") {
        None => DEFAULT_CHANGES_LIMIT,
        Some(_) if stream => {
            return Err(ApiError::BadRequest(
                "limit= applies to a page, not to an event stream".into(),
            ))
        }
        Some(raw) => raw
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_CHANGES_LIMIT).contains(n))
            .ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "invalid limit={raw:?}: use 1..={MAX_CHANGES_LIMIT}"
                ))
            })?,
    };
    let last_event_id = match headers.get("last-event-id") {
        None => None,
        Some(v) => Some(parse_cursor(
            "Last-Event-ID",
            v.to_str()
                .map_err(|_| ApiError::BadRequest("Last-Event-ID is not text".into()))?,
        )?),
    };
    // Subscribed before the check: a change after it reaches the stream.
    let (mut policy, users) = (state.access.policy().subscribe(), state.gate.subscribe());
    policy.borrow_and_update();
    state.access.check_read(&who, &collection)?;
    let replica = &state.replica;
    if !stream {
        let page = read_changes(replica, &collection, since.unwrap_or(0), &prefix, limit).await?;
        return Ok(Json(ChangesPage {
            changes: page.changes.iter().map(change_body).collect(),
            next: page.next,
        })
        .into_response());
    }
    let feeds = state.feeds.clone();
    let Ok(slot) = feeds.slots.clone().try_acquire_owned() else {
        feeds.refused.fetch_add(1, Ordering::Relaxed);
        return Err(ApiError::Unavailable(format!(
            "{} change feeds are open, the most this node serves (api.max_feeds); try again later",
            feeds.limits.max_feeds
        )));
    };
    // Subscribed, and its value marked seen, before the first read: a change made durable
    // after that read wakes the producer.
    let mut cursor = replica.change_cursor();
    let now = *cursor.borrow_and_update();
    let start = last_event_id.or(since).unwrap_or(now);
    let first = read_changes(replica, &collection, start, &prefix, FEED_PAGE).await?;
    feeds.opened.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = mpsc::channel(feeds.limits.buffer.max(1));
    let end = Arc::new(Mutex::new(None));
    let access = Reader {
        policy,
        users,
        who,
        gate: state.gate.clone(),
        access: state.access.clone(),
    };
    let producer = Producer {
        access,
        replica: replica.clone(),
        collection,
        prefix,
        since: start,
        tx,
        end: end.clone(),
        feeds: feeds.clone(),
        cursor,
        stopped: feeds.stopped.clone(),
        _slot: slot,
    };
    tokio::spawn(producer.run(first));
    let body = FeedBody {
        start: Some(start),
        rx,
        end,
        done: false,
    };
    let keep_alive = KeepAlive::new().interval(feeds.limits.keep_alive);
    Ok(Sse::new(body).keep_alive(keep_alive).into_response())
}

/// Why a stream ends (its final event).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Ending {
    event: &'static str,
    body: FeedEnd,
}

/// Who reads a stream, and the signals of a change to what it may read.
struct Reader {
    who: Who,
    gate: Gate,
    access: Access,
    policy: watch::Receiver<Arc<officesync_protocol::policy::Policy>>,
    /// `None` with `auth = "none"`.
    users: Option<watch::Receiver<u64>>,
}

impl Reader {
    /// Whether the policy or the users changed since the last check.
    fn changed(&self) -> bool {
        self.policy.has_changed().unwrap_or(false)
            || self
                .users
                .as_ref()
                .is_some_and(|u| u.has_changed().unwrap_or(false))
    }

    /// Resolves once the policy or the users change (never when neither can); the change is
    /// then seen: [`Reader::recheck`] next.
    async fn wait_changed(&mut self) {
        let users = async {
            let gone = match self.users.as_mut() {
                Some(u) => u.changed().await.is_err(),
                None => true,
            };
            if gone {
                std::future::pending::<()>().await;
            }
        };
        let policy = async {
            if self.policy.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            () = users => {}
            () = policy => {}
        }
    }

    /// Checks again that the reader may read `collection`; `Err` says why not.
    fn recheck(&mut self, collection: &str) -> Result<(), String> {
        self.policy.borrow_and_update();
        if let Some(u) = self.users.as_mut() {
            u.borrow_and_update();
        }
        let who = self.gate.recheck(&self.who.0).ok_or_else(|| {
            format!(
                "{} no longer exists or its token was replaced",
                self.who.describe()
            )
        })?;
        self.who = Who(who);
        self.access
            .check_read(&self.who, collection)
            .map_err(|e| e.to_string())
    }
}

/// Reads the change log into one stream's buffer, waiting for new changes when caught up.
struct Producer {
    access: Reader,
    replica: Replica,
    collection: String,
    prefix: String,
    /// The cursor of the last change queued (or the start).
    since: u64,
    tx: mpsc::Sender<Change>,
    end: Arc<Mutex<Option<Ending>>>,
    feeds: Arc<Feeds>,
    cursor: watch::Receiver<u64>,
    stopped: watch::Receiver<bool>,
    /// This stream's place among `max_feeds`, given back when it ends.
    _slot: OwnedSemaphorePermit,
}

/// What the producer does next.
enum Step {
    Continue,
    Stop(Option<Ending>),
}

impl Producer {
    async fn run(mut self, first: ChangePage) {
        let mut page = Some(first);
        let ending = loop {
            if self.access.changed() {
                if let Err(why) = self.access.recheck(&self.collection) {
                    break Some(self.forbidden(why));
                }
            }
            let current = match page.take() {
                Some(p) => Ok(p),
                None => {
                    // Seen before the read: a change made durable after it wakes `changed`.
                    self.cursor.borrow_and_update();
                    read_changes(
                        &self.replica,
                        &self.collection,
                        self.since,
                        &self.prefix,
                        FEED_PAGE,
                    )
                    .await
                }
            };
            let current = match current {
                Ok(p) => p,
                Err(e) => break Some(self.ending(FEED_CUTOFF_EVENT, e.to_string())),
            };
            let caught_up = current.changes.is_empty();
            let next = current.next;
            for change in current.changes {
                match self.queue(change).await {
                    Step::Continue => {}
                    Step::Stop(ending) => return self.finish(ending),
                }
            }
            self.since = self.since.max(next);
            if !caught_up {
                continue;
            }
            tokio::select! {
                changed = self.cursor.changed() => if changed.is_err() {
                    break Some(self.ending(FEED_CLOSING_EVENT, "the store is closing".into()));
                },
                () = self.tx.closed() => break None,
                () = stopped(&mut self.stopped) => {
                    break Some(self.ending(FEED_CLOSING_EVENT, "the daemon is stopping".into()));
                }
                () = self.access.wait_changed() => {
                    if let Err(why) = self.access.recheck(&self.collection) {
                        break Some(self.forbidden(why));
                    }
                }
            }
        };
        self.finish(ending);
    }

    /// The final event of a reader that lost access.
    fn forbidden(&self, why: String) -> Ending {
        tracing::info!(
            collection = %self.collection,
            "a change feed's reader lost access; ended it: {why}"
        );
        self.ending(FEED_FORBIDDEN_EVENT, why)
    }

    /// Queues one change for the client, waiting up to the cutoff for room.
    async fn queue(&mut self, change: Change) -> Step {
        let cursor = change.cursor;
        let change = match self.tx.try_send(change) {
            Ok(()) => {
                self.since = cursor;
                return Step::Continue;
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return Step::Stop(None),
            Err(mpsc::error::TrySendError::Full(change)) => change,
        };
        let cutoff = self.feeds.limits.cutoff;
        tokio::select! {
            room = tokio::time::timeout(cutoff, self.tx.reserve()) => match room {
                Ok(Ok(permit)) => {
                    permit.send(change);
                    self.since = cursor;
                    Step::Continue
                }
                Ok(Err(_)) => Step::Stop(None),
                Err(_) => {
                    self.feeds.cutoffs.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(
                        collection = %self.collection,
                        resume_from = self.since,
                        "a change feed's client took no event for {cutoff:?}; cut it off"
                    );
                    Step::Stop(Some(self.ending(
                        FEED_CUTOFF_EVENT,
                        format!(
                            "this client took no event for {} ms while changes waited: too slow \
                             to keep up; resume from resume_from",
                            cutoff.as_millis()
                        ),
                    )))
                }
            },
            () = stopped(&mut self.stopped) => {
                Step::Stop(Some(self.ending(FEED_CLOSING_EVENT, "the daemon is stopping".into())))
            }
        }
    }

    fn ending(&self, event: &'static str, reason: String) -> Ending {
        Ending {
            event,
            body: FeedEnd {
                reason,
                resume_from: self.since,
            },
        }
    }

    /// Leaves the final event (if any) for the body, after the changes queued, and closes the
    /// buffer.
    fn finish(self, ending: Option<Ending>) {
        *self.end.lock().unwrap_or_else(|p| p.into_inner()) = ending;
        drop(self.tx);
    }
}

/// Resolves once `stopped` is true or its sender is gone.
async fn stopped(stopped: &mut watch::Receiver<bool>) {
    let _ = stopped.wait_for(|s| *s).await;
}

/// The body of a stream: an event with the start cursor as its id only (not dispatched to
/// the client's handlers, but its resume point until a change comes), the changes queued,
/// then the final event, if any.
struct FeedBody {
    start: Option<u64>,
    rx: mpsc::Receiver<Change>,
    end: Arc<Mutex<Option<Ending>>>,
    done: bool,
}

impl futures_core::Stream for FeedBody {
    type Item = Result<Event, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        if let Some(start) = this.start.take() {
            return Poll::Ready(Some(Ok(Event::default().id(start.to_string()))));
        }
        match this.rx.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(change)) => {
                let event = Event::default()
                    .id(change.cursor.to_string())
                    .json_data(change_body(&change))
                    .unwrap_or_else(|_| Event::default().comment("unencodable change"));
                Poll::Ready(Some(Ok(event)))
            }
            Poll::Ready(None) => {
                this.done = true;
                let ending = this.end.lock().unwrap_or_else(|p| p.into_inner()).take();
                Poll::Ready(ending.map(|e| {
                    Ok(Event::default()
                        .event(e.event)
                        .json_data(&e.body)
                        .unwrap_or_else(|_| Event::default().event(e.event)))
                }))
            }
        }
    }
}
