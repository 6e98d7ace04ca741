//! The conformance suite against a real etcd, plus what only etcd has:
//! namespaces, unreachable endpoints, `connect` from options.
//!
//! Every test starts its own single-member etcd (free 127.0.0.1 ports, data
//! in a TempDir, killed on drop), so tests run in parallel. A missing `etcd`
//! binary fails the tests: run `scripts/install-test-deps`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use shoal_registry::testing::conformance::Harness;
use shoal_registry::testing::etcd_server::EtcdCluster;
use shoal_registry::{Error, EtcdOptions, EtcdRegistry, Registry, RegistryOptions, Revision};

struct EtcdHarness {
    etcd: EtcdCluster,
    namespaces: AtomicU32,
}

impl EtcdHarness {
    async fn start() -> Self {
        Self { etcd: EtcdCluster::single().await, namespaces: AtomicU32::new(0) }
    }
}

#[async_trait]
impl Harness for EtcdHarness {
    async fn registry(&self) -> Arc<dyn Registry> {
        let n = self.namespaces.fetch_add(1, Ordering::Relaxed);
        Arc::new(self.etcd.registry(&format!("test-{n}")).await)
    }

    fn ttl(&self) -> Duration {
        Duration::from_secs(2)
    }

    fn patience(&self) -> Duration {
        Duration::from_secs(5)
    }
}

shoal_registry::conformance_tests!(EtcdHarness::start().await, #[tokio::test]);

#[tokio::test]
async fn namespaces_do_not_see_each_other() {
    let etcd = EtcdCluster::single().await;
    let a = etcd.registry("a").await;
    let b = etcd.registry("b").await;
    a.put(b"nodes/x", b"a", None).await.unwrap();
    b.put(b"nodes/x", b"b", None).await.unwrap();
    let listing = a.get_prefix(b"").await.unwrap();
    assert_eq!(listing.kvs.len(), 1);
    assert_eq!(listing.kvs[0].key, b"nodes/x", "the namespace prefix is stripped");
    assert_eq!(listing.kvs[0].value, b"a");
    assert_eq!(b.delete_prefix(b"").await.unwrap().0, 1);
    assert!(a.get(b"nodes/x").await.unwrap().is_some());
    assert!(b.describe().contains("namespace b"), "{}", b.describe());
}

#[tokio::test]
async fn connect_from_options() {
    let etcd = EtcdCluster::single().await;
    let file: toml::Table =
        format!("registry = {:?}\nnamespace = \"opts\"", etcd.registry_url()).parse().unwrap();
    let options = RegistryOptions::layer(&file, &HashMap::new(), &[]).unwrap();
    let registry = shoal_registry::connect(&options).await.unwrap();
    registry.put(b"k", b"v", None).await.unwrap();
    let raw = etcd.registry("opts").await;
    assert_eq!(raw.get(b"k").await.unwrap().expect("k").value, b"v");
}

#[tokio::test]
async fn unreachable_registry_names_the_endpoints() {
    // Bind and release: nothing listens on these ports.
    let ports: Vec<u16> = (0..2)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port())
        .collect();
    let endpoints: Vec<String> = ports.iter().map(|p| format!("http://127.0.0.1:{p}")).collect();
    let options = EtcdOptions {
        endpoints: endpoints.clone(),
        namespace: "shoal".into(),
        retry_interval: Duration::from_millis(100),
        max_retries: 2,
        operation_timeout: Duration::from_millis(300),
        tls: None,
    };
    let started = Instant::now();
    let err = EtcdRegistry::connect(options).await.unwrap_err();
    assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
    assert!(err.is_retryable());
    let message = err.to_string();
    let named = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect::<Vec<_>>().join(",");
    assert!(message.contains(&format!("etcd endpoints {named} did not answer")), "{message}");
    assert!(message.contains("after 3 attempt(s)"), "{message}");
    assert!(started.elapsed() < Duration::from_secs(10), "gave up late: {:?}", started.elapsed());
}

#[tokio::test]
async fn etcd_history_is_shared_with_other_clients() {
    // A watch through one client sees writes made through another, and the
    // revision a listing reports is etcd's own.
    let etcd = EtcdCluster::single().await;
    let a = etcd.registry("shared").await;
    let b = etcd.registry("shared").await;
    let start = a.get_prefix(b"").await.unwrap().revision;
    let mut watch = a.watch_prefix(b"", Revision(start.0 + 1)).await.unwrap();
    let rev = b.put(b"k", b"v", None).await.unwrap();
    match tokio::time::timeout(Duration::from_secs(5), watch.next()).await {
        Ok(Some(Ok(shoal_registry::WatchMessage::Event(e)))) => assert_eq!(e.revision(), rev),
        other => panic!("unexpected {other:?}"),
    }
}
