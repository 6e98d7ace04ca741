//! A cluster of real `shoal node` and `shoal monitor` processes on a real
//! registry: etcd by default, ZooKeeper, or Shoal's embedded registry (real
//! `shoal meta` processes), so that scenarios written once run on every
//! backend ([`Backend`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_client::Client;
use shoal_registry::testing::etcd_server::EtcdCluster;
use shoal_registry::testing::zookeeper_server::ZkEnsemble;
use shoal_registry::{Registry, keys};
use shoal_types::api::ClusterStatus;
use shoal_types::placement::PlacementMap;

use super::Process;
use super::meta::MetaGroup;

pub const TOKEN: &str = "cluster-test-token";
/// Short enough for tests, long enough for etcd (which rounds leases to seconds).
pub const TTL: &str = "3s";
pub const TTL_SECS: u64 = 3;

/// The registry backend a cluster runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// A real etcd (Debian's etcd-server).
    Etcd,
    /// A real ZooKeeper (Debian's zookeeper package).
    ZooKeeper,
    /// Shoal's embedded registry: `shoal meta` processes.
    Embedded,
}

impl Backend {
    /// What the backend's `describe()` starts with, e.g. in cluster status.
    pub fn scheme(self) -> &'static str {
        match self {
            Backend::Etcd => "etcd://",
            Backend::ZooKeeper => "zk://",
            Backend::Embedded => "shoal://",
        }
    }
}

/// The registry processes a cluster runs on.
pub enum RegistryServer {
    Etcd(EtcdCluster),
    ZooKeeper(ZkEnsemble),
    Embedded(MetaGroup),
}

impl RegistryServer {
    /// The `--registry` value naming every member.
    pub fn registry_url(&self) -> String {
        match self {
            RegistryServer::Etcd(etcd) => etcd.registry_url(),
            RegistryServer::ZooKeeper(zk) => zk.registry_url(),
            RegistryServer::Embedded(meta) => meta.registry_url(),
        }
    }

    /// The index of the member that leads the registry's own quorum.
    pub async fn leader(&self) -> Option<usize> {
        match self {
            RegistryServer::Etcd(etcd) => etcd.leader().await,
            RegistryServer::ZooKeeper(zk) => zk.leader(),
            RegistryServer::Embedded(meta) => meta.leader().await,
        }
    }

    /// Kills member `i` with SIGKILL.
    pub fn kill(&mut self, i: usize) {
        match self {
            RegistryServer::Etcd(etcd) => etcd.kill(i),
            RegistryServer::ZooKeeper(zk) => zk.kill(i),
            RegistryServer::Embedded(meta) => meta.kill(i),
        }
    }
}

pub struct Cluster {
    pub server: RegistryServer,
    pub dir: tempfile::TempDir,
    pub nodes: BTreeMap<String, Process>,
    pub monitors: Vec<Process>,
}

impl Cluster {
    pub async fn new() -> Cluster {
        Cluster::on(RegistryServer::Etcd(EtcdCluster::single().await))
    }

    /// A cluster whose registry is one server of `backend` (for the
    /// embedded registry, a group of three: it is what one would run).
    pub async fn on_backend(backend: Backend) -> Cluster {
        match backend {
            Backend::Etcd => Cluster::new().await,
            Backend::ZooKeeper => Cluster::with_zookeeper(1).await,
            Backend::Embedded => Cluster::with_embedded(3),
        }
    }

    /// A cluster whose registry is an embedded one of `members` `shoal
    /// meta` processes, in the cluster's directory.
    pub fn with_embedded(members: usize) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let meta = MetaGroup::start(dir.path(), members);
        Cluster { dir, ..Cluster::on(RegistryServer::Embedded(meta)) }
    }

    /// A cluster whose registry is an etcd of `members` members.
    pub async fn with_etcd(members: usize) -> Cluster {
        Cluster::on(RegistryServer::Etcd(EtcdCluster::start(members).await))
    }

    /// A cluster whose registry is a ZooKeeper ensemble of `servers`
    /// servers (standalone for one).
    pub async fn with_zookeeper(servers: usize) -> Cluster {
        Cluster::on(RegistryServer::ZooKeeper(ZkEnsemble::start(servers).await))
    }

    fn on(server: RegistryServer) -> Cluster {
        Cluster {
            server,
            dir: tempfile::tempdir().expect("tempdir"),
            nodes: BTreeMap::new(),
            monitors: Vec::new(),
        }
    }

    /// A cluster whose registry is a quorum of three members of `backend`.
    pub async fn with_three(backend: Backend) -> Cluster {
        match backend {
            Backend::Etcd => Cluster::with_etcd(3).await,
            Backend::ZooKeeper => Cluster::with_zookeeper(3).await,
            Backend::Embedded => Cluster::with_embedded(3),
        }
    }

    pub fn common(&self) -> Vec<String> {
        [
            "--registry",
            &self.server.registry_url(),
            "--namespace",
            "clustertest",
            "--node-ttl",
            TTL,
            "--retry-interval",
            "200ms",
            "--admin-token",
            TOKEN,
        ]
        .map(String::from)
        .to_vec()
    }

    pub fn start_node(&mut self, id: &str) {
        let data = self.dir.path().join(id).join("data");
        self.start_node_on(id, &data);
    }

    /// Starts node `id` on the data directory `data`.
    pub fn start_node_on(&mut self, id: &str, data: &std::path::Path) {
        let dir = self.dir.path().join(id);
        self.nodes.insert(id.to_string(), Process::start(&dir, &self.node_args(id, data)));
    }

    /// The arguments of `shoal node` for node `id` on `data`.
    pub fn node_args(&self, id: &str, data: &std::path::Path) -> Vec<String> {
        let mut args: Vec<String> =
            ["node", "--node-id", id, "--data-dir"].map(String::from).to_vec();
        args.push(data.display().to_string());
        args.extend(self.common());
        args
    }

    /// Starts node `id` listening on `host`, as user `uid` if given.
    pub fn start_node_as(&mut self, id: &str, host: &str, uid: Option<u32>) {
        let dir = self.dir.path().join(id);
        let mut args: Vec<String> =
            ["node", "--node-id", id, "--data-dir"].map(String::from).to_vec();
        args.push(dir.join("data").display().to_string());
        args.extend(self.common());
        self.nodes.insert(id.to_string(), Process::start_as(&dir, &args, host, uid));
    }

    pub fn start_monitor(&mut self, extra: &[&str]) {
        let n = self.monitors.len();
        let dir = self.dir.path().join(format!("monitor-{n}"));
        let mut args: Vec<String> =
            ["monitor", "--monitor-id", &format!("m{n}"), "--replication-factor", "3"]
                .map(String::from)
                .to_vec();
        args.extend(extra.iter().map(|s| s.to_string()));
        args.extend(self.common());
        self.monitors.push(Process::start(&dir, &args));
    }

    /// Starts nodes n1, n2 and n3 and one monitor (replication factor 3).
    pub fn start_three_nodes(&mut self) {
        for n in ["n1", "n2", "n3"] {
            self.start_node(n);
        }
        self.start_monitor(&[]);
    }

    /// Waits (bounded) until the map gives every bucket three replicas.
    pub async fn wait_three_replicas(&self) {
        self.wait_map("three replicas per bucket", Duration::from_secs(60), |m| {
            m.buckets.iter().all(|b| b.len() == 3)
        })
        .await;
    }

    /// Starts a proxy in its own directory (`proxy-{n}`), with `extra` flags
    /// before the cluster's common ones.
    pub fn start_proxy(&self, n: usize, extra: &[&str]) -> Process {
        let mut args = vec!["proxy".to_string()];
        args.extend(extra.iter().map(|s| s.to_string()));
        args.extend(self.common());
        Process::start(&self.dir.path().join(format!("proxy-{n}")), &args)
    }

    /// A client of the cluster's registry, in the cluster's namespace.
    pub async fn registry(&self) -> Arc<dyn Registry> {
        match &self.server {
            RegistryServer::Etcd(etcd) => Arc::new(etcd.registry("clustertest").await),
            RegistryServer::ZooKeeper(zk) => Arc::new(zk.registry("clustertest").await),
            RegistryServer::Embedded(meta) => Arc::new(meta.registry("clustertest").await),
        }
    }

    pub async fn map(&self) -> Option<PlacementMap> {
        let kv = self.registry().await.get(keys::PLACEMENT).await.expect("get map")?;
        Some(PlacementMap::decode(&kv.value).expect("decode map"))
    }

    /// Waits (bounded) for a map that satisfies `pred`.
    pub async fn wait_map(
        &self,
        what: &str,
        within: Duration,
        pred: impl Fn(&PlacementMap) -> bool,
    ) -> PlacementMap {
        let deadline = Instant::now() + within;
        loop {
            if let Some(m) = self.map().await.filter(|m| pred(m)) {
                return m;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; map: {:?}\n{}",
                self.map().await.map(|m| m.replica_counts()),
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A client of every node, with the admin token.
    pub fn nodes_client(&self) -> Client {
        let urls: Vec<String> = self.nodes.values().map(|p| p.url.clone()).collect();
        Client::with_endpoints(&urls, Some(TOKEN.into())).expect("client")
    }

    pub async fn status(&self, via: &Process) -> ClusterStatus {
        Client::new(&via.url, Some(TOKEN.into()))
            .expect("client")
            .cluster_status()
            .await
            .expect("status")
    }

    /// A base's checksum, once every node answers the same (bounded);
    /// a node without the base counts as differing.
    pub async fn equal_checksums(&self, base: &str) -> String {
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut sums = BTreeMap::new();
            for (name, p) in &self.nodes {
                sums.insert(name.clone(), replica_checksum(&http, &p.url, base).await);
            }
            let distinct: std::collections::BTreeSet<&String> = sums.values().collect();
            if distinct.len() == 1 && !sums.values().any(|s| s == "?") {
                return sums.into_values().next().expect("a node");
            }
            assert!(Instant::now() < deadline, "base {base}'s replicas differ: {sums:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Copies every process's output to a new directory under the temporary
    /// directory, named `shoal-{what}-{seed}-{time}`, that outlives the
    /// test; answers that directory.
    pub fn keep_logs(&self, what: &str, seed: u64) -> std::path::PathBuf {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        let to = std::env::temp_dir().join(format!("shoal-{what}-{seed}-{now}"));
        for p in self.monitors.iter().chain(self.nodes.values()).chain(self.meta_members()) {
            let name = p.dir.file_name().expect("name").to_string_lossy().to_string();
            let dir = to.join(&name);
            let _ = std::fs::create_dir_all(&dir);
            if let Ok(d) = std::fs::read_dir(&p.dir) {
                for e in d.flatten() {
                    let f = e.file_name().to_string_lossy().to_string();
                    if f.starts_with("stdout.") || f.starts_with("stderr.") {
                        let _ = std::fs::copy(e.path(), dir.join(&f));
                    }
                }
            }
        }
        to
    }

    pub fn logs(&self) -> String {
        self.monitors
            .iter()
            .chain(self.nodes.values())
            .chain(self.meta_members())
            .map(|p| p.logs())
            .collect()
    }

    /// The embedded registry's processes, if the cluster runs on one.
    fn meta_members(&self) -> impl Iterator<Item = &Process> {
        match &self.server {
            RegistryServer::Embedded(meta) => meta.members.iter(),
            _ => [].iter(),
        }
    }
}

/// The checksum of `base`'s replica on the node at `url`
/// (`consistency=none`), or `?` if the node does not answer one.
pub async fn replica_checksum(http: &reqwest::Client, url: &str, base: &str) -> String {
    let answer = http
        .get(format!("{url}/v1/bases/{base}/checksum?consistency=none"))
        .bearer_auth(TOKEN)
        .send()
        .await;
    let v: serde_json::Value = match answer {
        Ok(a) => a.json().await.unwrap_or_default(),
        Err(_) => serde_json::Value::Null,
    };
    v["checksum"].as_str().unwrap_or("?").to_string()
}

/// Runs the scenario `async fn $scenario(backend: Backend)` on every
/// registry backend, as the tests `$scenario::etcd`, `$scenario::zookeeper`
/// and `$scenario::embedded`, with the given test attribute.
#[macro_export]
macro_rules! on_every_backend {
    (#[$attr:meta] $scenario:ident) => {
        mod $scenario {
            use super::common::cluster::Backend;

            #[$attr]
            async fn etcd() {
                super::$scenario(Backend::Etcd).await;
            }

            #[$attr]
            async fn zookeeper() {
                super::$scenario(Backend::ZooKeeper).await;
            }

            #[$attr]
            async fn embedded() {
                super::$scenario(Backend::Embedded).await;
            }
        }
    };
}
