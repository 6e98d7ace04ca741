//! The client of Shoal's embedded registry (`shoal://m1:port,m2:port,...`):
//! the contract served by `shoal meta` members, which replicate it as one
//! Raft group on Shoal's own engine (crate `shoal-meta`).
//!
//! **Calls.** Every call is one HTTP request to one member; a member that
//! does not lead passes it on to the leader, so any member will do. The
//! client sticks to the member that answered last and moves to the next one
//! when a member cannot be reached or has no leader to pass the call to.
//! Each attempt is bounded by the operation timeout; failures are retried up
//! to the retry limit, the first retry at once (the usual cause is a member
//! that just died), later ones after the retry interval (to let an election
//! finish). As with etcd, a retried put or delete that had reached the group
//! is applied twice (a second revision, same state), and a retried
//! transaction may report `succeeded = false` for a write that was applied.
//!
//! **Watches** are served by any member from its own copy of the store, which
//! holds the same history as the leader's, at most a little behind. A watch
//! "from now" first asks the leader for the current revision (confirmed by a
//! quorum) and starts after it. When the stream breaks or falls silent for
//! longer than four alive intervals, the feeding task opens a new one on the
//! next member from the revision after the last whole revision it delivered,
//! so nothing is skipped or repeated; a member that no longer has that
//! history answers a resync.
//!
//! **Keys** live under `{namespace}/`, added on the way in and stripped on
//! the way out, so several clusters can share one group.
//!
//! **Leases** live in the replicated store (grant and revoke are logged);
//! their deadlines are kept by the leader, which logs an expiry when one
//! passes. A keep-alive goes to the leader and is not logged. A new leader
//! gives every lease its full TTL again, so a lease outlives its TTL by at
//! most the time a leader change takes.

pub mod wire;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt as _;
use shoal_types::{LeaseId, Revision};
use tokio::sync::{mpsc, oneshot};

use crate::error::{Error, Result};
use crate::kv::{KeyValue, Listing, Txn, TxnOp, TxnOpResponse, TxnResponse, WatchMessage};
use crate::registry::{Registry, Watch};
use wire::{
    ALIVE_INTERVAL, CALL_PATH, CONTENT_TYPE, FrameReader, Member, MetaStatus, Request, Response,
    STATUS_PATH, WATCH_PATH, WatchFrame, WatchRequest,
};

/// Options of the embedded registry's client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmbeddedOptions {
    /// The members' URLs (`http://host:port`).
    pub endpoints: Vec<String>,
    /// The key prefix: every key lives under `{namespace}/`.
    pub namespace: String,
    /// The wait between two attempts of a failed request.
    pub retry_interval: Duration,
    /// How many times a failed request is retried (0: tried once).
    pub max_retries: u32,
    /// The longest one attempt of one request may take, connecting included.
    pub operation_timeout: Duration,
    /// The bearer token the members ask of every call and watch: the
    /// cluster's admin token.
    pub token: Option<String>,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        Self {
            endpoints: vec!["http://127.0.0.1:7060".into()],
            namespace: "shoal".into(),
            retry_interval: Duration::from_millis(500),
            max_retries: 5,
            operation_timeout: Duration::from_secs(5),
            token: None,
        }
    }
}

/// A registry served by `shoal meta` members. Cheap to clone.
#[derive(Clone)]
pub struct EmbeddedRegistry {
    shared: Arc<Shared>,
}

struct Shared {
    options: EmbeddedOptions,
    prefix: Vec<u8>,
    http: reqwest::Client,
    /// The member that answered last.
    preferred: AtomicUsize,
}

impl std::fmt::Debug for EmbeddedRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedRegistry")
            .field("options", &self.shared.options)
            .finish_non_exhaustive()
    }
}

/// Why one attempt failed.
enum Failure {
    /// Try another member, or again later.
    Transient(String),
    /// Give up with this error.
    Fatal(Error),
}

impl EmbeddedRegistry {
    /// Connects to the members and checks that the group answers (with the
    /// retry policy), so a wrong or dead registry fails start-up with a
    /// clear error.
    pub async fn connect(options: EmbeddedOptions) -> Result<Self> {
        if options.endpoints.is_empty() {
            return Err(Error::config("registry", "no embedded registry members given"));
        }
        if options.operation_timeout.is_zero() {
            return Err(Error::config("operation_timeout", "must be positive"));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(options.operation_timeout)
            .tcp_nodelay(true)
            .build()
            .map_err(|e| Error::Internal(format!("cannot build an HTTP client: {e}")))?;
        let prefix = format!("{}/", options.namespace).into_bytes();
        let registry = Self {
            shared: Arc::new(Shared { options, prefix, http, preferred: AtomicUsize::new(0) }),
        };
        registry.shared.call(Request::Revision).await?;
        Ok(registry)
    }

    /// The group's members, as the group records them.
    pub async fn members(&self) -> Result<Vec<Member>> {
        match self.shared.call(Request::Members).await? {
            Response::Members(m) => Ok(m),
            other => Err(unexpected("members", &other)),
        }
    }

    /// Adds the members serving at `urls` (started with `--join`), in one
    /// change; answers the members after it. The group then catches them up
    /// and makes them voters (see [`EmbeddedRegistry::status`]).
    pub async fn add_members(&self, urls: Vec<String>) -> Result<Vec<Member>> {
        match self.shared.call(Request::AddMembers { urls }).await? {
            Response::Members(m) => Ok(m),
            other => Err(unexpected("add members", &other)),
        }
    }

    /// Removes the members of these names, in one change; answers the
    /// members after it.
    pub async fn remove_members(&self, names: Vec<String>) -> Result<Vec<Member>> {
        match self.shared.call(Request::RemoveMembers { names }).await? {
            Response::Members(m) => Ok(m),
            other => Err(unexpected("remove members", &other)),
        }
    }

    /// What the member at `url` reports about itself and the group.
    pub async fn status_of(&self, url: &str) -> Result<MetaStatus> {
        let shared = &self.shared;
        let get = shared.http.get(format!("{}{STATUS_PATH}", url.trim_end_matches('/'))).send();
        let response = tokio::time::timeout(shared.options.operation_timeout, get)
            .await
            .map_err(|_| Error::Timeout(format!("{url} did not answer")))?
            .map_err(|e| Error::Unavailable(format!("{url}: {e}")))?;
        let body = response.bytes().await.map_err(|e| Error::Unavailable(format!("{url}: {e}")))?;
        serde_json::from_slice(&body)
            .map_err(|e| Error::Internal(format!("{url} answered an unreadable status: {e}")))
    }

    /// The status of the group's leader (asked of each member in turn).
    pub async fn status(&self) -> Result<MetaStatus> {
        let mut any = None;
        for url in &self.shared.options.endpoints {
            if let Ok(status) = self.status_of(url).await {
                if status.leader == Some(status.id) {
                    return Ok(status);
                }
                if let Some(leader) = status.members.iter().find(|m| Some(m.id) == status.leader)
                    && let Ok(s) = self.status_of(&leader.url).await
                {
                    return Ok(s);
                }
                any = Some(status);
            }
        }
        any.ok_or_else(|| {
            Error::Unavailable(format!("no member of {} answered", self.shared.endpoints()))
        })
    }

    fn full(&self, key: &[u8]) -> Vec<u8> {
        [self.shared.prefix.as_slice(), key].concat()
    }

    fn strip(&self, mut kv: KeyValue) -> KeyValue {
        if let Some(rest) = kv.key.strip_prefix(self.shared.prefix.as_slice()) {
            kv.key = rest.to_vec();
        }
        kv
    }

    fn full_op(&self, op: TxnOp) -> TxnOp {
        match op {
            TxnOp::Get { key } => TxnOp::Get { key: self.full(&key) },
            TxnOp::Put { key, value, lease } => TxnOp::Put { key: self.full(&key), value, lease },
            TxnOp::Delete { key } => TxnOp::Delete { key: self.full(&key) },
            TxnOp::DeletePrefix { prefix } => TxnOp::DeletePrefix { prefix: self.full(&prefix) },
        }
    }
}

fn unexpected(what: &str, response: &Response) -> Error {
    Error::Internal(format!("the embedded registry answered {what} with {response:?}"))
}

/// The error of a call the members refused for its token.
fn refused(url: &str, body: &[u8]) -> Error {
    Error::config(
        "admin_token",
        format!(
            "{url} refused this process's token ({}): every process of a cluster, and every \
             member of its embedded registry, takes the same --admin-token",
            String::from_utf8_lossy(body).trim()
        ),
    )
}

impl Shared {
    fn endpoints(&self) -> String {
        self.options.endpoints.join(",")
    }

    /// Adds the bearer token, if there is one.
    fn authorized(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.options.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// One attempt of a call at member `i`.
    async fn attempt(&self, i: usize, body: Vec<u8>) -> std::result::Result<Response, Failure> {
        let url = format!("{}{CALL_PATH}", self.options.endpoints[i].trim_end_matches('/'));
        let send = async {
            let response = self
                .authorized(self.http.post(&url))
                .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE)
                .body(body)
                .send()
                .await
                .map_err(|e| Failure::Transient(format!("{url}: {e}")))?;
            let status = response.status();
            let bytes =
                response.bytes().await.map_err(|e| Failure::Transient(format!("{url}: {e}")))?;
            if status == reqwest::StatusCode::UNAUTHORIZED {
                return Err(Failure::Fatal(refused(&url, &bytes)));
            }
            if !status.is_success() {
                let text = String::from_utf8_lossy(&bytes);
                let failure = format!("{url} answered {status}: {}", text.trim());
                return Err(if status.is_server_error() {
                    Failure::Transient(failure)
                } else {
                    Failure::Fatal(Error::Internal(failure))
                });
            }
            match wire::decode::<wire::Reply>(&bytes).map_err(Failure::Fatal)? {
                Ok(response) => Ok(response),
                Err(e) if e.is_retryable() => Err(Failure::Transient(format!("{url}: {e}"))),
                Err(e) => Err(Failure::Fatal(e)),
            }
        };
        match tokio::time::timeout(self.options.operation_timeout, send).await {
            Ok(result) => result,
            Err(_) => Err(Failure::Transient(format!(
                "{url}: no answer within {}",
                humantime::format_duration(self.options.operation_timeout)
            ))),
        }
    }

    /// Runs one call with the retry policy, moving to the next member after
    /// each failure.
    async fn call(&self, request: Request) -> Result<Response> {
        let body = wire::encode(&request);
        let n = self.options.endpoints.len();
        let first = self.preferred.load(Ordering::Relaxed);
        let mut attempt = 0u32;
        loop {
            let i = (first + attempt as usize) % n;
            attempt += 1;
            let reason = match self.attempt(i, body.clone()).await {
                Ok(response) => {
                    self.preferred.store(i, Ordering::Relaxed);
                    return Ok(response);
                }
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::Transient(reason)) => reason,
            };
            if attempt > self.options.max_retries {
                return Err(Error::Unavailable(format!(
                    "embedded registry members {} did not answer after {attempt} attempt(s); last error: {reason}",
                    self.endpoints()
                )));
            }
            tracing::debug!(attempt, %reason, "embedded registry request failed; retrying");
            if attempt > 1 {
                tokio::time::sleep(self.options.retry_interval).await;
            }
        }
    }
}

#[async_trait]
impl Registry for EmbeddedRegistry {
    async fn get(&self, key: &[u8]) -> Result<Option<KeyValue>> {
        match self.shared.call(Request::Get { key: self.full(key) }).await? {
            Response::Kv(kv) => Ok(kv.map(|kv| self.strip(kv))),
            other => Err(unexpected("get", &other)),
        }
    }

    async fn get_prefix(&self, prefix: &[u8]) -> Result<Listing> {
        match self.shared.call(Request::GetPrefix { prefix: self.full(prefix) }).await? {
            Response::Listing(l) => Ok(Listing {
                kvs: l.kvs.into_iter().map(|kv| self.strip(kv)).collect(),
                revision: l.revision,
            }),
            other => Err(unexpected("get_prefix", &other)),
        }
    }

    async fn put(&self, key: &[u8], value: &[u8], lease: Option<LeaseId>) -> Result<Revision> {
        let request = Request::Put { key: self.full(key), value: value.to_vec(), lease };
        match self.shared.call(request).await? {
            Response::Revision(r) => Ok(r),
            other => Err(unexpected("put", &other)),
        }
    }

    async fn delete(&self, key: &[u8]) -> Result<(bool, Revision)> {
        match self.shared.call(Request::Delete { key: self.full(key) }).await? {
            Response::Deleted { count, revision } => Ok((count > 0, revision)),
            other => Err(unexpected("delete", &other)),
        }
    }

    async fn delete_prefix(&self, prefix: &[u8]) -> Result<(u64, Revision)> {
        match self.shared.call(Request::DeletePrefix { prefix: self.full(prefix) }).await? {
            Response::Deleted { count, revision } => Ok((count, revision)),
            other => Err(unexpected("delete_prefix", &other)),
        }
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId> {
        match self.shared.call(Request::Grant { ttl }).await? {
            Response::Lease(id) => Ok(id),
            other => Err(unexpected("grant_lease", &other)),
        }
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<()> {
        match self.shared.call(Request::KeepAlive { lease }).await? {
            Response::Done => Ok(()),
            other => Err(unexpected("keep_alive", &other)),
        }
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<()> {
        match self.shared.call(Request::Revoke { lease }).await? {
            Response::Done => Ok(()),
            other => Err(unexpected("revoke_lease", &other)),
        }
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse> {
        let txn = Txn {
            compare: txn
                .compare
                .into_iter()
                .map(|mut c| {
                    c.key = self.full(&c.key);
                    c
                })
                .collect(),
            success: txn.success.into_iter().map(|op| self.full_op(op)).collect(),
            failure: txn.failure.into_iter().map(|op| self.full_op(op)).collect(),
        };
        match self.shared.call(Request::Txn(txn)).await? {
            Response::Txn(mut r) => {
                for op in &mut r.responses {
                    if let TxnOpResponse::Get(Some(kv)) = op {
                        *kv = self.strip(std::mem::take(kv));
                    }
                }
                Ok(r)
            }
            other => Err(unexpected("txn", &other)),
        }
    }

    async fn watch_prefix(&self, prefix: &[u8], from: Revision) -> Result<Watch> {
        let from = if from.0 > 0 {
            from
        } else {
            match self.shared.call(Request::Revision).await? {
                Response::Revision(r) => Revision(r.0 + 1),
                other => return Err(unexpected("revision", &other)),
            }
        };
        let (tx, rx) = mpsc::channel(Watch::BUFFER);
        let (established, ready) = oneshot::channel();
        let feed = Feed {
            registry: self.clone(),
            prefix: self.full(prefix),
            next: from,
            tx,
            established: Some(established),
        };
        let task = tokio::spawn(feed.run());
        match ready.await {
            Ok(Ok(())) => Ok(Watch::new(rx, task)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::Internal("the watch ended before it was established".into())),
        }
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        match self.shared.call(Request::Compact { revision }).await? {
            Response::Done => Ok(()),
            other => Err(unexpected("compact", &other)),
        }
    }

    fn describe(&self) -> String {
        let members: Vec<&str> = self
            .shared
            .options
            .endpoints
            .iter()
            .map(|e| e.strip_prefix("http://").unwrap_or(e))
            .collect();
        format!("shoal://{} (namespace {})", members.join(","), self.shared.options.namespace)
    }
}

/// The task that feeds one watch, across member failures.
struct Feed {
    registry: EmbeddedRegistry,
    prefix: Vec<u8>,
    /// The first revision not yet delivered.
    next: Revision,
    tx: mpsc::Sender<Result<WatchMessage>>,
    /// Told once the first stream is in place (or that none could be).
    established: Option<oneshot::Sender<Result<()>>>,
}

/// How one watch stream ended.
enum Ended {
    /// The reader is gone, or a resync was delivered: stop.
    Done,
    /// The stream broke (after it was established, or before): open another.
    Broken { reason: String, established: bool },
}

impl Feed {
    async fn run(mut self) {
        let shared = self.registry.shared.clone();
        let n = shared.options.endpoints.len();
        let mut member = shared.preferred.load(Ordering::Relaxed);
        let mut failures = 0u32;
        loop {
            let reason = match self.stream(member).await {
                Ended::Done => return,
                // A stream that was in place: reopen it at once.
                Ended::Broken { reason, established: true } => {
                    failures = 0;
                    reason
                }
                Ended::Broken { reason, established: false } => reason,
            };
            failures += 1;
            if failures > shared.options.max_retries {
                let e = Error::Unavailable(format!(
                    "watch: embedded registry members {} did not answer after {failures} attempt(s); last error: {reason}",
                    shared.endpoints()
                ));
                match self.established.take() {
                    Some(tell) => drop(tell.send(Err(e))),
                    None => drop(self.tx.send(Err(e)).await),
                }
                return;
            }
            tracing::debug!(%reason, "embedded registry watch broke; reopening it");
            member = (member + 1) % n;
            if failures > 1 {
                tokio::time::sleep(shared.options.retry_interval).await;
            }
        }
    }

    /// Opens a stream at `member` from `self.next` and relays it until it ends.
    async fn stream(&mut self, member: usize) -> Ended {
        let mut established = false;
        let broken = |reason: String, established: bool| Ended::Broken { reason, established };
        let shared = &self.registry.shared;
        let url = format!("{}{WATCH_PATH}", shared.options.endpoints[member].trim_end_matches('/'));
        let body = wire::encode(&WatchRequest { prefix: self.prefix.clone(), from: self.next });
        let send = shared
            .authorized(shared.http.post(&url))
            .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE)
            .body(body)
            .send();
        let response = match tokio::time::timeout(shared.options.operation_timeout, send).await {
            Ok(Ok(r)) if r.status().is_success() => r,
            Ok(Ok(r)) if r.status() == reqwest::StatusCode::UNAUTHORIZED => {
                let e = refused(&url, &r.bytes().await.unwrap_or_default());
                match self.established.take() {
                    Some(tell) => drop(tell.send(Err(e))),
                    None => drop(self.tx.send(Err(e)).await),
                }
                return Ended::Done;
            }
            Ok(Ok(r)) => return broken(format!("{url} answered {}", r.status()), established),
            Ok(Err(e)) => return broken(format!("{url}: {e}"), established),
            Err(_) => return broken(format!("{url}: no answer"), established),
        };
        let mut bytes = response.bytes_stream();
        let mut reader = FrameReader::default();
        loop {
            let chunk = match tokio::time::timeout(ALIVE_INTERVAL * 4, bytes.next()).await {
                Ok(Some(Ok(chunk))) => chunk,
                Ok(Some(Err(e))) => return broken(format!("{url}: {e}"), established),
                Ok(None) => return broken(format!("{url} ended the watch"), established),
                Err(_) => return broken(format!("{url} fell silent"), established),
            };
            reader.push(&chunk);
            loop {
                let frame = match reader.next_frame::<WatchFrame>() {
                    Ok(Some(frame)) => frame,
                    Ok(None) => break,
                    Err(e) => return broken(format!("{url}: {e}"), established),
                };
                match frame {
                    WatchFrame::Established => {
                        established = true;
                        if let Some(tell) = self.established.take() {
                            let _ = tell.send(Ok(()));
                        }
                    }
                    WatchFrame::Alive => {}
                    WatchFrame::Events(events) => {
                        let Some(last) = events.last().map(|e| e.revision()) else { continue };
                        for mut event in events {
                            event.kv = self.registry.strip(event.kv);
                            if self.tx.send(Ok(WatchMessage::Event(event))).await.is_err() {
                                return Ended::Done;
                            }
                        }
                        self.next = Revision(last.0 + 1);
                    }
                    WatchFrame::Resync { compact_revision } => {
                        if let Some(tell) = self.established.take() {
                            let _ = tell.send(Ok(()));
                        }
                        let _ = self.tx.send(Ok(WatchMessage::Resync { compact_revision })).await;
                        return Ended::Done;
                    }
                }
            }
        }
    }
}
