//! Tests of the transport against servers without Raft groups; the
//! integration test `tests/network_cluster.rs` runs real groups over it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use openraft::error::RPCError;
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::VoteRequest;
use openraft::{BasicNode, Vote};

use super::*;

const TOKEN: &str = "secret";

/// Hosts no group.
struct Empty;

impl Dispatch for Empty {
    fn raft(&self, _group: u8) -> Option<Raft> {
        None
    }
    fn snapshot_dir(&self) -> PathBuf {
        std::env::temp_dir()
    }
}

fn options() -> NetworkOptions {
    NetworkOptions { token: TOKEN.into(), ..NetworkOptions::default() }
}

/// Serves `app` on a free port of 127.0.0.1 and returns its base URL.
async fn serve(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

async fn client(network: &Network, group: u8, target: u64, addr: &str) -> GroupNetwork {
    network.factory(group).new_client(target, &BasicNode::new(addr)).await
}

fn vote_request() -> VoteRequest<u64> {
    VoteRequest::new(Vote::new(1, 1), None)
}

fn ttl() -> RPCOption {
    RPCOption::new(Duration::from_secs(2))
}

#[tokio::test]
async fn h2c_and_http1_share_the_listener() {
    let public = axum::Router::new().route("/health", axum::routing::get(|| async { "ok" }));
    let addr = serve(public.merge(router(Arc::new(Empty), options()))).await;

    let http1 = reqwest::Client::new();
    let resp = http1.get(format!("{addr}/health")).send().await.expect("http/1.1 get");
    assert_eq!(resp.version(), reqwest::Version::HTTP_11);
    assert_eq!(resp.text().await.expect("body"), "ok");

    let h2 = reqwest::Client::builder().http2_prior_knowledge().build().expect("client");
    let resp = h2.get(format!("{addr}/health")).send().await.expect("h2c get");
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.text().await.expect("body"), "ok");
}

#[tokio::test]
async fn wrong_token_is_refused() {
    let addr = serve(router(Arc::new(Empty), options())).await;
    let h2 = reqwest::Client::builder().http2_prior_knowledge().build().expect("client");
    let url = format!("{addr}/internal/raft/batch");
    let none = h2.post(&url).body("x").send().await.expect("post");
    assert_eq!(none.status(), reqwest::StatusCode::UNAUTHORIZED);
    let wrong = h2.post(&url).bearer_auth("guess").body("x").send().await.expect("post");
    assert_eq!(wrong.status(), reqwest::StatusCode::UNAUTHORIZED);
    let snap = h2
        .post(format!("{addr}/internal/raft/snapshot/3"))
        .bearer_auth("guess")
        .send()
        .await
        .expect("post");
    assert_eq!(snap.status(), reqwest::StatusCode::UNAUTHORIZED);
    // The right token gets past the check (and garbage is refused for what it is).
    let right = h2.post(&url).bearer_auth(TOKEN).body("x").send().await.expect("post");
    assert_eq!(right.status(), reqwest::StatusCode::BAD_REQUEST);

    // Through the network: a 401 is unreachable, and not a peer failure.
    let network =
        Network::new(NetworkOptions { token: "guess".into(), ..options() }).expect("network");
    let mut failures = network.peer_failures();
    let mut c = client(&network, 1, 2, &addr).await;
    let err = c.vote(vote_request(), ttl()).await.expect_err("refused");
    assert!(matches!(err, RPCError::Unreachable(_)), "{err:?}");
    assert!(failures.try_recv().is_err());
}

#[tokio::test]
async fn unknown_group_is_unreachable_for_that_group() {
    let addr = serve(router(Arc::new(Empty), options())).await;
    let network = Network::new(options()).expect("network");
    let mut failures = network.peer_failures();
    let mut c = client(&network, 7, 2, &addr).await;
    let err = c.vote(vote_request(), ttl()).await.expect_err("no group");
    match err {
        RPCError::Unreachable(u) => assert!(u.to_string().contains("group 7"), "{u}"),
        other => panic!("expected unreachable, got {other:?}"),
    }
    assert!(failures.try_recv().is_err(), "the peer is up");
}

#[tokio::test]
async fn concurrent_rpcs_share_requests() {
    let addr = serve(router(Arc::new(Empty), options())).await;
    let network = Network::new(options()).expect("network");
    const RPCS: usize = 512;
    let mut clients = Vec::new();
    for i in 0..RPCS {
        clients.push(client(&network, (i % 256) as u8, 2, &addr).await);
    }
    let calls = clients.iter_mut().map(|c| c.vote(vote_request(), ttl()));
    let results = futures_util::future::join_all(calls).await;
    assert!(results.iter().all(|r| matches!(r, Err(RPCError::Unreachable(_)))));
    let stats = network.stats();
    assert_eq!(stats.rpcs, RPCS as u64);
    assert!(stats.requests <= 8, "{RPCS} RPCs took {} requests", stats.requests);
}

#[tokio::test]
async fn refused_connection_is_a_peer_failure_once() {
    // A port that was free a moment ago: nothing listens there.
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        format!("http://{}", l.local_addr().expect("addr"))
    };
    let network = Network::new(options()).expect("network");
    let mut failures = network.peer_failures();
    let mut c = client(&network, 1, 42, &addr).await;
    for _ in 0..3 {
        let err = c.vote(vote_request(), ttl()).await.expect_err("refused");
        assert!(matches!(err, RPCError::Unreachable(_)), "{err:?}");
    }
    assert_eq!(failures.try_recv().ok(), Some(42));
    assert!(failures.try_recv().is_err(), "one event per failure, not per RPC");
}

#[tokio::test]
async fn silent_peer_times_out() {
    // Accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let network = Network::new(options()).expect("network");
    let mut c = client(&network, 1, 2, &addr).await;
    let err = c
        .vote(vote_request(), RPCOption::new(Duration::from_millis(200)))
        .await
        .expect_err("silent");
    assert!(matches!(err, RPCError::Timeout(_)), "{err:?}");
}

#[test]
fn frames_round_trip_in_pieces() {
    use super::wire::{FrameDecoder, frame};
    let a = frame(&(1u32, "one".to_string())).expect("frame");
    let b = frame(&(2u32, "two".to_string())).expect("frame");
    let all: Vec<u8> = a.iter().chain(b.iter()).copied().collect();
    let mut d = FrameDecoder::default();
    let mut got = Vec::new();
    for byte in all {
        d.push(&[byte]);
        while let Some(v) = d.next::<(u32, String)>().expect("decode") {
            got.push(v);
        }
    }
    assert_eq!(got, vec![(1, "one".to_string()), (2, "two".to_string())]);
    assert!(d.is_empty());
}

#[tokio::test]
async fn cancel_aborts_a_snapshot_transfer() {
    use openraft::error::{ReplicationClosed, StreamingError};
    use openraft::{Snapshot, SnapshotMeta};

    // Accepts connections and never answers, so the transfer cannot end by itself.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("data"), vec![7u8; 1 << 20]).expect("write");
    let snapshot = Snapshot {
        meta: SnapshotMeta::default(),
        snapshot: Box::new(crate::SnapshotFiles { dir: dir.path().to_path_buf() }),
    };
    let network = Network::new(options()).expect("network");
    let mut c = client(&network, 1, 2, &addr).await;
    let cancel = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        ReplicationClosed::new("test")
    };
    let started = tokio::time::Instant::now();
    let err =
        c.full_snapshot(Vote::new(1, 1), snapshot, cancel, ttl()).await.expect_err("cancelled");
    assert!(matches!(err, StreamingError::Closed(_)), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(1));
}
