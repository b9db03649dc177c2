//! keygate's upstream HTTP/1.1 response reader (head, framing, chunked
//! body) on any bytes: no panic, and the same result however the bytes are
//! split into reads; and any chunks, chunked and read back, come back whole.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../h1_invariants.rs"]
mod h1_invariants;

fuzz_target!(|data: &[u8]| {
    // The first byte chooses the read size (and the mode), the rest is input.
    let Some((&size, rest)) = data.split_first() else { return };
    let pieces = [usize::from(size % 17) + 1];
    if size & 0x80 == 0 {
        h1_invariants::check_splits(rest, &pieces);
    } else {
        // The rest, cut at 0xff bytes, as the chunks of a chunked body.
        let chunks: Vec<Vec<u8>> = rest.split(|&b| b == 0xff).map(<[u8]>::to_vec).collect();
        h1_invariants::check_chunked(&chunks, size & 0x40 != 0, &pieces);
    }
});
