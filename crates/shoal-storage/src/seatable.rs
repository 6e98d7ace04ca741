//! The SeaTable data model inside a base.
//!
//! A SeaTable table is an ordinary table of the base, named like the
//! SeaTable table, with one SQL column per SeaTable column (named like it)
//! and five system columns in front: `_id` (the row id, 22 URL-safe
//! characters), `_ctime`, `_mtime`, `_creator` and `_last_modifier`. So the
//! same rows are readable and writable with Shoal's own API and SQL, and
//! their changes reach the change feed like any other.
//!
//! What SQL does not hold lives in Shoal's own tables of the base, which
//! user SQL cannot change: table ids and order (`_shoal_st_tables`), column
//! keys, names, types and settings (`_shoal_st_columns`), select options
//! (`_shoal_st_options`), and the base's API tokens, hashed
//! (`_shoal_api_tokens`, which user SQL cannot even read). The format of
//! these tables is the `seatable_format` row of `_shoal_meta`.
//!
//! Everything here is pure: it reads a connection or builds statements.
//! Ids and times are chosen by the caller (the leader, before the command
//! is logged), so every replica stores the same bytes.

use std::collections::HashSet;

use rusqlite::{Connection, OptionalExtension};
use serde_json::{Map, Value, json};
use shoal_types::api::{Params, Statement};
use shoal_types::{Error, Result};

use crate::map_sqlite_error;
use crate::rows::quote;
use crate::value::sql_to_json;

/// The format of the SeaTable catalog tables.
pub const FORMAT: i64 = 1;

/// The system columns every SeaTable table starts with.
pub const SYSTEM_COLUMNS: [&str; 5] = ["_id", "_ctime", "_mtime", "_creator", "_last_modifier"];

/// The largest page of rows one list returns.
pub const MAX_LIMIT: u64 = 1000;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS _shoal_st_tables (
    id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE COLLATE NOCASE,
    position INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS _shoal_st_columns (
    table_id TEXT NOT NULL, key TEXT NOT NULL, name TEXT NOT NULL COLLATE NOCASE,
    type TEXT NOT NULL, data TEXT, position INTEGER NOT NULL,
    PRIMARY KEY (table_id, key), UNIQUE (table_id, name)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS _shoal_st_options (
    table_id TEXT NOT NULL, column_key TEXT NOT NULL, id TEXT NOT NULL, name TEXT NOT NULL,
    color TEXT NOT NULL, position INTEGER NOT NULL,
    PRIMARY KEY (table_id, column_key, id), UNIQUE (table_id, column_key, name)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS _shoal_api_tokens (
    hash TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, permission TEXT NOT NULL,
    created_at TEXT NOT NULL) WITHOUT ROWID;
INSERT OR IGNORE INTO _shoal_meta (key, value) VALUES ('seatable_format', 1);
";

fn stmt(sql: impl Into<String>, params: Vec<Value>) -> Statement {
    Statement { sql: sql.into(), params: Params::Positional(params) }
}

/// The statements that make the SeaTable catalog if it is missing; they
/// start every SeaTable write (each is a no-op when the table exists).
pub fn ensure_schema() -> Vec<Statement> {
    SCHEMA.split(';').map(str::trim).filter(|s| !s.is_empty()).map(|s| stmt(s, vec![])).collect()
}

/// The SeaTable column types Shoal stores.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Text,
    LongText,
    Number,
    Checkbox,
    Date,
    SingleSelect,
    MultipleSelect,
    Email,
    Url,
}

impl Kind {
    /// Every kind, in the order the docs list them.
    pub const ALL: [Kind; 9] = [
        Kind::Text,
        Kind::LongText,
        Kind::Number,
        Kind::Checkbox,
        Kind::Date,
        Kind::SingleSelect,
        Kind::MultipleSelect,
        Kind::Email,
        Kind::Url,
    ];

    /// SeaTable's name of the type.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Text => "text",
            Kind::LongText => "long-text",
            Kind::Number => "number",
            Kind::Checkbox => "checkbox",
            Kind::Date => "date",
            Kind::SingleSelect => "single-select",
            Kind::MultipleSelect => "multiple-select",
            Kind::Email => "email",
            Kind::Url => "url",
        }
    }

    /// The kind SeaTable calls `name`; a clear error for any other.
    pub fn parse(name: &str) -> Result<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name).ok_or_else(|| {
            Error::InvalidInput(format!(
                "column type {name:?} is not supported; supported: {}",
                Kind::ALL.map(Kind::name).join(", ")
            ))
        })
    }

    /// The SQL type the column is declared with.
    fn sql_type(self) -> &'static str {
        match self {
            Kind::Number => "NUMERIC",
            Kind::Checkbox => "BOOLEAN",
            _ => "TEXT",
        }
    }

    fn selects(self) -> bool {
        matches!(self, Kind::SingleSelect | Kind::MultipleSelect)
    }
}

/// One option of a select column.
#[derive(Clone, Debug, PartialEq)]
pub struct SelectOption {
    pub id: String,
    pub name: String,
    pub color: String,
}

/// One SeaTable column.
#[derive(Clone, Debug, PartialEq)]
pub struct Column {
    pub key: String,
    pub name: String,
    pub kind: Kind,
    /// The column's settings other than its options (SeaTable's `data`).
    pub data: Map<String, Value>,
    pub options: Vec<SelectOption>,
}

impl Column {
    /// The column as SeaTable describes it.
    pub fn describe(&self) -> Value {
        let mut data = self.data.clone();
        if self.kind.selects() {
            let options: Vec<Value> = self
                .options
                .iter()
                .map(|o| json!({"id": o.id, "name": o.name, "color": o.color, "textColor": "#212529"}))
                .collect();
            data.insert("options".into(), Value::Array(options));
        }
        json!({
            "key": self.key,
            "type": self.kind.name(),
            "name": self.name,
            "editable": true,
            "width": 200,
            "resizable": true,
            "draggable": true,
            "data": if data.is_empty() { Value::Null } else { Value::Object(data) },
            "permission_type": "",
            "permitted_users": [],
        })
    }

    fn option_by_name(&self, name: &str) -> Option<&SelectOption> {
        self.options.iter().find(|o| o.name == name)
    }
}

/// One SeaTable table.
#[derive(Clone, Debug, PartialEq)]
pub struct Table {
    pub id: String,
    pub name: String,
    pub columns: Vec<Column>,
}

impl Table {
    /// The table as SeaTable's metadata describes it.
    pub fn describe(&self) -> Value {
        json!({
            "_id": self.id,
            "name": self.name,
            "is_header_locked": false,
            "summary_configs": {},
            "columns": self.columns.iter().map(Column::describe).collect::<Vec<_>>(),
            "views": [default_view(self)],
        })
    }

    /// The column named (or keyed) `name`.
    pub fn column(&self, name: &str) -> Result<&Column> {
        self.columns
            .iter()
            .find(|c| c.name.eq_ignore_ascii_case(name))
            .or_else(|| self.columns.iter().find(|c| c.key == name))
            .ok_or_else(|| Error::NotFound(format!("table {:?} has no column {name:?}", self.name)))
    }
}

/// The one view Shoal keeps per table: every row, every column.
pub const DEFAULT_VIEW: &str = "Default View";

fn default_view(t: &Table) -> Value {
    json!({
        "_id": "0000",
        "name": DEFAULT_VIEW,
        "type": "table",
        "is_locked": false,
        "filters": [],
        "filter_conjunction": "And",
        "sorts": [],
        "groupbys": [],
        "hidden_columns": [],
        "rows": [],
        "formula_rows": {},
        "link_rows": {},
        "summaries": {},
        "colorbys": {},
        "column_order": t.columns.iter().map(|c| c.key.clone()).collect::<Vec<_>>(),
    })
}

/// The SeaTable catalog of a base.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Meta {
    pub tables: Vec<Table>,
}

impl Meta {
    /// The table named `name`, or with id `name`.
    pub fn table(&self, name: &str) -> Result<&Table> {
        self.tables
            .iter()
            .find(|t| t.name.eq_ignore_ascii_case(name))
            .or_else(|| self.tables.iter().find(|t| t.id == name))
            .ok_or_else(|| Error::NotFound(format!("no table named {name:?}")))
    }

    /// SeaTable's metadata document.
    pub fn describe(&self) -> Value {
        json!({
            "tables": self.tables.iter().map(Table::describe).collect::<Vec<_>>(),
            "version": 1,
            "format_version": FORMAT,
            "settings": {},
        })
    }

    /// Every table and column key in use.
    fn ids(&self) -> HashSet<String> {
        self.tables.iter().map(|t| t.id.clone()).collect()
    }
}

/// Whether the SeaTable catalog exists in this base.
fn has_catalog(conn: &Connection) -> Result<bool> {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_schema WHERE name = '_shoal_st_tables')",
        [],
        |r| r.get(0),
    )
    .map_err(map_sqlite_error)
}

/// Checks the catalog's format: an unknown one is refused, never misread.
fn check_format(conn: &Connection) -> Result<()> {
    let format: Option<i64> = conn
        .query_row("SELECT value FROM _shoal_meta WHERE key = 'seatable_format'", [], |r| r.get(0))
        .optional()
        .map_err(map_sqlite_error)?;
    match format {
        Some(FORMAT) | None => Ok(()),
        Some(f) => Err(Error::InvalidData(format!(
            "this base's SeaTable catalog has format {f}; this version reads format {FORMAT}"
        ))),
    }
}

/// Reads the SeaTable catalog of a base (empty if it has none).
pub fn load(conn: &Connection) -> Result<Meta> {
    if !has_catalog(conn)? {
        return Ok(Meta::default());
    }
    check_format(conn)?;
    let q = |e| map_sqlite_error(e);
    let mut tables: Vec<Table> = conn
        .prepare_cached("SELECT id, name FROM _shoal_st_tables ORDER BY position, id")
        .map_err(q)?
        .query_map([], |r| Ok(Table { id: r.get(0)?, name: r.get(1)?, columns: vec![] }))
        .map_err(q)?
        .collect::<rusqlite::Result<_>>()
        .map_err(q)?;
    let mut columns = conn
        .prepare_cached(
            "SELECT table_id, key, name, type, data FROM _shoal_st_columns ORDER BY table_id, position, key",
        )
        .map_err(q)?;
    let rows = columns
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, Option<String>>(4)?,
            ))
        })
        .map_err(q)?;
    for row in rows {
        let (table_id, key, name, kind, data) = row.map_err(q)?;
        let kind =
            Kind::parse(&kind).map_err(|e| Error::InvalidData(format!("SeaTable catalog: {e}")))?;
        let data = match data {
            Some(d) => serde_json::from_str::<Map<String, Value>>(&d)
                .map_err(|e| Error::InvalidData(format!("SeaTable column settings: {e}")))?,
            None => Map::new(),
        };
        if let Some(t) = tables.iter_mut().find(|t| t.id == table_id) {
            t.columns.push(Column { key, name, kind, data, options: vec![] });
        }
    }
    let mut options = conn
        .prepare_cached(
            "SELECT table_id, column_key, id, name, color FROM _shoal_st_options
             ORDER BY table_id, column_key, position, id",
        )
        .map_err(q)?;
    let rows = options
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                SelectOption { id: r.get(2)?, name: r.get(3)?, color: r.get(4)? },
            ))
        })
        .map_err(q)?;
    for row in rows {
        let (table_id, key, option) = row.map_err(q)?;
        if let Some(c) = tables
            .iter_mut()
            .find(|t| t.id == table_id)
            .and_then(|t| t.columns.iter_mut().find(|c| c.key == key))
        {
            c.options.push(option);
        }
    }
    // What SQL changed behind the catalog's back (a table dropped or a
    // column removed through Shoal's own API) is left out, rather than read
    // as a column that is not there.
    let mut present = std::collections::HashMap::<String, HashSet<String>>::new();
    let mut s = conn
        .prepare_cached(
            "SELECT m.name, p.name FROM sqlite_schema m JOIN pragma_table_info(m.name) p
             WHERE m.type = 'table' AND m.name IN (SELECT name FROM _shoal_st_tables)",
        )
        .map_err(q)?;
    let rows =
        s.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))).map_err(q)?;
    for row in rows {
        let (t, c) = row.map_err(q)?;
        present.entry(t.to_lowercase()).or_default().insert(c.to_lowercase());
    }
    tables.retain_mut(|t| match present.get(&t.name.to_lowercase()) {
        Some(columns) => {
            t.columns.retain(|c| columns.contains(&c.name.to_lowercase()));
            true
        }
        None => false,
    });
    Ok(Meta { tables })
}

/// An API token as stored (its hash stays inside).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRecord {
    pub name: String,
    pub permission: String,
    pub created_at: String,
}

fn token_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TokenRecord> {
    Ok(TokenRecord { name: r.get(0)?, permission: r.get(1)?, created_at: r.get(2)? })
}

/// The token whose hash is `hash`, if the base has one.
pub fn find_token(conn: &Connection, hash: &str) -> Result<Option<TokenRecord>> {
    if !has_catalog(conn)? {
        return Ok(None);
    }
    conn.prepare_cached(
        "SELECT name, permission, created_at FROM _shoal_api_tokens WHERE hash = ?1",
    )
    .and_then(|mut s| s.query_row([hash], token_row).optional())
    .map_err(map_sqlite_error)
}

/// The catalog, for a caller whose API token (by hash) the base still
/// has; `None` once the token is revoked.
pub fn load_for_token(conn: &Connection, hash: &str) -> Result<Option<Meta>> {
    find_token(conn, hash)?.map(|_| load(conn)).transpose()
}

/// A base's SeaTable catalog and the hashes of its API tokens: what every
/// call of the SeaTable API checks first. The store keeps the last one read
/// of each base while nothing can have changed it (`Store::seatable`).
#[derive(Debug, Default)]
pub struct Loaded {
    /// The catalog.
    pub meta: Meta,
    /// The hashes of the base's API tokens.
    tokens: HashSet<String>,
}

impl Loaded {
    /// Whether the base has the API token whose hash is `hash`.
    pub fn has_token(&self, hash: &str) -> bool {
        self.tokens.contains(hash)
    }
}

/// Reads a base's catalog and API token hashes (empty if it has none).
pub fn load_all(conn: &Connection) -> Result<Loaded> {
    if !has_catalog(conn)? {
        return Ok(Loaded::default());
    }
    let meta = load(conn)?;
    let mut s =
        conn.prepare_cached("SELECT hash FROM _shoal_api_tokens").map_err(map_sqlite_error)?;
    let tokens = s
        .query_map([], |r| r.get(0))
        .map_err(map_sqlite_error)?
        .collect::<rusqlite::Result<_>>()
        .map_err(map_sqlite_error)?;
    Ok(Loaded { meta, tokens })
}

/// Every API token of the base, by name.
pub fn list_tokens(conn: &Connection) -> Result<Vec<TokenRecord>> {
    if !has_catalog(conn)? {
        return Ok(vec![]);
    }
    let mut s = conn
        .prepare_cached("SELECT name, permission, created_at FROM _shoal_api_tokens ORDER BY name")
        .map_err(map_sqlite_error)?;
    let rows = s.query_map([], token_row).map_err(map_sqlite_error)?;
    rows.collect::<rusqlite::Result<_>>().map_err(map_sqlite_error)
}

/// Records a new token. A name in use is a conflict (the unique index
/// refuses it when the command applies).
pub fn add_token(hash: &str, record: &TokenRecord) -> Vec<Statement> {
    let mut out = ensure_schema();
    out.push(stmt(
        "INSERT INTO _shoal_api_tokens (hash, name, permission, created_at) VALUES (?, ?, ?, ?)",
        vec![
            hash.into(),
            record.name.clone().into(),
            record.permission.clone().into(),
            record.created_at.clone().into(),
        ],
    ));
    out
}

/// Removes the token named `name`.
pub fn revoke_token(name: &str) -> Vec<Statement> {
    let mut out = ensure_schema();
    out.push(stmt("DELETE FROM _shoal_api_tokens WHERE name = ?", vec![name.into()]));
    out
}

/// A column to make.
#[derive(Clone, Debug)]
pub struct NewColumn {
    pub name: String,
    pub kind: Kind,
    pub data: Map<String, Value>,
    /// Options given with the column (names and colours).
    pub options: Vec<(String, String)>,
}

fn check_name(what: &str, name: &str) -> Result<()> {
    if name.trim().is_empty() {
        return Err(Error::InvalidInput(format!("the {what} name is empty")));
    }
    if name.len() > 256 {
        return Err(Error::InvalidInput(format!("a {what} name may be at most 256 bytes")));
    }
    let lower = name.to_ascii_lowercase();
    if lower.starts_with("_shoal_") || lower.starts_with("sqlite_") {
        return Err(Error::InvalidInput(format!(
            "{what} names starting with _shoal_ or sqlite_ are reserved"
        )));
    }
    if what == "column"
        && (SYSTEM_COLUMNS.iter().any(|c| c.eq_ignore_ascii_case(name))
            || ["_rowid", "rowid", "oid", "_rowid_"].iter().any(|r| r.eq_ignore_ascii_case(name)))
    {
        return Err(Error::InvalidInput(format!("{name:?} is a system column")));
    }
    Ok(())
}

/// Ids chosen by the caller for new tables, columns and options.
pub trait Ids {
    /// A fresh id of four letters and digits, not in `taken`.
    fn short(&mut self, taken: &HashSet<String>) -> String;
}

/// The statements that make a table with `columns` (the first is the
/// table's key column in SeaTable's sense; at least one is needed).
pub fn create_table(
    meta: &Meta,
    name: &str,
    columns: &[NewColumn],
    ids: &mut dyn Ids,
) -> Result<(String, Vec<Statement>)> {
    check_name("table", name)?;
    if meta.tables.iter().any(|t| t.name.eq_ignore_ascii_case(name)) {
        return Err(Error::Conflict(format!("a table named {name:?} exists")));
    }
    let mut seen = HashSet::new();
    for c in columns {
        check_name("column", &c.name)?;
        if !seen.insert(c.name.to_lowercase()) {
            return Err(Error::InvalidInput(format!("column {:?} is given twice", c.name)));
        }
    }
    let id = if meta.tables.is_empty() { "0000".to_string() } else { ids.short(&meta.ids()) };
    let position = meta.tables.len() as i64;
    let mut out = ensure_schema();
    let mut defs: Vec<String> = vec![
        // AUTOINCREMENT: a deleted row's rowid, and so its id, is never
        // given to another row.
        ROWID_COLUMN.into(),
        // Computed from the rowid when read, however the row was inserted.
        row_id_column(),
        "_ctime TEXT".into(),
        "_mtime TEXT".into(),
        "_creator TEXT".into(),
        "_last_modifier TEXT".into(),
    ];
    defs.extend(columns.iter().map(|c| format!("{} {}", quote(&c.name), c.kind.sql_type())));
    out.push(stmt(format!("CREATE TABLE {} ({})", quote(name), defs.join(", ")), vec![]));
    // A table of that name dropped with plain SQL left its catalog entries.
    for sql in [
        "DELETE FROM _shoal_st_options WHERE table_id IN (SELECT id FROM _shoal_st_tables WHERE name = ?)",
        "DELETE FROM _shoal_st_columns WHERE table_id IN (SELECT id FROM _shoal_st_tables WHERE name = ?)",
        "DELETE FROM _shoal_st_tables WHERE name = ?",
    ] {
        out.push(stmt(sql, vec![name.into()]));
    }
    out.push(stmt(
        "INSERT INTO _shoal_st_tables (id, name, position) VALUES (?, ?, ?)",
        vec![id.clone().into(), name.into(), position.into()],
    ));
    let table = Table { id: id.clone(), name: name.into(), columns: vec![] };
    let mut keys = HashSet::new();
    for (i, c) in columns.iter().enumerate() {
        let key = if i == 0 { "0000".to_string() } else { ids.short(&keys) };
        keys.insert(key.clone());
        out.extend(column_rows(&table, &key, c, i as i64, ids));
    }
    Ok((id, out))
}

fn column_rows(
    table: &Table,
    key: &str,
    c: &NewColumn,
    position: i64,
    ids: &mut dyn Ids,
) -> Vec<Statement> {
    let data = if c.data.is_empty() {
        Value::Null
    } else {
        Value::String(Value::Object(c.data.clone()).to_string())
    };
    let mut out = vec![stmt(
        "INSERT INTO _shoal_st_columns (table_id, key, name, type, data, position) VALUES (?, ?, ?, ?, ?, ?)",
        vec![
            table.id.clone().into(),
            key.into(),
            c.name.clone().into(),
            c.kind.name().into(),
            data,
            position.into(),
        ],
    )];
    let mut taken = HashSet::new();
    for (i, (name, color)) in c.options.iter().enumerate() {
        let id = ids.short(&taken);
        taken.insert(id.clone());
        out.push(stmt(
            "INSERT OR IGNORE INTO _shoal_st_options (table_id, column_key, id, name, color, position)
             VALUES (?, ?, ?, ?, ?, ?)",
            vec![
                table.id.clone().into(),
                key.into(),
                id.into(),
                name.clone().into(),
                color.clone().into(),
                (i as i64).into(),
            ],
        ));
    }
    out
}

/// Whether the base has a table or view named `name` (SeaTable's or not).
pub fn name_taken(conn: &Connection, name: &str) -> Result<bool> {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_schema WHERE type IN ('table', 'view') AND name = ?1 COLLATE NOCASE)",
        [name],
        |r| r.get(0),
    )
    .map_err(map_sqlite_error)
}

/// The statements that drop a table and its catalog entries.
pub fn drop_table(table: &Table) -> Vec<Statement> {
    let mut out = ensure_schema();
    out.push(stmt(format!("DROP TABLE {}", quote(&table.name)), vec![]));
    for t in ["_shoal_st_options", "_shoal_st_columns"] {
        out.push(stmt(
            format!("DELETE FROM {t} WHERE table_id = ?"),
            vec![table.id.clone().into()],
        ));
    }
    out.push(stmt("DELETE FROM _shoal_st_tables WHERE id = ?", vec![table.id.clone().into()]));
    out
}

/// The statements that rename a table (its id, columns and rows stay).
pub fn rename_table(meta: &Meta, table: &Table, new_name: &str) -> Result<Vec<Statement>> {
    check_name("table", new_name)?;
    if meta.tables.iter().any(|t| t.id != table.id && t.name.eq_ignore_ascii_case(new_name)) {
        return Err(Error::Conflict(format!("a table named {new_name:?} exists")));
    }
    let mut out = ensure_schema();
    if table.name != new_name {
        out.push(stmt(
            format!("ALTER TABLE {} RENAME TO {}", quote(&table.name), quote(new_name)),
            vec![],
        ));
    }
    out.push(stmt(
        "UPDATE _shoal_st_tables SET name = ? WHERE id = ?",
        vec![new_name.into(), table.id.clone().into()],
    ));
    Ok(out)
}

/// The statements that rename a column (its key, type and values stay).
pub fn rename_column(table: &Table, column: &Column, new_name: &str) -> Result<Vec<Statement>> {
    check_name("column", new_name)?;
    if table.columns.iter().any(|c| c.key != column.key && c.name.eq_ignore_ascii_case(new_name)) {
        return Err(Error::Conflict(format!(
            "table {:?} has a column named {new_name:?}",
            table.name
        )));
    }
    let mut out = ensure_schema();
    if column.name != new_name {
        out.push(stmt(
            format!(
                "ALTER TABLE {} RENAME COLUMN {} TO {}",
                quote(&table.name),
                quote(&column.name),
                quote(new_name)
            ),
            vec![],
        ));
    }
    out.push(stmt(
        "UPDATE _shoal_st_columns SET name = ? WHERE table_id = ? AND key = ?",
        vec![new_name.into(), table.id.clone().into(), column.key.clone().into()],
    ));
    Ok(out)
}

/// The statements that delete a column with its values and options. The
/// first column (the table's key column in SeaTable's sense) stays, as in
/// SeaTable.
pub fn delete_column(table: &Table, column: &Column) -> Result<Vec<Statement>> {
    if table.columns.first().is_some_and(|c| c.key == column.key) {
        return Err(Error::InvalidInput(format!(
            "column {:?} is the first column of table {:?}, which cannot be deleted",
            column.name, table.name
        )));
    }
    let mut out = ensure_schema();
    out.push(stmt(
        format!("ALTER TABLE {} DROP COLUMN {}", quote(&table.name), quote(&column.name)),
        vec![],
    ));
    for t in [
        "_shoal_st_options WHERE table_id = ? AND column_key = ?",
        "_shoal_st_columns WHERE table_id = ? AND key = ?",
    ] {
        out.push(stmt(
            format!("DELETE FROM {t}"),
            vec![table.id.clone().into(), column.key.clone().into()],
        ));
    }
    Ok(out)
}

/// The statements that add a column at the end of a table; its key too.
pub fn add_column(
    table: &Table,
    c: &NewColumn,
    ids: &mut dyn Ids,
) -> Result<(String, Vec<Statement>)> {
    check_name("column", &c.name)?;
    if table.columns.iter().any(|x| x.name.eq_ignore_ascii_case(&c.name)) {
        return Err(Error::Conflict(format!(
            "table {:?} has a column named {:?}",
            table.name, c.name
        )));
    }
    let taken: HashSet<String> = table.columns.iter().map(|c| c.key.clone()).collect();
    let key = ids.short(&taken);
    let mut out = ensure_schema();
    out.push(stmt(
        format!(
            "ALTER TABLE {} ADD COLUMN {} {}",
            quote(&table.name),
            quote(&c.name),
            c.kind.sql_type()
        ),
        vec![],
    ));
    let position = table.columns.len() as i64;
    out.extend(column_rows(table, &key, c, position, ids));
    Ok((key, out))
}

/// Who writes, and when: stamped on the rows a write touches.
#[derive(Clone, Debug)]
pub struct Stamp {
    /// ISO 8601, UTC, milliseconds.
    pub time: String,
    /// SeaTable's user name for the writer.
    pub user: String,
}

/// A cell value as given by a client, checked against its column and
/// turned into what the SQL column stores. New select options it names
/// are added to `new_options`.
fn cell(
    table: &Table,
    column: &Column,
    value: &Value,
    new_options: &mut Vec<(String, String)>,
) -> Result<Value> {
    let wrong = |what: &str| {
        Error::InvalidInput(format!(
            "column {:?} of table {:?} is {} and takes {what}, not {value}",
            column.name,
            table.name,
            column.kind.name()
        ))
    };
    if value.is_null() {
        return Ok(Value::Null);
    }
    Ok(match column.kind {
        Kind::Text | Kind::LongText | Kind::Email | Kind::Url => match value {
            Value::String(_) => value.clone(),
            Value::Number(n) => Value::String(n.to_string()),
            _ => return Err(wrong("a string")),
        },
        Kind::Number => match value {
            Value::Number(_) => value.clone(),
            Value::String(s) if s.trim().is_empty() => Value::Null,
            Value::String(s) => {
                let t = s.trim();
                if let Ok(i) = t.parse::<i64>() {
                    Value::from(i)
                } else {
                    t.parse::<f64>()
                        .ok()
                        .filter(|f| f.is_finite())
                        .map(Value::from)
                        .ok_or_else(|| wrong("a number"))?
                }
            }
            _ => return Err(wrong("a number")),
        },
        Kind::Checkbox => match value {
            Value::Bool(b) => Value::from(i64::from(*b)),
            _ => return Err(wrong("true or false")),
        },
        Kind::Date => match value {
            Value::String(s) if valid_date(s) => value.clone(),
            _ => return Err(wrong("a date such as \"2024-05-01\" or \"2024-05-01 13:30\"")),
        },
        Kind::SingleSelect => match value {
            // An empty option clears the cell.
            Value::String(s) if s.is_empty() => Value::Null,
            Value::String(s) => Value::String(select(column, s, new_options)),
            _ => return Err(wrong("an option name")),
        },
        Kind::MultipleSelect => match value {
            Value::Array(items) if items.is_empty() => Value::Null,
            Value::Array(items) => {
                let mut names = Vec::with_capacity(items.len());
                for item in items {
                    let Value::String(s) = item else {
                        return Err(wrong("a list of option names"));
                    };
                    if s.is_empty() {
                        return Err(wrong("a list of non-empty option names"));
                    }
                    let name = select(column, s, new_options);
                    if !names.contains(&name) {
                        names.push(name);
                    }
                }
                Value::String(Value::from(names).to_string())
            }
            _ => return Err(wrong("a list of option names")),
        },
    })
}

/// The option name a select value stands for: an existing option by name,
/// else by id, else a new option (made on first use).
fn select(column: &Column, s: &str, new_options: &mut Vec<(String, String)>) -> String {
    if column.option_by_name(s).is_some() {
        return s.to_string();
    }
    if let Some(o) = column.options.iter().find(|o| o.id == s) {
        return o.name.clone();
    }
    if !new_options.iter().any(|(k, n)| k == &column.key && n == s) {
        new_options.push((column.key.clone(), s.to_string()));
    }
    s.to_string()
}

/// `YYYY-MM-DD`, optionally followed by a time (` HH:MM`, `THH:MM:SS...`),
/// naming a day and time that exist.
fn valid_date(s: &str) -> bool {
    let b = s.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    let num =
        |r: std::ops::Range<usize>| s.get(r).and_then(|d| d.parse::<u32>().ok()).unwrap_or(99);
    if !(digits(0..4)
        && b.get(4) == Some(&b'-')
        && digits(5..7)
        && b.get(7) == Some(&b'-')
        && digits(8..10))
    {
        return false;
    }
    let (y, m, d) = (num(0..4), num(5..7), num(8..10));
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    if d == 0 || d > days {
        return false;
    }
    match b.get(10) {
        None => true,
        Some(b' ' | b'T') => {
            digits(11..13)
                && b.get(13) == Some(&b':')
                && digits(14..16)
                && num(11..13) < 24
                && num(14..16) < 60
                && match b.get(16) {
                    None => true,
                    Some(b':') => digits(17..19) && num(17..19) < 60,
                    Some(b'.' | b'Z' | b'+' | b'-') => true,
                    _ => false,
                }
        }
        _ => false,
    }
}

const COLORS: [&str; 8] =
    ["#FFFCB5", "#FFEAB6", "#FFD9C8", "#DCFFFE", "#CCE8FF", "#E6E6FF", "#F8D6FF", "#D6F5E9"];

fn option_statements(
    table: &Table,
    new_options: &[(String, String)],
    ids: &mut dyn Ids,
) -> Vec<Statement> {
    let mut taken: HashSet<String> =
        table.columns.iter().flat_map(|c| c.options.iter().map(|o| o.id.clone())).collect();
    new_options
        .iter()
        .map(|(key, name)| {
            let id = ids.short(&taken);
            taken.insert(id.clone());
            let n = table.columns.iter().find(|c| &c.key == key).map_or(0, |c| c.options.len());
            stmt(
                "INSERT OR IGNORE INTO _shoal_st_options (table_id, column_key, id, name, color, position)
                 VALUES (?, ?, ?, ?, ?, (SELECT count(*) FROM _shoal_st_options WHERE table_id = ? AND column_key = ?))",
                vec![
                    table.id.clone().into(),
                    key.clone().into(),
                    id.into(),
                    name.clone().into(),
                    COLORS[n % COLORS.len()].into(),
                    table.id.clone().into(),
                    key.clone().into(),
                ],
            )
        })
        .collect()
}

/// The values of one row as (column name, stored value), checked.
fn values(
    table: &Table,
    row: &Map<String, Value>,
    new_options: &mut Vec<(String, String)>,
) -> Result<Vec<(String, Value)>> {
    let mut out: Vec<(String, Value)> = Vec::with_capacity(row.len());
    for (k, v) in row {
        let column = match table.column(k) {
            Ok(c) => c,
            // Read-only fields (`_id`, `_mtime`, ...) a client may send back
            // as it got them.
            Err(_) if k.starts_with('_') => continue,
            Err(e) => return Err(Error::InvalidInput(e.to_string())),
        };
        if out.iter().any(|(n, _)| *n == column.name) {
            return Err(Error::InvalidInput(format!(
                "column {:?} is given twice in one row (by name and by key, or in two spellings)",
                column.name
            )));
        }
        out.push((column.name.clone(), cell(table, column, v, new_options)?));
    }
    Ok(out)
}

/// The SQL that makes a row's id from its rowid, with SQLite's own
/// functions only (a backup opens anywhere): the generated `_id` column of
/// every SeaTable table. [`row_id`] computes the same in Rust.
pub const ROW_ID_SQL: &str =
    "printf('%06X%016X', abs(_rowid % 4294967291) * 40503 % 16777216, _rowid)";

/// How a SeaTable table defines its `_rowid` column (the rowid).
pub const ROWID_COLUMN: &str = "_rowid INTEGER PRIMARY KEY AUTOINCREMENT";

/// How a SeaTable table defines its `_id` column.
pub fn row_id_column() -> String {
    format!("_id TEXT GENERATED ALWAYS AS ({ROW_ID_SQL}) VIRTUAL")
}

/// A row's id: 22 characters (hex digits) made from its rowid, as
/// [`ROW_ID_SQL`] makes it: six of a scramble of the rowid, so neighbouring
/// rows' ids do not look alike, then the rowid itself. The same on every
/// replica, stored nowhere (the column is computed when read), and known
/// for a deleted row, whose change event carries only the rowid.
pub fn row_id(rowid: i64) -> String {
    row_id_bytes(rowid).iter().copied().map(char::from).collect()
}

/// [`row_id`] as its 22 ASCII bytes.
pub fn row_id_bytes(rowid: i64) -> [u8; 22] {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    // Below 2^24: six hex digits.
    let scramble = ((rowid % 4_294_967_291).abs() * 40_503 % 16_777_216) as u64;
    let rowid = rowid as u64;
    let mut out = [0u8; 22];
    for (i, b) in out[..6].iter_mut().enumerate() {
        *b = HEX[((scramble >> (4 * (5 - i))) & 0xF) as usize];
    }
    for (i, b) in out[6..].iter_mut().enumerate() {
        *b = HEX[((rowid >> (4 * (15 - i))) & 0xF) as usize];
    }
    out
}

/// The rowid a row id was made from ([`row_id`]), if it is one.
pub fn parse_row_id(id: &str) -> Option<i64> {
    let rowid = u64::from_str_radix(id.get(6..)?, 16).ok()? as i64;
    (id.len() == 22 && row_id(rowid) == id).then_some(rowid)
}

fn rowid_of(id: &str) -> Result<i64> {
    parse_row_id(id).ok_or_else(|| Error::NotFound(format!("no row {id:?}")))
}

/// The most values one insert statement binds (SQLite allows 32766).
const MAX_VALUES: usize = 30_000;

/// The statements that append `rows`, and how many rows each of the last
/// statements inserts (the inserts come last, in the rows' order). Rows
/// that name the same columns one after another go in one multi-row
/// insert; its rows get consecutive rowids, the last one its
/// `last_insert_rowid`, and their ids follow ([`row_id`]).
pub fn append_rows(
    table: &Table,
    rows: &[Map<String, Value>],
    stamp: &Stamp,
    ids: &mut dyn Ids,
) -> Result<(Vec<Statement>, Vec<usize>)> {
    if rows.is_empty() {
        return Err(Error::InvalidInput("no rows given".into()));
    }
    let mut new_options = Vec::new();
    let checked: Vec<Vec<(String, Value)>> =
        rows.iter().map(|row| values(table, row, &mut new_options)).collect::<Result<_>>()?;
    let t = quote(&table.name);
    let mut inserts = Vec::new();
    let mut sizes = Vec::new();
    let mut start = 0;
    while start < checked.len() {
        let names: Vec<&str> = checked[start].iter().map(|(n, _)| n.as_str()).collect();
        let per_row = names.len().max(1);
        let mut end = start + 1;
        while end < checked.len()
            && (end - start + 1) * per_row <= MAX_VALUES
            && checked[end].iter().map(|(n, _)| n.as_str()).eq(names.iter().copied())
        {
            end += 1;
        }
        // The writer and the time are bound once (?1, ?2) for every row.
        let tuple = format!("(?1, ?1, ?2, ?2{})", ", ?".repeat(names.len()));
        let mut columns: Vec<String> = SYSTEM_COLUMNS[1..].iter().map(|c| c.to_string()).collect();
        columns.extend(names.iter().map(|n| quote(n)));
        let mut params: Vec<Value> = vec![stamp.time.clone().into(), stamp.user.clone().into()];
        for row in &checked[start..end] {
            params.extend(row.iter().map(|(_, v)| v.clone()));
        }
        inserts.push(stmt(
            format!(
                "INSERT INTO {t} ({}) VALUES {}",
                columns.join(", "),
                vec![tuple.as_str(); end - start].join(", ")
            ),
            params,
        ));
        sizes.push(end - start);
        start = end;
    }
    // The table is in the catalog, so the catalog exists.
    let mut out = option_statements(table, &new_options, ids);
    out.extend(inserts);
    Ok((out, sizes))
}

/// A row as [`read_rows`] would give it back once appended with `stamp`,
/// keyed by column name, without its `_id` (known after the write).
pub fn appended_row(
    table: &Table,
    row: &Map<String, Value>,
    stamp: &Stamp,
) -> Result<Map<String, Value>> {
    let mut ignored = Vec::new();
    let mut out = Map::new();
    out.insert("_ctime".into(), stamp.time.clone().into());
    out.insert("_mtime".into(), stamp.time.clone().into());
    out.insert("_creator".into(), stamp.user.clone().into());
    out.insert("_last_modifier".into(), stamp.user.clone().into());
    for (name, v) in values(table, row, &mut ignored)? {
        if v.is_null() {
            continue;
        }
        let column = table.column(&name)?;
        // Stored values read back as SQLite gives them: a number column
        // keeps integers as integers.
        let v = match (column.kind, &v) {
            (Kind::Number, Value::Number(n))
                if n.as_f64().is_some_and(|f| f.fract() == 0.0 && f.abs() < 9e15) =>
            {
                Value::from(n.as_f64().unwrap_or_default() as i64)
            }
            _ => v,
        };
        out.insert(name, cell_out(column, v));
    }
    Ok(out)
}

/// The statements that update rows by id; each must exist (the caller
/// checks with [`existing_ids`]).
pub fn update_rows(
    table: &Table,
    updates: &[(String, Map<String, Value>)],
    stamp: &Stamp,
    ids: &mut dyn Ids,
) -> Result<Vec<Statement>> {
    if updates.is_empty() {
        return Err(Error::InvalidInput("no updates given".into()));
    }
    let mut new_options = Vec::new();
    let mut sets = Vec::with_capacity(updates.len());
    for (id, row) in updates {
        let values = values(table, row, &mut new_options)?;
        let mut assignments = vec!["_mtime = ?".to_string(), "_last_modifier = ?".to_string()];
        let mut params: Vec<Value> = vec![stamp.time.clone().into(), stamp.user.clone().into()];
        for (n, v) in values {
            assignments.push(format!("{} = ?", quote(&n)));
            params.push(v);
        }
        params.push(rowid_of(id)?.into());
        sets.push(stmt(
            format!(
                "UPDATE {} SET {} WHERE _rowid = ?",
                quote(&table.name),
                assignments.join(", ")
            ),
            params,
        ));
    }
    let mut out = option_statements(table, &new_options, ids);
    out.extend(sets);
    Ok(out)
}

/// The statement that deletes rows by id.
pub fn delete_rows(table: &Table, row_ids: &[String]) -> Result<Vec<Statement>> {
    if row_ids.is_empty() {
        return Err(Error::InvalidInput("no row ids given".into()));
    }
    row_ids
        .iter()
        .map(|id| {
            Ok(stmt(
                format!("DELETE FROM {} WHERE _rowid = ?", quote(&table.name)),
                vec![rowid_of(id)?.into()],
            ))
        })
        .collect()
}

/// Which of `row_ids` name rows of `table`.
pub fn existing_ids(
    conn: &Connection,
    table: &Table,
    row_ids: &[String],
) -> Result<HashSet<String>> {
    let mut s = conn
        .prepare(&format!("SELECT 1 FROM {} WHERE _rowid = ?1", quote(&table.name)))
        .map_err(map_sqlite_error)?;
    let mut out = HashSet::new();
    for id in row_ids {
        let Some(rowid) = parse_row_id(id) else { continue };
        if s.exists([rowid]).map_err(map_sqlite_error)? {
            out.insert(id.clone());
        }
    }
    Ok(out)
}

/// How to read rows.
#[derive(Clone, Debug, Default)]
pub struct Page {
    /// Order by this column (name or key), else by insertion.
    pub order_by: Option<String>,
    pub desc: bool,
    pub start: u64,
    pub limit: u64,
    /// Key the values by column name (true) or by column key.
    pub convert_keys: bool,
    /// Only the row with this id.
    pub row_id: Option<String>,
    /// Only rows that pass these filters...
    pub filters: Vec<Filter>,
    /// ...any of them (true) or all (false).
    pub any: bool,
}

/// One condition on a column, as SeaTable's filtered-rows call gives it.
#[derive(Clone, Debug)]
pub struct Filter {
    pub column: String,
    pub predicate: String,
    pub term: Value,
}

/// The predicates [`Filter`] understands.
pub const PREDICATES: [&str; 12] = [
    "contains",
    "does_not_contain",
    "is",
    "is_not",
    "is_empty",
    "is_not_empty",
    "equal",
    "not_equal",
    "less",
    "greater",
    "less_or_equal",
    "greater_or_equal",
];

impl Filter {
    /// The filter as SQL over the table's columns, with its parameters.
    fn sql(&self, table: &Table, params: &mut Vec<rusqlite::types::Value>) -> Result<String> {
        let column = table.column(&self.column).map_err(|e| Error::InvalidInput(e.to_string()))?;
        let c = quote(&column.name);
        let term = || -> Result<rusqlite::types::Value> {
            let mut ignored = Vec::new();
            let v = match (&self.term, column.kind) {
                // A multiple-select matches on one of its option names.
                (Value::String(s), Kind::MultipleSelect) => Value::String(s.clone()),
                (t, _) => cell(table, column, t, &mut ignored)?,
            };
            crate::value::json_to_sql(&v)
        };
        let compare = |op: &str, params: &mut Vec<rusqlite::types::Value>| -> Result<String> {
            params.push(term()?);
            Ok(format!("{c} {op} ?"))
        };
        Ok(match self.predicate.as_str() {
            "contains" | "does_not_contain" => {
                let Value::String(s) = &self.term else {
                    return Err(Error::InvalidInput(format!(
                        "filter {:?} takes a string term",
                        self.predicate
                    )));
                };
                params.push(s.clone().into());
                let like = format!("instr(lower(coalesce({c}, '')), lower(?)) > 0");
                if self.predicate == "contains" { like } else { format!("NOT ({like})") }
            }
            "is_empty" => format!("({c} IS NULL OR {c} = '' OR {c} = '[]')"),
            "is_not_empty" => format!("NOT ({c} IS NULL OR {c} = '' OR {c} = '[]')"),
            "is" | "equal" if column.kind == Kind::MultipleSelect => {
                params.push(term()?);
                format!("EXISTS (SELECT 1 FROM json_each({c}) WHERE value = ?)")
            }
            "is" | "equal" => compare("IS", params)?,
            "is_not" | "not_equal" => compare("IS NOT", params)?,
            "less" => compare("<", params)?,
            "greater" => compare(">", params)?,
            "less_or_equal" => compare("<=", params)?,
            "greater_or_equal" => compare(">=", params)?,
            other => {
                return Err(Error::InvalidInput(format!(
                    "filter predicate {other:?} is not supported; supported: {}",
                    PREDICATES.join(", ")
                )));
            }
        })
    }
}

/// A stored value as SeaTable gives it back.
pub fn cell_out(column: &Column, value: Value) -> Value {
    match (column.kind, value) {
        (Kind::Checkbox, Value::Number(n)) => Value::Bool(n.as_f64().is_some_and(|f| f != 0.0)),
        (Kind::MultipleSelect, Value::String(s)) => {
            serde_json::from_str::<Value>(&s).unwrap_or(Value::String(s))
        }
        (_, v) => v,
    }
}

/// Reads rows of `table` as SeaTable returns them (empty cells left out).
pub fn read_rows(conn: &Connection, table: &Table, page: &Page) -> Result<Vec<Map<String, Value>>> {
    let mut cols: Vec<String> = SYSTEM_COLUMNS.iter().map(|c| c.to_string()).collect();
    cols.extend(table.columns.iter().map(|c| quote(&c.name)));
    let mut sql = format!("SELECT {} FROM {}", cols.join(", "), quote(&table.name));
    let mut params: Vec<rusqlite::types::Value> = vec![];
    let mut conditions = Vec::new();
    if let Some(id) = &page.row_id {
        conditions.push("_rowid = ?".to_string());
        // An id that names no row reads nothing.
        params.push(parse_row_id(id).unwrap_or(0).into());
    }
    if !page.filters.is_empty() {
        let parts: Vec<String> =
            page.filters.iter().map(|f| f.sql(table, &mut params)).collect::<Result<_>>()?;
        conditions.push(format!("({})", parts.join(if page.any { " OR " } else { " AND " })));
    }
    if !conditions.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&conditions.join(" AND "));
    }
    let order = match &page.order_by {
        Some(o) if SYSTEM_COLUMNS.contains(&o.as_str()) => o.clone(),
        Some(o) => quote(&table.column(o).map_err(|e| Error::InvalidInput(e.to_string()))?.name),
        None => "rowid".into(),
    };
    let dir = if page.desc { "DESC" } else { "ASC" };
    sql.push_str(&format!(" ORDER BY {order} {dir}, rowid {dir} LIMIT ? OFFSET ?"));
    params.push((page.limit.min(MAX_LIMIT) as i64).into());
    params.push((page.start.min(i64::MAX as u64) as i64).into());
    let mut s = conn.prepare(&sql).map_err(map_sqlite_error)?;
    let mut rows = s.query(rusqlite::params_from_iter(params)).map_err(map_sqlite_error)?;
    let mut out = Vec::new();
    while let Some(r) = rows.next().map_err(map_sqlite_error)? {
        let mut m = Map::new();
        for (i, name) in SYSTEM_COLUMNS.iter().enumerate() {
            let v = sql_to_json(r.get_ref(i).map_err(map_sqlite_error)?);
            if !v.is_null() {
                m.insert(name.to_string(), v);
            }
        }
        for (i, c) in table.columns.iter().enumerate() {
            let v = sql_to_json(r.get_ref(SYSTEM_COLUMNS.len() + i).map_err(map_sqlite_error)?);
            if v.is_null() {
                continue;
            }
            let key = if page.convert_keys { c.name.clone() } else { c.key.clone() };
            m.insert(key, cell_out(c, v));
        }
        out.push(m);
    }
    Ok(out)
}

/// What [`event`] made of a change-feed event.
#[derive(Debug, PartialEq)]
pub enum Event {
    /// SeaTable's operation for it (`update-dtable`'s first argument).
    Op(Value),
    /// Not a SeaTable change (another table, or no row).
    Skip,
    /// It names a table, column or option this catalog does not know:
    /// read the catalog again and retry (once).
    Stale,
}

/// A change-feed event as the operation SeaTable's clients get over
/// Socket.IO: keyed by column key, selects by option id, long text as
/// `{"text": ...}`. Schema changes only tell the caller to reload.
pub fn event(meta: &Meta, e: &crate::feed::Change) -> Event {
    use shoal_types::api::ChangeOp;
    let (Some(table), Some(rowid)) = (&e.table, e.rowid) else {
        return if e.op == ChangeOp::Ddl { Event::Stale } else { Event::Skip };
    };
    let Some(t) = meta.tables.iter().find(|t| t.name.eq_ignore_ascii_case(table)) else {
        return Event::Skip;
    };
    // The hub keeps rows as the JSON text it captured; read it once here.
    let row = match e.row.as_ref().map(|r| r.to_row()).transpose() {
        Ok(row) => row,
        Err(_) => return Event::Skip,
    };
    let row_id = row
        .as_ref()
        .and_then(|r| r.get("_id"))
        .and_then(Value::as_str)
        .map_or_else(|| row_id(rowid), str::to_string);
    let mut cells = Map::new();
    if let Some(row) = &row {
        for name in SYSTEM_COLUMNS {
            if let Some(v) = row.get(name).filter(|v| !v.is_null()) {
                cells.insert(name.to_string(), v.clone());
            }
        }
        for c in &t.columns {
            let Some(v) = row.get(&c.name).filter(|v| !v.is_null()) else { continue };
            let option = |name: &str| c.option_by_name(name).map(|o| Value::String(o.id.clone()));
            let v = match (c.kind, cell_out(c, v.clone())) {
                (Kind::SingleSelect, Value::String(s)) => match option(&s) {
                    Some(id) => id,
                    None => return Event::Stale,
                },
                (Kind::MultipleSelect, Value::Array(items)) => {
                    let mut ids = Vec::with_capacity(items.len());
                    for item in items {
                        match item.as_str().and_then(option) {
                            Some(id) => ids.push(id),
                            None => return Event::Stale,
                        }
                    }
                    Value::Array(ids)
                }
                (Kind::LongText, Value::String(s)) => json!({"text": s, "preview": s}),
                (_, v) => v,
            };
            cells.insert(c.key.clone(), v);
        }
    }
    Event::Op(match e.op {
        ChangeOp::Insert => json!({
            "op_type": "insert_row", "table_id": t.id, "row_id": row_id, "row_data": cells,
        }),
        ChangeOp::Update => json!({
            "op_type": "modify_row", "table_id": t.id, "row_id": row_id, "updated": cells,
            "old_row": {},
        }),
        ChangeOp::Delete => json!({
            "op_type": "delete_row", "table_id": t.id, "row_id": row_id,
            "deleted_row": {"_id": row_id},
        }),
        ChangeOp::Ddl | ChangeOp::BaseDropped => return Event::Skip,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_ids_are_22_hex_digits_made_as_sqlite_makes_them() {
        let ids: HashSet<String> = (-2..1000).map(row_id).collect();
        assert_eq!(ids.len(), 1002);
        for id in &ids {
            assert_eq!(id.len(), 22, "{id}");
            assert!(
                id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                "{id}"
            );
        }
        assert_ne!(row_id(1)[11..], row_id(2)[11..]);
        for r in [i64::MIN, -4_294_967_292, -1, 0, 1, 4_294_967_291, 1 << 40, i64::MAX] {
            let scramble = (r % 4_294_967_291).abs() * 40_503 % 16_777_216;
            assert_eq!(row_id(r), format!("{scramble:06X}{:016X}", r as u64), "{r}");
        }
        for r in [-2, 0, 1, 77, i64::MAX] {
            assert_eq!(parse_row_id(&row_id(r)), Some(r));
        }
        let mut forged = row_id(5).into_bytes();
        forged[0] = if forged[0] == b'A' { b'B' } else { b'A' };
        assert_eq!(parse_row_id(std::str::from_utf8(&forged).unwrap()), None);
        assert_eq!(parse_row_id("short"), None);
    }

    #[test]
    fn dates_are_checked() {
        for ok in ["2024-05-01", "2024-05-01 13:30", "2024-05-01T13:30:00.000+00:00", "2024-02-29"]
        {
            assert!(valid_date(ok), "{ok}");
        }
        for bad in [
            "",
            "2024-5-1",
            "2024-13-01",
            "2024-05-01x",
            "2024-05-01 1",
            "yesterday",
            "2023-02-29",
            "2024-04-31",
            "2024-05-01 24:00",
            "2024-05-01 10:60",
            "2024-05-01T10:00:61",
        ] {
            assert!(!valid_date(bad), "{bad}");
        }
    }

    #[test]
    fn kinds_round_trip_and_unknown_ones_are_refused() {
        for k in Kind::ALL {
            assert_eq!(Kind::parse(k.name()).unwrap(), k);
        }
        let e = Kind::parse("formula").unwrap_err();
        assert!(e.to_string().contains("not supported"), "{e}");
    }
}
