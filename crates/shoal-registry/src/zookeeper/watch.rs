//! Watches: a persistent recursive watch on the key directory, and a task
//! that re-reads the prefix after each notification and delivers the
//! difference (see the parent module's docs).

use std::collections::BTreeSet;

use shoal_types::Revision;
use tokio::sync::mpsc;
use zookeeper_client as zk;

use super::layout::{Snapshot, decode_key};
use super::{KV_DIR, ZkRegistry};
use crate::error::Result;
use crate::kv::{Event, EventKind, KeyValue, WatchMessage};

/// The task behind one watch: re-reads the prefix after each notification
/// and delivers the difference.
pub(super) struct WatchFeeder {
    /// The registry, for reads and for watching again.
    pub(super) registry: ZkRegistry,
    /// The prefix watched.
    pub(super) prefix: Vec<u8>,
    /// Events before this revision are not delivered.
    pub(super) from: i64,
    /// What the watcher has been told so far.
    pub(super) seen: Snapshot,
    /// The session the watch lives in: if it ends, so does the watch.
    pub(super) session: i64,
    /// Where the watch's messages go.
    pub(super) tx: mpsc::Sender<Result<WatchMessage>>,
}

impl WatchFeeder {
    pub(super) async fn run(mut self, mut watcher: zk::PersistentWatcher, initial: Vec<Event>) {
        if !self.send(initial).await {
            return;
        }
        loop {
            let event = tokio::select! {
                event = watcher.changed() => event,
                _ = self.tx.closed() => return,
            };
            if event.session_state.is_terminated() {
                self.lost().await;
                return;
            }
            match event.event_type {
                zk::EventType::Session => {
                    if event.session_state != zk::SessionState::SyncConnected {
                        continue;
                    }
                    // Reconnected. Notifications of the time without a
                    // connection are not replayed, and a restarted server
                    // may have forgotten the watch: watch again, then look.
                    match self.registry.add_watch().await {
                        Ok((_, session)) if session != self.session => {
                            // The registry moved on to a new session: this
                            // watch's session, and the watch, are gone.
                            self.lost().await;
                            return;
                        }
                        Ok((renewed, _)) => watcher = renewed,
                        Err(e) => {
                            let _ = self.tx.send(Err(e)).await;
                            return;
                        }
                    }
                }
                _ => {
                    let name = event.path.strip_prefix(KV_DIR).and_then(|p| p.strip_prefix('/'));
                    let ours =
                        name.and_then(decode_key).is_some_and(|key| key.starts_with(&self.prefix));
                    if !ours {
                        continue;
                    }
                }
            }
            let now = match self.registry.read(&BTreeSet::new(), &[self.prefix.clone()]).await {
                Ok(now) => now,
                Err(e) => {
                    let _ = self.tx.send(Err(e)).await;
                    return;
                }
            };
            let events = diff(&self.seen, &now);
            self.seen = now;
            if !self.send(events).await {
                return;
            }
        }
    }

    /// Ends the watch with a resync: it died with its session, and what
    /// happened since is unknown.
    async fn lost(&self) {
        let compact_revision = Revision(self.seen.revision + 1);
        let _ = self.tx.send(Ok(WatchMessage::Resync { compact_revision })).await;
    }

    async fn send(&self, events: Vec<Event>) -> bool {
        for event in events {
            if event.revision().0 < self.from {
                continue;
            }
            if self.tx.send(Ok(WatchMessage::Event(event))).await.is_err() {
                return false;
            }
        }
        true
    }
}

/// The events that turn `before` into `after`, in revision order (see the
/// module docs for the revision of a delete).
pub(super) fn diff(before: &Snapshot, after: &Snapshot) -> Vec<Event> {
    if after.revision <= before.revision {
        return Vec::new();
    }
    let deleted = |key: &[u8], revision: i64| Event {
        kind: EventKind::Delete,
        kv: KeyValue {
            key: key.to_vec(),
            mod_revision: Revision(revision.max(before.revision + 1)),
            ..KeyValue::default()
        },
    };
    let mut events = Vec::new();
    for (key, old) in &before.keys {
        match after.keys.get(key) {
            None => events.push(deleted(key, after.pzxid)),
            Some(new) if new.kv.create_revision != old.kv.create_revision => {
                events.push(deleted(key, new.kv.create_revision.0));
                events.push(Event { kind: EventKind::Put, kv: new.kv.clone() });
            }
            Some(new) if new.kv.mod_revision != old.kv.mod_revision => {
                events.push(Event { kind: EventKind::Put, kv: new.kv.clone() });
            }
            Some(_) => {}
        }
    }
    for (key, new) in &after.keys {
        if !before.keys.contains_key(key) {
            events.push(Event { kind: EventKind::Put, kv: new.kv.clone() });
        }
    }
    // Revision order; at one revision deletes first, then by key.
    events.sort_by(|a, b| {
        (a.revision(), a.kind == EventKind::Put, &a.kv.key).cmp(&(
            b.revision(),
            b.kind == EventKind::Put,
            &b.kv.key,
        ))
    });
    events
}

#[cfg(test)]
mod tests {
    use super::super::layout::Znode;
    use super::*;
    use crate::kv::KeyValue;

    fn znode(key: &str, create: i64, modr: i64) -> (Vec<u8>, Znode) {
        let kv = KeyValue {
            key: key.as_bytes().to_vec(),
            value: format!("{key}@{modr}").into_bytes(),
            create_revision: Revision(create),
            mod_revision: Revision(modr),
            version: 1,
            lease: None,
        };
        (key.as_bytes().to_vec(), Znode { kv, version: 0 })
    }

    #[test]
    fn diff_orders_events_and_dates_deletes_by_the_directory() {
        let before = Snapshot {
            keys: [znode("a", 1, 1), znode("b", 2, 2), znode("c", 3, 3)].into_iter().collect(),
            revision: 3,
            pzxid: 3,
            marker_version: 0,
        };
        // b changed at 5, c was deleted at 6 (pzxid), a re-created at 4.
        let after = Snapshot {
            keys: [znode("a", 4, 4), znode("b", 2, 5), znode("d", 7, 7)].into_iter().collect(),
            revision: 7,
            pzxid: 7,
            marker_version: 0,
        };
        let events: Vec<(EventKind, String, i64)> = diff(&before, &after)
            .into_iter()
            .map(|e| (e.kind, String::from_utf8(e.kv.key.clone()).unwrap(), e.revision().0))
            .collect();
        use EventKind::{Delete, Put};
        assert_eq!(
            events,
            [
                (Delete, "a".into(), 4),
                (Put, "a".into(), 4),
                (Put, "b".into(), 5),
                (Delete, "c".into(), 7),
                (Put, "d".into(), 7),
            ]
        );
        assert!(diff(&after, &after).is_empty());
    }
}
