//! Route matching: the longest path prefix at a segment boundary whose host
//! matches, then the method among the routes at that prefix.
//!
//! Prefixes are compared in their *routing form* ([`match_key`]): path
//! parameters cut off and letters case-folded, so that every spelling an
//! upstream may read as a route's path (`/ADMIN`, `/admin;x`) is that route,
//! never a broader one behind it.

use std::borrow::Cow;
use std::collections::HashMap;

use http::{HeaderValue, Method};

use super::path::segment_name;
use crate::config::Route;
use crate::error::Reject;

/// Routes indexed by the routing form of their prefix, so matching costs one
/// probe per path segment.
#[derive(Debug, Default)]
pub struct Router {
    by_prefix: HashMap<String, Vec<Group>>,
    routes: Vec<Route>,
    /// `Allow` values of the groups, indexed by [`Group::allow`].
    allows: Vec<HeaderValue>,
}

/// The routes at one prefix for one host (or for any host).
#[derive(Debug)]
struct Group {
    host: Option<String>,
    /// Routes with a method list first: they are the more specific.
    routes: Vec<usize>,
    /// Index of the `Allow` value listing the group's methods.
    allow: u32,
}

impl Router {
    /// Index `routes`; indices stay those of the slice.
    pub fn new(routes: &[Route]) -> Router {
        let mut by_prefix: HashMap<String, Vec<Group>> = HashMap::new();
        for (i, route) in routes.iter().enumerate() {
            let groups = by_prefix.entry(match_key(&route.path).into_owned()).or_default();
            match groups.iter_mut().find(|g| g.host == route.host) {
                Some(group) => group.routes.push(i),
                None => groups.push(Group { host: route.host.clone(), routes: vec![i], allow: 0 }),
            }
        }
        let mut allows = Vec::new();
        for groups in by_prefix.values_mut() {
            // A group for the request's host is tried before the group for any host.
            groups.sort_by_key(|g| g.host.is_none());
            for group in groups.iter_mut() {
                group.routes.sort_by_key(|i| routes.get(*i).is_none_or(|r| r.methods.is_none()));
                group.allow = u32::try_from(allows.len()).unwrap_or(u32::MAX);
                allows.push(allow_value(routes, &group.routes));
            }
        }
        Router { by_prefix, routes: routes.to_vec(), allows }
    }

    /// The index of the route for a normalised `path`, `method` and host
    /// name (see [`super::host::route_name`]).
    ///
    /// The longest prefix with routes for this host decides: a method none of
    /// them takes is [`Reject::MethodNotAllowed`], never a shorter prefix.
    pub fn find(&self, path: &str, method: &Method, host: Option<&str>) -> Result<usize, Reject> {
        let key = match_key(path);
        let mut prefix: &str = &key;
        loop {
            let candidate = if prefix.is_empty() { "/" } else { prefix };
            if let Some(group) = self.group_at(candidate, host) {
                return self.pick(group, method);
            }
            if prefix.is_empty() {
                return Err(Reject::NoRoute);
            }
            // Drop the last segment (and a trailing slash): /a/b/ → /a/b → /a → "".
            prefix = match prefix.strip_suffix('/') {
                Some(p) if !p.is_empty() => p,
                _ => prefix.rfind('/').and_then(|i| prefix.get(..i)).unwrap_or(""),
            };
        }
    }

    fn group_at(&self, prefix: &str, host: Option<&str>) -> Option<&Group> {
        let groups = self.by_prefix.get(prefix)?;
        groups.iter().find(|g| g.host.as_deref().is_none_or(|h| Some(h) == host))
    }

    fn pick(&self, group: &Group, method: &Method) -> Result<usize, Reject> {
        let takes =
            |i: &usize| self.routes.get(*i).is_some_and(|r| r.methods.as_ref().is_none_or(|m| m.contains(method)));
        group.routes.iter().copied().find(takes).ok_or(Reject::MethodNotAllowed { allow: group.allow })
    }

    /// The route at `index`.
    pub fn get(&self, index: usize) -> Option<&Route> {
        self.routes.get(index)
    }

    /// The `Allow` value a [`Reject::MethodNotAllowed`] refers to.
    pub fn allow(&self, index: u32) -> Option<&HeaderValue> {
        self.allows.get(usize::try_from(index).ok()?)
    }
}

/// The methods of `group` as an `Allow` value, in configuration order.
fn allow_value(routes: &[Route], group: &[usize]) -> HeaderValue {
    let mut methods: Vec<&str> = Vec::new();
    for method in group.iter().filter_map(|i| routes.get(*i)?.methods.as_ref()).flatten() {
        if !methods.contains(&method.as_str()) {
            methods.push(method.as_str());
        }
    }
    HeaderValue::from_str(&methods.join(", ")).unwrap_or(HeaderValue::from_static(""))
}

/// The routing form of a normalised path: each segment without its `;`
/// parameters, letters folded to lower case — ASCII, and the four letters
/// whose case mapping lands in ASCII (`İ`, `ı`, `ſ`, `K`, raw or escaped).
/// Escapes stay as they are. Borrowed when nothing needs folding.
pub fn match_key(path: &str) -> Cow<'_, str> {
    if !needs_folding(path.as_bytes()) {
        return Cow::Borrowed(path);
    }
    let mut out = String::with_capacity(path.len());
    for (i, segment) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        fold_into(segment_name(segment), &mut out);
    }
    Cow::Owned(out)
}

/// Escapes of the non-ASCII letters that fold to ASCII, and their folds.
const FOLDED_ESCAPES: [(&str, char); 4] = [("%C4%B0", 'i'), ("%C4%B1", 'i'), ("%C5%BF", 's'), ("%E2%84%AA", 'k')];

/// A quick scan: parameters, upper case, or a possible non-ASCII fold.
fn needs_folding(path: &[u8]) -> bool {
    let mut i = 0;
    while let Some(&b) = path.get(i) {
        match b {
            b';' | b'A'..=b'Z' | 0xC4 | 0xC5 | 0xE2 => return true,
            // Escapes are upper case after normalisation: look past them.
            b'%' => match path.get(i + 1..i + 3) {
                Some(b"3B" | b"C4" | b"C5" | b"E2") => return true,
                _ => i += 3,
            },
            _ => i += 1,
        }
    }
    false
}

/// Appends `name` case-folded to `out`.
fn fold_into(name: &str, out: &mut String) {
    let mut rest = name;
    while let Some(c) = rest.chars().next() {
        let escape = rest.strip_prefix('%').and_then(|_| rest.get(..3));
        let folded = FOLDED_ESCAPES.iter().find(|(e, _)| rest.starts_with(e));
        let (text_len, push): (usize, Option<char>) = match (folded, escape, c) {
            (Some((e, to)), _, _) => (e.len(), Some(*to)),
            (None, Some(escape), _) => {
                out.push_str(escape);
                (3, None)
            }
            (None, None, '\u{130}' | '\u{131}') => (c.len_utf8(), Some('i')),
            (None, None, '\u{17F}') => (c.len_utf8(), Some('s')),
            (None, None, '\u{212A}') => (c.len_utf8(), Some('k')),
            (None, None, c) => (c.len_utf8(), Some(c.to_ascii_lowercase())),
        };
        out.extend(push);
        rest = rest.get(text_len..).unwrap_or_default();
    }
}

/// Refuses a route prefix the router could not match in every spelling:
/// parameters (requests are matched without them) and non-ASCII letters,
/// raw or escaped (their case is not folded).
pub fn check_prefix(path: &str) -> Result<(), &'static str> {
    if path.contains(';') || path.to_ascii_uppercase().contains("%3B") {
        return Err("a route path cannot hold ';' parameters");
    }
    let escaped_non_ascii = path.split('%').skip(1).any(|e| e.as_bytes().first().is_some_and(|b| *b > b'7'));
    if !path.is_ascii() || escaped_non_ascii {
        return Err("a route path must be ASCII (no non-ASCII letters, raw or escaped)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str, path: &str, methods: Option<&[&str]>, host: Option<&str>) -> Route {
        Route {
            name: name.into(),
            path: path.into(),
            methods: methods.map(|m| m.iter().map(|s| Method::from_bytes(s.as_bytes()).unwrap()).collect()),
            upstream: 0,
            host: host.map(str::to_string),
            max_body: None,
            request_headers: Default::default(),
            strip_segments: 0,
            scopes: Vec::new(),
        }
    }

    fn router() -> Router {
        Router::new(&[
            route("orders-read", "/orders", Some(&["GET", "HEAD"]), None),
            route("orders-write", "/orders", Some(&["POST"]), None),
            route("items", "/orders/items", None, None),
            route("internal", "/internal", None, Some("svc.internal")),
        ])
    }

    /// The setup: `public` and `orders-read` for alice; `admin` and
    /// `internal` denied to her.
    fn catch_all() -> Router {
        Router::new(&[
            route("public", "/", None, None),
            route("orders-read", "/orders", Some(&["GET", "HEAD"]), None),
            route("admin", "/admin", None, None),
            route("internal", "/", None, Some("internal.svc")),
        ])
    }

    fn allow(r: &Router, found: Result<usize, Reject>) -> String {
        match found {
            Err(Reject::MethodNotAllowed { allow }) => r.allow(allow).unwrap().to_str().unwrap().to_string(),
            other => panic!("not a 405: {other:?}"),
        }
    }

    #[test]
    fn prefix_at_segment_boundary() {
        let r = router();
        assert_eq!(r.find("/orders", &Method::GET, None), Ok(0));
        assert_eq!(r.find("/orders/7", &Method::GET, None), Ok(0));
        assert_eq!(r.find("/orders/", &Method::GET, None), Ok(0));
        assert_eq!(r.find("/orders-admin", &Method::GET, None), Err(Reject::NoRoute));
    }

    #[test]
    fn longest_prefix_wins() {
        assert_eq!(router().find("/orders/items/3", &Method::DELETE, None), Ok(2));
    }

    #[test]
    fn routes_sharing_a_prefix_split_the_methods() {
        let r = router();
        assert_eq!(r.find("/orders/7", &Method::HEAD, None), Ok(0));
        assert_eq!(r.find("/orders/7", &Method::POST, None), Ok(1));
    }

    #[test]
    fn method_outside_every_list_is_405_with_allow() {
        let r = router();
        assert_eq!(allow(&r, r.find("/orders/7", &Method::DELETE, None)), "GET, HEAD, POST");
    }

    #[test]
    fn method_outside_the_list_never_falls_back_to_a_shorter_prefix() {
        let r = catch_all();
        for path in ["/orders", "/orders/7", "/ORDERS/7", "/orders;x/7"] {
            assert_eq!(allow(&r, r.find(path, &Method::DELETE, None)), "GET, HEAD", "{path}");
        }
        assert_eq!(r.find("/orders/7", &Method::GET, None), Ok(1));
        assert_eq!(r.find("/ordersx", &Method::DELETE, None), Ok(0));
    }

    #[test]
    fn host_group_is_tried_before_the_any_host_group() {
        let r = Router::new(&[
            route("public", "/", None, None),
            route("internal", "/", Some(&["GET"]), Some("internal.svc")),
        ]);
        assert_eq!(r.find("/x", &Method::GET, Some("internal.svc")), Ok(1));
        // The host's routes decide its methods: no fallback to the any-host route.
        assert_eq!(allow(&r, r.find("/x", &Method::DELETE, Some("internal.svc"))), "GET");
        assert_eq!(r.find("/x", &Method::DELETE, Some("other.svc")), Ok(0));
        assert_eq!(r.find("/x", &Method::DELETE, None), Ok(0));
    }

    #[test]
    fn host_must_match_when_set() {
        let r = router();
        assert_eq!(r.find("/internal/x", &Method::GET, Some("svc.internal")), Ok(3));
        assert_eq!(r.find("/internal/x", &Method::GET, Some("other")), Err(Reject::NoRoute));
        assert_eq!(r.find("/internal/x", &Method::GET, None), Err(Reject::NoRoute));
    }

    #[test]
    fn root_route_catches_all() {
        let r = Router::new(&[route("all", "/", None, None)]);
        assert_eq!(r.find("/", &Method::GET, None), Ok(0));
        assert_eq!(r.find("/a/b", &Method::GET, None), Ok(0));
    }

    #[test]
    fn every_spelling_of_a_denied_prefix_is_that_route() {
        let r = catch_all();
        for path in [
            "/admin",
            "/admin/",
            "/ADMIN",
            "/Admin/x",
            "/admin;x",
            "/admin;jsessionid=1/secret",
            "/admin%3Bx",
            "/ADMIN;x",
            "/AdMiN%3Bv=1/x;y",
            "/adm%C4%B1n",
            "/adm\u{131}n",
            "/ADM%C4%B0N",
            "/admin/;x",
        ] {
            assert_eq!(r.find(path, &Method::GET, None), Ok(2), "{path}");
        }
        assert_eq!(r.find("/administrator", &Method::GET, None), Ok(0));
        assert_eq!(r.find("/admin%20x", &Method::GET, None), Ok(0));
    }

    #[test]
    fn route_prefixes_fold_too() {
        let r = Router::new(&[route("api", "/API/V1", None, None), route("all", "/", None, None)]);
        assert_eq!(r.find("/api/v1/x", &Method::GET, None), Ok(0));
        assert_eq!(r.find("/Api/V1", &Method::GET, None), Ok(0));
    }

    #[test]
    fn match_key_folds_case_and_drops_parameters() {
        for (path, key) in [
            ("/ADMIN", "/admin"),
            ("/Admin/X", "/admin/x"),
            ("/admin;x", "/admin"),
            ("/a;b=1/c;d/e", "/a/c/e"),
            ("/a%3Bb/c", "/a/c"),
            ("/A%2A", "/a%2A"),
            ("/%E2%84%AAelvin", "/kelvin"),
            ("/\u{17F}ecret", "/secret"),
            ("/\u{212A}", "/k"),
            ("/caf\u{c9}", "/caf\u{c9}"),
            ("/%C4%8E", "/%C4%8E"),
            ("/;x", "/"),
        ] {
            assert_eq!(match_key(path), key, "{path}");
        }
    }

    fn upper_outside_escapes(key: &str) -> bool {
        let bytes = key.as_bytes();
        let mut i = 0;
        while let Some(&b) = bytes.get(i) {
            match b {
                b'%' => i += 3,
                b'A'..=b'Z' => return true,
                _ => i += 1,
            }
        }
        false
    }

    proptest::proptest! {
        #[test]
        fn match_key_is_stable_and_folded(tail in "[a-zA-Z;%3BbC4c5E2/.\u{131}\u{212A}]{0,24}") {
            if let Ok(path) = crate::proxy::path::normalize(&format!("/{tail}")) {
                let key = match_key(&path);
                proptest::prop_assert_eq!(match_key(&key), key.clone());
                proptest::prop_assert!(!key.contains(';') && !key.contains("%3B"), "{:?}", key);
                proptest::prop_assert!(!upper_outside_escapes(&key), "{:?}", key);
            }
        }
    }

    #[test]
    fn match_key_borrows_when_nothing_folds() {
        for path in ["/", "/orders/7", "/a%2A/b%20", "/caf\u{e9}", "/x-y_z~1/"] {
            assert!(matches!(match_key(path), Cow::Borrowed(_)), "{path}");
        }
    }

    #[test]
    fn prefixes_that_cannot_be_matched_in_every_spelling_are_refused() {
        for path in ["/a;b", "/a%3Bb", "/a%3bb", "/caf\u{e9}", "/caf%C3%A9", "/caf%c3%a9", "/%80"] {
            assert!(check_prefix(path).is_err(), "{path}");
        }
        for path in ["/", "/Orders/v1", "/a%20b", "/a%7Fb", "/a.b"] {
            assert_eq!(check_prefix(path), Ok(()), "{path}");
        }
    }
}
