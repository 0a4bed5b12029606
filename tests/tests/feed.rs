//! The change feed end to end with the real binaries: a write at one office is seen by a
//! watcher at another; `officesync watch` resumes after a daemon restart and a stream resumes
//! after a client drop (`Last-Event-ID`) with no change missed or seen twice; the `prefix`
//! filter; a client too slow to keep up is cut off with a final event naming where to resume;
//! the cap on open feeds; a reader without access to the collection gets 403, and an open
//! stream ends with `forbidden` once its reader loses access.

#[allow(dead_code)] // every suite uses part of the shared helpers
mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{start_with_lines, wait_connected, wait_for, Star, BEIJING, HUB};
use officesync_tests::sse::{SseItem, SseRequest, SseStream};
use officesync_tests::{Cluster, OutputExt, TestNode};
use serde_json::Value;

/// Sessions come up within a few dial attempts.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// A change reaches a watcher at another office within this on a busy 2-core machine.
const ARRIVAL: Duration = Duration::from_secs(60);

fn changes_path(collection: &str, query: &str) -> String {
    match query {
        "" => format!("/v1/collections/{collection}/changes"),
        q => format!("/v1/collections/{collection}/changes?{q}"),
    }
}

/// Opens an event stream at `node` as its admin.
fn stream(node: &TestNode, query: &str, last_event_id: Option<u64>) -> SseStream {
    let req = SseRequest {
        path: changes_path("situation", query),
        token: node.api().token().map(str::to_owned),
        last_event_id,
        ..SseRequest::default()
    };
    let s = SseStream::open(node.api_addr(), &req).expect("open the stream");
    assert_eq!(s.status, 200, "{}", s.body);
    s
}

/// The next `n` changes of `s` as `(key, version, cursor)`, the start event skipped.
fn take(s: &SseStream, n: usize) -> Vec<(String, String, u64)> {
    let mut out = Vec::new();
    while out.len() < n {
        let e = s
            .next_event(ARRIVAL)
            .unwrap_or_else(|e| panic!("after {} of {n} changes: {e}", out.len()));
        if e.data.is_empty() {
            continue; // the start event: an id only
        }
        assert_eq!(e.event, "", "not a change: {e:?}");
        let c = e.json();
        let cursor = c["cursor"].as_u64().expect("cursor");
        assert_eq!(e.id, Some(cursor), "the event id is its cursor");
        out.push((
            c["key"].as_str().expect("key").to_owned(),
            c["version"].as_str().expect("version").to_owned(),
            cursor,
        ));
    }
    out
}

fn assert_increasing(changes: &[(String, String, u64)]) {
    assert!(
        changes.windows(2).all(|w| w[0].2 < w[1].2),
        "cursors not in apply order: {changes:?}"
    );
}

/// Writes `keys` at `node` one by one; their `(key, version)` in order.
fn write_all(node: &TestNode, keys: &[String]) -> Vec<(String, String)> {
    keys.iter()
        .map(|k| (k.clone(), node.put("situation", k, k.as_bytes()).version))
        .collect()
}

fn keys(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{prefix}{i:03}")).collect()
}

fn without_cursor(changes: &[(String, String, u64)]) -> Vec<(String, String)> {
    changes
        .iter()
        .map(|(k, v, _)| (k.clone(), v.clone()))
        .collect()
}

/// A write at hefei reaches a stream at beijing (through the hub); the stream then follows a
/// client drop: reconnecting with `Last-Event-ID` gives exactly the changes after it. The
/// `prefix` filter and the JSON page see the same changes.
#[test]
fn the_feed_follows_other_offices_and_resumes_after_a_client_drop() {
    let star = Star::start(CONNECT_TIMEOUT);
    let (hefei, beijing) = (&star.hefei, &star.beijing);
    let watch = stream(beijing, "", None);
    let only_a = stream(beijing, "prefix=a%2F", None);
    let first = write_all(hefei, &keys("a/", 0..5));
    let got = take(&watch, 5);
    assert_eq!(
        without_cursor(&got),
        first,
        "beijing's feed shows hefei's writes in order"
    );
    assert_increasing(&got);
    // The client goes away; changes made meanwhile come after a reconnect from its last id.
    watch.drop_connection();
    let mut expected = write_all(hefei, &keys("b/", 0..3));
    expected.extend(write_all(hefei, &keys("a/", 5..8)));
    let last = got.last().map(|c| c.2);
    let resumed = stream(beijing, "", last);
    let again = take(&resumed, 6);
    assert_eq!(without_cursor(&again), expected, "no gap, no duplicate");
    assert!(again[0].2 > got[4].2);
    // The prefix stream saw only a/ keys, all eight of them.
    let a_keys: Vec<String> = take(&only_a, 8).into_iter().map(|c| c.0).collect();
    assert_eq!(a_keys, keys("a/", 0..8));
    // The JSON page from 0 holds the same sequence, and `next` pages on.
    let page = beijing.api().call(
        "GET",
        &changes_path("situation", "since=0&limit=1000"),
        None,
    );
    assert_eq!(page.status, 200, "{}", page.text());
    let page = page.json();
    let listed: Vec<&str> = page["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .map(|c| c["key"].as_str().expect("key"))
        .collect();
    assert_eq!(listed.len(), 11, "{page}");
    let next = page["next"].as_u64().expect("next");
    let rest = beijing.api().call(
        "GET",
        &changes_path("situation", &format!("since={next}")),
        None,
    );
    assert_eq!(rest.json()["changes"].as_array().map(Vec::len), Some(0));
}

/// `officesync watch --json` at beijing keeps printing across a restart of beijing (writes
/// made while it is down included): the whole sequence, each change once, in order.
#[test]
fn watch_resumes_after_a_daemon_restart_with_no_gap_and_no_duplicate() {
    let star = Star::start(CONNECT_TIMEOUT);
    let (hub, hefei, beijing) = (&star.hub, &star.hefei, &star.beijing);
    let mut child = beijing
        .cli_command(&["--json", "watch", "situation"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start officesync watch");
    let (tx, lines) = mpsc::channel::<Value>();
    let stdout = child.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let v: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("watch --json printed {line:?}: {e}"));
            // The probes that show the watcher is connected are not part of the sequence.
            if v["key"] == "probe" {
                let _ = tx.send(Value::Null);
                continue;
            }
            if tx.send(v).is_err() {
                return;
            }
        }
    });
    let collect = |n: usize| -> Vec<Value> {
        let deadline = Instant::now() + ARRIVAL * 2;
        let mut out = Vec::new();
        while out.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(Value::Null) => {}
                Ok(v) => out.push(v),
                Err(_) => panic!("watch printed {} of {n} changes: {out:?}", out.len()),
            }
        }
        out
    };
    // The watcher is connected once it prints a change made after it started.
    wait_for("watch to connect", ARRIVAL, || {
        hefei.put("situation", "probe", b"1");
        match lines.recv_timeout(Duration::from_secs(2)) {
            Ok(_) => Ok(()),
            Err(_) => Err("nothing printed yet".into()),
        }
    });
    let mut expected = write_all(hefei, &keys("k", 0..10));
    let mut printed = collect(10);
    assert!(beijing.stop().success(), "beijing stops cleanly");
    expected.extend(write_all(hefei, &keys("k", 10..20)));
    beijing.restart();
    wait_connected(&[(beijing, HUB), (hub, BEIJING)], CONNECT_TIMEOUT);
    expected.extend(write_all(hefei, &keys("k", 20..25)));
    printed.extend(collect(15));
    let _ = child.kill();
    let _ = child.wait();
    let got: Vec<(String, String)> = printed
        .iter()
        .map(|c| {
            (
                c["key"].as_str().expect("key").to_owned(),
                c["version"].as_str().expect("version").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        got, expected,
        "every change once, in order, across the restart"
    );
    let cursors: Vec<u64> = printed
        .iter()
        .map(|c| c["cursor"].as_u64().expect("cursor"))
        .collect();
    assert!(cursors.windows(2).all(|w| w[0] < w[1]), "{cursors:?}");
    // Nothing more comes (no duplicate after the restart).
    while let Ok(v) = lines.recv_timeout(Duration::from_secs(2)) {
        assert!(v.is_null(), "printed again after the sequence: {v}");
    }
}

/// One node with a short cut-off and a cap of two feeds.
fn tuned_node(cluster: &Cluster) -> TestNode {
    cluster.issue("hefei", true);
    let config = cluster.config("hefei");
    start_with_lines(&config, "api", "max_feeds = 2\nfeed_cutoff_ms = 1000")
}

fn metric(node: &TestNode, name: &str) -> u64 {
    let text = node.api().call("GET", "/metrics", None).text();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

/// A client that reads nothing while many changes come is cut off: once it reads again it
/// gets every change up to a final `cutoff` event naming the cursor to resume from, and
/// resuming there gives the rest: the whole sequence, each once.
#[test]
fn a_client_too_slow_to_keep_up_is_cut_off_and_resumes_where_it_stopped() {
    let cluster = Cluster::new();
    let node = tuned_node(&cluster);
    let req = SseRequest {
        path: changes_path("situation", "since=0"),
        token: node.api().token().map(str::to_owned),
        recv_buffer: Some(4096),
        paused: true,
        ..SseRequest::default()
    };
    let mut slow = SseStream::open(node.api_addr(), &req).expect("open");
    // Long keys fill the connection's buffers with few changes; eight writers fill them fast.
    let pad = "x".repeat(1000);
    let all: Vec<String> = (0..4000).map(|i| format!("{pad}-{i:05}")).collect();
    let api = node.api();
    std::thread::scope(|scope| {
        for part in all.chunks(all.len() / 8) {
            let api = api.clone();
            scope.spawn(move || {
                for k in part {
                    api.put("situation", k, b"v");
                }
            });
        }
    });
    wait_for("the slow feed to be cut off", ARRIVAL, || {
        match metric(&node, "officesync_feeds_cutoff_total") {
            0 => Err("not yet".into()),
            _ => Ok(()),
        }
    });
    slow.start_reading().expect("read");
    assert_eq!(slow.status, 200, "{}", slow.body);
    let mut got = Vec::new();
    let resume_from = loop {
        match slow.next_item(ARRIVAL) {
            Some(SseItem::Event(e)) if e.event == "cutoff" => {
                let end = e.json();
                assert!(end["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("too slow")));
                break end["resume_from"].as_u64().expect("resume_from");
            }
            Some(SseItem::Event(e)) if e.data.is_empty() => {}
            Some(SseItem::Event(e)) => {
                let c = e.json();
                got.push((
                    c["key"].as_str().expect("key").to_owned(),
                    c["version"].as_str().expect("version").to_owned(),
                    c["cursor"].as_u64().expect("cursor"),
                ));
            }
            Some(SseItem::Comment(_)) => {}
            other => panic!("after {} changes: {other:?}", got.len()),
        }
    };
    assert!(got.len() < all.len(), "cut off before the end");
    assert_eq!(got.last().map(|c| c.2), Some(resume_from));
    let rest = stream(&node, "", Some(resume_from));
    got.extend(take(&rest, all.len() - got.len()));
    // Eight writers: the apply order is the node's, so compare the keys as a set, once each.
    assert_increasing(&got);
    let mut keys: Vec<String> = got.iter().map(|c| c.0.clone()).collect();
    keys.sort();
    assert_eq!(keys, all, "every change once, none missed");
    assert!(
        rest.next_event(Duration::from_secs(1)).is_err(),
        "nothing more"
    );
}

/// At most `max_feeds` streams are open: one more gets 503 with a JSON error until one
/// closes. A reader whose collections exclude `situation` gets 403, as for a read.
#[test]
fn the_cap_on_feeds_and_access_are_enforced() {
    let cluster = Cluster::new();
    let node = tuned_node(&cluster);
    let one = stream(&node, "", None);
    let _two = stream(&node, "", None);
    let req = SseRequest {
        path: changes_path("situation", ""),
        token: node.api().token().map(str::to_owned),
        ..SseRequest::default()
    };
    let third = SseStream::open(node.api_addr(), &req).expect("open");
    assert_eq!(third.status, 503, "{}", third.body);
    let error: Value = serde_json::from_str(&third.body).expect("a JSON error");
    assert!(error["error"]
        .as_str()
        .is_some_and(|e| e.contains("max_feeds")));
    assert_eq!(metric(&node, "officesync_feeds_open"), 2);
    assert!(metric(&node, "officesync_feeds_refused_total") >= 1);
    one.drop_connection();
    wait_for("a slot to free up", ARRIVAL, || {
        let s = SseStream::open(node.api_addr(), &req).map_err(|e| e.to_string())?;
        match s.status {
            200 => Ok(()),
            other => Err(format!("HTTP {other}")),
        }
    });

    let out = node.cli(&[
        "user",
        "add",
        "clerk",
        "--role",
        "reader",
        "--collections",
        "letters",
    ]);
    out.expect_success("user add");
    let token = out.stdout_text().trim().to_owned();
    let refused = SseStream::open(
        node.api_addr(),
        &SseRequest {
            path: changes_path("situation", ""),
            token: Some(token.clone()),
            ..SseRequest::default()
        },
    )
    .expect("open");
    assert_eq!(refused.status, 403, "{}", refused.body);
    let page = node.api().with_token(Some(token.clone())).call(
        "GET",
        &changes_path("situation", ""),
        None,
    );
    assert_eq!(page.status, 403, "{}", page.text());
    let allowed =
        node.api()
            .with_token(Some(token))
            .call("GET", &changes_path("letters", ""), None);
    assert_eq!(allowed.status, 200, "{}", allowed.text());
}

/// Opens a stream of `situation` at `node` with `token`, and reads its start event.
fn stream_as(node: &TestNode, token: &str) -> SseStream {
    let s = SseStream::open(
        node.api_addr(),
        &SseRequest {
            path: changes_path("situation", ""),
            token: Some(token.to_owned()),
            ..SseRequest::default()
        },
    )
    .expect("open");
    assert_eq!(s.status, 200, "{}", s.body);
    s
}

/// The stream's next event that is not the start event.
fn next_after_start(s: &SseStream) -> officesync_tests::sse::SseEvent {
    loop {
        let e = s.next_event(ARRIVAL).expect("an event");
        if !(e.event.is_empty() && e.data.is_empty()) {
            return e;
        }
    }
}

/// An open stream checks its reader again when the users or the policy change: removing the
/// user, or replacing its token, ends its stream at once with a final `forbidden` event,
/// before any later change is sent; a user whose access is unchanged keeps its stream until
/// the node's policy stops the node reading the collection.
#[test]
fn an_open_feed_ends_when_its_reader_loses_access() {
    let star = Star::start(CONNECT_TIMEOUT);
    let node = &star.beijing;
    let add = |name: &str| {
        let out = node.cli(&["user", "add", name, "--role", "reader"]);
        out.expect_success("user add");
        out.stdout_text().trim().to_owned()
    };
    let (gone, rotated, stays) = (add("gone"), add("rotated"), add("stays"));
    let (s_gone, s_rotated, s_stays) = (
        stream_as(node, &gone),
        stream_as(node, &rotated),
        stream_as(node, &stays),
    );
    node.put("situation", "before", b"1");
    for s in [&s_gone, &s_rotated, &s_stays] {
        let e = next_after_start(s);
        assert_eq!(e.json()["key"], "before", "{e:?}");
    }

    node.cli(&["user", "remove", "gone"])
        .expect_success("user remove");
    node.cli(&["user", "token", "rotated"])
        .expect_success("user token");
    node.put("situation", "after", b"2");
    for (s, name) in [(&s_gone, "gone"), (&s_rotated, "rotated")] {
        let e = next_after_start(s);
        assert_eq!(e.event, "forbidden", "{name}: {e:?}");
        let end = e.json();
        assert!(
            end["reason"].as_str().is_some_and(|r| r.contains(name)),
            "{end}"
        );
        assert!(
            s.next_event(Duration::from_secs(2)).is_err(),
            "{name}'s stream goes on after forbidden"
        );
    }
    let e = next_after_start(&s_stays);
    assert_eq!(e.json()["key"], "after", "{e:?}");

    // The node's policy: once beijing may no longer read `situation` (set at the general
    // office, replicated), the stream ends too.
    star.hub
        .cli(&["policy", "set", "situation", "--read", HUB, "--write", HUB])
        .expect_success("policy set");
    let e = next_after_start(&s_stays);
    assert_eq!(e.event, "forbidden", "{e:?}");
    assert!(e.data.contains("policy"), "{e:?}");
}
