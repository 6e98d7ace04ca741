//! Registry configuration: the options, their layering, and `connect`.
//!
//! This crate never reads files, environment variables or flags (STYLE:
//! library crates take their inputs as values). The binary reads them and
//! hands the raw layers to [`RegistryOptions::layer`], which applies them in
//! order — defaults, then the TOML file, then `SHOAL_*` variables, then
//! flags — so env beats the file and flags beat env. Each layer is checked
//! as it is applied, and an error names the key as the user spelled it:
//! `shoal.toml: unknown key "nodettl"`, `SHOAL_NODE_TTL: invalid duration
//! "abc"`, `--max-retries: invalid number "x"`.
//!
//! Environment variables other than the registry's own `SHOAL_*` names are
//! ignored here, because the other parts of Shoal have theirs; the binary,
//! which knows every name, is the place to reject unknown ones. The TOML
//! table passed in must hold registry keys only ([`RegistryOptions::KEYS`]
//! lists them so the binary can split a shared file).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::embedded::{EmbeddedOptions, EmbeddedRegistry};
use crate::error::{Error, Result};
use crate::etcd::{EtcdOptions, EtcdRegistry, EtcdTls};
use crate::memory::{MemoryOptions, MemoryRegistry};
use crate::registry::Registry;
use crate::session::SessionOptions;
use crate::zookeeper::{ZkOptions, ZkRegistry};

/// Where the registry is and how to talk to it. Deserializes from TOML with
/// human durations (`"90s"`, `"500ms"`); unknown keys are rejected.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryOptions {
    /// The backend: `memory` (in-process),
    /// `etcd://host1:2379,host2:2379,...` (one or more etcd members),
    /// `etcds://...` for etcd over TLS,
    /// `zk://host1:2181,host2:2181,...` (one or more ZooKeeper servers), or
    /// `shoal://host1:7060,...` (members of Shoal's embedded registry,
    /// `shoal meta`).
    pub registry: String,
    /// The key prefix: every key lives under `/{namespace}/`, so several
    /// clusters can share one etcd (with ZooKeeper, the chroot path).
    /// Letters, digits, `-`, `_` and `.`.
    pub namespace: String,
    /// How long a node's registration outlives the node (seconds of lease
    /// TTL). Default 90 s.
    #[serde(with = "humantime_serde")]
    pub node_ttl: Duration,
    /// The wait between two attempts of a failed registry request. Default
    /// 500 ms.
    #[serde(with = "humantime_serde")]
    pub retry_interval: Duration,
    /// How many times a failed registry request is retried before the
    /// caller gets `Unavailable` (0: tried once). Default 5.
    pub max_retries: u32,
    /// The longest one attempt of one registry request may take, connecting
    /// included. Default 5 s.
    #[serde(with = "humantime_serde")]
    pub operation_timeout: Duration,
    /// The CA certificate file (PEM) that signed etcd's certificates. Given,
    /// etcd is reached over TLS (as with `etcds://`, which needs it).
    pub registry_ca: Option<String>,
    /// A client certificate file (PEM) for etcd (`--client-cert-auth`).
    pub registry_cert: Option<String>,
    /// The private key file (PEM) of `registry_cert`.
    pub registry_key: Option<String>,
    /// The bearer token of the embedded registry's calls: the cluster's
    /// admin token, set by the process (not a configuration key).
    #[serde(skip)]
    pub token: Option<String>,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        Self {
            registry: "memory".into(),
            namespace: "shoal".into(),
            node_ttl: Duration::from_secs(90),
            retry_interval: Duration::from_millis(500),
            max_retries: 5,
            operation_timeout: Duration::from_secs(5),
            registry_ca: None,
            registry_cert: None,
            registry_key: None,
            token: None,
        }
    }
}

/// The parsed `registry` setting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegistryUrl {
    /// The in-process backend.
    Memory,
    /// etcd, with the client URLs of its members (`http://host:port`, or
    /// `https://host:port` from `etcds://`).
    Etcd(Vec<String>),
    /// ZooKeeper, with the client addresses of its servers (`host:port`).
    ZooKeeper(Vec<String>),
    /// Shoal's embedded registry, with its members' URLs (`http://host:port`).
    Embedded(Vec<String>),
}

impl std::str::FromStr for RegistryUrl {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let s = s.trim();
        if s == "memory" || s == "memory://" {
            return Ok(RegistryUrl::Memory);
        }
        let etcd = match (s.strip_prefix("etcd://"), s.strip_prefix("etcds://")) {
            (Some(list), _) => Some(("http", list)),
            (_, Some(list)) => Some(("https", list)),
            _ => None,
        };
        if let Some((scheme, list)) = etcd {
            let endpoints = host_ports("etcd", list)?;
            return Ok(RegistryUrl::Etcd(
                endpoints.into_iter().map(|e| format!("{scheme}://{e}")).collect(),
            ));
        }
        if let Some(list) = s.strip_prefix("zk://") {
            if let Some((_, path)) = list.split_once('/') {
                return Err(format!(
                    "ZooKeeper registry {s:?} names a chroot path \"/{path}\": \
                     the chroot is the namespace setting, leave the path out"
                ));
            }
            return Ok(RegistryUrl::ZooKeeper(host_ports("ZooKeeper", list)?));
        }
        if let Some(list) = s.strip_prefix("shoal://") {
            let members = host_ports("embedded registry", list)?;
            return Ok(RegistryUrl::Embedded(
                members.into_iter().map(|m| format!("http://{m}")).collect(),
            ));
        }
        Err(format!(
            "unsupported registry {s:?}: expected \"memory\", \"etcd://host:port[,host:port...]\", \
             \"etcds://host:port[,...]\" (TLS), \"zk://host:port[,host:port...]\" or \
             \"shoal://host:port[,host:port...]\" (the embedded registry's members)"
        ))
    }
}

/// Parses `host:port[,host:port...]`, the endpoint list of a registry URL.
fn host_ports(what: &str, list: &str) -> std::result::Result<Vec<String>, String> {
    let mut endpoints = Vec::new();
    for endpoint in list.split(',').map(str::trim) {
        let Some((host, port)) = endpoint.rsplit_once(':') else {
            return Err(format!("{what} endpoint {endpoint:?} has no port (expected host:port)"));
        };
        if host.is_empty() || host.contains('/') || port.parse::<u16>().is_err() {
            return Err(format!("invalid {what} endpoint {endpoint:?} (expected host:port)"));
        }
        endpoints.push(endpoint.to_string());
    }
    Ok(endpoints)
}

impl RegistryOptions {
    /// The keys of this section, as spelled in `shoal.toml`.
    pub const KEYS: [&'static str; 9] = [
        "registry",
        "namespace",
        "node_ttl",
        "retry_interval",
        "max_retries",
        "operation_timeout",
        "registry_ca",
        "registry_cert",
        "registry_key",
    ];

    /// Layers the configuration over the defaults: `file` (the registry
    /// keys of `shoal.toml`), then `env` (the process environment; only the
    /// registry's `SHOAL_*` names are read), then `flags` (`(name, value)`
    /// pairs, name as `node_ttl` or `node-ttl`). Validates the result.
    pub fn layer(
        file: &toml::Table,
        env: &HashMap<String, String>,
        flags: &[(&str, &str)],
    ) -> Result<Self> {
        let mut options = Self::default();
        for (key, value) in file {
            let label = format!("shoal.toml: {key}");
            let raw = match value {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(i) => i.to_string(),
                other => {
                    return Err(Error::config(
                        label,
                        format!("expected a string or a number, got {other}"),
                    ));
                }
            };
            if !Self::KEYS.contains(&key.as_str()) {
                return Err(Error::config("shoal.toml", format!("unknown key {key:?}")));
            }
            options.set(key, &raw, &label)?;
        }
        for key in Self::KEYS {
            let name = format!("SHOAL_{}", key.to_ascii_uppercase());
            if let Some(raw) = env.get(&name) {
                options.set(key, raw, &name)?;
            }
        }
        for (name, raw) in flags {
            let key = name.trim_start_matches('-').replace('-', "_");
            let label = format!("--{}", key.replace('_', "-"));
            if !Self::KEYS.contains(&key.as_str()) {
                return Err(Error::config(label, "unknown flag"));
            }
            options.set(&key, raw, &label)?;
        }
        options.validate()?;
        Ok(options)
    }

    /// Sets one key from its raw text.
    fn set(&mut self, key: &str, raw: &str, label: &str) -> Result<()> {
        let duration = |raw: &str| {
            humantime::parse_duration(raw.trim()).map_err(|_| {
                Error::config(label, format!("invalid duration {raw:?} (e.g. \"90s\", \"500ms\")"))
            })
        };
        match key {
            "registry" => {
                raw.parse::<RegistryUrl>().map_err(|m| Error::config(label, m))?;
                self.registry = raw.trim().to_string();
            }
            "namespace" => {
                check_namespace(raw).map_err(|m| Error::config(label, m))?;
                self.namespace = raw.to_string();
            }
            "node_ttl" => self.node_ttl = duration(raw)?,
            "retry_interval" => self.retry_interval = duration(raw)?,
            "operation_timeout" => self.operation_timeout = duration(raw)?,
            "registry_ca" | "registry_cert" | "registry_key" => {
                let path = raw.trim();
                let value = (!path.is_empty()).then(|| path.to_string());
                match key {
                    "registry_ca" => self.registry_ca = value,
                    "registry_cert" => self.registry_cert = value,
                    _ => self.registry_key = value,
                }
            }
            "max_retries" => {
                self.max_retries = raw.trim().parse().map_err(|_| {
                    Error::config(label, format!("invalid number {raw:?} (a whole number >= 0)"))
                })?
            }
            other => return Err(Error::config(label, format!("unknown key {other:?}"))),
        }
        Ok(())
    }

    /// Checks the values together; `layer` calls it, and callers that build
    /// options by hand or from serde should too.
    pub fn validate(&self) -> Result<()> {
        if let RegistryUrl::Etcd(endpoints) = self.url()?
            && endpoints.iter().any(|e| e.starts_with("https://"))
            && self.registry_ca.is_none()
        {
            return Err(Error::config(
                "registry",
                "etcds:// needs registry_ca (--registry-ca): the CA that signed etcd's certificates",
            ));
        }
        if self.registry_cert.is_some() != self.registry_key.is_some() {
            return Err(Error::config(
                "registry_cert",
                "registry_cert and registry_key go together",
            ));
        }
        check_namespace(&self.namespace).map_err(|m| Error::config("namespace", m))?;
        if self.node_ttl < Duration::from_secs(1) {
            return Err(Error::config("node_ttl", "must be at least 1s"));
        }
        if self.operation_timeout.is_zero() {
            return Err(Error::config("operation_timeout", "must be positive"));
        }
        Ok(())
    }

    /// The parsed `registry` setting. With `registry_ca`, etcd endpoints
    /// are `https://` whichever of `etcd://` and `etcds://` named them.
    pub fn url(&self) -> Result<RegistryUrl> {
        let url = self.registry.parse().map_err(|m| Error::config("registry", m))?;
        Ok(match url {
            RegistryUrl::Etcd(endpoints) if self.registry_ca.is_some() => RegistryUrl::Etcd(
                endpoints
                    .into_iter()
                    .map(|e| match e.strip_prefix("http://") {
                        Some(rest) => format!("https://{rest}"),
                        None => e,
                    })
                    .collect(),
            ),
            url => url,
        })
    }

    /// Whether etcd is reached over TLS (its certificate files must then be
    /// read and given to [`connect_with`]).
    pub fn wants_tls(&self) -> bool {
        matches!(self.url(), Ok(RegistryUrl::Etcd(e)) if e.iter().any(|e| e.starts_with("https://")))
    }

    /// The options of a node's registration session.
    pub fn session_options(&self) -> SessionOptions {
        SessionOptions { ttl: self.node_ttl }
    }

    /// The embedded registry client's options for `endpoints`.
    pub fn embedded_options(&self, endpoints: Vec<String>) -> EmbeddedOptions {
        EmbeddedOptions {
            endpoints,
            namespace: self.namespace.clone(),
            retry_interval: self.retry_interval,
            max_retries: self.max_retries,
            operation_timeout: self.operation_timeout,
            token: self.token.clone(),
        }
    }

    /// The ZooKeeper backend's options for `endpoints` (the main session's
    /// timeout is the backend's default).
    pub fn zk_options(&self, endpoints: Vec<String>) -> ZkOptions {
        ZkOptions {
            endpoints,
            namespace: self.namespace.clone(),
            retry_interval: self.retry_interval,
            max_retries: self.max_retries,
            operation_timeout: self.operation_timeout,
            ..ZkOptions::default()
        }
    }

    /// The etcd backend's options for `endpoints`.
    pub fn etcd_options(&self, endpoints: Vec<String>) -> EtcdOptions {
        EtcdOptions {
            endpoints,
            namespace: self.namespace.clone(),
            retry_interval: self.retry_interval,
            max_retries: self.max_retries,
            operation_timeout: self.operation_timeout,
            tls: None,
        }
    }
}

fn check_namespace(ns: &str) -> std::result::Result<(), String> {
    let ok = !ns.is_empty()
        && ns.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!("invalid namespace {ns:?}: use letters, digits, '-', '_' or '.'"))
    }
}

/// Builds the registry the options name: a fresh memory registry, or a
/// client of etcd or ZooKeeper that has answered once (so a dead or wrong
/// registry fails start-up, with an error naming the endpoints).
pub async fn connect(options: &RegistryOptions) -> Result<Arc<dyn Registry>> {
    connect_with(options, None).await
}

/// [`connect`], with TLS to etcd: `tls` holds the contents of the files
/// `registry_ca`, `registry_cert` and `registry_key` name (this crate
/// reads no files). Needed when [`RegistryOptions::wants_tls`].
pub async fn connect_with(
    options: &RegistryOptions,
    tls: Option<EtcdTls>,
) -> Result<Arc<dyn Registry>> {
    options.validate()?;
    match options.url()? {
        RegistryUrl::Memory => Ok(Arc::new(MemoryRegistry::new(MemoryOptions::default()))),
        RegistryUrl::Etcd(endpoints) => {
            let etcd = EtcdOptions { tls, ..options.etcd_options(endpoints) };
            Ok(Arc::new(EtcdRegistry::connect(etcd).await?))
        }
        RegistryUrl::ZooKeeper(endpoints) => {
            Ok(Arc::new(ZkRegistry::connect(options.zk_options(endpoints)).await?))
        }
        RegistryUrl::Embedded(endpoints) => {
            Ok(Arc::new(EmbeddedRegistry::connect(options.embedded_options(endpoints)).await?))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn etcd_over_tls_needs_a_ca() {
        let empty = toml::Table::new();
        let e = RegistryOptions::layer(&empty, &env(&[]), &[("registry", "etcds://h1:2379")])
            .expect_err("no CA");
        assert!(e.to_string().contains("etcds:// needs registry_ca"), "{e}");
        let flags = [("registry", "etcds://h1:2379,h2:2379"), ("registry_ca", "/ca.pem")];
        let o = RegistryOptions::layer(&empty, &env(&[]), &flags).expect("valid");
        let https = vec!["https://h1:2379".to_string(), "https://h2:2379".to_string()];
        assert_eq!(o.url().expect("url"), RegistryUrl::Etcd(https.clone()));
        assert!(o.wants_tls());
        // A CA turns TLS on for etcd:// too; from the environment as well.
        let o = RegistryOptions::layer(
            &empty,
            &env(&[("SHOAL_REGISTRY_CA", "/ca.pem")]),
            &[("registry", "etcd://h1:2379,h2:2379")],
        )
        .expect("valid");
        assert_eq!(o.url().expect("url"), RegistryUrl::Etcd(https));
        let e = RegistryOptions::layer(
            &empty,
            &env(&[]),
            &[("registry", "etcds://h1:2379"), ("registry_ca", "/ca.pem"), ("registry_cert", "/c")],
        )
        .expect_err("a certificate without its key");
        assert!(e.to_string().contains("registry_cert and registry_key go together"), "{e}");
        let plain = RegistryOptions::layer(&empty, &env(&[]), &[("registry", "etcd://h1:2379")])
            .expect("valid");
        assert!(!plain.wants_tls());
    }

    fn table(text: &str) -> toml::Table {
        text.parse().expect("test TOML parses")
    }

    #[test]
    fn defaults() {
        let o = RegistryOptions::layer(&toml::Table::new(), &HashMap::new(), &[]).unwrap();
        assert_eq!(o, RegistryOptions::default());
        assert_eq!(o.node_ttl, Duration::from_secs(90));
        assert_eq!(o.namespace, "shoal");
        assert_eq!(o.url().unwrap(), RegistryUrl::Memory);
    }

    #[test]
    fn env_beats_file_and_flags_beat_env() {
        let file = table(
            "registry = \"etcd://h1:2379,h2:2379\"\nnode_ttl = \"30s\"\nmax_retries = 2\nnamespace = \"a\"",
        );
        let env =
            env(&[("SHOAL_NODE_TTL", "45s"), ("SHOAL_NAMESPACE", "b"), ("SHOAL_DATA_DIR", "/x")]);
        let o = RegistryOptions::layer(
            &file,
            &env,
            &[("namespace", "c"), ("--retry-interval", "250ms")],
        )
        .unwrap();
        assert_eq!(o.node_ttl, Duration::from_secs(45));
        assert_eq!(o.namespace, "c");
        assert_eq!(o.max_retries, 2);
        assert_eq!(o.retry_interval, Duration::from_millis(250));
        assert_eq!(
            o.url().unwrap(),
            RegistryUrl::Etcd(vec!["http://h1:2379".into(), "http://h2:2379".into()])
        );
    }

    #[test]
    fn errors_name_the_key() {
        let empty = toml::Table::new();
        let none = HashMap::new();
        let e =
            RegistryOptions::layer(&empty, &env(&[("SHOAL_NODE_TTL", "abc")]), &[]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "SHOAL_NODE_TTL: invalid duration \"abc\" (e.g. \"90s\", \"500ms\")"
        );
        let e = RegistryOptions::layer(&table("nodettl = \"1s\""), &none, &[]).unwrap_err();
        assert_eq!(e.to_string(), "shoal.toml: unknown key \"nodettl\"");
        let e = RegistryOptions::layer(&table("max_retries = \"x\""), &none, &[]).unwrap_err();
        assert!(e.to_string().starts_with("shoal.toml: max_retries: invalid number"), "{e}");
        let e =
            RegistryOptions::layer(&empty, &none, &[("--registry", "zookeeper://x")]).unwrap_err();
        assert!(e.to_string().starts_with("--registry: unsupported registry"), "{e}");
        let e = RegistryOptions::layer(&empty, &none, &[("--registry", "zk://h1:2181,h2")])
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "--registry: ZooKeeper endpoint \"h2\" has no port (expected host:port)"
        );
        let e = RegistryOptions::layer(&empty, &none, &[("--registry", "zk://h1:21810000")])
            .unwrap_err();
        assert!(e.to_string().contains("invalid ZooKeeper endpoint \"h1:21810000\""), "{e}");
        let e = RegistryOptions::layer(&empty, &none, &[("--registry", "zk://h1:2181/shoal")])
            .unwrap_err();
        assert!(e.to_string().contains("the chroot is the namespace setting"), "{e}");
        let e = RegistryOptions::layer(&empty, &none, &[("--registry", "zk://")]).unwrap_err();
        assert!(e.to_string().contains("ZooKeeper endpoint \"\" has no port"), "{e}");
        let e = RegistryOptions::layer(&empty, &none, &[("--bogus", "1")]).unwrap_err();
        assert_eq!(e.to_string(), "--bogus: unknown flag");
        let e = RegistryOptions::layer(&empty, &env(&[("SHOAL_REGISTRY", "etcd://h1")]), &[])
            .unwrap_err();
        assert!(
            e.to_string().starts_with("SHOAL_REGISTRY: etcd endpoint \"h1\" has no port"),
            "{e}"
        );
        let e = RegistryOptions::layer(&table("namespace = \"a/b\""), &none, &[]).unwrap_err();
        assert!(e.to_string().starts_with("shoal.toml: namespace: invalid namespace"), "{e}");
        let e = RegistryOptions::layer(&table("node_ttl = \"10ms\""), &none, &[]).unwrap_err();
        assert_eq!(e.to_string(), "node_ttl: must be at least 1s");
    }

    #[test]
    fn zookeeper_urls_parse_with_the_same_settings_as_etcd() {
        let file = table(
            "registry = \"zk://h1:2181, h2:2182,h3:2183\"\nnamespace = \"prod\"\nnode_ttl = \"30s\"\n\
             retry_interval = \"250ms\"\nmax_retries = 3\noperation_timeout = \"2s\"",
        );
        let o = RegistryOptions::layer(&file, &HashMap::new(), &[]).unwrap();
        let endpoints = vec!["h1:2181".to_string(), "h2:2182".into(), "h3:2183".into()];
        assert_eq!(o.url().unwrap(), RegistryUrl::ZooKeeper(endpoints.clone()));
        assert_eq!(o.session_options().ttl, Duration::from_secs(30));
        assert_eq!(
            o.zk_options(endpoints.clone()),
            ZkOptions {
                endpoints,
                namespace: "prod".into(),
                retry_interval: Duration::from_millis(250),
                max_retries: 3,
                operation_timeout: Duration::from_secs(2),
                session_timeout: Duration::from_secs(15),
            }
        );
    }

    #[test]
    fn serde_uses_human_durations_and_rejects_unknown_keys() {
        let o: RegistryOptions =
            toml::from_str("node_ttl = \"2m\"\nretry_interval = \"500ms\"").unwrap();
        assert_eq!(o.node_ttl, Duration::from_secs(120));
        assert!(toml::from_str::<RegistryOptions>("nodettl = \"1s\"").is_err());
        let text = toml::to_string(&RegistryOptions::default()).unwrap();
        assert!(text.contains("node_ttl = \"1m 30s\""), "{text}");
    }

    #[tokio::test]
    async fn connect_builds_memory() {
        let registry = connect(&RegistryOptions::default()).await.unwrap();
        assert_eq!(registry.describe(), "memory");
    }
}
