//! `place`: builds the flow network described in the crate docs, solves it and
//! turns the flow back into ordered replica lists.

use std::collections::BTreeMap;

use shoal_types::placement::{PLACEMENT_FORMAT, PlacementMap, Topology};
use shoal_types::{BUCKET_COUNT, NodeId};

use crate::NodeSpec;
use crate::flow::Network;
use crate::ideal::{Share, shares};

/// The live nodes after normalisation, with their zones and balance bounds.
pub(crate) struct Cluster {
    /// Sorted by id, one entry per id, capacity at least 1.
    pub nodes: Vec<NodeSpec>,
    /// Zone index of each node; zones are numbered in name order.
    pub zone_of: Vec<usize>,
    /// The number of distinct zones.
    pub zone_count: usize,
    /// Replicas per bucket: `min(replication_factor, nodes)`.
    pub k: usize,
    /// The ideal share of each node.
    pub shares: Vec<Share>,
}

impl Cluster {
    /// Normalises `nodes` (see the crate docs) and computes the ideal shares.
    pub fn new(nodes: &[NodeSpec], replication_factor: usize) -> Cluster {
        let mut sorted: Vec<NodeSpec> = nodes.to_vec();
        sorted.sort_by(|a, b| (&a.id, &a.zone, a.capacity).cmp(&(&b.id, &b.zone, b.capacity)));
        sorted.dedup_by(|later, first| later.id == first.id);
        for node in &mut sorted {
            node.capacity = node.capacity.max(1);
        }
        let mut zone_names: Vec<&str> = sorted.iter().map(|n| n.zone.as_str()).collect();
        zone_names.sort_unstable();
        zone_names.dedup();
        let zone_of: Vec<usize> = sorted
            .iter()
            .map(|n| zone_names.binary_search(&n.zone.as_str()).expect("every zone was collected"))
            .collect();
        let zone_count = zone_names.len();
        let k = replication_factor.min(sorted.len());

        let mut capacities: Vec<Vec<u128>> = vec![Vec::new(); zone_count];
        for (node, &z) in sorted.iter().zip(&zone_of) {
            capacities[z].push(u128::from(node.capacity));
        }
        let by_zone = shares(&capacities, k);
        // Back from zone order to node order: nodes of a zone appear in id order
        // in both.
        let mut next = vec![0; zone_count];
        let shares = zone_of
            .iter()
            .map(|&z| {
                next[z] += 1;
                by_zone[z][next[z] - 1]
            })
            .collect();
        Cluster { nodes: sorted, zone_of, zone_count, k, shares }
    }
}

/// See [`crate::place`].
pub fn place(
    previous: Option<&PlacementMap>,
    nodes: &[NodeSpec],
    replication_factor: usize,
    topology: Topology,
) -> PlacementMap {
    let cluster = Cluster::new(nodes, replication_factor);
    let mut buckets = assign(previous, &cluster);
    balance_leaders(&mut buckets, cluster.k);
    match previous {
        Some(prev)
            if prev.buckets == buckets
                && prev.replication_factor == replication_factor
                && prev.topology == topology =>
        {
            prev.clone()
        }
        _ => PlacementMap {
            format: PLACEMENT_FORMAT,
            epoch: previous.map_or(1, |p| p.epoch + 1),
            replication_factor,
            topology,
            buckets,
        },
    }
}

/// Computes the replica lists of every bucket.
fn assign(previous: Option<&PlacementMap>, cluster: &Cluster) -> Vec<Vec<NodeId>> {
    let (n, k, zones) = (cluster.nodes.len(), cluster.k, cluster.zone_count);
    if k == 0 {
        return vec![Vec::new(); BUCKET_COUNT];
    }
    let index: BTreeMap<&NodeId, usize> =
        cluster.nodes.iter().enumerate().map(|(i, node)| (&node.id, i)).collect();

    // The previous replicas on live nodes, in their previous order, once each.
    let mut kept_order: Vec<Vec<usize>> = vec![Vec::new(); BUCKET_COUNT];
    let mut held = vec![false; BUCKET_COUNT * n];
    if let Some(prev) = previous {
        for (b, replicas) in prev.buckets.iter().take(BUCKET_COUNT).enumerate() {
            for id in replicas {
                if let Some(&i) = index.get(id)
                    && !held[b * n + i]
                {
                    held[b * n + i] = true;
                    kept_order[b].push(i);
                }
            }
        }
    }

    // Vertices: source, buckets, (bucket, zone) slots, nodes, sink.
    let bucket_vertex = |b: usize| 1 + b;
    let slot_vertex = |b: usize, z: usize| 1 + BUCKET_COUNT + b * zones + z;
    let node_vertex = |i: usize| 1 + BUCKET_COUNT + BUCKET_COUNT * zones + i;
    let sink = 1 + BUCKET_COUNT + BUCKET_COUNT * zones + n;
    let total = (BUCKET_COUNT * k) as i64;
    // Larger than any number of moves: one unmet lower bound outweighs them all.
    let must = total + 1;

    let mut net = Network::new(sink + 1);
    let k64 = k as i64;
    let mut replica_edges = vec![usize::MAX; BUCKET_COUNT * n];
    for b in 0..BUCKET_COUNT {
        net.add_edge(0, bucket_vertex(b), k64, 0);
        for z in 0..zones {
            if k >= zones {
                // Every zone must hold one replica of the bucket; more may go
                // there when replicas outnumber zones.
                net.add_edge(bucket_vertex(b), slot_vertex(b, z), 1, -must);
                if k > 1 {
                    net.add_edge(bucket_vertex(b), slot_vertex(b, z), k64 - 1, 0);
                }
            } else {
                // At most one replica of the bucket per zone.
                net.add_edge(bucket_vertex(b), slot_vertex(b, z), 1, 0);
            }
        }
        for i in 0..n {
            let cost = if held[b * n + i] { 0 } else { 1 };
            replica_edges[b * n + i] =
                net.add_edge(slot_vertex(b, cluster.zone_of[i]), node_vertex(i), 1, cost);
        }
    }
    for (i, share) in cluster.shares.iter().enumerate() {
        let (lo, hi) = (share.min() as i64, share.max() as i64);
        if lo > 0 {
            net.add_edge(node_vertex(i), sink, lo, -must);
        }
        if hi > lo {
            net.add_edge(node_vertex(i), sink, hi - lo, 0);
        }
    }
    let sent = net.min_cost_flow(total);
    debug_assert_eq!(sent, total, "the balanced placement is always feasible");

    (0..BUCKET_COUNT)
        .map(|b| {
            let placed = |i: usize| net.flow(replica_edges[b * n + i]) > 0;
            let mut replicas: Vec<NodeId> = kept_order[b]
                .iter()
                .filter(|&&i| placed(i))
                .map(|&i| cluster.nodes[i].id.clone())
                .collect();
            let mut added: Vec<(u64, &NodeId)> = (0..n)
                .filter(|&i| placed(i) && !held[b * n + i])
                .map(|i| (rank(b, &cluster.nodes[i].id), &cluster.nodes[i].id))
                .collect();
            added.sort();
            replicas.extend(added.into_iter().map(|(_, id)| id.clone()));
            replicas
        })
        .collect()
}

/// Spreads the preferred leaders (first replicas) over the nodes in
/// proportion to the replicas they hold, by changing replica order only: no
/// replica moves. A node's share is `replicas / k`, rounded down (`low`) or
/// up (`high`). A node first in more than its `high` share hands buckets to
/// another replica of the same bucket whose node is below its `high`
/// share; one above its `low` share, to a replica below its `low` share.
/// The replica furthest below goes to the front; the others keep their
/// order. A balanced map is left as it is, so this only acts after the node
/// set changed (a node that died and came back is appended last in its
/// buckets, and would otherwise lead none of them).
fn balance_leaders(buckets: &mut [Vec<NodeId>], k: usize) {
    if k < 2 {
        return;
    }
    let mut held: BTreeMap<NodeId, usize> = BTreeMap::new();
    let mut firsts: BTreeMap<NodeId, usize> = BTreeMap::new();
    for replicas in buckets.iter() {
        for id in replicas {
            *held.entry(id.clone()).or_default() += 1;
        }
        if let Some(f) = replicas.first() {
            *firsts.entry(f.clone()).or_default() += 1;
        }
    }
    let low = |id: &NodeId| held.get(id).copied().unwrap_or(0) / k;
    let high = |id: &NodeId| held.get(id).copied().unwrap_or(0).div_ceil(k);
    let count =
        |firsts: &BTreeMap<NodeId, usize>, id: &NodeId| firsts.get(id).copied().unwrap_or(0);
    // Each change lowers the excess over `high` shares or the shortfall
    // below `low` shares, and raises neither: this ends.
    loop {
        let mut changed = false;
        for replicas in buckets.iter_mut() {
            let Some(first) = replicas.first().cloned() else { continue };
            let led = count(&firsts, &first);
            let below: &dyn Fn(&NodeId) -> usize = if led > high(&first) {
                &high
            } else if led > low(&first) {
                &low
            } else {
                continue;
            };
            let best = replicas
                .iter()
                .enumerate()
                .skip(1)
                .filter(|(_, id)| count(&firsts, id) < below(id))
                .min_by_key(|(_, id)| count(&firsts, id) as i64 - low(id) as i64)
                .map(|(pos, _)| pos);
            if let Some(pos) = best {
                let id = replicas.remove(pos);
                *firsts.entry(first).or_default() -= 1;
                *firsts.entry(id.clone()).or_default() += 1;
                replicas.insert(0, id);
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
}

/// The order in which new replicas of bucket `b` are appended: a hash of the
/// bucket and the node id (FNV-1a, then a 64-bit finaliser), so that the first
/// replica of freshly placed buckets, the preferred leader, is spread over the
/// nodes instead of always being the smallest id. Fixed here, not taken from
/// `std`, so that it never changes between builds.
fn rank(b: usize, id: &NodeId) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in std::iter::once(b as u8).chain(id.0.bytes()) {
        h ^= u64::from(byte);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h
}
