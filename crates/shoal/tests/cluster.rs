//! A cluster of real `shoal node` and `shoal monitor` processes on a real
//! etcd: placement follows the nodes, monitors take over from each other,
//! and only what must move moves. The placement and monitor scenarios run
//! on ZooKeeper too (`scenario::etcd`, `scenario::zookeeper`).

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::cluster::{Backend, Cluster, TOKEN, TTL, TTL_SECS};
use shoal_placement::moves;
use shoal_registry::keys;
use shoal_types::NodeId;
use shoal_types::placement::PlacementMap;

fn counts(m: &PlacementMap) -> BTreeMap<String, usize> {
    m.replica_counts().into_iter().map(|(k, v)| (k.0, v)).collect()
}

fn balanced(m: &PlacementMap, nodes: &[&str]) -> bool {
    let total: usize = 256 * m.replication_factor.min(nodes.len());
    let c = counts(m);
    c.len() == nodes.len()
        && nodes.iter().all(|n| c.get(*n).is_some_and(|k| k.abs_diff(total / nodes.len()) <= 1))
}

fn node(id: &str) -> Option<NodeId> {
    Some(NodeId(id.into()))
}

on_every_backend!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    monitor_failover_keeps_the_epoch_sequence_and_a_new_node_takes_its_share
);

async fn monitor_failover_keeps_the_epoch_sequence_and_a_new_node_takes_its_share(
    backend: Backend,
) {
    let mut c = Cluster::on_backend(backend).await;
    for n in ["n1", "n2", "n3"] {
        c.start_node(n);
    }
    c.start_monitor(&[]);
    c.start_monitor(&[]);
    let first = c
        .wait_map("3 nodes placed", Duration::from_secs(30), |m| balanced(m, &["n1", "n2", "n3"]))
        .await;
    assert_eq!(
        counts(&first),
        BTreeMap::from([("n1".into(), 256), ("n2".into(), 256), ("n3".into(), 256)])
    );

    // Status is the same through any process.
    let status = c.status(&c.nodes["n1"]).await;
    assert_eq!(status.epoch, first.epoch);
    assert!(status.registry.starts_with(backend.scheme()), "{}", status.registry);
    assert_eq!(
        status.nodes.iter().filter(|n| n.live && n.replicas == 256).count(),
        3,
        "{status:?}"
    );
    assert!(status.under_replicated.is_empty() && status.on_dead_nodes.is_empty(), "{status:?}");
    let active = status.monitor.expect("an active monitor").id;
    assert_eq!(c.status(&c.monitors[1]).await.monitor.map(|m| m.id), Some(active.clone()));

    // Kill the active monitor: the other takes over within the session TTL.
    let (dead, alive) = if active == "m0" { (0, 1) } else { (1, 0) };
    c.monitors[dead].kill();
    let deadline = Instant::now() + Duration::from_secs(TTL_SECS * 4 + 5);
    loop {
        let s = c.status(&c.monitors[alive]).await;
        if s.monitor.as_ref().is_some_and(|m| m.id != active) {
            break;
        }
        assert!(Instant::now() < deadline, "no monitor took over: {s:?}\n{}", c.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The new monitor continues the epoch sequence: a fourth node gives the
    // next epoch, and that node takes exactly its share, from the others.
    c.start_node("n4");
    let second = c
        .wait_map("n4 placed", Duration::from_secs(30), |m| balanced(m, &["n1", "n2", "n3", "n4"]))
        .await;
    assert_eq!(second.epoch, first.epoch + 1);
    let moved = moves(&first, &second);
    assert_eq!(moved.len(), 192, "768 replicas over 4 nodes: n4 takes 192");
    assert!(moved.iter().all(|m| m.to == node("n4") && m.from.is_some()), "{moved:?}");
}

on_every_backend!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    a_dead_nodes_replicas_and_only_those_move_and_restarts_do_not_flap
);

async fn a_dead_nodes_replicas_and_only_those_move_and_restarts_do_not_flap(backend: Backend) {
    let mut c = Cluster::on_backend(backend).await;
    let all = ["n1", "n2", "n3", "n4"];
    for n in all {
        c.start_node(n);
    }
    c.start_monitor(&[]);
    let before = c.wait_map("4 nodes placed", Duration::from_secs(30), |m| balanced(m, &all)).await;

    // A node restarted within the TTL keeps its registration: nothing moves.
    c.nodes.get_mut("n2").expect("n2").restart();
    tokio::time::sleep(Duration::from_secs(TTL_SECS * 2)).await;
    assert_eq!(
        c.map().await.expect("map").epoch,
        before.epoch,
        "a quick restart changed the map\n{}",
        c.logs()
    );

    // A node killed for good: after its lease expires, its replicas move.
    c.nodes.get_mut("n4").expect("n4").kill();
    let start = Instant::now();
    let after = c
        .wait_map("n4 gone", Duration::from_secs(TTL_SECS * 4 + 10), |m| {
            !counts(m).contains_key("n4")
        })
        .await;
    println!(
        "n4's replicas moved {:.1}s after SIGKILL (node_ttl {TTL})",
        start.elapsed().as_secs_f64()
    );
    let moved = moves(&before, &after);
    assert_eq!(moved.len(), 192, "exactly n4's replicas move");
    assert!(moved.iter().all(|m| m.from == node("n4") && m.to.is_some()), "{moved:?}");
    assert!(balanced(&after, &["n1", "n2", "n3"]));
    let status = c.status(&c.nodes["n1"]).await;
    let n4 = status.nodes.iter().find(|n| n.node_id.0 == "n4").expect("n4 in status");
    assert!(!n4.live && n4.since.is_some() && n4.replicas == 0, "{n4:?}");

    // It comes back: it takes its share again, once, and the map stays put.
    c.nodes.get_mut("n4").expect("n4").restart();
    let back = c.wait_map("n4 back", Duration::from_secs(30), |m| balanced(m, &all)).await;
    assert_eq!(back.epoch, after.epoch + 1);
    assert_eq!(moves(&after, &back).len(), 192);
    tokio::time::sleep(Duration::from_secs(TTL_SECS * 2)).await;
    assert_eq!(c.map().await.expect("map").epoch, back.epoch, "the map flapped\n{}", c.logs());
}

on_every_backend!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    static_topology_moves_nothing_until_a_rebalance
);

async fn static_topology_moves_nothing_until_a_rebalance(backend: Backend) {
    let mut c = Cluster::on_backend(backend).await;
    let all = ["n1", "n2", "n3", "n4"];
    for n in all {
        c.start_node(n);
    }
    c.start_monitor(&["--topology", "static"]);
    let before = c.wait_map("4 nodes placed", Duration::from_secs(30), |m| balanced(m, &all)).await;
    c.nodes.get_mut("n4").expect("n4").kill();

    // Wait until the registry has let n4 go, then some more: the map stays.
    let deadline = Instant::now() + Duration::from_secs(TTL_SECS * 4 + 10);
    let status = loop {
        let s = c.status(&c.nodes["n1"]).await;
        if s.nodes.iter().any(|n| n.node_id.0 == "n4" && !n.live) {
            break s;
        }
        assert!(Instant::now() < deadline, "n4 never went down: {s:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        c.map().await.expect("map"),
        before,
        "static topology moved replicas without a rebalance"
    );
    // n4 held 192 replicas, one per bucket: those buckets have 2 live
    // replicas where 3 live nodes could hold 3.
    assert_eq!(status.on_dead_nodes.len(), 192, "{status:?}");
    assert_eq!(status.under_replicated, status.on_dead_nodes);

    // A rebalance through the CLI, against a node: the monitor carries it
    // out, and `--wait` returns once it has, with no move left.
    let out = std::process::Command::new(common::bin())
        .args(["cluster", "rebalance", "--wait", "--timeout", "60s"])
        .args(["--endpoint", &c.nodes["n1"].url, "--token", TOKEN])
        .output()
        .expect("cli");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("rebalanced: map epoch"));
    let waited = c.status(&c.nodes["n1"]).await;
    assert!(waited.epoch > before.epoch && waited.moves_in_progress.is_empty(), "{waited:?}");
    let after = c.wait_map("rebalanced", Duration::from_secs(30), |m| m.epoch > before.epoch).await;
    assert_eq!(
        counts(&after),
        BTreeMap::from([("n1".into(), 256), ("n2".into(), 256), ("n3".into(), 256)])
    );
    let moved = moves(&before, &after);
    assert!(
        moved.len() == 192 && moved.iter().all(|m| m.from == node("n4") && m.to.is_some()),
        "{moved:?}"
    );
    let status = c.status(&c.monitors[0]).await;
    assert!(!status.rebalance_pending && status.on_dead_nodes.is_empty(), "{status:?}");

    let out = std::process::Command::new(common::bin())
        .args(["cluster", "status", "--endpoint", &c.monitors[0].url, "--token", TOKEN])
        .output()
        .expect("cli");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("static topology") && text.contains("n4"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_monitor_started_first_waits_for_the_expected_nodes() {
    let mut c = Cluster::new().await;
    c.start_monitor(&["--topology", "static", "--initial-node-count", "3"]);
    c.start_node("n1");
    c.start_node("n2");
    // Once the monitor has seen both nodes (it records them as members in
    // the pass that decides about the map), there is still no map.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = c.status(&c.monitors[0]).await;
        let seen = s.nodes.iter().filter(|n| n.live && n.since.is_some()).count();
        if seen == 2 {
            assert_eq!(s.epoch, 0, "a map was made with 2 of 3 nodes");
            break;
        }
        assert!(Instant::now() < deadline, "the monitor never saw both nodes: {:?}", s.nodes);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(c.map().await.is_none(), "a map was made with 2 of 3 nodes");
    // The third node makes the first map, and it spreads over all three.
    c.start_node("n3");
    let all = ["n1", "n2", "n3"];
    let first = c.wait_map("3 nodes placed", Duration::from_secs(30), |m| m.epoch > 0).await;
    assert!(balanced(&first, &all), "{:?}", counts(&first));
    assert_eq!(first.epoch, 1);
}

/// Runs the CLI against `url`; its exit status, stdout and stderr.
fn cli(url: &str, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(common::bin())
        .args(args)
        .args(["--endpoint", url, "--token", TOKEN])
        .output()
        .expect("cli");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_node_holds_nothing_stops_without_a_move_and_is_forgotten() {
    let mut c = Cluster::new().await;
    let all = ["n1", "n2", "n3", "n4"];
    for n in all {
        c.start_node(n);
    }
    c.start_monitor(&[]);
    c.wait_map("4 nodes placed", Duration::from_secs(30), |m| balanced(m, &all)).await;
    let url = c.nodes["n1"].url.clone();
    // Data that must survive the drain.
    let client = shoal_client::Client::new(&url, Some(TOKEN.into())).expect("client");
    let base = common::eventually("create a base", || client.create_base(None, None)).await.id;
    let sql =
        |s: &str| vec![shoal_types::api::Statement { sql: s.into(), params: Default::default() }];
    client.execute(base, sql("CREATE TABLE t (v INTEGER)"), true).await.expect("table");
    client.execute(base, sql("INSERT INTO t VALUES (1), (2), (3)"), true).await.expect("rows");

    // Refused: forgetting a live node, draining one that does not exist.
    let (ok, _, err) = cli(&url, &["cluster", "forget", "n4"]);
    assert!(!ok && err.contains("n4 is live"), "{err}");
    let (ok, _, err) = cli(&url, &["cluster", "drain", "nx"]);
    assert!(!ok && err.contains("no node nx"), "{err}");

    // The drain waits until n4 holds nothing; the others hold it all.
    let (ok, out, err) = cli(&url, &["cluster", "drain", "n4", "--timeout", "120s"]);
    assert!(ok, "drain: {out}{err}\n{}", c.logs());
    let drained = c.map().await.expect("map");
    assert!(balanced(&drained, &["n1", "n2", "n3"]), "{:?}", counts(&drained));
    // Another node's view follows the registry's reports a moment later.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let status = c.status(&c.nodes["n1"]).await;
        let n4 = status.nodes.iter().find(|n| n.node_id.0 == "n4").expect("n4").clone();
        if n4.live && n4.drained && n4.replicas == 0 && n4.hosted == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{n4:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (ok, text, _) = cli(&url, &["cluster", "status"]);
    assert!(ok && text.contains("drained"), "{text}");

    // Stopped, and gone from the registry: nothing moves.
    let stopped = tokio::task::block_in_place(|| c.nodes.get_mut("n4").expect("n4").terminate());
    assert!(stopped.success());
    let deadline = Instant::now() + Duration::from_secs(TTL_SECS * 4 + 10);
    loop {
        let s = c.status(&c.nodes["n1"]).await;
        if s.nodes.iter().any(|n| n.node_id.0 == "n4" && !n.live) {
            break;
        }
        assert!(Instant::now() < deadline, "n4 never went down");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        c.map().await.expect("map").epoch,
        drained.epoch,
        "stopping a drained node moved replicas"
    );

    // Forgotten, it is gone from the status; the data is all there.
    let (ok, out, err) = cli(&url, &["cluster", "forget", "n4"]);
    assert!(ok, "forget: {out}{err}");
    let status = c.status(&c.nodes["n1"]).await;
    assert!(!status.nodes.iter().any(|n| n.node_id.0 == "n4"), "{:?}", status.nodes);
    let q = client.query(base, "SELECT count(*) FROM t", Default::default()).await.expect("read");
    assert_eq!(q.rows, vec![vec![serde_json::json!(3)]]);

    // Undrain: a drained node takes its share back.
    let (ok, _, err) = cli(&url, &["cluster", "drain", "n3", "--no-wait"]);
    assert!(ok, "{err}");
    c.wait_map("n3 drained", Duration::from_secs(30), |m| !counts(m).contains_key("n3")).await;
    let (ok, _, err) = cli(&url, &["cluster", "undrain", "n3"]);
    assert!(ok, "{err}");
    let back =
        c.wait_map("n3 back", Duration::from_secs(30), |m| balanced(m, &["n1", "n2", "n3"])).await;
    assert_eq!(counts(&back).get("n3"), Some(&256));
    // The last node left is not drained.
    let (ok, _, _) = cli(&url, &["cluster", "drain", "n2", "--no-wait"]);
    assert!(ok);
    let (ok, _, _) = cli(&url, &["cluster", "drain", "n3", "--no-wait"]);
    assert!(ok);
    let (ok, _, err) = cli(&url, &["cluster", "drain", "n1", "--no-wait"]);
    assert!(!ok && err.contains("last live node"), "{err}");
}

#[tokio::test]
async fn cluster_processes_refuse_bad_flags() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = |args: &[&str]| {
        std::process::Command::new(common::bin())
            .args(args)
            .env_remove("SHOAL_ADMIN_TOKEN")
            .current_dir(dir.path())
            .output()
            .expect("run")
    };
    let out = run(&["node", "--node-id", "n1", "--listen", "127.0.0.1:0"]);
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("--admin-token")
    );
    let out =
        run(&["node", "--node-id", "bad id!", "--admin-token", "t", "--listen", "127.0.0.1:0"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("--node-id"));
    let out = run(&[
        "monitor",
        "--replication-factor",
        "0",
        "--admin-token",
        "t",
        "--listen",
        "127.0.0.1:0",
    ]);
    assert!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("--replication-factor")
    );
    let out = run(&[
        "monitor",
        "--initial-node-count",
        "0",
        "--admin-token",
        "t",
        "--listen",
        "127.0.0.1:0",
    ]);
    assert!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("--initial-node-count")
    );
    // A data directory belongs to one node.
    std::fs::create_dir_all(dir.path().join("d")).expect("mkdir");
    std::fs::write(dir.path().join("d").join("node_id"), "other\n").expect("write");
    let out = run(&[
        "node",
        "--node-id",
        "n1",
        "--admin-token",
        "t",
        "--data-dir",
        "d",
        "--listen",
        "127.0.0.1:0",
    ]);
    assert!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("belongs to node \"other\"")
    );
}

/// A second process given a live node's id (with its own data directory)
/// must not take that node's registration over: it waits for it to expire,
/// then gives up with an error, and the live node stays registered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_cannot_take_a_live_node_id() {
    let mut c = Cluster::new().await;
    c.start_node("n1");
    let registry = c.registry().await;
    let key = keys::node(&NodeId("n1".into()));
    let registered = || async {
        registry
            .get(&key)
            .await
            .ok()
            .flatten()
            .and_then(|kv| serde_json::from_slice::<shoal_types::api::NodeInfo>(&kv.value).ok())
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let live = loop {
        if let Some(info) = registered().await {
            break info;
        }
        assert!(Instant::now() < deadline, "n1 did not register:\n{}", c.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(live.node_url, c.nodes["n1"].url);
    assert!(!live.instance.is_empty());

    let other = c.dir.path().join("other");
    std::fs::create_dir_all(&other).expect("mkdir");
    let stderr = std::fs::File::create(other.join("stderr")).expect("stderr");
    let mut child = std::process::Command::new(common::bin())
        .args(["node", "--node-id", "n1", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(other.join("data"))
        .args(c.common())
        .env_remove("SHOAL_ADMIN_TOKEN")
        .stdout(std::process::Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("spawn");
    // It waits up to twice the TTL and a second for the registration to go.
    let deadline = Instant::now() + Duration::from_secs(TTL_SECS * 2 + 30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the second n1 kept running");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let err = std::fs::read_to_string(other.join("stderr")).unwrap_or_default();
    assert!(!status.success(), "{err}");
    assert!(err.contains("node id n1 is registered by another process"), "{err}");
    let still = registered().await.expect("n1 is still registered");
    assert_eq!((still.node_url, still.instance), (live.node_url, live.instance));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_process_shows_each_buckets_leader_and_replica_states() {
    let mut c = Cluster::new().await;
    c.start_three_nodes();
    c.wait_three_replicas().await;
    let proxy = c.start_proxy(0, &[]);
    let buckets = |url: &str| {
        let (ok, text, err) = cli(url, &["cluster", "buckets", "--json"]);
        assert!(ok, "{err}");
        serde_json::from_str::<shoal_types::api::BucketsStatus>(&text).expect("json")
    };
    // From a node, the monitor and the proxy: every bucket, its leader
    // among its replicas, and each replica's state (one leader, no lag
    // once writes settle).
    let deadline = Instant::now() + Duration::from_secs(60);
    for url in [c.nodes["n1"].url.clone(), c.monitors[0].url.clone(), proxy.url.clone()] {
        loop {
            let view = buckets(&url);
            let whole = view.buckets.len() == 256
                && view.unreachable.is_empty()
                && view.buckets.iter().all(|b| {
                    b.leader.as_ref().is_some_and(|l| b.replicas.contains(l))
                        && b.states.len() == 3
                        && b.states.iter().filter(|s| s.role == "leader").count() == 1
                        && b.states.iter().all(|s| s.lag.is_some() && s.term == b.term)
                });
            if whole {
                break;
            }
            assert!(Instant::now() < deadline, "{url}: {view:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let (ok, table, _) = cli(&proxy.url, &["cluster", "buckets"]);
    assert!(ok && table.contains("bucket") && table.contains(" ff "), "{table}");

    // A killed node: its replicas' states go, and no bucket names it leader.
    c.nodes.get_mut("n3").expect("n3").kill();
    let gone = NodeId("n3".into());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let view = buckets(&c.nodes["n1"].url);
        let moved = view.buckets.iter().all(|b| {
            b.leader.as_ref().is_some_and(|l| *l != gone)
                && b.states.iter().all(|s| s.node_id != gone)
        });
        if moved {
            break;
        }
        assert!(Instant::now() < deadline, "{view:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
