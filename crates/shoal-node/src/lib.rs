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
pub use shoal_http::error;
mod extract;
pub mod feed;
pub mod forward;
pub use shoal_http::lists;
pub mod node;
mod proposed;
pub mod registration;
pub use shoal_http::relay;
pub mod replica;
pub mod replication;
pub mod scoped;
pub mod seatable;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request, State};
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

pub use shoal_http::auth::{BEARER_PROTOCOL, authorize, presented_token};
pub use shoal_http::metrics::{REQUEST_METRICS, RequestMetrics, record_request, track_as};

/// Counts requests and their latency by route.
async fn track(req: Request, next: Next) -> Response {
    track_as(REQUEST_METRICS, req, next).await
}
