//! Standalone keeps what it acknowledged: across a clean restart, and across
//! SIGKILL in the middle of a write load.

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Mode, Server};
use serde_json::json;
use shoal_types::BaseId;
use shoal_types::api::{Params, Statement};

/// Keys one acknowledged write stored in a base.
type Acked = (BaseId, Vec<String>);

fn st(sql: &str, params: Vec<serde_json::Value>) -> Statement {
    Statement { sql: sql.into(), params: Params::Positional(params) }
}

async fn keys(server: &Server, base: BaseId) -> BTreeSet<String> {
    let r = server.client().query(base, "SELECT k FROM t", Params::default()).await.expect("query");
    r.rows.into_iter().map(|row| row[0].as_str().expect("text").to_string()).collect()
}

#[tokio::test]
async fn clean_restart_keeps_data_and_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Server::start_in(Mode::Standalone, dir.path(), &[]);
    let c = server.client();
    let base = c.create_base(None, Some("kept".into())).await.expect("create");
    c.execute(base.id, vec![st("CREATE TABLE t (k TEXT PRIMARY KEY)", vec![])], true)
        .await
        .expect("ddl");
    let last = c
        .execute(base.id, vec![st("INSERT INTO t VALUES (?)", vec![json!("a")])], true)
        .await
        .expect("insert");
    let token = server.token.clone();
    assert!(server.terminate().success(), "{}", server.logs());

    let server = Server::start_in(Mode::Standalone, dir.path(), &[]);
    assert_eq!(server.token, token, "the admin token is kept across restarts");
    let c = server.client();
    assert_eq!(c.get_base(base.id).await.expect("get"), base);
    assert_eq!(keys(&server, base.id).await, BTreeSet::from(["a".to_string()]));
    // The log keeps counting up after a restart.
    let next = c
        .execute(base.id, vec![st("INSERT INTO t VALUES (?)", vec![json!("b")])], true)
        .await
        .expect("insert");
    assert!(next.index > last.index, "{} > {}", next.index, last.index);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_sigkill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Server::start_in(Mode::Standalone, dir.path(), &[]);
    let c = server.client();
    let mut bases = Vec::new();
    for _ in 0..6 {
        let b = c.create_base(None, None).await.expect("create").id;
        c.execute(b, vec![st("CREATE TABLE t (k TEXT PRIMARY KEY)", vec![])], true)
            .await
            .expect("ddl");
        bases.push(b);
    }

    // Writers insert unique keys until the server dies; each remembers what
    // was acknowledged. Odd writers write pairs in one transaction.
    let acked: Arc<Mutex<Vec<Acked>>> = Arc::default();
    let deadline = Instant::now() + Duration::from_secs(30);
    // Writers stop at their first error: give up soon after the kill
    // instead of retrying through the default deadline.
    let options =
        shoal_client::Options { retry_deadline: Duration::from_secs(1), ..Default::default() };
    let c = shoal_client::Client::with_options(&[&server.url], Some(server.token.clone()), options)
        .expect("client");
    let mut tasks = Vec::new();
    for w in 0..12 {
        let c = c.clone();
        let acked = acked.clone();
        let base = bases[w % bases.len()];
        tasks.push(tokio::spawn(async move {
            let mut i = 0;
            while Instant::now() < deadline {
                let ks: Vec<String> = if w % 2 == 1 {
                    vec![format!("w{w}-{i}-a"), format!("w{w}-{i}-b")]
                } else {
                    vec![format!("w{w}-{i}")]
                };
                let statements =
                    ks.iter().map(|k| st("INSERT INTO t VALUES (?)", vec![json!(k)])).collect();
                match c.execute(base, statements, true).await {
                    Ok(_) => acked.lock().expect("lock").push((base, ks)),
                    Err(_) => break,
                }
                i += 1;
            }
        }));
    }
    // Let the load run, then pull the plug.
    let start = Instant::now();
    while acked.lock().expect("lock").len() < 300 && start.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.kill();
    for t in tasks {
        t.await.expect("writer");
    }
    let acked = std::mem::take(&mut *acked.lock().expect("lock"));
    assert!(acked.len() >= 300, "only {} writes were acknowledged before the kill", acked.len());

    let server = Server::start_in(Mode::Standalone, dir.path(), &[]);
    let mut stored = std::collections::HashMap::new();
    for b in &bases {
        stored.insert(*b, keys(&server, *b).await);
    }
    for (base, ks) in &acked {
        for k in ks {
            assert!(
                stored[base].contains(k),
                "acknowledged key {k} in {base} is missing after SIGKILL"
            );
        }
    }
    // Transactions are whole: a pair is stored completely or not at all.
    for set in stored.values() {
        for k in set.iter().filter(|k| k.ends_with("-a")) {
            let partner = format!("{}-b", k.trim_end_matches("-a"));
            assert!(set.contains(&partner), "{k} stored without {partner}");
        }
        for k in set.iter().filter(|k| k.ends_with("-b")) {
            let partner = format!("{}-a", k.trim_end_matches("-b"));
            assert!(set.contains(&partner), "{k} stored without {partner}");
        }
    }
    // The server takes writes again.
    let c = server.client();
    c.execute(bases[0], vec![st("INSERT INTO t VALUES ('after')", vec![])], true)
        .await
        .expect("write after restart");
}

#[tokio::test]
async fn open_bases_are_bounded() {
    let (_dir, server) = Server::start(Mode::Standalone, &["--max-open-bases", "4"]);
    let c = server.client();
    let mut bases = Vec::new();
    for _ in 0..20 {
        let b = c.create_base(None, None).await.expect("create").id;
        c.execute(b, vec![st("CREATE TABLE t (k TEXT PRIMARY KEY)", vec![])], true)
            .await
            .expect("ddl");
        c.execute(b, vec![st("INSERT INTO t VALUES (?)", vec![json!(b.to_string())])], true)
            .await
            .expect("insert");
        bases.push(b);
    }
    for b in &bases {
        assert_eq!(keys(&server, *b).await, BTreeSet::from([b.to_string()]));
    }
    let metrics = server.metrics().await;
    let open: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("shoal_open_bases "))
        .expect("shoal_open_bases gauge")
        .trim()
        .parse()
        .expect("number");
    assert!(open <= 4.0, "{open} bases open with --max-open-bases 4");
}
