//! `shoal serve`: standalone Shoal in one process.

use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use rand::Rng as _;
use rand::distr::Alphanumeric;
use shoal_monitor::MonitorOptions;
use shoal_node::Node;
use shoal_registry::EmbeddedRegistry;
use shoal_storage::Options;
use shoal_types::placement::Topology;
use shoal_types::{BUCKET_COUNT, NodeId};

use crate::server::{
    FeedArgs, HttpArgs, NodeIdentity, bind, claim_data_dir, init_logging, instance_id, node_config,
    serve, shutdown_channel,
};

/// Flags of `shoal serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Where bases are stored.
    #[arg(long, env = "SHOAL_DATA_DIR", default_value = "shoal-data")]
    data_dir: PathBuf,
    /// Keep everything in memory: nothing is written to disk, and everything is
    /// gone when the process stops.
    #[arg(long, conflicts_with = "data_dir")]
    memory: bool,
    /// The address to serve HTTP on.
    #[arg(long, env = "SHOAL_LISTEN", default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// How many bases may be open at once.
    #[arg(long, env = "SHOAL_MAX_OPEN_BASES", default_value_t = 1024)]
    max_open_bases: usize,
    /// The longest SQL text accepted, in bytes.
    #[arg(long, env = "SHOAL_MAX_SQL_LENGTH", default_value_t = 100_000)]
    max_sql_length: usize,
    /// The most rows one query may return; larger results must be paged.
    #[arg(long, env = "SHOAL_MAX_RESULT_ROWS", default_value_t = 10_000)]
    max_result_rows: usize,
    /// How long one read may run (e.g. 5s, 500ms).
    #[arg(long, env = "SHOAL_STATEMENT_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    statement_timeout: Duration,
    /// How many SQLite steps one write statement may take (a deterministic
    /// stand-in for a time limit, so that every replica stops at the same point).
    #[arg(long, env = "SHOAL_MAX_WRITE_STEPS", default_value_t = 100_000_000)]
    max_write_steps: u64,
    /// Replicas per bucket for the in-process monitor: 1 alone; raise it when
    /// this process joins a cluster (every monitor of a cluster must agree).
    #[arg(long, env = "SHOAL_REPLICATION_FACTOR", default_value_t = 1)]
    replication_factor: usize,
    /// This process's node id in the registry.
    #[arg(long, env = "SHOAL_NODE_ID", default_value = "standalone")]
    node_id: String,
    /// Also run the first member of an embedded registry on this address
    /// (its data in DATA_DIR/meta) and use it as this server's registry, so
    /// that registry members (`shoal meta --join ADDR`) and nodes
    /// (`--registry shoal://ADDR`) can join this server later. Not with
    /// --registry or --memory.
    #[arg(long, env = "SHOAL_META_LISTEN", conflicts_with = "memory")]
    meta_listen: Option<SocketAddr>,
    #[command(flatten)]
    feed: FeedArgs,
    #[command(flatten)]
    pub(crate) http: HttpArgs,
    #[command(flatten)]
    registry: crate::config::RegistryArgs,
    #[command(flatten)]
    raft: crate::config::RaftArgs,
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    init_logging(args.http.log_format);
    let mut registry_options = args.registry.load()?;
    let raft = args.raft.load(&args.registry.file()?)?;
    if args.max_open_bases == 0
        || args.max_result_rows == 0
        || args.max_sql_length == 0
        || args.http.max_body_size == 0
    {
        anyhow::bail!(
            "--max-open-bases, --max-result-rows, --max-sql-length and --max-body-size must be at least 1"
        );
    }
    let dir = (!args.memory).then_some(args.data_dir.as_path());
    // The directory is this node id's, as a cluster node's is: it can
    // later be started as that node of a cluster (docs/cluster.md).
    let _lock = match dir {
        Some(d) => Some(claim_data_dir(d, &NodeId(args.node_id.clone()))?),
        None => None,
    };
    let (token, token_note) = admin_token(&args, dir)?;
    registry_options.token = Some(token.clone());
    let tls = args.http.tls.load()?;
    let options = Options {
        max_open_bases: args.max_open_bases,
        max_sql_length: args.max_sql_length,
        max_result_rows: args.max_result_rows,
        statement_timeout: args.statement_timeout,
        max_write_steps: args.max_write_steps,
        feed: args.feed.options(),
    };
    let meta = match (args.meta_listen, dir) {
        (Some(addr), Some(d)) => Some(start_meta(addr, d, &args.node_id, &token).await?),
        _ => None,
    };
    // Connect before serving, so that a wrong or dead registry fails start-up
    // with the endpoints it tried.
    let registry = match &meta {
        Some(m) => {
            if registry_options.registry != "memory" {
                anyhow::bail!(
                    "--meta-listen makes this server its own registry: leave out --registry ({})",
                    registry_options.registry
                );
            }
            let member = vec![m.member.meta.member().url.clone()];
            let client = EmbeddedRegistry::connect(registry_options.embedded_options(member));
            std::sync::Arc::new(client.await?) as std::sync::Arc<dyn shoal_registry::Registry>
        }
        None => crate::config::connect_registry(&registry_options).await?,
    };
    let registry_note = format!(
        "Registry: {} (namespace {}, node_ttl {})",
        registry.describe(),
        registry_options.namespace,
        humantime::format_duration(registry_options.node_ttl)
    );
    let listener = bind(args.listen, tls).await?;
    let url = listener.addr_url();

    // Standalone is a one-node cluster: the node registers, and a monitor
    // keeps its one-replica placement map, as they would in a cluster.
    let shutdown = shutdown_channel();
    let identity = NodeIdentity {
        node_id: NodeId(args.node_id.clone()),
        node_url: url.clone(),
        local_node_url: url.clone(),
        zone: "default".into(),
        capacity: 1,
        instance: instance_id(dir)?,
    };
    let monitor = MonitorOptions {
        id: format!("{}-monitor", args.node_id),
        url: Some(url),
        replication_factor: args.replication_factor,
        topology: Topology::Dynamic,
        session_ttl: registry_options.node_ttl,
        retry_interval: registry_options.retry_interval,
        ..MonitorOptions::default()
    };
    let monitor = tokio::spawn(shoal_monitor::run(registry.clone(), monitor, shutdown.clone()));

    let config =
        node_config(identity, dir, options, raft, &token, &listener.tls, &registry_options);
    let node = Node::start(config, registry.clone(), shutdown.clone()).await?;
    node.wait_until_leading(BUCKET_COUNT, Duration::from_secs(120)).await?;
    // Said once it is true: a refused data directory says only why.
    match dir {
        Some(d) => out!("Shoal is serving {} with data in {}", listener.addr_url(), d.display()),
        None => out!(
            "Shoal is serving {} in memory: nothing is kept after it stops",
            listener.addr_url()
        ),
    }
    out!("{token_note}");
    out!("{registry_note}");
    if let Some(m) = &meta {
        out!(
            "Embedded registry member {} is serving {} (data in {}): grow it with \
             `shoal meta --join {}` and `shoal meta add`",
            m.member.meta.member().name,
            m.member.meta.member().url,
            m.dir.display(),
            m.member.meta.member().url
        );
    }
    let ca = match (&listener.tls.server, &args.http.tls.tls_ca) {
        (Some(_), Some(ca)) => format!(" --tls-ca {}", ca.display()),
        _ => String::new(),
    };
    match dir {
        Some(d) => out!(
            "Try: shoal base create --endpoint {}{ca} --data-dir {}",
            listener.addr_url(),
            d.display()
        ),
        None => out!(
            "Try: shoal base create --endpoint {}{ca} --token TOKEN (the token above)",
            listener.addr_url()
        ),
    }
    serve(listener, &args.http, token, Some(&node), registry, shutdown).await?;
    node.stop().await;
    let _ = monitor.await;
    if let Some(m) = meta {
        m.member.stop().await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// The embedded registry member a standalone server runs with
/// `--meta-listen`, and where its data is.
struct LocalMeta {
    member: crate::meta::ServedMember,
    dir: PathBuf,
}

/// Starts the first member of an embedded registry, named `name`, on
/// `addr`, with its data under `data/meta`; serves it at once (the node
/// needs its registry before this process serves anything else).
async fn start_meta(
    addr: SocketAddr,
    data: &Path,
    name: &str,
    token: &str,
) -> anyhow::Result<LocalMeta> {
    let listener = bind(addr, crate::tls::Tls::default()).await?;
    let url = listener.addr_url();
    let dir = data.join("meta");
    let mut options = shoal_meta::MetaOptions::new(name, &url, dir.clone());
    options.token = token.to_string();
    let member = crate::meta::ServedMember::start(listener, options).await?;
    Ok(LocalMeta { member, dir })
}

/// The admin token, and a line telling the user where it is.
fn admin_token(args: &ServeArgs, dir: Option<&Path>) -> anyhow::Result<(String, String)> {
    if let Some(t) = &args.http.admin_token {
        let t = t.trim().to_string();
        if t.is_empty() {
            anyhow::bail!("--admin-token (SHOAL_ADMIN_TOKEN) is empty");
        }
        return Ok((t, "Admin token: the one given by --admin-token / SHOAL_ADMIN_TOKEN".into()));
    }
    let Some(dir) = dir else {
        let t = random_token();
        let note = format!("Admin token (this run only): {t}");
        return Ok((t, note));
    };
    let path = dir.join("admin.token");
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => {
            return Ok((t.trim().to_string(), format!("Admin token: in {}", path.display())));
        }
        Ok(_) => anyhow::bail!("{} is empty; delete it to have a new token made", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
    let t = random_token();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    writeln!(f, "{t}")?;
    f.sync_all()?;
    Ok((t, format!("Admin token: created in {} (mode 0600)", path.display())))
}

fn random_token() -> String {
    rand::rng().sample_iter(&Alphanumeric).take(40).map(char::from).collect()
}
