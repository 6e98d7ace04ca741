//! Snapshots: directories of files the state machine writes, kept under
//! `snapshots/{group}/{index}-{term}-{n}`, named to raft-rs by a small
//! descriptor, and streamed to a peer out of band.
//!
//! A snapshot directory never changes once its manifest is written, so one
//! can be streamed while a newer one is built; the two newest per group are
//! kept. The manifest (`MANIFEST`, text) carries its format version, the
//! group, and the index and term the snapshot holds; a receiver checks it
//! against the Raft message it came with.
//!
//! # Transfer
//!
//! `POST /internal/raft/snapshot` with `X-Shoal-Raft-Version: 1`. The body:
//! a header (`u32` little-endian length, then: the group, the protobuf
//! `MsgSnapshot`, and every file's `/`-separated relative name and size),
//! then the files' bytes back to back. The receiver writes them into a
//! fresh directory under `snapshots/incoming/`, fsyncs each file, checks the
//! manifest, and hands the message and the directory to its loop; the
//! directory is then the loop's (it restores from it and removes it).

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message as _;
use raft::prelude::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// The snapshot format (manifest and transfer) this build writes and reads.
pub const VERSION: u32 = 1;
/// The descriptor's version byte (the `data` of raft-rs's snapshot).
const DESCRIPTOR_VERSION: u8 = 1;
/// The manifest's file name.
pub const MANIFEST: &str = "MANIFEST";
/// How many snapshots of a group are kept.
const KEEP: usize = 2;
/// The size of the chunks files are read in, in bytes.
const CHUNK: usize = 256 << 10;
/// The largest transfer header accepted.
const MAX_HEADER: usize = 16 << 20;

/// Where a node keeps its snapshots.
#[derive(Clone)]
pub struct Snapshots {
    root: Arc<PathBuf>,
}

impl Snapshots {
    /// The snapshot root `root`. Snapshots left by an earlier run are
    /// removed: a restarted node builds new ones when asked, and an
    /// incoming one that was not restored is garbage.
    pub fn new(root: &Path) -> std::io::Result<Snapshots> {
        if root.exists() {
            std::fs::remove_dir_all(root)?;
        }
        std::fs::create_dir_all(root)?;
        Ok(Snapshots { root: Arc::new(root.to_path_buf()) })
    }

    /// A fresh directory to build a snapshot of `group` at `index` in.
    pub fn build_dir(&self, group: u8, index: u64, term: u64) -> std::io::Result<PathBuf> {
        fresh_dir(&self.root.join(format!("{group:02x}")), &format!("{index}-{term}"))
    }

    /// Writes the manifest of a finished snapshot and drops the oldest of
    /// the group's snapshots beyond the newest two.
    pub fn finish(&self, group: u8, dir: &Path, index: u64, term: u64) -> std::io::Result<()> {
        let manifest =
            format!("shoal-snapshot {VERSION}\ngroup {group:02x}\nindex {index}\nterm {term}\n");
        let path = dir.join(MANIFEST);
        let mut file = std::fs::File::create(&path)?;
        std::io::Write::write_all(&mut file, manifest.as_bytes())?;
        file.sync_all()?;
        let mut dirs: Vec<(u64, PathBuf)> =
            std::fs::read_dir(self.root.join(format!("{group:02x}")))?
                .flatten()
                .filter_map(|e| {
                    let name = e.file_name().into_string().ok()?;
                    let index = name.split('-').next()?.parse::<u64>().ok()?;
                    Some((index, e.path()))
                })
                .collect();
        dirs.sort();
        while dirs.len() > KEEP {
            let (_, old) = dirs.remove(0);
            let _ = std::fs::remove_dir_all(old);
        }
        Ok(())
    }

    /// Removes every snapshot of `group`.
    pub fn remove_group(&self, group: u8) {
        let _ = std::fs::remove_dir_all(self.root.join(format!("{group:02x}")));
    }

    /// The descriptor raft-rs carries for the snapshot in `dir`.
    pub fn descriptor(&self, dir: &Path) -> Vec<u8> {
        let rel = dir.strip_prefix(&*self.root).unwrap_or(dir).to_string_lossy();
        let mut out = vec![DESCRIPTOR_VERSION];
        out.extend_from_slice(rel.as_bytes());
        out
    }

    /// The directory a descriptor names, if it is one of ours.
    pub fn resolve(&self, descriptor: &[u8]) -> Option<PathBuf> {
        let (&v, rel) = descriptor.split_first()?;
        if v != DESCRIPTOR_VERSION {
            return None;
        }
        let rel = std::str::from_utf8(rel).ok()?;
        safe_join(&self.root, rel).ok()
    }

    fn incoming(&self) -> PathBuf {
        self.root.join("incoming")
    }
}

/// The manifest of a snapshot directory: (group, index, term).
pub fn read_manifest(dir: &Path) -> std::io::Result<(u8, u64, u64)> {
    let text = std::fs::read_to_string(dir.join(MANIFEST))?;
    let bad =
        |why: &str| std::io::Error::other(format!("snapshot manifest in {}: {why}", dir.display()));
    let mut lines = text.lines();
    match lines.next().and_then(|l| l.strip_prefix("shoal-snapshot ")) {
        Some(v) if v.trim() == VERSION.to_string() => {}
        Some(v) => return Err(bad(&format!("format version {v} is not {VERSION}"))),
        None => return Err(bad("not a manifest")),
    }
    let mut field = |name: &str| -> std::io::Result<String> {
        lines
            .next()
            .and_then(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .ok_or_else(|| bad(&format!("no {name}")))
    };
    let group = u8::from_str_radix(&field("group ")?, 16).map_err(|_| bad("bad group"))?;
    let index = field("index ")?.parse().map_err(|_| bad("bad index"))?;
    let term = field("term ")?.parse().map_err(|_| bad("bad term"))?;
    Ok((group, index, term))
}

/// Why a transfer failed.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// Reading or writing files, or the connection.
    #[error("snapshot transfer: {0}")]
    Io(#[from] std::io::Error),
    /// The bytes are not a snapshot this build understands.
    #[error("snapshot transfer: {0}")]
    Invalid(String),
    /// A peer was silent too long.
    #[error("snapshot transfer: timed out")]
    Timeout,
}

/// Streams the snapshot `message` names to `url` (the peer's snapshot
/// route). Returns once the peer has stored it.
pub async fn send(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    snapshots: &Snapshots,
    group: u8,
    message: &Message,
) -> Result<(), TransferError> {
    let data = &message.get_snapshot().data;
    let root = snapshots
        .resolve(data)
        .ok_or_else(|| TransferError::Invalid("the snapshot names no local directory".into()))?;
    let files = {
        let root = root.clone();
        tokio::task::spawn_blocking(move || list_files(&root))
            .await
            .map_err(|e| TransferError::Invalid(format!("listing the snapshot: {e}")))??
    };
    let first = transfer_header(group, message, &files);
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
    let resp = client
        .post(url)
        .bearer_auth(token)
        .header(crate::transport::VERSION_HEADER, VERSION.to_string())
        .body(body)
        .send()
        .await
        .map_err(|e| TransferError::Io(std::io::Error::other(e)))?;
    if !resp.status().is_success() {
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        return Err(TransferError::Invalid(format!("the peer answered {status}: {text}")));
    }
    Ok(())
}

/// Reads a transfer body into a fresh directory under the node's snapshot
/// root; returns the group, the message and the directory (now the
/// caller's). A failed transfer leaves nothing behind.
pub async fn receive<R: AsyncRead + Unpin>(
    snapshots: &Snapshots,
    reader: &mut R,
    idle: Duration,
) -> Result<(u8, Message, PathBuf), TransferError> {
    let mut len = [0u8; 4];
    read_exact(reader, &mut len, idle).await?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_HEADER {
        return Err(TransferError::Invalid(format!("a header of {len} bytes")));
    }
    let mut header = vec![0u8; len];
    read_exact(reader, &mut header, idle).await?;
    let (group, message, files) = parse_header(&header)?;
    let dir = fresh_dir(&snapshots.incoming(), &format!("{group:02x}"))?;
    let mut guard = DirGuard(Some(dir.clone()));
    write_files(reader, &dir, &files, idle).await?;
    let (g, index, term) = read_manifest(&dir)?;
    let meta = message.get_snapshot().get_metadata();
    if g != group || index != meta.index || term != meta.term {
        return Err(TransferError::Invalid(format!(
            "the manifest says group {g:02x} at {index}/{term}, the message group {group:02x} at {}/{}",
            meta.index, meta.term
        )));
    }
    guard.0 = None;
    Ok((group, message, dir))
}

type FileList = Vec<(String, u64)>;

/// The first bytes of a transfer: the header's length, then the header (the
/// group, the message, every file's name and size).
fn transfer_header(group: u8, message: &Message, files: &FileList) -> Bytes {
    let mut header = BytesMut::new();
    header.put_u8(group);
    let msg = message.encode_to_vec();
    header.put_u32_le(msg.len() as u32);
    header.put_slice(&msg);
    header.put_u32_le(files.len() as u32);
    for (name, size) in files {
        header.put_u16_le(name.len() as u16);
        header.put_slice(name.as_bytes());
        header.put_u64_le(*size);
    }
    let mut first = BytesMut::with_capacity(4 + header.len());
    first.put_u32_le(header.len() as u32);
    first.put_slice(&header);
    first.freeze()
}

fn parse_header(mut b: &[u8]) -> Result<(u8, Message, FileList), TransferError> {
    let short = || TransferError::Invalid("a short header".into());
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if b.len() < n {
            return None;
        }
        let (head, rest) = b.split_at(n);
        *b = rest;
        Some(head)
    }
    let group = take(&mut b, 1).ok_or_else(short)?[0];
    let n = u32::from_le_bytes(take(&mut b, 4).ok_or_else(short)?.try_into().expect("4")) as usize;
    let message = Message::decode(take(&mut b, n).ok_or_else(short)?)
        .map_err(|e| TransferError::Invalid(format!("the message: {e}")))?;
    let count = u32::from_le_bytes(take(&mut b, 4).ok_or_else(short)?.try_into().expect("4"));
    let mut files = Vec::new();
    for _ in 0..count {
        let n =
            u16::from_le_bytes(take(&mut b, 2).ok_or_else(short)?.try_into().expect("2")) as usize;
        let name = std::str::from_utf8(take(&mut b, n).ok_or_else(short)?)
            .map_err(|_| TransferError::Invalid("a file name is not UTF-8".into()))?
            .to_string();
        let size = u64::from_le_bytes(take(&mut b, 8).ok_or_else(short)?.try_into().expect("8"));
        files.push((name, size));
    }
    Ok((group, message, files))
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
fn list_files(root: &Path) -> Result<FileList, TransferError> {
    let mut out = Vec::new();
    let mut dirs = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, prefix)) = dirs.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let name = entry.file_name().into_string().map_err(|n| {
                TransferError::Invalid(format!("snapshot file name {n:?} is not UTF-8"))
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
fn safe_join(root: &Path, name: &str) -> Result<PathBuf, TransferError> {
    let rel = Path::new(name);
    let ok = !name.is_empty()
        && !name.contains('\\')
        && rel.components().all(|c| matches!(c, Component::Normal(_)));
    if !ok {
        return Err(TransferError::Invalid(format!(
            "snapshot file name {name:?} leaves its directory"
        )));
    }
    Ok(root.join(rel))
}

/// A fresh, empty directory under `root` whose name starts with `prefix`.
fn fresh_dir(root: &Path, prefix: &str) -> std::io::Result<PathBuf> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    std::fs::create_dir_all(root)?;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = root.join(format!("{prefix}-{n}"));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Removes a received directory when dropped, unless disarmed.
struct DirGuard(Option<PathBuf>);

impl Drop for DirGuard {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Reads the files into `dir`, each fsync'd.
async fn write_files<R: AsyncRead + Unpin>(
    reader: &mut R,
    dir: &Path,
    files: &FileList,
    idle: Duration,
) -> Result<(), TransferError> {
    let mut chunk = vec![0u8; CHUNK];
    for (name, size) in files {
        let path = safe_join(dir, name)?;
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent).await?;
        }
        let mut file = tokio::fs::File::create(&path).await?;
        let mut left = *size;
        while left > 0 {
            let want = usize::try_from(left).unwrap_or(CHUNK).min(CHUNK);
            let n = tokio::time::timeout(idle, reader.read(&mut chunk[..want]))
                .await
                .map_err(|_| TransferError::Timeout)??;
            if n == 0 {
                return Err(TransferError::Invalid(format!("the body ended inside {name}")));
            }
            file.write_all(&chunk[..n]).await?;
            left -= n as u64;
        }
        file.sync_all().await?;
    }
    let mut rest = [0u8; 1];
    let n = tokio::time::timeout(idle, reader.read(&mut rest))
        .await
        .map_err(|_| TransferError::Timeout)??;
    if n != 0 {
        return Err(TransferError::Invalid("bytes after the last file".into()));
    }
    Ok(())
}

async fn read_exact<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut [u8],
    idle: Duration,
) -> Result<(), TransferError> {
    tokio::time::timeout(idle, reader.read_exact(buf))
        .await
        .map_err(|_| TransferError::Timeout)??;
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
    fn manifests_round_trip_and_descriptors_resolve() {
        let root = tempfile::tempdir().expect("tempdir");
        let snaps = Snapshots::new(&root.path().join("s")).expect("snapshots");
        let mut dirs = Vec::new();
        for i in 1..=3 {
            let dir = snaps.build_dir(0x0a, i * 10, 2).expect("dir");
            snaps.finish(0x0a, &dir, i * 10, 2).expect("finish");
            dirs.push(dir);
        }
        // Only the two newest are kept.
        assert!(!dirs[0].exists());
        assert_eq!(read_manifest(&dirs[2]).expect("manifest"), (0x0a, 30, 2));
        let d = snaps.descriptor(&dirs[2]);
        assert_eq!(snaps.resolve(&d), Some(dirs[2].clone()));
        assert_eq!(snaps.resolve(b"\x01../../etc"), None);
        assert_eq!(snaps.resolve(b"\x09x"), None);
    }

    #[tokio::test]
    async fn a_transfer_body_is_received_into_a_checked_directory() {
        let root = tempfile::tempdir().expect("tempdir");
        let snaps = Snapshots::new(&root.path().join("s")).expect("snapshots");
        let dir = snaps.build_dir(7, 42, 3).expect("dir");
        std::fs::create_dir(dir.join("bases")).expect("mkdir");
        std::fs::write(dir.join("bases/a.db"), vec![1u8; 300_000]).expect("write");
        snaps.finish(7, &dir, 42, 3).expect("finish");
        let mut message = Message::default();
        message.mut_snapshot().data = snaps.descriptor(&dir);
        message.mut_snapshot().mut_metadata().index = 42;
        message.mut_snapshot().mut_metadata().term = 3;
        // The body as `send` streams it.
        let files = list_files(&dir).expect("list");
        let mut body = transfer_header(7, &message, &files).to_vec();
        for (name, _) in &files {
            body.extend_from_slice(&std::fs::read(dir.join(name)).expect("read"));
        }
        let (group, got, into) =
            receive(&snaps, &mut body.as_slice(), Duration::from_secs(5)).await.expect("receive");
        assert_eq!(group, 7);
        assert_eq!(got.get_snapshot().get_metadata().index, 42);
        assert_eq!(std::fs::read(into.join("bases/a.db")).expect("file").len(), 300_000);
        // A body cut short leaves no directory behind.
        let cut = &body[..body.len() - 10];
        assert!(receive(&snaps, &mut &cut[..], Duration::from_secs(5)).await.is_err());
        let left: Vec<_> = std::fs::read_dir(snaps.incoming()).expect("incoming").collect();
        assert_eq!(left.len(), 1, "only the first, accepted directory stays");
    }
}
