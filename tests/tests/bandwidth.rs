//! Bandwidth limits and the urgent lane, on two real daemons: the general office sends a
//! catch-up to an office that dials it through the fault proxy, whose byte counters measure
//! the rate on the wire. A limit in force holds the wire within ±10 % of its rate over a
//! steady window; a write to an urgent collection made during the throttled catch-up arrives
//! long before the catch-up ends; a limit whose window is not in force does not throttle; a
//! general office speaking protocol 2 (no urgent stream) still delivers everything.
//!
//! Measured windows are seconds long and start after the catch-up is flowing, so scheduling
//! noise stays a small part of them.

#[allow(dead_code)] // not every suite uses every helper
mod common;

use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use common::{
    assert_converged, hub_config, office_config, peer_entry, record_count, start_with_lines,
    wait_connected, wait_for, HEFEI, HUB,
};
use officesync_tests::fault_proxy::{Direction, FaultProxy};
use officesync_tests::{test_seed, Cluster, TestConfig, TestNode, TestRng};

const TIMEOUT: Duration = Duration::from_secs(60);
/// The limit: 2 Mbit/s.
const LIMIT: &str = "2 Mbit/s";
/// The limit in bytes per second.
const LIMIT_BYTES: f64 = 250_000.0;
/// Catch-up records and the size of each (random: zstd cannot shrink them).
const RECORDS: usize = 48;
const VALUE_BYTES: usize = 64 << 10;
/// The urgent collection.
const URGENT: &str = "alerts";

/// Starts the general office with `[sync] urgent = ["alerts"]` and one `[[sync.limit]]` of
/// [`LIMIT`] for every peer, in force `when` (`None`: always).
fn start_hub(cluster: &Cluster, when: Option<&str>, pin: Option<&str>) -> (TestConfig, TestNode) {
    let mut config = hub_config(cluster);
    config.extra_toml = format!(
        "[[sync.limit]]\npeers = [\"*\"]\nrate = \"{LIMIT}\"\n{}",
        when.map_or(String::new(), |w| format!("when = \"{w}\"\n"))
    );
    let node = start_with_lines(&config, "sync", &format!("urgent = [\"{URGENT}\"]"));
    if let Some(p) = pin {
        node.set_env("OFFICESYNC_MAX_PROTOCOL", Some(p));
        node.stop();
        node.restart();
    }
    (config, node)
}

/// Writes `records` random values of [`VALUE_BYTES`] to `documents` at `node`.
fn write_documents(node: &TestNode, records: usize, seed: u64) {
    let mut rng = TestRng::new(seed);
    for i in 0..records {
        let value: Vec<u8> = (0..VALUE_BYTES / 8)
            .flat_map(|_| rng.next_u64().to_le_bytes())
            .collect();
        node.put("documents", &format!("doc/{i:03}"), &value);
    }
}

/// Bytes the proxy forwarded from the general office to hefei.
fn wire_bytes(proxy: &FaultProxy) -> u64 {
    proxy.counters(Direction::FromUpstream).forwarded_bytes
}

/// Waits until the catch-up is flowing on the wire.
fn wait_flowing(proxy: &FaultProxy) {
    wait_for("the catch-up to flow", TIMEOUT, || {
        let b = wire_bytes(proxy);
        if b > 200_000 {
            Ok(())
        } else {
            Err(format!("{b} bytes so far"))
        }
    });
}

#[test]
fn a_limit_in_force_holds_the_wire_and_urgent_writes_overtake_the_catch_up() {
    let seed = test_seed("bandwidth-limit");
    let cluster = Cluster::new();
    let (hub_cfg, hub) = start_hub(&cluster, None, None);
    write_documents(&hub, RECORDS, seed);
    let proxy = FaultProxy::start(hub_cfg.sync_listen, seed);
    let hefei = cluster.start(&office_config(&cluster, HEFEI, proxy.listen_addr()));
    wait_flowing(&proxy);

    // A steady window: from a second after the catch-up started, for five seconds.
    thread::sleep(Duration::from_secs(1));
    let (t1, b1) = (Instant::now(), wire_bytes(&proxy));

    // An urgent write in the middle of it.
    thread::sleep(Duration::from_millis(1500));
    let written = Instant::now();
    hub.put(URGENT, "flood/huai", b"{\"level_m\": 27.4}");
    let mut latency = None;
    while written.elapsed() < TIMEOUT {
        if hefei.get(URGENT, "flood/huai").is_some() {
            latency = Some(written.elapsed());
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    let latency = latency.expect("the urgent write arrives");
    let held_then = record_count(&hefei, "documents");

    let status = hub.status();
    let peer = peer_entry(&status, HEFEI).expect("hefei in the hub's status");
    assert_eq!(peer["limit"], LIMIT, "{peer}");
    assert_eq!(peer["limit_bytes_per_sec"], 250_000, "{peer}");
    assert!(
        peer["queued_bytes"].as_u64().is_some_and(|q| q > 0),
        "bulk bytes wait for the limit: {peer}"
    );
    let metrics = hub.api().call("GET", "/metrics", None).text();
    assert!(
        metrics.contains("officesync_peer_limit_bytes_per_second{peer=\"hefei\"} 250000"),
        "{metrics}"
    );

    thread::sleep((t1 + Duration::from_secs(5)).saturating_duration_since(Instant::now()));
    let (t2, b2) = (Instant::now(), wire_bytes(&proxy));
    let held_at_t2 = record_count(&hefei, "documents");
    assert!(
        held_at_t2 < RECORDS as u64,
        "the window ends before the catch-up does ({held_at_t2} records)"
    );
    let rate = (b2 - b1) as f64 / (t2 - t1).as_secs_f64();
    eprintln!(
        "wire rate {rate:.0} B/s for a limit of {LIMIT_BYTES} B/s ({:+.1} %)",
        (rate / LIMIT_BYTES - 1.0) * 100.0
    );
    assert!(
        (rate / LIMIT_BYTES - 1.0).abs() <= 0.10,
        "the wire carried {rate:.0} B/s for a limit of {LIMIT_BYTES} B/s"
    );

    wait_for("the catch-up to complete", TIMEOUT, || {
        let n = record_count(&hefei, "documents");
        (n == RECORDS as u64)
            .then_some(())
            .ok_or(format!("{n} of {RECORDS}"))
    });
    let remaining = written.elapsed();
    eprintln!(
        "urgent write arrived in {latency:?} with {held_then} of {RECORDS} records held; \
         the catch-up ended {remaining:?} after the write"
    );
    assert!(
        held_then < RECORDS as u64,
        "the urgent write overtook the catch-up"
    );
    assert!(
        latency * 5 < remaining,
        "urgent write took {latency:?}, the rest of the catch-up {remaining:?}"
    );
    assert_converged(&[&hub, &hefei], TIMEOUT);
}

/// The day after tomorrow in the local time the daemons see (`date +%u`: 1 = Monday).
fn day_after_tomorrow() -> &'static str {
    let out = Command::new("date").arg("+%u").output().expect("run date");
    let today: usize = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("date +%u prints a day number");
    ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"][(today - 1 + 2) % 7]
}

#[test]
fn a_limit_out_of_its_window_does_not_throttle() {
    let seed = test_seed("bandwidth-window");
    let cluster = Cluster::new();
    let when = format!("{} 00:00-24:00", day_after_tomorrow());
    let (hub_cfg, hub) = start_hub(&cluster, Some(&when), None);
    write_documents(&hub, RECORDS, seed);
    let proxy = FaultProxy::start(hub_cfg.sync_listen, seed);
    let hefei = cluster.start(&office_config(&cluster, HEFEI, proxy.listen_addr()));
    wait_connected(&[(&hefei, HUB)], TIMEOUT);
    let start = Instant::now();
    wait_for("the catch-up to complete", TIMEOUT, || {
        let n = record_count(&hefei, "documents");
        (n == RECORDS as u64)
            .then_some(())
            .ok_or(format!("{n} of {RECORDS}"))
    });
    let took = start.elapsed();
    let throttled = Duration::from_secs_f64(wire_bytes(&proxy) as f64 / LIMIT_BYTES);
    assert!(
        took * 2 < throttled,
        "the catch-up took {took:?}; at the limit it would take {throttled:?}"
    );
    let status = hub.status();
    let peer = peer_entry(&status, HEFEI).expect("hefei in the hub's status");
    assert!(peer["limit"].is_null(), "{peer}");
    assert_converged(&[&hub, &hefei], TIMEOUT);
}

#[test]
fn a_general_office_of_protocol_2_sends_urgent_collections_as_bulk() {
    let seed = test_seed("bandwidth-protocol-2");
    let cluster = Cluster::new();
    let (hub_cfg, hub) = start_hub(&cluster, None, Some("2"));
    write_documents(&hub, 6, seed);
    let hefei = cluster.start(&office_config(&cluster, HEFEI, hub_cfg.sync_listen));
    wait_connected(&[(&hefei, HUB), (&hub, HEFEI)], TIMEOUT);
    hub.put(URGENT, "flood/huai", b"{\"level_m\": 27.4}");
    hefei.put(URGENT, "flood/hefei", b"{\"level_m\": 12.1}");
    assert_converged(&[&hub, &hefei], TIMEOUT);
    assert_eq!(record_count(&hefei, "documents"), 6);
    assert!(hefei.get(URGENT, "flood/huai").is_some());
    let status = hub.status();
    let peer = peer_entry(&status, HEFEI).expect("hefei in the hub's status");
    assert_eq!(peer["protocol"], 2, "{peer}");
}
