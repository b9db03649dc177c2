//! `keygate jwt`: one token from standard input, its header and claims
//! (never the signature), and the verdict against the configuration: the
//! issuer and client it maps to, or the check that failed.

use std::io::Read;
use std::path::PathBuf;

use base64::Engine;

use crate::jwt::{verify, Verifier};
use crate::state::Snapshot;

/// `keygate jwt` arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Configuration file (default: $KEYGATE_CONFIG).
    #[arg(short, long)]
    pub config: Option<PathBuf>,
}

/// Print the token and the verdict; 0 valid, 1 invalid, 2 configuration error.
pub fn run(args: Args) -> u8 {
    let super::Loaded { config, .. } = match super::load(args.config) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    if config.jwt.is_empty() {
        eprintln!("error: the configuration has no [[jwt]] issuer");
        return super::USAGE;
    }
    let mut input = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut input) {
        eprintln!("error: cannot read the token: {e}");
        return super::USAGE;
    }
    let rt = match super::runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return super::USAGE;
        }
    };
    let (lines, valid) = rt
        .block_on(async {
            let snap = Snapshot::build(config, None).map_err(|e| e.to_string())?;
            let verifier = snap.jwt.as_ref().ok_or("no [[jwt]] issuer")?;
            for remote in verifier.issuers.iter().filter_map(|i| i.remote()) {
                remote.fetch_now().await;
            }
            Ok::<_, String>(report(verifier, token(&input), crate::keys::unix_now()))
        })
        .unwrap_or_else(|e| (vec![format!("error: {e}")], false));
    for line in lines {
        println!("{line}");
    }
    if valid {
        super::OK
    } else {
        super::RUNTIME
    }
}

/// The token in the input: surrounding whitespace and a `Bearer ` prefix dropped.
pub fn token(input: &str) -> &str {
    let t = input.trim();
    match t.get(..7) {
        Some(p) if p.eq_ignore_ascii_case("bearer ") => t.get(7..).unwrap_or("").trim(),
        _ => t,
    }
}

/// The report's lines and whether the token is valid for a configured client.
pub fn report(verifier: &Verifier, token: &str, now: i64) -> (Vec<String>, bool) {
    if !verify::looks_like_jwt(token.as_bytes()) {
        return (vec!["verdict  invalid: not a JWT (three base64url parts, the first a JSON header)".into()], false);
    }
    let mut parts = token.split('.');
    let mut lines = vec![format!("header   {}", part(parts.next())), format!("claims   {}", part(parts.next()))];
    let valid = match verifier.check(token, now) {
        Err(check) => {
            lines.push(format!("verdict  invalid: {}", check.message()));
            false
        }
        Ok((index, claims)) => match verifier.grant(index, &claims) {
            Some(g) => {
                let issuer = verifier.issuers.get(index).map_or("", |i| i.config.issuer.as_str());
                let client = verifier.client_name(g.client).unwrap_or("?");
                lines
                    .push(format!("verdict  valid: issuer {issuer}, client {client}, scopes [{}]", g.scopes.join(" ")));
                true
            }
            None => {
                lines.push("verdict  invalid: a valid token naming no configured client (403 forbidden)".into());
                false
            }
        },
    };
    (lines, valid)
}

/// One base64url part as compact JSON (or a note when it is not JSON).
fn part(p: Option<&str>) -> String {
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(p.unwrap_or(""))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok());
    json.map_or("(not JSON)".into(), |v| v.to_string())
}
