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
