//! The upstream side: a pool of HTTP/1.1 connections per route whose
//! connector resolves names again when it connects.
//!
//! nginx resolves an upstream name once at start-up, so a Docker service
//! that restarts with a new address gets 502s until nginx restarts. Here a
//! name is looked up whenever a new connection is made (with a few seconds
//! of cache), and every address it resolves to is tried in turn, so
//! `localhost` works whether it means ::1 or 127.0.0.1 (AliasVault #1627).
//!
//! The pool is a stack of idle `hyper::client::conn` senders per server,
//! found by a short scan of the route's few servers: no hashing of the
//! authority per request, no checkout futures (the generic pooled client
//! spent about a tenth of a proxied request's instructions there; see
//! docs/benchmarks.md).

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::uri::{Authority, PathAndQuery};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

use crate::upstream::body::UpstreamBody;
pub use crate::upstream::resolver::Resolver;
use crate::upstream::resolver::DNS_TTL;

/// An idle connection unused for this long is not reused: the next
/// checkout that comes across it drops it (nothing closes it before then;
/// the upstream's own keep-alive timer usually has).
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Idle connections kept per server; more are closed when returned.
const MAX_IDLE: usize = 1024;

/// Requests retried on a fresh connection when a pooled one turned out to
/// be closed before the request was written (the upstream's keep-alive
/// timer raced ours).
const MAX_STALE: usize = 3;

/// Builds the pooled client of one route.
pub(crate) fn client(connect_timeout: Duration) -> HttpClient {
    client_with(Resolver::new(DNS_TTL), connect_timeout)
}

/// [`client`] over a given resolver.
pub fn client_with(resolver: Resolver, connect_timeout: Duration) -> HttpClient {
    HttpClient {
        inner: Arc::new(Inner {
            resolver,
            connect_timeout,
            idle: Mutex::default(),
        }),
    }
}

/// The pooled HTTP/1.1 client of one route. Cheap to clone.
#[derive(Clone)]
pub struct HttpClient {
    inner: Arc<Inner>,
}

struct Inner {
    resolver: Resolver,
    connect_timeout: Duration,
    /// Per server: idle senders, most recently used last.
    idle: Mutex<Vec<(Authority, Vec<Idle>)>>,
}

struct Idle {
    sender: http1::SendRequest<UpstreamBody>,
    since: Instant,
}

/// Why an upstream request failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection could be made (resolution, refusal, timeout).
    #[error("connecting to {authority} failed")]
    Connect {
        authority: Authority,
        #[source]
        source: io::Error,
    },
    /// The connection failed while the request was sent or answered.
    #[error("the upstream connection failed")]
    Request(#[source] hyper::Error),
    #[error("the request has no upstream address")]
    NoAuthority,
    /// The answer's framing is ambiguous (RFC 9112 §6.1): a confused or
    /// hostile upstream, held to the rule clients are held to.
    #[error("the response has both Content-Length and Transfer-Encoding")]
    AmbiguousFraming,
}

impl UpstreamError {
    pub fn is_connect(&self) -> bool {
        matches!(self, UpstreamError::Connect { .. })
    }
}

impl HttpClient {
    /// Sends `req` (its URI names the server) on a pooled connection or a
    /// new one, and returns the response head. The connection goes back to
    /// the pool once the response body has been read to its end.
    pub async fn request(
        &self,
        mut req: Request<UpstreamBody>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let authority = req
            .uri()
            .authority()
            .cloned()
            .ok_or(UpstreamError::NoAuthority)?;
        // HTTP/1.1 to an origin server takes the origin form (RFC 9112
        // §3.2.1): the path and query, byte for byte.
        let pq = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        *req.uri_mut() = Uri::from(pq);
        let mut stale = 0;
        loop {
            let (mut sender, pooled) = match self.checkout(&authority) {
                Some(s) => (s, true),
                None => (self.connect(&authority).await?, false),
            };
            match sender.try_send_request(req).await {
                Ok(res) => {
                    self.give_back_when_ready(authority, sender);
                    return Ok(res);
                }
                Err(mut e) => match e.take_message() {
                    // Never written: safe to send again, on a new connection
                    // after a few stale pooled ones.
                    Some(back) if pooled && stale < MAX_STALE => {
                        stale += 1;
                        req = back;
                    }
                    _ => return Err(UpstreamError::Request(e.into_error())),
                },
            }
        }
    }

    /// The most recently used idle connection to `authority` that is still
    /// open; expired and closed ones are dropped on the way.
    fn checkout(&self, authority: &Authority) -> Option<http1::SendRequest<UpstreamBody>> {
        let mut idle = self.inner.lock();
        let list = &mut idle.iter_mut().find(|(a, _)| a == authority)?.1;
        while let Some(c) = list.pop() {
            if c.sender.is_ready() && c.since.elapsed() < IDLE_TIMEOUT {
                return Some(c.sender);
            }
        }
        None
    }

    /// Waits (in a task of its own) until the connection has finished the
    /// response, then pools it. A connection that closes instead, or whose
    /// response body is abandoned, is simply dropped.
    fn give_back_when_ready(
        &self,
        authority: Authority,
        mut sender: http1::SendRequest<UpstreamBody>,
    ) {
        // A small answer is often read whole with its head, and the
        // connection is ready again already: pooled now, without a task
        // (issue 13 point 3).
        if sender.is_ready() {
            self.inner.pool(authority, sender);
            return;
        }
        let inner = self.inner.clone();
        tokio::spawn(async move {
            if sender.ready().await.is_ok() {
                inner.pool(authority, sender);
            }
        });
    }

    /// A new connection: every resolved address in turn, sharing the
    /// connect timeout; the connection runs in a task of its own.
    async fn connect(
        &self,
        authority: &Authority,
    ) -> Result<http1::SendRequest<UpstreamBody>, UpstreamError> {
        let fail = |source: io::Error| UpstreamError::Connect {
            authority: authority.clone(),
            source,
        };
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let port = authority.port_u16().unwrap_or(80);
        let addrs = match host.parse::<std::net::IpAddr>() {
            Ok(ip) => Arc::from([SocketAddr::new(ip, port)]),
            Err(_) => {
                let found = tokio::time::timeout(
                    self.inner.connect_timeout,
                    self.inner.resolver.resolve_name(host),
                )
                .await
                .map_err(|_| {
                    fail(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "name lookup timed out",
                    ))
                })?
                .map_err(fail)?;
                found
                    .iter()
                    .map(|a| SocketAddr::new(a.ip(), port))
                    .collect::<Arc<[_]>>()
            }
        };
        let per_address = (self.inner.connect_timeout / addrs.len() as u32)
            .max(self.inner.connect_timeout.min(Duration::from_secs(1)));
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
        for addr in addrs.iter() {
            let stream =
                match tokio::time::timeout(per_address, tokio::net::TcpStream::connect(addr)).await
                {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        last = io::Error::new(e.kind(), format!("{addr}: {e}"));
                        continue;
                    }
                    Err(_) => {
                        last = io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("{addr}: connect timed out"),
                        );
                        continue;
                    }
                };
            let _ = stream.set_nodelay(true);
            let sock = socket2::SockRef::from(&stream);
            let _ = sock.set_tcp_keepalive(
                &socket2::TcpKeepalive::new().with_time(Duration::from_secs(60)),
            );
            let (sender, conn) = http1::Builder::new()
                .handshake(TokioIo::new(stream))
                .await
                .map_err(|e| fail(io::Error::other(e)))?;
            // Upgrades (WebSockets) hand the connection over after a 101.
            tokio::spawn(async move {
                if let Err(e) = conn.with_upgrades().await {
                    tracing::debug!("upstream connection ended: {e}");
                }
            });
            return Ok(sender);
        }
        // Every address failed: a stopped container's address stays in the
        // cache otherwise, and each request would wait out the connect
        // timeout on it (issue 11 point 4). The next attempt asks again.
        if host.parse::<std::net::IpAddr>().is_err() {
            self.inner.resolver.forget(host);
        }
        Err(fail(last))
    }
}

impl Inner {
    /// Puts a ready connection on its server's idle stack.
    fn pool(&self, authority: Authority, sender: http1::SendRequest<UpstreamBody>) {
        let mut idle = self.lock();
        let pos = match idle.iter().position(|(a, _)| *a == authority) {
            Some(p) => p,
            None => {
                idle.push((authority, Vec::new()));
                idle.len() - 1
            }
        };
        let list = &mut idle[pos].1;
        if list.len() >= MAX_IDLE {
            // The oldest idle connection makes room.
            list.remove(0);
        }
        list.push(Idle {
            sender,
            since: Instant::now(),
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(Authority, Vec<Idle>)>> {
        // Held for a scan of a few entries and a push or pop.
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU16, Ordering};

    #[tokio::test(start_paused = true)]
    async fn names_are_resolved_again_after_the_ttl() {
        // Each lookup "moves the container" to a new port.
        let calls = Arc::new(AtomicU16::new(0));
        let c = calls.clone();
        let r = Resolver::with_lookup(Duration::from_millis(50), move |_| {
            let n = c.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move { Ok(vec![SocketAddr::from(([127, 0, 0, 1], 1000 + n))]) })
        });
        let first = r.resolve_name("api").await.unwrap();
        assert_eq!(
            r.resolve_name("api").await.unwrap(),
            first,
            "cached within the TTL"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        tokio::time::advance(Duration::from_millis(60)).await;
        let moved = r.resolve_name("api").await.unwrap();
        assert_eq!(moved[0].port(), 1001, "looked up again after the TTL");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    /// A name whose cached address refuses is looked up again at once, so
    /// a restarted container's new address is used by the next request.
    #[tokio::test]
    async fn a_failed_connect_drops_the_cached_address() {
        let live = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let live_addr = live.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((s, _)) = live.accept().await {
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(|_req| async {
                        Ok::<_, std::convert::Infallible>(Response::new(http_body_util::Full::new(
                            bytes::Bytes::from_static(b"ok"),
                        )))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        // The name's port is the authority's; on 127.0.0.2 nothing listens
        // there, so that address is refused at once.
        let dead = SocketAddr::from(([127, 0, 0, 2], live_addr.port()));
        let calls = Arc::new(AtomicU16::new(0));
        let c = calls.clone();
        let resolver = Resolver::with_lookup(Duration::from_secs(60), move |_| {
            let n = c.fetch_add(1, Ordering::SeqCst);
            let addr = if n == 0 { dead } else { live_addr };
            Box::pin(async move { Ok(vec![addr]) })
        });
        let client = client_with(resolver, Duration::from_secs(3));
        let req = || {
            Request::get(format!("http://api:{}/", live_addr.port()))
                .header("host", "api")
                .body(UpstreamBody::empty())
                .unwrap()
        };
        // The cache would keep the dead address for 60 s.
        let first = tokio::time::timeout(Duration::from_secs(10), client.request(req()))
            .await
            .unwrap();
        assert!(first.unwrap_err().is_connect());
        let second = tokio::time::timeout(Duration::from_secs(10), client.request(req()))
            .await
            .unwrap();
        assert_eq!(second.unwrap().status(), 200);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn failures_are_not_cached() {
        let calls = Arc::new(AtomicU16::new(0));
        let c = calls.clone();
        let r = Resolver::with_lookup(Duration::from_secs(60), move |_| {
            let n = c.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                if n == 0 {
                    Err(io::Error::other("not yet"))
                } else {
                    Ok(vec![SocketAddr::from(([127, 0, 0, 1], 80))])
                }
            })
        });
        assert!(r.resolve_name("admin").await.is_err());
        assert!(r.resolve_name("admin").await.is_ok());
    }
}
