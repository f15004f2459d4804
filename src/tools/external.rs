//! `gatehouse external KIND --host H --to URL` (issue 5): prints a working
//! configuration for the proxy in front of Gatehouse.
//!
//! Every configuration does the same five things, the ones the common
//! support questions come from: one hostname forwarded with its paths and
//! `Host` as they are, WebSocket upgrades passed (the Blazor Server admin
//! panel), long read timeouts under `/admin`, the forwarding headers, and
//! TLS to Gatehouse verified against Gatehouse's own (self-signed)
//! certificate. Each starts with the `TRUSTED_PROXIES` line Gatehouse needs
//! to believe that proxy's `X-Forwarded-For`.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::process::ExitCode;

use http::Uri;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    Nginx,
    Apache,
    Caddy,
    Traefik,
    Haproxy,
    Cloudflared,
}

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The proxy in front.
    #[arg(value_enum)]
    pub kind: Kind,
    /// The public hostname (Gatehouse's HOSTNAME).
    #[arg(long)]
    pub host: String,
    /// Gatehouse as the proxy in front reaches it, e.g. https://gatehouse:443
    /// or http://127.0.0.1:8080.
    #[arg(long, value_name = "URL")]
    pub to: String,
    /// Where the proxy in front listens for browsers: a port or ADDRESS:PORT.
    #[arg(long, default_value = "443")]
    pub listen: String,
    /// The public certificate chain (PEM). HAProxy wants certificate and
    /// key in this one file.
    #[arg(long, value_name = "PEM")]
    pub cert: Option<String>,
    /// The public certificate's private key (PEM).
    #[arg(long, value_name = "PEM")]
    pub key: Option<String>,
    /// A copy of Gatehouse's certificate (its certificates/ssl/cert.pem),
    /// which the proxy in front trusts when it connects over HTTPS.
    #[arg(long, value_name = "PEM", default_value = "/etc/gatehouse/cert.pem")]
    pub gatehouse_ca: String,
    /// The address range the proxy in front connects to Gatehouse from,
    /// for TRUSTED_PROXIES. Default: derived from --to.
    #[arg(long, value_name = "CIDR")]
    pub trusted: Option<String>,
}

/// Everything the templates need, checked once.
struct Plan {
    kind: Kind,
    host: String,
    https_upstream: bool,
    /// `host:port` of Gatehouse.
    upstream: String,
    upstream_url: String,
    listen_addr: Option<String>,
    listen_port: u16,
    default_listen: bool,
    cert: String,
    key: String,
    /// `--cert` was given (Caddy then does not obtain its own).
    cert_given: bool,
    ca: String,
    trusted: String,
    trusted_guessed: bool,
}

impl Plan {
    /// `ADDRESS:PORT` when an address was given (IPv6 in brackets), else
    /// the proxy's own spelling of "every address" from `all`.
    fn listen_or(&self, all: impl FnOnce(u16) -> String) -> String {
        match &self.listen_addr {
            Some(a) if a.contains(':') => format!("[{a}]:{}", self.listen_port),
            Some(a) => format!("{a}:{}", self.listen_port),
            None => all(self.listen_port),
        }
    }
}

pub fn main(args: &Args) -> ExitCode {
    match render(args) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(crate::config::EXIT_CONFIG)
        }
    }
}

/// The configuration text for `args`.
pub fn render(args: &Args) -> Result<String, String> {
    let plan = plan(args)?;
    let mut out = String::new();
    header(&plan, &mut out);
    match plan.kind {
        Kind::Nginx => nginx(&plan, &mut out),
        Kind::Apache => apache(&plan, &mut out),
        Kind::Caddy => caddy(&plan, &mut out),
        Kind::Traefik => traefik(&plan, &mut out),
        Kind::Haproxy => haproxy(&plan, &mut out),
        Kind::Cloudflared => cloudflared(&plan, &mut out),
    }
    Ok(out)
}

fn plan(args: &Args) -> Result<Plan, String> {
    crate::config::validate_hostname(&args.host).map_err(|e| format!("--host: {e}"))?;
    let to: Uri = args
        .to
        .parse()
        .map_err(|e| format!("--to {}: {e}", args.to))?;
    let https_upstream = match to.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(format!("--to {}: expected http:// or https://", args.to)),
    };
    if to.path() != "/" && !to.path().is_empty() {
        return Err(format!(
            "--to {}: give Gatehouse's address without a path; paths must pass as they are",
            args.to
        ));
    }
    let to_host = to
        .host()
        .ok_or_else(|| format!("--to {}: no host", args.to))?;
    let port = to
        .port_u16()
        .unwrap_or(if https_upstream { 443 } else { 80 });
    let upstream = format!("{to_host}:{port}");
    let scheme = if https_upstream { "https" } else { "http" };
    let (listen_addr, listen_port) = match args.listen.rsplit_once(':') {
        None => (None, args.listen.parse().ok()),
        Some((a, p)) => (
            Some(a.trim_start_matches('[').trim_end_matches(']').to_string()),
            p.parse().ok(),
        ),
    };
    let listen_port = listen_port
        .ok_or_else(|| format!("--listen {}: expected PORT or ADDRESS:PORT", args.listen))?;
    if let Some(a) = &listen_addr {
        a.parse::<IpAddr>()
            .map_err(|_| format!("--listen {}: expected an IP address", args.listen))?;
    }
    let (trusted, trusted_guessed) = match &args.trusted {
        Some(t) => (t.clone(), false),
        None => (guess_trusted(to_host), true),
    };
    let cert_default = if args.kind == Kind::Haproxy {
        format!("/etc/haproxy/certs/{}.pem", args.host)
    } else {
        format!("/etc/letsencrypt/live/{}/fullchain.pem", args.host)
    };
    Ok(Plan {
        kind: args.kind,
        host: args.host.clone(),
        https_upstream,
        upstream_url: format!("{scheme}://{upstream}"),
        upstream,
        default_listen: listen_addr.is_none() && listen_port == 443,
        listen_addr,
        listen_port,
        cert_given: args.cert.is_some(),
        cert: args.cert.clone().unwrap_or(cert_default),
        key: args
            .key
            .clone()
            .unwrap_or_else(|| format!("/etc/letsencrypt/live/{}/privkey.pem", args.host)),
        ca: args.gatehouse_ca.clone(),
        trusted,
        trusted_guessed,
    })
}

/// The range the proxy in front probably connects from: loopback when
/// Gatehouse is on loopback, the Docker-style network around a private
/// address, else unknown.
fn guess_trusted(to_host: &str) -> String {
    let host = to_host.trim_start_matches('[').trim_end_matches(']');
    match host.parse::<IpAddr>() {
        Ok(ip) if ip.is_loopback() => "127.0.0.1/32,::1/128".into(),
        Ok(IpAddr::V4(v4)) if v4.is_private() => {
            let o = v4.octets();
            match o[0] {
                172 => format!("{}.{}.0.0/16", o[0], o[1]),
                _ => format!("{}.{}.{}.0/24", o[0], o[1], o[2]),
            }
        }
        _ if host == "localhost" => "127.0.0.1/32,::1/128".into(),
        // A container name: Docker's default networks.
        _ => "172.16.0.0/12".into(),
    }
}

fn header(p: &Plan, out: &mut String) {
    let _ = writeln!(
        out,
        "# Generated by `gatehouse external` for {}: forwards every path of this",
        p.host
    );
    let _ = writeln!(
        out,
        "# host to Gatehouse at {} unchanged, with WebSocket upgrades and",
        p.upstream_url
    );
    let _ = writeln!(out, "# forwarding headers.");
    let _ = writeln!(out, "#");
    let _ = writeln!(out, "# In Gatehouse's .env:");
    let _ = writeln!(out, "#   HOSTNAME={}", p.host);
    let _ = writeln!(out, "#   TRUSTED_PROXIES={}", p.trusted);
    if p.trusted_guessed {
        let _ = writeln!(
            out,
            "# (TRUSTED_PROXIES: the address this proxy connects from, as Gatehouse sees it;"
        );
        let _ = writeln!(out, "# set it exactly with --trusted CIDR.)");
    }
    if p.https_upstream {
        let _ = writeln!(
            out,
            "# Copy Gatehouse's certificates/ssl/cert.pem to {} so this proxy can verify",
            p.ca
        );
        let _ = writeln!(
            out,
            "# it (it changes when HOSTNAME changes; copy it again then)."
        );
    }
    let _ = writeln!(
        out,
        "# Check the result with: gatehouse doctor https://{}",
        p.host
    );
    let _ = writeln!(out);
}

fn nginx(p: &Plan, out: &mut String) {
    let listen = p.listen_or(|port| port.to_string());
    let _ = writeln!(
        out,
        "# For the http block (e.g. /etc/nginx/conf.d/{}.conf).",
        p.host
    );
    let _ = writeln!(
        out,
        "# WebSockets: Connection follows the client's Upgrade (RFC 9110 §7.8)."
    );
    out.push_str("map $http_upgrade $gatehouse_connection {\n    default upgrade;\n    ''      close;\n}\n\n");
    if p.default_listen {
        let _ = writeln!(
            out,
            "server {{\n    listen 80;\n    listen [::]:80;\n    server_name {};\n    return 301 https://$host$request_uri;\n}}\n",
            p.host
        );
    }
    let _ = writeln!(out, "server {{");
    let _ = writeln!(out, "    listen {listen} ssl http2;");
    if p.default_listen {
        let _ = writeln!(out, "    listen [::]:443 ssl http2;");
    }
    let _ = writeln!(out, "    server_name {};", p.host);
    let _ = writeln!(out, "    ssl_certificate     {};", p.cert);
    let _ = writeln!(out, "    ssl_certificate_key {};", p.key);
    out.push_str(
        "
    # Gatehouse enforces the upload limit (MAX_UPLOAD_SIZE_MB) per route.
    client_max_body_size 0;
    proxy_request_buffering off;

    # HTTP/1.1 to Gatehouse, so upgrades and keep-alive work.
    proxy_http_version 1.1;
    proxy_set_header Host $host;
    proxy_set_header X-Real-IP $remote_addr;
    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    proxy_set_header X-Forwarded-Proto $scheme;
    proxy_set_header X-Forwarded-Host $host;
    proxy_set_header Upgrade $http_upgrade;
    proxy_set_header Connection $gatehouse_connection;
",
    );
    if p.https_upstream {
        let _ = writeln!(
            out,
            "\n    # TLS to Gatehouse, verified against its own certificate."
        );
        let _ = writeln!(out, "    proxy_ssl_server_name on;");
        let _ = writeln!(out, "    proxy_ssl_name {};", p.host);
        let _ = writeln!(out, "    proxy_ssl_verify on;");
        let _ = writeln!(out, "    proxy_ssl_trusted_certificate {};", p.ca);
        let _ = writeln!(out, "    proxy_ssl_session_reuse on;");
    }
    let _ = writeln!(
        out,
        "
    # No URI part after the address: paths reach Gatehouse as they are.
    location / {{
        proxy_pass {url};
        proxy_read_timeout 1h;
    }}

    # The Blazor Server admin panel keeps a WebSocket open for hours.
    location /admin {{
        proxy_pass {url};
        proxy_read_timeout 24h;
        proxy_send_timeout 24h;
    }}
}}",
        url = p.upstream_url
    );
}

fn apache(p: &Plan, out: &mut String) {
    let _ = writeln!(
        out,
        "# Apache 2.4.47 or later. Modules: a2enmod ssl proxy proxy_http headers"
    );
    let vhost = p.listen_or(|port| format!("*:{}", port));
    if !p.default_listen {
        let _ = writeln!(out, "Listen {vhost} https");
    } else {
        let _ = writeln!(
            out,
            "<VirtualHost *:80>\n    ServerName {}\n    Redirect permanent / https://{}/\n</VirtualHost>",
            p.host, p.host
        );
    }
    let _ = writeln!(out, "<VirtualHost {vhost}>");
    let _ = writeln!(out, "    ServerName {}", p.host);
    let _ = writeln!(out, "    SSLEngine on");
    let _ = writeln!(out, "    SSLCertificateFile {}", p.cert);
    let _ = writeln!(out, "    SSLCertificateKeyFile {}", p.key);
    out.push_str(
        "
    # One hostname, passed as is; X-Forwarded-For/-Host come from mod_proxy.
    ProxyRequests Off
    ProxyPreserveHost On
    RequestHeader set X-Forwarded-Proto \"https\"
    # Gatehouse enforces the upload limit itself.
    LimitRequestBody 0
",
    );
    if p.https_upstream {
        let _ = writeln!(
            out,
            "\n    # TLS to Gatehouse, verified against its own certificate."
        );
        let _ = writeln!(out, "    SSLProxyEngine On");
        let _ = writeln!(out, "    SSLProxyVerify require");
        let _ = writeln!(out, "    SSLProxyCACertificateFile {}", p.ca);
        let _ = writeln!(out, "    SSLProxyCheckPeerName On");
        let _ = writeln!(out, "    SSLProxyCheckPeerExpire On");
    }
    let _ = writeln!(
        out,
        "
    # Whole paths, WebSocket upgrades passed; the admin panel's socket
    # stays open for hours (timeout in seconds).
    ProxyPass        /admin {url}/admin upgrade=websocket timeout=86400
    ProxyPassReverse /admin {url}/admin
    ProxyPass        /      {url}/ upgrade=websocket timeout=3600
    ProxyPassReverse /      {url}/
</VirtualHost>",
        url = p.upstream_url
    );
}

fn caddy(p: &Plan, out: &mut String) {
    if !p.default_listen {
        let _ = writeln!(
            out,
            "# This proxy listens on one address only: no HTTP->HTTPS redirect server.\n{{\n    auto_https disable_redirects\n}}\n"
        );
    }
    let site = if p.default_listen {
        p.host.clone()
    } else {
        format!("https://{}:{}", p.host, p.listen_port)
    };
    let _ = writeln!(out, "{site} {{");
    if let Some(a) = &p.listen_addr {
        let _ = writeln!(out, "    bind {a}");
    }
    if p.cert_given {
        let _ = writeln!(
            out,
            "    # Omit this line to let Caddy obtain the certificate itself."
        );
        let _ = writeln!(out, "    tls {} {}", p.cert, p.key);
    } else {
        let _ = writeln!(
            out,
            "    # Caddy obtains and renews the certificate itself (ports 80 and 443 open)."
        );
    }
    let _ = writeln!(
        out,
        "
    # Caddy keeps Host and paths, passes WebSocket upgrades, sets
    # X-Forwarded-For/-Proto/-Host, and has no read timeout on streams.
    reverse_proxy {url} {{",
        url = p.upstream_url
    );
    if p.https_upstream {
        let _ = writeln!(out, "        transport http {{");
        let _ = writeln!(
            out,
            "            # Verify Gatehouse against its own certificate."
        );
        let _ = writeln!(out, "            tls_trusted_ca_certs {}", p.ca);
        let _ = writeln!(out, "            tls_server_name {}", p.host);
        let _ = writeln!(out, "        }}");
    }
    let _ = writeln!(out, "    }}\n}}");
}

fn traefik(p: &Plan, out: &mut String) {
    let _ = writeln!(
        out,
        "# Dynamic configuration (file provider). In the static configuration, give the\n\
         # entry point no read timeout so long uploads and the admin WebSocket last:\n\
         #   entryPoints:\n\
         #     websecure:\n\
         #       address: \":{port}\"\n\
         #       transport:\n\
         #         respondingTimeouts:\n\
         #           readTimeout: 0s\n\
         # Traefik keeps Host and paths (no StripPrefix), passes WebSockets and sets\n\
         # X-Forwarded-For/-Proto/-Host.",
        port = p.listen_port
    );
    let _ = writeln!(out, "http:\n  routers:\n    gatehouse:");
    let _ = writeln!(out, "      rule: \"Host(`{}`)\"", p.host);
    let _ = writeln!(
        out,
        "      entryPoints: [websecure]\n      service: gatehouse"
    );
    let _ = writeln!(out, "      tls: {{}}");
    let _ = writeln!(out, "  services:\n    gatehouse:\n      loadBalancer:");
    let _ = writeln!(out, "        passHostHeader: true");
    let _ = writeln!(
        out,
        "        servers:\n          - url: \"{}\"",
        p.upstream_url
    );
    if p.https_upstream {
        let _ = writeln!(out, "        serversTransport: gatehouse");
        let _ = writeln!(out, "  serversTransports:\n    gatehouse:");
        let _ = writeln!(out, "      # Verify Gatehouse against its own certificate.");
        let _ = writeln!(out, "      serverName: \"{}\"", p.host);
        let _ = writeln!(out, "      rootCAs:\n        - \"{}\"", p.ca);
    }
}

fn haproxy(p: &Plan, out: &mut String) {
    let bind = p.listen_or(|port| format!(":::{} v4v6", port));
    let _ = writeln!(
        out,
        "# haproxy.cfg. The certificate file holds the chain and the key:\n\
         #   cat fullchain.pem privkey.pem > {cert}\n\
         global\n    log stderr format short local0\n\n\
         defaults\n    mode http\n    log global\n    option httplog\n\
         \x20   timeout connect 5s\n    timeout http-request 30s\n\
         \x20   timeout client 1h\n    timeout server 1h\n\
         \x20   # Upgraded connections (the admin panel's WebSocket) last hours.\n\
         \x20   timeout tunnel 24h\n",
        cert = p.cert
    );
    if p.default_listen {
        let _ = writeln!(
            out,
            "frontend gatehouse_http\n    bind :::80 v4v6\n    http-request redirect scheme https code 301\n"
        );
    }
    let _ = writeln!(out, "frontend gatehouse_https");
    let _ = writeln!(out, "    bind {bind} ssl crt {} alpn h2,http/1.1", p.cert);
    let _ = writeln!(
        out,
        "    # Host, paths and WebSocket upgrades pass unchanged.\n\
         \x20   option forwardfor\n\
         \x20   http-request set-header X-Forwarded-Proto https\n\
         \x20   http-request set-header X-Forwarded-Host %[req.hdr(host)]\n\
         \x20   default_backend gatehouse\n"
    );
    let _ = writeln!(out, "backend gatehouse");
    if p.https_upstream {
        let _ = writeln!(
            out,
            "    # TLS to Gatehouse, verified against its own certificate.\n\
             \x20   server gatehouse {} ssl verify required ca-file {} sni str({}) verifyhost {}",
            p.upstream, p.ca, p.host, p.host
        );
    } else {
        let _ = writeln!(out, "    server gatehouse {}", p.upstream);
    }
}

fn cloudflared(p: &Plan, out: &mut String) {
    let _ = writeln!(
        out,
        "# cloudflared config.yml. Turn WebSockets on for the zone in the Cloudflare\n\
         # dashboard (Network). The tunnel keeps Host and paths and sends\n\
         # X-Forwarded-For and CF-Connecting-IP."
    );
    let _ = writeln!(
        out,
        "tunnel: <TUNNEL-ID>\ncredentials-file: /etc/cloudflared/<TUNNEL-ID>.json\ningress:"
    );
    let _ = writeln!(out, "  - hostname: {}", p.host);
    let _ = writeln!(out, "    service: {}", p.upstream_url);
    let _ = writeln!(out, "    originRequest:");
    let _ = writeln!(out, "      httpHostHeader: {}", p.host);
    if p.https_upstream {
        let _ = writeln!(
            out,
            "      # Verify Gatehouse against its own certificate instead of the guide's\n\
             \x20     # \"No TLS Verify\" (noTLSVerify: true works too, without the check)."
        );
        let _ = writeln!(out, "      originServerName: {}", p.host);
        let _ = writeln!(out, "      caPool: {}", p.ca);
    }
    let _ = writeln!(out, "  - service: http_status:404");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(kind: Kind, to: &str) -> Args {
        Args {
            kind,
            host: "vault.example.com".into(),
            to: to.into(),
            listen: "443".into(),
            cert: None,
            key: None,
            gatehouse_ca: "/etc/gatehouse/cert.pem".into(),
            trusted: None,
        }
    }

    #[test]
    fn trusted_range_follows_the_gatehouse_address() {
        assert_eq!(guess_trusted("127.0.0.1"), "127.0.0.1/32,::1/128");
        assert_eq!(guess_trusted("[::1]"), "127.0.0.1/32,::1/128");
        assert_eq!(guess_trusted("172.18.0.5"), "172.18.0.0/16");
        assert_eq!(guess_trusted("192.168.1.20"), "192.168.1.0/24");
        assert_eq!(guess_trusted("gatehouse"), "172.16.0.0/12");
    }

    #[test]
    fn every_kind_names_host_upstream_and_trusted_proxies() {
        for kind in [
            Kind::Nginx,
            Kind::Apache,
            Kind::Caddy,
            Kind::Traefik,
            Kind::Haproxy,
            Kind::Cloudflared,
        ] {
            let text = render(&args(kind, "https://172.18.0.5:443")).unwrap();
            assert!(text.contains("TRUSTED_PROXIES=172.18.0.0/16"), "{kind:?}");
            assert!(text.contains("vault.example.com"), "{kind:?}");
            assert!(text.contains("172.18.0.5:443"), "{kind:?}");
            assert!(
                text.contains("/etc/gatehouse/cert.pem"),
                "{kind:?}: verification"
            );
        }
        let http = render(&args(Kind::Nginx, "http://gatehouse:80")).unwrap();
        assert!(!http.contains("proxy_ssl_verify"));
    }

    #[test]
    fn a_path_in_the_gatehouse_address_is_refused() {
        let e = render(&args(Kind::Nginx, "https://gatehouse/app")).unwrap_err();
        assert!(e.contains("without a path"), "{e}");
        assert!(render(&args(Kind::Nginx, "ftp://gatehouse")).is_err());
    }
}
