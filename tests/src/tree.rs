//! A province-shaped tree of real daemons on loopback, as the seed's network is laid out: the
//! general office, cities under it, counties under each city (all relays, with admin
//! certificates) and townships under each county; each node dials its parent. Used by the
//! four-tier suite (`tests/tests/scale.rs`) and the benchmark's `scale` group.

use std::thread;
use std::time::{Duration, Instant};

use crate::http::encode;
use crate::sse::{SseItem, SseRequest, SseStream};
use crate::{Cluster, TestConfig, TestNode};

/// The general office's name in a tree.
pub const ROOT: &str = "general-office";

/// How wide each tier is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TreeShape {
    /// Cities under the general office.
    pub cities: usize,
    /// Counties under each city.
    pub counties_per_city: usize,
    /// Townships under each county.
    pub towns_per_county: usize,
}

impl TreeShape {
    /// Nodes in the tree, the general office included.
    pub fn nodes(&self) -> usize {
        let counties = self.cities * self.counties_per_city;
        1 + self.cities + counties + counties * self.towns_per_county
    }

    /// Every node as `(name, parent)`, parents before their children.
    pub fn plan(&self) -> Vec<(String, Option<String>)> {
        let mut plan = vec![(ROOT.to_owned(), None)];
        for c in 0..self.cities {
            plan.push((format!("city-{c}"), Some(ROOT.to_owned())));
        }
        for c in 0..self.cities {
            for k in 0..self.counties_per_city {
                plan.push((format!("county-{c}-{k}"), Some(format!("city-{c}"))));
            }
        }
        for c in 0..self.cities {
            for k in 0..self.counties_per_city {
                for t in 0..self.towns_per_county {
                    plan.push((format!("town-{c}-{k}-{t}"), Some(format!("county-{c}-{k}"))));
                }
            }
        }
        plan
    }
}

/// A running tree: its nodes in start order (parents first) with their parents.
pub struct Tree {
    /// The nodes, parents before children.
    pub nodes: Vec<TestNode>,
    /// Each node's parent (`None` for the general office), in the order of `nodes`.
    pub parents: Vec<Option<String>>,
    // Last, so that the nodes are killed before their temp dir goes.
    cluster: Cluster,
}

impl Tree {
    /// Starts every node of `shape`, one after another in plan order (parents first), each
    /// relay an admin; `extra_toml` is added to every config and `tune` may change each one
    /// (for example its durability) before it starts.
    pub fn start(shape: TreeShape, extra_toml: &str, tune: impl Fn(&mut TestConfig)) -> Tree {
        Tree::start_parallel(shape, extra_toml, tune, 1)
    }

    /// Like [`Tree::start`], with up to `parallel` daemons starting at once (taken in plan
    /// order, so a parent starts no later than its children): as offices of a province boot
    /// on their own, rather than each waiting for the one before it to answer. A child that
    /// starts before its parent listens dials again until it does.
    pub fn start_parallel(
        shape: TreeShape,
        extra_toml: &str,
        tune: impl Fn(&mut TestConfig),
        parallel: usize,
    ) -> Tree {
        let cluster = Cluster::new();
        let plan = shape.plan();
        let relays: Vec<String> = plan
            .iter()
            .filter(|(n, _)| !n.starts_with("town-"))
            .map(|(n, _)| n.clone())
            .collect();
        let mut configs: Vec<TestConfig> = Vec::with_capacity(plan.len());
        let mut addrs: std::collections::HashMap<String, String> = Default::default();
        let mut parents = Vec::with_capacity(plan.len());
        for (name, parent) in plan {
            cluster.issue(&name, relays.contains(&name));
            let mut config = cluster.config(&name);
            config.admins = relays.clone();
            if let Some(p) = &parent {
                let addr = addrs
                    .get(p)
                    .expect("parents come first in the plan")
                    .clone();
                config.peers = vec![(p.clone(), addr)];
            }
            config.extra_toml = extra_toml.to_owned();
            tune(&mut config);
            addrs.insert(name.clone(), config.sync_listen.to_string());
            configs.push(config);
            parents.push(parent);
        }
        let nodes = start_all(&cluster, &configs, parallel.max(1));
        Tree {
            nodes,
            parents,
            cluster,
        }
    }

    /// The node called `name`.
    pub fn node(&self, name: &str) -> &TestNode {
        self.nodes
            .iter()
            .find(|n| n.name() == name)
            .unwrap_or_else(|| panic!("no node {name} in the tree"))
    }

    /// The tree's temp dir.
    pub fn dir(&self) -> &std::path::Path {
        self.cluster.dir()
    }

    /// Waits until every node other than the general office has a session with its parent.
    pub fn wait_linked(&self, timeout: Duration) -> Result<Duration, String> {
        let start = Instant::now();
        loop {
            let unlinked: Vec<&str> = self
                .nodes
                .iter()
                .zip(&self.parents)
                .filter_map(|(n, p)| p.as_ref().map(|p| (n, p)))
                .filter(|(n, p)| !connected_to(n, p))
                .map(|(n, _)| n.name())
                .collect();
            if unlinked.is_empty() {
                return Ok(start.elapsed());
            }
            if start.elapsed() > timeout {
                return Err(format!(
                    "after {timeout:?}, {} nodes have no session with their parent, e.g. {:?}",
                    unlinked.len(),
                    &unlinked[..unlinked.len().min(5)]
                ));
            }
            thread::sleep(Duration::from_millis(250));
        }
    }

    /// Writes `key` at node `from` and waits until every node's change feed of `collection`
    /// reports it: each node's delay from just before the PUT to the event's arrival at the
    /// harness, in the order of `nodes`. A feed (one open stream per node, opened before the
    /// write) costs a node nothing until the change comes, where polling every API would
    /// load the machine while the write travels.
    pub fn propagation(
        &self,
        from: &str,
        collection: &str,
        key: &str,
        timeout: Duration,
    ) -> Result<Vec<Duration>, String> {
        let streams: Vec<SseStream> = self
            .nodes
            .iter()
            .map(|n| {
                let req = SseRequest {
                    path: format!(
                        "/v1/collections/{}/changes?prefix={}",
                        encode(collection, false),
                        encode(key, false)
                    ),
                    token: n.api().token().map(str::to_owned),
                    ..SseRequest::default()
                };
                let s = SseStream::open(n.api_addr(), &req)
                    .map_err(|e| format!("{}: cannot open its change feed: {e:#}", n.name()))?;
                if s.status != 200 {
                    return Err(format!(
                        "{}: change feed answered {}: {}",
                        n.name(),
                        s.status,
                        s.body
                    ));
                }
                Ok(s)
            })
            .collect::<Result<_, String>>()?;
        let writer = self.node(from).api();
        let start = Instant::now();
        writer.put(collection, key, key.as_bytes());
        let mut delays: Vec<Option<Duration>> = vec![None; streams.len()];
        while delays.iter().any(Option::is_none) && start.elapsed() < timeout {
            for (i, s) in streams.iter().enumerate() {
                while delays[i].is_none() {
                    match s.next_item(Duration::ZERO) {
                        // The start event carries a cursor only; a change carries data and
                        // no event name.
                        Some(SseItem::Event(e)) if e.event.is_empty() && !e.data.is_empty() => {
                            delays[i] = Some(e.received.saturating_duration_since(start));
                        }
                        // A named event (cutoff, closing, forbidden) ends the stream.
                        Some(SseItem::Event(e)) if !e.event.is_empty() => {
                            return Err(format!(
                                "{}: change feed ended with a {:?} event: {}",
                                self.nodes[i].name(),
                                e.event,
                                e.data
                            ))
                        }
                        Some(SseItem::Closed(why)) => {
                            return Err(format!(
                                "{}: change feed closed: {why}",
                                self.nodes[i].name()
                            ))
                        }
                        Some(_) => {}
                        None => break,
                    }
                }
            }
            thread::sleep(Duration::from_millis(2));
        }
        let missing: Vec<&str> = delays
            .iter()
            .zip(&self.nodes)
            .filter(|(d, _)| d.is_none())
            .map(|(_, n)| n.name())
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "{key} written at {from} did not reach {} nodes within {timeout:?}, e.g. {:?}",
                missing.len(),
                &missing[..missing.len().min(5)]
            ));
        }
        Ok(delays.into_iter().flatten().collect())
    }
}

/// Starts the daemons of `configs` with `parallel` threads, each taking the next config in
/// order; the nodes in the order of `configs`.
fn start_all(cluster: &Cluster, configs: &[TestConfig], parallel: usize) -> Vec<TestNode> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let started: std::sync::Mutex<Vec<Option<TestNode>>> =
        std::sync::Mutex::new(configs.iter().map(|_| None).collect());
    thread::scope(|s| {
        for _ in 0..parallel.min(configs.len()) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(config) = configs.get(i) else { break };
                let node = cluster.start(config);
                started.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(node);
            });
        }
    });
    started
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .map(|n| n.expect("every start either ran or panicked the scope"))
        .collect()
}

/// True when `node`'s status shows a connected session with `peer`.
fn connected_to(node: &TestNode, peer: &str) -> bool {
    let Ok(reply) = node.api().request("GET", "/v1/status", None) else {
        return false;
    };
    if reply.status != 200 {
        return false;
    }
    let status = reply.json();
    status["peers"].as_array().is_some_and(|peers| {
        peers
            .iter()
            .any(|p| p["name"] == peer && p["connected"] == true)
    })
}

/// The `q` quantile (0..=1) of `delays`, by nearest rank.
pub fn quantile(delays: &[Duration], q: f64) -> Duration {
    let mut sorted = delays.to_vec();
    sorted.sort_unstable();
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_lists_parents_first_and_counts_the_nodes() {
        let shape = TreeShape {
            cities: 2,
            counties_per_city: 3,
            towns_per_county: 4,
        };
        let plan = shape.plan();
        assert_eq!(plan.len(), shape.nodes());
        assert_eq!(shape.nodes(), 1 + 2 + 6 + 24);
        for (i, (_, parent)) in plan.iter().enumerate() {
            if let Some(p) = parent {
                assert!(plan[..i].iter().any(|(n, _)| n == p), "{p} after its child");
            }
        }
        let d: Vec<Duration> = (1..=10).map(Duration::from_millis).collect();
        assert_eq!(quantile(&d, 0.5), Duration::from_millis(5));
        assert_eq!(quantile(&d, 1.0), Duration::from_millis(10));
    }
}
