//! The change feed's hub: per base, the recent committed changes and the
//! subscribers waiting for more.
//!
//! The store publishes the events of each applied command here, under its
//! bucket lock and in log order, once the command is applied (its savepoint
//! released; see the base module on the shared transaction).
//! Every replica applies the same commands at the same indexes, so every
//! replica's hub holds the same events at the same indexes: a subscriber
//! that resumes on another replica "after index L" loses nothing and sees
//! nothing twice.
//!
//! **Retention.** Per base, the hub keeps the most recent changes (at most
//! [`FeedOptions::retention_changes`] events, none older than
//! [`FeedOptions::retention_age`]), grouped by log index (a group is kept or
//! dropped whole), and a *floor*: every change with an index above the floor
//! is retained. The state of a base is made the first time this process
//! publishes or subscribes to it, with the floor at the base's applied
//! index then (what was applied before this process started is not
//! retained). A subscriber asking for changes after an index below the
//! floor is told to resync.
//!
//! **Subscribers.** Each has a bounded channel. Publishing never waits: a
//! subscriber whose channel is full is dropped with the reason, and its
//! feed ends with an error telling it to resume. The retained backlog is
//! read and the subscriber registered under one lock, the lock publishing
//! takes, so there is no gap and no duplicate between the two.
//!
//! The channels are tokio's, whose sending side is synchronous; nothing
//! here needs a runtime.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use shoal_types::api::{ChangeEvent, ChangeOp, RowText};
use shoal_types::{BaseId, BucketId, ErrorBody};
use tokio::sync::mpsc;

/// How much of the feed the hub keeps.
#[derive(Clone, Debug)]
pub struct FeedOptions {
    /// The most change events kept per base (whole log indexes are kept or
    /// dropped, so a large write may keep more for a while).
    pub retention_changes: usize,
    /// The longest a change is kept.
    pub retention_age: Duration,
    /// How many writes (log indexes) a subscriber may have waiting before
    /// it is dropped as too slow.
    pub subscriber_buffer: usize,
}

impl Default for FeedOptions {
    fn default() -> Self {
        FeedOptions {
            retention_changes: 10_000,
            retention_age: Duration::from_secs(600),
            subscriber_buffer: 4096,
        }
    }
}

/// A change as the hub keeps it: the row's values as JSON text.
pub type Change = ChangeEvent<RowText>;

/// The events of one write: one log index.
pub type Batch = Arc<[Change]>;

/// Why a subscription's live channel closed, when not because the base was
/// dropped (which sends `base_dropped` first).
type Reason = Arc<Mutex<Option<ErrorBody>>>;

struct Subscriber {
    tx: mpsc::Sender<Batch>,
    reason: Reason,
}

struct Retained {
    index: u64,
    at: Instant,
    events: Batch,
}

/// One base's feed.
struct BaseFeed {
    /// Every change with an index above this one is retained.
    floor: u64,
    retained: VecDeque<Retained>,
    /// Events in `retained`.
    count: usize,
    subscribers: Vec<Subscriber>,
    /// The base was dropped at this index: nothing follows.
    dropped: bool,
}

impl BaseFeed {
    fn new(floor: u64) -> BaseFeed {
        BaseFeed {
            floor,
            retained: VecDeque::new(),
            count: 0,
            subscribers: Vec::new(),
            dropped: false,
        }
    }

    fn last_index(&self) -> u64 {
        self.retained.back().map_or(self.floor, |r| r.index.max(self.floor))
    }

    /// Drops what retention no longer keeps.
    fn prune(&mut self, options: &FeedOptions, now: Instant) {
        while let Some(first) = self.retained.front() {
            let too_many = self.count > options.retention_changes;
            let too_old = now.saturating_duration_since(first.at) > options.retention_age;
            if !too_many && !too_old {
                break;
            }
            self.count -= first.events.len();
            self.floor = self.floor.max(first.index);
            self.retained.pop_front();
        }
    }
}

/// What a subscriber gets.
pub struct Subscription {
    /// The index the subscription starts after: the one asked for, or the
    /// one of `resync`.
    pub after: u64,
    /// Set when the index asked for is no longer retained: the base's
    /// latest index, after which the subscription continues.
    pub resync: Option<u64>,
    /// The retained changes after the index asked for (or after `resync`).
    pub backlog: Vec<Batch>,
    /// The changes that follow, one batch per log index. Events at or
    /// below the index asked for may appear and must be skipped.
    pub live: mpsc::Receiver<Batch>,
    reason: Reason,
}

impl Subscription {
    /// Once `live` has closed: why, if it was not the end of the base.
    pub fn close_reason(&self) -> Option<ErrorBody> {
        lock(&self.reason).clone()
    }
}

/// The hub of one node.
pub struct Hub {
    options: FeedOptions,
    bases: Mutex<HashMap<BaseId, BaseFeed>>,
    /// When every base was last pruned by age (see [`Hub::sweep`]).
    last_sweep: Mutex<Instant>,
}

/// How often publishing also prunes the bases nobody writes to any more.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The maps stay consistent across a panic; keep serving.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The error a feed ends with when its subscriber must resume elsewhere or later.
fn unavailable(message: String) -> ErrorBody {
    shoal_types::Error::Unavailable(message).to_body()
}

impl Hub {
    /// An empty hub.
    pub fn new(options: FeedOptions) -> Hub {
        Hub { options, bases: Mutex::new(HashMap::new()), last_sweep: Mutex::new(Instant::now()) }
    }

    /// Publishes the events of the write at `index` on base `id`, whose
    /// applied index was `previous` before it.
    pub fn publish(&self, id: BaseId, index: u64, previous: u64, events: Vec<Change>) {
        if events.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut bases = lock(&self.bases);
        self.sweep(&mut bases, now);
        let feed = bases.entry(id).or_insert_with(|| BaseFeed::new(previous));
        let batch: Batch = events.into();
        feed.count += batch.len();
        feed.retained.push_back(Retained { index, at: now, events: batch.clone() });
        feed.prune(&self.options, now);
        feed.subscribers.retain(|s| match s.tx.try_send(batch.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                *lock(&s.reason) = Some(unavailable(format!(
                    "this subscriber fell more than {} writes behind and was dropped; \
                         resume with after=LAST, the last index received",
                    self.options.subscriber_buffer
                )));
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
    }

    /// Retention by age is applied when a base is written or subscribed to;
    /// this applies it, now and then, to the bases that went quiet, so that
    /// what they keep goes once too old. A base's floor stays (a few bytes);
    /// a dropped base is forgotten once its last event is too old.
    fn sweep(&self, bases: &mut HashMap<BaseId, BaseFeed>, now: Instant) {
        let mut last = lock(&self.last_sweep);
        if now.saturating_duration_since(*last) < SWEEP_EVERY {
            return;
        }
        *last = now;
        for feed in bases.values_mut() {
            feed.prune(&self.options, now);
        }
        bases.retain(|_, f| !(f.dropped && f.retained.is_empty()));
    }

    /// The base was dropped at `index`: sends `base_dropped` and ends its
    /// feeds. The event stays retained until the base is created again, so
    /// that a subscriber that raced the drop also sees it.
    pub fn dropped(&self, id: BaseId, index: u64) {
        let event = Change {
            index,
            op: ChangeOp::BaseDropped,
            table: None,
            rowid: None,
            row: None,
            sql: None,
        };
        self.publish(id, index, index.saturating_sub(1), vec![event]);
        let mut bases = lock(&self.bases);
        if let Some(feed) = bases.get_mut(&id) {
            feed.dropped = true;
            feed.subscribers.clear();
        }
    }

    /// The base was created at `index`: a feed of an earlier base with its
    /// id is forgotten.
    pub fn created(&self, id: BaseId) {
        lock(&self.bases).remove(&id);
    }

    /// A bucket's content was replaced (from a snapshot) or removed: the
    /// changes in between were never seen here. Its bases' feeds end with
    /// an error, and are made anew (at the new applied index) when next
    /// asked for.
    pub fn reset_bucket(&self, bucket: BucketId) {
        let mut bases = lock(&self.bases);
        bases.retain(|id, feed| {
            if id.bucket() != bucket {
                return true;
            }
            for s in &feed.subscribers {
                *lock(&s.reason) = Some(unavailable(
                    "this replica's copy of the base was replaced; resume with after=LAST, \
                     the last index received"
                        .into(),
                ));
            }
            false
        });
    }

    /// Subscribes to base `id` after log index `after`; `applied` is the
    /// base's applied index now (read before this call).
    pub fn subscribe(&self, id: BaseId, after: u64, applied: u64) -> Subscription {
        let mut bases = lock(&self.bases);
        let feed = bases.entry(id).or_insert_with(|| BaseFeed::new(applied));
        feed.prune(&self.options, Instant::now());
        let (resync, after) = if after < feed.floor {
            let current = feed.last_index().max(applied);
            (Some(current), current)
        } else {
            (None, after)
        };
        let backlog =
            feed.retained.iter().filter(|r| r.index > after).map(|r| r.events.clone()).collect();
        let (tx, live) = mpsc::channel(self.options.subscriber_buffer.max(1));
        let reason = Reason::default();
        if !feed.dropped {
            feed.subscribers.push(Subscriber { tx, reason: reason.clone() });
        }
        Subscription { after, resync, backlog, live, reason }
    }

    /// How many subscribers the hub has, over all bases (one whose feed
    /// ended is not counted, even before the next write drops it).
    pub fn subscribers(&self) -> usize {
        lock(&self.bases)
            .values()
            .map(|f| f.subscribers.iter().filter(|s| !s.tx.is_closed()).count())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(index: u64, rowid: i64) -> Change {
        Change {
            index,
            op: ChangeOp::Insert,
            table: Some("t".into()),
            rowid: Some(rowid),
            row: Some(RowText::from_json("{}")),
            sql: None,
        }
    }

    fn indexes(batches: &[Batch]) -> Vec<u64> {
        batches.iter().map(|b| b[0].index).collect()
    }

    #[test]
    fn backlog_then_live_without_gap_or_duplicate() {
        let hub = Hub::new(FeedOptions::default());
        let id = BaseId::random();
        hub.publish(id, 5, 4, vec![ev(5, 1), ev(5, 2)]);
        hub.publish(id, 7, 5, vec![ev(7, 3)]);
        let mut s = hub.subscribe(id, 5, 7);
        assert_eq!(s.resync, None);
        assert_eq!(indexes(&s.backlog), vec![7]);
        hub.publish(id, 9, 7, vec![ev(9, 4)]);
        assert_eq!(s.live.try_recv().expect("live")[0].index, 9);
        assert!(s.live.try_recv().is_err());
        // Before the floor (4): resync at the latest index, then live.
        let s = hub.subscribe(id, 3, 9);
        assert_eq!(s.resync, Some(9));
        assert!(s.backlog.is_empty());
    }

    #[test]
    fn retention_moves_the_floor_by_whole_indexes() {
        let hub = Hub::new(FeedOptions { retention_changes: 3, ..FeedOptions::default() });
        let id = BaseId::random();
        hub.publish(id, 1, 0, vec![ev(1, 1), ev(1, 2)]);
        hub.publish(id, 2, 1, vec![ev(2, 3), ev(2, 4)]);
        // 4 events > 3: index 1 goes, the floor is 1.
        let s = hub.subscribe(id, 1, 2);
        assert_eq!((s.resync, indexes(&s.backlog)), (None, vec![2]));
        assert_eq!(hub.subscribe(id, 0, 2).resync, Some(2));
        let aged =
            Hub::new(FeedOptions { retention_age: Duration::ZERO, ..FeedOptions::default() });
        aged.publish(id, 1, 0, vec![ev(1, 1)]);
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(aged.subscribe(id, 0, 1).resync, Some(1));
    }

    #[test]
    fn a_new_feed_starts_at_the_applied_index() {
        let hub = Hub::new(FeedOptions::default());
        let id = BaseId::random();
        assert_eq!(hub.subscribe(id, 10, 10).resync, None);
        assert_eq!(hub.subscribe(id, 12, 10).resync, None);
        assert_eq!(hub.subscribe(BaseId::random(), 9, 10).resync, Some(10));
    }

    #[test]
    fn slow_subscribers_are_dropped_with_a_reason() {
        let hub = Hub::new(FeedOptions { subscriber_buffer: 2, ..FeedOptions::default() });
        let id = BaseId::random();
        let mut s = hub.subscribe(id, 0, 0);
        for i in 1..=3 {
            hub.publish(id, i, i - 1, vec![ev(i, 1)]);
        }
        assert_eq!(hub.subscribers(), 0);
        assert_eq!(s.live.try_recv().expect("first")[0].index, 1);
        assert_eq!(s.live.try_recv().expect("second")[0].index, 2);
        assert!(matches!(s.live.try_recv(), Err(mpsc::error::TryRecvError::Disconnected)));
        let reason = s.close_reason().expect("a reason");
        assert!(reason.error.message.contains("resume"), "{reason:?}");
    }

    #[test]
    fn drop_ends_feeds_and_create_forgets() {
        let hub = Hub::new(FeedOptions::default());
        let id = BaseId::random();
        let mut s = hub.subscribe(id, 0, 0);
        hub.dropped(id, 4);
        assert_eq!(s.live.try_recv().expect("dropped")[0].op, ChangeOp::BaseDropped);
        assert!(matches!(s.live.try_recv(), Err(mpsc::error::TryRecvError::Disconnected)));
        assert!(s.close_reason().is_none());
        // A late subscriber sees the end at once.
        let mut late = hub.subscribe(id, 0, 0);
        assert_eq!(indexes(&late.backlog), vec![4]);
        assert!(matches!(late.live.try_recv(), Err(mpsc::error::TryRecvError::Disconnected)));
        hub.created(id);
        assert!(hub.subscribe(id, 5, 5).backlog.is_empty());
    }
}
