//! A small min-cost flow solver: the primal-dual method, Dijkstra on reduced
//! costs to find the current cheapest path cost, then Dinic's blocking flow
//! over all edges of zero reduced cost to send every unit that can go at that
//! cost.
//!
//! The placement network is layered (source, buckets, zone slots, nodes,
//! sink) and every edge points from a lower-numbered vertex to a higher one,
//! so the initial potentials (needed because some costs are negative) come
//! from a single pass in vertex order. Dijkstra stops as soon as the sink is
//! settled, and the potentials of unsettled vertices are raised by the sink's
//! distance, which keeps every reduced cost non-negative; a source-sink path
//! made only of zero-reduced-cost edges is then a cheapest path. Costs in the
//! placement network take few distinct values, so there are few phases.
//!
//! Ties are broken by vertex number (the heap orders by `(distance, vertex)`)
//! and edges are scanned in insertion order, so the result depends only on the
//! graph as built.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

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
        let mut potential = self.initial_potentials();
        let mut sent = 0;
        while sent < amount {
            if !self.shortest_paths(&mut potential) {
                break;
            }
            // Every source-sink path of zero reduced cost is now a cheapest one:
            // saturate them all before the next Dijkstra.
            loop {
                let level = self.levels(&potential);
                if level[n - 1] == usize::MAX {
                    break;
                }
                let pushed = self.blocking_flow(&potential, level, amount - sent);
                sent += pushed;
                if pushed == 0 || sent == amount {
                    break;
                }
            }
        }
        sent
    }

    /// Shortest distances from the source over forward edges, in vertex order
    /// (a topological order, since edges go from lower to higher vertices).
    fn initial_potentials(&self) -> Vec<i64> {
        let n = self.adjacency.len();
        let mut potential = vec![UNREACHED; n];
        potential[0] = 0;
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
        potential
    }

    /// The reduced cost of edge `e` under `potential`.
    fn reduced(&self, e: usize, potential: &[i64]) -> i64 {
        self.cost[e] + potential[self.to[e ^ 1]] - potential[self.to[e]]
    }

    /// Dijkstra on reduced costs from the source, stopping once the sink is
    /// settled, then raises the potentials by the distances (unsettled
    /// vertices by the sink's). Returns whether the sink is reachable.
    fn shortest_paths(&self, potential: &mut [i64]) -> bool {
        let n = self.adjacency.len();
        let sink = n - 1;
        let mut dist = vec![UNREACHED; n];
        let mut settled = vec![false; n];
        let mut heap = BinaryHeap::new();
        dist[0] = 0;
        heap.push(Reverse((0, 0)));
        while let Some(Reverse((d, v))) = heap.pop() {
            if settled[v] {
                continue;
            }
            settled[v] = true;
            if v == sink {
                break;
            }
            for &e in &self.adjacency[v] {
                let w = self.to[e];
                if self.capacity[e] <= 0 || settled[w] {
                    continue;
                }
                let candidate = d + self.reduced(e, potential);
                if candidate < dist[w] {
                    dist[w] = candidate;
                    heap.push(Reverse((candidate, w)));
                }
            }
        }
        if !settled[sink] {
            return false;
        }
        let reach = dist[sink];
        for v in 0..n {
            potential[v] += if settled[v] { dist[v] } else { reach };
        }
        true
    }

    /// Breadth-first levels from the source over admissible edges (residual
    /// capacity and zero reduced cost); `usize::MAX` where unreached.
    fn levels(&self, potential: &[i64]) -> Vec<usize> {
        let n = self.adjacency.len();
        let mut level = vec![usize::MAX; n];
        let mut queue = VecDeque::new();
        level[0] = 0;
        queue.push_back(0);
        while let Some(v) = queue.pop_front() {
            for &e in &self.adjacency[v] {
                let w = self.to[e];
                if level[w] == usize::MAX && self.capacity[e] > 0 && self.reduced(e, potential) == 0
                {
                    level[w] = level[v] + 1;
                    queue.push_back(w);
                }
            }
        }
        level
    }

    /// Pushes up to `limit` units along admissible edges that climb one
    /// level at a time (Dinic's blocking flow, with an explicit stack).
    fn blocking_flow(&mut self, potential: &[i64], mut level: Vec<usize>, limit: i64) -> i64 {
        let n = self.adjacency.len();
        let sink = n - 1;
        let mut next_arc = vec![0; n];
        let mut path: Vec<usize> = Vec::new();
        let mut pushed = 0;
        let mut v = 0;
        while pushed < limit {
            if v == sink {
                let push = path.iter().map(|&e| self.capacity[e]).fold(limit - pushed, i64::min);
                for &e in &path {
                    self.capacity[e] -= push;
                    self.capacity[e ^ 1] += push;
                }
                pushed += push;
                path.clear();
                v = 0;
                continue;
            }
            let mut advanced = false;
            while next_arc[v] < self.adjacency[v].len() {
                let e = self.adjacency[v][next_arc[v]];
                let w = self.to[e];
                if self.capacity[e] > 0
                    && level[w] == level[v].wrapping_add(1)
                    && self.reduced(e, potential) == 0
                {
                    path.push(e);
                    v = w;
                    advanced = true;
                    break;
                }
                next_arc[v] += 1;
            }
            if !advanced {
                // Dead end: never enter `v` again in this phase.
                level[v] = usize::MAX;
                match path.pop() {
                    Some(e) => {
                        v = self.to[e ^ 1];
                        next_arc[v] += 1;
                    }
                    None => break,
                }
            }
        }
        pushed
    }
}

/// A distance larger than any path cost, yet safe to add to.
const UNREACHED: i64 = i64::MAX / 4;

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
