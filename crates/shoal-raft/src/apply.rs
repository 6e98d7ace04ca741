//! The apply thread: owns the state machine of every hosted group and
//! applies each group's committed entries in log order, answering the
//! proposers waiting on them directly.
//!
//! It syncs a group's state machine at most once per checkpoint interval
//! while the group applies (and once more shortly after it stops), and
//! tells the loop how far it applied and whether that much is durable; the
//! loop records durable positions as checkpoints and compacts the log
//! behind them. A snapshot is built here too (after a sync, so it holds
//! every entry reported applied), and restored here, in order with the
//! group's entries.
//!
//! A state machine that cannot apply or sync must not be skipped (replicas
//! would diverge): the process stops, and a restart replays the log.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use raft::prelude::{Entry, EntryType};
use tokio::sync::oneshot;

use crate::snapshot::Snapshots;
use crate::{Answered, Factory, GroupError, Input, StateMachine};

/// Work for the apply thread.
pub(crate) enum Task<A> {
    /// The group is hosted, its state machine holding everything up to
    /// `(index, term)` (its checkpoint): applying resumes after it.
    Open { group: u8, index: u64, term: u64 },
    /// Committed entries of a group, with the proposers waiting on some.
    Entries { group: u8, entries: Vec<Entry>, waiters: Vec<(u64, oneshot::Sender<Answered<A>>)> },
    /// Replace the group's state with the snapshot in `dir` (then remove it).
    Restore { group: u8, dir: PathBuf, index: u64, term: u64 },
    /// Build a snapshot of the group as applied so far.
    Build { group: u8 },
    /// The group is no longer hosted: sync and drop its state machine.
    Close { group: u8 },
}

struct Group<S> {
    sm: S,
    applied: u64,
    term: u64,
    synced: u64,
    last_sync: Instant,
}

/// Starts the thread.
pub(crate) fn start<S: StateMachine>(
    factory: Factory<S>,
    snapshots: Snapshots,
    interval: Duration,
    tasks: mpsc::Receiver<Vec<Task<S::Answer>>>,
    inbox: mpsc::Sender<Input<S::Answer>>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name("shoal-raft-apply".into()).spawn(move || {
        let run = std::panic::AssertUnwindSafe(|| {
            Applier { factory, snapshots, interval, inbox, groups: HashMap::new(), out: Vec::new() }
                .run(tasks)
        });
        if std::panic::catch_unwind(run).is_err() {
            // The state machine could not go on; replicas must not diverge.
            tracing::error!(
                "the apply thread failed; stopping the process (a restart replays the log)"
            );
            std::process::abort();
        }
    })
}

struct Applier<S: StateMachine> {
    factory: Factory<S>,
    snapshots: Snapshots,
    interval: Duration,
    inbox: mpsc::Sender<Input<S::Answer>>,
    groups: HashMap<u8, Group<S>>,
    /// Reports of this round, sent together: one wake of the loop.
    out: Vec<Input<S::Answer>>,
}

impl<S: StateMachine> Applier<S> {
    fn run(mut self, tasks: mpsc::Receiver<Vec<Task<S::Answer>>>) {
        loop {
            match tasks.recv_timeout(self.interval / 2) {
                Ok(round) => {
                    for task in round.into_iter().chain(tasks.try_iter().flatten()) {
                        self.handle(task);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            self.sync_idle();
            self.flush();
        }
        for group in self.groups.keys().copied().collect::<Vec<_>>() {
            self.sync(group);
        }
        self.flush();
    }

    fn flush(&mut self) {
        match self.out.len() {
            0 => {}
            1 => drop(self.inbox.send(self.out.pop().expect("one"))),
            _ => drop(self.inbox.send(Input::Batch(std::mem::take(&mut self.out)))),
        }
    }

    fn group(&mut self, group: u8) -> &mut Group<S> {
        let factory = &self.factory;
        self.groups.entry(group).or_insert_with(|| Group {
            sm: factory(group),
            applied: 0,
            term: 0,
            synced: 0,
            last_sync: Instant::now(),
        })
    }

    fn report(&mut self, input: Input<S::Answer>) {
        self.out.push(input);
    }

    fn handle(&mut self, task: Task<S::Answer>) {
        match task {
            Task::Entries { group, entries, waiters } => self.apply(group, entries, waiters),
            Task::Restore { group, dir, index, term } => {
                let g = self.group(group);
                let result = g.sm.restore(&dir);
                let _ = std::fs::remove_dir_all(&dir);
                if result.is_ok() {
                    g.applied = index;
                    g.term = term;
                    g.synced = index;
                    g.last_sync = Instant::now();
                }
                self.report(Input::Restored { group, result });
            }
            Task::Build { group } => {
                self.sync(group);
                let snapshots = self.snapshots.clone();
                let g = self.group(group);
                let (index, term) = (g.applied, g.term);
                let result = snapshots
                    .build_dir(group, index, term)
                    .and_then(|dir| {
                        g.sm.snapshot(&dir)?;
                        snapshots.finish(group, &dir, index, term)?;
                        Ok(dir)
                    })
                    .map_err(|e| e.to_string());
                if let Err(e) = &result {
                    tracing::warn!(group, error = %e, "building a snapshot failed");
                }
                self.report(Input::Built { group, index, term, result });
            }
            Task::Close { group } => {
                self.sync(group);
                self.groups.remove(&group);
            }
            Task::Open { group, index, term } => {
                let g = self.group(group);
                g.applied = index;
                g.term = term;
                g.synced = index;
            }
        }
    }

    fn apply(
        &mut self,
        group: u8,
        entries: Vec<Entry>,
        waiters: Vec<(u64, oneshot::Sender<Answered<S::Answer>>)>,
    ) {
        let interval = self.interval;
        let g = self.group(group);
        let mut waiters = waiters.into_iter().peekable();
        for e in &entries {
            let mut answer = (e.get_entry_type() == EntryType::EntryNormal && !e.data.is_empty())
                .then(|| g.sm.apply(e.index, &e.data));
            while let Some((index, reply)) = waiters.next_if(|(index, _)| *index <= e.index) {
                let result = match answer.take() {
                    Some(a) if index == e.index => Ok((index, a)),
                    other => {
                        answer = other;
                        Err(replaced(group))
                    }
                };
                let _ = reply.send(result);
            }
        }
        for (_, reply) in waiters {
            let _ = reply.send(Err(replaced(group)));
        }
        if let Some(last) = entries.last() {
            g.applied = last.index;
            g.term = last.term;
        }
        let (index, term, due) = (g.applied, g.term, g.last_sync.elapsed() >= interval);
        if due {
            self.sync(group);
        } else {
            self.report(Input::Applied { group, index, term, synced: false });
        }
    }

    fn sync(&mut self, group: u8) {
        let Some(g) = self.groups.get_mut(&group) else { return };
        if let Err(e) = g.sm.sync() {
            tracing::error!(group, error = %e, "a state machine cannot be made durable");
            panic!("group {group:02x}: sync failed: {e}");
        }
        g.synced = g.applied;
        g.last_sync = Instant::now();
        let (index, term) = (g.applied, g.term);
        self.report(Input::Applied { group, index, term, synced: true });
    }

    fn sync_idle(&mut self) {
        let due: Vec<u8> = self
            .groups
            .iter()
            .filter(|(_, g)| g.synced < g.applied && g.last_sync.elapsed() >= self.interval)
            .map(|(group, _)| *group)
            .collect();
        for group in due {
            self.sync(group);
        }
    }
}

fn replaced(group: u8) -> GroupError {
    GroupError::Unavailable {
        group,
        reason: "the proposal's log entry was replaced by another leader's".into(),
    }
}
