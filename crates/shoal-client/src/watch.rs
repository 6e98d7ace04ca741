//! Following a base's change feed (`GET /v1/bases/{id}/changes`), across
//! disconnects and failovers.
//!
//! Every replica of a bucket publishes the same events at the same log
//! indexes, so the feed can resume on any of them. [`Watch`] remembers the
//! last index `L` it delivered and how many events of `L` it delivered
//! (`k`): the events of one index arrive together, but a connection can break
//! between them. On reconnecting it asks for the changes after `L - 1` and
//! skips the first `k` events of `L`, so each event is delivered once.
//!
//! Errors that another try can fix (a refused or broken connection, `503`,
//! `421` from a node without the base, the server ending a feed because
//! this subscriber was too slow) make it move to the next endpoint, after a
//! bounded backoff. Errors that another try cannot fix (`400`, `401`,
//! `404`) are returned.
//!
//! Endpoints are `http://host:port` (`ws://`) or `https://host:port`
//! (`wss://`, verified with [`WatchOptions::tls`]) URLs.

use std::time::Duration;

use futures_util::StreamExt as _;
use shoal_types::api::{ChangeOp, FeedMessage};
use shoal_types::{BaseId, Error, ErrorBody, Result};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

/// How a [`Watch`] connects and retries.
#[derive(Clone, Debug)]
pub struct WatchOptions {
    /// The first wait before reconnecting; doubles on each failure in a row.
    pub min_backoff: Duration,
    /// The longest wait before reconnecting.
    pub max_backoff: Duration,
    /// How long to wait for the connection and the upgrade.
    pub connect_timeout: Duration,
    /// A feed silent for this long (the server pings every 15 s) counts as
    /// broken.
    pub idle_timeout: Duration,
    /// How `https://` endpoints are verified (see [`crate::tls_config`]);
    /// without it they are refused.
    pub tls: Option<std::sync::Arc<shoal_tls::ClientConfig>>,
}

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions {
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(45),
            tls: None,
        }
    }
}

/// What a [`Watch`] yields.
#[derive(Clone, Debug, PartialEq)]
pub enum WatchEvent {
    /// A message of the feed: a change or a resync.
    Message(FeedMessage),
    /// The connection was lost or refused; the watch goes on at another
    /// endpoint (or the same one later).
    Reconnecting {
        /// The endpoint that failed.
        endpoint: String,
        /// Why.
        reason: String,
    },
}

type Socket = WebSocketStream<shoal_tls::Stream>;

/// A resuming change-feed subscriber.
pub struct Watch {
    endpoints: Vec<String>,
    token: Option<String>,
    base: BaseId,
    options: WatchOptions,
    /// Which endpoint to use next.
    next_endpoint: usize,
    socket: Option<Socket>,
    /// Resume after this index when no event was delivered since.
    after: Option<u64>,
    /// The last index delivered and how many of its events were.
    last: Option<(u64, usize)>,
    /// Events of this index still to skip: already delivered before a reconnect.
    skip: Option<(u64, usize)>,
    failures: u32,
    ended: bool,
}

impl Watch {
    /// A watch of `base` through `endpoints` (tried in turn), from after
    /// index `after` ([`None`]: from now on). Nothing connects until
    /// [`Watch::next`].
    pub fn new(
        endpoints: &[String],
        token: Option<String>,
        base: BaseId,
        after: Option<u64>,
        options: WatchOptions,
    ) -> Result<Watch> {
        let endpoints: Vec<String> = endpoints
            .iter()
            .map(|e| e.trim().trim_end_matches('/').to_string())
            .filter(|e| !e.is_empty())
            .collect();
        if endpoints.is_empty() {
            return Err(Error::InvalidInput("no endpoint given".into()));
        }
        for e in &endpoints {
            if !e.starts_with("http://") && !e.starts_with("https://") {
                return Err(Error::InvalidInput(format!(
                    "endpoint {e:?}: the change feed client takes http:// or https:// URLs"
                )));
            }
            if e.starts_with("https://") && options.tls.is_none() {
                return Err(Error::InvalidInput(format!(
                    "endpoint {e:?}: an https:// endpoint needs a CA to verify it (WatchOptions::tls)"
                )));
            }
        }
        Ok(Watch {
            endpoints,
            token,
            base,
            options,
            next_endpoint: 0,
            socket: None,
            after,
            last: None,
            skip: None,
            failures: 0,
            ended: false,
        })
    }

    /// The index after which a new connection asks for changes, and how
    /// many events of the index after it to skip.
    fn resume_point(&self) -> (Option<u64>, Option<(u64, usize)>) {
        match self.last {
            Some((index, count)) => (Some(index - 1), Some((index, count))),
            None => (self.after, None),
        }
    }

    /// The next event; `Ok(None)` once the base was dropped (after its
    /// `base_dropped` event). An error ends the watch.
    pub async fn next(&mut self) -> Result<Option<WatchEvent>> {
        loop {
            if self.ended {
                return Ok(None);
            }
            let Some(socket) = self.socket.as_mut() else {
                let endpoint = self.endpoints[self.next_endpoint].clone();
                if self.failures > 0 {
                    let factor = 1u32 << (self.failures - 1).min(16);
                    let wait = self.options.min_backoff.saturating_mul(factor);
                    tokio::time::sleep(wait.min(self.options.max_backoff)).await;
                }
                match self.connect(&endpoint).await {
                    Ok(s) => self.socket = Some(s),
                    Err(e) if retryable(&e) => return Ok(Some(self.failed(endpoint, e))),
                    Err(e) => return Err(e),
                }
                continue;
            };
            let endpoint = self.endpoints[self.next_endpoint].clone();
            let message = match tokio::time::timeout(self.options.idle_timeout, socket.next()).await
            {
                Err(_) => {
                    let e = Error::Timeout(format!(
                        "nothing from the feed in {:?}",
                        self.options.idle_timeout
                    ));
                    return Ok(Some(self.failed(endpoint, e)));
                }
                Ok(None) => {
                    return Ok(Some(self.failed(endpoint, Error::Unavailable("closed".into()))));
                }
                Ok(Some(Err(e))) => {
                    return Ok(Some(self.failed(endpoint, Error::Unavailable(e.to_string()))));
                }
                Ok(Some(Ok(m))) => m,
            };
            let text = match message {
                Message::Text(t) => t,
                Message::Close(_) => {
                    let e = Error::Unavailable("the server closed the feed".into());
                    return Ok(Some(self.failed(endpoint, e)));
                }
                // Pings are answered by the library; nothing else is sent.
                _ => continue,
            };
            let message: FeedMessage = serde_json::from_str(text.as_str()).map_err(|e| {
                Error::Internal(format!("unreadable feed message from {endpoint}: {e}"))
            })?;
            match &message {
                FeedMessage::Change(e) => {
                    if let Some((index, left)) = self.skip {
                        if e.index == index && left > 0 {
                            self.skip = (left > 1).then_some((index, left - 1));
                            continue;
                        }
                        self.skip = None;
                    }
                    self.last = match self.last {
                        Some((index, n)) if index == e.index => Some((index, n + 1)),
                        _ => Some((e.index, 1)),
                    };
                    self.failures = 0;
                    if e.op == ChangeOp::BaseDropped {
                        self.ended = true;
                        if let Some(mut s) = self.socket.take() {
                            let _ = s.close(None).await;
                        }
                    }
                }
                FeedMessage::Resync(r) => {
                    self.last = None;
                    self.skip = None;
                    self.after = Some(r.index);
                    self.failures = 0;
                }
                FeedMessage::Error(body) => {
                    let e: Error = body.clone().into();
                    if retryable(&e) {
                        return Ok(Some(self.failed(endpoint, e)));
                    }
                    return Err(e);
                }
            }
            return Ok(Some(WatchEvent::Message(message)));
        }
    }

    /// Forgets the connection and moves on to the next endpoint.
    fn failed(&mut self, endpoint: String, e: Error) -> WatchEvent {
        self.socket = None;
        self.failures = self.failures.saturating_add(1);
        self.next_endpoint = (self.next_endpoint + 1) % self.endpoints.len();
        WatchEvent::Reconnecting { endpoint, reason: e.to_string() }
    }

    async fn connect(&mut self, endpoint: &str) -> Result<Socket> {
        let (after, skip) = self.resume_point();
        let (tls, hostport, _) =
            shoal_tls::split_url(endpoint).map_err(|e| Error::InvalidInput(e.to_string()))?;
        let scheme = if tls { "wss" } else { "ws" };
        let mut url = format!("{scheme}://{hostport}/v1/bases/{}/changes", self.base);
        if let Some(a) = after {
            url.push_str(&format!("?after={a}"));
        }
        let mut request = url
            .as_str()
            .into_client_request()
            .map_err(|e| Error::InvalidInput(format!("bad feed URL {url}: {e}")))?;
        if let Some(t) = &self.token {
            let value = format!("Bearer {t}")
                .parse()
                .map_err(|_| Error::InvalidInput("the token is not a valid header value".into()))?;
            request.headers_mut().insert("authorization", value);
        }
        let connector = shoal_tls::Connector::new(self.options.tls.clone());
        let connecting = async move {
            let stream = connector.connect(endpoint).await?;
            Ok::<_, std::io::Error>(tokio_tungstenite::client_async(request, stream).await)
        };
        let answer = match tokio::time::timeout(self.options.connect_timeout, connecting).await {
            Err(_) => {
                return Err(Error::Timeout(format!("cannot connect to {endpoint} in time")));
            }
            // A certificate the CA did not sign, or no CA: another try
            // cannot mend it.
            Ok(Err(e)) if shoal_tls::is_tls_refusal(&e) => {
                return Err(Error::InvalidInput(format!("{endpoint}: {e}")));
            }
            Ok(Err(e)) => return Err(Error::Unavailable(format!("{endpoint}: {e}"))),
            Ok(Ok(answer)) => answer,
        };
        let (socket, _) = match answer {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                let status = response.status();
                let body = response.body().as_deref().unwrap_or_default();
                return Err(match serde_json::from_slice::<ErrorBody>(body) {
                    Ok(b) => b.into(),
                    Err(_) => Error::Unavailable(format!("{endpoint} answered {status}")),
                });
            }
            Err(e) => return Err(Error::Unavailable(format!("{endpoint}: {e}"))),
            Ok(s) => s,
        };
        self.skip = skip;
        Ok(socket)
    }
}

/// Whether another endpoint or a later try may succeed.
fn retryable(e: &Error) -> bool {
    e.is_retryable() || matches!(e, Error::Misdirected { .. } | Error::Io(_) | Error::Internal(_))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_checked() {
        let id = BaseId::random();
        let w = |e: &[&str]| {
            let e: Vec<String> = e.iter().map(|s| s.to_string()).collect();
            Watch::new(&e, None, id, None, WatchOptions::default())
        };
        assert!(w(&[]).is_err());
        assert!(w(&["https://x"]).is_err());
        assert!(w(&["http://a:1/", " http://b:2"]).is_ok());
    }

    #[test]
    fn resuming_asks_for_the_index_before_the_last_and_skips_what_was_seen() {
        let id = BaseId::random();
        let endpoints = vec!["http://127.0.0.1:1".to_string()];
        let mut w = Watch::new(&endpoints, None, id, Some(4), WatchOptions::default()).unwrap();
        assert_eq!(w.resume_point(), (Some(4), None));
        w.last = Some((7, 2));
        assert_eq!(w.resume_point(), (Some(6), Some((7, 2))));
    }
}
