//! The node log store's own semantics, beyond openraft's suite: restart,
//! group commit, truncate / purge / remove, isolation between groups, and
//! durability across a SIGKILL of the process.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
use openraft::{
    BasicNode, CommittedLeaderId, Entry, EntryPayload, LogId, Membership, RaftLogReader,
    StoredMembership, Vote,
};
use shoal_raft::log_store::{GroupLogStore, LogStore, LogStoreOptions};
use shoal_raft::{Request, TypeConfig};
use tempfile::TempDir;

fn log_id(term: u64, index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

/// A normal entry whose command names its group, term and index.
fn entry(group: u8, term: u64, index: u64) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(Request(format!("g{group} t{term} i{index}").into_bytes())),
    }
}

fn open(dir: &Path) -> LogStore {
    LogStore::open(dir, LogStoreOptions::default()).expect("open the log store")
}

async fn append(store: &mut GroupLogStore, term: u64, indexes: impl IntoIterator<Item = u64>) {
    let group = store.group();
    let entries: Vec<_> = indexes.into_iter().map(|i| entry(group, term, i)).collect();
    store.blocking_append(entries).await.expect("append");
}

/// The `(term, index)` of every entry of the group, checking each payload.
async fn log_of(store: &mut GroupLogStore) -> Vec<(u64, u64)> {
    let group = store.group();
    let entries = store.try_get_log_entries(..).await.expect("read");
    entries
        .into_iter()
        .map(|e| {
            let (term, index) = (e.log_id.leader_id.term, e.log_id.index);
            assert_eq!(e, entry(group, term, index), "payload of group {group}");
            (term, index)
        })
        .collect()
}

fn terms(term: u64, indexes: impl IntoIterator<Item = u64>) -> Vec<(u64, u64)> {
    indexes.into_iter().map(|i| (term, i)).collect()
}

fn membership() -> StoredMembership<u64, BasicNode> {
    let nodes: BTreeMap<u64, BasicNode> =
        [(1, BasicNode::new("a")), (2, BasicNode::new("b"))].into_iter().collect();
    StoredMembership::new(Some(log_id(1, 2)), Membership::new(vec![[1, 2].into()], nodes))
}

#[tokio::test]
async fn everything_acknowledged_is_there_after_reopen() {
    let dir = TempDir::new().expect("tempdir");
    {
        let store = open(dir.path());
        assert_eq!(store.groups().expect("groups"), Vec::<u8>::new());
        let mut a = store.group(3);
        let mut b = store.group(200);
        append(&mut a, 1, 1..=5).await;
        append(&mut b, 1, 1..=2).await;
        append(&mut b, 2, 3..=4).await;
        a.save_vote(&Vote::new(4, 2)).await.expect("vote");
        b.save_committed(Some(log_id(2, 3))).await.expect("committed");
        store.save_applied(200, Some(log_id(2, 3)), &membership()).await.expect("applied");
        // A group with only a checkpoint counts as having state too.
        store.save_applied(9, None, &StoredMembership::default()).await.expect("applied");
        // The lazy writes above ride the next durable commit.
        a.save_vote(&Vote::new(5, 2)).await.expect("vote");
        // No close: dropping the last handle is all a node does on exit.
    }
    let store = open(dir.path());
    assert_eq!(store.groups().expect("groups"), vec![3, 9, 200]);
    let (mut a, mut b) = (store.group(3), store.group(200));
    assert_eq!(log_of(&mut a).await, terms(1, 1..=5));
    assert_eq!(log_of(&mut b).await, [terms(1, 1..=2), terms(2, 3..=4)].concat());
    assert_eq!(a.read_vote().await.expect("vote"), Some(Vote::new(5, 2)));
    assert_eq!(b.read_vote().await.expect("vote"), None);
    assert_eq!(b.read_committed().await.expect("committed"), Some(log_id(2, 3)));
    let state = b.get_log_state().await.expect("state");
    assert_eq!((state.last_purged_log_id, state.last_log_id), (None, Some(log_id(2, 4))));
    assert_eq!(store.read_applied(200).await.expect("applied"), (Some(log_id(2, 3)), membership()));
    assert_eq!(store.read_applied(3).await.expect("applied"), Default::default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_groups_share_fsyncs() {
    const GROUPS: u8 = 64;
    const ROUNDS: u64 = 20;
    let dir = TempDir::new().expect("tempdir");
    let store = open(dir.path());
    let mut tasks = tokio::task::JoinSet::new();
    for g in 0..GROUPS {
        let mut group = store.group(g);
        tasks.spawn(async move {
            for i in 1..=ROUNDS {
                append(&mut group, 1, [i]).await;
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("appending task");
    }
    let stats = store.stats();
    println!("{stats:?}");
    let appends = u64::from(GROUPS) * ROUNDS;
    assert_eq!((stats.appends, stats.entries), (appends, appends));
    // Each group waits for its own append before the next, so only appends
    // of different groups can share a commit: they did.
    assert!(stats.fsyncs < stats.appends, "{stats:?}");
    for g in 0..GROUPS {
        assert_eq!(log_of(&mut store.group(g)).await, terms(1, 1..=ROUNDS));
    }
}

#[tokio::test]
async fn truncate_purge_and_remove_touch_one_group_only() {
    let dir = TempDir::new().expect("tempdir");
    let store = open(dir.path());
    let (mut a, mut b) = (store.group(1), store.group(2));
    append(&mut a, 1, 1..=10).await;
    append(&mut b, 1, 1..=10).await;
    a.save_vote(&Vote::new(1, 1)).await.expect("vote");
    b.save_vote(&Vote::new(3, 2)).await.expect("vote");

    // Truncate a's tail and write a new one in a later term.
    a.truncate(log_id(1, 6)).await.expect("truncate");
    assert_eq!(a.get_log_state().await.expect("state").last_log_id, Some(log_id(1, 5)));
    assert_eq!(log_of(&mut a).await, terms(1, 1..=5));
    append(&mut a, 2, 6..=8).await;
    let a_log = [terms(1, 1..=5), terms(2, 6..=8)].concat();
    assert_eq!(log_of(&mut a).await, a_log);

    // Purge b's head; reads below the purge point find nothing.
    b.purge(log_id(1, 4)).await.expect("purge");
    let state = b.get_log_state().await.expect("state");
    assert_eq!(
        (state.last_purged_log_id, state.last_log_id),
        (Some(log_id(1, 4)), Some(log_id(1, 10)))
    );
    assert_eq!(log_of(&mut b).await, terms(1, 5..=10));
    assert!(b.try_get_log_entries(0..5).await.expect("read").is_empty());
    // Purging again, or behind the purge point, changes nothing.
    b.purge(log_id(1, 4)).await.expect("purge again");
    b.purge(log_id(1, 2)).await.expect("purge behind");
    assert_eq!(b.get_log_state().await.expect("state").last_purged_log_id, Some(log_id(1, 4)));
    assert_eq!(log_of(&mut b).await, terms(1, 5..=10));
    assert_eq!(b.try_get_log_entries(3..7).await.expect("read").len(), 2);

    // Neither touched the other group.
    assert_eq!(log_of(&mut a).await, a_log);
    assert_eq!(a.get_log_state().await.expect("state").last_purged_log_id, None);

    // Truncating everything leaves the purge point as the last log id.
    b.truncate(log_id(1, 5)).await.expect("truncate");
    let state = b.get_log_state().await.expect("state");
    assert_eq!(
        (state.last_purged_log_id, state.last_log_id),
        (Some(log_id(1, 4)), Some(log_id(1, 4)))
    );
    append(&mut b, 3, 5..=6).await;

    // Purging past the end moves the last log id along.
    let mut c = store.group(3);
    append(&mut c, 1, 1..=3).await;
    c.purge(log_id(2, 20)).await.expect("purge");
    let state = c.get_log_state().await.expect("state");
    assert_eq!(
        (state.last_purged_log_id, state.last_log_id),
        (Some(log_id(2, 20)), Some(log_id(2, 20)))
    );
    assert!(log_of(&mut c).await.is_empty());

    // All of it is on disk.
    drop((a, b, c, store));
    let store = open(dir.path());
    let (mut a, mut b, mut c) = (store.group(1), store.group(2), store.group(3));
    assert_eq!(store.groups().expect("groups"), vec![1, 2, 3]);
    assert_eq!(log_of(&mut a).await, a_log);
    assert_eq!(log_of(&mut b).await, terms(3, 5..=6));
    assert_eq!(b.get_log_state().await.expect("state").last_purged_log_id, Some(log_id(1, 4)));
    assert_eq!(c.get_log_state().await.expect("state").last_log_id, Some(log_id(2, 20)));

    // Removing a group forgets it, durably, and only it.
    store.remove_group(1).await.expect("remove");
    assert_eq!(store.groups().expect("groups"), vec![2, 3]);
    assert!(log_of(&mut a).await.is_empty());
    assert_eq!(a.read_vote().await.expect("vote"), None);
    drop((a, b, c, store));
    let store = open(dir.path());
    assert_eq!(store.groups().expect("groups"), vec![2, 3]);
    let (mut a, mut b) = (store.group(1), store.group(2));
    assert!(log_of(&mut a).await.is_empty());
    assert_eq!(a.get_log_state().await.expect("state").last_log_id, None);
    assert_eq!(log_of(&mut b).await, terms(3, 5..=6));
    assert_eq!(b.read_vote().await.expect("vote"), Some(Vote::new(3, 2)));

    // A removed group starts over from nothing.
    append(&mut a, 7, 1..=2).await;
    assert_eq!(log_of(&mut a).await, terms(7, 1..=2));
}

#[tokio::test]
async fn only_one_store_opens_a_directory() {
    let dir = TempDir::new().expect("tempdir");
    let _store = open(dir.path());
    let second = LogStore::open(dir.path(), LogStoreOptions::default());
    assert!(matches!(second, Err(shoal_raft::log_store::Error::Unavailable(_))));
}

/// Set, to the store's directory, in the child process of the SIGKILL test.
const CHILD_DIR: &str = "SHOAL_LOG_STORE_CRASH_DIR";
const CHILD_GROUPS: u8 = 8;

/// What the child reported as done, per group.
#[derive(Default, Debug)]
struct Acked {
    last_index: u64,
    vote_term: u64,
    purged: u64,
}

/// Runs a writer in a child process, kills it with SIGKILL in the middle of
/// its writes, and checks that everything it had seen acknowledged is on
/// disk, and that a checkpoint is never behind a purge queued after it.
#[test]
fn acknowledged_writes_survive_sigkill() {
    let dir = TempDir::new().expect("tempdir");
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "sigkill_child", "--ignored", "--nocapture", "--test-threads=1"])
        .env(CHILD_DIR, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the child");
    let stdout = child.stdout.take().expect("child stdout");
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut acked: BTreeMap<u8, Acked> = BTreeMap::new();
    let mut record = |line: &str| {
        let words: Vec<&str> = line.split_whitespace().collect();
        let [what, group, n] = words[..] else { return };
        let (Ok(group), Ok(n)) = (group.parse::<u8>(), n.parse::<u64>()) else { return };
        let acked = acked.entry(group).or_default();
        match what {
            "ack" => acked.last_index = acked.last_index.max(n),
            "vote" => acked.vote_term = acked.vote_term.max(n),
            "purged" => acked.purged = acked.purged.max(n),
            _ => {}
        }
    };
    // Let it write until some groups have purged a few times, then kill it.
    let mut lines = 0;
    while lines < 3000 {
        let line = rx.recv_timeout(Duration::from_secs(60)).expect("the child writes");
        record(&line);
        lines += 1;
    }
    child.kill().expect("SIGKILL the child");
    child.wait().expect("reap the child");
    // Lines written before the kill still count: they were acknowledged.
    reader.join().expect("reader thread");
    for line in rx.try_iter() {
        record(&line);
    }

    println!("acknowledged before the kill: {acked:?}");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let store = open(dir.path());
        assert_eq!(store.groups().expect("groups"), (0..CHILD_GROUPS).collect::<Vec<_>>());
        for (&g, acked) in &acked {
            let mut group = store.group(g);
            let state = group.get_log_state().await.expect("state");
            let purged = state.last_purged_log_id.map_or(0, |l| l.index);
            let last = state.last_log_id.map_or(0, |l| l.index);
            assert!(purged >= acked.purged, "group {g}: purged {purged}, acked {acked:?}");
            assert!(last >= acked.last_index, "group {g}: last {last}, acked {acked:?}");
            let log = log_of(&mut group).await;
            assert_eq!(log, terms(1, purged + 1..=last), "group {g}: a hole or a lost entry");
            let vote = group.read_vote().await.expect("vote").expect("a vote");
            assert!(
                vote.leader_id.term >= acked.vote_term,
                "group {g}: vote {vote}, acked {acked:?}"
            );
            let (applied, _) = store.read_applied(g).await.expect("applied");
            assert!(
                applied.map_or(0, |l| l.index) >= purged,
                "group {g}: applied {applied:?} behind purge {purged}"
            );
            println!("group {g} after the kill: purged {purged}, last {last}, vote {vote}");
        }
    });
}

/// The child of [`acknowledged_writes_survive_sigkill`]: writes to
/// [`CHILD_GROUPS`] groups until killed, printing what is acknowledged.
#[test]
#[ignore = "runs as the child process of acknowledged_writes_survive_sigkill"]
fn sigkill_child() {
    let Some(dir) = std::env::var_os(CHILD_DIR) else { return };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async move {
        let store = open(Path::new(&dir));
        let mut tasks = tokio::task::JoinSet::new();
        for g in 0..CHILD_GROUPS {
            let store = store.clone();
            tasks.spawn(async move {
                let mut group = store.group(g);
                for i in 1.. {
                    if i % 25 == 1 {
                        group.save_vote(&Vote::new(i, 1)).await.expect("vote");
                        println!("vote {g} {i}");
                    }
                    append(&mut group, 1, [i]).await;
                    println!("ack {g} {i}");
                    if i % 20 == 0 {
                        // What the state machine adapter does: checkpoint,
                        // then (after a snapshot) openraft purges behind it.
                        let applied = Some(log_id(1, i));
                        store.save_applied(g, applied, &membership()).await.expect("applied");
                        group.purge(log_id(1, i - 10)).await.expect("purge");
                        println!("purged {g} {}", i - 10);
                    }
                }
            });
        }
        while tasks.join_next().await.is_some() {}
    });
}
