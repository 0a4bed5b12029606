//! Unbounded reads: a hostile office fills a collection with what makes reads expensive (one
//! key with many large siblings, thousands of tombstones, large values), and staff reading
//! through the hub still get bounded answers: a plain GET carries the winner only, `?all=true`
//! stops loading values at its budget (and says so), every scan page stays within its byte
//! budget and its cap on rows examined, following `next` reaches every record, and the hub's
//! memory stays bounded while it serves them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use officesync_protocol::wire::{Batch, Complete, Message};
use officesync_protocol::{Dot, Hlc, ReplicaId, Version, VersionVector};
use officesync_tests::http::{encode, record_path};
use officesync_tests::rogue::Rogue;
use officesync_tests::ApiClient;
use serde_json::Value;

use crate::common::{wait_for, HUB};
use crate::shared::{runtime, Scene, TIMEOUT};

/// The collection the attacker floods.
const COLL: &str = "documents";
/// Value bytes one `?all=true` answer carries at most (the daemon's `SIBLING_VALUES_BUDGET`).
const SIBLING_BUDGET: u64 = 8 << 20;
/// Bytes of values one scan page carries at most (the daemon's `SCAN_PAGE_BYTES`).
const PAGE_BYTES: usize = 8 << 20;
/// Rows one scan page examines at most (the daemon's `SCAN_MAX_EXAMINED`).
const PAGE_EXAMINED: usize = 4096;
/// How much the hub's resident memory may grow while serving the reads.
const RSS_GROWTH_MIB: f64 = 160.0;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The attacker's replica id.
fn rogue_origin() -> ReplicaId {
    ReplicaId::new("rogue-office", 1).expect("valid")
}

/// Version `counter` of the attacker, concurrent with every other (empty context).
fn version(counter: u64, key: &str, value: Option<Vec<u8>>, ms: u64) -> Version {
    Version {
        collection: COLL.into(),
        key: key.into(),
        dot: Dot::new(rogue_origin(), counter),
        hlc: Hlc { ms, logical: 0 },
        context: VersionVector::new(),
        value,
        author: None,
        signature: None,
    }
}

/// The attacker sends `versions` (counters 1, 2, … in order) to the hub in batches of at most
/// 2000 versions and 1 MiB of values (a large value alone), each completed at once, then waits
/// until the hub has taken all of them in.
fn rogue_sends(scene: &Scene, versions: Vec<Version>) {
    let origin = rogue_origin();
    let last = versions.last().map_or(0, |v| v.dot.counter);
    runtime()
        .block_on(async {
            let mut rogue = Rogue::connect(&scene.rogue_bundle, scene.hub_addr, HUB).await?;
            rogue.hello("rogue-office", &origin, Vec::new()).await?;
            for chunk in batches(&versions) {
                let through = chunk.last().map_or(0, |v| v.dot.counter);
                let batch: Message = Batch {
                    collection: COLL.into(),
                    origin: origin.clone(),
                    versions: chunk.to_vec(),
                }
                .into();
                rogue.send_message(&batch).await?;
                let complete: Message = Complete {
                    collection: COLL.into(),
                    origin: origin.clone(),
                    through,
                }
                .into();
                rogue.send_message(&complete).await?;
            }
            let hub = scene.hub.api();
            let origin = origin.to_string();
            let applied = || {
                hub.status()["vv"][COLL][origin.as_str()]
                    .as_u64()
                    .unwrap_or(0)
            };
            let deadline = tokio::time::Instant::now() + TIMEOUT;
            while applied() < last {
                anyhow::ensure!(
                    tokio::time::Instant::now() < deadline,
                    "the hub took in {} of {last} versions",
                    applied()
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            rogue.shutdown().await;
            anyhow::Ok(())
        })
        .expect("the attacker's session");
}

/// `versions` cut into batches of at most 2000 versions and 1 MiB of values, or one value.
fn batches(versions: &[Version]) -> Vec<&[Version]> {
    let mut out = Vec::new();
    let (mut from, mut bytes) = (0, 0);
    for (i, v) in versions.iter().enumerate() {
        let len = v.value.as_ref().map_or(0, Vec::len);
        if i > from && (i - from >= 2000 || bytes + len > 1 << 20) {
            out.push(&versions[from..i]);
            (from, bytes) = (i, 0);
        }
        bytes += len;
    }
    if from < versions.len() {
        out.push(&versions[from..]);
    }
    out
}

/// The value bytes of a scan page, or of an `?all=true` answer, as sent.
fn values_in(list: &[Value]) -> usize {
    list.iter()
        .filter_map(|r| r["value_base64"].as_str())
        .map(|b| BASE64.decode(b).expect("base64").len())
        .sum()
}

/// One scan page of `prefix` at `api` after `after`.
fn scan_page(api: &ApiClient, prefix: &str, after: Option<&str>) -> Value {
    let mut path = format!(
        "/v1/collections/{COLL}/records?limit=1000&prefix={}",
        encode(prefix, false)
    );
    if let Some(after) = after {
        path.push_str(&format!("&after={}", encode(after, false)));
    }
    let reply = api.call("GET", &path, None);
    assert_eq!(reply.status, 200, "GET {path}: {}", reply.text());
    reply.json()
}

/// Every scan page of `prefix` at the hub, following `next` to the end; checks each page's
/// bounds and prints its size.
fn scan_all(api: &ApiClient, prefix: &str) -> Vec<Value> {
    let mut pages = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = scan_page(api, prefix, after.as_deref());
        let records = page["records"].as_array().expect("records").clone();
        let bytes = values_in(&records);
        eprintln!(
            "scan page {}: {} records, {:.1} MiB of values, next {}",
            pages.len(),
            records.len(),
            bytes as f64 / f64::from(1 << 20),
            page["next"]
        );
        assert!(records.len() <= 1000);
        assert!(
            bytes <= PAGE_BYTES || records.len() == 1,
            "a page of {} records carries {bytes} bytes of values",
            records.len()
        );
        let next = page["next"].as_str().map(str::to_owned);
        pages.push(page);
        assert!(pages.len() < 100, "the scan does not end");
        match next {
            Some(n) => {
                assert!(after.as_deref() < Some(n.as_str()), "next {n:?} goes back");
                after = Some(n);
            }
            None => return pages,
        }
    }
}

fn keys_of(pages: &[Value]) -> Vec<String> {
    pages
        .iter()
        .flat_map(|p| p["records"].as_array().expect("records").iter())
        .map(|r| r["key"].as_str().expect("key").to_owned())
        .collect()
}

#[test]
fn a_key_with_many_large_siblings_is_read_within_the_budget() {
    let mut scene = Scene::start();
    const SIBLINGS: u64 = 8;
    const LEN: usize = 3 << 20;
    let key = "flood/siblings";
    let start = now_ms() - 30_000;
    // Concurrent versions (empty contexts): siblings; the last has the highest HLC and wins.
    let versions = (1..=SIBLINGS)
        .map(|i| version(i, key, Some(vec![i as u8; LEN]), start + i))
        .collect();
    let rss_idle = scene.hub_rss_mib("before the siblings arrive");
    rogue_sends(&scene, versions);
    let rss_before = scene.hub_rss_mib("with the siblings stored");
    let hub = scene.hub.api();

    // A plain read: the winner's bytes, the siblings counted.
    let plain = hub.get(COLL, key).expect("present");
    let held = plain.siblings;
    assert!(
        held >= 3,
        "the hub keeps {held} siblings: too few to cross the budget"
    );
    assert_eq!(plain.value, vec![SIBLINGS as u8; LEN], "the winner's value");

    // Every sibling listed; values only within the budget, the rest named and measured.
    let path = format!("{}?all=true", record_path(COLL, key));
    let all = hub.call("GET", &path, None);
    assert_eq!(all.status, 200, "{}", all.text());
    eprintln!("?all=true answer: {} bytes", all.body.len());
    let all = all.json();
    let siblings = all["siblings"].as_array().expect("siblings");
    assert_eq!(siblings.len() as u64, held);
    assert_eq!(all["truncated"], Value::Bool(true), "{}", all["truncated"]);
    assert_eq!(all["value_budget_bytes"].as_u64(), Some(SIBLING_BUDGET));
    let carried = values_in(siblings);
    assert!(
        carried as u64 <= SIBLING_BUDGET,
        "{carried} bytes of values"
    );
    assert!(carried >= LEN, "the winner's value is always carried");
    let omitted: Vec<&Value> = siblings
        .iter()
        .filter(|s| s["value_omitted"] == Value::Bool(true))
        .collect();
    assert!(!omitted.is_empty());
    for s in siblings {
        assert_eq!(
            s["value_bytes"].as_u64(),
            Some(LEN as u64),
            "{}",
            s["version"]
        );
        assert_eq!(s["deleted"], Value::Bool(false));
    }
    // Each omitted value is there for the asking, one at a time.
    for s in omitted {
        let version = s["version"].as_str().expect("version");
        let counter: u8 = version
            .rsplit_once(':')
            .expect("dot")
            .1
            .parse()
            .expect("counter");
        let path = format!(
            "{}?version={}",
            record_path(COLL, key),
            encode(version, false)
        );
        let one = hub.call("GET", &path, None);
        assert_eq!(one.status, 200, "{path}: {}", one.text());
        assert_eq!(one.header("officesync-version"), Some(version));
        assert_eq!(one.body, vec![counter; LEN], "{version}");
    }
    let gone = format!(
        "{}?version={}",
        record_path(COLL, key),
        encode(&format!("{}:999", rogue_origin()), false)
    );
    assert_eq!(hub.call("GET", &gone, None).status, 404);

    // Memory while four readers keep asking for every sibling.
    let rss_peak = concurrently(
        4,
        5,
        || {
            let all = hub.call("GET", &path, None);
            assert_eq!(all.status, 200);
            let plain = hub.call("GET", &record_path(COLL, key), None);
            assert_eq!(plain.status, 200);
        },
        &scene,
    );
    eprintln!(
        "hub RSS: {rss_idle:.1} MiB idle, {rss_before:.1} MiB with the siblings, \
         {rss_peak:.1} MiB at most while serving them"
    );
    assert!(
        rss_peak < rss_before + RSS_GROWTH_MIB,
        "the hub grew from {rss_before:.1} to {rss_peak:.1} MiB serving reads of one key"
    );
    scene.assert_intact("siblings");
}

/// Runs `read` `times` times on each of `readers` threads while sampling the hub's RSS;
/// returns the highest sample. A reader's panic fails the test once every reader has ended.
fn concurrently(readers: usize, times: usize, read: impl Fn() + Sync, scene: &Scene) -> f64 {
    let pid = scene.hub.pid().expect("hub running");
    let mut peak = 0f64;
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..readers)
            .map(|_| {
                s.spawn(|| {
                    for _ in 0..times {
                        read();
                    }
                })
            })
            .collect();
        while !handles.iter().all(|h| h.is_finished()) {
            if let Some(mib) = crate::shared::rss_mib(pid) {
                peak = peak.max(mib);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for h in handles {
            if let Err(panic) = h.join() {
                std::panic::resume_unwind(panic);
            }
        }
    });
    peak
}

#[test]
fn tombstones_and_large_values_give_bounded_scan_pages() {
    let mut scene = Scene::start();
    const TOMBSTONES: u64 = 10_000;
    const BIG: u64 = 10;
    const LEN: usize = 3 << 20;
    let start = now_ms() - 30_000;
    // Thousands of deleted keys, then large values further on in key order.
    let mut versions: Vec<Version> = (1..=TOMBSTONES)
        .map(|i| version(i, &format!("flood/t{i:05}"), None, start))
        .collect();
    versions.extend((1..=BIG).map(|i| {
        version(
            TOMBSTONES + i,
            &format!("flood/x{i:02}"),
            Some(vec![i as u8; LEN]),
            start,
        )
    }));
    let rss_idle = scene.hub_rss_mib("before the flood");
    rogue_sends(&scene, versions);
    // Honest records before, among and after the flood.
    for key in ["flood/a", "flood/t05000-honest", "flood/z"] {
        scene.honest_put("hefei", COLL, key, b"honest");
    }
    wait_for("the honest records at the hub", TIMEOUT, || {
        match scene.hub.get(COLL, "flood/z") {
            Some(_) => Ok(()),
            None => Err("not yet".into()),
        }
    });
    let rss_before = scene.hub_rss_mib("with the flood stored");

    let hub = scene.hub.api();
    let pages = scan_all(&hub, "flood/");
    let mut want = vec!["flood/a".to_owned(), "flood/t05000-honest".to_owned()];
    want.extend((1..=BIG).map(|i| format!("flood/x{i:02}")));
    want.push("flood/z".to_owned());
    assert_eq!(keys_of(&pages), want, "every record once, in key order");
    // The tombstones alone take more than one page's worth of rows examined.
    let rows_pages = (TOMBSTONES as usize).div_ceil(PAGE_EXAMINED);
    let sparse = pages
        .iter()
        .filter(|p| p["records"].as_array().is_some_and(|r| r.len() <= 1) && !p["next"].is_null())
        .count();
    assert!(
        sparse >= rows_pages - 1,
        "{sparse} pages ended early among the tombstones, {} pages in all",
        pages.len()
    );
    // Two 3 MiB values per 8 MiB page.
    let big_pages: Vec<usize> = pages
        .iter()
        .map(|p| {
            p["records"]
                .as_array()
                .expect("records")
                .iter()
                .filter(|r| r["key"].as_str().is_some_and(|k| k.starts_with("flood/x")))
                .count()
        })
        .filter(|n| *n > 0)
        .collect();
    assert!(big_pages.iter().all(|n| *n <= 2), "{big_pages:?}");

    // The CLI export follows the same cursors to the end.
    let out = scene.hub.cli(&["export", COLL, "--prefix", "flood/"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = out
        .stdout
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).expect("JSON line"))
        .collect();
    let exported: Vec<&str> = lines
        .iter()
        .map(|l| l["key"].as_str().expect("key"))
        .collect();
    assert_eq!(exported, want);

    let rss_peak = concurrently(
        4,
        2,
        || {
            let pages = scan_all(&hub, "flood/");
            assert_eq!(keys_of(&pages).len(), want.len());
        },
        &scene,
    );
    eprintln!(
        "hub RSS: {rss_idle:.1} MiB idle, {rss_before:.1} MiB with the flood, \
         {rss_peak:.1} MiB at most while scanning it"
    );
    assert!(
        rss_peak < rss_before + RSS_GROWTH_MIB,
        "the hub grew from {rss_before:.1} to {rss_peak:.1} MiB serving scans"
    );
    scene.assert_intact("scans");
}
