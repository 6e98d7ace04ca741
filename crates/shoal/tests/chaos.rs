//! A randomized fault test: concurrent mixed writes on a three-node cluster
//! while nodes are killed with SIGKILL and restarted. At the end every
//! replica of every base has the same content and every acknowledged write
//! has its effect.
//!
//! The seed fixes the choices (operations, bases, keys, victims, delays),
//! not the interleaving of threads and processes. It is printed at the start
//! and in every failure; replay with
//! `SHOAL_CHAOS_SEED=<seed> cargo test -p shoal --test chaos -- --nocapture`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use common::cluster::{Cluster, TOKEN};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;
use serde_json::{Value, json};

const NODES: [&str; 3] = ["n1", "n2", "n3"];
const BASES: usize = 6;
const WRITERS: usize = 6;
/// How long one operation is retried across nodes before it is abandoned.
const OP_WITHIN: Duration = Duration::from_secs(20);
/// One HTTP request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(8);

/// The current URL of every node (a restart binds a new port).
#[derive(Clone, Default)]
struct Urls(Arc<RwLock<BTreeMap<String, String>>>);

impl Urls {
    fn set(&self, node: &str, url: &str) {
        self.0.write().expect("urls").insert(node.to_string(), url.to_string());
    }
    fn all(&self) -> Vec<String> {
        self.0.read().expect("urls").values().cloned().collect()
    }
}

/// A raw HTTP call to one node.
async fn call(
    http: &reqwest::Client,
    url: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<&Value>,
    no_forward: bool,
) -> Result<(StatusCode, Value), reqwest::Error> {
    let mut r = http.request(method, format!("{url}{path}")).bearer_auth(TOKEN);
    if let Some(b) = body {
        r = r.json(b);
    }
    if no_forward {
        r = r.header("x-shoal-no-forward", "1");
    }
    let resp = r.send().await?;
    let status = resp.status();
    let text = resp.text().await?;
    Ok((status, serde_json::from_str(&text).unwrap_or(Value::String(text))))
}

/// How a write ended.
#[derive(Debug)]
enum Outcome {
    /// 2xx: acknowledged.
    Acked(Value),
    /// 422: refused by a constraint; nothing applied.
    Refused(Value),
    /// No definite answer within the time allowed: it may or may not have applied.
    Unknown,
}

/// A write and the history of its attempts.
struct Submitted {
    outcome: Outcome,
    /// An attempt failed in a way that may have applied it (timeout, reset,
    /// 5xx): a later attempt may find the write already there, and the
    /// ambiguous attempt may still apply later.
    ambiguous: bool,
    /// Answers no write should get (e.g. 404 for a base that exists).
    surprises: Vec<String>,
}

/// Sends a write to random nodes until it gets a definite answer (bounded).
/// Connection refused and 421 are retried as not applied; everything else
/// that is not 2xx or 422 is retried as possibly applied.
async fn submit(
    http: &reqwest::Client,
    urls: &Urls,
    rng: &mut StdRng,
    path: &str,
    body: &Value,
) -> Submitted {
    let deadline = Instant::now() + OP_WITHIN;
    let mut ambiguous = false;
    let mut surprises = Vec::new();
    while Instant::now() < deadline {
        let all = urls.all();
        let url = &all[rng.random_range(0..all.len())];
        match call(http, url, reqwest::Method::POST, path, Some(body), false).await {
            Ok((s, v)) if s.is_success() => {
                return Submitted { outcome: Outcome::Acked(v), ambiguous, surprises };
            }
            Ok((StatusCode::UNPROCESSABLE_ENTITY, v)) => {
                return Submitted { outcome: Outcome::Refused(v), ambiguous, surprises };
            }
            Ok((StatusCode::MISDIRECTED_REQUEST, _)) => {}
            Ok((s, v)) if s.is_client_error() => {
                surprises.push(format!("{s} from {url}: {v}"));
                ambiguous = true;
            }
            Ok(_) => ambiguous = true,
            Err(e) if e.is_connect() => {}
            Err(_) => ambiguous = true,
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(20..120))).await;
    }
    Submitted { outcome: Outcome::Unknown, ambiguous, surprises }
}

/// One key's change in a write: its value before and after (None: absent).
#[derive(Clone, Debug)]
struct Change {
    base: usize,
    key: String,
    before: Option<String>,
    after: Option<String>,
}

/// What the final state must hold for one key.
#[derive(Clone, Debug, PartialEq)]
enum Expect {
    Is(Option<String>),
    /// The last write to the key was not acknowledged: either state.
    Either(Option<String>, Option<String>),
}

/// What one writer learned.
#[derive(Default)]
struct Report {
    expect: BTreeMap<(usize, String), Expect>,
    /// Writes with several keys whose outcome is unknown: all keys before,
    /// or all after.
    atomic: Vec<Vec<Change>>,
    /// Answers that contradict the model, each a full description.
    anomalies: Vec<String>,
    acked: usize,
    refused: usize,
    unknown: usize,
    kinds: BTreeMap<&'static str, usize>,
}

/// The writes one writer chooses from. Every writer has its own keys
/// (`w{writer}-{n}`), so a key's writes are sequential.
struct Writer {
    id: usize,
    seed: u64,
    rng: StdRng,
    bases: Vec<String>,
    /// Keys known present with their value, per base; a key whose write was
    /// ambiguous leaves this set and is never written again.
    live: Vec<BTreeMap<String, String>>,
    next_key: usize,
    next_value: usize,
    report: Report,
}

impl Writer {
    fn new_key(&mut self) -> String {
        self.next_key += 1;
        format!("w{}-{}", self.id, self.next_key)
    }

    fn new_value(&mut self) -> String {
        self.next_value += 1;
        format!("v{}-{}", self.id, self.next_value)
    }

    fn live_key(&mut self, base: usize, not: Option<&str>) -> Option<(String, String)> {
        let keys: Vec<_> =
            self.live[base].iter().filter(|(k, _)| Some(k.as_str()) != not).collect();
        if keys.is_empty() {
            return None;
        }
        let (k, v) = keys[self.rng.random_range(0..keys.len())];
        Some((k.clone(), v.clone()))
    }

    /// Chooses the next write: (kind, statements, changes, must fail).
    fn choose(&mut self) -> (&'static str, usize, Vec<Value>, Vec<Change>, bool) {
        let base = self.rng.random_range(0..BASES);
        let roll = self.rng.random_range(0..100);
        let enough = self.live[base].len() >= 2;
        let insert = |k: &str, v: &str| json!({"sql": "INSERT INTO t (k, v) VALUES (?, ?)", "params": [k, v]});
        let update =
            |k: &str, v: &str| json!({"sql": "UPDATE t SET v = ? WHERE k = ?", "params": [v, k]});
        let delete = |k: &str| json!({"sql": "DELETE FROM t WHERE k = ?", "params": [k]});
        let ch = |key: &str, before: Option<&str>, after: Option<&str>| Change {
            base,
            key: key.to_string(),
            before: before.map(String::from),
            after: after.map(String::from),
        };
        if roll < 30 || !enough {
            let (k, v) = (self.new_key(), self.new_value());
            return ("insert", base, vec![insert(&k, &v)], vec![ch(&k, None, Some(&v))], false);
        }
        if roll < 45 {
            let (k1, v1, k2, v2) =
                (self.new_key(), self.new_value(), self.new_key(), self.new_value());
            return (
                "insert pair",
                base,
                vec![insert(&k1, &v1), insert(&k2, &v2)],
                vec![ch(&k1, None, Some(&v1)), ch(&k2, None, Some(&v2))],
                false,
            );
        }
        let (k, old) = self.live_key(base, None).expect("enough keys");
        if roll < 65 {
            let v = self.new_value();
            return (
                "update",
                base,
                vec![update(&k, &v)],
                vec![ch(&k, Some(&old), Some(&v))],
                false,
            );
        }
        if roll < 75 {
            return ("delete", base, vec![delete(&k)], vec![ch(&k, Some(&old), None)], false);
        }
        let (k2, old2) = self.live_key(base, Some(&k)).expect("enough keys");
        if roll < 87 {
            // Update one key, delete another, insert a third: all or none.
            let (v, k3, v3) = (self.new_value(), self.new_key(), self.new_value());
            return (
                "update+delete+insert",
                base,
                vec![update(&k, &v), delete(&k2), insert(&k3, &v3)],
                vec![
                    ch(&k, Some(&old), Some(&v)),
                    ch(&k2, Some(&old2), None),
                    ch(&k3, None, Some(&v3)),
                ],
                false,
            );
        }
        let (v, k3, v3) = (self.new_value(), self.new_key(), self.new_value());
        if roll < 94 {
            // The second insert repeats a key that exists: the whole
            // transaction is refused, the update and first insert with it.
            return (
                "refused: duplicate key",
                base,
                vec![update(&k, &v), insert(&k3, &v3), insert(&k2, &v3)],
                vec![
                    ch(&k, Some(&old), Some(&old)),
                    ch(&k3, None, None),
                    ch(&k2, Some(&old2), Some(&old2)),
                ],
                true,
            );
        }
        let k4 = self.new_key();
        (
            "refused: not null",
            base,
            vec![
                insert(&k3, &v3),
                delete(&k),
                json!({"sql": "INSERT INTO t (k, v) VALUES (?, NULL)", "params": [k4]}),
            ],
            vec![ch(&k3, None, None), ch(&k, Some(&old), Some(&old)), ch(&k4, None, None)],
            true,
        )
    }

    /// Runs one write and updates the model with its outcome.
    async fn step(&mut self, http: &reqwest::Client, urls: &Urls) {
        let (kind, base, statements, changes, must_fail) = self.choose();
        let path = format!("/v1/bases/{}/execute", self.bases[base]);
        let body = json!({"statements": statements});
        let mut rng = StdRng::seed_from_u64(self.rng.random());
        let s = submit(http, urls, &mut rng, &path, &body).await;
        *self.report.kinds.entry(kind).or_default() += 1;
        let seed = self.seed;
        let what = format!("[seed {seed}] writer {} {kind} on base {base}: {changes:?}", self.id);
        for x in &s.surprises {
            self.report.anomalies.push(format!("{what}: unexpected answer {x}"));
        }
        if must_fail {
            // It can never apply: its keys keep their state whatever happened.
            match &s.outcome {
                Outcome::Refused(v) => {
                    self.report.refused += 1;
                    if v["error"]["code"] != "constraint_violation" {
                        self.report.anomalies.push(format!("{what}: refused with {v}"));
                    }
                }
                Outcome::Acked(v) => {
                    self.report.acked += 1;
                    self.report.anomalies.push(format!(
                        "{what}: a transaction that must be refused was acknowledged: {v}"
                    ));
                }
                Outcome::Unknown => self.report.unknown += 1,
            }
            for c in changes {
                if c.before.is_none() {
                    self.report.expect.insert((c.base, c.key), Expect::Is(None));
                } else if s.ambiguous || matches!(s.outcome, Outcome::Unknown) {
                    // A late copy of it must still find the keys that make
                    // it fail: they are never written again.
                    self.live[c.base].remove(&c.key);
                }
            }
            return;
        }
        match s.outcome {
            Outcome::Acked(v) => {
                self.report.acked += 1;
                if !s.ambiguous {
                    // A first answer: each statement touched exactly its row.
                    let affected: Vec<i64> = v["results"]
                        .as_array()
                        .map(|r| {
                            r.iter().map(|x| x["rows_affected"].as_i64().unwrap_or(-1)).collect()
                        })
                        .unwrap_or_default();
                    if affected.iter().any(|n| *n != 1) || affected.len() != changes.len() {
                        self.report.anomalies.push(format!(
                            "{what}: acknowledged with rows_affected {affected:?}: {v}"
                        ));
                    }
                }
                for c in changes {
                    self.report.expect.insert((c.base, c.key.clone()), Expect::Is(c.after.clone()));
                    let live = &mut self.live[c.base];
                    match (&c.after, s.ambiguous) {
                        (Some(v), false) => {
                            live.insert(c.key, v.clone());
                        }
                        _ => {
                            live.remove(&c.key);
                        }
                    }
                }
            }
            Outcome::Refused(v) => {
                self.report.refused += 1;
                if !s.ambiguous {
                    // Nothing else writes these keys: the model says this
                    // write cannot be refused.
                    self.report
                        .anomalies
                        .push(format!("{what}: refused on its first definite answer: {v}"));
                }
                self.uncertain(changes);
            }
            Outcome::Unknown => {
                self.report.unknown += 1;
                self.uncertain(changes);
            }
        }
    }

    /// A write that may or may not have applied: its keys are left alone from now on.
    fn uncertain(&mut self, changes: Vec<Change>) {
        for c in &changes {
            self.live[c.base].remove(&c.key);
            self.report
                .expect
                .insert((c.base, c.key.clone()), Expect::Either(c.before.clone(), c.after.clone()));
        }
        if changes.len() > 1 {
            self.report.atomic.push(changes);
        }
    }
}

/// Which node leads the base's bucket: the one that serves a leader read
/// itself (the others redirect, which this client does not follow).
async fn leader_of(http: &reqwest::Client, urls: &Urls, base: &str) -> Option<String> {
    let all: Vec<(String, String)> =
        urls.0.read().expect("urls").iter().map(|(n, u)| (n.clone(), u.clone())).collect();
    for (name, url) in all {
        let path = format!("/v1/bases/{base}/checksum?consistency=leader");
        if let Ok((StatusCode::OK, _)) =
            call(http, &url, reqwest::Method::GET, &path, None, true).await
        {
            return Some(name);
        }
    }
    None
}

/// Each node's own view of a base's checksum (no forwarding).
async fn checksums(http: &reqwest::Client, urls: &Urls, base: &str) -> BTreeMap<String, String> {
    let all: Vec<(String, String)> =
        urls.0.read().expect("urls").iter().map(|(n, u)| (n.clone(), u.clone())).collect();
    let mut out = BTreeMap::new();
    for (name, url) in all {
        let path = format!("/v1/bases/{base}/checksum?consistency=none");
        let seen = match call(http, &url, reqwest::Method::GET, &path, None, true).await {
            Ok((StatusCode::OK, v)) => {
                format!("{} (index {})", v["checksum"].as_str().unwrap_or("?"), v["applied_index"])
            }
            Ok((s, v)) => format!("error {s} {v}"),
            Err(e) => format!("error {e}"),
        };
        out.insert(name, seen);
    }
    out
}

/// Which bases have no leader a node can forward to, as a diagnosis.
async fn leaderless(http: &reqwest::Client, urls: &Urls, bases: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for (i, base) in bases.iter().enumerate() {
        if leader_of(http, urls, base).await.is_none() {
            out.push(format!("base {i} ({base})"));
        }
    }
    out
}

/// Whether the cluster is whole: status reports no missing replica and no
/// move in progress, every node serves every base, and every base answers a
/// linearizable read (it has a leader). If not, why not.
async fn healed(
    c: &Cluster,
    http: &reqwest::Client,
    urls: &Urls,
    bases: &[String],
) -> Result<(), String> {
    let via = &c.nodes["n1"];
    let s = shoal_client::Client::new(&via.url, Some(TOKEN.into()))
        .expect("client")
        .cluster_status()
        .await
        .map_err(|e| format!("status: {e}"))?;
    if !s.under_replicated.is_empty()
        || !s.on_dead_nodes.is_empty()
        || !s.moves_in_progress.is_empty()
    {
        return Err(format!(
            "status: under replicated {:?}, on dead nodes {:?}, moves in progress {}",
            s.under_replicated,
            s.on_dead_nodes,
            s.moves_in_progress.len()
        ));
    }
    for (i, base) in bases.iter().enumerate() {
        let sums = checksums(http, urls, base).await;
        if sums.values().any(|v| v.starts_with("error")) {
            return Err(format!("base {i} ({base}) not served everywhere: {sums:?}"));
        }
        let path = format!("/v1/bases/{base}/query");
        let body = json!({"sql": "SELECT count(*) FROM t"});
        match call(http, &via.url, reqwest::Method::POST, &path, Some(&body), false).await {
            Ok((StatusCode::OK, _)) => {}
            other => return Err(format!("base {i} ({base}) linearizable read: {other:?}")),
        }
    }
    Ok(())
}

/// How a killed node comes back: on its old port (a server with a fixed
/// address), on a new one (a rescheduled container), or either, by the seed.
fn restart_mode() -> &'static str {
    match std::env::var("SHOAL_CHAOS_RESTART").as_deref() {
        Err(_) | Ok("mixed") => "mixed",
        Ok("same-port") => "same-port",
        Ok("new-port") => "new-port",
        Ok(other) => panic!("SHOAL_CHAOS_RESTART={other}: expected same-port, new-port or mixed"),
    }
}

/// Every row of a base, read linearizably through any node (bounded retries).
async fn read_all(
    http: &reqwest::Client,
    urls: &Urls,
    base: &str,
    seed: u64,
) -> BTreeMap<String, String> {
    let mut rows = BTreeMap::new();
    let mut after = String::new();
    let path = format!("/v1/bases/{base}/query");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let body = json!({"sql": "SELECT k, v FROM t WHERE k > ? ORDER BY k LIMIT 1000", "params": [after]});
        let mut page = None;
        let mut last = String::new();
        'retry: while Instant::now() < deadline {
            for url in urls.all() {
                match call(http, &url, reqwest::Method::POST, &path, Some(&body), false).await {
                    Ok((StatusCode::OK, v)) => {
                        page = Some(v);
                        break 'retry;
                    }
                    Ok((s, v)) => last = format!("{s} {v}"),
                    Err(e) => last = e.to_string(),
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let page = page.unwrap_or_else(|| panic!("[seed {seed}] cannot read base {base}: {last}"));
        let got = page["rows"].as_array().expect("rows").clone();
        for r in &got {
            let k = r[0].as_str().expect("k").to_string();
            rows.insert(k.clone(), r[1].as_str().expect("v").to_string());
            after = k;
        }
        if got.len() < 1000 {
            return rows;
        }
    }
}

/// Copies the processes' output somewhere that outlives the test, for a failure.
fn keep_logs(c: &Cluster, seed: u64) -> String {
    c.keep_logs("chaos", seed).display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mixed_writes_under_node_kills_keep_replicas_equal_and_lose_no_acknowledged_write() {
    let seed = common::seed::seed("SHOAL_CHAOS_SEED");
    let _guard = common::seed::SeedOnPanic {
        seed,
        test: "chaos test",
        var: "SHOAL_CHAOS_SEED",
        target: "chaos",
    };
    let mode = restart_mode();
    println!(
        "chaos seed {seed}, restarts {mode} (replay: SHOAL_CHAOS_SEED={seed} SHOAL_CHAOS_RESTART={mode} cargo test -p shoal --test chaos)"
    );
    let started = Instant::now();
    let mut rng = StdRng::seed_from_u64(seed);

    let mut c = Cluster::new().await;
    for n in NODES {
        c.start_node(n);
    }
    c.start_monitor(&[]);
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(REQUEST_TIMEOUT)
        .build()
        .expect("http client");
    let urls = Urls::default();
    for (n, p) in &c.nodes {
        urls.set(n, &p.url);
    }
    c.wait_map("3 nodes", Duration::from_secs(30), |m| m.replica_counts().len() == 3).await;

    // Bases in distinct buckets, each with one table.
    let mut bases = Vec::new();
    for id in common::seed::ids_in_distinct_buckets(&mut rng, BASES, seed) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let url = &urls.all()[0];
            let body = json!({"id": id});
            // 409: an earlier attempt created it.
            match call(&http, url, reqwest::Method::POST, "/v1/bases", Some(&body), false).await {
                Ok((s, _)) if s.is_success() || s == StatusCode::CONFLICT => break,
                other => {
                    assert!(Instant::now() < deadline, "[seed {seed}] create base {id}: {other:?}")
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let mut srng = StdRng::seed_from_u64(rng.random());
        let ddl = json!({"statements": [{"sql": "CREATE TABLE IF NOT EXISTS t (k TEXT PRIMARY KEY, v TEXT NOT NULL)"}]});
        let s = submit(&http, &urls, &mut srng, &format!("/v1/bases/{id}/execute"), &ddl).await;
        assert!(
            matches!(s.outcome, Outcome::Acked(_)),
            "[seed {seed}] create table in {id}: {:?}",
            s.outcome
        );
        bases.push(id);
    }
    println!("bases: {bases:?} ({:.1}s)", started.elapsed().as_secs_f64());

    // The load.
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicUsize::new(0));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let mut writer = Writer {
            id: w,
            seed,
            rng: StdRng::seed_from_u64(rng.random()),
            bases: bases.clone(),
            live: vec![BTreeMap::new(); BASES],
            next_key: 0,
            next_value: 0,
            report: Report::default(),
        };
        let (http, urls, stop, acked) = (http.clone(), urls.clone(), stop.clone(), acked.clone());
        writers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let before = writer.report.acked;
                writer.step(&http, &urls).await;
                acked.fetch_add(writer.report.acked - before, Ordering::Relaxed);
            }
            writer.report
        }));
    }

    // The faults: one node down at a time, the cluster whole again before the next.
    let rounds = rng.random_range(4..=6);
    for round in 1..=rounds {
        tokio::time::sleep(Duration::from_millis(rng.random_range(1000..4000))).await;
        let target_leader = rng.random_bool(0.5);
        let base = rng.random_range(0..BASES);
        let random = NODES[rng.random_range(0..NODES.len())].to_string();
        let down = Duration::from_millis(rng.random_range(500..4000));
        let new_port = match mode {
            "same-port" => false,
            "new-port" => true,
            _ => rng.random_bool(0.5),
        };
        let (victim, why) = match target_leader {
            true => match leader_of(&http, &urls, &bases[base]).await {
                Some(n) => (n, format!("leader of base {base}")),
                None => (random, format!("random; base {base} had no leader")),
            },
            false => (random, "random".to_string()),
        };
        let before = acked.load(Ordering::Relaxed);
        c.nodes.get_mut(&victim).expect("victim").kill();
        tokio::time::sleep(down).await;
        let node = c.nodes.get_mut(&victim).expect("victim");
        if new_port {
            node.restart();
        } else {
            node.restart_same_port();
        }
        urls.set(&victim, &node.url);
        let restarted = Instant::now();
        println!(
            "round {round}/{rounds}: SIGKILL {victim} ({why}), down {:.1}s, back on {} port",
            down.as_secs_f64(),
            if new_port { "a new" } else { "its old" },
        );
        let deadline = restarted + Duration::from_secs(60);
        while let Err(why) = healed(&c, &http, &urls, &bases).await {
            assert!(
                Instant::now() < deadline,
                "[seed {seed}] round {round}: the cluster did not heal within 60s of restarting {victim} (all nodes up): {why}; without a leader: {:?}; logs in {}",
                leaderless(&http, &urls, &bases).await,
                keep_logs(&c, seed)
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        println!(
            "round {round}/{rounds}: whole again {:.1}s after restart; {} writes acknowledged since the kill, {} in all",
            restarted.elapsed().as_secs_f64(),
            acked.load(Ordering::Relaxed) - before,
            acked.load(Ordering::Relaxed)
        );
    }
    // Writes go on once everything is up, then stop.
    let before = acked.load(Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked.load(Ordering::Relaxed) < before + 50 {
        assert!(
            Instant::now() < deadline,
            "[seed {seed}] writes stalled after the last restart at {} acknowledged; without a leader: {:?}; logs in {}",
            acked.load(Ordering::Relaxed),
            leaderless(&http, &urls, &bases).await,
            keep_logs(&c, seed)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut report = Report::default();
    for w in writers {
        let r = w.await.unwrap_or_else(|e| panic!("[seed {seed}] writer: {e}"));
        report.expect.extend(r.expect);
        report.atomic.extend(r.atomic);
        report.anomalies.extend(r.anomalies);
        report.acked += r.acked;
        report.refused += r.refused;
        report.unknown += r.unknown;
        for (k, n) in r.kinds {
            *report.kinds.entry(k).or_default() += n;
        }
    }
    println!(
        "load: {} acknowledged, {} refused, {} unknown; {:?} ({:.1}s)",
        report.acked,
        report.refused,
        report.unknown,
        report.kinds,
        started.elapsed().as_secs_f64()
    );

    // All replicas equal.
    let deadline = Instant::now() + Duration::from_secs(90);
    for base in &bases {
        loop {
            let sums = checksums(&http, &urls, base).await;
            let distinct: BTreeSet<&str> =
                sums.values().map(|s| s.split(' ').next().unwrap_or_default()).collect();
            if distinct.len() == 1 && !sums.values().any(|v| v.starts_with("error")) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "[seed {seed}] replicas of base {base} differ: {sums:#?}; logs in {}",
                keep_logs(&c, seed)
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    // Every acknowledged write's effect, read linearizably.
    let mut problems = report.anomalies.clone();
    let mut actual: BTreeMap<(usize, String), String> = BTreeMap::new();
    for (i, base) in bases.iter().enumerate() {
        for (k, v) in read_all(&http, &urls, base, seed).await {
            actual.insert((i, k), v);
        }
    }
    let mut checked = 0;
    for ((b, k), want) in &report.expect {
        let got = actual.get(&(*b, k.clone())).cloned();
        let ok = match want {
            Expect::Is(v) => *v == got,
            Expect::Either(x, y) => *x == got || *y == got,
        };
        checked += 1;
        if !ok {
            problems
                .push(format!("[seed {seed}] base {b} key {k}: expected {want:?}, found {got:?}"));
        }
    }
    for (b, k) in actual.keys() {
        if !report.expect.contains_key(&(*b, k.clone())) {
            problems.push(format!("[seed {seed}] base {b} key {k}: a row no write made"));
        }
    }
    for group in &report.atomic {
        let states: Vec<&str> = group
            .iter()
            .map(|c| {
                let got = actual.get(&(c.base, c.key.clone())).cloned();
                if got == c.after {
                    "after"
                } else if got == c.before {
                    "before"
                } else {
                    "neither"
                }
            })
            .collect();
        if states.iter().collect::<BTreeSet<_>>().len() != 1 {
            problems.push(format!(
                "[seed {seed}] a transaction applied in part: {group:?} found {states:?}"
            ));
        }
    }
    println!(
        "checked {checked} keys and {} unacknowledged transactions; {:.1}s in all",
        report.atomic.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        problems.is_empty(),
        "[seed {seed}] {} problems:\n{}\nlogs in {}",
        problems.len(),
        problems.join("\n"),
        keep_logs(&c, seed)
    );
    assert!(report.acked >= 100, "[seed {seed}] only {} writes acknowledged", report.acked);
}
