//! `keygate demo`: an echo upstream, a fresh key and a fresh CA-signed
//! certificate, keygate serving HTTPS on loopback, and curl commands to try.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use super::{OK, RUNTIME};
use crate::{app, config, keys};

/// Run the demo until Ctrl-C.
pub fn run() -> u8 {
    let rt = match super::runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return RUNTIME;
        }
    };
    match rt.block_on(demo()) {
        Ok(()) => OK,
        Err(e) => {
            eprintln!("error: {e:#}");
            RUNTIME
        }
    }
}

async fn demo() -> anyhow::Result<()> {
    let dir = demo_dir()?;
    let result = serve_demo(&dir).await;
    // The folder holds a private key: remove it however the demo ended.
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn serve_demo(dir: &Path) -> anyhow::Result<()> {
    let upstream = TcpListener::bind("127.0.0.1:0").await?;
    let upstream_addr = upstream.local_addr()?;
    tokio::spawn(echo_server(upstream));
    let ca = write_certs(dir)?;
    let key = keys::new_uuid();
    let port = free_port_or_default().await;
    let toml = demo_config(port, upstream_addr, &keys::format_hash(&keys::digest(key.as_bytes())), dir);
    let config_path = dir.join("keygate.toml");
    std::fs::write(&config_path, &toml)?;
    let config = config::load(Some(&config_path), &config::Env::new()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let handle = app::start(config).await?;
    print_tour(handle.addr, &key, &ca, &config_path);
    stop_signal().await?;
    handle.shutdown();
    handle.wait().await;
    Ok(())
}

/// Ctrl-C, or SIGTERM (`kill`, `timeout`, `docker stop`), so the folder is removed either way.
async fn stop_signal() -> std::io::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r,
        _ = term.recv() => Ok(()),
    }
}

async fn free_port_or_default() -> u16 {
    match TcpListener::bind("127.0.0.1:8443").await {
        Ok(_) => 8443,
        Err(_) => 0,
    }
}

/// A fresh folder only this user can read: it holds the demo's private key.
/// Created, never reused, so nobody can plant files in it beforehand.
fn demo_dir() -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let mut nonce = [0u8; 4];
    getrandom::fill(&mut nonce).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let name = format!("keygate-demo-{}-{}", std::process::id(), hex::encode(nonce));
    let dir = std::env::temp_dir().join(name);
    std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    Ok(dir)
}

/// A CA and a server certificate for `localhost` signed by it; returns the CA file.
fn write_certs(dir: &Path) -> anyhow::Result<PathBuf> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "keygate demo CA");
    let ca = ca_params.self_signed(&ca_key)?;
    let leaf_key = KeyPair::generate()?;
    let mut leaf_params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])?;
    leaf_params.distinguished_name.push(DnType::CommonName, "localhost");
    let leaf = leaf_params.signed_by(&leaf_key, &ca, &ca_key)?;
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.pem())?;
    std::fs::write(dir.join("server.pem"), leaf.pem())?;
    std::fs::write(dir.join("server.key"), leaf_key.serialize_pem())?;
    Ok(ca_file)
}

fn demo_config(port: u16, upstream: SocketAddr, hash: &str, dir: &Path) -> String {
    format!(
        r#"[listen]
address = "127.0.0.1:{port}"
[listen.tls]
cert = "{cert}"
key = "{key}"
[upstreams.echo]
servers = ["http://{upstream}"]
[[routes]]
name = "echo"
path = "/echo"
upstream = "echo"
[[routes]]
name = "admin"
path = "/admin"
upstream = "echo"
[clients.demo]
routes = ["echo"]
rate_limit = {{ per_second = 1, burst = 5 }}
keys = [{{ hash = "{hash}" }}]
"#,
        cert = dir.join("server.pem").display(),
        key = dir.join("server.key").display(),
    )
}

fn print_tour(addr: SocketAddr, key: &str, ca: &Path, config: &Path) {
    let base = format!("https://localhost:{}", addr.port());
    // Quoted, so the commands work whatever the temporary folder is called.
    let ca = format!("'{}'", ca.display());
    println!("keygate demo: HTTPS proxy on {base}, echo upstream behind it");
    println!("config: {}   (the demo key, printed here once for you to try:)", config.display());
    println!("  export KEY={key}\n");
    println!("# accepted: the echo shows no X-API-Key, and X-Client-Id: demo");
    println!("curl --cacert {ca} -H \"X-API-Key: $KEY\" {base}/echo/hello\n");
    println!("# missing key: 401 missing_api_key");
    println!("curl --cacert {ca} -i {base}/echo/hello\n");
    println!("# wrong key: 401 invalid_api_key");
    println!("curl --cacert {ca} -i -H 'X-API-Key: wrong' {base}/echo/hello\n");
    println!("# forbidden route: 403 forbidden");
    println!("curl --cacert {ca} -i -H \"X-API-Key: $KEY\" {base}/admin\n");
    // The accepted call above spent one of the five; a 403 spends none.
    println!("# rate limited: a burst of 5 (the accepted call above spent one), so four 200s, then 429 rate_limited with Retry-After");
    println!("for i in 1 2 3 4 5 6 7; do curl --cacert {ca} -s -o /dev/null -w '%{{http_code}}\\n' -H \"X-API-Key: $KEY\" {base}/echo; done\n");
    println!("Ctrl-C stops the demo.");
}

async fn echo_server(listener: TcpListener) {
    while let Ok((tcp, _)) = listener.accept().await {
        tokio::spawn(async move {
            let service = service_fn(echo);
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

/// Answer with what was received, as JSON.
async fn echo(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let headers: serde_json::Map<String, serde_json::Value> =
        parts.headers.iter().map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into())).collect();
    let echo = serde_json::json!({
        "method": parts.method.as_str(),
        "uri": parts.uri.to_string(),
        "headers": headers,
        "body_bytes": body.len(),
    });
    let mut text = serde_json::to_string_pretty(&echo).unwrap_or_default();
    text.push('\n');
    let mut response = Response::new(Full::new(Bytes::from(text)));
    response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    Ok(response)
}
