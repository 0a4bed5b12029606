//! The province view: `GET /v1/cluster` (JSON) and `GET /cluster` (the tree drawn as
//! server-rendered SVG, no JavaScript), both for admins, from the status reports this node
//! holds in `_status` and its own live one. `?behind=true` keeps only the nodes that are not
//! fresh and, for where they are, their ancestors.

use std::fmt::Write as _;

use axum::extract::State;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::Uri;
use axum::response::{IntoResponse, Response};
use axum::Json;
use officesync_api::{ClusterBody, StatusReport};

use super::error::ApiError;
use super::gate::Who;
use super::params::{parse_flag, parse_query};
use super::svg::tree;
use super::web::escape;
use super::ApiState;
use crate::province::view::{cluster_view, not_fresh, silent_after_ms, silent_after_report_ms};
use crate::time::{rfc3339_ms, unix_ms_now};

/// Seconds between the page's own reloads.
pub const REFRESH_SECS: u32 = 10;

/// The view for this request: every node, or only what is not fresh.
async fn view(state: &ApiState, who: &Who, uri: &Uri) -> Result<(ClusterBody, bool), ApiError> {
    who.require_admin("see the province view")?;
    let query = parse_query(uri.query(), &["behind"])?;
    let behind = parse_flag("behind", query.get("behind").map(String::as_str))?;
    let now = unix_ms_now();
    let node = state.replica.node().to_owned();
    let held = match &state.province {
        Some(p) => p.held_reports(&state.replica, now).await?,
        None => Vec::new(),
    };
    let mut body = cluster_view(&node, held, now);
    if behind {
        body.nodes = not_fresh(body.nodes);
    }
    Ok((body, behind))
}

/// `GET /v1/cluster`.
pub(crate) async fn cluster(
    State(state): State<ApiState>,
    who: Who,
    uri: Uri,
) -> Result<Json<ClusterBody>, ApiError> {
    Ok(Json(view(&state, &who, &uri).await?.0))
}

/// `GET /cluster`: the page.
pub(crate) async fn page(
    State(state): State<ApiState>,
    who: Who,
    uri: Uri,
) -> Result<Response, ApiError> {
    let (body, behind) = view(&state, &who, &uri).await?;
    let own = state.province.as_ref().and_then(|p| p.latest());
    let interval = own
        .as_ref()
        .map_or(crate::config::DEFAULT_REPORT_INTERVAL_MS, |r| r.interval_ms);
    let unchanged = own
        .as_ref()
        .map_or(crate::config::DEFAULT_UNCHANGED_REPORT_MS, |r| {
            r.unchanged_ms
        });
    let html = render(&body, behind, interval, unchanged);
    Ok((
        [
            (CONTENT_TYPE, "text/html; charset=utf-8"),
            (CACHE_CONTROL, "no-store"),
        ],
        html,
    )
        .into_response())
}

const STYLE: &str = "body{font-family:sans-serif;margin:1.5em;color:#222}\
a{color:#0645ad}small{color:#666}";

/// The whole page.
fn render(body: &ClusterBody, behind: bool, interval_ms: u64, unchanged_ms: u64) -> String {
    let mut h = String::with_capacity(body.nodes.len() * 320 + 4096);
    let node = escape(&body.node);
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECS}\">\
         <title>officesync: province from {node}</title><style>{STYLE}</style></head>\n<body>\n\
         <h1>The province as <span id=\"node\">{node}</span> sees it</h1>\n\
         <p><small>As of <span id=\"generated\">{}</span>; refreshes every {REFRESH_SECS} s. \
         Each node under the peer it dials. A node is <b>silent</b> when no report of it arrived \
         here for three report intervals and {} s (e.g. {} s at {} s; while its parent says \
         their link is up, {} s, as a node skips reports that would say nothing new for up to \
         {} s), <b>behind</b> when it \
         reports its link up down or its data from there older than 30 s, <b>refusing</b> when \
         it met bad input in the 10 minutes before its last report. Hover over a node for its \
         details. <a href=\"/\">This node's status</a>.</small></p>\n",
        escape(&body.generated_at),
        crate::province::view::SILENT_GRACE_MS / 1000,
        silent_after_ms(interval_ms) / 1000,
        interval_ms / 1000,
        silent_after_report_ms(
            &StatusReport {
                interval_ms,
                unchanged_ms,
                ..StatusReport::default()
            },
            true
        ) / 1000,
        unchanged_ms / 1000,
    );
    h.push_str("<p id=\"filter\">");
    if behind {
        let _ = write!(
            h,
            "Showing only the {} nodes that are not fresh, with their ancestors for where \
             they are. \
             <a href=\"/cluster\">Show every node</a>",
            body.nodes.iter().filter(|n| n.state != "fresh").count()
        );
    } else {
        let _ = write!(
            h,
            "Showing all {} nodes. <a href=\"/cluster?behind=true\">Show only what is not \
             fresh</a>",
            body.nodes.len()
        );
    }
    h.push_str("</p>\n");
    if body.nodes.is_empty() {
        h.push_str("<p id=\"all-fresh\">Every node is fresh.</p>\n");
    } else {
        h.push_str(&tree(&body.nodes, &body.counts));
    }
    let silent: Vec<String> = body
        .nodes
        .iter()
        .filter(|n| n.silent)
        .map(|n| format!("{} ({})", escape(&n.name), escape(&n.reason)))
        .collect();
    if !silent.is_empty() {
        let _ = write!(h, "\n<p id=\"silent\">Silent: {}.</p>", silent.join(", "));
    }
    let _ = write!(
        h,
        "\n<p><small>Page made at {}.</small></p></body></html>\n",
        rfc3339_ms(unix_ms_now())
    );
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use officesync_api::ClusterNode;

    #[test]
    fn the_page_links_the_filter_and_draws_the_tree_without_script() {
        let body = ClusterBody {
            node: "general-office".into(),
            generated_at: "2026-01-01T00:00:00.000Z".into(),
            counts: Default::default(),
            nodes: vec![
                ClusterNode {
                    name: "general-office".into(),
                    state: "fresh".into(),
                    ..ClusterNode::default()
                },
                ClusterNode {
                    name: "t4".into(),
                    depth: 1,
                    state: "silent".into(),
                    silent: true,
                    reason: "last report 12s ago".into(),
                    ..ClusterNode::default()
                },
            ],
        };
        let all = render(&body, false, 1_000, 60_000);
        assert!(all.contains("<a href=\"/cluster?behind=true\">"), "{all}");
        assert!(all.contains("<svg id=\"province\""));
        assert!(all.contains("<p id=\"silent\">Silent: t4 (last report 12s ago).</p>"));
        assert!(all.contains("e.g. 8 s at 1 s"), "{all}");
        assert!(!all.contains("<script"));
        let filtered = render(&body, true, 1_000, 60_000);
        assert!(filtered.contains("<a href=\"/cluster\">Show every node</a>"));
    }
}
