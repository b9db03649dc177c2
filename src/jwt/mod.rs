//! Bearer tokens (JWT) as a second kind of credential: the issuers' rules
//! and keys, verification, and the cache of verified tokens. A verified
//! token becomes a [`Grant`]: the client it names, with its scopes and the
//! claims copied onto the forwarded request.

pub mod cache;
pub mod keys;
pub mod remote;
pub mod verify;

use std::collections::HashMap;
use std::sync::Arc;

use http::{HeaderName, HeaderValue};
use jsonwebtoken::{Algorithm, Validation};
use serde_json::Value;

use crate::config::{Config, JwtIssuer, JwtKeys};
use crate::error::{Reject, TokenCheck};
use crate::metrics::jwt::{IssuerLabels, JwtMetrics, VerificationLabels};
use crate::metrics::Name;
use keys::KeySet;
use verify::Claims;

/// What a verified token grants.
#[derive(Debug)]
pub struct Grant {
    /// Index of the client, as in the snapshot.
    pub client: u32,
    /// Index of the issuer in `[[jwt]]`.
    pub issuer: u32,
    /// The token's `exp` (Unix seconds).
    pub exp: i64,
    pub scopes: Box<[String]>,
    /// Claims copied onto the forwarded request.
    pub headers: Box<[(HeaderName, HeaderValue)]>,
}

impl Grant {
    /// Whether the token holds every scope in `required`.
    pub fn holds(&self, required: &[String]) -> bool {
        required.iter().all(|r| self.scopes.contains(r))
    }
}

/// One issuer, ready to verify.
#[derive(Debug)]
pub struct Issuer {
    pub config: JwtIssuer,
    /// A `Validation` per allowed algorithm, made once.
    rules: Vec<(Algorithm, Validation)>,
    pub keys: Keys,
}

/// Where an issuer's keys are held.
#[derive(Debug, Clone)]
pub enum Keys {
    Fixed(Arc<KeySet>),
    Remote(Arc<remote::Remote>),
}

impl Issuer {
    /// The keys held now.
    pub fn keys(&self) -> Arc<KeySet> {
        match &self.keys {
            Keys::Fixed(set) => set.clone(),
            Keys::Remote(r) => r.keys(),
        }
    }

    /// The fetched keys' state, for a `jwks_url` issuer.
    pub fn remote(&self) -> Option<&Arc<remote::Remote>> {
        match &self.keys {
            Keys::Fixed(_) => None,
            Keys::Remote(r) => Some(r),
        }
    }
}

/// Every issuer of a snapshot, the client names tokens may carry, and the cache.
#[derive(Debug)]
pub struct Verifier {
    pub issuers: Vec<Issuer>,
    clients: HashMap<String, u32>,
    cache: cache::Cache,
    /// `jwt:<issuer>` per issuer: the access log's credential field.
    log_names: Vec<crate::metrics::Name>,
    /// Set once the snapshot is published.
    metrics: std::sync::OnceLock<JwtMetrics>,
}

impl Verifier {
    /// The verifier of a configuration; `None` without `[[jwt]]`. Fetched
    /// key sets of `previous` are kept for the same URL.
    pub fn new(config: &Config, previous: Option<&Verifier>) -> Option<Verifier> {
        if config.jwt.is_empty() {
            return None;
        }
        let issuers = config.jwt.iter().map(|j| issuer(j, previous)).collect();
        let clients = config
            .clients
            .iter()
            .enumerate()
            .map(|(i, c)| (c.id.clone(), u32::try_from(i).unwrap_or(u32::MAX)))
            .collect();
        let log_names = config.jwt.iter().map(|j| crate::metrics::Name::new(&format!("jwt:{}", j.issuer))).collect();
        Some(Verifier { issuers, clients, cache: cache::Cache::default(), log_names, metrics: Default::default() })
    }

    /// The grant of a token: from the cache, else verified and cached.
    /// A valid token naming no configured client is `Forbidden`.
    pub fn verify(&self, token: &str, now: i64) -> Result<Arc<Grant>, Reject> {
        if let Some(grant) = self.cache.get(token, now) {
            if let Some(m) = self.metrics.get() {
                m.cache_hits.inc();
            }
            return Ok(grant);
        }
        let checked = self.check(token, now);
        let granted = checked.as_ref().ok().map(|(index, claims)| self.grant(*index, claims));
        self.count(&checked, granted.as_ref().is_some_and(Option::is_some));
        checked.map_err(|check| Reject::InvalidToken { check })?;
        let grant = Arc::new(granted.flatten().ok_or(Reject::Forbidden)?);
        self.cache.insert(token, grant.clone(), now);
        Ok(grant)
    }

    /// Count one verification (once published): by configured issuer and result.
    fn count(&self, checked: &Result<(usize, Claims), TokenCheck>, granted: bool) {
        let Some(m) = self.metrics.get() else { return };
        let (index, result) = match checked {
            Ok((i, _)) => (Some(*i), if granted { "ok" } else { "forbidden" }),
            Err(check) => (None, check.label()),
        };
        let issuer = index.and_then(|i| self.issuers.get(i)).map_or("-", |i| i.config.issuer.as_str());
        m.verifications.get_or_create(&VerificationLabels { issuer: Name::new(issuer), result }).inc();
    }

    /// Export the keys held per issuer, now and (for `jwks_url`) after each fetch.
    pub fn publish(&self, metrics: &JwtMetrics) {
        let _ = self.metrics.set(metrics.clone());
        for issuer in &self.issuers {
            let labels = IssuerLabels { issuer: Name::new(&issuer.config.issuer) };
            let keys = metrics.keys.get_or_create(&labels).clone();
            keys.set(i64::try_from(issuer.keys().keys.len()).unwrap_or(i64::MAX));
            if let Some(remote) = issuer.remote() {
                remote.publish(keys, metrics.refreshed.get_or_create(&labels).clone());
            }
        }
    }

    /// Verify a token: the index of its issuer and its claims, or the check that failed.
    pub fn check(&self, token: &str, now: i64) -> Result<(usize, Claims), TokenCheck> {
        let head = verify::head(token)?;
        let iss = verify::unverified_issuer(token)?;
        let index = self.issuers.iter().position(|i| i.config.issuer == iss).ok_or(TokenCheck::Issuer)?;
        let issuer = self.issuers.get(index).ok_or(TokenCheck::Issuer)?;
        let keys = issuer.keys();
        // Before the first fetch the fetcher is retrying anyway: no refetch is asked for.
        if let (Some(remote), Some(kid)) = (issuer.remote(), head.kid.as_deref()) {
            if remote.ready() && !keys.has(kid) {
                remote.unknown_kid();
            }
        }
        let claims = verify::check(token, &head, &issuer.config, &issuer.rules, &keys, now)?;
        Ok((index, claims))
    }

    /// The client a verified token names, with its scopes and header claims.
    pub fn grant(&self, index: usize, claims: &Claims) -> Option<Grant> {
        let issuer = &self.issuers.get(index)?.config;
        let client = *self.clients.get(claims.get(&issuer.client_claim)?.as_str()?)?;
        let exp = claims.get("exp").and_then(Value::as_f64).map_or(0, |e| e as i64);
        let headers = issuer
            .headers
            .iter()
            .filter_map(|(name, claim)| Some((name.clone(), claim_value(claims.get(claim)?)?)))
            .collect();
        let issuer = u32::try_from(index).unwrap_or(u32::MAX);
        Some(Grant { client, issuer, exp, scopes: scopes(claims).into(), headers })
    }

    /// The id of client `index`.
    pub fn client_name(&self, index: u32) -> Option<&str> {
        self.clients.iter().find(|(_, i)| **i == index).map(|(name, _)| name.as_str())
    }

    /// Whether every `jwks_url` issuer holds keys (`/readyz`).
    pub fn ready(&self) -> bool {
        self.issuers.iter().filter_map(Issuer::remote).all(|r| r.ready())
    }

    /// `jwt:<issuer>` for issuer `index`: what the access log names.
    /// The `iss` of the issuer at `index`.
    pub fn issuer_name(&self, index: u32) -> Option<&str> {
        self.issuers.get(index as usize).map(|i| i.config.issuer.as_str())
    }

    /// Whether `iss` names a configured issuer.
    pub fn trusts(&self, iss: &str) -> bool {
        self.issuers.iter().any(|i| i.config.issuer == iss)
    }

    pub fn log_name(&self, index: u32) -> Option<crate::metrics::Name> {
        self.log_names.get(index as usize).cloned()
    }
}

fn issuer(config: &JwtIssuer, previous: Option<&Verifier>) -> Issuer {
    let rules = config.algorithms.iter().map(|a| (*a, verify::validation(config, *a))).collect();
    let keys = match &config.keys {
        JwtKeys::Fixed(set) => Keys::Fixed(set.clone()),
        JwtKeys::Url { url, refresh, ca } => {
            let same = |r: &&Arc<remote::Remote>| r.url == *url && r.refresh == *refresh && r.ca == *ca;
            let kept = previous.and_then(|p| p.issuers.iter().filter_map(Issuer::remote).find(same).cloned());
            Keys::Remote(kept.unwrap_or_else(|| Arc::new(remote::Remote::new(url.clone(), *refresh, ca.clone()))))
        }
    };
    Issuer { config: config.clone(), rules, keys }
}

/// Run the fetchers of the current snapshot's `jwks_url` issuers, replaced
/// when a reload swaps the snapshot (their keys live on in the issuers kept).
pub async fn fetchers(shared: Arc<crate::state::Shared>, stop: impl std::future::Future<Output = ()>) {
    crate::app::per_snapshot(shared, stop, |snap, tasks| {
        for remote in snap.jwt.iter().flat_map(|j| &j.issuers).filter_map(Issuer::remote) {
            tasks.spawn(remote.clone().run());
        }
    })
    .await
}

/// Scopes from a `scope` string (space-separated) or an `scp` list (or string).
pub fn scopes(claims: &Claims) -> Vec<String> {
    let words = |s: &str| s.split_ascii_whitespace().map(str::to_string).collect::<Vec<_>>();
    match (claims.get("scope"), claims.get("scp")) {
        (Some(Value::String(s)), _) => words(s),
        (_, Some(Value::Array(list))) => list.iter().filter_map(|v| v.as_str().map(str::to_string)).collect(),
        (_, Some(Value::String(s))) => words(s),
        _ => Vec::new(),
    }
}

/// A claim as a header value: strings, numbers and booleans as text.
fn claim_value(v: &Value) -> Option<HeaderValue> {
    let text = match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => return None,
    };
    HeaderValue::from_str(&text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(v: Value) -> Claims {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn scopes_come_from_scope_or_scp() {
        assert_eq!(scopes(&claims(json!({"scope": "a  b\tc"}))), ["a", "b", "c"]);
        assert_eq!(scopes(&claims(json!({"scp": ["a", 1, "b"]}))), ["a", "b"]);
        assert_eq!(scopes(&claims(json!({"scp": "a b"}))), ["a", "b"]);
        assert!(scopes(&claims(json!({"scope": 5}))).is_empty());
    }

    #[test]
    fn claims_become_header_values_when_plain() {
        assert_eq!(claim_value(&json!("acme")), Some(HeaderValue::from_static("acme")));
        assert_eq!(claim_value(&json!(42)), Some(HeaderValue::from_static("42")));
        assert_eq!(claim_value(&json!(true)), Some(HeaderValue::from_static("true")));
        assert_eq!(claim_value(&json!({"a": 1})), None);
        assert_eq!(claim_value(&json!("a\nb")), None);
    }

    /// A verifier with one HS256 issuer and client `billing`, and a signer for it.
    fn hs_verifier() -> (Verifier, impl Fn(Value) -> String) {
        let secret = "s".repeat(32);
        let text = "[upstreams.a]\nservers = [\"http://127.0.0.1:1\"]\n[[routes]]\nname = \"r\"\npath = \"/\"\nupstream = \"a\"\n\
                    [clients.billing]\nroutes = [\"*\"]\n\
                    [[jwt]]\nissuer = \"i\"\naudiences = [\"a\"]\nalgorithms = [\"HS256\"]\nsecret_env = \"S\"\n";
        let env = crate::config::Env::from([("S".to_string(), secret.clone())]);
        let config = crate::config::load_str(text, std::path::Path::new("k.toml"), &env).unwrap();
        let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()).unwrap();
        let sign = move |c: Value| jsonwebtoken::encode(&jsonwebtoken::Header::default(), &c, &key).unwrap();
        (Verifier::new(&config, None).unwrap(), sign)
    }

    #[test]
    fn verified_tokens_are_cached_until_exp_and_failures_never() {
        let (v, sign) = hs_verifier();
        let now = crate::keys::unix_now();
        let token = sign(json!({"iss": "i", "aud": "a", "sub": "billing", "exp": now + 60}));
        assert_eq!(v.verify(&token, now).unwrap().client, 0);
        assert_eq!(v.cache.len(), 1);
        assert!(v.verify(&token, now).is_ok());
        // Past its exp the entry is not used: the token is verified again (and refused).
        assert!(v.cache.get(&token, now + 60).is_none());
        let nobody = sign(json!({"iss": "i", "aud": "a", "sub": "nobody", "exp": now + 60}));
        assert_eq!(v.verify(&nobody, now).unwrap_err(), Reject::Forbidden);
        let wrong = sign(json!({"iss": "i", "aud": "b", "sub": "billing", "exp": now + 60}));
        assert_eq!(v.verify(&wrong, now).unwrap_err(), Reject::InvalidToken { check: TokenCheck::Audience });
        assert_eq!(v.cache.len(), 0, "refused tokens are not cached (the expired entry went too)");
    }

    #[test]
    fn a_grant_holds_all_required_scopes() {
        let g =
            Grant { client: 0, issuer: 0, exp: 1, scopes: vec!["a".into(), "b".into()].into(), headers: Box::new([]) };
        assert!(g.holds(&[]) && g.holds(&["a".into(), "b".into()]));
        assert!(!g.holds(&["a".into(), "c".into()]));
    }
}
