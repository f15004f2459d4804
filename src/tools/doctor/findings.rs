//! What `gatehouse doctor` reports: the checks of the Testing list, the
//! findings under their stable ids, and the fix each id comes with.

use std::fmt::Write as _;

use serde::Serialize;

/// One line of the Testing list.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

/// A diagnosed cause, with the fix.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// Stable identifier: `tls-verify`, `unreachable`, `front-proxy-error`,
    /// `upstream-unavailable`, `path-rewritten`, `websocket-headers`,
    /// `websocket-failed`, `host-rewritten`, `moved`, `forwarding-headers`,
    /// `untrusted-proxy`, `https-redirect`, `redirect-loop`, `hostname`,
    /// `route-mismatch`, `unexpected-status`, `diagnostics-unavailable`.
    pub id: &'static str,
    pub path: Option<String>,
    pub message: String,
    pub fix: String,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct Outcome {
    pub url: String,
    pub checks: Vec<Check>,
    pub findings: Vec<Finding>,
}

impl Outcome {
    pub fn ok(&self) -> bool {
        self.findings.is_empty() && self.checks.iter().all(|c| c.ok)
    }

    pub(super) fn has(&self, id: &str, path: Option<&str>) -> bool {
        self.findings
            .iter()
            .any(|f| f.id == id && (path.is_none() || f.path.as_deref() == path))
    }

    pub(super) fn find(
        &mut self,
        id: &'static str,
        path: Option<&str>,
        message: String,
        fix: &str,
    ) {
        if !self.has(id, path) {
            self.findings.push(Finding {
                id,
                path: path.map(str::to_string),
                message,
                fix: fix.to_string(),
            });
        }
    }

    pub(super) fn check(&mut self, name: &str, ok: bool, detail: String) {
        self.checks.push(Check {
            name: name.to_string(),
            ok,
            detail,
        });
    }

    /// The report for a terminal: checks, then numbered findings.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "gatehouse doctor {}", self.url);
        for c in &self.checks {
            let mark = if c.ok { "ok  " } else { "FAIL" };
            let _ = writeln!(out, "  {mark} {:<22} {}", c.name, c.detail);
        }
        if self.findings.is_empty() {
            let _ = writeln!(out, "\nNo problems found.");
        } else {
            let _ = writeln!(out, "\nProblems found:");
            for (i, f) in self.findings.iter().enumerate() {
                let at = f
                    .path
                    .as_deref()
                    .map(|p| format!(" {p}:"))
                    .unwrap_or_default();
                let _ = writeln!(out, "{}. [{}]{at} {}", i + 1, f.id, f.message);
                for line in f.fix.lines() {
                    let _ = writeln!(out, "   {line}");
                }
            }
        }
        out
    }
}

pub(super) const FIX_TLS: &str = "\
If the certificate belongs to the proxy in front, give it one browsers trust (Let's Encrypt).
If it is Gatehouse's self-signed certificate, turn on LETSENCRYPT_ENABLED or [acme], or pass
--ca certificates/ssl/cert.pem to this command to check everything else. A proxy or Cloudflare
Tunnel that connects to Gatehouse must trust that certificate too: `gatehouse external KIND`
prints how (Cloudflare Tunnel: originRequest noTLSVerify, or the certificate as caPool).";

pub(super) const FIX_UNREACHABLE: &str = "\
Check that the name resolves to the server (or use --connect-to HOST:PORT), that the port is
open in the firewall, and that Gatehouse or the proxy in front is running and listening there.";

pub(super) const FIX_FRONT: &str = "\
Point the proxy in front at Gatehouse (its HTTP or HTTPS port), not at the client, api or admin
container. When it connects to Gatehouse over HTTPS it must accept Gatehouse's certificate
(self-signed unless you configured one). `gatehouse external KIND --host H --to URL` prints a
working configuration.";

pub(super) const FIX_UPSTREAM: &str = "\
Start the service behind that route (for AliasVault: `docker compose ps`, then the logs of the
client, api or admin container) or correct the route's upstream address in gatehouse.toml.";

pub(super) const FIX_PATH: &str = "\
Do not strip or rewrite paths: /, /api and /admin must reach Gatehouse as they are.
nginx: `proxy_pass https://gatehouse:443;` with no URI part (no trailing slash or path) in
`location /`. Apache: `ProxyPass / https://gatehouse:443/` for the whole site, not per path.
Traefik: no StripPrefix middleware. Caddy: `reverse_proxy`, not `handle_path`.";

pub(super) const FIX_WEBSOCKET: &str = "\
Pass the WebSocket upgrade through (the admin panel is Blazor Server and needs it).
nginx: `proxy_http_version 1.1; proxy_set_header Upgrade $http_upgrade;
proxy_set_header Connection $connection_upgrade;` with `map $http_upgrade $connection_upgrade
{ default upgrade; '' close; }`. Apache 2.4.47+: `ProxyPass / https://gatehouse/ upgrade=websocket`.
Caddy, Traefik and HAProxy pass upgrades by default; Cloudflare: WebSockets on in the dashboard.";

pub(super) const FIX_HOST: &str = "\
Forward the Host the browser used: nginx `proxy_set_header Host $host;`, Apache
`ProxyPreserveHost On`, HAProxy and Caddy keep it unless told otherwise.";

pub(super) const FIX_FORWARDING: &str = "\
Have the proxy in front send the client's address and scheme: nginx `proxy_set_header
X-Forwarded-For $proxy_add_x_forwarded_for; proxy_set_header X-Forwarded-Proto $scheme;`
(Apache, Caddy, Traefik and HAProxy with `option forwardfor` send them).";

pub(super) const FIX_REDIRECT: &str = "\
Gatehouse redirects plain-HTTP requests to HTTPS. Either point the proxy in front at Gatehouse's
HTTPS port, or let it send `X-Forwarded-Proto: https` from an address in TRUSTED_PROXIES, or set
FORCE_HTTPS_REDIRECT=false when the proxy in front handles HTTPS.";

pub(super) const FIX_ROUTE: &str = "\
Check the routes in gatehouse.toml (`gatehouse check` lists them). For /admin, the address
Gatehouse sees for you must be in ADMIN_IP_ALLOWLIST; behind a proxy that needs TRUSTED_PROXIES.";

pub(super) const FIX_DIAGNOSTICS: &str = "\
Turn the diagnostic endpoint on with the same token: `[diagnostics] token = \"...\"` in
gatehouse.toml or GATEHOUSE_DIAGNOSTICS_TOKEN in .env, then reload Gatehouse.";

pub(super) const FIX_HOSTNAME: &str = "\
All services must be available under the same hostname. Make the proxy in front forward every
path of this host to Gatehouse, and set HOSTNAME to this name.";
