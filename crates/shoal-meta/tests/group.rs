//! The embedded registry as a group: members added and removed on a live
//! group under load, and its leader killed under load, with a client that
//! must see no error and lose no acknowledged write.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use shoal_registry::{EmbeddedRegistry, Error, EventKind, Registry, Revision, WatchMessage};
use tokio::task::JoinHandle;

use common::Group;

/// Puts `w/00000`, `w/00001`, ... until stopped; answers the keys it put
/// (each acknowledged) or the first error.
fn writer(
    client: EmbeddedRegistry,
    stop: Arc<AtomicBool>,
) -> JoinHandle<Result<Vec<String>, Error>> {
    tokio::spawn(async move {
        let mut done = Vec::new();
        while !stop.load(Ordering::Relaxed) && done.len() < 100_000 {
            let key = format!("w/{:05}", done.len());
            client.put(key.as_bytes(), b"v", None).await?;
            done.push(key);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(done)
    })
}

/// Waits (bounded) until the leader reports `n` voters.
async fn wait_for_voters(client: &EmbeddedRegistry, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(status) = client.status().await
            && status.voters.len() == n
            && status.members.len() == n
        {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "the group did not reach {n} voters");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn check_all_there(client: &EmbeddedRegistry, keys: &[String]) {
    let listing = client.get_prefix(b"w/").await.unwrap();
    let stored: Vec<String> =
        listing.kvs.iter().map(|kv| String::from_utf8(kv.key.clone()).unwrap()).collect();
    for key in keys {
        assert!(stored.contains(key), "acknowledged {key} is lost");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grows_one_three_five_and_back_to_three_under_load() {
    let mut group = Group::start(1).await;
    let spare = [
        group.start_joiner("m1").await,
        group.start_joiner("m2").await,
        group.start_joiner("m3").await,
        group.start_joiner("m4").await,
    ];
    let client = group.client("growth").await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = writer(client.clone(), stop.clone());

    let e = client.add_members(vec![spare[0].clone()]).await.expect_err("even refused");
    assert!(matches!(&e, Error::InvalidInput(m) if m.contains("2 members")), "{e}");

    let members = client.add_members(spare[..2].to_vec()).await.unwrap();
    assert_eq!(members.len(), 3);
    wait_for_voters(&client, 3).await;
    let e = client.add_members(vec![spare[0].clone()]).await.expect_err("already a member");
    assert!(e.to_string().contains("already"), "{e}");

    client.add_members(spare[2..].to_vec()).await.unwrap();
    wait_for_voters(&client, 5).await;

    let e = client.remove_members(vec!["m9".into()]).await.expect_err("unknown member");
    assert!(e.to_string().contains("no member \"m9\""), "{e}");
    let e = client.remove_members(vec!["m0".into()]).await.expect_err("even refused");
    assert!(e.to_string().contains("4 members"), "{e}");
    // The first member (the one that started the group) leaves too.
    client.remove_members(vec!["m0".into(), "m3".into()]).await.unwrap();
    wait_for_voters(&client, 3).await;

    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let keys = load.await.unwrap().expect("the writer saw no error");
    assert!(keys.len() > 50, "the writer made progress ({} writes)", keys.len());
    check_all_there(&client, &keys).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_and_watches_need_the_groups_token() {
    let group = Group::start(1).await;
    let client = group.client("token").await;
    client.put(b"k", b"v", None).await.unwrap();
    for token in [None, Some("wrong-token".to_string())] {
        let options = shoal_registry::EmbeddedOptions {
            endpoints: group.urls(),
            token,
            ..shoal_registry::EmbeddedOptions::default()
        };
        let e = EmbeddedRegistry::connect(options).await.expect_err("refused");
        assert!(matches!(&e, Error::Config { key, .. } if key == "admin_token"), "{e}");
        assert!(e.to_string().contains("same --admin-token"), "{e}");
    }
    // A watch without it is refused too, and nothing changed.
    let url = format!("{}/meta/v1/watch", group.urls()[0]);
    let body =
        shoal_registry::embedded::wire::encode(&shoal_registry::embedded::wire::WatchRequest {
            prefix: b"token/".to_vec(),
            from: Revision(1),
        });
    let answer = reqwest::Client::new().post(url).body(body).send().await.unwrap();
    assert_eq!(answer.status(), reqwest::StatusCode::UNAUTHORIZED);
    assert_eq!(client.get(b"k").await.unwrap().unwrap().value, b"v");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_under_load_shows_no_error_and_loses_nothing() {
    let mut group = Group::start(3).await;
    let client = group.client("kill").await;
    let mut watch = client.watch_prefix(b"w/", Revision(0)).await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let load = writer(client.clone(), stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;

    let leader = group.leader().await;
    group.members[leader].kill();
    let next = group.leader().await;
    assert_ne!(next, leader);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::Relaxed);
    let keys = load.await.unwrap().expect("the writer saw no error");
    check_all_there(&client, &keys).await;

    // The watch went on across the kill: every acknowledged put, in order,
    // each revision once. (A put retried after the kill may have reached the
    // group the first time too: it is then applied twice, at two revisions,
    // as with etcd.)
    let mut seen: Vec<String> = Vec::new();
    let mut last = Revision(0);
    while seen.len() < keys.len() {
        match tokio::time::timeout(Duration::from_secs(10), watch.next()).await {
            Ok(Some(Ok(WatchMessage::Event(e)))) => {
                assert_eq!(e.kind, EventKind::Put);
                assert!(e.revision() > last, "revision {:?} after {last:?}", e.revision());
                last = e.revision();
                let key = String::from_utf8(e.kv.key).unwrap();
                if seen.last() != Some(&key) {
                    seen.push(key);
                }
            }
            other => panic!("the watch ended after {} events: {other:?}", seen.len()),
        }
    }
    assert_eq!(seen, keys);
}
