//! One group's Raft storage as raft-rs reads it: the log's recent tail in
//! memory, older entries from the node's [`LogDb`], and the hard state,
//! configuration and snapshot the loop keeps up to date.
//!
//! The loop owns every `GroupStorage` and changes it only between readies:
//! it appends a ready's entries here *before* it hands the ready back
//! (`advance_append_async`), as raft-rs requires, and queues the matching
//! disk writes ([`Op`]) into the turn's batch. So memory is always ahead of
//! or equal to the disk, and the disk follows in the same order.
//!
//! Invariants:
//! - the log holds `first_index()..=last_index()`; `truncated` is the entry
//!   just before (compacted away, or the snapshot the group restored);
//! - `cache` holds a run of entries ending at `last_index()`; every entry
//!   before the cache is on disk, durably (the cache drops only persisted
//!   entries), so a disk read never misses an entry still in flight.

use std::cell::Cell;
use std::collections::VecDeque;
use std::sync::Arc;

use raft::prelude::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError};

use crate::logdb::{ApplyState, GroupRecord, LogDb, Op};

/// The index and term a new group's log starts after. Initial members are
/// created as if restored from a snapshot at this index, so any member that
/// joins later (whose log is empty) is sent a real snapshot, which carries
/// the configuration.
pub const INIT_INDEX: u64 = 5;
/// See [`INIT_INDEX`].
pub const INIT_TERM: u64 = 5;

/// How many applied and persisted entries the cache keeps for followers
/// that are a little behind.
const CACHE_KEEP: u64 = 256;

/// One group's storage.
pub struct GroupStorage {
    group: u8,
    db: Arc<LogDb>,
    hard_state: HardState,
    /// The configuration at the last checkpoint or snapshot: where raft-rs
    /// starts from after a restart (it is then replayed forward).
    conf_state: ConfState,
    truncated: (u64, u64),
    last: (u64, u64),
    cache: VecDeque<Entry>,
    /// Entries up to here are durable.
    persisted: u64,
    /// The state machine's checkpoint (index, term): raft-rs resumes
    /// applying after it.
    checkpoint: (u64, u64),
    /// The newest snapshot built for followers, if any.
    snapshot: Option<Snapshot>,
    /// Set when raft-rs asked for a snapshot newer than `snapshot`.
    wanted: Cell<u64>,
}

impl GroupStorage {
    /// A group with nothing stored: it waits for a leader to send it a snapshot.
    pub fn empty(group: u8, db: Arc<LogDb>) -> GroupStorage {
        GroupStorage::from_record(group, db, GroupRecord::default())
    }

    /// A group as stored.
    pub fn from_record(group: u8, db: Arc<LogDb>, record: GroupRecord) -> GroupStorage {
        let mut hard_state = record.hard_state;
        // The checkpoint is applied, so committed, even if the commit index
        // in the hard state (written lazily) lags it.
        hard_state.commit = hard_state.commit.max(record.applied.index).min(record.last.0);
        GroupStorage {
            group,
            db,
            hard_state,
            conf_state: record.applied.conf,
            truncated: record.truncated,
            last: record.last,
            cache: VecDeque::new(),
            persisted: record.last.0,
            checkpoint: if record.applied.index >= record.truncated.0 {
                (record.applied.index, record.applied.term)
            } else {
                record.truncated
            },
            snapshot: None,
            wanted: Cell::new(0),
        }
    }

    /// The state of a new group whose first voters are `voters`, and the ops
    /// that store it. `seen` is the group's hard state so far: a node asked
    /// to vote before it started the group keeps its term and vote (its log
    /// was empty, so nothing else is lost).
    pub fn bootstrap(&mut self, voters: Vec<u64>, seen: &HardState) -> [Op; 2] {
        let conf = ConfState { voters, ..Default::default() };
        let applied = ApplyState { index: INIT_INDEX, term: INIT_TERM, conf: conf.clone() };
        self.hard_state = if seen.term > INIT_TERM {
            HardState { term: seen.term, vote: seen.vote, commit: INIT_INDEX }
        } else {
            HardState { term: INIT_TERM, vote: 0, commit: INIT_INDEX }
        };
        self.conf_state = conf;
        self.truncated = (INIT_INDEX, INIT_TERM);
        self.last = (INIT_INDEX, INIT_TERM);
        self.persisted = INIT_INDEX;
        self.checkpoint = (INIT_INDEX, INIT_TERM);
        self.cache.clear();
        [Op::Snapshot { delete: None, applied }, Op::HardState(self.hard_state.clone())]
    }

    /// Whether the group has a configuration (it was bootstrapped, or
    /// restored from a snapshot).
    pub fn is_initialized(&self) -> bool {
        self.truncated.0 > 0 || self.last.0 > 0 || self.conf_state != ConfState::default()
    }

    /// The checkpoint this storage was opened at (or bootstrapped or
    /// restored to): where applying resumes.
    pub fn checkpoint(&self) -> (u64, u64) {
        self.checkpoint
    }

    /// The hard state as last set.
    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    /// Records a new hard state; returns the op that stores it.
    pub fn set_hard_state(&mut self, hs: HardState) -> Op {
        self.hard_state = hs.clone();
        Op::HardState(hs)
    }

    /// Appends a ready's entries, replacing any conflicting tail; returns the
    /// op that stores them.
    pub fn append(&mut self, entries: Vec<Entry>) -> Op {
        let first = entries.first().map(|e| e.index).expect("append of no entries");
        let new_last = entries.last().map(|e| (e.index, e.term)).expect("checked above");
        debug_assert!(first > self.truncated.0, "append below the log start");
        let mut delete = None;
        if first <= self.last.0 {
            // Entries the new ones replace, and any beyond their end.
            let cache_first = self.cache_first();
            if first >= cache_first {
                self.cache.truncate((first - cache_first) as usize);
            } else {
                self.cache.clear();
            }
            delete = Some((first, self.last.0));
            self.persisted = self.persisted.min(first - 1);
        }
        self.cache.extend(entries.iter().cloned());
        self.last = new_last;
        Op::Append { entries, delete }
    }

    /// Entries up to `index` are durable.
    pub fn persisted_to(&mut self, index: u64) {
        self.persisted = self.persisted.max(index.min(self.last.0));
    }

    /// Drops from memory the entries the state machine has applied, keeping
    /// a few for followers that are slightly behind.
    pub fn trim_cache(&mut self, applied: u64) {
        let upto = applied.saturating_sub(CACHE_KEEP).min(self.persisted);
        while self.cache.front().is_some_and(|e| e.index <= upto) {
            self.cache.pop_front();
        }
    }

    /// The index to compact to so that the entries kept up to `upto` hold at
    /// most about `max_bytes` (0: they already do).
    pub fn compact_point(&self, upto: u64, max_bytes: u64) -> u64 {
        self.db.compact_point(self.group, upto, max_bytes)
    }

    /// Compacts the log up to `index` (the caller made sure the state machine
    /// has durably applied it); returns the op, or `None` if there is
    /// nothing to drop.
    pub fn compact(&mut self, index: u64) -> Option<Op> {
        let index = index.min(self.persisted);
        if index <= self.truncated.0 {
            return None;
        }
        let term = raft::Storage::term(self, index).ok()?;
        let delete = (self.truncated.0 + 1, index);
        self.truncated = (index, term);
        while self.cache.front().is_some_and(|e| e.index <= index) {
            self.cache.pop_front();
        }
        Some(Op::Compact { delete, truncated: (index, term) })
    }

    /// Replaces the log with a snapshot's position; returns the op.
    pub fn apply_snapshot(&mut self, snapshot: &Snapshot) -> Op {
        let meta = snapshot.get_metadata();
        let conf = meta.get_conf_state().clone();
        let delete =
            (self.last.0 > self.truncated.0).then_some((self.truncated.0 + 1, self.last.0));
        self.truncated = (meta.index, meta.term);
        self.last = (meta.index, meta.term);
        self.persisted = meta.index;
        self.checkpoint = (meta.index, meta.term);
        self.cache.clear();
        self.hard_state.commit = self.hard_state.commit.max(meta.index);
        self.conf_state = conf.clone();
        Op::Snapshot { delete, applied: ApplyState { index: meta.index, term: meta.term, conf } }
    }

    /// Everything goes: returns the op that deletes it.
    pub fn remove(&mut self) -> Op {
        let delete =
            (self.last.0 > self.truncated.0).then_some((self.truncated.0 + 1, self.last.0));
        *self = GroupStorage::empty(self.group, self.db.clone());
        Op::Remove { delete }
    }

    /// The snapshot raft-rs hands followers, once built.
    pub fn set_snapshot(&mut self, snapshot: Snapshot) {
        if self.wanted.get() <= snapshot.get_metadata().index {
            self.wanted.set(0);
        }
        self.snapshot = Some(snapshot);
    }

    /// If raft-rs asked for a snapshot that is not there: the least index it
    /// must have.
    pub fn snapshot_wanted(&self) -> Option<u64> {
        match self.wanted.get() {
            0 => None,
            n => Some(n),
        }
    }

    /// The first index and last index of the log.
    pub fn bounds(&self) -> (u64, u64) {
        (self.truncated.0 + 1, self.last.0)
    }

    fn cache_first(&self) -> u64 {
        self.last.0 + 1 - self.cache.len() as u64
    }
}

impl raft::Storage for GroupStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(self.hard_state.clone(), self.conf_state.clone()))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let max_size = max_size.into().unwrap_or(u64::MAX);
        if low <= self.truncated.0 {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last.0 + 1 {
            panic!(
                "group {:02x}: entries up to {high} asked, the log ends at {}",
                self.group, self.last.0
            );
        }
        let cache_first = self.cache_first();
        let mut out = Vec::new();
        let mut size = 0u64;
        if low < cache_first {
            let upto = high.min(cache_first);
            out = self
                .db
                .entries(self.group, low, upto, max_size)
                .map_err(|e| raft::Error::Store(StorageError::Other(Box::new(e))))?;
            if (out.len() as u64) < upto - low {
                // Cut short by the size bound.
                return Ok(out);
            }
            size = out.iter().map(|e| e.data.len() as u64 + 16).sum();
        }
        let start = low.max(cache_first);
        if high > start {
            for e in self.cache.range((start - cache_first) as usize..(high - cache_first) as usize)
            {
                size += e.data.len() as u64 + 16;
                if !out.is_empty() && size > max_size {
                    break;
                }
                out.push(e.clone());
            }
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.truncated.0 {
            return Ok(self.truncated.1);
        }
        if idx < self.truncated.0 {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > self.last.0 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let cache_first = self.cache_first();
        if idx >= cache_first {
            return Ok(self.cache[(idx - cache_first) as usize].term);
        }
        match self.db.entries(self.group, idx, idx + 1, u64::MAX) {
            Ok(mut e) if e.len() == 1 => Ok(e.remove(0).term),
            Ok(_) => Err(raft::Error::Store(StorageError::Unavailable)),
            Err(e) => Err(raft::Error::Store(StorageError::Other(Box::new(e)))),
        }
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.truncated.0 + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last.0)
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        // A snapshot is useful only if the log goes on right after it, and
        // if its configuration has the recipient (raft-rs refuses to restore
        // one that does not: a member added after it was built).
        let least = request_index.max(self.truncated.0);
        let has = |s: &Snapshot| {
            let c = s.get_metadata().get_conf_state();
            [&c.voters, &c.learners, &c.voters_outgoing, &c.learners_next]
                .iter()
                .any(|ids| ids.contains(&to))
        };
        match &self.snapshot {
            Some(s) if s.get_metadata().index >= least && has(s) => Ok(s.clone()),
            _ => {
                self.wanted.set(least.max(1));
                Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::Storage as _;

    fn entry(index: u64, term: u64) -> Entry {
        Entry { index, term, data: vec![index as u8], ..Default::default() }
    }

    fn storage() -> (tempfile::TempDir, GroupStorage) {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Arc::new(LogDb::open(dir.path()).expect("open"));
        (dir, GroupStorage::empty(3, db))
    }

    #[test]
    fn appends_replace_a_conflicting_tail() {
        let (_dir, mut s) = storage();
        s.bootstrap(vec![1], &HardState::default());
        assert_eq!(s.bounds(), (6, 5));
        assert!(matches!(
            s.append((6..=9).map(|i| entry(i, 5)).collect()),
            Op::Append { delete: None, .. }
        ));
        match s.append(vec![entry(8, 6)]) {
            Op::Append { delete, .. } => assert_eq!(delete, Some((8, 9))),
            other => panic!("{other:?}"),
        }
        assert_eq!(s.bounds(), (6, 8));
        assert_eq!(s.term(8).expect("term"), 6);
        assert_eq!(s.term(5).expect("term"), 5);
        let got = s.entries(6, 9, None, GetEntriesContext::empty(false)).expect("entries");
        assert_eq!(
            got.iter().map(|e| (e.index, e.term)).collect::<Vec<_>>(),
            vec![(6, 5), (7, 5), (8, 6)]
        );
        assert!(s.entries(5, 7, None, GetEntriesContext::empty(false)).is_err());
    }

    #[test]
    fn entries_come_from_disk_once_dropped_from_the_cache() {
        let (_dir, mut s) = storage();
        s.bootstrap(vec![1], &HardState::default());
        let op = s.append((6..=400).map(|i| entry(i, 5)).collect());
        s.db.write(&[crate::logdb::Batch { ops: vec![(3, op)], sync: false }]).expect("write");
        s.persisted_to(400);
        s.trim_cache(400);
        assert!(s.cache.len() < 300);
        let got = s.entries(6, 401, None, GetEntriesContext::empty(false)).expect("entries");
        assert_eq!(got.len(), 395);
        assert!(got.windows(2).all(|w| w[1].index == w[0].index + 1));
        assert_eq!(s.term(7).expect("term"), 5);
        // Compaction moves the start.
        assert!(s.compact(100).is_some());
        assert_eq!(s.bounds(), (101, 400));
        assert_eq!(s.term(100).expect("term"), 5);
    }

    #[test]
    fn a_snapshot_is_asked_for_until_one_is_built() {
        let (_dir, mut s) = storage();
        s.bootstrap(vec![1, 2], &HardState::default());
        assert!(s.snapshot(0, 2).is_err());
        assert_eq!(s.snapshot_wanted(), Some(5));
        let mut snap = Snapshot::default();
        snap.mut_metadata().index = 7;
        snap.mut_metadata().mut_conf_state().voters = vec![1];
        s.set_snapshot(snap);
        // Node 2 is not in that snapshot's configuration: it needs a newer one.
        assert!(s.snapshot(0, 2).is_err());
        let mut snap = Snapshot::default();
        snap.mut_metadata().index = 8;
        snap.mut_metadata().mut_conf_state().voters = vec![1];
        snap.mut_metadata().mut_conf_state().learners = vec![2];
        s.set_snapshot(snap);
        assert_eq!(s.snapshot_wanted(), None);
        assert_eq!(s.snapshot(0, 2).expect("snapshot").get_metadata().index, 8);
    }
}
