//! Issue point 1 (routing) and 2 (upstreams), and HTTP/1 and HTTP/2 on
//! both ports (point 4).

use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::{Method, Request, StatusCode};

use crate::support::*;

async fn three_routes() -> (Proxy, Upstream, Upstream, Upstream) {
    let (client, api, admin) = (echo().await, echo().await, echo().await);
    let toml = format!(
        "force_https_redirect = false\n{}",
        routes(&[
            ("/admin", &admin.url()),
            ("/api", &api.url()),
            ("/", &client.url())
        ])
    );
    (Proxy::start(&toml).await, client, api, admin)
}

/// Which upstream served the request: the only one that was connected to.
fn which(ups: &[(&str, &Upstream)]) -> String {
    let counts: Vec<String> = ups
        .iter()
        .filter(|(_, u)| u.connections.load(Ordering::SeqCst) > 0)
        .map(|(n, _)| n.to_string())
        .collect();
    counts.join(",")
}

#[tokio::test]
async fn longest_prefix_wins_on_segment_boundaries() {
    for (path, want) in [
        ("/api", "api"),
        ("/api/", "api"),
        ("/api/v1/Auth/login", "api"),
        ("/api?q=1", "api"),
        ("/apix", "client"),
        ("/admin", "admin"),
        ("/admin/_blazor?id=1", "admin"),
        ("/administrator", "client"),
        ("/", "client"),
        ("/some/spa/path", "client"),
    ] {
        let (px, client, api, admin) = three_routes().await;
        let res = px.get(path).await;
        assert_eq!(res.status, StatusCode::OK, "{path}");
        let got = which(&[("client", &client), ("api", &api), ("admin", &admin)]);
        assert_eq!(got, want, "{path}");
        px.stop().await;
    }
}

#[tokio::test]
async fn path_and_query_reach_the_upstream_byte_for_byte() {
    let (px, _c, _a, _d) = three_routes().await;
    for target in [
        "/api/a%20b//c/../d?x=%20y&z=1",
        "/api/./x?",
        "/%61dmin",
        "/api?q=1&q=2#",
    ] {
        // Raw bytes, so no client library can normalise the target.
        let req = format!("GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        let out = raw(px.http, req.as_bytes()).await;
        assert!(out.starts_with("HTTP/1.1 200"), "{target}: {out}");
        let expected = target.split('#').next().unwrap();
        assert!(
            out.contains(&format!("\nGET {expected} HTTP/1.1\n")),
            "{target}: {out}"
        );
    }
}

#[tokio::test]
async fn no_route_is_404_with_security_headers() {
    let api = echo().await;
    let px = Proxy::start(&format!(
        "force_https_redirect = false\n{}",
        routes(&[("/api", &api.url())])
    ))
    .await;
    let res = px.get("/elsewhere").await;
    assert_eq!(res.status, StatusCode::NOT_FOUND);
    assert_eq!(res.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(api.connections.load(Ordering::SeqCst), 0);
    px.stop().await;
}

#[tokio::test]
async fn methods_bodies_and_preflights_pass_unchanged() {
    let (px, _c, _a, _d) = three_routes().await;
    for proto in [Proto::H1, Proto::TlsH1, Proto::TlsH2] {
        for method in ["POST", "PUT", "PATCH", "DELETE", "OPTIONS", "PROPFIND"] {
            let body = format!("{{\"method\":\"{method}\"}}");
            let req = Request::builder()
                .method(Method::from_bytes(method.as_bytes()).unwrap())
                .uri("/api/v1/Auth/validate-username")
                .header("host", "localhost")
                .header("origin", "chrome-extension://abc")
                .header("access-control-request-method", "POST")
                .header("content-type", "application/json")
                .body(full(body.clone()))
                .unwrap();
            let res = px.send(proto, req).await.unwrap();
            assert_eq!(res.status, StatusCode::OK, "{proto:?} {method}");
            let seen = res.seen();
            assert_eq!(
                seen.request_line,
                format!("{method} /api/v1/Auth/validate-username HTTP/1.1"),
                "{proto:?}"
            );
            assert_eq!(seen.body, Bytes::from(body), "{proto:?} {method}");
            assert_eq!(seen.header("origin"), Some("chrome-extension://abc"));
            assert_eq!(seen.header("access-control-request-method"), Some("POST"));
            assert_eq!(seen.header("content-type"), Some("application/json"));
        }
    }
    px.stop().await;
}

#[tokio::test]
async fn http2_and_http11_over_tls() {
    let (px, _c, _a, _d) = three_routes().await;
    let r1 = px.get_tls(Proto::TlsH1, "/api").await;
    assert_eq!(r1.version, http::Version::HTTP_11);
    let r2 = px.get_tls(Proto::TlsH2, "/api").await;
    assert_eq!(r2.version, http::Version::HTTP_2);
    // Upstream always gets HTTP/1.1 with the host from :authority.
    let seen = r2.seen();
    assert_eq!(seen.request_line, "GET /api HTTP/1.1");
    assert_eq!(seen.header("host"), Some("localhost"));
    px.stop().await;
}

#[tokio::test]
async fn keep_alive_connections_to_the_upstream_are_reused() {
    let api = echo().await;
    let px = Proxy::start(&format!(
        "force_https_redirect = false\n{}",
        routes(&[("/", &api.url())])
    ))
    .await;
    for proto in [Proto::H1, Proto::TlsH1, Proto::TlsH2] {
        for _ in 0..5 {
            assert_eq!(
                px.send(proto, get("/", "localhost")).await.unwrap().status,
                StatusCode::OK
            );
        }
    }
    // 15 requests on 15 client connections, one pooled upstream connection.
    assert_eq!(api.connections.load(Ordering::SeqCst), 1);
    px.stop().await;
}

#[tokio::test]
async fn localhost_upstream_works_whatever_it_resolves_to_first() {
    // The upstream listens on IPv4 only; `localhost` may resolve to ::1
    // first (AliasVault #1627). Every address must be tried.
    let v4 = echo().await;
    let url = format!("http://localhost:{}", v4.addr.port());
    let px = Proxy::start(&format!(
        "force_https_redirect = false\n{}",
        routes(&[("/", &url)])
    ))
    .await;
    assert_eq!(px.get("/").await.status, StatusCode::OK);
    px.stop().await;
    let resolves_v6 = tokio::net::lookup_host("localhost:0")
        .await
        .unwrap()
        .any(|a| a.is_ipv6());
    if has_ipv6_loopback() && resolves_v6 {
        let v6 = upstream_on("[::1]:0", echo_handler).await;
        let url = format!("http://localhost:{}", v6.addr.port());
        let px = Proxy::start(&format!(
            "force_https_redirect = false\n{}",
            routes(&[("/", &url)])
        ))
        .await;
        assert_eq!(px.get("/").await.status, StatusCode::OK);
        px.stop().await;
    }
}

#[tokio::test]
async fn ipv6_listeners_and_ipv6_upstreams() {
    if !has_ipv6_loopback() {
        eprintln!("skipped: no IPv6 loopback on this machine");
        return;
    }
    let up = upstream_on("[::1]:0", echo_handler).await;
    let toml = format!(
        "bind = [\"::1\"]\nforce_https_redirect = false\n{}",
        routes(&[("/", &format!("http://[::1]:{}", up.addr.port()))])
    );
    let px = Proxy::start(&toml).await;
    assert!(px.http.is_ipv6());
    let res = px.get("/v6").await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(res.seen().header("x-real-ip"), Some("::1"));
    let res = px.get_tls(Proto::TlsH2, "/v6").await;
    assert_eq!(res.status, StatusCode::OK);
    px.stop().await;
}

#[tokio::test]
async fn every_resolved_address_is_tried_in_turn() {
    use gatehouse::upstream::pool::{client_with, Resolver};
    use std::time::Duration;
    // The name resolves to an address where nothing listens, then to the
    // real server: the connection must fall through to the second.
    let up = echo().await;
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let live = up.addr;
    let resolver = Resolver::with_lookup(Duration::from_secs(5), move |_| {
        Box::pin(async move { Ok(vec![dead, live]) })
    });
    let client = client_with(resolver, Duration::from_secs(5));
    let req = Request::builder()
        .uri(format!("http://api.internal:{}/api", live.port()))
        .header("host", "api.internal")
        .body(gatehouse::upstream::body::UpstreamBody::empty())
        .unwrap();
    let res = within(client.request(req, &())).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}
