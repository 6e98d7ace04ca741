//! The idempotency keys of the writes this node proposed lately, so that a
//! write that names one in `after` is proposed behind it.
//!
//! A client with several writes in flight chains each to the one before it
//! (`after`), and the state machine applies a chained write only if the
//! one it names was applied first (checked in log order: that is what keeps
//! the order). Requests on separate connections may reach the log in either
//! order, and a write that overtook the one it follows fails and must be
//! sent again. So before proposing a chained write, the engine waits, a
//! short while at most, until the write it names was proposed here: the
//! log is a queue, so it is then behind it. The wait is only an
//! optimisation; correctness never depends on it (a key this node did not
//! propose, such as one from before a change of leader, just waits out
//! [`AFTER_WAIT`]).

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use shoal_types::BaseId;
use tokio::sync::Notify;

/// How many keys are remembered, newest first.
const KEEP: usize = 4096;

/// The longest a chained write waits for the one it names to be proposed.
pub const AFTER_WAIT: Duration = Duration::from_millis(500);

/// The keys of writes proposed lately.
#[derive(Default)]
pub struct Proposed {
    keys: Mutex<Keys>,
    notify: Notify,
}

#[derive(Default)]
struct Keys {
    set: HashSet<(BaseId, String)>,
    order: VecDeque<(BaseId, String)>,
}

impl Proposed {
    /// Records that the write with `key` to `base` was proposed.
    pub fn mark(&self, base: BaseId, key: &str) {
        {
            let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
            let entry = (base, key.to_string());
            if keys.set.insert(entry.clone()) {
                keys.order.push_back(entry);
            }
            while keys.order.len() > KEEP {
                if let Some(old) = keys.order.pop_front() {
                    keys.set.remove(&old);
                }
            }
        }
        self.notify.notify_waiters();
    }

    fn contains(&self, base: BaseId, key: &str) -> bool {
        let keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        keys.set.contains(&(base, key.to_string()))
    }

    /// Waits until the write with `key` to `base` was proposed, or
    /// [`AFTER_WAIT`] has passed.
    pub async fn wait(&self, base: BaseId, key: &str) {
        let deadline = tokio::time::Instant::now() + AFTER_WAIT;
        loop {
            // Registered before the check, so a mark in between wakes it.
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.contains(base, key) {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_wait_ends_when_the_key_is_proposed_or_after_a_while() {
        let p = std::sync::Arc::new(Proposed::default());
        let base = BaseId::random();
        let start = std::time::Instant::now();
        let waiter = tokio::spawn({
            let p = p.clone();
            async move { p.wait(base, "k1").await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        p.mark(base, "k1");
        waiter.await.expect("woken");
        assert!(start.elapsed() < AFTER_WAIT, "{:?}", start.elapsed());
        // Known: at once. Unknown (another base): after AFTER_WAIT.
        p.wait(base, "k1").await;
        assert!(start.elapsed() < AFTER_WAIT, "{:?}", start.elapsed());
        p.wait(BaseId::random(), "k1").await;
        assert!(start.elapsed() >= AFTER_WAIT, "{:?}", start.elapsed());
        // Only the newest KEEP are remembered.
        for i in 0..KEEP {
            p.mark(base, &format!("n{i}"));
        }
        assert!(!p.contains(base, "k1") && p.contains(base, "n0"));
    }
}
