//! The engine: where the HTTP layer sends writes and reads. It runs the
//! synchronous store on tokio's blocking pool.
//!
//! Writes go through the log (today the local one; with replication, the
//! bucket's Raft group), reads go straight to the store.

use std::sync::Arc;

use shoal_storage::{Command, LocalLog, Output, Store};
use shoal_types::{Error, Result};

/// The write and read paths of one node.
pub struct Engine {
    log: Arc<LocalLog>,
}

impl Engine {
    /// An engine over `store`, ordering writes with a local log.
    pub fn new(store: Arc<Store>) -> Engine {
        Engine { log: Arc::new(LocalLog::new(store)) }
    }

    /// The store.
    pub fn store(&self) -> &Arc<Store> {
        self.log.store()
    }

    /// Appends and applies a command; returns its log index and output.
    pub async fn write(&self, command: Command) -> Result<(u64, Output)> {
        let log = self.log.clone();
        let result = tokio::task::spawn_blocking(move || log.submit(&command))
            .await
            .map_err(|e| Error::Internal(format!("write task failed: {e}")))?;
        if result.is_ok() {
            metrics::counter!("shoal_writes_applied_total").increment(1);
        }
        result
    }

    /// Runs a read against the store.
    pub async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let store = self.store().clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| Error::Internal(format!("read task failed: {e}")))?
    }
}
