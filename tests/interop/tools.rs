//! Checks by independent tools: promtool reads a real scrape, curl (its own
//! HTTP/2 and TLS) requests through Gatehouse.

use tokio::io::AsyncWriteExt;

use crate::support::*;

/// The scrape is valid Prometheus text by Prometheus's own checker
/// (counters typed as counters, label values escaped, HELP everywhere).
#[tokio::test]
async fn metrics_pass_promtool() {
    let up = echo().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("gatehouse.toml"),
        format!(
            // A cluster whose Redis is not there: its series are exported
            // all the same (issue 14).
            "http_port = 0\nhttps_port = 0\nbind = [\"127.0.0.1\"]\nforce_https_redirect = false\nlog_format = \"off\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n[cluster]\nredis = \"redis://127.0.0.1:1/0\"\nname = \"promtool\"\n\n{}{}",
            route("/q\\\"uote\\\\d", &up.url(), ""),
            route("/", &up.url(), "")
        ),
    )
    .unwrap();
    let mut p = Running::spawn(dir.path(), &[], &[]);
    let port = p.port_after("listening on http://127.0.0.1:").await;
    // Port 0 and the port read back from the log: no port picked ahead.
    let metrics_port = p
        .port_after("metrics and health on http://127.0.0.1:")
        .await;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    assert!(raw(
        addr,
        b"GET /q\"uote\\d HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
    )
    .await
    .starts_with("HTTP/1.1"));
    let scrape = send(
        Proto::H1,
        ([127, 0, 0, 1], metrics_port).into(),
        std::path::Path::new(""),
        get("/metrics", "h"),
    )
    .await
    .unwrap()
    .text();
    assert!(scrape.contains("route=\"/q\\\"uote\\\\d\""), "{scrape}");
    assert!(scrape.contains("# TYPE gatehouse_config_reload_failures_total counter"));
    assert!(
        scrape.contains("# TYPE gatehouse_redis_up gauge"),
        "{scrape}"
    );
    assert!(scrape.contains("# TYPE gatehouse_redis_fallbacks_total counter"));
    let mut promtool = tokio::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package) is installed");
    let mut stdin = promtool.stdin.take().unwrap();
    within(stdin.write_all(scrape.as_bytes())).await.unwrap();
    drop(stdin);
    let out = within(promtool.wait_with_output()).await.unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}\n{scrape}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// curl, an independent HTTP/2 and TLS implementation, sees the same thing.
#[tokio::test]
async fn curl_over_http2_with_the_generated_certificate() {
    let api = fixed(200, "OK").await;
    let px = Proxy::start(&routes(&[("/api", &api.url())])).await;
    let port = px.https.port();
    let out = within(
        tokio::process::Command::new("curl")
            .args(["-sS", "--http2", "-D", "-", "--cacert"])
            .arg(px.cert_path())
            .arg("--resolve")
            .arg(format!("localhost:{port}:127.0.0.1"))
            .arg(format!("https://localhost:{port}/api"))
            .output(),
    )
    .await
    .expect("curl is installed (scripts/test installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.starts_with("HTTP/2 200"), "{text}");
    assert!(
        text.contains("strict-transport-security: max-age=31536000"),
        "{text}"
    );
    assert!(text.ends_with("OK"), "{text}");
    px.stop().await;
}
