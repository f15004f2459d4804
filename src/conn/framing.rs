//! The client-facing HTTP/1 head: one parse of every request head with
//! httparse, in which the framing rules are enforced (issue 13 point 2),
//! and the connection's state as the listener's limits need it.
//!
//! [`take_head`] finds a complete head at the start of what has been read
//! and parses it once into the request the pipeline sees (method, target,
//! version and fields sharing the bytes read, no copy) plus what the
//! connection needs to know (body framing, keep-alive, upgrade, `Expect`).
//! A head that must be refused is answered with the refusal's status page
//! (security headers, request id, access log: the pipeline finds the
//! refusal recorded in [`ConnState`] under the request's position) and the
//! connection is closed after it. Refused:
//!
//! - both `Content-Length` and `Transfer-Encoding`, differing or invalid
//!   `Content-Length` values, `chunked` twice or not last (400, RFC 9112
//!   §6.1, §6.3); other transfer codings before `chunked` (501);
//! - a request line over the URI limit (414), a head over the head limit
//!   or with more fields than `max_headers` (431), an HTTP/2 preface on an
//!   HTTP/1 port (400), a major version other than 1 (505), `CONNECT`
//!   (405: a reverse proxy has no tunnels), and anything httparse refuses
//!   (400).
//!
//! Malformed chunked framing (bare LF, missing CRLF, bad size) fails the
//! request body (`base::chunked`), so no body ends anywhere but where an
//! upstream would end it. The rules hold for every request on a
//! connection, after an upgrade that was not switched too (issue 10
//! point 7): each head is parsed here, whatever came before it.

use std::future::Future;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::header::HeaderValue;
use http::{Method, Request, Uri, Version};

use crate::base::content_length::ContentLength;
use crate::base::framed::find_head_end;
use crate::base::header_names::connection_tokens;

/// Why a request head was refused before hyper saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Refusal {
    /// Both `Content-Length` and `Transfer-Encoding` (RFC 9112 §6.1).
    Ambiguous = 1,
    /// `Content-Length` that is not one valid number.
    BadContentLength,
    /// `chunked` twice, or not the last coding (RFC 9112 §6.3 point 4).
    BadTransferEncoding,
    /// A transfer coding other than `chunked` (RFC 9112 §6.1: 501).
    UnknownCoding,
    /// Malformed chunked framing.
    BadChunk,
    /// The request line is longer than the URI limit.
    UriTooLong,
    /// The head is larger than the head limit.
    HeadTooLarge,
    /// `PRI * HTTP/2.0`: an HTTP/2 client on an HTTP/1 port.
    Http2Preface,
    /// A major version other than 1.
    Version,
    /// `CONNECT`: there is nothing to tunnel to.
    Connect,
    /// Anything else httparse refuses.
    Malformed,
}

impl Refusal {
    /// Every refusal, for reading one back from its `u8`.
    const ALL: [Refusal; 11] = {
        use Refusal::*;
        [
            Ambiguous,
            BadContentLength,
            BadTransferEncoding,
            UnknownCoding,
            BadChunk,
            UriTooLong,
            HeadTooLarge,
            Http2Preface,
            Version,
            Connect,
            Malformed,
        ]
    };

    pub(crate) fn from_u8(v: u8) -> Option<Refusal> {
        Self::ALL.into_iter().find(|r| *r as u8 == v)
    }
}

/// One connection's state, shared by its reader (this module), the request
/// pipeline and the listener (idle limits, eviction when the connection
/// limit is reached).
#[derive(Debug)]
pub struct ConnState {
    /// 1-based index of the refused request; 0: none.
    refused_at: AtomicU64,
    refusal: AtomicU8,
    /// HTTP/1 requests the pipeline has started.
    served: AtomicU64,
    /// Requests being answered (any protocol).
    in_flight: AtomicU32,
    /// When the connection last had nothing in flight (`clock::now_nanos`).
    idle_since: AtomicU64,
    /// When the first byte of a head not yet complete arrived; 0: none.
    head_started: AtomicU64,
    /// Why the connection is being closed from outside its task
    /// ([`Closing`] as `u8`; 0: it is not).
    closing: AtomicU8,
    close: tokio::sync::Notify,
    /// The listener's sweep holds this connection to its idle limits
    /// (HTTP/1; HTTP/2 keeps its own timer).
    swept: AtomicBool,
}

impl Default for ConnState {
    fn default() -> Self {
        ConnState {
            refused_at: AtomicU64::new(0),
            refusal: AtomicU8::new(0),
            served: AtomicU64::new(0),
            in_flight: AtomicU32::new(0),
            idle_since: AtomicU64::new(crate::base::clock::now_nanos()),
            head_started: AtomicU64::new(0),
            closing: AtomicU8::new(0),
            close: tokio::sync::Notify::new(),
            swept: AtomicBool::new(false),
        }
    }
}

/// Why a connection is closed from outside its task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Closing {
    /// Chosen to make room (the connection limit, issue 10 point 5).
    Evicted = 1,
    /// Past `header_timeout` or `keepalive_timeout`.
    IdleLimit = 2,
    /// Idle when shutdown was asked.
    Shutdown = 3,
}

pin_project_lite::pin_project! {
    /// [`ConnState::run_until_closed`]'s future.
    pub struct UntilClosed<'a, F> {
        #[pin]
        work: F,
        #[pin]
        notified: tokio::sync::futures::Notified<'a>,
        state: &'a ConnState,
        registered: bool,
    }
}

impl<F: Future<Output = ()>> Future for UntilClosed<'_, F> {
    type Output = Option<Closing>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Closing>> {
        let this = self.project();
        if this.work.poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        if !*this.registered {
            // The task's waker is the same for its whole life: once
            // registered, `close`'s `notify_one` wakes it, and the reason
            // is set before that. Ready here means a close came first,
            // which the load below sees.
            let _ = this.notified.poll(cx);
            *this.registered = true;
        }
        match this.state.closing_reason() {
            Some(why) => Poll::Ready(Some(why)),
            None => Poll::Pending,
        }
    }
}

/// Where a connection stands, for its idle limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// A request is being answered: no connection-level limit applies.
    Busy,
    /// Waiting for the first request, since this time.
    First(u64),
    /// Idle between requests, since this time (`keepalive_timeout`).
    Idle(u64),
    /// Part of a head has arrived, since this time (`header_timeout`).
    Head(u64),
}

impl ConnState {
    /// The refused request's position and why, if one was refused.
    pub fn refused(&self) -> Option<(u64, Refusal)> {
        let at = self.refused_at.load(Ordering::Acquire);
        (at != 0)
            .then(|| Refusal::from_u8(self.refusal.load(Ordering::Acquire)))
            .flatten()
            .map(|r| (at, r))
    }

    /// Runs once per HTTP/1 request, in order, before anything else: its
    /// position, and the refusal when this is the request whose head was
    /// refused.
    pub fn next_h1(&self) -> (u64, Option<Refusal>) {
        let n = self.served.fetch_add(1, Ordering::Relaxed) + 1;
        if self.refused_at.load(Ordering::Acquire) == n {
            let r = Refusal::from_u8(self.refusal.load(Ordering::Acquire));
            return (n, r);
        }
        (n, None)
    }

    /// A request starts being answered; [`ConnState::leave`] when its
    /// response is done (the response body drops).
    pub fn enter(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    pub fn leave(&self) {
        if self.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle_since
                .store(crate::base::clock::now_nanos(), Ordering::Relaxed);
        }
    }

    pub fn phase(&self) -> Phase {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return Phase::Busy;
        }
        let head = self.head_started.load(Ordering::Acquire);
        if head != 0 {
            return Phase::Head(head);
        }
        let since = self.idle_since.load(Ordering::Relaxed);
        if self.served.load(Ordering::Relaxed) == 0 {
            Phase::First(since)
        } else {
            Phase::Idle(since)
        }
    }

    /// The first byte of a head arrived (`header_timeout` runs from here).
    pub(crate) fn head_begins(&self) {
        self.head_started
            .store(crate::base::clock::now_nanos().max(1), Ordering::Release);
    }

    /// The head is complete (or was refused).
    pub(crate) fn head_done(&self) {
        self.head_started.store(0, Ordering::Release);
    }

    /// Whether part of a head has arrived.
    pub(crate) fn in_head(&self) -> bool {
        self.head_started.load(Ordering::Acquire) != 0
    }

    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire) != 0
    }

    /// Asks the connection's task to close it, for `why`; the first reason
    /// given stands.
    pub fn close(&self, why: Closing) {
        if self
            .closing
            .compare_exchange(0, why as u8, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.close.notify_one();
        }
    }

    /// Why the connection is being closed from outside, once it is.
    fn closing_reason(&self) -> Option<Closing> {
        match self.closing.load(Ordering::Acquire) {
            0 => None,
            1 => Some(Closing::Evicted),
            2 => Some(Closing::IdleLimit),
            _ => Some(Closing::Shutdown),
        }
    }

    /// Runs `work` (the connection's whole life) until it ends (`None`) or
    /// [`ConnState::close`] is called (`Some` with the reason; `work` is
    /// dropped). The task is woken for its socket thousands of times for
    /// each close: the close signal is registered once, and every later
    /// wake-up reads one atomic instead of polling the `Notify` again
    /// (issue 13: a lock per wake-up). Not an `async fn`: its state would
    /// hold `work` twice (the argument and the pinned copy), which every
    /// idle connection would carry.
    pub fn run_until_closed<F: Future<Output = ()>>(&self, work: F) -> UntilClosed<'_, F> {
        UntilClosed {
            work,
            notified: self.close.notified(),
            state: self,
            registered: false,
        }
    }

    /// Puts the connection under the listener's sweep for its idle limits.
    pub(crate) fn sweep_me(&self) {
        self.swept.store(true, Ordering::Release);
    }

    pub(crate) fn is_swept(&self) -> bool {
        self.swept.load(Ordering::Acquire)
    }

    /// When the connection passes one of its idle limits, if it is swept
    /// and nothing is in flight: the first head within `header` of the
    /// start, a later head within `header` of its first byte, the wait
    /// between requests within `keepalive`.
    pub(crate) fn deadline(&self, header: u64, keepalive: u64) -> Option<u64> {
        if !self.swept.load(Ordering::Acquire) {
            return None;
        }
        match self.phase() {
            Phase::Busy => None,
            Phase::First(t) | Phase::Head(t) => Some(t + header),
            Phase::Idle(t) => Some(t + keepalive),
        }
    }

    /// Records that the next HTTP/1 request (the one the pipeline starts
    /// next, [`ConnState::next_h1`]) was refused: the pipeline answers it
    /// with the refusal's status page.
    pub(crate) fn refuse_next(&self, why: Refusal) {
        let at = self.served.load(Ordering::Relaxed) + 1;
        if self
            .refused_at
            .compare_exchange(0, at, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.refusal.store(why as u8, Ordering::Release);
        }
    }
}

/// The size limits a head is held to.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Whole head (request line and fields): over it, 431.
    pub max_head: usize,
    /// Request line: over it, 414.
    pub max_uri: usize,
    /// Header fields: more, 431.
    pub max_headers: usize,
}

/// How a request's body is framed (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyLen {
    None,
    Fixed(u64),
    Chunked,
}

/// A request head, parsed once.
#[derive(Debug)]
pub struct Head {
    pub req: Request<()>,
    pub body: BodyLen,
    /// `Upgrade` was sent (HTTP/1.1): the connection may switch protocols.
    pub upgrade: bool,
    /// The client keeps the connection: HTTP/1.1 without `Connection:
    /// close`, or HTTP/1.0 with `Connection: keep-alive`.
    pub keep_alive: bool,
    /// `Expect: 100-continue` (RFC 9110 §10.1.1), HTTP/1.1.
    pub expect_continue: bool,
}

/// Where [`take_head`] left off in a head that is not complete yet, so
/// each byte is scanned once however the head arrives (one byte per read
/// would otherwise cost the square of its length).
#[derive(Debug, Default, Clone, Copy)]
pub struct Scan {
    /// Bytes of the buffer already searched for the blank line.
    searched: usize,
}

/// Looks for a complete request head at the start of `buf` (empty lines
/// before it are dropped, RFC 9112 §2.2). `Ok(None)`: more is needed and
/// what has come can still begin a valid head; `Ok(Some)`: the head's
/// bytes have been taken from `buf`.
pub fn take_head(
    buf: &mut BytesMut,
    scan: &mut Scan,
    limits: &Limits,
) -> Result<Option<Head>, Refusal> {
    if scan.searched == 0 {
        let skip = buf
            .iter()
            .take_while(|b| **b == b'\r' || **b == b'\n')
            .count();
        buf.advance(skip);
        if buf.is_empty() {
            return Ok(None);
        }
    }
    // The terminator may straddle two reads: look back 3.
    let from = scan.searched.saturating_sub(3);
    let Some(end) = find_head_end(&buf[from..]).map(|e| e + from) else {
        let new_line = buf[from..].contains(&b'\n');
        scan.searched = buf.len();
        check_start(buf, limits)?;
        // Judged again only when a line was completed: the verdict depends
        // on lines, and parsing on every read would be quadratic.
        if new_line {
            check_partial(buf)?;
        }
        return Ok(None);
    };
    *scan = Scan::default();
    check_start(&buf[..end], limits)?;
    check_version(&mut buf[..end])?;
    let head = buf.split_to(end).freeze();
    parse_head(head, limits.max_headers).map(Some)
}

/// The first checks of any head, whole or not: the HTTP/2 preface, the
/// method, the request line and head limits. The checks run in the same
/// order on a partial head as on a whole one, so the verdict does not
/// depend on where the reads split the head.
fn check_start(head: &[u8], limits: &Limits) -> Result<(), Refusal> {
    if head.starts_with(b"PRI * HTTP/2.0") {
        return Err(Refusal::Http2Preface);
    }
    check_method(head)?;
    let line_len = head.iter().position(|b| *b == b'\n').unwrap_or(head.len());
    if line_len > limits.max_uri {
        return Err(Refusal::UriTooLong);
    }
    if head.len() > limits.max_head {
        return Err(Refusal::HeadTooLarge);
    }
    Ok(())
}

/// Parses a complete head (after [`check_version`]) into the request, its
/// fields sharing `head`'s bytes, and applies RFC 9112's framing rules.
fn parse_head(head: Bytes, max_headers: usize) -> Result<Head, Refusal> {
    // Slots httparse fills, left uninitialised: zeroing 128 of them wrote
    // 4 KiB through the cache for every head (issue 13).
    let mut stack = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; 128];
    let mut heap = Vec::new();
    let fields: &mut [MaybeUninit<httparse::Header<'_>>] = if max_headers <= stack.len() {
        &mut stack[..max_headers]
    } else {
        heap.resize_with(max_headers, MaybeUninit::uninit);
        &mut heap
    };
    let mut parsed = httparse::Request::new(&mut []);
    match parsed.parse_with_uninit_headers(&head, fields) {
        Ok(httparse::Status::Complete(_)) => {}
        // RFC 6585 §5: more fields than allowed is 431, as for size.
        Err(httparse::Error::TooManyHeaders) => return Err(Refusal::HeadTooLarge),
        _ => return Err(Refusal::Malformed),
    }
    let method = parsed.method.unwrap_or_default();
    if method == "CONNECT" {
        return Err(Refusal::Connect);
    }
    let method = Method::from_bytes(method.as_bytes()).map_err(|_| Refusal::Malformed)?;
    let target = parsed.path.unwrap_or_default();
    let uri = Uri::from_maybe_shared(head.slice_ref(target.as_bytes()))
        .map_err(|_| Refusal::Malformed)?;
    let version = match parsed.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let mut cl = ContentLength::default();
    let mut has_cl = false;
    let mut has_te = false;
    let mut chunked = 0u32;
    let mut chunked_last = false;
    let mut other_coding = false;
    let mut upgrade = false;
    let (mut close, mut keep_alive, mut expect_continue) = (false, false, false);
    // Sized once for these fields and those the proxy adds for the
    // upstream (forwarding headers, request id; issue 13 point 3).
    let mut headers = crate::base::recycle::header_map(parsed.headers.len() + 8);
    for f in parsed.headers.iter() {
        let name = crate::base::header_names::field_name(f.name.as_bytes())
            .map_err(|_| Refusal::Malformed)?;
        if name == http::header::CONTENT_LENGTH {
            // RFC 9110 §8.6: a list of identical values may be taken as
            // one; anything else is refused.
            cl.add(f.value).map_err(|_| Refusal::BadContentLength)?;
            has_cl = true;
        } else if name == http::header::TRANSFER_ENCODING {
            has_te = true;
            for coding in f.value.split(|b| *b == b',') {
                let coding = coding.trim_ascii();
                if coding.is_empty() {
                    continue;
                }
                if chunked_last {
                    // Something after `chunked`.
                    return Err(Refusal::BadTransferEncoding);
                }
                if coding.eq_ignore_ascii_case(b"chunked") {
                    chunked += 1;
                    chunked_last = true;
                } else {
                    other_coding = true;
                }
            }
        } else if name == http::header::UPGRADE {
            upgrade = true;
        } else if name == http::header::CONNECTION {
            let t = connection_tokens(f.value);
            close |= t.close;
            keep_alive |= t.keep_alive;
            if t.only_persistence {
                // This connection's own field (browsers send `Connection:
                // keep-alive` on every HTTP/1.1 request), noted above and
                // never forwarded (RFC 9110 §7.6.1): not kept in the map.
                continue;
            }
        } else if name == http::header::EXPECT {
            expect_continue |= f.value.trim_ascii().eq_ignore_ascii_case(b"100-continue");
        }
        let value = HeaderValue::from_maybe_shared(head.slice_ref(f.value))
            .map_err(|_| Refusal::Malformed)?;
        headers.append(name, value);
    }
    if has_cl && has_te {
        return Err(Refusal::Ambiguous);
    }
    let body = if has_te {
        if chunked > 1 || !chunked_last {
            return Err(Refusal::BadTransferEncoding);
        }
        if other_coding {
            return Err(Refusal::UnknownCoding);
        }
        BodyLen::Chunked
    } else {
        match cl.get() {
            Some(n) if n > 0 => BodyLen::Fixed(n),
            _ => BodyLen::None,
        }
    };
    let http11 = version == Version::HTTP_11;
    let mut req = Request::new(());
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = version;
    *req.headers_mut() = headers;
    Ok(Head {
        req,
        body,
        upgrade: upgrade && http11,
        keep_alive: !close && (http11 || keep_alive),
        expect_continue: expect_continue && http11,
    })
}

/// What can be said of a head not yet complete (after `check_start`): an
/// error as soon as the bytes so far cannot begin a valid one. The version
/// is judged only once the request line is complete: the verdict must not
/// depend on where the reads split the head (`HTTP/2` is not yet
/// `HTTP/2.0`; cargo fuzz found such splits giving other answers).
fn check_partial(head: &mut [u8]) -> Result<(), Refusal> {
    if !head.contains(&b'\n') {
        return Ok(());
    }
    check_version(head)?;
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; 128];
    match httparse::Request::new(&mut []).parse_with_uninit_headers(head, &mut fields) {
        Ok(_) | Err(httparse::Error::TooManyHeaders) => Ok(()),
        Err(_) => Err(Refusal::Malformed),
    }
}

/// The method (up to the first space, or what has come of it) is a token:
/// judged first, so that the verdict is the same however much has come.
fn check_method(head: &[u8]) -> Result<(), Refusal> {
    let method = head
        .split(|b| matches!(b, b' ' | b'\r' | b'\n'))
        .next()
        .unwrap_or_default();
    if method.iter().all(|b| is_tchar(*b)) {
        Ok(())
    } else {
        Err(Refusal::Malformed)
    }
}

pub(crate) use crate::base::header_names::is_tchar;

/// A version `HTTP/1.x` with x > 1 is rewritten to `HTTP/1.1` in place, as
/// RFC 9110 §2.5 says to serve it; another major version is refused.
fn check_version(head: &mut [u8]) -> Result<(), Refusal> {
    let line_end = head
        .iter()
        .position(|b| *b == b'\n')
        .ok_or(Refusal::Malformed)?;
    let line = &head[..line_end];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    // "HTTP/" DIGIT "." DIGIT at the end of the request line.
    if line.len() >= 8 {
        let v = line.len() - 8;
        let version = &line[v..];
        if version.starts_with(b"HTTP/") && version[6] == b'.' {
            let (major, minor) = (version[5], version[7]);
            if !major.is_ascii_digit() || !minor.is_ascii_digit() {
                return Err(Refusal::Malformed);
            }
            if major != b'1' {
                return Err(Refusal::Version);
            }
            if minor > b'1' {
                head[v + 7] = b'1';
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_head: 64 * 1024,
        max_uri: 16 * 1024,
        max_headers: 100,
    };

    #[tokio::test]
    async fn a_connection_runs_until_it_ends_or_is_closed_from_outside() {
        let wait = std::time::Duration::from_secs(10);
        let state = std::sync::Arc::new(ConnState::default());
        // Work that ends on its own.
        let done = tokio::time::timeout(wait, state.run_until_closed(async {})).await;
        assert_eq!(done.expect("in time"), None);
        // Work that never ends, closed from another task after it started
        // waiting (the path every later wake-up takes).
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        let closer = {
            let state = state.clone();
            tokio::spawn(async move {
                started_rx.await.expect("the work started");
                state.close(Closing::IdleLimit);
            })
        };
        let work = async move {
            let _ = started_tx.send(());
            std::future::pending::<()>().await
        };
        let why = tokio::time::timeout(wait, state.run_until_closed(work)).await;
        assert_eq!(why.expect("in time"), Some(Closing::IdleLimit));
        tokio::time::timeout(wait, closer)
            .await
            .expect("in time")
            .expect("closer");
        // Closed before the work runs: the first reason given stands.
        state.close(Closing::Evicted);
        let why = tokio::time::timeout(wait, state.run_until_closed(std::future::pending())).await;
        assert_eq!(why.expect("in time"), Some(Closing::IdleLimit));
        let fresh = ConnState::default();
        fresh.close(Closing::Evicted);
        let why = tokio::time::timeout(wait, fresh.run_until_closed(std::future::pending())).await;
        assert_eq!(why.expect("in time"), Some(Closing::Evicted));
    }

    /// Feeds `chunks` one read at a time and takes every head that
    /// completes (bodies are skipped by their declared length).
    fn heads(chunks: &[&[u8]]) -> Result<Vec<Head>, Refusal> {
        let mut buf = BytesMut::new();
        let mut scan = Scan::default();
        let mut out = Vec::new();
        let mut skip = 0u64;
        for c in chunks {
            buf.extend_from_slice(c);
            loop {
                let n = skip.min(buf.len() as u64);
                buf.advance(n as usize);
                skip -= n;
                if skip > 0 || buf.is_empty() {
                    break;
                }
                match take_head(&mut buf, &mut scan, &LIMITS)? {
                    Some(h) => {
                        if let BodyLen::Fixed(n) = h.body {
                            skip = n;
                        }
                        out.push(h);
                    }
                    None => break,
                }
            }
        }
        Ok(out)
    }

    fn refusal(text: &[u8]) -> Option<Refusal> {
        heads(&[text]).err()
    }

    #[test]
    fn one_parse_gives_the_request_and_its_framing() {
        let stream: &[u8] = b"\r\nPOST /a?x=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\nabc\
GET /b HTTP/1.0\r\nConnection: keep-alive\r\n\r\n\
GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: close\r\n\r\n";
        for pieces in [vec![stream], stream.chunks(1).collect()] {
            let hs = heads(&pieces).unwrap();
            assert_eq!(hs.len(), 3);
            assert_eq!(hs[0].req.method(), Method::POST);
            assert_eq!(hs[0].req.uri(), "/a?x=1");
            assert_eq!(hs[0].body, BodyLen::Fixed(3));
            assert!(hs[0].expect_continue && hs[0].keep_alive && !hs[0].upgrade);
            assert_eq!(hs[0].req.headers()["host"], "h");
            assert_eq!(hs[1].req.version(), Version::HTTP_10);
            assert!(hs[1].keep_alive, "HTTP/1.0 with keep-alive");
            assert!(hs[2].upgrade && !hs[2].keep_alive);
        }
        let ten = heads(&[b"GET / HTTP/1.0\r\n\r\n"]).unwrap();
        assert!(!ten[0].keep_alive, "HTTP/1.0 closes by default");
    }

    #[test]
    fn transfer_coding_rules() {
        for (te, want) in [
            ("gzip, chunked", Some(Refusal::UnknownCoding)),
            ("chunked, chunked", Some(Refusal::BadTransferEncoding)),
            ("chunked, gzip", Some(Refusal::BadTransferEncoding)),
            ("gzip", Some(Refusal::BadTransferEncoding)),
            ("chunked", None),
        ] {
            let head = format!("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: {te}\r\n\r\n");
            assert_eq!(refusal(head.as_bytes()), want, "{te}");
        }
        assert_eq!(
            refusal(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Some(Refusal::BadTransferEncoding)
        );
        assert_eq!(
            refusal(b"POST / HTTP/1.1\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Some(Refusal::Ambiguous)
        );
        let same = heads(&[b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n"]);
        assert_eq!(same.unwrap()[0].body, BodyLen::Fixed(3));
        assert_eq!(
            refusal(b"POST / HTTP/1.1\r\nContent-Length: 3, 4\r\n\r\n"),
            Some(Refusal::BadContentLength)
        );
    }

    #[test]
    fn versions_limits_and_preface() {
        let h = heads(&[b"GET / HTTP/1.2\r\nHost: h\r\n\r\n"]).unwrap();
        assert_eq!(h[0].req.version(), Version::HTTP_11, "RFC 9110 §2.5");
        assert_eq!(
            refusal(b"GET / HTTP/2.0\r\nHost: h\r\n\r\n"),
            Some(Refusal::Version)
        );
        assert_eq!(
            refusal(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
            Some(Refusal::Http2Preface)
        );
        // However the reads split it, the same verdict (found by fuzzing).
        let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        let pieces: Vec<&[u8]> = preface.chunks(2).collect();
        assert_eq!(heads(&pieces).err(), Some(Refusal::Http2Preface));
        let pieces: Vec<&[u8]> = b"GET / HTTP/2.0\r\nHost: h\r\n\r\n".chunks(3).collect();
        assert_eq!(heads(&pieces).err(), Some(Refusal::Version));
        let bad = b"++/PY~I * HTTP/2.0\n\x14";
        let pieces: Vec<&[u8]> = bad.chunks(1).collect();
        assert_eq!(heads(&pieces).err(), heads(&[bad]).err());
        let long = format!("GET /{} HTTP/1.1\r\n", "a".repeat(20_000));
        assert_eq!(refusal(long.as_bytes()), Some(Refusal::UriTooLong));
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(70_000));
        assert_eq!(refusal(big.as_bytes()), Some(Refusal::HeadTooLarge));
        let many: String = (0..101).map(|i| format!("X-{i}: v\r\n")).collect();
        let many = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert_eq!(refusal(many.as_bytes()), Some(Refusal::HeadTooLarge));
        assert_eq!(
            refusal(b"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n"),
            Some(Refusal::Connect)
        );
        assert_eq!(
            refusal(b"\x16\x03\x01\x02\x00\x01"),
            Some(Refusal::Malformed)
        );
    }

    #[test]
    fn a_head_is_not_judged_by_the_request_behind_it() {
        // The next pipelined head counts against its own limit, not this one's.
        let next = format!("GET /{} HTTP/1.1\r\nHost: h\r\n\r\n", "a".repeat(9_000));
        let stream = format!("GET / HTTP/1.1\r\nHost: h\r\n\r\n{next}");
        let limits = Limits {
            max_head: 10_000,
            max_uri: 10_000,
            max_headers: 100,
        };
        let mut buf = BytesMut::from(stream.as_bytes());
        let mut scan = Scan::default();
        assert!(take_head(&mut buf, &mut scan, &limits).unwrap().is_some());
        assert!(take_head(&mut buf, &mut scan, &limits).unwrap().is_some());
    }
}
