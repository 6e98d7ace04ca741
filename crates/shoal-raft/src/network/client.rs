//! The sending side: one queue and sender task per peer, shared by every
//! group of the node.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{
    Fatal, RPCError, RaftError, RemoteError, ReplicationClosed, StreamingError, Timeout,
    Unreachable,
};
use openraft::network::{RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{BasicNode, Snapshot, Vote};
use tokio::sync::{Semaphore, broadcast, mpsc, oneshot};
use tokio::time::Instant;

use super::wire::{self, BatchRequest, Call, FrameDecoder, Outcome, Reply, Rpc};
use super::{Error, NetworkOptions, Result, snapshot};
use crate::{RaftNodeId, TypeConfig};

/// How many peer failure events wait for slow subscribers before the oldest
/// are dropped.
const FAILURE_EVENTS: usize = 1024;

/// The client side of the network, one per node; cheap to clone.
#[derive(Clone)]
pub struct Network {
    inner: Arc<Inner>,
}

struct Inner {
    options: NetworkOptions,
    /// Batched RPCs: one HTTP/2 connection per peer.
    rpc_client: reqwest::Client,
    /// Snapshots: a second connection per peer, so bulk bytes do not queue
    /// ahead of heartbeats.
    snapshot_client: reqwest::Client,
    peers: Mutex<HashMap<RaftNodeId, Arc<Peer>>>,
    /// Where nodes are, as they registered: preferred over the address in a
    /// group's membership, which only that group's leader can update.
    addresses: Mutex<HashMap<RaftNodeId, String>>,
    links: Arc<Links>,
}

/// What the sender tasks share with the [`Network`].
struct Links {
    failures: broadcast::Sender<RaftNodeId>,
    requests: AtomicU64,
    rpcs: AtomicU64,
}

/// Counters of what the network has sent, since it was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetworkStats {
    /// Batch requests sent.
    pub requests: u64,
    /// RPCs sent in them.
    pub rpcs: u64,
}

/// One peer node as seen by the sender.
struct Peer {
    /// Where it listens, as in its `BasicNode::addr`.
    addr: String,
    state: Arc<PeerState>,
    queue: mpsc::UnboundedSender<Pending>,
}

/// What the peer's sender task keeps; it holds no queue sender, so the task
/// ends once the last [`Peer`] is dropped.
struct PeerState {
    id: RaftNodeId,
    batch_url: String,
    /// Whether the last exchange with the peer worked; a failure event is
    /// sent when this turns false.
    healthy: AtomicBool,
    /// When an exchange with the peer last worked.
    last_ok: Mutex<Option<Instant>>,
}

impl PeerState {
    /// Records how an exchange ended; a failed connection is published once.
    fn record(&self, outcome: std::result::Result<(), &Failure>, links: &Links) {
        match outcome {
            Ok(()) => {
                self.healthy.store(true, Ordering::Relaxed);
                *self.last_ok.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
            }
            Err(Failure::Peer(e)) => {
                if self.healthy.swap(false, Ordering::Relaxed) {
                    tracing::info!(peer = self.id, error = %e, "raft link to peer failed");
                    let _ = links.failures.send(self.id);
                }
            }
            Err(Failure::Status(_)) => {}
        }
    }
}

/// An RPC waiting for its batch.
struct Pending {
    group: u8,
    rpc: Rpc,
    /// When the caller stops waiting.
    deadline: Instant,
    reply: oneshot::Sender<Result<Outcome>>,
}

impl Network {
    /// Makes the node's network client. Connections are opened lazily, on
    /// the first RPC to each peer.
    pub fn new(options: NetworkOptions) -> Result<Network> {
        if options.max_batch == 0 || options.max_batches_in_flight == 0 {
            return Err(Error::InvalidInput(
                "max_batch and max_batches_in_flight must be positive".into(),
            ));
        }
        let build = |window: bool| {
            reqwest::Client::builder()
                .http2_prior_knowledge()
                .http2_adaptive_window(window)
                .tcp_nodelay(true)
                .connect_timeout(options.connect_timeout)
                .pool_idle_timeout(None)
                .build()
                .map_err(|e| Error::InvalidInput(format!("cannot build the HTTP client: {e}")))
        };
        let (failures, _) = broadcast::channel(FAILURE_EVENTS);
        Ok(Network {
            inner: Arc::new(Inner {
                rpc_client: build(false)?,
                snapshot_client: build(true)?,
                options,
                peers: Mutex::new(HashMap::new()),
                addresses: Mutex::new(HashMap::new()),
                links: Arc::new(Links {
                    failures,
                    requests: AtomicU64::new(0),
                    rpcs: AtomicU64::new(0),
                }),
            }),
        })
    }

    /// The factory to hand to `Raft::new` for group `group`.
    pub fn factory(&self, group: u8) -> GroupNetworkFactory {
        GroupNetworkFactory { network: self.clone(), group }
    }

    /// Raft node ids whose connection just failed (refused or reset after
    /// working), so the node can trigger elections in the groups they led.
    /// One event per transition from working to failed, not per RPC.
    pub fn peer_failures(&self) -> broadcast::Receiver<RaftNodeId> {
        self.inner.links.failures.subscribe()
    }

    /// What has been sent so far.
    pub fn stats(&self) -> NetworkStats {
        NetworkStats {
            requests: self.inner.links.requests.load(Ordering::Relaxed),
            rpcs: self.inner.links.rpcs.load(Ordering::Relaxed),
        }
    }

    /// When an exchange with peer `id` last worked, if one ever did.
    pub fn last_ok(&self, id: RaftNodeId) -> Option<std::time::Instant> {
        let peer = self.inner.peers.lock().unwrap_or_else(|e| e.into_inner()).get(&id).cloned()?;
        let last = *peer.state.last_ok.lock().unwrap_or_else(|e| e.into_inner());
        last.map(Instant::into_std)
    }

    /// Checks that peer `id` (at its registered address, else at `addr`)
    /// answers: an empty batch on the same connection as the RPCs, within
    /// `timeout`. Updates what [`Network::last_ok`] says, and publishes a
    /// failed connection like an RPC would.
    pub async fn probe(&self, id: RaftNodeId, addr: &str, timeout: Duration) {
        let peer = self.peer(id, addr);
        let links = &self.inner.links;
        let exchange = async {
            let empty = BatchRequest { version: wire::VERSION, calls: Vec::new() };
            let (client, token) = (&self.inner.rpc_client, &self.inner.options.token);
            let resp = post_batch(client, token, &peer.state.batch_url, &empty).await?;
            resp.bytes().await.map_err(|e| transport_error(&e))?;
            Ok(())
        };
        let result = match tokio::time::timeout(timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Err(Failure::Status(Error::Timeout)),
        };
        peer.state.record(result.as_ref().map(|_| ()), links);
    }

    /// Tells the network where nodes are now, as they registered. A node
    /// that restarted at a new address is reached there by every group at
    /// once, even groups that have no leader to update their membership.
    pub fn set_addresses(&self, addresses: HashMap<RaftNodeId, String>) {
        *self.inner.addresses.lock().unwrap_or_else(|e| e.into_inner()) = addresses;
    }

    /// The peer `id` (at its registered address, else at `addr`), with its
    /// sender task started on first use. A peer whose address changed gets a
    /// new queue and connection.
    fn peer(&self, id: RaftNodeId, addr: &str) -> Arc<Peer> {
        let registered =
            self.inner.addresses.lock().unwrap_or_else(|e| e.into_inner()).get(&id).cloned();
        let addr = registered.as_deref().unwrap_or(addr);
        let mut peers = self.inner.peers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(peer) = peers.get(&id).filter(|p| p.addr == addr) {
            return peer.clone();
        }
        let (queue, rx) = mpsc::unbounded_channel();
        let state = Arc::new(PeerState {
            id,
            batch_url: format!("{}{}", addr.trim_end_matches('/'), wire::BATCH_PATH),
            healthy: AtomicBool::new(true),
            last_ok: Mutex::new(None),
        });
        let peer = Arc::new(Peer { addr: addr.to_string(), state: state.clone(), queue });
        peers.insert(id, peer.clone());
        tokio::spawn(send_loop(self.inner.clone_sender(), state, rx));
        peer
    }
}

impl Inner {
    /// What a sender task needs, without a reference back to the peer map.
    fn clone_sender(&self) -> Sender {
        Sender {
            client: self.rpc_client.clone(),
            token: self.options.token.clone(),
            max_batch: self.options.max_batch,
            in_flight: Arc::new(Semaphore::new(self.options.max_batches_in_flight)),
            links: self.links.clone(),
        }
    }
}

#[derive(Clone)]
struct Sender {
    client: reqwest::Client,
    token: String,
    max_batch: usize,
    in_flight: Arc<Semaphore>,
    links: Arc<Links>,
}

/// The peer's sender task: takes what is pending, as one batch, whenever a
/// request slot is free.
async fn send_loop(sender: Sender, peer: Arc<PeerState>, mut rx: mpsc::UnboundedReceiver<Pending>) {
    while let Some(first) = rx.recv().await {
        let Ok(permit) = sender.in_flight.clone().acquire_owned().await else {
            return;
        };
        // Let the tasks woken by the same tick (other groups' heartbeats)
        // queue their RPCs before the batch is cut.
        tokio::task::yield_now().await;
        let mut batch = vec![first];
        while batch.len() < sender.max_batch {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        // Callers that gave up need no RPC.
        batch.retain(|p| !p.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        let sender = sender.clone();
        let peer = peer.clone();
        tokio::spawn(async move {
            send_batch(&sender, &peer, batch).await;
            drop(permit);
        });
    }
}

/// Sends one batch and hands each answer to its caller as it arrives.
async fn send_batch(sender: &Sender, peer: &PeerState, batch: Vec<Pending>) {
    let deadline = batch.iter().map(|p| p.deadline).max().unwrap_or_else(Instant::now);
    let mut replies = Vec::with_capacity(batch.len());
    let mut calls = Vec::with_capacity(batch.len());
    for p in batch {
        replies.push(Some(p.reply));
        calls.push(Call { group: p.group, rpc: p.rpc });
    }
    sender.links.requests.fetch_add(1, Ordering::Relaxed);
    sender.links.rpcs.fetch_add(calls.len() as u64, Ordering::Relaxed);

    let exchange = async {
        let batch = BatchRequest { version: wire::VERSION, calls };
        let mut resp = post_batch(&sender.client, &sender.token, &peer.batch_url, &batch).await?;
        let mut decoder = FrameDecoder::default();
        while let Some(chunk) = resp.chunk().await.map_err(|e| transport_error(&e))? {
            decoder.push(&chunk);
            while let Some(reply) = decoder.next::<Reply>()? {
                let slot = replies.get_mut(reply.index as usize).and_then(Option::take);
                if let Some(tx) = slot {
                    let _ = tx.send(Ok(reply.outcome));
                }
            }
        }
        if !decoder.is_empty() {
            return Err(Failure::Status(Error::InvalidData("truncated batch response".into())));
        }
        Ok(())
    };
    let result = match tokio::time::timeout_at(deadline, exchange).await {
        Ok(r) => r,
        Err(_) => Err(Failure::Status(Error::Timeout)),
    };
    peer.record(result.as_ref().map(|_| ()), &sender.links);
    let error = match result {
        Ok(()) => Error::InvalidData("no answer in the batch response".into()),
        Err(Failure::Peer(e)) | Err(Failure::Status(e)) => e,
    };
    for tx in replies.into_iter().flatten() {
        let _ = tx.send(Err(error.clone()));
    }
}

/// Sends a batch request; an answer with an error status is a failure of
/// the exchange, not of the peer.
async fn post_batch(
    client: &reqwest::Client,
    token: &str,
    url: &str,
    batch: &BatchRequest,
) -> std::result::Result<reqwest::Response, Failure> {
    let body = wire::encode(batch)?;
    let resp = client
        .post(url)
        .bearer_auth(token)
        .body(body)
        .send()
        .await
        .map_err(|e| transport_error(&e))?;
    if !resp.status().is_success() {
        return Err(Failure::Status(Error::Unreachable(format!("status {}", resp.status()))));
    }
    Ok(resp)
}

/// Why an exchange failed.
pub(crate) enum Failure {
    /// The connection failed: the peer is down or restarting.
    Peer(Error),
    /// The peer is up but the exchange failed.
    Status(Error),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Status(e)
    }
}

/// Sorts a transport error into timeouts and peer failures.
pub(crate) fn transport_error(e: &reqwest::Error) -> Failure {
    if e.is_timeout() {
        return Failure::Status(Error::Timeout);
    }
    // Refused, reset, closed mid-request: all mean the peer's process or
    // host is gone or restarting.
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    Failure::Peer(Error::Unreachable(msg))
}

/// Makes the openraft clients of one group.
pub struct GroupNetworkFactory {
    network: Network,
    group: u8,
}

impl RaftNetworkFactory<TypeConfig> for GroupNetworkFactory {
    type Network = GroupNetwork;

    async fn new_client(&mut self, target: RaftNodeId, node: &BasicNode) -> GroupNetwork {
        GroupNetwork {
            network: self.network.clone(),
            group: self.group,
            target,
            node: node.clone(),
        }
    }
}

/// One group's client to one peer, as openraft uses it.
pub struct GroupNetwork {
    network: Network,
    group: u8,
    target: RaftNodeId,
    node: BasicNode,
}

type RpcResult<T> = std::result::Result<T, RPCError<RaftNodeId, BasicNode, RaftError<RaftNodeId>>>;

impl GroupNetwork {
    /// The peer, resolved at each use: its address may change while
    /// openraft keeps this client.
    fn peer(&self) -> Arc<Peer> {
        self.network.peer(self.target, &self.node.addr)
    }

    /// Queues an RPC for the peer's next batch and waits for its answer.
    async fn call(&self, rpc: Rpc, ttl: Duration) -> Result<Outcome> {
        let (tx, rx) = oneshot::channel();
        let deadline = Instant::now() + ttl;
        let pending = Pending { group: self.group, rpc, deadline, reply: tx };
        self.peer()
            .queue
            .send(pending)
            .map_err(|_| Error::Unreachable("the network is shut down".into()))?;
        match tokio::time::timeout_at(deadline, rx).await {
            Err(_) => Err(Error::Timeout),
            Ok(Err(_)) => Err(Error::Unreachable("the batch was dropped".into())),
            Ok(Ok(outcome)) => outcome,
        }
    }

    /// Turns a failed call into openraft's error.
    fn rpc_error(
        &self,
        e: Error,
        action: RPCTypes,
        from: RaftNodeId,
        ttl: Duration,
    ) -> RPCError<RaftNodeId, BasicNode, RaftError<RaftNodeId>> {
        match e {
            Error::Timeout => {
                RPCError::Timeout(Timeout { action, id: from, target: self.target, timeout: ttl })
            }
            e => RPCError::Unreachable(Unreachable::new(&e)),
        }
    }

    fn remote(
        &self,
        e: RaftError<RaftNodeId>,
    ) -> RPCError<RaftNodeId, BasicNode, RaftError<RaftNodeId>> {
        RPCError::RemoteError(RemoteError::new_with_node(self.target, self.node.clone(), e))
    }

    fn unexpected(
        &self,
        outcome: Outcome,
    ) -> RPCError<RaftNodeId, BasicNode, RaftError<RaftNodeId>> {
        let e = match outcome {
            Outcome::NoGroup => Error::NoGroup(self.group),
            other => Error::InvalidData(format!("unexpected answer {other:?}")),
        };
        RPCError::Unreachable(Unreachable::new(&e))
    }
}

impl RaftNetwork<TypeConfig> for GroupNetwork {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<RaftNodeId>> {
        let from = rpc.vote.leader_id().voted_for().unwrap_or_default();
        let ttl = option.hard_ttl();
        match self.call(Rpc::Append(rpc), ttl).await {
            Ok(Outcome::Append(Ok(resp))) => Ok(resp),
            Ok(Outcome::Append(Err(e))) => Err(self.remote(e)),
            Ok(other) => Err(self.unexpected(other)),
            Err(e) => Err(self.rpc_error(e, RPCTypes::AppendEntries, from, ttl)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<RaftNodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<RaftNodeId>> {
        let from = rpc.vote.leader_id().voted_for().unwrap_or_default();
        let ttl = option.hard_ttl();
        match self.call(Rpc::Vote(rpc), ttl).await {
            Ok(Outcome::Vote(Ok(resp))) => Ok(resp),
            Ok(Outcome::Vote(Err(e))) => Err(self.remote(e)),
            Ok(other) => Err(self.unexpected(other)),
            Err(e) => Err(self.rpc_error(e, RPCTypes::Vote, from, ttl)),
        }
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote<RaftNodeId>,
        snapshot: Snapshot<TypeConfig>,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        _option: RPCOption,
    ) -> std::result::Result<
        SnapshotResponse<RaftNodeId>,
        StreamingError<TypeConfig, Fatal<RaftNodeId>>,
    > {
        let inner = &self.network.inner;
        let peer = self.peer();
        let target = snapshot::Target {
            client: &inner.snapshot_client,
            addr: &peer.addr,
            token: &inner.options.token,
            group: self.group,
            id: self.target,
            node: &self.node,
        };
        let timeout = inner.options.snapshot_timeout;
        let from = vote.leader_id().voted_for().unwrap_or_default();
        let send = snapshot::send(target, vote, snapshot);
        let result = tokio::select! {
            closed = cancel => return Err(StreamingError::Closed(closed)),
            r = tokio::time::timeout(timeout, send) => r,
        };
        match result {
            Err(_) => Err(StreamingError::Timeout(Timeout {
                action: RPCTypes::InstallSnapshot,
                id: from,
                target: self.target,
                timeout,
            })),
            Ok(Ok(resp)) => {
                peer.state.healthy.store(true, Ordering::Relaxed);
                Ok(resp)
            }
            Ok(Err(snapshot::SendError::Remote(fatal))) => Err(StreamingError::RemoteError(
                RemoteError::new_with_node(self.target, self.node.clone(), fatal),
            )),
            Ok(Err(snapshot::SendError::Failed(Failure::Peer(e)))) => {
                if peer.state.healthy.swap(false, Ordering::Relaxed) {
                    let _ = inner.links.failures.send(self.target);
                }
                Err(StreamingError::Unreachable(Unreachable::new(&e)))
            }
            Ok(Err(snapshot::SendError::Failed(Failure::Status(Error::Timeout)))) => {
                Err(StreamingError::Timeout(Timeout {
                    action: RPCTypes::InstallSnapshot,
                    id: from,
                    target: self.target,
                    timeout,
                }))
            }
            Ok(Err(snapshot::SendError::Failed(Failure::Status(e)))) => {
                Err(StreamingError::Unreachable(Unreachable::new(&e)))
            }
        }
    }
}
