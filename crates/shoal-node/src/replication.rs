//! Replication: the node's buckets as Raft groups that follow the placement map.
//!
//! One loop follows the map on every node and, for every map and node change
//! it sees (and every `interval`):
//! - tells the engine where every live node is (its registered address, so a
//!   node that restarted elsewhere is reached at once);
//! - opens a group for each bucket the map gives this node, and starts a new
//!   bucket's group exactly once in the whole cluster: the first node to
//!   create `groups/{bucket}` in the registry (a create-if-absent
//!   transaction) records the map's replicas there as the first voters, and
//!   every first voter starts the group with exactly those (the first listed
//!   campaigns at once). A replica added later starts empty and is sent a
//!   snapshot by the group's leader;
//! - gives the engine each group's target voters (the map's live replicas);
//!   on the leader the engine moves the membership there (learner, catch-up,
//!   joint change), at most `max_concurrent_changes` groups at once;
//! - balances leadership: a leader hands a group to the map's first replica
//!   (Raft leadership transfer: no write is lost, no leaderless gap);
//! - stops the groups of buckets this node no longer holds once it is no
//!   longer a voter, keeps their data for `remove_after`, then deletes it;
//! - reports under `status/{node}` (through the registration's session) what
//!   this node actually hosts (a voter with a configuration) and leads.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_raft::{RaftNodeId, raft_id};
use shoal_registry::{Compare, CompareOp, Registry, Revision, Txn, TxnOp, keys};
use shoal_storage::Store;
use shoal_types::api::NodeReport;
use shoal_types::placement::PlacementMap;
use shoal_types::{BucketId, Error, NodeId};
use tokio::sync::watch;

use crate::engine::MultiRaft;

/// How the reconciler behaves.
#[derive(Clone, Debug)]
pub struct ReplicationOptions {
    /// This node.
    pub node_id: NodeId,
    /// How often to look again when nothing changed (retries after failures).
    pub interval: Duration,
    /// Groups this node hands to their preferred leader per pass.
    pub leader_moves_per_pass: usize,
    /// How long the data of a replica that left is kept before it is
    /// deleted. Until then it is not served, and if the map gives the bucket
    /// back, the replica resumes from it.
    pub remove_after: Duration,
}

pub use shoal_registry::directory::{Directory, directory_changed, read_directory};

/// What the Raft engine needs of the directory.
pub trait RaftDirectory {
    /// The Raft voters the map wants for a bucket, in the map's order
    /// (live nodes only: an address is needed to reach them).
    fn voters(&self, bucket: BucketId) -> Vec<RaftNodeId>;
    /// The live node whose Raft id is `id`.
    fn node_of(&self, id: RaftNodeId) -> Option<NodeId>;
}

impl RaftDirectory for Directory {
    fn voters(&self, bucket: BucketId) -> Vec<RaftNodeId> {
        let Some(map) = &self.map else { return Vec::new() };
        map.replicas(bucket).iter().filter(|n| self.nodes.contains_key(*n)).map(raft_id).collect()
    }

    fn node_of(&self, id: RaftNodeId) -> Option<NodeId> {
        self.nodes.keys().find(|n| raft_id(n) == id).cloned()
    }
}

/// What `groups/{bucket}` holds: the group's first voters (version 1), and
/// the group's id. Every replica keeps the id of its group with the bucket's
/// data (the first voters when they start it, the others in the snapshot
/// they are sent), so data of another group is recognised: see
/// [`check_groups`].
#[derive(serde::Serialize, serde::Deserialize)]
struct GroupClaim {
    version: u32,
    voters: Vec<NodeId>,
    /// Absent in claims made before groups had ids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id: Option<String>,
}

fn new_group_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn encode_claim(claim: &GroupClaim) -> Result<Vec<u8>, Error> {
    serde_json::to_vec(claim).map_err(|e| Error::Internal(e.to_string()))
}

/// Checks, before the node registers, that every group it holds on disk is
/// the group the registry names for its bucket, and records the ones the
/// registry does not know yet.
///
/// - No claim: the group's data is the only copy the cluster has. It is
///   claimed with its id (made now if the data has none); a group whose only
///   voter is this node names it as first voter, any other names none, so
///   that no node starts a second group for the bucket beside it: new
///   replicas are sent a snapshot of this one. This is how a standalone
///   data directory becomes the first node of a cluster.
/// - A claim with another id: the data belongs to another group (another
///   cluster, or a standalone server started after the cluster began
///   without it). Joining would replace it with the cluster's copy, so the
///   node refuses to start and says why.
/// - A claim without an id (made before ids) or data without one: the two
///   are taken to match, and the missing id is filled in.
pub async fn check_groups(
    registry: &dyn Registry,
    multi: &MultiRaft,
    store: &Store,
    me: &NodeId,
) -> Result<(), Error> {
    // Every claim in one read; a bucket read again only when it changed.
    let mut claims: BTreeMap<Vec<u8>, shoal_registry::KeyValue> = registry
        .get_prefix(keys::GROUPS)
        .await?
        .kvs
        .into_iter()
        .map(|kv| (kv.key.clone(), kv))
        .collect();
    for g in multi.status().await.into_iter().filter(|g| g.initialized) {
        let bucket = BucketId(g.group);
        let key = keys::group(bucket);
        let local = store.group_id(bucket)?;
        // A claim may change under us (another replica filling in an id):
        // a few rounds of compare-and-set.
        for round in 0..5 {
            let current = match round {
                0 => claims.remove(&key),
                _ => registry.get(&key).await?,
            };
            let Some(kv) = current else {
                let id = local.clone().unwrap_or_else(new_group_id);
                let voters = if g.voters == [raft_id(me)] { vec![me.clone()] } else { Vec::new() };
                let claim = GroupClaim { version: 1, voters, id: Some(id.clone()) };
                let txn = Txn::new()
                    .when([Compare::create_revision(key.clone(), CompareOp::Equal, Revision(0))])
                    .and_then([TxnOp::put(key.clone(), encode_claim(&claim)?, None)]);
                if registry.txn(txn).await?.succeeded {
                    if local.is_none() {
                        store.set_group_id(bucket, &id)?;
                    }
                    tracing::info!(%bucket, "recorded this node's data as the bucket's group");
                    break;
                }
                continue;
            };
            let mut claim: GroupClaim = serde_json::from_slice(&kv.value).map_err(|e| {
                Error::InvalidData(format!(
                    "the registry's {} is unreadable: {e}",
                    bucket_key(bucket)
                ))
            })?;
            match (&claim.id, &local) {
                (Some(theirs), Some(ours)) if theirs != ours => {
                    return Err(Error::Conflict(format!(
                        "bucket {bucket} of this data directory belongs to another Raft group \
                         than the cluster's (the registry's {} names group {theirs}; the data \
                         here is of group {ours}): this directory was not started in this \
                         cluster, and joining would replace its data with the cluster's copy. \
                         Nothing was changed. To grow a standalone server into a cluster, start \
                         its directory as the first node, against a registry no other node has \
                         used yet, and add the other nodes after it; to bring its bases into a \
                         running cluster, copy them with `shoal backup` and `shoal restore` \
                         (docs/cluster.md, \"Growing a standalone server\")",
                        bucket_key(bucket)
                    )));
                }
                (Some(_), Some(_)) => break,
                (Some(theirs), None) => {
                    store.set_group_id(bucket, theirs)?;
                    break;
                }
                (None, _) => {
                    let id = local.clone().unwrap_or_else(new_group_id);
                    claim.id = Some(id.clone());
                    let txn = Txn::new()
                        .when([Compare::mod_revision(
                            key.clone(),
                            CompareOp::Equal,
                            kv.mod_revision,
                        )])
                        .and_then([TxnOp::put(key.clone(), encode_claim(&claim)?, None)]);
                    if registry.txn(txn).await?.succeeded {
                        if local.is_none() {
                            store.set_group_id(bucket, &id)?;
                        }
                        break;
                    }
                }
            }
        }
    }
    Ok(())
}

fn bucket_key(bucket: BucketId) -> String {
    String::from_utf8_lossy(&keys::group(bucket)).into_owned()
}

/// Follows the map until `shutdown`.
pub async fn reconcile(
    registry: Arc<dyn Registry>,
    multi: MultiRaft,
    store: Arc<Store>,
    options: ReplicationOptions,
    directory: watch::Sender<Directory>,
    report: watch::Sender<NodeReport>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut ctx = Ctx {
        registry: registry.clone(),
        multi,
        store,
        options: options.clone(),
        directory,
        report,
        departed: BTreeMap::new(),
        targets: BTreeMap::new(),
        moved: BTreeMap::new(),
    };
    while !*shutdown.borrow() {
        match pass(&mut ctx).await {
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

/// What passes share.
struct Ctx {
    registry: Arc<dyn Registry>,
    multi: MultiRaft,
    store: Arc<Store>,
    options: ReplicationOptions,
    directory: watch::Sender<Directory>,
    report: watch::Sender<NodeReport>,
    /// Replicas that left the map, and since when.
    departed: BTreeMap<u8, Instant>,
    /// The targets last given to the engine.
    targets: BTreeMap<u8, Vec<RaftNodeId>>,
    /// When this node last handed a group's leadership over.
    moved: BTreeMap<u8, Instant>,
}

/// How long a node waits before it hands the same group over again.
const MOVE_BACKOFF: Duration = Duration::from_secs(10);

/// One pass; returns the registry revision it read at.
async fn pass(ctx: &mut Ctx) -> Result<Revision, Error> {
    let (dir, revision) = read_directory(ctx.registry.as_ref()).await?;
    let multi = ctx.multi.clone();
    multi.transport().set_addresses(
        dir.nodes.iter().map(|(id, info)| (raft_id(id), info.local_node_url.clone())).collect(),
    );
    ctx.directory.send_replace(dir.clone());
    let Some(map) = dir.map.clone() else {
        publish(ctx, 0, &BTreeSet::new());
        return Ok(revision);
    };
    let me = ctx.options.node_id.clone();
    let mine: BTreeSet<u8> =
        BucketId::all().filter(|b| map.replicas(*b).contains(&me)).map(|b| b.0).collect();
    // Replicas that left: deleted after the grace period, unless the map
    // gave the bucket back (then the group resumes from its kept state).
    ctx.departed.retain(|b, _| !mine.contains(b));
    let expired: Vec<u8> = ctx
        .departed
        .iter()
        .filter(|(_, at)| at.elapsed() >= ctx.options.remove_after)
        .map(|(b, _)| *b)
        .collect();
    for b in expired {
        tracing::info!(bucket = %BucketId(b), "deleting the data of a replica that left");
        multi.remove(b).await;
        ctx.store.remove_bucket(BucketId(b))?;
        ctx.departed.remove(&b);
    }
    for &b in &mine {
        let bucket = BucketId(b);
        multi.open(b).await.map_err(|e| Error::Unavailable(e.to_string()))?;
        if !multi.is_initialized(b) {
            start_group(ctx, &map, bucket).await?;
        }
    }
    // Every hosted group learns where its voters should be, including the
    // groups this node is leaving: if it leads one, it starts the move.
    let hosted = multi.hosted();
    for &b in &hosted {
        let voters = dir.voters(BucketId(b));
        if !voters.is_empty() && ctx.targets.get(&b) != Some(&voters) {
            multi.set_target(b, voters.clone());
            ctx.targets.insert(b, voters);
        }
    }
    ctx.targets.retain(|b, _| hosted.contains(b));
    // Leader balance: the map spreads each bucket's first replica evenly over
    // the nodes; a leader that is not first hands the group over to it. A
    // transfer loses nothing and leaves no leaderless gap (writes meanwhile
    // wait for the new leader); the engine gives up on one that does not
    // finish within an election timeout.
    let mut moves = 0;
    ctx.moved.retain(|b, at| mine.contains(b) && at.elapsed() < MOVE_BACKOFF);
    for &b in &mine {
        if moves >= ctx.options.leader_moves_per_pass {
            break;
        }
        let Some(first) = map.replicas(BucketId(b)).first() else { continue };
        if *first == me
            || !dir.nodes.contains_key(first)
            || !multi.is_leader(b)
            || ctx.moved.contains_key(&b)
        {
            continue;
        }
        multi.transfer_leader(b, raft_id(first));
        ctx.moved.insert(b, Instant::now());
        moves += 1;
    }
    for b in hosted {
        if !mine.contains(&b) && !multi.is_voter(b) && !multi.is_leader(b) {
            // Gone from the map and demoted by the group: stop serving,
            // keep the data a while (the map may give the bucket back).
            tracing::info!(bucket = %BucketId(b), "this node no longer holds the bucket; its replica stops");
            multi.stop(b).await;
            ctx.departed.insert(b, Instant::now());
        }
    }
    publish(ctx, map.epoch, &mine);
    Ok(revision)
}

/// Starts a bucket's group: with the first voters recorded in the registry,
/// recording them first if nobody has.
async fn start_group(ctx: &Ctx, map: &PlacementMap, bucket: BucketId) -> Result<(), Error> {
    let me = &ctx.options.node_id;
    let key = keys::group(bucket);
    let wanted =
        GroupClaim { version: 1, voters: map.replicas(bucket).to_vec(), id: Some(new_group_id()) };
    let value = encode_claim(&wanted)?;
    let claim = Txn::new()
        .when([Compare::create_revision(key.clone(), CompareOp::Equal, Revision(0))])
        .and_then([TxnOp::put(key.clone(), value, None)]);
    let (voters, id) = if ctx.registry.txn(claim).await?.succeeded {
        (wanted.voters, wanted.id)
    } else {
        let Some(kv) = ctx.registry.get(&key).await? else { return Ok(()) };
        match serde_json::from_slice::<GroupClaim>(&kv.value) {
            // A first voter whose own start was lost (it crashed before
            // writing it) starts with the recorded voters, while the map
            // still gives the bucket to them; anyone else waits for the
            // leader's snapshot.
            Ok(c)
                if c.version == 1 && c.voters.contains(me) && c.voters == map.replicas(bucket) =>
            {
                (c.voters, c.id)
            }
            _ => return Ok(()),
        }
    };
    if voters.contains(me) {
        if let Some(id) = &id {
            ctx.store.set_group_id(bucket, id)?;
        }
        let ids = voters.iter().map(raft_id).collect();
        let started = ctx
            .multi
            .bootstrap(bucket.0, ids)
            .await
            .map_err(|e| Error::Unavailable(e.to_string()))?;
        if started {
            tracing::debug!(%bucket, voters = voters.len(), "started the bucket's group");
        }
    }
    Ok(())
}

/// Publishes what this node hosts and leads, if it changed.
fn publish(ctx: &Ctx, epoch: u64, mine: &BTreeSet<u8>) {
    let multi = &ctx.multi;
    let buckets: Vec<BucketId> = mine
        .iter()
        .filter(|b| multi.is_initialized(**b) && multi.is_voter(**b))
        .map(|b| BucketId(*b))
        .collect();
    let leads: Vec<BucketId> =
        multi.hosted().into_iter().filter(|b| multi.is_leader(*b)).map(BucketId).collect();
    let report = NodeReport { epoch, buckets, leads };
    ctx.report.send_if_modified(|r| {
        let changed = *r != report;
        *r = report;
        changed
    });
}
