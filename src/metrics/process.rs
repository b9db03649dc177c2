//! `process_*` metrics, read from `/proc` at each scrape (Linux; elsewhere
//! they are left out): CPU seconds, resident memory, open and maximum file
//! descriptors, start time. The names and meanings are those every
//! Prometheus client library exports.

use std::fmt::Write;

/// Clock ticks per second in `/proc/<pid>/stat` (`USER_HZ`: 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// What one scrape read.
#[derive(Debug, Default, PartialEq)]
pub struct Stats {
    pub cpu_seconds: Option<f64>,
    pub resident_bytes: Option<u64>,
    pub open_fds: Option<u64>,
    pub max_fds: Option<u64>,
    pub start_time_seconds: Option<f64>,
}

/// Read this process's statistics (all `None` where `/proc` is missing).
pub fn read() -> Stats {
    let text = |path: &str| std::fs::read_to_string(path).ok();
    let stat = text("/proc/self/stat").and_then(|s| parse_stat(&s));
    let boot = text("/proc/stat").and_then(|s| parse_boot_time(&s));
    Stats {
        cpu_seconds: stat.map(|s| (s.utime + s.stime) as f64 / TICKS_PER_SECOND),
        resident_bytes: text("/proc/self/status").and_then(|s| parse_rss(&s)),
        open_fds: std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count() as u64),
        max_fds: text("/proc/self/limits").and_then(|s| parse_max_fds(&s)),
        start_time_seconds: stat.zip(boot).map(|(s, b)| b as f64 + s.start_ticks as f64 / TICKS_PER_SECOND),
    }
}

/// The fields of `/proc/<pid>/stat` used here, in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stat {
    pub utime: u64,
    pub stime: u64,
    pub start_ticks: u64,
}

/// Fields 14 (utime), 15 (stime) and 22 (starttime) of `/proc/<pid>/stat`.
/// The command name (field 2) may hold spaces and parentheses: fields are
/// counted from after its last `)`, where field 3 starts.
pub fn parse_stat(text: &str) -> Option<Stat> {
    let after = text.get(text.rfind(')')? + 1..)?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(Stat { utime: field(14)?, stime: field(15)?, start_ticks: field(22)? })
}

/// `btime` of `/proc/stat`: when the machine booted (Unix time).
pub fn parse_boot_time(text: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix("btime")?.trim().parse().ok())
}

/// `VmRSS` of `/proc/<pid>/status`, in bytes.
pub fn parse_rss(text: &str) -> Option<u64> {
    let line = text.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().next()?.parse().ok()?;
    kib.checked_mul(1024)
}

/// The soft limit of `Max open files` in `/proc/<pid>/limits`.
pub fn parse_max_fds(text: &str) -> Option<u64> {
    let line = text.lines().find_map(|l| l.strip_prefix("Max open files"))?;
    line.split_whitespace().next()?.parse().ok()
}

/// The statistics in the OpenMetrics text format (no `# EOF`).
pub fn encode(stats: &Stats, out: &mut String) {
    let mut family = |name: &str, kind: &str, help: &str, sample: Option<String>| {
        if let Some(value) = sample {
            let suffix = if kind == "counter" { "_total" } else { "" };
            let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{suffix} {value}\n");
        }
    };
    let s = stats;
    family(
        "process_cpu_seconds",
        "counter",
        "Total user and system CPU time spent in seconds.",
        s.cpu_seconds.map(float),
    );
    family(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes.",
        s.resident_bytes.map(|v| v.to_string()),
    );
    family("process_open_fds", "gauge", "Number of open file descriptors.", s.open_fds.map(|v| v.to_string()));
    family("process_max_fds", "gauge", "Maximum number of open file descriptors.", s.max_fds.map(|v| v.to_string()));
    family(
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since unix epoch in seconds.",
        s.start_time_seconds.map(float),
    );
}

/// A float as both formats read it (always with a decimal point).
fn float(v: f64) -> String {
    format!("{v:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let stat = "1234 (key gate) (x)) S 1 1234 1234 0 -1 4194560 2000 0 0 0 150 25 0 0 20 0 9 0 98765 123456789 2500 18446744073709551615";
        assert_eq!(parse_stat(stat), Some(Stat { utime: 150, stime: 25, start_ticks: 98765 }));
        assert_eq!(parse_stat("1234 (keygate) S 1 2"), None);
        assert_eq!(parse_stat("no parenthesis"), None);
    }

    #[test]
    fn status_limits_and_boot_time() {
        assert_eq!(parse_rss("Name:\tkeygate\nVmRSS:\t   10240 kB\nVmData: 1 kB\n"), Some(10240 * 1024));
        assert_eq!(parse_rss("Name:\tkeygate\n"), None);
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(parse_max_fds(limits), Some(1024));
        assert_eq!(parse_max_fds("Max open files            unlimited            unlimited            files\n"), None);
        assert_eq!(parse_boot_time("cpu  1 2 3\nbtime 1764600000\nprocesses 5\n"), Some(1_764_600_000));
    }

    #[test]
    fn encodes_only_what_was_read() {
        let stats = Stats { cpu_seconds: Some(1.5), open_fds: Some(7), ..Stats::default() };
        let mut out = String::new();
        encode(&stats, &mut out);
        assert!(out.contains("# TYPE process_cpu_seconds counter\nprocess_cpu_seconds_total 1.5\n"), "{out}");
        assert!(out.contains("# TYPE process_open_fds gauge\nprocess_open_fds 7\n"), "{out}");
        assert!(!out.contains("resident"), "{out}");
    }

    #[test]
    fn reads_this_process_on_linux() {
        if !cfg!(target_os = "linux") {
            return;
        }
        let s = read();
        assert!(s.resident_bytes.is_some_and(|b| b > 0), "{s:?}");
        assert!(s.open_fds.is_some_and(|n| n >= 3), "{s:?}");
        assert!(s.max_fds.is_some_and(|n| n >= s.open_fds.unwrap_or(0)), "{s:?}");
        let now = crate::keys::unix_now() as f64;
        assert!(s.start_time_seconds.is_some_and(|t| t <= now + 1.0 && t > now - 86400.0 * 365.0), "{s:?}");
        assert!(s.cpu_seconds.is_some(), "{s:?}");
    }
}
