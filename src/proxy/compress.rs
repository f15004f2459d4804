//! Response compression: gzip, or brotli where the client ranks it at least
//! as high, for text-like responses the upstream left uncompressed.
//!
//! AliasVault's nginx lists gzip types but forgets `application/wasm`, the
//! bulk of its Blazor client; it is included here.

use async_compression::tokio::bufread::{BrotliEncoder, GzipEncoder};
use async_compression::Level;
use bytes::Bytes;
use futures_util::TryStreamExt;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyDataStream, BodyExt, StreamBody};
use tokio_util::io::{ReaderStream, StreamReader};

use crate::base::header_names::trim_ows;
use crate::proxy::response::ResponseBody;

/// Responses smaller than this are not worth compressing.
pub const MIN_LENGTH: u64 = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Gzip,
    Brotli,
}

/// Picks an encoding from `Accept-Encoding` (RFC 9110 §12.5.3): the highest
/// q-value among gzip and br, brotli on a tie; `None` when neither is
/// acceptable.
pub fn negotiate(accept: Option<&HeaderValue>) -> Option<Encoding> {
    let accept = accept?.to_str().ok()?;
    let (mut gzip, mut br, mut star) = (None::<f32>, None::<f32>, None::<f32>);
    for item in accept.split(',') {
        let mut parts = item.split(';');
        let coding = parts.next().unwrap_or("").trim();
        let mut q = 1.0f32;
        for p in parts {
            if let Some(v) = p
                .trim()
                .strip_prefix("q=")
                .or_else(|| p.trim().strip_prefix("Q="))
            {
                q = v.trim().parse().unwrap_or(0.0);
            }
        }
        match coding.to_ascii_lowercase().as_str() {
            "gzip" | "x-gzip" => gzip = Some(q),
            "br" => br = Some(q),
            "*" => star = Some(q),
            _ => {}
        }
    }
    let gzip = gzip.or(star).unwrap_or(0.0);
    let br = br.or(star).unwrap_or(0.0);
    if br > 0.0 && br >= gzip {
        Some(Encoding::Brotli)
    } else if gzip > 0.0 {
        Some(Encoding::Gzip)
    } else {
        None
    }
}

/// Whether a response of this type is text-like enough to compress.
pub fn compressible_type(ct: &str) -> bool {
    // Runs on most responses (to decide `Vary` as well): the type's main
    // part picks the few subtypes to compare, without allocating.
    let ct = ct.as_bytes();
    let ct = trim_ows(ct.split(|b| *b == b';').next().unwrap_or_default());
    let Some(slash) = ct.iter().position(|b| *b == b'/') else {
        return false;
    };
    let (main, sub) = (&ct[..slash], &ct[slash + 1..]);
    let ends =
        |p: &[u8]| sub.len() >= p.len() && sub[sub.len() - p.len()..].eq_ignore_ascii_case(p);
    if main.eq_ignore_ascii_case(b"text") {
        // A stream of events must reach the client as each is written.
        return !sub.eq_ignore_ascii_case(b"event-stream");
    }
    let listed: &[&[u8]] = if main.eq_ignore_ascii_case(b"application") {
        &[
            b"json",
            b"javascript",
            b"x-javascript",
            b"xml",
            b"xml+rss",
            b"wasm",
        ]
    } else {
        &[]
    };
    listed.iter().any(|t| sub.eq_ignore_ascii_case(t)) || ends(b"+json") || ends(b"+xml")
}

/// Runs after the upstream answered: true when this response should be
/// compressed for a client that accepts an encoding.
pub fn should_compress(method: &Method, status: StatusCode, headers: &HeaderMap) -> bool {
    if *method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
        || status == StatusCode::PARTIAL_CONTENT
        || headers.contains_key(header::CONTENT_ENCODING)
        || headers.contains_key(header::CONTENT_RANGE)
        // Trailers would be lost by the re-encoding stream.
        || headers.contains_key(header::TRAILER)
    {
        return false;
    }
    if let Some(cc) = headers
        .get(header::CACHE_CONTROL)
        .and_then(|v| v.to_str().ok())
    {
        if cc.to_ascii_lowercase().contains("no-transform") {
            return false;
        }
    }
    let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    if !compressible_type(ct) {
        return false;
    }
    match headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
    {
        Some(len) => len.parse::<u64>().is_ok_and(|n| n > MIN_LENGTH),
        // Unknown length (chunked): compress.
        None => true,
    }
}

/// Wraps the body in a streaming encoder; memory stays flat for any size.
pub fn compress(res: Response<ResponseBody>, enc: Encoding) -> Response<ResponseBody> {
    let (mut parts, body) = res.into_parts();
    let h = &mut parts.headers;
    h.remove(header::CONTENT_LENGTH);
    h.remove(header::ACCEPT_RANGES);
    h.insert(
        header::CONTENT_ENCODING,
        HeaderValue::from_static(match enc {
            Encoding::Gzip => "gzip",
            Encoding::Brotli => "br",
        }),
    );
    add_vary(h);
    // The bytes differ from the upstream's, so a strong validator would lie
    // (RFC 9110 §8.8.1); weaken it as nginx does.
    if let Some(etag) = h.get(header::ETAG) {
        if !etag.as_bytes().starts_with(b"W/") {
            let mut weak = b"W/".to_vec();
            weak.extend_from_slice(etag.as_bytes());
            match HeaderValue::from_bytes(&weak) {
                Ok(v) => {
                    h.insert(header::ETAG, v);
                }
                Err(_) => {
                    h.remove(header::ETAG);
                }
            }
        }
    }
    let reader = StreamReader::new(BodyDataStream::new(body).map_err(std::io::Error::other));
    let body = match enc {
        Encoding::Gzip => boxed(ReaderStream::new(GzipEncoder::with_quality(
            reader,
            Level::Precise(6),
        ))),
        Encoding::Brotli => boxed(ReaderStream::new(BrotliEncoder::with_quality(
            reader,
            Level::Precise(4),
        ))),
    };
    Response::from_parts(parts, body)
}

/// Adds `Accept-Encoding` to `Vary` unless it is already there.
pub fn add_vary(h: &mut HeaderMap) {
    let present = h.get_all(header::VARY).iter().any(|v| {
        v.to_str()
            .map(|s| {
                s.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("accept-encoding") || t.trim() == "*")
            })
            .unwrap_or(false)
    });
    if !present {
        h.append(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    }
}

fn boxed<S>(stream: S) -> ResponseBody
where
    S: futures_util::Stream<Item = std::io::Result<Bytes>> + Send + 'static,
{
    let body = StreamBody::new(stream.map_ok(Frame::data).map_err(Into::into));
    ResponseBody::boxed(body.boxed_unsync())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hv(s: &'static str) -> HeaderValue {
        HeaderValue::from_static(s)
    }

    #[test]
    fn negotiation() {
        assert_eq!(
            negotiate(Some(&hv("gzip, deflate, br, zstd"))),
            Some(Encoding::Brotli)
        );
        assert_eq!(negotiate(Some(&hv("gzip"))), Some(Encoding::Gzip));
        assert_eq!(
            negotiate(Some(&hv("br;q=0.5, gzip;q=0.9"))),
            Some(Encoding::Gzip)
        );
        assert_eq!(negotiate(Some(&hv("gzip;q=0, br;q=0"))), None);
        assert_eq!(negotiate(Some(&hv("identity"))), None);
        assert_eq!(negotiate(Some(&hv("*"))), Some(Encoding::Brotli));
        assert_eq!(negotiate(None), None);
    }

    #[test]
    fn what_gets_compressed() {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, hv("application/wasm"));
        h.insert(header::CONTENT_LENGTH, hv("5000"));
        assert!(should_compress(&Method::GET, StatusCode::OK, &h));
        assert!(!should_compress(&Method::HEAD, StatusCode::OK, &h));
        h.insert(header::CONTENT_LENGTH, hv("1000"));
        assert!(!should_compress(&Method::GET, StatusCode::OK, &h), "small");
        h.remove(header::CONTENT_LENGTH);
        assert!(should_compress(&Method::GET, StatusCode::OK, &h), "chunked");
        h.insert(header::CONTENT_ENCODING, hv("gzip"));
        assert!(
            !should_compress(&Method::GET, StatusCode::OK, &h),
            "already encoded"
        );
        h.remove(header::CONTENT_ENCODING);
        h.insert(header::CONTENT_TYPE, hv("image/png"));
        assert!(!should_compress(&Method::GET, StatusCode::OK, &h), "binary");
        for ct in [
            "text/html; charset=utf-8",
            "application/json",
            "text/css",
            "application/javascript",
            "text/xml",
            "application/problem+json",
        ] {
            assert!(compressible_type(ct), "{ct}");
        }
        for ct in [
            "application/rss+xml",
            "application/atom+xml",
            "application/manifest+json",
            "application/wasm",
            "APPLICATION/XML+RSS",
            "image/svg+xml",
            "text/plain ; charset=utf-8",
        ] {
            assert!(compressible_type(ct), "{ct}");
        }
        for ct in [
            "text/event-stream",
            "Text/Event-Stream; charset=utf-8",
            "application/octet-stream",
            "application/jsonx",
            "image/png",
            "text",
            "",
        ] {
            assert!(!compressible_type(ct), "{ct}");
        }
    }
}
