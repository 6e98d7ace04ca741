//! The `shoal` client commands against a real server.

mod common;

use std::process::{Command, Stdio};

use common::{Mode, Server, bin, cli};
use serde_json::Value;

fn ok(server: &Server, args: &[&str]) -> String {
    let (success, out, err) = cli(server, args);
    assert!(success, "shoal {args:?} failed:\n{out}\n{err}");
    out
}

#[test]
fn base_sql_tables_rows() {
    let (_dir, server) = Server::start(Mode::Memory, &[]);
    let id = ok(&server, &["base", "create", "--name", "todo"]).trim().to_string();
    assert_eq!(id.len(), 36, "{id}");
    let list = ok(&server, &["base", "list"]);
    assert!(list.contains(&id) && list.contains("todo"), "{list}");
    let list: Value =
        serde_json::from_str(&ok(&server, &["base", "list", "--json"])).expect("json");
    assert_eq!(list[0]["id"], id.as_str());

    let out = ok(
        &server,
        &["sql", &id, "CREATE TABLE items (id INTEGER PRIMARY KEY, title TEXT, n INTEGER)"],
    );
    assert!(out.contains("row(s) affected"), "{out}");
    ok(
        &server,
        &[
            "sql",
            &id,
            "INSERT INTO items (title, n) VALUES (?, ?)",
            "--param",
            "milk",
            "--param",
            "2",
        ],
    );
    ok(
        &server,
        &["sql", &id, "INSERT INTO items (title, n) VALUES (?, ?)", "-p", "\"42\"", "-p", "null"],
    );
    let out = ok(&server, &["sql", &id, "SELECT title, n FROM items ORDER BY id"]);
    assert!(out.contains("milk") && out.contains("NULL") && out.contains("(2 rows)"), "{out}");
    let out: Value = serde_json::from_str(&ok(
        &server,
        &["sql", &id, "SELECT title, n FROM items ORDER BY id", "--json"],
    ))
    .expect("json");
    assert_eq!(out["rows"], serde_json::json!([["milk", 2], ["42", null]]));

    let out = ok(&server, &["tables", &id]);
    assert!(out.contains("items") && out.contains("title") && out.contains("INTEGER"), "{out}");

    let out = ok(
        &server,
        &["rows", "insert", &id, "items", r#"[{"title": "eggs", "n": 12}, {"title": "tea"}]"#],
    );
    assert!(out.contains("[3, 4]"), "{out}");
    ok(&server, &["rows", "update", &id, "items", "4", r#"{"n": 1}"#]);
    let row: Value =
        serde_json::from_str(&ok(&server, &["rows", "get", &id, "items", "4", "--json"]))
            .expect("json");
    assert_eq!(row["n"], 1);
    ok(&server, &["rows", "delete", &id, "items", "1"]);
    let out = ok(&server, &["rows", "list", &id, "items", "--order-by", "n", "--desc"]);
    assert!(out.contains("eggs") && !out.contains("milk") && out.contains("(3 rows)"), "{out}");

    // Failures exit non-zero with the server's message.
    let (success, _, err) = cli(&server, &["sql", &id, "SELEC nonsense"]);
    assert!(!success && err.contains("error:") && err.contains("syntax"), "{err}");
    let (success, _, err) =
        cli(&server, &["sql", &id, "INSERT INTO items (title) VALUES (random())"]);
    assert!(!success && err.contains("parameter"), "{err}");
    let (success, _, err) = cli(&server, &["base", "drop", "00000000-0000-4000-8000-000000000000"]);
    assert!(!success && err.contains("no base"), "{err}");
    let (success, _, err) = cli(&server, &["base", "drop", "not-a-uuid"]);
    assert!(!success && err.contains("UUID"), "{err}");

    ok(&server, &["base", "drop", &id]);
    assert!(!ok(&server, &["base", "list"]).contains(&id));
}

#[test]
fn wrong_token_and_unreachable_server() {
    let (_dir, server) = Server::start(Mode::Memory, &[]);
    let out = Command::new(bin())
        .args(["base", "list", "--endpoint", &server.url, "--token", "wrong"])
        .stdin(Stdio::null())
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid bearer token"));
    let out = Command::new(bin())
        .args(["base", "list", "--endpoint", "http://127.0.0.1:9", "--token", "x"])
        .args(["--retry-deadline", "1s"])
        .stdin(Stdio::null())
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach http://127.0.0.1:9"));
}

#[test]
fn token_is_read_from_the_default_data_dir() {
    let (dir, server) = Server::start(Mode::Standalone, &[]);
    // The harness keeps data in DIR/data; a user runs the CLI beside ./shoal-data.
    let cwd = dir.path().join("cwd");
    std::fs::create_dir_all(cwd.join("shoal-data")).expect("mkdir");
    std::fs::copy(
        dir.path().join("data").join("admin.token"),
        cwd.join("shoal-data").join("admin.token"),
    )
    .expect("copy");
    let out = Command::new(bin())
        .args(["base", "create", "--endpoint", &server.url])
        .current_dir(&cwd)
        .env_remove("SHOAL_TOKEN")
        .stdin(Stdio::null())
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn token_is_read_from_a_data_dir_named_anywhere() {
    let (dir, server) = Server::start(Mode::Standalone, &[]);
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).expect("mkdir");
    let data = dir.path().join("data");
    let run = |env: Option<&std::path::Path>, extra: &[&std::ffi::OsStr]| {
        let mut cmd = Command::new(bin());
        cmd.args(["base", "list", "--endpoint", &server.url])
            .args(extra)
            .current_dir(&elsewhere)
            .env_remove("SHOAL_TOKEN")
            .env_remove("SHOAL_DATA_DIR");
        if let Some(dir) = env {
            cmd.env("SHOAL_DATA_DIR", dir);
        }
        cmd.stdin(Stdio::null()).output().expect("run")
    };
    let flag = run(None, &["--data-dir".as_ref(), data.as_os_str()]);
    assert!(flag.status.success(), "{}", String::from_utf8_lossy(&flag.stderr));
    let env = run(Some(&data), &[]);
    assert!(env.status.success(), "{}", String::from_utf8_lossy(&env.stderr));
    // Without it, from another folder, there is no token.
    let none = run(None, &[]);
    assert!(!none.status.success());
    assert!(String::from_utf8_lossy(&none.stderr).contains("token"), "{none:?}");
}

#[test]
fn a_second_process_on_the_same_data_dir_is_refused() {
    let (dir, server) = Server::start(Mode::Standalone, &[]);
    let data = dir.path().join("data");
    for command in ["serve", "node"] {
        let mut cmd = Command::new(bin());
        cmd.arg(command).arg("--data-dir").arg(&data).args(["--listen", "127.0.0.1:0"]);
        if command == "node" {
            cmd.args(["--node-id", "standalone", "--admin-token", "t"]);
        }
        let out = cmd.env_remove("SHOAL_ADMIN_TOKEN").stdin(Stdio::null()).output().expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "a second {command} started on a data dir in use");
        assert!(err.contains("another shoal process is using"), "{command}: {err}");
        assert!(!String::from_utf8_lossy(&out.stdout).contains("is serving"));
    }
    // The first one goes on.
    ok(&server, &["base", "list"]);
}

#[test]
fn bench_reports_and_cleans_up() {
    let (_dir, server) = Server::start(Mode::Standalone, &[]);
    for workload in ["write", "read", "mixed"] {
        let out = ok(
            &server,
            &[
                "bench",
                "--concurrency",
                "4",
                "--duration",
                "1s",
                "--workload",
                workload,
                "--rows",
                "50",
                "--json",
            ],
        );
        let r: Value = serde_json::from_str(out.trim()).expect("bench json");
        assert_eq!(r["workload"], workload);
        assert_eq!(r["errors"], 0, "{r}");
        assert!(r["ops"].as_u64().expect("ops") > 0, "{r}");
        assert!(
            r["latency_ms"]["p99"].as_f64().expect("p99")
                >= r["latency_ms"]["p50"].as_f64().expect("p50")
        );
    }
    let out = ok(&server, &["bench", "--concurrency", "2", "--duration", "1s"]);
    assert!(out.contains("ops/s") && out.contains("p99"), "{out}");
    // Bench bases are dropped afterwards.
    let list: Value =
        serde_json::from_str(&ok(&server, &["base", "list", "--json"])).expect("json");
    assert_eq!(list, serde_json::json!([]));
}

#[test]
fn a_reader_that_goes_away_ends_output_quietly() {
    use std::os::unix::process::ExitStatusExt as _;
    let (_dir, server) = Server::start(Mode::Memory, &[]);
    ok(&server, &["base", "create", "--name", "one"]);
    // The reading end of stdout is closed before the command prints: its
    // write fails with EPIPE (Rust ignores SIGPIPE).
    let mut child = Command::new(bin())
        .args(["base", "list"])
        .env("SHOAL_ENDPOINT", &server.url)
        .env("SHOAL_TOKEN", &server.token)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(141), "{:?} {stderr}", out.status.signal());
}
