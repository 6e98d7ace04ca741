//! The etcd backend: the contract over etcd's v3 API (etcd >= 3.4) through
//! the `etcd-client` crate.
//!
//! **Keys.** Every key is stored under `/{namespace}/`, so several Shoal
//! clusters can share one etcd; the prefix is added on the way in and
//! stripped on the way out, and callers never see it.
//!
//! **Endpoints and failures.** The client balances requests over every
//! configured endpoint. When a member dies, requests in flight on it fail
//! and its connection is dropped from the balancer, so the next attempt goes
//! to a live member. Every request therefore runs under [`EtcdRegistry::call`]:
//! each attempt is bounded by the operation timeout (a balancer with no live
//! endpoint would otherwise wait forever), transient failures (unreachable,
//! timed out, no leader, leader changed) are retried up to the retry limit —
//! the first retry at once, because the usual cause is a connection to a
//! member that just died (the balancer may still try it once more while it
//! reconnects), later ones after the retry interval — and the final error
//! names the endpoints tried.
//! Retrying a put or delete that did reach etcd repeats it, which is
//! harmless (a second revision, same state); a retried transaction may
//! report `succeeded = false` for a write that was applied — callers that
//! compare-and-swap re-read and see their own write.
//!
//! **Watches** survive member failures: the feeding task remembers the
//! revision after the last event it delivered and, when the stream breaks,
//! opens a new one from there, so nothing is skipped or repeated. If that
//! history was compacted meanwhile, the watcher gets a resync.
//!
//! **Leases.** etcd counts TTLs in whole seconds, so a TTL is rounded up, and
//! the server raises very short TTLs to its minimum (about 2 s with default
//! timing). A keep-alive opens a short keep-alive stream, sends one request
//! and reads one answer; a TTL of 0 in the answer means the lease is gone.

use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{Client, ConnectOptions, GetOptions, WatchOptions};
use shoal_types::{LeaseId, Revision};
use tokio::sync::mpsc;

use crate::error::{Error, Result};
use crate::kv::{
    CompareOp, CompareTarget, Event, EventKind, KeyValue, Listing, Txn, TxnOp, TxnOpResponse,
    TxnResponse, WatchMessage,
};
use crate::registry::{Registry, Watch};
use crate::store::check_branch;

/// Options of the etcd backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdOptions {
    /// The client URLs of etcd members, `host:port` or `http://host:port`.
    pub endpoints: Vec<String>,
    /// The key prefix: every key lives under `/{namespace}/`.
    pub namespace: String,
    /// The wait between two attempts of a failed request.
    pub retry_interval: Duration,
    /// How many times a failed request is retried (0: tried once).
    pub max_retries: u32,
    /// The longest one attempt of one request may take, connecting included.
    pub operation_timeout: Duration,
    /// TLS to `https://` members; `None` speaks plain HTTP.
    pub tls: Option<EtcdTls>,
}

/// TLS to etcd: PEM contents (the caller reads the files).
#[derive(Clone, PartialEq, Eq)]
pub struct EtcdTls {
    /// The CA certificate(s) that signed the members' certificates.
    pub ca_pem: Vec<u8>,
    /// A client certificate and its key, for an etcd started with
    /// `--client-cert-auth`.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for EtcdTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print a private key.
        f.debug_struct("EtcdTls")
            .field("identity", &self.identity.is_some())
            .finish_non_exhaustive()
    }
}

impl Default for EtcdOptions {
    fn default() -> Self {
        Self {
            endpoints: vec!["127.0.0.1:2379".into()],
            namespace: "shoal".into(),
            retry_interval: Duration::from_millis(500),
            max_retries: 5,
            operation_timeout: Duration::from_secs(5),
            tls: None,
        }
    }
}

/// A registry stored in etcd.
#[derive(Clone)]
pub struct EtcdRegistry {
    client: Client,
    prefix: Vec<u8>,
    options: EtcdOptions,
}

impl std::fmt::Debug for EtcdRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdRegistry").field("options", &self.options).finish_non_exhaustive()
    }
}

/// How an etcd failure is handled.
enum Failure {
    /// Try again after the retry interval.
    Transient(String),
    /// Give up at once with this error.
    Fatal(Error),
}

impl EtcdRegistry {
    /// Connects to etcd and checks that it answers (with the retry policy),
    /// so a wrong or dead registry fails start-up with a clear error.
    pub async fn connect(options: EtcdOptions) -> Result<Self> {
        if options.endpoints.is_empty() {
            return Err(Error::config("registry", "no etcd endpoints given"));
        }
        if options.operation_timeout.is_zero() {
            return Err(Error::config("operation_timeout", "must be positive"));
        }
        let mut connect = ConnectOptions::new()
            .with_connect_timeout(options.operation_timeout)
            .with_keep_alive(options.operation_timeout, options.operation_timeout)
            .with_keep_alive_while_idle(true)
            .with_require_leader(true);
        let https = options.endpoints.iter().filter(|e| e.starts_with("https://")).count();
        match &options.tls {
            Some(tls) => {
                if https != options.endpoints.len() {
                    return Err(Error::config(
                        "registry",
                        "TLS to etcd needs every endpoint to be https:// (etcds://)",
                    ));
                }
                let mut t = etcd_client::TlsOptions::new()
                    .ca_certificate(etcd_client::Certificate::from_pem(&tls.ca_pem));
                if let Some((cert, key)) = &tls.identity {
                    t = t.identity(etcd_client::Identity::from_pem(cert, key));
                }
                connect = connect.with_tls(t);
            }
            None if https > 0 => {
                return Err(Error::config(
                    "registry",
                    "https:// etcd endpoints need the CA that signed their certificates (registry_ca)",
                ));
            }
            None => {}
        }
        let client = Client::connect(&options.endpoints, Some(connect))
            .await
            .map_err(|e| Error::config("registry", format!("bad etcd endpoints: {e}")))?;
        let prefix = format!("/{}/", options.namespace).into_bytes();
        let registry = Self { client, prefix, options };
        registry.get(b"").await?;
        Ok(registry)
    }

    /// The underlying client, for what the contract does not cover (tests
    /// use it to ask a member for its status).
    pub fn client(&self) -> &Client {
        &self.client
    }

    fn full(&self, key: &[u8]) -> Vec<u8> {
        let mut full = self.prefix.clone();
        full.extend_from_slice(key);
        full
    }

    /// The endpoints as `host:port,host:port`, for messages.
    fn endpoints(&self) -> String {
        let plain: Vec<&str> =
            self.options.endpoints.iter().map(|e| e.strip_prefix("http://").unwrap_or(e)).collect();
        plain.join(",")
    }

    /// Runs one request with the retry policy: each attempt bounded by the
    /// operation timeout, transient failures retried, the final error naming
    /// the endpoints. `lease` names the lease a "lease not found" refers to.
    async fn call<T, F, Fut>(&self, what: &str, lease: Option<LeaseId>, f: F) -> Result<T>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let timeout = self.options.operation_timeout;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let reason = match tokio::time::timeout(timeout, f(self.client.clone())).await {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(e)) => match classify(e, lease) {
                    Failure::Fatal(e) => return Err(e),
                    Failure::Transient(reason) => reason,
                },
                Err(_) => format!("no answer within {}", humantime::format_duration(timeout)),
            };
            if attempt > self.options.max_retries {
                return Err(Error::Unavailable(format!(
                    "{what}: etcd endpoints {} did not answer after {attempt} attempt(s); last error: {reason}",
                    self.endpoints()
                )));
            }
            tracing::debug!(what, attempt, %reason, "etcd request failed; retrying");
            // The first retry goes out at once: the usual cause is a
            // connection to a member that just died, and the balancer has
            // other members. Later retries wait, to let an election finish.
            if attempt > 1 {
                tokio::time::sleep(self.options.retry_interval).await;
            }
        }
    }

    fn to_kv(&self, kv: &etcd_client::KeyValue) -> KeyValue {
        KeyValue {
            key: kv.key().get(self.prefix.len()..).unwrap_or_default().to_vec(),
            value: kv.value().to_vec(),
            create_revision: Revision(kv.create_revision()),
            mod_revision: Revision(kv.mod_revision()),
            version: kv.version(),
            lease: (kv.lease() != 0).then_some(LeaseId(kv.lease())),
        }
    }

    fn to_etcd_op(&self, op: &TxnOp) -> etcd_client::TxnOp {
        use etcd_client::{DeleteOptions, PutOptions};
        match op {
            TxnOp::Get { key } => etcd_client::TxnOp::get(self.full(key), None),
            TxnOp::Put { key, value, lease } => {
                let options = lease.map(|l| PutOptions::new().with_lease(l.0));
                etcd_client::TxnOp::put(self.full(key), value.clone(), options)
            }
            TxnOp::Delete { key } => etcd_client::TxnOp::delete(self.full(key), None),
            TxnOp::DeletePrefix { prefix } => etcd_client::TxnOp::delete(
                self.full(prefix),
                Some(DeleteOptions::new().with_prefix()),
            ),
        }
    }

    fn to_etcd_txn(&self, txn: &Txn) -> etcd_client::Txn {
        use etcd_client::{Compare, CompareOp as Op};
        let compares: Vec<Compare> = txn
            .compare
            .iter()
            .map(|c| {
                let op = match c.op {
                    CompareOp::Equal => Op::Equal,
                    CompareOp::NotEqual => Op::NotEqual,
                    CompareOp::Greater => Op::Greater,
                    CompareOp::Less => Op::Less,
                };
                let key = self.full(&c.key);
                match &c.target {
                    CompareTarget::Value(v) => Compare::value(key, op, v.clone()),
                    CompareTarget::Version(v) => Compare::version(key, op, *v),
                    CompareTarget::CreateRevision(r) => Compare::create_revision(key, op, r.0),
                    CompareTarget::ModRevision(r) => Compare::mod_revision(key, op, r.0),
                }
            })
            .collect();
        let success: Vec<_> = txn.success.iter().map(|op| self.to_etcd_op(op)).collect();
        let failure: Vec<_> = txn.failure.iter().map(|op| self.to_etcd_op(op)).collect();
        etcd_client::Txn::new().when(compares).and_then(success).or_else(failure)
    }

    /// Opens an etcd watch stream from `from` (0: now) and waits until etcd
    /// confirms it. Returns the stream and the first revision it delivers.
    async fn open_watch(
        &self,
        prefix: &[u8],
        from: i64,
    ) -> Result<(etcd_client::WatchStream, Option<etcd_client::WatchResponse>, i64)> {
        let key = self.full(prefix);
        self.call("watch", None, |mut c| {
            let key = key.clone();
            async move {
                let options = WatchOptions::new().with_prefix().with_start_revision(from);
                let mut stream = c.watch(key, Some(options)).await?;
                // The first answer confirms the watch; with start revision 0
                // its header tells where "now" is.
                let first = stream.message().await?.ok_or_else(|| {
                    etcd_client::Error::WatchError("watch stream closed at creation".into())
                })?;
                let next = match from {
                    0 => first.header().map_or(0, |h| h.revision()) + 1,
                    from => from,
                };
                let first = (!first.created() || !first.events().is_empty() || first.canceled())
                    .then_some(first);
                Ok((stream, first, next))
            }
        })
        .await
    }
}

/// Sorts an etcd failure into "retry" or "give up".
fn classify(e: etcd_client::Error, lease: Option<LeaseId>) -> Failure {
    use etcd_client::Error as E;
    use tonic::Code;
    let lease_gone = || Failure::Fatal(Error::LeaseNotFound(lease.unwrap_or(LeaseId(0))));
    match e {
        E::GRpcStatus(status) => {
            let message = status.message().to_string();
            match status.code() {
                _ if message.contains("lease not found") => lease_gone(),
                Code::Unavailable
                | Code::DeadlineExceeded
                | Code::Unknown
                | Code::Cancelled
                | Code::Aborted
                | Code::ResourceExhausted => Failure::Transient(format!("{status}")),
                Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
                    Failure::Fatal(Error::InvalidInput(message))
                }
                _ => Failure::Fatal(Error::Internal(format!("etcd: {status}"))),
            }
        }
        E::LeaseKeepAliveError(m) if m.contains("lease not found") => lease_gone(),
        E::TransportError(_) | E::IoError(_) | E::WatchError(_) | E::LeaseKeepAliveError(_) => {
            Failure::Transient(e.to_string())
        }
        other => Failure::Fatal(Error::Internal(format!("etcd client: {other}"))),
    }
}

fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> Revision {
    Revision(header.map_or(0, |h| h.revision()))
}

#[async_trait]
impl Registry for EtcdRegistry {
    async fn get(&self, key: &[u8]) -> Result<Option<KeyValue>> {
        let key = self.full(key);
        let resp = self.call("get", None, |c| c_get(c, key.clone(), None)).await?;
        Ok(resp.kvs().first().map(|kv| self.to_kv(kv)))
    }

    async fn get_prefix(&self, prefix: &[u8]) -> Result<Listing> {
        let key = self.full(prefix);
        let options = GetOptions::new().with_prefix();
        let resp =
            self.call("get_prefix", None, |c| c_get(c, key.clone(), Some(options.clone()))).await?;
        let kvs = resp.kvs().iter().map(|kv| self.to_kv(kv)).collect();
        Ok(Listing { kvs, revision: header_revision(resp.header()) })
    }

    async fn put(&self, key: &[u8], value: &[u8], lease: Option<LeaseId>) -> Result<Revision> {
        let key = self.full(key);
        let resp = self
            .call("put", lease, |mut c| {
                let (key, value) = (key.clone(), value.to_vec());
                let options = lease.map(|l| etcd_client::PutOptions::new().with_lease(l.0));
                async move { c.put(key, value, options).await }
            })
            .await?;
        Ok(header_revision(resp.header()))
    }

    async fn delete(&self, key: &[u8]) -> Result<(bool, Revision)> {
        let key = self.full(key);
        let resp = self
            .call("delete", None, |mut c| {
                let key = key.clone();
                async move { c.delete(key, None).await }
            })
            .await?;
        Ok((resp.deleted() > 0, header_revision(resp.header())))
    }

    async fn delete_prefix(&self, prefix: &[u8]) -> Result<(u64, Revision)> {
        let key = self.full(prefix);
        let resp = self
            .call("delete_prefix", None, |mut c| {
                let key = key.clone();
                let options = etcd_client::DeleteOptions::new().with_prefix();
                async move { c.delete(key, Some(options)).await }
            })
            .await?;
        Ok((u64::try_from(resp.deleted()).unwrap_or(0), header_revision(resp.header())))
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId> {
        if ttl.is_zero() {
            return Err(Error::InvalidInput("lease TTL must be positive".into()));
        }
        let seconds = i64::try_from(ttl.as_millis().div_ceil(1000)).unwrap_or(i64::MAX);
        let resp = self
            .call("grant_lease", None, |mut c| async move { c.lease_grant(seconds, None).await })
            .await?;
        if !resp.error().is_empty() {
            return Err(Error::Internal(format!("etcd lease grant: {}", resp.error())));
        }
        Ok(LeaseId(resp.id()))
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<()> {
        self.call("keep_alive", Some(lease), |mut c| async move {
            // etcd-client opens the stream, sends one keep-alive and reads
            // the answer; a TTL <= 0 comes back as "lease not found".
            c.lease_keep_alive(lease.0).await.map(|_| ())
        })
        .await
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<()> {
        self.call("revoke_lease", Some(lease), |mut c| async move {
            c.lease_revoke(lease.0).await.map(|_| ())
        })
        .await
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse> {
        // Check locally what etcd would refuse, for the same message on
        // every backend.
        check_branch(&txn.success)?;
        check_branch(&txn.failure)?;
        let etcd_txn = self.to_etcd_txn(&txn);
        let lease = txn.success.iter().chain(&txn.failure).find_map(|op| match op {
            TxnOp::Put { lease, .. } => *lease,
            _ => None,
        });
        let resp = self
            .call("txn", lease, |mut c| {
                let etcd_txn = etcd_txn.clone();
                async move { c.txn(etcd_txn).await }
            })
            .await?;
        let responses = resp
            .op_responses()
            .iter()
            .map(|r| match r {
                etcd_client::TxnOpResponse::Put(_) => TxnOpResponse::Put,
                etcd_client::TxnOpResponse::Get(g) => {
                    TxnOpResponse::Get(g.kvs().first().map(|kv| self.to_kv(kv)))
                }
                etcd_client::TxnOpResponse::Delete(d) => {
                    TxnOpResponse::Delete(u64::try_from(d.deleted()).unwrap_or(0))
                }
                etcd_client::TxnOpResponse::Txn(_) => TxnOpResponse::Put,
            })
            .collect();
        Ok(TxnResponse {
            succeeded: resp.succeeded(),
            revision: header_revision(resp.header()),
            responses,
        })
    }

    async fn watch_prefix(&self, prefix: &[u8], from: Revision) -> Result<Watch> {
        let (stream, first, next) = self.open_watch(prefix, from.0.max(0)).await?;
        let (tx, rx) = mpsc::channel(Watch::BUFFER);
        let feeder = WatchFeeder { registry: self.clone(), prefix: prefix.to_vec(), next, tx };
        let task = tokio::spawn(feeder.run(stream, first));
        Ok(Watch::new(rx, task))
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        let result = self
            .call("compact", None, |mut c| async move { c.compact(revision.0, None).await })
            .await;
        match result {
            Ok(_) => Ok(()),
            // Compacting at or below an earlier compaction changes nothing,
            // as in the memory backend.
            Err(Error::InvalidInput(m)) if m.contains("compacted") => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn describe(&self) -> String {
        let tls = self.options.endpoints.iter().any(|e| e.starts_with("https://"));
        let hosts: Vec<&str> =
            self.options.endpoints.iter().map(|e| e.split("://").last().unwrap_or(e)).collect();
        let scheme = if tls { "etcds" } else { "etcd" };
        format!("{scheme}://{} (namespace {})", hosts.join(","), self.options.namespace)
    }
}

async fn c_get(
    mut c: Client,
    key: Vec<u8>,
    options: Option<GetOptions>,
) -> Result<etcd_client::GetResponse, etcd_client::Error> {
    c.get(key, options).await
}

/// The task behind one etcd watch: relays events and reopens the stream
/// from the next undelivered revision when it breaks.
struct WatchFeeder {
    registry: EtcdRegistry,
    prefix: Vec<u8>,
    /// The revision of the next event to deliver.
    next: i64,
    tx: mpsc::Sender<Result<WatchMessage>>,
}

impl WatchFeeder {
    async fn run(
        mut self,
        mut stream: etcd_client::WatchStream,
        mut pending: Option<etcd_client::WatchResponse>,
    ) {
        loop {
            let message = match pending.take() {
                Some(resp) => Ok(Some(resp)),
                None => stream.message().await,
            };
            let reason = match message {
                Ok(Some(resp)) => match self.relay(resp).await {
                    Relay::Continue => continue,
                    Relay::Stop => return,
                    Relay::Reopen(reason) => reason,
                },
                Ok(None) => "watch stream closed".to_string(),
                Err(e) => e.to_string(),
            };
            tracing::debug!(%reason, next = self.next, "etcd watch broke; reopening");
            match self.registry.open_watch(&self.prefix, self.next).await {
                Ok((s, first, _)) => {
                    stream = s;
                    pending = first;
                }
                Err(e) => {
                    let _ = self.tx.send(Err(e)).await;
                    return;
                }
            }
        }
    }

    async fn relay(&mut self, resp: etcd_client::WatchResponse) -> Relay {
        if resp.compact_revision() > 0 {
            let compact_revision = Revision(resp.compact_revision());
            let _ = self.tx.send(Ok(WatchMessage::Resync { compact_revision })).await;
            return Relay::Stop;
        }
        if resp.canceled() {
            return Relay::Reopen(format!("watch canceled by etcd: {}", resp.cancel_reason()));
        }
        // etcd never splits one revision's events over two responses, so a
        // reopened stream repeats whole revisions at most.
        let floor = self.next;
        for event in resp.events() {
            let Some(kv) = event.kv() else { continue };
            let kind = match event.event_type() {
                etcd_client::EventType::Put => EventKind::Put,
                etcd_client::EventType::Delete => EventKind::Delete,
            };
            let mut kv = self.registry.to_kv(kv);
            if kind == EventKind::Delete {
                kv = KeyValue { key: kv.key, mod_revision: kv.mod_revision, ..KeyValue::default() };
            }
            if kv.mod_revision.0 < floor {
                // Already delivered before a reconnect.
                continue;
            }
            self.next = kv.mod_revision.0 + 1;
            if self.tx.send(Ok(WatchMessage::Event(Event { kind, kv }))).await.is_err() {
                return Relay::Stop;
            }
        }
        Relay::Continue
    }
}

enum Relay {
    Continue,
    Stop,
    Reopen(String),
}
