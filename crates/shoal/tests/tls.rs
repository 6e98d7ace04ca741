//! TLS, end to end with real processes and certificates made for each test
//! (docs/tls.md): a standalone server over HTTPS with the CLI and the
//! client, a three-node cluster whose nodes talk TLS to each other (and
//! refuse a node whose certificate another CA signed), and etcd over TLS.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::cluster::{Cluster, TOKEN};
use common::{Mode, Process, Server, bin};
use shoal_client::{Client, Options};
use shoal_types::BaseId;
use shoal_types::api::{Params, Statement};

/// A certificate authority made for one test.
struct Ca {
    pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages =
            vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("self-signed");
        Ca { pem: cert.pem(), issuer: rcgen::Issuer::new(params, key) }
    }

    /// Writes `DIR/ca.pem`, `DIR/NAME.pem` and `DIR/NAME.key`: a certificate
    /// for 127.0.0.1 and localhost, good for serving and as a client.
    fn issue(&self, dir: &Path, name: &str) -> Certs {
        std::fs::create_dir_all(dir).expect("cert dir");
        let mut params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
                .expect("params");
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("signed");
        let certs = Certs {
            ca: dir.join("ca.pem"),
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}.key")),
        };
        std::fs::write(&certs.ca, &self.pem).expect("write ca");
        std::fs::write(&certs.cert, cert.pem()).expect("write cert");
        std::fs::write(&certs.key, key.serialize_pem()).expect("write key");
        certs
    }
}

/// The files of one process's certificate.
#[derive(Clone)]
struct Certs {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl Certs {
    /// `--tls-cert`, `--tls-key` and `--tls-ca`.
    fn flags(&self) -> Vec<String> {
        vec![
            "--tls-cert".into(),
            self.cert.display().to_string(),
            "--tls-key".into(),
            self.key.display().to_string(),
            "--tls-ca".into(),
            self.ca.display().to_string(),
        ]
    }

    fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(&self.ca).expect("read ca")
    }

    /// A client configuration trusting this CA, showing this certificate
    /// when `with_identity`.
    fn client_tls(&self, with_identity: bool) -> Arc<shoal_tls::ClientConfig> {
        let (cert, key) =
            (std::fs::read(&self.cert).expect("cert"), std::fs::read(&self.key).expect("key"));
        let identity = with_identity.then_some((cert.as_slice(), key.as_slice()));
        shoal_client::tls_config(&self.ca_pem(), "ca.pem", identity).expect("tls config")
    }

    /// A Shoal client of `endpoints` trusting this CA.
    fn client(&self, endpoints: &[String], token: &str, follow_leaders: bool) -> Client {
        let options =
            Options { tls: Some(self.client_tls(false)), follow_leaders, ..Options::default() };
        Client::with_options(endpoints, Some(token.to_string()), options).expect("client")
    }
}

fn https(url: &str) -> String {
    url.replacen("http://", "https://", 1)
}

fn stmt(sql: &str) -> Statement {
    Statement { sql: sql.to_string(), params: Params::default() }
}

/// Runs the CLI with `args`; answers (exit code, stdout, stderr) and how long it took.
fn cli(args: &[&str]) -> (Option<i32>, String, String, Duration) {
    let started = Instant::now();
    let mut cmd = Command::new(bin());
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("SHOAL_")) {
        cmd.env_remove(k);
    }
    let out = cmd.args(args).stdin(Stdio::null()).output().expect("run shoal");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        started.elapsed(),
    )
}

/// A standalone server over HTTPS: the client and the CLI with the CA
/// work; without a CA, with another CA, or over plain HTTP they are
/// refused at once with a message that says what to fix; internal routes
/// want a cluster certificate; the server keeps serving throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_serves_https_and_refuses_what_it_must() {
    let certs_dir = tempfile::tempdir().expect("tempdir");
    let good = Ca::new("shoal test CA").issue(&certs_dir.path().join("good"), "server");
    let other = Ca::new("another CA").issue(&certs_dir.path().join("other"), "stranger");
    let flags = good.flags();
    let mut extra: Vec<&str> = vec!["--admin-token", "tls-token"];
    extra.extend(flags.iter().map(String::as_str));
    let (_dir, server) = Server::start(Mode::Memory, &extra);
    let url = https(&server.url);
    assert!(server.stdout().contains(&format!("serving {url}")), "{}", server.stdout());

    // The client library with the CA: a write, a read, a change feed.
    let client = good.client(std::slice::from_ref(&url), "tls-token", true);
    let base = client.create_base(None, Some("tls".into())).await.expect("create over https").id;
    let mut watch = shoal_client::watch::Watch::new(
        std::slice::from_ref(&url),
        Some("tls-token".into()),
        base,
        Some(0),
        shoal_client::watch::WatchOptions {
            tls: Some(good.client_tls(false)),
            ..Default::default()
        },
    )
    .expect("watch");
    client
        .execute(base, vec![stmt("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")], true)
        .await
        .expect("create table");
    client
        .execute(base, vec![stmt("INSERT INTO t (v) VALUES ('secret')")], true)
        .await
        .expect("insert");
    let rows = client.query(base, "SELECT v FROM t", Params::default()).await.expect("query");
    assert_eq!(rows.rows.len(), 1);
    // The insert arrives over wss.
    wait_for_event(&mut watch, "secret", "the insert over wss within 20s").await;

    // The SeaTable API names this server with the scheme the client used.
    let api = client.create_api_token(base, None, false).await.expect("api token").api_token;
    let https_client = reqwest::Client::builder()
        .use_preconfigured_tls(good.client_tls(false).as_ref().clone())
        .build()
        .expect("client");
    let access: serde_json::Value = https_client
        .get(format!("{url}/api/v2.1/dtable/app-access-token/"))
        .header("authorization", format!("Token {api}"))
        .send()
        .await
        .expect("access token")
        .json()
        .await
        .expect("json");
    assert_eq!(access["dtable_server"], format!("{url}/"), "{access}");

    // The CLI with --tls-ca.
    let id = base.to_string();
    let ca = good.ca.display().to_string();
    let (code, out, err, _) = cli(&[
        "sql",
        &id,
        "SELECT v FROM t",
        "--endpoint",
        &url,
        "--token",
        "tls-token",
        "--tls-ca",
        &ca,
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("secret"), "{out}");

    // Without a CA: refused before anything is sent.
    let (code, _, err, took) = cli(&[
        "base",
        "list",
        "--endpoint",
        &url,
        "--token",
        "tls-token",
        "--retry-deadline",
        "20s",
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("needs the CA that signed its certificate"), "{err}");
    assert!(took < Duration::from_secs(10), "took {took:?}");

    // Another CA: the certificate is refused, at once (no retrying for 20 s).
    let wrong = other.ca.display().to_string();
    let (code, _, err, took) = cli(&[
        "base",
        "list",
        "--endpoint",
        &url,
        "--token",
        "tls-token",
        "--tls-ca",
        &wrong,
        "--retry-deadline",
        "20s",
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("not signed by a trusted CA"), "{err}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    let e =
        other.client(std::slice::from_ref(&url), "tls-token", true).list_bases(None, None).await;
    let e = e.expect_err("another CA is refused");
    assert!(e.to_string().contains("not signed by a trusted CA"), "{e}");

    // Plain HTTP on the TLS port: a readable 400, from the CLI too.
    let plain = reqwest::Client::new().get(format!("{}/v1/health", server.url)).send().await;
    let plain = plain.expect("an answer to plain HTTP");
    assert_eq!(plain.status(), 400);
    assert!(plain.text().await.unwrap_or_default().contains("use an https:// URL"));
    let (code, _, err, took) =
        cli(&["base", "list", "--endpoint", &server.url, "--token", "tls-token"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("this port speaks HTTPS"), "{err}");
    assert!(took < Duration::from_secs(10), "took {took:?}");

    // Internal routes: not without a cluster certificate; and a
    // certificate of another CA does not get through the handshake.
    let anonymous = reqwest::Client::builder()
        .use_preconfigured_tls(good.client_tls(false).as_ref().clone())
        .build()
        .expect("client");
    let answer = anonymous
        .get(format!("{url}/internal/relay"))
        .bearer_auth("tls-token")
        .send()
        .await
        .expect("an answer");
    assert_eq!(answer.status(), 403);
    let stranger = reqwest::Client::builder()
        .use_preconfigured_tls({
            let roots = good.ca_pem();
            let cert = std::fs::read(&other.cert).expect("cert");
            let key = std::fs::read(&other.key).expect("key");
            shoal_client::tls_config(&roots, "ca", Some((&cert, &key)))
                .expect("config")
                .as_ref()
                .clone()
        })
        .build()
        .expect("client");
    let refused = stranger.get(format!("{url}/v1/health")).send().await;
    assert!(refused.is_err(), "a certificate of another CA got an answer: {refused:?}");

    // Still serving.
    client.health().await.expect("the server survived all of it");
    assert!(server.logs().contains("TLS handshake refused"), "{}", server.logs());
}

/// Bad TLS flags stop a server at start-up, with the file named and
/// exit code 1 (2 for a flag clap refuses).
#[test]
fn bad_certificate_files_are_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("ca");
    let a = ca.issue(&dir.path().join("a"), "a");
    let b = ca.issue(&dir.path().join("b"), "b");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").expect("write");
    let missing = dir.path().join("missing.pem");
    let s = |p: &Path| p.display().to_string();
    let cases: Vec<(Vec<String>, i32, String)> = vec![
        (
            vec![
                "--tls-cert".into(),
                s(&missing),
                "--tls-key".into(),
                s(&a.key),
                "--tls-ca".into(),
                s(&a.ca),
            ],
            1,
            format!("--tls-cert {}: cannot read it", missing.display()),
        ),
        (
            vec![
                "--tls-cert".into(),
                s(&garbage),
                "--tls-key".into(),
                s(&a.key),
                "--tls-ca".into(),
                s(&a.ca),
            ],
            1,
            "no certificate in it".into(),
        ),
        (
            vec![
                "--tls-cert".into(),
                s(&a.cert),
                "--tls-key".into(),
                s(&garbage),
                "--tls-ca".into(),
                s(&a.ca),
            ],
            1,
            "no private key in it".into(),
        ),
        (
            vec![
                "--tls-cert".into(),
                s(&a.cert),
                "--tls-key".into(),
                s(&b.key),
                "--tls-ca".into(),
                s(&a.ca),
            ],
            1,
            "is not the key of the certificate in --tls-cert".into(),
        ),
        (
            vec!["--tls-cert".into(), s(&a.cert), "--tls-key".into(), s(&a.key)],
            1,
            "--tls-cert needs --tls-ca".into(),
        ),
        (vec!["--tls-cert".into(), s(&a.cert)], 2, "--tls-key".into()),
    ];
    for (flags, want_code, want) in cases {
        let mut args = vec!["serve", "--memory", "--listen", "127.0.0.1:0"];
        args.extend(flags.iter().map(String::as_str));
        let (code, _, err, _) = cli(&args);
        assert_eq!(code, Some(want_code), "{flags:?}: {err}");
        assert!(err.contains(&want), "{flags:?}: wanted {want:?} in: {err}");
    }
    // The flags are keys of the command's table in shoal.toml too.
    let config = dir.path().join("shoal.toml");
    let table = format!(
        "[serve]\ntls_cert = {:?}\ntls_key = {:?}\ntls_ca = {:?}\n",
        s(&a.cert),
        s(&garbage),
        s(&a.ca)
    );
    std::fs::write(&config, table).expect("write shoal.toml");
    let path = s(&config);
    let (code, _, err, _) =
        cli(&["serve", "--memory", "--listen", "127.0.0.1:0", "--config", &path]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!("--tls-key {}: no private key in it", garbage.display())),
        "{err}"
    );
}

/// GET `url` with `client`, as JSON.
async fn checksum_of(http: &reqwest::Client, node: &str, base: BaseId) -> String {
    let answer = http
        .get(format!("{node}/v1/bases/{base}/checksum?consistency=none"))
        .bearer_auth(TOKEN)
        .send()
        .await;
    match answer {
        Ok(a) => a.json::<serde_json::Value>().await.unwrap_or_default()["checksum"]
            .as_str()
            .unwrap_or("?")
            .to_string(),
        Err(_) => "?".into(),
    }
}

/// Three nodes, a monitor and a proxy on TLS (etcd plain): writes through
/// every node (followers forward over TLS) and the proxy (relays over
/// TLS), replicas equal; a fourth node whose certificate another CA signed
/// is refused by its peers, and the cluster keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_talks_tls_and_refuses_a_stranger() {
    let mut cluster = Cluster::new().await;
    let certs = cluster.dir.path().join("certs");
    let ca = Ca::new("cluster CA");
    let mut node_certs = Vec::new();
    for n in ["n1", "n2", "n3"] {
        let c = ca.issue(&certs, n);
        let data = cluster.dir.path().join(n).join("data");
        let mut args = cluster.node_args(n, &data);
        args.extend(c.flags());
        cluster.nodes.insert(n.to_string(), Process::start(&cluster.dir.path().join(n), &args));
        node_certs.push(c);
    }
    let monitor = ca.issue(&certs, "monitor").flags();
    cluster.start_monitor(&monitor.iter().map(String::as_str).collect::<Vec<_>>());
    let proxy_flags = ca.issue(&certs, "proxy").flags();
    let proxy = cluster.start_proxy(0, &proxy_flags.iter().map(String::as_str).collect::<Vec<_>>());
    let proxy_url = https(&proxy.url);
    cluster.wait_three_replicas().await;
    let nodes: Vec<String> = cluster.nodes.values().map(|p| https(&p.url)).collect();
    let good = &node_certs[0];

    // Through the proxy (its relays to the nodes are TLS).
    let via_proxy = good.client(std::slice::from_ref(&proxy_url), TOKEN, false);
    let base = common::eventually("create a base through the proxy", || {
        via_proxy.create_base(None, Some("tls".into()))
    })
    .await
    .id;
    via_proxy
        .execute(base, vec![stmt("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")], true)
        .await
        .expect("create table");
    let location = via_proxy.location(base).await.expect("location");
    assert!(format!("{location:?}").contains("https://127.0.0.1"), "{location:?}");

    // Through every node: two of them forward to the leader, over TLS.
    for (i, node) in nodes.iter().enumerate() {
        let c = good.client(std::slice::from_ref(node), TOKEN, false);
        let sql = format!("INSERT INTO t (v) VALUES ('through node {i}')");
        c.execute(base, vec![stmt(&sql)], true)
            .await
            .unwrap_or_else(|e| panic!("write via {node}: {e}"));
    }
    via_proxy
        .execute(base, vec![stmt("INSERT INTO t (v) VALUES ('via proxy')")], true)
        .await
        .expect("write via proxy");
    for node in nodes.iter().chain([&proxy_url]) {
        let c = good.client(std::slice::from_ref(node), TOKEN, false);
        let rows = c.query(base, "SELECT v FROM t", Params::default()).await.expect("read");
        assert_eq!(rows.rows.len(), 4, "read via {node}");
    }
    let peer = reqwest::Client::builder()
        .use_preconfigured_tls(good.client_tls(true).as_ref().clone())
        .build()
        .expect("client");
    let sums = equal_checksums(&peer, &nodes, base).await;

    // The change feed through the proxy: a WebSocket relayed over TLS.
    let watch_options = shoal_client::watch::WatchOptions {
        tls: Some(good.client_tls(false)),
        ..Default::default()
    };
    let mut watch = shoal_client::watch::Watch::new(
        std::slice::from_ref(&proxy_url),
        Some(TOKEN.into()),
        base,
        Some(0),
        watch_options,
    )
    .expect("watch");
    wait_for_event(&mut watch, "via proxy", "the feed through the proxy within 20s").await;

    // A fourth node of the cluster CA is seeded by snapshots, streamed
    // over TLS: bases in eight buckets, one of which it gets.
    let spread: Vec<BaseId> = (0..8u32)
        .map(|i| {
            let id = format!("{:02x}{}", i * 32 + 5, &uuid_tail());
            id.parse().expect("a base id")
        })
        .collect();
    for id in &spread {
        via_proxy.create_base(Some(*id), None).await.expect("create");
        let sql = format!("INSERT INTO t (v) VALUES ('{id}')");
        via_proxy
            .execute(*id, vec![stmt("CREATE TABLE t (v TEXT)"), stmt(&sql)], true)
            .await
            .expect("write");
    }
    let c5 = ca.issue(&certs, "n5");
    let data = cluster.dir.path().join("n5").join("data");
    let mut args = cluster.node_args("n5", &data);
    args.extend(c5.flags());
    let n5 = Process::start(&cluster.dir.path().join("n5"), &args);
    let map = cluster
        .wait_map("n5 in the map", Duration::from_secs(30), |m| {
            m.buckets.iter().any(|b| b.iter().any(|n| n.0 == "n5"))
        })
        .await;
    let seeded = *spread
        .iter()
        .find(|id| map.buckets[id.bucket().0 as usize].iter().any(|n| n.0 == "n5"))
        .expect("n5 holds one of eight buckets");
    let mut with_n5 = nodes.clone();
    with_n5.push(https(&n5.url));
    cluster.nodes.insert("n5".into(), n5);
    let seeded_holders = holders(&cluster, seeded).await;
    assert!(seeded_holders.iter().any(|u| with_n5.last() == Some(u)), "{seeded_holders:?}");
    equal_checksums(&peer, &seeded_holders, seeded).await;
    let nodes = with_n5;

    // A node with a certificate of another CA: its peers refuse it.
    let stranger_ca = Ca::new("stranger CA");
    let stranger = stranger_ca.issue(&cluster.dir.path().join("stranger-certs"), "n4");
    let data = cluster.dir.path().join("n4").join("data");
    let mut args = cluster.node_args("n4", &data);
    args.extend(stranger.flags());
    let n4 = Process::start(&cluster.dir.path().join("n4"), &args);
    let n4_url = https(&n4.url);
    let as_stranger = reqwest::Client::builder()
        .use_preconfigured_tls({
            let cert = std::fs::read(&stranger.cert).expect("cert");
            let key = std::fs::read(&stranger.key).expect("key");
            shoal_client::tls_config(&good.ca_pem(), "ca", Some((&cert, &key)))
                .expect("config")
                .as_ref()
                .clone()
        })
        .build()
        .expect("client");
    for node in &nodes {
        let refused = as_stranger.get(format!("{node}/v1/health")).send().await;
        assert!(refused.is_err(), "{node} answered a certificate of another CA: {refused:?}");
    }
    // The monitor gives it replicas, which it never gets: the cluster
    // keeps taking writes and its replicas stay equal.
    cluster
        .wait_map("n4 in the map", Duration::from_secs(30), |m| {
            m.buckets.iter().any(|b| b.iter().any(|n| n.0 == "n4"))
        })
        .await;
    via_proxy
        .execute(base, vec![stmt("INSERT INTO t (v) VALUES ('after n4')")], true)
        .await
        .expect("write after n4 joined");
    let rows = via_proxy.query(base, "SELECT v FROM t", Params::default()).await.expect("read");
    assert_eq!(rows.rows.len(), 5);
    let after = equal_checksums(&peer, &holders(&cluster, base).await, base).await;
    assert_ne!(after, sums, "the last write changed the base");
    let options = Options {
        tls: Some(stranger.client_tls(false)),
        follow_leaders: false,
        retry_deadline: Duration::from_secs(3),
        ..Options::default()
    };
    let from_n4 = Client::with_options(&[&n4_url], Some(TOKEN.into()), options).expect("client");
    let n4_read = from_n4.query(base, "SELECT v FROM t", Params::default()).await;
    assert!(n4_read.is_err(), "n4 answered without its peers: {n4_read:?}");
    let logs = cluster.nodes.values().map(Process::logs).collect::<String>();
    assert!(logs.contains("TLS handshake refused"), "no node logged the refusal");
}

/// The URLs of the nodes the map names for `base`'s bucket, but the
/// stranger n4.
async fn holders(cluster: &Cluster, base: BaseId) -> Vec<String> {
    let map = cluster.map().await.expect("a map");
    let replicas = &map.buckets[base.bucket().0 as usize];
    cluster
        .nodes
        .iter()
        .filter(|(name, _)| *name != "n4" && replicas.iter().any(|n| &n.0 == *name))
        .map(|(_, p)| https(&p.url))
        .collect()
}

/// The last 30 hex digits of a random base id.
fn uuid_tail() -> String {
    uuid::Uuid::new_v4().simple().to_string()[2..].to_string()
}

/// The checksum of `base` once every node answers the same (bounded: 60 s).
async fn equal_checksums(http: &reqwest::Client, nodes: &[String], base: BaseId) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut sums = Vec::new();
        for node in nodes {
            sums.push(checksum_of(http, node, base).await);
        }
        if sums.iter().all(|s| s != "?" && *s == sums[0]) {
            return sums.swap_remove(0);
        }
        assert!(Instant::now() < deadline, "replicas differ: {sums:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A one-member etcd serving its clients over TLS only, killed by PID
/// when dropped.
struct TlsEtcd {
    child: Child,
    endpoint: String,
    dir: tempfile::TempDir,
}

impl TlsEtcd {
    /// Starts etcd with `certs` (clients must show a certificate the same
    /// CA signed) and waits (bounded) until its client port takes
    /// connections.
    fn start(certs: &Certs) -> TlsEtcd {
        let dir = tempfile::Builder::new().prefix("shoal-etcd-tls-").tempdir().expect("tempdir");
        let ports: Vec<u16> = {
            let held: Vec<std::net::TcpListener> =
                (0..2).map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind")).collect();
            held.iter().map(|l| l.local_addr().expect("addr").port()).collect()
        };
        let endpoint = format!("127.0.0.1:{}", ports[0]);
        let peer = format!("http://127.0.0.1:{}", ports[1]);
        let log = std::fs::File::create(dir.path().join("etcd.log")).expect("log");
        let child = Command::new(shoal_registry::testing::etcd_server::etcd_binary())
            .arg("--name=m0")
            .arg(format!("--data-dir={}", dir.path().join("data").display()))
            .arg(format!("--listen-client-urls=https://{endpoint}"))
            .arg(format!("--advertise-client-urls=https://{endpoint}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=m0={peer}"))
            .arg(format!("--cert-file={}", certs.cert.display()))
            .arg(format!("--key-file={}", certs.key.display()))
            .arg(format!("--trusted-ca-file={}", certs.ca.display()))
            .arg("--client-cert-auth")
            .args(["--logger=zap", "--log-outputs=stderr"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start etcd");
        let mut etcd = TlsEtcd { child, endpoint, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&etcd.endpoint).is_err() {
            if let Ok(Some(status)) = etcd.child.try_wait() {
                panic!("etcd exited with {status}:\n{}", etcd.log());
            }
            assert!(Instant::now() < deadline, "etcd did not listen in time:\n{}", etcd.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        etcd
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }
}

impl Drop for TlsEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// etcd over TLS with client certificates: a server registers and serves
/// through `etcds://` with --registry-ca/--registry-cert/--registry-key;
/// a process with another CA, without a CA or without a client
/// certificate is refused at start-up with a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_over_tls() {
    let certs_dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("etcd CA");
    let etcd_certs = ca.issue(&certs_dir.path().join("etcd"), "etcd");
    let client_certs = ca.issue(&certs_dir.path().join("client"), "shoal");
    let other = Ca::new("other").issue(&certs_dir.path().join("other"), "other");
    let etcd = TlsEtcd::start(&etcd_certs);
    let registry = format!("etcds://{}", etcd.endpoint);
    let s = |p: &Path| p.display().to_string();
    let tls_flags = [
        "--registry-ca".to_string(),
        s(&client_certs.ca),
        "--registry-cert".into(),
        s(&client_certs.cert),
        "--registry-key".into(),
        s(&client_certs.key),
    ];
    let mut extra: Vec<&str> = vec![
        "--admin-token",
        "etcd-tls",
        "--registry",
        &registry,
        "--namespace",
        "tlsreg",
        "--node-ttl",
        "3s",
        "--retry-interval",
        "200ms",
    ];
    extra.extend(tls_flags.iter().map(String::as_str));
    let (_dir, server) = Server::start(Mode::Memory, &extra);
    let registry_line = format!("Registry: etcds://{} (namespace tlsreg", etcd.endpoint);
    assert!(server.stdout().contains(&registry_line), "{}", server.stdout());
    let client = Client::new(&server.url, Some("etcd-tls".into())).expect("client");
    let base =
        client.create_base(None, None).await.expect("create (the map came through etcds)").id;
    client
        .execute(
            base,
            vec![stmt("CREATE TABLE t (v TEXT)"), stmt("INSERT INTO t VALUES ('x')")],
            true,
        )
        .await
        .expect("write");
    let rows = client.query(base, "SELECT v FROM t", Params::default()).await.expect("read");
    assert_eq!(rows.rows.len(), 1);

    // Refused at start-up: each in a couple of seconds, exit code 1.
    let wrong_ca = [
        "--registry-ca".to_string(),
        s(&other.ca),
        "--registry-cert".into(),
        s(&client_certs.cert),
        "--registry-key".into(),
        s(&client_certs.key),
    ];
    let no_client_cert = ["--registry-ca".to_string(), s(&client_certs.ca)];
    let cases: Vec<(&str, Vec<String>, &str)> = vec![
        ("etcds:// without a CA", vec![], "etcds:// needs registry_ca"),
        ("another CA", wrong_ca.to_vec(), "invalid peer certificate: UnknownIssuer"),
        // etcd refuses the handshake; whether the alert or the closed
        // connection reaches the client first varies.
        ("no client certificate", no_client_cert.to_vec(), "registry unavailable"),
    ];
    for (what, flags, want) in cases {
        let mut args = vec![
            "monitor",
            "--monitor-id",
            "m-refused",
            "--listen",
            "127.0.0.1:0",
            "--admin-token",
            "etcd-tls",
            "--registry",
            &registry,
            "--max-retries",
            "0",
            "--operation-timeout",
            "2s",
        ];
        args.extend(flags.iter().map(String::as_str));
        let (code, _, err, took) = cli(&args);
        assert_eq!(code, Some(1), "{what}: {err}");
        assert!(err.contains(want), "{what}: wanted {want:?} in {err}");
        assert!(took < Duration::from_secs(15), "{what}: took {took:?}");
    }
    client.health().await.expect("the server still serves");
}

/// Waits (20 s at most) for a change event whose text contains `needle`.
async fn wait_for_event(watch: &mut shoal_client::watch::Watch, needle: &str, what: &str) {
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match watch.next().await.expect("feed") {
                Some(shoal_client::watch::WatchEvent::Message(m))
                    if format!("{m:?}").contains(needle) =>
                {
                    return;
                }
                Some(_) => continue,
                None => panic!("the feed ended"),
            }
        }
    })
    .await
    .expect(what);
}
