//! The Raft network between nodes: one connection per peer node carries the
//! messages of every group, tagged with the bucket.
//!
//! # Shape
//!
//! A node hosts up to 256 groups, and most of them have replicas on the same
//! few peers. Openraft drives each group's replication on its own, so a
//! leader of many groups sends many small RPCs to the same peer at the same
//! moment (every heartbeat tick, every burst of writes). Giving each group its
//! own connection would cost sockets and syscalls per group; sending each
//! RPC as its own request would cost a request per heartbeat per group. So:
//!
//! - [`Network`] (one per node) keeps one peer per peer node: a
//!   queue and a sender task. [`GroupNetworkFactory`] (one per group) hands
//!   openraft clients that put the group's RPCs, tagged with its bucket, on
//!   the peer's queue.
//! - The sender task drains the queue: whatever is pending travels in one
//!   request (at most [`NetworkOptions::max_batch`] RPCs), and at most
//!   [`NetworkOptions::max_batches_in_flight`] requests are outstanding per
//!   peer. While they are, new RPCs pile up and leave together in the next
//!   batch: the busier the link, the larger the batches.
//! - The receiver ([`router`]) runs the RPCs of a batch concurrently, each on
//!   its group, and streams each answer back as soon as its group has
//!   answered, so one slow group (a follower waiting for its fsync) does not
//!   hold up the answers of the others.
//! - Snapshots do not go through the queue: [`GroupNetwork`]'s `full_snapshot`
//!   streams the files of the snapshot directory in one request body, on a
//!   connection of its own, so that megabytes of snapshot do not sit in the
//!   TCP buffers ahead of the heartbeats of 256 groups.
//!
//! # Transport
//!
//! HTTP/2 over cleartext TCP with prior knowledge (h2c): the client speaks
//! HTTP/2 from the first byte, and many requests share one TCP connection as
//! concurrent streams. The node serves its public API and these internal
//! routes on the same port with `axum::serve`, which (with axum's `http2`
//! feature) detects the HTTP/2 preface per connection and otherwise speaks
//! HTTP/1.1, so browsers and HTTP/1.1 clients of the public API keep working
//! (a test checks both on one listener). HTTP/2 gives framing, multiplexing,
//! flow control and streaming bodies for free, and keeps one port, one auth
//! scheme and one set of tools; a hand-made TCP framing would save a few
//! bytes of headers per batch, which batching already makes negligible.
//!
//! Bodies are postcard (compact binary serde), framed as described in the
//! `wire` module. Every message carries a version byte.
//!
//! # Errors
//!
//! - Connection refused or reset: `Unreachable` (openraft backs off), and the
//!   peer's id is published on [`Network::peer_failures`] when its link goes
//!   from working to failed, so the node can call elections at once for the
//!   groups that peer led instead of waiting out the leader lease.
//! - No answer within the RPC's time to live: `Timeout`.
//! - The remote group's own `RaftError`: `RemoteError`.
//! - The peer does not host the group, answers an unexpected HTTP status
//!   (such as 401), or sends what cannot be decoded: `Unreachable`, without a
//!   peer failure event (the peer is up; openraft backs off for this group).
//!
//! # Invariants
//!
//! - Every RPC put on a queue is answered exactly once: by its reply, by the
//!   batch's failure, or by the caller's own timeout (a caller that gave up
//!   has dropped its receiver, and the sender skips its RPC if it has not
//!   left yet).
//! - Answers are matched to calls by position in the batch, never by group:
//!   a batch may hold several RPCs of one group.
//! - A received snapshot lives in a fresh directory under
//!   [`Dispatch::snapshot_dir`]; it is removed when the transfer fails, and
//!   after the group has installed it (a state machine that keeps the files
//!   renames the directory away during its `install_snapshot`).

mod client;
mod server;
mod snapshot;
mod wire;

use std::path::PathBuf;
use std::time::Duration;

pub use client::{GroupNetwork, GroupNetworkFactory, Network, NetworkStats};
pub use server::router;

use crate::Raft;

/// How the network behaves. Every node of a cluster uses the same token.
#[derive(Clone, Debug)]
pub struct NetworkOptions {
    /// The bearer token every internal request carries and the server
    /// checks; requests without it get 401.
    pub token: String,
    /// How long establishing a TCP connection to a peer may take before the
    /// peer counts as unreachable.
    pub connect_timeout: Duration,
    /// The most RPCs one batch request carries.
    pub max_batch: usize,
    /// The most batch requests outstanding to one peer; further RPCs wait in
    /// the queue and leave together in the next batch.
    pub max_batches_in_flight: usize,
    /// The largest batch request body the server accepts, in bytes.
    pub max_request_bytes: usize,
    /// How long a whole snapshot transfer (sending and installing) may take.
    pub snapshot_timeout: Duration,
    /// How long a received snapshot may pause between two chunks of bytes.
    pub snapshot_idle_timeout: Duration,
}

impl Default for NetworkOptions {
    fn default() -> Self {
        NetworkOptions {
            token: String::new(),
            connect_timeout: Duration::from_secs(1),
            max_batch: 512,
            max_batches_in_flight: 4,
            max_request_bytes: 64 << 20,
            snapshot_timeout: Duration::from_secs(600),
            snapshot_idle_timeout: Duration::from_secs(30),
        }
    }
}

/// What the receiving side needs from the node.
pub trait Dispatch: Send + Sync + 'static {
    /// The local group `group`, if this node hosts it.
    fn raft(&self, group: u8) -> Option<Raft>;
    /// Where incoming snapshots are written: the network makes one fresh
    /// subdirectory per snapshot. It should be on the same file system as the
    /// state machine's snapshots, so that keeping one is a rename.
    fn snapshot_dir(&self) -> PathBuf;
}

/// What can go wrong in the network.
#[derive(Clone, Debug, thiserror::Error)]
pub enum Error {
    /// The options cannot work; fix them.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The peer could not be reached or answered with an error status;
    /// retry later.
    #[error("peer unreachable: {0}")]
    Unreachable(String),
    /// The peer does not host the group; retry when the layout settles.
    #[error("group {0} is not hosted by the peer")]
    NoGroup(u8),
    /// No answer in time.
    #[error("timed out")]
    Timeout,
    /// A message could not be encoded or decoded: the peers disagree on the
    /// wire format.
    #[error("invalid data: {0}")]
    InvalidData(String),
    /// A local file could not be read or written.
    #[error("i/o: {0}")]
    Io(String),
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(e.to_string())
    }
}

/// The network's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests;
