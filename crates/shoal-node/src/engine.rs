//! The engine: where the HTTP layer sends writes and reads.
//!
//! Every write is a command proposed to its bucket's Raft group and answered
//! once the group has committed and applied it (standalone runs one-member
//! groups: the same path). Reads take a consistency level:
//! - `none`: this replica's state, which may be stale;
//! - `leader`: only on the node that leads the bucket (else `not_leader`);
//! - `linearizable` (default): the leader confirms its leadership with a
//!   quorum (read index) and waits until what was committed is applied.
//!
//! A node asked about a bucket it does not hold answers `misdirected` (421)
//! with the URLs of the nodes that do; a bucket it should hold but has not
//! opened yet is `unavailable` (503, retry).

use std::sync::Arc;

use shoal_raft::{GroupError, RaftNodeId};
use shoal_storage::{Command, Output, Store};
use shoal_types::api::{BaseLocation, Consistency, Params, QueryResponse};
use shoal_types::{BaseId, BucketId, Error, NodeId, Result};
use tokio::sync::watch;

use crate::proposed::Proposed;
use crate::replica::{self, BucketStateMachine};
use crate::replication::{Directory, RaftDirectory as _};

/// The node's Raft groups.
pub type MultiRaft = shoal_raft::MultiRaft<BucketStateMachine>;

/// The write and read paths of one node.
pub struct Engine {
    store: Arc<Store>,
    multi: MultiRaft,
    directory: watch::Receiver<Directory>,
    node: NodeId,
    /// The keys of writes proposed lately, for chained writes.
    proposed: Proposed,
}

/// How long a request waits for a group that is starting on this node.
const STARTING_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// How long a query may run on an async worker before it is stopped and
/// run again on a blocking thread: a point read takes a few microseconds,
/// and a worker held longer would delay every connection it serves.
pub const INLINE_QUERY: std::time::Duration = std::time::Duration::from_micros(250);

impl Engine {
    /// An engine over `store`, writing through `multi`'s groups, routing with
    /// what `directory` knows of the map.
    pub fn new(
        store: Arc<Store>,
        multi: MultiRaft,
        directory: watch::Receiver<Directory>,
        node: NodeId,
    ) -> Engine {
        Engine { store, multi, directory, node, proposed: Proposed::default() }
    }

    /// The node this engine runs on.
    pub fn node_id(&self) -> &NodeId {
        &self.node
    }

    /// What this node knows of the map and the live nodes now.
    pub fn directory(&self) -> Directory {
        self.directory.borrow().clone()
    }

    /// The store.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The groups.
    pub fn multi(&self) -> &MultiRaft {
        &self.multi
    }

    /// Hands every bucket this node leads to another live replica (a clean
    /// stop), waiting up to `within`. Answers how many it led that could be
    /// handed over, and how many of those it still leads (0: all done).
    /// Buckets with no other live replica stay led. Requests meanwhile go
    /// on: a bucket handed over redirects or forwards to its new leader.
    pub async fn hand_over(&self, within: std::time::Duration) -> (usize, usize) {
        let deadline = tokio::time::Instant::now() + within;
        let first = self.multi.leave().await;
        let mut left = first;
        while left > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            left = self.multi.leave().await;
        }
        (first, left)
    }

    /// The node a Raft id belongs to, among the live ones.
    pub fn node_of(&self, id: RaftNodeId) -> Option<NodeId> {
        self.directory.borrow().node_of(id)
    }

    /// Whether the map gives `bucket` to this node (or there is no map yet).
    fn assigned(&self, bucket: BucketId) -> bool {
        let dir = self.directory.borrow();
        dir.map.as_ref().is_none_or(|m| m.replicas(bucket).contains(&self.node))
    }

    /// Waits, a few seconds at most, for a bucket the map gives this node
    /// but whose group has not started yet: nothing was proposed, so a
    /// request can wait for it rather than fail (`starting`, 503).
    async fn wait_started(&self, bucket: BucketId) {
        let deadline = std::time::Instant::now() + STARTING_WAIT;
        while !self.multi.is_hosted(bucket.0)
            && self.assigned(bucket)
            && std::time::Instant::now() < deadline
        {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    fn routing_error(&self, e: GroupError) -> Error {
        match e {
            GroupError::NotLeader { group, leader } => {
                let url = leader.and_then(|id| {
                    let dir = self.directory.borrow();
                    dir.node_of(id)
                        .and_then(|n| dir.nodes.get(&n).map(|i| i.local_node_url.clone()))
                });
                Error::NotLeader {
                    message: format!("this node does not lead bucket {}", BucketId(group)),
                    leader: url,
                }
            }
            GroupError::Unavailable { group, reason } => {
                Error::Unavailable(format!("bucket {} cannot serve now: {reason}", BucketId(group)))
            }
            GroupError::NotHosted(b) => {
                let bucket = BucketId(b);
                if self.assigned(bucket) {
                    Error::Unavailable(format!(
                        "bucket {bucket} is starting on this node; retry shortly"
                    ))
                } else {
                    Error::Misdirected {
                        message: format!("this node holds no replica of bucket {bucket}"),
                        replicas: self.directory.borrow().replica_urls(bucket),
                    }
                }
            }
        }
    }

    /// Proposes a command; returns its log index and output. With an
    /// idempotency key answered before, returns that first index and output
    /// and changes nothing.
    pub async fn write(&self, command: Command, key: Option<&str>) -> Result<(u64, Output)> {
        self.write_after(command, key, None).await
    }

    /// Like [`Engine::write`], applied only if the write with the
    /// idempotency key `after` was applied to the same base before it
    /// (else `conflict`, and nothing changes): checked when the command is
    /// applied, in log order. So that it does not overtake that write on
    /// its way to the log, it is proposed once this node proposed that
    /// one, or after a short wait (see the `proposed` module).
    pub async fn write_after(
        &self,
        command: Command,
        key: Option<&str>,
        after: Option<&str>,
    ) -> Result<(u64, Output)> {
        let base = command.base();
        let bucket = base.bucket();
        if let Some(after) = after {
            self.proposed.wait(base, after).await;
        }
        self.wait_started(bucket).await;
        let answer = self.multi.propose(bucket.0, replica::encode(command, key, after));
        if let Some(key) = key {
            self.proposed.mark(base, key);
        }
        let (index, answer) = answer.await.map_err(|e| self.routing_error(e))?;
        match answer? {
            Output::Repeated { index, output } => Ok((index, *output)),
            output => {
                metrics::counter!("shoal_writes_applied_total").increment(1);
                Ok((index, output))
            }
        }
    }

    /// Runs a read of `bucket` at `consistency` against the store.
    pub async fn read<T: Send + 'static>(
        &self,
        bucket: BucketId,
        consistency: Consistency,
        f: impl FnOnce(&Store) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.readable(bucket, consistency).await?;
        self.local(f).await
    }

    /// Runs a read-only statement on `base` at `consistency`. A short one
    /// runs right here, on the async worker, when its base is open and free
    /// ([`Store::try_query_now`], bounded by [`INLINE_QUERY`]); the others
    /// go to a blocking thread. Handing every query to another thread and
    /// back cost a point read two wake-ups, about a tenth of its CPU.
    pub async fn query(
        &self,
        base: BaseId,
        consistency: Consistency,
        sql: String,
        params: Params,
    ) -> Result<QueryResponse> {
        self.readable(base.bucket(), consistency).await?;
        if let Some(done) = self.store.try_query_now(&base, &sql, &params, INLINE_QUERY) {
            return done;
        }
        self.local(move |s| s.query(&base, &sql, &params)).await
    }

    /// Waits until this node may serve a read of `bucket` at `consistency`.
    pub(crate) async fn readable(&self, bucket: BucketId, consistency: Consistency) -> Result<()> {
        self.wait_started(bucket).await;
        if !self.multi.is_hosted(bucket.0) {
            return Err(self.routing_error(GroupError::NotHosted(bucket.0)));
        }
        match consistency {
            Consistency::None => {}
            Consistency::Leader if self.multi.is_leader(bucket.0) => {
                self.wait_current(bucket).await?
            }
            Consistency::Leader => {
                return Err(self.routing_error(GroupError::NotLeader {
                    group: bucket.0,
                    leader: self.multi.leader(bucket.0),
                }));
            }
            Consistency::Linearizable => {
                self.multi.read_index(bucket.0).await.map_err(|e| self.routing_error(e))?
            }
        }
        Ok(())
    }

    /// Waits (up to the Raft `leader_wait`) until this node, which leads
    /// `bucket`, has applied everything earlier leaders committed: a new
    /// leader's state may lack acknowledged writes until an entry of its
    /// own term commits and applies.
    async fn wait_current(&self, bucket: BucketId) -> Result<()> {
        let deadline = std::time::Instant::now() + self.multi.options().settings.leader_wait;
        loop {
            if self.multi.is_leader_current(bucket.0) {
                return Ok(());
            }
            if !self.multi.is_leader(bucket.0) {
                return Err(self.routing_error(GroupError::NotLeader {
                    group: bucket.0,
                    leader: self.multi.leader(bucket.0),
                }));
            }
            if std::time::Instant::now() >= deadline {
                return Err(Error::Unavailable(format!(
                    "bucket {bucket} has a new leader that has not yet applied its predecessors' \
                     writes; retry shortly"
                )));
            }
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    }

    /// Runs a read of this node's own state (e.g. listing its bases).
    pub async fn local<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| Error::Internal(format!("read task failed: {e}")))?
    }
}

impl Engine {
    /// Where `bucket` lives, as this node knows it: the map's replicas and,
    /// if this node hosts the bucket's group, its current leader; and
    /// whether this node hosts it (if not, ask a node that does).
    pub fn location(&self, bucket: BucketId) -> (BaseLocation, bool) {
        let dir = self.directory.borrow();
        let hosted = self.multi.is_hosted(bucket.0);
        let leader = self.multi.leader(bucket.0).and_then(|id| dir.node_of(id));
        (dir.location(bucket, leader.as_ref()), hosted)
    }

    /// The internal URLs of a bucket's replicas other than this node, for
    /// asking one of them what this node cannot answer.
    pub fn replica_local_urls(&self, bucket: BucketId) -> Vec<String> {
        let dir = self.directory.borrow();
        let Some(map) = &dir.map else { return Vec::new() };
        map.replicas(bucket)
            .iter()
            .filter(|id| **id != self.node)
            .filter_map(|id| dir.nodes.get(id).map(|i| i.local_node_url.clone()))
            .collect()
    }
}
