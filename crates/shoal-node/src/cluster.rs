//! `/v1/cluster`: the cluster's status, rebalance requests, and draining
//! and forgetting nodes. Every server
//! process (standalone, node, monitor, proxy) serves these routes; what is
//! behind them is declared here, by its caller, and implemented over the
//! registry elsewhere.

use std::sync::Arc;

use async_trait::async_trait;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use shoal_raft::StateRole;
use shoal_types::api::{
    BucketsStatus, ClusterStatus, NodeChange, NodeReplicas, RebalanceRequest, ReplicaState,
};
use shoal_types::{BucketId, NodeId, Result};

use crate::AppState;
use crate::error::ApiResult;
use crate::extract::ApiPath;

/// What the cluster routes need.
#[async_trait]
pub trait Cluster: Send + Sync + 'static {
    /// The cluster as the registry describes it now.
    async fn status(&self) -> Result<ClusterStatus>;
    /// The placement map with every bucket's Raft state, from the live nodes.
    async fn buckets(&self) -> Result<BucketsStatus>;
    /// Asks the active monitor to rebalance.
    async fn request_rebalance(&self) -> Result<RebalanceRequest>;
    /// Drains a node (`on`) or undrains it.
    async fn drain(&self, node: &NodeId, on: bool) -> Result<()>;
    /// Removes a dead node from the member list.
    async fn forget(&self, node: &NodeId) -> Result<()>;
}

fn cluster(state: &AppState) -> Result<&Arc<dyn Cluster>> {
    state
        .cluster
        .as_ref()
        .ok_or_else(|| shoal_types::Error::Unavailable("this process has no cluster view".into()))
}

pub async fn status(State(state): State<Arc<AppState>>) -> ApiResult<Json<ClusterStatus>> {
    Ok(Json(cluster(&state)?.status().await?))
}

/// `GET /v1/cluster/buckets`.
pub async fn buckets(State(state): State<Arc<AppState>>) -> ApiResult<Json<BucketsStatus>> {
    Ok(Json(cluster(&state)?.buckets().await?))
}

/// `GET /v1/node/buckets`: this node's replicas as its Raft engine sees
/// them now (what `/v1/cluster/buckets` gathers from every live node).
pub async fn node_buckets(State(state): State<Arc<AppState>>) -> ApiResult<Json<NodeReplicas>> {
    let engine = crate::api::engine(&state)?;
    let me = engine.multi().id();
    let node_id = engine.node_id().clone();
    let replicas = engine
        .multi()
        .status()
        .await
        .into_iter()
        .map(|g| ReplicaState {
            bucket: BucketId(g.group),
            node_id: node_id.clone(),
            role: match g.role {
                StateRole::Leader => "leader",
                StateRole::Candidate => "candidate",
                StateRole::PreCandidate => "pre-candidate",
                StateRole::Follower if g.learners.contains(&me) => "learner",
                StateRole::Follower => "follower",
            }
            .into(),
            term: g.term,
            commit: g.commit,
            applied: g.applied,
            last_index: g.last_index,
            lag: None,
        })
        .collect();
    Ok(Json(NodeReplicas { node_id, replicas }))
}

pub async fn rebalance(
    State(state): State<Arc<AppState>>,
) -> ApiResult<(StatusCode, Json<RebalanceRequest>)> {
    Ok((StatusCode::ACCEPTED, Json(cluster(&state)?.request_rebalance().await?)))
}

/// `POST /v1/cluster/nodes/{id}/drain`: the monitor moves every replica off
/// the node; `GET /v1/cluster` shows the progress.
pub async fn drain(
    State(state): State<Arc<AppState>>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<(StatusCode, Json<NodeChange>)> {
    let node = NodeId(id);
    cluster(&state)?.drain(&node, true).await?;
    Ok((StatusCode::ACCEPTED, Json(NodeChange { node_id: node, drained: true, forgotten: false })))
}

/// `DELETE /v1/cluster/nodes/{id}/drain`: the node takes replicas again.
pub async fn undrain(
    State(state): State<Arc<AppState>>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<NodeChange>> {
    let node = NodeId(id);
    cluster(&state)?.drain(&node, false).await?;
    Ok(Json(NodeChange { node_id: node, drained: false, forgotten: false }))
}

/// `DELETE /v1/cluster/nodes/{id}`: forgets a dead node.
pub async fn forget(
    State(state): State<Arc<AppState>>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<NodeChange>> {
    let node = NodeId(id);
    cluster(&state)?.forget(&node).await?;
    Ok(Json(NodeChange { node_id: node, drained: false, forgotten: true }))
}
