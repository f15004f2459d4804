//! An HTTP/1 message body written with its framing (RFC 9112 §6, §7.1),
//! for both sides of the proxy: request bodies to upstreams
//! (`upstream::h1`) and response bodies to clients (`conn::h1`).

use std::pin::Pin;
use std::task::Poll;

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

/// Data ready at once is written together, up to this much: a large
/// answer whose pieces have all arrived goes out in one vectored write
/// (one TLS flush) instead of one per piece.
const BATCH: usize = 64 * 1024;
/// And at most this many pieces.
const BATCH_PIECES: usize = 16;

/// Part of a batch: bytes of `pending` (head, framing, small data), or a
/// large piece of data written as it is.
enum Seg {
    Pending(std::ops::Range<usize>),
    Data(Bytes),
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
    // Large pieces waiting to be written with what is in `pending`.
    let mut segs: Vec<Seg> = Vec::new();
    let mut mark = 0;
    let mut batched = 0;
    if framing != Framing::None {
        loop {
            // Wait for a piece, then take whatever else is ready now.
            let mut frame = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await;
            let mut ended = false;
            loop {
                *polled = true;
                let Some(f) = frame else {
                    ended = true;
                    break;
                };
                match f.map_err(WriteError::Body)?.into_data() {
                    Ok(data) if !data.is_empty() => {
                        if let Some(left) = left.as_mut() {
                            *left = left
                                .checked_sub(data.len() as u64)
                                .ok_or(WriteError::Length)?;
                        }
                        batched += data.len();
                        if chunked {
                            crate::base::fmt::push_hex(&mut pending, data.len());
                            pending.extend_from_slice(b"\r\n");
                        }
                        if data.len() <= COALESCE {
                            pending.extend_from_slice(&data);
                        } else {
                            segs.push(Seg::Pending(mark..pending.len()));
                            segs.push(Seg::Data(data));
                            mark = pending.len();
                        }
                        if chunked {
                            pending.extend_from_slice(b"\r\n");
                        }
                    }
                    Ok(_) => {}
                    Err(f) => {
                        if let Ok(t) = f.into_trailers() {
                            trailers = Some(t);
                        }
                    }
                }
                if batched >= BATCH || segs.len() >= 2 * BATCH_PIECES {
                    break;
                }
                match std::future::poll_fn(|cx| Poll::Ready(body.as_mut().poll_frame(cx))).await {
                    Poll::Ready(next) => frame = next,
                    Poll::Pending => break,
                }
            }
            if ended {
                break;
            }
            write_batch(w, &mut pending, &mut segs, &mut mark).await?;
            batched = 0;
        }
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
    write_batch(w, &mut pending, &mut segs, &mut mark).await?;
    w.flush().await.map_err(WriteError::Io)
}

/// Writes a batch: one vectored write where the stream takes them (TCP,
/// TLS), else piece by piece.
async fn write_batch<W, E>(
    w: &mut W,
    pending: &mut Vec<u8>,
    segs: &mut Vec<Seg>,
    mark: &mut usize,
) -> Result<(), WriteError<E>>
where
    W: AsyncWrite + Unpin + ?Sized,
{
    let io = WriteError::Io;
    if segs.is_empty() {
        if !pending.is_empty() {
            w.write_all(pending).await.map_err(io)?;
        }
    } else {
        segs.push(Seg::Pending(*mark..pending.len()));
        fn piece<'a>(pending: &'a [u8], s: &'a Seg) -> &'a [u8] {
            match s {
                Seg::Pending(r) => &pending[r.clone()],
                Seg::Data(d) => d,
            }
        }
        if w.is_write_vectored() {
            let mut slices: Vec<std::io::IoSlice<'_>> = segs
                .iter()
                .map(|s| piece(pending, s))
                .filter(|b| !b.is_empty())
                .map(std::io::IoSlice::new)
                .collect();
            let mut bufs = &mut slices[..];
            while !bufs.is_empty() {
                let n = w.write_vectored(bufs).await.map_err(io)?;
                if n == 0 {
                    return Err(WriteError::Io(std::io::ErrorKind::WriteZero.into()));
                }
                std::io::IoSlice::advance_slices(&mut bufs, n);
            }
        } else {
            for s in segs.iter() {
                w.write_all(piece(pending, s)).await.map_err(io)?;
            }
        }
        segs.clear();
    }
    pending.clear();
    *mark = 0;
    Ok(())
}

/// `name: value` and its line end.
pub fn push_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The index just past the blank line ending a head in `b`, if any: the
/// first empty line, ended by CRLF or a bare LF (RFC 9112 §2.2). Both
/// HTTP/1 sides find the end first and parse the head once it is whole,
/// so that its fields can share the head's bytes.
pub fn find_head_end(b: &[u8]) -> Option<usize> {
    // memchr finds the line ends a vector at a time: a byte loop cost about
    // two instructions per byte of a 300-byte response head.
    memchr::memchr_iter(b'\n', b).find_map(|at| match b.get(at + 1) {
        Some(b'\n') => Some(at + 2),
        Some(b'\r') if b.get(at + 2) == Some(&b'\n') => Some(at + 3),
        _ => None,
    })
}
