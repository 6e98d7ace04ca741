//! The proxy in-process, in front of fake nodes on 127.0.0.1 that answer
//! what each test needs: redirects, misdirection, dead nodes, elections.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use shoal_proxy::{Proxy, ProxyOptions, View};
use shoal_registry::directory::Directory;
use shoal_types::NodeId;
use shoal_types::api::NodeInfo;
use shoal_types::placement::{PlacementMap, Topology};
use tokio::sync::watch;

const TOKEN: &str = "routing-test-token";
/// A base in bucket `ab`.
const BASE: &str = "ab000000-0000-4000-8000-000000000001";

/// What a fake node saw of one request.
#[derive(Clone, Debug)]
struct Seen {
    method: Method,
    path: String,
    headers: HeaderMap,
    body: Vec<u8>,
}

type Handler = Arc<dyn Fn(&Seen) -> Response + Send + Sync>;

/// A fake node: answers with `handler`, records every request. Like a
/// node, it takes requests as plain HTTP and over a relay.
struct Fake {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    _stop: watch::Sender<bool>,
}

impl Fake {
    async fn start(handler: impl Fn(&Seen) -> Response + Send + Sync + 'static) -> Fake {
        Fake::serve(handler, true).await
    }

    /// A fake node without a relay (as one of an earlier version).
    async fn start_plain(handler: impl Fn(&Seen) -> Response + Send + Sync + 'static) -> Fake {
        Fake::serve(handler, false).await
    }

    async fn serve(
        handler: impl Fn(&Seen) -> Response + Send + Sync + 'static,
        relay: bool,
    ) -> Fake {
        let handler: Handler = Arc::new(handler);
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let s = seen.clone();
        let app = Router::new().fallback(move |req: Request| {
            let (handler, seen) = (handler.clone(), s.clone());
            async move {
                let (parts, body) = req.into_parts();
                let body = axum::body::to_bytes(body, 1 << 20).await.unwrap_or_default().to_vec();
                let path = parts.uri.path_and_query().map(|p| p.to_string()).unwrap_or_default();
                let one = Seen { method: parts.method, path, headers: parts.headers, body };
                let answer = handler(&one);
                seen.lock().expect("lock").push(one);
                answer
            }
        });
        let (stop, stopped) = watch::channel(false);
        let app = if relay {
            app.clone().merge(shoal_http::relay::routes(app, TOKEN.into(), stopped).0)
        } else {
            app
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Fake { url, seen, _stop: stop }
    }

    fn hits(&self) -> usize {
        self.seen.lock().expect("lock").len()
    }

    fn last(&self) -> Seen {
        self.seen.lock().expect("lock").last().cloned().expect("a request")
    }
}

/// A URL where nothing listens.
async fn dead_url() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    format!("http://{}", l.local_addr().expect("addr"))
}

fn info(url: &str) -> NodeInfo {
    NodeInfo {
        node_url: format!("{url}/public"),
        local_node_url: url.to_string(),
        zone: "z".into(),
        capacity: 1,
        version: "0".into(),
        registered_at: String::new(),
        instance: String::new(),
    }
}

/// A directory where every bucket lives on `urls` (n1, n2, ...) in order.
fn directory(urls: &[&str]) -> Directory {
    let mut map = PlacementMap::empty(urls.len(), Topology::Dynamic);
    map.epoch = 4;
    let ids: Vec<NodeId> = (1..=urls.len()).map(|i| NodeId(format!("n{i}"))).collect();
    for b in map.buckets.iter_mut() {
        *b = ids.clone();
    }
    let nodes: BTreeMap<NodeId, NodeInfo> =
        ids.iter().cloned().zip(urls.iter().map(|u| info(u))).collect();
    Directory { map: Some(map), nodes }
}

struct Running {
    url: String,
    proxy: Arc<Proxy>,
    _directory: watch::Sender<Directory>,
}

async fn proxy(dir: Directory, tweak: impl FnOnce(&mut ProxyOptions)) -> Running {
    let mut options = ProxyOptions {
        admin_token: TOKEN.into(),
        retry_deadline: Duration::from_secs(2),
        backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
        ..ProxyOptions::default()
    };
    tweak(&mut options);
    let (tx, rx) = watch::channel(dir);
    let proxy = Proxy::new(options, View::new(rx)).expect("proxy");
    let app = shoal_proxy::router(proxy.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Running { url, proxy, _directory: tx }
}

async fn call(
    url: &str,
    method: Method,
    path: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> (StatusCode, Value) {
    let mut r = reqwest::Client::new()
        .request(method, format!("{url}{path}"))
        .bearer_auth(TOKEN)
        .timeout(Duration::from_secs(20));
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    if let Some(b) = body {
        r = r.header("content-type", "application/json").body(b.to_string());
    }
    let resp = r.send().await.expect("the proxy answers");
    let status = resp.status();
    let text = resp.text().await.expect("body");
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

fn json_answer(status: StatusCode, v: Value) -> Response {
    (status, axum::Json(v)).into_response()
}

fn unavailable() -> Response {
    json_answer(
        StatusCode::SERVICE_UNAVAILABLE,
        json!({"error": {"code": "unavailable", "message": "electing"}}),
    )
}

#[tokio::test]
async fn a_redirect_is_followed_and_its_target_remembered_as_leader() {
    let n2 = Fake::start(|s| {
        let ok = s.headers.get("x-shoal-no-forward").is_some()
            && s.headers.get("authorization").and_then(|v| v.to_str().ok())
                == Some(&format!("Bearer {TOKEN}"));
        if ok {
            json_answer(StatusCode::OK, json!({"from": "n2", "path": s.path}))
        } else {
            json_answer(StatusCode::BAD_REQUEST, json!({"error": {"code": "x", "message": "hdr"}}))
        }
    })
    .await;
    let n2_url = n2.url.clone();
    let n1 = Fake::start(move |s| {
        (StatusCode::TEMPORARY_REDIRECT, [("location", format!("{n2_url}{}", s.path))], "")
            .into_response()
    })
    .await;
    let p = proxy(directory(&[&n1.url, &n2.url]), |_| {}).await;
    let path = format!("/v1/bases/{BASE}/tables?x=1");
    let (s, v) = call(&p.url, Method::GET, &path, None, &[]).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v, json!({"from": "n2", "path": path}));
    assert_eq!(p.proxy.view().leader(shoal_types::BucketId(0xab)), Some(NodeId("n2".into())));
    // The next request goes straight to the leader.
    let (s, _) = call(&p.url, Method::GET, &path, None, &[]).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!((n1.hits(), n2.hits()), (1, 2));
}

#[tokio::test]
async fn dead_and_misdirected_nodes_are_skipped() {
    let dead = dead_url().await;
    let n2 = Fake::start(|_| {
        json_answer(
            StatusCode::MISDIRECTED_REQUEST,
            json!({"error": {"code": "misdirected", "message": "not here"}}),
        )
    })
    .await;
    let n3 = Fake::start(|s| {
        json_answer(StatusCode::OK, json!({"body": String::from_utf8_lossy(&s.body)}))
    })
    .await;
    let p = proxy(directory(&[&dead, &n2.url, &n3.url]), |_| {}).await;
    // Even an unkeyed write: neither node took it.
    let (s, v) =
        call(&p.url, Method::POST, &format!("/v1/bases/{BASE}/execute"), Some("{\"a\":1}"), &[])
            .await;
    assert_eq!((s, v), (StatusCode::OK, json!({"body": "{\"a\":1}"})));
    assert_eq!((n2.hits(), n3.hits()), (1, 1));
    assert_eq!(n3.last().method, Method::POST);
}

#[tokio::test]
async fn only_reads_and_keyed_writes_are_sent_again_after_a_503() {
    let n1 = Fake::start(|_| unavailable()).await;
    let n2 = Fake::start(|_| json_answer(StatusCode::OK, json!({"ok": true}))).await;
    let p = proxy(directory(&[&n1.url, &n2.url]), |_| {}).await;
    let exec = format!("/v1/bases/{BASE}/execute");
    let (s, v) = call(&p.url, Method::POST, &exec, Some("{}"), &[]).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert_eq!(v["error"]["code"], "unavailable");
    assert_eq!(n2.hits(), 0, "an unkeyed write was sent again");
    let (s, _) = call(&p.url, Method::POST, &exec, Some("{}"), &[("idempotency-key", "k1")]).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(n2.last().headers.get("idempotency-key").map(|v| v.as_bytes()), Some(&b"k1"[..]));
    let (s, _) =
        call(&p.url, Method::POST, &format!("/v1/bases/{BASE}/query"), Some("{}"), &[]).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = call(&p.url, Method::GET, &format!("/v1/bases/{BASE}"), None, &[]).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(n2.hits(), 3);
}

#[tokio::test]
async fn retries_stop_at_the_deadline_with_the_last_answer() {
    let n1 = Fake::start(|_| unavailable()).await;
    let n2 = Fake::start(|_| unavailable()).await;
    let p =
        proxy(directory(&[&n1.url, &n2.url]), |o| o.retry_deadline = Duration::from_millis(500))
            .await;
    let (s, v) = call(&p.url, Method::GET, &format!("/v1/bases/{BASE}"), None, &[]).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("unavailable"))
    );
    // It went round more than once, with pauses (not thousands of times).
    let hits = n1.hits() + n2.hits();
    assert!((3..200).contains(&hits), "{hits} attempts");
    // Without a map there is nobody to ask.
    let empty =
        proxy(Directory::default(), |o| o.retry_deadline = Duration::from_millis(300)).await;
    let (s, v) = call(&empty.url, Method::GET, &format!("/v1/bases/{BASE}"), None, &[]).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert!(v["error"]["message"].as_str().unwrap_or("").contains("placement map"), "{v}");
}

#[tokio::test]
async fn create_picks_the_id_to_route_by() {
    let n1 = Fake::start(|s| {
        let body: Value = serde_json::from_slice(&s.body).unwrap_or(Value::Null);
        json_answer(StatusCode::CREATED, body)
    })
    .await;
    let p = proxy(directory(&[&n1.url]), |_| {}).await;
    let (s, v) = call(
        &p.url,
        Method::POST,
        "/v1/bases",
        Some("{\"name\":\"x\"}"),
        &[("idempotency-key", "c1")],
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    let want = uuid::Uuid::new_v5(&shoal_http::bases::KEYED_IDS, b"c1").to_string();
    assert_eq!(v, json!({"name": "x", "id": want}));
    let (s, v) =
        call(&p.url, Method::POST, "/v1/bases", Some(&format!("{{\"id\":\"{BASE}\"}}")), &[]).await;
    assert_eq!((s, v), (StatusCode::CREATED, json!({"id": BASE})));
    let (s, v) = call(&p.url, Method::POST, "/v1/bases", Some("{}"), &[]).await;
    assert_eq!(s, StatusCode::CREATED);
    assert!(v["id"].as_str().is_some_and(|id| id.parse::<uuid::Uuid>().is_ok()), "{v}");
    assert_eq!(n1.hits(), 3);
}

#[tokio::test]
async fn lists_merge_every_nodes_page() {
    let page = |ids: &[&str], more: bool| {
        let bases: Vec<Value> = ids
            .iter()
            .map(|id| json!({"id": id, "name": null, "bucket": &id[..2], "created_at": ""}))
            .collect();
        let mut v = json!({"bases": bases});
        if more {
            v["next_after"] = json!(ids.last());
        }
        v
    };
    let (a, b, c) = (
        "01000000-0000-4000-8000-000000000000",
        "02000000-0000-4000-8000-000000000000",
        "03000000-0000-4000-8000-000000000000",
    );
    let p1 = page(&[a, c], false);
    let p2 = page(&[b], false);
    let n1 = Fake::start(move |s| {
        if s.path.contains("limit=0") {
            json_answer(
                StatusCode::BAD_REQUEST,
                json!({"error": {"code": "invalid_input", "message": "limit"}}),
            )
        } else {
            json_answer(StatusCode::OK, p1.clone())
        }
    })
    .await;
    let n2 = Fake::start(move |_| json_answer(StatusCode::OK, p2.clone())).await;
    let p = proxy(directory(&[&n1.url, &n2.url]), |_| {}).await;
    let (s, v) = call(&p.url, Method::GET, "/v1/bases", None, &[]).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let ids: Vec<&str> =
        v["bases"].as_array().expect("bases").iter().filter_map(|b| b["id"].as_str()).collect();
    assert_eq!(ids, [a, b, c]);
    let (s, v) = call(&p.url, Method::GET, "/v1/bases?limit=2", None, &[]).await;
    assert_eq!((s, &v["next_after"]), (StatusCode::OK, &json!(b)));
    assert!(n1.last().path.ends_with("?limit=2"), "{}", n1.last().path);
    // The nodes check the query.
    let (s, v) = call(&p.url, Method::GET, "/v1/bases?limit=0", None, &[]).await;
    assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_input")));
    // A bucket none of whose replicas answers makes the list incomplete: 503.
    let dead = dead_url().await;
    let half = proxy(directory(&[&dead]), |_| {}).await;
    let (s, _) = call(&half.url, Method::GET, "/v1/bases", None, &[]).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn location_names_the_leader_a_replica_reports() {
    let n1 = Fake::start(|_| {
        json_answer(
            StatusCode::OK,
            json!({"bucket": "ab", "leader": null, "replicas": [], "epoch": 4}),
        )
    })
    .await;
    let n2_public = Arc::new(Mutex::new(String::new()));
    let n2p = n2_public.clone();
    let n2 = Fake::start(move |_| {
        json_answer(
            StatusCode::OK,
            json!({"bucket": "ab", "leader": {"node_id": "n2", "node_url": *n2p.lock().expect("lock")},
                   "replicas": [], "epoch": 3}),
        )
    })
    .await;
    *n2_public.lock().expect("lock") = format!("{}/public", n2.url);
    let p = proxy(directory(&[&n1.url, &n2.url]), |_| {}).await;
    let (s, v) = call(&p.url, Method::GET, &format!("/v1/bases/{BASE}/location"), None, &[]).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // The proxy's map is newer (epoch 4): its replicas, the node's leader.
    assert_eq!(v["epoch"], 4);
    assert_eq!(v["leader"], json!({"node_id": "n2", "node_url": format!("{}/public", n2.url)}));
    assert_eq!(v["replicas"].as_array().map(Vec::len), Some(2));
    assert_eq!(v["replicas"][0]["node_url"], format!("{}/public", n1.url));
    assert_eq!(p.proxy.view().leader(shoal_types::BucketId(0xab)), Some(NodeId("n2".into())));
    // Each node is asked for its own view, not to ask around.
    assert!(n1.last().headers.contains_key("x-shoal-forwarded"));
}

#[tokio::test]
async fn bad_requests_are_refused_by_the_proxy() {
    let n1 = Fake::start(|_| json_answer(StatusCode::OK, json!({}))).await;
    let p = proxy(directory(&[&n1.url]), |o| o.max_body_bytes = 1024).await;
    let none =
        reqwest::Client::new().get(format!("{}/v1/bases/{BASE}", p.url)).send().await.expect("up");
    assert_eq!(none.status(), StatusCode::UNAUTHORIZED);
    let (s, v) = call(&p.url, Method::GET, "/v1/bases/nope/tables", None, &[]).await;
    assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_input")));
    let (s, _) = call(&p.url, Method::GET, "/v1/bases/%FF%FE", None, &[]).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, v) = call(&p.url, Method::POST, &format!("/v1/bases/{BASE}/location"), None, &[]).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::METHOD_NOT_ALLOWED, Some("invalid_input"))
    );
    let (s, _) = call(&p.url, Method::DELETE, "/v1/bases", None, &[]).await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
    let big = "x".repeat(4096);
    let (s, v) =
        call(&p.url, Method::POST, &format!("/v1/bases/{BASE}/execute"), Some(&big), &[]).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("too_large"))
    );
    for body in ["{nope", "[1]", "{\"id\": 3}", "{\"id\": \"x\"}"] {
        let (s, _) = call(&p.url, Method::POST, "/v1/bases", Some(body), &[]).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
    }
    assert_eq!(n1.hits(), 0, "a refused request reached a node");
}

/// A fake node serving a WebSocket under every path: it sends a greeting
/// naming the path, echoes each text frame, and closes after `bye`.
async fn ws_node() -> String {
    use axum::extract::ws::{Message, WebSocketUpgrade};
    let app = Router::new().fallback(|ws: WebSocketUpgrade, req: axum::http::Uri| async move {
        ws.on_upgrade(move |mut socket| async move {
            let hello = json!({"hello": req.to_string()}).to_string();
            if socket.send(Message::Text(hello.into())).await.is_err() {
                return;
            }
            while let Some(Ok(m)) = socket.recv().await {
                match m {
                    Message::Text(t) if t.as_str() == "bye" => {
                        let _ = socket.send(Message::Close(None)).await;
                        return;
                    }
                    Message::Text(t) => {
                        let _ =
                            socket.send(Message::Text(format!("echo {}", t.as_str()).into())).await;
                    }
                    Message::Close(_) => return,
                    _ => {}
                }
            }
        })
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    url
}

#[tokio::test]
async fn websockets_are_relayed_to_the_leader_both_ways() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    let n2 = ws_node().await;
    let n2_url = n2.clone();
    // n1 is a follower: it redirects the upgrade to the leader.
    let n1 = Fake::start(move |s| {
        (StatusCode::TEMPORARY_REDIRECT, [("location", format!("{n2_url}{}", s.path))], "")
            .into_response()
    })
    .await;
    let p = proxy(directory(&[&n1.url, &n2]), |_| {}).await;
    let path = format!("/v1/bases/{BASE}/changes?after=3");
    let mut req = format!("{}{path}", p.url.replacen("http://", "ws://", 1))
        .into_client_request()
        .expect("request");
    req.headers_mut().insert("authorization", format!("Bearer {TOKEN}").parse().expect("header"));
    let (mut ws, _) =
        tokio_tungstenite::connect_async(req).await.expect("upgraded through the proxy");
    let next = |m: Option<Result<Message, _>>| match m {
        Some(Ok(m)) => m,
        other => panic!("expected a frame, got {other:?}"),
    };
    let hello =
        next(tokio::time::timeout(Duration::from_secs(10), ws.next()).await.expect("in time"));
    assert_eq!(hello, Message::Text(json!({"hello": path}).to_string().into()));
    ws.send(Message::Text("ping-1".into())).await.expect("send");
    let echo =
        next(tokio::time::timeout(Duration::from_secs(10), ws.next()).await.expect("in time"));
    assert_eq!(echo, Message::Text("echo ping-1".into()));
    // The node closes: the client's side closes too.
    ws.send(Message::Text("bye".into())).await.expect("send");
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(m)) = ws.next().await {
            if matches!(m, Message::Close(_)) {
                return true;
            }
        }
        true
    })
    .await;
    assert_eq!(end, Ok(true), "the relay did not close the client's side");
    assert_eq!(n1.hits(), 1);

    // An upgrade the node refuses gives the node's status and body.
    let refusing = Fake::start(|_| {
        json_answer(StatusCode::NOT_FOUND, json!({"error": {"code": "not_found", "message": "no"}}))
    })
    .await;
    let p = proxy(directory(&[&refusing.url]), |_| {}).await;
    let mut req = format!("{}{path}", p.url.replacen("http://", "ws://", 1))
        .into_client_request()
        .expect("request");
    req.headers_mut().insert("authorization", format!("Bearer {TOKEN}").parse().expect("header"));
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
            assert_eq!(r.status().as_u16(), 404);
            let body: Value =
                serde_json::from_slice(r.body().as_deref().unwrap_or_default()).expect("json");
            assert_eq!(body["error"]["code"], "not_found");
        }
        other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
    }
}

#[tokio::test]
async fn nodes_without_a_relay_get_plain_http() {
    let n2 = Fake::start(|s| {
        let ok = s.headers.get("x-shoal-no-forward").is_some();
        json_answer(StatusCode::OK, json!({"from": "n2", "no_forward": ok}))
    })
    .await;
    let n2_url = n2.url.clone();
    let n1 = Fake::start_plain(move |s| {
        if s.headers.get("x-shoal-no-forward").is_none() {
            return json_answer(StatusCode::BAD_REQUEST, json!({"error": "no x-shoal-no-forward"}));
        }
        (StatusCode::TEMPORARY_REDIRECT, [("location", format!("{n2_url}{}", s.path))], "")
            .into_response()
    })
    .await;
    let p = proxy(directory(&[&n1.url, &n2.url]), |_| {}).await;
    let exec = format!("/v1/bases/{BASE}/execute");
    for _ in 0..2 {
        p.proxy.view().forget_leader(shoal_types::BucketId(0xab), &NodeId("n2".into()));
        let (s, v) = call(&p.url, Method::POST, &exec, Some("{}"), &[]).await;
        assert_eq!((s, v), (StatusCode::OK, json!({"from": "n2", "no_forward": true})));
    }
    // n1 was asked for a relay once, and remembered as having none.
    let paths: Vec<String> = n1.seen.lock().expect("lock").iter().map(|s| s.path.clone()).collect();
    assert_eq!(paths, ["/internal/relay".to_string(), exec.clone(), exec]);
    assert_eq!(n2.hits(), 2);
}

/// A node that opens relays and then misbehaves: after reading the first
/// frame of requests it closes the connection, or first says it stops
/// having taken none of them.
async fn broken_relay(say_stopping: bool) -> String {
    use shoal_http::relay::RelayAnswer;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if s.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let upgraded = "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\n\
                                upgrade: shoal-relay\r\n\r\n";
                if s.write_all(upgraded.as_bytes()).await.is_err() {
                    return;
                }
                let mut frame = bytes::BytesMut::new();
                if !matches!(shoal_http::relay::read_frame(&mut s, &mut frame).await, Ok(Some(_))) {
                    return;
                }
                if say_stopping {
                    let mut out = bytes::BytesMut::new();
                    RelayAnswer::stopping(0).encode(&mut out);
                    let mut framed = (out.len() as u32).to_le_bytes().to_vec();
                    framed.extend_from_slice(&out);
                    let _ = s.write_all(&framed).await;
                }
            });
        }
    });
    url
}

#[tokio::test]
async fn a_relay_that_breaks_loses_only_what_it_may_have_applied() {
    let n1 = broken_relay(false).await;
    let n2 = Fake::start(|_| json_answer(StatusCode::OK, json!({"from": "n2"}))).await;
    let p = proxy(directory(&[&n1, &n2.url]), |_| {}).await;
    let exec = format!("/v1/bases/{BASE}/execute");
    // n1 read the write and vanished: it may have applied it.
    let (s, v) = call(&p.url, Method::POST, &exec, Some("{}"), &[]).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert!(v["error"]["message"].as_str().unwrap_or("").contains("may or may not"), "{v}");
    assert_eq!(n2.hits(), 0, "an unkeyed write was sent again");
    // A keyed write and a read are safe to send again.
    let (s, _) = call(&p.url, Method::POST, &exec, Some("{}"), &[("idempotency-key", "k")]).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = call(&p.url, Method::GET, &format!("/v1/bases/{BASE}"), None, &[]).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(n2.hits(), 2);
}

#[tokio::test]
async fn what_a_stopping_node_did_not_take_goes_elsewhere() {
    let n1 = broken_relay(true).await;
    let n2 = Fake::start(|_| json_answer(StatusCode::OK, json!({"from": "n2"}))).await;
    let p = proxy(directory(&[&n1, &n2.url]), |_| {}).await;
    // Even an unkeyed write: n1 said it took none.
    let (s, v) =
        call(&p.url, Method::POST, &format!("/v1/bases/{BASE}/execute"), Some("{}"), &[]).await;
    assert_eq!((s, v), (StatusCode::OK, json!({"from": "n2"})));
    assert_eq!(n2.hits(), 1);
}
