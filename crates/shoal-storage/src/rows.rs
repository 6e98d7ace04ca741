//! SQL for the row API (`/tables/{table}/rows`), built from validated names.
//!
//! Row writes become ordinary execute commands, so they take the same path
//! as any SQL write. Identifiers are always quoted; values are always bound.

use serde_json::Value;
use shoal_types::api::{Params, ROWID_KEY, Row, Statement, TableInfo};
use shoal_types::{Error, Result};

/// Quotes an SQL identifier.
pub fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn check_columns<'a>(table: &TableInfo, names: impl Iterator<Item = &'a String>) -> Result<()> {
    for n in names {
        if !table.columns.iter().any(|c| c.name.eq_ignore_ascii_case(n)) {
            return Err(Error::InvalidInput(format!("table {:?} has no column {n:?}", table.name)));
        }
    }
    Ok(())
}

/// One INSERT per row. `_rowid` may be given to choose the rowid.
pub fn insert(table: &TableInfo, rows: &[Row]) -> Result<Vec<Statement>> {
    if rows.is_empty() {
        return Err(Error::InvalidInput("no rows given".into()));
    }
    rows.iter()
        .map(|row| {
            check_columns(table, row.keys().filter(|k| *k != ROWID_KEY))?;
            let (names, values): (Vec<String>, Vec<Value>) = row
                .iter()
                .map(|(k, v)| {
                    (if k == ROWID_KEY { "rowid".to_string() } else { quote(k) }, v.clone())
                })
                .unzip();
            let sql = if names.is_empty() {
                format!("INSERT INTO {} DEFAULT VALUES", quote(&table.name))
            } else {
                format!(
                    "INSERT INTO {} ({}) VALUES ({})",
                    quote(&table.name),
                    names.join(", "),
                    vec!["?"; names.len()].join(", ")
                )
            };
            Ok(Statement { sql, params: Params::Positional(values) })
        })
        .collect()
}

/// An UPDATE of one row by rowid.
pub fn update(table: &TableInfo, rowid: i64, values: &Row) -> Result<Statement> {
    if values.is_empty() {
        return Err(Error::InvalidInput("no values given".into()));
    }
    if values.contains_key(ROWID_KEY) {
        return Err(Error::InvalidInput(format!("{ROWID_KEY} cannot be changed")));
    }
    check_columns(table, values.keys())?;
    let sets: Vec<String> = values.keys().map(|k| format!("{} = ?", quote(k))).collect();
    let mut params: Vec<Value> = values.values().cloned().collect();
    params.push(rowid.into());
    Ok(Statement {
        sql: format!("UPDATE {} SET {} WHERE rowid = ?", quote(&table.name), sets.join(", ")),
        params: Params::Positional(params),
    })
}

/// A DELETE of one row by rowid.
pub fn delete(table: &TableInfo, rowid: i64) -> Statement {
    Statement {
        sql: format!("DELETE FROM {} WHERE rowid = ?", quote(&table.name)),
        params: Params::Positional(vec![rowid.into()]),
    }
}

/// A SELECT of one row by rowid.
pub fn get(table: &TableInfo, rowid: i64) -> Statement {
    Statement {
        sql: format!("SELECT rowid AS {ROWID_KEY}, * FROM {} WHERE rowid = ?", quote(&table.name)),
        params: Params::Positional(vec![rowid.into()]),
    }
}

/// A SELECT of one page of rows, ordered by a column (or the rowid).
pub fn page(
    table: &TableInfo,
    limit: u64,
    offset: u64,
    order_by: Option<&str>,
    desc: bool,
) -> Result<Statement> {
    let order = match order_by {
        None => "rowid".to_string(),
        Some(c) if c == ROWID_KEY => "rowid".to_string(),
        Some(c) => {
            check_columns(table, std::iter::once(&c.to_string()))?;
            quote(c)
        }
    };
    let dir = if desc { "DESC" } else { "ASC" };
    Ok(Statement {
        sql: format!(
            "SELECT rowid AS {ROWID_KEY}, * FROM {} ORDER BY {order} {dir}, rowid {dir} LIMIT ? OFFSET ?",
            quote(&table.name)
        ),
        params: Params::Positional(vec![(limit as i64).into(), (offset as i64).into()]),
    })
}

/// Turns a query answer into row objects.
pub fn to_rows(columns: &[String], rows: Vec<Vec<Value>>) -> Vec<Row> {
    rows.into_iter()
        .map(|values| {
            // Later columns of the same name (rowid aliases) do not hide `_rowid`.
            let mut row = Row::new();
            for (c, v) in columns.iter().zip(values) {
                row.entry(c.clone()).or_insert(v);
            }
            row
        })
        .collect()
}
