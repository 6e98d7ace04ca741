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
