//! Idempotency keys: a write may carry a key chosen by the client; the first
//! answer to a key is stored in the same SQLite transaction as the change it
//! made, so a retry with the same key (after a timeout or a failover) gets
//! that answer again and changes nothing. Writes that fail change nothing
//! and are not recorded: their retry runs again.
//!
//! Each database (a base for its executes, a bucket's catalog for creates
//! and drops) keeps at least the newest [`KEEP`] keys; older ones are pruned
//! in the same transaction, every [`PRUNE_EVERY`] keys, the same way on
//! every replica.
//!
//! A base stores its answers as [`encode_answer`] writes them: a version
//! prefix, then JSON.

use rusqlite::{Connection, OptionalExtension, params};
use shoal_types::{Error, Result};

use crate::map_sqlite_error;

/// How many keys a database remembers, at least.
pub const KEEP: i64 = 10_000;

/// Pruning runs when a key's rowid is a multiple of this.
pub const PRUNE_EVERY: i64 = 64;

/// The prefix of a stored answer of format 1.
const ANSWER_V1: &str = "v1:";

/// A base's answer (its results as JSON) as it is stored.
pub fn encode_answer(json: &str) -> String {
    format!("{ANSWER_V1}{json}")
}

/// The JSON of a stored answer.
pub fn decode_answer(stored: &str) -> Result<&str> {
    stored.strip_prefix(ANSWER_V1).ok_or_else(|| {
        let version = stored.split(':').next().unwrap_or("");
        Error::InvalidData(format!("a stored answer has format {version:?}, unknown to this build"))
    })
}

/// The statements of one key table, made once.
struct Sql {
    lookup: String,
    insert: String,
    prune: String,
}

fn sql(table: &str) -> &'static Sql {
    use std::sync::{LazyLock, Mutex};
    static TABLES: LazyLock<Mutex<Vec<(String, &'static Sql)>>> = LazyLock::new(Mutex::default);
    let mut tables = TABLES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, s)) = tables.iter().find(|(t, _)| t == table) {
        return s;
    }
    // A handful of tables per process: leaked once each.
    let s: &'static Sql = Box::leak(Box::new(Sql {
        lookup: format!("SELECT idx, answer FROM {table} WHERE key = ?1"),
        insert: format!("INSERT INTO {table} (key, idx, answer) VALUES (?1, ?2, ?3)"),
        prune: format!("DELETE FROM {table} WHERE rowid <= ?1"),
    }));
    tables.push((table.to_string(), s));
    s
}

/// The longest key accepted, in bytes.
pub const MAX_KEY_LEN: usize = 200;

/// Checks a client's key.
pub fn check_key(key: &str) -> Result<()> {
    if key.is_empty() || key.len() > MAX_KEY_LEN || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::InvalidInput(format!(
            "Idempotency-Key must be 1 to {MAX_KEY_LEN} printable ASCII characters without spaces"
        )));
    }
    Ok(())
}

/// The SQL that makes the table `table`.
pub fn schema(table: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {table} (key TEXT PRIMARY KEY, idx INTEGER NOT NULL, answer TEXT NOT NULL);"
    )
}

/// The first answer to `key`, with the log index it was applied at.
pub fn lookup(conn: &Connection, table: &str, key: &str) -> Result<Option<(u64, String)>> {
    conn.prepare_cached(&sql(table).lookup)
        .and_then(|mut s| {
            s.query_row([key], |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, String>(1)?)))
                .optional()
        })
        .map_err(map_sqlite_error)
}

/// Records the answer to `key`, and now and then forgets the oldest keys
/// beyond [`KEEP`].
pub fn record(conn: &Connection, table: &str, key: &str, index: u64, answer: &str) -> Result<()> {
    // Keys are only ever inserted here and deleted below, oldest first, so
    // their rowids are consecutive: the newest KEEP keys are those within
    // KEEP of the one just inserted, and pruning is one range delete on the
    // rowid (the same on every replica, which hold the same rows).
    let sql = sql(table);
    let rowid = conn
        .prepare_cached(&sql.insert)
        .and_then(|mut s| s.insert(params![key, index as i64, answer]))
        .map_err(map_sqlite_error)?;
    if rowid % PRUNE_EVERY == 0 {
        conn.prepare_cached(&sql.prune)
            .and_then(|mut s| s.execute([rowid - KEEP]))
            .map_err(map_sqlite_error)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_carry_their_version() {
        assert_eq!(decode_answer(&encode_answer("[1]")).unwrap(), "[1]");
        assert!(decode_answer("[1]").is_err());
        assert!(decode_answer("v2:[1]").unwrap_err().to_string().contains("v2"));
    }

    #[test]
    fn at_least_the_newest_keys_are_kept() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(&schema("k")).unwrap();
        let n = KEEP + 3 * PRUNE_EVERY + 5;
        for i in 1..=n {
            record(&conn, "k", &format!("key-{i}"), i as u64, "").unwrap();
        }
        let kept: i64 = conn.query_row("SELECT count(*) FROM k", [], |r| r.get(0)).unwrap();
        assert!((KEEP..KEEP + PRUNE_EVERY).contains(&kept), "{kept}");
        assert!(lookup(&conn, "k", &format!("key-{n}")).unwrap().is_some());
        assert!(lookup(&conn, "k", &format!("key-{}", n - KEEP + 1)).unwrap().is_some());
        assert!(lookup(&conn, "k", "key-1").unwrap().is_none());
    }
}
