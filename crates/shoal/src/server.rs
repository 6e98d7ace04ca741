//! What every server command (`serve`, `node`, `monitor`) shares: logging,
//! the HTTP listener and its options, the cluster view over the registry,
//! and shutdown on SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use async_trait::async_trait;
use clap::Args;
use metrics_exporter_prometheus::PrometheusBuilder;
use shoal_node::cluster::Cluster;
use shoal_node::{AppState, Engine, ServerOptions};
use shoal_registry::Registry;
use shoal_types::api::{ClusterStatus, RebalanceRequest};
use tokio::sync::watch;

/// HTTP flags of every server command (the listen address is per command).
#[derive(Args, Debug, Clone)]
pub struct HttpArgs {
    /// The admin bearer token, shared by every process of a cluster.
    #[arg(long, env = "SHOAL_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// The largest request body accepted, in bytes.
    #[arg(long, env = "SHOAL_MAX_BODY_SIZE", default_value_t = 16 * 1024 * 1024)]
    pub max_body_size: usize,
    /// Write the address actually bound (useful with port 0) to this file.
    #[arg(long)]
    pub addr_file: Option<PathBuf>,
}

/// Starts logging to stderr; `SHOAL_LOG` filters (default `info`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SHOAL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).init();
}

/// The token a cluster process needs: given explicitly, never made up.
pub fn cluster_token(http: &HttpArgs) -> anyhow::Result<String> {
    match http.admin_token.as_deref().map(str::trim) {
        Some(t) if !t.is_empty() => Ok(t.to_string()),
        _ => anyhow::bail!(
            "--admin-token (or SHOAL_ADMIN_TOKEN) is required: every process of a cluster shares one admin token"
        ),
    }
}

/// A bound HTTP listener, before serving.
pub struct Listener {
    listener: tokio::net::TcpListener,
    /// The address bound.
    pub addr: SocketAddr,
}

/// Binds `listen` and records the bound address in `--addr-file`.
pub async fn bind(listen: SocketAddr, http: &HttpArgs) -> anyhow::Result<Listener> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    if let Some(f) = &http.addr_file {
        std::fs::write(f, addr.to_string())
            .with_context(|| format!("cannot write {}", f.display()))?;
    }
    Ok(Listener { listener, addr })
}

/// Serves the API until `shutdown` turns true.
pub async fn serve(
    listener: Listener,
    http: &HttpArgs,
    token: String,
    engine: Option<Arc<Engine>>,
    registry: Arc<dyn Registry>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let metrics = PrometheusBuilder::new()
        .set_buckets(&[
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ])?
        .install_recorder()
        .context("cannot install the metrics recorder")?;
    let state = Arc::new(AppState {
        engine,
        cluster: Some(Arc::new(RegistryCluster(registry))),
        options: ServerOptions { admin_token: token, max_body_bytes: http.max_body_size },
        metrics: Some(metrics),
        forwarder: shoal_node::forward::client(),
    });
    tracing::info!(addr = %listener.addr, "listening");
    axum::serve(listener.listener, shoal_node::router(state))
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        })
        .await?;
    Ok(())
}

/// A channel that turns true on SIGTERM or Ctrl-C.
pub fn shutdown_channel() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let ctrl_c = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term => {},
        }
        let _ = tx.send(true);
    });
    rx
}

/// `/v1/cluster` over the registry.
struct RegistryCluster(Arc<dyn Registry>);

#[async_trait]
impl Cluster for RegistryCluster {
    async fn status(&self) -> shoal_types::Result<ClusterStatus> {
        shoal_monitor::status(self.0.as_ref()).await
    }

    async fn request_rebalance(&self) -> shoal_types::Result<RebalanceRequest> {
        shoal_monitor::request_rebalance(self.0.as_ref()).await
    }
}
