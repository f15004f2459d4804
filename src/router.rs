//! Path routing: the longest matching prefix wins, on segment boundaries.

/// Routes sorted longest prefix first; `T` is whatever the runtime attaches
/// to a route (its upstream client, its settings).
#[derive(Debug)]
pub struct Router<T> {
    routes: Vec<(String, T)>,
}

impl<T> Router<T> {
    pub fn new(mut routes: Vec<(String, T)>) -> Self {
        // Stable sort: equal lengths keep file order (paths are unique anyway).
        routes.sort_by_key(|r| std::cmp::Reverse(r.0.len()));
        Router { routes }
    }

    /// Runs once per request with the path exactly as received (no decoding,
    /// no normalising: the upstream gets the same bytes). Returns the route
    /// whose prefix is the longest match, or `None` for a 404.
    pub fn route(&self, path: &str) -> Option<&T> {
        self.routes
            .iter()
            .find(|(prefix, _)| matches_prefix(prefix, path))
            .map(|(_, t)| t)
    }

    /// Every route whose prefix matches, longest first: the fall-through
    /// order when a route refuses a client.
    pub fn candidates<'a>(&'a self, path: &'a str) -> impl Iterator<Item = &'a T> + 'a {
        self.routes
            .iter()
            .filter(move |(prefix, _)| matches_prefix(prefix, path))
            .map(|(_, t)| t)
    }

    pub fn iter(&self) -> impl Iterator<Item = &(String, T)> {
        self.routes.iter()
    }
}

/// `/api` matches `/api`, `/api/` and `/api/x`, never `/apix`.
/// A prefix ending in `/` (such as `/`) matches everything below it.
pub fn matches_prefix(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        None => false,
        Some(rest) => rest.is_empty() || prefix.ends_with('/') || rest.starts_with('/'),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aliasvault() -> Router<&'static str> {
        Router::new(vec![
            ("/".into(), "client"),
            ("/api".into(), "api"),
            ("/admin".into(), "admin"),
        ])
    }

    #[test]
    fn longest_prefix_on_segment_boundary() {
        let r = aliasvault();
        for (path, want) in [
            ("/api", "api"),
            ("/api/", "api"),
            ("/api/v1/Auth", "api"),
            ("/apix", "client"),
            ("/admin", "admin"),
            ("/admin/_blazor", "admin"),
            ("/administrator", "client"),
            ("/", "client"),
            ("/index.html", "client"),
            ("/api%2Fx", "client"),
        ] {
            assert_eq!(r.route(path), Some(&want), "{path}");
        }
    }

    #[test]
    fn no_route_without_root() {
        let r = Router::new(vec![("/api".to_string(), 1)]);
        assert_eq!(r.route("/"), None);
        assert_eq!(r.route("/ap"), None);
        assert_eq!(r.route("*"), None);
        assert_eq!(r.route("/api/x"), Some(&1));
    }

    #[test]
    fn trailing_slash_prefix() {
        let r = Router::new(vec![("/static/".to_string(), 1)]);
        assert_eq!(r.route("/static/a.css"), Some(&1));
        assert_eq!(r.route("/static/"), Some(&1));
        assert_eq!(r.route("/static"), None);
    }
}
