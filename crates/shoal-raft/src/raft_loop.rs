//! The Raft loop: one thread that owns every group's `RawNode` and drives
//! them in turns (see the module docs of [`super`] for the shape).
//!
//! # A turn
//!
//! 1. Wait for input (or the next tick), then drain everything queued.
//! 2. Handle each input: step peer messages, queue proposals and reads,
//!    note persisted batches and applied positions, answer admin requests.
//! 3. On a tick: tick every group; retry or expire waiting requests; start
//!    snapshots raft-rs asked for; move memberships toward their targets.
//! 4. For every group touched: propose its queued commands as one message,
//!    issue one read index for its queued reads, then handle its `Ready`.
//! 5. Send one frame per peer and one batch to the log writer.
//!
//! # Proposals and their answers
//!
//! A proposal is answered by the apply thread once its entry is applied, or
//! here with an error: [`GroupError::NotLeader`] before anything was
//! proposed (another node leads; the caller forwards there), or
//! [`GroupError::Unavailable`] when its entry was replaced by another
//! leader's (it did not happen) or fell behind a snapshot (unknown). A
//! group with no leader, or whose leadership is moving, keeps requests
//! waiting up to `leader_wait` and then answers `NotLeader` without a leader.
//!
//! # Configuration changes
//!
//! A committed configuration change is applied to raft-rs when the apply
//! thread reports the entries before it applied, so raft-rs's view of the
//! configuration always matches the applied index; a checkpoint then stores
//! that configuration with the index, which is what a restart resumes from.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use raft::prelude::{ConfChangeV2, Entry, Message, MessageType, Snapshot};
use raft::{RawNode, SnapshotStatus, StateRole};
use tokio::sync::oneshot;

use crate::apply::{self, Task};
use crate::logdb::{self, ApplyState, Batch, LogDb, Op, Writer};
use crate::membership::{Step, conf_change, next_step};
use crate::snapshot::Snapshots;
use crate::storage::GroupStorage;
use crate::transport::{FrameBuf, Transport};
use crate::{
    Admin, Answered, Board, Factory, GroupError, GroupStatus, Input, Options, RaftNodeId,
    StateMachine, View,
};

/// The log is compacted once a checkpoint is this many entries past the
/// `keep_logs` kept behind it: a group holds at most about
/// `keep_logs + COMPACT_STEP` applied entries.
const COMPACT_STEP: u64 = 64;

/// At most this many bytes of applied entries are kept behind a checkpoint,
/// whatever `keep_logs` says: large entries (bulk inserts) would otherwise
/// fill memory and make every segment rotation rewrite tens of megabytes.
const KEEP_BYTES: u64 = 1 << 20;

type Reply<A> = oneshot::Sender<Answered<A>>;
type ReadReply = oneshot::Sender<Result<(), GroupError>>;
type BootReply = oneshot::Sender<Result<bool, GroupError>>;

/// A request waiting for the group to have a leader.
enum Waiting<A> {
    Write { data: Vec<u8>, reply: Reply<A>, at: Instant },
    Read { reply: ReadReply, at: Instant },
}

impl<A> Waiting<A> {
    fn at(&self) -> Instant {
        match self {
            Waiting::Write { at, .. } | Waiting::Read { at, .. } => *at,
        }
    }

    fn fail(self, error: GroupError) {
        match self {
            Waiting::Write { reply, .. } => drop(reply.send(Err(error))),
            Waiting::Read { reply, .. } => drop(reply.send(Err(error))),
        }
    }
}

impl<A> Group<A> {
    /// Where a request goes given who leads (`Ok`: this node; `Err(Some)`:
    /// another node; `Err(None)`: nobody yet): this turn's queues, a refusal
    /// naming the leader (nothing was proposed), or the waiting list until
    /// `wait` has passed since it arrived.
    fn place(
        &mut self,
        group: u8,
        request: Waiting<A>,
        who: &Result<(), Option<RaftNodeId>>,
        wait: Duration,
        now: Instant,
    ) {
        match (who, request) {
            (Ok(()), Waiting::Write { data, reply, .. }) => self.to_propose.push((data, reply)),
            (Ok(()), Waiting::Read { reply, at }) => self.reads.push((reply, at)),
            (Err(leader), request) => {
                if leader.is_some() || now.duration_since(request.at()) >= wait {
                    request.fail(GroupError::NotLeader { group, leader: *leader });
                } else {
                    self.waiting.push(request);
                }
            }
        }
    }
}

/// Reads that share one read index.
struct ReadBatch {
    ctx: u64,
    issued: Instant,
    waiters: Vec<(ReadReply, Instant)>,
}

/// What to do once a ready's writes are durable.
struct Persist {
    group: u8,
    incarnation: u64,
    number: u64,
    last_index: Option<u64>,
    messages: Vec<Message>,
    /// The snapshot index, if the ready restored one.
    snapshot: Option<u64>,
}

/// A ready that restores a snapshot, held until the apply thread restored
/// the state machine: its writes go to the log only then.
struct Restoring {
    ops: Vec<Op>,
    persist: Persist,
}

/// One hosted group.
struct Group<A> {
    raw: RawNode<GroupStorage>,
    incarnation: u64,
    /// Proposed and not yet answered: (index, term, reply), by index.
    proposals: VecDeque<(u64, u64, Reply<A>)>,
    /// To propose this turn.
    to_propose: Vec<(Vec<u8>, Reply<A>)>,
    waiting: Vec<Waiting<A>>,
    /// Reads to confirm this turn.
    reads: Vec<(ReadReply, Instant)>,
    read_batches: VecDeque<ReadBatch>,
    /// Confirmed reads waiting for the apply thread to reach their index.
    read_ready: Vec<(u64, Vec<(ReadReply, Instant)>)>,
    /// How far the apply thread applied.
    applied: u64,
    /// Committed configuration changes not applied yet, by index.
    pending_cc: VecDeque<(u64, ConfChangeV2)>,
    /// The index of the last configuration change applied.
    last_cc: u64,
    /// Readies handed to the log writer and not reported written.
    inflight: usize,
    restoring: Option<Restoring>,
    /// A received snapshot's index and files, until its ready comes.
    incoming: Option<(u64, PathBuf)>,
    target: Option<BTreeSet<RaftNodeId>>,
    building: bool,
    build_after: Instant,
    campaign_at: Option<Instant>,
    /// The commit index followers were last sent with a heartbeat (leader).
    told_commit: u64,
}

struct Loop<S: StateMachine> {
    opts: Options,
    db: Arc<LogDb>,
    writer: Writer,
    apply_tx: mpsc::Sender<Vec<Task<S::Answer>>>,
    /// Work for the apply thread from this turn, sent at its end.
    tasks: Vec<Task<S::Answer>>,
    inbox: mpsc::Receiver<Input<S::Answer>>,
    board: Arc<Board>,
    transport: Arc<Transport>,
    snapshots: Snapshots,
    groups: Vec<Option<Box<Group<S::Answer>>>>,
    incarnations: u64,
    batch: Batch,
    turn_readies: Vec<Persist>,
    inflight: VecDeque<(u64, Vec<Persist>)>,
    next_job: u64,
    frames: HashMap<RaftNodeId, FrameBuf>,
    dirty: Vec<u8>,
    is_dirty: [bool; 256],
    next_tick: Instant,
    next_ctx: u64,
    changing: BTreeSet<u8>,
    /// Peers whose connection failed, until a message from them arrives:
    /// no leadership is handed to them.
    down: BTreeSet<RaftNodeId>,
    /// Ticks so far.
    ticks: u64,
    /// Bootstraps waiting for their group to be quiet.
    boots: Vec<(u8, Vec<RaftNodeId>, BootReply)>,
    stopping: bool,
    /// The node is stopping cleanly: it hands every group it leads over,
    /// and takes none back.
    leaving: bool,
}

/// Opens the log and starts the loop and apply threads.
pub(crate) fn start<S: StateMachine>(
    opts: Options,
    factory: Factory<S>,
    inbox_tx: mpsc::Sender<Input<S::Answer>>,
    inbox: mpsc::Receiver<Input<S::Answer>>,
    board: Arc<Board>,
    transport: Arc<Transport>,
    snapshots: Snapshots,
) -> Result<(Vec<std::thread::JoinHandle<()>>, Arc<LogDb>), logdb::Error> {
    let io = |e: std::io::Error| logdb::Error::Io(e.to_string());
    let db = Arc::new(LogDb::open(&opts.dir.join("log"))?);
    let records = db.load()?;
    let writer = {
        let tx = inbox_tx.clone();
        Writer::start(db.clone(), move |ids: Vec<u64>, result| {
            let _ = tx.send(Input::Persisted { ids, result });
        })
        .map_err(io)?
    };
    let (apply_tx, apply_rx) = mpsc::channel();
    let apply = apply::start(
        factory,
        snapshots.clone(),
        opts.settings.checkpoint_interval,
        apply_rx,
        inbox_tx,
    )
    .map_err(io)?;
    let mut lp: Loop<S> = Loop {
        next_tick: Instant::now() + opts.settings.tick,
        opts,
        db,
        writer,
        apply_tx,
        tasks: Vec::new(),
        inbox,
        board,
        transport,
        snapshots,
        groups: (0..256).map(|_| None).collect(),
        incarnations: 0,
        batch: Batch::default(),
        turn_readies: Vec::new(),
        inflight: VecDeque::new(),
        next_job: 1,
        frames: HashMap::new(),
        dirty: Vec::new(),
        is_dirty: [false; 256],
        next_ctx: 1,
        changing: BTreeSet::new(),
        down: BTreeSet::new(),
        ticks: 0,
        boots: Vec::new(),
        stopping: false,
        leaving: false,
    };
    for (group, record) in records {
        let storage = GroupStorage::from_record(group, lp.db.clone(), record);
        lp.host(group, storage).map_err(|e| logdb::Error::InvalidData(e.to_string()))?;
    }
    let db = lp.db.clone();
    let handle = std::thread::Builder::new()
        .name("shoal-raft-loop".into())
        .spawn(move || lp.run())
        .map_err(io)?;
    Ok((vec![handle, apply], db))
}

fn not_hosted<T>(group: u8) -> Result<T, GroupError> {
    Err(GroupError::NotHosted(group))
}

impl<S: StateMachine> Loop<S> {
    fn run(mut self) {
        while !self.stopping {
            let wait = self.next_tick.saturating_duration_since(Instant::now());
            match self.inbox.recv_timeout(wait) {
                Ok(input) => {
                    self.handle(input);
                    // Everything queued now, bounded so ticks keep their pace.
                    for _ in 0..8192 {
                        match self.inbox.try_recv() {
                            Ok(input) => self.handle(input),
                            Err(_) => break,
                        }
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            if Instant::now() >= self.next_tick {
                self.tick();
                self.next_tick = (self.next_tick + self.opts.settings.tick).max(Instant::now());
            }
            self.process();
            self.start_groups();
            self.flush();
        }
        // Outstanding requests learn that the node stops.
        for group in 0..=u8::MAX {
            if self.groups[group as usize].is_some() {
                self.unhost(group);
            }
        }
        self.flush();
    }

    fn group(&mut self, group: u8) -> Option<&mut Group<S::Answer>> {
        self.groups[group as usize].as_deref_mut()
    }

    fn touch(&mut self, group: u8) {
        if !self.is_dirty[group as usize] {
            self.is_dirty[group as usize] = true;
            self.dirty.push(group);
        }
    }

    /// Starts hosting `group` with `storage`.
    fn host(&mut self, group: u8, storage: GroupStorage) -> raft::Result<()> {
        let (index, term) = storage.checkpoint();
        let config = self.raft_config(index);
        let raw = RawNode::new(&config, storage, &crate::logger::for_group(group))?;
        self.tasks.push(Task::Open { group, index, term });
        self.incarnations += 1;
        let now = Instant::now();
        let applied = raw.raft.raft_log.applied;
        self.groups[group as usize] = Some(Box::new(Group {
            raw,
            incarnation: self.incarnations,
            proposals: VecDeque::new(),
            to_propose: Vec::new(),
            waiting: Vec::new(),
            reads: Vec::new(),
            read_batches: VecDeque::new(),
            read_ready: Vec::new(),
            applied,
            pending_cc: VecDeque::new(),
            last_cc: 0,
            inflight: 0,
            restoring: None,
            incoming: None,
            target: None,
            building: false,
            build_after: now,
            campaign_at: None,
            told_commit: 0,
        }));
        let id = self.opts.id;
        let g = self.group(group).expect("just hosted");
        let voters = g.raw.raft.prs().conf().to_conf_state().voters;
        if voters == [id] {
            // Alone: nobody to wait for (a standalone node restarts ready).
            let _ = g.raw.campaign();
        }
        self.publish(group);
        self.touch(group);
        Ok(())
    }

    fn raft_config(&self, applied: u64) -> raft::Config {
        raft::Config {
            id: self.opts.id,
            election_tick: self.opts.settings.election_ticks,
            // The loop sends every leader's heartbeats itself, all groups in
            // the same tick (see `tick`); raft-rs's own would come at other
            // ticks, group by group.
            heartbeat_tick: self.opts.settings.election_ticks - 1,
            applied,
            max_size_per_msg: self.opts.max_append_bytes,
            max_inflight_msgs: 256,
            check_quorum: true,
            pre_vote: true,
            batch_append: true,
            // The commit index rides the next append or heartbeat instead of
            // a message of its own per commit (half the messages of a write);
            // a group that goes quiet tells its followers at the next tick
            // (see `tick`).
            skip_bcast_commit: true,
            max_committed_size_per_ready: 8 << 20,
            ..raft::Config::default()
        }
    }

    /// Tells readers what the group looks like now (called whenever its
    /// role, term or configuration changes).
    fn publish(&self, group: u8) {
        let Some(g) = self.groups[group as usize].as_deref() else {
            let view = View {
                hosted: false,
                initialized: false,
                leader: 0,
                role: StateRole::Follower,
                term: 0,
                voter: false,
                led_from: 0,
            };
            self.board.set(group, view);
            return;
        };
        let r = &g.raw.raft;
        let voter = r.prs().conf().voters().contains(self.opts.id);
        let initialized = g.raw.store().is_initialized();
        let view = View {
            hosted: true,
            initialized,
            leader: r.leader_id,
            role: r.state,
            term: r.term,
            voter,
            led_from: if r.state == StateRole::Leader {
                term_start(&r.raft_log, r.term)
            } else {
                0
            },
        };
        self.board.set(group, view);
        self.board.set_applied(group, g.applied);
    }

    /// Stops hosting `group`: every request waiting on it fails.
    fn unhost(&mut self, group: u8) -> Option<Box<Group<S::Answer>>> {
        let mut g = self.groups[group as usize].take()?;
        for (_, _, reply) in g.proposals.drain(..) {
            let _ = reply.send(Err(GroupError::Unavailable {
                group,
                reason: "the replica stopped before the write's outcome was known".into(),
            }));
        }
        for (_, reply) in g.to_propose.drain(..) {
            let _ = reply.send(not_hosted(group));
        }
        for w in g.waiting.drain(..) {
            w.fail(GroupError::NotHosted(group));
        }
        let reads = g.reads.drain(..).chain(g.read_batches.drain(..).flat_map(|b| b.waiters));
        let reads: Vec<_> = reads.chain(g.read_ready.drain(..).flat_map(|(_, w)| w)).collect();
        for (reply, _) in reads {
            let _ = reply.send(not_hosted(group));
        }
        if let Some((_, dir)) = g.incoming.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
        self.changing.remove(&group);
        self.tasks.push(Task::Close { group });
        self.publish(group);
        Some(g)
    }

    fn handle(&mut self, input: Input<S::Answer>) {
        match input {
            Input::Propose { group, data, reply, at } => {
                self.admit(group, Waiting::Write { data, reply, at })
            }
            Input::Read { group, reply, at } => self.admit(group, Waiting::Read { reply, at }),
            Input::Messages(messages) => {
                let leaving = self.leaving;
                if !self.down.is_empty() {
                    for (_, m) in &messages {
                        self.down.remove(&m.from);
                    }
                }
                for (group, m) in messages {
                    if leaving && m.get_msg_type() == MessageType::MsgTimeoutNow {
                        // A leaving node refuses leadership handed to it.
                        continue;
                    }
                    if let Some(g) = self.group(group) {
                        let _ = g.raw.step(m);
                        self.touch(group);
                    }
                }
            }
            Input::Snapshot { group, message, dir } => self.incoming_snapshot(group, *message, dir),
            Input::SnapshotSent { group, to, ok } => {
                if let Some(g) = self.group(group) {
                    let status = if ok { SnapshotStatus::Finish } else { SnapshotStatus::Failure };
                    g.raw.report_snapshot(to, status);
                    self.touch(group);
                }
            }
            Input::PeerDown(peer) => self.peer_down(peer),
            Input::Persisted { ids, result } => {
                for id in ids {
                    self.persisted(id, result.clone());
                }
            }
            Input::Batch(inputs) => {
                for input in inputs {
                    self.handle(input);
                }
            }
            Input::Applied { group, index, term, synced } => {
                self.applied(group, index, term, synced)
            }
            Input::Built { group, index, term, result } => self.built(group, index, term, result),
            Input::Restored { group, result } => self.restored(group, result),
            Input::Admin(admin) => self.admin(admin),
        }
    }

    /// Who can take a request for `g` now: `Ok(())` this node, `Err(Some)`
    /// another leader, `Err(None)` nobody yet.
    fn leadership(&self, g: &Group<S::Answer>) -> Result<(), Option<RaftNodeId>> {
        let r = &g.raw.raft;
        if r.state == StateRole::Leader {
            if r.lead_transferee.is_none() { Ok(()) } else { Err(None) }
        } else if r.leader_id != 0 && r.leader_id != self.opts.id {
            Err(Some(r.leader_id))
        } else {
            Err(None)
        }
    }

    /// A new write or read: queued for this turn if this node leads the
    /// group, refused naming the leader if another node does, kept waiting
    /// if nobody does yet.
    fn admit(&mut self, group: u8, request: Waiting<S::Answer>) {
        let Some(g) = self.groups[group as usize].as_deref() else {
            request.fail(GroupError::NotHosted(group));
            return;
        };
        let who = self.leadership(g);
        let wait = self.opts.settings.leader_wait;
        let g = self.group(group).expect("checked");
        g.place(group, request, &who, wait, Instant::now());
        self.touch(group);
    }

    /// Moves waiting requests along: to this node's queues if it leads now,
    /// to the leader if another leads, or away once they waited too long.
    fn service_waiting(&mut self, group: u8) {
        let Some(g) = self.groups[group as usize].as_deref() else { return };
        if g.waiting.is_empty() {
            return;
        }
        let who = self.leadership(g);
        let wait = self.opts.settings.leader_wait;
        let now = Instant::now();
        let g = self.group(group).expect("checked");
        for request in std::mem::take(&mut g.waiting) {
            g.place(group, request, &who, wait, now);
        }
    }

    /// Proposes the turn's commands of a group as one message.
    fn flush_proposals(&mut self, group: u8) {
        let id = self.opts.id;
        let Some(g) = self.group(group) else { return };
        if g.to_propose.is_empty() {
            return;
        }
        let leads = g.raw.raft.state == StateRole::Leader && g.raw.raft.lead_transferee.is_none();
        if !leads {
            let now = Instant::now();
            for (data, reply) in g.to_propose.drain(..) {
                g.waiting.push(Waiting::Write { data, reply, at: now });
            }
            return;
        }
        let (datas, replies): (Vec<Vec<u8>>, Vec<Reply<S::Answer>>) =
            g.to_propose.drain(..).unzip();
        let n = datas.len() as u64;
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgPropose);
        m.from = id;
        m.entries = datas.into_iter().map(|data| Entry { data, ..Default::default() }).collect();
        match g.raw.step(m) {
            Ok(()) => {
                let last = g.raw.raft.raft_log.last_index();
                let term = g.raw.raft.term;
                for (i, reply) in replies.into_iter().enumerate() {
                    g.proposals.push_back((last + 1 - n + i as u64, term, reply));
                }
            }
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(GroupError::Unavailable {
                        group,
                        reason: format!("the proposal was dropped ({e}); nothing was written"),
                    }));
                }
            }
        }
    }

    /// Asks one read index for the turn's reads of a group.
    fn flush_reads(&mut self, group: u8) {
        let ctx = self.next_ctx;
        let Some(g) = self.group(group) else { return };
        if g.reads.is_empty() {
            return;
        }
        if g.raw.raft.state != StateRole::Leader {
            for (reply, at) in g.reads.drain(..) {
                g.waiting.push(Waiting::Read { reply, at });
            }
            return;
        }
        g.raw.read_index(ctx.to_le_bytes().to_vec());
        let waiters = std::mem::take(&mut g.reads);
        g.read_batches.push_back(ReadBatch { ctx, issued: Instant::now(), waiters });
        self.next_ctx += 1;
    }

    fn incoming_snapshot(&mut self, group: u8, message: Message, dir: PathBuf) {
        let index = message.get_snapshot().get_metadata().index;
        let Some(g) = self.group(group) else {
            let _ = std::fs::remove_dir_all(dir);
            return;
        };
        let _ = g.raw.step(message);
        let accepted = g
            .raw
            .raft
            .raft_log
            .unstable_snapshot()
            .as_ref()
            .is_some_and(|s| s.get_metadata().index == index);
        if accepted {
            if let Some((_, old)) = g.incoming.replace((index, dir)) {
                let _ = std::fs::remove_dir_all(old);
            }
        } else {
            let _ = std::fs::remove_dir_all(dir);
        }
        self.touch(group);
    }

    /// A peer's connection failed. Leaders stop pipelining to it; followers
    /// that it led forget it (so they grant votes at once), and the
    /// lowest-id remaining voter campaigns a tick later, with pre-vote, so a
    /// peer that is alive after all keeps its leadership.
    fn peer_down(&mut self, peer: RaftNodeId) {
        self.down.insert(peer);
        let id = self.opts.id;
        let soon = Instant::now() + self.opts.settings.tick;
        for group in 0..=u8::MAX {
            let Some(g) = self.groups[group as usize].as_deref_mut() else { continue };
            if g.raw.raft.state == StateRole::Leader {
                if g.raw.raft.prs().get(peer).is_some() {
                    g.raw.report_unreachable(peer);
                }
                continue;
            }
            let voters = g.raw.raft.prs().conf().to_conf_state().voters;
            if g.raw.raft.leader_id != peer || !voters.contains(&id) {
                continue;
            }
            let term = g.raw.raft.term;
            g.raw.raft.become_follower(term, raft::INVALID_ID);
            if voters.iter().filter(|v| **v != peer).min() == Some(&id) {
                g.campaign_at = Some(soon);
            }
            self.publish(group);
            self.touch(group);
        }
    }

    fn persisted(&mut self, id: u64, result: logdb::Result<()>) {
        if let Err(e) = result {
            tracing::error!(error = %e, "the Raft log cannot be written; stopping the process");
            std::process::abort();
        }
        let Some((front, _)) = self.inflight.front() else { return };
        debug_assert_eq!(*front, id, "batches complete in order");
        let (_, readies) = self.inflight.pop_front().expect("checked");
        for p in readies {
            let Some(g) = self.group(p.group) else { continue };
            if g.incarnation != p.incarnation {
                continue;
            }
            g.inflight -= 1;
            g.raw.on_persist_ready(p.number);
            if let Some(last) = p.last_index {
                g.raw.mut_store().persisted_to(last);
            }
            let restored = p.snapshot.is_some();
            if let Some(index) = p.snapshot {
                if index > g.raw.raft.raft_log.applied {
                    g.raw.advance_apply_to(index);
                }
                g.applied = index;
            }
            self.route(p.group, p.messages);
            if restored {
                self.publish(p.group);
            }
            self.touch(p.group);
        }
    }

    fn applied(&mut self, group: u8, index: u64, term: u64, synced: bool) {
        let keep = self.opts.settings.keep_logs;
        let Some(g) = self.groups[group as usize].as_deref_mut() else { return };
        // Configuration changes first, then the applied index: raft-rs
        // decides on leaving a joint configuration when the index passes
        // the change, and must see the change applied by then.
        let mut conf_changed = false;
        while g.pending_cc.front().is_some_and(|(i, _)| *i <= index) {
            let (i, cc) = g.pending_cc.pop_front().expect("checked");
            match g.raw.apply_conf_change(&cc) {
                Ok(_) => {
                    g.last_cc = i;
                    conf_changed = true;
                }
                Err(e) => {
                    tracing::warn!(group, index = i, error = %e, "a configuration change was not applied")
                }
            }
        }
        if index > g.raw.raft.raft_log.applied {
            g.raw.advance_apply_to(index);
        }
        g.applied = g.applied.max(index);
        g.raw.mut_store().trim_cache(g.applied);
        let applied = g.applied;
        let mut ready = Vec::new();
        g.read_ready.retain_mut(|(i, waiters)| {
            if *i <= applied {
                ready.append(waiters);
                false
            } else {
                true
            }
        });
        for (reply, _) in ready {
            let _ = reply.send(Ok(()));
        }
        if synced && index > 0 {
            let conf = g.raw.raft.prs().conf().to_conf_state();
            self.batch.ops.push((group, Op::Applied(ApplyState { index, term, conf })));
            let (first, _) = g.raw.store().bounds();
            let by_count = index.saturating_sub(keep);
            let by_bytes = g.raw.store().compact_point(index, KEEP_BYTES);
            // Compacted in steps: COMPACT_STEP entries, or KEEP_BYTES.
            let due = by_count >= first + COMPACT_STEP
                || g.raw.store().compact_point(index, 2 * KEEP_BYTES) > first;
            let to = by_count.max(by_bytes);
            if due
                && to > first
                && let Some(op) = g.raw.mut_store().compact(to)
            {
                self.batch.ops.push((group, op));
            }
        }
        if conf_changed {
            self.publish(group);
        } else {
            self.board.set_applied(group, applied);
        }
        self.touch(group);
    }

    fn built(&mut self, group: u8, index: u64, term: u64, result: Result<PathBuf, String>) {
        let retry = Instant::now() + Duration::from_secs(1);
        let descriptor = result.as_ref().ok().map(|dir| self.snapshots.descriptor(dir));
        let Some(g) = self.group(group) else { return };
        g.building = false;
        // Too old for what raft-rs asked (it cannot be): wait before the next.
        if g.raw.store().snapshot_wanted().is_some_and(|least| index < least) {
            g.build_after = retry;
        }
        match descriptor {
            Some(data) => {
                let mut snap = Snapshot { data, ..Default::default() };
                let meta = snap.mut_metadata();
                meta.index = index;
                meta.term = term;
                meta.set_conf_state(g.raw.raft.prs().conf().to_conf_state());
                g.raw.mut_store().set_snapshot(snap);
            }
            None => g.build_after = retry,
        }
        self.touch(group);
    }

    fn restored(&mut self, group: u8, result: std::io::Result<()>) {
        if let Err(e) = result {
            tracing::error!(group, error = %e, "a snapshot cannot be restored; stopping the process");
            std::process::abort();
        }
        let Some(g) = self.groups[group as usize].as_deref_mut() else { return };
        let Some(Restoring { ops, persist }) = g.restoring.take() else { return };
        g.inflight += 1;
        for op in ops {
            self.batch.ops.push((group, op));
        }
        self.batch.sync = true;
        self.turn_readies.push(persist);
        self.touch(group);
    }

    fn admin(&mut self, admin: Admin) {
        match admin {
            Admin::Open { group, reply } => {
                let result = if self.groups[group as usize].is_some() {
                    Ok(())
                } else {
                    let storage = match self.db.load_group(group) {
                        Ok(Some(record)) => {
                            GroupStorage::from_record(group, self.db.clone(), record)
                        }
                        Ok(None) => GroupStorage::empty(group, self.db.clone()),
                        Err(e) => {
                            let _ = reply.send(Err(GroupError::Unavailable {
                                group,
                                reason: e.to_string(),
                            }));
                            return;
                        }
                    };
                    self.host(group, storage)
                        .map_err(|e| GroupError::Unavailable { group, reason: e.to_string() })
                };
                let _ = reply.send(result);
            }
            Admin::Bootstrap { group, voters, reply } => self.boots.push((group, voters, reply)),
            Admin::Stop { group, remove, reply } => {
                if let Some(mut g) = self.unhost(group) {
                    if remove {
                        let op = g.raw.mut_store().remove();
                        self.batch.ops.push((group, op));
                        self.batch.sync = true;
                        self.snapshots.remove_group(group);
                    }
                } else if remove {
                    // Not hosted (stopped earlier): its stored state still goes.
                    if let Ok(Some(record)) = self.db.load_group(group) {
                        let op = GroupStorage::from_record(group, self.db.clone(), record).remove();
                        self.batch.ops.push((group, op));
                        self.batch.sync = true;
                    }
                    self.snapshots.remove_group(group);
                }
                let _ = reply.send(());
            }
            Admin::Target { group, voters } => {
                if let Some(g) = self.group(group) {
                    g.target = Some(voters.into_iter().collect());
                }
            }
            Admin::Transfer { group, to } => {
                let down = self.down.contains(&to);
                if let Some(g) = self.group(group)
                    && g.raw.raft.state == StateRole::Leader
                    && !down
                    && crate::membership::can_lead(&g.raw.raft, to)
                {
                    g.raw.transfer_leader(to);
                    self.touch(group);
                }
            }
            Admin::Campaign { group } => {
                if let Some(g) = self.group(group) {
                    let _ = g.raw.campaign();
                    self.touch(group);
                }
            }
            Admin::Status { reply } => {
                let status = (0..=u8::MAX).filter_map(|g| self.status(g)).collect();
                let _ = reply.send(status);
            }
            Admin::Leave { reply } => {
                self.leaving = true;
                let led = (0..=u8::MAX).filter(|g| self.hand_over(*g)).count();
                let _ = reply.send(led);
            }
            Admin::Shutdown => self.stopping = true,
        }
    }

    /// Starts the groups asked to bootstrap. One that is busy (a ready or a
    /// write in flight: peers already reach it) is tried again next turn.
    fn start_groups(&mut self) {
        for (group, voters, reply) in std::mem::take(&mut self.boots) {
            match self.bootstrap(group, voters.clone()) {
                Err(GroupError::Unavailable { .. }) if !reply.is_closed() => {
                    self.boots.push((group, voters, reply))
                }
                result => drop(reply.send(result)),
            }
        }
    }

    fn bootstrap(&mut self, group: u8, voters: Vec<RaftNodeId>) -> Result<bool, GroupError> {
        let db = self.db.clone();
        let Some(g) = self.group(group) else { return not_hosted(group) };
        if g.raw.store().is_initialized() {
            return Ok(false);
        }
        if g.inflight > 0 || g.restoring.is_some() || g.incoming.is_some() || g.raw.has_ready() {
            return Err(GroupError::Unavailable { group, reason: "the group is busy".into() });
        }
        let mut storage = std::mem::replace(g.raw.mut_store(), GroupStorage::empty(group, db));
        let first = voters.first().copied();
        let seen = g.raw.raft.hard_state();
        for op in storage.bootstrap(voters, &seen) {
            self.batch.ops.push((group, op));
        }
        self.batch.sync = true;
        let old = self.unhost(group);
        let target = old.and_then(|g| g.target);
        self.host(group, storage)
            .map_err(|e| GroupError::Unavailable { group, reason: e.to_string() })?;
        let id = self.opts.id;
        if let Some(g) = self.group(group) {
            g.target = target;
            // The first voter campaigns at once rather than after an
            // election timeout: a new group (a one-voter group above all)
            // takes writes sooner, and leaders start spread as listed.
            if first == Some(id) {
                let _ = g.raw.campaign();
            }
        }
        Ok(true)
    }

    fn status(&self, group: u8) -> Option<GroupStatus> {
        let g = self.groups[group as usize].as_deref()?;
        let r = &g.raw.raft;
        let cs = r.prs().conf().to_conf_state();
        let mut voters: Vec<u64> =
            cs.voters.iter().chain(cs.voters_outgoing.iter()).copied().collect();
        voters.sort_unstable();
        voters.dedup();
        let matched = if r.state == StateRole::Leader {
            r.prs().iter().map(|(id, p)| (*id, p.matched)).collect()
        } else {
            Default::default()
        };
        Some(GroupStatus {
            group,
            role: r.state,
            leader: (r.leader_id != 0).then_some(r.leader_id),
            term: r.term,
            commit: r.raft_log.committed,
            applied: g.applied,
            last_index: r.raft_log.last_index(),
            voters,
            learners: cs.learners.clone(),
            matched,
            initialized: g.raw.store().is_initialized(),
        })
    }

    /// On a leaving node, hands `group` to its best follower if this node
    /// leads it and no handover is under way (one that does not finish
    /// within an election timeout is dropped by the group, and tried again).
    /// Whether this node still leads the group with someone to take it.
    fn hand_over(&mut self, group: u8) -> bool {
        let Some(g) = self.groups[group as usize].as_deref_mut() else { return false };
        let r = &g.raw.raft;
        if r.state != StateRole::Leader {
            return false;
        }
        let Some(heir) = crate::membership::heir(r, &self.down) else { return false };
        if r.lead_transferee.is_none() {
            g.raw.transfer_leader(heir);
            self.touch(group);
        }
        true
    }

    fn tick(&mut self) {
        let now = Instant::now();
        let read_retry = self.opts.settings.tick * self.opts.settings.election_ticks as u32;
        self.ticks += 1;
        // Every leader's heartbeats go out in the same tick, so that those of
        // all groups to a peer ride one frame per heartbeat interval.
        let beat = self.ticks.is_multiple_of(self.opts.settings.heartbeat_ticks.max(1) as u64);
        for group in 0..=u8::MAX {
            let Some(g) = self.group(group) else { continue };
            g.raw.tick();
            // Between beats, a leader whose commit index moved since the
            // last tick tells its followers too, so that they apply (reads
            // on followers, their change feeds) within a tick even when no
            // append follows.
            let committed = g.raw.raft.raft_log.committed;
            if g.raw.raft.state == StateRole::Leader && (beat || committed > g.told_commit) {
                g.raw.ping();
                g.told_commit = committed;
            }
            if g.campaign_at.is_some_and(|t| t <= now) {
                g.campaign_at = None;
                if g.raw.raft.leader_id == 0 {
                    let _ = g.raw.campaign();
                }
            }
            // Reads whose read index never came (a new leader answers none
            // until it commits in its term, and messages can be lost).
            let stale: Vec<ReadBatch> = {
                let mut stale = Vec::new();
                while g
                    .read_batches
                    .front()
                    .is_some_and(|b| now.duration_since(b.issued) >= read_retry)
                {
                    stale.push(g.read_batches.pop_front().expect("checked"));
                }
                stale
            };
            for b in stale {
                g.reads.extend(b.waiters);
            }
            if g.raw.store().snapshot_wanted().is_some() && !g.building && g.build_after <= now {
                g.building = true;
                self.tasks.push(Task::Build { group });
            }
            self.service_waiting(group);
            self.expire_reads(group, now);
            self.reconcile(group);
            if self.leaving {
                let _ = self.hand_over(group);
            }
            self.touch(group);
        }
    }

    /// Reads that waited longer than `leader_wait` in all fail.
    fn expire_reads(&mut self, group: u8, now: Instant) {
        let wait = self.opts.settings.leader_wait;
        let Some(g) = self.group(group) else { return };
        let expired = |(_, at): &(ReadReply, Instant)| now.duration_since(*at) >= wait;
        let timeout = || GroupError::Unavailable {
            group,
            reason: "the read could not be confirmed in time".into(),
        };
        for (_, waiters) in g.read_ready.iter_mut() {
            for (reply, _) in waiters.extract_if(.., |w| expired(w)) {
                let _ = reply.send(Err(timeout()));
            }
        }
        for b in g.read_batches.iter_mut() {
            for (reply, _) in b.waiters.extract_if(.., |w| expired(w)) {
                let _ = reply.send(Err(timeout()));
            }
        }
    }

    /// One step of moving a led group's membership toward its target.
    fn reconcile(&mut self, group: u8) {
        let id = self.opts.id;
        let max = self.opts.settings.max_concurrent_changes;
        let changing = self.changing.len();
        let in_set = self.changing.contains(&group);
        let Some(g) = self.groups[group as usize].as_deref_mut() else { return };
        let r = &g.raw.raft;
        let Some(target) =
            g.target.as_ref().filter(|t| !t.is_empty() && r.state == StateRole::Leader)
        else {
            // Only a leader changes membership: a group led elsewhere now
            // does not hold one of this node's change slots.
            self.changing.remove(&group);
            return;
        };
        let cs = r.prs().conf().to_conf_state();
        let voters: BTreeSet<u64> = cs.voters.iter().copied().collect();
        let learners: BTreeSet<u64> = cs.learners.iter().copied().collect();
        if voters == *target && learners.is_empty() {
            self.changing.remove(&group);
            return;
        }
        if !cs.voters_outgoing.is_empty()
            || r.pending_conf_index > r.raft_log.applied
            || r.lead_transferee.is_some()
        {
            return;
        }
        if !in_set && changing >= max {
            return;
        }
        let step = next_step(id, target, &voters, &learners, r, g.last_cc);
        self.changing.insert(group);
        match step {
            Step::Wait => return,
            Step::Transfer(heir) => g.raw.transfer_leader(heir),
            Step::Change(cc) => {
                if let Err(e) = g.raw.propose_conf_change(Vec::new(), cc) {
                    tracing::debug!(group, error = %e, "a membership change was not proposed");
                }
            }
        }
        self.touch(group);
    }

    /// Handles every touched group: proposals, reads, then its readies.
    fn process(&mut self) {
        while let Some(group) = self.dirty.pop() {
            self.is_dirty[group as usize] = false;
            self.flush_proposals(group);
            self.flush_reads(group);
            // A ready's persistence can make the next one at once (nothing
            // to persist): a few rounds, then the next turn.
            for _ in 0..4 {
                if !self.handle_ready(group) {
                    break;
                }
            }
        }
    }

    /// Handles one ready of `group`; returns whether there may be another.
    fn handle_ready(&mut self, group: u8) -> bool {
        let Some(g) = self.groups[group as usize].as_deref_mut() else { return false };
        if g.restoring.is_some() || !g.raw.has_ready() {
            return false;
        }
        let mut rd = g.raw.ready();
        let role_changed = rd.ss().is_some();
        let was_leader = g.raw.raft.state == StateRole::Leader;
        let messages = rd.take_messages();
        let mut persist = Persist {
            group,
            incarnation: g.incarnation,
            number: rd.number(),
            last_index: None,
            messages: Vec::new(),
            snapshot: None,
        };
        let mut ops = Vec::new();
        let mut sync = false;
        let mut restore = None;
        if !rd.snapshot().is_empty() {
            let snap = rd.snapshot().clone();
            let (index, term) = (snap.get_metadata().index, snap.get_metadata().term);
            ops.push(g.raw.mut_store().apply_snapshot(&snap));
            persist.snapshot = Some(index);
            sync = true;
            // The proposals the snapshot covers: their fate is unknown here.
            while g.proposals.front().is_some_and(|p| p.0 <= index) {
                let (_, _, reply) = g.proposals.pop_front().expect("checked");
                let _ = reply.send(Err(GroupError::Unavailable {
                    group,
                    reason: "a snapshot replaced the log before the write's outcome was known"
                        .into(),
                }));
            }
            g.pending_cc.retain(|(i, _)| *i > index);
            match g.incoming.take() {
                Some((i, dir)) if i == index => restore = Some((dir, index, term)),
                other => {
                    tracing::error!(
                        group,
                        index,
                        ?other,
                        "a snapshot to restore has no files; stopping the process"
                    );
                    std::process::abort();
                }
            }
        }
        let committed = rd.take_committed_entries();
        if !rd.entries().is_empty() {
            let entries = rd.take_entries();
            persist.last_index = entries.last().map(|e| e.index);
            ops.push(g.raw.mut_store().append(entries));
            sync = true;
        }
        if let Some(hs) = rd.hs() {
            // Term and vote must be durable; a moved commit index alone need
            // not be (a restart learns it again, and starts from the
            // checkpoint at least): the next hard state written carries it.
            let op = g.raw.mut_store().set_hard_state(hs.clone());
            if rd.must_sync() {
                ops.push(op);
                sync = true;
            }
        }
        let read_states = rd.take_read_states();
        persist.messages = rd.take_persisted_messages();
        let number = rd.number();
        g.raw.advance_append_async(rd);
        let mut handed = false;
        if let Some((dir, index, term)) = restore {
            g.restoring = Some(Restoring { ops, persist });
            self.tasks.push(Task::Restore { group, dir, index, term });
        } else if !ops.is_empty() || g.inflight > 0 {
            g.inflight += 1;
            self.batch.ops.extend(ops.into_iter().map(|op| (group, op)));
            self.batch.sync |= sync;
            self.turn_readies.push(persist);
        } else {
            g.raw.on_persist_ready(number);
            handed = true;
            let msgs = std::mem::take(&mut persist.messages);
            self.route(group, msgs);
        }
        if !committed.is_empty() {
            self.hand_to_apply(group, committed);
        }
        for rs in read_states {
            self.read_state(group, rs.index, &rs.request_ctx);
        }
        self.route(group, messages);
        if role_changed {
            self.publish(group);
            let g = self.group(group).expect("hosted");
            if was_leader && g.raw.raft.state != StateRole::Leader {
                // Reads not yet confirmed wait for (or go to) the new leader.
                let now = Instant::now();
                let batches: Vec<ReadBatch> = g.read_batches.drain(..).collect();
                for b in batches {
                    for (reply, _) in b.waiters {
                        g.waiting.push(Waiting::Read { reply, at: now });
                    }
                }
            }
            self.service_waiting(group);
            self.flush_proposals(group);
            self.flush_reads(group);
        }
        handed
    }

    fn read_state(&mut self, group: u8, index: u64, ctx: &[u8]) {
        let Some(g) = self.group(group) else { return };
        let Ok(ctx) = <[u8; 8]>::try_from(ctx).map(u64::from_le_bytes) else { return };
        let Some(pos) = g.read_batches.iter().position(|b| b.ctx == ctx) else { return };
        let batch = g.read_batches.remove(pos).expect("found");
        if index <= g.applied {
            for (reply, _) in batch.waiters {
                let _ = reply.send(Ok(()));
            }
        } else {
            g.read_ready.push((index, batch.waiters));
        }
    }

    /// Hands committed entries to the apply thread, with the proposers
    /// waiting on them.
    fn hand_to_apply(&mut self, group: u8, entries: Vec<Entry>) {
        let Some(g) = self.group(group) else { return };
        let mut waiters = Vec::new();
        for e in &entries {
            if let Some(cc) = conf_change(e) {
                g.pending_cc.push_back((e.index, cc));
            }
            while g.proposals.front().is_some_and(|p| p.0 <= e.index) {
                let (index, term, reply) = g.proposals.pop_front().expect("checked");
                if index == e.index && term == e.term {
                    waiters.push((index, reply));
                } else {
                    let _ = reply.send(Err(GroupError::Unavailable {
                        group,
                        reason: "another leader's entry replaced the write; it did not happen"
                            .into(),
                    }));
                }
            }
        }
        self.tasks.push(Task::Entries { group, entries, waiters });
    }

    fn route(&mut self, group: u8, messages: Vec<Message>) {
        for m in messages {
            if m.get_msg_type() == MessageType::MsgSnapshot {
                self.transport.send_snapshot(group, m);
            } else {
                self.frames.entry(m.to).or_insert_with(FrameBuf::new).push(group, &m);
            }
        }
    }

    /// Sends the turn's frames, log batch and apply work.
    fn flush(&mut self) {
        if !self.tasks.is_empty() {
            let _ = self.apply_tx.send(std::mem::take(&mut self.tasks));
        }
        for (to, frame) in self.frames.drain() {
            if !frame.is_empty() {
                self.transport.send(to, frame);
            }
        }
        if !self.batch.is_empty() || !self.turn_readies.is_empty() {
            let id = self.next_job;
            self.next_job += 1;
            self.writer.submit(id, std::mem::take(&mut self.batch));
            self.inflight.push_back((id, std::mem::take(&mut self.turn_readies)));
        }
    }
}

/// The index of the first entry of `term` in the log (terms only grow
/// along a log), or the last index + 1 if it has none. Entries compacted
/// away are applied, so the search starts at the first one kept.
fn term_start(log: &raft::RaftLog<crate::storage::GroupStorage>, term: u64) -> u64 {
    let (mut lo, mut hi) = (log.first_index(), log.last_index() + 1);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        match log.term(mid) {
            Ok(t) if t >= term => hi = mid,
            _ => lo = mid + 1,
        }
    }
    lo
}
