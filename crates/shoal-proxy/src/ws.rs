//! WebSocket requests under `/v1/bases/{id}/...` (the change feed): the
//! proxy opens the same WebSocket to the bucket's leader first, then accepts
//! the client's, and relays frames both ways until either side closes; then
//! it closes the other. Pings are relayed, so a client sees the node's
//! keep-alives.
//!
//! Finding the leader follows the HTTP rules (an upgrade is a GET: it is
//! always safe to try again). A node that refuses the upgrade (an unknown
//! route, a bad id, a bad token) gives its status and body to the client,
//! which is then not upgraded.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::ws::{self, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Request};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use shoal_http::error::ApiError;
use shoal_http::headers::NO_FORWARD;
use shoal_types::{BucketId, Error};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self as tung, protocol::CloseFrame};

use crate::Proxy;
use crate::forward::Attempts;
use crate::retry::{self, Next};

type Upstream = WebSocketStream<shoal_tls::Stream>;

/// Relays a WebSocket request to the bucket's leader.
pub async fn relay(proxy: Arc<Proxy>, bucket: BucketId, req: Request) -> Response {
    relay_to(proxy, bucket, false, req).await
}

/// [`relay`], to the bucket's replicas in the map's order when `sticky`.
pub async fn relay_to(proxy: Arc<Proxy>, bucket: BucketId, sticky: bool, req: Request) -> Response {
    let (mut parts, _) = req.into_parts();
    let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(u) => u,
        Err(rejection) => {
            let status = rejection.status();
            let body = Error::InvalidInput(rejection.body_text()).to_body();
            return (status, axum::Json(body)).into_response();
        }
    };
    let path = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/").to_string();
    let auth = parts.headers.get(header::AUTHORIZATION).cloned();
    // A browser's token comes as a subprotocol: pass the offer on.
    let protocols = parts.headers.get(header::SEC_WEBSOCKET_PROTOCOL).cloned();
    let mut attempts = Attempts::new(&proxy, bucket).with_path(&path).sticky(sticky);
    let mut last: Option<Response> = None;
    while let Some((target, dest)) = attempts.next().await {
        let url = dest.url();
        let mut request = match to_ws(&url).into_client_request() {
            Ok(r) => r,
            Err(e) => {
                return ApiError(Error::Internal(format!("cannot address {url}: {e}")))
                    .into_response();
            }
        };
        request.headers_mut().insert(NO_FORWARD, "1".parse().expect("a valid header value"));
        if let Some(a) = &auth {
            request.headers_mut().insert(header::AUTHORIZATION, a.clone());
        }
        if let Some(p) = &protocols {
            request.headers_mut().insert(header::SEC_WEBSOCKET_PROTOCOL, p.clone());
        }
        let (connector, at) = (proxy.connector.clone(), url.clone());
        let connect = async move {
            let stream = connector.connect(&at).await.map_err(tung::Error::Io)?;
            tokio_tungstenite::client_async(request, stream).await
        };
        let outcome = match tokio::time::timeout(proxy.options.connect_timeout * 2, connect).await {
            Ok(r) => r,
            Err(_) => Err(tung::Error::Io(std::io::ErrorKind::TimedOut.into())),
        };
        match outcome {
            Ok((upstream, answer)) => {
                // The client gets the subprotocol the node picked.
                let picked = answer
                    .headers()
                    .get(header::SEC_WEBSOCKET_PROTOCOL)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                let upgrade = match picked {
                    Some(p) => upgrade.protocols([p]),
                    None => upgrade,
                };
                return upgrade.on_upgrade(move |client| pipe(client, upstream)).into_response();
            }
            Err(tung::Error::Http(answer)) => {
                let status = StatusCode::from_u16(answer.status().as_u16())
                    .unwrap_or(StatusCode::BAD_GATEWAY);
                let location = answer.headers().get(header::LOCATION).and_then(|v| v.to_str().ok());
                match retry::after_answer(status, location, true) {
                    Next::Follow(to) => {
                        if let Some(node) = proxy.view.node_at(&to) {
                            proxy.view.set_leader(bucket, node);
                        }
                        attempts.follow(to);
                        continue;
                    }
                    next => {
                        let mut resp =
                            (status, Body::from(answer.body().clone().unwrap_or_default()))
                                .into_response();
                        if let Some(ct) = answer.headers().get(header::CONTENT_TYPE) {
                            resp.headers_mut().insert(header::CONTENT_TYPE, ct.clone());
                        }
                        if next == Next::Answer {
                            return resp;
                        }
                        if let Some(t) = &target {
                            proxy.view.forget_leader(bucket, &t.node);
                        }
                        last = Some(resp);
                    }
                }
            }
            Err(e) => {
                tracing::debug!(%url, error = %e, "cannot open a WebSocket to a node");
                if let Some(t) = &target {
                    proxy.view.forget_leader(bucket, &t.node);
                }
            }
        }
    }
    last.unwrap_or_else(|| {
        ApiError(Error::Unavailable(format!(
            "no replica of bucket {bucket} accepted the WebSocket in time; retry shortly"
        )))
        .into_response()
    })
}

/// `http://` to `ws://`, `https://` to `wss://`.
fn to_ws(url: &str) -> String {
    if let Some(rest) = url.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = url.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        url.to_string()
    }
}

/// Relays frames both ways; when one side ends, the other is closed too.
async fn pipe(client: WebSocket, upstream: Upstream) {
    let (mut to_client, mut from_client) = client.split();
    let (mut to_node, mut from_node) = upstream.split();
    let up = async {
        while let Some(Ok(m)) = from_client.next().await {
            let Some(m) = to_node_message(m) else { continue };
            let closing = matches!(m, tung::Message::Close(_));
            if to_node.send(m).await.is_err() || closing {
                break;
            }
        }
        let _ = to_node.close().await;
    };
    let down = async {
        while let Some(Ok(m)) = from_node.next().await {
            let Some(m) = to_client_message(m) else { continue };
            let closing = matches!(m, ws::Message::Close(_));
            if to_client.send(m).await.is_err() || closing {
                break;
            }
        }
        let _ = to_client.close().await;
    };
    // Whichever side ends first ends the relay; dropping the other half
    // drops its connection.
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}

/// A client frame for the node. Pings and pongs are relayed too: a feed's
/// server pings an idle feed so that the client can tell a quiet feed from a
/// dead one. (Each side's WebSocket also answers pings itself; an extra pong
/// is harmless.)
fn to_node_message(m: ws::Message) -> Option<tung::Message> {
    Some(match m {
        ws::Message::Text(t) => tung::Message::Text(t.as_str().into()),
        ws::Message::Binary(b) => tung::Message::Binary(b),
        ws::Message::Close(f) => tung::Message::Close(
            f.map(|f| CloseFrame { code: f.code.into(), reason: f.reason.as_str().into() }),
        ),
        ws::Message::Ping(b) => tung::Message::Ping(b),
        ws::Message::Pong(b) => tung::Message::Pong(b),
    })
}

/// A node frame for the client.
fn to_client_message(m: tung::Message) -> Option<ws::Message> {
    Some(match m {
        tung::Message::Text(t) => ws::Message::Text(t.as_str().into()),
        tung::Message::Binary(b) => ws::Message::Binary(b),
        tung::Message::Close(f) => ws::Message::Close(
            f.map(|f| ws::CloseFrame { code: f.code.into(), reason: f.reason.as_str().into() }),
        ),
        tung::Message::Ping(b) => ws::Message::Ping(b),
        tung::Message::Pong(b) => ws::Message::Pong(b),
        tung::Message::Frame(_) => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_turn_into_websocket_urls() {
        assert_eq!(to_ws("http://127.0.0.1:1/v1/x?after=3"), "ws://127.0.0.1:1/v1/x?after=3");
        assert_eq!(to_ws("https://h/v1"), "wss://h/v1");
    }

    #[test]
    fn frames_keep_their_content_both_ways() {
        let t = to_node_message(ws::Message::Text("{\"a\":1}".into())).expect("text");
        assert_eq!(t, tung::Message::Text("{\"a\":1}".into()));
        let back = to_client_message(t).expect("text");
        assert_eq!(back, ws::Message::Text("{\"a\":1}".into()));
        let close = to_client_message(tung::Message::Close(Some(CloseFrame {
            code: 1000.into(),
            reason: "bye".into(),
        })))
        .expect("close");
        assert_eq!(
            close,
            ws::Message::Close(Some(ws::CloseFrame { code: 1000, reason: "bye".into() }))
        );
        let ping = bytes::Bytes::from_static(b"p");
        assert_eq!(
            to_client_message(tung::Message::Ping(ping.clone())),
            Some(ws::Message::Ping(ping))
        );
    }
}
