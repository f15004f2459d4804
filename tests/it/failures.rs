//! Issue point 3: upstream failures become the 503 status page; other
//! statuses pass; a client that leaves cancels the upstream request.

use http::StatusCode;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use crate::support::*;

fn assert_status_page(res: &Resp, what: &str) {
    assert_eq!(res.status, StatusCode::SERVICE_UNAVAILABLE, "{what}");
    assert!(
        res.text().contains("temporarily unavailable"),
        "{what}: {}",
        res.text()
    );
    assert_eq!(
        res.header("cache-control"),
        Some("no-cache, no-store, must-revalidate"),
        "{what}"
    );
    assert_eq!(res.header("x-frame-options"), Some("SAMEORIGIN"), "{what}");
    assert_eq!(
        res.header("content-type"),
        Some("text/html; charset=utf-8"),
        "{what}"
    );
}

/// An address nothing listens on: bind, note the port, close.
async fn refused_addr() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    drop(l);
    format!("http://{a}")
}

#[tokio::test]
async fn refused_and_unresolvable_upstreams_get_the_status_page() {
    let refused = refused_addr().await;
    let toml = format!(
        "force_https_redirect = false\n{}",
        routes(&[
            ("/refused", &refused),
            ("/nxdomain", "http://no-such-host.invalid:3000")
        ])
    );
    let px = Proxy::start(&toml).await;
    for proto in [Proto::H1, Proto::TlsH1, Proto::TlsH2] {
        for path in ["/refused", "/nxdomain"] {
            let res = px.send(proto, get(path, "localhost")).await.unwrap();
            assert_status_page(&res, &format!("{proto:?} {path}"));
            // The page names neither the route nor the upstream.
            assert!(!res.text().contains("127.0.0.1") && !res.text().contains("no-such-host"));
        }
    }
    px.stop().await;
}

#[tokio::test]
async fn upstream_502_503_504_become_the_status_page_but_500_passes() {
    let (u502, u503, u504, u500) = (
        fixed(502, "upstream 502 body").await,
        fixed(503, "upstream 503 body").await,
        fixed(504, "upstream 504 body").await,
        fixed(500, "ERROR: Database unreachable").await,
    );
    let toml = format!(
        "force_https_redirect = false\n{}",
        routes(&[
            ("/a", &u502.url()),
            ("/b", &u503.url()),
            ("/c", &u504.url()),
            ("/api", &u500.url())
        ])
    );
    let px = Proxy::start(&toml).await;
    for path in ["/a", "/b", "/c"] {
        let res = px.get(path).await;
        assert_status_page(&res, path);
        assert!(
            !res.text().contains("upstream"),
            "{path}: upstream body leaked"
        );
    }
    let res = px.get("/api").await;
    assert_eq!(res.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(res.text(), "ERROR: Database unreachable");
    px.stop().await;
}

#[tokio::test]
async fn a_silent_upstream_times_out_into_the_status_page() {
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let slow = upstream(move |_req| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(());
            // Never answers within the route's timeout.
            std::future::pending::<()>().await;
            unreachable!()
        }
    })
    .await;
    let toml = format!(
        "force_https_redirect = false\n[[route]]\npath = \"/\"\nupstream = \"{}\"\ntimeout = \"300ms\"\n",
        slow.url()
    );
    let px = Proxy::start(&toml).await;
    let res = px.get("/slow").await;
    assert_status_page(&res, "timeout");
    within(rx.recv())
        .await
        .expect("the upstream got the request");
    px.stop().await;
}

#[tokio::test]
async fn an_upstream_that_closes_without_answering_is_the_status_page() {
    let addr = raw_upstream(|s| async move { drop(s) }).await;
    let px = Proxy::start(&format!(
        "force_https_redirect = false\n{}",
        routes(&[("/", &format!("http://{addr}"))])
    ))
    .await;
    assert_status_page(&px.get("/").await, "closed");
    px.stop().await;
}

#[tokio::test]
async fn an_upstream_dying_mid_response_aborts_only_that_response() {
    let addr = raw_upstream(|mut s| async move {
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\nContent-Type: application/octet-stream\r\n\r\nonly a little")
            .await;
        // Dies here: 13 of 100000 bytes sent.
    })
    .await;
    let ok = echo().await;
    let toml = format!(
        "force_https_redirect = false\n{}",
        routes(&[("/dies", &format!("http://{addr}")), ("/", &ok.url())])
    );
    let px = Proxy::start(&toml).await;
    for proto in [Proto::H1, Proto::TlsH1, Proto::TlsH2] {
        let res = px.send(proto, get("/dies", "localhost")).await;
        assert!(
            res.is_err(),
            "{proto:?}: a truncated body must not look complete: {res:?}"
        );
        // The proxy is fine and serves the next request.
        assert_eq!(
            px.send(proto, get("/fine", "localhost"))
                .await
                .unwrap()
                .status,
            StatusCode::OK
        );
    }
    px.stop().await;
}

#[tokio::test]
async fn a_client_that_goes_away_cancels_the_upstream_request() {
    // The upstream notes when it got the request and when its handler was
    // dropped (its connection closed by the proxy).
    let (got_tx, mut got_rx) = mpsc::unbounded_channel::<()>();
    let (dropped_tx, mut dropped_rx) = mpsc::unbounded_channel::<()>();
    struct Guard(mpsc::UnboundedSender<()>);
    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = self.0.send(());
        }
    }
    let slow = upstream(move |_req| {
        let (got, dropped) = (got_tx.clone(), dropped_tx.clone());
        async move {
            let _guard = Guard(dropped);
            let _ = got.send(());
            std::future::pending::<()>().await;
            unreachable!()
        }
    })
    .await;
    let px = Proxy::start(&format!(
        "force_https_redirect = false\n{}",
        routes(&[("/", &slow.url())])
    ))
    .await;
    let mut client = tokio::net::TcpStream::connect(px.http).await.unwrap();
    within(client.write_all(b"GET /long-poll HTTP/1.1\r\nHost: h\r\n\r\n"))
        .await
        .unwrap();
    within(got_rx.recv()).await.unwrap();
    drop(client);
    within(dropped_rx.recv())
        .await
        .expect("upstream request cancelled");
    px.stop().await;
}

#[tokio::test]
async fn an_upstream_closing_each_kept_alive_connection_costs_no_request() {
    // The upstream answers as if it kept the connection (no `Connection:
    // close`) and then closes it: every pooled connection is stale when the
    // next request comes. Each request must still succeed, on a new
    // connection when the pooled one turns out to be closed.
    let conns = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c = conns.clone();
    let addr = raw_upstream(move |mut s| {
        let c = c.clone();
        async move {
            use tokio::io::AsyncWriteExt;
            c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK")
                .await;
            let _ = s.shutdown().await;
        }
    })
    .await;
    let px = Proxy::start(&format!(
        "force_https_redirect = false\n{}",
        routes(&[("/", &format!("http://{addr}"))])
    ))
    .await;
    for i in 0..20 {
        let res = within(px.send(Proto::H1, get("/", "h"))).await.unwrap();
        assert_eq!(res.status, StatusCode::OK, "request {i}");
        assert_eq!(res.text(), "OK");
    }
    assert_eq!(conns.load(std::sync::atomic::Ordering::SeqCst), 20);
    px.stop().await;
}
