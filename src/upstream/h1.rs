//! Gatehouse's own HTTP/1.1 client side (issue 13 point 2): one parse of
//! each response head with httparse, the framing rules of RFC 9112 §6
//! applied there, and the connection driven inside the request's own task
//! — no dispatcher task, no channels between it and the request, and a
//! connection that is pooled by the response body the moment the body
//! ends.
//!
//! A request is written as its head (the method, the origin-form target
//! and the fields as they are, plus the framing field this side decides)
//! and its body, streamed with backpressure, while the response head is
//! awaited on the same connection: an upstream that answers before the body
//! is all sent gets its answer through, and that connection is not reused.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::base::content_length::ContentLength;
use crate::base::fmt::push_decimal;
use crate::base::framed::{self, find_head_end, push_field, Framing, WriteError};
use crate::base::head_fields::HeadFields;
use crate::base::header_names::{connection_tokens, trim_ows};
use crate::upstream::body::{BoxError, UpstreamBody};

/// A response head larger than this is refused (hyper's client allowed
/// about 400 KiB; no application behind a proxy needs more than this).
const MAX_HEAD: usize = 64 * 1024;
/// Header fields in a response head.
const MAX_FIELDS: usize = 128;
/// What one read asks the kernel for.
const READ_SIZE: usize = 16 * 1024;

/// One connection to an upstream server, with what was read past the
/// current message. It lives in one box from connect to close and moves
/// between the pool, the exchange and the response body as a pointer (96
/// bytes copied at each of those steps otherwise, and every future and
/// body holding it that much larger; issue 13 point 3).
pub struct Conn {
    io: TcpStream,
    buf: BytesMut,
    /// Where it goes: the pool it returns to is keyed by it.
    authority: http::uri::Authority,
}

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error("the upstream connection failed")]
    Io(#[source] io::Error),
    /// The upstream closed the connection before any byte of an answer:
    /// on a pooled connection, the keep-alive race (safe to try again
    /// when the request was not consumed).
    #[error("the upstream closed the connection before answering")]
    Closed,
    #[error("the response is not valid HTTP/1.1: {0}")]
    Protocol(&'static str),
    /// The request body failed (the client's side: too large, too slow,
    /// gone); kept as the source so the pipeline can tell which.
    #[error("the request body failed")]
    Body(#[source] BoxError),
}

impl Conn {
    pub fn new(io: TcpStream, authority: http::uri::Authority) -> Box<Conn> {
        Box::new(Conn {
            io,
            buf: BytesMut::new(),
            authority,
        })
    }

    /// For a pooled connection about to be used: false when the upstream
    /// has closed it meanwhile (or sent something unasked). One
    /// non-blocking read, no wait.
    pub fn is_usable(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut probe = [0u8; 1];
        matches!(self.io.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Idle in the pool.
    pub fn idle(&mut self) {
        // The usual buffer is kept: pooled connections are few (at most the
        // peak of concurrent requests per server) and a kept buffer saves an
        // allocation per request (about 670 instructions of 36,500). One
        // grown for a large head goes back.
        if self.buf.is_empty() && self.buf.capacity() > 2 * READ_SIZE {
            self.buf = BytesMut::new();
        }
    }

    /// Sends `parts` (with `fields` added to its head) and `body` and
    /// reads the response head. The body is borrowed, so a failed attempt
    /// on a stale pooled connection leaves it to be sent again; `consumed`
    /// says whether any of it was taken.
    pub async fn exchange(
        mut self: Box<Self>,
        parts: &http::request::Parts,
        fields: &dyn HeadFields,
        body: &mut UpstreamBody,
        consumed: &mut bool,
    ) -> Result<(Response<()>, Box<Conn>, Reuse, BodyKind), ExchangeError> {
        let mut head = Vec::with_capacity(512);
        let framing = encode_head(parts, fields, body, &mut head);
        let head_request = parts.method == Method::HEAD;
        let mut complete = false;
        let answer = {
            let Conn { io, buf, .. } = &mut *self;
            let (mut rd, mut wr) = io.split();
            let write = async {
                if framing == Framing::None {
                    return wr.write_all(&head).await.map_err(ExchangeError::Io);
                }
                write_body(&mut wr, head, body, framing, consumed).await
            };
            let read = read_head(&mut rd, buf, head_request);
            tokio::pin!(write, read);
            let mut sent = false;
            loop {
                tokio::select! {
                    biased;
                    w = &mut write, if !sent => {
                        sent = true;
                        match w {
                            Ok(()) => complete = true,
                            Err(e @ ExchangeError::Body(_)) => return Err(e),
                            // The upstream may have answered and closed (a
                            // 413 to a large upload): its answer, if any,
                            // wins; otherwise the read reports the close.
                            Err(_) => {}
                        }
                    }
                    r = &mut read => break r?,
                }
            }
        };
        let (res, kind, mut reuse) = answer;
        if !complete {
            // Answered before the whole request went out: what is left of
            // it would be read as the next request.
            reuse = Reuse::No;
        }
        Ok((res, self, reuse, kind))
    }

    /// Hands the connection over for a tunnel after a 101: the socket and
    /// what was read past the head.
    pub fn into_parts(self) -> (TcpStream, Bytes) {
        (self.io, self.buf.freeze())
    }

    /// The server this connection goes to.
    pub fn authority(&self) -> &http::uri::Authority {
        &self.authority
    }
}

/// Whether the connection can carry another request once this response
/// has been read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reuse {
    Yes,
    No,
}

/// How the response body is framed (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    Empty,
    Length(u64),
    Chunked,
    /// Until the upstream closes the connection.
    Eof,
}

/// Writes the request head into `out` and decides the body's framing as
/// HTTP/1.1 requires: a `Content-Length` the request carries is kept; a
/// body of known size gets one; a body of unknown size is sent chunked,
/// except on GET, HEAD and CONNECT, which send none (as hyper did).
/// `fields` (the forwarding fields) follow the map's, replacing any of the
/// same name.
fn encode_head(
    parts: &http::request::Parts,
    fields: &dyn HeadFields,
    body: &UpstreamBody,
    out: &mut Vec<u8>,
) -> Framing {
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", http::uri::PathAndQuery::as_str);
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let h = &parts.headers;
    let declared = content_length(h);
    let framing = if body.is_end_stream() {
        Framing::None
    } else if h.contains_key(header::TRANSFER_ENCODING) {
        Framing::Chunked
    } else if let Some(Some(n)) = declared {
        Framing::Length(n)
    } else if let Some(n) = body.size_hint().exact() {
        Framing::Length(n)
    } else if matches!(parts.method, Method::GET | Method::HEAD | Method::CONNECT) {
        Framing::None
    } else {
        Framing::Chunked
    };
    let mut seen = 0;
    for (name, value) in h {
        // An invalid Content-Length of the caller's, or one a chunked body
        // must not carry, is not sent.
        if name == header::CONTENT_LENGTH
            && (framing == Framing::Chunked || matches!(declared, Some(None)))
        {
            continue;
        }
        if name == header::TRANSFER_ENCODING && framing != Framing::Chunked {
            continue;
        }
        if fields.gives_way(name, &mut seen) {
            continue;
        }
        push_field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    fields.write(h, seen, out);
    match framing {
        Framing::Length(n) if declared.is_none() => {
            out.extend_from_slice(b"content-length: ");
            push_decimal(out, n);
            out.extend_from_slice(b"\r\n");
        }
        Framing::Chunked if !h.contains_key(header::TRANSFER_ENCODING) => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        }
        _ => {}
    }
    out.extend_from_slice(b"\r\n");
    framing
}

/// `None`: no Content-Length; `Some(None)`: one that is not a single
/// valid length (RFC 9110 §8.6, the rule the client side applies too);
/// `Some(Some(n))`: the length.
fn content_length(h: &HeaderMap) -> Option<Option<u64>> {
    let mut cl = ContentLength::default();
    let mut any = false;
    for v in h.get_all(header::CONTENT_LENGTH) {
        any = true;
        if cl.add(v.as_bytes()).is_err() {
            return Some(None);
        }
    }
    any.then(|| cl.get())
}

/// The head (already in `pending`) and the body, framed.
async fn write_body<W: AsyncWrite + Unpin>(
    w: &mut W,
    pending: Vec<u8>,
    body: &mut UpstreamBody,
    framing: Framing,
    consumed: &mut bool,
) -> Result<(), ExchangeError> {
    framed::write_body(w, pending, Pin::new(body), framing, consumed)
        .await
        .map_err(|e| match e {
            WriteError::Io(e) => ExchangeError::Io(e),
            WriteError::Body(e) => ExchangeError::Body(e),
            WriteError::Length => {
                ExchangeError::Body("the request body does not match its Content-Length".into())
            }
        })
}

/// Reads until a final response head is complete, skipping 1xx heads
/// other than 101 (RFC 9110 §15.2), and decides the body's framing.
async fn read_head<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    head_request: bool,
) -> Result<(Response<()>, BodyKind, Reuse), ExchangeError> {
    let mut any = false;
    // How much of `buf` is known to hold no head end: a head trickling in
    // is not searched from its start on every read.
    let mut searched: usize = 0;
    loop {
        if !buf.is_empty() {
            any = true;
            let from = searched.saturating_sub(3);
            if let Some(end) = find_head_end(&buf[from..]) {
                searched = 0;
                let (res, noted) = parse_head(buf.split_to(from + end).freeze())?;
                let status = res.status();
                if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
                    continue;
                }
                let (kind, reuse) = framing_of(&res, &noted, head_request)?;
                return Ok((res, kind, reuse));
            }
            searched = buf.len();
            if buf.len() > MAX_HEAD {
                return Err(ExchangeError::Protocol("response head too large"));
            }
        }
        buf.reserve(READ_SIZE);
        let n = tokio::io::AsyncReadExt::read_buf(rd, buf)
            .await
            .map_err(|e| {
                if any {
                    ExchangeError::Io(e)
                } else {
                    ExchangeError::Closed
                }
            })?;
        if n == 0 {
            return Err(if any || !buf.is_empty() {
                ExchangeError::Protocol("the connection closed inside the response head")
            } else {
                ExchangeError::Closed
            });
        }
    }
}

/// What the one pass over a response head's fields noted for its framing,
/// so that it is not looked up in the map again.
#[derive(Default)]
struct Noted {
    length: ContentLength,
    has_length: bool,
    bad_length: bool,
    has_te: bool,
    /// The last transfer coding of the last `Transfer-Encoding` field is
    /// `chunked`.
    chunked_last: bool,
    close: bool,
    keep_alive: bool,
}

/// Parses a whole response head (`head` ends with its blank line); the
/// fields share `head`'s bytes rather than copying each value.
fn parse_head(head: Bytes) -> Result<(Response<()>, Noted), ExchangeError> {
    // Left uninitialised for httparse to fill (4 KiB zeroed per answer
    // otherwise; issue 13).
    let mut fields =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FIELDS];
    let mut parsed = httparse::Response::new(&mut []);
    match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut parsed,
        &head,
        &mut fields,
    ) {
        Ok(httparse::Status::Complete(_)) => {}
        Err(httparse::Error::TooManyHeaders) => {
            return Err(ExchangeError::Protocol("too many header fields"))
        }
        // (Partial too: the head's end was found, so httparse reading it
        // as unfinished means it is not a valid head.)
        _ => return Err(ExchangeError::Protocol("invalid response head")),
    };
    let code = parsed.code.unwrap_or(0);
    let status =
        StatusCode::from_u16(code).map_err(|_| ExchangeError::Protocol("invalid status code"))?;
    let version = match parsed.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let mut noted = Noted::default();
    // Sized once for these fields and those the proxy adds to them
    // (security headers, request id; issue 13 point 3).
    let mut headers = crate::base::recycle::header_map(parsed.headers.len() + 8);
    for f in parsed.headers.iter() {
        let name = crate::base::header_names::field_name(f.name.as_bytes())
            .map_err(|_| ExchangeError::Protocol("invalid field name"))?;
        if name == header::CONTENT_LENGTH {
            noted.has_length = true;
            noted.bad_length |= noted.length.add(f.value).is_err();
        } else if name == header::TRANSFER_ENCODING {
            noted.has_te = true;
            noted.chunked_last = f
                .value
                .rsplit(|b| *b == b',')
                .next()
                .is_some_and(|last| trim_ows(last).eq_ignore_ascii_case(b"chunked"));
        } else if name == header::CONNECTION {
            let t = connection_tokens(f.value);
            noted.close |= t.close;
            noted.keep_alive |= t.keep_alive;
            if t.only_persistence {
                // This connection's own field, noted above; the proxy would
                // only take it out again (RFC 9110 §7.6.1). Nginx and most
                // servers send `Connection: keep-alive` on every answer.
                continue;
            }
        }
        let value = HeaderValue::from_maybe_shared(head.slice_ref(f.value))
            .map_err(|_| ExchangeError::Protocol("invalid field value"))?;
        headers.append(name, value);
    }
    let mut res = Response::new(());
    *res.status_mut() = status;
    *res.version_mut() = version;
    *res.headers_mut() = headers;
    Ok((res, noted))
}

/// RFC 9112 §6.3 for a response, and whether the connection stays open.
fn framing_of(
    res: &Response<()>,
    noted: &Noted,
    head_request: bool,
) -> Result<(BodyKind, Reuse), ExchangeError> {
    let mut reuse = if noted.close || (res.version() == Version::HTTP_10 && !noted.keep_alive) {
        Reuse::No
    } else {
        Reuse::Yes
    };
    let status = res.status();
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Ok((BodyKind::Empty, Reuse::No));
    }
    if head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok((BodyKind::Empty, reuse));
    }
    if noted.has_te && noted.has_length {
        // RFC 9112 §6.1: a confused or hostile upstream, held to the rule
        // clients are held to.
        return Err(ExchangeError::Protocol(
            "the response has both Content-Length and Transfer-Encoding",
        ));
    }
    if noted.has_te {
        if noted.chunked_last {
            return Ok((BodyKind::Chunked, reuse));
        }
        return Ok((BodyKind::Eof, Reuse::No));
    }
    if !noted.has_length {
        reuse = Reuse::No;
        return Ok((BodyKind::Eof, reuse));
    }
    match noted.length.get().filter(|_| !noted.bad_length) {
        Some(0) => Ok((BodyKind::Empty, reuse)),
        Some(n) => Ok((BodyKind::Length(n), reuse)),
        None => Err(ExchangeError::Protocol("invalid Content-Length")),
    }
}

/// Where a finished connection goes: back to its pool, or closed.
pub trait Recycle: Send + Sync {
    fn recycle(&self, conn: Box<Conn>);
}

/// The body of an upstream response, read from the connection as the
/// client takes it; the connection goes back to the pool at its end.
pub struct ResponseBody {
    conn: Option<Box<Conn>>,
    kind: BodyKind,
    chunk: Chunk,
    reuse: Reuse,
    pool: Option<std::sync::Arc<dyn Recycle>>,
}

impl std::fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseBody")
            .field("kind", &self.kind)
            .field("chunk", &self.chunk)
            .field("reuse", &self.reuse)
            .finish_non_exhaustive()
    }
}

impl ResponseBody {
    pub fn new(
        conn: Box<Conn>,
        kind: BodyKind,
        reuse: Reuse,
        pool: Option<std::sync::Arc<dyn Recycle>>,
    ) -> ResponseBody {
        let mut body = ResponseBody {
            conn: Some(conn),
            kind,
            chunk: Chunk::Size,
            reuse,
            pool,
        };
        if kind == BodyKind::Empty {
            body.finish();
        }
        body
    }

    /// A body with nothing in it and no connection (a 101's).
    pub fn new_empty() -> ResponseBody {
        ResponseBody {
            conn: None,
            kind: BodyKind::Empty,
            chunk: Chunk::Done,
            reuse: Reuse::No,
            pool: None,
        }
    }

    /// The body has ended: the connection goes back to the pool if it can
    /// carry another request (nothing unread, the upstream keeps it).
    fn finish(&mut self) {
        self.kind = BodyKind::Empty;
        if let Some(mut conn) = self.conn.take() {
            if self.reuse == Reuse::Yes && conn.buf.is_empty() {
                if let Some(pool) = &self.pool {
                    conn.idle();
                    pool.recycle(conn);
                }
            }
        }
    }

    /// Reads more from the connection into its buffer; `Ok(0)` at its end.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        self.poll_fill_up_to(cx, READ_SIZE)
    }

    /// [`ResponseBody::poll_fill`] asking for up to `want` bytes: a body of
    /// known length is read in larger pieces (up to 64 KiB), so a large
    /// answer takes fewer reads here and fewer writes to the client.
    fn poll_fill_up_to(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        let Some(conn) = self.conn.as_mut() else {
            return Poll::Ready(Ok(0));
        };
        conn.buf.reserve(want);
        tokio_util::io::poll_read_buf(Pin::new(&mut conn.io), cx, &mut conn.buf)
    }

    fn buf(&mut self) -> &mut BytesMut {
        &mut self
            .conn
            .as_mut()
            .expect("invariant: a body being read has its connection")
            .buf
    }

    fn poll_chunked(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            let conn = self
                .conn
                .as_mut()
                .expect("invariant: a body being read has its connection");
            match chunked_step(&mut self.chunk, &mut conn.buf) {
                Step::Data(data) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Step::Trailers(map) => {
                    self.finish();
                    return Poll::Ready(Some(Ok(Frame::trailers(map))));
                }
                Step::End => {
                    self.finish();
                    return Poll::Ready(None);
                }
                Step::Invalid(why) => return Poll::Ready(Some(Err(why.into()))),
                Step::More => {
                    if ready!(self.poll_fill(cx))? == 0 {
                        return Poll::Ready(Some(Err(truncated())));
                    }
                }
            }
        }
    }
}

/// One step of the chunked decoder (RFC 9112 §7.1) over what has been
/// read: pure, so the property tests and `cargo fuzz` drive it on plain
/// bytes (`fuzzing::chunked`).
#[derive(Debug)]
pub enum Step {
    Data(Bytes),
    Trailers(HeaderMap),
    /// The body ended (after the last chunk and its empty trailer section).
    End,
    /// More bytes are needed.
    More,
    Invalid(&'static str),
}

/// Where a chunked body's decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk's data, this many bytes left.
    Data(u64),
    /// After a chunk's data: its CRLF.
    DataEnd,
    /// After the last chunk: trailer fields, then the empty line.
    Trailers,
    Done,
}

/// Advances `state` over `buf` (consuming what it decodes) until it has
/// something to report.
pub fn chunked_step(state: &mut Chunk, buf: &mut BytesMut) -> Step {
    loop {
        match *state {
            Chunk::Size => {
                // RFC 9112 §7.1: the line ends in CRLF; a bare LF is read
                // differently by different parsers (a smuggling vector).
                if let Some(lf) = buf.iter().position(|b| *b == b'\n') {
                    if lf == 0 || buf[lf - 1] != b'\r' {
                        return Step::Invalid("a chunk-size line ends in a bare LF");
                    }
                }
                let Some(end) = find_crlf(buf) else {
                    // A size line is short; extensions are capped with it.
                    return if buf.len() > 4096 {
                        Step::Invalid("chunk-size line too long")
                    } else {
                        Step::More
                    };
                };
                let line = buf.split_to(end + 2);
                match parse_chunk_size(&line[..end]) {
                    Ok(0) => *state = Chunk::Trailers,
                    Ok(n) => *state = Chunk::Data(n),
                    Err(why) => return Step::Invalid(why),
                }
            }
            Chunk::Data(left) => {
                if buf.is_empty() {
                    return Step::More;
                }
                let n = (buf.len() as u64).min(left) as usize;
                let data = buf.split_to(n).freeze();
                *state = if left == n as u64 {
                    Chunk::DataEnd
                } else {
                    Chunk::Data(left - n as u64)
                };
                return Step::Data(data);
            }
            Chunk::DataEnd => {
                if buf.len() < 2 {
                    return Step::More;
                }
                if &buf[..2] != b"\r\n" {
                    return Step::Invalid("a chunk does not end with CRLF");
                }
                buf.advance(2);
                *state = Chunk::Size;
            }
            Chunk::Trailers => {
                if buf.starts_with(b"\r\n") {
                    buf.advance(2);
                    *state = Chunk::Done;
                    return Step::End;
                }
                if buf.len() < 2 {
                    return Step::More;
                }
                let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
                match httparse::parse_headers(buf, &mut fields) {
                    Ok(httparse::Status::Complete((len, parsed))) => {
                        let mut map = HeaderMap::with_capacity(parsed.len());
                        for f in parsed {
                            let (Ok(name), Ok(value)) = (
                                crate::base::header_names::field_name(f.name.as_bytes()),
                                HeaderValue::from_bytes(f.value),
                            ) else {
                                return Step::Invalid("invalid trailer field");
                            };
                            map.append(name, value);
                        }
                        buf.advance(len);
                        *state = Chunk::Done;
                        return Step::Trailers(map);
                    }
                    Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
                        return Step::Invalid("trailer section too large")
                    }
                    Ok(httparse::Status::Partial) => return Step::More,
                    Err(_) => return Step::Invalid("invalid trailer section"),
                }
            }
            Chunk::Done => return Step::End,
        }
    }
}

fn truncated() -> BoxError {
    Box::new(io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the upstream closed the connection inside the response body",
    ))
}

fn find_crlf(b: &[u8]) -> Option<usize> {
    b.windows(2).position(|w| w == b"\r\n")
}

/// A chunk-size line: hex digits, then optional extensions after `;`
/// (RFC 9112 §7.1.1), which are ignored.
pub fn parse_chunk_size(line: &[u8]) -> Result<u64, &'static str> {
    let digits = line.split(|b| *b == b';').next().unwrap_or(&[]);
    let digits = trim_ows(digits);
    if digits.is_empty() || digits.len() > 15 || !digits.iter().all(u8::is_ascii_hexdigit) {
        return Err("invalid chunk size");
    }
    let s = std::str::from_utf8(digits).map_err(|_| "invalid chunk size")?;
    u64::from_str_radix(s, 16).map_err(|_| "invalid chunk size")
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match this.kind {
            BodyKind::Empty => Poll::Ready(None),
            BodyKind::Chunked => this.poll_chunked(cx),
            BodyKind::Length(left) => {
                let want = (left as usize).clamp(READ_SIZE, 4 * READ_SIZE);
                if this.buf().is_empty() && ready!(this.poll_fill_up_to(cx, want))? == 0 {
                    return Poll::Ready(Some(Err(truncated())));
                }
                let buf = this.buf();
                let n = (buf.len() as u64).min(left) as usize;
                let data = buf.split_to(n).freeze();
                if left == n as u64 {
                    this.finish();
                } else {
                    this.kind = BodyKind::Length(left - n as u64);
                }
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            BodyKind::Eof => {
                if this.buf().is_empty() && ready!(this.poll_fill(cx))? == 0 {
                    this.finish();
                    return Poll::Ready(None);
                }
                let data = this.buf().split().freeze();
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.kind == BodyKind::Empty
    }

    fn size_hint(&self) -> SizeHint {
        match self.kind {
            BodyKind::Empty => SizeHint::with_exact(0),
            BodyKind::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_framing_follows_rfc_9112() {
        let kind = |text: &str, head_request: bool| {
            let (res, noted) = parse_head(Bytes::copy_from_slice(text.as_bytes())).unwrap();
            framing_of(&res, &noted, head_request)
        };
        assert_eq!(
            kind("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", false).unwrap(),
            (BodyKind::Length(5), Reuse::Yes)
        );
        // The same value twice is one length; a list of two is not.
        assert_eq!(
            kind(
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
                false
            )
            .unwrap(),
            (BodyKind::Length(5), Reuse::Yes)
        );
        assert!(kind("HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n", false).is_err());
        assert_eq!(
            kind(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                false
            )
            .unwrap(),
            (BodyKind::Chunked, Reuse::Yes)
        );
        // Not chunked last: read until the connection closes.
        assert_eq!(
            kind("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", false).unwrap(),
            (BodyKind::Eof, Reuse::No)
        );
        assert!(kind(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            false
        )
        .is_err());
        assert_eq!(
            kind("HTTP/1.1 200 OK\r\n\r\n", false).unwrap(),
            (BodyKind::Eof, Reuse::No)
        );
        assert_eq!(
            kind("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true).unwrap(),
            (BodyKind::Empty, Reuse::Yes),
            "no body after HEAD"
        );
        for status in ["204 No Content", "304 Not Modified"] {
            assert_eq!(
                kind(
                    &format!("HTTP/1.1 {status}\r\nContent-Length: 5\r\n\r\n"),
                    false
                )
                .unwrap()
                .0,
                BodyKind::Empty
            );
        }
        assert_eq!(
            kind(
                "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: close\r\n\r\n",
                false
            )
            .unwrap(),
            (BodyKind::Length(1), Reuse::No)
        );
        assert_eq!(
            kind("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", false).unwrap(),
            (BodyKind::Length(1), Reuse::No)
        );
        assert_eq!(
            kind(
                "HTTP/1.0 200 OK\r\nContent-Length: 1\r\nConnection: keep-alive\r\n\r\n",
                false
            )
            .unwrap(),
            (BodyKind::Length(1), Reuse::Yes)
        );
        assert_eq!(
            kind(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
                false
            )
            .unwrap(),
            (BodyKind::Empty, Reuse::No)
        );
        assert!(
            find_head_end(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n").is_none(),
            "partial"
        );
        assert_eq!(
            find_head_end(b"HTTP/1.1 200 OK\nContent-Length: 5\n\nhello"),
            Some(35),
            "bare LF line ends"
        );
    }
}
