//! Hostile and malformed requests against a running server and against the
//! router in process, generated:
//! paths, methods, content types and bodies (bad JSON, wrong types, deep
//! nesting, huge numbers, invalid UTF-8, SQL that tries ATTACH,
//! load_extension, PRAGMA writes, recursive CTEs, huge results, Shoal's own
//! tables). Whatever comes, the server answers (no crash, no 5xx), a refusal
//! is a 4xx with a clear error body, and a refused request leaves the data
//! exactly as it was (the base's checksum).
//!
//! `SHOAL_FUZZ_CASES` sets the number of requests (default 400).

mod common;

use common::{Mode, Server};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Value, json};

/// Hostile SQL, each with something a sandbox must refuse or bound.
const HOSTILE_SQL: &[&str] = &[
    "ATTACH DATABASE '/tmp/shoal-fuzz.db' AS other",
    "ATTACH DATABASE ':memory:' AS m",
    "SELECT load_extension('/tmp/nothing')",
    "PRAGMA writable_schema = 1",
    "PRAGMA journal_mode = OFF",
    "PRAGMA synchronous = OFF",
    "PRAGMA foreign_keys = OFF",
    "PRAGMA schema_version = 1",
    "VACUUM",
    "VACUUM INTO '/tmp/shoal-fuzz-copy.db'",
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c",
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) INSERT INTO t SELECT x, 'z' FROM c",
    "SELECT randomblob(2000000000)",
    "SELECT zeroblob(2000000000)",
    "SELECT * FROM t a, t b, t c, t d, t e, t f, t g",
    "INSERT INTO t SELECT a.k + 1000, a.v FROM t a, t b, t c, t d, t e, t f",
    "CREATE TABLE _shoal_meta2 (a)",
    "DELETE FROM _shoal_meta",
    "UPDATE _shoal_meta SET value = 0",
    "DROP TABLE _shoal_meta",
    "SELECT * FROM _shoal_api_tokens",
    "INSERT INTO t VALUES (random(), 'x')",
    "INSERT INTO t VALUES (1, datetime('now'))",
    "SELECT 1; DROP TABLE t",
    "BEGIN; DELETE FROM t; COMMIT",
    "SAVEPOINT s",
    "CREATE TRIGGER tr AFTER INSERT ON t BEGIN SELECT load_extension('x'); END",
    "CREATE VIRTUAL TABLE v USING fts5(a)",
    "SELECT printf('%.*c', 2000000000, 'x')",
    "SELECT replace(hex(zeroblob(100000000)), '00', 'ab')",
    "INSERT INTO t (k, v) VALUES (9223372036854775807 + 1, 'overflow')",
    "SELECT sqlite_version(), char(0)",
    "",
    "   ",
    "-- only a comment",
    "\u{0}",
];

/// Any JSON value, nested up to `depth` levels.
fn json_value(depth: u32) -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|i| json!(i)),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,40}".prop_map(Value::String),
        Just(json!(u64::MAX)),
    ];
    leaf.prop_recursive(depth, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,12}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
    .boxed()
}

/// A body: raw bytes, some JSON, a deep nest, a huge number, invalid UTF-8,
/// or a well-formed request carrying hostile SQL or wrong types.
fn body() -> BoxedStrategy<Vec<u8>> {
    let sql = prop::sample::select(HOSTILE_SQL);
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..512),
        json_value(4).prop_map(|v| v.to_string().into_bytes()),
        (1usize..3000).prop_map(|n| format!("{}{}", "[".repeat(n), "]".repeat(n)).into_bytes()),
        Just(b"{\"sql\": \"SELECT 1\", \"params\": [1e400]}".to_vec()),
        Just(b"{\"statements\": [{\"sql\": \"SELECT \xff\xfe\"}]}".to_vec()),
        sql.clone().prop_map(|s| json!({"sql": s}).to_string().into_bytes()),
        sql.clone().prop_map(|s| json!({"statements": [{"sql": s}]}).to_string().into_bytes()),
        (sql.clone(), json_value(2)).prop_map(|(s, p)| {
            json!({"statements": [{"sql": s, "params": p}], "transaction": p})
                .to_string()
                .into_bytes()
        }),
        (sql, json_value(2)).prop_map(|(s, c)| {
            json!({"sql": s, "consistency": c, "params": c}).to_string().into_bytes()
        }),
        json_value(3).prop_map(|v| json!({"rows": [v]}).to_string().into_bytes()),
        json_value(3).prop_map(|v| json!({"values": v}).to_string().into_bytes()),
        json_value(2).prop_map(|v| json!({"id": v, "name": v}).to_string().into_bytes()),
    ]
    .boxed()
}

/// A path: one of the API's routes with good and bad pieces in it, or junk.
fn path(base: String) -> BoxedStrategy<String> {
    let piece = prop_oneof![
        Just(base.clone()),
        Just(base.replace('-', "")),
        Just(base.to_uppercase()),
        "[a-zA-Z0-9_.-]{0,20}",
        Just("..".to_string()),
        Just("%00".to_string()),
        Just("%FF%FE".to_string()),
        Just("%2e%2e%2f".to_string()),
        Just("t".to_string()),
        Just("_shoal_meta".to_string()),
        Just("sqlite_schema".to_string()),
        Just("x".repeat(5000)),
        Just("9223372036854775808".to_string()),
        Just("-1".to_string()),
    ];
    let template = prop::sample::select(
        &[
            "/v1/bases/{}",
            "/v1/bases/{}/execute",
            "/v1/bases/{}/query",
            "/v1/bases/{}/tables",
            "/v1/bases/{}/tables/{}/rows",
            "/v1/bases/{}/tables/{}/rows/{}",
            "/v1/bases/{}/checksum",
            "/v1/bases/{}/backup",
            "/v1/bases/{}/location",
            "/v1/bases/{}/api-tokens",
            "/v1/bases/{}/api-tokens/{}",
            "/v1/bases?limit={}&after={}",
            "/v1/bases?q={}&bucket={}",
            "/v1/cluster/nodes/{}/drain",
            "/v1/{}",
            "/{}",
            "/ui/{}",
            "/api-gateway/api/v2/dtables/{}/rows/",
            "/api-gateway/api/v2/dtables/{}/sql",
            "/api/v2.1/dtable/app-access-token/",
        ][..],
    );
    (template, prop::collection::vec(piece, 3))
        .prop_map(|(t, pieces)| {
            let mut out = String::new();
            let mut pieces = pieces.into_iter();
            let mut parts = t.split("{}").peekable();
            while let Some(part) = parts.next() {
                out.push_str(part);
                if parts.peek().is_some() {
                    out.push_str(&pieces.next().unwrap_or_default());
                }
            }
            out
        })
        .boxed()
}

/// The id of the base under fire (fixed: the fuzzer's paths name it).
fn uuid_like() -> String {
    "5a000000-0000-4000-8000-00000000f022".to_string()
}

#[derive(Debug, Clone)]
struct Case {
    method: &'static str,
    path: String,
    content_type: Option<&'static str>,
    body: Vec<u8>,
}

fn case(base: String) -> impl Strategy<Value = Case> {
    let method =
        prop::sample::select(&["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"][..]);
    let content_type = prop::sample::select(
        &[
            Some("application/json"),
            None,
            Some("text/plain"),
            Some("application/vnd.sqlite3"),
            Some("application/json; charset=latin1"),
        ][..],
    );
    (method, path(base), content_type, body()).prop_map(|(method, path, content_type, body)| Case {
        method,
        path,
        content_type,
        body,
    })
}

/// One request: method, path and query, content type, body; the status and
/// body of the answer, or why there was none.
type Call<'a> = dyn Fn(&str, &str, Option<&str>, Vec<u8>) -> Result<(u16, Vec<u8>), String> + 'a;

#[test]
fn hostile_requests_to_a_running_server_get_clear_refusals_and_change_nothing() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (_dir, server) = Server::start(Mode::Memory, &["--statement-timeout", "500ms"]);
    // A connection per request: after refusing an oversized body the server
    // closes the connection it did not read to the end, and a pooled
    // connection picked up in that moment would fail the next request.
    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    let (token, url) = (server.token.clone(), server.url.clone());
    let call = |method: &str, path: &str, ct: Option<&str>, body: Vec<u8>| {
        let mut req = http
            .request(method.parse().expect("method"), format!("{url}{path}"))
            .bearer_auth(&token);
        if let Some(ct) = ct {
            req = req.header("content-type", ct);
        }
        rt.block_on(async move {
            let resp = req.body(body).send().await?;
            let status = resp.status().as_u16();
            let bytes = resp.bytes().await?;
            Ok::<_, reqwest::Error>((status, bytes.to_vec()))
        })
        .map_err(|e| e.to_string())
    };
    hostile_requests(&call);
}

/// The same requests straight into the router of a node running in this
/// process (memory registry, memory store, its own monitor), as the HTTP
/// server would hand them over: no socket, so a panic would fail the test
/// here rather than be hidden behind a dropped connection.
#[test]
fn hostile_requests_to_the_router_in_process_get_clear_refusals_and_change_nothing() {
    use std::sync::Arc;
    use std::time::Duration;

    use tower::ServiceExt as _;

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let token = "fuzz-in-process-token".to_string();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let (node, app) = rt.block_on(async {
        let registry = shoal_registry::connect(&shoal_registry::RegistryOptions::default())
            .await
            .expect("memory registry");
        let monitor = shoal_monitor::MonitorOptions {
            id: "fuzz-monitor".into(),
            replication_factor: 1,
            ..shoal_monitor::MonitorOptions::default()
        };
        tokio::spawn(shoal_monitor::run(registry.clone(), monitor, stopped.clone()));
        let url = "http://127.0.0.1:9".to_string();
        let config = shoal_node::NodeConfig {
            node_id: shoal_types::NodeId("fuzz".into()),
            data_dir: None,
            store: shoal_storage::Options {
                statement_timeout: Duration::from_millis(500),
                ..shoal_storage::Options::default()
            },
            raft: shoal_node::RaftSettings::default(),
            token: token.clone(),
            tls: None,
            info: shoal_types::api::NodeInfo {
                node_url: url.clone(),
                local_node_url: url,
                zone: "default".into(),
                capacity: 1,
                version: "fuzz".into(),
                registered_at: String::new(),
                instance: "fuzz".into(),
            },
            node_ttl: Duration::from_secs(30),
            retry_interval: Duration::from_millis(200),
            remove_after: Duration::from_secs(600),
            leader_moves_per_pass: 2,
        };
        let node = shoal_node::Node::start(config, registry, stopped).await.expect("node");
        node.wait_until_leading(shoal_types::BUCKET_COUNT, Duration::from_secs(120))
            .await
            .expect("the node leads every bucket");
        let state = Arc::new(shoal_node::AppState {
            engine: Some(node.engine().clone()),
            cluster: None,
            options: shoal_node::ServerOptions {
                admin_token: token.clone(),
                max_body_bytes: 16 << 20,
            },
            metrics: None,
            forwarder: shoal_node::forward::client(None),
        });
        let app = shoal_node::router(state).merge(node.routes());
        (node, app)
    });
    let call = |method: &str, path: &str, ct: Option<&str>, body: Vec<u8>| {
        // What an HTTP client would put on the wire for this path.
        let url = reqwest::Url::parse(&format!("http://127.0.0.1{path}"))
            .map_err(|e| format!("not a URL: {e}"))?;
        let target = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_string(),
        };
        let mut req = axum::http::Request::builder()
            .method(method)
            .uri(target)
            .header("authorization", format!("Bearer {token}"));
        if let Some(ct) = ct {
            req = req.header("content-type", ct);
        }
        let req = req.body(axum::body::Body::from(body)).map_err(|e| e.to_string())?;
        let app = app.clone();
        rt.block_on(async move {
            let resp = app.oneshot(req).await.expect("the router is infallible");
            let status = resp.status().as_u16();
            let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
                .await
                .map_err(|e| e.to_string())?;
            Ok((status, bytes.to_vec()))
        })
    };
    hostile_requests(&call);
    let _ = stop.send(true);
    rt.block_on(node.stop());
}

/// Hostile SQL and generated requests through `call`: never a 5xx, every
/// refusal a 4xx with a message, and a refused request leaves the base as
/// it was.
fn hostile_requests(call: &Call<'_>) {
    let base = uuid_like();
    let call_ok = |m: &str, p: &str, ct: Option<&str>, b: Vec<u8>| {
        call(m, p, ct, b).unwrap_or_else(|e| panic!("{m} {p}: no answer: {e}"))
    };
    // The base every request may aim at: a table with rows. A request that
    // drops it (a DELETE that was carried out) gets it made again.
    let make_base = || {
        let create = json!({"id": base}).to_string().into_bytes();
        let (status, bytes) = call_ok("POST", "/v1/bases", Some("application/json"), create);
        assert_eq!(status, 201, "{}", String::from_utf8_lossy(&bytes));
        let ddl = json!({"statements": [
            {"sql": "CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)"},
            {"sql": "INSERT INTO t VALUES (1, 'one'), (2, 'two'), (3, 'three')"}]});
        let path = format!("/v1/bases/{base}/execute");
        let (status, _) =
            call_ok("POST", &path, Some("application/json"), ddl.to_string().into_bytes());
        assert_eq!(status, 200);
    };
    make_base();
    let checksum = || -> Option<String> {
        let (status, bytes) =
            call_ok("GET", &format!("/v1/bases/{base}/checksum"), None, Vec::new());
        if status == 404 {
            return None;
        }
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&bytes));
        let v: Value = serde_json::from_slice(&bytes).expect("checksum json");
        Some(v["checksum"].as_str().expect("checksum").to_string())
    };
    let sum = std::cell::RefCell::new(checksum());
    // Every hostile statement, as a write and as a read, for certain.
    for sql in HOSTILE_SQL {
        for (path, body) in
            [("execute", json!({"statements": [{"sql": sql}]})), ("query", json!({"sql": sql}))]
        {
            let before = checksum();
            let path = format!("/v1/bases/{base}/{path}");
            let (status, bytes) =
                call_ok("POST", &path, Some("application/json"), body.to_string().into_bytes());
            let text = String::from_utf8_lossy(&bytes);
            assert!(status < 500, "{sql:?} on {path}: {status} {text}");
            if status >= 400 {
                assert!(text.contains("\"message\""), "{sql:?}: {status} {text}");
                assert_eq!(checksum(), before, "{sql:?} was refused but changed the base");
            } else if checksum().is_none() {
                make_base();
            }
        }
    }
    // A body over --max-body-size: 413, with the error body.
    let path = format!("/v1/bases/{base}/execute");
    let (status, bytes) = call_ok("POST", &path, Some("application/json"), vec![b' '; 17 << 20]);
    let text = String::from_utf8_lossy(&bytes);
    assert!(status == 413 && text.contains("\"too_large\""), "{status} {text}");
    // A value over the 64 MiB limit is refused, read or written.
    for sql in ["SELECT replace(hex(zeroblob(40000000)), '00', 'ab')", "SELECT zeroblob(70000000)"]
    {
        let path = format!("/v1/bases/{base}/query");
        let body = json!({"sql": sql}).to_string().into_bytes();
        let (status, bytes) = call_ok("POST", &path, Some("application/json"), body);
        let text = String::from_utf8_lossy(&bytes);
        assert!(status == 400 && text.contains("too big"), "{sql}: {status} {text}");
    }
    *sum.borrow_mut() = checksum();

    let cases = std::env::var("SHOAL_FUZZ_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(400);
    let mut runner =
        TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
    let (refused, answered) = (std::cell::Cell::new(0), std::cell::Cell::new(0));
    runner
        .run(&case(base.clone()), |c| {
            let (status, bytes) = call_ok(c.method, &c.path, c.content_type, c.body.clone());
            prop_assert!(
                status < 500,
                "{c:?} answered {status}: {}",
                String::from_utf8_lossy(&bytes)
            );
            if (400..500).contains(&status) {
                refused.set(refused.get() + 1);
                if c.method != "HEAD" {
                    let v: Value = serde_json::from_slice(&bytes).map_err(|e| {
                        TestCaseError::fail(format!("{c:?}: {status} without a JSON body: {e}"))
                    })?;
                    let message = v["error"]["message"].as_str().or(v["error_msg"].as_str());
                    prop_assert!(
                        message.is_some_and(|m| !m.trim().is_empty()),
                        "{c:?}: {status} without a message: {v}"
                    );
                }
                let now = checksum();
                let before = sum.borrow().clone();
                prop_assert_eq!(
                    now,
                    before,
                    "{:?} was refused ({}) but changed the base",
                    c,
                    status
                );
            } else {
                answered.set(answered.get() + 1);
                // A request that was carried out may change the base, or
                // drop it.
                if checksum().is_none() {
                    make_base();
                }
                *sum.borrow_mut() = checksum();
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    println!("{cases} requests: {} refused, {} answered", refused.get(), answered.get());
    let (status, _) = call_ok("GET", "/healthz", None, Vec::new());
    assert_eq!(status, 200);
}
