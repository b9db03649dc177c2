#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use keygate::cli;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A TLS-terminating reverse proxy that authenticates server-to-server calls with API keys.
#[derive(Parser)]
#[command(
    name = "keygate",
    version,
    after_help = "Examples:\n  keygate demo\n  keygate serve -c keygate.toml\n  KEYGATE_UPSTREAM=http://127.0.0.1:8080 KEYGATE_KEY_BILLING=... keygate serve"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    #[command(after_help = "Example:\n  keygate serve -c /etc/keygate/keygate.toml")]
    Serve {
        /// Configuration file (default: $KEYGATE_CONFIG; none: environment only).
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Validate the configuration exactly as `serve` would load it.
    #[command(after_help = "Example:\n  keygate check -c keygate.toml && echo valid")]
    Check {
        /// Configuration file (default: $KEYGATE_CONFIG).
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Print a new key, its hash and a TOML snippet.
    #[command(
        after_help = "Examples:\n  keygate keygen --client billing\n  keygate keygen --client billing --format token --add-to keygate.toml --retire-after 7d"
    )]
    Keygen(cli::keygen::Args),
    /// Read a key from standard input and print its hash.
    #[command(after_help = "Example:\n  echo \"$KEY\" | keygate hash")]
    Hash,
    /// Show who can call what: clients × routes, with the grant behind each cell.
    #[command(
        after_help = "Examples:\n  keygate routes -c keygate.toml\n  keygate routes -c keygate.toml --format csv > permissions.csv"
    )]
    Routes {
        /// Configuration file (default: $KEYGATE_CONFIG).
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: cli::routes::Format,
    },
    /// Say what the proxy would answer to one request, step by step, sending nothing.
    #[command(
        after_help = "Examples:\n  keygate explain -c keygate.toml --client billing GET /orders/7\n  keygate explain -c keygate.toml --client billing DELETE 'http://orders.internal/admin;x'\n  keygate explain -c keygate.toml --key-from-stdin GET /orders/7 < billing.key"
    )]
    Explain(cli::explain::Args),
    /// Try keygate: an echo upstream, a key and a certificate, all on loopback.
    #[command(after_help = "Example:\n  keygate demo")]
    Demo,
    /// Exit 0 when keygate's admin /healthz answers (for container health checks).
    #[command(
        after_help = "Examples:\n  keygate healthcheck                      # KEYGATE_ADMIN, else [admin] of $KEYGATE_CONFIG\n  keygate healthcheck -c keygate.toml\n  keygate healthcheck http://127.0.0.1:9901/healthz"
    )]
    Healthcheck {
        /// The URL to probe (default: /healthz on the admin address `serve` would use).
        url: Option<String>,
        /// Configuration file whose [admin] address to probe (default: $KEYGATE_CONFIG).
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Read a token on standard input: its header, claims and verdict against the configuration.
    #[command(
        after_help = "Example:\n  keygate jwt -c keygate.toml < token.txt   # exit 0 valid, 1 invalid, 2 configuration error"
    )]
    Jwt(cli::jwt::Args),
}

fn main() -> ExitCode {
    let args = Cli::parse();
    keygate::telemetry::init();
    let code = match args.command {
        Command::Serve { config } => cli::serve(config),
        Command::Check { config } => cli::check::run(config),
        Command::Keygen(a) => cli::keygen::run(a),
        Command::Hash => cli::hash::run(),
        Command::Explain(a) => cli::explain::run(a),
        Command::Routes { config, format } => cli::routes::run(config, format),
        Command::Demo => cli::demo::run(),
        Command::Healthcheck { url, config } => cli::healthcheck::run(url.as_deref(), config),
        Command::Jwt(a) => cli::jwt::run(a),
    };
    ExitCode::from(code)
}
