//! `keygate check`: validate as `serve` would, and say what is wrong.

use std::path::PathBuf;

use super::{OK, USAGE};
use crate::config;

/// Print every problem and warning; 0 when valid, 2 when not.
pub fn run(flag: Option<PathBuf>) -> u8 {
    let env = config::process_env();
    let path = config::config_path(flag, &env);
    let config = match config::load(path.as_deref(), &env) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return USAGE;
        }
    };
    let tls_problems = tls_problems(&config, path.as_deref());
    for w in &config.warnings {
        eprintln!("warning: {w}");
    }
    if !tls_problems.is_empty() {
        for p in &tls_problems {
            eprintln!("{p}");
        }
        return USAGE;
    }
    let keys: usize = config.clients.iter().map(|c| c.keys.len()).sum();
    println!(
        "{}: ok ({} clients, {keys} keys, {} routes, {} upstreams)",
        path.as_ref().map_or("environment".into(), |p| p.display().to_string()),
        config.clients.len(),
        config.routes.len(),
        config.upstreams.len()
    );
    OK
}

fn tls_problems(config: &config::Config, path: Option<&std::path::Path>) -> Vec<String> {
    let mut out = Vec::new();
    let prefix = path.map_or(String::new(), |p| format!("{}: ", p.display()));
    if let Some(files) = &config.listen.tls {
        for e in crate::tls::inspect(files) {
            out.push(format!("{prefix}listen.tls: {e}"));
        }
    }
    for u in &config.upstreams {
        if let Err(e) = crate::tls::client_config(u.ca.as_deref()) {
            out.push(format!("{prefix}upstreams.{}.tls.ca: {e}", u.name));
        }
    }
    out
}
