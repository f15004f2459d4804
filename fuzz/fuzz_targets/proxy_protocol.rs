//! The PROXY protocol v1/v2 reader on any bytes, trusted or not.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flag, bytes)) = data.split_first() else {
        return;
    };
    let _ = gatehouse::fuzzing::proxy_protocol(bytes, flag & 1 == 1);
});
