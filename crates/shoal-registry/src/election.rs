//! Leader election over the [`Registry`] trait, for every backend: the
//! shape of etcd's `concurrency.Election`.
//!
//! Each candidate puts one key, `{name}/{lease as 16 hex digits}`, attached
//! to its session's lease. The leader is the candidate whose key has the
//! lowest create revision: candidates queue in the order they arrived, and
//! a key can only be removed (resign, revoke, expiry), never reordered. So
//! at any revision at most one candidate is leader, and when the leader's
//! session ends its key vanishes and the next in line takes over, without
//! anyone having to notice the failure first.
//!
//! A leader must stop acting as leader when its session is lost
//! ([`crate::Session::lost`]): from that moment another candidate may lead.
//! Writes that must only be made by the leader should be guarded in a
//! transaction by the leader key's create revision ([`Leader::revision`]).
//!
//! Cancelling [`Election::campaign`] (dropping its future) leaves the
//! candidate's key queued; call [`Election::resign`] to withdraw it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use shoal_types::Revision;
use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::kv::{Compare, CompareOp, EventKind, KeyValue, Txn, TxnOp, TxnOpResponse, WatchMessage};
use crate::registry::Registry;
use crate::session::Session;

/// The current leader of an election.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leader {
    /// The leader's key, `{name}/{lease}`.
    pub key: Vec<u8>,
    /// What the leader proclaimed (e.g. its address).
    pub value: Vec<u8>,
    /// The create revision of the leader's key: it identifies one term of
    /// leadership and only grows from one leader to the next.
    pub revision: Revision,
}

/// One participant of the election `name`, campaigning with a session.
#[derive(Debug)]
pub struct Election {
    session: Arc<Session>,
    prefix: Vec<u8>,
    key: Vec<u8>,
    /// The create revision of our key while we are a candidate.
    candidacy: Mutex<Option<Revision>>,
}

/// How long the observer waits before retrying after a registry error.
const OBSERVE_RETRY: Duration = Duration::from_millis(500);

fn election_prefix(name: &[u8]) -> Vec<u8> {
    let mut prefix = name.to_vec();
    prefix.push(b'/');
    prefix
}

impl Election {
    /// A participant of the election `name` (e.g. `monitor/leader`).
    pub fn new(session: Arc<Session>, name: impl AsRef<[u8]>) -> Self {
        let prefix = election_prefix(name.as_ref());
        let mut key = prefix.clone();
        key.extend_from_slice(format!("{:016x}", session.lease().0).as_bytes());
        Self { session, prefix, key, candidacy: Mutex::new(None) }
    }

    /// This candidate's key.
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    fn registry(&self) -> &Arc<dyn Registry> {
        self.session.registry()
    }

    fn candidacy(&self) -> Option<Revision> {
        *self.candidacy.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_candidacy(&self, revision: Option<Revision>) {
        *self.candidacy.lock().unwrap_or_else(|p| p.into_inner()) = revision;
    }

    /// Queues as a candidate with `value` and waits until this candidate
    /// leads. Fails with [`Error::SessionLost`] if the session ends first.
    /// Campaigning again while queued or leading only updates the value.
    pub async fn campaign(&self, value: impl AsRef<[u8]>) -> Result<Leader> {
        let value = value.as_ref();
        let lease = Some(self.session.lease());
        let txn = Txn::new()
            .when([Compare::create_revision(self.key.clone(), CompareOp::Equal, Revision(0))])
            .and_then([TxnOp::put(self.key.clone(), value, lease)])
            .or_else([TxnOp::get(self.key.clone())]);
        let resp = self.registry().txn(txn).await?;
        let revision = if resp.succeeded {
            resp.revision
        } else {
            match resp.responses.first() {
                Some(TxnOpResponse::Get(Some(kv))) => {
                    if kv.value != value {
                        self.registry().put(&self.key, value, lease).await?;
                    }
                    kv.create_revision
                }
                _ => {
                    return Err(Error::SessionLost(
                        "election key vanished while campaigning".into(),
                    ));
                }
            }
        };
        self.set_candidacy(Some(revision));
        tokio::select! {
            result = self.wait_to_lead(revision) => {
                result?;
                Ok(Leader { key: self.key.clone(), value: value.to_vec(), revision })
            }
            reason = self.session.lost() => {
                self.set_candidacy(None);
                Err(Error::SessionLost(reason))
            }
        }
    }

    /// Waits until no key older than ours is left under the prefix.
    async fn wait_to_lead(&self, mine: Revision) -> Result<()> {
        loop {
            let listing = self.registry().get_prefix(&self.prefix).await?;
            if !listing.kvs.iter().any(|kv| kv.key == self.key && kv.create_revision == mine) {
                self.set_candidacy(None);
                return Err(Error::SessionLost("election key was deleted".into()));
            }
            if !listing.kvs.iter().any(|kv| kv.create_revision < mine) {
                return Ok(());
            }
            // Someone is ahead: wait for any deletion, then look again.
            let mut watch = self
                .registry()
                .watch_prefix(&self.prefix, Revision(listing.revision.0 + 1))
                .await?;
            loop {
                match watch.next().await {
                    Some(Ok(WatchMessage::Event(e))) if e.kind == EventKind::Delete => break,
                    Some(Ok(WatchMessage::Event(_))) => continue,
                    Some(Ok(WatchMessage::Resync { .. })) | None => break,
                    Some(Err(e)) => return Err(e),
                }
            }
        }
    }

    /// Changes the leader's value. Fails with [`Error::SessionLost`] if this
    /// candidate's key is gone.
    pub async fn proclaim(&self, value: impl AsRef<[u8]>) -> Result<()> {
        let Some(revision) = self.candidacy() else {
            return Err(Error::SessionLost("not campaigning".into()));
        };
        let txn = Txn::new()
            .when([Compare::create_revision(self.key.clone(), CompareOp::Equal, revision)])
            .and_then([TxnOp::put(self.key.clone(), value.as_ref(), Some(self.session.lease()))]);
        if self.registry().txn(txn).await?.succeeded {
            Ok(())
        } else {
            self.set_candidacy(None);
            Err(Error::SessionLost("election key is gone".into()))
        }
    }

    /// Withdraws: deletes this candidate's key, so the next in line leads.
    /// Does nothing if this candidate is not queued.
    pub async fn resign(&self) -> Result<()> {
        let Some(revision) = self.candidacy() else { return Ok(()) };
        let txn = Txn::new()
            .when([Compare::create_revision(self.key.clone(), CompareOp::Equal, revision)])
            .and_then([TxnOp::delete(self.key.clone())]);
        self.registry().txn(txn).await?;
        self.set_candidacy(None);
        Ok(())
    }

    /// Whether this candidate leads right now.
    pub async fn is_leader(&self) -> Result<bool> {
        Ok(self.leader().await?.is_some_and(|l| l.key == self.key))
    }

    /// The current leader of this election, if any.
    pub async fn leader(&self) -> Result<Option<Leader>> {
        leader(
            self.registry().as_ref(),
            self.prefix.as_slice().strip_suffix(b"/").unwrap_or_default(),
        )
        .await
    }

    /// Follows the leader of this election; see [`observe`].
    pub fn observe(&self) -> watch::Receiver<Option<Leader>> {
        observe(
            self.registry().clone(),
            self.prefix.as_slice().strip_suffix(b"/").unwrap_or_default(),
        )
    }
}

fn leader_of(kvs: &[KeyValue]) -> Option<Leader> {
    kvs.iter().min_by_key(|kv| kv.create_revision).map(|kv| Leader {
        key: kv.key.clone(),
        value: kv.value.clone(),
        revision: kv.create_revision,
    })
}

/// The current leader of the election `name`, without taking part in it.
pub async fn leader(registry: &dyn Registry, name: &[u8]) -> Result<Option<Leader>> {
    let listing = registry.get_prefix(&election_prefix(name)).await?;
    Ok(leader_of(&listing.kvs))
}

/// Follows the leader of the election `name`, without taking part in it:
/// the receiver holds the current leader (`None` while there is none) and
/// changes whenever leadership or the leader's value changes. A background
/// task keeps it current, riding out registry errors, until every receiver
/// is dropped.
pub fn observe(registry: Arc<dyn Registry>, name: &[u8]) -> watch::Receiver<Option<Leader>> {
    let (tx, rx) = watch::channel(None);
    let prefix = election_prefix(name);
    tokio::spawn(async move {
        tokio::select! {
            _ = follow(registry.as_ref(), &prefix, &tx) => {}
            _ = tx.closed() => {}
        }
    });
    rx
}

async fn follow(registry: &dyn Registry, prefix: &[u8], tx: &watch::Sender<Option<Leader>>) {
    loop {
        let listing = match registry.get_prefix(prefix).await {
            Ok(listing) => listing,
            Err(e) => {
                tracing::warn!(error = %e, "election observer cannot read the registry; retrying");
                tokio::time::sleep(OBSERVE_RETRY).await;
                continue;
            }
        };
        let mut kvs = listing.kvs;
        publish(tx, leader_of(&kvs));
        let mut watch = match registry.watch_prefix(prefix, Revision(listing.revision.0 + 1)).await
        {
            Ok(watch) => watch,
            Err(e) => {
                tracing::warn!(error = %e, "election observer cannot watch the registry; retrying");
                tokio::time::sleep(OBSERVE_RETRY).await;
                continue;
            }
        };
        // Apply events to the listing; on resync or error, list again.
        while let Some(Ok(WatchMessage::Event(e))) = watch.next().await {
            kvs.retain(|kv| kv.key != e.kv.key);
            if e.kind == EventKind::Put {
                kvs.push(e.kv);
            }
            publish(tx, leader_of(&kvs));
        }
    }
}

fn publish(tx: &watch::Sender<Option<Leader>>, leader: Option<Leader>) {
    tx.send_if_modified(|current| {
        if *current == leader {
            false
        } else {
            *current = leader;
            true
        }
    });
}
