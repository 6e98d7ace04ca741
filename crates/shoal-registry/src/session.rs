//! A session: one lease kept alive in the background, with a signal when it
//! is lost. Written once over the [`Registry`] trait, for every backend.
//!
//! This is the shape of etcd's `concurrency.Session`. A node registers its
//! `nodes/{node_id}` key with the session's lease; while the process lives
//! and reaches the registry the key stays, and when the process dies the
//! key vanishes `ttl` later and every watcher learns of it.
//!
//! The keep-alive task renews the lease every third of its TTL. A failed
//! renewal is retried sooner (every tenth of the TTL) but only until the
//! lease would have run out since the last renewal the registry confirmed:
//! past that point the lease may be gone on the server while this process
//! still believes it holds it, so the session declares itself lost instead.
//! A lost session never comes back; make a new one. Invariant: while
//! [`Session::is_lost`] is false, the lease was confirmed alive less than
//! `ttl` ago (measured from before the confirming request was sent).

use std::sync::Arc;
use std::time::Duration;

use shoal_types::LeaseId;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::registry::Registry;

/// Options of a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionOptions {
    /// The lease TTL: how long after this process stops renewing (it died, or
    /// lost the registry) its leased keys vanish. Shoal nodes use
    /// `node_ttl` (90 s by default).
    pub ttl: Duration,
}

impl Default for SessionOptions {
    fn default() -> Self {
        Self { ttl: Duration::from_secs(90) }
    }
}

/// A lease kept alive in the background. Dropping the session stops the
/// renewals (the lease then expires after its TTL); [`Session::close`]
/// revokes it at once.
#[derive(Debug)]
pub struct Session {
    registry: Arc<dyn Registry>,
    lease: LeaseId,
    ttl: Duration,
    /// `Some(reason)` once the session is lost.
    lost: Arc<watch::Sender<Option<String>>>,
    task: JoinHandle<()>,
}

impl Session {
    /// Grants a lease and starts keeping it alive.
    pub async fn new(registry: Arc<dyn Registry>, options: SessionOptions) -> Result<Self> {
        let ttl = options.ttl;
        if ttl.is_zero() {
            return Err(Error::InvalidInput("session TTL must be positive".into()));
        }
        let granted_at = Instant::now();
        let lease = registry.grant_lease(ttl).await?;
        let lost = Arc::new(watch::Sender::new(None));
        let task = tokio::spawn(keep_alive(registry.clone(), lease, ttl, granted_at, lost.clone()));
        Ok(Self { registry, lease, ttl, lost, task })
    }

    /// The session's lease: attach keys to it to tie them to this session.
    pub fn lease(&self) -> LeaseId {
        self.lease
    }

    /// The TTL the session was asked for.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The registry the lease lives in.
    pub fn registry(&self) -> &Arc<dyn Registry> {
        &self.registry
    }

    /// Whether the lease is lost (expired, revoked, unrenewable, or the
    /// session was closed).
    pub fn is_lost(&self) -> bool {
        self.lost.borrow().is_some()
    }

    /// Why the session was lost, if it was.
    pub fn lost_reason(&self) -> Option<String> {
        self.lost.borrow().clone()
    }

    /// Resolves once the session is lost, with the reason.
    pub async fn lost(&self) -> String {
        let mut rx = self.lost.subscribe();
        let reason = match rx.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone(),
            // The sender lives in `self`, so it cannot be gone while we wait.
            Err(_) => None,
        };
        reason.unwrap_or_else(|| "session dropped".into())
    }

    /// A receiver that turns `Some(reason)` when the session is lost, for
    /// tasks that outlive a borrow of the session.
    pub fn lost_signal(&self) -> watch::Receiver<Option<String>> {
        self.lost.subscribe()
    }

    /// Stops renewing and revokes the lease, deleting its keys now.
    pub async fn close(self) -> Result<()> {
        self.task.abort();
        self.lost.send_replace(Some("session closed".into()));
        match self.registry.revoke_lease(self.lease).await {
            Ok(()) | Err(Error::LeaseNotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Renews `lease` until it is lost; see the module docs for the policy.
async fn keep_alive(
    registry: Arc<dyn Registry>,
    lease: LeaseId,
    ttl: Duration,
    granted_at: Instant,
    lost: Arc<watch::Sender<Option<String>>>,
) {
    let renew_every = (ttl / 3).max(Duration::from_millis(1));
    let retry_every = (ttl / 10).max(Duration::from_millis(1));
    // The lease certainly lives until here; past it, it may not.
    let mut expires = granted_at + ttl;
    let mut wait = renew_every;
    loop {
        tokio::time::sleep(wait).await;
        let sent = Instant::now();
        let reason = match tokio::time::timeout_at(expires, registry.keep_alive(lease)).await {
            Ok(Ok(())) => {
                expires = sent + ttl;
                wait = renew_every;
                continue;
            }
            Ok(Err(Error::LeaseNotFound(_))) => format!("lease {lease} expired or was revoked"),
            Ok(Err(e)) if Instant::now() + retry_every < expires => {
                tracing::warn!(%lease, error = %e, "lease keep-alive failed; retrying");
                wait = retry_every;
                continue;
            }
            Ok(Err(e)) => format!("lease {lease} could not be renewed within its TTL: {e}"),
            Err(_) => format!("lease {lease} could not be renewed within its TTL"),
        };
        tracing::warn!(%lease, %reason, "registry session lost");
        lost.send_replace(Some(reason));
        return;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use async_trait::async_trait;
    use shoal_types::Revision;

    use super::*;
    use crate::kv::{KeyValue, Listing, Txn, TxnResponse};
    use crate::memory::MemoryRegistry;
    use crate::registry::Watch;

    /// A memory registry whose keep-alives fail with `Unavailable` while
    /// `down` is set, as an unreachable etcd's would.
    struct Flaky {
        inner: MemoryRegistry,
        down: AtomicBool,
    }

    #[async_trait]
    impl Registry for Flaky {
        async fn get(&self, key: &[u8]) -> Result<Option<KeyValue>> {
            self.inner.get(key).await
        }
        async fn get_prefix(&self, prefix: &[u8]) -> Result<Listing> {
            self.inner.get_prefix(prefix).await
        }
        async fn put(&self, key: &[u8], value: &[u8], lease: Option<LeaseId>) -> Result<Revision> {
            self.inner.put(key, value, lease).await
        }
        async fn delete(&self, key: &[u8]) -> Result<(bool, Revision)> {
            self.inner.delete(key).await
        }
        async fn delete_prefix(&self, prefix: &[u8]) -> Result<(u64, Revision)> {
            self.inner.delete_prefix(prefix).await
        }
        async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId> {
            self.inner.grant_lease(ttl).await
        }
        async fn keep_alive(&self, lease: LeaseId) -> Result<()> {
            if self.down.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_secs(1)).await;
                return Err(Error::Unavailable("test: registry down".into()));
            }
            self.inner.keep_alive(lease).await
        }
        async fn revoke_lease(&self, lease: LeaseId) -> Result<()> {
            self.inner.revoke_lease(lease).await
        }
        async fn txn(&self, txn: Txn) -> Result<TxnResponse> {
            self.inner.txn(txn).await
        }
        async fn watch_prefix(&self, prefix: &[u8], from: Revision) -> Result<Watch> {
            self.inner.watch_prefix(prefix, from).await
        }
        async fn compact(&self, revision: Revision) -> Result<()> {
            self.inner.compact(revision).await
        }
        fn describe(&self) -> String {
            "flaky".into()
        }
    }

    fn flaky() -> Arc<Flaky> {
        Arc::new(Flaky { inner: MemoryRegistry::default(), down: AtomicBool::new(false) })
    }

    #[tokio::test(start_paused = true)]
    async fn short_outage_is_ridden_out() {
        let registry = flaky();
        let session =
            Session::new(registry.clone(), SessionOptions { ttl: Duration::from_secs(30) })
                .await
                .unwrap();
        registry.down.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(15)).await;
        registry.down.store(false, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(120)).await;
        assert!(!session.is_lost(), "{:?}", session.lost_reason());
    }

    #[tokio::test(start_paused = true)]
    async fn long_outage_loses_the_session_within_the_ttl() {
        let registry = flaky();
        let ttl = Duration::from_secs(30);
        let start = Instant::now();
        let session = Session::new(registry.clone(), SessionOptions { ttl }).await.unwrap();
        registry.down.store(true, Ordering::SeqCst);
        let reason = session.lost().await;
        assert!(reason.contains("could not be renewed within its TTL"), "{reason}");
        // Never later than the lease could have expired on the server.
        assert!(start.elapsed() <= ttl, "lost after {:?}", start.elapsed());
        assert!(start.elapsed() >= ttl - ttl / 10 - Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_the_session_lets_the_lease_expire() {
        let registry = Arc::new(MemoryRegistry::default());
        let session =
            Session::new(registry.clone(), SessionOptions { ttl: Duration::from_secs(5) })
                .await
                .unwrap();
        let lease = session.lease();
        registry.put(b"k", b"v", Some(lease)).await.unwrap();
        drop(session);
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert_eq!(registry.get(b"k").await.unwrap(), None);
    }
}
