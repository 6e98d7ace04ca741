//! A bucket's catalog: which bases the bucket holds, in a small SQLite file
//! beside the bases (`catalog.db`).
//!
//! Like a base, the catalog records the log index of the last command it
//! applied in the same transaction as the change, so create and drop commands
//! replay exactly once.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use shoal_types::api::BaseInfo;
use shoal_types::{BaseId, Error, Result};

use crate::{idempotency, map_sqlite_error};

/// The catalog's on-disk format. A later format adds its migration in
/// [`Catalog::open`].
const FORMAT: u64 = 1;

/// The catalog of one bucket.
pub struct Catalog {
    conn: Connection,
}

/// What applying a catalog command did.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    /// The change was made.
    Done,
    /// The command's index was applied before (a replay): nothing changed.
    Replayed,
    /// The idempotency key was answered before, at `index`: nothing changed.
    Repeated {
        /// The index of the first write with the key.
        index: u64,
    },
}

/// The table of the catalog's idempotency keys.
const IDEMPOTENCY: &str = "idempotency";

impl Catalog {
    /// Opens (creating if needed) the catalog at `path`, or in memory.
    pub fn open(path: Option<&Path>) -> Result<Catalog> {
        let conn = match path {
            Some(p) => Connection::open(p),
            None => Connection::open_in_memory(),
        }
        .map_err(map_sqlite_error)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             PRAGMA busy_timeout = 5000;
             PRAGMA cache_size = -64;
             PRAGMA wal_autocheckpoint = 100;
             PRAGMA journal_size_limit = 262144;
             CREATE TABLE IF NOT EXISTS bases (
                 id TEXT PRIMARY KEY, name TEXT, created_at TEXT NOT NULL,
                 created_index INTEGER NOT NULL) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS identity (key TEXT PRIMARY KEY, value TEXT NOT NULL);
             INSERT OR IGNORE INTO meta (key, value)
                 VALUES ('format', 1), ('applied_index', 0);",
        )
        .map_err(map_sqlite_error)?;
        conn.execute_batch(&idempotency::schema(IDEMPOTENCY)).map_err(map_sqlite_error)?;
        let format = meta(&conn, "format")?;
        if format != FORMAT {
            return Err(Error::InvalidData(format!(
                "catalog format {format} is not supported by this version (which reads format {FORMAT})"
            )));
        }
        Ok(Catalog { conn })
    }

    /// Records a new base at log `index`; `Conflict` if it exists.
    pub fn create(&mut self, index: u64, info: &BaseInfo, key: Option<&str>) -> Result<Applied> {
        self.apply(index, key, |tx| {
            let exists: bool = tx
                .query_row("SELECT 1 FROM bases WHERE id = ?1", [info.id.to_string()], |_| Ok(true))
                .optional()
                .map_err(map_sqlite_error)?
                .unwrap_or(false);
            if exists {
                return Err(Error::Conflict(format!("base {} already exists", info.id)));
            }
            tx.execute(
                "INSERT INTO bases (id, name, created_at, created_index) VALUES (?1, ?2, ?3, ?4)",
                params![info.id.to_string(), info.name, info.created_at, index as i64],
            )
            .map(|_| ())
            .map_err(map_sqlite_error)
        })
    }

    /// Forgets a base at log `index`; `NotFound` if it does not exist.
    pub fn drop_base(&mut self, index: u64, id: &BaseId, key: Option<&str>) -> Result<Applied> {
        self.apply(index, key, |tx| {
            let n = tx
                .execute("DELETE FROM bases WHERE id = ?1", [id.to_string()])
                .map_err(map_sqlite_error)?;
            if n == 0 {
                return Err(Error::NotFound(format!("no base {id}")));
            }
            Ok(())
        })
    }

    /// Runs `change` at log `index` in one transaction that also records the
    /// applied index and the idempotency key: skipped if the index was
    /// applied before, answered from the key if it was seen before.
    fn apply(
        &mut self,
        index: u64,
        key: Option<&str>,
        change: impl FnOnce(&Connection) -> Result<()>,
    ) -> Result<Applied> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(map_sqlite_error)?;
        if meta(&tx, "applied_index")? >= index {
            return Ok(Applied::Replayed);
        }
        if let Some((first, _)) =
            key.map(|k| idempotency::lookup(&tx, IDEMPOTENCY, k)).transpose()?.flatten()
        {
            return Ok(Applied::Repeated { index: first });
        }
        change(&tx)?;
        set_meta(&tx, "applied_index", index)?;
        if let Some(k) = key {
            idempotency::record(&tx, IDEMPOTENCY, k, index, "")?;
        }
        tx.commit().map_err(map_sqlite_error)?;
        Ok(Applied::Done)
    }

    /// One base, if it exists.
    pub fn get(&self, id: &BaseId) -> Result<Option<BaseInfo>> {
        self.conn
            .query_row(
                "SELECT id, name, created_at FROM bases WHERE id = ?1",
                [id.to_string()],
                row_to_info,
            )
            .optional()
            .map_err(map_sqlite_error)
    }

    /// The log index a base was created at, if it exists.
    pub fn created_index(&self, id: &BaseId) -> Result<Option<u64>> {
        self.conn
            .query_row("SELECT created_index FROM bases WHERE id = ?1", [id.to_string()], |r| {
                r.get::<_, i64>(0)
            })
            .optional()
            .map(|o| o.map(|i| i as u64))
            .map_err(map_sqlite_error)
    }

    /// Up to `limit` bases with ids greater than `after`, in id order.
    pub fn list(&self, after: Option<&BaseId>, limit: usize, text: &str) -> Result<Vec<BaseInfo>> {
        let after = after.map(|a| a.to_string()).unwrap_or_default();
        // `text`: an id prefix, or a part of the name, in any case.
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT id, name, created_at FROM bases WHERE id > ?1 \
                 AND (?3 = '' OR substr(id, 1, length(?3)) = lower(?3) \
                      OR instr(lower(coalesce(name, '')), lower(?3)) > 0) \
                 ORDER BY id LIMIT ?2",
            )
            .map_err(map_sqlite_error)?;
        let rows = stmt
            .query_map(params![after, limit as i64, text], row_to_info)
            .map_err(map_sqlite_error)?;
        rows.collect::<rusqlite::Result<_>>().map_err(map_sqlite_error)
    }

    /// Every base of this bucket, in id order.
    pub fn all_ids(&self) -> Result<Vec<BaseId>> {
        let mut stmt =
            self.conn.prepare("SELECT id FROM bases ORDER BY id").map_err(map_sqlite_error)?;
        let ids = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(map_sqlite_error)?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(map_sqlite_error)?;
        ids.iter()
            .map(|s| {
                s.parse().map_err(|_| Error::InvalidData(format!("bad base id {s:?} in a catalog")))
            })
            .collect()
    }

    /// Copies the catalog into a new file at `dest` with SQLite's online backup.
    pub fn backup_to(&self, dest: &Path) -> Result<()> {
        self.conn.backup("main", dest, None).map_err(map_sqlite_error)
    }

    /// Replaces the catalog's content with the database file at `src`.
    pub fn restore_from(&mut self, src: &Path) -> Result<()> {
        self.conn
            .restore("main", src, None::<fn(rusqlite::backup::Progress)>)
            .map_err(map_sqlite_error)
    }
}

impl Catalog {
    /// The last log index applied to this catalog.
    pub fn applied_index(&self) -> Result<u64> {
        meta(&self.conn, "applied_index")
    }

    /// The id of the Raft group this bucket's data belongs to, if recorded.
    pub fn group_id(&self) -> Result<Option<String>> {
        self.conn
            .query_row("SELECT value FROM identity WHERE key = 'group'", [], |r| r.get(0))
            .optional()
            .map_err(map_sqlite_error)
    }

    /// Records the id of the Raft group this bucket's data belongs to.
    pub fn set_group_id(&self, id: &str) -> Result<()> {
        self.conn
            .execute(
                "INSERT INTO identity (key, value) VALUES ('group', ?1) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [id],
            )
            .map(|_| ())
            .map_err(map_sqlite_error)
    }
}

fn row_to_info(r: &rusqlite::Row<'_>) -> rusqlite::Result<BaseInfo> {
    let id: String = r.get(0)?;
    let id: BaseId = id.parse().map_err(|e: Error| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })?;
    Ok(BaseInfo { id, bucket: id.bucket(), name: r.get(1)?, created_at: r.get(2)? })
}

fn meta(conn: &Connection, key: &str) -> Result<u64> {
    conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get::<_, i64>(0))
        .map(|v| v as u64)
        .map_err(map_sqlite_error)
}

fn set_meta(conn: &Connection, key: &str, value: u64) -> Result<()> {
    conn.execute("UPDATE meta SET value = ?2 WHERE key = ?1", params![key, value as i64])
        .map(|_| ())
        .map_err(map_sqlite_error)
}
