//! Real ZooKeeper servers for tests: one standalone server or a quorum
//! ensemble, on free 127.0.0.1 ports, each with its data directory and a
//! generated `zoo.cfg` in a `TempDir`, killed by PID (SIGKILL) when the
//! value is dropped.
//!
//! The server is Debian's `zookeeper` package (`/usr/share/java/zookeeper.jar`,
//! which names its dependencies in its manifest), run in the foreground as
//! `java -cp ... org.apache.zookeeper.server.quorum.QuorumPeerMain zoo.cfg`;
//! `scripts/install-test-deps` installs it. `SHOAL_ZOOKEEPER_CLASSPATH` and
//! `SHOAL_JAVA_BIN` override the class path and the `java` binary. A missing
//! package fails the test with a message saying so — never a silent skip.
//!
//! Each server also gets a small watchdog (`sh`, reading its stdin from this
//! process): when this process ends without dropping the server — as a
//! test binary does with a `static` server — the pipe closes and the
//! watchdog kills that server's PID and removes its directory. So a shared
//! server never outlives the tests that use it.
//!
//! Readiness and roles are read with the `srvr` four-letter command (enabled
//! in the generated configuration; the admin HTTP server is disabled).

use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use tempfile::TempDir;
use tokio::time::Instant;

use crate::zookeeper::{ZkOptions, ZkRegistry};

/// How long an ensemble may take to serve after its processes start.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How often a start is retried when a server dies at once (a port was taken).
const START_ATTEMPTS: usize = 3;
/// ZooKeeper's time unit. Short, so that elections and expiries are quick;
/// the minimum session timeout is two ticks.
const TICK_MS: u64 = 200;
/// The classic location of Debian's ZooKeeper jar.
const DEBIAN_JAR: &str = "/usr/share/java/zookeeper.jar";
/// A logger binding for the server's output, if Debian has it.
const DEBIAN_LOGGER: &str = "/usr/share/java/slf4j-simple.jar";

/// One ZooKeeper server process.
#[derive(Debug)]
pub struct Server {
    /// The server's id in the ensemble (`myid`), from 1.
    pub id: usize,
    /// The client address, `127.0.0.1:port`.
    pub endpoint: String,
    child: Option<Child>,
    watchdog: Option<(Child, ChildStdin)>,
    dir: TempDir,
}

impl Server {
    /// The process id, while the server runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The server's log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("zookeeper.log")
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Kills the process with SIGKILL (by PID, through its `Child`) and
    /// reaps it, then stops its watchdog.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some((mut watchdog, stdin)) = self.watchdog.take() {
            // The server is reaped, so its PID may be reused: stop the
            // watchdog before its stdin closes.
            let _ = watchdog.kill();
            let _ = watchdog.wait();
            drop(stdin);
        }
    }

    /// Starts the process (again), with the same configuration and data,
    /// appending to the same log.
    pub fn spawn(&mut self) {
        self.kill();
        let java = java_binary();
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open the ZooKeeper log");
        let child = Command::new(&java)
            .args([
                "-Xmx256m",
                "-Xms32m",
                "-XX:+UseSerialGC",
                "-XX:TieredStopAtLevel=1",
                "-Xss512k",
                "-Dorg.slf4j.simpleLogger.defaultLogLevel=info",
                "-Dzookeeper.admin.enableServer=false",
                "-cp",
                &class_path(),
                "org.apache.zookeeper.server.quorum.QuorumPeerMain",
            ])
            .arg(self.dir.path().join("zoo.cfg"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {}: {e}; run scripts/install-test-deps", java.display())
            });
        let pid = child.id().to_string();
        // On end of input: kill the server, then remove its directory (the
        // `TempDir` of a server in a `static` is never dropped).
        let script = "cat >/dev/null; kill -9 \"$1\" 2>/dev/null; sleep 1; rm -rf \"$2\"";
        let mut watchdog = Command::new("sh")
            .args(["-c", script, "zookeeper-watchdog", &pid])
            .arg(self.dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the ZooKeeper watchdog (sh)");
        let stdin = watchdog.stdin.take().expect("the watchdog's stdin is piped");
        self.child = Some(child);
        self.watchdog = Some((watchdog, stdin));
    }

    fn exited(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(Some(_))) | Some(Err(_)) => true,
            Some(Ok(None)) => false,
            None => true,
        }
    }

    /// The server's answer to `srvr`, if it answers.
    fn srvr(&self) -> Option<String> {
        let addr = self.endpoint.parse().ok()?;
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
        stream.write_all(b"srvr").ok()?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).ok()?;
        Some(answer)
    }

    /// The server's role (`standalone`, `leader`, `follower`) once it
    /// serves clients.
    pub fn mode(&self) -> Option<String> {
        let answer = self.srvr()?;
        answer.lines().find_map(|l| l.strip_prefix("Mode: ")).map(|m| m.trim().to_string())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Finds `java` or panics with what to do.
pub fn java_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("SHOAL_JAVA_BIN") {
        return PathBuf::from(bin);
    }
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|dir| dir.join("java"))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "java was not found in PATH: run scripts/install-test-deps (it installs \
                 Debian's zookeeper package, which brings a Java runtime), or set SHOAL_JAVA_BIN"
            )
        })
}

/// The server's class path, or a panic saying how to install it.
pub fn class_path() -> String {
    find_class_path(std::env::var("SHOAL_ZOOKEEPER_CLASSPATH").ok(), Path::new(DEBIAN_JAR))
        .unwrap_or_else(|message| panic!("{message}"))
}

fn find_class_path(override_cp: Option<String>, jar: &Path) -> Result<String, String> {
    if let Some(cp) = override_cp {
        return Ok(cp);
    }
    if !jar.is_file() {
        return Err(format!(
            "ZooKeeper was not found ({} is missing): run scripts/install-test-deps \
             (it installs Debian's zookeeper package), or set SHOAL_ZOOKEEPER_CLASSPATH",
            jar.display()
        ));
    }
    let mut cp = jar.display().to_string();
    if Path::new(DEBIAN_LOGGER).is_file() {
        cp = format!("{cp}:{DEBIAN_LOGGER}");
    }
    Ok(cp)
}

fn free_ports(count: usize) -> Vec<u16> {
    // Hold every listener until all ports are chosen, so they differ.
    let listeners: Vec<TcpListener> = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a free port on 127.0.0.1"))
        .collect();
    listeners.iter().map(|l| l.local_addr().expect("local address").port()).collect()
}

/// A running ZooKeeper: one standalone server or a quorum ensemble.
#[derive(Debug)]
pub struct ZkEnsemble {
    servers: Vec<Server>,
}

impl ZkEnsemble {
    /// Starts one standalone server.
    pub async fn single() -> Self {
        Self::start(1).await
    }

    /// One standalone server shared by every test of this test binary, for
    /// suites that isolate tests by namespace (a JVM per test would cost
    /// seconds and hundreds of megabytes each). Its watchdog stops it when
    /// the test binary exits.
    pub fn shared() -> &'static ZkEnsemble {
        static SHARED: OnceLock<ZkEnsemble> = OnceLock::new();
        SHARED.get_or_init(|| {
            // Started on a runtime of its own: the calling test's runtime
            // ends with that test, the server does not.
            std::thread::spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime to start ZooKeeper")
                    .block_on(Self::single())
            })
            .join()
            .expect("start the shared ZooKeeper")
        })
    }

    /// Starts an ensemble of `size` servers (a quorum when `size > 1`) and
    /// waits until every server serves clients. Panics (failing the test) if
    /// ZooKeeper is missing or will not start.
    pub async fn start(size: usize) -> Self {
        let mut last_error = String::new();
        for _ in 0..START_ATTEMPTS {
            let ports = free_ports(3 * size);
            let quorum: String = (0..size)
                .map(|i| {
                    let p = &ports[3 * i..3 * i + 3];
                    format!("server.{}=127.0.0.1:{}:{}\n", i + 1, p[1], p[2])
                })
                .collect();
            let servers =
                (0..size).map(|i| Self::spawn_server(i + 1, ports[3 * i], size, &quorum)).collect();
            let mut ensemble = Self { servers };
            match ensemble.wait_ready().await {
                Ok(()) => return ensemble,
                Err(e) => last_error = e,
            }
        }
        panic!("ZooKeeper did not start: {last_error}");
    }

    fn spawn_server(id: usize, client_port: u16, size: usize, quorum: &str) -> Server {
        let dir = tempfile::Builder::new().prefix("shoal-zookeeper-").tempdir().expect("temp dir");
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).expect("create the ZooKeeper data directory");
        std::fs::write(data.join("myid"), format!("{id}\n")).expect("write myid");
        let mut config = format!(
            "tickTime={TICK_MS}\n\
             initLimit=50\n\
             syncLimit=10\n\
             dataDir={}\n\
             clientPort={client_port}\n\
             clientPortAddress=127.0.0.1\n\
             admin.enableServer=false\n\
             4lw.commands.whitelist=srvr\n\
             maxSessionTimeout=300000\n\
             preAllocSize=1024\n\
             snapCount=10000\n",
            data.display()
        );
        if size > 1 {
            config.push_str("standaloneEnabled=false\nreconfigEnabled=false\n");
            config.push_str(quorum);
        }
        std::fs::write(dir.path().join("zoo.cfg"), config).expect("write zoo.cfg");
        let mut server = Server {
            id,
            endpoint: format!("127.0.0.1:{client_port}"),
            child: None,
            watchdog: None,
            dir,
        };
        server.spawn();
        server
    }

    async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        for i in 0..self.servers.len() {
            loop {
                if self.servers[i].exited() {
                    let s = &self.servers[i];
                    return Err(format!("server {} exited:\n{}", s.id, s.log_tail()));
                }
                if self.servers[i].mode().is_some() {
                    break;
                }
                if Instant::now() > deadline {
                    let s = &self.servers[i];
                    return Err(format!("server {} not ready in time:\n{}", s.id, s.log_tail()));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    /// The servers, in id order.
    pub fn servers(&self) -> &[Server] {
        &self.servers
    }

    /// The `registry` setting that names every server: `zk://a,b,c`.
    pub fn registry_url(&self) -> String {
        let all: Vec<&str> = self.servers.iter().map(|s| s.endpoint.as_str()).collect();
        format!("zk://{}", all.join(","))
    }

    /// Options for a registry client of every server under `namespace`,
    /// with a retry policy suited to tests (quick retries, bounded waits).
    pub fn options(&self, namespace: &str) -> ZkOptions {
        ZkOptions {
            endpoints: self.servers.iter().map(|s| s.endpoint.clone()).collect(),
            namespace: namespace.into(),
            retry_interval: Duration::from_millis(200),
            max_retries: 25,
            operation_timeout: Duration::from_secs(2),
            ..ZkOptions::default()
        }
    }

    /// A connected registry client under `namespace`.
    pub async fn registry(&self, namespace: &str) -> ZkRegistry {
        ZkRegistry::connect(self.options(namespace)).await.expect("connect to the test ZooKeeper")
    }

    /// Kills server `i` (an index into [`ZkEnsemble::servers`]) with SIGKILL.
    pub fn kill(&mut self, i: usize) {
        self.servers[i].kill();
    }

    /// Restarts server `i` (after [`ZkEnsemble::kill`]) and waits until it
    /// serves again.
    pub async fn restart(&mut self, i: usize) {
        self.servers[i].spawn();
        let deadline = Instant::now() + START_TIMEOUT;
        while self.servers[i].mode().is_none() {
            let s = &mut self.servers[i];
            if s.exited() || Instant::now() > deadline {
                panic!("server {} did not come back:\n{}", s.id, s.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The index of the server that leads the quorum (or the standalone
    /// server), asking each running server for its role.
    pub fn leader(&self) -> Option<usize> {
        self.servers.iter().position(|s| {
            s.child.is_some() && matches!(s.mode().as_deref(), Some("leader" | "standalone"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_zookeeper_says_how_to_install_it() {
        let empty = tempfile::tempdir().expect("temp dir");
        let err = find_class_path(None, &empty.path().join("zookeeper.jar")).unwrap_err();
        assert!(err.contains("run scripts/install-test-deps"), "{err}");
        assert!(err.contains("SHOAL_ZOOKEEPER_CLASSPATH"), "{err}");
        assert_eq!(find_class_path(Some("x.jar".into()), Path::new("/nowhere")).unwrap(), "x.jar");
    }
}
