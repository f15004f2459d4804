//! Issue 3 points 5 and 7 with real attack and audit tools: slowhttptest
//! (slowloris, slow body) and testssl.sh, both installed by scripts/test.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

use crate::support::*;

/// One request from another loopback address (the attack comes from
/// 127.0.0.1; a real user is a different client).
async fn normal_request(addr: std::net::SocketAddr) -> Result<String, String> {
    let s = TcpSocket::new_v4().map_err(|e| e.to_string())?;
    s.bind("127.0.0.2:0".parse().unwrap())
        .map_err(|e| e.to_string())?;
    let mut c = tokio::time::timeout(Duration::from_secs(5), s.connect(addr))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| e.to_string())?;
    c.write_all(b"GET /api HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut out))
        .await
        .map_err(|_| "response timed out".to_string())?
        .map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

async fn under_attack(mode: &str) {
    // The echo upstream reads whole bodies, as an API does: a slow body
    // then really holds a request open.
    let up = echo().await;
    // The attack has a route (and upstream) of its own, so what reaches
    // that upstream can be counted: its slow POSTs (slowhttptest's probes
    // are GETs).
    let posts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = posts.clone();
    let attacked = upstream(move |req| {
        if req.method() == http::Method::POST {
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        echo_handler(req)
    })
    .await;
    let toml = format!(
        "force_https_redirect = false\n{}",
        routes(&[("/slow", &attacked.url()), ("/", &up.url())])
    );
    let px = Proxy::start(&toml).await;
    let url = format!("http://127.0.0.1:{}/slow", px.http.port());
    // Slow bodies within request_buffer (64 KiB by default), so none may
    // reach the upstream (issue 10 point 6).
    let mut attack = tokio::process::Command::new("slowhttptest")
        .args([
            mode, "-c", "1000", "-r", "500", "-i", "1", "-x", "10", "-p", "3", "-l", "12", "-s",
            "16384", "-u",
        ])
        .arg(&url)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("slowhttptest is installed (scripts/test installs it)");
    // Wait until the attack holds connections, polling the proxy's own
    // count (a condition, bounded by the test limit).
    let shared = px.server.as_ref().unwrap().shared.clone();
    let deadline = tokio::time::Instant::now() + LIMIT;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    while shared.open_connections() < 100 {
        let open = shared.open_connections();
        assert!(
            tokio::time::Instant::now() < deadline,
            "{mode}: the attack never got going ({open} open)"
        );
        tick.tick().await;
    }
    // A normal client keeps being served while the attack runs.
    let mut served = 0;
    let started = tokio::time::Instant::now();
    while started.elapsed() < Duration::from_secs(8) && served < 200 {
        let out = normal_request(px.http)
            .await
            .unwrap_or_else(|e| panic!("{mode}: normal client failed: {e}"));
        assert!(out.starts_with("HTTP/1.1 200"), "{mode}: {out}");
        served += 1;
    }
    assert!(served >= 20, "{mode}: only {served} requests served");
    let status = tokio::time::timeout(Duration::from_secs(60), attack.wait())
        .await
        .expect("slowhttptest ends")
        .unwrap();
    assert!(status.success(), "slowhttptest failed to run");
    if mode == "-B" {
        assert_eq!(
            posts.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "slow bodies reached the upstream ({} connections in all)",
            attacked
                .connections
                .load(std::sync::atomic::Ordering::SeqCst)
        );
    }
    px.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_does_not_starve_normal_clients() {
    under_attack("-H").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_body_does_not_starve_normal_clients() {
    under_attack("-B").await;
}

#[tokio::test]
async fn testssl_finds_no_vulnerability_and_nothing_below_tls_12() {
    let up = fixed(200, "OK").await;
    let px = Proxy::start(&routes(&[("/", &up.url())])).await;
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("testssl.json");
    let out = tokio::time::timeout(
        Duration::from_secs(240),
        tokio::process::Command::new("testssl")
            .args([
                "--quiet",
                "--color",
                "0",
                "--warnings",
                "off",
                "--ip",
                "one",
                "-p",
                "-U",
                "--jsonfile",
            ])
            .arg(&json)
            .arg(format!("https://localhost:{}", px.https.port()))
            .output(),
    )
    .await
    .expect("testssl.sh finished")
    .expect("testssl.sh is installed (scripts/test installs it)");
    let findings: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(&json).unwrap_or_default()).unwrap_or_else(|e| {
            panic!(
                "no JSON from testssl.sh ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        });
    let get = |id: &str| {
        findings
            .iter()
            .find(|f| f["id"] == id)
            .map(|f| f["finding"].as_str().unwrap_or("").to_string())
            .unwrap_or_else(|| panic!("testssl.sh did not report {id}"))
    };
    for old in ["SSLv2", "SSLv3", "TLS1", "TLS1_1"] {
        assert_eq!(get(old), "not offered", "{old}");
    }
    assert_eq!(get("TLS1_2"), "offered");
    assert!(get("TLS1_3").starts_with("offered"));
    for id in [
        "heartbleed",
        "CCS",
        "ticketbleed",
        "ROBOT",
        "secure_renego",
        "secure_client_renego",
        "CRIME_TLS",
        "POODLE_SSL",
        "SWEET32",
        "FREAK",
        "LOGJAM",
        "BEAST",
        "LUCKY13",
        "RC4",
    ] {
        let f = findings
            .iter()
            .find(|f| f["id"] == id)
            .unwrap_or_else(|| panic!("{id} not checked"));
        let sev = f["severity"].as_str().unwrap_or("");
        assert!(matches!(sev, "OK" | "INFO"), "{id}: {sev} {}", f["finding"]);
    }
    let bad: Vec<String> = findings
        .iter()
        .filter(|f| matches!(f["severity"].as_str(), Some("MEDIUM" | "HIGH" | "CRITICAL")))
        .map(|f| format!("{} {} {}", f["id"], f["severity"], f["finding"]))
        .collect();
    assert!(bad.is_empty(), "{bad:#?}");
    px.stop().await;
}
