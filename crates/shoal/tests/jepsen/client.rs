//! The clients of the linearizability test: each runs reads, writes and
//! compare-and-sets on a few keys through the node it is pinned to, and
//! records every operation with its invocation and completion times and
//! how it ended.
//!
//! A key is a row of `kv(k TEXT PRIMARY KEY, v INTEGER)` in one of the
//! test's bases:
//! - write: `INSERT INTO kv .. ON CONFLICT(k) DO UPDATE SET v = excluded.v`;
//! - compare-and-set: `UPDATE kv SET v = ? WHERE k = ? AND v = ?`, swapped
//!   when `rows_affected` is 1;
//! - read: `SELECT v FROM kv WHERE k = ?` at a consistency level.
//!
//! How an attempt ended decides what may have happened (docs/api.md,
//! docs/replication.md):
//! - 2xx: done;
//! - no connection made, `421 misdirected`, `503 not_leader` ("nothing was
//!   proposed") and other 4xx answers: nothing was applied;
//! - a timeout, a reset, `503 unavailable` (which also reports proposals
//!   whose outcome is unknown, and forwards to an unreachable leader) and
//!   other 5xx: it may have applied, now or later.
//!
//! Every write carries its own `Idempotency-Key`. Half the writes (chosen
//! by the seed) try again after an ambiguous attempt (bounded): a later
//! answer is the first answer of the write, which then took effect exactly
//! once between its invocation and that answer. The other half stop at the
//! first ambiguous attempt and are unknown. A write with no answer in time
//! is unknown; one whose every attempt was refused failed.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;
use serde_json::{Value, json};
use shoal_check::{Op, Operation, Outcome};

use crate::common::cluster::TOKEN;

/// One HTTP request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(4);
/// How long one operation is retried before it is given up.
pub const OP_WITHIN: Duration = Duration::from_secs(8);

/// The current URL of every node (a restart may bind a new port).
#[derive(Clone, Default)]
pub struct Urls(Arc<RwLock<BTreeMap<String, String>>>);

impl Urls {
    pub fn set(&self, node: &str, url: &str) {
        self.0.write().expect("urls").insert(node.to_string(), url.to_string());
    }
    pub fn get(&self, node: &str) -> String {
        self.0.read().expect("urls")[node].clone()
    }
    pub fn all(&self) -> Vec<(String, String)> {
        self.0.read().expect("urls").iter().map(|(n, u)| (n.clone(), u.clone())).collect()
    }
}

/// A raw HTTP call.
pub async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    body: Option<&Value>,
    headers: &[(&str, &str)],
) -> Result<(StatusCode, Value), reqwest::Error> {
    let mut r = http.request(method, url).bearer_auth(TOKEN);
    if let Some(b) = body {
        r = r.json(b);
    }
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let resp = r.send().await?;
    let status = resp.status();
    let text = resp.text().await?;
    Ok((status, serde_json::from_str(&text).unwrap_or(Value::String(text))))
}

/// POSTs `body` to `url` until the answer's status is one `done` accepts,
/// `pause` apart; the test fails with `what` and the last answer if none
/// has by `deadline`. Returns when the accepted call was sent, and its body.
pub async fn post_until(
    http: &reqwest::Client,
    url: &str,
    body: &Value,
    done: impl Fn(StatusCode) -> bool,
    (deadline, pause): (Instant, Duration),
    what: &str,
) -> (Instant, Value) {
    loop {
        let sent = Instant::now();
        match call(http, reqwest::Method::POST, url, Some(body), &[]).await {
            Ok((s, v)) if done(s) => return (sent, v),
            other => assert!(Instant::now() < deadline, "{what}: {other:?}"),
        }
        tokio::time::sleep(pause).await;
    }
}

/// A read at a weaker level, sent with `X-Shoal-No-Forward` so that the
/// node that answers is known: a follower asked for a `leader` read answers
/// `307` at the leader, which is asked in turn (once). Returns the answer
/// and the URL of the node that gave it.
async fn weak_call(
    http: &reqwest::Client,
    url: &str,
    path: &str,
    body: &Value,
) -> (Result<(StatusCode, Value), reqwest::Error>, String) {
    let mut at = url.to_string();
    for _ in 0..2 {
        let sent = http
            .post(format!("{at}{path}"))
            .bearer_auth(TOKEN)
            .header("x-shoal-no-forward", "1")
            .json(body)
            .send()
            .await;
        let resp = match sent {
            Ok(r) => r,
            Err(e) => return (Err(e), at),
        };
        let status = resp.status();
        let location =
            resp.headers().get("location").and_then(|l| l.to_str().ok()).map(String::from);
        if status == StatusCode::TEMPORARY_REDIRECT
            && let Some(l) = location.and_then(|l| l.strip_suffix(path).map(String::from))
        {
            at = l;
            continue;
        }
        return match resp.text().await {
            Ok(text) => {
                (Ok((status, serde_json::from_str(&text).unwrap_or(Value::String(text)))), at)
            }
            Err(e) => (Err(e), at),
        };
    }
    // Redirected twice: leadership is moving; an ambiguous-free retry.
    (Ok((StatusCode::SERVICE_UNAVAILABLE, json!({"error": {"code": "not_leader"}}))), at)
}

/// How one attempt ended.
enum Attempt {
    Done(Value),
    /// Certainly not applied; `Some(url)`: the node to try instead.
    NotApplied(Option<String>),
    /// May have applied.
    Maybe,
}

fn classify(
    r: Result<(StatusCode, Value), reqwest::Error>,
    surprises: &mut Vec<String>,
) -> Attempt {
    match r {
        Ok((s, v)) if s.is_success() => Attempt::Done(v),
        Ok((StatusCode::MISDIRECTED_REQUEST, v)) => {
            let to =
                v["error"]["replicas"].as_array().and_then(|r| r.first()).and_then(|u| u.as_str());
            Attempt::NotApplied(to.map(String::from))
        }
        Ok((StatusCode::SERVICE_UNAVAILABLE, v)) if v["error"]["code"] == "not_leader" => {
            Attempt::NotApplied(None)
        }
        Ok((s, v)) if s.is_client_error() => {
            surprises.push(format!("{s}: {v}"));
            Attempt::NotApplied(None)
        }
        Ok(_) => Attempt::Maybe,
        Err(e) if e.is_connect() => Attempt::NotApplied(None),
        Err(_) => Attempt::Maybe,
    }
}

/// The kinds of operation, for the summary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Read,
    Write,
    Cas,
}

/// A read outside the linearizable path, kept apart from the checked history.
#[derive(Clone, Debug)]
pub struct WeakRead {
    pub level: &'static str,
    pub read: Operation,
    /// The node that answered.
    pub served_by: String,
}

/// What one client recorded.
#[derive(Default)]
pub struct Record {
    pub history: Vec<Operation>,
    pub weak: Vec<WeakRead>,
    /// Answers no operation should get (a 4xx other than 421).
    pub surprises: Vec<String>,
}

/// Settings shared by every client.
#[derive(Clone)]
pub struct Workload {
    pub http: reqwest::Client,
    pub urls: Urls,
    pub bases: Vec<String>,
    pub keys_per_base: usize,
    pub origin: Instant,
    /// No operation starts after this.
    pub until: Instant,
    /// Share of the reads made at `leader` or `none` (not checked).
    pub weak_reads: f64,
}

impl Workload {
    pub fn key_name(&self, base: usize, k: usize) -> String {
        format!("b{base}k{k}")
    }
}

/// One client: pinned to `node`, with its own random choices.
pub struct Client {
    pub id: usize,
    pub node: String,
    pub rng: StdRng,
    pub w: Workload,
    /// The process id in the history: a client whose operation is left
    /// unknown goes on as a new process (the old one may still be running
    /// it), as a checker expects of processes.
    process: u64,
    next_value: i64,
    /// The last value this client saw or wrote per key: its CASes expect it.
    last_seen: BTreeMap<(usize, usize), i64>,
    record: Record,
}

impl Client {
    pub fn new(id: usize, node: &str, seed: u64, w: Workload) -> Client {
        Client {
            id,
            node: node.to_string(),
            rng: StdRng::seed_from_u64(seed),
            w,
            process: id as u64,
            next_value: 0,
            last_seen: BTreeMap::new(),
            record: Record::default(),
        }
    }

    fn now(&self) -> Duration {
        self.w.origin.elapsed()
    }

    /// Runs operations until the workload's end.
    pub async fn run(mut self) -> Record {
        while Instant::now() < self.w.until {
            let base = self.rng.random_range(0..self.w.bases.len());
            let k = self.rng.random_range(0..self.w.keys_per_base);
            let roll: f64 = self.rng.random();
            if roll < 0.45 {
                let weak = self.rng.random_bool(self.w.weak_reads);
                let level = match (weak, self.rng.random_bool(0.5)) {
                    (false, _) => "linearizable",
                    (true, true) => "leader",
                    (true, false) => "none",
                };
                self.read(base, k, level).await;
            } else if roll < 0.75 {
                self.next_value += 1;
                let v = (self.id as i64 + 1) * 1_000_000_000 + self.next_value;
                self.write(base, k, Op::Write { value: v }).await;
            } else {
                self.next_value += 1;
                let to = (self.id as i64 + 1) * 1_000_000_000 + self.next_value;
                let from = self.last_seen.get(&(base, k)).copied().unwrap_or(0);
                self.write(base, k, Op::Cas { from, to, swapped: false }).await;
            }
        }
        self.record
    }

    async fn read(&mut self, base: usize, k: usize, level: &'static str) {
        let key = self.w.key_name(base, k);
        let path = format!("/v1/bases/{}/query", self.w.bases[base]);
        let body =
            json!({"sql": "SELECT v FROM kv WHERE k = ?", "params": [key], "consistency": level});
        let deadline = Instant::now() + OP_WITHIN;
        let mut url = self.w.urls.get(&self.node);
        while Instant::now() < deadline {
            let invoked = self.now();
            let (r, served_by) = if level == "linearizable" {
                let u = format!("{url}{path}");
                (call(&self.w.http, reqwest::Method::POST, &u, Some(&body), &[]).await, url.clone())
            } else {
                weak_call(&self.w.http, &url, &path, &body).await
            };
            let completed = self.now();
            let surprised = self.record.surprises.len();
            let attempt = classify(r, &mut self.record.surprises);
            if let Some(s) = self.record.surprises.get_mut(surprised) {
                s.push_str(&format!(
                    " (read of {key} at {level}, served by {served_by}, [{invoked:?}, {completed:?}])"
                ));
            }
            match attempt {
                Attempt::Done(v) => {
                    let seen = v["rows"].as_array().and_then(|rows| rows.first()).map(|row| {
                        row[0].as_i64().unwrap_or_else(|| panic!("a value that is no integer: {v}"))
                    });
                    let read = Operation {
                        process: self.process,
                        key,
                        invoked,
                        completed: Some(completed),
                        op: Op::Read { seen },
                        outcome: Outcome::Ok,
                    };
                    if level == "linearizable" {
                        if let Some(s) = seen {
                            self.last_seen.insert((base, k), s);
                        }
                        self.record.history.push(read);
                    } else {
                        let served_by = self
                            .w
                            .urls
                            .all()
                            .into_iter()
                            .find(|(_, u)| *u == served_by)
                            .map_or(served_by, |(n, _)| n);
                        self.record.weak.push(WeakRead { level, read, served_by });
                    }
                    return;
                }
                Attempt::NotApplied(Some(other)) => url = other,
                Attempt::NotApplied(None) | Attempt::Maybe => url = self.w.urls.get(&self.node),
            }
            self.pause().await;
        }
        // A read with no answer: it changed nothing and is left out.
    }

    async fn write(&mut self, base: usize, k: usize, op: Op) {
        let key = self.w.key_name(base, k);
        let path = format!("/v1/bases/{}/execute", self.w.bases[base]);
        let statement = match op {
            Op::Write { value } => json!({
                "sql": "INSERT INTO kv (k, v) VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v",
                "params": [key, value]
            }),
            Op::Cas { from, to, .. } => json!({
                "sql": "UPDATE kv SET v = ? WHERE k = ? AND v = ?",
                "params": [to, key, from]
            }),
            Op::Read { .. } => unreachable!("reads are not writes"),
        };
        let body = json!({"statements": [statement]});
        let idempotency = format!("c{}-{}", self.id, self.next_value);
        let headers = [("idempotency-key", idempotency.as_str())];
        // Half the writes are retried with their key after an ambiguous
        // attempt (the idempotent retry); the others end unknown there.
        let retry_ambiguous = self.rng.random_bool(0.5);
        let invoked = self.now();
        let deadline = Instant::now() + OP_WITHIN;
        let mut url = self.w.urls.get(&self.node);
        let mut ambiguous = false;
        let mut answer = None;
        while Instant::now() < deadline {
            let r = call(
                &self.w.http,
                reqwest::Method::POST,
                &format!("{url}{path}"),
                Some(&body),
                &headers,
            )
            .await;
            let surprised = self.record.surprises.len();
            let attempt = classify(r, &mut self.record.surprises);
            if let Some(s) = self.record.surprises.get_mut(surprised) {
                s.push_str(&format!(" (write at {url}, invoked {invoked:?})"));
            }
            match attempt {
                Attempt::Done(v) => {
                    answer = Some(v);
                    break;
                }
                Attempt::NotApplied(Some(other)) => url = other,
                Attempt::NotApplied(None) => url = self.w.urls.get(&self.node),
                Attempt::Maybe => {
                    ambiguous = true;
                    if !retry_ambiguous {
                        break;
                    }
                    url = self.w.urls.get(&self.node);
                }
            }
            self.pause().await;
        }
        let completed = self.now();
        let (op, outcome) = match (answer, op) {
            (Some(v), Op::Cas { from, to, .. }) => {
                let n = v["results"][0]["rows_affected"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("an execute answer without rows_affected: {v}"));
                assert!(n <= 1, "a compare-and-set changed {n} rows: {v}");
                if n == 1 {
                    self.last_seen.insert((base, k), to);
                }
                (Op::Cas { from, to, swapped: n == 1 }, Outcome::Ok)
            }
            (Some(_), Op::Write { value }) => {
                self.last_seen.insert((base, k), value);
                (op, Outcome::Ok)
            }
            (None, _) if ambiguous => (op, Outcome::Unknown),
            (None, _) => (op, Outcome::Failed),
            (Some(_), Op::Read { .. }) => unreachable!("reads are not writes"),
        };
        self.record.history.push(Operation {
            process: self.process,
            key,
            invoked,
            completed: Some(completed),
            op,
            outcome,
        });
        if outcome == Outcome::Unknown {
            self.process += 1000;
        }
    }

    /// A short wait between attempts.
    async fn pause(&mut self) {
        tokio::time::sleep(Duration::from_millis(self.rng.random_range(30..120))).await;
    }
}

/// Operations by kind and outcome, for the summary.
pub fn tally(history: &[Operation]) -> BTreeMap<(Kind, Outcome), usize> {
    let mut t = BTreeMap::new();
    for o in history {
        let kind = match o.op {
            Op::Read { .. } => Kind::Read,
            Op::Write { .. } => Kind::Write,
            Op::Cas { .. } => Kind::Cas,
        };
        *t.entry((kind, o.outcome)).or_default() += 1;
    }
    t
}
