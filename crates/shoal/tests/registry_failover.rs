//! The registry's own failure: a three-member etcd, a three-server
//! ZooKeeper ensemble, or a three-member embedded registry, loses its
//! leader (SIGKILL) while clients write
//! through every node; no request fails, nothing is lost, and the cluster's
//! view stays whole.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::base_with_table;
use common::cluster::{Backend, Cluster};
use serde_json::json;
use shoal_types::api::Row;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn losing_an_etcd_member_under_load_fails_no_request() {
    losing_the_registry_leader_under_load_fails_no_request(Backend::Etcd).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn losing_a_zookeeper_server_under_load_fails_no_request() {
    losing_the_registry_leader_under_load_fails_no_request(Backend::ZooKeeper).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn losing_an_embedded_registry_member_under_load_fails_no_request() {
    losing_the_registry_leader_under_load_fails_no_request(Backend::Embedded).await;
}

async fn losing_the_registry_leader_under_load_fails_no_request(backend: Backend) {
    let mut c = Cluster::with_three(backend).await;
    c.start_three_nodes();
    c.wait_three_replicas().await;
    let client = c.nodes_client();
    let mut bases = Vec::new();
    for _ in 0..3 {
        bases.push(base_with_table(&client, "CREATE TABLE t (v INTEGER)").await);
    }
    let acked = Arc::new(Mutex::new(vec![0i64; bases.len()]));
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for (i, base) in bases.iter().copied().enumerate() {
        let (client, acked, errors, stop) =
            (client.clone(), acked.clone(), errors.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(120);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let mut row = Row::new();
                row.insert("v".into(), json!(1));
                match client.insert_rows(base, "t", vec![row]).await {
                    Ok(_) => acked.lock().expect("lock")[i] += 1,
                    Err(e) => errors.lock().expect("lock").push(format!("{e:?}")),
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let leader = c.server.leader().await.expect("a registry leader");
    c.server.kill(leader);
    // Longer than the node TTL (3 s) and the registry's election:
    // registrations, reports and the map must all live through it.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let status = c.status(&c.nodes["n1"]).await;
    assert!(status.nodes.iter().all(|n| n.live), "a node dropped out: {status:?}");
    assert!(status.under_replicated.is_empty(), "{status:?}");
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.expect("writer");
    }
    let errors = errors.lock().expect("lock").clone();
    assert!(errors.is_empty(), "writes failed while {backend:?} lost a member: {errors:#?}");
    let acked = acked.lock().expect("lock").clone();
    for (i, base) in bases.iter().enumerate() {
        let q =
            client.query(*base, "SELECT count(*) FROM t", Default::default()).await.expect("count");
        assert_eq!(q.rows, vec![vec![json!(acked[i])]], "base {i}");
    }
    println!(
        "{} writes while {backend:?} member {leader} (its leader) was killed",
        acked.iter().sum::<i64>()
    );
}
