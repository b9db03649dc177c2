//! `keygate hash`: a key from standard input (never argv) to its hash.

use std::io::Read;

use super::{OK, RUNTIME, USAGE};
use crate::keys;

/// Read one key from stdin; one trailing newline is ignored.
pub fn run() -> u8 {
    let mut input = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut input) {
        eprintln!("error: cannot read standard input: {e}");
        return RUNTIME;
    }
    let key = strip_newline(&input);
    if key.is_empty() {
        eprintln!("error: no key on standard input (try: echo \"$KEY\" | keygate hash)");
        return USAGE;
    }
    println!("{}", keys::format_hash(&keys::digest(key)));
    OK
}

/// The input without one trailing `\n` or `\r\n`.
pub fn strip_newline(input: &[u8]) -> &[u8] {
    let input = input.strip_suffix(b"\n").unwrap_or(input);
    input.strip_suffix(b"\r").unwrap_or(input)
}
