//! Applies single-row inserts to bases on disk through the store, as a
//! replica's state machine does, without Raft or HTTP: the cost of the
//! apply path alone.
//!
//! `cargo run --release -p shoal-storage --example apply -- [BASES] [WRITES] [keyed]`
//! (defaults: 64 bases, 20000 writes; `keyed` gives each write an
//! idempotency key, as the client library does).

use std::time::Instant;

use shoal_storage::{Command, Options, Store};
use shoal_types::BaseId;
use shoal_types::api::Statement;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let bases: usize = args.first().map(|a| a.parse()).transpose()?.unwrap_or(64).max(1);
    let writes: usize = args.get(1).map(|a| a.parse()).transpose()?.unwrap_or(20_000);
    let keyed = args.get(2).is_some_and(|a| a == "keyed");
    let dir = tempfile::tempdir()?;
    let store = Store::open(Some(dir.path()), Options::default())?;
    let mut index = 0;
    let mut next = || {
        index += 1;
        index
    };
    let ids: Vec<BaseId> = (0..bases).map(|_| BaseId::random()).collect();
    let create = Statement {
        sql: "CREATE TABLE bench (id INTEGER PRIMARY KEY, v TEXT)".into(),
        params: Default::default(),
    };
    for id in &ids {
        let created_at = "2026-01-01T00:00:00Z".into();
        store.apply(next(), &Command::CreateBase { id: *id, name: None, created_at })?;
        let statements = vec![create.clone()];
        store.apply(next(), &Command::Execute { base: *id, statements, transaction: true })?;
    }
    let insert = Statement {
        sql: "INSERT INTO bench (v) VALUES (?)".into(),
        params: serde_json::from_value(serde_json::json!(["x".repeat(100)]))?,
    };
    let started = Instant::now();
    for i in 0..writes {
        let command = Command::Execute {
            base: ids[i % bases],
            statements: vec![insert.clone()],
            transaction: true,
        };
        let key = keyed.then(|| format!("key-{i}"));
        store.apply_keyed(next(), &command, key.as_deref())?;
    }
    for bucket in ids.iter().map(|id| id.bucket()) {
        store.sync_bucket(bucket)?;
    }
    let took = started.elapsed();
    println!(
        "{writes} {}writes over {bases} bases in {:.2} s (with the final sync): {:.1} µs per write",
        if keyed { "keyed " } else { "" },
        took.as_secs_f64(),
        took.as_secs_f64() * 1e6 / writes as f64
    );
    Ok(())
}
