//! Validation of `[[jwt]]` issuers and route `scopes`. Key files and
//! secrets are read here, so they are read again on every reload.

use std::collections::HashSet;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use jsonwebtoken::{Algorithm, AlgorithmFamily};
use toml::Spanned;

use super::file::{FileConfig, JwtToml, Str};
use super::validate::{duration, parse_duration, readable, Checker};
use super::{Config, Env, NamePattern, Origin};
use crate::jwt::keys::KeySet;

/// One trusted token issuer.
#[derive(Debug, Clone)]
pub struct JwtIssuer {
    pub issuer: String,
    pub audiences: Vec<String>,
    /// The allowlist; never empty, never `none`.
    pub algorithms: Vec<Algorithm>,
    pub keys: JwtKeys,
    /// The claim whose value names a `[clients.X]`.
    pub client_claim: String,
    pub leeway: Duration,
    pub max_lifetime: Option<Duration>,
    /// Header name → claim copied onto forwarded requests.
    pub headers: Vec<(HeaderName, String)>,
}

/// Where an issuer's keys come from.
#[derive(Debug, Clone)]
pub enum JwtKeys {
    /// Read at load (`jwks_file`, `secret_env`).
    Fixed(Arc<KeySet>),
    /// Fetched in the background (`jwks_url`).
    Url { url: http::Uri, refresh: Duration, ca: Option<PathBuf> },
}

const DEFAULT_REFRESH: Duration = Duration::from_secs(600);
const DEFAULT_LEEWAY: Duration = Duration::from_secs(60);

/// Every `[[jwt]]` table.
pub(super) fn issuers(c: &mut Checker<'_>, file: &FileConfig, env: &Env) -> Vec<JwtIssuer> {
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(file.jwt.len());
    for (i, t) in file.jwt.iter().enumerate() {
        let field = format!("jwt[{i}]");
        if !seen.insert(t.issuer.get_ref().as_str()) {
            c.error(t.issuer.span(), &format!("{field}.issuer"), "another [[jwt]] has this issuer");
        }
        out.extend(issuer(c, t, &field, env));
    }
    if let Some(t) = from_env(c, env) {
        if file.jwt.iter().any(|f| f.issuer.get_ref() == t.issuer.get_ref()) {
            c.push(Origin::Env(ISSUER_VAR.into()), "", "a [[jwt]] in the file has this issuer");
        }
        let mut detached = Checker::detached();
        out.extend(issuer(&mut detached, &t, "KEYGATE_JWT", env));
        c.problems.append(&mut detached.problems);
        c.warnings.append(&mut detached.warnings);
    }
    out
}

const ISSUER_VAR: &str = "KEYGATE_JWT_ISSUER";

/// One issuer from `KEYGATE_JWT_*` (a sidecar configured by environment only).
fn from_env(c: &mut Checker<'_>, env: &Env) -> Option<JwtToml> {
    let var = |name: &str| env.get(&format!("KEYGATE_JWT_{name}")).filter(|v| !v.is_empty());
    let text = |name: &str| var(name).map(|v| Spanned::new(0..0, v.clone()));
    let list = |name: &str| {
        var(name).map(|v| Spanned::new(0..0, v.split(',').map(|s| Spanned::new(0..0, s.trim().to_string())).collect()))
    };
    let Some(issuer) = text("ISSUER") else {
        let names = ["AUDIENCES", "ALGORITHMS", "JWKS_URL", "JWKS_FILE", "SECRET_ENV"];
        if let Some(set) = names.iter().find(|n| var(n).is_some()) {
            c.push(Origin::Env(format!("KEYGATE_JWT_{set}")), "", format!("needs {ISSUER_VAR}"));
        }
        return None;
    };
    Some(JwtToml {
        issuer,
        audiences: list("AUDIENCES"),
        algorithms: list("ALGORITHMS"),
        jwks_file: text("JWKS_FILE"),
        jwks_url: text("JWKS_URL"),
        jwks_refresh: None,
        secret_env: text("SECRET_ENV"),
        client_claim: None,
        leeway: None,
        max_lifetime: None,
        headers: None,
        tls: None,
    })
}

/// One `[[jwt]]` table (also what `KEYGATE_JWT_*` variables describe).
pub(super) fn issuer(c: &mut Checker<'_>, t: &JwtToml, field: &str, env: &Env) -> Option<JwtIssuer> {
    if t.issuer.get_ref().is_empty() {
        c.error(t.issuer.span(), &format!("{field}.issuer"), "must not be empty");
    }
    let audiences = required_list(c, t.audiences.as_ref(), &format!("{field}.audiences"));
    let algorithms = algorithms(c, t.algorithms.as_ref(), field);
    let keys = keys(c, t, field, env, &algorithms);
    let leeway = duration(c, &t.leeway, &format!("{field}.leeway"), DEFAULT_LEEWAY);
    let max_lifetime = t.max_lifetime.as_ref().and_then(|v| {
        parse_duration(v.get_ref()).map_err(|e| c.error(v.span(), &format!("{field}.max_lifetime"), e)).ok()
    });
    let client_claim = t.client_claim.as_ref().map_or("sub", |v| v.get_ref()).to_string();
    if client_claim.is_empty() {
        c.error(
            t.client_claim.as_ref().map_or(0..0, |v| v.span()),
            &format!("{field}.client_claim"),
            "must not be empty",
        );
    }
    let headers = t.headers.iter().flatten().filter_map(|(n, v)| claim_header(c, n, v, field)).collect();
    Some(JwtIssuer {
        issuer: t.issuer.get_ref().clone(),
        audiences,
        algorithms,
        keys: keys?,
        client_claim,
        leeway,
        max_lifetime,
        headers,
    })
}

fn required_list(c: &mut Checker<'_>, v: Option<&Spanned<Vec<Str>>>, field: &str) -> Vec<String> {
    let list: Vec<String> = v.map(|l| l.get_ref().iter().map(|s| s.get_ref().clone()).collect()).unwrap_or_default();
    if list.is_empty() || list.iter().any(String::is_empty) {
        let span = v.map_or(0..0, |l| l.span());
        c.error(span, field, "required: a list of non-empty strings");
    }
    list
}

fn algorithms(c: &mut Checker<'_>, v: Option<&Spanned<Vec<Str>>>, field: &str) -> Vec<Algorithm> {
    let field = format!("{field}.algorithms");
    let Some(list) = v.filter(|l| !l.get_ref().is_empty()) else {
        c.error(v.map_or(0..0, |l| l.span()), &field, "required: the allowed algorithms, e.g. [\"ES256\"]");
        return Vec::new();
    };
    let mut out = Vec::new();
    for s in list.get_ref() {
        match Algorithm::from_str(s.get_ref()) {
            Ok(a) => out.push(a),
            Err(_) if s.get_ref().eq_ignore_ascii_case("none") => {
                c.error(s.span(), &field, "\"none\" is never accepted: tokens must be signed")
            }
            Err(_) => c.error(
                s.span(),
                &field,
                format!("\"{}\" is not a JWS algorithm (RS256, ES256, EdDSA, HS256, …)", s.get_ref()),
            ),
        }
    }
    out
}

/// Exactly one of `jwks_file`, `jwks_url`, `secret_env`, fitting the algorithms.
fn keys(c: &mut Checker<'_>, t: &JwtToml, field: &str, env: &Env, algs: &[Algorithm]) -> Option<JwtKeys> {
    let hmac = algs.iter().filter(|a| a.family() == AlgorithmFamily::Hmac).count();
    let set = [t.jwks_file.is_some(), t.jwks_url.is_some(), t.secret_env.is_some()].iter().filter(|b| **b).count();
    if set != 1 {
        c.error(t.issuer.span(), field, "needs exactly one of jwks_file, jwks_url, secret_env");
        return None;
    }
    if t.jwks_refresh.is_some() && t.jwks_url.is_none() {
        c.error(t.issuer.span(), &format!("{field}.jwks_refresh"), "only applies with jwks_url");
    }
    if t.tls.is_some() && t.jwks_url.is_none() {
        c.error(t.issuer.span(), &format!("{field}.tls"), "only applies with jwks_url");
    }
    if let Some(var) = &t.secret_env {
        if hmac != algs.len() {
            c.error(var.span(), &format!("{field}.algorithms"), "secret_env verifies HS256/HS384/HS512 only");
        }
        return secret(c, var, &format!("{field}.secret_env"), env);
    }
    if hmac > 0 {
        c.error(
            t.issuer.span(),
            &format!("{field}.algorithms"),
            "HS* needs secret_env (a public key is never an HMAC secret)",
        );
    }
    match (&t.jwks_file, &t.jwks_url) {
        (Some(path), _) => jwks_file(c, path, &format!("{field}.jwks_file")),
        (_, Some(url)) => jwks_url(c, t, url, field),
        _ => None,
    }
}

fn secret(c: &mut Checker<'_>, var: &Str, field: &str, env: &Env) -> Option<JwtKeys> {
    let Some(value) = env.get(var.get_ref()).filter(|v| !v.is_empty()) else {
        c.error(var.span(), field, format!("environment variable {} is not set", var.get_ref()));
        return None;
    };
    match KeySet::from_secret(value.as_bytes()) {
        Ok(set) => Some(JwtKeys::Fixed(Arc::new(set))),
        Err(e) => {
            c.error(var.span(), field, e);
            None
        }
    }
}

fn jwks_file(c: &mut Checker<'_>, v: &Str, field: &str) -> Option<JwtKeys> {
    let path = readable(c, v, field);
    let bytes = std::fs::read(&path).ok()?;
    match KeySet::from_jwks(&bytes) {
        Ok(set) => Some(JwtKeys::Fixed(Arc::new(set))),
        Err(e) => {
            c.error(v.span(), field, format!("{}: {e}", path.display()));
            None
        }
    }
}

fn jwks_url(c: &mut Checker<'_>, t: &JwtToml, v: &Str, field: &str) -> Option<JwtKeys> {
    let url_field = format!("{field}.jwks_url");
    let url = match http::Uri::from_str(v.get_ref()) {
        Ok(u) if u.host().is_some() && matches!(u.scheme_str(), Some("https" | "http")) => u,
        _ => {
            c.error(v.span(), &url_field, "must be an https:// (or http://) URL");
            return None;
        }
    };
    if url.scheme_str() == Some("http") {
        c.warn(v.span(), &url_field, "keys fetched over plain http:// can be altered on the way");
    }
    let refresh = duration(c, &t.jwks_refresh, &format!("{field}.jwks_refresh"), DEFAULT_REFRESH);
    let ca = t.tls.as_ref().and_then(|tls| tls.ca.as_ref()).map(|ca| readable(c, ca, &format!("{field}.tls.ca")));
    Some(JwtKeys::Url { url, refresh, ca })
}

/// `"X-Tenant" = "tenant"`: a header name keygate may set, and a claim.
fn claim_header(c: &mut Checker<'_>, name: &Str, claim: &Str, field: &str) -> Option<(HeaderName, String)> {
    let field = format!("{field}.headers");
    let Ok(header) = HeaderName::from_bytes(name.get_ref().as_bytes()) else {
        c.error(name.span(), &field, format!("\"{}\" is not a header name", name.get_ref()));
        return None;
    };
    if crate::proxy::headers::is_reserved(&header) || header == http::header::AUTHORIZATION {
        c.error(name.span(), &field, format!("\"{header}\" is a header keygate owns"));
        return None;
    }
    if claim.get_ref().is_empty() {
        c.error(claim.span(), &field, "the claim name must not be empty");
        return None;
    }
    Some((header, claim.get_ref().clone()))
}

/// Route `scopes`, the token switch in `[auth]`, and the claim headers'
/// names stripped from every request (so no caller can send its own).
pub(super) fn finish(c: &mut Checker<'_>, config: &mut Config, file: &FileConfig) {
    config.auth.tokens = !config.jwt.is_empty();
    let claimed: Vec<NamePattern> =
        config.jwt.iter().flat_map(|j| &j.headers).map(|(h, _)| NamePattern::Exact(h.as_str().to_string())).collect();
    for (i, route) in config.routes.iter_mut().enumerate() {
        route.request_headers.remove.extend(claimed.iter().cloned());
        let Some(scopes) = file.routes.get(i).and_then(|r| r.scopes.as_ref()) else { continue };
        for s in scopes {
            if !scope_ok(s.get_ref()) {
                c.error(
                    s.span(),
                    &format!("routes[{i}].scopes"),
                    "a scope is printable ASCII without spaces, quotes or backslashes",
                );
            }
        }
        if let (Some(first), true) = (scopes.first(), config.jwt.is_empty()) {
            c.warn(
                first.span(),
                &format!("routes[{i}].scopes"),
                "applies to token callers only, and no [[jwt]] is configured",
            );
        }
        route.scopes = scopes.iter().map(|s| s.get_ref().clone()).collect();
    }
}

/// RFC 6750 scope-token characters.
fn scope_ok(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
}

#[cfg(test)]
mod tests {
    use super::super::{load_str, Env};

    const BASE: &str =
        "[upstreams.a]\nservers = [\"http://127.0.0.1:1\"]\n[[routes]]\nname = \"r\"\npath = \"/\"\nupstream = \"a\"\n";
    const ED: &str =
        r#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"e1","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;

    /// The errors of `[[jwt]]` lines `table` (with a JWKS file at `jwks.json`), one string.
    fn errors(table: &str, env: &[(&str, &str)]) -> String {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("jwks.json"), ED).unwrap();
        let env: Env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let text = format!("{BASE}[[jwt]]\nissuer = \"https://i\"\n{table}");
        match load_str(&text, &dir.path().join("k.toml"), &env) {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_valid_issuer_loads() {
        let ok = "audiences = [\"a\"]\nalgorithms = [\"EdDSA\"]\njwks_file = \"jwks.json\"\nheaders = { \"X-Tenant\" = \"t\" }\n";
        assert_eq!(errors(ok, &[]), "");
        let hs = "audiences = [\"a\"]\nalgorithms = [\"HS256\"]\nsecret_env = \"S\"\n";
        assert_eq!(errors(hs, &[("S", &"x".repeat(32))]), "");
    }

    #[test]
    fn unsafe_or_incomplete_issuers_are_refused_with_their_position() {
        let jwks = "jwks_file = \"jwks.json\"\n";
        for (table, env, want) in [
            (format!("audiences = [\"a\"]\nalgorithms = [\"none\"]\n{jwks}"), "", "never accepted"),
            (format!("audiences = [\"a\"]\n{jwks}"), "", "algorithms: required"),
            (format!("algorithms = [\"EdDSA\"]\n{jwks}"), "", "audiences: required"),
            (format!("audiences = [\"a\"]\nalgorithms = [\"HS256\"]\n{jwks}"), "", "never an HMAC secret"),
            (format!("audiences = [\"a\"]\nalgorithms = [\"XS1\"]\n{jwks}"), "", "not a JWS algorithm"),
            ("audiences = [\"a\"]\nalgorithms = [\"HS256\"]\nsecret_env = \"S\"\n".into(), "short", "at least 32"),
            ("audiences = [\"a\"]\nalgorithms = [\"HS256\"]\nsecret_env = \"UNSET\"\n".into(), "", "not set"),
            (
                "audiences = [\"a\"]\nalgorithms = [\"ES256\"]\nsecret_env = \"S\"\n".into(),
                "x".repeat(40).leak(),
                "HS256/HS384/HS512 only",
            ),
            (format!("audiences = [\"a\"]\nalgorithms = [\"EdDSA\"]\n{jwks}secret_env = \"S\"\n"), "", "exactly one"),
            ("audiences = [\"a\"]\nalgorithms = [\"EdDSA\"]\n".into(), "", "exactly one"),
            ("audiences = [\"a\"]\nalgorithms = [\"EdDSA\"]\njwks_url = \"ftp://x\"\n".into(), "", "https://"),
            (
                format!("audiences = [\"a\"]\nalgorithms = [\"EdDSA\"]\n{jwks}jwks_refresh = \"1m\"\n"),
                "",
                "only applies",
            ),
            (
                format!("audiences = [\"a\"]\nalgorithms = [\"EdDSA\"]\n{jwks}headers = {{ \"Host\" = \"t\" }}\n"),
                "",
                "keygate owns",
            ),
            ("audiences = [\"a\"]\nalgorithms = [\"EdDSA\"]\njwks_file = \"missing.json\"\n".into(), "", "cannot read"),
        ] {
            let got = errors(&table, &[("S", env)]);
            assert!(got.contains(want), "{table}: {got}");
            assert!(got.contains("k.toml:"), "{table}: no position in {got}");
        }
    }

    #[test]
    fn a_plain_http_jwks_url_loads_with_a_warning_and_other_schemes_are_refused() {
        let table = "audiences = [\"a\"]\nalgorithms = [\"ES256\"]\njwks_url = \"http://auth.internal/jwks\"\n";
        let text = format!("{BASE}[[jwt]]\nissuer = \"https://i\"\n{table}");
        let config = load_str(&text, std::path::Path::new("k.toml"), &Env::default()).unwrap();
        let warnings: Vec<String> = config.warnings.iter().map(ToString::to_string).collect();
        assert!(warnings.iter().any(|w| w.contains("k.toml:11:") && w.contains("plain http://")), "{warnings:?}");
        let https = table.replace("http://", "https://");
        let config = load_str(
            &format!("{BASE}[[jwt]]\nissuer = \"https://i\"\n{https}"),
            std::path::Path::new("k.toml"),
            &Env::default(),
        )
        .unwrap();
        assert!(config.warnings.iter().all(|w| !w.to_string().contains("plain http://")));
        let ftp = errors(&table.replace("http://", "ftp://"), &[]);
        assert!(ftp.contains("must be an https:// (or http://) URL"), "{ftp}");
    }

    #[test]
    fn scopes_are_scope_tokens() {
        let text = format!("{BASE}scopes = [\"a b\"]\n");
        let dir = tempfile::tempdir().unwrap();
        let e = load_str(&text, &dir.path().join("k.toml"), &Env::default()).unwrap_err().to_string();
        assert!(e.contains("routes[0].scopes"), "{e}");
    }
}
