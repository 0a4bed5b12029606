//! Record handlers: put, get (winner or every sibling), delete, scan (with `where`) and the
//! listing of conflicts.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use axum::http::Uri;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use std::collections::BTreeMap;

use officesync_api::{
    ConflictBody, ConflictsPage, HistoryBody, HistoryVersion, ScanPage, ScanRecord, SiblingBody,
    SiblingsBody, WriteBody,
};
use officesync_protocol::names::MAX_KEY_BYTES;
use officesync_protocol::policy::POLICY_COLLECTION;
use officesync_protocol::query::Filter;
use officesync_protocol::Dot;

use super::error::ApiError;
use super::gate::Who;
use super::params::{
    conflicts_target, parse_flag, parse_query, parse_query_repeated, record_target, scan_target,
};
use super::{wire_hlc, ApiState};
use crate::audit::{Kind, Record};
use crate::replica::{
    HistoryRead, Sibling, SiblingRead, SiblingsRead, WinnerRead, WriteAck, CURSOR_MARK,
    MAX_CURSOR_BYTES, MAX_HISTORY_READ, SIBLING_VALUES_BUDGET,
};

/// Header with the winner's version, `origin:counter`.
pub const VERSION_HEADER: &str = "officesync-version";
/// Header with the number of siblings of the key, tombstones included.
pub const SIBLINGS_HEADER: &str = "officesync-siblings";
/// Header with the winner's HLC, `ms.logical`.
pub const HLC_HEADER: &str = "officesync-hlc";

/// Page size of a scan without `limit`.
pub const DEFAULT_SCAN_LIMIT: usize = 100;
/// Largest `limit` a scan accepts.
pub const MAX_SCAN_LIMIT: usize = 1000;

/// The answer to a put or a delete: the version `ack` names.
fn write_body(ack: WriteAck) -> WriteBody {
    WriteBody {
        version: ack.dot.to_string(),
        hlc: wire_hlc(ack.hlc),
    }
}

/// One sibling in the answer to `?all=true`.
fn sibling_body(s: &SiblingRead) -> SiblingBody {
    SiblingBody {
        version: s.dot.to_string(),
        hlc: wire_hlc(s.hlc),
        deleted: s.is_deleted(),
        value_base64: s.value.as_deref().map(|v| BASE64.encode(v)),
        value_bytes: s.len,
        value_omitted: s.is_omitted(),
        author: s.author.clone(),
    }
}

/// `PUT /v1/collections/{c}/records/{key}`: the body is the raw value (any bytes, possibly
/// empty). Answers `{"version", "hlc"}` once the write is acknowledged by the replica.
pub(crate) async fn put_record(
    State(state): State<ApiState>,
    who: Who,
    uri: Uri,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<WriteBody>, ApiError> {
    let (collection, key) = record_target(uri.path())?;
    parse_query(uri.query(), &[])?;
    let max = state.replica.max_value_bytes();
    let body = body.map_err(|r| ApiError::from_body(r, max))?;
    state
        .access
        .check_write(&who, &collection, &key, Some(&body))?;
    let author = who.0.author(state.replica.node());
    let ack = state
        .replica
        .write_as(&collection, &key, Some(body.to_vec()), author)
        .await?;
    state
        .audit(change_record(&state, &who, &collection, &key, &ack, false))
        .await;
    Ok(Json(write_body(ack)))
}

/// `GET /v1/collections/{c}/records/{key}[?all=true | ?version=origin:counter]`.
///
/// Without a parameter: the winner's raw bytes with the version, HLC and sibling-count
/// headers (only the winner's value is read); 404 when the key was never written or its
/// winner is a tombstone.
///
/// With `all=true`: every sibling as JSON, tombstones included, even when the winner is a
/// tombstone (404 only when the key was never written). Values are included in list order
/// (winner first) while their total stays within [`SIBLING_VALUES_BUDGET`] (8 MiB); the
/// sibling whose value would cross it and every later one are listed with `value_base64`
/// null, `value_omitted` true and their `value_bytes`, and the answer has `truncated` true.
///
/// With `version=V`: the raw bytes of the current sibling `V` (as listed by `all=true`), with
/// its version and HLC headers; 404 when the key has no such sibling or it is a tombstone.
///
/// With `history=N` (1..=[`MAX_HISTORY_READ`]): JSON `{"versions": [..]}`, up to `N` versions
/// newest first, the current siblings and the superseded versions this node keeps (each with
/// `superseded`), values within the same budget as `all=true`. History is what this node
/// holds (the answer's `note` says so); 404 only when the key was never written here.
pub(crate) async fn get_record(
    State(state): State<ApiState>,
    who: Who,
    uri: Uri,
) -> Result<Response, ApiError> {
    let (collection, key) = record_target(uri.path())?;
    let query = parse_query(uri.query(), &["all", "version", "history"])?;
    let all = parse_flag("all", query.get("all").map(String::as_str))?;
    if let Some(raw) = query.get("history") {
        if query.len() > 1 {
            return Err(ApiError::BadRequest(
                "history= takes no other parameter (all=, version=)".into(),
            ));
        }
        let limit = raw
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_HISTORY_READ).contains(n))
            .ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "invalid history={raw:?}: use a number of versions, 1..={MAX_HISTORY_READ}"
                ))
            })?;
        state.access.check_read(&who, &collection)?;
        let read = state
            .replica
            .history(&collection, &key, limit, SIBLING_VALUES_BUDGET)
            .await?
            .ok_or_else(|| not_found(&collection, &key))?;
        return Ok(Json(history_body(read, state.replica.history_kept())).into_response());
    }
    let version = match query.get("version") {
        None => None,
        Some(raw) => Some(raw.parse::<Dot>().map_err(|_| {
            ApiError::BadRequest(format!(
                "invalid version={raw:?}: use origin:counter as listed by ?all=true"
            ))
        })?),
    };
    if all && version.is_some() {
        return Err(ApiError::BadRequest(
            "give either all=true or version=, not both".into(),
        ));
    }
    state.access.check_read(&who, &collection)?;
    if all {
        let read = state
            .replica
            .siblings(&collection, &key, SIBLING_VALUES_BUDGET)
            .await?
            .ok_or_else(|| not_found(&collection, &key))?;
        return siblings_answer(read);
    }
    if let Some(dot) = version {
        let sibling = state
            .replica
            .sibling(&collection, &key, &dot)
            .await?
            .ok_or_else(|| {
                ApiError::NotFound(format!(
                    "key {key:?} in collection {collection:?} has no current version {dot}"
                ))
            })?;
        let headers = [
            header(VERSION_HEADER, sibling.dot.to_string())?,
            header(HLC_HEADER, sibling.hlc.to_string())?,
        ];
        return value_answer(headers, sibling, &collection, &key);
    }
    let read = state
        .replica
        .winner(&collection, &key)
        .await?
        .ok_or_else(|| not_found(&collection, &key))?;
    let headers = winner_headers(&read)?;
    value_answer(headers, read.sibling, &collection, &key)
}

/// What a history answer says of itself.
pub const HISTORY_NOTE: &str = "history is what this node holds: versions superseded at \
     another office before they reached this node are not in it";

/// The JSON answer to `?history=N`.
fn history_body(read: HistoryRead, kept: usize) -> HistoryBody {
    let versions: Vec<HistoryVersion> = read
        .versions
        .iter()
        .map(|e| {
            let s = &e.version;
            HistoryVersion {
                version: s.dot.to_string(),
                author: s.author.clone(),
                hlc: wire_hlc(s.hlc),
                deleted: s.is_deleted(),
                superseded: e.superseded,
                value_base64: s.value.as_deref().map(|v| BASE64.encode(v)),
                value_bytes: s.len,
                value_omitted: s.is_omitted(),
            }
        })
        .collect();
    HistoryBody {
        truncated: versions.iter().any(|v| v.value_omitted),
        key: read.key,
        versions,
        kept_per_key: kept as u64,
        note: HISTORY_NOTE.into(),
        value_budget_bytes: SIBLING_VALUES_BUDGET as u64,
    }
}

/// The JSON answer to `?all=true`, with the winner's headers.
fn siblings_answer(read: SiblingsRead) -> Result<Response, ApiError> {
    let first = read
        .siblings
        .first()
        .ok_or_else(|| ApiError::Internal(format!("record {:?} has no version", read.key)))?;
    let headers = [
        header(VERSION_HEADER, first.dot.to_string())?,
        header(SIBLINGS_HEADER, read.siblings.len().to_string())?,
        header(HLC_HEADER, first.hlc.to_string())?,
    ];
    let body = SiblingsBody {
        truncated: read.is_truncated(),
        siblings: read.siblings.iter().map(sibling_body).collect(),
        key: read.key,
        value_budget_bytes: SIBLING_VALUES_BUDGET as u64,
    };
    Ok((headers, Json(body)).into_response())
}

/// One sibling's raw value with `headers`; 404 when it is a tombstone.
fn value_answer<const N: usize>(
    headers: [(HeaderName, HeaderValue); N],
    sibling: Sibling,
    collection: &str,
    key: &str,
) -> Result<Response, ApiError> {
    let Some(value) = sibling.value else {
        return Err(ApiError::NotFound(format!(
            "key {key:?} in collection {collection:?} is deleted"
        )));
    };
    let content_type = (
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    Ok((headers, [content_type], value).into_response())
}

/// `DELETE /v1/collections/{c}/records/{key}`: writes a tombstone that supersedes every
/// version of the key held here, and answers the tombstone's `{"version", "hlc"}`.
///
/// 404, with nothing written, when there is nothing live to delete: the key was never written
/// or every sibling is already a tombstone. A key whose winner is a tombstone but which still
/// has a live concurrent sibling is deleted (the new tombstone resolves the conflict).
pub(crate) async fn delete_record(
    State(state): State<ApiState>,
    who: Who,
    uri: Uri,
) -> Result<Json<WriteBody>, ApiError> {
    let (collection, key) = record_target(uri.path())?;
    parse_query(uri.query(), &[])?;
    state.access.check_write(&who, &collection, &key, None)?;
    // Sibling headers only: no value is loaded to decide.
    let live = state
        .replica
        .siblings(&collection, &key, 0)
        .await?
        .is_some_and(|r| r.any_live());
    if !live {
        return Err(not_found(&collection, &key));
    }
    let author = who.0.author(state.replica.node());
    let ack = state
        .replica
        .write_as(&collection, &key, None, author)
        .await?;
    state
        .audit(change_record(&state, &who, &collection, &key, &ack, true))
        .await;
    Ok(Json(write_body(ack)))
}

/// `GET /v1/collections/{c}/records?prefix=&after=&limit=&where=`: up to `limit` (default 100,
/// at most 1000) live records whose key starts with `prefix`, sorts after `after` and whose
/// winner's value matches every `where` expression (repeatable; see
/// [`officesync_protocol::query`]), in key order. `next`, when not null, is the `after` of the
/// following page. With `where` on a field of `[indexes]`, the index gives the candidates: an
/// equality keeps key order; a range alone (`<`, `<=`, `>`, `>=`) gives the records in the
/// order of that field, then key, and `next` is an opaque cursor (`idx1.…`) to pass back as
/// `after` (see [`crate::replica::Replica::scan_where`]). A page also ends early, with a `next`, once its values reach
/// [`crate::replica::SCAN_PAGE_BYTES`] (8 MiB; it always holds at least one record), once it
/// has examined [`crate::replica::SCAN_MAX_EXAMINED`] keys, deleted and unmatched ones
/// included, or, with `where`, once it has loaded [`crate::replica::SCAN_FILTER_BYTES`] of
/// values to test (then it may hold fewer records than `limit`, even none): follow `next`
/// until it is null. A malformed expression is a 400 naming the problem.
pub(crate) async fn scan(
    State(state): State<ApiState>,
    who: Who,
    uri: Uri,
) -> Result<Json<ScanPage>, ApiError> {
    let collection = scan_target(uri.path())?;
    let (query, exprs) = parse_query_repeated(
        uri.query(),
        &["prefix", "after", "limit", "where"],
        Some("where"),
    )?;
    let filter = Filter::parse(&exprs).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let (prefix, after, limit) = page_params(&query)?;
    state.access.check_read(&who, &collection)?;
    let page = state
        .replica
        .scan_where(&collection, prefix, after, limit, filter)
        .await?;
    let records = page.records.iter().map(scan_record).collect();
    Ok(Json(ScanPage {
        records,
        next: page.next,
    }))
}

/// `GET /v1/collections/{c}/conflicts?prefix=&after=&limit=`: up to `limit` (default 100, at
/// most 1000) keys with two or more siblings (tombstones included), in key order, each with
/// every sibling's version, HLC, author and length, values left out. Paged like the scan
/// (`next`; at most [`crate::replica::SCAN_MAX_EXAMINED`] keys examined per page).
pub(crate) async fn conflicts(
    State(state): State<ApiState>,
    who: Who,
    uri: Uri,
) -> Result<Json<ConflictsPage>, ApiError> {
    let collection = conflicts_target(uri.path())?;
    let query = parse_query(uri.query(), &["prefix", "after", "limit"])?;
    let (prefix, after, limit) = page_params(&query)?;
    state.access.check_read(&who, &collection)?;
    let page = state
        .replica
        .conflicts(&collection, prefix, after, limit)
        .await?;
    let conflicts = page
        .conflicts
        .iter()
        .map(|c| ConflictBody {
            key: c.key.clone(),
            siblings: c.siblings.iter().map(sibling_body).collect(),
        })
        .collect();
    Ok(Json(ConflictsPage {
        conflicts,
        next: page.next,
    }))
}

/// The `prefix`, `after` and `limit` of a paged listing, checked.
fn page_params<'q>(
    query: &'q BTreeMap<&'static str, String>,
) -> Result<(&'q str, Option<&'q str>, usize), ApiError> {
    let limit = match query.get("limit") {
        None => DEFAULT_SCAN_LIMIT,
        Some(raw) => match raw.parse::<usize>() {
            Ok(n) if (1..=MAX_SCAN_LIMIT).contains(&n) => n,
            _ => {
                return Err(ApiError::BadRequest(format!(
                    "invalid limit={raw:?}: use a whole number from 1 to {MAX_SCAN_LIMIT}"
                )))
            }
        },
    };
    let prefix = query.get("prefix").map_or("", String::as_str);
    let after = query
        .get("after")
        .map(String::as_str)
        .filter(|a| !a.is_empty());
    // An index cursor (see `replica::CURSOR_MARK`) holds a value and a key: longer than a key.
    let after_max = match after {
        Some(a) if a.starts_with(CURSOR_MARK) => MAX_CURSOR_BYTES,
        _ => MAX_KEY_BYTES,
    };
    if after.is_some_and(|a| a.len() > after_max) {
        return Err(ApiError::BadRequest(format!(
            "invalid after: longer than the {after_max} bytes a key or a cursor may have"
        )));
    }
    if prefix.len() > MAX_KEY_BYTES {
        return Err(ApiError::BadRequest(format!(
            "invalid prefix: longer than the {MAX_KEY_BYTES} bytes a key may have"
        )));
    }
    Ok((prefix, after, limit))
}

fn scan_record(r: &WinnerRead) -> ScanRecord {
    let winner = r.winner();
    ScanRecord {
        key: r.key.clone(),
        version: winner.dot.to_string(),
        hlc: wire_hlc(winner.hlc),
        siblings: r.siblings as u64,
        value_base64: winner.value.as_deref().map(|v| BASE64.encode(v)),
    }
}

/// The audit record of a write (or, with `deleted`, a delete) acknowledged as `ack`; a change
/// of `_policy` is recorded as a policy change.
fn change_record(
    state: &ApiState,
    who: &Who,
    collection: &str,
    key: &str,
    ack: &WriteAck,
    deleted: bool,
) -> Record {
    let policy = collection == POLICY_COLLECTION;
    let kind = match (policy, deleted) {
        (true, _) => Kind::Policy,
        (false, false) => Kind::Write,
        (false, true) => Kind::Delete,
    };
    let record = Record::new(kind, who.0.author(state.replica.node()))
        .collection(collection)
        .key(key)
        .version(ack.dot.to_string());
    if policy && deleted {
        record.detail("delete")
    } else {
        record
    }
}

fn not_found(collection: &str, key: &str) -> ApiError {
    ApiError::NotFound(format!(
        "key {key:?} not found in collection {collection:?}"
    ))
}

/// One response header; an internal error when `text` cannot be a header value.
fn header(name: &'static str, text: String) -> Result<(HeaderName, HeaderValue), ApiError> {
    let value = HeaderValue::from_str(&text)
        .map_err(|_| ApiError::Internal(format!("cannot put {text:?} in a header")))?;
    Ok((HeaderName::from_static(name), value))
}

/// The version, sibling-count and HLC headers of a plain read.
fn winner_headers(read: &WinnerRead) -> Result<[(HeaderName, HeaderValue); 3], ApiError> {
    let winner = read.winner();
    Ok([
        header(VERSION_HEADER, winner.dot.to_string())?,
        header(SIBLINGS_HEADER, read.siblings.to_string())?,
        header(HLC_HEADER, winner.hlc.to_string())?,
    ])
}
