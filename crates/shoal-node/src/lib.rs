//! Shoal's node server: the HTTP API (`/v1`) over a node's bases, plus
//! `/healthz` and `/metrics`.
//!
//! Every `/v1` route needs the admin bearer token. Bodies are bounded (413),
//! every error is `{"error": {"code", "message"}}` with one status mapping
//! ([`error::status`]), and a panic in a handler becomes a 500 rather than a
//! dropped connection. The handlers reach data only through the [`Engine`],
//! and the cluster only through [`cluster::Cluster`].

pub mod api;
pub mod cluster;
pub mod console;
pub mod engine;
pub mod error;
mod extract;
pub mod feed;
pub mod forward;
pub mod lists;
pub mod node;
mod proposed;
pub mod registration;
pub mod relay;
pub mod replica;
pub mod replication;
pub mod scoped;
pub mod seatable;

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, RwLock};
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use shoal_types::Error;
use shoal_types::api::Health;
use tower_http::catch_panic::CatchPanicLayer;

pub use engine::Engine;
use error::ApiError;
pub use node::{Node, NodeConfig, RaftSettings};

/// The OpenAPI document of the API.
pub const OPENAPI: &str = include_str!("openapi.json");

/// How the server behaves.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// The bearer token every `/v1` request must carry.
    pub admin_token: String,
    /// The largest request body accepted, in bytes.
    pub max_body_bytes: usize,
}

/// What every handler can reach.
pub struct AppState {
    /// The write and read paths; `None` in a process that serves no bases
    /// (a monitor), whose router then has no base routes.
    pub engine: Option<Arc<Engine>>,
    /// The cluster view behind `/v1/cluster`; `None` leaves those routes out.
    pub cluster: Option<Arc<dyn cluster::Cluster>>,
    /// The server's options.
    pub options: ServerOptions,
    /// Renders `/metrics`; `None` serves an empty page.
    pub metrics: Option<PrometheusHandle>,
    /// Sends requests on to a bucket's leader.
    pub forwarder: reqwest::Client,
}

/// The whole HTTP API.
pub fn router(state: Arc<AppState>) -> Router {
    let mut v1 = Router::new().route("/v1/openapi.json", get(openapi));
    if state.engine.is_some() {
        v1 = v1
            .route("/v1/bases", post(api::create_base).get(api::list_bases))
            .route("/v1/bases/{id}", get(api::get_base).delete(api::drop_base))
            .route("/v1/bases/{id}/execute", post(api::execute))
            .route("/v1/bases/{id}/query", post(api::query))
            .route("/v1/bases/{id}/tables", get(api::tables))
            .route("/v1/bases/{id}/checksum", get(api::checksum))
            .route("/v1/bases/{id}/backup", get(api::backup))
            .route("/v1/bases/{id}/location", get(api::location))
            .merge(seatable::admin_routes())
            .route("/v1/bases/{id}/tables/{table}/rows", post(api::insert_rows).get(api::list_rows))
            .route(
                "/v1/bases/{id}/tables/{table}/rows/{rowid}",
                get(api::get_row).patch(api::update_row).delete(api::delete_row),
            )
            .route_layer(middleware::from_fn_with_state(state.clone(), forward::forward))
            // Served by the local replica, leader or follower: not forwarded.
            .route("/v1/bases/{id}/changes", get(feed::changes))
            .route("/v1/node/buckets", get(cluster::node_buckets));
    }
    if state.cluster.is_some() {
        v1 = v1
            .route("/v1/cluster", get(cluster::status))
            .route("/v1/cluster/buckets", get(cluster::buckets))
            .route("/v1/cluster/rebalance", post(cluster::rebalance))
            .route("/v1/cluster/nodes/{id}", delete(cluster::forget))
            .route("/v1/cluster/nodes/{id}/drain", post(cluster::drain).delete(cluster::undrain));
    }
    let v1 = v1.route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    let mut app = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(render_metrics))
        .merge(console::routes())
        .merge(v1);
    if state.engine.is_some() {
        app = app.merge(seatable::routes(state.clone()));
    }
    let app = app
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(track))
        .layer(DefaultBodyLimit::max(state.options.max_body_bytes))
        .layer(CatchPanicLayer::custom(|_| {
            ApiError(Error::Internal("the server failed while handling this request".into()))
                .into_response()
        }));
    // Socket.IO (the SeaTable API's real-time events) answers its own paths
    // before routing.
    let sockets =
        if state.engine.is_some() { seatable::socket_layers(state.clone()) } else { vec![] };
    let mut app = app.with_state(state);
    for layer in sockets {
        app = app.layer(layer);
    }
    app
}

async fn healthz() -> Json<Health> {
    Json(Health { status: "ok".into(), version: env!("CARGO_PKG_VERSION").into() })
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn render_metrics(State(state): State<Arc<AppState>>) -> Response {
    if let Some(engine) = &state.engine {
        metrics::gauge!("shoal_open_bases").set(engine.store().open_bases() as f64);
        metrics::gauge!("shoal_feed_subscribers").set(engine.store().feed().subscribers() as f64);
        let hosted = engine.multi().hosted();
        let led = hosted.iter().filter(|g| engine.multi().is_leader(**g)).count();
        metrics::gauge!("shoal_raft_groups").set(hosted.len() as f64);
        metrics::gauge!("shoal_raft_groups_led").set(led as f64);
        let log = engine.multi().log_stats();
        metrics::counter!("shoal_raft_log_writes_total").absolute(log.writes);
        metrics::counter!("shoal_raft_log_fsyncs_total").absolute(log.fsyncs);
        let net = engine.multi().transport().stats();
        metrics::counter!("shoal_raft_frames_sent_total").absolute(net.frames);
        metrics::counter!("shoal_raft_messages_sent_total").absolute(net.messages);
        metrics::counter!("shoal_raft_bytes_sent_total").absolute(net.bytes);
        metrics::counter!("shoal_raft_frames_dropped_total").absolute(net.dropped);
    }
    let body = state.metrics.as_ref().map(|m| m.render()).unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

async fn not_found() -> ApiError {
    ApiError(Error::NotFound("no such route; see /v1/openapi.json".into()))
}

async fn method_not_allowed() -> Response {
    let body = Error::InvalidInput("method not allowed on this route".into()).to_body();
    (StatusCode::METHOD_NOT_ALLOWED, Json(body)).into_response()
}

/// Refuses requests without the admin bearer token.
async fn require_token(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    req: Request,
    next: Next,
) -> Response {
    match authorize(&headers, &state.options.admin_token) {
        Ok(()) => next.run(req).await,
        // A base's API token reaches that base's data routes, as its
        // permission allows.
        Err(e) => match scoped::check(&state, &headers, req.method(), req.uri().path()).await {
            None => e.into_response(),
            Some(Ok(())) => next.run(req).await,
            Some(Err(refused)) => ApiError(refused).into_response(),
        },
    }
}

/// The prefix of the WebSocket subprotocol that carries a token.
pub const BEARER_PROTOCOL: &str = "shoal.bearer.";

/// The bearer token a request presents: `Authorization: Bearer TOKEN`, or,
/// from a browser's WebSocket, which cannot set headers, a subprotocol
/// `shoal.bearer.` followed by the token in unpadded base64url (offered
/// with `shoal.v1`, which the server picks).
pub fn presented_token(headers: &HeaderMap) -> Option<String> {
    let from_protocol = || {
        headers
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .find_map(|p| p.trim().strip_prefix(BEARER_PROTOCOL).map(str::to_string))
            .map(|t| {
                use base64::Engine as _;
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(t.trim_end_matches('='))
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .unwrap_or_default()
            })
    };
    match headers.get(header::AUTHORIZATION) {
        Some(v) => {
            v.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")).map(|t| t.trim().to_string())
        }
        None => from_protocol(),
    }
}

/// Checks the token a request presents ([`presented_token`]) against
/// `token`; every process that serves `/v1` (nodes, monitors, proxies)
/// refuses the same way.
pub fn authorize(headers: &HeaderMap, token: &str) -> Result<(), ApiError> {
    match presented_token(headers).as_deref() {
        None => Err(ApiError(Error::Unauthorized(
            "missing bearer token: send \"Authorization: Bearer TOKEN\"".into(),
        ))),
        Some(t) if !constant_time_eq(t.as_bytes(), token.as_bytes()) => {
            Err(ApiError(Error::Unauthorized("invalid bearer token".into())))
        }
        Some(_) => Ok(()),
    }
}

/// Compares secrets in time that does not depend on where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Counts requests and their latency by route.
async fn track(req: Request, next: Next) -> Response {
    track_as(REQUEST_METRICS, req, next).await
}

/// The names of a process's request counter and latency histogram.
#[derive(Clone, Copy, Debug)]
pub struct RequestMetrics {
    /// Requests, by route, method and status.
    pub total: &'static str,
    /// Latency in seconds, by route and method.
    pub duration: &'static str,
}

/// What every process counts its HTTP requests under.
pub const REQUEST_METRICS: RequestMetrics = RequestMetrics {
    total: "shoal_http_requests_total",
    duration: "shoal_http_request_duration_seconds",
};

/// One route's counter and histogram for one method and status.
struct Handles {
    method: axum::http::Method,
    status: u16,
    total: metrics::Counter,
    duration: metrics::Histogram,
}

/// The handles registered so far, by metric name and route: a request finds
/// its handles with one read lock and no allocation; only the first request
/// of a route, method and status registers (and allocates) them.
type HandleCache = HashMap<&'static str, HashMap<String, Vec<Handles>>>;

static HANDLES: LazyLock<RwLock<HandleCache>> = LazyLock::new(RwLock::default);

/// Runs the request and records it, by matched route, under `names`.
pub async fn track_as(names: RequestMetrics, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().cloned();
    let method = req.method().clone();
    let start = Instant::now();
    let response = next.run(req).await;
    let route = route.as_ref().map_or("unmatched", |p| p.as_str());
    record_request(names, route, &method, response.status().as_u16(), start.elapsed());
    response
}

/// Records one request of `route` under `names` (for handlers that are not
/// behind [`track_as`]).
pub fn record_request(
    names: RequestMetrics,
    route: &str,
    method: &axum::http::Method,
    status: u16,
    elapsed: std::time::Duration,
) {
    let elapsed = elapsed.as_secs_f64();
    let record = |h: &Handles| {
        h.total.increment(1);
        h.duration.record(elapsed);
    };
    {
        let cache = HANDLES.read().unwrap_or_else(|e| e.into_inner());
        let found = cache
            .get(names.total)
            .and_then(|routes| routes.get(route))
            .and_then(|hs| hs.iter().find(|h| h.method == method && h.status == status));
        if let Some(h) = found {
            record(h);
            return;
        }
    }
    let handles = Handles {
        total: metrics::counter!(names.total, "route" => route.to_string(), "method" => method.to_string(), "status" => status.to_string()),
        duration: metrics::histogram!(names.duration, "route" => route.to_string(), "method" => method.to_string()),
        method: method.clone(),
        status,
    };
    record(&handles);
    let mut cache = HANDLES.write().unwrap_or_else(|e| e.into_inner());
    cache.entry(names.total).or_default().entry(route.to_string()).or_default().push(handles);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
