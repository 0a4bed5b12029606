//! A UDP fault proxy for one link between two nodes: delay and jitter, loss, duplication,
//! reordering and (one-way) cuts, every random choice drawn from a seed. `tc netem` is not
//! available on the test machines; this is how tests make a WAN link bad.
//!
//! Put it in front of the node that is dialled: the dialling node's `peers` entry names
//! [`FaultProxy::listen_addr`] instead of the real `sync.listen` address.
//!
//! ```no_run
//! use std::time::Duration;
//! use officesync_tests::fault_proxy::{Direction, FaultProxy};
//! # let hub_sync_addr: std::net::SocketAddr = "127.0.0.1:7400".parse().expect("addr");
//! let proxy = FaultProxy::start(hub_sync_addr, 42);
//! // ... configure the spoke to dial proxy.listen_addr() ...
//! proxy.set_delay(Duration::from_millis(80), Duration::from_millis(20));
//! proxy.set_loss(0.05);
//! proxy.cut(Direction::FromUpstream); // the spoke still sends, but hears nothing back
//! proxy.heal();
//! assert!(proxy.counters(Direction::Both).forwarded > 0);
//! ```
//!
//! **Clients.** Any number of clients (source addresses) may send to the listen address.
//! Each gets its own upstream socket on loopback, so the upstream sees one peer address per
//! client and its replies go back to the client that caused them. Only the client side
//! initiates: the upstream can only answer.
//!
//! **Threading.** [`FaultProxy::start`] binds the listen socket on the caller's thread and
//! spawns one OS thread running a tokio current-thread runtime: one task reads the listen
//! socket, one task per client reads that client's upstream socket, and one scheduler task
//! decides the fate of each datagram (a sans-IO core, see `decide.rs`), holds it for its
//! delay and sends it. Control calls lock a small shared state that the scheduler reads for
//! every datagram, so a change applies to the next datagram (and a cut also to datagrams
//! already delayed inside the proxy). [`FaultProxy::stop`] and `Drop` signal the scheduler,
//! which returns at once; the runtime, its tasks and sockets are dropped and the thread is
//! joined. Datagrams still delayed are discarded.
//!
//! **Determinism.** Each direction draws from its own stream derived from the seed, a fixed
//! number of draws per datagram, so the fate of the k-th datagram in a direction depends
//! only on the seed, k and the faults in force — not on timing or the other direction.
//!
//! **Bounds.** Datagrams up to 64 KiB; at most [`MAX_CLIENTS`] clients; at most
//! [`QUEUE_LIMIT`] datagrams delayed at once (more are dropped, as netem's `limit` does).
//! The proxy only ever binds loopback addresses and only forwards to a loopback upstream.

mod decide;
mod engine;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use tokio::sync::oneshot;

pub use decide::{LinkFaults, REORDER_HOLD};

use decide::Link;

/// At most this many client addresses are served; datagrams from more are dropped.
pub const MAX_CLIENTS: usize = 64;

/// At most this many datagrams wait inside the proxy (delayed or held); more are dropped.
pub const QUEUE_LIMIT: usize = 10_000;

/// Which way along the link a fault or a counter applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Both ways.
    Both,
    /// From the clients to the upstream.
    ToUpstream,
    /// From the upstream back to the clients.
    FromUpstream,
}

impl Direction {
    fn links(self) -> &'static [Link] {
        match self {
            Direction::Both => &Link::ALL,
            Direction::ToUpstream => &[Link::ToUpstream],
            Direction::FromUpstream => &[Link::FromUpstream],
        }
    }
}

/// One value for each direction.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PerDirection<T> {
    /// From the clients to the upstream.
    pub to_upstream: T,
    /// From the upstream back to the clients.
    pub from_upstream: T,
}

/// What one direction of the proxy did with its datagrams, since start.
///
/// Once nothing is waiting inside the proxy,
/// `received + duplicated == forwarded + dropped`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LinkCounters {
    /// Datagrams that arrived at the proxy.
    pub received: u64,
    /// Their bytes.
    pub received_bytes: u64,
    /// Datagrams sent on, copies included.
    pub forwarded: u64,
    /// Their bytes.
    pub forwarded_bytes: u64,
    /// Datagrams dropped for any reason (cut, loss, a full queue, too many clients, a failed
    /// send).
    pub dropped: u64,
    /// Their bytes.
    pub dropped_bytes: u64,
    /// Of `dropped`: because the direction was cut (on arrival or while delayed).
    pub cut: u64,
    /// Of `dropped`: picked by the random loss.
    pub lost: u64,
    /// Extra copies made by duplication.
    pub duplicated: u64,
    /// Datagrams held back so that a later one overtakes them.
    pub reordered: u64,
}

impl LinkCounters {
    fn add(self, other: Self) -> Self {
        Self {
            received: self.received + other.received,
            received_bytes: self.received_bytes + other.received_bytes,
            forwarded: self.forwarded + other.forwarded,
            forwarded_bytes: self.forwarded_bytes + other.forwarded_bytes,
            dropped: self.dropped + other.dropped,
            dropped_bytes: self.dropped_bytes + other.dropped_bytes,
            cut: self.cut + other.cut,
            lost: self.lost + other.lost,
            duplicated: self.duplicated + other.duplicated,
            reordered: self.reordered + other.reordered,
        }
    }

    fn count_drop(&mut self, bytes: usize) {
        self.dropped += 1;
        self.dropped_bytes += bytes as u64;
    }
}

/// State shared between the handle and the proxy thread.
#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
}

impl Shared {
    /// The state; a panic elsewhere while holding the lock leaves plain numbers behind, so a
    /// poisoned lock is still usable.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Faults in force and counters, indexed by [`Link::index`].
#[derive(Debug, Default)]
struct State {
    faults: [LinkFaults; 2],
    counters: [LinkCounters; 2],
    clients: usize,
}

/// A running UDP fault proxy; see the [module docs](self). All methods take `&self` and may
/// be called from any thread. Dropping it stops the proxy.
#[derive(Debug)]
pub struct FaultProxy {
    listen: SocketAddr,
    upstream: SocketAddr,
    seed: u64,
    shared: Arc<Shared>,
    stop: Mutex<Option<oneshot::Sender<()>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl FaultProxy {
    /// Starts a proxy listening on a fresh loopback port (same address family as
    /// `upstream`) and forwarding to `upstream`, with a clean link.
    ///
    /// Panics if `upstream` is not a loopback address or a socket cannot be set up.
    pub fn start(upstream: SocketAddr, seed: u64) -> Self {
        let ip = match upstream.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        };
        Self::start_on(SocketAddr::new(ip, 0), upstream, seed)
    }

    /// Like [`FaultProxy::start`], listening on `listen` (a loopback address; port 0 picks
    /// one). Useful to bring a proxy back on the port a node is configured to dial.
    pub fn start_on(listen: SocketAddr, upstream: SocketAddr, seed: u64) -> Self {
        assert!(
            upstream.ip().is_loopback(),
            "fault proxy upstream {upstream} is not a loopback address"
        );
        assert!(
            listen.ip().is_loopback(),
            "fault proxy listen address {listen} is not a loopback address"
        );
        let socket = UdpSocket::bind(listen)
            .unwrap_or_else(|e| panic!("fault proxy cannot bind {listen}: {e}"));
        socket
            .set_nonblocking(true)
            .expect("a fresh UDP socket can be made nonblocking for tokio");
        let listen = socket
            .local_addr()
            .expect("a bound UDP socket has a local address");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio current-thread runtime can be built for the fault proxy");
        let shared = Arc::new(Shared::default());
        let (stop_tx, stop_rx) = oneshot::channel();
        let engine = engine::Engine {
            runtime,
            listen: socket,
            upstream,
            seed,
            shared: Arc::clone(&shared),
            stop: stop_rx,
        };
        let thread = thread::Builder::new()
            .name(format!("fault-proxy-{}", listen.port()))
            .spawn(move || engine.run())
            .expect("the OS lets us spawn the fault proxy thread");
        Self {
            listen,
            upstream,
            seed,
            shared,
            stop: Mutex::new(Some(stop_tx)),
            thread: Mutex::new(Some(thread)),
        }
    }

    /// The loopback address clients send to.
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
    }

    /// Where datagrams are forwarded.
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// The seed all random decisions come from.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Cuts the link in `direction`: datagrams are dropped silently until [`FaultProxy::heal`].
    /// Cutting one direction leaves the other as it was.
    pub fn cut(&self, direction: Direction) {
        self.update(direction, |f| f.cut = true);
    }

    /// Ends every cut, both directions; other faults stay.
    pub fn heal(&self) {
        self.heal_on(Direction::Both);
    }

    /// Ends the cut in `direction` only.
    pub fn heal_on(&self, direction: Direction) {
        self.update(direction, |f| f.cut = false);
    }

    /// Removes every fault, cuts included, both directions.
    pub fn clear(&self) {
        self.update(Direction::Both, |f| *f = LinkFaults::CLEAN);
    }

    /// Delays every datagram, both directions, by `base` plus a uniform `0..=jitter`.
    pub fn set_delay(&self, base: Duration, jitter: Duration) {
        self.set_delay_on(Direction::Both, base, jitter);
    }

    /// [`FaultProxy::set_delay`] for `direction` only.
    pub fn set_delay_on(&self, direction: Direction, base: Duration, jitter: Duration) {
        self.update(direction, |f| {
            f.delay = base;
            f.jitter = jitter;
        });
    }

    /// Drops each datagram, both directions, with probability `p` (0..=1).
    pub fn set_loss(&self, p: f64) {
        self.set_loss_on(Direction::Both, p);
    }

    /// [`FaultProxy::set_loss`] for `direction` only.
    pub fn set_loss_on(&self, direction: Direction, p: f64) {
        let p = probability("loss", p);
        self.update(direction, |f| f.loss = p);
    }

    /// Sends each datagram, both directions, twice with probability `p` (0..=1).
    pub fn set_duplicate(&self, p: f64) {
        self.set_duplicate_on(Direction::Both, p);
    }

    /// [`FaultProxy::set_duplicate`] for `direction` only.
    pub fn set_duplicate_on(&self, direction: Direction, p: f64) {
        let p = probability("duplicate", p);
        self.update(direction, |f| f.duplicate = p);
    }

    /// Holds each datagram, both directions, back with probability `p` (0..=1) until the
    /// next one has gone out, or for at most [`REORDER_HOLD`] more.
    pub fn set_reorder(&self, p: f64) {
        self.set_reorder_on(Direction::Both, p);
    }

    /// [`FaultProxy::set_reorder`] for `direction` only.
    pub fn set_reorder_on(&self, direction: Direction, p: f64) {
        let p = probability("reorder", p);
        self.update(direction, |f| f.reorder = p);
    }

    /// Replaces all faults of `direction` with `faults`.
    pub fn set_faults(&self, direction: Direction, faults: LinkFaults) {
        for p in [faults.loss, faults.duplicate, faults.reorder] {
            probability("fault", p);
        }
        self.update(direction, |f| *f = faults);
    }

    /// The faults in force.
    pub fn faults(&self) -> PerDirection<LinkFaults> {
        let state = self.shared.lock();
        PerDirection {
            to_upstream: state.faults[Link::ToUpstream.index()],
            from_upstream: state.faults[Link::FromUpstream.index()],
        }
    }

    /// Counters of both directions.
    pub fn stats(&self) -> PerDirection<LinkCounters> {
        let state = self.shared.lock();
        PerDirection {
            to_upstream: state.counters[Link::ToUpstream.index()],
            from_upstream: state.counters[Link::FromUpstream.index()],
        }
    }

    /// Counters of `direction`; [`Direction::Both`] sums the two.
    pub fn counters(&self, direction: Direction) -> LinkCounters {
        let state = self.shared.lock();
        direction
            .links()
            .iter()
            .map(|link| state.counters[link.index()])
            .fold(LinkCounters::default(), LinkCounters::add)
    }

    /// How many client addresses the proxy has seen.
    pub fn clients(&self) -> usize {
        self.shared.lock().clients
    }

    /// Stops the proxy and joins its thread (promptly: the thread only waits on its sockets,
    /// its timers and the stop signal). Idempotent; counters stay readable.
    ///
    /// Panics if the proxy thread panicked.
    pub fn stop(&self) {
        if let Some(stop) = self.stop.lock().unwrap_or_else(|p| p.into_inner()).take() {
            // The thread may be gone already; then there is nothing to tell.
            let _ = stop.send(());
        }
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(thread) = thread {
            if thread.join().is_err() && !thread::panicking() {
                panic!("fault proxy thread for {} panicked", self.listen);
            }
        }
    }

    fn update(&self, direction: Direction, change: impl Fn(&mut LinkFaults)) {
        let mut state = self.shared.lock();
        for link in direction.links() {
            change(&mut state.faults[link.index()]);
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `p`, after checking that it is a probability.
fn probability(what: &str, p: f64) -> f64 {
    assert!(
        (0.0..=1.0).contains(&p),
        "{what} probability {p} is not within 0..=1"
    );
    p
}
