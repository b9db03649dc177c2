//! Verification keys: a JWKS document or a shared secret, each key bound to
//! the algorithm family it was made for (an RSA key never checks an HMAC).

use std::sync::Arc;

use jsonwebtoken::jwk::{AlgorithmParameters, Jwk};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};

/// The shortest HMAC secret accepted, in bytes.
pub const MIN_SECRET: usize = 32;

/// One verification key.
#[derive(Debug, Clone)]
pub struct BoundKey {
    pub kid: Option<String>,
    /// The JWK's `alg`, when it named one: the only algorithm this key checks.
    pub alg: Option<Algorithm>,
    pub key: DecodingKey,
}

impl BoundKey {
    /// Whether this key may check a signature made with `alg`: the same
    /// family as the key (so no HMAC with a public key), and the JWK's own
    /// `alg` when it has one.
    pub fn fits(&self, alg: Algorithm) -> bool {
        self.key.family() == alg.family() && self.alg.is_none_or(|a| a == alg)
    }
}

/// The keys of one issuer.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    pub keys: Vec<BoundKey>,
}

impl KeySet {
    /// The public keys of a JWKS document. Secret (`oct`) keys are refused:
    /// HMAC secrets come from the environment only.
    pub fn from_jwks(json: &[u8]) -> Result<KeySet, String> {
        #[derive(serde::Deserialize)]
        struct Doc {
            keys: Vec<serde_json::Value>,
        }
        let doc: Doc = serde_json::from_slice(json).map_err(|e| format!("not a JWKS document: {e}"))?;
        let mut keys = Vec::with_capacity(doc.keys.len());
        for (i, value) in doc.keys.into_iter().enumerate() {
            let jwk: Jwk = serde_json::from_value(value).map_err(|e| format!("keys[{i}]: {e}"))?;
            keys.push(bound(&jwk).map_err(|e| format!("keys[{i}]: {e}"))?);
        }
        if keys.is_empty() {
            return Err("the JWKS document holds no keys".into());
        }
        Ok(KeySet { keys })
    }

    /// The usable public keys of a fetched JWKS document: keys keygate
    /// cannot use (encryption keys, secrets, unknown types) are skipped, as
    /// identity providers publish them beside signing keys.
    pub fn from_jwks_lenient(json: &[u8]) -> Result<KeySet, String> {
        #[derive(serde::Deserialize)]
        struct Doc {
            keys: Vec<serde_json::Value>,
        }
        let doc: Doc = serde_json::from_slice(json).map_err(|e| format!("not a JWKS document: {e}"))?;
        let keys: Vec<BoundKey> = doc
            .keys
            .into_iter()
            .filter(|v| v.get("use").is_none_or(|u| u == "sig"))
            .filter_map(|v| bound(&serde_json::from_value(v).ok()?).ok())
            .collect();
        match keys.is_empty() {
            true => Err("the JWKS document holds no usable signing key".into()),
            false => Ok(KeySet { keys }),
        }
    }

    /// An HMAC secret (HS256/384/512), at least [`MIN_SECRET`] bytes.
    pub fn from_secret(secret: &[u8]) -> Result<KeySet, String> {
        if secret.len() < MIN_SECRET {
            return Err(format!("the secret is {} bytes; at least {MIN_SECRET} are required", secret.len()));
        }
        let key = DecodingKey::from_secret(secret).map_err(|e| e.to_string())?;
        Ok(KeySet { keys: vec![BoundKey { kid: None, alg: None, key }] })
    }

    /// The key named `kid`, or the only key when the token names none.
    pub fn find(&self, kid: Option<&str>) -> Option<&BoundKey> {
        match kid {
            Some(kid) => self.keys.iter().find(|k| k.kid.as_deref() == Some(kid)),
            None => match self.keys.as_slice() {
                [only] => Some(only),
                _ => None,
            },
        }
    }

    /// Whether a key named `kid` is held.
    pub fn has(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }
}

/// A shared, swappable key set.
pub type Shared = Arc<KeySet>;

fn bound(jwk: &Jwk) -> Result<BoundKey, String> {
    if matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_)) {
        return Err("secret (oct) keys are not accepted in a JWKS; use secret_env".into());
    }
    let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("unusable key: {e}"))?;
    let alg = match jwk.common.key_algorithm {
        None => None,
        // The names are the JWS names (`ES256`, `EdDSA`); encryption ones do not parse.
        Some(a) => Some(format!("{a:?}").parse::<Algorithm>().map_err(|_| format!("unsupported alg {a:?}"))?),
    };
    if alg.is_some_and(|a| a.family() != key.family()) || key.family() == AlgorithmFamily::Hmac {
        return Err("the key's alg does not fit its type".into());
    }
    Ok(BoundKey { kid: jwk.common.key_id.clone(), alg, key })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED: &str =
        r#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"e1","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;

    #[test]
    fn a_jwks_key_is_bound_to_its_family() {
        let set = KeySet::from_jwks(ED.as_bytes()).unwrap();
        let key = set.find(Some("e1")).unwrap();
        assert!(key.fits(Algorithm::EdDSA));
        assert!(!key.fits(Algorithm::HS256) && !key.fits(Algorithm::RS256) && !key.fits(Algorithm::ES256));
        assert!(set.find(None).is_some(), "the only key serves a token without kid");
        assert!(set.find(Some("e2")).is_none());
    }

    #[test]
    fn secret_keys_and_junk_are_refused() {
        let oct = r#"{"keys":[{"kty":"oct","k":"c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0MTIz"}]}"#;
        assert!(KeySet::from_jwks(oct.as_bytes()).unwrap_err().contains("secret_env"));
        assert!(KeySet::from_jwks(b"{}").is_err());
        assert!(KeySet::from_jwks(br#"{"keys":[]}"#).is_err());
        let wrong_alg = ED.replace(r#""kid""#, r#""alg":"RS256","kid""#);
        assert!(KeySet::from_jwks(wrong_alg.as_bytes()).is_err());
    }

    #[test]
    fn short_secrets_are_refused() {
        assert!(KeySet::from_secret(&[7; 31]).is_err());
        let set = KeySet::from_secret(&[7; 32]).unwrap();
        assert!(set.find(None).unwrap().fits(Algorithm::HS256));
        assert!(!set.find(None).unwrap().fits(Algorithm::RS256));
    }
}
