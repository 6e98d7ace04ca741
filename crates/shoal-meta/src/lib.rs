//! Shoal's embedded registry: the registry contract (key-values with
//! revisions, leases, transactions, watches) served by `shoal meta`
//! members and replicated as one Raft group on Shoal's own engine, so a
//! cluster needs no external coordination service.
//!
//! # Shape
//!
//! ```text
//!  client (shoal://) ──HTTP──> any member ──(not the leader: pass on once)──> leader
//!                                  │                                         │ read_index / propose
//!                                  │ watches: own copy of the store           ▼
//!                                  └────────────── every member applies the log to its Store
//! ```
//!
//! - Each member runs a [`shoal_raft::MultiRaft`] that hosts one group (0)
//!   whose state machine (module `machine`) is a registry [`Store`] plus the
//!   member list. Writes are logged commands; reads are served by the leader
//!   after a read index (linearizable); watches are served by any member
//!   from its own store.
//! - Time stays out of the log. Lease deadlines live on the leader
//!   (module `duties`): a keep-alive renews one there, and a passed deadline is
//!   logged as an expiry. A new leader gives every lease its full TTL again.
//! - Membership is replicated state too: `AddMembers` and `RemoveMember`
//!   log a new member list (refused if it would be even), and every member
//!   points the engine at it (`set_target`), whose leader moves the voters
//!   there one joint-consensus step at a time (learner, catch-up, promote).
//!
//! [`Store`]: shoal_registry::store::Store

mod duties;
mod machine;
mod server;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shoal_raft::{MultiRaft, RaftNodeId};
use shoal_registry::embedded::wire::Member;
use shoal_types::NodeId;

use crate::duties::Lessor;
use crate::machine::{Machine, Shared, State};

/// How one member runs.
#[derive(Clone, Debug)]
pub struct MetaOptions {
    /// This member's name, unique in the group.
    pub name: String,
    /// The URL members and clients reach this member at.
    pub url: String,
    /// Where the log and the state live.
    pub dir: PathBuf,
    /// The members a new group starts with (this one among them); each of
    /// them must be started with the same list. Empty with `join`.
    pub initial: Vec<Member>,
    /// Start empty and wait to be added (`shoal meta add`) to the group of
    /// the members at these URLs.
    pub join: Vec<String>,
    /// The bearer token of member-to-member traffic, and of every call and
    /// watch (clients send it too); empty: none asked.
    pub token: String,
    /// Raft timings.
    pub settings: shoal_raft::Settings,
}

impl MetaOptions {
    /// Options for a member `name` at `url` that starts a group of its own.
    pub fn new(name: &str, url: &str, dir: PathBuf) -> MetaOptions {
        MetaOptions {
            name: name.to_string(),
            url: url.to_string(),
            dir,
            initial: vec![member(name, url)],
            join: Vec::new(),
            token: String::new(),
            settings: shoal_raft::Settings::default(),
        }
    }
}

/// The group member of `name` at `url`.
pub fn member(name: &str, url: &str) -> Member {
    Member { name: name.to_string(), id: raft_id(name), url: url.trim_end_matches('/').to_string() }
}

/// A member's Raft id: derived from its name.
pub fn raft_id(name: &str) -> RaftNodeId {
    shoal_raft::raft_id(&NodeId(format!("meta:{name}")))
}

/// Why a member could not start.
#[derive(Debug)]
pub struct StartError(pub String);

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartError {}

/// One running member. Dropping it stops the engine.
pub struct Meta {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) me: Member,
    pub(crate) raft: MultiRaft<Machine>,
    pub(crate) state: Shared,
    pub(crate) lessor: Mutex<Lessor>,
    pub(crate) http: reqwest::Client,
    /// Where members are, as far as this member knows (the initial list,
    /// then the group's).
    pub(crate) addresses: Mutex<HashMap<RaftNodeId, String>>,
    pub(crate) options: MetaOptions,
    /// Set when the member stops: its watch streams end, so clients move on.
    pub(crate) closed: tokio::sync::watch::Sender<bool>,
}

/// The group's id on the engine.
pub(crate) const GROUP: u8 = 0;

impl Meta {
    /// Opens the member's state in `options.dir` (creating it), starts the
    /// engine, and starts or joins the group. Must run inside a tokio
    /// runtime. Serve [`Meta::router`] at `options.url`.
    pub async fn start(options: MetaOptions) -> Result<Meta, StartError> {
        let fail = |what: &str, e: &dyn std::fmt::Display| StartError(format!("{what}: {e}"));
        if options.name.trim().is_empty() {
            return Err(StartError("a member needs a name".into()));
        }
        if options.join.is_empty() && !options.initial.iter().any(|m| m.name == options.name) {
            return Err(StartError(format!(
                "the initial members do not include this member ({})",
                options.name
            )));
        }
        std::fs::create_dir_all(&options.dir)
            .map_err(|e| fail(&format!("cannot create {}", options.dir.display()), &e))?;
        let (state, _) =
            State::load(&options.dir).map_err(|e| fail("cannot read the state", &e))?;
        let state: Shared = Arc::new(Mutex::new(state));
        let me = member(&options.name, &options.url);
        let mut engine = shoal_raft::Options::new(me.id, &options.dir);
        engine.settings = options.settings.clone();
        engine.token = options.token.clone();
        let factory = {
            let (state, dir) = (state.clone(), options.dir.clone());
            Arc::new(move |_group: u8| Machine::new(state.clone(), &dir))
        };
        let raft =
            MultiRaft::start(engine, factory).map_err(|e| fail("cannot open the log", &e))?;
        raft.open(GROUP).await.map_err(|e| fail("cannot open the group", &e))?;
        if options.join.is_empty() {
            let voters = options.initial.iter().map(|m| m.id).collect();
            raft.bootstrap(GROUP, voters).await.map_err(|e| fail("cannot start the group", &e))?;
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .build()
            .map_err(|e| fail("cannot build an HTTP client", &e))?;
        let inner = Arc::new(Inner {
            me,
            raft,
            state,
            lessor: Mutex::new(Lessor::default()),
            http,
            addresses: Mutex::new(HashMap::new()),
            options,
            closed: tokio::sync::watch::Sender::new(false),
        });
        inner.learn(&inner.options.initial.clone());
        tokio::spawn(duties::run(Arc::downgrade(&inner)));
        Ok(Meta { inner })
    }

    /// The routes to serve: the registry's and the engine's peer routes.
    pub fn router(&self) -> axum::Router {
        server::router(self.inner.clone()).merge(self.inner.raft.transport().router())
    }

    /// This member.
    pub fn member(&self) -> &Member {
        &self.inner.me
    }

    /// Whether this member leads the group now.
    pub fn is_leader(&self) -> bool {
        self.inner.raft.is_leader(GROUP)
    }

    /// A clean stop: hands leadership to another caught-up member (waiting
    /// at most `within`), so clients see no election gap.
    pub async fn leave(&self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        while self.inner.raft.leave().await > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Meta {
    /// Stops the member: its watch streams end and its engine stops (calls
    /// still arriving on open connections fail as unavailable).
    fn drop(&mut self) {
        self.inner.closed.send_replace(true);
        self.inner.raft.shutdown();
    }
}

impl Inner {
    /// Tells the engine where these members are.
    pub(crate) fn learn(&self, members: &[Member]) {
        let mut addresses = self.addresses.lock().unwrap_or_else(|e| e.into_inner());
        for m in members {
            if m.id != self.me.id && addresses.get(&m.id) != Some(&m.url) {
                addresses.insert(m.id, m.url.clone());
                self.raft.transport().set_address(m.id, m.url.clone());
            }
        }
    }

    /// Where member `id` is, if known.
    pub(crate) fn address(&self, id: RaftNodeId) -> Option<String> {
        if id == self.me.id {
            return Some(self.me.url.clone());
        }
        self.addresses.lock().unwrap_or_else(|e| e.into_inner()).get(&id).cloned()
    }
}
