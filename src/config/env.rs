//! `KEYGATE_*` environment variables, merged over the file.
//!
//! A sidecar needs no file at all: `KEYGATE_UPSTREAM` defines upstream and
//! route `default`, and each `KEYGATE_KEY_<CLIENT>` defines a client.

use std::time::Duration;

use super::error::{Origin, Problem};
use super::validate::{parse_server_url, resolve_path, Checker};
use super::{suggest, Client, Config, Env, Grants, Rate, Route, TlsFiles, Upstream};
use crate::keys;

const KEY_PREFIX: &str = "KEYGATE_KEY_";
const ROUTES_PREFIX: &str = "KEYGATE_ROUTES_";
const UPSTREAMS_PREFIX: &str = "KEYGATE_UPSTREAMS_";

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
    shutdown_grace(c, config, env);
    tls(c, config, env);
    upstream(c, config, env);
    clients(c, config, env, default_rate);
    proxies(c, config, env);
    unknown(c, env);
}

/// Every variable keygate reads by its full name.
const KNOWN: &[&str] = &[
    "KEYGATE_CONFIG",
    "KEYGATE_LISTEN",
    "KEYGATE_ADMIN",
    "KEYGATE_TLS_CERT",
    "KEYGATE_TLS_KEY",
    "KEYGATE_UPSTREAM",
    "KEYGATE_LOG",
    "KEYGATE_LOG_FORMAT",
    "KEYGATE_TRUSTED_PROXIES",
    "KEYGATE_PROXY_PROTOCOL",
    "KEYGATE_SHUTDOWN_GRACE",
    "KEYGATE_REDIS_URL",
    "KEYGATE_JWT_ISSUER",
    "KEYGATE_JWT_AUDIENCES",
    "KEYGATE_JWT_ALGORITHMS",
    "KEYGATE_JWT_JWKS_URL",
    "KEYGATE_JWT_JWKS_FILE",
    "KEYGATE_JWT_SECRET_ENV",
];

/// Variables keygate reads by prefix, followed by a client id.
const PREFIXES: &[&str] = &[KEY_PREFIX, ROUTES_PREFIX, UPSTREAMS_PREFIX];

/// A `KEYGATE_*` variable keygate does not read is most likely a typo
/// (`KEYGATE_LISTN`) that silently changes nothing: warn, with a hint.
fn unknown(c: &mut Checker<'_>, env: &Env) {
    let unknown = env.keys().filter(|k| k.starts_with("KEYGATE_")).filter(|k| {
        !KNOWN.contains(&k.as_str()) && !PREFIXES.iter().any(|p| k.strip_prefix(p).is_some_and(|rest| !rest.is_empty()))
    });
    for var in unknown {
        let message = suggest::with_hint("keygate reads no such variable".into(), var, KNOWN.iter().copied());
        c.warnings.push(Problem { origin: Origin::Env(var.clone()), field: String::new(), message });
    }
}

fn bad(c: &mut Checker<'_>, var: &str, message: String) {
    c.push(Origin::Env(var.to_string()), "", message);
}

/// `KEYGATE_SHUTDOWN_GRACE` over `listen.shutdown_grace`: an env-only sidecar
/// must be able to fit the drain inside its container's stop timeout.
fn shutdown_grace(c: &mut Checker<'_>, config: &mut Config, env: &Env) {
    const VAR: &str = "KEYGATE_SHUTDOWN_GRACE";
    let Some(v) = env.get(VAR).filter(|v| !v.is_empty()) else { return };
    match super::validate::parse_duration(v) {
        Ok(d) if super::validate::DURATION_RANGE.contains(&d) => config.listen.shutdown_grace = d,
        Ok(_) => bad(c, VAR, "must be from 1ms to 24h".into()),
        Err(e) => bad(c, VAR, e),
    }
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
        health: super::HealthPolicy::default(),
        protocol: super::Protocol::Http1,
    });
    config.routes.push(Route {
        name: "default".into(),
        path: "/".into(),
        methods: None,
        upstream: config.upstreams.len() - 1,
        host: None,
        max_body: None,
        request_headers: super::HeaderRules::default(),
        strip_segments: 0,
        scopes: Vec::new(),
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
        if let Some(problem) = short_key(var, plain) {
            bad(c, var, problem);
            continue;
        }
        let grants = env_grants(c, config, env, suffix);
        let key = keys::digest(plain.as_bytes());
        let origin = super::KeyOrigin::Env(var.clone());
        let key = super::Key { digest: key, not_before: None, expires: None, origin, name: None };
        match config.clients.iter_mut().find(|cl| cl.id == id) {
            Some(existing) => existing.keys.push(key),
            None => config.clients.push(Client {
                id,
                allowed: grants.allowed(&config.routes),
                grants,
                rate: default_rate,
                keys: vec![key],
                tls_subjects: Vec::new(),
                max_in_flight: None,
                quota: None,
            }),
        }
    }
    for prefix in [ROUTES_PREFIX, UPSTREAMS_PREFIX] {
        for var in env.keys().filter(|k| k.starts_with(prefix)) {
            let suffix = &var[prefix.len()..];
            if !env.contains_key(&format!("{KEY_PREFIX}{suffix}")) {
                bad(c, var, format!("has no matching {KEY_PREFIX}{suffix}"));
            }
        }
    }
}

/// The grants of an environment client: every route, unless
/// `KEYGATE_ROUTES_<CLIENT>` or `KEYGATE_UPSTREAMS_<CLIENT>` names some.
fn env_grants(c: &mut Checker<'_>, config: &Config, env: &Env, suffix: &str) -> Grants {
    let routes_var = format!("{ROUTES_PREFIX}{suffix}");
    let upstreams_var = format!("{UPSTREAMS_PREFIX}{suffix}");
    let (routes, upstreams) = (env.get(&routes_var), env.get(&upstreams_var));
    if routes.is_none() && upstreams.is_none() {
        return Grants { all: true, ..Grants::default() };
    }
    let mut grants = Grants::default();
    if let Some(list) = routes {
        grants.all = list.split(',').any(|n| n.trim() == "*");
        let names: Vec<&str> = config.routes.iter().map(|r| r.name.as_str()).collect();
        grants.routes = env_list(c, &routes_var, list, &names, "route");
    }
    if let Some(list) = upstreams {
        let names: Vec<&str> = config.upstreams.iter().map(|u| u.name.as_str()).collect();
        grants.upstreams = env_list(c, &upstreams_var, list, &names, "upstream");
    }
    grants
}

/// The sorted indices of the comma-separated names in `list` (`*` aside).
fn env_list(c: &mut Checker<'_>, var: &str, list: &str, names: &[&str], kind: &str) -> Vec<usize> {
    let mut indices = Vec::new();
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty() && *n != "*") {
        match names.iter().position(|n| *n == name) {
            Some(i) => indices.push(i),
            None => bad(c, var, suggest::with_hint(format!("unknown {kind} \"{name}\""), name, names.iter().copied())),
        }
    }
    indices.sort_unstable();
    indices.dedup();
    indices
}

/// The fewest characters a key given through the environment may have: a
/// UUIDv4 has 36 (122 random bits), `keygen`'s keys more.
pub const MIN_ENV_KEY_CHARS: usize = 32;

/// Why the plain key in `var` is too weak to accept, if it is: guessing a
/// short key must not be a matter of the failure throttle alone. The value
/// itself is never part of the message.
pub fn short_key(var: &str, plain: &str) -> Option<String> {
    let chars = plain.chars().count();
    (chars < MIN_ENV_KEY_CHARS).then(|| {
        format!(
            "environment variable {var} holds a key of {chars} characters; keys given through the \
             environment must have at least {MIN_ENV_KEY_CHARS} (make one with `keygate keygen`)"
        )
    })
}

/// `KEYGATE_TRUSTED_PROXIES` (comma-separated networks, replacing the file's
/// list) and `KEYGATE_PROXY_PROTOCOL` (`true`/`false`); then the PROXY
/// protocol needs someone to trust.
fn proxies(c: &mut Checker<'_>, config: &mut Config, env: &Env) {
    if let Some(list) = env.get("KEYGATE_TRUSTED_PROXIES") {
        let mut nets = Vec::new();
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            match super::parse_network(entry) {
                Ok(net) => nets.push(net),
                Err(e) => bad(c, "KEYGATE_TRUSTED_PROXIES", e),
            }
        }
        config.listen.trusted_proxies = super::TrustedProxies(nets);
    }
    match env.get("KEYGATE_PROXY_PROTOCOL").map(|v| v.trim().to_ascii_lowercase()).as_deref() {
        None | Some("") => {}
        Some("true" | "1" | "yes" | "on") => config.listen.proxy_protocol = true,
        Some("false" | "0" | "no" | "off") => config.listen.proxy_protocol = false,
        Some(_) => bad(c, "KEYGATE_PROXY_PROTOCOL", "must be true or false".into()),
    }
    if config.listen.proxy_protocol && config.listen.trusted_proxies.is_empty() {
        let msg =
            "is on, but listen.trusted_proxies (KEYGATE_TRUSTED_PROXIES) is empty: every connection would be refused";
        c.push(super::Origin::None, "listen.proxy_protocol", msg);
    }
}
