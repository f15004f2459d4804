//! Per-thread spares of the two large things every HTTP/1 request used to
//! allocate and free: header maps (one for the request, one for the
//! response: a map sized for 20-odd fields is about 2.5 KiB) and
//! connection read buffers (8 KiB). Both are beyond the size glibc's
//! per-thread cache serves, so each cost a trip through its bins; a spare
//! costs a thread-local push and pop (issue 13 point 3: malloc was 15 % of
//! an HTTP/1 request's instructions).
//!
//! Bounded: at most [`SPARES`] of each per worker thread, and only maps and
//! buffers of the usual size are kept, so a burst of large ones does not
//! stay around.

use std::cell::RefCell;

use bytes::BytesMut;
use http::HeaderMap;

/// Spares kept per thread, of each kind.
const SPARES: usize = 64;
/// Maps with room for fewer fields than this (too small for most heads)
/// or more (a rare large head's) are not kept.
const MIN_FIELDS: usize = 16;
const MAX_FIELDS: usize = 96;
/// The read buffer's usual size.
pub const BUFFER: usize = 8 * 1024;

thread_local! {
    static MAPS: RefCell<Vec<HeaderMap>> = const { RefCell::new(Vec::new()) };
    static BUFFERS: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// An empty header map with room for `fields`.
pub fn header_map(fields: usize) -> HeaderMap {
    let spare = MAPS.with(|m| m.borrow_mut().pop());
    match spare {
        // Growing a map costs more than making one: a spare too small
        // (an HTTP/2 request's, say) is let go.
        Some(map) if map.capacity() >= fields => map,
        _ => HeaderMap::with_capacity(fields),
    }
}

/// A map that is done with, for [`header_map`] to hand out again.
pub fn give_back_map(mut map: HeaderMap) {
    if map.capacity() < MIN_FIELDS || map.capacity() > MAX_FIELDS {
        return;
    }
    map.clear();
    MAPS.with(|m| {
        let mut m = m.borrow_mut();
        if m.len() < SPARES {
            m.push(map);
        }
    });
}

/// An empty buffer with room for at least [`BUFFER`] bytes.
pub fn buffer() -> BytesMut {
    let spare = BUFFERS.with(|b| b.borrow_mut().pop());
    let mut buf = spare.unwrap_or_default();
    // Reclaims the whole allocation when nothing else refers to it any
    // more, else allocates.
    buf.reserve(BUFFER);
    buf
}

/// An emptied buffer, for [`buffer`] to hand out again.
pub fn give_back_buffer(buf: BytesMut) {
    if !buf.is_empty() || buf.capacity() == 0 || buf.capacity() > 2 * BUFFER {
        return;
    }
    BUFFERS.with(|b| {
        let mut b = b.borrow_mut();
        if b.len() < SPARES {
            b.push(buf);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spares_come_back_empty_and_bounded() {
        let mut map = header_map(20);
        map.insert("x-a", "1".parse().unwrap());
        let room = map.capacity();
        give_back_map(map);
        let again = header_map(4);
        assert!(again.is_empty());
        assert_eq!(again.capacity(), room, "the same map, kept");
        let mut buf = buffer();
        assert!(buf.capacity() >= BUFFER);
        buf.extend_from_slice(b"abc");
        // Not empty: not kept.
        give_back_buffer(buf);
        for _ in 0..SPARES + 10 {
            give_back_map(HeaderMap::with_capacity(20));
        }
        assert_eq!(MAPS.with(|m| m.borrow().len()), SPARES);
    }
}
