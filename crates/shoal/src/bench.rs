//! `shoal bench`: drives a running server with single-row writes and/or
//! point reads from many concurrent clients and reports throughput and
//! latency. It creates its own bases (one per client, up to `--bases`) and
//! drops them afterwards.

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
use shoal_types::api::{Params, Statement};

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
}

#[derive(Args, Debug)]
pub struct BenchArgs {
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
    /// Rows to load into each base before a read or mixed run.
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
    workload: Workload,
    concurrency: usize,
    bases: usize,
    duration_s: f64,
    ops: u64,
    errors: u64,
    ops_per_sec: f64,
    latency_ms: Latency,
}

#[derive(Debug, Serialize)]
struct Latency {
    p50: f64,
    p99: f64,
    max: f64,
}

/// One single-row insert; whether it succeeded.
async fn insert(client: &shoal_client::Client, base: BaseId, payload: &str) -> bool {
    let st = Statement {
        sql: "INSERT INTO bench (v) VALUES (?)".into(),
        params: Params::Positional(vec![Value::String(payload.to_string())]),
    };
    client.execute(base, vec![st], true).await.is_ok()
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.concurrency == 0 {
        anyhow::bail!("--concurrency must be at least 1");
    }
    let client = args.client.client()?;
    let n_bases = if args.workload == Workload::Create {
        0
    } else {
        args.bases.unwrap_or(args.concurrency).max(1)
    };
    let payload = "x".repeat(100);
    let mut bases = Vec::with_capacity(n_bases);
    for i in 0..n_bases {
        let info = client
            .create_base(None, Some(format!("bench-{i}")))
            .await
            .with_context(|| format!("cannot create a bench base on {}", client.endpoint()))?;
        client
            .execute(
                info.id,
                vec![Statement {
                    sql: "CREATE TABLE bench (id INTEGER PRIMARY KEY, v TEXT)".into(),
                    params: Params::default(),
                }],
                true,
            )
            .await?;
        bases.push(info.id);
    }
    let rows = if matches!(args.workload, Workload::Write | Workload::Create) {
        0
    } else {
        args.rows.max(1)
    };
    for id in &bases {
        for chunk in (0..rows).collect::<Vec<_>>().chunks(500) {
            let batch = chunk
                .iter()
                .map(|_| json!({"v": payload}).as_object().cloned().unwrap_or_default())
                .collect();
            client.insert_rows(*id, "bench", batch).await?;
        }
    }

    let start = Instant::now();
    let deadline = start + args.duration;
    let started = Arc::new(AtomicU64::new(0));
    let max_ops = args.ops.unwrap_or(u64::MAX);
    let mut tasks = Vec::with_capacity(args.concurrency);
    for w in 0..args.concurrency {
        let client = client.clone();
        let base: Option<BaseId> = bases.get(w % bases.len().max(1)).copied();
        let started = started.clone();
        let payload = payload.clone();
        let workload = args.workload;
        tasks.push(tokio::spawn(async move {
            let mut hist =
                Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
            let mut errors = 0u64;
            while Instant::now() < deadline && started.fetch_add(1, Ordering::Relaxed) < max_ops {
                let t = Instant::now();
                let ok = match (workload, base) {
                    (Workload::Create, _) | (_, None) => {
                        client.create_base(None, Some(format!("bench-create-{w}"))).await.is_ok()
                    }
                    (Workload::Write, Some(base)) => insert(&client, base, &payload).await,
                    (Workload::Mixed, Some(base)) if rand::rng().random_ratio(1, 5) => {
                        insert(&client, base, &payload).await
                    }
                    (Workload::Read | Workload::Mixed, Some(base)) => {
                        let key = rand::rng().random_range(1..=rows as i64);
                        let params = Params::Positional(vec![key.into()]);
                        client.query(base, "SELECT v FROM bench WHERE id = ?", params).await.is_ok()
                    }
                };
                if ok {
                    hist.saturating_record(t.elapsed().as_micros() as u64);
                } else {
                    errors += 1;
                }
            }
            (hist, errors)
        }));
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
    let mut errors = 0;
    for t in tasks {
        let (h, e) = t.await?;
        hist.add(h).context("merging latency histograms")?;
        errors += e;
    }
    let elapsed = start.elapsed().as_secs_f64();
    if !args.keep {
        for id in &bases {
            let _ = client.drop_base(*id).await;
        }
    }
    let ms = |us: u64| us as f64 / 1000.0;
    let report = Report {
        workload: args.workload,
        concurrency: args.concurrency,
        bases: bases.len(),
        duration_s: elapsed,
        ops: hist.len(),
        errors,
        ops_per_sec: hist.len() as f64 / elapsed,
        latency_ms: Latency {
            p50: ms(hist.value_at_quantile(0.5)),
            p99: ms(hist.value_at_quantile(0.99)),
            max: ms(hist.max()),
        },
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "{:?} c={} bases={}: {} ops in {:.1}s = {:.0} ops/s, latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, {} errors",
            report.workload,
            report.concurrency,
            report.bases,
            report.ops,
            report.duration_s,
            report.ops_per_sec,
            report.latency_ms.p50,
            report.latency_ms.p99,
            report.latency_ms.max,
            report.errors
        );
    }
    if errors > 0 && hist.is_empty() {
        anyhow::bail!("every request failed");
    }
    Ok(())
}
