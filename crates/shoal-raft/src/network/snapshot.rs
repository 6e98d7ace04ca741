//! Snapshot transfer: the files of a snapshot directory streamed in one
//! request body, and written into a fresh directory at the receiver.
//!
//! The body is a [`SnapshotHeader`] frame (vote, meta, and every file's
//! relative name and size), then the files' bytes back to back. Neither side
//! holds more than a few chunks in memory. The sender fails the transfer if a
//! file's length changed while it was read: snapshot directories are meant to
//! be immutable once made.

use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use futures_util::TryStreamExt;
use openraft::error::Fatal;
use openraft::raft::SnapshotResponse;
use openraft::{BasicNode, Snapshot, Vote};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::client::{Failure, transport_error};
use super::wire::{self, FileEntry, SnapshotHeader, SnapshotOutcome};
use super::{Error, Result};
use crate::{Raft, RaftNodeId, SnapshotFiles, TypeConfig};

/// The size of the chunks files are read in, in bytes.
const CHUNK: usize = 256 << 10;

/// Where a snapshot goes.
pub(crate) struct Target<'a> {
    pub client: &'a reqwest::Client,
    pub addr: &'a str,
    pub token: &'a str,
    pub group: u8,
    pub id: RaftNodeId,
    pub node: &'a BasicNode,
}

/// Why sending failed.
pub(crate) enum SendError {
    /// The receiving group is shut down.
    Remote(Fatal<RaftNodeId>),
    /// The transfer failed.
    Failed(Failure),
}

impl From<Error> for SendError {
    fn from(e: Error) -> Self {
        SendError::Failed(Failure::Status(e))
    }
}

/// Streams `snapshot`'s files to the target group and returns its answer.
pub(crate) async fn send(
    target: Target<'_>,
    vote: Vote<RaftNodeId>,
    snapshot: Snapshot<TypeConfig>,
) -> std::result::Result<SnapshotResponse<RaftNodeId>, SendError> {
    let root = snapshot.snapshot.dir.clone();
    let files = {
        let root = root.clone();
        tokio::task::spawn_blocking(move || list_files(&root))
            .await
            .map_err(|e| Error::Io(format!("listing the snapshot: {e}")))??
    };
    let header = SnapshotHeader {
        version: wire::VERSION,
        vote,
        meta: snapshot.meta,
        files: files
            .iter()
            .map(|(name, size)| FileEntry { name: name.clone(), size: *size })
            .collect(),
    };
    let first = wire::frame(&header)?;
    // A small channel bounds what is read ahead of the connection.
    let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(4);
    tokio::spawn(async move {
        if tx.send(Ok(first)).await.is_err() {
            return;
        }
        for (name, size) in files {
            if let Err(e) = stream_file(&root.join(&name), size, &tx).await {
                let _ = tx.send(Err(e)).await;
                return;
            }
        }
    });
    let body = reqwest::Body::wrap_stream(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }));
    let url = format!("{}{}", target.addr.trim_end_matches('/'), wire::SNAPSHOT_PATH)
        .replace("{group}", &target.group.to_string());
    let resp = target
        .client
        .post(url)
        .bearer_auth(target.token)
        .body(body)
        .send()
        .await
        .map_err(|e| SendError::Failed(transport_error(&e)))?;
    if !resp.status().is_success() {
        return Err(Error::Unreachable(format!("status {}", resp.status())).into());
    }
    let bytes = resp.bytes().await.map_err(|e| SendError::Failed(transport_error(&e)))?;
    match wire::decode::<SnapshotOutcome>(&bytes)? {
        SnapshotOutcome::Installed(resp) => Ok(resp),
        SnapshotOutcome::Fatal(f) => Err(SendError::Remote(f)),
        SnapshotOutcome::NoGroup => Err(Error::NoGroup(target.group).into()),
        SnapshotOutcome::Failed(msg) => {
            Err(Error::Unreachable(format!("peer {} could not store the snapshot: {msg}", target.id)).into())
        }
    }
    .inspect_err(|_| {
        tracing::debug!(peer = target.id, node = %target.node, group = target.group, "snapshot not installed");
    })
}

/// Sends one file's bytes, exactly `size` of them.
async fn stream_file(
    path: &Path,
    size: u64,
    tx: &mpsc::Sender<std::io::Result<Bytes>>,
) -> std::io::Result<()> {
    let mut file = tokio::fs::File::open(path).await?;
    let mut left = size;
    loop {
        let mut buf = BytesMut::with_capacity(CHUNK);
        let n = file.read_buf(&mut buf).await?;
        if n == 0 {
            break;
        }
        if n as u64 > left {
            return Err(std::io::Error::other(format!("{} grew while being sent", path.display())));
        }
        left -= n as u64;
        if tx.send(Ok(buf.freeze())).await.is_err() {
            // The request is gone: nobody reads any more.
            return Ok(());
        }
    }
    if left != 0 {
        return Err(std::io::Error::other(format!("{} shrank while being sent", path.display())));
    }
    Ok(())
}

/// Every regular file under `root`, as a `/`-separated relative name and a
/// size, sorted by name.
fn list_files(root: &Path) -> Result<Vec<(String, u64)>> {
    let mut out = Vec::new();
    let mut dirs = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, prefix)) = dirs.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let name = entry.file_name().into_string().map_err(|n| {
                Error::InvalidInput(format!("snapshot file name {n:?} is not UTF-8"))
            })?;
            let rel = if prefix.is_empty() { name } else { format!("{prefix}/{name}") };
            let kind = entry.file_type()?;
            if kind.is_dir() {
                dirs.push((entry.path(), rel));
            } else if kind.is_file() {
                out.push((rel, entry.metadata()?.len()));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The path of `name` under `root`, if `name` stays inside it.
fn safe_join(root: &Path, name: &str) -> Result<PathBuf> {
    let rel = Path::new(name);
    let ok = !name.is_empty()
        && !name.contains('\\')
        && rel.components().all(|c| matches!(c, Component::Normal(_)));
    if !ok {
        return Err(Error::InvalidData(format!(
            "snapshot file name {name:?} leaves its directory"
        )));
    }
    Ok(root.join(rel))
}

/// A fresh, empty directory for one incoming snapshot.
fn fresh_dir(root: &Path, group: u8) -> Result<PathBuf> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    std::fs::create_dir_all(root)?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = root.join(format!("incoming-{group:02x}-{stamp:x}-{n}"));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Removes a received directory when dropped, unless disarmed: a transfer
/// that fails, or whose request is dropped by the connection, leaves nothing.
struct DirGuard(Option<PathBuf>);

impl Drop for DirGuard {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            remove_dir(dir);
        }
    }
}

fn remove_dir(dir: PathBuf) {
    let remove = move || match std::fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot remove a received snapshot");
        }
        _ => {}
    };
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => drop(handle.spawn_blocking(remove)),
        Err(_) => remove(),
    }
}

/// Receives a snapshot for `raft` (group `group`) from `body`, installs it
/// and says how it went.
pub(crate) async fn receive(
    raft: Raft,
    group: u8,
    root: PathBuf,
    body: Body,
    idle: Duration,
) -> SnapshotOutcome {
    let dir = match fresh_dir(&root, group) {
        Ok(d) => d,
        Err(e) => return SnapshotOutcome::Failed(e.to_string()),
    };
    let mut guard = DirGuard(Some(dir.clone()));
    let stream = body.into_data_stream().map_err(std::io::Error::other);
    let mut reader = tokio_util::io::StreamReader::new(stream);
    let header = match write_files(&mut reader, &dir, idle).await {
        Ok(h) => h,
        Err(e) => return SnapshotOutcome::Failed(e.to_string()),
    };
    guard.0 = None;
    // Installing must finish even if the request is dropped meanwhile: the
    // state machine may be reading the files. The directory goes afterwards,
    // unless the state machine moved it away to keep it.
    let install = tokio::spawn(async move {
        let snapshot =
            Snapshot { meta: header.meta, snapshot: Box::new(SnapshotFiles { dir: dir.clone() }) };
        let result = raft.install_full_snapshot(header.vote, snapshot).await;
        remove_dir(dir);
        result
    });
    match install.await {
        Ok(Ok(resp)) => SnapshotOutcome::Installed(resp),
        Ok(Err(fatal)) => SnapshotOutcome::Fatal(fatal),
        Err(e) => SnapshotOutcome::Failed(format!("installing failed: {e}")),
    }
}

/// Reads the header and the files into `dir`.
async fn write_files<R: AsyncRead + Unpin>(
    reader: &mut R,
    dir: &Path,
    idle: Duration,
) -> Result<SnapshotHeader> {
    let mut len = [0u8; 4];
    read_exact(reader, &mut len, idle).await?;
    let len = u32::from_le_bytes(len) as usize;
    if len > wire::MAX_FRAME {
        return Err(Error::InvalidData(format!("snapshot header of {len} bytes")));
    }
    let mut buf = vec![0u8; len];
    read_exact(reader, &mut buf, idle).await?;
    let header: SnapshotHeader = wire::decode(&buf)?;
    if header.version != wire::VERSION {
        return Err(Error::InvalidData(format!("snapshot format version {}", header.version)));
    }
    let mut chunk = vec![0u8; CHUNK];
    for entry in &header.files {
        let path = safe_join(dir, &entry.name)?;
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent).await?;
        }
        let mut file = tokio::fs::File::create(&path).await?;
        let mut left = entry.size;
        while left > 0 {
            let want = usize::try_from(left).unwrap_or(CHUNK).min(CHUNK);
            let n = tokio::time::timeout(idle, reader.read(&mut chunk[..want]))
                .await
                .map_err(|_| Error::Timeout)??;
            if n == 0 {
                return Err(Error::InvalidData(format!("snapshot ended inside {}", entry.name)));
            }
            file.write_all(&chunk[..n]).await?;
            left -= n as u64;
        }
        file.sync_all().await?;
    }
    let mut rest = [0u8; 1];
    if tokio::time::timeout(idle, reader.read(&mut rest)).await.map_err(|_| Error::Timeout)?? != 0 {
        return Err(Error::InvalidData("bytes after the last snapshot file".into()));
    }
    Ok(header)
}

async fn read_exact<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut [u8],
    idle: Duration,
) -> Result<()> {
    tokio::time::timeout(idle, reader.read_exact(buf)).await.map_err(|_| Error::Timeout)??;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_stay_inside() {
        let root = Path::new("/r");
        assert_eq!(safe_join(root, "a/b.db").ok(), Some(PathBuf::from("/r/a/b.db")));
        for bad in ["", "../x", "a/../../x", "/etc/passwd", "a\\..\\b", "./a"] {
            assert!(safe_join(root, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn lists_nested_files_sorted() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("sub")).expect("mkdir");
        std::fs::write(dir.path().join("b"), b"12").expect("write");
        std::fs::write(dir.path().join("sub/a"), b"1").expect("write");
        let files = list_files(dir.path()).expect("list");
        assert_eq!(files, vec![("b".to_string(), 2), ("sub/a".to_string(), 1)]);
    }
}
