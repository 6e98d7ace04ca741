//! The in-process backend: the whole contract in one process, with the same
//! semantics as etcd, for Shoal's memory and standalone modes and for tests.
//!
//! State lives behind one `std::sync::Mutex` that is never held across an
//! `.await`: a request takes the lock, applies itself, appends its events to
//! the history and publishes the new revision on a `watch` channel.
//!
//! **Time.** Leases use `tokio::time::Instant`, so tests run under tokio's
//! paused clock and a 90 s TTL costs no wall time. Expiry is exact twice
//! over: every request first expires the leases that are due, and a
//! background task (started by the first lease grant) sleeps until the
//! earliest deadline, so watchers see the deletions even when no request
//! comes.
//!
//! **History.** Watches do not get their own queues. The registry keeps the
//! last [`MemoryOptions::history`] events in revision order; each watch is a
//! task with a cursor (the next revision it must deliver) that copies the
//! matching events out of the history and waits for the next revision. A
//! watch whose cursor falls behind the oldest retained revision — because it
//! started there or because its reader was too slow — receives
//! [`WatchMessage::Resync`] and ends, never a gap. History is dropped in
//! whole revisions, so a transaction's events are either all there or all
//! gone. `first_retained` is the invariant's name: every event at revision
//! `>= first_retained` is in the history.
//!
//! **Namespace.** A memory registry is private to its process and its
//! `MemoryRegistry` value, so it needs no key prefix: keys are stored as
//! given.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use async_trait::async_trait;
use shoal_types::{LeaseId, Revision};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::kv::{
    Event, EventKind, KeyValue, Listing, Txn, TxnOp, TxnOpResponse, TxnResponse, WatchMessage,
    prefix_end,
};
use crate::registry::{Registry, Watch};

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
    /// The current revision, published after every change; watch tasks wait
    /// on it. Dropped with the registry, which ends every watch.
    revision: watch::Sender<i64>,
    /// Wakes the expiry task when a lease deadline may have moved earlier.
    lease_wake: Arc<Notify>,
    /// Dropped with the registry, which stops the expiry task.
    stop: Mutex<Option<oneshot::Receiver<()>>>,
    _stop_tx: oneshot::Sender<()>,
}

struct State {
    revision: i64,
    kvs: BTreeMap<Vec<u8>, KeyValue>,
    leases: HashMap<i64, Lease>,
    next_lease: i64,
    history: VecDeque<Event>,
    history_cap: usize,
    /// Every event at a revision >= this is in `history`.
    first_retained: i64,
}

struct Lease {
    ttl: Duration,
    deadline: Instant,
    keys: BTreeSet<Vec<u8>>,
}

impl MemoryRegistry {
    /// An empty registry at revision 0.
    pub fn new(options: MemoryOptions) -> Self {
        let (stop_tx, stop_rx) = oneshot::channel();
        let state = State {
            revision: 0,
            kvs: BTreeMap::new(),
            leases: HashMap::new(),
            next_lease: 1,
            history: VecDeque::new(),
            history_cap: options.history.max(1),
            first_retained: 1,
        };
        let inner = Inner {
            state: Mutex::new(state),
            revision: watch::Sender::new(0),
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
        state.expire(Instant::now(), &self.revision);
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
            state.leases.values().map(|l| l.deadline).min()
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

/// The events of one change, collected before they are committed.
struct Change {
    revision: i64,
    events: Vec<Event>,
}

impl State {
    fn begin(&self) -> Change {
        Change { revision: self.revision + 1, events: Vec::new() }
    }

    /// Commits a change: bumps the revision if anything changed, records the
    /// events and wakes the watchers. Returns the revision after the change.
    fn commit(&mut self, change: Change, notify: &watch::Sender<i64>) -> i64 {
        if change.events.is_empty() {
            return self.revision;
        }
        self.revision = change.revision;
        self.history.extend(change.events);
        while self.history.len() > self.history_cap {
            let Some(oldest) = self.history.front().map(|e| e.kv.mod_revision.0) else { break };
            while self.history.front().is_some_and(|e| e.kv.mod_revision.0 == oldest) {
                self.history.pop_front();
            }
            self.first_retained = oldest + 1;
        }
        notify.send_replace(self.revision);
        self.revision
    }

    /// Ends every lease whose deadline has passed, one revision per lease.
    fn expire(&mut self, now: Instant, notify: &watch::Sender<i64>) {
        let mut due: Vec<(Instant, i64)> = self
            .leases
            .iter()
            .filter(|(_, l)| l.deadline <= now)
            .map(|(id, l)| (l.deadline, *id))
            .collect();
        due.sort();
        for (_, id) in due {
            self.end_lease(id, notify);
        }
    }

    /// Removes a lease and deletes its keys in one change.
    fn end_lease(&mut self, id: i64, notify: &watch::Sender<i64>) -> bool {
        let Some(lease) = self.leases.remove(&id) else { return false };
        let mut change = self.begin();
        for key in lease.keys {
            self.delete_key(&key, &mut change);
        }
        self.commit(change, notify);
        true
    }

    fn lease_alive(&self, lease: Option<LeaseId>) -> Result<()> {
        match lease {
            Some(id) if !self.leases.contains_key(&id.0) => Err(Error::LeaseNotFound(id)),
            _ => Ok(()),
        }
    }

    fn put_key(&mut self, key: &[u8], value: &[u8], lease: Option<LeaseId>, change: &mut Change) {
        let revision = Revision(change.revision);
        let previous = self.kvs.get(key);
        let kv = KeyValue {
            key: key.to_vec(),
            value: value.to_vec(),
            create_revision: previous.map_or(revision, |p| p.create_revision),
            mod_revision: revision,
            version: previous.map_or(0, |p| p.version) + 1,
            lease,
        };
        if let Some(l) = previous.and_then(|p| p.lease).and_then(|old| self.leases.get_mut(&old.0))
        {
            l.keys.remove(key);
        }
        if let Some(l) = lease.and_then(|new| self.leases.get_mut(&new.0)) {
            l.keys.insert(key.to_vec());
        }
        self.kvs.insert(key.to_vec(), kv.clone());
        change.events.push(Event { kind: EventKind::Put, kv });
    }

    fn delete_key(&mut self, key: &[u8], change: &mut Change) -> bool {
        let Some(old) = self.kvs.remove(key) else { return false };
        if let Some(l) = old.lease.and_then(|id| self.leases.get_mut(&id.0)) {
            l.keys.remove(key);
        }
        let kv = KeyValue {
            key: key.to_vec(),
            mod_revision: Revision(change.revision),
            ..KeyValue::default()
        };
        change.events.push(Event { kind: EventKind::Delete, kv });
        true
    }

    fn keys_with_prefix(&self, prefix: &[u8]) -> Vec<Vec<u8>> {
        self.range(prefix).map(|(k, _)| k.clone()).collect()
    }

    fn range<'a>(&'a self, prefix: &[u8]) -> impl Iterator<Item = (&'a Vec<u8>, &'a KeyValue)> {
        use std::ops::Bound;
        let end = match prefix_end(prefix) {
            Some(end) => Bound::Excluded(end),
            None => Bound::Unbounded,
        };
        self.kvs.range((Bound::Included(prefix.to_vec()), end))
    }

    fn delete_prefix(&mut self, prefix: &[u8], change: &mut Change) -> u64 {
        let keys = self.keys_with_prefix(prefix);
        keys.iter().filter(|k| self.delete_key(k, change)).count() as u64
    }

    /// Applies one transaction op as part of `change`.
    fn apply_op(&mut self, op: &TxnOp, change: &mut Change) -> TxnOpResponse {
        match op {
            TxnOp::Get { key } => TxnOpResponse::Get(self.kvs.get(key).cloned()),
            TxnOp::Put { key, value, lease } => {
                self.put_key(key, value, *lease, change);
                TxnOpResponse::Put
            }
            TxnOp::Delete { key } => TxnOpResponse::Delete(u64::from(self.delete_key(key, change))),
            TxnOp::DeletePrefix { prefix } => {
                TxnOpResponse::Delete(self.delete_prefix(prefix, change))
            }
        }
    }
}

/// Checks etcd's rules for one transaction branch: a key is put at most once
/// and never put and deleted together.
pub(crate) fn check_branch(ops: &[TxnOp]) -> Result<()> {
    let mut puts = BTreeSet::new();
    for op in ops {
        if let TxnOp::Put { key, .. } = op
            && !puts.insert(key.as_slice())
        {
            return Err(Error::InvalidInput("duplicate key given in txn request".into()));
        }
    }
    for op in ops {
        let overlaps = match op {
            TxnOp::Delete { key } => puts.contains(key.as_slice()),
            TxnOp::DeletePrefix { prefix } => puts.iter().any(|k| k.starts_with(prefix)),
            _ => false,
        };
        if overlaps {
            return Err(Error::InvalidInput("duplicate key given in txn request".into()));
        }
    }
    Ok(())
}

#[async_trait]
impl Registry for MemoryRegistry {
    async fn get(&self, key: &[u8]) -> Result<Option<KeyValue>> {
        Ok(self.lock().kvs.get(key).cloned())
    }

    async fn get_prefix(&self, prefix: &[u8]) -> Result<Listing> {
        let state = self.lock();
        let kvs = state.range(prefix).map(|(_, kv)| kv.clone()).collect();
        Ok(Listing { kvs, revision: Revision(state.revision) })
    }

    async fn put(&self, key: &[u8], value: &[u8], lease: Option<LeaseId>) -> Result<Revision> {
        let mut state = self.lock();
        state.lease_alive(lease)?;
        let mut change = state.begin();
        state.put_key(key, value, lease, &mut change);
        Ok(Revision(state.commit(change, &self.inner.revision)))
    }

    async fn delete(&self, key: &[u8]) -> Result<(bool, Revision)> {
        let mut state = self.lock();
        let mut change = state.begin();
        let existed = state.delete_key(key, &mut change);
        Ok((existed, Revision(state.commit(change, &self.inner.revision))))
    }

    async fn delete_prefix(&self, prefix: &[u8]) -> Result<(u64, Revision)> {
        let mut state = self.lock();
        let mut change = state.begin();
        let count = state.delete_prefix(prefix, &mut change);
        Ok((count, Revision(state.commit(change, &self.inner.revision))))
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId> {
        if ttl.is_zero() {
            return Err(Error::InvalidInput("lease TTL must be positive".into()));
        }
        self.start_expiry_task();
        let id = {
            let mut state = self.lock();
            let id = state.next_lease;
            state.next_lease += 1;
            let lease = Lease { ttl, deadline: Instant::now() + ttl, keys: BTreeSet::new() };
            state.leases.insert(id, lease);
            id
        };
        self.inner.lease_wake.notify_one();
        Ok(LeaseId(id))
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<()> {
        let mut state = self.lock();
        let l = state.leases.get_mut(&lease.0).ok_or(Error::LeaseNotFound(lease))?;
        l.deadline = Instant::now() + l.ttl;
        Ok(())
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<()> {
        let mut state = self.lock();
        if state.end_lease(lease.0, &self.inner.revision) {
            Ok(())
        } else {
            Err(Error::LeaseNotFound(lease))
        }
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse> {
        let mut state = self.lock();
        let succeeded = txn.compare.iter().all(|c| c.holds(state.kvs.get(&c.key)));
        let ops = if succeeded { &txn.success } else { &txn.failure };
        check_branch(ops)?;
        for op in ops {
            if let TxnOp::Put { lease, .. } = op {
                state.lease_alive(*lease)?;
            }
        }
        let mut change = state.begin();
        let responses = ops.iter().map(|op| state.apply_op(op, &mut change)).collect();
        let revision = Revision(state.commit(change, &self.inner.revision));
        Ok(TxnResponse { succeeded, revision, responses })
    }

    async fn watch_prefix(&self, prefix: &[u8], from: Revision) -> Result<Watch> {
        let from = if from.0 <= 0 { self.lock().revision + 1 } else { from.0 };
        let (tx, rx) = mpsc::channel(Watch::BUFFER);
        let task = tokio::spawn(feed_watch(
            Arc::downgrade(&self.inner),
            self.inner.revision.subscribe(),
            prefix.to_vec(),
            from,
            tx,
        ));
        Ok(Watch::new(rx, task))
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        let mut state = self.lock();
        if revision.0 > state.revision {
            return Err(Error::InvalidInput(format!(
                "cannot compact at future revision {revision} (current {})",
                state.revision
            )));
        }
        while state.history.front().is_some_and(|e| e.kv.mod_revision < revision) {
            state.history.pop_front();
        }
        state.first_retained = state.first_retained.max(revision.0);
        Ok(())
    }

    fn describe(&self) -> String {
        "memory".into()
    }
}

/// Feeds one watch: copies the events at or after `next` under `prefix` out
/// of the history, in order, then waits for the next revision.
async fn feed_watch(
    inner: Weak<Inner>,
    mut revisions: watch::Receiver<i64>,
    prefix: Vec<u8>,
    mut next: i64,
    tx: mpsc::Sender<Result<WatchMessage>>,
) {
    loop {
        // Mark the current revision seen before reading the history, so a
        // change committed after the read wakes the `changed()` below.
        revisions.borrow_and_update();
        let batch = {
            let Some(inner) = inner.upgrade() else { return };
            let state = lock_unpoisoned(&inner.state);
            if next < state.first_retained {
                Err(Revision(state.first_retained))
            } else {
                let start = state.history.partition_point(|e| e.kv.mod_revision.0 < next);
                next = state.revision + 1;
                Ok(state
                    .history
                    .range(start..)
                    .filter(|e| e.kv.key.starts_with(&prefix))
                    .cloned()
                    .collect::<Vec<Event>>())
            }
        };
        let batch = match batch {
            Ok(batch) => batch,
            Err(compact_revision) => {
                let _ = tx.send(Ok(WatchMessage::Resync { compact_revision })).await;
                return;
            }
        };
        if batch.is_empty() {
            if revisions.changed().await.is_err() {
                return;
            }
            continue;
        }
        for event in batch {
            if tx.send(Ok(WatchMessage::Event(event))).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn branch_rules_follow_etcd() {
        assert!(check_branch(&[TxnOp::put("a", "", None), TxnOp::put("a", "", None)]).is_err());
        assert!(check_branch(&[TxnOp::put("a/b", "", None), TxnOp::delete_prefix("a/")]).is_err());
        assert!(check_branch(&[TxnOp::put("a", "", None), TxnOp::delete("b")]).is_ok());
    }
}
