//! Content negotiation for `/metrics`, and the classic Prometheus text
//! format (0.0.4) made from the OpenMetrics text prometheus-client writes.
//!
//! The two differ in what matters to a classic parser: a counter family is
//! named with its `_total` suffix in `# HELP`/`# TYPE` (OpenMetrics names the
//! family without it; an `info` family likewise takes `_info`), there is no
//! `# EOF` and no `# UNIT`, `info` and `stateset` families are gauges, and
//! `# HELP` escapes only `\` and newline. prometheus-client writes no
//! exemplars for keygate's metrics (none are registered with them).

use std::collections::HashSet;

/// The content type of the OpenMetrics body.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The content type of the classic body.
pub const CLASSIC: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether an `Accept` header prefers OpenMetrics: it names
/// `application/openmetrics-text` with a quality above zero and at least that
/// of any text type it accepts. No header, `*/*` or `text/plain`: classic.
pub fn wants_openmetrics(accept: &str) -> bool {
    let (mut openmetrics, mut text) = (0.0_f32, 0.0_f32);
    for range in accept.split(',') {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or_default().trim();
        let q = parts
            .filter_map(|p| p.split_once('='))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
            .map_or(1.0, |(_, v)| v.trim().parse::<f32>().unwrap_or(0.0));
        if media.eq_ignore_ascii_case("application/openmetrics-text") {
            openmetrics = openmetrics.max(q);
        } else if ["text/plain", "text/*", "*/*"].iter().any(|m| media.eq_ignore_ascii_case(m)) {
            text = text.max(q);
        }
    }
    openmetrics > 0.0 && openmetrics >= text
}

/// The classic text format of an OpenMetrics `body`.
pub fn from_openmetrics(body: &str) -> String {
    let counters: HashSet<&str> = families(body, " counter", "_total");
    let infos: HashSet<&str> = families(body, " info", "_info");
    let mut out = String::with_capacity(body.len() + counters.len() * 12);
    for line in body.lines() {
        match line.strip_prefix("# ").map(|rest| rest.split_once(' ')) {
            None if is_created(line, &counters) => continue,
            None => out.push_str(line),
            Some(Some(("HELP", rest))) => push_help(rest, &counters, &infos, &mut out),
            Some(Some(("TYPE", rest))) => push_type(rest, &counters, &infos, &mut out),
            // `# EOF`, `# UNIT` and anything else a classic parser does not know.
            Some(_) => continue,
        }
        out.push('\n');
    }
    out
}

/// The families of type `kind` whose samples carry `suffix` (those named
/// with it already need no renaming).
fn families<'a>(body: &'a str, kind: &str, suffix: &str) -> HashSet<&'a str> {
    body.lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(kind))
        .filter(|name| !name.ends_with(suffix))
        .collect()
}

/// A family's name as a classic parser expects it: its samples' name.
fn family<'a>(name: &'a str, counters: &HashSet<&str>, infos: &HashSet<&str>) -> (&'a str, &'static str) {
    let suffix = match (counters.contains(name), infos.contains(name)) {
        (true, _) => "_total",
        (false, true) => "_info",
        (false, false) => "",
    };
    (name, suffix)
}

fn push_help(rest: &str, counters: &HashSet<&str>, infos: &HashSet<&str>, out: &mut String) {
    let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
    let (name, suffix) = family(name, counters, infos);
    out.push_str("# HELP ");
    out.push_str(name);
    out.push_str(suffix);
    out.push(' ');
    // OpenMetrics also escapes `"`; classic HELP text does not.
    out.push_str(&help.replace("\\\"", "\""));
}

fn push_type(rest: &str, counters: &HashSet<&str>, infos: &HashSet<&str>, out: &mut String) {
    let (name, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
    let (name, suffix) = family(name, counters, infos);
    let kind = match kind {
        "info" | "stateset" => "gauge",
        "gaugehistogram" => "histogram",
        "unknown" => "untyped",
        other => other,
    };
    out.push_str("# TYPE ");
    out.push_str(name);
    out.push_str(suffix);
    out.push(' ');
    out.push_str(kind);
}

/// A counter's `_created` sample, which classic parsers do not know.
fn is_created(line: &str, counters: &HashSet<&str>) -> bool {
    let name_end = line.find(['{', ' ']).unwrap_or(line.len());
    let name = line.get(..name_end).unwrap_or(line);
    name.strip_suffix("_created").is_some_and(|f| counters.contains(f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation() {
        let prometheus = "application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2";
        let cases = [
            ("", false),
            ("*/*", false),
            ("text/plain", false),
            ("text/plain;version=0.0.4", false),
            ("application/openmetrics-text", true),
            ("Application/OpenMetrics-Text; version=1.0.0", true),
            (prometheus, true),
            ("application/openmetrics-text;q=0.2, text/plain;q=0.9", false),
            ("application/openmetrics-text;q=0", false),
            ("application/openmetrics-text;q=0.5, */*;q=0.5", true),
            ("application/json", false),
            ("application/openmetrics-textx", false),
        ];
        for (accept, want) in cases {
            assert_eq!(wants_openmetrics(accept), want, "{accept:?}");
        }
    }

    #[test]
    fn counters_get_total_names_and_openmetrics_lines_go() {
        let om = "# HELP keygate_requests Requests by \\\"client\\\".\n\
                  # TYPE keygate_requests counter\n\
                  # UNIT keygate_requests requests\n\
                  keygate_requests_total{client=\"a\",status=\"200\"} 3\n\
                  keygate_requests_created{client=\"a\",status=\"200\"} 1700000000.0\n\
                  # HELP keygate_connections Client connections open.\n\
                  # TYPE keygate_connections gauge\n\
                  keygate_connections 2\n\
                  # HELP keygate_build Build.\n\
                  # TYPE keygate_build info\n\
                  keygate_build_info{version=\"1\"} 1\n\
                  # HELP keygate_d Time.\n\
                  # TYPE keygate_d histogram\n\
                  keygate_d_bucket{le=\"+Inf\"} 1\n\
                  keygate_d_sum 0.5\n\
                  keygate_d_count 1\n\
                  # EOF\n";
        let want = "# HELP keygate_requests_total Requests by \"client\".\n\
                    # TYPE keygate_requests_total counter\n\
                    keygate_requests_total{client=\"a\",status=\"200\"} 3\n\
                    # HELP keygate_connections Client connections open.\n\
                    # TYPE keygate_connections gauge\n\
                    keygate_connections 2\n\
                    # HELP keygate_build_info Build.\n\
                    # TYPE keygate_build_info gauge\n\
                    keygate_build_info{version=\"1\"} 1\n\
                    # HELP keygate_d Time.\n\
                    # TYPE keygate_d histogram\n\
                    keygate_d_bucket{le=\"+Inf\"} 1\n\
                    keygate_d_sum 0.5\n\
                    keygate_d_count 1\n";
        assert_eq!(from_openmetrics(om), want);
    }

    #[test]
    fn label_values_that_look_like_syntax_are_kept() {
        let om = "# TYPE keygate_requests counter\nkeygate_requests_total{route=\"a # {b} # EOF\"} 1\n# EOF\n";
        let classic = from_openmetrics(om);
        assert_eq!(
            classic,
            "# TYPE keygate_requests_total counter\nkeygate_requests_total{route=\"a # {b} # EOF\"} 1\n"
        );
    }
}
