//! What every server command (`serve`, `node`, `monitor`, `proxy`) shares: logging,
//! the HTTP listener and its options, the cluster view over the registry,
//! and shutdown on SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use async_trait::async_trait;
use axum::serve::ListenerExt as _;
use clap::Args;
use metrics_exporter_prometheus::PrometheusBuilder;
use shoal_node::cluster::Cluster;
use shoal_node::{AppState, Node, NodeConfig, ServerOptions};
use shoal_registry::Registry;
use shoal_types::NodeId;
use shoal_types::api::NodeInfo;
use shoal_types::api::{BucketsStatus, ClusterStatus, NodeReplicas, RebalanceRequest};
use tokio::sync::watch;

use crate::tls::Tls;

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
    /// Threads serving HTTP and peer connections [default: half the cores
    /// for `node` and `serve`, whose replication runs on threads of its own,
    /// and for `proxy`; all of them for `monitor`].
    #[arg(long, env = "SHOAL_HTTP_THREADS")]
    pub http_threads: Option<usize>,
    /// How log lines are written to stderr: `text` (coloured on a terminal
    /// only) or `json`, one object per line.
    #[arg(long, env = "SHOAL_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    #[command(flatten)]
    pub tls: crate::tls::TlsArgs,
}

/// How log lines are written.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines; colours only when stderr is a terminal.
    Text,
    /// One JSON object per line.
    Json,
}

/// Change-feed flags of the commands that serve bases.
#[derive(Args, Debug, Clone)]
pub struct FeedArgs {
    /// The most changes the change feed keeps per base, for subscribers that
    /// resume (older ones get a resync).
    #[arg(long, env = "SHOAL_FEED_RETENTION_CHANGES", default_value_t = 10_000)]
    pub feed_retention_changes: usize,
    /// The longest the change feed keeps a change (e.g. 10m, 1h).
    #[arg(long, env = "SHOAL_FEED_RETENTION_AGE", default_value = "10m", value_parser = humantime::parse_duration)]
    pub feed_retention_age: std::time::Duration,
}

impl FeedArgs {
    /// The store's feed options these flags describe.
    pub fn options(&self) -> shoal_storage::feed::FeedOptions {
        shoal_storage::feed::FeedOptions {
            retention_changes: self.feed_retention_changes,
            retention_age: self.feed_retention_age,
            ..Default::default()
        }
    }
}

/// Starts logging to stderr; `SHOAL_LOG` filters (default `info`).
pub fn init_logging(format: LogFormat) {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_from_env("SHOAL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,raft=warn"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => logs.json().init(),
    }
}

/// The token a cluster process needs: given explicitly, never made up.
pub fn cluster_token(http: &HttpArgs) -> anyhow::Result<String> {
    required_token(http.admin_token.as_deref())
}

/// The admin token `--admin-token` gave, which a cluster process needs.
pub fn required_token(given: Option<&str>) -> anyhow::Result<String> {
    match given.map(str::trim) {
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
    /// How it serves (HTTPS with a server configuration) and how this
    /// process connects to others.
    pub tls: Tls,
}

impl Listener {
    /// The URL of the bound address: `https://` when it serves TLS.
    pub fn addr_url(&self) -> String {
        let scheme = if self.tls.server.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }
}

/// Binds `listen`, to serve with `tls`. The address is announced
/// (`--addr-file`) when serving starts.
pub async fn bind(listen: SocketAddr, tls: Tls) -> anyhow::Result<Listener> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    Ok(Listener { listener, addr, tls })
}

/// Who a node is and where it is reached: what it registers.
pub struct NodeIdentity {
    /// The node's id.
    pub node_id: NodeId,
    /// The URL end users reach it at.
    pub node_url: String,
    /// The URL other nodes and proxies reach it at.
    pub local_node_url: String,
    /// Its failure zone.
    pub zone: String,
    /// Its relative capacity.
    pub capacity: u32,
    /// Names its data directory (see [`instance_id`]).
    pub instance: String,
}

/// Everything a node starts with.
pub fn node_config(
    identity: NodeIdentity,
    data_dir: Option<&std::path::Path>,
    store: shoal_storage::Options,
    raft: shoal_node::RaftSettings,
    token: &str,
    tls: &Tls,
    registry_options: &shoal_registry::RegistryOptions,
) -> NodeConfig {
    NodeConfig {
        node_id: identity.node_id,
        data_dir: data_dir.map(std::path::Path::to_path_buf),
        store,
        raft,
        token: token.to_string(),
        tls: tls.client.clone(),
        info: NodeInfo {
            node_url: identity.node_url,
            local_node_url: identity.local_node_url,
            zone: identity.zone,
            capacity: identity.capacity,
            version: env!("CARGO_PKG_VERSION").into(),
            registered_at: String::new(),
            instance: identity.instance,
        },
        node_ttl: registry_options.node_ttl,
        retry_interval: registry_options.retry_interval,
        remove_after: std::time::Duration::from_secs(600),
        leader_moves_per_pass: 2,
    }
}

/// Takes the data directory for this process: an exclusive lock on
/// `DIR/lock`, held until the returned file is dropped (the process ends).
/// A second process given the same directory is refused, whatever its
/// command: two processes writing one directory's SQLite files and Raft
/// log would corrupt them.
pub fn lock_data_dir(dir: &std::path::Path) -> anyhow::Result<std::fs::File> {
    let path = dir.join("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "another shoal process is using {} (it holds {}): stop it, or give this one \
             another --data-dir",
            dir.display(),
            path.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
}

/// The instance id of a data directory: made on first use and kept in
/// `DATA_DIR/instance`. Without a directory, a new one per process.
pub fn instance_id(dir: Option<&std::path::Path>) -> anyhow::Result<String> {
    let Some(dir) = dir else { return Ok(uuid::Uuid::new_v4().to_string()) };
    let path = dir.join("instance");
    let id = read_or_make_marker(&path, || uuid::Uuid::new_v4().to_string())?;
    if id.is_empty() {
        anyhow::bail!("{} is empty: remove it to make a new one", path.display());
    }
    Ok(id)
}

/// Marks the data directory as this node's, and refuses another node's.
/// Takes `dir` for `node`: locks it for this process (before touching
/// anything in it), and checks or writes whose it is. The lock is held
/// while the returned file lives.
pub fn claim_data_dir(dir: &std::path::Path, node: &NodeId) -> anyhow::Result<std::fs::File> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create data directory {}", dir.display()))?;
    let lock = lock_data_dir(dir)?;
    let owner = read_or_make_marker(&dir.join("node_id"), || node.0.clone())?;
    if owner != node.0 {
        anyhow::bail!(
            "{} belongs to node {owner:?}, not {:?}: give each node its own --data-dir \
             (or start this one with --node-id {owner})",
            dir.display(),
            node.0
        );
    }
    Ok(lock)
}

/// The registry and its namespace, for start-up lines (an etcd or ZooKeeper
/// registry names its namespace itself).
pub fn describe_registry(
    registry: &dyn Registry,
    options: &shoal_registry::RegistryOptions,
) -> String {
    let d = registry.describe();
    if d.contains("(namespace ") { d } else { format!("{d} (namespace {})", options.namespace) }
}

/// The content of the one-line marker file at `path`, trimmed; if there is
/// no such file, `make()`'s value, written there first.
pub fn read_or_make_marker(
    path: &std::path::Path,
    make: impl FnOnce() -> String,
) -> anyhow::Result<String> {
    match std::fs::read_to_string(path) {
        Ok(content) => Ok(content.trim().to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let value = make();
            std::fs::write(path, format!("{value}\n"))
                .with_context(|| format!("cannot write {}", path.display()))?;
            Ok(value)
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Serves the API until `shutdown` turns true.
pub async fn serve(
    listener: Listener,
    http: &HttpArgs,
    token: String,
    node: Option<&Node>,
    registry: Arc<dyn Registry>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    serve_with(listener, http, token, node, registry, None, shutdown).await
}

/// Serves the API (and, for a proxy, its base routes behind its front door), until
/// `shutdown` turns true.
pub async fn serve_with(
    listener: Listener,
    http: &HttpArgs,
    token: String,
    node: Option<&Node>,
    registry: Arc<dyn Registry>,
    proxy: Option<Arc<shoal_proxy::Proxy>>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let engine = node.map(|n| n.engine().clone());
    let metrics = PrometheusBuilder::new()
        .set_buckets(&[
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ])?
        .install_recorder()
        .context("cannot install the metrics recorder")?;
    let state = Arc::new(AppState {
        engine,
        cluster: Some(Arc::new(RegistryCluster {
            registry,
            http: shoal_node::forward::client(listener.tls.client.as_ref()),
            token: token.clone(),
        })),
        options: ServerOptions { admin_token: token.clone(), max_body_bytes: http.max_body_size },
        metrics: Some(metrics),
        forwarder: shoal_node::forward::client(listener.tls.client.as_ref()),
    });
    let mut app = shoal_node::router(state);
    let mut relays = None;
    if let Some(n) = node {
        app = app.merge(n.routes());
        // Proxies' requests, many per connection, into the same routes.
        let (relay, open) = shoal_node::relay::routes(app.clone(), token, shutdown.clone());
        app = app.merge(relay);
        relays = Some(open);
    }
    if let Some(p) = &proxy {
        app = app.merge(shoal_proxy::router(p.clone()));
    }
    if let Some(f) = &http.addr_file {
        std::fs::write(f, listener.addr.to_string())
            .with_context(|| format!("cannot write {}", f.display()))?;
    }
    tracing::info!(addr = %listener.addr, tls = listener.tls.server.is_some(), "listening");
    let stopped = async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
    };
    match proxy {
        // A proxy's base requests skip the router's layers (see `Front`).
        Some(p) => run(listener, shoal_proxy::Front::new(p, app), stopped).await?,
        None => run(listener, app, stopped).await?,
    }
    // Requests taken over relays are answered before the node stops.
    if let Some(open) = relays
        && !open.closed(RELAY_DRAIN).await
    {
        tracing::warn!("relays still open after {RELAY_DRAIN:?}; stopping anyway");
    }
    Ok(())
}

/// Serves `service` on `listener` until `stopped`: over TLS when the
/// listener has a server configuration, behind [`crate::tls::tls_requests`].
pub(crate) async fn run<S>(
    listener: Listener,
    service: S,
    stopped: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()>
where
    S: tower::Service<
            axum::extract::Request,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send,
{
    use axum::ServiceExt as _;
    match listener.tls.server {
        None => {
            // Raft answers are small: do not let them wait for delayed ACKs.
            let listener = listener.listener.tap_io(|s| {
                let _ = s.set_nodelay(true);
            });
            let service = service.into_make_service();
            axum::serve(listener, service).with_graceful_shutdown(stopped).await?;
        }
        Some(config) => {
            let listener = crate::tls::TlsListener::new(listener.listener, config)?;
            let layer = axum::middleware::from_fn(crate::tls::tls_requests);
            let service = tower::Layer::layer(&layer, service)
                .into_make_service_with_connect_info::<crate::tls::Peer>();
            axum::serve(listener, service).with_graceful_shutdown(stopped).await?;
        }
    }
    Ok(())
}

/// How long a stopping server waits for its relays' last answers.
const RELAY_DRAIN: std::time::Duration = std::time::Duration::from_secs(30);

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

/// `/v1/cluster` over the registry, and the live nodes for their Raft state.
struct RegistryCluster {
    registry: Arc<dyn Registry>,
    http: reqwest::Client,
    token: String,
}

/// How long `/v1/cluster/buckets` waits for a node's replicas.
const NODE_STATE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

#[async_trait]
impl Cluster for RegistryCluster {
    async fn status(&self) -> shoal_types::Result<ClusterStatus> {
        shoal_monitor::status(self.registry.as_ref()).await
    }

    async fn buckets(&self) -> shoal_types::Result<BucketsStatus> {
        let (mut view, nodes) = shoal_monitor::bucket_map(self.registry.as_ref()).await?;
        let asks = nodes.iter().map(|(_, url)| async move {
            let url = format!("{}/v1/node/buckets", url.trim_end_matches('/'));
            let answer = self
                .http
                .get(url)
                .bearer_auth(&self.token)
                .timeout(NODE_STATE_TIMEOUT)
                .send()
                .await
                .and_then(|r| r.error_for_status())?;
            answer.json::<NodeReplicas>().await
        });
        let mut answered = Vec::new();
        for ((id, _), answer) in nodes.iter().zip(futures_util::future::join_all(asks).await) {
            match answer {
                Ok(a) => answered.push(a),
                Err(e) => {
                    tracing::debug!(node = %id.0, error = %e, "no replica states from a node");
                    view.unreachable.push(id.clone());
                }
            }
        }
        shoal_monitor::fill_states(&mut view, answered);
        Ok(view)
    }

    async fn request_rebalance(&self) -> shoal_types::Result<RebalanceRequest> {
        shoal_monitor::request_rebalance(self.registry.as_ref()).await
    }

    async fn drain(&self, node: &NodeId, on: bool) -> shoal_types::Result<()> {
        shoal_monitor::drain(self.registry.as_ref(), node, on).await
    }

    async fn forget(&self, node: &NodeId) -> shoal_types::Result<()> {
        shoal_monitor::forget(self.registry.as_ref(), node).await
    }
}
