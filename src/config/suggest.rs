//! "did you mean …?" for names that are close to a known one.

/// The known name closest to `name`, if it is close enough to be a typo:
/// at most one edit for short names, two for longer ones.
pub fn closest<'a>(name: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let limit = if name.chars().count() <= 4 { 1 } else { 2 };
    known
        .into_iter()
        .map(|k| (distance(name, k), k))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// `message` with ", did you mean \"x\"?" appended when a known name is close.
pub fn with_hint<'a>(message: String, name: &str, known: impl IntoIterator<Item = &'a str>) -> String {
    match closest(name, known) {
        Some(hint) => format!("{message}; did you mean \"{hint}\"?"),
        None => message,
    }
}

/// Levenshtein distance over characters (names are short: two rows suffice).
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut row = Vec::with_capacity(b.len() + 1);
        row.push(i + 1);
        for (j, cb) in b.iter().enumerate() {
            let substitute = prev.get(j).map_or(usize::MAX, |d| d + usize::from(ca != *cb));
            let delete = prev.get(j + 1).map_or(usize::MAX, |d| d + 1);
            let insert = row.last().map_or(usize::MAX, |d| d + 1);
            row.push(substitute.min(delete).min(insert));
        }
        prev = row;
    }
    prev.last().copied().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_find_their_name() {
        let known = ["orders-read", "orders-write", "inventory"];
        assert_eq!(closest("orders-wrte", known), Some("orders-write"));
        assert_eq!(closest("inventroy", known), Some("inventory"));
        assert_eq!(closest("billing", known), None);
    }

    #[test]
    fn short_names_allow_one_edit() {
        assert_eq!(closest("ab", ["ac"]), Some("ac"));
        assert_eq!(closest("ab", ["cd"]), None);
    }

    #[test]
    fn hint_is_appended_only_when_close() {
        assert_eq!(
            with_hint("unknown route \"ordrs\"".into(), "ordrs", ["orders"]),
            "unknown route \"ordrs\"; did you mean \"orders\"?"
        );
        assert_eq!(with_hint("unknown route \"x\"".into(), "x", ["orders"]), "unknown route \"x\"");
    }
}
