//! Issue 5 point 1: reload without dropping anything.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use gatehouse::config::{Env, Source};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

fn text_config(dir: &std::path::Path, letter_url: &str, ws_url: &str) -> String {
    format!(
        "http_port = 0\nhttps_port = 0\nbind = [\"127.0.0.1\"]\nforce_https_redirect = false\n\n[[route]]\npath = \"/ws\"\nupstream = \"{ws_url}\"\n\n[[route]]\npath = \"/\"\nupstream = \"{letter_url}\"\n# {}\n",
        dir.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_reloads_under_load_drop_nothing() {
    let a = fixed(200, "A").await;
    let b = fixed(200, "B").await;
    let ws = websocket_echo().await;
    let dir = tempfile::tempdir().unwrap();
    let source = |text: String| Source::Text {
        name: dir.path().join("gatehouse.toml"),
        text,
        base_dir: dir.path().to_path_buf(),
    };
    let valid = |url: &str| {
        gatehouse::config::load(
            &source(text_config(dir.path(), url, &ws.url())),
            &Env::empty(),
        )
        .unwrap()
    };
    let mut server = within(gatehouse::Server::start(valid(&a.url())))
        .await
        .unwrap();
    let (http, https) = (server.http_addrs[0], server.https_addrs[0]);
    let cert = dir.path().join("certificates/ssl/cert.pem");
    // WebSockets on both ports, held open across every reload.
    let tcp = tokio::net::TcpStream::connect(http).await.unwrap();
    let (mut ws_plain, _) = within(tokio_tungstenite::client_async("ws://localhost/ws", tcp))
        .await
        .unwrap();
    let tls = tls_connect(https, &cert, &[b"http/1.1"]).await.unwrap();
    let (mut ws_tls, _) = within(tokio_tungstenite::client_async("wss://localhost/ws", tls))
        .await
        .unwrap();
    // Continuous requests: keep-alive HTTP/1.1 and HTTP/2 over TLS.
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let mut loads = Vec::new();
    for proto in [Proto::H1, Proto::TlsH2] {
        let (stop, count, cert) = (stop.clone(), count.clone(), cert.clone());
        let addr = if proto == Proto::H1 { http } else { https };
        loads.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            while !stop.load(Ordering::SeqCst) && count.load(Ordering::SeqCst) < 1_000_000 {
                match send(proto, addr, &cert, get("/", "localhost")).await {
                    Ok(r) if r.status == 200 && (r.text() == "A" || r.text() == "B") => {}
                    other => failures.push(format!("{proto:?}: {other:?}")),
                }
                count.fetch_add(1, Ordering::SeqCst);
            }
            failures
        }));
    }
    let invalid = source("http_port = 0\n[[route]]\npath = \"/\"\nupstrem = \"x\"\n".into());
    let mut expect = "A";
    for i in 0..50 {
        if i % 2 == 0 {
            let (url, letter) = if (i / 2) % 2 == 0 {
                (b.url(), "B")
            } else {
                (a.url(), "A")
            };
            let generation = within(server.apply(valid(&url))).await.unwrap();
            assert_eq!(generation, 2 + i / 2);
            expect = letter;
        } else {
            let err = gatehouse::config::load(&invalid, &Env::empty()).unwrap_err();
            assert!(
                err.to_string().contains("gatehouse.toml:4:1: upstrem"),
                "{err}"
            );
            // An invalid configuration that does load (both ports equal) is
            // refused by apply and counted.
            let mut bad = valid(&b.url());
            bad.http_port = 7;
            bad.https_port = 7;
            assert!(within(server.apply(bad)).await.is_err());
        }
        // The routes are the last valid configuration's.
        let r = send(Proto::H1, http, &cert, get("/", "localhost"))
            .await
            .unwrap();
        assert_eq!(r.text(), expect, "after reload {i}");
    }
    assert_eq!(server.shared.generation.load(Ordering::SeqCst), 26);
    assert_eq!(server.shared.reload_failures.load(Ordering::SeqCst), 25);
    // Listeners were not rebound.
    assert_eq!((server.http_addrs[0], server.https_addrs[0]), (http, https));
    stop.store(true, Ordering::SeqCst);
    for l in loads {
        let failures = within(l).await.unwrap();
        assert!(failures.is_empty(), "{failures:?}");
    }
    assert!(
        count.load(Ordering::SeqCst) > 50,
        "load too small to mean anything"
    );
    for ws in [&mut ws_plain] {
        within(ws.send(Message::text("alive"))).await.unwrap();
        assert_eq!(
            within(ws.next())
                .await
                .unwrap()
                .unwrap()
                .into_text()
                .unwrap()
                .as_str(),
            "alive"
        );
    }
    within(ws_tls.send(Message::text("alive"))).await.unwrap();
    assert_eq!(
        within(ws_tls.next())
            .await
            .unwrap()
            .unwrap()
            .into_text()
            .unwrap()
            .as_str(),
        "alive"
    );
    within(server.shutdown(Duration::from_secs(2))).await;
}

/// The binary: a changed file is picked up, an invalid one is logged with
/// its line and the old routes keep serving, SIGHUP reloads.
#[tokio::test]
async fn file_changes_and_sighup_reload_the_binary() {
    let a = fixed(200, "A").await;
    let b = fixed(200, "B").await;
    let dir = tempfile::tempdir().unwrap();
    let write = |url: &str| {
        std::fs::write(
            dir.path().join("gatehouse.toml"),
            format!("http_port = 0\nhttps_port = 0\nbind = [\"127.0.0.1\"]\nforce_https_redirect = false\n{}", routes(&[("/", url)])),
        )
        .unwrap()
    };
    write(&a.url());
    let mut p = Running::spawn(dir.path(), &[], &[]);
    let port = p.port_after("listening on http://127.0.0.1:").await;
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let get_text = async || {
        send(Proto::H1, addr, std::path::Path::new(""), get("/", "h"))
            .await
            .unwrap()
            .text()
    };
    assert_eq!(get_text().await, "A");
    write(&b.url());
    p.wait_for("config reloaded (generation 2)").await;
    assert_eq!(get_text().await, "B");
    std::fs::write(
        dir.path().join("gatehouse.toml"),
        "http_port = 0\n[[route]]\npath = \"/\"\nupstrem = \"x\"\n",
    )
    .unwrap();
    p.wait_for("reload (file change) rejected").await;
    p.wait_for("gatehouse.toml:4:1: upstrem").await;
    assert_eq!(get_text().await, "B", "the old configuration keeps serving");
    write(&a.url());
    p.wait_for("config reloaded (generation 3)").await;
    assert_eq!(get_text().await, "A");
    p.signal("HUP");
    p.wait_for("config reloaded (generation 4)").await;
    p.signal("TERM");
    assert_eq!(p.exit_code().await, 0);
}

#[tokio::test]
async fn metrics_health_and_the_reload_command() {
    let a = fixed(200, "A").await;
    let dir = tempfile::tempdir().unwrap();
    let metrics_port = free_port();
    let refused = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    std::fs::write(
        dir.path().join("gatehouse.toml"),
        format!(
            "http_port = 0\nhttps_port = 0\nbind = [\"127.0.0.1\"]\nforce_https_redirect = false\n\n[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n\n{}",
            routes(&[("/down", &format!("http://{refused}")), ("/", &a.url())])
        ),
    )
    .unwrap();
    let mut p = Running::spawn(dir.path(), &[], &[]);
    let port = p.port_after("listening on http://127.0.0.1:").await;
    p.wait_for(&format!(
        "metrics and health on http://127.0.0.1:{metrics_port}"
    ))
    .await;
    let cli = async |args: &[&str]| {
        let (code, out, _) = run(dir.path(), args, &[]).await;
        (code, out)
    };
    // Ready once every upstream's state is known: /readyz connects to each
    // route no request has used yet (issue 11: a container is healthy
    // before its first visitor).
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let (code, out) = cli(&["health"]).await;
        if code == 0 {
            assert_eq!(out, "ready\n");
            break;
        }
        assert!(out.contains("waiting for the first contact"), "{out}");
        assert!(tokio::time::Instant::now() < deadline, "never ready: {out}");
        tokio::task::yield_now().await;
    }
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    assert_eq!(
        send(Proto::H1, addr, std::path::Path::new(""), get("/", "h"))
            .await
            .unwrap()
            .text(),
        "A"
    );
    assert_eq!(
        send(
            Proto::H1,
            addr,
            std::path::Path::new(""),
            get("/down/x", "h")
        )
        .await
        .unwrap()
        .status,
        503
    );
    let (code, out) = cli(&["health"]).await;
    assert_eq!((code, out.as_str()), (0, "ready\n"));
    let metrics_addr: std::net::SocketAddr = ([127, 0, 0, 1], metrics_port).into();
    let scrape = async || {
        let res = send(
            Proto::H1,
            metrics_addr,
            std::path::Path::new(""),
            get("/metrics", "h"),
        )
        .await
        .unwrap();
        assert_eq!(res.status, 200);
        parse_prometheus(&res.text())
    };
    let m = scrape().await;
    assert_eq!(
        m["gatehouse_requests_total{route=\"/\",class=\"2xx\"}"],
        1.0
    );
    assert_eq!(
        m["gatehouse_requests_total{route=\"/down\",class=\"5xx\"}"],
        1.0
    );
    assert_eq!(
        m["gatehouse_upstream_connect_errors_total{route=\"/down\"}"],
        1.0
    );
    assert_eq!(
        m["gatehouse_request_duration_seconds_count{route=\"/\"}"],
        1.0
    );
    assert_eq!(
        m["gatehouse_request_duration_seconds_bucket{route=\"/\",le=\"+Inf\"}"],
        1.0
    );
    assert_eq!(m["gatehouse_config_generation"], 1.0);
    assert!(m["gatehouse_certificate_expiry_timestamp_seconds{name=\"localhost\"}"] > 1.7e9);
    assert!(m.contains_key("gatehouse_open_connections{protocol=\"websocket\"}"));
    assert_eq!(
        send(
            Proto::H1,
            metrics_addr,
            std::path::Path::new(""),
            get("/healthz", "h")
        )
        .await
        .unwrap()
        .text(),
        "ok\n"
    );
    // `gatehouse reload` applies the configuration in the running process.
    let (code, out) = cli(&["reload"]).await;
    assert_eq!(
        (code, out.as_str()),
        (0, "config reloaded (generation 2)\n")
    );
    assert_eq!(scrape().await["gatehouse_config_generation"], 2.0);
    p.signal("TERM");
    assert_eq!(p.exit_code().await, 0);
}

/// Issue 5 point 2: JSON access log lines, request ids, and a stdout that
/// nobody reads never stalls requests.
#[tokio::test]
async fn access_log_and_request_ids() {
    let up = echo().await;
    // The flood below goes to the cheapest answer there is.
    let fill = fixed(200, "x").await;
    let dir = tempfile::tempdir().unwrap();
    let refused = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    std::fs::write(
        dir.path().join("gatehouse.toml"),
        format!(
            "http_port = 0\nhttps_port = 0\nbind = [\"127.0.0.1\"]\nforce_https_redirect = false\nlog_format = \"json\"\ntrusted_proxies = [\"127.0.0.1\"]\n\n[metrics]\nlisten = \"127.0.0.1:0\"\n\n{}",
            routes(&[("/down", &format!("http://{refused}")), ("/fill", &fill.url()), ("/", &up.url())])
        ),
    )
    .unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .current_dir(dir.path())
        .env_clear()
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut port, mut metrics_port) = (None::<u16>, None::<u16>);
    while port.is_none() || metrics_port.is_none() {
        let line = within(lines.next_line()).await.unwrap().expect("exited");
        let after = |prefix: &str| {
            let rest = line.split(prefix).nth(1)?;
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        };
        port = port.or(after("listening on http://127.0.0.1:"));
        metrics_port = metrics_port.or(after("metrics and health on http://127.0.0.1:"));
    }
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port.unwrap()).into();
    // From a trusted peer, an incoming id is kept and sent upstream.
    let req = http::Request::builder()
        .method("POST")
        .uri("/api/x?q=1")
        .header("host", "h")
        .header("x-request-id", "trace-abc-123")
        .header("user-agent", "gatehouse-test")
        .body(full("hello"))
        .unwrap();
    let res = send(Proto::H1, addr, std::path::Path::new(""), req)
        .await
        .unwrap();
    assert_eq!(res.header("x-request-id"), Some("trace-abc-123"));
    assert_eq!(res.seen().header("x-request-id"), Some("trace-abc-123"));
    // A failure: the id is on the page and in the header.
    let res = send(
        Proto::H1,
        addr,
        std::path::Path::new(""),
        get("/down/y", "h"),
    )
    .await
    .unwrap();
    let id = res.header("x-request-id").unwrap().to_string();
    assert_eq!(id.len(), 16, "generated: {id}");
    assert!(
        res.text().contains(&format!("Request ID: {id}")),
        "{}",
        res.text()
    );
    // The two log lines, as JSON.
    let mut logged = Vec::new();
    while logged.len() < 2 {
        let line = within(lines.next_line()).await.unwrap().expect("exited");
        if line.starts_with('{') {
            logged.push(serde_json::from_str::<serde_json::Value>(&line).unwrap());
        }
    }
    let ok = logged
        .iter()
        .find(|v| v["request_id"] == "trace-abc-123")
        .expect("first request logged");
    assert_eq!(ok["method"], "POST");
    assert_eq!(ok["path"], "/api/x?q=1");
    assert_eq!(ok["protocol"], "HTTP/1.1");
    assert_eq!(ok["status"], 200);
    assert_eq!(ok["client"], "127.0.0.1");
    assert_eq!(ok["bytes_in"], 5);
    assert!(ok["bytes_out"].as_u64().unwrap() > 100);
    assert_eq!(ok["route"], "/");
    assert_eq!(ok["upstream"], up.addr.to_string());
    assert_eq!(ok["user_agent"], "gatehouse-test");
    let failed = logged
        .iter()
        .find(|v| v["request_id"] == id.as_str())
        .expect("failure logged");
    assert_eq!(failed["status"], 503);
    assert_eq!(failed["route"], "/down");
    // Nobody reads stdout any more: the pipe fills, then the log queue
    // (16,384 lines), and lines are dropped and counted; every request is
    // still answered. 20,000 pipelined requests on one connection, read
    // back as they come.
    const FLOOD: usize = 20_000;
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let writer = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let one = b"GET /fill HTTP/1.1\r\nHost: h\r\n\r\n";
        for _ in 0..FLOOD / 100 {
            wr.write_all(&one.repeat(100)).await.unwrap();
        }
        wr.write_all(b"GET /fill HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        wr
    });
    let mut answers = Vec::new();
    // 20,000 proxied requests in a debug build on a busy 2-core machine:
    // a bound of its own, wider than the suite's per-step LIMIT.
    tokio::time::timeout(
        Duration::from_secs(120),
        tokio::io::AsyncReadExt::read_to_end(&mut rd, &mut answers),
    )
    .await
    .expect("the flood was answered within 120 s")
    .unwrap();
    let _wr = within(writer).await.unwrap();
    let ok = answers
        .windows(13)
        .filter(|w| w == b"HTTP/1.1 200 ")
        .count();
    assert_eq!(ok, FLOOD + 1, "every pipelined request answered 200");
    let scrape = send(
        Proto::H1,
        ([127, 0, 0, 1], metrics_port.unwrap()).into(),
        std::path::Path::new(""),
        get("/metrics", "h"),
    )
    .await
    .unwrap()
    .text();
    let dropped = parse_prometheus(&scrape)["gatehouse_access_log_dropped_total"];
    assert!(dropped > 0.0, "no line was dropped: the queue never filled");
    let pid = child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-s", "TERM", &pid])
        .status()
        .unwrap()
        .success());
    drop(lines);
    assert_eq!(within(child.wait()).await.unwrap().code(), Some(0));
}
