//! The embedded registry as an operator meets it: `shoal meta` processes
//! grown from one member to three, to five and back to three with `shoal
//! meta add|remove` while a three-node cluster runs on them under load; and
//! the mistakes those commands refuse.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::base_with_table;
use common::cluster::{Cluster, RegistryServer};
use common::meta::MetaGroup;
use serde_json::json;
use shoal_registry::Registry;
use shoal_types::api::Row;

/// What nodes and monitors log when the registry fails them.
const REGISTRY_TROUBLE: [&str; 5] =
    ["registration lost", "reconcile failed", "lost its term", "keep-alive failed", "session lost"];

fn meta(c: &Cluster) -> &MetaGroup {
    match &c.server {
        RegistryServer::Embedded(m) => m,
        _ => unreachable!("an embedded registry"),
    }
}

fn meta_mut(c: &mut Cluster) -> &mut MetaGroup {
    match &mut c.server {
        RegistryServer::Embedded(m) => m,
        _ => unreachable!("an embedded registry"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grows_from_one_member_to_three_five_and_back_to_three_under_load() {
    let mut c = Cluster::with_embedded(1);
    c.start_three_nodes();
    c.wait_three_replicas().await;
    let client = c.nodes_client();
    let base = base_with_table(&client, "CREATE TABLE t (v INTEGER)").await;

    // Load: rows through the nodes, and keys straight into the registry.
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let rows = {
        let (client, stop, errors) = (client.clone(), stop.clone(), errors.clone());
        tokio::spawn(async move {
            let (mut acked, deadline) = (0i64, Instant::now() + Duration::from_secs(180));
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let mut row = Row::new();
                row.insert("v".into(), json!(1));
                match client.insert_rows(base, "t", vec![row]).await {
                    Ok(_) => acked += 1,
                    Err(e) => errors.lock().expect("lock").push(format!("row: {e:?}")),
                }
            }
            acked
        })
    };
    let keys = {
        let registry = meta(&c).registry("growth-load").await;
        let (stop, errors) = (stop.clone(), errors.clone());
        tokio::spawn(async move {
            let (mut put, deadline) = (Vec::new(), Instant::now() + Duration::from_secs(180));
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let key = format!("k/{:06}", put.len());
                match registry.put(key.as_bytes(), b"v", None).await {
                    Ok(_) => put.push(key),
                    Err(e) => errors.lock().expect("lock").push(format!("key: {e}")),
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            put
        })
    };

    let dir = c.dir.path().to_path_buf();
    let first = meta(&c).members[0].url.clone();
    for (size, (a, b)) in [(3, (1, 2)), (5, (3, 4))] {
        let ma = MetaGroup::start_member(&dir, a, Some(&first));
        let mb = MetaGroup::start_member(&dir, b, Some(&first));
        let (ok, out) = meta(&c).meta_cli(&["add", &ma.url, &mb.url]);
        assert!(ok, "adding two members failed: {out}");
        assert!(out.contains(&format!("Done: {size} voting members")), "{out}");
        meta_mut(&mut c).members.extend([ma, mb]);
    }
    let (ok, out) = meta(&c).meta_cli(&["remove", "m3"]);
    assert!(!ok, "removing one of five must be refused: {out}");
    assert!(out.contains("would have 4 members") && out.contains("two at a time"), "{out}");
    let (ok, out) = meta(&c).meta_cli(&["remove", "m3", "m4"]);
    assert!(ok, "removing two members failed: {out}");
    assert!(out.contains("Done: 3 voting members"), "{out}");
    let (ok, out) = meta(&c).meta_cli(&["status"]);
    assert!(ok && out.contains("Leader: m"), "{out}");
    for name in ["m0", "m1", "m2"] {
        assert!(out.contains(name), "{name} missing from the status: {out}");
    }
    for name in ["m3", "m4"] {
        assert!(!out.contains(name), "{name} still listed: {out}");
    }

    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let acked = rows.await.expect("row writer");
    let keys = keys.await.expect("key writer");
    let errors = errors.lock().expect("lock").clone();
    assert!(errors.is_empty(), "requests failed while the registry grew: {errors:#?}");
    assert!(
        acked > 0 && keys.len() > 20,
        "the load made progress ({acked} rows, {} keys)",
        keys.len()
    );
    let q = client.query(base, "SELECT count(*) FROM t", Default::default()).await.expect("count");
    assert_eq!(q.rows, vec![vec![json!(acked)]]);
    let registry = meta(&c).registry("growth-load").await;
    let stored = registry.get_prefix(b"k/").await.expect("keys");
    assert_eq!(stored.kvs.len(), keys.len(), "keys lost or doubled");
    let status = c.status(&c.nodes["n1"]).await;
    assert!(status.nodes.iter().all(|n| n.live), "a node dropped out: {status:?}");
    let logs = c.logs();
    for trouble in REGISTRY_TROUBLE {
        assert!(!logs.contains(trouble), "a node or monitor logged {trouble:?}:\n{logs}");
    }
    println!(
        "{acked} rows and {} registry keys written while the registry grew and shrank",
        keys.len()
    );
}

#[tokio::test]
async fn meta_commands_refuse_mistakes_clearly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let group = MetaGroup::start(dir.path(), 1);
    let mut extra = MetaGroup::start_member(dir.path(), 1, Some(&group.members[0].url));

    // One member more would make two.
    let (ok, out) = group.meta_cli(&["add", &extra.url]);
    assert!(!ok && out.contains("would have 2 members"), "{out}");
    // A URL where no member runs.
    let (ok, out) = group.meta_cli(&["add", "127.0.0.1:9", &extra.url]);
    assert!(!ok && out.contains("127.0.0.1:9"), "{out}");
    // A member of a group of its own cannot join another.
    let (ok, out) = group.meta_cli(&["add", &group.members[0].url, &extra.url]);
    assert!(!ok && out.contains("already"), "{out}");
    // No such member.
    let (ok, out) = group.meta_cli(&["remove", "nobody"]);
    assert!(!ok && out.contains("no member \"nobody\""), "{out}");
    // The last member cannot go.
    let (ok, out) = group.meta_cli(&["remove", "m0"]);
    assert!(!ok && out.contains("cannot remove all"), "{out}");
    // Not an embedded registry.
    let out = std::process::Command::new(common::bin())
        .args(["meta", "status", "--registry", "etcd://127.0.0.1:9"])
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && text.contains("not an embedded registry"), "{text}");
    // A data directory keeps its member's name.
    extra.kill();
    let data = dir.path().join("meta-1").join("data");
    let out = std::process::Command::new(common::bin())
        .args(["meta", "--name", "other", "--listen", "127.0.0.1:0", "--admin-token", "t"])
        .arg("--data-dir")
        .arg(&data)
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("belongs to member \"m1\""), "{text}");
    // Even initial member lists.
    let out = std::process::Command::new(common::bin())
        .args(["meta", "--listen", "127.0.0.1:0", "--admin-token", "t"])
        .args(["--initial-members", "a=127.0.0.1:1,b=127.0.0.1:2"])
        .arg("--data-dir")
        .arg(dir.path().join("even"))
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && text.contains("odd number"), "{text}");
    // The group still serves.
    let registry = group.registry("still").await;
    registry.put(b"k", b"v", None).await.expect("the group still serves");
}
