//! Replication between real `shoal node` processes on a real etcd: writes
//! through any node, the loss of a bucket's leader under load, no lost
//! acknowledged write, and replicas that end equal.

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::cluster::{Cluster, TOKEN};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// A raw HTTP call to one node.
async fn call(
    http: &reqwest::Client,
    url: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
    no_forward: bool,
) -> Result<(StatusCode, Value), String> {
    let mut r = http
        .request(method, format!("{url}{path}"))
        .bearer_auth(TOKEN)
        .timeout(Duration::from_secs(10));
    if let Some(b) = body {
        r = r.json(&b);
    }
    if no_forward {
        r = r.header("x-shoal-no-forward", "1");
    }
    let resp = r.send().await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let text = resp.text().await.map_err(|e| e.to_string())?;
    Ok((status, serde_json::from_str(&text).unwrap_or(Value::String(text))))
}

/// Sends a write to the nodes in turn until one acknowledges it (bounded).
async fn write(
    http: &reqwest::Client,
    urls: &[String],
    path: &str,
    body: Value,
    within: Duration,
) -> Result<Value, String> {
    let deadline = Instant::now() + within;
    let mut last = String::new();
    let mut i = 0usize;
    while Instant::now() < deadline {
        let url = &urls[i % urls.len()];
        i += 1;
        match call(http, url, reqwest::Method::POST, path, Some(body.clone()), false).await {
            Ok((s, v)) if s.is_success() => return Ok(v),
            Ok((s, v)) => last = format!("{s} {v}"),
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(last)
}

/// Which node leads the base's bucket: the one that answers a leader read
/// itself instead of redirecting.
async fn leader_of(http: &reqwest::Client, c: &Cluster, base: &str) -> Option<String> {
    for (name, p) in &c.nodes {
        let path = format!("/v1/bases/{base}/checksum?consistency=leader");
        if let Ok((StatusCode::OK, _)) =
            call(http, &p.url, reqwest::Method::GET, &path, None, true).await
        {
            return Some(name.clone());
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_loss_under_load_loses_no_acknowledged_write_and_replicas_converge() {
    let mut c = Cluster::new().await;
    c.start_three_nodes();
    let http = reqwest::Client::new();
    let urls: Vec<String> = c.nodes.values().map(|p| p.url.clone()).collect();

    // A base, created through one node, its table through another: followers
    // forward to the leader.
    let created = write(&http, &urls, "/v1/bases", json!({}), Duration::from_secs(60))
        .await
        .expect("create base");
    let base = created["id"].as_str().expect("id").to_string();
    let exec = format!("/v1/bases/{base}/execute");
    let ddl = json!({"statements": [{"sql": "CREATE TABLE t (k TEXT PRIMARY KEY)"}]});
    write(&http, &urls[1..], &exec, ddl, Duration::from_secs(30)).await.expect("create table");
    for url in &urls {
        let (s, v) = call(
            &http,
            url,
            reqwest::Method::POST,
            &exec,
            Some(json!({"statements": [{"sql": "INSERT INTO t VALUES (?)", "params": [url]}]})),
            false,
        )
        .await
        .expect("reachable");
        assert!(s.is_success(), "a write through {url} failed: {s} {v}");
    }

    // A write load through every node in turn.
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4 {
        let (http, urls, exec, acked, stop) =
            (http.clone(), urls.clone(), exec.clone(), acked.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let k = format!("w{w}-{i}");
                let body =
                    json!({"statements": [{"sql": "INSERT INTO t VALUES (?)", "params": [k]}]});
                // Every write is either acknowledged or abandoned; only
                // acknowledged ones are checked afterwards.
                if write(
                    &http,
                    &urls[w % urls.len()..]
                        .iter()
                        .chain(urls[..w % urls.len()].iter())
                        .cloned()
                        .collect::<Vec<_>>(),
                    &exec,
                    body,
                    Duration::from_secs(20),
                )
                .await
                .is_ok()
                {
                    acked.lock().expect("lock").push(k);
                }
                i += 1;
            }
        }));
    }
    let until = |n: usize| {
        let acked = acked.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            while acked.lock().expect("lock").len() < n {
                assert!(
                    Instant::now() < deadline,
                    "the load stalled at {} writes",
                    acked.lock().expect("lock").len()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    until(100).await;

    // Kill the bucket's leader in the middle of the load.
    let leader = leader_of(&http, &c, &base).await.expect("a leader");
    let before = acked.lock().expect("lock").len();
    c.nodes.get_mut(&leader).expect("leader").kill();
    let killed_at = Instant::now();
    until(before + 50).await;
    println!(
        "writes resumed: 50 more acknowledged {:.2}s after SIGKILL of the leader {leader}",
        killed_at.elapsed().as_secs_f64()
    );
    until(before + 150).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.await.expect("writer");
    }

    // Every acknowledged write is there (linearizable read through a survivor).
    let survivors: Vec<String> =
        c.nodes.iter().filter(|(n, _)| **n != leader).map(|(_, p)| p.url.clone()).collect();
    let (s, v) = call(
        &http,
        &survivors[0],
        reqwest::Method::POST,
        &format!("/v1/bases/{base}/query"),
        Some(json!({"sql": "SELECT k FROM t"})),
        false,
    )
    .await
    .expect("query");
    assert!(s.is_success(), "{v}");
    let stored: BTreeSet<String> = v["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .filter_map(|r| r[0].as_str().map(String::from))
        .collect();
    let acked = acked.lock().expect("lock").clone();
    let missing: Vec<&String> = acked.iter().filter(|k| !stored.contains(*k)).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged writes lost, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );

    // The old leader comes back and catches up: all replicas equal.
    c.nodes.get_mut(&leader).expect("leader").restart();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut sums = BTreeSet::new();
        let mut seen = Vec::new();
        for (name, p) in &c.nodes {
            match call(
                &http,
                &p.url,
                reqwest::Method::GET,
                &format!("/v1/bases/{base}/checksum?consistency=none"),
                None,
                true,
            )
            .await
            {
                Ok((StatusCode::OK, v)) => {
                    sums.insert(v["checksum"].as_str().unwrap_or_default().to_string());
                    seen.push(format!("{name}: index {} {}", v["applied_index"], v["checksum"]));
                }
                other => {
                    sums.insert(format!("{other:?}"));
                    seen.push(format!("{name}: {other:?}"));
                }
            }
        }
        if sums.len() == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "replicas differ: {seen:#?}\n{}", c.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn node_id(name: &str) -> shoal_types::NodeId {
    shoal_types::NodeId(name.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_node_receives_its_buckets_data_and_old_replicas_let_go() {
    let mut c = Cluster::new().await;
    c.start_three_nodes();
    let http = reqwest::Client::new();
    let urls: Vec<String> = c.nodes.values().map(|p| p.url.clone()).collect();

    // Bases in many buckets, with rows.
    let mut bases = Vec::new();
    for i in 0..24 {
        let id = format!("{:02x}{:06x}-0000-4000-8000-000000000000", (i * 11) % 256, i);
        write(&http, &urls, "/v1/bases", json!({"id": id}), Duration::from_secs(60))
            .await
            .expect("create");
        let exec = format!("/v1/bases/{id}/execute");
        let body = json!({"statements": [
            {"sql": "CREATE TABLE t (k TEXT PRIMARY KEY, v BLOB)"},
            {"sql": "INSERT INTO t VALUES (?, zeroblob(2000))", "params": [format!("first-{i}")]}]});
        write(&http, &urls, &exec, body, Duration::from_secs(30)).await.expect("fill");
        bases.push(id);
    }
    let before =
        c.wait_map("3 nodes", Duration::from_secs(30), |m| m.replica_counts().len() == 3).await;

    // Writes go on while n4 joins.
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (http, urls, bases, acked, stop) =
            (http.clone(), urls.clone(), bases.clone(), acked.clone(), stop.clone());
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let base = &bases[i % bases.len()];
                let k = format!("k{i}");
                let body = json!({"statements": [{"sql": "INSERT INTO t VALUES (?, NULL)", "params": [k]}]});
                if write(
                    &http,
                    &urls,
                    &format!("/v1/bases/{base}/execute"),
                    body,
                    Duration::from_secs(20),
                )
                .await
                .is_ok()
                {
                    acked.lock().expect("lock").push((base.clone(), k));
                }
                i += 1;
            }
        })
    };
    c.start_node("n4");
    let after = c.wait_map("n4 placed", Duration::from_secs(30), |m| m.epoch > before.epoch).await;
    let n4 = shoal_types::NodeId("n4".into());
    // The writes go on until n4 hosts what the map gives it.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let s = c.status(&c.nodes["n1"]).await;
        if s.moves_in_progress.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "n4 never took its buckets: {s:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.await.expect("writer");

    // Every base whose bucket n4 now holds reaches n4 with the same content
    // as its other replicas (compared once the writes stopped: under a
    // stream of writes, replicas a few entries apart differ at any moment);
    // nodes that lost a bucket no longer serve it.
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut last = String::new();
    'outer: loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(Instant::now() < deadline, "replicas did not converge: {last}\n{}", c.logs());
        for base in &bases {
            let bucket: shoal_types::BaseId = base.parse().expect("id");
            let replicas = after.replicas(bucket.bucket());
            let mut sums = BTreeSet::new();
            for (name, p) in &c.nodes {
                let path = format!("/v1/bases/{base}/checksum?consistency=none");
                let r = call(&http, &p.url, reqwest::Method::GET, &path, None, true).await;
                let holds = replicas.contains(&shoal_types::NodeId(name.clone()));
                match (holds, r) {
                    (true, Ok((StatusCode::OK, v))) => {
                        sums.insert(v["checksum"].as_str().unwrap_or_default().to_string());
                    }
                    (false, Ok((StatusCode::MISDIRECTED_REQUEST, v))) => {
                        assert!(
                            !v["error"]["replicas"]
                                .as_array()
                                .map(|r| r.is_empty())
                                .unwrap_or(true),
                            "{v}"
                        );
                    }
                    (holds, other) => {
                        last = format!("{base} on {name} (holds: {holds}): {other:?}");
                        continue 'outer;
                    }
                }
            }
            if sums.len() != 1 {
                last = format!("{base}: checksums differ: {sums:?}");
                continue 'outer;
            }
        }
        break;
    }
    assert!(after.replica_counts().get(&n4).copied().unwrap_or(0) > 0);
    // A node without a replica of a base's bucket sends a request on to one
    // that has it (421 only when the client asks not to be forwarded).
    for base in &bases {
        let bucket: shoal_types::BaseId = base.parse().expect("id");
        let replicas = after.replicas(bucket.bucket());
        for (name, p) in c.nodes.iter().filter(|(n, _)| !replicas.contains(&node_id(n))) {
            let path = format!("/v1/bases/{base}/query");
            let q = Some(json!({"sql": "SELECT count(*) FROM t"}));
            let (s, v) =
                call(&http, &p.url, reqwest::Method::POST, &path, q, false).await.expect("query");
            assert_eq!(s, StatusCode::OK, "{name}, which holds no replica of {base}: {v}");
        }
    }
    // Every node lists every base, though none holds every bucket now.
    for (name, p) in &c.nodes {
        let list = "/v1/bases?limit=1000";
        let (s, v) =
            call(&http, &p.url, reqwest::Method::GET, list, None, false).await.expect("list");
        assert_eq!(s, StatusCode::OK, "{name}: {v}");
        let listed: BTreeSet<&str> =
            v["bases"].as_array().expect("bases").iter().filter_map(|b| b["id"].as_str()).collect();
        for base in &bases {
            assert!(listed.contains(base.as_str()), "{name} does not list {base}: {v}");
        }
    }
    // No acknowledged write was lost during the moves.
    let acked = acked.lock().expect("lock").clone();
    assert!(!acked.is_empty());
    for base in &bases {
        let query = Some(json!({"sql": "SELECT k FROM t"}));
        let path = format!("/v1/bases/{base}/query");
        // As a client would: follow a 421 to a node that holds the bucket,
        // and retry (bounded) while a leader is being elected.
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut url = urls[0].clone();
        let (s, v) = loop {
            let (s, v) = call(&http, &url, reqwest::Method::POST, &path, query.clone(), false)
                .await
                .expect("query");
            if s == StatusCode::MISDIRECTED_REQUEST {
                url = v["error"]["replicas"][0].as_str().expect("a replica").to_string();
            } else if s != StatusCode::SERVICE_UNAVAILABLE || Instant::now() > deadline {
                break (s, v);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert!(s.is_success(), "{v}");
        let stored: BTreeSet<String> = v["rows"]
            .as_array()
            .expect("rows")
            .iter()
            .filter_map(|r| r[0].as_str().map(String::from))
            .collect();
        for (b, k) in acked.iter().filter(|(b, _)| b == base) {
            assert!(stored.contains(k), "acknowledged {k} missing from {b}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_leaders_spread_over_the_nodes() {
    let mut c = Cluster::new().await;
    c.start_three_nodes();
    let http = reqwest::Client::new();
    let gauge = |text: &str, name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0) as u64
    };
    // 256 groups, 3 replicas each: leadership spreads over the three nodes.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let mut led = Vec::new();
        for p in c.nodes.values() {
            let text = http
                .get(format!("{}/metrics", p.url))
                .send()
                .await
                .expect("metrics")
                .text()
                .await
                .expect("text");
            led.push((gauge(&text, "shoal_raft_groups"), gauge(&text, "shoal_raft_groups_led")));
        }
        let total: u64 = led.iter().map(|(_, l)| *l).sum();
        // 256 / 3 is about 85; every node leads a fair share.
        if led.iter().all(|(g, l)| *g == 256 && *l >= 60) && total == 256 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "leaders did not spread: (groups, led) per node = {led:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
