//! Sending a base request to its bucket's leader, and the answer back.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use shoal_http::error::ApiError;
use shoal_http::headers::{FORWARDED_HOST, NO_FORWARD};
use shoal_types::{BaseId, BucketId, Error};

use crate::Proxy;
use crate::links::{Answer, Failure};
use crate::retry::{self, Next};
use crate::view::Target;

/// The request headers passed on to the node; the last is the address the
/// client used (`X-Forwarded-Host`, else `Host`), for answers that name a
/// server (the SeaTable API's `dtable_server`).
static REQUEST_HEADERS: [HeaderName; 5] = [
    header::AUTHORIZATION,
    header::CONTENT_TYPE,
    HeaderName::from_static("idempotency-key"),
    // The scheme the client used, for answers that name a server.
    HeaderName::from_static(shoal_http::headers::FORWARDED_PROTO),
    HeaderName::from_static(FORWARDED_HOST),
];

/// The answer headers passed back to the client.
const ANSWER_HEADERS: [HeaderName; 4] = [
    header::CONTENT_TYPE,
    header::WWW_AUTHENTICATE,
    header::RETRY_AFTER,
    HeaderName::from_static("x-shoal-applied-index"),
];

/// Parses a base id from a path segment (400 if it is not a UUID).
pub fn base_id(id: &str) -> Result<BaseId, ApiError> {
    id.parse().map_err(ApiError)
}

/// A path that does not decode (e.g. bad percent-encoding) as a JSON 400.
pub fn bad_path(r: PathRejection) -> Response {
    ApiError(Error::InvalidInput(format!("invalid path: {}", r.body_text()))).into_response()
}

/// `405` for a method a route does not take.
pub async fn method_not_allowed() -> Response {
    let body = Error::InvalidInput("method not allowed on this route".into()).to_body();
    (axum::http::StatusCode::METHOD_NOT_ALLOWED, axum::Json(body)).into_response()
}

/// Whether a request asks for a WebSocket.
pub(crate) fn is_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// Reads a request body, bounded by `--max-body-size`.
pub async fn body(proxy: &Proxy, body: Body) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, proxy.options.max_body_bytes).await.map_err(|_| {
        ApiError(Error::TooLarge(
            "the request body is larger than the proxy accepts (see --max-body-size)".into(),
        ))
    })
}

/// `/v1/bases/{id}` and everything under it.
pub async fn base(
    State(proxy): State<Arc<Proxy>>,
    params: Result<Path<Vec<(String, String)>>, PathRejection>,
    req: Request,
) -> Response {
    let params = match params {
        Ok(Path(p)) => p,
        Err(r) => return bad_path(r),
    };
    let id = params.iter().find(|(k, _)| k == "id").map(|(_, v)| v.as_str()).unwrap_or_default();
    let bucket = match base_id(id) {
        Ok(id) => id.bucket(),
        Err(e) => return e.into_response(),
    };
    if is_upgrade(req.headers()) {
        return crate::ws::relay(proxy, bucket, req).await;
    }
    pass_on(&proxy, bucket, req).await
}

/// Reads a base request's body and sends the request to `bucket`'s leader.
pub async fn pass_on(proxy: &Proxy, bucket: BucketId, req: Request) -> Response {
    let (parts, b) = req.into_parts();
    let bytes = match body(proxy, b).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let path = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    send(proxy, bucket, parts.method, path, &parts.headers, bytes).await
}

/// Sends a request for `bucket` until a node gives an answer to pass on, or
/// the retry deadline passes.
pub async fn send(
    proxy: &Proxy,
    bucket: BucketId,
    method: Method,
    path: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
    send_to(proxy, bucket, false, method, path, headers, body).await
}

/// The request headers a node is sent ([`REQUEST_HEADERS`]), borrowed from
/// the client's request.
struct Passed<'h> {
    pairs: [(&'static HeaderName, &'h HeaderValue); 5],
    len: usize,
}

impl<'h> Passed<'h> {
    fn of(headers: &'h HeaderMap) -> Passed<'h> {
        static NONE: HeaderValue = HeaderValue::from_static("");
        let mut passed = Passed { pairs: [(&REQUEST_HEADERS[0], &NONE); 5], len: 0 };
        for (i, name) in REQUEST_HEADERS.iter().enumerate() {
            let mut value = headers.get(name);
            if i == REQUEST_HEADERS.len() - 1 {
                value = value.or_else(|| headers.get(header::HOST));
            }
            if let Some(v) = value {
                passed.pairs[passed.len] = (name, v);
                passed.len += 1;
            }
        }
        passed
    }

    fn pairs(&self) -> &[(&'static HeaderName, &'h HeaderValue)] {
        &self.pairs[..self.len]
    }
}

/// [`send`], to the bucket's replicas in the map's order when `sticky`
/// (see [`Attempts::sticky`]).
pub async fn send_to(
    proxy: &Proxy,
    bucket: BucketId,
    sticky: bool,
    method: Method,
    path: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
    let repeatable = retry::repeatable(
        &method,
        path.split('?').next().unwrap_or(path),
        headers.contains_key("idempotency-key"),
    );
    let writes = method != Method::GET && method != Method::HEAD && !repeatable_read(&method, path);
    let passed = Passed::of(headers);
    let mut attempts = Attempts::new(proxy, bucket).with_path(path).sticky(sticky);
    let mut last: Option<Response> = None;
    while let Some((target, dest)) = attempts.next().await {
        // The deadline bounds when attempts start, not how long a started
        // one may run: a slow write is not cut short for being late.
        let answer = match attempt(proxy, &method, &dest, &passed, &body).await {
            Ok(a) => a,
            Err(failed) => {
                if let Some(t) = &target {
                    proxy.view.forget_leader(bucket, &t.node);
                }
                tracing::debug!(url = %dest, error = %failed.why, "a node did not answer");
                match retry::after_failure(!failed.sent, repeatable) {
                    Next::TryNext | Next::Follow(_) => {
                        metrics::counter!("shoal_proxy_retries_total").increment(1);
                        continue;
                    }
                    Next::Answer => {
                        return ApiError(Error::Unavailable(format!(
                            "the node at {dest} failed before answering ({}); the write may or may \
                             not have been applied: send it with an Idempotency-Key to make retries safe",
                            failed.why
                        )))
                        .into_response();
                    }
                }
            }
        };
        let status = answer.status;
        let location = answer.headers.get(header::LOCATION).and_then(|v| v.to_str().ok());
        match retry::after_answer(status, location, repeatable) {
            Next::Follow(to) => {
                if let Some(node) = proxy.view.node_at(&to) {
                    proxy.view.set_leader(bucket, node);
                }
                attempts.follow(to);
                continue;
            }
            Next::TryNext => {
                if let Some(t) = &target {
                    proxy.view.forget_leader(bucket, &t.node);
                }
                metrics::counter!("shoal_proxy_retries_total").increment(1);
                last = Some(relay_answer(answer));
                continue;
            }
            Next::Answer => {}
        }
        // A committed write came from the leader.
        if writes
            && status.is_success()
            && let Some(t) = &target
        {
            proxy.view.set_leader_target(bucket, t);
        }
        return relay_answer(answer);
    }
    last.unwrap_or_else(|| {
        let why = if proxy.view.has_map() {
            format!("no replica of bucket {bucket} answered in time; retry shortly")
        } else {
            "the proxy has not read the placement map yet; retry shortly".to_string()
        };
        ApiError(Error::Unavailable(why)).into_response()
    })
}

/// An attempt that got no answer.
struct Failed {
    /// Whether the request may have reached the node.
    sent: bool,
    why: String,
}

/// One attempt at one node: over the node's relay where it has one, else
/// as a plain HTTP request.
async fn attempt(
    proxy: &Proxy,
    method: &Method,
    dest: &Dest<'_>,
    headers: &Passed<'_>,
    body: &Bytes,
) -> Result<Answer, Failed> {
    let timeout = proxy.options.request_timeout;
    // A node URL with a path of its own is joined with the request's first.
    let joined;
    let split = match dest.origin_and_target() {
        Some(split) => Some(split),
        None => {
            joined = dest.url();
            split_url(&joined)
        }
    };
    if let Some(links) = &proxy.links
        && let Some((origin, target)) = split
    {
        match links.send(origin, method, target, headers.pairs(), body, timeout).await {
            Ok(a) => return Ok(a),
            Err(Failure::Unsupported) => {}
            Err(Failure::NotSent(why)) => return Err(Failed { sent: false, why }),
            Err(Failure::Lost(why)) => return Err(Failed { sent: true, why }),
        }
    }
    let mut passed = HeaderMap::new();
    for (name, value) in headers.pairs() {
        passed.insert(*name, (*value).clone());
    }
    let out = proxy
        .http
        .request(method.clone(), dest.url())
        .header(NO_FORWARD, "1")
        .timeout(timeout)
        .headers(passed)
        .body(body.clone());
    match out.send().await {
        Ok(a) => answer_of(a).await.map_err(|why| Failed { sent: true, why }),
        Err(e) => Err(Failed { sent: !e.is_connect(), why: e.to_string() }),
    }
}

/// A node's HTTP answer, read whole.
pub async fn answer_of(answer: reqwest::Response) -> Result<Answer, String> {
    let status = answer.status();
    let mut headers = HeaderMap::new();
    for name in &shoal_http::relay::ANSWER_HEADERS {
        if let Some(v) = answer.headers().get(name) {
            headers.insert(name.clone(), v.clone());
        }
    }
    let body = answer.bytes().await.map_err(|e| format!("the node's answer was cut off: {e}"))?;
    Ok(Answer { status, headers, body })
}

fn repeatable_read(method: &Method, path: &str) -> bool {
    *method == Method::POST && path.split('?').next().unwrap_or(path).ends_with("/query")
}

/// Turns a node's answer into the proxy's: its status, body and the
/// headers of [`ANSWER_HEADERS`] (a body without a type is
/// `application/octet-stream`).
pub fn relay_answer(answer: Answer) -> Response {
    let Answer { status, mut headers, body } = answer;
    // `headers` holds at most the relay's answer headers; all but the
    // redirect target are passed on.
    headers.remove(header::LOCATION);
    debug_assert!(headers.keys().all(|k| ANSWER_HEADERS.contains(k)));
    if !headers.contains_key(header::CONTENT_TYPE) {
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    }
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    resp
}

/// Where one attempt goes: a node of the map, with the request's path and
/// query, or a URL a node redirected to.
pub enum Dest<'a> {
    /// A node and the path and query to append to its URL.
    Node(Arc<Target>, &'a str),
    /// A whole URL.
    Url(String),
}

impl Dest<'_> {
    /// The whole URL.
    pub fn url(&self) -> String {
        self.to_string()
    }

    /// The origin (scheme, host and port) and the path and query, for an
    /// `http://` or `https://` destination; `None` also for a node whose URL
    /// has a path of its own (see [`Dest::url`]).
    fn origin_and_target(&self) -> Option<(&str, &str)> {
        match self {
            Dest::Node(t, path) => {
                let (origin, _) = split_url(&t.url)?;
                let path = if path.is_empty() { "/" } else { path };
                (origin.len() == t.url.len()).then_some((origin, path))
            }
            Dest::Url(url) => split_url(url),
        }
    }
}

/// An `http://` or `https://` URL's origin (scheme, host and port) and its
/// path and query (`/` if it has none).
fn split_url(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://"))?;
    let hostport = rest.find('/').unwrap_or(rest.len());
    let (origin, target) = url.split_at(url.len() - rest.len() + hostport);
    Some((origin, if target.is_empty() { "/" } else { target }))
}

impl std::fmt::Display for Dest<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dest::Node(t, path) => write!(f, "{}{path}", t.url),
            Dest::Url(url) => f.write_str(url),
        }
    }
}

/// The sequence of nodes one request goes to: the bucket's cached leader,
/// then its candidates in order, redirects as they come, and after each
/// round a pause, until the deadline.
pub struct Attempts<'a> {
    proxy: &'a Proxy,
    bucket: BucketId,
    /// When to stop.
    pub deadline: Instant,
    queue: Vec<Arc<Target>>,
    /// The cached leader the round began with, before the rest of its
    /// candidates were listed.
    leader_first: Option<Arc<Target>>,
    follow: Option<String>,
    round: u32,
    hops: u32,
    path: &'a str,
    sticky: bool,
}

/// Redirects followed in a row before the proxy pauses (leadership moving
/// back and forth must not spin).
const MAX_HOPS: u32 = 4;

impl<'a> Attempts<'a> {
    /// The attempts for a request of `bucket`.
    pub fn new(proxy: &'a Proxy, bucket: BucketId) -> Attempts<'a> {
        Attempts {
            proxy,
            bucket,
            deadline: Instant::now() + proxy.options.retry_deadline,
            queue: Vec::new(),
            leader_first: None,
            follow: None,
            round: 0,
            hops: 0,
            path: "",
            sticky: false,
        }
    }

    /// Tries the bucket's replicas in the map's order rather than the
    /// leader first: requests that must reach the same node as the ones
    /// before (a Socket.IO session) stay put while leadership moves.
    pub fn sticky(mut self, on: bool) -> Self {
        self.sticky = on;
        self
    }

    /// Sets the path and query appended to node URLs (default: none).
    pub fn with_path(mut self, path: &'a str) -> Self {
        self.path = path;
        self
    }

    /// Goes to `url` next.
    pub fn follow(&mut self, url: String) {
        self.follow = Some(url);
    }

    /// The next node (if it is a known one) and where to send; `None` once
    /// the deadline has passed.
    pub async fn next(&mut self) -> Option<(Option<Arc<Target>>, Dest<'a>)> {
        loop {
            if Instant::now() >= self.deadline {
                return None;
            }
            if let Some(url) = self.follow.take()
                && self.hops < MAX_HOPS
            {
                self.hops += 1;
                let target =
                    self.proxy.view.node_at(&url).and_then(|node| self.proxy.view.live_node(&node));
                return Some((target, Dest::Url(url)));
            }
            if self.queue.is_empty() {
                if let Some(tried) = self.leader_first.take() {
                    // The rest of the round that began with the cached leader.
                    self.queue = self.proxy.view.candidates(self.bucket);
                    self.queue.retain(|t| t.node != tried.node);
                } else {
                    if self.round > 0 {
                        let pause = retry::backoff(
                            self.round - 1,
                            self.proxy.options.backoff,
                            self.proxy.options.max_backoff,
                        );
                        let left = self.deadline.saturating_duration_since(Instant::now());
                        if pause >= left {
                            return None;
                        }
                        tokio::time::sleep(pause).await;
                    }
                    self.round += 1;
                    self.hops = 0;
                    if !self.sticky
                        && let Some(leader) = self.proxy.view.live_leader(self.bucket)
                    {
                        // The common case: one request to the leader, with
                        // no list of the others made.
                        self.leader_first = Some(leader.clone());
                        return Some((Some(leader.clone()), Dest::Node(leader, self.path)));
                    }
                    self.queue = if self.sticky {
                        self.proxy.view.replicas(self.bucket)
                    } else {
                        self.proxy.view.candidates(self.bucket)
                    };
                }
                self.queue.reverse();
                if self.queue.is_empty() {
                    // No map or no live replica yet: wait for the next round.
                    continue;
                }
            }
            if let Some(t) = self.queue.pop() {
                return Some((Some(t.clone()), Dest::Node(t, self.path)));
            }
        }
    }
}

/// Adds the path to a node's base URL (used by callers that build URLs per target).
pub fn join(base: &str, path: &str) -> String {
    format!("{}{path}", base.trim_end_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upgrades_are_recognized() {
        let mut h = HeaderMap::new();
        assert!(!is_upgrade(&h));
        h.insert(header::UPGRADE, "WebSocket".parse().expect("value"));
        assert!(is_upgrade(&h));
        h.insert(header::UPGRADE, "h2c".parse().expect("value"));
        assert!(!is_upgrade(&h));
    }

    #[test]
    fn destinations_split_into_origin_and_target() {
        let node = |url: &str| {
            Arc::new(Target { node: shoal_types::NodeId("n1".into()), url: url.into() })
        };
        let d = Dest::Node(node("http://127.0.0.1:7001"), "/v1/bases/x/execute?a=1");
        assert_eq!(
            d.origin_and_target(),
            Some(("http://127.0.0.1:7001", "/v1/bases/x/execute?a=1"))
        );
        assert_eq!(
            Dest::Node(node("https://a:1"), "").origin_and_target(),
            Some(("https://a:1", "/"))
        );
        // A node URL with a path of its own is joined first.
        let d = Dest::Node(node("http://a:1/shoal"), "/v1");
        assert_eq!(d.origin_and_target(), None);
        assert_eq!(split_url(&d.url()), Some(("http://a:1", "/shoal/v1")));
        let d = Dest::Url("http://a:1/v1/bases/x?y=2".into());
        assert_eq!(d.origin_and_target(), Some(("http://a:1", "/v1/bases/x?y=2")));
        assert_eq!(Dest::Url("http://a:1".into()).origin_and_target(), Some(("http://a:1", "/")));
        assert_eq!(Dest::Url("ftp://a:1/x".into()).origin_and_target(), None);
    }

    #[test]
    fn queries_are_reads() {
        assert!(repeatable_read(&Method::POST, "/v1/bases/x/query?y=1"));
        assert!(!repeatable_read(&Method::POST, "/v1/bases/x/execute"));
        assert_eq!(join("http://a:1/", "/v1"), "http://a:1/v1");
    }
}
