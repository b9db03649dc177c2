//! rustls configuration: one explicit crypto provider (aws-lc-rs), TLS 1.2 and
//! 1.3 with AEAD suites only, certificate loading and checking.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ServerSessionMemoryCache, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::config::TlsFiles;

/// A certificate or key problem, naming the file (and, for the listener, the field).
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    /// A problem in one field of `[listen.tls]`, e.g. `listen.tls.key`.
    #[error("{field}: {source}")]
    Field { field: &'static str, source: Box<TlsError> },
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
}

/// The `[listen.tls]` fields, as `check` and reload errors name them.
pub const CERT: &str = "listen.tls.cert";
pub const KEY: &str = "listen.tls.key";
pub const CLIENT_CA: &str = "listen.tls.client_ca";

fn file_error(path: &Path, message: impl Into<String>) -> TlsError {
    TlsError::File { path: path.to_path_buf(), message: message.into() }
}

fn at(field: &'static str) -> impl Fn(TlsError) -> TlsError {
    move |e| TlsError::Field { field, source: Box::new(e) }
}

/// The one crypto provider: aws-lc-rs, every suite of which is AEAD (GCM or
/// ChaCha20-Poly1305), with the AES-128-GCM suites first. aws-lc-rs lists
/// AES-256-GCM-SHA384 first, whose SHA-384 (HKDF, the transcript, the
/// binders) has no hardware help on x86: 15% of a full handshake's CPU went
/// to it. AES-128 is what Go's TLS server and most CDNs prefer too.
pub fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.cipher_suites.sort_by_key(|s| suite_rank(s.suite()));
    Arc::new(provider)
}

/// The server's preference: AES-128-GCM, then AES-256-GCM, then ChaCha20 (a
/// stable sort, so each group keeps aws-lc-rs's order within it).
fn suite_rank(suite: rustls::CipherSuite) -> u8 {
    use rustls::CipherSuite as S;
    match suite {
        S::TLS13_AES_128_GCM_SHA256
        | S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
        | S::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => 0,
        S::TLS13_AES_256_GCM_SHA384
        | S::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
        | S::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => 1,
        _ => 2,
    }
}

/// Make `provider()` the process default, for the TLS clients built inside
/// other crates (the Redis client's `rediss://`). rustls picks a default by
/// itself only while exactly one provider is compiled in; a second one
/// arriving through any dependency would otherwise panic on first use.
pub fn install_process_default() {
    // Err means a default is installed already (a second `start` in one process).
    let _ = CryptoProvider::install_default(rustls::crypto::aws_lc_rs::default_provider());
}

/// Every certificate in a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(path, format!("cannot read certificates: {e}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, format!("malformed PEM: {e}")))?;
    if certs.is_empty() {
        return Err(file_error(path, "holds no PEM certificate"));
    }
    Ok(certs)
}

/// The private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| file_error(path, format!("no usable private key: {e}")))
}

/// How many TLS 1.2 sessions the server keeps for callers that resume by
/// session ID rather than by ticket (a few hundred bytes each, oldest dropped first).
pub const SESSION_CACHE_SIZE: usize = 10_000;

/// The listener's server configuration: ALPN `h2` then `http/1.1`, the server's
/// suite order, and client certificates required when `client_ca` is set.
/// Returning callers resume: TLS 1.3 tickets and TLS 1.2 tickets under keys
/// that rotate every 6 hours (a ticket lives at most 12), and a bounded TLS 1.2
/// session cache. `previous` is the listener's configuration before a reload
/// with its files: its ticket keys and sessions are kept, see [`sessions_from`].
pub fn server_config(
    files: &TlsFiles,
    previous: Option<(&TlsFiles, &ServerConfig)>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = load_certs(&files.cert).map_err(at(CERT))?;
    if let Some(problem) = certs.first().and_then(expiry_problem) {
        // Still served, like nginx does: refusing to start helps no caller. `check` fails on it.
        tracing::warn!(target: "keygate::audit", file = %files.cert.display(), problem, "listen.tls.cert: callers will refuse this certificate");
    }
    let key = load_key(&files.key).map_err(at(KEY))?;
    let verifier = files.client_ca.as_deref().map(client_verifier).transpose().map_err(at(CLIENT_CA))?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = match verifier {
        None => builder.with_no_client_auth(),
        Some(verifier) => builder.with_client_cert_verifier(verifier),
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| pair_error(files, e))?;
    config.ignore_client_order = true;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    match sessions_from(files, previous) {
        Some(kept) => {
            config.ticketer = kept.ticketer.clone();
            config.session_storage = kept.session_storage.clone();
        }
        None => {
            config.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()?;
            config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE_SIZE);
        }
    }
    Ok(Arc::new(config))
}

/// The configuration whose ticket keys and session cache a reload keeps, so
/// callers go on resuming: the previous one, unless client certificates are
/// (or were) required. A resumed session carries the client certificate
/// verified when it began, so with `client_ca` every reload starts fresh
/// sessions and a changed CA applies to every connection after it.
fn sessions_from<'a>(files: &TlsFiles, previous: Option<(&TlsFiles, &'a ServerConfig)>) -> Option<&'a ServerConfig> {
    let (before, config) = previous?;
    (files.client_ca.is_none() && before.client_ca.is_none()).then_some(config)
}

fn client_verifier(ca: &Path) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let roots = Arc::new(root_store(ca)?);
    WebPkiClientVerifier::builder_with_provider(roots, provider())
        .build()
        .map_err(|e| file_error(ca, format!("unusable client CA: {e}")))
}

/// A certificate and key that rustls refused together: blame the key file,
/// and say whether it is unusable or belongs to another certificate.
fn pair_error(files: &TlsFiles, e: rustls::Error) -> TlsError {
    let message = match e {
        rustls::Error::InconsistentKeys(_) => {
            format!("does not match the certificate in {}", files.cert.display())
        }
        other => format!("unusable private key: {other}"),
    };
    at(KEY)(file_error(&files.key, message))
}

fn root_store(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|e| file_error(path, format!("unusable CA certificate: {e}")))?;
    }
    Ok(roots)
}

/// A client configuration for https upstreams: the system roots, or `ca` alone.
pub fn client_config(ca: Option<&Path>) -> Result<ClientConfig, TlsError> {
    let roots = match ca {
        Some(ca) => root_store(ca)?,
        None => {
            let mut roots = RootCertStore::empty();
            for cert in rustls_native_certs::load_native_certs().certs {
                // A bad system root is skipped rather than disabling https.
                let _ = roots.add(cert);
            }
            roots
        }
    };
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

/// Everything wrong with the listener's files, each naming its field: what
/// loading refuses, plus what it accepts but `check` should not (an expired
/// certificate, a client CA that is not a CA). Every field is checked, so one
/// bad file does not hide another.
pub fn inspect(files: &TlsFiles) -> Vec<TlsError> {
    let mut problems = Vec::new();
    let certs = load_certs(&files.cert).map_err(at(CERT));
    let key = load_key(&files.key).map_err(at(KEY));
    match (certs, key) {
        (Ok(certs), Ok(key)) => {
            if let Some(msg) = certs.first().and_then(expiry_problem) {
                problems.push(at(CERT)(file_error(&files.cert, msg)));
            }
            if let Err(e) = CertifiedKey::from_der(certs, key, &provider()) {
                problems.push(pair_error(files, e));
            }
        }
        (certs, key) => problems.extend(certs.err().into_iter().chain(key.err())),
    }
    if let Some(ca) = &files.client_ca {
        if let Some(e) = client_ca_problem(ca) {
            problems.push(at(CLIENT_CA)(e));
        }
    }
    problems
}

fn client_ca_problem(ca: &Path) -> Option<TlsError> {
    if let Err(e) = client_verifier(ca) {
        return Some(e);
    }
    let certs = load_certs(ca).ok()?;
    let leaf = certs.iter().find(|c| !is_ca(c))?;
    let name = subject_of(leaf).into_iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", ");
    Some(file_error(ca, format!("\"{name}\" is not a CA certificate (basicConstraints CA:TRUE missing)")))
}

fn expiry_problem(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let validity = parsed.validity();
    let now = x509_parser::time::ASN1Time::now();
    if validity.not_after < now {
        return Some(format!("certificate expired on {}", rfc3339(validity.not_after)));
    }
    if validity.not_before > now {
        return Some(format!("certificate is not valid before {}", rfc3339(validity.not_before)));
    }
    None
}

fn rfc3339(t: x509_parser::time::ASN1Time) -> String {
    let format = time::format_description::well_known::Rfc3339;
    t.to_datetime().format(&format).unwrap_or_else(|_| t.to_string())
}

fn is_ca(cert: &CertificateDer<'_>) -> bool {
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert.as_ref()) else {
        return false;
    };
    matches!(parsed.basic_constraints(), Ok(Some(bc)) if bc.value.ca)
}

/// The subject of a peer certificate as `(attribute, value)` pairs, e.g.
/// `("CN", "billing")`, every attribute of every RDN (a multi-valued RDN
/// gives several). An attribute without a short name keeps its dotted OID,
/// and a value that is not a string reads `#` (never equal to a pattern's
/// value), so nothing in the subject is silently left out of a match.
pub fn subject_of(cert: &CertificateDer<'_>) -> Vec<(String, String)> {
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert.as_ref()) else {
        return Vec::new();
    };
    let registry = x509_parser::objects::oid_registry();
    parsed
        .subject()
        .iter_attributes()
        .map(|attr| {
            let name = x509_parser::objects::oid2abbrev(attr.attr_type(), registry)
                .map_or_else(|_| attr.attr_type().to_id_string(), str::to_string);
            (name, attr.as_str().map_or_else(|_| "#".to_string(), str::to_string))
        })
        .collect()
}

/// The `K=V` parts of a `tls_subjects` entry, trimmed; `None` when one is
/// not `K=V` with both sides non-empty, or when an attribute is named twice.
pub fn subject_pattern(pattern: &str) -> Option<Vec<(&str, &str)>> {
    let mut parts: Vec<(&str, &str)> = Vec::new();
    for part in pattern.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').map(|(k, v)| (k.trim(), v.trim()))?;
        if k.is_empty() || v.is_empty() || parts.iter().any(|(seen, _)| seen.eq_ignore_ascii_case(k)) {
            return None;
        }
        parts.push((k, v));
    }
    (!parts.is_empty()).then_some(parts)
}

/// Whether `subject` is exactly `pattern` (e.g. `"CN=billing, O=Acme"`), in
/// any order: each named attribute occurs once in the subject with that
/// value, and the subject holds no other attribute. So one certificate
/// matches one binding at most, and a subject that repeats an attribute
/// (`CN=reporting, CN=billing`, or a multi-valued RDN) matches no binding
/// that names it.
pub fn subject_matches(subject: &[(String, String)], pattern: &str) -> bool {
    // Parsed on the fly, twice, rather than into a Vec: this runs per request.
    let parts = || {
        pattern.split(',').map(str::trim).filter(|p| !p.is_empty()).map(|p| {
            p.split_once('=').map(|(k, v)| (k.trim(), v.trim())).filter(|(k, v)| !k.is_empty() && !v.is_empty())
        })
    };
    let once_with_value = |(k, v): (&str, &str)| {
        let mut same = subject.iter().filter(|(sk, _)| sk.eq_ignore_ascii_case(k));
        matches!((same.next(), same.next()), (Some((_, sv)), None) if sv == v)
    };
    let mut any = false;
    for part in parts() {
        match part {
            Some(kv) if once_with_value(kv) => any = true,
            _ => return false,
        }
    }
    let named = |sk: &str| parts().flatten().any(|(k, _)| k.eq_ignore_ascii_case(sk));
    any && subject.iter().all(|(sk, _)| named(sk))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn a_subject_matches_only_the_pattern_equal_to_it() {
        let billing_acme = pairs(&[("CN", "billing"), ("O", "Acme")]);
        type Pairs<'a> = &'a [(&'a str, &'a str)];
        let cases: &[(Pairs<'_>, &str, bool)] = &[
            (&[("CN", "billing")], "CN=billing", true),
            (&[("CN", "billing")], "cn = billing", true),
            (&[("CN", "billing")], "CN=Billing", false),
            (&[("CN", "billing")], "CN=orders", false),
            (&[("CN", "billing")], "", false),
            (&[("CN", "billing")], "CN=billing, O=Acme", false),
            (&[("CN", "billing"), ("O", "Acme")], "O=Acme, CN=billing", true),
            (&[("CN", "billing"), ("O", "Acme")], "CN=billing", false),
            // Repeated attribute, or a multi-valued RDN (flattened the same way).
            (&[("CN", "reporting"), ("CN", "billing")], "CN=billing", false),
            (&[("CN", "reporting"), ("CN", "billing")], "CN=reporting", false),
            (&[("CN", "reporting"), ("CN", "billing")], "CN=reporting, CN=billing", false),
            (&[("CN", "billing"), ("CN", "billing")], "CN=billing", false),
            // An attribute without a short name, or a value that is not a string.
            (&[("CN", "billing"), ("1.2.3.4", "x")], "CN=billing", false),
            (&[("CN", "#")], "CN=#", true),
            // The same pair twice is the same binding (`check` refuses it anyway).
            (&[("CN", "billing")], "CN=billing, CN=billing", true),
            (&[("CN", "")], "CN=", false),
            (&[("CN", "billing")], "CN", false),
        ];
        for (subject, pattern, want) in cases {
            assert_eq!(subject_matches(&pairs(subject), pattern), *want, "{subject:?} against {pattern:?}");
        }
        assert!(subject_matches(&billing_acme, "CN=billing,O=Acme"));
    }

    #[test]
    fn a_reload_keeps_sessions_only_without_client_certificates_before_and_after() {
        let files =
            |ca: Option<&str>| TlsFiles { cert: "c.pem".into(), key: "k.pem".into(), client_ca: ca.map(PathBuf::from) };
        let issued = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("certificate");
        let key = PrivateKeyDer::Pkcs8(issued.key_pair.serialize_der().into());
        let config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(vec![issued.cert.der().clone()], key)
            .expect("config");
        // (client_ca before the reload, after it, sessions kept)
        let cases = [
            (None, None, true),
            (Some("ca.pem"), None, false),
            (None, Some("ca.pem"), false),
            (Some("ca.pem"), Some("ca.pem"), false),
        ];
        for (before, after, kept) in cases {
            let previous = Some((&files(before), &config));
            assert_eq!(sessions_from(&files(after), previous).is_some(), kept, "{before:?} -> {after:?}");
        }
        assert!(sessions_from(&files(None), None).is_none(), "no previous configuration");
    }

    #[test]
    fn one_subject_never_matches_two_distinct_patterns() {
        let subjects = [
            pairs(&[("CN", "a")]),
            pairs(&[("CN", "a"), ("CN", "b")]),
            pairs(&[("CN", "a"), ("O", "x")]),
            pairs(&[("CN", "b"), ("O", "x"), ("OU", "y")]),
        ];
        let patterns = ["CN=a", "CN=b", "CN=a, O=x", "O=x, CN=b", "CN=b, O=x, OU=y", "O=x", "CN=a, CN=b"];
        for s in &subjects {
            let hits: Vec<_> = patterns.iter().filter(|p| subject_matches(s, p)).collect();
            assert!(hits.len() <= 1, "{s:?} matched {hits:?}");
        }
    }
}
