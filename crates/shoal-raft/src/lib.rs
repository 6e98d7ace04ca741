//! Shoal's replication engine: every bucket is a Raft group whose members
//! are the bucket's replicas, every hosted group is a raft-rs `RawNode`, and
//! one loop per node drives them all. This crate knows nothing of SQL or
//! bases: commands are bytes, a group's state is the caller's
//! [`StateMachine`], and snapshots are directories of its files.
//!
//! # Shape
//!
//! ```text
//!  HTTP handlers ──propose/read──┐
//!  peer connections ──messages───┤                      ┌──> log writer thread (one batch, one fsync)
//!  log writer ──persisted────────┼──> Raft loop thread ─┼──> apply thread (state machines)
//!  apply thread ──applied────────┤     (all groups)     └──> peer connections (one frame per peer)
//!  ticks, admin ─────────────────┘
//! ```
//!
//! Each turn of the loop drains everything queued for it, steps or proposes
//! on each group, then for every group with a `Ready`: its messages go to
//! per-peer buffers at once (a leader sends before its own fsync, as the
//! Raft thesis allows, 10.2.1), its entries and hard state go into the
//! turn's single log batch, its committed entries go to the apply thread.
//! At the end of the turn each peer gets one frame and the log writer one
//! batch; a ready's messages that must wait for its persistence leave once
//! the writer reports the batch written. One tick drives every group, so
//! the heartbeats of all groups to a peer ride one frame.
//!
//! Modules: [`logdb`] (the node's log on disk and its writer thread),
//! [`storage`] (a group's log as raft-rs reads it), `raft_loop` (the loop),
//! `apply` (the apply thread), [`transport`] (peer connections and frames),
//! [`snapshot`] (snapshot files and their transfer).

mod apply;
pub mod logdb;
mod logger;
mod membership;
mod raft_loop;
pub mod snapshot;
pub mod storage;
pub mod transport;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

pub use raft::StateRole;

use shoal_types::NodeId;

use self::transport::Transport;

/// A node's id inside Raft (never 0).
pub type RaftNodeId = u64;

/// A group's state machine: the caller's (Shoal's buckets of SQLite bases).
/// The engine runs it on its apply thread, one group's entries in log order.
///
/// `apply` must be deterministic, and must skip an index it applied before:
/// after a restart the group replays the log from its last checkpoint, which
/// may be older than what the state machine holds. `apply` need not be
/// durable on its own (the log is); the engine calls [`StateMachine::sync`]
/// before it records a checkpoint, and only then lets the log drop the
/// entries applied so far.
pub trait StateMachine: Send + 'static {
    /// What `apply` answers to the proposer.
    type Answer: Send + 'static;
    /// Applies the command at log `index`.
    fn apply(&mut self, index: u64, command: &[u8]) -> Self::Answer;
    /// Makes everything applied so far durable.
    fn sync(&mut self) -> std::io::Result<()>;
    /// Writes a consistent copy of the whole state into `dir` (which exists
    /// and is empty).
    fn snapshot(&mut self, dir: &Path) -> std::io::Result<()>;
    /// Replaces the whole state with the copy in `dir`, durably.
    fn restore(&mut self, dir: &Path) -> std::io::Result<()>;
}

/// Makes the state machine of a group.
pub type Factory<S> = Arc<dyn Fn(u8) -> S + Send + Sync>;

/// Raft timings and replication limits: what an operator tunes (the node
/// takes them from `[raft]` in shoal.toml). Every duration is configurable
/// so tests can shorten them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// One tick of every group's logical clock.
    pub tick: Duration,
    /// A leader sends heartbeats (all its groups in the same tick) every
    /// this many ticks.
    pub heartbeat_ticks: usize,
    /// A follower that hears from no leader for this many ticks (randomized
    /// up to twice that) campaigns.
    pub election_ticks: usize,
    /// How long a write or read waits for a group that has no leader, or
    /// whose leadership is moving, before it fails.
    pub leader_wait: Duration,
    /// Applied entries kept in the log behind the checkpoint, so followers
    /// a little behind catch up from the log rather than a snapshot.
    pub keep_logs: u64,
    /// How often a group that applies syncs its state machine and records a
    /// checkpoint.
    pub checkpoint_interval: Duration,
    /// Groups changing membership at once on this node (each may stream a
    /// snapshot).
    pub max_concurrent_changes: usize,
    /// Snapshots this node sends at once.
    pub max_snapshot_sends: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            tick: Duration::from_millis(100),
            heartbeat_ticks: 2,
            election_ticks: 10,
            leader_wait: Duration::from_secs(3),
            keep_logs: 1000,
            checkpoint_interval: Duration::from_secs(1),
            max_concurrent_changes: 4,
            max_snapshot_sends: 2,
        }
    }
}

/// How the engine of one node runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// This node's Raft id.
    pub id: RaftNodeId,
    /// Where the log (`log/`) and snapshots (`snapshots/`) live.
    pub dir: PathBuf,
    /// Timings and limits.
    pub settings: Settings,
    /// The bearer token of node-to-node requests.
    pub token: String,
    /// TLS for `https://` peers: the cluster CA to verify them and this
    /// node's certificate to show them. `None` speaks plain HTTP only.
    pub tls: Option<Arc<shoal_tls::ClientConfig>>,
    /// The most bytes of entries in one append message.
    pub max_append_bytes: u64,
}

impl Options {
    /// Defaults for node `id` under `dir`.
    pub fn new(id: RaftNodeId, dir: &Path) -> Options {
        Options {
            id,
            dir: dir.to_path_buf(),
            settings: Settings::default(),
            token: String::new(),
            tls: None,
            max_append_bytes: 1 << 20,
        }
    }
}

/// Why a write, read or admin call did not happen here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    /// This node holds no replica of the group.
    #[error("this node holds no replica of group {0:02x}")]
    NotHosted(u8),
    /// Another node leads the group (if known). Nothing was proposed.
    #[error("not the leader of group {group:02x}")]
    NotLeader {
        /// The group.
        group: u8,
        /// The leader, if known.
        leader: Option<RaftNodeId>,
    },
    /// The group cannot serve now; what was asked may or may not have
    /// happened (a proposal whose fate is unknown says so).
    #[error("group {group:02x} is unavailable: {reason}")]
    Unavailable {
        /// The group.
        group: u8,
        /// Why.
        reason: String,
    },
}

/// What a proposer gets back: the entry's index and the state machine's answer.
pub type Answered<A> = Result<(u64, A), GroupError>;

/// What the loop is asked to do.
pub(crate) enum Input<A> {
    /// Propose a command.
    Propose { group: u8, data: Vec<u8>, reply: oneshot::Sender<Answered<A>>, at: Instant },
    /// Confirm leadership and wait until applied up to the read index.
    Read { group: u8, reply: oneshot::Sender<Result<(), GroupError>>, at: Instant },
    /// Messages from a peer.
    Messages(Vec<(u8, raft::prelude::Message)>),
    /// A snapshot received from a peer, its files in `dir`.
    Snapshot { group: u8, message: Box<raft::prelude::Message>, dir: PathBuf },
    /// The result of sending a snapshot.
    SnapshotSent { group: u8, to: RaftNodeId, ok: bool },
    /// The connection to a peer failed.
    PeerDown(RaftNodeId),
    /// The log writer wrote the batches `ids` (in order).
    Persisted { ids: Vec<u64>, result: logdb::Result<()> },
    /// Several inputs at once, in order (what the apply thread reports
    /// after one round of work).
    Batch(Vec<Input<A>>),
    /// The apply thread applied `group` up to `index`; `synced` if the state
    /// machine is durable up to there.
    Applied { group: u8, index: u64, term: u64, synced: bool },
    /// The apply thread built a snapshot (or failed to).
    Built { group: u8, index: u64, term: u64, result: Result<PathBuf, String> },
    /// The apply thread restored a snapshot (or failed to).
    Restored { group: u8, result: std::io::Result<()> },
    /// An administrative request.
    Admin(Admin),
}

/// Administrative requests, answered through their `reply`.
pub(crate) enum Admin {
    Open {
        group: u8,
        reply: oneshot::Sender<Result<(), GroupError>>,
    },
    Bootstrap {
        group: u8,
        voters: Vec<RaftNodeId>,
        reply: oneshot::Sender<Result<bool, GroupError>>,
    },
    Stop {
        group: u8,
        remove: bool,
        reply: oneshot::Sender<()>,
    },
    Target {
        group: u8,
        voters: Vec<RaftNodeId>,
    },
    Transfer {
        group: u8,
        to: RaftNodeId,
    },
    Campaign {
        group: u8,
    },
    Status {
        reply: oneshot::Sender<Vec<GroupStatus>>,
    },
    Leave {
        reply: oneshot::Sender<usize>,
    },
    Shutdown,
}

/// A group as the loop sees it, for status pages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupStatus {
    /// The group.
    pub group: u8,
    /// This node's role.
    pub role: StateRole,
    /// The leader, if known.
    pub leader: Option<RaftNodeId>,
    /// The current term.
    pub term: u64,
    /// Commit index.
    pub commit: u64,
    /// Applied index.
    pub applied: u64,
    /// Last log index.
    pub last_index: u64,
    /// Voters (in a joint configuration: both halves).
    pub voters: Vec<RaftNodeId>,
    /// Learners.
    pub learners: Vec<RaftNodeId>,
    /// On the leader: each member's matched index.
    pub matched: BTreeMap<RaftNodeId, u64>,
    /// Whether the group is initialized (has a configuration).
    pub initialized: bool,
}

/// What every thread can read about each group without asking the loop.
pub(crate) struct Board {
    groups: Vec<Slot>,
}

#[derive(Default)]
struct Slot {
    hosted: AtomicBool,
    initialized: AtomicBool,
    leader: AtomicU64,
    role: AtomicU8,
    term: AtomicU64,
    voter: AtomicBool,
    applied: AtomicU64,
    /// On a leader: the index of its first entry in its term. Once applied,
    /// everything earlier leaders committed is applied here too.
    led_from: AtomicU64,
}

/// What the loop publishes of a group.
pub(crate) struct View {
    pub(crate) hosted: bool,
    pub(crate) initialized: bool,
    pub(crate) leader: u64,
    pub(crate) role: StateRole,
    pub(crate) term: u64,
    pub(crate) voter: bool,
    /// On a leader, the index of its first entry in its term; else 0.
    pub(crate) led_from: u64,
}

impl Board {
    fn new() -> Board {
        Board { groups: (0..256).map(|_| Slot::default()).collect() }
    }

    fn slot(&self, group: u8) -> &Slot {
        &self.groups[group as usize]
    }

    pub(crate) fn set(&self, group: u8, v: View) {
        let s = self.slot(group);
        s.leader.store(v.leader, Ordering::Relaxed);
        s.role.store(role_code(v.role), Ordering::Relaxed);
        s.term.store(v.term, Ordering::Relaxed);
        s.voter.store(v.voter, Ordering::Relaxed);
        s.led_from.store(v.led_from, Ordering::Relaxed);
        s.initialized.store(v.initialized, Ordering::Relaxed);
        s.hosted.store(v.hosted, Ordering::Release);
    }

    pub(crate) fn set_applied(&self, group: u8, applied: u64) {
        self.slot(group).applied.store(applied, Ordering::Relaxed);
    }
}

fn role_code(role: StateRole) -> u8 {
    match role {
        StateRole::Follower => 0,
        StateRole::Candidate => 1,
        StateRole::Leader => 2,
        StateRole::PreCandidate => 3,
    }
}

/// The engine of one node: a cheap handle (clone it freely).
pub struct MultiRaft<S: StateMachine> {
    inner: Arc<Inner<S>>,
}

impl<S: StateMachine> Clone for MultiRaft<S> {
    fn clone(&self) -> Self {
        MultiRaft { inner: self.inner.clone() }
    }
}

struct Inner<S: StateMachine> {
    id: RaftNodeId,
    inbox: mpsc::Sender<Input<S::Answer>>,
    board: Arc<Board>,
    transport: Arc<Transport>,
    options: Options,
    db: Arc<logdb::LogDb>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl<S: StateMachine> Inner<S> {
    /// Stops the loop and waits for its threads (the apply thread syncs
    /// every state machine on its way out). Idempotent.
    fn shutdown(&self) {
        let _ = self.inbox.send(Input::Admin(Admin::Shutdown));
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        for t in threads {
            let _ = t.join();
        }
    }
}

impl<S: StateMachine> Drop for Inner<S> {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl<S: StateMachine> MultiRaft<S> {
    /// Opens the log in `options.dir`, reopens every group it has state for,
    /// and starts the loop, the log writer and the apply thread. Must run
    /// inside a tokio runtime (peer connections are tokio tasks).
    pub fn start(options: Options, factory: Factory<S>) -> Result<MultiRaft<S>, logdb::Error> {
        assert_ne!(options.id, 0, "a raft id is never 0");
        let (inbox_tx, inbox_rx) = mpsc::channel::<Input<S::Answer>>();
        let board = Arc::new(Board::new());
        let deliver = {
            let tx = inbox_tx.clone();
            move |d: transport::Delivery| {
                let input = match d {
                    transport::Delivery::Messages(m) => Input::Messages(m),
                    transport::Delivery::Snapshot { group, message, dir } => {
                        Input::Snapshot { group, message, dir }
                    }
                    transport::Delivery::SnapshotSent { group, to, ok } => {
                        Input::SnapshotSent { group, to, ok }
                    }
                    transport::Delivery::PeerDown(peer) => Input::PeerDown(peer),
                };
                tx.send(input).is_ok()
            }
        };
        let snapshots = snapshot::Snapshots::new(&options.dir.join("snapshots"))
            .map_err(|e| logdb::Error::Io(e.to_string()))?;
        let transport = Transport::new(
            options.id,
            options.token.clone(),
            shoal_tls::Connector::new(options.tls.clone()),
            options.settings.max_snapshot_sends,
            snapshots.clone(),
            Arc::new(deliver),
        );
        let (threads, db) = raft_loop::start(
            options.clone(),
            factory,
            inbox_tx.clone(),
            inbox_rx,
            board.clone(),
            transport.clone(),
            snapshots,
        )?;
        Ok(MultiRaft {
            inner: Arc::new(Inner {
                id: options.id,
                inbox: inbox_tx,
                board,
                transport,
                options,
                db,
                threads: Mutex::new(threads),
            }),
        })
    }

    /// Stops the engine now, even while other handles remain: every later
    /// call fails as "shutting down". Blocks until its threads are done
    /// (the apply thread syncs every state machine first).
    pub fn shutdown(&self) {
        self.inner.shutdown();
    }

    /// This node's Raft id.
    pub fn id(&self) -> RaftNodeId {
        self.inner.id
    }

    /// The peer connections, e.g. to tell them where nodes are.
    pub fn transport(&self) -> &Arc<Transport> {
        &self.inner.transport
    }

    fn send(&self, input: Input<S::Answer>) -> bool {
        self.inner.inbox.send(input).is_ok()
    }

    fn stopped(group: u8) -> GroupError {
        GroupError::Unavailable { group, reason: "the node is shutting down".into() }
    }

    /// Proposes a command; returns its log index and the state machine's
    /// answer. A group without a leader (electing, or moving its leadership)
    /// is waited for up to `leader_wait`; a group led elsewhere answers
    /// [`GroupError::NotLeader`] with nothing proposed.
    pub async fn write(&self, group: u8, command: Vec<u8>) -> Answered<S::Answer> {
        self.propose(group, command).await
    }

    /// Like [`MultiRaft::write`], but the command is queued for the loop
    /// before this returns: commands proposed one after another on one
    /// node reach a group's log in that order (the loop's queue is FIFO).
    /// The future answers as `write` does.
    pub fn propose(
        &self,
        group: u8,
        command: Vec<u8>,
    ) -> impl std::future::Future<Output = Answered<S::Answer>> + use<S> {
        let (reply, rx) = oneshot::channel();
        let sent = self.send(Input::Propose { group, data: command, reply, at: Instant::now() });
        async move {
            if !sent {
                return Err(Self::stopped(group));
            }
            rx.await.unwrap_or_else(|_| Err(Self::stopped(group)))
        }
    }

    /// Confirms with a quorum that this node leads the group, and waits until
    /// everything committed before now is applied here: a read after this
    /// sees every write acknowledged before it.
    pub async fn read_index(&self, group: u8) -> Result<(), GroupError> {
        let (reply, rx) = oneshot::channel();
        if !self.send(Input::Read { group, reply, at: Instant::now() }) {
            return Err(Self::stopped(group));
        }
        rx.await.unwrap_or_else(|_| Err(Self::stopped(group)))
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Admin,
        group: u8,
    ) -> Result<T, GroupError> {
        let (reply, rx) = oneshot::channel();
        if !self.send(Input::Admin(make(reply))) {
            return Err(Self::stopped(group));
        }
        rx.await.map_err(|_| Self::stopped(group))
    }

    /// Hosts a group (idempotent). A group with no stored state waits for
    /// its leader to send a snapshot, or for [`MultiRaft::bootstrap`].
    pub async fn open(&self, group: u8) -> Result<(), GroupError> {
        self.ask(|reply| Admin::Open { group, reply }, group).await?
    }

    /// Gives a hosted group that has no state its first configuration:
    /// `voters`. Returns whether it did (false: it had state already).
    /// Every first voter must bootstrap with the same `voters`.
    pub async fn bootstrap(&self, group: u8, voters: Vec<RaftNodeId>) -> Result<bool, GroupError> {
        self.ask(|reply| Admin::Bootstrap { group, voters, reply }, group).await?
    }

    /// Stops hosting a group; keeps its log and state (it may come back).
    pub async fn stop(&self, group: u8) {
        let _ = self.ask(|reply| Admin::Stop { group, remove: false, reply }, group).await;
    }

    /// Stops hosting a group and deletes its log and snapshots. The state
    /// machine's data is the caller's to remove.
    pub async fn remove(&self, group: u8) {
        let _ = self.ask(|reply| Admin::Stop { group, remove: true, reply }, group).await;
    }

    /// Where the group's voters should be. On the leader, the loop moves the
    /// membership there one step at a time: a new member joins as a learner,
    /// catches up (snapshot, then log) and is promoted in a joint change that
    /// also demotes a leaving voter; leaving learners are removed once they
    /// have seen the change.
    pub fn set_target(&self, group: u8, voters: Vec<RaftNodeId>) {
        self.send(Input::Admin(Admin::Target { group, voters }));
    }

    /// Asks the leader of `group` (this node) to hand leadership to `to`.
    pub fn transfer_leader(&self, group: u8, to: RaftNodeId) {
        self.send(Input::Admin(Admin::Transfer { group, to }));
    }

    /// A clean stop: this node hands every group it leads to a caught-up
    /// follower (at once, and again at each tick) and refuses leadership
    /// handed back. Answers how many groups it still leads that another
    /// live voter could take: call again until 0 (or a deadline) before
    /// stopping. Groups with no other live voter stay led.
    pub async fn leave(&self) -> usize {
        self.ask(|reply| Admin::Leave { reply }, 0).await.unwrap_or(0)
    }

    /// Makes this node campaign in `group` (pre-vote first).
    pub fn campaign(&self, group: u8) {
        self.send(Input::Admin(Admin::Campaign { group }));
    }

    /// Every hosted group's status, from the loop.
    pub async fn status(&self) -> Vec<GroupStatus> {
        self.ask(|reply| Admin::Status { reply }, 0).await.unwrap_or_default()
    }

    /// Whether this node hosts the group.
    pub fn is_hosted(&self, group: u8) -> bool {
        self.inner.board.slot(group).hosted.load(Ordering::Acquire)
    }

    /// The groups this node hosts.
    pub fn hosted(&self) -> Vec<u8> {
        (0..=u8::MAX).filter(|g| self.is_hosted(*g)).collect()
    }

    /// The leader of a hosted group as this node knows it.
    pub fn leader(&self, group: u8) -> Option<RaftNodeId> {
        let s = self.inner.board.slot(group);
        if !s.hosted.load(Ordering::Acquire) {
            return None;
        }
        match s.leader.load(Ordering::Relaxed) {
            0 => None,
            id => Some(id),
        }
    }

    /// Whether this node leads the group. A leader that stops hearing from a
    /// quorum steps down within an election timeout (check-quorum), so this
    /// is true only while a recent quorum backs it.
    pub fn is_leader(&self, group: u8) -> bool {
        let s = self.inner.board.slot(group);
        s.hosted.load(Ordering::Acquire)
            && s.role.load(Ordering::Relaxed) == role_code(StateRole::Leader)
    }

    /// Whether this node leads the group and has applied every entry
    /// committed before its term: a new leader holds earlier leaders'
    /// committed entries in its log, but applies them only once an entry
    /// of its own term commits. Until then its state may lack writes that
    /// were acknowledged, and a read served from it would miss them.
    pub fn is_leader_current(&self, group: u8) -> bool {
        let s = self.inner.board.slot(group);
        let from = s.led_from.load(Ordering::Relaxed);
        self.is_leader(group) && from > 0 && s.applied.load(Ordering::Relaxed) >= from
    }

    /// Whether this node is a voter of the group, as far as it knows.
    pub fn is_voter(&self, group: u8) -> bool {
        let s = self.inner.board.slot(group);
        s.hosted.load(Ordering::Acquire) && s.voter.load(Ordering::Relaxed)
    }

    /// Whether a hosted group has a configuration (it was bootstrapped, or
    /// received a snapshot from its leader).
    pub fn is_initialized(&self, group: u8) -> bool {
        let s = self.inner.board.slot(group);
        s.hosted.load(Ordering::Acquire) && s.initialized.load(Ordering::Relaxed)
    }

    /// How far this node has applied a hosted group's log.
    pub fn applied(&self, group: u8) -> u64 {
        self.inner.board.slot(group).applied.load(Ordering::Relaxed)
    }

    /// The current term of a hosted group.
    pub fn term(&self, group: u8) -> u64 {
        self.inner.board.slot(group).term.load(Ordering::Relaxed)
    }

    /// The log's counters since start.
    pub fn log_stats(&self) -> logdb::LogStats {
        self.inner.db.stats()
    }

    /// The options the engine runs with.
    pub fn options(&self) -> &Options {
        &self.inner.options
    }
}

/// The Raft id of a node: FNV-1a of its name, stable across versions (a
/// change would orphan every group's membership). Never 0.
pub fn raft_id(node: &NodeId) -> RaftNodeId {
    let h = node
        .0
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    h.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raft_ids_are_stable() {
        assert_eq!(raft_id(&NodeId("node-01".into())), raft_id(&NodeId("node-01".into())));
        assert_ne!(raft_id(&NodeId("node-01".into())), raft_id(&NodeId("node-02".into())));
        // Pinned: a change would orphan every group's membership.
        assert_eq!(raft_id(&NodeId("".into())), 0xcbf2_9ce4_8422_2325);
    }
}
