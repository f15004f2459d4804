//! Upgraded connections: HTTP/1.1 `Upgrade` (WebSocket and friends) and
//! WebSocket over HTTP/2 extended CONNECT (RFC 8441), both tunnelled to an
//! HTTP/1.1 upstream.
//!
//! A tunnel owns everything it needs (its two streams and its idle limit)
//! and nothing of the runtime, so swapping the configuration never cuts an
//! open WebSocket (Blazor Server's circuit under `/admin/_blazor`).

use std::sync::Arc;
use std::time::Duration;

use crate::conn::h1::ClientUpgrade;
use crate::upstream::body::RequestBody;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use tokio::io::{AsyncRead, AsyncWrite};

use super::response::ResponseBody;
use super::{forwarded, prepare_upstream, send, Client};
use crate::proxy::error::ProxyError;
use crate::runtime::RouteRt;
use crate::upstream::body::UpstreamBody;

static SEC_WEBSOCKET_KEY: header::HeaderName = header::SEC_WEBSOCKET_KEY;

/// An HTTP/1.1 request asking to switch protocols (RFC 9110 §7.8) to one
/// the route allows: the `Upgrade` value to forward (the allowed tokens
/// the client offered, in its order). Other tokens are not forwarded, so
/// `Upgrade: h2c` is an ordinary request (issue 10 point 2).
pub fn h1_protocols(req: &Request<RequestBody>, allowed: &[String]) -> Option<HeaderValue> {
    if req.version() != Version::HTTP_11 || !req.headers().contains_key(header::UPGRADE) {
        return None;
    }
    let asks = req
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if !asks {
        return None;
    }
    let offered: Vec<&str> = req
        .headers()
        .get_all(header::UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| protocol_allowed(t, allowed))
        .collect();
    if offered.is_empty() {
        return None;
    }
    HeaderValue::from_str(&offered.join(", ")).ok()
}

/// `websocket` matches `websocket` and `WebSocket/13` alike: the name
/// before any `/version` is compared, without regard to case.
fn protocol_allowed(token: &str, allowed: &[String]) -> bool {
    let name = token.split('/').next().unwrap_or("");
    allowed.iter().any(|a| {
        let a_name = a.split('/').next().unwrap_or("");
        a_name.eq_ignore_ascii_case(name) && (a == a_name || a.eq_ignore_ascii_case(token))
    })
}

/// Sends an upgrade request with its forwarding fields; the response
/// timeout runs from now (the request has no body to have waited for).
async fn send_upgrade(
    route: &RouteRt,
    up: Request<UpstreamBody>,
    client: &Client,
    host: Option<&HeaderValue>,
) -> Result<Response<super::UpstreamResponse>, ProxyError> {
    send(
        route,
        up,
        &client.forwarding(route, host),
        std::time::Instant::now(),
    )
    .await
}

/// An HTTP/2 extended CONNECT for a WebSocket (RFC 8441 §4).
pub fn is_h2_websocket(req: &Request<RequestBody>) -> bool {
    req.method() == Method::CONNECT
        && req
            .extensions()
            .get::<hyper::ext::Protocol>()
            .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"))
}

/// Proxies an HTTP/1.1 upgrade: the upstream's 101 goes back to the client,
/// then bytes are copied both ways until one side closes or the route's
/// `websocket_timeout` passes without traffic. Any other answer is an
/// ordinary response.
pub async fn h1(
    mut req: Request<RequestBody>,
    protocols: HeaderValue,
    client: &Client,
    route: Arc<RouteRt>,
    metrics: Arc<crate::runtime::metrics::Metrics>,
) -> Result<Response<ResponseBody>, ProxyError> {
    let client_side = crate::conn::h1::on_upgrade(&mut req);
    let host = super::request_host(&req);
    let mut up = prepare_upstream(req, &route, client, host.as_ref())?;
    up.headers_mut().insert(header::UPGRADE, protocols.clone());
    up.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    let res = send_upgrade(&route, up, client, host.as_ref()).await?;
    if res.status() == StatusCode::SWITCHING_PROTOCOLS {
        // RFC 9110 §7.8: the server switches to one of the protocols the
        // client listed; anything else is not opened as a tunnel.
        let chosen = res
            .headers()
            .get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .map(str::trim);
        let offered = protocols.to_str().unwrap_or("");
        let ok =
            chosen.is_some_and(|c| offered.split(',').any(|o| o.trim().eq_ignore_ascii_case(c)));
        if !ok {
            return Err(ProxyError::Upgrade(
                "the upstream switched to a protocol the client did not ask for".into(),
            ));
        }
    }
    if res.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Ok(super::finish_response(
            res,
            client,
            host.as_ref(),
            &Method::GET,
            None,
        ));
    }
    let upstream_side = handed_over(&res)?;
    spawn_tunnel(
        client_side,
        upstream_side,
        route.websocket_timeout,
        route.path.clone(),
        metrics,
    );
    let (mut parts, _) = res.into_parts();
    let upgrade = parts.headers.get(header::UPGRADE).cloned();
    forwarded::strip_hop_by_hop(&mut parts.headers);
    if let Some(u) = upgrade {
        parts.headers.insert(header::UPGRADE, u);
    }
    parts
        .headers
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    Ok(Response::from_parts(parts, ResponseBody::empty()))
}

/// Proxies RFC 8441 WebSocket-over-HTTP/2 to an HTTP/1.1 upstream: the
/// extended CONNECT becomes a GET with `Upgrade: websocket` and a fresh
/// `Sec-WebSocket-Key`; the upstream's 101 (its accept key checked) becomes
/// a 200 on the stream, which then carries the WebSocket bytes.
pub async fn h2_websocket(
    mut req: Request<RequestBody>,
    client: &Client,
    route: Arc<RouteRt>,
    metrics: Arc<crate::runtime::metrics::Metrics>,
) -> Result<Response<ResponseBody>, ProxyError> {
    let client_side = crate::conn::h1::on_upgrade(&mut req);
    let host = super::request_host(&req);
    let (mut parts, _body) = req.into_parts();
    parts.method = Method::GET;
    parts.extensions.remove::<hyper::ext::Protocol>();
    let req = Request::from_parts(parts, UpstreamBody::empty());
    let key = tokio_tungstenite::tungstenite::handshake::client::generate_key();
    let expected_accept =
        tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let mut up = super::prepare_upstream_with(req, &route, host.as_ref())?;
    let h = up.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(
        &SEC_WEBSOCKET_KEY,
        HeaderValue::from_str(&key).expect("invariant: base64 is a valid header value"),
    );
    h.entry(header::SEC_WEBSOCKET_VERSION)
        .or_insert(HeaderValue::from_static("13"));
    let res = send_upgrade(&route, up, client, host.as_ref()).await?;
    if res.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Ok(super::finish_response(
            res,
            client,
            None,
            &Method::GET,
            None,
        ));
    }
    if res
        .headers()
        .get(header::SEC_WEBSOCKET_ACCEPT)
        .map(HeaderValue::as_bytes)
        != Some(expected_accept.as_bytes())
    {
        return Err(ProxyError::Upgrade(
            "upstream sent a wrong Sec-WebSocket-Accept".into(),
        ));
    }
    let upstream_side = handed_over(&res)?;
    spawn_tunnel(
        client_side,
        upstream_side,
        route.websocket_timeout,
        route.path.clone(),
        metrics,
    );
    let mut out = Response::new(ResponseBody::empty());
    for name in [
        header::SEC_WEBSOCKET_PROTOCOL,
        header::SEC_WEBSOCKET_EXTENSIONS,
    ] {
        if let Some(v) = res.headers().get(&name) {
            out.headers_mut().insert(name, v.clone());
        }
    }
    Ok(out)
}

/// The upstream connection a 101 carries (`upstream::pool::Upgraded`).
fn handed_over<B>(res: &Response<B>) -> Result<(tokio::net::TcpStream, bytes::Bytes), ProxyError> {
    res.extensions()
        .get::<crate::upstream::pool::Upgraded>()
        .and_then(crate::upstream::pool::Upgraded::take)
        .ok_or_else(|| ProxyError::Upgrade("the upstream connection was not handed over".into()))
}

fn spawn_tunnel(
    client: ClientUpgrade,
    upstream: (tokio::net::TcpStream, bytes::Bytes),
    idle: Duration,
    route: String,
    metrics: Arc<crate::runtime::metrics::Metrics>,
) {
    tokio::spawn(async move {
        let _open = crate::runtime::metrics::Gauge::up(&metrics.open_websockets);
        let mut client = match client.wait().await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(route, "upgrade did not complete: {e}");
                return;
            }
        };
        // What the upstream sent right after its 101 comes first.
        let (tcp, early) = upstream;
        let mut upstream = crate::conn::proxy_protocol::Prefixed::new(early.to_vec(), tcp);
        match splice(&mut client, &mut upstream, idle).await {
            Ok(Closed::Idle) => tracing::debug!(
                route,
                ?idle,
                "upgraded connection closed after idle timeout"
            ),
            Ok(Closed::Eof) => {}
            Err(e) => tracing::debug!(route, "upgraded connection ended: {e}"),
        }
    });
}

#[derive(Debug, PartialEq, Eq)]
pub enum Closed {
    Eof,
    Idle,
}

/// Copies bytes both ways until both directions reach end of stream, or
/// until nothing moves for `idle` (closed within a quarter of it more). A
/// half-close is passed on as a shutdown of the other side's write half.
///
/// Both directions and the idle deadline are polled together on every
/// wake-up, so a peer that stops reading stalls only its own direction:
/// the other goes on, and the deadline still closes a tunnel in which
/// nothing moves (a zero TCP window included; issue 10 point 12).
pub async fn splice<A, B>(a: &mut A, b: &mut B, idle: Duration) -> std::io::Result<Closed>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let moved = Activity::default();
    let mut a = Watched {
        io: a,
        moved: &moved,
    };
    let mut b = Watched {
        io: b,
        moved: &moved,
    };
    let copy = tokio::io::copy_bidirectional_with_sizes(&mut a, &mut b, 16 * 1024, 16 * 1024);
    tokio::pin!(copy);
    // Reads and writes only count (a clock read per message was half the
    // tunnel's own CPU per round trip; issue 13); the timer looks at the
    // count four times per idle period, so a quiet tunnel closes between
    // `idle` and 1.25 × `idle` after its last byte moved.
    let step = idle / CHECKS;
    let deadline = tokio::time::sleep(step);
    tokio::pin!(deadline);
    let mut seen = moved.count();
    let mut quiet = 0;
    loop {
        tokio::select! {
            r = &mut copy => return r.map(|_| Closed::Eof),
            () = &mut deadline => {
                let count = moved.count();
                if count == seen {
                    quiet += 1;
                    if quiet >= CHECKS {
                        return Ok(Closed::Idle);
                    }
                } else {
                    seen = count;
                    quiet = 0;
                }
                let next = deadline.deadline() + step;
                deadline.as_mut().reset(next);
            }
        }
    }
}

/// How many looks at a tunnel's activity make up its idle period.
const CHECKS: u32 = 4;

/// How many reads and writes of a tunnel moved bytes. Both directions and
/// the timer run in the tunnel's one task: a relaxed load and store, no
/// atomic read-modify-write.
#[derive(Default)]
struct Activity(std::sync::atomic::AtomicU64);

impl Activity {
    fn touch(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        self.0.store(self.0.load(Relaxed).wrapping_add(1), Relaxed);
    }
    fn count(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// A stream that notes every read and write that moved bytes.
struct Watched<'a, S> {
    io: &'a mut S,
    moved: &'a Activity,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<'_, S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut *self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.moved.touch();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<'_, S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut *self.io).poll_write(cx, buf);
        if matches!(r, std::task::Poll::Ready(Ok(n)) if n > 0) {
            self.moved.touch();
        }
        r
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.io).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn splice_copies_both_ways_and_ends_on_close() {
        let (mut a_outer, mut a_inner) = tokio::io::duplex(64);
        let (mut b_inner, mut b_outer) = tokio::io::duplex(64);
        let task = tokio::spawn(async move {
            splice(&mut a_inner, &mut b_inner, Duration::from_secs(30)).await
        });
        a_outer.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        b_outer.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        b_outer.write_all(b"pong").await.unwrap();
        a_outer.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong");
        drop(a_outer);
        drop(b_outer);
        let r = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(r.unwrap(), Closed::Eof);
    }

    #[tokio::test(start_paused = true)]
    async fn traffic_keeps_a_splice_open_past_the_idle_limit() {
        let (mut a_outer, mut a_inner) = tokio::io::duplex(64);
        let (mut b_inner, mut b_outer) = tokio::io::duplex(64);
        let task = tokio::spawn(async move {
            splice(&mut a_inner, &mut b_inner, Duration::from_secs(10)).await
        });
        let mut buf = [0u8; 1];
        for _ in 0..3 {
            // A message every 6 s: 18 s in all, never 10 s of silence.
            a_outer.write_all(b"x").await.unwrap();
            b_outer.read_exact(&mut buf).await.unwrap();
            tokio::time::advance(Duration::from_secs(6)).await;
            tokio::task::yield_now().await;
            assert!(!task.is_finished());
        }
        // Then silence: closed once 10 s have passed since the last byte.
        tokio::time::advance(Duration::from_secs(5)).await;
        let r = tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(r.unwrap(), Closed::Idle);
    }

    #[tokio::test(start_paused = true)]
    async fn splice_ends_when_idle() {
        let (_a_outer, mut a_inner) = tokio::io::duplex(64);
        let (mut b_inner, _b_outer) = tokio::io::duplex(64);
        let start = tokio::time::Instant::now();
        let r = splice(&mut a_inner, &mut b_inner, Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(r, Closed::Idle);
        let quiet = start.elapsed();
        assert!(
            quiet >= Duration::from_secs(10) && quiet <= Duration::from_millis(12_500),
            "{quiet:?}"
        );
    }
}
