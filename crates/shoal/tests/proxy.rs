//! `shoal proxy` in front of three real `shoal node`s, a monitor and a real
//! etcd: every API call through either of two proxies, location answers
//! that name the current leader, a leader's SIGKILL hidden from clients, and
//! a leader's SIGTERM that fails no write, keyed or not.

mod common;

use std::time::{Duration, Instant};

use common::Process;
use common::cluster::{Cluster, TOKEN};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use shoal_client::watch::{Watch, WatchEvent, WatchOptions};
use shoal_types::BaseId;
use shoal_types::api::{ChangeEvent, ChangeOp, FeedMessage};

/// One HTTP call; the body parsed as JSON when it is JSON.
async fn call(
    url: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
    headers: &[(&str, &str)],
) -> Result<(StatusCode, Value), String> {
    let mut r = reqwest::Client::new()
        .request(method, format!("{url}{path}"))
        .timeout(Duration::from_secs(30));
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("authorization")) {
        r = r.bearer_auth(TOKEN);
    }
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let text = resp.text().await.map_err(|e| e.to_string())?;
    Ok((status, serde_json::from_str(&text).unwrap_or(Value::String(text))))
}

/// A call that must answer `want`.
async fn expect(
    url: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
    want: StatusCode,
) -> Value {
    let (s, v) = call(url, method.clone(), path, body, &[]).await.expect("reachable");
    assert_eq!(s, want, "{method} {url}{path}: {v}");
    v
}

/// Retries a call while it answers 503 (a cluster still electing), bounded.
async fn until_available(
    url: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
    headers: &[(&str, &str)],
    within: Duration,
) -> (StatusCode, Value) {
    let deadline = Instant::now() + within;
    loop {
        let r = call(url, method.clone(), path, body.clone(), headers).await;
        match r {
            Ok((s, v)) if s != StatusCode::SERVICE_UNAVAILABLE => return (s, v),
            other => assert!(
                Instant::now() < deadline,
                "{method} {path} still unavailable after {within:?}: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn start(c: &mut Cluster, proxy_extra: &[&str]) -> Vec<Process> {
    c.start_three_nodes();
    c.wait_three_replicas().await;
    (0..2).map(|i| c.start_proxy(i, proxy_extra)).collect()
}

/// The leader of a base's bucket as the nodes report it: the node that
/// hosts the bucket and knows a leader answers `location` itself.
async fn nodes_leader(c: &Cluster, base: &str) -> Option<String> {
    for p in c.nodes.values().filter(|p| !p.url.is_empty()) {
        let path = format!("/v1/bases/{base}/location");
        if let Ok((StatusCode::OK, v)) = call(&p.url, Method::GET, &path, None, &[]).await
            && let Some(l) = v["leader"]["node_id"].as_str()
        {
            return Some(l.to_string());
        }
    }
    None
}

/// Waits (bounded) until both proxies and the nodes agree on a leader that
/// satisfies `pred`; returns it.
async fn agreed_leader(
    c: &Cluster,
    proxies: &[&str],
    base: &str,
    within: Duration,
    pred: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        let from_nodes = nodes_leader(c, base).await;
        seen.clear();
        for p in proxies {
            let path = format!("/v1/bases/{base}/location");
            let v = call(p, Method::GET, &path, None, &[]).await.map(|(_, v)| v);
            seen.push(v.ok().and_then(|v| v["leader"]["node_id"].as_str().map(String::from)));
        }
        if let Some(l) = &from_nodes
            && pred(l)
            && seen.iter().all(|s| s.as_deref() == Some(l.as_str()))
        {
            return l.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no agreed leader after {within:?}: nodes say {from_nodes:?}, proxies say {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_api_call_works_through_either_proxy() {
    let mut c = Cluster::new().await;
    let proxies = start(&mut c, &[]).await;
    let (a, b) = (proxies[0].url.clone(), proxies[1].url.clone());

    // Ops routes and the cluster.
    expect(&a, Method::GET, "/healthz", None, StatusCode::OK).await;
    expect(&b, Method::GET, "/v1/openapi.json", None, StatusCode::OK).await;
    let status = expect(&a, Method::GET, "/v1/cluster", None, StatusCode::OK).await;
    assert_eq!(status["nodes"].as_array().map(Vec::len), Some(3), "{status}");
    let status_b = expect(&b, Method::GET, "/v1/cluster", None, StatusCode::OK).await;
    assert_eq!(status["epoch"], status_b["epoch"]);

    // Create: without an id (keyed, so retrying while groups elect is safe),
    // with an id, and the same id again.
    let keyed = [("idempotency-key", "create-1")];
    let (s, created) = until_available(
        &a,
        Method::POST,
        "/v1/bases",
        Some(json!({"name": "one"})),
        &keyed,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    let one = created["id"].as_str().expect("id").to_string();
    // The same key through the other proxy names the same base.
    let (s, again) = call(&b, Method::POST, "/v1/bases", Some(json!({"name": "one"})), &keyed)
        .await
        .expect("up");
    assert!(s.is_success(), "{s} {again}");
    assert_eq!(again["id"], created["id"]);
    let two = "f0e1d2c3-b4a5-4678-9123-456789abcdef";
    let (s, v) = until_available(
        &b,
        Method::POST,
        "/v1/bases",
        Some(json!({"id": two, "name": "two"})),
        &[],
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["id"], two);
    expect(&a, Method::POST, "/v1/bases", Some(json!({"id": two})), StatusCode::CONFLICT).await;

    // Get, from both proxies.
    let got = expect(&b, Method::GET, &format!("/v1/bases/{one}"), None, StatusCode::OK).await;
    assert_eq!(got["name"], "one");
    let got = expect(&a, Method::GET, &format!("/v1/bases/{two}"), None, StatusCode::OK).await;
    assert_eq!(got["name"], "two");

    // List: merged from every node, in id order, paged.
    for p in [&a, &b] {
        let list = expect(p, Method::GET, "/v1/bases", None, StatusCode::OK).await;
        let ids: Vec<&str> = list["bases"]
            .as_array()
            .expect("bases")
            .iter()
            .filter_map(|b| b["id"].as_str())
            .collect();
        let mut want = vec![one.as_str(), two];
        want.sort();
        assert_eq!(ids, want, "{list}");
        let page = expect(p, Method::GET, "/v1/bases?limit=1", None, StatusCode::OK).await;
        assert_eq!(page["bases"].as_array().map(Vec::len), Some(1));
        assert_eq!(page["next_after"], want[0]);
        let rest = format!("/v1/bases?limit=5&after={}", want[0]);
        let page = expect(p, Method::GET, &rest, None, StatusCode::OK).await;
        assert_eq!(page["bases"][0]["id"], want[1]);
        assert!(page.get("next_after").is_none(), "{page}");
    }

    // SQL and tables.
    let exec = format!("/v1/bases/{one}/execute");
    let ddl = json!({"statements": [{"sql": "CREATE TABLE t (id INTEGER PRIMARY KEY, k TEXT)"}]});
    expect(&a, Method::POST, &exec, Some(ddl), StatusCode::OK).await;
    let ins = json!({"statements": [{"sql": "INSERT INTO t (k) VALUES (?)", "params": ["x"]}]});
    let w = expect(&b, Method::POST, &exec, Some(ins), StatusCode::OK).await;
    assert!(w["index"].as_u64().is_some(), "{w}");
    let q = expect(
        &a,
        Method::POST,
        &format!("/v1/bases/{one}/query"),
        Some(json!({"sql": "SELECT k FROM t"})),
        StatusCode::OK,
    )
    .await;
    assert_eq!(q["rows"], json!([["x"]]));
    let tables =
        expect(&b, Method::GET, &format!("/v1/bases/{one}/tables"), None, StatusCode::OK).await;
    assert_eq!(tables["tables"][0]["name"], "t", "{tables}");

    // Rows CRUD.
    let rows = format!("/v1/bases/{one}/tables/t/rows");
    let ins = expect(
        &a,
        Method::POST,
        &rows,
        Some(json!({"rows": [{"k": "y"}, {"k": "z"}]})),
        StatusCode::CREATED,
    )
    .await;
    let rowid = ins["rowids"][0].as_i64().expect("rowid");
    let list = expect(&b, Method::GET, &format!("{rows}?limit=10"), None, StatusCode::OK).await;
    assert_eq!(list["rows"].as_array().map(Vec::len), Some(3), "{list}");
    let row = format!("{rows}/{rowid}");
    assert_eq!(expect(&a, Method::GET, &row, None, StatusCode::OK).await["k"], "y");
    expect(&b, Method::PATCH, &row, Some(json!({"values": {"k": "Y"}})), StatusCode::OK).await;
    assert_eq!(expect(&a, Method::GET, &row, None, StatusCode::OK).await["k"], "Y");
    expect(&a, Method::DELETE, &row, None, StatusCode::OK).await;
    expect(&b, Method::GET, &row, None, StatusCode::NOT_FOUND).await;

    // The change feed through a proxy: the writes above, then a new one
    // made through the other proxy.
    let mut feed = watch(std::slice::from_ref(&a), &one, 0);
    let seen = changes(&mut feed, 6).await;
    let ops: Vec<ChangeOp> = seen.iter().map(|e| e.op).collect();
    use ChangeOp::{Ddl, Delete, Insert, Update};
    assert_eq!(ops, [Ddl, Insert, Insert, Insert, Update, Delete], "{seen:?}");
    let ins = json!({"statements": [{"sql": "INSERT INTO t (k) VALUES (?)", "params": ["live"]}]});
    let w = expect(&b, Method::POST, &exec, Some(ins), StatusCode::OK).await;
    let live = changes(&mut feed, 1).await;
    assert_eq!(live[0].index, w["index"].as_u64().expect("index"));
    assert_eq!(live[0].row.as_ref().map(|r| r["k"].clone()), Some(json!("live")));
    ws_refused(&b, &format!("/v1/bases/{one}/changes?after=x"), 400).await;

    // Checksum through the proxy equals the leader's own.
    let sum =
        expect(&a, Method::GET, &format!("/v1/bases/{one}/checksum"), None, StatusCode::OK).await;
    let sum_b =
        expect(&b, Method::GET, &format!("/v1/bases/{one}/checksum"), None, StatusCode::OK).await;
    assert_eq!(sum["checksum"], sum_b["checksum"]);
    // A backup through the proxy: the file, its type and its index.
    let backup = reqwest::Client::new()
        .get(format!("{a}/v1/bases/{one}/backup"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("backup through the proxy");
    assert_eq!(backup.status(), StatusCode::OK);
    let header =
        |name: &str| backup.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    assert_eq!(header("content-type").as_deref(), Some("application/vnd.sqlite3"));
    assert!(header("x-shoal-applied-index").is_some_and(|i| i.parse::<u64>().is_ok()));
    assert!(backup.bytes().await.expect("body").starts_with(b"SQLite format 3\0"));

    // Location through either proxy names the leader the nodes name, with
    // the map's replicas and epoch.
    let leader =
        agreed_leader(&c, &[a.as_str(), b.as_str()], &one, Duration::from_secs(20), |_| true).await;
    let loc =
        expect(&a, Method::GET, &format!("/v1/bases/{one}/location"), None, StatusCode::OK).await;
    assert_eq!(loc["leader"]["node_id"], leader.as_str());
    assert_eq!(loc["leader"]["node_url"], c.nodes[&leader].url.as_str());
    assert_eq!(loc["replicas"].as_array().map(Vec::len), Some(3), "{loc}");
    let map = c.map().await.expect("map");
    assert_eq!(loc["epoch"], map.epoch);
    let theirs = expect(
        &c.nodes[&leader].url,
        Method::GET,
        &format!("/v1/bases/{one}/location"),
        None,
        StatusCode::OK,
    )
    .await;
    assert_eq!(loc, theirs);

    // Bad input gets the right status, from the proxy itself.
    let (s, v) = call(&a, Method::GET, "/v1/bases/not-a-uuid", None, &[]).await.expect("up");
    assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_input")));
    let (s, _) =
        call(&b, Method::GET, "/v1/bases/not-a-uuid/location", None, &[]).await.expect("up");
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, v) = call(
        &a,
        Method::GET,
        &format!("/v1/bases/{one}"),
        None,
        &[("authorization", "Bearer nope")],
    )
    .await
    .expect("up");
    assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("unauthorized")));
    let no_token = reqwest::Client::new().get(format!("{b}/v1/bases")).send().await.expect("up");
    assert_eq!(no_token.status(), StatusCode::UNAUTHORIZED);
    let no_token = reqwest::Client::new().get(format!("{b}/v1/cluster")).send().await.expect("up");
    assert_eq!(no_token.status(), StatusCode::UNAUTHORIZED);
    let bad_json = reqwest::Client::new()
        .post(format!("{a}/v1/bases"))
        .bearer_auth(TOKEN)
        .body("{nope")
        .send()
        .await
        .expect("up");
    assert_eq!(bad_json.status(), StatusCode::BAD_REQUEST);
    expect(&a, Method::POST, "/v1/bases", Some(json!({"id": 5})), StatusCode::BAD_REQUEST).await;
    expect(&a, Method::POST, "/v1/bases", Some(json!([1])), StatusCode::BAD_REQUEST).await;
    expect(&b, Method::POST, &exec, Some(json!({"statements": "x"})), StatusCode::BAD_REQUEST)
        .await;
    expect(&b, Method::GET, "/v1/bases?limit=0", None, StatusCode::BAD_REQUEST).await;
    expect(&a, Method::GET, &format!("/v1/bases/{one}/nope"), None, StatusCode::NOT_FOUND).await;
    expect(&a, Method::GET, "/v1/nope", None, StatusCode::NOT_FOUND).await;
    let huge = "x".repeat(17 * 1024 * 1024);
    let big = reqwest::Client::new()
        .post(format!("{a}/v1/bases/{one}/execute"))
        .bearer_auth(TOKEN)
        .body(huge)
        .send()
        .await
        .expect("up");
    assert_eq!(big.status(), StatusCode::PAYLOAD_TOO_LARGE);

    // A WebSocket upgrade is relayed to the leader: a route the node does
    // not serve gives the node's own answer; a bad id is refused up front.
    ws_refused(&a, &format!("/v1/bases/{one}/nothing-here"), 404).await;
    ws_refused(&b, "/v1/bases/not-a-uuid/changes", 400).await;

    // A rebalance request through the proxy lands in the registry, where
    // the monitor reads it.
    let before = c.map().await.expect("map").epoch;
    let req = expect(&b, Method::POST, "/v1/cluster/rebalance", None, StatusCode::ACCEPTED).await;
    assert_eq!(req["epoch"], before);
    let stored = c.registry().await.get(shoal_registry::keys::REBALANCE).await.expect("get");
    let mut stored: Value =
        serde_json::from_slice(&stored.expect("a rebalance request").value).expect("json");
    // Stored as a record of the cluster state: with its format.
    assert_eq!(stored["format"], 1, "{stored}");
    stored.as_object_mut().expect("an object").remove("format");
    assert_eq!(stored, req);

    // Drop, then the base is gone through both proxies.
    expect(&b, Method::DELETE, &format!("/v1/bases/{two}"), None, StatusCode::OK).await;
    expect(&a, Method::GET, &format!("/v1/bases/{two}"), None, StatusCode::NOT_FOUND).await;

    // The proxy counts what it served.
    let metrics = reqwest::Client::new().get(format!("{a}/metrics")).send().await.expect("up");
    let text = metrics.text().await.expect("metrics");
    assert!(text.contains("shoal_proxy_requests_total"), "{text}");
}

/// A change feed through `proxies`, from after `after`.
fn watch(proxies: &[String], base: &str, after: u64) -> Watch {
    let base: BaseId = base.parse().expect("id");
    let options = WatchOptions { min_backoff: Duration::from_millis(50), ..Default::default() };
    Watch::new(proxies, Some(TOKEN.to_string()), base, Some(after), options).expect("watch")
}

/// The next `n` change events of a feed (reconnect notices skipped), bounded.
async fn changes(w: &mut Watch, n: usize) -> Vec<ChangeEvent> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut out = Vec::new();
    while out.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, w.next()).await.expect("feed messages in time") {
            Ok(Some(WatchEvent::Message(FeedMessage::Change(e)))) => out.push(e),
            Ok(Some(WatchEvent::Reconnecting { .. })) => {}
            other => panic!("expected a change after {} of {n}, got {other:?}", out.len()),
        }
    }
    out
}

/// Opens a WebSocket through a proxy and expects it refused with `status`
/// and a JSON error body.
async fn ws_refused(proxy: &str, path: &str, status: u16) {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let url = format!("{}{path}", proxy.replacen("http://", "ws://", 1));
    let mut req = url.into_client_request().expect("request");
    req.headers_mut().insert("authorization", format!("Bearer {TOKEN}").parse().expect("header"));
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), status, "{path}");
            let body: Value =
                serde_json::from_slice(resp.body().as_deref().unwrap_or_default()).expect("json");
            assert!(body["error"]["code"].is_string(), "{body}");
        }
        Ok(_) => panic!("{path}: the upgrade was accepted"),
        Err(e) => panic!("{path}: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_leader_is_hidden_behind_the_proxy() {
    let mut c = Cluster::new().await;
    let proxies = start(&mut c, &["--retry-deadline", "20s"]).await;
    let (a, b) = (proxies[0].url.clone(), proxies[1].url.clone());
    let (s, created) = until_available(
        &a,
        Method::POST,
        "/v1/bases",
        Some(json!({})),
        &[("idempotency-key", "failover-base")],
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    let base = created["id"].as_str().expect("id").to_string();
    let exec = format!("/v1/bases/{base}/execute");
    let query = format!("/v1/bases/{base}/query");
    expect(
        &b,
        Method::POST,
        &exec,
        Some(json!({"statements": [{"sql": "CREATE TABLE t (k TEXT PRIMARY KEY)"}]})),
        StatusCode::OK,
    )
    .await;
    let insert =
        |k: &str| json!({"statements": [{"sql": "INSERT INTO t VALUES (?)", "params": [k]}]});
    expect(&a, Method::POST, &exec, Some(insert("before")), StatusCode::OK).await;

    let leader =
        agreed_leader(&c, &[a.as_str(), b.as_str()], &base, Duration::from_secs(20), |_| true)
            .await;
    let before_index = {
        let v = expect(&a, Method::POST, &query, Some(json!({"sql": "SELECT 1"})), StatusCode::OK)
            .await;
        drop(v);
        let sum =
            expect(&a, Method::GET, &format!("/v1/bases/{base}/checksum"), None, StatusCode::OK)
                .await;
        sum["applied_index"].as_u64().expect("applied index")
    };
    let mut feed = watch(&[a.clone(), b.clone()], &base, before_index);
    c.nodes.get_mut(&leader).expect("leader").kill();
    let killed = Instant::now();

    // A read and a keyed write, each in one call: the proxy rides out the
    // election itself.
    let (s, v) = call(&a, Method::POST, &query, Some(json!({"sql": "SELECT k FROM t"})), &[])
        .await
        .expect("proxy up");
    assert_eq!(s, StatusCode::OK, "a read after the leader's SIGKILL: {v}");
    assert_eq!(v["rows"], json!([["before"]]));
    let (s, v) =
        call(&b, Method::POST, &exec, Some(insert("keyed")), &[("idempotency-key", "k-after")])
            .await
            .expect("proxy up");
    assert_eq!(s, StatusCode::OK, "a keyed write after the leader's SIGKILL: {v}");
    println!(
        "read and keyed write answered {:.2}s after SIGKILL of {leader}",
        killed.elapsed().as_secs_f64()
    );
    // Sent again, the keyed write is answered, not applied twice.
    let (s, v) =
        call(&a, Method::POST, &exec, Some(insert("keyed")), &[("idempotency-key", "k-after")])
            .await
            .expect("proxy up");
    assert_eq!(s, StatusCode::OK, "{v}");

    // An unkeyed write works again once the group has a leader.
    let (s, v) = until_available(
        &a,
        Method::POST,
        &exec,
        Some(insert("plain")),
        &[],
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    for p in [&a, &b] {
        let v = expect(
            p,
            Method::POST,
            &query,
            Some(json!({"sql": "SELECT k FROM t ORDER BY k"})),
            StatusCode::OK,
        )
        .await;
        assert_eq!(v["rows"], json!([["before"], ["keyed"], ["plain"]]));
    }

    // The feed opened before the kill goes on through the proxy, from where
    // it was, with what was written after.
    let after: Vec<Option<Value>> = changes(&mut feed, 2)
        .await
        .iter()
        .map(|e| e.row.as_ref().map(|r| r["k"].clone()))
        .collect();
    assert_eq!(after, [Some(json!("keyed")), Some(json!("plain"))]);

    // The list still has every bucket covered by a live replica.
    let list = expect(&b, Method::GET, "/v1/bases", None, StatusCode::OK).await;
    assert_eq!(list["bases"][0]["id"], base.as_str(), "{list}");

    // Both proxies' location answers name the new leader, as the survivors do.
    let new_leader =
        agreed_leader(&c, &[a.as_str(), b.as_str()], &base, Duration::from_secs(30), |l| {
            l != leader
        })
        .await;
    assert_ne!(new_leader, leader);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_stopped_cleanly_fails_no_write_behind_the_proxy() {
    let mut c = Cluster::new().await;
    let proxies = start(&mut c, &["--retry-deadline", "20s"]).await;
    let urls: Vec<String> = proxies.iter().map(|p| p.url.clone()).collect();
    let (s, created) = until_available(
        &urls[0],
        Method::POST,
        "/v1/bases",
        Some(json!({})),
        &[("idempotency-key", "sigterm-base")],
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    let base = created["id"].as_str().expect("id").to_string();
    let exec = format!("/v1/bases/{base}/execute");
    expect(
        &urls[0],
        Method::POST,
        &exec,
        Some(json!({"statements": [{"sql": "CREATE TABLE t (k TEXT PRIMARY KEY)"}]})),
        StatusCode::OK,
    )
    .await;
    let leader = agreed_leader(
        &c,
        &[urls[0].as_str(), urls[1].as_str()],
        &base,
        Duration::from_secs(20),
        |_| true,
    )
    .await;

    // Writers without idempotency keys: a write the proxy sent twice would
    // fail on the primary key, one it dropped would fail outright.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let (url, exec, stop) = (urls[w % 2].clone(), exec.clone(), stop.clone());
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0u32, Vec::new());
                let deadline = Instant::now() + Duration::from_secs(60);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline
                {
                    let k = format!("w{w}-{ok}");
                    let body =
                        json!({"statements": [{"sql": "INSERT INTO t VALUES (?)", "params": [k]}]});
                    match call(&url, Method::POST, &exec, Some(body), &[]).await {
                        Ok((StatusCode::OK, _)) => ok += 1,
                        other => failed.push(format!("{k}: {other:?}")),
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let status =
        tokio::task::block_in_place(|| c.nodes.get_mut(&leader).expect("leader").terminate());
    assert!(status.success(), "the node's exit on SIGTERM: {status}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut acknowledged = 0;
    for w in writers {
        let (ok, failed) = w.await.expect("writer");
        assert!(failed.is_empty(), "writes failed around the leader's SIGTERM: {failed:?}");
        acknowledged += ok;
    }
    // Every acknowledged write is there, once.
    let v = expect(
        &urls[1],
        Method::POST,
        &format!("/v1/bases/{base}/query"),
        Some(json!({"sql": "SELECT count(*) FROM t"})),
        StatusCode::OK,
    )
    .await;
    assert_eq!(v["rows"], json!([[acknowledged]]), "acknowledged {acknowledged}");
    assert!(acknowledged > 0);
}
