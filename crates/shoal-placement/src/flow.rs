//! A small min-cost flow solver: successive shortest paths with Dijkstra on
//! reduced costs.
//!
//! The placement network is layered (source, buckets, zone slots, nodes,
//! sink) and every edge points from a lower-numbered vertex to a higher one,
//! so the initial potentials (needed because some costs are negative) come
//! from a single pass in vertex order. Each augmentation sends one unit along a
//! cheapest path; Dijkstra stops as soon as the sink is settled, and the
//! potentials of unsettled vertices are raised by the sink's distance, which
//! keeps every reduced cost non-negative.
//!
//! Ties are broken by vertex number (the heap orders by `(distance, vertex)`)
//! and edges are scanned in insertion order, so the result depends only on the
//! graph as built.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// A directed graph with capacities and costs, and the flow on it.
pub(crate) struct Network {
    /// Outgoing edge ids of each vertex, forward and residual.
    adjacency: Vec<Vec<usize>>,
    /// Edge `e` and its reverse `e ^ 1`: head vertex.
    to: Vec<usize>,
    /// Remaining capacity.
    capacity: Vec<i64>,
    /// Cost per unit; the reverse edge has the negated cost.
    cost: Vec<i64>,
}

impl Network {
    /// A network of `vertices` vertices and no edges.
    pub fn new(vertices: usize) -> Self {
        Network {
            adjacency: vec![Vec::new(); vertices],
            to: Vec::new(),
            capacity: Vec::new(),
            cost: Vec::new(),
        }
    }

    /// Adds an edge `from -> to` (requires `from < to`) and returns its id.
    pub fn add_edge(&mut self, from: usize, to: usize, capacity: i64, cost: i64) -> usize {
        debug_assert!(from < to, "edges go from lower to higher vertices");
        let id = self.to.len();
        self.to.extend([to, from]);
        self.capacity.extend([capacity, 0]);
        self.cost.extend([cost, -cost]);
        self.adjacency[from].push(id);
        self.adjacency[to].push(id + 1);
        id
    }

    /// The flow carried by forward edge `edge`.
    pub fn flow(&self, edge: usize) -> i64 {
        self.capacity[edge ^ 1]
    }

    /// Sends up to `amount` units from `source` (vertex 0) to `sink` (the last
    /// vertex) at minimum cost. Returns the amount sent.
    pub fn min_cost_flow(&mut self, amount: i64) -> i64 {
        let n = self.adjacency.len();
        let (source, sink) = (0, n - 1);
        const UNREACHED: i64 = i64::MAX / 4;

        // Initial potentials: shortest distances in the DAG of forward edges.
        let mut potential = vec![UNREACHED; n];
        potential[source] = 0;
        for v in 0..n {
            if potential[v] == UNREACHED {
                continue;
            }
            for &e in &self.adjacency[v] {
                if e % 2 == 0 && self.capacity[e] > 0 {
                    let w = self.to[e];
                    potential[w] = potential[w].min(potential[v] + self.cost[e]);
                }
            }
        }
        for p in &mut potential {
            if *p == UNREACHED {
                *p = 0; // unreachable vertices never take part
            }
        }

        let mut sent = 0;
        let mut dist = vec![UNREACHED; n];
        let mut settled = vec![false; n];
        let mut via = vec![usize::MAX; n];
        let mut heap = BinaryHeap::new();
        while sent < amount {
            dist.fill(UNREACHED);
            settled.fill(false);
            heap.clear();
            dist[source] = 0;
            heap.push(Reverse((0, source)));
            while let Some(Reverse((d, v))) = heap.pop() {
                if settled[v] {
                    continue;
                }
                settled[v] = true;
                if v == sink {
                    break;
                }
                for &e in &self.adjacency[v] {
                    if self.capacity[e] <= 0 {
                        continue;
                    }
                    let w = self.to[e];
                    let reduced = self.cost[e] + potential[v] - potential[w];
                    let candidate = d + reduced;
                    if !settled[w] && candidate < dist[w] {
                        dist[w] = candidate;
                        via[w] = e;
                        heap.push(Reverse((candidate, w)));
                    }
                }
            }
            if !settled[sink] {
                break;
            }
            let reach = dist[sink];
            for v in 0..n {
                potential[v] += if settled[v] { dist[v] } else { reach };
            }
            // Bottleneck along the path, then push.
            let mut push = amount - sent;
            let mut v = sink;
            while v != source {
                let e = via[v];
                push = push.min(self.capacity[e]);
                v = self.to[e ^ 1];
            }
            let mut v = sink;
            while v != source {
                let e = via[v];
                self.capacity[e] -= push;
                self.capacity[e ^ 1] += push;
                v = self.to[e ^ 1];
            }
            sent += push;
        }
        sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_cheaper_route() {
        // 0 -> 1 -> 3 costs 5, 0 -> 2 -> 3 costs 2, each route takes one unit.
        let mut net = Network::new(4);
        let a = net.add_edge(0, 1, 1, 4);
        let b = net.add_edge(0, 2, 1, 1);
        net.add_edge(1, 3, 1, 1);
        net.add_edge(2, 3, 1, 1);
        assert_eq!(net.min_cost_flow(1), 1);
        assert_eq!((net.flow(a), net.flow(b)), (0, 1));
    }

    #[test]
    fn negative_costs_and_rerouting() {
        // Two units. The first takes the -5 edge 1->3; routing the second,
        // which can only reach the sink through 3, must undo it.
        let mut net = Network::new(6);
        net.add_edge(0, 1, 1, 0);
        net.add_edge(0, 2, 1, 0);
        let cheap = net.add_edge(1, 3, 1, -5);
        let alt = net.add_edge(1, 4, 1, 0);
        net.add_edge(2, 3, 1, 0);
        net.add_edge(3, 5, 1, 0);
        net.add_edge(4, 5, 1, 0);
        assert_eq!(net.min_cost_flow(5), 2);
        assert_eq!((net.flow(cheap), net.flow(alt)), (0, 1));
    }
}
