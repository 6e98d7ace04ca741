//! The HTTP API against a real `shoal serve`, in memory and standalone modes.

mod common;

use common::{Mode, Server};
use reqwest::Method;
use serde_json::{Value, json};

struct Api<'a> {
    server: &'a Server,
    http: reqwest::Client,
}

impl<'a> Api<'a> {
    fn new(server: &'a Server) -> Self {
        Api { server, http: reqwest::Client::new() }
    }

    async fn call_with(
        &self,
        method: Method,
        path: &str,
        body: Option<&str>,
        token: Option<&str>,
    ) -> (u16, Value) {
        let mut r = self.http.request(method, format!("{}{path}", self.server.url));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        if let Some(b) = body {
            r = r.header("content-type", "application/json").body(b.to_string());
        }
        let resp = r.send().await.expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let body = body.map(|b| b.to_string());
        self.call_with(method, path, body.as_deref(), Some(&self.server.token)).await
    }

    async fn ok(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let (status, v) = self.call(method.clone(), path, body).await;
        assert!((200..300).contains(&status), "{method} {path} -> {status} {v}");
        v
    }

    async fn err(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        want: u16,
        code: &str,
    ) -> String {
        let (status, v) = self.call(method.clone(), path, body).await;
        assert_eq!(status, want, "{method} {path} -> {v}");
        assert_eq!(v["error"]["code"], code, "{method} {path} -> {v}");
        v["error"]["message"].as_str().expect("message").to_string()
    }

    async fn create_base(&self) -> String {
        let v = self.ok(Method::POST, "/v1/bases", Some(json!({}))).await;
        v["id"].as_str().expect("id").to_string()
    }

    async fn count(&self, id: &str, table: &str) -> i64 {
        let v = self
            .ok(
                Method::POST,
                &format!("/v1/bases/{id}/query"),
                Some(json!({"sql": format!("SELECT count(*) FROM {table}")})),
            )
            .await;
        v["rows"][0][0].as_i64().expect("count")
    }
}

async fn both_modes<F, Fut>(extra: &[&str], f: F)
where
    F: Fn(Server) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for mode in [Mode::Memory, Mode::Standalone] {
        let (_dir, server) = Server::start(mode, extra);
        f(server).await;
    }
}

#[tokio::test]
async fn auth_is_required_on_v1_only() {
    both_modes(&[], |server| async move {
        let api = Api::new(&server);
        let (s, v) = api.call_with(Method::GET, "/v1/bases", None, None).await;
        assert_eq!((s, v["error"]["code"].as_str()), (401, Some("unauthorized")), "{v}");
        let (s, v) = api.call_with(Method::GET, "/v1/bases", None, Some("wrong")).await;
        assert_eq!((s, v["error"]["code"].as_str()), (401, Some("unauthorized")), "{v}");
        let (s, _) = api.call_with(Method::POST, "/v1/bases", Some("{}"), Some("wrong")).await;
        assert_eq!(s, 401);
        let (s, _) = api.call_with(Method::GET, "/v1/openapi.json", None, None).await;
        assert_eq!(s, 401);
        // Nothing was created by the refused calls.
        assert_eq!(api.ok(Method::GET, "/v1/bases", None).await["bases"], json!([]));
        let (s, v) = api.call_with(Method::GET, "/healthz", None, None).await;
        assert_eq!((s, v["status"].as_str()), (200, Some("ok")));
        let (s, _) = api.call_with(Method::GET, "/metrics", None, None).await;
        assert_eq!(s, 200);
    })
    .await;
}

#[tokio::test]
async fn admin_token_flag_and_file() {
    let (_dir, server) = Server::start(Mode::Standalone, &["--admin-token", "s3cret-token"]);
    let api = Api::new(&server);
    assert_eq!(api.call_with(Method::GET, "/v1/bases", None, Some("s3cret-token")).await.0, 200);
    assert!(!server.dir.join("data").join("admin.token").exists());

    let (dir, server) = Server::start(Mode::Standalone, &[]);
    let path = dir.path().join("data").join("admin.token");
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(std::fs::metadata(&path).expect("token file").permissions().mode() & 0o777, 0o600);
    assert!(server.stdout().contains("admin.token"), "{}", server.stdout());
    assert!(server.token.len() >= 32);
}

#[tokio::test]
async fn bases_create_get_list_drop() {
    both_modes(&[], |server| async move {
        let api = Api::new(&server);
        let v = api
            .ok(
                Method::POST,
                "/v1/bases",
                Some(json!({"id": "0A1B2C3D-0000-4000-8000-00000000000F", "name": "crm"})),
            )
            .await;
        assert_eq!(v["id"], "0a1b2c3d-0000-4000-8000-00000000000f");
        assert_eq!(v["bucket"], "0a");
        assert_eq!(v["name"], "crm");
        assert!(v["created_at"].as_str().expect("created_at").ends_with('Z'));
        let id = "0a1b2c3d-0000-4000-8000-00000000000f";
        api.err(Method::POST, "/v1/bases", Some(json!({"id": id})), 409, "conflict").await;
        assert_eq!(api.ok(Method::GET, &format!("/v1/bases/{id}"), None).await, v);

        let mut ids = vec![id.to_string()];
        for _ in 0..11 {
            ids.push(api.create_base().await);
        }
        ids.sort();
        let mut seen = Vec::new();
        let mut after: Option<String> = None;
        for _ in 0..10 {
            let path = match &after {
                Some(a) => format!("/v1/bases?limit=5&after={a}"),
                None => "/v1/bases?limit=5".to_string(),
            };
            let page = api.ok(Method::GET, &path, None).await;
            for b in page["bases"].as_array().expect("bases") {
                seen.push(b["id"].as_str().expect("id").to_string());
            }
            match page["next_after"].as_str() {
                Some(a) => after = Some(a.to_string()),
                None => break,
            }
        }
        assert_eq!(seen, ids);
        api.err(Method::GET, "/v1/bases?limit=0", None, 400, "invalid_input").await;
        api.err(Method::GET, "/v1/bases?after=xyz", None, 400, "invalid_input").await;
        api.err(Method::GET, "/v1/bases?bogus=1", None, 400, "invalid_input").await;

        api.ok(Method::DELETE, &format!("/v1/bases/{id}"), None).await;
        api.err(Method::GET, &format!("/v1/bases/{id}"), None, 404, "not_found").await;
        api.err(Method::DELETE, &format!("/v1/bases/{id}"), None, 404, "not_found").await;
        api.err(
            Method::POST,
            &format!("/v1/bases/{id}/query"),
            Some(json!({"sql": "SELECT 1"})),
            404,
            "not_found",
        )
        .await;
        // The id can be used again after a drop, and starts empty.
        api.ok(Method::POST, "/v1/bases", Some(json!({"id": id}))).await;
        assert_eq!(
            api.ok(Method::GET, &format!("/v1/bases/{id}/tables"), None).await["tables"],
            json!([])
        );
        api.err(Method::POST, "/v1/bases", Some(json!({"id": "not-a-uuid"})), 400, "invalid_input")
            .await;
        api.err(Method::POST, "/v1/bases", Some(json!({"nme": "typo"})), 400, "invalid_input")
            .await;
    })
    .await;
}

#[tokio::test]
async fn execute_and_query() {
    both_modes(&[], |server| async move {
        let api = Api::new(&server);
        let id = api.create_base().await;
        let exec = format!("/v1/bases/{id}/execute");
        let query = format!("/v1/bases/{id}/query");
        let v = api
            .ok(
                Method::POST,
                &exec,
                Some(json!({"statements": [
                    {"sql": "CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, age INTEGER, score REAL, photo BLOB)"},
                    {"sql": "INSERT INTO people (name, age, score, photo) VALUES (?, ?, ?, ?)", "params": ["ada", 36, 9.5, {"base64": "iVBORw=="}]},
                    {"sql": "INSERT INTO people (name, age) VALUES (:name, :age)", "params": {"name": "bob", "age": null}}
                ]})),
            )
            .await;
        assert_eq!(v["results"][1], json!({"rows_affected": 1, "last_insert_rowid": 1}));
        assert_eq!(v["results"][2]["last_insert_rowid"], 2);
        let first_index = v["index"].as_u64().expect("index");

        let v = api.ok(Method::POST, &query, Some(json!({"sql": "SELECT name, age, score, photo FROM people ORDER BY id"}))).await;
        assert_eq!(v["columns"], json!(["name", "age", "score", "photo"]));
        assert_eq!(v["types"], json!(["TEXT", "INTEGER", "REAL", "BLOB"]));
        assert_eq!(v["rows"], json!([["ada", 36, 9.5, {"base64": "iVBORw=="}], ["bob", null, null, null]]));
        for c in ["none", "leader", "linearizable"] {
            let v = api
                .ok(Method::POST, &query, Some(json!({"sql": "SELECT count(*) FROM people WHERE age > ?", "params": [30], "consistency": c})))
                .await;
            assert_eq!(v["rows"], json!([[1]]));
        }
        api.err(Method::POST, &query, Some(json!({"sql": "SELECT 1", "consistency": "sometimes"})), 400, "invalid_input").await;

        // A failing transaction leaves nothing behind.
        let msg = api
            .err(
                Method::POST,
                &exec,
                Some(json!({"statements": [
                    {"sql": "INSERT INTO people (name) VALUES ('cy')"},
                    {"sql": "UPDATE people SET age = 1"},
                    {"sql": "INSERT INTO people (name) VALUES ('ada')"}
                ]})),
                422,
                "constraint_violation",
            )
            .await;
        assert!(msg.contains("UNIQUE"), "{msg}");
        assert_eq!(api.count(&id, "people").await, 2);
        let v = api.ok(Method::POST, &query, Some(json!({"sql": "SELECT count(*) FROM people WHERE age = 1"}))).await;
        assert_eq!(v["rows"], json!([[0]]));
        // A failing SQL statement in the middle also aborts all.
        api.err(
            Method::POST,
            &exec,
            Some(json!({"statements": [{"sql": "INSERT INTO people (name) VALUES ('dee')"}, {"sql": "INSRT INTO x"}]})),
            400,
            "invalid_sql",
        )
        .await;
        assert_eq!(api.count(&id, "people").await, 2);
        // Without a transaction, each statement stands alone.
        let v = api
            .ok(
                Method::POST,
                &exec,
                Some(json!({"transaction": false, "statements": [
                    {"sql": "INSERT INTO people (name) VALUES ('eve')"},
                    {"sql": "INSERT INTO people (name) VALUES ('ada')"}
                ]})),
            )
            .await;
        assert_eq!(v["results"][0]["rows_affected"], 1);
        assert_eq!(v["results"][1]["error"]["code"], "constraint_violation");
        assert!(v["index"].as_u64().expect("index") > first_index);
        assert_eq!(api.count(&id, "people").await, 3);

        // Bad input of every kind.
        api.err(Method::POST, &exec, Some(json!({"statements": []})), 400, "invalid_input").await;
        api.err(Method::POST, &exec, Some(json!({"statements": [{"sql": ""}]})), 400, "invalid_sql").await;
        api.err(Method::POST, &exec, Some(json!({"statements": [{"sql": "SELECT ?", "params": [1, 2]}]})), 400, "invalid_input")
            .await;
        api.err(Method::POST, &exec, Some(json!({"statements": [{"sql": "SELECT :a", "params": {"b": 1}}]})), 400, "invalid_input")
            .await;
        api.err(Method::POST, &exec, Some(json!({"statements": [{"sql": "SELECT ?", "params": [[1]]}]})), 400, "invalid_input")
            .await;
        api.err(Method::POST, &exec, Some(json!({"statements": [{"sql": "SELECT 1; SELECT 2"}]})), 400, "invalid_sql").await;
        api.err(Method::POST, &query, Some(json!({"sql": "DELETE FROM people"})), 400, "invalid_input").await;
        api.err(Method::POST, &query, Some(json!({"sql": "SELECT * FROM nowhere"})), 400, "invalid_sql").await;
        api.err(Method::POST, &query, Some(json!({})), 400, "invalid_input").await;
        api.err(Method::POST, "/v1/bases/00000000-0000-4000-8000-000000000000/query", Some(json!({"sql": "SELECT 1"})), 404, "not_found")
            .await;
        api.err(
            Method::POST,
            "/v1/bases/00000000-0000-4000-8000-000000000000/execute",
            Some(json!({"statements": [{"sql": "CREATE TABLE x (a)"}]})),
            404,
            "not_found",
        )
        .await;
        for bad in ["{", "[1,2]", "null", "{\"statements\": 5}", "\u{0}"] {
            let (s, v) = api.call_with(Method::POST, &exec, Some(bad), Some(&server.token)).await;
            assert_eq!((s, v["error"]["code"].as_str()), (400, Some("invalid_input")), "{bad}: {v}");
        }
        assert_eq!(api.count(&id, "people").await, 3);
    })
    .await;
}

#[tokio::test]
async fn sandbox_and_determinism() {
    both_modes(&["--max-result-rows", "50"], |server| async move {
        let api = Api::new(&server);
        let id = api.create_base().await;
        let exec = format!("/v1/bases/{id}/execute");
        let query = format!("/v1/bases/{id}/query");
        api.ok(Method::POST, &exec, Some(json!({"statements": [{"sql": "CREATE TABLE t (a, b TEXT)"}]}))).await;
        for sql in [
            "ATTACH DATABASE 'other.db' AS other",
            "DETACH DATABASE main",
            "PRAGMA journal_mode = DELETE",
            "PRAGMA foreign_keys = OFF",
            "SELECT load_extension('evil')",
            "VACUUM INTO '/tmp/copy.db'",
            "VACUUM",
            "BEGIN",
            "COMMIT",
            "SAVEPOINT s",
            "DROP TABLE _shoal_meta",
        ] {
            let msg = api.err(Method::POST, &exec, Some(json!({"statements": [{"sql": sql}]})), 400, "sql_not_allowed").await;
            assert!(!msg.is_empty());
            let (s, _) = api.call(Method::POST, &query, Some(json!({"sql": sql}))).await;
            assert_eq!(s, 400, "{sql}");
        }
        let v = api.ok(Method::POST, &query, Some(json!({"sql": "PRAGMA table_info(t)"}))).await;
        assert_eq!(v["rows"].as_array().map(|r| r.len()), Some(2));

        for sql in [
            "INSERT INTO t VALUES (random(), 'x')",
            "INSERT INTO t VALUES (1, hex(randomblob(8)))",
            "INSERT INTO t VALUES (1, CURRENT_TIMESTAMP)",
            "INSERT INTO t VALUES (1, CURRENT_DATE)",
            "INSERT INTO t VALUES (1, datetime('now'))",
            "INSERT INTO t VALUES (1, unixepoch())",
            "INSERT INTO t SELECT 1, date('now', '+1 day')",
        ] {
            let msg = api.err(Method::POST, &exec, Some(json!({"statements": [{"sql": sql}]})), 400, "non_deterministic").await;
            assert!(msg.contains("parameter"), "{sql}: {msg}");
        }
        assert_eq!(api.count(&id, "t").await, 0);
        // A clock or random() hidden in a column DEFAULT is refused when it runs.
        let ddl = "CREATE TABLE d (a, r DEFAULT (random()), at DEFAULT CURRENT_TIMESTAMP)";
        api.ok(Method::POST, &exec, Some(json!({"statements": [{"sql": ddl}]}))).await;
        let insert = json!({"statements": [{"sql": "INSERT INTO d (a) VALUES (1)"}]});
        api.err(Method::POST, &exec, Some(insert), 400, "non_deterministic").await;
        assert_eq!(api.count(&id, "d").await, 0);
        // The advice works: the value passed as a parameter is accepted.
        api.ok(
            Method::POST,
            &exec,
            Some(json!({"statements": [{"sql": "INSERT INTO t VALUES (?, datetime(?))", "params": [7, "2024-05-01 10:00:00"]}]})),
        )
        .await;
        // Reads may use the clock and random().
        let v = api.ok(Method::POST, &query, Some(json!({"sql": "SELECT b, datetime('now') > b, typeof(random()) FROM t"}))).await;
        assert_eq!(v["rows"], json!([["2024-05-01 10:00:00", 1, "integer"]]));

        // Result rows are bounded and the error says how to page.
        let msg = api
            .err(
                Method::POST,
                &query,
                Some(json!({"sql": "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 51) SELECT x FROM c"})),
                400,
                "limit_exceeded",
            )
            .await;
        assert!(msg.contains("LIMIT"), "{msg}");
        let v = api
            .ok(
                Method::POST,
                &query,
                Some(json!({"sql": "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 50) SELECT x FROM c"})),
            )
            .await;
        assert_eq!(v["rows"].as_array().map(|r| r.len()), Some(50));
    })
    .await;
}

#[tokio::test]
async fn statement_time_and_sql_length_are_bounded() {
    let (_dir, server) =
        Server::start(Mode::Memory, &["--statement-timeout", "200ms", "--max-sql-length", "1000"]);
    let api = Api::new(&server);
    let id = api.create_base().await;
    let query = format!("/v1/bases/{id}/query");
    let endless =
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c";
    let msg =
        api.err(Method::POST, &query, Some(json!({"sql": endless})), 400, "limit_exceeded").await;
    assert!(msg.contains("time"), "{msg}");
    let long = format!("SELECT '{}'", "x".repeat(1000));
    api.err(Method::POST, &query, Some(json!({"sql": long})), 400, "limit_exceeded").await;
    // The server is still fine afterwards.
    assert_eq!(
        api.ok(Method::POST, &query, Some(json!({"sql": "SELECT 1"}))).await["rows"],
        json!([[1]])
    );
}

#[tokio::test]
async fn tables_and_rows() {
    both_modes(&[], |server| async move {
        let api = Api::new(&server);
        let id = api.create_base().await;
        api.ok(
            Method::POST,
            &format!("/v1/bases/{id}/execute"),
            Some(json!({"statements": [{"sql": "CREATE TABLE \"my tasks\" (title TEXT NOT NULL, done INTEGER DEFAULT 0, rank REAL)"}]})),
        )
        .await;
        let v = api.ok(Method::GET, &format!("/v1/bases/{id}/tables"), None).await;
        assert_eq!(v["tables"][0]["name"], "my tasks");
        let cols: Vec<&str> = v["tables"][0]["columns"].as_array().expect("columns").iter().filter_map(|c| c["name"].as_str()).collect();
        assert_eq!(cols, ["title", "done", "rank"]);
        assert_eq!(v["tables"][0]["columns"][0]["notnull"], true);
        assert_eq!(v["tables"][0]["columns"][1]["default"], "0");

        let rows = format!("/v1/bases/{id}/tables/my%20tasks/rows");
        let v = api
            .ok(Method::POST, &rows, Some(json!({"rows": [{"title": "a", "rank": 3}, {"title": "b", "rank": 1}, {"title": "c", "rank": 2, "done": true}]})))
            .await;
        assert_eq!(v["rowids"], json!([1, 2, 3]));
        // A failing row in a batch inserts none of the batch.
        api.err(Method::POST, &rows, Some(json!({"rows": [{"title": "d"}, {"done": 1}]})), 422, "constraint_violation").await;
        api.err(Method::POST, &rows, Some(json!({"rows": [{"nope": 1}]})), 400, "invalid_input").await;
        api.err(Method::POST, &rows, Some(json!({"rows": []})), 400, "invalid_input").await;

        let v = api.ok(Method::GET, &format!("{rows}?order_by=rank&desc=true&limit=2"), None).await;
        let titles: Vec<&str> = v["rows"].as_array().expect("rows").iter().filter_map(|r| r["title"].as_str()).collect();
        assert_eq!(titles, ["a", "c"]);
        assert_eq!(v["rows"][0], json!({"_rowid": 1, "title": "a", "done": 0, "rank": 3.0}));
        let v = api.ok(Method::GET, &format!("{rows}?limit=2&offset=2"), None).await;
        assert_eq!(v["rows"].as_array().map(|r| r.len()), Some(1));
        api.err(Method::GET, &format!("{rows}?order_by=evil;DROP"), None, 400, "invalid_input").await;
        api.err(Method::GET, &format!("{rows}?limit=0"), None, 400, "invalid_input").await;
        api.err(Method::GET, &format!("{rows}?desc=maybe"), None, 400, "invalid_input").await;

        assert_eq!(api.ok(Method::GET, &format!("{rows}/2"), None).await["title"], "b");
        api.ok(Method::PATCH, &format!("{rows}/2"), Some(json!({"values": {"done": 1, "title": "B"}}))).await;
        assert_eq!(api.ok(Method::GET, &format!("{rows}/2"), None).await, json!({"_rowid": 2, "title": "B", "done": 1, "rank": 1.0}));
        api.err(Method::PATCH, &format!("{rows}/2"), Some(json!({"values": {"title": null}})), 422, "constraint_violation").await;
        api.err(Method::PATCH, &format!("{rows}/2"), Some(json!({"values": {}})), 400, "invalid_input").await;
        api.err(Method::PATCH, &format!("{rows}/99"), Some(json!({"values": {"done": 1}})), 404, "not_found").await;
        api.ok(Method::DELETE, &format!("{rows}/2"), None).await;
        api.err(Method::GET, &format!("{rows}/2"), None, 404, "not_found").await;
        api.err(Method::DELETE, &format!("{rows}/2"), None, 404, "not_found").await;
        api.err(Method::GET, &format!("{rows}/abc"), None, 400, "invalid_input").await;
        api.err(Method::GET, &format!("/v1/bases/{id}/tables/nope/rows"), None, 404, "not_found").await;
        api.err(Method::GET, &format!("/v1/bases/{id}/tables/_shoal_meta/rows"), None, 404, "not_found").await;
        api.err(Method::POST, &format!("/v1/bases/{id}/tables/nope/rows"), Some(json!({"rows": [{"a": 1}]})), 404, "not_found").await;
        assert_eq!(api.count(&id, "\"my tasks\"").await, 2);
    })
    .await;
}

#[tokio::test]
async fn oversized_bodies_and_unknown_routes() {
    both_modes(&["--max-body-size", "4096"], |server| async move {
        let api = Api::new(&server);
        let id = api.create_base().await;
        let big = json!({"statements": [{"sql": "SELECT ?", "params": ["x".repeat(5000)]}]});
        api.err(Method::POST, &format!("/v1/bases/{id}/execute"), Some(big), 413, "too_large")
            .await;
        api.err(Method::GET, "/v2/whatever", None, 404, "not_found").await;
        let (s, v) = api.call(Method::PUT, &format!("/v1/bases/{id}"), None).await;
        assert_eq!(s, 405, "{v}");
        assert!(v["error"]["message"].is_string());
    })
    .await;
}

#[tokio::test]
async fn openapi_and_metrics() {
    let (_dir, server) = Server::start(Mode::Memory, &[]);
    let api = Api::new(&server);
    let doc = api.ok(Method::GET, "/v1/openapi.json", None).await;
    assert!(doc["openapi"].as_str().expect("version").starts_with("3."));
    let paths = doc["paths"].as_object().expect("paths");
    for (p, methods) in [
        ("/v1/bases", &["get", "post"][..]),
        ("/v1/bases/{id}", &["get", "delete"]),
        ("/v1/bases/{id}/execute", &["post"]),
        ("/v1/bases/{id}/query", &["post"]),
        ("/v1/bases/{id}/tables", &["get"]),
        ("/v1/bases/{id}/tables/{table}/rows", &["get", "post"]),
        ("/v1/bases/{id}/tables/{table}/rows/{rowid}", &["get", "patch", "delete"]),
        ("/v1/bases/{id}/backup", &["get"]),
        ("/v1/bases/{id}/api-tokens", &["get", "post"]),
        ("/v1/bases/{id}/api-tokens/{name}", &["delete"]),
        ("/v1/cluster", &["get"]),
        ("/v1/cluster/buckets", &["get"]),
        ("/v1/node/buckets", &["get"]),
        ("/v1/cluster/nodes/{id}/drain", &["post", "delete"]),
        ("/v1/cluster/nodes/{id}", &["delete"]),
        ("/v1/cluster/rebalance", &["post"]),
        ("/healthz", &["get"]),
        ("/metrics", &["get"]),
    ] {
        for m in methods {
            assert!(paths.get(p).and_then(|x| x.get(*m)).is_some(), "openapi lacks {m} {p}");
        }
    }
    let id = api.create_base().await;
    api.ok(
        Method::POST,
        &format!("/v1/bases/{id}/execute"),
        Some(json!({"statements": [{"sql": "CREATE TABLE t (a)"}]})),
    )
    .await;
    let (_, text) = api.call_with(Method::GET, "/metrics", None, None).await;
    let text = text.as_str().expect("text").to_string();
    assert!(text.contains("shoal_http_requests_total{route=\"/v1/bases/{id}/execute\",method=\"POST\",status=\"200\"} 1"), "{text}");
    assert!(
        text.contains("shoal_http_request_duration_seconds_bucket{route=\"/v1/bases\""),
        "{text}"
    );
    assert!(text.contains("shoal_writes_applied_total 2"), "{text}");
    assert!(text.contains("shoal_open_bases 1"), "{text}");
}

#[tokio::test]
async fn standalone_is_a_one_node_cluster() {
    both_modes(&[], |server| async move {
        let api = Api::new(&server);
        // The in-process monitor places every bucket on the one node.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let status = loop {
            let s = api.ok(Method::GET, "/v1/cluster", None).await;
            if s["epoch"].as_u64() >= Some(1) && s["nodes"][0]["hosted"] == 256 {
                break s;
            }
            assert!(std::time::Instant::now() < deadline, "no placement: {s}");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        };
        assert_eq!(status["registry"], "memory");
        assert_eq!(status["replication_factor"], 1);
        assert_eq!(status["topology"], "dynamic");
        assert_eq!(status["monitor"]["id"], "standalone-monitor");
        assert_eq!(status["nodes"][0]["node_id"], "standalone");
        assert_eq!(status["nodes"][0]["live"], true);
        assert_eq!(status["nodes"][0]["replicas"], 256);
        assert_eq!(status["nodes"][0]["node_url"], server.url.as_str());
        assert_eq!(status["under_replicated"], json!([]));
        assert_eq!(status["moves_in_progress"], json!([]));
        let (s, v) = api.call(Method::POST, "/v1/cluster/rebalance", None).await;
        assert_eq!(s, 202, "{v}");
        assert!(v["requested_at"].is_string());
        let (s, _) = api.call_with(Method::GET, "/v1/cluster", None, None).await;
        assert_eq!(s, 401);
        // A base id's location: its bucket, the one node as replica and leader.
        let id = "3fa85f64-5717-4562-b3fc-2c963f66afa6";
        let loc = api.ok(Method::GET, &format!("/v1/bases/{id}/location"), None).await;
        assert_eq!(loc["bucket"], "3f");
        assert_eq!(loc["leader"]["node_id"], "standalone");
        assert_eq!(loc["leader"]["node_url"], server.url.as_str());
        assert_eq!(loc["replicas"], json!([{"node_id": "standalone", "node_url": server.url}]));
        assert!(loc["epoch"].as_u64() >= Some(1), "{loc}");
        api.err(Method::GET, "/v1/bases/nope/location", None, 400, "invalid_input").await;
    })
    .await;
}

#[tokio::test]
async fn idempotency_keys_apply_once() {
    both_modes(&[], |server| async move {
        let api = Api::new(&server);
        let http = reqwest::Client::new();
        let send = |method: Method, path: String, key: &'static str, body: Value| {
            let r = http
                .request(method, format!("{}{path}", server.url))
                .bearer_auth(&server.token)
                .header("idempotency-key", key)
                .json(&body);
            async move {
                let resp = r.send().await.expect("send");
                let status = resp.status().as_u16();
                (status, resp.json::<Value>().await.expect("json"))
            }
        };
        // A create without an id, retried with its key: one base, same answer.
        let (s1, first) =
            send(Method::POST, "/v1/bases".into(), "create-1", json!({"name": "once"})).await;
        let (s2, second) =
            send(Method::POST, "/v1/bases".into(), "create-1", json!({"name": "once"})).await;
        assert_eq!((s1, s2), (201, 201));
        assert_eq!(first, second);
        let listed = api.ok(Method::GET, "/v1/bases", None).await;
        assert_eq!(listed["bases"].as_array().map(|b| b.len()), Some(1), "{listed}");
        let id = first["id"].as_str().expect("id").to_string();
        api.ok(
            Method::POST,
            &format!("/v1/bases/{id}/execute"),
            Some(json!({"statements": [{"sql": "CREATE TABLE t (a)"}]})),
        )
        .await;

        // An execute retried with its key applies once and answers the same.
        let body = json!({"statements": [{"sql": "INSERT INTO t VALUES (1)"}]});
        let (_, a) =
            send(Method::POST, format!("/v1/bases/{id}/execute"), "ins-1", body.clone()).await;
        let (_, b) =
            send(Method::POST, format!("/v1/bases/{id}/execute"), "ins-1", body.clone()).await;
        assert_eq!(a, b);
        assert_eq!(api.count(&id, "t").await, 1);
        // Another key is another write.
        send(Method::POST, format!("/v1/bases/{id}/execute"), "ins-2", body).await;
        assert_eq!(api.count(&id, "t").await, 2);
        // Row writes too.
        let rows = json!({"rows": [{"a": 9}]});
        let (_, r1) =
            send(Method::POST, format!("/v1/bases/{id}/tables/t/rows"), "rows-1", rows.clone())
                .await;
        let (_, r2) =
            send(Method::POST, format!("/v1/bases/{id}/tables/t/rows"), "rows-1", rows).await;
        assert_eq!(r1, r2);
        assert_eq!(api.count(&id, "t").await, 3);
        // Bad keys are refused and change nothing.
        let (s, v) = send(
            Method::POST,
            format!("/v1/bases/{id}/execute"),
            "has space",
            json!({"statements": [{"sql": "INSERT INTO t VALUES (2)"}]}),
        )
        .await;
        assert_eq!((s, v["error"]["code"].as_str()), (400, Some("invalid_input")), "{v}");
        assert_eq!(api.count(&id, "t").await, 3);
        // Rows chained `after` a write that was not applied are refused and
        // change nothing; after one that was, they go in.
        let path = format!("/v1/bases/{id}/tables/t/rows");
        let chained = json!({"rows": [{"a": 10}], "after": "rows-never"});
        let (s, v) = send(Method::POST, path.clone(), "rows-2", chained).await;
        assert_eq!((s, v["error"]["code"].as_str()), (409, Some("conflict")), "{v}");
        assert_eq!(api.count(&id, "t").await, 3);
        let chained = json!({"rows": [{"a": 10}], "after": "rows-1"});
        let (s, v) = send(Method::POST, path.clone(), "rows-2", chained).await;
        assert_eq!(s, 201, "{v}");
        assert_eq!(api.count(&id, "t").await, 4);
        let bad = json!({"rows": [{"a": 11}], "after": "a b"});
        let (s, v) = send(Method::POST, path, "rows-3", bad).await;
        assert_eq!((s, v["error"]["code"].as_str()), (400, Some("invalid_input")), "{v}");
        assert_eq!(api.count(&id, "t").await, 4);
        // A drop retried with its key answers the same, not 404.
        let (d1, _) = send(Method::DELETE, format!("/v1/bases/{id}"), "drop-1", Value::Null).await;
        let (d2, _) = send(Method::DELETE, format!("/v1/bases/{id}"), "drop-1", Value::Null).await;
        assert_eq!((d1, d2), (200, 200));
    })
    .await;
}

#[tokio::test]
async fn a_base_backup_is_a_sqlite_file_with_its_rows() {
    let (dir, server) = Server::start(Mode::Standalone, &[]);
    let api = Api::new(&server);
    let id = api.create_base().await;
    api.ok(
        Method::POST,
        &format!("/v1/bases/{id}/execute"),
        Some(json!({"statements": [
            {"sql": "CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER, b BLOB)"},
            {"sql": "INSERT INTO t VALUES ('a', 1, x'0102'), ('b', NULL, NULL)"}
        ]})),
    )
    .await;
    let resp = reqwest::Client::new()
        .get(format!("{}/v1/bases/{id}/backup", server.url))
        .bearer_auth(&server.token)
        .send()
        .await
        .expect("backup");
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        resp.headers().get("content-type").and_then(|v| v.to_str().ok()),
        Some("application/vnd.sqlite3")
    );
    let index: u64 = resp
        .headers()
        .get("x-shoal-applied-index")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("an applied index");
    assert!(index > 0);
    let bytes = resp.bytes().await.expect("body");
    assert!(bytes.starts_with(b"SQLite format 3\0"));
    let path = dir.path().join("copy.sqlite");
    std::fs::write(&path, &bytes).expect("write");
    let db = rusqlite::Connection::open(&path).expect("open the copy");
    let rows: Vec<(String, Option<i64>, Option<Vec<u8>>)> = db
        .prepare("SELECT k, v, b FROM t ORDER BY k")
        .expect("prepare")
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    assert_eq!(rows, vec![("a".into(), Some(1), Some(vec![1, 2])), ("b".into(), None, None)]);
    // Bad input.
    let missing = "00000000-0000-4000-8000-000000000000";
    let (s, _) = api.call(Method::GET, &format!("/v1/bases/{missing}/backup"), None).await;
    assert_eq!(s, 404);
    let (s, _) = api.call(Method::GET, "/v1/bases/nope/backup", None).await;
    assert_eq!(s, 400);
    let (s, _) = api.call_with(Method::GET, &format!("/v1/bases/{id}/backup"), None, None).await;
    assert_eq!(s, 401);
}
