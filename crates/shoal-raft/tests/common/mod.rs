//! An in-process cluster for engine tests: every node is a real
//! [`MultiRaft`] with its own data directory, log and apply thread, serving
//! its peer routes on 127.0.0.1; nodes reach each other through relays the
//! test can cut, so a partition is real (connections refused and reset).
//! The state machine is a small key-value map, durable on sync, whose
//! contents every test can read.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shoal_raft::{GroupError, MultiRaft, Options, RaftNodeId, StateMachine};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// What every replica's state machine holds: (node, group) -> key -> value.
pub type States = Arc<Mutex<BTreeMap<(u64, u8), BTreeMap<String, String>>>>;

/// A key-value state machine. Commands are `key=value`; the answer is the
/// value the key had before. Its state is kept in a file on sync, with the
/// index it holds, so a restart replays only what came after.
pub struct Kv {
    node: u64,
    group: u8,
    file: PathBuf,
    applied: u64,
    data: BTreeMap<String, String>,
    states: States,
}

impl Kv {
    fn open(node: u64, group: u8, dir: &Path, states: States) -> Kv {
        let file = dir.join(format!("kv-{group:02x}"));
        let (applied, data) =
            std::fs::read_to_string(&file).ok().map(|text| parse(&text)).unwrap_or_default();
        states.lock().unwrap().insert((node, group), data.clone());
        Kv { node, group, file, applied, data, states }
    }

    fn publish(&self) {
        self.states.lock().unwrap().insert((self.node, self.group), self.data.clone());
    }
}

fn parse(text: &str) -> (u64, BTreeMap<String, String>) {
    let mut lines = text.lines();
    let applied = lines.next().and_then(|l| l.parse().ok()).unwrap_or(0);
    let data = lines.filter_map(|l| l.split_once('=')).map(|(k, v)| (k.into(), v.into())).collect();
    (applied, data)
}

fn render(applied: u64, data: &BTreeMap<String, String>) -> String {
    let mut text = format!("{applied}\n");
    for (k, v) in data {
        text.push_str(&format!("{k}={v}\n"));
    }
    text
}

impl StateMachine for Kv {
    type Answer = Option<String>;

    fn apply(&mut self, index: u64, command: &[u8]) -> Option<String> {
        let text = String::from_utf8_lossy(command);
        let (k, v) = text.split_once('=').unwrap_or((&text, ""));
        if index <= self.applied {
            return self.data.get(k).cloned();
        }
        self.applied = index;
        let old = self.data.insert(k.to_string(), v.to_string());
        self.publish();
        old
    }

    fn sync(&mut self) -> std::io::Result<()> {
        let tmp = self.file.with_extension("tmp");
        std::fs::write(&tmp, render(self.applied, &self.data))?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, &self.file)
    }

    fn snapshot(&mut self, dir: &Path) -> std::io::Result<()> {
        std::fs::write(dir.join("kv"), render(self.applied, &self.data))
    }

    fn restore(&mut self, dir: &Path) -> std::io::Result<()> {
        let (applied, data) = parse(&std::fs::read_to_string(dir.join("kv"))?);
        self.applied = applied;
        self.data = data;
        self.publish();
        self.sync()
    }
}

/// A TCP relay from a local port to `target`, which the test can cut:
/// while cut, it refuses connections and resets the ones it carries.
pub struct Relay {
    pub addr: String,
    cut: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl Relay {
    async fn start(target: std::net::SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let cut = Arc::new(AtomicBool::new(false));
        let flag = cut.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else { return };
                if flag.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let flag = flag.clone();
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(target).await else { return };
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    let (mut ri, mut wi) = inbound.into_split();
                    let (mut ro, mut wo) = outbound.into_split();
                    let watch = async {
                        while !flag.load(Ordering::SeqCst) {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    };
                    tokio::select! {
                        _ = tokio::io::copy(&mut ri, &mut wo) => {}
                        _ = tokio::io::copy(&mut ro, &mut wi) => {}
                        _ = watch => {}
                    }
                });
            }
        });
        Relay { addr, cut, task }
    }

    pub fn set_cut(&self, cut: bool) {
        self.cut.store(cut, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One node of the test cluster.
pub struct Node {
    pub id: u64,
    pub dir: PathBuf,
    pub multi: Option<MultiRaft<Kv>>,
    server: Option<JoinHandle<()>>,
    pub listen: std::net::SocketAddr,
}

/// Raft timings short enough for tests.
pub fn fast_options(id: u64, dir: &Path) -> Options {
    let mut o = Options::new(id, dir);
    o.settings.tick = Duration::from_millis(20);
    o.settings.heartbeat_ticks = 2;
    o.settings.election_ticks = 10;
    o.settings.leader_wait = Duration::from_secs(2);
    o.settings.checkpoint_interval = Duration::from_millis(100);
    o.token = "test-token".into();
    o
}

/// Makes a node's options from its id and directory.
pub type MakeOptions = dyn Fn(u64, &Path) -> Options + Send + Sync;

/// Nodes 1..=n, each reaching each other through its own relay.
pub struct Cluster {
    pub nodes: BTreeMap<u64, Node>,
    /// (from, to) -> the relay `from` uses to reach `to`.
    pub relays: HashMap<(u64, u64), Relay>,
    pub states: States,
    pub options: Box<MakeOptions>,
    _root: tempfile::TempDir,
}

impl Cluster {
    /// Starts `n` nodes with `options`.
    pub async fn start(
        n: u64,
        options: impl Fn(u64, &Path) -> Options + Send + Sync + 'static,
    ) -> Cluster {
        let root = tempfile::tempdir().unwrap();
        let mut c = Cluster {
            nodes: BTreeMap::new(),
            relays: HashMap::new(),
            states: States::default(),
            options: Box::new(options),
            _root: root,
        };
        for id in 1..=n {
            c.add_node(id).await;
        }
        c
    }

    /// Adds (and starts) node `id`, with relays to and from every node.
    pub async fn add_node(&mut self, id: u64) {
        let dir = self._root.path().join(format!("n{id}"));
        std::fs::create_dir_all(&dir).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let listen = listener.local_addr().unwrap();
        drop(listener);
        self.nodes.insert(id, Node { id, dir, multi: None, server: None, listen });
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for &other in &ids {
            if other == id {
                continue;
            }
            for (from, to) in [(id, other), (other, id)] {
                if !self.relays.contains_key(&(from, to)) {
                    let target = self.nodes[&to].listen;
                    self.relays.insert((from, to), Relay::start(target).await);
                }
            }
        }
        self.start_node(id).await;
        self.wire();
    }

    /// Starts node `id` (again) on its data directory.
    pub async fn start_node(&mut self, id: u64) {
        let node = self.nodes.get_mut(&id).unwrap();
        let options = (self.options)(id, &node.dir);
        let states = self.states.clone();
        let dir = node.dir.clone();
        let factory = Arc::new(move |g: u8| Kv::open(id, g, &dir, states.clone()));
        let multi = MultiRaft::start(options, factory).unwrap();
        // Bind the same port again: relays point at it.
        let mut listener = None;
        for _ in 0..100 {
            match TcpListener::bind(node.listen).await {
                Ok(l) => {
                    listener = Some(l);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        let listener = listener.expect("the node's port is free again");
        let app = multi.transport().router();
        node.server = Some(tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        }));
        node.multi = Some(multi);
        self.wire();
    }

    /// Tells every node where the others are (through its relays).
    fn wire(&self) {
        for (&id, node) in &self.nodes {
            let Some(multi) = &node.multi else { continue };
            let addrs = self
                .nodes
                .keys()
                .filter(|o| **o != id)
                .filter_map(|o| self.relays.get(&(id, *o)).map(|r| (*o, r.addr.clone())))
                .collect();
            multi.transport().set_addresses(addrs);
        }
    }

    /// Stops node `id` (its server, its connections, its engine).
    pub async fn stop_node(&mut self, id: u64) {
        let node = self.nodes.get_mut(&id).unwrap();
        if let Some(s) = node.server.take() {
            s.abort();
            let _ = s.await;
        }
        if let Some(multi) = node.multi.take() {
            tokio::task::spawn_blocking(move || drop(multi)).await.unwrap();
        }
        // Reset every connection to or from it, as a dead process would.
        for ((from, to), relay) in &self.relays {
            if *from == id || *to == id {
                relay.set_cut(true);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        for ((from, to), relay) in &self.relays {
            if *from == id || *to == id {
                relay.set_cut(false);
            }
        }
    }

    /// Cuts node `id` off from every other node (or heals it).
    pub fn isolate(&self, id: u64, cut: bool) {
        for ((from, to), relay) in &self.relays {
            if *from == id || *to == id {
                relay.set_cut(cut);
            }
        }
    }

    pub fn node(&self, id: u64) -> &MultiRaft<Kv> {
        self.nodes[&id].multi.as_ref().expect("the node runs")
    }

    pub fn running(&self) -> Vec<u64> {
        self.nodes.values().filter(|n| n.multi.is_some()).map(|n| n.id).collect()
    }

    /// Opens `groups` on `members` and starts them with those voters.
    pub async fn bootstrap(&self, groups: impl IntoIterator<Item = u8> + Clone, members: &[u64]) {
        for &id in members {
            for g in groups.clone() {
                self.node(id).open(g).await.unwrap();
                self.node(id).bootstrap(g, members.to_vec()).await.unwrap();
            }
        }
    }

    /// Waits until every running node that hosts `group` agrees on a leader
    /// among them; returns it.
    pub async fn leader(&self, group: u8, within: Duration) -> RaftNodeId {
        let deadline = Instant::now() + within;
        loop {
            let running = self.running();
            let views: Vec<Option<u64>> = running
                .iter()
                .filter(|id| self.node(**id).is_hosted(group))
                .map(|id| self.node(*id).leader(group))
                .collect();
            if let Some(Some(l)) = views.first()
                && views.iter().all(|v| *v == Some(*l))
                && running.contains(l)
                && self.node(*l).is_leader(group)
            {
                return *l;
            }
            assert!(Instant::now() < deadline, "group {group:02x} has no agreed leader: {views:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Writes `key=value` to `group` through whoever leads it, following
    /// `NotLeader` answers, within `within`; returns the entry's index.
    pub async fn write(
        &self,
        group: u8,
        key: &str,
        value: &str,
        within: Duration,
    ) -> Result<u64, GroupError> {
        let deadline = Instant::now() + within;
        let mut at = *self.running().first().expect("a node runs");
        loop {
            let r = self.node(at).write(group, format!("{key}={value}").into_bytes()).await;
            match r {
                Ok((index, _)) => return Ok(index),
                Err(GroupError::NotLeader { leader: Some(l), .. })
                    if self.running().contains(&l) =>
                {
                    at = l
                }
                Err(e) => {
                    if Instant::now() > deadline {
                        return Err(e);
                    }
                    let running = self.running();
                    at = running
                        [(running.iter().position(|n| *n == at).unwrap_or(0) + 1) % running.len()];
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }

    /// The state of `group` on node `id`.
    pub fn state(&self, id: u64, group: u8) -> BTreeMap<String, String> {
        self.states.lock().unwrap().get(&(id, group)).cloned().unwrap_or_default()
    }

    /// Waits until the nodes `ids` hold equal states of `group` with `keys` keys.
    pub async fn converged(&self, group: u8, ids: &[u64], keys: usize, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let states: Vec<_> = ids.iter().map(|id| self.state(*id, group)).collect();
            if states.iter().all(|s| s.len() == keys && *s == states[0]) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "group {group:02x} did not converge on {ids:?}: sizes {:?}",
                states.iter().map(|s| s.len()).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
