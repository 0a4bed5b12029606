//! The driver side of the simulation: opening and tearing down connections, draining each
//! session's outputs onto links and into its node's store queue, delivering frames (through
//! the real wire codec) and running store actions against the replica model.

use officesync_protocol::sync::{
    Action, Event, PeerIdentity, Role, Session, SessionConfig, StreamKind,
};
use officesync_protocol::wire::{decode_message, encode_message, Compression, Message};

use super::world::{Conn, Ev, World, CLUSTER, HEARTBEAT_MS, IDLE_MS};

impl World {
    pub(crate) fn cfg(&self, node: usize) -> SessionConfig {
        let n = &self.nodes[node];
        SessionConfig {
            batch_max_versions: self.params.batch_max_versions,
            batch_max_bytes: self.params.batch_max_bytes,
            heartbeat_interval_ms: HEARTBEAT_MS,
            idle_timeout_ms: IDLE_MS,
            repair_interval_ms: self.params.repair_ms,
            compression: vec![Compression::Zstd, Compression::None],
            relay: n.spec.relay,
            // One urgent collection: its streams take their own lane (protocol 3).
            urgent: vec!["letters".to_owned()],
            ..SessionConfig::new(&n.spec.name, n.replica.id.clone(), CLUSTER)
        }
    }

    pub(crate) fn connect(&mut self, link: usize) {
        let l = &mut self.links[link];
        l.connect_pending = false;
        if l.conn.is_some() {
            return;
        }
        let [a, b] = l.ends;
        if !self.nodes[a].up || !self.nodes[b].up || l.down_until > self.now {
            l.connect_pending = true;
            let t = self.now + self.rng.range(200, 2_000);
            self.at(t, Ev::Connect { link });
            return;
        }
        let mk = |w: &Self, me: usize, other: usize, role| {
            let vvs = w.nodes[me]
                .replica
                .durable_vvs
                .iter()
                .map(|(c, v)| (c.clone(), v.clone()))
                .collect();
            let peer = PeerIdentity {
                node: w.nodes[other].spec.name.clone(),
                is_relay: w.nodes[other].spec.relay,
            };
            let mut s = Session::new(role, w.cfg(me), peer, vvs, w.now);
            if let Some(p) = &w.policy {
                s.handle_policy(p.clone());
            }
            s
        };
        let s = [mk(self, a, b, Role::Dialer), mk(self, b, a, Role::Acceptor)];
        let id = self.next_conn;
        self.next_conn += 1;
        self.stats.sessions += 1;
        self.links[link].conn = Some(id);
        self.conns.insert(
            id,
            Conn {
                link,
                ends: [a, b],
                s,
                last: [[0; 3]; 2],
                timer: [None; 2],
                closing: false,
                store_busy: [false; 2],
            },
        );
        self.pump(id, 0);
        self.pump(id, 1);
    }

    pub(crate) fn teardown(&mut self, id: u64) {
        let Some(c) = self.conns.remove(&id) else {
            return;
        };
        let l = &mut self.links[c.link];
        l.conn = None;
        if !l.connect_pending {
            l.connect_pending = true;
            let t = self.now + self.rng.range(100, 1_500);
            self.at(t, Ev::Connect { link: c.link });
        }
    }

    /// Drains a session's outputs: frames onto the link, actions into its node's store queue,
    /// events into the stats; then re-arms its timer.
    pub(crate) fn pump(&mut self, id: u64, side: usize) {
        let mut frames = Vec::new();
        let mut actions = Vec::new();
        let mut events = Vec::new();
        let (node, deadline) = {
            let Some(c) = self.conns.get_mut(&id) else {
                return;
            };
            let busy = &mut c.store_busy[side];
            let s = &mut c.s[side];
            loop {
                let before = frames.len() + actions.len() + events.len();
                frames.extend(std::iter::from_fn(|| s.poll_transmit()));
                if !*busy {
                    if let Some(a) = s.poll_action() {
                        *busy = true;
                        actions.push(a);
                    }
                }
                events.extend(std::iter::from_fn(|| s.poll_event()));
                if frames.len() + actions.len() + events.len() == before {
                    break;
                }
            }
            (c.ends[side], s.poll_timeout())
        };
        for (stream, msg) in frames {
            self.send(id, side, stream, msg);
        }
        for action in actions {
            let n = &mut self.nodes[node];
            let t = n.busy_until.max(self.now) + self.rng.range(0, 3);
            n.busy_until = t;
            let epoch = n.epoch;
            self.at(
                t,
                Ev::Store {
                    node,
                    epoch,
                    conn: id,
                    side,
                    action,
                },
            );
        }
        for e in events {
            self.event(id, side, e);
        }
        if let Some(c) = self.conns.get_mut(&id) {
            if c.timer[side] != deadline {
                c.timer[side] = deadline;
                if let Some(t) = deadline {
                    let t = t.max(self.now + 1);
                    c.timer[side] = Some(t);
                    self.at(t, Ev::Timer { conn: id, side });
                }
            }
        }
    }

    pub(crate) fn event(&mut self, id: u64, side: usize, e: Event) {
        // The honest side of a connection with the hostile node refuses what it must: counted
        // apart, and never a failure.
        let hostile = self
            .conns
            .get(&id)
            .filter(|c| self.is_hostile_conn(c))
            .map(|c| self.is_hostile(c.ends[side]));
        match e {
            Event::Closed { reason, .. } if hostile.is_some() => {
                if let (Some(false), Some(h)) = (hostile, &mut self.hostile) {
                    if !reason.contains("idle timeout") {
                        h.note_closed(&reason);
                    }
                }
                self.closing(id);
            }
            Event::Rejected { count, reason } if hostile == Some(false) => {
                if let Some(h) = &mut self.hostile {
                    h.note_rejected(&reason, count);
                }
            }
            Event::Closed { reason, .. } => {
                if reason.contains("idle timeout") {
                    self.stats.idle_closes += 1;
                } else {
                    self.stats
                        .protocol_errors
                        .push(format!("t={} conn {id} side {side}: {reason}", self.now));
                }
                self.closing(id);
            }
            Event::DigestMismatch { .. } => self.stats.mismatches += 1,
            Event::Verified {
                collection,
                outcome,
            } => {
                self.stats.verified.push((collection, outcome));
            }
            Event::Rejected { count, reason } => {
                if std::env::var("SIM_SEED").is_ok() {
                    eprintln!("rejected {count}: {reason}");
                }
                self.stats.rejected += count
            }
            Event::Established { .. }
            | Event::Acked { .. }
            | Event::PeerAbout { .. }
            | Event::DictionaryAccepted { .. }
            | Event::DictionaryAgreed { .. } => {}
        }
    }

    /// A session of connection `id` closed: the connection goes a little later.
    fn closing(&mut self, id: u64) {
        if let Some(c) = self.conns.get_mut(&id) {
            if !c.closing {
                c.closing = true;
                let t = self.now + 20;
                self.at(t, Ev::Teardown { conn: id });
            }
        }
    }

    pub(crate) fn send(&mut self, id: u64, side: usize, stream: StreamKind, msg: Message) {
        let msg = match stream {
            StreamKind::Bulk if self.hostile.is_some() => self.tamper(id, side, msg),
            _ => msg,
        };
        let bytes = encode_message(&msg).expect("encodable");
        let back = decode_message(&bytes).expect("decodable");
        assert_eq!(back, msg, "wire round trip");
        self.stats.messages += 1;
        self.stats.bytes += bytes.len() as u64;
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        let link = &self.links[c.link];
        let k = match stream {
            StreamKind::Control => 0,
            StreamKind::Bulk => 1,
            StreamKind::Urgent => 2,
        };
        let mut delay = link.base_ms + self.rng.range(0, link.base_ms);
        if k == 1 {
            delay += bytes.len() as u64 / 200; // ~200 kB/s
        }
        let mut t = self.now + delay;
        if link.down_until > self.now {
            t = t.max(link.down_until + delay); // held until the partition ends
        }
        t = t.max(c.last[side][k]);
        c.last[side][k] = t;
        self.at(
            t,
            Ev::Deliver {
                conn: id,
                to: 1 - side,
                stream,
                msg: back,
            },
        );
    }

    pub(crate) fn store(&mut self, node: usize, epoch: u64, id: u64, side: usize, action: Action) {
        if self.nodes[node].epoch != epoch {
            return; // queued before a crash
        }
        let r = &mut self.nodes[node].replica;
        let Some(c) = self.conns.get_mut(&id) else {
            if let Action::Apply { parts, repair } = action {
                for p in parts {
                    r.apply(&p.collection, &p.origin, p.versions, p.through, repair);
                }
            }
            return;
        };
        c.store_busy[side] = false;
        let s = &mut c.s[side];
        match action {
            Action::Load {
                collection,
                origin,
                after,
                through,
                max_versions,
                max_bytes,
                ..
            } => {
                let (vs, scanned) = r.load(
                    &collection,
                    &origin,
                    after,
                    through,
                    max_versions,
                    max_bytes,
                );
                s.handle_loaded(&collection, &origin, vs, scanned);
            }
            Action::Apply { parts, repair } => {
                // One commit for every part, then one answer per part, in order.
                let done: Vec<_> = parts
                    .into_iter()
                    .map(|p| {
                        r.apply(&p.collection, &p.origin, p.versions, p.through, repair);
                        (p.collection, p.origin, p.through)
                    })
                    .collect();
                for (collection, origin, through) in done {
                    let vv = r.durable_vvs.get(&collection).cloned().unwrap_or_default();
                    s.handle_applied(&collection, &origin, through, vv);
                }
            }
            Action::Digest { collection } => {
                let (d, vv) = r.digest(&collection);
                s.handle_local_digest(&collection, d, vv);
            }
            Action::TreeDigests {
                collection,
                level,
                parents,
            } => {
                let digests = r.tree_digests(&collection, level, &parents);
                s.handle_tree_digests(&collection, level, &parents, digests);
            }
            Action::LoadLeaves {
                collection,
                leaves,
                after,
                max_versions,
                max_bytes,
            } => {
                let (vs, next) = r.load_leaves(
                    &collection,
                    &leaves,
                    after.as_ref(),
                    max_versions,
                    max_bytes,
                );
                s.handle_leaves_loaded(&collection, vs, next);
            }
        }
        self.pump(id, side);
    }
}
