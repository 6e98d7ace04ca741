//! An embedded registry of real `shoal meta` processes on 127.0.0.1, grown
//! the way an operator grows one: the first member starts a group alone,
//! the others start with `--join`, and `shoal meta add` adds them two at a
//! time.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use shoal_registry::embedded::wire::MetaStatus;
use shoal_registry::{EmbeddedOptions, EmbeddedRegistry};

use super::{Process, bin};

/// The admin token the members share.
pub const META_TOKEN: &str = "cluster-test-token";

pub struct MetaGroup {
    pub members: Vec<Process>,
    dir: PathBuf,
}

impl MetaGroup {
    /// Starts member `m{i}` in `dir/meta-{i}`, joining `join` if given.
    pub fn start_member(dir: &Path, i: usize, join: Option<&str>) -> Process {
        let home = dir.join(format!("meta-{i}"));
        let mut args: Vec<String> = vec![
            "meta".into(),
            "--name".into(),
            format!("m{i}"),
            "--data-dir".into(),
            home.join("data").display().to_string(),
            "--admin-token".into(),
            META_TOKEN.into(),
        ];
        if let Some(url) = join {
            args.extend(["--join".into(), url.to_string()]);
        }
        Process::start(&home, &args)
    }

    /// A group of `n` (odd) members under `dir`, every one voting.
    pub fn start(dir: &Path, n: usize) -> MetaGroup {
        assert!(!n.is_multiple_of(2), "an embedded registry has an odd number of members");
        let mut group = MetaGroup { members: Vec::new(), dir: dir.to_path_buf() };
        group.members.push(MetaGroup::start_member(dir, 0, None));
        let first = group.members[0].url.clone();
        while group.members.len() < n {
            let i = group.members.len();
            let a = MetaGroup::start_member(dir, i, Some(&first));
            let b = MetaGroup::start_member(dir, i + 1, Some(&first));
            let (ok, out) = group.meta_cli(&["add", &a.url, &b.url]);
            group.members.extend([a, b]);
            assert!(ok, "shoal meta add failed: {out}\n{}", group.logs());
        }
        group
    }

    /// Runs `shoal meta ARGS --registry <this group>`; whether it succeeded,
    /// and its output.
    pub fn meta_cli(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new(bin())
            .arg("meta")
            .args(args)
            .args(["--registry", &self.registry_url(), "--admin-token", META_TOKEN])
            .env_remove("SHOAL_REGISTRY")
            .output()
            .expect("run shoal meta");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    /// The `--registry` value naming every member.
    pub fn registry_url(&self) -> String {
        let members: Vec<&str> =
            self.members.iter().map(|p| p.url.trim_start_matches("http://")).collect();
        format!("shoal://{}", members.join(","))
    }

    /// A client of the group in `namespace`.
    pub async fn registry(&self, namespace: &str) -> EmbeddedRegistry {
        let options = EmbeddedOptions {
            endpoints: self.members.iter().map(|p| p.url.clone()).collect(),
            namespace: namespace.into(),
            retry_interval: Duration::from_millis(200),
            max_retries: 10,
            token: Some(META_TOKEN.into()),
            ..EmbeddedOptions::default()
        };
        EmbeddedRegistry::connect(options).await.expect("the embedded registry answers")
    }

    /// The index of the member that leads the group, asked of each (bounded).
    pub async fn leader(&self) -> Option<usize> {
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            for (i, p) in self.members.iter().enumerate() {
                let status = http.get(format!("{}/meta/v1/status", p.url)).send().await;
                if let Ok(s) = status
                    && let Ok(s) = s.json::<MetaStatus>().await
                    && s.leader == Some(s.id)
                {
                    return Some(i);
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    }

    /// Kills member `i` with SIGKILL.
    pub fn kill(&mut self, i: usize) {
        self.members[i].kill();
    }

    pub fn logs(&self) -> String {
        let _ = &self.dir;
        self.members.iter().map(|p| p.logs()).collect()
    }
}
