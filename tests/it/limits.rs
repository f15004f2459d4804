//! Issue points 4 (upload limit, 413) and 12 (bad input never panics).

use http::{Request, StatusCode};

use crate::support::*;

async fn proxy_with_limit(env: &[(&str, &str)], extra_route: &str) -> (Proxy, Upstream) {
    let up = echo().await;
    let toml = format!(
        "force_https_redirect = false\n{extra_route}{}",
        routes(&[("/", &up.url())])
    );
    (Proxy::start_env(&toml, env).await, up)
}

#[tokio::test]
async fn declared_content_length_over_the_limit_is_413_without_touching_the_upstream() {
    let (px, up) = proxy_with_limit(&[("MAX_UPLOAD_SIZE_MB", "1")], "").await;
    // Only the head is sent: the proxy must answer without reading a body.
    let head = format!(
        "POST /api/v1/Vault HTTP/1.1\r\nHost: h\r\nContent-Length: {}\r\n\r\n",
        2 * 1024 * 1024
    );
    let out = raw(px.http, head.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");
    assert!(
        out.to_ascii_lowercase()
            .contains("x-content-type-options: nosniff"),
        "{out}"
    );
    assert_eq!(up.connections.load(std::sync::atomic::Ordering::SeqCst), 0);
    // At the limit passes.
    for proto in [Proto::H1, Proto::TlsH2] {
        let body = vec![b'x'; 1024 * 1024];
        let req = Request::builder()
            .method("POST")
            .uri("/")
            .header("host", "h")
            .body(full(body))
            .unwrap();
        let res = px.send(proto, req).await.unwrap();
        assert_eq!(res.status, StatusCode::OK, "{proto:?}");
        assert_eq!(res.seen().body.len(), 1024 * 1024);
    }
    px.stop().await;
}

#[tokio::test]
async fn an_undeclared_body_over_the_limit_is_413_while_streaming() {
    let (px, _up) = proxy_with_limit(&[("MAX_UPLOAD_SIZE_MB", "1")], "").await;
    for proto in [Proto::H1, Proto::TlsH1, Proto::TlsH2] {
        // A streamed body without Content-Length (chunked on HTTP/1.1).
        let chunks: Vec<Result<http_body::Frame<bytes::Bytes>, BoxError>> = (0..40)
            .map(|_| {
                Ok(http_body::Frame::data(bytes::Bytes::from(vec![
                    b'y';
                    64 * 1024
                ])))
            })
            .collect();
        let body = http_body_util::BodyExt::boxed(http_body_util::StreamBody::new(
            futures_util::stream::iter(chunks),
        ));
        let req = Request::builder()
            .method("PUT")
            .uri("/big")
            .header("host", "h")
            .body(body)
            .unwrap();
        match px.send(proto, req).await {
            Ok(res) => assert_eq!(res.status, StatusCode::PAYLOAD_TOO_LARGE, "{proto:?}"),
            // The proxy may close the upload before the client finished
            // writing; what it must never do is forward it. Check the
            // response on a raw connection below.
            Err(e) => panic!("{proto:?}: {e}"),
        }
    }
    px.stop().await;
}

#[tokio::test]
async fn a_route_max_body_overrides_the_global_limit() {
    let up = echo().await;
    let toml = format!(
        "force_https_redirect = false\n[[route]]\npath = \"/small\"\nupstream = \"{}\"\nmax_body = \"10K\"\n\n{}",
        up.url(),
        routes(&[("/", &up.url())])
    );
    let px = Proxy::start_env(&toml, &[("MAX_UPLOAD_SIZE_MB", "1")]).await;
    let body = vec![b'z'; 20 * 1024];
    let req = Request::builder()
        .method("POST")
        .uri("/small")
        .header("host", "h")
        .body(full(body.clone()))
        .unwrap();
    assert_eq!(
        px.send(Proto::TlsH2, req).await.unwrap().status,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    let req = Request::builder()
        .method("POST")
        .uri("/big")
        .header("host", "h")
        .body(full(body))
        .unwrap();
    assert_eq!(
        px.send(Proto::TlsH2, req).await.unwrap().status,
        StatusCode::OK
    );
    px.stop().await;
}

#[tokio::test]
async fn malformed_requests_get_400_and_the_proxy_keeps_serving() {
    let (px, _up) = proxy_with_limit(&[], "").await;
    for bad in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: h\r\nBad Header\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: abc\r\n\r\n",
        b"GET /\x01 HTTP/1.1\r\nHost: h\r\n\r\n",
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",
    ] {
        let out = raw(px.http, bad).await;
        assert!(
            out.starts_with("HTTP/1.1 400"),
            "{:?} -> {out:?}",
            String::from_utf8_lossy(bad)
        );
    }
    assert_eq!(px.get("/still-alive").await.status, StatusCode::OK);
    px.stop().await;
}

#[tokio::test]
async fn a_request_head_over_the_limit_is_431() {
    let (px, _up) = proxy_with_limit(&[], "").await;
    let big = "a".repeat(70 * 1024);
    let req = format!("GET / HTTP/1.1\r\nHost: h\r\nX-Big: {big}\r\n\r\n");
    let out = raw(px.http, req.as_bytes()).await;
    assert!(
        out.starts_with("HTTP/1.1 431"),
        "{}",
        &out[..out.len().min(200)]
    );
    // Under the limit is fine.
    let ok = "a".repeat(30 * 1024);
    let req = format!("GET / HTTP/1.1\r\nHost: h\r\nX-Big: {ok}\r\nConnection: close\r\n\r\n");
    assert!(raw(px.http, req.as_bytes())
        .await
        .starts_with("HTTP/1.1 200"));
    px.stop().await;
}

#[tokio::test]
async fn max_header_bytes_is_configurable() {
    let up = echo().await;
    let toml = format!(
        "force_https_redirect = false\nmax_header_bytes = \"16K\"\n{}",
        routes(&[("/", &up.url())])
    );
    let px = Proxy::start(&toml).await;
    let big = "a".repeat(20 * 1024);
    let req = format!("GET / HTTP/1.1\r\nHost: h\r\nX-Big: {big}\r\n\r\n");
    assert!(raw(px.http, req.as_bytes())
        .await
        .starts_with("HTTP/1.1 431"));
    px.stop().await;
}
