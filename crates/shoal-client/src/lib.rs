//! A Rust client for Shoal's HTTP API that rides through failures.
//!
//! Every call returns Shoal's own [`Error`], rebuilt from the server's
//! `{"error": {"code", "message"}}` answer, so callers match on variants,
//! never on messages. A server that cannot be reached is `Unavailable`.
//!
//! A client takes one or more endpoints: nodes, proxies, or both. Requests
//! about a base go to the leader of the base's bucket, which the client
//! looks up (`GET /v1/bases/{id}/location` on any endpoint) and caches per
//! bucket; any sign that leadership moved drops the cached leader. Other
//! requests go to the current endpoint; one that cannot be reached hands
//! over to the next.
//!
//! Failed attempts are retried with jittered exponential backoff until
//! [`Options::retry_deadline`] (the rules are in `docs/client.md`): a
//! request that never left is always retried; reads are retried on lost
//! answers and passing errors; writes only when they carry an idempotency
//! key, which the client makes up for every write unless told not to
//! ([`Options::idempotency_keys`]). One key serves every attempt of a call,
//! so the server applies a write at most once.

mod retry;
mod routing;
pub mod watch;

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::{CONTENT_TYPE, LOCATION};
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use shoal_types::api::{
    ApiToken, ApiTokenList, BaseInfo, BaseList, BaseLocation, BucketsStatus, Checksum,
    ClusterStatus, CreateApiTokenRequest, CreateBaseRequest, ExecuteRequest, ExecuteResponse,
    Health, InsertRowsResponse, NodeChange, Params, QueryRequest, QueryResponse, RebalanceRequest,
    Row, RowList, Statement, TableList, UpdateRowRequest, WriteResponse,
};
use shoal_types::{BaseId, BucketId, Error, ErrorBody, NodeId, Result};

use crate::retry::{Failure, Kind};
use crate::routing::Routes;

/// How a client connects, waits and retries.
#[derive(Clone, Debug)]
pub struct Options {
    /// How long to wait for a TCP (and TLS) connection to one URL before
    /// moving on to the next. Default 2 s.
    pub connect_timeout: Duration,
    /// How long one attempt may take, from sending to the end of the answer.
    /// Default 30 s.
    pub request_timeout: Duration,
    /// How long after a call starts it may still begin a new attempt. No
    /// attempt starts after it; one under way is not cut short. Default 20 s.
    pub retry_deadline: Duration,
    /// The pause before the first retry; it doubles on each retry after
    /// that. Each pause is jittered into its upper half. Default 50 ms.
    pub backoff_min: Duration,
    /// The longest pause between two attempts. Default 1 s.
    pub backoff_max: Duration,
    /// How long a URL that could not be reached is avoided while others
    /// are up. Default 2 s.
    pub down_for: Duration,
    /// Give every write an idempotency key (a random UUID) unless the caller
    /// gave one, so that a write can be retried after a lost answer. Without
    /// a key a write is retried only when it was never sent. Default true.
    pub idempotency_keys: bool,
    /// Send requests about a base straight to its bucket's leader, as the
    /// location answer names it. Turn off when the nodes' URLs cannot be
    /// reached from the client (nodes behind proxies): every request then
    /// goes to the endpoints. Default true.
    pub follow_leaders: bool,
    /// How `https://` endpoints are verified: made by [`tls_config`] from
    /// the CA that signed the servers' certificates. Without it an
    /// `https://` server is refused (no CA is trusted by default).
    pub tls: Option<Arc<shoal_tls::ClientConfig>>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(30),
            retry_deadline: Duration::from_secs(20),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(1),
            down_for: Duration::from_secs(2),
            idempotency_keys: true,
            follow_leaders: true,
            tls: None,
        }
    }
}

/// A client of a Shoal cluster (or of one standalone server). Cheap to
/// clone: clones share connections, endpoints and the leader cache.
#[derive(Clone, Debug)]
pub struct Client {
    shared: Arc<Shared>,
    /// The key the next write through this handle carries, set by
    /// [`Client::with_idempotency_key`].
    key: Option<String>,
}

#[derive(Debug)]
struct Shared {
    routes: Routes,
    token: Option<String>,
    http: reqwest::Client,
    options: Options,
}

/// Which rows to list.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RowsQuery {
    /// Page size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    /// Rows to skip.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// Column to order by (`_rowid` by default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order_by: Option<String>,
    /// Descending order.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub desc: Option<bool>,
}

impl RowsQuery {
    fn pairs(&self) -> Vec<(&'static str, String)> {
        let mut q = Vec::new();
        if let Some(v) = self.limit {
            q.push(("limit", v.to_string()));
        }
        if let Some(v) = self.offset {
            q.push(("offset", v.to_string()));
        }
        if let Some(v) = &self.order_by {
            q.push(("order_by", v.clone()));
        }
        if let Some(v) = self.desc {
            q.push(("desc", v.to_string()));
        }
        q
    }
}

/// One call, as every attempt sends it.
struct Request {
    method: Method,
    path: String,
    query: Vec<(&'static str, String)>,
    body: Option<bytes::Bytes>,
    content_type: &'static str,
    /// The base the request is about: it goes to the leader of its bucket.
    base: Option<BaseId>,
    kind: Kind,
    key: Option<String>,
}

impl Request {
    fn new(method: Method, path: String) -> Request {
        Request {
            method,
            path,
            query: Vec::new(),
            body: None,
            content_type: "application/json",
            base: None,
            kind: Kind::Read,
            key: None,
        }
    }

    fn base(mut self, id: BaseId) -> Request {
        self.base = Some(id);
        self
    }

    fn query(mut self, query: Vec<(&'static str, String)>) -> Request {
        self.query = query;
        self
    }

    fn json(mut self, body: &impl Serialize) -> Result<Request> {
        let bytes = serde_json::to_vec(body)
            .map_err(|e| Error::InvalidInput(format!("cannot encode the request: {e}")))?;
        self.body = Some(bytes.into());
        Ok(self)
    }

    /// A body that is not JSON.
    fn bytes(mut self, body: bytes::Bytes, content_type: &'static str) -> Request {
        self.body = Some(body);
        self.content_type = content_type;
        self
    }

    /// Marks the request as a write, with `key` when it has one.
    fn write(mut self, key: Option<String>) -> Request {
        self.kind = Kind::Write { keyed: key.is_some() };
        self.key = key;
        self
    }
}

/// The TLS configuration of a client that trusts the CA certificates in
/// `ca_pem` (the contents of a PEM file). With `identity` (a certificate
/// chain and its private key, both PEM), the client also shows that
/// certificate to servers that ask for one. Errors name `ca_what`.
pub fn tls_config(
    ca_pem: &[u8],
    ca_what: &str,
    identity: Option<(&[u8], &[u8])>,
) -> Result<Arc<shoal_tls::ClientConfig>> {
    let bad = |e: shoal_tls::Error| Error::InvalidInput(e.to_string());
    let roots = shoal_tls::parse_roots(ca_pem, ca_what).map_err(bad)?;
    let identity = match identity {
        Some((cert, key)) => Some(
            shoal_tls::Identity::from_pem(cert, "the certificate", key, "the key").map_err(bad)?,
        ),
        None => None,
    };
    shoal_tls::client_config(roots, identity.as_ref()).map_err(bad)
}

impl Client {
    /// A client for `endpoint` (e.g. `http://127.0.0.1:7070`) with a bearer
    /// token and default [`Options`]. Several endpoints may be given,
    /// separated by commas (`http://n1:7070,http://n2:7070`).
    pub fn new(endpoint: &str, token: Option<String>) -> Result<Client> {
        Client::with_options(&[endpoint], token, Options::default())
    }

    /// A client for several endpoints (nodes, proxies, or both).
    pub fn with_endpoints<S: AsRef<str>>(endpoints: &[S], token: Option<String>) -> Result<Client> {
        Client::with_options(endpoints, token, Options::default())
    }

    /// A client for several endpoints with chosen [`Options`]. Each item may
    /// itself be a comma-separated list; `http://` is assumed when no scheme
    /// is given.
    pub fn with_options<S: AsRef<str>>(
        endpoints: &[S],
        token: Option<String>,
        options: Options,
    ) -> Result<Client> {
        let endpoints = routing::parse_endpoints(endpoints)?;
        if options.tls.is_none()
            && let Some(e) = endpoints.iter().find(|e| e.starts_with("https://"))
        {
            return Err(Error::InvalidInput(format!(
                "endpoint {e}: an https:// endpoint needs the CA that signed its certificate \
                 (--tls-ca, or Options::tls)"
            )));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(options.connect_timeout)
            .pool_max_idle_per_host(256)
            .tcp_nodelay(true)
            // Redirects to a leader are followed here, so that the client
            // learns where the leader is.
            .redirect(reqwest::redirect::Policy::none());
        let http = match &options.tls {
            Some(tls) => http.use_preconfigured_tls(tls.as_ref().clone()),
            None => http,
        };
        let http =
            http.build().map_err(|e| Error::Internal(format!("cannot build HTTP client: {e}")))?;
        let routes = Routes::new(endpoints, options.down_for)?;
        Ok(Client { shared: Arc::new(Shared { routes, token, http, options }), key: None })
    }

    /// A handle whose next write carries `key` as its idempotency key: for
    /// a caller that retries a write itself (across restarts, say) and must
    /// not apply it twice. Use it for one write only: every write through
    /// the handle carries the same key, and a second write with a key the
    /// server has seen gets the first write's answer and changes nothing.
    pub fn with_idempotency_key(&self, key: &str) -> Result<Client> {
        retry::check_key(key)?;
        Ok(Client { shared: self.shared.clone(), key: Some(key.to_string()) })
    }

    /// The endpoint this client uses now.
    pub fn endpoint(&self) -> &str {
        self.shared.routes.current()
    }

    /// Every endpoint this client knows, in the order given.
    pub fn endpoints(&self) -> &[String] {
        self.shared.routes.endpoints()
    }

    /// The options this client was made with.
    pub fn options(&self) -> &Options {
        &self.shared.options
    }

    /// The key a write made now carries.
    fn write_key(&self) -> Option<String> {
        self.key.clone().or_else(|| self.shared.options.idempotency_keys.then(retry::new_key))
    }

    /// Runs a call: attempts, retries and leader discovery.
    async fn call<T: DeserializeOwned>(&self, req: Request) -> Result<T> {
        self.call_with(req, |url, bytes, _| {
            serde_json::from_slice(&bytes).map_err(|e| {
                Failure::Answered(Error::Internal(format!("unexpected answer from {url}: {e}")))
            })
        })
        .await
    }

    /// [`Self::call`] with the answer's body and headers decoded by `decode`.
    async fn call_with<T>(
        &self,
        req: Request,
        decode: impl Fn(&str, bytes::Bytes, &reqwest::header::HeaderMap) -> Result<T, Failure>,
    ) -> Result<T> {
        let s = &self.shared;
        let started = Instant::now();
        let bucket = req.base.map(|b| b.bucket());
        // Where the last answer said to go next.
        let mut hint: Option<String> = None;
        let mut retries = 0u32;
        loop {
            let url = match hint.take() {
                Some(url) => url,
                None => self.target(req.base).await,
            };
            let failure = match self.attempt(&url, &req, &decode).await {
                Ok(v) => return Ok(v),
                Err(f) => f,
            };
            let now = Instant::now();
            hint = self.learn(&url, bucket, &failure, now);
            if !retry::may_retry(req.kind, &failure) {
                return Err(failure.into_error());
            }
            // A connection refused costs nothing to the server: go straight
            // to the next URL while there is one that is up.
            let pause = if matches!(failure, Failure::NotSent(_))
                && hint.is_none()
                && !s.routes.is_down(&s.routes.endpoint(now), now)
            {
                Duration::ZERO
            } else {
                let p = retry::backoff(
                    retries,
                    s.options.backoff_min,
                    s.options.backoff_max,
                    rand::random::<f64>(),
                );
                retries += 1;
                p
            };
            if now + pause >= started + s.options.retry_deadline {
                return Err(failure.into_error());
            }
            tracing::debug!(
                "{} {} via {url} failed ({}); retrying in {pause:?}",
                req.method,
                req.path,
                failure.error()
            );
            tokio::time::sleep(pause).await;
        }
    }

    /// Updates routes from a failed attempt to `url`; returns where the
    /// failure says to go next, if it says.
    fn learn(
        &self,
        url: &str,
        bucket: Option<BucketId>,
        failure: &Failure,
        now: Instant,
    ) -> Option<String> {
        let routes = &self.shared.routes;
        let moved = match failure {
            Failure::NotSent(_) | Failure::Lost(_) => {
                routes.failed(url, now);
                true
            }
            Failure::Answered(e) => {
                let passing = retry::passing(e);
                if passing && bucket.is_none() {
                    // An endpoint that cannot serve now: try the next.
                    routes.pass_over(url);
                }
                passing
            }
        };
        if let Some(b) = bucket
            && moved
        {
            routes.forget_leader(b);
        }
        let next = match failure.error() {
            Error::NotLeader { leader: Some(leader), .. } => Some(leader.clone()),
            Error::Misdirected { replicas, .. } => {
                replicas.iter().find(|r| !routes.is_down(r, now)).cloned()
            }
            _ => None,
        };
        next.map(|u| u.trim_end_matches('/').to_string())
            .filter(|u| u != url && !routes.is_down(u, now) && self.shared.options.follow_leaders)
    }

    /// Where to send a request about `base` (or about no base) now.
    async fn target(&self, base: Option<BaseId>) -> String {
        let s = &self.shared;
        if let Some(id) = base
            && s.options.follow_leaders
        {
            if let Some(url) = s.routes.leader(id.bucket(), Instant::now()) {
                return url;
            }
            if let Some(url) = self.locate(id).await {
                return url;
            }
        }
        s.routes.endpoint(Instant::now())
    }

    /// Asks the endpoints in turn where the leader of `id`'s bucket is, and
    /// caches the answer. `None` when no endpoint knows a leader that is up.
    async fn locate(&self, id: BaseId) -> Option<String> {
        let s = &self.shared;
        let timeout = s.options.request_timeout.min(Duration::from_secs(5));
        for endpoint in s.routes.endpoints_in_turn(Instant::now()) {
            let mut r = s.http.get(format!("{endpoint}/v1/bases/{id}/location")).timeout(timeout);
            if let Some(t) = &s.token {
                r = r.bearer_auth(t);
            }
            let answer = match r.send().await {
                Ok(a) => a,
                Err(_) => {
                    s.routes.failed(&endpoint, Instant::now());
                    continue;
                }
            };
            if !answer.status().is_success() {
                // Older servers have no location route; they forward.
                return None;
            }
            let location: BaseLocation = answer.json().await.ok()?;
            let leader = location.leader?.node_url.trim_end_matches('/').to_string();
            if s.routes.is_down(&leader, Instant::now()) {
                return None;
            }
            s.routes.learn_leader(location.bucket, leader.clone(), location.epoch);
            return Some(leader);
        }
        None
    }

    /// One attempt of `req` against `url`.
    async fn attempt<T>(
        &self,
        url: &str,
        req: &Request,
        decode: &impl Fn(&str, bytes::Bytes, &reqwest::header::HeaderMap) -> Result<T, Failure>,
    ) -> Result<T, Failure> {
        let s = &self.shared;
        let mut r = s
            .http
            .request(req.method.clone(), format!("{url}{}", req.path))
            .timeout(s.options.request_timeout);
        if !req.query.is_empty() {
            r = r.query(&req.query);
        }
        if let Some(body) = &req.body {
            r = r.header(CONTENT_TYPE, req.content_type).body(body.clone());
        }
        if let Some(key) = &req.key {
            r = r.header("idempotency-key", key);
        }
        if let Some(t) = &s.token {
            r = r.bearer_auth(t);
        }
        let response = r.send().await.map_err(|e| transport(url, e))?;
        let status = response.status();
        if status.is_redirection() {
            // A node asked not to forward points at its bucket's leader.
            let leader = response
                .headers()
                .get(LOCATION)
                .and_then(|v| v.to_str().ok())
                .and_then(routing::origin);
            return Err(Failure::Answered(Error::NotLeader {
                message: format!("{url} answered {status}: the bucket's leader is elsewhere"),
                leader,
            }));
        }
        let headers = response.headers().clone();
        let bytes = response.bytes().await.map_err(|e| transport(url, e))?;
        if status.is_success() {
            return decode(url, bytes, &headers);
        }
        Err(Failure::Answered(match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(body) => body.into(),
            Err(_) if status == StatusCode::PAYLOAD_TOO_LARGE => {
                Error::TooLarge("request body too large".into())
            }
            // A proxy or balancer in front of the nodes that has no node
            // to send to.
            Err(_) if matches!(status.as_u16(), 502..=504) => {
                Error::Unavailable(format!("{url} answered {status}"))
            }
            Err(_) => Error::Internal(format!(
                "{url} answered {status}: {}",
                String::from_utf8_lossy(&bytes)
            )),
        }))
    }

    /// `GET /healthz` on the current endpoint (or the next one up).
    pub async fn health(&self) -> Result<Health> {
        self.call(Request::new(Method::GET, "/healthz".into())).await
    }

    /// `GET /v1/cluster`.
    pub async fn cluster_status(&self) -> Result<ClusterStatus> {
        self.call(Request::new(Method::GET, "/v1/cluster".into())).await
    }

    /// `GET /v1/cluster/buckets`: every bucket's replicas, leader and Raft
    /// state.
    pub async fn cluster_buckets(&self) -> Result<BucketsStatus> {
        self.call(Request::new(Method::GET, "/v1/cluster/buckets".into())).await
    }

    /// `POST /v1/cluster/rebalance`. Retried only when it was never sent.
    pub async fn rebalance(&self) -> Result<RebalanceRequest> {
        self.call(Request::new(Method::POST, "/v1/cluster/rebalance".into()).write(None)).await
    }

    /// `POST /v1/cluster/nodes/{node}/drain` (`on`) or `DELETE` (undrain).
    /// Sending it twice does what sending it once does.
    pub async fn drain(&self, node: &NodeId, on: bool) -> Result<NodeChange> {
        let method = if on { Method::POST } else { Method::DELETE };
        self.call(Request::new(method, format!("/v1/cluster/nodes/{node}/drain"))).await
    }

    /// `DELETE /v1/cluster/nodes/{node}`: forgets a dead node.
    pub async fn forget(&self, node: &NodeId) -> Result<NodeChange> {
        self.call(Request::new(Method::DELETE, format!("/v1/cluster/nodes/{node}"))).await
    }

    /// Creates a base. Without an id the client picks a random one, so that
    /// the request can go to the leader of its bucket and a retry names the
    /// same base.
    pub async fn create_base(&self, id: Option<BaseId>, name: Option<String>) -> Result<BaseInfo> {
        let id = id.unwrap_or_else(BaseId::random);
        let req = Request::new(Method::POST, "/v1/bases".into())
            .base(id)
            .json(&CreateBaseRequest { id: Some(id), name })?
            .write(self.write_key());
        self.call(req).await
    }

    /// Creates a base holding a SQLite database file: a backup of a base
    /// ([`Client::backup`]) or any SQLite database. The server checks the
    /// file first (a damaged one is refused and nothing is created); the
    /// base starts without the API tokens the file had.
    pub async fn restore_base(
        &self,
        id: Option<BaseId>,
        name: Option<String>,
        file: bytes::Bytes,
    ) -> Result<BaseInfo> {
        let id = id.unwrap_or_else(BaseId::random);
        let mut query = vec![("id", id.to_string())];
        if let Some(n) = name {
            query.push(("name", n));
        }
        let req = Request::new(Method::POST, "/v1/bases".into())
            .base(id)
            .query(query)
            .bytes(file, "application/vnd.sqlite3")
            .write(self.write_key());
        self.call(req).await
    }

    /// Lists one page of bases.
    pub async fn list_bases(
        &self,
        limit: Option<usize>,
        after: Option<BaseId>,
    ) -> Result<BaseList> {
        let mut q: Vec<(&str, String)> = Vec::new();
        if let Some(l) = limit {
            q.push(("limit", l.to_string()));
        }
        if let Some(a) = after {
            q.push(("after", a.to_string()));
        }
        self.call(Request::new(Method::GET, "/v1/bases".into()).query(q)).await
    }

    /// `GET /v1/bases/{id}/backup`: the base's SQLite file, and the applied
    /// index it reflects.
    pub async fn backup(&self, id: BaseId) -> Result<(bytes::Bytes, u64)> {
        let req = Request::new(Method::GET, format!("/v1/bases/{id}/backup")).base(id);
        self.call_with(req, |url, bytes, headers| {
            let index = headers
                .get("x-shoal-applied-index")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| {
                    Failure::Answered(Error::Internal(format!(
                        "{url} sent a backup without X-Shoal-Applied-Index"
                    )))
                })?;
            Ok((bytes, index))
        })
        .await
    }

    /// `GET /v1/bases/{id}/checksum` (linearizable).
    pub async fn checksum(&self, id: BaseId) -> Result<Checksum> {
        self.call(Request::new(Method::GET, format!("/v1/bases/{id}/checksum")).base(id)).await
    }

    /// One base.
    pub async fn get_base(&self, id: BaseId) -> Result<BaseInfo> {
        self.call(Request::new(Method::GET, format!("/v1/bases/{id}")).base(id)).await
    }

    /// Where the bucket of `id` lives, as the current endpoint (or the next
    /// one up) sees it.
    pub async fn location(&self, id: BaseId) -> Result<BaseLocation> {
        self.call(Request::new(Method::GET, format!("/v1/bases/{id}/location"))).await
    }

    /// `POST /v1/bases/{id}/api-tokens`: a new API token for the base's
    /// SeaTable-compatible API, read-write or read-only.
    pub async fn create_api_token(
        &self,
        id: BaseId,
        name: Option<String>,
        read_only: bool,
    ) -> Result<ApiToken> {
        let permission = if read_only { "r" } else { "rw" }.to_string();
        let req = Request::new(Method::POST, format!("/v1/bases/{id}/api-tokens"))
            .base(id)
            .json(&CreateApiTokenRequest { name, permission })?
            .write(None);
        self.call(req).await
    }

    /// `GET /v1/bases/{id}/api-tokens`.
    pub async fn list_api_tokens(&self, id: BaseId) -> Result<ApiTokenList> {
        self.call(Request::new(Method::GET, format!("/v1/bases/{id}/api-tokens")).base(id)).await
    }

    /// `DELETE /v1/bases/{id}/api-tokens/{name}`.
    pub async fn revoke_api_token(&self, id: BaseId, name: &str) -> Result<serde_json::Value> {
        let path = format!("/v1/bases/{id}/api-tokens/{}", segment(name));
        self.call(Request::new(Method::DELETE, path).base(id).write(None)).await
    }

    /// Drops a base.
    pub async fn drop_base(&self, id: BaseId) -> Result<WriteResponse> {
        let req = Request::new(Method::DELETE, format!("/v1/bases/{id}"))
            .base(id)
            .write(self.write_key());
        self.call(req).await
    }

    /// Runs write statements.
    pub async fn execute(
        &self,
        id: BaseId,
        statements: Vec<Statement>,
        transaction: bool,
    ) -> Result<ExecuteResponse> {
        let req = Request::new(Method::POST, format!("/v1/bases/{id}/execute"))
            .base(id)
            .json(&ExecuteRequest { statements, transaction })?
            .write(self.write_key());
        self.call(req).await
    }

    /// Runs one read-only statement.
    pub async fn query(&self, id: BaseId, sql: &str, params: Params) -> Result<QueryResponse> {
        let body = QueryRequest { sql: sql.to_string(), params, consistency: Default::default() };
        let req =
            Request::new(Method::POST, format!("/v1/bases/{id}/query")).base(id).json(&body)?;
        self.call(req).await
    }

    /// The tables of a base.
    pub async fn tables(&self, id: BaseId) -> Result<TableList> {
        self.call(Request::new(Method::GET, format!("/v1/bases/{id}/tables")).base(id)).await
    }

    /// Inserts rows into a table.
    pub async fn insert_rows(
        &self,
        id: BaseId,
        table: &str,
        rows: Vec<Row>,
    ) -> Result<InsertRowsResponse> {
        self.insert_rows_after(id, table, &rows, None).await
    }

    /// Inserts rows into a table only if the write whose idempotency key is
    /// `after` was applied to the base before them; if it was not, nothing
    /// is inserted and the error is [`Error::Conflict`]. With several
    /// batches in flight, each naming the key of the one before it (see
    /// [`Client::with_idempotency_key`]), the batches apply in that order
    /// or not at all.
    pub async fn insert_rows_after(
        &self,
        id: BaseId,
        table: &str,
        rows: &[Row],
        after: Option<&str>,
    ) -> Result<InsertRowsResponse> {
        // InsertRowsRequest's fields, borrowed: the caller keeps its rows
        // (to send them again, say).
        #[derive(Serialize)]
        struct Body<'a> {
            rows: &'a [Row],
            #[serde(skip_serializing_if = "Option::is_none")]
            after: Option<&'a str>,
        }
        let body = Body { rows, after };
        let req =
            Request::new(Method::POST, format!("/v1/bases/{id}/tables/{}/rows", segment(table)))
                .base(id)
                .json(&body)?
                .write(self.write_key());
        self.call(req).await
    }

    /// Lists one page of rows.
    pub async fn list_rows(&self, id: BaseId, table: &str, q: &RowsQuery) -> Result<RowList> {
        let req =
            Request::new(Method::GET, format!("/v1/bases/{id}/tables/{}/rows", segment(table)))
                .base(id)
                .query(q.pairs());
        self.call(req).await
    }

    /// One row.
    pub async fn get_row(&self, id: BaseId, table: &str, rowid: i64) -> Result<Row> {
        let path = format!("/v1/bases/{id}/tables/{}/rows/{rowid}", segment(table));
        self.call(Request::new(Method::GET, path).base(id)).await
    }

    /// Changes columns of one row.
    pub async fn update_row(
        &self,
        id: BaseId,
        table: &str,
        rowid: i64,
        values: Row,
    ) -> Result<WriteResponse> {
        let path = format!("/v1/bases/{id}/tables/{}/rows/{rowid}", segment(table));
        let req = Request::new(Method::PATCH, path)
            .base(id)
            .json(&UpdateRowRequest { values })?
            .write(self.write_key());
        self.call(req).await
    }

    /// Deletes one row.
    pub async fn delete_row(&self, id: BaseId, table: &str, rowid: i64) -> Result<WriteResponse> {
        let path = format!("/v1/bases/{id}/tables/{}/rows/{rowid}", segment(table));
        self.call(Request::new(Method::DELETE, path).base(id).write(self.write_key())).await
    }
}

/// Classifies a transport failure: a connection that could not be made
/// means the request never left; anything else may have reached the server.
fn transport(url: &str, e: reqwest::Error) -> Failure {
    if let Some(why) = shoal_tls::explain(&e) {
        // A certificate the CA did not sign, or a server that does not
        // speak TLS: no retry mends it.
        Failure::Answered(Error::InvalidInput(format!("cannot connect to {url}: {why}")))
    } else if e.is_connect() {
        Failure::NotSent(Error::Unavailable(format!("cannot reach {url}: {e}")))
    } else if e.is_builder() {
        Failure::Answered(Error::InvalidInput(format!("cannot make a request to {url}: {e}")))
    } else if e.is_timeout() {
        Failure::Lost(Error::Timeout(format!("{url} did not answer in time: {e}")))
    } else {
        Failure::Lost(Error::Unavailable(format!("lost the connection to {url}: {e}")))
    }
}

/// Percent-encodes a path segment (table names may hold any character).
fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_encoded() {
        assert_eq!(segment("my table/x"), "my%20table%2Fx");
        assert_eq!(segment("t_1"), "t_1");
    }
}
