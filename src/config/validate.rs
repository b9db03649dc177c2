//! Second stage: turn the file mirror into a typed [`Config`], collecting
//! every problem with the position of the offending value.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{HeaderName, Method};
use toml::Spanned;

use super::error::{Origin, Problem, Source};
use super::file::{self, FileConfig, Str};
use super::{env, Allowed, Auth, Client, Config, ConfigError, Env, Key, Listen, Rate, Route};
use super::{KeyOrigin, TlsFiles, Upstream};
use crate::keys;

/// Collects problems while validating.
pub(super) struct Checker<'a> {
    src: Option<&'a Source<'a>>,
    pub(super) problems: Vec<Problem>,
    pub(super) warnings: Vec<Problem>,
}

impl<'a> Checker<'a> {
    fn origin(&self, span: Range<usize>) -> Origin {
        self.src.map_or(Origin::None, |s| s.origin(span))
    }

    /// Record a problem with the value at `span`.
    pub(super) fn error(&mut self, span: Range<usize>, field: &str, message: impl Into<String>) {
        let origin = self.origin(span);
        self.push(origin, field, message);
    }

    /// Record a problem that has no position.
    pub(super) fn push(&mut self, origin: Origin, field: &str, message: impl Into<String>) {
        self.problems.push(Problem { origin, field: field.to_string(), message: message.into() });
    }

    pub(super) fn warn(&mut self, span: Range<usize>, field: &str, message: impl Into<String>) {
        let origin = self.origin(span);
        self.warnings.push(Problem { origin, field: field.to_string(), message: message.into() });
    }

    /// A path in the file, relative to the file's folder.
    fn file_path(&self, value: &str) -> PathBuf {
        let base = self.src.and_then(|s| s.path.parent());
        resolve_path(base, value)
    }
}

/// Resolve `value` relative to `base` unless it is absolute.
pub(super) fn resolve_path(base: Option<&Path>, value: &str) -> PathBuf {
    let path = Path::new(value);
    match base {
        Some(base) if path.is_relative() => base.join(path),
        _ => path.to_path_buf(),
    }
}

const DEFAULT_ADDRESS: &str = "0.0.0.0:8443";

pub(super) fn validate(file: FileConfig, src: Option<&Source<'_>>, env_vars: &Env) -> Result<Config, ConfigError> {
    let mut c = Checker { src, problems: Vec::new(), warnings: Vec::new() };
    let tls_overridden =
        ["KEYGATE_TLS_CERT", "KEYGATE_TLS_KEY"].iter().all(|k| env_vars.get(*k).is_some_and(|v| !v.is_empty()));
    let listen = listen(&mut c, &file.listen, tls_overridden);
    let admin = file.admin.as_ref().and_then(|a| socket_addr(&mut c, &a.address, "admin.address"));
    let auth = auth(&mut c, &file.auth);
    let default_rate = file.rate_limit.as_ref().map_or(Rate::DEFAULT, |r| rate(&mut c, r, "rate_limit"));
    let upstreams = upstreams(&mut c, &file.upstreams);
    let routes = routes(&mut c, &file.routes, &upstreams);
    let clients = clients(&mut c, &file.clients, &routes, default_rate, env_vars);
    let mut config = Config {
        source: src.map(|s| s.path.to_path_buf()),
        listen: listen.unwrap_or_else(Listen::defaults),
        admin,
        auth,
        upstreams,
        routes,
        clients,
        warnings: Vec::new(),
        limits: super::limits::limits(&mut c, &file, env_vars),
    };
    env::apply(&mut c, &mut config, env_vars, default_rate);
    final_checks(&mut c, &config);
    super::limits::final_checks(&mut c, &config, &file);
    config.warnings = std::mem::take(&mut c.warnings);
    if c.problems.is_empty() {
        Ok(config)
    } else {
        Err(ConfigError { problems: c.problems })
    }
}

impl Listen {
    fn defaults() -> Listen {
        Listen {
            address: DEFAULT_ADDRESS.parse().unwrap_or(SocketAddr::from(([0, 0, 0, 0], 8443))),
            shutdown_grace: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            max_header_bytes: 16 * 1024,
            max_headers: 100,
            max_concurrent_streams: 100,
            tls: None,
        }
    }
}

impl Rate {
    /// The rate of clients that set none, when `[rate_limit]` is absent.
    pub const DEFAULT: Rate = Rate { per_second: 50.0, burst: 100 };
}

fn listen(c: &mut Checker<'_>, t: &file::ListenToml, tls_overridden: bool) -> Option<Listen> {
    let d = Listen::defaults();
    let address = match &t.address {
        Some(a) => socket_addr(c, a, "listen.address")?,
        None => d.address,
    };
    let tls = t.tls.as_ref().map(|tls| TlsFiles {
        // KEYGATE_TLS_CERT/KEY replace these files: do not require them.
        cert: match tls_overridden {
            true => c.file_path(tls.cert.get_ref()),
            false => readable(c, &tls.cert, "listen.tls.cert"),
        },
        key: match tls_overridden {
            true => c.file_path(tls.key.get_ref()),
            false => readable(c, &tls.key, "listen.tls.key"),
        },
        client_ca: tls.client_ca.as_ref().map(|ca| readable(c, ca, "listen.tls.client_ca")),
    });
    Some(Listen {
        address,
        shutdown_grace: duration(c, &t.shutdown_grace, "listen.shutdown_grace", d.shutdown_grace),
        header_read_timeout: duration(c, &t.header_read_timeout, "listen.header_read_timeout", d.header_read_timeout),
        body_timeout: duration(c, &t.body_timeout, "listen.body_timeout", d.body_timeout),
        idle_timeout: duration(c, &t.idle_timeout, "listen.idle_timeout", d.idle_timeout),
        max_connections: count(c, &t.max_connections, "listen.max_connections", d.max_connections),
        max_header_bytes: count(c, &t.max_header_bytes, "listen.max_header_bytes", d.max_header_bytes).max(1024),
        max_headers: count(c, &t.max_headers, "listen.max_headers", d.max_headers),
        max_concurrent_streams: count(
            c,
            &t.max_concurrent_streams,
            "listen.max_concurrent_streams",
            d.max_concurrent_streams as usize,
        )
        .try_into()
        .unwrap_or(u32::MAX),
        tls,
    })
}

fn socket_addr(c: &mut Checker<'_>, v: &Str, field: &str) -> Option<SocketAddr> {
    match v.get_ref().parse() {
        Ok(a) => Some(a),
        Err(_) => {
            c.error(v.span(), field, format!("\"{}\" is not an address like 127.0.0.1:8443", v.get_ref()));
            None
        }
    }
}

/// A file path that must be readable now.
fn readable(c: &mut Checker<'_>, v: &Str, field: &str) -> PathBuf {
    let path = c.file_path(v.get_ref());
    if let Err(e) = std::fs::File::open(&path) {
        c.error(v.span(), field, format!("cannot read {}: {e}", path.display()));
    }
    path
}

/// Durations like `"250ms"`, `"2s"`, `"5m"`, `"7d"`; zero is refused.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    match humantime::parse_duration(s) {
        Ok(d) if d.is_zero() => Err("must be longer than zero".into()),
        Ok(d) => Ok(d),
        Err(_) => Err(format!("\"{s}\" is not a duration like \"250ms\", \"2s\" or \"5m\"")),
    }
}

fn duration(c: &mut Checker<'_>, v: &Option<Str>, field: &str, default: Duration) -> Duration {
    let Some(v) = v else { return default };
    parse_duration(v.get_ref()).unwrap_or_else(|e| {
        c.error(v.span(), field, e);
        default
    })
}

fn count(c: &mut Checker<'_>, v: &Option<Spanned<i64>>, field: &str, default: usize) -> usize {
    let Some(v) = v else { return default };
    match usize::try_from(*v.get_ref()) {
        Ok(n) if n > 0 => n,
        _ => {
            c.error(v.span(), field, "must be a whole number above zero");
            default
        }
    }
}

fn header_name(c: &mut Checker<'_>, v: &Option<Str>, field: &str, default: &'static str) -> HeaderName {
    let fallback = HeaderName::from_static(default);
    let Some(v) = v else { return fallback };
    match HeaderName::from_bytes(v.get_ref().as_bytes()) {
        Ok(h) if crate::proxy::headers::is_reserved(&h) => {
            c.error(v.span(), field, format!("\"{}\" is a header keygate manages", v.get_ref()));
            fallback
        }
        Ok(h) => h,
        Err(_) => {
            c.error(v.span(), field, format!("\"{}\" is not a valid header name", v.get_ref()));
            fallback
        }
    }
}

fn auth(c: &mut Checker<'_>, t: &file::AuthToml) -> Auth {
    let header = header_name(c, &t.header, "auth.header", "x-api-key");
    let identity_header = header_name(c, &t.identity_header, "auth.identity_header", "x-client-id");
    if header == identity_header {
        if let Some(v) = &t.identity_header {
            c.error(v.span(), "auth.identity_header", "must differ from auth.header");
        }
    }
    let schemes = match &t.authorization_schemes {
        None => vec!["bearer".to_string()],
        Some(list) => list.iter().filter_map(|s| scheme(c, s)).collect(),
    };
    let query_param = t.query_param.as_ref().and_then(|q| {
        let v = q.get_ref();
        let ok = v.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.~".contains(&b));
        if !ok {
            c.error(q.span(), "auth.query_param", format!("\"{v}\" is not a plain parameter name"));
        }
        (!v.is_empty() && ok).then(|| v.clone())
    });
    let max_failures_per_minute =
        count(c, &t.max_failures_per_minute, "auth.max_failures_per_minute", 20).try_into().unwrap_or(u32::MAX);
    Auth { header, schemes, query_param, identity_header, max_failures_per_minute }
}

fn scheme(c: &mut Checker<'_>, s: &Str) -> Option<String> {
    let v = s.get_ref();
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~+".contains(&b)) {
        c.error(s.span(), "auth.authorization_schemes", format!("\"{v}\" is not a scheme name"));
        return None;
    }
    Some(v.to_ascii_lowercase())
}

fn rate(c: &mut Checker<'_>, r: &file::RateToml, field: &str) -> Rate {
    let per_second = *r.per_second.get_ref();
    let mut ok = true;
    if !(per_second.is_finite() && per_second > 0.0 && per_second <= 1e9) {
        c.error(r.per_second.span(), &format!("{field}.per_second"), "must be above zero");
        ok = false;
    }
    let burst = u32::try_from(*r.burst.get_ref()).ok().filter(|b| *b > 0);
    if burst.is_none() {
        c.error(r.burst.span(), &format!("{field}.burst"), "must be a whole number above zero");
        ok = false;
    }
    match (ok, burst) {
        (true, Some(burst)) => Rate { per_second, burst },
        _ => Rate::DEFAULT,
    }
}

fn upstreams(c: &mut Checker<'_>, t: &BTreeMap<String, file::UpstreamToml>) -> Vec<Upstream> {
    t.iter()
        .map(|(name, u)| {
            let field = format!("upstreams.{name}");
            if u.servers.get_ref().is_empty() {
                c.error(u.servers.span(), &format!("{field}.servers"), "lists no server");
            }
            let servers =
                u.servers.get_ref().iter().filter_map(|s| server_url(c, s, &format!("{field}.servers"))).collect();
            let timeout = |c: &mut Checker<'_>, v: &Option<Str>, f: &str, d| {
                duration(c, v, &format!("{field}.{f}"), Duration::from_secs(d))
            };
            Upstream {
                name: name.clone(),
                servers,
                connect_timeout: timeout(c, &u.connect_timeout, "connect_timeout", 2),
                request_timeout: timeout(c, &u.request_timeout, "request_timeout", 30),
                ca: u.tls.as_ref().and_then(|t| t.ca.as_ref()).map(|ca| readable(c, ca, &format!("{field}.tls.ca"))),
            }
        })
        .collect()
}

/// Parse one upstream server URL: `http(s)://host[:port]`, nothing after.
pub(super) fn server_url(c: &mut Checker<'_>, s: &Str, field: &str) -> Option<http::Uri> {
    match parse_server_url(s.get_ref()) {
        Ok(uri) => Some(uri),
        Err(e) => {
            c.error(s.span(), field, e);
            None
        }
    }
}

pub(super) fn parse_server_url(s: &str) -> Result<http::Uri, String> {
    let bad = || format!("\"{s}\" is not a server URL like http://10.0.0.5:8080");
    let uri: http::Uri = s.parse().map_err(|_| bad())?;
    let scheme_ok = matches!(uri.scheme_str(), Some("http" | "https"));
    let path_ok = matches!(uri.path(), "" | "/") && uri.query().is_none();
    if !scheme_ok || uri.authority().is_none() || !path_ok {
        return Err(bad());
    }
    Ok(uri)
}

fn routes(c: &mut Checker<'_>, t: &[file::RouteToml], upstreams: &[Upstream]) -> Vec<Route> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut out = Vec::with_capacity(t.len());
    for (i, r) in t.iter().enumerate() {
        let field = format!("routes[{i}]");
        let name = r.name.get_ref();
        if name.is_empty() || name == "*" {
            c.error(r.name.span(), &format!("{field}.name"), "must be a non-empty name other than \"*\"");
        } else if let Some(first) = seen.insert(name, i) {
            c.error(
                r.name.span(),
                &format!("{field}.name"),
                format!("duplicate route name \"{name}\" (first defined by routes[{first}])"),
            );
        }
        let upstream = upstreams.iter().position(|u| u.name == *r.upstream.get_ref());
        if upstream.is_none() {
            c.error(
                r.upstream.span(),
                &format!("{field}.upstream"),
                format!("unknown upstream \"{}\"", r.upstream.get_ref()),
            );
        }
        out.push(Route {
            name: name.clone(),
            path: route_path(c, &r.path, &field),
            methods: r.methods.as_ref().map(|m| methods(c, m, &field)),
            upstream: upstream.unwrap_or(0),
            host: r.host.as_ref().map(|h| h.get_ref().to_ascii_lowercase()),
            max_body: r.max_body.as_ref().and_then(|m| size(c, m, &format!("{field}.max_body"))),
        });
    }
    out
}

fn route_path(c: &mut Checker<'_>, p: &Str, field: &str) -> String {
    match crate::proxy::path::normalize(p.get_ref()) {
        Ok(n) if n.as_ref() == "/" => "/".to_string(),
        Ok(n) => n.trim_end_matches('/').to_string(),
        Err(e) => {
            c.error(p.span(), &format!("{field}.path"), format!("\"{}\": {e}", p.get_ref()));
            String::from("/")
        }
    }
}

fn methods(c: &mut Checker<'_>, list: &[Str], field: &str) -> Vec<Method> {
    list.iter()
        .filter_map(|m| {
            let v = m.get_ref();
            let valid = !v.is_empty() && v.bytes().all(|b| b.is_ascii_uppercase());
            match Method::from_bytes(v.as_bytes()) {
                Ok(method) if valid => Some(method),
                _ => {
                    c.error(m.span(), &format!("{field}.methods"), format!("\"{v}\" is not an upper-case HTTP method"));
                    None
                }
            }
        })
        .collect()
}

/// Sizes like `"10MiB"`, `"512KiB"`, `"1000"` (bytes).
pub(super) fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|ch: char| !ch.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits.parse().ok()?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return None,
    };
    n.checked_mul(mult)
}

fn size(c: &mut Checker<'_>, v: &Str, field: &str) -> Option<u64> {
    let parsed = parse_size(v.get_ref());
    if parsed.is_none() {
        c.error(v.span(), field, format!("\"{}\" is not a size like \"10MiB\"", v.get_ref()));
    }
    parsed
}

fn clients(
    c: &mut Checker<'_>,
    t: &BTreeMap<String, file::ClientToml>,
    routes: &[Route],
    default_rate: Rate,
    env_vars: &Env,
) -> Vec<Client> {
    t.iter()
        .map(|(id, cl)| {
            let field = format!("clients.{id}");
            if !keys::valid_client_id(id) {
                c.error(
                    cl.routes.span(),
                    &field,
                    format!("client id \"{id}\" may only hold letters, digits, '-', '_' and '.'"),
                );
            }
            Client {
                id: id.clone(),
                allowed: allowed(c, &cl.routes, routes, &field),
                rate: cl.rate_limit.as_ref().map_or(default_rate, |r| rate(c, r, &format!("{field}.rate_limit"))),
                keys: cl
                    .keys
                    .iter()
                    .enumerate()
                    .filter_map(|(i, k)| key(c, k, &format!("{field}.keys[{i}]"), env_vars))
                    .collect(),
                tls_subjects: cl.tls_subjects.iter().flatten().map(|s| s.get_ref().clone()).collect(),
                quota: cl.quota.as_ref().and_then(|q| super::limits::quota(c, q, &field)),
            }
        })
        .collect()
}

fn allowed(c: &mut Checker<'_>, list: &Spanned<Vec<Str>>, routes: &[Route], field: &str) -> Allowed {
    let field = format!("{field}.routes");
    if list.get_ref().iter().any(|r| r.get_ref() == "*") {
        if list.get_ref().len() > 1 {
            c.error(list.span(), &field, "\"*\" stands alone: it already allows every route");
        }
        return Allowed::All;
    }
    let mut indices: Vec<usize> = list
        .get_ref()
        .iter()
        .filter_map(|r| {
            let found = routes.iter().position(|route| route.name == *r.get_ref());
            if found.is_none() {
                c.error(r.span(), &field, format!("unknown route \"{}\"", r.get_ref()));
            }
            found
        })
        .collect();
    indices.sort_unstable();
    indices.dedup();
    Allowed::Only(indices)
}

fn key(c: &mut Checker<'_>, k: &file::KeyToml, field: &str, env_vars: &Env) -> Option<Key> {
    let digest = match (&k.hash, &k.env) {
        (Some(h), None) => {
            keys::parse_hash(h.get_ref()).map_err(|e| c.error(h.span(), &format!("{field}.hash"), e)).ok()
        }
        (None, Some(var)) => match env_vars.get(var.get_ref()).filter(|v| !v.is_empty()) {
            Some(plain) => Some(keys::digest(plain.as_bytes())),
            None => {
                c.error(
                    var.span(),
                    &format!("{field}.env"),
                    format!("environment variable {} is not set", var.get_ref()),
                );
                None
            }
        },
        _ => {
            let span = k.hash.as_ref().or(k.env.as_ref()).map_or(0..0, |s| s.span());
            c.error(span, field, "give exactly one of `hash` or `env`");
            None
        }
    };
    let not_before = k.not_before.as_ref().and_then(|t| timestamp(c, t, &format!("{field}.not_before")));
    let expires = k.expires.as_ref().and_then(|t| timestamp(c, t, &format!("{field}.expires")));
    if let (Some(nb), Some(ex), Some(e)) = (not_before, expires, &k.expires) {
        if ex <= nb {
            c.error(e.span(), &format!("{field}.expires"), "is not after not_before");
        }
    }
    if let (Some(ex), Some(e)) = (expires, &k.expires) {
        expiry_warning(c, ex, e.span(), field);
    }
    let span = k.hash.as_ref().or(k.env.as_ref()).map_or(0..0, |s| s.span());
    let origin = KeyOrigin::File { field: field.to_string(), span };
    Some(Key { digest: digest?, not_before, expires, origin })
}

fn expiry_warning(c: &mut Checker<'_>, expires: i64, span: Range<usize>, field: &str) {
    let now = keys::unix_now();
    if expires <= now {
        c.warn(span, &format!("{field}.expires"), "this key has expired");
    } else if expires - now <= 14 * 24 * 3600 {
        let days = (expires - now) / (24 * 3600);
        c.warn(span, &format!("{field}.expires"), format!("this key expires in {days} days"));
    }
}

fn timestamp(c: &mut Checker<'_>, v: &Str, field: &str) -> Option<i64> {
    let parsed = keys::parse_rfc3339(v.get_ref());
    if parsed.is_none() {
        c.error(v.span(), field, format!("\"{}\" is not an RFC 3339 time like 2027-01-01T00:00:00Z", v.get_ref()));
    }
    parsed
}

fn final_checks(c: &mut Checker<'_>, config: &Config) {
    if config.routes.is_empty() {
        c.push(Origin::None, "routes", "no route is defined: add [[routes]] or set KEYGATE_UPSTREAM");
    }
    duplicate_digests(c, config);
    for client in &config.clients {
        if !client.tls_subjects.is_empty() && config.listen.tls.as_ref().and_then(|t| t.client_ca.as_ref()).is_none() {
            c.push(
                Origin::None,
                &format!("clients.{}.tls_subjects", client.id),
                "needs listen.tls.client_ca: subjects come from verified client certificates",
            );
        }
        if client.keys.is_empty() && c.problems.is_empty() {
            c.warnings.push(Problem {
                origin: Origin::None,
                field: format!("clients.{}.keys", client.id),
                message: "this client has no key and cannot call anything".into(),
            });
        }
    }
}

fn duplicate_digests(c: &mut Checker<'_>, config: &Config) {
    let mut seen: HashMap<[u8; 32], String> = HashMap::new();
    for client in &config.clients {
        for key in &client.keys {
            let name = match &key.origin {
                KeyOrigin::File { field, .. } => field.clone(),
                KeyOrigin::Env(var) => var.clone(),
            };
            let Some(first) = seen.get(&key.digest) else {
                seen.insert(key.digest, name);
                continue;
            };
            let message = format!("duplicate key: the same key is {first}");
            match &key.origin {
                KeyOrigin::File { field, span } => c.error(span.clone(), field, message),
                KeyOrigin::Env(var) => c.push(Origin::Env(var.clone()), &format!("clients.{}", client.id), message),
            }
        }
    }
}
