//! Real etcd processes for tests: one member or a cluster, on free
//! 127.0.0.1 ports, each with its data directory in a `TempDir`, killed by
//! PID (SIGKILL) when the value is dropped.
//!
//! The `etcd` binary comes from Debian's `etcd-server` package, which
//! `scripts/install-test-deps` installs; set `SHOAL_ETCD_BIN` to use
//! another. A missing binary fails the test with a message saying so — the
//! etcd tests never pass by skipping.
//!
//! Ports are found by binding `127.0.0.1:0` and releasing the port just
//! before etcd takes it. Another test may grab it in between; then etcd
//! exits at once and the harness starts over with new ports.

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tempfile::TempDir;
use tokio::time::Instant;

use crate::etcd::{EtcdOptions, EtcdRegistry};

/// How long a cluster may take to answer after its processes start.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a start is retried when etcd dies at once (a port was taken).
const START_ATTEMPTS: usize = 3;

/// One etcd process.
#[derive(Debug)]
pub struct Member {
    /// The member's name in the cluster, `m0`, `m1`, ...
    pub name: String,
    /// The client endpoint, `127.0.0.1:port`.
    pub endpoint: String,
    peer_url: String,
    child: Option<Child>,
    /// How the process was started, to restart it identically.
    command: (PathBuf, Vec<String>),
    dir: TempDir,
}

impl Member {
    /// The process id, while the member runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The member's log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Kills the process with SIGKILL (by PID, through its `Child`) and
    /// reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the process (again), with the same ports and data directory,
    /// appending to the same log.
    pub fn spawn(&mut self) {
        self.kill();
        let (binary, args) = &self.command;
        let log =
            File::options().create(true).append(true).open(self.log_path()).expect("open etcd log");
        let child = Command::new(binary)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {}: {e}; run scripts/install-test-deps", binary.display())
            });
        self.child = Some(child);
    }

    fn exited(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(Some(_))) | Some(Err(_)) => true,
            Some(Ok(None)) => false,
            None => true,
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A running etcd cluster of one or more members.
#[derive(Debug)]
pub struct EtcdCluster {
    members: Vec<Member>,
}

/// Finds the `etcd` binary or panics with what to do.
pub fn etcd_binary() -> PathBuf {
    find_etcd(std::env::var_os("SHOAL_ETCD_BIN"), std::env::var_os("PATH"))
        .unwrap_or_else(|message| panic!("{message}"))
}

/// Looks for etcd: `override_bin` if given, else `etcd` in `path`.
fn find_etcd(
    override_bin: Option<std::ffi::OsString>,
    path: Option<std::ffi::OsString>,
) -> Result<PathBuf, String> {
    if let Some(bin) = override_bin {
        let bin = PathBuf::from(bin);
        return if bin.is_file() {
            Ok(bin)
        } else {
            Err(format!("SHOAL_ETCD_BIN={} is not a file", bin.display()))
        };
    }
    std::env::split_paths(&path.unwrap_or_default())
        .map(|dir| dir.join("etcd"))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| {
            "the etcd binary was not found in PATH: run scripts/install-test-deps \
             (it installs Debian's etcd-server), or set SHOAL_ETCD_BIN"
                .to_string()
        })
}

fn free_ports(count: usize) -> Vec<u16> {
    // Hold every listener until all ports are chosen, so they differ.
    let listeners: Vec<TcpListener> = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a free port on 127.0.0.1"))
        .collect();
    listeners.iter().map(|l| l.local_addr().expect("local address").port()).collect()
}

fn spawn_member(
    binary: &Path,
    name: &str,
    client_port: u16,
    peer_port: u16,
    initial_cluster: &str,
    token: &str,
) -> Member {
    let dir = tempfile::Builder::new().prefix("shoal-etcd-").tempdir().expect("temp dir");
    let endpoint = format!("127.0.0.1:{client_port}");
    let client_url = format!("http://{endpoint}");
    let peer_url = format!("http://127.0.0.1:{peer_port}");
    let args = vec![
        format!("--name={name}"),
        format!("--data-dir={}", dir.path().join("data").display()),
        format!("--listen-client-urls={client_url}"),
        format!("--advertise-client-urls={client_url}"),
        format!("--listen-peer-urls={peer_url}"),
        format!("--initial-advertise-peer-urls={peer_url}"),
        format!("--initial-cluster={initial_cluster}"),
        "--initial-cluster-state=new".into(),
        format!("--initial-cluster-token={token}"),
        // Fast elections keep failover tests short.
        "--heartbeat-interval=50".into(),
        "--election-timeout=500".into(),
        "--logger=zap".into(),
        "--log-outputs=stderr".into(),
    ];
    let mut member = Member {
        name: name.into(),
        endpoint,
        peer_url,
        child: None,
        command: (binary.to_path_buf(), args),
        dir,
    };
    member.spawn();
    member
}

impl EtcdCluster {
    /// Starts a one-member etcd.
    pub async fn single() -> Self {
        Self::start(1).await
    }

    /// Starts a cluster of `size` members and waits until every member
    /// answers. Panics (failing the test) if etcd is missing or won't start.
    pub async fn start(size: usize) -> Self {
        static CLUSTERS: AtomicU64 = AtomicU64::new(0);
        let binary = etcd_binary();
        let mut last_error = String::new();
        for _ in 0..START_ATTEMPTS {
            let ports = free_ports(2 * size);
            let names: Vec<String> = (0..size).map(|i| format!("m{i}")).collect();
            let initial_cluster = names
                .iter()
                .zip(ports.chunks(2))
                .map(|(name, p)| format!("{name}=http://127.0.0.1:{}", p[1]))
                .collect::<Vec<_>>()
                .join(",");
            let token = format!(
                "shoal-test-{}-{}",
                std::process::id(),
                CLUSTERS.fetch_add(1, Ordering::Relaxed)
            );
            let members = names
                .iter()
                .zip(ports.chunks(2))
                .map(|(name, p)| spawn_member(&binary, name, p[0], p[1], &initial_cluster, &token))
                .collect();
            let mut cluster = Self { members };
            match cluster.wait_ready().await {
                Ok(()) => return cluster,
                Err(e) => last_error = e,
            }
        }
        panic!("etcd did not start: {last_error}");
    }

    async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        for i in 0..self.members.len() {
            loop {
                if self.members[i].exited() {
                    let m = &self.members[i];
                    return Err(format!("member {} exited:\n{}", m.name, m.log_tail()));
                }
                if self.member_answers(i).await {
                    break;
                }
                if Instant::now() > deadline {
                    let m = &self.members[i];
                    return Err(format!("member {} not ready in time:\n{}", m.name, m.log_tail()));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    async fn member_answers(&self, i: usize) -> bool {
        let endpoint = [self.members[i].endpoint.clone()];
        let options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_millis(500))
            .with_timeout(Duration::from_secs(1));
        let Ok(mut client) = etcd_client::Client::connect(endpoint, Some(options)).await else {
            return false;
        };
        // A read through raft answers only once the member has a leader.
        matches!(
            tokio::time::timeout(Duration::from_secs(2), client.get("/", None)).await,
            Ok(Ok(_))
        )
    }

    /// The members, in start order.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// The client endpoints of the members still running.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().filter(|m| m.child.is_some()).map(|m| m.endpoint.clone()).collect()
    }

    /// The `registry` setting that names every member: `etcd://a,b,c`.
    pub fn registry_url(&self) -> String {
        let all: Vec<&str> = self.members.iter().map(|m| m.endpoint.as_str()).collect();
        format!("etcd://{}", all.join(","))
    }

    /// Options for a registry client of every member under `namespace`,
    /// with a retry policy suited to tests (quick retries, bounded waits).
    pub fn options(&self, namespace: &str) -> EtcdOptions {
        EtcdOptions {
            endpoints: self.members.iter().map(|m| format!("http://{}", m.endpoint)).collect(),
            namespace: namespace.into(),
            retry_interval: Duration::from_millis(200),
            max_retries: 25,
            operation_timeout: Duration::from_secs(2),
            tls: None,
        }
    }

    /// A connected registry client under `namespace`.
    pub async fn registry(&self, namespace: &str) -> EtcdRegistry {
        EtcdRegistry::connect(self.options(namespace)).await.expect("connect to the test etcd")
    }

    /// Kills member `i` with SIGKILL.
    pub fn kill(&mut self, i: usize) {
        self.members[i].kill();
    }

    /// Restarts member `i` (after [`EtcdCluster::kill`]) and waits until it
    /// answers again.
    pub async fn restart(&mut self, i: usize) {
        self.members[i].spawn();
        let deadline = Instant::now() + START_TIMEOUT;
        while !self.member_answers(i).await {
            let m = &mut self.members[i];
            if m.exited() || Instant::now() > deadline {
                panic!("member {} did not come back:\n{}", m.name, m.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The index of the member that currently leads the cluster, asking
    /// each running member for its status.
    pub async fn leader(&self) -> Option<usize> {
        let mut ids = Vec::new();
        let mut leader = None;
        for m in &self.members {
            if m.child.is_none() {
                ids.push(None);
                continue;
            }
            let options = etcd_client::ConnectOptions::new().with_timeout(Duration::from_secs(1));
            let status =
                match etcd_client::Client::connect([m.endpoint.clone()], Some(options)).await {
                    Ok(mut c) => c.status().await.ok(),
                    Err(_) => None,
                };
            ids.push(status.as_ref().map(|s| s.header().map_or(0, |h| h.member_id())));
            if let Some(s) = status {
                leader = Some(s.leader());
            }
        }
        let leader = leader?;
        ids.iter().position(|id| *id == Some(leader))
    }

    /// The peer URL of member `i` (for diagnostics).
    pub fn peer_url(&self, i: usize) -> &str {
        &self.members[i].peer_url
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_etcd_says_how_to_install_it() {
        let empty = tempfile::tempdir().expect("temp dir");
        let err = find_etcd(None, Some(empty.path().as_os_str().to_owned())).unwrap_err();
        assert!(err.contains("run scripts/install-test-deps"), "{err}");
        let err = find_etcd(Some(empty.path().join("etcd").into()), None).unwrap_err();
        assert!(err.contains("SHOAL_ETCD_BIN"), "{err}");
    }
}
