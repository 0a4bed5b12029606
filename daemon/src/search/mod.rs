//! Full-text search over the collections named in `[search]`: one tantivy index per collection
//! in `DATA_DIR/search/<collection>/`, kept up to date by an indexer task that follows the
//! replica's change log (local and replicated versions, deletes included), and the ranked
//! queries of `GET /v1/collections/{c}/search`.
//!
//! The index is derived data: it is rebuilt from the store when it is missing, damaged, made
//! with other settings, or further behind than the change log keeps; the daemon starts all the
//! same and queries answer 503 until the rebuild is done.

pub mod analyzer;
pub mod extract;
pub mod index;
mod indexer;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use officesync_api::{SearchHit, SearchIndexStatus, SearchResults};
use thiserror::Error;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::replica::{Replica, ReplicaError};
use index::{Searchable, Unusable};

/// The directory, in the data dir, that holds one index per collection.
pub const SEARCH_DIR: &str = "search";
/// Hits of a query without `limit`.
pub const DEFAULT_LIMIT: usize = 10;
/// Largest `limit` of a query.
pub const MAX_LIMIT: usize = 100;
/// Longest query text, in bytes.
pub const MAX_QUERY_BYTES: usize = 1024;

/// Why a search could not be answered.
#[derive(Debug, Error)]
pub enum SearchError {
    /// The collection is not indexed at this node (404).
    #[error("collection {0:?} is not searchable at this node (add it to [search] collections)")]
    NotSearchable(String),
    /// The query or its limit is malformed (400).
    #[error("{0}")]
    BadQuery(String),
    /// The index is being built or failed (503).
    #[error("{0}")]
    Unavailable(String),
    /// The index failed while answering (500).
    #[error("search failed: {0}")]
    Failed(String),
    /// A hit's record could not be read.
    #[error(transparent)]
    Replica(#[from] ReplicaError),
}

/// Where one collection's index stands.
#[derive(Debug, Clone)]
enum State {
    /// Being opened at start.
    Opening,
    /// Being built from the store; `indexed` records so far.
    Rebuilding {
        /// Records indexed so far.
        indexed: u64,
    },
    /// Open and answering.
    Ready(Searchable),
    /// The last build failed (tried again).
    Failed(String),
}

/// Counters of one index, for status and metrics.
#[derive(Debug, Default)]
struct Stats {
    docs: AtomicU64,
    cursor: AtomicU64,
    current_through: AtomicU64,
    rebuilds: AtomicU64,
    commits: AtomicU64,
}

impl Stats {
    fn docs(&self) -> u64 {
        self.docs.load(Ordering::Relaxed)
    }

    fn set_docs(&self, docs: u64) {
        self.docs.store(docs, Ordering::Relaxed);
    }

    fn set_cursor(&self, cursor: u64) {
        self.cursor.store(cursor, Ordering::Relaxed);
    }

    fn set_current_through(&self, cursor: u64) {
        self.current_through.store(cursor, Ordering::Relaxed);
    }
}

/// One indexed collection: its settings, state and counters, shared by its indexer and the
/// queries.
#[derive(Debug)]
struct Slot {
    collection: String,
    pointers: Vec<String>,
    dir: PathBuf,
    state: RwLock<State>,
    stats: Stats,
    last_rebuild: Mutex<Option<String>>,
}

impl Slot {
    fn set_state(&self, state: State) {
        *self.state.write().unwrap_or_else(|p| p.into_inner()) = state;
    }

    fn state(&self) -> State {
        self.state.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Says why the index is (re)built from the store, and counts it unless it is the first
    /// build.
    fn note_rebuild(&self, reason: &str) {
        if reason == Unusable::Missing.to_string() {
            tracing::info!(collection = %self.collection, dir = %self.dir.display(), "building the search index from the store");
        } else {
            self.stats.rebuilds.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(collection = %self.collection, dir = %self.dir.display(), reason, "rebuilding the search index from the store");
        }
        *self.last_rebuild.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason.to_owned());
    }
}

/// The search service of a node: the indexed collections and their indexer tasks.
#[derive(Debug)]
pub struct Search {
    replica: Replica,
    slots: BTreeMap<String, Arc<Slot>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Search {
    /// Starts an indexer for each collection of `config`'s `[search]` (none when search is
    /// off), stopping when `stop` is set.
    pub fn start(config: &Config, replica: Replica, stop: watch::Receiver<bool>) -> Arc<Search> {
        let root = config.node.data_dir.join(SEARCH_DIR);
        let slots: BTreeMap<String, Arc<Slot>> = config
            .search
            .collections
            .iter()
            .map(|c| {
                let slot = Slot {
                    collection: c.clone(),
                    pointers: config.search.pointers(c).to_vec(),
                    dir: root.join(c),
                    state: RwLock::new(State::Opening),
                    stats: Stats::default(),
                    last_rebuild: Mutex::new(None),
                };
                (c.clone(), Arc::new(slot))
            })
            .collect();
        let tasks = slots
            .values()
            .map(|slot| tokio::spawn(indexer::run(slot.clone(), replica.clone(), stop.clone())))
            .collect();
        Arc::new(Search {
            replica,
            slots,
            tasks: Mutex::new(tasks),
        })
    }

    /// True when `collection` is indexed here.
    pub fn is_searchable(&self, collection: &str) -> bool {
        self.slots.contains_key(collection)
    }

    /// Waits (up to `grace`) for the indexers to make their last commit once `stop` is set.
    pub async fn join(&self, grace: Duration) {
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        for task in tasks {
            let abort = task.abort_handle();
            if tokio::time::timeout(grace, task).await.is_err() {
                tracing::warn!("a search indexer did not stop in time");
                abort.abort();
            }
        }
    }

    /// The best `limit` hits for `query` in `collection`, with snippets cut from the records'
    /// current values (a hit whose record was deleted meanwhile is left out).
    pub async fn query(
        &self,
        collection: &str,
        query: &str,
        limit: usize,
    ) -> Result<SearchResults, SearchError> {
        let slot = self
            .slots
            .get(collection)
            .ok_or_else(|| SearchError::NotSearchable(collection.to_owned()))?;
        check_query(query)?;
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(SearchError::BadQuery(format!(
                "invalid limit={limit}: use a whole number from 1 to {MAX_LIMIT}"
            )));
        }
        let searchable = match slot.state() {
            State::Ready(s) => s,
            State::Opening => {
                return Err(SearchError::Unavailable(format!(
                    "the search index of {collection:?} is being opened; try again shortly"
                )))
            }
            State::Rebuilding { indexed } => {
                return Err(SearchError::Unavailable(format!(
                    "the search index of {collection:?} is being rebuilt from the store \
                     ({indexed} records so far); try again shortly"
                )))
            }
            State::Failed(e) => {
                return Err(SearchError::Unavailable(format!(
                    "the search index of {collection:?} cannot be built: {e}"
                )))
            }
        };
        let text = query.to_owned();
        let found = tokio::task::spawn_blocking(move || searchable.search(&text, limit))
            .await
            .map_err(|e| SearchError::Failed(e.to_string()))?
            .map_err(|e| match e {
                index::QueryError::Malformed(m) => {
                    SearchError::BadQuery(format!("invalid q={query:?}: {m}"))
                }
                index::QueryError::Index(e) => SearchError::Failed(e.to_string()),
            })?;
        let mut total = found.total as u64;
        let mut current = Vec::with_capacity(found.hits.len());
        for hit in found.hits {
            let read = self.replica.winner(collection, &hit.key).await?;
            match read.and_then(|r| Some((r.winner().dot.to_string(), r.sibling.value?))) {
                Some((version, value)) => current.push((hit, version, value)),
                None => total = total.saturating_sub(1),
            }
        }
        let snippets = found.snippets;
        let pointers = slot.pointers.clone();
        let hits = tokio::task::spawn_blocking(move || {
            current
                .into_iter()
                .map(|(hit, version, value)| {
                    let text = extract::document_text(&value, &pointers);
                    SearchHit {
                        key: hit.key,
                        version,
                        score: hit.score,
                        snippet: index::snippet(&snippets, &text),
                    }
                })
                .collect()
        })
        .await
        .map_err(|e| SearchError::Failed(e.to_string()))?;
        Ok(SearchResults { hits, total })
    }

    /// Each indexed collection's state, for `/v1/status` and `/metrics`. `change_cursor` is
    /// the change log's last durable cursor.
    pub fn status(&self) -> BTreeMap<String, SearchIndexStatus> {
        let now = *self.replica.change_cursor().borrow();
        self.slots
            .iter()
            .map(|(name, slot)| {
                let (state, error) = match slot.state() {
                    State::Opening => ("opening", None),
                    State::Rebuilding { .. } => ("rebuilding", None),
                    State::Ready(_) => ("ready", None),
                    State::Failed(e) => ("failed", Some(e)),
                };
                let through = slot.stats.current_through.load(Ordering::Relaxed);
                let status = SearchIndexStatus {
                    state: state.to_owned(),
                    docs: slot.stats.docs(),
                    cursor: slot.stats.cursor.load(Ordering::Relaxed),
                    lag_changes: now.saturating_sub(through),
                    rebuilds: slot.stats.rebuilds.load(Ordering::Relaxed),
                    commits: slot.stats.commits.load(Ordering::Relaxed),
                    disk_bytes: index::dir_bytes(&slot.dir),
                    last_rebuild: slot
                        .last_rebuild
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .clone(),
                    error,
                };
                (name.clone(), status)
            })
            .collect()
    }
}

/// Refuses an empty or overlong query text.
fn check_query(query: &str) -> Result<(), SearchError> {
    if query.trim().is_empty() {
        return Err(SearchError::BadQuery(
            "q is empty: give the words to search for, e.g. q=防汛".into(),
        ));
    }
    if query.len() > MAX_QUERY_BYTES {
        return Err(SearchError::BadQuery(format!(
            "q is {} bytes long: at most {MAX_QUERY_BYTES}",
            query.len()
        )));
    }
    Ok(())
}
