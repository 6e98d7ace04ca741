//! A node, assembled: [`Node::start`] opens the store and the replication
//! engine, starts the loop that follows the placement map and the
//! registration, and hands back the engine for the HTTP API and the routes
//! other nodes call. The binary only parses configuration and calls it.
//!
//! Shutdown order: the caller turns `shutdown` true and stops serving
//! HTTP; [`Node::stop`] then waits for the map-following loop and the
//! registration to end and drops the engine, whose loop stops, whose apply
//! thread syncs every state machine, and whose log writer writes what is
//! queued.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use shoal_registry::Registry;
use shoal_storage::Store;
use shoal_types::api::{NodeInfo, NodeReport};
use shoal_types::{Error, NodeId};
use tokio::sync::watch;

use crate::Engine;
use crate::engine::MultiRaft;
use crate::registration::{self, RegistrationOptions};
use crate::replica::BucketStateMachine;
use crate::replication::{self, Directory, ReplicationOptions};

/// Raft timings and replication limits (`[raft]` in shoal.toml).
pub use shoal_raft::Settings as RaftSettings;

/// Everything a node is started with.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// The node's id.
    pub node_id: NodeId,
    /// Where the node keeps its data; `None` keeps everything in memory.
    pub data_dir: Option<PathBuf>,
    /// The store's limits.
    pub store: shoal_storage::Options,
    /// Raft timings and replication limits.
    pub raft: RaftSettings,
    /// The cluster's bearer token (node-to-node requests carry it).
    pub token: String,
    /// TLS for `https://` peers (the cluster CA and this node's
    /// certificate); `None` speaks plain HTTP only.
    pub tls: Option<std::sync::Arc<shoal_tls::ClientConfig>>,
    /// What the node registers (`registered_at` is filled in).
    pub info: NodeInfo,
    /// The registration's lease TTL.
    pub node_ttl: Duration,
    /// The wait before retrying after a registry failure.
    pub retry_interval: Duration,
    /// How long the data of a replica that left is kept.
    pub remove_after: Duration,
    /// Groups handed to their preferred leader per pass of the map loop.
    pub leader_moves_per_pass: usize,
}

/// A running node.
pub struct Node {
    engine: Arc<Engine>,
    routes: axum::Router,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    _scratch: Option<tempfile::TempDir>,
}

impl Node {
    /// Claims the node id in the registry (waiting up to twice the TTL for
    /// another data directory's registration to expire), opens the store and
    /// the engine, and starts following the map and registering. Runs until
    /// `shutdown` turns true.
    pub async fn start(
        config: NodeConfig,
        registry: Arc<dyn Registry>,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Node, Error> {
        let wait = config.node_ttl * 2 + Duration::from_secs(1);
        registration::claim(&registry, &config.node_id, &config.info.instance, wait)
            .await
            .map_err(Error::Conflict)?;
        let store = Arc::new(Store::open(config.data_dir.as_deref(), config.store.clone())?);
        let (raft_dir, scratch) = match &config.data_dir {
            Some(d) => (d.join("raft"), None),
            // The log has no in-memory mode: a memory node keeps it in a
            // temporary directory that goes away with it.
            None => {
                let tmp = tempfile::tempdir()
                    .map_err(|e| Error::Io(format!("cannot make a scratch directory: {e}")))?;
                (tmp.path().to_path_buf(), Some(tmp))
            }
        };
        let mut options = shoal_raft::Options::new(shoal_raft::raft_id(&config.node_id), &raft_dir);
        options.settings = config.raft.clone();
        options.token = config.token.clone();
        options.tls = config.tls.clone();
        let s = store.clone();
        let factory =
            Arc::new(move |g: u8| BucketStateMachine::new(s.clone(), shoal_types::BucketId(g)));
        let multi: MultiRaft = shoal_raft::MultiRaft::start(options, factory)
            .map_err(|e| Error::Unavailable(format!("cannot start replication: {e}")))?;
        // Data of another cluster's groups must not join this one.
        if let Err(e) =
            replication::check_groups(registry.as_ref(), &multi, &store, &config.node_id).await
        {
            // The engine's threads are joined when it goes: not on a worker.
            let _ = tokio::task::spawn_blocking(move || drop(multi)).await;
            return Err(e);
        }
        let (directory_tx, directory_rx) = watch::channel(Directory::default());
        let (report_tx, report_rx) = watch::channel(NodeReport::default());
        let reconcile = tokio::spawn(replication::reconcile(
            registry.clone(),
            multi.clone(),
            store.clone(),
            ReplicationOptions {
                node_id: config.node_id.clone(),
                interval: Duration::from_secs(1),
                leader_moves_per_pass: config.leader_moves_per_pass,
                remove_after: config.remove_after,
            },
            directory_tx,
            report_tx,
            shutdown.clone(),
        ));
        let registration = tokio::spawn(registration::run(
            registry,
            RegistrationOptions {
                node_id: config.node_id.clone(),
                info: config.info.clone(),
                ttl: config.node_ttl,
                retry_interval: config.retry_interval,
            },
            report_rx,
            shutdown,
        ));
        let routes = multi.transport().router();
        let engine = Arc::new(Engine::new(store, multi, directory_rx, config.node_id));
        Ok(Node { engine, routes, tasks: vec![reconcile, registration], _scratch: scratch })
    }

    /// The write and read paths, for the HTTP API.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// The routes other nodes call (peer connections, snapshots).
    pub fn routes(&self) -> axum::Router {
        self.routes.clone()
    }

    /// Waits (up to `within`) until this node hosts `groups` groups and each
    /// knows a leader: a standalone server announces itself only once every
    /// bucket can take writes.
    pub async fn wait_until_leading(&self, groups: usize, within: Duration) -> Result<(), Error> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let multi = self.engine.multi();
            let hosted = multi.hosted();
            if hosted.len() >= groups && hosted.iter().all(|g| multi.leader(*g).is_some()) {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(Error::Unavailable(format!(
                    "only {} of {groups} buckets were ready after {within:?}",
                    hosted.len()
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for the node's tasks to end (after `shutdown` turned true),
    /// then stops the engine.
    pub async fn stop(self) {
        for t in self.tasks {
            let _ = t.await;
        }
        let engine = self.engine;
        // The engine's threads are joined when its last handle goes; that
        // blocks, so not on a runtime worker.
        let _ = tokio::task::spawn_blocking(move || drop(engine)).await;
    }
}
