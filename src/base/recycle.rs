//! Per-thread spares of the large things every HTTP/1 request used to
//! allocate and free: header maps (one for the request, one for the
//! response: a map sized for 20-odd fields is about 2.5 KiB), connection
//! read buffers (8 KiB) and the blocks of the two boxed per-request futures
//! ([`Reused`]). All are beyond the size glibc's per-thread cache serves,
//! so each cost a trip through its bins; a spare costs a thread-local push
//! and pop (issue 13 point 3: malloc was 15 % of an HTTP/1 request's
//! instructions).
//!
//! Bounded: at most [`SPARES`] maps and buffers and [`BLOCKS`] blocks per
//! worker thread, and only maps and buffers of the usual size are kept, so
//! a burst of large ones does not stay around.

use std::alloc::Layout;
use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::ptr::NonNull;
use std::task::{Context, Poll};

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

/// Blocks kept per thread for [`Reused`] futures.
const BLOCKS: usize = 16;

/// Freed blocks of [`Reused`] futures, by layout. Raw pointers: the blocks
/// hold no value while here, only memory that `std::alloc` gave.
struct Blocks(Vec<(Layout, NonNull<u8>)>);

impl Drop for Blocks {
    fn drop(&mut self) {
        for (layout, ptr) in self.0.drain(..) {
            // SAFETY: allocated with this layout by `Reused::with`, and
            // nothing refers to it since it was put here.
            unsafe { std::alloc::dealloc(ptr.as_ptr(), layout) }
        }
    }
}

thread_local! {
    static BLOCKS_KEPT: RefCell<Blocks> = const { RefCell::new(Blocks(Vec::new())) };
}

/// A future on the heap, in a block that goes back to a per-thread stash
/// when it is dropped, for the next future of the same type.
///
/// Two futures are boxed on every HTTP/1 request so that an idle
/// connection holds only its read loop (the request's pipeline and the
/// upstream exchange, 4.7 and 7.7 KiB). Blocks that large are beyond
/// glibc's per-thread cache: each took a trip through its bins, about 500
/// instructions of 28k per request (issue 13 point 3). Here a block costs
/// a thread-local pop and push.
pub struct Reused<F> {
    ptr: NonNull<F>,
}

// SAFETY: `Reused<F>` owns its `F` exactly as `Box<F>` does.
unsafe impl<F: Send> Send for Reused<F> {}
// SAFETY: as for `Box<F>`: shared access gives only `&F`.
unsafe impl<F: Sync> Sync for Reused<F> {}

impl<F> Reused<F> {
    /// What `make` gives, in a block: a kept one of `F`'s layout, else a
    /// new one. The value is made once the block is at hand, so that,
    /// inlined, a future several KiB large can be built in the block
    /// rather than on the stack and then copied there whole.
    #[inline(always)]
    pub fn with(make: impl FnOnce() -> F) -> Reused<F> {
        let layout = Layout::new::<F>();
        if layout.size() == 0 {
            // Nothing to allocate; std::alloc does not take size 0.
            let ptr = NonNull::<F>::dangling();
            // SAFETY: a dangling, aligned pointer is valid for a ZST.
            unsafe { ptr.as_ptr().write(make()) };
            return Reused { ptr };
        }
        let kept = BLOCKS_KEPT
            .try_with(|b| {
                let mut b = b.borrow_mut();
                let at = b.0.iter().rposition(|(l, _)| *l == layout)?;
                Some(b.0.swap_remove(at).1)
            })
            .ok()
            .flatten();
        let block = match kept {
            Some(p) => p.cast::<F>(),
            None => {
                // SAFETY: the layout's size is not zero.
                let raw = unsafe { std::alloc::alloc(layout) };
                match NonNull::new(raw) {
                    Some(p) => p.cast::<F>(),
                    None => std::alloc::handle_alloc_error(layout),
                }
            }
        };
        // Owned from here, so that a panic in `make` gives the block back
        // instead of dropping a value that was never written.
        let guard = Unwritten { block, layout };
        let value = make();
        std::mem::forget(guard);
        // SAFETY: `block` is allocated for `F`'s layout and holds no value.
        unsafe { block.as_ptr().write(value) };
        Reused { ptr: block }
    }
}

/// A block taken for a value not yet made: freed if making it panics.
struct Unwritten<F> {
    block: NonNull<F>,
    layout: Layout,
}

impl<F> Drop for Unwritten<F> {
    fn drop(&mut self) {
        // SAFETY: allocated (or kept) for this layout; it holds no value.
        unsafe { std::alloc::dealloc(self.block.as_ptr().cast(), self.layout) }
    }
}

impl<F> Drop for Reused<F> {
    fn drop(&mut self) {
        let layout = Layout::new::<F>();
        // SAFETY: the value was written in `with` and is dropped only here;
        // it never moved (see the `Future` impl).
        unsafe { std::ptr::drop_in_place(self.ptr.as_ptr()) };
        if layout.size() == 0 {
            return;
        }
        let block = self.ptr.cast::<u8>();
        let kept = BLOCKS_KEPT
            .try_with(|b| {
                let mut b = b.borrow_mut();
                if b.0.len() < BLOCKS {
                    b.0.push((layout, block));
                    true
                } else {
                    false
                }
            })
            .unwrap_or(false);
        if !kept {
            // SAFETY: allocated with this layout, its value dropped above.
            unsafe { std::alloc::dealloc(block.as_ptr(), layout) }
        }
    }
}

impl<F: Future> Future for Reused<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // SAFETY: the `F` lives at `ptr` from `with` until `drop` and is
        // never moved out (no method gives it by value or `&mut F`), so it
        // is pinned however the `Reused` itself moves.
        unsafe { Pin::new_unchecked(&mut *self.ptr.as_ptr()) }.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

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

    /// Counts its drops, and holds enough to need a large block.
    struct Tracked(Arc<AtomicUsize>, [u8; 4096]);

    impl Drop for Tracked {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn reused_futures_run_drop_and_share_blocks() {
        let drops = Arc::new(AtomicUsize::new(0));
        let held = Tracked(drops.clone(), [7; 4096]);
        let fut = Reused::with(|| async move {
            // The whole value, not only its (Copy) array field.
            let held = held;
            std::future::ready(()).await;
            held.1[4095] as usize
        });
        let first = fut.ptr.as_ptr() as usize;
        let out = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(fut);
        assert_eq!(out, 7, "the future ran to its end in its block");
        assert_eq!(drops.load(Ordering::SeqCst), 1, "its state was dropped");
        // The next future of the same type takes the same block.
        let make = |t: Tracked| {
            Reused::with(|| async move {
                let t = t;
                std::future::ready(()).await;
                t.1[0] as usize
            })
        };
        let a = make(Tracked(drops.clone(), [1; 4096]));
        let at = a.ptr.as_ptr() as usize;
        drop(a);
        assert_eq!(drops.load(Ordering::SeqCst), 2, "dropped unpolled");
        let b = make(Tracked(drops.clone(), [2; 4096]));
        assert_eq!(
            b.ptr.as_ptr() as usize,
            at,
            "the freed block is taken again"
        );
        drop(b);
        assert_ne!(first, 0);
        // Bounded: past BLOCKS, blocks go back to the allocator.
        let many: Vec<_> = (0..BLOCKS + 4)
            .map(|_| make(Tracked(drops.clone(), [0; 4096])))
            .collect();
        drop(many);
        assert_eq!(BLOCKS_KEPT.with(|b| b.borrow().0.len()), BLOCKS);
        assert_eq!(drops.load(Ordering::SeqCst), 2 + 1 + BLOCKS + 4);
    }
}
