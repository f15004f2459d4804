//! The request pipeline: one function per phase, called in order by
//! [`handle`]. See the crate documentation for the flow.

pub(crate) mod access_log;
pub(crate) mod compress;
pub(crate) mod diagnostics;
pub(crate) mod error;
pub mod forwarded;
pub(crate) mod response;
pub(crate) mod upgrade;

use crate::runtime::balance;
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use crate::upstream::body::RequestBody;
use http::header::{self, HeaderValue};
use http::uri::{PathAndQuery, Scheme};
use http::{Method, Request, Response, StatusCode, Uri, Version};

use crate::base::error_chain::ErrorChain;
use crate::base::recycle::Reused;
use crate::config::{OnDeny, OnRedisError};
use crate::conn::ip_header;
pub(crate) use crate::conn::Conn;
use crate::proxy::error::ProxyError;
use crate::runtime::{RouteRt, Runtime};
use crate::upstream::body::{caused_by, BodyTooLarge, ClientBodyError, UpstreamBody};
use crate::upstream::pool::UpstreamResponse;
use response::ResponseBody;

pub(crate) use crate::base::header_names::X_REQUEST_ID;

/// The reserved path of RFC 8555 §8.3 (HTTP-01 challenges).
pub(crate) const ACME_CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// The client as this request sees it: the connection's peer, or, from a
/// trusted proxy, the address and scheme that proxy reports.
#[derive(Debug, Clone)]
pub(crate) struct Client {
    pub ip: IpAddr,
    /// `ip` rendered for `X-Real-IP`/`X-Forwarded-For`.
    pub ip_header: HeaderValue,
    /// `http` or `https` as the client used it.
    pub proto: HeaderValue,
    pub https: bool,
    /// `X-Forwarded-Host` believed from a trusted proxy.
    pub forwarded_host: Option<HeaderValue>,
    /// From a trusted peer's `X-Request-Id`, else generated; sent upstream,
    /// returned to the client, logged, shown on error pages.
    pub request_id: HeaderValue,
    /// Request body bytes forwarded, for the access log (when it is on).
    pub bytes_in: Option<Arc<std::sync::atomic::AtomicU64>>,
}

impl Client {
    /// Runs once per request. An untrusted peer costs two cheap clones; a
    /// trusted peer's forwarding headers are read (STYLE rule 8).
    pub fn of(
        conn: &Conn,
        headers: &http::HeaderMap,
        trusted: &[crate::base::cidr::Cidr],
        logging: bool,
    ) -> Client {
        let bytes_in = logging.then(Arc::default);
        if !conn.trusted {
            return Client {
                ip: conn.ip,
                ip_header: conn.client_ip.clone(),
                proto: conn.proto.clone(),
                https: conn.tls,
                forwarded_host: None,
                request_id: crate::proxy::access_log::request_id(None),
                bytes_in,
            };
        }
        let request_id = crate::proxy::access_log::request_id(headers.get(&X_REQUEST_ID));
        let ip = crate::policy::client_ip::resolve(conn.ip, trusted, headers);
        let ip_header = if ip == conn.ip {
            conn.client_ip.clone()
        } else {
            ip_header(ip)
        };
        // The leftmost value is the scheme the original client used.
        let proto = headers
            .get(&forwarded::X_FORWARDED_PROTO)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .map(|v| v.trim().to_ascii_lowercase());
        let (proto, https) = match proto.as_deref() {
            Some("https") => (HeaderValue::from_static("https"), true),
            Some("http") => (HeaderValue::from_static("http"), false),
            _ => (conn.proto.clone(), conn.tls),
        };
        let forwarded_host = headers
            .get(&forwarded::X_FORWARDED_HOST)
            .filter(|v| v.to_str().is_ok_and(valid_host))
            .cloned();
        Client {
            ip,
            ip_header,
            proto,
            https,
            forwarded_host,
            request_id,
            bytes_in,
        }
    }

    /// The forwarding fields of this client's request on `route`; `host`
    /// is the one it addressed ([`request_host`]).
    pub(crate) fn forwarding<'a>(
        &'a self,
        route: &'a RouteRt,
        host: Option<&'a HeaderValue>,
    ) -> forwarded::Forwarding<'a> {
        forwarded::Forwarding {
            client_ip: &self.ip_header,
            proto: &self.proto,
            host: self.forwarded_host.as_ref().or(host),
            prefix: route.forwarded_prefix.as_ref(),
            mode: route.forwarded_for,
            https: self.https,
            request_id: &self.request_id,
        }
    }
}

/// What the request pipeline needs of the running server, and no more:
/// the configuration in service (one snapshot per request), the ACME
/// HTTP-01 answers, the certificate in service (for diagnostics) and the
/// metrics.
pub struct Context {
    pub runtime: Arc<arc_swap::ArcSwap<Runtime>>,
    pub acme_tokens: crate::certs::acme::Tokens,
    pub certs: Arc<crate::certs::CertResolver>,
    pub metrics: Arc<crate::runtime::metrics::Metrics>,
    /// Shared rate limits and challenge answers (`[cluster]`, issue 14).
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}

impl crate::conn::Handler for Context {
    type Body = ResponseBody;

    fn handle(
        self: Arc<Self>,
        req: Request<RequestBody>,
        conn: Arc<Conn>,
    ) -> impl std::future::Future<Output = Result<Response<ResponseBody>, Infallible>> + Send + 'static
    {
        handle(req, conn, self)
    }
}

/// Entry point for every request: runs the phases, turns a failure into its
/// response (logged once here), and applies the security headers to
/// whatever goes out.
pub(crate) async fn handle(
    req: Request<RequestBody>,
    conn: Arc<Conn>,
    shared: Arc<Context>,
) -> Result<Response<ResponseBody>, Infallible> {
    // Counted as in flight until the response body is done (idle limits
    // and eviction leave the connection alone meanwhile).
    let busy = crate::proxy::response::Busy::enter(&conn.state);
    let h1 = req.version() != Version::HTTP_2;
    let refusal = if h1 { conn.state.next_h1().1 } else { None };
    // One snapshot per request: a reload cannot change it half way.
    let rt = shared.runtime.load_full();
    let method = req.method().clone();
    // Cheap clones (reference-counted bytes), kept for the failure log line.
    let uri = req.uri().clone();
    let log_format = rt.config.log_format;
    let logging = log_format != crate::proxy::access_log::Format::Off;
    let client = Client::of(&conn, req.headers(), &rt.config.trusted_proxies, logging);
    let version = req.version();
    let (referer, user_agent) = if logging {
        (
            req.headers().get(header::REFERER).cloned(),
            req.headers().get(header::USER_AGENT).cloned(),
        )
    } else {
        (None, None)
    };
    let started = std::time::Instant::now();
    let mut chosen = None;
    let result = match refusal {
        Some(r) => Err(Failure::from(ProxyError::from(r))),
        None => inner(req, &conn, &client, &rt, &shared, &mut chosen, started).await,
    };
    let mut res = match result {
        Ok(res) => res,
        Err(Failure { error, route }) => {
            if let Some(r) = &route {
                match error {
                    ProxyError::UpstreamConnect(_) => {
                        r.metrics.connect_errors.fetch_add(1, Relaxed)
                    }
                    ProxyError::UpstreamTimeout(_) => r.metrics.timeouts.fetch_add(1, Relaxed),
                    _ => 0,
                };
                chosen = route.clone();
            }
            // Peers choose how often this happens: the lines are limited
            // per second (issue 10 point 10); the client's own faults are
            // debug lines.
            static FAILED: crate::base::log_limit::Limit = crate::base::log_limit::Limit::new();
            match route {
                Some(route) if error.status().is_server_error() => {
                    if let Some(suppressed) = FAILED.allow() {
                        tracing::warn!(
                            client = %client.ip,
                            %method,
                            path = uri.path(),
                            route = route.path,
                            upstream = %route.upstream.authority,
                            cause = %ErrorChain(&error),
                            suppressed,
                            "request failed with {}",
                            error.status().as_u16()
                        )
                    }
                }
                Some(route) => tracing::debug!(
                    client = %client.ip,
                    %method,
                    path = uri.path(),
                    route = route.path,
                    cause = %ErrorChain(&error),
                    "request refused with {}",
                    error.status().as_u16()
                ),
                None => {
                    tracing::debug!(client = %client.ip, %method, path = uri.path(), cause = %ErrorChain(&error), "request refused")
                }
            }
            error.into_response(&client.request_id)
        }
    };
    res.body_mut().set_busy(busy);
    if !h1 {
        rt.headers.apply(res.headers_mut(), conn.tls);
        res.headers_mut()
            .insert(&X_REQUEST_ID, client.request_id.clone());
    }
    let status = res.status().as_u16();
    let head_time = started.elapsed();
    match &chosen {
        Some(route) => route.metrics.observe(status, head_time),
        None => shared.metrics.unrouted.observe(status, head_time),
    }
    if logging {
        res.body_mut()
            .set_log(Box::new(crate::proxy::access_log::Entry {
                format: log_format,
                time: std::time::SystemTime::now() - head_time,
                started,
                client: client.ip,
                method,
                uri,
                version,
                status,
                names: chosen.as_ref().map(|r| r.log_names.clone()),
                // Time to the response head: for a proxied request, the
                // upstream's answer time plus negligible local work.
                upstream_time: chosen.as_ref().map(|_| head_time),
                request_id: client.request_id.clone(),
                referer,
                user_agent,
                bytes_in: client.bytes_in.clone().unwrap_or_default(),
                bytes_out: 0,
            }));
    }
    if h1 {
        // The HTTP/1 writer adds the security fields and the request id
        // from bytes as it writes the head (issue 13).
        res.body_mut()
            .set_fields(crate::proxy::response::ResponseFields {
                runtime: rt,
                https: conn.tls,
                request_id: client.request_id,
            });
    }
    Ok(res)
}

/// A failed request: the cause and the route it was on, for the log line.
pub(crate) struct Failure {
    pub error: ProxyError,
    pub route: Option<Arc<RouteRt>>,
}

impl From<ProxyError> for Failure {
    fn from(error: ProxyError) -> Self {
        Failure { error, route: None }
    }
}

async fn inner(
    mut req: Request<RequestBody>,
    conn: &Conn,
    client: &Client,
    rt: &Runtime,
    shared: &Context,
    chosen: &mut Option<Arc<RouteRt>>,
    started: std::time::Instant,
) -> Result<Response<ResponseBody>, Failure> {
    check_host(&req)?;
    if req.headers().get(header::HOST).is_none() && req.uri().authority().is_none() {
        // HTTP/1.0 without Host (valid, RFC 9112 §3.2): the upstream speaks
        // HTTP/1.1 and needs one; the configured name is the one meant.
        if let Ok(h) = HeaderValue::from_str(&rt.config.hostname) {
            req.headers_mut().insert(header::HOST, h);
        }
    }
    match *req.method() {
        // TRACE would reflect cookies and credentials back to a script
        // (cross-site tracing); a proxy in front of apps has no use for it.
        Method::TRACE => return Err(ProxyError::MethodNotAllowed.into()),
        // RFC 9110 §9.3.7: `OPTIONS *` asks the server itself.
        Method::OPTIONS if req.uri() == "*" => return Ok(options_star()),
        // Nothing to tunnel to, except RFC 8441 WebSockets below.
        Method::CONNECT if !upgrade::is_h2_websocket(&req) => {
            return Err(ProxyError::MethodNotAllowed.into())
        }
        _ => {}
    }
    // Issue 5: `gatehouse doctor`'s probe is answered here, before the
    // redirect and the routes, so it sees any request as it arrived.
    if let Some(token) = &rt.config.diagnostics_token {
        if req.headers().contains_key(&diagnostics::HEADER) {
            // The rare branches (diagnostics, ACME answers, upgrades) are
            // boxed: inline, their state would widen every request's
            // future, which hyper moves as it hands it on (issue 13).
            return Ok(Box::pin(diagnostics::answer(req, token, conn, client, rt, shared)).await);
        }
    }
    let path = req.uri().path();
    if !conn.tls {
        if path.starts_with(ACME_CHALLENGE_PREFIX) {
            return Ok(Box::pin(serve_challenge(rt, shared, path)).await);
        }
        // A trusted proxy that terminated TLS says so with
        // `X-Forwarded-Proto: https`; redirecting that request would loop.
        if rt.config.force_https_redirect && !client.https {
            return redirect_to_https(&req, rt).map_err(Failure::from);
        }
    }
    // Routes and their rules see the path's normal form; the upstream
    // gets the target as sent (issue 10 point 3).
    let norm = crate::runtime::router::normalize(path);
    if norm.encoded_nul {
        return Err(ProxyError::BadRequest("%00 in the path").into());
    }
    let route = select_route(rt, &norm.path, client.ip)?;
    *chosen = Some(route.clone());
    let on_route = |error: ProxyError| Failure {
        error,
        route: Some(route.clone()),
    };
    if norm.encoded_slash && !route.allow_encoded_slash {
        return Err(on_route(ProxyError::BadRequest(
            "%2F inside a path segment (allow_encoded_slash is off)",
        )));
    }
    admit_rate(&route, client.ip, shared.cluster.as_deref())
        .await
        .map_err(on_route)?;
    admit_body(&req, &route).map_err(on_route)?;
    if upgrade::is_h2_websocket(&req) {
        if !route.upgrades.iter().any(|u| u == "websocket") {
            return Err(on_route(ProxyError::MethodNotAllowed));
        }
        return Box::pin(upgrade::h2_websocket(
            req,
            client,
            route.clone(),
            shared.metrics.clone(),
        ))
        .await
        .map_err(on_route);
    }
    if let Some(protocols) = upgrade::h1_protocols(&req, &route.upgrades) {
        return Box::pin(upgrade::h1(
            req,
            protocols,
            client,
            route.clone(),
            shared.metrics.clone(),
        ))
        .await
        .map_err(on_route);
    }
    let encoding = if route.compress {
        compress::negotiate(req.headers().get(header::ACCEPT_ENCODING))
    } else {
        None
    };
    let method = req.method().clone();
    let host = request_host(&req);
    let mut up = prepare_upstream(req, &route, client, host.as_ref()).map_err(on_route)?;
    // The response timeout runs from here: from the request's start (one
    // clock read for the whole request, issue 13) unless its body was
    // waited for first, which is the client's time.
    let since = if read_ahead(&mut up, &route).await.map_err(on_route)? {
        std::time::Instant::now()
    } else {
        started
    };
    let fields = client.forwarding(&route, host.as_ref());
    // Boxed: sending (retries over the route's servers, the timers, the
    // upstream exchange) is the largest part of a request's state; on the
    // heap, the request's own future stays small, which hyper moves as it
    // hands it to an HTTP/2 stream's task (issue 13 point 3). The block is
    // the worker's, reused request after request.
    let res = Reused::with(|| send(&route, up, &fields, since))
        .await
        .map_err(on_route)?;
    if res.status() == StatusCode::SWITCHING_PROTOCOLS {
        // Only a protocol the client asked for, on a route that allows it,
        // may be switched to (issue 10 point 2).
        return Err(on_route(ProxyError::Upgrade(
            "the upstream switched protocols on a request that did not ask to".into(),
        )));
    }
    Ok(finish_response(
        res,
        client,
        host.as_ref(),
        &method,
        encoding,
    ))
}

/// RFC 9112 §3.2 and RFC 9113 §8.3.1: one Host, a valid authority, and
/// in HTTP/2 the same as `:authority`; HTTP/1.1 needs one (1.0 does not).
fn check_host<B>(req: &Request<B>) -> Result<(), ProxyError> {
    let mut all = req.headers().get_all(header::HOST).iter();
    let host = all.next();
    if all.next().is_some() {
        return Err(ProxyError::BadRequest("more than one Host"));
    }
    if let Some(h) = host {
        if !valid_authority(h.as_bytes()) {
            return Err(ProxyError::BadRequest("invalid Host"));
        }
    }
    match (req.version(), host, req.uri().authority()) {
        (Version::HTTP_2, Some(h), Some(a)) if h.as_bytes() != a.as_str().as_bytes() => {
            Err(ProxyError::BadRequest("Host differs from :authority"))
        }
        (Version::HTTP_11, None, None) => Err(ProxyError::BadRequest("missing Host")),
        _ => Ok(()),
    }
}

/// `host [":" port]` as RFC 3986 §3.2.2 writes it: a reg-name (unreserved,
/// percent-encoded, sub-delims), an IPv4 address, or a bracketed IP literal.
pub(crate) fn valid_authority(b: &[u8]) -> bool {
    if b.is_empty() || b.len() > 262 {
        return false;
    }
    let (host_ok, rest) = if b[0] == b'[' {
        match b.iter().position(|c| *c == b']') {
            Some(end) => (
                end > 1
                    && b[1..end]
                        .iter()
                        .all(|c| c.is_ascii_hexdigit() || matches!(c, b':' | b'.')),
                &b[end + 1..],
            ),
            None => return false,
        }
    } else {
        let end = b.iter().position(|c| *c == b':').unwrap_or(b.len());
        let host = &b[..end];
        (
            !host.is_empty()
                && host
                    .iter()
                    .all(|c| c.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=".contains(c)),
            &b[end..],
        )
    };
    host_ok
        && match rest {
            [] => true,
            [b':', port @ ..] => port.len() <= 5 && port.iter().all(u8::is_ascii_digit),
            _ => false,
        }
}

/// The answer to `OPTIONS *`: what the server supports, nothing more.
fn options_star() -> Response<ResponseBody> {
    let mut res = Response::new(ResponseBody::empty());
    res.headers_mut().insert(
        header::ALLOW,
        HeaderValue::from_static(crate::proxy::error::ALLOW),
    );
    res
}

/// Reads the request body ahead up to the route's `request_buffer`, so a
/// slow client is kept off the upstream (issue 10 point 6), and gives the
/// upstream request the framing of what is known: a length when the whole
/// body was read, `chunked` when it still streams. hyper's client would
/// drop the body of a GET or HEAD without either (issue 10 point 9).
/// `true` when there was a body to wait for.
async fn read_ahead(up: &mut Request<UpstreamBody>, route: &RouteRt) -> Result<bool, ProxyError> {
    use http_body::Body as _;
    if up.body().is_end_stream() {
        return Ok(false);
    }
    up.body_mut()
        .buffer(route.request_buffer)
        .await
        .map_err(|e| body_error(&*e, route))?;
    if up.headers().contains_key(header::CONTENT_LENGTH) || up.body().is_end_stream() {
        return Ok(true);
    }
    match up.body().size_hint().exact() {
        Some(n) => {
            up.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        }
        None => {
            up.headers_mut().insert(
                header::TRANSFER_ENCODING,
                HeaderValue::from_static("chunked"),
            );
        }
    }
    Ok(true)
}

/// The status for a request body that failed while it was read.
fn body_error(e: &(dyn std::error::Error + 'static), route: &RouteRt) -> ProxyError {
    if caused_by::<BodyTooLarge>(e) {
        ProxyError::BodyTooLarge {
            limit: route.max_body,
        }
    } else if caused_by::<crate::upstream::body::ClientBodyTimeout>(e) {
        ProxyError::ClientTimeout(route.client_body_timeout)
    } else {
        ProxyError::BadRequest("the request body could not be read")
    }
}

/// Picks the route: the longest matching prefix whose access rules admit
/// the client. A refused client on a `fallthrough` route is served by the
/// next match as if the route did not exist (AliasVault's silent admin
/// fall-through, so the panel's existence is not revealed).
fn select_route(rt: &Runtime, path: &str, ip: IpAddr) -> Result<Arc<RouteRt>, Failure> {
    for route in rt.router.candidates(path) {
        match route.access.check(ip) {
            Ok(()) => return Ok(route.clone()),
            Err(OnDeny::Fallthrough) => continue,
            Err(OnDeny::Forbidden) => {
                return Err(Failure {
                    error: ProxyError::Denied,
                    route: Some(route.clone()),
                })
            }
        }
    }
    Err(ProxyError::NoRoute.into())
}

/// The route's rate limit, keyed by the resolved client address: the
/// cluster's shared state when there is one and it answers in time, else
/// what `on_redis_error` says (issue 14). A route without a limit returns
/// at once and never touches Redis.
async fn admit_rate(
    route: &RouteRt,
    ip: IpAddr,
    cluster: Option<&crate::cluster::Cluster>,
) -> Result<(), ProxyError> {
    let (Some(limiter), Some(limit)) = (&route.limiter, route.rate_limit) else {
        return Ok(());
    };
    if let Some(cluster) = cluster {
        let (interval, tolerance) = limit.gcra();
        // Boxed: the Redis call's state lives on the heap only for limited
        // requests of a cluster, instead of widening every request's future.
        let shared = Box::pin(cluster.admit(
            &route.path,
            crate::policy::rate_limit::key_of(ip),
            interval,
            tolerance,
        ));
        match shared.await {
            Ok(verdict) => {
                return verdict.map_err(|wait| ProxyError::RateLimited { retry_after: wait })
            }
            Err(_) => match cluster.settings.on_redis_error {
                OnRedisError::Local => {}
                OnRedisError::Allow => return Ok(()),
                OnRedisError::Deny => return Err(ProxyError::SharedStateUnavailable),
            },
        }
    }
    limiter
        .check(ip, crate::base::clock::now_nanos())
        .map_err(|wait| ProxyError::RateLimited { retry_after: wait })
}

/// Refuses a body whose declared length is over the route's limit before any
/// of it is read. A body without a length is capped while it streams.
fn admit_body(req: &Request<RequestBody>, route: &RouteRt) -> Result<(), ProxyError> {
    if let Some(len) = req.headers().get(header::CONTENT_LENGTH) {
        let len = len
            .to_str()
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or(ProxyError::BadRequest("invalid Content-Length"))?;
        if len > route.max_body {
            return Err(ProxyError::BodyTooLarge {
                limit: route.max_body,
            });
        }
    }
    Ok(())
}

/// The host the client addressed: `Host`, or `:authority` in HTTP/2.
pub(crate) fn request_host<B>(req: &Request<B>) -> Option<HeaderValue> {
    match req.headers().get(header::HOST) {
        Some(h) => Some(h.clone()),
        None => req
            .uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok()),
    }
}

/// Turns the client's request into the upstream's: same method, path and
/// query byte for byte, the client's Host (`host`, from [`request_host`]),
/// hop-by-hop fields removed. The forwarding fields are written with its
/// head ([`Client::forwarding`]). Runs once per proxied request.
pub(crate) fn prepare_upstream(
    req: Request<RequestBody>,
    route: &RouteRt,
    client: &Client,
    host: Option<&HeaderValue>,
) -> Result<Request<UpstreamBody>, ProxyError> {
    // Taken apart once and changed in place: the request's head is a
    // quarter of a KiB, and each move of it is a copy (issue 13).
    let (mut parts, body) = req.into_parts();
    prepare_parts(&mut parts, route, host)?;
    let body = UpstreamBody::new(
        body,
        route.max_body,
        route.client_body_timeout,
        client.bytes_in.clone(),
    );
    Ok(Request::from_parts(parts, body))
}

/// [`prepare_upstream`] for any body type.
pub(crate) fn prepare_upstream_with<B>(
    req: Request<B>,
    route: &RouteRt,
    host: Option<&HeaderValue>,
) -> Result<Request<B>, ProxyError> {
    let (mut parts, body) = req.into_parts();
    prepare_parts(&mut parts, route, host)?;
    Ok(Request::from_parts(parts, body))
}

/// The head's part of [`prepare_upstream`].
fn prepare_parts(
    parts: &mut http::request::Parts,
    route: &RouteRt,
    host: Option<&HeaderValue>,
) -> Result<(), ProxyError> {
    // The Host in the map is the one meant unless the target named the
    // authority (HTTP/2's `:authority`, or an absolute-form target).
    let host_from_target = parts.uri.authority().is_some();
    let mut uri = http::uri::Parts::default();
    uri.scheme = Some(Scheme::HTTP);
    uri.authority = Some(route.upstream.authority.clone());
    uri.path_and_query = Some(
        parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
    );
    parts.uri =
        Uri::from_parts(uri).map_err(|_| ProxyError::BadRequest("invalid request target"))?;
    let from_h2 = parts.version == Version::HTTP_2;
    parts.version = Version::HTTP_11;
    let h = &mut parts.headers;
    let te_trailers = forwarded::strip_hop_by_hop(h);
    if te_trailers {
        // We accept trailers from the upstream and pass them on.
        h.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if from_h2 {
        forwarded::join_cookies(h);
    }
    match host {
        Some(v) if host_from_target => {
            h.insert(header::HOST, v.clone());
        }
        Some(_) => {}
        None => return Err(ProxyError::BadRequest("missing Host")),
    }
    Ok(())
}

/// Sends the request on the route's pool and waits for the response head
/// within the route's `timeout` from `since`. An upstream 502/503/504
/// counts as a failure so the client sees the status page (AliasVault
/// #1098).
pub(crate) fn send<'a>(
    route: &'a RouteRt,
    req: Request<UpstreamBody>,
    fields: &'a forwarded::Forwarding<'a>,
    since: std::time::Instant,
) -> impl std::future::Future<Output = Result<Response<UpstreamResponse>, ProxyError>> + 'a {
    // Not an async fn: its state would hold the request a second time
    // beside the attempt's (392 bytes, moved on every request).
    if route.servers.len() < 2 {
        futures_util::future::Either::Left(send_once(route, req, fields, since))
    } else {
        futures_util::future::Either::Right(send_balanced(route, req, fields, since))
    }
}

/// [`send`] over several servers.
async fn send_balanced(
    route: &RouteRt,
    req: Request<UpstreamBody>,
    fields: &forwarded::Forwarding<'_>,
    since: std::time::Instant,
) -> Result<Response<UpstreamResponse>, ProxyError> {
    // Several servers: pick one, mark a failed one down for a while, and
    // try another when connecting failed and the request is safe to send
    // again (idempotent, no body: RFC 9110 §9.2.2).
    let retryable =
        is_idempotent(req.method()) && http_body::Body::size_hint(req.body()).exact() == Some(0);
    let saved = retryable.then(|| {
        (
            req.method().clone(),
            req.uri().clone(),
            req.headers().clone(),
        )
    });
    let n = route.servers.len().min(64);
    let mut tried = 0u64;
    let mut first = true;
    let mut next = Some(req);
    loop {
        let idx = balance::pick(route, tried);
        tried |= 1 << idx;
        let server = &route.servers[idx];
        let mut req = match next.take() {
            Some(r) => r,
            None => {
                let (method, uri, headers) = saved
                    .clone()
                    .expect("invariant: only retryable requests are sent again");
                let mut r = Request::new(UpstreamBody::empty());
                *r.method_mut() = method;
                *r.uri_mut() = uri;
                *r.headers_mut() = headers;
                r
            }
        };
        let mut parts = req.uri().clone().into_parts();
        parts.authority = Some(server.authority.clone());
        if let Ok(uri) = Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
        // A second attempt has the whole timeout again.
        let from = if first {
            first = false;
            since
        } else {
            std::time::Instant::now()
        };
        let result = {
            let _busy = balance::Outstanding::new(&server.outstanding);
            send_once(route, req, fields, from).await
        };
        match result {
            Err(
                e @ (ProxyError::UpstreamConnect(_)
                | ProxyError::UpstreamTimeout(_)
                | ProxyError::UpstreamProtocol(_)),
            ) => {
                balance::mark_down(server);
                let untried = (0..n).any(|i| tried & (1 << i) == 0);
                if matches!(e, ProxyError::UpstreamConnect(_)) && retryable && untried {
                    tracing::warn!(route = route.path, upstream = %server.authority, "connecting failed; trying the next server");
                    continue;
                }
                return Err(e);
            }
            other => return other,
        }
    }
}

fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// One attempt on the server the request's URI names.
async fn send_once(
    route: &RouteRt,
    mut req: Request<UpstreamBody>,
    fields: &forwarded::Forwarding<'_>,
    since: std::time::Instant,
) -> Result<Response<UpstreamResponse>, ProxyError> {
    let progress = req.body_mut().progress();
    let since = tokio::time::Instant::from_std(since);
    // (The caller boxes the whole send: one allocation for it all.)
    let sent = route.client.request_at(req, fields, since);
    // Pinned here and lent: a future taken by value would be held twice
    // in `after_body`'s state (its argument and its pinned copy), 2.3 KB
    // more in every request's send.
    tokio::pin!(sent);
    let answer = match progress {
        None => tokio::time::timeout_at(since + route.timeout, sent)
            .await
            .ok(),
        Some(p) => after_body(sent, &p, route.timeout).await,
    };
    let res = match answer {
        None => return Err(ProxyError::UpstreamTimeout(route.timeout)),
        Some(Err(e)) => {
            if caused_by::<BodyTooLarge>(&e)
                || caused_by::<crate::upstream::body::ClientBodyTimeout>(&e)
                || caused_by::<ClientBodyError>(&e)
            {
                return Err(body_error(&e, route));
            }
            return Err(e.into());
        }
        Some(Ok(res)) => res,
    };
    route.metrics.reached.store(true, Relaxed);
    // (A response with both Content-Length and Transfer-Encoding was
    // refused by the parser, upstream::h1: RFC 9112 §6.1.)
    match res.status() {
        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT => {
            Err(ProxyError::UpstreamStatus(res.status()))
        }
        _ => Ok(res),
    }
}

/// Waits for the upstream's answer to a request whose body still streams:
/// the response timeout starts once the body has been sent (a slow upload
/// is the client's time, issue 10 point 1). Meanwhile the upstream is held
/// to `limit` only when it is the one that stopped reading; a client that
/// stops sending meets its own `client_body_timeout` inside the body.
async fn after_body<F: std::future::Future + Unpin>(
    mut sent: F,
    progress: &crate::upstream::body::Progress,
    limit: std::time::Duration,
) -> Option<F::Output> {
    loop {
        if progress.ended() {
            return tokio::time::timeout(limit, sent).await.ok();
        }
        tokio::select! {
            r = &mut sent => return Some(r),
            () = progress.done.notified() => {}
            () = tokio::time::sleep(limit) => {
                if progress.upstream_stall().is_some_and(|n| n >= limit.as_nanos() as u64) {
                    return None;
                }
            }
        }
    }
}

/// Shapes the upstream's response for the client: hop-by-hop fields out,
/// own-host `Location` kept on https, compression when it pays.
pub(crate) fn finish_response(
    res: Response<UpstreamResponse>,
    client: &Client,
    host: Option<&HeaderValue>,
    method: &Method,
    encoding: Option<compress::Encoding>,
) -> Response<ResponseBody> {
    let (mut parts, body) = res.into_parts();
    forwarded::strip_hop_by_hop(&mut parts.headers);
    if client.https {
        if let Some(host) = host {
            forwarded::rewrite_location(&mut parts.headers, host.as_bytes());
        }
    }
    let res = Response::from_parts(parts, ResponseBody::upstream(body));
    match encoding {
        Some(enc) if compress::should_compress(method, res.status(), res.headers()) => {
            compress::compress(res, enc)
        }
        _ => {
            let mut res = res;
            // The response varies by Accept-Encoding whenever it could have
            // been compressed, even when this client did not ask.
            if encoding.is_none()
                && res
                    .headers()
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(compress::compressible_type)
                && !res.headers().contains_key(header::CONTENT_ENCODING)
            {
                compress::add_vary(res.headers_mut());
            }
            res
        }
    }
}

/// `FORCE_HTTPS_REDIRECT`: 301 to the same host, path and query on HTTPS,
/// keeping a non-443 port (AliasVault's nginx drops it, their #940).
fn redirect_to_https(
    req: &Request<RequestBody>,
    rt: &Runtime,
) -> Result<Response<ResponseBody>, ProxyError> {
    let host = match req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
    {
        Some(h) if valid_host(h) => forwarded::host_without_port(h).to_string(),
        Some(_) => return Err(ProxyError::BadRequest("invalid Host")),
        // HTTP/1.0 without Host: the configured name.
        None => rt.config.hostname.clone(),
    };
    let pq = req.uri().path_and_query().map_or("/", PathAndQuery::as_str);
    let location = if rt.redirect_port == 443 {
        format!("https://{host}{pq}")
    } else {
        format!("https://{host}:{}{pq}", rt.redirect_port)
    };
    let location = HeaderValue::from_str(&location)
        .map_err(|_| ProxyError::BadRequest("invalid request target"))?;
    let mut res = Response::new(ResponseBody::empty());
    *res.status_mut() = StatusCode::MOVED_PERMANENTLY;
    res.headers_mut().insert(header::LOCATION, location);
    Ok(res)
}

/// A Host that can be put in a URL as is: a name, IPv4, or bracketed IPv6,
/// with an optional port. Anything else could turn the redirect into a link
/// to another place.
fn valid_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 260
        && h.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':' | b'[' | b']')
        })
}

/// Serves certbot's webroot for HTTP-01 challenges: only a single token
/// segment of the base64url alphabet (RFC 8555 §8.1), so no path can leave
/// the folder; `Cache-Control: no-cache`; 404 when absent.
async fn serve_challenge(rt: &Runtime, shared: &Context, path: &str) -> Response<ResponseBody> {
    let token = &path[ACME_CHALLENGE_PREFIX.len()..];
    let valid = !token.is_empty()
        && token.len() <= 256
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    // Gatehouse's own ACME client first (this replica's answers, then the
    // cluster's: the CA may reach any replica, issue 14), then certbot's
    // webroot.
    let mut own = valid
        .then(|| {
            shared
                .acme_tokens
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(token)
                .cloned()
        })
        .flatten();
    if let (None, true, Some(cluster)) =
        (&own, valid, shared.cluster.as_ref().filter(|c| c.is_up()))
    {
        match cluster.http01(token).await {
            Ok(answer) => own = answer,
            Err(e) => tracing::warn!(
                "ACME: cannot look up challenge {token} in Redis: {}",
                crate::base::error_chain::ErrorChain(&e)
            ),
        }
    }
    let file = match (own, &rt.webroot, valid) {
        (Some(key_auth), _, _) => Some(key_auth.into_bytes()),
        (None, Some(root), true) => {
            tokio::fs::read(root.join(".well-known/acme-challenge").join(token))
                .await
                .ok()
        }
        _ => None,
    };
    let mut res = match file {
        Some(bytes) => {
            let mut res = Response::new(ResponseBody::full(bytes));
            res.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            res
        }
        None => ProxyError::NoRoute.into_response(&HeaderValue::from_static("-")),
    };
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    res
}
