//! The HTTP/1 reader and hyper's HTTP/1 parser on the same bytes: every
//! request the reader lets through must be the one hyper finds at the
//! same place (they never disagree about where a request ends).
#![no_main]

use gatehouse::fuzzing::{framing, hyper_requests, LIMITS};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let seen = framing(&[data], LIMITS);
    let hyper = hyper_requests(data);
    let accepted = match seen.refused {
        Some((at, _)) => (at - 1) as usize,
        None => seen.targets.len(),
    }
    .min(seen.targets.len());
    for (ours, theirs) in seen.targets[..accepted].iter().zip(&hyper) {
        assert_eq!(ours, &theirs.line(), "{:?}", String::from_utf8_lossy(data));
    }
});
