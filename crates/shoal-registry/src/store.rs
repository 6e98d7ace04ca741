//! The registry's state as a deterministic machine: key-values with one
//! revision, leases with their keys, and the history watches read.
//!
//! Two backends keep their state in a [`Store`]: the in-process memory
//! registry, and the embedded replicated registry, where every member applies
//! the same commands to its own store in log order. So a store never reads a
//! clock: a lease here is a TTL and a set of keys, and *when* it ends is the
//! owner's business (the memory backend keeps deadlines beside the store; the
//! embedded registry's leader keeps them and logs an expiry when one passes).
//!
//! Every request applies itself in one call, appends its events to the
//! history and publishes the new revision on a `watch` channel that
//! [`feed_watch`] tasks wait on. **History.** The store keeps the last
//! `history` events in revision order; each watch is a task with a cursor
//! (the next revision it must deliver) that copies the matching events out of
//! the history. A watch whose cursor falls behind the oldest retained
//! revision gets [`WatchMessage::Resync`] and ends, never a gap. History is
//! dropped in whole revisions, so a transaction's events are either all there
//! or all gone: every event at a revision `>= first_retained` is in the
//! history.
//!
//! What must survive a restart is the [`Image`]: keys, leases, the revision
//! and the next lease id. History is not part of it: a store rebuilt from an
//! image resyncs watches that start before its revision.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shoal_types::{LeaseId, Revision};
use tokio::sync::{mpsc, watch};

use crate::error::{Error, Result};
use crate::kv::{
    Event, EventKind, KeyValue, Listing, Txn, TxnOp, TxnOpResponse, TxnResponse, WatchMessage,
    prefix_end,
};

/// The registry's state. See the module documentation.
pub struct Store {
    revision: i64,
    kvs: BTreeMap<Vec<u8>, KeyValue>,
    leases: BTreeMap<i64, Lease>,
    next_lease: i64,
    history: VecDeque<Event>,
    history_cap: usize,
    /// Every event at a revision >= this is in `history`.
    first_retained: i64,
    /// The current revision, published after every change. Dropped with the
    /// store, which ends every watch.
    published: watch::Sender<i64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Lease {
    ttl: Duration,
    keys: BTreeSet<Vec<u8>>,
}

/// What of a store must be kept: everything but the history.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    revision: i64,
    kvs: Vec<KeyValue>,
    leases: Vec<(i64, Lease)>,
    next_lease: i64,
}

/// The events of one change, collected before they are committed.
struct Change {
    revision: i64,
    events: Vec<Event>,
}

impl Store {
    /// An empty store at revision 0 that keeps `history` events (at least 1).
    pub fn new(history: usize) -> Store {
        Store {
            revision: 0,
            kvs: BTreeMap::new(),
            leases: BTreeMap::new(),
            next_lease: 1,
            history: VecDeque::new(),
            history_cap: history.max(1),
            first_retained: 1,
            published: watch::Sender::new(0),
        }
    }

    /// The current revision.
    pub fn revision(&self) -> Revision {
        Revision(self.revision)
    }

    /// A receiver of the revision after each change, for [`feed_watch`].
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.published.subscribe()
    }

    /// What must be kept of this store.
    pub fn image(&self) -> Image {
        Image {
            revision: self.revision,
            kvs: self.kvs.values().cloned().collect(),
            leases: self.leases.iter().map(|(id, l)| (*id, l.clone())).collect(),
            next_lease: self.next_lease,
        }
    }

    /// Replaces the state with `image`. The history restarts empty after the
    /// image's revision, so watches behind it resync; they are woken.
    pub fn restore(&mut self, image: Image) {
        self.revision = image.revision;
        self.kvs = image.kvs.into_iter().map(|kv| (kv.key.clone(), kv)).collect();
        self.leases = image.leases.into_iter().collect();
        self.next_lease = image.next_lease.max(1);
        self.history.clear();
        self.first_retained = self.revision + 1;
        self.published.send_replace(self.revision);
    }

    fn begin(&self) -> Change {
        Change { revision: self.revision + 1, events: Vec::new() }
    }

    /// Commits a change: bumps the revision if anything changed, records the
    /// events and wakes the watchers. Returns the revision after the change.
    fn commit(&mut self, change: Change) -> Revision {
        if change.events.is_empty() {
            return Revision(self.revision);
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
        self.published.send_replace(self.revision);
        Revision(self.revision)
    }

    /// Reads one key.
    pub fn get(&self, key: &[u8]) -> Option<KeyValue> {
        self.kvs.get(key).cloned()
    }

    /// Reads every key under `prefix`, with the current revision.
    pub fn listing(&self, prefix: &[u8]) -> Listing {
        let kvs = self.range(prefix).map(|(_, kv)| kv.clone()).collect();
        Listing { kvs, revision: Revision(self.revision) }
    }

    /// Writes a key; fails if `lease` is gone.
    pub fn put(&mut self, key: &[u8], value: &[u8], lease: Option<LeaseId>) -> Result<Revision> {
        self.lease_alive(lease)?;
        let mut change = self.begin();
        self.put_key(key, value, lease, &mut change);
        Ok(self.commit(change))
    }

    /// Deletes a key: whether it existed, and the revision after.
    pub fn delete(&mut self, key: &[u8]) -> (bool, Revision) {
        let mut change = self.begin();
        let existed = self.delete_key(key, &mut change);
        (existed, self.commit(change))
    }

    /// Deletes every key under `prefix`: how many, and the revision after.
    pub fn delete_prefix(&mut self, prefix: &[u8]) -> (u64, Revision) {
        let mut change = self.begin();
        let count = self.delete_range(prefix, &mut change);
        (count, self.commit(change))
    }

    /// Runs a transaction.
    pub fn txn(&mut self, txn: &Txn) -> Result<TxnResponse> {
        let succeeded = txn.compare.iter().all(|c| c.holds(self.kvs.get(&c.key)));
        let ops = if succeeded { &txn.success } else { &txn.failure };
        check_branch(ops)?;
        for op in ops {
            if let TxnOp::Put { lease, .. } = op {
                self.lease_alive(*lease)?;
            }
        }
        let mut change = self.begin();
        let responses = ops.iter().map(|op| self.apply_op(op, &mut change)).collect();
        let revision = self.commit(change);
        Ok(TxnResponse { succeeded, revision, responses })
    }

    /// Grants a lease of `ttl` (positive) and returns its id.
    pub fn grant(&mut self, ttl: Duration) -> Result<LeaseId> {
        if ttl.is_zero() {
            return Err(Error::InvalidInput("lease TTL must be positive".into()));
        }
        let id = self.next_lease;
        self.next_lease += 1;
        self.leases.insert(id, Lease { ttl, keys: BTreeSet::new() });
        Ok(LeaseId(id))
    }

    /// The TTL of a live lease.
    pub fn lease_ttl(&self, lease: LeaseId) -> Option<Duration> {
        self.leases.get(&lease.0).map(|l| l.ttl)
    }

    /// Every live lease with its TTL.
    pub fn leases(&self) -> impl Iterator<Item = (LeaseId, Duration)> + '_ {
        self.leases.iter().map(|(id, l)| (LeaseId(*id), l.ttl))
    }

    /// Ends a lease, deleting its keys in one change. False if it was gone.
    pub fn revoke(&mut self, lease: LeaseId) -> bool {
        let Some(ended) = self.leases.remove(&lease.0) else { return false };
        let mut change = self.begin();
        for key in ended.keys {
            self.delete_key(&key, &mut change);
        }
        self.commit(change);
        true
    }

    /// Drops the history before `revision`.
    pub fn compact(&mut self, revision: Revision) -> Result<()> {
        if revision.0 > self.revision {
            return Err(Error::InvalidInput(format!(
                "cannot compact at future revision {revision} (current {})",
                self.revision
            )));
        }
        while self.history.front().is_some_and(|e| e.kv.mod_revision < revision) {
            self.history.pop_front();
        }
        self.first_retained = self.first_retained.max(revision.0);
        Ok(())
    }

    /// The events under `prefix` from revision `next` on, and the revision
    /// to read from next time; or, if that history is gone, the oldest
    /// revision that can still be read.
    pub fn events_since(&self, prefix: &[u8], next: i64) -> Result<(Vec<Event>, i64), Revision> {
        if next < self.first_retained {
            return Err(Revision(self.first_retained));
        }
        let start = self.history.partition_point(|e| e.kv.mod_revision.0 < next);
        let events =
            self.history.range(start..).filter(|e| e.kv.key.starts_with(prefix)).cloned().collect();
        Ok((events, self.revision.max(next - 1) + 1))
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

    fn range<'a>(&'a self, prefix: &[u8]) -> impl Iterator<Item = (&'a Vec<u8>, &'a KeyValue)> {
        use std::ops::Bound;
        let end = match prefix_end(prefix) {
            Some(end) => Bound::Excluded(end),
            None => Bound::Unbounded,
        };
        self.kvs.range((Bound::Included(prefix.to_vec()), end))
    }

    fn delete_range(&mut self, prefix: &[u8], change: &mut Change) -> u64 {
        let keys: Vec<Vec<u8>> = self.range(prefix).map(|(k, _)| k.clone()).collect();
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
                TxnOpResponse::Delete(self.delete_range(prefix, change))
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

/// Feeds one watch: copies the events at or after `next` under `prefix` out
/// of a store's history, in order, then waits for the next revision. `read`
/// runs [`Store::events_since`] on the store under its lock, or answers
/// `None` once the store is gone (which ends the watch).
pub async fn feed_watch<R>(
    mut revisions: watch::Receiver<i64>,
    prefix: Vec<u8>,
    mut next: i64,
    tx: mpsc::Sender<Result<WatchMessage>>,
    read: R,
) where
    R: Fn(&[u8], i64) -> Option<Result<(Vec<Event>, i64), Revision>>,
{
    loop {
        // Mark the current revision seen before reading the history, so a
        // change committed after the read wakes the `changed()` below.
        revisions.borrow_and_update();
        let batch = match read(&prefix, next) {
            None => return,
            Some(Ok((batch, after))) => {
                next = after;
                batch
            }
            Some(Err(compact_revision)) => {
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

    #[test]
    fn branch_rules_follow_etcd() {
        assert!(check_branch(&[TxnOp::put("a", "", None), TxnOp::put("a", "", None)]).is_err());
        assert!(check_branch(&[TxnOp::put("a/b", "", None), TxnOp::delete_prefix("a/")]).is_err());
        assert!(check_branch(&[TxnOp::put("a", "", None), TxnOp::delete("b")]).is_ok());
    }

    #[test]
    fn an_image_restores_everything_but_history() {
        let mut store = Store::new(100);
        let lease = store.grant(Duration::from_secs(5)).unwrap();
        store.put(b"a", b"1", Some(lease)).unwrap();
        store.put(b"b", b"2", None).unwrap();
        let mut copy = Store::new(100);
        copy.restore(store.image());
        assert_eq!(copy.image(), store.image());
        assert_eq!(copy.listing(b""), store.listing(b""));
        assert_eq!(copy.events_since(b"", 1), Err(Revision(3)));
        assert!(copy.revoke(lease));
        assert_eq!(copy.get(b"a"), None);
        assert_eq!(copy.grant(Duration::from_secs(1)).unwrap(), LeaseId(2));
    }
}
