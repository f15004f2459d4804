//! Gatehouse's HTTP/1 side and hyper's HTTP/1 server on the same bytes:
//! every request Gatehouse accepts must be the one hyper finds at the same
//! place, method, target and body (they never disagree about where a
//! request ends).
#![no_main]

use gatehouse::fuzzing::{framing, hyper_requests, LIMITS};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let seen = framing(&[data], LIMITS);
    let hyper = hyper_requests(data);
    let accepted = match seen.refused {
        Some((at, _)) => (at - 1) as usize,
        None => seen.requests.len(),
    }
    .min(seen.requests.len());
    for (ours, theirs) in seen.requests[..accepted].iter().zip(&hyper) {
        assert_eq!(ours, theirs, "{:?}", String::from_utf8_lossy(data));
    }
});
