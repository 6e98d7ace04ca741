//! Many Raft groups in one node: [`MultiRaft`] opens the groups of the
//! buckets the node holds, routes the network's messages to them, and gives
//! the node one place to write, read and change membership.
//!
//! Settings follow what was measured for openraft 0.9 with 256 groups per
//! node (DESIGN.md): heartbeat 250 ms, election timeout 750–1500 ms. Two
//! node-level mechanisms make up for what 0.9 lacks:
//! - when the connection to a peer fails (a killed process resets its
//!   sockets at once), the groups that peer led campaign at once instead of
//!   waiting out the leader lease;
//! - groups are created lazily and removed when their replica moves away.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use openraft::error::{
    CheckIsLeaderError, ClientWriteError, ForwardToLeader, InitializeError, RaftError,
};
use openraft::{BasicNode, ChangeMembers, Config, ServerState, SnapshotPolicy};

use crate::log_store::LogStore;
use crate::network::{Dispatch, Network};
use crate::state_machine::GroupStateMachine;
use crate::{Raft, RaftNodeId, Request, StateMachine};

/// How the groups run. Every duration is configurable so tests can shorten them.
#[derive(Clone, Debug)]
pub struct MultiRaftOptions {
    /// Leader heartbeat interval; also openraft's AppendEntries timeout.
    pub heartbeat: Duration,
    /// Lower bound of the election timeout.
    pub election_min: Duration,
    /// Upper bound of the election timeout.
    pub election_max: Duration,
    /// Build a snapshot after this many applied entries since the last one.
    pub snapshot_every: u64,
    /// Log entries kept after a snapshot, so slightly lagging followers catch
    /// up from the log instead of a snapshot.
    pub keep_logs: u64,
    /// Where snapshots live (one directory per group).
    pub snapshot_dir: PathBuf,
    /// How long a write or a read index waits for a group that is electing
    /// (it knows no leader) to get one, instead of failing at once.
    pub leader_wait: Duration,
}

impl MultiRaftOptions {
    /// Defaults under `data_dir`.
    pub fn new(data_dir: &Path) -> Self {
        MultiRaftOptions {
            heartbeat: Duration::from_millis(250),
            election_min: Duration::from_millis(750),
            election_max: Duration::from_millis(1500),
            snapshot_every: 5000,
            keep_logs: 1000,
            snapshot_dir: data_dir.join("snapshots"),
            leader_wait: Duration::from_secs(3),
        }
    }
}

/// The pause before looking for a new leader of an electing group.
const PAUSE: Duration = Duration::from_millis(10);

/// Why a write or a read did not happen here.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    /// This node holds no replica of the group.
    #[error("this node holds no replica of group {0:02x}")]
    NotHosted(u8),
    /// Another node leads the group (if known: its id and address).
    #[error("not the leader of group {group:02x}")]
    NotLeader {
        /// The group.
        group: u8,
        /// The leader, if known.
        leader: Option<(RaftNodeId, BasicNode)>,
    },
    /// The group cannot serve now (no quorum, shutting down); retry.
    #[error("group {group:02x} is unavailable: {reason}")]
    Unavailable {
        /// The group.
        group: u8,
        /// Why.
        reason: String,
    },
}

/// How one call to a group's core ended, for [`MultiRaft::led`].
enum Call<T> {
    /// It was answered.
    Done(T),
    /// Only the leader can answer (named, if this node knows it).
    Forward(ForwardToLeader<RaftNodeId, BasicNode>),
    /// It failed otherwise.
    Failed(String),
}

/// Builds the state machine of a group.
pub type StateMachineFactory = Arc<dyn Fn(u8) -> Arc<dyn StateMachine> + Send + Sync>;

/// The groups of one node.
pub struct MultiRaft {
    id: RaftNodeId,
    config: Arc<Config>,
    options: MultiRaftOptions,
    log_store: LogStore,
    network: Network,
    factory: StateMachineFactory,
    groups: RwLock<BTreeMap<u8, Raft>>,
    /// Serializes opening and closing groups.
    lifecycle: tokio::sync::Mutex<()>,
    /// Groups whose elections are paused (see
    /// [`MultiRaft::guard_elections`]), with when a majority of their voters
    /// became reachable again, if it did.
    paused: RwLock<BTreeMap<u8, Option<std::time::Instant>>>,
    /// When the node started: peers count as reachable for a moment, so a
    /// restarted node can elect before its first exchanges.
    started: std::time::Instant,
}

impl MultiRaft {
    /// Starts the manager and reopens every group the log store has state for.
    pub async fn start(
        id: RaftNodeId,
        log_store: LogStore,
        network: Network,
        factory: StateMachineFactory,
        options: MultiRaftOptions,
    ) -> Result<Arc<MultiRaft>, String> {
        let config = Config {
            heartbeat_interval: options.heartbeat.as_millis() as u64,
            election_timeout_min: options.election_min.as_millis() as u64,
            election_timeout_max: options.election_max.as_millis() as u64,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(options.snapshot_every),
            max_in_snapshot_log_to_keep: options.keep_logs,
            ..Config::default()
        };
        let config =
            Arc::new(config.validate().map_err(|e| format!("invalid raft settings: {e}"))?);
        std::fs::create_dir_all(&options.snapshot_dir).map_err(|e| e.to_string())?;
        // Snapshots that were being received when the node stopped are garbage.
        let _ = std::fs::remove_dir_all(options.snapshot_dir.join("incoming"));
        let multi = Arc::new(MultiRaft {
            id,
            config,
            options,
            log_store,
            network,
            factory,
            groups: RwLock::new(BTreeMap::new()),
            lifecycle: tokio::sync::Mutex::new(()),
            paused: RwLock::new(BTreeMap::new()),
            started: std::time::Instant::now(),
        });
        for group in multi.log_store.groups().map_err(|e| e.to_string())? {
            multi.open(group).await.map_err(|e| e.to_string())?;
        }
        multi.clone().watch_peer_failures();
        multi.clone().guard_elections();
        Ok(multi)
    }

    /// This node's Raft id.
    pub fn id(&self) -> RaftNodeId {
        self.id
    }

    /// The network, e.g. to tell it where nodes registered.
    pub fn network(&self) -> &Network {
        &self.network
    }

    /// The group, if this node hosts it.
    pub fn group(&self, group: u8) -> Option<Raft> {
        self.groups.read().unwrap_or_else(|e| e.into_inner()).get(&group).cloned()
    }

    /// The groups open now, with their Raft handles.
    fn groups_now(&self) -> Vec<(u8, Raft)> {
        let groups = self.groups.read().unwrap_or_else(|e| e.into_inner());
        groups.iter().map(|(g, r)| (*g, r.clone())).collect()
    }

    /// The groups this node hosts.
    pub fn hosted(&self) -> BTreeSet<u8> {
        self.groups.read().unwrap_or_else(|e| e.into_inner()).keys().copied().collect()
    }

    /// Opens a group (idempotent). A new group starts empty and waits for a
    /// leader to contact it, or for [`MultiRaft::initialize`].
    pub async fn open(&self, group: u8) -> Result<Raft, GroupError> {
        let _l = self.lifecycle.lock().await;
        if let Some(r) = self.group(group) {
            return Ok(r);
        }
        let unavailable = |reason: String| GroupError::Unavailable { group, reason };
        let sm = GroupStateMachine::open(
            group,
            (self.factory)(group),
            self.log_store.clone(),
            &self.options.snapshot_dir,
        )
        .await
        .map_err(|e| unavailable(e.to_string()))?;
        let raft = Raft::new(
            self.id,
            self.config.clone(),
            self.network.factory(group),
            self.log_store.group(group),
            sm,
        )
        .await
        .map_err(|e| unavailable(e.to_string()))?;
        self.groups.write().unwrap_or_else(|e| e.into_inner()).insert(group, raft.clone());
        Ok(raft)
    }

    /// Makes a new group's first membership. Does nothing if the group was
    /// initialized before (here, or by the members' leader).
    pub async fn initialize(
        &self,
        group: u8,
        members: BTreeMap<RaftNodeId, BasicNode>,
    ) -> Result<(), GroupError> {
        let raft = self.open(group).await?;
        match raft.initialize(members).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
            Err(e) => Err(GroupError::Unavailable { group, reason: e.to_string() }),
        }
    }

    /// Stops a group but keeps its log and state: the group can be opened
    /// again as it was (the replica left the map, and may come back).
    pub async fn stop(&self, group: u8) {
        let _l = self.lifecycle.lock().await;
        let raft = self.groups.write().unwrap_or_else(|e| e.into_inner()).remove(&group);
        self.paused.write().unwrap_or_else(|e| e.into_inner()).remove(&group);
        if let Some(raft) = raft {
            let _ = raft.shutdown().await;
        }
    }

    /// Stops a group and forgets its log (its replica moved away for good).
    /// The state machine's data is the caller's to remove.
    pub async fn close(&self, group: u8) -> Result<(), GroupError> {
        let _l = self.lifecycle.lock().await;
        let raft = self.groups.write().unwrap_or_else(|e| e.into_inner()).remove(&group);
        self.paused.write().unwrap_or_else(|e| e.into_inner()).remove(&group);
        if let Some(raft) = raft {
            let _ = raft.shutdown().await;
        }
        self.log_store
            .remove_group(group)
            .await
            .map_err(|e| GroupError::Unavailable { group, reason: e.to_string() })?;
        let _ = std::fs::remove_dir_all(self.options.snapshot_dir.join(format!("{group:02x}")));
        Ok(())
    }

    fn hosted_or_err(&self, group: u8) -> Result<Raft, GroupError> {
        self.group(group).ok_or(GroupError::NotHosted(group))
    }

    /// The leader of a group as this node knows it.
    pub fn leader(&self, group: u8) -> Option<(RaftNodeId, BasicNode)> {
        let raft = self.group(group)?;
        let m = raft.metrics().borrow().clone();
        let id = m.current_leader?;
        let node = m.membership_config.membership().get_node(&id).cloned()?;
        Some((id, node))
    }

    /// Proposes a command; returns its log index and the state machine's answer.
    /// Waits for an electing group (see [`MultiRaft::led`]).
    pub async fn write(&self, group: u8, command: Vec<u8>) -> Result<(u64, Vec<u8>), GroupError> {
        self.led(group, |raft| {
            let command = command.clone();
            async move {
                match raft.client_write(Request(command)).await {
                    Ok(r) => Call::Done((r.log_id.index, r.data.0)),
                    Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                        Call::Forward(f)
                    }
                    Err(e) => Call::Failed(e.to_string()),
                }
            }
        })
        .await
    }

    /// Confirms with a quorum that this node leads the group and waits until
    /// everything committed before now is applied: a read after this sees
    /// every write acknowledged before it. Waits for an electing group like
    /// [`MultiRaft::write`].
    pub async fn read_index(&self, group: u8) -> Result<(), GroupError> {
        self.led(group, |raft| async move {
            match raft.ensure_linearizable().await {
                Ok(_) => Call::Done(()),
                Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                    Call::Forward(f)
                }
                Err(e) => Call::Failed(e.to_string()),
            }
        })
        .await
    }

    /// Runs `call` on the group's core, which only its leader can answer.
    ///
    /// A group that knows no leader (an election is under way) is given up
    /// to [`MultiRaftOptions::leader_wait`] to elect one: the call is then
    /// made again, here if this node won, or the error names the winner.
    /// Nothing was proposed when openraft answers "forward to leader", so
    /// calling again cannot apply a command twice.
    async fn led<T, F, Fut>(&self, group: u8, mut call: F) -> Result<T, GroupError>
    where
        F: FnMut(Raft) -> Fut,
        Fut: std::future::Future<Output = Call<T>>,
    {
        let raft = self.hosted_or_err(group)?;
        let deadline = tokio::time::Instant::now() + self.options.leader_wait;
        loop {
            match call(raft.clone()).await {
                Call::Done(t) => return Ok(t),
                Call::Forward(f) => {
                    if f.leader_id.is_none() && self.await_leader(&raft, deadline).await {
                        continue;
                    }
                    let leader = f.leader_id.zip(f.leader_node).or_else(|| self.leader(group));
                    return Err(GroupError::NotLeader { group, leader });
                }
                Call::Failed(reason) => return Err(GroupError::Unavailable { group, reason }),
            }
        }
    }

    /// Waits until the group knows a leader, at most until `deadline`;
    /// returns whether it does. The metrics can lag the core by a moment,
    /// so it pauses briefly first: a stale leader in them must not make the
    /// caller retry in a tight loop.
    async fn await_leader(&self, raft: &Raft, deadline: tokio::time::Instant) -> bool {
        tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + PAUSE)).await;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return false;
        }
        raft.wait(Some(left)).metrics(|m| m.current_leader.is_some(), "a leader").await.is_ok()
    }

    /// Whether this node leads the group now (as far as it knows).
    pub fn is_leader(&self, group: u8) -> bool {
        self.group(group).is_some_and(|r| r.metrics().borrow().state == ServerState::Leader)
    }

    /// Moves the group's membership toward `voters` (run on the leader):
    /// 1. new members join as learners and catch up (log or snapshot);
    /// 2. the voters become exactly `voters`; members that leave stay on as
    ///    learners for now, so that they receive the entry that demotes them
    ///    and know to let go of the group (a member removed outright stops
    ///    hearing from the leader and would never learn it was removed);
    /// 3. learners that are not wanted and have replicated that entry are
    ///    removed.
    ///
    /// One change at a time; returns whether anything changed.
    pub async fn reconcile(
        &self,
        group: u8,
        voters: BTreeMap<RaftNodeId, BasicNode>,
    ) -> Result<bool, GroupError> {
        let raft = self.hosted_or_err(group)?;
        let metrics = raft.metrics().borrow().clone();
        if metrics.state != ServerState::Leader || voters.is_empty() {
            return Ok(false);
        }
        let err = |e: String| GroupError::Unavailable { group, reason: e };
        let membership = metrics.membership_config.membership().clone();
        let wanted: BTreeSet<RaftNodeId> = voters.keys().copied().collect();
        let current: BTreeSet<RaftNodeId> = membership.voter_ids().collect();
        let mut changed = false;
        // A member that restarted elsewhere (a new address): update it first,
        // or the leader keeps sending to the old one.
        let moved: BTreeMap<RaftNodeId, BasicNode> = voters
            .iter()
            .filter(|(id, node)| membership.get_node(id).is_some_and(|n| n.addr != node.addr))
            .map(|(id, node)| (*id, node.clone()))
            .collect();
        if !moved.is_empty() {
            raft.change_membership(ChangeMembers::SetNodes(moved), false)
                .await
                .map_err(|e| err(e.to_string()))?;
            changed = true;
        }
        if current != wanted {
            for (id, node) in voters.iter().filter(|(id, _)| membership.get_node(id).is_none()) {
                // Blocking: returns once the learner has caught up.
                raft.add_learner(*id, node.clone(), true).await.map_err(|e| err(e.to_string()))?;
            }
            raft.change_membership(ChangeMembers::ReplaceAllVoters(wanted.clone()), true)
                .await
                .map_err(|e| err(e.to_string()))?;
            changed = true;
        }
        // Learners that are not wanted, once they have the current membership.
        let metrics = raft.metrics().borrow().clone();
        let config_index = metrics.membership_config.log_id().map(|l| l.index);
        let caught_up: BTreeSet<RaftNodeId> = metrics
            .membership_config
            .membership()
            .learner_ids()
            .filter(|id| !wanted.contains(id))
            .filter(|id| {
                let matched = metrics
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(id).cloned().flatten())
                    .map(|l| l.index);
                matched.is_some() && matched >= config_index
            })
            .collect();
        if !caught_up.is_empty() {
            raft.change_membership(ChangeMembers::RemoveNodes(caught_up), false)
                .await
                .map_err(|e| err(e.to_string()))?;
            changed = true;
        }
        Ok(changed)
    }

    /// Whether the leader's view of the group differs from `voters`: other
    /// voters, members that are not wanted, or members at another address.
    pub fn needs_reconcile(&self, group: u8, voters: &BTreeMap<RaftNodeId, BasicNode>) -> bool {
        let Some(raft) = self.group(group) else { return false };
        let m = raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        membership.voter_ids().collect::<BTreeSet<_>>() != voters.keys().copied().collect()
            || membership.learner_ids().any(|l| !voters.contains_key(&l))
            || voters
                .iter()
                .any(|(id, node)| membership.get_node(id).is_some_and(|n| n.addr != node.addr))
    }

    /// Whether this node is a voter of the group, as far as it knows.
    pub fn is_voter(&self, group: u8) -> bool {
        self.group(group).is_some_and(|r| {
            r.metrics().borrow().membership_config.membership().voter_ids().any(|v| v == self.id)
        })
    }

    /// Whether this node may campaign in the group: it can reach a majority
    /// of the group's voters (itself included).
    pub fn may_campaign(&self, group: u8) -> bool {
        !self.paused.read().unwrap_or_else(|e| e.into_inner()).contains_key(&group)
    }

    /// Pauses the elections of a group while this node cannot reach a
    /// majority of its voters, and resumes them when it can again.
    ///
    /// Openraft 0.9 has no pre-vote: a node that is cut off from the others
    /// keeps campaigning, each time with a higher term, and when it comes
    /// back that term deposes the leaders of its groups (each then has no
    /// leader for an election). So every half heartbeat (`p`) the node probes
    /// the peers it has not heard from within `p` (an empty batch on the RPC
    /// connection, which must answer within `p`), and switches off the
    /// election timer (`runtime_config().elect(false)`) of every group whose
    /// voters it has not, for a majority, heard from within the window
    /// `election_min - 3p`. A node cut off at `t` pauses by `t + window + 2p`,
    /// before its first election timeout can expire; a healthy link is
    /// heard from at least every `2p` plus a round trip, well within the
    /// window. A crashed peer pauses nothing on the nodes that still reach
    /// each other: they are a majority.
    ///
    /// Elections resume an election timeout (the upper bound) after a
    /// majority is reachable again: the timer has long expired, and would
    /// fire at once; meanwhile a live leader reaches this node and resets it.
    ///
    /// The fast failover on a failed link ([`MultiRaft::watch_peer_failures`])
    /// asks the same question first, with fresh probes.
    fn guard_elections(self: Arc<Self>) {
        let weak = Arc::downgrade(&self);
        let period = self.options.heartbeat / 2;
        let window = self.options.election_min.saturating_sub(period * 3).max(period * 2);
        drop(self);
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(period);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                let Some(multi) = weak.upgrade() else { return };
                multi.guard_once(period, window).await;
            }
        });
    }

    async fn guard_once(&self, tick: Duration, window: Duration) {
        let groups = self.groups_now();
        let mut voters: Vec<(u8, Raft, Vec<RaftNodeId>)> = Vec::with_capacity(groups.len());
        let mut peers: BTreeMap<RaftNodeId, String> = BTreeMap::new();
        for (group, raft) in groups {
            let m = raft.metrics().borrow().clone();
            let membership = m.membership_config.membership();
            let ids: Vec<RaftNodeId> = membership.voter_ids().collect();
            for id in ids.iter().filter(|id| **id != self.id) {
                if let Some(node) = membership.get_node(id) {
                    peers.entry(*id).or_insert_with(|| node.addr.clone());
                }
            }
            voters.push((group, raft, ids));
        }
        let now = std::time::Instant::now();
        let fresh = |id: RaftNodeId, within: Duration| {
            self.network.last_ok(id).is_some_and(|t| now.duration_since(t) < within)
        };
        let probes = peers
            .iter()
            .filter(|(id, _)| !fresh(**id, tick))
            .map(|(id, addr)| self.network.probe(*id, addr, tick));
        futures_util::future::join_all(probes).await;

        let now = std::time::Instant::now();
        let starting = now.duration_since(self.started) < window;
        let reachable = |id: RaftNodeId| {
            id == self.id
                || starting
                || self.network.last_ok(id).is_some_and(|t| now.duration_since(t) < window)
        };
        let mut paused = Vec::new();
        let mut resumed = Vec::new();
        for (group, raft, ids) in voters {
            if ids.is_empty() {
                // Not initialized yet (a replica waiting to be added): it
                // has nobody to campaign among.
                continue;
            }
            let quorum = ids.iter().filter(|id| reachable(**id)).count() * 2 > ids.len();
            let mut set = self.paused.write().unwrap_or_else(|e| e.into_inner());
            match (set.get(&group).copied(), quorum) {
                (None, true) => {}
                (None, false) | (Some(Some(_)), false) => {
                    if set.insert(group, None).is_none() {
                        raft.runtime_config().elect(false);
                        paused.push(group);
                    }
                }
                (Some(None), true) => {
                    set.insert(group, Some(now));
                }
                (Some(Some(since)), true) => {
                    // Back in touch: the leader, if alive, has had time to
                    // reach this node and reset its election timer, which
                    // would otherwise expire the moment it is switched on.
                    if now.duration_since(since) >= self.options.election_max {
                        set.remove(&group);
                        raft.runtime_config().elect(true);
                        resumed.push(group);
                    }
                }
                (Some(None), false) => {}
            }
        }
        if !paused.is_empty() {
            tracing::warn!(
                groups = paused.len(),
                "cannot reach a majority of the voters: elections paused in these groups"
            );
        }
        if !resumed.is_empty() {
            tracing::info!(
                groups = resumed.len(),
                "a majority is reachable again: elections resumed"
            );
        }
    }

    /// On a failed connection to a peer, the groups it led elect a new
    /// leader now instead of waiting out the leader lease. Every survivor
    /// first campaigns, which ends its own lease (0.9 voters refuse to vote
    /// while they believe in a leader); a moment later the lowest-id
    /// remaining voter campaigns again if the group still has no leader, and
    /// wins.
    fn watch_peer_failures(self: Arc<Self>) {
        let mut failures = self.network.peer_failures();
        let weak = Arc::downgrade(&self);
        // One round of elections per peer per election timeout: a link that
        // flaps must not turn into an election storm.
        let quiet = self.options.election_max;
        let probe_timeout = self.options.heartbeat / 2;
        drop(self);
        tokio::spawn(async move {
            let mut last: BTreeMap<RaftNodeId, std::time::Instant> = BTreeMap::new();
            loop {
                let peer = match failures.recv().await {
                    Ok(peer) => peer,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(_) => return,
                };
                if last.get(&peer).is_some_and(|t| t.elapsed() < quiet) {
                    continue;
                }
                last.insert(peer, std::time::Instant::now());
                let Some(multi) = weak.upgrade() else { return };
                let groups = multi.groups_now();
                // The groups the peer led, with their other voters.
                let led: Vec<(Raft, Vec<(RaftNodeId, String)>)> = groups
                    .into_iter()
                    .filter_map(|(group, raft)| {
                        let m = raft.metrics().borrow().clone();
                        if m.current_leader != Some(peer) || !multi.may_campaign(group) {
                            return None;
                        }
                        let membership = m.membership_config.membership();
                        let others = membership
                            .voter_ids()
                            .filter(|v| *v != peer)
                            .map(|v| (v, membership.get_node(&v).map(|n| n.addr.clone())))
                            .map(|(v, addr)| (v, addr.unwrap_or_default()))
                            .collect();
                        Some((raft, others))
                    })
                    .collect();
                // This node may be the one that was cut off, not the peer:
                // campaign only where the voters it reaches now, itself
                // included, are a majority without the peer.
                let mut to_probe: BTreeMap<RaftNodeId, String> = BTreeMap::new();
                for (_, others) in &led {
                    for (id, addr) in others.iter().filter(|(id, _)| *id != multi.id) {
                        to_probe.entry(*id).or_insert_with(|| addr.clone());
                    }
                }
                let asked = std::time::Instant::now();
                let probes =
                    to_probe.iter().map(|(id, addr)| multi.network.probe(*id, addr, probe_timeout));
                futures_util::future::join_all(probes).await;
                let reached = |id: RaftNodeId| {
                    id == multi.id || multi.network.last_ok(id).is_some_and(|t| t >= asked)
                };
                let mut again = Vec::new();
                for (raft, others) in led {
                    let voters = others.len() + 1;
                    if others.iter().filter(|(id, _)| reached(*id)).count() * 2 <= voters {
                        continue;
                    }
                    let _ = raft.trigger().elect().await;
                    if others.iter().map(|(id, _)| *id).min() == Some(multi.id) {
                        again.push(raft);
                    }
                }
                drop(multi);
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    for raft in again {
                        let leader = raft.metrics().borrow().current_leader;
                        if leader.is_none() || leader == Some(peer) {
                            let _ = raft.trigger().elect().await;
                        }
                    }
                });
            }
        });
    }

    /// Stops every group.
    pub async fn shutdown(&self) {
        let groups: Vec<Raft> =
            std::mem::take(&mut *self.groups.write().unwrap_or_else(|e| e.into_inner()))
                .into_values()
                .collect();
        for raft in groups {
            let _ = raft.shutdown().await;
        }
    }
}

impl Dispatch for MultiRaft {
    fn raft(&self, group: u8) -> Option<Raft> {
        self.group(group)
    }

    fn snapshot_dir(&self) -> PathBuf {
        self.options.snapshot_dir.join("incoming")
    }
}
