//! The conformance suite against a real ZooKeeper, plus what only the
//! ZooKeeper backend has: namespaces as chroots, session timeouts bounded
//! by the server, unreachable servers, `connect` from a `zk://` URL.
//!
//! The tests share one standalone ZooKeeper (a JVM per test would cost
//! seconds and memory each) and isolate themselves by namespace. Its
//! revisions are zxids, shared by every namespace and consumed by sessions
//! too, and it keeps no watch history: the harness declares
//! [`Semantics::ZOOKEEPER`] and the suite checks those semantics exactly. A
//! missing ZooKeeper fails the tests: run `scripts/install-test-deps`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use shoal_registry::testing::conformance::{Harness, Semantics};
use shoal_registry::testing::zookeeper_server::ZkEnsemble;
use shoal_registry::{
    Error, Registry, RegistryOptions, Revision, WatchMessage, ZkOptions, ZkRegistry,
};

/// A namespace no other test of this binary uses.
fn namespace(what: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!("{what}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

struct ZkHarness {
    zk: &'static ZkEnsemble,
}

impl ZkHarness {
    fn new() -> Self {
        Self { zk: ZkEnsemble::shared() }
    }
}

#[async_trait]
impl Harness for ZkHarness {
    async fn registry(&self) -> Arc<dyn Registry> {
        Arc::new(self.zk.registry(&namespace("conformance")).await)
    }

    fn ttl(&self) -> Duration {
        Duration::from_secs(2)
    }

    fn patience(&self) -> Duration {
        Duration::from_secs(5)
    }

    fn semantics(&self) -> Semantics {
        Semantics::ZOOKEEPER
    }
}

shoal_registry::conformance_tests!(ZkHarness::new(), #[tokio::test]);

#[tokio::test]
async fn namespaces_are_chroots_that_do_not_see_each_other() {
    let zk = ZkEnsemble::shared();
    let (na, nb) = (namespace("a"), namespace("b"));
    let a = zk.registry(&na).await;
    let b = zk.registry(&nb).await;
    a.put(b"nodes/x", b"a", None).await.unwrap();
    b.put(b"nodes/x", b"b", None).await.unwrap();
    let listing = a.get_prefix(b"").await.unwrap();
    assert_eq!(listing.kvs.len(), 1);
    assert_eq!(listing.kvs[0].key, b"nodes/x", "the chroot is not part of the key");
    assert_eq!(listing.kvs[0].value, b"a");
    assert_eq!(b.delete_prefix(b"").await.unwrap().0, 1);
    assert!(a.get(b"nodes/x").await.unwrap().is_some());
    assert_eq!(b.describe(), format!("zk://{} (namespace {nb})", zk.servers()[0].endpoint));
}

#[tokio::test]
async fn connect_from_a_zk_url() {
    let zk = ZkEnsemble::shared();
    let ns = namespace("opts");
    let file: toml::Table = format!(
        "registry = {:?}\nnamespace = {ns:?}\nnode_ttl = \"3s\"\nmax_retries = 2",
        zk.registry_url()
    )
    .parse()
    .unwrap();
    let options = RegistryOptions::layer(&file, &HashMap::new(), &[]).unwrap();
    let registry = shoal_registry::connect(&options).await.unwrap();
    assert!(registry.describe().starts_with("zk://127.0.0.1:"), "{}", registry.describe());
    registry.put(b"k", b"v", None).await.unwrap();
    let raw = zk.registry(&ns).await;
    assert_eq!(raw.get(b"k").await.unwrap().expect("k").value, b"v");
    // A node's session with the configured TTL.
    let session =
        shoal_registry::Session::new(registry.clone(), options.session_options()).await.unwrap();
    registry.put(b"nodes/me", b"up", Some(session.lease())).await.unwrap();
    let kv = raw.get(b"nodes/me").await.unwrap().expect("leased key");
    assert_eq!(kv.lease, Some(session.lease()), "the ephemeral owner is the lease");
    session.close().await.unwrap();
    assert_eq!(raw.get(b"nodes/me").await.unwrap(), None);
}

#[tokio::test]
async fn a_ttl_above_the_servers_session_limit_is_refused_with_the_fix() {
    // The test servers allow sessions up to 300 s.
    let registry = ZkEnsemble::shared().registry(&namespace("ttl")).await;
    let err = registry.grant_lease(Duration::from_secs(400)).await.unwrap_err();
    assert!(matches!(err, Error::Config { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("raise maxSessionTimeout"), "{message}");
    assert!(message.contains("400000 ms"), "{message}");
    // A TTL within the limits is granted as asked.
    let lease = registry.grant_lease(Duration::from_secs(250)).await.unwrap();
    registry.revoke_lease(lease).await.unwrap();
}

#[tokio::test]
async fn bad_keys_and_foreign_leases_are_refused() {
    let registry = ZkEnsemble::shared().registry(&namespace("bad")).await;
    assert!(matches!(registry.put(b"", b"v", None).await, Err(Error::InvalidInput(_))));
    // A lease lives in the process (the registry) that granted it.
    let other = ZkEnsemble::shared().registry(&namespace("other")).await;
    let lease = other.grant_lease(Duration::from_secs(5)).await.unwrap();
    assert!(matches!(
        registry.put(b"k", b"v", Some(lease)).await,
        Err(Error::LeaseNotFound(l)) if l == lease
    ));
    other.revoke_lease(lease).await.unwrap();
    // Keys under two leases in one transaction cannot be one ZooKeeper multi.
    let (l1, l2) = (
        registry.grant_lease(Duration::from_secs(5)).await.unwrap(),
        registry.grant_lease(Duration::from_secs(5)).await.unwrap(),
    );
    let txn = shoal_registry::Txn::new().and_then([
        shoal_registry::TxnOp::put("a", "1", Some(l1)),
        shoal_registry::TxnOp::put("b", "1", Some(l2)),
    ]);
    let err = registry.txn(txn).await.unwrap_err();
    assert!(err.to_string().contains("at most one lease"), "{err}");
    // Nor can a branch read a key it wrote before: the answer is only known
    // once the `multi` is applied.
    let txn = shoal_registry::Txn::new()
        .and_then([shoal_registry::TxnOp::put("a", "1", None), shoal_registry::TxnOp::get("a")]);
    let err = registry.txn(txn).await.unwrap_err();
    assert!(matches!(err, Error::InvalidInput(_)), "{err:?}");
    assert!(err.to_string().contains("cannot read a key it wrote"), "{err}");
    assert_eq!(registry.get_prefix(b"").await.unwrap().kvs.len(), 0);
}

#[tokio::test]
async fn unreachable_registry_names_the_endpoints() {
    // Bind and release: nothing listens on these ports.
    let ports: Vec<u16> = (0..2)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port())
        .collect();
    let endpoints: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let options = ZkOptions {
        endpoints: endpoints.clone(),
        namespace: "shoal".into(),
        retry_interval: Duration::from_millis(100),
        max_retries: 2,
        operation_timeout: Duration::from_millis(300),
        ..ZkOptions::default()
    };
    let started = Instant::now();
    let err = ZkRegistry::connect(options).await.unwrap_err();
    assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
    assert!(err.is_retryable());
    let message = err.to_string();
    assert!(
        message.contains(&format!("ZooKeeper endpoints {} did not answer", endpoints.join(","))),
        "{message}"
    );
    assert!(message.contains("after 3 attempt(s)"), "{message}");
    assert!(started.elapsed() < Duration::from_secs(10), "gave up late: {:?}", started.elapsed());
}

#[tokio::test]
async fn writes_through_one_client_reach_another_clients_watch() {
    let zk = ZkEnsemble::shared();
    let ns = namespace("shared");
    let a = zk.registry(&ns).await;
    let b = zk.registry(&ns).await;
    let start = a.get_prefix(b"").await.unwrap().revision;
    let mut watch = a.watch_prefix(b"", Revision(start.0 + 1)).await.unwrap();
    let rev = b.put(b"k", b"v", None).await.unwrap();
    match tokio::time::timeout(Duration::from_secs(5), watch.next()).await {
        Ok(Some(Ok(WatchMessage::Event(e)))) => assert_eq!(e.revision(), rev),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn a_lost_session_ends_its_watches_with_a_resync_and_a_new_one_follows() {
    // A client cut off from the ensemble for longer than its session
    // timeout has lost its session, and the watches in it.
    let mut zk = ZkEnsemble::single().await;
    let options = ZkOptions { session_timeout: Duration::from_secs(1), ..zk.options("expiry") };
    let registry = ZkRegistry::connect(options).await.unwrap();
    registry.put(b"nodes/a", b"1", None).await.unwrap();
    let listing = registry.get_prefix(b"nodes/").await.unwrap();
    let mut watch =
        registry.watch_prefix(b"nodes/", Revision(listing.revision.0 + 1)).await.unwrap();
    zk.kill(0);
    // The watch died with the session: it says so, then ends.
    match tokio::time::timeout(Duration::from_secs(10), watch.next()).await {
        Ok(Some(Ok(WatchMessage::Resync { compact_revision }))) => {
            assert!(compact_revision > listing.revision, "{compact_revision:?}")
        }
        other => panic!("expected a resync, got {other:?}"),
    }
    let ended = tokio::time::timeout(Duration::from_secs(5), watch.next()).await;
    assert!(matches!(ended, Ok(None)), "a resynced watch ends, got {ended:?}");
    // Once the ensemble is back, the registry carries on with a new
    // session: re-list, watch, write.
    zk.restart(0).await;
    let listing = registry.get_prefix(b"nodes/").await.unwrap();
    assert_eq!(listing.kvs.len(), 1);
    let mut watch =
        registry.watch_prefix(b"nodes/", Revision(listing.revision.0 + 1)).await.unwrap();
    let rev = registry.put(b"nodes/b", b"1", None).await.unwrap();
    match tokio::time::timeout(Duration::from_secs(5), watch.next()).await {
        Ok(Some(Ok(WatchMessage::Event(e)))) => {
            assert_eq!((e.kv.key.as_slice(), e.revision()), (&b"nodes/b"[..], rev))
        }
        other => panic!("expected the put, got {other:?}"),
    }
}

#[tokio::test]
async fn dropping_the_registry_lets_its_leases_run_out_instead_of_revoking_them() {
    // As with etcd: a node that stops keeps its registration for node_ttl.
    let zk = ZkEnsemble::shared();
    let ns = namespace("dropped");
    let (holder, observer) = (zk.registry(&ns).await, zk.registry(&ns).await);
    let ttl = Duration::from_secs(2);
    let granted = Instant::now();
    let lease = holder.grant_lease(ttl).await.unwrap();
    holder.put(b"nodes/me", b"up", Some(lease)).await.unwrap();
    drop(holder);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(observer.get(b"nodes/me").await.unwrap().is_some(), "dropping revoked the lease");
    while observer.get(b"nodes/me").await.unwrap().is_some() {
        assert!(granted.elapsed() < ttl * 4, "the lease never ran out");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(granted.elapsed() >= ttl, "ran out early, after {:?}", granted.elapsed());
}
