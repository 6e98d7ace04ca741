//! Shoal's proxy: a stateless router in front of a cluster's nodes.
//!
//! A proxy follows the placement map and the live nodes in the registry
//! ([`view`]) and sends every `/v1/bases/{id}/...` request, HTTP or
//! WebSocket, to the node that leads the base's bucket, over the nodes'
//! internal URLs (`local_node_url`). It asks the nodes not to forward
//! (`X-Shoal-No-Forward: 1`): a node that does not lead answers `307` with
//! the leader's URL, which the proxy follows and remembers. Where a node is
//! down, holds no replica, or its group is electing, the proxy tries the
//! bucket's other replicas with a short backoff, within a bounded time and
//! only as far as repeating the request is safe ([`retry`]).
//!
//! What needs no base, `/v1/cluster` and the ops routes, is served by the
//! same routes as on every other process (see the `shoal` binary); this
//! crate adds the base routes:
//! - `POST /v1/bases` picks the new base's id when the body has none (from
//!   the `Idempotency-Key`, as the nodes do, else at random) so that it can
//!   route by it;
//! - `GET /v1/bases` asks every live node and merges their pages;
//! - `GET /v1/bases/{id}/location` is answered from the proxy's map, with
//!   the leader as a replica of the bucket reports it.
//!
//! The SeaTable-compatible API is routed by base the same way
//! (module `seatable`).
//!
//! Nothing here is persistent: any number of proxies can run side by side,
//! and a restarted proxy rebuilds its view from the registry.

mod bases;
mod forward;
mod front;
mod links;
pub mod retry;
mod seatable;
pub mod view;
mod ws;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use shoal_http::error::ApiError;
use shoal_types::Error;
use tower_http::catch_panic::CatchPanicLayer;

pub use front::Front;
pub use view::{View, follow};

/// How the proxy behaves.
#[derive(Clone, Debug)]
pub struct ProxyOptions {
    /// The bearer token every `/v1` request must carry; it is passed on to the nodes.
    pub admin_token: String,
    /// The largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// How long one request may spend going from replica to replica
    /// (failover, elections) before the proxy gives the last answer. No new
    /// attempt starts after it; one already started may run for
    /// `request_timeout`.
    pub retry_deadline: Duration,
    /// The first pause between two rounds over a bucket's replicas; it doubles each round.
    pub backoff: Duration,
    /// The longest pause between two rounds.
    pub max_backoff: Duration,
    /// How long one attempt at one node may take.
    pub request_timeout: Duration,
    /// How long opening a connection to a node may take.
    pub connect_timeout: Duration,
    /// Send base requests to the nodes over one relay connection per node
    /// (many requests per frame) rather than one HTTP request each.
    pub relay: bool,
    /// TLS for `https://` nodes: the cluster CA, and this proxy's
    /// certificate to show them. `None` speaks plain HTTP only.
    pub tls: Option<std::sync::Arc<shoal_tls::ClientConfig>>,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        ProxyOptions {
            admin_token: String::new(),
            max_body_bytes: 16 * 1024 * 1024,
            retry_deadline: Duration::from_secs(10),
            backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(500),
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(2),
            relay: true,
            tls: None,
        }
    }
}

/// The proxy: its options, its view of the cluster and its HTTP client.
pub struct Proxy {
    options: ProxyOptions,
    view: View,
    http: reqwest::Client,
    links: Option<links::Links>,
    /// Opens WebSockets to nodes (TLS to `https://` ones).
    connector: shoal_tls::Connector,
}

impl Proxy {
    /// A proxy routing with `view`.
    pub fn new(options: ProxyOptions, view: View) -> Result<Arc<Proxy>, Error> {
        let http = reqwest::Client::builder()
            .connect_timeout(options.connect_timeout)
            // Redirects are the nodes' way to name the leader: the proxy
            // follows them itself, and learns from them.
            .redirect(reqwest::redirect::Policy::none())
            .tcp_nodelay(true);
        let http = match &options.tls {
            Some(tls) => http.use_preconfigured_tls(tls.as_ref().clone()),
            None => http,
        };
        let connector = shoal_tls::Connector::new(options.tls.clone());
        let http = http
            .build()
            .map_err(|e| Error::Internal(format!("cannot build the HTTP client: {e}")))?;
        let links = options.relay.then(|| {
            links::Links::new(
                options.admin_token.clone(),
                connector.clone(),
                options.connect_timeout,
            )
        });
        Ok(Arc::new(Proxy { options, view, http, links, connector }))
    }

    /// The view of the cluster.
    pub fn view(&self) -> &View {
        &self.view
    }
}

/// The proxy's base routes (`/v1/bases...`), behind the bearer token. Merge
/// them with the routes every process serves.
pub fn router(proxy: Arc<Proxy>) -> Router {
    Router::new()
        .route(
            "/v1/bases",
            get(bases::list).post(bases::create).fallback(forward::method_not_allowed),
        )
        .route(
            "/v1/bases/{id}/location",
            get(bases::location).fallback(forward::method_not_allowed),
        )
        .route("/v1/bases/{id}", any(forward::base))
        .route("/v1/bases/{id}/{*rest}", any(forward::base))
        .route_layer(middleware::from_fn_with_state(proxy.clone(), require_token))
        // The SeaTable-compatible API: its own tokens, checked by the nodes.
        .route("/api-gateway/api/v2/dtables/{uuid}/{*rest}", any(seatable::gateway))
        .route("/api/v2.1/dtable/app-access-token/", any(seatable::access_token))
        .route("/api/v2.1/dtable/app-access-token", any(seatable::access_token))
        .route("/api-gateway/socket.io/", any(seatable::socket))
        .route("/api-gateway/socket.io", any(seatable::socket))
        .route("/socket.io/", any(seatable::socket))
        .route("/socket.io", any(seatable::socket))
        .layer(middleware::from_fn(track))
        .layer(CatchPanicLayer::custom(|_| {
            ApiError(Error::Internal("the proxy failed while handling this request".into()))
                .into_response()
        }))
        .with_state(proxy)
}

/// Refuses requests without the cluster's bearer token, before anything is
/// sent on.
async fn require_token(State(proxy): State<Arc<Proxy>>, req: Request, next: Next) -> Response {
    match check_token(&proxy, &req) {
        Ok(()) => next.run(req).await,
        Err(refused) => refused.into_response(),
    }
}

/// The admin token, or a base's API token on that base's data routes, which
/// goes on to the nodes that check it; the routes the proxy answers itself
/// (lists, creates, locations) need the admin token.
fn check_token(proxy: &Proxy, req: &Request) -> Result<(), ApiError> {
    let headers = req.headers();
    match shoal_http::auth::authorize(headers, &proxy.options.admin_token) {
        Ok(()) => Ok(()),
        Err(_)
            if !req.uri().path().ends_with("/location")
                && shoal_http::auth::may_carry(headers, req.method(), req.uri().path()) =>
        {
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Counts the proxy's requests and their latency by route.
async fn track(req: Request, next: Next) -> Response {
    shoal_http::metrics::track_as(front::PROXY_METRICS, req, next).await
}
