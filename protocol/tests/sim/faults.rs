//! The workload and the faults: local writes (unique, contested and deletes), flushes that
//! make writes acknowledged, crashes that lose what is not flushed, restarts, and bit rot.

use officesync_protocol::{Dot, Version};

use super::world::{Ev, World, COLLECTIONS};

impl World {
    pub(crate) fn flush(&mut self, node: usize) {
        let n = &mut self.nodes[node];
        let grown = n.replica.flush();
        self.acked.append(&mut n.pending);
        if grown.is_empty() {
            return;
        }
        let ids: Vec<(u64, usize)> = self
            .conns
            .iter()
            .flat_map(|(id, c)| {
                (0..2)
                    .filter(move |s| c.ends[*s] == node)
                    .map(move |s| (*id, s))
            })
            .collect();
        for (id, side) in ids {
            if let Some(c) = self.conns.get_mut(&id) {
                for (coll, vv) in &grown {
                    c.s[side].handle_local_vv(coll, vv.clone());
                }
            }
            self.pump(id, side);
        }
    }

    pub(crate) fn write(&mut self) {
        let up: Vec<usize> = (0..self.nodes.len())
            .filter(|n| self.nodes[*n].up)
            .collect();
        if up.is_empty() {
            return;
        }
        let node = up[self.rng.index(up.len())];
        let coll = COLLECTIONS[self.rng.index(COLLECTIONS.len())];
        let roll = self.rng.range(0, 99);
        let n = &mut self.nodes[node];
        let mut value = Some(
            (0..self.rng.range(4, 64))
                .map(|i| (i as u8) ^ (roll as u8))
                .collect::<Vec<u8>>(),
        );
        if self.rng.percent(5) {
            value = Some(vec![7; self.rng.range(1_500, 3_000) as usize]);
        }
        let key = if roll < 55 {
            n.next_key += 1;
            format!("{}/{}", n.spec.name, n.next_key)
        } else if roll < 85 {
            format!("shared/{}", self.rng.index(8))
        } else {
            let keys: Vec<&String> = n
                .replica
                .colls
                .get(coll)
                .map(|c| c.keys.keys().collect())
                .unwrap_or_default();
            if keys.is_empty() {
                return;
            }
            value = None;
            keys[self.rng.index(keys.len())].clone()
        };
        let v = n.replica.write(coll, &key, value, self.now);
        n.pending.push(v.clone());
        let prev = self.registry.insert((coll.to_owned(), v.dot.clone()), v);
        assert!(prev.is_none(), "dot reused by a write");
        self.stats.writes += 1;
    }

    pub(crate) fn crash(&mut self, node: usize) {
        self.stats.crashes += 1;
        let n = &mut self.nodes[node];
        n.replica.crash();
        n.up = false;
        n.epoch += 1;
        for v in n.pending.drain(..) {
            // Never offered to anyone (only durable vectors are), so gone for good.
            self.registry.remove(&(v.collection.clone(), v.dot.clone()));
        }
        let ids: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| c.ends.contains(&node))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.teardown(id);
        }
        let t = self.now + self.rng.range(300, 4_000);
        self.at(t, Ev::Restart { node });
    }

    pub(crate) fn restart(&mut self, node: usize) {
        self.nodes[node].up = true;
        self.nodes[node].busy_until = self.now;
    }

    /// Rots `dot` of `key` at `node` (scripted scenarios).
    pub fn rot_version(&mut self, node: usize, coll: &str, key: &str, dot: &Dot) -> bool {
        let done = self.nodes[node].replica.rot(coll, key, dot);
        self.flush(node);
        done
    }

    /// Bit rot: a version live and durable everywhere silently disappears at one node — one
    /// that a neighbour may send back under the relay rule (a relay, or the origin's node).
    /// Others cannot be repaired: in hub-and-spoke, the hub's own version rotted at the hub
    /// can come back from no spoke.
    pub(crate) fn rot(&mut self) {
        if self.nodes.iter().any(|n| !n.up) {
            return;
        }
        let x = self.rng.index(self.nodes.len());
        let coll = COLLECTIONS[self.rng.index(COLLECTIONS.len())];
        let candidates: Vec<Version> = self.nodes[x]
            .replica
            .colls
            .get(coll)
            .map(|c| c.versions().cloned().collect())
            .unwrap_or_default();
        let neighbours: Vec<usize> = self
            .links
            .iter()
            .filter(|l| l.ends.contains(&x))
            .map(|l| if l.ends[0] == x { l.ends[1] } else { l.ends[0] })
            .collect();
        let everywhere: Vec<&Version> = candidates
            .iter()
            .filter(|v| {
                neighbours.iter().any(|n| {
                    let spec = &self.nodes[*n].spec;
                    spec.relay || v.dot.origin.node_name() == spec.name
                })
            })
            .filter(|v| {
                self.nodes.iter().all(|n| {
                    n.replica.colls.get(coll).is_some_and(|c| {
                        c.keys
                            .get(&v.key)
                            .is_some_and(|s| s.iter().any(|w| w.dot == v.dot))
                    })
                })
            })
            .collect();
        if everywhere.is_empty() {
            return;
        }
        let v = everywhere[self.rng.index(everywhere.len())].clone();
        for n in 0..self.nodes.len() {
            self.flush(n);
        }
        if self.nodes[x].replica.rot(coll, &v.key, &v.dot) {
            self.stats.rots += 1;
        }
        self.flush(x);
    }
}
