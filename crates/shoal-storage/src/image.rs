//! A base made from a SQLite database file a client sent: a backup of a
//! base (`GET /v1/bases/{id}/backup`), or any SQLite database. The file is
//! checked once, where the request arrives, before it is proposed; every
//! replica then writes the same bytes as the base's file.

use std::path::Path;

use rusqlite::{Connection, OpenFlags, OptionalExtension};
use shoal_types::{Error, Result};

use crate::map_sqlite_error;

/// The content types a SQLite database file is sent with.
pub const CONTENT_TYPES: [&str; 2] = shoal_types::api::SQLITE_CONTENT_TYPES;

/// The page size of every base file.
const PAGE_SIZE: i64 = 4096;

/// The format of Shoal's own tables in a base file this build reads.
const FORMAT: i64 = 1;

/// Checks a SQLite database file sent to become a base, and answers the
/// bytes to replicate: the file as it is, or a copy rewritten with the page
/// size of base files when its own differs.
///
/// Refused (`InvalidInput`, nothing stored): anything that is not a SQLite
/// database, a file that fails SQLite's integrity check, and a backup of a
/// base in a format this build does not read. The file's schema is not
/// trusted while it is checked (`trusted_schema` off): its views, triggers
/// and index expressions may call no function with side effects.
pub fn check(bytes: &[u8]) -> Result<Vec<u8>> {
    if bytes.len() < 512 || !bytes.starts_with(b"SQLite format 3\0") {
        return Err(Error::InvalidInput(
            "the body is not a SQLite database file (send one with Content-Type \
             application/vnd.sqlite3)"
                .into(),
        ));
    }
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("image.db");
    std::fs::write(&path, bytes)?;
    let conn = open_untrusted(&path)?;
    let damaged = |e: rusqlite::Error| {
        Error::InvalidInput(format!("the SQLite file is damaged or unreadable: {e}"))
    };
    let verdict: String =
        conn.query_row("PRAGMA integrity_check(1)", [], |r| r.get(0)).map_err(damaged)?;
    if verdict != "ok" {
        return Err(Error::InvalidInput(format!("the SQLite file is damaged: {verdict}")));
    }
    let has_meta: bool = conn
        .query_row(
            "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = '_shoal_meta'",
            [],
            |_| Ok(true),
        )
        .optional()
        .map_err(damaged)?
        .unwrap_or(false);
    if has_meta {
        let format: Option<i64> = conn
            .query_row("SELECT value FROM _shoal_meta WHERE key = 'format'", [], |r| r.get(0))
            .optional()
            .map_err(damaged)?;
        if format.is_some_and(|f| f != FORMAT) {
            return Err(Error::InvalidInput(format!(
                "the file is a base of format {} that this build does not read (it reads {FORMAT})",
                format.unwrap_or_default()
            )));
        }
    }
    let page_size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0)).map_err(damaged)?;
    if page_size == PAGE_SIZE {
        return Ok(bytes.to_vec());
    }
    // A copy with the page size of base files (a rollback journal: the
    // page size of a WAL database cannot change).
    conn.execute_batch(&format!(
        "PRAGMA journal_mode = DELETE; PRAGMA page_size = {PAGE_SIZE}; VACUUM;"
    ))
    .map_err(damaged)?;
    drop(conn);
    Ok(std::fs::read(&path)?)
}

/// Opens a file whose schema came from outside.
fn open_untrusted(path: &Path) -> Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(map_sqlite_error)?;
    conn.pragma_update(None, "trusted_schema", false).map_err(map_sqlite_error)?;
    conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true)
        .map_err(map_sqlite_error)?;
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(page_size: i64) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(&format!(
            "PRAGMA page_size = {page_size}; CREATE TABLE t (a INTEGER PRIMARY KEY, b TEXT);
             INSERT INTO t VALUES (1, 'one'), (2, 'two');"
        ))
        .unwrap();
        drop(conn);
        std::fs::read(&path).unwrap()
    }

    #[test]
    fn a_plain_file_passes_as_it_is() {
        let f = file(4096);
        assert_eq!(check(&f).unwrap(), f);
    }

    #[test]
    fn another_page_size_is_rewritten() {
        let f = file(1024);
        let out = check(&f).unwrap();
        assert_ne!(out, f);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.db");
        std::fs::write(&path, &out).unwrap();
        let conn = Connection::open(&path).unwrap();
        let size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0)).unwrap();
        let n: i64 = conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap();
        assert_eq!((size, n), (4096, 2));
    }

    #[test]
    fn garbage_and_damage_are_refused() {
        assert!(matches!(check(b"not a database"), Err(Error::InvalidInput(_))));
        let mut f = file(4096);
        f.truncate(f.len() / 2 + 1);
        assert!(matches!(check(&f), Err(Error::InvalidInput(_))));
        let mut f = file(4096);
        // Overwrite the second page (the table's rows) with noise.
        for b in &mut f[4096..4096 + 200] {
            *b = 0xA5;
        }
        assert!(matches!(check(&f), Err(Error::InvalidInput(_))), "a damaged page passed");
    }
}
