//! Gatehouse's own HTTP/1.1 server side (issue 13 point 2): the client
//! connection's loop, its request bodies and its response writer, on the
//! heads `framing` parses once with httparse.
//!
//! One task per connection runs everything: it reads a head, runs the
//! request pipeline (whose upstream exchange runs in the same task,
//! `upstream::h1`), writes the response head and streams its body, then
//! reads the next head (pipelined requests wait in the read buffer, and
//! responses go out in their order). There is no dispatcher, no channel
//! and no second buffer between the socket and the pipeline.
//!
//! The connection's stream and read buffer (a [`Wire`]) move: a request
//! with a body lends them to its body, which reads (and answers `Expect:
//! 100-continue` on its first read, RFC 9110 §10.1.1) and gives them back
//! when it ends or is dropped. While nobody else reads, the loop watches
//! the connection so a client that leaves cancels its request (and the
//! upstream request with it).
//!
//! An idle connection holds no buffer: the read buffer is released when
//! the connection waits for its next request, which is first read into
//! the stack (issue 13: an idle keep-alive connection costs what its task
//! and socket cost).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderValue};
use http::{Method, Request, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{oneshot, watch};

use super::framing::{self, BodyLen, Limits, Refusal, Scan};
use super::{Conn, Handler};
use crate::base::framed::{push_field, write_body, Framing, WriteError};
use crate::base::head_fields::WithFields;
use crate::base::header_names::list_has;
use crate::base::recycle::Reused;
use crate::upstream::body::{BoxError, RequestBody};
use crate::upstream::h1::{chunked_step, Chunk, Step};

/// A client connection's byte stream, whatever carries it (TCP with or
/// without a PROXY header, TLS).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// A client connection's stream as the HTTP/1 loop holds it. `Sync` as
/// well, so a request body that holds it may be referred to from the
/// pipeline's future (which must be `Send`) while it waits.
pub trait Stream: Io + Sync {}
impl<T: Io + Sync> Stream for T {}

/// What one read asks for once a message is under way.
const READ_SIZE: usize = 8 * 1024;
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
/// How long the loop waits for a request body that is still held
/// somewhere when the response is ready (it is given back when dropped).
const BODY_RETURN: Duration = Duration::from_secs(5);

/// The connection's stream and what was read past the current message.
struct Wire {
    io: Box<dyn Stream>,
    buf: BytesMut,
    /// The client closed its side.
    eof: bool,
    /// Where the last request body stopped when it was given back.
    left: Left,
}

/// What a request body left unread when it was given back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Left {
    Nothing,
    /// This many bytes of a `Content-Length` body.
    Length(u64),
    /// The body failed, or a chunked body was left part way: where the
    /// next request would start is unknown.
    Unknown,
}

impl Wire {
    /// Reads more into the buffer; `Ok(0)` at the end of the stream. With
    /// no buffer (an idle connection), the read goes to the stack first and
    /// a buffer is taken only when bytes came.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() == 0 {
            // Uninitialised: zeroing 8 KiB per read would cost more than
            // the rest of the request's parsing.
            let mut stack = [std::mem::MaybeUninit::<u8>::uninit(); READ_SIZE];
            let mut rb = ReadBuf::uninit(&mut stack);
            ready!(Pin::new(&mut self.io).poll_read(cx, &mut rb))?;
            let n = rb.filled().len();
            if n == 0 {
                self.eof = true;
            } else {
                self.buf = crate::base::recycle::buffer();
                self.buf.extend_from_slice(rb.filled());
            }
            return Poll::Ready(Ok(n));
        }
        if self.buf.capacity() - self.buf.len() < READ_SIZE / 4 {
            self.buf.reserve(READ_SIZE);
        }
        let n = ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut self.io),
            cx,
            &mut self.buf
        ))?;
        if n == 0 {
            self.eof = true;
        }
        Poll::Ready(Ok(n))
    }

    /// Lets the buffer go while the connection waits for its next request.
    fn release(&mut self) {
        if self.buf.is_empty() && self.buf.capacity() != 0 {
            crate::base::recycle::give_back_buffer(std::mem::take(&mut self.buf));
        }
    }
}

/// Where a lent [`Wire`] comes back to: one per connection.
#[derive(Default)]
struct Home {
    // Taken twice per request with a body, always from the connection's
    // own task: never contended.
    wire: Mutex<Option<Box<Wire>>>,
    back: tokio::sync::Notify,
}

impl Home {
    fn put(&self, wire: Box<Wire>) {
        *self.wire.lock().unwrap_or_else(|e| e.into_inner()) = Some(wire);
        self.back.notify_one();
    }

    fn take(&self) -> Option<Box<Wire>> {
        self.wire.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// The wire, once the body that holds it has given it back.
    async fn wait(&self) -> Option<Box<Wire>> {
        let wait = async {
            loop {
                if let Some(w) = self.take() {
                    return w;
                }
                self.back.notified().await;
            }
        };
        tokio::time::timeout(BODY_RETURN, wait).await.ok()
    }
}

/// A request body read from the client's connection as the pipeline takes
/// it, with the connection lent to it meanwhile.
struct H1Body {
    wire: Option<Box<Wire>>,
    state: Reading,
    home: Arc<Home>,
    /// `100 Continue` bytes written so far, while the client waits for it.
    expect: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reading {
    Length(u64),
    Chunked(Chunk),
    Done,
}

impl H1Body {
    fn new(wire: Box<Wire>, len: BodyLen, home: Arc<Home>, expect: bool) -> H1Body {
        let state = match len {
            BodyLen::Fixed(n) => Reading::Length(n),
            BodyLen::Chunked => Reading::Chunked(Chunk::Size),
            BodyLen::None => Reading::Done,
        };
        H1Body {
            wire: Some(wire),
            state,
            home,
            expect: expect.then_some(0),
        }
    }

    /// Gives the connection back, noting what is left unread.
    fn give_back(&mut self) {
        if let Some(mut wire) = self.wire.take() {
            wire.left = match self.state {
                Reading::Done => Left::Nothing,
                Reading::Length(n) => Left::Length(n),
                Reading::Chunked(_) => Left::Unknown,
            };
            self.home.put(wire);
        }
    }

    fn fail(&mut self, e: BoxError) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.state = Reading::Chunked(Chunk::Size);
        self.give_back();
        Poll::Ready(Some(Err(e)))
    }

    fn end(&mut self) {
        self.state = Reading::Done;
        self.give_back();
    }
}

impl Drop for H1Body {
    fn drop(&mut self) {
        self.give_back();
    }
}

fn cut_short() -> BoxError {
    Box::new(io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the client closed the connection inside the request body",
    ))
}

impl Body for H1Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let Some(wire) = this.wire.as_mut() else {
            return Poll::Ready(None);
        };
        if let Some(mut at) = this.expect {
            // The client waits for this before sending the body; it goes out
            // only once the body is wanted (after the pipeline's checks).
            while at < CONTINUE.len() {
                match ready!(Pin::new(&mut wire.io).poll_write(cx, &CONTINUE[at..])) {
                    Ok(0) => return this.fail(Box::new(io::Error::from(io::ErrorKind::WriteZero))),
                    Ok(n) => {
                        at += n;
                        this.expect = Some(at);
                    }
                    Err(e) => return this.fail(Box::new(e)),
                }
            }
            if let Err(e) = ready!(Pin::new(&mut wire.io).poll_flush(cx)) {
                return this.fail(Box::new(e));
            }
            this.expect = None;
        }
        loop {
            let wire = this
                .wire
                .as_mut()
                .expect("invariant: a body being read holds the connection");
            match &mut this.state {
                Reading::Done => return Poll::Ready(None),
                Reading::Length(left) => {
                    if wire.buf.is_empty() {
                        match ready!(wire.poll_fill(cx)) {
                            Ok(0) => return this.fail(cut_short()),
                            Ok(_) => {}
                            Err(e) => return this.fail(Box::new(e)),
                        }
                    }
                    let n = (wire.buf.len() as u64).min(*left) as usize;
                    let data = wire.buf.split_to(n).freeze();
                    *left -= n as u64;
                    if *left == 0 {
                        this.end();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Reading::Chunked(chunk) => match chunked_step(chunk, &mut wire.buf) {
                    Step::Data(data) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Step::Trailers(map) => {
                        this.end();
                        return Poll::Ready(Some(Ok(Frame::trailers(map))));
                    }
                    Step::End => {
                        this.end();
                        return Poll::Ready(None);
                    }
                    Step::Invalid(why) => return this.fail(why.into()),
                    Step::More => match ready!(wire.poll_fill(cx)) {
                        Ok(0) => return this.fail(cut_short()),
                        Ok(_) => {}
                        Err(e) => return this.fail(Box::new(e)),
                    },
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.state == Reading::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            Reading::Done => SizeHint::with_exact(0),
            Reading::Length(n) => SizeHint::with_exact(n),
            Reading::Chunked(_) => SizeHint::default(),
        }
    }
}

/// The client's side of a request that asks to switch protocols: resolves
/// to the connection once the 101 has been written (HTTP/1.1), or to the
/// stream of an RFC 8441 extended CONNECT (HTTP/2, through hyper).
pub(crate) enum ClientUpgrade {
    Own(Option<UpgradeRx>),
    Hyper(hyper::upgrade::OnUpgrade),
}

/// Carried by an HTTP/1.1 request that asks to upgrade (extensions must
/// be `Clone`; it is taken once).
#[derive(Clone)]
struct PendingUpgrade(Arc<Mutex<Option<UpgradeRx>>>);

/// Where the connection arrives once the 101 has been written.
type UpgradeRx = oneshot::Receiver<Box<dyn Io>>;

/// The upgrade of `req`'s connection, to await once the response that
/// switches protocols has been returned.
pub(crate) fn on_upgrade<B>(req: &mut Request<B>) -> ClientUpgrade {
    match req.extensions_mut().remove::<PendingUpgrade>() {
        Some(p) => ClientUpgrade::Own(p.0.lock().unwrap_or_else(|e| e.into_inner()).take()),
        None => ClientUpgrade::Hyper(hyper::upgrade::on(req)),
    }
}

impl ClientUpgrade {
    pub(crate) async fn wait(self) -> io::Result<Box<dyn Io>> {
        match self {
            ClientUpgrade::Own(Some(rx)) => rx
                .await
                .map_err(|_| io::Error::other("the connection was not upgraded")),
            ClientUpgrade::Own(None) => Err(io::Error::other("the upgrade was already taken")),
            ClientUpgrade::Hyper(on) => match on.await {
                Ok(up) => Ok(Box::new(hyper_util::rt::TokioIo::new(up))),
                Err(e) => Err(io::Error::other(e)),
            },
        }
    }
}

/// Serves one HTTP/1 connection until it closes, the client leaves, or
/// shutdown is requested: a request in flight is answered with
/// `Connection: close`, and an idle connection is closed by the server
/// (`ConnCounts::close_idle`) or here, whichever sees it first.
pub(crate) async fn serve<H: Handler>(
    io: Box<dyn Stream>,
    conn: Arc<Conn>,
    handler: Arc<H>,
    limits: Limits,
    shutdown: &watch::Receiver<bool>,
) -> io::Result<()> {
    let state = conn.state.clone();
    // Made on the first request with a body (most connections never
    // lend the wire, and an idle one should not carry it).
    let mut home: Option<Arc<Home>> = None;
    let mut wire = Some(Box::new(Wire {
        io,
        buf: BytesMut::new(),
        eof: false,
        left: Left::Nothing,
    }));
    loop {
        let w = wire
            .as_mut()
            .expect("invariant: the loop holds the connection between requests");
        let Some(head) = next_head(w, &state, &limits, shutdown).await? else {
            return Ok(());
        };
        let head = head.map_err(|why| state.refuse_next(why)).ok();
        // Boxed: the pipeline's future and the response's state are large
        // and live only while a request is in flight; an idle connection
        // holds only the loop. The block is the worker's, reused request
        // after request.
        let next = Reused::with(|| {
            exchange(
                head, &mut wire, &mut home, &handler, &conn, &limits, shutdown,
            )
        })
        .await?;
        if !next {
            return Ok(());
        }
    }
}

/// One request on the connection: the pipeline's answer, then the response
/// written. `Ok(true)` when the connection carries another request.
async fn exchange<H: Handler>(
    head: Option<framing::Head>,
    wire: &mut Option<Box<Wire>>,
    home: &mut Option<Arc<Home>>,
    handler: &Arc<H>,
    conn: &Arc<Conn>,
    limits: &Limits,
    shutdown: &watch::Receiver<bool>,
) -> io::Result<bool> {
    let (mut req, mut keep, body, upgrade, expect) = match head {
        Some(h) => (
            h.req.map(|()| RequestBody::Empty),
            h.keep_alive,
            h.body,
            h.upgrade,
            h.expect_continue,
        ),
        // Refused (recorded above): the stand-in is answered and the
        // connection closes.
        None => (stand_in(), false, BodyLen::None, false, false),
    };
    let v10 = req.version() == Version::HTTP_10;
    let head_request = req.method() == Method::HEAD;
    if body != BodyLen::None {
        let w = wire.take().expect("invariant: held between requests");
        let home = home.get_or_insert_with(Arc::default).clone();
        *req.body_mut() = RequestBody::Stream(Box::pin(H1Body::new(w, body, home, expect)));
    }
    let switch = upgrade.then(|| {
        let (tx, rx) = oneshot::channel();
        req.extensions_mut()
            .insert(PendingUpgrade(Arc::new(Mutex::new(Some(rx)))));
        tx
    });
    // The pipeline's future (2 KB) lives in this block only, so that the
    // state that writes the response does not keep room for it too.
    let res = {
        let answer = H::handle(handler.clone(), req, conn.clone());
        tokio::pin!(answer);
        std::future::poll_fn(|cx| {
            if let Poll::Ready(Ok(res)) = answer.as_mut().poll(cx) {
                return Poll::Ready(Some(res));
            }
            // Nobody else reads the connection now: a client that leaves
            // cancels its request (the pipeline's future is dropped, and the
            // upstream request with it). What arrives meanwhile is the next
            // pipelined request, kept up to the head limit.
            if let Some(w) = wire.as_mut() {
                while !w.eof && w.buf.len() < limits.max_head {
                    match w.poll_fill(cx) {
                        Poll::Pending => break,
                        Poll::Ready(Ok(_)) => {}
                        Poll::Ready(Err(_)) => return Poll::Ready(None),
                    }
                }
                if w.eof && w.buf.is_empty() {
                    return Poll::Ready(None);
                }
            }
            Poll::Pending
        })
        .await
    };
    let Some(res) = res else {
        tracing::debug!(peer = %conn.peer, "client left before its answer; request cancelled");
        return Ok(false);
    };
    let mut w = match wire.take() {
        Some(w) => w,
        None => match home.as_ref() {
            Some(home) => match home.wait().await {
                Some(w) => w,
                None => return Ok(false),
            },
            None => return Ok(false),
        },
    };
    match std::mem::replace(&mut w.left, Left::Nothing) {
        Left::Nothing => {}
        // What is left of a body that was not read is dropped when it is
        // already here; otherwise the connection closes after the answer
        // rather than wait for it.
        Left::Length(n) if n <= w.buf.len() as u64 => w.buf.advance(n as usize),
        Left::Length(_) | Left::Unknown => keep = false,
    }
    if conn.state.refused().is_some() || *shutdown.borrow() || w.eof {
        keep = false;
    }
    let switching = res.status() == StatusCode::SWITCHING_PROTOCOLS;
    let (parts, mut body) = res.into_parts();
    // Room for a head with the security headers: no growing.
    let mut out = Vec::with_capacity(1024);
    let framing = encode_head(&parts, &body, v10, head_request, &mut keep, &mut out);
    if switching {
        if let (Some(tx), true) = (switch, parts.headers.contains_key(header::UPGRADE)) {
            w.io.write_all(&out).await?;
            w.io.flush().await?;
            drop(body);
            // Bytes the client sent after its request belong to the new
            // protocol.
            let Wire { io, buf, .. } = *w;
            let io: Box<dyn Io> = Box::new(super::proxy_protocol::Prefixed::new(buf.to_vec(), io));
            let _ = tx.send(io);
            return Ok(false);
        }
        // A 101 to a request that did not ask to upgrade is never sent by
        // the pipeline (issue 10 point 2); nothing is switched.
        keep = false;
    }
    let written = write_body(&mut w.io, out, Pin::new(&mut body), framing, &mut false).await;
    let clean = match written {
        Ok(()) => framing != Framing::Close,
        Err(WriteError::Io(e)) => return Err(e),
        // The upstream failed part way, or sent other than it declared:
        // the client must see the answer cut short, never a clean end
        // (HTTP/1 has no other way to say it).
        Err(WriteError::Body(e)) => {
            tracing::debug!(peer = %conn.peer, "response body failed: {e}");
            false
        }
        Err(WriteError::Length) => false,
    };
    // The response is done: the request stops counting as in flight (its
    // log line is written) before the next head is awaited.
    drop(body);
    crate::base::recycle::give_back_map(parts.headers);
    if !(keep && clean) {
        let _ = tokio::time::timeout(Duration::from_secs(1), w.io.shutdown()).await;
        return Ok(false);
    }
    *wire = Some(w);
    Ok(true)
}

/// The request a refused head is answered as: the pipeline finds the
/// refusal recorded for its position and answers with its status page.
fn stand_in() -> Request<RequestBody> {
    let mut req = Request::new(RequestBody::Empty);
    req.headers_mut()
        .insert(header::HOST, HeaderValue::from_static("refused.invalid"));
    req
}

/// Waits for the next request head: `None` when the client closed (an
/// incomplete head goes with it) or shutdown has been asked and nothing of
/// a head has arrived.
async fn next_head(
    w: &mut Wire,
    state: &framing::ConnState,
    limits: &Limits,
    shutdown: &watch::Receiver<bool>,
) -> io::Result<Option<Result<framing::Head, Refusal>>> {
    let mut scan = Scan::default();
    loop {
        if !w.buf.is_empty() {
            match framing::take_head(&mut w.buf, &mut scan, limits) {
                Ok(Some(head)) => {
                    state.head_done();
                    return Ok(Some(Ok(head)));
                }
                Ok(None) => {
                    if !w.buf.is_empty() && !state.in_head() {
                        state.head_begins();
                    }
                }
                Err(why) => {
                    state.head_done();
                    return Ok(Some(Err(why)));
                }
            }
        }
        if w.eof {
            return Ok(None);
        }
        if w.buf.is_empty() {
            w.release();
            // Checked once the connection counts as idle: a shutdown asked
            // after this finds it idle and closes it from outside.
            if *shutdown.borrow() {
                return Ok(None);
            }
        }
        std::future::poll_fn(|cx| w.poll_fill(cx)).await?;
    }
}

/// Writes the status line and fields into `out` and decides the body's
/// framing (RFC 9112 §6): a known length is declared, an unknown one is
/// chunked for HTTP/1.1 and delimited by closing for HTTP/1.0. Clears
/// `keep` when the connection cannot carry another request after this.
fn encode_head<B: Body + WithFields>(
    parts: &http::response::Parts,
    body: &B,
    v10: bool,
    head_request: bool,
    keep: &mut bool,
    out: &mut Vec<u8>,
) -> Framing {
    let status = parts.status;
    out.extend_from_slice(if v10 { b"HTTP/1.0 " } else { b"HTTP/1.1 " });
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let bodiless = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let exact = body.size_hint().exact();
    let framing = if bodiless || head_request {
        Framing::None
    } else if let Some(n) = exact {
        Framing::Length(n)
    } else if v10 {
        *keep = false;
        Framing::Close
    } else {
        Framing::Chunked
    };
    let switching = status == StatusCode::SWITCHING_PROTOCOLS;
    // RFC 9110 §8.6, RFC 9112 §6.1: no length or coding in a 1xx or 204.
    let never_framed = status.is_informational() || status == StatusCode::NO_CONTENT;
    let h = &parts.headers;
    let fields = body.head_fields();
    let mut seen = 0;
    let mut dated = false;
    let mut length_given = false;
    for (name, value) in h {
        // The framing written is this side's; what the response carried
        // (an upstream's length, say) is replaced, except where no body
        // follows and its length describes the body a GET would get.
        let framing_field = *name == header::CONTENT_LENGTH || *name == header::TRANSFER_ENCODING;
        if framing_field && (framing != Framing::None || never_framed) {
            continue;
        }
        length_given |= *name == header::CONTENT_LENGTH;
        dated |= *name == header::DATE;
        if *name == header::CONNECTION && !switching {
            // The pipeline's `Connection: close` (after a 400, say, RFC
            // 9112 §9.6) closes the connection; the field is written below.
            if list_has(value.as_bytes(), b"close") {
                *keep = false;
            }
            continue;
        }
        if fields.gives_way(name, &mut seen) {
            continue;
        }
        push_field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    if !dated {
        out.extend_from_slice(b"date: ");
        crate::base::clock::http_date(out);
        out.extend_from_slice(b"\r\n");
    }
    fields.write(h, seen, out);
    match framing {
        Framing::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            crate::base::fmt::push_decimal(out, n);
            out.extend_from_slice(b"\r\n");
        }
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::None if head_request && !bodiless && !length_given => {
            // HEAD: the length a GET's body would have, when it is known.
            if let Some(n) = exact.filter(|n| *n > 0) {
                out.extend_from_slice(b"content-length: ");
                crate::base::fmt::push_decimal(out, n);
                out.extend_from_slice(b"\r\n");
            }
        }
        _ => {}
    }
    if !switching {
        if !*keep {
            out.extend_from_slice(b"connection: close\r\n");
        } else if v10 {
            out.extend_from_slice(b"connection: keep-alive\r\n");
        }
    }
    out.extend_from_slice(b"\r\n");
    framing
}
