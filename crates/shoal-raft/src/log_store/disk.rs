//! The on-disk layout, in one redb file:
//!
//! - `format`: `"version" -> 1`, the layout version, checked on open;
//! - `log`: `(group, index) -> entry`, every entry postcard-encoded;
//! - `meta`: `(group, kind) -> value`, postcard-encoded, where kind is
//!   [`VOTE`] (`Vote`), [`COMMITTED`] (`Option<LogId>`), [`PURGED`]
//!   (`LogId`, the last purged) or [`APPLIED`] (`(Option<LogId>,
//!   StoredMembership)`, the state machine's checkpoint).
//!
//! Every entry of a group lies after its last purged id, so a group's last
//! log id is its last entry's, else its last purged one.

use std::path::Path;

use openraft::{Entry, LogId};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::writer::{Op, Write};
use super::{Error, GroupState, LogStoreOptions, Result};
use crate::TypeConfig;

const FORMAT: TableDefinition<&str, u32> = TableDefinition::new("format");
const LOG: TableDefinition<(u8, u64), &[u8]> = TableDefinition::new("log");
const META: TableDefinition<(u8, u8), &[u8]> = TableDefinition::new("meta");

/// The layout version this code writes and reads.
const FORMAT_VERSION: u32 = 1;

/// Meta kind: the vote.
pub(super) const VOTE: u8 = 0;
/// Meta kind: the last committed log id.
pub(super) const COMMITTED: u8 = 1;
/// Meta kind: the last purged log id.
pub(super) const PURGED: u8 = 2;
/// Meta kind: the state machine's applied checkpoint.
pub(super) const APPLIED: u8 = 3;

/// Opens or creates the file and makes sure its layout is ours.
pub(super) fn open(path: &Path, options: &LogStoreOptions) -> Result<Database> {
    let db = Database::builder().set_cache_size(options.cache_bytes).create(path)?;
    init(db, &path.display().to_string())
}

/// A database that lives in memory only.
pub(super) fn open_in_memory(options: &LogStoreOptions) -> Result<Database> {
    let db = Database::builder()
        .set_cache_size(options.cache_bytes)
        .create_with_backend(redb::backends::InMemoryBackend::new())?;
    init(db, "memory")
}

/// Checks or writes the layout version and makes the tables.
fn init(db: Database, name: &str) -> Result<Database> {
    let txn = db.begin_write()?;
    {
        let mut format = txn.open_table(FORMAT)?;
        let found = format.get("version")?.map(|v| v.value());
        match found {
            None => drop(format.insert("version", FORMAT_VERSION)?),
            Some(FORMAT_VERSION) => {}
            Some(other) => {
                return Err(Error::InvalidData(format!(
                    "{name}: layout version {other}, this build reads {FORMAT_VERSION}"
                )));
            }
        }
        txn.open_table(LOG)?;
        txn.open_table(META)?;
    }
    txn.commit()?;
    Ok(db)
}

/// Reads the state of every group (256 of them; most are empty).
pub(super) fn load(db: &Database) -> Result<Vec<GroupState>> {
    let txn = db.begin_read()?;
    let log = txn.open_table(LOG)?;
    let meta = txn.open_table(META)?;
    let get = |group: u8, kind: u8| -> Result<Option<Vec<u8>>> {
        Ok(meta.get((group, kind))?.map(|v| v.value().to_vec()))
    };
    (0..=u8::MAX)
        .map(|group| {
            let mut state = GroupState {
                vote: get(group, VOTE)?.map(|v| decode(&v)).transpose()?,
                committed: get(group, COMMITTED)?.map(|v| decode(&v)).transpose()?.flatten(),
                last_purged: get(group, PURGED)?.map(|v| decode(&v)).transpose()?,
                applied: get(group, APPLIED)?.map(|v| decode(&v)).transpose()?,
                ..GroupState::default()
            };
            let last = log.range((group, 0)..=(group, u64::MAX))?.next_back().transpose()?;
            let last_entry = match last {
                Some((_, v)) => Some(decode::<Entry<TypeConfig>>(v.value())?.log_id),
                None => None,
            };
            state.last_log = last_entry.or(state.last_purged);
            Ok(state)
        })
        .collect()
}

/// Writes `ops` in one transaction and commits it durably.
pub(super) fn commit(db: &Database, ops: &[Op]) -> Result<()> {
    let txn = db.begin_write()?;
    {
        let mut log = txn.open_table(LOG)?;
        let mut meta = txn.open_table(META)?;
        for op in ops {
            let g = op.group;
            match &op.write {
                Write::Append { entries, .. } => {
                    for (index, bytes) in entries {
                        log.insert((g, *index), bytes.as_slice())?;
                    }
                }
                Write::Truncate { from } => {
                    log.retain_in((g, *from)..=(g, u64::MAX), |_, _| false)?
                }
                Write::Purge { upto, value } => {
                    log.retain_in((g, 0)..=(g, *upto), |_, _| false)?;
                    meta.insert((g, PURGED), value.as_slice())?;
                }
                Write::Meta { kind, value } => drop(meta.insert((g, *kind), value.as_slice())?),
                Write::Remove => {
                    log.retain_in((g, 0)..=(g, u64::MAX), |_, _| false)?;
                    meta.retain_in((g, 0)..=(g, u8::MAX), |_, _| false)?;
                }
            }
        }
    }
    // Durability::Immediate is the default: the commit returns after fsync.
    txn.commit()?;
    Ok(())
}

/// The committed entries of `group` in `first..=last`, in order.
pub(super) fn read_entries(
    db: &Database,
    group: u8,
    first: u64,
    last: u64,
) -> Result<Vec<Entry<TypeConfig>>> {
    let txn = db.begin_read()?;
    let log = txn.open_table(LOG)?;
    let mut out = Vec::new();
    for item in log.range((group, first)..=(group, last))? {
        let (_, v) = item?;
        out.push(decode(v.value())?);
    }
    Ok(out)
}

/// The log id of the committed entry of `group` at `index`, if any.
pub(super) fn read_log_id(db: &Database, group: u8, index: u64) -> Result<Option<LogId<u64>>> {
    let txn = db.begin_read()?;
    let log = txn.open_table(LOG)?;
    let found = log.get((group, index))?;
    found.map(|v| decode::<Entry<TypeConfig>>(v.value()).map(|e| e.log_id)).transpose()
}

/// Encodes a value for the file.
pub(super) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    postcard::to_allocvec(value).map_err(|e| Error::InvalidData(format!("encode: {e}")))
}

/// Decodes a value from the file.
pub(super) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    postcard::from_bytes(bytes).map_err(|e| Error::InvalidData(format!("decode: {e}")))
}

impl From<redb::Error> for Error {
    fn from(error: redb::Error) -> Self {
        match error {
            redb::Error::DatabaseAlreadyOpen => {
                Error::Unavailable("the log file is already open".into())
            }
            redb::Error::Corrupted(_)
            | redb::Error::UpgradeRequired(_)
            | redb::Error::TableTypeMismatch { .. }
            | redb::Error::TypeDefinitionChanged { .. } => Error::InvalidData(error.to_string()),
            other => Error::Io(other.to_string()),
        }
    }
}

/// redb has one error type per operation; all of them become a redb::Error.
macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(error: $t) -> Self {
                Error::from(redb::Error::from(error))
            }
        }
    )*};
}

from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);
