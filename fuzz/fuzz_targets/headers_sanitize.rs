//! Credential extraction and header sanitising on arbitrary header maps:
//! the key never survives, keygate's own headers never survive.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../invariants.rs"]
mod invariants;

fuzz_target!(|data: &[u8]| invariants::check_headers(data));
