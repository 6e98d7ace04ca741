//! The replication engine alone: three nodes in this process, each hosting
//! the same GROUPS groups (256 by default) with real fsyncs and the real
//! transport between them over 127.0.0.1, a state machine that only counts,
//! and WRITERS concurrent writers, each proposing 100-byte commands to random
//! groups through their leaders. No SQL, no HTTP API.
//!
//! ```sh
//! cargo run --release -p shoal-raft --example engine_bench -- [SECONDS] [WRITERS] [GROUPS]
//! ```
//!
//! Prints idle CPU (heartbeats only), then writes/s, latency, CPU per write
//! (this process's user+system time over the run divided by writes), log
//! batches and fsyncs, and frames sent.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use shoal_raft::{GroupError, MultiRaft, Options, StateMachine};

struct Counter(u64);

impl StateMachine for Counter {
    type Answer = u64;
    fn apply(&mut self, _index: u64, command: &[u8]) -> u64 {
        self.0 += command.len() as u64;
        self.0
    }
    fn sync(&mut self) -> std::io::Result<()> {
        Ok(())
    }
    fn snapshot(&mut self, dir: &Path) -> std::io::Result<()> {
        std::fs::write(dir.join("count"), self.0.to_le_bytes())
    }
    fn restore(&mut self, dir: &Path) -> std::io::Result<()> {
        let b = std::fs::read(dir.join("count"))?;
        self.0 = u64::from_le_bytes(b.try_into().map_err(|_| std::io::Error::other("bad count"))?);
        Ok(())
    }
}

fn cpu_seconds() -> f64 {
    // utime and stime of this process, in clock ticks (fields 14 and 15).
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    ticks as f64 / 100.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SHOAL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt().with_env_filter(filter).init();
    let args: Vec<String> = std::env::args().collect();
    let seconds: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(10);
    let writers: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(64);
    let groups: u16 = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(256);
    let dir = tempfile::tempdir()?;
    let mut nodes = Vec::new();
    let mut addrs = std::collections::HashMap::new();
    let mut listeners = Vec::new();
    for id in 1..=3u64 {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        addrs.insert(id, format!("http://{}", l.local_addr()?));
        listeners.push(l);
    }
    for (i, listener) in listeners.into_iter().enumerate() {
        let id = i as u64 + 1;
        let mut options = Options::new(id, &dir.path().join(format!("n{id}")));
        options.token = "bench".into();
        let multi = MultiRaft::start(options, Arc::new(|_| Counter(0)))?;
        multi.transport().set_addresses(addrs.clone());
        let app = multi.transport().router();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        nodes.push(multi);
    }
    for g in 0..groups {
        for n in &nodes {
            n.open(g as u8).await?;
            n.bootstrap(g as u8, vec![1, 2, 3]).await?;
        }
    }
    // Spread leadership: group g led by node g % 3.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut led = 0;
        for g in (0..groups).map(|g| g as u8) {
            let want = u64::from(g) % 3 + 1;
            match nodes[0].leader(g) {
                Some(l) if l == want => led += 1,
                Some(l) => nodes[l as usize - 1].transfer_leader(g, want),
                None => {}
            }
        }
        if led == groups as usize {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "leaders did not settle: {led} of {groups}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("{groups} groups on 3 nodes, every group led by its preferred node");

    let idle_start = (Instant::now(), cpu_seconds());
    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle_cpu = (cpu_seconds() - idle_start.1) / idle_start.0.elapsed().as_secs_f64();
    println!(
        "idle: {:.2} % of one core for all three nodes ({:.2} % per node)",
        idle_cpu * 100.0,
        idle_cpu * 100.0 / 3.0
    );

    let nodes = Arc::new(nodes);
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let before = (
        Instant::now(),
        cpu_seconds(),
        nodes.iter().map(|n| n.transport().stats()).collect::<Vec<_>>(),
    );
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (nodes, stop, done, errors) =
            (nodes.clone(), stop.clone(), done.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut x = (w as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            while !stop.load(Ordering::Relaxed) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let g = (x % u64::from(groups)) as u8;
                let mut node = u64::from(g) % 3 + 1;
                let start = Instant::now();
                loop {
                    match nodes[node as usize - 1].write(g, vec![7u8; 100]).await {
                        Ok(_) => {
                            done.fetch_add(1, Ordering::Relaxed);
                            latencies.push(start.elapsed());
                            break;
                        }
                        Err(GroupError::NotLeader { leader: Some(l), .. }) => node = l,
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                    }
                }
            }
            latencies
        }));
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await?);
    }
    let elapsed = before.0.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - before.1;
    let writes = done.load(Ordering::Relaxed);
    latencies.sort();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    println!(
        "{writers} writers, {seconds} s: {writes} writes, {:.0} writes/s, {} errors; latency p50 {:?} p99 {:?}",
        writes as f64 / elapsed,
        errors.load(Ordering::Relaxed),
        pct(0.5),
        pct(0.99)
    );
    println!(
        "CPU: {:.1} s over {elapsed:.1} s ({:.0} % of a core), {:.1} µs per write for all three nodes",
        cpu,
        cpu / elapsed * 100.0,
        cpu / writes.max(1) as f64 * 1e6
    );
    for (i, n) in nodes.iter().enumerate() {
        let s = n.transport().stats();
        let b = before.2[i];
        let log = n.log_stats();
        println!(
            "node {}: {} frames ({:.1} messages each), {} log batches written, {} fsyncs",
            i + 1,
            s.frames - b.frames,
            (s.messages - b.messages) as f64 / (s.frames - b.frames).max(1) as f64,
            log.writes,
            log.fsyncs
        );
    }
    Ok(())
}
