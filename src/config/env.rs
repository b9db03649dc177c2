//! `KEYGATE_*` environment variables, merged over the file.
//!
//! A sidecar needs no file at all: `KEYGATE_UPSTREAM` defines upstream and
//! route `default`, and each `KEYGATE_KEY_<CLIENT>` defines a client.

use std::time::Duration;

use super::error::Origin;
use super::validate::{parse_server_url, resolve_path, Checker};
use super::{Allowed, Client, Config, Env, Rate, Route, TlsFiles, Upstream};
use crate::keys;

const KEY_PREFIX: &str = "KEYGATE_KEY_";
const ROUTES_PREFIX: &str = "KEYGATE_ROUTES_";

/// Apply the environment over `config`, recording problems under the variable's name.
pub(super) fn apply(c: &mut Checker<'_>, config: &mut Config, env: &Env, default_rate: Rate) {
    if let Some(v) = env.get("KEYGATE_LISTEN") {
        match v.parse() {
            Ok(addr) => config.listen.address = addr,
            Err(_) => bad(c, "KEYGATE_LISTEN", format!("\"{v}\" is not an address like 0.0.0.0:8443")),
        }
    }
    if let Some(v) = env.get("KEYGATE_ADMIN").filter(|v| !v.is_empty()) {
        match v.parse() {
            Ok(addr) => config.admin = Some(addr),
            Err(_) => bad(c, "KEYGATE_ADMIN", format!("\"{v}\" is not an address like 127.0.0.1:9901")),
        }
    }
    tls(c, config, env);
    upstream(c, config, env);
    clients(c, config, env, default_rate);
}

fn bad(c: &mut Checker<'_>, var: &str, message: String) {
    c.push(Origin::Env(var.to_string()), "", message);
}

fn tls(c: &mut Checker<'_>, config: &mut Config, env: &Env) {
    let cert = env.get("KEYGATE_TLS_CERT").filter(|v| !v.is_empty());
    let key = env.get("KEYGATE_TLS_KEY").filter(|v| !v.is_empty());
    let existing = config.listen.tls.take();
    config.listen.tls = match (cert, key, existing) {
        (None, None, existing) => existing,
        (Some(cert), Some(key), existing) => Some(TlsFiles {
            cert: readable(c, "KEYGATE_TLS_CERT", cert),
            key: readable(c, "KEYGATE_TLS_KEY", key),
            client_ca: existing.and_then(|t| t.client_ca),
        }),
        (Some(_), None, existing) | (None, Some(_), existing) => {
            bad(c, "KEYGATE_TLS_CERT", "KEYGATE_TLS_CERT and KEYGATE_TLS_KEY go together".into());
            existing
        }
    };
}

fn readable(c: &mut Checker<'_>, var: &str, value: &str) -> std::path::PathBuf {
    let path = resolve_path(None, value);
    if let Err(e) = std::fs::File::open(&path) {
        bad(c, var, format!("cannot read {}: {e}", path.display()));
    }
    path
}

fn upstream(c: &mut Checker<'_>, config: &mut Config, env: &Env) {
    let Some(url) = env.get("KEYGATE_UPSTREAM").filter(|v| !v.is_empty()) else {
        return;
    };
    if !config.routes.is_empty() {
        let msg = "the configuration file already defines routes; set one or the other";
        return bad(c, "KEYGATE_UPSTREAM", msg.into());
    }
    if config.upstreams.iter().any(|u| u.name == "default") {
        let msg = "the configuration file already defines upstream \"default\"";
        return bad(c, "KEYGATE_UPSTREAM", msg.into());
    }
    let uri = match parse_server_url(url) {
        Ok(uri) => uri,
        Err(e) => return bad(c, "KEYGATE_UPSTREAM", e),
    };
    config.upstreams.push(Upstream {
        name: "default".into(),
        servers: vec![uri],
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(30),
        ca: None,
    });
    config.routes.push(Route {
        name: "default".into(),
        path: "/".into(),
        methods: None,
        upstream: config.upstreams.len() - 1,
        host: None,
        max_body: None,
    });
}

/// The client id named by a variable suffix: `BILLING_V2` → `billing-v2`.
pub fn client_id_from_env(suffix: &str) -> String {
    suffix.to_ascii_lowercase().replace('_', "-")
}

fn clients(c: &mut Checker<'_>, config: &mut Config, env: &Env, default_rate: Rate) {
    for (var, plain) in env.iter().filter(|(k, _)| k.starts_with(KEY_PREFIX)) {
        let suffix = &var[KEY_PREFIX.len()..];
        let id = client_id_from_env(suffix);
        if id.is_empty() || !keys::valid_client_id(&id) {
            bad(c, var, "the name after KEYGATE_KEY_ must be a client id (letters, digits, '_')".into());
            continue;
        }
        if plain.is_empty() {
            bad(c, var, "is empty".into());
            continue;
        }
        let allowed = env_routes(c, config, env, suffix);
        let key = keys::digest(plain.as_bytes());
        let origin = super::KeyOrigin::Env(var.clone());
        let key = super::Key { digest: key, not_before: None, expires: None, origin };
        match config.clients.iter_mut().find(|cl| cl.id == id) {
            Some(existing) => existing.keys.push(key),
            None => config.clients.push(Client {
                id,
                allowed: allowed.unwrap_or(Allowed::All),
                rate: default_rate,
                keys: vec![key],
                tls_subjects: Vec::new(),
                quota: None,
            }),
        }
    }
    for var in env.keys().filter(|k| k.starts_with(ROUTES_PREFIX)) {
        let suffix = &var[ROUTES_PREFIX.len()..];
        if !env.contains_key(&format!("{KEY_PREFIX}{suffix}")) {
            bad(c, var, format!("has no matching {KEY_PREFIX}{suffix}"));
        }
    }
}

fn env_routes(c: &mut Checker<'_>, config: &Config, env: &Env, suffix: &str) -> Option<Allowed> {
    let var = format!("{ROUTES_PREFIX}{suffix}");
    let list = env.get(&var)?;
    let mut indices = Vec::new();
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        if name == "*" {
            return Some(Allowed::All);
        }
        match config.routes.iter().position(|r| r.name == name) {
            Some(i) => indices.push(i),
            None => bad(c, &var, format!("unknown route \"{name}\"")),
        }
    }
    indices.sort_unstable();
    indices.dedup();
    Some(Allowed::Only(indices))
}
