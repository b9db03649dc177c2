//! keygate's upstream HTTP/1.1 response reader (head, framing, chunked
//! body) on any bytes: no panic, and the same result however the bytes are
//! split into reads.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../h1_invariants.rs"]
mod h1_invariants;

fuzz_target!(|data: &[u8]| {
    // The first byte chooses the read size, the rest is the response.
    let Some((&size, response)) = data.split_first() else { return };
    h1_invariants::check_splits(response, &[usize::from(size % 17) + 1]);
});
