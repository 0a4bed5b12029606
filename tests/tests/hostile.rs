//! Hostile network input against real daemons: an authenticated rogue peer sending malformed
//! frames (each closes its connection with the named error code, is logged with the peer's
//! name, counted in status and writes nothing, while two offices keep replicating through the
//! hub), the growing backoff of a peer that keeps doing it, and floods of garbage datagrams and
//! of connection attempts (replication continues, the hub's memory stays bounded).

#[allow(dead_code)]
mod common;

use std::net::{SocketAddr, UdpSocket};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{
    assert_converged, hub_config, office_config, peer_entry, wait_connected, wait_for, HUB,
};
use officesync_daemon::signing::NodeSigner;
use officesync_protocol::wire::{
    decode_message, encode_message, encode_raw_frame, Batch, Complete, ErrorCode, FrameFlags,
    Heartbeat, Message, WireError,
};
use officesync_protocol::{Dot, Hlc, ReplicaId, Version, VersionVector};
use officesync_tests::rogue::Rogue;
use officesync_tests::{Cluster, TestNode, TestRng};
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(60);

/// The hub and two offices dialing it, connected and converged on a first write.
fn star(cluster: &Cluster) -> (TestNode, TestNode, TestNode, SocketAddr) {
    let hub_cfg = hub_config(cluster);
    let hub = cluster.start(&hub_cfg);
    let hub_addr = hub_cfg.sync_listen;
    let hefei = cluster.start(&office_config(cluster, "hefei", hub_addr));
    let beijing = cluster.start(&office_config(cluster, "beijing-office", hub_addr));
    wait_connected(&[(&hub, "hefei"), (&hub, "beijing-office")], TIMEOUT);
    hefei.put("situation", "hefei/start", b"1");
    assert_converged(&[&hub, &hefei, &beijing], TIMEOUT);
    (hub, hefei, beijing, hub_addr)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What the hub holds: every collection's digest and record count, and the vectors.
fn holdings(node: &TestNode) -> (Value, Value) {
    let s = node.status();
    let digests: serde_json::Map<String, Value> = s["collections"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, c)| (k.clone(), c["digest"].clone()))
                .collect()
        })
        .unwrap_or_default();
    (Value::Object(digests), s["vv"].clone())
}

fn version(origin: &ReplicaId, counter: u64, key: String, value: Vec<u8>, ms: u64) -> Version {
    Version {
        collection: "situation".into(),
        key,
        dot: Dot::new(origin.clone(), counter),
        hlc: Hlc { ms, logical: 0 },
        context: VersionVector::new(),
        value: Some(value),
        author: None,
        signature: None,
    }
}

/// Which stream a hostile input goes on.
#[derive(Clone, Copy, Debug)]
enum On {
    Control,
    Bulk,
}

/// The hostile inputs: a name, the stream, the raw bytes and the code the daemon must close
/// with. `signer` signs the versions that must get past the signature check.
fn hostile_inputs(
    origin: &ReplicaId,
    rng: &mut TestRng,
    signer: Option<&NodeSigner>,
) -> Vec<(&'static str, On, Vec<u8>, ErrorCode)> {
    let frame = |payload: &[u8]| encode_raw_frame(FrameFlags::NONE, payload).expect("frame");
    let batch = |versions: Vec<Version>| -> Message {
        Batch {
            collection: "situation".into(),
            origin: origin.clone(),
            versions,
        }
        .into()
    };
    let heartbeat: Message = Heartbeat { now_ms: 1, seq: 1 }.into();
    let mut trailing = encode_message(&heartbeat).expect("encodes");
    trailing.push(0);
    // V1, then message variant 40: no such message kind.
    let unknown_tag = vec![0u8, 40];
    // A batch whose collection name claims 2^62 bytes.
    let mut impossible = vec![0u8, 2, 0xfd];
    impossible.extend_from_slice(&(1u64 << 62).to_le_bytes());
    let now = now_ms();
    let long_key = batch(vec![version(
        origin,
        1,
        "k".repeat(1025),
        b"v".to_vec(),
        now,
    )]);
    let big_value = batch(vec![version(
        origin,
        1,
        "big".into(),
        vec![7u8; 6 * 1024 * 1024 + 1],
        now,
    )]);
    // Versions 5..=6 buffered (signed, so they pass the signature check), then "complete
    // through 4": below its own batch.
    let signed = |mut v: Version| {
        if let Some(signer) = signer {
            v.signature = Some(signer.sign(&v.collection, &v.key, &v.header(), None));
        }
        v
    };
    let mut out_of_order = frame(
        &encode_message(&batch(vec![
            signed(version(origin, 5, "a".into(), b"v".to_vec(), now)),
            signed(version(origin, 6, "b".into(), b"v".to_vec(), now)),
        ]))
        .expect("encodes"),
    );
    let complete: Message = Complete {
        collection: "situation".into(),
        origin: origin.clone(),
        through: 4,
    }
    .into();
    out_of_order.extend(frame(&encode_message(&complete).expect("encodes")));
    // A header declaring 9 MiB: refused before any of it is buffered.
    let mut over_limit = (9u32 << 20).to_be_bytes().to_vec();
    over_limit.push(0);
    over_limit.extend_from_slice(&[0u8; 1024]);
    let mut garbage_payload = vec![0u8; 200];
    fill(rng, &mut garbage_payload);
    garbage_payload[0] = 0; // V1, so decoding gets past the version tag into the message
    let expect = |payload: &[u8]| -> ErrorCode {
        decode_message(payload)
            .and_then(|m| m.validate(6 * 1024 * 1024).map(|()| m))
            .map_or_else(|e: WireError| e.code(), |_| ErrorCode::Malformed)
    };
    vec![
        (
            "trailing_bytes",
            On::Control,
            frame(&trailing),
            expect(&trailing),
        ),
        (
            "unknown_tag",
            On::Control,
            frame(&unknown_tag),
            expect(&unknown_tag),
        ),
        (
            "impossible_length",
            On::Bulk,
            frame(&impossible),
            expect(&impossible),
        ),
        (
            "oversize_key",
            On::Bulk,
            frame(&encode_message(&long_key).expect("encodes")),
            ErrorCode::Malformed,
        ),
        (
            "oversize_value",
            On::Bulk,
            frame(&encode_message(&big_value).expect("encodes")),
            ErrorCode::FrameTooLarge,
        ),
        (
            "complete_out_of_order",
            On::Bulk,
            out_of_order,
            ErrorCode::OutOfOrder,
        ),
        (
            "frame_over_limit",
            On::Control,
            over_limit,
            ErrorCode::FrameTooLarge,
        ),
        (
            "garbage",
            On::Bulk,
            frame(&garbage_payload),
            expect(&garbage_payload),
        ),
    ]
}

#[test]
fn malformed_frames_from_an_authenticated_peer_close_only_its_connection() {
    let cluster = Cluster::new();
    let (hub, hefei, beijing, hub_addr) = star(&cluster);
    let before = holdings(&hub);
    let rt = runtime();
    let mut rng = TestRng::new(officesync_tests::test_seed("hostile"));

    // Offices keep writing through the whole attack.
    let writer = {
        let api = hefei.api();
        thread::spawn(move || {
            for i in 0..40 {
                api.put("situation", &format!("hefei/live-{i}"), b"x");
                thread::sleep(Duration::from_millis(100));
            }
        })
    };

    let cases = hostile_inputs(&ReplicaId::new("rogue", 1).expect("valid"), &mut rng, None).len();
    for i in 0..cases {
        // One certificate per case, so the backoff of one does not delay the next.
        let name = format!("rogue-{i}");
        let bundle = cluster.issue(&name, false);
        let origin = ReplicaId::new(&name, 1).expect("valid");
        let signer = NodeSigner::load(&bundle.join("node.pem"), &bundle.join("node.key"))
            .expect("the rogue's key signs");
        let (case, on, bytes, code) =
            hostile_inputs(&origin, &mut rng, Some(&signer)).swap_remove(i);
        let (frame, closed) = rt.block_on(async {
            let mut rogue = Rogue::connect(&bundle, hub_addr, HUB)
                .await
                .expect("handshake");
            rogue
                .hello(&name, &origin, Vec::new())
                .await
                .expect("session handshake");
            let sent = match on {
                On::Control => rogue.send_control(&bytes).await,
                On::Bulk => rogue.send_bulk(&bytes).await,
            };
            // The hub may stop reading before a large frame is through: that is fine.
            let _ = sent;
            let frame = rogue.error_frame().await;
            let closed = rogue.closed().await;
            rogue.shutdown().await;
            (frame, closed)
        });
        let frame = frame.unwrap_or_else(|| panic!("{case}: no error frame; closed {closed:?}"));
        assert_eq!(frame.code, code, "{case}: error frame {frame:?}");
        assert_eq!(
            closed.code,
            Some(u64::from(code.as_u32())),
            "{case}: {closed:?}"
        );
        wait_for(&format!("{case} counted in status"), TIMEOUT, || {
            let s = hub.status();
            let p = peer_entry(&s, &name).ok_or("peer not listed")?.clone();
            let last = p["last_bad_input"].as_str().unwrap_or_default().to_owned();
            if p["bad_input"].as_u64() == Some(1) && last.starts_with(code.as_str()) {
                Ok(())
            } else {
                Err(format!("{p}"))
            }
        });
        let log = hub.log();
        assert!(
            log.lines()
                .any(|l| l.contains("bad input from peer") && l.contains(&name)),
            "{case}: no log line naming {name}"
        );
        eprintln!("{case}: closed with {} ({})", code.as_str(), frame.detail);
    }
    writer.join().expect("writer");
    // Nothing of the rogues was written, and the offices kept replicating.
    assert_converged(&[&hub, &hefei, &beijing], TIMEOUT);
    let after = holdings(&hub);
    let vv = after.1["situation"].as_object().expect("situation vv");
    assert!(
        !vv.keys().any(|origin| origin.starts_with("rogue")),
        "a rogue origin reached the vector: {vv:?}"
    );
    for key in ["a", "b", "big", "k"] {
        assert!(hub.get("situation", key).is_none(), "{key} was written");
    }
    assert!(beijing.get("situation", "hefei/live-39").is_some());
    assert_ne!(before.0, after.0, "the offices' writes arrived");
}

#[test]
fn a_peer_that_keeps_sending_bad_input_is_refused_with_growing_backoff() {
    let cluster = Cluster::new();
    let hub_cfg = hub_config(&cluster);
    let hub = cluster.start(&hub_cfg);
    let hub_addr = hub_cfg.sync_listen;
    let name = "repeat-offender";
    let bundle = cluster.issue(name, false);
    let origin = ReplicaId::new(name, 1).expect("valid");
    let rt = runtime();
    let garbage = encode_raw_frame(FrameFlags::NONE, &[0, 40]).expect("frame");
    let offend = || {
        rt.block_on(async {
            let mut rogue = Rogue::connect(&bundle, hub_addr, HUB).await?;
            rogue.hello(name, &origin, Vec::new()).await?;
            rogue.send_control(&garbage).await?;
            let closed = rogue.closed().await;
            rogue.shutdown().await;
            anyhow::Ok(closed)
        })
    };
    let refused = || {
        rt.block_on(async {
            match Rogue::connect(&bundle, hub_addr, HUB).await {
                Ok(rogue) => {
                    let closed = rogue.closed().await;
                    rogue.shutdown().await;
                    format!("{closed:?}")
                }
                Err(e) => e.to_string(),
            }
        })
    };
    // Strike 1: closed for bad input, then refused for about 1 s.
    let first = offend().expect("first offence gets a session");
    assert_eq!(first.code, Some(u64::from(ErrorCode::Malformed.as_u32())));
    let t1 = Instant::now();
    let answer = refused();
    assert!(
        answer.contains("backoff") || answer.contains("bad input"),
        "{answer}"
    );
    // After the first refusal ends it may connect again: strike 2 refuses for about 2 s.
    thread::sleep(Duration::from_millis(1100).saturating_sub(t1.elapsed()));
    let second = offend().expect("accepted again after the first backoff");
    assert_eq!(second.code, Some(u64::from(ErrorCode::Malformed.as_u32())));
    let t2 = Instant::now();
    thread::sleep(Duration::from_millis(1200));
    let answer = refused();
    assert!(
        answer.contains("backoff") || answer.contains("bad input"),
        "still refused 1.2 s into a 2 s backoff: {answer}"
    );
    thread::sleep(Duration::from_millis(2100).saturating_sub(t2.elapsed()));
    let third = offend().expect("accepted again after the second backoff");
    assert_eq!(third.code, Some(u64::from(ErrorCode::Malformed.as_u32())));
    let s = hub.status();
    let p = peer_entry(&s, name).expect("listed");
    assert_eq!(p["bad_input"].as_u64(), Some(3), "{p}");
    assert!(hub
        .log()
        .contains("refused connection from peer in backoff"));
}

fn fill(rng: &mut TestRng, buf: &mut [u8]) {
    for chunk in buf.chunks_mut(8) {
        let bytes = rng.next_u64().to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
}

/// CPU time a process has used (user + system), in seconds (assuming 100 clock ticks a second,
/// as on every Linux this runs on).
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at field 3.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the command.
    (ticks(11) + ticks(12)) as f64 / 100.0
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[test]
fn garbage_and_connection_floods_leave_replication_running() {
    let cluster = Cluster::new();
    let (hub, hefei, beijing, hub_addr) = star(&cluster);
    let pid = hub.pid().expect("running");
    let rss_before = rss_kib(pid);
    let cpu_before = cpu_secs(pid);
    let mut rng = TestRng::new(officesync_tests::test_seed("flood"));
    let seed = rng.next_u64();

    // 200k random datagrams over about 10 s; a third look like QUIC Initial packets.
    let flood = thread::spawn(move || {
        let mut rng = TestRng::new(seed);
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let start = Instant::now();
        let mut buf = [0u8; 1400];
        let mut sent = 0u64;
        for i in 0..200_000u64 {
            let len = 1 + (rng.next_u64() % 1400) as usize;
            fill(&mut rng, &mut buf[..len]);
            if i % 3 == 0 && len > 6 {
                buf[0] = 0xc0 | (buf[0] & 0x0f);
                buf[1..5].copy_from_slice(&1u32.to_be_bytes());
            }
            if socket.send_to(&buf[..len], hub_addr).is_ok() {
                sent += 1;
            }
            // Pace to about 20k datagrams a second.
            let due = Duration::from_micros(i * 50);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                thread::sleep(wait);
            }
            if start.elapsed() > Duration::from_secs(20) {
                break;
            }
        }
        (sent, start.elapsed())
    });
    for i in 0..30 {
        hefei.put("situation", &format!("hefei/flood-{i}"), b"x");
        thread::sleep(Duration::from_millis(200));
    }
    let (sent, took) = flood.join().expect("flood thread");
    wait_for("writes made during the flood at beijing", TIMEOUT, || {
        // A request that fails under the load is just tried again.
        match beijing.api().try_get("situation", "hefei/flood-29") {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err("not yet".to_owned()),
            Err(e) => Err(format!("{e:#}")),
        }
    });
    let rss_datagrams = rss_kib(pid);
    let cpu_datagrams = cpu_secs(pid) - cpu_before;

    // Connection flood: 150 handshakes with a foreign CA's certificate from one host and 40
    // with valid certificates that never open a stream, all at once, from 10 other hosts
    // (the daemon admits a few handshakes per address at a time, so the flood cannot lock
    // the others out).
    let foreign = Cluster::new();
    let foreign_bundle = foreign.issue("intruder", false);
    let valid_bundle = cluster.issue("idle-office", false);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (valid_held, foreign_held, refused) = rt.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..190 {
            let valid = i % 5 == 0;
            let bundle = if valid {
                valid_bundle.clone()
            } else {
                foreign_bundle.clone()
            };
            let from = if valid {
                std::net::Ipv4Addr::new(127, 0, 0, 2 + (i / 5 % 10) as u8).into()
            } else {
                std::net::Ipv4Addr::LOCALHOST.into()
            };
            tasks.spawn(async move {
                match Rogue::connect_from(&bundle, hub_addr, HUB, from).await {
                    Ok(rogue) => {
                        tokio::time::sleep(Duration::from_secs(2)).await;
                        rogue.shutdown().await;
                        (valid, true)
                    }
                    Err(_) => (valid, false),
                }
            });
        }
        let (mut valid_held, mut foreign_held, mut refused) = (0, 0, 0);
        while let Some(r) = tasks.join_next().await {
            match r.expect("connect task") {
                (true, true) => valid_held += 1,
                (false, true) => foreign_held += 1,
                (_, false) => refused += 1,
            }
        }
        (valid_held, foreign_held, refused)
    });
    hefei.put("situation", "hefei/after-floods", b"x");
    assert_converged(&[&hub, &hefei, &beijing], TIMEOUT);
    let rss_after = rss_kib(pid);
    eprintln!(
        "flood: {sent} datagrams in {took:?}; connections: {valid_held} valid held, {foreign_held} foreign held, {refused} refused; hub RSS {rss_before} KiB before, {rss_datagrams} KiB after the datagrams ({cpu_datagrams:.1} s of hub CPU meanwhile, replication included), {rss_after} KiB after the connections"
    );
    assert_eq!(foreign_held, 0, "a foreign certificate got a connection");
    assert!(valid_held >= 1, "no valid connection got through the flood");
    assert!(
        rss_after < rss_before + 256 * 1024,
        "hub RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
}

#[test]
fn one_peer_cannot_hold_more_than_a_few_connections() {
    let cluster = Cluster::new();
    let hub_cfg = hub_config(&cluster);
    let hub = cluster.start(&hub_cfg);
    let bundle = cluster.issue("greedy", false);
    let rt = runtime();
    let (held, refused) = rt.block_on(async {
        let mut held = Vec::new();
        let mut refused = Vec::new();
        for _ in 0..6 {
            match Rogue::connect(&bundle, hub_cfg.sync_listen, HUB).await {
                Ok(rogue) => held.push(rogue),
                Err(e) => refused.push(e.to_string()),
            }
        }
        let counts = (held.len(), refused.clone());
        for rogue in held {
            rogue.shutdown().await;
        }
        counts
    });
    assert_eq!(held, 4, "refusals: {refused:?}");
    assert_eq!(refused.len(), 2);
    assert!(
        refused.iter().all(|e| e.contains("too many connections")),
        "{refused:?}"
    );
    assert!(hub.log().contains("too many from this peer"));
}

#[test]
fn stream_floods_are_bounded_by_flow_control() {
    let cluster = Cluster::new();
    let hub_cfg = hub_config(&cluster);
    let hub = cluster.start(&hub_cfg);
    let pid = hub.pid().expect("running");
    let rss_before = rss_kib(pid);
    let bundle = cluster.issue("streamer", false);
    let origin = ReplicaId::new("streamer", 1).expect("valid");
    let rt = runtime();
    let (opened, written) = rt.block_on(async {
        let mut rogue = Rogue::connect(&bundle, hub_cfg.sync_listen, HUB)
            .await
            .expect("handshake");
        rogue
            .hello("streamer", &origin, Vec::new())
            .await
            .expect("session");
        // Try to open 20 unidirectional streams; only the peer's allowance opens.
        let mut streams = Vec::new();
        for _ in 0..20 {
            match tokio::time::timeout(Duration::from_millis(300), rogue.connection.open_uni())
                .await
            {
                Ok(Ok(s)) => streams.push(s),
                _ => break,
            }
        }
        // Then try to push 64 MiB into them (never a complete frame: the first two are the
        // bulk and urgent streams the hub reads, each waiting for the rest of a 8 MiB frame).
        let chunk = vec![0u8; 1 << 20];
        let mut written = 0usize;
        let header = {
            let mut h = (8u32 << 20).to_be_bytes().to_vec();
            h.push(0);
            h
        };
        for s in &mut streams {
            let _ = s.write_all(&header).await;
        }
        'outer: for _ in 0..16 {
            for s in &mut streams {
                match tokio::time::timeout(Duration::from_millis(500), s.write_all(&chunk)).await {
                    Ok(Ok(())) => written += chunk.len(),
                    _ => break 'outer,
                }
            }
        }
        let opened = streams.len();
        rogue.shutdown().await;
        (opened, written)
    });
    let rss_after = rss_kib(pid);
    eprintln!(
        "stream flood: {opened} streams opened, {} MiB accepted; hub RSS {rss_before} KiB before, {rss_after} KiB after",
        written >> 20
    );
    assert!(opened <= 4, "{opened} concurrent streams opened");
    // The connection window (16 MiB) plus the frame each of its two data streams is reading
    // (8 MiB each), whose bytes the hub has taken off the streams and so credited back.
    assert!(
        written <= (32 << 20) + (1 << 20),
        "{written} bytes accepted beyond the connection window and two frames"
    );
    assert!(
        rss_after < rss_before + 128 * 1024,
        "hub RSS grew to {rss_after} KiB"
    );
    let health = hub.api().request("GET", "/health", None).expect("health");
    assert_eq!(health.status, 200);
}
