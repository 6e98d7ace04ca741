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

use rusqlite::Connection;
use rusqlite::hooks::Action;
use shoal_types::Result;
use shoal_types::api::{ChangeEvent, ChangeOp, Row};

use crate::map_sqlite_error;
use crate::rows::quote;
use crate::value::sql_to_json;

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
    events: Vec<ChangeEvent>,
}

fn lock(m: &Mutex<Raw>) -> MutexGuard<'_, Raw> {
    // Every use leaves the state whole; a poisoned lock is still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether changes to `table` are Shoal's or SQLite's own business.
pub(crate) fn is_internal(table: &str) -> bool {
    let t = table.to_ascii_lowercase();
    t.starts_with("_shoal_") || t.starts_with("sqlite_")
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
            self.events.push(ChangeEvent {
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
        let mut reader: Option<(String, rusqlite::CachedStatement<'_>, Vec<String>)> = None;
        for c in changes {
            let row = match c.op {
                ChangeOp::Delete => None,
                _ => {
                    if reader.as_ref().is_none_or(|(t, _, _)| *t != c.table) {
                        let stmt = conn
                            .prepare_cached(&format!(
                                "SELECT * FROM main.{} WHERE _rowid_ = ?1",
                                quote(&c.table)
                            ))
                            .map_err(map_sqlite_error)?;
                        let names = stmt.column_names().iter().map(|n| n.to_string()).collect();
                        reader = Some((c.table.clone(), stmt, names));
                    }
                    let (_, stmt, names) = reader.as_mut().expect("set above");
                    read_row(stmt, names, c.rowid)?
                }
            };
            self.events.push(ChangeEvent {
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
    pub(crate) fn take(&mut self) -> Vec<ChangeEvent> {
        std::mem::take(&mut self.events)
    }
}

/// A row's values by column name, or `None` if it is gone; `stmt` reads
/// one row of its table by rowid.
fn read_row(
    stmt: &mut rusqlite::Statement<'_>,
    names: &[String],
    rowid: i64,
) -> Result<Option<Row>> {
    let mut rows = stmt.query([rowid]).map_err(map_sqlite_error)?;
    let Some(r) = rows.next().map_err(map_sqlite_error)? else { return Ok(None) };
    let mut row = Row::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        row.insert(name.clone(), sql_to_json(r.get_ref(i).map_err(map_sqlite_error)?));
    }
    Ok(Some(row))
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
