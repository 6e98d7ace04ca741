//! Idempotency keys: a write may carry a key chosen by the client; the first
//! answer to a key is stored in the same SQLite transaction as the change it
//! made, so a retry with the same key (after a timeout or a failover) gets
//! that answer again and changes nothing. Writes that fail change nothing
//! and are not recorded: their retry runs again.
//!
//! Each database (a base for its executes, a bucket's catalog for creates
//! and drops) keeps the newest [`KEEP`] keys; older ones are pruned in the
//! same transaction, the same way on every replica.

use rusqlite::{Connection, OptionalExtension, params};
use shoal_types::{Error, Result};

use crate::map_sqlite_error;

/// How many keys a database remembers.
pub const KEEP: i64 = 10_000;

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
        "CREATE TABLE IF NOT EXISTS {table} (key TEXT PRIMARY KEY, idx INTEGER NOT NULL, answer TEXT NOT NULL);
         CREATE INDEX IF NOT EXISTS {table}_idx ON {table} (idx);"
    )
}

/// The first answer to `key`, with the log index it was applied at.
pub fn lookup(conn: &Connection, table: &str, key: &str) -> Result<Option<(u64, String)>> {
    conn.prepare_cached(&format!("SELECT idx, answer FROM {table} WHERE key = ?1"))
        .and_then(|mut s| {
            s.query_row([key], |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, String>(1)?)))
                .optional()
        })
        .map_err(map_sqlite_error)
}

/// Records the answer to `key` and forgets the oldest keys beyond [`KEEP`].
pub fn record(conn: &Connection, table: &str, key: &str, index: u64, answer: &str) -> Result<()> {
    // Keys are only ever inserted here and deleted below, oldest first, so
    // their rowids are consecutive: the newest KEEP keys are those within
    // KEEP of the one just inserted, and pruning is one range delete on the
    // rowid (the same on every replica, which hold the same rows).
    let rowid = conn
        .prepare_cached(&format!("INSERT INTO {table} (key, idx, answer) VALUES (?1, ?2, ?3)"))
        .and_then(|mut s| s.insert(params![key, index as i64, answer]))
        .map_err(map_sqlite_error)?;
    conn.prepare_cached(&format!("DELETE FROM {table} WHERE rowid <= ?1"))
        .and_then(|mut s| s.execute([rowid - KEEP]))
        .map_err(map_sqlite_error)?;
    Ok(())
}
