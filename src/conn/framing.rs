//! The HTTP/1 reader in front of hyper: one parse of every request head,
//! where the framing rules are enforced, and the connection's state as the
//! listener's limits need it.
//!
//! Every head is held back until it is complete and parsed here with
//! httparse. A head that is well framed is handed to hyper as it came (its
//! version rewritten to `HTTP/1.1` for a higher 1.x minor, RFC 9110 §2.5);
//! a head that must be refused is replaced by a one-line stand-in request
//! and the refusal recorded in [`ConnState`] under the request's position,
//! so the pipeline answers it with its own status page (security headers,
//! request id, access log) and the connection is closed after it: nothing
//! more of the connection reaches hyper. Refused:
//!
//! - both `Content-Length` and `Transfer-Encoding`, differing or invalid
//!   `Content-Length` values, `chunked` twice or not last (400, RFC 9112
//!   §6.1, §6.3); other transfer codings before `chunked` (501);
//! - malformed chunk framing (bare LF, missing CRLF, bad size): the next
//!   read fails, so hyper never places a body's end differently than an
//!   upstream would;
//! - a request line over the URI limit (414), a head over the head limit
//!   (431), an HTTP/2 preface on an HTTP/1 port (400), a major version
//!   other than 1 (505), `CONNECT` (405: a reverse proxy has no tunnels),
//!   and anything httparse refuses (400).
//!
//! Bodies pass through uncopied while their framing is followed by count.
//! A request that asks to upgrade is followed by nothing until the
//! pipeline says whether it switched protocols: if it did, the rest is the
//! new protocol's and is no longer inspected; if not, inspection goes on
//! (the rules hold for every request on a connection, issue 10 point 7).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, ReadBuf};

use crate::base::content_length::ContentLength;

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
    /// The pipeline's answer to an upgrade request: index << 1 | switched.
    decision: AtomicU64,
    /// Woken when `decision` changes and the reader is waiting for it.
    waiting: Mutex<Option<Waker>>,
    /// Requests being answered (any protocol).
    in_flight: AtomicU32,
    /// When the connection last had nothing in flight (`clock::now_nanos`).
    idle_since: AtomicU64,
    /// When the first byte of a head not yet complete arrived; 0: none.
    head_started: AtomicU64,
    /// The connection was chosen to make room (connection limit).
    evicted: AtomicBool,
    evict: tokio::sync::Notify,
}

impl Default for ConnState {
    fn default() -> Self {
        ConnState {
            refused_at: AtomicU64::new(0),
            refusal: AtomicU8::new(0),
            served: AtomicU64::new(0),
            decision: AtomicU64::new(0),
            waiting: Mutex::new(None),
            in_flight: AtomicU32::new(0),
            idle_since: AtomicU64::new(crate::base::clock::now_nanos()),
            head_started: AtomicU64::new(0),
            evicted: AtomicBool::new(false),
            evict: tokio::sync::Notify::new(),
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

    /// The pipeline's answer to HTTP/1 request `n`: whether the connection
    /// switched protocols. Only a request that asked to upgrade waits for it.
    pub fn answered(&self, n: u64, switched: bool) {
        // (Called for every HTTP/1 request; only an upgrade request's
        // reader is waiting for it.)
        self.decision
            .store(n << 1 | u64::from(switched), Ordering::Release);
        let waker = self
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(w) = waker {
            w.wake();
        }
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

    pub fn is_evicted(&self) -> bool {
        self.evicted.load(Ordering::Acquire)
    }

    /// Asks the connection to close to make room for a new one.
    pub fn evict(&self) {
        self.evicted.store(true, Ordering::Release);
        self.evict.notify_one();
    }

    /// Resolves once [`ConnState::evict`] has been called.
    pub async fn evicted(&self) {
        while !self.evicted.load(Ordering::Acquire) {
            self.evict.notified().await;
        }
    }

    fn refuse(&self, at: u64, why: Refusal) {
        if self
            .refused_at
            .compare_exchange(0, at, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.refusal.store(why as u8, Ordering::Release);
        }
    }
}

/// What a stand-in request looks like: hyper parses it, the pipeline finds
/// the refusal recorded for its position and answers it.
/// `Connection: close` makes hyper close once it has answered, without
/// reading further (nothing more would come).
const STAND_IN: &[u8] = b"GET / HTTP/1.1\r\nHost: refused.invalid\r\nConnection: close\r\n\r\n";

/// The size limits a head is held to.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Whole head (request line and fields): over it, 431.
    pub max_head: usize,
    /// Request line: over it, 414.
    pub max_uri: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Head,
    Fixed(u64),
    ChunkLine,
    ChunkData(u64),
    ChunkCrlf(u8),
    Trailers,
    /// An upgrade request is complete: hold what follows until the
    /// pipeline says whether the protocol switched.
    Await,
    /// The protocol switched: bytes pass uninspected.
    Off,
    /// A stand-in was handed over: hyper sees the end of the stream next.
    Closed,
    /// Chunked framing was broken: the next read fails.
    Poisoned,
}

pub struct Inspect<I> {
    inner: I,
    state: State,
    /// The head being gathered (not yet given to hyper).
    head: Vec<u8>,
    /// A chunk-size line or trailer line being followed (already given).
    line: Vec<u8>,
    /// Bytes for hyper that did not fit its buffer yet; `out_pos` given.
    out: Vec<u8>,
    out_pos: usize,
    /// Bytes read while waiting for an upgrade decision.
    held: Vec<u8>,
    /// The current request asked to upgrade: `Await` after its body.
    upgrading: bool,
    heads: u64,
    limits: Limits,
    state_ref: Arc<ConnState>,
    /// `METHOD TARGET` of the heads handed over, in order, when recording
    /// (the differential fuzz targets and property tests); `None` in
    /// service.
    pub(crate) targets: Option<Vec<Vec<u8>>>,
}

impl<I> Inspect<I> {
    pub fn new(inner: I, state: Arc<ConnState>, limits: Limits) -> Self {
        Inspect {
            inner,
            state: State::Head,
            head: Vec::new(),
            line: Vec::new(),
            out: Vec::new(),
            out_pos: 0,
            held: Vec::new(),
            upgrading: false,
            heads: 0,
            limits,
            state_ref: state,
            targets: None,
        }
    }

    /// Follows the framing over `data` (bytes in stream order). Returns how
    /// many leading bytes may go to hyper as they are; the rest has been
    /// taken in: a head being gathered, or bytes queued in `out` after a
    /// head that completed here.
    pub(crate) fn process(&mut self, data: &[u8]) -> usize {
        let mut i = 0;
        // While true, bytes pass straight through (no head held yet).
        let mut direct = true;
        let mut direct_end = 0;
        macro_rules! pass {
            ($from:expr, $to:expr) => {
                if direct {
                    direct_end = $to;
                } else {
                    self.out.extend_from_slice(&data[$from..$to]);
                }
            };
        }
        while i < data.len() {
            match self.state {
                State::Off => {
                    pass!(i, data.len());
                    i = data.len();
                }
                State::Closed | State::Poisoned => {
                    // Nothing more reaches hyper.
                    if direct {
                        direct_end = i;
                        direct = false;
                    }
                    i = data.len();
                }
                State::Await => {
                    if direct {
                        direct_end = i;
                        direct = false;
                    }
                    self.held.extend_from_slice(&data[i..]);
                    i = data.len();
                }
                State::Head => {
                    if self.head.is_empty() {
                        // Empty lines before a request line are ignored
                        // (RFC 9112 §2.2); they start no request.
                        let skip = data[i..]
                            .iter()
                            .take_while(|b| **b == b'\r' || **b == b'\n')
                            .count();
                        pass!(i, i + skip);
                        i += skip;
                        if i == data.len() {
                            break;
                        }
                        self.state_ref
                            .head_started
                            .store(crate::base::clock::now_nanos().max(1), Ordering::Release);
                    }
                    if direct {
                        direct_end = i;
                        direct = false;
                    }
                    // The terminator may straddle two reads: look back 3.
                    let start = self.head.len().saturating_sub(3);
                    let before = self.head.len();
                    self.head.extend_from_slice(&data[i..]);
                    match find_head_end(&self.head[start..]) {
                        Some(end) => {
                            let end = start + end;
                            let used = end - before;
                            i += used;
                            self.head.truncate(end);
                            self.on_head();
                        }
                        None => {
                            i = data.len();
                            self.check_partial_head();
                        }
                    }
                }
                State::Fixed(n) => {
                    let take = (n as usize).min(data.len() - i);
                    pass!(i, i + take);
                    i += take;
                    let left = n - take as u64;
                    self.state = if left == 0 {
                        self.after_body()
                    } else {
                        State::Fixed(left)
                    };
                }
                State::ChunkLine | State::Trailers => {
                    let rest = &data[i..];
                    let Some(nl) = rest.iter().position(|b| *b == b'\n') else {
                        self.line.extend_from_slice(rest);
                        pass!(i, data.len());
                        i = data.len();
                        if self.line.len() > 8192 {
                            self.poison(Refusal::BadChunk);
                        }
                        continue;
                    };
                    self.line.extend_from_slice(&rest[..=nl]);
                    pass!(i, i + nl + 1);
                    i += nl + 1;
                    let line = std::mem::take(&mut self.line);
                    // RFC 9112 §7.1: chunk lines end in CRLF; a bare LF is
                    // read differently by different parsers.
                    if !line.ends_with(b"\r\n") {
                        self.poison(Refusal::BadChunk);
                        continue;
                    }
                    let next = if self.state == State::Trailers {
                        if line == b"\r\n" {
                            self.after_body()
                        } else {
                            State::Trailers
                        }
                    } else {
                        match httparse::parse_chunk_size(&line) {
                            Ok(httparse::Status::Complete((_, 0))) => State::Trailers,
                            Ok(httparse::Status::Complete((_, n))) => State::ChunkData(n),
                            _ => {
                                self.poison(Refusal::BadChunk);
                                continue;
                            }
                        }
                    };
                    self.line = line;
                    self.line.clear();
                    self.state = next;
                }
                State::ChunkData(n) => {
                    let take = (n as usize).min(data.len() - i);
                    pass!(i, i + take);
                    i += take;
                    let left = n - take as u64;
                    self.state = if left == 0 {
                        State::ChunkCrlf(2)
                    } else {
                        State::ChunkData(left)
                    };
                }
                State::ChunkCrlf(n) => {
                    // Exactly CRLF after the chunk data.
                    let want = if n == 2 { b'\r' } else { b'\n' };
                    if data[i] != want {
                        self.poison(Refusal::BadChunk);
                        continue;
                    }
                    pass!(i, i + 1);
                    i += 1;
                    self.state = if n == 1 {
                        State::ChunkLine
                    } else {
                        State::ChunkCrlf(n - 1)
                    };
                }
            }
        }
        if direct {
            data.len()
        } else {
            direct_end
        }
    }

    /// The state after a request's body: the next head, or the wait for
    /// the upgrade decision.
    fn after_body(&mut self) -> State {
        if self.upgrading {
            self.upgrading = false;
            State::Await
        } else {
            State::Head
        }
    }

    fn poison(&mut self, why: Refusal) {
        self.state_ref.refuse(self.heads, why);
        self.state = State::Poisoned;
    }

    /// A head still incomplete: refuse it once it is over a limit.
    /// The checks run in the same order on a partial head as on a whole
    /// one (`on_head`), so the verdict does not depend on where the reads
    /// split the head.
    fn check_partial_head(&mut self) {
        if let Err(why) = self
            .check_start()
            .and_then(|()| check_partial(&mut self.head))
        {
            // Bytes no request can start with (a TLS ClientHello on the
            // plain port, binary noise), or over a limit: answered now, not
            // at a blank line that may never come.
            self.heads += 1;
            self.stand_in(why);
        }
    }

    /// The first checks of any head, whole or not: the HTTP/2 preface,
    /// the method, the request line and head limits.
    fn check_start(&self) -> Result<(), Refusal> {
        if self.head.starts_with(b"PRI * HTTP/2.0") {
            return Err(Refusal::Http2Preface);
        }
        check_method(&self.head)?;
        let line_len = self
            .head
            .iter()
            .position(|b| *b == b'\n')
            .unwrap_or(self.head.len());
        if line_len > self.limits.max_uri {
            return Err(Refusal::UriTooLong);
        }
        if self.head.len() > self.limits.max_head {
            return Err(Refusal::HeadTooLarge);
        }
        Ok(())
    }

    /// Replaces the held head by the stand-in and stops reading.
    fn stand_in(&mut self, why: Refusal) {
        self.state_ref.refuse(self.heads, why);
        self.head.clear();
        self.state_ref.head_started.store(0, Ordering::Release);
        self.out.extend_from_slice(STAND_IN);
        self.state = State::Closed;
    }

    /// A complete head is in `head`: check it, queue it (or its stand-in)
    /// for hyper, and pick the body state.
    fn on_head(&mut self) {
        self.heads += 1;
        self.state_ref.head_started.store(0, Ordering::Release);
        if let Err(why) = self.check_start() {
            return self.stand_in(why);
        }
        match check_head(&mut self.head) {
            Err(why) => self.stand_in(why),
            Ok(head) => {
                let body = match head.body {
                    Body::None => None,
                    Body::Fixed(n) => Some(State::Fixed(n)),
                    Body::Chunked => Some(State::ChunkLine),
                };
                self.upgrading = head.upgrade;
                if let Some(t) = self.targets.as_mut() {
                    // "METHOD TARGET", as the request line has them.
                    let line = self.head.split(|b| *b == b'\n').next().unwrap_or_default();
                    let end = line.iter().rposition(|b| *b == b' ').unwrap_or(line.len());
                    t.push(line[..end].to_vec());
                }
                self.out.extend_from_slice(&self.head);
                recycle(&mut self.head);
                self.state = match body {
                    Some(s) => s,
                    None => self.after_body(),
                };
            }
        }
    }

    /// For [`crate::fuzzing`]: one read of `data`, appending what hyper
    /// would be given to `passed`. An upgrade request is answered "not
    /// switched" and the bytes held meanwhile are followed, as `poll_read`
    /// does.
    pub(crate) fn follow(&mut self, data: &[u8], passed: &mut Vec<u8>) {
        let k = self.process(data);
        passed.extend_from_slice(&data[..k]);
        passed.append(&mut self.out);
        while self.state == State::Await {
            self.state_ref.answered(self.heads, false);
            self.state = State::Head;
            let held = std::mem::take(&mut self.held);
            let k = self.process(&held);
            passed.extend_from_slice(&held[..k]);
            passed.append(&mut self.out);
        }
    }

    pub(crate) fn heads(&self) -> u64 {
        self.heads
    }

    /// In `Await`: the pipeline's decision for the awaited request, if made.
    fn decided(&self) -> Option<bool> {
        let d = self.state_ref.decision.load(Ordering::Acquire);
        (d >> 1 == self.heads).then_some(d & 1 == 1)
    }
}

/// Empties a buffer for the next head, keeping an ordinary head's worth of
/// capacity (no allocation per request) but not a large one's for the
/// connection's whole life.
fn recycle(buf: &mut Vec<u8>) {
    if buf.capacity() > 4096 {
        *buf = Vec::new();
    } else {
        buf.clear();
    }
}

/// What a head that passed says about its body.
#[derive(Debug, PartialEq, Eq)]
enum Body {
    None,
    Fixed(u64),
    Chunked,
}

#[derive(Debug)]
struct HeadInfo {
    body: Body,
    upgrade: bool,
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
    let mut fields = [httparse::EMPTY_HEADER; 128];
    match httparse::Request::new(&mut fields).parse(head) {
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

/// The rules of RFC 9112 for one complete head (`head` ends with its blank
/// line), after [`check_version`].
fn check_head(head: &mut [u8]) -> Result<HeadInfo, Refusal> {
    check_version(head)?;
    let mut fields = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut fields);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        // More fields than we look at: hyper applies its own limit (431).
        Err(httparse::Error::TooManyHeaders) => {
            return Ok(HeadInfo {
                body: Body::None,
                upgrade: false,
            })
        }
        _ => return Err(Refusal::Malformed),
    }
    if req.method == Some("CONNECT") {
        return Err(Refusal::Connect);
    }
    let mut cl = ContentLength::default();
    let mut has_cl = false;
    let mut has_te = false;
    let mut chunked = 0u32;
    let mut chunked_last = false;
    let mut other_coding = false;
    let mut upgrade = false;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            // RFC 9110 §8.6: a list of identical values may be taken as
            // one; anything else is refused.
            cl.add(h.value).map_err(|_| Refusal::BadContentLength)?;
            has_cl = true;
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            has_te = true;
            for coding in h.value.split(|b| *b == b',') {
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
        } else if h.name.eq_ignore_ascii_case("upgrade") {
            upgrade = true;
        }
    }
    if has_cl && has_te {
        return Err(Refusal::Ambiguous);
    }
    if has_te {
        if chunked > 1 || !chunked_last {
            return Err(Refusal::BadTransferEncoding);
        }
        if other_coding {
            return Err(Refusal::UnknownCoding);
        }
        return Ok(HeadInfo {
            body: Body::Chunked,
            upgrade,
        });
    }
    Ok(HeadInfo {
        body: match cl.get() {
            Some(n) if n > 0 => Body::Fixed(n),
            _ => Body::None,
        },
        upgrade,
    })
}

/// The index just past the blank line ending a head in `b`, if any.
fn find_head_end(b: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(nl) = b[from..].iter().position(|c| *c == b'\n') {
        let at = from + nl;
        match b.get(at + 1) {
            Some(b'\n') => return Some(at + 2),
            Some(b'\r') if b.get(at + 2) == Some(&b'\n') => return Some(at + 3),
            _ => from = at + 1,
        }
    }
    None
}

impl<I: AsyncRead + Unpin> AsyncRead for Inspect<I> {
    // Runs on every read of an HTTP/1 connection: bodies pass uncopied and
    // are followed by count; heads are gathered, checked and handed over.
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.out_pos < this.out.len() {
                let n = (this.out.len() - this.out_pos).min(buf.remaining());
                buf.put_slice(&this.out[this.out_pos..this.out_pos + n]);
                this.out_pos += n;
                if this.out_pos == this.out.len() {
                    this.out_pos = 0;
                    recycle(&mut this.out);
                }
                return Poll::Ready(Ok(()));
            }
            match this.state {
                // Not the end of the stream: hyper (without half-close)
                // would drop the connection before writing the answer.
                State::Closed => return Poll::Pending,
                State::Poisoned => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "malformed chunked framing",
                    )))
                }
                State::Await => match this.decided() {
                    Some(true) => {
                        this.state = State::Off;
                        this.out = std::mem::take(&mut this.held);
                        continue;
                    }
                    Some(false) => {
                        this.state = State::Head;
                        let held = std::mem::take(&mut this.held);
                        let k = this.process(&held);
                        this.out.splice(0..0, held[..k].iter().copied());
                        continue;
                    }
                    None => {
                        *this
                            .state_ref
                            .waiting
                            .lock()
                            .unwrap_or_else(|e| e.into_inner()) = Some(cx.waker().clone());
                        // The decision may have landed before the waker.
                        if this.decided().is_some() {
                            continue;
                        }
                        if this.held.len() > 64 * 1024 {
                            return Poll::Pending;
                        }
                    }
                },
                _ => {}
            }
            let before = buf.filled().len();
            match Pin::new(&mut this.inner).poll_read(cx, buf) {
                Poll::Ready(Ok(())) => {}
                other => return other,
            }
            let got = buf.filled().len() - before;
            if got == 0 {
                // End of stream; an incomplete head is dropped with it.
                return Poll::Ready(Ok(()));
            }
            if this.state == State::Off {
                return Poll::Ready(Ok(()));
            }
            let k = this.process(&buf.filled()[before..]);
            buf.set_filled(before + k);
            if k > 0 {
                return Poll::Ready(Ok(()));
            }
            // Everything went in: hand over what is queued, or read more.
        }
    }
}

crate::base::io::forward_async_write!(Inspect);

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_head: 64 * 1024,
        max_uri: 16 * 1024,
    };

    /// Feeds `chunks` and returns what hyper would see, the heads counted
    /// and the refusal recorded.
    fn run(chunks: &[&[u8]]) -> (Vec<u8>, u64, Option<(u64, Refusal)>) {
        let st = Arc::new(ConnState::default());
        let mut i = Inspect::new((), st.clone(), LIMITS);
        let mut seen = Vec::new();
        for c in chunks {
            let k = i.process(c);
            seen.extend_from_slice(&c[..k]);
            seen.append(&mut i.out);
        }
        let at = st.refused_at.load(Ordering::Relaxed);
        let why = Refusal::from_u8(st.refusal.load(Ordering::Relaxed));
        (seen, i.heads, why.map(|w| (at, w)))
    }

    #[test]
    fn follows_pipelined_requests_and_bodies() {
        let stream: &[u8] = b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 30\r\n\r\nGET /fake HTTP/1.1\r\nX: y\r\n\r\n!\
POST /b HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n\
GET /c HTTP/1.1\r\nHost: h\r\n\r\n";
        let (seen, heads, refused) = run(&[stream]);
        assert_eq!((heads, refused), (3, None));
        assert_eq!(seen, stream);
        // Byte by byte gives the same answer and the same bytes.
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        let (seen, heads, refused) = run(&bytes);
        assert_eq!((heads, refused), (3, None));
        assert_eq!(seen, stream);
    }

    #[test]
    fn refuses_by_position_with_a_stand_in() {
        let stream: &[u8] = b"GET /ok HTTP/1.1\r\nHost: h\r\n\r\n\
POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nX";
        let (seen, _, refused) = run(&[stream]);
        assert_eq!(refused, Some((2, Refusal::Ambiguous)));
        let mut want = b"GET /ok HTTP/1.1\r\nHost: h\r\n\r\n".to_vec();
        want.extend_from_slice(STAND_IN);
        assert_eq!(seen, want, "nothing after the refused head reaches hyper");
        let st = Arc::new(ConnState::default());
        let mut i = Inspect::new((), st.clone(), LIMITS);
        i.process(stream);
        assert_eq!(st.next_h1(), (1, None));
        assert_eq!(st.next_h1(), (2, Some(Refusal::Ambiguous)));
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
            let head =
                format!("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: {te}\r\n\r\n0\r\n\r\n");
            assert_eq!(run(&[head.as_bytes()]).2.map(|r| r.1), want, "{te}");
        }
        let two = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        assert_eq!(run(&[two]).2, Some((1, Refusal::BadTransferEncoding)));
        let same_cl = b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc";
        assert_eq!(run(&[same_cl]).2, None);
        let cl_list = b"POST / HTTP/1.1\r\nContent-Length: 3, 4\r\n\r\nabcd";
        assert_eq!(run(&[cl_list]).2, Some((1, Refusal::BadContentLength)));
    }

    #[test]
    fn bare_lf_in_chunks_poisons() {
        let (_, _, refused) = run(&[
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\n0\n\n",
        ]);
        assert_eq!(refused, Some((1, Refusal::BadChunk)));
        let (_, _, refused) =
            run(&[b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXY0\r\n\r\n"]);
        assert_eq!(refused, Some((1, Refusal::BadChunk)));
    }

    #[test]
    fn versions_uri_limit_and_preface() {
        let (seen, _, refused) = run(&[b"GET / HTTP/1.2\r\nHost: h\r\n\r\n"]);
        assert_eq!(refused, None);
        assert_eq!(seen, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n");
        assert_eq!(
            run(&[b"GET / HTTP/2.0\r\nHost: h\r\n\r\n"]).2,
            Some((1, Refusal::Version))
        );
        assert_eq!(
            run(&[b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"]).2,
            Some((1, Refusal::Http2Preface))
        );
        // However the reads split it, the same verdict (found by fuzzing).
        let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        let pieces: Vec<&[u8]> = preface.chunks(2).collect();
        assert_eq!(run(&pieces).2, Some((1, Refusal::Http2Preface)));
        let pieces: Vec<&[u8]> = b"GET / HTTP/2.0\r\nHost: h\r\n\r\n".chunks(3).collect();
        assert_eq!(run(&pieces).2, Some((1, Refusal::Version)));
        let bad = b"++/PY~I * HTTP/2.0\n\x14";
        let pieces: Vec<&[u8]> = bad.chunks(1).collect();
        assert_eq!(run(&pieces).2, run(&[bad]).2);
        let long = format!("GET /{} HTTP/1.1\r\n", "a".repeat(20_000));
        assert_eq!(run(&[long.as_bytes()]).2, Some((1, Refusal::UriTooLong)));
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(70_000));
        assert_eq!(run(&[big.as_bytes()]).2, Some((1, Refusal::HeadTooLarge)));
        assert_eq!(
            run(&[b"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n"]).2,
            Some((1, Refusal::Connect))
        );
    }

    #[test]
    fn an_upgrade_request_holds_what_follows_until_decided() {
        let st = Arc::new(ConnState::default());
        let mut i = Inspect::new((), st.clone(), LIMITS);
        let first =
            b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n";
        let next = b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(i.process(first), 0);
        assert_eq!(i.state, State::Await);
        assert_eq!(i.process(next), 0);
        assert_eq!(i.held, next);
        // Not switched: the held request is checked like any other.
        let (n, _) = st.next_h1();
        st.answered(n, false);
        assert_eq!(i.decided(), Some(false));
        i.state = State::Head;
        let held = std::mem::take(&mut i.held);
        i.process(&held);
        assert_eq!(st.refused_at.load(Ordering::Relaxed), 2);
        // Switched: the rest is not inspected.
        let st = Arc::new(ConnState::default());
        let mut i = Inspect::new((), st.clone(), LIMITS);
        i.process(first);
        let (n, _) = st.next_h1();
        st.answered(n, true);
        assert_eq!(i.decided(), Some(true));
    }
}
