//! Full-text search: the answer to `GET /v1/collections/{c}/search` and each index's state in
//! `/v1/status`.

use serde::{Deserialize, Serialize};

/// One hit of a search.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchHit {
    /// The record's key.
    pub key: String,
    /// The record's current winner, `origin:counter` (the version the snippet is cut from).
    pub version: String,
    /// Relevance (BM25): higher is better; comparable within one answer only.
    pub score: f32,
    /// Up to 160 characters of the record's text around the best match, HTML-escaped, the
    /// matched words in `<mark>` and `</mark>`.
    pub snippet: String,
}

/// The answer to `GET /v1/collections/{c}/search?q=&limit=`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchResults {
    /// The best hits, best first, at most `limit`.
    pub hits: Vec<SearchHit>,
    /// How many records match in all.
    pub total: u64,
}

/// One collection's search index, in `/v1/status` (`search`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SearchIndexStatus {
    /// `opening`, `rebuilding`, `ready` or `failed`.
    pub state: String,
    /// Records in the index (as of its last commit).
    pub docs: u64,
    /// The change-log cursor the index is complete through.
    pub cursor: u64,
    /// Changes applied at this node (any collection) since the index was last seen up to
    /// date: 0 when it is.
    pub lag_changes: u64,
    /// Rebuilds from the store since the daemon started (the first build not counted).
    pub rebuilds: u64,
    /// Commits since the daemon started.
    #[serde(default)]
    pub commits: u64,
    /// Bytes the index takes on disk.
    pub disk_bytes: u64,
    /// Why the index was last built from the store, since the daemon started.
    #[serde(default)]
    pub last_rebuild: Option<String>,
    /// Why the last build failed, while `state` is `failed`.
    #[serde(default)]
    pub error: Option<String>,
}
