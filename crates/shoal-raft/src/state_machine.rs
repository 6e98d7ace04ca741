//! The adapter from a caller's [`StateMachine`] to openraft's state machine.
//!
//! The caller's `apply` records each command's index with its effect (Shoal's
//! bases keep it in the same SQLite transaction), but need not make it
//! durable at once: the log is. This adapter keeps a checkpoint of the last
//! applied log id and membership in the log store, and records it only after
//! [`StateMachine::sync`] has made everything up to it durable: at most once
//! per [`CHECKPOINT_INTERVAL`] while the group applies, within about two
//! intervals after it stops applying, and always before a snapshot lets the
//! log be compacted. After a crash (even of the machine)
//! the checkpoint lags what the state machine holds; openraft re-applies the
//! entries after it from the log, and the state machine skips the ones it
//! has, so nothing is applied twice and nothing is lost.
//!
//! Snapshots are directories under `snapshot_root/{group}/{snapshot id}`,
//! written by the state machine and never changed afterwards, so a snapshot
//! being streamed to a follower stays readable while a newer one is built.
//! The two newest are kept.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership,
};

use crate::log_store::LogStore;
use crate::{RaftNodeId, Response, SnapshotFiles, StateMachine, TypeConfig};

type Meta = SnapshotMeta<RaftNodeId, BasicNode>;

/// How many snapshots of a group are kept on disk.
const KEEP_SNAPSHOTS: usize = 2;

/// How often a group that keeps applying syncs its state machine and
/// records a checkpoint. Longer means fewer syncs, and more entries to
/// re-apply (and skip) after a restart.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);

struct Applied {
    last: Option<LogId<RaftNodeId>>,
    membership: StoredMembership<RaftNodeId, BasicNode>,
    /// Snapshots on disk, oldest first.
    snapshots: Vec<(Meta, PathBuf)>,
    /// Counts snapshots built, for unique ids.
    built: u64,
    /// When the last checkpoint was recorded.
    checkpointed_at: Instant,
    /// What the last checkpoint recorded.
    checkpointed: Option<LogId<RaftNodeId>>,
}

/// One group's state machine, as openraft sees it.
#[derive(Clone)]
pub struct GroupStateMachine {
    group: u8,
    inner: Arc<dyn StateMachine>,
    store: LogStore,
    dir: PathBuf,
    applied: Arc<Mutex<Applied>>,
    /// One checkpoint at a time, so they are recorded in order.
    checkpointing: Arc<tokio::sync::Mutex<()>>,
}

fn io_err(e: impl std::fmt::Display) -> StorageError<RaftNodeId> {
    StorageIOError::write_state_machine(&std::io::Error::other(e.to_string())).into()
}

impl GroupStateMachine {
    /// Opens group `group`'s adapter: reads the checkpoint and the snapshots
    /// left on disk.
    pub async fn open(
        group: u8,
        inner: Arc<dyn StateMachine>,
        store: LogStore,
        snapshot_root: &Path,
    ) -> Result<Self, StorageError<RaftNodeId>> {
        let (last, membership) = store.read_applied(group).await.map_err(io_err)?;
        let dir = snapshot_root.join(format!("{group:02x}"));
        std::fs::create_dir_all(&dir).map_err(io_err)?;
        let mut snapshots = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(io_err)?.flatten() {
            let meta_path = entry.path().join("snapshot_meta.json");
            match std::fs::read(&meta_path)
                .ok()
                .and_then(|b| serde_json::from_slice::<Meta>(&b).ok())
            {
                Some(meta) => snapshots.push((meta, entry.path())),
                // A snapshot that was not finished: nobody can use it.
                None => {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
        snapshots.sort_by_key(|(m, _)| m.last_log_id);
        let built = snapshots.len() as u64;
        let applied = Applied {
            last,
            membership,
            snapshots,
            built,
            checkpointed_at: Instant::now(),
            checkpointed: last,
        };
        let sm = GroupStateMachine {
            group,
            inner,
            store,
            dir,
            applied: Arc::new(Mutex::new(applied)),
            checkpointing: Arc::default(),
        };
        sm.checkpoint_when_idle();
        Ok(sm)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Applied> {
        self.applied.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a finished snapshot directory and drops the oldest.
    fn keep_snapshot(&self, meta: Meta, path: PathBuf) {
        let mut a = self.lock();
        a.snapshots.push((meta, path));
        while a.snapshots.len() > KEEP_SNAPSHOTS {
            let (_, old) = a.snapshots.remove(0);
            let _ = std::fs::remove_dir_all(old);
        }
    }

    /// Syncs the state machine, then records what it had applied before the
    /// sync as the checkpoint.
    async fn checkpoint(&self) -> Result<(), StorageError<RaftNodeId>> {
        let _one = self.checkpointing.lock().await;
        let (last, membership) = {
            let a = self.lock();
            (a.last, a.membership.clone())
        };
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.sync()).await.map_err(io_err)?.map_err(io_err)?;
        self.store.save_applied(self.group, last, &membership).await.map_err(io_err)?;
        let mut a = self.lock();
        a.checkpointed_at = Instant::now();
        a.checkpointed = last;
        Ok(())
    }

    /// Checkpoints a group that stopped applying: what it applied in its
    /// last second would otherwise wait, unsynced, for its next write. Ends
    /// when openraft drops the state machine.
    fn checkpoint_when_idle(&self) {
        let weak = Arc::downgrade(&self.applied);
        let (group, inner, store, dir, checkpointing) = (
            self.group,
            self.inner.clone(),
            self.store.clone(),
            self.dir.clone(),
            self.checkpointing.clone(),
        );
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(CHECKPOINT_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(applied) = weak.upgrade() else { return };
                let due = {
                    let a = applied.lock().unwrap_or_else(|e| e.into_inner());
                    a.last != a.checkpointed && a.checkpointed_at.elapsed() >= CHECKPOINT_INTERVAL
                };
                if !due {
                    continue;
                }
                let sm = GroupStateMachine {
                    group,
                    inner: inner.clone(),
                    store: store.clone(),
                    dir: dir.clone(),
                    applied,
                    checkpointing: checkpointing.clone(),
                };
                if let Err(error) = sm.checkpoint().await {
                    // The next apply or snapshot checkpoints again; a
                    // failing sync fails that one too.
                    tracing::warn!(group, %error, "checkpoint of an idle group failed");
                }
            }
        });
    }
}

impl RaftSnapshotBuilder<TypeConfig> for GroupStateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<RaftNodeId>> {
        // The state machine is not applying while openraft builds a snapshot
        // through this builder's clone, but the state can move on right
        // after: read the applied position first, then copy; the copy holds
        // at least that much, and replays skip what it holds beyond.
        let (last, membership, n) = {
            let mut a = self.lock();
            a.built += 1;
            (a.last, a.membership.clone(), a.built)
        };
        let id = format!(
            "{}-{}-{n}",
            last.map(|l| l.leader_id.term).unwrap_or(0),
            last.map(|l| l.index).unwrap_or(0)
        );
        let path = self.dir.join(&id);
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).map_err(io_err)?;
        let inner = self.inner.clone();
        let p = path.clone();
        tokio::task::spawn_blocking(move || inner.snapshot(&p))
            .await
            .map_err(io_err)?
            .map_err(io_err)?;
        // openraft compacts the log up to the snapshot once this returns: the
        // checkpoint must not be older than that.
        self.checkpoint().await?;
        let meta = Meta { last_log_id: last, last_membership: membership, snapshot_id: id };
        let meta_bytes = serde_json::to_vec(&meta).map_err(io_err)?;
        std::fs::write(path.join("snapshot_meta.json"), meta_bytes).map_err(io_err)?;
        self.keep_snapshot(meta.clone(), path.clone());
        Ok(Snapshot { meta, snapshot: Box::new(SnapshotFiles { dir: path }) })
    }
}

impl RaftStateMachine<TypeConfig> for GroupStateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<
        (Option<LogId<RaftNodeId>>, StoredMembership<RaftNodeId, BasicNode>),
        StorageError<RaftNodeId>,
    > {
        let a = self.lock();
        Ok((a.last, a.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError<RaftNodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let inner = self.inner.clone();
        let applied = self.applied.clone();
        // SQLite work runs on the blocking pool, in log order.
        let responses = tokio::task::spawn_blocking(move || {
            let mut out = Vec::with_capacity(entries.len());
            for entry in entries {
                let response = match &entry.payload {
                    EntryPayload::Blank => Response::default(),
                    EntryPayload::Normal(request) => {
                        Response(inner.apply(entry.log_id.index, &request.0))
                    }
                    EntryPayload::Membership(m) => {
                        applied.lock().unwrap_or_else(|e| e.into_inner()).membership =
                            StoredMembership::new(Some(entry.log_id), m.clone());
                        Response::default()
                    }
                };
                applied.lock().unwrap_or_else(|e| e.into_inner()).last = Some(entry.log_id);
                out.push(response);
            }
            out
        })
        .await
        .map_err(io_err)?;
        if self.lock().checkpointed_at.elapsed() >= CHECKPOINT_INTERVAL {
            self.checkpoint().await?;
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<SnapshotFiles>, StorageError<RaftNodeId>> {
        let n = {
            let mut a = self.lock();
            a.built += 1;
            a.built
        };
        let dir = self.dir.join(format!("incoming-{n}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(io_err)?;
        Ok(Box::new(SnapshotFiles { dir }))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: Box<SnapshotFiles>,
    ) -> Result<(), StorageError<RaftNodeId>> {
        let inner = self.inner.clone();
        let dir = snapshot.dir.clone();
        tokio::task::spawn_blocking(move || inner.restore(&dir))
            .await
            .map_err(io_err)?
            .map_err(io_err)?;
        {
            let mut a = self.lock();
            a.last = meta.last_log_id;
            a.membership = meta.last_membership.clone();
        }
        self.checkpoint().await?;
        // Keep the received files as this group's current snapshot, so it can
        // serve them to others in turn.
        let path = self.dir.join(&meta.snapshot_id);
        if snapshot.dir != path {
            let _ = std::fs::remove_dir_all(&path);
            if std::fs::rename(&snapshot.dir, &path).is_err() {
                // Another file system: the state is restored; only the copy
                // for serving is lost, and the next build makes one.
                return Ok(());
            }
        }
        let meta_bytes = serde_json::to_vec(meta).map_err(io_err)?;
        std::fs::write(path.join("snapshot_meta.json"), meta_bytes).map_err(io_err)?;
        self.keep_snapshot(meta.clone(), path);
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<RaftNodeId>> {
        let a = self.lock();
        Ok(a.snapshots.last().map(|(meta, dir)| Snapshot {
            meta: meta.clone(),
            snapshot: Box::new(SnapshotFiles { dir: dir.clone() }),
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;
    use crate::Request;
    use crate::log_store::LogStoreOptions;

    /// Counts what it applied and how often it was synced.
    #[derive(Default)]
    struct Counter {
        applied: AtomicU64,
        synced: AtomicU64,
    }

    impl StateMachine for Counter {
        fn apply(&self, index: u64, _command: &[u8]) -> Vec<u8> {
            self.applied.store(index, Ordering::SeqCst);
            Vec::new()
        }
        fn sync(&self) -> std::io::Result<()> {
            self.synced.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        fn snapshot(&self, _dir: &Path) -> std::io::Result<()> {
            Ok(())
        }
        fn restore(&self, _dir: &Path) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A group that stops applying is synced and checkpointed anyway, a
    /// moment later, instead of at its next write.
    #[tokio::test]
    async fn an_idle_group_is_checkpointed() {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::open(&dir.path().join("log"), LogStoreOptions::default()).unwrap();
        let counter = Arc::new(Counter::default());
        let mut sm =
            GroupStateMachine::open(7, counter.clone(), store.clone(), &dir.path().join("snap"))
                .await
                .unwrap();
        let log_id = LogId::new(CommittedLeaderId::new(1, 0), 3);
        let entry =
            Entry::<TypeConfig> { log_id, payload: EntryPayload::Normal(Request(b"x".to_vec())) };
        sm.apply(vec![entry]).await.unwrap();
        assert_eq!(counter.applied.load(Ordering::SeqCst), 3);
        // Too soon after the last checkpoint for apply to take one.
        assert_eq!(store.read_applied(7).await.unwrap().0, None);

        let deadline = Instant::now() + 3 * CHECKPOINT_INTERVAL + Duration::from_secs(2);
        while store.read_applied(7).await.unwrap().0 != Some(log_id) {
            assert!(Instant::now() < deadline, "the idle group was not checkpointed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(counter.synced.load(Ordering::SeqCst) >= 1, "checkpointed without a sync");
        // Nothing new applied: no more syncs.
        let synced = counter.synced.load(Ordering::SeqCst);
        tokio::time::sleep(2 * CHECKPOINT_INTERVAL).await;
        assert_eq!(counter.synced.load(Ordering::SeqCst), synced);
    }
}
