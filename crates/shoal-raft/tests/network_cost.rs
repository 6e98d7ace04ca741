//! Measures what the network costs with 256 groups on three in-process
//! nodes: requests and RPCs per second while idle (heartbeats only), and
//! RPCs per request under a write load. Ignored by default (it takes about
//! ten seconds); run with
//! `cargo test -p shoal-raft --release --test network_cost -- --ignored --nocapture`.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{TestNode, eventually};
use openraft::ServerState;
use shoal_raft::Request;
use shoal_raft::network::NetworkStats;

/// CPU time used by this process so far (user + system), from /proc.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> =
        stat.rsplit(')').next().unwrap_or_default().split_whitespace().collect();
    // Fields 14 and 15 of the file (utime, stime), counted after the ")".
    let ticks: u64 = fields
        .get(11..13)
        .map(|f| f.iter().filter_map(|x| x.parse::<u64>().ok()).sum())
        .unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

fn total(nodes: &[TestNode]) -> NetworkStats {
    nodes.iter().map(|n| n.network.stats()).fold(NetworkStats::default(), |a, s| NetworkStats {
        requests: a.requests + s.requests,
        rpcs: a.rpcs + s.rpcs,
    })
}

fn report(what: &str, nodes: &[TestNode], before: NetworkStats, cpu: Duration, took: Duration) {
    let after = total(nodes);
    let (req, rpcs) = (after.requests - before.requests, after.rpcs - before.rpcs);
    let secs = took.as_secs_f64();
    eprintln!(
        "{what}: {:.0} requests/s, {:.0} RPCs/s, {:.1} RPCs per request, CPU {:.1}% of one core (3 nodes)",
        req as f64 / secs,
        rpcs as f64 / secs,
        rpcs as f64 / req.max(1) as f64,
        100.0 * (cpu_time() - cpu).as_secs_f64() / secs
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
#[ignore = "a measurement, about ten seconds"]
async fn heartbeats_and_writes_of_256_groups() {
    let mut nodes = Vec::new();
    for id in 1..=3 {
        nodes.push(
            TestNode::start_with(id, (0..=255).collect(), common::config_with(250, 750, 1500))
                .await,
        );
    }
    let members: BTreeMap<u64, _> = nodes.iter().map(|n| (n.id, n.node())).collect();
    for g in 0..=255u8 {
        nodes[usize::from(g) % 3].rafts[&g].initialize(members.clone()).await.expect("initialize");
    }
    let leader =
        |g: u8| nodes.iter().find(|n| n.rafts[&g].metrics().borrow().state == ServerState::Leader);
    eventually(Duration::from_secs(20), "leaders", || (0..=255u8).all(|g| leader(g).is_some()))
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let (before, cpu, start) = (total(&nodes), cpu_time(), Instant::now());
    tokio::time::sleep(Duration::from_secs(5)).await;
    report("idle, 768 groups at heartbeat 250 ms", &nodes, before, cpu, start.elapsed());

    let (before, cpu, start) = (total(&nodes), cpu_time(), Instant::now());
    let deadline = start + Duration::from_secs(3);
    let writers = (0..64u32).map(|w| {
        let nodes = &nodes;
        async move {
            let mut n = 0u64;
            let mut g = (w * 4) as u8;
            while Instant::now() < deadline {
                g = g.wrapping_add(1);
                let Some(node) = nodes
                    .iter()
                    .find(|n| n.rafts[&g].metrics().borrow().state == ServerState::Leader)
                else {
                    continue;
                };
                if node.rafts[&g].client_write(Request(vec![0; 100])).await.is_ok() {
                    n += 1;
                }
            }
            n
        }
    });
    let writes: u64 = futures_util::future::join_all(writers).await.into_iter().sum();
    let took = start.elapsed();
    eprintln!("load: {writes} writes of 100 bytes by 64 writers in {took:?}");
    report("load", &nodes, before, cpu, took);
}
