//! A bucket as a Raft group's state machine: the commands of the group's
//! log applied to the bucket's bases through the store.
//!
//! Commands and answers travel as JSON: a [`Command`] in, a
//! `Result<Output, ErrorBody>` out. An error that every replica hits the
//! same way (bad SQL, a constraint) is an answer like any other. An error
//! that could differ between replicas (I/O, corrupt data) must not be
//! answered and skipped, or replicas would diverge: it stops the apply.

use std::path::Path;
use std::sync::Arc;

use shoal_storage::{Command, Output, Proposal, Store};
use shoal_types::{BucketId, Error, ErrorBody};

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

/// Encodes a command, with the client's idempotency key, for the log.
pub fn encode(command: &Command, key: Option<&str>) -> Vec<u8> {
    let proposal = Proposal { key: key.map(String::from), command: command.clone() };
    serde_json::to_vec(&proposal).expect("a proposal always serializes")
}

/// Decodes a state machine's answer.
pub fn decode(answer: &[u8]) -> Result<Output, Error> {
    match serde_json::from_slice::<Result<Output, ErrorBody>>(answer) {
        Ok(Ok(output)) => Ok(output),
        Ok(Err(body)) => Err(body.into()),
        Err(e) => Err(Error::Internal(format!("unreadable answer from the state machine: {e}"))),
    }
}

impl shoal_raft::StateMachine for BucketStateMachine {
    fn apply(&self, index: u64, command: &[u8]) -> Vec<u8> {
        let result = match serde_json::from_slice::<Proposal>(command) {
            Ok(Proposal { command: c, .. }) if c.base().bucket() != self.bucket => {
                Err(Error::InvalidInput(format!(
                    "a command for bucket {} in bucket {}",
                    c.base().bucket(),
                    self.bucket
                )))
            }
            Ok(Proposal { command: c, key }) => self.store.apply_keyed(index, &c, key.as_deref()),
            // The same bytes are unreadable on every replica: an answer, not a stop.
            Err(e) => Err(Error::InvalidInput(format!("unreadable command at index {index}: {e}"))),
        };
        let answer: Result<Output, ErrorBody> = match result {
            Ok(o) => Ok(o),
            Err(e) if e.is_deterministic() => Err(e.to_body()),
            Err(e) => panic!(
                "bucket {} cannot apply log index {index} ({e}); stopping rather than diverging",
                self.bucket
            ),
        };
        serde_json::to_vec(&answer).expect("an answer always serializes")
    }

    fn sync(&self) -> std::io::Result<()> {
        self.store.sync_bucket(self.bucket).map_err(|e| std::io::Error::other(e.to_string()))
    }

    fn snapshot(&self, dir: &Path) -> std::io::Result<()> {
        self.store
            .snapshot_bucket(self.bucket, dir)
            .map_err(|e| std::io::Error::other(e.to_string()))
    }

    fn restore(&self, dir: &Path) -> std::io::Result<()> {
        self.store
            .restore_bucket(self.bucket, dir)
            .map_err(|e| std::io::Error::other(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_raft::StateMachine as _;
    use shoal_types::BaseId;

    #[test]
    fn commands_and_answers_round_trip() {
        let store = Arc::new(Store::open(None, Default::default()).expect("store"));
        let id = BaseId::random();
        let sm = BucketStateMachine::new(store, id.bucket());
        let create =
            Command::CreateBase { id, name: None, created_at: "2024-01-01T00:00:00Z".into() };
        assert!(matches!(decode(&sm.apply(1, &encode(&create, None))), Ok(Output::Created { .. })));
        // The same command again is a deterministic error, answered.
        assert!(matches!(decode(&sm.apply(2, &encode(&create, None))), Err(Error::Conflict(_))));
        // A replay of an applied index changes nothing.
        assert_eq!(decode(&sm.apply(1, &encode(&create, None))).expect("replay"), Output::Replayed);
        // A command for another bucket is refused.
        let other = BaseId(uuid_in_other_bucket(id));
        let wrong = Command::DropBase { id: other };
        assert!(matches!(decode(&sm.apply(3, &encode(&wrong, None))), Err(Error::InvalidInput(_))));
        assert!(matches!(decode(&sm.apply(4, b"not json")), Err(Error::InvalidInput(_))));
    }

    fn uuid_in_other_bucket(id: BaseId) -> uuid::Uuid {
        let mut bytes = *id.0.as_bytes();
        bytes[0] = bytes[0].wrapping_add(1);
        uuid::Uuid::from_bytes(bytes)
    }
}
