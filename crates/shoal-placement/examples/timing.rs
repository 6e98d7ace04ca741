//! How long `place` takes and how many copies it asks for, for a few cluster
//! sizes. Run with `cargo run --release -p shoal-placement --example timing`.

use std::time::Instant;

use shoal_placement::{NodeSpec, PlacementMap, Topology, moves, place};
use shoal_types::NodeId;

fn nodes(count: usize, zones: usize) -> Vec<NodeSpec> {
    (0..count)
        .map(|i| NodeSpec {
            id: NodeId(format!("node-{i:03}")),
            zone: format!("zone-{}", i % zones),
            capacity: 1 + (i % 3) as u32,
        })
        .collect()
}

fn timed(previous: Option<&PlacementMap>, nodes: &[NodeSpec]) -> (PlacementMap, f64) {
    let runs = 5;
    let start = Instant::now();
    let mut map = None;
    for _ in 0..runs {
        map = Some(place(previous, nodes, 3, Topology::Dynamic));
    }
    let ms = start.elapsed().as_secs_f64() * 1000.0 / runs as f64;
    (map.expect("at least one run"), ms)
}

fn copies(a: &PlacementMap, b: &PlacementMap) -> usize {
    moves(a, b).iter().filter(|m| m.to.is_some()).count()
}

fn main() {
    println!(
        "| nodes | zones | initial (ms) | join (ms) | join copies | leave (ms) | leave copies |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (count, zones) in [(10, 1), (10, 3), (30, 3), (100, 1), (100, 3), (100, 100), (300, 3)] {
        let all = nodes(count + 1, zones);
        let base = &all[..count];
        let (first, t_initial) = timed(None, base);
        let (joined, t_join) = timed(Some(&first), &all);
        let fewer: Vec<NodeSpec> = base.iter().skip(1).cloned().collect();
        let (left, t_leave) = timed(Some(&first), &fewer);
        println!(
            "| {count} | {zones} | {t_initial:.1} | {t_join:.1} | {} | {t_leave:.1} | {} |",
            copies(&first, &joined),
            copies(&first, &left)
        );
    }
}
