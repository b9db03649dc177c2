//! Configuration errors that name the file, line, column and field.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml_edit::{Item, TableLike, Value};

/// Where a configuration problem was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A position in a file: 1-based line and column.
    File { path: PathBuf, line: usize, col: usize },
    /// An environment variable.
    Env(String),
    /// Nowhere in particular (e.g. a missing setting).
    None,
}

/// One problem with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub origin: Origin,
    /// Dotted field path, e.g. `clients.billing.routes`.
    pub field: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.origin {
            Origin::File { path, line, col } => {
                write!(f, "{}:{line}:{col}: ", path.display())?;
            }
            Origin::Env(var) => write!(f, "{var}: ")?,
            Origin::None => {}
        }
        if self.field.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

/// Every problem found while loading a configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

impl ConfigError {
    /// An error with a single problem.
    pub fn single(origin: Origin, field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError { problems: vec![Problem { origin, field: field.into(), message: message.into() }] }
    }
}

/// The source text of a file, used to turn byte offsets into positions.
#[derive(Debug, Clone)]
pub struct Source<'a> {
    pub path: &'a Path,
    pub text: &'a str,
}

impl Source<'_> {
    /// The origin of a byte span in this file.
    pub fn origin(&self, span: Range<usize>) -> Origin {
        let (line, col) = line_col(self.text, span.start);
        Origin::File { path: self.path.to_path_buf(), line, col }
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = floor_char_boundary(text, offset.min(text.len()));
    let before = text.get(..offset).unwrap_or("");
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
    (line, col)
}

fn floor_char_boundary(text: &str, mut offset: usize) -> usize {
    while offset > 0 && !text.is_char_boundary(offset) {
        offset -= 1;
    }
    offset
}

/// The dotted field path (`clients.billing.keys[1].expires`) of the key or
/// value written at `offset`: serde reports unknown fields and wrong types
/// with a span but no path.
pub fn field_path_at(text: &str, offset: usize) -> String {
    match toml_edit::ImDocument::parse(text) {
        Ok(doc) => in_table(doc.as_table(), offset, "").unwrap_or_default(),
        // Not TOML at all: the table header above is the best guess.
        Err(_) => guess_field_path(text, offset),
    }
}

fn contains(span: Option<Range<usize>>, offset: usize) -> bool {
    span.is_some_and(|s| s.start <= offset && offset < s.end)
}

/// The path of the entry of `table` that holds `offset`, below `path`.
fn in_table(table: &dyn TableLike, offset: usize, path: &str) -> Option<String> {
    table.iter().find_map(|(name, _)| {
        let (key, item) = table.get_key_value(name)?;
        let here = if path.is_empty() { name.to_string() } else { format!("{path}.{name}") };
        if contains(key.span(), offset) {
            return Some(here);
        }
        match item {
            Item::Table(t) => in_header(t, offset, here),
            Item::ArrayOfTables(a) => {
                a.iter().enumerate().find_map(|(i, t)| in_header(t, offset, format!("{here}[{i}]")))
            }
            Item::Value(v) if contains(v.span(), offset) => Some(in_value(v, offset, here)),
            _ => None,
        }
    })
}

/// The path of what holds `offset` in the table, else the table's own path
/// when `offset` is elsewhere in it (a missing field points at its header).
fn in_header(table: &toml_edit::Table, offset: usize, path: String) -> Option<String> {
    in_table(table, offset, &path).or_else(|| contains(table.span(), offset).then_some(path))
}

/// The path of the part of `value` (at `path`) that holds `offset`.
fn in_value(value: &Value, offset: usize, path: String) -> String {
    let inner = match value {
        Value::Array(a) => a
            .iter()
            .enumerate()
            .find(|(_, v)| contains(v.span(), offset))
            .map(|(i, v)| in_value(v, offset, format!("{path}[{i}]"))),
        Value::InlineTable(t) => in_table(t, offset, &path),
        _ => None,
    };
    inner.unwrap_or(path)
}

fn guess_field_path(text: &str, offset: usize) -> String {
    let offset = floor_char_boundary(text, offset.min(text.len()));
    let before = text.get(..offset).unwrap_or("");
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = text.get(line_start..).unwrap_or("");
    let line = line.lines().next().unwrap_or("");
    let key = line.split_once('=').map(|(k, _)| k.trim().trim_matches('"').to_string()).unwrap_or_default();
    let table = table_header_before(before);
    match (table.is_empty(), key.is_empty()) {
        (true, _) => key,
        (false, true) => table,
        (false, false) => format!("{table}.{key}"),
    }
}

fn table_header_before(before: &str) -> String {
    let mut arrays: Vec<(String, usize)> = Vec::new();
    let mut current = String::new();
    for line in before.lines() {
        let line = line.trim();
        if let Some(name) = line.strip_prefix("[[").and_then(|l| l.split("]]").next()) {
            let name = name.trim().to_string();
            let index = arrays.iter().filter(|(n, _)| *n == name).count();
            arrays.push((name.clone(), index));
            current = format!("{name}[{index}]");
        } else if let Some(name) = line.strip_prefix('[').and_then(|l| l.split(']').next()) {
            current = name.trim().to_string();
        }
    }
    current
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_from_one() {
        assert_eq!(line_col("a\nbc", 3), (2, 2));
        assert_eq!(line_col("abc", 0), (1, 1));
    }

    #[test]
    fn field_path_uses_table_header() {
        let text = "[listen]\nadress = \"x\"\n";
        assert_eq!(field_path_at(text, 9), "listen.adress");
    }

    #[test]
    fn field_path_inside_inline_tables_and_arrays() {
        let text = "[clients.billing]\nkeys = [\n  { hash = \"a\" },\n  { hash = \"b\", expirs = \"x\" },\n]\nrate_limit = { brust = 2 }\n";
        let at = |needle: &str| field_path_at(text, text.find(needle).unwrap_or(0));
        assert_eq!(at("expirs"), "clients.billing.keys[1].expirs");
        assert_eq!(at("\"b\""), "clients.billing.keys[1].hash");
        assert_eq!(at("brust"), "clients.billing.rate_limit.brust");
    }

    #[test]
    fn field_path_of_a_table_header() {
        let text = "[[routes]]\nname = \"a\"\n[[routes]]\nname = \"b\"\n[clients.x]\nkeys = []\n";
        assert_eq!(field_path_at(text, text.rfind("[[routes]]").unwrap_or(0)), "routes[1]");
        assert_eq!(field_path_at(text, text.find("[clients").unwrap_or(0)), "clients.x");
    }

    #[test]
    fn field_path_of_a_value() {
        let text = "[listen]\nmax_connections = \"ten\"\n";
        assert_eq!(field_path_at(text, text.find("\"ten").unwrap_or(0)), "listen.max_connections");
    }

    #[test]
    fn field_path_guessed_for_broken_toml() {
        let text = "[listen]\nadress = \"x\"\n[broken\n";
        assert_eq!(field_path_at(text, 9), "listen.adress");
    }

    #[test]
    fn field_path_numbers_array_tables() {
        let text = "[[routes]]\nname='a'\n[[routes]]\npaht='/'\n";
        let offset = text.find("paht").unwrap_or(0);
        assert_eq!(field_path_at(text, offset), "routes[1].paht");
    }
}
