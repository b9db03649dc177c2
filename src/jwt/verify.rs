//! Checking one token against one issuer's rules, in the contract's order:
//! shape, issuer, key (by `kid`), algorithm, signature, `exp`/`nbf`/`iat`
//! with the leeway, audience, lifetime. Pure: the caller supplies the keys
//! and the time.

use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Map, Value};

use super::keys::KeySet;
use crate::config::JwtIssuer;
use crate::error::TokenCheck;

/// The claims of a verified token.
pub type Claims = Map<String, Value>;

/// A token's header, as far as verification reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// `None`: an algorithm this crate does not verify (`none` among them).
    pub alg: Option<Algorithm>,
    pub kid: Option<String>,
}

/// Whether a credential is shaped like a JWT: three base64url parts, the
/// first a JSON object. Anything else is an API key.
pub fn looks_like_jwt(value: &[u8]) -> bool {
    value.iter().filter(|b| **b == b'.').count() == 2 && raw_header(value).is_some()
}

fn raw_header(token: &[u8]) -> Option<Map<String, Value>> {
    let mut parts = token.split(|b| *b == b'.');
    let first = parts.next()?;
    let b64url = |p: &[u8]| p.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_');
    if !b64url(first) || !parts.all(b64url) {
        return None;
    }
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(first).ok()?;
    serde_json::from_slice(&json).ok()
}

/// The header's `alg` and `kid`.
pub fn head(token: &str) -> Result<Head, TokenCheck> {
    let header = raw_header(token.as_bytes()).ok_or(TokenCheck::Malformed)?;
    let alg = match header.get("alg") {
        Some(Value::String(a)) => a.parse::<Algorithm>().ok(),
        _ => return Err(TokenCheck::Malformed),
    };
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err(TokenCheck::Malformed),
    };
    Ok(Head { alg, kid })
}

/// The `iss` claim, read before the signature is checked (to pick the issuer).
pub fn unverified_issuer(token: &str) -> Result<String, TokenCheck> {
    #[derive(serde::Deserialize)]
    struct Peek {
        iss: Option<String>,
    }
    let peek: Peek = jsonwebtoken::dangerous::insecure_decode_claims(token).map_err(|_| TokenCheck::Malformed)?;
    peek.iss.ok_or(TokenCheck::Issuer)
}

/// What `jsonwebtoken` checks for `alg` under an issuer's rules.
pub fn validation(issuer: &JwtIssuer, alg: Algorithm) -> Validation {
    let mut v = Validation::new(alg);
    v.leeway = issuer.leeway.as_secs();
    v.validate_nbf = true;
    v.set_audience(&issuer.audiences);
    v.set_issuer(&[&issuer.issuer]);
    v.set_required_spec_claims(&["exp", "aud", "iss"]);
    v
}

/// Check `token` (whose header is `head`) against an issuer's rules and keys.
pub fn check(
    token: &str,
    head: &Head,
    issuer: &JwtIssuer,
    rules: &[(Algorithm, Validation)],
    keys: &KeySet,
    now: i64,
) -> Result<Claims, TokenCheck> {
    let alg = head.alg.ok_or(TokenCheck::Algorithm)?;
    let (_, validation) = rules.iter().find(|(a, _)| *a == alg).ok_or(TokenCheck::Algorithm)?;
    let key = keys.find(head.kid.as_deref()).ok_or(TokenCheck::Signature)?;
    if !key.fits(alg) {
        return Err(TokenCheck::Algorithm);
    }
    let data = jsonwebtoken::decode::<Claims>(token, &key.key, validation).map_err(|e| failed(e.kind()))?;
    times(&data.claims, issuer, now)?;
    Ok(data.claims)
}

/// `iat` not in the future (with the leeway), and `exp - iat` within `max_lifetime`.
fn times(claims: &Claims, issuer: &JwtIssuer, now: i64) -> Result<(), TokenCheck> {
    let number = |name: &str| claims.get(name).and_then(Value::as_f64).map(|n| n as i64);
    let leeway = i64::try_from(issuer.leeway.as_secs()).unwrap_or(i64::MAX);
    let iat = number("iat");
    if claims.contains_key("iat") && iat.is_none() {
        return Err(TokenCheck::Malformed);
    }
    if iat.is_some_and(|iat| iat > now.saturating_add(leeway)) {
        return Err(TokenCheck::NotYetValid);
    }
    if let Some(max) = issuer.max_lifetime {
        let max = i64::try_from(max.as_secs()).unwrap_or(i64::MAX);
        match (iat, number("exp")) {
            (Some(iat), Some(exp)) if exp.saturating_sub(iat) <= max => {}
            _ => return Err(TokenCheck::Lifetime),
        }
    }
    Ok(())
}

/// The check a `jsonwebtoken` error stands for.
fn failed(kind: &ErrorKind) -> TokenCheck {
    match kind {
        ErrorKind::InvalidSignature => TokenCheck::Signature,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName | ErrorKind::UnsupportedAlgorithm => {
            TokenCheck::Algorithm
        }
        ErrorKind::ExpiredSignature => TokenCheck::Expired,
        ErrorKind::ImmatureSignature => TokenCheck::NotYetValid,
        ErrorKind::InvalidAudience => TokenCheck::Audience,
        ErrorKind::InvalidIssuer => TokenCheck::Issuer,
        ErrorKind::MissingRequiredClaim(c) if c == "aud" => TokenCheck::Audience,
        ErrorKind::MissingRequiredClaim(c) if c == "iss" => TokenCheck::Issuer,
        // A token without `exp` never ends: its lifetime is what fails.
        ErrorKind::MissingRequiredClaim(_) => TokenCheck::Lifetime,
        _ => TokenCheck::Malformed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
    }

    #[test]
    fn only_three_base64url_parts_with_a_json_header_are_tokens() {
        let h = b64(r#"{"alg":"none"}"#);
        assert!(looks_like_jwt(format!("{h}.e30.").as_bytes()));
        assert!(looks_like_jwt(format!("{h}.e30.c2ln").as_bytes()));
        for not in ["kg_live_abc", "a.b.c", "e30.e30", "e30.e30.e30.e30", "e30.e+0.x", "", "..", "W10.e30.x"] {
            assert!(!looks_like_jwt(not.as_bytes()), "{not}");
        }
    }

    #[test]
    fn the_header_names_alg_and_kid() {
        let t = format!("{}.e30.x", b64(r#"{"alg":"ES256","kid":"k1"}"#));
        assert_eq!(head(&t), Ok(Head { alg: Some(Algorithm::ES256), kid: Some("k1".into()) }));
        for alg in ["none", "None", "HS1", ""] {
            let t = format!("{}.e30.x", b64(&format!(r#"{{"alg":"{alg}"}}"#)));
            assert_eq!(head(&t).map(|h| h.alg), Ok(None), "{alg}");
        }
        for bad in [r#"{"kid":"k"}"#, r#"{"alg":1}"#, r#"{"alg":"RS256","kid":7}"#] {
            assert_eq!(head(&format!("{}.e30.x", b64(bad))), Err(TokenCheck::Malformed), "{bad}");
        }
    }

    #[test]
    fn library_errors_name_the_check() {
        assert_eq!(failed(&ErrorKind::ExpiredSignature), TokenCheck::Expired);
        assert_eq!(failed(&ErrorKind::MissingRequiredClaim("exp".into())), TokenCheck::Lifetime);
        assert_eq!(failed(&ErrorKind::MissingRequiredClaim("aud".into())), TokenCheck::Audience);
        assert_eq!(failed(&ErrorKind::InvalidSignature), TokenCheck::Signature);
        assert_eq!(failed(&ErrorKind::InvalidToken), TokenCheck::Malformed);
    }
}
