//! The registry conformance suite against embedded registries of one and
//! of three members, each a Raft group of `shoal-meta` members in this
//! process serving HTTP on 127.0.0.1, reached through the `shoal://`
//! client. Each case gets a group of its own.

mod common;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use shoal_registry::Registry;
use shoal_registry::testing::conformance::Harness;

use common::{Group, Keep};

struct MetaHarness {
    members: usize,
    groups: Keep,
}

impl MetaHarness {
    fn new(members: usize) -> Self {
        Self { members, groups: Keep::default() }
    }
}

#[async_trait]
impl Harness for MetaHarness {
    async fn registry(&self) -> Arc<dyn Registry> {
        let group = Arc::new(Group::start(self.members).await);
        let client = group.client("conformance").await;
        self.groups.0.lock().unwrap().push(group);
        Arc::new(client)
    }

    fn ttl(&self) -> Duration {
        Duration::from_secs(1)
    }

    fn patience(&self) -> Duration {
        Duration::from_secs(4)
    }
}

mod one_member {
    use super::*;
    shoal_registry::conformance_tests!(MetaHarness::new(1), #[tokio::test(flavor = "multi_thread", worker_threads = 2)]);
}

mod three_members {
    use super::*;
    shoal_registry::conformance_tests!(MetaHarness::new(3), #[tokio::test(flavor = "multi_thread", worker_threads = 2)]);
}
