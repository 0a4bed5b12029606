//! The read-only browse pages for staff, server-rendered HTML without JavaScript behind the
//! same authentication as the API (Basic `NAME:TOKEN` works in a browser):
//!
//! - `GET /browse`: the collections the caller (user and node) may read, `table#collections`
//!   with one `tr.collection[data-collection]` each, linking to its page.
//! - `GET /browse/{c}?prefix=&where=&after=&limit=`: a form (`form#search`: `input[name=prefix]`,
//!   `textarea[name=where]`, one expression per line; `where` may also be repeated) and one
//!   page of the matching records, `table#records` with `tr.record[data-key]` (cells `key`,
//!   `version`, `siblings`, `value`), and `a#next` to the following page. A malformed
//!   expression is a 400 page naming the problem (`p#error`). When this node indexes the
//!   collection for full-text search, a second form (`form#fulltext`, `input[name=q]`); with
//!   `q` the page shows the ranked hits instead (`table#hits`, `tr.hit[data-key]`, cells
//!   `key`, `score`, `snippet` with the matched words in `mark`).
//! - `GET /browse/{c}/record?key=K`: every sibling of the key, `table#siblings` with
//!   `tr.sibling[data-version]` (cells `version`, `author`, `hlc`, `deleted`, `value`: the text
//!   when it is UTF-8, else its size), and `section#history` (the versions this node kept).
//!
//! Every value and key is escaped; a collection the caller may not read is a 403 and none of
//! its records is shown.

use std::fmt::Write as _;

use axum::extract::{Path, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use officesync_protocol::names;
use officesync_protocol::query::Filter;

use super::error::ApiError;
use super::gate::Who;
use super::params::{parse_query, parse_query_repeated};
use super::web::escape;
use super::ApiState;
use crate::replica::{SiblingRead, WinnerRead, SIBLING_VALUES_BUDGET};

/// Records per page of a collection without `limit`.
pub const BROWSE_PAGE: usize = 50;
/// Characters of a value shown in a list of records.
const PREVIEW_CHARS: usize = 160;

const STYLE: &str = "body{font-family:sans-serif;margin:1.5em;color:#222}\
table{border-collapse:collapse;margin-bottom:1.5em}\
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}\
th{background:#f0f0f0}td.value{font-family:monospace;white-space:pre-wrap;max-width:60em}\
#error{color:#b00;font-weight:bold}small{color:#666}textarea{width:40em}\
.deleted{color:#b00}";

/// `GET /browse`: the collections the caller may read.
pub(crate) async fn collections(
    State(state): State<ApiState>,
    who: Who,
    uri: Uri,
) -> Result<Response, ApiError> {
    parse_query(uri.query(), &[])?;
    let mut all = state.replica.collections().await?;
    all.retain(|c| {
        super::status::listed(&c.name) && state.access.check_read(&who, &c.name).is_ok()
    });
    let mut h = head(state.replica.node(), "Browse", &who);
    h.push_str(
        "<h1>Collections</h1>\n<table id=\"collections\"><thead><tr><th>Collection</th>\
         <th>Records</th><th>Indexed fields</th></tr></thead><tbody>\n",
    );
    for c in &all {
        let name = escape(&c.name);
        let indexes = state.replica.indexes().pointers(&c.name).join(", ");
        let _ = writeln!(
            h,
            "<tr class=\"collection\" data-collection=\"{name}\"><td class=\"name\">\
             <a href=\"/browse/{}\">{name}</a></td><td class=\"records\">{}</td>\
             <td class=\"indexes\">{}</td></tr>",
            url_escape(&c.name),
            c.meta.records,
            escape(&indexes),
        );
    }
    h.push_str("</tbody></table>\n");
    if all.is_empty() {
        h.push_str("<p id=\"no-collections\">No collection you may read.</p>\n");
    }
    Ok(html(StatusCode::OK, h))
}

/// `GET /browse/{c}`: a page of the collection's records, by prefix and `where`.
pub(crate) async fn collection(
    State(state): State<ApiState>,
    who: Who,
    Path(coll): Path<String>,
    uri: Uri,
) -> Result<Response, ApiError> {
    names::validate_collection_name(&coll).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let (query, raw_where) = parse_query_repeated(
        uri.query(),
        &["prefix", "after", "limit", "where", "q"],
        Some("where"),
    )?;
    state.access.check_read(&who, &coll)?;
    let exprs: Vec<String> = raw_where
        .iter()
        .flat_map(|w| w.lines())
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    let prefix = query.get("prefix").map_or("", String::as_str);
    let after = query
        .get("after")
        .map(String::as_str)
        .filter(|a| !a.is_empty());
    let limit = match query.get("limit").map(|l| l.parse::<usize>()) {
        None => BROWSE_PAGE,
        Some(Ok(n)) if (1..=super::MAX_SCAN_LIMIT).contains(&n) => n,
        Some(_) => {
            return Err(ApiError::BadRequest(format!(
                "invalid limit: use a whole number from 1 to {}",
                super::MAX_SCAN_LIMIT
            )))
        }
    };
    let name = escape(&coll);
    let mut h = head(state.replica.node(), &coll, &who);
    let _ = write!(
        h,
        "<p><a href=\"/browse\">Collections</a> / <span id=\"collection\">{name}</span></p>\n\
         <h1>{name}</h1>\n\
         <form id=\"search\" method=\"get\" action=\"/browse/{}\">\
         <p><label>Key prefix <input name=\"prefix\" value=\"{}\"></label></p>\
         <p><label>Where, one expression a line (such as <code>/level_m&gt;=7.5</code> or \
         <code>/river=\"Nanfei\"</code>)<br><textarea name=\"where\" rows=\"3\">{}</textarea>\
         </label></p><p><button type=\"submit\">Search</button></p></form>\n",
        url_escape(&coll),
        escape(prefix),
        escape(&exprs.join("\n")),
    );
    // Full-text search, when this node indexes the collection: its own form, and with `q`
    // the hits instead of the records.
    let searchable = state
        .search
        .as_ref()
        .filter(|search| search.is_searchable(&coll));
    if let Some(search) = searchable {
        let q = query.get("q").map_or("", String::as_str);
        let _ = writeln!(
            h,
            "<form id=\"fulltext\" method=\"get\" action=\"/browse/{}\">\
             <p><label>Words (Chinese or English) <input name=\"q\" value=\"{}\"></label> \
             <button type=\"submit\">Find</button></p></form>",
            url_escape(&coll),
            escape(q),
        );
        if !q.trim().is_empty() {
            return search_hits(h, search, &coll, q).await;
        }
    }
    let filter = match Filter::parse(&exprs) {
        Ok(f) => f,
        Err(e) => {
            let _ = writeln!(h, "<p id=\"error\">{}</p>", escape(&e.to_string()));
            return Ok(html(StatusCode::BAD_REQUEST, h));
        }
    };
    let page = match state
        .replica
        .scan_where(&coll, prefix, after, limit, filter)
        .await
    {
        Ok(p) => p,
        Err(e) => {
            let e = ApiError::from(e);
            let _ = writeln!(h, "<p id=\"error\">{}</p>", escape(&e.to_string()));
            return Ok(html(e.status(), h));
        }
    };
    h.push_str(
        "<table id=\"records\"><thead><tr><th>Key</th><th>Version</th><th>Siblings</th>\
         <th>Value</th></tr></thead><tbody>\n",
    );
    for r in &page.records {
        record_row(&mut h, &coll, r);
    }
    h.push_str("</tbody></table>\n");
    if page.records.is_empty() {
        h.push_str("<p id=\"no-records\">No record on this page.</p>\n");
    }
    if let Some(next) = &page.next {
        let mut link = format!(
            "/browse/{}?prefix={}&after={}&limit={limit}",
            url_escape(&coll),
            url_escape(prefix),
            url_escape(next)
        );
        for e in &exprs {
            let _ = write!(link, "&where={}", url_escape(e));
        }
        let _ = writeln!(
            h,
            "<p><a id=\"next\" href=\"{}\">Next page</a></p>",
            escape(&link)
        );
    }
    h.push_str("</body></html>\n");
    Ok(html(StatusCode::OK, h))
}

/// Hits of a full-text search page: ranked, each key linking to its record, the snippet as
/// the search made it (escaped, matched words in `<mark>`).
async fn search_hits(
    mut h: String,
    search: &crate::search::Search,
    coll: &str,
    q: &str,
) -> Result<Response, ApiError> {
    let found = match search.query(coll, q, BROWSE_HITS).await {
        Ok(found) => found,
        Err(e) => {
            let e = ApiError::from(e);
            let _ = writeln!(h, "<p id=\"error\">{}</p>", escape(&e.to_string()));
            return Ok(html(e.status(), h));
        }
    };
    let _ = writeln!(
        h,
        "<p id=\"total\">{} matching records; the best {} below.</p>\n\
         <table id=\"hits\"><thead><tr><th>Key</th><th>Score</th><th>Text</th></tr></thead>\
         <tbody>",
        found.total,
        found.hits.len()
    );
    for hit in &found.hits {
        let key = escape(&hit.key);
        let _ = writeln!(
            h,
            "<tr class=\"hit\" data-key=\"{key}\"><td class=\"key\">\
             <a href=\"/browse/{}/record?key={}\">{key}</a></td>\
             <td class=\"score\">{:.2}</td><td class=\"snippet\">{}</td></tr>",
            url_escape(coll),
            url_escape(&hit.key),
            hit.score,
            hit.snippet,
        );
    }
    h.push_str("</tbody></table>\n</body></html>\n");
    Ok(html(StatusCode::OK, h))
}

/// Hits a browse search page shows.
const BROWSE_HITS: usize = 20;

/// One row of the records table.
fn record_row(h: &mut String, coll: &str, r: &WinnerRead) {
    let key = escape(&r.key);
    let w = r.winner();
    let value = match &w.value {
        None => "<span class=\"deleted\">deleted</span>".to_owned(),
        Some(bytes) => match std::str::from_utf8(bytes) {
            Ok(text) => {
                let mut shown: String = text.chars().take(PREVIEW_CHARS).collect();
                if shown.len() < text.len() {
                    shown.push('…');
                }
                escape(&shown)
            }
            Err(_) => format!("<small>{} bytes, not text</small>", bytes.len()),
        },
    };
    let _ = writeln!(
        h,
        "<tr class=\"record\" data-key=\"{key}\"><td class=\"key\">\
         <a href=\"/browse/{}/record?key={}\">{key}</a></td>\
         <td class=\"version\">{}</td><td class=\"siblings\">{}</td>\
         <td class=\"value\">{value}</td></tr>",
        url_escape(coll),
        url_escape(&r.key),
        escape(&w.dot.to_string()),
        r.siblings,
    );
}

/// `GET /browse/{c}/record?key=K`: every sibling of one key, and its history.
pub(crate) async fn record(
    State(state): State<ApiState>,
    who: Who,
    Path(coll): Path<String>,
    uri: Uri,
) -> Result<Response, ApiError> {
    names::validate_collection_name(&coll).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let query = parse_query(uri.query(), &["key"])?;
    let key = query
        .get("key")
        .ok_or_else(|| ApiError::BadRequest("give the record's key=".into()))?;
    names::validate_key(key).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    state.access.check_read(&who, &coll)?;
    let read = state
        .replica
        .siblings(&coll, key, SIBLING_VALUES_BUDGET)
        .await?
        .ok_or_else(|| {
            ApiError::NotFound(format!("key {key:?} not found in collection {coll:?}"))
        })?;
    let (name, k) = (escape(&coll), escape(key));
    let mut h = head(state.replica.node(), key, &who);
    let _ = write!(
        h,
        "<p><a href=\"/browse\">Collections</a> / <a href=\"/browse/{}\">{name}</a> / \
         <span id=\"key\">{k}</span></p>\n<h1>{k}</h1>\n\
         <h2>Siblings</h2>\n<p><small>The winner first; more than one means concurrent \
         writes not yet resolved (<code>officesync resolve</code>).</small></p>\n\
         <table id=\"siblings\"><thead><tr><th>Version</th><th>Author</th><th>HLC</th>\
         <th>Deleted</th><th>Value</th></tr></thead><tbody>\n",
        url_escape(&coll)
    );
    for s in &read.siblings {
        sibling_row(&mut h, s, "sibling");
    }
    h.push_str("</tbody></table>\n");
    // The versions this node kept of the key, newest first (current ones included).
    let history = state
        .replica
        .history(&coll, key, BROWSE_HISTORY, SIBLING_VALUES_BUDGET)
        .await?;
    h.push_str(
        "<section id=\"history\"><h2>History</h2>\n<p><small>Newest first: the versions \
         this node holds of the key, superseded ones included, as many as its \
         <code>[storage] history</code> keeps. Another office may hold others.</small></p>\n\
         <table id=\"history-versions\"><thead><tr><th>Version</th><th>Author</th>\
         <th>HLC</th><th>Deleted</th><th>Value</th></tr></thead><tbody>\n",
    );
    for entry in history.iter().flat_map(|r| &r.versions) {
        let class = if entry.superseded {
            "superseded"
        } else {
            "current"
        };
        sibling_row(&mut h, &entry.version, class);
    }
    h.push_str("</tbody></table></section>\n");
    h.push_str("</body></html>\n");
    Ok(html(StatusCode::OK, h))
}

/// Versions the record page lists under History.
const BROWSE_HISTORY: usize = 20;

/// One row of the siblings or history table, of class `class` (`sibling`, or under History
/// `current` or `superseded`).
fn sibling_row(h: &mut String, s: &SiblingRead, class: &str) {
    let version = escape(&s.dot.to_string());
    let value = match (&s.value, s.len) {
        (_, None) => "-".to_owned(),
        (None, Some(len)) => format!("<small>{len} bytes, not loaded</small>"),
        (Some(bytes), _) => match std::str::from_utf8(bytes) {
            Ok(text) => escape(text),
            Err(_) => format!("<small>{} bytes, not text</small>", bytes.len()),
        },
    };
    let _ = writeln!(
        h,
        "<tr class=\"{}\" data-version=\"{version}\"><td class=\"version\">{version}</td>\
         <td class=\"author\">{}</td><td class=\"hlc\">{}</td>\
         <td class=\"deleted\">{}</td><td class=\"value\">{value}</td></tr>",
        class,
        escape(s.author.as_deref().unwrap_or("-")),
        escape(&s.hlc.to_string()),
        if s.is_deleted() { "yes" } else { "no" },
    );
}

/// The start of a page titled `title`, with who is signed in.
fn head(node: &str, title: &str, who: &Who) -> String {
    let signed_in = match &who.0.user {
        Some(user) => format!("Signed in as {user} ({}).", who.0.role),
        None => "Not signed in: this node serves without authentication.".into(),
    };
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>{}: {}</title><style>{STYLE}</style></head>\n<body>\n\
         <p><small>officesync node <span id=\"node\">{}</span>. \
         <span id=\"signed-in\">{}</span> <a href=\"/\">Status</a></small></p>\n",
        escape(title),
        escape(node),
        escape(node),
        escape(&signed_in),
    )
}

fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (CONTENT_TYPE, "text/html; charset=utf-8"),
            (CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

/// Percent-encodes `text` for a path segment or a query value (all but unreserved bytes).
fn url_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_escaped() {
        assert_eq!(url_escape("a b/中&="), "a%20b%2F%E4%B8%AD%26%3D");
    }
}
