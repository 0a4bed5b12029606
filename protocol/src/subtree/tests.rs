//! Summaries: what a relay covers and its meet, the cover the general office picks, and (by
//! property) that the vector standing for a reader, and the frontier made of such vectors,
//! never pass what the reader holds.

use proptest::prelude::*;

use super::*;
use crate::frontier::{decide, Decision, Reader};

fn rid(s: &str) -> ReplicaId {
    ReplicaId::new(s, 1).expect("valid test name")
}

fn vv(entries: &[(&str, u64)]) -> VersionVector {
    entries.iter().map(|(o, n)| (rid(o), *n)).collect()
}

fn covers(entries: &[(&str, u64)]) -> BTreeMap<String, u64> {
    entries.iter().map(|(n, t)| ((*n).to_owned(), *t)).collect()
}

const NOW: u64 = 100_000;
const TTL: u64 = 10_000;

#[test]
fn a_relay_meets_its_own_vector_its_fresh_readers_and_its_fresh_children() {
    let own = vv(&[("t1", 9), ("hub", 5)]);
    let t1 = vv(&[("t1", 7), ("hub", 5)]);
    let gone = vv(&[("t1", 1)]);
    let direct = [
        DirectReader {
            node: "t1",
            vv: &t1,
            heard_ms: NOW,
        },
        // Heard longer than the TTL ago: left out, or it would hold the meet back forever.
        DirectReader {
            node: "t2",
            vv: &gone,
            heard_ms: NOW - TTL - 1,
        },
    ];
    let below = Summary {
        meet: vv(&[("t1", 6), ("hub", 4)]),
        covers: covers(&[
            ("county", NOW - 50),
            ("t3", NOW - 80),
            ("t4", NOW - TTL - 5),
        ]),
    };
    let stale = Summary {
        meet: VersionVector::new(),
        covers: covers(&[("county-b", NOW - TTL * 2)]),
    };
    let children = [
        ChildSummary {
            generated_ms: NOW - 50,
            interval_ms: 1_000,
            summary: &below,
        },
        ChildSummary {
            generated_ms: NOW - TTL * 2,
            interval_ms: 1_000,
            summary: &stale,
        },
    ];
    let inputs = SummaryInputs {
        node: "city",
        own: &own,
        frontier: &VersionVector::new(),
        direct: &direct,
        children: &children,
        now_ms: NOW,
        ttl_ms: Some(TTL),
    };
    let s = summarize(&inputs).expect("few names");
    assert_eq!(s.meet, vv(&[("t1", 6), ("hub", 4)]));
    assert_eq!(
        s.covers,
        covers(&[
            ("city", NOW),
            ("county", NOW - 50),
            ("t1", NOW),
            ("t3", NOW - 80)
        ])
    );
    // Origins at or below the frontier the relay holds are left out of the meet.
    let frontier = vv(&[("hub", 4), ("t1", 2)]);
    let s = summarize(&SummaryInputs {
        frontier: &frontier,
        ..inputs.clone()
    })
    .expect("few names");
    assert_eq!(s.meet, vv(&[("t1", 6)]));
    // With no TTL known yet, a child's report counts for a few of its intervals, and every name.
    let s = summarize(&SummaryInputs {
        ttl_ms: None,
        ..inputs.clone()
    })
    .expect("few names");
    assert_eq!(s.meet, vv(&[("t1", 1)]), "t2 counts");
    assert!(s.covers.contains_key("t4") && !s.covers.contains_key("county-b"));
    // A leaf-less relay covers itself.
    let s = summarize(&SummaryInputs {
        direct: &[],
        children: &[],
        ..inputs
    })
    .expect("one name");
    assert_eq!((s.meet, s.covers), (own.clone(), covers(&[("city", NOW)])));
}

#[test]
fn a_relay_with_more_readers_than_it_may_name_leaves_the_collection_out() {
    let own = VersionVector::new();
    let names: Vec<String> = (0..MAX_COVERED).map(|i| format!("t{i}")).collect();
    let direct: Vec<DirectReader<'_>> = names
        .iter()
        .map(|n| DirectReader {
            node: n,
            vv: &own,
            heard_ms: NOW,
        })
        .collect();
    let inputs = SummaryInputs {
        node: "county",
        own: &own,
        frontier: &own,
        direct: &direct[..MAX_COVERED - 1],
        children: &[],
        now_ms: NOW,
        ttl_ms: Some(TTL),
    };
    assert_eq!(
        summarize(&inputs).map(|s| s.covers.len()),
        Some(MAX_COVERED)
    );
    let inputs = SummaryInputs {
        direct: &direct,
        ..inputs
    };
    assert_eq!(summarize(&inputs), None);
}

#[test]
fn the_general_office_takes_the_narrowest_fresh_cover() {
    let county = Summary {
        meet: vv(&[("t1", 6)]),
        covers: covers(&[("county", NOW), ("t1", NOW - 10)]),
    };
    let city = Summary {
        meet: vv(&[("t1", 5)]),
        covers: covers(&[("city", NOW), ("county", NOW), ("t1", NOW - 10)]),
    };
    let old = Summary {
        meet: vv(&[("t1", 9)]),
        covers: covers(&[("t1", NOW)]),
    };
    let stale_name = Summary {
        meet: vv(&[("t1", 8)]),
        covers: covers(&[("t1", NOW - TTL - 1)]),
    };
    let offered = [
        Offered {
            reporter: "city",
            generated_ms: NOW,
            summary: &city,
        },
        Offered {
            reporter: "county",
            generated_ms: NOW - 100,
            summary: &county,
        },
        Offered {
            reporter: "old",
            generated_ms: NOW - TTL - 1,
            summary: &old,
        },
        Offered {
            reporter: "other",
            generated_ms: NOW,
            summary: &stale_name,
        },
    ];
    assert_eq!(
        choose_cover("t1", &offered, NOW, TTL),
        Some(&vv(&[("t1", 6)]))
    );
    assert_eq!(
        choose_cover("city", &offered, NOW, TTL),
        Some(&vv(&[("t1", 5)]))
    );
    assert_eq!(choose_cover("t9", &offered, NOW, TTL), None);
    assert_eq!(choose_cover("t1", &offered[2..], NOW, TTL), None);
}

#[test]
fn a_reports_fields_are_checked_and_an_oversized_cover_is_refused() {
    let s = Summary::from_parts(
        [("t1@00000001", 5), ("not an id", 9), ("t2@00000001", 0)],
        [("t1", 7), ("Bad Name", 8)],
    )
    .expect("few names");
    assert_eq!(s.meet, vv(&[("t1", 5)]));
    assert_eq!(s.covers, covers(&[("t1", 7)]));
    let names: Vec<String> = (0..=MAX_COVERED).map(|i| format!("t{i}")).collect();
    let many = names.iter().map(|n| (n.as_str(), 1));
    assert_eq!(Summary::from_parts([], many), None);
}

/// Origins of the property tests.
const ORIGINS: [&str; 3] = ["o0", "o1", "o2"];

fn vector(counters: &[u64]) -> VersionVector {
    ORIGINS
        .iter()
        .zip(counters)
        .filter(|(_, n)| **n > 0)
        .map(|(o, n)| (rid(o), *n))
        .collect()
}

/// `a <= b` pointwise (a missing origin is 0).
fn below(a: &VersionVector, b: &VersionVector) -> bool {
    a.iter().all(|(o, n)| n <= b.get(o))
}

/// One node of a random province: node 0 is the general office, every other node's parent has
/// a smaller index.
#[derive(Debug, Clone)]
struct Planned {
    parent: usize,
    truth: Vec<u64>,
    /// How far below the truth its parent's (session) knowledge of it is.
    lag: Vec<u64>,
    /// Its parent last heard it longer than the TTL ago.
    stale: bool,
    /// The frontier its relay holds (scaled down to the province's meet).
    frontier: Vec<u64>,
}

fn plan() -> impl Strategy<Value = Vec<Planned>> {
    let node = (
        any::<prop::sample::Index>(),
        prop::collection::vec(0..20u64, 3),
        prop::collection::vec(0..5u64, 3),
        prop::bool::weighted(0.15),
        prop::collection::vec(0..20u64, 3),
    );
    prop::collection::vec(node, 1..24).prop_map(|nodes| {
        nodes
            .into_iter()
            .enumerate()
            .map(|(i, (p, truth, lag, stale, frontier))| Planned {
                parent: p.index(i + 1),
                truth,
                lag,
                stale,
                frontier,
            })
            .collect()
    })
}

/// Names: `n0` is the general office.
fn name(i: usize) -> String {
    format!("n{i}")
}

/// What a node's parent knows of each node: its true vector lowered by its planned lag.
fn known_of(nodes: &[Planned], truth: &[VersionVector]) -> Vec<VersionVector> {
    nodes
        .iter()
        .zip(truth)
        .map(|(p, t)| {
            let lowered: Vec<u64> = ORIGINS
                .iter()
                .zip(&p.lag)
                .map(|(o, l)| t.get(&rid(o)).saturating_sub(*l))
                .collect();
            vector(&lowered)
        })
        .collect()
}

/// Every relay's summary of the one collection, built bottom up as the daemons would.
fn summaries(nodes: &[Planned], truth: &[VersionVector]) -> Vec<Option<Summary>> {
    let names: Vec<String> = (0..nodes.len()).map(name).collect();
    let known = known_of(nodes, truth);
    let mut out: Vec<Option<Summary>> = vec![None; nodes.len()];
    for i in (1..nodes.len()).rev() {
        let kids: Vec<usize> = (i + 1..nodes.len())
            .filter(|k| nodes[*k].parent == i)
            .collect();
        if kids.is_empty() {
            continue; // a leaf sends none
        }
        let direct: Vec<DirectReader<'_>> = kids
            .iter()
            .map(|k| DirectReader {
                node: &names[*k],
                vv: &known[*k],
                heard_ms: if nodes[*k].stale { NOW - TTL - 1 } else { NOW },
            })
            .collect();
        let children: Vec<ChildSummary<'_>> = kids
            .iter()
            .filter_map(|k| out[*k].as_ref())
            .map(|s| ChildSummary {
                generated_ms: NOW,
                interval_ms: 1_000,
                summary: s,
            })
            .collect();
        let frontier = vector(&nodes[i].frontier);
        let s = summarize(&SummaryInputs {
            node: &names[i],
            own: &truth[i],
            frontier: &frontier,
            direct: &direct,
            children: &children,
            now_ms: NOW,
            ttl_ms: Some(TTL),
        });
        out[i] = s;
    }
    out
}

/// What the general office is offered: each relay's summary (by index in `names`), made now.
fn offered_by<'a>(names: &'a [String], built: &'a [Option<Summary>]) -> Vec<Offered<'a>> {
    built
        .iter()
        .enumerate()
        .filter_map(|(i, s)| {
            Some(Offered {
                reporter: &names[i],
                generated_ms: NOW,
                summary: s.as_ref()?,
            })
        })
        .collect()
}

proptest! {
    #[test]
    fn the_vector_standing_for_a_reader_never_passes_what_it_holds(nodes in plan()) {
        let truth: Vec<VersionVector> = nodes.iter().map(|p| vector(&p.truth)).collect();
        let built = summaries(&nodes, &truth);
        let names: Vec<String> = (0..nodes.len()).map(name).collect();
        let offered = offered_by(&names, &built);
        for i in 1..nodes.len() {
            if let Some(v) = choose_cover(&names[i], &offered, NOW, TTL) {
                prop_assert!(below(v, &truth[i]), "{}: {v:?} above {:?}", names[i], truth[i]);
            }
        }
    }

    #[test]
    fn a_frontier_made_with_covers_never_passes_a_counted_reader(nodes in plan()) {
        let truth: Vec<VersionVector> = nodes.iter().map(|p| vector(&p.truth)).collect();
        let all = meet(truth.iter()).unwrap_or_default();
        // The published frontier, and those the relays hold, never passed every reader.
        let scaled: Vec<Planned> = nodes
            .iter()
            .map(|p| {
                let f: Vec<u64> = ORIGINS
                    .iter()
                    .zip(&p.frontier)
                    .map(|(o, f)| (*f).min(all.get(&rid(o))))
                    .collect();
                Planned { frontier: f, ..p.clone() }
            })
            .collect();
        let previous = vector(&scaled[0].frontier);
        let built = summaries(&scaled, &truth);
        let names: Vec<String> = (0..nodes.len()).map(name).collect();
        let offered = offered_by(&names, &built);
        // The general office's sessions know its children; the rest only by a cover.
        let known = known_of(&scaled, &truth);
        let readers: Vec<Reader<'_>> = (1..nodes.len())
            .map(|i| Reader {
                node: &names[i],
                vv: if scaled[i].parent == 0 {
                    Some(&known[i])
                } else {
                    choose_cover(&names[i], &offered, NOW, TTL)
                },
                heard_ms: if scaled[i].stale { NOW - TTL - 1 } else { NOW },
            })
            .collect();
        if let Decision::Frontier { frontier, excluded, .. } =
            decide(&truth[0], &readers, &previous, NOW, TTL)
        {
            for i in 1..nodes.len() {
                if !excluded.contains(&names[i]) {
                    prop_assert!(
                        below(&frontier, &truth[i]),
                        "{}: frontier {frontier:?} above {:?}", names[i], truth[i]
                    );
                }
            }
        }
    }
}
