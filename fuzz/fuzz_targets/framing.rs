//! Gatehouse's HTTP/1 side on any bytes, split into reads at the
//! positions the first byte chooses: never a panic, and the same requests
//! and verdict as the bytes read whole.
#![no_main]

use gatehouse::fuzzing::{framing, LIMITS};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&step, bytes)) = data.split_first() else {
        return;
    };
    let step = usize::from(step).max(1);
    let chunks: Vec<&[u8]> = bytes.chunks(step).collect();
    let seen = framing(&chunks, LIMITS);
    // Read whole or in pieces, the verdict is the same.
    let whole = framing(&[bytes], LIMITS);
    assert_eq!(whole.refused, seen.refused);
    assert_eq!(whole.requests, seen.requests);
});
