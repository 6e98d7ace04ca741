//! The on-disk layout: one fjall database (an LSM tree with one journal)
//! in the store's directory, with three keyspaces:
//!
//! - `format`: `"version" -> u32` (little endian), the layout version,
//!   checked on open;
//! - `log`: `group (1 byte) ++ index (8 bytes, big endian) -> entry`, every
//!   entry postcard-encoded; big endian keeps a group's entries in index
//!   order;
//! - `meta`: `group ++ kind -> value`, postcard-encoded, where kind is
//!   [`VOTE`] (`Vote`), [`COMMITTED`] (`Option<LogId>`), [`PURGED`]
//!   (`LogId`, the last purged) or [`APPLIED`] (`(Option<LogId>,
//!   StoredMembership)`, the state machine's checkpoint).
//!
//! A commit is one fjall write batch (atomic across keyspaces, one journal
//! record) followed by one `fsync` of the journal. Journal persistence is
//! manual: fjall never syncs on its own, so the writer decides what one
//! fsync covers. Deletions are tombstones; fjall has no range delete, so a
//! truncate, purge or removal lists the keys it deletes.
//!
//! Every entry of a group lies after its last purged id, so a group's last
//! log id is its last entry's, else its last purged one.

use std::collections::BTreeMap;
use std::path::Path;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use openraft::{Entry, LogId};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::writer::{Op, Write};
use super::{Error, GroupState, LogStoreOptions, Result};
use crate::TypeConfig;

/// The layout version this code writes and reads.
const FORMAT_VERSION: u32 = 1;

/// The smallest journal bound fjall accepts (it panics below).
const MIN_JOURNAL_BYTES: u64 = 64 << 20;

/// Meta kind: the vote.
pub(super) const VOTE: u8 = 0;
/// Meta kind: the last committed log id.
pub(super) const COMMITTED: u8 = 1;
/// Meta kind: the last purged log id.
pub(super) const PURGED: u8 = 2;
/// Meta kind: the state machine's applied checkpoint.
pub(super) const APPLIED: u8 = 3;

type LogKey = [u8; 9];
type MetaKey = [u8; 2];

fn log_key(group: u8, index: u64) -> LogKey {
    let mut key = [group; 9];
    key[1..].copy_from_slice(&index.to_be_bytes());
    key
}

/// The database and its keyspaces.
pub(super) struct Disk {
    db: Database,
    log: Keyspace,
    meta: Keyspace,
}

impl Disk {
    /// Opens or creates the database in `dir` and makes sure its layout is
    /// ours.
    pub(super) fn open(dir: &Path, options: &LogStoreOptions) -> Result<Disk> {
        let db = Database::builder(dir)
            .manual_journal_persist(true)
            .cache_size(options.cache_bytes)
            .max_journaling_size(options.max_journal_bytes.max(MIN_JOURNAL_BYTES))
            .open()?;
        let format = db.keyspace("format", KeyspaceCreateOptions::default)?;
        let log = db.keyspace("log", KeyspaceCreateOptions::default)?;
        let meta = db.keyspace("meta", KeyspaceCreateOptions::default)?;
        match format.get("version")? {
            None => {
                format.insert("version", FORMAT_VERSION.to_le_bytes())?;
                db.persist(PersistMode::SyncAll)?;
            }
            Some(v) if *v == FORMAT_VERSION.to_le_bytes() => {}
            Some(v) => {
                return Err(Error::InvalidData(format!(
                    "{}: layout version {v:?}, this build reads {FORMAT_VERSION}",
                    dir.display()
                )));
            }
        }
        Ok(Disk { db, log, meta })
    }

    /// Reads the state of every group (256 of them; most are empty).
    pub(super) fn load(&self) -> Result<Vec<GroupState>> {
        let get = |group: u8, kind: u8| -> Result<Option<fjall::UserValue>> {
            Ok(self.meta.get([group, kind])?)
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
                let last = self.log.range(log_key(group, 0)..=log_key(group, u64::MAX)).next_back();
                let last_entry = match last {
                    Some(guard) => Some(decode::<Entry<TypeConfig>>(&guard.value()?)?.log_id),
                    None => None,
                };
                state.last_log = last_entry.or(state.last_purged);
                Ok(state)
            })
            .collect()
    }

    /// Writes `ops` in one batch and makes it durable with one fsync.
    pub(super) fn commit(&self, ops: &[Op]) -> Result<()> {
        // What the batch does to each key, last write wins, so that a
        // deletion sees the entries written earlier in the same batch.
        let mut log: BTreeMap<LogKey, Option<&[u8]>> = BTreeMap::new();
        let mut meta: BTreeMap<MetaKey, Option<&[u8]>> = BTreeMap::new();
        for op in ops {
            let g = op.group;
            match &op.write {
                Write::Append { entries, .. } => {
                    for (index, bytes) in entries {
                        log.insert(log_key(g, *index), Some(bytes));
                    }
                }
                Write::Truncate { from } => self.delete_log(&mut log, g, *from, u64::MAX)?,
                Write::Purge { from, upto, value } => {
                    self.delete_log(&mut log, g, *from, *upto)?;
                    meta.insert([g, PURGED], Some(value));
                }
                Write::Meta { kind, value } => drop(meta.insert([g, *kind], Some(value))),
                Write::Remove => {
                    self.delete_log(&mut log, g, 0, u64::MAX)?;
                    for guard in self.meta.prefix([g]) {
                        let key = guard.key()?;
                        if let Ok(key) = MetaKey::try_from(&*key) {
                            meta.insert(key, None);
                        }
                    }
                    for (_, value) in meta.range_mut([g, 0]..=[g, u8::MAX]) {
                        *value = None;
                    }
                }
            }
        }
        let mut batch = self.db.batch();
        for (key, value) in log {
            match value {
                Some(bytes) => batch.insert(&self.log, key, bytes),
                None => batch.remove(&self.log, key),
            }
        }
        for (key, value) in meta {
            match value {
                Some(bytes) => batch.insert(&self.meta, key, bytes),
                None => batch.remove(&self.meta, key),
            }
        }
        batch.commit()?;
        self.db.persist(PersistMode::SyncAll)?;
        Ok(())
    }

    /// Marks for deletion the entries of `group` in `first..=last`: those
    /// on disk and those written earlier in the batch.
    fn delete_log(
        &self,
        batch: &mut BTreeMap<LogKey, Option<&[u8]>>,
        group: u8,
        first: u64,
        last: u64,
    ) -> Result<()> {
        if first > last {
            return Ok(());
        }
        let range = log_key(group, first)..=log_key(group, last);
        for guard in self.log.range(range.clone()) {
            let key = guard.key()?;
            if let Ok(key) = LogKey::try_from(&*key) {
                batch.insert(key, None);
            }
        }
        for (_, value) in batch.range_mut(range) {
            *value = None;
        }
        Ok(())
    }

    /// The entries of `group` in `first..=last` that reached the disk, in
    /// order.
    pub(super) fn read_entries(
        &self,
        group: u8,
        first: u64,
        last: u64,
    ) -> Result<Vec<Entry<TypeConfig>>> {
        self.log
            .range(log_key(group, first)..=log_key(group, last))
            .map(|guard| decode(&guard.value()?))
            .collect()
    }

    /// The log id of the entry of `group` at `index` on disk, if any.
    pub(super) fn read_log_id(&self, group: u8, index: u64) -> Result<Option<LogId<u64>>> {
        let found = self.log.get(log_key(group, index))?;
        found.map(|v| decode::<Entry<TypeConfig>>(&v).map(|e| e.log_id)).transpose()
    }
}

/// Encodes a value for the disk.
pub(super) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    postcard::to_allocvec(value).map_err(|e| Error::InvalidData(format!("encode: {e}")))
}

/// Decodes a value from the disk.
pub(super) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    postcard::from_bytes(bytes).map_err(|e| Error::InvalidData(format!("decode: {e}")))
}

impl From<fjall::Error> for Error {
    fn from(error: fjall::Error) -> Self {
        match error {
            fjall::Error::Locked => {
                Error::Unavailable("the log store is open in another process or handle".into())
            }
            fjall::Error::Io(_) | fjall::Error::Storage(_) => Error::Io(error.to_string()),
            fjall::Error::Poisoned | fjall::Error::Unrecoverable => {
                Error::Unavailable(error.to_string())
            }
            other => Error::InvalidData(other.to_string()),
        }
    }
}
