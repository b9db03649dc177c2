//! Request path normalisation: the path that is routed is the path that is forwarded.
//!
//! Normalising before routing closes the gap where the proxy authorises one
//! spelling of a path and the upstream resolves another (`/public/../admin`,
//! `/%61dmin`, `//admin`). Anything that cannot be given one unambiguous
//! meaning is refused instead of guessed at. Non-ASCII bytes, which hyper
//! admits as UTF-8, are left as they are: routing and forwarding see the same.

use std::borrow::Cow;

/// Why a path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path does not start with `/`.
    #[error("path does not start with '/'")]
    NotOrigin,
    /// A `%` is not followed by two hex digits.
    #[error("malformed percent-escape")]
    BadPercent,
    /// The path contains `%2F`.
    #[error("encoded slash in path")]
    EncodedSlash,
    /// The path contains `%5C`.
    #[error("encoded backslash in path")]
    EncodedBackslash,
    /// The path contains a NUL, literal or `%00`.
    #[error("NUL in path")]
    Nul,
    /// The path contains a literal control character.
    #[error("control character in path")]
    ControlChar,
    /// The path contains a literal backslash.
    #[error("backslash in path")]
    Backslash,
    /// A `..` segment climbs above the root.
    #[error("path climbs above the root")]
    AboveRoot,
    /// A `.` or `..` segment carries `;` parameters, which Tomcat and other
    /// servlet containers strip before resolving dots (`/public/..;/admin`).
    #[error("dot segment with parameters")]
    DotWithParams,
    /// A segment other than `.` and `..` ends in a dot or an encoded space
    /// (also before its `;` parameters), which Windows servers (IIS,
    /// ASP.NET) drop: `/admin.` is `/admin` to them.
    #[error("segment ends in a dot or space")]
    TrailingDot,
    /// A segment made only of `;` parameters before another segment
    /// (`/;x/admin`): servlet containers read it as an empty segment, which
    /// moves their `..` one segment further than keygate's.
    #[error("segment of parameters only")]
    ParamsOnly,
}

/// Normalise the path part (no query) of a request target.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    let rest = path.strip_prefix('/').ok_or(PathError::NotOrigin)?;
    // Validating the whole path up front makes malformed input win over
    // `AboveRoot` regardless of where each problem sits.
    if is_normal(rest)? {
        return Ok(Cow::Borrowed(path));
    }
    rebuild(rest).map(Cow::Owned)
}

/// Validates every segment and reports whether the path is already normal.
fn is_normal(rest: &str) -> Result<bool, PathError> {
    let mut normal = true;
    let mut segments = rest.split('/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        let escapes_normal = write_segment(segment, None)?;
        // With escapes to decode, `rebuild` checks the decoded segment.
        if escapes_normal {
            check_segment(segment, last)?;
        }
        normal &= escapes_normal;
        // Only the final segment may be empty: that is a kept trailing slash.
        normal &= match segment {
            "" => last,
            "." | ".." => false,
            _ => true,
        };
    }
    Ok(normal)
}

/// Builds the normal form: decoded, slashes merged, dot segments resolved.
fn rebuild(rest: &str) -> Result<String, PathError> {
    let mut out = String::with_capacity(rest.len().saturating_add(1));
    // Offset of the '/' that opens each kept segment, so `..` can drop one.
    let mut kept: Vec<usize> = Vec::new();
    let mut segments = rest.split('/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        let start = out.len();
        out.push('/');
        write_segment(segment, Some(&mut out))?;
        // Dot segments are recognised after decoding, so `%2e%2e` is `..`.
        let written = out.get(start..).and_then(|s| s.strip_prefix('/'));
        check_segment(written.unwrap_or_default(), last)?;
        let is_dot_dot = match written {
            Some("" | ".") => false,
            Some("..") => true,
            _ => {
                kept.push(start);
                continue;
            }
        };
        out.truncate(start);
        if is_dot_dot {
            let parent = kept.pop().ok_or(PathError::AboveRoot)?;
            out.truncate(parent);
        }
        // A path ending in a dot segment or a slash names a directory.
        if last {
            out.push('/');
        }
    }
    Ok(out)
}

/// Refuses, in a decoded segment, what other servers read as something
/// else: `.;x`, `..;x` and `..%3Bx` (dot segments to servers that drop path
/// parameters, ordinary names to keygate), `;x` before another segment, and
/// names ending in a dot or space (`admin.`, `admin%20`, `admin.;x`).
fn check_segment(segment: &str, last: bool) -> Result<(), PathError> {
    let name = segment_name(segment);
    if name.len() < segment.len() {
        match name {
            "." | ".." => return Err(PathError::DotWithParams),
            "" if !last => return Err(PathError::ParamsOnly),
            _ => {}
        }
    }
    if matches!(segment, "." | "..") || !(folds_away(segment) || folds_away(name)) {
        return Ok(());
    }
    Err(PathError::TrailingDot)
}

/// Whether Windows would drop the end of `text` (trailing dots and spaces).
fn folds_away(text: &str) -> bool {
    text.ends_with('.') || text.ends_with("%20")
}

/// The part of a segment before its first `;` or `%3B` (path parameters).
pub fn segment_name(segment: &str) -> &str {
    let bytes = segment.as_bytes();
    let end = bytes.iter().enumerate().position(|(i, &b)| {
        b == b';' || (b == b'%' && bytes.get(i + 1..i + 3).is_some_and(|hex| hex.eq_ignore_ascii_case(b"3B")))
    });
    end.and_then(|i| segment.get(..i)).unwrap_or(segment)
}

/// Checks one segment and, given `out`, appends its normal form to it.
///
/// Returns whether the segment's escapes were already normal.
fn write_segment(segment: &str, mut out: Option<&mut String>) -> Result<bool, PathError> {
    let mut normal = true;
    for (i, part) in segment.split('%').enumerate() {
        // Every part but the first directly follows a '%'.
        let text = if i == 0 {
            part
        } else {
            let (tail, escape_normal) = write_escape(part, out.as_deref_mut())?;
            normal &= escape_normal;
            tail
        };
        check_literal(text)?;
        if let Some(out) = out.as_deref_mut() {
            out.push_str(text);
        }
    }
    Ok(normal)
}

/// Handles the escape at the start of `part` (the text after a '%').
///
/// Returns the text after the escape and whether the escape was already normal.
fn write_escape<'a>(part: &'a str, out: Option<&mut String>) -> Result<(&'a str, bool), PathError> {
    let (hex, tail) = part.split_at_checked(2).ok_or(PathError::BadPercent)?;
    let value = parse_hex(hex)?;
    let decode = match value {
        b'/' => return Err(PathError::EncodedSlash),
        b'\\' => return Err(PathError::EncodedBackslash),
        0 => return Err(PathError::Nul),
        _ => is_unreserved(value),
    };
    let upper = !hex.bytes().any(|b| b.is_ascii_lowercase());
    if let Some(out) = out {
        if decode {
            out.push(char::from(value));
        } else {
            out.push('%');
            out.extend(hex.chars().map(|c| c.to_ascii_uppercase()));
        }
    }
    Ok((tail, upper && !decode))
}

/// Parses exactly two hex digits.
fn parse_hex(hex: &str) -> Result<u8, PathError> {
    // `from_str_radix` alone would also accept a sign, as in `%+1`.
    if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(PathError::BadPercent);
    }
    u8::from_str_radix(hex, 16).map_err(|_| PathError::BadPercent)
}

/// Refuses literal bytes that upstreams disagree about.
fn check_literal(text: &str) -> Result<(), PathError> {
    for b in text.bytes() {
        match b {
            0 => return Err(PathError::Nul),
            b'\\' => return Err(PathError::Backslash),
            b if b < 0x20 || b == 0x7F => return Err(PathError::ControlChar),
            _ => {}
        }
    }
    Ok(())
}

/// RFC 3986 unreserved: the escapes that mean the same as their literal.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ok(input: &str) -> String {
        match normalize(input) {
            Ok(out) => out.into_owned(),
            Err(e) => panic!("{input:?} refused: {e}"),
        }
    }

    fn err(input: &str) -> PathError {
        match normalize(input) {
            Ok(out) => panic!("{input:?} accepted as {out:?}"),
            Err(e) => e,
        }
    }

    fn is_borrowed(input: &str) -> bool {
        matches!(normalize(input), Ok(Cow::Borrowed(_)))
    }

    #[test]
    fn already_normal_is_borrowed() {
        for p in ["/", "/api/v1/users", "/a/b/", "/a%2A/b%3F", "/x-y_z~1"] {
            assert!(is_borrowed(p), "{p}");
        }
    }

    #[test]
    fn changed_path_is_owned() {
        assert!(matches!(normalize("/a//b"), Ok(Cow::Owned(_))));
        assert!(matches!(normalize("/%7e"), Ok(Cow::Owned(_))));
    }

    #[test]
    fn decodes_unreserved() {
        assert_eq!(ok("/%41%62%7E%2D%5F%2E%30"), "/Ab~-_.0");
    }

    #[test]
    fn keeps_reserved_escapes_uppercased() {
        assert_eq!(ok("/a%2a%3f%20b"), "/a%2A%3F%20b");
    }

    #[test]
    fn normalises_mixed_case_escapes() {
        assert_eq!(ok("/%aB%Ab%ab%AB"), "/%AB%AB%AB%AB");
        assert_eq!(ok("/%6a%6A"), "/jj");
    }

    #[test]
    fn does_not_decode_twice() {
        assert!(is_borrowed("/%252E%252E/admin"));
        assert_eq!(ok("/%252e"), "/%252e");
    }

    #[test]
    fn refuses_encoded_slash() {
        assert_eq!(err("/a%2Fb"), PathError::EncodedSlash);
        assert_eq!(err("/a%2fb"), PathError::EncodedSlash);
    }

    #[test]
    fn refuses_encoded_backslash() {
        assert_eq!(err("/a%5Cb"), PathError::EncodedBackslash);
        assert_eq!(err("/a%5cb"), PathError::EncodedBackslash);
    }

    #[test]
    fn refuses_encoded_nul() {
        assert_eq!(err("/a%00"), PathError::Nul);
    }

    #[test]
    fn refuses_literal_nul() {
        assert_eq!(err("/a\0b"), PathError::Nul);
    }

    #[test]
    fn refuses_control_chars() {
        for p in ["/a\nb", "/\t", "/a\rb", "/\x1f", "/a\x7F"] {
            assert_eq!(err(p), PathError::ControlChar, "{p:?}");
        }
    }

    #[test]
    fn keeps_encoded_control_chars() {
        assert_eq!(ok("/a%0a"), "/a%0A");
    }

    #[test]
    fn refuses_literal_backslash() {
        assert_eq!(err("/a\\b"), PathError::Backslash);
    }

    #[test]
    fn refuses_bad_percent() {
        for p in ["/%", "/a%2", "/%zz", "/%2G", "/%+1", "/%-1", "/% 1", "/%2\u{e9}"] {
            assert_eq!(err(p), PathError::BadPercent, "{p:?}");
        }
    }

    #[test]
    fn refuses_non_origin() {
        for p in ["", "a/b", "*", "%2Fa"] {
            assert_eq!(err(p), PathError::NotOrigin, "{p:?}");
        }
    }

    #[test]
    fn resolves_dot() {
        assert_eq!(ok("/a/./b"), "/a/b");
        assert_eq!(ok("/./a"), "/a");
    }

    #[test]
    fn resolves_dot_dot() {
        assert_eq!(ok("/a/b/../c"), "/a/c");
        assert_eq!(ok("/a/b/c/../../d"), "/a/d");
    }

    #[test]
    fn refuses_above_root() {
        for p in ["/..", "/../a", "/a/../..", "/a/../../b", "/./.."] {
            assert_eq!(err(p), PathError::AboveRoot, "{p:?}");
        }
    }

    #[test]
    fn refuses_dot_segments_with_parameters() {
        for p in ["/public/..;/admin", "/a/.;x/b", "/a/..%3Bx", "/a/%2e%2e;/b", "/a/.%2E%3b", "/..;"] {
            assert_eq!(err(p), PathError::DotWithParams, "{p:?}");
        }
    }

    #[test]
    fn keeps_other_parameters() {
        assert!(is_borrowed("/a;jsessionid=1/b;v=2"));
        assert!(is_borrowed("/.a;x/a.b;c/b%3By/;last"));
        assert_eq!(ok("/a/b%3bx;y"), "/a/b%3Bx;y");
    }

    #[test]
    fn refuses_segments_of_parameters_only_before_another() {
        for p in ["/;x/admin", "/public/;x/../admin", "/%3Bx/a", "/a/%3b/b", "/;/"] {
            assert_eq!(err(p), PathError::ParamsOnly, "{p:?}");
        }
        assert!(is_borrowed("/;jsessionid=1"));
        assert!(is_borrowed("/a/;x"));
    }

    #[test]
    fn refuses_names_ending_in_a_dot_or_space() {
        for p in [
            "/admin.",
            "/admin./x",
            "/admin..",
            "/admin%2e",
            "/admin%2E/x",
            "/...",
            "/a/.../b",
            "/admin.;x",
            "/admin..;/",
            "/admin;x.",
            "/admin%20",
            "/admin.%20",
            "/admin%20;x",
            "/%2e%2e%2e/b",
        ] {
            assert_eq!(err(p), PathError::TrailingDot, "{p:?}");
        }
    }

    #[test]
    fn segment_name_stops_at_parameters() {
        assert_eq!(segment_name("admin;x"), "admin");
        assert_eq!(segment_name("admin%3Bx;y"), "admin");
        assert_eq!(segment_name("admin%3bx"), "admin");
        assert_eq!(segment_name(";x"), "");
        assert_eq!(segment_name("admin%3"), "admin%3");
        assert_eq!(segment_name("admin"), "admin");
    }

    #[test]
    fn decodes_before_resolving_dots() {
        assert_eq!(ok("/a/%2E/b"), "/a/b");
        assert_eq!(ok("/a/b/%2e%2E/c"), "/a/c");
        assert_eq!(ok("/a/b/.%2e/c"), "/a/c");
        assert_eq!(err("/%2e%2e/admin"), PathError::AboveRoot);
    }

    #[test]
    fn merges_slashes() {
        assert_eq!(ok("//a///b"), "/a/b");
        assert_eq!(ok("/a//"), "/a/");
    }

    #[test]
    fn merges_slashes_before_dot_dot() {
        assert_eq!(ok("/a//.."), "/");
        assert_eq!(ok("/a/b//../c"), "/a/c");
    }

    #[test]
    fn keeps_trailing_slash() {
        assert!(is_borrowed("/a/b/"));
        assert_eq!(ok("/a/./b/"), "/a/b/");
    }

    #[test]
    fn trailing_dot_becomes_slash() {
        assert_eq!(ok("/a/."), "/a/");
        assert_eq!(ok("/a/%2E"), "/a/");
    }

    #[test]
    fn trailing_dot_dot_goes_to_parent() {
        assert_eq!(ok("/a/.."), "/");
        assert_eq!(ok("/a/b/.."), "/a/");
    }

    #[test]
    fn empty_result_is_root() {
        for p in ["//", "/.", "/./", "/a/..", "///.//"] {
            assert_eq!(ok(p), "/", "{p:?}");
        }
    }

    #[test]
    fn dot_like_segments_are_ordinary() {
        assert!(is_borrowed("/..a/.a/a.b"));
        assert_eq!(ok("/%2e%2e%2ea/b"), "/...a/b");
    }

    #[test]
    fn preserves_case() {
        assert!(is_borrowed("/API/Users"));
        assert_eq!(ok("/A/%62/%42"), "/A/b/B");
    }

    #[test]
    fn passes_non_ascii_through() {
        assert!(is_borrowed("/caf\u{e9}"));
        assert_eq!(ok("//caf\u{e9}/./x"), "/caf\u{e9}/x");
    }

    #[test]
    fn malformed_input_wins_over_above_root() {
        assert_eq!(err("/../%2F"), PathError::EncodedSlash);
        assert_eq!(err("/../%"), PathError::BadPercent);
    }

    #[test]
    fn errors_have_messages() {
        assert_eq!(PathError::AboveRoot.to_string(), "path climbs above the root");
        assert_eq!(PathError::EncodedSlash.to_string(), "encoded slash in path");
        assert_eq!(PathError::TrailingDot.to_string(), "segment ends in a dot or space");
    }

    /// Paths over an alphabet that keeps hitting escapes, dots and slashes.
    fn tricky_path() -> impl Strategy<Value = String> {
        path_from(&[])
    }

    /// Like `tricky_path`, plus bytes that must be refused.
    fn hostile_path() -> impl Strategy<Value = String> {
        path_from(&["\\", "\0", "\n", "\x7f", "%", "%%"])
    }

    /// Paths built from the alphabet plus `extra`, each piece picked by weight.
    fn path_from(extra: &[&'static str]) -> impl Strategy<Value = String> {
        let mut alphabet = vec![
            "/", "/", "/", ".", ".", ".", "%", "2", "F", "f", "5", "C", "c", "e", "E", "0", "a", "A", "7", "b", "x",
            "~", "-", "_", "\u{e9}",
        ];
        alphabet.extend_from_slice(extra);
        let tokens = proptest::sample::select(vec![
            "/..", "/.", "%2e", "%2E", "%2F", "%5c", "%41", "%7e", "%2a", "%00", "%25", "//",
        ]);
        let piece = prop_oneof![4 => proptest::sample::select(alphabet), 1 => tokens];
        proptest::collection::vec(piece, 0..32).prop_map(|parts| format!("/{}", parts.concat()))
    }

    /// RFC 3986 section 5.2.4 `remove_dot_segments`, transcribed step by step.
    fn rfc_remove_dot_segments(path: &str) -> String {
        let mut input = path.to_owned();
        let mut output = String::new();
        let pop = |out: &mut String| out.truncate(out.rfind('/').unwrap_or(0));
        while !input.is_empty() {
            if input.starts_with("../") {
                input.replace_range(..3, "");
            } else if input.starts_with("./") || input.starts_with("/./") {
                input.replace_range(..2, "");
            } else if input == "/." {
                input = "/".into();
            } else if input.starts_with("/../") {
                input.replace_range(..3, "");
                pop(&mut output);
            } else if input == "/.." {
                input = "/".into();
                pop(&mut output);
            } else if input == "." || input == ".." {
                input.clear();
            } else {
                let end = input[1..].find('/').map_or(input.len(), |i| i + 1);
                output.extend(input.drain(..end));
            }
        }
        output
    }

    /// Paths of dot-heavy segments, with no escapes and no repeated slashes.
    fn dotted_path() -> impl Strategy<Value = String> {
        let segment = proptest::sample::select(vec!["a", "b", ".", "..", "...", ".a", "a."]);
        (proptest::collection::vec(segment, 0..10), any::<bool>()).prop_map(|(segs, slash)| {
            let mut path = format!("/{}", segs.join("/"));
            if slash && path.len() > 1 {
                path.push('/');
            }
            path
        })
    }

    proptest! {
        // Most generated paths are refused, so run enough to cover the accepted ones.
        #![proptest_config(ProptestConfig::with_cases(1024))]

        #[test]
        fn idempotent(input in tricky_path()) {
            if let Ok(once) = normalize(&input) {
                let twice = normalize(&once);
                prop_assert_eq!(&twice, &Ok(once.clone()));
                prop_assert!(matches!(twice, Ok(Cow::Borrowed(_))));
            }
        }

        #[test]
        fn output_is_normal(input in tricky_path()) {
            if let Ok(out) = normalize(&input) {
                prop_assert!(out.starts_with('/'));
                prop_assert!(!out.contains("//"));
                for bad in ["%2F", "%2f", "%5C", "%5c", "%00", "\\", "\0"] {
                    prop_assert!(!out.contains(bad), "{:?} in {:?}", bad, out);
                }
                for segment in out.split('/') {
                    prop_assert!(segment != "." && segment != "..", "dot segment in {:?}", out);
                    prop_assert!(!segment.ends_with('.'), "trailing dot in {:?}", out);
                }
            }
        }

        #[test]
        fn matches_rfc_3986_dot_removal(input in dotted_path()) {
            let expected = rfc_remove_dot_segments(&input);
            if input.split('/').any(|s| s == "..." || s == "a.") {
                prop_assert_eq!(normalize(&input), Err(PathError::TrailingDot));
                return Ok(());
            }
            match normalize(&input) {
                Ok(out) => prop_assert_eq!(out, if expected.is_empty() { "/".to_owned() } else { expected }),
                // RFC 3986 clamps at the root, which is exactly what is refused here.
                Err(e) => prop_assert_eq!(e, PathError::AboveRoot),
            }
        }

        #[test]
        fn owned_only_when_changed(input in tricky_path()) {
            if let Ok(Cow::Owned(out)) = normalize(&input) {
                prop_assert_ne!(out, input);
            }
        }

        #[test]
        fn never_panics(input in hostile_path()) {
            let _ = normalize(&input);
        }

        #[test]
        fn never_panics_on_any_string(tail in any::<String>()) {
            let _ = normalize(&format!("/{tail}"));
            let _ = normalize(&tail);
        }
    }
}
