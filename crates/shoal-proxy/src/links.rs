//! The proxy's relay connections: one per node, each carrying every base
//! request the proxy sends that node (see `shoal_http::relay` for the wire).
//!
//! A link is opened on first use and again after it breaks. What a broken
//! link means for its requests decides whether the proxy may send them
//! elsewhere, so it is tracked exactly:
//! - a request the link never wrote (queued while connecting, or behind the
//!   write that failed) is [`Failure::NotSent`], like a refused connection;
//! - a request written and not answered is [`Failure::Lost`]: the node may
//!   have applied it;
//! - a node that stops answers every request it took and names the last
//!   one; later ones are `NotSent`.
//!
//! A node that does not serve the relay is remembered for a while as
//! [`Failure::Unsupported`], and the proxy sends it plain HTTP requests.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use bytes::{Bytes, BytesMut};
use shoal_http::relay::{self, RelayAnswer, RelayRequest};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::sync::{mpsc, oneshot};

/// How long a node that refused a connection is not dialled again.
const DOWN_FOR: Duration = Duration::from_millis(250);
/// How long a node without a relay is sent plain HTTP before the proxy asks again.
const UNSUPPORTED_FOR: Duration = Duration::from_secs(30);

/// A node's answer.
#[derive(Debug)]
pub struct Answer {
    /// Its status.
    pub status: StatusCode,
    /// The headers of `shoal_http::relay::ANSWER_HEADERS` it had.
    pub headers: HeaderMap,
    /// Its body.
    pub body: Bytes,
}

/// Why a request got no answer.
#[derive(Debug)]
pub enum Failure {
    /// The node serves no relay: send the request as plain HTTP.
    Unsupported,
    /// The request never reached the node.
    NotSent(String),
    /// The request was sent and no answer came: it may have been applied.
    Lost(String),
}

/// The relay links to every node the proxy has sent to.
pub struct Links {
    token: String,
    connector: shoal_tls::Connector,
    connect_timeout: Duration,
    links: Mutex<HashMap<String, Arc<Link>>>,
}

struct Link {
    origin: String,
    inner: Mutex<Inner>,
}

enum State {
    Idle,
    Connecting,
    Up(mpsc::UnboundedSender<(u64, Bytes)>),
    Down { until: Instant, why: String },
    Unsupported { until: Instant },
}

struct Inner {
    state: State,
    /// Counts connections; requests belong to the one current when they came.
    generation: u64,
    next_id: u64,
    /// The highest request id handed to a socket write.
    sent_upto: u64,
    /// Requests that came while connecting.
    queued: Vec<(u64, Bytes)>,
    pending: HashMap<u64, Waiter>,
}

struct Waiter {
    generation: u64,
    answer: oneshot::Sender<Result<Answer, Failure>>,
}

impl Links {
    /// Links that authenticate with `token`, open `https://` connections
    /// with `connector` and give up connecting after `connect_timeout`.
    pub fn new(token: String, connector: shoal_tls::Connector, connect_timeout: Duration) -> Links {
        Links { token, connector, connect_timeout, links: Mutex::new(HashMap::new()) }
    }

    fn link(&self, origin: &str) -> Arc<Link> {
        let mut links = self.links.lock().expect("links lock");
        if let Some(link) = links.get(origin) {
            return link.clone();
        }
        links
            .entry(origin.to_string())
            .or_insert_with(|| {
                Arc::new(Link {
                    origin: origin.to_string(),
                    inner: Mutex::new(Inner {
                        state: State::Idle,
                        generation: 0,
                        next_id: 1,
                        sent_upto: 0,
                        queued: Vec::new(),
                        pending: HashMap::new(),
                    }),
                })
            })
            .clone()
    }

    /// Sends one request to the node at `origin` and waits, at most
    /// `timeout`, for its answer.
    pub async fn send(
        &self,
        origin: &str,
        method: &Method,
        target: &str,
        headers: &[(&HeaderName, &HeaderValue)],
        body: &[u8],
        timeout: Duration,
    ) -> Result<Answer, Failure> {
        if !RelayRequest::fits(method, target, body.len()) {
            return Err(Failure::Unsupported);
        }
        let mut record = BytesMut::new();
        // The id is set once the link gives one.
        let headers = headers.iter().map(|(name, value)| (*name, *value));
        relay::encode_request(&mut record, 0, method, target, headers, body);
        let link = self.link(origin);
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut inner = link.inner.lock().expect("link lock");
            let now = Instant::now();
            match &inner.state {
                State::Unsupported { until } if now < *until => return Err(Failure::Unsupported),
                State::Down { until, why } if now < *until => {
                    return Err(Failure::NotSent(why.clone()));
                }
                State::Idle | State::Down { .. } | State::Unsupported { .. } => {
                    inner.generation += 1;
                    inner.state = State::Connecting;
                    tokio::spawn(run(
                        link.clone(),
                        inner.generation,
                        self.token.clone(),
                        self.connector.clone(),
                        self.connect_timeout,
                    ));
                }
                State::Connecting | State::Up(_) => {}
            }
            let id = inner.next_id;
            inner.next_id += 1;
            record[..8].copy_from_slice(&id.to_le_bytes());
            let record = record.freeze();
            let generation = inner.generation;
            inner.pending.insert(id, Waiter { generation, answer: tx });
            match &inner.state {
                State::Up(queue) => {
                    // The writer holds the receiver while the state is Up.
                    let _ = queue.send((id, record));
                }
                _ => inner.queued.push((id, record)),
            }
            id
        };
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Err(Failure::Lost("the relay to the node closed".into())),
            Err(_) => {
                link.inner.lock().expect("link lock").pending.remove(&id);
                Err(Failure::Lost(format!("no answer within {timeout:?}")))
            }
        }
    }
}

/// Connects a link and carries its requests until the connection ends.
async fn run(
    link: Arc<Link>,
    generation: u64,
    token: String,
    connector: shoal_tls::Connector,
    connect_timeout: Duration,
) {
    let connecting = connect(&connector, &link.origin, &token);
    let stream = match tokio::time::timeout(connect_timeout, connecting).await {
        Ok(Ok(s)) => s,
        Ok(Err(Refused::NoRelay(why))) => {
            tracing::info!(node = %link.origin, %why, "the node serves no relay; sending it plain HTTP");
            link.not_connected(
                generation,
                State::Unsupported { until: Instant::now() + UNSUPPORTED_FOR },
                || Failure::Unsupported,
            );
            return;
        }
        Ok(Err(Refused::Io(e))) => {
            let why = format!("cannot connect to {}: {e}", link.origin);
            let state = State::Down { until: Instant::now() + DOWN_FOR, why: why.clone() };
            link.not_connected(generation, state, || Failure::NotSent(why.clone()));
            return;
        }
        Err(_) => {
            let why = format!("connecting to {} took longer than {connect_timeout:?}", link.origin);
            let state = State::Down { until: Instant::now() + DOWN_FOR, why: why.clone() };
            link.not_connected(generation, state, || Failure::NotSent(why.clone()));
            return;
        }
    };
    metrics::counter!("shoal_proxy_relay_connections_total").increment(1);
    let (read, write) = shoal_tls::split(stream);
    let (tx, rx) = mpsc::unbounded_channel();
    {
        let mut inner = link.inner.lock().expect("link lock");
        for record in inner.queued.drain(..) {
            let _ = tx.send(record);
        }
        inner.state = State::Up(tx);
    }
    let marks = link.clone();
    let mut writer = tokio::spawn(relay::write_frames(write, rx, move |last| {
        let mut inner = marks.inner.lock().expect("link lock");
        inner.sent_upto = inner.sent_upto.max(last);
    }));
    let reading = read_answers(read, &link, generation);
    tokio::pin!(reading);
    let why = tokio::select! {
        read = &mut reading => read.err(),
        written = &mut writer => {
            // The link takes no more requests (the node is stopping, or a
            // write failed); answers may still come, until the node closes.
            link.retire(generation);
            let read = reading.await;
            match written {
                Ok(Ok(())) => read.err(),
                Ok(Err(e)) => Some(read.err().unwrap_or(e)),
                Err(e) => Some(std::io::Error::other(e)),
            }
        }
    };
    writer.abort();
    let why = why.map_or_else(|| "the node closed the relay".to_string(), |e| e.to_string());
    tracing::debug!(node = %link.origin, %why, "a relay ended");
    let mut inner = link.inner.lock().expect("link lock");
    inner.retire(generation);
    let sent_upto = inner.sent_upto;
    inner.fail(generation, |id| {
        if id <= sent_upto {
            Some(Failure::Lost(format!("the relay to {} broke: {why}", link.origin)))
        } else {
            Some(Failure::NotSent(format!(
                "the relay to {} broke before sending: {why}",
                link.origin
            )))
        }
    });
}

impl Inner {
    /// The connection of `generation` takes no more requests: the next one
    /// opens a new connection.
    fn retire(&mut self, generation: u64) {
        if self.generation == generation && matches!(self.state, State::Up(_)) {
            self.state = State::Idle;
        }
    }

    /// Ends each waiting request of `generation` that `failure` gives a
    /// failure for (by request id).
    fn fail(&mut self, generation: u64, failure: impl Fn(u64) -> Option<Failure>) {
        let ids: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, w)| w.generation == generation)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            if let Some(f) = failure(id)
                && let Some(w) = self.pending.remove(&id)
            {
                let _ = w.answer.send(Err(f));
            }
        }
    }
}

impl Link {
    /// The connection of `generation` takes no more requests.
    fn retire(&self, generation: u64) {
        self.inner.lock().expect("link lock").retire(generation);
    }

    /// A connection of `generation` could not be made: the link goes to
    /// `state`, and what waited for it fails with `failure()`.
    fn not_connected(&self, generation: u64, state: State, failure: impl Fn() -> Failure) {
        let mut inner = self.inner.lock().expect("link lock");
        if inner.generation != generation {
            return;
        }
        inner.state = state;
        inner.queued.clear();
        inner.fail(generation, |_| Some(failure()));
    }
}

async fn read_answers(
    read: shoal_tls::ReadHalf,
    link: &Link,
    generation: u64,
) -> std::io::Result<()> {
    let mut reader = BufReader::with_capacity(256 << 10, read);
    let mut buf = BytesMut::new();
    while let Some(mut records) = relay::read_frame(&mut reader, &mut buf).await? {
        let mut answers = Vec::new();
        while !records.is_empty() {
            answers.push(RelayAnswer::decode(&mut records).map_err(std::io::Error::other)?);
        }
        let mut inner = link.inner.lock().expect("link lock");
        for answer in answers {
            if let Some(last) = answer.stopped_after() {
                // The node stops: it handles nothing after `last`. Closing
                // this side (the writer ends with the state's sender) lets
                // it close once it has answered the rest.
                inner.retire(generation);
                inner.fail(generation, |id| {
                    (id > last).then(|| Failure::NotSent(format!("{} is stopping", link.origin)))
                });
                continue;
            }
            let Some(w) = inner.pending.remove(&answer.id) else { continue };
            let outcome = match StatusCode::from_u16(answer.status) {
                Ok(status) => Ok(Answer { status, headers: answer.headers, body: answer.body }),
                Err(_) => Err(Failure::Lost(format!("an answer with status {}", answer.status))),
            };
            let _ = w.answer.send(outcome);
        }
    }
    Ok(())
}

enum Refused {
    /// The node answered, but not with a relay.
    NoRelay(String),
    Io(std::io::Error),
}

impl From<std::io::Error> for Refused {
    fn from(e: std::io::Error) -> Self {
        Refused::Io(e)
    }
}

/// Opens a relay: the upgrade request, then the raw stream.
async fn connect(
    connector: &shoal_tls::Connector,
    origin: &str,
    token: &str,
) -> Result<shoal_tls::Stream, Refused> {
    let (_, hostport, _) = shoal_tls::split_url(origin)?;
    let mut stream = connector.connect(origin).await?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {hostport}\r\nConnection: Upgrade\r\nUpgrade: {}\r\n\
         Authorization: Bearer {token}\r\n{}: {}\r\n\r\n",
        relay::PATH,
        relay::PROTOCOL,
        relay::VERSION_HEADER,
        relay::VERSION,
    );
    stream.write_all(request.as_bytes()).await?;
    // The answer's head, byte by byte: what follows it is the node's.
    let mut head = Vec::with_capacity(256);
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await? == 0 {
            return Err(Refused::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the node closed during the upgrade",
            )));
        }
        head.push(byte[0]);
        if head.len() > 16 << 10 {
            return Err(Refused::NoRelay("an oversized upgrade answer".into()));
        }
    }
    let head = String::from_utf8_lossy(&head);
    let line = head.lines().next().unwrap_or("").to_string();
    match head.split_whitespace().nth(1) {
        Some("101") => Ok(stream),
        _ => Err(Refused::NoRelay(line)),
    }
}
