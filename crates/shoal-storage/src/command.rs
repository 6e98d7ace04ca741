//! The command model: every change to a bucket is a [`Command`] applied at a
//! log index. The bucket's Raft log hands out the indexes, and every replica
//! applies the same commands in the same order. A command therefore carries everything that must be equal on
//! every replica (the creation time is fixed by whoever proposes it).

use serde::{Deserialize, Serialize};
use shoal_types::BaseId;
use shoal_types::api::{BaseInfo, ExecuteResult, Statement};

/// A change to one bucket.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    /// Creates an empty base.
    CreateBase {
        /// Its id.
        id: BaseId,
        /// Its name.
        name: Option<String>,
        /// Its creation time, RFC 3339, fixed by the proposer.
        created_at: String,
    },
    /// Drops a base and its data.
    DropBase {
        /// Its id.
        id: BaseId,
    },
    /// Runs statements against a base.
    Execute {
        /// The base.
        base: BaseId,
        /// The statements, in order.
        statements: Vec<Statement>,
        /// All or nothing (true), or each statement on its own (false).
        transaction: bool,
    },
}

impl Command {
    /// The base this command changes.
    pub fn base(&self) -> BaseId {
        match self {
            Command::CreateBase { id, .. } | Command::DropBase { id } => *id,
            Command::Execute { base, .. } => *base,
        }
    }
}

/// What applying a command produced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Output {
    /// The base was created.
    Created {
        /// The new base.
        base: BaseInfo,
    },
    /// The base was dropped.
    Dropped,
    /// The statements ran; one result each.
    Executed {
        /// One result per statement.
        results: Vec<ExecuteResult>,
    },
    /// The command had been applied before (a replay): nothing changed.
    Replayed,
    /// The command's idempotency key was answered before: nothing changed,
    /// and this is the first answer.
    Repeated {
        /// The log index of the first write with the key.
        index: u64,
        /// Its output.
        output: Box<Output>,
    },
}

/// A command as proposed to a bucket's log, with the client's idempotency
/// key if it gave one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Proposal {
    /// The client's idempotency key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The command.
    pub command: Command,
}
