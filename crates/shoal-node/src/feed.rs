//! `GET /v1/bases/{id}/changes?after=INDEX`: the change feed of a base over
//! a WebSocket.
//!
//! Every replica of a bucket applies the same log, so every replica can
//! serve the feed: this route is answered by the local replica (leader or
//! follower) and never forwarded. Before upgrading, the request is checked
//! like any other: a bad id or `after` is 400, a node without a replica of
//! the bucket answers 421 with the nodes that have one, an unknown base 404.
//!
//! After the upgrade each text message is one [`FeedMessage`]: first a
//! resync if the index asked for is no longer retained, then every change
//! after the index, in log order, each once. The feed ends after a
//! `base_dropped` event, or with an error message when the subscriber fell
//! too far behind or this replica's copy was replaced (resume with
//! `after` = the last index received).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{
    Message, WebSocket, WebSocketUpgrade, rejection::WebSocketUpgradeRejection,
};
use axum::response::Response;
use serde::Deserialize;
use shoal_storage::feed::{Change, Subscription};
use shoal_types::api::{ChangeOp, Consistency, FeedMessage, Resync, RowText};
use shoal_types::{BaseId, Error};

use crate::AppState;
use crate::error::ApiResult;
use crate::extract::{ApiPath, ApiQuery};

/// How often an idle feed sends a ping, so that proxies keep it open and a
/// vanished client is noticed.
const PING_EVERY: Duration = Duration::from_secs(15);

/// How long one message may take to send before the subscriber is taken
/// for gone.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// The WebSocket subprotocol of the feed, for clients that offer one.
pub const FEED_PROTOCOL: &str = "shoal.v1";

/// The query string of the feed.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedParams {
    /// Send the changes after this log index [default: from now on].
    after: Option<u64>,
}

/// The handler.
pub async fn changes(
    State(state): State<Arc<AppState>>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(params): ApiQuery<FeedParams>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    let id: BaseId = id.parse()?;
    let engine = state
        .engine
        .as_ref()
        .ok_or_else(|| Error::Unavailable("this process serves no bases".into()))?;
    let after = params.after;
    let subscription =
        engine.read(id.bucket(), Consistency::None, move |s| s.subscribe(&id, after)).await?;
    let ws = ws.map_err(|e| {
        Error::InvalidInput(format!(
            "this route is a WebSocket: connect with a WebSocket client ({})",
            e.body_text()
        ))
    })?;
    // A browser sends its token as a subprotocol (see `authorize`) next to
    // this one, which the server picks.
    Ok(ws.protocols([FEED_PROTOCOL]).on_upgrade(move |socket| stream(socket, subscription)))
}

/// Why sending stopped.
enum Stop {
    /// The socket failed or the client went away.
    Gone,
    /// The base was dropped: its last event went out.
    Dropped,
}

async fn send<M: serde::Serialize>(socket: &mut WebSocket, message: &M) -> Result<(), Stop> {
    let text = serde_json::to_string(message).map_err(|_| Stop::Gone)?;
    match tokio::time::timeout(SEND_TIMEOUT, socket.send(Message::Text(text.into()))).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(Stop::Gone),
    }
}

/// Sends the events of one batch that come after `after`.
async fn send_events(socket: &mut WebSocket, events: &[Change], after: u64) -> Result<(), Stop> {
    for e in events.iter().filter(|e| e.index > after) {
        // A change is sent as itself (`FeedMessage` is untagged).
        send(socket, e).await?;
        if e.op == ChangeOp::BaseDropped {
            return Err(Stop::Dropped);
        }
    }
    Ok(())
}

async fn stream(mut socket: WebSocket, mut sub: Subscription) {
    let after = sub.after;
    let result: Result<(), Stop> = async {
        if let Some(index) = sub.resync {
            send(&mut socket, &FeedMessage::<RowText>::Resync(Resync { resync: true, index }))
                .await?;
        }
        for batch in std::mem::take(&mut sub.backlog) {
            send_events(&mut socket, &batch, after).await?;
        }
        let mut ping =
            tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
        loop {
            tokio::select! {
                batch = sub.live.recv() => match batch {
                    Some(batch) => send_events(&mut socket, &batch, after).await?,
                    None => {
                        if let Some(reason) = sub.close_reason() {
                            send(&mut socket, &FeedMessage::<RowText>::Error(reason)).await?;
                        }
                        return Err(Stop::Dropped);
                    }
                },
                incoming = socket.recv() => match incoming {
                    // What the client sends is ignored; pongs are answered by the library.
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return Err(Stop::Gone),
                    Some(Ok(_)) => {}
                },
                _ = ping.tick() => {
                    if socket.send(Message::Ping(Default::default())).await.is_err() {
                        return Err(Stop::Gone);
                    }
                }
            }
        }
    }
    .await;
    if let Err(Stop::Dropped) = result {
        let _ = socket.send(Message::Close(None)).await;
    }
}
