//! The `h1_response` fuzz target's invariants as property tests on stable:
//! keygate's upstream HTTP/1.1 reader reads the same response whatever the
//! read boundaries, and chunked bodies read back exactly.

#[path = "../fuzz/h1_invariants.rs"]
mod h1_invariants;

use proptest::prelude::*;

/// Response-like bytes: a plausible head (status, framing headers in many
/// spellings, some broken) and a body that may or may not match it.
fn response() -> impl Strategy<Value = Vec<u8>> {
    let line = prop_oneof![
        Just("content-length: 5\r\n".to_string()),
        Just("Content-Length: 5, 5\r\n".to_string()),
        Just("content-length: 4\r\n".to_string()),
        Just("transfer-encoding: chunked\r\n".to_string()),
        Just("Transfer-Encoding: gzip, chunked\r\n".to_string()),
        Just("connection: close\r\n".to_string()),
        Just("x-a: b\r\n".to_string()),
        Just(" folded\r\n".to_string()),
        "[a-zA-Z0-9:;, \t\r\n-]{0,12}",
    ];
    let status = prop_oneof![Just("200 OK"), Just("100 Continue"), Just("204 No Content"), Just("2x0 OK")];
    let body = prop_oneof![
        Just("hello".to_string()),
        Just("5\r\nhello\r\n0\r\n\r\n".to_string()),
        Just("5;e=1\r\nhel".to_string()),
        "[0-9a-fA-F;= \r\nxyz]{0,24}",
    ];
    (status, prop::collection::vec(line, 0..5), body)
        .prop_map(|(status, lines, body)| format!("HTTP/1.1 {status}\r\n{}\r\n{body}", lines.concat()).into_bytes())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn a_response_reads_the_same_whatever_the_reads(data in response(), pieces in prop::collection::vec(1usize..9, 1..6)) {
        h1_invariants::check_splits(&data, &pieces);
    }

    #[test]
    fn arbitrary_bytes_read_the_same_whatever_the_reads(data in prop::collection::vec(any::<u8>(), 0..200), size in 1usize..9) {
        h1_invariants::check_splits(&data, &[size]);
    }

    #[test]
    fn chunked_bodies_read_back_exactly(
        chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 0..6),
        ext in any::<bool>(),
        pieces in prop::collection::vec(1usize..40, 1..4),
    ) {
        h1_invariants::check_chunked(&chunks, ext, &pieces);
    }
}
