//! `/v1/cluster`: the cluster's status and rebalance requests. Every server
//! process (standalone, node, monitor, proxy) serves these routes; what is
//! behind them is declared here, by its caller, and implemented over the
//! registry elsewhere.

use std::sync::Arc;

use async_trait::async_trait;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use shoal_types::Result;
use shoal_types::api::{ClusterStatus, RebalanceRequest};

use crate::AppState;
use crate::error::ApiResult;

/// What the cluster routes need.
#[async_trait]
pub trait Cluster: Send + Sync + 'static {
    /// The cluster as the registry describes it now.
    async fn status(&self) -> Result<ClusterStatus>;
    /// Asks the active monitor to rebalance.
    async fn request_rebalance(&self) -> Result<RebalanceRequest>;
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

pub async fn rebalance(
    State(state): State<Arc<AppState>>,
) -> ApiResult<(StatusCode, Json<RebalanceRequest>)> {
    Ok((StatusCode::ACCEPTED, Json(cluster(&state)?.request_rebalance().await?)))
}
