//! TLS of the server commands: the `--tls-cert`, `--tls-key` and `--tls-ca`
//! flags, the HTTPS listener and the rule that only cluster peers reach
//! `/internal/` routes (design: `docs/tls.md`).
//!
//! One port carries everything a process serves, so one listener does TLS
//! for all of it. Handshakes run on tasks of their own (a slow or silent
//! client holds up nobody) and finished connections are handed to axum
//! with whether the client presented a certificate signed by the cluster
//! CA. A client that speaks plain HTTP to the port gets a plain `400`
//! answer that says to use `https://`, then the connection closes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::extract::{ConnectInfo, Request};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::serve::IncomingStream;
use clap::Args;
use shoal_tls::{ClientConfig, ServerConfig, TlsAcceptor};
use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// TLS flags of every server command.
#[derive(Args, Debug, Clone, Default)]
pub struct TlsArgs {
    /// This process's certificate (PEM, the chain from its own certificate
    /// up): with --tls-key it serves HTTPS, and it is also the client
    /// certificate it shows other processes of the cluster.
    #[arg(long, env = "SHOAL_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "SHOAL_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// The cluster's CA certificate (PEM): the servers this process
    /// connects to must have a certificate it signed, and so must the
    /// clients of this process's internal routes (Raft, relays).
    #[arg(long, env = "SHOAL_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
}

/// A process's TLS: how it serves, and how it connects to others.
#[derive(Clone, Debug, Default)]
pub struct Tls {
    /// The server configuration, when the process serves HTTPS.
    pub server: Option<Arc<ServerConfig>>,
    /// The client configuration for `https://` peers, when a CA is given.
    pub client: Option<Arc<ClientConfig>>,
}

impl TlsArgs {
    /// Reads and checks the files. Nothing given is plain HTTP.
    pub fn load(&self) -> anyhow::Result<Tls> {
        let roots = match &self.tls_ca {
            Some(p) => Some(shoal_tls::parse_roots(&read(p, "--tls-ca")?, &name(p, "--tls-ca"))?),
            None => None,
        };
        let identity = match (&self.tls_cert, &self.tls_key) {
            (Some(c), Some(k)) => Some(shoal_tls::Identity::from_pem(
                &read(c, "--tls-cert")?,
                &name(c, "--tls-cert"),
                &read(k, "--tls-key")?,
                &name(k, "--tls-key"),
            )?),
            (None, None) => None,
            _ => anyhow::bail!("--tls-cert and --tls-key go together"),
        };
        let server = match (&identity, &roots) {
            (Some(id), Some(roots)) => Some(shoal_tls::server_config(id, Some(roots.clone()))?),
            (Some(_), None) => anyhow::bail!(
                "--tls-cert needs --tls-ca: the CA that signed the cluster's certificates, which \
                 this process checks its peers' certificates against"
            ),
            (None, _) => None,
        };
        let client = match roots {
            Some(roots) => Some(shoal_tls::client_config(roots, identity.as_ref())?),
            None => None,
        };
        Ok(Tls { server, client })
    }
}

fn read(path: &Path, flag: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("{flag} {}: cannot read it", path.display()))
}

fn name(path: &Path, flag: &str) -> String {
    format!("{flag} {}", path.display())
}

/// How long a client may take over its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshaken connections waiting for the server to take them.
const READY_QUEUE: usize = 256;

/// Who is on the other end of a TLS connection.
#[derive(Clone, Copy, Debug)]
pub struct Peer {
    /// The client's address.
    pub addr: SocketAddr,
    /// Whether it presented a certificate signed by the cluster CA.
    pub verified: bool,
}

/// A listener that hands axum connections after their TLS handshake.
pub struct TlsListener {
    ready: mpsc::Receiver<(tokio_rustls::server::TlsStream<TcpStream>, Peer)>,
    addr: SocketAddr,
    accepting: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    /// Starts accepting on `tcp` with `config`.
    pub fn new(tcp: TcpListener, config: Arc<ServerConfig>) -> std::io::Result<TlsListener> {
        let addr = tcp.local_addr()?;
        let (tx, ready) = mpsc::channel(READY_QUEUE);
        let acceptor = TlsAcceptor::from(config);
        let accepting = tokio::spawn(async move {
            loop {
                let (stream, from) = match tcp.accept().await {
                    Ok(s) => s,
                    Err(e) => {
                        // Out of file descriptors, say: wait rather than spin.
                        tracing::warn!(error = %e, "cannot accept a connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let handshake = handshake(acceptor, stream, from);
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
                        Ok(Some(conn)) => {
                            let _ = tx.send(conn).await;
                        }
                        Ok(None) => {}
                        Err(_) => tracing::info!(client = %from, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener { ready, addr, accepting })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

/// One handshake; `None` (logged) when it fails.
async fn handshake(
    acceptor: TlsAcceptor,
    mut stream: TcpStream,
    from: SocketAddr,
) -> Option<(tokio_rustls::server::TlsStream<TcpStream>, Peer)> {
    let _ = stream.set_nodelay(true);
    // A TLS connection starts with a handshake record (0x16); anything
    // else is most likely plain HTTP, which deserves a readable answer.
    let mut first = [0u8; 1];
    match stream.peek(&mut first).await {
        Ok(1) if first[0] != 0x16 => {
            tracing::debug!(client = %from, "plain HTTP on the TLS port");
            let body = r#"{"error":{"code":"invalid_input","message":"this port speaks HTTPS: use an https:// URL"}}"#;
            let answer = format!(
                "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(answer.as_bytes()).await;
            let _ = stream.shutdown().await;
            return None;
        }
        Ok(1) => {}
        _ => return None,
    }
    match acceptor.accept(stream).await {
        Ok(tls) => {
            let verified = shoal_tls::peer_verified(tls.get_ref().1);
            Some((tls, Peer { addr: from, verified }))
        }
        Err(e) => {
            tracing::info!(client = %from, error = %e, "TLS handshake refused");
            None
        }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = Peer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The accepting task is gone only when this listener is.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(Peer { addr: self.addr, verified: false })
    }
}

impl axum::extract::connect_info::Connected<IncomingStream<'_, TlsListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Self {
        *stream.remote_addr()
    }
}

/// What every request on a TLS port goes through: routes under
/// `/internal/` (Raft streams and snapshots, relays) answer only clients
/// that presented a certificate signed by the cluster CA; and a request
/// straight from a client (not forwarded by a node or a proxy, which say
/// what their client used) is marked `X-Forwarded-Proto: https`, for
/// answers that name a server (the SeaTable API's `dtable_server`).
pub async fn tls_requests(mut req: Request, next: Next) -> Response {
    let headers = req.headers_mut();
    if !headers.contains_key(shoal_node::forward::FORWARDED_HOST)
        && !headers.contains_key(shoal_node::forward::FORWARDED_PROTO)
    {
        headers.insert(
            shoal_node::forward::FORWARDED_PROTO,
            axum::http::HeaderValue::from_static("https"),
        );
    }
    if req.uri().path().starts_with("/internal/") {
        let peer = req.extensions().get::<ConnectInfo<Peer>>().map(|c| c.0);
        if !peer.is_some_and(|p| p.verified) {
            tracing::info!(
                client = ?peer.map(|p| p.addr),
                path = req.uri().path(),
                "refused: an internal route without a cluster certificate"
            );
            let error = shoal_types::Error::Forbidden(
                "internal routes need a client certificate signed by the cluster's CA".into(),
            );
            let body = error.to_body();
            return (StatusCode::FORBIDDEN, axum::Json(body)).into_response();
        }
    }
    next.run(req).await
}
