//! The node's Raft log on disk: segment files written by one thread, one
//! batch (and at most one fsync) at a time, for every group of the node.
//!
//! # Layout (format 2)
//!
//! The directory holds `wal-{seq}.log` segments (`seq` as 16 hex digits).
//! Each starts with `SHOALLOG` and the format version (`u32` little endian,
//! 2), then records:
//!
//! ```text
//! record  = len:u32le crc32:u32le payload      (crc32 of the payload)
//! payload = kind:u8 group:u8 body
//! ```
//!
//! | kind | body | effect on the group |
//! |---|---|---|
//! | 1 entries | count:u32, then per entry len:u32 + protobuf Entry | drops its entries from the first one's index on, appends these |
//! | 2 hard state | protobuf HardState | sets term, vote, commit |
//! | 3 checkpoint | index:u64 term:u64 + protobuf ConfState | sets the checkpoint |
//! | 4 compact | index:u64 term:u64 | drops entries up to index; the log starts after it |
//! | 5 snapshot | index:u64 term:u64 + protobuf ConfState | drops every entry; the log starts after it, which is the checkpoint |
//! | 6 remove | nothing | forgets the group |
//! | 7 image | the group's whole state | replaces it (written when a segment rotates) |
//!
//! A directory written by the earlier engine (a fjall database, log format
//! 1) is refused with [`Error::OldFormat`], never read.
//!
//! # Writing
//!
//! The Raft loop turns each of its turns into one [`Batch`] of [`Op`]s (all
//! groups together) and hands it to the writer thread ([`Writer`]), which
//! takes every batch queued, appends their records to the active segment
//! with one write, and fdatasyncs once if any must be durable. Records reach
//! the file in order, so after a crash the log holds a prefix of what was
//! queued; a torn last record (the crash hit the write) is cut off when the
//! log is opened, while a bad record anywhere else is an error.
//!
//! The log also keeps, in memory, everything its records describe: every
//! group's hard state, log start, checkpoint and entries (the loop compacts
//! entries behind each checkpoint, so this stays small). Reads of entries
//! come from there. When the records appended to the active segment pass
//! [`SEGMENT_BYTES`] (and the size of the image it started with), the
//! writer starts a new one with an image of every group, syncs it, and
//! deletes the older segments: the log's size on disk follows what is live,
//! and each byte appended is rewritten at most about once.
//!
//! Why not an embedded key-value store: the earlier log kept entries in
//! fjall, whose memtable (a skiplist insert per entry, then a tombstone at
//! compaction) and allocations cost about 5 µs per entry per node, as much
//! as the fsync; appending records costs a copy.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock, mpsc};
use std::thread::JoinHandle;

use raft::prelude::{ConfState, Entry, HardState};

/// The layout version this build writes and reads.
pub const FORMAT_VERSION: u32 = 2;
/// What every segment starts with, before the version.
const MAGIC: &[u8; 8] = b"SHOALLOG";
/// A segment past this size is rotated.
pub const SEGMENT_BYTES: u64 = 64 << 20;

const ENTRIES: u8 = 1;
const HARD_STATE: u8 = 2;
const CHECKPOINT: u8 = 3;
const COMPACT: u8 = 4;
const SNAPSHOT: u8 = 5;
const REMOVE: u8 = 6;
const IMAGE: u8 = 7;

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
}

/// A `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io(what: &str, e: std::io::Error) -> Error {
    Error::Io(format!("{what}: {e}"))
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

/// Counters since open, for benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Batches written (each the writes of one or more loop turns).
    pub writes: u64,
    /// fsyncs.
    pub fsyncs: u64,
}

/// What the log holds of one group.
#[derive(Clone, Debug, Default)]
struct Mirror {
    hard_state: HardState,
    truncated: (u64, u64),
    applied: ApplyState,
    /// The entries after `truncated`, in order.
    entries: VecDeque<Entry>,
}

impl Mirror {
    fn record(&self) -> GroupRecord {
        let last = self.entries.back().map_or(self.truncated, |e| (e.index, e.term));
        GroupRecord {
            hard_state: self.hard_state.clone(),
            truncated: self.truncated,
            applied: self.applied.clone(),
            last,
        }
    }

    fn append(&mut self, entries: impl IntoIterator<Item = Entry>) {
        let mut entries = entries.into_iter().peekable();
        let Some(first) = entries.peek().map(|e| e.index) else { return };
        // The new entries replace any from their first index on.
        if let Some(front) = self.entries.front().map(|e| e.index) {
            self.entries.truncate(first.saturating_sub(front) as usize);
        }
        self.entries.extend(entries);
    }

    fn compact(&mut self, index: u64, term: u64) {
        while self.entries.front().is_some_and(|e| e.index <= index) {
            self.entries.pop_front();
        }
        self.truncated = (index, term);
    }
}

/// The segment being written.
struct Active {
    file: File,
    seq: u64,
    size: u64,
    /// The bytes of the image the segment starts with (0 when unknown).
    image: u64,
}

/// The log of one node.
pub struct LogDb {
    dir: PathBuf,
    segment_bytes: u64,
    active: Mutex<Active>,
    groups: RwLock<BTreeMap<u8, Mirror>>,
    writes: AtomicU64,
    fsyncs: AtomicU64,
}

fn segment_name(seq: u64) -> String {
    format!("wal-{seq:016x}.log")
}

fn segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| io("list the log", e))? {
        let e = e.map_err(|e| io("list the log", e))?;
        let name = e.file_name().to_string_lossy().to_string();
        if let Some(seq) = name
            .strip_prefix("wal-")
            .and_then(|n| n.strip_suffix(".log"))
            .and_then(|n| u64::from_str_radix(n, 16).ok())
        {
            out.push((seq, e.path()));
        }
    }
    out.sort();
    Ok(out)
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io("sync the log directory", e))
}

impl LogDb {
    /// Opens or creates the log in `dir`: reads every segment, cutting off a
    /// torn last record.
    pub fn open(dir: &Path) -> Result<LogDb> {
        LogDb::open_with(dir, SEGMENT_BYTES)
    }

    /// [`LogDb::open`], with segments rotated past `segment_bytes`.
    pub fn open_with(dir: &Path, segment_bytes: u64) -> Result<LogDb> {
        std::fs::create_dir_all(dir).map_err(|e| io(&format!("create {}", dir.display()), e))?;
        // The earlier engine's log was a fjall database.
        if dir.join("keyspaces").exists() || dir.join("journals").exists() {
            return Err(Error::OldFormat { dir: dir.display().to_string(), found: 1 });
        }
        let mut groups = BTreeMap::new();
        let found = segments(dir)?;
        let last_seq = found.last().map(|(seq, _)| *seq);
        for (seq, path) in &found {
            let mut bytes = Vec::new();
            File::open(path)
                .and_then(|mut f| f.read_to_end(&mut bytes))
                .map_err(|e| io(&format!("read {}", path.display()), e))?;
            let good = replay(&bytes, &mut groups)
                .map_err(|e| Error::InvalidData(format!("{}: {e}", path.display())))?;
            if good < bytes.len() {
                if Some(*seq) != last_seq {
                    return Err(Error::InvalidData(format!(
                        "{}: a bad record at byte {good}, in a segment that is not the last",
                        path.display()
                    )));
                }
                tracing::warn!(segment = %path.display(), at = good, "cutting off a torn record at the end of the Raft log");
                let f = OpenOptions::new().write(true).open(path).map_err(|e| io("open", e))?;
                f.set_len(good as u64)
                    .and_then(|()| f.sync_all())
                    .map_err(|e| io("cut the log", e))?;
            }
        }
        let active = match found.last() {
            Some((seq, path)) => {
                let file = OpenOptions::new().append(true).open(path).map_err(|e| io("open", e))?;
                let size = file.metadata().map_err(|e| io("stat", e))?.len();
                Active { file, seq: *seq, size, image: 0 }
            }
            None => new_segment(dir, 1)?,
        };
        Ok(LogDb {
            dir: dir.to_path_buf(),
            segment_bytes,
            active: Mutex::new(active),
            groups: RwLock::new(groups),
            writes: AtomicU64::new(0),
            fsyncs: AtomicU64::new(0),
        })
    }

    /// Counters since open.
    pub fn stats(&self) -> LogStats {
        LogStats {
            writes: self.writes.load(Ordering::Relaxed),
            fsyncs: self.fsyncs.load(Ordering::Relaxed),
        }
    }

    fn read_groups(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<u8, Mirror>> {
        self.groups.read().unwrap_or_else(|e| e.into_inner())
    }

    /// What is stored of every group that has anything.
    pub fn load(&self) -> Result<Vec<(u8, GroupRecord)>> {
        Ok(self
            .read_groups()
            .iter()
            .map(|(g, m)| (*g, m.record()))
            .filter(|(_, r)| !r.is_empty())
            .collect())
    }

    /// What is stored of one group, if anything.
    pub fn load_group(&self, group: u8) -> Result<Option<GroupRecord>> {
        Ok(self.read_groups().get(&group).map(Mirror::record).filter(|r| !r.is_empty()))
    }

    /// The index to compact `group`'s log to so that the entries kept up to
    /// `upto` hold at most about `max_bytes` (0: they already do).
    pub fn compact_point(&self, group: u8, upto: u64, max_bytes: u64) -> u64 {
        let groups = self.read_groups();
        let Some(m) = groups.get(&group) else { return 0 };
        let mut size = 0u64;
        for e in m.entries.iter().rev().skip_while(|e| e.index > upto) {
            size += e.data.len() as u64 + e.context.len() as u64 + 16;
            if size > max_bytes {
                return e.index;
            }
        }
        0
    }

    /// The stored entries of `group` in `low..high`, in order, up to about
    /// `max_bytes` (at least one).
    pub fn entries(&self, group: u8, low: u64, high: u64, max_bytes: u64) -> Result<Vec<Entry>> {
        let groups = self.read_groups();
        let Some(m) = groups.get(&group) else { return Ok(Vec::new()) };
        let start = m.entries.front().map_or(0, |e| e.index);
        let mut out = Vec::new();
        let mut size = 0u64;
        for e in m.entries.iter().skip(low.saturating_sub(start) as usize) {
            if e.index >= high {
                break;
            }
            size += e.data.len() as u64 + e.context.len() as u64 + 16;
            if !out.is_empty() && size > max_bytes {
                break;
            }
            out.push(e.clone());
        }
        Ok(out)
    }

    /// Appends `batches`' records with one write, fdatasyncs if any must be
    /// durable, then applies them to what the log holds in memory.
    pub fn write(&self, batches: &[Batch]) -> Result<()> {
        if batches.iter().all(|b| b.ops.is_empty()) {
            return Ok(());
        }
        let mut buf = Vec::with_capacity(4096);
        for (group, op) in batches.iter().flat_map(|b| &b.ops) {
            encode_op(&mut buf, *group, op);
        }
        let sync = batches.iter().any(|b| b.sync);
        let mut active = self.active.lock().unwrap_or_else(|e| e.into_inner());
        active.file.write_all(&buf).map_err(|e| io("write the log", e))?;
        active.size += buf.len() as u64;
        self.writes.fetch_add(1, Ordering::Relaxed);
        if sync {
            self.fsyncs.fetch_add(1, Ordering::Relaxed);
            active.file.sync_data().map_err(|e| io("sync the log", e))?;
        }
        {
            let mut groups = self.groups.write().unwrap_or_else(|e| e.into_inner());
            for (group, op) in batches.iter().flat_map(|b| &b.ops) {
                apply_op(&mut groups, *group, op);
            }
        }
        // Rotated once the records appended since the image outgrow both the
        // segment size and the image itself: a large live log (big entries
        // not yet compacted) is rewritten at most once per as many bytes
        // appended, never on every write.
        if active.size - active.image > self.segment_bytes.max(active.image) {
            self.rotate(&mut active)?;
        }
        Ok(())
    }

    /// Starts a new segment with an image of every group, then deletes the
    /// older ones.
    fn rotate(&self, active: &mut Active) -> Result<()> {
        let mut next = new_segment(&self.dir, active.seq + 1)?;
        let mut buf = Vec::new();
        for (group, m) in self.read_groups().iter() {
            encode_image(&mut buf, *group, m);
        }
        next.file.write_all(&buf).map_err(|e| io("write a log image", e))?;
        next.file.sync_data().map_err(|e| io("sync a log image", e))?;
        next.size += buf.len() as u64;
        next.image = next.size;
        let old = active.seq;
        *active = next;
        for (seq, path) in segments(&self.dir)? {
            if seq <= old {
                std::fs::remove_file(&path).map_err(|e| io("remove an old log segment", e))?;
            }
        }
        sync_dir(&self.dir)
    }
}

fn new_segment(dir: &Path, seq: u64) -> Result<Active> {
    let path = dir.join(segment_name(seq));
    let mut file = OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(&path)
        .map_err(|e| io(&format!("create {}", path.display()), e))?;
    let mut header = MAGIC.to_vec();
    header.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    file.write_all(&header)
        .and_then(|()| file.sync_all())
        .map_err(|e| io("write a log header", e))?;
    sync_dir(dir)?;
    Ok(Active { file, seq, size: header.len() as u64, image: 0 })
}

/// Appends one record with `payload` written by `fill`.
fn record(buf: &mut Vec<u8>, fill: impl FnOnce(&mut Vec<u8>)) {
    let at = buf.len();
    buf.extend_from_slice(&[0; 8]);
    fill(buf);
    let payload = &buf[at + 8..];
    let len = payload.len() as u32;
    let crc = crc32fast::hash(payload);
    buf[at..at + 4].copy_from_slice(&len.to_le_bytes());
    buf[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
}

fn put_proto(buf: &mut Vec<u8>, m: &impl prost::Message) {
    buf.extend_from_slice(&(m.encoded_len() as u32).to_le_bytes());
    m.encode(buf).expect("a Vec grows as needed");
}

fn put_pair(buf: &mut Vec<u8>, (a, b): (u64, u64)) {
    buf.extend_from_slice(&a.to_le_bytes());
    buf.extend_from_slice(&b.to_le_bytes());
}

fn put_entries<'a>(buf: &mut Vec<u8>, entries: impl ExactSizeIterator<Item = &'a Entry>) {
    buf.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for e in entries {
        put_proto(buf, e);
    }
}

fn encode_op(buf: &mut Vec<u8>, group: u8, op: &Op) {
    record(buf, |b| match op {
        Op::Append { entries, .. } => {
            b.extend_from_slice(&[ENTRIES, group]);
            put_entries(b, entries.iter());
        }
        Op::HardState(hs) => {
            b.extend_from_slice(&[HARD_STATE, group]);
            put_proto(b, hs);
        }
        Op::Applied(a) => {
            b.extend_from_slice(&[CHECKPOINT, group]);
            put_pair(b, (a.index, a.term));
            put_proto(b, &a.conf);
        }
        Op::Compact { truncated, .. } => {
            b.extend_from_slice(&[COMPACT, group]);
            put_pair(b, *truncated);
        }
        Op::Snapshot { applied, .. } => {
            b.extend_from_slice(&[SNAPSHOT, group]);
            put_pair(b, (applied.index, applied.term));
            put_proto(b, &applied.conf);
        }
        Op::Remove { .. } => b.extend_from_slice(&[REMOVE, group]),
    });
}

fn encode_image(buf: &mut Vec<u8>, group: u8, m: &Mirror) {
    record(buf, |b| {
        b.extend_from_slice(&[IMAGE, group]);
        put_proto(b, &m.hard_state);
        put_pair(b, m.truncated);
        put_pair(b, (m.applied.index, m.applied.term));
        put_proto(b, &m.applied.conf);
        put_entries(b, m.entries.iter());
    });
}

fn apply_op(groups: &mut BTreeMap<u8, Mirror>, group: u8, op: &Op) {
    if let Op::Remove { .. } = op {
        groups.remove(&group);
        return;
    }
    let m = groups.entry(group).or_default();
    match op {
        Op::Append { entries, .. } => m.append(entries.iter().cloned()),
        Op::HardState(hs) => m.hard_state = hs.clone(),
        Op::Applied(a) => m.applied = a.clone(),
        Op::Compact { truncated, .. } => m.compact(truncated.0, truncated.1),
        Op::Snapshot { applied, .. } => {
            m.entries.clear();
            m.truncated = (applied.index, applied.term);
            m.applied = applied.clone();
        }
        Op::Remove { .. } => unreachable!("handled above"),
    }
}

/// A cursor over a record's payload.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("a record is cut short".into());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u32(&mut self) -> std::result::Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }

    fn u64(&mut self) -> std::result::Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }

    fn pair(&mut self) -> std::result::Result<(u64, u64), String> {
        Ok((self.u64()?, self.u64()?))
    }

    fn proto<M: prost::Message + Default>(&mut self) -> std::result::Result<M, String> {
        let n = self.u32()? as usize;
        M::decode(self.take(n)?).map_err(|e| e.to_string())
    }

    fn entries(&mut self) -> std::result::Result<Vec<Entry>, String> {
        let n = self.u32()? as usize;
        (0..n).map(|_| self.proto::<Entry>()).collect()
    }
}

/// Applies a segment's records to `groups`; returns how many bytes were
/// good (all of them, unless the segment ends in a torn record).
fn replay(bytes: &[u8], groups: &mut BTreeMap<u8, Mirror>) -> std::result::Result<usize, String> {
    if bytes.len() < 12 || &bytes[..8] != MAGIC {
        return Err("not a Shoal log segment".into());
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version != FORMAT_VERSION {
        return Err(format!(
            "log format {version} is unknown to this build (it reads {FORMAT_VERSION})"
        ));
    }
    let mut at = 12;
    while at + 8 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().expect("4 bytes"));
        let Some(payload) = bytes.get(at + 8..at + 8 + len) else { break };
        if crc32fast::hash(payload) != crc {
            break;
        }
        apply_record(payload, groups).map_err(|e| format!("record at byte {at}: {e}"))?;
        at += 8 + len;
    }
    Ok(at.min(bytes.len()))
}

fn apply_record(
    payload: &[u8],
    groups: &mut BTreeMap<u8, Mirror>,
) -> std::result::Result<(), String> {
    let mut c = Cursor(payload);
    let head = c.take(2)?;
    let (kind, group) = (head[0], head[1]);
    match kind {
        ENTRIES => groups.entry(group).or_default().append(c.entries()?),
        HARD_STATE => groups.entry(group).or_default().hard_state = c.proto()?,
        CHECKPOINT => {
            let (index, term) = c.pair()?;
            groups.entry(group).or_default().applied = ApplyState { index, term, conf: c.proto()? };
        }
        COMPACT => {
            let (index, term) = c.pair()?;
            groups.entry(group).or_default().compact(index, term);
        }
        SNAPSHOT => {
            let (index, term) = c.pair()?;
            let m = groups.entry(group).or_default();
            m.entries.clear();
            m.truncated = (index, term);
            m.applied = ApplyState { index, term, conf: c.proto()? };
        }
        REMOVE => {
            groups.remove(&group);
        }
        IMAGE => {
            let hard_state = c.proto()?;
            let truncated = c.pair()?;
            let (index, term) = c.pair()?;
            let conf = c.proto()?;
            let entries = c.entries()?.into();
            groups.insert(
                group,
                Mirror {
                    hard_state,
                    truncated,
                    applied: ApplyState { index, term, conf },
                    entries,
                },
            );
        }
        other => return Err(format!("record kind {other} is unknown")),
    }
    Ok(())
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
    fn the_compact_point_keeps_at_most_the_bytes_asked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = LogDb::open(dir.path()).expect("open");
        // Ten entries of 1000 bytes (1016 counted each).
        let big = vec![7u8; 1000];
        let append =
            Op::Append { entries: (1..=10).map(|i| entry(i, 1, &big)).collect(), delete: None };
        db.write(&[Batch { ops: vec![(2, append)], sync: true }]).expect("write");
        // Up to 9, keeping 3 000 bytes: entries 7, 8, 9 stay.
        assert_eq!(db.compact_point(2, 9, 3_100), 6);
        assert_eq!(db.compact_point(2, 10, 3_100), 7);
        // Everything fits, or no such group.
        assert_eq!(db.compact_point(2, 10, 1 << 20), 0);
        assert_eq!(db.compact_point(3, 10, 10), 0);
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
        // What a fjall database (the earlier engine's log) leaves.
        std::fs::create_dir_all(dir.path().join("keyspaces")).expect("mkdir");
        match LogDb::open(dir.path()) {
            Err(e @ Error::OldFormat { found: 1, .. }) => {
                assert!(e.to_string().contains("log format 1"), "{e}")
            }
            Err(other) => panic!("wrong error: {other}"),
            Ok(_) => panic!("format 1 was opened"),
        }
    }

    fn append(db: &LogDb, group: u8, from: u64, to: u64, term: u64) {
        let entries = (from..=to).map(|i| entry(i, term, b"0123456789")).collect();
        db.write(&[Batch { ops: vec![(group, Op::Append { entries, delete: None })], sync: true }])
            .expect("write");
    }

    fn indexes(db: &LogDb, group: u8) -> Vec<u64> {
        db.entries(group, 0, u64::MAX, u64::MAX).expect("entries").iter().map(|e| e.index).collect()
    }

    #[test]
    fn a_torn_last_record_is_cut_off_and_the_log_goes_on() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let db = LogDb::open(dir.path()).expect("open");
            append(&db, 1, 1, 3, 1);
            append(&db, 1, 4, 6, 1);
        }
        let (_, seg) = segments(dir.path()).expect("list").pop().expect("a segment");
        let len = std::fs::metadata(&seg).expect("stat").len();
        // A crash in the middle of the last write.
        let f = OpenOptions::new().write(true).open(&seg).expect("open");
        f.set_len(len - 5).expect("cut");
        drop(f);
        let db = LogDb::open(dir.path()).expect("reopen");
        assert_eq!(indexes(&db, 1), vec![1, 2, 3]);
        append(&db, 1, 4, 4, 2);
        drop(db);
        let db = LogDb::open(dir.path()).expect("reopen again");
        assert_eq!(indexes(&db, 1), vec![1, 2, 3, 4]);
    }

    #[test]
    fn a_bad_record_before_the_last_segment_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let db = LogDb::open_with(dir.path(), 200).expect("open");
            append(&db, 1, 1, 3, 1);
            append(&db, 1, 4, 40, 1);
            append(&db, 1, 41, 42, 1);
        }
        let all = segments(dir.path()).expect("list");
        assert_eq!(all.len(), 1, "rotation removed the older segments: {all:?}");
        // Simulate a rotation that crashed before deleting an older segment
        // which then rotted.
        let rotten = dir.path().join(segment_name(0));
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        bytes.extend_from_slice(&[9, 0, 0, 0, 1, 2, 3, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        std::fs::write(&rotten, &bytes).expect("write");
        match LogDb::open(dir.path()) {
            Err(Error::InvalidData(m)) => assert!(m.contains("not the last"), "{m}"),
            Err(other) => panic!("wrong error: {other}"),
            Ok(_) => panic!("a corrupt segment was read"),
        }
    }

    #[test]
    fn a_live_log_larger_than_a_segment_is_not_rewritten_on_every_write() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = LogDb::open_with(dir.path(), 4096).expect("open");
        // 400 entries of about 100 bytes, never compacted: 40 KB live, ten
        // segments' worth.
        let data = [7u8; 100];
        for i in 1..=400u64 {
            let op = Op::Append { entries: vec![entry(i, 1, &data)], delete: None };
            db.write(&[Batch { ops: vec![(1, op)], sync: false }]).expect("append");
        }
        let seq = db.active.lock().expect("active").seq;
        // Each rotation waits for as many bytes as the image it wrote: the
        // image doubles, so rotations grow with the log's logarithm.
        assert!(seq <= 8, "{seq} segments for 40 KB of live log");
        drop(db);
        let db = LogDb::open(dir.path()).expect("reopen");
        assert_eq!(indexes(&db, 1).len(), 400);
    }

    #[test]
    fn rotation_keeps_every_group_and_frees_the_old_segments() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let db = LogDb::open_with(dir.path(), 4096).expect("open");
            let hs = HardState { term: 7, vote: 2, commit: 3 };
            db.write(&[Batch { ops: vec![(2, Op::HardState(hs))], sync: true }]).expect("hs");
            for i in 0..50u64 {
                append(&db, 1, i * 10 + 1, i * 10 + 10, 1);
                if i % 10 == 9 {
                    let op = Op::Compact { delete: (0, 0), truncated: (i * 10, 1) };
                    db.write(&[Batch { ops: vec![(1, op)], sync: false }]).expect("compact");
                }
            }
            assert!(db.read_groups()[&1].entries.len() <= 110);
        }
        assert!(segments(dir.path()).expect("list").len() <= 2);
        let db = LogDb::open(dir.path()).expect("reopen");
        let ids = indexes(&db, 1);
        assert_eq!(ids.first(), Some(&491));
        assert_eq!(ids.last(), Some(&500));
        assert_eq!(db.load_group(2).expect("load").expect("group 2").hard_state.term, 7);
    }
}
