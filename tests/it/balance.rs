//! Issue 5 point 4 (in part): routes with several servers.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use http::{Request, StatusCode};
use tokio::sync::{mpsc, watch};

use crate::support::*;

fn route_with(servers: &[String], extra: &str) -> String {
    let list: Vec<String> = servers.iter().map(|s| format!("\"{s}\"")).collect();
    format!(
        "force_https_redirect = false\n[[route]]\npath = \"/\"\nupstream = [{}]\n{extra}\n",
        list.join(", ")
    )
}

fn dead() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", l.local_addr().unwrap())
}

#[tokio::test]
async fn round_robin_spreads_requests() {
    let (a, b) = (fixed(200, "A").await, fixed(200, "B").await);
    let px = Proxy::start(&route_with(&[a.url(), b.url()], "")).await;
    let mut seen = std::collections::HashMap::new();
    for _ in 0..10 {
        *seen.entry(px.get("/").await.text()).or_insert(0) += 1;
    }
    assert_eq!(seen.get("A"), Some(&5), "{seen:?}");
    assert_eq!(seen.get("B"), Some(&5), "{seen:?}");
    px.stop().await;
}

#[tokio::test]
async fn a_dead_server_is_retried_around_and_marked_down() {
    let a = fixed(200, "A").await;
    let px = Proxy::start(&route_with(&[dead(), a.url()], "")).await;
    // GET is idempotent and has no body: a refused connection is retried
    // on the next server, so no request fails.
    for i in 0..10 {
        let res = px.get("/").await;
        assert_eq!(
            (res.status, res.text().as_str()),
            (StatusCode::OK, "A"),
            "request {i}"
        );
    }
    px.stop().await;
    // POST is not retried; the first failure marks the server down, so at
    // most one request fails and the rest go to the live server.
    let a = fixed(200, "A").await;
    let px = Proxy::start(&route_with(&[dead(), a.url()], "")).await;
    let mut failed = 0;
    for _ in 0..10 {
        let req = Request::builder()
            .method("POST")
            .uri("/")
            .header("host", "h")
            .body(full("x"))
            .unwrap();
        match px.send(Proto::H1, req).await.unwrap().status {
            StatusCode::OK => {}
            StatusCode::SERVICE_UNAVAILABLE => failed += 1,
            other => panic!("{other}"),
        }
    }
    assert!(failed <= 1, "{failed} POSTs failed");
    px.stop().await;
}

#[tokio::test]
async fn least_outstanding_avoids_the_busy_server() {
    // Two servers that hold every request until released, and report which
    // of them got it.
    let (gate_tx, gate_rx) = watch::channel(false);
    let (arrived_tx, mut arrived) = mpsc::unbounded_channel::<&'static str>();
    let mut urls = Vec::new();
    let held = Arc::new(AtomicUsize::new(0));
    for name in ["one", "two"] {
        let (gate, tx, held) = (gate_rx.clone(), arrived_tx.clone(), held.clone());
        let up = upstream(move |_req| {
            let (mut gate, tx, held) = (gate.clone(), tx.clone(), held.clone());
            async move {
                held.fetch_add(1, Ordering::SeqCst);
                let _ = tx.send(name);
                let _ = gate.wait_for(|g| *g).await;
                http::Response::new(full(name))
            }
        })
        .await;
        urls.push(up.url());
    }
    let px = Proxy::start(&route_with(&urls, "balance = \"least_outstanding\"")).await;
    let (http, cert) = (px.http, px.cert_path());
    let first = tokio::spawn({
        let cert = cert.clone();
        async move { send(Proto::H1, http, &cert, get("/", "h")).await }
    });
    let first_server = within(arrived.recv()).await.unwrap();
    let second = tokio::spawn(async move { send(Proto::H1, http, &cert, get("/", "h")).await });
    let second_server = within(arrived.recv()).await.unwrap();
    assert_ne!(
        first_server, second_server,
        "the busy server got the second request"
    );
    gate_tx.send(true).unwrap();
    assert_eq!(within(first).await.unwrap().unwrap().text(), first_server);
    assert_eq!(within(second).await.unwrap().unwrap().text(), second_server);
    px.stop().await;
}

#[tokio::test]
async fn active_health_checks_take_a_server_out_and_back() {
    use std::sync::atomic::AtomicBool;
    let a = health_checked("A", Arc::new(AtomicBool::new(true))).await;
    let b_ok = Arc::new(AtomicBool::new(false));
    let b = health_checked("B", b_ok.clone()).await;
    let px = Proxy::start(&route_with(
        &[a.url(), b.url()],
        "health_check = { path = \"/health\", interval = \"100ms\", healthy = 1, unhealthy = 1 }",
    ))
    .await;
    // B fails its checks: it is taken out, every request goes to A.
    until_only(&px, "A", "B never taken out").await;
    let deadline = tokio::time::Instant::now() + LIMIT;
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(50));
    // B recovers: it is back in the rotation.
    b_ok.store(true, Ordering::SeqCst);
    loop {
        assert!(
            tokio::time::Instant::now() < deadline + LIMIT,
            "B never back"
        );
        if px.get("/").await.text() == "B" {
            break;
        }
        tick.tick().await;
    }
    px.stop().await;
}

#[tokio::test]
async fn named_upstream_groups() {
    let (a, b) = (fixed(200, "A").await, fixed(200, "B").await);
    let toml = format!(
        "force_https_redirect = false\n[upstreams.app]\nservers = [\"{}\", \"{}\"]\n\n[[route]]\npath = \"/\"\nupstream = \"app\"\n",
        a.url(),
        b.url()
    );
    let px = Proxy::start(&toml).await;
    let mut seen = std::collections::HashSet::new();
    for _ in 0..4 {
        seen.insert(px.get("/").await.text());
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    px.stop().await;
}
