//! Node commands: `collections`, `status`, `peers` and `verify`.
//!
//! The text forms read the fields DESIGN.md names ("Status") and tolerate
//! the rest of the answer's shape: a list may come as an array of objects
//! with a `name` or as an object keyed by name.

use serde_json::{json, Map, Value};
use ureq::http::Method;

use crate::client::Client;
use crate::exit::CliError;
use crate::output::{self, escape_message, escape_text, print_json, print_text, scalar, Table};
use crate::Global;
use officesync_daemon::time::parse_rfc3339_ms;

/// Status fields the text form of `status` shows in their own section.
const SHOWN_STATUS_FIELDS: &[&str] = &[
    "node",
    "replica",
    "replica_id",
    "cluster_id",
    "certificate",
    "uptime",
    "uptime_secs",
    "uptime_seconds",
    "uptime_s",
    "uptime_ms",
    "collections",
    "peers",
    "vv",
];
/// Hex digits of a digest shown in tables.
const DIGEST_CHARS: usize = 16;

/// `collections`: the collections this node holds.
pub fn collections(global: &Global) -> Result<(), CliError> {
    let answer = global
        .client()?
        .send(Method::GET, "/v1/collections", None)?
        .check(None)?
        .json()?;
    if global.json {
        return print_json(&answer);
    }
    let list = answer.get("collections").unwrap_or(&answer);
    print_text(&collections_table(list).unwrap_or_else(|| "no collections\n".to_owned()))
}

/// `status`: node, uptime, collections and peers.
pub fn status(global: &Global) -> Result<(), CliError> {
    let status = fetch_status(&global.client()?)?;
    if global.json {
        return print_json(&status);
    }
    print_text(&render_status(&status, output::unix_now_secs()))
}

/// `peers`: the peers part of `status`.
pub fn peers(global: &Global) -> Result<(), CliError> {
    let status = fetch_status(&global.client()?)?;
    let peers = status.get("peers").cloned().unwrap_or(Value::Null);
    if global.json {
        return print_json(&json!({ "peers": peers }));
    }
    let now = output::unix_now_secs();
    let mut text = peers_table(&peers, now).unwrap_or_else(|| "no peers\n".to_owned());
    text.push_str(&down_reasons(&peers, now));
    if let Some(table) = staleness_table(&peers, now) {
        text.push_str("\nstaleness (this node's copy of each peer's data):\n");
        text.push_str(&table);
    }
    print_text(&text)
}

/// `verify`: asks the daemon to compare collection digests with its peers
/// and repair what differs.
pub fn verify(global: &Global) -> Result<(), CliError> {
    let client = global.client()?;
    let reply = client.send(Method::POST, "/v1/verify", None)?;
    if reply.status == 404 {
        // This officesyncd has no verify endpoint, which it gains with
        // replication. Without peers there is nothing to compare anyway.
        drop(reply);
        let status = fetch_status(&client)?;
        let peers = status.get("peers").map(named_entries);
        return match peers {
            Some(peers) if peers.is_empty() => {
                let node = scalar(status.get("node").unwrap_or(&Value::Null));
                if global.json {
                    print_json(&json!({
                        "node": node,
                        "peers": 0,
                        "verified": false,
                        "message": "nothing to verify",
                    }))
                } else {
                    print_text(&format!(
                        "nothing to verify: verify compares collection digests with peers, \
                         and node {node} has none"
                    ))
                }
            }
            peers => Err(CliError::failure(format!(
                "officesyncd at {} cannot verify (POST /v1/verify answered 404): verify needs \
                 replication with peers, which this officesyncd does not serve yet, and it {}",
                client.addr(),
                match peers {
                    Some(peers) => format!("lists {} peers; upgrade officesyncd", peers.len()),
                    None => "reports no peers field in its status".to_owned(),
                }
            ))),
        };
    }
    // An empty answer (202/204) means the daemon started the repair.
    let answer = reply.check(None)?.json_or_empty()?.unwrap_or(Value::Null);
    if global.json {
        return print_json(&answer);
    }
    match answer {
        Value::Null => print_text("verify started"),
        answer => match answer.get("results").and_then(Value::as_array) {
            Some(results) => print_text(&render_verify(results)),
            None => print_text(&render_generic(&answer)),
        },
    }
}

/// What each outcome of `verify` means, in the table: (daemon's word, shown as, counted as).
const VERIFY_OUTCOMES: &[(&str, &str, &str)] = &[
    ("equal", "equal", "equal"),
    ("repaired", "repaired", "repaired"),
    (
        "vectors_differ",
        "still syncing (run verify again later)",
        "still syncing",
    ),
    (
        "still_different",
        "DIFFERENT after a repair (another repair started)",
        "different",
    ),
    ("timeout", "NO ANSWER within 20 s", "no answer"),
];

/// The text form of `verify`'s `results`: PEER / COLLECTION / OUTCOME and a summary line.
fn render_verify(results: &[Value]) -> String {
    if results.is_empty() {
        return "nothing to verify: no peer is connected (see `officesync peers`)\n".to_owned();
    }
    let mut table = Table::new(&["PEER", "COLLECTION", "OUTCOME"]);
    let mut peers: Vec<String> = Vec::new();
    let mut counts: Vec<(String, usize)> = Vec::new();
    for result in results {
        let field = |key: &str| scalar(result.get(key).unwrap_or(&Value::Null));
        let (peer, outcome) = (field("peer"), field("outcome"));
        let known = VERIFY_OUTCOMES.iter().find(|(word, _, _)| *word == outcome);
        let (shown, counted) = known.map_or((outcome.clone(), outcome.clone()), |(_, s, c)| {
            ((*s).to_owned(), (*c).to_owned())
        });
        match counts.iter_mut().find(|(name, _)| *name == counted) {
            Some((_, n)) => *n += 1,
            None => counts.push((counted, 1)),
        }
        if !peers.contains(&peer) {
            peers.push(peer.clone());
        }
        table.row(vec![
            escape_text(&peer),
            escape_text(&field("collection")),
            escape_message(&shown),
        ]);
    }
    // The summary names the outcomes in the order of the table above.
    counts.sort_by_key(|(name, _)| {
        VERIFY_OUTCOMES
            .iter()
            .position(|(_, _, c)| c == name)
            .unwrap_or(usize::MAX)
    });
    let plural =
        |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    let summary: Vec<String> = counts
        .iter()
        .map(|(name, n)| format!("{n} {}", escape_message(name)))
        .collect();
    format!(
        "{}{} with {}: {}\n",
        table.render(""),
        plural(results.len(), "comparison", "comparisons"),
        plural(peers.len(), "peer", "peers"),
        summary.join(", ")
    )
}

/// `GET /v1/status` as JSON.
fn fetch_status(client: &Client) -> Result<Value, CliError> {
    client
        .send(Method::GET, "/v1/status", None)?
        .check(None)?
        .json()
}

/// The entries of a list field: `[{"name": ..}, ..]`, `["name", ..]` or
/// `{"name": {..}, ..}`, each as `(name, fields)`.
fn named_entries(list: &Value) -> Vec<(String, Map<String, Value>)> {
    match list {
        Value::Array(items) => items
            .iter()
            .map(|item| match item {
                Value::Object(fields) => (
                    scalar(fields.get("name").unwrap_or(&Value::Null)),
                    fields.clone(),
                ),
                other => (scalar(other), Map::new()),
            })
            .collect(),
        Value::Object(entries) => entries
            .iter()
            .map(|(name, fields)| {
                let fields = fields.as_object().cloned().unwrap_or_default();
                (name.clone(), fields)
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// NAME / RECORDS / DIGEST table of a collections list, `None` if empty.
fn collections_table(list: &Value) -> Option<String> {
    let entries = named_entries(list);
    if entries.is_empty() {
        return None;
    }
    let mut table = Table::new(&["NAME", "RECORDS", "DIGEST"]);
    for (name, fields) in entries {
        let digest = match fields.get("digest") {
            Some(Value::String(hex)) => hex.chars().take(DIGEST_CHARS).collect(),
            other => scalar(other.unwrap_or(&Value::Null)),
        };
        table.row(vec![
            name,
            scalar(fields.get("records").unwrap_or(&Value::Null)),
            digest,
        ]);
    }
    Some(table.render(""))
}

/// The peers table, `None` without peers. `now` (unix seconds) turns
/// timestamps into ages.
///
/// `PEER LACKS` is how many versions the peer is behind this node and
/// `SINCE` since when; `WE LACK` how many this node is behind the peer (as of
/// the last contact); `DATA AS OF` the stalest of this node's copies of the
/// peer's collections.
fn peers_table(peers: &Value, now: u64) -> Option<String> {
    let entries = named_entries(peers);
    if entries.is_empty() {
        return None;
    }
    let mut table = Table::new(&[
        "PEER",
        "CONNECTED",
        "ADDRESS",
        "RTT",
        "LAST SEEN",
        "PEER LACKS",
        "SINCE",
        "WE LACK",
        "DATA AS OF",
        "SENT",
        "RECEIVED",
        "REJECTED",
    ]);
    for (name, fields) in entries {
        let field = |key: &str| fields.get(key).unwrap_or(&Value::Null);
        let connected = match field("connected") {
            Value::Bool(true) if field("silent_ms").as_u64().is_some() => format!(
                "SILENT for {}",
                output::human_duration(field("silent_ms").as_u64().unwrap_or(0) / 1000)
            ),
            Value::Bool(true) => match unix_secs(field("connected_since")) {
                Some(t) => format!("yes, for {}", output::human_duration(now.saturating_sub(t))),
                None => "yes".to_owned(),
            },
            Value::Bool(false) => match unix_secs(field("disconnected_since")) {
                Some(t) => format!("NO, for {}", output::human_duration(now.saturating_sub(t))),
                None => "no".to_owned(),
            },
            other => scalar(other),
        };
        let bytes = |key: &str| match field(key).as_u64() {
            Some(n) => output::human_bytes(n),
            None => scalar(field(key)),
        };
        let rtt = match field("rtt_ms").as_u64() {
            Some(ms) => format!("{ms} ms"),
            None => scalar(field("rtt_ms")),
        };
        let lag_since = match field("lag_versions").as_u64() {
            Some(0) => "-".to_owned(),
            _ => ago(field("lag_since"), now).unwrap_or_else(|| "-".to_owned()),
        };
        table.row(vec![
            name,
            connected,
            scalar(field("address")),
            rtt,
            last_seen(field("last_seen"), now),
            scalar(field("lag_versions")),
            lag_since,
            scalar(field("behind_versions")),
            data_as_of(field("collections"), now),
            bytes("bytes_sent"),
            bytes("bytes_received"),
            scalar(field("rejected")),
        ]);
    }
    Some(table.render(""))
}

/// PEER / COLLECTION / PEER LACKS / WE LACK / NEWEST FROM PEER / DATA AS OF /
/// STALE rows of every peer's `collections`, `None` if there are none.
fn staleness_table(peers: &Value, now: u64) -> Option<String> {
    let mut table = Table::new(&[
        "PEER",
        "COLLECTION",
        "PEER LACKS",
        "WE LACK",
        "NEWEST FROM PEER",
        "DATA AS OF",
        "STALE",
    ]);
    let mut rows = 0;
    for (name, fields) in named_entries(peers) {
        let Some(collections) = fields.get("collections").and_then(Value::as_array) else {
            continue;
        };
        for c in collections {
            let field = |key: &str| c.get(key).unwrap_or(&Value::Null);
            let stale = match field("staleness_ms").as_u64() {
                Some(ms) => output::human_duration(ms / 1000),
                None => "-".to_owned(),
            };
            table.row(vec![
                name.clone(),
                scalar(field("collection")),
                scalar(field("lag_versions")),
                scalar(field("behind_versions")),
                time_and_age(field("newest_version_at"), now),
                time_and_age(field("data_as_of"), now),
                stale,
            ]);
            rows += 1;
        }
    }
    (rows > 0).then(|| table.render(""))
}

/// Unix seconds of an RFC 3339 string, or of unix seconds or milliseconds.
fn unix_secs(value: &Value) -> Option<u64> {
    match value {
        Value::String(text) => parse_rfc3339_ms(text).map(|ms| ms / 1000),
        Value::Number(_) => match value.as_u64()? {
            0 => None,
            n if n >= 100_000_000_000 => Some(n / 1000),
            n if n >= 1_000_000_000 => Some(n),
            _ => None,
        },
        _ => None,
    }
}

/// A timestamp as `3s ago`, `None` when absent or unreadable.
fn ago(value: &Value, now: u64) -> Option<String> {
    unix_secs(value).map(|secs| format!("{} ago", output::human_duration(now.saturating_sub(secs))))
}

/// A timestamp as `YYYY-MM-DD HH:MM:SS UTC (3s ago)`, `never` for null.
fn time_and_age(value: &Value, now: u64) -> String {
    match (value, unix_secs(value)) {
        (Value::Null, _) => "never".to_owned(),
        (_, Some(secs)) => format!(
            "{} ({} ago)",
            output::format_unix(i64::try_from(secs).unwrap_or(i64::MAX)),
            output::human_duration(now.saturating_sub(secs))
        ),
        (other, None) => scalar(other),
    }
}

/// One line per disconnected peer whose last dial failed: why, and how long
/// ago (`hefei: down: <error> (12s ago)`); empty when there is none.
fn down_reasons(peers: &Value, now: u64) -> String {
    let mut out = String::new();
    for (name, fields) in named_entries(peers) {
        let Some(error) = fields.get("last_error").and_then(Value::as_str) else {
            continue;
        };
        let when = fields
            .get("last_error_at")
            .and_then(|t| ago(t, now))
            .unwrap_or_else(|| "-".to_owned());
        out.push_str(&format!(
            "{}: down: {} ({when})\n",
            output::escape_text(&name),
            output::escape_message(error)
        ));
    }
    out
}

/// The stalest `data_as_of` of a peer's collections as an age, the same value
/// as the stalest collection row of the staleness table; collections not caught
/// up even once (created while the peer was away) are counted beside it
/// (`5s ago, 1 never`); `never` when none is; `-` without collections.
fn data_as_of(collections: &Value, now: u64) -> String {
    let Some(list) = collections.as_array().filter(|l| !l.is_empty()) else {
        return "-".to_owned();
    };
    let mut oldest: Option<u64> = None;
    let mut never = 0;
    for c in list {
        match unix_secs(c.get("data_as_of").unwrap_or(&Value::Null)) {
            Some(secs) => oldest = Some(oldest.map_or(secs, |o| o.min(secs))),
            None => never += 1,
        }
    }
    match oldest {
        None => "never".to_owned(),
        Some(secs) => {
            let age = output::human_duration(now.saturating_sub(secs));
            if never == 0 {
                format!("{age} ago")
            } else {
                format!("{age} ago, {never} never")
            }
        }
    }
}

/// A peer's `last_seen` as an age: `never` for null, RFC 3339 or unix
/// milliseconds or seconds as `3s ago`, anything else as given.
fn last_seen(value: &Value, now: u64) -> String {
    match (value, ago(value, now)) {
        (Value::Null, _) => "never".to_owned(),
        (Value::Number(n), None) if n.as_u64() == Some(0) => "never".to_owned(),
        (_, Some(age)) => age,
        (other, None) => scalar(other),
    }
}

/// How long the daemon has run, from whichever uptime field it sends.
fn uptime(status: &Value) -> Option<String> {
    let secs = |key: &str| status.get(key).and_then(Value::as_u64);
    if let Some(s) = secs("uptime_secs")
        .or_else(|| secs("uptime_seconds"))
        .or_else(|| secs("uptime_s"))
        .or_else(|| secs("uptime"))
    {
        return Some(output::human_duration(s));
    }
    if let Some(ms) = secs("uptime_ms") {
        return Some(output::human_duration(ms / 1000));
    }
    status.get("uptime").map(scalar)
}

/// The text form of `status`.
fn render_status(status: &Value, now: u64) -> String {
    let mut out = String::new();
    let field = |key: &str| status.get(key).filter(|v| !v.is_null());
    out.push_str(&format!(
        "node:     {}\n",
        scalar(field("node").unwrap_or(&Value::Null))
    ));
    if let Some(replica) = field("replica").or_else(|| field("replica_id")) {
        out.push_str(&format!("replica:  {}\n", scalar(replica)));
    }
    if let Some(uptime) = uptime(status) {
        out.push_str(&format!("uptime:   {uptime}\n"));
    }
    if let Some(cluster) = field("cluster_id") {
        out.push_str(&format!("cluster:  {}\n", scalar(cluster)));
    }
    if let Some(cert) = field("certificate") {
        out.push_str(&format!("cert:     {}\n", certificate_line(cert, now)));
    }
    if let Some(fields) = status.as_object() {
        for (key, value) in fields {
            if !SHOWN_STATUS_FIELDS.contains(&key.as_str())
                && !value.is_object()
                && !value.is_array()
            {
                out.push_str(&format!("{key}: {}\n", scalar(value)));
            }
        }
    }
    match field("collections").and_then(collections_table) {
        Some(table) => {
            out.push_str("collections:\n");
            out.push_str(&indent(&table));
        }
        None => out.push_str("collections: none\n"),
    }
    match field("peers").and_then(|p| peers_table(p, now)) {
        Some(table) => {
            out.push_str("peers:\n");
            out.push_str(&indent(&table));
            out.push_str(&indent(&down_reasons(
                field("peers").unwrap_or(&Value::Null),
                now,
            )));
        }
        None => out.push_str("peers: none\n"),
    }
    if let Some(table) = field("peers").and_then(|p| staleness_table(p, now)) {
        out.push_str("staleness (this node's copy of each peer's data):\n");
        out.push_str(&indent(&table));
    }
    out
}

/// Days before expiry from which `status` says to renew the certificate.
const RENEW_DAYS: i64 = 30;

/// This node's certificate in `status`: expiry, time left, serial, and a reminder to renew
/// within [`RENEW_DAYS`] of its expiry.
fn certificate_line(cert: &Value, now: u64) -> String {
    let Some(not_after) = cert.get("not_after_unix").and_then(Value::as_i64) else {
        return scalar(cert);
    };
    let serial = scalar(cert.get("serial").unwrap_or(&Value::Null));
    let left = not_after - i64::try_from(now).unwrap_or(i64::MAX);
    let when = output::format_unix(not_after);
    let days = left.div_euclid(86_400);
    if left < 0 {
        return format!(
            "EXPIRED {when}, serial {serial}: peers refuse this node; renew it (INSTALL.md step 15)"
        );
    }
    let renew = if days < RENEW_DAYS {
        "; renew it now (INSTALL.md step 15)"
    } else {
        ""
    };
    format!("valid until {when} ({days} days left{renew}), serial {serial}")
}

/// Indents every line by two spaces.
fn indent(text: &str) -> String {
    text.lines().map(|line| format!("  {line}\n")).collect()
}

/// A JSON answer as text: `key: value` for scalars, indented JSON for the rest.
fn render_generic(value: &Value) -> String {
    let Some(fields) = value.as_object() else {
        return serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string());
    };
    let mut out = String::new();
    for (key, value) in fields {
        if value.is_object() || value.is_array() {
            let pretty = serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string());
            out.push_str(&format!("{key}:\n{}", indent(&pretty)));
        } else {
            out.push_str(&format!("{key}: {}\n", scalar(value)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_750_000_000;

    #[test]
    fn status_renders_node_collections_and_peers() {
        let status = json!({
            "node": "hefei",
            "replica": "hefei.7f3a",
            "uptime_secs": 3725,
            "durability": "sync",
            "vv": {"situation": {"hefei.7f3a": 3}},
            "collections": {
                "situation": {"records": 12, "digest": "0123456789abcdef0123456789abcdef"},
            },
            "peers": [{
                "name": "general-office", "connected": true, "last_seen": (NOW - 3) * 1000,
                "lag_versions": 0, "bytes_sent": 2048, "bytes_received": 100,
                "connected_since": "2025-06-15T15:06:40.000Z", "address": "10.0.0.1:7400",
                "rtt_ms": 12, "behind_versions": 0, "rejected": 0,
                "collections": [{
                    "collection": "situation", "lag_versions": 0, "behind_versions": 0,
                    "newest_version_at": "2025-06-15T15:06:00.000Z",
                    "data_as_of": "2025-06-15T15:06:37.000Z", "staleness_ms": 3000,
                }],
            }, {
                "name": "beijing-office", "connected": false, "last_seen": null,
                "lag_versions": 7, "bytes_sent": 0, "bytes_received": 0,
                "lag_since": "2025-06-15T14:06:40.000Z",
                "disconnected_since": "2025-06-15T14:06:40.000Z",
            }],
        });
        let text = render_status(&status, NOW);
        let expected = "\
node:     hefei
replica:  hefei.7f3a
uptime:   1h 2m 5s
durability: sync
collections:
  NAME       RECORDS  DIGEST
  situation  12       0123456789abcdef
peers:
  PEER            CONNECTED         ADDRESS        RTT    LAST SEEN  PEER LACKS  SINCE         WE LACK  DATA AS OF  SENT     RECEIVED  REJECTED
  general-office  yes, for 0s       10.0.0.1:7400  12 ms  3s ago     0           -             0        3s ago      2.0 KiB  100 B     0
  beijing-office  NO, for 1h 0m 0s  -              -      never      7           1h 0m 0s ago  -        -           0 B      0 B       -
staleness (this node's copy of each peer's data):
  PEER            COLLECTION  PEER LACKS  WE LACK  NEWEST FROM PEER                   DATA AS OF                        STALE
  general-office  situation   0           0        2025-06-15 15:06:00 UTC (40s ago)  2025-06-15 15:06:37 UTC (3s ago)  3s
";
        assert_eq!(text, expected);
    }

    #[test]
    fn status_shows_cluster_and_certificate_expiry() {
        let status = |left: i64| {
            json!({
                "node": "hefei",
                "cluster_id": "3f2a",
                "certificate": {
                    "serial": "4c01", "not_after": "ignored",
                    "not_after_unix": NOW as i64 + left, "expires_in_secs": left,
                },
                "collections": [], "peers": [],
            })
        };
        let text = render_status(&status(824 * 86_400 + 60), NOW);
        assert!(
            text.starts_with("node:     hefei\ncluster:  3f2a\ncert:     valid until 2027-09-17 "),
            "{text}"
        );
        assert!(text.contains("(824 days left), serial 4c01\n"), "{text}");
        let soon = render_status(&status(86_400 * 3), NOW);
        assert!(
            soon.contains("(3 days left; renew it now (INSTALL.md step 15))"),
            "{soon}"
        );
        let gone = render_status(&status(-1), NOW);
        assert!(gone.contains("cert:     EXPIRED "), "{gone}");
    }

    #[test]
    fn empty_status_says_none() {
        let text = render_status(
            &json!({"node": "hefei", "collections": [], "peers": []}),
            NOW,
        );
        assert_eq!(text, "node:     hefei\ncollections: none\npeers: none\n");
    }

    #[test]
    fn lists_come_as_arrays_or_maps() {
        let array = json!([{"name": "a", "records": 1}, "b"]);
        let names: Vec<String> = named_entries(&array).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["a", "b"]);
        let map = json!({"a": {"records": 1}});
        let entries = named_entries(&map);
        assert_eq!(entries[0].0, "a");
        assert_eq!(entries[0].1.get("records"), Some(&json!(1)));
    }

    #[test]
    fn last_seen_reads_as_an_age() {
        assert_eq!(last_seen(&Value::Null, NOW), "never");
        assert_eq!(last_seen(&json!(NOW - 65), NOW), "1m 5s ago");
        assert_eq!(last_seen(&json!((NOW - 2) * 1000), NOW), "2s ago");
        assert_eq!(last_seen(&json!("2025-06-15T15:06:00Z"), NOW), "40s ago");
        assert_eq!(last_seen(&json!("yesterday"), NOW), "yesterday");
    }

    #[test]
    fn verify_results_render_as_a_table_with_a_summary() {
        let results = json!([
            {"peer": "general-office", "collection": "situation", "outcome": "equal"},
            {"peer": "general-office", "collection": "grain", "outcome": "repaired"},
            {"peer": "wuhu", "collection": "situation", "outcome": "timeout"},
            {"peer": "wuhu", "collection": "grain", "outcome": "equal"},
        ]);
        let text = render_verify(results.as_array().expect("array"));
        let expected = "\
PEER            COLLECTION  OUTCOME
general-office  situation   equal
general-office  grain       repaired
wuhu            situation   NO ANSWER within 20 s
wuhu            grain       equal
4 comparisons with 2 peers: 2 equal, 1 repaired, 1 no answer
";
        assert_eq!(text, expected);
        let one = json!([{"peer": "hub", "collection": "c", "outcome": "vectors_differ"}]);
        let text = render_verify(one.as_array().expect("array"));
        assert!(
            text.ends_with("1 comparison with 1 peer: 1 still syncing\n"),
            "{text}"
        );
        // An outcome this CLI does not know yet is shown as the daemon words it.
        let new = json!([{"peer": "hub", "collection": "c", "outcome": "skipped"}]);
        let text = render_verify(new.as_array().expect("array"));
        assert!(text.contains("hub   c           skipped\n"), "{text}");
        assert!(text.ends_with(": 1 skipped\n"), "{text}");
        assert!(render_verify(&[]).starts_with("nothing to verify: no peer is connected"));
    }

    #[test]
    fn generic_answers_render_as_lines() {
        let text = render_generic(&json!({"collections": ["a"], "repaired": 0}));
        assert_eq!(text, "collections:\n  [\n    \"a\"\n  ]\nrepaired: 0\n");
    }

    #[test]
    fn data_as_of_agrees_with_the_collection_rows_and_counts_the_never_caught_up() {
        let now = 1_000_000;
        let at = |secs: u64| serde_json::json!(officesync_daemon::time::rfc3339_ms(secs * 1000));
        let collections = serde_json::json!([
            {"collection": "situation", "data_as_of": at(now - 5)},
            {"collection": "letters", "data_as_of": at(now - 65)},
            {"collection": "documents", "data_as_of": null},
        ]);
        assert_eq!(data_as_of(&collections, now), "1m 5s ago, 1 never");
        let caught_up = serde_json::json!([{"collection": "situation", "data_as_of": at(now - 5)}]);
        assert_eq!(data_as_of(&caught_up, now), "5s ago");
        let none = serde_json::json!([{"collection": "documents", "data_as_of": null}]);
        assert_eq!(data_as_of(&none, now), "never");
        assert_eq!(data_as_of(&serde_json::json!([]), now), "-");
    }
}
