//! Shoal's monitor: the service that keeps the placement map of the 256
//! buckets in step with the live nodes ([`run`]), and the reads every server
//! process makes of the control plane: the cluster's status ([`status`]),
//! rebalance requests ([`request_rebalance`]), and draining and forgetting
//! nodes ([`drain`], [`forget`]).

mod service;

use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

use shoal_registry::{Registry, directory, keys};
use shoal_types::api::{
    BucketStatus, BucketsStatus, ClusterStatus, Member, MonitorInfo, NodeInfo, NodeReplicas,
    NodeReport, NodeStatus, PendingMove, RebalanceRequest, ReplicaState,
};
use shoal_types::placement::PlacementMap;
use shoal_types::{BucketId, NodeId};

pub use service::{MonitorOptions, run};

/// What can go wrong in the monitor.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The registry failed; retry later.
    #[error(transparent)]
    Registry(#[from] shoal_registry::Error),
    /// Stored data (the map) cannot be read.
    #[error("{0}")]
    Data(shoal_types::Error),
    /// Another monitor took over.
    #[error("another monitor is active")]
    Deposed,
    /// A bug.
    #[error("internal error: {0}")]
    Internal(String),
}

/// A monitor result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<Error> for shoal_types::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Registry(e) => e.into(),
            Error::Data(e) => e,
            Error::Deposed => shoal_types::Error::Unavailable("another monitor is active".into()),
            Error::Internal(m) => shoal_types::Error::Internal(m),
        }
    }
}

/// Reads the placement map, if the monitor has written one.
pub async fn placement(registry: &dyn Registry) -> shoal_types::Result<Option<PlacementMap>> {
    Ok(directory::placement(registry).await?.map(|(map, _)| map))
}

/// The drained nodes.
pub async fn drained(registry: &dyn Registry) -> shoal_types::Result<BTreeSet<NodeId>> {
    Ok(directory::drained(registry).await?)
}

async fn live_nodes(registry: &dyn Registry) -> shoal_types::Result<BTreeMap<NodeId, NodeInfo>> {
    Ok(directory::live_nodes(registry).await?.0)
}

async fn members(registry: &dyn Registry) -> shoal_types::Result<BTreeMap<NodeId, Member>> {
    Ok(directory::members(registry).await?)
}

/// Drains `node` (the active monitor moves every replica off it and places
/// nothing there), or with `on` false, undrains it. Refused for a node the
/// cluster does not know, and for the last live node not drained.
pub async fn drain(registry: &dyn Registry, node: &NodeId, on: bool) -> shoal_types::Result<()> {
    let reg = |e: shoal_registry::Error| shoal_types::Error::from(e);
    let live = live_nodes(registry).await?;
    let known = live.contains_key(node) || members(registry).await?.contains_key(node);
    if !known {
        return Err(shoal_types::Error::NotFound(format!("no node {node} in this cluster")));
    }
    if !on {
        registry.delete(&keys::drained(node)).await.map_err(reg)?;
        return Ok(());
    }
    let drained = drained(registry).await?;
    let left = live.keys().filter(|id| *id != node && !drained.contains(*id)).count();
    if left == 0 {
        return Err(shoal_types::Error::Conflict(format!(
            "{node} is the last live node that is not drained: its replicas would have nowhere to go"
        )));
    }
    let at = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    registry.put(&keys::drained(node), at.as_bytes(), None).await.map_err(reg)?;
    Ok(())
}

/// Removes a dead node from the member list (and its drain mark). Refused
/// while it is registered, and while the placement map still places
/// replicas on it; the answer says how many of those are a bucket's only
/// copy on a live node.
pub async fn forget(registry: &dyn Registry, node: &NodeId) -> shoal_types::Result<()> {
    let reg = |e: shoal_registry::Error| shoal_types::Error::from(e);
    let live = live_nodes(registry).await?;
    if live.contains_key(node) {
        return Err(shoal_types::Error::Conflict(format!(
            "{node} is live: stop it first (drain it before, to move its replicas away)"
        )));
    }
    let map = placement(registry).await?;
    let known = members(registry).await?.contains_key(node);
    let placed: Vec<BucketId> = map
        .as_ref()
        .map(|m| BucketId::all().filter(|b| m.replicas(*b).contains(node)).collect())
        .unwrap_or_default();
    if !known && placed.is_empty() {
        return Err(shoal_types::Error::NotFound(format!("no node {node} in this cluster")));
    }
    if let Some(m) = &map
        && !placed.is_empty()
    {
        let only = placed
            .iter()
            .filter(|b| !m.replicas(**b).iter().any(|r| r != node && live.contains_key(r)))
            .count();
        return Err(shoal_types::Error::Conflict(format!(
            "the placement map still places {} replicas on {node}, {only} of them the only copy \
             on no live node: run `shoal cluster rebalance` (or wait for the monitor, in dynamic \
             topology) first",
            placed.len()
        )));
    }
    registry.delete(&keys::member(node)).await.map_err(reg)?;
    registry.delete(&keys::drained(node)).await.map_err(reg)?;
    Ok(())
}

/// The cluster as the registry describes it now.
pub async fn status(registry: &dyn Registry) -> shoal_types::Result<ClusterStatus> {
    Ok(read_status(registry).await?.0)
}

/// The cluster's status, with the map and the live nodes it was made from.
async fn read_status(
    registry: &dyn Registry,
) -> shoal_types::Result<(ClusterStatus, Option<PlacementMap>, BTreeMap<NodeId, NodeInfo>)> {
    let reg = |e: shoal_registry::Error| shoal_types::Error::from(e);
    let live = live_nodes(registry).await?;
    let members = members(registry).await?;
    let drained = drained(registry).await?;
    let reports: BTreeMap<NodeId, NodeReport> = directory::reports(registry).await.map_err(reg)?;
    let map = placement(registry).await?;
    let monitor =
        shoal_registry::leader(registry, keys::MONITOR_ELECTION).await.map_err(reg)?.map(|l| {
            directory::decode::<MonitorInfo>(&l.value)
                .unwrap_or(MonitorInfo { id: "?".into(), url: None })
        });
    let rebalance_pending = registry.get(keys::REBALANCE).await.map_err(reg)?.is_some();

    let counts = map.as_ref().map(|m| m.replica_counts()).unwrap_or_default();
    let ids: BTreeSet<NodeId> =
        live.keys().chain(members.keys()).chain(counts.keys()).cloned().collect();
    let nodes = ids
        .into_iter()
        .map(|id| {
            let info = live.get(&id).or_else(|| members.get(&id).map(|m| &m.info));
            NodeStatus {
                live: live.contains_key(&id),
                since: members.get(&id).map(|m| m.since.clone()),
                node_url: info.map(|i| i.node_url.clone()).unwrap_or_default(),
                zone: info.map(|i| i.zone.clone()).unwrap_or_default(),
                capacity: info.map(|i| i.capacity).unwrap_or(0),
                replicas: counts.get(&id).copied().unwrap_or(0),
                hosted: reports.get(&id).map(|r| r.buckets.len()).unwrap_or(0),
                drained: drained.contains(&id),
                node_id: id,
            }
        })
        .collect();
    // Drained nodes count as places for no replica.
    let live_ids: Vec<NodeId> = live.keys().filter(|id| !drained.contains(*id)).cloned().collect();
    let (mut on_dead_nodes, mut moves_in_progress, mut under_replicated) =
        (Vec::new(), Vec::new(), Vec::new());
    if let Some(m) = &map {
        under_replicated = shoal_placement::under_replicated(m, &live_ids);
        for bucket in BucketId::all() {
            let replicas = m.replicas(bucket);
            if replicas.iter().any(|r| !live.contains_key(r)) {
                on_dead_nodes.push(bucket);
            }
            for r in replicas.iter().filter(|r| live.contains_key(*r)) {
                if !reports.get(r).is_some_and(|rep| rep.buckets.contains(&bucket)) {
                    moves_in_progress.push(PendingMove { bucket, node_id: r.clone() });
                }
            }
        }
    }
    let status = ClusterStatus {
        registry: registry.describe(),
        monitor,
        epoch: map.as_ref().map(|m| m.epoch).unwrap_or(0),
        topology: map
            .as_ref()
            .map(|m| format!("{:?}", m.topology).to_lowercase())
            .unwrap_or_default(),
        replication_factor: map.as_ref().map(|m| m.replication_factor).unwrap_or(0),
        nodes,
        under_replicated,
        on_dead_nodes,
        moves_in_progress,
        rebalance_pending,
    };
    Ok((status, map, live))
}

/// `GET /v1/cluster/buckets` without the replicas' Raft states: the map's
/// buckets with their flags, and the live nodes to ask for the states
/// ([`fill_states`]), by id with their internal URL.
pub async fn bucket_map(
    registry: &dyn Registry,
) -> shoal_types::Result<(BucketsStatus, Vec<(NodeId, String)>)> {
    let (status, map, live) = read_status(registry).await?;
    let to_ask = live.into_iter().map(|(id, info)| (id, info.local_node_url)).collect();
    let Some(map) = map else {
        let none = BucketsStatus {
            epoch: 0,
            replication_factor: 0,
            buckets: Vec::new(),
            unreachable: Vec::new(),
        };
        return Ok((none, to_ask));
    };
    let moving: BTreeSet<BucketId> = status.moves_in_progress.iter().map(|m| m.bucket).collect();
    let buckets = BucketId::all()
        .map(|bucket| BucketStatus {
            bucket,
            replicas: map.replicas(bucket).to_vec(),
            leader: None,
            term: 0,
            moving: moving.contains(&bucket),
            under_replicated: status.under_replicated.contains(&bucket),
            on_dead_nodes: status.on_dead_nodes.contains(&bucket),
            states: Vec::new(),
        })
        .collect();
    let view = BucketsStatus {
        epoch: map.epoch,
        replication_factor: map.replication_factor,
        buckets,
        unreachable: Vec::new(),
    };
    Ok((view, to_ask))
}

/// Fills in what the live nodes answered: each replica's state, each
/// bucket's leader (the replica that leads in the highest term: an old
/// leader cut off from the others may still think it leads in an older
/// one) and each replica's lag behind that leader's commit index.
pub fn fill_states(view: &mut BucketsStatus, answers: Vec<NodeReplicas>) {
    let mut by_bucket: BTreeMap<BucketId, Vec<ReplicaState>> = BTreeMap::new();
    for answer in answers {
        for r in answer.replicas {
            by_bucket.entry(r.bucket).or_default().push(r);
        }
    }
    for b in &mut view.buckets {
        let mut states = by_bucket.remove(&b.bucket).unwrap_or_default();
        let leader = states.iter().filter(|r| r.role == "leader").max_by_key(|r| r.term).cloned();
        if let Some(l) = &leader {
            b.leader = Some(l.node_id.clone());
            b.term = l.term;
            for r in &mut states {
                r.lag = Some(l.commit.saturating_sub(r.applied));
            }
        } else {
            b.term = states.iter().map(|r| r.term).max().unwrap_or(0);
        }
        // Map order first, then replicas the map no longer names.
        let rank = |r: &ReplicaState| {
            b.replicas.iter().position(|n| *n == r.node_id).unwrap_or(usize::MAX)
        };
        states.sort_by(|x, y| rank(x).cmp(&rank(y)).then_with(|| x.node_id.cmp(&y.node_id)));
        b.states = states;
    }
}

/// Asks the active monitor to rebalance: writes the request it watches for.
pub async fn request_rebalance(registry: &dyn Registry) -> shoal_types::Result<RebalanceRequest> {
    let epoch = placement(registry).await?.map(|m| m.epoch).unwrap_or(0);
    let request = RebalanceRequest {
        requested_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        epoch,
    };
    let value = directory::encode(&request)?;
    registry.put(keys::REBALANCE, &value, None).await.map_err(shoal_types::Error::from)?;
    Ok(request)
}
