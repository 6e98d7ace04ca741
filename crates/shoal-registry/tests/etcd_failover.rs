//! The etcd backend rides out member failures: with a three-member cluster
//! one member is killed (SIGKILL) and puts, watches, sessions and elections
//! carry on through the other two; with one member killed and restarted, a
//! watch resumes exactly where it stopped.

use std::sync::Arc;
use std::time::Duration;

use shoal_registry::testing::etcd_server::EtcdCluster;
use shoal_registry::{
    Election, EventKind, Registry, Revision, Session, SessionOptions, Watch, WatchMessage,
};

const TTL: Duration = Duration::from_secs(2);

/// Reads `count` put events and checks they carry `expected` values in
/// order, at strictly increasing revisions.
async fn expect_puts(watch: &mut Watch, expected: &[Vec<u8>]) -> Revision {
    let mut last = Revision(0);
    for value in expected {
        let msg = tokio::time::timeout(Duration::from_secs(15), watch.next())
            .await
            .unwrap_or_else(|_| panic!("no event for {:?}", String::from_utf8_lossy(value)));
        match msg {
            Some(Ok(WatchMessage::Event(e))) => {
                assert_eq!(e.kind, EventKind::Put);
                assert_eq!(&e.kv.value, value, "events out of order or skipped");
                assert!(e.revision() > last);
                last = e.revision();
            }
            other => panic!("unexpected watch message {other:?}"),
        }
    }
    last
}

fn values(range: std::ops::Range<u32>) -> Vec<Vec<u8>> {
    range.map(|i| format!("v{i}").into_bytes()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_survive_one_killed() {
    let mut etcd = EtcdCluster::start(3).await;
    // Several clients, each balancing over all three members, so that some
    // watch streams and keep-alives are likely to run on the member killed.
    let mut clients: Vec<Arc<dyn Registry>> = Vec::new();
    for _ in 0..4 {
        clients.push(Arc::new(etcd.registry("ha").await));
    }
    let writer = clients[0].clone();
    let session = Arc::new(
        Session::new(clients[1].clone(), SessionOptions { ttl: TTL }).await.expect("session"),
    );
    writer.put(b"nodes/me", b"up", Some(session.lease())).await.unwrap();
    let election = Election::new(session.clone(), "monitor/leader");
    election.campaign("me").await.unwrap();

    let mut watches = Vec::new();
    for client in &clients {
        watches.push(client.watch_prefix(b"data/", Revision(0)).await.unwrap());
    }
    for value in values(0..10) {
        writer.put(b"data/x", &value, None).await.unwrap();
    }
    for watch in &mut watches {
        expect_puts(watch, &values(0..10)).await;
    }

    // Kill the raft leader: the hardest case (a new election happens).
    let victim = etcd.leader().await.expect("the cluster has a leader");
    let victim_pid = etcd.members()[victim].pid();
    etcd.kill(victim);
    eprintln!("killed member {victim} (pid {victim_pid:?}) of 3");

    let started = std::time::Instant::now();
    for value in values(10..30) {
        writer.put(b"data/x", &value, None).await.expect("put after a member died");
    }
    eprintln!("20 puts after the kill took {:?}", started.elapsed());
    for watch in &mut watches {
        expect_puts(watch, &values(10..30)).await;
    }
    eprintln!("every watch caught up {:?} after the kill", started.elapsed());
    // The session keeps its lease through the failure and beyond its TTL.
    tokio::time::sleep(TTL * 3).await;
    assert!(!session.is_lost(), "session lost: {:?}", session.lost_reason());
    assert_eq!(writer.get(b"nodes/me").await.unwrap().expect("leased key").value, b"up");
    assert!(election.is_leader().await.unwrap());
    // New sessions and leases work too.
    let other = Session::new(clients[2].clone(), SessionOptions { ttl: TTL }).await.unwrap();
    clients[3].put(b"nodes/other", b"up", Some(other.lease())).await.unwrap();
    other.close().await.unwrap();
    assert_eq!(writer.get(b"nodes/other").await.unwrap(), None);
}

#[tokio::test]
async fn watch_resumes_after_member_restart() {
    let mut etcd = EtcdCluster::single().await;
    let registry = etcd.registry("restart").await;
    let mut watch = registry.watch_prefix(b"data/", Revision(0)).await.unwrap();
    for value in values(0..5) {
        registry.put(b"data/x", &value, None).await.unwrap();
    }
    expect_puts(&mut watch, &values(0..3)).await;
    // Two events are still unread when the member dies; the stream breaks.
    etcd.kill(0);
    etcd.restart(0).await;
    for value in values(5..10) {
        registry.put(b"data/x", &value, None).await.expect("put after restart");
    }
    // Nothing lost, nothing repeated.
    expect_puts(&mut watch, &values(3..10)).await;
    if let Ok(msg) = tokio::time::timeout(Duration::from_millis(500), watch.next()).await {
        panic!("unexpected extra message {msg:?}");
    }
}
