//! The change feed (`GET /v1/bases/{id}/changes`, `shoal watch`) against
//! real servers: a standalone `shoal serve`, and a three-node cluster on etcd.

mod common;

use std::io::BufRead as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::cluster::{Cluster, TOKEN};
use common::{Mode, Server, bin};
use serde_json::{Value, json};
use shoal_client::Client;
use shoal_client::watch::{Watch, WatchEvent, WatchOptions};
use shoal_types::api::{ChangeEvent, ChangeOp, FeedMessage, Params, Resync, Statement};
use shoal_types::{BaseId, Error};

fn stmt(sql: &str, params: Vec<Value>) -> Statement {
    Statement { sql: sql.into(), params: Params::Positional(params) }
}

async fn exec(client: &Client, id: BaseId, sql: &str, params: Vec<Value>) -> u64 {
    client.execute(id, vec![stmt(sql, params)], true).await.expect("write").index
}

fn watch(urls: &[String], token: &str, id: BaseId, after: Option<u64>) -> Watch {
    let options = WatchOptions { min_backoff: Duration::from_millis(50), ..Default::default() };
    Watch::new(urls, Some(token.to_string()), id, after, options).expect("watch")
}

/// The next feed message (reconnect notices skipped), within `within`.
async fn next(w: &mut Watch, within: Duration) -> Option<FeedMessage> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, w.next()).await.expect("a feed message in time") {
            Ok(Some(WatchEvent::Message(m))) => return Some(m),
            Ok(Some(WatchEvent::Reconnecting { .. })) => continue,
            Ok(None) => return None,
            Err(e) => panic!("the watch failed: {e}"),
        }
    }
}

/// Reads `n` change events.
async fn changes(w: &mut Watch, n: usize) -> Vec<ChangeEvent> {
    let mut out = Vec::new();
    while out.len() < n {
        match next(w, Duration::from_secs(30)).await {
            Some(FeedMessage::Change(e)) => out.push(e),
            other => panic!("expected a change after {} of {n}, got {other:?}", out.len()),
        }
    }
    out
}

fn insert(index: u64, rowid: i64, v: &str) -> ChangeEvent {
    ChangeEvent {
        index,
        op: ChangeOp::Insert,
        table: Some("t".into()),
        rowid: Some(rowid),
        row: Some(json!({"id": rowid, "v": v}).as_object().expect("row").clone()),
        sql: None,
    }
}

/// Creates a base with table `t (id INTEGER PRIMARY KEY, v TEXT)`; returns
/// its id and the index of the table's creation.
async fn base_with_table(client: &Client) -> (BaseId, u64) {
    let id = client.create_base(None, None).await.expect("create").id;
    let index = exec(client, id, "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)", vec![]).await;
    (id, index)
}

#[tokio::test]
async fn a_watcher_sees_every_change_once_in_order_and_resumes_exactly() {
    let (_dir, server) = Server::start(Mode::Memory, &[]);
    let client = server.client();
    let (id, ddl_index) = base_with_table(&client).await;
    let urls = vec![server.url.clone()];
    // From now on: it connects on its first read, and nothing is pending.
    let mut live = watch(&urls, &server.token, id, None);
    assert!(tokio::time::timeout(Duration::from_secs(1), live.next()).await.is_err());
    let mut from_start = watch(&urls, &server.token, id, Some(0));
    let first = next(&mut from_start, Duration::from_secs(10)).await;
    // Both feeds are open, and /metrics counts them.
    let metrics = server.metrics().await;
    assert!(metrics.contains("shoal_feed_subscribers 2"), "{metrics}");
    assert!(
        matches!(&first, Some(FeedMessage::Change(e)) if e.op == ChangeOp::Ddl && e.index == ddl_index
            && e.table.as_deref() == Some("t")),
        "{first:?}"
    );

    let mut expected = Vec::new();
    let mut indexes = Vec::new();
    for i in 1..=40i64 {
        let v = format!("v{i}");
        let index = exec(&client, id, "INSERT INTO t (v) VALUES (?)", vec![json!(v)]).await;
        expected.push(insert(index, i, &v));
        indexes.push(index);
    }
    // One write with several changes: all at one index, in order.
    let r = client
        .execute(
            id,
            vec![
                stmt("UPDATE t SET v = 'x' WHERE id = 3", vec![]),
                stmt("DELETE FROM t WHERE id = 4", vec![]),
            ],
            true,
        )
        .await
        .expect("write");
    let mut update = insert(r.index, 3, "x");
    update.op = ChangeOp::Update;
    let delete = ChangeEvent {
        index: r.index,
        op: ChangeOp::Delete,
        table: Some("t".into()),
        rowid: Some(4),
        row: None,
        sql: None,
    };
    expected.extend([update, delete]);
    // A failing write shows nothing.
    assert!(
        client.execute(id, vec![stmt("INSERT INTO nope VALUES (1)", vec![])], true).await.is_err()
    );

    assert_eq!(changes(&mut from_start, expected.len()).await, expected);
    assert_eq!(changes(&mut live, expected.len()).await, expected);

    // Resuming after any index gives exactly what followed it.
    let at = indexes[24];
    let mut resumed = watch(&urls, &server.token, id, Some(at));
    let tail: Vec<ChangeEvent> = expected.iter().filter(|e| e.index > at).cloned().collect();
    assert_eq!(changes(&mut resumed, tail.len()).await, tail);
    // And nothing more is pending on any of them.
    for w in [&mut from_start, &mut live, &mut resumed] {
        assert!(tokio::time::timeout(Duration::from_millis(300), w.next()).await.is_err());
    }
}

#[tokio::test]
async fn an_index_older_than_retention_gets_a_resync() {
    let (_dir, server) = Server::start(
        Mode::Memory,
        &["--feed-retention-changes", "5", "--feed-retention-age", "1h"],
    );
    let client = server.client();
    let (id, _) = base_with_table(&client).await;
    let mut last = 0;
    let mut indexes = Vec::new();
    for i in 1..=20 {
        last = exec(&client, id, "INSERT INTO t (v) VALUES (?)", vec![json!(i.to_string())]).await;
        indexes.push(last);
    }
    let urls = vec![server.url.clone()];
    let mut old = watch(&urls, &server.token, id, Some(indexes[2]));
    assert_eq!(
        next(&mut old, Duration::from_secs(10)).await,
        Some(FeedMessage::Resync(Resync { resync: true, index: last }))
    );
    // It carries on from there.
    let index = exec(&client, id, "INSERT INTO t (v) VALUES ('after')", vec![]).await;
    assert_eq!(changes(&mut old, 1).await, vec![insert(index, 21, "after")]);
    // Within retention (the last 5 changes): no resync.
    let mut recent = watch(&urls, &server.token, id, Some(indexes[16]));
    let got = changes(&mut recent, 4).await;
    assert_eq!(
        got.iter().map(|e| e.index).collect::<Vec<_>>(),
        [indexes[17], indexes[18], indexes[19], index]
    );
}

#[tokio::test]
async fn bad_requests_are_refused_before_upgrading() {
    let (_dir, server) = Server::start(Mode::Memory, &[]);
    let client = server.client();
    let (id, _) = base_with_table(&client).await;
    let http = reqwest::Client::new();
    let get = |path: String, token: Option<&str>| {
        let mut r = http.get(format!("{}{path}", server.url));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        async move {
            let resp = r.send().await.expect("request");
            let status = resp.status().as_u16();
            let body: Value = resp.json().await.expect("a JSON error");
            (status, body["error"]["code"].as_str().unwrap_or_default().to_string())
        }
    };
    let t = Some(server.token.as_str());
    let unknown = BaseId::random();
    assert_eq!(get(format!("/v1/bases/{unknown}/changes"), t).await, (404, "not_found".into()));
    assert_eq!(
        get(format!("/v1/bases/{id}/changes?after=x"), t).await,
        (400, "invalid_input".into())
    );
    assert_eq!(
        get(format!("/v1/bases/{id}/changes?after=-1"), t).await,
        (400, "invalid_input".into())
    );
    assert_eq!(
        get(format!("/v1/bases/{id}/changes?since=1"), t).await,
        (400, "invalid_input".into())
    );
    assert_eq!(get("/v1/bases/not-an-id/changes".into(), t).await, (400, "invalid_input".into()));
    assert_eq!(get(format!("/v1/bases/{id}/changes"), None).await, (401, "unauthorized".into()));
    // Not a WebSocket request.
    assert_eq!(get(format!("/v1/bases/{id}/changes"), t).await, (400, "invalid_input".into()));
    // The route is in the OpenAPI document.
    let doc: Value = http
        .get(format!("{}/v1/openapi.json", server.url))
        .bearer_auth(&server.token)
        .send()
        .await
        .expect("openapi")
        .json()
        .await
        .expect("json");
    assert!(doc["paths"]["/v1/bases/{id}/changes"]["get"].is_object());
    // Through the WebSocket client: errors that a retry cannot fix end the watch.
    let urls = vec![server.url.clone()];
    let mut w = watch(&urls, &server.token, unknown, None);
    assert!(matches!(w.next().await, Err(Error::NotFound(_))));
    let mut w = watch(&urls, "wrong", id, None);
    assert!(matches!(w.next().await, Err(Error::Unauthorized(_))));
}

#[tokio::test]
async fn dropping_the_base_ends_the_feed() {
    let (_dir, server) = Server::start(Mode::Memory, &[]);
    let client = server.client();
    let (id, ddl) = base_with_table(&client).await;
    let mut w = watch(std::slice::from_ref(&server.url), &server.token, id, Some(ddl));
    let index = exec(&client, id, "INSERT INTO t (v) VALUES ('a')", vec![]).await;
    assert_eq!(changes(&mut w, 1).await, vec![insert(index, 1, "a")]);
    let dropped = client.drop_base(id).await.expect("drop").index;
    let event = changes(&mut w, 1).await;
    assert_eq!((event[0].index, event[0].op), (dropped, ChangeOp::BaseDropped));
    assert_eq!(next(&mut w, Duration::from_secs(5)).await, None);
}

#[tokio::test]
async fn shoal_watch_json_prints_exactly_the_events() {
    let (_dir, server) = Server::start(Mode::Memory, &[]);
    let client = server.client();
    let (id, ddl) = base_with_table(&client).await;
    let mut child = Command::new(bin())
        .args(["watch", &id.to_string(), "--after", &ddl.to_string(), "--json"])
        .env("SHOAL_ENDPOINT", &server.url)
        .env("SHOAL_TOKEN", &server.token)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start shoal watch");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut expected = Vec::new();
    for i in 1..=10i64 {
        let v = format!("v{i}");
        let index = exec(&client, id, "INSERT INTO t (v) VALUES (?)", vec![json!(v)]).await;
        expected.push(serde_json::to_string(&FeedMessage::Change(insert(index, i, &v))).unwrap());
    }
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while lines.len() < expected.len() && Instant::now() < deadline {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
            lines.push(l);
        }
    }
    // No extra line follows.
    if let Ok(l) = rx.recv_timeout(Duration::from_millis(300)) {
        lines.push(l);
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(lines, expected);

    // A bad id is an input error (exit code 2).
    let out = Command::new(bin()).args(["watch", "not-an-id"]).output().expect("run");
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test]
async fn after_a_restart_the_current_index_resumes_and_older_ones_resync() {
    let (dir, mut server) = Server::start(Mode::Standalone, &[]);
    let client = server.client();
    let (id, _) = base_with_table(&client).await;
    let mut last = 0;
    for i in 1..=5 {
        last = exec(&client, id, "INSERT INTO t (v) VALUES (?)", vec![json!(i.to_string())]).await;
    }
    server.terminate();
    let server = Server::start_in(Mode::Standalone, dir.path(), &[]);
    let client = server.client();
    let urls = vec![server.url.clone()];
    let mut current = watch(&urls, &server.token, id, Some(last));
    let mut older = watch(&urls, &server.token, id, Some(last - 2));
    // Connect both before the next write.
    let (a, b) = tokio::join!(
        tokio::time::timeout(Duration::from_millis(500), current.next()),
        next(&mut older, Duration::from_secs(10))
    );
    assert!(a.is_err(), "nothing is pending after the current index: {a:?}");
    assert_eq!(b, Some(FeedMessage::Resync(Resync { resync: true, index: last })));
    let index = exec(&client, id, "INSERT INTO t (v) VALUES ('new')", vec![]).await;
    assert_eq!(changes(&mut current, 1).await, vec![insert(index, 6, "new")]);
    assert_eq!(changes(&mut older, 1).await, vec![insert(index, 6, "new")]);
}

/// The location of a base as one node reports it: (leader URL, replica URLs).
async fn location(url: &str, id: BaseId) -> Option<(String, Vec<String>)> {
    let v: Value = reqwest::Client::new()
        .get(format!("{url}/v1/bases/{id}/location"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    let leader = v["leader"]["node_url"].as_str()?.to_string();
    let replicas =
        v["replicas"].as_array()?.iter().filter_map(|r| r["node_url"].as_str()).map(String::from);
    Some((leader, replicas.collect()))
}

/// Retries a write on each URL in turn (bounded) while the cluster settles.
async fn write_anywhere(urls: &[String], id: BaseId, sql: &str, params: Vec<Value>) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut i = 0;
    loop {
        let c = Client::new(&urls[i % urls.len()], Some(TOKEN.into())).expect("client");
        match c.execute(id, vec![stmt(sql, params.clone())], true).await {
            Ok(r) => return r.index,
            Err(e) => assert!(Instant::now() < deadline, "write failed: {e}"),
        }
        i += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn followers_send_the_leaders_events_and_a_watcher_survives_failover() {
    let mut c = Cluster::new().await;
    c.start_three_nodes();
    let urls: Vec<String> = c.nodes.values().map(|p| p.url.clone()).collect();
    let deadline = Instant::now() + Duration::from_secs(90);
    let id = loop {
        let client = Client::new(&urls[0], Some(TOKEN.into())).expect("client");
        match client.create_base(None, None).await {
            Ok(b) => break b.id,
            Err(e) => assert!(Instant::now() < deadline, "create failed: {e}\n{}", c.logs()),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let ddl =
        write_anywhere(&urls, id, "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)", vec![]).await;
    let (leader, replicas) = loop {
        if let Some((l, r)) = location(&urls[0], id).await.filter(|(_, r)| r.len() == 3) {
            break (l, r);
        }
        assert!(Instant::now() < deadline, "no leader known\n{}", c.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let followers: Vec<String> = replicas.iter().filter(|u| **u != leader).cloned().collect();
    let mut on_leader = watch(std::slice::from_ref(&leader), TOKEN, id, Some(ddl));
    let mut on_follower = watch(&followers[..1], TOKEN, id, Some(ddl));
    // Leader first, then the followers: it fails over when the leader dies.
    let all: Vec<String> = std::iter::once(leader.clone()).chain(followers.clone()).collect();
    let mut failing_over = watch(&all, TOKEN, id, Some(ddl));

    let mut written = Vec::new();
    for i in 1..=20 {
        let index =
            write_anywhere(&all, id, "INSERT INTO t (v) VALUES (?)", vec![json!(i.to_string())])
                .await;
        written.push(insert(index, i, &i.to_string()));
    }
    let from_leader = changes(&mut on_leader, 20).await;
    assert_eq!(from_leader, written);
    assert_eq!(changes(&mut on_follower, 20).await, from_leader);
    assert_eq!(changes(&mut failing_over, 20).await, from_leader);

    // The leader dies; writes go on through the others.
    let name =
        c.nodes.iter().find(|(_, p)| p.url == leader).map(|(n, _)| n.clone()).expect("leader");
    c.nodes.get_mut(&name).expect("leader node").kill();
    for i in 21..=30 {
        let index = write_anywhere(
            &followers,
            id,
            "INSERT INTO t (v) VALUES (?)",
            vec![json!(i.to_string())],
        )
        .await;
        written.push(insert(index, i, &i.to_string()));
    }
    assert_eq!(changes(&mut failing_over, 10).await, written[20..]);
    assert_eq!(changes(&mut on_follower, 10).await, written[20..]);
}
