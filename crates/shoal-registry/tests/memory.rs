//! The conformance suite against the memory backend, under tokio's paused
//! clock: lease TTLs and expiry cost no wall time and are exact.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use shoal_registry::testing::conformance::Harness;
use shoal_registry::{MemoryOptions, MemoryRegistry, Registry};

struct MemoryHarness;

#[async_trait]
impl Harness for MemoryHarness {
    async fn registry(&self) -> Arc<dyn Registry> {
        Arc::new(MemoryRegistry::new(MemoryOptions::default()))
    }

    fn ttl(&self) -> Duration {
        Duration::from_secs(10)
    }

    fn patience(&self) -> Duration {
        Duration::from_secs(5)
    }
}

shoal_registry::conformance_tests!(MemoryHarness, #[tokio::test(start_paused = true)]);
