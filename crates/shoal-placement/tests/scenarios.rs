//! Hand-picked placements: growth and shrinkage of a small cluster, edge
//! cases of the input, determinism, zones, `moves` and `under_replicated`.

mod common;

use shoal_placement::{
    Move, NodeSpec, PLACEMENT_FORMAT, PlacementMap, Topology, balance_bounds, moves, place,
    under_replicated,
};
use shoal_types::{BUCKET_COUNT, BucketId, NodeId};

use common::*;

fn node(id: &str, zone: &str, capacity: u32) -> NodeSpec {
    NodeSpec { id: NodeId(id.into()), zone: zone.into(), capacity }
}

fn equal_nodes(count: usize) -> Vec<NodeSpec> {
    (1..=count).map(|i| node(&format!("node-{i}"), "z", 1)).collect()
}

/// Places `nodes` after `previous`, prints the moves, checks rules 1 and 3 and
/// that the number of copies equals the lower bound. Returns the map and the
/// number of copies.
fn step(previous: Option<&PlacementMap>, nodes: &[NodeSpec], rf: usize) -> (PlacementMap, usize) {
    let next = place(previous, nodes, rf, Topology::Dynamic);
    let (live, k) = check_rules_1_and_3(&next, nodes, rf);
    let plain = plain_bounds(&live, k);
    let bounds: Vec<(usize, usize)> = live.iter().map(|n| plain[&n.id]).collect();
    let bound = lower_bound(previous, &live, k, &bounds);
    let copies = added(previous, &next);
    if let Some(prev) = previous {
        let mut per_pair = std::collections::BTreeMap::<(String, String), usize>::new();
        for m in moves(prev, &next) {
            let from = m.from.map_or("-".to_string(), |n| n.0);
            let to = m.to.map_or("-".to_string(), |n| n.0);
            *per_pair.entry((from, to)).or_default() += 1;
        }
        println!(
            "{} -> {} nodes: {copies} copies (lower bound {bound}), counts {:?}",
            prev.replica_counts().len(),
            live.len(),
            next.replica_counts().values().collect::<Vec<_>>()
        );
        for ((from, to), n) in per_pair {
            println!("    {from:>8} -> {to:<8} {n}");
        }
    }
    assert_eq!(copies, bound);
    assert_no_cheaper_map(previous, &next, nodes, rf);
    (next, copies)
}

#[test]
fn grow_and_shrink_three_four_five_four() {
    let (m3, _) = step(None, &equal_nodes(3), 3);
    assert_eq!(m3.epoch, 1);
    let (m4, c4) = step(Some(&m3), &equal_nodes(4), 3);
    // 768 replicas, 192 per node: the new node takes 192, nothing else moves.
    assert_eq!(c4, 192);
    assert_eq!(m4.epoch, 2);
    let (m5, c5) = step(Some(&m4), &equal_nodes(5), 3);
    // 768 / 5 = 153.6, bounds [153, 154]. node-5 needs at least 153 (D = 153);
    // the old nodes may keep at most 4 * 154 = 616 (A = 152). So 153.
    assert_eq!(c5, 153);
    let (m4b, c4b) = step(Some(&m5), &equal_nodes(4), 3);
    // node-5 leaves: exactly its replicas move.
    assert_eq!(c4b, m5.replica_counts()[&NodeId("node-5".into())]);
    assert!(moves(&m5, &m4b).iter().all(|m| m.from == Some(NodeId("node-5".into()))));
}

#[test]
fn same_inputs_same_map_whatever_the_order() {
    let mut nodes: Vec<NodeSpec> = (0..9)
        .map(|i| node(&format!("n{i}"), ["a", "b", "c"][i % 3], 1 + (i as u32 % 4)))
        .collect();
    let first = place(None, &nodes, 3, Topology::Dynamic);
    let grown = place(Some(&first), &nodes[..7], 3, Topology::Dynamic);
    for rotation in 1..nodes.len() {
        nodes.rotate_left(rotation);
        nodes.swap(0, rotation % 3 + 1);
        assert_eq!(place(None, &nodes, 3, Topology::Dynamic), first);
        let mut seven: Vec<NodeSpec> =
            nodes.iter().filter(|n| n.id.0.as_str() < "n7").cloned().collect();
        seven.reverse();
        assert_eq!(place(Some(&first), &seven, 3, Topology::Dynamic), grown);
    }
}

#[test]
fn unchanged_inputs_keep_the_epoch() {
    let nodes = equal_nodes(4);
    let first = place(None, &nodes, 3, Topology::Dynamic);
    let again = place(Some(&first), &nodes, 3, Topology::Dynamic);
    assert_eq!(again, first);
    // A new topology alone is a new map.
    let stat = place(Some(&first), &nodes, 3, Topology::Static);
    assert_eq!(stat.epoch, 2);
    assert_eq!(stat.buckets, first.buckets);
    assert_eq!(stat.topology, Topology::Static);
}

#[test]
fn replication_factor_above_node_count() {
    let nodes = equal_nodes(2);
    let map = place(None, &nodes, 5, Topology::Dynamic);
    check_rules_1_and_3(&map, &nodes, 5);
    assert_eq!(map.replication_factor, 5);
    assert!(BucketId::all().all(|b| map.replicas(b).len() == 2));
    // A third node brings every bucket to three replicas: 256 copies.
    let (grown, copies) = step(Some(&map), &equal_nodes(3), 5);
    assert_eq!(copies, 256);
    assert!(BucketId::all().all(|b| {
        let replicas = grown.replicas(b);
        replicas.len() == 3 && map.replicas(b).iter().all(|n| replicas.contains(n))
    }));
}

#[test]
fn empty_node_set() {
    let map = place(None, &[], 3, Topology::Dynamic);
    assert_eq!(map.epoch, 1);
    assert_eq!(map.format, PLACEMENT_FORMAT);
    assert!(map.buckets.iter().all(Vec::is_empty));
    assert_eq!(map.buckets.len(), BUCKET_COUNT);
    // All nodes gone: every replica is dropped, nothing is copied.
    let before = place(None, &equal_nodes(3), 3, Topology::Dynamic);
    let after = place(Some(&before), &[], 3, Topology::Dynamic);
    assert!(after.buckets.iter().all(Vec::is_empty));
    assert_eq!(after.epoch, before.epoch + 1);
    let dropped = moves(&before, &after);
    assert_eq!(dropped.len(), 768);
    assert!(dropped.iter().all(|m| m.to.is_none()));
    // From the empty map at epoch 0 to an empty placement: nothing changes.
    let empty = PlacementMap::empty(3, Topology::Dynamic);
    assert_eq!(place(Some(&empty), &[], 3, Topology::Dynamic), empty);
}

#[test]
fn single_node() {
    let nodes = [node("solo", "", 7)];
    let map = place(None, &nodes, 3, Topology::Dynamic);
    check_rules_1_and_3(&map, &nodes, 3);
    assert!(BucketId::all().all(|b| map.replicas(b) == [NodeId("solo".into())]));
    assert_eq!(map.replica_counts()[&NodeId("solo".into())], 256);
}

#[test]
fn duplicates_and_zero_capacity() {
    // A repeated id counts once, with its first entry by (zone, capacity).
    let messy = [node("b", "z", 0), node("a", "z", 1), node("b", "y", 3), node("a", "z", 1)];
    let clean = [node("a", "z", 1), node("b", "y", 3)];
    let map = place(None, &messy, 1, Topology::Dynamic);
    assert_eq!(map, place(None, &clean, 1, Topology::Dynamic));
    check_rules_1_and_3(&map, &messy, 1);
    let counts = map.replica_counts();
    assert_eq!((counts[&NodeId("a".into())], counts[&NodeId("b".into())]), (64, 192));
    // Capacity 0 counts as 1.
    let zero = [node("a", "z", 0), node("b", "z", 1)];
    let counts = place(None, &zero, 1, Topology::Dynamic).replica_counts();
    assert_eq!((counts[&NodeId("a".into())], counts[&NodeId("b".into())]), (128, 128));
}

#[test]
fn capacities_weight_the_counts() {
    let nodes = [node("a", "z", 1), node("b", "z", 2), node("c", "z", 3), node("d", "z", 2)];
    let map = place(None, &nodes, 2, Topology::Dynamic);
    check_rules_1_and_3(&map, &nodes, 2);
    let counts: Vec<usize> = map.replica_counts().into_values().collect();
    // 512 * (1, 2, 3, 2) / 8
    assert_eq!(counts, vec![64, 128, 192, 128]);
    // Doubling a's capacity moves only what a now lacks: 512 / 9 * 2 = 113.8.
    let heavier = [node("a", "z", 2), node("b", "z", 2), node("c", "z", 3), node("d", "z", 2)];
    let (_, copies) = step(Some(&map), &heavier, 2);
    assert_eq!(copies, 113 - 64);
}

#[test]
fn zones_spread_replicas() {
    // Three zones of two nodes, rf 3: one replica per zone in every bucket.
    let nodes: Vec<NodeSpec> =
        (0..6).map(|i| node(&format!("n{i}"), ["a", "b", "c"][i / 2], 1)).collect();
    let map = place(None, &nodes, 3, Topology::Dynamic);
    check_rules_1_and_3(&map, &nodes, 3);
    assert!(map.replica_counts().values().all(|&c| c == 128));
    // Losing n0 leaves n1 alone in zone a: it must take every bucket.
    let after = place(Some(&map), &nodes[1..], 3, Topology::Dynamic);
    check_rules_1_and_3(&after, &nodes[1..], 3);
    assert_eq!(after.replica_counts()[&NodeId("n1".into())], 256);
    // Only n0's replicas were copied.
    assert_eq!(added(Some(&map), &after), 128);
}

#[test]
fn zone_outweighs_capacity() {
    // A lone small node in zone "edge" with rf 3 over 2 zones holds every bucket.
    let nodes = [node("small", "edge", 1), node("x", "core", 4), node("y", "core", 4)];
    let bounds = balance_bounds(&nodes, 3);
    assert_eq!(bounds[&NodeId("small".into())].min, 256);
    let map = place(None, &nodes, 3, Topology::Dynamic);
    check_rules_1_and_3(&map, &nodes, 3);
}

/// How many buckets each node is first in.
fn leaders(map: &PlacementMap) -> std::collections::BTreeMap<NodeId, usize> {
    let mut leaders = std::collections::BTreeMap::new();
    for b in BucketId::all() {
        *leaders.entry(map.replicas(b)[0].clone()).or_default() += 1;
    }
    leaders
}

#[test]
fn first_replica_is_spread_and_kept_unless_a_node_lacks_its_share() {
    let map = place(None, &equal_nodes(5), 3, Topology::Dynamic);
    // Every node leads its share: 256 / 5, rounded either way.
    let first = leaders(&map);
    assert_eq!(first.len(), 5, "{first:?}");
    assert!(first.values().all(|&c| (51..=52).contains(&c)), "{first:?}");
    // A sixth node leads its share of its buckets too. Firsts change only
    // where balance needs it: about the newcomer's share, not every bucket.
    let grown = place(Some(&map), &equal_nodes(6), 3, Topology::Dynamic);
    let after = leaders(&grown);
    assert!(after.values().all(|&c| (42..=43).contains(&c)), "{after:?}");
    let changed = BucketId::all()
        .filter(|b| {
            let was = &map.replicas(*b)[0];
            grown.replicas(*b).contains(was) && &grown.replicas(*b)[0] != was
        })
        .count();
    assert!(changed <= 64, "{changed} buckets changed their first replica");
    // Placing again changes nothing.
    assert_eq!(place(Some(&grown), &equal_nodes(6), 3, Topology::Dynamic), grown);
}

#[test]
fn a_node_that_comes_back_leads_its_share_again() {
    let nodes = equal_nodes(3);
    let map = place(None, &nodes, 3, Topology::Dynamic);
    // One dies: the others lead its buckets; it comes back, last in every
    // bucket, and is brought forward in a third of them.
    let two = place(Some(&map), &nodes[..2], 3, Topology::Dynamic);
    assert_eq!(leaders(&two).len(), 2);
    let back = place(Some(&two), &nodes, 3, Topology::Dynamic);
    let led = leaders(&back);
    assert!(led.values().all(|&c| (85..=86).contains(&c)), "{led:?}");
}

#[test]
fn moves_pair_removals_with_additions() {
    let mut before = PlacementMap::empty(2, Topology::Dynamic);
    let mut after = before.clone();
    let id = |s: &str| NodeId(s.into());
    before.buckets[1] = vec![id("a"), id("b")];
    after.buckets[1] = vec![id("b"), id("c")];
    before.buckets[2] = vec![id("a")];
    after.buckets[3] = vec![id("d")];
    assert_eq!(
        moves(&before, &after),
        vec![
            Move { bucket: BucketId(1), from: Some(id("a")), to: Some(id("c")) },
            Move { bucket: BucketId(2), from: Some(id("a")), to: None },
            Move { bucket: BucketId(3), from: None, to: Some(id("d")) },
        ]
    );
}

#[test]
fn under_replicated_buckets() {
    let nodes = equal_nodes(4);
    let map = place(None, &nodes, 3, Topology::Static);
    let ids: Vec<NodeId> = nodes.iter().map(|n| n.id.clone()).collect();
    assert!(under_replicated(&map, &ids).is_empty());
    // node-1 is down: the buckets it held have two live replicas of three.
    let down = under_replicated(&map, &ids[1..]);
    let held: Vec<BucketId> =
        BucketId::all().filter(|b| map.replicas(*b).contains(&ids[0])).collect();
    assert_eq!(down, held);
    // With two live nodes only two replicas are expected.
    let two = under_replicated(&map, &ids[2..]);
    assert!(
        two.iter().all(|b| map.replicas(*b).iter().filter(|n| ids[2..].contains(n)).count() < 2)
    );
    assert_eq!(under_replicated(&map, &[]), Vec::<BucketId>::new());
}

#[test]
fn nearly_full_nodes_cost_more_than_the_simple_bound() {
    // Documented in tests/common/mod.rs: the closed-form bound is not always
    // attained; the certificate shows the placement is still the cheapest.
    let five = equal_nodes(5);
    let m5 = place(None, &five, 3, Topology::Dynamic);
    let four = &five[1..];
    let m4 = place(Some(&m5), four, 3, Topology::Dynamic);
    check_rules_1_and_3(&m4, four, 3);
    assert_no_cheaper_map(Some(&m5), &m4, four, 3);
    let live = normalise(four);
    let bounds: Vec<(usize, usize)> = live.iter().map(|_| (192, 192)).collect();
    let bound = lower_bound(Some(&m5), &live, 3, &bounds);
    let copies = added(Some(&m5), &m4);
    println!("5 -> 4 nodes from a fresh map: {copies} copies, simple bound {bound}");
    assert_eq!(bound, m5.replica_counts()[&NodeId("node-1".into())]);
    assert!(copies >= bound);
}

#[test]
#[should_panic(expected = "a negative cycle")]
fn the_certificate_catches_a_wasteful_map() {
    // Make a cheapest map worse: exchange two replicas between two buckets so
    // that both become copies. Counts and zones are unchanged, so only the
    // certificate can object.
    let m4 = place(None, &equal_nodes(4), 3, Topology::Dynamic);
    let five = equal_nodes(5);
    let mut m5 = place(Some(&m4), &five, 3, Topology::Dynamic);
    let has = |map: &PlacementMap, b: usize, n: &NodeId| map.buckets[b].contains(n);
    let mut found = None;
    'search: for x in five.iter().map(|n| &n.id) {
        for y in five.iter().map(|n| &n.id) {
            for bx in 0..256 {
                for by in 0..256 {
                    if has(&m5, bx, x)
                        && !has(&m5, bx, y)
                        && !has(&m4, bx, y)
                        && has(&m5, by, y)
                        && !has(&m5, by, x)
                        && !has(&m4, by, x)
                    {
                        found = Some((x.clone(), y.clone(), bx, by));
                        break 'search;
                    }
                }
            }
        }
    }
    let (x, y, bx, by) = found.expect("two buckets to exchange");
    for r in &mut m5.buckets[bx] {
        if *r == x {
            *r = y.clone();
        }
    }
    for r in &mut m5.buckets[by] {
        if *r == y {
            *r = x.clone();
        }
    }
    check_rules_1_and_3(&m5, &five, 3);
    assert_no_cheaper_map(Some(&m4), &m5, &five, 3);
}
