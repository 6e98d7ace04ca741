//! The engine in a cluster of real nodes in one process (see `common`):
//! replication, restarts, membership changes through snapshots, leadership
//! transfer under writes, pre-vote against a returning node, fast failover
//! when a leader's connections drop, linearizable reads, and a clean stop's
//! handover (never to a node that is down).

mod common;

use std::time::{Duration, Instant};

use common::{Cluster, fast_options};
use shoal_raft::GroupError;

const LONG: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_replicate_and_a_restarted_node_catches_up() {
    let mut c = Cluster::start(3, fast_options).await;
    c.bootstrap(0..4u8, &[1, 2, 3]).await;
    for i in 0..40 {
        c.write((i % 4) as u8, &format!("k{i}"), "a", LONG).await.expect("write");
    }
    for g in 0..4u8 {
        c.converged(g, &[1, 2, 3], 10, LONG).await;
    }
    // Node 3 stops; writes go on with two of three; it comes back and
    // catches up from the log.
    c.stop_node(3).await;
    for i in 40..80 {
        c.write((i % 4) as u8, &format!("k{i}"), "b", LONG).await.expect("write without node 3");
    }
    c.start_node(3).await;
    for g in 0..4u8 {
        c.converged(g, &[1, 2, 3], 20, LONG).await;
    }
    // An answer carries the value a key had: the state machine's answer
    // reaches the proposer.
    let leader = c.leader(0, LONG).await;
    let (_, old) = c.node(leader).write(0, b"k0=c".to_vec()).await.expect("write");
    assert_eq!(old.as_deref(), Some("a"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_member_catches_up_by_snapshot_and_the_leaving_one_lets_go() {
    // A short log: the new member must be sent a snapshot.
    let mut c = Cluster::start(3, |id, dir| {
        let mut o = fast_options(id, dir);
        o.settings.keep_logs = 5;
        o
    })
    .await;
    c.bootstrap([7u8], &[1, 2, 3]).await;
    for i in 0..200 {
        c.write(7, &format!("k{i}"), "v", LONG).await.expect("write");
    }
    c.add_node(4).await;
    c.node(4).open(7).await.expect("open");
    for id in 1..=4 {
        c.node(id).set_target(7, vec![1, 2, 4]);
    }
    // Writes go on during the move.
    for i in 200..260 {
        c.write(7, &format!("k{i}"), "v", LONG).await.expect("write during the move");
    }
    let deadline = Instant::now() + LONG;
    loop {
        let leader = c.leader(7, LONG).await;
        let status = c.node(leader).status().await;
        let g = status.iter().find(|s| s.group == 7).expect("hosted");
        if g.voters == [1, 2, 4] && g.learners.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "membership is {:?} / {:?}", g.voters, g.learners);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.converged(7, &[1, 2, 4], 260, LONG).await;
    // Node 3 knows it no longer votes (it learned of its demotion).
    let deadline = Instant::now() + LONG;
    while c.node(3).is_voter(7) {
        assert!(Instant::now() < deadline, "node 3 still thinks it votes");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_moves_under_writes_without_a_failed_write() {
    let c = Cluster::start(3, fast_options).await;
    c.bootstrap([1u8], &[1, 2, 3]).await;
    let first = c.leader(1, LONG).await;
    let target = if first == 1 { 2 } else { 1 };
    let writes = async {
        let mut failed = Vec::new();
        for i in 0..300 {
            // No retries: every write must succeed where it is sent, or be
            // forwarded-style answered with the new leader (nothing proposed).
            let mut at = c.leader(1, LONG).await;
            loop {
                match c.node(at).write(1, format!("k{i}=v").into_bytes()).await {
                    Ok(_) => break,
                    Err(GroupError::NotLeader { leader: Some(l), .. }) => at = l,
                    Err(e) => {
                        failed.push(e);
                        break;
                    }
                }
            }
        }
        failed
    };
    let moves = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        c.node(first).transfer_leader(1, target);
    };
    let (failed, ()) = tokio::join!(writes, moves);
    assert!(failed.is_empty(), "writes failed during the transfer: {failed:?}");
    assert_eq!(c.leader(1, LONG).await, target);
    c.converged(1, &[1, 2, 3], 300, LONG).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_deposes_no_leader_when_it_returns() {
    let c = Cluster::start(3, fast_options).await;
    c.bootstrap(0..8u8, &[1, 2, 3]).await;
    let mut leaders = Vec::new();
    for g in 0..8u8 {
        leaders.push(c.leader(g, LONG).await);
    }
    // Node 3 leads none of the groups, so its absence moves no leader. (A
    // leader declines a handover until it has heard from the heir lately:
    // ask again until it accepts.)
    let mut terms = Vec::new();
    for g in 0..8u8 {
        let deadline = Instant::now() + LONG;
        let mut l = c.leader(g, LONG).await;
        while l == 3 {
            assert!(Instant::now() < deadline, "group {g} stays led by node 3");
            c.node(3).transfer_leader(g, 1);
            tokio::time::sleep(Duration::from_millis(50)).await;
            l = c.leader(g, LONG).await;
        }
        leaders[g as usize] = l;
        terms.push(c.node(1).term(g));
    }
    let cut_terms: Vec<u64> = (0..8u8).map(|g| c.node(3).term(g)).collect();
    c.isolate(3, true);
    // Many election timeouts (10-20 ticks of 20 ms each).
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Pre-vote: the cut-off node never won a pre-vote, so it never raised
    // its term.
    let after: Vec<u64> = (0..8u8).map(|g| c.node(3).term(g)).collect();
    assert_eq!(after, cut_terms, "the isolated node raised its terms");
    c.isolate(3, false);
    tokio::time::sleep(Duration::from_secs(1)).await;
    for g in 0..8u8 {
        assert_eq!(c.leader(g, LONG).await, leaders[g as usize], "group {g} changed leader");
        assert_eq!(c.node(1).term(g), terms[g as usize], "group {g} changed term");
    }
    c.write(0, "after", "heal", LONG).await.expect("write");
    c.converged(0, &[1, 2, 3], 1, LONG).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_groups_of_a_dead_leader_elect_before_an_election_timeout() {
    // A long election timeout (5-10 s): only the reaction to the dropped
    // connections can elect within it.
    let mut c = Cluster::start(3, |id, dir| {
        let mut o = fast_options(id, dir);
        o.settings.election_ticks = 250;
        o.settings.leader_wait = Duration::from_secs(10);
        o
    })
    .await;
    c.bootstrap([3u8], &[1, 2, 3]).await;
    // The first listed voter campaigns at once.
    let leader = c.leader(3, LONG).await;
    c.write(3, "before", "x", LONG).await.expect("write");
    let stopped = Instant::now();
    c.stop_node(leader).await;
    let next = c.leader(3, LONG).await;
    let took = stopped.elapsed();
    assert_ne!(next, leader);
    assert!(took < Duration::from_secs(4), "a new leader took {took:?} (election timeout 5 s)");
    c.write(3, "after", "y", LONG).await.expect("write after failover");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_are_confirmed_by_the_leader_only() {
    let c = Cluster::start(3, fast_options).await;
    c.bootstrap([9u8], &[1, 2, 3]).await;
    c.write(9, "k", "v", LONG).await.expect("write");
    let leader = c.leader(9, LONG).await;
    c.node(leader).read_index(9).await.expect("read index on the leader");
    // After a confirmed read the leader has applied every acknowledged write.
    assert_eq!(c.state(leader, 9).get("k").map(String::as_str), Some("v"));
    let follower = (1..=3).find(|n| *n != leader).unwrap();
    match c.node(follower).read_index(9).await {
        Err(GroupError::NotLeader { leader: Some(l), .. }) => assert_eq!(l, leader),
        other => panic!("a follower answered {other:?}"),
    }
    match c.node(leader).read_index(200).await {
        Err(GroupError::NotHosted(200)) => {}
        other => panic!("an unhosted group answered {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_waits_for_a_leader_then_names_none() {
    let mut c = Cluster::start(3, |id, dir| {
        let mut o = fast_options(id, dir);
        o.settings.leader_wait = Duration::from_millis(600);
        o
    })
    .await;
    c.bootstrap([5u8], &[1, 2, 3]).await;
    c.write(5, "k", "v", LONG).await.expect("write");
    let leader = c.leader(5, LONG).await;
    let others: Vec<u64> = (1..=3).filter(|n| *n != leader).collect();
    // Two of three gone: no majority, no leader.
    c.stop_node(leader).await;
    c.stop_node(others[0]).await;
    let lone = others[1];
    let asked = Instant::now();
    let r = c.node(lone).write(5, b"k=w".to_vec()).await;
    assert!(
        matches!(r, Err(GroupError::NotLeader { leader: None, .. })),
        "a group without a majority answered {r:?}"
    );
    assert!(
        asked.elapsed() >= Duration::from_millis(500),
        "answered before waiting: {:?}",
        asked.elapsed()
    );
    // A write sent meanwhile waits, and succeeds once a majority is back.
    let pending = {
        let m = c.node(lone).clone();
        tokio::spawn(async move { m.write(5, b"k=x".to_vec()).await })
    };
    c.start_node(others[0]).await;
    let r = pending.await.expect("task");
    assert!(matches!(r, Ok(_) | Err(GroupError::NotLeader { .. })), "the waiting write got {r:?}");
    c.write(5, "k", "y", LONG).await.expect("write with a majority back");
}

/// Options with a long election timeout (5-10 s): within it, only a
/// handover moves leadership.
fn slow_elections(id: u64, dir: &std::path::Path) -> shoal_raft::Options {
    let mut o = fast_options(id, dir);
    o.settings.election_ticks = 250;
    o.settings.leader_wait = Duration::from_secs(10);
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaving_node_hands_its_groups_over_and_takes_none_back() {
    let c = Cluster::start(3, slow_elections).await;
    c.bootstrap(0..4u8, &[1, 2, 3]).await;
    for g in 0..4u8 {
        c.write(g, "before", "x", LONG).await.expect("write");
        // A leader hands a group only to a voter it heard from lately and
        // that is caught up: asked too early (just elected), it declines,
        // so ask until it has.
        let deadline = Instant::now() + LONG;
        loop {
            let l = c.leader(g, LONG).await;
            if l == 1 {
                break;
            }
            assert!(Instant::now() < deadline, "group {g} is not led by node 1");
            c.node(l).transfer_leader(g, 1);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let started = Instant::now();
    while c.node(1).leave().await > 0 {
        assert!(started.elapsed() < LONG, "node 1 still leads groups");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for g in 0..4u8 {
        let l = c.leader(g, LONG).await;
        assert_ne!(l, 1, "group {g}");
        c.write(g, "after", "y", LONG).await.expect("write after the handover");
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(4), "the handover took {took:?} (election timeout 5 s)");
    // Handed back, it refuses: no election, no new term.
    let l = c.leader(0, LONG).await;
    let term = c.node(l).term(0);
    c.node(l).transfer_leader(0, 1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(c.leader(0, LONG).await, l, "the leaving node took the group back");
    assert_eq!(c.node(l).term(0), term, "the leaving node campaigned");
    c.converged(0, &[1, 2, 3], 2, LONG).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_is_not_handed_to_a_node_that_is_down() {
    let mut c = Cluster::start(3, slow_elections).await;
    c.bootstrap([5u8], &[1, 2, 3]).await;
    let leader = c.leader(5, LONG).await;
    let other = (1..=3).find(|n| *n != leader).expect("a follower");
    c.write(5, "before", "x", LONG).await.expect("write");
    c.stop_node(other).await;
    // Asked to hand over to the dead node, the leader keeps the group and
    // its writes go on: a transfer would hold them for an election timeout.
    c.node(leader).transfer_leader(5, other);
    let started = Instant::now();
    c.write(5, "after", "y", LONG).await.expect("write");
    let took = started.elapsed();
    assert_eq!(c.leader(5, LONG).await, leader);
    assert!(took < Duration::from_secs(2), "a write took {took:?} (election timeout 5 s)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_is_current_only_once_it_applied_its_predecessors_writes() {
    let c = Cluster::start(3, fast_options).await;
    c.bootstrap([2u8], &[1, 2, 3]).await;
    let first = c.leader(2, LONG).await;
    for i in 0..200 {
        c.write(2, &format!("k{i}"), "v", LONG).await.expect("write");
    }
    assert!(c.node(first).is_leader_current(2));
    let heir = if first == 1 { 2 } else { 1 };
    c.node(first).transfer_leader(2, heir);
    // From the moment the heir says it is current, its state holds every
    // write acknowledged before the handover.
    let deadline = Instant::now() + LONG;
    loop {
        if c.node(heir).is_leader_current(2) {
            let state = c.state(heir, 2);
            assert!((0..200).all(|i| state.contains_key(&format!("k{i}"))), "{} keys", state.len());
            break;
        }
        assert!(Instant::now() < deadline, "the heir never became a current leader");
        tokio::task::yield_now().await;
    }
    assert!(!c.node(first).is_leader_current(2));
}
