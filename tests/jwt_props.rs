//! The `jwt_parse` fuzz target's invariant as a property test: a valid
//! token mutated in any way (a character changed, inserted or removed,
//! parts swapped or truncated, arbitrary text) is never accepted.

#[path = "../fuzz/jwt_invariants.rs"]
mod jwt_invariants;

use proptest::prelude::*;

/// The valid token with one edit at `at` (wrapped to its length).
fn edited(at: usize, edit: u8, c: char) -> String {
    let valid = &jwt_invariants::fixture().valid;
    let mut chars: Vec<char> = valid.chars().collect();
    let i = at % chars.len();
    match edit % 4 {
        0 => chars[i] = c,
        1 => chars.insert(i, c),
        2 => drop(chars.remove(i)),
        _ => chars.truncate(i),
    }
    chars.into_iter().collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn an_edited_token_is_never_accepted(at in 0usize..1000, edit in 0u8..4, c in prop_oneof![
        Just('.'), Just('A'), Just('a'), Just('_'), Just('-'), Just('='), Just(' '), any::<char>()
    ]) {
        jwt_invariants::check_token(edited(at, edit, c).as_bytes());
    }

    #[test]
    fn reordered_parts_are_never_accepted(order in Just(vec![0usize, 1, 2]).prop_shuffle(), keep in 1usize..4) {
        let valid = &jwt_invariants::fixture().valid;
        let parts: Vec<&str> = valid.split('.').collect();
        let text: Vec<&str> = order.iter().take(keep).map(|i| parts[*i]).collect();
        jwt_invariants::check_token(text.join(".").as_bytes());
    }

    #[test]
    fn arbitrary_text_is_never_accepted(text in "[A-Za-z0-9_.=-]{0,200}") {
        jwt_invariants::check_token(text.as_bytes());
    }
}

#[test]
fn the_fixture_token_is_accepted() {
    let f = jwt_invariants::fixture();
    assert!(f.verifier.check(&f.valid, f.now).is_ok());
}
