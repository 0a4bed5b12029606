//! A hostile office: a node with a valid certificate (a non-relay office) whose driver, at
//! random times, attacks its peers instead of sending honest traffic. Its replica and sessions
//! stay honest; the attacks go through the same wire path (`World::send`, codec round trip
//! included), either tampering with a batch of its own origin its session is sending (a
//! poisoned causal context, a far-future stamp, an oversized context) or injecting crafted
//! frames next to it (versions and bare completions of incarnations it never announced or of
//! other nodes, probe floods). It also floods one key with siblings through its replica (blind
//! writes, with empty contexts: legitimate, so accepted).
//!
//! Tampering leaves the replica untouched, so every peer that accepts a version of the hostile
//! origin gets the one its replica holds: an honest receiver refuses the tampered version and
//! the rest of that stream for the session, and the next session brings the genuine one.
//! Nothing here equivocates (sends different versions of one dot, or different claims of one
//! stream, to different peers), which no receiver can detect: the checks then hold for the
//! honest nodes among themselves.

use std::collections::BTreeMap;

use officesync_protocol::sync::StreamKind;
use officesync_protocol::wire::{
    Batch, Complete, Heartbeat, Message, MessageV2, MAX_VECTOR_ENTRIES,
};
use officesync_protocol::{Dot, Hlc, ReplicaId, Version, VersionVector};

use super::world::{Conn, World, COLLECTIONS};

/// One attack of the hostile node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attack {
    /// A version of its own origin whose context covers a huge counter of another origin.
    PoisonOther,
    /// A version whose context covers more of the receiver's own origin than it issued.
    PoisonReceiver,
    /// A version stamped beyond the receiver's clock skew bound (seconds or days ahead).
    FutureStamp,
    /// A version whose context has more entries than validation allows.
    HugeContext,
    /// A batch (and its completion) of an incarnation of its node it never announced.
    Unannounced,
    /// A batch (and its completion) of another node's origin.
    OtherNode,
    /// A completion with no batch of an unannounced incarnation or of another node's origin.
    BareComplete,
    /// Many blind writes (empty contexts) of one key: siblings, legitimately accepted.
    SiblingFlood,
    /// Far more heartbeat probes than one per interval.
    ProbeFlood,
}

impl Attack {
    const ALL: [Attack; 9] = [
        Attack::PoisonOther,
        Attack::PoisonReceiver,
        Attack::FutureStamp,
        Attack::HugeContext,
        Attack::Unannounced,
        Attack::OtherNode,
        Attack::BareComplete,
        Attack::SiblingFlood,
        Attack::ProbeFlood,
    ];

    /// Relative weights of the attacks, in the order of [`Attack::ALL`].
    const WEIGHTS: [u64; 9] = [5, 4, 4, 1, 2, 2, 2, 2, 1];

    /// A short name for the summary.
    pub fn name(self) -> &'static str {
        match self {
            Attack::PoisonOther => "poison-other",
            Attack::PoisonReceiver => "poison-receiver",
            Attack::FutureStamp => "future-stamp",
            Attack::HugeContext => "huge-context",
            Attack::Unannounced => "unannounced",
            Attack::OtherNode => "other-node",
            Attack::BareComplete => "bare-complete",
            Attack::SiblingFlood => "sibling-flood",
            Attack::ProbeFlood => "probe-flood",
        }
    }

    /// Tampers with a batch the hostile session sends (rather than injecting a frame).
    fn tampers(self) -> bool {
        matches!(
            self,
            Attack::PoisonOther
                | Attack::PoisonReceiver
                | Attack::FutureStamp
                | Attack::HugeContext
        )
    }
}

/// The hostile node and what it did.
#[derive(Debug, Default)]
pub struct Hostile {
    /// The node.
    pub node: usize,
    /// Tampering armed per connection: it fires on the next batch of the hostile origin sent
    /// there (never, if the connection goes first: ids are not reused).
    armed: BTreeMap<u64, Attack>,
    /// Attacks sent, by name.
    pub sent: BTreeMap<&'static str, u64>,
    /// Versions the honest side refused, by the kind of reason.
    pub refused: BTreeMap<&'static str, u64>,
    /// Sessions the honest side closed, by the kind of reason.
    pub closed: BTreeMap<&'static str, u64>,
    /// Refusals and closes for a reason none of the attacks explains.
    pub unexplained: Vec<String>,
}

impl Hostile {
    /// A hostile `node`.
    pub fn new(node: usize) -> Self {
        Self {
            node,
            ..Self::default()
        }
    }

    /// Counts `n` of attack `a` sent.
    fn count(&mut self, a: Attack, n: u64) {
        *self.sent.entry(a.name()).or_default() += n;
    }

    /// Counts a refusal by the honest side of a connection with the hostile node.
    pub fn note_rejected(&mut self, reason: &str, count: u64) {
        let kind = self.kind(reason);
        *self.refused.entry(kind).or_default() += count;
    }

    /// Counts a close by the honest side of a connection with the hostile node.
    pub fn note_closed(&mut self, reason: &str) {
        let kind = self.kind(reason);
        *self.closed.entry(kind).or_default() += 1;
    }

    /// The kind of `reason`, noting it when no attack explains it.
    fn kind(&mut self, reason: &str) -> &'static str {
        let kind = reason_kind(reason);
        if kind == "other" {
            self.unexplained.push(reason.to_owned());
        }
        kind
    }
}

/// The kind of a refusal or close reason, for the summary.
fn reason_kind(reason: &str) -> &'static str {
    const KINDS: [(&str, &str); 9] = [
        ("after one", "rest-of-stream"),
        ("causal context", "causal-context"),
        ("ahead of the local clock", "clock-skew"),
        ("incarnation", "incarnation"),
        ("is not a relay", "relay-rule"),
        ("heartbeat probes", "probe-flood"),
        ("version vector of", "vector-too-long"),
        ("limit", "limit"),
        ("clock skew", "skew-retry"),
    ];
    KINDS
        .iter()
        .find(|(needle, _)| reason.contains(needle))
        .map_or("other", |(_, kind)| kind)
}

impl World {
    /// True when `node` is the hostile node.
    pub fn is_hostile(&self, node: usize) -> bool {
        self.hostile.as_ref().is_some_and(|h| h.node == node)
    }

    /// True when connection `c` has the hostile node at one end.
    pub(crate) fn is_hostile_conn(&self, c: &Conn) -> bool {
        c.ends.iter().any(|n| self.is_hostile(*n))
    }

    /// One attack, at random, on a random established connection of the hostile node.
    pub(crate) fn attack(&mut self) {
        let Some(node) = self.hostile.as_ref().map(|h| h.node) else {
            return;
        };
        if !self.nodes[node].up {
            return;
        }
        let targets: Vec<(u64, usize)> = self
            .conns
            .iter()
            .filter(|(_, c)| !c.closing && c.s.iter().all(|s| s.is_established()))
            .filter_map(|(id, c)| c.ends.iter().position(|n| *n == node).map(|s| (*id, s)))
            .collect();
        let pick = self.rng.range(0, Attack::WEIGHTS.iter().sum::<u64>() - 1);
        let mut acc = 0;
        let attack = Attack::ALL
            .into_iter()
            .zip(Attack::WEIGHTS)
            .find(|(_, w)| {
                acc += w;
                pick < acc
            })
            .map_or(Attack::PoisonOther, |(a, _)| a);
        if attack == Attack::SiblingFlood {
            self.sibling_flood(node);
            return;
        }
        if targets.is_empty() {
            return;
        }
        let (id, side) = targets[self.rng.index(targets.len())];
        if attack.tampers() {
            if let Some(h) = &mut self.hostile {
                h.armed.insert(id, attack);
            }
            return;
        }
        match attack {
            Attack::ProbeFlood => self.probe_flood(id, side),
            Attack::Unannounced | Attack::OtherNode | Attack::BareComplete => {
                self.foreign_stream(id, side, attack)
            }
            _ => {}
        }
    }

    /// Blind writes of one shared key at the hostile node: siblings of everything there.
    fn sibling_flood(&mut self, node: usize) {
        let coll = COLLECTIONS[self.rng.index(COLLECTIONS.len())];
        let key = format!("shared/{}", self.rng.index(8));
        let n = self.rng.range(8, 24);
        for i in 0..n {
            let value = Some(vec![i as u8; 8]);
            let now = self.now;
            let v = self.nodes[node].replica.write_with_context(
                coll,
                &key,
                value,
                VersionVector::new(),
                now,
            );
            self.nodes[node].pending.push(v.clone());
            self.registry.insert((coll.to_owned(), v.dot.clone()), v);
        }
        if let Some(h) = &mut self.hostile {
            h.count(Attack::SiblingFlood, 1);
        }
    }

    /// Far more probes than the receiver echoes, with the hostile side's parity.
    fn probe_flood(&mut self, id: u64, side: usize) {
        let n = self.rng.range(40, 200);
        let parity = if side == 0 { 1 } else { 2 }; // side 0 dials
        for i in 0..n {
            let msg = Heartbeat {
                now_ms: self.now,
                seq: parity + 2 * (1_000 + i),
            };
            self.send(id, side, StreamKind::Control, msg.into());
        }
        if let Some(h) = &mut self.hostile {
            h.count(Attack::ProbeFlood, 1);
        }
    }

    /// Versions (and a completion), or a bare completion, of an origin the hostile node may
    /// not bring: another incarnation of its node, or another node's.
    fn foreign_stream(&mut self, id: u64, side: usize, attack: Attack) {
        let node = self.conns[&id].ends[side];
        let honest = 1 - side;
        let unannounced = match attack {
            Attack::Unannounced => true,
            Attack::OtherNode => false,
            _ => self.rng.percent(50),
        };
        let origin = if unannounced {
            // A dialer that has not learnt the acceptor's incarnation takes the first one it
            // sends as announced: that is the hostile node choosing an incarnation (and equally
            // able to send it to that peer only), not an unannounced one.
            let known = self.conns[&id].s[honest].status().peer_replica;
            if known.as_ref() != Some(&self.nodes[node].replica.id) {
                return;
            }
            let name = self.nodes[node].spec.name.clone();
            ReplicaId::new(&name, self.rng.next_u64() as u32).expect("valid name")
        } else {
            let other = (0..self.nodes.len())
                .filter(|n| *n != node)
                .nth(self.rng.index(self.nodes.len() - 1))
                .unwrap_or(0);
            if self.rng.percent(50) {
                self.nodes[other].replica.id.clone()
            } else {
                let name = self.nodes[other].spec.name.clone();
                ReplicaId::new(&name, self.rng.next_u64() as u32).expect("valid name")
            }
        };
        let coll = COLLECTIONS[self.rng.index(COLLECTIONS.len())];
        let start = self.rng.range(1, 50);
        let n = self.rng.range(1, 6);
        let mut frames: Vec<Message> = Vec::new();
        if attack != Attack::BareComplete {
            let versions = (start..start + n)
                .map(|counter| Version {
                    collection: coll.to_owned(),
                    key: format!("shared/{}", self.rng.index(8)),
                    dot: Dot::new(origin.clone(), counter),
                    hlc: Hlc {
                        ms: self.now,
                        logical: 0,
                    },
                    context: VersionVector::new(),
                    value: Some(b"hostile".to_vec()),
                    author: None,
                    signature: None,
                })
                .collect();
            frames.push(
                Batch {
                    collection: coll.to_owned(),
                    origin: origin.clone(),
                    versions,
                }
                .into(),
            );
        }
        let through = if self.rng.percent(20) {
            u64::MAX
        } else {
            start + n - 1
        };
        frames.push(
            Complete {
                collection: coll.to_owned(),
                origin,
                through,
            }
            .into(),
        );
        for f in frames {
            self.send(id, side, StreamKind::Bulk, f);
        }
        if let Some(h) = &mut self.hostile {
            h.count(attack, 1);
        }
    }

    /// The hostile side of connection `id` sends `msg`: a batch of its own origin is tampered
    /// with if an attack is armed on the connection.
    pub(crate) fn tamper(&mut self, id: u64, side: usize, msg: Message) -> Message {
        let Some(c) = self.conns.get(&id) else {
            return msg;
        };
        let (node, receiver) = (c.ends[side], c.ends[1 - side]);
        let Some(attack) = self
            .hostile
            .as_ref()
            .filter(|h| h.node == node)
            .and_then(|h| h.armed.get(&id).copied())
        else {
            return msg;
        };
        if !matches!(msg.kind(), "batch" | "batch_complete") {
            return msg;
        }
        let version = msg.protocol_version();
        let (mut b, through) = match msg.into_v2() {
            MessageV2::Batch(b) => (b, None),
            MessageV2::BatchComplete(bc) => (bc.batch, Some(bc.through)),
            _ => unreachable!("a batch"),
        };
        // Re-sent in the version the session speaks (with its completion when it had one).
        let wrap = |b: Batch| match through {
            Some(through) => MessageV2::BatchComplete(officesync_protocol::wire::BatchComplete {
                batch: b,
                through,
            })
            .into(),
            None => MessageV2::Batch(b)
                .at(version)
                .expect("a batch fits every version"),
        };
        if b.origin != self.nodes[node].replica.id || b.versions.is_empty() {
            return wrap(b);
        }
        let at = self.rng.index(b.versions.len());
        let key = format!("shared/{}", self.rng.index(8));
        let now = self.now;
        let v = &mut b.versions[at];
        match attack {
            Attack::PoisonOther => {
                // Another honest origin's future, or all of it.
                let others: Vec<usize> = (0..self.nodes.len())
                    .filter(|n| *n != node && *n != receiver)
                    .collect();
                let Some(&o) = others.get(self.rng.index(others.len())) else {
                    return wrap(b);
                };
                let id = self.nodes[o].replica.id.clone();
                let held = self.nodes[o].replica.digest(&b.collection).1.get(&id);
                let n = if self.rng.percent(50) {
                    u64::MAX
                } else {
                    held + self.rng.range(1_000, 1_000_000)
                };
                v.key = key;
                v.context.raise(&id, n);
            }
            Attack::PoisonReceiver => {
                // More of the receiver's own origin than it ever issued.
                let id = self.nodes[receiver].replica.id.clone();
                let issued = self.nodes[receiver]
                    .replica
                    .digest(&b.collection)
                    .1
                    .get(&id);
                v.key = key;
                v.context.raise(&id, issued + self.rng.range(1, 1_000));
            }
            Attack::FutureStamp => {
                let skew = self.cfg(receiver).max_clock_skew_ms;
                let ahead = if self.rng.percent(50) {
                    self.rng.range(1_000, 20_000) // the receiver retries within the run
                } else {
                    self.rng.range(3_600_000, 30 * 86_400_000)
                };
                v.hlc = Hlc {
                    ms: now + skew + ahead,
                    logical: 0,
                };
            }
            Attack::HugeContext => {
                for i in 0..=MAX_VECTOR_ENTRIES as u32 {
                    let r = ReplicaId::new("ghost", i).expect("valid name");
                    v.context.raise(&r, 1);
                }
            }
            _ => {}
        }
        if let Some(h) = &mut self.hostile {
            h.armed.remove(&id);
            h.count(attack, 1);
        }
        wrap(b)
    }

    /// Healing ends the attacks: nothing armed stays, and every connection of the hostile
    /// node is dropped, so the streams refused for the rest of a session resume at once (a
    /// refusal waits for the next session, which a real network brings sooner or later).
    pub(crate) fn disarm(&mut self) {
        let Some(h) = &mut self.hostile else {
            return;
        };
        h.armed.clear();
        let node = h.node;
        let ids: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| c.ends.contains(&node))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.teardown(id);
        }
    }
}
