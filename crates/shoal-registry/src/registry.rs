//! The coordination contract every backend implements.
//!
//! The trait is deliberately small and shaped like etcd's v3 API, so that the
//! etcd backend is a translation and the memory backend can reproduce the
//! same behaviour exactly. Everything richer — sessions, elections — is
//! written once on top of it (see [`crate::Session`], [`crate::Election`]).
//!
//! Invariants every backend keeps (the conformance suite checks each):
//! - every change bumps one registry-wide revision by exactly one; a
//!   transaction or a lease expiry that removes several keys is one change;
//!   a request that changes nothing does not bump it (ZooKeeper keeps the
//!   weaker form: its revision, the zxid, grows with every change but not by
//!   exactly one);
//! - a key put with a lease disappears when the lease expires or is revoked,
//!   and watchers see one delete event per key;
//! - a watch delivers every event at or after its start revision that
//!   matches its prefix, in revision order, none skipped; if that history is
//!   gone it delivers [`WatchMessage::Resync`] and ends (ZooKeeper keeps no
//!   history: its watches deliver each key's latest change, coalescing
//!   changes between two reads, and resync when asked for the past);
//! - keys are relative to the backend's namespace: two registries with
//!   different namespaces on one etcd never see each other's keys.

use std::time::Duration;

use async_trait::async_trait;
use shoal_types::{LeaseId, Revision};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::error::Result;
use crate::kv::{KeyValue, Listing, Txn, TxnResponse, WatchMessage};

/// A coordination store: key-values with revisions, leases, transactions
/// and watches. Shared between tasks as `Arc<dyn Registry>`.
#[async_trait]
pub trait Registry: Send + Sync + 'static {
    /// Reads one key.
    async fn get(&self, key: &[u8]) -> Result<Option<KeyValue>>;

    /// Reads every key that starts with `prefix`, in key order, with the
    /// revision of the read.
    async fn get_prefix(&self, prefix: &[u8]) -> Result<Listing>;

    /// Writes `key`. With a lease, the key is deleted when the lease ends;
    /// without one, it is detached from any lease it had. Returns the revision
    /// of the write. Fails with [`crate::Error::LeaseNotFound`] if the lease
    /// is gone.
    async fn put(&self, key: &[u8], value: &[u8], lease: Option<LeaseId>) -> Result<Revision>;

    /// Deletes `key`. Returns whether it existed and the revision after the
    /// request.
    async fn delete(&self, key: &[u8]) -> Result<(bool, Revision)>;

    /// Deletes every key under `prefix`. Returns how many were deleted and
    /// the revision after the request.
    async fn delete_prefix(&self, prefix: &[u8]) -> Result<(u64, Revision)>;

    /// Grants a lease that ends `ttl` after its grant or its last keep-alive.
    /// Backends may round the TTL up (etcd counts whole seconds and has a
    /// minimum of about two seconds).
    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId>;

    /// Renews a lease for its full TTL. Fails with
    /// [`crate::Error::LeaseNotFound`] if it already ended.
    async fn keep_alive(&self, lease: LeaseId) -> Result<()>;

    /// Ends a lease now, deleting its keys. Fails with
    /// [`crate::Error::LeaseNotFound`] if it already ended.
    async fn revoke_lease(&self, lease: LeaseId) -> Result<()>;

    /// Runs a transaction atomically.
    async fn txn(&self, txn: Txn) -> Result<TxnResponse>;

    /// Watches every key under `prefix`, starting at revision `from`
    /// (inclusive); `Revision(0)` means "changes after now". When this
    /// returns, the watch is established: a change made afterwards is seen.
    async fn watch_prefix(&self, prefix: &[u8], from: Revision) -> Result<Watch>;

    /// Discards the history before `revision`: watches that start earlier
    /// get [`WatchMessage::Resync`]. Fails if `revision` is in the future.
    async fn compact(&self, revision: Revision) -> Result<()>;

    /// A human-readable name of the backend and its endpoints, for logs and
    /// error messages, e.g. `memory` or `etcd://127.0.0.1:2379 (namespace shoal)`.
    fn describe(&self) -> String;
}

impl std::fmt::Debug for dyn Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

/// A stream of changes under a prefix, fed by a background task that ends
/// when the `Watch` is dropped.
#[derive(Debug)]
pub struct Watch {
    rx: mpsc::Receiver<Result<WatchMessage>>,
    task: JoinHandle<()>,
}

impl Watch {
    /// How many messages a watch buffers before its feeding task waits for
    /// the reader: a slow reader slows its own feed, never the registry.
    pub(crate) const BUFFER: usize = 256;

    /// Wraps a channel fed by `task`.
    pub(crate) fn new(rx: mpsc::Receiver<Result<WatchMessage>>, task: JoinHandle<()>) -> Self {
        Self { rx, task }
    }

    /// The next message. `None` when the watch has ended: after a
    /// [`WatchMessage::Resync`], after an error, or when the registry is gone.
    /// `Some(Err(_))` when the backend could not continue the watch (e.g.
    /// etcd stayed unreachable past the retry policy); nothing follows it.
    pub async fn next(&mut self) -> Option<Result<WatchMessage>> {
        self.rx.recv().await
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}
