//! Replication: the node's buckets as Raft groups that follow the placement map.
//!
//! The reconciler runs on every node and, for every map it sees:
//! - opens a group for each bucket the map gives this node;
//! - initializes a bucket's group exactly once in the whole cluster: the
//!   first node to create `groups/{bucket}` in the registry (a
//!   create-if-absent transaction) initializes it with the map's replicas;
//!   everyone else waits to be contacted by the group's leader;
//! - on the nodes that lead a group, moves its membership toward the map's
//!   replicas: new replicas join as learners, catch up from the log or a
//!   snapshot, then become voters; replicas that left are removed. At most
//!   `max_concurrent_changes` groups change at once per node, which also
//!   bounds the snapshots in flight;
//! - closes the groups of buckets this node no longer holds once it is no
//!   longer a member, and removes their data.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shoal_raft::BasicNode;
use shoal_raft::multi::{GroupError, MultiRaft};
use shoal_raft::{RaftNodeId, raft_id};
use shoal_registry::{Compare, CompareOp, Registry, Revision, Txn, TxnOp, keys};
use shoal_storage::Store;
use shoal_types::api::{BaseLocation, NodeInfo, NodeRef};
use shoal_types::placement::PlacementMap;
use shoal_types::{BucketId, Error, NodeId};
use tokio::sync::{Semaphore, watch};

/// How the reconciler behaves.
#[derive(Clone, Debug)]
pub struct ReplicationOptions {
    /// This node.
    pub node_id: NodeId,
    /// Groups changing membership at once on this node.
    pub max_concurrent_changes: usize,
    /// How often to look again when nothing changed (retries after failures).
    pub interval: Duration,
    /// Groups this node campaigns for per pass to balance leadership.
    pub leader_moves_per_pass: usize,
    /// How long the data of a replica that left is kept before it is
    /// deleted. Until then it is not served, and if the map gives the bucket
    /// back, the replica resumes from it.
    pub remove_after: Duration,
}

/// The node's view of where buckets live, for routing answers.
#[derive(Clone, Debug, Default)]
pub struct Directory {
    /// The latest placement map.
    pub map: Option<PlacementMap>,
    /// Live nodes.
    pub nodes: BTreeMap<NodeId, NodeInfo>,
}

impl Directory {
    /// A live node as clients see it.
    pub fn node_ref(&self, id: &NodeId) -> Option<NodeRef> {
        self.nodes.get(id).map(|i| NodeRef { node_id: id.clone(), node_url: i.node_url.clone() })
    }

    /// Where `bucket` lives by the map, naming `leader` if it is live.
    pub fn location(&self, bucket: BucketId, leader: Option<&NodeId>) -> BaseLocation {
        let (replicas, epoch) = match &self.map {
            Some(map) => {
                (map.replicas(bucket).iter().filter_map(|n| self.node_ref(n)).collect(), map.epoch)
            }
            None => (Vec::new(), 0),
        };
        BaseLocation { bucket, leader: leader.and_then(|l| self.node_ref(l)), replicas, epoch }
    }

    /// The public URLs of a bucket's replicas.
    pub fn replica_urls(&self, bucket: BucketId) -> Vec<String> {
        let Some(map) = &self.map else { return Vec::new() };
        map.replicas(bucket)
            .iter()
            .filter_map(|n| self.nodes.get(n).map(|i| i.node_url.clone()))
            .collect()
    }

    /// The Raft members the map wants for a bucket (live nodes only: an
    /// address is needed to reach them).
    pub fn voters(&self, bucket: BucketId) -> BTreeMap<RaftNodeId, BasicNode> {
        let Some(map) = &self.map else { return BTreeMap::new() };
        map.replicas(bucket)
            .iter()
            .filter_map(|n| {
                self.nodes
                    .get(n)
                    .map(|i| (raft_id(n), BasicNode { addr: i.local_node_url.clone() }))
            })
            .collect()
    }
}

/// The registry key that marks a bucket's group as initialized.
fn group_key(bucket: BucketId) -> Vec<u8> {
    format!("groups/{bucket}").into_bytes()
}

/// Follows the map until `shutdown`.
pub async fn reconcile(
    registry: Arc<dyn Registry>,
    multi: Arc<MultiRaft>,
    store: Arc<Store>,
    options: ReplicationOptions,
    directory: watch::Sender<Directory>,
    mut shutdown: watch::Receiver<bool>,
) {
    let ctx = Ctx {
        semaphore: Arc::new(Semaphore::new(options.max_concurrent_changes.max(1))),
        busy: Arc::default(),
        balance: Mutex::default(),
        registry: registry.clone(),
        multi,
        store,
        options: options.clone(),
        directory,
    };
    let mut departed: BTreeMap<u8, Instant> = BTreeMap::new();
    while !*shutdown.borrow() {
        match pass(&ctx, &mut departed).await {
            Ok(revision) => {
                tokio::select! {
                    _ = directory_changed(registry.as_ref(), revision, options.interval) => {}
                    _ = shutdown.changed() => return,
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "replication reconcile failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(options.interval) => {}
                    _ = shutdown.changed() => return,
                }
            }
        }
    }
}

/// What every pass works with.
struct Ctx {
    registry: Arc<dyn Registry>,
    multi: Arc<MultiRaft>,
    store: Arc<Store>,
    options: ReplicationOptions,
    directory: watch::Sender<Directory>,
    semaphore: Arc<Semaphore>,
    busy: Arc<Mutex<BTreeSet<u8>>>,
    /// Per group, what leader balancing remembers between passes.
    balance: Mutex<BTreeMap<u8, Balance>>,
}

/// What leader balancing remembers of a group between passes.
#[derive(Default)]
struct Balance {
    /// The group's last log index at the previous pass.
    last_log: Option<u64>,
    /// When this node last campaigned in the group to balance leadership.
    campaigned: Option<Instant>,
}

/// How long a node waits before it campaigns again in the same group to
/// balance leadership.
const CAMPAIGN_BACKOFF: Duration = Duration::from_secs(10);

/// One pass; returns the registry revision it read at.
async fn pass(ctx: &Ctx, departed: &mut BTreeMap<u8, Instant>) -> Result<Revision, Error> {
    let Ctx { registry, multi, store, options, directory, semaphore, busy, balance } = ctx;
    let (Directory { map, nodes }, revision) = read_directory(registry.as_ref()).await?;
    // Reach every node where it registered, whatever a group's membership
    // still says (a node restarted at a new address is otherwise lost to
    // groups that cannot elect a leader to update it).
    multi.network().set_addresses(
        nodes.iter().map(|(id, info)| (raft_id(id), info.local_node_url.clone())).collect(),
    );
    let dir = Directory { map: map.clone(), nodes };
    directory.send_replace(dir.clone());
    let Some(map) = map else { return Ok(revision) };

    let me = &options.node_id;
    let mine: BTreeSet<u8> =
        BucketId::all().filter(|b| map.replicas(*b).contains(me)).map(|b| b.0).collect();
    // Replicas that left: deleted after the grace period, unless the map
    // gave the bucket back (then the group resumes from its kept state).
    departed.retain(|b, _| !mine.contains(b));
    let expired: Vec<u8> = departed
        .iter()
        .filter(|(_, at)| at.elapsed() >= options.remove_after)
        .map(|(b, _)| *b)
        .collect();
    for b in expired {
        tracing::info!(bucket = %BucketId(b), "deleting the data of a replica that left");
        multi.close(b).await.map_err(group_error)?;
        store.remove_bucket(BucketId(b))?;
        departed.remove(&b);
    }
    for &b in &mine {
        let raft = multi.open(b).await.map_err(group_error)?;
        let uninitialized =
            raft.metrics().borrow().membership_config.membership().voter_ids().next().is_none();
        if uninitialized {
            let key = group_key(BucketId(b));
            let claim = Txn::new()
                .when([Compare::create_revision(key.clone(), CompareOp::Equal, Revision(0))])
                .and_then([TxnOp::put(key, me.0.as_bytes().to_vec(), None)]);
            if registry.txn(claim).await?.succeeded {
                let voters = dir.voters(BucketId(b));
                tracing::info!(bucket = %BucketId(b), voters = voters.len(), "initializing the bucket's group");
                multi.initialize(b, voters).await.map_err(group_error)?;
            }
        }
    }
    // Leader balance: the map spreads each bucket's first replica evenly over
    // the nodes; where this node is first but does not lead, it campaigns
    // (openraft 0.9's way to move leadership; it has no transfer). A campaign
    // against a live leader is costly: the leader and the third member
    // honour the leader's lease and refuse it, the higher term still deposes
    // the leader, and the group has no leader until an election after the
    // lease wins (measured: 1.5 s, and a continuous churn of such windows
    // under a write load). So only quiet groups are moved: a leader, this
    // node a voter that has applied its whole log, no new entry since the
    // previous pass (the leader's log is then no longer than this node's),
    // and no campaign of this node in the group for CAMPAIGN_BACKOFF. A few
    // groups per pass; a busy group keeps its leader.
    let mut campaigns = Vec::new();
    {
        let mut balance = balance.lock().unwrap_or_else(|e| e.into_inner());
        balance.retain(|b, _| mine.contains(b));
        for &b in &mine {
            let Some(raft) = multi.group(b) else { continue };
            let m = raft.metrics().borrow().clone();
            let Balance { last_log, campaigned } = balance.entry(b).or_default();
            let quiet = *last_log == m.last_log_index;
            *last_log = m.last_log_index;
            if campaigns.len() >= options.leader_moves_per_pass {
                continue;
            }
            let preferred = map.replicas(BucketId(b)).first() == Some(me);
            let caught_up = m.last_applied.map(|l| l.index) == m.last_log_index;
            let rested = campaigned.is_none_or(|t| t.elapsed() >= CAMPAIGN_BACKOFF);
            if preferred
                && m.current_leader.is_some_and(|l| l != multi.id())
                && multi.is_voter(b)
                && multi.may_campaign(b)
                && caught_up
                && quiet
                && rested
            {
                *campaigned = Some(Instant::now());
                campaigns.push(raft);
            }
        }
    }
    for raft in campaigns {
        let _ = raft.trigger().elect().await;
    }
    for b in multi.hosted() {
        let bucket = BucketId(b);
        if multi.is_leader(b) {
            let voters = dir.voters(bucket);
            if voters.is_empty() || !multi.needs_reconcile(b, &voters) {
                continue;
            }
            if !busy.lock().unwrap_or_else(|e| e.into_inner()).insert(b) {
                continue;
            }
            let (multi, semaphore, busy) = (multi.clone(), semaphore.clone(), busy.clone());
            tokio::spawn(async move {
                if let Ok(_permit) = semaphore.acquire().await {
                    match multi.reconcile(b, voters).await {
                        Ok(true) => tracing::info!(%bucket, "group membership follows the map"),
                        Ok(false) => {}
                        Err(e) => {
                            tracing::warn!(%bucket, error = %e, "membership change failed; will retry")
                        }
                    }
                }
                busy.lock().unwrap_or_else(|e| e.into_inner()).remove(&b);
            });
        } else if !mine.contains(&b) {
            // Gone from the map: the leader keeps a leaving member as a
            // learner until it has seen the change (MultiRaft::reconcile);
            // once this node is no voter, it lets go. Until then it may be
            // needed for a quorum.
            let still_member = multi.is_voter(b);
            if !still_member {
                // Stop serving, keep the data: the leader still counts this
                // node's acknowledgements until it removes it, so the state
                // must not vanish while the node could be asked back.
                tracing::info!(%bucket, "this node no longer holds the bucket; its replica stops");
                multi.stop(b).await;
                departed.insert(b, Instant::now());
            }
        }
    }
    Ok(revision)
}

/// Reads the live nodes and the placement map once; returns them with the
/// registry revision they were read at (watch from the next one).
pub async fn read_directory(registry: &dyn Registry) -> Result<(Directory, Revision), Error> {
    let listing = registry.get_prefix(keys::NODES).await?;
    let mut nodes = BTreeMap::new();
    for kv in &listing.kvs {
        if let (Some(id), Ok(info)) =
            (keys::node_of(&kv.key), serde_json::from_slice::<NodeInfo>(&kv.value))
        {
            nodes.insert(id, info);
        }
    }
    let map = match registry.get(keys::PLACEMENT).await? {
        Some(kv) => Some(PlacementMap::decode(&kv.value)?),
        None => None,
    };
    Ok((Directory { map, nodes }, listing.revision))
}

/// Returns on the first change of the map or the nodes after `revision`,
/// or after `interval` at the latest (a safety net against a lost watch).
pub async fn directory_changed(registry: &dyn Registry, revision: Revision, interval: Duration) {
    let from = Revision(revision.0 + 1);
    let wait = async {
        let placement = registry.watch_prefix(keys::PLACEMENT, from).await;
        let nodes = registry.watch_prefix(keys::NODES, from).await;
        match (placement, nodes) {
            (Ok(mut p), Ok(mut n)) => {
                tokio::select! {
                    _ = p.next() => {}
                    _ = n.next() => {}
                }
            }
            _ => tokio::time::sleep(interval).await,
        }
    };
    tokio::select! {
        _ = wait => {}
        _ = tokio::time::sleep(interval) => {}
    }
}

/// Turns a group error into Shoal's.
pub fn group_error(e: GroupError) -> Error {
    match e {
        GroupError::NotHosted(b) => Error::Misdirected {
            message: format!("this node holds no replica of bucket {}", BucketId(b)),
            replicas: Vec::new(),
        },
        GroupError::NotLeader { group, leader } => Error::NotLeader {
            message: format!("this node does not lead bucket {}", BucketId(group)),
            leader: leader.map(|(_, node)| node.addr),
        },
        GroupError::Unavailable { group, reason } => {
            Error::Unavailable(format!("bucket {} cannot serve now: {reason}", BucketId(group)))
        }
    }
}
