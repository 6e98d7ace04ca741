//! The in-process backend: the whole contract in one process, with the same
//! semantics as etcd, for Shoal's memory and standalone modes and for tests.
//!
//! State lives in a [`Store`] behind one `std::sync::Mutex` that is never
//! held across an `.await`: a request takes the lock and applies itself; the
//! store appends its events to the history and wakes the watches.
//!
//! **Time.** Leases use `tokio::time::Instant`, so tests run under tokio's
//! paused clock and a 90 s TTL costs no wall time. Expiry is exact twice
//! over: every request first expires the leases that are due, and a
//! background task (started by the first lease grant) sleeps until the
//! earliest deadline, so watchers see the deletions even when no request
//! comes.
//!
//! **History.** Watches do not get their own queues: each is a task with a
//! cursor into the store's last [`MemoryOptions::history`] events (see
//! [`crate::store`]). A watch whose cursor falls behind them — because it
//! started there or because its reader was too slow — receives
//! [`WatchMessage::Resync`] and ends, never a gap.
//!
//! The store keeps no clock; the lease deadlines are this backend's, beside it.
//!
//! **Namespace.** A memory registry is private to its process and its
//! `MemoryRegistry` value, so it needs no key prefix: keys are stored as
//! given.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use async_trait::async_trait;
use shoal_types::{LeaseId, Revision};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::kv::{KeyValue, Listing, Txn, TxnResponse};
use crate::registry::{Registry, Watch};
use crate::store::{Store, feed_watch};

/// Options of the memory backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryOptions {
    /// How many events (not revisions) the registry keeps for watches that
    /// start in the past or read slowly. Older history is dropped in whole
    /// revisions; a watch that needs it gets a resync. At least 1.
    pub history: usize,
}

impl Default for MemoryOptions {
    fn default() -> Self {
        Self { history: 10_000 }
    }
}

/// The in-process registry. Cheap to clone: clones share one store.
#[derive(Clone)]
pub struct MemoryRegistry {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    /// Wakes the expiry task when a lease deadline may have moved earlier.
    lease_wake: Arc<Notify>,
    /// Dropped with the registry, which stops the expiry task.
    stop: Mutex<Option<oneshot::Receiver<()>>>,
    _stop_tx: oneshot::Sender<()>,
}

struct State {
    store: Store,
    /// When each live lease ends unless kept alive.
    deadlines: HashMap<LeaseId, Instant>,
}

impl MemoryRegistry {
    /// An empty registry at revision 0.
    pub fn new(options: MemoryOptions) -> Self {
        let (stop_tx, stop_rx) = oneshot::channel();
        let state = State { store: Store::new(options.history), deadlines: HashMap::new() };
        let inner = Inner {
            state: Mutex::new(state),
            lease_wake: Arc::new(Notify::new()),
            stop: Mutex::new(Some(stop_rx)),
            _stop_tx: stop_tx,
        };
        Self { inner: Arc::new(inner) }
    }

    /// Locks the state after expiring the leases that are due.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.lock()
    }

    /// Starts the expiry task once, from inside the runtime.
    fn start_expiry_task(&self) {
        let stop = lock_unpoisoned(&self.inner.stop).take();
        if let Some(stop) = stop {
            let inner = Arc::downgrade(&self.inner);
            let wake = self.inner.lease_wake.clone();
            tokio::spawn(expire_leases(inner, wake, stop));
        }
    }
}

impl Default for MemoryRegistry {
    fn default() -> Self {
        Self::new(MemoryOptions::default())
    }
}

impl std::fmt::Debug for MemoryRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryRegistry").finish_non_exhaustive()
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        let mut state = lock_unpoisoned(&self.state);
        state.expire(Instant::now());
        state
    }
}

/// A poisoned lock only means another task panicked mid-request; the state
/// is still consistent because every request validates before it mutates.
fn lock_unpoisoned<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Sleeps until the earliest lease deadline, expires what is due, repeats;
/// ends when the registry is dropped.
async fn expire_leases(inner: Weak<Inner>, wake: Arc<Notify>, mut stop: oneshot::Receiver<()>) {
    loop {
        let next_deadline = {
            let Some(inner) = inner.upgrade() else { return };
            let state = inner.lock();
            state.deadlines.values().min().copied()
        };
        let sleep = async {
            match next_deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = sleep => {}
            _ = wake.notified() => {}
            _ = &mut stop => return,
        }
    }
}

impl State {
    /// Ends every lease whose deadline has passed, one revision per lease,
    /// earliest first.
    fn expire(&mut self, now: Instant) {
        let mut due: Vec<(Instant, LeaseId)> =
            self.deadlines.iter().filter(|(_, d)| **d <= now).map(|(id, d)| (*d, *id)).collect();
        due.sort();
        for (_, id) in due {
            self.deadlines.remove(&id);
            self.store.revoke(id);
        }
    }
}

#[async_trait]
impl Registry for MemoryRegistry {
    async fn get(&self, key: &[u8]) -> Result<Option<KeyValue>> {
        Ok(self.lock().store.get(key))
    }

    async fn get_prefix(&self, prefix: &[u8]) -> Result<Listing> {
        Ok(self.lock().store.listing(prefix))
    }

    async fn put(&self, key: &[u8], value: &[u8], lease: Option<LeaseId>) -> Result<Revision> {
        self.lock().store.put(key, value, lease)
    }

    async fn delete(&self, key: &[u8]) -> Result<(bool, Revision)> {
        Ok(self.lock().store.delete(key))
    }

    async fn delete_prefix(&self, prefix: &[u8]) -> Result<(u64, Revision)> {
        Ok(self.lock().store.delete_prefix(prefix))
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId> {
        self.start_expiry_task();
        let id = {
            let mut state = self.lock();
            let id = state.store.grant(ttl)?;
            state.deadlines.insert(id, Instant::now() + ttl);
            id
        };
        self.inner.lease_wake.notify_one();
        Ok(id)
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<()> {
        let mut state = self.lock();
        let ttl = state.store.lease_ttl(lease).ok_or(Error::LeaseNotFound(lease))?;
        state.deadlines.insert(lease, Instant::now() + ttl);
        Ok(())
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<()> {
        let mut state = self.lock();
        state.deadlines.remove(&lease);
        if state.store.revoke(lease) { Ok(()) } else { Err(Error::LeaseNotFound(lease)) }
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse> {
        self.lock().store.txn(&txn)
    }

    async fn watch_prefix(&self, prefix: &[u8], from: Revision) -> Result<Watch> {
        let (from, revisions) = {
            let state = self.lock();
            let from = if from.0 <= 0 { state.store.revision().0 + 1 } else { from.0 };
            (from, state.store.subscribe())
        };
        let (tx, rx) = mpsc::channel(Watch::BUFFER);
        let inner = Arc::downgrade(&self.inner);
        let read = move |prefix: &[u8], next: i64| {
            let inner = inner.upgrade()?;
            let state = lock_unpoisoned(&inner.state);
            Some(state.store.events_since(prefix, next))
        };
        let task = tokio::spawn(feed_watch(revisions, prefix.to_vec(), from, tx, read));
        Ok(Watch::new(rx, task))
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        self.lock().store.compact(revision)
    }

    fn describe(&self) -> String {
        "memory".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::{EventKind, TxnOp, WatchMessage};

    #[tokio::test(start_paused = true)]
    async fn bounded_history_resyncs_old_watches() {
        let registry = MemoryRegistry::new(MemoryOptions { history: 4 });
        for i in 0..10u8 {
            registry.put(b"k", &[i], None).await.unwrap();
        }
        // Revisions 1..=10 happened; only 7..=10 are retained.
        let mut old = registry.watch_prefix(b"k", Revision(3)).await.unwrap();
        assert_eq!(
            old.next().await.unwrap().unwrap(),
            WatchMessage::Resync { compact_revision: Revision(7) }
        );
        assert!(old.next().await.is_none());

        let mut recent = registry.watch_prefix(b"k", Revision(7)).await.unwrap();
        for rev in 7..=10 {
            match recent.next().await.unwrap().unwrap() {
                WatchMessage::Event(e) => assert_eq!(e.revision(), Revision(rev)),
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn history_drops_whole_revisions() {
        let registry = MemoryRegistry::new(MemoryOptions { history: 3 });
        let txn = Txn::new().and_then([
            TxnOp::put("a", "1", None),
            TxnOp::put("b", "1", None),
            TxnOp::put("c", "1", None),
        ]);
        registry.txn(txn).await.unwrap();
        registry.put(b"d", b"1", None).await.unwrap();
        // Revision 1 had three events; keeping it partially would break
        // atomicity, so it is gone entirely.
        let mut w = registry.watch_prefix(b"", Revision(1)).await.unwrap();
        assert_eq!(
            w.next().await.unwrap().unwrap(),
            WatchMessage::Resync { compact_revision: Revision(2) }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn expiry_needs_no_requests() {
        let registry = MemoryRegistry::default();
        let lease = registry.grant_lease(Duration::from_secs(90)).await.unwrap();
        registry.put(b"n", b"1", Some(lease)).await.unwrap();
        let mut w = registry.watch_prefix(b"n", Revision(0)).await.unwrap();
        let start = Instant::now();
        let msg = w.next().await.unwrap().unwrap();
        let WatchMessage::Event(e) = msg else { panic!("unexpected {msg:?}") };
        assert_eq!(e.kind, EventKind::Delete);
        assert_eq!(start.elapsed(), Duration::from_secs(90));
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_the_registry_ends_watches() {
        let registry = MemoryRegistry::default();
        let mut w = registry.watch_prefix(b"", Revision(0)).await.unwrap();
        drop(registry);
        assert!(w.next().await.is_none());
    }
}
