//! The request body as the proxy sends it upstream (counted, timed, read
//! ahead), and the errors a body can end with. The response body the
//! client gets is the request pipeline's (`proxy::response`).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A client's request body as the pipeline receives it: none, HTTP/2's
/// (hyper's stream), or one read by Gatehouse's own HTTP/1 side
/// (`conn::h1`, boxed: this layer does not know the connection's).
pub enum RequestBody {
    Empty,
    H2(Incoming),
    Stream(Pin<Box<dyn Body<Data = Bytes, Error = BoxError> + Send + Sync>>),
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            RequestBody::Empty => Poll::Ready(None),
            RequestBody::H2(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            RequestBody::Stream(b) => b.as_mut().poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Empty => true,
            RequestBody::H2(b) => b.is_end_stream(),
            RequestBody::Stream(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Empty => SizeHint::with_exact(0),
            RequestBody::H2(b) => b.size_hint(),
            RequestBody::Stream(b) => b.size_hint(),
        }
    }
}

/// The request body was larger than the route allows. Raised while
/// streaming, so a body without `Content-Length` is still capped; the error
/// travels through hyper's client and is recognised with
/// `caused_by::<BodyTooLarge>` in the request pipeline.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds the limit of {limit} bytes")]
pub(crate) struct BodyTooLarge {
    pub limit: u64,
}

/// How far a streamed request body has got, shared between the body (in
/// the upstream connection's task) and the request waiting for the answer:
/// the response timeout starts only once the body has been sent (issue 10
/// point 1).
#[derive(Debug, Default)]
pub struct Progress {
    /// The body has ended.
    pub done: tokio::sync::Notify,
    ended: std::sync::atomic::AtomicBool,
    /// When the body last moved (`clock::now_nanos`).
    last: std::sync::atomic::AtomicU64,
    /// The body is waiting for the client (not for the upstream to read).
    on_client: std::sync::atomic::AtomicBool,
}

impl Progress {
    pub fn ended(&self) -> bool {
        self.ended.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Nanoseconds since the body last moved, when the upstream (not the
    /// client) is what it waits for; `None` while it waits for the client.
    pub fn upstream_stall(&self) -> Option<u64> {
        use std::sync::atomic::Ordering::Acquire;
        if self.on_client.load(Acquire) {
            return None;
        }
        Some(crate::base::clock::now_nanos().saturating_sub(self.last.load(Acquire)))
    }
}

/// What the proxy sends upstream: the client's body, counted against the
/// route's `max_body` as it streams, with the route's idle limit between
/// reads (`client_body_timeout`), and the part read ahead of time replayed
/// first (`request_buffer`).
///
/// A request without a body (most are GETs) holds only `None`: the
/// streaming state is boxed for the requests that have one, so the
/// request a layer hands to the next is 160 bytes smaller to move
/// (issue 13 point 3).
pub struct UpstreamBody(Option<Box<Streaming>>);

/// The state of a body that streams.
struct Streaming {
    inner: Option<RequestBody>,
    /// Frames read by [`Streaming::buffer`], sent first.
    ahead: std::collections::VecDeque<Frame<Bytes>>,
    /// The client's body has ended (the rest is in `ahead`).
    ended: bool,
    /// The length when the whole body is in `ahead` without trailers.
    exact: Option<u64>,
    seen: u64,
    limit: u64,
    idle: std::time::Duration,
    /// Armed when the client first keeps us waiting; moved only when it
    /// fires (cheaper than re-arming it per frame).
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    last: tokio::time::Instant,
    progress: Option<std::sync::Arc<Progress>>,
    // Shared with the access-log entry when logging is on.
    counter: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
}

/// The client sent nothing of its body for the route's
/// `client_body_timeout`: answered 408, never blamed on the upstream.
#[derive(Debug, thiserror::Error)]
#[error("the client sent no body data for {0:?}")]
pub(crate) struct ClientBodyTimeout(pub std::time::Duration);

impl UpstreamBody {
    pub fn new(
        inner: RequestBody,
        limit: u64,
        idle: std::time::Duration,
        counter: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
    ) -> Self {
        if inner.is_end_stream() {
            return UpstreamBody(None);
        }
        UpstreamBody(Some(Box::new(Streaming::new(inner, limit, idle, counter))))
    }

    pub fn empty() -> Self {
        UpstreamBody(None)
    }

    /// Reads the body ahead, up to `max` bytes: a body that fits is read
    /// whole before the upstream is asked (slow clients are kept off the
    /// upstream, issue 10 point 6); a larger one streams from there.
    pub async fn buffer(&mut self, max: u64) -> Result<(), BoxError> {
        match self.0.as_deref_mut() {
            Some(s) => s.buffer(max).await,
            None => Ok(()),
        }
    }

    /// Progress shared with the waiting request, or `None` when the body
    /// has already been read whole (nothing to wait for).
    pub fn progress(&mut self) -> Option<std::sync::Arc<Progress>> {
        self.0.as_deref_mut()?.progress()
    }
}

impl Streaming {
    /// For a body that has not ended (`UpstreamBody::new` keeps no state
    /// for one that has).
    fn new(
        inner: RequestBody,
        limit: u64,
        idle: std::time::Duration,
        counter: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
    ) -> Self {
        Streaming {
            inner: Some(inner),
            ahead: Default::default(),
            ended: false,
            exact: None,
            seen: 0,
            limit,
            idle,
            timer: None,
            last: tokio::time::Instant::now(),
            progress: None,
            counter,
        }
    }

    async fn buffer(&mut self, max: u64) -> Result<(), BoxError> {
        let mut total = 0u64;
        let mut trailers = false;
        while !self.ended {
            match std::future::poll_fn(|cx| self.poll_client(cx)).await {
                Some(Ok(frame)) => {
                    match frame.data_ref() {
                        Some(d) => total += d.len() as u64,
                        None => trailers = true,
                    }
                    self.ahead.push_back(frame);
                    if total > max {
                        return Ok(());
                    }
                }
                Some(Err(e)) => return Err(e),
                None => {
                    self.exact = (!trailers).then_some(total);
                }
            }
        }
        Ok(())
    }

    fn progress(&mut self) -> Option<std::sync::Arc<Progress>> {
        if self.ended {
            return None;
        }
        let p = std::sync::Arc::new(Progress::default());
        p.last.store(
            crate::base::clock::now_nanos(),
            std::sync::atomic::Ordering::Release,
        );
        self.progress = Some(p.clone());
        Some(p)
    }

    /// The next frame from the client, with the size limit and idle limit.
    fn poll_client(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        use std::sync::atomic::Ordering::Release;
        let Some(inner) = self.inner.as_mut() else {
            self.ended = true;
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                self.last = tokio::time::Instant::now();
                if let Some(p) = &self.progress {
                    p.on_client.store(false, Release);
                    p.last.store(crate::base::clock::now_nanos(), Release);
                }
                if let Some(data) = frame.data_ref() {
                    self.seen += data.len() as u64;
                    if let Some(c) = &self.counter {
                        c.fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
                    }
                    if self.seen > self.limit {
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge {
                            limit: self.limit,
                        }))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(ClientBodyError(e))))),
            Poll::Ready(None) => {
                self.ended = true;
                if let Some(p) = &self.progress {
                    p.ended.store(true, Release);
                    p.done.notify_one();
                }
                Poll::Ready(None)
            }
            Poll::Pending => {
                if let Some(p) = &self.progress {
                    p.on_client.store(true, Release);
                }
                if self.idle == std::time::Duration::MAX {
                    return Poll::Pending;
                }
                let idle = self.idle;
                let timer = self
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                while timer.as_mut().poll(cx).is_ready() {
                    let until = self.last + idle;
                    if until <= tokio::time::Instant::now() {
                        return Poll::Ready(Some(Err(Box::new(ClientBodyTimeout(idle)))));
                    }
                    timer.as_mut().reset(until);
                }
                Poll::Pending
            }
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut().0.as_deref_mut() {
            Some(s) => s.poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.as_deref().is_none_or(Streaming::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.0
            .as_deref()
            .map_or(SizeHint::with_exact(0), Streaming::size_hint)
    }
}

impl Streaming {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(frame) = self.ahead.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        if self.ended {
            return Poll::Ready(None);
        }
        self.poll_client(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.ended && self.ahead.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        if let Some(n) = self.exact {
            return SizeHint::with_exact(n);
        }
        let Some(inner) = &self.inner else {
            return SizeHint::with_exact(0);
        };
        // Part of it read ahead: what is left of a declared length plus
        // the frames held; no length declared stays unknown (chunked).
        match inner.size_hint().exact() {
            Some(left) => {
                let ahead: u64 = self
                    .ahead
                    .iter()
                    .filter_map(|f| f.data_ref().map(|d| d.len() as u64))
                    .sum();
                SizeHint::with_exact(ahead + left)
            }
            None if self.ahead.is_empty() => inner.size_hint(),
            None => SizeHint::default(),
        }
    }
}

/// The client's request body failed while it was being forwarded (the
/// client went away, or its framing was malformed): the client's fault,
/// not the upstream's.
#[derive(Debug, thiserror::Error)]
#[error("reading the request body failed")]
pub(crate) struct ClientBodyError(#[source] pub BoxError);

/// True when `err` or any of its causes is an `E`.
pub(crate) fn caused_by<E: std::error::Error + 'static>(
    err: &(dyn std::error::Error + 'static),
) -> bool {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if e.is::<E>() {
            return true;
        }
        cur = e.source();
    }
    false
}
