//! The read-only status page at `/`: server-rendered HTML (no JavaScript) that refreshes itself
//! every few seconds and shows this node, its peers (connection, lag each way and since when,
//! a sparkline of the last hour's lag),
//! per peer and collection how stale this node's copy is, and the collections.
//!
//! Elements have stable ids and classes for scripts and tests: `table#peers` with one
//! `tr.peer[data-peer=NAME]` per peer whose cells have the classes `name`, `connected`
//! (`yes`/`no`), `address`, `rtt`, `last-seen`, `lag`, `lag-since`, `behind`, `caught-up`,
//! `sent`, `received`, `rejected`, `history` (the lag sparkline of the last hour, an inline
//! `svg.spark`); `table#staleness` with `tr.staleness[data-peer][data-collection]`;
//! `table#collections` with `tr.collection[data-collection]`.

use std::fmt::Write as _;

use axum::extract::State;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::Uri;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::gate::Who;
use super::params::parse_query;
use super::status::peers_at;
use super::ApiState;
use crate::replica::CollectionInfo;
use crate::sync::peers::PeerStatus;
use crate::time::{human_bytes, human_duration, parse_rfc3339_ms};
use crate::time::{rfc3339_ms, unix_ms_now};

/// Seconds between the page's own reloads.
pub const REFRESH_SECS: u32 = 5;

/// `GET /`: the status page.
pub(crate) async fn page(
    State(state): State<ApiState>,
    who: Who,
    uri: Uri,
) -> Result<Response, ApiError> {
    parse_query(uri.query(), &[])?;
    let mut collections = state.replica.collections().await?;
    collections.retain(|c| who.0.may_read(&c.name) && super::status::listed(&c.name));
    let now = unix_ms_now();
    let mut peers = peers_at(state.peers.as_ref(), now);
    for p in &mut peers {
        p.collections.retain(|c| who.0.may_read(&c.collection));
    }
    let signed_in = match &who.0.user {
        Some(user) => format!("Signed in as {user} ({}).", who.0.role),
        None => {
            "Not signed in: this node serves without authentication (api.auth = \"none\").".into()
        }
    };
    // Each peer's lag over the last hour, from the province reporter's in-memory history.
    let sparks: Vec<String> = peers
        .iter()
        .map(|p| match &state.province {
            Some(province) => super::svg::sparkline(&province.lag_series(&p.name, now)),
            None => "-".to_owned(),
        })
        .collect();
    let html = render(
        state.replica.node(),
        &signed_in,
        &collections,
        (&peers, &sparks),
        now,
    );
    Ok((
        [
            (CONTENT_TYPE, "text/html; charset=utf-8"),
            (CACHE_CONTROL, "no-store"),
        ],
        html,
    )
        .into_response())
}

/// Escapes text for HTML element content and double-quoted attribute values.
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// An RFC 3339 time as `YYYY-MM-DD HH:MM:SS UTC (AGE ago)`, or `-`.
fn when(at: Option<&str>, now: u64) -> String {
    match at {
        None => "-".to_owned(),
        Some(t) => match parse_rfc3339_ms(t) {
            Some(ms) => format!(
                "{} ({} ago)",
                utc(ms),
                human_duration(now.saturating_sub(ms) / 1000)
            ),
            None => t.to_owned(),
        },
    }
}

/// An RFC 3339 time as HTML: `AGE ago`, with the UTC time as its tooltip; `-` if absent.
fn ago_html(at: Option<&str>, now: u64) -> String {
    elapsed_html(at, now, " ago")
}

/// The time elapsed since an RFC 3339 time, then `suffix`, as HTML with the UTC time as its
/// tooltip; `-` if absent.
fn elapsed_html(at: Option<&str>, now: u64, suffix: &str) -> String {
    match at.map(|t| (t, parse_rfc3339_ms(t))) {
        None => "-".to_owned(),
        Some((_, Some(ms))) => format!(
            "<span title=\"{}\">{}{suffix}</span>",
            utc(ms),
            human_duration(now.saturating_sub(ms) / 1000)
        ),
        Some((t, None)) => escape(t),
    }
}

/// Unix milliseconds as `YYYY-MM-DD HH:MM:SS UTC`.
fn utc(ms: u64) -> String {
    let t = rfc3339_ms(ms);
    format!("{} {} UTC", &t[..10], &t[11..19])
}

const STYLE: &str = "body{font-family:sans-serif;margin:1.5em;color:#222}\
table{border-collapse:collapse;margin-bottom:1.5em}\
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left;white-space:nowrap}\
th{background:#f0f0f0}.no{color:#b00;font-weight:bold}.yes{color:#070}\
.lagging{background:#fff3cd}small{color:#666}";

/// The whole page.
fn render(
    node: &str,
    signed_in: &str,
    collections: &[CollectionInfo],
    (peers, sparks): (&[PeerStatus], &[String]),
    now: u64,
) -> String {
    let mut h = String::with_capacity(8 * 1024);
    let node = escape(node);
    let signed_in = escape(signed_in);
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECS}\">\
         <title>officesync: {node}</title><style>{STYLE}</style></head>\n<body>\n\
         <h1>officesync node <span id=\"node\">{node}</span></h1>\n\
         <p id=\"signed-in\">{signed_in}</p>\n\
         <p><small>As of <span id=\"generated\">{}</span>; refreshes every {REFRESH_SECS} s. \
         Peer lacks: versions the peer has not received from this node yet, since when; \
         we lack: versions this node has not received from the peer (as of the last contact); \
         data as of: the last moment this node held everything the peer held; lag, last hour: \
         the largest lag each way per minute. <a href=\"/cluster\">The province</a> \
         (admins).</small></p>\n",
        rfc3339_ms(now)
    );

    render_peers(&mut h, peers, sparks, now);
    render_staleness(&mut h, peers, now);
    render_collections(&mut h, collections);
    h.push_str("</body></html>\n");
    h
}

/// The peer table: one row a peer, with its sparkline from `sparks` (same order).
fn render_peers(h: &mut String, peers: &[PeerStatus], sparks: &[String], now: u64) {
    h.push_str("<h2>Peers</h2>\n");
    if peers.is_empty() {
        h.push_str("<p id=\"no-peers\">No peers.</p>\n");
    }
    h.push_str(
        "<table id=\"peers\"><thead><tr><th>Peer</th><th>Connected</th><th>Address</th>\
         <th>RTT</th><th>Last seen</th><th>Peer lacks</th><th>Since</th><th>We lack</th>\
         <th>Caught up at</th><th>Sent</th><th>Received</th><th>Rejected</th>\
         <th>Lag, last hour</th></tr></thead><tbody>\n",
    );
    for (i, p) in peers.iter().enumerate() {
        let name = escape(&p.name);
        let (word, since) = if p.connected {
            ("yes", p.connected_since.as_deref())
        } else {
            ("no", p.disconnected_since.as_deref())
        };
        let connected = match since {
            Some(_) => format!(
                "<span class=\"{word}\">{word}</span> <small>for {}</small>",
                elapsed_html(since, now, "")
            ),
            None => format!("<span class=\"{word}\">{word}</span>"),
        };
        let row_class = if p.lag_versions > 0 || p.behind_versions > 0 || !p.connected {
            "peer lagging"
        } else {
            "peer"
        };
        let _ = writeln!(
            h,
            "<tr class=\"{row_class}\" id=\"peer-{name}\" data-peer=\"{name}\">\
             <td class=\"name\">{name}</td>\
             <td class=\"connected\" data-connected=\"{}\">{connected}</td>\
             <td class=\"address\">{}</td><td class=\"rtt\">{}</td>\
             <td class=\"last-seen\">{}</td><td class=\"lag\">{}</td>\
             <td class=\"lag-since\">{}</td><td class=\"behind\">{}</td>\
             <td class=\"caught-up\">{}</td><td class=\"sent\">{}</td>\
             <td class=\"received\">{}</td><td class=\"rejected\">{}</td>\
             <td class=\"history\">{}</td></tr>",
            if p.connected { "yes" } else { "no" },
            escape(p.address.as_deref().unwrap_or("-")),
            p.rtt_ms.map_or("-".to_owned(), |r| format!("{r} ms")),
            ago_html(p.last_seen.as_deref(), now),
            p.lag_versions,
            ago_html(p.lag_since.as_deref(), now),
            p.behind_versions,
            ago_html(p.caught_up_at.as_deref(), now),
            human_bytes(p.bytes_sent),
            human_bytes(p.bytes_received),
            p.rejected,
            sparks.get(i).map_or("-", String::as_str),
        );
    }
    h.push_str("</tbody></table>\n");
}

/// The staleness table: one row a peer and collection.
fn render_staleness(h: &mut String, peers: &[PeerStatus], now: u64) {
    h.push_str(
        "<h2>Staleness</h2>\n<table id=\"staleness\"><thead><tr><th>Peer</th>\
         <th>Collection</th><th>Peer lacks</th><th>We lack</th><th>Newest version from peer</th>\
         <th>Data as of</th><th>Staleness</th></tr></thead><tbody>\n",
    );
    for p in peers {
        let name = escape(&p.name);
        for c in &p.collections {
            let coll = escape(&c.collection);
            let _ = writeln!(
                h,
                "<tr class=\"{}\" data-peer=\"{name}\" data-collection=\"{coll}\">\
                 <td class=\"peer\">{name}</td><td class=\"collection\">{coll}</td>\
                 <td class=\"lag\">{}</td><td class=\"behind\">{}</td>\
                 <td class=\"newest\">{}</td><td class=\"data-as-of\">{}</td>\
                 <td class=\"staleness\">{}</td></tr>",
                if c.lag_versions > 0 || c.behind_versions > 0 {
                    "staleness lagging"
                } else {
                    "staleness"
                },
                c.lag_versions,
                c.behind_versions,
                escape(&when(c.newest_version_at.as_deref(), now)),
                match c.data_as_of.as_deref() {
                    Some(t) => escape(&when(Some(t), now)),
                    None => "never".to_owned(),
                },
                c.staleness_ms
                    .map_or("-".to_owned(), |ms| human_duration(ms / 1000)),
            );
        }
    }
    h.push_str("</tbody></table>\n");
}

/// The collections table.
fn render_collections(h: &mut String, collections: &[CollectionInfo]) {
    h.push_str(
        "<h2>Collections</h2>\n<table id=\"collections\"><thead><tr><th>Collection</th>\
         <th>Records</th><th>Versions</th><th>Digest</th></tr></thead><tbody>\n",
    );
    for c in collections {
        let coll = escape(&c.name);
        let _ = writeln!(
            h,
            "<tr class=\"collection\" data-collection=\"{coll}\"><td class=\"name\">{coll}</td>\
             <td class=\"records\">{}</td><td class=\"versions\">{}</td>\
             <td class=\"digest\"><code>{}</code></td></tr>",
            c.meta.records,
            c.meta.versions,
            escape(&c.meta.digest.to_hex()),
        );
    }
    h.push_str("</tbody></table>\n");
}

#[cfg(test)]
mod unit {
    use super::*;
    use crate::api::PeerCollectionStatus;

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            escape("<a href=\"x\">&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn page_lists_peers_with_stable_ids() {
        let now = 1_714_552_200_000;
        let peers = vec![
            PeerStatus {
                name: "hefei".into(),
                connected: true,
                connected_since: Some(rfc3339_ms(now - 65_000)),
                lag_versions: 0,
                collections: vec![PeerCollectionStatus {
                    collection: "situation".into(),
                    data_as_of_ms: Some(now - 2_000),
                    data_as_of: Some(rfc3339_ms(now - 2_000)),
                    staleness_ms: Some(2_000),
                    ..PeerCollectionStatus::default()
                }],
                ..PeerStatus::default()
            },
            PeerStatus {
                name: "<evil>".into(),
                lag_versions: 7,
                lag_since: Some(rfc3339_ms(now - 3_600_000)),
                ..PeerStatus::default()
            },
        ];
        let sparks = vec![super::super::svg::sparkline(&[(2, 0), (0, 7)]), "-".into()];
        let html = render(
            "general-office",
            "Signed in as li (reader).",
            &[],
            (&peers, &sparks),
            now,
        );
        assert!(html.contains("<meta http-equiv=\"refresh\" content=\"5\">"));
        assert!(html.contains(
            "<tr class=\"peer\" id=\"peer-hefei\" data-peer=\"hefei\"><td class=\"name\">hefei</td>\
             <td class=\"connected\" data-connected=\"yes\"><span class=\"yes\">yes</span> \
             <small>for <span title=\"2024-05-01 08:28:55 UTC\">1m 5s</span></small></td>"
        ));
        assert!(html.contains("data-peer=\"&lt;evil&gt;\""), "{html}");
        assert!(!html.contains("<evil>"));
        assert!(html.contains("<td class=\"lag\">7</td><td class=\"lag-since\"><span title=\"2024-05-01 07:30:00 UTC\">1h 0m 0s ago</span></td>"));
        assert!(html.contains("<td class=\"staleness\">2s</td>"));
        assert!(
            html.contains("<td class=\"history\"><svg class=\"spark\""),
            "{html}"
        );
        assert!(!html.contains("<script"));
    }
}
