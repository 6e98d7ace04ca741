//! What the embedded registry's members and its clients say to each other
//! over HTTP. Bodies are postcard-encoded; a watch answers a stream of
//! length-prefixed frames.
//!
//! - `POST /meta/v1/call`: one [`Request`], answered by one [`Reply`]. Any
//!   member takes it; a member that does not lead the group passes it on to
//!   the one that does (once: a forwarded call carries [`FORWARDED`]).
//! - `POST /meta/v1/watch`: a [`WatchRequest`], answered by [`WatchFrame`]s
//!   from the member's own copy of the store, [`WatchFrame::Established`]
//!   first and [`WatchFrame::Alive`] while nothing happens.
//! - `GET /meta/v1/status`: the member's [`MetaStatus`], as JSON (for people
//!   and scripts too).

use std::time::Duration;

use bytes::{Buf, BytesMut};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use shoal_types::{LeaseId, Revision};

use crate::error::{Error, Result};
use crate::kv::{Event, KeyValue, Listing, Txn, TxnResponse};

/// Where calls go.
pub const CALL_PATH: &str = "/meta/v1/call";
/// Where watches go.
pub const WATCH_PATH: &str = "/meta/v1/watch";
/// Where a member tells who it is and what it knows of the group.
pub const STATUS_PATH: &str = "/meta/v1/status";
/// Marks a call one member passed on to another.
pub const FORWARDED: &str = "x-shoal-forwarded";
/// The content type of postcard bodies.
pub const CONTENT_TYPE: &str = "application/x-shoal-meta";
/// How often a quiet watch stream says it is alive.
pub const ALIVE_INTERVAL: Duration = Duration::from_secs(2);

/// One call of the registry contract, or of the group's administration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// [`crate::Registry::get`].
    Get { key: Vec<u8> },
    /// [`crate::Registry::get_prefix`].
    GetPrefix { prefix: Vec<u8> },
    /// [`crate::Registry::put`].
    Put { key: Vec<u8>, value: Vec<u8>, lease: Option<LeaseId> },
    /// [`crate::Registry::delete`].
    Delete { key: Vec<u8> },
    /// [`crate::Registry::delete_prefix`].
    DeletePrefix { prefix: Vec<u8> },
    /// [`crate::Registry::grant_lease`].
    Grant { ttl: Duration },
    /// [`crate::Registry::keep_alive`].
    KeepAlive { lease: LeaseId },
    /// [`crate::Registry::revoke_lease`].
    Revoke { lease: LeaseId },
    /// [`crate::Registry::txn`].
    Txn(Txn),
    /// [`crate::Registry::compact`].
    Compact { revision: Revision },
    /// The current revision, confirmed by a quorum (where a watch "from
    /// now" starts).
    Revision,
    /// The group's members.
    Members,
    /// Adds the members serving at these URLs (each must have been started
    /// to join). Refused if the group would have an even number of members.
    AddMembers { urls: Vec<String> },
    /// Removes the members of these names, in one change. Refused if the
    /// group would have an even number of members, or none.
    RemoveMembers { names: Vec<String> },
}

/// A successful answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// A key, if it exists.
    Kv(Option<KeyValue>),
    /// Keys under a prefix.
    Listing(Listing),
    /// The revision after a write, or the current one.
    Revision(Revision),
    /// Whether a key existed / how many keys went, and the revision after.
    Deleted { count: u64, revision: Revision },
    /// A granted lease.
    Lease(LeaseId),
    /// Done, nothing to say.
    Done,
    /// A transaction's result.
    Txn(TxnResponse),
    /// The group's members.
    Members(Vec<Member>),
}

/// The answer to a [`Request`].
pub type Reply = std::result::Result<Response, Error>;

/// A member of the group, as the group records it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Member {
    /// Its name (`--name`), unique in the group.
    pub name: String,
    /// Its Raft id (derived from the name).
    pub id: u64,
    /// Where members and clients reach it.
    pub url: String,
}

/// A watch: events under `prefix` from revision `from` (at least 1).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchRequest {
    /// The prefix, namespace included.
    pub prefix: Vec<u8>,
    /// The first revision to deliver.
    pub from: Revision,
}

/// One frame of a watch stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WatchFrame {
    /// The watch is in place: every later change will be delivered.
    Established,
    /// Events in revision order, always whole revisions.
    Events(Vec<Event>),
    /// The history asked for is gone; the stream ends.
    Resync { compact_revision: Revision },
    /// Nothing happened lately; the member is alive.
    Alive,
}

/// What a member reports about itself at [`STATUS_PATH`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaStatus {
    /// Its name.
    pub name: String,
    /// Its Raft id.
    pub id: u64,
    /// Its URL.
    pub url: String,
    /// Whether it has joined a group (bootstrapped, or received the
    /// group's state from a leader).
    pub initialized: bool,
    /// The leader's Raft id, if known.
    pub leader: Option<u64>,
    /// The Raft term.
    pub term: u64,
    /// How far it applied the group's log.
    pub applied: u64,
    /// The revision of its copy of the store.
    pub revision: i64,
    /// The members the group records.
    pub members: Vec<Member>,
    /// The group's voters as Raft knows them now (on the leader; else empty).
    pub voters: Vec<u64>,
}

/// Encodes a message.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_stdvec(value).expect("registry messages always encode")
}

/// Decodes a message.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    postcard::from_bytes(bytes)
        .map_err(|e| Error::Internal(format!("undecodable embedded registry message: {e}")))
}

/// Encodes one frame of a stream: its length (4 bytes, little-endian),
/// then the message.
pub fn frame<T: Serialize>(value: &T) -> Vec<u8> {
    let body = encode(value);
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// The largest frame a reader accepts.
const MAX_FRAME: usize = 64 << 20;

/// Cuts a byte stream into frames.
#[derive(Default)]
pub struct FrameReader {
    buf: BytesMut,
}

impl FrameReader {
    /// Adds bytes received.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole frame, if one has arrived.
    pub fn next_frame<T: DeserializeOwned>(&mut self) -> Result<Option<T>> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_le_bytes(self.buf[..4].try_into().expect("4 bytes")) as usize;
        if len > MAX_FRAME {
            return Err(Error::Internal(format!("a watch frame of {len} bytes is too large")));
        }
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        self.buf.advance(4);
        let body = self.buf.split_to(len);
        decode(&body).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_survive_any_split() {
        let frames = [
            WatchFrame::Established,
            WatchFrame::Alive,
            WatchFrame::Resync { compact_revision: Revision(7) },
        ];
        let bytes: Vec<u8> = frames.iter().flat_map(frame).collect();
        for cut in 0..bytes.len() {
            let mut reader = FrameReader::default();
            let mut got = Vec::new();
            for part in [&bytes[..cut], &bytes[cut..]] {
                reader.push(part);
                while let Some(f) = reader.next_frame::<WatchFrame>().unwrap() {
                    got.push(f);
                }
            }
            assert_eq!(got, frames);
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut reader = FrameReader::default();
        reader.push(&[3, 0, 0, 0, 0xff, 0xff, 0xff]);
        assert!(reader.next_frame::<WatchFrame>().is_err());
        let mut reader = FrameReader::default();
        reader.push(&u32::MAX.to_le_bytes());
        assert!(reader.next_frame::<WatchFrame>().is_err());
    }
}
