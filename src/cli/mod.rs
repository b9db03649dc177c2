//! The commands besides the proxy itself, and the `serve` entry point.

pub mod check;
pub mod demo;
pub mod explain;
pub mod hash;
pub mod healthcheck;
pub mod jwt;
pub mod keygen;
pub mod routes;

use std::path::PathBuf;

use crate::config;

/// Exit code: success.
pub const OK: u8 = 0;
/// Exit code: failure at run time.
pub const RUNTIME: u8 = 1;
/// Exit code: bad usage or configuration.
pub const USAGE: u8 = 2;

/// The runtime: multi-threaded, or single-threaded when the process may use
/// only one CPU (e.g. pinned with `taskset` or a one-CPU container), where
/// the work-stealing machinery only costs time.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    match cpus {
        1 => tokio::runtime::Builder::new_current_thread().enable_all().build(),
        _ => tokio::runtime::Builder::new_multi_thread().enable_all().build(),
    }
}

/// What to say when neither a file nor a `KEYGATE_*` variable gives a configuration.
const NO_CONFIG: &str = "error: no configuration given. Give one of:
  keygate serve -c keygate.toml                  (or KEYGATE_CONFIG=keygate.toml)
  KEYGATE_UPSTREAM=http://127.0.0.1:8080 KEYGATE_KEY_BILLING=<key> keygate serve
`keygate keygen --client billing` makes a key; `keygate demo` runs a ready-made try-out.";

/// A configuration loaded as `serve` loads it, with its path and environment.
pub struct Loaded {
    pub config: config::Config,
    pub path: Option<PathBuf>,
    pub env: config::Env,
}

/// Load the configuration named by `-c` or `$KEYGATE_CONFIG`; print the
/// problems and give the usage exit code when it is invalid.
pub fn load(flag: Option<PathBuf>) -> Result<Loaded, u8> {
    let env = config::process_env();
    let path = config::config_path(flag, &env);
    if path.is_none() && !env.keys().any(|k| k.starts_with("KEYGATE_")) {
        eprintln!("{NO_CONFIG}");
        return Err(USAGE);
    }
    match config::load(path.as_deref(), &env) {
        Ok(config) => Ok(Loaded { config, path, env }),
        Err(e) => {
            eprintln!("{e}");
            Err(USAGE)
        }
    }
}

/// `keygate serve`.
pub fn serve(flag: Option<PathBuf>) -> u8 {
    let Loaded { config, path, .. } = match load(flag) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return RUNTIME;
        }
    };
    match rt.block_on(crate::app::run(config, path)) {
        Ok(()) => OK,
        Err(e) => {
            eprintln!("error: {e:#}");
            RUNTIME
        }
    }
}
