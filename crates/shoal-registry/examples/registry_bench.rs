//! Throughput and latency of one registry backend: CLIENTS tasks each put
//! (or read, linearizably) keys of 100 bytes for SECONDS, through the same
//! `connect` every Shoal process uses. Prints one line:
//! `WORKLOAD ops/s p50_ms p99_ms errors`.
//!
//! `SHOAL_ADMIN_TOKEN=T cargo run --release -p shoal-registry --example registry_bench -- REGISTRY_URL put|get CLIENTS SECONDS`

use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_registry::{RegistryOptions, connect};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, workload, clients, seconds] = args.as_slice() else {
        eprintln!("usage: registry_bench REGISTRY_URL put|get CLIENTS SECONDS");
        std::process::exit(2);
    };
    let clients: usize = clients.parse().expect("CLIENTS is a number");
    let run_for = Duration::from_secs(seconds.parse().expect("SECONDS is a number"));
    let options = RegistryOptions {
        registry: url.clone(),
        namespace: format!("bench-{}", std::process::id()),
        // The embedded registry's members ask for the cluster's token.
        token: std::env::var("SHOAL_ADMIN_TOKEN").ok(),
        ..RegistryOptions::default()
    };
    let registry = connect(&options).await.expect("the registry answers");
    let value = vec![b'v'; 100];
    for k in 0..100 {
        registry.put(format!("bench/{k}").as_bytes(), &value, None).await.expect("seed");
    }
    let put = workload == "put";
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (registry, value) = (Arc::clone(&registry), value.clone());
        tasks.push(tokio::spawn(async move {
            let (mut latencies, mut errors, mut i) = (Vec::new(), 0u64, c);
            while start.elapsed() < run_for {
                let key = format!("bench/{}", i % 100);
                let t = Instant::now();
                let ok = if put {
                    registry.put(key.as_bytes(), &value, None).await.is_ok()
                } else {
                    registry.get(key.as_bytes()).await.is_ok()
                };
                if ok {
                    latencies.push(t.elapsed());
                } else {
                    errors += 1;
                }
                i += clients;
            }
            (latencies, errors)
        }));
    }
    let (mut all, mut errors) = (Vec::new(), 0);
    for t in tasks {
        let (l, e) = t.await.expect("client");
        all.extend(l);
        errors += e;
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort();
    let at = |q: f64| all.get(((all.len() as f64 * q) as usize).min(all.len().saturating_sub(1)));
    let ms = |d: Option<&Duration>| d.map_or(0.0, |d| d.as_secs_f64() * 1000.0);
    println!(
        "{workload} {:.0} {:.2} {:.2} {errors}",
        all.len() as f64 / elapsed,
        ms(at(0.5)),
        ms(at(0.99))
    );
    let _ = registry.delete_prefix(b"bench/").await;
}
