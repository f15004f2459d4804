//! The checks `gatehouse doctor` runs and how it reads their answers
//! into findings.

use std::net::SocketAddr;

use http::header;
use http::{Method, StatusCode, Uri};
use hyper_util::rt::TokioIo;

use super::client::{
    accept_matches, close_websocket, nonce, read_report, url_escape, ClientError, Exchange, Meta,
    Target,
};
use super::findings::{
    Outcome, FIX_DIAGNOSTICS, FIX_FORWARDING, FIX_FRONT, FIX_HOST, FIX_HOSTNAME, FIX_PATH,
    FIX_REDIRECT, FIX_ROUTE, FIX_TLS, FIX_UNREACHABLE, FIX_UPSTREAM, FIX_WEBSOCKET,
};
use super::{Options, PROBE};
use crate::proxy::diagnostics::{self, Report};

pub(super) struct Doctor<'a> {
    pub(super) t: Target,
    pub(super) opts: &'a Options,
    pub(super) out: Outcome,
    /// False once verification failed (reported): later checks go on.
    pub(super) verify: bool,
    /// The diagnostic report for each prefix that returned one.
    pub(super) reports: Vec<(String, Report)>,
}

impl Doctor<'_> {
    pub(super) async fn connection(&mut self) -> bool {
        match self.t.open(true).await {
            Ok(o) => {
                let detail = match &o.certificate {
                    Some(fp) => format!(
                        "TLS certificate for {} verified (SHA-256 {fp})",
                        self.t.host
                    ),
                    None => format!("connected to {} (plain HTTP)", self.t.connect),
                };
                self.out.check("connection", true, detail);
                true
            }
            Err(ClientError::Verify(e)) => {
                self.out
                    .check("connection", false, format!("TLS verification failed: {e}"));
                self.out.find(
                    "tls-verify",
                    None,
                    format!(
                        "The certificate presented for {} cannot be verified: {e}.",
                        self.t.host
                    ),
                    FIX_TLS,
                );
                self.verify = false;
                match self.t.open(false).await {
                    Ok(_) => true,
                    Err(e) => {
                        let e = e.text();
                        self.out.find(
                            "unreachable",
                            None,
                            format!("Cannot complete a connection to {}: {e}.", self.t.connect),
                            FIX_UNREACHABLE,
                        );
                        false
                    }
                }
            }
            Err(e) => {
                let e = e.text();
                self.out.check("connection", false, e.clone());
                self.out.find(
                    "unreachable",
                    None,
                    format!("Cannot connect to {}: {e}.", self.t.connect),
                    FIX_UNREACHABLE,
                );
                false
            }
        }
    }

    pub(super) async fn run_checks(&mut self) {
        let prefixes = [
            "/".to_string(),
            self.opts.api.clone(),
            self.opts.admin.clone(),
        ];
        if let Some(token) = self.opts.token.clone() {
            let mut got = Vec::new();
            for p in &prefixes {
                if self.probe(p, &token).await {
                    got.push(p.as_str());
                }
            }
            if !got.is_empty() {
                self.out.check(
                    "diagnostics",
                    true,
                    format!("Gatehouse reported what arrived for {}", got.join(", ")),
                );
            }
            self.websocket_probe(&token).await;
        }
        self.page("client", "/").await;
        let api = self.opts.api.clone();
        self.page("api", &api).await;
        let admin = self.opts.admin.clone();
        self.page("admin", &admin).await;
        self.websocket_app().await;
    }

    pub(super) fn report_for(&self, prefix: &str) -> Option<&Report> {
        self.reports
            .iter()
            .find(|(p, _)| p == prefix)
            .map(|(_, r)| r)
    }

    /// The prefix (`/`, `/api`, `/admin`) a path belongs to.
    pub(super) fn prefix_of(&self, path: &str) -> String {
        for p in [&self.opts.admin, &self.opts.api] {
            if path == p.as_str()
                || path
                    .strip_prefix(p.as_str())
                    .is_some_and(|rest| rest.starts_with('/') || rest.starts_with('?'))
            {
                return p.clone();
            }
        }
        "/".to_string()
    }

    pub(super) fn probe_target(prefix: &str, extra: &str) -> String {
        format!(
            "{}{PROBE}?n={}{extra}",
            prefix.trim_end_matches('/'),
            nonce()
        )
    }

    /// Asks the diagnostic endpoint what arrives for a path under `prefix`.
    pub(super) async fn probe(&mut self, prefix: &str, token: &str) -> bool {
        let sent = Self::probe_target(prefix, "");
        let headers = [
            (diagnostics::HEADER.as_str(), token),
            ("accept", "application/json"),
        ];
        let (ex, meta) = match self.t.send(self.verify, Method::GET, &sent, &headers).await {
            Ok(x) => x,
            Err(_) => return false,
        };
        if ex.status == StatusCode::FORBIDDEN && ex.body.starts_with(b"diagnostics token mismatch")
        {
            self.out.find(
                "diagnostics-unavailable",
                None,
                "Gatehouse refused the diagnostics token: it differs from the configured one."
                    .into(),
                FIX_DIAGNOSTICS,
            );
            return false;
        }
        let report = (ex.status == StatusCode::OK)
            .then(|| serde_json::from_slice::<Report>(&ex.body).ok())
            .flatten();
        let Some(report) = report else {
            // A 5xx is diagnosed by the page checks; anything else means the
            // report never came back.
            if !ex.status.is_server_error() {
                self.out.find(
                    "diagnostics-unavailable",
                    Some(prefix),
                    format!(
                        "No diagnostic report came back (status {}): the endpoint is off, or \
                         the proxy in front does not send this path to Gatehouse.",
                        ex.status.as_u16()
                    ),
                    FIX_DIAGNOSTICS,
                );
            }
            return false;
        };
        self.analyze(prefix, &sent, &report, &meta);
        self.reports.push((prefix.to_string(), report));
        true
    }

    pub(super) fn analyze(&mut self, prefix: &str, sent: &str, r: &Report, meta: &Meta) {
        let header = |name: &str| {
            r.headers
                .iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
                .collect::<Vec<_>>()
        };
        // Direct when Gatehouse served the very certificate the doctor saw
        // (nothing terminated TLS in between), or, without TLS, when the
        // peer Gatehouse saw is the doctor's own socket.
        let direct = match (&meta.certificate, &r.certificate) {
            (Some(seen), Some(served)) => seen == served,
            (Some(_), None) => false,
            (None, _) => r.peer.parse::<SocketAddr>().ok() == Some(meta.local),
        };
        let rewritten = r.target != sent;
        if rewritten {
            let how = match sent.strip_prefix(prefix.trim_end_matches('/')) {
                Some(rest) if prefix != "/" && r.target == rest => {
                    format!("stripped the {prefix} prefix")
                }
                _ => "rewrote the path".to_string(),
            };
            self.out.find(
                "path-rewritten",
                Some(prefix),
                format!(
                    "The proxy in front {how}: the doctor sent {sent}, Gatehouse received {}.",
                    r.target
                ),
                FIX_PATH,
            );
        }
        let hosts: Vec<&str> = r.host.as_deref().into_iter().collect();
        let host_ok = hosts.first().is_some_and(|h| {
            let name = crate::proxy::forwarded::host_without_port(h);
            name.trim_start_matches('[')
                .trim_end_matches(']')
                .eq_ignore_ascii_case(&self.t.host)
        });
        if !host_ok && !hosts.is_empty() {
            self.out.find(
                "host-rewritten",
                None,
                format!(
                    "The proxy in front changed the Host header: the doctor sent {}, Gatehouse received {}.",
                    self.t.authority,
                    hosts[0]
                ),
                FIX_HOST,
            );
        }
        if !direct {
            let peer_ip = r
                .peer
                .parse::<SocketAddr>()
                .map(|a| crate::base::cidr::canonical(a.ip()).to_string())
                .unwrap_or_else(|_| r.peer.clone());
            let mut missing = Vec::new();
            if header("x-forwarded-for").is_empty() {
                missing.push("X-Forwarded-For");
            }
            if header("x-forwarded-proto").is_empty() && self.t.https && !r.tls {
                missing.push("X-Forwarded-Proto");
            }
            if !missing.is_empty() {
                let mut lost = Vec::new();
                if missing.contains(&"X-Forwarded-For") {
                    lost.push(
                        "Gatehouse and the apps see the proxy's address instead of the client's",
                    );
                }
                if missing.contains(&"X-Forwarded-Proto") {
                    lost.push("they take the HTTPS request for plain HTTP");
                }
                self.out.find(
                    "forwarding-headers",
                    None,
                    format!(
                        "The proxy in front ({peer_ip}) does not send {}: {}.",
                        missing.join(" or "),
                        lost.join(", and ")
                    ),
                    FIX_FORWARDING,
                );
            } else if !r.trusted_peer {
                self.out.find(
                    "untrusted-proxy",
                    None,
                    format!(
                        "Gatehouse does not trust the proxy in front ({peer_ip}), so it ignores \
                         its X-Forwarded-For: the client address it logs and limits is {}.",
                        r.client_ip
                    ),
                    &format!(
                        "Add the proxy's address to Gatehouse's .env: TRUSTED_PROXIES={}",
                        // One address as a range, e.g. 127.0.0.1/32.
                        peer_ip
                            .parse::<crate::base::cidr::Cidr>()
                            .map_or_else(|_| peer_ip.clone(), |c| c.to_string())
                    ),
                );
            }
        }
        if r.would_redirect {
            self.out.find(
                "https-redirect",
                None,
                "The proxy in front connects to Gatehouse's HTTP port, and Gatehouse answers it \
                 with a redirect to HTTPS, which loops."
                    .into(),
                FIX_REDIRECT,
            );
        }
        if !rewritten {
            let mismatch = match (&r.route, &r.route_error) {
                (Some(route), _) if route.path != prefix => Some(format!(
                    "Gatehouse serves {prefix} with its route {} (client address {}).",
                    route.path, r.client_ip
                )),
                (None, Some(e)) => Some(format!("Gatehouse has no route for {prefix}: {e}.")),
                _ => None,
            };
            if let Some(m) = mismatch {
                self.out.find("route-mismatch", Some(prefix), m, FIX_ROUTE);
            }
        }
    }

    /// A WebSocket upgrade answered by the diagnostic endpoint under the
    /// admin prefix: proves the proxy in front passes upgrades, whatever
    /// the application does.
    pub(super) async fn websocket_probe(&mut self, token: &str) {
        let admin = self.opts.admin.clone();
        let sent = Self::probe_target(&admin, "&ws=1");
        let key = tokio_tungstenite::tungstenite::handshake::client::generate_key();
        let headers = [
            (diagnostics::HEADER.as_str(), token),
            ("upgrade", "websocket"),
            ("connection", "Upgrade"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", key.as_str()),
        ];
        let name = "websocket (proxy)";
        let (ex, _) = match self.t.send(self.verify, Method::GET, &sent, &headers).await {
            Ok(x) => x,
            Err(e) => {
                self.out.check(name, false, e.text());
                return;
            }
        };
        if let Some(mut io) = ex.upgraded {
            let accepted = accept_matches(&ex.headers, &key);
            let report = read_report(TokioIo::new(&mut io))
                .await
                .and_then(|b| serde_json::from_slice::<Report>(&b).ok());
            match report {
                Some(_) if accepted => self.out.check(
                    name,
                    true,
                    format!("{sent}: upgraded through to Gatehouse (101)"),
                ),
                _ => {
                    self.out
                        .check(name, false, "101, but no valid WebSocket answer".into());
                }
            }
            return;
        }
        let report = (ex.status == StatusCode::OK)
            .then(|| serde_json::from_slice::<Report>(&ex.body).ok())
            .flatten();
        match report {
            Some(r) => {
                let get = |n: &str| {
                    r.headers
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case(n))
                        .map_or("(none)", |(_, v)| v.as_str())
                        .to_string()
                };
                let (upgrade, connection) = (get("upgrade"), get("connection"));
                self.out.check(
                    name,
                    false,
                    format!("{sent}: {}, not 101", ex.status.as_u16()),
                );
                self.out.find(
                    "websocket-headers",
                    Some(&admin),
                    format!(
                        "The proxy in front dropped the WebSocket upgrade: Gatehouse received \
                         Upgrade: {upgrade}, Connection: {connection}."
                    ),
                    FIX_WEBSOCKET,
                );
            }
            None => self.out.check(
                name,
                false,
                format!("{sent}: {} instead of 101", ex.status.as_u16()),
            ),
        }
    }

    /// The application's own WebSocket: SignalR's negotiate, as Blazor
    /// Server does it, then the upgrade.
    pub(super) async fn websocket_app(&mut self) {
        let admin = self.opts.admin.trim_end_matches('/').to_string();
        let negotiate = format!("{admin}/_blazor/negotiate?negotiateVersion=1");
        let mut target = format!("{admin}/_blazor");
        if let Ok((ex, _)) = self
            .t
            .send(self.verify, Method::POST, &negotiate, &[])
            .await
        {
            let token = (ex.status == StatusCode::OK)
                .then(|| serde_json::from_slice::<serde_json::Value>(&ex.body).ok())
                .flatten()
                .and_then(|v| {
                    v.get("connectionToken")
                        .or_else(|| v.get("connectionId"))
                        .and_then(|t| t.as_str().map(str::to_string))
                });
            if let Some(token) = token {
                target = format!("{admin}/_blazor?id={}", url_escape(&token));
            }
        }
        let key = tokio_tungstenite::tungstenite::handshake::client::generate_key();
        let headers = [
            ("upgrade", "websocket"),
            ("connection", "Upgrade"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", key.as_str()),
        ];
        let name = "websocket";
        let path = admin.clone();
        let explained = |out: &Outcome| {
            out.has("websocket-headers", None)
                || out.has("path-rewritten", Some(&path))
                || out.has("moved", None)
                || out.has("https-redirect", None)
        };
        match self
            .t
            .send(self.verify, Method::GET, &target, &headers)
            .await
        {
            Err(e) => {
                let e = e.text();
                self.out.check(name, false, format!("{target}: {e}"));
                if !explained(&self.out) {
                    self.out.find(
                        "websocket-failed",
                        Some(&admin),
                        format!("The WebSocket upgrade at {target} failed: {e}."),
                        FIX_WEBSOCKET,
                    );
                }
            }
            Ok((ex, _)) if ex.upgraded.is_some() => {
                let ok = accept_matches(&ex.headers, &key);
                if let Some(mut io) = ex.upgraded {
                    close_websocket(TokioIo::new(&mut io)).await;
                }
                self.out.check(
                    name,
                    ok,
                    if ok {
                        format!("{target}: 101 Switching Protocols")
                    } else {
                        format!("{target}: 101 with a wrong Sec-WebSocket-Accept")
                    },
                );
            }
            Ok((ex, _)) => {
                self.out.check(
                    name,
                    false,
                    format!("{target}: {} instead of 101", ex.status.as_u16()),
                );
                if is_unavailable(ex.status) {
                    self.unavailable(&target, &ex);
                } else if !explained(&self.out) {
                    let hint = if self.opts.token.is_some() {
                        ""
                    } else {
                        " The most common cause is a proxy in front that drops the Upgrade and \
                         Connection headers; run again with --token to see what arrives."
                    };
                    self.out.find(
                        "websocket-failed",
                        Some(&admin),
                        format!(
                            "The WebSocket upgrade at {target} was answered {} instead of 101.{hint}",
                            ex.status.as_u16()
                        ),
                        FIX_WEBSOCKET,
                    );
                }
            }
        }
    }

    /// GET a page, following redirects on the same host.
    pub(super) async fn page(&mut self, name: &str, path: &str) {
        let mut url = path.to_string();
        let mut seen = vec![url.clone()];
        let prefix = self.prefix_of(path);
        for _ in 0..6 {
            let headers = [("accept", "text/html,application/json;q=0.9,*/*;q=0.8")];
            let (ex, _) = match self.t.send(self.verify, Method::GET, &url, &headers).await {
                Ok(x) => x,
                Err(e) => {
                    let e = e.text();
                    self.out.check(name, false, format!("{url}: {e}"));
                    self.out.find(
                        "unreachable",
                        Some(path),
                        format!("The request for {url} failed: {e}."),
                        FIX_UNREACHABLE,
                    );
                    return;
                }
            };
            let status = ex.status;
            if status.is_redirection() {
                let location = ex
                    .headers
                    .get(header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                match self.same_host_target(&location, &url) {
                    Location::Here(next) if seen.contains(&next) => {
                        self.out.check(
                            name,
                            false,
                            format!("{url}: {} redirects in a loop", status.as_u16()),
                        );
                        if !self.out.has("https-redirect", None) {
                            self.out.find(
                                "redirect-loop",
                                Some(path),
                                format!(
                                    "{url} redirects to {location}, which leads back to itself."
                                ),
                                FIX_REDIRECT,
                            );
                        }
                        return;
                    }
                    Location::Here(next) => {
                        seen.push(next.clone());
                        url = next;
                        continue;
                    }
                    Location::Elsewhere(other) if self.same_name(&other) => {
                        self.out.check(
                            name,
                            false,
                            format!("{url}: {} to {location}", status.as_u16()),
                        );
                        // Behind a proxy, that is Gatehouse's HTTPS redirect,
                        // already diagnosed with its cause.
                        if self.out.has("https-redirect", None) {
                            return;
                        }
                        self.out.find(
                            "moved",
                            None,
                            format!(
                                "{} redirects to {other}: the checks need the address browsers \
                                 end up on.",
                                self.opts.url
                            ),
                            &format!("Run: gatehouse doctor {other}"),
                        );
                        return;
                    }
                    Location::Elsewhere(other) => {
                        self.out.check(
                            name,
                            false,
                            format!("{url}: {} to {location}", status.as_u16()),
                        );
                        self.out.find(
                            "hostname",
                            Some(path),
                            format!(
                                "{url} redirects to another address ({other}); the services must \
                                 all answer on {}.",
                                self.t.authority
                            ),
                            FIX_HOSTNAME,
                        );
                        return;
                    }
                }
            }
            if status.is_success() {
                let ctype = ex
                    .headers
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("no content type");
                let text = String::from_utf8_lossy(&ex.body);
                let detail = if name == "api" && text.trim() == "OK" {
                    format!("{url}: {} \"OK\"", status.as_u16())
                } else {
                    format!(
                        "{url}: {} {ctype}, {} bytes",
                        status.as_u16(),
                        ex.body.len()
                    )
                };
                self.out.check(name, true, detail);
                return;
            }
            self.out
                .check(name, false, format!("{url}: {}", status.as_u16()));
            if is_unavailable(status) {
                self.unavailable(&url, &ex);
            } else if !self.out.has("path-rewritten", Some(&prefix))
                && !self.out.has("route-mismatch", Some(&prefix))
            {
                self.out.find(
                    "unexpected-status",
                    Some(path),
                    format!("{url} answered {} instead of 200.", status.as_u16()),
                    FIX_ROUTE,
                );
            }
            return;
        }
        self.out
            .check(name, false, format!("{path}: too many redirects"));
        self.out.find(
            "redirect-loop",
            Some(path),
            format!("{path} redirects more than five times."),
            FIX_REDIRECT,
        );
    }

    /// Where a redirect to `location` (from `current`) leads.
    pub(super) fn same_host_target(&self, location: &str, current: &str) -> Location {
        if location.starts_with('/') && !location.starts_with("//") {
            return Location::Here(location.to_string());
        }
        let Ok(uri) = location.parse::<Uri>() else {
            return Location::Elsewhere(location.to_string());
        };
        match (uri.scheme_str(), uri.authority()) {
            (Some(scheme), Some(auth)) => {
                let same_scheme = (scheme == "https") == self.t.https;
                if same_scheme && auth.as_str().eq_ignore_ascii_case(&self.t.authority) {
                    Location::Here(
                        uri.path_and_query()
                            .map_or("/".to_string(), |p| p.as_str().to_string()),
                    )
                } else {
                    Location::Elsewhere(format!("{scheme}://{auth}"))
                }
            }
            // A relative reference without a leading slash.
            _ => {
                let base = current.rsplit_once('/').map_or("", |(b, _)| b);
                Location::Here(format!("{base}/{location}"))
            }
        }
    }

    /// `scheme://authority` names this host (perhaps another scheme or
    /// port: the HTTP-to-HTTPS redirect).
    pub(super) fn same_name(&self, other: &str) -> bool {
        other
            .parse::<Uri>()
            .ok()
            .and_then(|u| {
                u.host().map(|h| {
                    h.trim_start_matches('[')
                        .trim_end_matches(']')
                        .to_ascii_lowercase()
                })
            })
            .is_some_and(|h| h == self.t.host.to_ascii_lowercase())
    }

    /// A 502/503/504: says who answered it and why.
    pub(super) fn unavailable(&mut self, url: &str, ex: &Exchange) {
        let prefix = self.prefix_of(url);
        let by_gatehouse = ex.status == StatusCode::SERVICE_UNAVAILABLE
            && ex
                .headers
                .get(&crate::proxy::X_REQUEST_ID)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|id| {
                    String::from_utf8_lossy(&ex.body).contains(&format!("Request ID: {id}"))
                });
        if by_gatehouse {
            let route = self.report_for(&prefix).and_then(|r| r.route.as_ref());
            // Keyed by route: /admin served by `/` is the same cause as `/`.
            let key = route.map_or(prefix.clone(), |r| r.path.clone());
            let why = match route {
                Some(route) => {
                    let servers: Vec<String> = route
                        .servers
                        .iter()
                        .map(|s| match &s.connect_error {
                            Some(e) => format!("{} ({e})", s.address),
                            None if s.marked_down => {
                                format!("{} (marked down after a failure)", s.address)
                            }
                            None if !s.healthy => {
                                format!("{} (failing its health check)", s.address)
                            }
                            None => format!("{} (accepts connections now)", s.address),
                        })
                        .collect();
                    format!(
                        " Its route {} cannot get an answer from {}.",
                        route.path,
                        servers.join(", ")
                    )
                }
                None => String::new(),
            };
            self.out.find(
                "upstream-unavailable",
                Some(&key),
                format!(
                    "Gatehouse answered {url} with 503: the service behind it is down or starting.{why}"
                ),
                FIX_UPSTREAM,
            );
        } else {
            let server = ex
                .headers
                .get(header::SERVER)
                .and_then(|v| v.to_str().ok())
                .map(|s| format!(" (Server: {s})"))
                .unwrap_or_default();
            // One finding however many paths it hit: the cause is the same.
            self.out.find(
                "front-proxy-error",
                None,
                format!(
                    "The proxy in front answered {url} with {} itself{server}: the request \
                     never got an answer from Gatehouse.",
                    ex.status.as_u16()
                ),
                FIX_FRONT,
            );
        }
    }
}

pub(super) fn is_unavailable(s: StatusCode) -> bool {
    matches!(s.as_u16(), 502..=504)
}

/// Where a redirect leads.
pub(super) enum Location {
    /// A target on the host being checked (path and query).
    Here(String),
    /// Another address (`scheme://authority`, or the location as sent
    /// when it does not parse).
    Elsewhere(String),
}
