//! Python scripts that tests run with a virtual environment which
//! `scripts/install-test-deps` makes under `target/`: each prints one line
//! per check and exits 0 only if every check passes.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The repository's root.
pub fn repo_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("..");
    root.canonicalize().unwrap_or(root)
}

/// The python of `target/VENV`, once it can import `module`.
pub fn venv_python(venv: &str, module: &str) -> PathBuf {
    let dir = repo_root().join("target").join(venv);
    let python = dir.join("bin").join("python");
    let ready = Command::new(&python)
        .args(["-c", &format!("import {module}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ready, "{module} is not installed in {}: run scripts/install-test-deps", dir.display());
    python
}

/// Runs `script` with `python` and `env` in a fresh directory, killing it
/// past `timeout`; panics with its output and `logs()` (the servers') unless
/// it exits 0. Returns its stdout.
pub async fn run(
    python: &Path,
    script: &Path,
    env: &[(&str, &str)],
    timeout: Duration,
    logs: &(dyn Fn() -> String + Sync),
) -> String {
    let name = script.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let dir = tempfile::tempdir().expect("tempdir");
    let (out_path, err_path) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut cmd = Command::new(python);
    cmd.arg(script)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).expect("stdout file"))
        .stderr(std::fs::File::create(&err_path).expect("stderr file"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1")
        // The servers are on loopback: no proxy of the environment in between.
        .env("NO_PROXY", "*")
        .env("no_proxy", "*");
    for var in [
        "PYTHONPATH",
        "PYTHONHOME",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied());
    let mut child = cmd.spawn().expect("start python");
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for python") {
            break Some(status);
        }
        if Instant::now() > deadline {
            // SIGKILL to the child's pid.
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    let what = match status {
        Some(s) if s.success() => return stdout,
        Some(s) => format!("{name} exited with {s}"),
        None => format!("{name} did not finish within {timeout:?} and was killed"),
    };
    panic!(
        "{what}\n--- {name} stdout\n{stdout}\n--- {name} stderr\n{stderr}\n--- servers\n{}",
        logs()
    );
}
