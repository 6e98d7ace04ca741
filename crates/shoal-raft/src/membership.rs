//! Membership: how a leader moves its group's voters toward the placement
//! map's, one joint-consensus step at a time, and how committed
//! configuration changes are read from the log.

use std::collections::BTreeSet;

use prost::Message as _;
use raft::prelude::{
    ConfChange, ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2, Entry,
    EntryType,
};

use crate::RaftNodeId;
use crate::storage::GroupStorage;

pub(crate) fn conf_change(entry: &Entry) -> Option<ConfChangeV2> {
    match entry.get_entry_type() {
        EntryType::EntryConfChangeV2 => ConfChangeV2::decode(entry.data.as_slice()).ok(),
        EntryType::EntryConfChange => ConfChange::decode(entry.data.as_slice()).ok().map(|c| {
            let mut v2 = ConfChangeV2::default();
            v2.changes.push(single(c.get_change_type(), c.node_id));
            v2
        }),
        EntryType::EntryNormal => None,
    }
}

fn single(change_type: ConfChangeType, node_id: u64) -> ConfChangeSingle {
    let mut c = ConfChangeSingle::default();
    c.set_change_type(change_type);
    c.node_id = node_id;
    c
}

/// What a leader does next to move its group's membership.
pub(crate) enum Step {
    Wait,
    Transfer(RaftNodeId),
    Change(ConfChangeV2),
}

/// The next membership step toward `target`: add a missing member as a
/// learner; promote a caught-up learner (in a joint change that demotes a
/// leaving voter, if any); demote a leaving voter once every target member
/// votes; remove a leaving learner once it has committed the change that
/// demoted it (so it applies it and lets go of the group even though the
/// leader no longer talks to it), or once it stopped answering. A leader
/// that must leave hands leadership to a caught-up voter first.
pub(crate) fn next_step(
    id: RaftNodeId,
    target: &BTreeSet<RaftNodeId>,
    voters: &BTreeSet<RaftNodeId>,
    learners: &BTreeSet<RaftNodeId>,
    r: &raft::Raft<GroupStorage>,
    last_cc: u64,
) -> Step {
    let last = r.raft_log.last_index();
    let caught_up = |n: u64| r.prs().get(n).is_some_and(|p| p.matched + 64 >= last);
    let heir = || {
        voters
            .iter()
            .find(|v| **v != id && target.contains(v) && caught_up(**v))
            .map_or(Step::Wait, |h| Step::Transfer(*h))
    };
    let change = |changes: Vec<ConfChangeSingle>| {
        let mut cc = ConfChangeV2::default();
        if changes.len() > 1 {
            cc.set_transition(ConfChangeTransition::Auto);
        }
        cc.changes = changes;
        Step::Change(cc)
    };
    let leaving = voters.iter().find(|v| !target.contains(v)).copied();
    if let Some(&new) = target.iter().find(|n| !voters.contains(n) && !learners.contains(n)) {
        return change(vec![single(ConfChangeType::AddLearnerNode, new)]);
    }
    if let Some(&promote) = learners.iter().find(|n| target.contains(n) && caught_up(**n)) {
        return match leaving {
            Some(l) if l == id => heir(),
            Some(l) => change(vec![
                single(ConfChangeType::AddNode, promote),
                single(ConfChangeType::AddLearnerNode, l),
            ]),
            None => change(vec![single(ConfChangeType::AddNode, promote)]),
        };
    }
    if learners.iter().any(|n| target.contains(n)) {
        // A new member is still catching up.
        return Step::Wait;
    }
    if let Some(l) = leaving {
        if !target.iter().all(|t| voters.contains(t)) {
            return Step::Wait;
        }
        return if l == id {
            heir()
        } else {
            change(vec![single(ConfChangeType::AddLearnerNode, l)])
        };
    }
    let gone = learners.iter().find(|l| {
        !target.contains(l)
            && r.prs().get(**l).is_none_or(|p| p.committed_index >= last_cc || !p.recent_active)
    });
    match gone {
        Some(&l) => change(vec![single(ConfChangeType::RemoveNode, l)]),
        None => Step::Wait,
    }
}

/// How far behind the leader's commit index a voter may be and still be
/// handed leadership: it catches up within a round trip.
const HEIR_LAG: u64 = 256;

/// Whether a leader should hand its group to `to`: another voter that
/// heard from it lately and is nearly caught up. A handover to a node that
/// is down or far behind would hold the group's writes for an election
/// timeout and then fail.
pub(crate) fn can_lead(raft: &raft::Raft<GroupStorage>, to: RaftNodeId) -> bool {
    to != raft.id
        && raft.prs().conf().voters().contains(to)
        && raft
            .prs()
            .get(to)
            .is_some_and(|p| p.recent_active && p.matched + HEIR_LAG >= raft.raft_log.committed)
}

/// Whom a leader that is leaving hands its group to: among the other
/// voters whose connection is not `down`, one that heard from it lately
/// (`recent_active` is cleared at each check-quorum round, so briefly none
/// may have) with the most of its log; none if there is no such voter. A
/// handover to a voter that went down since fails after an election
/// timeout and is tried again.
pub(crate) fn heir(
    raft: &raft::Raft<GroupStorage>,
    down: &BTreeSet<RaftNodeId>,
) -> Option<RaftNodeId> {
    let voters: BTreeSet<RaftNodeId> = raft.prs().conf().voters().ids().iter().collect();
    raft.prs()
        .iter()
        .filter(|(id, _)| **id != raft.id && voters.contains(id) && !down.contains(id))
        .max_by_key(|(id, p)| (p.recent_active, p.matched, std::cmp::Reverse(**id)))
        .map(|(id, _)| *id)
}
