//! [`GroupLogStore`]: one group's view of the node's [`LogStore`], and its
//! openraft storage traits.
//!
//! Every method updates the group's in-memory state and queues the write
//! under the group's lock (see the parent module for why), then, where the
//! call must be durable, awaits the commit outside the lock.
//!
//! [`LogStore`]: super::LogStore

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    AnyError, Entry, LogId, LogIdOptionExt, OptionalSend, RaftLogReader, StorageError,
    StorageIOError, Vote,
};

use super::writer::{Done, Op, Write, wait};
use super::{Error, Inner, Result, Shared, disk};
use crate::TypeConfig;

/// One group's log store: a handle on the node's [`LogStore`](super::LogStore)
/// for openraft. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct GroupLogStore {
    inner: Arc<Inner>,
    group: u8,
}

impl GroupLogStore {
    pub(super) fn new(inner: Arc<Inner>, group: u8) -> GroupLogStore {
        GroupLogStore { inner, group }
    }

    /// The group this handle serves.
    pub fn group(&self) -> u8 {
        self.group
    }

    fn shared(&self) -> &Shared {
        &self.inner.shared
    }

    /// The entries in `range` that exist: committed ones from disk, then
    /// pending ones from memory.
    fn read(&self, range: &impl RangeBounds<u64>) -> Result<Vec<Entry<TypeConfig>>> {
        let shared = self.shared();
        shared.check()?;
        let (first, last, pending) = {
            let state = shared.lock(self.group);
            let first = match range.start_bound() {
                Bound::Included(&i) => i,
                Bound::Excluded(&i) => i.saturating_add(1),
                Bound::Unbounded => 0,
            }
            .max(state.last_purged.next_index());
            let end = match range.end_bound() {
                Bound::Included(&i) => Some(i),
                Bound::Excluded(&i) => i.checked_sub(1),
                Bound::Unbounded => Some(u64::MAX),
            };
            let last = match (end, state.last_log) {
                (Some(end), Some(last_log)) => end.min(last_log.index),
                _ => return Ok(Vec::new()),
            };
            if first > last {
                return Ok(Vec::new());
            }
            let pending: Vec<_> =
                state.pending.range(first..=last).map(|(_, (_, e))| e.clone()).collect();
            (first, last, pending)
        };
        // Pending entries are a suffix of the log: everything before the
        // first of them is on disk (and was already when we copied them).
        let on_disk_last = match pending.first() {
            Some(e) => e.log_id.index.checked_sub(1),
            None => Some(last),
        };
        let mut entries = match on_disk_last {
            Some(on_disk_last) if first <= on_disk_last => {
                shared.disk.read_entries(self.group, first, on_disk_last)?
            }
            _ => Vec::new(),
        };
        entries.extend(pending);
        Ok(entries)
    }

    fn append_entries(
        &self,
        entries: impl IntoIterator<Item = Entry<TypeConfig>>,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<()> {
        let shared = self.shared();
        let mut encoded = Vec::new();
        let mut decoded = Vec::new();
        for entry in entries {
            encoded.push((entry.log_id.index, disk::encode(&entry)?));
            decoded.push(entry);
        }
        let count = encoded.len() as u64;
        let bytes = encoded.iter().map(|(_, b)| b.len() as u64).sum::<u64>();
        let seq = shared.next_seq.fetch_add(1, Ordering::Relaxed);
        {
            let mut state = shared.lock(self.group);
            shared.check()?;
            if let Some(last) = decoded.last() {
                state.last_log = Some(last.log_id);
            }
            for entry in decoded {
                state.pending.insert(entry.log_id.index, (seq, entry));
            }
            let write = Write::Append { seq, entries: encoded };
            shared.queue.push(Op { group: self.group, write, done: Done::Flushed(callback) });
        }
        shared.stats.appends.fetch_add(1, Ordering::Relaxed);
        shared.stats.entries.fetch_add(count, Ordering::Relaxed);
        shared.stats.bytes.fetch_add(bytes, Ordering::Relaxed);
        Ok(())
    }

    async fn truncate_from(&self, from: u64) -> Result<()> {
        let shared = self.shared();
        let rx = {
            let mut state = shared.lock(self.group);
            drop(state.pending.split_off(&from));
            if from < state.last_log.next_index() {
                // The new last entry is at `from - 1`: pending if recent,
                // else on disk (it left `pending` only after its commit).
                let previous = match from.checked_sub(1) {
                    None => None,
                    Some(i) => match state.pending.get(&i) {
                        Some((_, e)) => Some(e.log_id),
                        None => shared.disk.read_log_id(self.group, i)?,
                    },
                };
                state.last_log = previous.or(state.last_purged);
            }
            shared.submit_waited(self.group, Write::Truncate { from })?
        };
        wait(rx).await
    }

    async fn purge_upto(&self, log_id: LogId<u64>) -> Result<()> {
        let shared = self.shared();
        let value = disk::encode(&log_id)?;
        let rx = {
            let mut state = shared.lock(self.group);
            if state.last_purged.is_some_and(|p| p.index >= log_id.index) {
                // Already purged that far, durably (purge awaits its commit):
                // never move the purge point back.
                return Ok(());
            }
            state.pending = match log_id.index.checked_add(1) {
                Some(keep) => state.pending.split_off(&keep),
                None => Default::default(),
            };
            let from = state.last_purged.next_index();
            state.last_purged = Some(log_id);
            if state.last_log.is_none_or(|l| l.index < log_id.index) {
                state.last_log = Some(log_id);
            }
            shared.submit_waited(self.group, Write::Purge { from, upto: log_id.index, value })?
        };
        wait(rx).await
    }

    async fn write_vote(&self, vote: &Vote<u64>) -> Result<()> {
        let shared = self.shared();
        let value = disk::encode(vote)?;
        let rx = {
            let mut state = shared.lock(self.group);
            state.vote = Some(*vote);
            shared.submit_waited(self.group, Write::Meta { kind: disk::VOTE, value })?
        };
        wait(rx).await
    }

    fn write_committed(&self, committed: Option<LogId<u64>>) -> Result<()> {
        let shared = self.shared();
        let value = disk::encode(&committed)?;
        let mut state = shared.lock(self.group);
        state.committed = committed;
        shared.submit_lazy(self.group, Write::Meta { kind: disk::COMMITTED, value })
    }
}

fn read_error(e: Error) -> StorageError<u64> {
    StorageIOError::read_logs(AnyError::new(&e)).into()
}

fn write_error(e: Error) -> StorageError<u64> {
    StorageIOError::write_logs(AnyError::new(&e)).into()
}

impl RaftLogReader<TypeConfig> for GroupLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<u64>> {
        self.read(&range).map_err(read_error)
    }
}

impl RaftLogStorage<TypeConfig> for GroupLogStore {
    type LogReader = GroupLogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<u64>> {
        self.shared().check().map_err(read_error)?;
        let state = self.shared().lock(self.group);
        Ok(LogState { last_purged_log_id: state.last_purged, last_log_id: state.last_log })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError<u64>> {
        self.write_vote(vote)
            .await
            .map_err(|e| StorageIOError::write_vote(AnyError::new(&e)).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError<u64>> {
        self.shared().check().map_err(|e| StorageIOError::read_vote(AnyError::new(&e)))?;
        Ok(self.shared().lock(self.group).vote)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<u64>>,
    ) -> Result<(), StorageError<u64>> {
        self.write_committed(committed).map_err(write_error)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<u64>>, StorageError<u64>> {
        self.shared().check().map_err(read_error)?;
        Ok(self.shared().lock(self.group).committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<u64>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        self.append_entries(entries, callback).map_err(write_error)
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        self.truncate_from(log_id.index).await.map_err(write_error)
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        self.purge_upto(log_id).await.map_err(write_error)
    }
}
