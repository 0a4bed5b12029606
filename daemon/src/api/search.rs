//! `GET /v1/collections/{c}/search?q=&limit=`: ranked full-text search of a collection named in
//! `[search]`, under the access rules of reading it.

use axum::extract::State;
use axum::http::Uri;
use axum::Json;

use officesync_api::SearchResults;

use super::error::ApiError;
use super::gate::Who;
use super::params::{parse_query, search_target};
use super::ApiState;
use crate::search::{SearchError, DEFAULT_LIMIT, MAX_LIMIT};

/// `GET /v1/collections/{c}/search?q=QUERY&limit=N`: `{"hits": [{"key", "version", "score",
/// "snippet"}], "total"}`, best first, at most `limit` hits (default 10, at most 100). The
/// user and this node must be allowed to read the collection (403), which must be indexed here
/// (404); a missing, empty or malformed `q` is a 400 naming the problem; while the index is
/// being built from the store, 503.
pub(crate) async fn search(
    State(state): State<ApiState>,
    who: Who,
    uri: Uri,
) -> Result<Json<SearchResults>, ApiError> {
    let collection = search_target(uri.path())?;
    let query = parse_query(uri.query(), &["q", "limit"])?;
    let q = query.get("q").ok_or_else(|| {
        ApiError::BadRequest("missing q: give the words to search for, e.g. ?q=防汛".into())
    })?;
    let limit = match query.get("limit") {
        None => DEFAULT_LIMIT,
        Some(raw) => match raw.parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => {
                return Err(ApiError::BadRequest(format!(
                    "invalid limit={raw:?}: use a whole number from 1 to {MAX_LIMIT}"
                )))
            }
        },
    };
    state.access.check_read(&who, &collection)?;
    let Some(search) = &state.search else {
        return Err(SearchError::NotSearchable(collection).into());
    };
    Ok(Json(search.query(&collection, q, limit).await?))
}

impl From<SearchError> for ApiError {
    fn from(e: SearchError) -> Self {
        match e {
            SearchError::NotSearchable(_) => ApiError::NotFound(e.to_string()),
            SearchError::BadQuery(m) => ApiError::BadRequest(m),
            SearchError::Unavailable(m) => ApiError::Unavailable(m),
            SearchError::Failed(m) => ApiError::Internal(m),
            SearchError::Replica(e) => ApiError::Replica(e),
        }
    }
}
