//! The relay: many API requests over one connection, for proxies.
//!
//! A proxy sends every base request to the node that leads the base's
//! bucket. As one HTTP request per client request, that hop costs the
//! proxy and the node a parse, several system calls and a wake-up each way
//! per request, about as much CPU as the write itself. Instead a proxy
//! keeps one relay connection to each node and sends its requests as
//! records, many per frame; the node hands each one to the same router as
//! its HTTP requests (token check, forwarding rules and errors unchanged)
//! and sends the answers back the same way, in whatever order they finish.
//!
//! # Wire (version 1)
//!
//! A relay starts as an HTTP/1.1 request on the node's ordinary port: `GET
//! /internal/relay` with `Connection: Upgrade`, `Upgrade: shoal-relay`, the
//! cluster's bearer token and `X-Shoal-Relay-Version: 1`. The node answers
//! `101 Switching Protocols` (401 for a wrong token, 400 for another
//! version; a node without a relay answers 404 and the proxy sends plain
//! HTTP requests instead). Then both sides send frames:
//!
//! ```text
//! frame   = len:u32le record*                   (len: the records' length, at most 1 GiB)
//! request = id:u64le method:str8 target:str16 headers body
//! answer  = id:u64le status:u16le headers body
//! headers = count:u8 (name:str8 value:str16)*
//! body    = len:u32le bytes
//! strN    = a length (uN, little-endian) and that many bytes
//! ```
//!
//! Request ids are the proxy's, increasing; an answer carries its
//! request's id. Each request is handled as if it carried
//! `X-Shoal-No-Forward: 1`: a node that does not lead answers `307`.
//!
//! An answer with id 0 is the node's notice that it stops (it is shutting
//! down): its status is 0, and its body is the highest request id it took,
//! as u64le. It answers every request up to that one, then closes; the
//! proxy sends later ones elsewhere, as they were never handled.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::{Notify, Semaphore, mpsc, watch};
use tower::ServiceExt as _;

use crate::headers::NO_FORWARD;

/// The wire version this build speaks.
pub const VERSION: u32 = 1;
/// The header naming the relay's wire version.
pub const VERSION_HEADER: &str = "x-shoal-relay-version";
/// The route a relay is opened on.
pub const PATH: &str = "/internal/relay";
/// The `Upgrade` protocol name.
pub const PROTOCOL: &str = "shoal-relay";
/// The largest frame either side accepts.
pub const MAX_FRAME: usize = 1 << 30;
/// Frames are cut at about this size (a single larger record gets a frame of its own).
const FRAME_TARGET: usize = 1 << 20;
/// The memory a reader allocates at once for the frames it reads.
const FRAME_BUFFER: usize = 64 << 10;
/// Requests one relay may have in flight on a node; past it, the node stops
/// reading until some finish.
const MAX_IN_FLIGHT: usize = 4096;
/// How long a stopping node waits for a proxy to close its relay.
const STOP_DRAIN: std::time::Duration = std::time::Duration::from_secs(5);
/// The answer headers a node sends back.
pub const ANSWER_HEADERS: [HeaderName; 5] = [
    header::CONTENT_TYPE,
    header::LOCATION,
    header::RETRY_AFTER,
    header::WWW_AUTHENTICATE,
    HeaderName::from_static("x-shoal-applied-index"),
];

/// One request, as the proxy sends it.
#[derive(Clone, Debug, PartialEq)]
pub struct RelayRequest {
    /// The proxy's id for it (never 0).
    pub id: u64,
    /// The HTTP method.
    pub method: Method,
    /// The path and query.
    pub target: String,
    /// The headers passed on.
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
}

/// One answer, as the node sends it.
#[derive(Clone, Debug, PartialEq)]
pub struct RelayAnswer {
    /// The request's id, or 0 for the node's stop notice.
    pub id: u64,
    /// The status (0 in a stop notice).
    pub status: u16,
    /// The headers of [`ANSWER_HEADERS`] the answer had.
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
}

/// A record that does not decode.
#[derive(Debug)]
pub struct Malformed(pub &'static str);

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "a malformed relay record: {}", self.0)
    }
}

impl std::error::Error for Malformed {}

fn put_headers<'h>(
    out: &mut BytesMut,
    headers: impl IntoIterator<Item = (&'h HeaderName, &'h HeaderValue)>,
) {
    let at = out.len();
    out.put_u8(0);
    let mut count = 0u8;
    for (name, value) in headers {
        if value.len() > u16::MAX as usize {
            continue;
        }
        out.put_u8(name.as_str().len() as u8);
        out.put_slice(name.as_str().as_bytes());
        out.put_u16_le(value.len() as u16);
        out.put_slice(value.as_bytes());
        count += 1;
        if count == u8::MAX {
            break;
        }
    }
    out[at] = count;
}

/// The next `n` bytes of `buf`, sharing its memory.
fn take(buf: &mut Bytes, n: usize, what: &'static str) -> Result<Bytes, Malformed> {
    if buf.len() < n {
        return Err(Malformed(what));
    }
    Ok(buf.split_to(n))
}

fn get_u8(buf: &mut Bytes, what: &'static str) -> Result<u8, Malformed> {
    if buf.remaining() < 1 { Err(Malformed(what)) } else { Ok(buf.get_u8()) }
}

fn get_u16(buf: &mut Bytes, what: &'static str) -> Result<u16, Malformed> {
    if buf.remaining() < 2 { Err(Malformed(what)) } else { Ok(buf.get_u16_le()) }
}

fn get_u32(buf: &mut Bytes, what: &'static str) -> Result<u32, Malformed> {
    if buf.remaining() < 4 { Err(Malformed(what)) } else { Ok(buf.get_u32_le()) }
}

fn get_u64(buf: &mut Bytes, what: &'static str) -> Result<u64, Malformed> {
    if buf.remaining() < 8 { Err(Malformed(what)) } else { Ok(buf.get_u64_le()) }
}

fn get_headers(buf: &mut Bytes) -> Result<HeaderMap, Malformed> {
    let count = get_u8(buf, "header count")?;
    let mut headers = HeaderMap::with_capacity(count as usize);
    for _ in 0..count {
        let n = get_u8(buf, "header name length")? as usize;
        let name = take(buf, n, "header name")?;
        let n = get_u16(buf, "header value length")? as usize;
        let value = take(buf, n, "header value")?;
        let name = HeaderName::from_bytes(&name).map_err(|_| Malformed("header name"))?;
        let value = HeaderValue::from_maybe_shared(value).map_err(|_| Malformed("header value"))?;
        headers.append(name, value);
    }
    Ok(headers)
}

fn get_body(buf: &mut Bytes) -> Result<Bytes, Malformed> {
    let n = get_u32(buf, "body length")? as usize;
    take(buf, n, "body")
}

/// Appends one request to `out`, its headers taken as they come (at most
/// 255; a value longer than the wire carries is left out). Check
/// [`RelayRequest::fits`] first.
pub fn encode_request<'h>(
    out: &mut BytesMut,
    id: u64,
    method: &Method,
    target: &str,
    headers: impl IntoIterator<Item = (&'h HeaderName, &'h HeaderValue)>,
    body: &[u8],
) {
    let method = method.as_str();
    out.reserve(8 + 1 + method.len() + 2 + target.len() + 128 + 4 + body.len());
    out.put_u64_le(id);
    out.put_u8(method.len() as u8);
    out.put_slice(method.as_bytes());
    out.put_u16_le(target.len() as u16);
    out.put_slice(target.as_bytes());
    put_headers(out, headers);
    out.put_u32_le(body.len() as u32);
    out.put_slice(body);
}

impl RelayRequest {
    /// Appends the request to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        encode_request(out, self.id, &self.method, &self.target, &self.headers, &self.body);
    }

    /// Whether [`Self::encode`] can carry it (a target, a method and a body
    /// within the wire's lengths).
    pub fn fits(method: &Method, target: &str, body: usize) -> bool {
        method.as_str().len() <= u8::MAX as usize
            && target.len() <= u16::MAX as usize
            && body < MAX_FRAME - (64 << 10)
    }

    /// Reads one request from the front of `buf` (its body and header
    /// values share `buf`'s memory).
    pub fn decode(buf: &mut Bytes) -> Result<RelayRequest, Malformed> {
        let id = get_u64(buf, "request id")?;
        let n = get_u8(buf, "method length")? as usize;
        let method = take(buf, n, "method")?;
        let method = Method::from_bytes(&method).map_err(|_| Malformed("method"))?;
        let n = get_u16(buf, "target length")? as usize;
        let target = take(buf, n, "target")?;
        let target = String::from_utf8(target.to_vec()).map_err(|_| Malformed("target"))?;
        let headers = get_headers(buf)?;
        let body = get_body(buf)?;
        Ok(RelayRequest { id, method, target, headers, body })
    }
}

impl RelayAnswer {
    /// Appends the answer to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        out.reserve(8 + 2 + 64 + 4 + self.body.len());
        out.put_u64_le(self.id);
        out.put_u16_le(self.status);
        put_headers(out, &self.headers);
        out.put_u32_le(self.body.len() as u32);
        out.put_slice(&self.body);
    }

    /// Reads one answer from the front of `buf` (its body and header values
    /// share `buf`'s memory).
    pub fn decode(buf: &mut Bytes) -> Result<RelayAnswer, Malformed> {
        let id = get_u64(buf, "answer id")?;
        let status = get_u16(buf, "status")?;
        let headers = get_headers(buf)?;
        let body = get_body(buf)?;
        Ok(RelayAnswer { id, status, headers, body })
    }

    /// The stop notice: every request up to `last` is answered, none after.
    pub fn stopping(last: u64) -> RelayAnswer {
        RelayAnswer {
            id: 0,
            status: 0,
            headers: HeaderMap::new(),
            body: Bytes::copy_from_slice(&last.to_le_bytes()),
        }
    }

    /// The last request id a stop notice covers.
    pub fn stopped_after(&self) -> Option<u64> {
        (self.id == 0).then(|| self.body.as_ref().try_into().ok().map(u64::from_le_bytes))?
    }
}

/// Reads one frame; `Ok(None)` at a clean end of stream. The frame's
/// records are read into `buf`'s memory and handed out without a copy.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
) -> std::io::Result<Option<Bytes>> {
    let mut len = [0u8; 4];
    match reader.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::other(format!("a relay frame of {len} bytes")));
    }
    buf.clear();
    // Room for this frame, and for a few more like it before the next
    // allocation (the records handed out keep the memory alive).
    buf.reserve(len.max(FRAME_BUFFER));
    buf.resize(len, 0);
    reader.read_exact(buf).await?;
    Ok(Some(buf.split().freeze()))
}

/// Writes the encoded records coming from `rx` in frames, as many as are
/// queued per frame, until every sender is gone. `before_write` is told
/// the highest tag of each frame before it is written.
pub async fn write_frames<W: AsyncWrite + Unpin>(
    mut writer: W,
    mut rx: mpsc::UnboundedReceiver<(u64, Bytes)>,
    mut before_write: impl FnMut(u64),
) -> std::io::Result<()> {
    let mut batch = Vec::with_capacity(256);
    let mut frame = BytesMut::with_capacity(64 << 10);
    while rx.recv_many(&mut batch, 256).await > 0 {
        // Let the tasks woken with this one queue their records first: one
        // write (and one wake-up of the other side) for all of them.
        tokio::task::yield_now().await;
        while batch.len() < 1024
            && let Ok(record) = rx.try_recv()
        {
            batch.push(record);
        }
        let mut records = batch.drain(..).peekable();
        while records.peek().is_some() {
            frame.clear();
            frame.put_u32_le(0);
            let mut last = 0;
            while let Some((tag, record)) = records.peek() {
                if frame.len() > 4 && frame.len() + record.len() > FRAME_TARGET {
                    break;
                }
                frame.put_slice(record);
                last = last.max(*tag);
                records.next();
            }
            let len = (frame.len() - 4) as u32;
            frame[..4].copy_from_slice(&len.to_le_bytes());
            before_write(last);
            writer.write_all(&frame).await?;
        }
    }
    writer.shutdown().await
}

/// What the relay route serves requests with.
struct Relay {
    app: Router,
    token: String,
    stop: watch::Receiver<bool>,
    open: Arc<Open>,
}

/// The relays open on a node, to wait for at shutdown.
#[derive(Default)]
pub struct Open {
    count: AtomicUsize,
    closed: Notify,
}

/// Counts one open relay until dropped.
struct Counted(Arc<Open>);

impl Counted {
    fn new(open: Arc<Open>) -> Counted {
        open.count.fetch_add(1, Ordering::SeqCst);
        Counted(open)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.closed.notify_waiters();
        }
    }
}

impl Open {
    /// Waits until no relay is open (each closes once it has answered what
    /// it took after the stop), at most `limit`; whether they all closed.
    pub async fn closed(&self, limit: std::time::Duration) -> bool {
        tokio::time::timeout(limit, async {
            loop {
                let closed = self.closed.notified();
                tokio::pin!(closed);
                closed.as_mut().enable();
                if self.count.load(Ordering::SeqCst) == 0 {
                    return;
                }
                closed.await;
            }
        })
        .await
        .is_ok()
    }
}

/// The relay route, handing requests to `app`; relays close when `stop`
/// turns true, after answering what they took. Wait for them with the
/// [`Open`] returned before stopping what serves `app`.
pub fn routes(app: Router, token: String, stop: watch::Receiver<bool>) -> (Router, Arc<Open>) {
    let open = Arc::new(Open::default());
    let relay = Arc::new(Relay { app, token, stop, open: open.clone() });
    (Router::new().route(PATH, get(accept)).with_state(relay), open)
}

async fn accept(State(relay): State<Arc<Relay>>, mut req: Request) -> Response {
    if let Err(e) = crate::auth::authorize(req.headers(), &relay.token) {
        return e.into_response();
    }
    let version = req.headers().get(VERSION_HEADER).and_then(|v| v.to_str().ok());
    if version != Some("1") {
        return (
            StatusCode::BAD_REQUEST,
            format!("this node speaks relay version {VERSION}, not {}", version.unwrap_or("none")),
        )
            .into_response();
    }
    let upgrade = req.headers().get(header::UPGRADE).and_then(|v| v.to_str().ok());
    if upgrade != Some(PROTOCOL) {
        return (StatusCode::BAD_REQUEST, "expected Upgrade: shoal-relay").into_response();
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    let counted = Counted::new(relay.open.clone());
    tokio::spawn(async move {
        let _counted = counted;
        match on_upgrade.await {
            Ok(upgraded) => {
                let io = hyper_util::rt::TokioIo::new(upgraded);
                if let Err(e) = serve(io, relay.app.clone(), relay.stop.clone()).await {
                    tracing::debug!(error = %e, "a relay ended");
                }
            }
            Err(e) => tracing::debug!(error = %e, "a relay failed to upgrade"),
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, PROTOCOL)
        .body(Body::empty())
        .expect("a static response builds")
}

/// Serves one relay: reads requests, handles each on a task of its own,
/// writes the answers as they come.
async fn serve<S: AsyncRead + AsyncWrite + Send + 'static>(
    io: S,
    app: Router,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let (read, write) = tokio::io::split(io);
    let (tx, rx) = mpsc::unbounded_channel::<(u64, Bytes)>();
    let writer = tokio::spawn(write_frames(write, rx, |_| {}));
    let mut reader = BufReader::with_capacity(256 << 10, read);
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut buf = BytesMut::new();
    let mut last = 0;
    let mut stopped = false;
    let read_result = loop {
        let more = tokio::select! {
            more = read_frame(&mut reader, &mut buf) => more,
            _ = stopping(&mut stop) => {
                let mut out = BytesMut::new();
                RelayAnswer::stopping(last).encode(&mut out);
                let _ = tx.send((0, out.freeze()));
                stopped = true;
                break Ok(());
            }
        };
        let mut records = match more {
            Ok(Some(frame)) => frame,
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        };
        while !records.is_empty() {
            let request = match RelayRequest::decode(&mut records) {
                Ok(r) => r,
                Err(e) => {
                    drop(tx);
                    let _ = writer.await;
                    return Err(std::io::Error::other(e));
                }
            };
            last = last.max(request.id);
            let permit =
                in_flight.clone().acquire_owned().await.expect("the semaphore is never closed");
            let app = app.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let answer = handle(app, request).await;
                let mut out = BytesMut::new();
                answer.encode(&mut out);
                let _ = tx.send((answer.id, out.freeze()));
                drop(permit);
            });
        }
    };
    // The writer ends once every request taken has been answered.
    drop(tx);
    let written = if stopped {
        // What the proxy sends after the notice is dropped unread, until it
        // closes its side: a socket closed with unread bytes is reset, and
        // a reset could destroy answers the proxy has not read yet.
        let mut sink = tokio::io::sink();
        let drain = tokio::time::timeout(STOP_DRAIN, tokio::io::copy(&mut reader, &mut sink));
        tokio::join!(writer, drain).0
    } else {
        writer.await
    };
    read_result.and(written.map_err(std::io::Error::other)?)
}

/// Resolves when `stop` turns true (never, if its sender is gone).
async fn stopping(stop: &mut watch::Receiver<bool>) {
    if stop.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Hands one request to the router and collects its answer.
async fn handle(app: Router, r: RelayRequest) -> RelayAnswer {
    let mut req = Request::new(Body::from(r.body));
    *req.method_mut() = r.method;
    *req.headers_mut() = r.headers;
    req.headers_mut().insert(NO_FORWARD, HeaderValue::from_static("1"));
    let answer = match r.target.parse() {
        Ok(uri) => {
            *req.uri_mut() = uri;
            app.oneshot(req).await.unwrap_or_else(|never| match never {})
        }
        Err(_) => crate::error::ApiError(shoal_types::Error::InvalidInput(format!(
            "invalid request target: {}",
            r.target
        )))
        .into_response(),
    };
    let status = answer.status().as_u16();
    let mut headers = HeaderMap::new();
    for name in &ANSWER_HEADERS {
        if let Some(v) = answer.headers().get(name) {
            headers.insert(name.clone(), v.clone());
        }
    }
    match axum::body::to_bytes(answer.into_body(), usize::MAX).await {
        Ok(body) => RelayAnswer { id: r.id, status, headers, body },
        Err(e) => {
            let body = shoal_types::Error::Internal(format!("the answer was cut off: {e}"));
            let resp = crate::error::ApiError(body).into_response();
            let status = resp.status().as_u16();
            let body = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap_or_default();
            RelayAnswer { id: r.id, status, headers: HeaderMap::new(), body }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(id: u64) -> RelayRequest {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, "Bearer t".parse().expect("value"));
        headers.insert("idempotency-key", "k-1".parse().expect("value"));
        RelayRequest {
            id,
            method: Method::POST,
            target: "/v1/bases/x/execute?a=1".into(),
            headers,
            body: Bytes::from_static(b"{\"sql\":\"select 1\"}"),
        }
    }

    #[test]
    fn records_round_trip_and_truncation_is_refused() {
        let mut out = BytesMut::new();
        request(7).encode(&mut out);
        let mut answer_headers = HeaderMap::new();
        answer_headers.insert(header::LOCATION, "http://n2/v1".parse().expect("value"));
        let answer =
            RelayAnswer { id: 7, status: 307, headers: answer_headers, body: Bytes::new() };
        let mut answers = BytesMut::new();
        answer.encode(&mut answers);
        RelayAnswer::stopping(7).encode(&mut answers);

        let out = out.freeze();
        let mut buf = out.clone();
        assert_eq!(RelayRequest::decode(&mut buf).expect("decodes"), request(7));
        assert!(buf.is_empty());
        let mut buf = answers.freeze();
        let got = RelayAnswer::decode(&mut buf).expect("decodes");
        assert_eq!(got, answer);
        assert_eq!(got.stopped_after(), None);
        assert_eq!(RelayAnswer::decode(&mut buf).expect("decodes").stopped_after(), Some(7));
        for cut in 0..out.len() {
            assert!(RelayRequest::decode(&mut out.slice(..cut)).is_err(), "cut at {cut}");
        }
    }

    #[tokio::test]
    async fn frames_carry_every_record_in_order() {
        let (client, server) = tokio::io::duplex(1 << 16);
        let (tx, rx) = mpsc::unbounded_channel();
        let mut tags = Vec::new();
        for id in 1..=50u64 {
            let mut out = BytesMut::new();
            request(id).encode(&mut out);
            tx.send((id, out.freeze())).expect("queued");
        }
        drop(tx);
        let written = tokio::spawn(async move {
            let mut seen = Vec::new();
            write_frames(client, rx, |t| seen.push(t)).await.map(|()| seen)
        });
        let mut reader = server;
        let mut frames = BytesMut::new();
        let mut ids = Vec::new();
        while let Some(mut buf) = read_frame(&mut reader, &mut frames).await.expect("reads") {
            while !buf.is_empty() {
                ids.push(RelayRequest::decode(&mut buf).expect("decodes").id);
            }
        }
        tags.extend(written.await.expect("joins").expect("writes"));
        assert_eq!(ids, (1..=50).collect::<Vec<_>>());
        assert_eq!(tags.last(), Some(&50));
    }
}
