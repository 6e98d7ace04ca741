//! Configuration shared by the server commands: where `shoal.toml` is and the
//! registry settings, layered defaults < file < `SHOAL_*` environment < flags.
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
    /// The registry: `memory`, or `etcd://host1:2379,host2:2379` [env: SHOAL_REGISTRY].
    #[arg(long)]
    registry: Option<String>,
    /// Key prefix in the registry, so clusters can share one etcd [env: SHOAL_NAMESPACE] [default: shoal].
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
}

impl RegistryArgs {
    /// The registry options from file, environment and flags.
    pub fn load(&self) -> anyhow::Result<RegistryOptions> {
        let env: HashMap<String, String> = std::env::vars().collect();
        let path = self.config.clone().or_else(|| env.get("SHOAL_CONFIG").map(PathBuf::from));
        let file = match &path {
            Some(p) => read_toml(p)?,
            None if std::path::Path::new("shoal.toml").exists() => {
                read_toml(&PathBuf::from("shoal.toml"))?
            }
            None => toml::Table::new(),
        };
        let flags: Vec<(&str, &str)> = [
            ("registry", &self.registry),
            ("namespace", &self.namespace),
            ("node_ttl", &self.node_ttl),
            ("retry_interval", &self.retry_interval),
            ("max_retries", &self.max_retries),
            ("operation_timeout", &self.operation_timeout),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_deref().map(|v| (k, v)))
        .collect();
        Ok(RegistryOptions::layer(&file, &env, &flags)?)
    }
}

fn read_toml(path: &PathBuf) -> anyhow::Result<toml::Table> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    text.parse::<toml::Table>().with_context(|| format!("{} is not valid TOML", path.display()))
}
