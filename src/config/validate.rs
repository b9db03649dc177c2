//! Second stage: turn the file mirror into a typed [`Config`], collecting
//! every problem with the position of the offending value.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::ops::{Range, RangeInclusive};
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::Method;
use toml::Spanned;

use super::error::{Origin, Problem, Source};
use super::file::{self, FileConfig, Str};
use super::{env, suggest, Client, Config, ConfigError, Env, Grants, Key, Listen, Rate, Route};
use super::{HealthCheck, HealthPolicy, KeyOrigin, Protocol, Strategy, TlsFiles, Upstream};
use crate::keys;

/// Collects problems while validating.
pub(super) struct Checker<'a> {
    src: Option<&'a Source<'a>>,
    pub(super) problems: Vec<Problem>,
    pub(super) warnings: Vec<Problem>,
}

impl<'a> Checker<'a> {
    /// A checker for values from no file (the environment): no positions,
    /// paths relative to the working directory.
    pub(super) fn detached() -> Checker<'static> {
        Checker { src: None, problems: Vec::new(), warnings: Vec::new() }
    }

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
    pub(super) fn file_path(&self, value: &str) -> PathBuf {
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
    let auth = super::auth::auth(&mut c, &file.auth);
    let default_rate = file.rate_limit.as_ref().map_or(Rate::DEFAULT, |r| rate(&mut c, r, "rate_limit"));
    let upstreams = upstreams(&mut c, &file.upstreams);
    let routes = routes(&mut c, &file.routes, &upstreams);
    let clients = clients(&mut c, &file.clients, (&routes, &upstreams), default_rate, env_vars);
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
        jwt: super::jwt::issuers(&mut c, &file, env_vars),
    };
    env::apply(&mut c, &mut config, env_vars, default_rate);
    super::auth::route_rules(&mut c, &mut config, &file);
    super::jwt::finish(&mut c, &mut config, &file);
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
            trusted_proxies: super::TrustedProxies::default(),
            proxy_protocol: false,
            tunnel_idle_timeout: Duration::from_secs(60),
            tunnel_max_lifetime: Duration::from_secs(3600),
            max_tunnels_per_client: 1000,
            send_timeout: Duration::from_secs(60),
            max_in_flight: 4096,
            max_in_flight_per_client: 1024,
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
    let idle_timeout = duration(c, &t.idle_timeout, "listen.idle_timeout", d.idle_timeout);
    Some(Listen {
        address,
        shutdown_grace: duration(c, &t.shutdown_grace, "listen.shutdown_grace", d.shutdown_grace),
        header_read_timeout: duration(c, &t.header_read_timeout, "listen.header_read_timeout", d.header_read_timeout),
        body_timeout: duration(c, &t.body_timeout, "listen.body_timeout", d.body_timeout),
        idle_timeout,
        max_connections: count(c, &t.max_connections, "listen.max_connections", d.max_connections),
        max_header_bytes: count_in(
            c,
            &t.max_header_bytes,
            "listen.max_header_bytes",
            d.max_header_bytes,
            1024..=1024 * 1024,
        ),
        max_headers: count_in(c, &t.max_headers, "listen.max_headers", d.max_headers, 1..=1000),
        max_concurrent_streams: count_in(
            c,
            &t.max_concurrent_streams,
            "listen.max_concurrent_streams",
            d.max_concurrent_streams as usize,
            1..=10_000,
        )
        .try_into()
        .unwrap_or(u32::MAX),
        tls,
        trusted_proxies: trusted_proxies(c, t.trusted_proxies.as_deref().unwrap_or_default()),
        proxy_protocol: t.proxy_protocol.as_ref().is_some_and(|p| *p.get_ref()),
        // Unset, a tunnel may idle as long as a connection between requests.
        tunnel_idle_timeout: duration(c, &t.tunnel_idle_timeout, "listen.tunnel_idle_timeout", idle_timeout),
        tunnel_max_lifetime: duration(c, &t.tunnel_max_lifetime, "listen.tunnel_max_lifetime", d.tunnel_max_lifetime),
        max_tunnels_per_client: count(
            c,
            &t.max_tunnels_per_client,
            "listen.max_tunnels_per_client",
            d.max_tunnels_per_client,
        ),
        send_timeout: duration(c, &t.send_timeout, "listen.send_timeout", d.send_timeout),
        max_in_flight: count(c, &t.max_in_flight, "listen.max_in_flight", d.max_in_flight),
        max_in_flight_per_client: count(
            c,
            &t.max_in_flight_per_client,
            "listen.max_in_flight_per_client",
            d.max_in_flight_per_client,
        ),
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
pub(super) fn readable(c: &mut Checker<'_>, v: &Str, field: &str) -> PathBuf {
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

/// The range every duration setting must fall in: shorter is below the
/// timer's resolution, longer is a mistake (and would overflow a deadline).
pub const DURATION_RANGE: RangeInclusive<Duration> = Duration::from_millis(1)..=Duration::from_secs(24 * 3600);

pub(super) fn duration(c: &mut Checker<'_>, v: &Option<Str>, field: &str, default: Duration) -> Duration {
    let Some(v) = v else { return default };
    match parse_duration(v.get_ref()) {
        Ok(d) if DURATION_RANGE.contains(&d) => d,
        Ok(_) => {
            c.error(v.span(), field, "must be from 1ms to 24h");
            default
        }
        Err(e) => {
            c.error(v.span(), field, e);
            default
        }
    }
}

/// The range of a count with no range of its own: 1 to a million.
pub const COUNT_RANGE: RangeInclusive<usize> = 1..=1_000_000;

pub(super) fn count(c: &mut Checker<'_>, v: &Option<Spanned<i64>>, field: &str, default: usize) -> usize {
    count_in(c, v, field, default, COUNT_RANGE)
}

/// A whole number in `range`; out of it, an error naming the range (a value
/// out of range would otherwise be clamped or panic when serving).
fn count_in(
    c: &mut Checker<'_>,
    v: &Option<Spanned<i64>>,
    field: &str,
    default: usize,
    range: RangeInclusive<usize>,
) -> usize {
    let Some(v) = v else { return default };
    match usize::try_from(*v.get_ref()) {
        Ok(n) if range.contains(&n) => n,
        _ => {
            let (lo, hi) = (range.start(), range.end());
            c.error(v.span(), field, format!("must be a whole number from {lo} to {hi}"));
            default
        }
    }
}

fn rate(c: &mut Checker<'_>, r: &file::RateToml, field: &str) -> Rate {
    let per_second = *r.per_second.get_ref();
    let mut ok = true;
    // Below about one a day the refill interval is no longer a timer's business.
    if !(per_second.is_finite() && (1e-5..=1e9).contains(&per_second)) {
        c.error(r.per_second.span(), &format!("{field}.per_second"), "must be from 0.00001 to 1000000000");
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
                health: health_policy(c, u, &field),
                protocol: protocol(c, u.protocol.as_ref(), &field),
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
    if s.contains('@') {
        // user:password@host: a credential, not shown, and not forwarded either.
        return Err(format!(
            "the URL starting {} holds a user name or password; give http(s)://host[:port]",
            prefix_of(s)
        ));
    }
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
            let message = format!("unknown upstream \"{}\"", r.upstream.get_ref());
            let names = upstreams.iter().map(|u| u.name.as_str());
            c.error(
                r.upstream.span(),
                &format!("{field}.upstream"),
                suggest::with_hint(message, r.upstream.get_ref(), names),
            );
        }
        let path = route_path(c, &r.path, &field);
        let strip_segments = strip_segments(c, r.strip_prefix.as_ref(), &path, &field);
        out.push(Route {
            name: name.clone(),
            path,
            methods: r.methods.as_ref().map(|m| methods(c, m, &field)),
            upstream: upstream.unwrap_or(0),
            host: r.host.as_ref().map(|h| route_host(c, h, &field)),
            max_body: r.max_body.as_ref().and_then(|m| size(c, m, &format!("{field}.max_body"))),
            request_headers: super::HeaderRules::default(),
            strip_segments,
            scopes: Vec::new(),
        });
    }
    out
}

/// `strip_prefix = true`: the number of segments of the route's `path`
/// (a root route has none to strip: an error, it would change nothing).
fn strip_segments(c: &mut Checker<'_>, strip: Option<&Spanned<bool>>, path: &str, field: &str) -> usize {
    let Some(strip) = strip.filter(|s| *s.get_ref()) else {
        return 0;
    };
    let segments = path.split('/').filter(|s| !s.is_empty()).count();
    if segments == 0 {
        c.error(strip.span(), &format!("{field}.strip_prefix"), "the root route \"/\" has no prefix to strip");
    }
    segments
}

fn route_host(c: &mut Checker<'_>, h: &Str, field: &str) -> String {
    crate::proxy::host::config_name(h.get_ref()).unwrap_or_else(|e| {
        c.error(h.span(), &format!("{field}.host"), e);
        String::new()
    })
}

fn route_path(c: &mut Checker<'_>, p: &Str, field: &str) -> String {
    if let Err(e) = crate::proxy::route::check_prefix(p.get_ref()) {
        c.error(p.span(), &format!("{field}.path"), format!("\"{}\": {e}", p.get_ref()));
    }
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
    (routes, upstreams): (&[Route], &[Upstream]),
    default_rate: Rate,
    env_vars: &Env,
) -> Vec<Client> {
    t.iter()
        .map(|(id, cl)| {
            let field = format!("clients.{id}");
            let span = client_span(c, cl, id);
            if !keys::valid_client_id(id) {
                c.error(
                    span.clone(),
                    &field,
                    format!("client id \"{id}\" may only hold letters, digits, '-', '_' and '.'"),
                );
            }
            if cl.routes.is_none() && cl.upstreams.is_none() {
                c.error(span, &field, "grants nothing: give `routes`, `upstreams`, or both");
            }
            let grants = grants(c, cl, (routes, upstreams), &field);
            Client {
                id: id.clone(),
                allowed: grants.allowed(routes),
                grants,
                rate: cl.rate_limit.as_ref().map_or(default_rate, |r| rate(c, r, &format!("{field}.rate_limit"))),
                keys: cl
                    .keys
                    .iter()
                    .enumerate()
                    .filter_map(|(i, k)| key(c, k, &format!("{field}.keys[{i}]"), env_vars))
                    .collect(),
                tls_subjects: cl.tls_subjects.iter().flatten().filter_map(|s| subject(c, s, &field)).collect(),
                max_in_flight: cl
                    .max_in_flight
                    .is_some()
                    .then(|| count(c, &cl.max_in_flight, &format!("{field}.max_in_flight"), 1)),
                quota: cl.quota.as_ref().and_then(|q| super::limits::quota(c, q, &field)),
            }
        })
        .collect()
}

/// One `tls_subjects` entry: `K=V` pairs, each attribute once.
fn subject(c: &mut Checker<'_>, s: &Str, field: &str) -> Option<String> {
    if crate::tls::subject_pattern(s.get_ref()).is_none() {
        let message = format!(
            "\"{}\" is not a subject like \"CN=billing\" or \"CN=billing, O=Acme\" \
             (attribute=value pairs, each attribute once)",
            s.get_ref()
        );
        c.error(s.span(), &format!("{field}.tls_subjects"), message);
        return None;
    }
    Some(s.get_ref().clone())
}

/// Where `[clients.<id>]` is written: its first grant, else its header.
fn client_span(c: &Checker<'_>, cl: &file::ClientToml, id: &str) -> Range<usize> {
    if let Some(list) = cl.routes.as_ref().or(cl.upstreams.as_ref()) {
        return list.span();
    }
    let header = format!("[clients.{id}]");
    let start = c.src.and_then(|s| s.text.find(&header)).unwrap_or(0);
    start..start
}

fn grants(
    c: &mut Checker<'_>,
    cl: &file::ClientToml,
    (routes, upstreams): (&[Route], &[Upstream]),
    field: &str,
) -> Grants {
    let mut grants = Grants::default();
    if let Some(list) = &cl.routes {
        let field = format!("{field}.routes");
        if list.get_ref().iter().any(|r| r.get_ref() == "*") {
            if list.get_ref().len() > 1 {
                c.error(list.span(), &field, "\"*\" stands alone: it already allows every route");
            }
            grants.all = true;
        }
        let names: Vec<&str> = routes.iter().map(|r| r.name.as_str()).collect();
        grants.routes = resolve(c, list.get_ref().iter().filter(|r| r.get_ref() != "*"), &names, "route", &field);
    }
    if let Some(list) = &cl.upstreams {
        let names: Vec<&str> = upstreams.iter().map(|u| u.name.as_str()).collect();
        grants.upstreams = resolve(c, list.get_ref().iter(), &names, "upstream", &format!("{field}.upstreams"));
    }
    grants
}

/// The sorted indices of `wanted` in `names`; each unknown name is an error
/// with a "did you mean" when one is close.
fn resolve<'w>(
    c: &mut Checker<'_>,
    wanted: impl Iterator<Item = &'w Str>,
    names: &[&str],
    kind: &str,
    field: &str,
) -> Vec<usize> {
    let mut indices: Vec<usize> = wanted
        .filter_map(|w| {
            let found = names.iter().position(|n| *n == w.get_ref());
            if found.is_none() {
                let message = format!("unknown {kind} \"{}\"", w.get_ref());
                c.error(w.span(), field, suggest::with_hint(message, w.get_ref(), names.iter().copied()));
            }
            found
        })
        .collect();
    indices.sort_unstable();
    indices.dedup();
    indices
}

fn key(c: &mut Checker<'_>, k: &file::KeyToml, field: &str, env_vars: &Env) -> Option<Key> {
    let digest = match (&k.hash, &k.env) {
        (Some(h), None) => keys::parse_hash(h.get_ref())
            .map_err(|_| c.error(h.span(), &format!("{field}.hash"), bad_hash(h.get_ref())))
            .ok(),
        (None, Some(var)) => match env_vars.get(var.get_ref()).filter(|v| !v.is_empty()) {
            Some(plain) => {
                if let Some(problem) = env::short_key(var.get_ref(), plain) {
                    c.error(var.span(), &format!("{field}.env"), problem);
                }
                Some(keys::digest(plain.as_bytes()))
            }
            None => {
                c.error(var.span(), &format!("{field}.env"), unset_variable(var.get_ref()));
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
    let name = super::auth::key_name(c, k.name.as_ref(), field);
    Some(Key { digest: digest?, not_before, expires, origin, name })
}

/// How much of a value that may be a secret a message may show.
const SHOWN_PREFIX: usize = 4;

/// The first few characters of `s` and an ellipsis: enough to recognise a
/// value, too little to use it.
fn prefix_of(s: &str) -> String {
    let shown: String = s.chars().take(SHOWN_PREFIX).collect();
    format!("\"{shown}…\"")
}

/// Why `s` is not a `sha256:` hash, without echoing it: a plain key pasted
/// here must not reach the terminal or the reload log.
pub(super) fn bad_hash(s: &str) -> String {
    let hint = "run `echo \"$KEY\" | keygate hash` to get the hash of a key";
    let Some(hex_part) = s.strip_prefix("sha256:") else {
        return format!(
            "the value starting {} is not a hash: a hash is \"sha256:\" and 64 hex digits, \
             and a plain key never goes in the file; {hint}",
            prefix_of(s)
        );
    };
    let what = match hex_part.chars().position(|ch| !ch.is_ascii_hexdigit()) {
        Some(i) => format!("character {} after \"sha256:\" is not a hex digit", i + 1),
        None => format!("\"sha256:\" is followed by {} hex digits, not 64", hex_part.len()),
    };
    format!("not a valid hash: {what}; {hint}")
}

/// A conventional variable name (`BILLING_KEY`) is shown; anything else may
/// be a key pasted in the wrong field, so only its first characters are.
fn unset_variable(name: &str) -> String {
    let plain = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        && !name.starts_with(|ch: char| ch.is_ascii_digit());
    match plain {
        true => format!("environment variable {name} is not set"),
        false => format!(
            "no environment variable named by the value starting {} is set; a variable name is \
             upper-case letters, digits and '_', and `env` names the variable that holds the key, never the key",
            prefix_of(name)
        ),
    }
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
    if config.clients.is_empty() && c.problems.is_empty() {
        let message = "no client is defined: every request will get 401 (add [clients.<id>] or KEYGATE_KEY_<CLIENT>)";
        c.warnings.push(Problem { origin: Origin::None, field: "clients".into(), message: message.into() });
    }
    super::auth::duplicate_key_names(c, config);
    for client in &config.clients {
        if !client.tls_subjects.is_empty() && config.listen.tls.as_ref().and_then(|t| t.client_ca.as_ref()).is_none() {
            c.push(
                Origin::None,
                &format!("clients.{}.tls_subjects", client.id),
                "needs listen.tls.client_ca: subjects come from verified client certificates",
            );
        }
        // A client without keys may still be named by tokens.
        if client.keys.is_empty() && c.problems.is_empty() && config.jwt.is_empty() {
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

/// `listen.trusted_proxies`: every entry a network or an address.
fn trusted_proxies(c: &mut Checker<'_>, list: &[Str]) -> super::TrustedProxies {
    let mut nets = Vec::new();
    for (i, entry) in list.iter().enumerate() {
        match super::parse_network(entry.get_ref()) {
            Ok(net) => nets.push(net),
            Err(e) => c.error(entry.span(), &format!("listen.trusted_proxies[{i}]"), e),
        }
    }
    super::TrustedProxies(nets)
}

/// `strategy`, `max_fails`, `fail_timeout` and `health_check` of an upstream.
fn health_policy(c: &mut Checker<'_>, u: &file::UpstreamToml, field: &str) -> HealthPolicy {
    let d = HealthPolicy::default();
    let strategy = match u.strategy.as_ref() {
        None => d.strategy,
        Some(s) => match s.get_ref().as_str() {
            "round_robin" => Strategy::RoundRobin,
            "least_requests" => Strategy::LeastRequests,
            other => {
                let msg = format!("\"{other}\" is not a strategy: use \"round_robin\" or \"least_requests\"");
                c.error(s.span(), &format!("{field}.strategy"), msg);
                d.strategy
            }
        },
    };
    let max_fails = match u.max_fails.as_ref() {
        None => d.max_fails,
        Some(v) => u32::try_from(*v.get_ref()).unwrap_or_else(|_| {
            c.error(v.span(), &format!("{field}.max_fails"), "must be a whole number, 0 or more (0: never eject)");
            d.max_fails
        }),
    };
    let fail_timeout = duration(c, &u.fail_timeout, &format!("{field}.fail_timeout"), d.fail_timeout);
    let check = u.health_check.as_ref().map(|h| health_check(c, h, &format!("{field}.health_check")));
    HealthPolicy { strategy, max_fails, fail_timeout, check }
}

fn health_check(c: &mut Checker<'_>, h: &Spanned<file::HealthCheckToml>, field: &str) -> HealthCheck {
    let t = h.get_ref();
    let path = match t.path.as_ref() {
        None => http::uri::PathAndQuery::from_static("/healthz"),
        Some(p) => match http::uri::PathAndQuery::try_from(p.get_ref().as_str()) {
            Ok(pq) if p.get_ref().starts_with('/') => pq,
            _ => {
                c.error(p.span(), &format!("{field}.path"), format!("\"{}\" is not a path like /healthz", p.get_ref()));
                http::uri::PathAndQuery::from_static("/healthz")
            }
        },
    };
    let interval = duration(c, &t.interval, &format!("{field}.interval"), Duration::from_secs(5));
    let timeout = duration(c, &t.timeout, &format!("{field}.timeout"), Duration::from_secs(1));
    let threshold = |c: &mut Checker<'_>, v: &Option<Spanned<i64>>, name: &str, d: usize| {
        u32::try_from(count(c, v, &format!("{field}.{name}"), d)).unwrap_or(u32::MAX)
    };
    let healthy = threshold(c, &t.healthy, "healthy", 2);
    let unhealthy = threshold(c, &t.unhealthy, "unhealthy", 3);
    HealthCheck { path, interval, timeout, healthy, unhealthy }
}

/// `protocol` of an upstream: "http1" (the default) or "http2".
fn protocol(c: &mut Checker<'_>, v: Option<&Str>, field: &str) -> Protocol {
    let Some(v) = v else { return Protocol::Http1 };
    match v.get_ref().as_str() {
        "http1" => Protocol::Http1,
        "http2" => Protocol::Http2,
        other => {
            let msg = format!("\"{other}\" is not a protocol: use \"http1\" or \"http2\"");
            c.error(v.span(), &format!("{field}.protocol"), msg);
            Protocol::Http1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "kg_4fT9qZxYb2LmN8pRsVw3HcK7dJ1eGuA6oQiE5tBn0yXa2b3c4";

    #[test]
    fn a_bad_hash_is_described_without_being_echoed() {
        let uuid = "0b7e4c7e-9a51-4c3b-8f0e-8d3c1f5b2a90";
        let cases = [
            (KEY, "kg_4…", "not a hash"),
            (uuid, "0b7e…", "not a hash"),
            ("sha256:abc", "", "followed by 3 hex digits"),
            ("sha256:0b7e4c7e-9a51-4c3b-8f0e-8d3c1f5b2a90aaaaaaaaaaaaaaaaaaaaaaaaaaaa", "", "character 9"),
        ];
        for (value, shown, why) in cases {
            let m = bad_hash(value);
            assert!(m.contains(shown) && m.contains(why), "{value}: {m}");
            assert!(m.contains("keygate hash"), "{m}");
            let secret = value.trim_start_matches("sha256:");
            assert!(!m.contains(secret.get(4..12).unwrap_or(secret)), "{value} echoed: {m}");
        }
    }

    #[test]
    fn an_unset_variable_name_is_shown_only_when_it_looks_like_one() {
        assert!(unset_variable("BILLING_KEY").contains("BILLING_KEY is not set"));
        for pasted in [KEY, "0b7e4c7e-9a51-4c3b-8f0e-8d3c1f5b2a90", "lower_case_key_value_123"] {
            let m = unset_variable(pasted);
            assert!(!m.contains(pasted.get(4..).unwrap_or(pasted)), "{m}");
        }
    }

    #[test]
    fn a_server_url_with_a_password_is_refused_without_echo() {
        let e = parse_server_url("http://svc:hunter22secret@10.0.0.5:8080").unwrap_err();
        assert!(!e.contains("hunter22"), "{e}");
        assert!(parse_server_url("http://10.0.0.5:8080").is_ok());
    }
}
