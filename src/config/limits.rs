//! Validation of where limits are counted: `[rate_limit] store`, `[redis]`
//! (with `KEYGATE_REDIS_URL`), and client quotas.

use std::time::Duration;

use super::error::Origin;
use super::file::{FileConfig, QuotaToml, RedisToml, Str};
use super::validate::{parse_duration, Checker};
use super::{Config, Env, Limits, OnError, Period, Quota, RedisSettings, Secret, Store};

const URL_VAR: &str = "KEYGATE_REDIS_URL";
const DEFAULT_TIMEOUT: Duration = Duration::from_millis(50);

/// `[rate_limit] store` and `[redis]`.
pub(super) fn limits(c: &mut Checker<'_>, file: &FileConfig, env: &Env) -> Limits {
    let store = file.rate_limit.as_ref().and_then(|r| r.store.as_ref()).map_or(Store::Local, |s| store(c, s));
    let env_url = env.get(URL_VAR).filter(|v| !v.is_empty());
    let redis = match (&file.redis, env_url) {
        (Some(t), _) => redis(c, t, env_url, env),
        (None, Some(url)) => env_only(c, url),
        (None, None) => None,
    };
    Limits { store, redis, clock_offset: 0 }
}

fn store(c: &mut Checker<'_>, s: &Str) -> Store {
    match s.get_ref().as_str() {
        "local" => Store::Local,
        "redis" => Store::Redis,
        other => {
            c.error(s.span(), "rate_limit.store", format!("\"{other}\" is not \"local\" or \"redis\""));
            Store::Local
        }
    }
}

fn redis(c: &mut Checker<'_>, t: &RedisToml, env_url: Option<&String>, env: &Env) -> Option<RedisSettings> {
    let url = match (env_url, &t.url) {
        (Some(url), _) => url_from_env(c, url),
        (None, Some(url)) => check_url(url.get_ref()).map_err(|e| c.error(url.span(), "redis.url", e)).ok(),
        (None, None) => {
            let msg = format!("needs `url` (or {URL_VAR})");
            c.push(Origin::None, "redis.url", msg);
            None
        }
    };
    let password = t.password_env.as_ref().and_then(|var| match env.get(var.get_ref()).filter(|v| !v.is_empty()) {
        Some(p) => Some(Secret(p.clone())),
        None => {
            let msg = format!("environment variable {} is not set", var.get_ref());
            c.error(var.span(), "redis.password_env", msg);
            None
        }
    });
    let timeout = t.timeout.as_ref().map_or(DEFAULT_TIMEOUT, |v| {
        parse_duration(v.get_ref()).map_err(|e| c.error(v.span(), "redis.timeout", e)).unwrap_or(DEFAULT_TIMEOUT)
    });
    let on_error = t.on_error.as_ref().map_or(OnError::Local, |v| on_error(c, v));
    let key_prefix = t.key_prefix.as_ref().map_or(Some("keygate".to_string()), |v| key_prefix(c, v));
    Some(RedisSettings { url: url?, password, timeout, on_error, key_prefix: key_prefix? })
}

/// `KEYGATE_REDIS_URL` without a `[redis]` table: the defaults for the rest.
fn env_only(c: &mut Checker<'_>, url: &str) -> Option<RedisSettings> {
    Some(RedisSettings {
        url: url_from_env(c, url)?,
        password: None,
        timeout: DEFAULT_TIMEOUT,
        on_error: OnError::Local,
        key_prefix: "keygate".to_string(),
    })
}

fn url_from_env(c: &mut Checker<'_>, url: &str) -> Option<Secret> {
    check_url(url).map_err(|e| c.push(Origin::Env(URL_VAR.to_string()), "", e)).ok()
}

/// A `redis://` or `rediss://` URL the client accepts. The message never
/// repeats the URL's credentials.
pub(super) fn check_url(url: &str) -> Result<Secret, String> {
    let bad = || format!("\"{}\" is not a URL like redis://127.0.0.1:6379/0", redact(url));
    let scheme_ok = url.starts_with("redis://") || url.starts_with("rediss://");
    if !scheme_ok || redis::parse_redis_url(url).is_none() {
        return Err(bad());
    }
    redis::IntoConnectionInfo::into_connection_info(url).map_err(|_| bad())?;
    Ok(Secret(url.to_string()))
}

/// The URL with any `user:password@` replaced by `***@`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return String::from("***") };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest.get(..authority_end).and_then(|a| a.rfind('@')) {
        Some(at) => format!("{scheme}://***{}", rest.get(at..).unwrap_or("")),
        None => url.to_string(),
    }
}

fn on_error(c: &mut Checker<'_>, v: &Str) -> OnError {
    match v.get_ref().as_str() {
        "local" => OnError::Local,
        "allow" => OnError::Allow,
        "deny" => OnError::Deny,
        other => {
            c.error(v.span(), "redis.on_error", format!("\"{other}\" is not \"local\", \"allow\" or \"deny\""));
            OnError::Local
        }
    }
}

fn key_prefix(c: &mut Checker<'_>, v: &Str) -> Option<String> {
    let p = v.get_ref();
    let ok = !p.is_empty() && p.len() <= 64 && p.bytes().all(|b| b.is_ascii_graphic() && !b"{}".contains(&b));
    if !ok {
        let msg = "must be 1 to 64 printable characters without spaces or braces";
        c.error(v.span(), "redis.key_prefix", msg);
    }
    ok.then(|| p.clone())
}

/// `clients.<id>.quota`.
pub(super) fn quota(c: &mut Checker<'_>, q: &QuotaToml, client_field: &str) -> Option<Quota> {
    let field = format!("{client_field}.quota");
    let requests = u64::try_from(*q.requests.get_ref()).ok().filter(|n| *n > 0);
    if requests.is_none() {
        c.error(q.requests.span(), &format!("{field}.requests"), "must be a whole number above zero");
    }
    let per = match q.per.get_ref().as_str() {
        "hour" => Some(Period::Hour),
        "day" => Some(Period::Day),
        "month" => Some(Period::Month),
        other => {
            let msg = format!("\"{other}\" is not \"hour\", \"day\" or \"month\"");
            c.error(q.per.span(), &format!("{field}.per"), msg);
            None
        }
    };
    Some(Quota { requests: requests?, per: per? })
}

/// Checks across tables: `store = "redis"` needs `[redis]`; quotas without
/// Redis are per instance; `store` belongs to `[rate_limit]` only.
pub(super) fn final_checks(c: &mut Checker<'_>, config: &Config, file: &FileConfig) {
    if config.limits.store == Store::Redis && config.limits.redis.is_none() && file.redis.is_none() {
        let span = file.rate_limit.as_ref().and_then(|r| r.store.as_ref()).map_or(0..0, |s| s.span());
        c.error(span, "rate_limit.store", "\"redis\" needs a [redis] table (or KEYGATE_REDIS_URL)");
    }
    for (id, client) in &file.clients {
        if let Some(s) = client.rate_limit.as_ref().and_then(|r| r.store.as_ref()) {
            c.error(s.span(), &format!("clients.{id}.rate_limit.store"), "is set in [rate_limit] only");
        }
    }
    if config.limits.redis.is_some() {
        return;
    }
    for (id, client) in &file.clients {
        if let Some(q) = &client.quota {
            let msg =
                "counted by each instance in memory: a restart resets it (configure [redis] to share and keep it)";
            c.warn(q.per.span(), &format!("clients.{id}.quota"), msg);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_credentials_only() {
        for (url, want) in [
            ("redis://:hunter2@10.0.0.1:6379/0", "redis://***@10.0.0.1:6379/0"),
            ("rediss://user:pw@h/1", "rediss://***@h/1"),
            ("redis://a:b@c@h", "redis://***@h"),
            ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
            ("redis://h/x@y", "redis://h/x@y"),
            ("no scheme:pw@h", "***"),
        ] {
            assert_eq!(redact(url), want, "{url}");
        }
    }

    #[test]
    fn urls_accepted_and_refused() {
        for ok in ["redis://127.0.0.1:6379/0", "redis://:pw@localhost", "rediss://cache.internal:6380"] {
            assert!(check_url(ok).is_ok(), "{ok}");
        }
        for bad in ["http://127.0.0.1:6379", "127.0.0.1:6379", "redis://", "redis://:secretpw@[::1"] {
            let e = check_url(bad).err().unwrap_or_default();
            assert!(!e.is_empty(), "{bad}");
            assert!(!e.contains("secretpw"), "{e}");
        }
    }
}
