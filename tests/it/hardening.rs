//! Issue 10: the defects an outside security battery and code review found
//! in the request path, one test (or more) per numbered defect, on real
//! sockets against real upstreams.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

/// The proxy with one route to an echo upstream, serving on both ports.
async fn echo_proxy() -> (Proxy, Upstream) {
    let up = echo().await;
    let px = Proxy::start(&format!(
        "force_https_redirect = false\n{}",
        route("/", &up.url(), "")
    ))
    .await;
    (px, up)
}

/// Sends `head`, then `body` in `pieces` equal parts `gap` apart (a slow
/// client, by design), and reads the whole answer.
async fn slow_post(
    addr: std::net::SocketAddr,
    head: &str,
    body: &[u8],
    pieces: usize,
    gap: Duration,
) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    let step = body.len().div_ceil(pieces);
    for part in body.chunks(step) {
        // Pacing the client is the behaviour under test, not a wait for
        // the proxy.
        tokio::time::sleep(gap).await;
        if s.write_all(part).await.is_err() {
            break;
        }
    }
    let mut out = Vec::new();
    let _ = within(s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

// ------------------------------------------------------------ 1 and 6

/// Uploads `len` bytes of `byte` in `parts` pieces `gap` apart through a
/// route whose response timeout is 400 ms, with the given
/// `request_buffer`, and checks the echo upstream answered with the whole
/// body (defect 1: the upload's time is the client's).
async fn slow_upload_is_answered(
    request_buffer: &str,
    byte: u8,
    len: usize,
    parts: usize,
    gap: Duration,
) {
    let up = echo().await;
    let px = Proxy::start(&format!(
        "force_https_redirect = false\nrequest_buffer = \"{request_buffer}\"\n{}",
        route("/", &up.url(), "timeout = \"400ms\"")
    ))
    .await;
    let body = vec![byte; len];
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let out = slow_post(px.http, &head, &body, parts, gap).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(
        out.ends_with(&String::from(char::from(byte)).repeat(len)),
        "the whole body arrived"
    );
    px.stop().await;
}

/// Defect 1: a body sent slower than the route's `timeout` is the client's
/// time; the response timeout starts once it has been forwarded.
#[tokio::test]
async fn a_slow_upload_is_answered_not_timed_out() {
    // 6 KiB over about 1.2 s: three times the route's timeout, and more
    // than request_buffer so it streams to the upstream.
    slow_upload_is_answered("1K", b'x', 6 * 1024, 6, Duration::from_millis(200)).await;
}

/// Defect 1 with the body buffered whole (`request_buffer` holds it): the
/// upload's time is still the client's; the response timeout runs from
/// when the buffered request is sent, not from the request's start.
#[tokio::test]
async fn a_slow_buffered_upload_is_answered_not_timed_out() {
    // 2 KiB over about 0.9 s: more than twice the route's timeout, all of
    // it within request_buffer.
    slow_upload_is_answered("64K", b'y', 2 * 1024, 3, Duration::from_millis(300)).await;
}

/// Defect 1 (the other half) and defect 6: a client that stops sending its
/// body gets 408 after `client_body_timeout`, and a body within
/// `request_buffer` never reached the upstream meanwhile.
#[tokio::test]
async fn a_stalled_body_is_408_and_never_reaches_the_upstream() {
    let up = echo().await;
    let px = Proxy::start(&format!(
        "force_https_redirect = false\nclient_body_timeout = \"300ms\"\n{}",
        route("/", &up.url(), "")
    ))
    .await;
    let mut s = TcpStream::connect(px.http).await.unwrap();
    s.write_all(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\nonly part")
        .await
        .unwrap();
    let mut out = Vec::new();
    within(s.read_to_end(&mut out)).await.unwrap();
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 408"), "{out}");
    assert_eq!(
        up.connections.load(Ordering::SeqCst),
        0,
        "a slow body within request_buffer reached the upstream"
    );
    px.stop().await;
}

// ------------------------------------------------------------------ 2

/// Defect 2: `Upgrade: h2c` (or any token but websocket) is not tunnelled;
/// a 101 is accepted only for the protocol the client asked for.
#[tokio::test]
async fn only_allowed_upgrade_tokens_are_tunnelled() {
    let (px, _up) = echo_proxy().await;
    let out = raw(
        px.http,
        b"GET /anything HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, HTTP2-Settings, close\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
    )
    .await;
    // The echo upstream answers a plain request, with what it saw.
    let resp = out.split("\r\n\r\n").nth(1).unwrap_or("");
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(!resp.to_ascii_lowercase().contains("upgrade"), "{out}");
    assert!(
        !resp.to_ascii_lowercase().contains("http2-settings"),
        "{out}"
    );
    px.stop().await;

    // An upstream that switches to h2c whatever it was asked.
    let rogue = raw_upstream(|mut s| async move {
        let _ = s
            .write_all(
                b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
            )
            .await;
        let mut buf = [0u8; 1024];
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0
                || s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\ninside")
                    .await
                    .is_err()
            {
                break;
            }
        }
    })
    .await;
    let px = Proxy::start(&format!(
        "force_https_redirect = false\n{}",
        route("/", &format!("http://{rogue}"), "")
    ))
    .await;
    for req in [
        &b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"[..],
        b"GET /plain HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
        b"GET /plain HTTP/1.1\r\nHost: h\r\n\r\n",
    ] {
        let mut s = TcpStream::connect(px.http).await.unwrap();
        s.write_all(req).await.unwrap();
        let mut head = [0u8; 12];
        within(s.read_exact(&mut head)).await.unwrap();
        assert_eq!(&head, b"HTTP/1.1 503", "{}", String::from_utf8_lossy(req));
    }
    px.stop().await;
}

// ------------------------------------------------------------------ 3

/// Defect 3: route rules see the normal form of the path, so an upstream
/// that normalises cannot be reached around them; the target still goes
/// upstream byte for byte.
#[tokio::test]
async fn route_rules_match_the_normalised_path() {
    let (open, private, login) = (echo().await, echo().await, echo().await);
    let toml = format!(
        "force_https_redirect = false\n{}{}{}",
        route(
            "/private",
            &private.url(),
            "allow = [\"10.0.0.0/8\"]\non_deny = \"forbidden\""
        ),
        route(
            "/login",
            &login.url(),
            "rate_limit = { per_second = 0.001, burst = 1 }"
        ),
        route("/", &open.url(), "")
    );
    let px = Proxy::start(&toml).await;
    let status = async |target: &str| {
        let req = format!("GET {target} HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n");
        let out = raw(px.http, req.as_bytes()).await;
        out.get(9..12).unwrap_or("").to_string()
    };
    for target in [
        "/private/x",
        "/%70rivate/x",
        "/./private/x",
        "//private/x",
        "/a/../private/x",
        "/private;a/x",
    ] {
        assert_eq!(status(target).await, "403", "{target}");
    }
    assert_eq!(status("/private%2fx").await, "400");
    assert_eq!(status("/x%00y").await, "400");
    assert_eq!(private.connections.load(Ordering::SeqCst), 0);
    assert_eq!(status("/login").await, "200");
    for target in ["/%6cogin", "/./login", "//login", "/a/../login", "/login;a"] {
        assert_eq!(status(target).await, "429", "{target}");
    }
    // Allowed requests keep their bytes.
    let out = raw(
        px.http,
        b"GET /a/./b//%41%2e?q=%2e HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        out.contains("\nGET /a/./b//%41%2e?q=%2e HTTP/1.1\n"),
        "{out}"
    );
    px.stop().await;
}

/// Defect 3: `case_insensitive` routes (on for `/api` and `/admin` in the
/// built-in layout) and `allow_encoded_slash`.
#[tokio::test]
async fn case_insensitive_routes_and_encoded_slashes() {
    let (api, root) = (echo().await, echo().await);
    let toml = format!(
        "force_https_redirect = false\n{}{}",
        route(
            "/api",
            &api.url(),
            "case_insensitive = true\nallow_encoded_slash = true\nrate_limit = { per_second = 0.001, burst = 1 }"
        ),
        route("/", &root.url(), "")
    );
    let px = Proxy::start(&toml).await;
    let out = raw(
        px.http,
        b"GET /API/v1/%41uth HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(out.contains("\nGET /API/v1/%41uth HTTP/1.1\n"), "{out}");
    let out = raw(
        px.http,
        b"GET /Api/a%2Fb HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        out.starts_with("HTTP/1.1 429"),
        "the same limit for any case: {out}"
    );
    assert_eq!(root.connections.load(Ordering::SeqCst), 0);
    px.stop().await;
    // The built-in layout.
    let cfg = gatehouse::config::load(
        &gatehouse::config::Source::BuiltIn,
        &gatehouse::config::Env::from_pairs([]),
    )
    .unwrap();
    let ci: Vec<(&str, bool)> = cfg
        .routes
        .iter()
        .map(|r| (r.path.as_str(), r.case_insensitive))
        .collect();
    assert_eq!(ci, [("/admin", true), ("/api", true), ("/", false)]);
}

// ------------------------------------------------------------------ 4

/// Defect 4: RFC 9112 §3.2 Host rules over HTTP/1.
#[tokio::test]
async fn invalid_host_values_are_400_and_not_forwarded() {
    let up = echo().await;
    let px = Proxy::start(&format!(
        "force_https_redirect = false\nhostname = \"vault.example\"\n{}",
        route("/", &up.url(), "")
    ))
    .await;
    for (what, req) in [
        (
            "two Host",
            &b"GET / HTTP/1.1\r\nHost: localhost\r\nHost: evil\r\n\r\n"[..],
        ),
        ("space", b"GET / HTTP/1.1\r\nHost: local host\r\n\r\n"),
        ("path", b"GET / HTTP/1.1\r\nHost: localhost/admin\r\n\r\n"),
        ("missing in 1.1", b"GET / HTTP/1.1\r\n\r\n"),
        ("bad port", b"GET / HTTP/1.1\r\nHost: localhost:8x\r\n\r\n"),
    ] {
        let out = raw(px.http, req).await;
        assert!(out.starts_with("HTTP/1.1 400"), "{what}: {out}");
    }
    assert_eq!(up.connections.load(Ordering::SeqCst), 0);
    // HTTP/1.0 without Host is valid: served, with the configured name.
    let out = raw(px.http, b"GET /old HTTP/1.0\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.0 200"), "{out}");
    assert!(out.contains("\nhost: vault.example\n"), "{out}");
    for ok in [
        "[::1]:8443",
        "127.0.0.1",
        "vault.example:443",
        "xn--bcher-kva.example",
    ] {
        let req = format!("GET / HTTP/1.1\r\nHost: {ok}\r\nConnection: close\r\n\r\n");
        assert!(
            raw(px.http, req.as_bytes())
                .await
                .starts_with("HTTP/1.1 200"),
            "{ok}"
        );
    }
    px.stop().await;
}

/// Defect 4: HTTP/2 `:authority` and a different `host` (RFC 9113 §8.3.1).
#[tokio::test]
async fn http2_authority_and_host_that_differ_are_refused() {
    let (px, up) = echo_proxy().await;
    let mut h2 = H2::connect(&px).await;
    h2.headers(1, &[(b"host", b"evil.example")]).await;
    h2.headers(3, &[(b"host", b"localhost")]).await;
    let frames = h2.until_answered(&[1, 3]).await;
    assert!(!H2::ok(&frames, 1), "forwarded: {frames:?}");
    assert!(
        H2::ok(&frames, 3),
        "the same Host as :authority is served: {frames:?}"
    );
    assert_eq!(
        up.connections.load(Ordering::SeqCst),
        1,
        "only stream 3 reached it"
    );
    px.stop().await;
}

// ------------------------------------------------------------------ 5

/// Defect 5: at `max_connections`, idle connections (never sent a complete
/// head, or between requests) make room for new ones, oldest first.
#[tokio::test]
async fn idle_connections_do_not_lock_clients_out() {
    let up = echo().await;
    let px = Proxy::start(&format!(
        "force_https_redirect = false\n[listener]\nmax_connections = 20\nmax_connections_per_ip = 1000\n\n{}",
        route("/", &up.url(), "")
    ))
    .await;
    // 20 idle connections: 10 that sent half a head, 10 that sent nothing.
    let mut idle = Vec::new();
    for i in 0..20 {
        let mut s = TcpStream::connect(px.http).await.unwrap();
        if i % 2 == 0 {
            s.write_all(b"GET / HTTP/1.1\r\nHost").await.unwrap();
        }
        idle.push(s);
    }
    // Every request of a normal client succeeds.
    for i in 0..30 {
        let out = raw(
            px.http,
            format!("GET /n{i} HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert!(out.starts_with("HTTP/1.1 200"), "request {i}: {out:?}");
    }
    // The oldest idle connection was among those closed.
    let mut buf = [0u8; 16];
    assert!(matches!(
        within(idle[0].read(&mut buf)).await,
        Ok(0) | Err(_)
    ));
    px.stop().await;
}

/// Defect 5: `keepalive_timeout` bounds the wait between requests on its
/// own, apart from the header timeout.
#[tokio::test]
async fn keepalive_timeout_closes_idle_keep_alive_connections() {
    let up = echo().await;
    let px = Proxy::start(&format!(
        "force_https_redirect = false\n[listener]\nkeepalive_timeout = \"300ms\"\nheader_timeout = \"60s\"\n\n{}",
        route("/", &up.url(), "")
    ))
    .await;
    let mut s = TcpStream::connect(px.http).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let mut out = Vec::new();
    // Ends only when the proxy closes the idle connection.
    within(s.read_to_end(&mut out)).await.unwrap();
    assert!(out.starts_with(b"HTTP/1.1 200"));
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "closed by keepalive_timeout, not header_timeout"
    );
    px.stop().await;
}

// ------------------------------------------------------------------ 7

/// Defect 7: the framing rules hold for every request on a connection,
/// after an `Upgrade` request that was not upgraded too; a refused CONNECT
/// closes the connection.
#[tokio::test]
async fn framing_rules_hold_after_an_upgrade_request_and_connect() {
    let (px, up) = echo_proxy().await;
    let out = raw(
        px.http,
        b"GET /first HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: foo\r\n\r\n\
POST /second HTTP/1.1\r\nHost: h\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("GET /first"), "{out}");
    assert!(
        out.contains("HTTP/1.1 400"),
        "the second request is refused: {out}"
    );
    assert!(!out.contains("POST /second"), "{out}");
    assert!(!out.contains("/smuggled"), "{out}");
    let out = raw(
        px.http,
        b"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\nPOST /after HTTP/1.1\r\nHost: h\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 405"), "{out}");
    assert_eq!(
        out.matches("HTTP/1.1 ").count(),
        1,
        "closed after the 405: {out}"
    );
    assert_eq!(up.connections.load(Ordering::SeqCst), 1);
    px.stop().await;
}

// ------------------------------------------------------------------ 8

/// Defect 8: `gzip, chunked` is 501 (RFC 9112 §6.1); `chunked` twice 400.
#[tokio::test]
async fn transfer_codings_other_than_one_chunked_are_refused() {
    let (px, up) = echo_proxy().await;
    for (te, want) in [
        ("Transfer-Encoding: gzip, chunked\r\n", "501"),
        ("Transfer-Encoding: chunked, chunked\r\n", "400"),
        (
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
            "400",
        ),
    ] {
        let req = format!("POST / HTTP/1.1\r\nHost: h\r\n{te}\r\n5\r\nhello\r\n0\r\n\r\n");
        let out = raw(px.http, req.as_bytes()).await;
        assert_eq!(out.get(9..12), Some(want), "{te}: {out}");
    }
    assert_eq!(up.connections.load(Ordering::SeqCst), 0);
    px.stop().await;
}

// ------------------------------------------------------------------ 9

/// Defect 9: a chunked body on GET reaches the upstream, small (read
/// ahead, sent with its length) or large (streamed, chunked).
#[tokio::test]
async fn a_chunked_body_on_get_is_forwarded() {
    let up = echo().await;
    let px = Proxy::start(&format!(
        "force_https_redirect = false\nrequest_buffer = \"1K\"\n{}",
        route("/", &up.url(), "")
    ))
    .await;
    let out = raw(
        px.http,
        b"GET /q HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert!(out.ends_with("\n\nhello"), "{out}");
    let big = "y".repeat(4000);
    let req = format!(
        "GET /q HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{big}\r\n0\r\n\r\n",
        big.len()
    );
    let out = raw(px.http, req.as_bytes()).await;
    assert!(out.ends_with(&format!("\n\n{big}")), "{out}");
    px.stop().await;
}

// ----------------------------------------------------------------- 10

/// Defect 10: what peers send cannot write unbounded log lines: 1,000
/// unsolicited PING ACKs, and 300 requests to an upstream that is down.
#[tokio::test]
async fn peers_cannot_flood_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let refused = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    std::fs::write(
        dir.path().join("gatehouse.toml"),
        format!(
            "http_port = 0\nhttps_port = 0\nbind = [\"127.0.0.1\"]\nforce_https_redirect = false\nlog_format = \"off\"\n[metrics]\nenabled = false\n\n{}",
            route("/", &format!("http://{refused}"), "")
        ),
    )
    .unwrap();
    let mut p = Running::spawn(dir.path(), &[], &[]);
    let https = p.port_after("listening on https://127.0.0.1:").await;
    let http = std::net::SocketAddr::from((
        [127, 0, 0, 1],
        p.port_after("listening on http://127.0.0.1:").await,
    ));
    let cert = dir.path().join("certificates/ssl/cert.pem");
    let https_addr = std::net::SocketAddr::from(([127, 0, 0, 1], https));
    let mut tls = tls_connect(https_addr, &cert, &[b"h2"]).await.unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    for i in 0..1000u64 {
        // PING with the ACK flag, never asked for.
        out.extend_from_slice(&[0, 0, 8, 6, 1, 0, 0, 0, 0]);
        out.extend_from_slice(&i.to_be_bytes());
    }
    within(tls.write_all(&out)).await.unwrap();
    within(tls.flush()).await.unwrap();
    for _ in 0..300 {
        let out = raw(
            http,
            b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(out.starts_with("HTTP/1.1 503"));
    }
    // A line we can wait for marks the end of what those caused.
    p.signal("TERM");
    assert_eq!(p.exit_code().await, 0);
    let text = p.all_output().await;
    let pings = text.matches("PING").count();
    let failed = text.matches("request failed").count();
    assert!(pings <= 1, "{pings} lines about PINGs");
    assert!(
        (1..=3 * gatehouse::base::log_limit::PER_SECOND as usize * 10).contains(&failed),
        "{failed} lines for 300 failed requests"
    );
    assert!(
        text.contains("suppressed"),
        "the lines left out are counted"
    );
}

// ----------------------------------------------------------------- 11

/// Defect 11: with `proxy_protocol`, an untrusted peer is refused at the
/// signature and counted before anything is read; a v2 header longer than
/// the cap is refused before it is read.
#[tokio::test]
async fn proxy_protocol_admission_order() {
    let up = echo().await;
    let px = Proxy::start(&format!(
        "force_https_redirect = false\ntrusted_proxies = [\"127.0.0.2/32\"]\n[listener]\nproxy_protocol = true\nhandshake_timeout = \"120s\"\nmax_connections_per_ip = 1\n\n{}",
        route("/", &up.url(), "")
    ))
    .await;
    let connect = async |src: &str| {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind(format!("{src}:0").parse().unwrap()).unwrap();
        within(s.connect(px.http)).await.unwrap()
    };
    let closed = async |s: &mut TcpStream| {
        let mut buf = [0u8; 64];
        matches!(within(s.read(&mut buf)).await, Ok(0) | Err(_))
    };
    // An untrusted peer sends the signature and stops: refused now, not
    // after the 120 s handshake timeout.
    let mut s = connect("127.0.0.1").await;
    s.write_all(b"PROXY").await.unwrap();
    assert!(closed(&mut s).await);
    // One silent connection holds the address's only slot; the next one
    // from it is refused before a byte is read.
    let _held = connect("127.0.0.1").await;
    let mut second = connect("127.0.0.1").await;
    assert!(closed(&mut second).await);
    // A trusted peer declaring a 64 KiB v2 header: refused at once.
    let mut t = connect("127.0.0.2").await;
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    v2.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
    t.write_all(&v2).await.unwrap();
    assert!(closed(&mut t).await);
    // A trusted peer's v1 header names the client and the request follows
    // in the same packet.
    let mut ok = connect("127.0.0.2").await;
    ok.write_all(b"PROXY TCP4 203.0.113.9 10.0.0.1 40000 80\r\nGET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    within(ok.read_to_end(&mut out)).await.unwrap();
    let out = String::from_utf8_lossy(&out);
    assert!(out.contains("x-real-ip: 203.0.113.9"), "{out}");
    px.stop().await;
}

// ----------------------------------------------------------------- 12

/// Defect 12: a client that stops reading cannot keep a WebSocket tunnel
/// open past `websocket_timeout`, even with a zero TCP window.
#[tokio::test]
async fn a_stalled_reader_cannot_hold_a_tunnel_open() {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let tx = std::sync::Arc::new(std::sync::Mutex::new(Some(tx)));
    let flooding = raw_upstream(move |mut s| {
        let tx = tx.clone();
        async move {
            let _ = s
                .write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
                .await;
            // Sends until the proxy closes the tunnel (at most 1 GiB).
            let chunk = vec![0u8; 64 * 1024];
            for _ in 0..16 * 1024 {
                if s.write_all(&chunk).await.is_err() {
                    break;
                }
            }
            if let Some(tx) = tx.lock().unwrap().take() {
                let _ = tx.send(());
            }
        }
    })
    .await;
    let px = Proxy::start(&format!(
        "force_https_redirect = false\n{}",
        route(
            "/",
            &format!("http://{flooding}"),
            "websocket_timeout = \"500ms\""
        )
    ))
    .await;
    let mut s = TcpStream::connect(px.http).await.unwrap();
    // A small receive window fills at once.
    socket2::SockRef::from(&s)
        .set_recv_buffer_size(4096)
        .unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = [0u8; 12];
    within(s.read_exact(&mut head)).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 101");
    // The client reads nothing more: the tunnel must still close.
    within(rx)
        .await
        .expect("the upstream side of the tunnel was closed");
    px.stop().await;
}

// ----------------------------------------------------------------- 13

/// Defect 13: HTTP/1.2 served as 1.1, a long URI is 414, TRACE 405,
/// `OPTIONS *` answered here, an HTTP/2 preface on the HTTP port 400.
#[tokio::test]
async fn the_smaller_ones() {
    let (px, up) = echo_proxy().await;
    let out = raw(
        px.http,
        b"GET /v HTTP/1.2\r\nHost: h\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("\nGET /v HTTP/1.1\n"), "{out}");
    let long = format!("GET /{} HTTP/1.1\r\nHost: h\r\n\r\n", "a".repeat(64 * 1024));
    let out = raw(px.http, long.as_bytes()).await;
    assert!(
        out.starts_with("HTTP/1.1 414"),
        "{}",
        &out[..out.len().min(200)]
    );
    let out = raw(
        px.http,
        b"TRACE / HTTP/1.1\r\nHost: h\r\nCookie: secret\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 405"), "{out}");
    assert!(out.to_ascii_lowercase().contains("\r\nallow: get"), "{out}");
    let out = raw(
        px.http,
        b"OPTIONS * HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.to_ascii_lowercase().contains("\r\nallow: get"), "{out}");
    let out = raw(
        px.http,
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out:?}");
    assert_eq!(
        up.connections.load(Ordering::SeqCst),
        1,
        "only /v was forwarded"
    );
    px.stop().await;
}

/// Defect 13: a malformed HTTP/2 request is a stream error (RFC 9113
/// §8.1.1): the connection's other streams go on. (Field names or values
/// with bytes HPACK's decoder refuses end the connection in h2 itself; see
/// the README's limits.)
#[tokio::test]
async fn a_malformed_http2_request_resets_only_its_stream() {
    let (px, _up) = echo_proxy().await;
    for bad in [
        &[(&b"connection"[..], &b"keep-alive"[..])][..],
        &[(b"te", b"gzip")],
        &[(b"transfer-encoding", b"chunked")],
        &[(b"upgrade", b"h2c")],
        &[(b"host", b"other.example")],
        &[(b"host", b"local host")],
    ] {
        let mut h2 = H2::connect(&px).await;
        h2.headers(1, bad).await;
        h2.headers(3, &[]).await;
        let frames = h2.until_answered(&[1, 3]).await;
        assert!(!H2::ok(&frames, 1), "{bad:?}: {frames:?}");
        assert!(
            !frames.iter().any(|(k, _, _)| *k == 7),
            "{bad:?}: GOAWAY: {frames:?}"
        );
        assert!(H2::ok(&frames, 3), "{bad:?}: the next stream: {frames:?}");
    }
    px.stop().await;
}

/// A minimal HTTP/2 client speaking raw frames, for what no library sends.
struct H2 {
    tls: tokio_rustls::client::TlsStream<TcpStream>,
}

impl H2 {
    async fn connect(px: &Proxy) -> H2 {
        let mut tls = tls_connect(px.https, &px.cert_path(), &[b"h2"])
            .await
            .unwrap();
        let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        out.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        within(tls.write_all(&out)).await.unwrap();
        H2 { tls }
    }

    /// A GET on `stream` with `extra` fields after the pseudo-headers.
    async fn headers(&mut self, stream: u32, extra: &[(&[u8], &[u8])]) {
        let mut block = Vec::new();
        let base: [(&[u8], &[u8]); 4] = [
            (b":method", b"GET"),
            (b":scheme", b"https"),
            (b":path", b"/h2"),
            (b":authority", b"localhost"),
        ];
        for (name, value) in base.iter().chain(extra.iter()) {
            // Literal without indexing, new name, no Huffman (RFC 7541 §6.2.2).
            block.push(0x00);
            block.push(name.len() as u8);
            block.extend_from_slice(name);
            block.push(value.len() as u8);
            block.extend_from_slice(value);
        }
        let mut out = (block.len() as u32).to_be_bytes()[1..].to_vec();
        out.extend_from_slice(&[1, 0x05]);
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(&block);
        within(self.tls.write_all(&out)).await.unwrap();
    }

    /// Frames read until every stream in `streams` got HEADERS or
    /// RST_STREAM, or the connection ended.
    async fn until_answered(&mut self, streams: &[u32]) -> Vec<(u8, u32, Vec<u8>)> {
        let mut frames = Vec::new();
        let mut open: Vec<u32> = streams.to_vec();
        while !open.is_empty() {
            let mut head = [0u8; 9];
            if within(self.tls.read_exact(&mut head)).await.is_err() {
                break;
            }
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut payload = vec![0u8; len];
            if within(self.tls.read_exact(&mut payload)).await.is_err() {
                break;
            }
            let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
            if head[3] == 1 || head[3] == 3 {
                open.retain(|s| *s != stream);
            }
            let goaway = head[3] == 7;
            frames.push((head[3], stream, payload));
            if goaway {
                break;
            }
        }
        frames
    }

    /// Stream answered with `:status 200` (HPACK static index 8).
    fn ok(frames: &[(u8, u32, Vec<u8>)], stream: u32) -> bool {
        frames
            .iter()
            .any(|(k, s, p)| *k == 1 && *s == stream && p.first() == Some(&0x88))
    }
}

// ------------------------------------------------------------ metrics
