//! The upstream side's chunked decoder on any bytes, split into reads at
//! the positions the first byte chooses: never a panic, never more data
//! out than in, and the same verdict whole or in pieces; a chunk-size line
//! it accepts means the same size to httparse.
#![no_main]

use gatehouse::fuzzing::{chunk_size, chunked};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&step, bytes)) = data.split_first() else {
        return;
    };
    let step = usize::from(step).max(1);
    let pieces: Vec<&[u8]> = bytes.chunks(step).collect();
    let seen = chunked(&pieces);
    assert!(seen.data.len() <= bytes.len());
    assert_eq!(chunked(&[bytes]), seen);
    if let Some(end) = bytes.windows(2).position(|w| w == b"\r\n") {
        if let Some(ours) = chunk_size(&bytes[..end]) {
            if let Ok(httparse::Status::Complete((_, theirs))) = httparse::parse_chunk_size(bytes) {
                assert_eq!(ours, theirs);
            }
        }
    }
});
