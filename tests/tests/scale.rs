//! Province scale, the CI-sized run: 61 real daemons in four tiers on loopback (the general
//! office, 4 cities, 8 counties, 48 townships), each dialing its parent, every relay an admin.
//! The townships flush periodically (as a province's leaves would, so that 48 nodes' fsyncs do
//! not share one disk's queue with the relays'), the relays at every write. A write at a
//! township in one city must reach every node, six hops away at the far end; the suite prints
//! each write's median and slowest arrival (the benchmark's `scale` group is the 1,000-node
//! figure). Bounds here are generous waits, not speed targets.

use std::time::Duration;

use officesync_tests::tree::{quantile, Tree, TreeShape, ROOT};

const SHAPE: TreeShape = TreeShape {
    cities: 4,
    counties_per_city: 2,
    towns_per_county: 6,
};

#[test]
fn a_township_write_reaches_all_61_nodes_of_four_tiers() {
    let tree = Tree::start(SHAPE, "", |config| {
        if config.name.starts_with("town-") {
            config.durability = "periodic".to_owned();
            config.flush_interval_ms = Some(100);
        }
    });
    assert_eq!(tree.nodes.len(), 61);
    let linked = tree
        .wait_linked(Duration::from_secs(180))
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("61 nodes linked {linked:?} after the last start");
    // From townships in different cities, and once from the general office down.
    for (i, from) in ["town-0-0-0", "town-3-1-5", "town-2-0-3", ROOT]
        .into_iter()
        .enumerate()
    {
        let key = format!("scale/{i}");
        let delays = tree
            .propagation(from, "situation", &key, Duration::from_secs(90))
            .unwrap_or_else(|e| panic!("{e}"));
        let far = tree
            .nodes
            .iter()
            .zip(&delays)
            .filter(|(n, _)| n.name().starts_with("town-") && n.name() != from)
            .map(|(_, d)| *d)
            .max()
            .unwrap_or_default();
        eprintln!(
            "write at {from}: every node in {:?} (median {:?}, farthest township {far:?})",
            quantile(&delays, 1.0),
            quantile(&delays, 0.5)
        );
        // Every node holds the very value written.
        for n in &tree.nodes {
            let record = n
                .get("situation", &key)
                .unwrap_or_else(|| panic!("{key} missing at {}", n.name()));
            assert_eq!(record.value, key.as_bytes(), "at {}", n.name());
        }
    }
}
