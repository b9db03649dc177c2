//! `keygate check`: validate as `serve` would, and say what is wrong.

use std::path::{Path, PathBuf};

use super::{OK, USAGE};
use crate::config::{self, Origin, Problem};
use crate::tls::{self, TlsError};

/// Print every problem and warning; 0 when valid, 2 when not.
pub fn run(flag: Option<PathBuf>) -> u8 {
    let super::Loaded { config, path, env } = match super::load(flag) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    let tls_problems = tls_problems(&config, path.as_deref(), &env);
    for w in &config.warnings {
        eprintln!("warning: {w}");
    }
    if !tls_problems.is_empty() {
        for p in &tls_problems {
            eprintln!("{p}");
        }
        return USAGE;
    }
    println!("{}: ok ({})", path.as_ref().map_or("environment".into(), |p| p.display().to_string()), config.counts());
    OK
}

/// Certificate problems that loading alone does not catch (or reports without
/// a position), each placed at its field in the file or its variable.
fn tls_problems(config: &config::Config, path: Option<&Path>, env: &config::Env) -> Vec<Problem> {
    let text = path.and_then(|p| std::fs::read_to_string(p).ok());
    let locate = |keys: &[&str]| match (path, &text) {
        (Some(path), Some(text)) => position(path, text, keys),
        _ => Origin::None,
    };
    let mut out = Vec::new();
    if let Some(files) = &config.listen.tls {
        for e in tls::inspect(files) {
            let (field, message) = match e {
                TlsError::Field { field, source } => (field, source.to_string()),
                other => ("listen.tls", other.to_string()),
            };
            let origin = match env_override(field, env) {
                Some(var) => Origin::Env(var.into()),
                None => locate(&field.split('.').collect::<Vec<_>>()),
            };
            out.push(Problem { origin, field: field.into(), message });
        }
    }
    for u in &config.upstreams {
        if let Err(e) = tls::client_config(u.ca.as_deref()) {
            let origin = locate(&["upstreams", &u.name, "tls", "ca"]);
            out.push(Problem { origin, field: format!("upstreams.{}.tls.ca", u.name), message: e.to_string() });
        }
    }
    out
}

/// The variable that replaced a `[listen.tls]` file, if one did.
fn env_override(field: &str, env: &config::Env) -> Option<&'static str> {
    let var = match field {
        tls::CERT => "KEYGATE_TLS_CERT",
        tls::KEY => "KEYGATE_TLS_KEY",
        _ => return None,
    };
    env.get(var).filter(|v| !v.is_empty()).map(|_| var)
}

/// Where the value at `keys` is written in the file (the file alone if not found).
fn position(path: &Path, text: &str, keys: &[&str]) -> Origin {
    let span = toml_edit::ImDocument::parse(text).ok().and_then(|doc| {
        let mut item = doc.as_item();
        for key in keys {
            item = item.as_table_like()?.get(key)?;
        }
        item.span()
    });
    match span {
        Some(span) => config::error::Source { path, text }.origin(span),
        None => Origin::File { path: path.to_path_buf(), line: 1, col: 1 },
    }
}
