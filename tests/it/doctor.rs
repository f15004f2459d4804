//! `gatehouse doctor` (issue 5) against Gatehouse directly, and the
//! diagnostic endpoint it asks. Through real proxies in front:
//! `tests/interop/external.rs`.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use http::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;

use crate::support::*;

use crate::support::apps::*;

fn options(
    url: &str,
    connect: SocketAddr,
    ca: &Path,
    token: Option<&str>,
) -> gatehouse::tools::doctor::Options {
    gatehouse::tools::doctor::Options {
        url: url.parse().unwrap(),
        connect_to: Some(connect.to_string()),
        ca: vec![ca.to_path_buf()],
        token: token.map(str::to_string),
        api: "/api".into(),
        admin: "/admin".into(),
        timeout: Duration::from_secs(5),
    }
}

/// The doctor (in-process) straight at Gatehouse's HTTPS port.
async fn direct(proxy: &Proxy, token: Option<&str>) -> gatehouse::tools::doctor::Outcome {
    let url = format!("https://{HOST}:{}", proxy.https.port());
    within(gatehouse::tools::doctor::run(&options(
        &url,
        proxy.https,
        &proxy.cert_path(),
        token,
    )))
    .await
}

fn ids(outcome: &gatehouse::tools::doctor::Outcome) -> Vec<&str> {
    outcome.findings.iter().map(|f| f.id).collect()
}

fn check<'a>(
    outcome: &'a gatehouse::tools::doctor::Outcome,
    name: &str,
) -> &'a gatehouse::tools::doctor::Check {
    outcome
        .checks
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no check {name}: {outcome:#?}"))
}

// ------------------------------------------------------------ doctor direct

#[tokio::test]
async fn doctor_passes_against_gatehouse_directly_and_reports_tls_trouble() {
    let apps = apps().await;
    let proxy = gatehouse(&apps, "10.0.0.0/8").await;
    let url = format!("https://{HOST}:{}", proxy.https.port());
    let o = direct(&proxy, Some(TOKEN)).await;
    assert!(o.ok(), "{}", o.render());
    for name in ALL_CHECKS {
        assert!(check(&o, name).ok, "{name}: {}", o.render());
    }
    assert!(check(&o, "api").detail.contains("\"OK\""), "{}", o.render());
    assert!(check(&o, "websocket")
        .detail
        .contains(&format!("id={CIRCUIT}")));

    // Without the certificate as a trusted root: verification fails, is
    // named, and every other check still runs.
    let mut opts = options(&url, proxy.https, &proxy.cert_path(), Some(TOKEN));
    opts.ca.clear();
    let o = within(gatehouse::tools::doctor::run(&opts)).await;
    assert_eq!(ids(&o), ["tls-verify"], "{}", o.render());
    assert!(o.render().contains("--ca certificates/ssl/cert.pem"));
    assert!(check(&o, "websocket").ok && check(&o, "admin").ok);
    proxy.stop().await;
}

#[tokio::test]
async fn doctor_names_the_route_and_cause_of_a_gatehouse_503() {
    let apps = apps().await;
    // The API is down: a port with nothing behind it.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let toml = format!(
        "[diagnostics]\ntoken = \"{TOKEN}\"\n\n{}",
        routes(&[
            ("/admin", &apps.admin.url()),
            ("/api", &format!("http://{dead}")),
            ("/", &apps.client.url()),
        ])
    );
    let proxy = Proxy::start_env(&toml, &[("HOSTNAME", HOST)]).await;
    let o = direct(&proxy, Some(TOKEN)).await;
    assert_eq!(ids(&o), ["upstream-unavailable"], "{}", o.render());
    let f = &o.findings[0];
    assert_eq!(f.path.as_deref(), Some("/api"));
    assert!(f.message.contains("Gatehouse answered"), "{}", f.message);
    assert!(f.message.contains(&dead.to_string()), "{}", f.message);
    assert!(f.message.contains("refused"), "{}", f.message);
    assert!(!check(&o, "api").ok && check(&o, "client").ok && check(&o, "websocket").ok);

    // Without the token the cause is still attributed to Gatehouse.
    let o = direct(&proxy, None).await;
    assert_eq!(ids(&o), ["upstream-unavailable"], "{}", o.render());
    proxy.stop().await;
}

#[tokio::test]
async fn diagnostic_endpoint_is_off_by_default_and_refuses_a_wrong_token() {
    let apps = apps().await;
    // Off: the header is an ordinary header and the request is routed.
    let off = Proxy::start(&routes(&[("/", &apps.client.url())])).await;
    let mut req = get("/.well-known/gatehouse-doctor", "localhost");
    req.headers_mut()
        .insert("gatehouse-diagnostics", TOKEN.parse().unwrap());
    let res = within(off.send(Proto::TlsH1, req)).await.unwrap();
    assert_eq!(res.status, 200);
    assert!(res.text().contains("client app"));
    off.stop().await;

    let on = gatehouse(&apps, "10.0.0.0/8").await;
    let mut req = get("/api/x", "localhost");
    req.headers_mut().insert(
        "gatehouse-diagnostics",
        "wrong-token-wrong-token".parse().unwrap(),
    );
    let res = within(on.send(Proto::TlsH2, req)).await.unwrap();
    assert_eq!(res.status, 403);
    assert_eq!(
        apps.api
            .connections
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );

    let mut req = get("/api/x?y=1", "localhost");
    req.headers_mut()
        .insert("gatehouse-diagnostics", TOKEN.parse().unwrap());
    let res = within(on.send(Proto::TlsH2, req)).await.unwrap();
    assert_eq!(res.status, 200);
    let r: serde_json::Value = serde_json::from_str(&res.text()).unwrap();
    assert_eq!(r["target"], "/api/x?y=1");
    assert_eq!(r["route"]["path"], "/api");
    assert_eq!(
        r["route"]["servers"][0]["connect_error"],
        serde_json::Value::Null
    );
    assert!(!res.text().contains(TOKEN), "the token is redacted");

    // Over HTTP/2 as an RFC 8441 WebSocket: 200, then the report as the
    // first message on the stream.
    let tls = tls_connect(on.https, &on.cert_path(), &[b"h2"])
        .await
        .unwrap();
    let (mut sender, conn) = within(hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(tls),
    ))
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .method(Method::CONNECT)
        .uri("https://localhost/admin/x")
        .header("sec-websocket-version", "13")
        .header("gatehouse-diagnostics", TOKEN)
        .extension(hyper::ext::Protocol::from_static("websocket"))
        .body(full(""))
        .unwrap();
    let mut res = within(sender.send_request(req)).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let upgraded = within(hyper::upgrade::on(&mut res)).await.unwrap();
    let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
        TokioIo::new(upgraded),
        tokio_tungstenite::tungstenite::protocol::Role::Client,
        None,
    )
    .await;
    use futures_util::StreamExt;
    let msg = within(ws.next()).await.unwrap().unwrap();
    let r: serde_json::Value = serde_json::from_str(msg.to_text().unwrap()).unwrap();
    assert_eq!(r["method"], "CONNECT");
    assert_eq!(r["route"]["path"], "/admin");
    // The close frame follows; answering it ends the stream at once.
    let close = within(ws.next()).await;
    assert!(
        matches!(close, Some(Ok(ref m)) if m.is_close()),
        "{close:?}"
    );
    drop(ws);
    on.stop().await;
}

#[test]
fn diagnostics_token_must_be_a_real_secret() {
    let dir = tempfile::tempdir().unwrap();
    let e = load(dir.path(), "[diagnostics]\ntoken = \"short\"\n", &[]).unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("gatehouse.toml:") && text.contains("token"),
        "{text}"
    );
    let e = load(dir.path(), "", &[("GATEHOUSE_DIAGNOSTICS_TOKEN", "x y")]).unwrap_err();
    assert!(e.to_string().contains("GATEHOUSE_DIAGNOSTICS_TOKEN"), "{e}");
    let cfg = load(dir.path(), "", &[("GATEHOUSE_DIAGNOSTICS_TOKEN", TOKEN)]).unwrap();
    assert_eq!(cfg.diagnostics_token.as_deref(), Some(TOKEN));
    assert!(load(dir.path(), "", &[])
        .unwrap()
        .diagnostics_token
        .is_none());
}
