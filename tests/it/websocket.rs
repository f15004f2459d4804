//! Issue point 7: WebSocket over HTTP/1.1 on both ports, over HTTP/2
//! (RFC 8441), and the idle limit.

use futures_util::{SinkExt, StreamExt};
use http::{Method, Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::support::*;

async fn admin_proxy(extra: &str) -> (Proxy, Upstream) {
    let ws = websocket_echo().await;
    let toml = format!(
        "force_https_redirect = false\n[[route]]\npath = \"/admin\"\nupstream = \"{}\"\nforwarded_prefix = \"/admin/\"\n{extra}\n",
        ws.url()
    );
    (Proxy::start(&toml).await, ws)
}

async fn echo_round_trips<S>(ws: &mut WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    for i in 0..5 {
        let msg = format!("{{\"protocol\":\"blazorpack\",\"n\":{i}}}");
        within(ws.send(Message::text(msg.clone()))).await.unwrap();
        let back = within(ws.next()).await.unwrap().unwrap();
        assert_eq!(back.into_text().unwrap().as_str(), msg);
    }
    let big = vec![7u8; 200_000];
    within(ws.send(Message::binary(big.clone()))).await.unwrap();
    let back = within(ws.next()).await.unwrap().unwrap();
    assert_eq!(back.into_data().as_ref(), &big[..]);
}

#[tokio::test]
async fn websocket_over_http11_on_both_ports() {
    let (px, _ws) = admin_proxy("").await;
    // Plain HTTP port.
    let tcp = tokio::net::TcpStream::connect(px.http).await.unwrap();
    let (mut ws, res) = within(tokio_tungstenite::client_async(
        "ws://localhost/admin/_blazor?id=abc",
        tcp,
    ))
    .await
    .unwrap();
    assert_eq!(res.status(), StatusCode::SWITCHING_PROTOCOLS);
    echo_round_trips(&mut ws).await;
    // HTTPS port.
    let tls = tls_connect(px.https, &px.cert_path(), &[b"http/1.1"])
        .await
        .unwrap();
    let (mut ws, res) = within(tokio_tungstenite::client_async(
        "wss://localhost/admin/_blazor?id=abc",
        tls,
    ))
    .await
    .unwrap();
    assert_eq!(res.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(
        res.headers().get("strict-transport-security").unwrap(),
        "max-age=31536000"
    );
    echo_round_trips(&mut ws).await;
    within(ws.close(None)).await.unwrap();
    px.stop().await;
}

#[tokio::test]
async fn websocket_over_http2_extended_connect() {
    let (px, _ws) = admin_proxy("").await;
    let tls = tls_connect(px.https, &px.cert_path(), &[b"h2"])
        .await
        .unwrap();
    let (mut sender, conn) = within(hyper::client::conn::http2::handshake(
        TokioExecutor::new(),
        TokioIo::new(tls),
    ))
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .method(Method::CONNECT)
        .uri("https://localhost/admin/_blazor")
        .header("sec-websocket-version", "13")
        .extension(hyper::ext::Protocol::from_static("websocket"))
        .body(full(""))
        .unwrap();
    let mut res = within(sender.send_request(req)).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let upgraded = within(hyper::upgrade::on(&mut res)).await.unwrap();
    let mut ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, None).await;
    echo_round_trips(&mut ws).await;
    px.stop().await;
}

#[tokio::test]
async fn an_idle_websocket_is_closed_after_the_route_timeout() {
    let (px, _ws) = admin_proxy("websocket_timeout = \"300ms\"").await;
    let tcp = tokio::net::TcpStream::connect(px.http).await.unwrap();
    let (mut ws, _) = within(tokio_tungstenite::client_async(
        "ws://localhost/admin/ws",
        tcp,
    ))
    .await
    .unwrap();
    echo_round_trips(&mut ws).await;
    // Silence: the proxy closes the tunnel, the client sees the end.
    let end = within(ws.next()).await;
    assert!(matches!(end, None | Some(Err(_))), "{end:?}");
    px.stop().await;
}

#[tokio::test]
async fn a_refused_upgrade_is_an_ordinary_response() {
    // The upstream answers 200 to an upgrade request: passed through as is.
    let up = echo().await;
    let px = Proxy::start(&format!(
        "force_https_redirect = false\n{}",
        routes(&[("/", &up.url())])
    ))
    .await;
    let req = Request::builder()
        .uri("/hub")
        .header("host", "h")
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .header("sec-websocket-version", "13")
        .body(full(""))
        .unwrap();
    let res = px.send(Proto::H1, req).await.unwrap();
    assert_eq!(res.status, StatusCode::OK);
    let seen = res.seen();
    assert_eq!(
        seen.header("upgrade"),
        Some("websocket"),
        "upgrade headers reach the upstream"
    );
    assert_eq!(seen.header("connection"), Some("upgrade"));
    assert_eq!(
        seen.header("sec-websocket-key"),
        Some("dGhlIHNhbXBsZSBub25jZQ==")
    );
    px.stop().await;
}
