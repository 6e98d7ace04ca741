//! The web console in a real headless Chromium (Debian's `chromium` and
//! `chromium-driver`, driven by selenium from `target/console-venv`; both
//! installed by `scripts/install-test-deps`) against a real three-node
//! cluster on a real etcd, and through a proxy. The browser steps are in
//! `tests/console/console.py`; it prints one line per check.
//!
//! Set `SHOAL_CONSOLE_SCREENSHOTS=DIR` to keep the screenshots it takes
//! (1280x800; `docs/console/` holds the committed ones).

mod common;

use std::path::Path;
use std::time::Duration;

use common::cluster::{Cluster, TOKEN};
use common::python;

/// How long the browser script may run.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(300);

#[tokio::test]
async fn console_signs_in_shows_the_cluster_runs_sql_and_follows_a_node_kill() {
    let python = python::venv_python("console-venv", "selenium");
    for program in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
        assert!(Path::new(program).exists(), "{program} is missing: run scripts/install-test-deps");
    }
    let mut c = Cluster::new().await;
    c.start_three_nodes();
    c.wait_three_replicas().await;
    let proxy = c.start_proxy(0, &[]);
    let ids: Vec<String> = c.nodes.keys().cloned().collect();
    let urls: Vec<String> = c.nodes.values().map(|p| p.url.clone()).collect();
    let last = ids.last().expect("three nodes");
    let kill_pid = c.nodes[last].pid().to_string();
    let keep = std::env::var("SHOAL_CONSOLE_SCREENSHOTS").ok();
    let shots = tempfile::tempdir().expect("tempdir");
    let shots_dir = match &keep {
        Some(d) => python::repo_root().join(d).display().to_string(),
        None => shots.path().display().to_string(),
    };
    let (node_urls, node_ids) = (urls.join(","), ids.join(","));
    let env = [
        ("SHOAL_NODE_URLS", node_urls.as_str()),
        ("SHOAL_NODE_IDS", node_ids.as_str()),
        ("SHOAL_PROXY_URL", proxy.url.as_str()),
        ("SHOAL_TOKEN", TOKEN),
        ("SHOAL_KILL_PID", kill_pid.as_str()),
        ("SHOAL_SCREENSHOTS", shots_dir.as_str()),
    ];
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/console/console.py");
    let logs = || format!("{}{}", c.logs(), proxy.logs());
    let out = python::run(&python, &script, &env, SCRIPT_TIMEOUT, &logs).await;
    println!("{out}");
    // Every page was shot.
    for page in
        ["signin-error", "cluster", "buckets", "bucket-detail", "bases", "base", "sql", "feed"]
    {
        let file = Path::new(&shots_dir).join(format!("{page}.png"));
        let size = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
        assert!(size > 1000, "no screenshot {}:\n{out}", file.display());
    }
}
