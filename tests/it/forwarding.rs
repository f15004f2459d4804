//! Issue points 8 (forwarding headers), 9 (security headers) and the
//! hop-by-hop and trailer parts of 4.

use http::{Request, StatusCode};

use crate::support::*;

#[tokio::test]
async fn forwarding_headers_replace_what_the_client_sent() {
    let up = echo().await;
    let toml = format!(
        "force_https_redirect = false\n[[route]]\npath = \"/admin\"\nupstream = \"{}\"\nforwarded_prefix = \"/admin/\"\n\n{}",
        up.url(),
        routes(&[("/", &up.url())])
    );
    let px = Proxy::start(&toml).await;
    for proto in [Proto::H1, Proto::TlsH1, Proto::TlsH2] {
        let req = Request::builder()
            .uri("/admin/login")
            .header("host", "vault.example.com:8443")
            .header("x-forwarded-for", "6.6.6.6")
            .header("x-real-ip", "6.6.6.6")
            .header("x-forwarded-proto", "gopher")
            .header("x-forwarded-host", "evil.example")
            .header("x-forwarded-prefix", "/evil")
            .body(full(""))
            .unwrap();
        let seen = px.send(proto, req).await.unwrap().seen();
        let scheme = if proto == Proto::H1 { "http" } else { "https" };
        assert_eq!(
            seen.header("host"),
            Some("vault.example.com:8443"),
            "{proto:?}"
        );
        assert_eq!(seen.all("x-forwarded-for"), ["127.0.0.1"], "{proto:?}");
        assert_eq!(seen.all("x-real-ip"), ["127.0.0.1"], "{proto:?}");
        assert_eq!(seen.header("x-forwarded-proto"), Some(scheme), "{proto:?}");
        assert_eq!(
            seen.header("x-forwarded-host"),
            Some("vault.example.com:8443"),
            "{proto:?}"
        );
        assert_eq!(seen.header("x-forwarded-port"), Some("8443"), "{proto:?}");
        assert_eq!(
            seen.header("x-forwarded-prefix"),
            Some("/admin/"),
            "{proto:?}"
        );
    }
    // A route without forwarded_prefix drops a client-sent one.
    let req = Request::builder()
        .uri("/x")
        .header("host", "vault.example.com")
        .header("x-forwarded-prefix", "/evil")
        .body(full(""))
        .unwrap();
    let seen = px.send(Proto::TlsH1, req).await.unwrap().seen();
    assert_eq!(seen.header("x-forwarded-prefix"), None);
    assert_eq!(seen.header("x-forwarded-port"), Some("443"));
    px.stop().await;
}

#[tokio::test]
async fn forwarded_for_append_keeps_the_incoming_list() {
    let up = echo().await;
    let toml = format!(
        "force_https_redirect = false\n[[route]]\npath = \"/\"\nupstream = \"{}\"\nforwarded_for = \"append\"\n",
        up.url()
    );
    let px = Proxy::start(&toml).await;
    let req = Request::builder()
        .uri("/")
        .header("host", "h")
        .header("x-forwarded-for", "203.0.113.9")
        .body(full(""))
        .unwrap();
    let seen = px.send(Proto::H1, req).await.unwrap().seen();
    assert_eq!(
        seen.header("x-forwarded-for"),
        Some("203.0.113.9, 127.0.0.1")
    );
    assert_eq!(seen.header("x-real-ip"), Some("127.0.0.1"));
    px.stop().await;
}

#[tokio::test]
async fn hop_by_hop_headers_are_not_forwarded_either_way() {
    let up = upstream(|req: Request<hyper::body::Incoming>| async move {
        let mut res = echo_handler(req).await;
        let h = res.headers_mut();
        h.insert("connection", "x-upstream-private".parse().unwrap());
        h.insert("x-upstream-private", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("x-upstream-public", "1".parse().unwrap());
        res
    })
    .await;
    let px = Proxy::start(&format!(
        "force_https_redirect = false\n{}",
        routes(&[("/", &up.url())])
    ))
    .await;
    let req = Request::builder()
        .uri("/")
        .header("host", "h")
        .header("connection", "keep-alive, x-client-private")
        .header("x-client-private", "secret")
        .header("keep-alive", "timeout=99")
        .header("proxy-connection", "keep-alive")
        .header("te", "gzip")
        .header("x-client-public", "1")
        .body(full(""))
        .unwrap();
    let res = px.send(Proto::H1, req).await.unwrap();
    let seen = res.seen();
    for gone in ["x-client-private", "keep-alive", "proxy-connection", "te"] {
        assert_eq!(seen.header(gone), None, "{gone} reached the upstream");
    }
    assert_eq!(seen.header("x-client-public"), Some("1"));
    assert_eq!(res.header("x-upstream-private"), None);
    assert_eq!(res.header("keep-alive"), None);
    assert_eq!(res.header("x-upstream-public"), Some("1"));
    px.stop().await;
}

#[tokio::test]
async fn location_of_own_host_is_kept_on_https() {
    let up = upstream(|req: Request<hyper::body::Incoming>| async move {
        let host = req
            .headers()
            .get("host")
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        let target = if req.uri().path() == "/other" {
            "http://elsewhere.example/".to_string()
        } else {
            format!("http://{host}/admin/")
        };
        let mut res = http::Response::new(full(""));
        *res.status_mut() = StatusCode::FOUND;
        res.headers_mut()
            .insert("location", target.parse().unwrap());
        res
    })
    .await;
    let px = Proxy::start(&format!(
        "force_https_redirect = false\n{}",
        routes(&[("/", &up.url())])
    ))
    .await;
    for proto in TLS_PROTOS {
        let res = px
            .send(proto, get("/admin", "vault.example.com:8443"))
            .await
            .unwrap();
        assert_eq!(
            res.header("location"),
            Some("https://vault.example.com:8443/admin/"),
            "{proto:?}"
        );
        let res = px
            .send(proto, get("/other", "vault.example.com:8443"))
            .await
            .unwrap();
        assert_eq!(
            res.header("location"),
            Some("http://elsewhere.example/"),
            "{proto:?}"
        );
    }
    // Over plain HTTP nothing is rewritten.
    let res = px
        .send(Proto::H1, get("/admin", "vault.example.com:8080"))
        .await
        .unwrap();
    assert_eq!(
        res.header("location"),
        Some("http://vault.example.com:8080/admin/")
    );
    px.stop().await;
}

#[tokio::test]
async fn security_headers_on_every_response() {
    let up = echo().await;
    let down = fixed(502, "bad gateway from upstream").await;
    let toml = format!(
        "force_https_redirect = false\ndeployment_mode = \"install\"\n{}",
        routes(&[("/down", &down.url()), ("/up", &up.url())])
    );
    let px = Proxy::start(&toml).await;
    for proto in [Proto::H1, Proto::TlsH1, Proto::TlsH2] {
        for (path, status) in [("/up", 200), ("/down", 503), ("/nothing", 404)] {
            let res = px.send(proto, get(path, "localhost")).await.unwrap();
            assert_eq!(res.status.as_u16(), status, "{proto:?} {path}");
            for (name, value) in [
                ("referrer-policy", "strict-origin-when-cross-origin"),
                ("x-content-type-options", "nosniff"),
                ("x-frame-options", "SAMEORIGIN"),
                ("cross-origin-resource-policy", "same-origin"),
                ("content-security-policy", "frame-ancestors 'self'"),
                ("x-aliasvault-deployment", "install"),
            ] {
                assert_eq!(res.header(name), Some(value), "{proto:?} {path} {name}");
            }
            let hsts = res.header("strict-transport-security");
            if proto == Proto::H1 {
                assert_eq!(hsts, None, "no HSTS over plain HTTP");
            } else {
                assert_eq!(hsts, Some("max-age=31536000"), "{proto:?} {path}");
            }
        }
    }
    px.stop().await;
}

#[tokio::test]
async fn headers_table_sets_overrides_and_removes() {
    // The upstream sends fields the table overrides, keeps and removes, and
    // an `X-Request-Id` of its own; the answer must be the same whether the
    // head is written from the map (HTTP/2) or from bytes (HTTP/1).
    let up = upstream(|req| async move {
        let id = req.headers()["x-request-id"].clone();
        let mut res = http::Response::new(full("hi"));
        let h = res.headers_mut();
        h.insert(
            "x-frame-options",
            "ALLOW-FROM https://a.example".parse().unwrap(),
        );
        h.insert("referrer-policy", "no-referrer".parse().unwrap());
        h.insert("content-security-policy", "default-src *".parse().unwrap());
        h.insert("x-request-id", "made-up-by-the-app".parse().unwrap());
        h.insert("x-seen-id", id);
        res
    })
    .await;
    let toml = format!(
        "force_https_redirect = false\n{}\n[headers]\noverride = {{ \"X-Frame-Options\" = \"DENY\" }}\nset = {{ \"Referrer-Policy\" = \"same-origin\", \"Permissions-Policy\" = \"camera=()\" }}\nremove = [\"Content-Security-Policy\"]\n",
        routes(&[("/", &up.url())])
    );
    let px = Proxy::start(&toml).await;
    for proto in [Proto::H1, Proto::TlsH1, Proto::TlsH2] {
        let res = px.send(proto, get("/", "localhost")).await.unwrap();
        assert_eq!(
            res.header("x-frame-options"),
            Some("DENY"),
            "{proto:?}: override wins over the upstream"
        );
        assert_eq!(res.headers.get_all("x-frame-options").iter().count(), 1);
        assert_eq!(
            res.header("referrer-policy"),
            Some("no-referrer"),
            "{proto:?}: the upstream's own value is kept"
        );
        assert_eq!(res.headers.get_all("referrer-policy").iter().count(), 1);
        assert_eq!(res.header("permissions-policy"), Some("camera=()"));
        assert_eq!(
            res.header("content-security-policy"),
            None,
            "{proto:?}: removed even when the upstream sends it"
        );
        assert_eq!(res.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(
            res.header("strict-transport-security").is_some(),
            proto != Proto::H1,
            "{proto:?}: HSTS only over TLS"
        );
        // The client gets the id the upstream was sent, not the app's.
        let ids: Vec<_> = res.headers.get_all("x-request-id").iter().collect();
        assert_eq!(ids.len(), 1, "{proto:?}");
        assert_eq!(Some(ids[0]), res.headers.get("x-seen-id"), "{proto:?}");
        // Our own pages follow the same table.
        let mut req = get("/", "localhost");
        *req.method_mut() = http::Method::TRACE;
        let res = px.send(proto, req).await.unwrap();
        assert_eq!(res.status, 405, "{proto:?}");
        assert_eq!(res.header("x-frame-options"), Some("DENY"), "{proto:?}");
        assert_eq!(res.header("permissions-policy"), Some("camera=()"));
        assert_eq!(res.header("referrer-policy"), Some("same-origin"));
        assert_eq!(res.header("content-security-policy"), None);
        assert_eq!(res.headers.get_all("x-request-id").iter().count(), 1);
    }
    px.stop().await;
}

#[tokio::test]
async fn trailers_are_carried() {
    use http_body_util::BodyExt;
    let up = upstream(|_req| async move {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("x-checksum", "abc123".parse().unwrap());
        let body = http_body_util::StreamBody::new(futures_util::stream::iter(vec![
            Ok::<_, BoxError>(http_body::Frame::data(bytes::Bytes::from("part one, "))),
            Ok(http_body::Frame::data(bytes::Bytes::from("part two"))),
            Ok(http_body::Frame::trailers(trailers)),
        ]));
        let mut res = http::Response::new(body.boxed());
        res.headers_mut()
            .insert("trailer", "x-checksum".parse().unwrap());
        res
    })
    .await;
    let px = Proxy::start(&format!(
        "force_https_redirect = false\n{}",
        routes(&[("/", &up.url())])
    ))
    .await;
    for proto in [Proto::H1, Proto::TlsH2] {
        let req = Request::builder()
            .uri("/")
            .header("host", "h")
            .header("te", "trailers")
            .body(full(""))
            .unwrap();
        let res = px.send(proto, req).await.unwrap();
        assert_eq!(res.text(), "part one, part two");
        let t = res
            .trailers
            .as_ref()
            .unwrap_or_else(|| panic!("{proto:?}: no trailers"));
        assert_eq!(t["x-checksum"], "abc123", "{proto:?}");
    }
    px.stop().await;
}

#[tokio::test]
async fn chunked_request_bodies_stream_through() {
    let up = echo().await;
    let px = Proxy::start(&format!(
        "force_https_redirect = false\n{}",
        routes(&[("/", &up.url())])
    ))
    .await;
    let req = b"POST /upload HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
    let out = raw(px.http, req).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.ends_with("hello world"), "{out}");
    assert!(
        out.contains("\ntransfer-encoding: chunked\n") || out.contains("\ncontent-length: 11\n"),
        "{out}"
    );
    px.stop().await;
}
