//! The data model of the contract: key-values, watch events and transactions.
//!
//! It follows etcd's v3 model so that the etcd backend is a thin translation:
//! every change bumps one cluster-wide revision; a key remembers the revision
//! that created it (`create_revision`, reset when it is deleted and put
//! again), the revision of its last change (`mod_revision`) and how many times
//! it was put since it was created (`version`). A missing key compares as
//! version 0, create_revision 0 and mod_revision 0; comparing the value of a
//! missing key is always false.

use serde::{Deserialize, Serialize};
use shoal_types::{LeaseId, Revision};

/// One key with its value and its history counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    /// The key, relative to the registry's namespace.
    pub key: Vec<u8>,
    /// The value; empty in a delete event.
    pub value: Vec<u8>,
    /// The revision that created the key (0 in a delete event).
    pub create_revision: Revision,
    /// The revision of the key's last change; in a delete event, the revision
    /// of the deletion.
    pub mod_revision: Revision,
    /// How many times the key was put since it was created (0 in a delete event).
    pub version: i64,
    /// The lease the key is attached to, if any.
    pub lease: Option<LeaseId>,
}

/// The keys under a prefix and the revision they were read at.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listing {
    /// The keys, in byte order.
    pub kvs: Vec<KeyValue>,
    /// The revision of the read: watching from `revision + 1` continues
    /// exactly where this listing ends.
    pub revision: Revision,
}

/// What happened to a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    /// The key was created or changed.
    Put,
    /// The key was deleted, explicitly or because its lease ended.
    Delete,
}

/// One change seen by a watch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Put or delete.
    pub kind: EventKind,
    /// The key after the change. For a delete: the key, an empty value and
    /// `mod_revision` set to the revision of the deletion.
    pub kv: KeyValue,
}

impl Event {
    /// The revision of this change.
    pub fn revision(&self) -> Revision {
        self.kv.mod_revision
    }
}

/// What a watch delivers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WatchMessage {
    /// The next change, in revision order; changes made by one transaction
    /// share a revision and arrive in the order of the transaction's ops.
    Event(Event),
    /// The history the watch asked for is gone (compacted). Nothing more
    /// comes on this watch: re-read the prefix with `get_prefix` and watch
    /// again from its revision + 1.
    Resync {
        /// The oldest revision that can still be watched.
        compact_revision: Revision,
    },
}

/// The comparison of a transaction guard.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareOp {
    /// The key's field equals the operand.
    Equal,
    /// The key's field differs from the operand.
    NotEqual,
    /// The key's field is greater than the operand.
    Greater,
    /// The key's field is less than the operand.
    Less,
}

/// Which field of a key a guard looks at, with the operand.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareTarget {
    /// The value (always false when the key is missing).
    Value(Vec<u8>),
    /// The version (0 when the key is missing).
    Version(i64),
    /// The create revision (0 when the key is missing).
    CreateRevision(Revision),
    /// The modification revision (0 when the key is missing).
    ModRevision(Revision),
}

/// One guard of a transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    /// The key to look at.
    pub key: Vec<u8>,
    /// How to compare.
    pub op: CompareOp,
    /// What to compare with.
    pub target: CompareTarget,
}

impl Compare {
    /// Guard on the value of `key`.
    pub fn value(key: impl Into<Vec<u8>>, op: CompareOp, value: impl Into<Vec<u8>>) -> Self {
        Self { key: key.into(), op, target: CompareTarget::Value(value.into()) }
    }

    /// Guard on the version of `key`.
    pub fn version(key: impl Into<Vec<u8>>, op: CompareOp, version: i64) -> Self {
        Self { key: key.into(), op, target: CompareTarget::Version(version) }
    }

    /// Guard on the create revision of `key`; `Equal` with `Revision(0)`
    /// means "the key does not exist".
    pub fn create_revision(key: impl Into<Vec<u8>>, op: CompareOp, revision: Revision) -> Self {
        Self { key: key.into(), op, target: CompareTarget::CreateRevision(revision) }
    }

    /// Guard on the modification revision of `key`.
    pub fn mod_revision(key: impl Into<Vec<u8>>, op: CompareOp, revision: Revision) -> Self {
        Self { key: key.into(), op, target: CompareTarget::ModRevision(revision) }
    }

    /// Evaluates the guard against the current state of its key.
    pub(crate) fn holds(&self, kv: Option<&KeyValue>) -> bool {
        use std::cmp::Ordering;
        let ordering = match (&self.target, kv) {
            (CompareTarget::Value(_), None) => return false,
            (CompareTarget::Value(v), Some(kv)) => kv.value.as_slice().cmp(v.as_slice()),
            (CompareTarget::Version(v), kv) => kv.map_or(0, |kv| kv.version).cmp(v),
            (CompareTarget::CreateRevision(r), kv) => {
                kv.map_or(Revision(0), |kv| kv.create_revision).cmp(r)
            }
            (CompareTarget::ModRevision(r), kv) => {
                kv.map_or(Revision(0), |kv| kv.mod_revision).cmp(r)
            }
        };
        match self.op {
            CompareOp::Equal => ordering == Ordering::Equal,
            CompareOp::NotEqual => ordering != Ordering::Equal,
            CompareOp::Greater => ordering == Ordering::Greater,
            CompareOp::Less => ordering == Ordering::Less,
        }
    }
}

/// One operation of a transaction branch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOp {
    /// Reads one key.
    Get {
        /// The key.
        key: Vec<u8>,
    },
    /// Writes one key, optionally attached to a lease.
    Put {
        /// The key.
        key: Vec<u8>,
        /// The new value.
        value: Vec<u8>,
        /// The lease to attach the key to; `None` detaches it from any lease.
        lease: Option<LeaseId>,
    },
    /// Deletes one key.
    Delete {
        /// The key.
        key: Vec<u8>,
    },
    /// Deletes every key under a prefix.
    DeletePrefix {
        /// The prefix.
        prefix: Vec<u8>,
    },
}

impl TxnOp {
    /// A read of `key`.
    pub fn get(key: impl Into<Vec<u8>>) -> Self {
        TxnOp::Get { key: key.into() }
    }

    /// A write of `key`, attached to `lease` if given.
    pub fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>, lease: Option<LeaseId>) -> Self {
        TxnOp::Put { key: key.into(), value: value.into(), lease }
    }

    /// A deletion of `key`.
    pub fn delete(key: impl Into<Vec<u8>>) -> Self {
        TxnOp::Delete { key: key.into() }
    }

    /// A deletion of every key under `prefix`.
    pub fn delete_prefix(prefix: impl Into<Vec<u8>>) -> Self {
        TxnOp::DeletePrefix { prefix: prefix.into() }
    }
}

/// A transaction: if every guard holds, the `success` ops run, else the
/// `failure` ops; atomically, at one revision. Within one branch a key may be
/// written at most once (etcd's rule).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Txn {
    /// The guards; all must hold (an empty list holds).
    pub compare: Vec<Compare>,
    /// The ops run when every guard holds.
    pub success: Vec<TxnOp>,
    /// The ops run otherwise.
    pub failure: Vec<TxnOp>,
}

impl Txn {
    /// An empty transaction.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the guards.
    pub fn when(mut self, compare: impl IntoIterator<Item = Compare>) -> Self {
        self.compare = compare.into_iter().collect();
        self
    }

    /// Sets the ops run when every guard holds.
    pub fn and_then(mut self, ops: impl IntoIterator<Item = TxnOp>) -> Self {
        self.success = ops.into_iter().collect();
        self
    }

    /// Sets the ops run when a guard fails.
    pub fn or_else(mut self, ops: impl IntoIterator<Item = TxnOp>) -> Self {
        self.failure = ops.into_iter().collect();
        self
    }
}

/// The result of one transaction op.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOpResponse {
    /// The key read by a `Get`, if it exists.
    Get(Option<KeyValue>),
    /// A `Put` was applied.
    Put,
    /// How many keys a `Delete` or `DeletePrefix` removed.
    Delete(u64),
}

/// The result of a transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnResponse {
    /// Whether every guard held (so the `success` branch ran).
    pub succeeded: bool,
    /// The registry's revision after the transaction.
    pub revision: Revision,
    /// One result per op of the branch that ran, in order.
    pub responses: Vec<TxnOpResponse>,
}

/// The first key after every key that starts with `prefix` (etcd's range
/// end), or `None` when no such key exists (prefix empty or all 0xff).
pub(crate) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(value: &str, version: i64, create: i64, modr: i64) -> KeyValue {
        KeyValue {
            key: b"k".to_vec(),
            value: value.as_bytes().to_vec(),
            create_revision: Revision(create),
            mod_revision: Revision(modr),
            version,
            lease: None,
        }
    }

    #[test]
    fn missing_keys_compare_as_zero_and_never_by_value() {
        assert!(Compare::create_revision("k", CompareOp::Equal, Revision(0)).holds(None));
        assert!(Compare::version("k", CompareOp::Equal, 0).holds(None));
        assert!(!Compare::value("k", CompareOp::Equal, "").holds(None));
        assert!(!Compare::value("k", CompareOp::NotEqual, "x").holds(None));
    }

    #[test]
    fn compares_present_keys() {
        let k = kv("b", 2, 3, 7);
        assert!(Compare::value("k", CompareOp::Equal, "b").holds(Some(&k)));
        assert!(Compare::value("k", CompareOp::Greater, "a").holds(Some(&k)));
        assert!(Compare::version("k", CompareOp::Less, 3).holds(Some(&k)));
        assert!(Compare::mod_revision("k", CompareOp::Equal, Revision(7)).holds(Some(&k)));
        assert!(Compare::create_revision("k", CompareOp::NotEqual, Revision(7)).holds(Some(&k)));
    }

    #[test]
    fn prefix_end_increments_the_last_byte() {
        assert_eq!(prefix_end(b"a/"), Some(b"a0".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
        assert_eq!(prefix_end(b""), None);
    }
}
