//! The SeaTable-compatible API through the proxy: every call is routed by
//! the base it names, as the base routes are.
//!
//! - `/api-gateway/api/v2/dtables/{uuid}/...`: by the uuid in the path, to
//!   the bucket's leader;
//! - `/api/v2.1/dtable/app-access-token/`: by the base the API token names
//!   (its first 32 hex digits);
//! - Socket.IO (`/api-gateway/socket.io/`, `/socket.io/`): by the
//!   `dtable_uuid` of the query string, which the client keeps on every
//!   request of a session, to the bucket's replicas in the map's order, so
//!   that the long-polling requests and the WebSocket upgrade of one
//!   session all reach the same node while leadership moves.
//!
//! The nodes check the tokens; the proxy needs none of its own here.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use shoal_types::{BaseId, BucketId};

use crate::Proxy;
use crate::forward::{body, is_upgrade, send_to};

fn refuse(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({ "error_msg": message }))).into_response()
}

async fn pass(proxy: Arc<Proxy>, bucket: BucketId, sticky: bool, req: Request) -> Response {
    if is_upgrade(req.headers()) {
        return crate::ws::relay_to(proxy, bucket, sticky, req).await;
    }
    let (parts, b) = req.into_parts();
    let bytes = match body(&proxy, b).await {
        Ok(b) => b,
        Err(e) => return seatable_shape(e.into_response()).await,
    };
    let path = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    seatable_shape(send_to(&proxy, bucket, sticky, parts.method, path, &parts.headers, bytes).await)
        .await
}

/// The proxy's own errors (no node answered in time, a body too large) in
/// SeaTable's shape, like the nodes' answers on these routes.
async fn seatable_shape(resp: Response) -> Response {
    if resp.status().is_success() {
        return resp;
    }
    let (parts, b) = resp.into_parts();
    let bytes = axum::body::to_bytes(b, usize::MAX).await.unwrap_or_default();
    match serde_json::from_slice::<shoal_types::ErrorBody>(&bytes) {
        Ok(e) => refuse(parts.status, &e.error.message),
        Err(_) => Response::from_parts(parts, axum::body::Body::from(bytes)),
    }
}

/// `/api-gateway/api/v2/dtables/{uuid}/...`.
pub async fn gateway(State(proxy): State<Arc<Proxy>>, req: Request) -> Response {
    let uuid = req.uri().path().split('/').nth(5).unwrap_or_default();
    match uuid.parse::<BaseId>() {
        Ok(base) => pass(proxy, base.bucket(), false, req).await,
        Err(_) => refuse(StatusCode::BAD_REQUEST, &format!("{uuid:?} is not a base id")),
    }
}

/// `/api/v2.1/dtable/app-access-token/`.
pub async fn access_token(State(proxy): State<Arc<Proxy>>, req: Request) -> Response {
    let base = shoal_http::auth::api_token_base(req.headers());
    match base {
        Some(base) => pass(proxy, base.bucket(), false, req).await,
        None => refuse(StatusCode::UNAUTHORIZED, "invalid API token"),
    }
}

/// Socket.IO, by `dtable_uuid`.
pub async fn socket(State(proxy): State<Arc<Proxy>>, req: Request) -> Response {
    let base = shoal_http::headers::query_param(req.uri().query(), "dtable_uuid")
        .and_then(|v| v.parse::<BaseId>().ok());
    match base {
        Some(base) => pass(proxy, base.bucket(), true, req).await,
        None => refuse(
            StatusCode::BAD_REQUEST,
            "connect with ?dtable_uuid=<base> so the proxy can find the base",
        ),
    }
}
