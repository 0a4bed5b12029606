//! The proxy thread: a tokio current-thread runtime with one task per socket reading
//! datagrams and one scheduler task that applies the faults and sends.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::runtime::Runtime;
use tokio::sync::{mpsc, oneshot};

use super::decide::{Decider, DropCause, Link, Schedule};
use super::{Shared, MAX_CLIENTS, QUEUE_LIMIT};

/// Largest datagram read; UDP payloads cannot be larger.
const MAX_DATAGRAM: usize = 64 * 1024;

/// Datagrams read but not yet seen by the scheduler; when full, the readers wait and the
/// kernel's socket buffers absorb (or drop) the rest, like a real congested link.
const ARRIVALS: usize = 1024;

/// Pause after a socket error before reading again, so a persistent error cannot spin.
const ERROR_PAUSE: Duration = Duration::from_millis(5);

/// Where a datagram goes: the socket it leaves from and its destination.
#[derive(Debug, Clone)]
struct Outbound {
    socket: Arc<UdpSocket>,
    dest: SocketAddr,
    bytes: Vec<u8>,
}

/// A datagram read by a socket task.
#[derive(Debug)]
struct Arrival {
    link: Link,
    out: Outbound,
}

/// Everything the proxy thread owns.
#[derive(Debug)]
pub(super) struct Engine {
    pub(super) runtime: Runtime,
    pub(super) listen: StdUdpSocket,
    pub(super) upstream: SocketAddr,
    pub(super) seed: u64,
    pub(super) shared: Arc<Shared>,
    pub(super) stop: oneshot::Receiver<()>,
}

impl Engine {
    /// Runs until the stop signal (or the handle is dropped); then drops every task and
    /// socket.
    pub(super) fn run(self) {
        let Engine {
            runtime,
            listen,
            upstream,
            seed,
            shared,
            stop,
        } = self;
        runtime.block_on(async move {
            let listen = Arc::new(
                UdpSocket::from_std(listen)
                    .expect("registering a socket with the runtime we are running in works"),
            );
            let (tx, rx) = mpsc::channel(ARRIVALS);
            tokio::spawn(read_clients(listen, upstream, Arc::clone(&shared), tx));
            schedule(seed, shared, rx, stop).await;
        });
        // Dropping the runtime here cancels the reader tasks and closes their sockets.
    }
}

/// Reads the listen socket; gives each new client its own upstream socket and reader.
async fn read_clients(
    listen: Arc<UdpSocket>,
    upstream: SocketAddr,
    shared: Arc<Shared>,
    tx: mpsc::Sender<Arrival>,
) {
    let mut clients: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut buf = vec![0; MAX_DATAGRAM];
    loop {
        let (len, client) = match listen.recv_from(&mut buf).await {
            Ok(read) => read,
            Err(_) => {
                tokio::time::sleep(ERROR_PAUSE).await;
                continue;
            }
        };
        let socket = match clients.get(&client) {
            Some(socket) => Arc::clone(socket),
            None => match client_socket(upstream, clients.len()) {
                Some(socket) => {
                    tokio::spawn(read_upstream(
                        Arc::clone(&socket),
                        upstream,
                        Arc::clone(&listen),
                        client,
                        tx.clone(),
                    ));
                    clients.insert(client, Arc::clone(&socket));
                    shared.lock().clients = clients.len();
                    socket
                }
                None => {
                    shared.lock().counters[Link::ToUpstream.index()].count_drop(len);
                    continue;
                }
            },
        };
        let out = Outbound {
            socket,
            dest: upstream,
            bytes: buf[..len].to_vec(),
        };
        let arrival = Arrival {
            link: Link::ToUpstream,
            out,
        };
        if tx.send(arrival).await.is_err() {
            return; // The scheduler has stopped.
        }
    }
}

/// A fresh loopback socket for a new client, unless there are too many clients already.
fn client_socket(upstream: SocketAddr, clients: usize) -> Option<Arc<UdpSocket>> {
    if clients >= MAX_CLIENTS {
        return None;
    }
    let loopback = SocketAddr::new(
        match upstream {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        },
        0,
    );
    let socket = StdUdpSocket::bind(loopback).ok()?;
    socket.set_nonblocking(true).ok()?;
    UdpSocket::from_std(socket).ok().map(Arc::new)
}

/// Reads one client's upstream socket; replies from the upstream go back to `client`.
async fn read_upstream(
    socket: Arc<UdpSocket>,
    upstream: SocketAddr,
    listen: Arc<UdpSocket>,
    client: SocketAddr,
    tx: mpsc::Sender<Arrival>,
) {
    let mut buf = vec![0; MAX_DATAGRAM];
    loop {
        let (len, from) = match socket.recv_from(&mut buf).await {
            Ok(read) => read,
            Err(_) => {
                tokio::time::sleep(ERROR_PAUSE).await;
                continue;
            }
        };
        if from != upstream {
            continue; // Only the upstream may answer through this socket.
        }
        let out = Outbound {
            socket: Arc::clone(&listen),
            dest: client,
            bytes: buf[..len].to_vec(),
        };
        let arrival = Arrival {
            link: Link::FromUpstream,
            out,
        };
        if tx.send(arrival).await.is_err() {
            return;
        }
    }
}

/// Decides each arrival's fate, holds it for its delay and sends it, until `stop` fires.
async fn schedule(
    seed: u64,
    shared: Arc<Shared>,
    mut arrivals: mpsc::Receiver<Arrival>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut deciders = Link::ALL.map(|link| Decider::for_link(seed, link));
    let mut schedule = Schedule::new();
    loop {
        // With nothing waiting, sleep until an arrival or the stop signal wakes us.
        let wake = schedule
            .poll_timeout()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            biased;
            _ = &mut stop => return,
            arrival = arrivals.recv() => match arrival {
                Some(arrival) => {
                    handle_arrival(&shared, &mut deciders, &mut schedule, arrival);
                }
                None => return,
            },
            () = tokio::time::sleep_until(wake.into()) => {}
        }
        // Bounded: only datagrams already scheduled and due now.
        while let Some((link, out)) = schedule.poll_due(Instant::now()) {
            send(&shared, link, out).await;
        }
    }
}

/// Counts an arrival, decides its fate and schedules it.
fn handle_arrival(
    shared: &Shared,
    deciders: &mut [Decider; 2],
    schedule: &mut Schedule<Outbound>,
    arrival: Arrival,
) {
    let Arrival { link, out } = arrival;
    let len = out.bytes.len();
    let mut state = shared.lock();
    let faults = state.faults[link.index()];
    let decision = deciders[link.index()].decide(&faults);
    let counters = &mut state.counters[link.index()];
    counters.received += 1;
    counters.received_bytes += len as u64;
    match decision.drop {
        Some(cause) => {
            counters.count_drop(len);
            match cause {
                DropCause::Cut => counters.cut += 1,
                DropCause::Loss => counters.lost += 1,
            }
        }
        None if schedule.len() >= QUEUE_LIMIT => counters.count_drop(len),
        None => {
            if decision.duplicate {
                counters.duplicated += 1;
            }
            if schedule.handle_datagram(Instant::now(), link, &decision, out) {
                counters.reordered += 1;
            }
        }
    }
}

/// Sends a due datagram, unless its direction has been cut meanwhile.
async fn send(shared: &Shared, link: Link, out: Outbound) {
    let len = out.bytes.len();
    {
        let mut state = shared.lock();
        if state.faults[link.index()].cut {
            let counters = &mut state.counters[link.index()];
            counters.count_drop(len);
            counters.cut += 1;
            return;
        }
    }
    let sent = out.socket.send_to(&out.bytes, out.dest).await;
    let mut state = shared.lock();
    let counters = &mut state.counters[link.index()];
    match sent {
        Ok(_) => {
            counters.forwarded += 1;
            counters.forwarded_bytes += len as u64;
        }
        Err(_) => counters.count_drop(len),
    }
}
