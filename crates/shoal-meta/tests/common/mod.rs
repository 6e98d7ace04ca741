//! Groups of embedded-registry members in this process, each serving HTTP
//! on its own port on 127.0.0.1, with Raft timings short enough for tests.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use shoal_meta::{Meta, MetaOptions, member};
use shoal_registry::embedded::wire::Member;
use shoal_registry::{EmbeddedOptions, EmbeddedRegistry};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Raft timings for tests: a 20 ms tick, elections after 200–400 ms.
pub fn settings() -> shoal_raft::Settings {
    shoal_raft::Settings {
        tick: Duration::from_millis(20),
        heartbeat_ticks: 2,
        election_ticks: 10,
        leader_wait: Duration::from_secs(2),
        checkpoint_interval: Duration::from_millis(100),
        ..shoal_raft::Settings::default()
    }
}

/// One member and the task serving it.
pub struct Running {
    pub meta: Option<Meta>,
    pub member: Member,
    pub listener_addr: std::net::SocketAddr,
    pub dir: std::path::PathBuf,
    server: Option<JoinHandle<()>>,
}

impl Running {
    /// Stops the member as a crash would: the server goes, the engine stops.
    pub fn kill(&mut self) {
        if let Some(s) = self.server.take() {
            s.abort();
        }
        self.meta = None;
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A group of members.
pub struct Group {
    pub members: Vec<Running>,
    _root: tempfile::TempDir,
}

async fn serve(meta: &Meta, listener: TcpListener) -> JoinHandle<()> {
    let app = meta.router();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    })
}

/// Starts a member on `listener` with `initial` members or `join` URLs.
async fn start_member(
    listener: TcpListener,
    name: &str,
    dir: std::path::PathBuf,
    initial: Vec<Member>,
    join: Vec<String>,
) -> Running {
    let url = format!("http://{}", listener.local_addr().unwrap());
    let mut options = MetaOptions::new(name, &url, dir.clone());
    options.initial = initial;
    options.join = join;
    options.settings = settings();
    options.token = "test-token".into();
    let meta = Meta::start(options).await.expect("member starts");
    let listener_addr = listener.local_addr().unwrap();
    let server = Some(serve(&meta, listener).await);
    Running { member: meta.member().clone(), meta: Some(meta), listener_addr, dir, server }
}

impl Group {
    /// Starts `n` members that form one group from the start.
    pub async fn start(n: usize) -> Group {
        let root = tempfile::tempdir().unwrap();
        let mut listeners = Vec::new();
        for i in 0..n {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}", listener.local_addr().unwrap());
            listeners.push((format!("m{i}"), url, listener));
        }
        let initial: Vec<Member> = listeners.iter().map(|(n, u, _)| member(n, u)).collect();
        let mut members = Vec::new();
        for (name, _, listener) in listeners {
            let dir = root.path().join(&name);
            members.push(start_member(listener, &name, dir, initial.clone(), Vec::new()).await);
        }
        Group { members, _root: root }
    }

    /// Starts one more member, empty, that joins the group at `join`.
    pub async fn start_joiner(&mut self, name: &str) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dir = self._root.path().join(name);
        let running = start_member(listener, name, dir, Vec::new(), self.urls()).await;
        let url = running.member.url.clone();
        self.members.push(running);
        url
    }

    /// Every member's URL.
    pub fn urls(&self) -> Vec<String> {
        self.members.iter().map(|m| m.member.url.clone()).collect()
    }

    /// A client of the group, over every member.
    pub async fn client(&self, namespace: &str) -> EmbeddedRegistry {
        let options = EmbeddedOptions {
            endpoints: self.urls(),
            namespace: namespace.into(),
            retry_interval: Duration::from_millis(100),
            max_retries: 30,
            operation_timeout: Duration::from_secs(3),
            token: Some("test-token".into()),
        };
        EmbeddedRegistry::connect(options).await.expect("the group answers")
    }

    /// The index of the member that leads now, waiting for one (bounded).
    pub async fn leader(&self) -> usize {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let led = self
                .members
                .iter()
                .position(|m| m.meta.as_ref().is_some_and(|meta| meta.is_leader()));
            if let Some(i) = led {
                return i;
            }
            assert!(tokio::time::Instant::now() < deadline, "no leader within 10 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Keeps groups alive as long as the harness that started them.
#[derive(Default)]
pub struct Keep(pub std::sync::Mutex<Vec<Arc<Group>>>);
