//! TLS test support: certificates made with rcgen and written to a folder,
//! rustls clients with a chosen root, client certificate, ALPN list and
//! protocol versions, and the recording upstream served over TLS.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, SupportedCipherSuite, SupportedProtocolVersion};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::{Reply, Upstream};

/// How long any one TLS test operation may take.
pub const LIMIT: Duration = Duration::from_secs(10);

/// A test certificate authority.
pub struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A certificate issued by a [`Ca`], with its key.
#[derive(Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
}

impl Ca {
    /// A new self-signed CA named `name`.
    pub fn new(name: &str) -> Ca {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).expect("self-sign CA");
        Ca { cert, key }
    }

    /// The CA certificate.
    pub fn der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }

    /// Write the CA certificate to `dir/name` and return the path.
    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, self.cert.pem()).expect("write CA");
        path
    }

    /// A server certificate for `localhost` and `127.0.0.1`.
    pub fn server(&self) -> Issued {
        self.server_with(|_| {})
    }

    /// A server certificate for `localhost` and `127.0.0.1`, with `edit` applied
    /// to its parameters (e.g. to make it expired).
    pub fn server_with(&self, edit: impl FnOnce(&mut CertificateParams)) -> Issued {
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let mut params = CertificateParams::new(names).expect("server params");
        params.distinguished_name.push(DnType::CommonName, "localhost");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        edit(&mut params);
        self.issue(params)
    }

    /// A server certificate for `names` only.
    pub fn server_for(&self, names: &[&str]) -> Issued {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("server params");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params)
    }

    /// A server certificate like [`Ca::server`] for the given key.
    pub fn server_with_key(&self, key: KeyPair) -> Issued {
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let mut params = CertificateParams::new(names).expect("server params");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &self.cert, &self.key).expect("sign leaf");
        Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem(), der: cert.der().clone() }
    }

    /// A client certificate with subject `CN=cn`.
    pub fn client(&self, cn: &str) -> Issued {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("client params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params)
    }

    /// A client certificate with `CN=cn` and `edit` applied to its parameters
    /// (e.g. more subject attributes).
    pub fn client_with(&self, cn: &str, edit: impl FnOnce(&mut CertificateParams)) -> Issued {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("client params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        edit(&mut params);
        self.issue(params)
    }

    fn issue(&self, params: CertificateParams) -> Issued {
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.cert, &self.key).expect("sign leaf");
        Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem(), der: cert.der().clone() }
    }
}

impl Issued {
    /// Write `dir/name.pem` and `dir/name.key`; returns both paths.
    pub fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{name}.pem"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&cert, &self.cert_pem).expect("write cert");
        std::fs::write(&key, &self.key_pem).expect("write key");
        (cert, key)
    }

    /// The certificate and key as one rustls client identity.
    fn identity(&self) -> (Vec<CertificateDer<'static>>, rustls::pki_types::PrivateKeyDer<'static>) {
        use rustls::pki_types::pem::PemObject;
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).expect("key PEM");
        (vec![self.der.clone()], key)
    }
}

/// A `[listen.tls]` table for `cert`/`key`, with `client_ca` when given.
pub fn listen_tls(cert: &Path, key: &Path, client_ca: Option<&Path>) -> String {
    let mut s = format!("\n[listen.tls]\ncert = \"{}\"\nkey = \"{}\"\n", cert.display(), key.display());
    if let Some(ca) = client_ca {
        s += &format!("client_ca = \"{}\"\n", ca.display());
    }
    s
}

/// What a test client offers.
#[derive(Clone, Copy)]
pub struct Offer<'a> {
    pub cert: Option<&'a Issued>,
    pub alpn: &'a [&'a str],
    pub versions: &'a [&'static SupportedProtocolVersion],
    /// Cipher suites in the client's order of preference; empty: the provider's.
    pub suites: &'a [SupportedCipherSuite],
}

impl Default for Offer<'_> {
    fn default() -> Self {
        Offer { cert: None, alpn: &["h2", "http/1.1"], versions: rustls::ALL_VERSIONS, suites: &[] }
    }
}

/// A rustls client trusting `root` alone. Resumption is off, so every
/// connection sees the server's current certificate.
pub fn client_config(root: &CertificateDer<'static>, offer: Offer<'_>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(root.clone()).expect("root");
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    if !offer.suites.is_empty() {
        provider.cipher_suites = offer.suites.to_vec();
    }
    let builder = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(offer.versions)
        .expect("versions")
        .with_root_certificates(roots);
    let mut config = match offer.cert {
        None => builder.with_no_client_auth(),
        Some(issued) => {
            let (chain, key) = issued.identity();
            builder.with_client_auth_cert(chain, key).expect("client cert")
        }
    };
    config.alpn_protocols = offer.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

enum Sender {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

/// One open TLS connection to keygate, speaking what ALPN chose.
pub struct TlsConn {
    sender: Sender,
    authority: String,
    /// The protocol ALPN selected, if any.
    pub alpn: Option<String>,
    /// The server's leaf certificate.
    pub peer: CertificateDer<'static>,
    /// The TLS version negotiated.
    pub version: Option<rustls::ProtocolVersion>,
    /// The cipher suite negotiated.
    pub suite: Option<rustls::CipherSuite>,
}

impl TlsConn {
    /// Connect to `addr` as `localhost` and complete the handshake.
    pub async fn connect(addr: SocketAddr, config: Arc<ClientConfig>) -> Result<TlsConn, String> {
        tokio::time::timeout(LIMIT, Self::connect_unbounded(addr, config))
            .await
            .map_err(|_| "TLS connect timed out".to_string())?
    }

    async fn connect_unbounded(addr: SocketAddr, config: Arc<ClientConfig>) -> Result<TlsConn, String> {
        let tcp = TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
        let name = ServerName::try_from("localhost").expect("name");
        let tls = TlsConnector::from(config).connect(name, tcp).await.map_err(|e| format!("handshake: {e}"))?;
        let (_, session) = tls.get_ref();
        let alpn = session.alpn_protocol().map(|p| String::from_utf8_lossy(p).into_owned());
        let peer = session.peer_certificates().and_then(|c| c.first()).cloned().ok_or("no server certificate")?;
        let version = session.protocol_version();
        let suite = session.negotiated_cipher_suite().map(|s| s.suite());
        let io = TokioIo::new(tls);
        let sender = if alpn.as_deref() == Some("h2") {
            let (sender, conn) = http2::handshake(TokioExecutor::new(), io).await.map_err(|e| format!("h2: {e}"))?;
            tokio::spawn(conn);
            Sender::H2(sender)
        } else {
            let (sender, conn) = http1::handshake(io).await.map_err(|e| format!("h1: {e}"))?;
            tokio::spawn(conn);
            Sender::H1(sender)
        };
        Ok(TlsConn { sender, authority: format!("localhost:{}", addr.port()), alpn, peer, version, suite })
    }

    /// GET `path` with `headers` on this connection and read the whole response.
    pub async fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> Result<Reply, String> {
        tokio::time::timeout(LIMIT, self.get_unbounded(path, headers))
            .await
            .map_err(|_| "request timed out".to_string())?
    }

    async fn get_unbounded(&mut self, path: &str, headers: &[(&str, &str)]) -> Result<Reply, String> {
        let mut b = match self.sender {
            Sender::H1(_) => Request::get(path).header("host", &self.authority),
            Sender::H2(_) => Request::get(format!("https://{}{path}", self.authority)),
        };
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b.body(Full::new(Bytes::new())).map_err(|e| e.to_string())?;
        let res = match &mut self.sender {
            Sender::H1(s) => {
                s.ready().await.map_err(|e| format!("h1 not ready: {e}"))?;
                s.send_request(req).await
            }
            Sender::H2(s) => {
                s.ready().await.map_err(|e| format!("h2 not ready: {e}"))?;
                s.send_request(req).await
            }
        };
        let res = res.map_err(|e| format!("request: {e:?}"))?;
        let (parts, body) = res.into_parts();
        let body = body.collect().await.map_err(|e| format!("body: {e}"))?.to_bytes();
        Ok(Reply { status: parts.status, headers: parts.headers, body })
    }
}

/// Connect, GET `path` once, and return the response (or why there was none).
pub async fn tls_get(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Reply, String> {
    TlsConn::connect(addr, config).await?.get(path, headers).await
}

/// Presents its certificate only to clients that ask for `localhost` by SNI,
/// so a test sees whether the caller sent SNI from the URL's host.
#[derive(Debug)]
struct LocalhostOnly(Arc<CertifiedKey>);

impl ResolvesServerCert for LocalhostOnly {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        (hello.server_name() == Some("localhost")).then(|| self.0.clone())
    }
}

impl Upstream {
    /// The recording upstream, served over TLS with `cert` and `key` (PEM
    /// files) to clients that send SNI `localhost`.
    pub async fn start_tls(cert: &Path, key: &Path) -> Upstream {
        use rustls::pki_types::pem::PemObject;
        let chain = CertificateDer::pem_file_iter(cert).expect("cert").collect::<Result<Vec<_>, _>>().expect("PEM");
        let key = rustls::pki_types::PrivateKeyDer::from_pem_file(key).expect("key");
        let provider = keygate::tls::provider();
        let certified = CertifiedKey::from_der(chain, key, &provider).expect("upstream cert");
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(LocalhostOnly(Arc::new(certified))));
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind TLS upstream");
        let up = Upstream {
            addr: listener.local_addr().expect("addr"),
            received: Arc::default(),
            before_last_chunk: Arc::default(),
            release: Arc::default(),
        };
        let state = up.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (state, acceptor) = (state.clone(), acceptor.clone());
                tokio::spawn(async move {
                    let Ok(Ok(tls)) = tokio::time::timeout(LIMIT, acceptor.accept(tcp)).await else {
                        return;
                    };
                    let service = service_fn(move |req| super::upstream::answer(req, state.clone()));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        up
    }
}
