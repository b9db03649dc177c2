//! Logging: `KEYGATE_LOG` filters, `KEYGATE_LOG_FORMAT` picks `pretty` or `json`.

use tracing_subscriber::EnvFilter;

/// Install the global subscriber, writing to standard error.
pub fn init() {
    let mut filter = EnvFilter::try_from_env("KEYGATE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // The file watcher's library traces every event in the config folder: with
    // the log written into that folder, each line would log another (a loop).
    if let (false, Ok(quiet)) =
        (std::env::var("KEYGATE_LOG").is_ok_and(|f| f.contains("notify")), "notify=info".parse())
    {
        filter = filter.add_directive(quiet);
    }
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if json() {
        builder.json().flatten_event(true).with_current_span(false).try_init()
    } else {
        builder.with_ansi(false).try_init()
    };
}

/// Whether `KEYGATE_LOG_FORMAT=json`: the logs and the start-up summary are JSON.
pub fn json() -> bool {
    std::env::var("KEYGATE_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"))
}
