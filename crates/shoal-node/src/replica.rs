//! A bucket as a Raft group's state machine: the commands of the group's
//! log applied to the bucket's bases through the store.
//!
//! Commands travel in the log in their binary form ([`Proposal::encode`]);
//! answers go straight to the proposer (same process), unencoded. An error
//! that every replica hits the same way (bad SQL, a constraint, an
//! unreadable command) is an answer like any other. An error that could
//! differ between replicas (I/O, corrupt data) must not be answered and
//! skipped, or replicas would diverge: it stops the apply.

use std::path::Path;
use std::sync::Arc;

use shoal_storage::{Command, Output, Proposal, Store};
use shoal_types::{BucketId, Error};

/// One bucket's state machine.
pub struct BucketStateMachine {
    store: Arc<Store>,
    bucket: BucketId,
}

impl BucketStateMachine {
    /// The state machine of `bucket` in `store`.
    pub fn new(store: Arc<Store>, bucket: BucketId) -> Self {
        BucketStateMachine { store, bucket }
    }
}

/// Encodes a command, with the client's idempotency key and the key of the
/// write it must follow (if any), for the log.
pub fn encode(command: Command, key: Option<&str>, after: Option<&str>) -> Vec<u8> {
    Proposal { key: key.map(String::from), after: after.map(String::from), command }.encode()
}

fn io(e: Error) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

impl shoal_raft::StateMachine for BucketStateMachine {
    type Answer = Result<Output, Error>;

    fn apply(&mut self, index: u64, command: &[u8]) -> Result<Output, Error> {
        let result = match Proposal::decode(command) {
            Ok(Proposal { command: c, .. }) if c.base().bucket() != self.bucket => {
                Err(Error::InvalidInput(format!(
                    "a command for bucket {} in bucket {}",
                    c.base().bucket(),
                    self.bucket
                )))
            }
            Ok(Proposal { command: c, key, after }) => {
                self.store.apply_after(index, c, key.as_deref(), after.as_deref())
            }
            // The same bytes are unreadable on every replica: an answer, not a stop.
            Err(e) => Err(Error::InvalidInput(format!("log index {index}: {e}"))),
        };
        match result {
            Err(e) if !e.is_deterministic() => panic!(
                "bucket {} cannot apply log index {index} ({e}); stopping rather than diverging",
                self.bucket
            ),
            other => other,
        }
    }

    fn sync(&mut self) -> std::io::Result<()> {
        self.store.sync_bucket(self.bucket).map_err(io)
    }

    fn snapshot(&mut self, dir: &Path) -> std::io::Result<()> {
        self.store.snapshot_bucket(self.bucket, dir).map_err(io)
    }

    fn restore(&mut self, dir: &Path) -> std::io::Result<()> {
        self.store.restore_bucket(self.bucket, dir).map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_raft::StateMachine as _;
    use shoal_types::BaseId;

    #[test]
    fn commands_are_applied_and_answered() {
        let store = Arc::new(Store::open(None, Default::default()).expect("store"));
        let id = BaseId::random();
        let mut sm = BucketStateMachine::new(store, id.bucket());
        let create =
            || Command::CreateBase { id, name: None, created_at: "2024-01-01T00:00:00Z".into() };
        assert!(matches!(sm.apply(1, &encode(create(), None, None)), Ok(Output::Created { .. })));
        // The same command again is a deterministic error, answered.
        assert!(matches!(sm.apply(2, &encode(create(), None, None)), Err(Error::Conflict(_))));
        // A replay of an applied index changes nothing.
        assert_eq!(sm.apply(1, &encode(create(), None, None)).expect("replay"), Output::Replayed);
        // A command for another bucket is refused.
        let other = BaseId(uuid_in_other_bucket(id));
        assert!(matches!(
            sm.apply(3, &encode(Command::DropBase { id: other }, None, None)),
            Err(Error::InvalidInput(_))
        ));
        assert!(matches!(sm.apply(4, b"not a command"), Err(Error::InvalidInput(_))));
    }

    fn uuid_in_other_bucket(id: BaseId) -> uuid::Uuid {
        let mut bytes = *id.0.as_bytes();
        bytes[0] = bytes[0].wrapping_add(1);
        uuid::Uuid::from_bytes(bytes)
    }
}
