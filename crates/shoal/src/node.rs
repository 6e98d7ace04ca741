//! `shoal node`: a cluster node. It registers in the registry, follows the
//! placement map, hosts a Raft group for each bucket it is given and serves
//! the bases of those buckets.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;
use shoal_node::Node;
use shoal_storage::Options;
use shoal_types::NodeId;
use tokio::sync::watch;

use crate::config::{RaftArgs, RegistryArgs};
use crate::server::{
    FeedArgs, HttpArgs, NodeIdentity, bind, claim_data_dir, cluster_token, init_logging,
    instance_id, node_config, serve, shutdown_channel,
};

/// Flags of `shoal node`.
#[derive(Args, Debug)]
pub struct NodeArgs {
    /// The node's stable id, e.g. node-01.
    #[arg(long, env = "SHOAL_NODE_ID")]
    node_id: String,
    /// The URL end users reach this node at [default: http://LISTEN_ADDR,
    /// or https:// with --tls-cert].
    #[arg(long, env = "SHOAL_NODE_URL")]
    node_url: Option<String>,
    /// The URL other nodes and proxies reach this node at [default: --node-url].
    #[arg(long, env = "SHOAL_LOCAL_NODE_URL")]
    local_node_url: Option<String>,
    /// The failure zone this node is in; replicas of a bucket go to distinct zones when there are enough.
    #[arg(long, env = "SHOAL_ZONE", default_value = "default")]
    zone: String,
    /// Relative capacity: a node of capacity 2 gets twice the replicas of one of capacity 1.
    #[arg(long, env = "SHOAL_CAPACITY", default_value_t = 1)]
    capacity: u32,
    /// Where the node keeps its data.
    #[arg(long, env = "SHOAL_DATA_DIR", default_value = "shoal-data")]
    data_dir: PathBuf,
    /// The address to serve HTTP on.
    #[arg(long, env = "SHOAL_LISTEN", default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    #[command(flatten)]
    feed: FeedArgs,
    #[command(flatten)]
    pub(crate) http: HttpArgs,
    #[command(flatten)]
    registry: RegistryArgs,
    #[command(flatten)]
    raft: RaftArgs,
}

pub async fn run(args: NodeArgs) -> anyhow::Result<()> {
    init_logging(args.http.log_format);
    let mut registry_options = args.registry.load()?;
    let raft = args.raft.load(&args.registry.file()?)?;
    let token = cluster_token(&args.http)?;
    // The embedded registry asks every process for the cluster's token.
    registry_options.token = Some(token.clone());
    let node_id = check_node_id(&args.node_id)?;
    if args.capacity == 0 {
        anyhow::bail!("--capacity must be at least 1");
    }
    let tls = args.http.tls.load()?;
    let _lock = claim_data_dir(&args.data_dir, &node_id)?;
    let registry = crate::config::connect_registry(&registry_options).await?;
    let listener = bind(args.listen, tls).await?;
    let node_url = args.node_url.clone().unwrap_or_else(|| listener.addr_url());
    let local_node_url = args.local_node_url.clone().unwrap_or_else(|| node_url.clone());
    out!("Shoal node {node_id} is serving {} (node_url {node_url})", listener.addr_url());
    out!("Registry: {}", crate::server::describe_registry(registry.as_ref(), &registry_options));

    let signal = shutdown_channel();
    // SIGTERM first hands this node's leaderships over, then stops serving.
    let (stop, shutdown) = watch::channel(false);
    let identity = NodeIdentity {
        node_id,
        node_url,
        local_node_url,
        zone: args.zone.clone(),
        capacity: args.capacity,
        instance: instance_id(Some(&args.data_dir))?,
    };
    let store = Options { feed: args.feed.options(), ..Options::default() };
    let config = node_config(
        identity,
        Some(&args.data_dir),
        store,
        raft,
        &token,
        &listener.tls,
        &registry_options,
    );
    let node = Node::start(config, registry.clone(), shutdown.clone()).await?;
    let engine = node.engine().clone();
    tokio::spawn(async move {
        let mut signal = signal;
        let _ = signal.wait_for(|s| *s).await;
        let started = std::time::Instant::now();
        match engine.hand_over(HAND_OVER_WITHIN).await {
            (0, _) => {}
            (led, 0) => tracing::info!(
                took = ?started.elapsed(),
                "stopping: handed {led} leaderships over"
            ),
            (led, left) => tracing::warn!(
                "stopping: {left} of {led} leaderships not handed over within {HAND_OVER_WITHIN:?}"
            ),
        }
        let _ = stop.send(true);
    });
    serve(listener, &args.http, token, Some(&node), registry, shutdown).await?;
    node.stop().await;
    tracing::info!("stopped");
    Ok(())
}

/// How long a node stopping on SIGTERM tries to hand its leaderships over.
const HAND_OVER_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);

/// Node ids become registry keys and file names: keep them plain.
fn check_node_id(id: &str) -> anyhow::Result<NodeId> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        anyhow::bail!("--node-id {id:?}: use 1 to 64 letters, digits, '-', '_' or '.'");
    }
    Ok(NodeId(id.to_string()))
}
