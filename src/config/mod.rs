//! Configuration: the TOML file and `KEYGATE_*` variables, validated into
//! one typed [`Config`].
//!
//! Loading runs in two stages: [`file`] mirrors the file with serde (unknown
//! fields refused), then [`validate`] checks every value and resolves names
//! into indices, collecting every problem with its file position.

mod auth;
pub mod env;
pub mod error;
pub mod file;
mod jwt;
mod limits;
pub mod suggest;
mod validate;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};

pub use error::{ConfigError, Origin, Problem};
pub use jwt::{JwtIssuer, JwtKeys};
pub use validate::parse_duration;

/// The environment as seen at load time (a snapshot, so tests can pass their own).
pub type Env = BTreeMap<String, String>;

/// The process environment, keeping only variables with Unicode names and values.
pub fn process_env() -> Env {
    std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))).collect()
}

/// A validated configuration, ready to build a runtime snapshot from.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from, if any.
    pub source: Option<PathBuf>,
    pub listen: Listen,
    pub admin: Option<SocketAddr>,
    pub auth: Auth,
    pub upstreams: Vec<Upstream>,
    pub routes: Vec<Route>,
    pub clients: Vec<Client>,
    /// Things worth telling the operator that do not stop loading.
    pub warnings: Vec<Problem>,
    /// Where rates and quotas are counted.
    pub limits: Limits,
    /// `[[jwt]]`: the trusted token issuers.
    pub jwt: Vec<JwtIssuer>,
}

impl Config {
    /// "2 clients, 3 keys, 4 routes, 1 upstream": what `check` and the start-up summary count.
    pub fn counts(&self) -> String {
        let keys: usize = self.clients.iter().map(|c| c.keys.len()).sum();
        let n = |count: usize, one: &str| format!("{count} {one}{}", if count == 1 { "" } else { "s" });
        format!(
            "{}, {}, {}, {}",
            n(self.clients.len(), "client"),
            n(keys, "key"),
            n(self.routes.len(), "route"),
            n(self.upstreams.len(), "upstream")
        )
    }
}

/// The proxy listener and its limits.
#[derive(Debug, Clone, PartialEq)]
pub struct Listen {
    pub address: SocketAddr,
    pub shutdown_grace: Duration,
    pub header_read_timeout: Duration,
    pub body_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_concurrent_streams: u32,
    pub tls: Option<TlsFiles>,
    /// Peers whose `X-Forwarded-For` (and PROXY header) name the client.
    pub trusted_proxies: TrustedProxies,
    /// Every connection starts with a PROXY protocol header (from a trusted peer).
    pub proxy_protocol: bool,
    /// A tunnel (upgraded connection) with no bytes either way this long is closed.
    pub tunnel_idle_timeout: Duration,
    /// A tunnel is closed this long after it opened, however busy.
    pub tunnel_max_lifetime: Duration,
    /// Tunnels one client may hold open at once.
    pub max_tunnels_per_client: usize,
    /// A response the caller accepts no byte of for this long closes the connection.
    pub send_timeout: Duration,
    /// Upstream requests in flight at once, over all clients.
    pub max_in_flight: usize,
    /// Upstream requests in flight at once per client that sets no `max_in_flight`.
    pub max_in_flight_per_client: usize,
}

/// Certificate files of the listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

/// Where credentials come from and which identity is forwarded.
#[derive(Debug, Clone)]
pub struct Auth {
    pub header: HeaderName,
    /// Lower-cased `Authorization` schemes that may carry a key.
    pub schemes: Vec<String>,
    pub query_param: Option<String>,
    pub identity_header: HeaderName,
    pub max_failures_per_minute: u32,
    /// `""` in `authorization_schemes`: a lone word in `Authorization` is a key.
    pub raw_authorization: bool,
    /// Set on forwarded requests to the key's name (or fingerprint); off when `None`.
    pub credential_header: Option<HeaderName>,
    /// The `WWW-Authenticate` value of a 401, made once from the schemes and `realm`.
    pub challenge: HeaderValue,
    /// A `[[jwt]]` is configured: JWT-shaped Bearer values are tokens.
    pub tokens: bool,
}

/// A client's rate: `per_second` on average, `burst` back to back.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: u32,
}

/// A named group of servers.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub name: String,
    pub servers: Vec<http::Uri>,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// A private CA for `https://` servers, in place of the system roots.
    pub ca: Option<PathBuf>,
    /// How servers are chosen, skipped when failing, and checked.
    pub health: HealthPolicy,
    /// The protocol spoken to the servers.
    pub protocol: Protocol,
}

/// The protocol keygate speaks to an upstream's servers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1 (`https://`: ALPN `http/1.1`).
    #[default]
    Http1,
    /// HTTP/2: with prior knowledge (h2c) for `http://`, ALPN `h2` for `https://`.
    Http2,
}

/// How an upstream chooses servers and keeps failing ones out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthPolicy {
    pub strategy: Strategy,
    /// Consecutive connect or transport failures that eject a server; 0 never ejects.
    pub max_fails: u32,
    /// How long an ejected server is skipped before one trial request.
    pub fail_timeout: Duration,
    pub check: Option<HealthCheck>,
}

impl Default for HealthPolicy {
    fn default() -> Self {
        HealthPolicy {
            strategy: Strategy::RoundRobin,
            max_fails: 3,
            fail_timeout: Duration::from_secs(10),
            check: None,
        }
    }
}

/// How the next server is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    RoundRobin,
    /// The less busy of two servers drawn at random.
    LeastRequests,
}

/// Active health checks: `GET path` on each server every `interval`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub path: http::uri::PathAndQuery,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive passed checks that bring a down server back.
    pub healthy: u32,
    /// Consecutive failed checks that take a server down.
    pub unhealthy: u32,
}

/// A route: a path prefix (and optionally methods and host) sent to an upstream.
#[derive(Debug, Clone)]
pub struct Route {
    pub name: String,
    /// Normalised prefix without a trailing slash (`/` for the root).
    pub path: String,
    pub methods: Option<Vec<Method>>,
    /// Index into [`Config::upstreams`].
    pub upstream: usize,
    /// Lower-cased host name without port.
    pub host: Option<String>,
    pub max_body: Option<u64>,
    /// `[request_headers]` and the route's own rules, merged.
    pub request_headers: HeaderRules,
    /// Path segments removed before forwarding (`strip_prefix = true`: those
    /// of [`Route::path`]); 0 forwards the path as asked.
    pub strip_segments: usize,
    /// Scopes a token caller must hold (all of them); empty: none.
    pub scopes: Vec<String>,
}

/// Rules for the headers of forwarded requests: applied after keygate's own
/// stripping and before keygate sets its own headers.
#[derive(Debug, Clone, Default)]
pub struct HeaderRules {
    /// Removed in any spelling (letter case, `_` for `-`).
    pub remove: Vec<NamePattern>,
    /// Set to a static value, replacing what the caller sent.
    pub set: Vec<(HeaderName, HeaderValue)>,
}

/// A header name, or a prefix (`x-internal-*`), lower case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamePattern {
    Exact(String),
    Prefix(String),
}

/// Which routes a client may call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allowed {
    All,
    /// Sorted indices into [`Config::routes`].
    Only(Vec<usize>),
}

/// A client's grants as configured: routes by name, and upstreams (every
/// route of each). `Allowed` is their union.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    /// `"*"`: every route.
    pub all: bool,
    /// Sorted indices into [`Config::routes`] named in `routes`.
    pub routes: Vec<usize>,
    /// Sorted indices into [`Config::upstreams`] named in `upstreams`.
    pub upstreams: Vec<usize>,
}

impl Grants {
    /// The routes these grants allow, out of `routes`.
    pub fn allowed(&self, routes: &[Route]) -> Allowed {
        if self.all {
            return Allowed::All;
        }
        let by_upstream = routes.iter().enumerate().filter(|(_, r)| self.upstreams.binary_search(&r.upstream).is_ok());
        let mut indices: Vec<usize> = self.routes.iter().copied().chain(by_upstream.map(|(i, _)| i)).collect();
        indices.sort_unstable();
        indices.dedup();
        Allowed::Only(indices)
    }

    /// How route `index` (with upstream `upstream`) is granted, if it is.
    pub fn grant_for(&self, index: usize, upstream: usize) -> Option<&'static str> {
        if self.all {
            Some("*")
        } else if self.routes.binary_search(&index).is_ok() {
            Some("route")
        } else if self.upstreams.binary_search(&upstream).is_ok() {
            Some("upstream")
        } else {
            None
        }
    }
}

/// One calling application.
#[derive(Debug, Clone)]
pub struct Client {
    pub id: String,
    /// The routes it may call: the union of its two grants below.
    pub allowed: Allowed,
    /// What the configuration granted, for `keygate routes` to show.
    pub grants: Grants,
    pub rate: Rate,
    pub keys: Vec<Key>,
    /// Certificate subjects this client must present (empty: any or none).
    pub tls_subjects: Vec<String>,
    /// Its own cap on requests in flight; `None`: `listen.max_in_flight_per_client`.
    pub max_in_flight: Option<usize>,
    pub quota: Option<Quota>,
}

/// One key of a client, by its SHA-256 digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    pub digest: [u8; 32],
    /// Unix seconds.
    pub not_before: Option<i64>,
    /// Unix seconds.
    pub expires: Option<i64>,
    /// Where it was configured, so a problem with it can point there.
    pub origin: KeyOrigin,
    /// A name for logs, metrics and the credential header (`2026-12`).
    pub name: Option<String>,
}

impl Key {
    /// The key's label in logs, metrics and the credential header: its name, else its fingerprint.
    pub fn label(&self) -> String {
        self.name.clone().unwrap_or_else(|| crate::keys::fingerprint(&self.digest))
    }
}

/// Where a key was configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyOrigin {
    /// In the file: its field (`clients.billing.keys[1]`) and the span of its `hash` or `env`.
    File { field: String, span: std::ops::Range<usize> },
    /// A `KEYGATE_KEY_*` variable.
    Env(String),
}

/// A client's quota: `requests` allowed per calendar period (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub requests: u64,
    pub per: Period,
}

/// A calendar period in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    Hour,
    Day,
    Month,
}

/// Where client rates are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Store {
    /// Each instance alone.
    #[default]
    Local,
    /// In Redis, shared by every instance.
    Redis,
}

/// What decides when Redis fails or is slower than its timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnError {
    /// This instance's own limiter at the client's rate.
    #[default]
    Local,
    /// Let requests through uncounted.
    Allow,
    /// Refuse with 503 `limiter_unavailable`.
    Deny,
}

impl OnError {
    /// The name used in the configuration and in metrics.
    pub fn name(self) -> &'static str {
        match self {
            OnError::Local => "local",
            OnError::Allow => "allow",
            OnError::Deny => "deny",
        }
    }
}

/// A value that must never be printed (a URL with credentials, a password).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// `[redis]`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct RedisSettings {
    pub url: Secret,
    pub password: Option<Secret>,
    pub timeout: Duration,
    pub on_error: OnError,
    pub key_prefix: String,
}

/// Where rates and quotas are counted.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Limits {
    pub store: Store,
    pub redis: Option<RedisSettings>,
    /// Seconds added to the clock quotas read: 0 except in tests that cross
    /// a period's end.
    pub clock_offset: i64,
}

/// Load the configuration as `serve` would: the file (if any), then the environment.
pub fn load(path: Option<&Path>, env: &Env) -> Result<Config, ConfigError> {
    match path {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| ConfigError::single(Origin::None, "", format!("{}: cannot read: {e}", path.display())))?;
            load_str(&text, path, env)
        }
        None => validate::validate(file::FileConfig::default(), None, env),
    }
}

/// Load a configuration from TOML text that came from `path`.
pub fn load_str(text: &str, path: &Path, env: &Env) -> Result<Config, ConfigError> {
    let source = error::Source { path, text };
    let parsed: file::FileConfig = toml::from_str(text).map_err(|e| parse_error(&source, &e))?;
    validate::validate(parsed, Some(&source), env)
}

/// The path `load` uses: `-c FILE`, else `$KEYGATE_CONFIG`, else none.
pub fn config_path(flag: Option<PathBuf>, env: &Env) -> Option<PathBuf> {
    flag.or_else(|| env.get("KEYGATE_CONFIG").filter(|s| !s.is_empty()).map(PathBuf::from))
}

fn parse_error(source: &error::Source<'_>, e: &toml::de::Error) -> ConfigError {
    let span = e.span().unwrap_or(0..0);
    let field = error::field_path_at(source.text, span.start);
    let message = e.message().trim().replace('\n', " ");
    ConfigError::single(source.origin(span), field, message)
}

/// Networks of trusted proxies: load balancers whose `X-Forwarded-For` and
/// PROXY protocol headers are believed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(pub Vec<ipnet::IpNet>);

impl TrustedProxies {
    /// Whether `ip` (IPv4-mapped IPv6 as IPv4) is a trusted proxy.
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// Whether no proxy is trusted.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// One `trusted_proxies` entry: a CIDR (`10.0.0.0/8`) or a single address.
/// Host bits set under the prefix (`10.0.0.1/8`) are refused as a likely typo.
pub fn parse_network(s: &str) -> Result<ipnet::IpNet, String> {
    let s = s.trim();
    if let Ok(ip) = s.parse::<std::net::IpAddr>() {
        return Ok(ipnet::IpNet::from(ip.to_canonical()));
    }
    let net: ipnet::IpNet =
        s.parse().map_err(|_| format!("\"{s}\" is not a network like \"10.0.0.0/8\" or an address"))?;
    if net.trunc() != net {
        return Err(format!("\"{s}\" has host bits set: did you mean \"{}\"?", net.trunc()));
    }
    Ok(net)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_say_one_client_not_one_clients() {
        let text = "[upstreams.a]\nservers = [\"http://127.0.0.1:1\"]\n[[routes]]\nname = \"r\"\npath = \"/\"\nupstream = \"a\"\n\
                    [clients.c]\nroutes = [\"*\"]\nkeys = [{ hash = \"sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\" }]\n";
        let config = load_str(text, Path::new("k.toml"), &Env::default()).unwrap();
        assert_eq!(config.counts(), "1 client, 1 key, 1 route, 1 upstream");
    }
}
