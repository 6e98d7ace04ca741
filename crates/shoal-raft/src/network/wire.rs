//! What travels between nodes: the batch and snapshot messages, and the
//! length-prefixed postcard frames that carry them.
//!
//! A frame is a 4-byte little-endian length followed by that many bytes of
//! postcard. Every message starts with (or is wrapped in) a version byte, so
//! a node can refuse what it cannot read instead of misreading it.

use bytes::{Buf, Bytes, BytesMut};
use openraft::error::{Fatal, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{BasicNode, SnapshotMeta, Vote};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{Error, Result};
use crate::{RaftNodeId, TypeConfig};

/// The version of the wire format; bumped on any incompatible change.
pub(crate) const VERSION: u8 = 1;

/// The route of batched RPCs.
pub(crate) const BATCH_PATH: &str = "/internal/raft/batch";

/// The route of snapshot transfers; `{group}` is the bucket, in decimal.
pub(crate) const SNAPSHOT_PATH: &str = "/internal/raft/snapshot/{group}";

/// The largest frame accepted, in bytes: a guard against a corrupt length,
/// not a limit on what Raft may send (batch requests are not framed).
pub(crate) const MAX_FRAME: usize = 256 << 20;

/// One request body carrying every RPC to a peer that was pending at once.
#[derive(Serialize, Deserialize)]
pub(crate) struct BatchRequest {
    /// [`VERSION`].
    pub version: u8,
    /// The RPCs; answers refer to them by position.
    pub calls: Vec<Call>,
}

/// One RPC of a batch.
#[derive(Serialize, Deserialize)]
pub(crate) struct Call {
    /// The group (bucket) it is for.
    pub group: u8,
    /// The RPC.
    pub rpc: Rpc,
}

/// The RPCs that are batched. Snapshots are not: they have their own route.
#[derive(Serialize, Deserialize)]
pub(crate) enum Rpc {
    /// AppendEntries, heartbeats included.
    Append(AppendEntriesRequest<TypeConfig>),
    /// RequestVote.
    Vote(VoteRequest<RaftNodeId>),
}

/// One answer in a batch response, a frame of its own, sent as soon as the
/// group has answered: answers come in any order.
#[derive(Serialize, Deserialize)]
pub(crate) struct Reply {
    /// The position of the call in [`BatchRequest::calls`].
    pub index: u32,
    /// What the group said.
    pub outcome: Outcome,
}

/// What a group answered to one call.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Outcome {
    /// The answer to [`Rpc::Append`].
    Append(Result<AppendEntriesResponse<RaftNodeId>, RaftError<RaftNodeId>>),
    /// The answer to [`Rpc::Vote`].
    Vote(Result<VoteResponse<RaftNodeId>, RaftError<RaftNodeId>>),
    /// The receiver does not host the group.
    NoGroup,
}

/// The first frame of a snapshot body; the files' bytes follow, in order,
/// each exactly as long as its entry says.
#[derive(Serialize, Deserialize)]
pub(crate) struct SnapshotHeader {
    /// [`VERSION`].
    pub version: u8,
    /// The leader's vote, which the receiver checks before installing.
    pub vote: Vote<RaftNodeId>,
    /// What the snapshot covers.
    pub meta: SnapshotMeta<RaftNodeId, BasicNode>,
    /// The files, in the order their bytes follow.
    pub files: Vec<FileEntry>,
}

/// One file of a snapshot.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct FileEntry {
    /// The path relative to the snapshot directory, `/`-separated.
    pub name: String,
    /// Its length in bytes.
    pub size: u64,
}

/// The answer to a snapshot transfer (the whole response body, unframed).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum SnapshotOutcome {
    /// The group took it (or refused it for an older vote: the response
    /// carries the receiver's vote either way, as openraft expects).
    Installed(SnapshotResponse<RaftNodeId>),
    /// The receiver does not host the group.
    NoGroup,
    /// The group is shut down or failed.
    Fatal(Fatal<RaftNodeId>),
    /// The receiver could not read or store the files.
    Failed(String),
}

/// Encodes a value as one frame.
pub(crate) fn frame<T: Serialize>(value: &T) -> Result<Bytes> {
    let mut out = postcard::to_extend(value, vec![0u8; 4]).map_err(encode_err)?;
    let len =
        u32::try_from(out.len() - 4).map_err(|_| Error::InvalidData("frame too large".into()))?;
    out[..4].copy_from_slice(&len.to_le_bytes());
    Ok(Bytes::from(out))
}

/// Encodes a value without a frame.
pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    postcard::to_stdvec(value).map_err(encode_err)
}

/// Decodes a value encoded by [`encode`].
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    postcard::from_bytes(bytes).map_err(|e| Error::InvalidData(format!("cannot decode: {e}")))
}

fn encode_err(e: postcard::Error) -> Error {
    Error::InvalidData(format!("cannot encode: {e}"))
}

/// Splits a byte stream into frames.
#[derive(Default)]
pub(crate) struct FrameDecoder {
    buf: BytesMut,
}

impl FrameDecoder {
    /// Adds bytes received.
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame, decoded, if one has arrived.
    pub(crate) fn next<T: DeserializeOwned>(&mut self) -> Result<Option<T>> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_le_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        if len > MAX_FRAME {
            return Err(Error::InvalidData(format!("frame of {len} bytes")));
        }
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        self.buf.advance(4);
        let body = self.buf.split_to(len);
        decode(&body).map(Some)
    }

    /// Whether bytes of an unfinished frame are left.
    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}
