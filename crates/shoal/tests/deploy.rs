//! The files under `deploy/`: each systemd unit passes `systemd-analyze
//! verify` without a warning (with ExecStart pointed at the binary under
//! test), and every variable its example environment file sets is one the
//! command it runs reads.

mod common;

use std::path::Path;
use std::process::Command;

const UNITS: [(&str, &str, &str); 3] = [
    ("shoal-node.service", "node.env.example", "node"),
    ("shoal-monitor.service", "monitor.env.example", "monitor"),
    ("shoal-proxy.service", "proxy.env.example", "proxy"),
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
