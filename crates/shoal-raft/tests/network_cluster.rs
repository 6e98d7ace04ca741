//! Three in-process nodes, each serving the network's router on 127.0.0.1
//! from a runtime of its own, run 16 groups over the network: elections,
//! writes applied everywhere, a node killed (its sockets close) and the
//! others re-electing, and a late learner caught up by a streamed snapshot.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{TestNode, eventually};
use openraft::ServerState;
use shoal_raft::{Raft, Request};

const GROUPS: u8 = 16;

/// The live node that leads group `g`, if any.
fn leader(nodes: &[TestNode], g: u8) -> Option<&TestNode> {
    nodes
        .iter()
        .filter(|n| !n.is_dead())
        .find(|n| n.rafts[&g].metrics().borrow().state == ServerState::Leader)
}

/// Writes `cmd` to group `g` through its leader, retrying while leadership
/// moves.
async fn write(nodes: &[TestNode], g: u8, cmd: Vec<u8>) {
    let start = Instant::now();
    loop {
        assert!(start.elapsed() < Duration::from_secs(10), "group {g} takes no writes");
        if let Some(node) = leader(nodes, g) {
            let raft: Raft = node.rafts[&g].clone();
            let attempt = tokio::time::timeout(
                Duration::from_secs(2),
                raft.client_write(Request(cmd.clone())),
            );
            if let Ok(Ok(_)) = attempt.await {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Writes `count` commands to every group, all groups at once.
async fn write_all(nodes: &[TestNode], tag: &str, count: usize) -> BTreeMap<u8, Vec<Vec<u8>>> {
    let mut written = BTreeMap::new();
    let mut tasks = Vec::new();
    for g in 0..GROUPS {
        let cmds: Vec<Vec<u8>> =
            (0..count).map(|i| format!("{tag}-{g}-{i}").into_bytes()).collect();
        written.insert(g, cmds.clone());
        tasks.push(async move {
            for c in cmds {
                write(nodes, g, c).await;
            }
        });
    }
    futures_util::future::join_all(tasks).await;
    written
}

/// Waits until every live node of `nodes` applied the same commands in
/// every group, including all of `written`.
async fn converged(nodes: &[TestNode], written: &BTreeMap<u8, Vec<Vec<u8>>>) {
    eventually(Duration::from_secs(10), "replicas to converge", || {
        (0..GROUPS).all(|g| {
            let states: Vec<_> =
                nodes.iter().filter(|n| !n.is_dead()).map(|n| n.sms[&g].data().commands).collect();
            let have: BTreeSet<&Vec<u8>> = states[0].iter().collect();
            states.windows(2).all(|w| w[0] == w[1]) && written[&g].iter().all(|c| have.contains(c))
        })
    })
    .await;
}

/// Calls elections in the groups a failed peer led, as the node will.
///
/// Every survivor calls one at once: that ends the survivors' leader lease,
/// which would make them refuse votes for another second. Those elections
/// split the votes (each candidate voted for itself), so the survivor with
/// the lowest id calls a second one a moment later, at a higher term, and
/// wins it.
fn elect_on_peer_failure(node: &TestNode) {
    let mut failures = node.network.peer_failures();
    let rafts = node.rafts.clone();
    let me = node.id;
    node.spawn(async move {
        loop {
            let peer = match failures.recv().await {
                Ok(peer) => peer,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(_) => return,
            };
            let mut again = Vec::new();
            for raft in rafts.values() {
                let m = raft.metrics().borrow().clone();
                if m.current_leader != Some(peer) {
                    continue;
                }
                let _ = raft.trigger().elect().await;
                let first =
                    m.membership_config.membership().voter_ids().filter(|&v| v != peer).min();
                if first == Some(me) {
                    again.push(raft.clone());
                }
            }
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                for raft in again {
                    let leader = raft.metrics().borrow().current_leader;
                    if leader.is_none() || leader == Some(peer) {
                        let _ = raft.trigger().elect().await;
                    }
                }
            });
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn groups_replicate_fail_over_and_seed_a_learner() {
    let mut nodes = Vec::new();
    for id in 1..=3 {
        nodes.push(TestNode::start(id, 0..GROUPS).await);
    }
    let members: BTreeMap<u64, _> = nodes.iter().map(|n| (n.id, n.node())).collect();

    // Initialize each group on a different node, so leadership spreads.
    let start = Instant::now();
    for g in 0..GROUPS {
        nodes[usize::from(g) % 3].rafts[&g].initialize(members.clone()).await.expect("initialize");
    }
    eventually(Duration::from_secs(10), "leaders", || {
        (0..GROUPS).all(|g| leader(&nodes, g).is_some())
    })
    .await;
    eprintln!("all {GROUPS} groups led after {:?}", start.elapsed());
    for n in &nodes {
        elect_on_peer_failure(n);
    }

    let mut written = write_all(&nodes, "a", 30).await;
    converged(&nodes, &written).await;
    for n in &nodes {
        let s = n.network.stats();
        eprintln!("node {}: {} RPCs in {} requests", n.id, s.rpcs, s.requests);
    }

    // Kill the node that leads the most groups.
    let victim = (0..3)
        .max_by_key(|&i| {
            (0..GROUPS).filter(|&g| leader(&nodes, g).map(|n| n.id) == Some(nodes[i].id)).count()
        })
        .expect("three nodes");
    let led =
        (0..GROUPS).filter(|&g| leader(&nodes, g).map(|n| n.id) == Some(nodes[victim].id)).count();
    let mut events: Vec<_> = nodes.iter().map(|n| n.network.peer_failures()).collect();
    let killed = Instant::now();
    nodes[victim].kill();
    eventually(Duration::from_secs(10), "re-election", || {
        (0..GROUPS).all(|g| leader(&nodes, g).is_some())
    })
    .await;
    eprintln!(
        "node {} (leader of {led} groups) killed: all groups led again after {:?}",
        victim + 1,
        killed.elapsed()
    );
    for (i, rx) in events.iter_mut().enumerate().filter(|(i, _)| *i != victim) {
        assert_eq!(
            rx.try_recv().ok(),
            Some(nodes[victim].id),
            "node {} saw no peer failure",
            i + 1
        );
    }
    for (g, cmds) in write_all(&nodes, "b", 10).await {
        written.entry(g).or_default().extend(cmds);
    }
    converged(&nodes, &written).await;

    // A learner joins late: the leaders purged their logs into snapshots, so
    // it can only catch up through full_snapshot.
    let learner = TestNode::start(4, 0..GROUPS).await;
    let started = Instant::now();
    for g in 0..GROUPS {
        let raft = leader(&nodes, g).expect("leader").rafts[&g].clone();
        tokio::time::timeout(Duration::from_secs(10), raft.add_learner(4, learner.node(), true))
            .await
            .expect("learner added in time")
            .expect("learner added");
    }
    nodes.push(learner);
    converged(&nodes, &written).await;
    eprintln!("learner caught up in all groups after {:?}", started.elapsed());
    let learner = nodes.last().expect("learner");
    for g in 0..GROUPS {
        assert!(
            learner.sms[&g].0.installed.load(Ordering::Relaxed) >= 1,
            "group {g} got no snapshot"
        );
    }
    let left: Vec<_> = std::fs::read_dir(&learner.incoming).expect("incoming dir").collect();
    assert!(left.is_empty(), "received snapshots left behind: {left:?}");
}
