//! The conformance suite: one test per promise of the [`Registry`]
//! contract and of the [`Session`] and [`Election`] built on it, written
//! once and run against every backend.
//!
//! A backend's test file implements [`Harness`] and expands
//! [`conformance_tests!`](crate::conformance_tests), which makes one
//! `#[tokio::test]` per case:
//!
//! ```ignore
//! shoal_registry::conformance_tests!(MemoryHarness::new(), #[tokio::test(start_paused = true)]);
//! ```
//!
//! Cases only use tokio's clock, so the memory backend runs them under
//! paused time (TTLs cost nothing) and etcd in real time. Every wait is
//! bounded by [`Harness::patience`], so a broken backend fails, never hangs.
//!
//! Where a backend keeps the contract in a weaker form that the contract
//! allows (ZooKeeper: revisions that only grow, watches without history),
//! its harness says so in [`Harness::semantics`], and the cases concerned
//! assert that weaker behaviour exactly instead of skipping the check. The
//! differences are described in `docs/registry.md`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use shoal_types::{LeaseId, Revision};
use tokio::time::Instant;

use crate::{
    Compare, CompareOp, Election, Error, Event, EventKind, KeyValue, Leader, Registry, Session,
    SessionOptions, Txn, TxnOp, TxnOpResponse, Watch, WatchMessage,
};

/// What the suite needs from a backend.
#[async_trait]
pub trait Harness: Send + Sync {
    /// A registry over an empty store, isolated from every other registry
    /// this harness returned (etcd: a fresh namespace).
    async fn registry(&self) -> Arc<dyn Registry>;
    /// A lease TTL the backend honours exactly enough for tests (etcd's
    /// minimum is about two seconds).
    fn ttl(&self) -> Duration;
    /// How long past its TTL a lease may take to vanish (etcd checks expiry
    /// periodically), and the bound on any other wait.
    fn patience(&self) -> Duration;
    /// Where the backend departs from etcd's semantics. Default: nowhere.
    fn semantics(&self) -> Semantics {
        Semantics::ETCD
    }
}

/// How a backend's revisions and watches behave, where backends differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Semantics {
    /// Every change bumps the revision by exactly one (etcd, memory).
    /// Otherwise revisions only grow, with gaps (ZooKeeper's zxid).
    pub dense_revisions: bool,
    /// Watches have history (etcd, memory): a watch from an old revision
    /// replays every event since, and a live watch delivers every
    /// intermediate value. Otherwise (ZooKeeper) a watch delivers the latest
    /// value of each changed key, several changes between two reads arriving
    /// as one event, and a watch that needs history gets a resync.
    pub watch_history: bool,
}

impl Semantics {
    /// etcd's semantics, which the memory backend reproduces.
    pub const ETCD: Semantics = Semantics { dense_revisions: true, watch_history: true };
    /// ZooKeeper's: zxids for revisions, watches without history.
    pub const ZOOKEEPER: Semantics = Semantics { dense_revisions: false, watch_history: false };
}

/// Checks that `after` is the revision of the change right after `before`:
/// `before + 1` with dense revisions, else any later revision.
fn assert_next(h: &dyn Harness, before: Revision, after: Revision, what: &str) {
    if h.semantics().dense_revisions {
        assert_eq!(after, Revision(before.0 + 1), "{what}");
    } else {
        assert!(after > before, "{what}: revisions must grow ({before:?} -> {after:?})");
    }
}

/// Makes one test per conformance case. The first argument builds the
/// harness (it may `.await`); the second is the test attribute.
#[macro_export]
macro_rules! conformance_tests {
    ($harness:expr, #[$attr:meta]) => {
        $crate::conformance_tests!(@cases $harness, #[$attr],
            put_get_delete,
            revisions_count_changes,
            get_prefix_and_delete_prefix,
            lease_revoke_deletes_keys_and_notifies,
            lease_expiry_deletes_keys_and_notifies,
            keep_alive_extends_lease,
            put_moves_keys_between_leases,
            txn_compares_every_target,
            txn_is_atomic_and_guards_conflicts,
            txn_conflicts_under_concurrency,
            txn_rejects_duplicate_keys,
            watch_delivers_every_event_in_order,
            watch_resumes_from_old_revision,
            watch_after_compaction_resyncs,
            session_keeps_lease_and_signals_loss,
            session_close_revokes,
            election_hands_over_when_leader_session_revoked,
            concurrent_campaigners_elect_exactly_one,
            election_proclaim_resign_and_observe,
        );
    };
    (@cases $harness:expr, #[$attr:meta], $($case:ident),* $(,)?) => {
        $(
            #[$attr]
            async fn $case() {
                let harness = $harness;
                $crate::testing::conformance::$case(&harness).await;
            }
        )*
    };
}

/// Waits for `f` at most `bound`, failing the test with `what` otherwise.
async fn within<T>(bound: Duration, what: &str, f: impl Future<Output = T>) -> T {
    match tokio::time::timeout(bound, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {bound:?} waiting for {what}"),
    }
}

/// The next event of a watch, failing on anything else.
async fn next_event(h: &dyn Harness, watch: &mut Watch) -> Event {
    next_event_within(h.patience(), watch).await
}

/// The next event of a watch within `bound`, failing on anything else.
async fn next_event_within(bound: Duration, watch: &mut Watch) -> Event {
    match within(bound, "a watch event", watch.next()).await {
        Some(Ok(WatchMessage::Event(e))) => e,
        other => panic!("expected a watch event, got {other:?}"),
    }
}

/// A watch has nothing more to say for a short while.
async fn quiet(watch: &mut Watch) {
    if let Ok(msg) = tokio::time::timeout(Duration::from_millis(300), watch.next()).await {
        panic!("expected no watch message, got {msg:?}");
    }
}

async fn session(registry: &Arc<dyn Registry>, ttl: Duration) -> Arc<Session> {
    Arc::new(Session::new(registry.clone(), SessionOptions { ttl }).await.expect("session"))
}

/// Put, get and delete of single keys, with their counters.
pub async fn put_get_delete(h: &dyn Harness) {
    let r = h.registry().await;
    assert_eq!(r.get(b"k").await.unwrap(), None);
    let r1 = r.put(b"k", b"v1", None).await.unwrap();
    let kv = r.get(b"k").await.unwrap().expect("k exists");
    assert_eq!(
        kv,
        KeyValue {
            key: b"k".to_vec(),
            value: b"v1".to_vec(),
            create_revision: r1,
            mod_revision: r1,
            version: 1,
            lease: None,
        }
    );
    let r2 = r.put(b"k", b"v2", None).await.unwrap();
    assert_next(h, r1, r2, "a put is one change");
    let kv = r.get(b"k").await.unwrap().expect("k exists");
    assert_eq!(
        (kv.value.as_slice(), kv.version, kv.create_revision, kv.mod_revision),
        (&b"v2"[..], 2, r1, r2)
    );
    // Keys and values are bytes, not text.
    let binary = [0u8, 0xff, b'/', 7];
    r.put(&binary, &binary, None).await.unwrap();
    assert_eq!(r.get(&binary).await.unwrap().expect("binary key").value, binary);
    let (existed, r3) = r.delete(b"k").await.unwrap();
    assert!(existed);
    assert_eq!(r.get(b"k").await.unwrap(), None);
    let (existed, r4) = r.delete(b"k").await.unwrap();
    assert!(!existed);
    assert_eq!(r3, r4, "deleting a missing key changes nothing");
    // A key created again starts over.
    let r5 = r.put(b"k", b"v3", None).await.unwrap();
    let kv = r.get(b"k").await.unwrap().expect("k exists");
    assert_eq!((kv.version, kv.create_revision), (1, r5));
}

/// Every change bumps the revision by exactly one; reads do not.
pub async fn revisions_count_changes(h: &dyn Harness) {
    let r = h.registry().await;
    let start = r.get_prefix(b"").await.unwrap().revision;
    let a = r.put(b"a", b"1", None).await.unwrap();
    assert_next(h, start, a, "a put is one change");
    assert_eq!(r.get_prefix(b"").await.unwrap().revision, a);
    let t = Txn::new().and_then([
        TxnOp::put("b", "1", None),
        TxnOp::put("c", "1", None),
        TxnOp::delete("a"),
    ]);
    let resp = r.txn(t).await.unwrap();
    assert_next(h, a, resp.revision, "a transaction is one change");
    for key in ["b", "c"] {
        let kv = r.get(key.as_bytes()).await.unwrap().expect("written by the transaction");
        assert_eq!(kv.mod_revision, resp.revision, "a transaction's writes share its revision");
    }
    let noop = r.txn(Txn::new().and_then([TxnOp::get("b")])).await.unwrap();
    assert_eq!(noop.revision, resp.revision, "a read-only transaction changes nothing");
}

/// `get_prefix` lists in key order at one revision; `delete_prefix`
/// removes exactly the prefix, in one change.
pub async fn get_prefix_and_delete_prefix(h: &dyn Harness) {
    let r = h.registry().await;
    for key in ["nodes/b", "nodes/a", "nodes/c", "nodesx", "placement"] {
        r.put(key.as_bytes(), b"x", None).await.unwrap();
    }
    let listing = r.get_prefix(b"nodes/").await.unwrap();
    let keys: Vec<&[u8]> = listing.kvs.iter().map(|kv| kv.key.as_slice()).collect();
    assert_eq!(keys, [&b"nodes/a"[..], b"nodes/b", b"nodes/c"]);
    let current = r.get(b"placement").await.unwrap().expect("placement").mod_revision;
    assert_eq!(listing.revision, current);
    assert_eq!(r.get_prefix(b"").await.unwrap().kvs.len(), 5, "the empty prefix lists everything");
    let (count, rev) = r.delete_prefix(b"nodes/").await.unwrap();
    assert_eq!(count, 3);
    assert_next(h, current, rev, "deleting a prefix is one change");
    let rest: Vec<Vec<u8>> =
        r.get_prefix(b"").await.unwrap().kvs.into_iter().map(|kv| kv.key).collect();
    assert_eq!(rest, [b"nodesx".to_vec(), b"placement".to_vec()]);
}

/// Revoking a lease deletes its keys in one change that watchers see.
pub async fn lease_revoke_deletes_keys_and_notifies(h: &dyn Harness) {
    let r = h.registry().await;
    let lease = r.grant_lease(h.ttl()).await.unwrap();
    r.put(b"nodes/a", b"1", Some(lease)).await.unwrap();
    r.put(b"nodes/b", b"1", Some(lease)).await.unwrap();
    r.put(b"nodes/c", b"1", None).await.unwrap();
    assert_eq!(r.get(b"nodes/a").await.unwrap().expect("a").lease, Some(lease));
    let mut watch = r.watch_prefix(b"nodes/", Revision(0)).await.unwrap();
    r.revoke_lease(lease).await.unwrap();
    let a = next_event(h, &mut watch).await;
    let b = next_event(h, &mut watch).await;
    assert_eq!((a.kind, b.kind), (EventKind::Delete, EventKind::Delete));
    assert_eq!((a.kv.key.as_slice(), b.kv.key.as_slice()), (&b"nodes/a"[..], &b"nodes/b"[..]));
    assert_eq!(a.revision(), b.revision(), "one lease, one change");
    assert_eq!(r.get_prefix(b"nodes/").await.unwrap().kvs.len(), 1);
    quiet(&mut watch).await;
    assert!(matches!(r.keep_alive(lease).await, Err(Error::LeaseNotFound(_))));
    assert!(matches!(r.revoke_lease(lease).await, Err(Error::LeaseNotFound(_))));
    assert!(matches!(r.put(b"x", b"1", Some(lease)).await, Err(Error::LeaseNotFound(_))));
    assert_eq!(r.get(b"x").await.unwrap(), None);
}

/// A lease that is not kept alive expires after its TTL: its keys vanish
/// and watchers see the deletions.
pub async fn lease_expiry_deletes_keys_and_notifies(h: &dyn Harness) {
    let r = h.registry().await;
    let granted = Instant::now();
    let lease = r.grant_lease(h.ttl()).await.unwrap();
    r.put(b"nodes/n1", b"1", Some(lease)).await.unwrap();
    let mut watch = r.watch_prefix(b"nodes/", Revision(0)).await.unwrap();
    let event = next_event_within(h.ttl() + h.patience(), &mut watch).await;
    assert_eq!(event.kind, EventKind::Delete);
    assert_eq!(event.kv.key, b"nodes/n1");
    assert!(granted.elapsed() >= h.ttl(), "expired early, after {:?}", granted.elapsed());
    assert_eq!(r.get(b"nodes/n1").await.unwrap(), None);
    assert!(matches!(r.keep_alive(lease).await, Err(Error::LeaseNotFound(_))));
}

/// Keep-alives hold a lease past its TTL; stopping them lets it expire.
pub async fn keep_alive_extends_lease(h: &dyn Harness) {
    let r = h.registry().await;
    let lease = r.grant_lease(h.ttl()).await.unwrap();
    r.put(b"k", b"1", Some(lease)).await.unwrap();
    let until = Instant::now() + h.ttl() * 2;
    while Instant::now() < until {
        tokio::time::sleep(h.ttl() / 4).await;
        r.keep_alive(lease).await.unwrap();
    }
    assert!(r.get(b"k").await.unwrap().is_some(), "kept-alive key vanished");
    let mut watch = r.watch_prefix(b"k", Revision(0)).await.unwrap();
    let event = next_event_within(h.ttl() + h.patience(), &mut watch).await;
    assert_eq!(event.kind, EventKind::Delete);
}

/// A put without a lease detaches the key from its lease; a put with
/// another lease moves it.
pub async fn put_moves_keys_between_leases(h: &dyn Harness) {
    let r = h.registry().await;
    let first = r.grant_lease(h.ttl() * 10).await.unwrap();
    let second = r.grant_lease(h.ttl() * 10).await.unwrap();
    r.put(b"free", b"1", Some(first)).await.unwrap();
    r.put(b"free", b"2", None).await.unwrap();
    r.put(b"moved", b"1", Some(first)).await.unwrap();
    r.put(b"moved", b"2", Some(second)).await.unwrap();
    r.revoke_lease(first).await.unwrap();
    assert!(r.get(b"free").await.unwrap().is_some());
    assert_eq!(r.get(b"moved").await.unwrap().expect("moved").lease, Some(second));
    r.revoke_lease(second).await.unwrap();
    assert_eq!(r.get(b"moved").await.unwrap(), None);
}

/// Guards on value, version, create and mod revision, with missing keys
/// comparing as zero (and never by value).
pub async fn txn_compares_every_target(h: &dyn Harness) {
    let r = h.registry().await;
    let rev = r.put(b"k", b"b", None).await.unwrap();
    let cases = [
        (Compare::value("k", CompareOp::Equal, "b"), true),
        (Compare::value("k", CompareOp::Greater, "a"), true),
        (Compare::value("k", CompareOp::Less, "a"), false),
        (Compare::value("k", CompareOp::NotEqual, "b"), false),
        (Compare::version("k", CompareOp::Equal, 1), true),
        (Compare::version("k", CompareOp::Greater, 1), false),
        (Compare::create_revision("k", CompareOp::Equal, rev), true),
        (Compare::mod_revision("k", CompareOp::Equal, rev), true),
        (Compare::mod_revision("k", CompareOp::Less, rev), false),
        (Compare::create_revision("missing", CompareOp::Equal, Revision(0)), true),
        (Compare::version("missing", CompareOp::Equal, 0), true),
        (Compare::mod_revision("missing", CompareOp::Equal, Revision(0)), true),
        (Compare::value("missing", CompareOp::Equal, ""), false),
        (Compare::value("missing", CompareOp::NotEqual, "x"), false),
    ];
    for (compare, expected) in cases {
        let resp = r.txn(Txn::new().when([compare.clone()])).await.unwrap();
        assert_eq!(resp.succeeded, expected, "{compare:?}");
    }
    let both = Txn::new().when([
        Compare::value("k", CompareOp::Equal, "b"),
        Compare::version("k", CompareOp::Equal, 2),
    ]);
    assert!(!r.txn(both).await.unwrap().succeeded, "every guard must hold");
}

/// A transaction applies one branch atomically; a compare-and-swap on the
/// mod revision lets exactly one of two writers win.
pub async fn txn_is_atomic_and_guards_conflicts(h: &dyn Harness) {
    let r = h.registry().await;
    let create = |value: &str| {
        Txn::new()
            .when([Compare::create_revision("placement", CompareOp::Equal, Revision(0))])
            .and_then([TxnOp::put("placement", value, None), TxnOp::put("epoch", "1", None)])
            .or_else([TxnOp::get("placement")])
    };
    let first = r.txn(create("map-1")).await.unwrap();
    assert!(first.succeeded);
    assert_eq!(first.responses, [TxnOpResponse::Put, TxnOpResponse::Put]);
    let placement = r.get(b"placement").await.unwrap().expect("placement");
    let epoch = r.get(b"epoch").await.unwrap().expect("epoch");
    assert_eq!(placement.mod_revision, first.revision);
    assert_eq!(epoch.mod_revision, first.revision, "both writes at one revision");
    let second = r.txn(create("map-2")).await.unwrap();
    assert!(!second.succeeded);
    assert_eq!(second.revision, first.revision);
    assert_eq!(second.responses, [TxnOpResponse::Get(Some(placement.clone()))]);

    // Two writers read the same revision; the first CAS wins, the second
    // sees the conflict and runs its failure branch.
    let cas = |value: &str| {
        Txn::new()
            .when([Compare::mod_revision("placement", CompareOp::Equal, placement.mod_revision)])
            .and_then([TxnOp::put("placement", value, None)])
            .or_else([TxnOp::get("placement")])
    };
    let winner = r.txn(cas("map-a")).await.unwrap();
    assert!(winner.succeeded);
    let loser = r.txn(cas("map-b")).await.unwrap();
    assert!(!loser.succeeded);
    match &loser.responses[..] {
        [TxnOpResponse::Get(Some(kv))] => {
            assert_eq!(kv.value, b"map-a");
            assert_eq!(kv.mod_revision, winner.revision);
        }
        other => panic!("unexpected responses {other:?}"),
    }
    // Failure branches write too.
    let t = Txn::new()
        .when([Compare::value("placement", CompareOp::Equal, "nope")])
        .and_then([TxnOp::put("x", "then", None)])
        .or_else([TxnOp::put("x", "else", None), TxnOp::delete_prefix("epo")]);
    let resp = r.txn(t).await.unwrap();
    assert!(!resp.succeeded);
    assert_eq!(resp.responses, [TxnOpResponse::Put, TxnOpResponse::Delete(1)]);
    assert_eq!(r.get(b"x").await.unwrap().expect("x").value, b"else");
    assert_eq!(r.get(b"epoch").await.unwrap(), None);
}

/// Concurrent read-modify-write loops guarded by the mod revision lose no
/// update.
pub async fn txn_conflicts_under_concurrency(h: &dyn Harness) {
    let r = h.registry().await;
    r.put(b"counter", b"0", None).await.unwrap();
    const WRITERS: u64 = 4;
    const INCREMENTS: u64 = 10;
    let mut tasks = Vec::new();
    for _ in 0..WRITERS {
        let r = r.clone();
        tasks.push(tokio::spawn(async move {
            let mut conflicts = 0u64;
            for _ in 0..INCREMENTS {
                loop {
                    let kv = r.get(b"counter").await.unwrap().expect("counter");
                    let n: u64 = String::from_utf8_lossy(&kv.value).parse().expect("number");
                    let t = Txn::new()
                        .when([Compare::mod_revision("counter", CompareOp::Equal, kv.mod_revision)])
                        .and_then([TxnOp::put("counter", (n + 1).to_string(), None)]);
                    if r.txn(t).await.unwrap().succeeded {
                        break;
                    }
                    conflicts += 1;
                    tokio::task::yield_now().await;
                }
            }
            conflicts
        }));
    }
    for task in tasks {
        within(h.patience() * 10, "writers", task).await.expect("writer task");
    }
    let kv = r.get(b"counter").await.unwrap().expect("counter");
    assert_eq!(kv.value, (WRITERS * INCREMENTS).to_string().into_bytes());
    assert_eq!(kv.version as u64, WRITERS * INCREMENTS + 1);
}

/// A branch may not write one key twice (etcd's rule, kept everywhere).
pub async fn txn_rejects_duplicate_keys(h: &dyn Harness) {
    let r = h.registry().await;
    let t = Txn::new().and_then([TxnOp::put("a", "1", None), TxnOp::put("a", "2", None)]);
    assert!(matches!(r.txn(t).await, Err(Error::InvalidInput(_))));
    let t = Txn::new().and_then([TxnOp::put("a/1", "1", None), TxnOp::delete_prefix("a/")]);
    assert!(matches!(r.txn(t).await, Err(Error::InvalidInput(_))));
    assert_eq!(r.get_prefix(b"").await.unwrap().kvs.len(), 0);
}

/// A watch sees every change under its prefix, in revision order, with
/// nothing skipped and nothing from outside the prefix.
pub async fn watch_delivers_every_event_in_order(h: &dyn Harness) {
    let r = h.registry().await;
    let mut watch = r.watch_prefix(b"w/", Revision(0)).await.unwrap();
    let mut expected = Vec::new();
    for i in 0..40u32 {
        let key = format!("w/{}", i % 5).into_bytes();
        r.put(b"other", b"noise", None).await.unwrap();
        if i % 7 == 6 {
            let (existed, rev) = r.delete(&key).await.unwrap();
            if existed {
                expected.push((EventKind::Delete, key, Vec::new(), rev));
            }
        } else {
            let value = i.to_string().into_bytes();
            let rev = r.put(&key, &value, None).await.unwrap();
            expected.push((EventKind::Put, key, value, rev));
        }
    }
    let t = Txn::new().and_then([TxnOp::put("w/t1", "a", None), TxnOp::put("w/t2", "b", None)]);
    let rev = r.txn(t).await.unwrap().revision;
    expected.push((EventKind::Put, b"w/t1".to_vec(), b"a".to_vec(), rev));
    expected.push((EventKind::Put, b"w/t2".to_vec(), b"b".to_vec(), rev));
    if h.semantics().watch_history {
        let mut seen = Vec::new();
        for _ in 0..expected.len() {
            let e = next_event(h, &mut watch).await;
            seen.push((e.kind, e.kv.key.clone(), e.kv.value.clone(), e.revision()));
        }
        assert_eq!(seen, expected);
    } else {
        check_coalesced(h, &mut watch, &expected).await;
    }
    quiet(&mut watch).await;
}

/// One expected change: kind, key, value, revision.
type Change = (EventKind, Vec<u8>, Vec<u8>, Revision);

/// The watch of a backend without history: reads until every key's last
/// event has arrived, and checks that revisions never go back, that each
/// key's events are a subsequence of its changes in order (changes between
/// two reads coalesce), that a put carries its exact revision and a delete
/// one at or after the deletion's.
async fn check_coalesced(h: &dyn Harness, watch: &mut Watch, expected: &[Change]) {
    use std::collections::BTreeMap;
    let mut per_key: BTreeMap<&[u8], Vec<&Change>> = BTreeMap::new();
    for e in expected {
        per_key.entry(e.1.as_slice()).or_default().push(e);
    }
    let mut seen: BTreeMap<Vec<u8>, Vec<Event>> = BTreeMap::new();
    let mut last = Revision(0);
    let done = |seen: &BTreeMap<Vec<u8>, Vec<Event>>| {
        per_key.iter().all(|(key, changes)| {
            let last_change = changes.last().expect("a key has changes");
            seen.get(*key)
                .and_then(|events| events.last())
                .is_some_and(|e| (e.kind, &e.kv.value) == (last_change.0, &last_change.2))
        })
    };
    while !done(&seen) {
        let e = next_event(h, watch).await;
        assert!(e.revision() >= last, "revisions went back: {e:?} after {last:?}");
        last = e.revision();
        seen.entry(e.kv.key.clone()).or_default().push(e);
    }
    for (key, events) in &seen {
        let changes =
            per_key.get(key.as_slice()).unwrap_or_else(|| panic!("unexpected key {key:?}"));
        let mut next = 0;
        for e in events {
            let found = changes[next..].iter().position(|c| {
                c.0 == e.kind
                    && c.2 == e.kv.value
                    && match e.kind {
                        EventKind::Put => c.3 == e.revision(),
                        EventKind::Delete => c.3 <= e.revision(),
                    }
            });
            let Some(offset) = found else {
                panic!("event {e:?} is not one of the later changes {:?}", &changes[next..]);
            };
            next += offset + 1;
        }
    }
}

/// A watch started at an old revision replays history from there, then
/// continues live.
pub async fn watch_resumes_from_old_revision(h: &dyn Harness) {
    let r = h.registry().await;
    let mut revs = Vec::new();
    for i in 0..5u8 {
        revs.push(r.put(b"map", &[i], None).await.unwrap());
    }
    let mut watch = r.watch_prefix(b"map", revs[2]).await.unwrap();
    if h.semantics().watch_history {
        for (i, rev) in revs.iter().enumerate().skip(2) {
            let e = next_event(h, &mut watch).await;
            assert_eq!((e.revision(), e.kv.value.as_slice()), (*rev, &[i as u8][..]));
        }
    } else {
        // Without history, the key's latest value since then, once.
        let e = next_event(h, &mut watch).await;
        assert_eq!((e.revision(), e.kv.value.as_slice()), (revs[4], &[4u8][..]));
    }
    let live = r.put(b"map", b"live", None).await.unwrap();
    let e = next_event(h, &mut watch).await;
    assert_eq!((e.revision(), e.kv.value.as_slice()), (live, &b"live"[..]));
    // Resuming from a listing's revision + 1 is gap-free.
    let listing = r.get_prefix(b"map").await.unwrap();
    let mut resumed = r.watch_prefix(b"map", Revision(listing.revision.0 + 1)).await.unwrap();
    let next = r.put(b"map", b"next", None).await.unwrap();
    assert_eq!(next_event(h, &mut resumed).await.revision(), next);
}

/// A watch that needs compacted history gets an explicit resync, not
/// silence; a watch from the compaction point still works.
pub async fn watch_after_compaction_resyncs(h: &dyn Harness) {
    let r = h.registry().await;
    let first = r.put(b"k", b"1", None).await.unwrap();
    r.put(b"k", b"2", None).await.unwrap();
    let last = r.put(b"k", b"3", None).await.unwrap();
    r.compact(last).await.unwrap();
    let mut old = r.watch_prefix(b"k", first).await.unwrap();
    match within(h.patience(), "a resync", old.next()).await {
        Some(Ok(WatchMessage::Resync { compact_revision })) => {
            // Without history, everything up to the current revision is
            // gone, compacted or not.
            let oldest = if h.semantics().watch_history { last } else { Revision(last.0 + 1) };
            assert_eq!(compact_revision, oldest);
        }
        other => panic!("expected a resync, got {other:?}"),
    }
    let ended = within(h.patience(), "the end of a resynced watch", old.next()).await;
    assert!(ended.is_none(), "a resynced watch ends, got {ended:?}");
    let mut ok = r.watch_prefix(b"k", last).await.unwrap();
    assert_eq!(next_event(h, &mut ok).await.revision(), last);
    assert!(matches!(r.compact(Revision(last.0 + 100)).await, Err(Error::InvalidInput(_))));
}

/// A session keeps its lease (and keys) alive well past the TTL, and
/// signals loss when the lease is revoked behind its back.
pub async fn session_keeps_lease_and_signals_loss(h: &dyn Harness) {
    let r = h.registry().await;
    let s = session(&r, h.ttl()).await;
    r.put(b"nodes/me", b"1", Some(s.lease())).await.unwrap();
    tokio::time::sleep(h.ttl() * 3).await;
    assert!(!s.is_lost());
    assert!(r.get(b"nodes/me").await.unwrap().is_some(), "session let its key expire");
    r.revoke_lease(s.lease()).await.unwrap();
    let reason = within(h.ttl() + h.patience(), "session loss", s.lost()).await;
    assert!(reason.contains("expired or was revoked"), "{reason}");
    assert!(s.is_lost());
}

/// Closing a session revokes its lease at once.
pub async fn session_close_revokes(h: &dyn Harness) {
    let r = h.registry().await;
    let s = Session::new(r.clone(), SessionOptions { ttl: h.ttl() * 10 }).await.unwrap();
    let lease: LeaseId = s.lease();
    r.put(b"nodes/me", b"1", Some(lease)).await.unwrap();
    s.close().await.unwrap();
    assert_eq!(r.get(b"nodes/me").await.unwrap(), None);
    assert!(matches!(r.keep_alive(lease).await, Err(Error::LeaseNotFound(_))));
}

/// When the leader's session is revoked, the next candidate leads and
/// observers see the change.
pub async fn election_hands_over_when_leader_session_revoked(h: &dyn Harness) {
    let r = h.registry().await;
    let (sa, sb) = (session(&r, h.ttl()).await, session(&r, h.ttl()).await);
    let a = Election::new(sa.clone(), "monitor/leader");
    let b = Arc::new(Election::new(sb.clone(), "monitor/leader"));
    let mut observer = crate::observe(r.clone(), b"monitor/leader");
    let leader_a = within(h.patience(), "a to lead", a.campaign("a")).await.unwrap();
    let b_campaign = tokio::spawn({
        let b = b.clone();
        async move { b.campaign("b").await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!b_campaign.is_finished(), "b leads while a does");
    assert!(a.is_leader().await.unwrap() && !b.is_leader().await.unwrap());
    let seen = within(h.patience(), "the observer", observer.wait_for(|l| l.is_some()))
        .await
        .expect("observer")
        .clone();
    assert_eq!(seen, Some(leader_a.clone()));

    r.revoke_lease(sa.lease()).await.unwrap();
    let leader_b = within(h.patience(), "b to take over", b_campaign).await.expect("task").unwrap();
    assert_eq!(leader_b.value, b"b");
    assert!(leader_b.revision > leader_a.revision, "terms only grow");
    assert_eq!(b.leader().await.unwrap(), Some(leader_b.clone()));
    let seen = within(
        h.patience(),
        "the observer to see b",
        observer.wait_for(|l| l.as_ref().is_some_and(|l| l.value == b"b")),
    )
    .await
    .expect("observer")
    .clone();
    assert_eq!(seen, Some(leader_b));
    within(h.ttl() + h.patience(), "a's session loss", sa.lost()).await;
    assert!(matches!(a.proclaim("again").await, Err(Error::SessionLost(_))));
}

/// Many candidates campaigning at once elect exactly one leader at a time;
/// as leaders resign, each of the others leads in turn.
pub async fn concurrent_campaigners_elect_exactly_one(h: &dyn Harness) {
    const CANDIDATES: usize = 5;
    let r = h.registry().await;
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Leader)>();
    let mut elections = Vec::new();
    for i in 0..CANDIDATES {
        let election = Arc::new(Election::new(session(&r, h.ttl()).await, "monitor/leader"));
        elections.push(election.clone());
        let done = done_tx.clone();
        tokio::spawn(async move {
            let leader = election.campaign(format!("candidate-{i}")).await.expect("campaign");
            let _ = done.send((i, leader));
        });
    }
    let mut order = Vec::new();
    for _ in 0..CANDIDATES {
        let (i, leader) = within(h.patience(), "a leader", done_rx.recv()).await.expect("leader");
        // Exactly one: nobody else finished campaigning meanwhile.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(done_rx.try_recv().is_err(), "two leaders at once");
        assert_eq!(leader.value, format!("candidate-{i}").into_bytes());
        let current = crate::leader(r.as_ref(), b"monitor/leader").await.unwrap();
        assert_eq!(current, Some(leader.clone()));
        let leading: Vec<bool> = {
            let mut v = Vec::new();
            for e in &elections {
                v.push(e.is_leader().await.unwrap());
            }
            v
        };
        assert_eq!(leading.iter().filter(|l| **l).count(), 1);
        assert!(leading[i]);
        order.push(leader.revision);
        elections[i].resign().await.unwrap();
    }
    assert!(order.windows(2).all(|w| w[0] < w[1]), "leaders in queue order: {order:?}");
    assert_eq!(crate::leader(r.as_ref(), b"monitor/leader").await.unwrap(), None);
}

/// A leader can change its value; resigning leaves no leader; observers
/// follow both.
pub async fn election_proclaim_resign_and_observe(h: &dyn Harness) {
    let r = h.registry().await;
    let e = Election::new(session(&r, h.ttl()).await, "monitor/leader");
    let mut observer = e.observe();
    assert_eq!(*observer.borrow_and_update(), None);
    assert!(matches!(e.proclaim("x").await, Err(Error::SessionLost(_))), "not campaigning");
    e.campaign("http://m1").await.unwrap();
    e.proclaim("http://m1-new").await.unwrap();
    assert_eq!(e.leader().await.unwrap().expect("leader").value, b"http://m1-new");
    within(
        h.patience(),
        "the observer",
        observer.wait_for(|l| l.as_ref().is_some_and(|l| l.value == b"http://m1-new")),
    )
    .await
    .expect("observer");
    e.resign().await.unwrap();
    assert_eq!(e.leader().await.unwrap(), None);
    within(h.patience(), "the observer to see no leader", observer.wait_for(Option::is_none))
        .await
        .expect("observer");
    // Campaigning again works after resigning.
    e.campaign("http://m1").await.unwrap();
    assert!(e.is_leader().await.unwrap());
}
