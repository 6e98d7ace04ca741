//! `shoal proxy`: a stateless router in front of a cluster. It follows the
//! placement map in the registry and sends every base request (HTTP and
//! WebSocket) to the bucket's leader; it also serves `/v1/cluster` like
//! every other process. Run as many as you like.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;
use shoal_node::replication::Directory;
use shoal_proxy::{Proxy, ProxyOptions, View};
use tokio::sync::watch;

use crate::config::RegistryArgs;
use crate::server::{HttpArgs, bind, cluster_token, init_logging, serve_with, shutdown_channel};

/// Flags of `shoal proxy`.
#[derive(Args, Debug)]
pub struct ProxyArgs {
    /// The address to serve HTTP on.
    #[arg(long, env = "SHOAL_LISTEN", default_value = "127.0.0.1:7090")]
    listen: SocketAddr,
    /// How long one request may go from replica to replica (a failover, an
    /// election) before the proxy gives up and answers with the last error, e.g. 10s.
    #[arg(long, env = "SHOAL_RETRY_DEADLINE", default_value = "10s", value_parser = humantime::parse_duration)]
    retry_deadline: Duration,
    /// How long one attempt at one node may take, e.g. 30s.
    #[arg(long, env = "SHOAL_REQUEST_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    request_timeout: Duration,
    /// Send base requests to the nodes as one HTTP request each, instead of
    /// many to a frame over one relay connection per node (the relay costs
    /// the proxy and the nodes less CPU per request).
    #[arg(long, env = "SHOAL_HTTP_TO_NODES")]
    http_to_nodes: bool,
    #[command(flatten)]
    pub(crate) http: HttpArgs,
    #[command(flatten)]
    registry: RegistryArgs,
}

pub async fn run(args: ProxyArgs) -> anyhow::Result<()> {
    init_logging(args.http.log_format);
    let mut registry_options = args.registry.load()?;
    let token = cluster_token(&args.http)?;
    // The embedded registry asks every process for the cluster's token.
    registry_options.token = Some(token.clone());
    if args.retry_deadline.is_zero() || args.request_timeout.is_zero() {
        anyhow::bail!("--retry-deadline and --request-timeout must be more than 0");
    }
    let tls = args.http.tls.load()?;
    let registry = crate::config::connect_registry(&registry_options).await?;
    let listener = bind(args.listen, tls).await?;
    out!("Shoal proxy is serving {}", listener.addr_url());
    out!("Registry: {}", crate::server::describe_registry(registry.as_ref(), &registry_options));
    let shutdown = shutdown_channel();
    let (directory_tx, directory_rx) = watch::channel(Directory::default());
    let follower = tokio::spawn(shoal_proxy::follow(
        registry.clone(),
        directory_tx,
        registry_options.retry_interval.max(Duration::from_millis(100)) * 10,
        shutdown.clone(),
    ));
    let options = ProxyOptions {
        admin_token: token.clone(),
        max_body_bytes: args.http.max_body_size,
        retry_deadline: args.retry_deadline,
        request_timeout: args.request_timeout,
        relay: !args.http_to_nodes,
        tls: listener.tls.client.clone(),
        ..ProxyOptions::default()
    };
    let proxy = Proxy::new(options, View::new(directory_rx))?;
    serve_with(listener, &args.http, token, None, registry, Some(proxy), shutdown).await?;
    let _ = follower.await;
    tracing::info!("stopped");
    Ok(())
}
