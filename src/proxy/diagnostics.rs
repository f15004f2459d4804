//! The opt-in diagnostic endpoint behind `gatehouse doctor` (issue 5).
//!
//! A request carrying `Gatehouse-Diagnostics: <token>` is answered by
//! Gatehouse itself, at any path, with a JSON [`Report`] of the request as it
//! arrived: method, target, headers, the peer and whether it is trusted, the
//! route the path selects and whether that route's servers accept a
//! connection right now. `doctor` compares it with what it sent and so sees
//! what the proxy in front changed. Sent as a WebSocket upgrade, the report
//! comes back as the first message after a real 101, which proves the
//! upgrade crossed the proxy in front.
//!
//! Off unless a token is configured; a wrong token is refused (403) and
//! never forwarded, so the header cannot reach an application either.

use std::time::Duration;

use crate::upstream::body::RequestBody;
use http::header::{self, HeaderValue};
use http::{HeaderName, Request, Response, StatusCode};
use serde::{Deserialize, Serialize};

use super::Context;
use super::{upgrade, Client, Conn};
use crate::proxy::response::ResponseBody;
use crate::runtime::Runtime;

pub static HEADER: HeaderName = HeaderName::from_static("gatehouse-diagnostics");

/// How long the live connection test of a route's servers may take.
const CONNECT_PROBE: Duration = Duration::from_secs(2);

/// The request as Gatehouse received it, and what it would do with it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub gatehouse: String,
    pub method: String,
    /// The request target exactly as received (path and query).
    pub target: String,
    pub version: String,
    /// `Host`, or `:authority` in HTTP/2.
    pub host: Option<String>,
    /// Every header field in arrival order; the token is redacted.
    pub headers: Vec<(String, String)>,
    /// The TCP peer (or the PROXY protocol's source).
    pub peer: String,
    /// The peer is in `trusted_proxies`, so its `X-Forwarded-*` count.
    pub trusted_peer: bool,
    pub tls: bool,
    /// SHA-256 of the certificate served on this port, when `tls`.
    pub certificate: Option<String>,
    /// The client as Gatehouse resolved it.
    pub client_ip: String,
    pub client_proto: String,
    pub request_id: String,
    pub hostname: String,
    /// A normal request like this one would get the HTTPS redirect.
    pub would_redirect: bool,
    pub trusted_proxies: Vec<String>,
    /// The route the received path selects for this client, if any.
    pub route: Option<RouteReport>,
    /// Why no route: "no route matches" or "client address denied".
    pub route_error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RouteReport {
    pub path: String,
    pub servers: Vec<ServerReport>,
    /// At least one request on this route got an upstream answer.
    pub reached: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerReport {
    pub address: String,
    /// Passively marked down after a failure (`fail_timeout`).
    pub marked_down: bool,
    /// Active health checks say it is in (true without checks).
    pub healthy: bool,
    /// `None` when a TCP connection succeeded just now, else why not.
    pub connect_error: Option<String>,
}

/// Whether `value` carries the configured token. Compared in constant time
/// for equal lengths, so timing reveals nothing but the length.
fn token_matches(value: &HeaderValue, token: &str) -> bool {
    let (a, b) = (value.as_bytes(), token.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Answers a request that carries the diagnostics header.
pub async fn answer(
    mut req: Request<RequestBody>,
    token: &str,
    conn: &Conn,
    client: &Client,
    rt: &Runtime,
    shared: &Context,
) -> Response<ResponseBody> {
    let given = req
        .headers()
        .get(&HEADER)
        .expect("caller checked the header");
    if !token_matches(given, token) {
        static REFUSED: crate::base::log_limit::Limit = crate::base::log_limit::Limit::new();
        if let Some(suppressed) = REFUSED.allow() {
            tracing::warn!(client = %client.ip, suppressed, "diagnostics request with a wrong token refused");
        }
        let mut res = Response::new(ResponseBody::full("diagnostics token mismatch\n"));
        *res.status_mut() = StatusCode::FORBIDDEN;
        return res;
    }
    let report = report(&req, conn, client, rt, shared).await;
    let json = bytes::Bytes::from(
        serde_json::to_vec_pretty(&report).expect("invariant: the report serializes"),
    );
    let key = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned();
    let websocket = upgrade::h1_protocols(&req, &["websocket".to_string()]).is_some();
    let h2_websocket = upgrade::is_h2_websocket(&req);
    if h2_websocket || (key.is_some() && websocket) {
        let on = crate::conn::h1::on_upgrade(&mut req).wait();
        let json = json.clone();
        tokio::spawn(async move {
            let Ok(Ok(io)) = tokio::time::timeout(Duration::from_secs(10), on).await else {
                return;
            };
            send_report(io, json).await;
        });
        if h2_websocket {
            // RFC 8441 §5: a 200 opens the stream; the frames follow on it.
            return Response::new(ResponseBody::empty());
        }
    }
    match key {
        Some(key) if websocket => {
            let accept =
                tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
            let mut res = Response::new(ResponseBody::empty());
            *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            let h = res.headers_mut();
            h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
            h.insert(
                header::SEC_WEBSOCKET_ACCEPT,
                HeaderValue::from_str(&accept).expect("invariant: base64 is a header value"),
            );
            res
        }
        _ => {
            let mut res = Response::new(ResponseBody::full(json));
            let h = res.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            res
        }
    }
}

/// Sends the report as one text message and a normal close (RFC 6455
/// §5.6, §7.4.1), then waits briefly for the client's close so the report
/// is not cut off by a reset.
async fn send_report<S>(io: S, json: bytes::Bytes)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
    use tokio_tungstenite::tungstenite::Message;
    let Ok(text) = tokio_tungstenite::tungstenite::Utf8Bytes::try_from(json) else {
        return;
    };
    let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(io, Role::Server, None).await;
    if ws.send(Message::Text(text)).await.is_err() {
        return;
    }
    let close = CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    };
    if ws.close(Some(close)).await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), ws.next()).await;
}

async fn report(
    req: &Request<RequestBody>,
    conn: &Conn,
    client: &Client,
    rt: &Runtime,
    shared: &Context,
) -> Report {
    let headers = req
        .headers()
        .iter()
        .map(|(name, value)| {
            let value = if name == HEADER {
                "(redacted)".to_string()
            } else {
                String::from_utf8_lossy(value.as_bytes()).into_owned()
            };
            (name.as_str().to_string(), value)
        })
        .collect();
    let (route, route_error) = match super::select_route(
        rt,
        &crate::runtime::router::normalize(req.uri().path()).path,
        client.ip,
    ) {
        Ok(route) => {
            let mut servers = Vec::with_capacity(route.servers.len());
            for s in &route.servers {
                let port = s.authority.port_u16().unwrap_or(80);
                let target = format!("{}:{port}", s.authority.host());
                let connect_error = match tokio::time::timeout(
                    CONNECT_PROBE,
                    tokio::net::TcpStream::connect(&target),
                )
                .await
                {
                    Ok(Ok(_)) => None,
                    Ok(Err(e)) => Some(e.to_string()),
                    Err(_) => Some(format!("no answer within {CONNECT_PROBE:?}")),
                };
                servers.push(ServerReport {
                    address: s.authority.to_string(),
                    marked_down: s.down_until.load(std::sync::atomic::Ordering::Relaxed)
                        > crate::base::clock::now_nanos(),
                    healthy: s.healthy.load(std::sync::atomic::Ordering::Relaxed),
                    connect_error,
                });
            }
            let reached = route
                .metrics
                .reached
                .load(std::sync::atomic::Ordering::Relaxed);
            (
                Some(RouteReport {
                    path: route.path.clone(),
                    servers,
                    reached,
                }),
                None,
            )
        }
        Err(f) => (None, Some(f.error.to_string())),
    };
    Report {
        gatehouse: env!("CARGO_PKG_VERSION").to_string(),
        method: req.method().to_string(),
        target: req.uri().path_and_query().map_or_else(
            || req.uri().path().to_string(),
            |pq| pq.as_str().to_string(),
        ),
        version: format!("{:?}", req.version()),
        host: super::request_host(req).map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned()),
        headers,
        peer: conn.peer.to_string(),
        trusted_peer: conn.trusted,
        tls: conn.tls,
        certificate: conn
            .tls
            .then(|| crate::certs::fingerprint_of(&shared.certs.current())),
        client_ip: client.ip.to_string(),
        client_proto: String::from_utf8_lossy(client.proto.as_bytes()).into_owned(),
        request_id: String::from_utf8_lossy(client.request_id.as_bytes()).into_owned(),
        hostname: rt.config.hostname.clone(),
        would_redirect: !client.https && rt.config.force_https_redirect,
        trusted_proxies: rt
            .config
            .trusted_proxies
            .iter()
            .map(ToString::to_string)
            .collect(),
        route,
        route_error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The report reaches a WebSocket client whole, whatever its size,
    /// followed by a normal close.
    #[tokio::test]
    async fn the_report_is_one_text_message_then_a_normal_close() {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
        use tokio_tungstenite::tungstenite::protocol::Role;
        use tokio_tungstenite::tungstenite::Message;
        for size in [2, 300, 70_000] {
            let json = bytes::Bytes::from(format!("\"{}\"", "x".repeat(size - 2)));
            let (server, client) = tokio::io::duplex(1 << 16);
            let sent = tokio::spawn(send_report(server, json.clone()));
            let mut ws =
                tokio_tungstenite::WebSocketStream::from_raw_socket(client, Role::Client, None)
                    .await;
            match tokio::time::timeout(Duration::from_secs(10), ws.next())
                .await
                .unwrap()
            {
                Some(Ok(Message::Text(t))) => assert_eq!(t.as_bytes(), &json[..], "{size}"),
                other => panic!("{size}: {other:?}"),
            }
            match tokio::time::timeout(Duration::from_secs(10), ws.next())
                .await
                .unwrap()
            {
                Some(Ok(Message::Close(Some(f)))) => assert_eq!(f.code, CloseCode::Normal),
                other => panic!("{size}: {other:?}"),
            }
            // Polling on sends the client's close reply and sees the end.
            assert!(tokio::time::timeout(Duration::from_secs(10), ws.next())
                .await
                .unwrap()
                .is_none());
            tokio::time::timeout(Duration::from_secs(10), sent)
                .await
                .unwrap()
                .unwrap();
        }
    }

    #[test]
    fn token_comparison() {
        let t = "0123456789abcdef";
        assert!(token_matches(
            &HeaderValue::from_static("0123456789abcdef"),
            t
        ));
        assert!(!token_matches(
            &HeaderValue::from_static("0123456789abcdeF"),
            t
        ));
        assert!(!token_matches(
            &HeaderValue::from_static("0123456789abcde"),
            t
        ));
        assert!(!token_matches(&HeaderValue::from_static(""), t));
    }
}
