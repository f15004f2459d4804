//! An HTTP/1 message body written with its framing (RFC 9112 §6, §7.1),
//! for both sides of the proxy: request bodies to upstreams
//! (`upstream::h1`) and response bodies to clients (`conn::h1`).

use std::pin::Pin;

use bytes::Bytes;
use http_body::Body;
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Body data up to this size is copied in with its framing (and, the
/// first time, the head) and written in one call; larger data is written
/// as it is.
const COALESCE: usize = 8 * 1024;

/// How a body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body is written.
    None,
    Length(u64),
    Chunked,
    /// Until the connection closes (an HTTP/1.0 peer, unknown length).
    Close,
}

/// Why a body could not be written whole.
#[derive(Debug)]
pub enum WriteError<E> {
    Io(std::io::Error),
    /// The body itself failed.
    Body(E),
    /// The body was longer or shorter than its declared length.
    Length,
}

/// Writes `pending` (the head, already encoded) and `body` framed as
/// `framing`, with backpressure, then flushes. `polled` turns true once
/// the body has been asked for anything (it cannot be sent again).
pub async fn write_body<W, B>(
    w: &mut W,
    mut pending: Vec<u8>,
    mut body: Pin<&mut B>,
    framing: Framing,
    polled: &mut bool,
) -> Result<(), WriteError<B::Error>>
where
    W: AsyncWrite + Unpin + ?Sized,
    B: Body<Data = Bytes> + ?Sized,
{
    let chunked = framing == Framing::Chunked;
    let mut left = match framing {
        Framing::Length(n) => Some(n),
        _ => None,
    };
    let mut trailers = None;
    let io = WriteError::Io;
    if framing != Framing::None {
        while let Some(frame) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
            *polled = true;
            let data = match frame.map_err(WriteError::Body)?.into_data() {
                Ok(data) => data,
                Err(frame) => {
                    if let Ok(t) = frame.into_trailers() {
                        trailers = Some(t);
                    }
                    continue;
                }
            };
            if data.is_empty() {
                continue;
            }
            if let Some(left) = left.as_mut() {
                *left = left
                    .checked_sub(data.len() as u64)
                    .ok_or(WriteError::Length)?;
            }
            if chunked {
                crate::base::fmt::push_hex(&mut pending, data.len());
                pending.extend_from_slice(b"\r\n");
            }
            if data.len() <= COALESCE {
                pending.extend_from_slice(&data);
                if chunked {
                    pending.extend_from_slice(b"\r\n");
                }
                w.write_all(&pending).await.map_err(io)?;
                pending.clear();
            } else {
                if !pending.is_empty() {
                    w.write_all(&pending).await.map_err(io)?;
                    pending.clear();
                }
                w.write_all(&data).await.map_err(io)?;
                if chunked {
                    pending.extend_from_slice(b"\r\n");
                }
            }
        }
        *polled = true;
    }
    if left.is_some_and(|n| n != 0) {
        return Err(WriteError::Length);
    }
    if chunked {
        pending.extend_from_slice(b"0\r\n");
        if let Some(t) = &trailers {
            for (name, value) in t {
                push_field(&mut pending, name.as_str().as_bytes(), value.as_bytes());
            }
        }
        pending.extend_from_slice(b"\r\n");
    }
    if !pending.is_empty() {
        w.write_all(&pending).await.map_err(io)?;
    }
    w.flush().await.map_err(io)
}

/// `name: value` and its line end.
pub fn push_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}
