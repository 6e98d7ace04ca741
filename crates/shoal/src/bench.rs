//! `shoal bench`: drives a running system with single-row writes and/or
//! point reads from many concurrent clients and reports throughput and
//! latency.
//!
//! The target is Shoal by default (standalone or a cluster): the bench
//! creates its own bases (one per client, up to `--bases`) and drops them
//! afterwards. For comparison on the same machine it can also drive a
//! three-member etcd through its JSON gateway (`--target etcd`) and a
//! dqlite-demo cluster (`--target dqlite`), with the same client code, so
//! the load generator costs each system the same CPU.
//!
//! Routing in a Shoal cluster: every request carries `X-Shoal-No-Forward`,
//! so a follower answers `307` to the bucket's leader instead of forwarding,
//! and a node that holds no replica of the bucket answers `421` with the
//! replicas' URLs. Each client caches, per base, the URL that last answered
//! successfully, so after the first request or two it talks to the leader.

mod http;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use rand::Rng as _;
use serde::Serialize;
use serde_json::{Value, json};
use shoal_types::BaseId;

use self::http::{Connections, Origin, Response, base64};
use crate::ClientArgs;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// Single-row inserts.
    Write,
    /// Point reads by primary key.
    Read,
    /// 80% point reads, 20% single-row inserts.
    Mixed,
    /// Base creation (with --keep, the bases stay).
    Create,
    /// Inserts of --batch rows each through Shoal's rows API
    /// (`/tables/{table}/rows`).
    Append,
    /// Appends of --batch rows each through the SeaTable-compatible API
    /// (`/api-gateway/api/v2/dtables/{uuid}/rows/`, with an API token).
    #[value(name = "seatable-append")]
    #[serde(rename = "seatable-append")]
    SeatableAppend,
}

/// The system under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// Shoal's HTTP API: `/execute` and `/query` on bases the bench creates.
    Shoal,
    /// etcd 3.4's JSON gateway: `/v3/kv/put` and `/v3/kv/range`.
    Etcd,
    /// dqlite-demo's API: `PUT /{key}` and `GET /{key}`.
    Dqlite,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// The system behind --endpoint (which may list several URLs,
    /// comma-separated; clients are spread over them round-robin).
    #[arg(long, value_enum, default_value = "shoal")]
    target: Target,
    /// Concurrent clients.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// How long to run (e.g. 10s).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// What to do.
    #[arg(long, value_enum, default_value = "write")]
    workload: Workload,
    /// How many bases to spread the load over [default: one per client].
    #[arg(long)]
    bases: Option<usize>,
    /// Rows per request of the append workloads.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Rows to load into each base (etcd, dqlite: keys in all) before a read
    /// or mixed run.
    #[arg(long, default_value_t = 1000)]
    rows: usize,
    /// Stop after this many operations, even if --duration has not passed.
    #[arg(long)]
    ops: Option<u64>,
    /// Keep the bases afterwards instead of dropping them.
    #[arg(long)]
    keep: bool,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    client: ClientArgs,
}

/// One run's result.
#[derive(Debug, Serialize)]
struct Report {
    target: Target,
    workload: Workload,
    concurrency: usize,
    bases: usize,
    duration_s: f64,
    ops: u64,
    errors: u64,
    /// Requests sent again after a transient conflict (dqlite only).
    retries: u64,
    ops_per_sec: f64,
    /// Rows written per second (the append workloads: ops x batch).
    #[serde(skip_serializing_if = "Option::is_none")]
    rows_per_sec: Option<f64>,
    latency_ms: Latency,
}

#[derive(Debug, Serialize)]
struct Latency {
    p50: f64,
    p99: f64,
    max: f64,
}

/// Bench rows and values: 100 bytes, like a small record.
const PAYLOAD_LEN: usize = 100;
/// Rows per insert request while loading a base.
const LOAD_BATCH: usize = 500;
/// Redirects and misdirections followed for one request.
const MAX_HOPS: usize = 4;

/// One client: its connections and, for Shoal, where each base is served.
struct Client {
    target: Target,
    conns: Connections,
    /// Where requests go when nothing better is known.
    home: Origin,
    /// Every endpoint given: a client whose home refuses connections moves
    /// to the next one.
    endpoints: Vec<Origin>,
    /// Per base, the URL that last answered it successfully.
    routes: HashMap<BaseId, Origin>,
    payload: String,
    /// This client's number, for distinct etcd and dqlite keys.
    worker: usize,
    /// Writes done, for distinct keys.
    written: u64,
    /// dqlite writes sent again after "database is locked".
    retries: u64,
    /// What the last failed etcd or dqlite request answered.
    last_error: String,
}

impl Client {
    fn new(target: Target, endpoints: Vec<Origin>, worker: usize, token: Option<&str>) -> Client {
        let home = endpoints[worker % endpoints.len()].clone();
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut headers = Vec::new();
        if target == Target::Shoal {
            headers.push(("X-Shoal-No-Forward", "1"));
            if let Some(a) = &auth {
                headers.push(("Authorization", a.as_str()));
            }
        }
        Client {
            target,
            conns: Connections::new(&headers),
            home,
            endpoints,
            routes: HashMap::new(),
            payload: "x".repeat(PAYLOAD_LEN),
            worker,
            written: 0,
            retries: 0,
            last_error: String::new(),
        }
    }

    /// A request about `base` to Shoal, following redirects to the leader
    /// and misdirections to a replica; remembers who answered.
    async fn shoal(
        &mut self,
        base: BaseId,
        method: &str,
        path: &str,
        body: &Value,
    ) -> anyhow::Result<Response> {
        let (body, content_type) = match body {
            Value::Null => (Vec::new(), None),
            b => (serde_json::to_vec(b)?, Some("application/json")),
        };
        let mut origin = self.routes.get(&base).cloned().unwrap_or_else(|| self.home.clone());
        for hop in 0..MAX_HOPS {
            let r = match self.conns.request(&origin, method, path, content_type, &body).await {
                Ok(r) => r,
                // Nothing was sent: a node that is down. Like a client
                // library, go to the next endpoint (it redirects).
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    self.routes.remove(&base);
                    let at = self.endpoints.iter().position(|o| *o == origin).unwrap_or(0);
                    self.home = self.endpoints[(at + 1) % self.endpoints.len()].clone();
                    origin = self.home.clone();
                    continue;
                }
                Err(e) => {
                    return Err(
                        anyhow::Error::new(e).context(format!("{method} {}{path}", origin.url()))
                    );
                }
            };
            match r.status {
                307 | 308 => {
                    let to = r.location.as_deref().context("a redirect without Location")?;
                    origin = Origin::parse(to)?;
                }
                421 => {
                    let err: Value = serde_json::from_slice(&r.body).unwrap_or_default();
                    let replicas: Vec<Origin> = err["error"]["replicas"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|u| Origin::parse(u.as_str()?).ok())
                        .filter(|o| *o != origin)
                        .collect();
                    if replicas.is_empty() {
                        return Ok(r);
                    }
                    origin = replicas[(self.worker + hop) % replicas.len()].clone();
                }
                s => {
                    if (200..300).contains(&s) {
                        self.routes.insert(base, origin);
                    }
                    return Ok(r);
                }
            }
        }
        anyhow::bail!("{method} {path}: more than {MAX_HOPS} redirections")
    }

    /// A Shoal request that must succeed; retries briefly while the
    /// base's bucket is starting (503) or electing.
    async fn shoal_ok(
        &mut self,
        base: BaseId,
        method: &str,
        path: &str,
        body: &Value,
    ) -> anyhow::Result<Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // Leadership may still be settling: a redirect chain is retried too.
            let r = match self.shoal(base, method, path, body).await {
                Ok(r) => r,
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            if (200..300).contains(&r.status) {
                return Ok(serde_json::from_slice(&r.body).unwrap_or_default());
            }
            if r.status < 500 || Instant::now() > deadline {
                anyhow::bail!("{method} {path}: {} {}", r.status, String::from_utf8_lossy(&r.body));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Creates a bench base with its table and `rows` rows.
    async fn create_base(&mut self, name: &str, rows: usize) -> anyhow::Result<BaseId> {
        let id = BaseId::random();
        self.shoal_ok(id, "POST", "/v1/bases", &json!({"id": id, "name": name})).await?;
        let sql = "CREATE TABLE bench (id INTEGER PRIMARY KEY, v TEXT)";
        self.shoal_ok(
            id,
            "POST",
            &format!("/v1/bases/{id}/execute"),
            &json!({"statements": [{"sql": sql}]}),
        )
        .await?;
        let mut left = rows;
        while left > 0 {
            let n = left.min(LOAD_BATCH);
            let batch: Vec<Value> = (0..n).map(|_| json!({"v": self.payload})).collect();
            let path = format!("/v1/bases/{id}/tables/bench/rows");
            self.shoal_ok(id, "POST", &path, &json!({ "rows": batch })).await?;
            left -= n;
        }
        Ok(id)
    }

    /// One single-row write; whether it succeeded.
    async fn write(&mut self, base: Option<BaseId>) -> bool {
        self.written += 1;
        match (self.target, base) {
            (Target::Shoal, Some(base)) => {
                let body = json!({"statements": [
                    {"sql": "INSERT INTO bench (v) VALUES (?)", "params": [self.payload]}
                ]});
                let path = format!("/v1/bases/{base}/execute");
                ok(self.shoal(base, "POST", &path, &body).await)
            }
            (Target::Shoal, None) => false,
            (Target::Etcd, _) => {
                let key = format!("bench/{}/{}", self.worker, self.written);
                self.etcd_put(&key).await
            }
            (Target::Dqlite, _) => {
                let path = format!("/bench-{}-{}", self.worker, self.written);
                self.dqlite_put(&path).await
            }
        }
    }

    /// A dqlite-demo write. The demo runs each request on a connection of
    /// Go's pool, and dqlite answers a write that meets another one's open
    /// transaction with "database is locked" at once (there is no busy
    /// timeout); like an application would, the client tries again after
    /// a random pause (up to 1, 2, 4 ... 32 ms), for up to 5 s, and counts
    /// the retries.
    async fn dqlite_put(&mut self, path: &str) -> bool {
        let give_up = Instant::now() + Duration::from_secs(5);
        let mut backoff_ms = 1u64;
        loop {
            let r =
                self.conns.request(&self.home, "PUT", path, None, self.payload.as_bytes()).await;
            match r {
                Ok(r) if r.status == 200 && r.body.starts_with(b"Error: database is locked") => {
                    if Instant::now() > give_up {
                        self.last_error = "database is locked, for 5 s".into();
                        return false;
                    }
                    self.retries += 1;
                    let ms = rand::rng().random_range(1..=backoff_ms);
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    backoff_ms = (backoff_ms * 2).min(32);
                }
                r => {
                    let ok = dqlite_ok(&r);
                    if !ok {
                        self.last_error = match r {
                            Ok(r) => String::from_utf8_lossy(&r.body).trim().to_string(),
                            Err(e) => e.to_string(),
                        };
                    }
                    return ok;
                }
            }
        }
    }

    async fn etcd_put(&mut self, key: &str) -> bool {
        let body = json!({"key": base64(key.as_bytes()), "value": base64(self.payload.as_bytes())});
        let body = serde_json::to_vec(&body).unwrap_or_default();
        let r = self
            .conns
            .request(&self.home, "POST", "/v3/kv/put", Some("application/json"), &body)
            .await;
        matches!(r, Ok(r) if r.status == 200)
    }

    /// One point read of row or key `key` (1-based); whether it succeeded
    /// and found the row.
    async fn read(&mut self, base: Option<BaseId>, key: usize) -> bool {
        match (self.target, base) {
            (Target::Shoal, Some(base)) => {
                let body = json!({"sql": "SELECT v FROM bench WHERE id = ?", "params": [key]});
                let path = format!("/v1/bases/{base}/query");
                ok(self.shoal(base, "POST", &path, &body).await)
            }
            (Target::Shoal, None) => false,
            (Target::Etcd, _) => {
                let body = json!({"key": base64(format!("bench/r/{key}").as_bytes())});
                let body = serde_json::to_vec(&body).unwrap_or_default();
                let r = self
                    .conns
                    .request(&self.home, "POST", "/v3/kv/range", Some("application/json"), &body)
                    .await;
                matches!(r, Ok(r) if r.status == 200 && contains(&r.body, b"\"kvs\""))
            }
            (Target::Dqlite, _) => {
                let path = format!("/r-{key}");
                dqlite_ok(&self.conns.request(&self.home, "GET", &path, None, &[]).await)
            }
        }
    }

    /// Stores key `key` for reads (etcd, dqlite).
    async fn load(&mut self, key: usize) -> bool {
        match self.target {
            Target::Shoal => false,
            Target::Etcd => self.etcd_put(&format!("bench/r/{key}")).await,
            Target::Dqlite => self.dqlite_put(&format!("/r-{key}")).await,
        }
    }

    /// One insert of `batch` rows through Shoal's rows API.
    async fn append(&mut self, base: Option<BaseId>, batch: usize) -> bool {
        let Some(base) = base else { return false };
        let rows: Vec<Value> = (0..batch).map(|_| json!({"v": self.payload})).collect();
        let path = format!("/v1/bases/{base}/tables/bench/rows");
        ok(self.shoal(base, "POST", &path, &json!({ "rows": rows })).await)
    }

    /// One append of `batch` rows through the SeaTable-compatible API.
    async fn seatable_append(&mut self, base: Option<BaseId>, batch: usize) -> bool {
        let Some(base) = base else { return false };
        let rows: Vec<Value> = (0..batch).map(|_| json!({"v": self.payload})).collect();
        let path = format!("/api-gateway/api/v2/dtables/{base}/rows/");
        let body = json!({"table_name": "stbench", "rows": rows});
        ok(self.shoal(base, "POST", &path, &body).await)
    }

    /// Makes `base` ready for the SeaTable API: an API token, an access
    /// token for it, and the `bench` table; returns the access token.
    async fn seatable_setup(&mut self, base: BaseId) -> anyhow::Result<String> {
        let path = format!("/v1/bases/{base}/api-tokens");
        let token = self.shoal_ok(base, "POST", &path, &json!({})).await?;
        let token = token["api_token"].as_str().context("no api_token")?.to_string();
        let origin = self.routes.get(&base).cloned().unwrap_or_else(|| self.home.clone());
        let auth = format!("Token {token}");
        let mut conns = Connections::new(&[("Authorization", auth.as_str())]);
        let r =
            conns.request(&origin, "GET", "/api/v2.1/dtable/app-access-token/", None, &[]).await?;
        let v: Value = serde_json::from_slice(&r.body).unwrap_or_default();
        let access = v["access_token"]
            .as_str()
            .with_context(|| format!("no access token: {}", String::from_utf8_lossy(&r.body)))?
            .to_string();
        let admin = self.use_access_token(&access);
        let table = json!({"table_name": "stbench", "columns": [{"column_name": "v", "column_type": "text"}]});
        let made = self
            .shoal_ok(base, "POST", &format!("/api-gateway/api/v2/dtables/{base}/tables/"), &table)
            .await;
        self.conns = admin;
        made?;
        Ok(access)
    }

    /// From now on, talks to the SeaTable API with `access`; returns the
    /// connections it used until now.
    fn use_access_token(&mut self, access: &str) -> Connections {
        let auth = format!("Token {access}");
        let conns =
            Connections::new(&[("X-Shoal-No-Forward", "1"), ("Authorization", auth.as_str())]);
        std::mem::replace(&mut self.conns, conns)
    }

    /// Creates one base (the create workload).
    async fn create(&mut self) -> bool {
        let id = BaseId::random();
        let body = json!({"id": id, "name": format!("bench-create-{}", self.worker)});
        ok(self.shoal(id, "POST", "/v1/bases", &body).await)
    }
}

fn ok(r: anyhow::Result<Response>) -> bool {
    matches!(r, Ok(r) if (200..300).contains(&r.status))
}

/// dqlite-demo answers 200 to everything and reports failures in the body.
fn dqlite_ok(r: &std::io::Result<Response>) -> bool {
    matches!(r, Ok(r) if r.status == 200 && !r.body.starts_with(b"Error"))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The URLs of --endpoint.
fn endpoints(list: &str) -> anyhow::Result<Vec<Origin>> {
    let out: Vec<Origin> = list
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(Origin::parse)
        .collect::<anyhow::Result<_>>()?;
    if out.is_empty() {
        anyhow::bail!("--endpoint names no URL");
    }
    Ok(out)
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.concurrency == 0 {
        anyhow::bail!("--concurrency must be at least 1");
    }
    if args.target != Target::Shoal && args.workload == Workload::Create {
        anyhow::bail!("--workload create needs --target shoal");
    }
    let endpoints = endpoints(&args.client.endpoint)?;
    let token = args.client.admin_token();
    let mut clients: Vec<Client> = (0..args.concurrency)
        .map(|w| Client::new(args.target, endpoints.clone(), w, token.as_deref()))
        .collect();
    if args.target != Target::Shoal
        && matches!(args.workload, Workload::Append | Workload::SeatableAppend)
    {
        anyhow::bail!("the append workloads need --target shoal");
    }
    if args.batch == 0 || args.batch > 1000 {
        anyhow::bail!("--batch must be between 1 and 1000");
    }
    let rows = if matches!(
        args.workload,
        Workload::Write | Workload::Create | Workload::Append | Workload::SeatableAppend
    ) {
        0
    } else {
        args.rows.max(1)
    };

    // Set up: Shoal bases (created in turn by the clients, which learn where
    // each one is served), or the keys that reads will find.
    let mut bases = Vec::new();
    if args.target == Target::Shoal && args.workload != Workload::Create {
        let n_bases = args.bases.unwrap_or(args.concurrency).max(1);
        let mut routes = HashMap::new();
        for i in 0..n_bases {
            let client = &mut clients[i % args.concurrency];
            let id = client
                .create_base(&format!("bench-{i}"), rows)
                .await
                .with_context(|| format!("cannot create a bench base on {}", client.home.url()))?;
            if let Some(o) = client.routes.get(&id) {
                routes.insert(id, o.clone());
            }
            bases.push(id);
        }
        for c in &mut clients {
            c.routes.clone_from(&routes);
        }
        if args.workload == Workload::SeatableAppend {
            let mut access = Vec::with_capacity(bases.len());
            for (i, id) in bases.iter().enumerate() {
                let client = &mut clients[i % args.concurrency];
                access.push(
                    client
                        .seatable_setup(*id)
                        .await
                        .with_context(|| format!("cannot set base {id} up for the SeaTable API"))?,
                );
            }
            for (w, c) in clients.iter_mut().enumerate() {
                drop(c.use_access_token(&access[w % access.len()]));
            }
        }
    } else if args.target != Target::Shoal && rows > 0 {
        let next = Arc::new(AtomicU64::new(1));
        let mut loads = Vec::new();
        for mut c in clients.drain(..) {
            let next = next.clone();
            loads.push(tokio::spawn(async move {
                loop {
                    let key = next.fetch_add(1, Ordering::Relaxed) as usize;
                    if key > rows {
                        return Ok(c);
                    }
                    if !c.load(key).await {
                        anyhow::bail!(
                            "cannot load key {key} into {}: {}",
                            c.home.url(),
                            c.last_error
                        );
                    }
                }
            }));
        }
        for l in loads {
            let mut c = l.await??;
            c.retries = 0;
            clients.push(c);
        }
    }

    let start = Instant::now();
    let deadline = start + args.duration;
    let started = Arc::new(AtomicU64::new(0));
    // A bar over the run's time, with the operations done so far (on a
    // terminal only: it draws on standard error).
    let bar = indicatif::ProgressBar::new(args.duration.as_millis() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {elapsed}")
            .expect("a valid template"),
    );
    let progress = {
        let (bar, started) = (bar.clone(), started.clone());
        tokio::spawn(async move {
            loop {
                bar.set_position(start.elapsed().as_millis() as u64);
                bar.set_message(format!("{} ops", started.load(Ordering::Relaxed)));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let max_ops = args.ops.unwrap_or(u64::MAX);
    let mut tasks = Vec::with_capacity(args.concurrency);
    for (w, mut client) in clients.into_iter().enumerate() {
        let base: Option<BaseId> = bases.get(w % bases.len().max(1)).copied();
        let started = started.clone();
        let workload = args.workload;
        let batch = args.batch;
        tasks.push(tokio::spawn(async move {
            let mut hist =
                Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
            let mut errors = 0u64;
            while Instant::now() < deadline && started.fetch_add(1, Ordering::Relaxed) < max_ops {
                let t = Instant::now();
                let ok = match workload {
                    Workload::Create => client.create().await,
                    Workload::Append => client.append(base, batch).await,
                    Workload::SeatableAppend => client.seatable_append(base, batch).await,
                    Workload::Write => client.write(base).await,
                    Workload::Mixed if rand::rng().random_ratio(1, 5) => client.write(base).await,
                    Workload::Read | Workload::Mixed => {
                        let key = rand::rng().random_range(1..=rows);
                        client.read(base, key).await
                    }
                };
                if ok {
                    hist.saturating_record(t.elapsed().as_micros() as u64);
                } else {
                    errors += 1;
                }
            }
            (hist, errors, client)
        }));
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
    let mut errors = 0;
    let mut retries = 0;
    let mut cleaner = None;
    for t in tasks {
        let (h, e, c) = t.await?;
        hist.add(h).context("merging latency histograms")?;
        errors += e;
        retries += c.retries;
        cleaner.get_or_insert(c);
    }
    let elapsed = start.elapsed().as_secs_f64();
    progress.abort();
    bar.finish_and_clear();
    if let Some(c) = cleaner.as_mut().filter(|_| !args.keep) {
        for id in &bases {
            let _ = c.shoal(*id, "DELETE", &format!("/v1/bases/{id}"), &Value::Null).await;
        }
    }
    let ms = |us: u64| us as f64 / 1000.0;
    let report = Report {
        target: args.target,
        workload: args.workload,
        concurrency: args.concurrency,
        bases: bases.len(),
        duration_s: elapsed,
        ops: hist.len(),
        errors,
        retries,
        ops_per_sec: hist.len() as f64 / elapsed,
        rows_per_sec: matches!(args.workload, Workload::Append | Workload::SeatableAppend)
            .then(|| (hist.len() * args.batch as u64) as f64 / elapsed),
        latency_ms: Latency {
            p50: ms(hist.value_at_quantile(0.5)),
            p99: ms(hist.value_at_quantile(0.99)),
            max: ms(hist.max()),
        },
    };
    if args.json {
        out!("{}", serde_json::to_string(&report)?);
    } else {
        out!(
            "{:?} {:?} c={} bases={}: {} ops in {:.1}s = {:.0} ops/s, latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, {} errors, {} retries",
            report.target,
            report.workload,
            report.concurrency,
            report.bases,
            report.ops,
            report.duration_s,
            report.ops_per_sec,
            report.latency_ms.p50,
            report.latency_ms.p99,
            report.latency_ms.max,
            report.errors,
            report.retries
        );
    }
    if let Some(r) = report.rows_per_sec.filter(|_| !args.json) {
        out!("  {r:.0} rows/s in batches of {}", args.batch);
    }
    if errors > 0 && hist.is_empty() {
        anyhow::bail!("every request failed");
    }
    Ok(())
}
