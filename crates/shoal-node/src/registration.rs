//! A node's side of the control plane: register under `nodes/{node_id}` with
//! a session lease, keep it alive, and keep `status/{node_id}` (leased too)
//! up to date with what replication reports the node hosts and leads.
//!
//! A node that loses its session (the registry was unreachable for longer
//! than the TTL) has lost its registration with it: it says so, and
//! registers again with a new session as soon as the registry answers.
//! Stopping does not revoke the lease: a node that restarts within
//! `node_ttl` keeps its registration and nothing moves.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use shoal_registry::{Registry, Session, SessionOptions, directory, keys};
use shoal_types::NodeId;
use shoal_types::api::{NodeInfo, NodeReport};
use tokio::sync::watch;

/// How a node registers.
#[derive(Clone, Debug)]
pub struct RegistrationOptions {
    /// The node's id.
    pub node_id: NodeId,
    /// What it registers (`registered_at` is filled in at each registration).
    pub info: NodeInfo,
    /// The lease TTL (`node_ttl`).
    pub ttl: Duration,
    /// The wait before retrying after a registry failure.
    pub retry_interval: Duration,
}

/// Keeps the node registered, and its report written, until `shutdown`
/// turns true.
pub async fn run(
    registry: Arc<dyn Registry>,
    options: RegistrationOptions,
    report: watch::Receiver<NodeReport>,
    mut shutdown: watch::Receiver<bool>,
) {
    while !*shutdown.borrow() {
        let result = tokio::select! {
            r = term(&registry, &options, report.clone()) => r,
            _ = shutdown.changed() => return,
        };
        if let Err(e) = result {
            tracing::warn!(node = %options.node_id, error = %e, "node registration lost; registering again");
        }
        tokio::select! {
            _ = tokio::time::sleep(options.retry_interval) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// The registration of `node_id` if another data directory holds it (its
/// instance differs from `instance`); registry errors count as none.
pub async fn held_elsewhere(
    registry: &Arc<dyn Registry>,
    node_id: &NodeId,
    instance: &str,
) -> shoal_registry::Result<Option<NodeInfo>> {
    let Some(kv) = registry.get(&keys::node(node_id)).await? else { return Ok(None) };
    let Ok(info) = directory::decode::<NodeInfo>(&kv.value) else { return Ok(None) };
    Ok((!info.instance.is_empty() && info.instance != instance).then_some(info))
}

/// Waits, up to `wait`, until no other data directory holds the
/// registration of `node_id`: a node that restarts keeps its registration
/// (same instance), and one whose data directory was replaced waits for the
/// old registration to expire. Fails if it is still held after `wait`:
/// another process runs with this node id.
pub async fn claim(
    registry: &Arc<dyn Registry>,
    node_id: &NodeId,
    instance: &str,
    wait: Duration,
) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut said = false;
    loop {
        let other = match held_elsewhere(registry, node_id, instance).await {
            Ok(None) | Err(_) => return Ok(()),
            Ok(Some(other)) => other,
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "node id {node_id} is registered by another process (another data directory, \
                 at {}, since {}); stop it, or give this node its own --node-id",
                other.node_url, other.registered_at
            ));
        }
        if !said {
            tracing::warn!(node = %node_id, other = %other.node_url, "node id is registered by another data directory; waiting for that registration to expire");
            said = true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One session: register, then keep the report written until the session
/// is lost.
async fn term(
    registry: &Arc<dyn Registry>,
    options: &RegistrationOptions,
    mut report: watch::Receiver<NodeReport>,
) -> shoal_registry::Result<()> {
    if let Some(other) = held_elsewhere(registry, &options.node_id, &options.info.instance).await? {
        // Taken while this node was away: never overwrite another process.
        return Err(shoal_registry::Error::Internal(format!(
            "node id {} is registered by another process (at {}); not registering over it",
            options.node_id, other.node_url
        )));
    }
    let session = Session::new(registry.clone(), SessionOptions { ttl: options.ttl }).await?;
    let info = NodeInfo {
        registered_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        ..options.info.clone()
    };
    let value = directory::encode(&info)?;
    registry.put(&keys::node(&options.node_id), &value, Some(session.lease())).await?;
    tracing::info!(node = %options.node_id, lease = %session.lease(), "node registered");
    let write_reports = async {
        loop {
            let current = report.borrow_and_update().clone();
            let value = directory::encode(&current)?;
            registry.put(&keys::status(&options.node_id), &value, Some(session.lease())).await?;
            if report.changed().await.is_err() {
                // Replication stopped: the last report stays until the lease ends.
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        r = write_reports => r,
        reason = session.lost() => Err(shoal_registry::Error::SessionLost(reason)),
    }
}
