//! Shoal's multi-Raft: every bucket is a Raft group (openraft 0.9) whose
//! members are the bucket's replicas, and one node hosts the groups of all
//! the buckets it holds.
//!
//! The parts, each in its module:
//! - [`log_store`]: one log store per node for every group, with group
//!   commit: concurrent appends of many groups share one fsync;
//! - [`network`]: one connection per peer node carries every group's
//!   messages, tagged with the bucket;
//! - the state machine adapter, which turns a [`StateMachine`] (the
//!   caller's: shoal-node's buckets of SQLite bases) into openraft's.
//!
//! This crate knows nothing of SQL or bases: commands and responses are
//! bytes, snapshots are directories of files ([`SnapshotFiles`]).

pub use openraft::BasicNode;

pub mod engine;
pub mod log_store;
pub mod multi;
pub mod network;
pub mod state_machine;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use shoal_types::NodeId;

/// A node's id inside Raft: a stable 64-bit hash of its [`NodeId`].
pub type RaftNodeId = u64;

/// The Raft id of a node: FNV-1a of its name, stable across versions.
pub fn raft_id(node: &NodeId) -> RaftNodeId {
    node.0
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// A command for a group's state machine, opaque here.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request(pub Vec<u8>);

/// A state machine's answer to a command, opaque here.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response(pub Vec<u8>);

/// A snapshot: a directory of files that the state machine wrote and can
/// restore from. The directory belongs to whoever holds this value.
#[derive(Debug)]
pub struct SnapshotFiles {
    /// The directory.
    pub dir: PathBuf,
}

openraft::declare_raft_types!(
    /// Shoal's Raft types.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = RaftNodeId,
        Node = openraft::BasicNode,
        SnapshotData = SnapshotFiles,
);

/// One Raft group.
pub type Raft = openraft::Raft<TypeConfig>;

/// A group's state machine, as the caller implements it.
///
/// `apply` must be deterministic, and idempotent for an index it has applied
/// before: after a restart, the group replays entries from its last
/// checkpoint, which may be older than what the state machine holds.
///
/// `apply` need not be durable on its own (the log is): the group calls
/// [`StateMachine::sync`] before it records a checkpoint, and so before the
/// log may drop the entries applied so far.
pub trait StateMachine: Send + Sync + 'static {
    /// Applies the command at log `index` and returns the answer.
    fn apply(&self, index: u64, command: &[u8]) -> Vec<u8>;
    /// Makes everything applied so far durable.
    fn sync(&self) -> std::io::Result<()>;
    /// Writes a consistent copy of the whole state into `dir` (which exists
    /// and is empty).
    fn snapshot(&self, dir: &Path) -> std::io::Result<()>;
    /// Replaces the whole state with the copy in `dir`.
    fn restore(&self, dir: &Path) -> std::io::Result<()>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raft_ids_are_stable() {
        assert_eq!(raft_id(&NodeId("node-01".into())), raft_id(&NodeId("node-01".into())));
        assert_ne!(raft_id(&NodeId("node-01".into())), raft_id(&NodeId("node-02".into())));
        // Pinned: a change would orphan every group's membership.
        assert_eq!(raft_id(&NodeId("".into())), 0xcbf2_9ce4_8422_2325);
    }
}
