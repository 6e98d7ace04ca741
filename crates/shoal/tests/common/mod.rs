//! Starts real `shoal` processes for tests.
//!
//! Each server gets its own directory (data, logs, the address file), binds
//! port 0 and reports the port it got through `--addr-file`, so tests run in
//! parallel without fixed ports. Dropping a [`Server`] kills its process.

#![allow(dead_code)]

pub mod cluster;
pub mod meta;
pub mod python;
pub mod seed;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use shoal_client::Client;

/// How the server keeps its data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `--memory`.
    Memory,
    /// `--data-dir DIR/data`.
    Standalone,
}

/// A running `shoal serve`.
pub struct Server {
    pub mode: Mode,
    pub dir: PathBuf,
    pub url: String,
    pub token: String,
    child: Option<Child>,
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_shoal")
}

impl Server {
    /// Starts a server in a new temporary directory.
    pub fn start(mode: Mode, extra: &[&str]) -> (tempfile::TempDir, Server) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let s = Server::start_in(mode, tmp.path(), extra);
        (tmp, s)
    }

    /// Starts a server whose files live in `dir` (reused across restarts).
    pub fn start_in(mode: Mode, dir: &Path, extra: &[&str]) -> Server {
        let addr_file = dir.join("addr");
        let _ = std::fs::remove_file(&addr_file);
        let n = std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0);
        let stdout = std::fs::File::create(dir.join(format!("stdout.{n}"))).expect("stdout file");
        let stderr = std::fs::File::create(dir.join(format!("stderr.{n}"))).expect("stderr file");
        let mut cmd = Command::new(bin());
        cmd.arg("serve").args(["--listen", "127.0.0.1:0", "--addr-file"]).arg(&addr_file);
        match mode {
            Mode::Memory => cmd.arg("--memory"),
            Mode::Standalone => cmd.arg("--data-dir").arg(dir.join("data")),
        };
        cmd.args(extra)
            .env_remove("SHOAL_ADMIN_TOKEN")
            .env("SHOAL_LOG", log_filter())
            .stdin(Stdio::null())
            .stdout(stdout.try_clone().expect("clone"))
            .stderr(stderr);
        let child = cmd.spawn().expect("start shoal");
        let mut server = Server {
            mode,
            dir: dir.to_path_buf(),
            url: String::new(),
            token: String::new(),
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(addr) = std::fs::read_to_string(&addr_file).ok().filter(|a| !a.is_empty()) {
                server.url = format!("http://{addr}");
                break;
            }
            if let Some(status) = server.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("shoal exited with {status} before listening:\n{}", server.logs());
            }
            assert!(Instant::now() < deadline, "shoal did not start in time:\n{}", server.logs());
            std::thread::sleep(Duration::from_millis(20));
        }
        server.token = match extra.iter().position(|a| *a == "--admin-token") {
            Some(i) => extra[i + 1].to_string(),
            None => match mode {
                Mode::Standalone => std::fs::read_to_string(dir.join("data").join("admin.token"))
                    .expect("admin.token")
                    .trim()
                    .to_string(),
                Mode::Memory => server.printed_token(),
            },
        };
        server
    }

    /// The token a memory server printed.
    fn printed_token(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = self.stdout();
            if let Some(line) = out.lines().find(|l| l.starts_with("Admin token (this run only): "))
            {
                return line.trim_start_matches("Admin token (this run only): ").trim().to_string();
            }
            assert!(Instant::now() < deadline, "no token printed:\n{out}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything the process printed to stdout, over all its runs in this dir.
    pub fn stdout(&self) -> String {
        let mut names: Vec<_> = std::fs::read_dir(&self.dir)
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_default();
        names.sort();
        names
            .iter()
            .filter(|p| {
                p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("stdout."))
            })
            .map(|p| std::fs::read_to_string(p).unwrap_or_default())
            .collect()
    }

    /// stdout and stderr, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        if let Ok(d) = std::fs::read_dir(&self.dir) {
            for e in d.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if name.starts_with("stdout.") || name.starts_with("stderr.") {
                    out += &format!(
                        "--- {name}\n{}\n",
                        std::fs::read_to_string(e.path()).unwrap_or_default()
                    );
                }
            }
        }
        out
    }

    /// A client with the admin token.
    pub fn client(&self) -> Client {
        Client::new(&self.url, Some(self.token.clone())).expect("client")
    }

    /// What its `/metrics` says now.
    pub async fn metrics(&self) -> String {
        let resp = reqwest::get(format!("{}/metrics", self.url)).await.expect("metrics");
        resp.text().await.expect("metrics text")
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Kills the process with SIGKILL and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the process with SIGTERM and waits (bounded) for it to exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let c = self.child.take().expect("running");
        terminate_child(c, Duration::from_secs(10), || "shoal did not stop on SIGTERM".into())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs the `shoal` CLI with `args` against `server`; returns (success, stdout, stderr).
pub fn cli(server: &Server, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(bin())
        .args(args)
        .env("SHOAL_ENDPOINT", &server.url)
        .env("SHOAL_TOKEN", &server.token)
        .stdin(Stdio::null())
        .output()
        .expect("run shoal cli");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Creates a base through `client` (retrying while the cluster settles)
/// with one table, made by `create`.
pub async fn base_with_table(client: &Client, create: &str) -> shoal_types::BaseId {
    let base = eventually("create a base", || client.create_base(None, None)).await.id;
    let ddl = vec![shoal_types::api::Statement { sql: create.into(), params: Default::default() }];
    client.execute(base, ddl, true).await.expect("create the table");
    base
}

/// Retries `f` until it succeeds (bounded: 60 s), e.g. while a cluster is
/// still placing buckets.
pub async fn eventually<T, F: Future<Output = shoal_types::Result<T>>>(
    what: &str,
    mut f: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) => assert!(Instant::now() < deadline, "{what}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Sends SIGTERM to `child` and waits up to `within` for it to exit; past
/// that, kills it and panics with `what()`.
fn terminate_child(
    mut c: Child,
    within: Duration,
    what: impl FnOnce() -> String,
) -> std::process::ExitStatus {
    let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
    let deadline = Instant::now() + within;
    loop {
        if let Some(s) = c.try_wait().expect("wait") {
            return s;
        }
        if Instant::now() > deadline {
            let _ = c.kill();
            panic!("{}", what());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Any `shoal` server command (`node`, `monitor`, ...) in its own directory,
/// on a free port. Dropping it kills the process.
pub struct Process {
    pub dir: PathBuf,
    pub url: String,
    args: Vec<String>,
    child: Option<Child>,
    runs: usize,
    /// The address it listens on (port 0: any free port).
    host: String,
    /// The user id it runs as, if not the test's own.
    uid: Option<u32>,
    /// Variables set for it (every other SHOAL_* variable is removed).
    env: Vec<(String, String)>,
}

impl Process {
    /// Starts `shoal ARGS --listen 127.0.0.1:0 --addr-file DIR/addr` and waits for it to listen.
    pub fn start(dir: &Path, args: &[String]) -> Process {
        Process::start_as(dir, args, "127.0.0.1", None)
    }

    /// Starts it listening on `host` (port 0), as user `uid` if given (the
    /// directory is then made over to that user). A process of its own
    /// user can be told apart by packet filters (`-m owner --uid-owner`).
    pub fn start_as(dir: &Path, args: &[String], host: &str, uid: Option<u32>) -> Process {
        Process::launch(dir, args, host, uid, &[])
    }

    fn launch(
        dir: &Path,
        args: &[String],
        host: &str,
        uid: Option<u32>,
        env: &[(String, String)],
    ) -> Process {
        std::fs::create_dir_all(dir).expect("process dir");
        if let Some(uid) = uid {
            std::os::unix::fs::chown(dir, Some(uid), Some(uid)).expect("chown process dir");
        }
        let mut p = Process {
            dir: dir.to_path_buf(),
            url: String::new(),
            args: args.to_vec(),
            child: None,
            runs: 0,
            host: host.to_string(),
            uid,
            env: env.to_vec(),
        };
        p.spawn(&format!("{host}:0"));
        p
    }

    /// Starts `shoal ARGS` as [`Process::start`] does, with the variables
    /// `env` set.
    pub fn start_with_env(dir: &Path, args: &[String], env: &[(String, String)]) -> Process {
        Process::launch(dir, args, "127.0.0.1", None, env)
    }

    /// The user id it runs as, if not the test's own.
    pub fn uid(&self) -> Option<u32> {
        self.uid
    }

    fn spawn(&mut self, listen: &str) {
        let addr_file = self.dir.join("addr");
        let _ = std::fs::remove_file(&addr_file);
        self.runs += 1;
        let stdout =
            std::fs::File::create(self.dir.join(format!("stdout.{}", self.runs))).expect("stdout");
        let stderr =
            std::fs::File::create(self.dir.join(format!("stderr.{}", self.runs))).expect("stderr");
        let mut cmd = Command::new(bin());
        cmd.args(&self.args).args(["--listen", listen, "--addr-file"]).arg(&addr_file);
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("SHOAL_")) {
            cmd.env_remove(k);
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        if let Some(uid) = self.uid {
            use std::os::unix::process::CommandExt;
            cmd.uid(uid).gid(uid);
        }
        let child = cmd
            .env("SHOAL_LOG", log_filter())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("spawn");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(addr) = std::fs::read_to_string(&addr_file).ok().filter(|a| !a.is_empty()) {
                self.url = format!("http://{addr}");
                return;
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("shoal {:?} exited with {status}:\n{}", self.args, self.logs());
            }
            assert!(
                Instant::now() < deadline,
                "shoal {:?} did not start:\n{}",
                self.args,
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills it with SIGKILL.
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops it with SIGTERM and waits (bounded) for it to exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let c = self.child.take().expect("running");
        terminate_child(c, Duration::from_secs(30), || {
            format!("shoal {:?} did not stop on SIGTERM:\n{}", self.args, self.logs())
        })
    }

    /// Starts it again with the same arguments and directory.
    pub fn restart(&mut self) {
        self.kill();
        let listen = format!("{}:0", self.host);
        self.spawn(&listen);
    }

    /// Starts it again on the port it had, as a server with a fixed address
    /// would be restarted.
    pub fn restart_same_port(&mut self) {
        self.kill();
        let listen = self.url.trim_start_matches("http://").to_string();
        self.spawn(&listen);
    }

    /// Its output so far.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for run in 1..=self.runs {
            for f in ["stdout", "stderr"] {
                let text = std::fs::read_to_string(self.dir.join(format!("{f}.{run}")))
                    .unwrap_or_default();
                out += &format!("--- {f}.{run}\n{text}\n");
            }
        }
        out
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The log filter of the processes tests start: `SHOAL_TEST_LOG`, else
/// info with raft-rs's own lines at warn.
pub fn log_filter() -> String {
    std::env::var("SHOAL_TEST_LOG").unwrap_or_else(|_| "info,raft=warn".into())
}
