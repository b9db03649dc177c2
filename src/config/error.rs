//! Configuration errors that name the file, line, column and field.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

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
        ConfigError {
            problems: vec![Problem {
                origin,
                field: field.into(),
                message: message.into(),
            }],
        }
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
        Origin::File {
            path: self.path.to_path_buf(),
            line,
            col,
        }
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

/// The dotted field path of the key written at `offset`, inferred from the
/// table header above it: serde reports unknown fields with a span but no path.
pub fn field_path_at(text: &str, offset: usize) -> String {
    let offset = floor_char_boundary(text, offset.min(text.len()));
    let before = text.get(..offset).unwrap_or("");
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = text.get(line_start..).unwrap_or("");
    let line = line.lines().next().unwrap_or("");
    let key = line
        .split_once('=')
        .map(|(k, _)| k.trim().trim_matches('"').to_string())
        .unwrap_or_default();
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
    fn field_path_numbers_array_tables() {
        let text = "[[routes]]\nname='a'\n[[routes]]\npaht='/'\n";
        let offset = text.find("paht").unwrap_or(0);
        assert_eq!(field_path_at(text, offset), "routes[1].paht");
    }
}
