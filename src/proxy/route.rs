//! Route matching: the longest path prefix at a segment boundary whose
//! methods and host also match.

use std::collections::HashMap;

use http::Method;

use crate::config::Route;

/// Routes indexed by path prefix, so matching costs one probe per path segment.
#[derive(Debug, Default)]
pub struct Router {
    by_prefix: HashMap<String, Vec<usize>>,
    routes: Vec<Route>,
}

impl Router {
    /// Index `routes`; indices stay those of the slice.
    pub fn new(routes: &[Route]) -> Router {
        let mut by_prefix: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, route) in routes.iter().enumerate() {
            by_prefix.entry(route.path.clone()).or_default().push(i);
        }
        // Routes with a host or a method list are more specific: try them first.
        for list in by_prefix.values_mut() {
            list.sort_by_key(|i| {
                routes.get(*i).map_or(2, |r| 2 - u8::from(r.host.is_some()) - u8::from(r.methods.is_some()))
            });
        }
        Router { by_prefix, routes: routes.to_vec() }
    }

    /// The index of the route for a normalised `path`, `method` and lower-case `host`.
    pub fn find(&self, path: &str, method: &Method, host: Option<&str>) -> Option<usize> {
        let mut prefix = path;
        loop {
            let candidate = if prefix.is_empty() { "/" } else { prefix };
            if let Some(found) = self.match_at(candidate, method, host) {
                return Some(found);
            }
            if prefix.is_empty() {
                return None;
            }
            // Drop the last segment (and a trailing slash): /a/b/ → /a/b → /a → "".
            prefix = match prefix.strip_suffix('/') {
                Some(p) if !p.is_empty() => p,
                _ => prefix.rfind('/').and_then(|i| prefix.get(..i)).unwrap_or(""),
            };
        }
    }

    fn match_at(&self, prefix: &str, method: &Method, host: Option<&str>) -> Option<usize> {
        let list = self.by_prefix.get(prefix)?;
        list.iter().copied().find(|i| {
            self.routes.get(*i).is_some_and(|r| {
                r.methods.as_ref().is_none_or(|m| m.contains(method))
                    && r.host.as_deref().is_none_or(|h| Some(h) == host)
            })
        })
    }

    /// The route at `index`.
    pub fn get(&self, index: usize) -> Option<&Route> {
        self.routes.get(index)
    }
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

    #[test]
    fn prefix_at_segment_boundary() {
        let r = router();
        assert_eq!(r.find("/orders", &Method::GET, None), Some(0));
        assert_eq!(r.find("/orders/7", &Method::GET, None), Some(0));
        assert_eq!(r.find("/orders/", &Method::GET, None), Some(0));
        assert_eq!(r.find("/orders-admin", &Method::GET, None), None);
    }

    #[test]
    fn longest_prefix_wins() {
        assert_eq!(router().find("/orders/items/3", &Method::DELETE, None), Some(2));
    }

    #[test]
    fn method_outside_list_matches_nothing() {
        let r = router();
        assert_eq!(r.find("/orders/7", &Method::POST, None), Some(1));
        assert_eq!(r.find("/orders/7", &Method::DELETE, None), None);
    }

    #[test]
    fn host_must_match_when_set() {
        let r = router();
        assert_eq!(r.find("/internal/x", &Method::GET, Some("svc.internal")), Some(3));
        assert_eq!(r.find("/internal/x", &Method::GET, Some("other")), None);
        assert_eq!(r.find("/internal/x", &Method::GET, None), None);
    }

    #[test]
    fn root_route_catches_all() {
        let r = Router::new(&[route("all", "/", None, None)]);
        assert_eq!(r.find("/", &Method::GET, None), Some(0));
        assert_eq!(r.find("/a/b", &Method::GET, None), Some(0));
    }
}
