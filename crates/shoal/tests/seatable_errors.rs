//! Malformed requests to the SeaTable-compatible API, against a real
//! `shoal serve`: each gets a 4xx answer in SeaTable's error shape
//! (`{"error_msg": "..."}`, not empty) and changes nothing, that is, the
//! base's checksum (its SQL schema and rows) and its SeaTable metadata
//! (tables, columns, select options) are the same after it as before.
//!
//! Every test sets up a fresh base with a typed table and two rows, sends
//! its cases, and fails once at the end with every case that misbehaved, so
//! one run shows them all.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::{Mode, Server, cli};
use reqwest::Method;
use serde_json::{Value, json};

const TABLE: &str = "People";

/// A request body.
enum Body {
    None,
    Json(Value),
    /// Sent as is, with `Content-Type: application/json`.
    Raw(String),
}

fn raw(text: &str) -> Body {
    Body::Raw(text.to_string())
}

/// The status a case wants.
#[derive(Clone, Copy)]
enum Want {
    /// Any 4xx.
    ClientError,
    /// Exactly this one.
    Status(u16),
}

impl Want {
    fn accepts(self, status: u16) -> bool {
        match self {
            Want::ClientError => (400..500).contains(&status),
            Want::Status(s) => status == s,
        }
    }

    fn describe(self) -> String {
        match self {
            Want::ClientError => "a 4xx".into(),
            Want::Status(s) => s.to_string(),
        }
    }
}

const CLIENT_ERROR: Want = Want::ClientError;
const UNAUTHORIZED: Want = Want::Status(401);
const FORBIDDEN: Want = Want::Status(403);

/// How a case reaches the server.
struct Request<'a> {
    method: Method,
    /// Under `/api-gateway/api/v2/dtables/{uuid}/`, or absolute when it
    /// starts with `/`.
    path: &'a str,
    query: Vec<(&'a str, String)>,
    body: Body,
    /// The whole `Authorization` header (`None`: no header).
    auth: Option<String>,
}

/// A base set up through the SeaTable API, and what it looked like before
/// the cases.
struct Fixture {
    _dir: tempfile::TempDir,
    server: Server,
    http: reqwest::Client,
    /// The base, as the server spells it in `dtable_uuid`.
    uuid: String,
    /// `Token ACCESS` for a read-write and a read-only API token.
    rw: String,
    ro: String,
    /// The two rows' ids.
    ann: String,
    bob: String,
    /// The key of the `Name` column.
    name_key: String,
    checksum: String,
    metadata: Value,
    failures: Vec<String>,
}

fn ok(server: &Server, args: &[&str]) -> String {
    let (success, out, err) = cli(server, args);
    assert!(success, "shoal {args:?} failed:\n{out}\n{err}");
    out.trim().to_string()
}

/// A new base and an API token for it (`shoal token create`).
fn base_with_token(server: &Server, name: &str, extra: &[&str]) -> (String, String) {
    let base = ok(server, &["base", "create", "--name", name]);
    let mut args = vec!["token", "create", "--base", &base];
    args.extend_from_slice(extra);
    let token = ok(server, &args);
    (base, token)
}

/// (status, the body as JSON, or as a JSON string when it is not JSON).
async fn answer(resp: reqwest::Response) -> Result<(u16, Value), reqwest::Error> {
    let status = resp.status().as_u16();
    let text = resp.text().await?;
    Ok((status, serde_json::from_str(&text).unwrap_or(Value::String(text))))
}

/// `GET /api/v2.1/dtable/app-access-token/` for an API token: (access token,
/// `dtable_uuid`).
async fn access_token(
    http: &reqwest::Client,
    server: &Server,
    api_token: &str,
) -> (String, String) {
    let resp = http
        .get(format!("{}/api/v2.1/dtable/app-access-token/", server.url))
        .header("authorization", format!("Token {api_token}"))
        .send()
        .await
        .expect("app-access-token");
    let (status, v) = answer(resp).await.expect("app-access-token answer");
    assert_eq!(status, 200, "app-access-token: {v}");
    let access = v["access_token"].as_str().expect("access_token").to_string();
    let uuid = v["dtable_uuid"].as_str().expect("dtable_uuid").to_string();
    (access, uuid)
}

/// The key access tokens are signed with, as the server derives it from the
/// admin token (HMAC-SHA256).
fn signing_key(admin_token: &str) -> Vec<u8> {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    h.update(b"shoal seatable access tokens v1\0");
    h.update(admin_token.as_bytes());
    h.finalize().to_vec()
}

/// `access` with its expiry a minute ago, signed with the right key.
fn expired(access: &str, admin_token: &str) -> String {
    let key = signing_key(admin_token);
    let decoding = jsonwebtoken::DecodingKey::from_secret(&key).expect("decoding key");
    let validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    let mut claims = jsonwebtoken::decode::<Value>(access, &decoding, &validation)
        .expect("the server's access token verifies with the derived key")
        .claims;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs();
    claims["iat"] = json!(now - 3600);
    claims["exp"] = json!(now - 60);
    let encoding = jsonwebtoken::EncodingKey::from_secret(&key).expect("encoding key");
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &encoding).expect("sign")
}

/// `jwt` with the character at `at` replaced by another base64url one.
fn tampered(jwt: &str, at: usize) -> String {
    let mut chars: Vec<char> = jwt.chars().collect();
    assert!(chars[at] != '.', "{at} is a separator of {jwt}");
    chars[at] = if chars[at] == 'A' { 'B' } else { 'A' };
    chars.into_iter().collect()
}

impl Fixture {
    /// A server, a base with read-write and read-only API tokens, and a table
    /// with one column of each type and two rows, all made through the
    /// SeaTable API.
    async fn start() -> Fixture {
        let (dir, server) = Server::start(Mode::Standalone, &[]);
        let (base, rw_token) = base_with_token(&server, "errors", &["--name", "writer"]);
        let ro_token = ok(&server, &["token", "create", "--base", &base, "--read-only"]);
        let http = reqwest::Client::new();
        let (rw, uuid) = access_token(&http, &server, &rw_token).await;
        let (ro, _) = access_token(&http, &server, &ro_token).await;
        let mut f = Fixture {
            _dir: dir,
            server,
            http,
            uuid,
            rw: format!("Token {rw}"),
            ro: format!("Token {ro}"),
            ann: String::new(),
            bob: String::new(),
            name_key: String::new(),
            checksum: String::new(),
            metadata: Value::Null,
            failures: vec![],
        };
        let options = |names: &[&str]| {
            let options: Vec<Value> = names.iter().map(|n| json!({ "name": n })).collect();
            json!({ "options": options })
        };
        let table = f
            .ok(
                Method::POST,
                "tables/",
                json!({"table_name": TABLE, "columns": [
                    {"column_name": "Name", "column_type": "text"},
                    {"column_name": "Notes", "column_type": "long-text"},
                    {"column_name": "Age", "column_type": "number"},
                    {"column_name": "Active", "column_type": "checkbox"},
                    {"column_name": "Born", "column_type": "date"},
                    {"column_name": "Team", "column_type": "single-select",
                     "column_data": options(&["red", "blue"])},
                    {"column_name": "Tags", "column_type": "multiple-select",
                     "column_data": options(&["x", "y"])},
                    {"column_name": "Mail", "column_type": "email"},
                    {"column_name": "Site", "column_type": "url"},
                ]}),
            )
            .await;
        f.name_key = table["columns"][0]["key"].as_str().expect("column key").to_string();
        let rows = f
            .ok(
                Method::POST,
                "rows/",
                json!({"table_name": TABLE, "rows": [
                    {"Name": "ann", "Notes": "first", "Age": 31, "Active": true,
                     "Born": "1993-04-05", "Team": "red", "Tags": ["x"],
                     "Mail": "ann@example.com", "Site": "https://example.com/ann"},
                    {"Name": "bob", "Age": 42.5, "Active": false, "Team": "blue",
                     "Tags": ["x", "y"]},
                ]}),
            )
            .await;
        let id = |i: usize| rows["row_ids"][i]["_id"].as_str().expect("row id").to_string();
        (f.ann, f.bob) = (id(0), id(1));
        f.baseline().await;
        f
    }

    fn url(&self, path: &str) -> String {
        if path.starts_with('/') {
            format!("{}{path}", self.server.url)
        } else {
            format!("{}/api-gateway/api/v2/dtables/{}/{path}", self.server.url, self.uuid)
        }
    }

    async fn send(&self, r: &Request<'_>) -> Result<(u16, Value), reqwest::Error> {
        let mut req = self.http.request(r.method.clone(), self.url(r.path)).query(&r.query);
        if let Some(auth) = &r.auth {
            req = req.header("authorization", auth);
        }
        req = match &r.body {
            Body::None => req,
            Body::Json(v) => req.json(v),
            Body::Raw(text) => req.header("content-type", "application/json").body(text.clone()),
        };
        answer(req.send().await?).await
    }

    /// A request with the read-write token that must succeed (setting up).
    async fn ok(&self, method: Method, path: &str, body: Value) -> Value {
        let auth = Some(self.rw.clone());
        let r = Request { method, path, query: vec![], body: Body::Json(body), auth };
        let (status, v) = self.send(&r).await.expect("request");
        assert_eq!(status, 200, "{} {path}: {v}", r.method);
        v
    }

    /// The base's checksum and SeaTable metadata now.
    async fn state(&self) -> Result<(String, Value), String> {
        let resp = self
            .http
            .get(self.url(&format!("/v1/bases/{}/checksum", self.uuid)))
            .bearer_auth(&self.server.token)
            .send()
            .await
            .map_err(|e| format!("checksum: {e}"))?;
        let (status, v) = answer(resp).await.map_err(|e| format!("checksum: {e}"))?;
        let checksum = match (status, v["checksum"].as_str()) {
            (200, Some(c)) => c.to_string(),
            _ => return Err(format!("checksum: {status} {v}")),
        };
        let r = Request {
            method: Method::GET,
            path: "metadata/",
            query: vec![],
            body: Body::None,
            auth: Some(self.rw.clone()),
        };
        match self.send(&r).await {
            Ok((200, v)) if v["metadata"]["tables"].is_array() => Ok((checksum, v)),
            Ok((status, v)) => Err(format!("metadata: {status} {v}")),
            Err(e) => Err(format!("metadata: {e}")),
        }
    }

    /// Records the state the cases must leave alone.
    async fn baseline(&mut self) {
        let (checksum, metadata) = self.state().await.expect("the base's state");
        (self.checksum, self.metadata) = (checksum, metadata);
    }

    /// Sends `r`, which must be refused with `want` in SeaTable's shape and
    /// change nothing; records a failure otherwise. Returns the answer.
    async fn refused(&mut self, what: &str, want: Want, r: Request<'_>) -> Option<(u16, Value)> {
        let body = match &r.body {
            Body::None => String::new(),
            Body::Json(v) => format!(" {v}"),
            Body::Raw(t) => format!(" {t:?}"),
        };
        let query: Vec<String> = r.query.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let query = if query.is_empty() { String::new() } else { format!("?{}", query.join("&")) };
        let request = format!("{} {}{query}{body}", r.method, r.path);
        let (status, v) = match self.send(&r).await {
            Ok(a) => a,
            Err(e) => {
                self.failures.push(format!("{what}: {request}\n    no answer: {e}"));
                return None;
            }
        };
        let mut wrong = vec![];
        if !want.accepts(status) {
            wrong.push(format!("want {}", want.describe()));
        }
        if v["error_msg"].as_str().is_none_or(|m| m.trim().is_empty()) {
            wrong.push("want a non-empty error_msg".into());
        }
        match self.state().await {
            Ok((checksum, metadata)) => {
                if checksum != self.checksum {
                    wrong.push("the base's checksum changed".into());
                }
                if metadata != self.metadata {
                    wrong.push("the SeaTable metadata changed".into());
                }
                // Later cases are judged against what is there now.
                (self.checksum, self.metadata) = (checksum, metadata);
            }
            Err(e) => wrong.push(format!("cannot read the base's state afterwards: {e}")),
        }
        if !wrong.is_empty() {
            self.failures.push(format!(
                "{what}: {request}\n    answer: {status} {v}\n    {}",
                wrong.join("; ")
            ));
        }
        Some((status, v))
    }

    /// [`Fixture::refused`] with the read-write token.
    async fn bad(&mut self, what: &str, want: Want, method: Method, path: &str, body: Body) {
        let auth = Some(self.rw.clone());
        self.refused(what, want, Request { method, path, query: vec![], body, auth }).await;
    }

    /// [`Fixture::bad`] for a JSON body.
    async fn bad_json(&mut self, what: &str, method: Method, path: &str, body: Value) {
        self.bad(what, CLIENT_ERROR, method, path, Body::Json(body)).await;
    }

    /// A GET with the read-write token and `query`, which must be refused.
    async fn bad_get(&mut self, what: &str, path: &str, query: &[(&str, &str)], body: Body) {
        let query = query.iter().map(|(k, v)| (*k, v.to_string())).collect();
        let auth = Some(self.rw.clone());
        self.refused(what, CLIENT_ERROR, Request { method: Method::GET, path, query, body, auth })
            .await;
    }

    /// Fails with every case that misbehaved, unless none did; the base must
    /// also be as it was before the first case.
    async fn finish(mut self, baseline: (String, Value)) {
        match self.state().await {
            Ok(now) if now == baseline => {}
            Ok(_) => {
                self.failures.push("at the end: the base differs from before the cases".into())
            }
            Err(e) => self.failures.push(format!("at the end: {e}")),
        }
        assert!(
            self.failures.is_empty(),
            "{} case(s) misbehaved:\n\n{}",
            self.failures.len(),
            self.failures.join("\n\n")
        );
    }

    fn before(&self) -> (String, Value) {
        (self.checksum.clone(), self.metadata.clone())
    }
}

#[tokio::test]
async fn seatable_malformed_bodies_are_refused_and_change_nothing() {
    let mut f = Fixture::start().await;
    let before = f.before();
    let writing = [
        (Method::POST, "tables/"),
        (Method::PUT, "tables/"),
        (Method::DELETE, "tables/"),
        (Method::POST, "columns/"),
        (Method::PUT, "columns/"),
        (Method::DELETE, "columns/"),
        (Method::POST, "rows/"),
        (Method::PUT, "rows/"),
        (Method::DELETE, "rows/"),
        (Method::POST, "sql"),
        (Method::POST, "sql/"),
    ];
    for (method, path) in writing {
        f.bad("bad JSON", CLIENT_ERROR, method.clone(), path, raw(r#"{"table_name": "#)).await;
        f.bad("not JSON", CLIENT_ERROR, method.clone(), path, raw("table_name=People")).await;
        f.bad("an empty body", CLIENT_ERROR, method.clone(), path, raw("")).await;
        f.bad("a JSON list", CLIENT_ERROR, method, path, raw("[]")).await;
    }
    f.bad_get("bad JSON", "filtered-rows/", &[("table_name", TABLE)], raw("{bad")).await;

    // JSON of the wrong shape.
    let ann = f.ann.clone();
    let cases = [
        (Method::POST, "tables/", json!({"table_name": 5})),
        (Method::POST, "tables/", json!({"name": "Other"})),
        (Method::POST, "tables/", json!({"table_name": "Other", "columns": {"column_name": "A"}})),
        (
            Method::POST,
            "tables/",
            json!({"table_name": "Other", "columns": [{"column_name": "A"}]}),
        ),
        (Method::DELETE, "tables/", json!({})),
        (Method::PUT, "tables/", json!({"table_name": TABLE})),
        (Method::PUT, "tables/", json!({"table_name": TABLE, "new_table_name": 5})),
        (Method::PUT, "tables/", json!({"table_name": TABLE, "new_table_name": " "})),
        (Method::PUT, "tables/", json!({"new_table_name": "Other"})),
        (
            Method::PUT,
            "columns/",
            json!({"table_name": TABLE, "op_type": "rename_column", "column": "Name"}),
        ),
        (
            Method::PUT,
            "columns/",
            json!({"table_name": TABLE, "op_type": "resize_column", "column": "Name",
                   "new_column_width": 300}),
        ),
        (
            Method::PUT,
            "columns/",
            json!({"table_name": TABLE, "op_type": "rename_column", "column": "Name",
                   "new_column_name": ""}),
        ),
        (Method::DELETE, "columns/", json!({"table_name": TABLE})),
        (Method::DELETE, "columns/", json!({"table_name": TABLE, "column": "Name"})),
        (Method::DELETE, "columns/", json!({"table_name": TABLE, "column": "NoSuch"})),
        (Method::POST, "columns/", json!({"table_name": TABLE, "column_name": "X"})),
        (Method::POST, "columns/", json!({"table_name": TABLE, "column_type": "text"})),
        (
            Method::POST,
            "columns/",
            json!({"table_name": TABLE, "column_name": "X", "column_type": "text",
                   "column_data": "wide"}),
        ),
        (Method::POST, "rows/", json!({"table_name": TABLE, "rows": {"Name": "x"}})),
        (Method::POST, "rows/", json!({"table_name": TABLE, "rows": ["x"]})),
        (Method::POST, "rows/", json!({"table_name": TABLE, "row": {"Name": "x"}})),
        (Method::POST, "rows/", json!({"rows": [{"Name": "x"}]})),
        (Method::PUT, "rows/", json!({"table_name": TABLE, "updates": {"row_id": ann}})),
        (Method::PUT, "rows/", json!({"table_name": TABLE, "updates": [{"row_id": ann}]})),
        (
            Method::PUT,
            "rows/",
            json!({"table_name": TABLE, "updates": [{"row_id": 7, "row": {"Name": "x"}}]}),
        ),
        (Method::PUT, "rows/", json!({"updates": [{"row_id": ann, "row": {"Name": "x"}}]})),
        (Method::DELETE, "rows/", json!({"table_name": TABLE, "row_ids": ann})),
        (Method::DELETE, "rows/", json!({"table_name": TABLE, "row_id": ann})),
        (Method::DELETE, "rows/", json!({"row_ids": [ann]})),
        (Method::POST, "sql", json!({"query": "SELECT 1"})),
        (Method::POST, "sql", json!({"sql": 5})),
        (Method::POST, "sql", json!({"sql": "SELECT ?", "parameters": "x"})),
    ];
    for (method, path, body) in cases {
        f.bad_json("a body of the wrong shape", method, path, body).await;
    }
    f.bad_get(
        "filters of the wrong shape",
        "filtered-rows/",
        &[("table_name", TABLE)],
        Body::Json(json!({"filters": {"column_name": "Name"}})),
    )
    .await;
    f.finish(before).await;
}

#[tokio::test]
async fn seatable_wrong_rows_and_values_are_refused_and_change_nothing() {
    let mut f = Fixture::start().await;
    let before = f.before();
    let (ann, bob) = (f.ann.clone(), f.bob.clone());

    // A table that does not exist.
    let nope = "No Such Table";
    let cases = [
        (Method::POST, "rows/", json!({"table_name": nope, "rows": [{"Name": "x"}]})),
        (
            Method::PUT,
            "rows/",
            json!({"table_name": nope, "updates": [{"row_id": ann, "row": {}}]}),
        ),
        (Method::DELETE, "rows/", json!({"table_name": nope, "row_ids": [ann]})),
        (Method::POST, "rows/", json!({"table_id": "zzzz", "rows": [{"Name": "x"}]})),
        (
            Method::POST,
            "columns/",
            json!({"table_name": nope, "column_name": "X", "column_type": "text"}),
        ),
        (Method::DELETE, "tables/", json!({"table_name": nope})),
        (Method::DELETE, "tables/", json!({"table_id": "zzzz"})),
    ];
    for (method, path, body) in cases {
        f.bad_json("an unknown table", method, path, body).await;
    }
    f.bad_get("an unknown table", "rows/", &[("table_name", nope)], Body::None).await;
    f.bad_get("an unknown table", "columns/", &[("table_name", nope)], Body::None).await;

    // A column that does not exist, alone or after a good row.
    let rows = |rows: Value| json!({"table_name": TABLE, "rows": rows});
    f.bad_json("an unknown column", Method::POST, "rows/", rows(json!([{"Nope": "x"}]))).await;
    f.bad_json(
        "an unknown column after a good row",
        Method::POST,
        "rows/",
        rows(json!([{"Name": "fine"}, {"Name": "fine", "Nope": "x"}])),
    )
    .await;
    f.bad_json(
        "an unknown column",
        Method::PUT,
        "rows/",
        json!({"table_name": TABLE, "updates": [{"row_id": ann, "row": {"Nope": "x"}}]}),
    )
    .await;

    // A value of the wrong type, for each column type.
    let wrong = [
        ("Name", json!({"first": "ann"})),
        ("Name", json!(["ann"])),
        ("Name", json!(true)),
        ("Notes", json!({"text": "long"})),
        ("Mail", json!(["ann@example.com"])),
        ("Site", json!({"url": "https://example.com"})),
        ("Age", json!("abc")),
        ("Age", json!(true)),
        ("Age", json!("NaN")),
        ("Age", json!([1])),
        ("Active", json!("yes")),
        ("Active", json!(1)),
        ("Born", json!("tomorrow")),
        ("Born", json!(20240501)),
        ("Born", json!("2024-5-1")),
        ("Team", json!(3)),
        ("Team", json!(["red"])),
        ("Team", json!({"name": "red"})),
        ("Tags", json!("x")),
        ("Tags", json!([1])),
        ("Tags", json!({"x": true})),
    ];
    for (column, value) in &wrong {
        let what = format!("a wrong value for {column}");
        let row = json!({ *column: value });
        f.bad_json(&what, Method::POST, "rows/", rows(json!([row]))).await;
        f.bad_json(&what, Method::POST, "rows/", rows(json!([{"Name": "fine"}, row]))).await;
        f.bad_json(
            &what,
            Method::PUT,
            "rows/",
            json!({"table_name": TABLE, "updates": [
                {"row_id": bob, "row": {"Name": "fine"}},
                {"row_id": ann, "row": row},
            ]}),
        )
        .await;
    }
    // Dates of the right shape that name no day or time.
    for not_a_date in ["2024-02-30", "2024-05-01 25:99", "2024-04-31T10:00"] {
        let what = format!("a date that does not exist ({not_a_date})");
        f.bad_json(&what, Method::POST, "rows/", rows(json!([{"Born": not_a_date}]))).await;
        f.bad_json(
            &what,
            Method::PUT,
            "rows/",
            json!({"table_name": TABLE, "updates": [{"row_id": ann, "row": {"Born": not_a_date}}]}),
        )
        .await;
    }
    // One column given twice in one row, by name and by key, or by names
    // differing in case.
    let key = f.name_key.clone();
    for row in [json!({"Name": "one", key.clone(): "two"}), json!({"Name": "one", "NAME": "two"})] {
        let what = "one column given twice in a row";
        f.bad_json(what, Method::POST, "rows/", rows(json!([row]))).await;
        f.bad_json(
            what,
            Method::PUT,
            "rows/",
            json!({"table_name": TABLE, "updates": [{"row_id": ann, "row": row}]}),
        )
        .await;
    }

    // Row ids that do not exist, alone or with one that does.
    let update = |id: &str| json!({"row_id": id, "row": {"Name": "changed"}});
    let missing = "AAAAAAAAAAAAAAAAAAAAAA";
    let cases = [
        (Method::PUT, json!({"table_name": TABLE, "updates": [update(missing)]})),
        (Method::PUT, json!({"table_name": TABLE, "updates": [update(&ann), update(missing)]})),
        (Method::PUT, json!({"table_name": TABLE, "updates": [update(missing), update(&bob)]})),
        (Method::DELETE, json!({"table_name": TABLE, "row_ids": [missing]})),
        (Method::DELETE, json!({"table_name": TABLE, "row_ids": [ann, missing]})),
        (Method::DELETE, json!({"table_name": TABLE, "row_ids": [missing, bob]})),
    ];
    for (method, body) in cases {
        f.bad_json("a row id that does not exist", method, "rows/", body).await;
    }
    let path = format!("rows/{missing}/");
    f.bad_get("a row id that does not exist", &path, &[("table_name", TABLE)], Body::None).await;

    // Nothing to do, or too much.
    f.bad_json("no rows", Method::POST, "rows/", rows(json!([]))).await;
    f.bad_json("no updates", Method::PUT, "rows/", json!({"table_name": TABLE, "updates": []}))
        .await;
    f.bad_json("no row ids", Method::DELETE, "rows/", json!({"table_name": TABLE, "row_ids": []}))
        .await;
    let many: Vec<Value> = (0..1001).map(|i| json!({"Name": format!("row {i}")})).collect();
    f.bad_json("1001 rows in one call", Method::POST, "rows/", rows(Value::Array(many))).await;
    f.finish(before).await;
}

#[tokio::test]
async fn seatable_bad_tables_and_columns_are_refused_and_change_nothing() {
    let mut f = Fixture::start().await;
    // A table made with Shoal's own SQL, whose name a SeaTable table cannot
    // take either.
    let resp = f
        .http
        .post(f.url(&format!("/v1/bases/{}/execute", f.uuid)))
        .bearer_auth(&f.server.token)
        .json(&json!({"statements": [{"sql": "CREATE TABLE plain (a TEXT)"}]}))
        .send()
        .await
        .expect("execute");
    let (status, v) = answer(resp).await.expect("execute answer");
    assert_eq!(status, 200, "{v}");
    f.baseline().await;
    let before = f.before();

    let column = |name: &str, kind: &str| json!({"column_name": name, "column_type": kind});
    let add_column = |c: Value| {
        let mut c = c;
        c["table_name"] = json!(TABLE);
        c
    };
    for kind in ["formula", "link", "image", "file", "button", "no-such-type", ""] {
        let what = format!("an unsupported column type {kind:?}");
        f.bad_json(&what, Method::POST, "columns/", add_column(column("New", kind))).await;
        f.bad_json(
            &what,
            Method::POST,
            "tables/",
            json!({"table_name": "Other",
                   "columns": [column("Name", "text"), column("New", kind)]}),
        )
        .await;
    }

    let tables = [
        ("a duplicate table name", TABLE.to_string()),
        ("a duplicate table name in another case", TABLE.to_uppercase()),
        ("the name of a table made with SQL", "plain".to_string()),
        ("a name starting with _shoal_", "_shoal_mine".to_string()),
        ("a catalog table's name", "_SHOAL_ST_TABLES".to_string()),
        ("the token table's name", "_shoal_api_tokens".to_string()),
        ("a name starting with sqlite_", "sqlite_mine".to_string()),
        ("an empty name", String::new()),
        ("a blank name", "   ".to_string()),
        ("a name of 300 bytes", "t".repeat(300)),
    ];
    for (what, name) in tables {
        f.bad_json(what, Method::POST, "tables/", json!({"table_name": name})).await;
    }
    f.bad_json(
        "one column twice in a new table",
        Method::POST,
        "tables/",
        json!({"table_name": "Other", "columns": [column("A", "text"), column("a", "number")]}),
    )
    .await;
    f.bad_json(
        "a system column in a new table",
        Method::POST,
        "tables/",
        json!({"table_name": "Other", "columns": [column("_mtime", "text")]}),
    )
    .await;

    let columns = [
        ("a duplicate column name", column("Age", "number")),
        ("a duplicate column name in another case", column("age", "text")),
        ("a system column's name", column("_id", "text")),
        ("a system column's name in another case", column("_CTIME", "text")),
        ("a name starting with _shoal_", column("_shoal_mine", "text")),
        ("an empty name", column("", "text")),
        ("a name of 300 bytes", column(&"c".repeat(300), "text")),
        (
            "options that are not a list",
            json!({"column_name": "S", "column_type": "single-select",
                   "column_data": {"options": "red"}}),
        ),
        (
            "an option without a name",
            json!({"column_name": "S", "column_type": "multiple-select",
                   "column_data": {"options": [{"color": "#FFFFFF"}]}}),
        ),
    ];
    for (what, c) in columns {
        f.bad_json(what, Method::POST, "columns/", add_column(c)).await;
    }
    f.finish(before).await;
}

#[tokio::test]
async fn seatable_bad_paging_and_filters_are_refused() {
    let mut f = Fixture::start().await;
    let before = f.before();
    let cases: [(&str, &[(&str, &str)]); 11] = [
        ("an unknown direction", &[("direction", "up")]),
        ("a direction in capitals", &[("direction", "DOWN")]),
        ("limit 0", &[("limit", "0")]),
        ("a limit over 1000", &[("limit", "1001")]),
        ("a negative limit", &[("limit", "-1")]),
        ("a limit that is not a number", &[("limit", "ten")]),
        ("a limit too large for any integer", &[("limit", "99999999999999999999999")]),
        ("a negative start", &[("start", "-1")]),
        ("a start that is not a number", &[("start", "first")]),
        ("order by an unknown column", &[("order_by", "Nope")]),
        ("an unknown view", &[("view_name", "Other View")]),
    ];
    for (what, query) in cases {
        let mut q = vec![("table_name", TABLE)];
        q.extend_from_slice(query);
        f.bad_get(what, "rows/", &q, Body::None).await;
        f.bad_get(what, "filtered-rows/", &q, Body::Json(json!({"filters": []}))).await;
    }
    let ann = f.ann.clone();
    f.bad_get(
        "limit 0",
        &format!("rows/{ann}/"),
        &[("table_name", TABLE), ("limit", "0")],
        Body::None,
    )
    .await;
    f.bad_get("no table named", "rows/", &[], Body::None).await;

    let filter = |column: &str, predicate: &str, term: Value| {
        json!({"filters": [{"column_name": column, "filter_predicate": predicate,
                            "filter_term": term}]})
    };
    let filters = [
        ("a filter on an unknown column", filter("Nope", "is", json!("x"))),
        ("an unknown filter predicate", filter("Name", "sounds_like", json!("x"))),
        ("a text filter with a number term", filter("Name", "contains", json!(3))),
        ("a number filter with a word term", filter("Age", "less", json!("abc"))),
        ("a checkbox filter with a word term", filter("Active", "is", json!("yes"))),
        ("an unknown conjunction", json!({"filters": [], "filter_conjunction": "Xor"})),
    ];
    for (what, body) in filters {
        f.bad_get(what, "filtered-rows/", &[("table_name", TABLE)], Body::Json(body)).await;
    }
    f.finish(before).await;
}

#[tokio::test]
async fn seatable_bad_sql_is_refused_and_changes_nothing() {
    let mut f = Fixture::start().await;
    let before = f.before();
    let sql = [
        ("invalid SQL", "SELEC * FROM People"),
        ("invalid SQL", "DELETE FROM People WHERE"),
        ("an unknown table", "SELECT * FROM Nope"),
        ("an unknown table", "INSERT INTO Nope VALUES (1)"),
        ("an unknown column", "UPDATE People SET Nope = 1"),
        ("empty SQL", ""),
        ("a missing parameter", "SELECT * FROM People WHERE Name = ?"),
        ("two statements", "DELETE FROM People; DROP TABLE People"),
        ("two statements", "SELECT 1; DELETE FROM People"),
        ("a schema change", "DROP TABLE People"),
        ("a schema change", "ALTER TABLE People ADD COLUMN Extra TEXT"),
        ("a schema change", "CREATE TABLE Extra (a TEXT)"),
        ("reading the token table", "SELECT * FROM _shoal_api_tokens"),
        ("reading the token table", "SELECT hash FROM _shoal_api_tokens"),
        ("reading the token table", "SELECT count(*) FROM _shoal_api_tokens"),
        (
            "reading the token table",
            "SELECT Name FROM People WHERE Name IN (SELECT name FROM _shoal_api_tokens)",
        ),
        ("reading the token table", "WITH t AS (SELECT * FROM _shoal_api_tokens) SELECT * FROM t"),
        ("writing the token table", "DELETE FROM _shoal_api_tokens"),
        ("writing the token table", "UPDATE _shoal_api_tokens SET permission = 'rw'"),
        (
            "writing the token table",
            "INSERT INTO _shoal_api_tokens (hash, name, permission, created_at) \
             VALUES ('h', 'n', 'rw', 't')",
        ),
        ("writing the catalog", "DELETE FROM _shoal_st_columns"),
        ("writing the catalog", "UPDATE _shoal_st_tables SET name = 'Renamed'"),
        ("writing the catalog", "DELETE FROM _shoal_st_options"),
        ("a pragma that writes", "PRAGMA writable_schema = 1"),
        ("attaching a database", "ATTACH DATABASE 'other.db' AS other"),
        ("a transaction statement", "BEGIN"),
    ];
    for (what, text) in sql {
        f.bad_json(what, Method::POST, "sql", json!({"sql": text})).await;
    }
    f.bad_json(
        "too few parameters",
        Method::POST,
        "sql/",
        json!({"sql": "SELECT * FROM People WHERE Name = ? AND Age = ?", "parameters": ["ann"]}),
    )
    .await;
    f.finish(before).await;
}

#[tokio::test]
async fn seatable_bad_tokens_are_refused_and_change_nothing() {
    let mut f = Fixture::start().await;
    let (ann, bob) = (f.ann.clone(), f.bob.clone());
    // Another base with its own token.
    let (_, other_token) = base_with_token(&f.server, "other", &[]);
    let (other, other_uuid) = access_token(&f.http, &f.server, &other_token).await;
    assert_ne!(other_uuid, f.uuid);
    // And an API token of a third base, used where an access token goes.
    let (_, api_token) = base_with_token(&f.server, "third", &[]);
    f.baseline().await;
    let before = f.before();

    let writes = || {
        [
            (Method::POST, "tables/", json!({"table_name": "Other"})),
            (Method::DELETE, "tables/", json!({"table_name": TABLE})),
            (
                Method::POST,
                "columns/",
                json!({"table_name": TABLE, "column_name": "New", "column_type": "text"}),
            ),
            (Method::POST, "rows/", json!({"table_name": TABLE, "rows": [{"Name": "new"}]})),
            (
                Method::PUT,
                "rows/",
                json!({"table_name": TABLE, "updates": [{"row_id": ann, "row": {"Name": "new"}}]}),
            ),
            (Method::DELETE, "rows/", json!({"table_name": TABLE, "row_ids": [bob]})),
            (Method::POST, "sql", json!({"sql": "DELETE FROM People"})),
            (Method::POST, "sql", json!({"sql": "UPDATE People SET Name = 'new'"})),
            (Method::POST, "sql", json!({"sql": "INSERT INTO People (Name) VALUES ('new')"})),
        ]
    };
    let read = || (Method::GET, "metadata/", Value::Null);
    let request = |(method, path, body): (Method, &'static str, Value), auth: &str| Request {
        method,
        path,
        query: vec![],
        body: if body.is_null() { Body::None } else { Body::Json(body) },
        auth: Some(auth.to_string()),
    };

    let ro = f.ro.clone();
    for w in writes() {
        f.refused("a read-only token writing", FORBIDDEN, request(w, &ro)).await;
    }

    let other = format!("Token {other}");
    f.refused("a token for another base reading", FORBIDDEN, request(read(), &other)).await;
    for w in writes() {
        f.refused("a token for another base writing", FORBIDDEN, request(w, &other)).await;
    }

    // SeaTable's client tells an expired token by exactly this answer (403,
    // "Token expired.") and fetches a new one.
    let rw_access = f.rw.trim_start_matches("Token ").to_string();
    let old = format!("Token {}", expired(&rw_access, &f.server.token));
    let mut cases = vec![request(read(), &old)];
    cases.extend(writes().into_iter().map(|w| request(w, &old)));
    for r in cases {
        if let Some((_, v)) = f.refused("an expired access token", FORBIDDEN, r).await
            && v["error_msg"] != "Token expired."
        {
            f.failures.push(format!("an expired access token: want \"Token expired.\", got {v}"));
        }
    }

    // One character changed: in the header, the claims, the signature.
    let dots: Vec<usize> = rw_access.match_indices('.').map(|(i, _)| i).collect();
    assert_eq!(dots.len(), 2, "{rw_access}");
    for (part, at) in [("header", 5), ("claims", dots[0] + 10), ("signature", dots[1] + 10)] {
        let bad = format!("Token {}", tampered(&rw_access, at));
        let what = format!("an access token with its {part} changed");
        f.refused(&what, UNAUTHORIZED, request(read(), &bad)).await;
        for w in writes() {
            f.refused(&what, UNAUTHORIZED, request(w, &bad)).await;
        }
    }

    // No access token, or something else in its place.
    let rows = (Method::POST, "rows/", json!({"table_name": TABLE, "rows": [{"Name": "new"}]}));
    let mut none = request(rows.clone(), "");
    none.auth = None;
    f.refused("no Authorization header", UNAUTHORIZED, none).await;
    let api = format!("Token {api_token}");
    f.refused("an API token instead of an access token", UNAUTHORIZED, request(rows.clone(), &api))
        .await;
    f.refused("a made-up token", UNAUTHORIZED, request(rows, "Token 0123456789abcdef")).await;
    f.refused(
        "a path that names no base",
        CLIENT_ERROR,
        request(
            (Method::GET, "/api-gateway/api/v2/dtables/no-base/metadata/", Value::Null),
            &f.rw.clone(),
        ),
    )
    .await;
    f.finish(before).await;
}
