//! What each member does on every tick, beside serving requests:
//! - learn where the group's members are, and point the engine's membership
//!   at the member list (only the leader acts on it);
//! - while joining, ask the members it was told to join where the group is;
//! - on the leader, keep the lease deadlines and log an expiry for each one
//!   that passes.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Weak};
use std::time::Duration;

use shoal_registry::LeaseId;
use shoal_registry::embedded::wire::{self, Member};
use tokio::time::Instant;

use crate::machine::{Command, lock};
use crate::{GROUP, Inner};

/// The leader's lease deadlines. Not replicated: a new leader starts them
/// afresh (every lease gets its full TTL from the moment it leads).
#[derive(Default)]
pub(crate) struct Lessor {
    /// The term these deadlines belong to.
    term: u64,
    deadlines: HashMap<LeaseId, Instant>,
    /// Leases whose expiry is being logged.
    expiring: HashSet<LeaseId>,
}

impl Lessor {
    /// Brings the deadlines to the live `leases` of `term` (new leases get
    /// their full TTL from `now`) and answers the leases now due, once each.
    fn due(&mut self, term: u64, leases: &[(LeaseId, Duration)], now: Instant) -> Vec<LeaseId> {
        if term != self.term {
            *self = Lessor { term, ..Lessor::default() };
        }
        let live: HashSet<LeaseId> = leases.iter().map(|(id, _)| *id).collect();
        self.deadlines.retain(|id, _| live.contains(id));
        self.expiring.retain(|id| live.contains(id));
        for (id, ttl) in leases {
            self.deadlines.entry(*id).or_insert(now + *ttl);
        }
        let due: Vec<LeaseId> = self
            .deadlines
            .iter()
            .filter(|(id, d)| **d <= now && !self.expiring.contains(id))
            .map(|(id, _)| *id)
            .collect();
        self.expiring.extend(due.iter().copied());
        due
    }

    /// A keep-alive (or a grant) on the leader of `term`: the lease lives
    /// `ttl` from now.
    pub(crate) fn renew(&mut self, term: u64, lease: LeaseId, ttl: Duration) {
        if term != self.term {
            *self = Lessor { term, ..Lessor::default() };
        }
        self.deadlines.insert(lease, Instant::now() + ttl);
    }

    /// The expiry of `lease` was logged or failed: it may be tried again.
    fn done(&mut self, lease: LeaseId) {
        self.expiring.remove(&lease);
    }

    /// Not the leader: keep nothing.
    fn clear(&mut self) {
        if self.term != 0 {
            *self = Lessor::default();
        }
    }
}

/// Runs the duties until the member is gone.
pub(crate) async fn run(inner: Weak<Inner>) {
    let tick = match inner.upgrade() {
        Some(i) => i.options.settings.tick,
        None => return,
    };
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut members: Vec<Member> = Vec::new();
    let mut last_ask = Instant::now() - Duration::from_secs(60);
    let mut last_init = last_ask;
    loop {
        interval.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let changed = {
            let state = lock(&inner.state);
            (state.members != members).then(|| state.members.clone())
        };
        if let Some(current) = changed {
            inner.learn(&current);
            if !current.is_empty() {
                inner.raft.set_target(GROUP, current.iter().map(|m| m.id).collect());
            }
            members = current;
        }
        if members.is_empty() && last_ask.elapsed() >= Duration::from_millis(500) {
            last_ask = Instant::now();
            tokio::spawn(ask_where(inner.clone()));
        }
        if members.is_empty() && last_init.elapsed() >= Duration::from_millis(200) {
            // A new group logs its initial member list once it has a leader.
            if inner.options.join.is_empty() && inner.raft.is_leader_current(GROUP) {
                last_init = Instant::now();
                let command = wire::encode(&Command::InitMembers(inner.options.initial.clone()));
                let inner = inner.clone();
                tokio::spawn(async move {
                    if let Err(e) = inner.raft.write(GROUP, command).await {
                        tracing::debug!(error = %e, "logging the initial members failed");
                    }
                });
            }
        }
        if inner.raft.is_leader_current(GROUP) {
            expire_due(&inner);
        } else {
            inner.lessor.lock().unwrap_or_else(|e| e.into_inner()).clear();
        }
    }
}

/// On the leader: logs the expiry of every lease whose deadline passed.
fn expire_due(inner: &Arc<Inner>) {
    let term = inner.raft.term(GROUP);
    let leases: Vec<(LeaseId, Duration)> = lock(&inner.state).store.leases().collect();
    let due =
        inner.lessor.lock().unwrap_or_else(|e| e.into_inner()).due(term, &leases, Instant::now());
    for lease in due {
        let inner = inner.clone();
        tokio::spawn(async move {
            let command = wire::encode(&Command::Expire { lease });
            if let Err(e) = inner.raft.write(GROUP, command).await {
                tracing::debug!(lease = lease.0, error = %e, "logging a lease expiry failed");
            }
            inner.lessor.lock().unwrap_or_else(|e| e.into_inner()).done(lease);
        });
    }
}

/// While the group's member list is unknown here (a new group that has not
/// logged it yet, or a member waiting to be added): learn where the members
/// are from the initial list's or the join URLs' status, so this member can
/// answer the leader.
async fn ask_where(inner: Arc<Inner>) {
    let mut urls: Vec<String> = inner.options.join.clone();
    urls.extend(inner.options.initial.iter().map(|m| m.url.clone()));
    for url in urls {
        if let Ok(status) = inner.status_at(&url, Duration::from_secs(2)).await {
            let mut known = status.members;
            known.push(crate::member(&status.name, &status.url));
            inner.learn(&known);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn deadlines_follow_the_leases_and_restart_with_each_term() {
        let mut lessor = Lessor::default();
        let ttl = Duration::from_secs(2);
        let a = LeaseId(1);
        let now = Instant::now();
        assert!(lessor.due(5, &[(a, ttl)], now).is_empty());
        assert_eq!(lessor.due(5, &[(a, ttl)], now + ttl), vec![a]);
        assert!(lessor.due(5, &[(a, ttl)], now + ttl * 2).is_empty(), "once while logging");
        lessor.done(a);
        lessor.renew(5, a, ttl);
        assert!(lessor.due(5, &[(a, ttl)], Instant::now() + ttl / 2).is_empty());
        // A new term: every lease gets its full TTL again.
        assert!(lessor.due(6, &[(a, ttl)], now + ttl * 3).is_empty());
        assert_eq!(lessor.due(6, &[(a, ttl)], now + ttl * 4), vec![a]);
        // A lease that is gone is forgotten.
        assert!(lessor.due(6, &[], now + ttl * 9).is_empty());
    }
}
