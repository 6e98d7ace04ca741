//! The SeaTable-compatible API against a real `shoal serve`: scripts written
//! with SeaTable's official Python client (`seatable-api`, pinned, installed in
//! `target/seatable-venv` by `scripts/install-test-deps`) run unchanged, with
//! API tokens made by `shoal token create`. The scripts live in
//! `tests/seatable/`; each prints one line per check and exits 0 only if all
//! pass.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::cluster::{Cluster, TOKEN};
use common::{Mode, Server, cli, python};
use serde_json::{Value, json};

/// How long one script may run before it is killed.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);

/// The virtual environment's python, once it is known to have the client.
fn python() -> PathBuf {
    python::venv_python("seatable-venv", "seatable_api")
}

fn ok(server: &Server, args: &[&str]) -> String {
    let (success, out, err) = cli(server, args);
    assert!(success, "shoal {args:?} failed:\n{out}\n{err}");
    out
}

fn create_base(server: &Server, name: &str) -> String {
    let id = ok(server, &["base", "create", "--name", name]).trim().to_string();
    assert_eq!(id.len(), 36, "{id}");
    id
}

/// `shoal token create --base BASE EXTRA...`: the token, alone on stdout.
fn create_token(server: &Server, base: &str, extra: &[&str]) -> String {
    let mut args = vec!["token", "create", "--base", base];
    args.extend_from_slice(extra);
    let out = ok(server, &args);
    assert_eq!(out.lines().count(), 1, "want the token alone on one line: {out:?}");
    let token = out.trim().to_string();
    assert!(!token.is_empty() && !token.contains(char::is_whitespace), "{out:?}");
    token
}

/// Runs `tests/seatable/SCRIPT` with the venv's python and `env`, killing it
/// past [`SCRIPT_TIMEOUT`]; panics with its output (and the server's) unless
/// it exits 0. Returns its stdout.
async fn run_script(server: &Server, script: &str, env: &[(&str, &str)]) -> String {
    run_script_with(&|| server.logs(), script, env).await
}

/// [`run_script`] with the logs to show on failure given by `logs`.
async fn run_script_with(
    logs: &(dyn Fn() -> String + Sync),
    script: &str,
    env: &[(&str, &str)],
) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("seatable").join(script);
    python::run(&python(), &path, env, SCRIPT_TIMEOUT, logs).await
}

/// GET `url` with `Authorization: AUTH` (none when `None`): (status, JSON body
/// or the text as a JSON string).
async fn get(http: &reqwest::Client, url: &str, auth: Option<&str>) -> (u16, Value) {
    let mut req = http.get(url);
    if let Some(auth) = auth {
        req = req.header("authorization", auth);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// `GET /api/v2.1/dtable/app-access-token/` with an API token.
async fn app_access_token(http: &reqwest::Client, server: &Server, token: &str) -> (u16, Value) {
    let url = format!("{}/api/v2.1/dtable/app-access-token/", server.url);
    get(http, &url, Some(&format!("Token {token}"))).await
}

/// Whether two spellings of a uuid (with or without dashes, any case) are one.
fn same_uuid(a: &str, b: &str) -> bool {
    a.replace('-', "").eq_ignore_ascii_case(&b.replace('-', ""))
}

#[tokio::test]
async fn seatable_client_script_runs_against_shoal() {
    python();
    let (_dir, server) = Server::start(Mode::Standalone, &[]);
    let base = create_base(&server, "seatable");
    let token = create_token(&server, &base, &["--name", "script"]);
    let out = run_script(
        &server,
        "api.py",
        &[("SHOAL_URL", server.url.as_str()), ("SHOAL_API_TOKEN", token.as_str())],
    )
    .await;
    println!("{out}");

    // The table the script left behind is a table of the base for Shoal's own
    // API too, readable with plain SQL.
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/bases/{base}/query", server.url))
        .bearer_auth(&server.token)
        .json(&json!({"sql": r#"SELECT "Name", "Count" FROM "Kept""#}))
        .send()
        .await
        .expect("query");
    let status = resp.status().as_u16();
    let v: Value = resp.json().await.expect("query answer");
    assert_eq!(status, 200, "{v}");
    let rows = v["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 1, "{v}");
    assert_eq!(rows[0][0], "kept-row", "{v}");
    assert_eq!(rows[0][1].as_f64(), Some(7.0), "{v}");
}

#[tokio::test]
async fn seatable_read_only_token_reads_but_does_not_write() {
    python();
    let (_dir, server) = Server::start(Mode::Standalone, &[]);
    let base = create_base(&server, "seatable-ro");
    let rw = create_token(&server, &base, &["--name", "writer"]);
    let ro = create_token(&server, &base, &["--read-only", "--name", "reader"]);
    assert_ne!(rw, ro);
    let out = run_script(
        &server,
        "readonly.py",
        &[
            ("SHOAL_URL", server.url.as_str()),
            ("SHOAL_API_TOKEN", ro.as_str()),
            ("SHOAL_RW_API_TOKEN", rw.as_str()),
        ],
    )
    .await;
    println!("{out}");
}

#[tokio::test]
async fn seatable_token_of_another_base_is_refused() {
    let (_dir, server) = Server::start(Mode::Standalone, &[]);
    let a = create_base(&server, "a");
    let b = create_base(&server, "b");
    let token = create_token(&server, &a, &[]);
    let http = reqwest::Client::new();

    let (status, v) = app_access_token(&http, &server, &token).await;
    assert_eq!(status, 200, "{v}");
    let access = v["access_token"].as_str().expect("access_token").to_string();
    assert!(!access.is_empty(), "{v}");
    let uuid = v["dtable_uuid"].as_str().expect("dtable_uuid");
    assert!(same_uuid(uuid, &a), "want base {a}: {v}");
    assert!(v["dtable_server"].is_string(), "{v}");
    assert_eq!(v["use_api_gateway"], true, "{v}");
    // B spelt as the server spells A.
    let b = if uuid.contains('-') { b } else { b.replace('-', "") };

    let gateway = format!("{}/api-gateway/api/v2/dtables", server.url);
    let auth = format!("Token {access}");
    let (status, v) = get(&http, &format!("{gateway}/{uuid}/metadata/"), Some(&auth)).await;
    assert_eq!(status, 200, "its own base: {v}");
    assert!(v["metadata"]["tables"].is_array(), "{v}");

    let (status, v) = get(&http, &format!("{gateway}/{b}/metadata/"), Some(&auth)).await;
    assert_eq!(status, 403, "another base: {v}");
    assert!(v["error_msg"].as_str().is_some_and(|m| !m.is_empty()), "{v}");

    // No access token, or a made-up one, is refused too.
    let (status, v) = get(&http, &format!("{gateway}/{uuid}/metadata/"), None).await;
    assert!((400..500).contains(&status), "{status} {v}");
    let made_up = format!("Token {}", "0".repeat(64));
    let (status, v) = get(&http, &format!("{gateway}/{uuid}/metadata/"), Some(&made_up)).await;
    assert!((400..500).contains(&status), "{status} {v}");
}

/// The access token and the base's gateway URL (as the server spells the
/// uuid) for an API token.
async fn gateway_of(http: &reqwest::Client, server: &Server, token: &str) -> (String, String) {
    let (status, v) = app_access_token(http, server, token).await;
    assert_eq!(status, 200, "{v}");
    let uuid = v["dtable_uuid"].as_str().expect("dtable_uuid");
    let access = v["access_token"].as_str().expect("access_token");
    (format!("Token {access}"), format!("{}/api-gateway/api/v2/dtables/{uuid}", server.url))
}

#[tokio::test]
async fn seatable_tables_come_back_with_a_restored_base_and_its_tokens_do_not() {
    let (dir, server) = Server::start(Mode::Standalone, &[]);
    let base = create_base(&server, "catalog");
    let token = create_token(&server, &base, &[]);
    let http = reqwest::Client::new();
    let (auth, gateway) = gateway_of(&http, &server, &token).await;
    let table = json!({"table_name": "Contacts", "columns": [
        {"column_name": "Name", "column_type": "text"},
        {"column_name": "Level", "column_type": "single-select"}]});
    let resp = http
        .post(format!("{gateway}/tables/"))
        .header("authorization", &auth)
        .json(&table)
        .send()
        .await
        .expect("add table");
    assert!(resp.status().is_success(), "{:?}", resp.text().await);
    let rows = json!({"table_name": "Contacts", "rows": [{"Name": "Ada", "Level": "High"}]});
    let resp = http
        .post(format!("{gateway}/rows/"))
        .header("authorization", &auth)
        .json(&rows)
        .send()
        .await
        .expect("append");
    assert!(resp.status().is_success(), "{:?}", resp.text().await);

    let out = dir.path().join("backup").display().to_string();
    ok(&server, &["backup", "--out", &out, "--base", &base]);
    let copy = "0c000000-0000-4000-8000-000000000003";
    ok(&server, &["restore", &out, "--base", &base, "--as", copy]);

    // The copy's tables are SeaTable tables again, with their rows and
    // options; the original's token does not open it, and it has none.
    let list = ok(&server, &["token", "list", "--base", copy]);
    assert!(!list.contains("token-"), "a restored base kept tokens: {list}");
    let token = create_token(&server, copy, &[]);
    let (auth, gateway) = gateway_of(&http, &server, &token).await;
    let (status, v) = get(&http, &format!("{gateway}/metadata/"), Some(&auth)).await;
    assert_eq!(status, 200, "{v}");
    let tables = v["metadata"]["tables"].as_array().expect("tables");
    let contacts = tables.iter().find(|t| t["name"] == "Contacts").expect("Contacts: {v}");
    let names: Vec<&str> = contacts["columns"]
        .as_array()
        .expect("columns")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert!(names.contains(&"Name") && names.contains(&"Level"), "{v}");
    let (status, v) =
        get(&http, &format!("{gateway}/rows/?table_name=Contacts&convert_keys=true"), Some(&auth))
            .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["rows"][0]["Name"], "Ada", "{v}");
    assert_eq!(v["rows"][0]["Level"], "High", "{v}");
}

#[tokio::test]
async fn seatable_tokens_list_create_over_http_and_revoke() {
    let (_dir, server) = Server::start(Mode::Standalone, &[]);
    let base = create_base(&server, "tokens");
    let http = reqwest::Client::new();
    let cli_token = create_token(&server, &base, &["--name", "cli-token-one"]);
    assert_eq!(app_access_token(&http, &server, &cli_token).await.0, 200);

    // The same through the HTTP API, which needs the admin token.
    let url = format!("{}/v1/bases/{base}/api-tokens", server.url);
    let body = json!({"name": "http-reader", "permission": "r"});
    let resp = http.post(&url).json(&body).send().await.expect("create token");
    assert_eq!(resp.status().as_u16(), 401);
    let resp =
        http.post(&url).bearer_auth(&server.token).json(&body).send().await.expect("create token");
    let status = resp.status().as_u16();
    let v: Value = resp.json().await.expect("token answer");
    assert_eq!(status, 201, "{v}");
    let http_token = v["api_token"].as_str().expect("api_token").to_string();
    assert_ne!(http_token, cli_token);
    let (status, v) = app_access_token(&http, &server, &http_token).await;
    assert_eq!(status, 200, "{v}");
    assert!(same_uuid(v["dtable_uuid"].as_str().expect("dtable_uuid"), &base), "{v}");

    let list = ok(&server, &["token", "list", "--base", &base]);
    assert!(list.contains("cli-token-one") && list.contains("http-reader"), "{list}");

    ok(&server, &["token", "revoke", "--base", &base, "cli-token-one"]);
    let list = ok(&server, &["token", "list", "--base", &base]);
    assert!(!list.contains("cli-token-one") && list.contains("http-reader"), "{list}");
    let (status, v) = app_access_token(&http, &server, &cli_token).await;
    assert!((400..500).contains(&status), "a revoked token: {status} {v}");
    assert_eq!(app_access_token(&http, &server, &http_token).await.0, 200);
}

/// Runs realtime.py against a fresh base of `server` with `extra` env.
async fn realtime(server: &Server, extra: &[(&str, &str)]) -> String {
    let base = create_base(server, "live");
    let token = create_token(server, &base, &[]);
    let mut env = vec![("SHOAL_URL", server.url.as_str()), ("SHOAL_API_TOKEN", token.as_str())];
    env.extend_from_slice(extra);
    run_script(server, "realtime.py", &env).await
}

#[tokio::test]
async fn seatable_socket_gets_every_write_over_websocket_and_polling() {
    python();
    let (_dir, server) = Server::start(Mode::Standalone, &[]);
    for transport in ["websocket", "polling"] {
        let out = realtime(&server, &[("SHOAL_TRANSPORT", transport)]).await;
        assert!(out.contains(&format!("over {transport}")), "{out}");
    }
}

#[tokio::test]
async fn seatable_socket_with_a_bad_token_is_refused() {
    python();
    let (_dir, server) = Server::start(Mode::Standalone, &[]);
    let out = realtime(&server, &[("SHOAL_EXPECT_REFUSAL", "1")]).await;
    assert!(out.contains("refused and disconnected"), "{out}");
}

/// `METHOD url` with the cluster's admin token, retried (bounded) until it
/// answers `want`; returns the JSON answer.
async fn admin_until(method: reqwest::Method, url: &str, body: Value, want: u16) -> Value {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let req = http.request(method.clone(), url).bearer_auth(TOKEN).json(&body);
        let last = match req.send().await {
            Ok(r) => {
                let status = r.status().as_u16();
                let v: Value = r.json().await.unwrap_or(Value::Null);
                if status == want {
                    return v;
                }
                format!("{status} {v}")
            }
            Err(e) => e.to_string(),
        };
        assert!(Instant::now() < deadline, "{method} {url}: {last}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The node leading `base`'s bucket, as a proxy reports it (bounded wait).
async fn leader_of(proxy: &str, base: &str) -> String {
    let url = format!("{proxy}/v1/bases/{base}/location");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = admin_until(reqwest::Method::GET, &url, Value::Null, 200).await;
        if let Some(l) = v["leader"]["node_id"].as_str() {
            return l.to_string();
        }
        assert!(Instant::now() < deadline, "no leader for {base}: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seatable_scripts_run_through_a_proxy_and_survive_a_leader_kill() {
    python();
    let mut c = Cluster::new().await;
    c.start_three_nodes();
    c.wait_three_replicas().await;
    let proxy = c.start_proxy(0, &["--retry-deadline", "20s"]);
    let token_for = async |base: &str| -> String {
        let url = format!("{}/v1/bases/{base}/api-tokens", proxy.url);
        let v = admin_until(reqwest::Method::POST, &url, json!({}), 201).await;
        v["api_token"].as_str().expect("api_token").to_string()
    };
    let new_base = async |name: &str| -> String {
        let url = format!("{}/v1/bases", proxy.url);
        let v = admin_until(reqwest::Method::POST, &url, json!({"name": name}), 201).await;
        v["id"].as_str().expect("id").to_string()
    };
    let logs = || c.logs();
    // The whole client API, then real-time events, through the proxy.
    let base = new_base("api").await;
    let token = token_for(&base).await;
    let env = [("SHOAL_URL", proxy.url.as_str()), ("SHOAL_API_TOKEN", token.as_str())];
    run_script_with(&logs, "api.py", &env).await;
    let live = new_base("live").await;
    let token = token_for(&live).await;
    let env = [("SHOAL_URL", proxy.url.as_str()), ("SHOAL_API_TOKEN", token.as_str())];
    let out = run_script_with(&logs, "realtime.py", &env).await;
    assert!(out.contains("over websocket"), "{out}");

    // A script writing while its base's leader is killed goes on, and
    // loses no acknowledged row.
    let ledger = new_base("ledger").await;
    let token = token_for(&ledger).await;
    let leader = leader_of(&proxy.url, &ledger).await;
    let env = [
        ("SHOAL_URL", proxy.url.as_str()),
        ("SHOAL_API_TOKEN", token.as_str()),
        ("SHOAL_SECONDS", "8"),
    ];
    let mut victim = c.nodes.remove(&leader).expect("the leader's process");
    let logs = || c.logs();
    let script = run_script_with(&logs, "failover.py", &env);
    let kill = async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        tokio::task::block_in_place(|| victim.kill());
    };
    let (out, ()) = tokio::join!(script, kill);
    println!("{out}");
    assert!(out.contains("no acknowledged row lost"), "{out}");
}
