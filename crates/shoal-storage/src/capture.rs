//! Change capture: what a write did to a base, as change-feed events.
//!
//! SQLite's update hook reports each row a statement inserts, updates or
//! deletes in a rowid table (triggers and foreign-key actions included):
//! the operation, the table and the rowid. The hook may not run SQL on its
//! connection, so it only records them; after the statement,
//! [`Capture::finish_statement`] reads the values of inserted and updated
//! rows (as the statement left them) and makes change events ([`Change`]),
//! each row written once as the JSON text the feed will send.
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
use rusqlite::hooks::Action;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OptionalExtension};
use shoal_types::api::{ChangeOp, RowText};
use shoal_types::{Error, Result};

use crate::feed::Change;
use crate::rows::quote;
use crate::{map_sqlite_error, seatable};

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
        // one table. Its rows have consecutive rowids: they are read in
        // one pass over the range rather than looked up one by one.
        let mut reader: Option<Reader<'_>> = None;
        let mut rows: Vec<Option<RowText>> = Vec::with_capacity(changes.len());
        let mut i = 0;
        while i < changes.len() {
            let c = &changes[i];
            if c.op == ChangeOp::Delete {
                rows.push(None);
                i += 1;
                continue;
            }
            if reader.as_ref().is_none_or(|r| r.table != c.table) {
                reader = Some(Reader::new(conn, &c.table)?);
            }
            let reader = reader.as_mut().expect("set above");
            let mut end = i + 1;
            while c.op == ChangeOp::Insert
                && changes.get(end).is_some_and(|n| {
                    n.op == ChangeOp::Insert
                        && n.table == c.table
                        && Some(n.rowid) == changes[end - 1].rowid.checked_add(1)
                })
            {
                end += 1;
            }
            if end - i > 1 && reader.read_run(c.rowid, changes[end - 1].rowid, &mut rows)? {
                i = end;
                continue;
            }
            rows.push(reader.read(c.rowid)?);
            i += 1;
        }
        for (c, row) in changes.into_iter().zip(rows) {
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
    conn: &'c Connection,
    table: String,
    /// What the reads select: `*`, or the columns by name.
    select: String,
    /// One row by rowid.
    one: rusqlite::CachedStatement<'c>,
    /// The rows of a range of rowids, made when first needed.
    range: Option<rusqlite::CachedStatement<'c>>,
    /// Each column's name as JSON, with the `:` after it and, past the
    /// first, the `,` before it: written once per table, copied per row.
    keys: Vec<Vec<u8>>,
    /// The column that reads the rowid in place of a SeaTable row id.
    row_id_at: Option<usize>,
    /// The length of the last row's text: the next one is likely alike.
    hint: usize,
}

impl<'c> Reader<'c> {
    fn new(conn: &'c Connection, table: &str) -> Result<Reader<'c>> {
        let one = |select: &str| {
            conn.prepare_cached(&format!(
                "SELECT {select} FROM main.{} WHERE _rowid_ = ?1",
                quote(table)
            ))
            .map_err(map_sqlite_error)
        };
        let mut stmt = one("*")?;
        let names: Vec<String> = stmt.column_names().iter().map(|n| n.to_string()).collect();
        let mut keys = Vec::with_capacity(names.len());
        for (i, name) in names.iter().enumerate() {
            let mut key = if i == 0 { Vec::new() } else { vec![b','] };
            put(&mut key, name)?;
            key.push(b':');
            keys.push(key);
        }
        // A SeaTable table's `_id` is computed from its rowid by SQLite's
        // `printf` when read, a good part of reading a row back. In a table
        // laid out exactly as the SeaTable API makes them, the rowid is read
        // in its place and the same id made from it here.
        let mut select = "*".to_string();
        let mut row_id_at = None;
        if let Some(at) = names.iter().position(|n| n == "_id")
            && has_seatable_ids(conn, table)?
        {
            let columns: Vec<String> = names
                .iter()
                .enumerate()
                .map(|(i, n)| if i == at { quote("_rowid") } else { quote(n) })
                .collect();
            select = columns.join(", ");
            stmt = one(&select)?;
            row_id_at = Some(at);
        }
        Ok(Reader {
            conn,
            table: table.to_string(),
            select,
            one: stmt,
            range: None,
            keys,
            row_id_at,
            hint: 64,
        })
    }

    /// The row's values by column name, or `None` if it is gone.
    fn read(&mut self, rowid: i64) -> Result<Option<RowText>> {
        let mut rows = self.one.query([rowid]).map_err(map_sqlite_error)?;
        let Some(r) = rows.next().map_err(map_sqlite_error)? else { return Ok(None) };
        Ok(Some(row_text(&self.keys, self.row_id_at, &mut self.hint, r)?))
    }

    /// Appends to `out` the rows with rowids `first..=last`, in order, if
    /// every one of them is there; else appends nothing and says so (the
    /// caller reads them one by one and learns which are gone).
    fn read_run(&mut self, first: i64, last: i64, out: &mut Vec<Option<RowText>>) -> Result<bool> {
        if self.range.is_none() {
            let sql = format!(
                "SELECT {} FROM main.{} WHERE _rowid_ BETWEEN ?1 AND ?2 ORDER BY _rowid_",
                self.select,
                quote(&self.table)
            );
            self.range = Some(self.conn.prepare_cached(&sql).map_err(map_sqlite_error)?);
        }
        let stmt = self.range.as_mut().expect("set above");
        let want = usize::try_from(last - first + 1).unwrap_or(usize::MAX);
        let start = out.len();
        let mut rows = stmt.query([first, last]).map_err(map_sqlite_error)?;
        while let Some(r) = rows.next().map_err(map_sqlite_error)? {
            out.push(Some(row_text(&self.keys, self.row_id_at, &mut self.hint, r)?));
        }
        if out.len() - start == want {
            return Ok(true);
        }
        out.truncate(start);
        Ok(false)
    }
}

/// Whether `table` defines `_rowid` and `_id` word for word as the SeaTable
/// API does ([`seatable::ROWID_COLUMN`], [`seatable::row_id_column`]): then
/// `_rowid` is the rowid and `_id` is [`seatable::row_id`] of it.
fn has_seatable_ids(conn: &Connection, table: &str) -> Result<bool> {
    let sql: Option<String> = conn
        .prepare_cached("SELECT sql FROM main.sqlite_schema WHERE type = 'table' AND name = ?1")
        .and_then(|mut s| s.query_row([table], |r| r.get(0)).optional())
        .map_err(map_sqlite_error)?;
    let Some(defs) = sql.as_deref().and_then(column_definitions) else { return Ok(false) };
    let id = seatable::row_id_column();
    Ok(defs.contains(&seatable::ROWID_COLUMN) && defs.contains(&id.as_str()))
}

/// The definitions in a `CREATE TABLE` statement's parenthesised list
/// (columns and table constraints), split at its top-level commas and
/// trimmed; `None` if the text has no such list. Quoted names, string
/// literals and comments are skipped over whole, so a comma or parenthesis
/// inside one splits nothing.
fn column_definitions(sql: &str) -> Option<Vec<&str>> {
    let b = sql.as_bytes();
    let (mut i, mut depth, mut start) = (0, 0usize, 0);
    let mut out = Vec::new();
    // The index just past the first `close` at or after `from` (or the end).
    let past = |from: usize, close: &[u8]| {
        b[from..]
            .windows(close.len())
            .position(|w| w == close)
            .map_or(b.len(), |p| from + p + close.len())
    };
    while i < b.len() {
        match b[i] {
            q @ (b'\'' | b'"' | b'`') => i = past(i + 1, &[q]),
            b'[' => i = past(i + 1, b"]"),
            b'-' if b.get(i + 1) == Some(&b'-') => i = past(i + 2, b"\n"),
            b'/' if b.get(i + 1) == Some(&b'*') => i = past(i + 2, b"*/"),
            b'(' => {
                depth += 1;
                if depth == 1 {
                    start = i + 1;
                }
                i += 1;
            }
            b')' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    out.push(sql[start..i].trim());
                    return Some(out);
                }
                i += 1;
            }
            b',' if depth == 1 => {
                out.push(sql[start..i].trim());
                start = i + 1;
                i += 1;
            }
            _ => i += 1,
        }
    }
    None
}

/// The JSON text of a row read with `keys`' columns; the column at
/// `row_id_at` holds the rowid, written as the SeaTable row id made from
/// it.
fn row_text(
    keys: &[Vec<u8>],
    row_id_at: Option<usize>,
    hint: &mut usize,
    r: &rusqlite::Row<'_>,
) -> Result<RowText> {
    let mut out = Vec::with_capacity(*hint);
    out.push(b'{');
    for (i, key) in keys.iter().enumerate() {
        out.extend_from_slice(key);
        match r.get_ref(i).map_err(map_sqlite_error)? {
            ValueRef::Integer(rowid) if row_id_at == Some(i) => {
                out.push(b'"');
                out.extend_from_slice(&seatable::row_id_bytes(rowid));
                out.push(b'"');
            }
            v => put_value(&mut out, v)?,
        }
    }
    out.push(b'}');
    *hint = out.len();
    // UTF-8 throughout: keys and text values are written from `str`s.
    Ok(RowText::from_json(out))
}

/// Whether JSON escapes any byte of `text` (as serde_json does: control
/// characters, `"` and `\`; everything else goes out as it is).
fn needs_escape(text: &[u8]) -> bool {
    text.iter().fold(false, |any, &b| any | (b < 0x20) | (b == b'"') | (b == b'\\'))
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
            // Most text has nothing to escape: checked in one pass the
            // compiler can vectorize, then copied whole.
            Ok(_) if !needs_escape(t) => {
                out.reserve(t.len() + 2);
                out.push(b'"');
                out.extend_from_slice(t);
                out.push(b'"');
            }
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
            "CREATE TABLE t (i INTEGER, f REAL, s TEXT, b BLOB, n, bad TEXT, inf REAL,
                 plain TEXT, back TEXT, ctl TEXT, del TEXT);
             INSERT INTO t VALUES (-7, 2.5, 'a\"b\u{e9}', x'00ff', NULL, CAST(x'ff41' AS TEXT), 1e999,
                 'plain \u{e9}\u{1F600} text', 'a\\b', 'x' || char(1) || char(10) || char(31) || 'y',
                 char(127) || char(32));",
        )
        .expect("fill");
        let mut reader = Reader::new(&conn, "t").expect("reader");
        let text = reader.read(1).expect("read").expect("a row");
        let want = &as_sqlite_reads(&conn, "t")[0];
        let want_row: shoal_types::api::Row = serde_json::from_str(want).expect("JSON");
        assert_eq!(want_row.len(), 11);
        assert_eq!(text.to_row().expect("JSON"), want_row);
        assert_eq!(text.as_bytes(), want.as_bytes());
        assert_eq!(reader.read(2).expect("read"), None);
    }

    /// The events of `sql` run on `conn` as one captured statement, as
    /// (op, rowid, row text).
    fn captured(
        conn: &Connection,
        capture: &mut Capture,
        sql: &str,
    ) -> Vec<(ChangeOp, i64, Option<String>)> {
        capture.begin();
        conn.execute_batch(sql).expect("run");
        capture.finish_statement(conn, 1, None).expect("finish");
        capture.end();
        capture
            .take()
            .into_iter()
            .map(|e| {
                let row = e.row.map(|r| String::from_utf8(r.as_bytes().to_vec()).expect("UTF-8"));
                (e.op, e.rowid.expect("a row event"), row)
            })
            .collect()
    }

    #[test]
    fn a_multi_row_insert_is_read_in_one_pass_and_a_gap_falls_back() {
        let conn = Connection::open_in_memory().expect("open");
        conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY AUTOINCREMENT, v TEXT)")
            .expect("table");
        let mut capture = Capture::install(&conn);
        let row = |id: i64, v: &str| Some(format!(r#"{{"id":{id},"v":"{v}"}}"#));
        assert_eq!(
            captured(&conn, &mut capture, "INSERT INTO t (v) VALUES ('a'), ('b'), ('c')"),
            vec![
                (ChangeOp::Insert, 1, row(1, "a")),
                (ChangeOp::Insert, 2, row(2, "b")),
                (ChangeOp::Insert, 3, row(3, "c")),
            ]
        );
        // A trigger deletes one row of the run before the statement ends:
        // the others keep their values and the gone one has none.
        conn.execute_batch(
            "CREATE TRIGGER gone AFTER INSERT ON t WHEN NEW.v = 'y'
             BEGIN DELETE FROM t WHERE id = NEW.id; END",
        )
        .expect("trigger");
        assert_eq!(
            captured(&conn, &mut capture, "INSERT INTO t (v) VALUES ('x'), ('y'), ('z')"),
            vec![
                (ChangeOp::Insert, 4, row(4, "x")),
                (ChangeOp::Insert, 5, None),
                (ChangeOp::Delete, 5, None),
                (ChangeOp::Insert, 6, row(6, "z")),
            ]
        );
        // Rowids that are not consecutive are each read on their own.
        assert_eq!(
            captured(&conn, &mut capture, "INSERT INTO t (id, v) VALUES (10, 'p'), (8, 'q')"),
            vec![(ChangeOp::Insert, 10, row(10, "p")), (ChangeOp::Insert, 8, row(8, "q"))]
        );
    }

    /// Each row of `table` as `SELECT *` reads it (SQLite computing every
    /// generated column), as JSON text.
    fn as_sqlite_reads(conn: &Connection, table: &str) -> Vec<String> {
        let mut stmt = conn.prepare(&format!("SELECT * FROM {table}")).expect("prepare");
        let names: Vec<String> = stmt.column_names().iter().map(|n| n.to_string()).collect();
        let mut rows = stmt.query([]).expect("query");
        let mut out = Vec::new();
        while let Some(r) = rows.next().expect("step") {
            let mut row = shoal_types::api::Row::new();
            for (i, name) in names.iter().enumerate() {
                row.insert(name.clone(), crate::sql_to_json(r.get_ref(i).expect("value")));
            }
            out.push(serde_json::Value::Object(row).to_string());
        }
        out
    }

    #[test]
    fn a_seatable_row_id_is_made_from_the_rowid_as_sqlite_makes_it() {
        let conn = Connection::open_in_memory().expect("open");
        let (rowid, id) = (seatable::ROWID_COLUMN, seatable::row_id_column());
        conn.execute_batch(&format!(
            "CREATE TABLE st ({rowid}, {id}, \"a,b\" TEXT DEFAULT 'x)y', v TEXT);
             CREATE TABLE lookalike (_rowid TEXT, {id}, v TEXT);
             CREATE TABLE quoted (x TEXT DEFAULT '{rowid}, {}', _rowid, _id AS (_rowid || '!'));",
            id.replace('\'', "''")
        ))
        .expect("tables");
        assert!(has_seatable_ids(&conn, "st").expect("st"));
        assert!(!has_seatable_ids(&conn, "lookalike").expect("lookalike"));
        assert!(!has_seatable_ids(&conn, "quoted").expect("quoted"));
        conn.execute_batch("ALTER TABLE st ADD COLUMN w INTEGER").expect("alter");
        assert!(has_seatable_ids(&conn, "st").expect("st after a new column"));
        let mut capture = Capture::install(&conn);
        for (table, sql) in [
            ("st", "INSERT INTO st (_rowid, v) VALUES (-9, 'n'), (0, 'z'), (4294967291, 'p')"),
            ("st", "INSERT INTO st (v, w) VALUES ('a', 1), ('b', 2), ('c', 3)"),
            ("st", "INSERT INTO st (_rowid, v) VALUES (9223372036854775806, 'max')"),
            ("lookalike", "INSERT INTO lookalike (_rowid, v) VALUES ('12', 'x'), (NULL, 'y')"),
            ("quoted", "INSERT INTO quoted (_rowid) VALUES (5), ('t')"),
        ] {
            conn.execute_batch(&format!("DELETE FROM {table}")).expect("empty");
            let got: Vec<String> = captured(&conn, &mut capture, sql)
                .into_iter()
                .map(|(_, _, row)| row.expect("a row"))
                .collect();
            assert_eq!(got, as_sqlite_reads(&conn, table), "{sql}");
        }
    }

    #[test]
    fn create_table_lists_split_at_their_own_commas() {
        assert_eq!(
            column_definitions(
                "CREATE TABLE \"t(1\" (a INT DEFAULT (1, 2), \"b,\" TEXT -- x, y
                 , c DEFAULT 'p,q)', [d,e] /* f, g) */, CHECK (a > 0))"
            ),
            Some(vec![
                "a INT DEFAULT (1, 2)",
                "\"b,\" TEXT -- x, y",
                "c DEFAULT 'p,q)'",
                "[d,e] /* f, g) */",
                "CHECK (a > 0)"
            ])
        );
        assert_eq!(column_definitions("CREATE TABLE t AS SELECT 1"), None);
        assert_eq!(column_definitions("CREATE TABLE t (a, 'unclosed"), None);
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
