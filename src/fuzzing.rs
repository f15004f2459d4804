//! Entry points for the property tests (`tests/it/properties.rs`) and the
//! `cargo fuzz` targets (`fuzz/`): every byte parser Gatehouse owns, fed
//! from plain byte slices, and hyper's own view of the same bytes for the
//! differential checks. Not part of the proxy's API.

use std::sync::Arc;

use crate::conn::framing::{ConnState, Inspect, Limits, Refusal};

/// What the HTTP/1 reader made of a byte stream.
#[derive(Debug, Default)]
pub struct Framing {
    /// The bytes hyper would have been given (stand-ins included).
    pub passed: Vec<u8>,
    /// Request heads seen (refused ones included).
    pub heads: u64,
    /// `METHOD TARGET` of each head handed over as it came, in order.
    pub targets: Vec<Vec<u8>>,
    pub refused: Option<(u64, Refusal)>,
}

/// Runs `chunks` (one read each) through the HTTP/1 reader. An upgrade
/// request is answered "not switched", as an ordinary response would be.
pub fn framing(chunks: &[&[u8]], limits: Limits) -> Framing {
    let state = Arc::new(ConnState::default());
    let mut inspect = Inspect::new((), state.clone(), limits);
    inspect.targets = Some(Vec::new());
    let mut passed = Vec::new();
    for c in chunks {
        inspect.follow(c, &mut passed);
    }
    Framing {
        passed,
        heads: inspect.heads(),
        targets: inspect.targets.take().unwrap_or_default(),
        refused: state.refused(),
    }
}

/// The limits the proxy uses by default.
pub const LIMITS: Limits = Limits {
    max_head: crate::config::DEFAULT_MAX_HEADER_BYTES,
    max_uri: crate::config::DEFAULT_MAX_URI_BYTES,
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

/// The requests hyper's HTTP/1 server (as the proxy configures it, without
/// the reader in front) finds in `bytes`, in order, until it stops.
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
                let target = req
                    .uri()
                    .path_and_query()
                    .map_or_else(|| req.uri().to_string(), |p| p.to_string())
                    .into_bytes();
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
