//! TLS for Shoal's connections: rustls with the `ring` provider.
//!
//! Every Shoal process that is given a certificate, its key and the
//! cluster's CA serves HTTPS on its one port, and that port carries all of
//! its traffic: the public API, the Raft peer streams, snapshots, the
//! followers' forwarded requests and the proxies' relays. The same
//! certificate is the process's client certificate when it connects to
//! another process, and the server side asks for one (without requiring
//! it, so that browsers and the CLI connect with the CA alone): a
//! certificate that is presented must chain to the cluster CA or the
//! handshake fails, and routes under `/internal/` answer only connections
//! that presented a valid one (see `docs/tls.md`).
//!
//! This crate holds what both sides share: PEM parsing with errors that
//! name the file, the server and client configurations, and a
//! [`Connector`] that opens `http://` or `https://` connections for the
//! places that speak their own wire over a connection (the Raft transport,
//! the proxy's relays, WebSockets). It reads no files: callers pass the
//! PEM text and a name for it.

use std::io;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_rustls::client::TlsStream;
use tokio_util::either::Either;

pub use rustls::{ClientConfig, ServerConfig};
pub use tokio_rustls::TlsAcceptor;

/// What can go wrong building a TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The certificate, key or CA given is unusable; the message names it.
    #[error("{0}")]
    InvalidInput(String),
}

/// `Result` with this crate's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The one crypto provider Shoal uses: *ring*, whose build is small
/// (aws-lc-rs compiles a large C library). rustls 0.23.48 marks it
/// deprecated because it lacks post-quantum key exchange; the classical
/// groups it offers are what every TLS 1.3 peer speaks.
#[allow(deprecated)]
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificates in `pem` (one or more `CERTIFICATE` blocks); `what`
/// names the file in errors.
pub fn parse_certs(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::InvalidInput(format!("{what}: not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(Error::InvalidInput(format!(
            "{what}: no certificate in it (expected PEM \"BEGIN CERTIFICATE\" blocks)"
        )));
    }
    Ok(certs)
}

/// The private key in `pem` (PKCS#8, PKCS#1 or SEC1); `what` names the file.
pub fn parse_key(pem: &[u8], what: &str) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => Error::InvalidInput(format!(
            "{what}: no private key in it (expected a PEM \"BEGIN PRIVATE KEY\" block)"
        )),
        e => Error::InvalidInput(format!("{what}: not a PEM private key file: {e}")),
    })
}

/// The trust anchors in `pem`: the CA certificates peers are checked against.
pub fn parse_roots(pem: &[u8], what: &str) -> Result<Arc<RootCertStore>> {
    let mut roots = RootCertStore::empty();
    for cert in parse_certs(pem, what)? {
        roots.add(cert).map_err(|e| {
            Error::InvalidInput(format!("{what}: not a usable CA certificate: {e}"))
        })?;
    }
    Ok(Arc::new(roots))
}

/// A certificate chain and the key that goes with it.
#[derive(Clone, Debug)]
pub struct Identity {
    chain: Vec<CertificateDer<'static>>,
    der_key: Arc<PrivateKeyDer<'static>>,
}

impl Identity {
    /// Parses a certificate chain and its private key, and checks that the
    /// key is the certificate's.
    pub fn from_pem(
        cert_pem: &[u8],
        cert_what: &str,
        key_pem: &[u8],
        key_what: &str,
    ) -> Result<Identity> {
        let chain = parse_certs(cert_pem, cert_what)?;
        let der_key = parse_key(key_pem, key_what)?;
        let signing = provider()
            .key_provider
            .load_private_key(der_key.clone_key())
            .map_err(|e| Error::InvalidInput(format!("{key_what}: unusable private key: {e}")))?;
        let key = CertifiedKey::new(chain.clone(), signing);
        key.keys_match().map_err(|e| {
            Error::InvalidInput(format!(
                "{key_what} is not the key of the certificate in {cert_what} ({e})"
            ))
        })?;
        Ok(Identity { chain, der_key: Arc::new(der_key) })
    }
}

/// The server side: serves `identity`; with `client_ca`, asks clients for
/// a certificate and refuses one that does not chain to it (a client that
/// presents none is let in; see [`peer_verified`]).
pub fn server_config(
    identity: &Identity,
    client_ca: Option<Arc<RootCertStore>>,
) -> Result<Arc<ServerConfig>> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::InvalidInput(format!("TLS versions: {e}")))?;
    let builder = match client_ca {
        Some(roots) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider())
                .allow_unauthenticated()
                .build()
                .map_err(|e| Error::InvalidInput(format!("the CA: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(identity.chain.clone(), identity.der_key.clone_key())
        .map_err(|e| Error::InvalidInput(format!("the certificate: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The client side: trusts servers whose certificate chains to `roots`,
/// and presents `identity` when the server asks for a certificate.
pub fn client_config(
    roots: Arc<RootCertStore>,
    identity: Option<&Identity>,
) -> Result<Arc<ClientConfig>> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::InvalidInput(format!("TLS versions: {e}")))?
        .with_root_certificates(roots);
    let config = match identity {
        Some(id) => builder
            .with_client_auth_cert(id.chain.clone(), id.der_key.clone_key())
            .map_err(|e| Error::InvalidInput(format!("the client certificate: {e}")))?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// Whether the peer of a server connection presented a certificate that
/// chains to the CA (rustls keeps a client's certificates only once they
/// are verified).
pub fn peer_verified(conn: &rustls::ServerConnection) -> bool {
    conn.peer_certificates().is_some_and(|c| !c.is_empty())
}

/// A `http://` or `https://` base URL, taken apart: whether it is TLS, its
/// `host:port` and its host. A bare `host:port` is plain HTTP.
pub fn split_url(url: &str) -> io::Result<(bool, &str, &str)> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else if url.contains("://") {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{url}: only http:// and https:// are supported"),
        ));
    } else {
        (false, url)
    };
    let hostport = rest.split('/').next().unwrap_or(rest);
    let host = match hostport.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        None => hostport.rsplit_once(':').map_or(hostport, |(h, _)| h),
    };
    Ok((tls, hostport, host))
}

/// Opens connections to `http://` and `https://` URLs. Without a client
/// configuration, `https://` URLs are refused with an error that says so.
#[derive(Clone, Debug, Default)]
pub struct Connector {
    tls: Option<Arc<ClientConfig>>,
}

impl Connector {
    /// A connector that uses `tls` for `https://` URLs.
    pub fn new(tls: Option<Arc<ClientConfig>>) -> Connector {
        Connector { tls }
    }

    /// The client configuration, if any.
    pub fn tls(&self) -> Option<&Arc<ClientConfig>> {
        self.tls.as_ref()
    }

    /// Connects to `url`'s host and port, with a TLS handshake for
    /// `https://`. TCP_NODELAY is set: every user sends small frames.
    pub async fn connect(&self, url: &str) -> io::Result<Stream> {
        let (tls, hostport, host) = split_url(url)?;
        if !tls {
            let tcp = TcpStream::connect(hostport).await?;
            tcp.set_nodelay(true)?;
            return Ok(Either::Left(tcp));
        }
        let Some(config) = &self.tls else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{url}: an https:// URL needs a CA to verify the server (--tls-ca)"),
            ));
        };
        let name = ServerName::try_from(host.to_string()).map_err(|e| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("{url}: bad host name: {e}"))
        })?;
        let tcp = TcpStream::connect(hostport).await?;
        tcp.set_nodelay(true)?;
        let stream = tokio_rustls::TlsConnector::from(config.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| tls_failure(hostport, &e))?;
        Ok(Either::Right(Box::new(stream)))
    }
}

/// A client connection: plain TCP (`Left`) or TLS over TCP (`Right`).
pub type Stream = Either<TcpStream, Box<TlsStream<TcpStream>>>;

/// The reading half of a [`Stream`].
pub type ReadHalf = Either<OwnedReadHalf, tokio::io::ReadHalf<TlsStream<TcpStream>>>;

/// The writing half of a [`Stream`].
pub type WriteHalf = Either<OwnedWriteHalf, tokio::io::WriteHalf<TlsStream<TcpStream>>>;

/// Splits `stream` into halves that can be used from two tasks. A plain
/// connection splits without a lock (as `TcpStream::into_split`).
pub fn split(stream: Stream) -> (ReadHalf, WriteHalf) {
    match stream {
        Either::Left(s) => {
            let (r, w) = s.into_split();
            (Either::Left(r), Either::Left(w))
        }
        Either::Right(s) => {
            let (r, w) = tokio::io::split(*s);
            (Either::Right(r), Either::Right(w))
        }
    }
}

/// A TLS failure somewhere in `error`'s chain of causes, explained for a
/// user (what to fix), or `None` when the error is not about TLS.
pub fn explain(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    find_rustls(error).map(explain_rustls)
}

/// The rustls error in `error`'s causes. An `io::Error`'s `source()` skips
/// the error it wraps (and HTTP clients wrap one io::Error in another), so
/// wrapped errors are looked into too.
fn find_rustls<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut cause = Some(error);
    let mut depth = 0;
    while let Some(e) = cause {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        cause = match e.downcast_ref::<io::Error>().and_then(|io| io.get_ref()) {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
        depth += 1;
        if depth > 32 {
            return None;
        }
    }
    None
}

/// A failed handshake with `hostport`: kind `InvalidData` (see
/// [`is_tls_refusal`]) when TLS itself refused, with what to fix.
fn tls_failure(hostport: &str, e: &io::Error) -> io::Error {
    match find_rustls(e) {
        Some(tls) => io::Error::new(
            io::ErrorKind::InvalidData,
            format!("TLS with {hostport}: {}", explain_rustls(tls)),
        ),
        None => io::Error::new(e.kind(), format!("TLS with {hostport}: {e}")),
    }
}

/// Whether a [`Connector::connect`] error is a refusal that trying again
/// cannot mend: a certificate not signed by the CA, no CA for an
/// `https://` URL, a server that does not speak TLS.
pub fn is_tls_refusal(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput)
        || explain(e).is_some()
}

fn explain_rustls(e: &rustls::Error) -> String {
    use rustls::{AlertDescription as A, CertificateError as C, Error as E};
    match e {
        E::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => format!(
            "the server's certificate is not signed by a trusted CA ({e}): give the CA that \
             signed it (--tls-ca)"
        ),
        E::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => format!(
            "the server's certificate does not name the host connected to ({e}): connect by a \
             name or address in its subject alternative names"
        ),
        E::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            format!("the server's certificate has expired ({e})")
        }
        E::AlertReceived(A::UnknownCA | A::BadCertificate | A::CertificateRequired) => format!(
            "the server refused this process's certificate ({e}): it must be signed by the \
             cluster's CA"
        ),
        E::InvalidMessage(_) => {
            format!("the server did not answer in TLS ({e}): is it serving plain http://?")
        }
        e => format!("TLS failed: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Ca {
        cert: rcgen::Certificate,
        issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    }

    fn ca(name: &str) -> Ca {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("self-signed");
        Ca { cert, issuer: rcgen::Issuer::new(params, key) }
    }

    fn leaf(ca: &Ca) -> (String, String) {
        let mut params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
                .expect("params");
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &ca.issuer).expect("signed");
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn bad_files_are_named() {
        let e = parse_certs(b"hello", "cert.pem").expect_err("no certificate");
        assert!(e.to_string().starts_with("cert.pem: no certificate"), "{e}");
        let e = parse_key(b"", "key.pem").expect_err("no key");
        assert!(e.to_string().starts_with("key.pem: no private key"), "{e}");
        let a = ca("a");
        let (cert, _) = leaf(&a);
        let (_, other_key) = leaf(&a);
        let e = Identity::from_pem(cert.as_bytes(), "cert.pem", other_key.as_bytes(), "key.pem")
            .expect_err("mismatch");
        assert!(
            e.to_string().contains("key.pem is not the key of the certificate in cert.pem"),
            "{e}"
        );
    }

    #[test]
    fn urls_split() {
        assert_eq!(
            split_url("https://127.0.0.1:7070/x").expect("ok"),
            (true, "127.0.0.1:7070", "127.0.0.1")
        );
        assert_eq!(split_url("http://h:1").expect("ok"), (false, "h:1", "h"));
        assert_eq!(split_url("[::1]:5").expect("ok"), (false, "[::1]:5", "::1"));
        assert!(split_url("ftp://h:1").is_err());
    }

    /// A handshake with the right CA works; one against a server whose
    /// certificate another CA signed fails, and says why.
    #[tokio::test]
    async fn handshakes_check_the_ca() {
        let (good, other) = (ca("good"), ca("other"));
        let (cert, key) = leaf(&good);
        let id = Identity::from_pem(cert.as_bytes(), "c", key.as_bytes(), "k").expect("identity");
        let server = server_config(&id, None).expect("server");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let acceptor = TlsAcceptor::from(server);
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(mut s) = acceptor.accept(tcp).await {
                        let _ = tokio::io::AsyncWriteExt::write_all(&mut s, b"hi").await;
                        let _ = tokio::io::AsyncWriteExt::shutdown(&mut s).await;
                    }
                });
            }
        });
        let url = format!("https://{addr}");
        let roots = parse_roots(good.cert.pem().as_bytes(), "ca").expect("roots");
        let ok = Connector::new(Some(client_config(roots, None).expect("client")));
        let mut s = ok.connect(&url).await.expect("connects");
        let mut got = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut s, &mut got).await.expect("read");
        assert_eq!(got, b"hi");

        let roots = parse_roots(other.cert.pem().as_bytes(), "ca").expect("roots");
        let wrong = Connector::new(Some(client_config(roots, None).expect("client")));
        let e = wrong.connect(&url).await.expect_err("refused");
        assert!(e.to_string().contains("not signed by a trusted CA"), "{e}");

        let e = Connector::default().connect(&url).await.expect_err("no CA");
        assert!(e.to_string().contains("needs a CA"), "{e}");
    }
}
