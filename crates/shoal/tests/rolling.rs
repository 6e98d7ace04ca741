//! A rolling restart under load: every node of a three-node cluster is
//! stopped with SIGTERM and started again, one after another, while
//! clients of the client library (each given every node) write and read.
//! No request fails, every acknowledged write is there once, and the
//! replicas end equal.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::base_with_table;
use common::cluster::{Cluster, TOKEN};
use serde_json::json;
use shoal_client::Client;
use shoal_types::BaseId;
use shoal_types::api::Row;

const BASES: usize = 4;

/// What the clients saw.
#[derive(Default)]
struct Seen {
    /// Acknowledged inserts per base.
    acked: Vec<i64>,
    /// Reads done.
    reads: u64,
    /// Every failed request, and every read that missed an acknowledged write.
    errors: Vec<String>,
}

/// Waits (bounded) until the cluster is whole again: every replica hosted,
/// none on a dead node, no move in progress.
async fn whole(client: &Client) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Ok(s) = client.cluster_status().await
            && s.under_replicated.is_empty()
            && s.on_dead_nodes.is_empty()
            && s.moves_in_progress.is_empty()
            && s.nodes.iter().all(|n| n.live)
        {
            return;
        }
        assert!(Instant::now() < deadline, "the cluster is not whole again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_restart_under_load_fails_no_request_and_loses_nothing() {
    let mut c = Cluster::new().await;
    c.start_three_nodes();
    c.wait_three_replicas().await;
    let client = c.nodes_client();
    whole(&client).await;
    let mut bases: Vec<BaseId> = Vec::new();
    for _ in 0..BASES {
        bases.push(base_with_table(&client, "CREATE TABLE t (v INTEGER PRIMARY KEY)").await);
    }

    let seen = Arc::new(Mutex::new(Seen { acked: vec![0; BASES], ..Seen::default() }));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    // A writer per base: values 0, 1, 2, ... in order, keyed by the client.
    for (i, base) in bases.iter().copied().enumerate() {
        let (client, seen, stop) = (client.clone(), seen.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(300);
            let mut v = 0i64;
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let mut row = Row::new();
                row.insert("v".into(), json!(v));
                let result = client.insert_rows(base, "t", vec![row]).await;
                let mut s = seen.lock().expect("lock");
                match result {
                    Ok(_) => s.acked[i] = v + 1,
                    Err(e) => s.errors.push(format!("insert {v} into base {i}: {e:?}")),
                }
                v += 1;
            }
        }));
    }
    // Readers: a linearizable count sees every insert acknowledged before it.
    for r in 0..2 {
        let (client, seen, stop, bases) =
            (client.clone(), seen.clone(), stop.clone(), bases.clone());
        tasks.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(300);
            let mut n = r;
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let i = n % BASES;
                n += 1;
                let before = seen.lock().expect("lock").acked[i];
                let result =
                    client.query(bases[i], "SELECT count(*) FROM t", Default::default()).await;
                let mut s = seen.lock().expect("lock");
                s.reads += 1;
                match result
                    .map(|q| q.rows.first().and_then(|r| r.first()).and_then(|v| v.as_i64()))
                {
                    Ok(Some(count)) if count >= before => {}
                    Ok(count) => s.errors.push(format!(
                        "a read of base {i} counted {count:?} rows after {before} were acknowledged"
                    )),
                    Err(e) => s.errors.push(format!("read of base {i}: {e:?}")),
                }
            }
        }));
    }
    let progress = |seen: &Arc<Mutex<Seen>>| seen.lock().expect("lock").acked.iter().sum::<i64>();
    let until_more = |n: i64, what: String| {
        let seen = seen.clone();
        async move {
            let target = progress(&seen) + n;
            let deadline = Instant::now() + Duration::from_secs(60);
            while progress(&seen) < target {
                assert!(Instant::now() < deadline, "the writers stalled {what}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    until_more(100, "before the restarts".into()).await;

    let names: Vec<String> = c.nodes.keys().cloned().collect();
    for name in &names {
        let status =
            tokio::task::block_in_place(|| c.nodes.get_mut(name).expect("node").terminate());
        assert!(status.success(), "{name}'s exit on SIGTERM: {status}");
        until_more(50, format!("while {name} was down")).await;
        tokio::task::block_in_place(|| c.nodes.get_mut(name).expect("node").restart_same_port());
        whole(&client).await;
        until_more(50, format!("after {name} came back")).await;
        println!("{name} restarted; {} inserts so far", progress(&seen));
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("client task");
    }

    let s = std::mem::take(&mut *seen.lock().expect("lock"));
    println!("{} inserts and {} reads over the restarts", s.acked.iter().sum::<i64>(), s.reads);
    assert!(s.errors.is_empty(), "requests failed: {:#?}", s.errors);
    // Every insert is there exactly once, and the replicas agree.
    let http = reqwest::Client::new();
    for (i, base) in bases.iter().enumerate() {
        let n = s.acked[i];
        let q = client
            .query(*base, "SELECT COUNT(*), MIN(v), MAX(v) FROM t", Default::default())
            .await
            .expect("count");
        assert_eq!(q.rows, vec![vec![json!(n), json!(0), json!(n - 1)]], "base {i}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut sums = BTreeMap::new();
            for (name, p) in &c.nodes {
                let v: serde_json::Value = http
                    .get(format!("{}/v1/bases/{base}/checksum?consistency=none", p.url))
                    .bearer_auth(TOKEN)
                    .send()
                    .await
                    .expect("checksum")
                    .json()
                    .await
                    .expect("json");
                sums.insert(name.clone(), format!("{} at {}", v["checksum"], v["applied_index"]));
            }
            let distinct: std::collections::BTreeSet<_> = sums.values().collect();
            if distinct.len() == 1 {
                break;
            }
            // A follower may be a moment behind its leader.
            assert!(Instant::now() < deadline, "base {i}'s replicas differ: {sums:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
