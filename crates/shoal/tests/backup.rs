//! `shoal backup` and `shoal restore` against a real standalone server:
//! backup, drop, restore gives the same checksum (rowid gaps, a WITHOUT
//! ROWID table, blobs, NULLs, an index, a view and a generated column
//! included); an existing
//! base is not overwritten without `--replace`; `--as` restores under
//! another id; a truncated file is refused and changes nothing.

mod common;

use common::{Mode, Server, cli as shoal};
use serde_json::Value;

fn ok(s: &Server, args: &[&str]) -> String {
    let (ok, out, err) = shoal(s, args);
    assert!(ok, "shoal {args:?}: {out}{err}");
    out
}

async fn checksum(s: &Server, id: &str) -> Option<String> {
    let resp = reqwest::Client::new()
        .get(format!("{}/v1/bases/{id}/checksum", s.url))
        .bearer_auth(&s.token)
        .send()
        .await
        .expect("checksum");
    if !resp.status().is_success() {
        return None;
    }
    let v: Value = resp.json().await.ok()?;
    v["checksum"].as_str().map(str::to_string)
}

#[tokio::test]
async fn backup_drop_restore_gives_the_same_base() {
    let (dir, s) = Server::start(Mode::Standalone, &[]);
    let id = ok(&s, &["base", "create", "--name", "crm"])
        .split_whitespace()
        .last()
        .expect("id")
        .to_string();
    for sql in [
        "CREATE TABLE p (id INTEGER PRIMARY KEY, name TEXT, pic BLOB, score REAL)",
        "CREATE TABLE kv (k TEXT PRIMARY KEY, v INTEGER) WITHOUT ROWID",
        "INSERT INTO p (name, pic, score) VALUES ('a', x'00ff', 2.0), ('b', NULL, 1.5)",
        "INSERT INTO kv VALUES ('x', 1), ('y', NULL)",
        "CREATE INDEX p_name ON p (name)",
        "CREATE VIEW pv AS SELECT name FROM p",
        // A generated column is computed again, not written.
        "CREATE TABLE g (a INTEGER, twice INTEGER GENERATED ALWAYS AS (a * 2) VIRTUAL)",
        "INSERT INTO g (a) VALUES (1), (5)",
        "DELETE FROM p WHERE id = 1",
        "INSERT INTO p (name) VALUES ('c')",
    ] {
        ok(&s, &["sql", &id, sql]);
    }
    let before = checksum(&s, &id).await.expect("a checksum");
    let out = dir.path().join("backup");
    let out = out.to_str().expect("path");
    ok(&s, &["backup", "--out", out]);
    let (refused, _, err) = shoal(&s, &["backup", "--out", out]);
    assert!(!refused && err.contains("already holds a backup"), "{err}");

    ok(&s, &["base", "drop", &id]);
    assert_eq!(checksum(&s, &id).await, None);
    ok(&s, &["restore", out]);
    assert_eq!(checksum(&s, &id).await.as_deref(), Some(before.as_str()));
    let (again, _, err) = shoal(&s, &["restore", out]);
    assert!(!again && err.contains("exists") && err.contains("nothing was restored"), "{err}");
    ok(&s, &["restore", out, "--replace"]);
    assert_eq!(checksum(&s, &id).await.as_deref(), Some(before.as_str()));

    let copy = "0a000000-0000-4000-8000-000000000001";
    ok(&s, &["restore", out, "--base", &id, "--as", copy]);
    assert_eq!(checksum(&s, copy).await.as_deref(), Some(before.as_str()));

    // A truncated file: refused before anything changes.
    let file = std::path::Path::new(out).join(format!("{id}.sqlite"));
    let bytes = std::fs::read(&file).expect("read");
    std::fs::write(&file, &bytes[..bytes.len() / 2]).expect("truncate");
    let other = "0b000000-0000-4000-8000-000000000002";
    let (restored, _, err) = shoal(&s, &["restore", out, "--as", other]);
    assert!(!restored && err.contains("corrupt or truncated"), "{err}");
    assert_eq!(checksum(&s, other).await, None, "a refused restore created the base");
    let (restored, _, err) = shoal(&s, &["restore", dir.path().to_str().expect("path")]);
    assert!(!restored && err.contains("is not a backup"), "{err}");
}

/// `POST /v1/bases` with a SQLite file as the body.
async fn post_file(s: &Server, query: &str, body: Vec<u8>) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/bases{query}", s.url))
        .bearer_auth(&s.token)
        .header("content-type", "application/vnd.sqlite3")
        .body(body)
        .send()
        .await
        .expect("post");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn count(s: &Server, id: &str) -> Value {
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/bases/{id}/query", s.url))
        .bearer_auth(&s.token)
        .json(&serde_json::json!({"sql": "SELECT count(*) FROM songs"}))
        .send()
        .await
        .expect("query");
    let v: Value = resp.json().await.expect("json");
    v["rows"][0][0].clone()
}

#[tokio::test]
async fn a_sqlite_file_posted_becomes_a_base_and_a_bad_one_changes_nothing() {
    let (dir, s) = Server::start(Mode::Standalone, &[]);
    // Any SQLite database, made here, not by Shoal; with a small page size.
    let path = dir.path().join("songs.db");
    let db = rusqlite::Connection::open(&path).expect("open");
    db.execute_batch(
        "PRAGMA page_size = 1024;
         CREATE TABLE songs (id INTEGER PRIMARY KEY, title TEXT NOT NULL, secs INTEGER);
         CREATE INDEX songs_title ON songs (title);
         INSERT INTO songs (title, secs) VALUES ('one', 180), ('two', 200), ('three', NULL);",
    )
    .expect("fill");
    drop(db);
    let file = std::fs::read(&path).expect("read");

    let id = "1d000000-0000-4000-8000-000000000001";
    let (status, v) = post_file(&s, &format!("?id={id}&name=songs"), file.clone()).await;
    assert_eq!(status, 201, "{v}");
    assert_eq!((v["id"].as_str(), v["name"].as_str()), (Some(id), Some("songs")), "{v}");
    assert_eq!(count(&s, id).await, 3);
    ok(&s, &["sql", id, "INSERT INTO songs (title) VALUES ('four')"]);
    assert_eq!(count(&s, id).await, 4);
    let before = checksum(&s, id).await.expect("checksum");

    // Over an existing base: 409, and the base is as it was.
    let (status, v) = post_file(&s, &format!("?id={id}"), file.clone()).await;
    assert_eq!(status, 409, "{v}");
    assert_eq!(checksum(&s, id).await.as_deref(), Some(before.as_str()));

    // Not a database, or a damaged one: 400, and no base.
    let other = "1e000000-0000-4000-8000-000000000002";
    let (status, v) = post_file(&s, &format!("?id={other}"), b"id,title\n1,one\n".to_vec()).await;
    assert_eq!(status, 400, "{v}");
    assert!(v["error"]["message"].as_str().is_some_and(|m| m.contains("not a SQLite")), "{v}");
    let mut damaged = file.clone();
    damaged.truncate(file.len() / 2);
    let (status, v) = post_file(&s, &format!("?id={other}"), damaged).await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(checksum(&s, other).await, None, "a refused file made a base");

    // A backup streamed out comes back in under another id, equal.
    let backup = reqwest::Client::new()
        .get(format!("{}/v1/bases/{id}/backup", s.url))
        .bearer_auth(&s.token)
        .send()
        .await
        .expect("backup")
        .bytes()
        .await
        .expect("bytes");
    let (status, v) = post_file(&s, &format!("?id={other}"), backup.to_vec()).await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(checksum(&s, other).await.as_deref(), Some(before.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_posted_through_a_proxy_reaches_every_replica() {
    use common::cluster::{Cluster, TOKEN};
    let mut c = Cluster::new().await;
    c.start_three_nodes();
    c.wait_three_replicas().await;
    let proxy = c.start_proxy(0, &[]);
    let client = shoal_client::Client::new(&proxy.url, Some(TOKEN.into())).expect("client");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("f.db");
    let db = rusqlite::Connection::open(&path).expect("open");
    db.execute_batch("CREATE TABLE t (v); INSERT INTO t VALUES (1), (2), (3);").expect("fill");
    drop(db);
    let file = std::fs::read(&path).expect("read");
    let base = common::eventually("restore through the proxy", || {
        client.restore_base(None, Some("copied".into()), file.clone().into())
    })
    .await;
    assert_eq!(base.name.as_deref(), Some("copied"));
    // Every replica holds it, equal.
    c.equal_checksums(&base.id.to_string()).await;
}
