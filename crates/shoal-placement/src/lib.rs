//! Shoal's placement function: given the live nodes and the previous map,
//! which nodes should hold the replicas of each of the 256 buckets.
//!
//! [`place`] is pure (no I/O, no clock, no randomness). The monitor decides
//! when to call it (on membership changes in `dynamic` topology, only on an
//! explicit rebalance in `static`); [`place`] always answers with the balanced
//! map for the nodes it is given. `docs/placement.md` has the same story with
//! measured numbers.
//!
//! # Rules, as implemented
//!
//! Let `N` be the number of live nodes, `k = min(replication_factor, N)`,
//! `R = 256 k` the total number of replicas and `Z` the number of distinct zones
//! among the live nodes. In priority order:
//!
//! 1. **Replication and zones (hard).** Every bucket gets exactly `k` replicas on
//!    distinct nodes, spread over `min(k, Z)` distinct zones: at most one
//!    replica per zone when `k <= Z`, at least one in every zone when `k >= Z`.
//! 2. **Stability.** A replica on a live node stays unless rules 1 and 3
//!    require it to move (this follows from rule 4).
//! 3. **Balance (hard).** Node `i` holds between `floor(ideal_i)` and
//!    `ceil(ideal_i)` replicas, where `ideal_i` is the capacity-weighted ideal
//!    under the constraints of rule 1 and "at most one replica per bucket per
//!    node" (see `src/ideal.rs` for the exact definition). When no
//!    such constraint binds, `ideal_i = R * c_i / sum(c)` exactly.
//! 4. **Minimal movement.** Among the maps satisfying 1 and 3, `place` returns
//!    one that adds the fewest replicas to nodes that did not hold them before.
//!    A removal costs nothing (the data is dropped); an addition is a copy.
//!
//! ## Zones against balance
//!
//! Zone spreading wins: it is what lets a bucket survive the loss of a zone.
//! Balance is then measured against the ideal *given* the zone constraints: a
//! lone node in a zone of its own with `k >= Z` must hold every bucket, so its
//! ideal is 256 whatever its capacity, and the other zones share the rest by
//! capacity. When the zones are sized in proportion to their capacity (the
//! usual deployment), no zone bound binds and the ideal is the plain
//! capacity-weighted one. Both rules stay exact (within one replica of the
//! constrained ideal; exactly `min(k, Z)` zones per bucket).
//!
//! Rule 4 is exact in every case, zones included: it is the optimum of the
//! flow problem below. The simple lower bound on copies (replicas lost or
//! missing plus the excess of overfull nodes, or the deficits of underfull
//! ones, whichever is larger) is not always attained, because a node cannot
//! hold a bucket twice; `docs/placement.md` has an example and explains how
//! the tests prove minimality case by case.
//!
//! # Algorithm
//!
//! One min-cost flow, `R` units from a source to a sink:
//!
//! ```text
//! source -> bucket b          capacity k
//! bucket b -> slot (b, zone z)   k >= Z: 1 unit at cost -M (must), k-1 more at 0
//!                                k <  Z: 1 unit at cost 0 (at most one per zone)
//! slot (b, z) -> node i in z  capacity 1, cost 0 if i held b before, else 1
//! node i -> sink              floor(ideal_i) units at cost -M (must),
//!                             ceil - floor more at cost 0
//! ```
//!
//! `M = R + 1` exceeds the cost of any set of moves, so a cheapest flow meets
//! every "must" (a feasible flow that meets them all exists: spreading each
//! node's ideal evenly over the buckets is a fractional one, and flows with
//! integer bounds have integral solutions), and among those it minimises the
//! number of additions. Successive shortest paths with Dijkstra on reduced
//! costs solve it in `R` augmentations over a graph of about `256 (N + Z)`
//! edges (`src/flow.rs`).
//!
//! # Output
//!
//! - Replica order: surviving replicas keep their previous order, new ones are
//!   appended in the order of a fixed hash of (bucket, node id). The first
//!   replica is the preferred-leader hint; the firsts are then balanced over
//!   the nodes in proportion to their replicas, by reordering only (see
//!   `balance_leaders`), so a node that came back or joined leads its share.
//! - Epoch: if the buckets, replication factor and topology equal the previous
//!   map's, the previous map is returned as it was; otherwise the epoch is the
//!   previous epoch plus one (1 without a previous map).
//!
//! # Input normalisation and determinism
//!
//! Nodes are sorted by id before anything else, so the order of `nodes` never
//! matters. A node id listed more than once counts once, with the entry that
//! sorts first by (zone, capacity). A capacity of 0 counts as 1 (a registered
//! node is meant to hold data; to drain a node, leave it out). Ties between
//! equally good maps are broken by the fixed vertex numbering of the network,
//! so the same inputs always give the same map. Replicas in the previous map
//! on nodes that are not live are dropped; so are duplicates.

mod flow;
mod ideal;
mod place;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
pub use shoal_types::placement::{PLACEMENT_FORMAT, PlacementMap, Topology};
use shoal_types::{BucketId, NodeId};

/// A live node as placement sees it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeSpec {
    /// The node's stable id.
    pub id: NodeId,
    /// The failure domain (rack, availability zone) the node is in.
    pub zone: String,
    /// Relative weight: a node of capacity 2 holds twice the replicas of a node
    /// of capacity 1 (within the limits of the zone rule and of one replica per
    /// bucket). 0 counts as 1.
    pub capacity: u32,
}

/// One step from a map to the next: a replica of `bucket` removed from `from`
/// and/or added on `to`. A move with both is a copy to `to` followed by a drop
/// on `from`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Move {
    /// The bucket whose replica moves.
    pub bucket: BucketId,
    /// The node that loses its replica, if any.
    pub from: Option<NodeId>,
    /// The node that gains a replica, if any.
    pub to: Option<NodeId>,
}

/// The replica count bounds rule 3 sets for one node.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bounds {
    /// The capacity-weighted ideal under the zone constraints.
    pub ideal: f64,
    /// `floor(ideal)`: the fewest replicas the node holds.
    pub min: usize,
    /// `ceil(ideal)`: the most replicas the node holds.
    pub max: usize,
}

/// Computes the balanced placement of every bucket over `nodes`, moving as
/// few replicas as possible from `previous`. See the crate docs for the rules.
pub fn place(
    previous: Option<&PlacementMap>,
    nodes: &[NodeSpec],
    replication_factor: usize,
    topology: Topology,
) -> PlacementMap {
    place::place(previous, nodes, replication_factor, topology)
}

/// The replica count bounds of each (normalised) node that [`place`] meets.
/// For status displays and tests; [`place`] computes the same internally.
pub fn balance_bounds(nodes: &[NodeSpec], replication_factor: usize) -> BTreeMap<NodeId, Bounds> {
    let cluster = place::Cluster::new(nodes, replication_factor);
    cluster
        .nodes
        .into_iter()
        .zip(cluster.shares)
        .map(|(node, share)| {
            (node.id, Bounds { ideal: share.ideal(), min: share.min(), max: share.max() })
        })
        .collect()
}

/// The replica changes that turn `previous` into `next`, bucket by bucket.
/// Within a bucket, removals (in `previous` order) are paired with additions
/// (in `next` order); the unpaired rest are pure removals or additions. The
/// number of moves with a `to` is the number of copies the change costs.
pub fn moves(previous: &PlacementMap, next: &PlacementMap) -> Vec<Move> {
    let mut result = Vec::new();
    for bucket in BucketId::all() {
        let before = previous.replicas(bucket);
        let after = next.replicas(bucket);
        let removed: Vec<&NodeId> = before.iter().filter(|n| !after.contains(n)).collect();
        let added: Vec<&NodeId> = after.iter().filter(|n| !before.contains(n)).collect();
        for i in 0..removed.len().max(added.len()) {
            result.push(Move {
                bucket,
                from: removed.get(i).map(|n| (*n).clone()),
                to: added.get(i).map(|n| (*n).clone()),
            });
        }
    }
    result
}

/// The buckets with fewer replicas on `live` nodes than
/// `min(map.replication_factor, number of distinct live nodes)`.
pub fn under_replicated(map: &PlacementMap, live: &[NodeId]) -> Vec<BucketId> {
    let live: BTreeSet<&NodeId> = live.iter().collect();
    let wanted = map.replication_factor.min(live.len());
    BucketId::all()
        .filter(|&bucket| {
            let on_live: BTreeSet<&NodeId> =
                map.replicas(bucket).iter().filter(|n| live.contains(n)).collect();
            on_live.len() < wanted
        })
        .collect()
}
