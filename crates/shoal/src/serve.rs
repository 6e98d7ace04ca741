//! `shoal serve`: standalone Shoal in one process.

use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use metrics_exporter_prometheus::PrometheusBuilder;
use rand::Rng as _;
use rand::distr::Alphanumeric;
use shoal_node::{AppState, Engine, ServerOptions};
use shoal_storage::{Options, Store};

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
    /// The admin bearer token [default: DATA_DIR/admin.token, created on first start].
    #[arg(long, env = "SHOAL_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
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
    /// The largest request body accepted, in bytes.
    #[arg(long, env = "SHOAL_MAX_BODY_SIZE", default_value_t = 16 * 1024 * 1024)]
    max_body_size: usize,
    /// Write the address actually bound (useful with port 0) to this file.
    #[arg(long)]
    addr_file: Option<PathBuf>,
    #[command(flatten)]
    registry: crate::config::RegistryArgs,
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SHOAL_LOG")
                .unwrap_or_else(|_| "info".parse().expect("valid")),
        )
        .init();
    if args.max_open_bases == 0
        || args.max_result_rows == 0
        || args.max_sql_length == 0
        || args.max_body_size == 0
    {
        anyhow::bail!(
            "--max-open-bases, --max-result-rows, --max-sql-length and --max-body-size must be at least 1"
        );
    }
    let registry_options = args.registry.load()?;
    let dir = (!args.memory).then_some(args.data_dir.as_path());
    if let Some(d) = dir {
        std::fs::create_dir_all(d)
            .with_context(|| format!("cannot create data directory {}", d.display()))?;
    }
    let (token, token_note) = admin_token(&args, dir)?;
    let options = Options {
        max_open_bases: args.max_open_bases,
        max_sql_length: args.max_sql_length,
        max_result_rows: args.max_result_rows,
        statement_timeout: args.statement_timeout,
        max_write_steps: args.max_write_steps,
    };
    let store = Arc::new(Store::open(dir, options)?);
    let metrics = PrometheusBuilder::new()
        .set_buckets(&[
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ])?
        .install_recorder()
        .context("cannot install the metrics recorder")?;
    let state = Arc::new(AppState {
        engine: Arc::new(Engine::new(store)),
        options: ServerOptions { admin_token: token, max_body_bytes: args.max_body_size },
        metrics: Some(metrics),
    });
    // Connect before serving, so that a wrong or dead registry fails start-up
    // with the endpoints it tried. Standalone keeps it for the control plane.
    let registry = shoal_registry::connect(&registry_options).await?;
    let registry_note = format!(
        "Registry: {} (namespace {}, node_ttl {})",
        registry.describe(),
        registry_options.namespace,
        humantime::format_duration(registry_options.node_ttl)
    );
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    if let Some(f) = &args.addr_file {
        std::fs::write(f, addr.to_string())
            .with_context(|| format!("cannot write {}", f.display()))?;
    }
    match dir {
        Some(d) => println!("Shoal is serving http://{addr} with data in {}", d.display()),
        None => {
            println!("Shoal is serving http://{addr} in memory: nothing is kept after it stops")
        }
    }
    println!("{token_note}");
    println!("{registry_note}");
    tracing::info!(%addr, "listening");
    axum::serve(listener, shoal_node::router(state))
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    drop(registry);
    tracing::info!("stopped");
    Ok(())
}

/// The admin token, and a line telling the user where it is.
fn admin_token(args: &ServeArgs, dir: Option<&Path>) -> anyhow::Result<(String, String)> {
    if let Some(t) = &args.admin_token {
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

async fn shutdown_signal() {
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
}
