//! Change capture: what a write did to a base, as change-feed events.
//!
//! SQLite's update hook reports each row a statement inserts, updates or
//! deletes in a rowid table (triggers and foreign-key actions included):
//! the operation, the table and the rowid. The hook may not run SQL on its
//! connection, so it only records them; after the statement,
//! [`Capture::finish_statement`] reads the values of inserted and updated
//! rows (as the statement left them) and makes [`ChangeEvent`]s.
//!
//! A statement that changed the schema (its `schema_version` moved) adds a
//! `ddl` event with its SQL text before its row events.
//!
//! Events are buffered for the whole command and handed out only once it
//! has applied: a failing statement's events are dropped with the
//! statement (with per-statement savepoints) or with the whole command.
//!
//! Not captured, because SQLite's update hook does not report them: rows
//! of WITHOUT ROWID tables and of virtual tables, and rows deleted by
//! `REPLACE` conflict resolution (the replacing insert is reported). Shoal's
//! own `_shoal_*` tables, SQLite's `sqlite_*` tables and tables outside the
//! `main` schema are left out on purpose. A delete carries no values (only
//! the rowid): the hook runs after the row is gone. A row changed twice by
//! one statement (through a trigger) carries its values after the
//! statement in both events.

use std::sync::{Arc, Mutex, MutexGuard};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use rusqlite::Connection;
use rusqlite::hooks::Action;
use rusqlite::types::ValueRef;
use shoal_types::api::{ChangeOp, RowText};
use shoal_types::{Error, Result};

use crate::feed::Change;
use crate::map_sqlite_error;
use crate::rows::quote;

/// One row change as the hook saw it.
struct RawChange {
    op: ChangeOp,
    table: String,
    rowid: i64,
}

#[derive(Default)]
struct Raw {
    /// Whether a command is being captured.
    on: bool,
    changes: Vec<RawChange>,
}

/// The change capture of one base's connection.
pub(crate) struct Capture {
    raw: Arc<Mutex<Raw>>,
    /// The events of the command being applied, in order.
    events: Vec<Change>,
}

fn lock(m: &Mutex<Raw>) -> MutexGuard<'_, Raw> {
    // Every use leaves the state whole; a poisoned lock is still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether changes to `table` are Shoal's or SQLite's own business.
pub(crate) fn is_internal(table: &str) -> bool {
    let starts = |p: &str| table.get(..p.len()).is_some_and(|t| t.eq_ignore_ascii_case(p));
    starts("_shoal_") || starts("sqlite_")
}

impl Capture {
    /// Installs the update hook on `conn`; it records nothing until
    /// [`Capture::begin`].
    pub(crate) fn install(conn: &Connection) -> Capture {
        let raw = Arc::new(Mutex::new(Raw::default()));
        let hook_raw = raw.clone();
        conn.update_hook(Some(move |action: Action, db: &str, table: &str, rowid: i64| {
            let mut raw = lock(&hook_raw);
            if !raw.on || db != "main" || is_internal(table) {
                return;
            }
            let op = match action {
                Action::SQLITE_INSERT => ChangeOp::Insert,
                Action::SQLITE_UPDATE => ChangeOp::Update,
                Action::SQLITE_DELETE => ChangeOp::Delete,
                _ => return,
            };
            raw.changes.push(RawChange { op, table: table.to_string(), rowid });
        }));
        Capture { raw, events: Vec::new() }
    }

    /// Starts capturing a command: forgets whatever an earlier one left.
    pub(crate) fn begin(&mut self) {
        let mut raw = lock(&self.raw);
        raw.on = true;
        raw.changes.clear();
        self.events.clear();
    }

    /// Stops capturing. The events gathered stay until [`Capture::take`]
    /// or the next [`Capture::begin`].
    pub(crate) fn end(&mut self) {
        let mut raw = lock(&self.raw);
        raw.on = false;
        raw.changes.clear();
    }

    /// How many events the command has so far: a mark to roll back to.
    pub(crate) fn mark(&self) -> usize {
        self.events.len()
    }

    /// Drops what a statement that was rolled back made (changes not yet
    /// finished and events after `mark`).
    pub(crate) fn rollback_to(&mut self, mark: usize) {
        lock(&self.raw).changes.clear();
        self.events.truncate(mark);
    }

    /// Turns the changes of a statement that succeeded into events at log
    /// `index`; `ddl` is its SQL text if it changed the schema. Runs on the
    /// statement's transaction, so it reads what the statement left.
    pub(crate) fn finish_statement(
        &mut self,
        conn: &Connection,
        index: u64,
        ddl: Option<&str>,
    ) -> Result<()> {
        let changes = std::mem::take(&mut lock(&self.raw).changes);
        if let Some(sql) = ddl {
            self.events.push(Change {
                index,
                op: ChangeOp::Ddl,
                table: ddl_table(sql),
                rowid: None,
                row: None,
                sql: Some(sql.to_string()),
            });
        }
        // One prepared read (and one list of column names) per table the
        // statement touched, not per row: a bulk insert reads many rows of
        // one table.
        let mut reader: Option<Reader<'_>> = None;
        for c in changes {
            let row = match c.op {
                ChangeOp::Delete => None,
                _ => {
                    if reader.as_ref().is_none_or(|r| r.table != c.table) {
                        reader = Some(Reader::new(conn, &c.table)?);
                    }
                    reader.as_mut().expect("set above").read(c.rowid)?
                }
            };
            self.events.push(Change {
                index,
                op: c.op,
                table: Some(c.table),
                rowid: Some(c.rowid),
                row,
                sql: None,
            });
        }
        Ok(())
    }

    /// The events of the last command, once it applied.
    pub(crate) fn take(&mut self) -> Vec<Change> {
        std::mem::take(&mut self.events)
    }
}

/// Reads rows of one table by rowid as the JSON text of their values.
struct Reader<'c> {
    table: String,
    stmt: rusqlite::CachedStatement<'c>,
    /// Each column's name as JSON, with the `:` after it and, past the
    /// first, the `,` before it: written once per table, copied per row.
    keys: Vec<Vec<u8>>,
    /// The length of the last row's text: the next one is likely alike.
    hint: usize,
}

impl<'c> Reader<'c> {
    fn new(conn: &'c Connection, table: &str) -> Result<Reader<'c>> {
        let stmt = conn
            .prepare_cached(&format!("SELECT * FROM main.{} WHERE _rowid_ = ?1", quote(table)))
            .map_err(map_sqlite_error)?;
        let mut keys = Vec::with_capacity(stmt.column_count());
        for (i, name) in stmt.column_names().iter().enumerate() {
            let mut key = if i == 0 { Vec::new() } else { vec![b','] };
            put(&mut key, name)?;
            key.push(b':');
            keys.push(key);
        }
        Ok(Reader { table: table.to_string(), stmt, keys, hint: 64 })
    }

    /// The row's values by column name, or `None` if it is gone.
    fn read(&mut self, rowid: i64) -> Result<Option<RowText>> {
        let mut rows = self.stmt.query([rowid]).map_err(map_sqlite_error)?;
        let Some(r) = rows.next().map_err(map_sqlite_error)? else { return Ok(None) };
        let mut out = Vec::with_capacity(self.hint);
        out.push(b'{');
        for (i, key) in self.keys.iter().enumerate() {
            out.extend_from_slice(key);
            put_value(&mut out, r.get_ref(i).map_err(map_sqlite_error)?)?;
        }
        out.push(b'}');
        self.hint = out.len();
        let text = String::from_utf8(out)
            .map_err(|_| Error::Internal("a captured row is not UTF-8".into()))?;
        Ok(Some(RowText::from_json(text)))
    }
}

/// Appends `v` as JSON.
fn put<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, v: &T) -> Result<()> {
    serde_json::to_writer(out, v)
        .map_err(|e| Error::Internal(format!("cannot write a captured value: {e}")))
}

/// Appends one SQLite value as the API's JSON for it (what
/// [`crate::sql_to_json`] makes, without building it): NaN and infinities
/// as `null`, text not UTF-8 with replacement characters, blobs as
/// `{"base64": "..."}`.
fn put_value(out: &mut Vec<u8>, v: ValueRef<'_>) -> Result<()> {
    match v {
        ValueRef::Null => out.extend_from_slice(b"null"),
        ValueRef::Integer(i) => put(out, &i)?,
        ValueRef::Real(f) if f.is_finite() => put(out, &f)?,
        ValueRef::Real(_) => out.extend_from_slice(b"null"),
        ValueRef::Text(t) => match std::str::from_utf8(t) {
            Ok(s) => put(out, s)?,
            Err(_) => put(out, &String::from_utf8_lossy(t))?,
        },
        ValueRef::Blob(b) => {
            out.extend_from_slice(b"{\"base64\":");
            put(out, &BASE64.encode(b))?;
            out.push(b'}');
        }
    }
    Ok(())
}

/// The table a DDL statement is about, when its text says so plainly:
/// `CREATE [TEMP] TABLE [IF NOT EXISTS] t`, `ALTER TABLE t`,
/// `DROP TABLE [IF EXISTS] t`, `CREATE [UNIQUE] INDEX .. ON t`.
fn ddl_table(sql: &str) -> Option<String> {
    let words = words(sql);
    let upper: Vec<String> = words.iter().map(|w| w.to_ascii_uppercase()).collect();
    let at = |i: usize| upper.get(i).map(String::as_str);
    let name_at = |i: usize| words.get(i).map(|w| unquote(w));
    match at(0)? {
        "CREATE" => {
            let mut i = 1;
            while matches!(at(i), Some("TEMP" | "TEMPORARY" | "UNIQUE")) {
                i += 1;
            }
            match at(i)? {
                "TABLE" => {
                    i += 1;
                    if at(i) == Some("IF") {
                        i += 3;
                    }
                    name_at(i)
                }
                "INDEX" => {
                    let on = upper.iter().position(|w| w == "ON")?;
                    name_at(on + 1)
                }
                _ => None,
            }
        }
        "ALTER" if at(1) == Some("TABLE") => name_at(2),
        "DROP" if at(1) == Some("TABLE") => {
            if at(2) == Some("IF") {
                name_at(4)
            } else {
                name_at(2)
            }
        }
        _ => None,
    }
}

/// Splits SQL into words: identifiers (quoted ones whole) and punctuation
/// as separators. Enough for the first few words of a DDL statement.
fn words(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = sql.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c == '"' || c == '`' || c == '[' {
            let close = if c == '[' { ']' } else { c };
            let mut w = String::new();
            w.push(chars.next().unwrap_or(c));
            for d in chars.by_ref() {
                w.push(d);
                if d == close {
                    break;
                }
            }
            out.push(w);
        } else if c.is_alphanumeric() || c == '_' {
            let mut w = String::new();
            while let Some(&d) = chars.peek() {
                if d.is_alphanumeric() || d == '_' || d == '$' {
                    w.push(d);
                    chars.next();
                } else {
                    break;
                }
            }
            out.push(w);
        } else {
            chars.next();
            if out.len() > 16 {
                break;
            }
        }
    }
    out
}

fn unquote(w: &str) -> String {
    let b = w.as_bytes();
    if b.len() >= 2 && matches!(b[0], b'"' | b'`' | b'[') {
        let inner = &w[1..w.len() - 1];
        if b[0] == b'"' { inner.replace("\"\"", "\"") } else { inner.to_string() }
    } else {
        w.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captured_values_are_the_apis_json() {
        let conn = Connection::open_in_memory().expect("open");
        conn.execute_batch(
            "CREATE TABLE t (i INTEGER, f REAL, s TEXT, b BLOB, n, bad TEXT, inf REAL);
             INSERT INTO t VALUES (-7, 2.5, 'a\"b\u{e9}', x'00ff', NULL, CAST(x'ff41' AS TEXT), 1e999);",
        )
        .expect("fill");
        let mut reader = Reader::new(&conn, "t").expect("reader");
        let text = reader.read(1).expect("read").expect("a row");
        let mut want = shoal_types::api::Row::new();
        let mut stmt = conn.prepare("SELECT * FROM t").expect("prepare");
        let mut rows = stmt.query([]).expect("query");
        let r = rows.next().expect("step").expect("a row");
        for (i, name) in ["i", "f", "s", "b", "n", "bad", "inf"].iter().enumerate() {
            want.insert(name.to_string(), crate::sql_to_json(r.get_ref(i).expect("value")));
        }
        assert_eq!(text.to_row().expect("JSON"), want);
        assert_eq!(text.as_str(), serde_json::Value::Object(want).to_string());
        assert_eq!(reader.read(2).expect("read"), None);
    }

    #[test]
    fn ddl_tables() {
        for (sql, want) in [
            ("CREATE TABLE t (a)", Some("t")),
            ("create table if not exists \"My T\" (a)", Some("My T")),
            ("CREATE TEMP TABLE x(a)", Some("x")),
            ("ALTER TABLE t ADD COLUMN b", Some("t")),
            ("DROP TABLE IF EXISTS [u]", Some("u")),
            ("CREATE UNIQUE INDEX i ON t (a)", Some("t")),
            ("CREATE VIEW v AS SELECT 1", None),
            ("", None),
        ] {
            assert_eq!(ddl_table(sql).as_deref(), want, "{sql}");
        }
    }
}
