//! API keys: hashing, the `kg_` token format, and the lookup table.
//!
//! Plain keys are never stored: the table maps SHA-256 digests to clients, so
//! a lookup is one hash-map probe on the digest and no plain key is compared.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use sha2::{Digest, Sha256};

/// The SHA-256 digest of a plain key.
pub fn digest(plain: &[u8]) -> [u8; 32] {
    Sha256::digest(plain).into()
}

/// `sha256:<hex>`, as written in the config file.
pub fn format_hash(digest: &[u8; 32]) -> String {
    format!("sha256:{}", hex::encode(digest))
}

/// A short, non-secret prefix of a key's hash for logs and metrics.
pub fn fingerprint(digest: &[u8; 32]) -> String {
    hex::encode(&digest[..4])
}

/// Parse `sha256:<64 hex digits>`.
pub fn parse_hash(s: &str) -> Result<[u8; 32], String> {
    let hex_part =
        s.strip_prefix("sha256:").ok_or_else(|| format!("\"{s}\" must start with \"sha256:\" (see `keygate hash`)"))?;
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_part, &mut out)
        .map_err(|_| format!("\"{s}\" is not sha256: followed by 64 hex digits"))?;
    Ok(out)
}

/// Client ids travel in a header and in metric labels: keep them plain.
pub fn valid_client_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// Key names travel in a header and in metric labels: the same rule as client ids.
pub fn valid_key_name(name: &str) -> bool {
    valid_client_id(name)
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// An RFC 3339 time as Unix seconds.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    Some(t.unix_timestamp())
}

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const TOKEN_PREFIX: &str = "kg_";
/// 43 base62 characters carry 256 bits.
const TOKEN_BODY: usize = 43;
const TOKEN_CHECK: usize = 6;

/// A new `kg_` token: 43 random base62 characters and a 6-character CRC32 checksum.
pub fn new_token() -> Result<String, getrandom::Error> {
    let mut body = String::with_capacity(TOKEN_BODY);
    let mut buf = [0u8; 64];
    while body.len() < TOKEN_BODY {
        getrandom::fill(&mut buf)?;
        // Rejection sampling keeps every character equally likely.
        for b in buf.iter().filter(|b| **b < 248) {
            if body.len() < TOKEN_BODY {
                body.extend(BASE62.get(usize::from(*b % 62)).map(|c| char::from(*c)));
            }
        }
    }
    let check = checksum(&body);
    Ok(format!("{TOKEN_PREFIX}{body}{check}"))
}

fn checksum(body: &str) -> String {
    let mut n = crc32fast::hash(body.as_bytes());
    let mut out = [b'0'; TOKEN_CHECK];
    for slot in out.iter_mut().rev() {
        *slot = BASE62.get((n % 62) as usize).copied().unwrap_or(b'0');
        n /= 62;
    }
    out.iter().map(|b| char::from(*b)).collect()
}

/// Whether a presented key is a `kg_` token with a bad checksum: refused before lookup.
pub fn is_corrupt_token(key: &[u8]) -> bool {
    let Some(rest) = key.strip_prefix(TOKEN_PREFIX.as_bytes()) else {
        return false;
    };
    if rest.len() != TOKEN_BODY + TOKEN_CHECK {
        return true;
    }
    let (body, check) = rest.split_at(TOKEN_BODY);
    match std::str::from_utf8(body) {
        Ok(body) => checksum(body).as_bytes() != check,
        Err(_) => true,
    }
}

/// A new random UUIDv4 key.
pub fn new_uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Hashes a SHA-256 digest by its first eight bytes: they are already uniform.
#[derive(Default)]
pub struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8).take(1) {
            let mut word = [0u8; 8];
            word.iter_mut().zip(chunk).for_each(|(w, b)| *w = *b);
            self.0 ^= u64::from_le_bytes(word);
        }
    }
}

/// One key as the request path needs it.
#[derive(Debug, Clone, Copy)]
pub struct KeyEntry {
    /// Index of the owning client.
    pub client: u32,
    /// Index of the key in the snapshot's key list.
    pub index: u32,
    pub not_before: Option<i64>,
    pub expires: Option<i64>,
}

impl KeyEntry {
    /// Whether the key may be used at `now` (Unix seconds).
    pub fn valid_at(&self, now: i64) -> bool {
        self.not_before.is_none_or(|nb| now >= nb) && self.expires.is_none_or(|ex| now < ex)
    }
}

/// Digest → key entry.
pub type KeyTable = HashMap<[u8; 32], KeyEntry, BuildHasherDefault<DigestHasher>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_round_trips() {
        let d = digest(b"test");
        assert_eq!(parse_hash(&format_hash(&d)), Ok(d));
    }

    #[test]
    fn known_digest() {
        assert_eq!(
            format_hash(&digest(b"test")),
            "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        );
    }

    #[test]
    fn malformed_hashes_are_refused() {
        assert!(parse_hash("9f86d081").is_err());
        assert!(parse_hash("sha256:zz").is_err());
        assert!(parse_hash("sha256:9f86").is_err());
    }

    #[test]
    fn tokens_check_out() {
        let t = new_token().unwrap();
        assert!(t.starts_with("kg_"));
        assert_eq!(t.len(), 3 + TOKEN_BODY + TOKEN_CHECK);
        assert!(!is_corrupt_token(t.as_bytes()));
        let mut broken = t.into_bytes();
        broken[5] = if broken[5] == b'a' { b'b' } else { b'a' };
        assert!(is_corrupt_token(&broken));
    }

    #[test]
    fn plain_keys_are_not_tokens() {
        assert!(!is_corrupt_token(b"3f2b8c1e-0000-4000-8000-000000000000"));
    }

    #[test]
    fn validity_window() {
        let k = KeyEntry { client: 0, index: 0, not_before: Some(10), expires: Some(20) };
        assert!(!k.valid_at(9));
        assert!(k.valid_at(10));
        assert!(!k.valid_at(20));
    }
}
