//! Transactions as `multi`s: a branch planned against a snapshot, with a
//! version check of everything it read, and sent in one request.

use shoal_types::LeaseId;
use zookeeper_client as zk;

use super::REV_NODE;
use super::layout::{Snapshot, key_path};
use crate::error::{Error, Result};
use crate::kv::{Compare, TxnOp, TxnOpResponse};

/// One op of a planned `multi`.
#[derive(Clone, Debug)]
pub(super) enum Write {
    /// The znode at `path` still has data version `version`.
    Check {
        /// The znode.
        path: String,
        /// Its data version when read.
        version: i32,
    },
    /// Creates the znode at `path` (ephemeral: owned by the sending session).
    Create {
        /// The znode.
        path: String,
        /// Its data.
        value: Vec<u8>,
        /// Whether it dies with the session that sends the `multi`.
        ephemeral: bool,
    },
    /// Sets the data of the znode at `path`, if its version is `version`.
    Set {
        /// The znode.
        path: String,
        /// The new data.
        value: Vec<u8>,
        /// Its data version when read.
        version: i32,
    },
    /// Deletes the znode at `path`, if its version is `version`.
    Delete {
        /// The znode.
        path: String,
        /// Its data version when read.
        version: i32,
    },
    /// The marker, last: its new `mzxid` is the transaction's revision.
    /// With a version, the `multi` fails if anything was written since the
    /// read (the guard for "still absent").
    Marker {
        /// The marker's data version when read, if it is checked.
        version: Option<i32>,
    },
}

/// What running one branch against a snapshot takes.
pub(super) struct Plan {
    pub(super) responses: Vec<TxnOpResponse>,
    /// `None` when the branch changes nothing.
    pub(super) writes: Option<Vec<Write>>,
    /// The one lease the branch's puts attach keys to.
    pub(super) lease: Option<LeaseId>,
}

pub(super) fn plan_branch(
    compare: &[Compare],
    branch: &[TxnOp],
    snapshot: &Snapshot,
) -> Result<Plan> {
    let mut responses = Vec::new();
    let mut writes = Vec::new();
    let mut lease: Option<LeaseId> = None;
    // Whether the outcome rests on a key being absent (or on which keys a
    // prefix holds): then nothing may be created meanwhile.
    let mut guard_marker = false;
    let mut changes = false;
    let check = |writes: &mut Vec<Write>, guard: &mut bool, key: &[u8]| -> Result<()> {
        match snapshot.keys.get(key) {
            Some(z) => writes.push(Write::Check { path: key_path(key)?, version: z.version }),
            None => *guard = true,
        }
        Ok(())
    };
    for c in compare {
        check(&mut writes, &mut guard_marker, &c.key)?;
    }
    for (i, op) in branch.iter().enumerate() {
        match op {
            TxnOp::Get { key } => {
                let written_before = branch[..i].iter().any(|o| match o {
                    TxnOp::Put { key: k, .. } | TxnOp::Delete { key: k } => k == key,
                    TxnOp::DeletePrefix { prefix } => key.starts_with(prefix),
                    TxnOp::Get { .. } => false,
                });
                if written_before {
                    // The answer would be the key after the write, whose
                    // revision is only known once the `multi` is applied.
                    return Err(Error::InvalidInput(
                        "ZooKeeper: a transaction cannot read a key it wrote earlier in the \
                         same branch"
                            .into(),
                    ));
                }
                check(&mut writes, &mut guard_marker, key)?;
                responses.push(TxnOpResponse::Get(snapshot.get(key).cloned()));
            }
            TxnOp::Put { key, value, lease: put_lease } => {
                if let Some(l) = put_lease {
                    match lease {
                        Some(other) if other != *l => {
                            return Err(Error::InvalidInput(
                                "ZooKeeper: one transaction can attach keys to at most one lease"
                                    .into(),
                            ));
                        }
                        _ => lease = Some(*l),
                    }
                }
                let path = key_path(key)?;
                let ephemeral = put_lease.is_some();
                match snapshot.keys.get(key.as_slice()) {
                    Some(z) if z.kv.lease == *put_lease => {
                        writes.push(Write::Set { path, value: value.clone(), version: z.version })
                    }
                    Some(z) => {
                        writes.push(Write::Delete { path: path.clone(), version: z.version });
                        writes.push(Write::Create { path, value: value.clone(), ephemeral });
                    }
                    None => writes.push(Write::Create { path, value: value.clone(), ephemeral }),
                }
                changes = true;
                responses.push(TxnOpResponse::Put);
            }
            TxnOp::Delete { key } => match snapshot.keys.get(key.as_slice()) {
                Some(z) => {
                    writes.push(Write::Delete { path: key_path(key)?, version: z.version });
                    changes = true;
                    responses.push(TxnOpResponse::Delete(1));
                }
                None => {
                    guard_marker = true;
                    responses.push(TxnOpResponse::Delete(0));
                }
            },
            TxnOp::DeletePrefix { prefix } => {
                guard_marker = true;
                let mut count = 0u64;
                for z in snapshot.under(prefix) {
                    writes.push(Write::Delete { path: key_path(&z.kv.key)?, version: z.version });
                    count += 1;
                }
                changes |= count > 0;
                responses.push(TxnOpResponse::Delete(count));
            }
        }
    }
    if !changes {
        return Ok(Plan { responses, writes: None, lease: None });
    }
    writes.push(Write::Marker { version: guard_marker.then_some(snapshot.marker_version) });
    Ok(Plan { responses, writes: Some(writes), lease })
}

/// Sends a planned `multi`; returns the zxid it was applied at.
pub(super) async fn send_multi(
    client: zk::Client,
    writes: &[Write],
) -> Result<i64, zk::MultiWriteError> {
    let persistent = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
    let ephemeral = zk::CreateMode::Ephemeral.with_acls(zk::Acls::anyone_all());
    let mut multi = client.new_multi_writer();
    for write in writes {
        match write {
            Write::Check { path, version } => multi.add_check_version(path, *version)?,
            Write::Create { path, value, ephemeral: e } => {
                multi.add_create(path, value, if *e { &ephemeral } else { &persistent })?
            }
            Write::Set { path, value, version } => {
                multi.add_set_data(path, value, Some(*version))?
            }
            Write::Delete { path, version } => multi.add_delete(path, Some(*version))?,
            Write::Marker { version } => multi.add_set_data(REV_NODE, &[], *version)?,
        }
    }
    let results = multi.commit().await?;
    match results.last() {
        Some(zk::MultiWriteResult::SetData { stat }) => Ok(stat.mzxid),
        other => Err(zk::MultiWriteError::RequestFailed {
            source: zk::Error::UnexpectedError(format!("multi answered {other:?} for the marker")),
        }),
    }
}
