//! The configuration file as written: a serde mirror of the TOML schema.
//!
//! Every table refuses unknown fields, so a typo is an error rather than a
//! silently ignored setting. Values that validation may reject are kept as
//! [`Spanned`] so the error can point at them.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

/// A string value with its position in the file.
pub type Str = Spanned<String>;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub listen: ListenToml,
    pub admin: Option<AdminToml>,
    #[serde(default)]
    pub auth: AuthToml,
    pub rate_limit: Option<RateToml>,
    #[serde(default)]
    pub upstreams: BTreeMap<String, UpstreamToml>,
    #[serde(default)]
    pub routes: Vec<RouteToml>,
    #[serde(default)]
    pub clients: BTreeMap<String, ClientToml>,
    pub request_headers: Option<HeaderRulesToml>,
    pub redis: Option<RedisToml>,
    #[serde(default)]
    pub jwt: Vec<JwtToml>,
}

/// `[listen]`: the proxy listener and its connection limits.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenToml {
    pub address: Option<Str>,
    pub shutdown_grace: Option<Str>,
    pub header_read_timeout: Option<Str>,
    pub body_timeout: Option<Str>,
    pub idle_timeout: Option<Str>,
    pub max_connections: Option<Spanned<i64>>,
    pub max_header_bytes: Option<Spanned<i64>>,
    pub max_headers: Option<Spanned<i64>>,
    pub max_concurrent_streams: Option<Spanned<i64>>,
    pub tls: Option<TlsToml>,
    pub trusted_proxies: Option<Vec<Str>>,
    pub proxy_protocol: Option<Spanned<bool>>,
    pub tunnel_idle_timeout: Option<Str>,
    pub tunnel_max_lifetime: Option<Str>,
    pub max_tunnels_per_client: Option<Spanned<i64>>,
    pub send_timeout: Option<Str>,
    pub max_in_flight: Option<Spanned<i64>>,
    pub max_in_flight_per_client: Option<Spanned<i64>>,
}

/// `[listen.tls]`: certificate files, and a CA for client certificates.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsToml {
    pub cert: Str,
    pub key: Str,
    pub client_ca: Option<Str>,
}

/// `[admin]`: health and metrics listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminToml {
    pub address: Str,
}

/// `[auth]`: where credentials are read from and what is set on the way out.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthToml {
    pub header: Option<Str>,
    pub authorization_schemes: Option<Vec<Str>>,
    pub query_param: Option<Str>,
    pub identity_header: Option<Str>,
    pub max_failures_per_minute: Option<Spanned<i64>>,
    pub credential_header: Option<Str>,
    pub realm: Option<Str>,
}

/// A rate: `per_second` requests on average, `burst` at once.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateToml {
    pub per_second: Spanned<f64>,
    pub burst: Spanned<i64>,
    /// `"local"` or `"redis"`: only in `[rate_limit]`.
    pub store: Option<Str>,
}

/// `[upstreams.<name>]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamToml {
    pub servers: Spanned<Vec<Str>>,
    pub connect_timeout: Option<Str>,
    pub request_timeout: Option<Str>,
    pub tls: Option<UpstreamTlsToml>,
    pub strategy: Option<Str>,
    pub max_fails: Option<Spanned<i64>>,
    pub fail_timeout: Option<Str>,
    pub health_check: Option<Spanned<HealthCheckToml>>,
    pub protocol: Option<Str>,
}

/// `[upstreams.<name>.tls]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsToml {
    pub ca: Option<Str>,
}

/// One `[[routes]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteToml {
    pub name: Str,
    pub path: Str,
    pub methods: Option<Vec<Str>>,
    pub upstream: Str,
    pub host: Option<Str>,
    pub max_body: Option<Str>,
    pub request_headers: Option<HeaderRulesToml>,
    /// Forward the path without the route's prefix.
    pub strip_prefix: Option<Spanned<bool>>,
    /// Scopes a token caller must hold (all of them).
    pub scopes: Option<Vec<Str>>,
}

/// `[request_headers]`, or a route's `request_headers`: headers removed and set.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderRulesToml {
    #[serde(default)]
    pub remove: Vec<Str>,
    #[serde(default)]
    pub set: BTreeMap<Str, Str>,
}

/// `[clients.<id>]`: one calling application.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientToml {
    pub routes: Option<Spanned<Vec<Str>>>,
    /// Every route whose upstream is one of these, now and after reloads.
    pub upstreams: Option<Spanned<Vec<Str>>>,
    pub rate_limit: Option<RateToml>,
    #[serde(default)]
    pub keys: Vec<KeyToml>,
    pub tls_subjects: Option<Vec<Str>>,
    pub max_in_flight: Option<Spanned<i64>>,
    pub quota: Option<QuotaToml>,
}

/// One key of a client: a hash, or the name of an environment variable.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyToml {
    pub hash: Option<Str>,
    pub env: Option<Str>,
    pub not_before: Option<Str>,
    pub expires: Option<Str>,
    pub name: Option<Str>,
}

/// `health_check = { … }` of an upstream: active checks of each server.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckToml {
    pub path: Option<Str>,
    pub interval: Option<Str>,
    pub timeout: Option<Str>,
    pub healthy: Option<Spanned<i64>>,
    pub unhealthy: Option<Spanned<i64>>,
}

/// `[redis]`: the shared store for rates and quotas.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisToml {
    pub url: Option<Str>,
    pub password_env: Option<Str>,
    pub timeout: Option<Str>,
    pub on_error: Option<Str>,
    pub key_prefix: Option<Str>,
}

/// `quota = { requests = N, per = "hour" | "day" | "month" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaToml {
    pub requests: Spanned<i64>,
    pub per: Str,
}

/// `[[jwt]]`: one trusted token issuer.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtToml {
    pub issuer: Str,
    pub audiences: Option<Spanned<Vec<Str>>>,
    pub algorithms: Option<Spanned<Vec<Str>>>,
    pub jwks_file: Option<Str>,
    pub jwks_url: Option<Str>,
    pub jwks_refresh: Option<Str>,
    pub secret_env: Option<Str>,
    pub client_claim: Option<Str>,
    pub leeway: Option<Str>,
    pub max_lifetime: Option<Str>,
    pub headers: Option<BTreeMap<Str, Str>>,
    pub tls: Option<UpstreamTlsToml>,
}
