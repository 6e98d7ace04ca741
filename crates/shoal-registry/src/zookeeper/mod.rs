//! The ZooKeeper backend: the contract over ZooKeeper >= 3.6 through the
//! pure-Rust `zookeeper-client` crate. `docs/registry.md` describes the
//! mapping for operators; this comment explains why it is built this way.
//!
//! **Layout.** The namespace is the chroot: everything lives under
//! `/{namespace}`. Keys are flat, one znode per key under `/{namespace}/kv`,
//! named by the key with every byte other than `[A-Za-z0-9_-]` escaped as
//! `%XX`, so that any byte string (`/`, `.`, binary) is one valid znode name
//! and prefixes stay byte prefixes. A key's `create_revision` is the znode's
//! `czxid`, its `mod_revision` the `mzxid`, its `version` the data version
//! plus one, its lease the ephemeral owner. `/{namespace}/rev` is a marker
//! that every write sets in the same `multi`, so the zxid of every change
//! made through this backend can be read back, even a delete's.
//!
//! **Revision = zxid.** The registry-wide revision is ZooKeeper's zxid. It
//! only grows, and every change at one zxid is one change, but it is not
//! dense: session creation and closing, failed requests and other
//! namespaces' writes consume zxids too, and a new ZooKeeper leader starts a
//! new epoch (the high 32 bits). The revision of a namespace at a moment is
//! the larger of the marker's `mzxid` and the key directory's `pzxid` (the
//! zxid of the last key created or deleted, which also covers keys removed
//! by an expiring session).
//!
//! **Reads** of several keys are one `multiRead`, which ZooKeeper serves
//! from one snapshot; a listing also reads the directory's children in the
//! same request and starts over if they changed since it chose the keys.
//! Reads are sequentially consistent (ZooKeeper's guarantee), not
//! linearizable: a read on a lagging follower can miss another process's
//! latest write. After a write through a lease's own session, the main
//! session is `sync`ed so that this registry reads its own writes.
//!
//! **Transactions** are optimistic: read every key the transaction touches
//! (one snapshot), evaluate the guards here, then send the chosen branch as
//! one `multi` that checks the version of every key read that exists, and —
//! when the outcome depends on a key being absent or on which keys a prefix
//! holds — the version of the marker. If anything changed in between, the
//! `multi` fails as a whole and the transaction starts over. `put` and
//! `delete` are transactions of one op.
//!
//! **Leases are sessions.** A lease is a ZooKeeper session of its own,
//! opened with the lease TTL as its session timeout; leased keys are
//! ephemeral znodes created by that session, which ZooKeeper deletes in one
//! transaction when the session ends. The server keeps the session alive as
//! long as its client sends heartbeats, i.e. as long as this process lives
//! and reaches the ensemble; so that a lease also ends when its holder stops
//! calling [`Registry::keep_alive`] (etcd's behaviour, which the contract
//! promises), the backend closes a session whose keep-alive deadline passes.
//! A lease can only be used by the registry value that granted it (and its
//! clones): the session lives in this process. Because an ephemeral znode's
//! owner is fixed at creation, a put that moves a key to another lease (or
//! off a lease) deletes and re-creates the znode in one `multi`: the key's
//! create revision changes and its version starts again at 1.
//!
//! **Watches** are persistent recursive watches on the key directory.
//! ZooKeeper 3.8 notifications carry neither the data nor the zxid of the
//! change, so the watch re-reads the prefix after each notification and
//! delivers the difference from what it delivered before, in revision
//! order: a put carries the key's exact `mzxid`, a delete the directory's
//! `pzxid` at the read (the exact zxid unless another key was created or
//! deleted right after it). Several changes to one key between two reads
//! arrive as one event with the latest value. ZooKeeper keeps no history, so
//! a watch can start in the past only when no key was created or deleted
//! since then (then the latest value of each key changed since is
//! delivered); otherwise it gets [`WatchMessage::Resync`] at once. After a
//! reconnection the watch is added again (a restarted server may have
//! forgotten it) and the prefix re-read, so nothing is missed. A watch whose
//! session expires is lost with it: it ends with a resync, and the registry
//! opens a new main session for what follows. [`Registry::compact`] has
//! nothing to discard and only checks its argument.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use shoal_types::{LeaseId, Revision};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use zookeeper_client as zk;

use crate::error::{Error, Result};
use crate::kv::{
    Event, EventKind, KeyValue, Listing, Txn, TxnOp, TxnOpResponse, TxnResponse, WatchMessage,
};
use crate::registry::{Registry, Watch};
use crate::store::check_branch;

mod layout;
mod txn;
mod watch;

use layout::{Snapshot, Znode, encode_key, key_path, matching, to_znode};
use txn::{Write, plan_branch, send_multi};
use watch::WatchFeeder;

/// The directory of keys, relative to the chroot.
const KV_DIR: &str = "/kv";
/// The marker every write sets, relative to the chroot.
const REV_NODE: &str = "/rev";
/// How many times a transaction starts over when a concurrent change
/// invalidated what it read, before it gives up.
const MAX_CONFLICTS: u32 = 200;

/// Options of the ZooKeeper backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZkOptions {
    /// The ensemble's client addresses, `host:port`.
    pub endpoints: Vec<String>,
    /// The chroot: everything lives under `/{namespace}`.
    pub namespace: String,
    /// The wait between two attempts of a failed request.
    pub retry_interval: Duration,
    /// How many times a failed request is retried (0: tried once).
    pub max_retries: u32,
    /// The longest one attempt of one request may take, connecting included.
    pub operation_timeout: Duration,
    /// The session timeout of the main session (reads, watches, unleased
    /// writes; leases have sessions of their own, with their TTL). Its
    /// watches die with it, so it is generous: 15 s by default. ZooKeeper
    /// bounds it to `minSessionTimeout`..`maxSessionTimeout`; a client that
    /// cannot reconnect within 1.4 times it takes its session for expired.
    pub session_timeout: Duration,
}

impl Default for ZkOptions {
    fn default() -> Self {
        Self {
            endpoints: vec!["127.0.0.1:2181".into()],
            namespace: "shoal".into(),
            retry_interval: Duration::from_millis(500),
            max_retries: 5,
            operation_timeout: Duration::from_secs(5),
            session_timeout: Duration::from_secs(15),
        }
    }
}

/// A registry stored in ZooKeeper. Clones share the connection and leases.
#[derive(Clone)]
pub struct ZkRegistry {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ZkRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZkRegistry").field("options", &self.inner.options).finish_non_exhaustive()
    }
}

struct Inner {
    options: ZkOptions,
    /// The main session, for reads, watches and unleased writes; replaced
    /// when it expires.
    client: tokio::sync::Mutex<zk::Client>,
    /// The sessions behind the leases this registry granted.
    leases: Mutex<HashMap<i64, LeaseHandle>>,
}

/// One granted lease: its session and its keep-alive deadline.
struct LeaseHandle {
    client: zk::Client,
    ttl: Duration,
    /// Past this instant the lease ends (the deadline task closes it).
    deadline: Arc<Mutex<Instant>>,
    task: JoinHandle<()>,
}

/// How a failed attempt is handled.
enum Failure {
    /// Try again after the retry interval.
    Transient(String),
    /// Give up at once with this error.
    Fatal(Error),
}

/// Sorts a ZooKeeper failure into "retry" or "give up".
fn classify(e: &zk::Error) -> Failure {
    use zk::Error as E;
    match e {
        E::ConnectionLoss | E::Timeout | E::Throttled | E::NoHosts | E::SessionMoved => {
            Failure::Transient(e.to_string())
        }
        E::NotReadOnly => Failure::Transient("connected to a read-only server".into()),
        E::BadArguments(_) | E::InvalidAcl => Failure::Fatal(Error::InvalidInput(e.to_string())),
        other => Failure::Fatal(Error::Internal(format!("zookeeper: {other}"))),
    }
}

impl ZkRegistry {
    /// Connects to the ensemble, creates the namespace's nodes if needed and
    /// checks that ZooKeeper answers (with the retry policy).
    pub async fn connect(options: ZkOptions) -> Result<Self> {
        if options.endpoints.is_empty() {
            return Err(Error::config("registry", "no ZooKeeper endpoint given"));
        }
        let client = connect_client(&options, None).await?;
        let inner = Arc::new(Inner {
            options,
            client: tokio::sync::Mutex::new(client),
            leases: Mutex::new(HashMap::new()),
        });
        Ok(Self { inner })
    }

    fn options(&self) -> &ZkOptions {
        &self.inner.options
    }

    fn endpoints(&self) -> String {
        self.options().endpoints.join(",")
    }

    /// The main session, reconnected if it expired.
    async fn client(&self) -> Result<zk::Client> {
        let mut client = self.inner.client.lock().await;
        if client.state().is_terminated() {
            tracing::warn!(endpoints = %self.endpoints(), "ZooKeeper session ended; opening a new one");
            *client = connect_client(self.options(), None).await?;
        }
        Ok(client.clone())
    }

    /// Runs one request with the retry policy: each attempt bounded by the
    /// operation timeout, transient failures retried, an expired main
    /// session replaced.
    async fn call<T, F, Fut>(&self, what: &str, mut f: F) -> Result<T>
    where
        F: FnMut(zk::Client) -> Fut,
        Fut: Future<Output = Result<T, zk::Error>>,
    {
        let timeout = self.options().operation_timeout;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let reason = match self.client().await {
                Err(e) => e.to_string(),
                Ok(client) => match tokio::time::timeout(timeout, f(client)).await {
                    Ok(Ok(v)) => return Ok(v),
                    Ok(Err(zk::Error::SessionExpired)) => "session expired".to_string(),
                    Ok(Err(e)) => match classify(&e) {
                        Failure::Transient(reason) => reason,
                        Failure::Fatal(e) => return Err(e),
                    },
                    Err(_) => format!("no answer within {}", humantime::format_duration(timeout)),
                },
            };
            if attempt > self.options().max_retries {
                return Err(Error::Unavailable(format!(
                    "{what}: ZooKeeper endpoints {} did not answer after {attempt} attempt(s); last error: {reason}",
                    self.endpoints()
                )));
            }
            tracing::debug!(what, attempt, %reason, "ZooKeeper request failed; retrying");
            tokio::time::sleep(self.options().retry_interval).await;
        }
    }

    /// Reads `keys` and every key under `prefixes` in one snapshot.
    async fn read(&self, keys: &BTreeSet<Vec<u8>>, prefixes: &[Vec<u8>]) -> Result<Snapshot> {
        for _ in 0..MAX_CONFLICTS {
            let mut wanted = keys.clone();
            if !prefixes.is_empty() {
                let names =
                    self.call("list", |c| async move { c.list_children(KV_DIR).await }).await?;
                wanted.extend(matching(&names, prefixes));
            }
            let paths: Vec<String> = wanted.iter().map(|k| key_path(k)).collect::<Result<_>>()?;
            let list = !prefixes.is_empty();
            let results = self
                .call("read", |c| {
                    let paths = paths.clone();
                    async move {
                        let mut reader = c.new_multi_reader();
                        reader.add_get_data(REV_NODE)?;
                        reader.add_get_data(KV_DIR)?;
                        if list {
                            reader.add_get_children(KV_DIR)?;
                        }
                        for path in &paths {
                            reader.add_get_data(path)?;
                        }
                        reader.commit().await
                    }
                })
                .await?;
            let mut results = results.into_iter();
            let (marker, dir) = match (results.next(), results.next()) {
                (
                    Some(zk::MultiReadResult::Data { stat: marker, .. }),
                    Some(zk::MultiReadResult::Data { stat: dir, .. }),
                ) => (marker, dir),
                other => {
                    return Err(Error::Internal(format!(
                        "ZooKeeper namespace nodes missing under /{} ({other:?}); was it deleted?",
                        self.options().namespace
                    )));
                }
            };
            if list {
                // The keys chosen must be exactly the keys there at the read.
                let Some(zk::MultiReadResult::Children { children }) = results.next() else {
                    return Err(Error::Internal(
                        "ZooKeeper multiRead answered out of shape".into(),
                    ));
                };
                let now: BTreeSet<Vec<u8>> = matching(&children, prefixes).collect();
                let chosen: BTreeSet<Vec<u8>> = wanted
                    .iter()
                    .filter(|k| prefixes.iter().any(|p| k.starts_with(p)))
                    .cloned()
                    .collect();
                if now != chosen {
                    continue;
                }
            }
            let mut snapshot = Snapshot {
                keys: BTreeMap::new(),
                revision: marker.mzxid.max(dir.pzxid),
                pzxid: dir.pzxid,
                marker_version: marker.version,
            };
            let mut vanished = false;
            for (key, result) in wanted.into_iter().zip(results) {
                match result {
                    zk::MultiReadResult::Data { data, stat } => {
                        snapshot.keys.insert(key.clone(), to_znode(key, data, &stat));
                    }
                    zk::MultiReadResult::Error { err: zk::Error::NoNode } => {
                        vanished |= prefixes.iter().any(|p| key.starts_with(p));
                    }
                    zk::MultiReadResult::Error { err } => {
                        return Err(Error::Internal(format!("zookeeper read: {err}")));
                    }
                    _ => {
                        return Err(Error::Internal(
                            "ZooKeeper multiRead answered out of shape".into(),
                        ));
                    }
                }
            }
            if !vanished {
                return Ok(snapshot);
            }
        }
        Err(Error::Timeout(format!(
            "the keys under the prefix kept changing during {MAX_CONFLICTS} reads"
        )))
    }

    /// The client that sends a write: the lease's session for a leased put
    /// (ephemeral znodes belong to the session that creates them), else the
    /// main session.
    fn lease_client(&self, lease: LeaseId) -> Result<zk::Client> {
        let leases = self.inner.leases.lock().unwrap_or_else(|p| p.into_inner());
        match leases.get(&lease.0) {
            Some(handle) if !handle.client.state().is_terminated() => Ok(handle.client.clone()),
            _ => Err(Error::LeaseNotFound(lease)),
        }
    }

    /// Forgets a lease and closes its session (deleting its keys), waiting
    /// until ZooKeeper confirms. Returns whether the lease was still held.
    async fn end_lease(inner: &Inner, lease: LeaseId) -> bool {
        let handle = inner.leases.lock().unwrap_or_else(|p| p.into_inner()).remove(&lease.0);
        let Some(handle) = handle else { return false };
        handle.task.abort();
        let mut state = handle.client.state_watcher();
        let alive = !state.peek_state().is_terminated();
        // Dropping the last handle of a session closes it.
        drop(handle.client);
        let closed = async {
            while !state.peek_state().is_terminated() {
                let _ = tokio::time::timeout(Duration::from_millis(20), state.changed()).await;
            }
        };
        if tokio::time::timeout(inner.options.operation_timeout, closed).await.is_err() {
            tracing::warn!(%lease, "ZooKeeper did not confirm the end of a lease's session in time");
        }
        alive
    }

    /// Syncs the main session with the leader, so that its next reads see
    /// writes made through another session of this process.
    async fn sync_main(&self) {
        if let Err(e) = self.call("sync", |c| async move { c.sync(KV_DIR).await }).await {
            tracing::debug!(error = %e, "ZooKeeper sync failed");
        }
    }

    /// Adds a persistent recursive watch on the key directory; answers it
    /// with the id of the session it lives in.
    async fn add_watch(&self) -> Result<(zk::PersistentWatcher, i64)> {
        self.call("watch", |c| async move {
            let watcher = c.watch(KV_DIR, zk::AddWatchMode::PersistentRecursive).await?;
            Ok((watcher, c.session_id().0))
        })
        .await
    }

    /// The namespace's current revision.
    async fn revision(&self) -> Result<i64> {
        Ok(self.read(&BTreeSet::new(), &[]).await?.revision)
    }

    async fn run_txn(&self, txn: &Txn) -> Result<TxnResponse> {
        check_branch(&txn.success)?;
        check_branch(&txn.failure)?;
        let mut keys: BTreeSet<Vec<u8>> = txn.compare.iter().map(|c| c.key.clone()).collect();
        let mut prefixes = Vec::new();
        for op in txn.success.iter().chain(&txn.failure) {
            match op {
                TxnOp::Get { key } | TxnOp::Put { key, .. } | TxnOp::Delete { key } => {
                    keys.insert(key.clone());
                }
                TxnOp::DeletePrefix { prefix } => prefixes.push(prefix.clone()),
            }
        }
        for key in &keys {
            encode_key(key)?;
        }
        let mut conflicts = 0u32;
        loop {
            let snapshot = self.read(&keys, &prefixes).await?;
            let succeeded = txn.compare.iter().all(|c| c.holds(snapshot.get(&c.key)));
            let branch = if succeeded { &txn.success } else { &txn.failure };
            let plan = plan_branch(&txn.compare, branch, &snapshot)?;
            let Some(writes) = plan.writes else {
                return Ok(TxnResponse {
                    succeeded,
                    revision: Revision(snapshot.revision),
                    responses: plan.responses,
                });
            };
            let client = match plan.lease {
                Some(lease) => Some(self.lease_client(lease)?),
                None => None,
            };
            match self.commit(&writes, client, plan.lease).await? {
                Some(revision) => {
                    if plan.lease.is_some() {
                        self.sync_main().await;
                    }
                    return Ok(TxnResponse {
                        succeeded,
                        revision: Revision(revision),
                        responses: plan.responses,
                    });
                }
                None => {
                    conflicts += 1;
                    if conflicts >= MAX_CONFLICTS {
                        return Err(Error::Timeout(format!(
                            "transaction lost {conflicts} races with concurrent writers"
                        )));
                    }
                    // Whatever beat us may not be visible on our server yet.
                    self.sync_main().await;
                }
            }
        }
    }

    /// Sends one planned `multi`. `Some(zxid)` when applied, `None` when a
    /// version check failed (a concurrent change: start over).
    async fn commit(
        &self,
        writes: &[Write],
        lease_client: Option<zk::Client>,
        lease: Option<LeaseId>,
    ) -> Result<Option<i64>> {
        let timeout = self.options().operation_timeout;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let client = match &lease_client {
                Some(c) => c.clone(),
                None => self.client().await?,
            };
            let result = tokio::time::timeout(timeout, send_multi(client, writes)).await;
            let reason = match result {
                Ok(Ok(zxid)) => return Ok(Some(zxid)),
                Ok(Err(zk::MultiWriteError::OperationFailed {
                    source: zk::Error::BadVersion | zk::Error::NoNode | zk::Error::NodeExists,
                    ..
                })) => return Ok(None),
                Ok(Err(e)) => {
                    let e = zk::Error::from(e);
                    match (e, lease) {
                        (zk::Error::SessionExpired, Some(lease)) => {
                            Self::end_lease(&self.inner, lease).await;
                            return Err(Error::LeaseNotFound(lease));
                        }
                        (zk::Error::ClientClosed, Some(lease)) => {
                            return Err(Error::LeaseNotFound(lease));
                        }
                        (zk::Error::SessionExpired, None) => "session expired".to_string(),
                        (e, _) => match classify(&e) {
                            Failure::Transient(reason) => reason,
                            Failure::Fatal(e) => return Err(e),
                        },
                    }
                }
                Err(_) => format!("no answer within {}", humantime::format_duration(timeout)),
            };
            if attempt > self.options().max_retries {
                return Err(Error::Unavailable(format!(
                    "write: ZooKeeper endpoints {} did not answer after {attempt} attempt(s); last error: {reason}",
                    self.endpoints()
                )));
            }
            tracing::debug!(attempt, %reason, "ZooKeeper write failed; retrying");
            tokio::time::sleep(self.options().retry_interval).await;
            // A write that did reach ZooKeeper fails its version checks on
            // the retry, and the transaction starts over from a new read.
        }
    }

    /// The lease deadline task: closes the lease's session once its holder
    /// stopped renewing it for its TTL.
    ///
    /// The task holds a handle of the session too, so that a lease outlives
    /// the registry value that granted it until its deadline, as an etcd
    /// lease outlives its client until its TTL: dropping the registry stops
    /// the renewals, it does not revoke.
    async fn expire_when_due(
        inner: Weak<Inner>,
        lease: LeaseId,
        deadline: Arc<Mutex<Instant>>,
        session: zk::Client,
    ) {
        loop {
            let due = *deadline.lock().unwrap_or_else(|p| p.into_inner());
            tokio::time::sleep_until(due).await;
            let due_now = *deadline.lock().unwrap_or_else(|p| p.into_inner());
            if due_now > Instant::now() {
                continue;
            }
            tracing::debug!(%lease, "lease not renewed within its TTL; closing its session");
            drop(session);
            if let Some(inner) = inner.upgrade() {
                // Removing the handle aborts this task; finish the close in
                // one that it does not own.
                tokio::spawn(async move {
                    Self::end_lease(&inner, lease).await;
                });
            }
            // Else the registry is gone, and with this last handle the
            // session closes.
            return;
        }
    }
}

/// Connects a session to the ensemble with the namespace as its chroot,
/// creating the namespace's nodes first. `session_timeout` is the lease TTL
/// for a lease's session; `None` for the main session.
async fn connect_client(
    options: &ZkOptions,
    session_timeout: Option<Duration>,
) -> Result<zk::Client> {
    let hosts = options.endpoints.join(",");
    let chroot = format!("/{}", options.namespace);
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let connect = async {
            let root = zk::Client::connector()
                .with_connection_timeout(options.operation_timeout)
                .with_session_timeout(session_timeout.unwrap_or(options.session_timeout))
                .connect(&hosts)
                .await?;
            if session_timeout.is_none() {
                let acl = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
                for path in [format!("{chroot}{KV_DIR}"), format!("{chroot}{REV_NODE}")] {
                    match root.mkdir(&path, &acl).await {
                        Ok(()) | Err(zk::Error::NodeExists) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
            root.chroot(chroot.as_str())
                .map_err(|_| zk::Error::UnexpectedError(format!("invalid chroot {chroot}")))
        };
        let reason = match tokio::time::timeout(options.operation_timeout, connect).await {
            Ok(Ok(client)) => return Ok(client),
            Ok(Err(e)) => match classify(&e) {
                Failure::Fatal(e) => return Err(e),
                Failure::Transient(reason) => reason,
            },
            Err(_) => format!(
                "no answer within {}",
                humantime::format_duration(options.operation_timeout)
            ),
        };
        if attempt > options.max_retries {
            return Err(Error::Unavailable(format!(
                "connect: ZooKeeper endpoints {hosts} did not answer after {attempt} attempt(s); last error: {reason}"
            )));
        }
        tracing::debug!(attempt, %reason, "ZooKeeper connect failed; retrying");
        tokio::time::sleep(options.retry_interval).await;
    }
}

#[async_trait]
impl Registry for ZkRegistry {
    async fn get(&self, key: &[u8]) -> Result<Option<KeyValue>> {
        let keys = BTreeSet::from([key.to_vec()]);
        encode_key(key)?;
        Ok(self.read(&keys, &[]).await?.keys.remove(key).map(|z| z.kv))
    }

    async fn get_prefix(&self, prefix: &[u8]) -> Result<Listing> {
        let snapshot = self.read(&BTreeSet::new(), &[prefix.to_vec()]).await?;
        Ok(Listing {
            kvs: snapshot.keys.into_values().map(|z| z.kv).collect(),
            revision: Revision(snapshot.revision),
        })
    }

    async fn put(&self, key: &[u8], value: &[u8], lease: Option<LeaseId>) -> Result<Revision> {
        let txn = Txn::new().and_then([TxnOp::put(key, value, lease)]);
        Ok(self.run_txn(&txn).await?.revision)
    }

    async fn delete(&self, key: &[u8]) -> Result<(bool, Revision)> {
        let resp = self.run_txn(&Txn::new().and_then([TxnOp::delete(key)])).await?;
        let existed = matches!(resp.responses.first(), Some(TxnOpResponse::Delete(n)) if *n > 0);
        Ok((existed, resp.revision))
    }

    async fn delete_prefix(&self, prefix: &[u8]) -> Result<(u64, Revision)> {
        let resp = self.run_txn(&Txn::new().and_then([TxnOp::delete_prefix(prefix)])).await?;
        let count = match resp.responses.first() {
            Some(TxnOpResponse::Delete(n)) => *n,
            _ => 0,
        };
        Ok((count, resp.revision))
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId> {
        if ttl.is_zero() {
            return Err(Error::InvalidInput("lease TTL must be positive".into()));
        }
        let granted_at = Instant::now();
        let client = connect_client(self.options(), Some(ttl)).await?;
        let negotiated = client.session_timeout();
        if negotiated < ttl {
            return Err(Error::config(
                "node_ttl",
                format!(
                    "ZooKeeper granted a session timeout of {}, shorter than the lease TTL {}: \
                     raise maxSessionTimeout in the ensemble's zoo.cfg to at least {} ms",
                    humantime::format_duration(negotiated),
                    humantime::format_duration(ttl),
                    ttl.as_millis()
                ),
            ));
        }
        let lease = LeaseId(client.session_id().0);
        let deadline = Arc::new(Mutex::new(granted_at + ttl));
        let task = tokio::spawn(Self::expire_when_due(
            Arc::downgrade(&self.inner),
            lease,
            deadline.clone(),
            client.clone(),
        ));
        let handle = LeaseHandle { client, ttl, deadline, task };
        self.inner.leases.lock().unwrap_or_else(|p| p.into_inner()).insert(lease.0, handle);
        Ok(lease)
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<()> {
        let (client, ttl, deadline) = {
            let leases = self.inner.leases.lock().unwrap_or_else(|p| p.into_inner());
            let handle = leases.get(&lease.0).ok_or(Error::LeaseNotFound(lease))?;
            (handle.client.clone(), handle.ttl, handle.deadline.clone())
        };
        if *deadline.lock().unwrap_or_else(|p| p.into_inner()) <= Instant::now() {
            return Err(Error::LeaseNotFound(lease));
        }
        let sent = Instant::now();
        // A round trip on the lease's own session proves the server still
        // holds it.
        let timeout = self.options().operation_timeout;
        match tokio::time::timeout(timeout, client.check_stat("/")).await {
            Ok(Ok(_)) => {
                let mut deadline = deadline.lock().unwrap_or_else(|p| p.into_inner());
                *deadline = (*deadline).max(sent + ttl);
                Ok(())
            }
            Ok(Err(zk::Error::SessionExpired | zk::Error::ClientClosed)) => {
                Self::end_lease(&self.inner, lease).await;
                Err(Error::LeaseNotFound(lease))
            }
            Ok(Err(e)) => Err(Error::Unavailable(format!(
                "keep_alive: ZooKeeper endpoints {}: {e}",
                self.endpoints()
            ))),
            Err(_) => Err(Error::Timeout(format!(
                "keep_alive: no answer within {}",
                humantime::format_duration(timeout)
            ))),
        }
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<()> {
        if Self::end_lease(&self.inner, lease).await {
            Ok(())
        } else {
            Err(Error::LeaseNotFound(lease))
        }
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse> {
        self.run_txn(&txn).await
    }

    async fn watch_prefix(&self, prefix: &[u8], from: Revision) -> Result<Watch> {
        // Watch first, then read: a change after the read is notified.
        let (watcher, session) = self.add_watch().await?;
        let snapshot = self.read(&BTreeSet::new(), &[prefix.to_vec()]).await?;
        let from = from.0.max(0);
        let (tx, rx) = mpsc::channel(Watch::BUFFER);
        let mut initial = Vec::new();
        if from > 0 && from <= snapshot.revision {
            if snapshot.pzxid >= from {
                // A key may have been deleted since `from`: that history is
                // gone.
                let compact_revision = Revision(snapshot.revision + 1);
                let task = tokio::spawn(async move {
                    let _ = tx.send(Ok(WatchMessage::Resync { compact_revision })).await;
                });
                return Ok(Watch::new(rx, task));
            }
            // Only puts to existing keys happened since `from`: their latest
            // values are what changed.
            let mut changed: Vec<&Znode> =
                snapshot.keys.values().filter(|z| z.kv.mod_revision.0 >= from).collect();
            changed.sort_by_key(|z| (z.kv.mod_revision, z.kv.key.clone()));
            initial = changed
                .into_iter()
                .map(|z| Event { kind: EventKind::Put, kv: z.kv.clone() })
                .collect();
        }
        let feeder = WatchFeeder {
            registry: self.clone(),
            prefix: prefix.to_vec(),
            from,
            seen: snapshot,
            session,
            tx,
        };
        let task = tokio::spawn(feeder.run(watcher, initial));
        Ok(Watch::new(rx, task))
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        let current = self.revision().await?;
        if revision.0 > current {
            return Err(Error::InvalidInput(format!(
                "compaction revision {} is in the future (current revision {current})",
                revision.0
            )));
        }
        // ZooKeeper keeps no history: there is nothing to discard.
        Ok(())
    }

    fn describe(&self) -> String {
        format!("zk://{} (namespace {})", self.endpoints(), self.options().namespace)
    }
}
