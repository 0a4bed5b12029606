//! The simulated world: nodes (replica + store queue), links between them carrying QUIC-like
//! connections (reliable, in order per stream, no order across streams), the event queue in
//! virtual time, and what the checks look at. The driver of the sessions is in `driver`, the
//! workload and faults in `faults`.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use officesync_protocol::sync::{Action, Session, StreamKind, VerifyOutcome};
use officesync_protocol::wire::Message;
use officesync_protocol::{Dot, ReplicaId, Version};

use super::hostile::Hostile;
use super::replica::Replica;
use super::rng::Rng;

/// A node of the topology.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// Its name.
    pub name: String,
    /// An admin: relays every origin.
    pub relay: bool,
}

/// One node at run time.
pub struct Node {
    pub spec: NodeSpec,
    pub replica: Replica,
    pub up: bool,
    /// Bumped at each crash, so store work queued before it is dropped.
    pub(crate) epoch: u64,
    pub(crate) busy_until: u64,
    pub(crate) next_key: u64,
    /// Local writes since the last flush (lost by a crash, acknowledged by a flush).
    pub(crate) pending: Vec<Version>,
}

pub(crate) struct Link {
    pub(crate) ends: [usize; 2],
    pub(crate) conn: Option<u64>,
    pub(crate) connect_pending: bool,
    pub(crate) down_until: u64,
    pub(crate) base_ms: u64,
}

pub(crate) struct Conn {
    pub(crate) link: usize,
    pub(crate) ends: [usize; 2],
    pub(crate) s: [Session; 2],
    /// Last delivery time per sending side and stream (in-order streams).
    pub(crate) last: [[u64; 3]; 2],
    pub(crate) timer: [Option<u64>; 2],
    pub(crate) closing: bool,
    /// An action of this side is with the store. As the daemon's driver does, the next one is
    /// polled only once it is done, so streams completed meanwhile merge into one Apply.
    pub(crate) store_busy: [bool; 2],
}

pub(crate) enum Ev {
    Deliver {
        conn: u64,
        to: usize,
        stream: StreamKind,
        msg: Message,
    },
    Store {
        node: usize,
        epoch: u64,
        conn: u64,
        side: usize,
        action: Action,
    },
    Timer {
        conn: u64,
        side: usize,
    },
    Teardown {
        conn: u64,
    },
    Connect {
        link: usize,
    },
    Write,
    Flush {
        node: usize,
    },
    Crash {
        node: usize,
    },
    Restart {
        node: usize,
    },
    Drop,
    Partition {
        links: Vec<usize>,
        until: u64,
    },
    Rot,
    /// The hostile node attacks.
    Attack,
}

pub(crate) struct Item {
    pub(crate) t: u64,
    pub(crate) seq: u64,
    pub(crate) ev: Ev,
}

impl PartialEq for Item {
    fn eq(&self, o: &Self) -> bool {
        (self.t, self.seq) == (o.t, o.seq)
    }
}
impl Eq for Item {}
impl PartialOrd for Item {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Item {
    fn cmp(&self, o: &Self) -> Ordering {
        (o.t, o.seq).cmp(&(self.t, self.seq)) // min-heap
    }
}

/// Knobs of one run.
#[derive(Debug, Clone)]
pub struct Params {
    pub nodes: Vec<NodeSpec>,
    /// `(dialer, acceptor)` pairs.
    pub links: Vec<(usize, usize)>,
    pub writes: usize,
    pub active_ms: u64,
    pub crashes: usize,
    pub drops: usize,
    pub partitions: usize,
    pub rots: usize,
    pub batch_max_versions: usize,
    pub batch_max_bytes: usize,
    /// Periodic digest rounds (0: only on demand, so the log alone must converge).
    pub repair_ms: u64,
    /// Nodes flush at random intervals (off for scripted scenarios).
    pub auto_flush: bool,
    /// The hostile node, if any (see `hostile`), and how many attacks it makes.
    pub hostile: Option<usize>,
    pub attacks: usize,
}

/// What happened, for the report and the checks.
#[derive(Debug, Default)]
pub struct Stats {
    pub messages: u64,
    pub bytes: u64,
    pub writes: u64,
    pub crashes: u64,
    pub drops: u64,
    pub rots: u64,
    pub partitions: u64,
    pub sessions: u64,
    pub idle_closes: u64,
    pub mismatches: u64,
    pub rejected: u64,
    pub protocol_errors: Vec<String>,
    pub verified: Vec<(String, VerifyOutcome)>,
}

pub const COLLECTIONS: [&str; 3] = ["situation", "documents", "letters"];
pub(crate) const CLUSTER: &str = "0123456789abcdef";
pub const HEARTBEAT_MS: u64 = 1_000;
pub const IDLE_MS: u64 = 5_000;

pub struct World {
    pub rng: Rng,
    pub now: u64,
    pub(crate) seq: u64,
    pub(crate) heap: BinaryHeap<Item>,
    pub nodes: Vec<Node>,
    pub(crate) links: Vec<Link>,
    pub(crate) conns: BTreeMap<u64, Conn>,
    pub(crate) next_conn: u64,
    pub(crate) params: Params,
    /// Every version any node wrote (and did not lose before anyone could see it).
    pub registry: BTreeMap<(String, Dot), Version>,
    /// Writes acknowledged (covered by a flush at their node).
    pub acked: Vec<Version>,
    pub stats: Stats,
    pub healing: bool,
    /// The access policy every session enforces (none: open).
    pub policy: Option<std::sync::Arc<officesync_protocol::policy::Policy>>,
    /// The hostile node and what it did.
    pub hostile: Option<Hostile>,
}

impl World {
    pub fn new(seed: u64, params: Params) -> Self {
        let mut rng = Rng::new(seed);
        let nodes = params
            .nodes
            .iter()
            .map(|spec| {
                let id = ReplicaId::new(&spec.name, rng.next_u64() as u32).expect("valid name");
                Node {
                    spec: spec.clone(),
                    replica: Replica::new(id),
                    up: true,
                    epoch: 0,
                    busy_until: 0,
                    next_key: 0,
                    pending: Vec::new(),
                }
            })
            .collect();
        let links = params
            .links
            .iter()
            .map(|&(a, b)| Link {
                ends: [a, b],
                conn: None,
                connect_pending: true,
                down_until: 0,
                base_ms: rng.range(2, 120),
            })
            .collect();
        let mut w = Self {
            rng,
            now: 0,
            seq: 0,
            heap: BinaryHeap::new(),
            nodes,
            links,
            conns: BTreeMap::new(),
            next_conn: 0,
            params,
            registry: BTreeMap::new(),
            acked: Vec::new(),
            stats: Stats::default(),
            healing: false,
            policy: None,
            hostile: None,
        };
        w.hostile = w.params.hostile.map(Hostile::new);
        w.schedule_start();
        w
    }

    pub(crate) fn at(&mut self, t: u64, ev: Ev) {
        self.seq += 1;
        self.heap.push(Item {
            t: t.max(self.now),
            seq: self.seq,
            ev,
        });
    }

    fn schedule_start(&mut self) {
        let active = self.params.active_ms;
        for l in 0..self.links.len() {
            let t = self.rng.range(0, 300);
            self.at(t, Ev::Connect { link: l });
        }
        for n in 0..self.nodes.len() {
            if self.params.auto_flush {
                let t = self.rng.range(10, 400);
                self.at(t, Ev::Flush { node: n });
            }
        }
        for _ in 0..self.params.writes {
            let t = self.rng.range(0, active);
            self.at(t, Ev::Write);
        }
        for _ in 0..self.params.crashes {
            let t = self.rng.range(0, active);
            let node = self.rng.index(self.nodes.len());
            self.at(t, Ev::Crash { node });
        }
        for _ in 0..self.params.drops {
            let t = self.rng.range(0, active);
            self.at(t, Ev::Drop);
        }
        for _ in 0..self.params.partitions {
            let t = self.rng.range(0, active);
            let n = self.rng.range(1, (self.links.len() as u64 / 3).max(1)) as usize;
            let links = (0..n).map(|_| self.rng.index(self.links.len())).collect();
            let until = t + self.rng.range(500, 12_000);
            self.at(t, Ev::Partition { links, until });
        }
        for _ in 0..self.params.rots {
            let t = self.rng.range(active / 4, active);
            self.at(t, Ev::Rot);
        }
        for _ in 0..self.params.attacks {
            let t = self.rng.range(0, active);
            self.at(t, Ev::Attack);
        }
    }

    /// A local write at `node` (scripted scenarios).
    pub fn write_key(
        &mut self,
        node: usize,
        coll: &str,
        key: &str,
        value: Option<Vec<u8>>,
    ) -> Version {
        let n = &mut self.nodes[node];
        let v = n.replica.write(coll, key, value, self.now);
        n.pending.push(v.clone());
        self.registry
            .insert((coll.to_owned(), v.dot.clone()), v.clone());
        self.stats.writes += 1;
        v
    }

    /// Flushes `node` now (scripted scenarios).
    pub fn flush_node(&mut self, node: usize) {
        self.flush(node);
    }

    /// Crashes `node` now; it restarts a little later (scripted scenarios).
    pub fn crash_node(&mut self, node: usize) {
        self.crash(node);
    }

    /// Runs events up to virtual time `until`.
    pub fn run_until(&mut self, until: u64) {
        while self.heap.peek().is_some_and(|i| i.t <= until) {
            let Some(item) = self.heap.pop() else { break };
            self.now = item.t;
            self.handle(item.ev);
        }
        self.now = self.now.max(until);
    }

    /// Ends every fault: partitions lifted, crashed nodes restarted.
    pub fn heal(&mut self) {
        self.healing = true;
        // Frames held by a partition were timed for its planned end: drop those connections
        // (they would not have survived it anyway) so nothing stays held.
        let held: Vec<u64> = self
            .links
            .iter()
            .filter(|l| l.down_until > self.now)
            .filter_map(|l| l.conn)
            .collect();
        for id in held {
            self.teardown(id);
        }
        for l in &mut self.links {
            l.down_until = 0;
        }
        for n in 0..self.nodes.len() {
            if !self.nodes[n].up {
                self.restart(n);
            }
        }
        self.disarm();
    }

    /// True when every honest node is up, flushed, and holds the same vector and digest of
    /// every collection (the hostile node is left out).
    pub fn converged(&self) -> bool {
        let honest = || self.honest_nodes();
        if honest().any(|n| !n.up || n.replica.dirty()) {
            return false;
        }
        let names: BTreeSet<&String> = honest().flat_map(|n| n.replica.colls.keys()).collect();
        names.iter().all(|c| {
            let first = self.nodes[0].replica.digest(c);
            honest().all(|n| n.replica.digest(c) == first)
        })
    }

    /// Every node but the hostile one (node 0 is a relay, never hostile).
    pub fn honest_nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(i, _)| !self.is_hostile(*i))
            .map(|(_, n)| n)
    }

    /// Asks every established session to verify every collection.
    pub fn verify_all(&mut self) -> usize {
        let ids: Vec<u64> = self.conns.keys().copied().collect();
        let mut asked = 0;
        for id in ids {
            for side in 0..2 {
                let hostile = self.conns.get(&id).is_some_and(|c| self.is_hostile_conn(c));
                let Some(conn) = self.conns.get_mut(&id) else {
                    continue;
                };
                if !conn.s[side].is_established() || conn.closing || hostile {
                    continue;
                }
                for c in COLLECTIONS {
                    conn.s[side].request_verify(c);
                    asked += 1;
                }
                self.pump(id, side);
            }
        }
        asked
    }

    /// `lag_versions` summed over every established session between honest nodes.
    pub fn total_lag(&self) -> u64 {
        self.conns
            .values()
            .filter(|c| !self.is_hostile_conn(c))
            .flat_map(|c| c.s.iter())
            .filter(|s| s.is_established())
            .flat_map(|s| s.status().collections)
            .map(|c| c.lag_versions)
            .sum()
    }

    /// Sessions with lag, for diagnostics.
    pub fn lag_report(&self) -> String {
        let mut out = String::new();
        for (id, c) in &self.conns {
            for side in 0..2 {
                let st = c.s[side].status();
                for col in &st.collections {
                    if col.lag_versions > 0 {
                        let peer = st
                            .peer_vvs
                            .iter()
                            .find(|(n, _)| *n == col.collection)
                            .map(|(_, v)| v.clone())
                            .unwrap_or_default();
                        out += &format!(
                            "conn {id} {} -> {} {}: lag {} local {:?} peer {:?} established {}\n",
                            self.nodes[c.ends[side]].spec.name,
                            st.peer_node,
                            col.collection,
                            col.lag_versions,
                            col.local_vv,
                            peer,
                            c.s[side].is_established()
                        );
                    }
                }
            }
        }
        out
    }

    /// Established sessions.
    pub fn established(&self) -> usize {
        self.conns
            .values()
            .filter(|c| c.s.iter().all(Session::is_established))
            .count()
    }

    pub(crate) fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Deliver {
                conn,
                to,
                stream,
                msg,
            } => {
                let Some(c) = self.conns.get_mut(&conn) else {
                    return;
                };
                c.s[to].handle_frame(stream, msg, self.now);
                self.pump(conn, to);
            }
            Ev::Store {
                node,
                epoch,
                conn,
                side,
                action,
            } => self.store(node, epoch, conn, side, action),
            Ev::Timer { conn, side } => {
                let now = self.now;
                let Some(c) = self.conns.get_mut(&conn) else {
                    return;
                };
                if c.timer[side] != Some(now) {
                    return;
                }
                c.timer[side] = None;
                c.s[side].handle_timeout(now);
                if c.s[side].poll_timeout().is_some_and(|t| t <= now) {
                    self.stats.protocol_errors.push(format!(
                        "timer of conn {conn} side {side} did not advance at {now}"
                    ));
                }
                self.pump(conn, side);
            }
            Ev::Teardown { conn } => self.teardown(conn),
            Ev::Connect { link } => self.connect(link),
            Ev::Write => self.write(),
            Ev::Flush { node } => {
                if self.nodes[node].up {
                    self.flush(node);
                }
                let t = self.now + self.rng.range(20, 500);
                self.at(t, Ev::Flush { node });
            }
            Ev::Crash { node } => {
                if !self.healing && self.nodes[node].up {
                    self.crash(node);
                }
            }
            Ev::Restart { node } => {
                if !self.nodes[node].up {
                    self.restart(node);
                }
            }
            Ev::Drop => {
                let live: Vec<u64> = self.conns.keys().copied().collect();
                if !self.healing && !live.is_empty() {
                    let id = live[self.rng.index(live.len())];
                    self.stats.drops += 1;
                    self.teardown(id);
                }
            }
            Ev::Partition { links, until } => {
                if !self.healing {
                    self.stats.partitions += 1;
                    for l in links {
                        self.links[l].down_until = self.links[l].down_until.max(until);
                    }
                }
            }
            Ev::Rot => {
                if !self.healing {
                    self.rot();
                }
            }
            Ev::Attack => {
                if !self.healing {
                    self.attack();
                }
            }
        }
    }
}
