//! Peer connections: each node keeps one outgoing TCP connection to each
//! peer it sends to, and every message of every group to that peer rides it
//! in binary frames. A node thus has one connection per direction per peer
//! pair; the receiving side only reads.
//!
//! # Wire (version 1)
//!
//! A connection starts as an HTTP/1.1 request on the peer's ordinary port
//! (after a TLS handshake when the peer's URL is `https://`):
//! `GET /internal/raft/stream` with `Connection: Upgrade`, `Upgrade:
//! shoal-raft`, the cluster's bearer token, `X-Shoal-Raft-Version: 1` and
//! `X-Shoal-Raft-From: <raft id>`. The peer answers `101 Switching
//! Protocols` (or an error status: 401 for a wrong token, 400 for another
//! wire version), and from then on the sender writes frames:
//!
//! ```text
//! frame   = len:u32le body            (len = body's length, at most 64 MiB)
//! body    = record*
//! record  = group:u8 len:u32le message (a protobuf eraftpb.Message)
//! ```
//!
//! The loop builds at most one frame per peer per turn. A writer task per
//! peer writes whatever frames are queued in one system call. A connection
//! that fails (or that the peer closes: the writer also watches for EOF) is
//! reported to the loop once ([`Delivery::PeerDown`]), its queued frames are
//! dropped (Raft resends), and it is dialled again with a backoff.
//!
//! Snapshots go out of band, on their own requests ([`crate::snapshot`]), at
//! most `max_snapshot_sends` at a time.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::TryStreamExt as _;
use prost::Message as _;
use raft::prelude::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{Semaphore, mpsc};

use crate::RaftNodeId;
use crate::snapshot::{self, Snapshots};

/// The wire version this build speaks.
pub const WIRE_VERSION: u32 = 1;
/// The header naming the wire (or snapshot) version of a request.
pub const VERSION_HEADER: &str = "x-shoal-raft-version";
/// The header naming the sender's raft id.
pub const FROM_HEADER: &str = "x-shoal-raft-from";
/// The route a peer connection is opened on.
pub const STREAM_PATH: &str = "/internal/raft/stream";
/// The route snapshots are sent to.
pub const SNAPSHOT_PATH: &str = "/internal/raft/snapshot";

/// The largest frame accepted.
const MAX_FRAME: usize = 64 << 20;
/// Frames queued to one peer beyond this many bytes are dropped.
const MAX_QUEUED: usize = 64 << 20;
/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// The longest pause between connection attempts to a failing peer.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// How long a snapshot transfer may pause.
const SNAPSHOT_IDLE: Duration = Duration::from_secs(30);
/// How long a whole snapshot transfer may take.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(600);

/// What the transport hands the loop.
pub enum Delivery {
    /// Messages from a peer, in order.
    Messages(Vec<(u8, Message)>),
    /// A snapshot from a peer, its files in `dir`.
    Snapshot {
        /// The group.
        group: u8,
        /// The `MsgSnapshot`.
        message: Box<Message>,
        /// The received files.
        dir: std::path::PathBuf,
    },
    /// How sending a snapshot ended.
    SnapshotSent {
        /// The group.
        group: u8,
        /// The peer.
        to: RaftNodeId,
        /// Whether the peer stored it.
        ok: bool,
    },
    /// The connection to a peer failed.
    PeerDown(RaftNodeId),
}

/// Hands a delivery to the loop; false once the loop is gone.
pub type Deliver = Arc<dyn Fn(Delivery) -> bool + Send + Sync>;

/// Counters, for benchmarks.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TransportStats {
    /// Frames handed to peer connections.
    pub frames: u64,
    /// Messages in them.
    pub messages: u64,
    /// Bytes in them.
    pub bytes: u64,
    /// Frames dropped (no address, queue full).
    pub dropped: u64,
}

/// A frame being built for one peer.
pub(crate) struct FrameBuf {
    buf: BytesMut,
    messages: u64,
}

impl FrameBuf {
    pub(crate) fn new() -> FrameBuf {
        let mut buf = BytesMut::with_capacity(4096);
        buf.put_u32_le(0);
        FrameBuf { buf, messages: 0 }
    }

    pub(crate) fn push(&mut self, group: u8, message: &Message) {
        self.buf.put_u8(group);
        let len = message.encoded_len();
        self.buf.put_u32_le(len as u32);
        self.buf.reserve(len);
        message.encode(&mut self.buf).expect("a BytesMut grows as needed");
        self.messages += 1;
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.messages == 0
    }

    fn finish(mut self) -> (Bytes, u64) {
        let len = (self.buf.len() - 4) as u32;
        self.buf[..4].copy_from_slice(&len.to_le_bytes());
        (self.buf.freeze(), self.messages)
    }
}

/// Decodes a frame's body.
fn decode_body(mut body: &[u8]) -> Result<Vec<(u8, Message)>, String> {
    let mut out = Vec::new();
    while !body.is_empty() {
        if body.len() < 5 {
            return Err("a record is cut short".into());
        }
        let group = body[0];
        let len = u32::from_le_bytes(body[1..5].try_into().expect("4 bytes")) as usize;
        body = &body[5..];
        if body.len() < len {
            return Err("a message is cut short".into());
        }
        let message = Message::decode(&body[..len]).map_err(|e| format!("a message: {e}"))?;
        out.push((group, message));
        body = &body[len..];
    }
    Ok(out)
}

struct Peer {
    addr: String,
    tx: mpsc::UnboundedSender<Bytes>,
    queued: Arc<AtomicUsize>,
}

/// A node's peer connections.
pub struct Transport {
    id: RaftNodeId,
    token: String,
    connector: shoal_tls::Connector,
    addresses: RwLock<HashMap<RaftNodeId, String>>,
    peers: Mutex<HashMap<RaftNodeId, Peer>>,
    deliver: Deliver,
    snapshots: Snapshots,
    snapshot_slots: Arc<Semaphore>,
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
    frames: AtomicU64,
    messages: AtomicU64,
    bytes: AtomicU64,
    dropped: AtomicU64,
}

impl Transport {
    /// A transport for node `id`. Must be called inside a tokio runtime.
    pub(crate) fn new(
        id: RaftNodeId,
        token: String,
        connector: shoal_tls::Connector,
        max_snapshot_sends: usize,
        snapshots: Snapshots,
        deliver: Deliver,
    ) -> Arc<Transport> {
        let client = reqwest::Client::builder().connect_timeout(CONNECT_TIMEOUT).tcp_nodelay(true);
        let client = match connector.tls() {
            Some(tls) => client.use_preconfigured_tls(tls.as_ref().clone()),
            None => client,
        };
        Arc::new(Transport {
            id,
            token,
            connector,
            addresses: RwLock::default(),
            peers: Mutex::default(),
            deliver,
            snapshots,
            snapshot_slots: Arc::new(Semaphore::new(max_snapshot_sends.max(1))),
            client: client.build().expect("an HTTP client with a rustls configuration builds"),
            runtime: tokio::runtime::Handle::current(),
            frames: AtomicU64::new(0),
            messages: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        })
    }

    /// Where each node is (its base URL, e.g. `http://10.0.0.7:7071`).
    /// Replaces what was known; connections to nodes that moved are redialled.
    pub fn set_addresses(&self, addresses: HashMap<RaftNodeId, String>) {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        peers.retain(|id, p| addresses.get(id) == Some(&p.addr));
        *self.addresses.write().unwrap_or_else(|e| e.into_inner()) = addresses;
    }

    /// Where one node is.
    pub fn set_address(&self, id: RaftNodeId, addr: String) {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        if peers.get(&id).is_some_and(|p| p.addr != addr) {
            peers.remove(&id);
        }
        self.addresses.write().unwrap_or_else(|e| e.into_inner()).insert(id, addr);
    }

    /// The address of node `id`, if known.
    pub fn address(&self, id: RaftNodeId) -> Option<String> {
        self.addresses.read().unwrap_or_else(|e| e.into_inner()).get(&id).cloned()
    }

    /// Counters since start.
    pub fn stats(&self) -> TransportStats {
        TransportStats {
            frames: self.frames.load(Ordering::Relaxed),
            messages: self.messages.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
        }
    }

    /// Queues a frame to `to`; false if it was dropped.
    pub(crate) fn send(self: &Arc<Self>, to: RaftNodeId, frame: FrameBuf) -> bool {
        let (bytes, messages) = frame.finish();
        let len = bytes.len();
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        let peer = match peers.get(&to) {
            Some(p) if !p.tx.is_closed() => p,
            _ => {
                let Some(addr) = self.address(to) else {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                    return false;
                };
                let (tx, rx) = mpsc::unbounded_channel();
                let queued = Arc::new(AtomicUsize::new(0));
                let task = PeerTask {
                    transport: Arc::downgrade(self),
                    to,
                    addr: addr.clone(),
                    queued: queued.clone(),
                };
                self.runtime.spawn(task.run(rx));
                peers.insert(to, Peer { addr, tx, queued });
                peers.get(&to).expect("just inserted")
            }
        };
        if peer.queued.load(Ordering::Relaxed) + len > MAX_QUEUED {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        peer.queued.fetch_add(len, Ordering::Relaxed);
        if peer.tx.send(bytes).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        self.frames.fetch_add(1, Ordering::Relaxed);
        self.messages.fetch_add(messages, Ordering::Relaxed);
        self.bytes.fetch_add(len as u64, Ordering::Relaxed);
        true
    }

    /// Streams the snapshot a `MsgSnapshot` names to its recipient, then
    /// tells the loop how it went.
    pub(crate) fn send_snapshot(self: &Arc<Self>, group: u8, message: Message) {
        let to = message.to;
        let this = self.clone();
        self.runtime.spawn(async move {
            let ok = match this.address(to) {
                None => false,
                Some(addr) => {
                    let _slot = this.snapshot_slots.acquire().await;
                    let url = format!("{}{SNAPSHOT_PATH}", addr.trim_end_matches('/'));
                    let send = snapshot::send(&this.client, &url, &this.token, &this.snapshots, group, &message);
                    match tokio::time::timeout(SNAPSHOT_TIMEOUT, send).await {
                        Ok(Ok(())) => true,
                        Ok(Err(e)) => {
                            tracing::warn!(group, peer = to, error = %e, "sending a snapshot failed");
                            false
                        }
                        Err(_) => {
                            tracing::warn!(group, peer = to, "sending a snapshot timed out");
                            false
                        }
                    }
                }
            };
            (this.deliver)(Delivery::SnapshotSent { group, to, ok });
        });
    }

    /// The routes peers call: the connection upgrade and snapshots. They
    /// check the cluster's bearer token.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route(STREAM_PATH, get(accept_stream))
            .route(SNAPSHOT_PATH, post(accept_snapshot))
            .with_state(self.clone())
    }

    fn authorized(&self, headers: &HeaderMap) -> Result<(), (StatusCode, String)> {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match given {
            Some(t)
                if !self.token.is_empty()
                    && constant_time_eq(t.trim().as_bytes(), self.token.as_bytes()) =>
            {
                Ok(())
            }
            _ => Err((
                StatusCode::UNAUTHORIZED,
                "a node-to-node request needs the cluster's bearer token".into(),
            )),
        }
    }

    fn version_ok(headers: &HeaderMap, want: u32) -> Result<(), (StatusCode, String)> {
        let given = headers.get(VERSION_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("none");
        if given == want.to_string() {
            Ok(())
        } else {
            Err((
                StatusCode::BAD_REQUEST,
                format!(
                    "this node speaks raft wire version {want}, the request {given}: run one Shoal version across the cluster"
                ),
            ))
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn accept_stream(State(t): State<Arc<Transport>>, mut req: Request) -> Response {
    if let Err(r) = t.authorized(req.headers()) {
        return r.into_response();
    }
    if let Err(r) = Transport::version_ok(req.headers(), WIRE_VERSION) {
        return r.into_response();
    }
    let upgrade = req.headers().get(header::UPGRADE).and_then(|v| v.to_str().ok());
    if upgrade != Some("shoal-raft") {
        return (StatusCode::BAD_REQUEST, "expected Upgrade: shoal-raft").into_response();
    }
    let from =
        req.headers().get(FROM_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("?").to_string();
    let on_upgrade = hyper::upgrade::on(&mut req);
    let deliver = t.deliver.clone();
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let io = hyper_util::rt::TokioIo::new(upgraded);
                if let Err(e) = read_frames(io, &deliver).await {
                    tracing::debug!(peer = %from, error = %e, "a peer connection ended");
                }
            }
            Err(e) => {
                tracing::debug!(peer = %from, error = %e, "a peer connection failed to upgrade")
            }
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "shoal-raft")
        .body(axum::body::Body::empty())
        .expect("a static response builds")
}

async fn read_frames<R: tokio::io::AsyncRead + Unpin>(
    io: R,
    deliver: &Deliver,
) -> std::io::Result<()> {
    let mut reader = BufReader::with_capacity(256 << 10, io);
    let mut body = Vec::new();
    loop {
        let mut len = [0u8; 4];
        match reader.read_exact(&mut len).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let len = u32::from_le_bytes(len) as usize;
        if len > MAX_FRAME {
            return Err(std::io::Error::other(format!("a frame of {len} bytes")));
        }
        body.resize(len, 0);
        reader.read_exact(&mut body).await?;
        let messages = decode_body(&body).map_err(std::io::Error::other)?;
        if !messages.is_empty() && !deliver(Delivery::Messages(messages)) {
            return Ok(());
        }
    }
}

async fn accept_snapshot(State(t): State<Arc<Transport>>, req: Request) -> Response {
    if let Err(r) = t.authorized(req.headers()) {
        return r.into_response();
    }
    if let Err(r) = Transport::version_ok(req.headers(), snapshot::VERSION) {
        return r.into_response();
    }
    let stream = req.into_body().into_data_stream().map_err(std::io::Error::other);
    let mut reader = tokio_util::io::StreamReader::new(stream);
    match snapshot::receive(&t.snapshots, &mut reader, SNAPSHOT_IDLE).await {
        Ok((group, message, dir)) => {
            if (t.deliver)(Delivery::Snapshot {
                group,
                message: Box::new(message),
                dir: dir.clone(),
            }) {
                StatusCode::OK.into_response()
            } else {
                let _ = std::fs::remove_dir_all(dir);
                (StatusCode::SERVICE_UNAVAILABLE, "the node is shutting down").into_response()
            }
        }
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    }
}

/// The writer of one peer connection.
struct PeerTask {
    transport: Weak<Transport>,
    to: RaftNodeId,
    addr: String,
    queued: Arc<AtomicUsize>,
}

impl PeerTask {
    async fn run(self, mut rx: mpsc::UnboundedReceiver<Bytes>) {
        let mut backoff = Duration::from_millis(50);
        // Whether the peer was reported down since it last worked.
        let reported = AtomicBool::new(false);
        while let Some(first) = rx.recv().await {
            let Some(t) = self.transport.upgrade() else { return };
            let (token, from, connector) = (t.token.clone(), t.id, t.connector.clone());
            drop(t);
            let connecting = connect(&connector, &self.addr, &token, from);
            match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
                Ok(Ok(stream)) => {
                    backoff = Duration::from_millis(50);
                    reported.store(false, Ordering::Relaxed);
                    let error = self.pump(stream, first, &mut rx).await;
                    match error {
                        None => return,
                        Some(e) => {
                            tracing::debug!(peer = self.to, error = %e, "a peer connection failed");
                        }
                    }
                }
                Ok(Err(e)) => {
                    self.done(first.len());
                    tracing::debug!(peer = self.to, addr = %self.addr, error = %e, "cannot connect to a peer");
                }
                Err(_) => {
                    self.done(first.len());
                    tracing::debug!(peer = self.to, addr = %self.addr, "connecting to a peer timed out");
                }
            }
            if !reported.swap(true, Ordering::Relaxed) {
                let Some(t) = self.transport.upgrade() else { return };
                (t.deliver)(Delivery::PeerDown(self.to));
            }
            // What was queued for the dead connection is stale: Raft resends.
            while let Ok(f) = rx.try_recv() {
                self.done(f.len());
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    fn done(&self, len: usize) {
        self.queued.fetch_sub(len, Ordering::Relaxed);
    }

    /// Writes frames until the channel closes (`None`) or the connection
    /// fails (the error).
    async fn pump(
        &self,
        stream: shoal_tls::Stream,
        first: Bytes,
        rx: &mut mpsc::UnboundedReceiver<Bytes>,
    ) -> Option<std::io::Error> {
        let (mut rd, mut wr) = shoal_tls::split(stream);
        let mut pending = Some(first);
        let mut scratch = [0u8; 64];
        let mut out = BytesMut::new();
        loop {
            let frame = match pending.take() {
                Some(f) => f,
                None => tokio::select! {
                    f = rx.recv() => match f {
                        Some(f) => f,
                        None => return None,
                    },
                    r = rd.read(&mut scratch) => {
                        return Some(match r {
                            Ok(0) => std::io::Error::new(std::io::ErrorKind::ConnectionAborted, "the peer closed the connection"),
                            Ok(_) => std::io::Error::other("the peer wrote on a send-only connection"),
                            Err(e) => e,
                        });
                    }
                },
            };
            // Everything queued goes in one write.
            let mut total = frame.len();
            let result = match rx.try_recv() {
                Err(_) => wr.write_all(&frame).await,
                Ok(next) => {
                    out.clear();
                    out.extend_from_slice(&frame);
                    out.extend_from_slice(&next);
                    total += next.len();
                    while let Ok(more) = rx.try_recv() {
                        total += more.len();
                        out.extend_from_slice(&more);
                        if out.len() > 4 << 20 {
                            break;
                        }
                    }
                    wr.write_all(&out).await
                }
            };
            self.done(total);
            if let Err(e) = result {
                return Some(e);
            }
        }
    }
}

/// Opens a peer connection: the upgrade request, then the raw stream.
async fn connect(
    connector: &shoal_tls::Connector,
    addr: &str,
    token: &str,
    from: RaftNodeId,
) -> std::io::Result<shoal_tls::Stream> {
    if !addr.starts_with("http://") && !addr.starts_with("https://") {
        return Err(std::io::Error::other(format!("{addr}: a peer URL is http:// or https://")));
    }
    let (_, hostport, _) = shoal_tls::split_url(addr)?;
    let mut stream = connector.connect(addr).await?;
    let request = format!(
        "GET {STREAM_PATH} HTTP/1.1\r\nHost: {hostport}\r\nConnection: Upgrade\r\nUpgrade: shoal-raft\r\n\
         Authorization: Bearer {token}\r\n{VERSION_HEADER}: {WIRE_VERSION}\r\n{FROM_HEADER}: {from}\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    // The answer's head, byte by byte: nothing may be read past it (the
    // peer sends nothing after it, but be exact).
    let mut head = Vec::with_capacity(256);
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the peer closed during the upgrade",
            ));
        }
        head.push(byte[0]);
        if head.len() > 16 << 10 {
            return Err(std::io::Error::other("an oversized upgrade answer"));
        }
    }
    let head = String::from_utf8_lossy(&head);
    let status = head.split_whitespace().nth(1).unwrap_or("?");
    if status != "101" {
        return Err(std::io::Error::other(format!(
            "the peer refused the connection: {}",
            head.lines().next().unwrap_or("")
        )));
    }
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let mut f = FrameBuf::new();
        let m = Message {
            to: 2,
            from: 1,
            term: 9,
            entries: vec![raft::prelude::Entry {
                index: 4,
                data: b"abc".to_vec(),
                ..Default::default()
            }],
            ..Default::default()
        };
        f.push(3, &m);
        f.push(200, &Message::default());
        let (bytes, n) = f.finish();
        assert_eq!(n, 2);
        let len = u32::from_le_bytes(bytes[..4].try_into().expect("4")) as usize;
        assert_eq!(len, bytes.len() - 4);
        let got = decode_body(&bytes[4..]).expect("decode");
        assert_eq!(got, vec![(3, m), (200, Message::default())]);
        assert!(decode_body(&bytes[4..bytes.len() - 1]).is_err());
    }
}
