//! Handshakes as an attack: floods of connection attempts that never authenticate (spoofed
//! Initials posing as an office's address, and TLS handshakes stalled at the client
//! certificate from a few hosts) do not lock an office out of the hub, are refused and
//! counted, and leave the hub's memory bounded; and a session does not outlive the peer's
//! certificate.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use officesync_daemon::pki::{self, IssueOptions};
use officesync_protocol::wire::ErrorCode;
use officesync_protocol::ReplicaId;
use officesync_tests::rogue::{self, Rogue};
use officesync_tests::Cluster;
use serde_json::Value;

use crate::common::{hub_config, is_connected, wait_for, HUB};
use crate::shared::{runtime, Scene};

/// An office that lost its link must be back within this while a flood goes on.
const RECONNECT_WITHIN: Duration = Duration::from_secs(15);

/// Longest any flood runs, whatever happens to the test.
const FLOOD_MAX: Duration = Duration::from_secs(120);

/// The hub's resident memory must stay below this through the floods.
const RSS_BOUND_MIB: f64 = 200.0;

/// Spoofed Initials sent per second, posing as the office's own address.
const SPOOF_PACE: Duration = Duration::from_millis(100);

/// Spoofed Initials sent before the office loses its link: four seconds' worth, more than a
/// handshake that never continues could hold a slot.
const SPOOF_BEFORE_RESTART: u64 = 40;

/// Distinct Initials captured for the spoofed flood (reused in turn once all are sent).
const SPOOFED_INITIALS: usize = 200;

/// Hosts (loopback addresses other than the offices' 127.0.0.1) stalling handshakes.
const STALLING_HOSTS: u8 = 4;

/// Stalling connections kept going per host: three times what the hub lets one address hold,
/// and together more than the hub's whole table of handshakes in progress.
const STALLING_PER_HOST: usize = 12;

/// Pause of a stalling client after the hub refused it.
const STALL_PAUSE: Duration = Duration::from_millis(500);

#[test]
fn handshake_floods_do_not_lock_out_an_office() {
    let mut scene = Scene::start();
    let rss_before = scene.hub_rss_mib("before the handshake floods");
    let hub_addr = scene.hub_addr;

    // 1. Anyone who can send UDP: Initials that never continue, from the office's own address
    //    (127.0.0.1), as a host spoofing that address would send them.
    let initials = runtime()
        .block_on(rogue::capture_initials(
            &scene.rogue_bundle,
            HUB,
            SPOOFED_INITIALS,
        ))
        .expect("capture Initials");
    let before = transport_stats(&scene);
    let spoof = Flood::spoofed(initials, Ipv4Addr::LOCALHOST.into(), hub_addr);
    // Under way for longer than a stalled handshake could hold a slot before the office
    // loses its link.
    wait_for(
        "the spoofed flood to be under way",
        FLOOD_MAX,
        || match spoof.count() {
            n if n >= SPOOF_BEFORE_RESTART => Ok(()),
            n => Err(format!("{n} Initials sent")),
        },
    );
    let reconnect_spoofed = restart_and_time_reconnect(&scene, "spoofed Initials");
    scene.assert_intact("handshake-flood-spoofed");
    let sent = spoof.stop();
    let after = transport_stats(&scene);
    let retries = delta(&before, &after, "retries_sent");
    eprintln!(
        "spoofed flood: {sent} Initials sent, {retries} Retries sent by the hub, hefei back in {reconnect_spoofed:?}; transport {after}"
    );
    // Every spoofed Initial got a stateless Retry, not a handshake slot.
    assert!(
        sent > 0 && retries >= sent / 2,
        "{sent} sent, {retries} Retries"
    );
    assert_eq!(delta(&before, &after, "handshakes_timed_out"), 0, "{after}");

    // 2. A few hosts that answer the Retry, then stall every handshake at the client
    //    certificate (their second flight never leaves), redialing as soon as the hub drops
    //    them, with more connections than the hub's whole table.
    let before = transport_stats(&scene);
    let stall = Flood::stalled(&scene.rogue_bundle, hub_addr);
    // Under way: stalled handshakes have ended (dropped by the hub, or given up by a host)
    // and been replaced.
    let steady = wait_for("the stalled flood to be under way", FLOOD_MAX, || {
        let now = transport_stats(&scene);
        match delta(&before, &now, "handshakes_failed") {
            0 => Err(format!("no handshake ended yet: {now}")),
            _ => Ok(()),
        }
    });
    eprintln!("stalled flood: under way after {steady:?}");
    let reconnect_stalled = restart_and_time_reconnect(&scene, "stalled handshakes");
    scene.assert_intact("handshake-flood-stalled");
    let attempts = stall.stop();
    let after = transport_stats(&scene);
    let refused_per_address = delta(&before, &after, "handshakes_refused_per_address");
    let refused_busy = delta(&before, &after, "handshakes_refused_busy");
    let timed_out = delta(&before, &after, "handshakes_timed_out");
    eprintln!(
        "stalled flood: {attempts} attempts; refused per address {refused_per_address}, refused with the table full {refused_busy}, dropped unauthenticated {timed_out}; hefei back in {reconnect_stalled:?}; transport {after}"
    );
    assert!(refused_per_address > 0, "{after}");
    assert!(timed_out > 0, "{after}");
    assert_eq!(refused_busy, 0, "the table never filled up: {after}");

    let rss_after = scene.hub_rss_mib("after the handshake floods");
    assert!(
        rss_before < RSS_BOUND_MIB && rss_after < RSS_BOUND_MIB,
        "hub RSS {rss_before:.1} MiB before, {rss_after:.1} MiB after; bound {RSS_BOUND_MIB} MiB"
    );
}

#[test]
fn a_certificate_that_expires_mid_session_loses_its_session() {
    let cluster = Cluster::new();
    let hub_cfg = hub_config(&cluster);
    let hub = cluster.start(&hub_cfg);
    let now = pki::unix_now();
    let not_after = now + 8;
    let bundle: PathBuf = cluster.dir().join("bundles").join("expiring-office");
    pki::issue_with_validity(
        "expiring-office",
        cluster.ca_dir(),
        &bundle,
        &IssueOptions::default(),
        (now - 60, not_after),
    )
    .expect("issue a certificate valid for seconds");
    let rt = runtime();
    let closed = rt.block_on(async {
        let mut rogue = Rogue::connect(&bundle, hub_cfg.sync_listen, HUB)
            .await
            .expect("a valid certificate connects");
        let origin = ReplicaId::new("expiring-office", 1).expect("replica id");
        rogue
            .hello("expiring-office", &origin, Vec::new())
            .await
            .expect("a valid certificate gets a session");
        assert!(
            pki::unix_now() <= not_after,
            "the session must start before the certificate expires"
        );
        let bound = Duration::from_secs(30);
        let reason = tokio::time::timeout(bound, rogue.connection.closed())
            .await
            .unwrap_or_else(|_| panic!("session still open {bound:?} after it started"));
        let at = pki::unix_now();
        rogue.shutdown().await;
        (reason, at)
    });
    let (reason, closed_at) = closed;
    eprintln!("expiring certificate: notAfter {not_after}, closed at {closed_at}: {reason}");
    match &reason {
        quinn::ConnectionError::ApplicationClosed(close) => {
            assert_eq!(
                close.error_code.into_inner(),
                u64::from(ErrorCode::NotAuthorized.as_u32()),
                "{reason}"
            );
            assert_eq!(&close.reason[..], b"peer certificate expired", "{reason}");
        }
        other => panic!("expected the hub to close the session, got {other}"),
    }
    assert!(
        closed_at > not_after,
        "closed at {closed_at}, before the certificate expired ({not_after})"
    );
    let stats = &hub.status()["transport"];
    assert_eq!(stats["certificates_expired"], 1, "{stats}");
    // And it cannot come back with it.
    let again = rt.block_on(Rogue::connect(&bundle, hub_cfg.sync_listen, HUB));
    assert!(again.is_err(), "an expired certificate connected again");
}

/// Restarts hefei (it loses its link) and returns how long the restarted daemon took to be
/// connected to the hub again, both ways; panics after [`RECONNECT_WITHIN`].
fn restart_and_time_reconnect(scene: &Scene, during: &str) -> Duration {
    scene.hefei.restart();
    let took = wait_for(
        &format!("hefei to reconnect during a flood of {during}"),
        RECONNECT_WITHIN,
        || {
            if is_connected(&scene.hefei, HUB) && is_connected(&scene.hub, "hefei") {
                Ok(())
            } else {
                Err(format!("hub transport {}", transport_stats(scene)))
            }
        },
    );
    eprintln!("hefei reconnected {took:?} after its restart, during a flood of {during}");
    took
}

/// The hub's `transport` counters from `GET /v1/status`.
fn transport_stats(scene: &Scene) -> Value {
    scene.hub.status()["transport"].clone()
}

/// How much counter `name` grew from `before` to `after`.
fn delta(before: &Value, after: &Value, name: &str) -> u64 {
    let count = |v: &Value| {
        v[name]
            .as_u64()
            .unwrap_or_else(|| panic!("no counter {name} in {v}"))
    };
    count(after).saturating_sub(count(before))
}

/// A flood running on a background thread until [`Flood::stop`] or [`FLOOD_MAX`].
struct Flood {
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
    thread: JoinHandle<()>,
}

impl Flood {
    /// Runs `flood(stop, count)` on a thread of its own.
    fn spawn(flood: impl FnOnce(Arc<AtomicBool>, Arc<AtomicU64>) + Send + 'static) -> Flood {
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicU64::new(0));
        let (s, c) = (stop.clone(), count.clone());
        Flood {
            stop,
            count,
            thread: thread::spawn(move || flood(s, c)),
        }
    }

    /// Sends `initials` in turn, one per [`SPOOF_PACE`], from address `from` to `hub`, and
    /// never answers what comes back.
    fn spoofed(initials: Vec<Vec<u8>>, from: IpAddr, hub: SocketAddr) -> Flood {
        let socket = UdpSocket::bind(SocketAddr::new(from, 0)).expect("bind the spoofing socket");
        socket.set_nonblocking(true).expect("nonblocking socket");
        Flood::spawn(move |stop, count| {
            let started = Instant::now();
            let mut discard = [0u8; 2048];
            for initial in initials.iter().cycle() {
                if stop.load(Ordering::Relaxed) || started.elapsed() >= FLOOD_MAX {
                    break;
                }
                if socket.send_to(initial, hub).is_ok() {
                    count.fetch_add(1, Ordering::Relaxed);
                }
                // Read and drop the answers (Retries), so the socket's buffer never fills.
                while socket.recv_from(&mut discard).is_ok() {}
                thread::sleep(SPOOF_PACE);
            }
        })
    }

    /// [`STALLING_PER_HOST`] connections from each of [`STALLING_HOSTS`] addresses (127.0.0.2
    /// on), each redialing `hub` with a handshake that stalls at the client certificate
    /// ([`rogue::stalling_endpoint`]) as soon as the hub drops or refuses the last one.
    fn stalled(bundle: &Path, hub: SocketAddr) -> Flood {
        let bundle = bundle.to_owned();
        Flood::spawn(move |stop, count| {
            runtime().block_on(async {
                let mut endpoints = Vec::new();
                let mut clients = tokio::task::JoinSet::new();
                for host in 0..STALLING_HOSTS {
                    let from = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + host));
                    let endpoint =
                        rogue::stalling_endpoint(&bundle, from).expect("stalling endpoint");
                    for _ in 0..STALLING_PER_HOST {
                        let (endpoint, stop, count) =
                            (endpoint.clone(), stop.clone(), count.clone());
                        clients.spawn(stall_loop(endpoint, hub, stop, count));
                    }
                    endpoints.push(endpoint);
                }
                while let Some(done) = clients.join_next().await {
                    done.expect("stalling client");
                }
                for endpoint in endpoints {
                    endpoint.close(0u32.into(), b"flood over");
                }
            });
        })
    }

    /// Attempts (datagrams or connections) so far.
    fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Stops the flood, waits for its thread and returns how many attempts it made.
    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("flood thread");
        self.count.load(Ordering::Relaxed)
    }
}

/// One stalling client: dials `hub` on `endpoint` until `stop` or [`FLOOD_MAX`], counting
/// attempts; each attempt lasts until the hub drops it (or a bound passes).
async fn stall_loop(
    endpoint: quinn::Endpoint,
    hub: SocketAddr,
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
) {
    let started = Instant::now();
    while !stop.load(Ordering::Relaxed) && started.elapsed() < FLOOD_MAX {
        count.fetch_add(1, Ordering::Relaxed);
        let Ok(connecting) = endpoint.connect(hub, HUB) else {
            break;
        };
        match tokio::time::timeout(Duration::from_secs(10), connecting).await {
            // The client thinks it is done; the hub waits for a certificate that never comes.
            Ok(Ok(connection)) => {
                let _ = tokio::time::timeout(Duration::from_secs(15), connection.closed()).await;
            }
            // Refused, or dropped before the client got that far.
            _ => tokio::time::sleep(STALL_PAUSE).await,
        }
    }
}
