//! Shoal's storage: one SQLite file per base, grouped by bucket.
//!
//! - [`Store`] owns every bucket's bases on a node: opens them lazily, bounds
//!   how many are open, applies [`Command`]s and serves reads.
//! - [`Command`] is the unit of change; every replica applies the same
//!   commands at the same log indexes (the bucket's Raft log orders them).
//! - The sandbox ([`sandbox`]) decides what user SQL may do.
//! - [`rows`] builds the SQL behind the row API.
//!
//! Everything here is synchronous (rusqlite); async callers use a blocking pool.

mod base;
mod capture;
mod catalog;
mod command;
pub mod feed;
pub mod idempotency;
pub mod image;
pub mod rows;
pub mod sandbox;
pub mod seatable;
mod store;
mod value;

pub use base::{Base, Executed};
pub use command::{Command, Output, Proposal};
pub use store::{BaseFilter, Options, Store};
pub use value::{json_to_sql, sql_to_json};

/// The first keyword of a statement, after white space and comments (empty
/// when there is none, or a comment is not closed).
pub fn first_keyword(sql: &str) -> &str {
    let mut rest = sql;
    loop {
        rest = rest.trim_start();
        if let Some(r) = rest.strip_prefix("--") {
            rest = r.split_once('\n').map_or("", |(_, after)| after);
        } else if let Some(r) = rest.strip_prefix("/*") {
            match r.split_once("*/") {
                Some((_, after)) => rest = after,
                None => return "",
            }
        } else {
            break;
        }
    }
    let end = rest.find(|c: char| !c.is_ascii_alphabetic()).unwrap_or(rest.len());
    &rest[..end]
}

/// Whether `sql` holds a second statement after a `;` (quotes and comments
/// skipped). A trigger's body holds `;` of its own, so a `CREATE TRIGGER`
/// never counts. Used only to explain a failure: SQLite compiles the text
/// after the first statement to tell whether there is one, and a second
/// statement that cannot compile yet (it uses a table the first creates)
/// fails with its own error instead of "one statement per text".
pub fn has_second_statement(sql: &str) -> bool {
    let words: Vec<String> = sql
        .split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
        .filter(|w| !w.is_empty())
        .take(3)
        .map(str::to_ascii_uppercase)
        .collect();
    if words.first().is_some_and(|w| w == "CREATE") && words.iter().any(|w| w == "TRIGGER") {
        return false;
    }
    let bytes = sql.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            q @ (b'\'' | b'"' | b'`') => {
                i += 1;
                while i < bytes.len() && bytes[i] != q {
                    i += 1;
                }
            }
            b'[' => {
                while i < bytes.len() && bytes[i] != b']' {
                    i += 1;
                }
            }
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < bytes.len() && !(bytes[i] == b'*' && bytes[i + 1] == b'/') {
                    i += 1;
                }
                i += 1;
            }
            b';' => {
                let rest = &sql[i + 1..];
                let rest = rest.trim_start_matches(|c: char| c == ';' || c.is_whitespace());
                if !first_keyword(rest).is_empty() {
                    return true;
                }
            }
            _ => {}
        }
        i += 1;
    }
    false
}

use rusqlite::ErrorCode;
use shoal_types::Error;

/// Maps a SQLite error to what the caller must do about it.
pub(crate) fn map_sqlite_error(e: rusqlite::Error) -> Error {
    match &e {
        rusqlite::Error::SqliteFailure(f, msg) => {
            let text = msg.clone().unwrap_or_else(|| f.to_string());
            match f.code {
                ErrorCode::ConstraintViolation | ErrorCode::TypeMismatch => Error::Constraint(text),
                ErrorCode::OperationInterrupted | ErrorCode::TooBig => Error::LimitExceeded(text),
                ErrorCode::AuthorizationForStatementDenied => Error::SqlNotAllowed(text),
                ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => Error::Unavailable(text),
                ErrorCode::SystemIoFailure
                | ErrorCode::DiskFull
                | ErrorCode::CannotOpen
                | ErrorCode::PermissionDenied
                | ErrorCode::ReadOnly
                | ErrorCode::OutOfMemory
                | ErrorCode::FileLockingProtocolFailed => Error::Io(text),
                ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase => Error::InvalidData(text),
                _ => Error::InvalidSql(text),
            }
        }
        rusqlite::Error::SqlInputError { msg, offset, .. } => {
            Error::InvalidSql(format!("{msg} (at byte {offset} of the SQL text)"))
        }
        rusqlite::Error::MultipleStatement => Error::InvalidSql(
            "only one statement per SQL text; send several statements as a list".into(),
        ),
        rusqlite::Error::InvalidParameterName(n) => {
            Error::InvalidInput(format!("unknown parameter {n}"))
        }
        rusqlite::Error::InvalidParameterCount(got, want) => Error::InvalidInput(format!(
            "the statement takes {want} parameter(s) but {got} were given"
        )),
        rusqlite::Error::UserFunctionError(inner) => Error::InvalidSql(inner.to_string()),
        rusqlite::Error::ToSqlConversionFailure(inner) => Error::InvalidInput(inner.to_string()),
        rusqlite::Error::Utf8Error(..) | rusqlite::Error::NulError(_) => {
            Error::InvalidInput("the SQL text contains a NUL byte or invalid UTF-8".into())
        }
        _ => Error::Internal(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_statement_is_found_outside_quotes_comments_and_triggers() {
        assert!(has_second_statement("CREATE TABLE t (a); INSERT INTO t VALUES (1)"));
        assert!(has_second_statement("SELECT 1;\n  -- then\n SELECT 2"));
        assert!(!has_second_statement("SELECT 1;"));
        assert!(!has_second_statement("SELECT 1; -- done\n ;  "));
        assert!(!has_second_statement("SELECT 'a; SELECT 2'"));
        assert!(!has_second_statement("SELECT \"x;y\" FROM [a;b] -- ; SELECT 2"));
        assert!(!has_second_statement("SELECT 1 /* ; SELECT 2 */"));
        assert!(!has_second_statement(
            "CREATE TRIGGER tr AFTER INSERT ON t BEGIN UPDATE t SET a = 1; DELETE FROM u; END"
        ));
        assert!(!has_second_statement(
            "create temp trigger tr after insert on t begin select 1; end;"
        ));
    }
}
