//! The ZooKeeper backend rides out server failures: in a three-server
//! ensemble the quorum leader is killed (SIGKILL) and puts, watches,
//! sessions and elections carry on through the other two; a standalone
//! server killed and restarted lets a watch catch up without repeating
//! anything.
//!
//! ZooKeeper watches coalesce changes that happen between two reads (see
//! `docs/registry.md`), so the checks here ask for the latest value and for
//! values that only move forward, never for every intermediate one.

use std::sync::Arc;
use std::time::Duration;

use shoal_registry::testing::zookeeper_server::ZkEnsemble;
use shoal_registry::{
    Election, EventKind, Registry, Revision, Session, SessionOptions, Watch, WatchMessage,
    ZkRegistry,
};

const TTL: Duration = Duration::from_secs(3);

fn value(i: u32) -> Vec<u8> {
    format!("v{i:03}").into_bytes()
}

/// Reads put events of `data/x` until value `last` arrives, checking that
/// values and revisions only move forward and stay at or after `first`.
async fn expect_through(watch: &mut Watch, first: u32, last: u32) {
    let mut previous: Option<(Vec<u8>, Revision)> = None;
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(20), watch.next()).await.unwrap_or_else(
            |_| panic!("no event up to {:?}", String::from_utf8_lossy(&value(last))),
        );
        let e = match msg {
            Some(Ok(WatchMessage::Event(e))) => e,
            other => panic!("unexpected watch message {other:?}"),
        };
        assert_eq!((e.kind, e.kv.key.as_slice()), (EventKind::Put, &b"data/x"[..]));
        assert!(e.kv.value >= value(first), "an old value came again: {e:?}");
        if let Some((v, rev)) = &previous {
            assert!(e.kv.value > *v && e.revision() > *rev, "went back: {e:?} after {v:?}");
        }
        if e.kv.value == value(last) {
            return;
        }
        previous = Some((e.kv.value.clone(), e.revision()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_survive_their_leader_killed() {
    let mut zk = ZkEnsemble::start(3).await;
    // Several clients, each trying the servers in another order, so that
    // some sessions and watches are likely to sit on the server killed.
    let mut clients: Vec<Arc<ZkRegistry>> = Vec::new();
    for i in 0..4 {
        let mut options = zk.options("ha");
        options.endpoints.rotate_left(i % 3);
        clients.push(Arc::new(ZkRegistry::connect(options).await.expect("connect")));
    }
    let writer = clients[0].clone();
    let holder: Arc<dyn Registry> = clients[1].clone();
    let session =
        Arc::new(Session::new(holder.clone(), SessionOptions { ttl: TTL }).await.expect("session"));
    holder.put(b"nodes/me", b"up", Some(session.lease())).await.unwrap();
    let election = Election::new(session.clone(), "monitor/leader");
    election.campaign("me").await.unwrap();

    let mut watches = Vec::new();
    for client in &clients {
        watches.push(client.watch_prefix(b"data/", Revision(0)).await.unwrap());
    }
    for i in 0..10 {
        writer.put(b"data/x", &value(i), None).await.unwrap();
    }
    for watch in &mut watches {
        expect_through(watch, 0, 9).await;
    }

    // Kill the quorum leader: the hardest case (an election follows).
    let victim = zk.leader().expect("the ensemble has a leader");
    let victim_pid = zk.servers()[victim].pid();
    zk.kill(victim);
    eprintln!("killed server {} (pid {victim_pid:?}) of 3, the leader", victim + 1);

    let started = std::time::Instant::now();
    for i in 10..30 {
        writer.put(b"data/x", &value(i), None).await.expect("put after the leader died");
    }
    eprintln!("20 puts after the kill took {:?}", started.elapsed());
    for watch in &mut watches {
        expect_through(watch, 10, 29).await;
    }
    eprintln!("every watch caught up {:?} after the kill", started.elapsed());
    let new_leader = zk.leader().expect("a new leader");
    assert_ne!(new_leader, victim);
    // The session keeps its lease through the failure and beyond its TTL.
    tokio::time::sleep(TTL * 3).await;
    assert!(!session.is_lost(), "session lost: {:?}", session.lost_reason());
    let kv = writer.get(b"nodes/me").await.unwrap().expect("leased key");
    assert_eq!((kv.value.as_slice(), kv.lease), (&b"up"[..], Some(session.lease())));
    assert!(election.is_leader().await.unwrap());
    // New sessions, leases and candidates work too, and hand over.
    let other_registry: Arc<dyn Registry> = clients[2].clone();
    let other = Arc::new(Session::new(other_registry, SessionOptions { ttl: TTL }).await.unwrap());
    let rival = Arc::new(Election::new(other.clone(), "monitor/leader"));
    let campaign = tokio::spawn({
        let rival = rival.clone();
        async move { rival.campaign("rival").await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!campaign.is_finished(), "two leaders at once");
    election.resign().await.unwrap();
    let leader = tokio::time::timeout(Duration::from_secs(10), campaign)
        .await
        .expect("the rival leads in time")
        .expect("campaign task")
        .expect("campaign");
    assert_eq!(leader.value, b"rival");
    drop(rival);
    Arc::try_unwrap(other).expect("the election is gone").close().await.unwrap();
    assert_eq!(writer.get_prefix(b"monitor/leader/").await.unwrap().kvs.len(), 0);
}

#[tokio::test]
async fn a_watch_catches_up_after_its_server_restarts() {
    let mut zk = ZkEnsemble::single().await;
    let registry = zk.registry("restart").await;
    let mut watch = registry.watch_prefix(b"data/", Revision(0)).await.unwrap();
    for i in 0..5 {
        registry.put(b"data/x", &value(i), None).await.unwrap();
    }
    expect_through(&mut watch, 0, 4).await;
    zk.kill(0);
    zk.restart(0).await;
    for i in 5..10 {
        registry.put(b"data/x", &value(i), None).await.expect("put after the restart");
    }
    // Nothing lost at the end, nothing repeated.
    expect_through(&mut watch, 5, 9).await;
    if let Ok(msg) = tokio::time::timeout(Duration::from_millis(500), watch.next()).await {
        panic!("unexpected extra message {msg:?}");
    }
}
