//! `shoal`: the one binary. Runs the servers (`serve`, `node`, `monitor`,
//! `proxy`, `meta`) and is their client (`base`, `sql`, `tables`, `rows`, `watch`,
//! `cluster`, `bench`).

/// Prints a line to standard output like `println!`, except that a reader
/// that went away (`shoal watch --json | head`) ends the program quietly,
/// with the status a shell reports for SIGPIPE, instead of a panic.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::print_line(format_args!($($arg)*))
    };
}

mod backup;
mod bench;
mod cli;
mod config;
mod meta;
mod monitor;
mod node;
mod proxy;
mod serve;
mod server;
mod tls;
mod transfer;
mod watch;

use std::path::PathBuf;
use std::process::ExitCode;

/// mimalloc rather than the system allocator: the servers allocate and free
/// small buffers on many threads (HTTP, the Raft loop, the apply and log
/// threads), where glibc's malloc showed up in profiles consolidating and
/// unlinking free chunks. Built without transparent huge pages, whose
/// faults zeroed 2 MiB at a time under a write load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Args, Parser, Subcommand};

/// Shoal: a distributed table database for many small bases.
#[derive(Parser)]
#[command(name = "shoal", version, about, propagate_version = true)]
struct Opts {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run Shoal standalone: one process, data in --data-dir (or --memory).
    Serve(serve::ServeArgs),
    /// Run a cluster node: registers in the registry and takes its buckets.
    Node(node::NodeArgs),
    /// Run a monitor: the elected one keeps the placement map of the cluster.
    Monitor(monitor::MonitorArgs),
    /// Run a proxy: routes every base request to its bucket's leader (stateless; run any number).
    Proxy(proxy::ProxyArgs),
    /// Run a member of the embedded registry (`--registry shoal://...`), or change its group.
    Meta(meta::MetaArgs),
    /// Show the cluster or ask for a rebalance.
    #[command(subcommand)]
    Cluster(cli::ClusterCommand),
    /// Create, list, show and drop bases.
    #[command(subcommand)]
    Base(cli::BaseCommand),
    /// Make, list and revoke a base's API tokens (SeaTable-compatible API).
    #[command(subcommand)]
    Token(cli::TokenCommand),
    /// Run SQL against a base and print the result.
    Sql(cli::SqlArgs),
    /// Show a base's tables and their columns.
    Tables(cli::TablesArgs),
    /// Read and write rows of a table.
    #[command(subcommand)]
    Rows(cli::RowsCommand),
    /// Measure throughput and latency against a running server.
    Bench(bench::BenchArgs),
    /// Print a base's changes as they are committed (resumes by itself).
    Watch(watch::WatchArgs),
    /// Load rows into a table from CSV or JSON lines (creates the table if missing).
    Import(transfer::ImportArgs),
    /// Write a table's rows as CSV or JSON lines.
    Export(transfer::ExportArgs),
    /// Copy bases (their SQLite files and a manifest) into a directory.
    Backup(backup::BackupArgs),
    /// Create bases from a backup directory, through the normal write path.
    Restore(backup::RestoreArgs),
}

/// How a client command reaches the server.
#[derive(Args, Clone, Debug)]
pub struct ClientArgs {
    /// The server's URL, or several separated by commas (nodes, proxies or
    /// both): the client moves to the next when one cannot be reached.
    #[arg(long, env = "SHOAL_ENDPOINT", default_value = "http://127.0.0.1:7070", global = true)]
    endpoint: String,
    /// The bearer token [default: the contents of DATA_DIR/admin.token, if present].
    #[arg(long, env = "SHOAL_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// The data directory of a standalone server on this machine, where the
    /// token is found when --token is not given (the path `shoal serve`
    /// prints).
    #[arg(long, env = "SHOAL_DATA_DIR", default_value = "shoal-data", global = true)]
    data_dir: PathBuf,
    /// How long a command keeps retrying (other endpoints, a bucket electing
    /// a new leader) before it gives up.
    #[arg(long, env = "SHOAL_RETRY_DEADLINE", default_value = "20s", value_parser = humantime::parse_duration, global = true)]
    retry_deadline: std::time::Duration,
    /// The CA certificate (PEM) that signed the server's certificate: needed
    /// for https:// endpoints, whose certificates are checked against it.
    #[arg(long, env = "SHOAL_TLS_CA", global = true)]
    tls_ca: Option<PathBuf>,
}

impl ClientArgs {
    /// The admin token: --token, else the one in --data-dir.
    pub fn admin_token(&self) -> Option<String> {
        match &self.token {
            Some(t) => Some(t.clone()),
            None => std::fs::read_to_string(self.data_dir.join("admin.token"))
                .ok()
                .map(|t| t.trim().to_string()),
        }
    }

    /// How https:// endpoints are verified: with --tls-ca, if given.
    pub fn tls(&self) -> anyhow::Result<Option<std::sync::Arc<shoal_tls::ClientConfig>>> {
        let Some(path) = &self.tls_ca else { return Ok(None) };
        let pem = std::fs::read(path)
            .map_err(|e| anyhow::anyhow!("--tls-ca {}: cannot read it: {e}", path.display()))?;
        let what = format!("--tls-ca {}", path.display());
        Ok(Some(shoal_client::tls_config(&pem, &what, None)?))
    }

    /// The client these flags describe.
    pub fn client(&self) -> anyhow::Result<shoal_client::Client> {
        let token = self.admin_token();
        let options = shoal_client::Options {
            retry_deadline: self.retry_deadline,
            tls: self.tls()?,
            ..Default::default()
        };
        Ok(shoal_client::Client::with_options(&[&self.endpoint], token, options)?)
    }
}

/// Writes one line for [`out!`].
fn print_line(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = writeln!(stdout, "{line}") {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(128 + 13);
        }
        eprintln!("error: cannot write to standard output: {e}");
        std::process::exit(1);
    }
}

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let command = match config::file_defaults(<Opts as clap::CommandFactory>::command(), &args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let opts =
        match <Opts as clap::FromArgMatches>::from_arg_matches(&command.get_matches_from(args)) {
            Ok(o) => o,
            Err(e) => e.exit(),
        };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    // A node's Raft loop, log writer and apply thread are threads of their
    // own: its runtime (HTTP, peer connections) needs only part of the
    // machine, and fewer workers wake each other less (measured: idle
    // nodes at 0.9 % of a core instead of 1.7 % with one worker per core
    // on two cores).
    let threads = match &opts.command {
        Command::Serve(a) => a.http.http_threads.unwrap_or((cores / 2).max(1)),
        Command::Node(a) => a.http.http_threads.unwrap_or((cores / 2).max(1)),
        Command::Monitor(a) => a.http.http_threads.unwrap_or(cores),
        // A proxy mostly waits on sockets: one worker per two cores wakes
        // less and costs less CPU per request (measured: 19 instead of 23 µs
        // per proxied write on two cores), leaving the rest to the nodes or
        // clients it often shares a machine with.
        Command::Proxy(a) => a.http.http_threads.unwrap_or((cores / 2).max(1)),
        // A registry member's Raft loop has threads of its own, and its
        // requests are few.
        Command::Meta(_) => (cores / 2).max(1),
        _ => cores,
    };
    if threads == 0 {
        eprintln!("error: --http-threads must be at least 1");
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match opts.command {
            Command::Serve(args) => serve::run(args).await,
            Command::Node(args) => node::run(args).await,
            Command::Monitor(args) => monitor::run(args).await,
            Command::Proxy(args) => proxy::run(args).await,
            Command::Meta(args) => meta::run(args).await,
            Command::Cluster(c) => cli::cluster(c).await,
            Command::Base(c) => cli::base(c).await,
            Command::Token(c) => cli::token(c).await,
            Command::Sql(a) => cli::sql(a).await,
            Command::Tables(a) => cli::tables(a).await,
            Command::Rows(c) => cli::rows(c).await,
            Command::Bench(a) => bench::run(a).await,
            Command::Watch(a) => watch::run(a).await,
            Command::Import(a) => transfer::import(a).await,
            Command::Export(a) => transfer::export(a).await,
            Command::Backup(a) => backup::backup(a).await,
            Command::Restore(a) => backup::restore(a).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
