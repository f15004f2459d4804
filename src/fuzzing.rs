//! Entry points for the property tests (`tests/it/properties.rs`) and the
//! `cargo fuzz` targets (`fuzz/`): every byte parser Gatehouse owns, fed
//! from plain byte slices, and hyper's own view of the same bytes for the
//! differential checks. Not part of the proxy's API.

use std::sync::Arc;

use bytes::{Buf, BytesMut};

use crate::conn::framing::{take_head, BodyLen, Limits, Refusal, Scan};
use crate::upstream::h1::{chunked_step, Chunk, Step};

/// What Gatehouse's HTTP/1 side made of a byte stream: the requests it
/// would hand to the pipeline, in order, and where it stopped.
#[derive(Debug, Default)]
pub struct Framing {
    /// Complete requests (head and body), as the pipeline would get them.
    pub requests: Vec<Parsed>,
    /// Request heads seen (a refused one included).
    pub heads: u64,
    pub refused: Option<(u64, Refusal)>,
}

/// Runs `chunks` (one read each) through the HTTP/1 side's head parser
/// and body decoders, as the connection loop does (`conn::h1`), without a
/// socket. An upgrade request is treated as not switched, as an ordinary
/// response would leave it.
pub fn framing(chunks: &[&[u8]], limits: Limits) -> Framing {
    enum At {
        Head,
        Length(u64),
        Chunked(Chunk),
        Stop,
    }
    let mut out = Framing::default();
    let mut buf = BytesMut::new();
    let mut scan = Scan::default();
    let mut at = At::Head;
    let mut current: Option<Parsed> = None;
    for c in chunks {
        buf.extend_from_slice(c);
        loop {
            match &mut at {
                At::Stop => break,
                At::Head => {
                    if buf.is_empty() {
                        break;
                    }
                    match take_head(&mut buf, &mut scan, &limits) {
                        Ok(None) => break,
                        Err(why) => {
                            out.heads += 1;
                            out.refused = Some((out.heads, why));
                            at = At::Stop;
                        }
                        Ok(Some(head)) => {
                            out.heads += 1;
                            let parsed = Parsed {
                                method: head.req.method().to_string(),
                                target: target_of(head.req.uri()),
                                body: Vec::new(),
                            };
                            match head.body {
                                BodyLen::None => out.requests.push(parsed),
                                BodyLen::Fixed(n) => {
                                    current = Some(parsed);
                                    at = At::Length(n);
                                }
                                BodyLen::Chunked => {
                                    current = Some(parsed);
                                    at = At::Chunked(Chunk::Size);
                                }
                            }
                        }
                    }
                }
                At::Length(left) => {
                    let n = (buf.len() as u64).min(*left) as usize;
                    if let Some(p) = current.as_mut() {
                        p.body.extend_from_slice(&buf[..n]);
                    }
                    buf.advance(n);
                    *left -= n as u64;
                    if *left > 0 {
                        break;
                    }
                    out.requests.extend(current.take());
                    at = At::Head;
                }
                At::Chunked(chunk) => match chunked_step(chunk, &mut buf) {
                    Step::Data(d) => {
                        if let Some(p) = current.as_mut() {
                            p.body.extend_from_slice(&d);
                        }
                    }
                    Step::Trailers(_) | Step::End => {
                        out.requests.extend(current.take());
                        at = At::Head;
                    }
                    Step::Invalid(_) => {
                        out.refused = Some((out.heads, Refusal::BadChunk));
                        at = At::Stop;
                    }
                    Step::More => break,
                },
            }
        }
    }
    out
}

/// The request target as both sides report it.
fn target_of(uri: &http::Uri) -> Vec<u8> {
    uri.path_and_query()
        .map_or_else(|| uri.to_string(), |p| p.to_string())
        .into_bytes()
}

/// The limits the proxy uses by default.
pub const LIMITS: Limits = Limits {
    max_head: crate::config::DEFAULT_MAX_HEADER_BYTES,
    max_uri: crate::config::DEFAULT_MAX_URI_BYTES,
    max_headers: 100,
};

/// One request as hyper's HTTP/1 server parsed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub method: String,
    pub target: Vec<u8>,
    pub body: Vec<u8>,
}

impl Parsed {
    /// `METHOD TARGET`, to compare with [`Framing::targets`].
    pub fn line(&self) -> Vec<u8> {
        [self.method.as_bytes(), b" ", &self.target].concat()
    }
}

/// The requests hyper's HTTP/1 server finds in `bytes`, in order, until it
/// stops: the reference the differential checks compare Gatehouse's own
/// HTTP/1 side with.
pub fn hyper_requests(bytes: &[u8]) -> Vec<Parsed> {
    use http_body_util::BodyExt;
    use tokio::io::AsyncWriteExt;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime");
    rt.block_on(async {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = seen.clone();
        let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let record = record.clone();
            async move {
                let method = req.method().to_string();
                let target = target_of(req.uri());
                let body = match req.into_body().collect().await {
                    Ok(b) => b.to_bytes().to_vec(),
                    Err(_) => return Err::<http::Response<String>, _>("body failed"),
                };
                record
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(Parsed {
                        method,
                        target,
                        body,
                    });
                Ok(http::Response::new(String::new()))
            }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .half_close(true)
            .max_headers(100)
            .serve_connection(hyper_util::rt::TokioIo::new(server), svc);
        let feed = async {
            let _ = client.write_all(bytes).await;
            let _ = client.shutdown().await;
            // Drain the answers so the server never blocks on writing.
            let mut sink = Vec::new();
            let _ = tokio::io::AsyncReadExt::read_to_end(&mut client, &mut sink).await;
        };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            tokio::join!(conn, feed)
        })
        .await;
        let out = seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
        out
    })
}

/// The PROXY protocol reader on `bytes`, from a `trusted` peer.
pub fn proxy_protocol(
    bytes: &[u8],
    trusted: bool,
) -> std::io::Result<crate::conn::proxy_protocol::Header> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime");
    let mut r = bytes;
    rt.block_on(crate::conn::proxy_protocol::read_header(&mut r, trusted))
}

/// `.env` lines as (key, value, line).
pub fn dotenv(text: &str) -> Vec<(String, String, usize)> {
    crate::config::env::parse_dotenv(text)
}

/// The configuration loader on a file's text (environment empty).
pub fn config(text: &str) -> Result<crate::config::Config, crate::config::ConfigError> {
    crate::config::load(
        &crate::config::Source::Text {
            name: "fuzz.toml".into(),
            text: text.to_string(),
            base_dir: ".".into(),
        },
        &crate::config::Env::empty(),
    )
}

/// What the upstream side's chunked decoder (`upstream::h1`) made of a
/// response body read in `pieces`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Chunked {
    pub data: Vec<u8>,
    pub trailers: Vec<(String, Vec<u8>)>,
    /// The last chunk and the trailer section were read.
    pub ended: bool,
    pub invalid: Option<&'static str>,
}

/// Feeds `pieces` (one read each) to the chunked decoder.
pub fn chunked(pieces: &[&[u8]]) -> Chunked {
    use crate::upstream::h1::{chunked_step, Chunk, Step};
    let mut out = Chunked::default();
    let mut state = Chunk::Size;
    let mut buf = bytes::BytesMut::new();
    let mut pieces = pieces.iter();
    loop {
        match chunked_step(&mut state, &mut buf) {
            Step::Data(d) => out.data.extend_from_slice(&d),
            Step::Trailers(map) => {
                out.trailers = map
                    .iter()
                    .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec()))
                    .collect();
            }
            Step::End => {
                out.ended = true;
                return out;
            }
            Step::Invalid(why) => {
                out.invalid = Some(why);
                return out;
            }
            Step::More => match pieces.next() {
                Some(p) => buf.extend_from_slice(p),
                None => return out,
            },
        }
    }
}

/// The chunk-size line parser of the upstream side, for the differential
/// check against httparse's.
pub fn chunk_size(line: &[u8]) -> Option<u64> {
    crate::upstream::h1::parse_chunk_size(line).ok()
}
