//! Bearer token parsing and verification on any input: no panic, and no
//! token accepted but the one the fixture signed.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../jwt_invariants.rs"]
mod jwt_invariants;

fuzz_target!(|data: &[u8]| {
    jwt_invariants::check_token(data);
});
