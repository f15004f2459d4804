//! The upstream side: a pool of HTTP/1.1 connections per route whose
//! connector resolves names again when it connects.
//!
//! nginx resolves an upstream name once at start-up, so a Docker service
//! that restarts with a new address gets 502s until nginx restarts. Here a
//! name is looked up whenever a new connection is made (with a few seconds
//! of cache), and every address it resolves to is tried in turn, so
//! `localhost` works whether it means ::1 or 127.0.0.1 (AliasVault #1627).
//!
//! The pool is a stack of idle connections per server, found by a short
//! scan of the route's few servers: no hashing of the authority per
//! request, no checkout futures. Requests and responses go over Gatehouse's
//! own HTTP/1.1 client side (`upstream::h1`), driven in the request's task;
//! a response body puts its connection back when it ends.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::uri::{Authority, PathAndQuery};
use http::{Request, Response, StatusCode, Uri};
use tokio::time::Instant;

use crate::upstream::body::UpstreamBody;
use crate::upstream::h1::{self, Conn, ExchangeError, Recycle};
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
    conn: Box<Conn>,
    since: Instant,
}

/// The response body of an upstream answer.
pub type UpstreamResponse = h1::ResponseBody;

/// In the extensions of a 101 answer: the upstream connection, handed to
/// the tunnel once the client's side has switched too (taken once).
#[derive(Clone)]
pub struct Upgraded(Arc<Mutex<Option<(tokio::net::TcpStream, bytes::Bytes)>>>);

impl Upgraded {
    /// The socket and the bytes the upstream sent after its 101.
    pub fn take(&self) -> Option<(tokio::net::TcpStream, bytes::Bytes)> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
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
    /// The connection failed while the request was sent or answered, or
    /// the answer was not valid HTTP/1.1 (ambiguous framing included, RFC
    /// 9112 §6.1: the upstream is held to the rule clients are held to).
    #[error("the upstream exchange failed")]
    Exchange(#[source] ExchangeError),
    #[error("the request has no upstream address")]
    NoAuthority,
}

impl UpstreamError {
    pub fn is_connect(&self) -> bool {
        matches!(self, UpstreamError::Connect { .. })
    }
}

impl HttpClient {
    /// Sends `req` (its URI names the server) on a pooled connection or a
    /// new one, and returns the response head with a body that reads the
    /// rest from the connection and pools it at its end. A 101 carries the
    /// connection in its extensions ([`Upgraded`]). `fields` are written
    /// after the request's own (the forwarding fields: `()` for none).
    pub async fn request(
        &self,
        req: Request<UpstreamBody>,
        fields: &dyn crate::base::head_fields::HeadFields,
    ) -> Result<Response<UpstreamResponse>, UpstreamError> {
        self.request_at(req, fields, Instant::now()).await
    }

    /// [`HttpClient::request`] for a request that arrived at `now`: the
    /// caller's one clock read is the pool's too (issue 13: seven clock
    /// reads per request were 3–4 % of its user time).
    pub async fn request_at(
        &self,
        req: Request<UpstreamBody>,
        fields: &dyn crate::base::head_fields::HeadFields,
        now: Instant,
    ) -> Result<Response<UpstreamResponse>, UpstreamError> {
        let authority = req
            .uri()
            .authority()
            .cloned()
            .ok_or(UpstreamError::NoAuthority)?;
        let (mut parts, mut body) = req.into_parts();
        // HTTP/1.1 to an origin server takes the origin form (RFC 9112
        // §3.2.1): the path and query, byte for byte.
        let pq = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        parts.uri = Uri::from(pq);
        let mut stale = 0;
        loop {
            let (conn, pooled) = match self.checkout(&authority, now) {
                Some(c) => (c, true),
                // Boxed: connecting (name lookup, timeouts, every address
                // in turn) is a large future that most requests, served
                // from the pool, never run; inline it would widen every
                // request's future (issue 13 point 3).
                None => (Box::pin(self.connect(&authority)).await?, false),
            };
            let mut consumed = false;
            match conn
                .exchange(&parts, fields, &mut body, &mut consumed)
                .await
            {
                Ok((head, conn, reuse, kind)) => {
                    // The request's fields have been written: its map is
                    // kept for the next head parsed on this thread.
                    crate::base::recycle::give_back_map(std::mem::take(&mut parts.headers));
                    if head.status() == StatusCode::SWITCHING_PROTOCOLS {
                        let mut res = head.map(|()| h1::ResponseBody::new_empty());
                        res.extensions_mut()
                            .insert(Upgraded(Arc::new(Mutex::new(Some(conn.into_parts())))));
                        return Ok(res);
                    }
                    let home: Arc<dyn Recycle> = self.inner.clone();
                    return Ok(head.map(|()| h1::ResponseBody::new(conn, kind, reuse, Some(home))));
                }
                // The upstream closed a pooled connection as the request
                // arrived (its keep-alive timer raced ours): sent again on
                // another when none of the body was taken.
                Err(ExchangeError::Closed) if pooled && !consumed && stale < MAX_STALE => {
                    stale += 1;
                }
                Err(e) => return Err(UpstreamError::Exchange(e)),
            }
        }
    }

    /// The most recently used idle connection to `authority` that is still
    /// open; expired and closed ones are dropped on the way. `now` may be a
    /// little behind (the request's start): a connection given back since
    /// counts as just used.
    fn checkout(&self, authority: &Authority, now: Instant) -> Option<Box<Conn>> {
        let mut idle = self.inner.lock();
        let list = &mut idle.iter_mut().find(|(a, _)| same(a, authority))?.1;
        while let Some(mut c) = list.pop() {
            if now.saturating_duration_since(c.since) < IDLE_TIMEOUT && c.conn.is_usable() {
                return Some(c.conn);
            }
        }
        None
    }

    /// A new connection: every resolved address in turn, sharing the
    /// connect timeout; the connection runs in a task of its own.
    async fn connect(&self, authority: &Authority) -> Result<Box<Conn>, UpstreamError> {
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
            return Ok(Conn::new(stream, authority.clone()));
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

impl Recycle for Inner {
    /// Puts a connection whose response has ended on its server's idle
    /// stack: from the response body, in the request's task.
    fn recycle(&self, conn: Box<Conn>) {
        let mut idle = self.lock();
        let pos = match idle.iter().position(|(a, _)| same(a, conn.authority())) {
            Some(p) => p,
            None => {
                // The first connection to this server: its list's key.
                idle.push((conn.authority().clone(), Vec::new()));
                idle.len() - 1
            }
        };
        let list = &mut idle[pos].1;
        if list.len() >= MAX_IDLE {
            // The oldest idle connection makes room.
            list.remove(0);
        }
        list.push(Idle {
            conn,
            since: Instant::now(),
        });
    }
}

/// The idle list of an authority is found by its exact text: `Authority`'s
/// own `==` ignores case byte by byte, twice per request; a name spelt in
/// two cases only gets two lists.
fn same(a: &Authority, b: &Authority) -> bool {
    a.as_str() == b.as_str()
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(Authority, Vec<Idle>)>> {
        // Held for a scan of a few entries and a push or pop.
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper_util::rt::TokioIo;
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
        let first = tokio::time::timeout(Duration::from_secs(10), client.request(req(), &()))
            .await
            .unwrap();
        assert!(first.unwrap_err().is_connect());
        let second = tokio::time::timeout(Duration::from_secs(10), client.request(req(), &()))
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
