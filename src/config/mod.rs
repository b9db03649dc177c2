//! Configuration: the TOML file and `KEYGATE_*` variables, validated into
//! one typed [`Config`].
//!
//! Loading runs in two stages: [`file`] mirrors the file with serde (unknown
//! fields refused), then [`validate`] checks every value and resolves names
//! into indices, collecting every problem with its file position.

pub mod env;
pub mod error;
pub mod file;
mod limits;
mod validate;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{HeaderName, Method};

pub use error::{ConfigError, Origin, Problem};
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
}

/// Which routes a client may call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allowed {
    All,
    /// Sorted indices into [`Config::routes`].
    Only(Vec<usize>),
}

/// One calling application.
#[derive(Debug, Clone)]
pub struct Client {
    pub id: String,
    pub allowed: Allowed,
    pub rate: Rate,
    pub keys: Vec<Key>,
    /// Certificate subjects this client must present (empty: any or none).
    pub tls_subjects: Vec<String>,
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
