//! Property tests of the merge rules (`merge::apply`, `local_context`, `winner`) and of
//! incremental digests over random causally valid histories of simulated replicas.

use officesync_protocol::merge::{self, Applied};
use officesync_protocol::{Digest, Dot, HlcClock, ReplicaId, ValueMeta, VersionHeader};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

/// Replica names and incarnations. Two incarnations of `hefei` (a wiped node that came back)
/// and names whose order differs from their index, so HLC ties are broken non-trivially.
const REPLICAS: [(&str, u32); 5] = [
    ("hefei", 0x1f3a_9c02),
    ("general-office", 1),
    ("beijing-office", 7),
    ("hefei", 2),
    ("anqing", 3),
];

/// Receivers accept any timestamp in the model: skew rejection is not what is tested here.
const NO_SKEW_LIMIT: u64 = u64::MAX;

type Siblings = Vec<VersionHeader>;

#[derive(Debug, Clone)]
enum Op {
    Write {
        replica: usize,
        key: usize,
        tombstone: bool,
        back_ms: u64,
    },
    Sync {
        from: usize,
        to: usize,
    },
}

#[derive(Debug, Clone)]
struct History {
    replicas: usize,
    keys: usize,
    ops: Vec<Op>,
}

impl History {
    fn writes(&self) -> usize {
        self.ops
            .iter()
            .filter(|op| matches!(op, Op::Write { .. }))
            .count()
    }
}

#[derive(Debug, Clone)]
struct Replica {
    id: ReplicaId,
    counter: u64,
    clock: HlcClock,
    keys: Vec<Siblings>,
    digest: Digest,
    /// Per key, every version this replica ever created or received (the model's oracle).
    seen: Vec<Siblings>,
}

struct Sim {
    replicas: Vec<Replica>,
    /// Every version ever created, in creation order, with its key index.
    created: Vec<(usize, VersionHeader)>,
}

fn key_name(key: usize) -> String {
    format!("k{key}")
}

fn replica_id(i: usize) -> ReplicaId {
    let (name, incarnation) = REPLICAS[i];
    ReplicaId::new(name, incarnation).expect("test replica names are valid")
}

fn new_replica(i: usize, keys: usize) -> Replica {
    Replica {
        id: replica_id(i),
        counter: 0,
        clock: HlcClock::new(),
        keys: vec![Vec::new(); keys],
        digest: Digest::default(),
        seen: vec![Vec::new(); keys],
    }
}

fn toggle(digest: &mut Digest, key: usize, v: &VersionHeader) {
    digest.toggle(&key_name(key), &v.dot, &v.value);
}

/// The rule under test. Every law goes through this one function.
fn apply(siblings: &mut Siblings, v: VersionHeader) -> Applied<VersionHeader> {
    merge::apply(siblings, v)
}

/// Applies `v` to a replica, keeping its digest up to date from the `Applied` result only.
fn apply_tracked(rep: &mut Replica, key: usize, v: VersionHeader) -> bool {
    if !rep.seen[key].iter().any(|s| s.dot == v.dot) {
        rep.seen[key].push(v.clone());
    }
    let inserted = v.clone();
    match apply(&mut rep.keys[key], v) {
        Applied::Duplicate | Applied::Obsolete => false,
        Applied::Inserted { removed } => {
            for r in &removed {
                toggle(&mut rep.digest, key, r);
            }
            toggle(&mut rep.digest, key, &inserted);
            true
        }
    }
}

fn local_write(rep: &mut Replica, key: usize, tombstone: bool, now_ms: u64) -> VersionHeader {
    rep.counter += 1;
    let value = if tombstone {
        ValueMeta::Tombstone
    } else {
        let bytes = format!("{}:{}:{}", rep.id, rep.counter, key);
        ValueMeta::of(Some(bytes.as_bytes()))
    };
    let v = VersionHeader {
        dot: Dot::new(rep.id.clone(), rep.counter),
        hlc: rep.clock.tick(now_ms),
        context: merge::local_context(&rep.keys[key]),
        value,
    };
    let inserted = apply_tracked(rep, key, v.clone());
    assert!(
        inserted,
        "a local write must always become a sibling: {v:?}"
    );
    assert_eq!(
        rep.keys[key].iter().map(|s| &s.dot).collect::<Vec<_>>(),
        vec![&v.dot],
        "a local write supersedes every sibling the node held"
    );
    v
}

/// Sends every current sibling of `from` to `to`; true when `to` changed.
fn sync(replicas: &mut [Replica], from: usize, to: usize, now_ms: u64) -> bool {
    let sent: Vec<Siblings> = replicas[from].keys.clone();
    let receiver = &mut replicas[to];
    let mut changed = false;
    for (key, siblings) in sent.into_iter().enumerate() {
        for v in siblings {
            receiver
                .clock
                .observe(v.hlc, now_ms, NO_SKEW_LIMIT)
                .expect("no skew limit in the model");
            changed |= apply_tracked(receiver, key, v);
        }
    }
    changed
}

fn simulate(h: &History) -> Sim {
    let mut replicas: Vec<Replica> = (0..h.replicas).map(|i| new_replica(i, h.keys)).collect();
    let mut created = Vec::new();
    for (idx, op) in h.ops.iter().enumerate() {
        let wall = 1_000 + 10 * idx as u64;
        match *op {
            Op::Write {
                replica,
                key,
                tombstone,
                back_ms,
            } => {
                let v = local_write(&mut replicas[replica], key, tombstone, wall - back_ms);
                created.push((key, v));
            }
            Op::Sync { from, to } => {
                sync(&mut replicas, from, to, wall);
            }
        }
    }
    Sim { replicas, created }
}

/// Every replica sends to every other until a full round changes nothing.
fn full_sync(replicas: &mut [Replica]) {
    let n = replicas.len();
    let mut rounds = 0;
    loop {
        let mut changed = false;
        for from in 0..n {
            for to in 0..n {
                if from != to {
                    changed |= sync(replicas, from, to, 1_000_000);
                }
            }
        }
        if !changed {
            break;
        }
        rounds += 1;
        assert!(rounds <= n + 1, "full sync did not quiesce");
    }
}

fn dots(siblings: &[VersionHeader]) -> Vec<Dot> {
    let mut d: Vec<Dot> = siblings.iter().map(|s| s.dot.clone()).collect();
    d.sort();
    d
}

fn winner_dot(siblings: &[VersionHeader]) -> Option<Dot> {
    merge::winner(siblings).map(|w| w.dot.clone())
}

fn maximal(all: &[VersionHeader]) -> Vec<Dot> {
    let max: Vec<VersionHeader> = all
        .iter()
        .filter(|v| !all.iter().any(|w| w.context.covers(&v.dot)))
        .cloned()
        .collect();
    dots(&max)
}

/// The winner by the documented rule (highest HLC, ties by origin id), computed independently.
fn expected_winner(siblings: &[VersionHeader]) -> Option<Dot> {
    let mut best: Option<&VersionHeader> = None;
    for s in siblings {
        best = match best {
            Some(b) if (b.hlc, &b.dot.origin) >= (s.hlc, &s.dot.origin) => Some(b),
            _ => Some(s),
        };
    }
    best.map(|b| b.dot.clone())
}

fn digest_from_scratch(keys: &[Siblings]) -> Digest {
    let mut d = Digest::default();
    for (key, siblings) in keys.iter().enumerate() {
        for s in siblings {
            toggle(&mut d, key, s);
        }
    }
    d
}

fn per_key(created: &[(usize, VersionHeader)], keys: usize) -> Vec<Siblings> {
    let mut out = vec![Vec::new(); keys];
    for (key, v) in created {
        out[*key].push(v.clone());
    }
    out
}

/// Applies `created[i]` for every `i` in `order` (skipping those `pick` refuses) to empty sets.
fn merge_in_order(
    created: &[(usize, VersionHeader)],
    keys: usize,
    order: &[usize],
    pick: impl Fn(usize) -> bool,
) -> Vec<Siblings> {
    let mut sets = vec![Vec::new(); keys];
    for &i in order {
        if pick(i) {
            let (key, v) = &created[i];
            apply(&mut sets[*key], v.clone());
        }
    }
    sets
}

/// Applies every sibling of `from` to `into`, as a sync of one sibling set does.
fn merge_sets(into: &[Siblings], from: &[Siblings]) -> Vec<Siblings> {
    let mut out = into.to_vec();
    for (key, siblings) in from.iter().enumerate() {
        for s in siblings {
            apply(&mut out[key], s.clone());
        }
    }
    out
}

fn assert_same(label: &str, got: &[Siblings], want: &[Siblings]) {
    for (key, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(dots(g), dots(w), "{label}: sibling set of key {key}");
        assert_eq!(g, w, "{label}: sibling headers of key {key}");
        assert_eq!(winner_dot(g), winner_dot(w), "{label}: winner of key {key}");
    }
}

fn assert_sorted(label: &str, sets: &[Siblings]) {
    for (key, s) in sets.iter().enumerate() {
        assert!(
            s.windows(2).all(|p| p[0].dot < p[1].dot),
            "{label}: siblings of key {key} not strictly sorted by dot"
        );
    }
}

const MAX_REPLICAS: usize = REPLICAS.len();
const MAX_KEYS: usize = 4;
const MAX_OPS: usize = 48;

/// Ops are drawn for the largest shape and folded onto the drawn one, and permutations and
/// masks are drawn over `MAX_OPS` indices, so nothing depends on an earlier draw and every
/// part of a failing case shrinks independently.
fn raw_op() -> impl Strategy<Value = Op> {
    // Wall time steps 10 ms per op; sometimes a clock is behind by whole steps, so it
    // goes backwards and two replicas' HLCs can tie exactly.
    let back = prop_oneof![3 => Just(0u64), 1 => (1u64..=6).prop_map(|steps| steps * 10)];
    let write = (
        0..MAX_REPLICAS,
        0..MAX_KEYS,
        prop::bool::weighted(0.25),
        back,
    )
        .prop_map(|(replica, key, tombstone, back_ms)| Op::Write {
            replica,
            key,
            tombstone,
            back_ms,
        });
    // `to` holds an offset here; `fold` turns it into a replica other than `from`.
    let sync = (0..MAX_REPLICAS, 0..MAX_REPLICAS - 1).prop_map(|(from, to)| Op::Sync { from, to });
    prop_oneof![3 => write, 2 => sync]
}

fn fold(op: Op, replicas: usize, keys: usize) -> Op {
    match op {
        Op::Write {
            replica,
            key,
            tombstone,
            back_ms,
        } => Op::Write {
            replica: replica % replicas,
            key: key % keys,
            tombstone,
            back_ms,
        },
        Op::Sync { from, to } => {
            let from = from % replicas;
            Op::Sync {
                from,
                to: (from + 1 + to % (replicas - 1)) % replicas,
            }
        }
    }
}

#[derive(Debug, Clone)]
struct Case {
    history: History,
    perm_a: Vec<usize>,
    perm_b: Vec<usize>,
    mask_a: Vec<bool>,
    mask_b: Vec<bool>,
}

fn permutation() -> impl Strategy<Value = Vec<usize>> {
    Just((0..MAX_OPS).collect::<Vec<usize>>()).prop_shuffle()
}

fn case() -> impl Strategy<Value = Case> {
    (
        2..=MAX_REPLICAS,
        1..=MAX_KEYS,
        prop::collection::vec(raw_op(), 0..MAX_OPS),
        permutation(),
        permutation(),
        prop::collection::vec(any::<bool>(), MAX_OPS),
        prop::collection::vec(any::<bool>(), MAX_OPS),
    )
        .prop_map(|(replicas, keys, ops, perm_a, perm_b, mask_a, mask_b)| {
            let history = History {
                replicas,
                keys,
                ops: ops.into_iter().map(|op| fold(op, replicas, keys)).collect(),
            };
            // Restrict the permutations of 0..MAX_OPS to the writes that exist.
            let w = history.writes();
            Case {
                perm_a: perm_a.into_iter().filter(|&i| i < w).collect(),
                perm_b: perm_b.into_iter().filter(|&i| i < w).collect(),
                history,
                mask_a,
                mask_b,
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig {
        // Cargo runs tests in the package root: keep regressions in protocol/proptest-regressions.
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/merge_laws.txt",
        ))),
        ..ProptestConfig::with_cases(256)
    })]

    #[test]
    fn merge_laws_hold_on_causal_histories(c in case()) {
        let keys = c.history.keys;
        let sim = simulate(&c.history);
        let created = &sim.created;
        let all = per_key(created, keys);
        let w = created.len();
        let in_order: Vec<usize> = (0..w).collect();
        let reversed: Vec<usize> = (0..w).rev().collect();

        // Every replica holds the maximal elements of what it has seen, and its digest,
        // kept incrementally from `Applied`, equals the digest recomputed from scratch.
        for rep in &sim.replicas {
            for (key, siblings) in rep.keys.iter().enumerate() {
                prop_assert_eq!(dots(siblings), maximal(&rep.seen[key]), "replica {} key {}", rep.id, key);
            }
            prop_assert_eq!(rep.digest, digest_from_scratch(&rep.keys), "incremental digest of {}", rep.id);
        }

        // The result is exactly the maximal elements, and the winner follows the rule.
        let reference = merge_in_order(created, keys, &in_order, |_| true);
        assert_sorted("creation order", &reference);
        for key in 0..keys {
            prop_assert_eq!(dots(&reference[key]), maximal(&all[key]), "maximal elements of key {}", key);
            prop_assert_eq!(winner_dot(&reference[key]), expected_winner(&reference[key]), "winner of key {}", key);
            prop_assert_eq!(reference[key].is_empty(), all[key].is_empty());
        }

        // No write is lost: each is a sibling or superseded by one.
        for (key, v) in created {
            let fin = &reference[*key];
            prop_assert!(
                fin.iter().any(|f| f.dot == v.dot || f.context.covers(&v.dot)),
                "write {} of key {} lost", v.dot, key
            );
        }

        // Order independence.
        for (label, order) in [("perm a", &c.perm_a), ("perm b", &c.perm_b), ("reversed", &reversed)] {
            let got = merge_in_order(created, keys, order, |_| true);
            assert_sorted(label, &got);
            assert_same(label, &got, &reference);
        }

        // Idempotence: re-applying is a no-op and says Duplicate exactly for current siblings.
        let mut again = reference.clone();
        for &i in &c.perm_a {
            let (key, v) = &created[i];
            if c.mask_a[i] || c.mask_b[i] {
                let expected = if again[*key].iter().any(|s| s.dot == v.dot) {
                    Applied::Duplicate
                } else {
                    Applied::Obsolete
                };
                prop_assert_eq!(apply(&mut again[*key], v.clone()), expected, "re-applying {}", v.dot);
            }
        }
        assert_same("re-applied subset", &again, &reference);
        let mut twice = vec![Vec::new(); keys];
        for &i in &c.perm_b {
            let (key, v) = &created[i];
            let first = apply(&mut twice[*key], v.clone());
            let second = apply(&mut twice[*key], v.clone());
            let expected = match first {
                Applied::Inserted { .. } => Applied::Duplicate,
                _ => Applied::Obsolete,
            };
            prop_assert_eq!(second, expected, "second application of {}", v.dot);
        }
        assert_same("each applied twice", &twice, &reference);
        assert_same("set merged into itself", &merge_sets(&reference, &reference), &reference);

        // Associativity: merge two halves separately, then the sets into each other.
        let a = merge_in_order(created, keys, &c.perm_a, |i| c.mask_a[i]);
        let b = merge_in_order(created, keys, &c.perm_b, |i| !c.mask_a[i]);
        assert_same("A then B", &merge_sets(&a, &b), &reference);
        assert_same("B then A", &merge_sets(&b, &a), &reference);
        // And with three parts: (P0 + P1) + P2 == P0 + (P1 + P2).
        let p0 = merge_in_order(created, keys, &c.perm_a, |i| !c.mask_a[i]);
        let p1 = merge_in_order(created, keys, &c.perm_b, |i| c.mask_a[i] && !c.mask_b[i]);
        let p2 = merge_in_order(created, keys, &in_order, |i| c.mask_a[i] && c.mask_b[i]);
        let left = merge_sets(&merge_sets(&p0, &p1), &p2);
        let right = merge_sets(&p0, &merge_sets(&p1, &p2));
        assert_same("(P0+P1)+P2", &left, &reference);
        assert_same("P0+(P1+P2)", &right, &reference);

        // HLC: a version is later than everything it supersedes (clocks observe what they receive).
        for vs in &all {
            for v in vs {
                for u in vs {
                    if v.context.covers(&u.dot) {
                        prop_assert!(v.hlc > u.hlc, "{} supersedes {} with an earlier HLC", v.dot, u.dot);
                    }
                }
            }
        }

        // Convergence after a full sync: same siblings, winners and digests everywhere,
        // equal to the maximal elements of every write ever made.
        let mut replicas = sim.replicas;
        full_sync(&mut replicas);
        let first = &replicas[0];
        assert_same("replica 0 after full sync", &first.keys, &reference);
        for rep in &replicas {
            assert_same(rep.id.as_str(), &rep.keys, &first.keys);
            prop_assert_eq!(rep.digest, first.digest, "digest of {}", rep.id);
            prop_assert_eq!(rep.digest, digest_from_scratch(&rep.keys), "incremental digest of {}", rep.id);
        }
    }
}

#[test]
fn concurrent_writes_are_kept_as_siblings() {
    let mut reps = vec![new_replica(0, 1), new_replica(1, 1)];
    let a = local_write(&mut reps[0], 0, false, 1_000);
    let b = local_write(&mut reps[1], 0, false, 1_005);
    assert!(sync(&mut reps, 0, 1, 1_010));
    assert!(sync(&mut reps, 1, 0, 1_010));
    for rep in &reps {
        assert_eq!(
            dots(&rep.keys[0]),
            dots(&[a.clone(), b.clone()]),
            "{}",
            rep.id
        );
        assert_eq!(
            winner_dot(&rep.keys[0]),
            Some(b.dot.clone()),
            "highest HLC wins"
        );
        assert_eq!(rep.digest, digest_from_scratch(&rep.keys));
    }
    assert_eq!(reps[0].digest, reps[1].digest);
    assert!(!sync(&mut reps, 0, 1, 1_020), "already converged");

    // A later write at either node supersedes both siblings everywhere.
    let c = local_write(&mut reps[0], 0, true, 1_030);
    assert!(c.context.covers(&a.dot) && c.context.covers(&b.dot));
    assert!(sync(&mut reps, 0, 1, 1_040));
    for rep in &reps {
        assert_eq!(dots(&rep.keys[0]), vec![c.dot.clone()], "{}", rep.id);
    }
    assert_eq!(reps[0].digest, reps[1].digest);
}

#[test]
fn concurrent_delete_and_write_tie_on_hlc_break_by_origin() {
    // Both offices write at the same wall millisecond: equal HLCs, the higher origin id wins.
    let mut reps = vec![new_replica(1, 1), new_replica(2, 1)];
    let g = local_write(&mut reps[0], 0, true, 5_000);
    let bj = local_write(&mut reps[1], 0, false, 5_000);
    assert_eq!(g.hlc, bj.hlc);
    full_sync(&mut reps);
    let want = if g.dot.origin > bj.dot.origin {
        &g
    } else {
        &bj
    };
    for rep in &reps {
        assert_eq!(
            rep.keys[0].len(),
            2,
            "a tombstone is a sibling like any version"
        );
        assert_eq!(winner_dot(&rep.keys[0]), Some(want.dot.clone()));
    }
    assert_eq!(reps[0].digest, reps[1].digest);
}
