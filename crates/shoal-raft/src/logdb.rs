//! The node's Raft log on disk: one fjall database for every group, written
//! by one thread, one batch (and at most one fsync) at a time.
//!
//! # Layout (format 2)
//!
//! - keyspace `format`: `"version" -> u32` (little endian). Format 1 was the
//!   earlier engine's; it is refused with [`Error::OldFormat`], never read.
//! - keyspace `log`: `group (1 byte) ++ index (8 bytes, big endian) ->
//!   [ENTRY_VERSION] ++ protobuf Entry`; big endian keeps a group's entries
//!   in index order.
//! - keyspace `meta`: `group ++ kind -> value`, each value starting with its
//!   own version byte:
//!   - [`HARD_STATE`]: protobuf `HardState` (term, vote, commit);
//!   - [`TRUNCATED`]: index and term of the last entry compacted away (or of
//!     the snapshot the group was restored from): the log starts after it;
//!   - [`APPLIED`]: the state machine's checkpoint: an index and term the
//!     state machine has durably applied, with the configuration
//!     (`ConfState`) in force at that index.
//!
//! # Writing
//!
//! The Raft loop turns each of its turns into one [`Batch`] of [`Op`]s (all
//! groups together) and hands it to the writer thread ([`Writer`]). The
//! writer takes every batch queued, writes them as one atomic fjall batch,
//! fsyncs the journal once if any of them must be durable, then reports each
//! batch done. Batches reach the disk in order and atomically, so after a
//! crash the disk holds a prefix of what was queued.
//!
//! Deletions are tombstones and fjall has no range delete, so every op that
//! deletes says exactly which indexes (the loop knows them).

use std::path::Path;
use std::sync::mpsc;
use std::thread::JoinHandle;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use prost::Message as _;
use raft::prelude::{ConfState, Entry, HardState};

/// The layout version this build writes and reads.
pub const FORMAT_VERSION: u32 = 2;
/// The version byte of a stored entry.
const ENTRY_VERSION: u8 = 1;
/// The version byte of every stored meta value.
const META_VERSION: u8 = 1;

/// Meta kind: the hard state.
const HARD_STATE: u8 = 0;
/// Meta kind: where the log starts.
const TRUNCATED: u8 = 1;
/// Meta kind: the state machine's checkpoint.
const APPLIED: u8 = 2;

/// The smallest journal bound fjall accepts (it panics below).
const MIN_JOURNAL_BYTES: u64 = 64 << 20;

/// Why the log could not be read or written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The disk failed; the node must stop.
    #[error("raft log i/o: {0}")]
    Io(String),
    /// Stored bytes are not what this build writes.
    #[error("raft log data: {0}")]
    InvalidData(String),
    /// The directory holds an older engine's log.
    #[error(
        "{dir} holds a Raft log written by Shoal's earlier replication engine (log format {found}); \
         this build reads format {FORMAT_VERSION} and does not convert it. Start this node with an \
         empty data directory (a cluster copies its replicas back), or run the release that wrote it"
    )]
    OldFormat {
        /// The log's directory.
        dir: String,
        /// The version found.
        found: u32,
    },
    /// Another process (or handle) has the log open.
    #[error("the raft log is open in another process")]
    Locked,
}

/// A `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<fjall::Error> for Error {
    fn from(error: fjall::Error) -> Self {
        match error {
            fjall::Error::Locked => Error::Locked,
            fjall::Error::Io(_) | fjall::Error::Storage(_) => Error::Io(error.to_string()),
            other => Error::InvalidData(other.to_string()),
        }
    }
}

/// The checkpoint of a group's state machine.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ApplyState {
    /// Applied (durably) up to this index.
    pub index: u64,
    /// The term of the entry at `index`.
    pub term: u64,
    /// The configuration in force at `index`.
    pub conf: ConfState,
}

/// What is stored of one group.
#[derive(Clone, Debug, Default)]
pub struct GroupRecord {
    /// Term, vote and commit index.
    pub hard_state: HardState,
    /// The log starts after this `(index, term)`.
    pub truncated: (u64, u64),
    /// The state machine's checkpoint.
    pub applied: ApplyState,
    /// The last entry's `(index, term)`, else `truncated`.
    pub last: (u64, u64),
}

impl GroupRecord {
    /// Whether anything at all is stored.
    pub fn is_empty(&self) -> bool {
        self.hard_state == HardState::default()
            && self.truncated == (0, 0)
            && self.applied == ApplyState::default()
            && self.last == (0, 0)
    }
}

/// One write of one group.
#[derive(Debug)]
pub enum Op {
    /// Entries to put at their indexes, after deleting the stored entries in
    /// `delete` (a conflicting tail the new entries replace).
    Append { entries: Vec<Entry>, delete: Option<(u64, u64)> },
    /// The hard state.
    HardState(HardState),
    /// A new checkpoint.
    Applied(ApplyState),
    /// Compaction: the entries in `delete` go, the log starts after `truncated`.
    Compact { delete: (u64, u64), truncated: (u64, u64) },
    /// A snapshot replaces the group's log: the entries in `delete` go, the
    /// log starts after the snapshot, which is also the checkpoint.
    Snapshot { delete: Option<(u64, u64)>, applied: ApplyState },
    /// Everything of the group goes.
    Remove { delete: Option<(u64, u64)> },
}

/// The writes of one turn of the Raft loop.
#[derive(Debug, Default)]
pub struct Batch {
    /// The writes, in order.
    pub ops: Vec<(u8, Op)>,
    /// Whether the batch must be durable before it is reported done
    /// (entries, votes, terms, snapshots); commit-index updates and
    /// checkpoints alone need not be.
    pub sync: bool,
}

impl Batch {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

type LogKey = [u8; 9];

fn log_key(group: u8, index: u64) -> LogKey {
    let mut key = [group; 9];
    key[1..].copy_from_slice(&index.to_be_bytes());
    key
}

/// Counters since open, for benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Batches written (each the writes of one or more loop turns).
    pub writes: u64,
    /// fsyncs.
    pub fsyncs: u64,
}

/// The database.
pub struct LogDb {
    db: Database,
    log: Keyspace,
    meta: Keyspace,
    writes: std::sync::atomic::AtomicU64,
    fsyncs: std::sync::atomic::AtomicU64,
}

impl LogDb {
    /// Opens or creates the log in `dir`.
    pub fn open(dir: &Path) -> Result<LogDb> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::Io(format!("create {}: {e}", dir.display())))?;
        let db = Database::builder(dir)
            .manual_journal_persist(true)
            .cache_size(32 << 20)
            .max_journaling_size(MIN_JOURNAL_BYTES * 2)
            .open()?;
        let format = db.keyspace("format", KeyspaceCreateOptions::default)?;
        let log = db.keyspace("log", KeyspaceCreateOptions::default)?;
        let meta = db.keyspace("meta", KeyspaceCreateOptions::default)?;
        match format.get("version")? {
            None => {
                format.insert("version", FORMAT_VERSION.to_le_bytes())?;
                db.persist(PersistMode::SyncAll)?;
            }
            Some(v) => {
                let found = <[u8; 4]>::try_from(&*v).map(u32::from_le_bytes).map_err(|_| {
                    Error::InvalidData(format!("{}: unreadable format marker", dir.display()))
                })?;
                if found != FORMAT_VERSION {
                    if found < FORMAT_VERSION {
                        return Err(Error::OldFormat { dir: dir.display().to_string(), found });
                    }
                    return Err(Error::InvalidData(format!(
                        "{}: log format {found} is newer than this build's ({FORMAT_VERSION})",
                        dir.display()
                    )));
                }
            }
        }
        Ok(LogDb { db, log, meta, writes: Default::default(), fsyncs: Default::default() })
    }

    /// Counters since open.
    pub fn stats(&self) -> LogStats {
        LogStats {
            writes: self.writes.load(std::sync::atomic::Ordering::Relaxed),
            fsyncs: self.fsyncs.load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// Reads what is stored of every group that has anything.
    pub fn load(&self) -> Result<Vec<(u8, GroupRecord)>> {
        let mut groups = Vec::new();
        for group in 0..=u8::MAX {
            if let Some(record) = self.load_group(group)? {
                groups.push((group, record));
            }
        }
        Ok(groups)
    }

    /// Reads what is stored of one group, if anything.
    pub fn load_group(&self, group: u8) -> Result<Option<GroupRecord>> {
        let get =
            |kind: u8| -> Result<Option<fjall::UserValue>> { Ok(self.meta.get([group, kind])?) };
        let mut record = GroupRecord::default();
        if let Some(v) = get(HARD_STATE)? {
            record.hard_state = decode_proto(&v, "hard state")?;
        }
        if let Some(v) = get(TRUNCATED)? {
            record.truncated = decode_pair(&v)?;
        }
        if let Some(v) = get(APPLIED)? {
            record.applied = decode_apply(&v)?;
        }
        record.last = record.truncated;
        let range = log_key(group, 0)..=log_key(group, u64::MAX);
        if let Some(guard) = self.log.range(range).next_back() {
            let entry = decode_entry(&guard.value()?)?;
            record.last = (entry.index, entry.term);
        }
        Ok((!record.is_empty()).then_some(record))
    }

    /// The stored entries of `group` in `low..high`, in order, up to about
    /// `max_bytes` (at least one).
    pub fn entries(&self, group: u8, low: u64, high: u64, max_bytes: u64) -> Result<Vec<Entry>> {
        let mut out = Vec::new();
        let mut size = 0u64;
        if low >= high {
            return Ok(out);
        }
        for guard in self.log.range(log_key(group, low)..log_key(group, high)) {
            let entry = decode_entry(&guard.value()?)?;
            size += entry.data.len() as u64 + entry.context.len() as u64 + 16;
            if !out.is_empty() && size > max_bytes {
                break;
            }
            out.push(entry);
        }
        Ok(out)
    }

    /// Writes `batches` as one atomic batch, then fsyncs if any must be durable.
    pub fn write(&self, batches: &[Batch]) -> Result<()> {
        if batches.iter().all(|b| b.ops.is_empty()) {
            return Ok(());
        }
        let mut batch = self.db.batch();
        let delete = |batch: &mut fjall::OwnedWriteBatch, group: u8, range: Option<(u64, u64)>| {
            if let Some((first, last)) = range {
                for index in first..=last {
                    batch.remove(&self.log, log_key(group, index));
                }
            }
        };
        for (group, op) in batches.iter().flat_map(|b| &b.ops) {
            let group = *group;
            match op {
                Op::Append { entries, delete: d } => {
                    delete(&mut batch, group, *d);
                    for entry in entries {
                        batch.insert(&self.log, log_key(group, entry.index), encode_entry(entry));
                    }
                }
                Op::HardState(hs) => {
                    batch.insert(&self.meta, [group, HARD_STATE], encode_proto(hs));
                }
                Op::Applied(applied) => {
                    batch.insert(&self.meta, [group, APPLIED], encode_apply(applied));
                }
                Op::Compact { delete: d, truncated } => {
                    delete(&mut batch, group, Some(*d));
                    batch.insert(&self.meta, [group, TRUNCATED], encode_pair(*truncated));
                }
                Op::Snapshot { delete: d, applied } => {
                    delete(&mut batch, group, *d);
                    let truncated = (applied.index, applied.term);
                    batch.insert(&self.meta, [group, TRUNCATED], encode_pair(truncated));
                    batch.insert(&self.meta, [group, APPLIED], encode_apply(applied));
                }
                Op::Remove { delete: d } => {
                    delete(&mut batch, group, *d);
                    for kind in [HARD_STATE, TRUNCATED, APPLIED] {
                        batch.remove(&self.meta, [group, kind]);
                    }
                }
            }
        }
        batch.commit()?;
        self.writes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if batches.iter().any(|b| b.sync) {
            self.fsyncs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.db.persist(PersistMode::SyncData)?;
        } else {
            self.db.persist(PersistMode::Buffer)?;
        }
        Ok(())
    }
}

fn encode_entry(entry: &Entry) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + entry.encoded_len());
    out.push(ENTRY_VERSION);
    entry.encode(&mut out).expect("a Vec grows as needed");
    out
}

fn decode_entry(bytes: &[u8]) -> Result<Entry> {
    match bytes.split_first() {
        Some((&ENTRY_VERSION, rest)) => {
            Entry::decode(rest).map_err(|e| Error::InvalidData(format!("entry: {e}")))
        }
        Some((v, _)) => Err(Error::InvalidData(format!("entry version {v} is unknown"))),
        None => Err(Error::InvalidData("empty entry".into())),
    }
}

fn encode_proto(m: &impl prost::Message) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + m.encoded_len());
    out.push(META_VERSION);
    m.encode(&mut out).expect("a Vec grows as needed");
    out
}

fn meta_body<'a>(bytes: &'a [u8], what: &str) -> Result<&'a [u8]> {
    match bytes.split_first() {
        Some((&META_VERSION, rest)) => Ok(rest),
        Some((v, _)) => Err(Error::InvalidData(format!("{what}: version {v} is unknown"))),
        None => Err(Error::InvalidData(format!("{what}: empty"))),
    }
}

fn decode_proto<M: prost::Message + Default>(bytes: &[u8], what: &str) -> Result<M> {
    M::decode(meta_body(bytes, what)?).map_err(|e| Error::InvalidData(format!("{what}: {e}")))
}

fn encode_pair((a, b): (u64, u64)) -> Vec<u8> {
    let mut out = Vec::with_capacity(17);
    out.push(META_VERSION);
    out.extend_from_slice(&a.to_le_bytes());
    out.extend_from_slice(&b.to_le_bytes());
    out
}

fn decode_pair(bytes: &[u8]) -> Result<(u64, u64)> {
    let body = meta_body(bytes, "truncated")?;
    pair(body).ok_or_else(|| Error::InvalidData("truncated: too short".into()))
}

fn pair(body: &[u8]) -> Option<(u64, u64)> {
    let a = u64::from_le_bytes(body.get(..8)?.try_into().ok()?);
    let b = u64::from_le_bytes(body.get(8..16)?.try_into().ok()?);
    Some((a, b))
}

fn encode_apply(a: &ApplyState) -> Vec<u8> {
    let mut out = encode_pair((a.index, a.term));
    a.conf.encode(&mut out).expect("a Vec grows as needed");
    out
}

fn decode_apply(bytes: &[u8]) -> Result<ApplyState> {
    let body = meta_body(bytes, "checkpoint")?;
    let (index, term) =
        pair(body).ok_or_else(|| Error::InvalidData("checkpoint: too short".into()))?;
    let conf = ConfState::decode(&body[16..])
        .map_err(|e| Error::InvalidData(format!("checkpoint: {e}")))?;
    Ok(ApplyState { index, term, conf })
}

/// A batch handed to the writer, and whom to tell when it is written.
struct Job {
    batch: Batch,
    id: u64,
}

/// The writer thread: writes batches in order, many per fsync.
pub struct Writer {
    tx: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    /// Starts the thread. `done(ids, result)` is called, in order, once the
    /// batches submitted with `ids` are written (and synced if they had to
    /// be): one call for all the batches one write covered.
    /// After a failure every later batch fails too: the node must stop.
    pub fn start(
        db: std::sync::Arc<LogDb>,
        done: impl Fn(Vec<u64>, Result<()>) + Send + 'static,
    ) -> std::io::Result<Writer> {
        let (tx, rx) = mpsc::channel::<Job>();
        let thread =
            std::thread::Builder::new().name("shoal-raft-log".into()).spawn(move || {
                let mut failed: Option<Error> = None;
                while let Ok(first) = rx.recv() {
                    let mut jobs = vec![first];
                    jobs.extend(rx.try_iter());
                    let (ids, batches): (Vec<u64>, Vec<Batch>) =
                        jobs.into_iter().map(|j| (j.id, j.batch)).unzip();
                    let result = match &failed {
                        Some(e) => Err(e.clone()),
                        None => db.write(&batches),
                    };
                    if let Err(e) = &result {
                        failed.get_or_insert_with(|| e.clone());
                    }
                    done(ids, result);
                }
            })?;
        Ok(Writer { tx: Some(tx), thread: Some(thread) })
    }

    /// Queues a batch.
    pub fn submit(&self, id: u64, batch: Batch) {
        if let Some(tx) = &self.tx {
            // The thread only stops once this sender is gone.
            let _ = tx.send(Job { batch, id });
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Closing the channel lets the thread write what is queued and stop.
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
        Entry { index, term, data: data.to_vec(), ..Default::default() }
    }

    #[test]
    fn writes_survive_a_reopen_and_deletes_take_effect() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let db = LogDb::open(dir.path()).expect("open");
            let hs = HardState { term: 3, vote: 7, commit: 2 };
            let batch = Batch {
                ops: vec![
                    (
                        4,
                        Op::Append {
                            entries: (1..=5).map(|i| entry(i, 3, b"x")).collect(),
                            delete: None,
                        },
                    ),
                    (4, Op::HardState(hs)),
                    (9, Op::Append { entries: vec![entry(1, 1, b"y")], delete: None }),
                ],
                sync: true,
            };
            db.write(&[batch]).expect("write");
            // A conflicting tail replaced, then compaction of the head.
            let replace = Batch {
                ops: vec![
                    (4, Op::Append { entries: vec![entry(4, 4, b"z")], delete: Some((4, 5)) }),
                    (4, Op::Compact { delete: (1, 2), truncated: (2, 3) }),
                    (9, Op::Remove { delete: Some((1, 1)) }),
                ],
                sync: true,
            };
            db.write(&[replace]).expect("write");
        }
        let db = LogDb::open(dir.path()).expect("reopen");
        let groups = db.load().expect("load");
        assert_eq!(groups.len(), 1, "group 9 was removed: {groups:?}");
        let (g, record) = &groups[0];
        assert_eq!(*g, 4);
        assert_eq!(record.hard_state.term, 3);
        assert_eq!(record.truncated, (2, 3));
        assert_eq!(record.last, (4, 4));
        let entries = db.entries(4, 0, 10, u64::MAX).expect("entries");
        let ids: Vec<(u64, u64)> = entries.iter().map(|e| (e.index, e.term)).collect();
        assert_eq!(ids, vec![(3, 3), (4, 4)]);
    }

    #[test]
    fn a_snapshot_resets_the_log_and_sets_the_checkpoint() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = LogDb::open(dir.path()).expect("open");
        let conf = ConfState { voters: vec![1, 2, 3], ..Default::default() };
        let append =
            Op::Append { entries: (1..=3).map(|i| entry(i, 1, b"a")).collect(), delete: None };
        let snap = Op::Snapshot {
            delete: Some((1, 3)),
            applied: ApplyState { index: 10, term: 2, conf: conf.clone() },
        };
        db.write(&[Batch { ops: vec![(1, append), (1, snap)], sync: true }]).expect("write");
        let (_, record) = db.load().expect("load").pop().expect("one group");
        assert_eq!(record.truncated, (10, 2));
        assert_eq!(record.last, (10, 2));
        assert_eq!(record.applied.conf, conf);
        assert!(db.entries(1, 0, 100, u64::MAX).expect("entries").is_empty());
    }

    #[test]
    fn an_older_format_is_refused_with_its_version() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let db = Database::builder(dir.path()).open().expect("fjall");
            let format = db.keyspace("format", KeyspaceCreateOptions::default).expect("ks");
            format.insert("version", 1u32.to_le_bytes()).expect("insert");
            db.persist(PersistMode::SyncAll).expect("persist");
        }
        match LogDb::open(dir.path()) {
            Err(e @ Error::OldFormat { found: 1, .. }) => {
                assert!(e.to_string().contains("log format 1"), "{e}")
            }
            Err(other) => panic!("wrong error: {other}"),
            Ok(_) => panic!("format 1 was opened"),
        }
    }
}
