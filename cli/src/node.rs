//! Node commands: `collections`, `status`, `peers` and `verify`.
//!
//! The answers are read into the `officesync-api` types the daemon builds them from; the
//! text forms show the fields DESIGN.md names ("Status") and `--json` prints the answer.

use officesync_api::{
    CertificateStatus, CollectionsBody, PeerCollectionStatus, PeerStatus, StatusBody, VerifyReport,
    VerifyResults,
};
use serde_json::json;
use ureq::http::Method;

use crate::client::Client;
use crate::exit::CliError;
use crate::output::{self, escape_message, escape_text, print_json, print_text, Table};
use crate::Global;
use officesync_daemon::time::parse_rfc3339_ms;

/// Hex digits of a digest shown in tables.
const DIGEST_CHARS: usize = 16;

/// `collections`: the collections this node holds.
pub fn collections(global: &Global) -> Result<(), CliError> {
    let answer: CollectionsBody = global
        .client()?
        .send(Method::GET, "/v1/collections", None)?
        .check(None)?
        .json()?;
    if global.json {
        return print_json(&answer);
    }
    let rows = answer
        .collections
        .iter()
        .map(|c| (c.name.as_str(), c.records, c.digest.as_str()));
    print_text(&collections_table(rows).unwrap_or_else(|| "no collections\n".to_owned()))
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
    let peers = fetch_status(&global.client()?)?.peers;
    if global.json {
        return print_json(&json!({ "peers": peers }));
    }
    let now = output::unix_now_secs();
    let mut text = peers_table(&peers, now).unwrap_or_else(|| "no peers\n".to_owned());
    text.push_str(&down_reasons(&peers, now));
    text.push_str(&releases(&peers));
    if let Some(table) = staleness_table(&peers, now) {
        text.push_str("\nstaleness (this node's copy of each peer's data):\n");
        text.push_str(&table);
    }
    if let Some(table) = bandwidth_table(&peers) {
        text.push_str("\nbandwidth (bulk data sent to each peer):\n");
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
        if !status.peers.is_empty() {
            return Err(CliError::failure(format!(
                "officesyncd at {} cannot verify (POST /v1/verify answered 404): verify needs \
                 replication with peers, which this officesyncd does not serve yet, and it \
                 lists {} peers; upgrade officesyncd",
                client.addr(),
                status.peers.len()
            )));
        }
        let node = status.node;
        return if global.json {
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
        };
    }
    // An empty answer (202/204) means the daemon started the repair.
    let answer: Option<VerifyResults> = reply.check(None)?.json_or_empty()?;
    if global.json {
        return print_json(&answer);
    }
    match answer {
        None => print_text("verify started"),
        Some(answer) => print_text(&render_verify(&answer.results)),
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
fn render_verify(results: &[VerifyReport]) -> String {
    if results.is_empty() {
        return "nothing to verify: no peer is connected (see `officesync peers`)\n".to_owned();
    }
    let mut table = Table::new(&["PEER", "COLLECTION", "OUTCOME"]);
    let mut peers: Vec<&str> = Vec::new();
    let mut counts: Vec<(String, usize)> = Vec::new();
    for result in results {
        let outcome = &result.outcome;
        let known = VERIFY_OUTCOMES.iter().find(|(word, _, _)| word == outcome);
        let (shown, counted) = known.map_or((outcome.clone(), outcome.clone()), |(_, s, c)| {
            ((*s).to_owned(), (*c).to_owned())
        });
        match counts.iter_mut().find(|(name, _)| *name == counted) {
            Some((_, n)) => *n += 1,
            None => counts.push((counted, 1)),
        }
        if !peers.contains(&result.peer.as_str()) {
            peers.push(&result.peer);
        }
        table.row(vec![
            escape_text(&result.peer),
            escape_text(&result.collection),
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

/// `GET /v1/status`.
fn fetch_status(client: &Client) -> Result<StatusBody, CliError> {
    client
        .send(Method::GET, "/v1/status", None)?
        .check(None)?
        .json()
}

/// NAME / RECORDS / DIGEST table of `(name, records, digest)` rows, `None` if there are none.
fn collections_table<'a>(rows: impl Iterator<Item = (&'a str, u64, &'a str)>) -> Option<String> {
    let mut table = Table::new(&["NAME", "RECORDS", "DIGEST"]);
    let mut any = false;
    for (name, records, digest) in rows {
        table.row(vec![
            escape_text(name),
            records.to_string(),
            digest.chars().take(DIGEST_CHARS).collect(),
        ]);
        any = true;
    }
    any.then(|| table.render(""))
}

/// `-` for nothing, else the text for a terminal.
fn or_dash(text: Option<&str>) -> String {
    text.map_or_else(|| "-".to_owned(), escape_message)
}

/// The peers table, `None` without peers. `now` (unix seconds) turns
/// timestamps into ages.
///
/// `PEER LACKS` is how many versions the peer is behind this node and
/// `SINCE` since when; `WE LACK` how many this node is behind the peer (as of
/// the last contact); `DATA AS OF` the stalest of this node's copies of the
/// peer's collections.
fn peers_table(peers: &[PeerStatus], now: u64) -> Option<String> {
    if peers.is_empty() {
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
    for p in peers {
        let since = |t: &Option<String>| t.as_deref().and_then(unix_secs);
        let connected = match (p.connected, p.silent_ms) {
            (true, Some(ms)) => format!("SILENT for {}", output::human_duration(ms / 1000)),
            (true, None) => match since(&p.connected_since) {
                Some(t) => format!("yes, for {}", output::human_duration(now.saturating_sub(t))),
                None => "yes".to_owned(),
            },
            (false, _) => match since(&p.disconnected_since) {
                Some(t) => format!("NO, for {}", output::human_duration(now.saturating_sub(t))),
                None => "no".to_owned(),
            },
        };
        let rtt = p
            .rtt_ms
            .map_or_else(|| "-".to_owned(), |ms| format!("{ms} ms"));
        let lag_since = match p.lag_versions {
            0 => "-".to_owned(),
            _ => ago(p.lag_since.as_deref(), now).unwrap_or_else(|| "-".to_owned()),
        };
        table.row(vec![
            escape_text(&p.name),
            connected,
            or_dash(p.address.as_deref()),
            rtt,
            last_seen(p.last_seen.as_deref(), now),
            p.lag_versions.to_string(),
            lag_since,
            p.behind_versions.to_string(),
            data_as_of(&p.collections, now),
            output::human_bytes(p.bytes_sent),
            output::human_bytes(p.bytes_received),
            p.rejected.to_string(),
        ]);
    }
    Some(table.render(""))
}

/// PEER / COLLECTION / PEER LACKS / WE LACK / NEWEST FROM PEER / DATA AS OF /
/// STALE rows of every peer's `collections`, `None` if there are none.
fn staleness_table(peers: &[PeerStatus], now: u64) -> Option<String> {
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
    for p in peers {
        for c in &p.collections {
            let stale = match c.staleness_ms {
                Some(ms) => output::human_duration(ms / 1000),
                None => "-".to_owned(),
            };
            table.row(vec![
                escape_text(&p.name),
                escape_text(&c.collection),
                c.lag_versions.to_string(),
                c.behind_versions.to_string(),
                time_and_age(c.newest_version_at.as_deref(), now),
                time_and_age(c.data_as_of.as_deref(), now),
                stale,
            ]);
            rows += 1;
        }
    }
    (rows > 0).then(|| table.render(""))
}

/// Unix seconds of an RFC 3339 time.
fn unix_secs(text: &str) -> Option<u64> {
    parse_rfc3339_ms(text).map(|ms| ms / 1000)
}

/// A time as `3s ago`, `None` when absent or unreadable.
fn ago(time: Option<&str>, now: u64) -> Option<String> {
    time.and_then(unix_secs)
        .map(|secs| format!("{} ago", output::human_duration(now.saturating_sub(secs))))
}

/// A time as `YYYY-MM-DD HH:MM:SS UTC (3s ago)`, `never` for none.
fn time_and_age(time: Option<&str>, now: u64) -> String {
    match (time, time.and_then(unix_secs)) {
        (None, _) => "never".to_owned(),
        (_, Some(secs)) => format!(
            "{} ({} ago)",
            output::format_unix(i64::try_from(secs).unwrap_or(i64::MAX)),
            output::human_duration(now.saturating_sub(secs))
        ),
        (Some(other), None) => escape_message(other),
    }
}

/// One line per disconnected peer whose last dial failed: why, and how long
/// ago (`hefei: down: <error> (12s ago)`); empty when there is none.
fn down_reasons(peers: &[PeerStatus], now: u64) -> String {
    let mut out = String::new();
    for p in peers {
        let Some(error) = &p.last_error else {
            continue;
        };
        let when = ago(p.last_error_at.as_deref(), now).unwrap_or_else(|| "-".to_owned());
        out.push_str(&format!(
            "{}: down: {} ({when})\n",
            output::escape_text(&p.name),
            output::escape_message(error)
        ));
    }
    out
}

/// What each peer runs, as its current (or last) session said: `NAME: officesyncd 0.1.0,
/// protocol 2`; a peer of protocol 1 (the previous release) does not say its release.
fn releases(peers: &[PeerStatus]) -> String {
    let mut lines: Vec<String> = peers
        .iter()
        .filter_map(|p| {
            let protocol = p.protocol?;
            let release = match (&p.release, protocol) {
                (Some(r), _) => output::escape_message(r),
                (None, 1) => "a previous release (authors are not exchanged)".to_owned(),
                (None, _) => "release not told".to_owned(),
            };
            Some(format!(
                "  {}: {release}, protocol {protocol}\n",
                output::escape_text(&p.name)
            ))
        })
        .collect();
    if lines.is_empty() {
        return String::new();
    }
    lines.insert(0, "\nreleases:\n".to_owned());
    lines.concat()
}

/// The stalest `data_as_of` of a peer's collections as an age, the same value
/// as the stalest collection row of the staleness table; collections not caught
/// up even once (created while the peer was away) are counted beside it
/// (`5s ago, 1 never`); `never` when none is; `-` without collections.
fn data_as_of(collections: &[PeerCollectionStatus], now: u64) -> String {
    if collections.is_empty() {
        return "-".to_owned();
    }
    let mut oldest: Option<u64> = None;
    let mut never = 0;
    for c in collections {
        match c.data_as_of.as_deref().and_then(unix_secs) {
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

/// A peer's `last_seen` as an age: `never` for none, `3s ago`, or as given
/// when it is not an RFC 3339 time.
fn last_seen(time: Option<&str>, now: u64) -> String {
    match (time, ago(time, now)) {
        (None, _) => "never".to_owned(),
        (_, Some(age)) => age,
        (Some(other), None) => escape_message(other),
    }
}

/// The text form of `status`.
fn render_status(status: &StatusBody, now: u64) -> String {
    let mut out = String::new();
    out.push_str(&format!("node:     {}\n", escape_text(&status.node)));
    if !status.replica.is_empty() {
        out.push_str(&format!("replica:  {}\n", escape_text(&status.replica)));
    }
    out.push_str(&format!(
        "uptime:   {}\n",
        output::human_duration(status.uptime_secs)
    ));
    if let Some(cluster) = &status.cluster_id {
        out.push_str(&format!("cluster:  {}\n", escape_message(cluster)));
    }
    if let Some(cert) = &status.certificate {
        out.push_str(&format!("cert:     {}\n", certificate_line(cert, now)));
    }
    out.push_str(&format!("max_value_bytes: {}\n", status.max_value_bytes));
    let rows = status
        .collections
        .iter()
        .map(|(name, c)| (name.as_str(), c.records, c.digest.as_str()));
    match collections_table(rows) {
        Some(table) => {
            out.push_str("collections:\n");
            out.push_str(&indent(&table));
        }
        None => out.push_str("collections: none\n"),
    }
    match peers_table(&status.peers, now) {
        Some(table) => {
            out.push_str("peers:\n");
            out.push_str(&indent(&table));
            out.push_str(&indent(&down_reasons(&status.peers, now)));
            // Which release and wire protocol each peer runs (a rolling upgrade's progress).
            out.push_str(releases(&status.peers).trim_start_matches('\n'));
        }
        None => out.push_str("peers: none\n"),
    }
    if let Some(table) = staleness_table(&status.peers, now) {
        out.push_str("staleness (this node's copy of each peer's data):\n");
        out.push_str(&indent(&table));
    }
    if let Some(table) = bandwidth_table(&status.peers) {
        out.push_str("bandwidth (bulk data sent to each peer):\n");
        out.push_str(&indent(&table));
    }
    out
}

/// PEER / LIMIT / QUEUED: the bandwidth limit in force for each peer (`[[sync.limit]]`) and
/// the bulk bytes queued for it; `None` when no peer has a limit or anything queued.
fn bandwidth_table(peers: &[PeerStatus]) -> Option<String> {
    if peers
        .iter()
        .all(|p| p.limit.is_none() && p.queued_bytes == 0)
    {
        return None;
    }
    let mut table = Table::new(&["PEER", "LIMIT", "QUEUED"]);
    for p in peers {
        table.row(vec![
            escape_text(&p.name),
            p.limit
                .as_deref()
                .map_or_else(|| "none".to_owned(), escape_text),
            output::human_bytes(p.queued_bytes),
        ]);
    }
    Some(table.render(""))
}

/// Days before expiry from which `status` says to renew the certificate.
const RENEW_DAYS: i64 = 30;

/// This node's certificate in `status`: expiry, time left, serial, and a reminder to renew
/// within [`RENEW_DAYS`] of its expiry.
fn certificate_line(cert: &CertificateStatus, now: u64) -> String {
    let not_after = cert.not_after_unix;
    let serial = escape_message(&cert.serial);
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

#[cfg(test)]
mod tests {
    use super::*;
    use officesync_api::CollectionState;
    use officesync_daemon::time::rfc3339_ms;

    const NOW: u64 = 1_750_000_000;

    fn status(node: &str) -> StatusBody {
        StatusBody {
            node: node.to_owned(),
            ..StatusBody::default()
        }
    }

    fn at(secs: u64) -> Option<String> {
        Some(rfc3339_ms(secs * 1000))
    }

    #[test]
    fn status_renders_node_collections_and_peers() {
        let mut status = status("hefei");
        status.replica = "hefei@7f3a".into();
        status.uptime_secs = 3725;
        status.max_value_bytes = 4_194_304;
        status.collections.insert(
            "situation".into(),
            CollectionState {
                records: 12,
                digest: "0123456789abcdef0123456789abcdef".into(),
                ..CollectionState::default()
            },
        );
        status.peers = vec![
            PeerStatus {
                name: "general-office".into(),
                connected: true,
                last_seen: at(NOW - 3),
                bytes_sent: 2048,
                bytes_received: 100,
                connected_since: Some("2025-06-15T15:06:40.000Z".into()),
                address: Some("10.0.0.1:7400".into()),
                rtt_ms: Some(12),
                collections: vec![PeerCollectionStatus {
                    collection: "situation".into(),
                    newest_version_at: Some("2025-06-15T15:06:00.000Z".into()),
                    data_as_of: Some("2025-06-15T15:06:37.000Z".into()),
                    staleness_ms: Some(3000),
                    ..PeerCollectionStatus::default()
                }],
                ..PeerStatus::default()
            },
            PeerStatus {
                name: "beijing-office".into(),
                lag_versions: 7,
                lag_since: Some("2025-06-15T14:06:40.000Z".into()),
                disconnected_since: Some("2025-06-15T14:06:40.000Z".into()),
                ..PeerStatus::default()
            },
        ];
        let text = render_status(&status, NOW);
        let expected = "\
node:     hefei
replica:  hefei@7f3a
uptime:   1h 2m 5s
max_value_bytes: 4194304
collections:
  NAME       RECORDS  DIGEST
  situation  12       0123456789abcdef
peers:
  PEER            CONNECTED         ADDRESS        RTT    LAST SEEN  PEER LACKS  SINCE         WE LACK  DATA AS OF  SENT     RECEIVED  REJECTED
  general-office  yes, for 0s       10.0.0.1:7400  12 ms  3s ago     0           -             0        3s ago      2.0 KiB  100 B     0
  beijing-office  NO, for 1h 0m 0s  -              -      never      7           1h 0m 0s ago  0        -           0 B      0 B       0
staleness (this node's copy of each peer's data):
  PEER            COLLECTION  PEER LACKS  WE LACK  NEWEST FROM PEER                   DATA AS OF                        STALE
  general-office  situation   0           0        2025-06-15 15:06:00 UTC (40s ago)  2025-06-15 15:06:37 UTC (3s ago)  3s
";
        assert_eq!(text, expected);
    }

    #[test]
    fn status_shows_the_limit_in_force_and_the_queued_bytes() {
        let mut status = status("hefei");
        status.peers = vec![
            PeerStatus {
                name: "general-office".into(),
                limit: Some("2 Mbit/s".into()),
                limit_bytes_per_sec: Some(250_000),
                queued_bytes: 3 << 20,
                ..PeerStatus::default()
            },
            PeerStatus {
                name: "wuhu".into(),
                ..PeerStatus::default()
            },
        ];
        let text = render_status(&status, NOW);
        let table = text
            .split("bandwidth (bulk data sent to each peer):\n")
            .nth(1)
            .expect("a bandwidth section");
        assert_eq!(
            table,
            "  PEER            LIMIT     QUEUED\n  general-office  2 Mbit/s  3.0 MiB\n  wuhu            none      0 B\n"
        );
        status.peers.truncate(1);
        status.peers[0].limit = None;
        status.peers[0].queued_bytes = 0;
        assert!(
            !render_status(&status, NOW).contains("bandwidth"),
            "nothing to show"
        );
    }

    #[test]
    fn status_shows_cluster_and_certificate_expiry() {
        let status = |left: i64| StatusBody {
            cluster_id: Some("3f2a".into()),
            certificate: Some(CertificateStatus {
                serial: "4c01".into(),
                not_after: "ignored".into(),
                not_after_unix: NOW as i64 + left,
                expires_in_secs: left,
            }),
            ..status("hefei")
        };
        let text = render_status(&status(824 * 86_400 + 60), NOW);
        assert!(
            text.starts_with(
                "node:     hefei\nuptime:   0s\ncluster:  3f2a\ncert:     valid until 2027-09-17 "
            ),
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
        let text = render_status(&status("hefei"), NOW);
        assert_eq!(
            text,
            "node:     hefei\nuptime:   0s\nmax_value_bytes: 0\ncollections: none\npeers: none\n"
        );
    }

    #[test]
    fn last_seen_reads_as_an_age() {
        assert_eq!(last_seen(None, NOW), "never");
        assert_eq!(last_seen(at(NOW - 65).as_deref(), NOW), "1m 5s ago");
        assert_eq!(last_seen(Some("2025-06-15T15:06:00Z"), NOW), "40s ago");
        assert_eq!(last_seen(Some("yesterday"), NOW), "yesterday");
    }

    fn reports(rows: &[(&str, &str, &str)]) -> Vec<VerifyReport> {
        rows.iter()
            .map(|(peer, collection, outcome)| VerifyReport {
                peer: (*peer).to_owned(),
                collection: (*collection).to_owned(),
                outcome: (*outcome).to_owned(),
            })
            .collect()
    }

    #[test]
    fn verify_results_render_as_a_table_with_a_summary() {
        let results = reports(&[
            ("general-office", "situation", "equal"),
            ("general-office", "grain", "repaired"),
            ("wuhu", "situation", "timeout"),
            ("wuhu", "grain", "equal"),
        ]);
        let text = render_verify(&results);
        let expected = "\
PEER            COLLECTION  OUTCOME
general-office  situation   equal
general-office  grain       repaired
wuhu            situation   NO ANSWER within 20 s
wuhu            grain       equal
4 comparisons with 2 peers: 2 equal, 1 repaired, 1 no answer
";
        assert_eq!(text, expected);
        let text = render_verify(&reports(&[("hub", "c", "vectors_differ")]));
        assert!(
            text.ends_with("1 comparison with 1 peer: 1 still syncing\n"),
            "{text}"
        );
        // An outcome this CLI does not know yet is shown as the daemon words it.
        let text = render_verify(&reports(&[("hub", "c", "skipped")]));
        assert!(text.contains("hub   c           skipped\n"), "{text}");
        assert!(text.ends_with(": 1 skipped\n"), "{text}");
        assert!(render_verify(&[]).starts_with("nothing to verify: no peer is connected"));
    }

    #[test]
    fn data_as_of_agrees_with_the_collection_rows_and_counts_the_never_caught_up() {
        let now = 1_000_000;
        let row = |collection: &str, data_as_of: Option<String>| PeerCollectionStatus {
            collection: collection.to_owned(),
            data_as_of,
            ..PeerCollectionStatus::default()
        };
        let collections = [
            row("situation", at(now - 5)),
            row("letters", at(now - 65)),
            row("documents", None),
        ];
        assert_eq!(data_as_of(&collections, now), "1m 5s ago, 1 never");
        assert_eq!(data_as_of(&collections[..1], now), "5s ago");
        assert_eq!(data_as_of(&collections[2..], now), "never");
        assert_eq!(data_as_of(&[], now), "-");
    }

    #[test]
    fn releases_say_what_each_peer_runs() {
        let peer = |name: &str, protocol: Option<u16>, release: Option<&str>| PeerStatus {
            name: name.into(),
            protocol,
            release: release.map(str::to_owned),
            ..PeerStatus::default()
        };
        let text = releases(&[
            peer("general-office", Some(2), Some("officesyncd 0.1.0")),
            peer("wuhu", Some(1), None),
            peer("never-seen", None, None),
        ]);
        assert_eq!(
            text,
            "\nreleases:\n  general-office: officesyncd 0.1.0, protocol 2\n  wuhu: a previous \
             release (authors are not exchanged), protocol 1\n"
        );
        assert_eq!(releases(&[peer("never-seen", None, None)]), "");
    }
}
