//! The group's state machine: a registry [`Store`] plus the member list,
//! changed only by logged [`Command`]s, in log order, on every member alike.
//!
//! The state is shared with the HTTP handlers (reads, watches, status)
//! through one mutex, never held across an `.await`. What must survive a
//! restart (the store's image, the members and the applied index) is written
//! whole to one file at each checkpoint: a registry holds a few thousand
//! keys at most, so a full write is a few hundred kilobytes at worst, once a
//! second while the group changes.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shoal_registry::embedded::wire::{self, Member, Reply, Response};
use shoal_registry::store::{Image, Store};
use shoal_registry::{Error, LeaseId, Revision, Txn};

/// How many events each member keeps for watches.
const HISTORY: usize = 10_000;

/// The name of the state file, in the data directory and in snapshots.
const STATE_FILE: &str = "registry.state";

/// The format of the state file.
const FORMAT: u32 = 1;

/// A change to the group's state, as logged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Command {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    },
    Delete {
        key: Vec<u8>,
    },
    DeletePrefix {
        prefix: Vec<u8>,
    },
    Txn(Txn),
    Grant {
        ttl: Duration,
    },
    Revoke {
        lease: LeaseId,
    },
    /// The leader saw the lease's deadline pass (not an error if it is gone).
    Expire {
        lease: LeaseId,
    },
    Compact {
        revision: Revision,
    },
    /// A new group's first members (ignored once it has some).
    InitMembers(Vec<Member>),
    /// Checked as it is applied, so two changes cannot race: every member
    /// new, and an odd number of members after.
    AddMembers(Vec<Member>),
    /// Likewise: every name a member, and an odd number left.
    RemoveMembers(Vec<String>),
}

/// The state every member holds.
pub(crate) struct State {
    pub(crate) store: Store,
    pub(crate) members: Vec<Member>,
    pub(crate) applied: u64,
}

/// The state, shared between the apply thread and the HTTP handlers.
pub(crate) type Shared = Arc<Mutex<State>>;

/// Locks the state; a panic elsewhere never leaves it half-changed (each
/// command checks before it changes anything).
pub(crate) fn lock(state: &Shared) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// What the state file holds.
#[derive(Serialize, Deserialize)]
struct Saved {
    format: u32,
    applied: u64,
    members: Vec<Member>,
    image: Image,
}

impl State {
    /// The state stored in `dir`, or an empty one; whether it was there.
    pub(crate) fn load(dir: &Path) -> std::io::Result<(State, bool)> {
        let mut state = State { store: Store::new(HISTORY), members: Vec::new(), applied: 0 };
        match std::fs::read(dir.join(STATE_FILE)) {
            Ok(bytes) => {
                state.set(decode_saved(&bytes, &dir.join(STATE_FILE))?);
                Ok((state, true))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((state, false)),
            Err(e) => Err(e),
        }
    }

    fn saved(&self) -> Saved {
        Saved {
            format: FORMAT,
            applied: self.applied,
            members: self.members.clone(),
            image: self.store.image(),
        }
    }

    fn set(&mut self, saved: Saved) {
        self.applied = saved.applied;
        self.members = saved.members;
        self.store.restore(saved.image);
    }

    /// Applies one command.
    fn apply(&mut self, command: Command) -> Reply {
        let store = &mut self.store;
        Ok(match command {
            Command::Put { key, value, lease } => {
                Response::Revision(store.put(&key, &value, lease)?)
            }
            Command::Delete { key } => {
                let (existed, revision) = store.delete(&key);
                Response::Deleted { count: u64::from(existed), revision }
            }
            Command::DeletePrefix { prefix } => {
                let (count, revision) = store.delete_prefix(&prefix);
                Response::Deleted { count, revision }
            }
            Command::Txn(txn) => Response::Txn(store.txn(&txn)?),
            Command::Grant { ttl } => Response::Lease(store.grant(ttl)?),
            Command::Revoke { lease } => {
                if !store.revoke(lease) {
                    return Err(Error::LeaseNotFound(lease));
                }
                Response::Done
            }
            Command::Expire { lease } => {
                store.revoke(lease);
                Response::Done
            }
            Command::Compact { revision } => {
                store.compact(revision)?;
                Response::Done
            }
            Command::InitMembers(members) => {
                if self.members.is_empty() {
                    self.members = members;
                }
                Response::Members(self.members.clone())
            }
            Command::AddMembers(new) => {
                if self.members.is_empty() {
                    return Err(Error::Unavailable(
                        "the group has not recorded its first members yet".into(),
                    ));
                }
                for m in &new {
                    if self.members.iter().any(|o| o.name == m.name || o.id == m.id) {
                        return Err(Error::InvalidInput(format!(
                            "{} is member {:?}, which the group has already",
                            m.url, m.name
                        )));
                    }
                }
                let mut members = self.members.clone();
                members.extend(new);
                self.set_members(members)?
            }
            Command::RemoveMembers(names) => {
                let known: Vec<&str> = self.members.iter().map(|m| m.name.as_str()).collect();
                if let Some(unknown) = names.iter().find(|n| !known.contains(&n.as_str())) {
                    return Err(Error::InvalidInput(format!(
                        "the group has no member {unknown:?} (members: {})",
                        known.join(", ")
                    )));
                }
                let mut members = self.members.clone();
                members.retain(|m| !names.contains(&m.name));
                if members.is_empty() {
                    return Err(Error::InvalidInput(
                        "a group cannot remove all its members".into(),
                    ));
                }
                self.set_members(members)?
            }
        })
    }

    /// Replaces the member list, if its size is odd.
    fn set_members(&mut self, members: Vec<Member>) -> Result<Response, Error> {
        if members.len().is_multiple_of(2) {
            return Err(Error::InvalidInput(format!(
                "the group would have {} members: an even number tolerates no more failures \
                 than one fewer, and needs more of them up to make progress. Add or remove \
                 members two at a time (1, 3 or 5 members)",
                members.len()
            )));
        }
        self.members = members;
        Ok(Response::Members(self.members.clone()))
    }
}

fn decode_saved(bytes: &[u8], path: &Path) -> std::io::Result<Saved> {
    let invalid = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidData, m);
    let saved: Saved = postcard::from_bytes(bytes)
        .map_err(|e| invalid(format!("{} is not a registry state file: {e}", path.display())))?;
    if saved.format != FORMAT {
        return Err(invalid(format!(
            "{} has format {}, this version reads format {FORMAT}",
            path.display(),
            saved.format
        )));
    }
    Ok(saved)
}

/// Writes `saved` to `path` durably: a temporary file, synced, renamed over.
fn write_saved(saved: &Saved, path: &Path) -> std::io::Result<()> {
    let bytes = postcard::to_stdvec(saved)
        .map_err(|e| std::io::Error::other(format!("cannot encode the registry state: {e}")))?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// The engine's view of the state.
pub(crate) struct Machine {
    state: Shared,
    file: PathBuf,
}

impl Machine {
    pub(crate) fn new(state: Shared, dir: &Path) -> Machine {
        Machine { state, file: dir.join(STATE_FILE) }
    }
}

impl shoal_raft::StateMachine for Machine {
    type Answer = Reply;

    fn apply(&mut self, index: u64, command: &[u8]) -> Reply {
        let mut state = lock(&self.state);
        if index <= state.applied {
            return Err(Error::Internal(format!("entry {index} was applied before")));
        }
        state.applied = index;
        // A command no member can read changes nothing, on every member alike.
        let command = wire::decode::<Command>(command)?;
        state.apply(command)
    }

    fn sync(&mut self) -> std::io::Result<()> {
        let saved = lock(&self.state).saved();
        write_saved(&saved, &self.file)
    }

    fn snapshot(&mut self, dir: &Path) -> std::io::Result<()> {
        let saved = lock(&self.state).saved();
        write_saved(&saved, &dir.join(STATE_FILE))
    }

    fn restore(&mut self, dir: &Path) -> std::io::Result<()> {
        let path = dir.join(STATE_FILE);
        let saved = decode_saved(&std::fs::read(&path)?, &path)?;
        lock(&self.state).set(saved);
        self.sync()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_raft::StateMachine as _;

    fn machine(dir: &Path) -> (Machine, Shared) {
        let (state, _) = State::load(dir).unwrap();
        let state = Arc::new(Mutex::new(state));
        (Machine::new(state.clone(), dir), state)
    }

    fn put(key: &str) -> Vec<u8> {
        wire::encode(&Command::Put { key: key.into(), value: b"v".to_vec(), lease: None })
    }

    #[test]
    fn replayed_entries_change_nothing_and_state_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (mut m, state) = machine(dir.path());
        assert_eq!(m.apply(1, &put("a")), Ok(Response::Revision(Revision(1))));
        assert!(m.apply(1, &put("b")).is_err(), "index 1 again");
        assert!(m.apply(2, b"\xff\xff garbage").is_err());
        assert_eq!(m.apply(3, &put("c")), Ok(Response::Revision(Revision(2))));
        m.sync().unwrap();
        drop((m, state));
        let (mut m, state) = machine(dir.path());
        assert_eq!(lock(&state).applied, 3);
        assert_eq!(lock(&state).store.revision(), Revision(2));
        assert!(lock(&state).store.get(b"b").is_none());
        assert!(m.apply(3, &put("d")).is_err());
        assert_eq!(m.apply(4, &put("d")), Ok(Response::Revision(Revision(3))));
    }

    #[test]
    fn a_damaged_state_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(STATE_FILE), b"\x07not a state").unwrap();
        let e = State::load(dir.path()).err().expect("refused");
        assert!(e.to_string().contains("registry.state"), "{e}");
    }
}
