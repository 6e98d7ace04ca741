//! Three nodes on 127.0.0.1, each with the real log store, network and
//! multi-group manager: groups elect, replicate, survive a node's loss and
//! catch a restarted node up.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::BasicNode;
use shoal_raft::log_store::{LogStore, LogStoreOptions};
use shoal_raft::multi::{GroupError, MultiRaft, MultiRaftOptions};
use shoal_raft::network::{Network, NetworkOptions, router};
use shoal_raft::{RaftNodeId, StateMachine, raft_id};
use shoal_types::NodeId;

/// A state machine that keeps the commands it applied, by index, in a file.
struct Recorder {
    path: PathBuf,
    applied: Mutex<BTreeMap<u64, Vec<u8>>>,
}

impl Recorder {
    fn open(path: PathBuf) -> Recorder {
        let applied = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        Recorder { path, applied: Mutex::new(applied) }
    }

    fn save(&self, applied: &BTreeMap<u64, Vec<u8>>) {
        std::fs::write(&self.path, serde_json::to_vec(applied).unwrap()).unwrap();
    }

    fn values(&self) -> Vec<Vec<u8>> {
        self.applied.lock().unwrap().values().cloned().collect()
    }
}

impl StateMachine for Recorder {
    fn apply(&self, index: u64, command: &[u8]) -> Vec<u8> {
        let mut a = self.applied.lock().unwrap();
        if a.keys().next_back().is_some_and(|last| *last >= index) {
            return b"replayed".to_vec();
        }
        a.insert(index, command.to_vec());
        self.save(&a);
        index.to_string().into_bytes()
    }

    fn sync(&self) -> std::io::Result<()> {
        // `save` writes through at once.
        Ok(())
    }

    fn snapshot(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::write(dir.join("state.json"), serde_json::to_vec(&*self.applied.lock().unwrap())?)
    }

    fn restore(&self, dir: &Path) -> std::io::Result<()> {
        let applied: BTreeMap<u64, Vec<u8>> =
            serde_json::from_slice(&std::fs::read(dir.join("state.json"))?)?;
        self.save(&applied);
        *self.applied.lock().unwrap() = applied;
        Ok(())
    }
}

struct Node {
    id: RaftNodeId,
    addr: SocketAddr,
    dir: PathBuf,
    multi: Arc<MultiRaft>,
    machines: Arc<Mutex<BTreeMap<u8, Arc<Recorder>>>>,
    server: tokio::task::JoinHandle<()>,
}

const GROUPS: u8 = 8;
const LEADER_WAIT: Duration = Duration::from_secs(5);

fn options(dir: &Path) -> MultiRaftOptions {
    MultiRaftOptions {
        heartbeat: Duration::from_millis(100),
        election_min: Duration::from_millis(300),
        election_max: Duration::from_millis(600),
        snapshot_every: 20,
        keep_logs: 5,
        leader_wait: LEADER_WAIT,
        ..MultiRaftOptions::new(dir)
    }
}

async fn start(name: &str, dir: &Path, addr: Option<SocketAddr>) -> Node {
    let listener =
        tokio::net::TcpListener::bind(addr.unwrap_or_else(|| "127.0.0.1:0".parse().unwrap()))
            .await
            .unwrap();
    let addr = listener.local_addr().unwrap();
    std::fs::create_dir_all(dir).unwrap();
    let store = LogStore::open(&dir.join("log"), LogStoreOptions::default()).unwrap();
    let net_options = NetworkOptions { token: "t".into(), ..NetworkOptions::default() };
    let network = Network::new(net_options.clone()).unwrap();
    let machines: Arc<Mutex<BTreeMap<u8, Arc<Recorder>>>> = Arc::default();
    let (m, d) = (machines.clone(), dir.to_path_buf());
    let factory = Arc::new(move |g: u8| -> Arc<dyn StateMachine> {
        let sm = Arc::new(Recorder::open(d.join(format!("sm-{g}.json"))));
        m.lock().unwrap().insert(g, sm.clone());
        sm
    });
    let id = raft_id(&NodeId(name.into()));
    let multi = MultiRaft::start(id, store, network, factory, options(dir)).await.unwrap();
    let app = router(multi.clone(), net_options);
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Node { id, addr, dir: dir.to_path_buf(), multi, machines, server }
}

impl Node {
    fn member(&self) -> (RaftNodeId, BasicNode) {
        (self.id, BasicNode { addr: format!("http://{}", self.addr) })
    }

    async fn stop(self) -> (SocketAddr, PathBuf) {
        self.server.abort();
        self.multi.shutdown().await;
        (self.addr, self.dir)
    }
}

/// Three started nodes, a, b and c, in `tmp`.
async fn three(tmp: &Path) -> (Node, Node, Node) {
    let a = start("a", &tmp.join("a"), None).await;
    let b = start("b", &tmp.join("b"), None).await;
    let c = start("c", &tmp.join("c"), None).await;
    (a, b, c)
}

/// Opens `groups` on b and c and initializes them on a, with all three as
/// voters.
async fn initialize(a: &Node, b: &Node, c: &Node, groups: std::ops::Range<u8>) {
    let members: BTreeMap<RaftNodeId, BasicNode> =
        [a.member(), b.member(), c.member()].into_iter().collect();
    for g in groups {
        for n in [b, c] {
            n.multi.open(g).await.unwrap();
        }
        a.multi.initialize(g, members.clone()).await.unwrap();
    }
}

/// Writes through whichever node leads `group`, retrying (bounded) while
/// leadership settles.
async fn write(nodes: &[&Node], group: u8, value: &[u8]) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        for n in nodes {
            match n.multi.write(group, value.to_vec()).await {
                Ok((index, answer)) => {
                    assert_eq!(answer, index.to_string().into_bytes());
                    return index;
                }
                Err(GroupError::NotLeader { .. }) | Err(GroupError::Unavailable { .. }) => {}
                Err(e) => panic!("{e}"),
            }
        }
        assert!(Instant::now() < deadline, "no leader took the write for group {group}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_values(node: &Node, group: u8, want: &[Vec<u8>]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let sm = node.machines.lock().unwrap().get(&group).cloned();
        if sm.as_ref().is_some_and(|sm| sm.values() == want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "node {} group {group}: {:?} != {:?}",
            node.id,
            sm.map(|s| s.values().len()),
            want.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_replicate_fail_over_and_catch_up() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b, c) = three(tmp.path()).await;
    initialize(&a, &b, &c, 0..GROUPS).await;

    let mut expected: BTreeMap<u8, Vec<Vec<u8>>> = BTreeMap::new();
    for round in 0..10u32 {
        for g in 0..GROUPS {
            let v = format!("{g}-{round}").into_bytes();
            write(&[&a, &b, &c], g, &v).await;
            expected.entry(g).or_default().push(v);
        }
    }
    for n in [&a, &b, &c] {
        for g in 0..GROUPS {
            wait_values(n, g, &expected[&g]).await;
        }
    }

    // Lose c: the others keep every group writable (c led some of them).
    let (c_addr, c_dir) = c.stop().await;
    for round in 10..40u32 {
        for g in 0..GROUPS {
            let v = format!("{g}-{round}").into_bytes();
            write(&[&a, &b], g, &v).await;
            expected.entry(g).or_default().push(v);
        }
    }
    // c comes back on the same address and data: it catches up, by log or by
    // snapshot (the logs were compacted past where c stopped).
    let c = start("c", &c_dir, Some(c_addr)).await;
    for n in [&a, &b, &c] {
        for g in 0..GROUPS {
            wait_values(n, g, &expected[&g]).await;
        }
    }
    for n in [a, b, c] {
        n.stop().await;
    }
}

/// A write to a group that is electing waits, bounded, for its new leader
/// instead of failing at once with no leader to name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_waits_for_an_electing_group() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b, c) = three(tmp.path()).await;
    initialize(&a, &b, &c, 0..1).await;
    write(&[&a], 0, b"first").await;

    // a led; with a and c gone, b campaigns and cannot win: it knows no
    // leader. (Its election timer is off while it reaches no majority, so
    // the campaign is called for.)
    let (c_addr, c_dir) = c.stop().await;
    a.stop().await;
    let raft = b.multi.group(0).unwrap();
    raft.trigger().elect().await.unwrap();
    raft.wait(Some(Duration::from_secs(20)))
        .metrics(|m| m.current_leader.is_none(), "b knows no leader")
        .await
        .unwrap();

    // Nobody to elect with: the wait is bounded, and the error says that no
    // leader is known.
    let started = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(30), b.multi.write(0, b"second".to_vec()))
        .await
        .expect("the wait for a leader is bounded");
    assert!(matches!(r, Err(GroupError::NotLeader { leader: None, .. })), "{r:?}");
    assert!(started.elapsed() >= LEADER_WAIT, "gave up after {:?}", started.elapsed());

    let multi = b.multi.clone();
    let pending = tokio::spawn(async move { multi.write(0, b"third".to_vec()).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!pending.is_finished(), "the write gave up while the group was electing");
    // c returns: b and c elect a leader and the waiting write goes through
    // b, or names the leader that c became.
    let c = start("c", &c_dir, Some(c_addr)).await;
    match tokio::time::timeout(Duration::from_secs(20), pending).await.unwrap().unwrap() {
        Ok(_) => {}
        Err(GroupError::NotLeader { leader: Some((id, _)), .. }) => assert_eq!(id, c.id),
        Err(e) => panic!("the write failed: {e}"),
    }
    b.stop().await;
    c.stop().await;
}

/// A TCP relay on 127.0.0.1 toward one node, which a test can cut: then it
/// closes the connections it carries and every new one at once.
struct Relay {
    url: String,
    cut: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

async fn relay(to: SocketAddr) -> Relay {
    use std::sync::atomic::{AtomicBool, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let cut = Arc::new(AtomicBool::new(false));
    let flag = cut.clone();
    let task = tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            if flag.load(Ordering::SeqCst) {
                continue;
            }
            let flag = flag.clone();
            tokio::spawn(async move {
                let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await else { return };
                let cut = async {
                    while !flag.load(Ordering::SeqCst) {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                };
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    _ = cut => {}
                }
            });
        }
    });
    Relay { url, cut, task }
}

impl Relay {
    fn set_cut(&self, cut: bool) {
        self.cut.store(cut, std::sync::atomic::Ordering::SeqCst);
    }
}

fn term(node: &Node, group: u8) -> u64 {
    node.multi.group(group).unwrap().metrics().borrow().current_term
}

/// A node cut off from the others stops campaigning instead of raising its
/// term again and again, so when it comes back the leaders stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_does_not_depose_leaders_when_it_returns() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b, c) = three(tmp.path()).await;
    let nodes = [&a, &b, &c];
    // Every node reaches every other through a relay of its own.
    let mut relays: BTreeMap<(RaftNodeId, RaftNodeId), Relay> = BTreeMap::new();
    for from in nodes {
        let mut addresses = std::collections::HashMap::new();
        for to in nodes.iter().filter(|n| n.id != from.id) {
            let r = relay(to.addr).await;
            addresses.insert(to.id, r.url.clone());
            relays.insert((from.id, to.id), r);
        }
        from.multi.network().set_addresses(addresses);
    }
    initialize(&a, &b, &c, 0..GROUPS).await;
    for g in 0..GROUPS {
        write(&[&a], g, b"x").await;
    }
    let before: Vec<u64> = (0..GROUPS).map(|g| term(&a, g)).collect();
    let leaders: Vec<Option<RaftNodeId>> =
        (0..GROUPS).map(|g| a.multi.leader(g).map(|(id, _)| id)).collect();
    assert!(leaders.iter().all(|l| *l == Some(a.id)), "{leaders:?}");

    // c is cut off for many election timeouts.
    let c_links = |r: &(RaftNodeId, RaftNodeId)| r.0 == c.id || r.1 == c.id;
    relays.iter().filter(|(k, _)| c_links(k)).for_each(|(_, r)| r.set_cut(true));
    tokio::time::sleep(Duration::from_secs(4)).await;
    for g in 0..GROUPS {
        assert!(!c.multi.may_campaign(g), "group {g}: c still campaigns");
        let (was, now) = (before[g as usize], term(&c, g));
        assert!(now <= was + 1, "group {g}: c campaigned again and again: term {was} -> {now}");
    }
    // a and b reach each other: their elections stay on, and nothing moved.
    for g in 0..GROUPS {
        assert!(a.multi.may_campaign(g) && b.multi.may_campaign(g));
        assert_eq!(term(&a, g), before[g as usize]);
    }

    // c comes back: it follows the leaders it had.
    relays.iter().filter(|(k, _)| c_links(k)).for_each(|(_, r)| r.set_cut(false));
    for g in 0..GROUPS {
        write(&[&a, &b, &c], g, b"y").await;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(0..GROUPS).all(|g| c.multi.may_campaign(g)) {
        assert!(Instant::now() < deadline, "c's elections were not resumed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for g in 0..GROUPS {
        let leader = a.multi.leader(g).map(|(id, _)| id);
        assert_eq!(leader, Some(a.id), "group {g} changed leader");
        let (was, now) = (before[g as usize], term(&a, g));
        assert!(now <= was + 1, "group {g} held elections: term {was} -> {now}");
        wait_values(&c, g, &[b"x".to_vec(), b"y".to_vec()]).await;
    }
    for r in relays.values() {
        r.task.abort();
    }
    for n in [a, b, c] {
        n.stop().await;
    }
}
