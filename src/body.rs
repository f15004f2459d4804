//! The two body types of the proxy. Both are concrete enums so that the
//! common paths (an upstream body passed through, a small page of ours) cost
//! no boxing; only compressed responses are boxed.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::Full;
use hyper::body::Incoming;
use pin_project_lite::pin_project;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pin_project! {
    /// Where the bytes of a response come from.
    #[project = KindProj]
    pub enum Kind {
        /// An upstream response streamed through as it arrives.
        Upstream { #[pin] body: Incoming },
        /// A page of Gatehouse's own (status page, 404, redirect).
        Full { #[pin] body: Full<Bytes> },
        /// A transformed stream (compression).
        Boxed { #[pin] body: UnsyncBoxBody<Bytes, BoxError> },
    }
}

pin_project! {
    /// What the proxy sends to a client. When access logging is on it
    /// carries the request's log entry, written once the body has ended
    /// (or was abandoned), with the bytes actually sent.
    pub struct ResponseBody {
        #[pin]
        kind: Kind,
        log: Option<Box<crate::access_log::Entry>>,
    }

    impl PinnedDrop for ResponseBody {
        fn drop(this: Pin<&mut Self>) {
            if let Some(entry) = this.project().log.take() {
                entry.emit();
            }
        }
    }
}

impl ResponseBody {
    pub fn full(data: impl Into<Bytes>) -> Self {
        Self::from(Kind::Full {
            body: Full::new(data.into()),
        })
    }

    pub fn empty() -> Self {
        Self::full(Bytes::new())
    }

    pub fn upstream(body: Incoming) -> Self {
        Self::from(Kind::Upstream { body })
    }

    pub fn boxed(body: UnsyncBoxBody<Bytes, BoxError>) -> Self {
        Self::from(Kind::Boxed { body })
    }

    /// Attaches the access-log entry written when this body ends.
    pub fn set_log(&mut self, entry: Box<crate::access_log::Entry>) {
        self.log = Some(entry);
    }
}

impl From<Kind> for ResponseBody {
    fn from(kind: Kind) -> Self {
        ResponseBody { kind, log: None }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let polled = match this.kind.project() {
            KindProj::Upstream { body } => body.poll_frame(cx).map_err(Into::into),
            KindProj::Full { body } => body.poll_frame(cx).map_err(|never| match never {}),
            KindProj::Boxed { body } => body.poll_frame(cx),
        };
        if let Some(entry) = this.log.as_mut() {
            match &polled {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(d) = frame.data_ref() {
                        entry.bytes_out += d.len() as u64;
                    }
                }
                Poll::Ready(None) | Poll::Ready(Some(Err(_))) => {
                    if let Some(entry) = this.log.take() {
                        entry.emit();
                    }
                }
                Poll::Pending => {}
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Upstream { body } => body.is_end_stream(),
            Kind::Full { body } => body.is_end_stream(),
            Kind::Boxed { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Upstream { body } => body.size_hint(),
            Kind::Full { body } => body.size_hint(),
            Kind::Boxed { body } => body.size_hint(),
        }
    }
}

/// The request body was larger than the route allows. Raised while
/// streaming, so a body without `Content-Length` is still capped; the error
/// travels through hyper's client and is recognised by `is_body_too_large`.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds the limit of {limit} bytes")]
pub struct BodyTooLarge {
    pub limit: u64,
}

pin_project! {
    /// What the proxy sends upstream: the client's body, counted against the
    /// route's `max_body` as it streams.
    pub struct UpstreamBody {
        #[pin]
        inner: Option<Incoming>,
        seen: u64,
        limit: u64,
        // Shared with the access-log entry when logging is on.
        counter: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
    }
}

impl UpstreamBody {
    pub fn new(
        inner: Incoming,
        limit: u64,
        counter: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
    ) -> Self {
        UpstreamBody {
            inner: Some(inner),
            seen: 0,
            limit,
            counter,
        }
    }

    pub fn empty() -> Self {
        UpstreamBody {
            inner: None,
            seen: 0,
            limit: 0,
            counter: None,
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
        let this = self.project();
        let Some(inner) = this.inner.as_pin_mut() else {
            return Poll::Ready(None);
        };
        match inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    *this.seen += data.len() as u64;
                    if let Some(c) = this.counter {
                        c.fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
                    }
                    if *this.seen > *this.limit {
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge {
                            limit: *this.limit,
                        }))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(ClientBodyError(e))))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint())
    }
}

/// The client's request body failed while it was being forwarded (the
/// client went away, or its framing was malformed): the client's fault,
/// not the upstream's.
#[derive(Debug, thiserror::Error)]
#[error("reading the request body failed")]
pub struct ClientBodyError(#[source] pub hyper::Error);

/// True when `err` or any of its causes is an `E`.
pub fn caused_by<E: std::error::Error + 'static>(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if e.is::<E>() {
            return true;
        }
        cur = e.source();
    }
    false
}
