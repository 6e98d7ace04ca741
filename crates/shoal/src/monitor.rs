//! `shoal monitor`: one of the monitors of a cluster. The elected one keeps
//! the placement map; the others wait to take over.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, ValueEnum};
use shoal_monitor::MonitorOptions;
use shoal_types::placement::Topology;

use crate::config::RegistryArgs;
use crate::server::{HttpArgs, bind, cluster_token, init_logging, serve, shutdown_channel};

/// How the map follows the nodes.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum TopologyArg {
    /// Recompute the map whenever the live nodes change.
    Dynamic,
    /// Keep the map until an explicit rebalance.
    Static,
}

/// Flags of `shoal monitor`.
#[derive(Args, Debug)]
pub struct MonitorArgs {
    /// This monitor's id, shown in `shoal cluster status` [default: monitor@LISTEN_ADDR].
    #[arg(long, env = "SHOAL_MONITOR_ID")]
    monitor_id: Option<String>,
    /// Replicas per bucket.
    #[arg(long, env = "SHOAL_REPLICATION_FACTOR", default_value_t = 3)]
    replication_factor: usize,
    /// `dynamic`: move replicas when nodes join or leave; `static`: only on `shoal cluster rebalance`.
    #[arg(long, env = "SHOAL_TOPOLOGY", value_enum, default_value = "dynamic")]
    topology: TopologyArg,
    /// How many nodes must be live before the first placement map is made
    /// (`shoal cluster rebalance` makes it from the nodes there are).
    #[arg(long, env = "SHOAL_INITIAL_NODE_COUNT", default_value_t = 1)]
    initial_node_count: usize,
    /// How long to let a burst of node changes settle before computing a new map (e.g. 200ms).
    #[arg(long, env = "SHOAL_SETTLE", default_value = "200ms", value_parser = humantime::parse_duration)]
    settle: Duration,
    /// The address to serve HTTP on.
    #[arg(long, env = "SHOAL_LISTEN", default_value = "127.0.0.1:7080")]
    listen: SocketAddr,
    #[command(flatten)]
    pub(crate) http: HttpArgs,
    #[command(flatten)]
    registry: RegistryArgs,
}

pub async fn run(args: MonitorArgs) -> anyhow::Result<()> {
    init_logging(args.http.log_format);
    let mut registry_options = args.registry.load()?;
    let token = cluster_token(&args.http)?;
    // The embedded registry asks every process for the cluster's token.
    registry_options.token = Some(token.clone());
    if args.replication_factor == 0 {
        anyhow::bail!("--replication-factor must be at least 1");
    }
    if args.initial_node_count == 0 {
        anyhow::bail!("--initial-node-count must be at least 1");
    }
    let registry = crate::config::connect_registry(&registry_options).await?;
    let tls = args.http.tls.load()?;
    let listener = bind(args.listen, tls).await?;
    let url = listener.addr_url();
    let id = args.monitor_id.clone().unwrap_or_else(|| format!("monitor@{}", listener.addr));
    out!("Shoal monitor {id} is serving {url}");
    out!("Registry: {}", crate::server::describe_registry(registry.as_ref(), &registry_options));
    let shutdown = shutdown_channel();
    let options = MonitorOptions {
        id,
        url: Some(url),
        replication_factor: args.replication_factor,
        topology: match args.topology {
            TopologyArg::Dynamic => Topology::Dynamic,
            TopologyArg::Static => Topology::Static,
        },
        session_ttl: registry_options.node_ttl,
        settle: args.settle,
        retry_interval: registry_options.retry_interval,
        initial_node_count: args.initial_node_count,
    };
    let monitor = tokio::spawn(shoal_monitor::run(registry.clone(), options, shutdown.clone()));
    serve(listener, &args.http, token, None, registry, shutdown).await?;
    let _ = monitor.await;
    tracing::info!("stopped");
    Ok(())
}
