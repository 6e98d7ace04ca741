//! The Rust client against real processes: a loop of writes that rides
//! through the loss and return of its bucket's leader with no error and no
//! duplicate (on an etcd and on a ZooKeeper registry), and endpoints that
//! cannot be reached.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::cluster::{Backend, Cluster, TOKEN};
use common::{Mode, Server};
use common::{base_with_table, eventually};
use serde_json::json;
use shoal_client::{Client, Options};
use shoal_types::api::{Row, Statement};
use shoal_types::{BaseId, Error};

/// A URL nothing listens on.
fn dead_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    format!("http://{}", l.local_addr().expect("addr"))
}

fn row(v: i64) -> Row {
    let mut r = Row::new();
    r.insert("v".into(), json!(v));
    r
}

/// What the write loop saw.
#[derive(Default)]
struct Progress {
    /// When each insert (value = index) was acknowledged.
    acked: Vec<Instant>,
    /// The slowest insert.
    slowest: Duration,
    /// Errors returned to the loop.
    errors: Vec<String>,
}

on_every_backend!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    a_write_loop_rides_through_a_leader_kill_and_restart_without_errors_or_duplicates
);

async fn a_write_loop_rides_through_a_leader_kill_and_restart_without_errors_or_duplicates(
    backend: Backend,
) {
    let mut c = Cluster::on_backend(backend).await;
    c.start_three_nodes();
    c.wait_three_replicas().await;
    let client = c.nodes_client();

    let base = base_with_table(&client, "CREATE TABLE t (v INTEGER)").await;

    // The loop: one row per call, values 0, 1, 2, ... in order.
    let progress: Arc<Mutex<Progress>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (client, progress, stop) = (client.clone(), progress.clone(), stop.clone());
        tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(180);
            let mut v = 0i64;
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let started = Instant::now();
                let result = client.insert_rows(base, "t", vec![row(v)]).await;
                let mut p = progress.lock().expect("lock");
                p.slowest = p.slowest.max(started.elapsed());
                match result {
                    Ok(_) => {
                        p.acked.push(Instant::now());
                        v += 1;
                    }
                    // Keep going, so that a failure is reported with the
                    // rest of the picture; the value is not reused.
                    Err(e) => {
                        p.errors.push(format!("insert {v}: {e:?}"));
                        v += 1;
                        p.acked.push(Instant::now());
                    }
                }
            }
        })
    };
    let acked = |p: &Arc<Mutex<Progress>>| p.lock().expect("lock").acked.len();
    let wait_for = |n: usize, what: &'static str| {
        let progress = progress.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            while progress.lock().expect("lock").acked.len() < n {
                assert!(Instant::now() < deadline, "the loop stalled {what}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    wait_for(50, "before the kill").await;

    // Kill the leader of the base's bucket in the middle of the loop.
    let leader = eventually("find the leader", || async {
        client
            .location(base)
            .await?
            .leader
            .ok_or_else(|| Error::Unavailable("no leader yet".into()))
    })
    .await;
    let name = leader.node_id.0.clone();
    {
        let p = progress.lock().expect("lock");
        let first = p.acked[49].duration_since(p.acked[0]).as_secs_f64();
        println!("before the kill: 50 inserts in {first:.2}s");
    }
    assert!(c.nodes.contains_key(&name), "unknown leader {name}");
    let before_kill = acked(&progress);
    c.nodes.get_mut(&name).expect("leader").kill();
    let killed_at = Instant::now();
    wait_for(before_kill + 50, "after the kill").await;
    let resumed = progress.lock().expect("lock").acked[before_kill + 49];
    println!(
        "50 inserts done {:.2}s after SIGKILL of the leader {name}",
        resumed.duration_since(killed_at).as_secs_f64()
    );

    // Bring it back where it was; the loop goes on.
    c.nodes.get_mut(&name).expect("leader").restart_same_port();
    let before_restart = acked(&progress);
    wait_for(before_restart + 50, "after the restart").await;
    stop.store(true, Ordering::Relaxed);
    writer.await.expect("writer");

    let p = std::mem::take(&mut *progress.lock().expect("lock"));
    println!("{} inserts, slowest {:.2}s", p.acked.len(), p.slowest.as_secs_f64());
    assert!(p.errors.is_empty(), "the loop saw errors: {:#?}\n{}", p.errors, c.logs());
    let after_kill = p.acked.iter().filter(|t| **t > killed_at).count();
    assert!(after_kill >= 100, "only {after_kill} inserts after the kill");

    // Every insert is there exactly once: as many rows as inserts, as many
    // distinct values, and the values are exactly 0..n.
    let n = p.acked.len() as i64;
    let q = client
        .query(
            base,
            "SELECT COUNT(*), COUNT(DISTINCT v), MIN(v), MAX(v) FROM t",
            Default::default(),
        )
        .await
        .expect("count");
    assert_eq!(q.rows, vec![vec![json!(n), json!(n), json!(0), json!(n - 1)]], "{} inserts", n);
}

#[tokio::test]
async fn a_dead_first_endpoint_is_passed_over() {
    let (_dir, server) = Server::start(Mode::Standalone, &[]);
    let client =
        Client::with_endpoints(&[dead_url(), server.url.clone()], Some(server.token.clone()))
            .expect("client");
    let base = client.create_base(None, Some("b".into())).await.expect("create").id;
    let ddl =
        vec![Statement { sql: "CREATE TABLE t (v INTEGER)".into(), params: Default::default() }];
    client.execute(base, ddl, true).await.expect("create table");
    client.insert_rows(base, "t", vec![row(1)]).await.expect("insert");
    let q = client.query(base, "SELECT v FROM t", Default::default()).await.expect("query");
    assert_eq!(q.rows, vec![vec![json!(1)]]);
    assert_eq!(client.endpoint(), server.url);

    // The CLI takes the same list.
    let (ok, out, err) = common::cli(
        &server,
        &[
            "base",
            "get",
            &base.to_string(),
            "--endpoint",
            &format!("{},{}", dead_url(), server.url),
        ],
    );
    assert!(ok, "{out}\n{err}");
    assert!(out.contains(&base.to_string()), "{out}");
}

#[tokio::test]
async fn a_write_without_a_key_to_a_dead_endpoint_surfaces_the_error() {
    let options = Options {
        idempotency_keys: false,
        retry_deadline: Duration::from_secs(1),
        ..Options::default()
    };
    let client = Client::with_options(&[dead_url()], None, options).expect("client");
    let started = Instant::now();
    let err = client.insert_rows(BaseId::random(), "t", vec![row(1)]).await.expect_err("dead");
    assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
}

#[tokio::test]
async fn bad_sql_comes_back_at_once() {
    let (_dir, server) = Server::start(Mode::Standalone, &[]);
    let client = server.client();
    let base = client.create_base(None, None).await.expect("create").id;
    let started = Instant::now();
    let bad = vec![Statement { sql: "CREATE TABLEX t (v)".into(), params: Default::default() }];
    let err = client.execute(base, bad, true).await.expect_err("bad sql");
    assert!(matches!(err, Error::InvalidSql(_)), "{err:?}");
    let err = client.query(base, "SELEC 1", Default::default()).await.expect_err("bad sql");
    assert!(matches!(err, Error::InvalidSql(_)), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
}

/// Each bucket's leader as the node at `url` knows it (its own view, not
/// asked around): node ids, `None` where it knows none.
async fn leaders_seen_by(url: &str) -> Vec<Option<String>> {
    let http = reqwest::Client::new();
    let asks: Vec<_> = (0..256)
        .map(|b| {
            let http = http.clone();
            let url = format!("{url}/v1/bases/{b:02x}000000-0000-4000-8000-000000000000/location");
            tokio::spawn(async move {
                let answer = http
                    .get(url)
                    .bearer_auth(TOKEN)
                    .header("x-shoal-forwarded", "1")
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await
                    .expect("the node answers");
                let v: serde_json::Value = answer.json().await.expect("a location");
                v["leader"]["node_id"].as_str().map(str::to_string)
            })
        })
        .collect();
    let mut leaders = Vec::with_capacity(256);
    for ask in asks {
        leaders.push(ask.await.expect("asked"));
    }
    leaders
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_stopped_cleanly_hands_its_leaderships_over_before_it_exits() {
    let mut c = Cluster::new().await;
    c.start_three_nodes();
    c.wait_three_replicas().await;
    let urls: Vec<(String, String)> =
        c.nodes.iter().map(|(id, p)| (id.clone(), p.url.clone())).collect();
    // Until every node knows a leader for every bucket.
    let deadline = Instant::now() + Duration::from_secs(60);
    let seen = loop {
        let seen = leaders_seen_by(&urls[0].1).await;
        let mut all = seen.iter().all(Option::is_some);
        for (_, url) in &urls[1..] {
            all &= leaders_seen_by(url).await.iter().all(Option::is_some);
        }
        if all {
            break seen;
        }
        assert!(Instant::now() < deadline, "buckets without a leader: {seen:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let victim = urls
        .iter()
        .map(|(id, _)| id.clone())
        .max_by_key(|id| seen.iter().filter(|l| l.as_deref() == Some(id)).count())
        .expect("nodes");
    let led = seen.iter().filter(|l| l.as_deref() == Some(&victim)).count();
    assert!(led > 0, "{victim} leads nothing: {seen:?}");

    let status =
        tokio::task::block_in_place(|| c.nodes.get_mut(&victim).expect("victim").terminate());
    assert!(status.success(), "{victim}'s exit on SIGTERM: {status}");
    // Once it has exited, no survivor takes it for a leader.
    for (id, url) in urls.iter().filter(|(id, _)| *id != victim) {
        let after = leaders_seen_by(url).await;
        let still: Vec<usize> =
            (0..256).filter(|b| after[*b].as_deref() == Some(victim.as_str())).collect();
        assert!(
            still.is_empty(),
            "{id} still names {victim} the leader of buckets {still:?} after it exited"
        );
    }
    // It says how many it handed over, and that none was left.
    let logs = c.nodes[&victim].logs();
    let handed = logs
        .lines()
        .find_map(|l| l.split("handed ").nth(1)?.split(' ').next()?.parse::<usize>().ok())
        .unwrap_or_else(|| panic!("{victim} handed nothing over:\n{logs}"));
    // (Leader balance may still move a few leaderships between the count
    // above and the stop: the node's own count is the one to trust.)
    assert!(handed > 0, "{victim} led {led} buckets and handed none over");
    assert!(!logs.contains("not handed over"), "{logs}");
    println!("{victim} handed {handed} leaderships over");
}
