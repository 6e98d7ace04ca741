//! Right after a cluster reports itself ready (the map placed, every replica
//! hosted), a write sent to any node succeeds the first time: a write that
//! meets a group whose leadership is still moving is forwarded or waited on,
//! never refused. Ten fresh three-node clusters, each written through every
//! node at once.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{Cluster, TOKEN};
use serde_json::json;

/// The cluster as a node reports it: ready once the map is placed and
/// every replica is hosted.
async fn ready(c: &Cluster, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let s = c.status(&c.nodes["n1"]).await;
        let hosted: usize = s.nodes.iter().map(|n| n.hosted).sum();
        if s.epoch >= 1
            && s.replication_factor == 3
            && s.moves_in_progress.is_empty()
            && s.under_replicated.is_empty()
            && hosted == 3 * 256
        {
            return;
        }
        assert!(Instant::now() < deadline, "the cluster did not get ready: {s:?}\n{}", c.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_through_every_node_succeed_right_after_the_cluster_is_ready() {
    let http = reqwest::Client::new();
    for round in 0..10 {
        let mut c = Cluster::new().await;
        c.start_three_nodes();
        ready(&c, Duration::from_secs(60)).await;
        // Every node at once creates bases in buckets spread over the map,
        // then writes to each; no retries.
        let mut tasks = Vec::new();
        for (n, (name, node)) in c.nodes.iter().enumerate() {
            for i in 0..12 {
                let bucket = (n * 85 + i * 7) % 256;
                let id =
                    format!("{bucket:02x}{round:02x}{n:02x}{i:02x}-0000-4000-8000-000000000000");
                let (http, url, name) = (http.clone(), node.url.clone(), name.clone());
                tasks.push(tokio::spawn(async move {
                    let create = http
                        .post(format!("{url}/v1/bases"))
                        .bearer_auth(TOKEN)
                        .json(&json!({"id": id}))
                        .send()
                        .await
                        .map_err(|e| format!("{name}: create {id}: {e}"))?;
                    if !create.status().is_success() {
                        let status = create.status();
                        return Err(format!("{name}: create {id}: {status} {}", create.text().await.unwrap_or_default()));
                    }
                    let exec = http
                        .post(format!("{url}/v1/bases/{id}/execute"))
                        .bearer_auth(TOKEN)
                        .json(&json!({"statements": [{"sql": "CREATE TABLE t (a)"}, {"sql": "INSERT INTO t VALUES (1)"}]}))
                        .send()
                        .await
                        .map_err(|e| format!("{name}: execute on {id}: {e}"))?;
                    if !exec.status().is_success() {
                        let status = exec.status();
                        return Err(format!("{name}: execute on {id}: {status} {}", exec.text().await.unwrap_or_default()));
                    }
                    Ok(())
                }));
            }
        }
        let mut failures = Vec::new();
        for t in tasks {
            if let Err(e) = t.await.expect("task") {
                failures.push(e);
            }
        }
        assert!(failures.is_empty(), "round {round}: {failures:#?}\n{}", c.logs());
    }
}
