//! `keygate healthcheck`: exit 0 when keygate's own `/healthz` answers, so
//! images need no curl. With no URL, the admin address comes from where
//! `serve` takes it: `KEYGATE_ADMIN`, else the config file's `[admin]`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::{OK, RUNTIME, USAGE};
use crate::admin::HEALTH_MARKER;
use crate::config::{self, Env};

/// Probe `url`, or the admin address of the configuration (`-c FILE` or
/// `$KEYGATE_CONFIG`, with `KEYGATE_ADMIN` first), with a 5 second limit.
pub fn run(url: Option<&str>, flag: Option<PathBuf>) -> u8 {
    let url = match url {
        Some(url) => url.to_string(),
        None => match derived_url(flag, &config::process_env()) {
            Ok(url) => url,
            Err(e) => {
                eprintln!("error: {e}");
                return USAGE;
            }
        },
    };
    probe(&url)
}

/// `http://<admin address>/healthz` as `serve` would bind it.
pub fn derived_url(flag: Option<PathBuf>, env: &Env) -> Result<String, String> {
    let addr = match env.get("KEYGATE_ADMIN").filter(|v| !v.is_empty()) {
        Some(v) => v.parse().map_err(|_| format!("KEYGATE_ADMIN: \"{v}\" is not an address like 127.0.0.1:9901"))?,
        None => match config::config_path(flag, env) {
            Some(path) => file_admin(&path)?,
            None => return Err("no admin address: set KEYGATE_ADMIN, give -c FILE (or KEYGATE_CONFIG) with an [admin] address, or pass the URL".into()),
        },
    };
    if addr.port() == 0 {
        return Err(format!("the admin address {addr} has port 0, chosen at start-up: pass the URL"));
    }
    Ok(format!("http://{}/healthz", on_loopback(addr)))
}

/// The `[admin] address` of a config file, read without validating the rest.
fn file_admin(path: &Path) -> Result<SocketAddr, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    let table: toml::Table =
        text.parse().map_err(|e: toml::de::Error| format!("{}: {}", path.display(), e.message()))?;
    let address = table.get("admin").and_then(|a| a.get("address")).and_then(toml::Value::as_str);
    let address =
        address.ok_or_else(|| format!("{}: no [admin] address, and KEYGATE_ADMIN is not set", path.display()))?;
    address.parse().map_err(|_| format!("{}: admin.address \"{address}\" is not an address", path.display()))
}

/// A wildcard listen address is probed on loopback.
fn on_loopback(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port()),
        IpAddr::V6(ip) if ip.is_unspecified() => SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port()),
        _ => addr,
    }
}

/// Healthy: 200 with keygate's marker header, within 5 seconds.
fn probe(url: &str) -> u8 {
    let Ok(uri) = url.parse::<http::Uri>() else {
        eprintln!("error: \"{url}\" is not a URL");
        return USAGE;
    };
    let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
        return RUNTIME;
    };
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
    let probe = rt.block_on(async { tokio::time::timeout(Duration::from_secs(5), client.get(uri)).await });
    match probe {
        Ok(Ok(r)) if r.status() == http::StatusCode::OK && r.headers().contains_key(HEALTH_MARKER) => OK,
        Ok(Ok(r)) if r.status() == http::StatusCode::OK => {
            eprintln!("unhealthy: {url} answered 200 without keygate's {HEALTH_MARKER} header: another server holds that port");
            RUNTIME
        }
        Ok(Ok(r)) => {
            eprintln!("unhealthy: {url} answered {}", r.status());
            RUNTIME
        }
        Ok(Err(e)) => {
            eprintln!("unhealthy: {url}: {e}");
            RUNTIME
        }
        Err(_) => {
            eprintln!("unhealthy: {url} did not answer within 5s");
            RUNTIME
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Env {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn the_admin_address_comes_from_the_environment_first() {
        let url = derived_url(None, &env(&[("KEYGATE_ADMIN", "0.0.0.0:9911")]));
        assert_eq!(url.as_deref(), Ok("http://127.0.0.1:9911/healthz"));
        let url = derived_url(None, &env(&[("KEYGATE_ADMIN", "[::]:9911")]));
        assert_eq!(url.as_deref(), Ok("http://[::1]:9911/healthz"));
        let url = derived_url(None, &env(&[("KEYGATE_ADMIN", "10.1.2.3:9911")]));
        assert_eq!(url.as_deref(), Ok("http://10.1.2.3:9911/healthz"));
        assert!(derived_url(None, &env(&[("KEYGATE_ADMIN", "127.0.0.1:0")])).is_err());
        assert!(derived_url(None, &env(&[])).is_err());
    }
}
