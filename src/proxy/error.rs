//! Per-request failures and the one place they become responses.

use http::{header, HeaderValue, Response, StatusCode};

use crate::proxy::response::ResponseBody;
use crate::upstream::body::BoxError;
use crate::upstream::pool::UpstreamError;

/// Why a request could not be proxied. Causes are kept as sources, never
/// formatted into strings, so the log line can print the whole chain.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no route matches the request path")]
    NoRoute,
    #[error("request body exceeds the route's limit of {limit} bytes")]
    BodyTooLarge { limit: u64 },
    #[error("the client address is not allowed on this route")]
    Denied,
    #[error("rate limit exceeded")]
    RateLimited { retry_after: std::time::Duration },
    /// `on_redis_error = "deny"` while Redis cannot answer (issue 14).
    #[error("the shared rate limit cannot be checked: Redis is unreachable")]
    SharedStateUnavailable,
    #[error("request is malformed: {0}")]
    BadRequest(&'static str),
    #[error("the request line is longer than the limit")]
    UriTooLong,
    #[error("the request head is larger than the limit")]
    HeadTooLarge,
    #[error("not implemented: {0}")]
    NotImplemented(&'static str),
    #[error("HTTP version not supported")]
    VersionNotSupported,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("the client sent nothing of its body for {0:?}")]
    ClientTimeout(std::time::Duration),
    #[error("cannot connect to the upstream")]
    UpstreamConnect(#[source] UpstreamError),
    #[error("upstream did not answer within {0:?}")]
    UpstreamTimeout(std::time::Duration),
    #[error("upstream failed")]
    UpstreamProtocol(#[source] UpstreamError),
    #[error("upstream answered {0}")]
    UpstreamStatus(StatusCode),
    #[error("upgrade failed")]
    Upgrade(#[source] BoxError),
}

/// Where upstream failures meet the request path: a failed connect is
/// told apart from a failure on an established connection.
impl From<UpstreamError> for ProxyError {
    fn from(e: UpstreamError) -> Self {
        if e.is_connect() {
            ProxyError::UpstreamConnect(e)
        } else {
            ProxyError::UpstreamProtocol(e)
        }
    }
}

impl ProxyError {
    /// The status the client sees. The only mapping from causes to statuses.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::Denied => StatusCode::FORBIDDEN,
            ProxyError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::UriTooLong => StatusCode::URI_TOO_LONG,
            ProxyError::HeadTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            ProxyError::VersionNotSupported => StatusCode::HTTP_VERSION_NOT_SUPPORTED,
            ProxyError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::ClientTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ProxyError::SharedStateUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            // AliasVault's nginx maps every upstream failure (and an
            // upstream's own 502/503/504, its #1098) to 503 + status page.
            ProxyError::UpstreamConnect(_)
            | ProxyError::UpstreamTimeout(_)
            | ProxyError::UpstreamProtocol(_)
            | ProxyError::UpstreamStatus(_)
            | ProxyError::Upgrade(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// A short page for the client; no internals, no upstream names.
    /// `request_id` is shown on the page so a user can quote it.
    pub fn into_response(self, request_id: &HeaderValue) -> Response<ResponseBody> {
        let id = String::from_utf8_lossy(request_id.as_bytes());
        let status = self.status();
        let retry_after = match &self {
            // Whole seconds, rounded up (RFC 9110 §10.2.3).
            ProxyError::RateLimited { retry_after } => {
                Some(retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0))
            }
            // The breaker retries Redis every 250 ms.
            ProxyError::SharedStateUnavailable => Some(1),
            _ => None,
        };
        let mut res = match status {
            StatusCode::SERVICE_UNAVAILABLE => {
                let page = STATUS_PAGE.replace(
                    "</main>",
                    &format!(
                        "<p class=\"id\">Request ID: {}</p>\n</main>",
                        html_escape(&id)
                    ),
                );
                let mut res = Response::new(ResponseBody::full(page));
                let h = res.headers_mut();
                h.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/html; charset=utf-8"),
                );
                h.insert(
                    header::CACHE_CONTROL,
                    HeaderValue::from_static("no-cache, no-store, must-revalidate"),
                );
                h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
                h.insert(header::EXPIRES, HeaderValue::from_static("0"));
                res
            }
            _ => {
                let text = format!(
                    "{} {}\nRequest ID: {id}\n",
                    status.as_u16(),
                    status.canonical_reason().unwrap_or("Error")
                );
                let mut res = Response::new(ResponseBody::full(text));
                res.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; charset=utf-8"),
                );
                res
            }
        };
        *res.status_mut() = status;
        if let Some(secs) = retry_after {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        if status == StatusCode::METHOD_NOT_ALLOWED {
            res.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(ALLOW));
        }
        // After these the connection's framing cannot be trusted, or the
        // client is too slow to keep: close it (RFC 9112 §9.6).
        if matches!(
            status,
            StatusCode::BAD_REQUEST
                | StatusCode::REQUEST_TIMEOUT
                | StatusCode::URI_TOO_LONG
                | StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
                | StatusCode::NOT_IMPLEMENTED
                | StatusCode::HTTP_VERSION_NOT_SUPPORTED
        ) {
            res.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        res
    }
}

/// The methods a route answers: `Allow` of a 405 and of `OPTIONS *`.
pub const ALLOW: &str = "GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS";

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Served with 503 whenever an upstream is down, starting or failing, like
/// AliasVault's `status.html`. It names neither the route nor the upstream.
pub const STATUS_PAGE: &str = r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Temporarily unavailable</title>
<style>
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;background:#f3f4f6;color:#1f2937;display:flex;min-height:100vh;margin:0;align-items:center;justify-content:center}
main{background:#fff;border-radius:12px;box-shadow:0 4px 24px rgba(0,0,0,.08);padding:2.5rem;max-width:32rem;text-align:center}
h1{font-size:1.4rem;margin:0 0 1rem}
p{line-height:1.5;margin:.5rem 0}
</style>
</head>
<body>
<main>
<h1>Temporarily unavailable</h1>
<p>The service is temporarily unavailable. It may be undergoing maintenance or starting up.</p>
<p>Please try again by refreshing the page in a moment.</p>
</main>
</body>
</html>
"#;

impl From<crate::conn::framing::Refusal> for ProxyError {
    fn from(r: crate::conn::framing::Refusal) -> Self {
        use crate::conn::framing::Refusal::*;
        match r {
            Ambiguous => ProxyError::BadRequest("both Content-Length and Transfer-Encoding"),
            BadContentLength => ProxyError::BadRequest("invalid Content-Length"),
            BadTransferEncoding => {
                ProxyError::BadRequest("Transfer-Encoding with chunked twice or not last")
            }
            UnknownCoding => ProxyError::NotImplemented("a transfer coding other than chunked"),
            BadChunk => ProxyError::BadRequest("malformed chunked body"),
            UriTooLong => ProxyError::UriTooLong,
            HeadTooLarge => ProxyError::HeadTooLarge,
            Http2Preface => ProxyError::BadRequest("an HTTP/2 preface on an HTTP/1 port"),
            Version => ProxyError::VersionNotSupported,
            Connect => ProxyError::MethodNotAllowed,
            Malformed => ProxyError::BadRequest("malformed request head"),
        }
    }
}
