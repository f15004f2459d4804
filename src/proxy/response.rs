//! The response body a client gets. A concrete enum so that the common
//! paths (an upstream body passed through, a small page of ours) cost no
//! boxing; only compressed responses are boxed.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::Full;
use pin_project_lite::pin_project;

use crate::base::framed::push_field;
use crate::base::head_fields::{HeadFields, WithFields};
use crate::upstream::body::BoxError;

pin_project! {
    /// Where the bytes of a response come from.
    #[project = KindProj]
    pub enum Kind {
        /// An upstream response streamed through as it arrives.
        Upstream { #[pin] body: crate::upstream::pool::UpstreamResponse },
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
        log: Option<Box<crate::proxy::access_log::Entry>>,
        busy: Option<Busy>,
        fields: Option<ResponseFields>,
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

    pub fn upstream(body: crate::upstream::pool::UpstreamResponse) -> Self {
        Self::from(Kind::Upstream { body })
    }

    pub fn boxed(body: UnsyncBoxBody<Bytes, BoxError>) -> Self {
        Self::from(Kind::Boxed { body })
    }

    /// Keeps the connection counted as busy until this body is done, so
    /// its idle limits and eviction leave it alone meanwhile.
    pub fn set_busy(&mut self, busy: Busy) {
        self.busy = Some(busy);
    }

    /// Attaches the access-log entry written when this body ends.
    pub fn set_log(&mut self, entry: Box<crate::proxy::access_log::Entry>) {
        self.log = Some(entry);
    }

    /// The fields the HTTP/1 writer adds to this response's head.
    pub fn set_fields(&mut self, fields: ResponseFields) {
        self.fields = Some(fields);
    }
}

/// The fields every response gets, for a head written from bytes (HTTP/1,
/// issue 13): the security fields of the configuration the request ran
/// under, and the request's id. HTTP/2 responses get them in their map
/// instead (`HeaderPolicy::apply`).
pub struct ResponseFields {
    pub runtime: std::sync::Arc<crate::runtime::Runtime>,
    /// Whether the client's connection is TLS (HSTS).
    pub https: bool,
    pub request_id: http::HeaderValue,
}

impl HeadFields for ResponseFields {
    fn gives_way(&self, name: &http::HeaderName, seen: &mut u64) -> bool {
        *name == crate::base::header_names::X_REQUEST_ID
            || self.runtime.headers.gives_way(self.https, name, seen)
    }

    fn write(&self, headers: &http::HeaderMap, seen: u64, out: &mut Vec<u8>) {
        self.runtime.headers.write(self.https, headers, seen, out);
        push_field(out, b"x-request-id", self.request_id.as_bytes());
    }
}

impl WithFields for ResponseBody {
    fn head_fields(&self) -> &dyn HeadFields {
        match &self.fields {
            Some(f) => f,
            None => &(),
        }
    }
}

/// A request in flight on its connection, from its start until its
/// response body is done (see [`ResponseBody::set_busy`]).
pub struct Busy(std::sync::Arc<crate::conn::framing::ConnState>);

impl Busy {
    pub fn enter(conn: &std::sync::Arc<crate::conn::framing::ConnState>) -> Busy {
        conn.enter();
        Busy(conn.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.leave();
    }
}

impl From<Kind> for ResponseBody {
    fn from(kind: Kind) -> Self {
        ResponseBody {
            kind,
            log: None,
            busy: None,
            fields: None,
        }
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
