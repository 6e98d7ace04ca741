//! SQL for the row API (`/tables/{table}/rows`), built from validated names.
//!
//! Row writes become ordinary execute commands, so they take the same path
//! as any SQL write. Identifiers are always quoted; values are always bound.

use serde_json::Value;
use shoal_types::api::{ColumnInfo, Params, ROWID_KEY, Row, Statement, TableInfo};
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

/// The most values one multi-row insert binds (SQLite allows 32766).
const MAX_VALUES: usize = 30_000;

/// The INSERTs for `rows` (`_rowid` may be given to choose the rowid), and
/// how many rows each inserts: one per row, or with `batch`,
/// rows that name the same columns one after another share one multi-row
/// INSERT, whose rows get consecutive rowids ending at its last insert
/// rowid; a row that chooses its rowid (`_rowid`, or a value for an
/// `INTEGER PRIMARY KEY`) goes alone. Only batch a rowid table without
/// triggers whose rowids are not near the largest (SQLite then picks them
/// at random): the caller checks.
pub fn insert_batched(
    table: &TableInfo,
    rows: &[Row],
    batch: bool,
) -> Result<(Vec<Statement>, Vec<usize>)> {
    if rows.is_empty() {
        return Err(Error::InvalidInput("no rows given".into()));
    }
    let pks: Vec<&ColumnInfo> = table.columns.iter().filter(|c| c.pk > 0).collect();
    let alias = match pks.as_slice() {
        [c] if c.type_.eq_ignore_ascii_case("INTEGER") => Some(c.name.as_str()),
        _ => None,
    };
    let chooses_rowid = |row: &Row| {
        row.keys().any(|k| k == ROWID_KEY || alias.is_some_and(|a| a.eq_ignore_ascii_case(k)))
    };
    let mut statements = Vec::new();
    let mut sizes = Vec::new();
    let mut start = 0;
    while start < rows.len() {
        let first = &rows[start];
        check_columns(table, first.keys().filter(|k| *k != ROWID_KEY))?;
        let mut end = start + 1;
        if batch && !first.is_empty() && !chooses_rowid(first) {
            while end < rows.len()
                && (end - start + 1) * first.len() <= MAX_VALUES
                && rows[end].keys().eq(first.keys())
            {
                end += 1;
            }
        }
        let names: Vec<String> = first
            .keys()
            .map(|k| if k == ROWID_KEY { "rowid".to_string() } else { quote(k) })
            .collect();
        let sql = if names.is_empty() {
            format!("INSERT INTO {} DEFAULT VALUES", quote(&table.name))
        } else {
            let tuple = format!("({})", vec!["?"; names.len()].join(", "));
            format!(
                "INSERT INTO {} ({}) VALUES {}",
                quote(&table.name),
                names.join(", "),
                vec![tuple.as_str(); end - start].join(", ")
            )
        };
        let params: Vec<Value> =
            rows[start..end].iter().flat_map(|r| r.values().cloned()).collect();
        statements.push(Statement { sql, params: Params::Positional(params) });
        sizes.push(end - start);
        start = end;
    }
    Ok((statements, sizes))
}

/// Whether rows for `table` may share multi-row INSERTs
/// ([`insert_batched`]): a rowid table with no triggers, whose largest
/// rowid is far from the largest there is.
pub fn can_batch(conn: &rusqlite::Connection, table: &str) -> Result<bool> {
    let plain: bool = conn
        .query_row(
            "SELECT coalesce((SELECT wr = 0 FROM pragma_table_list WHERE schema = 'main' AND name = ?1 COLLATE NOCASE), 0)
               AND NOT EXISTS (SELECT 1 FROM sqlite_schema WHERE type = 'trigger' AND tbl_name = ?1 COLLATE NOCASE)",
            [table],
            |r| r.get(0),
        )
        .map_err(crate::map_sqlite_error)?;
    if !plain {
        return Ok(false);
    }
    let max: i64 = conn
        .query_row(&format!("SELECT coalesce(max(rowid), 0) FROM {}", quote(table)), [], |r| {
            r.get(0)
        })
        .map_err(crate::map_sqlite_error)?;
    Ok(max < i64::MAX - (1 << 32))
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use shoal_types::api::ColumnInfo;

    fn table(pk_type: &str) -> TableInfo {
        let col = |name: &str, type_: &str, pk| ColumnInfo {
            name: name.into(),
            type_: type_.into(),
            notnull: false,
            default: None,
            pk,
        };
        TableInfo { name: "t".into(), columns: vec![col("id", pk_type, 1), col("v", "TEXT", 0)] }
    }

    fn row(v: serde_json::Value) -> Row {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn batched_inserts_report_each_rows_rowid() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)").unwrap();
        let t = table("INTEGER");
        let rows = vec![
            row(json!({"v": "a"})),
            row(json!({"v": "b"})),
            row(json!({"id": 50, "v": "chosen"})),
            row(json!({"v": "c"})),
            row(json!({"v": "d"})),
            row(json!({"_rowid": 7, "v": "e"})),
        ];
        let (statements, sizes) = insert_batched(&t, &rows, true).unwrap();
        // a+b, the chosen id alone, c+d, the chosen rowid alone.
        assert_eq!(sizes, vec![2, 1, 2, 1]);
        let mut reported = Vec::new();
        for (s, n) in statements.iter().zip(&sizes) {
            let mut stmt = conn.prepare(&s.sql).unwrap();
            crate::value::bind(&mut stmt, &s.params).unwrap();
            stmt.raw_execute().unwrap();
            let last = conn.last_insert_rowid();
            reported.extend((0..*n as i64).rev().map(|b| last - b));
        }
        let actual: Vec<i64> = rows
            .iter()
            .map(|r| {
                let v = r["v"].as_str().unwrap();
                conn.query_row("SELECT rowid FROM t WHERE v = ?1", [v], |x| x.get(0)).unwrap()
            })
            .collect();
        assert_eq!(reported, actual);
        // Unbatched: one statement per row.
        let (statements, sizes) = insert_batched(&t, &rows, false).unwrap();
        assert_eq!((statements.len(), sizes), (6, vec![1; 6]));
    }

    #[test]
    fn tables_with_triggers_or_without_rowid_are_not_batched() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE t (v TEXT); CREATE TABLE u (v TEXT PRIMARY KEY) WITHOUT ROWID;
             CREATE TABLE w (v TEXT);
             CREATE TRIGGER tr AFTER INSERT ON w BEGIN INSERT INTO w VALUES ('again'); END;",
        )
        .unwrap();
        assert!(can_batch(&conn, "t").unwrap());
        assert!(!can_batch(&conn, "w").unwrap());
        assert!(!can_batch(&conn, "u").unwrap());
    }
}
