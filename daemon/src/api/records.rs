//! Record handlers: put, get (winner or every sibling), delete and scan.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use axum::http::Uri;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use officesync_protocol::names::MAX_KEY_BYTES;
use officesync_protocol::Hlc;
use serde::Serialize;

use super::error::ApiError;
use super::params::{parse_flag, parse_query, record_target, scan_target};
use super::ApiState;
use crate::replica::{Record, Sibling, WriteAck};

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

/// Answer to a put or a delete: the new version.
#[derive(Debug, Serialize)]
pub(crate) struct WriteBody {
    /// `origin:counter`.
    version: String,
    hlc: Hlc,
}

impl From<WriteAck> for WriteBody {
    fn from(ack: WriteAck) -> Self {
        Self {
            version: ack.dot.to_string(),
            hlc: ack.hlc,
        }
    }
}

#[derive(Debug, Serialize)]
pub(crate) struct SiblingBody {
    version: String,
    hlc: Hlc,
    deleted: bool,
    value_base64: Option<String>,
}

impl From<&Sibling> for SiblingBody {
    fn from(s: &Sibling) -> Self {
        Self {
            version: s.dot.to_string(),
            hlc: s.hlc,
            deleted: s.value.is_none(),
            value_base64: s.value.as_deref().map(|v| BASE64.encode(v)),
        }
    }
}

#[derive(Debug, Serialize)]
pub(crate) struct SiblingsBody {
    key: String,
    siblings: Vec<SiblingBody>,
}

#[derive(Debug, Serialize)]
pub(crate) struct ScanRecord {
    key: String,
    version: String,
    hlc: Hlc,
    siblings: usize,
    value_base64: Option<String>,
}

#[derive(Debug, Serialize)]
pub(crate) struct ScanBody {
    records: Vec<ScanRecord>,
    next: Option<String>,
}

/// `PUT /v1/collections/{c}/records/{key}`: the body is the raw value (any bytes, possibly
/// empty). Answers `{"version", "hlc"}` once the write is acknowledged by the replica.
pub(crate) async fn put_record(
    State(state): State<ApiState>,
    uri: Uri,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<WriteBody>, ApiError> {
    let (collection, key) = record_target(uri.path())?;
    parse_query(uri.query(), &[])?;
    let max = state.replica.max_value_bytes();
    let body = body.map_err(|r| ApiError::from_body(r, max))?;
    state.access.check_write(&collection, &key, Some(&body))?;
    let ack = state
        .replica
        .write(&collection, &key, Some(body.to_vec()))
        .await?;
    Ok(Json(ack.into()))
}

/// `GET /v1/collections/{c}/records/{key}[?all=true]`.
///
/// Without `all`: the winner's raw bytes with the version, HLC and sibling-count headers;
/// 404 when the key was never written or its winner is a tombstone. With `all=true`: every
/// sibling as JSON, tombstones included, even when the winner is a tombstone (404 only when the
/// key was never written).
pub(crate) async fn get_record(
    State(state): State<ApiState>,
    uri: Uri,
) -> Result<Response, ApiError> {
    let (collection, key) = record_target(uri.path())?;
    let query = parse_query(uri.query(), &["all"])?;
    let all = parse_flag("all", query.get("all").map(String::as_str))?;
    state.access.check_read(&collection)?;
    let record = state
        .replica
        .get(&collection, &key)
        .await?
        .ok_or_else(|| not_found(&collection, &key))?;
    let headers = record_headers(&record)?;
    if all {
        let body = SiblingsBody {
            key: record.key.clone(),
            siblings: record.siblings.iter().map(SiblingBody::from).collect(),
        };
        return Ok((headers, Json(body)).into_response());
    }
    let Some(value) = record.siblings.into_iter().next().and_then(|w| w.value) else {
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
    uri: Uri,
) -> Result<Json<WriteBody>, ApiError> {
    let (collection, key) = record_target(uri.path())?;
    parse_query(uri.query(), &[])?;
    state.access.check_write(&collection, &key, None)?;
    let live = state
        .replica
        .get(&collection, &key)
        .await?
        .is_some_and(|r| r.siblings.iter().any(|s| s.value.is_some()));
    if !live {
        return Err(not_found(&collection, &key));
    }
    let ack = state.replica.write(&collection, &key, None).await?;
    Ok(Json(ack.into()))
}

/// `GET /v1/collections/{c}/records?prefix=&after=&limit=`: up to `limit` (default 100, at most
/// 1000) live records whose key starts with `prefix` and sorts after `after`, in key order.
/// `next`, when not null, is the `after` of the following page.
pub(crate) async fn scan(
    State(state): State<ApiState>,
    uri: Uri,
) -> Result<Json<ScanBody>, ApiError> {
    let collection = scan_target(uri.path())?;
    let query = parse_query(uri.query(), &["prefix", "after", "limit"])?;
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
    for (name, v) in [("prefix", Some(prefix)), ("after", after)] {
        if v.is_some_and(|v| v.len() > MAX_KEY_BYTES) {
            return Err(ApiError::BadRequest(format!(
                "invalid {name}: longer than the {MAX_KEY_BYTES} bytes a key may have"
            )));
        }
    }
    state.access.check_read(&collection)?;
    let page = state
        .replica
        .scan(&collection, prefix, after, limit)
        .await?;
    let records = page.records.iter().filter_map(scan_record).collect();
    Ok(Json(ScanBody {
        records,
        next: page.next,
    }))
}

fn scan_record(r: &Record) -> Option<ScanRecord> {
    let winner = r.siblings.first()?;
    Some(ScanRecord {
        key: r.key.clone(),
        version: winner.dot.to_string(),
        hlc: winner.hlc,
        siblings: r.siblings.len(),
        value_base64: winner.value.as_deref().map(|v| BASE64.encode(v)),
    })
}

fn not_found(collection: &str, key: &str) -> ApiError {
    ApiError::NotFound(format!(
        "key {key:?} not found in collection {collection:?}"
    ))
}

fn record_headers(record: &Record) -> Result<[(HeaderName, HeaderValue); 3], ApiError> {
    let value = |text: String| {
        HeaderValue::from_str(&text)
            .map_err(|_| ApiError::Internal(format!("cannot put {text:?} in a header")))
    };
    let winner = record
        .siblings
        .first()
        .ok_or_else(|| ApiError::Internal(format!("record {:?} has no version", record.key)))?;
    Ok([
        (
            HeaderName::from_static(VERSION_HEADER),
            value(winner.dot.to_string())?,
        ),
        (
            HeaderName::from_static(SIBLINGS_HEADER),
            value(record.siblings.len().to_string())?,
        ),
        (
            HeaderName::from_static(HLC_HEADER),
            value(winner.hlc.to_string())?,
        ),
    ])
}
