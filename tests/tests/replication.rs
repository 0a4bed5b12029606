//! Replication end to end: real daemons on loopback in a hub-and-spokes deployment (the
//! general office relays between city offices that only dial it), with cuts through the UDP
//! fault proxy, SIGTERM and kill -9 restarts, a late-joining office, a node from another CA,
//! `officesync verify` and the peer status fields. Every test ends with the digests (and
//! version vectors) equal on every node for every collection.

#[allow(dead_code)] // every suite uses part of the shared helpers
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::{
    assert_converged, hub_config, is_connected, office_config, peer_entry, record_count, siblings,
    start_with_lines, try_status, wait_connected, wait_for, Star, BEIJING, HEFEI, HUB,
};
use officesync_tests::fault_proxy::Direction;
use officesync_tests::http::split_version;
use officesync_tests::{test_seed, ApiClient, Cluster, OutputExt, TestNode, TestRng, WriteAck};
use serde_json::Value;

/// Sessions come up within a few dial attempts.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Small data sets converge within this on a busy 2-core machine.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(60);

/// The node's replica id (the origin of its dots).
fn replica_of(node: &TestNode) -> String {
    node.status()["replica"]
        .as_str()
        .unwrap_or_else(|| panic!("{}: status without replica", node.name()))
        .to_owned()
}

/// Waits until `key` reads as `value` on `node`.
fn wait_value(node: &TestNode, collection: &str, key: &str, value: &[u8], timeout: Duration) {
    wait_for(
        &format!("{collection}/{key} on {}", node.name()),
        timeout,
        || match node.api().try_get(collection, key) {
            Ok(Some(r)) if r.value == value => Ok(()),
            Ok(Some(r)) => Err(format!("value is {:?}", String::from_utf8_lossy(&r.value))),
            Ok(None) => Err("absent".into()),
            Err(e) => Err(format!("{e:#}")),
        },
    );
}

/// Asserts every `(key, value, ack)` reads back on `node` with that value and version.
fn assert_acked_present(node: &TestNode, collection: &str, acked: &[(String, Vec<u8>, WriteAck)]) {
    let scanned: BTreeMap<String, (Option<Vec<u8>>, String)> = node
        .api()
        .scan(collection, "")
        .into_iter()
        .map(|e| (e.key, (e.value, e.version)))
        .collect();
    let mut missing = Vec::new();
    for (key, value, ack) in acked {
        match scanned.get(key) {
            Some((Some(v), version)) if v == value && *version == ack.version => {}
            other => missing.push(format!(
                "{key}: expected {} got {:?}",
                ack.version,
                other.map(|(_, version)| version)
            )),
        }
    }
    assert!(
        missing.is_empty(),
        "{} lacks {} of {} acknowledged writes in {collection}, first: {:?}",
        node.name(),
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(5)]
    );
}

/// 1. A write at hefei is read at beijing-office through the hub alone.
#[test]
fn write_at_one_office_is_read_at_another_through_the_hub() {
    let star = Star::start(CONNECT_TIMEOUT);
    let hefei_replica = replica_of(&star.hefei);

    let mut acked = Vec::new();
    for i in 0..20 {
        let key = format!("hefei/grain-{i:02}");
        let value = format!("{{\"stock_t\":{}}}", 12_500 + i).into_bytes();
        let ack = star.hefei.put("situation", &key, &value);
        acked.push((key, value, ack));
    }
    let (last_key, last_value, _) = acked.last().expect("20 writes");
    wait_value(
        &star.beijing,
        "situation",
        last_key,
        last_value,
        CONVERGE_TIMEOUT,
    );

    for (key, value, ack) in &acked {
        let read = star
            .beijing
            .get("situation", key)
            .unwrap_or_else(|| panic!("{key} not at beijing-office"));
        assert_eq!(&read.value, value, "{key}");
        assert_eq!(read.version, ack.version, "{key}: not hefei's version");
        assert_eq!(read.siblings, 1, "{key}");
        assert_eq!(
            split_version(&read.version).0,
            hefei_replica,
            "{key}: origin is not hefei's replica"
        );
    }
    for node in star.all() {
        assert_eq!(record_count(node, "situation"), 20, "{}", node.name());
    }
    // The offices have no session with each other: only the hub relays.
    for office in [&star.hefei, &star.beijing] {
        let status = office.status();
        let names: Vec<&str> = status["peers"]
            .as_array()
            .expect("peers array")
            .iter()
            .filter_map(|p| p["name"].as_str())
            .collect();
        assert_eq!(names, [HUB], "{} peers", office.name());
    }
    assert_converged(&star.all(), CONVERGE_TIMEOUT);
}

/// 2. Both sides write during a cut (a contested key on both); after healing everything
///    acknowledged is everywhere and the contested key has two siblings and one winner.
#[test]
fn partitioned_office_reconciles_after_heal() {
    let seed = test_seed("partitioned_office_reconciles_after_heal");
    // A 1 s heartbeat puts the session idle timeout at 10 s, so the cut is noticed quickly.
    let star = Star::with_cut_link(seed, CONNECT_TIMEOUT);
    let (hub, hefei, beijing, proxy) = (&star.hub, &star.hefei, &star.beijing, star.proxy());
    let all = star.all();
    hefei.put("situation", "warmup", b"before the cut");
    assert_converged(&all, CONVERGE_TIMEOUT);

    proxy.cut(Direction::Both);
    let cut_at = Instant::now();
    let mut hefei_acked = Vec::new();
    let mut beijing_acked = Vec::new();
    // Half while both sides still believe the session is up (pushed into the void) ...
    let write = |node: &TestNode, prefix: &str, range: std::ops::RangeInclusive<u32>| {
        range
            .map(|i| {
                let key = format!("{prefix}{i}");
                let value = format!("{} wrote {key} during the cut", node.name()).into_bytes();
                let ack = node.put("situation", &key, &value);
                (key, value, ack)
            })
            .collect::<Vec<_>>()
    };
    hefei_acked.extend(write(hefei, "k", 1..=25));
    beijing_acked.extend(write(beijing, "j", 1..=25));
    // ... half once the session is known to be gone.
    wait_for("hefei to notice the cut", Duration::from_secs(45), || {
        if is_connected(hefei, HUB) || is_connected(hub, HEFEI) {
            Err("still connected".into())
        } else {
            Ok(())
        }
    });
    eprintln!("cut noticed after {:?}", cut_at.elapsed());
    hefei_acked.extend(write(hefei, "k", 26..=50));
    beijing_acked.extend(write(beijing, "j", 26..=50));
    let shared_hefei = hefei.put("situation", "shared", b"hefei's view");
    let shared_beijing = beijing.put("situation", "shared", b"beijing's view");

    // Nothing crossed the cut.
    for (node, absent) in [
        (&hub, "k1"),
        (&beijing, "k50"),
        (&hefei, "j1"),
        (&hefei, "j50"),
    ] {
        assert!(
            node.get("situation", absent).is_none(),
            "{absent} reached {} across the cut",
            node.name()
        );
    }
    assert_eq!(
        hub.get("situation", "shared").map(|r| r.version),
        Some(shared_beijing.version.clone())
    );

    proxy.heal();
    let healed_at = Instant::now();
    wait_connected(&[(hefei, HUB), (hub, HEFEI)], Duration::from_secs(60));
    eprintln!("reconnected {:?} after the heal", healed_at.elapsed());
    assert_converged(&all, CONVERGE_TIMEOUT);

    for node in all {
        assert_acked_present(node, "situation", &hefei_acked);
        assert_acked_present(node, "situation", &beijing_acked);
    }
    let expected: BTreeSet<String> = [&shared_hefei.version, &shared_beijing.version]
        .into_iter()
        .cloned()
        .collect();
    let mut winners = BTreeSet::new();
    for node in all {
        let sibs = siblings(node, "situation", "shared");
        let versions: BTreeSet<String> = sibs
            .iter()
            .map(|s| s["version"].as_str().expect("sibling version").to_owned())
            .collect();
        assert_eq!(sibs.len(), 2, "{}: shared siblings {sibs:?}", node.name());
        assert_eq!(versions, expected, "{}: shared siblings", node.name());
        let read = node.get("situation", "shared").expect("shared is live");
        assert_eq!(read.siblings, 2, "{}", node.name());
        assert!(expected.contains(&read.version), "{}", node.name());
        winners.insert(read.version);
    }
    assert_eq!(
        winners.len(),
        1,
        "nodes pick different winners: {winners:?}"
    );
    assert_converged(&all, CONVERGE_TIMEOUT);

    // A write that saw both siblings supersedes both, everywhere.
    let settled = hefei.put("situation", "shared", b"settled");
    for node in all {
        wait_value(node, "situation", "shared", b"settled", CONVERGE_TIMEOUT);
        let sibs = siblings(node, "situation", "shared");
        assert_eq!(sibs.len(), 1, "{}: {sibs:?}", node.name());
        assert_eq!(sibs[0]["version"].as_str(), Some(settled.version.as_str()));
    }
    assert_converged(&all, CONVERGE_TIMEOUT);
}

/// 3. A delete replicates as a tombstone; a later write elsewhere supersedes it.
#[test]
fn deletes_replicate_and_a_later_write_supersedes_them() {
    let cluster = Cluster::new();
    let hub_cfg = hub_config(&cluster);
    let hub = cluster.start(&hub_cfg);
    let a = cluster.start(&office_config(&cluster, HEFEI, hub_cfg.sync_listen));
    let b = cluster.start(&office_config(&cluster, BEIJING, hub_cfg.sync_listen));
    let c = cluster.start(&office_config(&cluster, "wuhan", hub_cfg.sync_listen));
    let all = [&hub, &a, &b, &c];

    let key = "2026/notice-17";
    a.put("documents", key, b"{\"title\":\"draft\"}");
    a.put("documents", "2026/notice-18", b"{\"title\":\"kept\"}");
    for node in [&b, &c] {
        wait_value(
            node,
            "documents",
            key,
            b"{\"title\":\"draft\"}",
            CONVERGE_TIMEOUT,
        );
    }

    let deleted = a
        .api()
        .delete("documents", key)
        .expect("the key was live at hefei");
    for node in all {
        wait_for(
            &format!("the delete at {}", node.name()),
            CONVERGE_TIMEOUT,
            || match node.get("documents", key) {
                None => Ok(()),
                Some(r) => Err(format!("still live as {}", r.version)),
            },
        );
        let sibs = siblings(node, "documents", key);
        assert_eq!(sibs.len(), 1, "{}: {sibs:?}", node.name());
        assert_eq!(
            sibs[0]["deleted"],
            Value::Bool(true),
            "{}: {sibs:?}",
            node.name()
        );
        assert_eq!(
            sibs[0]["version"].as_str(),
            Some(deleted.version.as_str()),
            "{}",
            node.name()
        );
    }
    assert_converged(&all, CONVERGE_TIMEOUT);
    assert_eq!(record_count(&c, "documents"), 1);

    let rewrite = b.put("documents", key, b"{\"title\":\"final\"}");
    for node in all {
        wait_value(
            node,
            "documents",
            key,
            b"{\"title\":\"final\"}",
            CONVERGE_TIMEOUT,
        );
        let sibs = siblings(node, "documents", key);
        assert_eq!(sibs.len(), 1, "{}: {sibs:?}", node.name());
        assert_eq!(sibs[0]["deleted"], Value::Bool(false), "{}", node.name());
        assert_eq!(sibs[0]["version"].as_str(), Some(rewrite.version.as_str()));
        let read = node.get("documents", key).expect("rewritten");
        assert_eq!(read.siblings, 1, "{}", node.name());
    }
    assert_converged(&all, CONVERGE_TIMEOUT);
    assert_eq!(record_count(&c, "documents"), 2);
}

/// What the background writer of test 4 acknowledged, and the errors it retried.
#[derive(Debug, Default)]
struct Bulk {
    acked: Vec<(String, Vec<u8>, WriteAck)>,
    retried: usize,
}

/// Puts `count` keys in order at `api` (values of 1..4 KiB, so that a backlog has some
/// volume), retrying each (same key and value) while the daemon is down, until `deadline`.
fn bulk_writer(api: &ApiClient, count: usize, progress: &AtomicUsize, deadline: Instant) -> Bulk {
    let mut out = Bulk::default();
    for i in 0..count {
        let key = format!("bulk/{i:05}");
        let pad = "x".repeat(1024 + (i * 37) % 3072);
        let value = format!("{{\"i\":{i},\"pad\":\"{pad}\"}}").into_bytes();
        loop {
            match api.try_put("bulk", &key, &value) {
                Ok(ack) => break out.acked.push((key.clone(), value.clone(), ack)),
                Err(e) => {
                    assert!(Instant::now() < deadline, "writer gave up at {key}: {e:#}");
                    out.retried += 1;
                    thread::sleep(Duration::from_millis(50));
                }
            }
        }
        progress.store(i + 1, Ordering::Relaxed);
    }
    out
}

/// 4. A bulk write at hefei: SIGTERM and restart hefei mid-stream; cut its link for the
///    second half so that a backlog builds up; heal, and kill -9 and restart the hub while
///    that backlog is being caught up. Every acknowledged write still reaches every node,
///    exactly once (one sibling, the acknowledged version).
#[test]
fn restarts_mid_stream_lose_no_acknowledged_write() {
    const COUNT: usize = 3_000;
    let seed = test_seed("restarts_mid_stream_lose_no_acknowledged_write");
    // A 1 s heartbeat: dead sessions (cut link, killed hub) are given up after 10 s.
    let star = Star::with_cut_link(seed, CONNECT_TIMEOUT);
    let (hub, hefei, proxy) = (&star.hub, &star.hefei, star.proxy());
    let all = star.all();

    let hub_replica = replica_of(hub);
    let progress = AtomicUsize::new(0);
    let deadline = Instant::now() + Duration::from_secs(150);
    let api = hefei.api();
    let at = |n: usize| {
        wait_for(
            &format!("{n} writes"),
            Duration::from_secs(90),
            || match progress.load(Ordering::Relaxed) {
                done if done >= n => Ok(()),
                done => Err(format!("{done} acknowledged")),
            },
        );
    };
    let (bulk, held_at_cut) = thread::scope(|s| {
        let writer = s.spawn(|| bulk_writer(&api, COUNT, &progress, deadline));
        at(COUNT / 4);
        hefei.restart(); // SIGTERM, exit 0, start again on the same data dir
        eprintln!(
            "hefei restarted at {} writes",
            progress.load(Ordering::Relaxed)
        );
        at(COUNT / 2);
        proxy.cut(Direction::Both);
        let held_at_cut = record_count(hub, "bulk");
        eprintln!(
            "link cut at {} writes, hub held {held_at_cut}",
            progress.load(Ordering::Relaxed)
        );
        (writer.join().expect("writer thread panicked"), held_at_cut)
    });
    eprintln!(
        "{} writes acknowledged, {} retried",
        bulk.acked.len(),
        bulk.retried
    );
    assert_eq!(bulk.acked.len(), COUNT);
    wait_for(
        "hefei to give up the cut session",
        Duration::from_secs(45),
        || {
            if is_connected(hefei, HUB) || is_connected(hub, HEFEI) {
                Err("still connected".into())
            } else {
                Ok(())
            }
        },
    );
    let backlog = COUNT as u64 - record_count(hub, "bulk");
    assert!(backlog > 0, "nothing was held back by the cut");

    // A WAN-like link slows the catch-up down enough to kill the hub in the middle of it.
    proxy.set_delay(Duration::from_millis(100), Duration::ZERO);
    proxy.heal();
    let healed_at = Instant::now();
    let mut seen = Vec::new();
    let killed_mid_catch_up = wait_until_or_false(Duration::from_secs(60), || {
        let n = record_count(hub, "bulk");
        seen.push(n);
        n >= held_at_cut.max(COUNT as u64 - backlog) + 50 && n < COUNT as u64
    });
    let at_kill = record_count(hub, "bulk");
    hub.kill9();
    eprintln!(
        "backlog {backlog}; hub killed {:?} after the heal holding {at_kill} of {COUNT} \
         (mid catch-up: {killed_mid_catch_up}; counts seen {:?})",
        healed_at.elapsed(),
        &seen[seen.len().saturating_sub(5)..]
    );
    assert!(
        killed_mid_catch_up,
        "the catch-up was never observed in progress (counts {seen:?})"
    );
    thread::sleep(Duration::from_millis(300));
    hub.restart();
    assert_eq!(
        replica_of(hub),
        hub_replica,
        "kill -9 changed the hub's incarnation"
    );
    proxy.set_delay(Duration::ZERO, Duration::ZERO);

    assert_converged(&all, Duration::from_secs(90));
    for node in all {
        assert_acked_present(node, "bulk", &bulk.acked);
        assert_eq!(record_count(node, "bulk"), COUNT as u64, "{}", node.name());
        let multi: Vec<_> = node
            .api()
            .scan("bulk", "")
            .into_iter()
            .filter(|e| e.siblings != 1)
            .map(|e| e.key)
            .collect();
        assert!(
            multi.is_empty(),
            "{}: keys with siblings {multi:?}",
            node.name()
        );
    }
}

/// Polls `check` every 20 ms until it holds (true) or `timeout` passes (false).
fn wait_until_or_false(timeout: Duration, check: impl FnMut() -> bool) -> bool {
    officesync_tests::wait_until(timeout, Duration::from_millis(20), check)
}

/// A value for record `i` of the big data set: mostly small JSON, every 64th 10..100 KiB.
fn dataset_value(rng: &mut TestRng, collection: &str, i: usize) -> Vec<u8> {
    if i % 64 == 7 {
        let len = usize::try_from(rng.range(10 << 10, 100 << 10)).expect("small");
        let byte = u8::try_from(rng.range(0, 256)).expect("byte");
        let mut v = vec![byte; len];
        v[..8].copy_from_slice(&(i as u64).to_le_bytes());
        v
    } else {
        format!(
            "{{\"c\":\"{collection}\",\"i\":{i},\"r\":{}}}",
            rng.next_u64()
        )
        .into_bytes()
    }
}

/// Writes `count` records to `collection` at `api` with `threads` concurrent writers.
fn write_dataset(api: &ApiClient, collection: &str, count: usize, threads: usize, seed: u64) {
    thread::scope(|s| {
        for t in 0..threads {
            s.spawn(move || {
                let mut rng = TestRng::new(seed ^ t as u64);
                for i in (t..count).step_by(threads) {
                    let value = dataset_value(&mut rng, collection, i);
                    api.put(collection, &format!("{collection}/{i:05}"), &value);
                }
            });
        }
    });
}

/// 5. A new, empty office joining after the hub holds a large data set catches up fully.
#[test]
fn new_office_catches_up_with_a_large_data_set() {
    const PER_COLLECTION: usize = 10_000;
    let seed = test_seed("new_office_catches_up_with_a_large_data_set");
    let cluster = Cluster::new();
    let mut hub_cfg = hub_config(&cluster);
    // The data set is loaded fast; durability is not what this test is about.
    hub_cfg.durability = "periodic".into();
    let hub = cluster.start(&hub_cfg);
    let mut hefei_cfg = office_config(&cluster, HEFEI, hub_cfg.sync_listen);
    hefei_cfg.durability = "periodic".into();
    let hefei = cluster.start(&hefei_cfg);

    let load = Instant::now();
    thread::scope(|s| {
        let (hub_api, hefei_api) = (hub.api(), hefei.api());
        s.spawn(move || write_dataset(&hub_api, "situation", PER_COLLECTION, 3, seed));
        s.spawn(move || write_dataset(&hefei_api, "documents", PER_COLLECTION, 3, !seed));
    });
    eprintln!(
        "loaded {} records in {:?}",
        2 * PER_COLLECTION,
        load.elapsed()
    );
    assert_converged(&[&hub, &hefei], Duration::from_secs(90));

    let joined = Instant::now();
    let newcomer = cluster.start(&office_config(&cluster, "urumqi", hub_cfg.sync_listen));
    assert_converged(&[&hub, &hefei, &newcomer], Duration::from_secs(120));
    eprintln!("the new office caught up in {:?}", joined.elapsed());
    for collection in ["situation", "documents"] {
        assert_eq!(
            record_count(&newcomer, collection),
            PER_COLLECTION as u64,
            "{collection}"
        );
    }
    // Byte for byte, big values included.
    let reference = hefei.api().scan("documents", "");
    let copy = newcomer.api().scan("documents", "");
    assert_eq!(copy.len(), reference.len());
    for (a, b) in reference.iter().zip(&copy) {
        assert_eq!(a, b, "documents differ at {}", a.key);
    }
    let big = copy
        .iter()
        .filter(|e| e.value.as_ref().is_some_and(|v| v.len() >= 10 << 10))
        .count();
    assert!(big >= PER_COLLECTION / 64, "only {big} big values");
}

/// 6. A node whose certificate comes from another CA, even under a name we know, is
///    refused: it never connects, never receives our records, never changes ours.
#[test]
fn node_from_another_ca_is_refused() {
    let cluster = Cluster::new();
    let hub_cfg = hub_config(&cluster);
    let hub = cluster.start(&hub_cfg);
    let hefei = cluster.start(&office_config(&cluster, HEFEI, hub_cfg.sync_listen));
    wait_connected(&[(&hefei, HUB), (&hub, HEFEI)], CONNECT_TIMEOUT);
    for i in 0..10 {
        hub.put("situation", &format!("hub/{i}"), b"from the hub");
        hefei.put("situation", &format!("hefei/{i}"), b"from hefei");
    }
    assert_converged(&[&hub, &hefei], CONVERGE_TIMEOUT);
    let before = hub.status();

    // Two impostors with certificates from another CA. beijing-office (a name we know)
    // also trusts our CA, so it accepts the hub's certificate and the refusal must come from
    // the hub checking the client certificate; shanghai trusts only its own CA.
    let rogue_ca = Cluster::new();
    let impostor_cfg = office_config(&rogue_ca, BEIJING, hub_cfg.sync_listen);
    let both_cas = [
        std::fs::read(impostor_cfg.tls_dir.join("ca.pem")).expect("rogue ca.pem"),
        std::fs::read(cluster.ca_dir().join("ca.pem")).expect("our ca.pem"),
    ]
    .concat();
    std::fs::write(impostor_cfg.tls_dir.join("ca.pem"), both_cas).expect("write ca.pem");
    let impostor = rogue_ca.start(&impostor_cfg);
    let stranger = rogue_ca.start(&office_config(&rogue_ca, "shanghai", hub_cfg.sync_listen));
    let rogues = [&impostor, &stranger];
    for rogue in rogues {
        for i in 0..10 {
            rogue.put("situation", &format!("rogue/{i}"), b"forged");
            rogue.put("situation", &format!("hub/{i}"), b"overwrite attempt");
        }
    }
    // Watch several dial attempts (backoff 0.5 s, 1 s, 2 s, 4 s ...).
    let watch_until = Instant::now() + Duration::from_secs(8);
    let mut polls = 0;
    while Instant::now() < watch_until {
        polls += 1;
        let status = hub.status();
        for name in [BEIJING, "shanghai"] {
            if let Some(p) = peer_entry(&status, name) {
                assert_ne!(
                    p["connected"],
                    Value::Bool(true),
                    "hub accepted {name}: {p}"
                );
            }
        }
        for rogue in rogues {
            assert!(!is_connected(rogue, HUB), "{} got a session", rogue.name());
        }
        thread::sleep(Duration::from_millis(250));
    }
    assert!(polls > 10);
    for rogue in rogues {
        assert!(
            rogue.log().contains("dial failed"),
            "{} never tried (or failed silently):\n{}",
            rogue.name(),
            rogue.log()
        );
    }
    // The hub itself refused the impostor's client certificate (not only the other way).
    assert!(
        hub.log().contains("not issued by this deployment's CA"),
        "the hub never checked a foreign client certificate:\n{}",
        hub.log()
    );
    // Nothing crossed in either direction.
    for i in 0..10 {
        for rogue in rogues {
            assert!(rogue.get("situation", &format!("hefei/{i}")).is_none());
        }
        assert_eq!(
            hub.get("situation", &format!("hub/{i}")).map(|r| r.value),
            Some(b"from the hub".to_vec())
        );
        assert!(hub.get("situation", &format!("rogue/{i}")).is_none());
    }
    let after = hub.status();
    assert_eq!(
        after["vv"], before["vv"],
        "the hub's version vectors changed"
    );
    assert_eq!(
        after["collections"]["situation"]["digest"],
        before["collections"]["situation"]["digest"]
    );
    for rogue in rogues {
        assert_eq!(record_count(rogue, "situation"), 20, "{}", rogue.name());
    }
    assert!(hub.is_running() && hub.api().healthy());
    assert_converged(&[&hub, &hefei], CONVERGE_TIMEOUT);
}

/// Writes a few records in two collections at both offices and waits for convergence.
fn traffic(star: &Star) {
    for i in 0..25 {
        star.hefei.put(
            "situation",
            &format!("hefei/{i}"),
            format!("h{i}").as_bytes(),
        );
        star.beijing.put(
            "documents",
            &format!("beijing/{i}"),
            format!("b{i}").as_bytes(),
        );
    }
    star.hub
        .put("documents", "hub/circular", b"{\"to\":\"all offices\"}");
    assert_converged(&star.all(), CONVERGE_TIMEOUT);
}

/// 7. `officesync verify` on a converged cluster says `equal` everywhere and exits 0.
#[test]
fn verify_on_a_converged_cluster_reports_equal() {
    let star = Star::start(CONNECT_TIMEOUT);
    traffic(&star);
    let collections = ["_nodes", "documents", "situation"];
    for (node, peers) in [
        (&star.hub, &[BEIJING, HEFEI][..]),
        (&star.hefei, &[HUB][..]),
        (&star.beijing, &[HUB][..]),
    ] {
        let out = node.cli(&["verify", "--json"]);
        out.expect_success(&format!("officesync verify --json on {}", node.name()));
        let json: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("verify --json is not JSON ({e}): {}", out.describe()));
        let results = json["results"]
            .as_array()
            .unwrap_or_else(|| panic!("no results array: {json}"));
        let mut seen = BTreeSet::new();
        for r in results {
            assert_eq!(r["outcome"], "equal", "{} verify: {r}", node.name());
            seen.insert((
                r["peer"].as_str().expect("peer").to_owned(),
                r["collection"].as_str().expect("collection").to_owned(),
            ));
        }
        let expected: BTreeSet<(String, String)> = peers
            .iter()
            .flat_map(|p| {
                collections
                    .iter()
                    .map(|c| ((*p).to_owned(), (*c).to_owned()))
            })
            .collect();
        assert_eq!(seen, expected, "{} verify covered", node.name());

        let text = node.cli(&["verify"]);
        text.expect_success(&format!("officesync verify on {}", node.name()));
        assert!(
            text.stdout_text().contains("equal"),
            "{}: {}",
            node.name(),
            text.describe()
        );
    }
    assert_converged(&star.all(), CONVERGE_TIMEOUT);
}

/// 8. After traffic, every session's status entry is filled in on both ends.
#[test]
fn peer_status_fields_after_traffic() {
    let star = Star::start(CONNECT_TIMEOUT);
    traffic(&star);
    let pairs = [
        (&star.hefei, HUB),
        (&star.beijing, HUB),
        (&star.hub, HEFEI),
        (&star.hub, BEIJING),
    ];
    let took = wait_for("lag 0 on every session", Duration::from_secs(20), || {
        let mut lagging = Vec::new();
        for (node, peer) in pairs {
            let status = try_status(node).ok_or("no status")?;
            let p = peer_entry(&status, peer).cloned().unwrap_or(Value::Null);
            if p["lag_versions"] != 0 {
                lagging.push(format!("{} -> {peer}: {p}", node.name()));
            }
        }
        if lagging.is_empty() {
            Ok(())
        } else {
            Err(format!("{lagging:?}"))
        }
    });
    eprintln!("lag 0 on every session {took:?} after convergence");
    for (node, peer) in pairs {
        let status = node.status();
        let p = peer_entry(&status, peer)
            .unwrap_or_else(|| panic!("{} does not list {peer}: {status}", node.name()));
        let what = format!("{} -> {peer}: {p}", node.name());
        assert_eq!(p["connected"], Value::Bool(true), "{what}");
        let seen = p["last_seen"].as_str().unwrap_or_else(|| panic!("{what}"));
        assert!(
            seen.len() >= 20 && seen.contains('T') && seen.ends_with('Z'),
            "{what}"
        );
        assert!(p["bytes_sent"].as_u64().is_some_and(|n| n > 0), "{what}");
        assert!(
            p["bytes_received"].as_u64().is_some_and(|n| n > 0),
            "{what}"
        );
        assert_eq!(p["lag_versions"].as_u64(), Some(0), "{what}");
    }
    // last_seen moves on with the heartbeats of an idle session.
    let first = peer_entry(&star.hefei.status(), HUB).expect("listed")["last_seen"].clone();
    wait_for("last_seen to advance", Duration::from_secs(20), || {
        let now = peer_entry(&star.hefei.status(), HUB).expect("listed")["last_seen"].clone();
        if now != first {
            Ok(())
        } else {
            Err(format!("still {now}"))
        }
    });
    assert_converged(&star.all(), CONVERGE_TIMEOUT);
}

/// The largest value a node can be configured to accept (`storage.max_value_bytes` ≤ 6 MiB,
/// which fits one replication frame) replicates like any other and does not hold back the
/// writes after it; an office configured with a larger limit than the hub's has its oversize
/// version refused and counted by the hub, and its later writes still arrive.
#[test]
fn largest_values_replicate_and_oversize_ones_are_refused_without_wedging() {
    let cluster = Cluster::new();
    let hub_cfg = hub_config(&cluster);
    let hub = start_with_lines(&hub_cfg, "storage", "max_value_bytes = 4194304");
    let hefei = start_with_lines(
        &office_config(&cluster, HEFEI, hub_cfg.sync_listen),
        "storage",
        "max_value_bytes = 6291456",
    );
    wait_connected(&[(&hefei, HUB), (&hub, HEFEI)], CONNECT_TIMEOUT);
    let mut rng = TestRng::new(1);
    let fits: Vec<u8> = (0..4 << 20).map(|_| rng.next_u64() as u8).collect();
    let oversize: Vec<u8> = (0..6 << 20).map(|_| rng.next_u64() as u8).collect();
    hefei.put("documents", "scan/fits", &fits);
    hefei.put("documents", "scan/oversize", &oversize);
    hefei.put("documents", "after", b"a small write after it");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while hub.get("documents", "after").is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "later write never arrived:\n{}",
            hub.current_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        hub.get("documents", "scan/fits").map(|r| r.value),
        Some(fits)
    );
    assert!(
        hub.get("documents", "scan/oversize").is_none(),
        "the hub must refuse a value above its limit"
    );
    let refused = hub.status()["writes"]["remote_rejected"]
        .as_u64()
        .unwrap_or(0);
    assert!(refused >= 1, "the refusal is counted: {}", hub.status());
}
