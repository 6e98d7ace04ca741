//! The node's Raft log store: one store per node holds the log, vote,
//! committed id and applied checkpoint of every group (bucket) the node
//! hosts, and turns the appends of all groups into few durable commits.
//!
//! # Shape
//!
//! [`LogStore`] is the node-wide engine; [`LogStore::group`] hands out a
//! [`GroupLogStore`], the per-bucket handle that implements openraft's
//! [`RaftLogStorage`](openraft::storage::RaftLogStorage) and
//! [`RaftLogReader`](openraft::RaftLogReader). All groups share one fjall
//! database (an LSM tree with a single journal) in the store's directory,
//! with keys `(group, index)`; `disk` has the layout.
//!
//! # Group commit
//!
//! Every write (append, truncate, purge, vote, committed, checkpoint,
//! removal) becomes an operation in one node-wide FIFO queue. A single
//! writer thread takes everything queued, writes it as one atomic batch
//! and makes it durable (one fsync of the journal), then completes each
//! operation: it calls every append's `LogFlushed` callback and wakes every
//! caller that awaits durability. While one commit is being synced, the
//! writes of every group pile up and share the next one, so the number of
//! fsyncs per second stays bounded by the disk while the number of appends
//! grows with the number of busy groups. There is no timer: an idle store
//! commits a lone append at once.
//!
//! # In-memory view and its invariants
//!
//! Each group has a small in-memory state: vote, committed id, last purged
//! and last log id, the applied checkpoint, and `pending`, the entries that
//! were appended but not yet committed to disk. Callers update it under the
//! group's lock *and* enqueue the matching operation under that same lock,
//! so the memory view and the queue order agree per group. Hence:
//!
//! - reads see every write whose call has returned (openraft requires an
//!   appended entry to be readable when `append` returns, before its
//!   callback);
//! - `pending` is always a run of consecutive indexes ending at the last
//!   log index (Raft appends only after the last entry, and truncate and
//!   purge drop pending entries at once), so a read takes older entries
//!   from disk and newer ones from `pending`;
//! - an entry leaves `pending` only after the commit that holds it, so an
//!   entry missing from `pending` is on disk; a reader copies `pending`
//!   first and opens its disk snapshot after, and never misses one;
//! - commits follow queue order and are atomic, so after a crash the disk
//!   holds a prefix of the queued writes: whatever an acknowledged write
//!   depended on is there too.
//!
//! # Durability, per call
//!
//! - `append`: durable when its `LogFlushed` callback is called.
//! - `save_vote`, `truncate`, `purge`, [`LogStore::remove_group`]: durable
//!   when they return.
//! - `save_committed` and [`LogStore::save_applied`]: recorded in memory and
//!   queued without waking the writer; they reach the disk with the next
//!   commit, which any durable write of any group triggers (and a clean
//!   close flushes). So a checkpoint is durable no later than any durable
//!   write queued after it, and after a crash the stored value is one that
//!   was saved earlier, never one from the future.
//!
//! # Failure
//!
//! A failed commit is fail-stop: every operation in it and every later one
//! fails, and the node must restart (reopening recovers the last good
//! commit). Retrying in place could reorder writes, which Raft forbids.

mod disk;
mod group;
mod writer;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use openraft::{BasicNode, Entry, LogId, StoredMembership, Vote};
use tokio::sync::oneshot;

pub use group::GroupLogStore;

use crate::TypeConfig;
use writer::{Done, Op, Queue, Write};

/// The result of a log store operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong in the log store, named by what the caller does next.
///
/// Cloneable because one failed commit fails every operation it carried.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Reading or writing the store's files failed: check the disk, then
    /// restart the node.
    #[error("log store I/O failed: {0}")]
    Io(String),
    /// The store holds data this version cannot read (corrupt, or another
    /// format version): an operator must look at it.
    #[error("log store data is invalid: {0}")]
    InvalidData(String),
    /// The store stopped taking writes after an earlier failure, or is
    /// already open elsewhere: restart the node.
    #[error("log store is unavailable: {0}")]
    Unavailable(String),
}

/// Tunables of a [`LogStore`].
#[derive(Clone, Debug)]
pub struct LogStoreOptions {
    /// Memory the engine may use to cache blocks of the log, in bytes.
    /// Recent entries, the ones replication reads, are also held in the
    /// engine's write buffer until it is flushed.
    pub cache_bytes: u64,
    /// Bound on the journal, in bytes: past it the engine flushes its write
    /// buffers to sorted files and drops old journal files. It bounds the
    /// replay on open after a crash, and the disk the journal holds. At
    /// least 64 MiB (the engine's minimum; smaller values are raised).
    pub max_journal_bytes: u64,
    /// Upper bound on the encoded bytes one commit writes, in bytes. The
    /// writer takes queued operations in order until it would exceed this
    /// (always at least one), so a burst of large entries is split into
    /// several commits instead of delaying every waiter behind one.
    pub max_batch_bytes: usize,
}

impl Default for LogStoreOptions {
    fn default() -> Self {
        Self { cache_bytes: 64 << 20, max_journal_bytes: 128 << 20, max_batch_bytes: 16 << 20 }
    }
}

/// Counters since the store was opened; they show group commit at work.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogStoreStats {
    /// Calls to `append`, all groups together.
    pub appends: u64,
    /// Log entries written by those appends.
    pub entries: u64,
    /// Encoded bytes of those entries.
    pub bytes: u64,
    /// Durable commits of the writer, each one fsync of the journal.
    pub fsyncs: u64,
    /// Operations the commits carried (appends, votes, truncations, ...).
    pub ops: u64,
}

/// The node's log store: one per node, shared by all its groups.
///
/// Cheap to clone (an `Arc` inside). The writer thread stops, after
/// committing what is queued, when the last clone and the last
/// [`GroupLogStore`] are dropped; that drop waits for the commit.
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Inner>,
}

/// Owns the writer thread; dropping it closes the queue and joins it.
struct Inner {
    shared: Arc<Shared>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

/// What the callers and the writer thread share.
struct Shared {
    disk: disk::Disk,
    groups: Vec<Mutex<GroupState>>,
    queue: Queue,
    stats: Counters,
    /// Set once, by the first failed commit; every later operation fails.
    failed: Mutex<Option<Error>>,
    /// Tags each append so that the writer drops from `pending` only the
    /// entries it wrote, not newer ones that replaced them at the same index.
    next_seq: AtomicU64,
}

#[derive(Default)]
struct Counters {
    appends: AtomicU64,
    entries: AtomicU64,
    bytes: AtomicU64,
    fsyncs: AtomicU64,
    ops: AtomicU64,
}

impl Counters {
    fn record_commit(&self, ops: usize) {
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.ops.fetch_add(ops as u64, Ordering::Relaxed);
    }
}

/// The applied checkpoint of a group's state machine.
type Applied = (Option<LogId<u64>>, StoredMembership<u64, BasicNode>);

/// One group's state as of every call that has returned.
#[derive(Default)]
struct GroupState {
    vote: Option<Vote<u64>>,
    committed: Option<LogId<u64>>,
    last_purged: Option<LogId<u64>>,
    /// The last log id: of the last entry, else `last_purged`.
    last_log: Option<LogId<u64>>,
    applied: Option<Applied>,
    /// Entries appended but not yet committed, by index, with their append's
    /// sequence number.
    pending: BTreeMap<u64, (u64, Entry<TypeConfig>)>,
}

impl GroupState {
    fn has_state(&self) -> bool {
        self.vote.is_some()
            || self.committed.is_some()
            || self.last_log.is_some()
            || self.applied.is_some()
    }
}

impl LogStore {
    /// Opens the store in directory `path` (created if missing), loads every
    /// group's state, and starts the writer thread.
    ///
    /// The writer is a plain thread, so this works inside or outside a
    /// tokio runtime. Only one `LogStore` may have a directory open at a
    /// time: a second open fails with [`Error::Unavailable`].
    pub fn open(path: &Path, options: LogStoreOptions) -> Result<LogStore> {
        std::fs::create_dir_all(path)
            .map_err(|e| Error::Io(format!("create {}: {e}", path.display())))?;
        let disk = disk::Disk::open(path, &options)?;
        let groups = disk.load()?.into_iter().map(Mutex::new).collect();
        let shared = Arc::new(Shared {
            disk,
            groups,
            queue: Queue::new(options.max_batch_bytes),
            stats: Counters::default(),
            failed: Mutex::new(None),
            next_seq: AtomicU64::new(1),
        });
        let writer = writer::spawn(shared.clone())?;
        Ok(LogStore { inner: Arc::new(Inner { shared, writer: Mutex::new(Some(writer)) }) })
    }

    /// The handle of one group, for openraft. Handles are cheap; any number
    /// may exist, but the group's writes must come from one Raft instance.
    pub fn group(&self, group: u8) -> GroupLogStore {
        GroupLogStore::new(self.inner.clone(), group)
    }

    /// The groups that have any state (a vote, a log, a committed id or an
    /// applied checkpoint), in order: what a restarting node must reopen.
    pub fn groups(&self) -> Result<Vec<u8>> {
        self.inner.shared.check()?;
        Ok((0..=u8::MAX).filter(|&g| self.inner.shared.lock(g).has_state()).collect())
    }

    /// Forgets a group entirely: log, vote, committed id and checkpoint.
    /// Durable when it returns. Stop the group's Raft first: a write of the
    /// group queued after this one would bring it back.
    pub async fn remove_group(&self, group: u8) -> Result<()> {
        let shared = &self.inner.shared;
        let rx = {
            let mut state = shared.lock(group);
            *state = GroupState::default();
            shared.submit_waited(group, Write::Remove)?
        };
        writer::wait(rx).await
    }

    /// Records the state machine's checkpoint: the last applied log id and
    /// the membership in force there.
    ///
    /// Lazy: it returns without waiting for a commit, and is written by
    /// the next commit, which the next durable write of any group triggers.
    /// What is guaranteed: [`LogStore::read_applied`] sees it at once; it is
    /// durable no later than any append, vote, truncate or purge queued
    /// after it (so save it before a purge that depends on it and the purge
    /// can never outlive it); after a crash, the stored checkpoint is one
    /// that was saved, possibly an older one. A state machine that persists
    /// its own applied index must therefore accept replays from an older
    /// checkpoint, which [`crate::StateMachine`] already requires.
    pub async fn save_applied(
        &self,
        group: u8,
        applied: Option<LogId<u64>>,
        membership: &StoredMembership<u64, BasicNode>,
    ) -> Result<()> {
        let shared = &self.inner.shared;
        let checkpoint = (applied, membership.clone());
        let value = disk::encode(&checkpoint)?;
        let mut state = shared.lock(group);
        state.applied = Some(checkpoint);
        shared.submit_lazy(group, Write::Meta { kind: disk::APPLIED, value })
    }

    /// The last checkpoint saved with [`LogStore::save_applied`], or
    /// `(None, default)` for a group that has none.
    pub async fn read_applied(
        &self,
        group: u8,
    ) -> Result<(Option<LogId<u64>>, StoredMembership<u64, BasicNode>)> {
        self.inner.shared.check()?;
        Ok(self.inner.shared.lock(group).applied.clone().unwrap_or_default())
    }

    /// The counters since open.
    pub fn stats(&self) -> LogStoreStats {
        let c = &self.inner.shared.stats;
        LogStoreStats {
            appends: c.appends.load(Ordering::Relaxed),
            entries: c.entries.load(Ordering::Relaxed),
            bytes: c.bytes.load(Ordering::Relaxed),
            fsyncs: c.fsyncs.load(Ordering::Relaxed),
            ops: c.ops.load(Ordering::Relaxed),
        }
    }
}

impl Shared {
    fn lock(&self, group: u8) -> MutexGuard<'_, GroupState> {
        // A panic while holding a group's lock leaves the state it guarded
        // consistent enough to read (every update is a plain assignment).
        self.groups[usize::from(group)].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Fails if an earlier commit failed.
    fn check(&self) -> Result<()> {
        match &*self.failed.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    fn fail(&self, error: &Error) {
        let mut failed = self.failed.lock().unwrap_or_else(|e| e.into_inner());
        if failed.is_none() {
            tracing::error!(%error, "log store commit failed; the store takes no more writes");
            *failed = Some(match error {
                Error::Unavailable(_) => error.clone(),
                other => Error::Unavailable(format!("an earlier commit failed: {other}")),
            });
        }
    }

    /// Queues a write that need not be durable before anyone waits for it.
    /// Call with the group's lock held.
    fn submit_lazy(&self, group: u8, write: Write) -> Result<()> {
        self.check()?;
        self.queue.push(Op { group, write, done: Done::Nothing });
        Ok(())
    }

    /// Queues a write and returns what its durable commit will send.
    /// Call with the group's lock held.
    fn submit_waited(&self, group: u8, write: Write) -> Result<oneshot::Receiver<Result<()>>> {
        self.check()?;
        let (tx, rx) = oneshot::channel();
        self.queue.push(Op { group, write, done: Done::Reply(tx) });
        Ok(rx)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shared.queue.close();
        let handle = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(Err(_)) = handle.map(JoinHandle::join) {
            tracing::error!("log store writer thread panicked");
        }
    }
}
