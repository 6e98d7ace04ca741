//! The member's HTTP routes: calls, watches and status (see
//! [`shoal_registry::embedded::wire`] for the protocol).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::{get, post};
use shoal_raft::GroupError;
use shoal_registry::embedded::wire::{
    self, ALIVE_INTERVAL, CALL_PATH, CONTENT_TYPE, FORWARDED, MetaStatus, Reply, Request, Response,
    STATUS_PATH, WATCH_PATH, WatchFrame, WatchRequest,
};
use shoal_registry::{Error, Revision};
use tokio::sync::mpsc;

use crate::machine::{Command, lock};
use crate::{GROUP, Inner};

type Meta = Arc<Inner>;

pub(crate) fn router(inner: Meta) -> Router {
    Router::new()
        .route(CALL_PATH, post(call))
        .route(WATCH_PATH, post(watch))
        .route(STATUS_PATH, get(status))
        .with_state(inner)
}

fn bad_request(what: &str, e: impl std::fmt::Display) -> HttpResponse {
    (StatusCode::BAD_REQUEST, format!("{what}: {e}\n")).into_response()
}

fn postcard(bytes: Vec<u8>) -> HttpResponse {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], bytes).into_response()
}

/// The request of a call or watch (`what`), decoded, once its token is
/// checked (when the group has one); else the answer that refuses it.
fn admit<T: serde::de::DeserializeOwned>(
    meta: &Inner,
    headers: &HeaderMap,
    body: &[u8],
    what: &str,
) -> Result<T, Box<HttpResponse>> {
    let token = &meta.options.token;
    if !token.is_empty() {
        shoal_http::auth::authorize(headers, token).map_err(|e| Box::new(e.into_response()))?;
    }
    wire::decode::<T>(body).map_err(|e| Box::new(bad_request(what, e)))
}

async fn call(State(meta): State<Meta>, headers: HeaderMap, body: Bytes) -> HttpResponse {
    let request: Request = match admit(&meta, &headers, &body, "not a registry call") {
        Ok(r) => r,
        Err(refused) => return *refused,
    };
    let forwarded = headers.contains_key(FORWARDED);
    match meta.serve(request).await {
        Served::Here(reply) => postcard(wire::encode(&reply)),
        Served::Elsewhere(leader) => postcard(meta.forward(leader, forwarded, body).await),
    }
}

/// Where a call was answered.
enum Served {
    Here(Reply),
    /// Another member leads (if known): pass the call on.
    Elsewhere(Option<u64>),
}

fn unavailable(e: GroupError) -> Served {
    match e {
        GroupError::NotLeader { leader, .. } => Served::Elsewhere(leader),
        e => Served::Here(Err(Error::Unavailable(e.to_string()))),
    }
}

impl Inner {
    async fn serve(self: &Arc<Self>, request: Request) -> Served {
        let command = match request {
            Request::Get { key } => return self.read(|s| Response::Kv(s.store.get(&key))).await,
            Request::GetPrefix { prefix } => {
                return self.read(|s| Response::Listing(s.store.listing(&prefix))).await;
            }
            Request::Revision => {
                return self.read(|s| Response::Revision(s.store.revision())).await;
            }
            Request::Members => return self.read(|s| Response::Members(s.members.clone())).await,
            Request::KeepAlive { lease } => return self.keep_alive(lease),
            Request::AddMembers { urls } => return self.add_members(urls).await,
            Request::RemoveMembers { names } => return self.remove_members(names).await,
            Request::Put { key, value, lease } => Command::Put { key, value, lease },
            Request::Delete { key } => Command::Delete { key },
            Request::DeletePrefix { prefix } => Command::DeletePrefix { prefix },
            Request::Txn(txn) => Command::Txn(txn),
            Request::Grant { ttl } => Command::Grant { ttl },
            Request::Revoke { lease } => Command::Revoke { lease },
            Request::Compact { revision } => Command::Compact { revision },
        };
        self.write(command).await
    }

    /// A linearizable read: on the leader, after a read index.
    async fn read(&self, f: impl FnOnce(&crate::machine::State) -> Response) -> Served {
        match self.raft.read_index(GROUP).await {
            Ok(()) => Served::Here(Ok(f(&lock(&self.state)))),
            Err(e) => unavailable(e),
        }
    }

    async fn write(self: &Arc<Self>, command: Command) -> Served {
        let grant = match &command {
            Command::Grant { ttl } => Some(*ttl),
            _ => None,
        };
        let term = self.raft.term(GROUP);
        match self.raft.write(GROUP, wire::encode(&command)).await {
            Ok((_, reply)) => {
                if let (Some(ttl), Ok(Response::Lease(lease))) = (grant, &reply) {
                    self.lessor.lock().unwrap_or_else(|e| e.into_inner()).renew(term, *lease, ttl);
                }
                Served::Here(reply)
            }
            Err(e) => unavailable(e),
        }
    }

    fn keep_alive(&self, lease: shoal_registry::LeaseId) -> Served {
        if !self.raft.is_leader_current(GROUP) {
            return match self.raft.leader(GROUP) {
                Some(id) if id != self.me.id => Served::Elsewhere(Some(id)),
                _ => Served::Here(Err(Error::Unavailable("the group has no leader now".into()))),
            };
        }
        let term = self.raft.term(GROUP);
        let Some(ttl) = lock(&self.state).store.lease_ttl(lease) else {
            return Served::Here(Err(Error::LeaseNotFound(lease)));
        };
        self.lessor.lock().unwrap_or_else(|e| e.into_inner()).renew(term, lease, ttl);
        Served::Here(Ok(Response::Done))
    }

    async fn add_members(self: &Arc<Self>, urls: Vec<String>) -> Served {
        if !self.raft.is_leader(GROUP) {
            return Served::Elsewhere(self.raft.leader(GROUP));
        }
        let mut new = Vec::new();
        for url in urls {
            let url = url.trim_end_matches('/').to_string();
            let status = match self.status_at(&url, Duration::from_secs(5)).await {
                Ok(s) => s,
                Err(e) => return Served::Here(Err(e)),
            };
            if status.initialized && status.id != self.me.id {
                return Served::Here(Err(Error::InvalidInput(format!(
                    "{url} (member {:?}) already belongs to a group: start it with an empty \
                     data directory and --join",
                    status.name
                ))));
            }
            new.push(crate::member(&status.name, &url));
        }
        self.write(Command::AddMembers(new)).await
    }

    async fn remove_members(self: &Arc<Self>, names: Vec<String>) -> Served {
        self.write(Command::RemoveMembers(names)).await
    }

    /// What the member at `url` says of itself, within `within`.
    pub(crate) async fn status_at(&self, url: &str, within: Duration) -> Result<MetaStatus, Error> {
        let url = url.trim_end_matches('/');
        let get = self.http.get(format!("{url}{STATUS_PATH}")).send();
        let response = match tokio::time::timeout(within, get).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Err(Error::InvalidInput(format!("{url} cannot be reached: {e}"))),
            Err(_) => return Err(Error::InvalidInput(format!("{url} did not answer"))),
        };
        response.json::<MetaStatus>().await.map_err(|e| {
            Error::InvalidInput(format!("{url} is not a member of an embedded registry: {e}"))
        })
    }

    /// Passes a call on to the leader, once.
    async fn forward(&self, leader: Option<u64>, forwarded: bool, body: Bytes) -> Vec<u8> {
        let unavailable = |m: String| wire::encode::<Reply>(&Err(Error::Unavailable(m)));
        let Some(leader) = leader.filter(|l| *l != self.me.id) else {
            return unavailable(format!("member {} knows no leader now", self.me.name));
        };
        if forwarded {
            return unavailable(format!(
                "member {} does not lead the group either (leadership is moving)",
                self.me.name
            ));
        }
        let Some(url) = self.address(leader) else {
            return unavailable(format!(
                "member {} does not know where the leader is",
                self.me.name
            ));
        };
        let send = self
            .http
            .post(format!("{url}{CALL_PATH}"))
            .header(header::CONTENT_TYPE, CONTENT_TYPE)
            .header(FORWARDED, "1")
            .bearer_auth(&self.options.token)
            .body(body)
            .send();
        let response = match tokio::time::timeout(Duration::from_secs(10), send).await {
            Ok(Ok(r)) if r.status().is_success() => r,
            Ok(Ok(r)) => {
                return unavailable(format!("the leader at {url} answered {}", r.status()));
            }
            Ok(Err(e)) => return unavailable(format!("the leader at {url}: {e}")),
            Err(_) => return unavailable(format!("the leader at {url} did not answer")),
        };
        match response.bytes().await {
            Ok(bytes) => bytes.to_vec(),
            Err(e) => unavailable(format!("the leader at {url}: {e}")),
        }
    }
}

async fn watch(State(meta): State<Meta>, headers: HeaderMap, body: Bytes) -> HttpResponse {
    let request: WatchRequest = match admit(&meta, &headers, &body, "not a watch") {
        Ok(r) => r,
        Err(refused) => return *refused,
    };
    if request.from.0 < 1 {
        return bad_request("not a watch", "the first revision must be at least 1");
    }
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    tokio::spawn(feed(meta, request, tx));
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], Body::from_stream(stream)).into_response()
}

/// Feeds one watch stream from this member's store until the client goes.
async fn feed(meta: Meta, request: WatchRequest, tx: mpsc::Sender<Bytes>) {
    let send = |frame: WatchFrame| {
        let tx = tx.clone();
        async move { tx.send(Bytes::from(wire::frame(&frame))).await.is_ok() }
    };
    let mut revisions = lock(&meta.state).store.subscribe();
    let mut closed = meta.closed.subscribe();
    if *closed.borrow_and_update() {
        return;
    }
    if !send(WatchFrame::Established).await {
        return;
    }
    let WatchRequest { prefix, from: Revision(mut next) } = request;
    loop {
        revisions.borrow_and_update();
        let read = lock(&meta.state).store.events_since(&prefix, next);
        match read {
            Err(compact_revision) => {
                send(WatchFrame::Resync { compact_revision }).await;
                return;
            }
            Ok((events, after)) => {
                next = after;
                if !events.is_empty() {
                    if !send(WatchFrame::Events(events)).await {
                        return;
                    }
                    continue;
                }
            }
        }
        tokio::select! {
            changed = revisions.changed() => if changed.is_err() { return },
            _ = closed.changed() => return,
            _ = tokio::time::sleep(ALIVE_INTERVAL) => if !send(WatchFrame::Alive).await { return },
        }
    }
}

async fn status(State(meta): State<Meta>) -> axum::Json<MetaStatus> {
    let raft = &meta.raft;
    let voters = if raft.is_leader(GROUP) {
        raft.status()
            .await
            .into_iter()
            .find(|g| g.group == GROUP)
            .map(|g| g.voters)
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    let state = lock(&meta.state);
    axum::Json(MetaStatus {
        name: meta.me.name.clone(),
        id: meta.me.id,
        url: meta.me.url.clone(),
        initialized: raft.is_initialized(GROUP),
        leader: raft.leader(GROUP),
        term: raft.term(GROUP),
        applied: state.applied,
        revision: state.store.revision().0,
        members: state.members.clone(),
        voters,
    })
}
