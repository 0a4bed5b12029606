//! Change-feed bodies: a page of `GET /v1/collections/{c}/changes`, one change (also the data
//! of each event of the event stream), and the final event of a stream.

use serde::{Deserialize, Serialize};

use crate::Hlc;

/// One change: a version of a key applied at this node, at `cursor` in its apply order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeBody {
    /// The key.
    pub key: String,
    /// The version applied, `origin:counter`.
    pub version: String,
    /// Who wrote it: `USER@NODE`, or `NODE` for a system write; null when unknown.
    #[serde(default)]
    pub author: Option<String>,
    /// Its HLC stamp.
    pub hlc: Hlc,
    /// True for a tombstone (a delete).
    pub deleted: bool,
    /// Its place in this node's apply order: resume after it with `since=` or
    /// `Last-Event-ID`.
    pub cursor: u64,
}

/// The answer to `GET /v1/collections/{c}/changes?since=&prefix=&limit=`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangesPage {
    /// Changes after `since`, in this node's apply order.
    pub changes: Vec<ChangeBody>,
    /// The `since` of the following page (equal to the one given when nothing is new).
    pub next: u64,
}

/// The data of the last event of a change stream (`event: cutoff` or `event: closing`): why
/// the daemon ends it, and where to resume (`since=` or `Last-Event-ID`), so nothing is
/// missed or seen twice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedEnd {
    /// Why the stream ends.
    pub reason: String,
    /// The cursor to resume from: that of the last change sent (or the start, if none).
    pub resume_from: u64,
}

/// SSE event name of the last event sent to a client too slow to keep up.
pub const FEED_CUTOFF_EVENT: &str = "cutoff";
/// SSE event name of the last event sent when the daemon stops.
pub const FEED_CLOSING_EVENT: &str = "closing";
/// SSE event name of the last event sent when the client may no longer read the collection
/// (its user was removed, its token replaced, its role or collections changed, or the node's
/// policy no longer lets the node read it).
pub const FEED_FORBIDDEN_EVENT: &str = "forbidden";
