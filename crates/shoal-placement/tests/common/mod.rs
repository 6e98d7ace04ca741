//! Checks shared by the scenario and property tests: the rules of the crate
//! docs, and an independent lower bound on the number of moves.
//!
//! # The lower bound
//!
//! Let `p_i` be the number of buckets whose previous replicas include live
//! node `i` (after dropping dead nodes and duplicates), `[lo_i, hi_i]` the
//! balance bounds of node `i`, `k = min(rf, N)` and `R = 256 k`. A move is a
//! replica added on a node that did not hold that bucket before; `kept_i`
//! counts the previous replicas node `i` still holds.
//!
//! - `kept_i <= min(p_i, hi_i)`: a node keeps at most what it had, and ends
//!   with at most `hi_i`. Every replica of the next map is kept or added, so
//!   `moves = R - sum(kept_i) >= A = R - sum_i min(p_i, hi_i)`.
//!   (`A` includes the replicas lost with dead nodes and the ones missing
//!   because the replication factor grew: they are the part of `R` no live
//!   node had, and the excess `p_i - hi_i` of overfull nodes is the rest.)
//! - Node `i` ends with at least `lo_i` replicas, at most `p_i` of them kept,
//!   so it receives at least `lo_i - p_i`:
//!   `moves >= D = sum_i max(0, lo_i - p_i)`.
//!
//! Hence `moves >= max(A, D)`. Both hold for any bounds, so the tests assert the
//! inequality with zone-constrained bounds too.
//!
//! Why it is attained when zones impose no constraint and no bucket has more
//! than `k` live previous replicas: keep everything, let each node above `hi_i`
//! drop its excess, and if that frees fewer slots than the underfull nodes
//! need (`A < D`), let `D - A` nodes sitting at `hi_i > lo_i` drop one more
//! (there are enough, because `sum lo_i <= R`). Then exactly `max(A, D)` slots
//! are free and every node is within its bounds after receiving its quota.
//! Which replicas are dropped is free, and an exchange argument along
//! alternating paths (a bucket that cannot use a node because it already holds
//! it swaps slots with one that can) shows the drops can be chosen so that the
//! freed slots are filled without a further move. `place` solves the problem
//! exactly, so the tests check equality with `max(A, D)` in that setting.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};

use shoal_placement::{NodeSpec, PlacementMap, balance_bounds, moves};
use shoal_types::{BUCKET_COUNT, BucketId, NodeId};

/// The live nodes as `place` sees them: one entry per id (the first by
/// (id, zone, capacity)), capacity at least 1, sorted by id.
pub fn normalise(nodes: &[NodeSpec]) -> Vec<NodeSpec> {
    let mut sorted = nodes.to_vec();
    sorted.sort_by(|a, b| (&a.id, &a.zone, a.capacity).cmp(&(&b.id, &b.zone, b.capacity)));
    let mut seen = BTreeSet::new();
    sorted.retain(|n| seen.insert(n.id.clone()));
    for n in &mut sorted {
        n.capacity = n.capacity.max(1);
    }
    sorted
}

/// The capacity-weighted bounds without zone constraints, computed here from
/// the definition: a node's share is `R c_i / C`, except that no node can
/// hold more than 256; nodes above that are pinned at 256 and the rest is
/// shared again.
pub fn plain_bounds(nodes: &[NodeSpec], k: usize) -> BTreeMap<NodeId, (usize, usize)> {
    let total = (BUCKET_COUNT * k) as u128;
    let mut pinned: BTreeSet<NodeId> = BTreeSet::new();
    loop {
        let free: Vec<&NodeSpec> = nodes.iter().filter(|n| !pinned.contains(&n.id)).collect();
        let rest = total - 256 * pinned.len() as u128;
        let weight: u128 = free.iter().map(|n| u128::from(n.capacity)).sum();
        let over: Vec<NodeId> = free
            .iter()
            .filter(|n| rest * u128::from(n.capacity) > 256 * weight)
            .map(|n| n.id.clone())
            .collect();
        if over.is_empty() {
            return nodes
                .iter()
                .map(|n| {
                    if pinned.contains(&n.id) {
                        (n.id.clone(), (256, 256))
                    } else {
                        let num = rest * u128::from(n.capacity);
                        let lo = (num / weight) as usize;
                        let hi = num.div_ceil(weight) as usize;
                        (n.id.clone(), (lo, hi))
                    }
                })
                .collect();
        }
        pinned.extend(over);
    }
}

/// `p_i`: the buckets each live node held in `previous`.
pub fn previous_counts(previous: Option<&PlacementMap>, nodes: &[NodeSpec]) -> Vec<usize> {
    nodes
        .iter()
        .map(|n| match previous {
            Some(prev) => prev.buckets.iter().filter(|r| r.contains(&n.id)).count(),
            None => 0,
        })
        .collect()
}

/// `max(A, D)` of the module docs, for the given bounds (in `nodes` order).
pub fn lower_bound(
    previous: Option<&PlacementMap>,
    nodes: &[NodeSpec],
    k: usize,
    bounds: &[(usize, usize)],
) -> usize {
    let p = previous_counts(previous, nodes);
    let total = BUCKET_COUNT * k;
    let kept_at_most: usize = p.iter().zip(bounds).map(|(p, (_, hi))| (*p).min(*hi)).sum();
    let a = total - kept_at_most;
    let d: usize = p.iter().zip(bounds).map(|(p, (lo, _))| lo.saturating_sub(*p)).sum();
    a.max(d)
}

/// The number of replicas added from `previous` to `next` (copies).
pub fn added(previous: Option<&PlacementMap>, next: &PlacementMap) -> usize {
    match previous {
        Some(prev) => moves(prev, next).iter().filter(|m| m.to.is_some()).count(),
        None => next.buckets.iter().map(Vec::len).sum(),
    }
}

/// Rules 1 and 3 for `next`, placed on `nodes` (raw input) with `rf`.
/// Returns the normalised nodes and `k`.
pub fn check_rules_1_and_3(
    next: &PlacementMap,
    nodes: &[NodeSpec],
    rf: usize,
) -> (Vec<NodeSpec>, usize) {
    let live = normalise(nodes);
    let k = rf.min(live.len());
    let zone_of: BTreeMap<&NodeId, &str> = live.iter().map(|n| (&n.id, n.zone.as_str())).collect();
    let zones: BTreeSet<&str> = zone_of.values().copied().collect();
    assert_eq!(next.buckets.len(), BUCKET_COUNT);
    for bucket in BucketId::all() {
        let replicas = next.replicas(bucket);
        assert_eq!(replicas.len(), k, "bucket {bucket}: {replicas:?}");
        let distinct: BTreeSet<&NodeId> = replicas.iter().collect();
        assert_eq!(distinct.len(), k, "bucket {bucket} repeats a node: {replicas:?}");
        let spread: BTreeSet<&str> = replicas
            .iter()
            .map(|r| *zone_of.get(r).unwrap_or_else(|| panic!("{r} is not live")))
            .collect();
        assert_eq!(spread.len(), k.min(zones.len()), "bucket {bucket} zones: {replicas:?}");
    }
    let counts = next.replica_counts();
    let bounds = balance_bounds(nodes, rf);
    assert_eq!(bounds.len(), live.len());
    let ideal_sum: f64 = bounds.values().map(|b| b.ideal).sum();
    assert!((ideal_sum - (BUCKET_COUNT * k) as f64).abs() < 1e-6, "ideals sum to {ideal_sum}");
    for node in &live {
        let b = bounds[&node.id];
        let count = counts.get(&node.id).copied().unwrap_or(0);
        assert!(b.min <= count && count <= b.max, "{}: {count} not in {b:?}", node.id);
        assert!(b.max <= BUCKET_COUNT);
    }
    (live, k)
}
