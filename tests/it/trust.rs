//! Issue 3: trusted proxies, PROXY protocol, the admin allowlist, rate
//! limits and connection limits.

use std::sync::atomic::Ordering;

use http::{Request, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::support::*;

fn with_xff(path: &str, xff: &str) -> Request<Body> {
    Request::builder()
        .uri(path)
        .header("host", "vault.example.com")
        .header("x-forwarded-for", xff)
        .body(full(""))
        .unwrap()
}

#[tokio::test]
async fn a_spoofed_forwarded_for_from_an_untrusted_peer_is_ignored() {
    // 127.0.0.1 is not in the default trusted ranges (the private ones).
    let up = echo().await;
    let px = Proxy::start(&format!(
        "force_https_redirect = false\n{}",
        routes(&[("/", &up.url())])
    ))
    .await;
    for proto in [Proto::H1, Proto::TlsH2] {
        let mut req = with_xff("/", "10.1.1.1");
        req.headers_mut()
            .insert("x-forwarded-proto", "https".parse().unwrap());
        let seen = px.send(proto, req).await.unwrap().seen();
        assert_eq!(seen.header("x-real-ip"), Some("127.0.0.1"), "{proto:?}");
        assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
        let scheme = if proto == Proto::H1 { "http" } else { "https" };
        assert_eq!(
            seen.header("x-forwarded-proto"),
            Some(scheme),
            "not believed"
        );
    }
    px.stop().await;
}

#[tokio::test]
async fn a_chain_through_two_trusted_hops_resolves_to_the_real_client() {
    let up = echo().await;
    let toml = format!(
        "force_https_redirect = false\ntrusted_proxies = [\"127.0.0.1\", \"10.0.0.0/8\"]\n{}",
        routes(&[("/", &up.url())])
    );
    let px = Proxy::start(&toml).await;
    for proto in [Proto::H1, Proto::TlsH1, Proto::TlsH2] {
        // spoofed, real client, first trusted hop; the peer is the second.
        let mut req = with_xff("/", "6.6.6.6, 198.51.100.7, 10.0.0.2");
        req.headers_mut()
            .insert("x-forwarded-proto", "https".parse().unwrap());
        req.headers_mut()
            .insert("x-forwarded-host", "public.example.com".parse().unwrap());
        let seen = px.send(proto, req).await.unwrap().seen();
        assert_eq!(seen.header("x-real-ip"), Some("198.51.100.7"), "{proto:?}");
        assert_eq!(seen.all("x-forwarded-for"), ["198.51.100.7"], "{proto:?}");
        // A TLS-terminating proxy in front: its scheme and host are believed.
        assert_eq!(seen.header("x-forwarded-proto"), Some("https"), "{proto:?}");
        assert_eq!(seen.header("x-forwarded-host"), Some("public.example.com"));
    }
    px.stop().await;
}

#[tokio::test]
async fn trusted_proxies_variable_follows_aliasvault_rules() {
    let up = echo().await;
    let toml = format!(
        "force_https_redirect = false\n{}",
        routes(&[("/", &up.url())])
    );
    // Invalid tokens are skipped; the valid one makes loopback trusted.
    let px = Proxy::start_env(
        &toml,
        &[("TRUSTED_PROXIES", "bogus, 127.0.0.1,300.0.0.1/8")],
    )
    .await;
    let seen = px
        .send(Proto::H1, with_xff("/", "198.51.100.7"))
        .await
        .unwrap()
        .seen();
    assert_eq!(seen.header("x-real-ip"), Some("198.51.100.7"));
    px.stop().await;
    // `none` trusts nobody, whatever the file says.
    let toml2 = format!("trusted_proxies = [\"127.0.0.1\"]\n{toml}");
    let px = Proxy::start_env(&toml2, &[("TRUSTED_PROXIES", "none")]).await;
    let seen = px
        .send(Proto::H1, with_xff("/", "198.51.100.7"))
        .await
        .unwrap()
        .seen();
    assert_eq!(seen.header("x-real-ip"), Some("127.0.0.1"));
    px.stop().await;
    // No valid token: nobody.
    let px = Proxy::start_env(&toml2, &[("TRUSTED_PROXIES", "bogus")]).await;
    let seen = px
        .send(Proto::H1, with_xff("/", "198.51.100.7"))
        .await
        .unwrap()
        .seen();
    assert_eq!(seen.header("x-real-ip"), Some("127.0.0.1"));
    px.stop().await;
}

fn proxy_v2(src: [u8; 4], port: u16) -> Vec<u8> {
    let mut b = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    b.extend_from_slice(&[0x21, 0x11, 0, 12]);
    b.extend_from_slice(&src);
    b.extend_from_slice(&[127, 0, 0, 1]);
    b.extend_from_slice(&port.to_be_bytes());
    b.extend_from_slice(&443u16.to_be_bytes());
    b
}

#[tokio::test]
async fn proxy_protocol_from_a_trusted_peer_sets_the_client_address() {
    let up = echo().await;
    let toml = format!(
        "force_https_redirect = false\ntrusted_proxies = [\"127.0.0.1\"]\n[listener]\nproxy_protocol = true\n\n{}",
        routes(&[("/", &up.url())])
    );
    let px = Proxy::start(&toml).await;
    // v1 on the HTTP port.
    let out = raw(
        px.http,
        b"PROXY TCP4 198.51.100.21 127.0.0.1 40000 80\r\nGET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(out.contains("\nx-real-ip: 198.51.100.21\n"), "{out}");
    // v2 on the HTTP port.
    let mut bytes = proxy_v2([198, 51, 100, 22], 40001);
    bytes.extend_from_slice(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n");
    let out = raw(px.http, &bytes).await;
    assert!(out.contains("\nx-real-ip: 198.51.100.22\n"), "{out}");
    // v2 then TLS on the HTTPS port.
    let mut tcp = TcpStream::connect(px.https).await.unwrap();
    tcp.write_all(&proxy_v2([198, 51, 100, 23], 40002))
        .await
        .unwrap();
    let connector = tokio_rustls::TlsConnector::from(tls_client(&px.cert_path(), &[b"http/1.1"]));
    let mut tls = within(connector.connect("localhost".try_into().unwrap(), tcp))
        .await
        .unwrap();
    tls.write_all(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    let _ = within(tls.read_to_string(&mut out)).await;
    assert!(out.contains("\nx-real-ip: 198.51.100.23\n"), "{out}");
    // Without a header, a direct client is served as itself.
    let out = raw(
        px.http,
        b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(out.contains("\nx-real-ip: 127.0.0.1\n"), "{out}");
    px.stop().await;
}

#[tokio::test]
async fn proxy_protocol_from_an_untrusted_peer_is_refused() {
    let up = echo().await;
    let toml = format!(
        "force_https_redirect = false\n[listener]\nproxy_protocol = true\n\n{}",
        routes(&[("/", &up.url())])
    );
    let px = Proxy::start(&toml).await;
    let out = raw(
        px.http,
        b"PROXY TCP4 198.51.100.21 127.0.0.1 40000 80\r\nGET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(out, "", "connection must be closed without an answer");
    assert_eq!(up.connections.load(Ordering::SeqCst), 0);
    // The same client without the header is fine.
    let out = raw(
        px.http,
        b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    px.stop().await;
}

/// AliasVault's layout with the allowlist: which upstream answered?
async fn allowlist_proxy(env: &[(&str, &str)], admin_extra: &str) -> (Proxy, Upstream, Upstream) {
    let admin = fixed(200, "admin panel").await;
    let client = fixed(200, "client app").await;
    let toml = format!(
        "force_https_redirect = false\ntrusted_proxies = [\"127.0.0.1\"]\n[[route]]\npath = \"/admin\"\nupstream = \"{}\"\n{admin_extra}\n\n{}",
        admin.url(),
        routes(&[("/", &client.url())])
    );
    (Proxy::start_env(&toml, env).await, admin, client)
}

#[tokio::test]
async fn admin_allowlist_falls_through_to_the_client_app() {
    let (px, _a, _c) =
        allowlist_proxy(&[("ADMIN_IP_ALLOWLIST", "198.51.100.0/24, bogus")], "").await;
    for proto in [Proto::H1, Proto::TlsH2] {
        let res = px
            .send(proto, with_xff("/admin/login", "198.51.100.7"))
            .await
            .unwrap();
        assert_eq!(res.text(), "admin panel", "{proto:?} allowed");
        let res = px
            .send(proto, with_xff("/admin/login", "203.0.113.9"))
            .await
            .unwrap();
        assert_eq!(res.status, StatusCode::OK);
        assert_eq!(
            res.text(),
            "client app",
            "{proto:?} denied: silently the SPA"
        );
        // Loopback is always allowed.
        let res = px.send(proto, get("/admin", "h")).await.unwrap();
        assert_eq!(res.text(), "admin panel");
    }
    px.stop().await;
}

#[tokio::test]
async fn admin_allowlist_private_and_fail_closed() {
    let (px, _a, _c) = allowlist_proxy(&[("ADMIN_IP_ALLOWLIST", "private")], "").await;
    assert_eq!(
        px.send(Proto::H1, with_xff("/admin", "192.168.1.20"))
            .await
            .unwrap()
            .text(),
        "admin panel"
    );
    assert_eq!(
        px.send(Proto::H1, with_xff("/admin", "198.51.100.7"))
            .await
            .unwrap()
            .text(),
        "client app"
    );
    px.stop().await;
    // Tokens given, none valid: everyone but loopback is denied.
    let (px, _a, _c) = allowlist_proxy(&[("ADMIN_IP_ALLOWLIST", "bogus,also bogus")], "").await;
    assert_eq!(
        px.send(Proto::H1, with_xff("/admin", "192.168.1.20"))
            .await
            .unwrap()
            .text(),
        "client app"
    );
    assert_eq!(
        px.send(Proto::H1, get("/admin", "h")).await.unwrap().text(),
        "admin panel"
    );
    px.stop().await;
}

#[tokio::test]
async fn on_deny_forbidden_and_file_rules() {
    let (px, _a, _c) = allowlist_proxy(
        &[],
        "allow = [\"198.51.100.0/24\"]\ndeny = [\"198.51.100.66\"]\non_deny = \"forbidden\"",
    )
    .await;
    let res = px
        .send(Proto::TlsH1, with_xff("/admin", "198.51.100.7"))
        .await
        .unwrap();
    assert_eq!(res.text(), "admin panel");
    for ip in ["198.51.100.66", "203.0.113.1"] {
        let res = px.send(Proto::TlsH1, with_xff("/admin", ip)).await.unwrap();
        assert_eq!(res.status, StatusCode::FORBIDDEN, "{ip}");
        assert_eq!(res.header("x-frame-options"), Some("SAMEORIGIN"));
        assert!(!res.text().contains("admin panel"));
    }
    px.stop().await;
}

#[tokio::test]
async fn rate_limit_answers_429_with_retry_after_after_the_burst() {
    let up = echo().await;
    let toml = format!(
        "force_https_redirect = false\ntrusted_proxies = [\"127.0.0.1\"]\n[[route]]\npath = \"/api/v1/Auth\"\nupstream = \"{}\"\nrate_limit = {{ per_second = 0.5, burst = 3 }}\n\n{}",
        up.url(),
        routes(&[("/", &up.url())])
    );
    let px = Proxy::start(&toml).await;
    for i in 0..3 {
        let res = px
            .send(Proto::TlsH2, with_xff("/api/v1/Auth/login", "198.51.100.7"))
            .await
            .unwrap();
        assert_eq!(res.status, StatusCode::OK, "request {i} within the burst");
    }
    let res = px
        .send(Proto::TlsH2, with_xff("/api/v1/Auth/login", "198.51.100.7"))
        .await
        .unwrap();
    assert_eq!(res.status, StatusCode::TOO_MANY_REQUESTS);
    // 2 s until the next request is allowed, counted from the fourth
    // request; the three before it may have taken a second of that.
    let retry_after: u64 = res.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry_after), "Retry-After {retry_after}");
    assert_eq!(res.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(
        res.header("strict-transport-security"),
        Some("max-age=31536000")
    );
    // Keyed by the resolved client: another client is unaffected, and so is
    // another route.
    let res = px
        .send(Proto::TlsH2, with_xff("/api/v1/Auth/login", "198.51.100.8"))
        .await
        .unwrap();
    assert_eq!(res.status, StatusCode::OK);
    let res = px
        .send(Proto::TlsH2, with_xff("/other", "198.51.100.7"))
        .await
        .unwrap();
    assert_eq!(res.status, StatusCode::OK);
    // IPv6 clients share their /64.
    for (i, ip) in [
        "2001:db8:1:2::1",
        "2001:db8:1:2::2",
        "2001:db8:1:2::3",
        "2001:db8:1:2::4",
    ]
    .iter()
    .enumerate()
    {
        let res = px
            .send(Proto::H1, with_xff("/api/v1/Auth/x", ip))
            .await
            .unwrap();
        let want = if i < 3 {
            StatusCode::OK
        } else {
            StatusCode::TOO_MANY_REQUESTS
        };
        assert_eq!(res.status, want, "{ip}");
    }
    px.stop().await;
}

async fn connect_from(src: &str, to: std::net::SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(format!("{src}:0").parse().unwrap()).unwrap();
    within(s.connect(to)).await.unwrap()
}

/// True when the peer closed the connection without sending anything.
async fn closed_silently(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    matches!(within(s.read(&mut buf)).await, Ok(0) | Err(_))
}

#[tokio::test]
async fn per_address_and_total_connection_limits() {
    let up = echo().await;
    let toml = format!(
        "force_https_redirect = false\n[listener]\nmax_connections_per_ip = 2\nmax_connections = 4\n\n{}",
        routes(&[("/", &up.url())])
    );
    let px = Proxy::start(&toml).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = connect_from("127.0.0.1", px.http).await;
        s.write_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 12];
        within(s.read_exact(&mut buf)).await.unwrap();
        held.push(s);
    }
    let mut third = connect_from("127.0.0.1", px.http).await;
    third
        .write_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    assert!(
        closed_silently(&mut third).await,
        "third connection from one address is refused"
    );
    // Another address is served.
    let mut other = connect_from("127.0.0.2", px.http).await;
    other
        .write_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 12];
    within(other.read_exact(&mut buf)).await.unwrap();
    assert_eq!(&buf, b"HTTP/1.1 200");
    held.push(other);
    let mut fourth = connect_from("127.0.0.3", px.http).await;
    fourth
        .write_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    within(fourth.read_exact(&mut buf)).await.unwrap();
    held.push(fourth);
    // Four open, all idle between requests: a fifth from anywhere is let in
    // and the longest-idle one is closed to make room (issue 10 point 5).
    let mut fifth = connect_from("127.0.0.4", px.http).await;
    fifth
        .write_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    within(fifth.read_exact(&mut buf)).await.unwrap();
    assert_eq!(&buf, b"HTTP/1.1 200", "admitted at the total limit");
    let mut oldest = held.remove(0);
    let mut rest = Vec::new();
    within(oldest.read_to_end(&mut rest)).await.unwrap();
    assert!(
        !String::from_utf8_lossy(&rest).contains("HTTP/1.1 200 OK\r\nx"),
        "the oldest idle connection was closed"
    );
    held.push(fifth);
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let mut again = connect_from("127.0.0.1", px.http).await;
        again
            .write_all(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = Vec::new();
        let _ = within(again.read_to_end(&mut out)).await;
        if out.starts_with(b"HTTP/1.1 200") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "slot never released"
        );
        tokio::task::yield_now().await;
    }
    px.stop().await;
}

#[tokio::test]
async fn a_slow_request_head_is_cut_off() {
    let up = echo().await;
    let toml = format!(
        "force_https_redirect = false\n[listener]\nheader_timeout = \"300ms\"\n\n{}",
        routes(&[("/", &up.url())])
    );
    let px = Proxy::start(&toml).await;
    let mut s = TcpStream::connect(px.http).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: h\r\nX-Slow: ")
        .await
        .unwrap();
    // The head never completes: the proxy closes the connection.
    let mut out = Vec::new();
    let _ = within(s.read_to_end(&mut out)).await;
    assert!(!String::from_utf8_lossy(&out).contains("200"), "{out:?}");
    assert_eq!(up.connections.load(Ordering::SeqCst), 0);
    px.stop().await;
}

#[tokio::test]
async fn https_from_a_trusted_proxy_on_the_http_port_is_not_redirected() {
    // A proxy in front that terminated TLS and forwards to the HTTP port
    // (issue 5's doctor finding `https-redirect`): redirecting would loop.
    let up = echo().await;
    let toml = routes(&[("/", &up.url())]);
    let trusted = Proxy::start(&format!("trusted_proxies = [\"127.0.0.1\"]\n{toml}")).await;
    let mut req = with_xff("/x", "203.0.113.9");
    req.headers_mut()
        .insert("x-forwarded-proto", "https".parse().unwrap());
    let res = within(trusted.send(Proto::H1, req)).await.unwrap();
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(res.seen().header("x-forwarded-proto"), Some("https"));
    // Plain HTTP from the same proxy still gets the redirect.
    let res = within(trusted.send(Proto::H1, with_xff("/x", "203.0.113.9")))
        .await
        .unwrap();
    assert_eq!(res.status, StatusCode::MOVED_PERMANENTLY);
    trusted.stop().await;

    // The same claim from an untrusted peer is not believed.
    let untrusted = Proxy::start(&toml).await;
    let mut req = with_xff("/x", "203.0.113.9");
    req.headers_mut()
        .insert("x-forwarded-proto", "https".parse().unwrap());
    let res = within(untrusted.send(Proto::H1, req)).await.unwrap();
    assert_eq!(res.status, StatusCode::MOVED_PERMANENTLY);
    untrusted.stop().await;
}
