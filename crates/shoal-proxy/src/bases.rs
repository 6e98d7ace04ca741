//! The base routes a proxy answers itself, or with more than one node:
//! create (which needs an id to route by), list (every node holds only its
//! buckets) and location.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use shoal_http::error::ApiError;
use shoal_http::headers::{FORWARDED, NO_FORWARD, query_param};
use shoal_http::lists::{self, ListFailure};
use shoal_types::api::BaseLocation;
use shoal_types::{BaseId, BucketId, Error};

use crate::Proxy;
use crate::forward::{answer_of, bad_path, base_id, body, join, relay_answer, send};

/// How long the proxy waits for one node's part of a list or location answer.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);

/// The id a create request names, or the one the proxy picks for it.
///
/// Without an id in the body, a request with an `Idempotency-Key` gets the id
/// the nodes would derive from that key, so that a retried create names the
/// same base (and bucket); otherwise a random one.
pub fn create_id(body: &Value, key: Option<&str>) -> Result<BaseId, Error> {
    match body.get("id") {
        None | Some(Value::Null) => Ok(match key {
            Some(k) => BaseId(uuid::Uuid::new_v5(&shoal_http::bases::KEYED_IDS, k.as_bytes())),
            None => BaseId::random(),
        }),
        Some(Value::String(s)) => s.parse(),
        Some(other) => {
            Err(Error::InvalidInput(format!("\"id\" must be a UUID string, not {other}")))
        }
    }
}

/// `POST /v1/bases`: routed by the new base's id.
pub async fn create(State(proxy): State<Arc<Proxy>>, req: Request) -> Response {
    let (parts, b) = req.into_parts();
    let bytes = match body(&proxy, b).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let key = parts.headers.get("idempotency-key").and_then(|v| v.to_str().ok());
    // A SQLite file to make a base of: the id is in the query string.
    if shoal_http::bases::is_sqlite(&parts.headers) {
        let query = parts.uri.query().unwrap_or("");
        let given = query_param(Some(query), "id");
        let id = match given {
            Some(id) => match id.parse::<BaseId>() {
                Ok(id) => id,
                Err(e) => return ApiError(e).into_response(),
            },
            None => match create_id(&Value::Null, key) {
                Ok(id) => id,
                Err(e) => return ApiError(e).into_response(),
            },
        };
        let path = match given {
            Some(_) => format!("/v1/bases?{query}"),
            None if query.is_empty() => format!("/v1/bases?id={id}"),
            None => format!("/v1/bases?{query}&id={id}"),
        };
        return send(&proxy, id.bucket(), Method::POST, &path, &parts.headers, bytes).await;
    }
    let mut request: Value = match serde_json::from_slice(&bytes) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => {
            return ApiError(Error::InvalidInput("the body must be a JSON object".into()))
                .into_response();
        }
        Err(e) => {
            return ApiError(Error::InvalidInput(format!("invalid JSON body: {e}")))
                .into_response();
        }
    };
    let id = match create_id(&request, key) {
        Ok(id) => id,
        Err(e) => return ApiError(e).into_response(),
    };
    request["id"] = Value::String(id.to_string());
    let mut headers = parts.headers.clone();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let bytes = serde_json::to_vec(&request).unwrap_or_default().into();
    send(&proxy, id.bucket(), Method::POST, "/v1/bases", &headers, bytes).await
}

/// `GET /v1/bases`: every live node lists the bases of the buckets it holds;
/// the proxy merges their pages (each ordered by id) into one.
///
/// The nodes check the query string; a node's `4xx` is the answer. Replicas
/// may lag their leader by a moment, so a base created or dropped just now
/// can appear on one node and not yet on another: the merge is a union.
pub async fn list(State(proxy): State<Arc<Proxy>>, req: Request) -> Response {
    let query = req.uri().query().map(|q| format!("?{q}")).unwrap_or_default();
    // One bucket's bases: a read of that bucket, routed like any other.
    if let Some(b) = query_param(req.uri().query(), "bucket") {
        return match b.parse::<BucketId>() {
            Ok(bucket) => {
                let path = format!("/v1/bases{query}");
                send(&proxy, bucket, Method::GET, &path, req.headers(), Default::default()).await
            }
            Err(e) => ApiError(e).into_response(),
        };
    }
    let limit = list_limit(req.uri().query());
    let auth = req.headers().get(header::AUTHORIZATION);
    match lists::gather(&proxy.http, &proxy.view.directory(), &query, auth, limit).await {
        Ok(list) => Json(list).into_response(),
        Err(ListFailure::Refused(answer)) => match answer_of(answer).await {
            Ok(a) => relay_answer(a),
            Err(why) => ApiError(Error::Unavailable(why)).into_response(),
        },
        Err(ListFailure::Unavailable(e)) => ApiError(e).into_response(),
    }
}

/// The `limit` of a list query (the nodes' default when absent or unreadable:
/// a bad one is refused by the nodes before this matters).
fn list_limit(query: Option<&str>) -> usize {
    query_param(query, "limit").and_then(|v| v.parse().ok()).unwrap_or(100)
}

/// `GET /v1/bases/{id}/location`: the bucket's replicas from the proxy's
/// map, and its leader as the bucket's replicas report it (the cached leader
/// is asked first). When no replica can tell, the leader is the cached one,
/// if any.
pub async fn location(
    State(proxy): State<Arc<Proxy>>,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Response {
    let id = match id {
        Ok(Path(id)) => id,
        Err(r) => return bad_path(r),
    };
    let id = match base_id(&id) {
        Ok(id) => id,
        Err(e) => return e.into_response(),
    };
    let bucket = id.bucket();
    let dir = proxy.view.directory();
    let mut mine = dir.location(bucket, None);
    for t in proxy.view.candidates(bucket) {
        let mut ask = proxy
            .http
            .get(join(&t.url, &format!("/v1/bases/{id}/location")))
            // Each node answers from its own Raft state, without asking others.
            .header(FORWARDED, "1")
            .header(NO_FORWARD, "1")
            .timeout(ASK_TIMEOUT);
        if let Some(a) = headers.get(header::AUTHORIZATION) {
            ask = ask.header(header::AUTHORIZATION, a);
        }
        let Ok(answer) = ask.send().await else { continue };
        let Ok(theirs) = answer.json::<BaseLocation>().await else { continue };
        let Some(leader) = theirs.leader.clone() else { continue };
        proxy.view.set_leader(bucket, leader.node_id.clone());
        if theirs.epoch >= mine.epoch {
            return Json(theirs).into_response();
        }
        mine.leader = Some(leader);
        return Json(mine).into_response();
    }
    mine.leader = proxy.view.leader(bucket).and_then(|n| dir.node_ref(&n));
    Json(mine).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "00000000-0000-4000-8000-000000000001";

    #[test]
    fn list_limit_reads_the_query() {
        assert_eq!(list_limit(None), 100);
        assert_eq!(list_limit(Some("after=x&limit=7")), 7);
        assert_eq!(list_limit(Some("limit=bad")), 100);
    }

    #[test]
    fn create_ids_come_from_the_body_the_key_or_chance() {
        let given = serde_json::json!({"id": A});
        assert_eq!(create_id(&given, Some("k")).expect("id").to_string(), A);
        let keyed = create_id(&serde_json::json!({}), Some("key-1")).expect("id");
        assert_eq!(create_id(&serde_json::json!({"id": null}), Some("key-1")).expect("id"), keyed);
        assert_ne!(create_id(&serde_json::json!({}), Some("key-2")).expect("id"), keyed);
        assert_ne!(
            create_id(&serde_json::json!({}), None).expect("id"),
            create_id(&serde_json::json!({}), None).expect("id")
        );
        assert!(matches!(
            create_id(&serde_json::json!({"id": "nope"}), None),
            Err(Error::InvalidInput(_))
        ));
        assert!(matches!(
            create_id(&serde_json::json!({"id": 7}), None),
            Err(Error::InvalidInput(_))
        ));
    }
}
