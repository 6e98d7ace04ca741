//! The retry rules against a scripted HTTP server: what is sent again, to
//! where, and with which idempotency key.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use shoal_client::{Client, Options};
use shoal_types::api::Statement;
use shoal_types::{BaseId, Error};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the scripted server does with one request.
#[derive(Clone, Debug)]
enum Reply {
    /// Reads the request, then closes the connection without answering.
    Hang,
    /// Answers with this status and JSON body.
    Json(u16, serde_json::Value),
}

/// One request the server saw: its request line and headers, lower-cased.
#[derive(Clone, Debug)]
struct Seen {
    line: String,
    headers: Vec<(String, String)>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// A server on a free port that answers request number `n` with
/// `script(n)` and records what it saw.
async fn scripted(
    script: impl Fn(usize) -> Reply + Send + Sync + 'static,
) -> (String, Arc<Mutex<Vec<Seen>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let script = Arc::new(script);
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            let (script, log) = (script.clone(), log.clone());
            tokio::spawn(serve(conn, script, log));
        }
    });
    (url, seen)
}

async fn serve(
    mut conn: TcpStream,
    script: Arc<impl Fn(usize) -> Reply + Send + Sync>,
    log: Arc<Mutex<Vec<Seen>>>,
) {
    loop {
        let Some(seen) = read_request(&mut conn).await else { return };
        let n = {
            let mut log = log.lock().expect("lock");
            log.push(seen);
            log.len() - 1
        };
        match script(n) {
            Reply::Hang => return,
            Reply::Json(status, body) => {
                let body = body.to_string();
                let head = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                    body.len()
                );
                if conn.write_all(format!("{head}{body}").as_bytes()).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Reads one request (head and a `content-length` body).
async fn read_request(conn: &mut TcpStream) -> Option<Seen> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = conn.read(&mut chunk).await.ok().filter(|n| *n > 0)?;
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.lines();
    let line = lines.next()?.to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = conn.read(&mut chunk).await.ok().filter(|n| *n > 0)?;
        buf.extend_from_slice(&chunk[..n]);
    }
    Some(Seen { line, headers })
}

/// A URL nothing listens on.
async fn dead_url() -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    format!("http://{}", l.local_addr().expect("addr"))
}

fn options(keys: bool) -> Options {
    Options {
        retry_deadline: Duration::from_secs(2),
        backoff_min: Duration::from_millis(10),
        backoff_max: Duration::from_millis(50),
        idempotency_keys: keys,
        // The scripted server has no location route worth asking.
        follow_leaders: false,
        ..Options::default()
    }
}

fn insert() -> Vec<Statement> {
    vec![Statement { sql: "INSERT INTO t VALUES (1)".into(), params: Default::default() }]
}

fn executed() -> serde_json::Value {
    json!({"results": [{"rows_affected": 1, "last_insert_rowid": 1}], "index": 7})
}

#[tokio::test]
async fn a_keyed_write_is_retried_after_a_lost_answer_with_the_same_key() {
    let (url, seen) =
        scripted(|n| if n < 2 { Reply::Hang } else { Reply::Json(200, executed()) }).await;
    let client = Client::with_options(&[url], None, options(true)).expect("client");
    client.execute(BaseId::random(), insert(), true).await.expect("the third attempt answers");
    let seen = seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 3, "{seen:?}");
    let keys: Vec<Option<&str>> = seen.iter().map(|s| s.header("idempotency-key")).collect();
    assert!(keys[0].is_some(), "{seen:?}");
    assert!(keys.iter().all(|k| *k == keys[0]), "one key for every attempt: {keys:?}");
}

#[tokio::test]
async fn every_call_gets_a_fresh_key_and_a_callers_key_is_sent_as_given() {
    let (url, seen) = scripted(|_| Reply::Json(200, executed())).await;
    let client = Client::with_options(&[url], None, options(true)).expect("client");
    client.execute(BaseId::random(), insert(), true).await.expect("first");
    client.execute(BaseId::random(), insert(), true).await.expect("second");
    client
        .with_idempotency_key("my-key-1")
        .expect("a valid key")
        .execute(BaseId::random(), insert(), true)
        .await
        .expect("third");
    // Reads carry no key.
    let _ = client.query(BaseId::random(), "SELECT 1", Default::default()).await;
    let seen = seen.lock().expect("lock").clone();
    let keys: Vec<Option<&str>> = seen.iter().map(|s| s.header("idempotency-key")).collect();
    assert_eq!(keys.len(), 4, "{seen:?}");
    assert!(keys[0].is_some() && keys[1].is_some() && keys[0] != keys[1], "{keys:?}");
    assert_eq!(keys[2], Some("my-key-1"));
    assert_eq!(keys[3], None, "{:?}", seen[3]);
    assert!(matches!(client.with_idempotency_key("has space"), Err(Error::InvalidInput(_))));
}

#[tokio::test]
async fn without_keys_a_write_is_not_retried_after_a_lost_answer() {
    let (url, seen) = scripted(|_| Reply::Hang).await;
    let client = Client::with_options(&[url], None, options(false)).expect("client");
    let started = Instant::now();
    let err = client.execute(BaseId::random(), insert(), true).await.expect_err("lost");
    assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
    let seen = seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 1, "sent once: {seen:?}");
    assert_eq!(seen[0].header("idempotency-key"), None);
}

#[tokio::test]
async fn without_keys_a_write_is_not_retried_after_a_passing_error() {
    let (url, seen) = scripted(|_| {
        Reply::Json(503, json!({"error": {"code": "unavailable", "message": "electing"}}))
    })
    .await;
    let client =
        Client::with_options(std::slice::from_ref(&url), None, options(false)).expect("client");
    let err = client.execute(BaseId::random(), insert(), true).await.expect_err("503");
    assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
    assert_eq!(seen.lock().expect("lock").len(), 1);

    // With a key it is retried until the deadline, then the error surfaces.
    let client = Client::with_options(&[url], None, options(true)).expect("client");
    let started = Instant::now();
    let err = client.execute(BaseId::random(), insert(), true).await.expect_err("503");
    assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
    assert!(seen.lock().expect("lock").len() > 3);
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(1500) && took < Duration::from_secs(4), "{took:?}");
}

#[tokio::test]
async fn reads_are_retried_after_a_lost_answer() {
    let (url, seen) = scripted(|n| {
        if n == 0 {
            Reply::Hang
        } else {
            Reply::Json(200, json!({"columns": ["1"], "types": [""], "rows": [[1]]}))
        }
    })
    .await;
    let client = Client::with_options(&[url], None, options(false)).expect("client");
    let r = client.query(BaseId::random(), "SELECT 1", Default::default()).await.expect("query");
    assert_eq!(r.rows, vec![vec![json!(1)]]);
    assert_eq!(seen.lock().expect("lock").len(), 2);
}

#[tokio::test]
async fn deterministic_errors_come_back_at_once() {
    let (url, seen) = scripted(|_| {
        Reply::Json(400, json!({"error": {"code": "invalid_sql", "message": "near \"SELEC\""}}))
    })
    .await;
    let client = Client::with_options(&[url], None, options(true)).expect("client");
    let err = client.query(BaseId::random(), "SELEC 1", Default::default()).await.expect_err("bad");
    assert!(matches!(err, Error::InvalidSql(_)), "{err:?}");
    let err = client.execute(BaseId::random(), insert(), true).await.expect_err("bad");
    assert!(matches!(err, Error::InvalidSql(_)), "{err:?}");
    assert_eq!(seen.lock().expect("lock").len(), 2, "each sent once");
}

#[tokio::test]
async fn a_dead_endpoint_hands_over_to_the_next_even_for_writes_without_keys() {
    let (url, seen) = scripted(|_| Reply::Json(200, executed())).await;
    let dead = dead_url().await;
    let client =
        Client::with_options(&[dead.clone(), url.clone()], None, options(false)).expect("client");
    assert_eq!(client.endpoint(), dead);
    client.execute(BaseId::random(), insert(), true).await.expect("via the second endpoint");
    assert_eq!(client.endpoint(), url);
    assert_eq!(seen.lock().expect("lock").len(), 1);
}

#[tokio::test]
async fn a_lone_dead_endpoint_fails_once_the_deadline_passes() {
    let dead = dead_url().await;
    let client = Client::with_options(&[dead], None, options(false)).expect("client");
    let started = Instant::now();
    let err = client.execute(BaseId::random(), insert(), true).await.expect_err("nobody there");
    assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(1500) && took < Duration::from_secs(4), "{took:?}");
}

#[tokio::test]
async fn not_leader_sends_the_retry_to_the_leader_named() {
    let (leader, at_leader) = scripted(|_| Reply::Json(200, executed())).await;
    let hint = leader.clone();
    let (follower, at_follower) = scripted(move |_| {
        Reply::Json(
            503,
            json!({"error": {"code": "not_leader", "message": "elsewhere", "leader": hint}}),
        )
    })
    .await;
    let opts = Options { follow_leaders: true, ..options(true) };
    let client = Client::with_options(&[follower], None, opts).expect("client");
    client.execute(BaseId::random(), insert(), true).await.expect("via the leader");
    let at_follower = at_follower.lock().expect("lock").clone();
    let at_leader = at_leader.lock().expect("lock").clone();
    // The follower was asked for the location (it has none) and then sent
    // the write; the leader got the retry with the same key.
    let writes: Vec<&Seen> = at_follower.iter().filter(|s| s.line.contains("/execute")).collect();
    assert_eq!(writes.len(), 1, "{at_follower:?}");
    assert_eq!(at_leader.len(), 1, "{at_leader:?}");
    assert_eq!(writes[0].header("idempotency-key"), at_leader[0].header("idempotency-key"));
}

#[tokio::test]
async fn an_endpoint_that_cannot_serve_now_hands_over_to_the_next() {
    let (busy, at_busy) = scripted(|_| {
        Reply::Json(503, json!({"error": {"code": "unavailable", "message": "starting"}}))
    })
    .await;
    let (ok, at_ok) = scripted(|_| Reply::Json(200, json!({"status": "ok", "version": "0"}))).await;
    let client = Client::with_options(&[busy, ok.clone()], None, options(false)).expect("client");
    client.health().await.expect("the second endpoint answers");
    assert_eq!(at_busy.lock().expect("lock").len(), 1);
    assert_eq!(at_ok.lock().expect("lock").len(), 1);
    assert_eq!(client.endpoint(), ok);
}
