//! openraft's storage conformance suite against the node log store.
//!
//! The suite needs a state machine too; [`TestStateMachine`] is a small
//! in-memory one whose applied checkpoint lives in the log store (as the
//! real adapter's does) and whose snapshots are a file in a directory.
//!
//! It runs twice: once with a fresh store per case, and once with one store
//! for the whole run, each case on a group of its own, so that every case
//! also checks that groups sharing a store do not see each other.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{
    AnyError, BasicNode, Entry, EntryPayload, LogId, RaftSnapshotBuilder, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};
use shoal_raft::log_store::{GroupLogStore, LogStore, LogStoreOptions};
use shoal_raft::{Response, SnapshotFiles, TypeConfig};
use tempfile::TempDir;

/// The state a snapshot holds.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct State {
    last_applied: Option<LogId<u64>>,
    membership: StoredMembership<u64, BasicNode>,
    /// The commands applied, in order.
    commands: Vec<Vec<u8>>,
}

const SNAPSHOT_FILE: &str = "state.json";

/// The last snapshot built or installed, and its directory.
type CurrentSnapshot = (SnapshotMeta<u64, BasicNode>, PathBuf);

/// An in-memory state machine that checkpoints into the log store.
#[derive(Clone)]
struct TestStateMachine {
    store: LogStore,
    group: u8,
    /// Where snapshot directories are made.
    snapshots: PathBuf,
    state: Arc<Mutex<State>>,
    current: Arc<Mutex<Option<CurrentSnapshot>>>,
    next_snapshot: Arc<AtomicU64>,
}

fn sm_error(e: impl std::error::Error + 'static) -> StorageError<u64> {
    StorageIOError::write_state_machine(AnyError::new(&e)).into()
}

fn snapshot_error(e: impl std::error::Error + 'static) -> StorageError<u64> {
    StorageIOError::write_snapshot(None, AnyError::new(&e)).into()
}

impl TestStateMachine {
    fn new(store: LogStore, group: u8, snapshots: &Path) -> Self {
        Self {
            store,
            group,
            snapshots: snapshots.to_path_buf(),
            state: Arc::default(),
            current: Arc::default(),
            next_snapshot: Arc::default(),
        }
    }

    fn new_snapshot_dir(&self) -> io::Result<PathBuf> {
        let n = self.next_snapshot.fetch_add(1, Ordering::Relaxed);
        let dir = self.snapshots.join(format!("group-{}-snapshot-{n}", self.group));
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }
}

impl RaftSnapshotBuilder<TypeConfig> for TestStateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<u64>> {
        let state = self.state.lock().expect("state lock").clone();
        let dir = self.new_snapshot_dir().map_err(snapshot_error)?;
        let json = serde_json::to_vec(&state).map_err(snapshot_error)?;
        std::fs::write(dir.join(SNAPSHOT_FILE), json).map_err(snapshot_error)?;
        let meta = SnapshotMeta {
            last_log_id: state.last_applied,
            last_membership: state.membership.clone(),
            snapshot_id: dir.display().to_string(),
        };
        *self.current.lock().expect("snapshot lock") = Some((meta.clone(), dir.clone()));
        Ok(Snapshot { meta, snapshot: Box::new(SnapshotFiles { dir }) })
    }
}

impl RaftStateMachine<TypeConfig> for TestStateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<u64>>, StoredMembership<u64, BasicNode>), StorageError<u64>> {
        self.store.read_applied(self.group).await.map_err(sm_error)
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError<u64>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut replies = Vec::new();
        let (applied, membership) = {
            let mut state = self.state.lock().expect("state lock");
            for entry in entries {
                state.last_applied = Some(entry.log_id);
                match entry.payload {
                    EntryPayload::Blank => {}
                    EntryPayload::Normal(request) => state.commands.push(request.0),
                    EntryPayload::Membership(m) => {
                        state.membership = StoredMembership::new(Some(entry.log_id), m)
                    }
                }
                replies.push(Response(state.commands.len().to_le_bytes().to_vec()));
            }
            (state.last_applied, state.membership.clone())
        };
        self.store.save_applied(self.group, applied, &membership).await.map_err(sm_error)?;
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotFiles>, StorageError<u64>> {
        Ok(Box::new(SnapshotFiles { dir: self.new_snapshot_dir().map_err(snapshot_error)? }))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, BasicNode>,
        snapshot: Box<SnapshotFiles>,
    ) -> Result<(), StorageError<u64>> {
        let json = std::fs::read(snapshot.dir.join(SNAPSHOT_FILE)).map_err(snapshot_error)?;
        let state: State = serde_json::from_slice(&json)
            .map_err(|e| snapshot_error(io::Error::new(io::ErrorKind::InvalidData, e)))?;
        self.store
            .save_applied(self.group, state.last_applied, &state.membership)
            .await
            .map_err(sm_error)?;
        *self.state.lock().expect("state lock") = state;
        *self.current.lock().expect("snapshot lock") = Some((meta.clone(), snapshot.dir));
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<u64>> {
        let current = self.current.lock().expect("snapshot lock").clone();
        Ok(current.map(|(meta, dir)| Snapshot { meta, snapshot: Box::new(SnapshotFiles { dir }) }))
    }
}

/// A fresh store in a fresh directory for every case.
struct FreshStore;

impl StoreBuilder<TypeConfig, GroupLogStore, TestStateMachine, TempDir> for FreshStore {
    async fn build(&self) -> Result<(TempDir, GroupLogStore, TestStateMachine), StorageError<u64>> {
        let dir = TempDir::new().map_err(sm_error)?;
        let store = LogStore::open(&dir.path().join("log"), LogStoreOptions::default())
            .map_err(sm_error)?;
        let sm = TestStateMachine::new(store.clone(), 7, dir.path());
        Ok((dir, store.group(7), sm))
    }
}

/// One store for the whole run; every case gets a group of its own.
struct SharedStore {
    dir: TempDir,
    store: LogStore,
    next_group: AtomicU8,
}

impl StoreBuilder<TypeConfig, GroupLogStore, TestStateMachine, ()> for SharedStore {
    async fn build(&self) -> Result<((), GroupLogStore, TestStateMachine), StorageError<u64>> {
        let group = self.next_group.fetch_add(1, Ordering::Relaxed);
        assert!(group < u8::MAX, "the suite has more cases than a store has groups");
        let sm = TestStateMachine::new(self.store.clone(), group, self.dir.path());
        Ok(((), self.store.group(group), sm))
    }
}

#[test]
fn conformance_with_a_store_per_case() {
    Suite::test_all(FreshStore).expect("suite");
}

#[test]
fn conformance_with_one_store_for_all_cases() {
    let dir = TempDir::new().expect("tempdir");
    let store = LogStore::open(&dir.path().join("log"), LogStoreOptions::default()).expect("open");
    let builder = SharedStore { dir, store: store.clone(), next_group: AtomicU8::new(0) };
    Suite::test_all(builder).expect("suite");
    // Every case left its own group behind, and group commit had work to do.
    let groups = store.groups().expect("groups");
    assert!(groups.len() > 30, "groups with state: {groups:?}");
    let stats = store.stats();
    assert!(stats.fsyncs > 0 && stats.appends > 0, "{stats:?}");
}
