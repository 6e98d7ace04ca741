//! Test-only Raft storage and in-process nodes for the network tests: an
//! in-memory log store, a state machine that records the commands it applied
//! and snapshots them as a directory of files, and a node that serves the
//! network's router on 127.0.0.1 from a runtime of its own (so that killing
//! it closes its sockets the way a dead process would).

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::serve::ListenerExt;
use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, Config, Entry, EntryPayload, LogId, OptionalSend, RaftLogId, RaftLogReader,
    RaftSnapshotBuilder, SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use serde::{Deserialize, Serialize};
use shoal_raft::network::{Dispatch, Network, NetworkOptions, router};
use shoal_raft::{Raft, Response, SnapshotFiles, TypeConfig};

pub const TOKEN: &str = "cluster-token";

/// The bytes of padding every snapshot carries, so transfers take several
/// chunks.
pub const PADDING: usize = 600 << 10;

fn io_err(e: impl std::fmt::Display) -> StorageError<u64> {
    StorageIOError::write(&std::io::Error::other(e.to_string())).into()
}

#[derive(Default)]
struct LogData {
    vote: Option<Vote<u64>>,
    committed: Option<LogId<u64>>,
    last_purged: Option<LogId<u64>>,
    log: BTreeMap<u64, Entry<TypeConfig>>,
}

/// One group's log, in memory.
#[derive(Clone, Default)]
pub struct MemLog(Arc<Mutex<LogData>>);

impl MemLog {
    fn lock(&self) -> std::sync::MutexGuard<'_, LogData> {
        self.0.lock().expect("log lock")
    }
}

impl RaftLogReader<TypeConfig> for MemLog {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<u64>> {
        Ok(self.lock().log.range(range).map(|(_, e)| e.clone()).collect())
    }
}

impl RaftLogStorage<TypeConfig> for MemLog {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<u64>> {
        let d = self.lock();
        let last = d.log.values().next_back().map(|e| *e.get_log_id()).or(d.last_purged);
        Ok(LogState { last_purged_log_id: d.last_purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError<u64>> {
        self.lock().vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError<u64>> {
        Ok(self.lock().vote)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<u64>>,
    ) -> Result<(), StorageError<u64>> {
        self.lock().committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<u64>>, StorageError<u64>> {
        Ok(self.lock().committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<u64>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        {
            let mut d = self.lock();
            for e in entries {
                d.log.insert(e.get_log_id().index, e);
            }
        }
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        self.lock().log.split_off(&log_id.index);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        let mut d = self.lock();
        d.last_purged = Some(log_id);
        d.log = d.log.split_off(&(log_id.index + 1));
        Ok(())
    }
}

/// What the state machine holds: every command applied, in order.
#[derive(Clone, Default, Debug, PartialEq, Serialize, Deserialize)]
pub struct SmData {
    pub last_applied: Option<LogId<u64>>,
    pub membership: StoredMembership<u64, BasicNode>,
    pub commands: Vec<Vec<u8>>,
}

/// One group's state machine.
pub struct SmState {
    pub data: Mutex<SmData>,
    current: Mutex<Option<(SnapshotMeta<u64, BasicNode>, PathBuf)>>,
    dir: PathBuf,
    next: AtomicU64,
    /// Snapshots installed from a leader.
    pub installed: AtomicU64,
}

#[derive(Clone)]
pub struct MemSm(pub Arc<SmState>);

impl MemSm {
    pub fn new(dir: PathBuf) -> MemSm {
        MemSm(Arc::new(SmState {
            data: Mutex::default(),
            current: Mutex::default(),
            dir,
            next: AtomicU64::new(0),
            installed: AtomicU64::new(0),
        }))
    }

    pub fn data(&self) -> SmData {
        self.0.data.lock().expect("sm lock").clone()
    }

    fn fresh(&self, kind: &str) -> PathBuf {
        let n = self.0.next.fetch_add(1, Ordering::Relaxed);
        self.0.dir.join(format!("{kind}-{n}"))
    }
}

fn write_snapshot(dir: &Path, data: &SmData) -> std::io::Result<()> {
    std::fs::create_dir_all(dir.join("blob"))?;
    std::fs::write(dir.join("state.json"), serde_json::to_vec(data)?)?;
    let padding: Vec<u8> = (0..PADDING).map(|i| (i % 251) as u8).collect();
    std::fs::write(dir.join("blob/padding.bin"), padding)?;
    std::fs::write(dir.join("empty"), b"")
}

fn read_snapshot(dir: &Path) -> std::io::Result<SmData> {
    let padding = std::fs::read(dir.join("blob/padding.bin"))?;
    let expected: Vec<u8> = (0..PADDING).map(|i| (i % 251) as u8).collect();
    if padding != expected || !dir.join("empty").exists() {
        return Err(std::io::Error::other("snapshot files damaged"));
    }
    Ok(serde_json::from_slice(&std::fs::read(dir.join("state.json"))?)?)
}

impl RaftSnapshotBuilder<TypeConfig> for MemSm {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<u64>> {
        let data = self.data();
        let dir = self.fresh("built");
        write_snapshot(&dir, &data).map_err(io_err)?;
        let meta = SnapshotMeta {
            last_log_id: data.last_applied,
            last_membership: data.membership.clone(),
            snapshot_id: dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        };
        *self.0.current.lock().expect("lock") = Some((meta.clone(), dir.clone()));
        Ok(Snapshot { meta, snapshot: Box::new(SnapshotFiles { dir }) })
    }
}

impl RaftStateMachine<TypeConfig> for MemSm {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<u64>>, StoredMembership<u64, BasicNode>), StorageError<u64>> {
        let d = self.data();
        Ok((d.last_applied, d.membership))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError<u64>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut d = self.0.data.lock().expect("sm lock");
        let mut out = Vec::new();
        for e in entries {
            d.last_applied = Some(e.log_id);
            match e.payload {
                EntryPayload::Blank => {}
                EntryPayload::Normal(req) => d.commands.push(req.0),
                EntryPayload::Membership(m) => {
                    d.membership = StoredMembership::new(Some(e.log_id), m)
                }
            }
            out.push(Response(d.commands.len().to_string().into_bytes()));
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotFiles>, StorageError<u64>> {
        // Only for openraft's chunked transfer, which this network never uses.
        let dir = self.fresh("chunked");
        std::fs::create_dir_all(&dir).map_err(io_err)?;
        Ok(Box::new(SnapshotFiles { dir }))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, BasicNode>,
        snapshot: Box<SnapshotFiles>,
    ) -> Result<(), StorageError<u64>> {
        let data = read_snapshot(&snapshot.dir).map_err(io_err)?;
        *self.0.data.lock().expect("sm lock") = data;
        // Keep the files as the current snapshot, by moving them away from
        // the network's incoming directory.
        let keep = self.fresh("received");
        std::fs::rename(&snapshot.dir, &keep).map_err(io_err)?;
        *self.0.current.lock().expect("lock") = Some((meta.clone(), keep));
        self.0.installed.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<u64>> {
        let current = self.0.current.lock().expect("lock").clone();
        Ok(current.map(|(meta, dir)| Snapshot { meta, snapshot: Box::new(SnapshotFiles { dir }) }))
    }
}

struct NodeDispatch {
    rafts: HashMap<u8, Raft>,
    incoming: PathBuf,
}

impl Dispatch for NodeDispatch {
    fn raft(&self, group: u8) -> Option<Raft> {
        self.rafts.get(&group).cloned()
    }
    fn snapshot_dir(&self) -> PathBuf {
        self.incoming.clone()
    }
}

/// A node: its own runtime, server, network and groups.
pub struct TestNode {
    pub id: u64,
    pub addr: String,
    pub network: Network,
    pub rafts: HashMap<u8, Raft>,
    pub sms: HashMap<u8, MemSm>,
    pub incoming: PathBuf,
    runtime: Option<tokio::runtime::Runtime>,
    _dir: tempfile::TempDir,
}

/// Raft settings for tests: fast elections, and snapshots with purging so
/// that a late learner must be sent a snapshot.
pub fn config() -> Arc<Config> {
    config_with(100, 300, 600)
}

/// [`config`] with other timings, in milliseconds.
pub fn config_with(heartbeat: u64, election_min: u64, election_max: u64) -> Arc<Config> {
    let config = Config {
        heartbeat_interval: heartbeat,
        election_timeout_min: election_min,
        election_timeout_max: election_max,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(20),
        max_in_snapshot_log_to_keep: 0,
        purge_batch_size: 1,
        ..Config::default()
    };
    Arc::new(config.validate().expect("valid config"))
}

impl TestNode {
    /// Starts node `id` hosting `groups` (uninitialized).
    pub async fn start(id: u64, groups: std::ops::Range<u8>) -> TestNode {
        Self::start_with(id, groups.collect(), config()).await
    }

    /// [`TestNode::start`] with other Raft settings.
    pub async fn start_with(id: u64, groups: Vec<u8>, config: Arc<Config>) -> TestNode {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .thread_name(format!("node-{id}"))
            .build()
            .expect("runtime");
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().to_path_buf();
        let incoming = root.join("incoming");
        let incoming2 = incoming.clone();
        let started = runtime.spawn(async move {
            let options = NetworkOptions { token: TOKEN.into(), ..NetworkOptions::default() };
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = format!("http://{}", listener.local_addr().expect("addr"));
            let network = Network::new(options.clone()).expect("network");
            let mut rafts = HashMap::new();
            let mut sms = HashMap::new();
            for g in groups {
                let sm = MemSm::new(root.join(format!("sm-{g}")));
                std::fs::create_dir_all(root.join(format!("sm-{g}"))).expect("mkdir");
                let raft = Raft::new(
                    id,
                    config.clone(),
                    network.factory(g),
                    MemLog::default(),
                    sm.clone(),
                )
                .await
                .expect("raft");
                rafts.insert(g, raft);
                sms.insert(g, sm);
            }
            let dispatch = Arc::new(NodeDispatch { rafts: rafts.clone(), incoming: incoming2 });
            let listener = listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            tokio::spawn(async move { axum::serve(listener, router(dispatch, options)).await });
            (addr, network, rafts, sms)
        });
        let (addr, network, rafts, sms) = started.await.expect("node started");
        TestNode { id, addr, network, rafts, sms, incoming, runtime: Some(runtime), _dir: dir }
    }

    pub fn node(&self) -> BasicNode {
        BasicNode::new(&self.addr)
    }

    /// Stops everything at once, as a killed process would: its sockets close.
    pub fn kill(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }

    /// Whether it was killed.
    pub fn is_dead(&self) -> bool {
        self.runtime.is_none()
    }

    /// Runs `f` on the node's runtime (where its groups live).
    pub fn spawn<F>(&self, f: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.runtime.as_ref().expect("node is alive").spawn(f)
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `cond` every 20 ms until it holds or `limit` passes.
pub async fn eventually(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = tokio::time::Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
