//! `shoal meta`: a member of Shoal's embedded registry, and the commands
//! that change its group (`shoal meta add|remove|status`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use shoal_meta::{Meta, MetaOptions};
use shoal_registry::embedded::wire::{Member, MetaStatus};
use shoal_registry::{EmbeddedRegistry, RegistryUrl};

use crate::config::RegistryArgs;
use crate::server::{
    LogFormat, bind, init_logging, lock_data_dir, read_or_make_marker, required_token,
};

/// `shoal meta`: run a member, or change the group.
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct MetaArgs {
    #[command(subcommand)]
    command: Option<MetaCommand>,
    #[command(flatten)]
    member: MemberArgs,
}

/// Changes to a running group.
#[derive(Subcommand, Debug)]
enum MetaCommand {
    /// Add members (started with --join) to the group; two at a time, so
    /// the group stays odd-sized. Waits until they vote.
    Add {
        /// The new members' URLs.
        #[arg(required = true)]
        urls: Vec<String>,
        /// Return once the change is logged, without waiting for the new
        /// members to catch up and vote.
        #[arg(long)]
        no_wait: bool,
        #[command(flatten)]
        group: GroupArgs,
    },
    /// Remove members from the group by name; two at a time, so the group
    /// stays odd-sized. Waits until they no longer vote.
    Remove {
        /// The members' names.
        #[arg(required = true)]
        names: Vec<String>,
        /// Return once the change is logged.
        #[arg(long)]
        no_wait: bool,
        #[command(flatten)]
        group: GroupArgs,
    },
    /// Show the group's members, its leader and its voters.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        group: GroupArgs,
    },
}

/// How a command reaches the group.
#[derive(Args, Debug)]
struct GroupArgs {
    #[command(flatten)]
    registry: RegistryArgs,
    /// The cluster's admin token, which the members ask of every call.
    #[arg(long, env = "SHOAL_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
}

/// Flags of a member.
#[derive(Args, Debug)]
struct MemberArgs {
    /// This member's name, unique in its group; kept in the data directory
    /// [default: meta@LISTEN_ADDR on first start].
    #[arg(long, env = "SHOAL_META_NAME")]
    name: Option<String>,
    /// The address to serve on (members and clients both).
    #[arg(long, env = "SHOAL_LISTEN", default_value = "127.0.0.1:7060")]
    listen: SocketAddr,
    /// The URL others reach this member at [default: http://LISTEN_ADDR].
    #[arg(long, env = "SHOAL_ADVERTISE_URL")]
    advertise_url: Option<String>,
    /// Where the member keeps its log and state.
    #[arg(long, env = "SHOAL_DATA_DIR", default_value = "shoal-meta")]
    data_dir: PathBuf,
    /// A new group's members, as NAME=URL,NAME=URL,... (this one among
    /// them; start each with the same list) [default: this member alone].
    #[arg(long, env = "SHOAL_INITIAL_MEMBERS", value_delimiter = ',')]
    initial_members: Vec<String>,
    /// Start empty and wait to be added (`shoal meta add`) to the group of
    /// the members at these URLs.
    #[arg(long, env = "SHOAL_JOIN", value_delimiter = ',')]
    join: Vec<String>,
    /// The admin token, shared by every process of a cluster (members use it
    /// between themselves).
    #[arg(long, env = "SHOAL_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Write the address actually bound (useful with port 0) to this file.
    #[arg(long)]
    addr_file: Option<PathBuf>,
    /// How log lines are written to stderr.
    #[arg(long, env = "SHOAL_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
}

pub async fn run(args: MetaArgs) -> anyhow::Result<()> {
    match args.command {
        None => serve(args.member).await,
        Some(MetaCommand::Add { urls, no_wait, group }) => {
            let group = connect(&group).await?;
            let urls = urls.iter().map(|u| normalize_url(u)).collect::<anyhow::Result<Vec<_>>>()?;
            let members = group.add_members(urls.clone()).await?;
            out!("Logged: the group now has {} members ({})", members.len(), names(&members));
            if !no_wait {
                wait_for_voters(&group, &members).await?;
            }
            Ok(())
        }
        Some(MetaCommand::Remove { names: gone, no_wait, group }) => {
            let group = connect(&group).await?;
            let members = group.remove_members(gone).await?;
            out!("Logged: the group now has {} members ({})", members.len(), names(&members));
            if !no_wait {
                wait_for_voters(&group, &members).await?;
            }
            Ok(())
        }
        Some(MetaCommand::Status { json, group }) => {
            let group = connect(&group).await?;
            let status = group.status().await?;
            if json {
                out!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print_status(&status);
            }
            Ok(())
        }
    }
}

fn names(members: &[Member]) -> String {
    members.iter().map(|m| m.name.as_str()).collect::<Vec<_>>().join(", ")
}

/// `http://host:port` from `host:port` or a URL.
fn normalize_url(url: &str) -> anyhow::Result<String> {
    let url = url.trim().trim_end_matches('/');
    let url = if url.contains("://") { url.to_string() } else { format!("http://{url}") };
    let rest = url.strip_prefix("http://").with_context(|| {
        format!("{url:?}: embedded registry members speak http:// (host:port or http://host:port)")
    })?;
    match rest.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(url),
        _ => anyhow::bail!("{url:?} is not a member URL (expected host:port or http://host:port)"),
    }
}

async fn connect(args: &GroupArgs) -> anyhow::Result<EmbeddedRegistry> {
    let mut options = args.registry.load()?;
    options.token = args.admin_token.clone();
    match options.url()? {
        RegistryUrl::Embedded(endpoints) => {
            let group = EmbeddedRegistry::connect(options.embedded_options(endpoints)).await?;
            Ok(group)
        }
        _ => anyhow::bail!(
            "--registry {:?} is not an embedded registry: give its members as shoal://host:port[,host:port...]",
            options.registry
        ),
    }
}

/// Waits (up to a minute, with a line per change) until the leader's
/// voters are exactly `members`.
async fn wait_for_voters(group: &EmbeddedRegistry, members: &[Member]) -> anyhow::Result<()> {
    let mut want: Vec<u64> = members.iter().map(|m| m.id).collect();
    want.sort_unstable();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut last = Vec::new();
    loop {
        if let Ok(status) = group.status().await {
            let mut voters = status.voters.clone();
            voters.sort_unstable();
            if voters == want {
                out!("Done: {} voting members", voters.len());
                return Ok(());
            }
            if voters != last && !voters.is_empty() {
                let named: Vec<String> = voters
                    .iter()
                    .map(|v| {
                        status
                            .members
                            .iter()
                            .find(|m| m.id == *v)
                            .map_or_else(|| format!("{v:x}"), |m| m.name.clone())
                    })
                    .collect();
                out!("Voters now: {}", named.join(", "));
                last = voters;
            }
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!(
                "the group did not reach its new members within a minute; the change is logged \
                 and goes on: check `shoal meta status` (are the new members running and \
                 reachable?)"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn print_status(status: &MetaStatus) {
    let leader = status.members.iter().find(|m| Some(m.id) == status.leader);
    out!("Leader: {}", leader.map_or("none known", |m| m.name.as_str()));
    out!("Term: {}   revision: {}   applied: {}", status.term, status.revision, status.applied);
    for m in &status.members {
        let role = if Some(m.id) == status.leader {
            "leader"
        } else if status.voters.contains(&m.id) {
            "voter"
        } else if status.voters.is_empty() {
            "member"
        } else {
            "catching up"
        };
        out!("  {:<20} {:<30} {role}", m.name, m.url);
    }
}

/// Parses `NAME=URL` pairs.
fn initial_members(pairs: &[String]) -> anyhow::Result<Vec<Member>> {
    let mut members: Vec<Member> = Vec::new();
    for pair in pairs.iter().map(|p| p.trim()).filter(|p| !p.is_empty()) {
        let (name, url) = pair.split_once('=').with_context(|| {
            format!("--initial-members: {pair:?} is not NAME=URL (e.g. m1=http://10.0.0.1:7060)")
        })?;
        let url = normalize_url(url).with_context(|| format!("--initial-members: {name}"))?;
        if members.iter().any(|m| m.name == name) {
            anyhow::bail!("--initial-members names {name:?} twice");
        }
        members.push(shoal_meta::member(name.trim(), &url));
    }
    if members.len().is_multiple_of(2) && !members.is_empty() {
        anyhow::bail!(
            "--initial-members lists {} members: a group needs an odd number (1, 3 or 5) to \
             tolerate as many failures as it can",
            members.len()
        );
    }
    Ok(members)
}

async fn serve(args: MemberArgs) -> anyhow::Result<()> {
    init_logging(args.log_format);
    let token = required_token(args.admin_token.as_deref())?;
    if !args.join.is_empty() && !args.initial_members.is_empty() {
        anyhow::bail!(
            "--join and --initial-members exclude each other: a member joins a group or starts one"
        );
    }
    let join = args.join.iter().map(|u| normalize_url(u)).collect::<anyhow::Result<Vec<_>>>()?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create data directory {}", args.data_dir.display()))?;
    let _lock = lock_data_dir(&args.data_dir)?;
    let listener = bind(args.listen, crate::tls::Tls::default()).await?;
    let url = match &args.advertise_url {
        Some(u) => normalize_url(u).context("--advertise-url")?,
        None => listener.addr_url(),
    };
    let given = args.name.clone();
    let default_name = format!("meta@{}", listener.addr);
    let name = read_or_make_marker(&args.data_dir.join("member_name"), || {
        given.clone().unwrap_or(default_name)
    })?;
    if let Some(given) = &given
        && *given != name
    {
        anyhow::bail!(
            "{} belongs to member {name:?}, not {given:?}: give each member its own --data-dir \
             (or start this one with --name {name})",
            args.data_dir.display()
        );
    }
    let mut options = MetaOptions::new(&name, &url, args.data_dir.clone());
    options.token = token;
    options.join = join;
    if !args.initial_members.is_empty() {
        options.initial = initial_members(&args.initial_members)?;
    }
    let addr = listener.addr;
    let member = ServedMember::start(listener, options).await?;
    out!("Shoal meta member {name} is serving {url}");
    out!("Data: {}", args.data_dir.display());
    if !args.join.is_empty() {
        out!("Waiting to be added: shoal meta add {url} --registry shoal://...");
    }
    if let Some(f) = &args.addr_file {
        std::fs::write(f, addr.to_string())
            .with_context(|| format!("cannot write {}", f.display()))?;
    }
    let mut shutdown = crate::server::shutdown_channel();
    let _ = shutdown.wait_for(|stop| *stop).await;
    member.stop().await;
    tracing::info!("stopped");
    Ok(())
}

/// A member and the task serving its routes: what `shoal meta` runs, and
/// `shoal serve --meta-listen` beside its node.
pub struct ServedMember {
    /// The member.
    pub meta: Meta,
    stop: tokio::sync::oneshot::Sender<()>,
    serving: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl ServedMember {
    /// Starts the member with `options` and serves it on `listener` at once.
    pub async fn start(
        listener: crate::server::Listener,
        options: MetaOptions,
    ) -> anyhow::Result<ServedMember> {
        let meta = Meta::start(options).await?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(crate::server::run(listener, meta.router(), async move {
            let _ = stopped.await;
        }));
        Ok(ServedMember { meta, stop, serving })
    }

    /// A clean stop: hands leadership over (if another member can take it,
    /// so clients see no election), stops the member, then its listener.
    pub async fn stop(self) {
        self.meta.leave(Duration::from_secs(3)).await;
        drop(self.meta);
        let _ = self.stop.send(());
        let _ = tokio::time::timeout(Duration::from_secs(5), self.serving).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initial_members_are_named_urls_and_odd() {
        let m = initial_members(&["a=127.0.0.1:1".into(), "b=http://h:2/".into(), "c=h:3".into()])
            .unwrap();
        assert_eq!(
            m.iter().map(|m| m.url.as_str()).collect::<Vec<_>>(),
            ["http://127.0.0.1:1", "http://h:2", "http://h:3"]
        );
        let e = initial_members(&["a=h:1".into(), "b=h:2".into()]).unwrap_err();
        assert!(e.to_string().contains("odd"), "{e}");
        assert!(initial_members(&["a".into()]).is_err());
        assert!(initial_members(&["a=h:1".into(), "a=h:2".into(), "c=h:3".into()]).is_err());
        assert!(normalize_url("https://h:1").is_err());
        assert!(normalize_url("h").is_err());
    }
}
