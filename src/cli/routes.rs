//! `keygate routes`: who can call what — the permission matrix of a
//! configuration, as text for a terminal or JSON/CSV for audits and diffs.
//! Keys are never shown; their count and earliest expiry are.

use std::fmt::Write as _;
use std::path::PathBuf;

use crate::config::{Client, Config, Route};

/// The widest line the text matrix may take before it is transposed.
const WIDTH: usize = 100;

/// The output formats of `keygate routes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
    Csv,
}

/// Print the matrix; 0, or 2 when the configuration is invalid.
pub fn run(flag: Option<PathBuf>, format: Format) -> u8 {
    let super::Loaded { config, .. } = match super::load(flag) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    let out = match format {
        Format::Text => text(&config),
        Format::Json => json(&config),
        Format::Csv => csv(&config),
    };
    print!("{out}");
    super::OK
}

/// Routes in display order: grouped by upstream (in configuration order), then as configured.
fn ordered(config: &Config) -> Vec<(usize, &Route)> {
    let mut routes: Vec<(usize, &Route)> = config.routes.iter().enumerate().collect();
    routes.sort_by_key(|(i, r)| (r.upstream, *i));
    routes
}

fn upstream_name(config: &Config, route: &Route) -> String {
    config.upstreams.get(route.upstream).map_or_else(String::new, |u| u.name.clone())
}

/// The cell for `client` and route `index`: the grant that allows it, or `-`.
fn cell(client: &Client, index: usize, route: &Route) -> &'static str {
    client.grants.grant_for(index, route.upstream).unwrap_or("-")
}

fn methods(route: &Route) -> String {
    match &route.methods {
        None => "any".into(),
        Some(list) => list.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(","),
    }
}

fn rate(client: &Client) -> String {
    format!("{}/s burst {}", client.rate.per_second, client.rate.burst)
}

/// "2 keys, first expiry 2027-01-01T00:00:00Z" — never the keys themselves.
fn keys(client: &Client) -> String {
    let n = client.keys.len();
    let mut s = format!("{n} key{}", if n == 1 { "" } else { "s" });
    if let Some(first) = first_expiry(client) {
        let _ = write!(s, ", first expiry {first}");
    }
    s
}

fn first_expiry(client: &Client) -> Option<String> {
    let unix = client.keys.iter().filter_map(|k| k.expires).min()?;
    let at = time::OffsetDateTime::from_unix_timestamp(unix).ok()?;
    at.format(&time::format_description::well_known::Rfc3339).ok()
}

/// Clients as rows and routes as columns when that fits in [`WIDTH`];
/// otherwise routes as rows and clients as columns.
fn text(config: &Config) -> String {
    let routes = ordered(config);
    let wide = client_rows(config, &routes);
    let table =
        if render(&wide).lines().all(|l| l.chars().count() <= WIDTH) { wide } else { route_rows(config, &routes) };
    let mut out = render(&table);
    out.push('\n');
    let header = ["client", "rate", "keys"].map(String::from).to_vec();
    let rows = config.clients.iter().map(|c| vec![c.id.clone(), rate(c), keys(c)]);
    out.push_str(&render(&std::iter::once(header).chain(rows).collect::<Vec<_>>()));
    out
}

/// Header rows name the upstream and route of each column.
fn client_rows(config: &Config, routes: &[(usize, &Route)]) -> Vec<Vec<String>> {
    let mut upstreams = vec!["upstream".to_string()];
    let mut names = vec!["route \u{2192}".to_string()];
    let mut previous = None;
    for (_, r) in routes {
        let up = upstream_name(config, r);
        upstreams.push(if previous.as_ref() == Some(&up) { String::new() } else { up.clone() });
        previous = Some(up);
        names.push(r.name.clone());
    }
    let mut table = vec![upstreams, names];
    for c in &config.clients {
        let mut row = vec![c.id.clone()];
        row.extend(routes.iter().map(|(i, r)| cell(c, *i, r).to_string()));
        table.push(row);
    }
    table
}

fn route_rows(config: &Config, routes: &[(usize, &Route)]) -> Vec<Vec<String>> {
    let mut header: Vec<String> = ["upstream", "route", "methods", "path"].map(String::from).to_vec();
    header.extend(config.clients.iter().map(|c| c.id.clone()));
    let mut table = vec![header];
    for (i, r) in routes {
        let mut row = vec![upstream_name(config, r), r.name.clone(), methods(r), path(r)];
        row.extend(config.clients.iter().map(|c| cell(c, *i, r).to_string()));
        table.push(row);
    }
    table
}

fn path(route: &Route) -> String {
    match &route.host {
        Some(host) => format!("{host}{}", route.path),
        None => route.path.clone(),
    }
}

/// Columns padded to their widest cell, two spaces apart.
fn render(table: &[Vec<String>]) -> String {
    let columns = table.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| table.iter().filter_map(|row| row.get(i)).map(|c| c.chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in table {
        let mut line = String::new();
        for (cell, width) in row.iter().zip(&widths) {
            let _ = write!(line, "{cell:<width$}  ");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn json(config: &Config) -> String {
    let routes = ordered(config);
    let route_list: Vec<serde_json::Value> = routes
        .iter()
        .map(|(_, r)| {
            serde_json::json!({
                "name": r.name,
                "upstream": upstream_name(config, r),
                "path": r.path,
                "host": r.host,
                "methods": r.methods.as_ref().map(|m| m.iter().map(|m| m.as_str()).collect::<Vec<_>>()),
            })
        })
        .collect();
    let clients: Vec<serde_json::Value> = config
        .clients
        .iter()
        .map(|c| {
            let grants: serde_json::Map<String, serde_json::Value> = routes
                .iter()
                .map(|(i, r)| {
                    (r.name.clone(), c.grants.grant_for(*i, r.upstream).map_or(serde_json::Value::Null, Into::into))
                })
                .collect();
            serde_json::json!({
                "id": c.id,
                "rate": { "per_second": c.rate.per_second, "burst": c.rate.burst },
                "keys": c.keys.len(),
                "first_expiry": first_expiry(c),
                "routes": grants,
            })
        })
        .collect();
    let doc = serde_json::json!({ "routes": route_list, "clients": clients });
    let mut out = serde_json::to_string_pretty(&doc).unwrap_or_default();
    out.push('\n');
    out
}

/// One line per client and route.
fn csv(config: &Config) -> String {
    let mut out = String::from("client,upstream,route,methods,path,host,allowed,grant,per_second,burst,keys\n");
    for c in &config.clients {
        for (i, r) in ordered(config) {
            let grant = c.grants.grant_for(i, r.upstream);
            let fields = [
                c.id.clone(),
                upstream_name(config, r),
                r.name.clone(),
                methods(r),
                r.path.clone(),
                r.host.clone().unwrap_or_default(),
                grant.is_some().to_string(),
                grant.unwrap_or("").to_string(),
                c.rate.per_second.to_string(),
                c.rate.burst.to_string(),
                c.keys.len().to_string(),
            ];
            let line: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
            out.push_str(&line.join(","));
            out.push('\n');
        }
    }
    out
}

/// RFC 4180 quoting, and a leading `'` for text a spreadsheet would run as a formula.
fn csv_field(value: &str) -> String {
    let value = match value.chars().next() {
        Some('=' | '+' | '-' | '@') if value != "-" => format!("'{value}"),
        _ => value.to_string(),
    };
    if value.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_and_defused() {
        assert_eq!(csv_field("GET,HEAD"), "\"GET,HEAD\"");
        assert_eq!(csv_field("=cmd()"), "'=cmd()");
        assert_eq!(csv_field("plain"), "plain");
    }

    #[test]
    fn columns_line_up() {
        let table = vec![vec!["a".to_string(), "bb".into()], vec!["ccc".into(), "d".into()]];
        assert_eq!(render(&table), "a    bb\nccc  d\n");
    }
}
