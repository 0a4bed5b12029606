//! Request parsing for the record routes: the collection and key taken from the raw path with
//! strict percent-decoding, and query strings checked against the parameters a route accepts.

use std::collections::BTreeMap;

use officesync_protocol::names;

use super::error::ApiError;

/// Path prefix of every collection route.
const COLLECTIONS: &str = "/v1/collections/";

/// Decodes `%XX` escapes (and `+` as a space when `plus_is_space`, as in query strings).
/// Refuses a `%` not followed by two hex digits, and bytes that are not UTF-8.
pub(crate) fn percent_decode(raw: &str, plus_is_space: bool) -> Result<String, String> {
    let mut out = Vec::with_capacity(raw.len());
    let mut bytes = raw.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'%' => {
                let hi = bytes.next().and_then(hex_value);
                let lo = bytes.next().and_then(hex_value);
                match (hi, lo) {
                    (Some(hi), Some(lo)) => out.push(hi << 4 | lo),
                    _ => return Err(format!("malformed percent-encoding in {raw:?}")),
                }
            }
            b'+' if plus_is_space => out.push(b' '),
            b => out.push(b),
        }
    }
    String::from_utf8(out).map_err(|_| format!("{raw:?} does not decode to UTF-8"))
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The validated collection of a raw `/v1/collections/{c}/...` path and the raw rest after
/// its `/` (None when the path ends at the collection).
fn split_collection(path: &str) -> Result<(String, Option<&str>), ApiError> {
    let rest = path
        .strip_prefix(COLLECTIONS)
        .ok_or_else(|| ApiError::NotFound(format!("no such endpoint: {path}")))?;
    let (raw, tail) = match rest.split_once('/') {
        Some((c, tail)) => (c, Some(tail)),
        None => (rest, None),
    };
    let collection = percent_decode(raw, false)
        .map_err(|e| ApiError::BadRequest(format!("invalid collection name: {e}")))?;
    names::validate_collection_name(&collection)
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    Ok((collection, tail))
}

/// The collection of a conflicts path `/v1/collections/{c}/conflicts`.
pub(crate) fn conflicts_target(path: &str) -> Result<String, ApiError> {
    Ok(split_collection(path)?.0)
}

/// The collection of a change-feed path `/v1/collections/{c}/changes`.
pub(crate) fn changes_target(path: &str) -> Result<String, ApiError> {
    Ok(split_collection(path)?.0)
}

/// The collection of a search path `/v1/collections/{c}/search`.
pub(crate) fn search_target(path: &str) -> Result<String, ApiError> {
    Ok(split_collection(path)?.0)
}

/// The collection of a scan path `/v1/collections/{c}/records`.
pub(crate) fn scan_target(path: &str) -> Result<String, ApiError> {
    Ok(split_collection(path)?.0)
}

/// The collection and key of a record path `/v1/collections/{c}/records/{key}`: the key is
/// everything after `/records/`, percent-decoded, 1..=1024 bytes of UTF-8.
pub(crate) fn record_target(path: &str) -> Result<(String, String), ApiError> {
    let (collection, tail) = split_collection(path)?;
    let raw_key = tail
        .and_then(|t| t.strip_prefix("records/"))
        .ok_or_else(|| ApiError::NotFound(format!("no such endpoint: {path}")))?;
    let key = percent_decode(raw_key, false)
        .map_err(|e| ApiError::BadRequest(format!("invalid key: {e}")))?;
    names::validate_key(&key).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    Ok((collection, key))
}

/// Parses a query string into its parameters, refusing names outside `allowed`, repeated
/// names and bad encoding. A parameter given without `=` has the empty value.
pub(crate) fn parse_query(
    query: Option<&str>,
    allowed: &[&'static str],
) -> Result<BTreeMap<&'static str, String>, ApiError> {
    Ok(parse_query_repeated(query, allowed, None)?.0)
}

/// [`parse_query`] where the parameter `repeated` (one of `allowed`) may be given any number
/// of times: its values, in order, are the second part of the answer.
pub(crate) fn parse_query_repeated(
    query: Option<&str>,
    allowed: &[&'static str],
    repeated: Option<&'static str>,
) -> Result<(BTreeMap<&'static str, String>, Vec<String>), ApiError> {
    let mut out = BTreeMap::new();
    let mut many = Vec::new();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (raw_name, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
        let bad = |e: String| ApiError::BadRequest(format!("invalid query string: {e}"));
        let name = percent_decode(raw_name, true).map_err(bad)?;
        let value = percent_decode(raw_value, true).map_err(bad)?;
        let Some(known) = allowed.iter().copied().find(|a| *a == name) else {
            return Err(ApiError::BadRequest(if allowed.is_empty() {
                format!("unknown query parameter {name:?}: this endpoint takes none")
            } else {
                format!(
                    "unknown query parameter {name:?}: this endpoint takes {}",
                    allowed.join(", ")
                )
            }));
        };
        if repeated == Some(known) {
            many.push(value);
        } else if out.insert(known, value).is_some() {
            return Err(ApiError::BadRequest(format!(
                "query parameter {known:?} given twice"
            )));
        }
    }
    Ok((out, many))
}

/// A boolean query flag: `true`/`1`/empty (`?all`) or `false`/`0`.
pub(crate) fn parse_flag(name: &str, value: Option<&str>) -> Result<bool, ApiError> {
    match value {
        None | Some("false" | "0") => Ok(false),
        Some("true" | "1" | "") => Ok(true),
        Some(other) => Err(ApiError::BadRequest(format!(
            "invalid {name}={other:?}: use true or false"
        ))),
    }
}
