//! The write queue and the writer thread that commits it.
//!
//! Callers push [`Op`]s; the one writer thread takes a batch (everything
//! queued, up to the byte bound), commits it in one durable batch, then drops the committed entries from each group's
//! `pending` and completes each operation. Ops that nobody waits for
//! (lazy ones) do not wake the writer: they ride the next commit.
//!
//! A thread rather than a tokio task, because a commit blocks on fsync for
//! its whole duration and must not hold a runtime worker.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use openraft::storage::LogFlushed;
use tokio::sync::oneshot;

use super::{Error, Result, Shared};
use crate::TypeConfig;

/// One queued write of one group.
pub(super) struct Op {
    pub(super) group: u8,
    pub(super) write: Write,
    pub(super) done: Done,
}

/// What to write.
pub(super) enum Write {
    /// Put encoded entries at their indexes; `seq` tags the append.
    Append { seq: u64, entries: Vec<(u64, Vec<u8>)> },
    /// Delete the entries at `from` and after.
    Truncate { from: u64 },
    /// Delete the entries in `from..=upto` (`from` is just after the
    /// previous purge: nothing older is left) and record the encoded last
    /// purged log id.
    Purge { from: u64, upto: u64, value: Vec<u8> },
    /// Set one metadata value (vote, committed, applied checkpoint).
    Meta { kind: u8, value: Vec<u8> },
    /// Delete everything of the group.
    Remove,
}

/// Whom to tell once the op's commit is done.
pub(super) enum Done {
    /// Nobody: a lazy write.
    Nothing,
    /// openraft's append callback.
    Flushed(LogFlushed<TypeConfig>),
    /// A caller awaiting durability.
    Reply(oneshot::Sender<Result<()>>),
}

impl Op {
    /// Roughly what the op adds to a commit, for the batch bound.
    fn bytes(&self) -> usize {
        const OVERHEAD: usize = 32;
        OVERHEAD
            + match &self.write {
                Write::Append { entries, .. } => {
                    entries.iter().map(|(_, b)| b.len() + OVERHEAD).sum::<usize>()
                }
                Write::Purge { value, .. } | Write::Meta { value, .. } => value.len(),
                Write::Truncate { .. } | Write::Remove => 0,
            }
    }

    fn is_urgent(&self) -> bool {
        !matches!(self.done, Done::Nothing)
    }
}

/// The node-wide FIFO of writes.
pub(super) struct Queue {
    state: Mutex<QueueState>,
    ready: Condvar,
    max_batch_bytes: usize,
}

struct QueueState {
    ops: VecDeque<Op>,
    /// How many queued ops someone waits for: the writer sleeps while 0.
    urgent: usize,
    /// Set on drop: the writer commits what is left, then stops.
    closed: bool,
}

impl Queue {
    pub(super) fn new(max_batch_bytes: usize) -> Queue {
        Queue {
            state: Mutex::new(QueueState { ops: VecDeque::new(), urgent: 0, closed: false }),
            ready: Condvar::new(),
            max_batch_bytes,
        }
    }

    fn lock(&self) -> MutexGuard<'_, QueueState> {
        // Every update of the queue state is a single step; a panic elsewhere
        // cannot leave it half-done.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `op`, waking the writer if someone waits for it.
    pub(super) fn push(&self, op: Op) {
        let urgent = op.is_urgent();
        let mut state = self.lock();
        state.ops.push_back(op);
        if urgent {
            state.urgent += 1;
            self.ready.notify_one();
        }
    }

    /// Tells the writer to commit what is left and stop.
    pub(super) fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_one();
    }

    /// Waits for work, then takes the oldest ops up to the byte bound (at
    /// least one). `None` once closed and empty.
    fn next_batch(&self) -> Option<Vec<Op>> {
        let mut state = self.lock();
        while state.urgent == 0 && !state.closed {
            state = self.ready.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        let mut batch = Vec::new();
        let mut bytes = 0;
        while let Some(op) = state.ops.front() {
            let size = op.bytes();
            if !batch.is_empty() && bytes + size > self.max_batch_bytes {
                break;
            }
            bytes += size;
            let op = state.ops.pop_front().expect("front was just seen");
            if op.is_urgent() {
                state.urgent -= 1;
            }
            batch.push(op);
        }
        (!batch.is_empty()).then_some(batch)
    }
}

/// Starts the writer thread.
pub(super) fn spawn(shared: Arc<Shared>) -> Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("shoal-log-writer".into())
        .spawn(move || run(&shared))
        .map_err(|e| Error::Io(format!("start the log writer thread: {e}")))
}

/// Awaits the durable commit of an op queued with a reply.
pub(super) async fn wait(rx: oneshot::Receiver<Result<()>>) -> Result<()> {
    rx.await.map_err(|_| Error::Unavailable("the log writer stopped".into()))?
}

fn run(shared: &Shared) {
    while let Some(batch) = shared.queue.next_batch() {
        // A panic inside the engine fails the store like an error would, so
        // that this thread goes on failing every waiter instead of leaving
        // them hanging.
        let commit = || {
            std::panic::catch_unwind(AssertUnwindSafe(|| shared.disk.commit(&batch)))
                .unwrap_or_else(|_| Err(Error::Unavailable("the log engine panicked".into())))
        };
        let result = shared.check().and_then(|()| commit());
        match &result {
            Ok(()) => shared.stats.record_commit(batch.len()),
            Err(error) => shared.fail(error),
        }
        for op in batch {
            finish(shared, op, &result);
        }
    }
}

/// After the commit of `op`: forgets its entries from `pending` (they are
/// on disk now) and tells whoever waits.
fn finish(shared: &Shared, op: Op, result: &Result<()>) {
    if let (Ok(()), Write::Append { seq, entries }) = (result, &op.write) {
        let mut state = shared.lock(op.group);
        for (index, _) in entries {
            // A later truncate and append may have put a newer entry there.
            if state.pending.get(index).is_some_and(|(s, _)| s == seq) {
                state.pending.remove(index);
            }
        }
    }
    match op.done {
        Done::Nothing => {}
        Done::Flushed(callback) => {
            callback.log_io_completed(result.clone().map_err(std::io::Error::other))
        }
        // The caller may have gone away (its future dropped): nothing to do.
        Done::Reply(tx) => drop(tx.send(result.clone())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(bytes: usize, done: Done) -> Op {
        Op { group: 0, write: Write::Meta { kind: 0, value: vec![0; bytes] }, done }
    }

    fn reply() -> Done {
        Done::Reply(oneshot::channel().0)
    }

    #[test]
    fn batches_keep_order_respect_the_byte_bound_and_count_waiters() {
        let queue = Queue::new(200);
        queue.push(meta(10, Done::Nothing));
        queue.push(meta(100, reply()));
        queue.push(meta(100, reply()));
        queue.push(meta(10, Done::Nothing));
        // 42 + 132 fits in 200, the next 132 does not.
        let sizes = |batch: Vec<Op>| batch.iter().map(Op::bytes).collect::<Vec<_>>();
        assert_eq!(queue.next_batch().map(sizes), Some(vec![42, 132]));
        assert_eq!(queue.lock().urgent, 1);
        assert_eq!(queue.next_batch().map(sizes), Some(vec![132, 42]));
        assert_eq!(queue.lock().urgent, 0);
        // A lone op larger than the bound still goes, alone.
        queue.push(meta(500, reply()));
        assert_eq!(queue.next_batch().map(sizes), Some(vec![532]));
    }

    #[test]
    fn lazy_ops_wait_for_a_durable_one_or_the_close() {
        let queue = Arc::new(Queue::new(1 << 20));
        queue.push(meta(1, Done::Nothing));
        let taker = {
            let queue = queue.clone();
            std::thread::spawn(move || queue.next_batch().map(|b| b.len()))
        };
        // Only the close can end this wait (no durable op will come), and
        // it hands over the lazy op rather than dropping it.
        queue.close();
        assert_eq!(taker.join().expect("taker"), Some(1));
        assert!(queue.next_batch().is_none());
    }
}
