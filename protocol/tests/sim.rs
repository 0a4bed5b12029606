//! Seeded discrete-event simulation of many sync sessions in virtual time.
//!
//! Every node runs the real [`Session`](officesync_protocol::sync::Session) state machine
//! against an in-memory replica built on the real merge rules and digests; links carry
//! connections whose streams are reliable and ordered (QUIC's job) but delayed at random and
//! unordered across streams, and the world drops connections, partitions links, crashes nodes
//! (losing everything not flushed) and rots stored versions. After the faults stop, every
//! node must converge: same vectors, digests and sibling sets, every acknowledged write
//! present or superseded, and no version that no node wrote.
//!
//! One seed in four of each topology has a hostile office (`sim/hostile.rs`): a node with a
//! valid identity that tampers with its batches (poisoned contexts, future stamps) and injects
//! crafted frames (other incarnations, bare completions, probe floods). There the checks hold
//! for the honest nodes among themselves: every acknowledged honest write present or
//! superseded by a version some node wrote, no vector naming an incarnation no node has, and
//! versions refused or sessions closed only on sessions with the hostile node.
//!
//! The seed fixes everything (topology size, workload, faults, delays). On failure the seed
//! and a replay command are printed; `SIM_SEED=<n>` runs exactly that seed, `SIM_SEEDS=<n>`
//! runs `n` seeds per topology instead of the default.

mod sim {
    pub mod driver;
    pub mod faults;
    pub mod hostile;
    pub mod replica;
    pub mod rng;
    mod scenarios;
    pub mod world;
}

use std::time::Instant;

use std::collections::BTreeMap;

use officesync_protocol::sync::VerifyOutcome;
use officesync_protocol::{merge, ReplicaId, Version};
use sim::hostile::Hostile;
use sim::rng::Rng;
use sim::world::{NodeSpec, Params, World, COLLECTIONS};

/// Interval of periodic digest rounds in runs that rot stored versions.
const REPAIR_MS: u64 = 4_000;

/// Seeds per topology in the default run.
const DEFAULT_SEEDS: u64 = 70;

/// Virtual time allowed for convergence once the faults stop.
const HEAL_LIMIT_MS: u64 = 600_000;

/// Attacks of the hostile office in a seed that has one.
const HOSTILE_ATTACKS: usize = 40;

/// Whether seed `seed` has a hostile office: one in four of each topology's seeds.
fn is_hostile_seed(seed: u64) -> bool {
    (seed / 3) % 4 == 3
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Topology {
    HubAndSpoke,
    Tree,
    Mesh,
}

impl Topology {
    /// The topology seed `seed` runs (replaying a seed needs no other input).
    fn of(seed: u64) -> Self {
        match seed % 3 {
            0 => Self::HubAndSpoke,
            1 => Self::Tree,
            _ => Self::Mesh,
        }
    }

    fn index(self) -> u64 {
        match self {
            Self::HubAndSpoke => 0,
            Self::Tree => 1,
            Self::Mesh => 2,
        }
    }
}

fn node(name: String, relay: bool) -> NodeSpec {
    NodeSpec { name, relay }
}

/// The nodes, links and workload of `seed`.
fn params(seed: u64, rng: &mut Rng) -> Params {
    let mut nodes = Vec::new();
    let mut links = Vec::new();
    match Topology::of(seed) {
        Topology::HubAndSpoke => {
            nodes.push(node("general-office".into(), true));
            for i in 1..=rng.range(19, 22) {
                nodes.push(node(format!("office-{i:02}"), false));
                links.push((nodes.len() - 1, 0));
            }
        }
        Topology::Tree => {
            nodes.push(node("general-office".into(), true));
            let regions = 3;
            for r in 1..=regions {
                nodes.push(node(format!("region-{r}"), true));
                links.push((r, 0));
            }
            for i in 1..=rng.range(16, 18) {
                nodes.push(node(format!("city-{i:02}"), false));
                let region = 1 + (i as usize) % regions;
                links.push((nodes.len() - 1, region));
            }
        }
        Topology::Mesh => {
            // A partial mesh of 20-22 nodes: two admins relay (linked to each other and to
            // every office, since offices accept others' versions only through a relay), and
            // every office also links to two other offices directly.
            let n = rng.range(20, 22) as usize;
            for i in 0..n {
                nodes.push(node(format!("mesh-{i:02}"), i < 2));
            }
            links.push((1, 0));
            for a in 2..n {
                links.push((a, 0));
                links.push((a, 1));
            }
            for a in 2..n {
                for _ in 0..2 {
                    let b = 2 + rng.range(0, (n - 3) as u64) as usize;
                    if b != a && !links.contains(&(a, b)) && !links.contains(&(b, a)) {
                        links.push((a, b));
                    }
                }
            }
        }
    }
    // Half the runs rot stored versions and need periodic repair; the others run without it,
    // so the log alone must converge there.
    let rots = if rng.percent(50) {
        0
    } else {
        rng.range(1, 2) as usize
    };
    // One seed in four per topology has a hostile office (drawn last, so the other seeds run
    // exactly as they did before there was one).
    let hostile = is_hostile_seed(seed).then(|| {
        let offices: Vec<usize> = (0..nodes.len()).filter(|n| !nodes[*n].relay).collect();
        offices[rng.index(offices.len())]
    });
    Params {
        hostile,
        attacks: if hostile.is_some() {
            HOSTILE_ATTACKS
        } else {
            0
        },
        writes: rng.range(100, 160) as usize,
        active_ms: 20_000,
        crashes: rng.range(0, 3) as usize,
        drops: rng.range(2, 8) as usize,
        partitions: rng.range(0, 3) as usize,
        rots,
        repair_ms: if rots > 0 { REPAIR_MS } else { 0 },
        auto_flush: true,
        batch_max_versions: rng.range(2, 16) as usize,
        batch_max_bytes: rng.range(1_024, 8_192) as usize,
        nodes,
        links,
    }
}

/// What one run did (or, summed, many).
#[derive(Debug, Default)]
struct Summary {
    seeds: u64,
    min_nodes: usize,
    max_nodes: usize,
    writes: u64,
    acked: u64,
    crashes: u64,
    drops: u64,
    partitions: u64,
    rots: u64,
    sessions: u64,
    idle_closes: u64,
    repairs: u64,
    messages: u64,
    bytes: u64,
    converged_at_ms: u64,
    /// Seeds with a hostile office.
    hostile_seeds: u64,
    /// Its attacks sent, by kind.
    attacks: BTreeMap<&'static str, u64>,
    /// Versions the honest nodes refused, by kind of reason.
    refused: BTreeMap<&'static str, u64>,
    /// Sessions the honest nodes closed, by kind of reason.
    closed: BTreeMap<&'static str, u64>,
}

impl Summary {
    fn add(&mut self, o: &Summary) {
        self.seeds += o.seeds;
        self.min_nodes = if self.min_nodes == 0 {
            o.min_nodes
        } else {
            self.min_nodes.min(o.min_nodes)
        };
        self.max_nodes = self.max_nodes.max(o.max_nodes);
        self.writes += o.writes;
        self.acked += o.acked;
        self.crashes += o.crashes;
        self.drops += o.drops;
        self.partitions += o.partitions;
        self.rots += o.rots;
        self.sessions += o.sessions;
        self.idle_closes += o.idle_closes;
        self.repairs += o.repairs;
        self.messages += o.messages;
        self.bytes += o.bytes;
        self.converged_at_ms = self.converged_at_ms.max(o.converged_at_ms);
        self.hostile_seeds += o.hostile_seeds;
        for (mine, theirs) in [
            (&mut self.attacks, &o.attacks),
            (&mut self.refused, &o.refused),
            (&mut self.closed, &o.closed),
        ] {
            for (k, n) in theirs {
                *mine.entry(k).or_default() += n;
            }
        }
    }
}

/// Runs seed `seed` to the end and checks it.
fn run_seed(seed: u64) -> Result<Summary, String> {
    let mut rng = Rng::new(seed.wrapping_mul(0x9e37_79b9));
    let p = params(seed, &mut rng);
    let active = p.active_ms;
    let mut w = World::new(seed, p);
    w.run_until(active);
    w.heal();
    let deadline = w.now + HEAL_LIMIT_MS;
    while !w.converged() {
        if w.now >= deadline {
            return Err(format!(
                "no convergence {HEAL_LIMIT_MS} ms after healing ({})\n{}",
                check(&w)
                    .err()
                    .unwrap_or_else(|| "the final checks pass".into()),
                describe(&w)
            ));
        }
        let t = w.now + 250;
        w.run_until(t);
    }
    let converged_at_ms = w.now;
    // Let acknowledgements settle, then verify every collection on every session.
    let t = w.now + 3_000;
    w.run_until(t);
    let before = w.stats.verified.len();
    let asked = w.verify_all();
    let deadline = w.now + 60_000;
    while w.stats.verified.len() - before < asked && w.now < deadline {
        let t = w.now + 250;
        w.run_until(t);
    }
    check(&w)?;
    let outcomes = &w.stats.verified[before..];
    if outcomes.len() < asked {
        return Err(format!(
            "{asked} verifications asked, {} reported",
            outcomes.len()
        ));
    }
    if let Some(bad) = outcomes.iter().find(|(_, o)| *o != VerifyOutcome::Equal) {
        return Err(format!("verify after convergence reported {bad:?}"));
    }
    let lag = w.total_lag();
    if lag != 0 {
        return Err(format!(
            "sessions report {lag} versions of lag after convergence\n{}",
            w.lag_report()
        ));
    }
    let st = &w.stats;
    let h = w.hostile.as_ref();
    let of = |f: fn(&Hostile) -> &BTreeMap<&'static str, u64>| h.map(f).cloned();
    Ok(Summary {
        hostile_seeds: h.map_or(0, |_| 1),
        attacks: of(|h| &h.sent).unwrap_or_default(),
        refused: of(|h| &h.refused).unwrap_or_default(),
        closed: of(|h| &h.closed).unwrap_or_default(),
        seeds: 1,
        min_nodes: w.nodes.len(),
        max_nodes: w.nodes.len(),
        writes: st.writes,
        acked: w.acked.len() as u64,
        crashes: st.crashes,
        drops: st.drops,
        partitions: st.partitions,
        rots: st.rots,
        sessions: st.sessions,
        idle_closes: st.idle_closes,
        repairs: st.mismatches,
        messages: st.messages,
        bytes: st.bytes,
        converged_at_ms,
    })
}

/// The final checks on every honest node (the hostile one, if any, is left out).
fn check(w: &World) -> Result<(), String> {
    if let Some(e) = w.stats.protocol_errors.first() {
        return Err(format!(
            "{} sessions closed with a protocol error, first: {e}",
            w.stats.protocol_errors.len()
        ));
    }
    if let Some(reason) = w.hostile.as_ref().and_then(|h| h.unexplained.first()) {
        return Err(format!(
            "an honest session refused the hostile node's input for no attack's reason: {reason}"
        ));
    }
    if w.stats.rejected > 0 {
        return Err(format!(
            "{} versions refused by the relay rule",
            w.stats.rejected
        ));
    }
    let first = &w.nodes[0];
    let hostile = w
        .hostile
        .as_ref()
        .map(|h| w.nodes[h.node].spec.name.as_str());
    let ids: Vec<&ReplicaId> = w.nodes.iter().map(|n| &n.replica.id).collect();
    for n in w.honest_nodes() {
        for a in w
            .acked
            .iter()
            .filter(|a| Some(a.dot.origin.node_name()) != hostile)
        {
            holds_or_supersedes(w, n, a)?;
        }
        for (c, coll) in &n.replica.colls {
            if let Some((o, _)) = coll.vv.iter().find(|(o, _)| !ids.contains(o)) {
                return Err(format!(
                    "{}'s vector of {c} names {o}, an incarnation no node has",
                    n.spec.name
                ));
            }
        }
        for c in COLLECTIONS {
            let mine = n.replica.colls.get(c);
            let theirs = first.replica.colls.get(c);
            let keys =
                |x: Option<&sim::replica::Coll>| x.map(|c| c.keys.clone()).unwrap_or_default();
            if n.replica.digest(c) != first.replica.digest(c) || keys(mine) != keys(theirs) {
                return Err(format!(
                    "{} and {} differ in {c}",
                    n.spec.name, first.spec.name
                ));
            }
            for (key, sibs) in mine.iter().flat_map(|c| c.keys.iter()) {
                let theirs = theirs.and_then(|c| c.keys.get(key));
                let pick = |s: &[Version]| merge::winner(s).map(|w| w.dot.clone());
                if pick(sibs) != theirs.and_then(|s| pick(s)) {
                    return Err(format!(
                        "{} and {} pick different winners of {c}/{key}",
                        n.spec.name, first.spec.name
                    ));
                }
            }
            for v in mine.iter().flat_map(|c| c.versions()) {
                if w.registry.get(&(c.to_owned(), v.dot.clone())) != Some(v) {
                    return Err(format!(
                        "{} holds {} in {c} that no node wrote",
                        n.spec.name, v.dot
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Node `n` holds acknowledged write `a`, or a version some node wrote (so with a context of
/// what its node had seen) that supersedes it.
fn holds_or_supersedes(w: &World, n: &sim::world::Node, a: &Version) -> Result<(), String> {
    let sibs = n
        .replica
        .colls
        .get(&a.collection)
        .and_then(|c| c.keys.get(&a.key))
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    if sibs.iter().any(|v| v.dot == a.dot) {
        return Ok(());
    }
    let written = |v: &Version| w.registry.get(&(v.collection.clone(), v.dot.clone())) == Some(v);
    match sibs.iter().find(|v| v.context.covers(&a.dot)) {
        Some(v) if written(v) => Ok(()),
        Some(v) => Err(format!(
            "{}: acknowledged write {} of {}/{} superseded by {}, which no node wrote as it \
             is ({}; context {:?}, stamp {} ms)",
            n.spec.name,
            a.dot,
            a.collection,
            a.key,
            v.dot,
            match w.registry.get(&(v.collection.clone(), v.dot.clone())) {
                Some(_) => "a tampered copy of a written version",
                None => "never written",
            },
            v.context,
            v.hlc.ms
        )),
        None => Err(format!(
            "{} lost acknowledged write {} of {}/{}",
            n.spec.name, a.dot, a.collection, a.key
        )),
    }
}

fn describe(w: &World) -> String {
    let mut out = String::new();
    out += &format!(
        "rots {} crashes {} repairs {}\n",
        w.stats.rots, w.stats.crashes, w.stats.mismatches
    );
    for c in COLLECTIONS {
        let a = &w.nodes[0];
        for n in &w.nodes[1..] {
            let (x, y) = (a.replica.colls.get(c), n.replica.colls.get(c));
            let (Some(x), Some(y)) = (x, y) else { continue };
            for (k, sa) in &x.keys {
                let sb = y.keys.get(k);
                if sb != Some(sa) {
                    out += &format!(
                        "{c}/{k}: {} has {:?}\n  {} has {:?}\n",
                        a.spec.name,
                        sa.iter()
                            .map(|v| (v.dot.to_string(), v.context.clone(), v.value.is_none()))
                            .collect::<Vec<_>>(),
                        n.spec.name,
                        sb.map(|s| s
                            .iter()
                            .map(|v| (v.dot.to_string(), v.context.clone(), v.value.is_none()))
                            .collect::<Vec<_>>())
                    );
                }
            }
            for (k, sb) in &y.keys {
                if !x.keys.contains_key(k) {
                    out += &format!(
                        "{c}/{k}: only {} has {:?}\n",
                        n.spec.name,
                        sb.iter().map(|v| v.dot.to_string()).collect::<Vec<_>>()
                    );
                }
            }
            break;
        }
    }
    for n in &w.nodes {
        out += &format!("{} up={} dirty={}", n.spec.name, n.up, n.replica.dirty());
        for c in COLLECTIONS {
            let (d, vv) = n.replica.digest(c);
            out += &format!(" {c}:{}:{}", &d.to_hex()[..8], vv.total());
        }
        out += "\n";
    }
    out += &format!("established connections: {}\n", w.established());
    out
}

/// Seeds of `topology` to run: `SIM_SEED` alone if set (when it is of this topology).
fn seeds(topology: Topology) -> Vec<u64> {
    if let Ok(s) = std::env::var("SIM_SEED") {
        let seed: u64 = s.trim().parse().expect("SIM_SEED is a number");
        return if Topology::of(seed) == topology {
            vec![seed]
        } else {
            vec![]
        };
    }
    let n = std::env::var("SIM_SEEDS")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(DEFAULT_SEEDS);
    (0..n).map(|i| i * 3 + topology.index()).collect()
}

fn run_topology(topology: Topology) {
    let started = Instant::now();
    let mut total = Summary::default();
    for seed in seeds(topology) {
        let t = Instant::now();
        match run_seed(seed) {
            Ok(s) => {
                if std::env::var("SIM_SEED").is_ok() {
                    println!("seed {seed}: {s:?} in {:?}", t.elapsed());
                }
                total.add(&s);
            }
            Err(e) => panic!(
                "simulation seed {seed} ({topology:?}) failed: {e}\n\
                 replay: SIM_SEED={seed} cargo test -p officesync-protocol --test sim -- --nocapture"
            ),
        }
    }
    println!(
        "{topology:?}: {} seeds, {}-{} nodes, {} writes ({} acknowledged), {} crashes, \
         {} connection drops, {} partitions, {} rotted versions, {} sessions ({} idle \
         timeouts), {} repairs, {} messages / {} kB, converged by {} ms virtual, {:?} wall",
        total.seeds,
        total.min_nodes,
        total.max_nodes,
        total.writes,
        total.acked,
        total.crashes,
        total.drops,
        total.partitions,
        total.rots,
        total.sessions,
        total.idle_closes,
        total.repairs,
        total.messages,
        total.bytes / 1000,
        total.converged_at_ms,
        started.elapsed()
    );
    if total.hostile_seeds > 0 {
        let list = |m: &BTreeMap<&str, u64>| {
            m.iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!(
            "{topology:?} hostile office in {} seeds: attacks sent: {}; versions refused: {}; \
             sessions closed: {}",
            total.hostile_seeds,
            list(&total.attacks),
            list(&total.refused),
            list(&total.closed)
        );
        // The attacker has teeth only if its attacks arrive and are refused for what they are.
        if total.hostile_seeds >= 10 {
            let refused = ["causal-context", "clock-skew", "incarnation", "relay-rule"];
            for kind in refused {
                assert!(total.refused.contains_key(kind), "no refusal for {kind}");
            }
            // (A skew-retry close needs the session to outlive the stamp's wait, which the
            // timing of a topology may not give; the session unit tests cover it.)
            for kind in ["probe-flood", "vector-too-long"] {
                assert!(
                    total.closed.contains_key(kind),
                    "no session closed for {kind}"
                );
            }
            assert_eq!(total.attacks.len(), 9, "attacks sent: {:?}", total.attacks);
        }
    }
}

#[test]
fn hub_and_spoke() {
    run_topology(Topology::HubAndSpoke);
}

#[test]
fn three_tier_tree() {
    run_topology(Topology::Tree);
}

#[test]
fn mesh() {
    run_topology(Topology::Mesh);
}
