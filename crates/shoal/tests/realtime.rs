//! Routing and real time end to end: three nodes, a monitor, two proxies and
//! a real etcd. Writers using the client library through the proxies put
//! 10 000 rows into one base while a change feed is watched through a proxy;
//! mid-load the base's leader is SIGKILLed and later restarted. No call may
//! fail, no row may be written twice, and the watcher must see every insert
//! exactly once, in log order.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::Process;
use common::cluster::{Cluster, TOKEN};
use shoal_client::watch::{Watch, WatchEvent, WatchOptions};
use shoal_client::{Client, Options};
use shoal_types::api::{ChangeOp, FeedMessage, Params, Statement};
use shoal_types::{BaseId, Error};

const ROWS: usize = 10_000;
const WRITERS: usize = 8;

/// Retries `f` until it succeeds, for at most `within`.
async fn eventually<T, F, Fut>(what: &str, within: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Error>>,
{
    let deadline = Instant::now() + within;
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) => assert!(Instant::now() < deadline, "{what}: still failing: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watcher_and_writers_ride_through_a_leader_restart_through_proxies() {
    let mut c = Cluster::new().await;
    c.start_three_nodes();
    c.wait_three_replicas().await;
    let proxies: Vec<Process> =
        (0..2).map(|i| c.start_proxy(i, &["--retry-deadline", "20s"])).collect();
    let endpoints: Vec<String> = proxies.iter().map(|p| p.url.clone()).collect();
    // Every request goes through the proxies: the client does not look for
    // the leader itself.
    let options = Options {
        follow_leaders: false,
        retry_deadline: Duration::from_secs(30),
        ..Options::default()
    };
    let client =
        Client::with_options(&endpoints, Some(TOKEN.to_string()), options).expect("client");

    let base = eventually("create the base", Duration::from_secs(60), || {
        client.create_base(None, Some("realtime".into()))
    })
    .await
    .id;
    let ddl =
        Statement { sql: "CREATE TABLE t (v INTEGER NOT NULL)".into(), params: Params::default() };
    let created = client.execute(base, vec![ddl], true).await.expect("create the table");

    // The watcher follows the base from just after its table was made.
    let after = created.index;
    let watcher = tokio::spawn(watch_inserts(endpoints.clone(), base, after));

    // Eight writers insert 0..ROWS between them, one row per call.
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let mut writers = Vec::new();
    for _ in 0..WRITERS {
        let (client, next, done) = (client.clone(), next.clone(), done.clone());
        writers.push(tokio::spawn(async move {
            loop {
                let v = next.fetch_add(1, Ordering::Relaxed);
                if v >= ROWS {
                    return Ok::<(), String>(());
                }
                let insert = Statement {
                    sql: "INSERT INTO t (v) VALUES (?)".into(),
                    params: Params::Positional(vec![(v as i64).into()]),
                };
                client
                    .execute(base, vec![insert], true)
                    .await
                    .map_err(|e| format!("row {v}: {e}"))?;
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let wait_done = |n: usize, what: &'static str| {
        let done = done.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(180);
            while done.load(Ordering::Relaxed) < n {
                assert!(
                    Instant::now() < deadline,
                    "{what}: only {} rows written",
                    done.load(Ordering::Relaxed)
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };

    // A third in, SIGKILL the base's leader; two thirds in, restart it.
    wait_done(ROWS / 3, "before the kill").await;
    let leader = eventually("find the leader", Duration::from_secs(20), || async {
        client.location(base).await?.leader.ok_or_else(|| Error::Unavailable("no leader".into()))
    })
    .await
    .node_id
    .0;
    let node = c.nodes.get_mut(&leader).expect("the leader is one of the nodes");
    node.kill();
    let killed = Instant::now();
    let at_kill = done.load(Ordering::Relaxed);
    wait_done(at_kill + 100, "after the kill").await;
    println!("100 more rows {:.2}s after SIGKILL of {leader}", killed.elapsed().as_secs_f64());
    wait_done(2 * ROWS / 3, "before the restart").await;
    c.nodes.get_mut(&leader).expect("leader").restart_same_port();

    for w in writers {
        w.await.expect("writer task").expect("no write may fail");
    }
    let seen = tokio::time::timeout(Duration::from_secs(120), watcher)
        .await
        .expect("the watcher sees every insert in time")
        .expect("watcher task");
    assert_eq!(seen.len(), ROWS, "the watcher saw each insert once");
    assert_eq!(seen.iter().copied().collect::<BTreeSet<i64>>().len(), ROWS, "no insert twice");

    // Every row is in the base exactly once.
    let counts = client
        .query(base, "SELECT count(*), count(DISTINCT v), min(v), max(v) FROM t", Params::default())
        .await
        .expect("count");
    assert_eq!(
        counts.rows,
        vec![vec![
            serde_json::json!(ROWS),
            serde_json::json!(ROWS),
            serde_json::json!(0),
            serde_json::json!(ROWS - 1)
        ]],
        "every row once"
    );
    drop(proxies);
}

/// Follows the feed until it has seen `ROWS` inserts; returns their values
/// in the order they came. Fails on anything but inserts after `after`, on
/// an index that goes backwards, and on a resync.
async fn watch_inserts(endpoints: Vec<String>, base: BaseId, after: u64) -> Vec<i64> {
    let options = WatchOptions { min_backoff: Duration::from_millis(50), ..Default::default() };
    let mut feed =
        Watch::new(&endpoints, Some(TOKEN.to_string()), base, Some(after), options).expect("watch");
    let mut values = Vec::with_capacity(ROWS);
    let mut last = after;
    let mut reconnects = 0;
    while values.len() < ROWS {
        match feed.next().await {
            Ok(Some(WatchEvent::Message(FeedMessage::Change(e)))) => {
                assert_eq!(e.op, ChangeOp::Insert, "{e:?}");
                // One row per write: each event has an index of its own.
                assert!(e.index > last, "index {} after {last}", e.index);
                last = e.index;
                let v = e.row.as_ref().and_then(|r| r["v"].as_i64()).expect("the row's value");
                values.push(v);
            }
            Ok(Some(WatchEvent::Reconnecting { .. })) => reconnects += 1,
            other => panic!("after {} inserts: unexpected {other:?}", values.len()),
        }
    }
    println!("the watcher reconnected {reconnects} times");
    values
}
