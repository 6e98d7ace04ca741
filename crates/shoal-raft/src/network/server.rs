//! The receiving side: the internal routes, which hand each RPC to its local
//! group.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::mpsc;

use super::wire::{self, BatchRequest, Outcome, Reply, Rpc, SnapshotOutcome};
use super::{Dispatch, NetworkOptions, snapshot};

#[derive(Clone)]
struct Server {
    dispatch: Arc<dyn Dispatch>,
    snapshot_idle_timeout: Duration,
}

/// The internal routes, under `/internal/raft/`, to merge into the node's
/// router: `POST /internal/raft/batch` (batched AppendEntries and Vote) and
/// `POST /internal/raft/snapshot/{group}` (a streamed snapshot). Every
/// request must carry `Authorization: Bearer <options.token>`, else 401.
pub fn router(dispatch: Arc<dyn Dispatch>, options: NetworkOptions) -> Router {
    let token: Arc<str> = Arc::from(options.token.as_str());
    let server = Server { dispatch, snapshot_idle_timeout: options.snapshot_idle_timeout };
    Router::new()
        .route(
            wire::BATCH_PATH,
            post(batch).layer(DefaultBodyLimit::max(options.max_request_bytes)),
        )
        .route(wire::SNAPSHOT_PATH, post(snapshot))
        .route_layer(middleware::from_fn_with_state(token, authorize))
        .with_state(server)
}

/// Lets through requests that carry the cluster's token.
async fn authorize(State(token): State<Arc<str>>, request: Request, next: Next) -> Response {
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(given) if !token.is_empty() && same(given.as_bytes(), token.as_bytes()) => {
            next.run(request).await
        }
        _ => StatusCode::UNAUTHORIZED.into_response(),
    }
}

/// Compares in time independent of where the inputs differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Runs a batch's RPCs concurrently and streams each answer, as a frame, as
/// soon as it is ready.
async fn batch(State(server): State<Server>, body: Bytes) -> Response {
    let request: BatchRequest = match wire::decode(&body) {
        Ok(r) => r,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    if request.version != wire::VERSION {
        let msg = format!("wire format version {} is not {}", request.version, wire::VERSION);
        return (StatusCode::BAD_REQUEST, msg).into_response();
    }
    let (tx, rx) = mpsc::channel::<Bytes>(request.calls.len().max(1));
    // One task runs the whole batch: the RPCs mostly wait on their groups'
    // cores, so polling them together costs less than a task each. The task
    // outlives a dropped request; the groups' answers are then discarded.
    tokio::spawn(async move {
        let mut running: FuturesUnordered<_> = request
            .calls
            .into_iter()
            .enumerate()
            .map(|(index, call)| {
                let raft = server.dispatch.raft(call.group);
                async move {
                    let outcome = match (raft, call.rpc) {
                        (None, _) => Outcome::NoGroup,
                        (Some(raft), Rpc::Append(rpc)) => {
                            Outcome::Append(raft.append_entries(rpc).await)
                        }
                        (Some(raft), Rpc::Vote(rpc)) => Outcome::Vote(raft.vote(rpc).await),
                    };
                    Reply { index: u32::try_from(index).unwrap_or(u32::MAX), outcome }
                }
            })
            .collect();
        while let Some(reply) = running.next().await {
            match wire::frame(&reply) {
                Ok(frame) => {
                    // Capacity is the batch size: this never waits, and fails
                    // only if the response was dropped.
                    let _ = tx.send(frame).await;
                }
                Err(e) => tracing::warn!(error = %e, "cannot encode a raft reply"),
            }
        }
    });
    let frames =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|f| (f, rx)) });
    Body::from_stream(frames.map(Ok::<_, Infallible>)).into_response()
}

/// Receives a streamed snapshot for a group and installs it.
async fn snapshot(State(server): State<Server>, Path(group): Path<u8>, body: Body) -> Response {
    let outcome = match server.dispatch.raft(group) {
        None => SnapshotOutcome::NoGroup,
        Some(raft) => {
            let root = server.dispatch.snapshot_dir();
            snapshot::receive(raft, group, root, body, server.snapshot_idle_timeout).await
        }
    };
    if let SnapshotOutcome::Failed(ref msg) = outcome {
        tracing::warn!(group, error = %msg, "receiving a snapshot failed");
    }
    match wire::encode(&outcome) {
        Ok(bytes) => bytes.into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}
