//! Requests that reach a follower go to the leader.
//!
//! Base routes run behind [`forward`]: the request body is collected (it is
//! bounded anyway, and the handler would collect it too; the handler gets
//! the same bytes, not a copy), the handler runs, and if it answers `not_leader` with a
//! known leader, the request is sent once more to the leader's URL and the
//! leader's answer is returned. A forwarded request carries
//! `X-Shoal-Forwarded`, and is never forwarded again (no loops while
//! leadership moves). A client that prefers to go to the leader itself sends
//! `X-Shoal-No-Forward: 1` and gets `307 Temporary Redirect` to the leader.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use shoal_types::Error;

use crate::AppState;
use crate::error::ApiError;

pub use shoal_http::headers::{
    FORWARDED, FORWARDED_HOST, FORWARDED_PROTO, LeaderHint, NO_FORWARD, query_param,
};

/// The HTTP client used to forward (and to ask other nodes): `tls`
/// verifies `https://` nodes and shows them this process's certificate.
pub fn client(tls: Option<&Arc<shoal_tls::ClientConfig>>) -> reqwest::Client {
    let builder = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(30));
    let builder = match tls {
        Some(config) => builder.use_preconfigured_tls(config.as_ref().clone()),
        None => builder,
    };
    builder.build().unwrap_or_else(|_| reqwest::Client::new())
}

/// A request this node answers itself, whoever leads: a forwarded one as
/// the handler answers it, one that asked not to be forwarded with a `307`
/// to the leader when the handler names one.
async fn answer_here(state: &AppState, forwarded: bool, req: Request, next: Next) -> Response {
    let declared = axum::body::HttpBody::size_hint(req.body()).lower();
    if declared > state.options.max_body_bytes as u64 {
        return too_large();
    }
    let uri = req.uri().clone();
    let response = next.run(req).await;
    let Some(LeaderHint(leader)) = response.extensions().get::<LeaderHint>() else {
        return response;
    };
    if forwarded {
        return response;
    }
    let url = at_leader(leader, &uri);
    let mut redirect = response;
    *redirect.status_mut() = StatusCode::TEMPORARY_REDIRECT;
    if let Ok(v) = HeaderValue::from_str(&url) {
        redirect.headers_mut().insert(header::LOCATION, v);
    }
    redirect
}

/// The URL of the request `uri` at the node whose URL is `leader`.
fn at_leader(leader: &str, uri: &Uri) -> String {
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    format!("{}{path}", leader.trim_end_matches('/'))
}

fn too_large() -> Response {
    ApiError(Error::TooLarge(
        "the request body is larger than the server accepts (see --max-body-size)".into(),
    ))
    .into_response()
}

/// The middleware.
pub async fn forward(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let forwarded = req.headers().contains_key(FORWARDED);
    if forwarded || req.headers().contains_key(NO_FORWARD) {
        // Never sent on from here: the body and headers need not be kept.
        return answer_here(&state, forwarded, req, next).await;
    }
    let (parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, state.options.max_body_bytes).await {
        Ok(b) => b,
        Err(_) => return too_large(),
    };
    // What a forward needs of the request: kept aside (cheap clones of
    // shared bytes), since the handler takes the request.
    let method = parts.method.clone();
    let uri = parts.uri.clone();
    let passed: Vec<(axum::http::HeaderName, HeaderValue)> = [
        header::AUTHORIZATION,
        header::CONTENT_TYPE,
        axum::http::HeaderName::from_static("idempotency-key"),
        axum::http::HeaderName::from_static(FORWARDED_PROTO),
    ]
    .into_iter()
    .filter_map(|name| parts.headers.get(&name).cloned().map(|v| (name, v)))
    // The address the client used, for answers that name a server.
    .chain(
        parts
            .headers
            .get(FORWARDED_HOST)
            .or_else(|| parts.headers.get(header::HOST))
            .cloned()
            .map(|v| (axum::http::HeaderName::from_static(FORWARDED_HOST), v)),
    )
    .collect();
    let response = next.run(Request::from_parts(parts, Body::from(bytes.clone()))).await;
    let leader = match response.extensions().get::<LeaderHint>().cloned() {
        Some(LeaderHint(leader)) => leader,
        // A bucket this node holds no replica of: on to the replica the map
        // names first, which leads it or knows who does (a client that asked
        // to be told gets the 421, with the replicas, from `answer_here`).
        None if response.status() == StatusCode::MISDIRECTED_REQUEST => {
            match holder(&state, &uri, &bytes) {
                Some(url) => url,
                None => return response,
            }
        }
        None => return response,
    };
    // Leadership can move while a request travels: a forwarded request
    // answered `not_leader` (nothing was proposed) follows the new leader's
    // hint, a few hops at most.
    let mut leader = leader;
    let mut hops = 1;
    loop {
        let mut out = state
            .forwarder
            .request(method.clone(), at_leader(&leader, &uri))
            .header(FORWARDED, "1")
            .body(bytes.clone());
        for (name, value) in &passed {
            out = out.header(name, value);
        }
        let r = match out.send().await {
            Ok(r) => r,
            // The leader we knew of is unreachable: the group is electing.
            Err(e) => {
                return ApiError(Error::Unavailable(format!(
                    "the bucket's leader at {leader} is unreachable: {e}"
                )))
                .into_response();
            }
        };
        let status = r.status();
        let content_type = r.headers().get(header::CONTENT_TYPE).cloned();
        let body = r.bytes().await.unwrap_or_default();
        if hops < MAX_HOPS
            && let Some(next) = moved_to(&body).filter(|next| *next != leader)
        {
            leader = next;
            hops += 1;
            continue;
        }
        let mut resp = (status, body).into_response();
        if let Some(ct) = content_type {
            resp.headers_mut().insert(header::CONTENT_TYPE, ct);
        }
        return resp;
    }
}

/// The internal URL of the replica the map names first for the base a
/// request is about: by the id in its path, or for a create, in its query
/// string or JSON body.
fn holder(state: &AppState, uri: &axum::http::Uri, body: &[u8]) -> Option<String> {
    let path = uri.path().strip_prefix("/v1/bases")?;
    let id: shoal_types::BaseId = match path.strip_prefix('/') {
        Some(rest) => rest.split('/').next()?.parse().ok()?,
        None => match query_param(uri.query(), "id") {
            Some(id) => id.parse().ok()?,
            None => {
                let v: serde_json::Value = serde_json::from_slice(body).ok()?;
                v.get("id")?.as_str()?.parse().ok()?
            }
        },
    };
    state.engine.as_ref()?.replica_local_urls(id.bucket()).into_iter().next()
}

/// How many leaders a request is forwarded to, at most.
const MAX_HOPS: usize = 3;

/// The new leader named by a `not_leader` answer, if it is one.
fn moved_to(body: &[u8]) -> Option<String> {
    let body: shoal_types::ErrorBody = serde_json::from_slice(body).ok()?;
    (body.error.code == "not_leader").then_some(body.error.leader).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params_are_found_by_whole_name() {
        let q = Some("after=x&id=7&bucket=0a&id=8");
        assert_eq!(query_param(q, "id"), Some("7"));
        assert_eq!(query_param(q, "bucket"), Some("0a"));
        assert_eq!(query_param(Some("bucketid=1"), "id"), None);
        assert_eq!(query_param(Some("id"), "id"), None);
        assert_eq!(query_param(None, "id"), None);
    }

    #[test]
    fn only_not_leader_answers_with_a_hint_move_a_request() {
        let moved = Error::NotLeader { message: "m".into(), leader: Some("http://b".into()) };
        let body = serde_json::to_vec(&moved.to_body()).unwrap();
        assert_eq!(moved_to(&body), Some("http://b".into()));
        let unknown = Error::NotLeader { message: "m".into(), leader: None };
        assert_eq!(moved_to(&serde_json::to_vec(&unknown.to_body()).unwrap()), None);
        let other = Error::Unavailable("electing".into());
        assert_eq!(moved_to(&serde_json::to_vec(&other.to_body()).unwrap()), None);
        assert_eq!(moved_to(b"{\"results\": []}"), None);
        assert_eq!(moved_to(b"not json"), None);
    }
}
