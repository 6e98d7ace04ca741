//! `shoal serve` configuration: shoal.toml < SHOAL_* environment < flags, and
//! start-up failures that name the bad key or the unreachable registry.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use shoal_registry::testing::etcd_server::EtcdCluster;
use shoal_registry::testing::zookeeper_server::ZkEnsemble;

/// Runs `shoal serve --memory` in `dir` with `args` and `env`; returns
/// (exited, stdout, stderr). A server that starts is stopped as soon as it
/// has printed its registry line.
fn serve(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let addr = dir.join("addr");
    let _ = std::fs::remove_file(&addr);
    let out = dir.join("out");
    let err = dir.join("err");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_shoal"));
    cmd.args(["serve", "--memory", "--listen", "127.0.0.1:0", "--addr-file"])
        .arg(&addr)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).expect("out"))
        .stderr(std::fs::File::create(&err).expect("err"));
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("SHOAL_")) {
        cmd.env_remove(k);
    }
    cmd.envs(env.iter().copied());
    let mut child = cmd.spawn().expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(30);
    let exited = loop {
        if child.try_wait().expect("wait").is_some() {
            break true;
        }
        if std::fs::read_to_string(&out).unwrap_or_default().contains("Registry:") {
            let _ = child.kill();
            let _ = child.wait();
            break false;
        }
        assert!(Instant::now() < deadline, "shoal neither started nor failed");
        std::thread::sleep(Duration::from_millis(20));
    };
    (
        exited,
        std::fs::read_to_string(&out).unwrap_or_default(),
        std::fs::read_to_string(&err).unwrap_or_default(),
    )
}

#[test]
fn layers_file_env_flags() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("shoal.toml"), "namespace = \"fromfile\"\nnode_ttl = \"30s\"\n")
        .expect("write");
    let (exited, out, err) = serve(dir.path(), &[], &[]);
    assert!(!exited, "{err}");
    assert!(out.contains("Registry: memory (namespace fromfile, node_ttl 30s)"), "{out}");
    let (_, out, _) = serve(dir.path(), &[], &[("SHOAL_NAMESPACE", "fromenv")]);
    assert!(out.contains("namespace fromenv, node_ttl 30s"), "{out}");
    let (_, out, _) =
        serve(dir.path(), &["--namespace", "fromflag"], &[("SHOAL_NAMESPACE", "fromenv")]);
    assert!(out.contains("namespace fromflag"), "{out}");
    // --config and SHOAL_CONFIG name another file.
    std::fs::write(dir.path().join("other.toml"), "namespace = \"other\"\n").expect("write");
    let (_, out, _) = serve(dir.path(), &["--config", "other.toml"], &[]);
    assert!(out.contains("namespace other, node_ttl 1m 30s"), "{out}");
    let (_, out, _) = serve(dir.path(), &[], &[("SHOAL_CONFIG", "other.toml")]);
    assert!(out.contains("namespace other"), "{out}");
}

#[test]
fn bad_settings_fail_start_up_naming_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("shoal.toml"), "nodettl = \"5s\"\n").expect("write");
    let (exited, _, err) = serve(dir.path(), &[], &[]);
    assert!(exited && err.contains("unknown key \"nodettl\""), "{err}");
    std::fs::write(dir.path().join("shoal.toml"), "node_ttl = [1]\n").expect("write");
    let (exited, _, err) = serve(dir.path(), &[], &[]);
    assert!(exited && err.contains("node_ttl"), "{err}");
    std::fs::write(dir.path().join("shoal.toml"), "this is not toml").expect("write");
    let (exited, _, err) = serve(dir.path(), &[], &[]);
    assert!(exited && err.contains("not valid TOML"), "{err}");
    std::fs::remove_file(dir.path().join("shoal.toml")).expect("rm");
    let (exited, _, err) = serve(dir.path(), &[], &[("SHOAL_NODE_TTL", "abc")]);
    assert!(exited && err.contains("SHOAL_NODE_TTL") && err.contains("abc"), "{err}");
    let (exited, _, err) = serve(dir.path(), &["--max-retries", "many"], &[]);
    assert!(exited && err.contains("--max-retries"), "{err}");
    let (exited, _, err) = serve(dir.path(), &["--registry", "zookeeper://x"], &[]);
    assert!(exited && err.contains("--registry"), "{err}");
    let (exited, _, err) = serve(dir.path(), &["--registry", "zk://127.0.0.1:2181,h2"], &[]);
    assert!(exited && err.contains("--registry: ZooKeeper endpoint \"h2\" has no port"), "{err}");
    let (exited, _, err) = serve(dir.path(), &[], &[("SHOAL_REGISTRY", "zk://h1:2181/chroot")]);
    assert!(
        exited
            && err.contains("SHOAL_REGISTRY")
            && err.contains("the chroot is the namespace setting"),
        "{err}"
    );
    let (exited, _, err) = serve(dir.path(), &["--config", "missing.toml"], &[]);
    assert!(exited && err.contains("missing.toml"), "{err}");
}

#[test]
fn unreachable_etcd_fails_start_up_naming_the_endpoints() {
    let err = unreachable_registry_fails_start_up("etcd://127.0.0.1:1,127.0.0.1:2");
    assert!(err.contains("127.0.0.1:1") && err.contains("127.0.0.1:2"), "{err}");
}

/// Starts `serve` on a registry nobody answers at, with one quick retry;
/// it must exit. Its standard error.
fn unreachable_registry_fails_start_up(url: &str) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let (exited, _, err) = serve(
        dir.path(),
        &[
            "--registry",
            url,
            "--max-retries",
            "1",
            "--retry-interval",
            "100ms",
            "--operation-timeout",
            "1s",
        ],
        &[],
    );
    assert!(exited, "{err}");
    err
}

#[tokio::test]
async fn starts_against_a_real_etcd() {
    let etcd = EtcdCluster::single().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let url = etcd.registry_url();
    let (exited, out, err) =
        serve(dir.path(), &["--registry", &url, "--namespace", "cfgtest"], &[]);
    assert!(!exited, "{err}");
    assert!(out.contains("Registry: etcd") && out.contains("namespace cfgtest"), "{out}");
}

#[test]
fn unreachable_zookeeper_fails_start_up_naming_the_endpoints() {
    let err = unreachable_registry_fails_start_up("zk://127.0.0.1:1,127.0.0.1:2");
    assert!(err.contains("ZooKeeper endpoints 127.0.0.1:1,127.0.0.1:2 did not answer"), "{err}");
}

#[tokio::test]
async fn starts_against_a_real_zookeeper() {
    let zk = ZkEnsemble::single().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let url = zk.registry_url();
    let (exited, out, err) =
        serve(dir.path(), &["--registry", &url, "--namespace", "cfgtest"], &[]);
    assert!(!exited, "{err}");
    assert!(out.contains(&format!("Registry: {url} (namespace cfgtest)")), "{out}");
}

#[test]
fn raft_settings_are_layered_and_checked() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The example file is valid as it stands, [raft] table included.
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/shoal.example.toml");
    std::fs::copy(example, dir.path().join("shoal.toml")).expect("copy");
    let (exited, _, err) = serve(dir.path(), &[], &[]);
    assert!(!exited, "the example configuration was refused: {err}");
    // A bad value names its key, in each layer.
    std::fs::write(dir.path().join("shoal.toml"), "[raft]\nelection_ticks = 2\n").expect("write");
    let (exited, _, err) = serve(dir.path(), &[], &[]);
    assert!(
        exited && err.contains("election_ticks (2) must be larger than heartbeat_ticks"),
        "{err}"
    );
    std::fs::write(dir.path().join("shoal.toml"), "[raft]\nticks = \"1s\"\n").expect("write");
    let (exited, _, err) = serve(dir.path(), &[], &[]);
    assert!(exited && err.contains("unknown key \"ticks\""), "{err}");
    std::fs::remove_file(dir.path().join("shoal.toml")).expect("rm");
    let (exited, _, err) = serve(dir.path(), &[], &[("SHOAL_RAFT_TICK", "soon")]);
    assert!(exited && err.contains("SHOAL_RAFT_TICK: invalid duration"), "{err}");
    let (exited, _, err) = serve(dir.path(), &["--raft-keep-logs", "0"], &[]);
    assert!(
        exited && err.contains("--raft-keep-logs: expected a whole number of at least 1"),
        "{err}"
    );
    // Good values in every layer start the server.
    let (exited, _, err) = serve(
        dir.path(),
        &["--raft-heartbeat-ticks", "3"],
        &[("SHOAL_RAFT_TICK", "50ms"), ("SHOAL_RAFT_ELECTION_TICKS", "20")],
    );
    assert!(!exited, "{err}");
}

#[test]
fn every_flag_of_a_command_can_come_from_its_table() {
    let dir = tempfile::tempdir().expect("tempdir");
    let toml = |text: &str| std::fs::write(dir.path().join("shoal.toml"), text).expect("write");
    // A value from [serve] is the flag's value...
    toml("[serve]\nmax_open_bases = 0\n");
    let (exited, _, err) = serve(dir.path(), &[], &[]);
    assert!(exited && err.contains("--max-open-bases"), "the file's value was not used: {err}");
    // ...below the environment and the flag.
    let (exited, _, err) = serve(dir.path(), &[], &[("SHOAL_MAX_OPEN_BASES", "5")]);
    assert!(!exited, "{err}");
    let (exited, _, err) = serve(dir.path(), &["--max-open-bases", "5"], &[]);
    assert!(!exited, "{err}");
    // Dashes or underscores; registry keys stay at the top level beside it.
    toml("namespace = \"top\"\n[serve]\nmax-sql-length = 0\n");
    let (exited, _, err) = serve(dir.path(), &[], &[]);
    assert!(exited && err.contains("--max-sql-length"), "{err}");
    // Mistakes name the key.
    toml("[serve]\nlisten_addr = \"127.0.0.1:1\"\n");
    let (exited, _, err) = serve(dir.path(), &[], &[]);
    assert!(exited && err.contains("[serve] listen_addr: unknown key"), "{err}");
    assert!(err.contains("listen"), "the known flags are not listed: {err}");
    toml("[serve]\nnamespace = \"x\"\n");
    let (exited, _, err) = serve(dir.path(), &[], &[]);
    assert!(exited && err.contains("top level"), "{err}");
    toml("[serve]\nlisten = [1]\n");
    let (exited, _, err) = serve(dir.path(), &[], &[]);
    assert!(exited && err.contains("[serve] listen: expected a string"), "{err}");
}
