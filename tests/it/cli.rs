//! The binary as users run it: `check`, `demo`, serving, signals, logs,
//! exit codes, memory under a large download, and the config golden cases.

use std::path::{Path, PathBuf};
use std::time::Duration;

use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::support::*;

/// The configuration file from the issue, exactly as written there.
const ISSUE_FILE: &str = r#"http_port = 80
https_port = 443

[tls]
cert = "certificates/ssl/cert.pem"
key = "certificates/ssl/key.pem"

[[route]]
path = "/admin"
upstream = "http://admin:3002"
forwarded_prefix = "/admin/"
websocket_timeout = "24h"

[[route]]
path = "/api"
upstream = "http://api:3001"

[[route]]
path = "/"
upstream = "http://client:3000"
"#;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[tokio::test]
async fn check_accepts_the_issue_file_and_prints_the_effective_setup() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "gatehouse.toml", ISSUE_FILE);
    let (code, out, err) = run(dir.path(), &["check"], &[]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("configuration: gatehouse.toml: ok"), "{out}");
    assert!(
        out.contains("http  0.0.0.0:80 (redirect to https, port 443)"),
        "{out}"
    );
    assert!(out.contains("https [::]:443"), "{out}");
    assert!(out.contains("/admin -> http://admin:3002 (timeout 1m, websocket idle 24h, max body 100 MiB (read ahead 64 KiB, 1m between reads), X-Forwarded-Prefix /admin/)"), "{out}");
    assert!(out.contains("/api -> http://api:3001"), "{out}");
    assert!(out.contains("/ -> http://client:3000"), "{out}");
    assert!(out.contains("certificate: self-signed for \"localhost\" will be generated at ./certificates/ssl/cert.pem"), "{out}");
    // check never writes.
    assert!(!dir.path().join("certificates").exists());
}

#[tokio::test]
async fn check_without_a_file_uses_the_aliasvault_layout_and_env() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        ".env",
        "HTTPS_PORT=8443\nHOSTNAME=vault.example.com\nTRUSTED_PROXIES=10.0.0.0/8\nLETSENCRYPT_ENABLED=true\n",
    );
    let (code, out, err) = run(dir.path(), &["check"], &[("HTTP_PORT", "8080")]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("built-in default"), "{out}");
    assert!(
        out.contains("http  0.0.0.0:8080 (redirect to https, port 8443)"),
        "{out}"
    );
    assert!(out.contains("\"vault.example.com\""), "{out}");
    assert!(
        out.contains("certificate: ./certificates/letsencrypt/live/vault.example.com/fullchain.pem not present yet; until then: self-signed"),
        "{out}"
    );
    assert!(out.contains("trusted proxies: 10.0.0.0/8\n"), "{out}");
}

#[tokio::test]
async fn config_errors_name_file_line_and_key_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "bad.toml",
        "http_port = 80\n\n[[route]]\npath = \"/\"\nupstrem = \"http://client:3000\"\n",
    );
    let (code, _, err) = run(dir.path(), &["check", "--config", "bad.toml"], &[]).await;
    assert_eq!(code, 2);
    assert!(
        err.contains("bad.toml:5:1: upstrem: unknown field `upstrem`"),
        "{err}"
    );

    write(
        dir.path(),
        "bad2.toml",
        "[[route]]\npath = \"/\"\nupstream = \"client:3000\"\n",
    );
    let (code, _, err) = run(dir.path(), &["--config", "bad2.toml"], &[]).await;
    assert_eq!(code, 2, "serving fails the same way");
    assert!(
        err.contains("bad2.toml:3:12: upstream: expected http://host:port"),
        "{err}"
    );

    let (code, _, err) = run(dir.path(), &["check"], &[("HTTPS_PORT", "99999")]).await;
    assert_eq!(code, 2);
    assert!(
        err.contains("environment: HTTPS_PORT: invalid value \"99999\""),
        "{err}"
    );

    write(
        dir.path(),
        ".env",
        "# AliasVault\nMAX_UPLOAD_SIZE_MB=lots\n",
    );
    let (code, _, err) = run(dir.path(), &["check"], &[]).await;
    assert_eq!(code, 2);
    assert!(
        err.contains(".env:2: MAX_UPLOAD_SIZE_MB: invalid value \"lots\""),
        "{err}"
    );
}

#[tokio::test]
async fn config_golden_cases() {
    let cases = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/config_cases");
    let mut n = 0;
    for entry in std::fs::read_dir(&cases).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        n += 1;
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        let source = gatehouse::config::Source::Text {
            name: PathBuf::from(&name),
            text: std::fs::read_to_string(&path).unwrap(),
            base_dir: PathBuf::from("."),
        };
        // The golden output is what `gatehouse check` prints: the plan
        // start and reload commit, or the error all three refuse with.
        let got = match gatehouse::config::load(&source, &gatehouse::config::Env::empty())
            .and_then(|cfg| gatehouse::ops::plan::plan(&cfg).map(|plan| (cfg, plan)))
        {
            Ok((cfg, plan)) => gatehouse::tools::check::describe(&cfg, &plan),
            Err(e) => format!("error: {}\n", gatehouse::base::error_chain::ErrorChain(&e)),
        };
        // GATEHOUSE_BLESS=1 rewrites the expected outputs; review the diff.
        if std::env::var_os("GATEHOUSE_BLESS").is_some() {
            std::fs::write(path.with_extension("out"), &got).unwrap();
        }
        let want = std::fs::read_to_string(path.with_extension("out")).unwrap_or_default();
        assert_eq!(got, want, "{name}");
    }
    assert!(n >= 5, "golden cases missing");
}

#[tokio::test]
async fn serves_logs_and_drains_in_flight_requests_on_sigterm() {
    let (gate_tx, gate_rx) = tokio::sync::watch::channel(false);
    let (got_tx, mut got_rx) = mpsc::unbounded_channel::<()>();
    // An upstream whose /slow answer waits for the test's go-ahead.
    let up = upstream(move |req: http::Request<hyper::body::Incoming>| {
        let mut gate = gate_rx.clone();
        let got = got_tx.clone();
        async move {
            if req.uri().path() == "/slow" {
                let _ = got.send(());
                let _ = gate.wait_for(|g| *g).await;
            }
            http::Response::new(full("done"))
        }
    })
    .await;
    let refused = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "http_port = 0\nhttps_port = 0\nbind = [\"127.0.0.1\"]\nforce_https_redirect = false\n{}",
        routes(&[("/down", &format!("http://{refused}")), ("/", &up.url())])
    );
    write(dir.path(), "gatehouse.toml", &toml);
    let mut p = Running::spawn(dir.path(), &[], &[]);
    let http_port = p.port_after("listening on http://127.0.0.1:").await;
    let _ = p.port_after("listening on https://127.0.0.1:").await;
    p.wait_for(&format!("route / -> {}", up.url())).await;
    let cert_line = p.wait_for("certificate: self-signed, generated into").await;
    assert!(
        cert_line.contains("SHA-256 ") && cert_line.contains("expires"),
        "{cert_line}"
    );

    // A failure is logged with route, upstream address and cause.
    let addr: std::net::SocketAddr = format!("127.0.0.1:{http_port}").parse().unwrap();
    let res = send(Proto::H1, addr, Path::new(""), get("/down/x", "h"))
        .await
        .unwrap();
    assert_eq!(res.status, StatusCode::SERVICE_UNAVAILABLE);
    let line = p.wait_for("request failed with 503").await;
    assert!(
        line.contains("route=\"/down\"") || line.contains("route=/down"),
        "{line}"
    );
    assert!(line.contains(&refused.to_string()), "{line}");
    assert!(line.contains("cannot connect"), "{line}");

    // In flight when SIGTERM arrives: it still completes.
    let inflight =
        tokio::spawn(async move { send(Proto::H1, addr, Path::new(""), get("/slow", "h")).await });
    within(got_rx.recv()).await.unwrap();
    p.signal("TERM");
    p.wait_for("SIGTERM received").await;
    // New connections are refused once the listeners are closed.
    let deadline = tokio::time::Instant::now() + LIMIT;
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "still accepting after SIGTERM"
        );
        tokio::task::yield_now().await;
    }
    gate_tx.send(true).unwrap();
    let res = within(inflight).await.unwrap().unwrap();
    assert_eq!(res.text(), "done");
    assert_eq!(p.exit_code().await, 0);
}

#[tokio::test]
async fn a_large_download_streams_with_flat_memory() {
    const SIZE: u64 = 1 << 30; // 1 GiB
    let up = upstream(|_req| async move {
        let chunk = bytes::Bytes::from(vec![b'g'; 256 * 1024]);
        let n = SIZE / chunk.len() as u64;
        let stream = futures_util::stream::iter(
            (0..n).map(move |_| Ok::<_, BoxError>(http_body::Frame::data(chunk.clone()))),
        );
        let mut res = http::Response::new(http_body_util::BodyExt::boxed(
            http_body_util::StreamBody::new(stream),
        ));
        res.headers_mut()
            .insert("content-length", SIZE.to_string().parse().unwrap());
        res.headers_mut()
            .insert("content-type", "application/octet-stream".parse().unwrap());
        res
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "http_port = 0\nhttps_port = 0\nbind = [\"127.0.0.1\"]\nforce_https_redirect = false\nworkers = 2\n{}",
        routes(&[("/", &up.url())])
    );
    write(dir.path(), "gatehouse.toml", &toml);
    let mut p = Running::spawn(dir.path(), &[], &[]);
    let port = p.port_after("listening on http://127.0.0.1:").await;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    within(s.write_all(b"GET /big HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"))
        .await
        .unwrap();
    let mut total = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    tokio::time::timeout(Duration::from_secs(300), async {
        loop {
            let n = s.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            total += n as u64;
        }
    })
    .await
    .expect("download finished");
    assert!(total > SIZE, "got {total} bytes");
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", p.child.id().unwrap())).unwrap();
    let hwm_kib: u64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    // The whole body would be 1 048 576 KiB; the proxy must stay far below.
    assert!(
        hwm_kib < 64 * 1024,
        "peak RSS {hwm_kib} KiB for a 1 GiB download"
    );
    p.signal("TERM");
    assert_eq!(p.exit_code().await, 0);
}

#[tokio::test]
async fn demo_serves_all_three_services_and_a_websocket() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = Running::spawn(
        dir.path(),
        &["demo", "--http-port", "0", "--https-port", "0"],
        &[],
    );
    let https = p.port_after("https://localhost:").await;
    let http = p.port_after("http://localhost:").await;
    let https_addr: std::net::SocketAddr = format!("127.0.0.1:{https}").parse().unwrap();
    let http_addr: std::net::SocketAddr = format!("127.0.0.1:{http}").parse().unwrap();
    // The demo's certificate lives in memory; trust anything for this check.
    let fetch = |path: &'static str| async move {
        let tcp = tokio::net::TcpStream::connect(https_addr).await.unwrap();
        let cfg = insecure_client();
        let tls = tokio_rustls::TlsConnector::from(cfg)
            .connect("localhost".try_into().unwrap(), tcp)
            .await
            .unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .unwrap();
        tokio::spawn(conn.with_upgrades());
        collect(sender.send_request(get(path, "localhost")).await.unwrap())
            .await
            .unwrap()
    };
    let client = within(fetch("/")).await;
    assert!(client.text().contains("Client app"), "{}", client.text());
    assert_eq!(within(fetch("/api")).await.text(), "OK");
    let admin = within(fetch("/admin")).await;
    assert!(admin.text().contains("/admin/ws"));
    assert_eq!(admin.header("x-aliasvault-deployment"), Some("demo"));
    let res = send(
        Proto::H1,
        http_addr,
        Path::new(""),
        get("/admin", "localhost"),
    )
    .await
    .unwrap();
    assert_eq!(
        res.header("location"),
        Some(format!("https://localhost:{https}/admin").as_str())
    );
    // The admin page's WebSocket, through the proxy.
    use futures_util::{SinkExt, StreamExt};
    let tcp = tokio::net::TcpStream::connect(https_addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(insecure_client())
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let (mut ws, _) = within(tokio_tungstenite::client_async(
        "wss://localhost/admin/ws",
        tls,
    ))
    .await
    .unwrap();
    within(ws.send(tokio_tungstenite::tungstenite::Message::text("ping 1")))
        .await
        .unwrap();
    let back = within(ws.next()).await.unwrap().unwrap();
    assert_eq!(back.into_text().unwrap().as_str(), "ping 1");
    // `gatehouse doctor` against the demo: every check of the Testing list
    // passes, and the one problem is the certificate nobody can verify.
    let (code, out, _) = run(
        dir.path(),
        &["doctor", &format!("https://localhost:{https}"), "--json"],
        &[],
    )
    .await;
    assert_eq!(code, 1, "{out}");
    let o: serde_json::Value = serde_json::from_str(&out).unwrap();
    let ids: Vec<&str> = o["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["tls-verify"], "{out}");
    for c in o["checks"].as_array().unwrap() {
        assert!(c["ok"] == true || c["name"] == "connection", "{out}");
    }
    p.signal("INT");
    assert_eq!(p.exit_code().await, 0);
}

/// For the demo only, whose certificate exists in memory alone.
pub fn insecure_client() -> std::sync::Arc<rustls::ClientConfig> {
    #[derive(Debug)]
    struct AnyCert;
    impl rustls::client::danger::ServerCertVerifier for AnyCert {
        fn verify_server_cert(
            &self,
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &[rustls::pki_types::CertificateDer<'_>],
            _: &rustls::pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            rustls::crypto::ring::default_provider()
                .signature_verification_algorithms
                .supported_schemes()
        }
    }
    let cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(std::sync::Arc::new(AnyCert))
    .with_no_client_auth();
    std::sync::Arc::new(cfg)
}
