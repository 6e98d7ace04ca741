//! A standalone server grows into a cluster without export or import: its
//! data directory is started as the first node of a cluster on a real etcd
//! (or on Shoal's embedded registry, so with no other service at all),
//! two more nodes join, and every base ends on three replicas with equal
//! checksums while a client writes and sees no error. Done in the wrong
//! order (a standalone directory started into a cluster that began without
//! it, `shoal serve` on a cluster node's directory), the command is refused
//! with what to do, and the data stays as it was.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::cluster::{Backend, Cluster, TOKEN, replica_checksum};
use common::{Mode, Server, bin, eventually, log_filter};
use serde_json::json;
use shoal_client::Client;
use shoal_types::BaseId;
use shoal_types::api::{Row, Statement};

const BASES: usize = 4;
const ROWS: i64 = 50;

/// A standalone server in `dir` with [`BASES`] bases of [`ROWS`] rows each;
/// stopped with SIGTERM. Returns the bases and their checksums.
async fn standalone_with_bases(dir: &Path) -> Vec<(BaseId, String)> {
    let mut server = Server::start_in(Mode::Standalone, dir, &[]);
    let bases = fill_bases(&server.client()).await;
    let status = server.terminate();
    assert!(status.success(), "standalone exit on SIGTERM: {status}");
    bases
}

/// Makes [`BASES`] bases of [`ROWS`] rows each; returns them with their
/// checksums.
async fn fill_bases(client: &Client) -> Vec<(BaseId, String)> {
    let mut bases = Vec::new();
    for i in 0..BASES {
        let base = client.create_base(None, Some(format!("base-{i}"))).await.expect("create").id;
        let mut statements = vec![Statement {
            sql: "CREATE TABLE t (v INTEGER PRIMARY KEY, note TEXT)".into(),
            params: Default::default(),
        }];
        for v in 0..ROWS {
            statements.push(Statement {
                sql: format!("INSERT INTO t VALUES ({v}, 'from the standalone server')"),
                params: Default::default(),
            });
        }
        client.execute(base, statements, true).await.expect("fill");
        let sum = client.checksum(base).await.expect("checksum").checksum;
        bases.push((base, sum));
    }
    bases
}

/// Waits (bounded) until every node hosts every bucket and nothing moves.
async fn three_replicas_everywhere(client: &Client, nodes: usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(s) = client.cluster_status().await
            && s.nodes.len() == nodes
            && s.nodes.iter().all(|n| n.live && n.hosted == 256)
            && s.moves_in_progress.is_empty()
            && s.under_replicated.is_empty()
        {
            return;
        }
        assert!(Instant::now() < deadline, "the buckets did not reach three replicas");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_standalone_directory_grows_into_a_three_node_cluster_under_load() {
    grows_into_a_three_node_cluster(Backend::Etcd).await;
}

/// The same path with nothing but Shoal: the registry is one `shoal meta`
/// member started beside the standalone directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_standalone_directory_grows_into_a_cluster_on_the_embedded_registry() {
    grows_into_a_three_node_cluster(Backend::Embedded).await;
}

async fn grows_into_a_three_node_cluster(backend: Backend) {
    let standalone = tempfile::tempdir().expect("tempdir");
    let bases = standalone_with_bases(standalone.path()).await;
    let data = standalone.path().join("data");

    // The same directory, as node `standalone` of a cluster on the registry,
    // with a monitor that wants three replicas.
    let mut c = Cluster::on_backend(backend).await;
    c.start_node_on("standalone", &data);
    c.start_monitor(&[]);
    let first = c.nodes["standalone"].url.clone();
    let client = Client::new(&first, Some(TOKEN.into())).expect("client");
    for (base, sum) in &bases {
        let now = eventually("read a base on the new node", || client.checksum(*base)).await;
        assert_eq!(&now.checksum, sum, "base {base} changed on the way into the cluster");
    }

    // A client writes to every base while two nodes join.
    let acked = Arc::new(Mutex::new(vec![ROWS; BASES]));
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for (i, base) in bases.iter().map(|(b, _)| *b).enumerate() {
        let (client, acked, errors, stop) =
            (client.clone(), acked.clone(), errors.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(300);
            let mut v = ROWS;
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let mut row = Row::new();
                row.insert("v".into(), json!(v));
                row.insert("note".into(), json!("written while the cluster grew"));
                match client.insert_rows(base, "t", vec![row]).await {
                    Ok(_) => acked.lock().expect("lock")[i] = v + 1,
                    Err(e) => errors.lock().expect("lock").push(format!("insert {v}: {e:?}")),
                }
                v += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.start_node("n2");
    c.start_node("n3");
    c.wait_three_replicas().await;
    three_replicas_everywhere(&client, 3).await;
    // Some more writes on the grown cluster, then stop.
    let before: i64 = acked.lock().expect("lock").iter().sum();
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.lock().expect("lock").iter().sum::<i64>() < before + 40 {
        assert!(Instant::now() < deadline, "the writers stalled after the growth");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.expect("writer");
    }
    let errors = errors.lock().expect("lock").clone();
    assert!(errors.is_empty(), "the client saw errors while the cluster grew: {errors:#?}");

    // Every row is there once, on three equal replicas.
    let acked = acked.lock().expect("lock").clone();
    for (i, (base, _)) in bases.iter().enumerate() {
        let q = client
            .query(*base, "SELECT COUNT(*), MIN(v), MAX(v) FROM t", Default::default())
            .await
            .expect("count");
        let n = acked[i];
        assert_eq!(q.rows, vec![vec![json!(n), json!(0), json!(n - 1)]], "base {i}");
        c.equal_checksums(&base.to_string()).await;
    }
    println!("{} rows written while the cluster grew", acked.iter().sum::<i64>() - 4 * ROWS);
}

/// Runs `shoal ARGS` to its end (bounded); answers its exit status and
/// everything it printed.
fn run_to_exit(args: &[String], within: Duration) -> (std::process::ExitStatus, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (out, err) = (dir.path().join("out"), dir.path().join("err"));
    let mut child = Command::new(bin())
        .args(args)
        .args(["--listen", "127.0.0.1:0"])
        .env_remove("SHOAL_ADMIN_TOKEN")
        .env("SHOAL_LOG", log_filter())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).expect("stdout"))
        .stderr(std::fs::File::create(&err).expect("stderr"))
        .spawn()
        .expect("start shoal");
    let deadline = Instant::now() + within;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("shoal {args:?} did not exit within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let printed = std::fs::read_to_string(&out).unwrap_or_default()
        + &std::fs::read_to_string(&err).unwrap_or_default();
    (status, printed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_order_is_refused_and_changes_no_data() {
    let standalone = tempfile::tempdir().expect("tempdir");
    let bases = standalone_with_bases(standalone.path()).await;
    let data = standalone.path().join("data");

    // A cluster that began without the standalone directory.
    let mut c = Cluster::new().await;
    c.start_three_nodes();
    c.wait_three_replicas().await;
    let client = c.nodes_client();
    three_replicas_everywhere(&client, 3).await;
    let theirs = eventually("create a base", || client.create_base(None, None)).await.id;

    // The standalone directory, started into it as a node, is refused.
    let args = c.node_args("standalone", &data);
    let (status, printed) =
        tokio::task::block_in_place(|| run_to_exit(&args, Duration::from_secs(60)));
    assert!(!status.success(), "a foreign directory joined the cluster:\n{printed}");
    assert!(
        printed.contains("belongs to another Raft group")
            && printed.contains("Nothing was changed"),
        "{printed}"
    );
    // The cluster is as it was, and so is the directory.
    client.get_base(theirs).await.expect("the cluster's base");
    let server = Server::start_in(Mode::Standalone, standalone.path(), &[]);
    for (base, sum) in &bases {
        let now = server.client().checksum(*base).await.expect("checksum");
        assert_eq!(&now.checksum, sum, "base {base} changed");
    }
    drop(server);

    // `shoal serve` on a cluster node's directory is refused too.
    let n3 = c.dir.path().join("n3").join("data");
    tokio::task::block_in_place(|| c.nodes.get_mut("n3").expect("n3").terminate());
    let args: Vec<String> = vec!["serve".into(), "--data-dir".into(), n3.display().to_string()];
    let (status, printed) =
        tokio::task::block_in_place(|| run_to_exit(&args, Duration::from_secs(30)));
    assert!(!status.success(), "serve took a cluster node's directory:\n{printed}");
    assert!(
        printed.contains("belongs to node \"n3\"") && printed.contains("--node-id n3"),
        "{printed}"
    );
}

/// The embedded registry member a `shoal serve --meta-listen` prints.
fn meta_url_of(server: &Server) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = server.stdout();
        let found = out.lines().find_map(|l| {
            let rest = l.strip_prefix("Embedded registry member ")?;
            let url = rest.split(" is serving ").nth(1)?.split(' ').next()?;
            Some(url.to_string())
        });
        if let Some(url) = found {
            return url;
        }
        assert!(Instant::now() < deadline, "no embedded registry line:\n{}", server.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A laptop install grows into an HA cluster with nothing but Shoal: the
/// standalone server is the first member of its own embedded registry; two
/// more members join it; it restarts wanting three replicas; two nodes join
/// on the grown registry; every base ends on three equal replicas.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_standalone_server_grows_its_own_embedded_registry_and_cluster() {
    use common::meta::MetaGroup;
    let root = tempfile::tempdir().expect("tempdir");
    let home = root.path().join("standalone");
    std::fs::create_dir_all(&home).expect("dir");
    let first = ["--meta-listen", "127.0.0.1:0", "--admin-token", TOKEN];
    let mut server = Server::start_in(Mode::Standalone, &home, &first);
    let meta0 = meta_url_of(&server);
    let bases = fill_bases(&server.client()).await;

    // Two more registry members, added to the standalone server's group.
    let m1 = MetaGroup::start_member(root.path(), 1, Some(&meta0));
    let m2 = MetaGroup::start_member(root.path(), 2, Some(&meta0));
    let registry = format!(
        "shoal://{},{},{}",
        meta0.trim_start_matches("http://"),
        m1.url.trim_start_matches("http://"),
        m2.url.trim_start_matches("http://")
    );
    let out = Command::new(bin())
        .args(["meta", "add", &m1.url, &m2.url, "--registry", &registry, "--admin-token", TOKEN])
        .output()
        .expect("shoal meta add");
    let printed =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && printed.contains("Done: 3 voting members"), "{printed}");

    // The standalone server again, on its registry address, wanting three
    // replicas; then two nodes on the grown registry.
    assert!(server.terminate().success(), "standalone exit on SIGTERM");
    let again = [
        "--meta-listen",
        meta0.trim_start_matches("http://"),
        "--admin-token",
        TOKEN,
        "--replication-factor",
        "3",
    ];
    let server = Server::start_in(Mode::Standalone, &home, &again);
    let mut nodes = Vec::new();
    for id in ["n2", "n3"] {
        let dir = root.path().join(id);
        let args: Vec<String> =
            ["node", "--node-id", id, "--registry", &registry, "--admin-token", TOKEN]
                .map(String::from)
                .into_iter()
                .chain(["--data-dir".to_string(), dir.join("data").display().to_string()])
                .collect();
        nodes.push(common::Process::start(&dir, &args));
    }
    let client = server.client();
    three_replicas_everywhere(&client, 3).await;
    let http = reqwest::Client::new();
    let urls: Vec<String> =
        std::iter::once(server.url.clone()).chain(nodes.iter().map(|p| p.url.clone())).collect();
    for (base, sum) in &bases {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut sums = Vec::new();
            for url in &urls {
                sums.push(replica_checksum(&http, url, &base.to_string()).await);
            }
            if sums.iter().all(|s| s == sum) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "base {base}: replicas {sums:?}, standalone had {sum}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    drop((m1, m2));
}
