//! The local log: the single-node stand-in for a bucket's Raft log.
//!
//! It hands out each bucket's log indexes in order and applies each command at
//! its index, one command per bucket at a time, so that the state machine sees
//! exactly what it will see under Raft. Durability comes from the state
//! machine itself: a command is acknowledged only after the SQLite transaction
//! that applied it (and recorded its index) is committed with a full sync, so
//! there is nothing to replay after a crash. Indexes are reserved in blocks in
//! the bucket's catalog, so they keep growing across restarts without a write
//! per command; a crash may leave a gap, which no reader relies on.

use std::sync::{Arc, Mutex};

use shoal_types::{BUCKET_COUNT, Result};

use crate::command::{Command, Output};
use crate::store::Store;

/// How many indexes one reservation covers.
const RESERVATION: u64 = 4096;

#[derive(Default)]
struct Cursor {
    loaded: bool,
    next: u64,
    reserved: u64,
}

/// Orders and applies the commands of every bucket of one store.
pub struct LocalLog {
    store: Arc<Store>,
    cursors: Vec<Mutex<Cursor>>,
}

impl LocalLog {
    /// A log over `store`.
    pub fn new(store: Arc<Store>) -> LocalLog {
        LocalLog {
            store,
            cursors: (0..BUCKET_COUNT).map(|_| Mutex::new(Cursor::default())).collect(),
        }
    }

    /// The store this log applies to.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Appends a command to its bucket's log and applies it; returns the index
    /// it was applied at and what it produced. Blocks on SQLite: call it from
    /// a blocking context.
    pub fn submit(&self, command: &Command) -> Result<(u64, Output)> {
        let bucket = command.base().bucket();
        let mut cursor = self.cursors[bucket.0 as usize].lock().unwrap_or_else(|e| e.into_inner());
        if !cursor.loaded {
            let reserved = self.store.with_catalog(bucket, |c| c.reserved_index())?;
            *cursor = Cursor { loaded: true, next: reserved + 1, reserved };
        }
        if cursor.next > cursor.reserved {
            let upto = cursor.reserved + RESERVATION;
            self.store.with_catalog(bucket, |c| c.reserve(upto))?;
            cursor.reserved = upto;
        }
        let index = cursor.next;
        cursor.next += 1;
        let output = self.store.apply(index, command)?;
        Ok((index, output))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Options;
    use shoal_types::BaseId;

    #[test]
    fn indexes_grow_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let id = BaseId::random();
        let create =
            Command::CreateBase { id, name: None, created_at: "2024-01-01T00:00:00Z".into() };
        let first = {
            let log =
                LocalLog::new(Arc::new(Store::open(Some(dir.path()), Options::default()).unwrap()));
            log.submit(&create).unwrap().0
        };
        let log =
            LocalLog::new(Arc::new(Store::open(Some(dir.path()), Options::default()).unwrap()));
        let (second, out) = log.submit(&Command::DropBase { id }).unwrap();
        assert!(second > first, "{second} > {first}");
        assert_eq!(out, Output::Dropped);
    }
}
