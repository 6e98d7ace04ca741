//! The files under `deploy/`: each systemd unit passes `systemd-analyze
//! verify` without a warning (with ExecStart pointed at the binary under
//! test), and every variable its example environment file sets is one the
//! command it runs reads. The compose file passes `docker-compose config`,
//! and the cluster it describes, started from its services' commands and
//! variables as local processes, comes up and serves through its proxy.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::Process;
use common::cluster::{Cluster, TOKEN};

const UNITS: [(&str, &str, &str); 4] = [
    ("shoal-node.service", "node.env.example", "node"),
    ("shoal-monitor.service", "monitor.env.example", "monitor"),
    ("shoal-proxy.service", "proxy.env.example", "proxy"),
    ("shoal-meta.service", "meta.env.example", "meta"),
];

fn deploy() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/systemd")
}

#[test]
fn systemd_units_verify_cleanly() {
    let tmp = tempfile::tempdir().expect("tempdir");
    for (unit, env, _) in UNITS {
        let text = std::fs::read_to_string(deploy().join(unit)).expect("unit");
        assert!(text.contains("ExecStart=/usr/local/bin/shoal "), "{unit}");
        let text = text
            .replace("/usr/local/bin/shoal", common::bin())
            .replace("/etc/shoal/", &format!("{}/", tmp.path().display()));
        std::fs::write(tmp.path().join(unit), text).expect("write unit");
        std::fs::copy(deploy().join(env), tmp.path().join(env.trim_end_matches(".example")))
            .expect("env file");
        let out = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(tmp.path().join(unit))
            .output()
            .expect("systemd-analyze (scripts/install-test-deps installs it)");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && err.trim().is_empty(), "{unit}: {err}");
    }
}

#[test]
fn example_environments_set_only_what_the_commands_read() {
    for (_, env, command) in UNITS {
        let help = Command::new(common::bin()).args([command, "--help"]).output().expect("help");
        let help = String::from_utf8_lossy(&help.stdout);
        let text = std::fs::read_to_string(deploy().join(env)).expect("env");
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
            let (key, _) = line.split_once('=').expect("KEY=value");
            assert!(help.contains(key), "{env}: `shoal {command}` does not read {key}");
        }
    }
}

fn docker_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/docker")
}

/// One Shoal service of the compose file: its command and variables.
#[derive(Debug, Default)]
struct Service {
    command: Vec<String>,
    env: BTreeMap<String, String>,
    shoal: bool,
}

/// `docker-compose config` of the compose file with `token` as the admin
/// token: (success, stdout, stderr).
fn compose_config(token: Option<&str>) -> (bool, String, String) {
    let mut cmd = Command::new("docker-compose");
    cmd.arg("-f").arg(docker_dir().join("compose.yaml")).arg("config");
    cmd.env_remove("SHOAL_ADMIN_TOKEN");
    if let Some(t) = token {
        cmd.env("SHOAL_ADMIN_TOKEN", t);
    }
    let out = cmd.output().expect("docker-compose (scripts/install-test-deps installs it)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The services of `docker-compose config`'s normalised output (two spaces
/// per level, commands as lists, variables as a map).
fn services(config: &str) -> BTreeMap<String, Service> {
    let mut out: BTreeMap<String, Service> = BTreeMap::new();
    let (mut in_services, mut current, mut section) = (false, None::<String>, "");
    for line in config.lines() {
        let indent = line.len() - line.trim_start().len();
        let text = line.trim();
        if indent == 0 {
            in_services = text == "services:";
            continue;
        }
        if !in_services {
            continue;
        }
        if indent == 2 {
            let name = text.trim_end_matches(':').to_string();
            out.entry(name.clone()).or_default();
            current = Some(name);
            section = "";
            continue;
        }
        let Some(service) = current.as_ref().and_then(|c| out.get_mut(c)) else { continue };
        if let Some(item) = text.strip_prefix("- ") {
            if section == "command" {
                service.command.push(item.to_string());
            }
            continue;
        }
        if indent == 4 {
            section = match text {
                "command:" => "command",
                "environment:" => "environment",
                _ => "",
            };
            if text == "image: shoal:latest" {
                service.shoal = true;
            }
            continue;
        }
        match section {
            "environment" if indent == 6 => {
                let (k, v) = text.split_once(": ").expect("KEY: value");
                service.env.insert(k.to_string(), v.trim_matches('\'').to_string());
            }
            _ => {}
        }
    }
    out
}

#[test]
fn compose_file_is_valid_and_needs_a_token() {
    let (ok, config, err) = compose_config(Some("a-token"));
    assert!(ok, "docker-compose config: {err}");
    let services = services(&config);
    let shoal: Vec<&String> = services.iter().filter(|(_, s)| s.shoal).map(|(n, _)| n).collect();
    assert_eq!(shoal, ["monitor", "n1", "n2", "n3", "proxy"], "{config}");
    for (name, service) in services.iter().filter(|(_, s)| s.shoal) {
        let command = service.command.first().unwrap_or_else(|| panic!("{name} has no command"));
        let help = Command::new(common::bin()).args([command, "--help"]).output().expect("help");
        let help = String::from_utf8_lossy(&help.stdout);
        for key in service.env.keys() {
            assert!(help.contains(key), "{name}: `shoal {command}` does not read {key}");
        }
        assert_eq!(service.env["SHOAL_ADMIN_TOKEN"], "a-token", "{name}");
    }
    // Without a token the file refuses to start anything, and says why.
    let (ok, _, err) = compose_config(None);
    assert!(!ok && err.contains("set SHOAL_ADMIN_TOKEN"), "{err}");
}

#[test]
fn dockerfile_settings_are_read_by_serve_and_the_build_context_leaves_target_out() {
    let text = std::fs::read_to_string(docker_dir().join("Dockerfile")).expect("Dockerfile");
    assert!(text.contains("cargo build --release --locked -p shoal"), "{text}");
    assert!(text.contains("ENTRYPOINT [\"shoal\"]"), "{text}");
    let help = Command::new(common::bin()).args(["serve", "--help"]).output().expect("help");
    let help = String::from_utf8_lossy(&help.stdout);
    let keys: Vec<&str> = text
        .split(|c: char| c.is_whitespace() || c == '=')
        .filter(|w| {
            w.starts_with("SHOAL_") && w.bytes().all(|b| b.is_ascii_uppercase() || b == b'_')
        })
        .collect();
    assert!(keys.len() >= 2, "{text}");
    for key in keys {
        assert!(help.contains(key), "the Dockerfile sets {key}, which `shoal serve` does not read");
    }
    let ignore = std::fs::read_to_string(docker_dir().join("../../.dockerignore")).expect("ignore");
    assert!(ignore.lines().any(|l| l.trim() == "target/"), "{ignore}");
}

/// The compose file's cluster, as processes on this machine: every Shoal
/// service runs its command with its variables, but for what only Docker's
/// network gives (host names: the registry is the test's etcd, each process
/// listens on a free port of 127.0.0.1 and advertises it) and the namespace
/// (the test's). Three nodes in three zones, replication factor 3, and a
/// write and a read through the proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compose_cluster_comes_up_and_serves_through_its_proxy() {
    let (ok, config, err) = compose_config(Some(TOKEN));
    assert!(ok, "docker-compose config: {err}");
    let services = services(&config);
    let mut cluster = Cluster::new().await;
    let env_of = |service: &Service| -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = service
            .env
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "SHOAL_NODE_URL" | "SHOAL_LISTEN"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        env.retain(|(k, _)| k != "SHOAL_REGISTRY" && k != "SHOAL_NAMESPACE");
        env.push(("SHOAL_REGISTRY".into(), cluster.server.registry_url()));
        env.push(("SHOAL_NAMESPACE".into(), "clustertest".into()));
        env
    };
    let mut started = Vec::new();
    for name in ["n1", "n2", "n3", "monitor"] {
        let service = &services[name];
        let mut env = env_of(service);
        if name.starts_with('n') {
            let data = cluster.dir.path().join(name).join("data");
            env.push(("SHOAL_DATA_DIR".into(), data.display().to_string()));
        }
        let dir = cluster.dir.path().join(name);
        started.push((name, Process::start_with_env(&dir, &service.command, &env)));
    }
    for (name, p) in started {
        if name == "monitor" {
            cluster.monitors.push(p);
        } else {
            cluster.nodes.insert(name.to_string(), p);
        }
    }
    cluster.wait_three_replicas().await;
    let proxy_dir = cluster.dir.path().join("proxy");
    let proxy = Process::start_with_env(
        &proxy_dir,
        &services["proxy"].command,
        &env_of(&services["proxy"]),
    );
    let client = shoal_client::Client::new(&proxy.url, Some(TOKEN.into())).expect("client");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        let s = client.cluster_status().await.expect("status through the proxy");
        if s.nodes.iter().filter(|n| n.live).count() == 3 || Instant::now() > deadline {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let zones: std::collections::BTreeSet<&str> =
        status.nodes.iter().map(|n| n.zone.as_str()).collect();
    assert_eq!(zones.len(), 3, "{status:?}");
    let id = shoal_types::BaseId::random();
    common::eventually("a base through the proxy", || {
        client.create_base(Some(id), Some("compose".into()))
    })
    .await;
    let write = || shoal_types::api::Statement {
        sql: "CREATE TABLE t (v TEXT)".into(),
        params: Default::default(),
    };
    common::eventually("a write through the proxy", || client.execute(id, vec![write()], false))
        .await;
    let checksum = cluster.equal_checksums(&id.to_string()).await;
    assert!(!checksum.is_empty());
    drop(proxy);
}
