//! Token helpers: keys generated at test time (RSA, P-256, Ed25519, HMAC),
//! tokens signed with them, their JWKS document, and a JWKS server.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::KeyPair;
use base64::Engine;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

/// A signing key and its public JWK.
pub struct Signer {
    pub alg: Algorithm,
    pub kid: String,
    pub key: EncodingKey,
    pub jwk: Option<Jwk>,
    /// The public key as PEM text (RSA only): an HMAC secret in the confusion attack.
    pub public_pem: Vec<u8>,
}

fn pem(label: &str, der: &[u8]) -> Vec<u8> {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap()).collect();
    format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", lines.join("\n")).into_bytes()
}

impl Signer {
    pub fn rsa(kid: &str) -> Signer {
        let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let der = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&pair).unwrap();
        let key = EncodingKey::from_rsa_pem(&pem("PRIVATE KEY", der.as_ref())).unwrap();
        let public = AsDer::<aws_lc_rs::encoding::PublicKeyX509Der>::as_der(pair.public_key()).unwrap();
        Signer::with(Algorithm::RS256, kid, key, pem("PUBLIC KEY", public.as_ref()))
    }

    pub fn ec(kid: &str) -> Signer {
        let alg = &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let pair = aws_lc_rs::signature::EcdsaKeyPair::generate(alg).unwrap();
        let der = pair.to_pkcs8v1().unwrap();
        Signer::with(Algorithm::ES256, kid, EncodingKey::from_ec_der(der.as_ref()), Vec::new())
    }

    pub fn ed(kid: &str) -> Signer {
        let pair = aws_lc_rs::signature::Ed25519KeyPair::generate().unwrap();
        let der = pair.to_pkcs8v1().unwrap();
        Signer::with(Algorithm::EdDSA, kid, EncodingKey::from_ed_der(der.as_ref()), Vec::new())
    }

    pub fn hmac(secret: &[u8]) -> Signer {
        Signer {
            alg: Algorithm::HS256,
            kid: String::new(),
            key: EncodingKey::from_secret(secret).unwrap(),
            jwk: None,
            public_pem: Vec::new(),
        }
    }

    fn with(alg: Algorithm, kid: &str, key: EncodingKey, public_pem: Vec<u8>) -> Signer {
        let mut jwk = Jwk::from_encoding_key(&key, alg).unwrap();
        jwk.common.key_id = Some(kid.to_string());
        Signer { alg, kid: kid.to_string(), key, jwk: Some(jwk), public_pem }
    }

    /// A token with these claims, its header naming the key.
    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = (!self.kid.is_empty()).then(|| self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.key).unwrap()
    }

    /// A token with a header of one's own choosing.
    pub fn sign_header(&self, header: &Header, claims: &Value) -> String {
        jsonwebtoken::encode(header, claims, &self.key).unwrap()
    }
}

/// The JWKS document of these keys.
pub fn jwks(signers: &[&Signer]) -> String {
    let keys: Vec<&Jwk> = signers.iter().filter_map(|s| s.jwk.as_ref()).collect();
    serde_json::to_string(&json!({ "keys": keys })).unwrap()
}

/// Unix seconds now.
pub fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// Claims of a token for client `sub` from `iss` to `aud`, valid for `ttl` seconds.
pub fn claims(iss: &str, aud: &str, sub: &str, ttl: i64) -> Value {
    json!({ "iss": iss, "aud": aud, "sub": sub, "iat": now(), "exp": now() + ttl })
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A token with an arbitrary header and claims and no valid signature.
pub fn unsigned(header: &Value, claims: &Value, signature: &str) -> String {
    format!("{}.{}.{signature}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()))
}

/// `token` with its payload replaced by `claims` (the signature kept).
pub fn tampered(token: &str, claims: &Value) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    format!("{}.{}.{}", parts[0], b64(claims.to_string().as_bytes()), parts[2])
}

/// A JWKS document served over HTTP on 127.0.0.1:0, replaceable, counting
/// fetches; while `down`, connections are answered with 503.
#[derive(Clone)]
pub struct JwksServer {
    pub addr: std::net::SocketAddr,
    pub doc: Arc<Mutex<String>>,
    pub fetches: Arc<AtomicUsize>,
    pub down: Arc<AtomicBool>,
    pub tls: bool,
}

impl JwksServer {
    /// Over plain HTTP.
    pub async fn start(doc: &str, down: bool) -> JwksServer {
        JwksServer::start_with(doc, down, None).await
    }

    /// Over HTTPS with the certificate and key PEM files (SNI `localhost`).
    pub async fn start_tls(doc: &str, cert: &std::path::Path, key: &std::path::Path) -> JwksServer {
        use rustls::pki_types::pem::PemObject;
        let chain =
            rustls::pki_types::CertificateDer::pem_file_iter(cert).unwrap().collect::<Result<Vec<_>, _>>().unwrap();
        let key = rustls::pki_types::PrivateKeyDer::from_pem_file(key).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(keygate::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        JwksServer::start_with(doc, false, Some(acceptor)).await
    }

    async fn start_with(doc: &str, down: bool, tls: Option<tokio_rustls::TlsAcceptor>) -> JwksServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = JwksServer {
            addr: listener.local_addr().unwrap(),
            doc: Arc::new(Mutex::new(doc.to_string())),
            fetches: Arc::default(),
            down: Arc::new(AtomicBool::new(down)),
            tls: tls.is_some(),
        };
        let state = server.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (state, tls) = (state.clone(), tls.clone());
                tokio::spawn(async move {
                    match tls {
                        None => serve(tcp, state).await,
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(tcp).await {
                                serve(stream, state).await;
                            }
                        }
                    }
                });
            }
        });
        server
    }

    pub fn url(&self) -> String {
        match self.tls {
            true => format!("https://localhost:{}/jwks.json", self.addr.port()),
            false => format!("http://{}/jwks.json", self.addr),
        }
    }

    pub fn set(&self, doc: &str) {
        *self.doc.lock().unwrap() = doc.to_string();
    }

    pub fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

/// Answer one connection: the document, or 503 while `down`.
async fn serve<I>(io: I, state: JwksServer)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use http_body_util::Full;
    use hyper::service::service_fn;
    let service = service_fn(move |_req: http::Request<hyper::body::Incoming>| {
        let state = state.clone();
        async move {
            let (status, body) = match state.down.load(Ordering::SeqCst) {
                true => (503, String::new()),
                false => {
                    state.fetches.fetch_add(1, Ordering::SeqCst);
                    (200, state.doc.lock().unwrap().clone())
                }
            };
            let mut res = http::Response::new(Full::new(bytes::Bytes::from(body)));
            *res.status_mut() = http::StatusCode::from_u16(status).unwrap();
            Ok::<_, std::convert::Infallible>(res)
        }
    });
    let _ =
        hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(io), service).await;
}
