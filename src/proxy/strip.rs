//! `strip_prefix = true`: the path forwarded without the route's prefix.
//!
//! The router matched the route's prefix segment by segment (parameters cut
//! off, letters folded), so the prefix as the caller spelled it is the
//! path's first `segments` segments, whatever their case or parameters.
//! Those are removed; the rest is forwarded, `/` when nothing is left.
//! Authorisation already happened on the whole path.

/// `path` (normalised, starting with `/`) without its first `segments` segments.
pub fn strip_segments(path: &str, segments: usize) -> &str {
    let mut rest = path;
    for _ in 0..segments {
        rest = match rest.get(1..).and_then(|r| r.find('/')) {
            Some(i) => rest.get(i + 1..).unwrap_or_default(),
            None => "",
        };
    }
    if rest.is_empty() {
        "/"
    } else {
        rest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_the_matched_segments_in_any_spelling() {
        let cases = [
            ("/orders/7", 1, "/7"),
            ("/orders", 1, "/"),
            ("/orders/", 1, "/"),
            ("/orders/7/items", 1, "/7/items"),
            ("/ORDERS/7", 1, "/7"),
            ("/Orders;v=1/7", 1, "/7"),
            ("/orders%3Bv=1/7", 1, "/7"),
            ("/orders;v=1", 1, "/"),
            ("/api/v1/orders/7", 2, "/orders/7"),
            ("/API;x/V1;y/", 2, "/"),
            ("/a/b", 0, "/a/b"),
            ("/", 0, "/"),
            ("/", 1, "/"),
        ];
        for (path, n, want) in cases {
            assert_eq!(strip_segments(path, n), want, "{path} minus {n}");
        }
    }
}
