//! Measures the node log store's group commit: `groups` groups append
//! concurrently, each waiting for its append to be durable before the next
//! (one in flight per group, like a Raft leader waiting on its own log),
//! for `seconds`, with entries of `bytes` bytes of command.
//!
//! ```text
//! cargo run --release -p shoal-raft --example log_store_bench -- [groups] [seconds] [bytes] [dir]
//! ```
//!
//! Prints appends per second, fsyncs, entries per fsync, append latency,
//! and the bytes the process sent to the disk per fsync (Linux only).
//! `dir` defaults to a temporary directory (on the disk of `$TMPDIR`).

use std::time::{Duration, Instant};

use openraft::storage::RaftLogStorageExt;
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};
use shoal_raft::Request;
use shoal_raft::log_store::{LogStore, LogStoreOptions};

fn arg<T: std::str::FromStr>(n: usize, default: T) -> T {
    std::env::args().nth(n).and_then(|a| a.parse().ok()).unwrap_or(default)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let groups: u16 = arg(1, 16);
    let seconds: u64 = arg(2, 5);
    let bytes: usize = arg(3, 100);
    let temp = tempfile::TempDir::new()?;
    let dir = std::env::args().nth(4).map_or_else(|| temp.path().to_path_buf(), Into::into);
    anyhow::ensure!((1..=256).contains(&groups), "groups must be 1..=256");

    let store = LogStore::open(&dir, LogStoreOptions::default())?;
    let written_before = disk_bytes_written();
    let start = Instant::now();
    let deadline = start + Duration::from_secs(seconds);
    let mut tasks = tokio::task::JoinSet::new();
    for g in 0..groups {
        let mut group = store.group(u8::try_from(g)?);
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            let mut index = 0;
            while Instant::now() < deadline {
                index += 1;
                let entry = Entry {
                    log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
                    payload: EntryPayload::Normal(Request(vec![b'x'; bytes])),
                };
                let t = Instant::now();
                group.blocking_append([entry]).await?;
                latencies.push(t.elapsed());
            }
            anyhow::Ok(latencies)
        });
    }
    let mut latencies = Vec::new();
    while let Some(done) = tasks.join_next().await {
        latencies.extend(done??);
    }
    let elapsed = start.elapsed().as_secs_f64();
    latencies.sort();
    let pct = |p: f64| {
        let i = ((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1));
        latencies.get(i).map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    let s = store.stats();
    let written = disk_bytes_written().saturating_sub(written_before);
    println!(
        "groups {groups:>3}  entry {bytes} B  appends/s {:>7.0}  fsyncs/s {:>6.0}  entries/fsync {:>5.1}  \
         append p50 {:.2} ms  p99 {:.2} ms  disk KiB/fsync {:.0}  ({} appends, {} fsyncs in {elapsed:.1} s)",
        s.appends as f64 / elapsed,
        s.fsyncs as f64 / elapsed,
        s.entries as f64 / s.fsyncs.max(1) as f64,
        pct(0.5),
        pct(0.99),
        written as f64 / 1024.0 / s.fsyncs.max(1) as f64,
        s.appends,
        s.fsyncs,
    );
    Ok(())
}

/// What this process has caused to be written to storage so far, in bytes
/// (`write_bytes` of `/proc/self/io`; 0 where there is no such file).
fn disk_bytes_written() -> u64 {
    let io = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}
