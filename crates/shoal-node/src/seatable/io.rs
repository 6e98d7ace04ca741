//! Real-time events of the SeaTable-compatible API over Socket.IO (protocol
//! 5 over Engine.IO 4, long-polling and WebSocket), at
//! `/api-gateway/socket.io/` and `/socket.io/`.
//!
//! A client connects, then emits `join-room` with the base's uuid and an
//! access token. From then on every committed change to the base, made
//! through any API, reaches it as `update-dtable` with two arguments: the
//! operation as a JSON string (`insert_row`, `modify_row`, `delete_row`,
//! with the table id, the row id and the values by column key) and the
//! log index of the write (the base's version). A bad token gets an
//! `error` event and the connection is closed soon after.
//!
//! The room is fed by the local replica's change feed, so any replica of
//! the base, follower or leader, serves it. A client that reconnects with
//! the same API token within [`RESUME_WITHIN`] resumes after the last
//! change it was sent, as far as the feed still holds it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use shoal_storage::feed::{Change, Subscription};
use shoal_storage::seatable::{self as st, Event, Meta};
use shoal_types::BaseId;
use shoal_types::api::Consistency;
use socketioxide::extract::{Data, SocketRef};
use socketioxide::layer::SocketIoLayer;
use socketioxide::{SocketIo, TransportType};

use super::{Caller, check_access, engine};
use crate::AppState;

/// How long a disconnected client's place in the feed is kept.
const RESUME_WITHIN: Duration = Duration::from_secs(300);

/// Where disconnected clients left off: by base and API token hash.
#[derive(Default)]
struct Places(Mutex<HashMap<(BaseId, String), (u64, Instant)>>);

impl Places {
    fn take(&self, key: &(BaseId, String)) -> Option<u64> {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        m.retain(|_, (_, at)| at.elapsed() < RESUME_WITHIN);
        m.remove(key).map(|(index, _)| index)
    }

    fn put(&self, key: (BaseId, String), index: u64) {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        m.insert(key, (index, Instant::now()));
    }
}

/// The Socket.IO layers, one per path the clients use.
pub fn socket_layers(state: Arc<AppState>) -> Vec<SocketIoLayer> {
    let places = Arc::new(Places::default());
    ["/api-gateway/socket.io", "/socket.io"]
        .into_iter()
        .map(|path| {
            let (layer, io) = SocketIo::builder()
                .req_path(path)
                .transports([TransportType::Polling, TransportType::Websocket])
                .build_layer();
            let (state, places) = (state.clone(), places.clone());
            io.ns("/", async move |s: SocketRef| {
                let (state, places) = (state.clone(), places.clone());
                s.on(
                    "join-room",
                    async move |s: SocketRef, Data((uuid, token)): Data<(String, String)>| {
                        join(state, places, s, uuid, token).await;
                    },
                );
            });
            layer
        })
        .collect()
}

/// How long a refused socket stays open after its `error` event.
///
/// A client emits `join-room` from its connect handler, before its own
/// connect call has marked it connected; a disconnect that arrives in
/// that window is dropped by the client (python-socketio ignores it),
/// which would leave it waiting on a room it never joined. The error is
/// sent at once; the close waits until the client has settled.
const REFUSED_CLOSE_AFTER: Duration = Duration::from_millis(500);

fn refuse(s: SocketRef, message: String) {
    tracing::debug!(%message, "SeaTable socket refused");
    let _ = s.emit("error", &message);
    tokio::spawn(async move {
        tokio::time::sleep(REFUSED_CLOSE_AFTER).await;
        let _ = s.disconnect();
    });
}

async fn join(
    state: Arc<AppState>,
    places: Arc<Places>,
    s: SocketRef,
    uuid: String,
    token: String,
) {
    let who = match check_access(&state, &token, &uuid, false) {
        Ok(who) => who,
        Err(super::StError::Forbidden(m)) => return refuse(s, m),
        Err(super::StError::Api(e)) => return refuse(s, e.to_body().error.message),
    };
    let Ok(engine) = engine(&state).cloned() else {
        return refuse(s, "this process serves no bases".into());
    };
    let Caller { base, tid, .. } = who;
    let key = (base, tid.clone());
    let after = places.take(&key);
    // The room is served by this replica: read it as it is here.
    let opened = engine
        .read(base.bucket(), Consistency::None, move |store| {
            let meta = store.read_system(&base, |c| st::load_for_token(c, &tid))?;
            let Some(meta) = meta else { return Ok(None) };
            Ok(Some((meta, store.subscribe(&base, after)?)))
        })
        .await;
    let (meta, sub) = match opened {
        Ok(Some(opened)) => opened,
        Ok(None) => return refuse(s, "the API token of this access token was revoked".into()),
        Err(e) => return refuse(s, e.to_body().error.message),
    };
    tracing::debug!(%base, "SeaTable socket joined");
    let last = stream(&engine, &s, base, meta, sub).await;
    places.put(key, last);
}

/// Sends the base's changes to the socket until either ends; returns the
/// index of the last change sent.
async fn stream(
    engine: &Arc<crate::Engine>,
    s: &SocketRef,
    base: BaseId,
    mut meta: Meta,
    mut sub: Subscription,
) -> u64 {
    let mut last = sub.after;
    let backlog = std::mem::take(&mut sub.backlog);
    for batch in backlog {
        if !send(engine, s, base, &mut meta, &batch, sub.after, &mut last).await {
            return last;
        }
    }
    let mut check = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            batch = sub.live.recv() => match batch {
                Some(batch) => {
                    if !send(engine, s, base, &mut meta, &batch, sub.after, &mut last).await {
                        return last;
                    }
                }
                // The base was dropped, or this replica stopped serving it:
                // the client reconnects (elsewhere) and resumes.
                None => {
                    let _ = s.clone().disconnect();
                    return last;
                }
            },
            _ = check.tick() => if !s.connected() {
                return last;
            }
        }
    }
}

/// Emits one write's events; false once the socket is gone.
async fn send(
    engine: &Arc<crate::Engine>,
    s: &SocketRef,
    base: BaseId,
    meta: &mut Meta,
    batch: &[Change],
    after: u64,
    last: &mut u64,
) -> bool {
    for e in batch.iter().filter(|e| e.index > after) {
        // A schema change is stale too: the catalog is read again.
        let mut op = st::event(meta, e);
        if op == Event::Stale {
            let reloaded = engine.local(move |store| store.read_system(&base, st::load)).await;
            if let Ok(m) = reloaded {
                *meta = m;
            }
            op = st::event(meta, e);
        }
        if let Event::Op(op) = op {
            let text = Value::to_string(&op);
            if s.emit("update-dtable", &(text, e.index)).is_err() {
                return false;
            }
        }
        *last = e.index;
    }
    s.connected()
}
