//! Property tests: random sequences of joins, leaves, capacity changes and
//! zone changes, each followed by `place`, checking the rules of the crate
//! docs after every step.
//!
//! - `membership_changes_move_the_minimum`: zones impose no constraint (one
//!   zone for all, or one zone per node), capacities are random or all equal,
//!   the replication factor is fixed. The copies are at least the closed-form
//!   lower bound `max(A, D)` of `common/mod.rs`; no cheaper map exists (the
//!   optimality certificate of `common/mod.rs`); and where the copies equal
//!   `max(A, D)`, rule 2 is checked node by node.
//! - `zones_and_replication_changes`: random zones and replication factor
//!   changes; rules 1 and 3, the lower bound and the certificate.

mod common;

use std::collections::BTreeMap;

use proptest::prelude::*;
use shoal_placement::{NodeSpec, PlacementMap, Topology, balance_bounds, place};
use shoal_types::NodeId;

use common::*;

/// How zones are assigned in a run.
#[derive(Clone, Copy, Debug)]
enum Zones {
    /// Every node in the same zone.
    Single,
    /// Every node in a zone of its own.
    PerNode,
    /// Zones drawn from a few names.
    Random,
}

/// One change of the cluster.
#[derive(Clone, Debug)]
enum Op {
    /// A new node joins.
    Join { zone: u8, capacity: u32 },
    /// The node at this index (modulo the node count) leaves.
    Leave(usize),
    /// The node at this index gets a new capacity.
    Capacity(usize, u32),
    /// The node at this index moves to another zone.
    Zone(usize, u8),
    /// The replication factor changes (only where the run allows it).
    Replication(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u8..3, 0u32..5).prop_map(|(zone, capacity)| Op::Join { zone, capacity }),
        2 => any::<usize>().prop_map(Op::Leave),
        2 => (any::<usize>(), 0u32..5).prop_map(|(i, c)| Op::Capacity(i, c)),
        1 => (any::<usize>(), 0u8..3).prop_map(|(i, z)| Op::Zone(i, z)),
        1 => (1usize..5).prop_map(Op::Replication),
    ]
}

/// The cluster as the monitor would see it.
struct Cluster {
    zones: Zones,
    nodes: Vec<NodeSpec>,
    next_id: usize,
    rf: usize,
    zone_changes: usize,
}

impl Cluster {
    fn zone_name(&mut self, id: &str, drawn: u8) -> String {
        self.zone_changes += 1;
        match self.zones {
            Zones::Single => "z".to_string(),
            Zones::PerNode => format!("{id}-{}", self.zone_changes),
            Zones::Random => format!("zone-{drawn}"),
        }
    }

    fn join(&mut self, zone: u8, capacity: u32) {
        let id = format!("n{:02}", self.next_id);
        self.next_id += 1;
        let zone = self.zone_name(&id, zone);
        self.nodes.push(NodeSpec { id: NodeId(id), zone, capacity });
    }

    fn apply(&mut self, op: &Op, replication_changes: bool) {
        let len = self.nodes.len();
        match *op {
            Op::Join { zone, capacity } => self.join(zone, capacity),
            Op::Leave(i) if len > 0 => {
                self.nodes.remove(i % len);
            }
            Op::Capacity(i, capacity) if len > 0 => self.nodes[i % len].capacity = capacity,
            Op::Zone(i, zone) if len > 0 => {
                let id = self.nodes[i % len].id.0.clone();
                self.nodes[i % len].zone = self.zone_name(&id, zone);
            }
            Op::Replication(rf) if replication_changes => self.rf = rf,
            _ => {}
        }
    }
}

/// Leader balance: a node first in more buckets than its share
/// (`ceil(replicas / k)`) has no bucket with a replica on a node first in
/// fewer than its own share (the first could have gone there).
fn check_leaders(map: &PlacementMap) {
    let k = map.buckets.iter().map(Vec::len).max().unwrap_or(0);
    if k < 2 {
        return;
    }
    let mut held: BTreeMap<&NodeId, usize> = BTreeMap::new();
    let mut firsts: BTreeMap<&NodeId, usize> = BTreeMap::new();
    for replicas in &map.buckets {
        for id in replicas {
            *held.entry(id).or_default() += 1;
        }
        if let Some(f) = replicas.first() {
            *firsts.entry(f).or_default() += 1;
        }
    }
    let share = |id: &NodeId| held.get(id).copied().unwrap_or(0).div_ceil(k);
    let first_of = |id: &NodeId| firsts.get(id).copied().unwrap_or(0);
    for replicas in &map.buckets {
        let Some(f) = replicas.first() else { continue };
        if first_of(f) > share(f) {
            for other in &replicas[1..] {
                assert!(
                    first_of(other) >= share(other),
                    "{f:?} leads {} (share {}) while {other:?} leads {} (share {})",
                    first_of(f),
                    share(f),
                    first_of(other),
                    share(other)
                );
            }
        }
    }
}

/// Checks that apply to every step, whatever the zones: rules 1 and 3, the
/// epoch, and that placing again is a no-op, also with the nodes reversed.
fn check_step(previous: Option<&PlacementMap>, next: &PlacementMap, nodes: &[NodeSpec], rf: usize) {
    check_rules_1_and_3(next, nodes, rf);
    match previous {
        Some(prev) if prev.buckets == next.buckets && prev.replication_factor == rf => {
            assert_eq!(next, prev)
        }
        Some(prev) => assert_eq!(next.epoch, prev.epoch + 1),
        None => assert_eq!(next.epoch, 1),
    }
    // Replica order is free but for leader balance: the first replicas are
    // spread over the nodes as far as the replica sets allow.
    check_leaders(next);
    assert_eq!(&place(Some(next), nodes, rf, Topology::Dynamic), next);
    let mut reversed = nodes.to_vec();
    reversed.reverse();
    assert_eq!(&place(previous, &reversed, rf, Topology::Dynamic), next);
}

/// Rule 2, node by node, when zones impose nothing: a live node loses
/// replicas only if it held more than its minimum, gains only if it held
/// fewer than its maximum, and never does both.
fn check_stability(
    previous: &PlacementMap,
    next: &PlacementMap,
    live: &[NodeSpec],
    bounds: &BTreeMap<NodeId, (usize, usize)>,
) {
    for node in live {
        let held = |map: &PlacementMap, b: usize| map.buckets[b].contains(&node.id);
        let lost = (0..256).filter(|&b| held(previous, b) && !held(next, b)).count();
        let gained = (0..256).filter(|&b| !held(previous, b) && held(next, b)).count();
        let before = (0..256).filter(|&b| held(previous, b)).count();
        let (lo, hi) = bounds[&node.id];
        assert!(lost == 0 || gained == 0, "{} lost {lost} and gained {gained}", node.id);
        assert!(lost == 0 || before > lo, "{} lost {lost} from {before}, min {lo}", node.id);
        assert!(gained == 0 || before < hi, "{} gained {gained} at {before}, max {hi}", node.id);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 150, ..ProptestConfig::default() })]

    #[test]
    fn membership_changes_move_the_minimum(
        per_node in any::<bool>(),
        equal_capacities in any::<bool>(),
        rf in 1usize..5,
        initial in proptest::collection::vec((0u8..3, 0u32..5), 0..6),
        ops in proptest::collection::vec(op(), 1..8),
    ) {
        let zones = if per_node { Zones::PerNode } else { Zones::Single };
        let mut cluster = Cluster { zones, nodes: Vec::new(), next_id: 0, rf, zone_changes: 0 };
        for (zone, capacity) in initial {
            cluster.join(zone, capacity);
        }
        let mut previous: Option<PlacementMap> = None;
        for op in std::iter::once(None).chain(ops.iter().map(Some)) {
            if let Some(op) = op {
                cluster.apply(op, false);
            }
            if equal_capacities {
                cluster.nodes.iter_mut().for_each(|n| n.capacity = 1);
            }
            let next = place(previous.as_ref(), &cluster.nodes, rf, Topology::Dynamic);
            check_step(previous.as_ref(), &next, &cluster.nodes, rf);

            let live = normalise(&cluster.nodes);
            let k = rf.min(live.len());
            let plain = plain_bounds(&live, k);
            // Without zone constraints the bounds are the plain weighted ones.
            let reported: BTreeMap<NodeId, (usize, usize)> = balance_bounds(&cluster.nodes, rf)
                .into_iter()
                .map(|(id, b)| (id, (b.min, b.max)))
                .collect();
            prop_assert_eq!(&reported, &plain);
            let bounds: Vec<(usize, usize)> = live.iter().map(|n| plain[&n.id]).collect();
            let bound = lower_bound(previous.as_ref(), &live, k, &bounds);
            let copies = added(previous.as_ref(), &next);
            prop_assert!(copies >= bound);
            assert_no_cheaper_map(previous.as_ref(), &next, &cluster.nodes, rf);
            if let (true, Some(prev)) = (copies == bound, &previous) {
                check_stability(prev, &next, &live, &plain);
            }
            previous = Some(next);
        }
    }

    #[test]
    fn zones_and_replication_changes(
        rf in 1usize..5,
        initial in proptest::collection::vec((0u8..3, 0u32..5), 0..7),
        ops in proptest::collection::vec(op(), 1..8),
    ) {
        let mut cluster =
            Cluster { zones: Zones::Random, nodes: Vec::new(), next_id: 0, rf, zone_changes: 0 };
        for (zone, capacity) in initial {
            cluster.join(zone, capacity);
        }
        let mut previous: Option<PlacementMap> = None;
        for op in std::iter::once(None).chain(ops.iter().map(Some)) {
            if let Some(op) = op {
                cluster.apply(op, true);
            }
            let rf = cluster.rf;
            let next = place(previous.as_ref(), &cluster.nodes, rf, Topology::Dynamic);
            check_step(previous.as_ref(), &next, &cluster.nodes, rf);

            let live = normalise(&cluster.nodes);
            let k = rf.min(live.len());
            let reported = balance_bounds(&cluster.nodes, rf);
            let bounds: Vec<(usize, usize)> =
                live.iter().map(|n| (reported[&n.id].min, reported[&n.id].max)).collect();
            let bound = lower_bound(previous.as_ref(), &live, k, &bounds);
            prop_assert!(added(previous.as_ref(), &next) >= bound);
            assert_no_cheaper_map(previous.as_ref(), &next, &cluster.nodes, rf);
            previous = Some(next);
        }
    }
}
