//! Linearizability under faults: concurrent clients, each pinned to one
//! node of a three-node cluster, read, write and compare-and-set a few
//! keys while a nemesis kills nodes (SIGKILL, then a restart), pauses
//! them (SIGSTOP, then SIGCONT) and, when the test can run in a network
//! namespace of its own (as root, with iptables), cuts the network between
//! them (a node isolated, a pair cut, a one-way cut). At the end every
//! fault is healed, every key's history must be linearizable (checked by
//! `shoal-check`), every key's final value must agree with the
//! acknowledged writes, and every replica of every base must be
//! byte-equal. Reads at `leader` and `none` are recorded apart and
//! measured: how many were stale, and by how much.
//!
//! The seed fixes the clients' and the nemesis's choices, not the
//! interleaving of threads and processes. It is printed at the start and
//! on failure; replay with
//! `SHOAL_JEPSEN_SEED=<seed> cargo test -p shoal --test jepsen -- --nocapture`.
//! `SHOAL_JEPSEN_DURATION` (e.g. `600s`) sets how long the workload runs
//! (default 60 s); `SHOAL_JEPSEN_PARTITIONS=off` keeps the nodes on
//! 127.0.0.1 without partitions; `bench/jepsen.sh` runs a long one. See
//! docs/reliability.md.

#[path = "jepsen/client.rs"]
mod client;
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use client::{Client, Kind, Urls, WeakRead, Workload, call, post_until};
use common::cluster::{Cluster, TOKEN};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;
use serde_json::json;
use shoal_check::{Op, Operation, Outcome, ReadAge};

const NODES: [&str; 3] = ["n1", "n2", "n3"];
const BASES: usize = 2;
const KEYS_PER_BASE: usize = 2;
/// Clients per node.
const CLIENTS_PER_NODE: usize = 2;
/// Share of the reads made at `leader` or `none`.
const WEAK_READS: f64 = 0.2;

fn duration() -> Duration {
    match std::env::var("SHOAL_JEPSEN_DURATION") {
        Ok(s) => humantime::parse_duration(s.trim())
            .expect("SHOAL_JEPSEN_DURATION must be a duration such as 600s or 10m"),
        Err(_) => Duration::from_secs(60),
    }
}

/// The faults the nemesis may inject.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    /// SIGKILL, then a restart.
    Kill,
    /// SIGSTOP, then SIGCONT.
    Pause,
    /// One node cut off from the two others (a 2/1 split).
    Isolate,
    /// One pair of nodes cut apart; the third still reaches both.
    Bridge,
    /// One node's packets to another dropped, the other way open.
    OneWay,
}

impl Fault {
    /// A fault kind by its name in `SHOAL_JEPSEN_FAULTS`.
    fn parse(name: &str) -> Fault {
        match name {
            "kill" => Fault::Kill,
            "pause" => Fault::Pause,
            "isolate" => Fault::Isolate,
            "bridge" => Fault::Bridge,
            "oneway" => Fault::OneWay,
            other => panic!(
                "SHOAL_JEPSEN_FAULTS: unknown fault {other:?} (kill, pause, isolate, bridge, oneway)"
            ),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Fault::Kill => "kill + restart",
            Fault::Pause => "pause (STOP/CONT)",
            Fault::Isolate => "isolate one node",
            Fault::Bridge => "cut one pair",
            Fault::OneWay => "one-way cut",
        }
    }
}

/// Where the nodes run: in the test's own network namespace (only
/// loopback), each on its own address and as its own user, so that packet
/// filters can cut them apart; or on 127.0.0.1 without partitions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Net {
    Namespace,
    Plain,
}

/// Set in the copy of the test that runs inside the new namespace.
const IN_NETNS: &str = "SHOAL_JEPSEN_IN_NETNS";
/// Each node's user in the namespace: n1 is `NODE_UID`, n2 the next...
const NODE_UID: u32 = 47001;

fn succeeds(program: &str, args: &[&str]) -> bool {
    std::process::Command::new(program)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Why partitions cannot be injected here, if they cannot.
fn partitions_unavailable() -> Option<String> {
    if std::env::var("SHOAL_JEPSEN_PARTITIONS").is_ok_and(|v| v == "off") {
        return Some("SHOAL_JEPSEN_PARTITIONS=off".into());
    }
    let uid = std::process::Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Some("not root (a network namespace and iptables need it)".into());
    }
    for tool in ["unshare", "ip", "iptables", "setpriv", "curl"] {
        if !succeeds("sh", &["-c", &format!("command -v {tool}")]) {
            return Some(format!("{tool} is missing (scripts/install-test-deps installs it)"));
        }
    }
    None
}

/// The host part of a node's URL.
fn host_of(url: &str) -> String {
    let rest = url.trim_start_matches("http://");
    rest.rsplit_once(':').map_or(rest, |(h, _)| h).to_string()
}

/// Packet filters between nodes: a cut from `a` to `b` drops every packet
/// `a`'s process sends to `b`'s address (so no connection between them
/// opens either way, and those open stop carrying `a`'s messages). etcd,
/// on 127.0.0.1, stays reachable from every node.
struct Cuts;

impl Cuts {
    fn cut(a: u32, b_host: &str) {
        let uid = a.to_string();
        let args = ["-A", "OUTPUT", "-m", "owner", "--uid-owner", &uid, "-d", b_host, "-j", "DROP"];
        assert!(succeeds("iptables", &args), "iptables {args:?} failed");
    }

    fn heal() {
        assert!(succeeds("iptables", &["-F", "OUTPUT"]), "iptables -F OUTPUT failed");
    }

    /// Whether user `uid` can reach `url`'s /healthz within a second.
    fn reaches(uid: u32, url: &str) -> bool {
        std::process::Command::new("setpriv")
            .args(["--reuid", &uid.to_string(), "--regid", &uid.to_string(), "--clear-groups"])
            .args(["curl", "-sf", "-m", "1", "-o", "/dev/null", &format!("{url}/healthz")])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }
}

/// Sends `signal` (`STOP`, `CONT`) to one process by its id.
fn signal(pid: u32, signal: &str) {
    let ok = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill -{signal} {pid} failed");
}

/// Which node leads the base's bucket: the one that serves a leader read
/// itself (the others forward or redirect).
async fn leader_of(http: &reqwest::Client, urls: &Urls, base: &str) -> Option<String> {
    for (name, url) in urls.all() {
        let u = format!("{url}/v1/bases/{base}/checksum?consistency=leader");
        if let Ok((StatusCode::OK, _)) =
            call(http, reqwest::Method::GET, &u, None, &[("x-shoal-no-forward", "1")]).await
        {
            return Some(name);
        }
    }
    None
}

/// Each node's own checksum of a base (no forwarding).
async fn checksums(http: &reqwest::Client, urls: &Urls, base: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (name, url) in urls.all() {
        let u = format!("{url}/v1/bases/{base}/checksum?consistency=none");
        let seen = match call(http, reqwest::Method::GET, &u, None, &[("x-shoal-no-forward", "1")])
            .await
        {
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

/// Whether the cluster is whole: no missing replica, no move in progress,
/// and every base answers a linearizable read through every node.
async fn whole(http: &reqwest::Client, urls: &Urls, bases: &[String]) -> Result<(), String> {
    let s = shoal_client::Client::new(&urls.get("n1"), Some(TOKEN.into()))
        .expect("client")
        .cluster_status()
        .await
        .map_err(|e| format!("status: {e}"))?;
    if !s.under_replicated.is_empty()
        || !s.on_dead_nodes.is_empty()
        || !s.moves_in_progress.is_empty()
    {
        return Err(format!(
            "under replicated {}, on dead nodes {}, moves in progress {}",
            s.under_replicated.len(),
            s.on_dead_nodes.len(),
            s.moves_in_progress.len()
        ));
    }
    for base in bases {
        for (name, url) in urls.all() {
            let u = format!("{url}/v1/bases/{base}/query");
            let body = json!({"sql": "SELECT count(*) FROM kv"});
            match call(http, reqwest::Method::POST, &u, Some(&body), &[]).await {
                Ok((StatusCode::OK, _)) => {}
                other => return Err(format!("base {base} through {name}: {other:?}")),
            }
        }
    }
    Ok(())
}

/// Waits (bounded) until the cluster is whole; the reason if it is not.
async fn wait_whole(
    http: &reqwest::Client,
    urls: &Urls,
    bases: &[String],
    within: Duration,
) -> Result<Duration, String> {
    let started = Instant::now();
    loop {
        match whole(http, urls, bases).await {
            Ok(()) => return Ok(started.elapsed()),
            Err(why) if started.elapsed() > within => return Err(why),
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// Copies the processes' output and the history somewhere that outlives the test.
fn keep(c: &Cluster, seed: u64, history: &[Operation], weak: &[WeakRead]) -> String {
    let to = c.keep_logs("jepsen", seed);
    let _ = std::fs::create_dir_all(&to);
    let mut text: String = history.iter().enumerate().map(|(i, o)| format!("#{i} {o}\n")).collect();
    for w in weak {
        text += &format!("weak {} {} from {}\n", w.level, w.read, w.served_by);
    }
    let _ = std::fs::write(to.join("history.txt"), text);
    to.display().to_string()
}

/// A check of the checker on the history just recorded: one late read is
/// made to return a value overwritten before it began (an acknowledged
/// write completed, then another, then the read started), which no
/// linearizable store returns; the checker must say so, at that read.
fn planted_stale_read_is_caught(history: &[Operation]) -> String {
    let writes = |key: &str| -> Vec<(Duration, Duration, i64)> {
        history
            .iter()
            .filter(|o| o.key == key && o.outcome == Outcome::Ok)
            .filter_map(|o| match o.op {
                Op::Write { value } => Some((o.invoked, o.completed.expect("ok"), value)),
                _ => None,
            })
            .collect()
    };
    for (i, read) in history.iter().enumerate().rev() {
        if read.outcome != Outcome::Ok || !matches!(read.op, Op::Read { .. }) {
            continue;
        }
        let w = writes(&read.key);
        let older = w.iter().find(|(_, done, _)| {
            w.iter().any(|(start, end, _)| done < start && *end < read.invoked)
        });
        let Some(&(_, _, stale)) = older else { continue };
        let mut doctored = history.to_vec();
        doctored[i].op = Op::Read { seen: Some(stale) };
        let report = shoal_check::check(&doctored, &shoal_check::Options::default())
            .expect("a well-formed history");
        let v = report.violations();
        return match v.first() {
            Some(v) if v.op.0 == i => format!("caught (read #{i} made to return {stale})"),
            Some(v) => format!("caught elsewhere: at #{} instead of #{i}", v.op.0),
            None => format!("MISSED (read #{i} made to return {stale})"),
        };
    }
    "no read to plant".into()
}

/// Where time `t` falls among the faults: during one, or how long after
/// the last one ended.
fn place(windows: &[(Duration, Duration, String)], t: Duration) -> String {
    match windows.iter().rev().find(|(from, _, _)| *from <= t) {
        Some((_, to, what)) if t <= *to => format!("during {what}"),
        Some((_, to, what)) => format!("{:.2}s after {what} ended", (t - *to).as_secs_f64()),
        None => "before any fault".into(),
    }
}

/// The longest an election can take with the default settings (10 ticks
/// of 100 ms, randomized up to twice that): a `leader` read whose value had
/// been overwritten for longer came from a node that went on answering as
/// leader after the others had elected another.
const LONG_STALE: Duration = Duration::from_secs(2);

/// How stale the reads of one weaker level were.
#[derive(Default)]
struct Ages {
    reads: usize,
    stale: usize,
    /// The most versions a read was behind.
    versions: usize,
    /// The longest a read's value had been known overwritten.
    behind: Duration,
    /// Reads that saw a write of unknown outcome no linearizable read saw.
    saw_unknown: usize,
    /// Reads of a value no write could have made by then.
    unexplained: Vec<Operation>,
    /// Stale reads that overlapped a fault (the others came with every
    /// node up and connected).
    stale_in_fault: usize,
    /// Stale reads whose value had been overwritten for longer than
    /// [`LONG_STALE`].
    long_stale: usize,
    stale_reads: Vec<(usize, Duration, Operation, String)>,
}

/// The test's name, to run it again inside a network namespace.
const TEST_NAME: &str = "reads_writes_and_cas_stay_linearizable_under_faults";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_writes_and_cas_stay_linearizable_under_faults() {
    let seed = common::seed::seed("SHOAL_JEPSEN_SEED");
    if std::env::var(IN_NETNS).is_ok() {
        assert!(succeeds("ip", &["link", "set", "lo", "up"]), "ip link set lo up failed");
        return run(seed, Net::Namespace).await;
    }
    match partitions_unavailable() {
        Some(why) => {
            println!("partitions off: {why}; the nodes run on 127.0.0.1");
            run(seed, Net::Plain).await
        }
        None => in_namespace(seed),
    }
}

/// Runs this test again in a new network namespace (`unshare -n`: only a
/// loopback interface, no way out), where it may install packet filters.
fn in_namespace(seed: u64) {
    let _guard = common::seed::SeedOnPanic {
        seed,
        test: "linearizability test",
        var: "SHOAL_JEPSEN_SEED",
        target: "jepsen",
    };
    println!("running the test inside a new network namespace (unshare -n), seed {seed}");
    let exe = std::env::current_exe().expect("the test binary");
    let mut child = std::process::Command::new("unshare")
        .arg("-n")
        .arg(exe)
        .args([TEST_NAME, "--exact", "--nocapture", "--test-threads", "1"])
        .env(IN_NETNS, "1")
        .env("SHOAL_JEPSEN_SEED", seed.to_string())
        .spawn()
        .expect("start unshare");
    let deadline = Instant::now() + duration() + Duration::from_secs(600);
    loop {
        if let Some(status) = child.try_wait().expect("wait for the namespaced test") {
            assert!(status.success(), "[seed {seed}] the test in the namespace failed: {status}");
            return;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("[seed {seed}] the test in the namespace did not end in time");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

async fn run(seed: u64, net: Net) {
    let _guard = common::seed::SeedOnPanic {
        seed,
        test: "linearizability test",
        var: "SHOAL_JEPSEN_SEED",
        target: "jepsen",
    };
    let run_for = duration();
    println!(
        "linearizability test: seed {seed}, workload {run_for:?}, nodes {} (replay: SHOAL_JEPSEN_SEED={seed} cargo test -p shoal --test jepsen -- --nocapture)",
        match net {
            Net::Namespace => "on 127.0.0.2-4 in a network namespace, with partitions",
            Net::Plain => "on 127.0.0.1, without partitions",
        }
    );
    let started = Instant::now();
    let mut rng = StdRng::seed_from_u64(seed);
    let possible: &[Fault] = match net {
        Net::Namespace => {
            &[Fault::Kill, Fault::Pause, Fault::Isolate, Fault::Bridge, Fault::OneWay]
        }
        Net::Plain => &[Fault::Kill, Fault::Pause],
    };
    let faults: Vec<Fault> = match std::env::var("SHOAL_JEPSEN_FAULTS") {
        Ok(list) => {
            let wanted: Vec<Fault> = list.split(',').map(|f| Fault::parse(f.trim())).collect();
            possible.iter().copied().filter(|f| wanted.contains(f)).collect()
        }
        Err(_) => possible.to_vec(),
    };
    assert!(!faults.is_empty(), "no fault kind left to inject here");
    println!("faults: {}", faults.iter().map(|f| f.name()).collect::<Vec<_>>().join(", "));
    let uid_of =
        |node: &str| NODE_UID + NODES.iter().position(|n| *n == node).expect("a node") as u32;

    let mut c = Cluster::new().await;
    match net {
        Net::Plain => {
            for n in NODES {
                c.start_node(n);
            }
        }
        Net::Namespace => {
            // The nodes' users must reach their directories.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(c.dir.path(), std::fs::Permissions::from_mode(0o755))
                .expect("chmod the cluster directory");
            for (i, n) in NODES.iter().enumerate() {
                c.start_node_as(n, &format!("127.0.0.{}", i + 2), Some(uid_of(n)));
            }
        }
    }
    c.start_monitor(&[]);
    c.wait_three_replicas().await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(client::REQUEST_TIMEOUT)
        .build()
        .expect("http client");
    let urls = Urls::default();
    for (n, p) in &c.nodes {
        urls.set(n, &p.url);
    }

    // Bases in distinct buckets, each with the table.
    let mut bases = Vec::new();
    for id in common::seed::ids_in_distinct_buckets(&mut rng, BASES, seed) {
        let within = (Instant::now() + Duration::from_secs(60), Duration::from_millis(200));
        let base_url = format!("{}/v1/bases", urls.get("n1"));
        let made = |s: StatusCode| s.is_success() || s == StatusCode::CONFLICT;
        let what = format!("[seed {seed}] create base {id}");
        post_until(&http, &base_url, &json!({"id": id}), made, within, &what).await;
        let ddl = json!({"statements": [{"sql": "CREATE TABLE IF NOT EXISTS kv (k TEXT PRIMARY KEY, v INTEGER NOT NULL)"}]});
        let exec = format!("{}/v1/bases/{id}/execute", urls.get("n1"));
        let what = format!("[seed {seed}] create table in {id}");
        post_until(&http, &exec, &ddl, |s| s.is_success(), within, &what).await;
        bases.push(id);
    }
    // Reads at `none` are served by any replica from what it applied: one
    // that has not applied the table yet rightly answers "no such table".
    // The workload starts once every replica has it.
    let probe = json!({"sql": "SELECT count(*) FROM kv", "consistency": "none"});
    let within = (Instant::now() + Duration::from_secs(60), Duration::from_millis(50));
    for id in &bases {
        for (node, url) in urls.all() {
            let query = format!("{url}/v1/bases/{id}/query");
            let what = format!("[seed {seed}] table of {id} on {node}");
            post_until(&http, &query, &probe, |s| s.is_success(), within, &what).await;
        }
    }
    println!("bases {bases:?}, ready after {:.1}s", started.elapsed().as_secs_f64());

    // The clients.
    let origin = Instant::now();
    let until = origin + run_for;
    let workload = Workload {
        http: http.clone(),
        urls: urls.clone(),
        bases: bases.clone(),
        keys_per_base: KEYS_PER_BASE,
        origin,
        until,
        weak_reads: WEAK_READS,
    };
    let mut clients = Vec::new();
    for (i, node) in
        NODES.iter().flat_map(|n| std::iter::repeat_n(*n, CLIENTS_PER_NODE)).enumerate()
    {
        let client = Client::new(i, node, rng.random(), workload.clone());
        clients.push(tokio::spawn(client.run()));
    }

    // The nemesis: one fault at a time, healed before the next.
    let mut injected: BTreeMap<Fault, usize> = BTreeMap::new();
    let mut timeline = Vec::new();
    // (start, end, what) of every fault, for placing stale reads.
    let mut windows: Vec<(Duration, Duration, String)> = Vec::new();
    loop {
        let quiet = Duration::from_millis(rng.random_range(1000..3000));
        let fault = faults[rng.random_range(0..faults.len())];
        let target_leader = rng.random_bool(0.5);
        let base = rng.random_range(0..BASES);
        let random = NODES[rng.random_range(0..NODES.len())].to_string();
        let length = Duration::from_millis(match fault {
            Fault::Kill => rng.random_range(300..4000),
            Fault::Pause => rng.random_range(1000..5000),
            Fault::Isolate | Fault::Bridge | Fault::OneWay => rng.random_range(2000..8000),
        });
        let new_port = rng.random_bool(0.5);
        let other = rng.random_range(0..NODES.len() - 1);
        if Instant::now() + quiet + length + Duration::from_secs(2) > until {
            break;
        }
        tokio::time::sleep(quiet).await;
        let victim = match target_leader {
            true => leader_of(&http, &urls, &bases[base]).await.unwrap_or(random),
            false => random,
        };
        let at = origin.elapsed();
        match fault {
            Fault::Kill => {
                c.nodes.get_mut(&victim).expect("victim").kill();
                tokio::time::sleep(length).await;
                let node = c.nodes.get_mut(&victim).expect("victim");
                if new_port {
                    node.restart();
                } else {
                    node.restart_same_port();
                }
                urls.set(&victim, &node.url);
            }
            Fault::Pause => {
                let pid = c.nodes[&victim].pid();
                signal(pid, "STOP");
                tokio::time::sleep(length).await;
                signal(pid, "CONT");
            }
            Fault::Isolate | Fault::Bridge | Fault::OneWay => {
                let others: Vec<String> =
                    NODES.iter().filter(|n| **n != victim).map(|n| n.to_string()).collect();
                let pairs: Vec<(String, String)> = match fault {
                    Fault::Isolate => others
                        .iter()
                        .flat_map(|o| [(victim.clone(), o.clone()), (o.clone(), victim.clone())])
                        .collect(),
                    Fault::Bridge => vec![
                        (victim.clone(), others[other].clone()),
                        (others[other].clone(), victim.clone()),
                    ],
                    _ => vec![(victim.clone(), others[other].clone())],
                };
                for (a, b) in &pairs {
                    Cuts::cut(uid_of(a), &host_of(&urls.get(b)));
                }
                // The cut holds: the node's user cannot reach the other
                // node, while the test can.
                for (a, b) in &pairs {
                    let url = urls.get(b);
                    assert!(Cuts::reaches(0, &url), "[seed {seed}] {b} is not reachable at all");
                    assert!(
                        !Cuts::reaches(uid_of(a), &url),
                        "[seed {seed}] the cut from {a} to {b} lets traffic through"
                    );
                }
                tokio::time::sleep(length).await;
                Cuts::heal();
                for (a, b) in &pairs {
                    let deadline = Instant::now() + Duration::from_secs(10);
                    while !Cuts::reaches(uid_of(a), &urls.get(b)) {
                        assert!(
                            Instant::now() < deadline,
                            "[seed {seed}] {a} cannot reach {b} after the heal"
                        );
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
        *injected.entry(fault).or_default() += 1;
        windows.push((at, origin.elapsed(), format!("{} of {victim}", fault.name())));
        let healed = wait_whole(&http, &urls, &bases, Duration::from_secs(30)).await;
        let line = format!(
            "{:>7.2}s {} ({victim}{}) for {:.1}s; {}",
            at.as_secs_f64(),
            fault.name(),
            match (fault, target_leader) {
                (Fault::Bridge | Fault::OneWay, _) => {
                    let o: Vec<&str> = NODES.iter().filter(|n| **n != victim).copied().collect();
                    let arrow = if fault == Fault::OneWay { "-/->" } else { "<-/->" };
                    format!(
                        " {arrow} {}{}",
                        o[other],
                        if target_leader { ", leader of a base" } else { "" }
                    )
                }
                (_, true) => format!(", leader of base {base}"),
                _ => String::new(),
            },
            length.as_secs_f64(),
            match &healed {
                Ok(d) => format!("whole again {:.1}s later", d.as_secs_f64()),
                Err(why) => format!("not whole after 30s: {why}"),
            }
        );
        println!("{line}");
        timeline.push(line);
    }

    // The end: every client done, the cluster whole.
    let mut history = Vec::new();
    let mut weak = Vec::new();
    let mut surprises = Vec::new();
    for h in clients {
        let r = h.await.unwrap_or_else(|e| panic!("[seed {seed}] client: {e}"));
        history.extend(r.history);
        weak.extend(r.weak);
        surprises.extend(r.surprises);
    }
    let workload_took = origin.elapsed();
    if let Err(why) = wait_whole(&http, &urls, &bases, Duration::from_secs(60)).await {
        panic!(
            "[seed {seed}] the cluster is not whole 60s after the last fault: {why}; logs in {}",
            keep(&c, seed, &history, &weak)
        );
    }

    // A final linearizable read of every key, part of the history.
    let mut finals = BTreeMap::new();
    for (b, base) in bases.iter().enumerate() {
        for k in 0..KEYS_PER_BASE {
            let key = workload.key_name(b, k);
            let body = json!({"sql": "SELECT v FROM kv WHERE k = ?", "params": [key], "consistency": "linearizable"});
            let within = (Instant::now() + Duration::from_secs(30), Duration::from_millis(200));
            let u = format!("{}/v1/bases/{base}/query", urls.get("n1"));
            let what = format!("[seed {seed}] final read of {key}");
            let ok = |s: StatusCode| s == StatusCode::OK;
            // The read's window starts when the attempt that answered was sent.
            let (sent, v) = post_until(&http, &u, &body, ok, within, &what).await;
            let seen = v["rows"].as_array().and_then(|r| r.first()).and_then(|r| r[0].as_i64());
            history.push(Operation {
                process: 9999,
                key: key.clone(),
                invoked: sent.saturating_duration_since(origin),
                completed: Some(origin.elapsed()),
                op: Op::Read { seen },
                outcome: Outcome::Ok,
            });
            finals.insert(key, seen);
        }
    }

    // Replicas byte-equal.
    let mut checksums_equal = true;
    let mut differ = Vec::new();
    for base in &bases {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let sums = checksums(&http, &urls, base).await;
            let distinct: BTreeSet<&str> =
                sums.values().map(|s| s.split(' ').next().unwrap_or_default()).collect();
            if distinct.len() == 1 && !sums.values().any(|v| v.starts_with("error")) {
                break;
            }
            if Instant::now() > deadline {
                checksums_equal = false;
                differ.push(format!("{base}: {sums:#?}"));
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    // The check.
    let check_started = Instant::now();
    let report = shoal_check::check(&history, &shoal_check::Options::default())
        .expect("a well-formed history");
    let check_took = check_started.elapsed();
    let planted = planted_stale_read_is_caught(&history);
    let mut lost = Vec::new();
    let mut never_written = Vec::new();
    for (key, seen) in &finals {
        let f = shoal_check::check_final(&history, key, *seen, None);
        lost.extend(f.lost.iter().map(|&i| format!("#{i} {}", history[i])));
        if f.never_written {
            never_written.push(format!("{key}: {seen:?}"));
        }
    }

    // How stale the reads at weaker levels were, against each key's witness.
    let mut ages: BTreeMap<&str, Ages> = BTreeMap::new();
    let versions: BTreeMap<&str, shoal_check::Versions> = report
        .keys
        .iter()
        .filter_map(|k| Some((k.key.as_str(), report.order(&k.key)?)))
        .map(|(key, order)| (key, shoal_check::Versions::new(&history, order, None)))
        .collect();
    for w in &weak {
        let e = ages.entry(w.level).or_default();
        e.reads += 1;
        let Some(versions) = versions.get(w.read.key.as_str()) else { continue };
        match versions.age(&w.read) {
            ReadAge::Fresh => {}
            ReadAge::Stale { versions, behind } => {
                e.stale += 1;
                e.versions = e.versions.max(versions);
                e.behind = e.behind.max(behind);
                let during = windows.iter().any(|(from, to, _)| {
                    w.read.invoked <= *to && w.read.completed.is_some_and(|c| c >= *from)
                });
                if during {
                    e.stale_in_fault += 1;
                }
                if behind > LONG_STALE {
                    e.long_stale += 1;
                }
                e.stale_reads.push((versions, behind, w.read.clone(), w.served_by.clone()));
            }
            ReadAge::Unexplained => {
                // A value only an unknown write (one no linearizable read
                // observed, so absent from the witness) could have made.
                let Op::Read { seen } = w.read.op else { unreachable!("a read") };
                let unknown_write = history.iter().any(|o| {
                    o.key == w.read.key && o.outcome == Outcome::Unknown && o.op.writes() == seen
                });
                if unknown_write {
                    e.saw_unknown += 1;
                } else {
                    e.unexplained.push(w.read.clone());
                }
            }
        }
    }

    // The summary.
    let tally = client::tally(&history);
    let count =
        |o: Outcome| tally.iter().filter(|((_, out), _)| *out == o).map(|(_, n)| n).sum::<usize>();
    let mut s = String::new();
    s += &format!("\n== linearizability test summary (seed {seed}) ==\n");
    s += &format!(
        "workload                 {:.1}s, {} clients, {} keys in {} bases\n",
        workload_took.as_secs_f64(),
        NODES.len() * CLIENTS_PER_NODE,
        BASES * KEYS_PER_BASE,
        BASES
    );
    s += &format!(
        "operations               {} (ok {}, failed {}, unknown {})\n",
        history.len(),
        count(Outcome::Ok),
        count(Outcome::Failed),
        count(Outcome::Unknown)
    );
    for kind in [Kind::Read, Kind::Write, Kind::Cas] {
        let n = |o: Outcome| tally.get(&(kind, o)).copied().unwrap_or(0);
        s += &format!(
            "  {:<22} ok {:>6}  failed {:>5}  unknown {:>5}\n",
            format!("{kind:?}").to_lowercase(),
            n(Outcome::Ok),
            n(Outcome::Failed),
            n(Outcome::Unknown)
        );
    }
    let swapped = history
        .iter()
        .filter(|o| o.outcome == Outcome::Ok && matches!(o.op, Op::Cas { swapped: true, .. }))
        .count();
    s += &format!("  cas swapped            {swapped}\n");
    s += &format!("faults injected          {}\n", injected.values().sum::<usize>());
    for &f in &faults {
        s += &format!("  {:<22} {}\n", f.name(), injected.get(&f).copied().unwrap_or(0));
    }
    s += &format!(
        "keys checked             {} in {:.2}s ({} steps)\n",
        report.keys.len(),
        check_took.as_secs_f64(),
        report.keys.iter().map(|k| k.steps).sum::<u64>()
    );
    s += &format!("violations               {}\n", report.violations().len());
    s += &format!("undecided (budget)       {}\n", report.undecided().len());
    s += &format!("planted stale read       {planted}\n");
    s += &format!("acknowledged writes lost {}\n", lost.len());
    s += &format!("final values unexplained {}\n", never_written.len());
    s += &format!("checksums equal          {}\n", if checksums_equal { "yes" } else { "NO" });
    s += &format!("unexpected answers       {}\n", surprises.len());
    for (level, a) in &ages {
        s += &format!(
            "reads at {level:<7}         {}: {} stale ({} during a fault, {} over 2 s behind; at most {} versions, {:.0} ms behind), {} saw an unknown write, {} unexplained\n",
            a.reads,
            a.stale,
            a.stale_in_fault,
            a.long_stale,
            a.versions,
            a.behind.as_secs_f64() * 1000.0,
            a.saw_unknown,
            a.unexplained.len()
        );
    }
    s += &format!("total                    {:.1}s\n", started.elapsed().as_secs_f64());
    println!("{s}");
    println!("{report}");
    for (level, a) in &ages {
        let mut stale = a.stale_reads.clone();
        stale.sort_by_key(|(v, b, _, _)| std::cmp::Reverse((*b, *v)));
        for (versions, behind, read, node) in stale.iter().take(8) {
            println!(
                "stalest {level} reads: {read} from {node} ({versions} versions, {:.0} ms behind; {})",
                behind.as_secs_f64() * 1000.0,
                place(&windows, read.invoked)
            );
        }
        for read in &a.unexplained {
            println!("unexplained {level} read: {read}");
        }
    }
    println!("faults:\n{}", timeline.join("\n"));

    let failed = !report.violations().is_empty()
        || !report.undecided().is_empty()
        || !lost.is_empty()
        || !never_written.is_empty()
        || !checksums_equal
        || !surprises.is_empty()
        || !planted.starts_with("caught")
        || ages.values().any(|a| !a.unexplained.is_empty());
    if std::env::var("SHOAL_JEPSEN_KEEP").is_ok() && !failed {
        println!("history and logs kept in {}", keep(&c, seed, &history, &weak));
    }
    if failed {
        let kept = keep(&c, seed, &history, &weak);
        panic!(
            "[seed {seed}] the history is not what a linearizable store gives:\n{report}\nlost: {lost:#?}\nfinal values never written: {never_written:?}\nreplicas differ: {differ:#?}\nunexpected answers: {surprises:#?}\nfaults:\n{}\nhistory and logs in {kept}",
            timeline.join("\n")
        );
    }
    assert!(
        count(Outcome::Ok) >= 200,
        "[seed {seed}] only {} operations succeeded",
        count(Outcome::Ok)
    );
    assert!(
        !injected.is_empty() || run_for < Duration::from_secs(10),
        "[seed {seed}] no fault injected"
    );
}
