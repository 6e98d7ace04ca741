//! A base's API tokens on Shoal's own API: a token opens its base's data
//! routes (read, and write with `rw`), through a node or a proxy, and
//! nothing else; a revoked token stops at once.

mod common;

use common::cluster::{Cluster, TOKEN};
use common::{Mode, Server, cli};
use reqwest::Method;
use serde_json::{Value, json};

/// `METHOD url` with `token` as bearer; the status and the JSON answer.
async fn call(method: Method, url: &str, token: &str, body: Option<Value>) -> (u16, Value) {
    let mut req = reqwest::Client::new().request(method, url).bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn token(server: &Server, base: &str, read_only: bool) -> String {
    let mut args = vec!["token", "create", "--base", base];
    if read_only {
        args.push("--read-only");
    }
    let (ok, out, err) = cli(server, &args);
    assert!(ok, "{err}");
    out.trim().to_string()
}

fn base(server: &Server) -> String {
    let (ok, out, err) = cli(server, &["base", "create"]);
    assert!(ok, "{err}");
    out.trim().to_string()
}

#[tokio::test]
async fn a_base_token_opens_its_base_and_nothing_else() {
    let (_dir, s) = Server::start(Mode::Standalone, &[]);
    let (a, b) = (base(&s), base(&s));
    let rw = token(&s, &a, false);
    let r = token(&s, &a, true);
    let at = |p: &str| format!("{}{p}", s.url);
    let ddl = json!({"statements": [{"sql": "CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)"}]});

    // Read-write: every data route of its base.
    let (st, v) = call(Method::POST, &at(&format!("/v1/bases/{a}/execute")), &rw, Some(ddl)).await;
    assert_eq!(st, 200, "{v}");
    let rows = json!({"rows": [{"k": 1, "v": "one"}]});
    let (st, v) =
        call(Method::POST, &at(&format!("/v1/bases/{a}/tables/t/rows")), &rw, Some(rows)).await;
    assert_eq!(st, 201, "{v}");
    let patch = json!({"values": {"v": "uno"}});
    let row = format!("/v1/bases/{a}/tables/t/rows/1");
    assert_eq!(call(Method::PATCH, &at(&row), &rw, Some(patch)).await.0, 200);
    for path in ["", "/tables", "/tables/t/rows", "/tables/t/rows/1", "/checksum", "/location"] {
        let (st, v) = call(Method::GET, &at(&format!("/v1/bases/{a}{path}")), &rw, None).await;
        assert_eq!(st, 200, "GET {path}: {v}");
    }
    let q = json!({"sql": "SELECT v FROM t"});
    let (st, v) = call(Method::POST, &at(&format!("/v1/bases/{a}/query")), &r, Some(q)).await;
    assert_eq!((st, &v["rows"]), (200, &json!([["uno"]])), "{v}");

    // Read-only: reads, and no writes (nothing changes).
    let sum = call(Method::GET, &at(&format!("/v1/bases/{a}/checksum")), &r, None).await.1;
    let write = json!({"statements": [{"sql": "DELETE FROM t"}]});
    let (st, v) = call(Method::POST, &at(&format!("/v1/bases/{a}/execute")), &r, Some(write)).await;
    assert_eq!(st, 403, "{v}");
    assert!(v["error"]["message"].as_str().is_some_and(|m| m.contains("read-only")), "{v}");
    assert_eq!(call(Method::DELETE, &at(&row), &r, None).await.0, 403);
    let after = call(Method::GET, &at(&format!("/v1/bases/{a}/checksum")), &r, None).await.1;
    assert_eq!(after["checksum"], sum["checksum"]);

    // Another base, the base's drop and tokens, lists, cluster: refused.
    for (m, path) in [
        (Method::GET, format!("/v1/bases/{b}")),
        (Method::POST, format!("/v1/bases/{b}/query")),
        (Method::DELETE, format!("/v1/bases/{a}")),
        (Method::GET, format!("/v1/bases/{a}/api-tokens")),
        (Method::POST, format!("/v1/bases/{a}/api-tokens")),
        (Method::GET, "/v1/bases".to_string()),
        (Method::POST, "/v1/bases".to_string()),
        (Method::GET, "/v1/cluster".to_string()),
        (Method::GET, "/v1/cluster/buckets".to_string()),
    ] {
        let (st, v) = call(m.clone(), &at(&path), &rw, Some(json!({"sql": "SELECT 1"}))).await;
        assert_eq!(st, 403, "{m} {path}: {v}");
    }
    assert_eq!(call(Method::GET, &at(&format!("/v1/bases/{a}")), TOKEN, None).await.0, 401);

    // A made-up token of the right shape, and a revoked one: 401.
    let made_up = format!("{}{}", a.replace('-', ""), "0".repeat(32));
    assert_eq!(call(Method::GET, &at(&format!("/v1/bases/{a}")), &made_up, None).await.0, 401);
    let (ok, list, _) = cli(&s, &["token", "list", "--base", &a]);
    assert!(ok);
    let name = list
        .lines()
        .find(|l| l.contains("rw"))
        .and_then(|l| l.split_whitespace().find(|w| w.starts_with("token-")))
        .expect("the rw token's name")
        .to_string();
    assert!(cli(&s, &["token", "revoke", "--base", &a, &name]).0);
    let (st, v) = call(Method::GET, &at(&format!("/v1/bases/{a}")), &rw, None).await;
    assert_eq!(st, 401, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_base_token_works_through_a_proxy_and_any_node() {
    let mut c = Cluster::new().await;
    c.start_three_nodes();
    c.wait_three_replicas().await;
    let proxy = c.start_proxy(0, &[]);
    let admin = shoal_client::Client::new(&proxy.url, Some(TOKEN.into())).expect("client");
    let base = common::eventually("create", || admin.create_base(None, None)).await.id;
    let other = common::eventually("create", || admin.create_base(None, None)).await.id;
    let made = admin.create_api_token(base, None, false).await.expect("token");
    let token = made.api_token;
    let ddl =
        json!({"statements": [{"sql": "CREATE TABLE t (v)"}, {"sql": "INSERT INTO t VALUES (1)"}]});
    let url = format!("{}/v1/bases/{base}/execute", proxy.url);
    let (st, v) = call(Method::POST, &url, &token, Some(ddl)).await;
    assert_eq!(st, 200, "through the proxy: {v}");
    for node in c.nodes.values() {
        let q = json!({"sql": "SELECT count(*) FROM t"});
        let url = format!("{}/v1/bases/{base}/query", node.url);
        let (st, v) = call(Method::POST, &url, &token, Some(q)).await;
        assert_eq!((st, &v["rows"]), (200, &json!([[1]])), "on {}: {v}", node.url);
    }
    let url = format!("{}/v1/bases/{other}", proxy.url);
    let (st, v) = call(Method::GET, &url, &token, None).await;
    assert!(st == 401 || st == 403, "another base through the proxy: {st} {v}");
    let (st, _) = call(Method::GET, &format!("{}/v1/bases", proxy.url), &token, None).await;
    assert_eq!(st, 401, "the proxy's own list needs the admin token");
}
