//! Configuration shared by the server commands: where `shoal.toml` is, the
//! registry settings (top-level keys), the Raft settings of nodes (table
//! `[raft]`) and every other flag of a command (tables `[serve]`, `[node]`,
//! `[monitor]`, `[proxy]`, ...: see [`file_defaults`]), each layered
//! defaults < file < `SHOAL_*` environment < flags.
//!
//! The registry crate does the layering and validation (each error names the
//! key as the user spelled it); this module only gathers the raw layers.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use shoal_registry::RegistryOptions;

/// Registry flags. They read no environment themselves: the environment is
/// its own layer, below flags and above the file.
#[derive(Args, Debug, Clone, Default)]
pub struct RegistryArgs {
    /// A TOML file with registry settings [env: SHOAL_CONFIG] [default: ./shoal.toml when present].
    #[arg(long)]
    config: Option<PathBuf>,
    /// The registry: `memory`, `etcd://host1:2379,host2:2379`, `etcds://...`
    /// for etcd over TLS, or `zk://host1:2181,host2:2181` [env: SHOAL_REGISTRY].
    #[arg(long)]
    registry: Option<String>,
    /// Key prefix in the registry (the chroot on ZooKeeper), so clusters can share one etcd or ZooKeeper [env: SHOAL_NAMESPACE] [default: shoal].
    #[arg(long)]
    namespace: Option<String>,
    /// How long a node's registration outlives it, e.g. 90s [env: SHOAL_NODE_TTL].
    #[arg(long)]
    node_ttl: Option<String>,
    /// Wait between retries of a failed registry request, e.g. 500ms [env: SHOAL_RETRY_INTERVAL].
    #[arg(long)]
    retry_interval: Option<String>,
    /// Retries of a failed registry request [env: SHOAL_MAX_RETRIES] [default: 5].
    #[arg(long)]
    max_retries: Option<String>,
    /// Time limit of one registry request, e.g. 5s [env: SHOAL_OPERATION_TIMEOUT].
    #[arg(long)]
    operation_timeout: Option<String>,
    /// The CA certificate (PEM) that signed etcd's certificates; given, etcd
    /// is reached over TLS [env: SHOAL_REGISTRY_CA].
    #[arg(long)]
    registry_ca: Option<String>,
    /// A client certificate (PEM) for an etcd that asks for one [env: SHOAL_REGISTRY_CERT].
    #[arg(long)]
    registry_cert: Option<String>,
    /// The private key (PEM) of --registry-cert [env: SHOAL_REGISTRY_KEY].
    #[arg(long)]
    registry_key: Option<String>,
}

impl RegistryArgs {
    /// The configuration file's contents (empty without one).
    pub fn file(&self) -> anyhow::Result<toml::Table> {
        let path =
            self.config.clone().or_else(|| std::env::var_os("SHOAL_CONFIG").map(PathBuf::from));
        Ok(match &path {
            Some(p) => read_toml(p)?,
            None if std::path::Path::new("shoal.toml").exists() => {
                read_toml(&PathBuf::from("shoal.toml"))?
            }
            None => toml::Table::new(),
        })
    }

    /// The registry options from file, environment and flags.
    pub fn load(&self) -> anyhow::Result<RegistryOptions> {
        let env: HashMap<String, String> = std::env::vars().collect();
        let mut file = self.file()?;
        // Tables belong to the Raft settings and to commands.
        file.retain(|_, v| !v.is_table());
        let flags: Vec<(&str, &str)> = [
            ("registry", &self.registry),
            ("namespace", &self.namespace),
            ("node_ttl", &self.node_ttl),
            ("retry_interval", &self.retry_interval),
            ("max_retries", &self.max_retries),
            ("operation_timeout", &self.operation_timeout),
            ("registry_ca", &self.registry_ca),
            ("registry_cert", &self.registry_cert),
            ("registry_key", &self.registry_key),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_deref().map(|v| (k, v)))
        .collect();
        Ok(RegistryOptions::layer(&file, &env, &flags)?)
    }
}

/// Whether `key` is a registry flag (or `config`): set at the top level of
/// the file, not in a command's table.
fn is_registry_key(key: &str) -> bool {
    key == "config" || shoal_registry::RegistryOptions::KEYS.contains(&key)
}

/// Connects to the registry `options` name, reading the certificate files
/// of TLS to etcd first.
pub async fn connect_registry(
    options: &RegistryOptions,
) -> anyhow::Result<std::sync::Arc<dyn shoal_registry::Registry>> {
    options.validate()?;
    let read = |path: &str, key: &str| {
        std::fs::read(path).with_context(|| format!("{key} {path}: cannot read it"))
    };
    let tls = match &options.registry_ca {
        Some(ca) if options.wants_tls() => {
            let ca_pem = read(ca, "--registry-ca")?;
            // A file that is no certificate is named here, not as a
            // failed handshake later.
            shoal_tls::parse_roots(&ca_pem, &format!("--registry-ca {ca}"))?;
            let identity = match (&options.registry_cert, &options.registry_key) {
                (Some(c), Some(k)) => {
                    let (cert, key) = (read(c, "--registry-cert")?, read(k, "--registry-key")?);
                    shoal_tls::Identity::from_pem(
                        &cert,
                        &format!("--registry-cert {c}"),
                        &key,
                        &format!("--registry-key {k}"),
                    )?;
                    Some((cert, key))
                }
                _ => None,
            };
            Some(shoal_registry::EtcdTls { ca_pem, identity })
        }
        _ => None,
    };
    Ok(shoal_registry::connect_with(options, tls).await?)
}

/// `cmd` with the values of the running command's table in the
/// configuration file as its flags' defaults: `[node] listen =
/// "0.0.0.0:7071"` is `shoal node --listen 0.0.0.0:7071` unless the flag or
/// its `SHOAL_*` variable says otherwise. Keys are flag names with `_` or
/// `-`. An unknown key, a registry key (those go at the top level) or a
/// value that is not a string, number or boolean is an error naming it.
///
/// The file is the one `--config` names (also as `--config=PATH`), else
/// `SHOAL_CONFIG`, else `./shoal.toml` when present.
pub fn file_defaults(
    mut cmd: clap::Command,
    args: &[std::ffi::OsString],
) -> anyhow::Result<clap::Command> {
    let words: Vec<String> = args.iter().map(|a| a.to_string_lossy().into_owned()).collect();
    let Some(name) = words.iter().skip(1).find(|w| !w.starts_with('-')) else { return Ok(cmd) };
    let given = words.iter().enumerate().find_map(|(i, w)| {
        w.strip_prefix("--config=")
            .map(PathBuf::from)
            .or_else(|| (w == "--config").then(|| words.get(i + 1).map(PathBuf::from)).flatten())
    });
    let path = given.or_else(|| std::env::var_os("SHOAL_CONFIG").map(PathBuf::from));
    let (path, file) = match path {
        Some(p) => {
            let file = read_toml(&p)?;
            (p, file)
        }
        None if std::path::Path::new("shoal.toml").exists() => {
            let p = PathBuf::from("shoal.toml");
            (p.clone(), read_toml(&p)?)
        }
        None => return Ok(cmd),
    };
    let Some(sub) = cmd.find_subcommand(name) else { return Ok(cmd) };
    let Some(table) = file.get(name).and_then(|t| t.as_table()) else { return Ok(cmd) };
    let flags: Vec<(String, clap::Id)> = sub
        .get_arguments()
        .filter_map(|a| a.get_long().map(|l| (l.replace('-', "_"), a.get_id().clone())))
        .collect();
    let mut defaults = Vec::new();
    for (key, value) in table {
        let key_ = key.replace('-', "_");
        let place = format!("{} [{name}] {key}", path.display());
        if is_registry_key(&key_) {
            anyhow::bail!("{place}: registry settings go at the top level of the file");
        }
        let Some((_, id)) = flags.iter().find(|(long, _)| *long == key_) else {
            let known: Vec<&str> = flags
                .iter()
                .map(|(l, _)| l.as_str())
                .filter(|l| !is_registry_key(l) && !l.starts_with("raft_") && *l != "help")
                .collect();
            anyhow::bail!(
                "{place}: unknown key (the flags of `shoal {name}`: {})",
                known.join(", ")
            );
        };
        let text = match value {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            _ => anyhow::bail!("{place}: expected a string, a number or a boolean"),
        };
        defaults.push((id.clone(), text));
    }
    let name = name.clone();
    cmd = cmd.mut_subcommand(name, |mut sub| {
        for (id, text) in defaults {
            sub = sub.mut_arg(id, |a| a.default_value(text));
        }
        sub
    });
    Ok(cmd)
}

fn read_toml(path: &PathBuf) -> anyhow::Result<toml::Table> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    text.parse::<toml::Table>().with_context(|| format!("{} is not valid TOML", path.display()))
}

/// Raft flags of the commands that run a node. Like the registry flags they
/// read no environment themselves: `SHOAL_RAFT_*` is its own layer.
#[derive(Args, Debug, Clone, Default)]
pub struct RaftArgs {
    /// One tick of every Raft group's clock, e.g. 100ms [env: SHOAL_RAFT_TICK].
    #[arg(long)]
    raft_tick: Option<String>,
    /// Ticks between a leader's heartbeats [env: SHOAL_RAFT_HEARTBEAT_TICKS] [default: 2].
    #[arg(long)]
    raft_heartbeat_ticks: Option<String>,
    /// Ticks without a leader before a follower campaigns (randomized up to twice that) [env: SHOAL_RAFT_ELECTION_TICKS] [default: 10].
    #[arg(long)]
    raft_election_ticks: Option<String>,
    /// How long a write waits for a bucket without a leader, e.g. 3s [env: SHOAL_RAFT_LEADER_WAIT].
    #[arg(long)]
    raft_leader_wait: Option<String>,
    /// Applied log entries kept behind each checkpoint [env: SHOAL_RAFT_KEEP_LOGS] [default: 1000].
    #[arg(long)]
    raft_keep_logs: Option<String>,
    /// How often a busy bucket syncs its bases and records a checkpoint, e.g. 1s [env: SHOAL_RAFT_CHECKPOINT_INTERVAL].
    #[arg(long)]
    raft_checkpoint_interval: Option<String>,
    /// Buckets changing membership at once on a node [env: SHOAL_RAFT_MAX_CONCURRENT_CHANGES] [default: 4].
    #[arg(long)]
    raft_max_concurrent_changes: Option<String>,
    /// Snapshots a node sends at once [env: SHOAL_RAFT_MAX_SNAPSHOT_SENDS] [default: 2].
    #[arg(long)]
    raft_max_snapshot_sends: Option<String>,
}

/// The keys of `[raft]`.
const RAFT_KEYS: [&str; 8] = [
    "tick",
    "heartbeat_ticks",
    "election_ticks",
    "leader_wait",
    "keep_logs",
    "checkpoint_interval",
    "max_concurrent_changes",
    "max_snapshot_sends",
];

impl RaftArgs {
    /// The Raft settings from the file's `[raft]` table, the environment
    /// and the flags.
    pub fn load(&self, file: &toml::Table) -> anyhow::Result<shoal_node::RaftSettings> {
        let env: HashMap<String, String> = std::env::vars().collect();
        let mut layers: Vec<(String, String, String)> = Vec::new();
        match file.get("raft") {
            None => {}
            Some(toml::Value::Table(t)) => {
                for (key, value) in t {
                    if !RAFT_KEYS.contains(&key.as_str()) {
                        anyhow::bail!("shoal.toml: [raft]: unknown key {key:?}");
                    }
                    let raw = match value {
                        toml::Value::String(s) => s.clone(),
                        toml::Value::Integer(i) => i.to_string(),
                        other => anyhow::bail!(
                            "shoal.toml: raft.{key}: expected a string or a number, got {other}"
                        ),
                    };
                    layers.push((key.clone(), raw, format!("shoal.toml: raft.{key}")));
                }
            }
            Some(other) => anyhow::bail!("shoal.toml: raft: expected a table, got {other}"),
        }
        for key in RAFT_KEYS {
            let name = format!("SHOAL_RAFT_{}", key.to_ascii_uppercase());
            if let Some(raw) = env.get(&name) {
                layers.push((key.to_string(), raw.clone(), name));
            }
        }
        let flags = [
            ("tick", &self.raft_tick),
            ("heartbeat_ticks", &self.raft_heartbeat_ticks),
            ("election_ticks", &self.raft_election_ticks),
            ("leader_wait", &self.raft_leader_wait),
            ("keep_logs", &self.raft_keep_logs),
            ("checkpoint_interval", &self.raft_checkpoint_interval),
            ("max_concurrent_changes", &self.raft_max_concurrent_changes),
            ("max_snapshot_sends", &self.raft_max_snapshot_sends),
        ];
        for (key, value) in flags {
            if let Some(raw) = value {
                layers.push((
                    key.to_string(),
                    raw.clone(),
                    format!("--raft-{}", key.replace('_', "-")),
                ));
            }
        }
        let mut s = shoal_node::RaftSettings::default();
        for (key, raw, label) in layers {
            let duration = || {
                humantime::parse_duration(raw.trim()).map_err(|_| {
                    anyhow::anyhow!("{label}: invalid duration {raw:?} (e.g. \"100ms\", \"3s\")")
                })
            };
            let count = || {
                raw.trim().parse::<u64>().ok().filter(|n| *n >= 1).ok_or_else(|| {
                    anyhow::anyhow!("{label}: expected a whole number of at least 1, got {raw:?}")
                })
            };
            match key.as_str() {
                "tick" => s.tick = duration()?,
                "heartbeat_ticks" => s.heartbeat_ticks = count()? as usize,
                "election_ticks" => s.election_ticks = count()? as usize,
                "leader_wait" => s.leader_wait = duration()?,
                "keep_logs" => s.keep_logs = count()?,
                "checkpoint_interval" => s.checkpoint_interval = duration()?,
                "max_concurrent_changes" => s.max_concurrent_changes = count()? as usize,
                "max_snapshot_sends" => s.max_snapshot_sends = count()? as usize,
                _ => unreachable!("keys are checked above"),
            }
        }
        if s.tick < std::time::Duration::from_millis(1) {
            anyhow::bail!("raft tick must be at least 1ms");
        }
        if s.election_ticks <= s.heartbeat_ticks {
            anyhow::bail!(
                "raft election_ticks ({}) must be larger than heartbeat_ticks ({})",
                s.election_ticks,
                s.heartbeat_ticks
            );
        }
        Ok(s)
    }
}
