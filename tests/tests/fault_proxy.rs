//! The UDP fault proxy between a plain UDP client and a UDP echo server on 127.0.0.1.
//!
//! Timing assertions are lower bounds with generous upper bounds: machines are noisy.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use officesync_tests::fault_proxy::{Direction, FaultProxy, LinkFaults};
use officesync_tests::{test_seed, wait_until, TestRng};

/// How long a socket read waits before checking its loop condition again.
const READ_TICK: Duration = Duration::from_millis(10);
/// Silence after which "nothing more is coming" for undelayed traffic on loopback.
const QUIET: Duration = Duration::from_millis(300);
/// Generous bound for anything that should take milliseconds.
const SLOW: Duration = Duration::from_secs(3);

/// A UDP echo server on loopback that records the sequence numbers it sees.
struct Echo {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    received: Arc<AtomicU64>,
    seen: Arc<Mutex<Vec<u32>>>,
    thread: Option<JoinHandle<()>>,
}

impl Echo {
    fn start() -> Self {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind the echo server");
        socket
            .set_read_timeout(Some(READ_TICK))
            .expect("a read timeout on a UDP socket");
        let addr = socket.local_addr().expect("bound socket has an address");
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(AtomicU64::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let (stop, received, seen) = (stop.clone(), received.clone(), seen.clone());
            thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(60);
                let mut buf = vec![0; 65536];
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let Ok((len, from)) = socket.recv_from(&mut buf) else {
                        continue;
                    };
                    if let Some(seq) = seq_of(&buf[..len]) {
                        seen.lock().expect("echo lock not poisoned").push(seq);
                    }
                    received.fetch_add(1, Ordering::SeqCst);
                    let _ = socket.send_to(&buf[..len], from);
                }
            })
        };
        Self {
            addr,
            stop,
            received,
            seen,
            thread: Some(thread),
        }
    }

    fn received(&self) -> u64 {
        self.received.load(Ordering::SeqCst)
    }

    fn seen(&self) -> Vec<u32> {
        self.seen.lock().expect("echo lock not poisoned").clone()
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The sequence number at the start of a numbered datagram.
fn seq_of(datagram: &[u8]) -> Option<u32> {
    let bytes = datagram.get(..4)?.try_into().ok()?;
    Some(u32::from_be_bytes(bytes))
}

fn client() -> UdpSocket {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a client socket");
    socket
        .set_read_timeout(Some(READ_TICK))
        .expect("a read timeout on a UDP socket");
    socket
}

/// Sends `payload` to `to` and waits up to `timeout` for the same bytes to come back;
/// the round-trip time, or `None`.
fn roundtrip(
    socket: &UdpSocket,
    to: SocketAddr,
    payload: &[u8],
    timeout: Duration,
) -> Option<Duration> {
    let started = Instant::now();
    socket.send_to(payload, to).expect("send on loopback");
    let mut buf = vec![0; 65536];
    while started.elapsed() < timeout {
        if let Ok(len) = socket.recv(&mut buf) {
            if buf[..len] == *payload {
                return Some(started.elapsed());
            }
        }
    }
    None
}

/// Nothing arrives on `socket` for `wait`.
fn silent(socket: &UdpSocket, wait: Duration) -> bool {
    let started = Instant::now();
    let mut buf = vec![0; 65536];
    while started.elapsed() < wait {
        if socket.recv(&mut buf).is_ok() {
            return false;
        }
    }
    true
}

/// Sends datagrams numbered `0..count` to `to` from a fresh socket, ten at a time with a
/// 1 ms pause (identical pacing every run), while a thread collects the replies. Returns
/// the numbers of the replies in arrival order once `quiet` passed without one after the
/// last send.
fn exchange(to: SocketAddr, count: u32, quiet: Duration) -> Vec<u32> {
    let socket = client();
    let reader = socket.try_clone().expect("clone a UDP socket");
    let done = Arc::new(AtomicBool::new(false));
    let collector = {
        let done = done.clone();
        thread::spawn(move || {
            let started = Instant::now();
            let mut replies = Vec::new();
            let mut last = Instant::now();
            let mut done_at = None;
            let mut buf = vec![0; 2048];
            while started.elapsed() < Duration::from_secs(15) {
                match reader.recv(&mut buf) {
                    Ok(len) => {
                        replies.extend(seq_of(&buf[..len]));
                        last = Instant::now();
                    }
                    Err(_) if done.load(Ordering::SeqCst) => {
                        let since: Instant = *done_at.get_or_insert_with(Instant::now);
                        if since.max(last).elapsed() >= quiet {
                            break;
                        }
                    }
                    Err(_) => {}
                }
            }
            replies
        })
    };
    for seq in 0..count {
        let mut datagram = seq.to_be_bytes().to_vec();
        datagram.resize(32, 0xAB);
        socket.send_to(&datagram, to).expect("send on loopback");
        if seq % 10 == 9 {
            thread::sleep(Duration::from_millis(1));
        }
    }
    done.store(true, Ordering::SeqCst);
    collector.join().expect("collector thread")
}

#[test]
fn datagrams_pass_through_unchanged() {
    let seed = test_seed("datagrams_pass_through_unchanged");
    let echo = Echo::start();
    let proxy = FaultProxy::start(echo.addr, seed);
    assert_eq!(proxy.upstream(), echo.addr);
    assert!(proxy.listen_addr().ip().is_loopback());
    let socket = client();
    let mut rng = TestRng::new(seed);
    let sizes = [0, 1, 100, 1200, 1472, 9000, 60_000];
    for size in sizes {
        let payload: Vec<u8> = (0..size).map(|_| rng.next_u64() as u8).collect();
        assert!(
            roundtrip(&socket, proxy.listen_addr(), &payload, SLOW).is_some(),
            "{size}-byte datagram did not come back unchanged"
        );
    }
    let total: u64 = sizes.iter().map(|&s| s as u64).sum();
    let n = sizes.len() as u64;
    assert!(
        wait_until(SLOW, READ_TICK, || proxy.stats().from_upstream.forwarded
            == n),
        "{:?}",
        proxy.stats()
    );
    let stats = proxy.stats();
    for counters in [stats.to_upstream, stats.from_upstream] {
        assert_eq!((counters.received, counters.forwarded), (n, n));
        assert_eq!(
            (counters.received_bytes, counters.forwarded_bytes),
            (total, total)
        );
        assert_eq!(counters.dropped, 0);
    }
    assert_eq!(proxy.counters(Direction::Both).forwarded, 2 * n);
}

#[test]
fn several_clients_get_their_own_replies() {
    let echo = Echo::start();
    let proxy = FaultProxy::start(echo.addr, test_seed("several_clients"));
    let clients: Vec<UdpSocket> = (0..3).map(|_| client()).collect();
    for round in 0..5u8 {
        for (i, socket) in clients.iter().enumerate() {
            let payload = [b'c', i as u8, round];
            socket
                .send_to(&payload, proxy.listen_addr())
                .expect("send on loopback");
        }
        for (i, socket) in clients.iter().enumerate() {
            let mut buf = [0; 16];
            let deadline = Instant::now() + SLOW;
            let len = loop {
                assert!(Instant::now() < deadline, "client {i} got no reply");
                if let Ok(len) = socket.recv(&mut buf) {
                    break len;
                }
            };
            assert_eq!(buf[..len], [b'c', i as u8, round], "client {i}");
        }
    }
    assert_eq!(proxy.clients(), 3);
}

#[test]
fn cut_both_drops_everything_and_heal_restores() {
    let echo = Echo::start();
    let proxy = FaultProxy::start(echo.addr, test_seed("cut_both"));
    let socket = client();
    assert!(roundtrip(&socket, proxy.listen_addr(), b"before", SLOW).is_some());

    proxy.cut(Direction::Both);
    assert!(proxy.faults().to_upstream.cut && proxy.faults().from_upstream.cut);
    for i in 0..20u8 {
        socket
            .send_to(&[i], proxy.listen_addr())
            .expect("send on loopback");
    }
    assert!(silent(&socket, QUIET), "a cut link let a datagram through");
    assert_eq!(
        echo.received(),
        1,
        "only the datagram before the cut arrived"
    );
    let counters = proxy.stats().to_upstream;
    assert_eq!((counters.dropped, counters.cut), (20, 20));

    proxy.heal();
    assert!(roundtrip(&socket, proxy.listen_addr(), b"after", SLOW).is_some());

    // A cut also drops what is already delayed inside the proxy.
    proxy.set_delay(Duration::from_millis(200), Duration::ZERO);
    for i in 0..5u8 {
        socket
            .send_to(&[i], proxy.listen_addr())
            .expect("send on loopback");
    }
    assert!(wait_until(SLOW, Duration::from_millis(1), || {
        proxy.stats().to_upstream.received == 27
    }));
    proxy.cut(Direction::Both);
    assert!(silent(&socket, Duration::from_millis(500)));
    assert_eq!(proxy.stats().to_upstream.cut, 25);
    assert_eq!(echo.received(), 2);
}

#[test]
fn one_way_cut_drops_only_that_direction() {
    let echo = Echo::start();
    let proxy = FaultProxy::start(echo.addr, test_seed("one_way_cut"));
    let socket = client();

    proxy.cut(Direction::FromUpstream);
    for i in 0..20u8 {
        socket
            .send_to(&[i], proxy.listen_addr())
            .expect("send on loopback");
    }
    assert!(
        wait_until(SLOW, READ_TICK, || echo.received() == 20),
        "requests should still reach the upstream"
    );
    assert!(silent(&socket, QUIET), "replies should be cut");
    assert!(wait_until(SLOW, READ_TICK, || {
        proxy.stats().from_upstream.cut == 20
    }));
    assert_eq!(proxy.stats().to_upstream.forwarded, 20);

    proxy.heal();
    assert!(roundtrip(&socket, proxy.listen_addr(), b"healed", SLOW).is_some());

    proxy.cut(Direction::ToUpstream);
    for i in 0..20u8 {
        socket
            .send_to(&[i], proxy.listen_addr())
            .expect("send on loopback");
    }
    assert!(silent(&socket, QUIET));
    assert_eq!(echo.received(), 21, "requests should be cut");
    let stats = proxy.stats();
    assert_eq!(stats.to_upstream.cut, 20);
    assert_eq!(stats.from_upstream.forwarded, 1);

    proxy.heal_on(Direction::ToUpstream);
    assert!(roundtrip(&socket, proxy.listen_addr(), b"healed again", SLOW).is_some());
}

#[test]
fn loss_half_drops_roughly_half() {
    let echo = Echo::start();
    let proxy = FaultProxy::start(echo.addr, test_seed("loss_half"));
    proxy.set_loss_on(Direction::ToUpstream, 0.5);
    let replies = exchange(proxy.listen_addr(), 2000, QUIET);
    let delivered = echo.received();
    let dropped = 2000 - delivered;
    assert!(
        (600..=1400).contains(&dropped),
        "loss 0.5 dropped {dropped} of 2000"
    );
    assert_eq!(replies.len() as u64, delivered, "replies are not lossy");
    let stats = proxy.stats();
    assert_eq!(stats.to_upstream.lost, dropped);
    assert_eq!(
        stats.to_upstream.forwarded + stats.to_upstream.dropped,
        2000
    );
    assert_eq!(stats.from_upstream.dropped, 0);
}

#[test]
fn delay_adds_to_the_round_trip() {
    let echo = Echo::start();
    let proxy = FaultProxy::start(echo.addr, test_seed("delay"));
    let socket = client();
    let ms = Duration::from_millis;

    proxy.set_delay_on(Direction::ToUpstream, ms(50), ms(10));
    for i in 0..5u8 {
        let rtt = roundtrip(&socket, proxy.listen_addr(), &[1, i], SLOW).expect("reply");
        assert!(rtt >= ms(50), "one-way delay 50 ms, round trip {rtt:?}");
    }

    proxy.set_delay(ms(50), Duration::ZERO);
    assert_eq!(proxy.faults().from_upstream.delay, ms(50));
    for i in 0..5u8 {
        let rtt = roundtrip(&socket, proxy.listen_addr(), &[2, i], SLOW).expect("reply");
        assert!(rtt >= ms(100), "50 ms each way, round trip {rtt:?}");
    }

    proxy.clear();
    assert_eq!(proxy.faults().to_upstream, LinkFaults::CLEAN);
    assert!(roundtrip(&socket, proxy.listen_addr(), b"fast", SLOW).is_some());
}

#[test]
fn duplication_makes_extra_copies() {
    let echo = Echo::start();
    let proxy = FaultProxy::start(echo.addr, test_seed("duplication"));
    proxy.set_duplicate_on(Direction::ToUpstream, 0.25);
    let replies = exchange(proxy.listen_addr(), 400, QUIET);
    let duplicated = proxy.stats().to_upstream.duplicated;
    assert!(duplicated > 0, "duplicate 0.25 made no copy of 400");
    assert_eq!(echo.received(), 400 + duplicated);
    assert_eq!(replies.len() as u64, 400 + duplicated);
    let distinct: BTreeSet<u32> = replies.iter().copied().collect();
    assert_eq!(distinct, (0..400).collect(), "every datagram came back");
}

#[test]
fn reorder_changes_the_order() {
    let echo = Echo::start();
    let proxy = FaultProxy::start(echo.addr, test_seed("reorder"));
    proxy.set_reorder_on(Direction::ToUpstream, 0.1);
    let replies = exchange(proxy.listen_addr(), 500, QUIET);
    let seen = echo.seen();
    assert!(
        seen.windows(2).any(|w| w[0] > w[1]),
        "reorder 0.1 kept 500 datagrams in order"
    );
    assert!(proxy.stats().to_upstream.reordered > 0);
    let mut sorted = seen.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        (0..500).collect::<Vec<_>>(),
        "reordering loses nothing"
    );
    assert_eq!(replies.len(), 500);
}

/// The numbers that did not reach the upstream through a proxy seeded with `seed` and
/// loss 0.3 towards the upstream.
fn dropped_with_seed(seed: u64) -> BTreeSet<u32> {
    let echo = Echo::start();
    let proxy = FaultProxy::start(echo.addr, seed);
    proxy.set_loss_on(Direction::ToUpstream, 0.3);
    proxy.set_loss_on(Direction::FromUpstream, 0.3); // Draws from its own stream.
    exchange(proxy.listen_addr(), 300, QUIET);
    let seen: BTreeSet<u32> = echo.seen().into_iter().collect();
    let dropped: BTreeSet<u32> = (0..300).filter(|seq| !seen.contains(seq)).collect();
    assert_eq!(proxy.stats().to_upstream.lost, dropped.len() as u64);
    dropped
}

#[test]
fn same_seed_same_drops() {
    let seed = test_seed("same_seed_same_drops");
    let first = dropped_with_seed(seed);
    let second = dropped_with_seed(seed);
    assert!(!first.is_empty());
    assert_eq!(first, second, "seed {seed} dropped different datagrams");
    assert_ne!(
        first,
        dropped_with_seed(seed.wrapping_add(1)),
        "another seed should drop other datagrams"
    );
}

#[test]
fn stop_returns_promptly() {
    let echo = Echo::start();
    let proxy = FaultProxy::start(echo.addr, test_seed("stop"));
    let socket = client();
    assert!(roundtrip(&socket, proxy.listen_addr(), b"up", SLOW).is_some());
    // Datagrams waiting on a long delay must not hold the proxy up.
    proxy.set_delay(Duration::from_secs(10), Duration::ZERO);
    for i in 0..5u8 {
        socket
            .send_to(&[i], proxy.listen_addr())
            .expect("send on loopback");
    }
    assert!(wait_until(SLOW, Duration::from_millis(1), || {
        proxy.stats().to_upstream.received == 6
    }));
    let started = Instant::now();
    proxy.stop();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "stop took {:?}",
        started.elapsed()
    );
    proxy.stop(); // Idempotent.
    proxy.clear();
    assert!(roundtrip(&socket, proxy.listen_addr(), b"down", QUIET).is_none());
    assert_eq!(echo.received(), 1);

    let idle = FaultProxy::start(echo.addr, 1);
    let started = Instant::now();
    drop(idle);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "drop took {:?}",
        started.elapsed()
    );
}
