//! Listening sockets and connections: bind, accept, TLS handshake, serve
//! HTTP/1 (`h1`, Gatehouse's own) or HTTP/2 (hyper), and drain gracefully
//! on shutdown.

pub(crate) mod framing;
pub(crate) mod h1;
pub mod proxy_protocol;

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;

use crate::base::cidr;
use crate::conn::framing::{Closing, ConnState, Phase};
use crate::runtime::Runtime;
use http::HeaderValue;
use proxy_protocol::Prefixed;

/// What the connection layer needs of the running server: the
/// configuration in service (limits, trusted peers), the TLS settings, the
/// connection counts and the metrics it keeps. Requests go to a
/// [`Handler`], the request pipeline, which this layer does not know.
pub struct Context {
    pub runtime: Arc<arc_swap::ArcSwap<Runtime>>,
    /// Swapped on reload (the ACME ALPN may change); a handshake loads it.
    pub tls: arc_swap::ArcSwap<rustls::ServerConfig>,
    pub conns: ConnCounts,
    pub metrics: Arc<crate::runtime::metrics::Metrics>,
}

/// Where each request of a connection goes: the request pipeline above
/// this layer, statically dispatched (no boxed future per request).
pub(crate) trait Handler: Send + Sync + 'static {
    /// The response body the pipeline answers with.
    /// Its fields beside the map's are written into HTTP/1 heads
    /// ([`crate::base::head_fields`]).
    type Body: http_body::Body<Data = bytes::Bytes, Error = crate::upstream::body::BoxError>
        + crate::base::head_fields::WithFields
        + Send
        + Unpin
        + 'static;

    fn handle(
        self: Arc<Self>,
        req: http::Request<crate::upstream::body::RequestBody>,
        conn: Arc<Conn>,
    ) -> impl std::future::Future<
        Output = Result<http::Response<Self::Body>, std::convert::Infallible>,
    > + Send
           + 'static;
}

/// What is known about the client's connection, computed once per
/// connection rather than per request.
#[derive(Debug)]
pub(crate) struct Conn {
    pub peer: SocketAddr,
    pub tls: bool,
    /// The peer is a trusted proxy.
    pub trusted: bool,
    /// Refusals from the HTTP/1 reader, requests in flight and idle times
    /// (see `framing`).
    pub state: Arc<crate::conn::framing::ConnState>,
    pub ip: IpAddr,
    /// The client address rendered for `X-Real-IP`/`X-Forwarded-For`.
    pub client_ip: HeaderValue,
    pub proto: HeaderValue,
}

impl Conn {
    /// `peer` is the client as far as the connection knows (the PROXY
    /// header's source when there was one); `trusted` says whether it may
    /// speak for others through `X-Forwarded-*`; `state` is the
    /// connection's, made at accept.
    pub fn with_state(
        peer: SocketAddr,
        tls: bool,
        trusted: bool,
        state: Arc<crate::conn::framing::ConnState>,
    ) -> Self {
        // An IPv4 client on a dual-stack socket shows as ::ffff:a.b.c.d.
        let ip = crate::base::cidr::canonical(peer.ip());
        Conn {
            peer,
            tls,
            trusted,
            state,
            ip,
            client_ip: ip_header(ip),
            proto: HeaderValue::from_static(if tls { "https" } else { "http" }),
        }
    }
}

pub(crate) fn ip_header(ip: IpAddr) -> HeaderValue {
    HeaderValue::from_str(&ip.to_string())
        .expect("invariant: an IP address is a valid header value")
}

/// Resolves once shutdown has been requested (or the sender is gone).
async fn stopped(rx: &mut watch::Receiver<bool>) {
    // The guard returned by wait_for is dropped here, not held across awaits.
    let _ = rx.wait_for(|s| *s).await;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Http,
    Https,
}

/// Binds one listening socket. IPv6 sockets are IPv6-only so that the
/// default `bind = ["0.0.0.0", "::"]` can hold both on one port.
pub(crate) fn bind(ip: IpAddr, port: u16) -> io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let addr = SocketAddr::new(ip, port);
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if ip.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// Open connections in total and per client address, and the state of
/// each (for eviction). Lives beside the runtime (not in it) so counts
/// survive a configuration swap.
#[derive(Default)]
pub struct ConnCounts {
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    next_id: std::sync::atomic::AtomicU64,
    open: Mutex<HashMap<u64, Arc<ConnState>>>,
}

impl ConnCounts {
    pub fn open(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// Closes every connection that has nothing in flight and no head
    /// under way: called once shutdown has been asked (connections that
    /// finish a request later close after it).
    pub fn close_idle(&self) {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        for s in open.values() {
            // HTTP/1 only: HTTP/2 connections say GOAWAY themselves.
            if s.is_swept() && matches!(s.phase(), Phase::First(_) | Phase::Idle(_)) {
                s.close(Closing::Shutdown);
            }
        }
    }

    /// Makes room for a new connection when the limit is reached: the
    /// connection idle longest that has nothing in flight (a keep-alive
    /// connection between requests, or one that has not sent a complete
    /// head yet) is closed (issue 10 point 5). False when every connection
    /// is busy.
    fn evict_oldest(&self) -> bool {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let oldest = open
            .values()
            .filter(|s| !s.is_closing())
            .filter_map(|s| match s.phase() {
                Phase::Busy => None,
                Phase::First(t) | Phase::Idle(t) | Phase::Head(t) => Some((t, s)),
            })
            .min_by_key(|(t, _)| *t);
        match oldest {
            Some((_, s)) => {
                s.close(Closing::Evicted);
                true
            }
            None => false,
        }
    }
}

/// Releases its share of [`ConnCounts`] when the connection ends.
struct Slot {
    counts: Arc<Context>,
    id: u64,
    ip: Option<IpAddr>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let c = &self.counts.conns;
        c.total.fetch_sub(1, Ordering::Relaxed);
        c.open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
        if let Some(ip) = self.ip {
            let mut map = c.per_ip.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = map.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&ip);
                }
            }
        }
    }
}

impl Slot {
    /// Takes a place for a new connection, closing the longest-idle one
    /// when the total limit is reached; `None` when all are busy.
    fn open(shared: &Arc<Context>, max_total: usize, state: &Arc<ConnState>) -> Option<Slot> {
        let c = &shared.conns;
        let prev = c.total.fetch_add(1, Ordering::Relaxed);
        let id = c.next_id.fetch_add(1, Ordering::Relaxed);
        c.open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, state.clone());
        let slot = Slot {
            counts: shared.clone(),
            id,
            ip: None,
        };
        (prev < max_total || c.evict_oldest()).then_some(slot)
    }

    /// Counts the connection against `ip`; false when `ip` is at its limit.
    fn claim_ip(&mut self, ip: IpAddr, max: usize) -> bool {
        let mut map = self
            .counts
            .conns
            .per_ip
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= max {
            return false;
        }
        *n += 1;
        self.ip = Some(ip);
        true
    }
}

/// Accepts until `shutdown` turns true; every connection is spawned on
/// `tracker` so shutdown can wait for them.
pub(crate) async fn accept_loop<H: Handler>(
    listener: TcpListener,
    kind: Kind,
    shared: Arc<Context>,
    handler: Arc<H>,
    tracker: TaskTracker,
    mut stop_accepting: watch::Receiver<bool>,
    shutdown: watch::Receiver<bool>,
) {
    let local = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => {
            tracing::error!("listener has no address: {e}");
            return;
        }
    };
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            // A reload that drops this address, or shutdown: stop accepting;
            // the connections already accepted go on.
            () = stopped(&mut stop_accepting) => return,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and the like: back off briefly
                // rather than spin, and keep serving.
                static FAILED: crate::base::log_limit::Limit = crate::base::log_limit::Limit::new();
                if let Some(suppressed) = FAILED.allow() {
                    tracing::warn!(%local, suppressed, "accept failed: {e}");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let handler = handler.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            let state = Arc::new(ConnState::default());
            let max = shared.runtime.load().config.listener.max_connections;
            let Some(mut slot) = Slot::open(&shared, max, &state) else {
                tracing::debug!(%peer, "connection limit reached and every connection busy; closing");
                return;
            };
            let serve = async {
                // Boxed: admission (the PROXY header's buffer and timer)
                // happens once; the connection's task should not carry
                // room for it while the connection idles.
                if let Some((io, conn)) =
                    Box::pin(admit(stream, peer, kind, &shared, &state, &mut slot)).await
                {
                    match kind {
                        Kind::Http => serve_http1(io, conn, shared.clone(), handler, shutdown).await,
                        // Boxed: the handshake and HTTP/2's connection
                        // are large; a plaintext connection's task does
                        // not carry room for them (issue 13: idle memory).
                        Kind::Https => Box::pin(serve_tls(io, conn, shared.clone(), handler, shutdown)).await,
                    }
                }
            };
            match state.run_until_closed(serve).await {
                None | Some(Closing::Shutdown) => {}
                Some(Closing::Evicted) => {
                    shared.metrics.connections_evicted.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%peer, "idle connection closed to make room (connection limit)");
                }
                Some(Closing::IdleLimit) => {
                    tracing::debug!(%peer, "HTTP/1 connection closed at its idle limit");
                }
            }
        });
    }
}

/// Connection admission: the per-address limit (before anything is read),
/// then the PROXY header when enabled (trusted peers only). Returns the
/// stream to serve (with any bytes read for detection put back) and what
/// is known of the client.
async fn admit(
    mut stream: TcpStream,
    peer: SocketAddr,
    kind: Kind,
    shared: &Arc<Context>,
    state: &Arc<ConnState>,
    slot: &mut Slot,
) -> Option<(Prefixed<TcpStream>, Arc<Conn>)> {
    let rt = shared.runtime.load();
    let settings = &rt.config.listener;
    let trusted = &rt.config.trusted_proxies;
    let peer_trusted = cidr::any_contains(trusted, peer.ip());
    // A trusted proxy carries many clients on its connections: it is not
    // held to the per-address limit (the clients behind it are, when a
    // PROXY header names them). Anyone else is counted before a byte of
    // theirs is read (issue 10 points 5 and 11).
    if !peer_trusted && !slot.claim_ip(cidr::canonical(peer.ip()), settings.max_connections_per_ip)
    {
        tracing::debug!(%peer, "per-address connection limit reached; closing");
        return None;
    }
    let mut client = peer;
    let io = if settings.proxy_protocol {
        match tokio::time::timeout(
            settings.handshake_timeout,
            proxy_protocol::read_header(&mut stream, peer_trusted),
        )
        .await
        {
            Ok(Ok(proxy_protocol::Header::None(first))) => Prefixed::new(first, stream),
            Ok(Ok(proxy_protocol::Header::Proxy(source, rest))) => {
                client = source.unwrap_or(peer);
                if client != peer
                    && !slot.claim_ip(
                        cidr::canonical(client.ip()),
                        settings.max_connections_per_ip,
                    )
                {
                    tracing::debug!(client = %client, "per-address connection limit reached; closing");
                    return None;
                }
                Prefixed::new(rest, stream)
            }
            Ok(Err(e)) if e.kind() == io::ErrorKind::PermissionDenied => {
                static REFUSED: crate::base::log_limit::Limit =
                    crate::base::log_limit::Limit::new();
                if let Some(suppressed) = REFUSED.allow() {
                    tracing::warn!(%peer, suppressed, "PROXY header from an untrusted peer; connection refused");
                }
                return None;
            }
            Ok(Err(e)) => {
                tracing::debug!(%peer, "{e}");
                return None;
            }
            Err(_) => return None,
        }
    } else {
        Prefixed::plain(stream)
    };
    let conn = Conn::with_state(
        client,
        kind == Kind::Https,
        cidr::any_contains(trusted, client.ip()),
        state.clone(),
    );
    Some((io, Arc::new(conn)))
}

/// Holds every HTTP/1 connection to its idle limits: the first head within
/// `header_timeout` of the start, a later head within `header_timeout` of
/// its first byte, the wait between requests within `keepalive_timeout`;
/// never while a request is in flight. One task for all connections, a
/// pass every quarter of the shorter limit (at most a second), so a
/// connection closes at most that much late and an idle one carries no
/// timer of its own (issue 13: idle memory). Runs until the server stops
/// it, after the drain.
pub(crate) async fn sweep(shared: Arc<Context>) {
    loop {
        let (header, keepalive) = {
            let rt = shared.runtime.load();
            let l = &rt.config.listener;
            (l.header_timeout, l.keepalive_timeout)
        };
        let tick =
            (header.min(keepalive) / 4).clamp(Duration::from_millis(20), Duration::from_secs(1));
        tokio::time::sleep(tick).await;
        let now = crate::base::clock::now_nanos();
        let (header, keepalive) = (header.as_nanos() as u64, keepalive.as_nanos() as u64);
        let open = shared.conns.open.lock().unwrap_or_else(|e| e.into_inner());
        for state in open.values() {
            if state.deadline(header, keepalive).is_some_and(|d| d <= now) {
                state.close(Closing::IdleLimit);
            }
        }
    }
}

/// Resolves when an HTTP/2 connection has been without a request in
/// flight for `keepalive` (HTTP/2 has no heads to wait for; HTTP/1 is held
/// to its limits by [`sweep`]).
async fn h2_idle_limit(state: &ConnState, keepalive: Duration) {
    // The phase changes under the timer (a request arrives and ends while
    // it sleeps), so it never sleeps longer than the limit: a connection
    // closes at most that much late, for one timer per connection per limit
    // period instead of one per request.
    let step = keepalive.as_nanos() as u64;
    loop {
        let now = crate::base::clock::now_nanos();
        let deadline = match state.phase() {
            Phase::Busy => now + step,
            Phase::First(t) | Phase::Idle(t) | Phase::Head(t) => t + step,
        };
        if deadline <= now {
            return;
        }
        tokio::time::sleep(Duration::from_nanos((deadline - now).min(step))).await;
    }
}

async fn serve_tls<I, H: Handler>(
    io: I,
    conn: Arc<Conn>,
    shared: Arc<Context>,
    handler: Arc<H>,
    shutdown: watch::Receiver<bool>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + Sync + 'static,
{
    let peer = conn.peer;
    let timeout = shared.runtime.load().config.listener.handshake_timeout;
    let acceptor = TlsAcceptor::from(shared.tls.load_full());
    let tls = match tokio::time::timeout(timeout, acceptor.accept(io)).await {
        Ok(Ok(tls)) => {
            shared
                .metrics
                .tls_handshakes
                .fetch_add(1, Ordering::Relaxed);
            tls
        }
        Ok(Err(e)) => {
            shared
                .metrics
                .tls_handshake_failures
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, "TLS handshake failed: {e}");
            return;
        }
        Err(_) => {
            shared
                .metrics
                .tls_handshake_failures
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, "TLS handshake timed out");
            return;
        }
    };
    let alpn = tls.get_ref().1.alpn_protocol();
    if alpn == Some(crate::certs::ACME_TLS_ALPN) {
        // A TLS-ALPN-01 validation: the handshake was the whole exchange
        // (RFC 8737 §3); no HTTP follows.
        return;
    }
    if alpn == Some(b"h2") {
        // Boxed: HTTP/1 connections over TLS do not carry room for it.
        Box::pin(serve_http2(tls, conn, shared, handler, shutdown)).await;
    } else {
        serve_http1(tls, conn, shared, handler, shutdown).await;
    }
}

async fn serve_http1<I, H: Handler>(
    io: I,
    conn: Arc<Conn>,
    shared: Arc<Context>,
    handler: Arc<H>,
    shutdown: watch::Receiver<bool>,
) where
    I: h1::Stream,
{
    let metrics = shared.metrics.clone();
    let _open = crate::runtime::metrics::Gauge::up(&metrics.open_http1);
    let rt = shared.runtime.load_full();
    let l = &rt.config.listener;
    let limits = crate::conn::framing::Limits {
        max_head: rt.config.max_header_bytes,
        max_uri: rt.config.max_uri_bytes,
        max_headers: l.max_headers,
    };
    drop(rt);
    let peer = conn.peer;
    // Held to its idle limits by the listener's sweep (`sweep`): one timer
    // for all connections instead of one in each.
    conn.state.sweep_me();
    if let Err(e) = h1::serve(Box::new(io), conn, handler, limits, &shutdown).await {
        tracing::debug!(%peer, "HTTP/1 connection ended: {e}");
    }
}

async fn serve_http2<I, H: Handler>(
    io: I,
    conn: Arc<Conn>,
    shared: Arc<Context>,
    handler: Arc<H>,
    mut shutdown: watch::Receiver<bool>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let metrics = shared.metrics.clone();
    let _open = crate::runtime::metrics::Gauge::up(&metrics.open_http2);
    let rt = shared.runtime.load_full();
    let (max_head, l) = (rt.config.max_header_bytes, &rt.config.listener);
    let peer = conn.peer;
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .enable_connect_protocol()
        .max_concurrent_streams(l.h2_max_concurrent_streams)
        // Bounds a CONTINUATION flood: the header block cannot grow past it.
        .max_header_list_size(max_head as u32)
        // Rapid reset (CVE-2023-44487): streams the client resets before we
        // answer count against this, and past it the connection is closed
        // with GOAWAY.
        .max_pending_accept_reset_streams(Some(20))
        .max_local_error_reset_streams(Some(256))
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    let keepalive = l.keepalive_timeout;
    drop(rt);
    let state = conn.state.clone();
    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
        H::handle(
            handler.clone(),
            req.map(crate::upstream::body::RequestBody::H2),
            conn.clone(),
        )
    });
    let conn = builder.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = h2_idle_limit(&state, keepalive) => {
            // GOAWAY, then close (RFC 9113 §6.8); nothing is in flight.
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(1), conn).await;
            tracing::debug!(%peer, "HTTP/2 connection closed at its idle limit");
            return;
        }
        () = stopped(&mut shutdown) => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, "HTTP/2 connection ended: {e}");
    }
}
